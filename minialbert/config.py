"""AlbertConfig: Hugging Face's field names and defaults, presets, validation, config.json.

Beyond Hugging Face: ``sharing`` selects the paper's Table 4 ablation —
  "all"        ALBERT's default: every layer reads the same weights (per group);
  "attention"  the attention block is shared, each layer has its own FFN;
  "ffn"        the FFN is shared, each layer has its own attention block;
  "none"       nothing shared (equivalent to Hugging Face's num_hidden_groups = L).
Hugging Face's names cannot express the two partial modes; their unshared parts are named
``albert.encoder.unshared_layers.{l}.*`` and export to a Hugging Face folder refuses them.
"""
import dataclasses
import json
from dataclasses import dataclass, field

SHARING = ("all", "attention", "ffn", "none")
# the activations kernels/act.py implements (a test checks the two lists agree)
ACTIVATION_NAMES = ("gelu_new", "gelu", "relu")


@dataclass
class AlbertConfig:
    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float = 0.1
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    num_labels: int = 2
    # minialbert only (not written to a Hugging Face config.json unless non-default):
    sharing: str = "all"
    sop_weight: float = 1.0
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # other HF keys, kept

    def __post_init__(self):
        if self.sharing == "none":  # nothing shared = one group per layer, as HF writes it
            self.num_hidden_groups = self.num_hidden_layers
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self):
        def need(cond, fld, msg):
            if not cond:
                raise ValueError(f"AlbertConfig.{fld}: {msg}")

        for f in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                  "num_hidden_groups", "num_attention_heads", "intermediate_size",
                  "inner_group_num", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, f)
            need(isinstance(v, int) and v >= 1, f, f"must be a positive integer, got {v!r}")
        need(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
             f"{self.hidden_size} is not a multiple of num_attention_heads="
             f"{self.num_attention_heads}")
        need(self.num_hidden_groups <= self.num_hidden_layers, "num_hidden_groups",
             f"{self.num_hidden_groups} groups for {self.num_hidden_layers} layers: some "
             "group would never be used")
        need(self.hidden_act in ACTIVATION_NAMES, "hidden_act",
             f"{self.hidden_act!r} is not one of {sorted(ACTIVATION_NAMES)}")
        for f in ("hidden_dropout_prob", "attention_probs_dropout_prob",
                  "classifier_dropout_prob"):
            v = getattr(self, f)
            need(v is not None and 0.0 <= v < 1.0, f, f"must be in [0, 1), got {v!r}")
        need(self.layer_norm_eps > 0, "layer_norm_eps", "must be > 0")
        need(0 <= self.pad_token_id < self.vocab_size, "pad_token_id",
             f"{self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        need(self.sharing in SHARING, "sharing", f"{self.sharing!r} is not one of {SHARING}")
        if self.sharing in ("attention", "ffn"):
            need(self.num_hidden_groups == 1 and self.inner_group_num == 1, "sharing",
                 f"{self.sharing!r} sharing needs num_hidden_groups = inner_group_num = 1")

    # ------------------------------------------------------------------ structure
    @property
    def head_size(self):
        return self.hidden_size // self.num_attention_heads

    def describe_layers(self):
        """How the encoder's applications map onto weights, in words."""
        L, G, K = self.num_hidden_layers, self.num_hidden_groups, self.inner_group_num
        if self.sharing == "none" or G * K == L and G == L:
            return f"{L} layers (nothing shared)"
        if self.sharing in ("attention", "ffn"):
            return f"{L} layers sharing one {'attention block' if self.sharing == 'attention' else 'FFN'}"
        if G == 1 and K == 1:
            return f"1 shared layer × {L} applications"
        return f"{G} shared group(s) of {K} layer(s), {L} applications"

    def group_of(self, layer):
        """Hugging Face's layer -> group rule: int(l / (L / G))."""
        return int(layer / (self.num_hidden_layers / self.num_hidden_groups))

    # ------------------------------------------------------------------ io
    def to_dict(self, hf=False):
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if not hf:  # other keys (id2label, problem_type, ...) travel beside ours
            d.update({k: v for k, v in self.extra.items() if k not in d})
        if hf:
            if self.sharing not in ("all", "none"):
                raise ValueError(f"sharing={self.sharing!r} cannot be written as a Hugging Face "
                                 "config: its names have no place for unshared attention/FFN")
            d.pop("sharing")
            d.pop("sop_weight")
            d.update(self.extra)
            # Hugging Face stores the label count as the id2label map (written when it is
            # not the default 2); names from extra["id2label"] when they fit
            C = d.pop("num_labels")
            names = {int(k): v for k, v in self.extra.get("id2label", {}).items()}
            if sorted(names) != list(range(C)):
                names = {i: f"LABEL_{i}" for i in range(C)}
            d.pop("id2label", None)
            d.pop("label2id", None)
            if C != 2 or self.extra.get("id2label"):
                d["id2label"] = {str(i): names[i] for i in range(C)}
                d["label2id"] = {names[i]: i for i in range(C)}
            d.setdefault("architectures", ["AlbertForPreTraining"])
            d["model_type"] = "albert"
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        if "num_labels" not in known and isinstance(d.get("id2label"), dict):
            known["num_labels"] = len(d["id2label"])  # how Hugging Face stores it
        if known.get("classifier_dropout_prob") is None:
            known.pop("classifier_dropout_prob", None)
        return cls(**known, extra=d)

    def save(self, path, hf=True):
        with open(path, "w") as f:
            json.dump(self.to_dict(hf=hf), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path):
        with open(path) as f:
            try:
                return cls.from_dict(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


def parse_setting(text):
    """``"field=value"`` -> (field, value) for any AlbertConfig field, the value converted
    to the field's type (``--set embedding_size=32 --set sharing=none``). A ValueError
    names the field and the choices on a mistake."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: write field=value, e.g. --set embedding_size=32")
    name, raw = (x.strip() for x in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(AlbertConfig) if f.name != "extra"}
    if name not in fields:
        raise ValueError(f"--set {name}: not an AlbertConfig field; the fields are "
                         f"{', '.join(sorted(fields))}")
    kind = type(fields[name].default)
    try:
        return name, kind(raw)
    except ValueError:
        what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ValueError(f"--set {name}={raw}: {name} takes {what}") from None


def _v2(**kw):
    return AlbertConfig(**kw)


PRESETS = {
    # Hugging Face's albert-*-v2 configs (v1: the same shapes, dropout 0.1, "gelu")
    "albert-base-v2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072),
    "albert-large-v2": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096),
    "albert-xlarge-v2": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=8192),
    "albert-xxlarge-v2": dict(hidden_size=4096, num_hidden_layers=12, num_attention_heads=64,
                              intermediate_size=16384),
    # for this CPU: the benchmark's tiny config and the small pretraining preset
    "tiny": dict(vocab_size=8000, embedding_size=128, hidden_size=256, num_hidden_layers=4,
                 num_attention_heads=4, intermediate_size=1024, max_position_embeddings=512),
    # `minialbert pretrain`'s default: chosen by measurement to learn within 10 minutes on
    # 2 cores (chapter 10); a bigger model does fewer steps in that time and learns less
    "small": dict(vocab_size=4000, embedding_size=64, hidden_size=128, num_hidden_layers=4,
                  num_attention_heads=2, intermediate_size=512, max_position_embeddings=512),
}


SHAPE = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
         "num_attention_heads", "intermediate_size")


def shape_of(cfg):
    """The sizes of a config as keyword arguments (what a benchmark gives both sides)."""
    return {k: getattr(cfg, k) for k in SHAPE}


def preset(name, **overrides):
    try:
        kw = dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    kw.update(overrides)
    return _v2(**kw)

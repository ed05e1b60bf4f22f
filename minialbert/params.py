"""The parameters: Hugging Face's names and layouts, shapes, initialisation and counts —
what the models, the checkpoints and the Hugging Face folders must agree on.

Legend: V vocabulary, E embedding, H hidden, I intermediate, P positions, L layers.

Parameters live in one flat dict keyed by Hugging Face's names, in Hugging Face's layouts
(a dense weight is [out, in]), so a state dict moves between the two without renaming.
This file knows the body every model shares (embeddings, encoder, pooler); each head class
(heads.py) declares its own parameters, and ``heads.parameter_shapes(config, head)`` puts
the two together.
"""
import numpy as np

EMB = "albert.embeddings."
ENC = "albert.encoder."
WORD = EMB + "word_embeddings.weight"
POOLER = "albert.pooler"

ATTENTION = [f"attention.{m}.{p}" for m in ("query", "key", "value", "dense")
             for p in ("weight", "bias")] + ["attention.LayerNorm.weight",
                                             "attention.LayerNorm.bias"]
FFN = ["ffn.weight", "ffn.bias", "ffn_output.weight", "ffn_output.bias",
       "full_layer_layer_norm.weight", "full_layer_layer_norm.bias"]


def layer_prefixes(cfg, l, i=0):
    """Where application (layer l, inner layer i) reads its attention and FFN weights.

    all/none: Hugging Face's group g(l) = int(l / (L/G)) ("none" is G = L);
    attention: attention shared (group 0), FFN per layer under our own name;
    ffn: FFN shared (group 0), attention per layer under our own name."""
    shared = f"{ENC}albert_layer_groups.{cfg.group_of(l)}.albert_layers.{i}."
    own = f"{ENC}unshared_layers.{l}."
    if cfg.sharing == "attention":
        return shared + "attention.", own
    if cfg.sharing == "ffn":
        return own + "attention.", shared
    return shared + "attention.", shared


def body_shapes(cfg, pooled=True):
    """name -> shape of the embeddings, the encoder and (``pooled``) the pooler: the
    parameters of Hugging Face's AlbertModel (add_pooling_layer=pooled)."""
    V, E, H, I, P = (cfg.vocab_size, cfg.embedding_size, cfg.hidden_size,
                     cfg.intermediate_size, cfg.max_position_embeddings)
    s = {WORD: (V, E), EMB + "position_embeddings.weight": (P, E),
         EMB + "token_type_embeddings.weight": (cfg.type_vocab_size, E),
         EMB + "LayerNorm.weight": (E,), EMB + "LayerNorm.bias": (E,),
         ENC + "embedding_hidden_mapping_in.weight": (H, E),
         ENC + "embedding_hidden_mapping_in.bias": (H,)}
    matrices = {"attention.query.weight": (H, H), "attention.key.weight": (H, H),
                "attention.value.weight": (H, H), "attention.dense.weight": (H, H),
                "ffn.weight": (I, H), "ffn.bias": (I,), "ffn_output.weight": (H, I)}
    for l in range(cfg.num_hidden_layers):
        for i in range(cfg.inner_group_num):
            a, f = layer_prefixes(cfg, l, i)  # a shared layer writes the same names again
            for n in ATTENTION:
                s[a + n[len("attention."):]] = matrices.get(n, (H,))
            for n in FFN:
                s[f + n] = matrices.get(n, (H,))
    if pooled:
        s[POOLER + ".weight"] = (H, H)
        s[POOLER + ".bias"] = (H,)
    return s


def part_of(name):
    """The component a parameter belongs to, as the paper counts them."""
    if name.startswith(EMB):
        return "embeddings"
    if "embedding_hidden_mapping_in" in name:
        return "embedding projection E->H"
    if ".attention." in name:
        return "encoder attention"
    if name.startswith(ENC):
        return "encoder FFN"
    if name.startswith(POOLER):
        return "pooler"
    return "heads"


def count_by_part(shapes):
    """{component: parameters} of a name -> shape dict (each shared tensor once, as in the
    paper), and the total."""
    parts = {}
    for name, shape in shapes.items():
        parts[part_of(name)] = parts.get(part_of(name), 0) + int(np.prod(shape))
    parts["total"] = sum(parts.values())
    return parts


def init_weights(shapes, cfg, seed=0, dtype=np.float32):
    """Hugging Face's initialisation of the parameters named in ``shapes``: weights
    N(0, initializer_range), LayerNorm 1/0, biases 0, the word-embedding row pad_token_id
    zeroed. Drawn in the order of ``shapes`` from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in shapes.items():
        if "LayerNorm" in name or "layer_norm" in name:
            p[name] = (np.ones if name.endswith("weight") else np.zeros)(shape, dtype)
        elif name.endswith("bias"):
            p[name] = np.zeros(shape, dtype)
        else:
            p[name] = (rng.standard_normal(shape) * cfg.initializer_range).astype(dtype)
    if WORD in p:
        p[WORD][cfg.pad_token_id] = 0
    return p


def zeros_like_params(params):
    return {k: np.zeros_like(v) for k, v in params.items()}

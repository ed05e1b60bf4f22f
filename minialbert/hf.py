"""Hugging Face ALBERT checkpoint folders, both ways.

A Hugging Face folder (what ``save_pretrained`` writes, and what a downloaded
albert-base-v2 holds):

    config.json                 AlbertConfig's fields (+ "architectures", id2label, ...)
    model.safetensors           the weights, Hugging Face names (or sharded, with
                                model.safetensors.index.json; or pytorch_model.bin)
    spiece.model                the SentencePiece model (tokenizer_config.json beside it)
    tokenizer.json              what transformers 5 writes for its tokenizer instead

Our parameters already carry Hugging Face's names and layouts, so loading is a copy by
name plus the bookkeeping Hugging Face does:

  * ``position_ids`` / ``token_type_ids`` buffers are not weights: ignored;
  * the MLM decoder is tied to the word table (and its bias to ``predictions.bias``): a
    file may store it twice (older checkpoints) or once (transformers 5); a stored copy
    that differs from the word table is reported, and the word table wins, as in HF;
  * a checkpoint of a bare AlbertModel has no "albert." prefix: it is added;
  * legacy LayerNorm names ``gamma``/``beta`` become ``weight``/``bias``;
  * weights the head needs but the file lacks are initialised as Hugging Face does and
    reported ("newly initialized"; hub checkpoints lack the SOP head and any fine-tuning
    head); weights the file has but the head does not use are reported and dropped.

``pytorch_model.bin`` is a pickle: reading it can run code. We never read one unless the
caller says ``allow_pickle=True`` (``--allow-pickle``), and then with an unpickler of our
own that knows only tensors (_read_bin): torch is not needed.
"""
import json
import os
import pathlib
import struct
import warnings

import numpy as np

from .checkpoint import atomic_write_text
from .config import AlbertConfig
from .heads import ARCHITECTURES, init_params, model_class, parameter_shapes
from .model import FOLDER_FORMAT
from .params import WORD


class HFCheckpointError(ValueError):
    pass


class LoadReportWarning(UserWarning):
    pass


class LoadReport:
    """What loading did with each weight: the missing/unexpected report Hugging Face prints."""

    def __init__(self, source, head):
        self.source, self.head = source, head
        self.missing, self.unexpected, self.ignored, self.tied, self.notes = [], [], [], [], []

    @property
    def clean(self):
        return not (self.missing or self.unexpected or self.notes)

    def __str__(self):
        cls = model_class(self.head).__name__
        lines = [f"loaded {self.source} into {cls}"]
        if self.missing:
            lines.append(f"  newly initialized (not in the checkpoint; train them before use): "
                         f"{', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  not used by {cls} (dropped): {', '.join(self.unexpected)}")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ reading

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """A .safetensors file -> {name: array}. Read by hand (the format is an 8-byte header
    length, a JSON header, raw little-endian data) so that bfloat16 — which NumPy lacks —
    can be widened to float32 (its 16 bits are the top half of a float32)."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) \
                if os.path.getsize(path) > 8 + n else np.zeros(0, np.uint8)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise HFCheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > data.size or start > end:
            raise HFCheckpointError(f"{path}: truncated ({name} ends at byte {end}, the data "
                                    f"has {data.size})")
        raw = np.asarray(data[start:end])
        if info["dtype"] == "BF16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in _DTYPES:
            arr = raw.view(np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise HFCheckpointError(f"{path}: {name} has dtype {info['dtype']}, which we cannot "
                                    "read")
        out[name] = arr.reshape(info["shape"])
    return out


# torch.save's format (torch >= 1.6): a zip holding ``<name>/data.pkl``, a pickle of the
# state dict in which each tensor is a call of torch._utils._rebuild_tensor_v2(storage,
# offset, size, stride, ...) and each storage a "persistent id" ('storage', storage type,
# key, device, numel) whose bytes are the entry ``<name>/data/<key>`` (little-endian). We
# unpickle it ourselves, with an Unpickler that knows only those few names and refuses
# every other (so no torch, and no code the file could name runs), and build each tensor
# as a NumPy view of its storage's bytes.
_TORCH_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                   "BFloat16Storage": "bf16", "LongStorage": "<i8", "IntStorage": "<i4",
                   "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}


def _rebuild_tensor(storage, offset, size, stride, *_):
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    out = np.array(view)  # a copy, C-contiguous
    return out.astype(np.float32) if out.dtype.kind == "f" else out  # as HF loads floats


def _read_bin(path, allow_pickle):
    if not allow_pickle:
        raise HFCheckpointError(
            f"{path} is a PyTorch pickle, and unpickling can run arbitrary code. Pass "
            "allow_pickle=True (CLI: --allow-pickle) if you trust this file, or convert it to "
            "model.safetensors first")
    import collections
    import pickle
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise HFCheckpointError(f"{path}: not a PyTorch checkpoint in the zip format torch.save "
                                f"writes since torch 1.6 ({e}); convert it to "
                                "model.safetensors") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise HFCheckpointError(f"{path}: a zip without one data.pkl, not a PyTorch "
                                    "checkpoint")
        prefix = pkl[0][:-len("data.pkl")]

        def storage(kind, key):
            raw = zf.read(f"{prefix}data/{key}")
            if kind == "bf16":  # the top half of a float32
                return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            return np.frombuffer(raw, kind)

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return _rebuild_tensor
                if module == "torch._utils" and name == "_rebuild_parameter":
                    return lambda data, *_: data
                if module == "torch" and name in _TORCH_STORAGES:
                    return _TORCH_STORAGES[name]
                if module == "collections" and name == "OrderedDict":
                    return collections.OrderedDict
                raise HFCheckpointError(f"{path}: the pickle names {module}.{name}, which a "
                                        "checkpoint of tensors does not need: not read")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                        and pid[1] in _TORCH_STORAGES.values()):
                    raise HFCheckpointError(f"{path}: a storage we cannot read: {pid!r:.80}")
                return storage(pid[1], pid[2])

        try:
            sd = Unpickler(zf.open(pkl[0])).load()
        except HFCheckpointError:
            raise
        except Exception as e:  # a truncated or altered file
            raise HFCheckpointError(f"{path}: cannot read this PyTorch checkpoint: "
                                    f"{type(e).__name__}: {e}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise HFCheckpointError(f"{path}: not a state dict of tensors")
    return dict(sd)


def read_weights(folder, allow_pickle=False):
    """-> ({name: array}, the file(s) read)."""
    folder = pathlib.Path(folder)
    for index, reader in (("model.safetensors.index.json", read_safetensors),
                          ("pytorch_model.bin.index.json", None)):
        if (folder / index).exists():
            files = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            out = {}
            for f in files:
                out.update(reader(folder / f) if reader else _read_bin(folder / f, allow_pickle))
            return out, f"{folder} ({len(files)} shards)"
    if (folder / "model.safetensors").exists():
        return read_safetensors(folder / "model.safetensors"), str(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return _read_bin(folder / "pytorch_model.bin", allow_pickle), str(folder / "pytorch_model.bin")
    raise HFCheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin (is this a "
                            "Hugging Face model folder?)")


CORE_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size")


def read_config(folder):
    folder = pathlib.Path(folder)
    if not (folder / "config.json").exists():
        raise HFCheckpointError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    try:
        d = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFCheckpointError(f"{folder}/config.json: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise HFCheckpointError(f"{folder}/config.json: not a JSON object")
    if d.get("model_type", "albert") != "albert":
        raise HFCheckpointError(f"{folder}: model_type is {d['model_type']!r}, not 'albert'")
    missing = [k for k in CORE_SIZES if k not in d]
    if missing:  # AlbertConfig's defaults are xxlarge's: a silent 4096 would mislead
        raise HFCheckpointError(f"{folder}/config.json has no {', '.join(missing)}: the model's "
                                "sizes must be written out")
    return d


def _hf_name(k):
    if k.endswith(".gamma"):
        return k[:-6] + ".weight"
    if k.endswith(".beta"):
        return k[:-5] + ".bias"
    return k


def _match(raw, expected, report):
    """Hugging Face's names in the file -> ours (see the module docstring)."""
    tensors = {}
    for k, v in raw.items():
        k2 = _hf_name(k)
        if k2.endswith("position_ids") or k2.endswith("embeddings.token_type_ids"):
            report.ignored.append(k)
            continue
        if k2 not in expected and "albert." + k2 in expected:
            k2 = "albert." + k2  # saved from a bare AlbertModel
        tensors[k2] = v
    for dec, src in (("predictions.decoder.weight", WORD),
                     ("predictions.decoder.bias", "predictions.bias")):
        if dec in tensors:
            v = tensors.pop(dec)
            if src not in tensors:
                tensors[src] = v
            elif src in expected and (v.shape != tensors[src].shape or
                                      not np.array_equal(v, tensors[src])):
                report.notes.append(f"{dec} differs from the tied {src}; the tie wins (as in "
                                    "Hugging Face)")
            report.tied.append(dec)
    return tensors


def assemble(cfg, head, tensors, report, seed=0, dtype=np.float32, ignore_mismatched_sizes=False):
    """The parameters of ``head``'s model from named tensors: each expected name copied
    (cast to dtype), initialised afresh where absent (recorded in ``report.missing``) or,
    with ignore_mismatched_sizes, where its shape differs; the rest are ``unexpected``."""
    expected = parameter_shapes(cfg, head)
    fresh = init_params(cfg, seed, dtype, head)
    params = {}
    for k, shape in expected.items():
        if k not in tensors:
            report.missing.append(k)
            params[k] = fresh[k]
        elif tuple(tensors[k].shape) != tuple(shape):
            if not ignore_mismatched_sizes:
                raise HFCheckpointError(
                    f"{report.source}: {k} has shape {tuple(tensors[k].shape)}, the config wants "
                    f"{tuple(shape)} (a different num_labels? pass ignore_mismatched_sizes=True "
                    "to initialise it afresh)")
            report.notes.append(f"{k}: shape {tuple(tensors[k].shape)} in the checkpoint, "
                                f"{tuple(shape)} here: newly initialized")
            params[k] = fresh[k]
        else:
            params[k] = np.array(tensors[k], dtype=dtype, order="C")  # a copy: the file's
            # arrays are read-only memory maps, and training updates the weights in place
    report.unexpected = sorted(k for k in tensors if k not in expected)
    return params


def from_pretrained(folder, head=None, dtype=np.float32, allow_pickle=False, seed=0,
                    ignore_mismatched_sizes=False, output_loading_info=False, verbose=True,
                    **config_overrides):
    """Load a Hugging Face ALBERT folder into our model class for ``head`` (default: the
    folder's architecture). ``config_overrides`` change the config, e.g. ``num_labels=5``
    for a new classification head. Returns the model (and the LoadReport with
    ``output_loading_info=True``); the report is also given as a warning when not clean."""
    folder = pathlib.Path(folder)
    d = read_config(folder)
    if head is None:
        arch = (d.get("architectures") or ["AlbertForPreTraining"])[0]
        head = ARCHITECTURES.get(arch, "pretraining")
    try:
        cfg = AlbertConfig.from_dict(d)
        if config_overrides:
            cfg = cfg.replace(**config_overrides)
    except (TypeError, ValueError) as e:
        raise HFCheckpointError(f"{folder}/config.json: {e}") from None
    raw, source = read_weights(folder, allow_pickle)
    cls = model_class(head)
    expected = parameter_shapes(cfg, head)
    report = LoadReport(source, head)
    tensors = _match(raw, expected, report)
    params = assemble(cfg, head, tensors, report, seed, dtype, ignore_mismatched_sizes)
    if verbose and not report.clean:
        warnings.warn(str(report), LoadReportWarning, stacklevel=2)
    model = cls(cfg, params=params)
    return (model, report) if output_loading_info else model


# ------------------------------------------------------------------------------ writing

def _tokenizer_config(tok):
    return {"tokenizer_class": "AlbertTokenizer", "do_lower_case": bool(tok.lower),
            "remove_space": bool(tok.remove_space), "keep_accents": bool(tok.keep_accents),
            "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>",
            "sep_token": "[SEP]", "pad_token": "<pad>", "cls_token": "[CLS]",
            "mask_token": "[MASK]", "model_max_length": 512}


def save_pretrained(model, folder, tokenizer=None):
    """Write a folder transformers loads (AutoModel / AlbertFor*.from_pretrained, and
    AlbertTokenizer when a tokenizer is given) with no missing-weight warnings.
    Files are written beside their final names and renamed into place."""
    cfg = model.config
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict(hf=True)
    d["architectures"] = [type(model).__name__]
    d.setdefault("tie_word_embeddings", True)
    atomic_write_text(folder / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")
    from safetensors.numpy import save_file

    tmp = folder / ".model.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in model.params.items()}, str(tmp),
              metadata={"format": "pt"})  # transformers refuses a file without "format"
    os.replace(tmp, folder / "model.safetensors")
    if tokenizer is not None:
        if getattr(tokenizer, "model_proto", None) is None:
            raise HFCheckpointError("this tokenizer has no SentencePiece model to save")
        tokenizer.save(folder)
        atomic_write_text(folder / "tokenizer_config.json",
                     json.dumps(_tokenizer_config(tokenizer), indent=2) + "\n")
        atomic_write_text(folder / "special_tokens_map.json", json.dumps(
            {k: v for k, v in _tokenizer_config(tokenizer).items() if k.endswith("_token")},
            indent=2) + "\n")
    return folder


# ------------------------------------------------------------------------------ tokenizer

def load_folder_tokenizer(folder):
    """The folder's tokenizer: spiece.model (with tokenizer_config.json's settings), or,
    failing that, tokenizer.json through the `tokenizers` package if it is installed."""
    from .tokenizer import AlbertTokenizer, JsonTokenizer, TokenizerError

    folder = pathlib.Path(folder)
    tc = {}
    if (folder / "tokenizer_config.json").exists():
        tc = json.loads((folder / "tokenizer_config.json").read_text())
    if (folder / "spiece.model").exists():
        return AlbertTokenizer(folder, lower=tc.get("do_lower_case", True),
                               remove_space=tc.get("remove_space", True),
                               keep_accents=tc.get("keep_accents", False))
    if (folder / "tokenizer.json").exists():
        try:
            return JsonTokenizer(folder / "tokenizer.json")
        except ImportError:
            raise TokenizerError(
                f"{folder} has no spiece.model, only tokenizer.json (what transformers 5 "
                "writes). Put the model's spiece.model beside it, or pip install tokenizers "
                "to read tokenizer.json") from None
    raise TokenizerError(f"{folder}: no spiece.model (the SentencePiece model ALBERT's tokenizer "
                         "needs) and no tokenizer.json")


# ------------------------------------------------------------------------------ convert

def is_hf_folder(path):
    path = pathlib.Path(path)
    return (path / "config.json").exists() and not (path / "state.json").exists() \
        and not (path / "LATEST").exists()


def convert(src, dst, allow_pickle=False, head=None):
    """minialbert checkpoint (run or ckpt folder) -> Hugging Face folder, or the reverse
    (a Hugging Face folder -> a minialbert checkpoint folder), by what ``src`` is.
    Returns (direction, LoadReport or None)."""
    from .checkpoint import load_checkpoint, resolve, save_checkpoint
    from .tokenizer import TokenizerError

    src, dst = pathlib.Path(src), pathlib.Path(dst)
    if is_hf_folder(src):
        model, report = from_pretrained(src, head=head, allow_pickle=allow_pickle,
                                        output_loading_info=True, verbose=False)
        try:
            tok = load_folder_tokenizer(src)
        except TokenizerError:
            tok = None
        if tok is not None and getattr(tok, "model_proto", None) is None:
            tok = None
        if tok is not None and tok.vocab_size != model.config.vocab_size:
            raise HFCheckpointError(f"{src}: the tokenizer has {tok.vocab_size} pieces, the "
                                    f"model {model.config.vocab_size}: they do not belong together")
        from .rundir import RunDir
        RunDir(dst)  # refuses a folder that holds a run: converting must not break it
        ck = save_checkpoint(dst, 0, model.params, model.config,
                             {"head": model.head, "source": str(src)}, tokenizer=tok)
        return f"Hugging Face -> minialbert ({ck})", report
    ck = resolve(src)
    cfg, params, state, _, ck = load_checkpoint(ck)
    head = state.get("head", "pretraining")
    model = model_class(head)(cfg, params=params)
    tok = None
    if (ck / "spiece.model").exists():
        from .checkpoint import load_run_tokenizer as _lt
        tok = _lt(ck, cfg.vocab_size)
    if dst.exists() and any(dst.iterdir()) and not is_hf_folder(dst):
        raise HFCheckpointError(f"{dst} exists and is not a Hugging Face folder; not writing "
                                "into it")
    save_pretrained(model, dst, tok)
    return f"minialbert -> Hugging Face ({dst})", None


def _cmd_convert(args):
    direction, report = convert(args.src, args.dst, args.allow_pickle, args.head)
    print(direction)
    if report is not None:
        print(report)
    return 0


def add_commands(sub):
    from .options import Help

    p = sub.add_parser("convert", formatter_class=Help, help="a Hugging Face ALBERT folder <-> a minialbert "
                       "checkpoint (the direction follows from what SRC is)")
    p.add_argument("src", help="a Hugging Face folder (config.json + model.safetensors) or a "
                   "minialbert run/checkpoint folder")
    p.add_argument("dst", help="the folder to write (a new or empty one, or a Hugging Face "
                   "folder to replace)")
    p.add_argument("--head", default=None, help="load into this head (default: the folder's "
                   "architecture)")
    p.add_argument("--allow-pickle", action="store_true", help="read pytorch_model.bin "
                   "(a pickle: only for files you trust; read without torch, tensors only)")
    p.set_defaults(func=_cmd_convert)


FOLDER_FORMAT.update(read=from_pretrained, write=save_pretrained)  # Model.from_pretrained

__all__ = ["from_pretrained", "save_pretrained", "load_folder_tokenizer", "convert", "read_weights",
           "LoadReport", "HFCheckpointError"]

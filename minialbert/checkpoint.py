"""Checkpoints: weights as safetensors, everything else as JSON; written atomically.

A run's folder holds ``ckpt-<step>/`` folders and a ``LATEST`` file naming the newest
complete one. A checkpoint is written into a temporary folder, flushed to disk, renamed
into place, and only then does ``LATEST`` (replaced atomically by os.replace) point at
it. A crash or kill at any moment leaves ``LATEST`` naming a complete checkpoint; the
state file records the SHA-256 of the weights, so a file damaged later is caught on load.

    ckpt-00000120/
      model.safetensors       the parameters, Hugging Face names
      optimizer.safetensors   optimizer moments
      config.json             the model config (Hugging Face's fields, plus ours)
      state.json              step, data position, schedule, seeds, corpus checksum,
                              tokenizer checksum, optimizer meta, weight checksums
      spiece.model            the tokenizer
"""
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np

from .config import AlbertConfig


class CheckpointError(ValueError):
    pass


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_tensors(path, arrays, metadata=None):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
              metadata=metadata)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _read_tensors(path):
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def save_checkpoint(run_dir, step, params, config, state, optimizer=None, tokenizer=None,
                    keep=2, _crash_after=None):
    """Write ckpt-<step> atomically, point LATEST at it, keep the newest ``keep``.
    ``_crash_after`` (tests only) raises after the named file is written."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:08d}"
    tmp = run_dir / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_tensors(tmp / "model.safetensors", params)
    if _crash_after == "model":
        raise KeyboardInterrupt("simulated crash")
    state = dict(state, step=step)
    if optimizer is not None:
        arrays, meta = optimizer.state_dict()
        _write_tensors(tmp / "optimizer.safetensors", arrays)
        state["optimizer"] = meta
        state["optimizer_sha256"] = _sha(tmp / "optimizer.safetensors")
    config.save(tmp / "config.json", hf=False)
    if tokenizer is not None:
        tokenizer.save(tmp)
        state["tokenizer_sha256"] = tokenizer.checksum
    state["model_sha256"] = _sha(tmp / "model.safetensors")
    (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    _fsync_dir(tmp)
    final = run_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = run_dir / f".LATEST.tmp{os.getpid()}"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, run_dir / "LATEST")
    _fsync_dir(run_dir)
    ckpts = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path):
    """A run folder (follow LATEST) or a checkpoint folder itself -> the checkpoint folder."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    if (path / "LATEST").exists():
        name = (path / "LATEST").read_text().strip()
        if not (path / name / "state.json").exists():
            raise CheckpointError(f"{path}/LATEST names {name}, which is missing or incomplete")
        return path / name
    if (path / "state.json").exists() or (path / "model.safetensors").exists():
        return path
    raise CheckpointError(f"{path}: neither a checkpoint (model.safetensors + state.json) "
                          "nor a run folder (LATEST)")


def load_checkpoint(path, dtype=np.float32):
    """-> (config, params, state, optimizer arrays or None, checkpoint folder)."""
    ck = resolve(path)
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ck}/state.json: unreadable ({e})") from None
    for fname, key in (("model.safetensors", "model_sha256"),
                       ("optimizer.safetensors", "optimizer_sha256")):
        f = ck / fname
        if key in state and (not f.exists() or _sha(f) != state[key]):
            raise CheckpointError(f"{f}: missing or corrupt (its SHA-256 does not match the one "
                                  "recorded when it was written)")
    try:
        config = AlbertConfig.load(ck / "config.json")
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{ck}/config.json: {e}") from None
    params = {k: v.astype(dtype) for k, v in _read_tensors(ck / "model.safetensors").items()}
    from .model import parameter_shapes

    expected = parameter_shapes(config, state.get("head", "pretraining"))
    missing = sorted(set(expected) - set(params))
    wrong = sorted(k for k in expected if k in params and params[k].shape != tuple(expected[k]))
    if missing or wrong:
        raise CheckpointError(f"{ck}: weights do not match config.json (missing {missing[:3]}, "
                              f"wrong shape {wrong[:3]})")
    opt = _read_tensors(ck / "optimizer.safetensors") if (ck / "optimizer.safetensors").exists() \
        else None
    return config, {k: params[k] for k in expected}, state, opt, ck


def load_tokenizer(ck, expected_vocab=None):
    from .tokenizer import AlbertTokenizer

    ck = resolve(ck)
    if not (ck / "spiece.model").exists():
        raise CheckpointError(f"{ck}: no spiece.model (the tokenizer) in this checkpoint")
    tok = AlbertTokenizer(ck)
    check_tokenizer(tok, expected_vocab)
    return tok


def check_tokenizer(tok, vocab_size, want_sha=None):
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise CheckpointError(f"the tokenizer has {tok.vocab_size} pieces but the model's "
                              f"vocab_size is {vocab_size}: they do not belong together")
    if want_sha is not None and tok.checksum != want_sha:
        raise CheckpointError("this tokenizer is not the one the checkpoint was trained with "
                              f"(SHA-256 {tok.checksum[:12]}…, expected {want_sha[:12]}…)")

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
                              tokenizer checksum and mode, optimizer meta, weight checksums
      spiece.model            the tokenizer
"""
import hashlib
import json
import os
import pathlib
import re
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


_KILL_AT = None  # tests only: the stage of a save at which the process kills itself (-9)
STAGES = ("folder", "model", "optimizer", "tokenizer", "state", "renamed", "latest-written",
          "latest", "pruned")


def _stage(name, crash_after):
    if crash_after == name:
        raise KeyboardInterrupt(f"simulated crash after {name}")
    if _KILL_AT == name:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path, text):
    """Write beside ``path``, flush to disk, rename over it: a reader (or a crash) sees the
    old file or the new one, never a part."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def checkpoint_key(path):
    """ckpt-00000120 -> (120, 0); ckpt-00000120.2 (a second save of step 120) -> (120, 2)."""
    m = re.fullmatch(r"ckpt-(\d+)(?:\.(\d+))?", pathlib.Path(path).name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def checkpoints(run_dir):
    """The complete checkpoint folders of a run, oldest first."""
    found = [p for p in pathlib.Path(run_dir).glob("ckpt-*") if p.is_dir() and checkpoint_key(p)]
    return sorted(found, key=checkpoint_key)


def latest_name(run_dir):
    f = pathlib.Path(run_dir) / "LATEST"
    try:
        return f.read_text().strip() if f.exists() else None
    except OSError:
        return None


def _write_files(tmp, step, params, config, state, optimizer, tokenizer, _crash_after):
    """The files of a checkpoint, into the temporary folder ``tmp``, flushed to disk."""
    _write_tensors(tmp / "model.safetensors", params)
    _stage("model", _crash_after)
    state = {k: v for k, v in state.items()  # checksums describe the files written here
             if k not in ("optimizer", "optimizer_sha256", "tokenizer_sha256", "model_sha256")}
    state["step"] = step
    if optimizer is not None:
        arrays, meta = optimizer.state_dict()
        _write_tensors(tmp / "optimizer.safetensors", arrays)
        state["optimizer"] = meta
        state["optimizer_sha256"] = _sha(tmp / "optimizer.safetensors")
    _stage("optimizer", _crash_after)
    config.save(tmp / "config.json", hf=False)
    if tokenizer is not None:
        tokenizer.save(tmp)
        state["tokenizer_sha256"] = tokenizer.checksum
        if getattr(tokenizer, "mode", None):  # the same spiece.model, another mode: other ids
            state["tokenizer_mode"] = tokenizer.mode
    _stage("tokenizer", _crash_after)
    state["model_sha256"] = _sha(tmp / "model.safetensors")
    with open(tmp / "state.json", "w") as f:
        f.write(json.dumps(state, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    _stage("state", _crash_after)


def save_checkpoint(run_dir, step, params, config, state, optimizer=None, tokenizer=None,
                    keep=None, _crash_after=None):
    """Write a checkpoint of ``step`` and point LATEST at it. Returns its folder.

    The order is what makes a kill at any instant safe: everything is written into a
    temporary folder and flushed; the folder is renamed to a name that is *free* (a second
    save of the same step becomes ckpt-<step>.1, so the checkpoint LATEST names is never
    removed or overwritten); LATEST is replaced atomically; only then are older checkpoints
    pruned (``keep``: how many of the newest to keep; None keeps all; the one LATEST names
    is always kept). A failed save removes its temporary folder and raises CheckpointError
    naming the folder; LATEST still names the previous checkpoint.
    ``_crash_after`` (tests only) raises KeyboardInterrupt after the named stage."""
    run_dir = pathlib.Path(run_dir)
    name = f"ckpt-{step:08d}"
    k = 0
    while (run_dir / name).exists():
        k += 1
        name = f"ckpt-{step:08d}.{k}"
    tmp = run_dir / f".{name}.tmp{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _stage("folder", _crash_after)
        _write_files(tmp, step, params, config, state, optimizer, tokenizer, _crash_after)
        final = run_dir / name
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            prev = latest_name(run_dir)
            raise CheckpointError(
                f"{run_dir}: could not write the checkpoint of step {step} "
                f"({e.strerror or e}); " + (f"LATEST still names {prev}" if prev else
                                            "no checkpoint was written")) from None
        raise
    _stage("renamed", _crash_after)
    latest_tmp = run_dir / f".LATEST.tmp{os.getpid()}"
    try:
        with open(latest_tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        _stage("latest-written", _crash_after)
        os.replace(latest_tmp, run_dir / "LATEST")
        _fsync_dir(run_dir)
    except OSError as e:
        latest_tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{run_dir}: wrote {name} but could not point LATEST at it "
                              f"({e.strerror or e})") from None
    _stage("latest", _crash_after)
    if keep:
        prune(run_dir, keep)
    _stage("pruned", _crash_after)
    return final


def prune(run_dir, keep, only=None):
    """Remove all but the newest ``keep`` checkpoints (of ``only``, the names a run wrote,
    when given), never the one LATEST names."""
    current = latest_name(run_dir)
    mine = [p for p in checkpoints(run_dir) if only is None or p.name in only]
    for old in mine[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


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
    from .heads import parameter_shapes

    expected = parameter_shapes(config, state.get("head", "pretraining"))
    missing = sorted(set(expected) - set(params))
    wrong = sorted(k for k in expected if k in params and params[k].shape != tuple(expected[k]))
    if missing or wrong:
        raise CheckpointError(f"{ck}: weights do not match config.json (missing {missing[:3]}, "
                              f"wrong shape {wrong[:3]})")
    opt = _read_tensors(ck / "optimizer.safetensors") if (ck / "optimizer.safetensors").exists() \
        else None
    return config, {k: params[k] for k in expected}, state, opt, ck


def check_finite(params, source):
    """NaN or infinite weights are a broken checkpoint, not a model to print nan from."""
    bad = [k for k, v in params.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinity "
                              f"({', '.join(bad[:3])}): the checkpoint is broken")


def load_run_tokenizer(ck, expected_vocab=None):
    """The tokenizer saved beside a minialbert checkpoint (its spiece.model), checked to have
    ``expected_vocab`` pieces. (A Hugging Face folder's: hf.load_folder_tokenizer.)"""
    from .tokenizer import MODES, AlbertTokenizer

    ck = resolve(ck)
    if not (ck / "spiece.model").exists():
        raise CheckpointError(f"{ck}: no spiece.model (the tokenizer) in this checkpoint")
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        state = None
    # the mode the run tokenized its data in; a checkpoint written before the mode was
    # recorded ran the default of that time, what is now "transformers<5.25"
    mode = (state or {}).get("tokenizer_mode", "transformers<5.25" if state else "transformers")
    if mode not in MODES:
        raise CheckpointError(f"{ck}/state.json: tokenizer_mode {mode!r} is none of {MODES}")
    tok = AlbertTokenizer(ck, mode=mode)
    check_tokenizer(tok, expected_vocab)
    return tok


def check_tokenizer(tok, vocab_size, want_sha=None):
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise CheckpointError(f"the tokenizer has {tok.vocab_size} pieces but the model's "
                              f"vocab_size is {vocab_size}: they do not belong together")
    if want_sha is not None and tok.checksum != want_sha:
        raise CheckpointError("this tokenizer is not the one the checkpoint was trained with "
                              f"(SHA-256 {tok.checksum[:12]}…, expected {want_sha[:12]}…)")

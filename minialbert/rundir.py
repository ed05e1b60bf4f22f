"""A run's folder, shared by pretraining and fine-tuning: who may write into it, its log,
its checkpoints and its summary; and stop requests (Ctrl-C, SIGTERM) taken between steps.

    runs/pretrain/
      LATEST                 the name of the newest complete checkpoint (checkpoint.py)
      ckpt-00000100/ ...     checkpoints this run wrote (the newest ``keep``)
      log.jsonl              one JSON record per step, per evaluation, per resume
      summary.json           written at the end
      curves.png             (pretraining) the loss and accuracy curves

The rules, each there because breaking it lost someone's work:

* **One run per folder.** A folder that holds a run (LATEST, a checkpoint or a log) is
  refused unless the run is resumed (``resume``) or the caller says ``overwrite`` — which
  removes only the files a run writes, nothing else in the folder.
* **Nothing is rewritten in place.** The log is appended to; on resume it is cut back to
  the checkpoint's step by writing a new file and renaming it over the old one. A torn last
  line (a kill or a full disk mid-append) is dropped with a warning, not a traceback.
* **Leftovers are cleaned.** Temporary folders of saves that were killed (``.ckpt-*.tmp<pid>``,
  of processes no longer running) are removed when a run starts in the folder.
* **A stop request is taken at a step boundary.** Ctrl-C (SIGINT) or SIGTERM sets a flag;
  the loop finishes the step it is in — the optimizer update included — saves, and the
  command exits with 128 + the signal number (130, 143), so ``pretrain && finetune`` stops.
  A second Ctrl-C stops at once, without saving the half-done step (the previous checkpoint
  stays).
"""
import json
import os
import pathlib
import re
import shutil
import signal
import sys
import threading

from .checkpoint import (CheckpointError, atomic_write_text, checkpoint_key, checkpoints,
                         latest_name, load_checkpoint, prune, save_checkpoint)

RUN_FILES = ("LATEST", "log.jsonl", "summary.json", "curves.png")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunDir:
    def __init__(self, path, resume=False, overwrite=False, keep=2):
        self.path, self.keep = pathlib.Path(path), keep
        p = self.path
        if p.exists() and not p.is_dir():
            raise CheckpointError(f"{p} is a file, not a folder: give --out a folder")
        if not resume and p.is_dir() and self.used():
            if not overwrite:
                raise CheckpointError(
                    f"{p} holds a run already ({self.describe()}): --resume continues it, "
                    "--overwrite starts over in it (removing its checkpoints and log), or "
                    "give another --out")
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / f".write-test{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise CheckpointError(f"{p}: cannot write into this folder ({e.strerror or e})") \
                from None
        self.clean_stale()
        if overwrite and not resume:
            self.remove_run_files()
        self.written = set()  # checkpoint names this process wrote
        self.saved_step = None
        self.log_path = p / "log.jsonl"

    # ------------------------------------------------------------------ the folder
    def used(self):
        p = self.path
        return (p / "LATEST").exists() or (p / "log.jsonl").exists() or bool(checkpoints(p))

    def describe(self):
        name = latest_name(self.path)
        if name:
            return f"LATEST names {name}"
        n = len(checkpoints(self.path))
        return f"{n} checkpoint(s)" if n else "a log.jsonl"

    def clean_stale(self):
        """Remove temporaries left by killed saves (those of processes no longer running)."""
        for t in self.path.glob(".*.tmp*"):
            m = re.search(r"\.tmp(\d+)$", t.name)
            if m and (int(m.group(1)) == os.getpid() or not _alive(int(m.group(1)))):
                if t.is_dir():
                    shutil.rmtree(t, ignore_errors=True)
                else:
                    t.unlink(missing_ok=True)

    def remove_run_files(self):
        for c in checkpoints(self.path):
            shutil.rmtree(c)
        for f in RUN_FILES:
            (self.path / f).unlink(missing_ok=True)

    # ------------------------------------------------------------------ the log
    def read_log(self):
        """The records of log.jsonl; a torn last line is dropped with a warning."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        recs = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                where = "its last line" if i == len(lines) - 1 else f"line {i + 1}"
                print(f"warning: {self.log_path}: {where} is torn (a kill or a full disk "
                      "while it was written); dropped", file=sys.stderr)
        return recs

    def start_log(self, resume_step=None):
        """A fresh log, or (resume) the log cut back to ``resume_step``, written atomically.
        Returns the records kept."""
        if resume_step is None:
            self.log_path.unlink(missing_ok=True)
            return []
        keep = [r for r in self.read_log() if r.get("step", 0) <= resume_step]
        atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in keep))
        self.saved_step = resume_step
        return keep

    def log(self, **rec):
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ checkpoints, summary
    def save(self, step, params, config, state, optimizer=None, tokenizer=None):
        """A checkpoint of ``step`` (none when this step is already the saved one), then the
        older ones this run wrote are pruned. Returns the checkpoint LATEST names."""
        if self.saved_step == step and latest_name(self.path):
            return self.path / latest_name(self.path)
        ck = save_checkpoint(self.path, step, params, config, state, optimizer, tokenizer)
        self.written.add(ck.name)
        self.saved_step = step
        if self.keep:
            mine = self.written | {c.name for c in checkpoints(self.path)
                                   if checkpoint_key(c)[0] <= step}
            prune(self.path, self.keep, only=mine)
        return ck

    def write_summary(self, summary):
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2))

    def read_summary(self):
        try:
            return json.loads((self.path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None


class FollowerRunDir:
    """The run folder as a rank other than the root sees it (data parallel training:
    distributed.py): the root alone writes the log, checkpoints and the summary."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.log_path = self.path / "log.jsonl"

    def start_log(self, resume_step=None):
        return []

    def log(self, **rec):
        pass

    def save(self, *a, **k):
        return None

    def write_summary(self, summary):
        pass

    def read_summary(self):
        return None


# ------------------------------------------------------------------------------ stopping

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequests:
    """``with StopRequests() as stop:`` … ``if stop.requested: save and leave``.

    The handlers are installed explicitly (not inherited: a process started with SIGINT
    ignored, as background jobs of a non-interactive shell are, still stops cleanly on
    Ctrl-C), and the previous ones restored on exit."""

    def __init__(self, say=print):
        self.signum, self.say, self.previous = None, say, {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_code(self):
        return EXIT_CODES.get(self.signum, 1)

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again "
              "stops at once; the previous checkpoint stays)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in EXIT_CODES:
                self.previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        return False


# ------------------------------------------------------------------------------ resuming

ALWAYS = ("out", "threads", "progress", "stop_after", "distributed", "deterministic")


def given_settings(cls, settings, overrides):
    """What the caller set: the keyword overrides, and the fields of ``settings`` that
    differ from the dataclass's defaults (the CLI passes only the options given)."""
    given = dict(overrides)
    if settings is not None:
        default = cls()
        for f in settings.__dataclass_fields__:
            if getattr(settings, f) != getattr(default, f) and f not in given:
                given[f] = getattr(settings, f)
    return given


def resume_settings(cls, saved, given, may_change):
    """The settings a resumed run continues with: the saved ones, with each given one that
    ``may_change`` applied — the others refused, never ignored. -> (settings,
    {name: [old, new]} of what changed)."""
    fields = cls.__dataclass_fields__
    run = {k: v for k, v in saved.items() if k in fields}
    run.update({k: fields[k].default for k in ALWAYS if k in fields})  # this call's, not saved
    changed = {}
    for k, v in given.items():
        if k in ALWAYS:
            run[k] = v
            continue
        old = run.get(k, fields[k].default)
        if v == old or (isinstance(v, list) and isinstance(old, (list, tuple))
                        and list(v) == list(old)):
            continue
        if k not in may_change:
            opt = "--" + k.replace("_", "-")
            raise CheckpointError(
                f"{opt} cannot change when a run is resumed (it was started with {old!r}); "
                f"options that can: {', '.join('--' + m.replace('_', '-') for m in may_change)}."
                " To change it, start a new run (another --out, or --overwrite)")
        run[k] = v
        changed[k] = [old, v]
    return cls(**run), changed


def resume_run(out, cls, given, may_change, command):
    """The latest checkpoint of the run in ``out`` and the settings to continue with ->
    (settings, changed, config, params, state, optimizer arrays, checkpoint folder)."""
    cfg, params, state, opt_arrays, ck = load_checkpoint(out)
    if "run" not in state or "optimizer" not in state:
        raise CheckpointError(f"{ck} was not written by minialbert {command} (no run "
                              "settings or optimizer state): it cannot be resumed")
    settings, changed = resume_settings(cls, state["run"], given, may_change)
    return settings, changed, cfg, params, state, opt_arrays, ck


def stopped_inside_a_step(out, step):
    """A second Ctrl-C inside an update: nothing saved. Says which checkpoint is the last
    and returns the run's summary for it (exit status 130)."""
    ck = latest_name(out)
    print(f"\nstopped at once inside step {step + 1}: not saved; the last "
          f"checkpoint is {out / ck if ck else 'none'}", file=sys.stderr)
    return dict(interrupted=True, step=step, checkpoint=None, exit_code=130)

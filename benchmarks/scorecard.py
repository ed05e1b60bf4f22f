"""Is minialbert faster than Hugging Face on this machine? Every benchmark, then one table.

    python benchmarks/scorecard.py --quick   # tiny only, a 60 s time-to-quality budget: ~10 min
    python benchmarks/scorecard.py           # tiny and base, a 150 s budget: ~35 min
    python benchmarks/scorecard.py --quick --isa avx2   # as a CPU without AVX-512 would

Runs bench_matmul.py, bench_train_step.py, bench_inference.py (--no-profile) and
bench_time_to_quality.py one after the other, each in its own process with its output
shown as it comes, each writing its headline figures with --json (benchmarks/_report.py);
then prints issue 11's targets against what they measured, on this machine, each ✓ or ✗.
Every figure is a ratio of two sides measured in the same run (> 1: we are faster),
against OpenBLAS for the GEMM and the faster of Hugging Face's rows for the rest. The
machine is named at the top of the table: a ratio holds for the CPU it was measured on.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import _isa
import _report

_isa.emulate_from_argv()  # --isa avx2: restarts under that ISA; the benchmarks inherit it

HERE = pathlib.Path(__file__).resolve().parent

# (key, script, its arguments in quick mode, in full mode)
BENCHMARKS = [
    ("matmul", "bench_matmul.py", ["--quick"], []),
    ("train", "bench_train_step.py", ["--quick"], []),
    ("inference", "bench_inference.py", ["--quick", "--no-profile"], ["--no-profile"]),
    ("quality", "bench_time_to_quality.py", ["--budget", "60"], ["--budget", "150"]),
]


def _ratio(x):
    return f"{x:.2f}x"


def _with_ceiling(ratio, ceiling, target):
    """(measured, ok, reachable) of a ratio against HF and its target, with the ceiling
    the benchmark measured beside it (None: a JSON from before ceilings, no claim)."""
    if ceiling is None:
        return _ratio(ratio), ratio >= target, None
    reach = ceiling >= target
    return (f"{_ratio(ratio)} (ceiling {_ratio(ceiling)}"
            + ("" if reach else ": out of reach on this machine") + ")",
            ratio >= target, reach)


def verdicts(figures):
    """[(what, target, measured, ok[, reachable])] from the benchmarks' figures ({key:
    their JSON, or None where the benchmark did not finish}); ok is None for a benchmark
    that gave nothing. The targets are issue 11's. A row against HF (training step,
    inference) carries reachable too: False where the target is above its ceiling on this
    machine (HF's time over our matrix products' at our measured peak, nothing else
    costing any time: _isa.ceiling), so that no GEMM could meet it here; None where the
    benchmark gave no ceiling."""
    rows = []

    def missing(key, what):
        if figures.get(key) is None:
            rows.append((what, "", "no figures (the benchmark failed or was cut)", None))
            return True
        return False

    if not missing("matmul", "GEMM (bench_matmul.py)"):
        m = figures["matmul"]
        if m["geo_ratio"] is not None:
            rows.append((f"GEMM vs OpenBLAS, geometric mean of {m['shapes']} shapes "
                         "(sizes >= 512, E->H)", ">= 0.9x", _ratio(m["geo_ratio"]),
                         m["geo_ratio"] >= 0.9))
            rows.append(("GEMM vs OpenBLAS, the worst of them", ">= 0.75x",
                         f"{_ratio(m['worst_ratio'])} ({m['worst_shape']})",
                         m["worst_ratio"] >= 0.75))
        rows.append(("import + first matmul, warm Numba cache", "< 3 s",
                     f"{m['first_call_s']:.2f} s", m["first_call_s"] < 3.0))
    if not missing("train", "training step (bench_train_step.py)"):
        for t in figures["train"]:
            batch = "full batch" if t["padding"] < 0.005 else f"{t['padding']:.0%} padding"
            where = f"training step, {t['config']}, {batch}"
            masked_target = 1.5 if t["config"] == "tiny" else 1.0
            for path, label, target in (("masked", "masked MLM path", masked_target),
                                        ("all", "logits at every position", 1.0)):
                if path in t["ratio"]:
                    r = t["ratio"][path]
                    rows.append((f"{where}: {label}", f">= {target:.1f}x",
                                 *_with_ceiling(r, t.get("ceiling", {}).get(path), target)))
            ours = max(t["peak_mb"].get(p, 0) for p in ("masked", "all"))
            rows.append((f"{where}: peak memory, ours (larger path) vs HF's smallest",
                         "<= HF", f"{ours:,.0f} vs {t['hf_peak_mb']:,.0f} MB",
                         ours <= t["hf_peak_mb"]))
    if not missing("inference", "inference (bench_inference.py)"):
        for i in figures["inference"]:
            rows.append((f"inference, {i['config']}, {i['shape']} "
                         f"({i['ours_ms']:.2f} vs {i['hf_ms']:.2f} ms)", ">= 1.5x",
                         *_with_ceiling(i["ratio"], i.get("ceiling"), 1.5)))
    if not missing("quality", "time to quality (bench_time_to_quality.py)"):
        q = figures["quality"]
        ours, hf = q["minialbert"], q["hf"]
        rows.append((f"time to quality, {q['budget_s']:.0f} s each: steps, ours / HF's "
                     f"({ours['steps']} vs {hf['steps']})", ">= 1.5x",
                     _ratio(q["steps_ratio"]), q["steps_ratio"] >= 1.5))
        rows.append(("time to quality: held-out MLM loss, ours vs HF's", "<= HF's",
                     f"{ours['mlm_loss']:.3f} vs {hf['mlm_loss']:.3f}",
                     ours["mlm_loss"] <= hf["mlm_loss"]))
    return rows


def table(rows):
    """The verdicts as text: a line a target, and a count at the end."""
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':<{w}}  {'target':>8}  measured"]
    for what, target, measured, ok, *_ in rows:
        mark = "?" if ok is None else "✓" if ok else "✗"
        lines.append(f"{what:<{w}}  {target:>8}  {measured}  {mark}")
    met = sum(1 for r in rows if r[3])
    judged = sum(1 for r in rows if r[3] is not None)
    beyond = sum(1 for r in rows if r[3] is False and r[4:] == (False,))
    lines.append(f"{met} of {judged} targets met"
                 + (f"; {beyond} of the misses out of reach on this machine (their target "
                    "above the ceiling: no GEMM meets it here)" if beyond else "")
                 + (f"; {len(rows) - judged} benchmark(s) gave no figures" if judged < len(rows)
                    else ""))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny only, fewer rounds, a 60 s time-to-quality budget")
    _isa.add_option(ap)
    _report.add_option(ap)
    a = ap.parse_args()
    _report.check(ap, a.json)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        ap.error(f"the other side of every comparison is torch and transformers ({e}): "
                 "pip install -e '.[bench]'")
    figures = {}
    with tempfile.TemporaryDirectory() as d:
        for key, script, quick, full in BENCHMARKS:
            out = os.path.join(d, key + ".json")
            args = quick if a.quick else full
            print(f"\n=== scorecard: {script} {' '.join(args)}", flush=True)
            r = subprocess.run([sys.executable, str(HERE / script), *args, "--json", out])
            # what it wrote (the train-step and inference benchmarks write after each
            # batch or row, so a benchmark that failed half-way keeps what it finished)
            figures[key] = (json.loads(pathlib.Path(out).read_text())
                            if os.path.exists(out) else None)
            if r.returncode != 0:
                print(f"=== scorecard: {script} exited with {r.returncode}", flush=True)
    print("\n=== scorecard: issue 11's targets, measured side by side on this machine "
          f"({'--quick' if a.quick else 'full'})")
    print(_isa.header(os.cpu_count()))
    print(table(verdicts(figures)))
    _report.write(a.json, dict(quick=a.quick, figures=figures))


if __name__ == "__main__":
    main()

"""Side by side on a noisy host: every side in its own process, all alive at once, timed in
rounds.

A benchmark starts one worker process per side (ours, HF eager, HF sdpa, ...). A worker
builds its side, says "ready", and then waits on stdin. In each round the benchmark asks
every worker in turn to time each job ("run JOB N" -> N timings, JSON), after `rest`
seconds of quiet, so that the worker threads of the side before have stopped spinning.
A side's time for a job is the median of its best round. A slow moment of a shared host
then costs every side alike, instead of whichever side happened to run in it. Each
process's peak memory (max RSS) is still its own.

    worker side:    serve(jobs, summary)      jobs: name -> callable (one timed run)
    benchmark side: best, every = rounds(commands, job_names, steps, n_rounds)
"""
import json
import os
import subprocess
import sys
import time

import numpy as np


def serve(jobs, summary=dict, warmup=2, settle=None):
    """The worker's loop: warm every job up, say "ready", then answer "run JOB N" with the
    N wall times of JOB (JSON) until "done", then print summary() (JSON).

    Before the timed calls of a turn, the job runs untimed for ``settle`` seconds
    (MINIALBERT_BENCH_SETTLE, default 0.25): after the pause of the other sides' turns,
    the first fifth of a second ran at about two thirds of the speed of the rest on a
    2-core EPYC (Zen 5) — the measured peak of our micro-kernel did, and ten one-sentence
    calls fall wholly inside it. Every side settles alike, so the times are of a warm
    process, as a server's would be."""
    if settle is None:
        settle = float(os.environ.get("MINIALBERT_BENCH_SETTLE", "0.25"))
    for f in jobs.values():
        for _ in range(warmup):
            f()
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] != "run":
            break
        f = jobs[cmd[1]]
        t_end = time.perf_counter() + settle
        while time.perf_counter() < t_end:
            f()
        times = []
        for _ in range(int(cmd[2])):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)
    print(json.dumps(summary()), flush=True)


def rounds(commands, jobs, steps, n_rounds, rest=0.3):
    """Start one worker per command (one after another, so that each warms up alone), time
    every job on every worker in turn for n_rounds rounds. -> (best, every, summaries):
    best[w][job] the median of worker w's best round, every[w][job] all its times, and
    each worker's summary."""
    procs = []
    try:
        for cmd in commands:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                sys.exit(f"worker failed: {' '.join(cmd)}")
        best = [{j: float("inf") for j in jobs} for _ in procs]
        every = [{j: [] for j in jobs} for _ in procs]
        for _ in range(n_rounds):
            for job in jobs:
                for w, p in enumerate(procs):
                    time.sleep(rest)
                    p.stdin.write(f"run {job} {steps}\n")
                    p.stdin.flush()
                    times = json.loads(p.stdout.readline())
                    best[w][job] = min(best[w][job], float(np.median(times)))
                    every[w][job] += times
        summaries = []
        for p in procs:
            out, _ = p.communicate("done\n")
            summaries.append(json.loads(out.strip().splitlines()[-1]))
        return best, every, summaries
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

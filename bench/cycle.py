#!/usr/bin/env python3
"""How autoexp's monitor cycle scales: time per cycle, state file size and write time, and
peak memory, for sweeps of 100 to 5000 jobs, against an in-memory SLURM (no process
spawning, so the figures are autoexp's own cost). Also the parser on a 20,000-line squeue.

    python3 bench/cycle.py [N ...]        (default: 100 1000 5000)

Prints one line per size; nothing is asserted (figures, not a flaky timed test).
"""

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from helpers import Harness, autoexp  # noqa: E402


def config(n):
    return {
        "project": "bench",
        "sweep": {"seed": list(range(n))},
        "job": {"name": "{project}-{seed}", "command": "train --seed {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": {"interval_seconds": 60, "termination_string": "TRAINING FINISHED",
                       "inactivity_threshold_seconds": 3600,
                       "log_events": [{"name": "oom", "pattern": "CUDA out of memory", "mode": "oom"},
                                      {"name": "nccl", "pattern": "NCCL (error|WARN Timeout)", "mode": "crash"}]},
    }


def bench(n):
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        h = Harness(Path(tmp), config(n))
        submit_s = time.perf_counter() - t0
        for job in h.session.jobs:
            h.slurm.set(job.current.job_id, "RUNNING")
        h.cycle()
        times = []
        for i in range(10):
            # every job's log grows by a few lines between cycles
            for job in h.session.jobs:
                h.log(job.name, "step %d loss=0.1 lr=0.001\n" % i * 5)
            t = time.perf_counter()
            h.cycle(advance=60)
            times.append(time.perf_counter() - t)
        size = os.path.getsize(h.session.path)
        t = time.perf_counter()
        for _ in range(5):
            h.store.save(h.session, h.clock())
        save_ms = (time.perf_counter() - t) / 5 * 1000
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print("%5d jobs: register+submit %6.2fs  cycle median %7.1f ms (max %7.1f)  state %7.1f KiB  "
              "save %6.1f ms  peak RSS %6.1f MiB" % (
                  n, submit_s, statistics.median(times) * 1000, max(times) * 1000, size / 1024.0, save_ms, rss))


def bench_parser(lines=20000):
    text = "".join("%d|%d|RUNNING|None|job-%d|autoexp:p:job-%d\n" % (i, i, i, i) for i in range(lines))
    t = time.perf_counter()
    rows = autoexp.parse_squeue(text)
    print("parse_squeue: %d lines in %.1f ms" % (len(rows), (time.perf_counter() - t) * 1000))


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000, 5000]
    print("autoexp %s on Python %s" % (autoexp.__version__, sys.version.split()[0]))
    bench_parser()
    for n in sizes:
        bench(n)

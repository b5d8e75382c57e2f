#!/usr/bin/env python3
"""What a cycle costs as a sweep grows (issue 12's table): figures, not a test. Timings are
the minimum of several runs (the machine is shared and noisy); counts are exact.

    python3 bench/scale.py [--jobs 10000] [--big 100000] [--runs 5] [--submitit]

Each figure drives autoexp's own code in-process on a stub SLURM (no process is spawned,
so the CPU is autoexp's): squeue's text is made once and fed to the real parser; sacct the
same. Logs are real files in a temporary folder. Peak RSS is measured in a child process
per size. --submitit compares the sacct/squeue parsers with submitit's read_info (it
installs submitit into bench/.venv-submitit, never a dependency of autoexp).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import autoexp  # noqa: E402

TERM = "TRAINING FINISHED"


class StubSlurm(object):
    """SlurmClient's interface on text made in memory, parsed by autoexp's real parsers."""

    def __init__(self, clock, user="bench"):
        self.clock, self.user, self.skipped = clock, user, []
        self.jobs = {}  # id -> [name, comment, state, submit]
        self.next_id = 1000
        self.calls = {"squeue": 0, "sacct": 0, "sbatch": 0, "scancel": 0}
        self.squeue_text = None

    def squeue(self):
        self.calls["squeue"] += 1
        if self.squeue_text is None:
            self.squeue_text = "".join("%s|%s|%s|None|%s|%s|%s\n" % (j, j, d[2], d[3], d[0], d[1])
                                       for j, d in self.jobs.items() if d[2] != "GONE")
        return autoexp.parse_squeue(self.squeue_text)

    def sacct(self, job_ids, since):
        self.calls["sacct"] += 1
        return {}

    def sacct_by_name(self, names, since):
        self.calls["sacct"] += 1
        names = set(names)
        text = "".join("%s|%s|%s|%s|0:0|%s|%s|%s|%s\n" % (j, j, d[0], d[2], d[3], d[3], d[3], d[1])
                       for j, d in self.jobs.items() if d[0] in names and d[2] == "COMPLETED")
        return autoexp.parse_sacct(text)

    def sbatch(self, script, args=()):
        self.calls["sbatch"] += 1
        self.next_id += 1
        name = [a for a in args if a.startswith("--job-name=")][0].split("=", 1)[1]
        tag = [a for a in args if a.startswith("--comment=")][0].split("=", 1)[1]
        self.jobs[str(self.next_id)] = [name, tag, "RUNNING", autoexp.local_time(self.clock())]
        self.squeue_text = None
        return autoexp.SubmitResult(autoexp.SB_OK, str(self.next_id), "")

    def scancel(self, job_id):
        self.calls["scancel"] += 1
        return True, ""

    def set(self, job_id, state):
        self.jobs[job_id][2] = state
        self.squeue_text = None


class Clock(object):
    def __init__(self):
        self.now = 1780000000.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def config(n):
    return {
        "project": "bench", "sweep": {"seed": list(range(n))},
        "job": {"name": "{project}-{seed}", "command": "train --seed {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": {"interval_seconds": 60, "termination_string": TERM, "inactivity_threshold_seconds": 3600,
                       "log_events": [{"name": "oom", "pattern": "CUDA out of memory", "mode": "oom"},
                                      {"name": "nccl", "pattern": "NCCL (error|WARN Timeout)", "mode": "crash"}]},
    }


def state_bytes(store, sid):
    total = 0
    for name in os.listdir(store.root):
        if name.startswith(sid + ".") and not name.endswith((".lock", ".events.jsonl")):
            total += os.path.getsize(os.path.join(store.root, name))
    return total


def written(store, sid):
    """Bytes of the session's state files now (they only grow, or are replaced by a new generation)."""
    return state_bytes(store, sid)


class Sweep(object):
    """A planned, submitted sweep of n single jobs, every job RUNNING with a log."""

    def __init__(self, root, n):
        self.root = str(root)
        self.clock = Clock()
        self.slurm = StubSlurm(self.clock)
        cfg = os.path.join(self.root, "cfg.json")
        with open(cfg, "w") as f:
            json.dump(config(n), f)
        resolved = autoexp.resolve_config(autoexp.load_config_file(cfg), cfg, [])
        state = os.path.join(self.root, "state")
        manifest, scripts = autoexp.build_plan(resolved, cfg, "b1", state, self.root, self.clock())
        self.store = autoexp.StateStore(state)
        self.store.ensure()
        self.plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
        self.s = self.store.create_session(self.plan, self.clock())
        self.ctl = autoexp.Controller(self.store, self.slurm, autoexp.Reporter(0, _Null(), _Null()),
                                      clock=self.clock, sleep=self.clock.sleep)
        self.ctl.register(self.s, self.plan.jobs, False)
        t = time.perf_counter()
        self.ctl.cycle([self.s])  # lookup, intents, 10k sbatch
        self.submit_seconds = time.perf_counter() - t
        for job in self.s.jobs:
            self.write_log(job, "step 0 loss=1.0\n")
        self.clock.now += 60
        self.ctl.cycle([self.s])  # every job seen RUNNING, every log read once

    def log_path(self, job):
        att = job.current
        return autoexp.resolve_log_path(self.plan.by_name[job.name].log_template, att.job_id, att.job_id,
                                        job.name, self.slurm.user)

    def write_log(self, job, text):
        with open(self.log_path(job), "a") as f:
            f.write(text)

    def cycle(self):
        self.clock.now += 60
        t0, c0 = time.perf_counter(), time.process_time()
        self.ctl.cycle([self.s])
        return time.perf_counter() - t0, time.process_time() - c0


class _Null(object):
    encoding = "utf-8"

    def write(self, text):
        pass

    def flush(self):
        pass


def measure(n, runs):
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        sw = Sweep(Path(tmp), n)
        out["submit_jobs_per_s"] = n / sw.submit_seconds
        # a cycle in which nothing changed
        before = written(sw.store, "b1")
        calls = dict(sw.slurm.calls)
        cpu = []
        for _ in range(runs):
            cpu.append(sw.cycle()[1])
        out["idle_cycle_cpu_ms"] = min(cpu) * 1000
        out["idle_cycle_bytes_written"] = written(sw.store, "b1") - before
        out["idle_cycle_slurm_calls"] = dict((k, (sw.slurm.calls[k] - calls[k]) / float(runs)) for k in calls)
        # 1% of the jobs finish in a cycle
        done = sw.s.jobs[:max(1, n // 100)]
        for job in done:
            sw.write_log(job, TERM + "\n")
            sw.slurm.set(job.current.job_id, "COMPLETED")
        before = written(sw.store, "b1")
        gen = sw.s.generation
        calls = dict(sw.slurm.calls)
        out["finish_1pct_cycle_cpu_ms"] = sw.cycle()[1] * 1000
        out["finish_1pct_bytes_written"] = written(sw.store, "b1") - before if sw.s.generation == gen else \
            "new generation: %d" % written(sw.store, "b1")
        out["finish_1pct_slurm_calls"] = dict((k, sw.slurm.calls[k] - calls[k]) for k in calls)
        out["state_files_bytes"] = state_bytes(sw.store, "b1")
        # every log grows by a line in every cycle (a training sweep)
        grow = []
        for i in range(3):
            for job in sw.s.jobs:
                if job.current.live:
                    sw.write_log(job, "step %d loss=0.5\n" % (i + 1))
            before = written(sw.store, "b1")
            gen = sw.s.generation
            cpu = sw.cycle()[1]
            grow.append((cpu, written(sw.store, "b1") - before if sw.s.generation == gen else None))
        out["growing_cycle_cpu_ms"] = min(g[0] for g in grow) * 1000
        out["growing_cycle_bytes_written"] = [g[1] for g in grow]
    return out


def rss_child(n):
    """Peak RSS of a process that loads a session of n jobs and runs idle cycles."""
    code = ("import sys, json; sys.path.insert(0, %r); import scale, resource, tempfile, pathlib\n"
            "with tempfile.TemporaryDirectory() as t:\n"
            "    sw = scale.Sweep(pathlib.Path(t), %d)\n"
            "    s = sw.store.load(sw.s.path)\n"
            "    ctl = scale.autoexp.Controller(sw.store, sw.slurm, sw.ctl.report, clock=sw.clock, sleep=sw.clock.sleep)\n"
            "    for _ in range(3):\n"
            "        sw.clock.now += 60; ctl.cycle([s])\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n" % (HERE, n))
    out = subprocess.check_output([sys.executable, "-c", code]).decode().split()
    return int(out[-1]) / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--big", type=int, default=0, help="also a sweep of this many jobs (100000: ~minutes)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rss", action="store_true", help="peak RSS of a monitor process per size")
    args = ap.parse_args()
    for n in [args.jobs] + ([args.big] if args.big else []):
        t = time.time()
        res = measure(n, args.runs)
        print("%d jobs (%.0f s):" % (n, time.time() - t))
        for k, v in res.items():
            print("  %-28s %s" % (k, ("%.1f" % v) if isinstance(v, float) else v))
        if args.rss:
            print("  %-28s %.1f MiB" % ("peak_rss", rss_child(n)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

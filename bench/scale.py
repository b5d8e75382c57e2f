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
        self.known = {}

    def squeue(self):
        self.calls["squeue"] += 1
        if self.squeue_text is None:
            self.squeue_text = "".join("%s|%s|%s|None|%s|%s|%s\n" % (j, j, d[2], d[3], d[0], d[1])
                                       for j, d in self.jobs.items() if d[2] != "GONE")
        return autoexp.parse_squeue(self.squeue_text, known=self.known)

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


def rss_child(n, cycles=3):
    """Peak RSS (VmHWM) of a fresh process that loads a session of n jobs written by
    another one and follows it for a few idle cycles: what a monitor or a cron pass costs."""
    tmp = tempfile.mkdtemp()
    try:
        sw = Sweep(Path(tmp), n)
        sw.ctl.flush([sw.s])
        code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
                "import autoexp, scale\n"
                "def hwm():\n"
                "    for line in open('/proc/self/status'):\n"
                "        if line.startswith('VmHWM'): return int(line.split()[1]) / 1024.0\n"
                "root = sys.argv[1]\n"
                "store = autoexp.StateStore(root)\n"
                "s = store.load(root + '/b1.json')\n"
                "slurm = scale.StubSlurm(scale.Clock())\n"
                "for j in s.jobs:\n"
                "    a = j.current\n"
                "    slurm.jobs[a.job_id] = [j.name, 'autoexp:b1:' + j.name, 'RUNNING', a.slurm_submit or 'x']\n"
                "ctl = autoexp.Controller(store, slurm, autoexp.Reporter(0, scale._Null(), scale._Null()),\n"
                "                         clock=slurm.clock, sleep=slurm.clock.sleep)\n"
                "for _ in range(%d):\n"
                "    slurm.clock.now += 60; ctl.cycle([s])\n"
                "print(hwm())\n" % (ROOT, HERE, cycles))
        out = subprocess.check_output([sys.executable, "-c", code, sw.store.root]).decode().split()
        return float(out[-1])
    finally:
        subprocess.call(["rm", "-rf", tmp])


def sacct_calls_for_sessions(sessions=5, per=200):
    """SLURM calls of one cycle over several sessions whose jobs all left squeue."""
    tmp = tempfile.mkdtemp()
    try:
        clock = Clock()
        slurm = StubSlurm(clock)
        sweeps = []
        for k in range(sessions):
            root = Path(tmp) / ("s%d" % k)
            root.mkdir()
            sw = Sweep.__new__(Sweep)
            sw.root, sw.clock, sw.slurm = str(root), clock, slurm
            cfg = os.path.join(sw.root, "cfg.json")
            c = config(per)
            c["project"] = "p%d" % k
            with open(cfg, "w") as f:
                json.dump(c, f)
            resolved = autoexp.resolve_config(autoexp.load_config_file(cfg), cfg, [])
            state = os.path.join(tmp, "state")
            manifest, scripts = autoexp.build_plan(resolved, cfg, "b%d" % k, state, sw.root, clock())
            store = autoexp.StateStore(state)
            store.ensure()
            plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
            s = store.create_session(plan, clock())
            ctl = autoexp.Controller(store, slurm, autoexp.Reporter(0, _Null(), _Null()), clock=clock,
                                     sleep=clock.sleep)
            ctl.register(s, plan.jobs, False)
            ctl.cycle([s])
            sweeps.append(s)
        ctl = autoexp.Controller(store, slurm, autoexp.Reporter(0, _Null(), _Null()), clock=clock, sleep=clock.sleep)
        ctl.cycle(sweeps)
        for jid in slurm.jobs:
            slurm.set(jid, "GONE")  # every job left squeue: each needs sacct
        before = dict(slurm.calls)
        clock.now += 60
        ctl.cycle(sweeps)
        return dict((k, slurm.calls[k] - before[k]) for k in before)
    finally:
        subprocess.call(["rm", "-rf", tmp])


def log_bytes_read(n=200, cycles=3):
    """Bytes read from logs per cycle while every log grows by one line, and while none does."""
    tally = [0]
    real = autoexp.open_log

    class Counting(object):
        def __init__(self, f):
            self.f = f

        def read(self, k=-1):
            data = self.f.read(k)
            tally[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting(path):
        f, st = real(path)
        return Counting(f), st
    tmp = tempfile.mkdtemp()
    try:
        sw = Sweep(Path(tmp), n)
        autoexp.open_log = counting
        appended = read = 0
        for i in range(cycles):
            line = "step %d loss=0.25 lr=0.001\n" % (i + 1)
            for job in sw.s.jobs:
                sw.write_log(job, line)
                appended += len(line)
            before = tally[0]
            sw.cycle()
            read += tally[0] - before
        before = tally[0]
        sw.cycle()
        idle = tally[0] - before
        return appended, read, idle
    finally:
        autoexp.open_log = real
        subprocess.call(["rm", "-rf", tmp])


def rebuild_seconds(n):
    """CPU seconds to rebuild a session of n running jobs from SLURM (the state moved aside,
    `monitor --monitor-all`): every job registered again and adopted by its tag in one cycle."""
    tmp = tempfile.mkdtemp()
    try:
        clock = Clock()
        slurm = StubSlurm(clock)
        cfg = os.path.join(tmp, "cfg.json")
        with open(cfg, "w") as f:
            json.dump(config(n), f)
        resolved = autoexp.resolve_config(autoexp.load_config_file(cfg), cfg, [])
        state = os.path.join(tmp, "state")
        manifest, scripts = autoexp.build_plan(resolved, cfg, "b1", state, tmp, clock())
        plan = autoexp.load_manifest(autoexp.write_plan(manifest, scripts))
        for i, job in enumerate(plan.jobs):
            slurm.jobs[str(5000 + i)] = [job.name, "autoexp:b1:" + job.name, "RUNNING", autoexp.local_time(clock())]
        store = autoexp.StateStore(state)
        store.ensure()
        s = store.create_session(plan, clock())
        ctl = autoexp.Controller(store, slurm, autoexp.Reporter(0, _Null(), _Null()), clock=clock, sleep=clock.sleep)
        c0 = time.process_time()
        ctl.register(s, plan.jobs, False)
        clock.now += 60
        ctl.cycle([s])
        took = time.process_time() - c0
        assert slurm.calls["sbatch"] == 0 and all(j.current.job_id for j in s.jobs)
        return took
    finally:
        subprocess.call(["rm", "-rf", tmp])


def parse_times(n, runs):
    """Seconds to parse n sacct lines and n squeue lines, autoexp's parsers."""
    import timeit
    sacct, squeue = sample_lines(n)
    return (min(timeit.repeat(lambda: autoexp.parse_sacct(sacct), number=1, repeat=runs)),
            min(timeit.repeat(lambda: autoexp.parse_squeue(squeue), number=1, repeat=runs)))


def sample_lines(n):
    sacct = "".join("%d|%d|sweep-%05d|%s|0:0|2026-12-01T10:%02d:%02d|2026-12-01T11:%02d:%02d|"
                    "2026-12-01T12:%02d:%02d|autoexp:plan-20261201:sweep-%05d\n" % (
                        4000000 + i, 4000000 + i, i, "COMPLETED" if i % 3 else "RUNNING",
                        (i // 60) % 60, i % 60, (i // 60) % 60, i % 60, (i // 60) % 60, i % 60, i) for i in range(n))
    squeue = "".join("%d|%d|RUNNING|None|2026-12-01T10:00:00|sweep-%05d|autoexp:plan-20261201:sweep-%05d\n"
                     % (4000000 + i, 4000000 + i, i, i) for i in range(n))
    return sacct, squeue


SUBMITIT_VENV = os.path.join(HERE, ".venv-submitit")


def submitit_times(n, runs):
    """submitit's read_info on the same lines (with the header line it expects), in its own venv."""
    py = os.path.join(SUBMITIT_VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", SUBMITIT_VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "submitit"])
    sacct, squeue = sample_lines(n)
    tmp = tempfile.mkdtemp()
    try:
        with open(os.path.join(tmp, "sacct"), "w") as f:
            f.write(autoexp.SACCT_FIELDS.replace(",", "|") + "\n" + sacct)
        with open(os.path.join(tmp, "squeue"), "w") as f:
            f.write("JobID|JobIDRaw|State|Reason|Submit|JobName|Comment\n" + squeue)
        code = ("import sys, timeit\nfrom submitit.slurm.slurm import SlurmInfoWatcher\nw = SlurmInfoWatcher()\n"
                "for name in ('sacct', 'squeue'):\n"
                "    text = open(sys.argv[1] + '/' + name).read()\n"
                "    print(min(timeit.repeat(lambda: w.read_info(text), number=1, repeat=%d)))\n" % runs)
        out = subprocess.check_output([py, "-c", code, tmp]).decode().split()
        return float(out[0]), float(out[1])
    finally:
        subprocess.call(["rm", "-rf", tmp])


def startup(runs, pyz):
    """`python3 autoexp.pyz status` against a bare `python3 -c "import json, argparse"`."""
    import statistics

    def best(argv):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
        return min(times), statistics.median(times)
    tmp = tempfile.mkdtemp()
    try:
        bare = best([sys.executable, "-c", "import json, argparse"])
        best([sys.executable, pyz, "--version"])  # the compiled code cached once
        status = best([sys.executable, pyz, "--state-dir", tmp, "status"])
        return bare, status
    finally:
        subprocess.call(["rm", "-rf", tmp])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--big", type=int, default=0, help="also a sweep of this many jobs (100000: minutes)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak RSS children")
    ap.add_argument("--submitit", action="store_true", help="compare the parsers with submitit's (own venv)")
    args = ap.parse_args()
    print("machine: %d cores, load %s; timings are the minimum of %d runs" % (
        os.cpu_count() or 1, " ".join("%.2f" % x for x in os.getloadavg()), args.runs))
    for n in [args.jobs] + ([args.big] if args.big else []):
        t = time.time()
        res = measure(n, args.runs)
        print("%d jobs (%.0f s):" % (n, time.time() - t))
        for k, v in res.items():
            print("  %-30s %s" % (k, ("%.1f" % v) if isinstance(v, float) else v))
        if not args.no_rss:
            print("  %-30s %.1f MiB" % ("monitor_peak_rss", rss_child(n)))
        sys.stdout.flush()
    print("sacct calls of one cycle over 5 sessions whose 200 jobs each left squeue: %s"
          % sacct_calls_for_sessions())
    appended, read, idle = log_bytes_read()
    print("log tails, 200 jobs, 3 cycles: %d bytes appended, %d read; a cycle with no growth read %d"
          % (appended, read, idle))
    print("rebuild from SLURM (every job adopted by tag): %s" % ", ".join(
        "%d jobs %.2f s" % (k, rebuild_seconds(k)) for k in (4000, 8000, 16000)))
    ps, pq = parse_times(10000, args.runs)
    line = "parse 10k lines: sacct %.1f ms, squeue %.1f ms" % (ps * 1000, pq * 1000)
    if args.submitit:
        ss, sq = submitit_times(10000, args.runs)
        line += "; submitit read_info on the same: sacct %.1f ms (ratio %.2f), squeue %.1f ms (ratio %.2f)" % (
            ss * 1000, ps / ss, sq * 1000, pq / sq)
    print(line)
    pyz = os.path.join(tempfile.mkdtemp(), "autoexp.pyz")
    subprocess.check_call(["bash", os.path.join(ROOT, "build_pyz.sh"), pyz], stdout=subprocess.DEVNULL)
    (bare, bare_med), (status, status_med) = startup(max(args.runs, 10), pyz)
    print("start-up: python3 -c 'import json, argparse' %.1f ms; python3 autoexp.pyz status %.1f ms "
          "(ratio %.2f; medians %.1f / %.1f)" % (bare * 1000, status * 1000, status / bare, bare_med * 1000,
                                                status_med * 1000))


if __name__ == "__main__":
    main()

"""The fake SLURM's simulated jobs (simulate_jobs) and its storage, at the scale of a sweep.

A simulated job is played on paper: no runner, no process, its state advanced by the clock
from the times its script gives (sleep), its log written by the fake itself on the way.
tests/test_fake_slurm.py and tests/test_fake_slurm_generations.py replay their real-SLURM
scenarios in this mode too; here: the subset of sh the fake reads, exact times, rules and
throttles on paper, no process started, and what a sweep of 10,000 such jobs costs the fake
(counts and bytes; timings are printed, never asserted: the machine is shared)."""

import os
import re
import subprocess
import sys
import time

import pytest

from helpers import FAKE_SLURM_BIN

sys.path.insert(0, FAKE_SLURM_BIN)
import fake_slurm  # noqa: E402

pytestmark = pytest.mark.timeout(120)

SQUEUE_FMT = "%i|%A|%T|%r|%V|%u|%Z|%j|%k"  # autoexp's
SACCT_FIELDS = "JobID,JobIDRaw,JobName,State,ExitCode,Submit,Start,End,User,WorkDir,Comment"  # autoexp's


class Cluster(object):
    """A fake cluster with simulate_jobs on, driven through the shims."""

    def __init__(self, tmp_path, **settings):
        self.work = str(tmp_path / "work")
        os.makedirs(self.work)
        self.fs = fake_slurm.FakeSlurm(str(tmp_path / "state"))
        cfg = dict(pending_seconds=0.2, completing_seconds=0.2, min_job_age=5, simulate_jobs=True)
        cfg.update(settings)
        self.fs.configure(**cfg)
        self.env = dict(self.fs.env(), FAKE_SLURM_PYTHON=sys.executable)

    def run(self, *args):
        p = subprocess.run(list(args), env=self.env, cwd=self.work, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def out(self, *args):
        rc, out, err = self.run(*args)
        assert (rc, err) == (0, ""), (args, rc, err)
        return out.splitlines()

    def sbatch(self, *args):
        return self.out("sbatch", "--parsable", *args)[0]

    def job(self, job_id):
        return [j for j in self.fs.jobs() if j["job_id"] == job_id][0]

    def read(self, name):
        with open(os.path.join(self.work, name)) as f:
            return f.read()


@pytest.fixture
def c(tmp_path):
    cluster = Cluster(tmp_path)
    yield cluster
    cluster.fs.shutdown()


def _runner_processes(state_dir):
    """Live processes started for this state folder (runners and job scripts)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
        except (IOError, OSError):
            continue
        if b"_run" in args and state_dir.encode() in args:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("script, program", [
    ("#!/bin/bash\necho seed 1; sleep 2; echo TRAINING FINISHED\n",
     {"out": [[0.0, "seed 1\n"], [2.0, "TRAINING FINISHED\n"]], "dur": 2.0, "rc": 0}),
    ("#!/bin/sh\n# This script was created by sbatch --wrap.\n\necho failing; exit 1\n",
     {"out": [[0.0, "failing\n"]], "dur": 0.0, "rc": 1}),
    ("#!/bin/bash\n#SBATCH --job-name=x\nexport AUTOEXP_PLAN=p AUTOEXP_JOB=x\n\n"
     "echo \"$AUTOEXP_JOB on ${SLURM_JOB_ID}\" 'a  b'; sleep 1m; sleep .5\n",
     {"out": [[0.0, "x on \x00SLURM_JOB_ID\x00 a  b\n"]], "dur": 60.5, "rc": 0}),
    ("#!/bin/bash\nfalse || echo yes; false && echo no; exit 300\n",
     {"out": [[0.0, "yes\n"]], "dur": 0.0, "rc": 44}),
    ("#!/bin/bash\nset -eu\necho a\nfalse\necho never\n", {"out": [[0.0, "a\n"]], "dur": 0.0, "rc": 1}),
    ("#!/bin/bash\nfalse\n", {"out": [], "dur": 0.0, "rc": 1}),
    ("#!/bin/bash\necho -n x; echo y\n", {"out": [[0.0, "xy\n"]], "dur": 0.0, "rc": 0}),
    # an unquoted variable that is empty or unset is no word at all, as in sh
    ("#!/bin/bash\nA=\necho x $A y\n", {"out": [[0.0, "x y\n"]], "dur": 0.0, "rc": 0}),
    ("#!/bin/bash\necho run $SLURM_RESTART_COUNT\n",
     {"out": [[0.0, "\x1drun\x1f\x02SLURM_RESTART_COUNT\x02\x1d\n"]], "dur": 0.0, "rc": 0}),
    # outside the subset: a real process runs them
    ("#!/bin/bash\necho $HOME\n", None),
    ("#!/bin/bash\necho $(date)\n", None),
    ("#!/bin/bash\nkill -SEGV $$\n", None),
    ("#!/bin/bash\necho a > f\n", None),
    ("#!/bin/bash\nsleep 1 &\n", None),
    ("#!/bin/bash\nFOO=1 echo a\n", None),
    ("#!/bin/bash\necho a && ; echo b\n", None),
    ("#!/usr/bin/env python3\nprint(1)\n", None),
    ("#!/bin/bash\npython train.py\n", None),
])
def test_the_subset_of_sh_the_fake_plays(script, program):
    assert fake_slurm.sim_program(script) == program


def test_a_simulated_job_runs_on_paper_at_exact_times(c):
    c.fs.configure(pending_seconds=1.0)
    jid = c.sbatch("-J", "paper", "-o", "paper-%j.out", "--comment=tag",
                   "--wrap=echo seed $SLURM_JOB_ID; sleep 3; echo TRAINING FINISHED")
    assert c.out("squeue", "-h", "-o", "%i|%T") == [jid + "|PENDING"]
    c.fs.wait(lambda jobs: jobs[0]["state"] == "RUNNING", timeout=10)
    assert c.read("paper-%s.out" % jid) == "seed %s\n" % jid  # the line of second 0, not the next
    assert _runner_processes(c.fs.dir) == []
    job = c.fs.wait(timeout=10)[0]
    assert job["simulated"] and job["state"] == "COMPLETED" and job["exit_code"] == "0:0"
    # the times are the script's, not those of whoever looked
    assert job["start_time"] == job["submit_time"] + 1.0
    assert job["end_time"] == job["start_time"] + 3
    assert c.read("paper-%s.out" % jid) == "seed %s\nTRAINING FINISHED\n" % jid
    row = c.out("sacct", "-X", "-P", "-n", "-o", SACCT_FIELDS, "-j", jid)[0].split("|")
    assert row[:5] == [jid, jid, "paper", "COMPLETED", "0:0"] and row[-1] == "tag"
    assert c.out("sacct", "-P", "-n", "-o", "JobID,State", "-j", jid) == \
        [jid + "|COMPLETED", jid + ".batch|COMPLETED"]
    assert c.out("squeue", "-h", "-t", "all", "-o", "%i|%T|%r") == [jid + "|COMPLETED|None"]
    assert [x["cmd"] for x in c.fs.calls()].count("sbatch") == 1
    assert not os.path.exists(os.path.join(c.fs.dir, "jobs", jid, "env.json"))  # nothing to run


def test_failures_limits_cancels_and_rules_on_paper(c):
    c.fs.configure(time_scale=0.02)  # --time=1: 1.2 s
    c.fs.add_rule(name="oom", action="OUT_OF_MEMORY", after=0.3)
    c.fs.add_rule(name="flaky", action="REQUEUE", after=0.3, nth=1)
    c.fs.add_rule(name="hung", action="HANG", after=0.5)
    ids = {}
    for name, args in (("fail", ["--wrap=echo failing; exit 3"]),
                       ("limit", ["--time=1", "--wrap=echo start; sleep 90; echo never"]),
                       ("oom", ["--wrap=echo a; sleep 1; echo b"]),
                       ("flaky", ["--open-mode=append", "--wrap=echo run $SLURM_RESTART_COUNT; sleep 0.6; echo done"]),
                       ("hung", ["--wrap=echo a; sleep 0.4; echo b; sleep 0.4; echo c"]),
                       ("cancelled", ["--wrap=echo a; sleep 0.3; echo b; sleep 30; echo c"])):
        ids[name] = c.sbatch("-J", name, "-o", name + ".out", *args)
    c.fs.wait(lambda jobs: all(j["state"] != "PENDING" for j in jobs if j["name"] == "cancelled"))
    time.sleep(0.6)
    assert c.run("scancel", ids["cancelled"])[0] == 0
    c.fs.wait(lambda jobs: all(j["state"] == "RUNNING" for j in jobs if j["name"] == "hung")
              and all(j["state"] not in ("PENDING", "RUNNING", "COMPLETING") for j in jobs if j["name"] != "hung"),
              timeout=20)
    got = dict((j["name"], (j["state"], j["exit_code"], j["reason"])) for j in c.fs.jobs())
    assert got["fail"] == ("FAILED", "3:0", "NonZeroExitCode")
    assert got["limit"] == ("TIMEOUT", "0:0", "TimeLimit")
    assert got["oom"] == ("OUT_OF_MEMORY", "0:125", "OutOfMemory")
    assert got["flaky"] == ("COMPLETED", "0:0", "None")
    assert got["cancelled"] == ("CANCELLED", "0:0", "None")
    assert got["hung"][0] == "RUNNING"
    assert c.read("fail.out") == "failing\n"
    limit = c.read("limit.out").splitlines()
    assert limit[0] == "start" and "never" not in limit and "DUE TO TIME LIMIT ***" in limit[-1]
    oom = c.read("oom.out").splitlines()
    assert oom[0] == "a" and "b" not in oom and "Detected 1 oom-kill event(s)" in oom[-1]
    flaky = c.read("flaky.out").splitlines()
    assert flaky[0] == "run" and "DUE TO JOB REQUEUE ***" in flaky[1] and flaky[2:] == ["run 1", "done"]
    assert c.job(ids["flaky"])["restarts"] == 1
    cancelled = c.read("cancelled.out").splitlines()
    assert cancelled[:2] == ["a", "b"] and len(cancelled) == 3
    assert re.match(r"slurmstepd-fake0: error: \*\*\* JOB %s ON fake0 CANCELLED AT \S+ \*\*\*$" % ids["cancelled"],
                    cancelled[2])
    assert c.read("hung.out") == "a\nb\n"  # stopped before its third line
    assert c.out("sacct", "-X", "-P", "-n", "-o", "JobID,State", "-j", ids["flaky"], "-D") == \
        [ids["flaky"] + "|REQUEUED", ids["flaky"] + "|COMPLETED"]
    assert _runner_processes(c.fs.dir) == []


def test_a_throttled_array_on_paper_starts_in_order_one_at_a_time(c):
    arr = c.sbatch("-J", "thr", "--array=0-3%1", "-o", "thr-%A_%a.out",
                   "--wrap=echo task $SLURM_ARRAY_TASK_ID id $SLURM_JOB_ID; sleep 0.3")
    c.fs.wait(timeout=20)
    tasks = sorted((j for j in c.fs.jobs()), key=lambda j: j["array_task_id"])
    assert [j["state"] for j in tasks] == ["COMPLETED"] * 4
    runs = [(j["start_time"], j["end_time"]) for j in tasks]
    # one at a time, each after the one before has left COMPLETING (0.2 s)
    assert all(round(b[0] - a[1], 6) == 0.2 for a, b in zip(runs, runs[1:])), runs
    raws = [j["raw_id"] for j in tasks]
    assert raws == [int(arr) + 1, int(arr) + 2, int(arr) + 3, int(arr)]  # the last takes the array's id
    for j in tasks:
        assert c.read("thr-%s_%d.out" % (arr, j["array_task_id"])) == \
            "task %d id %d\n" % (j["array_task_id"], j["raw_id"])


def test_held_and_released_starts_from_the_release(c):
    jid = c.sbatch("--hold", "-J", "held", "--wrap=sleep 0.2")
    time.sleep(0.5)
    assert c.job(jid)["state"] == "PENDING"
    released = time.time()
    assert c.run("scontrol", "release", jid)[0] == 0
    job = c.fs.wait(timeout=10)[0]
    assert job["state"] == "COMPLETED" and job["start_time"] >= released


def test_a_script_outside_the_subset_still_runs_as_a_process(c):
    jid = c.sbatch("-o", "real.out", "--wrap=echo $((6 * 7))")
    job = c.fs.wait(timeout=15)[0]
    assert job["job_id"] == jid and not job["simulated"] and job["state"] == "COMPLETED"
    assert c.read("real.out") == "42\n"


def test_shutdown_cancels_simulated_jobs(c):
    jid = c.sbatch("--wrap=echo a; sleep 60")
    c.fs.wait(lambda jobs: jobs[0]["state"] == "RUNNING", timeout=10)
    c.fs.shutdown()
    assert c.job(jid)["state"] == "CANCELLED"


# --------------------------------------------------------------------------
# storage: what one sbatch writes, what a reader reads
# --------------------------------------------------------------------------

def _state_files(state_dir):
    out = {}
    for name in os.listdir(state_dir):
        path = os.path.join(state_dir, name)
        if os.path.isfile(path) and name not in ("calls.jsonl", "lock"):
            out[name] = os.stat(path)
    return out


def test_an_sbatch_appends_what_it_adds_and_never_reads_the_other_jobs(tmp_path):
    fs = fake_slurm.FakeSlurm(str(tmp_path / "state"))
    fs.configure(simulate_jobs=True, pending_seconds=3600)
    script = str(tmp_path / "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/bash\necho seed 1; sleep 1; echo TRAINING FINISHED\n")

    def sbatch(i):
        rc, out, err, _ = fake_slurm.execute(fs.store, "sbatch", ["--parsable", "--job-name=s%05d" % i,
                                                                  "--comment=autoexp:p:s%05d" % i, script])
        assert (rc, err) == (0, "")

    for i in range(3000):
        sbatch(i)
    journal_growth, snapshots = [], 0
    for i in range(3000, 3200):
        before = _state_files(fs.dir)
        sbatch(i)
        after = _state_files(fs.dir)
        if after.get("jobs.snapshot") and (not before.get("jobs.snapshot") or
                                           after["jobs.snapshot"].st_ino != before["jobs.snapshot"].st_ino):
            snapshots += 1
        grown = [n for n in after if n.endswith(".jsonl") and n in before and after[n].st_size > before[n].st_size]
        journal_growth += [after[n].st_size - before[n].st_size for n in grown]
    # one journal line per job (its record, about 1 KB), whatever the number of jobs already there
    assert len(journal_growth) >= 199 and max(journal_growth) < 2000, journal_growth
    assert snapshots <= 1  # folded into a new snapshot only once the journal is half its size
    # a reader from scratch sees every job; this process's reader caught up line by line
    jobs = fake_slurm.Store(fs.dir).read()["jobs"]
    assert [j["name"] for j in jobs] == ["s%05d" % i for i in range(3200)]
    assert [j["key"] for j in fs.store.read()["jobs"]] == [j["key"] for j in jobs]
    fs.shutdown()


def test_readers_never_see_a_torn_state_while_writers_compact(tmp_path):
    """Four processes submit while the test reads lock-free: every read is a prefix of the
    submissions (in order), and ids grow by one."""
    fs = fake_slurm.FakeSlurm(str(tmp_path / "state"))
    fs.configure(simulate_jobs=True, pending_seconds=3600)
    fake_slurm.COMPACT_MIN_BYTES, saved = 20000, fake_slurm.COMPACT_MIN_BYTES  # compact often (this process)
    env = dict(fs.env(), FAKE_SLURM_PYTHON=sys.executable)
    code = ("import sys; sys.path.insert(0, %r); import fake_slurm; fake_slurm.COMPACT_MIN_BYTES = 20000\n"
            "st = fake_slurm.Store(%r)\n"
            "for i in range(150):\n"
            "    rc, out, err, _ = fake_slurm.execute(st, 'sbatch', ['--wrap=sleep 1', '-J', 'w%%s' %% sys.argv[1]])\n"
            "    assert rc == 0, err\n") % (FAKE_SLURM_BIN, fs.dir)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], env=env) for k in range(4)]
    try:
        reads = 0
        while any(p.poll() is None for p in procs):
            jobs = fake_slurm.Store(fs.dir).read()["jobs"]
            assert [j["raw_id"] for j in jobs] == list(range(1, len(jobs) + 1))
            reads += 1
        assert [p.wait() for p in procs] == [0] * 4
    finally:
        fake_slurm.COMPACT_MIN_BYTES = saved
    jobs = fs.store.read()["jobs"]
    assert len(jobs) == 600 and reads > 3
    assert len([n for n in os.listdir(fs.dir) if n.endswith(".jsonl") and n.startswith("jobs.")]) <= 2
    fs.shutdown()


# --------------------------------------------------------------------------
# a sweep of 10,000 (and 100,000) simulated jobs
# --------------------------------------------------------------------------

def _carry(tmp_path, n):
    """n single jobs as autoexp submits them (in-process sbatch: the commands' process start
    is the shims' cost, not the fake's), then squeue and sacct through the shims."""
    work = tmp_path / "work"
    os.makedirs(str(work / "logs"))
    fs = fake_slurm.FakeSlurm(str(tmp_path / "state"))
    # every job stays in squeue (as in a sweep that is still running): its longest answer
    fs.configure(simulate_jobs=True, pending_seconds=0.05, completing_seconds=0.05, min_job_age=3600)
    script = str(work / "job.sbatch")
    with open(script, "w") as f:
        f.write("#!/bin/bash\nexport AUTOEXP_PLAN=big AUTOEXP_JOB=x\n\necho seed 1; sleep 1; echo TRAINING FINISHED\n")
    names = ["big-s%06d" % i for i in range(n)]
    t0 = time.time()
    for name in names:
        log = str(work / "logs" / (name + "-%j.log"))
        rc, out, err, _ = fake_slurm.execute(fs.store, "sbatch", [
            "--parsable", "--job-name=" + name, "--output=" + log, "--error=" + log,
            "--comment=autoexp:big:" + name, "--chdir=" + str(work), script], cwd=str(work))
        assert rc == 0, err
    t_submit = time.time() - t0
    time.sleep(1.2)
    env = dict(fs.env(), FAKE_SLURM_PYTHON=sys.executable)

    def timed(*argv):
        t = time.time()
        p = subprocess.run(list(argv), env=env, cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=600)
        assert (p.returncode, p.stderr) == (0, b""), p.stderr
        return p.stdout.decode().splitlines(), time.time() - t

    squeue = ["squeue", "-h", "-r", "-t", "all", "-u", fake_slurm.user_name(os.getuid()), "-o", SQUEUE_FMT]
    rows, t_first = timed(*squeue)  # plays every job: starts, logs, ends
    assert len(rows) == n and all(r.split("|")[2] in ("COMPLETED", "COMPLETING") for r in rows)
    rows, t_squeue = timed(*squeue)
    chunk = ",".join(names[:4000])
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    acct, t_sacct = timed("sacct", "-X", "-P", "-n", "-o", SACCT_FIELDS, "-S", since, "--name=" + chunk)
    assert len(acct) == 4000 and all(r.split("|")[3] == "COMPLETED" for r in acct)
    ids = ",".join(r.split("|")[0] for r in rows[:4000])
    acct_ids, t_sacct_j = timed("sacct", "-X", "-P", "-n", "-o", SACCT_FIELDS, "-S", since, "-j", ids)
    assert len(acct_ids) == 4000
    with open(str(work / "logs" / ("%s-%d.log" % (names[-1], n)))) as f:
        assert f.read() == "seed 1\nTRAINING FINISHED\n"
    state = sum(os.path.getsize(os.path.join(fs.dir, x)) for x in os.listdir(fs.dir)
                if x.startswith("jobs.") or x == "meta.json")
    sys.stderr.write("\n%d jobs: sbatch in-process %.0f/s; first squeue (plays all) %.2fs; squeue %.2fs; "
                     "sacct --name (4000) %.2fs; sacct -j (4000) %.2fs; state %.1f MB\n"
                     % (n, n / t_submit, t_first, t_squeue, t_sacct, t_sacct_j, state / 1e6))
    assert state < n * 3000  # bounded bytes per job: snapshot plus at most half of it in journal
    assert _runner_processes(fs.dir) == []
    fs.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_fake_carries_10k_simulated_jobs(tmp_path):
    _carry(tmp_path, 10000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_fake_carries_100k_simulated_jobs(tmp_path):
    _carry(tmp_path, 100000)

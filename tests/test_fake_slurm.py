"""Tests of the fake SLURM in fixtures/fake_slurm against real SLURM 22.05 captures.

Each scenario replays the command recorded in tests/captures/NAME.txt (real SLURM output)
(paths /tmp/sj mapped to a temporary folder, job ids lined up with first_job_id)
and compares exit code, stdout and stderr byte for byte; only what cannot be equal
is masked: timestamps, elapsed times and the pending reason of jobs that really
waited for CPUs (the fake has none to wait for and holds them instead).
The scenarios marked BOTH run twice: with jobs run by processes, and with
simulate_jobs (jobs whose script the fake reads are played on paper; the
others of the scenario still run), which must print the same.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(60)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FIXTURE = os.path.join(REPO, "fixtures", "fake_slurm")
sys.path.insert(0, FIXTURE)
import fake_slurm  # noqa: E402

CAPDIR = os.environ.get("REAL_SLURM_CAPTURES") or os.path.join(REPO, "tests", "captures")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

class Capture(object):
    def __init__(self, name):
        path = os.path.join(CAPDIR, name + ".txt")
        assert os.path.exists(path), "real SLURM capture missing: %s" % path
        data = open(path, "rb").read()
        self.name = name
        self.cmd = re.search(rb"^# command: (.*)$", data, re.M).group(1).decode()
        self.rc = int(re.search(rb"^# exit_code: (-?\d+)$", data, re.M).group(1))
        m = re.search(rb"^# --- stdout \((\d+) bytes\) ---\n", data, re.M)
        end = m.end() + int(m.group(1))
        self.out = data[m.end():end].decode()
        m2 = re.compile(rb"# --- stderr \((\d+) bytes\) ---\n").search(data, end)
        self.err = data[m2.end():m2.end() + int(m2.group(1))].decode()

    def lines(self):
        return self.out.splitlines()


def cap(name):
    return Capture(name)


def mask(text):
    return TS.sub("TS", text)


def fields(line, masked=(), subst=None):
    """Split a |-separated line, replacing the fields at `masked` by '*'."""
    parts = line.split("|")
    for i in masked:
        parts[i] = "*"
    if subst:
        parts = [subst.get(p, p) for p in parts]
    return parts


class Harness(object):
    def __init__(self, tmp_path, simulate=False):
        self.tmp = str(tmp_path)
        self.work = os.path.join(self.tmp, "sj")
        os.makedirs(self.work)
        self.simulate = simulate
        self.fs = fake_slurm.FakeSlurm(os.path.join(self.tmp, "state"))
        self.fs.configure(pending_seconds=0.05, completing_seconds=0.1, min_job_age=1.0,
                          node_name="vm", requeue_delay=0.5, simulate_jobs=simulate)
        self.env = self.fs.env()
        self.env["FAKE_SLURM_PYTHON"] = sys.executable

    def run(self, *args, **kw):
        p = subprocess.run(list(args), env=kw.get("env", self.env), cwd=kw.get("cwd", self.work),
                           input=kw.get("input", b""), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=kw.get("timeout", 30))
        return p.returncode, self.norm(p.stdout.decode()), self.norm(p.stderr.decode())

    def norm(self, text):
        return text.replace(self.work, "/tmp/sj")

    def argv(self, capture, subs=()):
        args = []
        for a in shlex.split(capture.cmd):
            for old, new in subs:
                a = a.replace(old, new)
            args.extend(a.split(" ") if a == "--parsable --hold" else [a])
        return [a.replace("/tmp/sj", self.work) for a in args]

    def replay(self, capture, subs=(), **kw):
        return self.run(*self.argv(capture, subs), **kw)

    def same(self, capture, subs=(), **kw):
        """Replay and compare (rc, stdout, stderr) byte for byte."""
        got = self.replay(capture, subs, **kw)
        assert got == (capture.rc, capture.out, capture.err), capture.name

    def job(self, job_id):
        for j in self.fs.jobs():
            if j["job_id"] == str(job_id):
                return j
        raise KeyError(job_id)

    def wait_state(self, job_id, states, timeout=15):
        states = (states,) if isinstance(states, str) else states
        self.fs.wait(lambda jobs: any(j["job_id"] == str(job_id) and j["state"] in states
                                      for j in jobs), timeout=timeout)

    def squeue(self, *args):
        rc, out, err = self.run("squeue", *args)
        assert (rc, err) == (0, ""), err
        return out.splitlines()

    def sacct(self, *args):
        rc, out, err = self.run("sacct", *args)
        assert (rc, err) == (0, ""), err
        return out.splitlines()


@pytest.fixture
def h(tmp_path, request):
    harness = Harness(tmp_path, simulate=getattr(request, "param", "run") == "sim")
    yield harness
    if harness.simulate:
        assert any(j["simulated"] for j in harness.fs.jobs()), "no job was simulated"
    harness.fs.shutdown()


# The same scenario with jobs run by processes and with jobs played on paper
# (simulate_jobs: scripts in the subset the fake reads; the others still run).
BOTH = pytest.mark.parametrize("h", ["run", "sim"], indirect=True)


FMT = "%i|%j|%T|%r|%M|%l|%N"
SACCT8 = "JobID,JobIDRaw,JobName,State,ExitCode,Start,End,Comment"


# --------------------------------------------------------------------------
# captures 01-06: a finished job, then purged
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_finished_and_purged_job_match_captures(h):
    h.fs.configure(min_job_age=1.5)
    h.same(cap("01_sbatch_trivial"))
    h.wait_state(1, "COMPLETED")
    with open(os.path.join(h.work, "trivial-1.out")) as f:
        assert f.read() == "hello from 1\n"
    for name in ("02_squeue_just_finished", "02_squeue_just_finished_fmt"):
        h.same(cap(name))
    c = cap("03_squeue_finished_state_all")  # %M, the elapsed time, is 0:00 or 0:01 by luck
    rc, out, err = h.replay(c)
    assert (rc, err) == (c.rc, c.err)
    assert [fields(ln, (4,)) for ln in out.splitlines()] == [fields(ln, (4,)) for ln in c.out.splitlines()]
    c = cap("03_scontrol_show_job_finished")
    rc, out, err = h.replay(c)
    alloc = re.compile(r"AllocNode:Sid=\S+")
    run_time = re.compile(r"RunTime=\S+")  # the elapsed time again: 00:00:00 or 00:00:01 by luck
    assert (rc, err) == (0, "")
    assert alloc.sub("A", run_time.sub("RunTime=*", mask(out))) == \
        alloc.sub("A", run_time.sub("RunTime=*", mask(c.out)))

    end = h.job(1)["end_time"]
    time.sleep(max(0, end + 0.1 + 1.5 - time.time()))
    for name in ("04_squeue_purged_job", "04_squeue_purged_job_fmt", "04_scontrol_show_job_purged",
                 "05_squeue_j_all_purged", "05_squeue_j_bad_syntax", "05_squeue_name_nomatch",
                 "06_squeue_j_single_purged_state_all"):
        h.same(cap(name))
    # Purged from squeue, never from sacct.
    assert mask(h.sacct("-X", "-n", "-P", "-o", SACCT8, "-j", "1")[0]) == \
        "1|1|trivial|COMPLETED|0:0|TS|TS|"


# --------------------------------------------------------------------------
# captures 10-24: a running job and a job array
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_running_job_and_array_formats(h):
    h.fs.configure(first_job_id=2)
    rc, out, err = h.replay(cap("10_sbatch_single"), subs=[("sleep 25", "sleep 2")])
    assert (rc, out, err) == (0, "2\n", "")
    h.wait_state(2, "RUNNING")

    c = cap("11_squeue_default_running")
    rc, out, _ = h.replay(c)
    # Only the TIME column (characters 50-60) may differ.
    assert [ln[:50] + ln[60:] for ln in out.splitlines()] == \
        [ln[:50] + ln[60:] for ln in c.lines()]
    norm_limit = {"365-00:00:00": "UNLIMITED"}
    for name in ("11_squeue_fmt_running", "12_squeue_user_name"):
        c = cap(name)
        rc, out, _ = h.replay(c)
        assert [fields(ln, [4]) for ln in out.splitlines()] == \
            [fields(ln, [4], norm_limit) for ln in c.lines()]
    h.same(cap("12_squeue_user_name_nomatch"))

    # The real array waited for CPUs; here its tasks are held and 3_0 released.
    rc, out, _ = h.replay(cap("20_sbatch_array"), subs=[("sleep 15", "sleep 1.5"),
                                                         ("--parsable", "--parsable --hold")])
    assert out == "3\n"
    assert h.run("scontrol", "release", "3_0")[0] == 0
    h.wait_state("3_0", "RUNNING")
    held = {"(JobHeldUser)": "(Resources)", "JobHeldUser": "Resources"}

    def same_masked(name, masked):
        c = cap(name)
        rc, out, err = h.replay(c)
        assert (rc, err) == (0, "")
        assert [fields(ln, masked, held) for ln in out.splitlines()] == \
            [fields(ln, masked, norm_limit) for ln in c.lines()], name
    same_masked("21_squeue_array_fields", [])
    same_masked("21_squeue_array_expanded", [4])
    same_masked("21_squeue_fmt_array_pending", [4])
    same_masked("22_squeue_j_array", [4])
    same_masked("22_squeue_j_array_task", [4])
    c = cap("21_squeue_default_array_pending")
    rc, out, _ = h.replay(c)
    out = out.replace("(JobHeldUser)", "(Resources)")
    assert [ln[:50] + ln[60:] for ln in out.splitlines()] == \
        [ln[:50] + ln[60:] for ln in c.lines()]

    # squeue --json: same document layout and keys as 22.05 (and it ignores -j).
    real = json.loads(cap("22_squeue_json_array").out)
    rc, out, err = h.run("squeue", "--json", "-j", "3")
    assert '"errors": [\n  ],' in out and "\\/" in out and not out.endswith("\n")
    ours = json.loads(out)
    assert list(ours) == list(real) and ours["meta"] == real["meta"]
    by_id = dict((j["job_id"], j) for j in ours["jobs"])
    assert sorted(by_id) == [2, 3, 4]
    for r in real["jobs"]:
        o = by_id[r["job_id"]]
        assert list(o) == list(r)
        for k in ("array_job_id", "array_task_id", "array_task_string", "job_state", "name",
                  "nodes", "batch_host", "flags", "comment", "user_name", "partition",
                  "restart_cnt", "exit_code", "billable_tres", "requeue"):
            assert o[k] == r[k], (r["job_id"], k)

    c = cap("23_sacct_all_running")
    assert [mask(ln) for ln in h.replay(c)[1].splitlines()] == [mask(ln) for ln in c.lines()[1:]]
    c = cap("23_sacct_array_running")
    assert mask(h.replay(c)[1]) == mask(c.out)

    assert h.run("scontrol", "release", "3")[0] == 0
    h.fs.wait(timeout=20)
    c = cap("24_sacct_after_finish_nonX")
    got = [mask(ln) for ln in h.replay(c)[1].splitlines()]
    assert got[:8] == [mask(ln) for ln in c.lines()[:8]]
    assert got[8:] == ["3_3|3|arr-job|COMPLETED|0:0|TS|TS|arraycomment",
                       "3_3.batch|3.batch|batch|COMPLETED|0:0|TS|TS|"]
    outputs = {}
    for k in range(4):
        with open(os.path.join(h.work, "arr-3_%d.out" % k)) as f:
            outputs[k] = f.read()
    assert outputs == {0: "task 0 of 3 jobid 4\n", 1: "task 1 of 3 jobid 5\n",
                       2: "task 2 of 3 jobid 6\n", 3: "task 3 of 3 jobid 3\n"}
    with open(os.path.join(h.work, "single-job-2.out")) as f:
        assert f.read() == "start\ndone\n"


# --------------------------------------------------------------------------
# captures 31/32/39: exit codes
# --------------------------------------------------------------------------

@BOTH
def test_exit_codes_match_captures(h):
    h.fs.configure(first_job_id=8)
    assert h.replay(cap("31_sbatch_fail"))[1] == "8\n"
    h.fs.configure(first_job_id=70)
    assert h.replay(cap("39_sbatch_signal"))[1] == "70\n"
    assert h.replay(cap("39_sbatch_exit_137"))[1] == "71\n"
    assert h.run("sbatch", "--parsable", "--job-name=srun-fail", "--output=/dev/null",
                 "--wrap=true")[1] == "72\n"
    assert h.run("sbatch", "--parsable", "--output=/dev/null", "--wrap=exit 200")[1] == "73\n"
    assert h.run("sbatch", "--parsable", "--output=/dev/null", "--wrap=exit 129")[1] == "74\n"
    h.fs.wait()
    for name in ("32_sacct_failed", "32_sacct_failed_nonX"):
        c = cap(name)
        assert mask(h.replay(c)[1]) == mask(c.out), name
    h.same(cap("39_sacct_exit_ge128"))
    c = cap("39_sacct_signal_exit")
    assert mask(h.replay(c)[1]).splitlines()[:2] == mask(c.out).splitlines()[:2]
    c = cap("39_sacct_signal_exit_steps")
    assert h.replay(c)[1].splitlines()[:4] == c.lines()[:4]
    c = cap("39_scontrol_exit_200")
    rc, out, err = h.run("scontrol", "show", "job", "73")
    assert [ln for ln in out.splitlines() if re.search("JobState|ExitCode", ln)] == c.lines()
    with open(os.path.join(h.work, "fail-job-8.out")) as f:
        assert f.read() == "failing\n"


# --------------------------------------------------------------------------
# captures 33-37: scancel
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_cancel_running_and_pending_match_captures(h):
    h.fs.configure(first_job_id=9, completing_seconds=0.8)
    assert h.replay(cap("33_sbatch_cancel_running"))[1] == "9\n"
    h.fs.configure(pending_seconds=30)
    assert h.replay(cap("33b_sbatch_cancel_pending"))[1] == "10\n"
    h.wait_state(9, "RUNNING")
    c = cap("34_squeue_before_cancel")
    got = [fields(ln, [4]) for ln in h.replay(c)[1].splitlines()]
    assert got == [fields(ln, [4]) for ln in c.lines() if not ln.startswith("7|")]
    h.same(cap("35_scancel_running"))
    # A cancelled running job is COMPLETING while it is killed (KillWait);
    # a cancelled pending job is CANCELLED at once.
    assert h.squeue("-h", "-j", "9", "-o", "%i|%T|%r|%N") == ["9|COMPLETING|None|vm"]
    h.same(cap("35_scancel_pending"))
    assert h.squeue("-h", "-t", "all", "-j", "10", "-o", "%i|%T") == ["10|CANCELLED"]
    # Capture 35b came a second later, when the real job was gone.
    h.wait_state(9, "CANCELLED")
    c = cap("35b_squeue_right_after_cancel")
    got = [fields(ln, [4]) for ln in h.replay(c)[1].splitlines()]
    assert got == [fields(ln, [4]) for ln in c.lines() if not ln.startswith("7|")]
    # JobName 'allocation' is sacct's transient name (sacct_lag, tested below).
    for name in ("36_sacct_cancelled", "36_sacct_cancelled_nonX"):
        c = cap(name)
        assert mask(h.replay(c)[1]) == mask(c.out).replace("allocation", "cancel-pending"), name
    for name in ("37_scancel_already_cancelled", "37_scancel_finished_job",
                 "37_scancel_nonexistent", "37_scancel_nonexistent_verbose"):
        h.same(cap(name))
    h.fs.wait(timeout=5)
    assert h.job(9)["state"] == "CANCELLED" and h.job(10)["state"] == "CANCELLED"
    with open(os.path.join(h.work, "cancel-job-9.out")) as f:
        text = f.read()
    assert re.match(r"^slurmstepd-vm: error: \*\*\* JOB 9 ON vm CANCELLED AT \S+ \*\*\*\n$", text)


@pytest.mark.slow
@BOTH
def test_sacct_lag_for_jobs_that_never_started(h):
    h.fs.configure(sacct_lag=0.6)
    jid = h.run("sbatch", "--parsable", "--hold", "--job-name=lagged",
                "--wrap=sleep 30")[1].strip()
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,Partition,State", "-j", jid]
    assert h.sacct(*fmt) == []
    time.sleep(0.7)
    assert h.sacct(*fmt) == [jid + "|allocation||PENDING"]
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "--name=lagged") == []
    time.sleep(0.6)
    assert h.sacct(*fmt) == [jid + "|lagged|debug|PENDING"]
    # It starts long after slurmdbd recorded it: its real row at once.
    h.fs.release(jid)
    h.wait_state(jid, "RUNNING")
    assert h.sacct(*fmt) == [jid + "|lagged|debug|RUNNING"]
    h.fs.cancel(jid)
    # Capture 36c: cancelling a pending job writes its row at once, named
    # allocation for a while.
    pc = h.run("sbatch", "--parsable", "--hold", "--job-name=pend-cancel",
               "--wrap=true")[1].strip()
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,State", "-j", pc]
    assert h.sacct(*fmt) == []
    h.fs.cancel(pc)
    by = "CANCELLED by %d" % os.getuid()
    assert h.sacct(*fmt) == ["%s|allocation|%s" % (pc, by)]
    time.sleep(max(0, h.job(pc)["submit_time"] + 1.3 - time.time()))
    assert h.sacct(*fmt) == ["%s|pend-cancel|%s" % (pc, by)]


@pytest.mark.slow
@BOTH
def test_sacct_lag_counts_from_start_and_end(h):
    lag = 1.0
    h.fs.configure(sacct_lag=lag, pending_seconds=0.4)
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobIDRaw,JobName,State,ExitCode,Start,End", "-j"]

    def rows(job_id):
        return [mask(ln) for ln in h.sacct(*fmt + [job_id])]

    # A job that starts before slurmdbd heard of it: no row, then the
    # placeholder `allocation|PENDING|<Start>|Unknown` while squeue says
    # RUNNING, then its real row, sacct_lag after its start.
    jid = h.run("sbatch", "--parsable", "-J", "lagrun", "--wrap=sleep 30")[1].strip()
    assert rows(jid) == []
    h.wait_state(jid, "RUNNING")
    assert h.squeue("-h", "-j", jid, "-o", "%T") == ["RUNNING"]
    assert rows(jid) == ["%s|%s|allocation|PENDING|0:0|TS|Unknown" % (jid, jid)]
    time.sleep(max(0, h.job(jid)["start_time"] + lag + 0.1 - time.time()))
    assert rows(jid) == ["%s|%s|lagrun|RUNNING|0:0|TS|Unknown" % (jid, jid)]
    h.fs.cancel(jid)

    # Array tasks likewise, each from its own start (task 1 starts long
    # after slurmdbd recorded the array).
    arr = h.run("sbatch", "--parsable", "-J", "lagarr", "--array=0-1%1",
                "--wrap=sleep 30")[1].strip()
    h.wait_state(arr + "_0", "RUNNING")
    raw0 = h.job(arr + "_0")["raw_id"]
    assert rows(arr) == ["%s_0|%s|allocation|PENDING|0:0|TS|Unknown" % (arr, raw0)]
    time.sleep(max(0, h.job(arr + "_0")["start_time"] + lag + 0.1 - time.time()))
    assert rows(arr + "_0") == ["%s_0|%s|lagarr|RUNNING|0:0|TS|Unknown" % (arr, raw0)]
    h.fs.cancel(arr + "_0")
    h.wait_state(arr + "_1", "RUNNING")
    assert h.job(arr + "_1")["start_time"] > h.job(arr + "_1")["submit_time"] + lag
    raw1 = h.job(arr + "_1")["raw_id"]
    assert rows(arr + "_1") == ["%s_1|%s|allocation|PENDING|0:0|TS|Unknown" % (arr, raw1)]
    time.sleep(max(0, h.job(arr + "_1")["start_time"] + lag + 0.1 - time.time()))
    assert rows(arr + "_1") == ["%s_1|%s|lagarr|RUNNING|0:0|TS|Unknown" % (arr, raw1)]
    h.fs.cancel(arr)

    # A task that fails at once: squeue says FAILED, sacct has no row until
    # sacct_lag after its end.
    bad = h.run("sbatch", "--parsable", "-J", "lagfail", "--array=0-1",
                "--wrap=exit 3")[1].strip()
    h.wait_state(bad + "_0", "FAILED")
    assert h.squeue("-h", "-t", "all", "-j", bad + "_0", "-o", "%T") == ["FAILED"]
    assert rows(bad + "_0") == []
    task = h.job(bad + "_0")
    time.sleep(max(0, task["end_time"] + lag + 0.1 - time.time()))
    assert rows(bad + "_0") == ["%s_0|%s|lagfail|FAILED|3:0|TS|TS" % (bad, task["raw_id"])]


# --------------------------------------------------------------------------
# captures 30/32/38: time limit
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_timeout_with_scaled_time_limit(h):
    h.fs.configure(first_job_id=7, time_scale=0.02)  # --time=1 -> 1.2 s
    assert h.replay(cap("30_sbatch_timeout"))[1] == "7\n"
    h.wait_state(7, "RUNNING")
    c = cap("32_squeue_fmt_timeout_running")
    assert [fields(ln, [4]) for ln in h.replay(c)[1].splitlines()] == \
        [fields(ln, [4]) for ln in c.lines()]
    h.wait_state(7, "TIMEOUT", timeout=10)
    assert fields(h.squeue("-h", "-t", "all", "-j", "7", "-o", FMT)[0], [4]) == \
        fields("7|timeout-job|TIMEOUT|TimeLimit|1:27|1:00|vm", [4])
    for name in ("38_sacct_timeout", "38_sacct_timeout_nonX"):
        c = cap(name)
        assert [fields(mask(ln), [7]) for ln in h.replay(c)[1].splitlines()] == \
            [fields(mask(ln), [7]) for ln in c.lines()], name
    j = h.job(7)
    assert 1.1 < j["end_time"] - j["start_time"] < 2.5
    with open(os.path.join(h.work, "timeout-job-7.out")) as f:
        lines = f.read().splitlines()
    assert lines[1] == "start" and "never" not in lines
    assert re.match(r"slurmstepd-vm: error: \*\*\* JOB 7 ON vm CANCELLED AT \S+ DUE TO TIME "
                    r"LIMIT \*\*\*$", lines[-1])


# --------------------------------------------------------------------------
# captures 40-46: hold and release
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_hold_release_match_captures(h):
    h.fs.configure(first_job_id=14, pending_seconds=2.0)
    assert h.replay(cap("40_sbatch_for_hold"))[1] == "14\n"
    for name in ("41_scontrol_hold", "42_squeue_held", "42_sacct_held"):
        h.same(cap(name))
    assert h.replay(cap("43_sbatch_hold_flag"))[1] == "15\n"
    for name in ("43_squeue_held_flag", "43_scontrol_uhold", "43_squeue_uheld",
                 "44_scontrol_release", "44_scontrol_release_flag", "45_squeue_released",
                 "46_scontrol_hold_nonexistent"):
        h.same(cap(name))
    h.fs.wait(timeout=10)
    assert h.job(14)["state"] == h.job(15)["state"] == "COMPLETED"

    # hold on a running job: rc 0, the reason sticks, accounting loses it from
    # time-window queries (captures 46, 46b).
    h.fs.configure(pending_seconds=0.05)
    jid = h.run("sbatch", "--parsable", "--job-name=blocker", "--wrap=sleep 0.6")[1].strip()
    h.wait_state(jid, "RUNNING")
    assert h.run("scontrol", "hold", jid) == (0, "", "")
    assert h.run("scontrol", "release", jid) == (0, "", "")
    h.wait_state(jid, "COMPLETED")
    assert h.squeue("-h", "-t", "all", "-j", jid, "-o", "%i|%j|%T|%r") == \
        ["%s|blocker|COMPLETED|JobHeldAdmin" % jid]
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "--name=blocker") == []
    assert h.sacct("-X", "-n", "-P", "-o", "JobID,Eligible", "-j", jid) == [jid + "|Unknown"]


@BOTH
def test_held_job_cancelled_while_pending_is_found_by_id_only(h):
    # what the real tier saw on 22.05 and 24.11 (also for an afterok dependency that
    # failed): never eligible, Eligible Unknown; `sacct -j` lists it, with -S too, while no
    # query by name does
    h.fs.configure(pending_seconds=30)
    jid = h.run("sbatch", "--parsable", "--job-name=heldcancel", "--wrap=true")[1].strip()
    assert h.run("scontrol", "hold", jid)[0] == 0
    h.fs.cancel(jid)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,State,Eligible", "-S", since]
    assert h.sacct(*fmt + ["--name=heldcancel"]) == []
    assert h.sacct(*fmt[:-2] + ["--name=heldcancel"]) == []
    by = "CANCELLED by %d" % os.getuid()
    assert h.sacct(*fmt + ["-j", jid]) == h.sacct(*fmt[:-2] + ["-j", jid]) == ["%s|heldcancel|%s|Unknown" % (jid, by)]


# --------------------------------------------------------------------------
# captures 50-59: requeue
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_requeue_match_captures(h):
    h.fs.configure(first_job_id=16, completing_seconds=0.6, requeue_delay=2.0)
    subs = [("sleep 30", "sleep 1")]
    assert h.replay(cap("50_sbatch_requeue"), subs)[1] == "16\n"
    h.wait_state(16, "RUNNING")
    c = cap("51_squeue_before_requeue")
    assert fields(h.replay(c)[1].strip(), [4]) == fields(c.out.strip(), [4])
    h.same(cap("52_scontrol_requeue"))
    h.same(cap("53_squeue_after_requeue"))
    # While the old run is killed, accounting has only the REQUEUED record.
    requeued = "16|16|requeue-job|REQUEUED|0:0|TS|TS|"
    assert [mask(ln) for ln in h.sacct("-X", "-n", "-P", "-o", SACCT8, "-j", "16")] == \
        [requeued]
    assert [mask(ln) for ln in h.sacct("-X", "-D", "-n", "-P", "-o", SACCT8, "-j", "16")] == \
        [requeued]
    time.sleep(0.7)  # past COMPLETING, before the BeginTime delay ends
    h.same(cap("54_sacct_requeued_X"))
    c = cap("54_sacct_requeued_X_duplicates")
    assert mask(h.replay(c)[1]) == mask(c.out)
    h.same(cap("55_squeue_requeued_pending"))
    h.same(cap("55_squeue_requeued_pending_default"))
    rc, out, err = h.run("scontrol", "show", "job", "16")
    for line in ("   JobState=PENDING Reason=BeginTime Dependency=(null)",
                 "   Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0",
                 "   AccrueTime=Unknown", "   NodeList="):
        assert line in out.splitlines()
    assert "BatchHost" not in out
    h.wait_state(16, "RUNNING")
    c = cap("57_squeue_requeued_running")
    assert fields(h.replay(c)[1].strip(), [4]) == \
        fields(c.out.strip(), [4], {"365-00:00:00": "UNLIMITED"})
    c = cap("57_sacct_requeued_running_X")
    assert mask(h.replay(c)[1]) == mask(c.out)
    h.wait_state(16, "COMPLETED")
    for name in ("58_sacct_requeued_done_X", "58_sacct_requeued_done_X_D",
                 "58_sacct_requeued_done_D_steps", "58_sacct_requeued_name_filter"):
        c = cap(name)
        assert mask(h.replay(c)[1]) == mask(c.out), name
    with open(os.path.join(h.work, "requeue-job-16.out")) as f:
        lines = f.read().splitlines()
    assert re.match(r"run restart= at \d\d:\d\d:\d\d$", lines[0])
    assert re.match(r"slurmstepd-vm: error: \*\*\* JOB 16 ON vm CANCELLED AT \S+ DUE TO JOB "
                    r"REQUEUE \*\*\*$", lines[1])
    assert re.match(r"run restart=1 at ", lines[2]) and lines[3] == "finished"
    j = h.job(16)
    assert (j["restarts"], j["runs"]) == (1, 2)

    h.same(cap("59_scontrol_requeue_nonexistent"))
    pend = h.run("sbatch", "--parsable", "--hold", "--wrap=true")[1].strip()
    c = cap("59_scontrol_requeue_pending")
    assert h.run("scontrol", "requeue", pend) == (1, "", c.err.replace("18", pend))


# --------------------------------------------------------------------------
# captures 90-97: throttled array, task cancel, whole-array cancel
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_throttled_array_and_task_cancel(h):
    h.fs.configure(first_job_id=19, pending_seconds=1.0, min_job_age=10)
    assert h.replay(cap("90_sbatch_array_throttled"), [("sleep 4", "sleep 0.3")])[1] == "19\n"
    for name in ("91_squeue_throttled", "91_squeue_throttled_r", "92_scancel_array_task",
                 "93_squeue_after_task_cancel", "93_sacct_array_mid"):
        h.same(cap(name))
    h.fs.wait(timeout=15)
    c = cap("94_sacct_array_final")
    assert mask(h.replay(c)[1]) == mask(c.out)
    c = cap("94_squeue_array_finished_stateall")
    assert [fields(ln, [4]) for ln in h.replay(c)[1].splitlines()] == \
        [fields(ln, [4]) for ln in c.lines()]
    runs = sorted((j["start_time"], j["end_time"]) for j in h.fs.jobs() if j["runs"])
    assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:])), "throttle %1 overlapped"
    assert not os.path.exists(os.path.join(h.work, "arr-thr-19_3.out"))


@BOTH
def test_whole_array_cancel(h):
    h.fs.configure(first_job_id=22)
    rc, out, err = h.replay(cap("95_sbatch_array_cancel_all"),
                            [("--parsable", "--parsable --hold")])
    assert out == "22\n"
    assert h.run("scontrol", "release", "22_0")[0] == 0
    assert h.run("scontrol", "release", "22_1")[0] == 0
    h.wait_state("22_1", "RUNNING")
    held = {"JobHeldUser": "Resources"}
    c = cap("95_squeue_before")
    assert sorted(fields(ln, [4], held) for ln in h.replay(c)[1].splitlines()) == \
        sorted(fields(ln, [4]) for ln in c.lines())
    h.same(cap("96_scancel_whole_array"))
    # The running tasks pass through COMPLETING (test_cancel_... below).
    h.wait_state("22_0", "CANCELLED")
    h.wait_state("22_1", "CANCELLED")
    c = cap("96_squeue_right_after")
    assert sorted(fields(ln, [3, 4]) for ln in h.replay(c)[1].splitlines()) == \
        sorted(fields(ln, [3, 4]) for ln in c.lines())
    c = cap("97_sacct_array_cancelled")
    assert mask(h.replay(c)[1]) == mask(c.out)


# --------------------------------------------------------------------------
# captures 14-16: sbatch texts and odd submissions
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_sbatch_errors_and_odd_submissions(h):
    h.fs.configure(first_job_id=63, cluster_name="localcluster")
    h.same(cap("14_sbatch_parsable_with_M"))
    h.same(cap("14_sbatch_not_parsable"))
    for name in ("15_sbatch_bad_partition", "15_sbatch_bad_time", "15_sbatch_no_script",
                 "15_sbatch_no_shebang"):
        h.same(cap(name))
    assert h.replay(cap("15_sbatch_mem_too_big"))[0] == 0  # accepted here; uses id 65
    for name in ("15_sbatch_too_many_cpus", "15_sbatch_script_file", "15_sbatch_stdin_script",
                 "15_sbatch_bad_output_dir"):
        h.same(cap(name))
    h.fs.wait(lambda jobs: all(j["state"] not in ("PENDING", "RUNNING", "COMPLETING")
                               for j in jobs if j["job_id"] != "66"))
    got = h.squeue("-h", "-t", "all", "-j", "67,68,69", "-o", FMT)
    want = [ln for ln in cap("16_squeue_after_errors").lines() if ln.split("|")[0] in
            ("67", "68", "69")]
    # %M, the elapsed time, counts whole seconds from start to end: 0:00 or 0:01 by luck
    # (and by how busy the machine is), so it is left out, as in the other captures.
    assert sorted(fields(ln, [4]) for ln in got) == sorted(fields(ln, [4]) for ln in want)
    c = cap("16_sacct_after_errors")
    assert mask(h.sacct("-X", "-n", "-P", "-o", SACCT8, "-j", "69")[0]) == mask(c.lines()[2])
    assert h.job(67)["comment"] == "file-comment"
    assert h.run("sbatch", "no-such-script.sh") == \
        (1, "", "sbatch: error: Unable to open file no-such-script.sh\n")
    for spec in ("abc", "1:2:3:4", "1-2-3", "1:2-3", ""):
        assert h.run("sbatch", "--time=" + spec, "--wrap=true") == \
            (255, "", "sbatch: error: Invalid --time specification\n"), spec


def test_time_limit_and_array_spec_parsing():
    p = fake_slurm.parse_time_limit
    assert [p(s) for s in ("1", "90", "0:30", "1:30", "1:00:00", "2:03:04", "1-0", "1-2",
                           "1-2:03", "1-2:03:04", "UNLIMITED", "infinite", "-1", "0")] == \
        [1, 90, 1, 2, 60, 124, 1440, 1560, 1563, 1564, None, None, None, None]
    for bad in ("abc", "1:2:3:4", "1-2-3", "1-2:3:4:5", "1:2-3", "", "1h"):
        with pytest.raises(ValueError):
            p(bad)
    a = fake_slurm.parse_array_spec
    assert a("0-3") == ([0, 1, 2, 3], None)
    assert a("0,2,5") == ([0, 2, 5], None)
    assert a("1-7:2") == ([1, 3, 5, 7], None)
    assert a("0-3%1") == ([0, 1, 2, 3], 1)
    assert a("0-2,7%2") == ([0, 1, 2, 7], 2)
    for bad in ("3-1", "a", "1-3:0", "0-5000", "1%x"):
        with pytest.raises(ValueError):
            a(bad)
    assert fake_slurm.fmt_ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert [fake_slurm.squeue_secs(s) for s in (0, 87, 3723, 93784)] == \
        ["0:00", "1:27", "1:02:03", "1-02:03:04"]
    assert [fake_slurm.long_secs(s) for s in (87, 93784)] == ["00:01:27", "1-02:03:04"]
    assert fake_slurm.split_directive(r''' --job-name="a b" -o 'x y'\ z # comment --x''') == \
        ["--job-name=a b", "-o", "x y z"]
    assert fake_slurm.split_directive(r'''--comment="say \"hi\" #1" #c''') == \
        ['--comment=say "hi" #1']


# --------------------------------------------------------------------------
# captures 70-77: controller and database down
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_ctld_and_dbd_down_match_captures(h):
    h.fs.configure(first_job_id=16)
    assert h.run("sbatch", "--parsable", "--hold", "--job-name=requeue-job",
                 "--wrap=true")[1] == "16\n"
    h.fs.configure(first_job_id=25)
    runner = h.run("sbatch", "--parsable", "--job-name=survives", "--wrap=sleep 0.8")[1].strip()
    h.wait_state(runner, "RUNNING")
    h.fs.configure(ctld_down=True)
    for name in ("70_squeue_ctld_down", "70_squeue_ctld_down_j", "70_squeue_ctld_down_json",
                 "71_sbatch_ctld_down", "72_scontrol_ping_down", "72_scontrol_show_job_down",
                 "73_scancel_ctld_down", "74_sacct_ctld_down"):
        h.same(cap(name))
    h.fs.wait(lambda jobs: h.job(runner)["state"] == "COMPLETED", timeout=10)
    h.fs.configure(ctld_down=False, dbd_down=True)
    h.same(cap("76_sacct_dbd_down"))
    rc, out, err = h.replay(cap("76_sbatch_dbd_down"))
    assert (rc, err) == (0, "") and out.strip().isdigit()
    h.fs.configure(dbd_down=False)
    assert h.run("scontrol", "ping") == (0, "Slurmctld(primary) at vm is UP\n", "")


# --------------------------------------------------------------------------
# captures 80-85: sacct job selection and time windows
# --------------------------------------------------------------------------

@pytest.mark.slow
@BOTH
def test_sacct_selection_matches_captures(h):
    h.fs.configure(first_job_id=3)
    assert h.run("sbatch", "--parsable", "--array=0-3", "--job-name=arr-job",
                 "--comment=arraycomment", "--output=/dev/null", "--wrap=true")[1] == "3\n"
    h.fs.wait()
    h.fs.configure(first_job_id=8)
    h.replay(cap("31_sbatch_fail"))
    h.fs.wait()
    for name in ("80_sacct_name_filter", "80_sacct_name_filter_multi", "82_sacct_j_array_parent",
                 "82_sacct_j_array_task", "82_sacct_j_rawid_of_task"):
        c = cap(name)
        assert mask(h.replay(c)[1]) == mask(c.out), name
    for name in ("80_sacct_name_nomatch", "83_sacct_bad_option", "83_sacct_j_nonexistent"):
        h.same(cap(name))
    c = cap("84_sacct_all_header")
    assert h.replay(c, [("-j 2", "-j 8")])[1].splitlines()[0] == c.lines()[0]
    c = cap("85_sacct_states_filter")
    got = h.replay(c, [("-S 2026-11-29T00:00:00", "-S midnight")])[1]
    assert [ln.split("|")[0] for ln in got.splitlines()] == ["3_0", "3_1", "3_2", "3_3", "8"]
    c = cap("81_sacct_S_future")
    rc, out, err = h.replay(c)
    assert (rc, out) == (1, "")
    assert re.match(r"^sacct: error: Start time \(TS\) requested is after end time \(TS\)\.\n$",
                    mask(err))
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 120))
    assert len(h.sacct("-X", "-n", "-P", "-o", "JobID", "-S", start)) == 5
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "-S", "now-3minutes", "-E",
                   "now-2minutes") == []
    assert len(h.sacct("-X", "-n", "-P", "-o", "JobID", "-S", "now-3minutes")) == 5
    # With -s, -E defaults to -S (slurmdb_job_cond_def_start_end): an empty window.
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "-s", "F", "-S", "midnight", "-j", "8") == []
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "-s", "F", "-S", "midnight", "-E", "now",
                   "-j", "8") == ["8"]
    assert h.sacct("-X", "-n", "-P", "-o", "JobID", "-s", "R", "-j", "8") == []
    assert h.run("sacct", "-o", "JobID,Bogus", "-j", "8") == \
        (1, "", 'sacct: error: Invalid field requested: "Bogus"\n')
    # Fixed-width default output, like sacct without -P.
    lines = h.sacct("-j", "8")
    assert lines[0] == ("JobID           JobName  Partition    Account  AllocCPUS      State "
                        "ExitCode ")
    assert lines[1] == "------------ ---------- ---------- ---------- ---------- ---------- -------- "
    assert lines[2] == ("8              fail-job      debug       root          1     FAILED "
                        "     1:0 ")
    assert h.sacct("-X", "-n", "-p", "-o", "JobID,State", "-j", "8") == ["8|FAILED|"]


# --------------------------------------------------------------------------
# behaviour beyond the captures
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_state_dir_required_and_shims(tmp_path):
    env = dict(os.environ)
    env.pop("FAKE_SLURM_DIR", None)
    for cmd in ("sbatch", "squeue", "sacct", "scancel", "scontrol"):
        shim = os.path.join(FIXTURE, cmd)
        assert os.access(shim, os.X_OK)
        p = subprocess.run([shim, "--version"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        assert (p.returncode, p.stdout, p.stderr) == \
            (1, b"", b"fake_slurm: FAKE_SLURM_DIR is not set\n")
    link = os.path.join(str(tmp_path), "squeue")
    os.symlink(os.path.join(FIXTURE, "squeue"), link)  # shims follow symlinks
    env["FAKE_SLURM_DIR"] = str(tmp_path / "new" / "state")
    p = subprocess.run([link, "-h"], env=env, stdout=subprocess.PIPE, timeout=10)
    assert p.returncode == 0 and os.path.isdir(env["FAKE_SLURM_DIR"])


@BOTH
def test_script_directives_env_and_paths(h):
    script = os.path.join(h.work, "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/bash\n"
                "#SBATCH --job-name='from file'   # a comment\n"
                "\n"
                "#SBATCH --comment=\"with # hash\" -o out/%x-%j-%a-%%.txt\n"
                "# plain comment\n"
                "#SBATCH --partition=other\n"
                "echo args=$* name=$SLURM_JOB_NAME id=$SLURM_JOB_ID sub=$SLURM_SUBMIT_DIR\n"
                "echo array=${SLURM_ARRAY_TASK_ID-unset} restart=${SLURM_RESTART_COUNT-unset}\n"
                "echo marker=$MARKER pwd=$(pwd) node=$SLURM_JOB_NODELIST\n"
                "echo oops >&2\n"
                "#SBATCH --job-name=ignored-after-first-command\n")
    os.makedirs(os.path.join(h.work, "out"))
    h.fs.configure(partitions=["debug", "other"])
    env = dict(h.env, MARKER="m1", SLURM_ARRAY_TASK_ID="leaked")
    rc, out, err = h.run("sbatch", "job.sh", "a", "b c", env=env)
    assert (rc, err) == (0, "") and re.match(r"^Submitted batch job (\d+)\n$", out)
    jid = out.split()[-1]
    h.wait_state(jid, "COMPLETED")
    j = h.job(jid)
    assert (j["name"], j["comment"], j["partition"]) == ("from file", "with # hash", "other")
    path = os.path.join(h.work, "out", "from file-%s-4294967294-%%.txt" % jid)
    assert j["output"] == path
    with open(path) as f:
        assert f.read().splitlines() == [
            "args=a b c name=from file id=%s sub=%s" % (jid, h.work),
            "array=unset restart=unset", "marker=m1 pwd=%s node=vm" % h.work, "oops"]
    # The command line wins over #SBATCH; --chdir moves the default output.
    os.makedirs(os.path.join(h.work, "sub"))
    rc, out, err = h.run("sbatch", "--parsable", "-J", "cli", "-D", "sub", "-p", "debug",
                         "--error=err-%j.txt", "-o", "out-%j.txt", "job.sh")
    jid = out.strip()
    h.wait_state(jid, "COMPLETED")
    j = h.job(jid)
    assert (j["name"], j["partition"], j["work_dir"]) == ("cli", "debug",
                                                           os.path.join(h.work, "sub"))
    with open(os.path.join(h.work, "sub", "err-%s.txt" % jid)) as f:
        assert f.read() == "oops\n"
    # Default names: slurm-%j.out, and slurm-%A_%a.out for arrays.
    jid = h.run("sbatch", "--parsable", "--wrap=echo plain")[1].strip()
    arr = h.run("sbatch", "--parsable", "-a", "1,4", "--wrap=echo $SLURM_ARRAY_TASK_ID")[1].strip()
    h.fs.wait()
    assert open(os.path.join(h.work, "slurm-%s.out" % jid)).read() == "plain\n"
    assert open(os.path.join(h.work, "slurm-%s_4.out" % arr)).read() == "4\n"
    assert h.job(jid)["name"] == "wrap"


@BOTH
def test_squeue_filters_and_widths(h):
    h.fs.configure(pending_seconds=30)
    a = h.run("sbatch", "--parsable", "-J", "alpha", "--comment=c1", "--time=1-02:03:04",
              "--wrap=true")[1].strip()
    b = h.run("sbatch", "--parsable", "-J", "beta", "--wrap=true")[1].strip()
    assert h.squeue("-h", "-o", "%.5i|%6j|%4j|%k|%l|%u|%P|%D|%t", "--name=alpha") == \
        ["%5s|alpha |alph|c1|1-02:04:00|root|debug|1|PD" % a]
    assert h.squeue("-h", "-o", "%k", "-j", b) == ["(null)"]
    assert h.squeue("-h", "-o", "%i", "-t", "PD,R", "-u", "root,0") == [a, b]
    assert h.squeue("-h", "-o", "%i", "-t", "RUNNING") == []
    assert h.squeue("-h", "-o", "%i", "-j", "%s,%s" % (a, b), "-n", "beta") == [b]
    assert h.squeue("-o", "%i %j", "-j", b) == ["JOBID NAME", "%s beta" % b]
    assert h.run("squeue", "-t", "bogus")[0] == 1
    assert h.run("squeue", "-u", "no-such-user-xyz") == \
        (1, "", "squeue: error: Invalid user: no-such-user-xyz\n")


@pytest.mark.slow
@BOTH
def test_rules_end_runs_as_asked(h):
    fs = h.fs
    fs.add_rule(name="to-*", action="TIMEOUT", after=0.2)
    fs.add_rule(name="fail", action="FAILED", exit_code=3)
    fs.add_rule(name="oom", action="OUT_OF_MEMORY", after=0.1)
    fs.add_rule(name="flaky", action="REQUEUE", after=0.2, nth=1)
    fs.add_rule(name="arr", action="NODE_FAIL", task=1)
    fs.add_rule(name="ok", action="COMPLETED", after=0.2)
    ids = {}
    for name, wrap in (("to-x", "sleep 5"), ("fail", "sleep 5"), ("oom", "sleep 5"),
                       ("flaky", "sleep 0.6; echo run$SLURM_RESTART_COUNT"), ("ok", "sleep 5"),
                       ("arr", "sleep 0.3")):
        extra = ["--array=0-2"] if name == "arr" else []
        ids[name] = h.run("sbatch", "--parsable", "-J", name, "-o", name + ".out",
                          "--wrap=" + wrap, *extra)[1].strip()
    fs.wait(timeout=20)
    got = dict((j["job_id"], (j["state"], j["exit_code"], j["reason"])) for j in fs.jobs())
    assert got[ids["to-x"]] == ("TIMEOUT", "0:0", "TimeLimit")
    assert got[ids["fail"]] == ("FAILED", "3:0", "NonZeroExitCode")
    assert got[ids["oom"]] == ("OUT_OF_MEMORY", "0:125", "OutOfMemory")
    assert got[ids["ok"]] == ("COMPLETED", "0:0", "None")
    assert got[ids["flaky"]] == ("COMPLETED", "0:0", "None")
    a = ids["arr"]
    assert [got["%s_%d" % (a, k)][0] for k in range(3)] == ["COMPLETED", "NODE_FAIL", "COMPLETED"]
    flaky = h.job(ids["flaky"])
    assert (flaky["restarts"], flaky["runs"]) == (1, 2)
    assert open(os.path.join(h.work, "flaky.out")).read().splitlines()[-1] == "run1"
    assert h.sacct("-n", "-P", "-o", "JobID,State,ExitCode", "-j", ids["oom"]) == \
        ["%s|OUT_OF_MEMORY|0:125" % ids["oom"], "%s.batch|OUT_OF_MEMORY|0:125" % ids["oom"]]
    # nth counts runs per name across submissions: the second "flaky" is left alone.
    again = h.run("sbatch", "--parsable", "-J", "flaky", "--wrap=true")[1].strip()
    h.wait_state(again, "COMPLETED")
    assert h.job(again)["restarts"] == 0


@pytest.mark.slow
def test_hang_rule_stops_output_until_cancel(h):
    h.fs.add_rule(name="hung", action="HANG", after=0.3)
    jid = h.run("sbatch", "--parsable", "-J", "hung", "-o", "hung.out",
                "--wrap=while true; do echo tick; sleep 0.05; done")[1].strip()
    h.wait_state(jid, "RUNNING")
    time.sleep(0.8)
    size = os.path.getsize(os.path.join(h.work, "hung.out"))
    time.sleep(0.4)
    assert os.path.getsize(os.path.join(h.work, "hung.out")) == size > 0
    assert h.job(jid)["state"] == "RUNNING"
    h.fs.cancel(jid)
    h.wait_state(jid, "CANCELLED")
    pgid = h.fs.store.read()["jobs"][0]["pgid"]
    deadline = time.time() + 3
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("stopped job survived scancel")


@pytest.mark.slow
@BOTH
def test_cancel_of_running_job_is_completing_first(h):
    h.fs.configure(completing_seconds=1.0)
    run = h.run("sbatch", "--parsable", "-J", "cg", "--wrap=sleep 30")[1].strip()
    pend = h.run("sbatch", "--parsable", "--hold", "-J", "cgp", "--wrap=true")[1].strip()
    h.wait_state(run, "RUNNING")
    assert h.run("scancel", run, pend) == (0, "", "")
    t = time.time()
    assert sorted(h.squeue("-h", "-t", "all", "-o", "%i|%T|%r|%N")) == \
        sorted(["%s|COMPLETING|None|vm" % run, "%s|CANCELLED|None|" % pend])
    assert h.squeue("-h", "-o", "%i|%t") == [run + "|CG"]  # shown without -t, too
    # Accounting has the end already.
    assert h.sacct("-X", "-n", "-P", "-o", "JobID,State", "-j", run) == \
        ["%s|CANCELLED by %d" % (run, os.getuid())]
    h.wait_state(run, "CANCELLED")
    assert time.time() - t > 0.7
    assert h.squeue("-h", "-t", "all", "-j", run, "-o", "%T|%N") == ["CANCELLED|vm"]


@pytest.mark.slow
@BOTH
def test_requeue_shows_requeued_in_sacct_while_completing(h):
    h.fs.configure(completing_seconds=2.0, requeue_delay=3.0, sacct_lag=0.8)
    h.fs.add_rule(name="rq", action="REQUEUE", after=0.2, nth=1)
    jid = h.run("sbatch", "--parsable", "-J", "rq", "--wrap=sleep 30")[1].strip()
    # As autoexp asks: with a time window, which a BeginTime in the future
    # must not hide.
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,State", "-S", "now-1minute", "-j", jid]
    h.fs.wait(lambda jobs: any(j["job_id"] == jid and j["restarts"] == 1 for j in jobs))
    requeued_at = h.job(jid)["submit_time"]
    assert h.squeue("-h", "-j", jid, "-o", "%T|%r") == ["COMPLETING|None"]
    assert h.sacct(*fmt) == [jid + "|allocation|REQUEUED"]
    time.sleep(max(0, requeued_at + 0.9 - time.time()))
    assert h.sacct(*fmt) == [jid + "|rq|REQUEUED"]
    assert h.sacct("-D", *fmt) == [jid + "|rq|REQUEUED"]
    time.sleep(max(0, requeued_at + 2.1 - time.time()))
    assert h.squeue("-h", "-j", jid, "-o", "%T|%r") == ["PENDING|BeginTime"]
    assert h.sacct(*fmt) == [jid + "|rq|PENDING"]
    assert h.sacct(*fmt[:5] + ["-j", jid]) == [jid + "|rq|PENDING"]
    assert h.sacct("-D", *fmt) == [jid + "|rq|REQUEUED", jid + "|rq|PENDING"]
    h.fs.cancel(jid)


@BOTH
def test_sacct_j_task_skips_a_pending_range(h):
    arr = h.run("sbatch", "--parsable", "--hold", "-J", "rng", "--array=0-3",
                "--wrap=sleep 30")[1].strip()
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,State"]
    whole = ["%s_[0-3]|rng|PENDING" % arr]
    assert h.sacct(*fmt + ["-j", arr]) == whole
    assert h.sacct(*fmt + ["--name=rng"]) == whole
    assert h.sacct(*fmt) == whole
    assert h.run("sacct", *fmt + ["-j", arr + "_2"]) == (0, "", "")
    assert h.sacct(*fmt + ["-j", "%s_2,%s" % (arr, arr)]) == whole
    h.fs.release(arr + "_0")
    h.wait_state(arr + "_0", "RUNNING")
    assert h.sacct(*fmt + ["-j", arr + "_0"]) == [arr + "_0|rng|RUNNING"]
    assert h.sacct(*fmt + ["-j", arr + "_2"]) == []
    assert h.sacct(*fmt + ["-j", arr]) == [arr + "_0|rng|RUNNING", arr + "_[1-3]|rng|PENDING"]
    # A whole-array cancel leaves the range as the array's own record.
    h.fs.cancel(arr)
    by = "CANCELLED by %d" % os.getuid()
    assert h.sacct(*fmt + ["-j", arr + "_2"]) == []
    assert h.sacct(*fmt + ["-j", arr]) == ["%s_0|rng|%s" % (arr, by),
                                           "%s_[1-3]|rng|%s" % (arr, by)]


@pytest.mark.slow
def test_ctld_down_delay(h):
    h.fs.configure(ctld_down=True, ctld_down_delay=0.3)

    def timed(*args):
        t = time.time()
        rc = h.fs.run(*args)[0]
        return rc, time.time() - t
    for args, rc, factor in ((("squeue", "-h"), 1, 1), (("squeue", "--json"), 0, 1),
                             (("squeue", "-h", "-j", "5"), 1, 2),
                             (("scontrol", "show", "job", "5"), 1, 2),
                             (("scontrol", "requeue", "5"), 1, 1),
                             (("sbatch", "--wrap=true"), 1, 1), (("scancel", "5"), 8, 1),
                             (("scontrol", "ping"), 1, 0), (("sacct",), 0, 0)):
        got, took = timed(*args)
        assert got == rc, args
        assert 0.3 * factor <= took < 0.3 * factor + 0.25, (args, took)
    h.same(cap("70_squeue_ctld_down"))  # same texts, only later
    assert h.fs.jobs() == []


@pytest.mark.slow
@BOTH
def test_dbd_stale_rows_after_outage(h):
    h.fs.configure(dbd_stale_seconds=1.0)
    fmt = ["-X", "-n", "-P", "-o", "JobID,JobName,State,End"]
    jid = h.run("sbatch", "--parsable", "-J", "before", "--wrap=sleep 0.5")[1].strip()
    h.wait_state(jid, "RUNNING")
    h.fs.configure(dbd_down=True)
    assert h.run("sacct")[0] == 1
    late = h.run("sbatch", "--parsable", "-J", "during", "--wrap=true")[1].strip()
    h.fs.wait()
    h.fs.configure(dbd_down=False)
    t = time.time()
    # What slurmdbd had when it went down; nothing of the job submitted since.
    assert h.sacct(*fmt) == [jid + "|before|RUNNING|Unknown"]
    assert h.sacct(*fmt + ["-j", late]) == []
    time.sleep(max(0, t + 1.1 - time.time()))
    assert [mask(ln) for ln in h.sacct(*fmt)] == [jid + "|before|COMPLETED|TS",
                                                  late + "|during|COMPLETED|TS"]
    # The real case: a job in its sacct_lag placeholder when slurmdbd went down.
    h.fs.configure(sacct_lag=30)
    ph = h.run("sbatch", "--parsable", "-J", "ph", "--wrap=sleep 30")[1].strip()
    h.wait_state(ph, "RUNNING")
    h.fs.configure(dbd_down=True)
    h.fs.configure(dbd_down=False, sacct_lag=0)
    assert h.sacct(*fmt + ["-j", ph]) == [ph + "|allocation|PENDING|Unknown"]
    h.fs.cancel(ph)
    # dbd_stale_seconds=0 (the default): the current rows at once.
    h.fs.configure(dbd_stale_seconds=0, dbd_down=True)
    h.fs.configure(dbd_down=False)
    assert h.sacct("-X", "-n", "-P", "-o", "JobID,JobName,State", "-j", ph) == \
        ["%s|ph|CANCELLED by %d" % (ph, os.getuid())]


@pytest.mark.slow
def test_fault_injection(h):
    fs = h.fs
    fs.fail_next("squeue")
    assert h.run("squeue") == (1, "", "slurm_load_jobs error: Unable to contact slurm "
                                      "controller (connect failure)\n")
    assert h.run("squeue", "-h")[0] == 0  # only the next one
    fs.fail_next("sacct", count=2)
    c = cap("76_sacct_dbd_down")
    assert h.run("sacct") == (1, "", c.err) == h.run("sacct")
    fs.fail_next("scancel")
    assert h.run("scancel", "5") == (8, "", cap("73_scancel_ctld_down").err.replace("16", "5"))
    fs.fail_next("sbatch", stderr="custom\n", rc=7)
    assert h.run("sbatch", "--wrap=true") == (7, "", "custom\n")
    assert fs.jobs() == []

    fs.configure(pending_seconds=30)  # nothing may change between the two squeue calls below
    fs.fail_next("sbatch", mode="queued_error")
    assert h.run("sbatch", "--parsable", "--wrap=true") == \
        (1, "", "sbatch: error: Batch job submission failed: Socket timed out on send/recv "
                "operation\n")
    assert [j["job_id"] for j in fs.jobs()] == ["1"]
    for _ in range(3):
        h.run("sbatch", "-J", "a-rather-long-name", "--wrap=true")
    full = h.run("squeue")[1]
    fs.fail_next("squeue", mode="garbled")
    rc, out, err = h.run("squeue")
    assert (rc, err) == (0, "") and 0 < len(out) < len(full) and full.startswith(out)
    assert not out.endswith("\n") and full[len(out)] != "\n"  # cut inside a line
    assert fake_slurm.garble("ab\ncd\n") == "a" and fake_slurm.garble("") == ""
    fs.fail_next("sacct", mode="empty")
    assert h.run("sacct", "-j", "1") == (0, "", "")
    fs.fail_next("scontrol", mode="hang", hang_seconds=30)
    with pytest.raises(subprocess.TimeoutExpired):
        h.run("scontrol", "show", "job", "1", timeout=1.0)

    calls = fs.calls()
    assert [c["cmd"] for c in calls][:4] == ["squeue", "squeue", "sacct", "sacct"]
    assert calls[0]["rc"] == 1 and calls[0]["fault"] == "error" and "fault" not in calls[1]
    sb = fs.calls("sbatch")
    assert sb[1]["fault"] == "queued_error" and sb[1]["job_id"] == "1" and sb[1]["rc"] == 1
    assert all(c["end"] >= c["start"] for c in calls if c["end"] is not None)
    hung = fs.calls("scontrol")[-1]
    assert (hung["fault"], hung["rc"]) == ("hang", None)
    assert fs.calls("squeue")[-1]["argv"] == []


def test_api_steering_and_cli(h):
    fs = h.fs
    fs.configure(pending_seconds=30)
    jid = h.run("sbatch", "--parsable", "-J", "steer", "--wrap=sleep 5")[1].strip()
    fs.hold(jid)
    assert h.job(jid)["reason"] == "JobHeldAdmin"
    fs.release(jid)
    assert h.job(jid)["reason"] == "None"
    fs.cancel(jid)
    assert h.job(jid)["state"] == "CANCELLED"
    with pytest.raises(fake_slurm.CommandError):
        fs.requeue("99999")
    with pytest.raises(ValueError):
        fs.configure(no_such_setting=1)
    with pytest.raises(ValueError):
        fs.add_rule(action="EXPLODE")
    j = fs.submissions("steer")[0]
    for key in ("job_id", "raw_id", "array_job_id", "array_task_id", "name", "comment", "state",
                "reason", "exit_code", "submit_time", "start_time", "end_time", "output",
                "restarts", "runs", "work_dir", "script"):
        assert key in j
    assert os.path.exists(j["script"])
    assert fs.submissions("nope") == []
    env = dict(h.env)
    p = subprocess.run([sys.executable, os.path.join(FIXTURE, "fake_slurm.py"), "configure",
                        "node_name=n7", "partitions=[\"a\",\"b\"]", "min_job_age=2"], env=env,
                       timeout=10)
    assert p.returncode == 0
    cfg = fs.config()
    assert (cfg["node_name"], cfg["partitions"], cfg["min_job_age"]) == ("n7", ["a", "b"], 2)
    p = subprocess.run([sys.executable, os.path.join(FIXTURE, "fake_slurm.py"), "jobs"], env=env,
                       stdout=subprocess.PIPE, timeout=10)
    assert json.loads(p.stdout.decode())[0]["name"] == "steer"


@pytest.mark.slow
def test_concurrent_commands_keep_state_consistent(h):
    h.fs.configure(pending_seconds=0.02, completing_seconds=0.05)
    results, errors = [], []

    def submit(i):
        rc, out, err = h.run("sbatch", "--parsable", "-J", "c%d" % i, "--wrap=sleep 0.2")
        results.append(out.strip()) if rc == 0 else errors.append(err)

    def poll():
        for _ in range(8):
            for cmd in (("squeue", "-h", "-t", "all"), ("sacct", "-n", "-P", "-X")):
                rc, out, err = h.run(*cmd)
                if rc != 0 or err:
                    errors.append(err)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    threads += [threading.Thread(target=poll) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(int(x) for x in results) == list(range(1, 13))
    jobs = h.fs.wait(timeout=30)
    assert sorted(j["state"] for j in jobs) == ["COMPLETED"] * 12
    with open(h.fs.store.meta_path) as f:
        json.load(f)
    # a reader that starts from nothing (snapshot, if any, and every journal line) agrees
    fresh = fake_slurm.Store(h.fs.dir).read()["jobs"]
    assert [j["state"] for j in fresh] == ["COMPLETED"] * 12
    assert len(h.fs.calls("sbatch")) == 12


def _our_processes(state_dir):
    """Live (non-zombie) processes carrying this state folder."""
    marker = ("FAKE_SLURM_DIR=%s" % state_dir).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/stat" % pid, "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().split(b"\0")
            with open("/proc/%s/environ" % pid, "rb") as f:
                env = f.read().split(b"\0")
        except (IOError, OSError, IndexError):
            continue
        if marker in env or state_dir.encode() in args:
            found.append((int(pid), args))
    return found


def _zombie_children():
    me = str(os.getpid()).encode()
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % pid, "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except (IOError, OSError, IndexError):
            continue
        if rest[0] == b"Z" and rest[1] == me:
            out.append(int(pid))
    return out


def test_shutdown_leaves_no_processes(h):
    h.fs.configure(pending_seconds=0.02)
    h.run("sbatch", "-J", "long", "--wrap=sleep 60 & sleep 60")
    h.run("sbatch", "-J", "arr", "--array=0-3%2", "--wrap=sleep 60")
    h.run("sbatch", "-J", "held", "--hold", "--wrap=sleep 60")
    h.fs.wait(lambda jobs: len([j for j in jobs if j["state"] == "RUNNING"]) == 3)
    assert len(_our_processes(h.fs.dir)) >= 6
    h.fs.shutdown()
    h.fs.shutdown()  # idempotent
    deadline = time.time() + 5
    while _our_processes(h.fs.dir) and time.time() < deadline:
        time.sleep(0.05)
    assert _our_processes(h.fs.dir) == []
    assert all(j["state"] == "CANCELLED" for j in h.fs.jobs())
    h.fs.jobs()  # reaps
    assert _zombie_children() == []
    # Jobs that end on their own leave no zombie behind either.
    h.run("sbatch", "--wrap=true")
    h.fs.wait()
    time.sleep(0.3)
    h.fs.jobs()
    assert _zombie_children() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["3.6.15", "3.13.0"])
def test_shims_under_old_and_new_python(h, version):
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE).stdout.decode().strip() \
        if _has_pyenv() else os.path.expanduser("~/.pyenv")
    python = os.path.join(root, "versions", version, "bin", "python3")
    if not os.path.exists(python):
        pytest.skip("CPython %s not installed" % version)
    env = dict(h.env, FAKE_SLURM_PYTHON=python)
    rc, out, err = h.run("sbatch", "--parsable", "-J", "py", "-a", "0-1",
                         "--wrap=echo $SLURM_ARRAY_TASK_ID", env=env)
    assert (rc, err) == (0, "")
    h.fs.wait(timeout=15)
    rc, out, err = h.run("sacct", "-X", "-n", "-P", "-o", "JobID,State", env=env)
    assert out.splitlines() == ["1_0|COMPLETED", "1_1|COMPLETED"]
    rc, out, err = h.run("squeue", "-h", "-t", "all", "-o", "%i|%T", env=env)
    assert sorted(out.splitlines()) == ["1_0|COMPLETED", "1_1|COMPLETED"]


def _has_pyenv():
    try:
        subprocess.run(["pyenv", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return True
    except OSError:
        return False

"""End to end at the size of a sweep: 10,000 jobs through the CLI as a user runs it
(`plan`, `submit`, `reconcile` passes, `status`, each a process), on the fake SLURM with
simulated jobs (simulate_jobs: each job is played on paper, its log written by the fake,
no process per job).

What is asserted is what does not depend on the machine: one sbatch per job and no more,
one squeue and a few sacct per reconcile pass (sacct by name is cut into arguments of at
most 100 KB: 10,000 names of 22 characters are 3 of them), no command line over the
kernel's limits, every job finalized exactly once, and state files of bounded bytes per
job. Timings are printed (pytest -s), not asserted: the machine is shared. It takes about
6 minutes on 2 busy cores, nearly all of it `submit` starting 10,000 sbatch processes.

There is no such test at 100,000 jobs: one sbatch process per job costs 30-70 ms on this
machine (an interpreter start, whatever the fake does), so `submit` alone would take one to
two hours. tests/test_fake_slurm_sim.py shows the fake carrying 100,000 simulated jobs
(submitted in-process), with squeue and sacct through the shims."""

import json
import os
import sys
import time

import pytest

import helpers
from helpers import read_events, state_files

pytestmark = [pytest.mark.slow]

MAX_ARG = 128 * 1024     # the kernel's limit for one argument (MAX_ARG_STRLEN)
STATE_BYTES_PER_JOB = 4096  # session header + jobs + their events, per job (about 2.3 KB measured)


def _report(text):
    sys.stderr.write(text + "\n")


def _calls_since(fake, n):
    calls = fake.calls()
    return calls[n:], len(calls)


def _check_argv(calls):
    for c in calls:
        assert all(len(a.encode("utf-8")) < MAX_ARG for a in c["argv"]), (c["cmd"], [len(a) for a in c["argv"]])
        assert sum(len(a.encode("utf-8")) + 1 for a in c["argv"]) < 2 * 1024 * 1024


def _took(calls, cmd):
    return ["%.2fs" % (c["end"] - c["start"]) for c in calls if c["cmd"] == cmd]


def sweep_end_to_end(project, fake, n, timeout):
    fake.configure(simulate_jobs=True)
    # names of 22 characters (scale-e2e-sweep-s00042): about 230 KB of them for sacct --name
    cfg = helpers.sweep_config("scale-e2e-sweep", "echo seed {seed}; sleep 1; echo TRAINING FINISHED",
                               ["%05d" % i for i in range(n)], {"lost_after_seconds": 60})
    t0 = time.time()
    res = project.ok("plan", project.config(cfg), "--plan-id", "scale", "-q", timeout=timeout)
    t_plan = time.time() - t0
    names = ["scale-e2e-sweep-s%05d" % i for i in range(n)]

    t0 = time.time()
    res = project.ok("submit", "scale", "-q", timeout=timeout)
    t_submit = time.time() - t0
    assert "Argument list too long" not in res.stderr
    calls, seen = _calls_since(fake, 0)
    _check_argv(calls)
    sbatch = [c for c in calls if c["cmd"] == "sbatch"]
    assert len(sbatch) == n and all(c["rc"] == 0 for c in sbatch)  # one sbatch per job, each accepted
    assert sorted(c["argv"][1].split("=", 1)[1] for c in sbatch) == names  # --job-name=, once each
    _report("\n%d jobs: plan %.1fs; submit %.1fs (%.0f sbatch/s through autoexp and the shim); "
            "around the sbatch calls: %s"
            % (n, t_plan, t_submit, n / t_submit,
               ", ".join("%s %s" % (c["cmd"], _took([c], c["cmd"])[0]) for c in calls if c["cmd"] != "sbatch")))

    passes = []
    for _ in range(10):
        time.sleep(1.5)  # every job has ended (sleep 1) and left COMPLETING
        t0 = time.time()
        res = project.ok("reconcile", "--session", "scale", "-q", timeout=timeout)
        took = time.time() - t0
        assert "Argument list too long" not in res.stderr
        calls, seen = _calls_since(fake, seen)
        _check_argv(calls)
        cmds = [c["cmd"] for c in calls]
        assert cmds.count("squeue") == 1 and 1 <= cmds.count("sacct") <= 4, cmds
        assert set(cmds) <= {"squeue", "sacct"}, cmds  # nothing resubmitted, nothing cancelled
        name_args = [a for c in calls if c["cmd"] == "sacct" for a in c["argv"] if a.startswith("--name=")]
        counts = project.status("scale")["sessions"][0]["counts"]
        passes.append(counts)
        _report("reconcile pass %d: %.1fs; squeue %s, sacct %s (--name= arguments of %s bytes); %s"
                % (len(passes), took, _took(calls, "squeue")[0], " ".join(_took(calls, "sacct")),
                   "/".join(str(len(a)) for a in name_args) or "no", counts))
        if counts == {"finalized": n}:
            break
    assert passes[-1] == {"finalized": n}, passes

    # every job finalized exactly once, after one attempt, its log carrying the termination string
    events = read_events(project.state_dir, "scale")
    finalized = [e["job"] for e in events if e["event"] == "finalized"]
    assert sorted(finalized) == names
    history = json.loads(project.ok("history", "--session", "scale", "--json", timeout=timeout).stdout)["jobs"]
    assert len(history) == n and all(len(j["attempts"]) == 1 for j in history)
    assert set(a["outcome"] for j in history for a in j["attempts"]) == {"success"}
    for j in history[:: max(1, n // 50)]:
        with open(j["attempts"][0]["log_path"]) as f:
            assert f.read().endswith("TRAINING FINISHED\n")
    assert len(fake.calls("sbatch")) == n  # and still one sbatch per job
    jobs = fake.jobs()
    assert len(jobs) == n and all(j["simulated"] and j["state"] == "COMPLETED" for j in jobs)

    # the state grows with the jobs, not faster: bounded bytes per job
    files = state_files(project.state_dir, "scale") + [os.path.join(project.state_dir, "scale.events.jsonl")]
    size = sum(os.path.getsize(p) for p in files)
    _report("state: %s = %.1f MB, %d bytes per job"
            % (" + ".join("%s %.1f MB" % (os.path.basename(p), os.path.getsize(p) / 1e6) for p in files),
               size / 1e6, size // n))
    assert size <= STATE_BYTES_PER_JOB * n


@pytest.mark.timeout(3600)
def test_ten_thousand_jobs_end_to_end(project, fake):
    sweep_end_to_end(project, fake, 10000, timeout=1800)

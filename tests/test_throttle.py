"""monitoring.max_running (submit --max-running N) end to end, on the fake SLURM: at most N of
a session's jobs queued or running at once, counted from the fake's own records of the jobs
it was given (submit and end times), never from autoexp's state; the others are submitted as
slots free up, restarts first; a killed monitor and cron's reconcile keep the bound; a dry run
shows only what would be submitted now."""

import os
import signal
import subprocess
import sys
import time

import pytest

import helpers
from helpers import BOOT

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

GATE = "while [ ! -e {gate} ]; do sleep 0.05; done; "


def sweep(command, seeds=(1, 2, 3, 4, 5, 6), **monitoring):
    return helpers.sweep_config("thr", command, seeds, {"lost_after_seconds": 15}, **monitoring)


def most_at_once(jobs):
    """The most SLURM jobs queued or running at one moment: [submit, end) of each."""
    marks = []
    for j in jobs:
        marks.append((j["submit_time"], 1))
        marks.append((j["end_time"] if j["end_time"] is not None else float("inf"), -1))
    peak = now = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at one instant
        now += step
        peak = max(peak, now)
    return peak


def names(status):
    return dict((j["name"], j) for j in status["sessions"][0]["jobs"])


def test_six_jobs_two_at_a_time(project, fake):
    cfg = project.config(sweep("sleep 0.3; echo TRAINING FINISHED"))
    project.ok("plan", cfg, "--plan-id", "six")
    res = project.ok("submit", "six", "--max-running", "2")
    assert res.stdout.count("queued by autoexp (max_running 2)") == 4
    assert len(fake.submissions()) == 2
    status = project.status("six")
    jobs = names(status)
    waiting = sorted(n for n, j in jobs.items() if j["monitor_state"] == "waiting")
    assert waiting == ["thr-s3", "thr-s4", "thr-s5", "thr-s6"]  # the first two by index went first
    assert all(jobs[n]["reason"] == "queued by autoexp (max_running 2)" for n in waiting)
    table = project.ok("status", "--session", "six").stdout
    assert "4 queued by autoexp (max_running 2)" in table and "waiting" in table
    # the limit is the session's now: a monitor started without any option honours it
    project.ok("monitor", "--session", "six", "--interval", "0.2")
    subs = fake.submissions()
    assert len(subs) == 6 and len(set(j["name"] for j in subs)) == 6
    assert most_at_once(subs) == 2
    assert project.status("six")["sessions"][0]["counts"] == {"finalized": 6}
    assert project.state("six")["config"]["monitoring"]["max_running"] == 2


def test_run_override_and_a_restart_waits_for_a_slot(project, fake):
    """s1 times out at once and restarts after a 1 s backoff; meanwhile s3 takes the slot it
    left, so the restart waits for s2 or s3 to end, then goes before s4 (restarts first)."""
    fake.add_rule(name="thr-s1", action="TIMEOUT", nth=1, after=0.05)
    cmd = "if [ {seed} = 1 ]; then sleep 0.5; else sleep 1.5; fi; echo TRAINING FINISHED"
    cfg = sweep(cmd, seeds=(1, 2, 3, 4))
    cfg["restart"]["timeout"] = {"action": "restart", "max_attempts": 3, "backoff_seconds": 1}
    project.ok("run", project.config(cfg), "--plan-id", "rs", "-o", "monitoring.max_running=2")
    subs = fake.submissions()
    assert most_at_once(subs) == 2
    by = {}
    for j in subs:
        by.setdefault(j["name"], []).append(j)
    assert [len(by[n]) for n in ("thr-s1", "thr-s2", "thr-s3", "thr-s4")] == [2, 1, 1, 1]
    first, again = by["thr-s1"]
    s2, s3, s4 = by["thr-s2"][0], by["thr-s3"][0], by["thr-s4"][0]
    assert s3["submit_time"] >= first["end_time"]                  # s3 took the slot s1 left...
    assert again["submit_time"] >= min(s2["end_time"], s3["end_time"])  # ...so the restart waited
    assert again["submit_time"] <= s4["submit_time"]               # and went before s4
    hist = project.history("rs", "thr-s1")["jobs"][0]
    assert [a["outcome"] for a in hist["attempts"]] == ["timeout", "success"]
    assert project.status("rs")["sessions"][0]["counts"] == {"finalized": 4}


def test_killed_monitor_then_cron_reconcile_keep_the_bound(project, fake, tmp_path):
    gate = str(tmp_path / "gate")
    cfg = project.config(sweep(GATE.format(gate=gate) + "sleep 0.2; echo TRAINING FINISHED"))
    project.ok("plan", cfg, "--plan-id", "cron")
    project.ok("submit", "cron", "--max-running", "2")
    mon = subprocess.Popen([sys.executable, "-c", BOOT, "monitor", "--session", "cron", "--interval", "0.2"],
                           cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # a few cycles with both slots taken: nothing more is submitted
        assert len(fake.submissions()) == 2
        with open(gate, "w"):
            pass
        helpers.wait_for(lambda: len(fake.submissions()) >= 3, what="a third submission by the monitor")
    finally:
        mon.send_signal(signal.SIGKILL)
        mon.communicate()
    assert mon.returncode == -signal.SIGKILL
    os.unlink(gate)  # the jobs now running hold their slots until cron's passes are under way
    for _ in range(3):
        project.ok("reconcile")
    assert most_at_once(fake.submissions()) <= 2
    with open(gate, "w"):
        pass
    deadline = time.time() + 120
    while project.status("cron")["sessions"][0]["counts"] != {"finalized": 6}:
        assert time.time() < deadline, project.ok("status", "--session", "cron").stdout
        project.ok("reconcile")
        time.sleep(0.3)
    subs = fake.submissions()
    assert len(subs) == 6 and len(set(j["name"] for j in subs)) == 6
    assert most_at_once(subs) == 2


def test_dry_run_shows_only_what_would_be_submitted_now(project, fake, tmp_path):
    gate = str(tmp_path / "gate")
    cfg = project.config(sweep(GATE.format(gate=gate) + "echo TRAINING FINISHED", seeds=(1, 2, 3, 4, 5)))
    project.ok("plan", cfg, "--plan-id", "dry")
    res = project.ok("submit", "dry", "--max-running", "2", "--dry-run")
    lines = res.stdout.splitlines()
    assert [l for l in lines if l.startswith("would submit")] == [
        l for l in lines if l.startswith("would submit") and ("thr-s1.sbatch" in l or "thr-s2.sbatch" in l)]
    assert len([l for l in lines if l.startswith("would submit")]) == 2
    assert "would wait for a slot (max_running 2, 0 live): thr-s3, thr-s4, thr-s5" in res.stdout
    assert fake.calls("sbatch") == [] and not os.path.exists(os.path.join(project.state_dir, "dry.json"))
    project.ok("submit", "dry", "--max-running", "2")
    assert len(fake.submissions()) == 2
    res = project.ok("reconcile", "--dry-run")  # both slots taken: nothing would be submitted
    assert "would submit" not in res.stdout
    with open(gate, "w"):
        pass
    fake.wait(timeout=30)  # both ended
    res = project.ok("reconcile", "--dry-run", "-v")
    subs = [l for l in res.stdout.splitlines() if l.startswith("would submit")]
    assert len(subs) == 2 and "thr-s3.sbatch" in subs[0] and "thr-s4.sbatch" in subs[1], res.stdout
    assert len(fake.calls("sbatch")) == 2  # a dry run submits nothing


def test_array_maps_to_slurm_throttle(project, fake):
    cfg = project.config(sweep("sleep 0.2; echo TRAINING FINISHED", seeds=(1, 2, 3, 4)))
    project.ok("plan", cfg, "--plan-id", "arr")
    res = project.ok("submit", "arr", "--array", "--max-running", "2", "--dry-run")
    assert "--array=0,1,2,3%2" in res.stdout and "would wait" not in res.stdout
    project.ok("submit", "arr", "--array", "--max-running", "2")
    calls = fake.calls("sbatch")
    assert len(calls) == 1 and "--array=0,1,2,3%2" in calls[0]["argv"]
    project.ok("monitor", "--session", "arr", "--interval", "0.2")
    assert project.status("arr")["sessions"][0]["counts"] == {"finalized": 4}


def test_max_running_is_bounded(project, fake):
    cfg = project.config(sweep("echo TRAINING FINISHED"))
    project.ok("plan", cfg, "--plan-id", "bad")
    for value in ("0", "-1", "2.5", "x", "100001"):
        res = project.cli("submit", "bad", "--max-running", value)
        assert res.returncode == 2 and "Error: argument --max-running" in res.stderr, (value, res.stderr)
    res = project.cli("plan", cfg, "-o", "monitoring.max_running=0")
    assert res.returncode == 2 and "monitoring.max_running: must be at least 1" in res.stderr, res.stderr
    assert fake.calls("sbatch") == []

"""The crash harness: kill autoexp at every named crash point (several occurrences each) and
with SIGKILL at random moments, resume, and check that nothing was lost, duplicated or run
twice, and that every job ends as it would have without the crash."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, Project, autoexp, fake_slurm, read_events

# this harness's sweep has no follow-ups: tests/test_followups.py crashes at their point
# A sweep run reaches every crash point but those of follow-ups (tests/test_followups.py crashes
# there, on a sweep with follow-ups) and of `archive` (tests/test_archive.py)
CRASH_POINTS = [p for p in autoexp.CRASH_POINTS if p != "after_followup_script" and not p.startswith("archive_")]
# a new generation of job files after every few batches, so the crashes hit those writes too
COMPACT = {"AUTOEXP_COMPACT_BYTES": "1"}
OCCURRENCES = (1, 2, 3)


def slow_but(values, fast):
    """The values as parameters, each marked slow except `fast`: `-m "not slow"` keeps one
    crash point (the first sbatch that the state file missed), the full run all of them."""
    return [v if v == fast else pytest.param(v, marks=pytest.mark.slow) for v in values]


EXPECTED = {
    "cr-s1": ["timeout", "success"],          # killed by its time limit once
    "cr-s2": ["crash", "success"],            # a log event while RUNNING: cancelled, restarted
    "cr-s3": ["success"],
}


def sweep(project, fake, plan_id, plan=True):
    fake.add_rule(name="cr-s1", nth=1, action="TIMEOUT", after=0.1)
    config = {
        "project": "cr",
        "sweep": {"seed": [1, 2, 3]},
        "job": {"name": "{project}-s{seed}", "log": "logs/{name}-%j.log",
                "command": "if [ {seed} = 2 ] && [ ! -e nccl-{plan_id} ]; then touch nccl-{plan_id}; echo 'NCCL error: boom'; "
                           "sleep 30; fi; sleep 0.3; echo TRAINING FINISHED"},
        "monitoring": {"interval_seconds": 0.1, "termination_string": "TRAINING FINISHED",
                       "lost_after_seconds": 20, "slurm_timeout_seconds": 10,
                       "log_events": [{"name": "nccl", "pattern": "NCCL error", "mode": "crash"}]},
        "restart": {"timeout": {"action": "restart", "max_attempts": 3},
                    "crash": {"action": "restart", "max_attempts": 3}},
        # the effect engine's crash points: each finalized job's command runs exactly once
        "on": [{"event": "finalized", "run": "echo {name} >> effects.ran; sleep 0.2"}],
    }
    project.config(config)
    if plan:
        project.ok("plan", os.path.join(project.root, "cfg.json"), "--plan-id", plan_id)


def resume_until_done(project, plan_id, use_reconcile):
    session = os.path.join(project.state_dir, plan_id + ".json")
    if not os.path.exists(session):  # the crash came before the first state write
        project.ok("submit", plan_id)
    if not use_reconcile:
        project.ok("monitor", "--session", plan_id)
        return
    deadline = time.time() + 60
    while time.time() < deadline:
        res = project.cli("reconcile", "--session", plan_id)
        assert res.returncode == 0, res.stderr
        jobs = project.state(plan_id)["jobs"]
        if not any(j["status"] == "active" or any(e["state"] in autoexp.EFFECT_OPEN for e in j["effects"])
                   for j in jobs):
            return
        time.sleep(0.2)
    raise AssertionError("reconcile loop did not finish")


def check_invariants(project, fake, plan_id):
    fake.wait(timeout=30)  # a finalized job may still be completing in SLURM
    state = project.state(plan_id)  # parses
    outcomes = dict((j["name"], [a["outcome"] for a in j["attempts"]]) for j in state["jobs"])
    assert outcomes == EXPECTED
    for name, expected in EXPECTED.items():
        runs = fake.submissions(name)
        # one SLURM job per attempt: nothing submitted twice
        assert len(runs) == len(expected), (name, [r["job_id"] for r in runs])
        job = [j for j in state["jobs"] if j["name"] == name][0]
        assert [a["job_id"] for a in job["attempts"]] == [r["job_id"] for r in runs]
        # never two live attempts: each run ended before the next was submitted
        for before, after in zip(runs, runs[1:]):
            assert before["end_time"] is not None and before["end_time"] <= after["submit_time"] + 0.05
        # a run that completed was the last one
        assert all(r["state"] != "COMPLETED" for r in runs[:-1])
        assert runs[-1]["state"] == "COMPLETED"
    with open(os.path.join(project.root, "effects.ran")) as f:
        assert sorted(f.read().split()) == sorted(EXPECTED), "an effect ran twice or never"
    for job in state["jobs"]:
        assert [(e["state"], e["try"], e["exit"]) for e in job["effects"]] == [("done", 1, 0)], job["effects"]
    events = read_events(project.state_dir, plan_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)) == list(range(1, state["event_seq"] + 1))
    keys = [(e["job"], e["attempt"], e["event"], e.get("detail")) for e in events if e["event"] != "state"]
    assert len(keys) == len(set(keys)), "an event was recorded twice"
    leftovers = [n for n in os.listdir(project.state_dir) if n.endswith(".tmp")]
    actions = os.listdir(os.path.join(project.state_dir, "actions", plan_id))
    leftovers += [n for n in actions if n.endswith(".tmp")]
    assert leftovers == [], "temporary files of a killed writer were left behind"
    kinds = [a.split("_", 1)[1] for a in actions]  # job_attempt_action, without the time
    assert len(kinds) == len(set(kinds)), "an action was recorded twice: %s" % sorted(actions)
    for a in actions:
        with open(os.path.join(project.state_dir, "actions", plan_id, a)) as f:
            json.load(f)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nth", slow_but(OCCURRENCES, 1))
@pytest.mark.parametrize("point", slow_but(CRASH_POINTS, "after_sbatch"))
def test_crash_point(project, fake, point, nth):
    plan_id = "c-%s-%d" % (point.replace("_", "-"), nth)
    project.env.update(COMPACT)  # the resumes write new generations often too
    sweep(project, fake, plan_id, plan=False)
    res = _run_with_crash(project, plan_id, point, nth)
    crashed = res.returncode == 86
    assert crashed or res.returncode == 0, res.stderr
    if point not in ("before_scancel", "after_scancel") or nth == 1:
        assert crashed, "crash point %s:%d was never reached" % (point, nth)
    resume_until_done(project, plan_id, use_reconcile=(nth == 2))
    check_invariants(project, fake, plan_id)


def _run_with_crash(project, plan_id, point, nth):
    """submit and monitor in one process (`run` without its plan step), so that the n-th
    occurrence counts over the whole sweep."""
    return project.cli("run", "--plan-id", plan_id, os.path.join(project.root, "cfg.json"),
                       env=dict(COMPACT, AUTOEXP_CRASH_AT="%s:%d" % (point, nth)))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sigkill_at_random_moments(tmp_path):
    rng = random.Random(20261129)
    for trial in range(5):
        fake = fake_slurm.FakeSlurm(str(tmp_path / ("fake%d" % trial)))
        try:
            _sigkill_trial(tmp_path / ("proj%d" % trial), fake, "kill%d" % trial, rng)
        finally:
            fake.shutdown()


def _sigkill_trial(root, fake, plan_id, rng, max_kills=3):
    """Run the sweep, SIGKILLing submit or monitor at random moments up to max_kills times,
    until a monitor finishes; check the invariants. Returns (kills, SLURM submissions)."""
    fake.configure(pending_seconds=0.05, completing_seconds=0.05, min_job_age=2)
    root.mkdir()
    project = Project(root, fake)
    project.env.update(COMPACT)
    sweep(project, fake, plan_id)
    kills = 0
    while True:
        if not os.path.exists(os.path.join(project.state_dir, plan_id + ".json")):
            argv = ["submit", plan_id]
        else:
            argv = ["monitor", "--session", plan_id]
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py")] + argv, cwd=project.root,
                             env=project.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < max_kills:
            time.sleep(rng.uniform(0.05, 1.2))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err
        if p.returncode == 0 and argv[0] == "monitor":
            break
    check_invariants(project, fake, plan_id)
    return kills, len(fake.submissions())

"""Faults around autoexp, injected on the fake SLURM: a controller that does not answer, hangs
or prints garbage, an sbatch that fails (and sometimes queued the job anyway), a scancel that
fails, two writers at once. Whatever breaks, nothing is double-submitted, lost, restarted
while healthy, or corrupted."""

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from helpers import ROOT, read_events, sweep_config, wait_for

pytestmark = pytest.mark.timeout(120)


def cfg(command="sleep 0.3; echo TRAINING FINISHED", seeds=(1, 2), **monitoring):
    return sweep_config("ft", command, seeds, {"lost_after_seconds": 10, "slurm_timeout_seconds": 2,
                                               "unknown_backoff_max_seconds": 0.5, "submit_backoff_seconds": 0.3},
                        **monitoring)


def submit(project, config, plan_id, *extra):
    project.ok("plan", project.config(config, plan_id + ".json"), "--plan-id", plan_id)
    return project.ok("submit", plan_id, *extra)


def actions_taken(project, plan_id):
    folder = os.path.join(project.state_dir, "actions", plan_id)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# --- a controller that does not answer ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["error", "hang", "garbled"])
def test_squeue_misbehaving_is_unknown(project, fake, mode):
    submit(project, cfg(command="exit 1"), "sq-" + mode)
    fake.wait(timeout=10)  # both jobs FAILED: there is something to act on
    state = os.path.join(project.state_dir, "sq-%s.json" % mode)
    before = open(state, "rb").read()
    failures = 1 if mode == "hang" else 3  # a hang costs slurm_timeout_seconds each time
    fake.fail_next("squeue", count=failures, mode=mode, hang_seconds=30)
    for _ in range(failures):
        res = project.cli("monitor", "--session", "sq-" + mode, "--once")
        assert res.returncode == 1 and "SLURM did not answer" in res.stderr
        assert open(state, "rb").read() == before
    assert len(fake.calls("sbatch")) == 2 and actions_taken(project, "sq-" + mode) == []
    project.ok("monitor", "--session", "sq-" + mode)
    assert [len(fake.submissions(n)) for n in ("ft-s1", "ft-s2")] == [2, 2]


@pytest.mark.slow
def test_sacct_down_leaves_missing_jobs_unknown(project, fake):
    fake.configure(min_job_age=1)
    submit(project, cfg(command="echo TRAINING FINISHED; exit 1", seeds=(1,)), "dbd")
    fake.wait(timeout=10)
    time.sleep(1.5)  # purged from squeue: only sacct can tell what happened
    fake.configure(dbd_down=True)
    for _ in range(3):  # a pass that could not ask sacct fails, as reconcile's does
        res = project.cli("monitor", "--session", "dbd", "--once")
        assert res.returncode == 1 and "sacct did not answer" in res.stderr, res.stderr
    job = project.state("dbd")["jobs"][0]
    assert job["status"] == "active" and job["attempts"][0]["outcome"] is None
    assert job["attempts"][0]["missing_since"] is None and job["attempts"][0]["last_monitor_state"] == "unknown"
    fake.configure(dbd_down=False)
    project.ok("monitor", "--session", "dbd")
    job = project.state("dbd")["jobs"][0]
    assert job["status"] == "finalized" and len(job["attempts"]) == 1


@pytest.mark.slow
def test_controller_outage_takes_no_action_then_carries_on(project, fake):
    """slurmctld down while jobs end: no submission, cancel or decision until it is back."""
    submit(project, cfg(command="sleep 0.5; exit 1", inactivity_threshold_seconds=1), "out")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py"), "monitor", "--session", "out"],
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fake.configure(ctld_down=True)
    fake.wait(timeout=10)
    time.sleep(0.5)  # let a cycle that was under way when SLURM went away finish
    t_down = time.time()
    n_events = len(read_events(project.state_dir, "out"))
    actions = actions_taken(project, "out")
    time.sleep(2)   # many cycles' worth, all UNKNOWN
    calls = [c for c in fake.calls() if c["start"] > t_down]
    assert [c["cmd"] for c in calls if c["cmd"] != "squeue"] == []  # no sacct, sbatch, scancel
    assert len([c for c in calls if c["cmd"] == "squeue"]) >= 3
    assert len(read_events(project.state_dir, "out")) == n_events
    assert actions_taken(project, "out") == actions
    fake.configure(ctld_down=False)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err.count(b"SLURM did not answer") == 1 and b"SLURM answers again" in out
    hist = project.history("out")
    assert [[a["outcome"] for a in j["attempts"]] for j in hist["jobs"]] == [["crash", "crash"]] * 2


# --- sbatch ------------------------------------------------------------------------------

def test_sbatch_timeout_that_queued_the_job_is_adopted_not_resubmitted(project, fake):
    project.ok("plan", project.config(cfg(seeds=(1,))), "--plan-id", "qe")
    fake.fail_next("sbatch", mode="queued_error")
    res = project.cli("submit", "qe")
    assert "not submitted: sbatch: error: Batch job submission failed: Socket timed out" in res.stdout
    project.ok("monitor", "--session", "qe")
    (att,) = project.history("qe", "ft-s1")["jobs"][0]["attempts"]
    assert att["origin"] == "recovered" and att["outcome"] == "success"
    assert len(fake.submissions("ft-s1")) == 1 and len(fake.calls("sbatch")) == 1


@pytest.mark.slow
def test_sbatch_failure_that_queued_nothing_is_retried_with_backoff(project, fake):
    # a short lost grace: the retries' floor (sacct's lag) is min(30 s, lost_after_seconds)
    project.ok("plan", project.config(cfg(seeds=(1,), lost_after_seconds=0.3)), "--plan-id", "retry")
    fake.fail_next("sbatch", count=2, stderr="sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n")
    project.cli("submit", "retry")
    project.ok("monitor", "--session", "retry")
    calls = fake.calls("sbatch")
    assert len(calls) == 3 and len(fake.submissions("ft-s1")) == 1
    assert calls[2]["start"] - calls[1]["start"] >= 0.6 - 0.05  # 0.3 s, then 0.6 s
    events = [e["event"] for e in read_events(project.state_dir, "retry")]
    assert events.count("submit_error") == 2 and project.state("retry")["jobs"][0]["status"] == "finalized"


@pytest.mark.parametrize("sbatch, text", [
    ({"partition": "nope"}, "Invalid partition name specified"),
    ({"time": "abc"}, "Invalid --time specification"),
])
def test_permanent_sbatch_error_stops_the_job_without_retrying(project, fake, sbatch, text):
    c = cfg(seeds=(1,))
    c["job"]["sbatch"] = sbatch
    project.ok("plan", project.config(c), "--plan-id", "perm")
    res = project.cli("submit", "perm")
    assert res.returncode == 1 and text in res.stdout
    project.ok("monitor", "--session", "perm")
    job = project.history("perm")["jobs"][0]
    assert job["status"] == "stopped" and text in job["attempts"][0]["reason"]
    assert len(fake.calls("sbatch")) == 1


@pytest.mark.slow
def test_scancel_failing_is_recorded_and_retried(project, fake):
    submit(project, cfg(command="if [ ! -e once ]; then touch once; echo hi; sleep 30; fi; echo TRAINING FINISHED",
                        seeds=(1,), inactivity_threshold_seconds=1), "sc")
    fake.fail_next("scancel", count=1)
    project.ok("monitor", "--session", "sc", "-o", "interval_seconds=0.2")
    att = project.state("sc")["jobs"][0]["attempts"]
    events = [e["event"] for e in read_events(project.state_dir, "sc")]
    assert "scancel_failed" in events and "scancel" in events
    assert [a["outcome"] for a in att] == ["stall", "success"]
    assert len(fake.submissions("ft-s1")) == 2


def test_scancel_of_a_job_already_gone_is_fine(project, fake):
    submit(project, cfg(command="sleep 0.2; echo TRAINING FINISHED", seeds=(1,)), "gone")
    fake.wait(timeout=10)
    res = project.ok("cancel", "--session", "gone", "ft-s1")
    assert "cancelled" in res.stdout
    job = project.state("gone")["jobs"][0]
    assert job["status"] == "cancelled" and job["attempts"][0]["cancel_result"]["ok"] is True


# --- one writer, many readers -------------------------------------------------------------

@pytest.mark.slow
def test_monitor_and_reconcile_at_once_exactly_one_acts(project, fake):
    submit(project, cfg(command="sleep 0.2; echo TRAINING FINISHED", seeds=(1, 2, 3)), "race")
    path = os.path.join(project.state_dir, "race.json")
    bad = []
    stop = threading.Event()

    def read_loop():
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    json.loads(f.read().decode())
            except ValueError as e:
                bad.append(str(e))
            res = project.cli("status", "--session", "race", "--json")
            if res.returncode != 0:
                bad.append(res.stderr)
    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        codes = []
        for _ in range(6):
            a = subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py"), "monitor", "--session", "race",
                                  "--once"], cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            b = subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py"), "reconcile", "--session",
                                  "race"], cwd=project.root, env=project.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            codes.append((a.wait(), b.wait()))
        project.ok("monitor", "--session", "race")
    finally:
        stop.set()
        reader.join()
    assert bad == []
    for pair in codes:
        assert sorted(pair) in ([0, 0], [0, 75]), codes
    assert any(75 in pair for pair in codes), "the two writers never overlapped: %s" % codes
    assert [len(fake.submissions("ft-s%d" % i)) for i in (1, 2, 3)] == [1, 1, 1]
    events = read_events(project.state_dir, "race")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


# --- files ------------------------------------------------------------------------------

def test_state_is_private_unless_the_folder_exists(project, fake):
    submit(project, cfg(seeds=(1,)), "priv")
    project.ok("monitor", "--session", "priv")
    sd = project.state_dir
    for folder in (sd, os.path.join(sd, "plans"), os.path.join(sd, "plans", "priv"),
                   os.path.join(sd, "actions", "priv")):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    for name in ("priv.json", "priv.events.jsonl", "priv.lock", os.path.join("plans", "priv", "manifest.json")):
        assert stat.S_IMODE(os.stat(os.path.join(sd, name)).st_mode) == 0o600, name
    shared = os.path.join(project.root, "shared-state")
    os.mkdir(shared)
    os.chmod(shared, 0o775)
    project.ok("--state-dir", shared, "plan", project.config(cfg(seeds=(1,)), "s.json"), "--plan-id", "sh")
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o775

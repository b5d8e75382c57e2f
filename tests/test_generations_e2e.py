"""autoexp end to end on the fake SLURM playing SLURM 24.11 (fixtures/fake_slurm, version
"24.11"), next to the rest of the suite, which runs on its 22.05 default.

1. A representative set of the suite's own end-to-end, fault and resume tests, imported
   from their modules and run here again with the `fake` fixture below (24.11): a full
   sweep with restarts, an array whose failed task alone is resubmitted, a stall cancel,
   sbatch errors, outages of slurmctld and slurmdbd, resume and reconcile.
2. Scenarios where the generations differ, run on both: accounting that lags (22.05's
   `allocation` placeholder, 24.11's real name at once), jobs killed by a signal (24.11's
   RaisedSignal:N(...) reasons), a whole array cancelled by hand (24.11: COMPLETING first;
   Start None for the pending range), jobs that end while slurmdbd is down (24.11: no sacct
   row at all for a while after it is back), and 24.11's refusal of a request the
   node can never satisfy, which uses up a job id carrying autoexp's tag.
"""

import calendar
import os
import subprocess
import sys
import time

import pytest

import helpers
from conftest import fake_slurm
from helpers import ROOT, read_events, wait_for
from test_e2e import (test_array_task_fails_once_and_only_it_is_resubmitted, test_four_job_sweep_to_success,  # noqa: F401
                      test_stall_is_cancelled_and_restarted, test_timeout_twice_then_success_history)
from test_faults import (test_controller_outage_takes_no_action_then_carries_on,  # noqa: F401
                         test_permanent_sbatch_error_stops_the_job_without_retrying,
                         test_sacct_down_leaves_missing_jobs_unknown,
                         test_sbatch_timeout_that_queued_the_job_is_adopted_not_resubmitted)
from test_resume import (test_job_failed_while_no_monitor_ran_gets_its_policy_once,  # noqa: F401
                         test_job_finished_while_no_monitor_ran_is_finalized_from_sacct,
                         test_job_id_changed_while_no_monitor_ran_is_adopted,
                         test_requeue_under_the_same_id_is_not_restarted,
                         test_stop_the_monitor_mid_sweep_and_resume)

pytestmark = pytest.mark.timeout(120)

BOTH = ["22.05", "24.11"]


@pytest.fixture
def fake(request, tmp_path):
    """The suite's fake SLURM (conftest.py), playing 24.11 unless a test asks for another
    generation (indirect parametrization)."""
    fs = fake_slurm.FakeSlurm(str(tmp_path / "fake-slurm"))
    fs.configure(version=getattr(request, "param", "24.11"), pending_seconds=0.05, completing_seconds=0.05,
                 min_job_age=2)
    try:
        yield fs
    finally:
        fs.shutdown()


def sweep(command, seeds=(1, 2), **monitoring):
    return helpers.sweep_config("gen", command, seeds, {"lost_after_seconds": 15, "slurm_timeout_seconds": 10,
                                                        "unknown_backoff_max_seconds": 0.5}, **monitoring)


def history(project, session):
    return dict((j["name"], j) for j in project.history(session)["jobs"])


def epoch(iso):
    """'2026-12-01T16:39:11.285Z' (UTC) -> seconds since the epoch."""
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + float(iso[19:23] or 0)


def monitor_proc(project, session, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "autoexp.py"), "monitor", "--session", session]
                            + list(extra),
                            cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("fake", BOTH, indirect=True)
def test_short_jobs_with_lagging_accounting(project, fake):
    """Jobs that end and leave squeue before slurmdbd has their real record: 22.05 has no
    row, then an `allocation` row; 24.11 has the real name at once but the start and end
    late. Each job is decided once, from its real record, and nothing is submitted twice."""
    fake.configure(sacct_lag=1.0, min_job_age=0.3)
    cfg = sweep("echo seed {seed}; echo TRAINING FINISHED", seeds=(1, 2, 3), interval_seconds=0.5)
    cfg["restart"]["crash"]["max_attempts"] = 1
    res = project.ok("run", project.config(cfg), "--plan-id", "lag")
    assert "session lag done: 3 finalized" in res.stdout
    hist = history(project, "lag")
    for name, job in hist.items():
        (att,) = job["attempts"]
        assert (att["outcome"], att["slurm_state"], att["exit_code"]) == ("success", "COMPLETED", "0:0"), att
    assert len(fake.calls("sbatch")) == 3 and len(fake.submissions()) == 3


@pytest.mark.parametrize("fake", BOTH, indirect=True)
def test_job_killed_by_a_signal_is_a_crash(project, fake):
    cmd = "if [ {seed} = 1 ] && [ ! -e segv-once ]; then touch segv-once; kill -SEGV $$; fi; echo TRAINING FINISHED"
    project.ok("run", project.config(sweep(cmd)), "--plan-id", "sig")
    (first, second) = history(project, "sig")["gen-s1"]["attempts"]
    assert (first["outcome"], first["slurm_state"], first["exit_code"]) == ("crash", "FAILED", "0:11"), first
    assert second["outcome"] == "success"
    reason = {"22.05": "NonZeroExitCode", "24.11": "RaisedSignal:11(Segmentation fault)"}[fake.config()["version"]]
    assert [j["reason"] for j in fake.submissions("gen-s1")] == [reason, "None"]


@pytest.mark.parametrize("fake", BOTH, indirect=True)
def test_array_cancelled_whole_by_hand(project, fake):
    """`scancel <array>` behind autoexp's back while two tasks run and two wait: 24.11 shows
    the running ones COMPLETING first and gives the pending range no Start. Every task ends
    `cancelled` (policy: stop), none is restarted."""
    cfg = sweep("sleep 30; echo TRAINING FINISHED", seeds=(1, 2, 3, 4))
    cfg["job"]["array_max_running"] = 2
    project.ok("plan", project.config(cfg), "--plan-id", "arrc")
    out = project.ok("submit", "arrc", "--array").stdout
    array_id = out.split()[1].split("_")[0]
    proc = monitor_proc(project, "arrc")
    wait_for(lambda: len([j for j in fake.jobs() if j["state"] == "RUNNING"]) == 2, timeout=20,
             what="two tasks running")
    time.sleep(0.5)
    fake.configure(completing_seconds=1.5)  # long enough for cycles to see COMPLETING
    t_cancel = time.time()
    subprocess.check_call(["scancel", array_id], env=project.env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    hist = history(project, "arrc")
    assert sorted(hist) == ["gen-s%d" % i for i in (1, 2, 3, 4)]
    for name, job in hist.items():
        (att,) = job["attempts"]
        assert (job["status"], att["outcome"], att["slurm_state"]) == ("stopped", "cancelled", "CANCELLED"), job
    assert len(fake.calls("sbatch")) == 1
    if fake.config()["version"] == "24.11":
        # the running tasks were decided only once SLURM called them CANCELLED, not while COMPLETING
        ran = [j["job_id"] for j in fake.jobs() if j["runs"]]
        decided = [epoch(e["time"]) for e in read_events(project.state_dir, "arrc")
                   if e["event"] == "outcome" and e.get("job_id") in ran]
        assert len(decided) == 2 and min(decided) >= t_cancel + 1.4, (decided, t_cancel)


@pytest.mark.parametrize("fake", BOTH, indirect=True)
def test_jobs_that_ended_while_slurmdbd_was_down(project, fake):
    """slurmdbd goes down while gen-s1 runs; gen-s2's script is submitted by hand meanwhile
    (autoexp itself submits nothing it cannot look up first). Both end and leave squeue
    during the outage. Once slurmdbd is back, 22.05 answers from what it had (gen-s1
    RUNNING, nothing of gen-s2) and 24.11 has no row for gen-s2, which it never heard of,
    then a PENDING one. The monitor waits through it all (nothing lost or restarted) and
    finalizes each job from its real record."""
    fake.configure(dbd_stale_seconds=3.0, min_job_age=0.5)
    cfg = sweep("sleep 1; echo TRAINING FINISHED", lost_after_seconds=20, interval_seconds=0.3)
    project.ok("plan", project.config(cfg), "--plan-id", "dbd")
    project.ok("submit", "dbd", "--only", "gen-s1")
    s1 = project.state("dbd")["jobs"][0]["job_id"]
    fake.wait(lambda jobs: [j for j in jobs if j["job_id"] == s1 and j["state"] == "RUNNING"], timeout=10)
    fake.configure(dbd_down=True)  # slurmdbd knows gen-s1, running
    script = os.path.join(project.state_dir, "plans", "dbd", "jobs", "gen-s2.sbatch")
    s2 = subprocess.check_output(["sbatch", "--parsable", script], env=project.env, cwd="/").decode().strip()
    proc = monitor_proc(project, "dbd", "--monitor-all")  # it takes gen-s2 from squeue, by its tag
    fake.wait(timeout=15)
    time.sleep(1.0)  # both left squeue: only sacct can tell now, and it cannot
    fake.configure(dbd_down=False)
    t_up = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.time() - t_up >= 2.5, out  # it waited for slurmdbd's real rows
    hist = history(project, "dbd")
    for name, job_id, origin in (("gen-s1", s1, "submitted"), ("gen-s2", s2, "external")):
        (att,) = hist[name]["attempts"]
        assert (att["job_id"], att["origin"], att["outcome"], att["slurm_state"], att["exit_code"]) == (
            job_id, origin, "success", "COMPLETED", "0:0"), att
    assert len(fake.calls("sbatch")) == 2
    assert b"sacct did not answer" in err


@pytest.mark.parametrize("sbatch, text", [
    ({"cpus-per-task": "16"}, "CPU count per node can not be satisfied"),
    ({"mem": "500G"}, "Memory specification can not be satisfied"),
])
def test_request_the_node_can_never_satisfy_is_stopped_once(project, fake, sbatch, text):
    """24.11 refuses it at submit (rc 1: a permanent error) but has made the job already:
    a FAILED|BadConstraints job carrying autoexp's name and tag sits in squeue and sacct.
    The job is stopped with SLURM's reason, never resubmitted, and the refused job is
    never taken for one of its attempts: not by monitor, reconcile or --monitor-all."""
    fake.configure(node_cpus=8, node_mem_mb=16000)
    cfg = sweep("echo TRAINING FINISHED", seeds=(1, 2))
    cfg["job"]["sbatch"] = dict(sbatch)
    cfg["job"]["name"] = "{project}-s{seed}"
    project.ok("plan", project.config(cfg), "--plan-id", "bad")
    res = project.cli("submit", "bad")
    assert res.returncode == 1 and text in res.stdout, res
    refused = [j for j in fake.jobs() if j["reason"] == "BadConstraints"]
    assert [(j["name"], j["state"], j["comment"]) for j in refused] == [
        ("gen-s1", "FAILED", "autoexp:bad:gen-s1"), ("gen-s2", "FAILED", "autoexp:bad:gen-s2")]
    for args in (("monitor", "--session", "bad"), ("reconcile", "--session", "bad"),
                 ("monitor", "--session", "bad", "--monitor-all")):
        project.ok(*args)
    time.sleep(2.5)  # the refused jobs leave squeue (MinJobAge); sacct keeps them
    project.ok("reconcile", "--session", "bad")
    for name, job in history(project, "bad").items():
        assert job["status"] == "stopped", job
        (att,) = job["attempts"]
        assert att["job_id"] is None and text in att["reason"], att
    assert len(fake.calls("sbatch")) == 2
    assert [e["event"] for e in read_events(project.state_dir, "bad") if e["event"] == "adopted"] == []


@pytest.mark.parametrize("fake", BOTH, indirect=True)
def test_held_job_cancelled_by_hand_is_seen_ending_through_sacct_by_id(project, fake):
    """A job held while it pends and then cancelled by hand was never eligible: accounting
    keeps its Eligible Unknown and lists it for `sacct -j ID` only, never for a query by name
    (the real tier saw this on 22.05 and 24.11, and for an afterok dependency that failed).
    autoexp asks by id for the attempts the names did not answer for, and records the end
    at once, long before lost_after_seconds."""
    fake.configure(pending_seconds=60)
    cfg = sweep("echo TRAINING FINISHED", seeds=(1,), lost_after_seconds=600)
    project.ok("plan", project.config(cfg), "--plan-id", "held")
    project.ok("submit", "held")
    (jid,) = [str(j["job_id"]) for j in fake.submissions("gen-s1")]
    fake.hold(jid)
    fake.cancel(jid)
    wait_for(lambda: not [r for r in fake.jobs() if r["job_id"] == jid and r["state"] != "CANCELLED"], what="cancel")
    res = project.ok("reconcile", "--session", "held")
    (att,) = history(project, "held")["gen-s1"]["attempts"]
    assert (att["outcome"], att["slurm_state"], att["exit_code"]) == ("cancelled", "CANCELLED", "0:0"), (att, res.stdout)
    sacct = [c["argv"] for c in fake.calls("sacct")]
    by_name = [a for a in sacct if any(x.startswith("--name=") and "gen-s1" in x[7:].split(",") for x in a)]
    assert by_name and [a[a.index("-j") + 1] for a in sacct if "-j" in a] == [jid], sacct  # the name found nothing

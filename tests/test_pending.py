"""Jobs that never start and jobs that wait too long, end to end: the CLI against the fake
SLURM, whose add_pending keeps a job PENDING with a given squeue reason (22.05 and 24.11).
A blocking reason cancels and stops the job with the reason in words; a waiting reason is
shown, never acted on; max_pending_seconds says so by an event, or with a `restart` policy
cancels the pending job before its next attempt; an UNKNOWN squeue decides nothing."""

import os
import time

import pytest

import helpers
from helpers import read_events

pytestmark = pytest.mark.timeout(120)

VERSIONS = ("22.05", "24.11")
PLAIN_PTL = ("PartitionTimeLimit: the job's --time is above the partition's time limit; lower it or choose "
             "another partition")


def sweep_config(seeds=(1, 2), **monitoring):
    return helpers.sweep_config("e2e", "echo seed {seed}; sleep 0.2; echo TRAINING FINISHED", seeds,
                                {"lost_after_seconds": 15}, **monitoring)


def jobs_of(status):
    return dict((j["name"], j) for j in status["sessions"][0]["jobs"])


def events_of(project, session, name, kind=None):
    return [e for e in read_events(project.state_dir, session)
            if e["job"] == name and (kind is None or e["event"] == kind)]


def submit(project, cfg, plan_id):
    project.ok("plan", project.config(cfg), "--plan-id", plan_id)
    project.ok("submit", plan_id)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_blocked_job_is_cancelled_and_stopped_with_its_reason_in_words(project, fake, version):
    fake.configure(version=version)
    fake.add_pending("e2e-s1", "PartitionTimeLimit")
    project.ok("run", project.config(sweep_config()), "--plan-id", "blk")
    jobs = jobs_of(project.status("blk"))
    assert jobs["e2e-s2"]["status"] == "finalized"
    s1 = jobs["e2e-s1"]
    assert s1["status"] == "stopped" and s1["attempts"] == 1
    assert s1["reason"] == "policy for blocked: stop (%s)" % PLAIN_PTL
    attempt = project.history("blk", "e2e-s1")["jobs"][0]["attempts"][0]
    assert attempt["outcome"] == "blocked" and attempt["reason"] == PLAIN_PTL
    assert attempt["pending_reason"] == "PartitionTimeLimit (%s)" % PLAIN_PTL.split(": ", 1)[1]
    # SLURM's side: cancelled while it pended, never run, never submitted again
    sub = fake.submissions("e2e-s1")
    assert len(sub) == 1 and sub[0]["state"] == "CANCELLED" and sub[0]["runs"] == 0
    assert [c["argv"] for c in fake.calls("scancel")] == [[sub[0]["job_id"]]]
    # said once, in words, with the policy's answer; then the cancel and the stop
    kinds = [e["event"] for e in events_of(project, "blk", "e2e-s1") if e["event"] != "state"]
    assert kinds[-5:] == ["blocked", "outcome", "stopped", "cancel_requested", "scancel"]
    blocked = events_of(project, "blk", "e2e-s1", "blocked")
    assert [e["detail"] for e in blocked] == ["%s; policy for blocked: stop" % PLAIN_PTL]
    # history's table names the reason too
    out = project.ok("history", "--session", "blk", "e2e-s1").stdout
    assert "PENDING_REASON" in out and "PartitionTimeLimit (the job's --time" in out


@pytest.mark.parametrize("version, reason, shown", [
    ("22.05", "Priority", "PENDING: Priority (jobs of higher priority are ahead of it)"),
    ("24.11", "Resources", "PENDING: Resources (it waits for nodes to become free)"),
    ("24.11", "ReqNodeNotAvail", "PENDING: ReqNodeNotAvail, UnavailableNodes:fake0 (nodes it needs are down, "
                                 "drained or reserved)"),
    ("22.05", "ReqNodeNotAvail", "PENDING: ReqNodeNotAvail, UnavailableNodes:fake0 (nodes it needs are down, "
                                 "drained or reserved)"),
])
def test_a_waiting_reason_is_shown_and_never_blocks(project, fake, version, reason, shown):
    fake.configure(version=version)
    fake.add_pending("e2e-s1", reason)
    submit(project, sweep_config(seeds=(1,)), "wait")
    for _ in range(3):
        project.ok("monitor", "--session", "wait", "--once")
    job = jobs_of(project.status("wait"))["e2e-s1"]
    assert job["status"] == "active" and job["live"] and job["slurm_state"] == "PENDING"
    assert job["pending_reason"] == shown[len("PENDING: "):]
    assert shown in project.ok("status", "--session", "wait").stdout
    assert not fake.calls("scancel")
    fake.unpend(fake.submissions("e2e-s1")[0]["job_id"])
    project.ok("monitor", "--session", "wait", "--interval", "0.2")
    attempt = project.history("wait", "e2e-s1")["jobs"][0]["attempts"][0]
    assert attempt["outcome"] == "success" and attempt["slurm_state"] == "COMPLETED"
    assert attempt["pending_reason"] == shown[len("PENDING: "):]  # the last one seen, kept after the start
    assert not events_of(project, "wait", "e2e-s1", "blocked")


def test_pending_too_long_is_an_event_only_by_default(project, fake):
    fake.add_pending("e2e-s1", "Priority")
    submit(project, sweep_config(seeds=(1,), max_pending_seconds=1), "ptl")
    project.ok("monitor", "--session", "ptl", "--once")
    assert not events_of(project, "ptl", "e2e-s1", "pending_too_long")
    time.sleep(1.2)
    for _ in range(3):  # said once per attempt, not once per cycle
        project.ok("monitor", "--session", "ptl", "--once")
    said = events_of(project, "ptl", "e2e-s1", "pending_too_long")
    assert len(said) == 1
    assert said[0]["detail"].startswith("PENDING for ")
    assert said[0]["detail"].endswith("s (max_pending_seconds 1); SLURM's reason: Priority (jobs of higher priority "
                                      "are ahead of it); policy for pending_too_long: ignore (it keeps waiting)")
    job = jobs_of(project.status("ptl"))["e2e-s1"]
    assert job["status"] == "active" and job["live"] and job["slurm_state"] == "PENDING"
    assert not fake.calls("scancel") and len(fake.submissions()) == 1
    fake.unpend(fake.submissions("e2e-s1")[0]["job_id"])
    project.ok("monitor", "--session", "ptl", "--interval", "0.2")
    hist = project.history("ptl", "e2e-s1")["jobs"][0]
    assert hist["status"] == "finalized" and [a["outcome"] for a in hist["attempts"]] == ["success"]


@pytest.mark.parametrize("version", VERSIONS)
def test_pending_too_long_with_restart_cancels_then_submits_the_next_attempt(project, fake, version):
    fake.configure(version=version)
    fake.add_pending("e2e-s1", "Resources")
    cfg = sweep_config(seeds=(1,), max_pending_seconds=1)
    cfg["restart"]["pending_too_long"] = {"action": "restart", "max_attempts": 2}
    submit(project, cfg, "ptr")
    project.ok("monitor", "--session", "ptr", "--once")
    fake.clear_pending()  # the next submission is free to run
    time.sleep(1.2)
    project.ok("monitor", "--session", "ptr", "--interval", "0.2")
    hist = project.history("ptr", "e2e-s1")["jobs"][0]
    assert hist["status"] == "finalized"
    assert [a["outcome"] for a in hist["attempts"]] == ["pending_too_long", "success"]
    first, second = fake.submissions("e2e-s1")
    assert first["state"] == "CANCELLED" and first["runs"] == 0 and second["state"] == "COMPLETED"
    # never two live attempts: the next sbatch only after SLURM showed the first one ended
    cancel = [c for c in fake.calls("scancel") if c["argv"] == [first["job_id"]]]
    sbatch = [c for c in fake.calls("sbatch") if c.get("job_id") == second["job_id"]]
    assert cancel and sbatch and cancel[0]["end"] <= sbatch[0]["start"]
    assert first["end_time"] <= second["submit_time"]
    kinds = [e["event"] for e in events_of(project, "ptr", "e2e-s1") if e["event"] != "state"]
    at = kinds.index("pending_too_long")
    assert kinds[at:at + 5] == ["pending_too_long", "outcome", "restart_scheduled", "cancel_requested", "scancel"]


def test_an_unknown_squeue_never_decides(project, fake):
    fake.add_pending("e2e-s1", "PartitionTimeLimit")
    submit(project, sweep_config(seeds=(1,), max_pending_seconds=1), "unk")
    project.ok("monitor", "--session", "unk", "--once")  # one answered look: not yet blocked
    time.sleep(1.2)  # and past max_pending_seconds
    before = helpers.state_bytes(project.state_dir, "unk")
    fake.fail_next("squeue", count=1)
    res = project.cli("monitor", "--session", "unk", "--once")
    assert res.returncode == 1 and "SLURM did not answer" in res.stderr
    assert helpers.state_bytes(project.state_dir, "unk") == before
    assert not fake.calls("scancel")
    fake.fail_next("squeue", count=1, mode="garbled")
    assert project.cli("monitor", "--session", "unk", "--once").returncode == 1
    assert helpers.state_bytes(project.state_dir, "unk") == before
    job = jobs_of(project.status("unk"))["e2e-s1"]
    assert job["status"] == "active" and job["live"]
    # the next answered look is the second in a row: blocked (before pending_too_long: it says more)
    project.ok("monitor", "--session", "unk", "--once")
    job = jobs_of(project.status("unk"))["e2e-s1"]
    assert job["status"] == "stopped" and job["reason"] == "policy for blocked: stop (%s)" % PLAIN_PTL
    assert not events_of(project, "unk", "e2e-s1", "pending_too_long")
    assert [c["argv"] for c in fake.calls("scancel")] == [[fake.submissions("e2e-s1")[0]["job_id"]]]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_fake_keeps_a_job_pending_with_slurms_reason_text(fake, version):
    """squeue's %r prints slurmctld's description (state_desc) when a job has one, in 22.05
    and 24.11 alike (src/squeue/print.c _print_job_reason); %R wraps it in parentheses, and
    scontrol's Reason= shows its blanks as '_' (src/api/job_info.c)."""
    fake.configure(version=version)
    fake.add_pending("stuck", "ReqNodeNotAvail")
    fake.add_pending("limit", "QOSMaxWallDurationPerJobLimit")
    out = os.path.join(fake.dir, "%j.out")
    ids = [fake.run("sbatch", "--parsable", "-J", n, "-o", out, "--wrap", "true")[1].strip()
           for n in ("stuck", "limit", "free")]
    fake.wait(lambda jobs: [j["state"] for j in jobs] == ["PENDING", "PENDING", "COMPLETED"], timeout=10)
    out = fake.run("squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%R")[1]
    assert "%s|PENDING|ReqNodeNotAvail, UnavailableNodes:fake0|(ReqNodeNotAvail, UnavailableNodes:fake0)" % ids[0] \
        in out.splitlines()
    assert "%s|PENDING|QOSMaxWallDurationPerJobLimit|(QOSMaxWallDurationPerJobLimit)" % ids[1] in out.splitlines()
    assert "Reason=ReqNodeNotAvail,_UnavailableNodes:fake0 " in fake.run("scontrol", "show", "job", ids[0])[1]
    rows = helpers.autoexp.parse_squeue(fake.run("squeue", "-h", "-t", "all", "-o", helpers.autoexp.SQUEUE_FORMAT)[1])
    assert dict((r.job_id, r.reason) for r in rows)[ids[0]] == "ReqNodeNotAvail, UnavailableNodes:fake0"
    fake.unpend(ids[0])
    fake.wait(lambda jobs: jobs[0]["state"] == "COMPLETED", timeout=10)
    assert fake.jobs()[1]["state"] == "PENDING"


def test_a_session_written_before_these_keys_gets_their_defaults():
    """A session's config is stored whole when it is made: one an older autoexp wrote has no
    max_pending_seconds and no policy for the pending modes, and must still load."""
    old_mon = dict((k.name, k.default) for k in helpers.autoexp.MONITORING_SCHEMA if k.name != "max_pending_seconds")
    assert helpers.autoexp.make_monitoring(old_mon).max_pending_seconds is None
    old_restart = dict((m, p) for m, p in helpers.autoexp.DEFAULT_POLICIES.items() if m not in ("blocked",
                                                                                                 "pending_too_long"))
    pols = helpers.autoexp.make_policies(old_restart)
    assert (pols["blocked"].action, pols["pending_too_long"].action) == ("stop", "ignore")

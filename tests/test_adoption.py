"""Which SLURM job belongs to which attempt, in the controller with a fake clock and a
scripted SLURM: jobs are adopted by their tag (plan and job name in the comment), never by
name alone nor from another session; a copy started by hand is followed rather than doubled,
a dead duplicate never replaces the real attempt, a requeue under the same id is no failure
(also during a restart's backoff, or of an attempt that had ended), and a session rebuilt
after its state file was lost follows what SLURM still knows."""

import os
import pytest

from helpers import A, B, Harness, autoexp, controller_config as config, finish, live, read_events

pytestmark = pytest.mark.timeout(30)


def test_external_resubmission_is_adopted_not_restarted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    old = h.live_id(A)
    h.slurm.set(old, "CANCELLED")
    new = h.slurm.add(A, "autoexp:p1:" + A, "PENDING")
    h.cycle()
    job = h.job(A)
    assert [a.job_id for a in job.attempts] == [old, new]
    assert job.attempts[0].outcome == "replaced" and job.current.origin == "external"
    assert job.attempts[0].last_slurm_state == "CANCELLED"   # kept for history
    assert h.slurm.count("sbatch") == 1 and job.status == "active"


def test_other_sessions_jobs_are_never_adopted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "CANCELLED")
    h.slurm.add(A, "autoexp:other-plan:" + A, "RUNNING")
    h.cycle()
    job = h.job(A)
    assert job.status == "stopped" and len(job.attempts) == 1  # default policy for cancelled


def test_another_plans_job_without_a_comment_in_sacct_is_not_adopted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["error"]
    h.cycle()
    assert h.job(A).current.job_id is None
    other = h.slurm.add(A, "autoexp:p2:" + A, "COMPLETED")
    h.slurm.purge(other)
    orig = h.slurm._acct_row
    h.slurm._acct_row = lambda j, d: orig(j, d)._replace(comment="")  # no job_comment flag
    h.log(A, "TRAINING FINISHED\n", job_id=other)
    h.cycle(advance=100)
    job = h.job(A)
    assert other not in [a.job_id for a in job.attempts] and h.slurm.count("sbatch") == 3


def test_a_copy_started_by_hand_during_the_backoff_is_followed_not_doubled(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()
    hand = h.slurm.add(A, "autoexp:p1:" + A, "RUNNING")
    h.cycle(advance=50)
    h.cycle(advance=60)
    assert live(h) == [hand] and h.slurm.count("sbatch") == 1
    assert h.job(A).current.job_id == hand and h.job(A).current.origin == "external"


def test_a_dead_duplicate_does_not_replace_the_real_attempt(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    dup = h.slurm.add(A, "autoexp:p1:" + A, "PENDING")
    h.cycle()
    assert [l for l in h.out if "also carries its tag" in l]
    h.slurm.set(dup, "CANCELLED")   # the user cancels the duplicate, as the warning suggests
    h.cycle()
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.set(jid, "COMPLETED")
    h.cycle()
    h.cycle()
    job = h.job(A)
    assert job.status == "finalized" and [a.job_id for a in job.attempts] == [jid]


def test_an_intent_never_recovers_an_older_dead_copy(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    copy = h.slurm.add(A, "autoexp:p1:" + A, "PENDING")   # a copy started by hand
    h.cycle()
    h.slurm.set(copy, "CANCELLED")                        # ...removed by the user
    h.cycle()
    h.slurm.set(first, "TIMEOUT")
    h.slurm.sbatch_mode = ["error"]   # the restart's sbatch fails; nothing queued
    h.cycle()
    h.cycle(advance=100)
    h.cycle(advance=100)
    job = h.job(A)
    assert copy not in [a.job_id for a in job.attempts]
    assert job.status == "active" and h.slurm.count("sbatch") == 3 and job.current.job_id


def test_requeue_under_same_id_is_not_a_failure(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.set(jid, "PENDING")
    h.cycle()
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    att = h.job(A).current
    assert att.requeues == 1 and att.outcome is None and len(h.job(A).attempts) == 1
    assert h.slurm.count("sbatch") == 1
    finish(h, A)
    h.cycle()
    assert h.job(A).status == "finalized"


def test_an_ended_attempt_requeued_by_hand_is_noticed(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "TIMEOUT")
    h.cycle()
    h.cycle()   # the restart's sacct record, then its own observation
    h.slurm.set(first, "PENDING")           # scontrol requeue of the ended job
    h.cycle()
    assert [l for l in h.out if "also carries its tag" in l and first in l]


def test_an_attempt_requeued_during_its_restart_backoff_is_followed_not_doubled(tmp_path):
    cfg = config()
    cfg["restart"]["timeout"] = {"action": "restart", "max_attempts": 5, "backoff_seconds": 120}
    h = Harness(tmp_path, cfg, names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.set(jid, "TIMEOUT")
    h.cycle()
    assert h.job(A).next_submit_at is not None          # the restart waits for its backoff
    h.slurm.set(jid, "RUNNING")                          # scontrol requeue: the same id runs again
    h.cycle(advance=60)
    h.cycle(advance=120)                                 # past the backoff
    job = h.job(A)
    assert h.slurm.count("sbatch") == 1, "a second copy was submitted"
    assert [a.job_id for a in job.attempts] == [jid, jid] and job.current.live
    assert [a.outcome for a in job.attempts] == ["timeout", None]
    assert not [l for l in h.out if "also carries its tag" in l]
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.set(jid, "COMPLETED")
    h.cycle()
    h.cycle()
    assert h.job(A).status == "finalized" and h.slurm.count("sbatch") == 1


def test_a_rebuild_follows_a_job_that_ended_long_before_it(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.set(jid, "COMPLETED")
    h.slurm.purge(jid)                                  # long gone from squeue
    h.clock.now += 3 * 3600                             # the state file is lost meanwhile
    os.rename(h.session.path, h.session.path + ".lost")
    s = h.store.create_session(h.plan, h.clock())
    s.plan = h.plan
    autoexp.register_untracked(h.ctl, s, h.clock())     # what --monitor-all does
    for _ in range(3):
        h.clock.now += 600
        h.ctl.cycle([s])
    (att,) = s.job(A).attempts
    assert att.job_id == jid and att.origin == "external" and att.outcome == "success"
    assert not att.live and att.last_slurm_state == "COMPLETED" and s.job(A).job_id is None  # sacct told
    assert s.job(A).status == "finalized"
    assert [c[1] for c in h.slurm.calls if c[0] == "sbatch"].count(h.plan.by_name[A].script_path) == 1
    # the rebuilt session's events continue the journal: none dropped, none numbered twice
    events = read_events(h.state_dir, "p1")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    rebuilt = [e["event"] for e in events if e["job"] == A and e["event"] not in ("state", "log:success")]
    assert rebuilt[-3:] == ["adopted", "outcome", "finalized"], rebuilt


def test_a_tagged_job_in_an_unknown_state_holds_the_restart(tmp_path):
    """Found by the simulator (F7): SLURM requeued an attempt that had ended, and squeue
    shows it in a state word autoexp does not know: it may run, so no restart is submitted
    beside it until SLURM says what it is."""
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()                                   # restart in 100 s (node_fail's backoff)
    h.slurm.set(jid, "EXPEDITING")              # requeued, in a state of a newer SLURM
    h.cycle(advance=200)
    assert h.slurm.count("sbatch") == 1
    h.slurm.set(jid, "RUNNING")                 # then a state it knows: followed, not doubled
    h.cycle()
    assert h.slurm.count("sbatch") == 1 and h.job(A).current.job_id == jid and h.job(A).current.live


def test_an_ended_attempt_rerun_by_slurm_and_finished_is_decided_not_run_again(tmp_path):
    """Found by the simulator (F8): after autoexp recorded a NODE_FAIL, SLURM requeued the
    job, which ran and completed before autoexp looked again: its success was ignored and
    the job submitted again."""
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()                                   # restart scheduled in 100 s
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.set(jid, "COMPLETED")               # requeued, ran, completed within the backoff
    h.cycle(advance=30)
    h.cycle(advance=30)
    job = h.job(A)
    assert job.status == "finalized" and h.slurm.count("sbatch") == 1
    assert [a.outcome for a in job.attempts] == ["node_fail", "success"]


def test_a_rerun_that_finished_and_left_squeue_before_the_restart_is_decided_not_run_again(tmp_path):
    """Found by the simulator (F8, requeue_after_end seed 23): the rerun also left squeue
    before autoexp looked again; only sacct shows it (an end later than the one recorded).
    Before a restart is submitted sacct is asked; while it does not answer, nothing is."""
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()                                   # restart scheduled in 100 s
    assert h.job(A).current.outcome == "node_fail"
    h.clock.sleep(50)
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.set(jid, "COMPLETED")               # requeued, ran, completed within the backoff
    h.slurm.purge(jid)                          # and left squeue (MinJobAge)
    h.slurm.fail["sacct"] = 1
    h.cycle(advance=100)                        # the restart is due, sacct cannot tell: it waits
    assert h.slurm.count("sbatch") == 1 and h.job(A).status == "active"
    h.cycle(advance=30)                         # sacct shows the rerun: adopted, not submitted again
    assert [(a.job_id, a.origin, a.live) for a in h.job(A).attempts] == [(jid, "submitted", False),
                                                                         (jid, "external", True)]
    h.cycle(advance=30)                         # and decided like any attempt
    job = h.job(A)
    assert job.status == "finalized" and h.slurm.count("sbatch") == 1
    assert [a.outcome for a in job.attempts] == ["node_fail", "success"]


def test_a_rerun_that_left_squeue_and_accounting_still_calls_running_is_followed_not_run_beside(tmp_path):
    """Outside review: the restart was due while sacct still said RUNNING for the rerun
    (a later start than the one recorded; its end not stored yet): autoexp submitted
    beside it, and the rerun's success was never recorded."""
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()                                   # restart scheduled in 100 s
    h.clock.sleep(50)
    h.slurm.set(jid, "RUNNING")                 # requeued and run again,
    h.slurm.jobs[jid]["start"] = h.clock()
    h.slurm.purge(jid)                          # gone from squeue, accounting lags: RUNNING
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.cycle(advance=60)
    assert h.slurm.count("sbatch") == 1
    h.slurm.set(jid, "COMPLETED")               # accounting catches up
    for _ in range(3):
        h.cycle(advance=30)
    job = h.job(A)
    assert h.slurm.count("sbatch") == 1 and job.status == "finalized"
    assert [(a.job_id, a.outcome) for a in job.attempts] == [(jid, "node_fail"), (jid, "success")]


def test_a_rerun_appending_to_its_log_does_not_inherit_the_run_befores_lines(tmp_path):
    """Outside review: a rerun under the same id followed as the next attempt read the
    shared %j log (--open-mode=append) from its start, took the run before's NCCL line for
    its own, and the healthy rerun was cancelled."""
    cfg = config(log_events=[{"name": "nccl", "pattern": "NCCL error", "mode": "nccl"}])
    cfg["restart"]["nccl"] = {"action": "restart", "max_attempts": 3, "backoff_seconds": 120}
    h = Harness(tmp_path, cfg, names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    path = h.log(A, "step\n" * 10, job_id=jid)
    h.cycle()
    with open(path, "a") as f:
        f.write("NCCL error: remote peer closed\n")
    h.slurm.set(jid, "NODE_FAIL")
    h.cycle()
    h.clock.now += 30
    h.slurm.set(jid, "RUNNING")                 # requeued by SLURM, appending to its log
    h.slurm.jobs[jid]["start"] = h.clock()
    with open(path, "a") as f:
        f.write("rerun: healthy step\n")
    for _ in range(4):
        h.cycle(advance=30)
    att = h.job(A).attempts[-1]
    assert len(h.job(A).attempts) == 2 and att.job_id == jid and att.origin == "external"
    assert att.live and att.outcome is None and not att.log_matches and ("scancel", jid) not in h.slurm.calls


def test_a_runaway_accounting_record_is_lost_after_hours_not_never(tmp_path):
    """Found by the simulator (F9): slurmctld lost a running job while accounting keeps it
    RUNNING for ever; the job waited as "missing" for ever and the sweep never ended."""
    h = Harness(tmp_path, config(lost_after_seconds=60), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.purge(jid)                          # gone from squeue; sacct: RUNNING, for ever
    h.cycle(advance=3600)
    assert h.job(A).current.outcome is None     # accounting may lag: not lost after an hour
    h.cycle(advance=3 * 3600)
    assert h.job(A).attempts[0].outcome == "lost" and "runaway" in h.job(A).attempts[0].reason


# --- resubmitted by hand without the tag (same name, user and working directory) ------

def _stopped(h):
    """The job's attempt is cancelled outside autoexp: the default policy stops it."""
    jid = h.live_id(A)
    h.slurm.set(jid, "CANCELLED")
    h.cycle()
    assert h.job(A).status == "stopped"
    return jid


def test_a_stopped_job_resubmitted_by_hand_without_its_tag_is_reactivated(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    old = _stopped(h)
    h.clock.now += 30
    new = h.slurm.add(A, "", "RUNNING", workdir=h.workdir)
    h.cycle()
    job = h.job(A)
    assert job.status == "active" and [a.job_id for a in job.attempts] == [old, new]
    assert job.current.origin == "external" and h.slurm.count("sbatch") == 1
    ev = [e for e in read_events(h.state_dir, "p1") if e["event"] == "reactivated"]
    assert len(ev) == 1 and "resubmitted by hand" in ev[0]["detail"]
    finish(h, A)
    h.cycle()
    assert h.job(A).status == "finalized"


def test_two_hand_resubmissions_adopt_none_and_are_said_once(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    _stopped(h)
    h.clock.now += 30
    one = h.slurm.add(A, "", "PENDING", workdir=h.workdir)
    two = h.slurm.add(A, "", "PENDING", workdir=h.workdir)
    for _ in range(3):
        h.cycle()
    job = h.job(A)
    assert job.status == "stopped" and len(job.attempts) == 1
    said = [l for l in h.out if "cannot tell which" in l]
    assert len(said) == 1 and one in said[0] and two in said[0]
    assert [e["event"] for e in read_events(h.state_dir, "p1")].count("resubmits_ambiguous") == 1
    h.slurm.set(two, "CANCELLED")  # the user removes one: the other is the job's now
    h.cycle()
    assert h.job(A).status == "active" and h.job(A).current.job_id == one


@pytest.mark.parametrize("kw", [{"workdir": "/somewhere/else"}, {"user": "someone-else"}, {"before": True}])
def test_an_unrelated_job_of_the_same_name_is_not_adopted(tmp_path, kw):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    if kw.pop("before", False):
        other = h.slurm.add(A, "", "PENDING", workdir=h.workdir)  # submitted while the attempt still ran
        h.clock.now += 10
    h.slurm.set(jid, "CANCELLED")
    h.cycle()
    assert h.job(A).status == "stopped"
    if kw:
        h.clock.now += 30
        other = h.slurm.add(A, "", "PENDING", workdir=kw.get("workdir", h.workdir), user=kw.get("user"))
    h.cycle()
    h.slurm.set(other, "RUNNING")
    h.cycle()
    job = h.job(A)
    assert job.status == "stopped" and [a.job_id for a in job.attempts] == [jid]
    assert not [l for l in h.out if "cannot tell which" in l]


def test_a_hand_resubmission_during_the_backoff_is_followed_not_doubled(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "NODE_FAIL")   # restarted after a 100 s backoff
    h.cycle()
    h.clock.now += 20
    hand = h.slurm.add(A, "", "RUNNING", workdir=h.workdir)
    h.cycle(advance=50)
    h.cycle(advance=60)
    assert live(h) == [hand] and h.slurm.count("sbatch") == 1
    assert h.job(A).current.job_id == hand and h.job(A).current.origin == "external"


def test_a_job_cancelled_with_autoexp_neither_adopts_nor_cancels_a_job_of_its_name(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.ctl.cancel_jobs(h.session, [A], h.clock(), autoexp.Todo())
    h.slurm.set(jid, "CANCELLED")
    h.cycle()
    h.clock.now += 30
    hand = h.slurm.add(A, "", "RUNNING", workdir=h.workdir)
    h.cycle()
    h.cycle()
    assert h.job(A).status == "cancelled" and hand not in [a.job_id for a in h.job(A).attempts]
    assert h.slurm.jobs[hand]["state"] == "RUNNING" and ("scancel", hand) not in h.slurm.calls


def test_a_job_resubmitted_by_hand_without_its_tag_holds_a_max_running_slot(tmp_path):
    # max_running counts from squeue by tag; an adopted untagged job is live all the same
    cfg = config(max_running=1)
    cfg["sweep"]["seed"] = [1, 2, 3]
    h = Harness(tmp_path, cfg)
    C = "demo-s3"
    old = _stopped(h)  # A's slot goes to B
    assert h.job(B).current is not None and h.job(C).current is None
    h.clock.now += 30
    new = h.slurm.add(A, "", "RUNNING", workdir=h.workdir)
    h.cycle()
    assert [a.job_id for a in h.job(A).attempts] == [old, new] and h.job(A).status == "active"
    finish(h, B)
    for _ in range(3):
        h.cycle()
    assert h.job(B).status == "finalized"
    assert h.job(C).current is None and h.slurm.count("sbatch") == 2  # A's hand job holds the slot
    assert h.job(C).last_monitor_state == autoexp.MON_WAITING
    finish(h, A)
    h.cycle()
    assert h.job(C).current is not None and h.slurm.count("sbatch") == 3

"""Getting each attempt into SLURM exactly once, in the controller with a fake clock and a
scripted SLURM: the intent written before sbatch and looked up after a crash, an sbatch that
failed yet queued the job (adopted, also when accounting lags or the retries are used up),
one that queued nothing (retried with backoff, then given up), a permanent refusal (the job
stops), a failed array task resubmitted alone, a job recovered after MaxJobId wrapped around
(by submit time, not id), and a job refused for a queue limit for days (still retried)."""

import pytest

from helpers import A, B, Harness, autoexp, controller_config as config, finish, live, timeout_stall_config

pytestmark = pytest.mark.timeout(30)


def test_intent_without_id_is_looked_up_before_resubmitting(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    # a crash between sbatch and the state write: SLURM has the job, the state only the intent
    att = h.job(A).current
    jid = att.job_id
    att.job_id, att.submit_state, att.live = None, "intent", False
    h.session.touch(h.job(A))  # changed by hand: the store writes only what was touched
    h.store.save(h.session, h.clock())
    h.cycle()
    assert h.job(A).current.job_id == jid and h.job(A).current.origin == "recovered"
    assert h.slurm.count("sbatch") == 1


def test_intent_not_in_slurm_is_submitted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    att = h.job(A).current
    h.slurm.forget(att.job_id)
    att.job_id, att.submit_state, att.live = None, "intent", False
    h.cycle()  # a crash left the intent: accounting may not show a job that ran at once yet
    assert h.slurm.count("sbatch") == 1
    h.cycle(advance=h.session.monitoring.unqueued_after)
    assert h.slurm.count("sbatch") == 2 and h.job(A).current.job_id is not None
    assert len(h.job(A).attempts) == 1


def test_recovered_intent_whose_job_already_ended_is_not_replaced_by_itself(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    att = h.job(A).current
    jid = att.job_id
    att.job_id, att.submit_state, att.live = None, "intent", False  # sbatch ran, the state missed it
    h.slurm.set(jid, "COMPLETED")
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.cycle()   # adopted; squeue says it ended, and sacct is asked how next cycle
    h.cycle()
    job = h.job(A)
    assert [a.job_id for a in job.attempts] == [jid] and job.current.origin == "recovered"
    assert job.status == "finalized" and job.current.outcome == "success"


def test_sbatch_timeout_that_queued_the_job_is_adopted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["queued_error"]
    h.cycle()
    att = h.job(A).current
    assert att.job_id is None and att.submit_state == "intent" and h.job(A).submit_failures == 1
    h.cycle(advance=100)  # past the retry backoff: the lookup finds the queued job first
    att = h.job(A).current
    assert att.job_id == h.slurm.by_name(A)[-1] and att.origin == "recovered"
    assert h.slurm.count("sbatch") == 2 and len(h.slurm.by_name(A)) == 2


def test_an_uncertain_submission_replaced_by_hand_is_recorded_then_its_replacement_followed(tmp_path):
    """Found by the simulator (F10, replace_in_doubt seed 8): the sbatch answered with an
    error but queued the job; before autoexp could look it up, the user cancelled it and
    submitted it again under its tag. The first job is the attempt's result (recorded,
    `replaced`), the hand-made one the next attempt; before the fix the replacement was
    taken for the submission and the cancelled job was missing from the history."""
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "TIMEOUT")
    h.slurm.sbatch_mode = ["queued_error"]
    h.cycle()
    assert h.job(A).current.in_doubt
    mine = h.slurm.by_name(A)[-1]                       # what the uncertain sbatch queued
    h.slurm.set(mine, "CANCELLED", "0:15")              # cancelled by hand,
    h.slurm.purge(mine)
    hand = h.slurm.add(A, h.job(A).current and autoexp.session_tag("p1", A), "RUNNING")  # and resubmitted
    h.cycle(advance=100)
    h.cycle()
    job = h.job(A)
    assert [(a.job_id, a.origin, a.outcome) for a in job.attempts] == [
        (first, "submitted", "timeout"), (mine, "recovered", "replaced"), (hand, "external", None)]
    assert job.current.live and h.slurm.count("sbatch") == 2


def test_a_queued_job_that_sbatch_called_failed_is_not_resubmitted_while_accounting_lags(tmp_path):
    h = Harness(tmp_path, config(submit_backoff_seconds=1), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["queued_error"]
    h.cycle()                                       # the restart: queued, yet reported failed
    (queued,) = [j for j in h.slurm.by_name(A) if j != h.job(A).attempts[0].job_id]
    h.log(A, "TRAINING FINISHED\n", job_id=queued)
    h.slurm.set(queued, "COMPLETED")                # it ran at once...
    h.slurm.purge(queued)                           # ...left squeue (a short MinJobAge)...
    h.slurm.jobs[queued]["in_sacct"] = False        # ...and accounting has not caught up
    for _ in range(3):
        h.cycle(advance=5)
    assert h.slurm.count("sbatch") == 2, "resubmitted while sacct lagged"
    h.slurm.jobs[queued]["in_sacct"] = True
    h.cycle(advance=5)
    h.cycle(advance=5)
    job = h.job(A)
    assert job.current.job_id == queued and job.current.origin == "recovered"
    assert job.status == "finalized" and h.slurm.count("sbatch") == 2


def test_sbatch_error_not_queued_retries_with_backoff(tmp_path):
    h = Harness(tmp_path, config(submit_backoff_seconds=30), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["error", "error"]
    h.cycle()
    h.cycle(advance=20)
    assert h.slurm.count("sbatch") == 2
    h.cycle(advance=20)
    assert h.slurm.count("sbatch") == 3
    h.cycle(advance=70)
    assert h.slurm.count("sbatch") == 4 and h.job(A).current.job_id


def test_retries_used_up_yet_queued_is_followed(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(submit_retries=1, submit_backoff_seconds=10), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["error", "queued_error"]
    h.cycle(advance=20)   # the error: retried after the backoff (at least 30 s: sacct's lag)
    h.cycle(advance=40)   # queued, yet reported failed: retries used up, the job stopped...
    assert h.job(A).status == "stopped" and h.session.active()  # ...but its last try is in doubt
    h.cycle(advance=20)   # found by its tag: followed
    job = h.job(A)
    assert job.status == "active" and job.current.origin == "recovered" and job.current.job_id in live(h)
    assert h.slurm.count("sbatch") == 3


def test_retries_used_up_and_nothing_queued_ends(tmp_path):
    h = Harness(tmp_path, config(submit_retries=1, submit_backoff_seconds=10), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["error", "error"]
    assert h.ctl.run([h.session]) == autoexp.EXIT_OK
    job = h.job(A)
    assert job.status == "stopped" and job.current.submit_state == "abandoned" and not h.session.active()


def test_permanent_sbatch_error_stops_the_job(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["permanent"]
    h.cycle()
    job = h.reload().job(A)
    assert job.status == "stopped" and "Invalid partition" in job.reason
    assert job.current.submit_state == "failed"
    for _ in range(3):
        h.cycle()
    assert h.slurm.count("sbatch") == 2


def test_array_task_failure_resubmits_only_that_task(tmp_path):
    h = Harness(tmp_path, config(), array=True)
    ids = [h.live_id(A), h.live_id(B)]
    assert ids == ["101_0", "101_1"]
    sbatch = [c for c in h.slurm.calls if c[0] == "sbatch"]
    owned = tuple(h.plan.array.sbatch_args)
    assert sbatch == [("sbatch", h.plan.array.script_path, owned + ("--array=0,1",))]
    assert "--comment=autoexp:p1:@array" in owned
    h.slurm.set("101_1", "FAILED", "1:0")
    h.cycle()
    assert h.slurm.calls[-1] == ("sbatch", h.plan.array.script_path, owned + ("--array=1",))
    assert h.live_id(B) == "102_1" and h.job(B).current.array_task == 1
    assert h.live_id(A) == "101_0"


def test_a_crash_left_intent_waits_for_a_job_accounting_has_not_tagged(tmp_path):
    """Found by the simulator (F3): a crash between sbatch and the state write; the job ran,
    ended and left squeue before sacct had its end (and so its tag). It was submitted again
    at once; now autoexp waits for accounting, then follows the job it finds."""
    h = Harness(tmp_path, config(), names=[A])
    att = h.job(A).current
    jid = att.job_id
    att.job_id, att.submit_state, att.live = None, "intent", False
    h.session.touch(h.job(A))
    h.slurm.set(jid, "RUNNING")
    h.slurm.purge(jid)                       # gone from squeue (MinJobAge), sacct still says RUNNING
    h.slurm.jobs[jid]["comment"] = ""        # ... and shows no comment until it ends
    for _ in range(6):
        h.cycle(advance=30)
        assert h.slurm.count("sbatch") == 1
    h.log(A, "TRAINING FINISHED\n", job_id=jid)
    h.slurm.jobs[jid]["comment"] = "autoexp:p1:%s" % A
    h.slurm.set(jid, "COMPLETED")            # accounting has its end, and its tag
    h.cycle(advance=30)
    assert h.job(A).current.job_id == jid and h.job(A).current.origin == "recovered"
    assert h.job(A).status == "finalized" and h.slurm.count("sbatch") == 1


def test_recovery_follows_submit_times_not_ids_after_maxjobid_wrapped(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    first = h.live_id(A)
    h.slurm.jobs[first]["submit"] = autoexp.local_time(h.clock() - 86400)  # submitted a day ago, with a high id
    h.cycle()
    h.slurm.set(first, "TIMEOUT")
    h.slurm.next_id = 4  # MaxJobId reached: SLURM starts again from small ids
    h.slurm.sbatch_mode = ["queued_error"]  # the restart's sbatch queues the job, then errors
    h.cycle()
    restarted = [j for j in h.slurm.jobs if j != first]
    assert len(restarted) == 1 and int(restarted[0]) < int(first)
    for _ in range(4):
        h.cycle(advance=40)
    att = h.job(A).current
    assert att.job_id == restarted[0] and att.origin == "recovered"
    assert h.slurm.count("sbatch") == 2  # never a duplicate


def test_a_thousand_queue_limit_refusals_never_overflow(tmp_path):
    # a job refused for a queue limit a thousand times is still retried
    h = Harness(tmp_path, timeout_stall_config(submit_backoff_seconds=1), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    job = h.job(A)
    job.submit_refusals = 1100  # as after days of refusals
    h.slurm.sbatch = lambda script, args=(), env=None: autoexp.SubmitResult(autoexp.SB_THROTTLED, None,
                                                                  "QOSMaxSubmitJobPerUserLimit")
    h.cycle()
    h.cycle(advance=5)
    assert job.submit_refusals >= 1101 and job.submit_failures == 0 and job.status == "active"
    assert job.next_submit_at - h.clock() <= autoexp.THROTTLE_BACKOFF_MAX


def test_jobs_waiting_for_a_slot_cost_no_sacct_lookup(tmp_path):
    """max_running: only the jobs that can get a slot this cycle are looked up by name before
    their submission; the others wait without one (a sweep of thousands waiting for a few
    slots must not send thousands of names to sacct every cycle)."""
    cfg = config(max_running=2)
    cfg["sweep"] = {"seed": list(range(1, 9))}
    h = Harness(tmp_path, cfg)
    # (the plan's array name p1 is asked with them: the job may have run as its task)
    names = lambda: [tuple(n for n in c[1] if n != "p1") for c in h.slurm.calls if c[0] == "sacct" and len(c) > 1]
    assert names() == [("demo-s1", "demo-s2")]  # submit's cycle: two slots, two lookups
    assert sorted(j.name for j in h.session.jobs if j.current) == ["demo-s1", "demo-s2"]
    waiting = [j.name for j in h.session.jobs if j.last_monitor_state == autoexp.MON_WAITING]
    assert waiting == ["demo-s%d" % i for i in range(3, 9)]
    before = len(names())
    h.cycle()
    h.cycle()
    assert len(names()) == before  # both slots taken: nobody is looked up
    finish(h, "demo-s1")
    h.cycle()  # s1 ends: its own record and one slot: s3 is looked up, submitted
    asked = names()[before:]
    assert [n for n in sorted(set(sum(asked, ()))) if n != "demo-s1"] == ["demo-s3"]
    assert h.job("demo-s3").current is not None and h.job("demo-s4").current is None
    assert h.job("demo-s4").last_monitor_state == autoexp.MON_WAITING
    assert h.slurm.count("sbatch") == 3

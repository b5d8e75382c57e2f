"""scancel, in the controller with a fake clock and a scripted SLURM: a failed scancel is
asked again each cycle and the monitor waits for the job to end (a stopped job, a stall's
restart, a user's cancel), a cancel during a submission in doubt cancels the straggler it
queued (also from cron's reconcile), every attempt still live is cancelled, and a queued
cancel request (from `autoexp cancel` while a monitor runs) sends one scancel."""

import os
import pytest

from helpers import A, Harness, autoexp, controller_config as config, live, read_events, run_main

pytestmark = pytest.mark.timeout(30)


def stop_on_oom():
    cfg = config()
    cfg["monitoring"]["log_events"] = [{"name": "cuda_oom", "pattern": "CUDA out of memory", "mode": "oom"}]
    cfg["restart"]["oom"] = {"action": "stop"}
    return cfg


def test_failed_scancel_of_a_stopped_job_is_retried_and_the_monitor_waits_for_it(tmp_path):
    h = Harness(tmp_path, stop_on_oom(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.log(A, "CUDA out of memory\n")
    h.slurm.fail["scancel"] = 2
    h.cycle()
    assert h.job(A).status == "stopped" and h.job(A).current.cancel_result["ok"] is False
    assert h.job(A).job_id == jid  # still live: history marks it
    assert h.ctl.run([h.session]) == autoexp.EXIT_OK
    assert h.slurm.count("scancel") == 3 and h.slurm.jobs[jid]["state"] == "CANCELLED"
    assert h.job(A).job_id is None


def test_stall_restart_waits_while_scancel_cannot_reach_slurm(tmp_path):
    h = Harness(tmp_path, config(inactivity_threshold_seconds=30), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.slurm.fail["scancel"] = 4
    h.cycle(advance=40)
    att = h.job(A).current
    assert att.outcome == "stall" and att.cancel_result["ok"] is False
    for _ in range(3):
        h.cycle()
    assert h.slurm.count("sbatch") == 1  # never two live attempts
    assert h.slurm.count("scancel") == 4  # a failed scancel is asked again each cycle
    h.cycle()   # this scancel reaches SLURM
    assert h.slurm.count("sbatch") == 1
    h.cycle()   # the old job is seen ended: only now the restart
    assert h.slurm.jobs[first]["state"] == "CANCELLED" and h.slurm.count("sbatch") == 2
    h.cycle()
    assert h.slurm.count("scancel") == 5


def test_failed_scancel_after_a_user_cancel_is_retried(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.fail["scancel"] = 1
    todo = autoexp.Todo()
    h.ctl.cancel_jobs(h.session, [A], h.clock(), todo)
    h.ctl.commit(h.session, h.clock(), todo, True)
    assert h.ctl.run([h.session]) == autoexp.EXIT_OK
    assert h.slurm.jobs[jid]["state"] == "CANCELLED" and h.job(A).status == "cancelled"
    assert [e["event"] for e in read_events(h.state_dir, "p1")].count("outcome") == 1


def test_cancel_during_an_uncertain_submission_cancels_the_straggler(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["queued_error"]   # sbatch timed out, but SLURM queued the job
    h.cycle()
    assert h.job(A).current.job_id is None and len(live(h)) == 1
    todo = autoexp.Todo()
    h.ctl.cancel_jobs(h.session, [A], h.clock(), todo)
    h.ctl.commit(h.session, h.clock(), todo, True)
    assert h.ctl.run([h.session]) == autoexp.EXIT_OK
    assert live(h) == [] and h.slurm.count("scancel") == 1


def test_cancel_during_an_uncertain_submission_then_cron_cancels_the_straggler(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.sbatch_mode = ["queued_error"]
    h.cycle()
    assert h.job(A).current.job_id is None and len(live(h)) == 1
    code, _ = run_main(h, ["cancel", "--session", "p1", A], monkeypatch, capsys)
    assert code == 0
    for _ in range(2):
        h.clock.now += 300
        code, _ = run_main(h, ["reconcile"], monkeypatch, capsys)
        assert code == 0
    assert live(h) == [] and h.slurm.count("scancel") == 1
    assert not h.reload().active()


def test_a_cancel_of_an_earlier_attempt_is_seen_through(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    copy = h.slurm.add(A, "autoexp:p1:" + A, "RUNNING")
    h.cycle()
    h.slurm.fail["scancel"] = 3
    todo = autoexp.Todo()
    h.ctl.cancel_jobs(h.session, [A], h.clock(), todo)
    h.ctl.commit(h.session, h.clock(), todo, True)
    assert h.ctl.run([h.session]) == autoexp.EXIT_OK
    assert live(h) == [] and not any(a.live for a in h.job(A).attempts)
    assert h.slurm.jobs[copy]["state"] == "CANCELLED"


def test_a_queued_cancel_request_sends_one_scancel(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    folder = h.store.requests_dir("p1")     # what `autoexp cancel` leaves while a monitor runs
    autoexp.make_private_dir(folder)
    autoexp.atomic_write(os.path.join(folder, "1-1.json"), autoexp.dump_json({"action": "cancel", "jobs": [A]}))
    h.cycle()
    assert h.slurm.count("scancel") == 1 and h.job(A).status == "cancelled"
    assert [e["event"] for e in read_events(h.state_dir, "p1")].count("scancel") == 1
    assert os.listdir(folder) == []

"""How a job's attempts end and what follows, in the controller with a fake clock and a
scripted SLURM: a sweep to success, restart policies per mode with their attempt budgets
(timeout, crash, a log event that stops, COMPLETED without the termination string), the
restart backoff, stall detection (cancel, then restart once the old job ended), and the
stop of a failure that repeats at startup (on SLURM's own run time)."""

import os
import pytest

from helpers import A, B, Harness, controller_config as config, finish, read_events

pytestmark = pytest.mark.timeout(30)


def test_sweep_to_success(tmp_path):
    h = Harness(tmp_path, config())
    assert [h.live_id(A), h.live_id(B)] == ["101", "102"]
    h.cycle()
    for n in (A, B):
        h.slurm.set(h.live_id(n), "RUNNING")
    h.cycle()
    finish(h, A)
    finish(h, B)
    h.cycle()
    s = h.reload()
    assert [j.status for j in s.jobs] == ["finalized", "finalized"]
    assert [len(j.attempts) for j in s.jobs] == [1, 1]
    assert s.jobs[0].attempts[0].outcome == "success"
    assert h.slurm.count("sbatch") == 2
    # the journal holds each event once, in order
    seqs = [e["seq"] for e in read_events(h.state_dir, "p1")]
    assert seqs == sorted(set(seqs)) and len(seqs) == s.event_seq


def test_timeout_twice_then_success_keeps_history(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    ids = []
    for _ in range(2):
        ids.append(h.live_id(A))
        h.slurm.set(h.live_id(A), "RUNNING")
        h.cycle()
        h.slurm.set(h.live_id(A), "TIMEOUT")
        h.cycle()   # decides: restart, submits at once (no backoff)
    ids.append(h.live_id(A))
    finish(h, A)
    h.cycle()
    job = h.reload().job(A)
    assert job.status == "finalized"
    assert [a.job_id for a in job.attempts] == ids and len(set(ids)) == 3
    assert [a.outcome for a in job.attempts] == ["timeout", "timeout", "success"]
    assert [os.path.basename(a.resolved_log_path) for a in job.attempts] == ["demo-s1-%s.log" % i for i in ids]
    assert all(a.resolved_log_path for a in job.attempts)


def test_crash_stops_at_max_attempts(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    for _ in range(2):
        h.slurm.set(h.live_id(A), "FAILED", "1:0")
        h.cycle()
    job = h.reload().job(A)
    assert job.status == "stopped" and len(job.attempts) == 2
    assert "2 of 2" in job.reason
    h.cycle()
    assert h.slurm.count("sbatch") == 2


def test_completed_without_termination_string_is_incomplete(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).attempts[0].outcome == "incomplete" and len(h.job(A).attempts) == 2


def test_log_event_stop_cancels_only_that_job(tmp_path):
    cfg = config()
    cfg["monitoring"]["log_events"] = [{"name": "cuda_oom", "pattern": "CUDA out of memory", "mode": "oom"}]
    cfg["restart"]["oom"] = {"action": "stop"}
    h = Harness(tmp_path, cfg)
    for n in (A, B):
        h.slurm.set(h.live_id(n), "RUNNING")
    h.cycle()
    h.log(A, "step 1\nRuntimeError: CUDA out of memory. Tried to allocate\n")
    h.cycle()
    s = h.reload()
    assert s.job(A).status == "stopped" and s.job(A).current.outcome == "oom"
    assert ("scancel", "101") in h.slurm.calls  # a stopped job does not keep its GPUs
    assert s.job(B).status == "active"
    finish(h, B)
    h.cycle()
    assert h.reload().job(B).status == "finalized"


def test_backoff_delays_the_restart(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "NODE_FAIL")
    h.cycle()
    assert h.slurm.count("sbatch") == 1
    assert h.job(A).next_submit_at == pytest.approx(h.clock.now + 100)
    h.cycle(advance=50)
    assert h.slurm.count("sbatch") == 1
    h.cycle(advance=60)
    assert h.slurm.count("sbatch") == 2 and len(h.job(A).attempts) == 2


def test_stall_cancels_then_restarts_after_the_old_job_ended(tmp_path):
    h = Harness(tmp_path, config(inactivity_threshold_seconds=100), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.log(A, "epoch 1\n")
    h.cycle(advance=50)
    h.cycle(advance=60)     # 60 s since the log grew: fine
    assert h.job(A).current.outcome is None
    h.cycle(advance=60)     # 120 s: stall
    assert h.job(A).current.outcome == "stall"
    assert ("scancel", first) in h.slurm.calls
    # scancel made it CANCELLED in the scripted SLURM; the next cycle sees it end and resubmits
    assert h.slurm.count("sbatch") == 1
    h.cycle()
    assert h.slurm.count("sbatch") == 2 and h.live_id(A) != first
    assert h.job(A).attempts[0].outcome == "stall"  # not re-labelled as cancelled


def test_a_failure_repeating_at_startup_stops_before_max_attempts(tmp_path):
    cfg = config()
    cfg["restart"]["crash"] = {"action": "restart", "max_attempts": 5}
    h = Harness(tmp_path, cfg, names=[A])
    for _ in range(2):
        h.slurm.set(h.live_id(A), "RUNNING")
        h.cycle()
        h.slurm.set(h.live_id(A), "FAILED", "2:0")
        h.cycle()
    job = h.reload().job(A)
    assert job.status == "stopped" and len(job.attempts) == 2 and "deterministic" in job.reason
    # the same crash after an hour of training is bad luck, not a broken job: restarted
    (tmp_path / "later").mkdir()
    h = Harness(tmp_path / "later", cfg, names=[A])
    for _ in range(2):
        h.slurm.set(h.live_id(A), "RUNNING")
        h.cycle()
        h.cycle(advance=3600)
        h.slurm.set(h.live_id(A), "FAILED", "2:0")
        h.cycle()
    assert h.job(A).status == "active" and len(h.job(A).attempts) == 3


def test_the_deterministic_rule_uses_slurms_own_run_time(tmp_path):
    cfg = config(interval_seconds=300)
    cfg["restart"]["crash"] = {"action": "restart", "max_attempts": 5}
    h = Harness(tmp_path, cfg, names=[A])
    for _ in range(2):
        h.cycle(advance=300)                        # a cron pass: PENDING
        h.slurm.set(h.live_id(A), "FAILED", "1:0")   # ran 4.5 minutes between two passes
        h.slurm.jobs[h.live_id(A)].update(start=h.clock() + 30, end=h.clock() + 300)
        h.cycle(advance=300)
        h.cycle(advance=1)
    assert h.job(A).status == "active" and len(h.job(A).attempts) == 3


def test_a_job_that_was_suspended_is_no_stall_when_it_runs_again(tmp_path):
    """Found by the simulator (F1): the time a job spent SUSPENDED counted as silence, so
    it was cancelled as a stall the moment it ran again."""
    h = Harness(tmp_path, config(inactivity_threshold_seconds=300), names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "step 1\n")
    h.cycle()
    h.slurm.set(h.live_id(A), "SUSPENDED")
    for _ in range(6):
        h.cycle(advance=600)  # an hour suspended (a higher-priority job ran)
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.cycle(advance=60)
    att = h.job(A).current
    assert att.outcome is None and ("scancel", att.job_id) not in h.slurm.calls
    h.cycle(advance=400)  # and silent for longer than the threshold after it: a stall
    assert h.job(A).attempts[0].outcome == "stall"

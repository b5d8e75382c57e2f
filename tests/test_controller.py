"""The controller in-process: a fake clock and a scripted SLURM, so every path (restart,
backoff, stall, lost, requeue, adoption, UNKNOWN, sbatch failures) is exact and fast."""

import json
import os

import pytest

from helpers import A, B, Harness, autoexp, controller_config as config, finish, read_events

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


def test_unknown_squeue_changes_nothing(tmp_path):
    h = Harness(tmp_path, config())
    h.slurm.set(h.live_id(A), "TIMEOUT")
    before = h.state_bytes()
    sacct_before = h.slurm.count("sacct")
    h.slurm.fail["squeue"] = 5
    for _ in range(5):
        assert h.cycle() is False
    assert h.state_bytes() == before
    assert h.slurm.count("sbatch") == 2 and h.slurm.count("sacct") == sacct_before
    warnings = [l for l in h.out if "SLURM did not answer" in l]
    assert len(warnings) == 1  # said once, not once per cycle
    assert h.cycle() is True
    assert h.slurm.count("sbatch") == 3  # the timeout is acted on once SLURM answers


def test_ten_minute_outage_takes_no_action(tmp_path):
    h = Harness(tmp_path, config(unknown_backoff_max_seconds=120))
    for n in (A, B):
        h.slurm.set(h.live_id(n), "RUNNING")
    h.cycle()
    h.slurm.fail["squeue"] = 10 ** 6
    for n in (A, B):
        h.slurm.set(h.live_id(n), "FAILED", "1:0")
    h.ctl.stop_requested = False
    start = h.clock.now
    calls = []
    orig = h.slurm.squeue

    def squeue():
        calls.append(h.clock.now)
        if h.clock.now - start > 600:
            h.ctl.stop_requested = True
        return orig()
    h.slurm.squeue = squeue
    code = h.ctl.run([h.session])
    assert code == autoexp.EXIT_INTERRUPTED
    assert h.slurm.count("sbatch") == 2 and h.slurm.count("scancel") == 0
    assert all(j.status == "active" for j in h.reload().jobs)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] == 20 and max(gaps) == 120  # backoff doubles, capped


def test_sacct_failure_is_unknown_for_missing_jobs(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.slurm.purge(h.live_id(A))
    h.slurm.fail["sacct"] = 3
    for _ in range(3):
        h.cycle(advance=100)
    att = h.job(A).current
    assert att.outcome is None and att.missing_since is None
    h.log(A, "TRAINING FINISHED\n")
    h.cycle()
    assert h.job(A).status == "finalized"


def test_finished_and_purged_is_read_from_sacct(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.slurm.purge(h.live_id(A))
    h.cycle()
    assert h.job(A).attempts[0].outcome == "timeout" and len(h.job(A).attempts) == 2


def test_lost_only_after_grace(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.forget(first)
    h.cycle()
    assert h.job(A).current.missing_since is not None and h.job(A).current.outcome is None
    h.cycle(advance=30)
    assert h.job(A).current.outcome is None
    h.cycle(advance=40)
    assert h.job(A).attempts[0].outcome == "lost"
    assert h.live_id(A) != first


def test_missing_with_termination_string_is_success(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.log(A, "TRAINING FINISHED\n")
    h.slurm.forget(h.live_id(A))
    h.cycle()
    assert h.job(A).status == "finalized"


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


def test_completed_without_termination_string_is_incomplete(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).attempts[0].outcome == "incomplete" and len(h.job(A).attempts) == 2


def test_intent_without_id_is_looked_up_before_resubmitting(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    # a crash between sbatch and the state write: SLURM has the job, the state only the intent
    att = h.job(A).current
    jid = att.job_id
    att.job_id, att.submit_state, att.live = None, "intent", False
    h.store.save(h.session, h.clock())
    h.cycle()
    assert h.job(A).current.job_id == jid and h.job(A).current.origin == "recovered"
    assert h.slurm.count("sbatch") == 1


def test_intent_not_in_slurm_is_submitted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    att = h.job(A).current
    h.slurm.forget(att.job_id)
    att.job_id, att.submit_state, att.live = None, "intent", False
    h.cycle()
    assert h.slurm.count("sbatch") == 2 and h.job(A).current.job_id is not None
    assert len(h.job(A).attempts) == 1


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


def test_monitor_state_file_is_versioned_and_sorted(tmp_path):
    h = Harness(tmp_path, config())
    text = h.state_bytes().decode()
    doc = json.loads(text)
    assert doc["schema_version"] == autoexp.STATE_SCHEMA_VERSION and text.endswith("}\n")
    assert list(doc) == sorted(doc)
    for key in ("session_id", "project", "manifest_path", "created_at", "updated_at", "config", "jobs"):
        assert key in doc
    job = doc["jobs"][0]
    for key in ("name", "status", "job_id", "attempts", "last_monitor_state", "last_slurm_state", "last_updated"):
        assert key in job
    for key in ("attempt", "job_id", "array_task", "submitted_at", "resolved_log_path", "log_offset",
                "last_slurm_state", "last_monitor_state", "outcome", "reason", "ended_at"):
        assert key in job["attempts"][0]


def test_refuses_newer_schema_and_corrupt_files(tmp_path):
    h = Harness(tmp_path, config())
    path = h.session.path
    doc = json.loads(h.state_bytes())
    doc["schema_version"] = 99
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(autoexp.StateError, match="newer"):
        h.store.load(path)
    for content in (b"", b"{\"kind\": \"autoexp-ses", b"[]"):
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(autoexp.StateError):
            h.store.load(path)
        with open(path, "rb") as f:
            assert f.read() == content


def test_action_payloads_are_written_once(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.cycle()
    folder = os.path.join(h.state_dir, "actions", "p1")
    files = sorted(os.listdir(folder))
    assert len(files) == 1 and files[0].endswith("_demo-s1_1_restart.json")
    with open(os.path.join(folder, files[0])) as f:
        payload = json.load(f)
    assert payload["action"] == "restart" and payload["mode"] == "timeout" and payload["job_id"] == "101"
    for key in ("job", "attempt", "event", "reason", "created_at"):
        assert key in payload
    # a second writer that reloads the session writes nothing again
    s = h.reload()
    h.store.save_and_sync(s, h.clock(), changed=False)
    assert sorted(os.listdir(folder)) == files
    assert len(read_events(h.state_dir, "p1")) == s.event_seq


def test_events_fire_once_across_a_reload(tmp_path):
    cfg = config()
    cfg["monitoring"]["log_events"] = [{"name": "warn", "pattern": "WARN", "mode": "note"}]
    cfg["restart"]["note"] = {"action": "ignore"}
    h = Harness(tmp_path, cfg, names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "WARN one\nWARN two\n")
    h.cycle()
    # a new controller on the reloaded state (a restarted monitor) sees nothing new
    h.session = h.reload()
    h.cycle()
    h.log(A, "WARN three\n")
    h.cycle()
    events = [e for e in read_events(h.state_dir, "p1") if e["event"] == "log:warn"]
    assert len(events) == 1 and h.job(A).status == "active"


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


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.cycle()
    stray = [os.path.join(h.state_dir, ".p1.json.99999.tmp"),
             os.path.join(h.state_dir, "actions", "p1", ".x.json.99999.tmp")]
    for path in stray:
        open(path, "w").close()
    lock = h.store.lock("p1", "test")
    try:
        assert not any(os.path.exists(p) for p in stray)
    finally:
        lock.release()


def test_last_event_is_what_autoexp_saw_or_did_not_a_state_change(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "TRAINING FINISHED\n")
    h.cycle()                                   # finalized from the log while still RUNNING
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    job = h.job(A)
    assert job.last_slurm_state == "COMPLETED" and job.last_event == "finalized"
    assert [e["event"] for e in read_events(h.state_dir, "p1")][-1] == "state"   # still journalled

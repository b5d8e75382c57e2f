"""Sequences an independent review found to break a safety rule (each demonstrated on an
earlier version), and real-SLURM timings: each now pinned to the right behaviour."""

import json
import os
import shutil

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


def test_a_log_shared_by_all_attempts_is_read_from_where_each_began(tmp_path):
    cfg = config()
    cfg["job"]["log"] = "logs/{name}.log"
    cfg["monitoring"]["log_events"] = [{"name": "nccl", "pattern": "NCCL error", "mode": "nccl"}]
    cfg["restart"]["nccl"] = {"action": "restart", "max_attempts": 3}
    h = Harness(tmp_path, cfg, names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.log(A, "NCCL error: unhandled system error\n")
    h.cycle()   # attempt 1: nccl -> scancel
    for _ in range(3):
        h.cycle()
    job = h.job(A)
    assert len(job.attempts) == 2 and job.current.outcome is None and job.status == "active"
    h.slurm.set(job.current.job_id, "RUNNING")
    h.log(A, "epoch 1\nTRAINING FINISHED\n")
    h.slurm.set(job.current.job_id, "COMPLETED")
    h.cycle()
    h.cycle()
    assert h.job(A).status == "finalized" and [a.outcome for a in h.job(A).attempts] == ["nccl", "success"]


def test_an_ended_job_is_read_to_the_end_of_its_log(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.log(A, ("x" * 99 + "\n") * 50000 + "TRAINING FINISHED\n")   # 5 MB, more than one read
    h.slurm.set(jid, "COMPLETED")
    h.cycle()
    h.cycle()
    assert h.job(A).status == "finalized" and h.slurm.count("sbatch") == 1


def test_an_unknown_state_word_is_unknown_not_an_end(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.slurm.set(jid, "SOMENEWSTATE")     # a state word a newer SLURM might print
    for _ in range(3):
        h.cycle(advance=600)             # nor is it a stall, however long it lasts
    att = h.job(A).current
    assert att.live and att.outcome is None and att.last_monitor_state == "unknown"
    assert h.job(A).status == "active" and h.slurm.count("sbatch") == 1 and h.slurm.count("scancel") == 0
    h.slurm.set(jid, "COMPLETED")
    h.log(A, "TRAINING FINISHED\n")
    h.cycle()
    h.cycle()
    assert h.job(A).status == "finalized"


def test_a_heterogeneous_job_in_the_queue_is_just_another_job():
    rows = autoexp.parse_squeue("1234+0|1234|RUNNING|None|other|(null)\n1234+1|1235|RUNNING|None|other|(null)\n",
                                "%i|%A|%T|%r|%j|%k")
    assert [r.job_id for r in rows] == ["1234+0", "1234+1"]


def test_not_lost_while_the_lookup_by_name_fails(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.forget(first)

    def failing(names, since):
        h.slurm.calls.append(("sacct",))
        raise autoexp.SlurmUnavailable("sacct did not answer within 60s")
    h.slurm.sacct_by_name = failing
    for advance in (10, 30, 40, 100):
        h.cycle(advance=advance)
    assert h.job(A).current.outcome is None and h.slurm.count("sbatch") == 1


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


def test_a_job_sacct_calls_running_is_never_lost(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.slurm.purge(first)   # squeue no longer lists it; sacct says RUNNING (accounting lags)
    for advance in (10, 30, 40, 300):
        h.cycle(advance=advance)
    att = h.job(A).current
    assert att.outcome is None and att.last_monitor_state == "missing" and h.slurm.count("sbatch") == 1


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


def consume_payloads_and_resave(h):
    """Deletes every action payload, as a consumer would, then saves as the next lock
    holder does; returns what is left in the payload folder (it must stay empty)."""
    folder = os.path.join(h.state_dir, "actions", "p1")
    assert os.listdir(folder)
    for f in os.listdir(folder):
        os.unlink(os.path.join(folder, f))
    h.cycle()
    h.store.save_and_sync(h.reload(), h.clock(), changed=False)
    return os.listdir(folder)


def test_action_payloads_deleted_by_a_consumer_stay_deleted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.cycle()
    assert consume_payloads_and_resave(h) == []


def test_an_ended_attempt_requeued_by_hand_is_noticed(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "TIMEOUT")
    h.cycle()
    h.cycle()   # the restart's sacct record, then its own observation
    h.slurm.set(first, "PENDING")           # scontrol requeue of the ended job
    h.cycle()
    assert [l for l in h.out if "also carries its tag" in l and first in l]


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


def test_squeue_with_cluster_headers_is_unknown(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    text = "CLUSTER: alpha\n%s|%s|RUNNING|None|%s|autoexp:p1:%s\n" % (jid, jid, A, A)
    h.slurm.squeue = lambda: autoexp.SlurmClient(
        runner=lambda a, t, e: autoexp.Completed(a, 0, text, "", False), user="u").squeue()
    assert h.cycle() is False


# --- what real SLURM showed ------------------------------------------------------------

def test_an_end_seen_in_squeue_waits_for_sacct_through_an_outage(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "FAILED", "3:0")
    h.slurm.fail["sacct"] = 3
    for _ in range(3):
        h.cycle(advance=60)
        assert h.job(A).current.outcome is None and h.slurm.count("sbatch") == 1
    h.cycle()
    att = h.job(A).attempts[0]
    assert att.outcome == "crash" and att.exit_code == "3:0"


def test_an_end_seen_in_squeue_waits_a_little_for_sacct_to_catch_up(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "FAILED", "3:0")
    h.slurm.jobs[jid]["in_sacct"] = False   # accounting lags
    h.cycle(advance=5)
    h.cycle(advance=5)
    assert h.job(A).current.outcome is None
    h.slurm.jobs[jid]["in_sacct"] = True
    h.cycle(advance=5)
    assert h.job(A).attempts[0].exit_code == "3:0"
    # and with no record at all (accounting off), it is decided after the grace
    nxt = h.live_id(A)
    h.slurm.set(nxt, "FAILED", "3:0")
    h.slurm.jobs[nxt]["in_sacct"] = False
    h.cycle(advance=5)
    assert h.job(A).current.outcome is None
    h.cycle(advance=40)
    assert h.job(A).attempts[1].outcome == "crash" and h.job(A).attempts[1].exit_code is None


# --- found by a second review ---------------------------------------------------------

def test_payload_deleted_after_a_finalize_stays_deleted(tmp_path):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "TRAINING FINISHED\n")
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    h.cycle()
    assert len(os.listdir(os.path.join(h.state_dir, "actions", "p1"))) == 1
    assert consume_payloads_and_resave(h) == []


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


def test_a_shared_log_truncated_and_outgrown_is_read_from_its_start(tmp_path):
    cfg = config()
    cfg["job"]["log"] = "logs/{name}.log"
    cfg["monitoring"]["log_events"] = [{"name": "cuda_oom", "pattern": "CUDA out of memory", "mode": "oom"}]
    cfg["restart"]["oom"] = {"action": "stop"}
    h = Harness(tmp_path, cfg, names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    path = h.log(A, "step\n" * 20)
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.cycle()
    h.cycle()
    assert len(h.job(A).attempts) == 2
    h.slurm.set(h.live_id(A), "RUNNING")
    with open(path, "w") as f:   # SLURM opens --output with O_TRUNC: same inode, new beginning
        f.write("CUDA out of memory\n" + "retrying on cpu....\n" * 10)
    h.cycle()
    assert h.job(A).current.log_matches == ["cuda_oom"] and h.job(A).status == "stopped"


def test_a_sacct_outage_is_said_and_exits_1(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "FAILED", "1:0")
    h.slurm.fail["sacct"] = 1000
    h.clock.now += 300
    code, out = run_main(h, ["reconcile"], monkeypatch, capsys)
    assert code == 1 and "sacct did not answer" in out.err
    assert h.job(A).current.outcome is None


def test_a_copy_of_a_session_file_is_refused(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    shutil.copy(h.session.path, os.path.join(h.state_dir, "p1-backup.json"))
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.clock.now += 60
    code, out = run_main(h, ["reconcile"], monkeypatch, capsys)
    assert code == 2 and "p1-backup.json" in out.err and "copy" in out.err
    seqs = [e["seq"] for e in read_events(h.state_dir, "p1")]
    assert len(seqs) == len(set(seqs)) and h.slurm.count("sbatch") == 2
    other = str(tmp_path / "elsewhere")
    os.mkdir(other)
    shutil.copy(h.session.path, os.path.join(other, "p1.json"))
    code, out = run_main(h, ["monitor", "--session", os.path.join(other, "p1.json"), "--once"], monkeypatch, capsys)
    assert code == 2 and "is a copy" in out.err
    # readers change nothing: an archived copy can be shown, a misnamed one never
    code, out = run_main(h, ["status", "--session", os.path.join(other, "p1.json")], monkeypatch, capsys)
    assert code == 0 and A in out.out
    code, out = run_main(h, ["history", "--session", os.path.join(h.state_dir, "p1-backup.json")],
                         monkeypatch, capsys)
    assert code == 2 and "p1-backup.json" in out.err


def test_a_session_without_its_manifest_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    h = Harness(tmp_path, config(), names=[A])
    other = json.load(open(h.session.path))
    other["session_id"] = "a0"
    other["manifest_path"] = os.path.join(h.state_dir, "plans", "a0", "manifest.json")
    json.dump(other, open(os.path.join(h.state_dir, "a0.json"), "w"))
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.clock.now += 60
    code, out = run_main(h, ["reconcile"], monkeypatch, capsys)
    assert code == 2 and "a0" in out.err
    assert h.reload().job(A).attempts[0].outcome == "timeout"


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

"""The state folder, in the controller with a fake clock and a scripted SLURM: the session
file (versioned, sorted keys, newer schemas and corrupt files refused and left as they
are), the event journal and action payloads written once (across a reload, and never again
once a consumer deleted them), temporary files of a killed writer removed, last_event, and
the CLI run in-process on copies of session files and on a session without its manifest."""

import json
import os
import shutil
import pytest

from helpers import A, Harness, autoexp, controller_config as config, read_events, run_main

pytestmark = pytest.mark.timeout(30)


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

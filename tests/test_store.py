"""The state folder, in the controller with a fake clock and a scripted SLURM: the session
file (versioned, sorted keys, newer schemas and corrupt files refused and left as they
are), the event journal and action payloads written once (across a reload, and never again
once a consumer deleted them), temporary files of a killed writer removed, last_event, and
the CLI run in-process on copies of session files and on a session without its manifest.
A write cut short or refused (a quota, a full disk) names its file, and a journal append cut
short is undone and appended by the next writer; a lock file deleted under a writer stops it
before it writes, and one deleted while being locked is locked again."""

import errno
import json
import os
import shutil
import pytest

from helpers import (A, FakeClock, Harness, ScriptedSlurm, autoexp, controller_config as config, load_state, read_events,
                     run_main, state_files, timeout_stall_config)

pytestmark = pytest.mark.timeout(30)


def test_monitor_state_file_is_versioned_and_sorted(tmp_path):
    """Schema 2: a small header (sorted, indented), the jobs one JSON line each (keys
    sorted, defaults left out, required fields always there), batches appended after."""
    h = Harness(tmp_path, config())
    with open(h.session.path) as f:
        text = f.read()
    doc = json.loads(text)
    assert doc["schema_version"] == autoexp.STATE_SCHEMA_VERSION == 2 and text.endswith("}\n")
    assert list(doc) == sorted(doc) and "jobs" not in doc
    for key in ("session_id", "project", "manifest_path", "created_at", "updated_at", "config", "generation",
                "batch", "event_seq"):
        assert key in doc
    snap, delta = h.store.gen_paths("p1", doc["generation"])
    lines = open(snap).read().splitlines()
    assert len(lines) == 2
    for line in lines:
        job = json.loads(line)
        assert list(job) == sorted(job) and json.dumps(job, sort_keys=True, separators=(",", ":")) == line
        for key in ("name", "index", "status", "attempts"):
            assert key in job
        for key in ("attempt", "job_id", "live", "log_offset", "outcome", "submit_state", "actions"):
            assert key in job["attempts"][0]
    state = load_state(h.state_dir, "p1")  # the whole session, header and jobs, as a reader sees it
    job = state["jobs"][0]
    for key in ("name", "status", "job_id", "attempts", "last_monitor_state", "last_slurm_state", "last_updated"):
        assert key in job
    for key in ("attempt", "job_id", "array_task", "submitted_at", "resolved_log_path", "log_offset",
                "last_slurm_state", "last_monitor_state", "outcome", "reason", "ended_at"):
        assert key in job["attempts"][0]


def test_refuses_newer_schema_and_corrupt_files(tmp_path):
    h = Harness(tmp_path, config())
    path = h.session.path
    with open(path) as f:
        doc = json.load(f)
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
    for path in state_files(h.state_dir, "p1"):  # a session is its header and its job files
        shutil.copy(path, other)
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


# --- schema 2: batches, generations, the migration from schema 1 --------------------------

V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "state_v1")


def copy_v1(tmp_path):
    """tests/state_v1 (written by autoexp with schema 1) where it says it lives."""
    run = tmp_path / "run"
    shutil.copytree(V1, str(run / "state"), ignore=shutil.ignore_patterns("logs", "README"))
    shutil.copytree(os.path.join(V1, "logs"), str(run / "logs"))
    for dirpath, _, files in os.walk(str(run)):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data.replace(b"/tmp/v1fix/run", str(run).encode()))
    return str(run / "state")


def test_a_schema_1_session_is_carried_on_as_schema_2(tmp_path, monkeypatch, capsys):
    state = copy_v1(tmp_path)
    with open(os.path.join(state, "p1.json")) as f:
        assert json.load(f)["schema_version"] == 1
    before = load_state(state, "p1")  # read as it is
    clock = FakeClock(1700000500.0)
    slurm = ScriptedSlurm(clock)
    slurm.add("demo-s1", "autoexp:p1:demo-s1", "RUNNING", job_id="103")
    code = autoexp.main(["--state-dir", state, "reconcile"], slurm=slurm, clock=clock, sleep=clock.sleep)
    assert code == 0, capsys.readouterr().err
    with open(os.path.join(state, "p1.json")) as f:
        header = json.load(f)
    assert header["schema_version"] == 2 and "jobs" not in header and header["generation"] >= 1
    after = load_state(state, "p1")
    for old, new in zip(before["jobs"], after["jobs"]):  # every attempt carried over
        assert [a["job_id"] for a in old["attempts"]] == [a["job_id"] for a in new["attempts"]]
        assert [a["outcome"] for a in old["attempts"]] == [a["outcome"] for a in new["attempts"]]
    assert after["jobs"][0]["attempts"][1]["last_slurm_state"] == "RUNNING"
    seqs = [e["seq"] for e in read_events(state, "p1")]
    assert seqs == list(range(1, after["event_seq"] + 1)) and after["event_seq"] > before["event_seq"]
    # an autoexp that knows only schema 1 refuses the new file, saying why
    monkeypatch.setattr(autoexp, "STATE_SCHEMA_VERSION", 1)
    with pytest.raises(autoexp.StateError, match="schema version 2, newer"):
        autoexp.StateStore(state).load(os.path.join(state, "p1.json"), with_plan=False)


def test_a_cycle_that_changes_nothing_writes_nothing(tmp_path):
    h = Harness(tmp_path, config())
    for n in (A, "demo-s2"):
        h.slurm.set(h.live_id(n), "RUNNING")
    h.cycle()
    before = h.state_bytes()
    for _ in range(5):
        h.cycle()
    assert h.state_bytes() == before


def test_a_cycle_writes_only_the_jobs_that_changed(tmp_path):
    cfg = config()
    cfg["sweep"] = {"seed": list(range(200))}
    h = Harness(tmp_path, cfg)
    for job in h.session.jobs:
        h.slurm.set(job.current.job_id, "RUNNING")
    h.cycle()
    h.cycle()
    snap, delta = h.store.gen_paths("p1", h.session.generation)
    size = os.path.getsize(delta) if os.path.exists(delta) else 0
    done = h.session.jobs[:2]  # 1% of the sweep ends
    for job in done:
        h.log(job.name, "TRAINING FINISHED\n")
        h.slurm.set(job.current.job_id, "COMPLETED")
    h.cycle()
    grown = os.path.getsize(h.store.gen_paths("p1", h.session.generation)[1]) - size
    # the batch of the two, and the one marking their payloads written: each holds them whole,
    # with the cycle's events, and nothing of the 198 others
    written = sum(len(j.line()) + 1 for j in done)
    assert 0 < grown <= 2 * written + 2 * 2048
    assert os.path.getsize(snap) > 5 * grown  # while a whole write would hold all 200


def test_batches_become_a_new_generation_and_readers_see_every_one(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEXP_COMPACT_BYTES", "1")
    h = Harness(tmp_path, config())
    gens = set()
    for i in range(12):
        for n in (A, "demo-s2"):
            h.log(n, "step %d\n" % i, job_id=h.live_id(n)) if h.job(n).current.live else None
        h.slurm.set(h.live_id(A), "RUNNING" if i % 2 else "SUSPENDED")
        h.cycle()
        gens.add(h.session.generation)
        assert load_state(h.state_dir, "p1")["jobs"] == json.loads(json.dumps([j.to_dict() for j in h.session.jobs]))
    assert len(gens) >= 3
    files = sorted(n for n in os.listdir(h.state_dir) if ".g" in n)
    assert files == sorted(os.path.basename(p) for p in h.store.gen_paths("p1", h.session.generation)
                           if os.path.exists(p))


def test_a_batch_cut_short_by_a_crash_is_not_there(tmp_path):
    h = Harness(tmp_path, config())
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    whole = load_state(h.state_dir, "p1")
    delta = h.store.gen_paths("p1", h.session.generation)[1]
    with open(delta, "ab") as f:  # a crash in the middle of an append
        f.write(b'{"batch":%d,"jobs":2,"session":{}}\n{"name":"demo-s1","ind' % (h.session.batch + 1))
    assert load_state(h.state_dir, "p1") == whole
    s = h.reload()
    h.ctl.cycle([s])  # the next writer cuts the torn tail off, then appends
    s.touch_all()
    h.store.save(s, h.clock())
    with open(delta, "rb") as f:
        assert b'"ind\n' not in f.read() and f.closed is False
    assert load_state(h.state_dir, "p1")["batch"] >= whole["batch"]


def test_a_batch_cut_right_after_a_line_is_cut_off_before_the_next(tmp_path):
    """Found by the simulator: a crash in the middle of a batch can leave whole lines (the
    batch's head, some of its jobs); the next writer must cut them off by the size it read,
    not by the last newline, or its batch would be read as the missing jobs."""
    h = Harness(tmp_path, config())
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    delta = h.store.gen_paths("p1", h.session.generation)[1]
    with open(delta, "ab") as f:
        f.write(b'{"batch":%d,"jobs":2,"session":{}}\n%s\n' % (h.session.batch + 1, h.job(A).line().encode()))
    s = h.reload()
    h.ctl.cycle([s])
    h.slurm.set(h.live_id(A), "TIMEOUT")
    h.ctl.cycle([s])
    after = load_state(h.state_dir, "p1")  # loads: the torn batch is gone, the new ones are whole
    assert after["jobs"][0]["attempts"][0]["outcome"] == "timeout"


def test_cron_catches_up_the_journal_and_payloads_a_killed_monitor_left(tmp_path, monkeypatch, capsys):
    """Found by the simulator (F2): a monitor killed right after the state write that held
    its final decisions left events out of the journal and payloads unwritten; with every
    job done, `reconcile` skipped the session, so nothing ever wrote them."""
    h = Harness(tmp_path, config(), names=[A])
    h.log(A, "TRAINING FINISHED\n")
    h.slurm.set(h.live_id(A), "COMPLETED")
    real_sync = autoexp.StateStore.sync_outputs
    monkeypatch.setattr(autoexp.StateStore, "sync_outputs", lambda self, s: False)  # killed before it
    h.cycle()
    monkeypatch.setattr(autoexp.StateStore, "sync_outputs", real_sync)
    state = load_state(h.state_dir, "p1")
    assert state["jobs"][0]["status"] == "finalized" and state["outbox"]
    code, _ = run_main(h, ["reconcile"], monkeypatch, capsys)
    assert code == 0
    seqs = [e["seq"] for e in read_events(h.state_dir, "p1")]
    assert seqs == list(range(1, state["event_seq"] + 1))
    assert [n for n in os.listdir(os.path.join(h.state_dir, "actions", "p1")) if n.endswith("_finalize.json")]


# --- every write's count is checked; a short journal append loses nothing ---------------


def test_a_short_append_to_the_journal_is_undone_and_said(tmp_path, monkeypatch):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    journal = os.path.join(h.state_dir, "p1.events.jsonl")
    before = open(journal, "rb").read()
    real_write = os.write
    calls = []

    def quota_write(fd, data):
        try:
            target = os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            target = ""
        if target == journal:
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, bytes(data)[:len(data) // 2])  # the quota cuts the append short
            raise OSError(errno.EFBIG, "File too large")
        return real_write(fd, data)
    monkeypatch.setattr(autoexp.os, "write", quota_write)
    h.slurm.set(h.live_id(A), "RUNNING")
    with pytest.raises(autoexp.StateWriteError) as e:
        h.cycle()
    assert journal in str(e.value) and "File too large" in str(e.value)
    assert open(journal, "rb").read() == before  # no torn line left behind
    saved = load_state(h.state_dir, "p1")
    assert saved["outbox"], "the events that did not land stay in the state file"
    monkeypatch.setattr(autoexp.os, "write", real_write)
    s = h.reload()
    h.store.save_and_sync(s, h.clock(), changed=False)  # the next writer appends them
    seqs = [e["seq"] for e in read_events(h.state_dir, "p1")]
    assert seqs == list(range(1, s.event_seq + 1))


def test_a_write_that_fails_names_its_file(tmp_path, monkeypatch):
    target = str(tmp_path / "x.json")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(autoexp.os, "write", full_disk)
    with pytest.raises(autoexp.StateWriteError) as e:
        autoexp.atomic_write(target, b"{}")
    assert target in str(e.value) and "No space left" in str(e.value)
    assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]


# --- a deleted lock file does not let a second writer in unnoticed ----------------------


def test_a_writer_whose_lock_file_was_deleted_stops_without_writing(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    h.store.lock("p1", "monitor")
    os.unlink(os.path.join(h.state_dir, "p1.lock"))                 # "a stale lock file"
    second = autoexp.StateStore(h.state_dir).lock("p1", "monitor")   # a second monitor gets in...
    assert second.intact()
    before = h.state_bytes()
    h.slurm.set(h.live_id(A), "TIMEOUT")
    with pytest.raises(autoexp.LockLostError) as e:                  # ...and the first one stops
        h.cycle()
    assert e.value.exit_code == autoexp.EXIT_LOCKED and "p1.lock" in str(e.value)
    assert h.state_bytes() == before and h.slurm.count("sbatch") == 1


def test_a_lock_file_deleted_while_being_locked_is_locked_again(tmp_path, monkeypatch):
    path = str(tmp_path / "s.lock")
    real_lockf = autoexp.fcntl.lockf
    deleted = []

    def racing_lockf(fd, op):
        if not deleted:
            deleted.append(1)
            os.unlink(path)  # another process removes the file between our open and our lock
        return real_lockf(fd, op)
    monkeypatch.setattr(autoexp.fcntl, "lockf", racing_lockf)
    lock = autoexp.SessionLock(path).acquire("monitor")
    assert deleted and lock.intact() and os.path.exists(path)


def test_a_hand_resubmission_is_claimed_by_one_session_only(tmp_path):
    store = autoexp.StateStore(str(tmp_path / "state"))
    store.ensure()
    assert store.claim_owner("123") is None
    assert store.claim_job("123", "p1") == "p1"
    assert store.claim_job("123", "p2") == "p1"  # first come, first served
    assert store.claim_job("123", "p1") == "p1" and store.claim_owner("123") == "p1"
    assert store.claim_job("7_3", "p2") == "p2"
    assert store.claim_job("../x", "p2") is None  # never a path outside the claims folder
    folder = tmp_path / "state" / "claims"
    assert sorted(os.listdir(str(folder))) == ["123", "7_3"]  # no temporary file left


def test_a_session_named_like_a_generation_of_another_keeps_its_files(tmp_path):
    """Session p1's lock holder removes its own old generations and temporary files, by
    their whole names: the files of a session named "p1.g1" (its own generation 1 is
    "p1.g1.g1.jobs.jsonl") begin the same way and are not p1's."""
    h = Harness(tmp_path, config(), names=[A])
    h.cycle()
    others = [os.path.join(h.state_dir, n) for n in (
        "p1.g1.g1.jobs.jsonl", "p1.g1.g1.delta.jsonl", ".p1.g1.json.99999.tmp", ".p1.g1.g1.jobs.jsonl.99999.tmp",
        ".p1.json.json.99999.tmp")]
    own = [os.path.join(h.state_dir, n) for n in ("p1.g77.jobs.jsonl", "p1.g77.delta.jsonl",
                                                   ".p1.g78.jobs.jsonl.99999.tmp", ".p1.json.99999.tmp")]
    for path in others + own:
        with open(path, "w") as f:
            f.write("{}\n")
    s, lock = h.store.open_for_write(h.session.path, "test", h.clock())
    try:
        assert [p for p in others if not os.path.exists(p)] == []
        assert [p for p in own if os.path.exists(p)] == []
        assert os.path.exists(h.store.gen_paths("p1", s.generation)[0])
    finally:
        lock.release()


def test_the_lock_file_names_its_holder_while_held_and_is_empty_after(tmp_path):
    """SPEC 6.1: how to see whether a session may be edited by hand, without taking its lock
    (that a second process is refused, naming the holder, is in test_archive)."""
    h = Harness(tmp_path, config(), names=[A])
    path = os.path.join(h.state_dir, "p1.lock")
    lock = h.store.lock("p1", "monitor", h.clock())
    try:
        held = json.loads(open(path).read())
        assert held["pid"] == os.getpid() and held["command"] == "monitor" and held["host"] and held["since"]
    finally:
        lock.release()
    assert open(path).read() == ""

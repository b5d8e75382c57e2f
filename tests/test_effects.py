"""`on` rules and the effect engine (SPEC 5.8): which rules an event sets off, the retry
decision (tables), and end to end on the fake SLURM through the CLI: a command run once
per event with its exit and output in history, retries with backoff, a timeout, a cron
pass that ends while the command runs, a notify's worker command, and crashes at the
engine's crash points (never twice, never forgotten, interrupted reported, idempotent
re-run)."""

import glob
import json
import os
import signal
import time

import pytest

import helpers
from helpers import Project, autoexp, read_events, refused, resolve  # noqa: F401

pytestmark = pytest.mark.timeout(120)
NOW = 1700000000.0


# -- tables: the pure parts --------------------------------------------------------------

def rule(event, jobs="*", **kw):
    r = dict(autoexp.ON_DEFAULTS, event=event, jobs=jobs)
    r.update(kw)
    if r["run"] is None and r["notify"] is None:
        r["run"] = "true"
    return r


@pytest.mark.parametrize("rules, kind, job, expected", [
    ([rule("finalized")], "finalized", "a-1", [0]),
    ([rule("finalized")], "stopped", "a-1", []),
    ([rule("stopped"), rule("finalized"), rule("finalized", jobs="b-*")], "finalized", "a-1", [1]),
    ([rule("finalized", jobs="b-*"), rule("finalized", jobs="*-1")], "finalized", "b-1", [0, 1]),
    ([rule("ckpt")], "log:ckpt", "a", [0]),          # a log_events name stands for its log: events
    ([rule("log:ckpt")], "log:ckpt", "a", [0]),
    ([rule("ckpt")], "ckpt", "a", [0]),
    ([rule("ckpt")], "log:ckpt2", "a", []),
    ([rule("action_failed", notify="ops", run=None)], "action_failed", "a", [0]),
    ([], "finalized", "a", []),
])
def test_rules_for_event(rules, kind, job, expected):
    assert [i for i, _ in autoexp.rules_for_event(rules, kind, job)] == expected


def eff(state="intent", spawns=0, next_at=None):
    return {"state": state, "spawns": spawns, "next_at": autoexp.iso_time(next_at) if next_at else None}


L = autoexp.EffectLook


@pytest.mark.parametrize("effect, look, expected", [
    (eff(), L(False, False, False), "start"),                     # never ran
    (eff("running", 1), L(False, True, True), "running"),         # its worker holds the lock
    (eff("intent"), L(False, True, False), "running"),            # spawned, state not saved yet
    (eff("running", 1), L(True, True, True), "record"),           # a result wins over the lock
    (eff("running", 1), L(True, False, True), "record"),
    (eff("running", 1), L(False, False, True), "interrupted"),    # started, died without a result
    (eff("running", 2), L(False, False, False), "start"),         # its worker died before starting it
    (eff("running", 3), L(False, False, False), "give_up"),
    (eff("running", 1), L(False, False, False, False), "interrupted"),  # its files deleted while it ran
    (eff("intent"), L(False, False, False, False), "start"),           # never started: no files yet
    (eff("waiting", 0, NOW + 10), L(False, False, False), "wait"),
    (eff("waiting", 0, NOW - 1), L(False, False, False), "start"),
    (eff("waiting", 0, NOW + 10), L(True, False, True), "record"),  # started by a process that crashed
])
def test_effect_move(effect, look, expected):
    assert autoexp.effect_move(effect, look, NOW) == expected


@pytest.mark.parametrize("kind, result, expected", [
    ("run", {"exit": 0, "timed_out": False}, "ok"),
    ("run", {"exit": 3, "timed_out": False}, "retryable"),
    ("run", {"exit": None, "timed_out": True}, "retryable"),
    ("run", {"exit": None, "timed_out": False}, "retryable"),   # killed by a signal
    ("notify", {"exit": 0, "timed_out": False}, "ok"),
    ("notify", {"exit": 75, "timed_out": False}, "retryable"),  # _notify: try again later
    ("notify", {"exit": None, "timed_out": True}, "retryable"),
    ("notify", {"exit": 1, "timed_out": False}, "failed"),      # a 4xx, a bad target: permanent
    ("notify", {"exit": 2, "timed_out": False}, "failed"),
])
def test_try_outcome(kind, result, expected):
    assert autoexp.try_outcome(kind, result) == expected


@pytest.mark.parametrize("kind, tried, outcome, retries, idempotent, expected", [
    ("run", 1, "ok", 2, False, ("done", None, "action_done", 1)),
    ("run", 1, "retryable", 2, False, ("waiting", NOW + 10, "action_retry", 2)),
    ("run", 2, "retryable", 2, False, ("waiting", NOW + 20, "action_retry", 3)),   # backoff doubles
    ("run", 3, "retryable", 2, False, ("failed", None, "action_failed", 3)),       # retries used up
    ("run", 1, "retryable", 0, False, ("failed", None, "action_failed", 1)),
    ("run", 1, "interrupted", 2, False, ("interrupted", None, "action_interrupted", 1)),
    ("run", 1, "interrupted", 2, True, ("waiting", NOW, "action_retry", 2)),        # idempotent: again at once
    ("run", 3, "interrupted", 2, True, ("interrupted", None, "action_interrupted", 3)),
    ("run", 1, "failed", 2, False, ("failed", None, "action_failed", 1)),          # e.g. a placeholder not captured
    ("notify", 1, "ok", 2, False, ("done", None, "notify_sent", 1)),
    ("notify", 1, "failed", 2, False, ("failed", None, "notify_failed", 1)),
    ("notify", 1, "retryable", 2, False, ("waiting", NOW + 10, "action_retry", 2)),
    ("notify", 1, "interrupted", 2, False, ("interrupted", None, "notify_failed", 1)),
])
def test_effect_verdict(kind, tried, outcome, retries, idempotent, expected):
    r = rule("finalized", retries=retries, idempotent=idempotent, backoff_seconds=10)
    assert tuple(autoexp.effect_verdict(kind, tried, outcome, r, NOW)) == expected


def test_effect_values_event_values_win():
    values = autoexp.job_values({"seed": 1}, "p", 0, "plan", "p-0")
    values["ckpt"] = "/c/1"  # a captured value, as the job's values carry it
    event = {"event": "finalized", "mode": "success", "job_id": "12", "attempt": 2, "detail": "why", "seq": 5}
    v = autoexp.effect_values(values, event, "sess")
    assert v["seed"] == "1" and v["ckpt"] == "/c/1" and v["name"] == "p-0"
    assert (v["event"], v["mode"], v["job_id"], v["attempt"], v["session"], v["reason"]) == (
        "finalized", "success", "12", "2", "sess", "why")


def config(**on):
    cfg = helpers.sweep_config("ef", "echo TRAINING FINISHED", (1, 2), {})
    cfg["monitoring"]["log_events"] = [{"name": "ckpt", "pattern": r"saved (?P<ckpt>\S+)"}]
    cfg["on"] = [dict({"event": "finalized", "run": "echo {name}"}, **on)]
    return cfg


def test_config_defaults_filled_in():
    out = resolve(config())["on"][0]
    assert out == dict(autoexp.ON_DEFAULTS, event="finalized", run="echo {name}")
    assert resolve(config(run="convert --ckpt {ckpt} --seed {seed} --e {event} {reason}"))


@pytest.mark.parametrize("on, words", [
    ({"run": "echo {nope}"}, ("unknown placeholder {nope}",)),
    ({"run": "echo '{name}'"}, ("inside single quotes",)),
    ({"notify": "ops"}, ("exactly one of",)),
    ({"event": "finalised"}, ("neither an event kind",)),
    ({"event": "action_failed"}, ("only a 'notify'",)),
    ({"event": "notify_failed", "run": None, "notify": "ops"}, ("nothing on a notification",)),
    ({"timeout_seconds": 0}, ("greater than 0",)),
    ({"retries": 1e9}, ("integer",)),
    ({"retries": 101}, ("at most 100",)),
    ({"backoff_seconds": 1e300}, ("at most",)),
    ({"idempotent": "yes"}, ("true or false",)),
    ({"colour": 1}, ("unknown key",)),
    ({"notify": "../x", "run": None}, ("not a safe name",)),
])
def test_config_refusals(on, words):
    cfg = config(**on)
    cfg["on"][0] = dict((k, v) for k, v in cfg["on"][0].items() if v is not None)
    refused(cfg, *words)


def test_config_bounds_number_of_rules():
    cfg = config()
    cfg["on"] = cfg["on"] * (autoexp.MAX_ON_RULES + 1)
    refused(cfg, "at most %d" % autoexp.MAX_ON_RULES)


# -- end to end on the fake SLURM ----------------------------------------------------------

def sweep(project, on, command="echo seed {seed}; echo TRAINING FINISHED", seeds=(1, 2), **mon):
    cfg = helpers.sweep_config("ef", command, seeds, {"lost_after_seconds": 15}, **mon)
    cfg["on"] = on
    return project.config(cfg)


def effects(project, session, name):
    return project.history(session, name)["jobs"][0]["effects"]


def kinds(project, session, prefix=("action_", "notify_")):
    return [(e["job"], e["event"]) for e in read_events(project.state_dir, session) if e["event"].startswith(prefix)]


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def reconcile_until_quiet(project, session, timeout=60):
    """cron: reconcile passes until the session has no work left (jobs and effects)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        res = project.cli("reconcile", "--session", session)
        assert res.returncode in (0, 1), res.stderr  # 1: sacct did not answer yet, say
        if not project.status(session)["sessions"][0]["active"]:
            return
        time.sleep(0.2)
    raise AssertionError("the session still has work left")


@pytest.mark.slow
def test_run_once_per_finalized_job_output_and_exit_in_history(project, fake):
    cfg = sweep(project, [{"event": "finalized", "run": "echo {name} >> {project}.ran; echo converted {seed}; "
                                                        "head -c 300 | tr -d '\\n'; echo; echo $AUTOEXP_MODE"},
                          {"event": "stopped", "run": "echo never >> stopped.ran"}])
    project.ok("run", cfg, "--plan-id", "once")  # returns once the effects are done too
    assert sorted(lines(os.path.join(project.root, "ef.ran"))) == ["ef-s1", "ef-s2"]
    assert not os.path.exists(os.path.join(project.root, "stopped.ran"))
    (e,) = effects(project, "once", "ef-s1")
    assert (e["state"], e["exit"], e["timed_out"], e["try"], e["event"], e["kind"]) == (
        "done", 0, False, 1, "finalized", "run")
    out = e["tail"].splitlines()
    assert out[0] == "converted 1" and out[-1] == "success"
    stdin = json.loads(out[1])  # the event on stdin, as JSON
    assert (stdin["event"], stdin["job"], stdin["session"], stdin["params"]) == (
        "finalized", "ef-s1", "once", {"seed": "1"})
    assert e["command"].startswith("echo ef-s1 >> ef.ran")
    assert sorted(kinds(project, "once")) == sorted([("ef-s1", "action_started"), ("ef-s1", "action_done"),
                                                     ("ef-s2", "action_started"), ("ef-s2", "action_done")])
    # a later pass changes nothing: done is done
    project.ok("reconcile", "--session", "once")
    assert lines(os.path.join(project.root, "ef.ran")) and len(lines(os.path.join(project.root, "ef.ran"))) == 2
    text = project.ok("history", "--session", "once", "ef-s2").stdout
    assert "on finalized (seq" in text and "done, try 1, exit 0" in text


@pytest.mark.slow
def test_failing_command_retried_with_backoff_then_reported(project, fake):
    cfg = sweep(project, [{"event": "finalized", "run": "date +%s.%N >> tries; echo 'no space left' >&2; exit 3",
                           "retries": 2, "backoff_seconds": 0.3}], seeds=(1,), interval_seconds=0.1)
    project.ok("run", cfg, "--plan-id", "fail")
    stamps = [float(x) for x in lines(os.path.join(project.root, "tries"))]
    assert len(stamps) == 3  # the first try and two retries, then no more
    assert stamps[1] - stamps[0] >= 0.3 and stamps[2] - stamps[1] >= 0.6  # the backoff doubles
    (e,) = effects(project, "fail", "ef-s1")
    assert (e["state"], e["exit"], e["try"]) == ("failed", 3, 3)
    assert [t["exit"] for t in e["tries"]] == [3, 3, 3]
    assert "no space left" in e["tail"]
    evs = [k for _, k in kinds(project, "fail")]
    assert evs.count("action_retry") == 2 and evs.count("action_failed") == 1 and evs[-1] == "action_failed"
    failed = [x for x in read_events(project.state_dir, "fail") if x["event"] == "action_failed"][0]
    assert "try 3 exited 3 (no space left)" in failed["detail"]


@pytest.mark.slow
def test_timeout_kills_the_command(project, fake):
    cfg = sweep(project, [{"event": "finalized", "run": "echo $$ > pid; sleep 60", "timeout_seconds": 0.5,
                           "retries": 0}], seeds=(1,))
    t0 = time.time()
    project.ok("run", cfg, "--plan-id", "slow")
    assert time.time() - t0 < 30
    (e,) = effects(project, "slow", "ef-s1")
    assert (e["state"], e["timed_out"], e["exit"]) == ("failed", True, None)
    pid = int(lines(os.path.join(project.root, "pid"))[0])
    with pytest.raises(OSError):
        os.kill(pid, 0)  # its process group was killed
    assert "timed out" in [x for x in read_events(project.state_dir, "slow")
                           if x["event"] == "action_failed"][0]["detail"]


@pytest.mark.slow
def test_cron_pass_ends_while_the_command_runs_next_pass_records_it(project, fake):
    cfg = sweep(project, [{"event": "finalized", "run": "sleep 2; echo slow done; echo x >> ran"}], seeds=(1,))
    project.ok("plan", cfg, "--plan-id", "cron")
    project.ok("submit", "cron")
    deadline = time.time() + 30
    while time.time() < deadline:  # passes until the job is finalized; the pass that does it returns at once
        t0 = time.time()
        project.cli("reconcile", "--session", "cron")
        took = time.time() - t0
        if project.state("cron")["jobs"][0]["status"] == "finalized":
            break
        time.sleep(0.2)
    assert took < 2  # the pass did not wait for the command
    (e,) = effects(project, "cron", "ef-s1")
    assert e["state"] == "running" and not lines(os.path.join(project.root, "ran"))
    status = project.status("cron")["sessions"][0]
    assert status["active"]  # work left: cron comes back for the result
    reconcile_until_quiet(project, "cron")
    (e,) = effects(project, "cron", "ef-s1")
    assert (e["state"], e["exit"], e["tail"]) == ("done", 0, "slow done\n")
    assert lines(os.path.join(project.root, "ran")) == ["x"]


@pytest.mark.slow
def test_notify_rule_runs_the_notify_command_with_the_events_on_stdin(project, fake):
    cfg = helpers.sweep_config("ef", "echo TRAINING FINISHED", (1,), {"lost_after_seconds": 15})
    cfg["notify"] = {"targets": {"team": {"command": "cat > notified.json"},
                                 "broken": {"command": "echo refused >&2; exit 1"}}, "events": []}
    cfg["on"] = [{"event": "finalized", "notify": "team", "retries": 0},
                 {"event": "finalized", "notify": "broken", "retries": 3}]  # exit 1: permanent
    project.ok("run", project.config(cfg), "--plan-id", "nt")
    sent, failed = effects(project, "nt", "ef-s1")
    assert (sent["kind"], sent["target"], sent["state"], sent["exit"]) == ("notify", "team", "done", 0)
    folder = os.path.join(project.state_dir, "effects", "nt")
    with open(os.path.join(folder, sent["id"] + ".1.spec.json")) as f:
        spec = json.load(f)
    assert spec["argv"][1:4] == ["-c", autoexp.EFFECT_BOOT, os.path.dirname(os.path.abspath(autoexp.__file__))]
    assert spec["argv"][4:] == ["_notify", "--state-dir", project.state_dir, "--session", "nt", "--target", "team"]
    events = json.loads(spec["stdin"])
    assert [(x["event"], x["job"], x["session"]) for x in events] == [("finalized", "ef-s1", "nt")]
    with open(os.path.join(project.root, "notified.json")) as f:
        assert "ef-s1" in f.read()  # delivered by the target's command
    assert (failed["state"], failed["try"]) == ("failed", 1)  # a permanent failure is not retried
    assert sorted(kinds(project, "nt")) == [("ef-s1", "notify_failed"), ("ef-s1", "notify_sent")]


# -- crashes at the engine's crash points ---------------------------------------------------

def crash_config(project, idempotent=False, command="echo {name} >> ran; sleep 0.5; echo ok"):
    return sweep(project, [{"event": "finalized", "run": command, "idempotent": idempotent}], seeds=(1, 2))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["effect_before_spawn", "effect_after_spawn", "effect_after_result"])
@pytest.mark.parametrize("nth", [1, 2])
def test_crash_point_never_twice_never_forgotten(project, fake, point, nth):
    cfg = crash_config(project)
    res = project.cli("run", cfg, "--plan-id", "cr", env={"AUTOEXP_CRASH_AT": "%s:%d" % (point, nth)})
    assert res.returncode == autoexp.EXIT_CRASH_POINT, res.stdout + res.stderr
    reconcile_until_quiet(project, "cr")
    ran = lines(os.path.join(project.root, "ran"))
    assert sorted(ran) == ["ef-s1", "ef-s2"]  # each once: never twice, never forgotten
    for name in ("ef-s1", "ef-s2"):
        (e,) = effects(project, "cr", name)
        assert (e["state"], e["exit"], e["try"]) == ("done", 0, 1), e
    evs = kinds(project, "cr")
    assert sorted(k for k in evs if k[1] == "action_done") == [("ef-s1", "action_done"), ("ef-s2", "action_done")]


def kill_worker_and_command(project, session):
    """SIGKILL a running try's worker and its command, as a reboot of the login node would."""
    folder = os.path.join(project.state_dir, "effects", session)
    helpers.wait_for(lambda: glob.glob(os.path.join(folder, "*.started")) and os.path.exists(
        os.path.join(project.root, "cmd.pid")), what="the command started")
    with open(glob.glob(os.path.join(folder, "*.started"))[0]) as f:
        worker = json.load(f)["pid"]
    command = int(lines(os.path.join(project.root, "cmd.pid"))[0])
    os.kill(worker, signal.SIGKILL)
    os.killpg(command, signal.SIGKILL)  # the command leads a process group of its own (its sleep too)


@pytest.mark.slow
@pytest.mark.parametrize("idempotent", [False, True])
def test_interrupted_try_reported_or_rerun_if_idempotent(project, fake, idempotent):
    cmd = "echo x >> ran; if [ ! -e cmd.pid ]; then echo $$ > cmd.pid; sleep 60; fi; echo fine"
    cfg = sweep(project, [{"event": "finalized", "run": cmd, "idempotent": idempotent}], seeds=(1,))
    project.ok("plan", cfg, "--plan-id", "int")
    project.ok("submit", "int")
    deadline = time.time() + 30
    while not glob.glob(os.path.join(project.state_dir, "effects", "int", "*.started")):
        assert time.time() < deadline
        project.cli("reconcile", "--session", "int")
        time.sleep(0.2)
    kill_worker_and_command(project, "int")
    time.sleep(0.2)  # the killed processes' lock is let go
    reconcile_until_quiet(project, "int")
    (e,) = effects(project, "int", "ef-s1")
    if idempotent:
        assert (e["state"], e["try"], e["exit"]) == ("done", 2, 0)
        assert [t["outcome"] for t in e["tries"]] == ["interrupted", "ok"]
        assert len(lines(os.path.join(project.root, "ran"))) == 2
    else:
        assert (e["state"], e["try"]) == ("interrupted", 1)
        assert len(lines(os.path.join(project.root, "ran"))) == 1  # never run twice
        assert kinds(project, "int")[-1] == ("ef-s1", "action_interrupted")


def test_a_command_that_never_reads_a_large_stdin_is_still_killed_at_its_timeout(tmp_path):
    """The worker hands the command its stdin without blocking on it: a command that never
    reads 1 MiB of stdin (more than a pipe holds) still meets its timeout."""
    base = str(tmp_path / "e.1")
    spec = {"argv": ["sleep", "30"], "cwd": str(tmp_path), "env": {}, "timeout": 0.5,
            "stdin": "x" * (1 << 20)}
    with open(base + autoexp.EFFECT_SPEC, "w") as f:
        json.dump(spec, f)
    fd = os.open(base + autoexp.EFFECT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        t0 = time.time()
        assert autoexp.run_effect_try(base, fd) == autoexp.EXIT_OK
        assert time.time() - t0 < 10
    finally:
        os.close(fd)
    with open(base + autoexp.EFFECT_RESULT) as f:
        result = json.load(f)
    assert result["timed_out"] is True and result["exit"] is None

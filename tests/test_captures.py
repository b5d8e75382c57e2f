"""Values captured from logs (SPEC 5.7): a log_events pattern's named groups are kept per
attempt, the last value of each name winning, persisted with the job (never re-read from
the start of the log), and shown by `status --json` and `history`; an entry without a mode
is an event and its captures only, the attempt goes on. Group names are bounded and may
not shadow the placeholders autoexp fills."""

import json

import pytest

import autoexp
from helpers import A, Harness, controller_config as config, read_events, refused

pytestmark = pytest.mark.timeout(30)

CKPT = {"name": "ckpt", "pattern": r"saved checkpoint to (?P<ckpt>\S+) at step (?P<step>\d+)"}


def _matcher(*events):
    mon = autoexp.make_monitoring(autoexp.validate_monitoring({"log_events": list(events)}, autoexp._Checker("c")))
    return autoexp.LogMatcher(mon)


def test_the_matcher_gives_every_named_group_of_every_match():
    hits = _matcher(CKPT).scan(["saved checkpoint to /ck/1 at step 10", "loss 3.2",
                                "saved checkpoint to /ck/2 at step 20"])
    assert [h.captures for h in hits] == [(("ckpt", "/ck/1"), ("step", "10")), (("ckpt", "/ck/2"), ("step", "20"))]
    assert all(h.mode is None for h in hits)


def test_a_captured_value_is_cut_to_its_bound():
    hits = _matcher({"name": "v", "pattern": r"value=(?P<v>\S+)"}).scan(["value=" + "x" * 4000])
    assert len(dict(hits[0].captures)["v"]) == autoexp.MAX_CAPTURE_CHARS


def test_the_last_value_wins_and_the_event_fires_once_and_the_attempt_goes_on(tmp_path):
    cfg = config()
    cfg["monitoring"]["log_events"] = [CKPT]
    h = Harness(tmp_path, cfg, names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "saved checkpoint to /ck/1 at step 10\n")
    h.cycle()
    h.log(A, "saved checkpoint to /ck/2 at step 20\nsaved checkpoint to /ck/3 at step 30\n")
    h.cycle()
    job = h.job(A)
    assert job.status == "active" and job.current.outcome is None and job.current.live
    assert job.current.captured == {"ckpt": "/ck/3", "step": "30"}
    assert [e["event"] for e in read_events(h.state_dir, h.session.session_id)].count("log:ckpt") == 1
    # persisted: a new process knows the values without reading the log again
    h.reload()
    assert autoexp.job_captured(h.job(A)) == {"ckpt": "/ck/3", "step": "30"}


def test_a_restart_inherits_the_values_until_it_captures_its_own(tmp_path):
    cfg = config()
    cfg["job"]["log"] = "logs/{name}.%j.log"
    cfg["monitoring"]["log_events"] = [CKPT]
    h = Harness(tmp_path, cfg, names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    h.log(A, "saved checkpoint to /ck/1 at step 10\n")
    h.cycle()
    h.slurm.set(first, "TIMEOUT")
    h.cycle()
    h.cycle()
    job = h.job(A)
    assert len(job.attempts) == 2
    assert autoexp.job_captured(job) == {"ckpt": "/ck/1", "step": "10"}
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "saved checkpoint to /ck/9 at step 90\n")
    h.cycle()
    job = h.job(A)
    assert job.attempts[0].captured == {"ckpt": "/ck/1", "step": "10"}
    assert autoexp.job_captured(job) == {"ckpt": "/ck/9", "step": "90"}


@pytest.mark.parametrize("attempts,expected", [
    ([], {}),
    ([None], {}),
    ([{"a": "1"}], {"a": "1"}),
    ([{"a": "1", "b": "x"}, None, {"a": "2"}], {"a": "2", "b": "x"}),
])
def test_job_captured_table(attempts, expected):
    job = autoexp.Job(name="j", attempts=[autoexp.Attempt(attempt=i + 1, captured=c) for i, c in enumerate(attempts)])
    assert autoexp.job_captured(job) == expected


def test_status_and_history_show_the_captured_values(tmp_path):
    cfg = config()
    cfg["monitoring"]["log_events"] = [CKPT]
    h = Harness(tmp_path, cfg, names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "saved checkpoint to /ck/7 at step 70\n")
    h.cycle()
    doc = autoexp._status_doc(h.store.load(h.session.path))
    assert doc["jobs"][0]["captured"] == {"ckpt": "/ck/7", "step": "70"}
    hist = autoexp._history_doc(h.store.load(h.session.path), A)
    assert hist["jobs"][0]["captured"] == {"ckpt": "/ck/7", "step": "70"}
    assert hist["jobs"][0]["attempts"][0]["captured"] == {"ckpt": "/ck/7", "step": "70"}
    json.dumps(hist)


def test_a_group_named_like_a_filled_placeholder_is_refused():
    cfg = config()
    cfg["monitoring"]["log_events"] = [{"name": "x", "pattern": r"at (?P<name>\S+)"}]
    refused(cfg, "monitoring.log_events[0].pattern", "placeholder")


@pytest.mark.parametrize("group, words", [
    ("seed", "the name of a sweep parameter"),
    ("mode", "placeholder autoexp fills"),
    ("parent", "placeholder autoexp fills"),
])
def test_a_group_named_like_a_parameter_or_an_event_value_is_refused(group, words):
    cfg = config()
    cfg["sweep"] = {"seed": [1]}
    cfg["monitoring"]["log_events"] = [{"name": "x", "pattern": r"at (?P<%s>\S+)" % group}]
    refused(cfg, "monitoring.log_events", "(?P<%s>)" % group, words)


def test_too_many_captured_names_are_refused():
    cfg = config()
    groups = "".join("(?P<g%d>x)" % i for i in range(autoexp.MAX_CAPTURES + 1))
    cfg["monitoring"]["log_events"] = [{"name": "x", "pattern": groups}]
    refused(cfg, "monitoring.log_events", "at most %d" % autoexp.MAX_CAPTURES)


def test_a_state_file_with_a_captured_value_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError):
        autoexp.Attempt.from_dict({"attempt": 1, "job_id": None, "submit_state": None, "live": False,
                                   "outcome": None, "actions": [], "captured": {"ckpt": 3}})


def test_a_nul_in_a_captured_value_is_dropped():
    hits = _matcher({"name": "v", "pattern": r"value=(?P<v>\S+)"}).scan(["value=a\x00b"])
    assert dict(hits[0].captures)["v"] == "ab"


@pytest.mark.parametrize("value, unsafe", [
    ("x[$(touch p)]", True), ("a[`id`]", True), ("$(date)", False), ("[1]", False), ("plain", False), (None, False)])
def test_arithmetic_unsafe_table(value, unsafe):
    assert autoexp.arithmetic_unsafe(value) is unsafe


def test_a_captured_value_bash_arithmetic_would_run_is_never_used():
    with pytest.raises(autoexp.ConfigError) as e:
        autoexp.check_used_values(["declare -i z={arith}"], {"arith": "x[$(touch p)]"}, "s: on[0].run")
    assert "{arith}" in str(e.value) and "arithmetic" in str(e.value)
    autoexp.check_used_values(["echo {other}"], {"arith": "x[$(touch p)]", "other": "ok"}, "s")  # not used: fine

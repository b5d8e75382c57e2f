"""SPEC.md is the contract: its tables must say what the code's constants say, so the two
cannot drift apart. Each test reads one table of SPEC.md and compares it with the one
home of that fact in autoexp.py."""

import json
import os
import re

import pytest

from helpers import ROOT, autoexp

with open(os.path.join(ROOT, "SPEC.md"), encoding="utf-8") as _f:
    SPEC = _f.read()


def table(header_prefix, occurrence=0):
    """The rows (lists of cells) of the SPEC table whose header line starts with
    `| header_prefix`; occurrence picks among several such tables, in order."""
    starts = [m.start() for m in re.finditer(r"^ *\| " + re.escape(header_prefix) + r"\b.*\|$", SPEC, re.M)]
    assert len(starts) > occurrence, "SPEC.md has no table headed %r" % header_prefix
    rows = []
    for line in SPEC[starts[occurrence]:].splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, "the SPEC table headed %r is empty" % header_prefix
    return rows


def ticked(cell):
    """The first `code` of a cell, without the backticks."""
    m = re.search(r"`([^`]+)`", cell)
    assert m, "no `name` in SPEC cell %r" % cell
    return m.group(1)


def test_exit_codes():
    codes = [int(r[0]) for r in table("code")]
    assert codes == sorted(autoexp.EXIT_CODES)


def test_top_level_and_job_config_keys():
    keys = [ticked(r[0]) for r in table("key")]
    top = [k for k in keys if "." not in k]
    job = [k.split(".", 1)[1] for k in keys if k.startswith("job.")]
    sections = [k.split(".", 1)[0] for k in keys if k.endswith(".*")]
    assert set(top + sections + (["job"] if job else [])) == set(autoexp.TOP_KEYS)
    assert job == list(autoexp.JOB_KEYS)


def test_monitoring_keys_and_defaults():
    rows = table("key", occurrence=1)
    assert [ticked(r[0]) for r in rows] == [k.name for k in autoexp.MONITORING_SCHEMA]
    for row, key in zip(rows, autoexp.MONITORING_SCHEMA):
        default = row[2].strip("`")
        assert default.startswith(json.dumps(key.default)), (key.name, row[2])
        if key.nullable:
            assert "null" in row[1], key.name


def test_policy_keys_and_default_policies():
    assert re.search(r"`restart` maps a mode to `\{%s\}`" % ", ".join(autoexp.POLICY_KEYS), SPEC)
    rows = table("mode")
    spec = dict((r[0], r[1]) for r in rows)
    for mode, policy in autoexp.DEFAULT_POLICIES.items():
        words = [policy["action"]] + ["%s %s" % (k, v) for k, v in policy.items() if k != "action"]
        assert spec[mode] == ", ".join(words), mode
    assert list(spec)[:len(autoexp.MODES)] == list(autoexp.MODES) == list(autoexp.DEFAULT_POLICIES)
    assert spec["(a new log_events mode)"] == autoexp.UNLISTED_POLICY.action


def test_actions():
    assert [ticked(r[0]) for r in table("action")] == list(autoexp.ACTIONS)


def test_slurm_states_and_modes():
    rows = table("SLURM state")
    spec = {}
    for states, mode in rows:
        for state in re.findall(r"\b[A-Z][A-Z_]+\b", re.sub(r"\([^)]*\)", "", states)):
            spec[state] = ticked(mode)
    assert spec == dict(autoexp.TERMINAL_MODE)
    live = re.split(r",\s+", re.search(r"^((?:[A-Z_]+,\s+)+[A-Z_]+) are live states", SPEC, re.M).group(1))
    assert set(live) == set(autoexp.ACTIVE_STATES)


def test_event_kinds():
    assert [ticked(r[0]) for r in table("event")] == list(autoexp.EVENT_KINDS)


@pytest.mark.parametrize("label, fields", [
    ("session field", autoexp.SESSION_FIELDS),
    ("job field", autoexp.JOB_FIELDS + (autoexp.Field("job_id"),)),
    ("attempt field", autoexp.ATTEMPT_FIELDS),
])
def test_state_fields(label, fields):
    rows = table(label)
    assert sorted(ticked(r[0]) for r in rows) == sorted(f.name for f in fields)
    required = set(ticked(r[0]) for r in rows if r[1] == "yes")
    assert required == set(f.name for f in fields if f.required is not None)


def test_crash_points():
    points = []
    for row in table("point"):
        points += re.findall(r"`([a-z_]+)`", row[0])
    assert sorted(points) == sorted(autoexp.CRASH_POINTS)


def test_version_line():
    assert "Version: autoexp %s, state schema %d, manifest schema %d." % (
        autoexp.__version__, autoexp.STATE_SCHEMA_VERSION, autoexp.MANIFEST_SCHEMA_VERSION) in SPEC


def test_node_exclusion_keys_and_defaults():
    rows = table("key", occurrence=2)
    assert [ticked(r[0]) for r in rows] == [k.name for k in autoexp.NODE_EXCLUSION_SCHEMA]
    for row, key in zip(rows, autoexp.NODE_EXCLUSION_SCHEMA):
        assert row[2].strip("`").startswith(json.dumps(key.default)), (key.name, row[2])
        if key.nullable:
            assert "null" in row[1], key.name
    assert "`%s` or `%s`" % autoexp.EXCLUSION_SCOPES in rows[1][1]
    assert re.search(r"`log_events` \| list \| `\[\]` \| `\{%s\}`" % ", ".join(autoexp.LOG_EVENT_KEYS), SPEC)


def _schema_rows(label, schema):
    rows = table(label)
    assert [ticked(r[0]) for r in rows] == [k.name for k in schema]
    for row, key in zip(rows, schema):
        assert row[2].strip("`").startswith(json.dumps(key.default)), (key.name, row[2])
        if key.nullable:
            assert "null" in row[1], key.name
    return rows


def test_notify_keys_and_defaults():
    _schema_rows("notify key", autoexp.NOTIFY_SCHEMA)
    rows = _schema_rows("target key", autoexp.NOTIFY_TARGET_SCHEMA)
    fmt = [r for r in rows if ticked(r[0]) == "format"][0]
    assert re.findall(r"`([a-z]+)`", fmt[1]) == list(autoexp.WEBHOOK_FORMATS)
    assert "exactly one of %s" % ", ".join("`%s`" % k for k in autoexp.NOTIFY_TARGET_KINDS) in SPEC
    assert [r for r in table("key") if ticked(r[0]) == "notify.*"][0][3].startswith("section 5.6")
    spec = dict((ticked(r[0]), r) for r in table("notify key"))
    assert "at most %d" % autoexp.MAX_NOTIFY_TARGETS in spec["targets"][3]
    assert "at most %g" % autoexp.MAX_NOTIFY_SECONDS in spec["timeout_seconds"][1]
    assert json.dumps(list(autoexp.NOTIFY_DEFAULT_EVENTS)) in spec["events"][2]


def test_notify_exit_codes():
    rows = table("_notify exit")
    assert sorted(int(r[0]) for r in rows) == sorted(autoexp.NOTIFY_EXITS)
    assert (autoexp.NOTIFY_DELIVERED, autoexp.NOTIFY_PERMANENT, autoexp.NOTIFY_RETRY) == (0, 1, 75)

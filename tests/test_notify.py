"""Notifications (SPEC 5.6): the notify config, secrets, redaction, the message functions
(table tests) and `autoexp _notify` delivering to a real HTTP server on 127.0.0.1, a fake
sendmail and a command. Retries and exactly-once are the effect engine's (not here)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn

import helpers
from helpers import BOOT, autoexp, refused, resolve

pytestmark = pytest.mark.timeout(120)

TOKEN = "T0KEN-S3CRET-xyz"  # the secret part of every test webhook URL: never printed


# -- a webhook receiver on 127.0.0.1 --------------------------------------------------------

class Hook(ThreadingMixIn, HTTPServer):
    """Answers by path: /ok/... 200, /status/N/... N (with a body naming the URL), /hang/...
    never (until the test ends). Records every request it read: (path, headers, JSON body)."""
    daemon_threads = True

    def __init__(self):
        HTTPServer.__init__(self, ("127.0.0.1", 0), Handler)
        self.requests = []
        self.release = threading.Event()
        self.fail_first = {}  # path -> how many of its first POSTs get a 500

    def url(self, path):
        return "http://127.0.0.1:%d/%s/%s" % (self.server_address[1], path.strip("/"), TOKEN)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.path, dict(self.headers), json.loads(body.decode("utf-8"))))
        parts = self.path.strip("/").split("/")
        if parts[0] == "hang":
            self.server.release.wait(60)
            return
        status = int(parts[1]) if parts[0] == "status" else 200
        if self.server.fail_first.get(self.path):
            self.server.fail_first[self.path] -= 1
            status = 500
        answer = ("ok" if status == 200 else "no such hook: http://127.0.0.1%s (path %s)" % (
            self.path, self.path)).encode()
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:%d/ok/elsewhere" % self.server.server_address[1])
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def hook():
    server = Hook()
    thread = threading.Thread(target=server.serve_forever)
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- sessions and the CLI ------------------------------------------------------------------

EVENTS = [
    {"seq": 7, "time": "2024-05-01T10:00:00.000Z", "session": "n", "job": "n-s1", "attempt": 1,
     "job_id": "101", "event": "finalized", "mode": "success"},
    {"seq": 9, "time": "2024-05-01T10:01:00.000Z", "session": "n", "job": "n-s2", "attempt": 2,
     "job_id": "105", "event": "stopped", "mode": "oom", "detail": "a <b> & c"},
    {"seq": 12, "time": "2024-05-01T10:02:00.000Z", "session": "n", "job": "n_s3", "attempt": 1,
     "job_id": "107", "event": "blocked", "mode": "blocked", "detail": "QOSMaxWallDurationPerJobLimit"},
]


def config(notify, **extra):
    cfg = {"project": "n", "sweep": {"seed": [1, 2]},
           "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
           "notify": notify}
    cfg.update(extra)
    return cfg


def make_session(tmp_path, notify, **extra):
    """A planned session whose config has this notify section; returns its state folder."""
    root = str(tmp_path)
    path = helpers.write_config(os.path.join(root, "cfg.json"), config(notify, **extra))
    state_dir = os.path.join(root, "state")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert autoexp.main(["-q", "--state-dir", state_dir, "plan", path, "--plan-id", "n"]) == 0
    finally:
        os.chdir(cwd)
    store = autoexp.StateStore(state_dir)
    s = store.create_session(autoexp.load_manifest(store.plan_manifest("n")), time.time())
    store.save(s, time.time(), flush=True)
    return state_dir


def notify_cli(state_dir, target, events, env=None, session="n"):
    """`autoexp _notify` as the engine's worker runs it: (exit, stdout, stderr, seconds)."""
    argv = [sys.executable, "-c", BOOT, "--state-dir", state_dir, "_notify", "--session", session,
            "--target", target]
    data = events if isinstance(events, bytes) else json.dumps(events).encode()
    start = time.time()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, **(env or {})))
    out, err = p.communicate(data, timeout=60)
    return p.returncode, out.decode(), err.decode(), time.time() - start


def no_secret(*texts):
    for text in texts:
        assert TOKEN not in text, text


# -- payloads: a real POST per format ------------------------------------------------------

def test_slack_mattermost_and_generic_payloads_are_posted(tmp_path, hook):
    state = make_session(tmp_path, {"targets": {
        "s": {"webhook": hook.url("ok/slack"), "format": "slack"},
        "m": {"webhook": hook.url("ok/mm"), "format": "mattermost"},
        "g": {"webhook": hook.url("ok/gen"), "format": "generic"}}})
    got = {}
    for target in ("s", "m", "g"):
        rc, out, err, _ = notify_cli(state, target, EVENTS[1:2])
        assert rc == 0, err
        assert "delivered 1 event(s) to %s" % target in out and "HTTP 200" in out
        no_secret(out, err)
        path, headers, body = hook.requests[-1]
        assert path.endswith(TOKEN) and headers["Content-Type"].startswith("application/json")
        got[target] = body
    assert got["s"] == {"text": "autoexp n: n-s2 #2 (105) stopped oom\n```\n"
                                "n-s2 #2 (105) stopped oom: a &lt;b&gt; &amp; c\n```"}
    assert got["m"] == {"text": "autoexp n: n-s2 #2 (105) stopped oom\n```\n"
                                "n-s2 #2 (105) stopped oom: a <b> & c\n```", "username": "autoexp"}
    assert got["g"] == {"source": "autoexp", "session": "n", "target": "g",
                        "subject": "autoexp n: n-s2 #2 (105) stopped oom",
                        "text": "autoexp n: n-s2 #2 (105) stopped oom\nn-s2 #2 (105) stopped oom: a <b> & c",
                        "count": 1, "events": EVENTS[1:2]}


def test_digest_of_three_events_is_one_post(tmp_path, hook):
    state = make_session(tmp_path, {"digest": True, "targets": {"g": {"webhook": hook.url("ok/d"),
                                                                       "format": "generic"}}})
    batches = autoexp.notify_batches([("g", ev) for ev in EVENTS], True)
    assert len(batches) == 1 and batches[0][0] == "g" and batches[0][1] == EVENTS
    rc, out, err, _ = notify_cli(state, "g", batches[0][1])
    assert rc == 0, err
    assert len(hook.requests) == 1
    body = hook.requests[0][2]
    assert body["count"] == 3 and body["events"] == EVENTS
    assert body["subject"] == "autoexp n: 3 events: 1 finalized, 1 stopped, 1 blocked"
    assert body["text"].splitlines()[1:] == [
        "n-s1 #1 (101) finalized success", "n-s2 #2 (105) stopped oom: a <b> & c",
        "n_s3 #1 (107) blocked: QOSMaxWallDurationPerJobLimit"]


# -- what an answer means: 0 delivered, 75 again, 1 never ------------------------------------

@pytest.mark.parametrize("status, code", [(500, 75), (503, 75), (429, 75), (404, 1), (400, 1), (302, 1)])
def test_http_status_decides_the_exit(tmp_path, hook, status, code):
    state = make_session(tmp_path, {"targets": {"h": {"webhook": hook.url("status/%d" % status)}}})
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1])
    assert rc == code
    assert "HTTP %d" % status in err and out == ""
    assert ("will be retried" in err) == (code == 75)
    assert len(hook.requests) == 1  # a redirect is not followed
    no_secret(out, err)  # the server's answer named the whole URL and its path


def test_server_that_never_answers_is_retryable_within_the_timeout(tmp_path, hook):
    state = make_session(tmp_path, {"timeout_seconds": 1, "targets": {"h": {"webhook": hook.url("hang")}}})
    rc, out, err, seconds = notify_cli(state, "h", EVENTS[:1])
    assert rc == 75 and len(hook.requests) == 1
    assert seconds < 8, seconds  # 1 s of timeout, plus a Python start-up
    no_secret(out, err)


def test_listener_that_never_accepts_is_retryable(tmp_path):
    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    quiet.listen(8)  # the kernel completes the connect; nobody ever reads the request
    try:
        url = "http://127.0.0.1:%d/x/%s" % (quiet.getsockname()[1], TOKEN)
        state = make_session(tmp_path, {"timeout_seconds": 1, "targets": {"h": {"webhook": url}}})
        rc, out, err, seconds = notify_cli(state, "h", EVENTS[:1])
    finally:
        quiet.close()
    assert rc == 75 and seconds < 8
    no_secret(out, err)


def test_refused_connection_is_retryable(tmp_path):
    url = "http://127.0.0.1:%d/x/%s" % (free_port(), TOKEN)
    state = make_session(tmp_path, {"targets": {"h": {"webhook": url}}})
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1])
    assert rc == 75
    assert "cannot connect" in err and "http://127.0.0.1:%s/***" % url.split(":")[2].split("/")[0] in err
    no_secret(out, err)


def test_bad_target_stdin_and_empty_list(tmp_path, hook):
    state = make_session(tmp_path, {"targets": {"h": {"webhook": hook.url("ok")}}})
    rc, out, err, _ = notify_cli(state, "nope", EVENTS)
    assert rc == 1 and "has no notify target 'nope' (targets: h)" in err
    rc, out, err, _ = notify_cli(state, "h", b"{not json")
    assert rc == 1 and "not a JSON list of events" in err
    rc, out, err, _ = notify_cli(state, "h", [1, 2])
    assert rc == 1 and "list of event objects" in err
    rc, out, err, _ = notify_cli(state, "h", [])
    assert rc == 0 and hook.requests == []
    rc, out, err, _ = notify_cli(state, "h", EVENTS, session="other")
    assert rc == 1 and "no session 'other'" in err


# -- secrets ---------------------------------------------------------------------------------

def test_webhook_from_environment_variable(tmp_path, hook):
    state = make_session(tmp_path, {"targets": {"h": {"webhook_env": "AX_HOOK_URL"}}})
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1], env={"AX_HOOK_URL": hook.url("ok/env")})
    assert rc == 0 and hook.requests[0][0].startswith("/ok/env/")
    no_secret(out, err)
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1], env={"AX_HOOK_URL": ""})
    assert rc == 1 and "environment variable AX_HOOK_URL (webhook_env) is not set" in err


def test_webhook_file_private_only(tmp_path, hook):
    secret = tmp_path / "hook-url"
    secret.write_text(hook.url("ok/file") + "\n")
    os.chmod(str(secret), 0o600)
    state = make_session(tmp_path, {"targets": {"h": {"webhook_file": str(secret)}}})
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1])
    assert rc == 0 and hook.requests[0][0].startswith("/ok/file/")
    no_secret(out, err)
    # readable by others later: refused at delivery, saying how to fix it
    os.chmod(str(secret), 0o644)
    rc, out, err, _ = notify_cli(state, "h", EVENTS[:1])
    assert rc == 1 and "can be read by others (mode 0644)" in err and "chmod 600 %s" % secret in err
    assert len(hook.requests) == 1
    # and at plan time
    msg = refused(config({"targets": {"h": {"webhook_file": str(secret)}}}), "notify.targets.h.webhook_file",
                  "mode 0644", "chmod 600")
    no_secret(msg)
    os.chmod(str(secret), 0o640)
    refused(config({"targets": {"h": {"webhook_file": str(secret)}}}), "mode 0640")
    refused(config({"targets": {"h": {"webhook_file": str(tmp_path / "missing")}}}), "No such file", "chmod 600")
    secret.write_text("not a url\n")
    os.chmod(str(secret), 0o600)
    refused(config({"targets": {"h": {"webhook_file": str(secret)}}}), "is not an http:// or https:// URL")


# -- email and command -----------------------------------------------------------------------

FAKE_MAILER = """#!/bin/sh
printf '%%s\\n' "$@" > "%(dir)s/argv"
cat > "%(dir)s/stdin"
%(tail)s
"""


def fake_mailer(folder, name, tail="exit 0"):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(FAKE_MAILER % {"dir": str(folder), "tail": tail})
    os.chmod(str(path), 0o755)
    return str(folder)


def test_email_through_sendmail(tmp_path):
    bin_dir = fake_mailer(tmp_path / "bin", "sendmail")
    state = make_session(tmp_path, {"targets": {"mail": {"email": ["a@example.org", "b.c+x@example.org"]}}})
    rc, out, err, _ = notify_cli(state, "mail", EVENTS, env={"PATH": bin_dir + os.pathsep + os.environ["PATH"]})
    assert rc == 0, err
    assert "delivered 3 event(s) to mail: sendmail to a@example.org, b.c+x@example.org: exit 0" in out
    with open(os.path.join(bin_dir, "argv")) as f:
        assert f.read().split() == ["-t", "-oi"]  # recipients come from the headers, never argv
    with open(os.path.join(bin_dir, "stdin")) as f:
        mail = f.read()
    head, _, body = mail.partition("\n\n")
    assert "To: a@example.org, b.c+x@example.org" in head.splitlines()
    assert "Subject: autoexp n: 3 events: 1 finalized, 1 stopped, 1 blocked" in head.splitlines()
    assert "Auto-Submitted: auto-generated" in head.splitlines()
    assert "n-s2 #2 (105) stopped oom: a <b> & c" in body


@pytest.mark.parametrize("tail, code", [("exit 75", 75), ("exit 67", 1), ("sleep 30", 75)])
def test_sendmail_failures(tmp_path, tail, code):
    bin_dir = fake_mailer(tmp_path / "bin", "sendmail", tail)
    target = autoexp.make_notify(resolve(config({"targets": {"m": {"email": "a@example.org"}}}))["notify"])
    start = time.time()
    d = autoexp.deliver("m", target["targets"]["m"], "n", EVENTS[:1], 1.0,
                        env=dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"]))
    assert d.code == code, d
    assert time.time() - start < 5
    if tail.startswith("sleep"):
        assert "timed out after 1s" in d.message


def test_mail_when_no_sendmail_and_neither(tmp_path, monkeypatch):
    monkeypatch.setattr(autoexp, "MAILER_DIRS", ())
    bin_dir = fake_mailer(tmp_path / "bin", "mail")
    t = {"email": ["a@example.org"], "command": None}
    d = autoexp.deliver("m", t, "n", EVENTS[:1], 5.0, env={"PATH": bin_dir + os.pathsep + "/bin:/usr/bin"})
    assert d.code == 0, d
    with open(os.path.join(bin_dir, "argv")) as f:
        assert f.read().splitlines() == ["-s", "autoexp n: n-s1 #1 (101) finalized success", "a@example.org"]
    with open(os.path.join(bin_dir, "stdin")) as f:
        assert "n-s1 #1 (101) finalized success" in f.read()
    d = autoexp.deliver("m", t, "n", EVENTS[:1], 5.0, env={"PATH": str(tmp_path / "empty")})
    assert d.code == 1 and "neither sendmail nor mail is installed here" in d.message


def test_command_target(tmp_path):
    out_file = tmp_path / "got.json"
    state = make_session(tmp_path, {"targets": {
        "c": {"command": "cat > %s; echo \"$AUTOEXP_NOTIFY_TARGET $AUTOEXP_NOTIFY_COUNT $AUTOEXP_SESSION\"" % out_file},
        "again": {"command": "echo see https://hooks.example.org/%s; exit 75" % TOKEN},
        "broken": {"command": "exit 3"}}})
    rc, out, err, _ = notify_cli(state, "c", EVENTS)
    assert rc == 0, err
    assert "command of target c: exit 0; output: c 3 n" in out
    doc = json.loads(out_file.read_text())
    assert doc["events"] == EVENTS and doc["count"] == 3 and doc["target"] == "c"
    rc, out, err, _ = notify_cli(state, "again", EVENTS)
    assert rc == 75 and "https://hooks.example.org/***" in err
    no_secret(out, err)
    rc, out, err, _ = notify_cli(state, "broken", EVENTS)
    assert rc == 1 and "exit 3" in err


# -- redaction -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("https://hooks.slack.com/services/T0/B0/%s" % TOKEN, "https://hooks.slack.com/***"),
    ("see http://u:pw@127.0.0.1:8080/x?k=%s." % TOKEN, "see http://127.0.0.1:8080/***."),
    ("POST to http://h:9/***: refused", "POST to http://h:9/***: refused"),
    ("http://host.org", "http://host.org"),
    ("no url here", "no url here"),
])
def test_redact_table(text, want):
    assert autoexp.redact(text) == want


def test_redact_known_secret_path_alone():
    url = "https://h.example.org/services/%s" % TOKEN
    assert autoexp.redact("bad path /services/%s and %s" % (TOKEN, url), [url]) == \
        "bad path /*** and https://h.example.org/***"


def test_inline_url_never_in_status_history_report_or_errors(tmp_path, hook):
    url = hook.url("ok")
    state = make_session(tmp_path, {"targets": {"h": {"webhook": url}}})
    report = str(tmp_path / "r.html")
    outs = []
    for argv in (["status"], ["status", "--json"], ["history", "--session", "n", "--json"],
                 ["report", "--session", "n", "-o", report]):
        p = subprocess.Popen([sys.executable, "-c", BOOT, "--state-dir", state] + argv,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs += [out.decode(), err.decode()]
    with open(report) as f:
        html = f.read()
    assert "127.0.0.1:%d/***" % hook.server_address[1] in html
    no_secret(html, *outs)
    # a malformed URL is refused without being echoed
    msg = refused(config({"targets": {"h": {"webhook": "ftp://x/" + TOKEN}}}), "notify.targets.h.webhook",
                  "ftp://x/***", "is not an http:// or https:// URL")
    no_secret(msg)


# -- config ---------------------------------------------------------------------------------

def test_config_defaults():
    cfg = resolve(config({"targets": {"h": {"webhook_env": "HOOK"}}}))
    assert cfg["notify"] == {"targets": {"h": {"webhook": None, "webhook_env": "HOOK", "webhook_file": None,
                                               "email": None, "command": None, "format": "slack",
                                               "events": None}},
                             "events": ["finalized", "stopped", "blocked"], "digest": False, "timeout_seconds": 10,
                                 "retries": 5, "backoff_seconds": 30}
    plain = config({})
    del plain["notify"]
    assert "notify" not in resolve(plain)  # a plan without notify says nothing of it
    assert autoexp.make_notify(None)["targets"] == {}


@pytest.mark.parametrize("notify, words", [
    ({"targets": {"h": {}}}, ["give exactly one of webhook, webhook_env, webhook_file, email, command", "none"]),
    ({"targets": {"h": {"webhook_env": "A", "command": "x"}}}, ["given: webhook_env, command"]),
    ({"targets": {"h": {"webhook_env": "A", "format": "teams"}}}, ["format", "slack/mattermost/generic"]),
    ({"targets": {"h": {"command": "x", "format": "slack"}}}, ["format", "webhooks only"]),
    ({"targets": {"h": {"webhook_env": "1A"}}}, ["webhook_env", "not an environment variable name"]),
    ({"targets": {"h": {"email": "-oQ/tmp@x.org"}}}, ["email", "not an address"]),
    ({"targets": {"h": {"email": []}}}, ["email", "1 to 16"]),
    ({"targets": {"h": {"email": "a@b.org", "colour": 1}}}, ["notify.targets.h.colour", "unknown key"]),
    ({"targets": {"h/x": {"command": "x"}}}, ["safe name"]),
    ({"targets": dict(("t%d" % i, {"command": "x"}) for i in range(33))}, ["at most 32"]),
    ({"events": ["finalised"]}, ["notify.events", "'finalised' is not an event kind"]),
    ({"events": "finalized"}, ["notify.events", "must be a list"]),
    ({"targets": {"h": {"command": "x", "events": ["log:nope"]}}}, ["notify.targets.h.events", "log:nope"]),
    ({"timeout_seconds": 0}, ["timeout_seconds", "greater than 0"]),
    ({"timeout_seconds": 301}, ["timeout_seconds", "at most 300"]),
    ({"digest": "yes"}, ["digest", "true or false"]),
    ({"target": {}}, ["notify.target", "unknown key"]),
    ({"events": ["finalized", "notify_failed"]}, ["notify.events", "'notify_failed'", "notify nobody"]),
    ({"targets": {"h": {"command": "x", "events": ["notify_sent"]}}}, ["notify.targets.h.events", "notify nobody"]),
    ({"retries": -1}, ["notify.retries", "at least 0"]),
    ({"backoff_seconds": float("nan")}, ["notify.backoff_seconds"]),
])
def test_config_refused(notify, words):
    refused(config(notify), *words)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://[::1/x", "http://:80/x"])
def test_a_webhook_url_that_cannot_be_posted_to_is_refused(url):
    refused(config({"targets": {"h": {"webhook": url}}}), "notify.targets.h.webhook")


def test_on_may_act_on_the_termination_strings_event():
    cfg = config({"targets": {"team": {"command": "true"}}}, on=[{"event": "log:success", "notify": "team"}])
    assert resolve(cfg)["on"][0]["event"] == "log:success"


def test_an_on_rule_must_name_a_target():
    cfg = config({"targets": {"team": {"command": "true"}}}, on=[{"event": "stopped", "notify": "tema"}])
    refused(cfg, "on[0].notify", "'tema' is not a target of notify.targets (team)")


def test_log_event_kinds_may_notify():
    cfg = config({"events": ["finalized", "log:success", "log:ckpt"]},
                 monitoring={"log_events": [{"name": "ckpt", "pattern": "saved", "mode": "success"}]})
    assert resolve(cfg)["notify"]["events"] == ["finalized", "log:success", "log:ckpt"]


# -- the pure functions, from tables ----------------------------------------------------------

@pytest.mark.parametrize("status, code", [
    (200, 0), (201, 0), (204, 0), (301, 1), (302, 1), (400, 1), (401, 1), (403, 1), (404, 1), (410, 1),
    (408, 75), (425, 75), (429, 75), (500, 75), (502, 75), (503, 75), (504, 75), (599, 75), (100, 1)])
def test_http_verdict(status, code):
    assert autoexp.http_verdict(status) == code


@pytest.mark.parametrize("rc, timed_out, code", [
    (0, False, 0), (75, False, 75), (1, False, 1), (67, False, 1), (-9, True, 75), (0, True, 75), (-15, False, 1)])
def test_exit_verdict(rc, timed_out, code):
    assert autoexp.exit_verdict(rc, timed_out) == code


def test_notify_targets_by_event_kind():
    n = resolve(config({"events": ["finalized", "stopped"], "targets": {
        "all": {"command": "x"}, "only_blocked": {"command": "x", "events": ["blocked"]},
        "none": {"command": "x", "events": []}}}))["notify"]
    assert autoexp.notify_targets(n, "finalized") == ["all"]
    assert autoexp.notify_targets(n, "blocked") == ["only_blocked"]
    assert autoexp.notify_targets(n, "submitted") == []


A, B, C = EVENTS


@pytest.mark.parametrize("items, digest, want", [
    ([], True, []),
    ([("x", A), ("x", B), ("x", C)], False, [("x", [A]), ("x", [B]), ("x", [C])]),
    ([("x", A), ("x", B), ("x", C)], True, [("x", [A, B, C])]),
    ([("x", A), ("y", A), ("x", B), ("y", C)], True, [("x", [A, B]), ("y", [A, C])]),
    ([("y", B), ("x", A), ("y", C)], True, [("y", [B, C]), ("x", [A])]),
    ([("x", A), ("x", A), ("x", B)], True, [("x", [A, B])]),   # by notify.events and by a rule: once
    ([("x", A), ("x", A)], False, [("x", [A])]),
])
def test_notify_batches(items, digest, want):
    assert autoexp.notify_batches(items, digest) == want


def test_long_digest_is_cut_to_bounded_text():
    many = [dict(A, seq=i, job="j%d" % i) for i in range(autoexp.MAX_NOTIFY_LINES + 30)]
    lines = autoexp.notify_lines(many)
    assert len(lines) == autoexp.MAX_NOTIFY_LINES + 1 and lines[-1].startswith("... and 30 more event(s)")
    body = autoexp.notify_payload("generic", "g", "n", many * 20)
    assert len(body["events"]) == autoexp.MAX_NOTIFY_EVENTS and body["count"] == len(many) * 20
    long = dict(A, detail="x" * 5000 + "\x1b[31m")
    assert len(autoexp.notify_lines([long])[0]) == 500
    assert "\x1b" not in autoexp.notify_lines([dict(A, detail="a\x1b[31mb\nc")])[0]


# -- end to end: a sweep's own journal events, delivered ----------------------------------------

@pytest.mark.slow
def test_sweep_events_reach_the_webhook_as_one_digest(project, hook):
    """A sweep run on the fake SLURM with notify.digest: the events of notify.events that
    one pass saw go out to the target as one POST, delivered by the engine's worker through
    _notify; a target with its own events hears nothing of the others."""
    cfg = helpers.sweep_config("nt", "echo seed {seed}; echo TRAINING FINISHED", (1, 2), {"lost_after_seconds": 15},
                               interval_seconds=1)
    cfg["notify"] = {"digest": True, "targets": {"team": {"webhook_env": "AX_TEAM_HOOK", "format": "generic"},
                                                "quiet": {"command": "echo heard >> quiet.txt",
                                                          "events": ["blocked"]}}}
    # both jobs end in the same second, so one cycle sees both
    cfg["job"]["command"] = "sleep 1; echo TRAINING FINISHED"
    res = project.ok("run", project.config(cfg), "--plan-id", "nt", env={"AX_TEAM_HOOK": hook.url("ok/team")})
    no_secret(res.stdout, res.stderr)
    journal = helpers.read_events(project.state_dir, "nt")
    finalized = sorted(ev["job"] for ev in journal if ev["event"] == "finalized")
    assert finalized == ["nt-s1", "nt-s2"]
    sent = [ev for ev in journal if ev["event"] == "notify_sent"]
    bodies = [r[2] for r in hook.requests]
    assert len(bodies) == len(sent) and 1 <= len(bodies) <= 2, bodies
    assert sorted((ev["job"], ev["event"]) for b in bodies for ev in b["events"]) == [
        ("nt-s1", "finalized"), ("nt-s2", "finalized")]  # each event once, whichever message has it
    assert all(b["session"] == "nt" and b["count"] == len(b["events"]) for b in bodies)
    assert not os.path.exists(os.path.join(project.root, "quiet.txt"))
    text = project.ok("history", "--session", "nt", "--json").stdout + project.ok("status", "--all").stdout
    no_secret(text, "")


@pytest.mark.slow
def test_each_event_its_own_message_and_a_500_retried(project, hook):
    """Without digest each event of notify.events is one message; a receiver that answers
    500 to the first POST gets the message again after the backoff, once."""
    cfg = helpers.sweep_config("nr", "echo TRAINING FINISHED", (1,), {"lost_after_seconds": 15})
    cfg["notify"] = {"targets": {"team": {"webhook": hook.url("flaky/team"), "format": "slack"}},
                     "events": ["submitted", "finalized"], "backoff_seconds": 0.5}
    hook.fail_first = {"/flaky/team/" + TOKEN: 1}
    res = project.ok("run", project.config(cfg), "--plan-id", "nr")
    no_secret(res.stdout, res.stderr)
    texts = [r[2]["text"] for r in hook.requests]
    # the first POST (whichever event it carried) got the 500 and came again; the other once
    assert len(texts) == 3 and texts.count(texts[0]) == 2, texts
    assert sorted([sum("submitted" in t for t in texts), sum("finalized" in t for t in texts)]) == [1, 2], texts
    journal = helpers.read_events(project.state_dir, "nr")
    assert [ev["event"] for ev in journal if ev["event"].startswith("notify_")] .count("notify_sent") == 2
    retry = [ev for ev in journal if ev["event"] == "action_retry"]
    assert len(retry) == 1 and "exited 75" in retry[0]["detail"], retry


@pytest.mark.slow
def test_every_target_of_an_event_gets_its_own_message(project):
    """Two targets hear of the same events: each effect is its own (its own files), so each
    target gets each message, and what is recorded for one is its own result."""
    cfg = helpers.sweep_config("mt", "echo TRAINING FINISHED", (1, 2), {"lost_after_seconds": 15})
    cfg["notify"] = {"targets": {"a": {"command": "cat >> a.jsonl; echo >> a.jsonl"},
                                 "b": {"command": "cat >> b.jsonl; echo >> b.jsonl"},
                                 "broken": {"command": "exit 1"}}}
    project.ok("run", project.config(cfg), "--plan-id", "mt")
    for target in ("a", "b"):
        with open(os.path.join(project.root, target + ".jsonl")) as f:
            msgs = [json.loads(line) for line in f if line.strip()]
        assert sorted(ev["job"] for m in msgs for ev in m["events"]) == ["mt-s1", "mt-s2"]
        assert all(m["target"] == target for m in msgs)
    journal = helpers.read_events(project.state_dir, "mt")
    sent = sorted(ev["detail"].split(":")[0] for ev in journal if ev["event"] == "notify_sent")
    failed = [ev for ev in journal if ev["event"] == "notify_failed"]
    assert sent == ["on finalized #notify notify a"] * 2 + ["on finalized #notify notify b"] * 2, sent
    assert len(failed) == 2 and all("broken" in ev["detail"] for ev in failed)

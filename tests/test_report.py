"""`autoexp report`: one self-contained HTML file, read with an HTML parser (well formed,
every job and attempt there, no script, nothing external, user data escaped) and, where
Chromium is installed, rendered by a real headless browser."""

import json
import os
import shutil
import stat
import subprocess

from html.parser import HTMLParser

import pytest

import helpers

HOSTILE = '<script>alert(1)</script>" onmouseover="x'
VOID = {"meta", "br", "img", "hr", "input", "link"}


class Checker(HTMLParser):
    """Collects tags and attributes, and checks that every element is closed in order."""

    def __init__(self):
        HTMLParser.__init__(self, convert_charrefs=True)
        self.stack, self.tags, self.errors, self.attrs, self.text = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append("</%s> closes %s" % (tag, self.stack[-1:] or "nothing"))
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text):
    c = Checker()
    c.feed(text)
    c.close()
    assert not c.errors and not c.stack, (c.errors, c.stack)
    return c


@pytest.fixture
def reported(project, fake, tmp_path):
    """A session of two jobs: s1 times out once then succeeds, s2 succeeds; a hostile
    parameter in each, a log line holding markup."""
    fake.add_rule(name="rep-s1", action="TIMEOUT", nth=1, after=1.5)
    cmd = ('if [ "$AUTOEXP_ATTEMPT" = 1 ] && [ {seed} = 1 ]; then sleep 30; fi; '
           "echo '<img src=http://evil.example/x.png> WARN'; sleep 0.3; echo TRAINING FINISHED")
    cfg = helpers.sweep_config("rep", cmd, (1, 2), {"lost_after_seconds": 15})
    cfg["sweep"]["note"] = [HOSTILE]
    cfg["monitoring"]["log_events"] = [{"name": "warned", "pattern": "WARN", "mode": "crash"}]
    cfg["restart"]["crash"] = {"action": "ignore"}
    cfg["job"]["sbatch"] = {"gres": "gpu:1"}
    project.ok("run", project.config(cfg), "--plan-id", "rep")
    out = str(tmp_path / "report.html")
    res = project.ok("report", "--session", "rep", "-o", out)
    assert res.stdout.strip() == out
    with open(out, "rb") as f:
        text = f.read().decode("utf-8")
    return out, text, project.history("rep")


def test_report_is_well_formed_and_self_contained(reported):
    out, text, history = reported
    c = parse(text)
    assert "script" not in c.tags and "iframe" not in c.tags and "link" not in c.tags
    for tag, attrs in c.attrs:
        for name in ("src", "href"):
            assert name not in attrs, (tag, attrs)  # nothing fetched: opens after scp, offline
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
    jobs = dict((j["name"], j) for j in history["jobs"])
    assert [a["outcome"] for a in jobs["rep-s1"]["attempts"]] == ["timeout", "success"]
    # every job and every attempt: a bar in the timeline and a row in the table
    rows = set((a.get("data-job"), a.get("data-attempt")) for t, a in c.attrs if t == "tr" and "data-job" in a)
    want = set((name, str(a["attempt"])) for name, j in jobs.items() for a in j["attempts"])
    assert rows == want and len(want) == 3
    bars = [a for t, a in c.attrs if t == "div" and a.get("class") == "bar"]
    assert len(bars) == 3 and any("timeout" in b["title"] for b in bars)
    body = "".join(c.text)
    assert "Session rep" in body and "Timeline" in body and "Events" in body and "Parameters" in body
    assert "used " in body and "wasted " in body  # the cost, in words


def test_report_escapes_user_data(reported):
    out, text, _ = reported
    assert HOSTILE not in text and "<img" not in text and "<script" not in text
    c = parse(text)
    body = "".join(c.text)
    assert json.dumps(HOSTILE) in body  # shown as text: the parameters, as JSON
    assert "<img src=http://evil.example/x.png> WARN" in body  # the log line, in the events


def test_report_reads_only_and_needs_an_output(project, fake, tmp_path):
    res = project.cli("report", "--session", "nosuch", "-o", str(tmp_path / "r.html"))
    assert res.returncode == 2 and "Error:" in res.stderr
    assert not os.path.exists(str(tmp_path / "r.html"))


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium or chromium-browser on PATH")
def test_report_renders_in_a_headless_browser(reported, tmp_path):
    out, _, _ = reported
    png = str(tmp_path / "shot.png")
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                          "--screenshot=" + png, "file://" + out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=120)
    assert os.path.exists(png), res.stderr[-2000:]
    with open(png, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000  # a page drawn, not a blank


def test_report_replaces_only_a_report_it_wrote(tmp_path, monkeypatch, capsys):
    """-o is renamed over: never a file of the state folder (even through a symlink), a fifo,
    a folder or a file that is not a report; a symlink to a report is written through."""
    h = helpers.Harness(tmp_path, helpers.controller_config(), names=[helpers.A])
    h.cycle()
    header = h.session.path
    before = open(header, "rb").read()
    fifo, folder, other = str(tmp_path / "fifo"), str(tmp_path / "dir"), str(tmp_path / "notes.txt")
    os.mkfifo(fifo)
    os.mkdir(folder)
    with open(other, "w") as f:
        f.write("my notes\n")
    into_state = str(tmp_path / "link-to-header.html")
    os.symlink(header, into_state)
    for path, words in ((header, "inside the state folder"), (into_state, "inside the state folder"),
                        (fifo, "not a regular file"), (folder, "not a regular file"),
                        (other, "not a report autoexp wrote")):
        code, out = helpers.run_main(h, ["report", "--session", "p1", "-o", path], monkeypatch, capsys)
        assert code == 2 and words in out.err and "give -o" in out.err and "Traceback" not in out.err, (path, out)
    assert open(header, "rb").read() == before and os.path.islink(into_state)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.isdir(folder) and open(other).read() == "my notes\n"
    # a new file, then the same again, then through a symlink: the link stays, its target is the report
    real = str(tmp_path / "r.html")
    for _ in range(2):
        code, out = helpers.run_main(h, ["report", "--session", "p1", "-o", real], monkeypatch, capsys)
        assert code == 0 and out.out.strip() == real
    link = str(tmp_path / "latest.html")
    os.symlink(real, link)
    h.clock.now += 100
    code, out = helpers.run_main(h, ["report", "--session", "p1", "-o", link], monkeypatch, capsys)
    assert code == 0 and os.path.islink(link) and os.readlink(link) == real
    assert "<title>autoexp report: p1</title>" in open(real).read()


def test_report_shows_control_characters_escaped_as_status_does(tmp_path, monkeypatch, capsys):
    """ESC, BEL and a bidi override from a log line and from the params reach the page as
    \\x1b, \\x07, \\u202e (what status prints), never raw."""
    h = helpers.Harness(tmp_path, helpers.controller_config(log_events=[{"name": "warned", "pattern": "WARN"}]),
                        names=[helpers.A])
    manifest = h.plan.manifest_path
    doc = json.load(open(manifest))
    doc["jobs"][0]["params"]["note"] = "n\x1b[2Jx\u202e"
    json.dump(doc, open(manifest, "w"))
    h.slurm.set(h.live_id(helpers.A), "RUNNING")
    h.cycle()
    h.log(helpers.A, "WARN \x1b[31mred\x07 \u202edesrever\n")
    h.cycle()
    out = str(tmp_path / "r.html")
    code, res = helpers.run_main(h, ["report", "--session", "p1", "-o", out], monkeypatch, capsys)
    assert code == 0, res
    text = open(out, encoding="utf-8").read()
    assert not [c for c in ("\x1b", "\x07", "\u202e") if c in text]
    assert "WARN \\x1b[31mred\\x07 \\u202edesrever" in text
    parse(text)

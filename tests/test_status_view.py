"""The operator's view, end to end through the CLI on the fake SLURM: status's filters
(--active by default over several sessions, --session, job globs, --status), its columns
(elapsed time, restart budget, sweep parameters), the per-session summary line, long values
shortened in the table and whole in --json; status --watch on a terminal and on a pipe;
monitor's start line and quiet summary; cancel -> cancelling; cancel without names refused;
--help's first lines."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import helpers
from helpers import BOOT, wait_for

pytestmark = pytest.mark.timeout(120)

LONG = "a-rather-long-folder-name-for-the-logs-of-this-sweep"


def config(seeds=(1, 2, 3), command="echo seed {seed}; sleep 30; echo TRAINING FINISHED", project="ov"):
    cfg = helpers.sweep_config(project, command, seeds, {"lost_after_seconds": 15})
    cfg["sweep"]["lr"] = [0.5]
    cfg["job"]["name"] = "{project}-s{seed}"
    cfg["job"]["log"] = LONG + "/{name}-%j.log"
    return cfg


def status(project, *args):
    return project.ok("status", *args)


def docs(project, *args):
    return json.loads(status(project, "--json", *args).stdout)["sessions"]


def lines_of(text):
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def two_sessions(project, fake):
    """Session `live`: s1 runs, s2 pends (Priority), s3 timed out once and runs again;
    session `old`: one job, finished."""
    project.ok("run", project.config(config(seeds=(9,), command="echo TRAINING FINISHED", project="old")),
               "--plan-id", "old")
    fake.add_pending(name="ov-s2", reason="Priority")
    fake.add_rule(name="ov-s3", action="TIMEOUT", nth=1, after=0.05)
    project.ok("plan", project.config(config()), "--plan-id", "live")
    project.ok("submit", "live")

    def settled():
        project.cli("reconcile", "--session", "live")
        jobs = dict((j["name"], j) for j in docs(project, "--session", "live")[0]["jobs"])
        return (jobs["ov-s1"]["slurm_state"] == "RUNNING" and jobs["ov-s2"]["slurm_state"] == "PENDING"
                and jobs["ov-s3"]["attempts"] == 2 and jobs["ov-s3"]["slurm_state"] == "RUNNING")
    wait_for(settled, timeout=60, interval=0.3, what="s1 running, s2 pending, s3 restarted")
    return project


def test_default_over_several_sessions_shows_the_active_ones_and_counts_the_others(two_sessions):
    out = status(two_sessions).stdout
    assert "session live" in out and "session old" not in out
    assert "1 other session(s) with no active job: `status --all` shows them" in out
    both = status(two_sessions, "--all").stdout
    assert "session live" in both and "session old" in both
    only_old = status(two_sessions, "--session", "old").stdout
    assert "session old" in only_old and "session live" not in only_old
    assert [d["session_id"] for d in docs(two_sessions, "--active")] == ["live"]
    assert sorted(d["session_id"] for d in docs(two_sessions, "--all")) == ["live", "old"]


def test_job_globs_and_status_filters(two_sessions):
    names = lambda *a: [j["name"] for d in docs(two_sessions, "--session", "live", *a) for j in d["jobs"]]
    assert names("ov-s[12]") == ["ov-s1", "ov-s2"]
    assert names("*3", "*1") == ["ov-s1", "ov-s3"]
    assert names("--status", "pending") == ["ov-s2"]
    assert names("--status", "running") == ["ov-s1", "ov-s3"]
    assert names("--status", "active") == ["ov-s1", "ov-s2", "ov-s3"]
    assert names("--status", "finalized") == []
    out = status(two_sessions, "--session", "live", "--status", "pending").stdout
    assert "1 of 3 job(s) match" in out and "ov-s2" in out and "ov-s1 " not in out
    bad = two_sessions.cli("status", "--status", "sleeping")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_columns_summary_line_and_shortening(two_sessions):
    out = status(two_sessions, "--session", "live").stdout
    lines = lines_of(out)
    summary = lines[0]
    assert re.match(r"session live \(project ov\), updated .*: 3 active \(2 running, 1 pending\); "
                    r"in SLURM: 2 RUNNING, 1 PENDING; used [0-9.]+ GPU-h, [0-9.]+ CPU-h; wasted .*$", summary), summary
    header = lines[1].split()
    assert header == ["JOB", "STATUS", "ATT", "BUDGET", "SLURM_ID", "SLURM_STATE", "ELAPSED", "MONITOR",
                      "LAST_EVENT", "PARAMS", "LOG", "REASON"]
    rows = dict((line.split()[0], line) for line in lines[2:5])
    assert "timeout 1/3" in rows["ov-s3"] and " 2 " in rows["ov-s3"]
    assert re.search(r"run \d+s", rows["ov-s1"]) and re.search(r"wait \d+s", rows["ov-s2"])
    assert "PENDING: Priority (jobs of higher priority are ahead of it)" in rows["ov-s2"]
    assert "lr=0.5,seed=1" in rows["ov-s1"]
    # the long log path is shortened to its end in the table, whole in --json
    jobs = dict((j["name"], j) for j in docs(two_sessions, "--session", "live")[0]["jobs"])
    full = jobs["ov-s1"]["log_path"]
    assert LONG in full and full not in out and len(full) > 60
    assert "..." + full[-45:] in rows["ov-s1"]
    # --json: the old fields as they were, and the new ones
    j3 = jobs["ov-s3"]
    assert j3["attempts"] == 2 and j3["budget"] == {"mode": "timeout", "used": 1, "allowed": 3}
    assert jobs["ov-s1"]["params"] == {"lr": 0.5, "seed": 1} and jobs["ov-s1"]["phase"] == "running"
    assert jobs["ov-s2"]["elapsed_kind"] == "pending" and jobs["ov-s1"]["elapsed_seconds"] >= 0
    d = docs(two_sessions, "--session", "live")[0]
    assert d["counts"] == {"active": 3} and d["slurm_counts"] == {"RUNNING": 2, "PENDING": 1}
    for key in ("name", "status", "attempts", "job_id", "last_job_id", "live", "slurm_state", "pending_reason",
                "monitor_state", "last_event", "log_path", "reason", "nodes", "excluded_nodes", "exclusion_note"):
        assert key in j3



def read_some(fd, timeout):
    """What fd has within timeout: b"" if nothing came, None once it is closed."""
    import select
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536) or None
    except OSError:  # a pseudo-terminal whose other end closed
        return None


def watch(project, as_tty, frames=2, *args):
    """Run `status --watch 1` on a pseudo-terminal or a pipe until `frames` frames came whole,
    then SIGINT it; (exit code, everything it wrote)."""
    import pty
    argv = [sys.executable, "-c", BOOT, "status", "--watch", "1"] + list(args)
    if as_tty:
        master, slave = pty.openpty()
        p = subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=slave, stderr=slave)
        os.close(slave)
        fd = master
    else:
        p = subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        fd = p.stdout.fileno()
    got = b""
    deadline = time.time() + 60
    try:
        while got.count(b"autoexp status --watch") <= frames and time.time() < deadline:
            chunk = read_some(fd, 1.0)
            if chunk is None:
                break
            got += chunk
        assert p.poll() is None, got  # still watching: it never ends by itself
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=30)
        while True:  # what it wrote last
            chunk = read_some(fd, 0.2)
            if not chunk:
                break
            got += chunk
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if as_tty:
            os.close(master)
        else:
            p.stdout.close()
    return code, got.decode("utf-8", "replace")


def test_watch_on_a_terminal_redraws_in_place_and_ends_with_0_on_ctrl_c(two_sessions, fake):
    calls = len(fake.calls())
    code, out = watch(two_sessions, True, 3)
    assert code == 0, out
    assert out.count("\x1b[H\x1b[2J") >= 3  # each frame clears the screen and starts at its top
    assert out.count("autoexp status --watch") >= 3
    assert re.search(r"live \[\.{20}\] 0/3 done, 2 running, 1 pending, 0 restarting, 0 failed, ETA -", out), out
    assert "session live" in out and "1 other session(s) with no active job" in out
    assert "Traceback" not in out and "Error" not in out
    assert len(fake.calls()) == calls  # it reads the state files only: SLURM was never asked


def test_watch_on_a_pipe_writes_plain_frames(two_sessions, fake):
    calls = len(fake.calls())
    code, out = watch(two_sessions, False, 2, "--all")
    assert code == 0, out
    assert "\x1b" not in out
    assert out.count("autoexp status --watch") >= 2 and out.count("session old") >= 2
    assert "old [####################] 1/1 done, 0 running, 0 pending, 0 restarting, 0 failed, ETA -" in out
    assert len(fake.calls()) == calls  # never a SLURM command


def test_watch_interval_is_bounded(project):
    for bad in ("0", "0.5", "3601", "nan", "x"):
        res = project.cli("status", "--watch", bad)
        assert res.returncode == 2 and "is not a number of seconds from 1 to 3600" in res.stderr, bad


def run_until(project, args, needle, seconds=30):
    """Run autoexp on a pipe until `needle` is in its output (or `seconds` passed), then
    SIGINT it; (exit code, output)."""
    import select
    p = subprocess.Popen([sys.executable, "-c", BOOT] + list(args), cwd=project.root, env=project.env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    got = b""
    deadline = time.time() + seconds
    try:
        while needle.encode() not in got and time.time() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                got += chunk
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
        return p.returncode, (got + rest).decode("utf-8", "replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_monitor_says_what_it_does_and_sums_up_when_nothing_happens(two_sessions):
    code, out = run_until(two_sessions, ["monitor", "--session", "live", "--interval", "0.2",
                                         "--summary-minutes", "0.02"], "no change in")
    assert code == 130, out
    start = out.splitlines()[0]
    assert re.match(r"monitoring 1 session\(s\), 3 job\(s\), every 0\.2s; a summary after 0\.02 min without "
                    r"change: live \(resumed, last updated [-0-9: ]+: 2 running, 1 pending\)$", start), start
    assert "no change in 1s: live 2 running, 1 pending" in out
    # quiet: neither line
    code, out = run_until(two_sessions, ["monitor", "--session", "live", "--interval", "0.2", "-q",
                                         "--summary-minutes", "0.01"], "no change in", seconds=3)
    assert code == 130 and "monitoring" not in out and "no change" not in out, out
    bad = two_sessions.cli("monitor", "--session", "live", "--summary-minutes", "-1")
    assert bad.returncode == 2 and "not 0 (off) nor a number of minutes" in bad.stderr


def test_monitor_start_line_of_a_new_session(project, fake):
    project.ok("plan", project.config(config(seeds=(1,), command="echo TRAINING FINISHED")), "--plan-id", "fresh")
    fake.fail_next("squeue", count=1)  # the submission finds SLURM down: a session, nothing seen yet
    assert project.cli("submit", "fresh").returncode == 1
    out = project.ok("monitor", "--session", "fresh", "--interval", "0.2").stdout
    assert re.match(r"monitoring 1 session\(s\), 1 job\(s\), every 0\.2s; a summary after 30 min without "
                    r"change: fresh \(new: 1 pending\)$", out.splitlines()[0]), out


def test_status_shows_a_cancelled_job_as_cancelling_until_slurm_ends_it(two_sessions, fake):
    fake.configure(completing_seconds=30)  # SLURM takes its time to end it
    assert "cancelled: ov-s1" in two_sessions.ok("cancel", "--session", "live", "ov-s1").stdout
    jobs = dict((j["name"], j) for j in docs(two_sessions, "--session", "live")[0]["jobs"])
    assert jobs["ov-s1"]["status"] == "cancelled" and jobs["ov-s1"]["phase"] == "cancelling"
    assert jobs["ov-s1"]["cancelling"] is True and jobs["ov-s2"]["cancelling"] is False
    row = [l for l in status(two_sessions, "--session", "live").stdout.splitlines() if l.startswith("ov-s1 ")][0]
    assert "cancelling (was RUNNING)" in row and " RUNNING " not in row
    names = [j["name"] for j in docs(two_sessions, "--session", "live", "--status", "cancelling")[0]["jobs"]]
    assert names == ["ov-s1"]


def test_a_cancel_queued_for_the_monitor_shows_as_cancelling_at_once(two_sessions):
    store = helpers.autoexp.StateStore(two_sessions.state_dir)
    _, lock = store.open_for_write(store.resolve("live"), "monitor", time.time())  # as a monitor holds it
    try:
        assert "the cancel request is queued" in two_sessions.ok("cancel", "--session", "live", "--all").stdout
        jobs = docs(two_sessions, "--session", "live")[0]["jobs"]
        assert [j["phase"] for j in jobs] == ["cancelling"] * 3  # still active in the file, the request queued
        assert [j["status"] for j in jobs] == ["active"] * 3
        assert "cancelling (was PENDING)" in status(two_sessions, "--session", "live", "ov-s2").stdout
    finally:
        lock.release()


def test_cancel_without_names_is_refused_and_all_cancels_every_active_job(two_sessions):
    res = two_sessions.cli("cancel", "--session", "live")
    assert res.returncode == 2 and "give --all to cancel every active job of session live" in res.stderr
    assert [j["status"] for j in docs(two_sessions, "--session", "live")[0]["jobs"]] == ["active"] * 3
    both = two_sessions.cli("cancel", "--session", "live", "--all", "ov-s1")
    assert both.returncode == 2 and "not both" in both.stderr
    res = two_sessions.ok("cancel", "--session", "live", "--all")
    assert "cancelled: ov-s1, ov-s2, ov-s3" in res.stdout
    assert [j["status"] for j in docs(two_sessions, "--session", "live")[0]["jobs"]] == ["cancelled"] * 3


def test_help_starts_with_what_autoexp_does_and_its_commands(project):
    out = project.ok("--help").stdout
    lines = out.splitlines()
    assert lines[0].startswith("usage: autoexp ")
    assert lines[2].startswith("autoexp takes a sweep of SLURM experiments from a JSON config to finished runs")
    head = "\n".join(lines[:20])
    for command in ("plan", "submit", "monitor", "run", "status", "cancel", "retry"):
        assert "autoexp %s" % command in head
    assert "maintainers' map" not in out and "Vocabulary" not in out and "functional core" not in out


def test_watch_eta_comes_from_the_finished_runs(project, fake):
    cmd = "if [ {seed} = 1 ]; then sleep 1; else sleep 30; fi; echo TRAINING FINISHED"
    project.ok("plan", project.config(config(seeds=(1, 2), command=cmd)), "--plan-id", "eta")
    project.ok("submit", "eta")

    def one_done():
        project.cli("reconcile", "--session", "eta")
        jobs = dict((j["name"], j) for j in docs(project, "--session", "eta")[0]["jobs"])
        return jobs["ov-s1"]["status"] == "finalized" and jobs["ov-s2"]["phase"] == "running"
    wait_for(one_done, timeout=60, interval=0.3, what="s1 finalized, s2 running")
    code, out = watch(project, False, 1)
    assert code == 0, out
    # s1 ran about a second: s2, running for about as long, has at most that left
    m = re.search(r"eta \[#{10}\.{10}\] 1/2 done, 1 running, 0 pending, 0 restarting, 0 failed, ETA (\d+)s", out)
    assert m and int(m.group(1)) <= 3, out


def test_the_quiet_summary_says_how_long_it_has_been_quiet(tmp_path):
    """--summary-minutes 1: after 1, 2 and 3 quiet minutes, "no change in 1m00s", "2m00s",
    "3m00s" (the whole quiet stretch, not the minute since the line before); then the job
    ends, and the monitor with it."""
    h = helpers.Harness(tmp_path, helpers.controller_config(), names=[helpers.A])
    h.slurm.set(h.live_id(helpers.A), "RUNNING")
    h.cycle()
    start = h.clock.now

    def sleep(seconds):
        h.clock.sleep(seconds)
        if h.clock.now - start >= 200 and h.job(helpers.A).current.live:
            helpers.finish(h, helpers.A)

    h.ctl.sleep = sleep
    del h.out[:]
    assert h.ctl.run([h.session], interval=10, summary_seconds=60) == 0
    said = [line for line in "".join(h.out).splitlines() if "no change in" in line]
    assert [line.split(":")[0] for line in said] == ["no change in 1m00s", "no change in 2m00s",
                                                     "no change in 3m00s"], said
    assert said[0].endswith("p1 1 running")


def test_status_columns_line_up_around_control_characters(tmp_path):
    """A cell holding ESC is printed as \\x1b (4 columns): the widths are those of what is
    printed, so the next column starts at the same place on every row."""
    h = helpers.Harness(tmp_path, helpers.controller_config())
    manifest = h.plan.manifest_path
    doc = json.load(open(manifest))
    doc["jobs"][0]["params"]["note"] = "\x1b\x1b\x1b"
    json.dump(doc, open(manifest, "w"))
    out = []
    assert helpers.autoexp.main(["--state-dir", h.state_dir, "status"], out=helpers._Sink(out),
                                err=helpers._Sink([])) == 0
    lines = "".join(out).splitlines()
    header, rows = lines[1], lines[2:4]
    assert "note=\\x1b\\x1b\\x1b,seed=1" in rows[0] and "\x1b" not in "".join(out)
    col = header.index("LOG")
    assert [r[col - 2:col + 1] for r in rows] == ["  " + r[col] for r in rows] and all(r[col] != " " for r in rows)

"""Outside the tested envelope: each test here is one way a hostile user or a messy cluster
broke (or bent) a promise (issue 11's list, numbered as there), and fails without its fix."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import Harness, ROOT, autoexp, load_state, read_events, write_config

A = autoexp
pytestmark = pytest.mark.timeout(60)
NAME = "demo-s1"


def config(**monitoring):
    mon = {"interval_seconds": 10, "termination_string": "TRAINING FINISHED", "lost_after_seconds": 60}
    mon.update(monitoring)
    return {
        "project": "demo",
        "sweep": {"seed": [1, 2]},
        "job": {"name": "{project}-s{seed}", "command": "echo {seed}", "log": "logs/{name}-%j.log"},
        "monitoring": mon,
        "restart": {"timeout": {"action": "restart", "max_attempts": 3},
                    "stall": {"action": "restart", "max_attempts": 2}},
    }


def resolve(cfg, overrides=()):
    return A.resolve_config(json.loads(json.dumps(cfg)), "cfg.json", list(overrides))


def refused(cfg, *words, **kw):
    with pytest.raises(A.ConfigError) as e:
        resolve(cfg, kw.get("overrides", ()))
    for w in words:
        assert w in str(e.value), str(e.value)
    return str(e.value)


def running(h, name=NAME):
    h.slurm.set(h.live_id(name), "RUNNING")
    h.cycle()


# 1. A progress bar that redraws itself with \r is activity, not a stall --------------

def test_1_a_progress_bar_without_newlines_is_not_a_stall(tmp_path):
    h = Harness(tmp_path, config(inactivity_threshold_seconds=30), names=[NAME])
    running(h)
    jid = h.live_id(NAME)
    for pct in range(0, 100, 5):
        h.log(NAME, "\rEpoch 1: %3d%%|%s| %d/100" % (pct, "#" * (pct // 5), pct))
        h.cycle(advance=20)
    att = h.job(NAME).current
    assert att.job_id == jid and att.outcome is None and att.live
    assert ("scancel", jid) not in h.slurm.calls
    assert h.job(NAME).status == "active"


def test_1_a_line_split_by_carriage_returns_is_matched_once_it_is_complete(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    running(h)
    h.log(NAME, "\r 99%|####|\rTRAINING FINISHED\r")
    h.slurm.set(h.live_id(NAME), "COMPLETED")
    h.cycle()
    assert h.job(NAME).status == "finalized" and h.job(NAME).current.outcome == "success"


# 2. Plan ids are claimed atomically ---------------------------------------------------

def test_2_a_plan_id_taken_between_check_and_write_is_not_overwritten(tmp_path, monkeypatch):
    cfg_path = write_config(str(tmp_path / "cfg.json"), config())
    state = str(tmp_path / "state")
    real_build = A.build_plan
    other = {}

    def racing_build(config, source, plan_id, state_dir, workdir, created_at):
        # another `plan` of the same project, in the same second, claims this id first
        if not other:
            os.makedirs(os.path.join(state_dir, "plans", plan_id))
            with open(os.path.join(state_dir, "plans", plan_id, "manifest.json"), "w") as f:
                f.write("the other plan's manifest")
            other["id"] = plan_id
        return real_build(config, source, plan_id, state_dir, workdir, created_at)
    monkeypatch.setattr(A, "build_plan", racing_build)
    clock = lambda: 1700000000.0  # noqa: E731
    out = []
    assert A.main(["--state-dir", state, "plan", cfg_path], clock=clock, out=_Sink(out)) == 0
    mine = out[0].strip()
    assert mine != other["id"] and mine == other["id"] + "-2"
    with open(os.path.join(state, "plans", other["id"], "manifest.json")) as f:
        assert f.read() == "the other plan's manifest"
    assert A.load_manifest(os.path.join(state, "plans", mine, "manifest.json")).plan_id == mine


def test_2_two_plans_in_one_second_get_two_ids(tmp_path):
    cfg_path = write_config(str(tmp_path / "cfg.json"), config())
    state = str(tmp_path / "state")
    ids = []
    for _ in range(3):
        out = []
        assert A.main(["--state-dir", state, "plan", cfg_path], clock=lambda: 1700000000.0, out=_Sink(out)) == 0
        ids.append(out[0].strip())
    assert len(set(ids)) == 3 and ids[1] == ids[0] + "-2" and ids[2] == ids[0] + "-3"


# 3. Every write's count is checked; a short journal append loses nothing --------------

def test_3_a_short_append_to_the_journal_is_undone_and_said(tmp_path, monkeypatch):
    h = Harness(tmp_path, config(), names=[NAME])
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
    monkeypatch.setattr(A.os, "write", quota_write)
    h.slurm.set(h.live_id(NAME), "RUNNING")
    with pytest.raises(A.StateWriteError) as e:
        h.cycle()
    assert journal in str(e.value) and "File too large" in str(e.value)
    assert open(journal, "rb").read() == before  # no torn line left behind
    saved = load_state(h.state_dir, "p1")
    assert saved["outbox"], "the events that did not land stay in the state file"
    monkeypatch.setattr(A.os, "write", real_write)
    s = h.reload()
    h.store.save_and_sync(s, h.clock(), changed=False)  # the next writer appends them
    seqs = [e["seq"] for e in read_events(h.state_dir, "p1")]
    assert seqs == list(range(1, s.event_seq + 1))


def test_3_a_write_that_fails_names_its_file(tmp_path, monkeypatch):
    target = str(tmp_path / "x.json")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(A.os, "write", full_disk)
    with pytest.raises(A.StateWriteError) as e:
        A.atomic_write(target, b"{}")
    assert target in str(e.value) and "No space left" in str(e.value)
    assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]


# 4. A deleted lock file does not let a second writer in unnoticed ----------------------

def test_4_a_writer_whose_lock_file_was_deleted_stops_without_writing(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    h.store.lock("p1", "monitor")
    os.unlink(os.path.join(h.state_dir, "p1.lock"))           # "a stale lock file"
    second = A.StateStore(h.state_dir).lock("p1", "monitor")   # a second monitor gets in...
    assert second.intact()
    before = h.state_bytes()
    h.slurm.set(h.live_id(NAME), "TIMEOUT")
    with pytest.raises(A.LockLostError) as e:                  # ...and the first one stops
        h.cycle()
    assert e.value.exit_code == A.EXIT_LOCKED and "p1.lock" in str(e.value)
    assert h.state_bytes() == before and h.slurm.count("sbatch") == 1


def test_4_a_lock_file_deleted_while_being_locked_is_locked_again(tmp_path, monkeypatch):
    path = str(tmp_path / "s.lock")
    real_lockf = A.fcntl.lockf
    deleted = []

    def racing_lockf(fd, op):
        if not deleted:
            deleted.append(1)
            os.unlink(path)  # another process removes the file between our open and our lock
        return real_lockf(fd, op)
    monkeypatch.setattr(A.fcntl, "lockf", racing_lockf)
    lock = A.SessionLock(path).acquire("monitor")
    assert deleted and lock.intact() and os.path.exists(path)


# 5. A catastrophic regex is refused; matching is bounded -------------------------------

@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*b", "(a|a)*$", "(x+x+)+y", "(\\w+\\s?)+$"])
def test_5_patterns_with_nested_repetition_are_refused(pattern):
    cfg = config(log_events=[{"name": "bad", "pattern": pattern, "mode": "crash"}])
    refused(cfg, "monitoring.log_events[0].pattern", "exponential")


@pytest.mark.parametrize("pattern", ["CUDA out of memory", "NCCL (error|WARN)", "loss=nan", "a+b", "^step \\d+",
                                     "x{2,5}y", "(foo)+"])
def test_5_ordinary_patterns_are_accepted(pattern):
    resolve(config(log_events=[{"name": "ok", "pattern": pattern, "mode": "crash"}]))


@pytest.mark.timeout(20)
def test_5_a_quadratic_pattern_on_a_huge_line_returns(tmp_path):
    mon = A.make_monitoring(A.validate_monitoring(
        {"log_events": [{"name": "q", "pattern": "a*b", "mode": "crash"}]}, A._Checker("t")))
    t = time.time()
    assert A.LogMatcher(mon).scan(["a" * (4 << 20)]) == []
    assert time.time() - t < 10


# 6. A FIFO (or another non-regular file) at the log's path never blocks -----------------

@pytest.mark.timeout(20)
def test_6_a_fifo_at_the_log_path_is_refused_not_waited_on(tmp_path):
    h = Harness(tmp_path, config(inactivity_threshold_seconds=30), names=[NAME])
    jid = h.live_id(NAME)
    path = A.resolve_log_path(h.plan.by_name[NAME].log_template, jid, jid, NAME, h.slurm.user)
    os.mkfifo(path)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.cycle(advance=60)
    att = h.job(NAME).current
    assert "not a regular file" in (att.log_error or "")
    assert [e["event"] for e in read_events(h.state_dir, "p1")].count("log_unreadable") == 1
    assert att.outcome is None  # an unreadable log is no evidence of a stall


# 7. NaN, infinities and absurd magnitudes are refused ---------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("interval_seconds", float("nan"), "finite"),
    ("interval_seconds", float("inf"), "finite"),
    ("interval_seconds", 1e-300, "at least 0.1"),
    ("interval_seconds", 1e12, "at most 86400"),
    ("inactivity_threshold_seconds", 1e308, "at most"),
    ("lost_after_seconds", 10 ** 30, "at most"),
    ("slurm_timeout_seconds", 1e9, "at most 3600"),
    ("unknown_backoff_max_seconds", 1e9, "at most"),
    ("submit_retries", 10 ** 9, "at most 1000"),
    ("submit_backoff_seconds", 1e20, "at most"),
])
def test_7_monitoring_numbers_are_bounded(key, value, words):
    cfg = config()
    cfg["monitoring"][key] = value
    refused(cfg, "monitoring." + key, words)


@pytest.mark.parametrize("policy, words", [
    ({"max_attempts": 10 ** 9}, "at most 1000"),
    ({"backoff_seconds": 1e30}, "at most"),
    ({"backoff_max_seconds": float("inf")}, "finite"),
])
def test_7_policy_numbers_are_bounded(policy, words):
    cfg = config()
    cfg["restart"]["timeout"] = dict({"action": "restart"}, **policy)
    refused(cfg, "restart.timeout", words)


@pytest.mark.parametrize("text", ['{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": NaN}}',
                                  '{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": Infinity}}',
                                  '{"project": "p", "job": {"command": "x"}, "monitoring": {"interval_seconds": 1e999}}'])
def test_7_json_nan_infinity_and_overflow_are_not_numbers(tmp_path, text):
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(A.ConfigError) as e:
        A.load_config_file(path)
    assert "c.json" in str(e.value) and "not valid JSON" in str(e.value)


def test_7_an_override_of_infinity_is_refused():
    refused(config(), "monitoring.interval_seconds", overrides=["monitoring.interval_seconds=1e999"])


@pytest.mark.parametrize("value", ["1e-300", "1e308", "nan", "inf"])
def test_7_the_cli_interval_is_bounded(value):
    err = []
    assert A.main(["monitor", "--session", "x", "--interval", value], err=_Sink(err)) == A.EXIT_USAGE
    assert "--interval" in "".join(err) and "no session" not in "".join(err)


# 8. A job refused for a queue limit a thousand times is still retried -----------------

def test_8_a_thousand_queue_limit_refusals_never_overflow(tmp_path):
    h = Harness(tmp_path, config(submit_backoff_seconds=1), names=[NAME])
    h.slurm.set(h.live_id(NAME), "TIMEOUT")
    job = h.job(NAME)
    job.submit_refusals = 1100  # as after days of refusals
    h.slurm.sbatch = lambda script, args=(): A.SubmitResult(A.SB_THROTTLED, None, "QOSMaxSubmitJobPerUserLimit")
    h.cycle()
    h.cycle(advance=5)
    assert job.submit_refusals >= 1101 and job.submit_failures == 0 and job.status == "active"
    assert job.next_submit_at - h.clock() <= A.THROTTLE_BACKOFF_MAX


# 9. Clock jumps ---------------------------------------------------------------------

class TwoClocks(object):
    """A wall clock that can jump, and a monotonic clock that cannot."""

    def __init__(self, start=1700000000.0):
        self.wall, self.mono = start, 1000.0

    def time(self):
        return self.wall

    def monotonic(self):
        return self.mono

    def sleep(self, seconds):
        self.wall += seconds
        self.mono += seconds


def jumping_harness(tmp_path, **mon):
    h = Harness(tmp_path, config(**mon), names=[NAME])
    clocks = TwoClocks(h.clock())
    h.ctl = A.Controller(h.store, h.slurm, h.ctl.report, clock=clocks.time, sleep=clocks.sleep,
                         mono=clocks.monotonic)
    h.slurm.clock = clocks.time
    return h, clocks


def test_9_a_forward_jump_is_not_a_stall(tmp_path):
    h, c = jumping_harness(tmp_path, inactivity_threshold_seconds=1800)
    h.slurm.set(h.live_id(NAME), "RUNNING")
    h.ctl.cycle([h.session])
    for i in range(5):
        h.log(NAME, "step %d\n" % i)
        c.sleep(60)
        if i == 2:
            c.wall += 3600  # NTP steps the clock an hour forward
        h.ctl.cycle([h.session])
    att = h.job(NAME).current
    assert att.outcome is None and att.live and not [x for x in h.slurm.calls if x[0] == "scancel"]


def test_9_a_backward_jump_does_not_freeze_the_monitor(tmp_path):
    h, c = jumping_harness(tmp_path)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        c.mono += seconds
        c.wall += seconds - (3600 if len(slept) == 1 else 0)  # the clock goes back an hour
    h.ctl.sleep = sleep
    assert h.ctl._pause(10) is False
    assert sum(slept) == pytest.approx(10)


def test_9_a_jump_between_two_processes_on_one_host_is_measured(tmp_path):
    h, c = jumping_harness(tmp_path, inactivity_threshold_seconds=1800)
    h.slurm.set(h.live_id(NAME), "RUNNING")
    h.log(NAME, "step 0\n")
    h.ctl.cycle([h.session])
    h.log(NAME, "step 1\n")
    c.sleep(60)
    h.ctl.cycle([h.session])  # saved, with its clock reference
    c.sleep(60)
    c.wall += 7200  # between two cron passes
    ctl = A.Controller(h.store, h.slurm, h.ctl.report, clock=c.time, sleep=c.sleep, mono=c.monotonic)
    s = h.reload()
    ctl.cycle([s])
    att = s.job(NAME).current
    assert att.outcome is None and att.live


def test_9_a_clock_ahead_at_submission_does_not_lose_a_finished_job(tmp_path):
    h = Harness(tmp_path, config(lost_after_seconds=60), names=[NAME])
    jid = h.live_id(NAME)
    att = h.job(NAME).current
    att.intent_at += 2 * 3600  # the login node's clock was two hours ahead when it decided
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.log(NAME, "TRAINING FINISHED\n")
    h.slurm.set(jid, "COMPLETED")
    h.slurm.purge(jid)  # gone from squeue: only sacct knows
    for _ in range(10):
        h.cycle(advance=30)
    assert h.job(NAME).status == "finalized" and h.slurm.count("sbatch") == 1


# 10. Values never run as code in bash arithmetic --------------------------------------

@pytest.mark.parametrize("value", ["x[$(touch INJECTED)]", "a[`touch INJECTED`]", "0]+a[$(id)"])
def test_10_values_that_bash_arithmetic_would_run_are_refused(value):
    cfg = config()
    cfg["sweep"] = {"x": [value]}
    cfg["job"]["name"] = "{project}-{index}"
    cfg["job"]["command"] = "if [[ {x} -gt 100 ]]; then echo big; fi"
    refused(cfg, "sweep.x[0]", "arithmetic")


@pytest.mark.parametrize("value", ["x[1]", "$(date)", "`date`", "a b", "$HOME", "[0-9]+"])
def test_10_other_values_stay_allowed(value):
    cfg = config()
    cfg["sweep"] = {"x": [value]}
    cfg["job"]["name"] = "{project}-{index}"
    cfg["job"]["command"] = "echo {x}"
    resolve(cfg)


def test_10_the_refused_value_would_really_have_run(tmp_path):
    """What the refusal prevents: bash runs a quoted subscript in [[ -gt ]]."""
    marker = tmp_path / "INJECTED"
    script = "x='x[$(touch %s)]'; [[ $x -gt 100 ]] 2>/dev/null; true" % marker
    subprocess.call(["bash", "-c", script])
    assert marker.exists()


# 11. Every id autoexp makes is one it accepts ------------------------------------------

@pytest.mark.parametrize("length", [100, 112, 113, 120, 128])
def test_11_a_long_project_name_gives_a_valid_plan_id(tmp_path, length):
    cfg = config()
    cfg["project"] = "p" * length
    cfg["job"]["name"] = "j{seed}"
    cfg_path = write_config(str(tmp_path / "cfg.json"), cfg)
    state = str(tmp_path / "state")
    for n in (1, 2):
        out = []
        assert A.main(["--state-dir", state, "plan", cfg_path], clock=lambda: 1700000000.0, out=_Sink(out)) == 0
        plan_id = out[0].strip()
        assert A.check_safe_name(plan_id, "plan id") == plan_id and len(plan_id) <= 128
        assert A.StateStore(state).resolve(os.path.join(state, "plans", plan_id, "manifest.json"))
        assert n == 1 or plan_id.endswith("-2")


# 12. After MaxJobId wraps around, order is by submission time ---------------------------

def test_12_recovery_follows_submit_times_not_ids(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    first = h.live_id(NAME)
    h.slurm.jobs[first]["submit"] = A.local_time(h.clock() - 86400)  # submitted a day ago, with a high id
    h.cycle()
    h.slurm.set(first, "TIMEOUT")
    h.slurm.next_id = 4  # MaxJobId reached: SLURM starts again from small ids
    h.slurm.sbatch_mode = ["queued_error"]  # the restart's sbatch queues the job, then errors
    h.cycle()
    restarted = [j for j in h.slurm.jobs if j != first]
    assert len(restarted) == 1 and int(restarted[0]) < int(first)
    for _ in range(4):
        h.cycle(advance=40)
    att = h.job(NAME).current
    assert att.job_id == restarted[0] and att.origin == "recovered"
    assert h.slurm.count("sbatch") == 2  # never a duplicate


# 13. An squeue answer with fields autoexp did not ask for is UNKNOWN ------------------

def test_13_an_extra_trailing_column_is_unknown_not_a_silent_loss_of_tags(tmp_path):
    text = "7|7|RUNNING|None|2026-12-01T10:00:00|demo-s1|autoexp:p1:demo-s1|extra\n"
    client = A.SlurmClient(runner=lambda a, t, e: A.Completed(a, 0, text, "", False), user="u")
    with pytest.raises(A.SlurmUnavailable) as e:
        client.squeue()
    assert "did not ask for" in str(e.value)


def test_13_the_cycle_decides_nothing_then(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    jid = h.live_id(NAME)
    text = "%s|%s|RUNNING|None|2026-12-01T10:00:00|%s|autoexp:p1:%s|x\n" % (jid, jid, NAME, NAME)
    h.slurm.squeue = lambda: A.SlurmClient(runner=lambda a, t, e: A.Completed(a, 0, text, "", False),
                                           user="u").squeue()
    assert h.cycle() is False and h.slurm.count("sbatch") == 1


# 14. Clustered short options in a template -------------------------------------------

@pytest.mark.parametrize("line, owned", [
    ("#SBATCH -Qa0-2", "array"), ("#SBATCH -HJname", "job-name"), ("#SBATCH -vvo out.log", "output"),
    ("#SBATCH -Qe err.log", "error"), ("#SBATCH -sW", "wait"), ("#SBATCH -kD/tmp", None),
    ("#SBATCH -pgpu", None), ("#SBATCH -t10 -Qc4", None),
])
def test_14_short_option_clusters_are_read_as_sbatch_reads_them(tmp_path, line, owned):
    tpl = tmp_path / "job.sh"
    tpl.write_text("#!/bin/bash\n%s\necho hi\n" % line)
    cfg = config()
    del cfg["job"]["command"]
    cfg["job"]["template"] = str(tpl)
    c = A.resolve_config(json.loads(json.dumps(cfg)), str(tmp_path / "c.json"), [])
    if owned is None:
        A.build_plan(c, str(tmp_path / "c.json"), "p1", str(tmp_path / "s"), str(tmp_path), 0)
        return
    with pytest.raises(A.ConfigError) as e:
        A.build_plan(c, str(tmp_path / "c.json"), "p1", str(tmp_path / "s"), str(tmp_path), 0)
    assert "--%s" % owned in str(e.value)


# 15. A termination string cut by a read boundary inside a huge line is found ----------

def test_15_the_termination_string_across_a_piece_boundary(tmp_path):
    path = str(tmp_path / "log")
    term = "TRAINING FINISHED"
    with open(path, "w") as f:
        f.write("x" * (100 - 5) + term + "y" * 300)  # one line, no newline, cut at 100 bytes
    mon = A.make_monitoring(A.validate_monitoring({"termination_string": term}, A._Checker("t")))
    matcher, offset, hits = A.LogMatcher(mon), 0, []
    for _ in range(20):
        read = A.read_log(path, offset, None, final=False, max_bytes=100, overlap=matcher.overlap)
        hits += matcher.scan(read.lines)
        if read.offset == offset:
            break
        offset = read.offset
    assert [h.event for h in hits][:1] == ["success"]


def test_15_in_a_real_four_mib_line(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    running(h)
    h.log(NAME, "x" * (A.MAX_LOG_READ - 6) + "TRAINING FINISHED" + "y" * 10)
    h.slurm.set(h.live_id(NAME), "COMPLETED")
    h.cycle()
    assert h.job(NAME).current.outcome == "success" and h.job(NAME).status == "finalized"


# 16. A termination string that can never match is refused -----------------------------

@pytest.mark.parametrize("term", ["DONE\n", "line one\nline two", "A\rB"])
def test_16_a_termination_string_with_a_line_break_is_refused(term):
    refused(config(termination_string=term), "termination_string", "line break")


# 17. Deep JSON and huge grids are refused, never a traceback ----------------------------

def test_17_deeply_nested_config_is_an_error_not_a_traceback(tmp_path):
    path = str(tmp_path / "c.json")
    with open(path, "w") as f:
        f.write('{"project": "p", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    err = []
    assert A.main(["plan", path], err=_Sink(err)) == A.EXIT_USAGE
    assert "nested too deeply" in "".join(err) and "Traceback" not in "".join(err)


def test_17_a_deeply_nested_state_file_is_one_broken_session(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    with open(os.path.join(h.state_dir, "zz.json"), "w") as f:
        f.write("[" * 100000 + "]" * 100000)
    out, err = [], []
    code = A.main(["--state-dir", h.state_dir, "status"], out=_Sink(out), err=_Sink(err))
    assert code == A.EXIT_USAGE and "zz.json" in "".join(err) and "nested too deeply" in "".join(err)
    assert "session p1" in "".join(out)


def test_17_a_billion_point_grid_is_refused_before_it_is_expanded():
    cfg = config()
    cfg["sweep"] = dict(("p%d" % i, list(range(10))) for i in range(9))
    refused(cfg, "sweep", "more than 100000 points")


# 18. A foreign job with a newline in its name does not blind autoexp ------------------

def test_18_a_foreign_line_that_cannot_be_read_is_skipped_and_said(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    jid = h.live_id(NAME)
    text = ("%s|%s|RUNNING|None|2026-12-01T10:00:00|%s|autoexp:p1:%s\n"
            "99|99|RUNNING|None|2026-12-01T10:00:00|my\nnotebook|(null)\n" % (jid, jid, NAME, NAME))
    client = A.SlurmClient(runner=lambda a, t, e: A.Completed(a, 0, text, "", False), user="u")
    h.slurm.squeue = client.squeue
    h.ctl.slurm = _WithSkipped(h.slurm, client)
    assert h.cycle() is True
    assert len(client.skipped) == 2
    assert any("cannot be read" in line for line in h.out)
    assert h.job(NAME).current.last_slurm_state == "RUNNING"


def test_18_a_tagged_line_that_cannot_be_read_is_still_unknown():
    text = "7|7|WEIRD STATE|None|2026-12-01T10:00:00|x\ny|autoexp:p1:x\n"
    client = A.SlurmClient(runner=lambda a, t, e: A.Completed(a, 0, text, "", False), user="u")
    with pytest.raises(A.SlurmUnavailable):
        client.squeue()


# 19. A signal while `run` submits still leaves a resume hint --------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
def test_19_sigterm_during_run_submission_exits_130_with_the_resume_hint(tmp_path, fake):
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = config(interval_seconds=0.2, slurm_timeout_seconds=30)
    cfg["sweep"] = {"seed": [1, 2, 3]}
    cfg["job"]["command"] = "sleep 0.5; echo TRAINING FINISHED"
    cfg_path = write_config(str(proj / "cfg.json"), cfg)
    fake.fail_next("sbatch", count=1, mode="hang", hang_seconds=3)
    env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
    p = subprocess.Popen([sys.executable, "-c", _boot(), "run", cfg_path, "--plan-id", "sig"], cwd=str(proj),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: os.path.exists(str(proj / "autoexp-state" / "sig.json")), 30)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == A.EXIT_INTERRUPTED, (out, err)
    assert b"resume with: python3" in out and b"monitor --session sig" in out
    res = subprocess.run([sys.executable, "-c", _boot(), "monitor", "--session", "sig"], cwd=str(proj), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    assert res.returncode == 0, res.stderr
    state = load_state(str(proj / "autoexp-state"), "sig")
    assert [j["status"] for j in state["jobs"]] == ["finalized"] * 3
    submitted = [j for j in fake.jobs()]
    assert len(set(j["comment"] for j in submitted)) == len(submitted) == 3


# 20. A site sbatch that prints notices around the id ---------------------------------

@pytest.mark.parametrize("out, job_id", [
    ("Note: your default account is proj123\n4711\n", "4711"),
    ("4711;cluster\nReminder: maintenance on Friday\n", "4711"),
    ("warning: 12 jobs queued\n4711\n", "4711"),
])
def test_20_the_id_line_is_found_among_notices(out, job_id):
    res = A.classify_sbatch(A.Completed([], 0, out, "", False))
    assert (res.outcome, res.job_id) == (A.SB_OK, job_id)


def test_20_two_id_lines_are_no_answer():
    res = A.classify_sbatch(A.Completed([], 0, "4711\n4712\n", "", False))
    assert res.outcome == A.SB_UNCERTAIN


# 21. Smaller ones ---------------------------------------------------------------------

@pytest.mark.slow
def test_21_the_lock_says_run_while_run_monitors(tmp_path, fake):
    proj = tmp_path / "proj"
    proj.mkdir()
    cfg = config(interval_seconds=0.2)
    cfg["sweep"] = {"seed": [1]}
    cfg["job"]["command"] = "sleep 3; echo TRAINING FINISHED"
    cfg_path = write_config(str(proj / "cfg.json"), cfg)
    env = dict(fake.env(), FAKE_SLURM_PYTHON=sys.executable)
    p = subprocess.Popen([sys.executable, "-c", _boot(), "run", cfg_path, "--plan-id", "lk"], cwd=str(proj),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = str(proj / "autoexp-state" / "lk.lock")
    info = _wait_for(lambda: _lock_info(lock), 30)
    assert info["command"] == "run"
    p.communicate(timeout=60)


def test_21_escape_sequences_from_a_log_are_not_sent_to_the_terminal(tmp_path):
    cfg = config(log_events=[{"name": "nccl", "pattern": "NCCL error", "mode": "crash"}])
    h = Harness(tmp_path, cfg, names=[NAME])
    running(h)
    h.log(NAME, "\x1b[31mNCCL error\x1b[0m \x00 \u202eevil\n")
    h.cycle()
    printed = "".join(h.out)
    lines = [l for l in printed.splitlines() if "log:nccl" in l]
    assert lines and "\x1b" not in printed and "\x00" not in printed and "\u202e" not in printed
    assert "\\x1b[31mNCCL error" in lines[0]
    journal = [e for e in read_events(h.state_dir, "p1") if e["event"] == "log:nccl"]
    assert "\x1b[31mNCCL error" in journal[0]["detail"]  # kept raw where a program reads it


def test_21_a_log_rotated_between_cycles_is_read_to_its_end(tmp_path):
    h = Harness(tmp_path, config(), names=[NAME])
    running(h)
    path = h.log(NAME, "step 1\n")
    h.cycle()
    with open(path, "a") as f:
        f.write("step 2\nTRAINING FINISHED\n")
    os.rename(path, path + ".1")  # logrotate, between two cycles
    with open(path, "w") as f:
        f.write("fresh log\n")
    h.cycle()
    assert h.job(NAME).current.success_seen
    h.slurm.set(h.live_id(NAME), "COMPLETED")
    h.cycle()
    assert h.job(NAME).status == "finalized"


def test_21_a_log_folder_that_is_a_file_is_refused_at_plan_time(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    cfg = config()
    (tmp_path / "logs").write_text("not a folder")
    cfg_path = write_config(str(tmp_path / "cfg.json"), cfg)
    err = []
    code = A.main(["--state-dir", str(tmp_path / "state"), "plan", cfg_path], err=_Sink(err))
    assert code == A.EXIT_USAGE and "is not a folder" in "".join(err)
    assert not os.path.exists(str(tmp_path / "state" / "plans")) or not os.listdir(str(tmp_path / "state" / "plans"))


# -- helpers -------------------------------------------------------------------------

class _Sink(object):
    encoding = "utf-8"

    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


class _WithSkipped(object):
    """A scripted SLURM whose squeue is a real client's (so `skipped` is its)."""

    def __init__(self, slurm, client):
        self._slurm, self._client = slurm, client

    def __getattr__(self, name):
        if name == "skipped":
            return self._client.skipped
        return getattr(self._slurm, name)


def _boot():
    return "import sys; sys.path.insert(0, %r); import autoexp; sys.exit(autoexp.main())" % ROOT


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _lock_info(path):
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text) if text.strip() else None
    except (IOError, ValueError):
        return None


# Scale: every command line autoexp builds stays within the kernel's limits ------------

def test_sacct_arguments_stay_within_the_kernels_limits_for_100000_long_names():
    names = ["%s-%06d" % ("n" * 53, i) for i in range(100000)]  # 60 characters each
    calls = []

    def runner(argv, timeout, env):
        calls.append(argv)
        return A.Completed(argv, 0, "", "", False)
    client = A.SlurmClient(runner=runner, user="u")
    client.sacct_by_name(names, 0)
    client.sacct([str(10 ** 9 + i) for i in range(100000)], 0)
    asked_names, asked_ids = [], []
    for argv in calls:
        assert all(len(a.encode()) < 128 * 1024 for a in argv)
        assert sum(len(a.encode()) + 1 for a in argv) < 2 * 1024 * 1024 // 2
        if argv[-1].startswith("--name="):
            asked_names += argv[-1][len("--name="):].split(",")
        else:
            asked_ids += argv[argv.index("-j") + 1].split(",")
    assert asked_names == names and len(asked_ids) == 100000
    assert len(calls) < 200  # chunks of about 100 KB, not one call per job


def test_a_sweep_of_4000_jobs_with_long_names_is_looked_up_by_name(tmp_path):
    """The defect: with ~3,500 36-character names, one --name= argument was too long and
    every submission and reconcile of the session failed, for good."""
    names = ["job-with-a-thirty-six-char-name-%04d" % i for i in range(4000)]
    with pytest.raises(OSError) as e:  # what the kernel says to one argument of them all
        subprocess.call(["true", "--name=" + ",".join(names)])
    assert e.value.errno == errno.E2BIG
    calls = []

    def runner(argv, timeout, env):
        subprocess.check_call(["true"] + argv[1:])  # through the kernel, as sacct would be
        calls.append(argv)
        return A.Completed(argv, 0, "", "", False)
    A.SlurmClient(runner=runner, user="u").sacct_by_name(names, 0)
    assert len(calls) == 2


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
def test_fast_slurm_time_parsing_agrees_with_strptime_across_daylight_saving(tz, monkeypatch):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    A._HOUR_STARTS.clear()
    try:
        t = 1774000000.0
        for _ in range(24 * 60):  # two months, every hour or so
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
            assert A.parse_slurm_time(text) == time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S")), text
            t += 3541
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
        A._HOUR_STARTS.clear()
    for bad in ["2026-13-01T00:00:00", "2026-12-01 14:49:14", "2026-12-01T14:61:00", "yesterday"]:
        with pytest.raises(ValueError):
            A.parse_slurm_time(bad)

"""Job logs: the tail reader (complete lines only, offsets, a partial last line taken once
the job ended, truncated or replaced files read again from their start, bounded memory),
log paths resolved from SLURM's %-patterns, the log-event matcher, and, in the controller
with a scripted SLURM, logs shared by all attempts, an ended job read to the end of its log,
and a shared log truncated by the next attempt. Log-event patterns that could take
exponential time, and termination strings with a line break, are refused; lines that are not
plain are read as they are meant: a progress bar redrawn with carriage returns, a
termination string cut by a read boundary inside a huge line, a log rotated between
cycles, a FIFO at the log's path."""

import os
import shutil
import time

import pytest

from helpers import (A, Harness, autoexp, controller_config as config, monitoring, read_events, refused, resolve,
                     running, timeout_stall_config)

pytestmark = pytest.mark.timeout(30)


# --- the tail reader and log paths ----------------------------------------------------


def test_read_log_complete_lines_offsets_and_replacement(tmp_path):
    p = str(tmp_path / "x.log")
    assert autoexp.read_log(p, 0, None).lines == []
    with open(p, "wb") as f:
        f.write(b"one\ntw")
    r = autoexp.read_log(p, 0, None)
    assert r.lines == ["one"] and r.offset == 4
    with open(p, "ab") as f:
        f.write(b"o\nthree\n")
    r2 = autoexp.read_log(p, r.offset, r.inode)
    assert r2.lines == ["two", "three"] and not r2.restarted
    # no new bytes: nothing
    assert autoexp.read_log(p, r2.offset, r2.inode).lines == []
    # a partial final line is taken when the job has ended
    with open(p, "ab") as f:
        f.write(b"TRAINING FINISHED")
    assert autoexp.read_log(p, r2.offset, r2.inode).lines == []
    assert autoexp.read_log(p, r2.offset, r2.inode, final=True).lines == ["TRAINING FINISHED"]
    # truncation: read from the start, once
    with open(p, "wb") as f:
        f.write(b"new\n")
    r3 = autoexp.read_log(p, r2.offset, r2.inode)
    assert r3.restarted and r3.lines == ["new"] and r3.offset == 4
    # replaced by another file of the same size or larger: new inode
    os.rename(p, p + ".old")
    with open(p, "wb") as f:
        f.write(b"other file\nmore\n")
    r4 = autoexp.read_log(p, r3.offset, r3.inode)
    assert r4.restarted and r4.lines == ["other file", "more"]


def test_read_log_bounds_memory(tmp_path):
    p = str(tmp_path / "big.log")
    with open(p, "wb") as f:
        f.write(b"x" * 1000 + b"\n" + b"y" * 10)
    r = autoexp.read_log(p, 0, None, max_bytes=100)
    assert r.offset == 100 and len(r.lines) == 1  # an over-long line is cut, never buffered whole


def test_resolve_log_path():
    f = autoexp.resolve_log_path
    assert f("/l/%x-%j.log", "12", "12", "job", "u") == "/l/job-12.log"
    assert f("/l/p-%A_%a.log", "3_1", None, "p", "u") == "/l/p-3_1.log"
    assert f("/l/p-%j.log", "3_1", None, "p", "u") is None  # the task's own id is unknown yet
    assert f("/l/p-%j.log", "3_1", "5", "p", "u") == "/l/p-5.log"
    assert f("/l/50%%-%u-%4a.log", "3_1", None, "p", "bob") == "/l/50%-bob-0001.log"


def test_log_matcher():
    mon = monitoring(termination_string="TRAINING FINISHED",
                     log_events=[{"name": "oom", "pattern": r"CUDA out of memory", "mode": "oom"},
                                 {"name": "nccl", "pattern": r"NCCL (error|timeout)", "mode": "crash"}])
    hits = autoexp.LogMatcher(mon).scan(["step 1", "NCCL timeout at x", "RuntimeError: CUDA out of memory",
                                         "TRAINING FINISHED"])
    assert [(h.event, h.mode) for h in hits] == [("nccl", "crash"), ("oom", "oom"), ("success", "success")]


# --- in the controller ---------------------------------------------------------------


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


def test_a_shared_log_rewritten_by_another_job_is_not_this_attempts(tmp_path):
    """Found by the simulator (F6): with a log path shared by every attempt (no %j), lines a
    later job wrote after it truncated the file were credited to an attempt that had
    ended (or whose state SLURM did not tell), so it was called a success."""
    cfg = config()
    cfg["job"]["log"] = "logs/{name}.log"
    h = Harness(tmp_path, cfg, names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    path = h.log(A, "step 1\n")
    h.cycle()
    h.slurm.set(jid, "COMPLETED")
    h.slurm.fail["sacct"] = 3  # the end is seen in squeue; sacct does not answer for a while
    with open(path, "w") as f:  # meanwhile another job (a copy started by hand) rewrites the file
        f.write("TRAINING FINISHED\n")
    later = h.clock() + 120  # after the end SLURM records for this attempt's job
    os.utime(path, (later, later))
    for _ in range(4):
        h.cycle()
    att = h.job(A).attempts[0]
    assert att.outcome == "incomplete" and not att.success_seen


class _Counting(object):
    """A log file that counts the bytes autoexp reads from it."""

    def __init__(self, f, tally):
        self.f, self.tally = f, tally

    def read(self, n=-1):
        data = self.f.read(n)
        self.tally[0] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_cycle_reads_what_was_appended_and_opens_no_unchanged_log(tmp_path, monkeypatch):
    h = Harness(tmp_path, config(), names=[A])
    h.slurm.set(h.live_id(A), "RUNNING")
    h.cycle()
    h.log(A, "x" * 5000 + "\n")
    h.cycle()
    opened, tally = [0], [0]
    real = autoexp.open_log

    def counting(path):
        opened[0] += 1
        f, st = real(path)
        return _Counting(f, tally), st
    monkeypatch.setattr(autoexp, "open_log", counting)
    for _ in range(3):
        h.cycle()  # nothing appended: the log is not even opened
    assert opened == [0] and tally == [0]
    for n in (10, 300, 4096):
        h.log(A, "y" * (n - 1) + "\n")
        before = tally[0]
        h.cycle()
        assert tally[0] - before == n  # exactly the bytes appended, not a byte of the start again


# --- log-event patterns and termination strings that could never work ------------------


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a*)*b", "(a|a)*$", "(x+x+)+y", "(\\w+\\s?)+$"])
def test_log_event_patterns_with_nested_repetition_are_refused(pattern):
    cfg = timeout_stall_config(log_events=[{"name": "bad", "pattern": pattern, "mode": "crash"}])
    refused(cfg, "monitoring.log_events[0].pattern", "exponential")


@pytest.mark.parametrize("pattern", ["CUDA out of memory", "NCCL (error|WARN)", "loss=nan", "a+b", "^step \\d+",
                                     "x{2,5}y", "(foo)+"])
def test_ordinary_log_event_patterns_are_accepted(pattern):
    resolve(timeout_stall_config(log_events=[{"name": "ok", "pattern": pattern, "mode": "crash"}]))


@pytest.mark.timeout(20)
def test_a_quadratic_log_event_pattern_on_a_huge_line_returns(tmp_path):
    # matching is bounded: a pattern that is slow on a long line (not a refused one) returns
    mon = autoexp.make_monitoring(autoexp.validate_monitoring(
        {"log_events": [{"name": "q", "pattern": "a*b", "mode": "crash"}]}, autoexp._Checker("t")))
    t = time.time()
    assert autoexp.LogMatcher(mon).scan(["a" * (4 << 20)]) == []
    assert time.time() - t < 10


@pytest.mark.parametrize("term", ["DONE\n", "line one\nline two", "A\rB"])
def test_a_termination_string_with_a_line_break_is_refused(term):
    # lines are matched one by one: such a string could never match
    refused(timeout_stall_config(termination_string=term), "termination_string", "line break")


# --- lines that are not plain: progress bars, huge lines, rotated logs, a FIFO -----------


def test_a_progress_bar_without_newlines_is_not_a_stall(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(inactivity_threshold_seconds=30), names=[A])
    running(h, A)
    jid = h.live_id(A)
    for pct in range(0, 100, 5):
        h.log(A, "\rEpoch 1: %3d%%|%s| %d/100" % (pct, "#" * (pct // 5), pct))
        h.cycle(advance=20)
    att = h.job(A).current
    assert att.job_id == jid and att.outcome is None and att.live
    assert ("scancel", jid) not in h.slurm.calls
    assert h.job(A).status == "active"


def test_a_log_truncated_and_written_again_to_its_old_size_is_activity(tmp_path):
    # a copytruncate rotation between two looks, then the job writes as much again: same
    # size, same inode, only the modification time tells that it was written (simulator
    # seed 1492: a healthy job was cancelled as a stall)
    h = Harness(tmp_path, timeout_stall_config(inactivity_threshold_seconds=60), names=[A])
    running(h, A)
    path = h.log(A, "step 1\n")
    os.utime(path, (1000, 1000))
    h.cycle()
    jid = h.live_id(A)
    assert h.job(A).current.log_size == 7 and h.job(A).current.log_mtime == 1000
    for i in range(2, 7):
        with open(path, "r+b") as f:
            f.truncate(0)
        with open(path, "ab") as f:
            f.write(("step %d\n" % i).encode())
        os.utime(path, (1000 + i, 1000 + i))
        h.cycle(advance=40)
    att = h.job(A).current
    assert (att.job_id, att.outcome, att.live, att.log_size) == (jid, None, True, 7)
    assert ("scancel", jid) not in h.slurm.calls
    os.utime(path, (2000, 2000))
    h.cycle(advance=40)
    assert h.job(A).current.log_mtime == 2000
    h.cycle(advance=40)
    h.cycle(advance=40)  # then silent: a stall as before
    assert h.job(A).current.outcome == "stall"


def test_a_run_again_between_two_looks_that_wrote_past_the_old_size_is_read_from_its_start(tmp_path):
    # requeued under its id, ran again and ended between two looks: the rerun truncated the
    # log and wrote more than the first run had, the termination string before the old
    # offset; SLURM's start of the run is later than the last write read (simulator F8)
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    jid = h.live_id(A)
    path = h.log(A, "run 1: step 1\nrun 1: step 2\n")
    os.utime(path, (h.clock() - 600, h.clock() - 600))
    h.cycle()
    assert h.job(A).current.log_offset == 28
    with open(path, "w") as f:
        f.write("run 2\nTRAINING FINISHED\n" + "x" * 100 + "\n")
    h.slurm.jobs[jid]["start"] = h.clock() + 60
    h.clock.sleep(120)
    h.slurm.set(jid, "COMPLETED")
    h.cycle()
    job = h.job(A)
    assert job.status == "finalized" and job.current.outcome == "success" and h.slurm.count("sbatch") == 1
    assert "log_restarted" in [e["event"] for e in read_events(h.state_dir, "p1")]


def test_a_line_split_by_carriage_returns_is_matched_once_it_is_complete(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    h.log(A, "\r 99%|####|\rTRAINING FINISHED\r")
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).status == "finalized" and h.job(A).current.outcome == "success"


def test_the_termination_string_across_a_piece_boundary(tmp_path):
    # a termination string cut by a read boundary inside a huge line is found
    path = str(tmp_path / "log")
    term = "TRAINING FINISHED"
    with open(path, "w") as f:
        f.write("x" * (100 - 5) + term + "y" * 300)  # one line, no newline, cut at 100 bytes
    mon = autoexp.make_monitoring(autoexp.validate_monitoring({"termination_string": term}, autoexp._Checker("t")))
    matcher, offset, hits = autoexp.LogMatcher(mon), 0, []
    for _ in range(20):
        read = autoexp.read_log(path, offset, None, final=False, max_bytes=100, overlap=matcher.overlap)
        hits += matcher.scan(read.lines)
        if read.offset == offset:
            break
        offset = read.offset
    assert [h.event for h in hits][:1] == ["success"]


def test_the_termination_string_across_a_piece_boundary_in_a_real_four_mib_line(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    h.log(A, "x" * (autoexp.MAX_LOG_READ - 6) + "TRAINING FINISHED" + "y" * 10)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).current.outcome == "success" and h.job(A).status == "finalized"


def test_a_log_rotated_between_cycles_is_read_to_its_end(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    path = h.log(A, "step 1\n")
    h.cycle()
    with open(path, "a") as f:
        f.write("step 2\nTRAINING FINISHED\n")
    os.rename(path, path + ".1")  # logrotate, between two cycles
    with open(path, "w") as f:
        f.write("fresh log\n")
    h.cycle()
    assert h.job(A).current.success_seen
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).status == "finalized"


def _copytruncate(path, suffix=".1", mtime=None):
    # logrotate's copytruncate: the content copied to a new file, the log truncated in place
    shutil.copyfile(path, path + suffix)
    with open(path, "r+b") as f:
        f.truncate(0)
    if mtime is not None:
        os.utime(path + suffix, (mtime, mtime))
        os.utime(path, (mtime, mtime))


@pytest.mark.parametrize("suffix", [".1", "-%Y%m%d"])
def test_a_log_copied_and_truncated_between_cycles_has_its_last_lines_read_in_the_copy(tmp_path, suffix):
    # simulator rotate_tail: the termination string written, then copytruncate, then the end
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    suffix = time.strftime(suffix, time.localtime(h.clock()))  # dateext: the day it ran
    t = h.clock()  # SLURM started the job a moment ago: the log is written from now on
    path = h.log(A, "step 1\n")
    os.utime(path, (t + 10, t + 10))
    h.cycle()
    with open(path, "a") as f:
        f.write("step 2\nTRAINING FINISHED\n")
    _copytruncate(path, suffix, mtime=t + 20)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    job = h.job(A)
    assert job.status == "finalized" and job.current.outcome == "success" and h.slurm.count("sbatch") == 1


def test_a_log_copied_and_truncated_before_it_was_ever_read(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    path = h.log(A, "step 1\nTRAINING FINISHED\n")
    _copytruncate(path, mtime=h.clock() + 10)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).current.outcome == "success"


def test_a_copy_read_once_and_an_old_copy_never(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    path = h.log(A, "step 1\n")
    t = h.clock()
    with open(path + ".1", "w") as f:
        f.write("step 1\nTRAINING FINISHED\n")  # an older run's copy, written before the last read
    os.utime(path + ".1", (t - 900, t - 900))
    os.utime(path, (t + 10, t + 10))
    h.cycle()
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).attempts[0].outcome == "incomplete"  # the old copy is not this run's


def test_a_copy_that_starts_otherwise_is_read_whole(tmp_path):
    # the file was truncated and rewritten past the old size before the copy (the size did
    # not show it): the offset means nothing in the copy, which is read from its start;
    # lines matched before are not matched again (simulator rotate_tail seed 120)
    cfg = timeout_stall_config(log_events=[{"name": "w", "pattern": "WARN", "mode": "noise"}])
    cfg["restart"]["noise"] = {"action": "ignore"}
    h = Harness(tmp_path, cfg, names=[A])
    running(h, A)
    t = h.clock()
    path = h.log(A, "WARN step 1\n")
    os.utime(path, (t + 10, t + 10))
    h.cycle()
    assert h.job(A).current.log_head == autoexp._head_of(b"WARN step 1\n")
    with open(path + ".1", "w") as f:
        f.write("WARN other\nTRAINING FINISHED\n")
    os.utime(path + ".1", (t + 20, t + 20))
    with open(path, "r+b") as f:
        f.truncate(0)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    att = h.job(A).attempts[0]
    assert att.success_seen and att.log_matches == ["w", "success"]
    events = [e for e in read_events(h.state_dir, "p1")]
    assert [e["event"] for e in events].count("log:w") == 1
    assert any(e["event"] == "log_restarted" and "demo-s1-%s.log.1" % att.job_id in e["detail"] for e in events)


def _write(path, text, mtime, mode="a"):
    with open(path, mode) as f:
        f.write(text)
    os.utime(path, (mtime, mtime))


def test_a_copy_in_the_same_second_as_the_last_read_is_read(tmp_path):
    # Lustre keeps whole seconds: the last read, the last write and the copy share one
    # (outside review)
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    t = int(h.clock())
    path = h.log(A, "step 1\n")
    os.utime(path, (t, t))
    h.cycle()
    with open(path, "a") as f:
        f.write("step 2\nTRAINING FINISHED\n")
    _copytruncate(path, mtime=t)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert [a.outcome for a in h.job(A).attempts] == ["success"]


@pytest.mark.parametrize("days", [2, 5, -1])
def test_a_dated_copy_is_found_after_the_monitor_was_away_for_days(tmp_path, days):
    # rotated the day of the last read; the monitor looks again `days` later (-1: the host
    # that rotated dates the copy a day ahead, another time zone) (outside review)
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    t = h.clock()
    path = h.log(A, "step 1\n")
    os.utime(path, (t, t))
    h.cycle()
    with open(path, "a") as f:
        f.write("step 2\nTRAINING FINISHED\n")
    dated = time.strftime("-%Y%m%d", time.localtime(h.clock() + (86400 if days < 0 else 0)))
    _copytruncate(path, dated, mtime=t + 30)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle(advance=max(days, 0) * 86400 + 10)
    assert [a.outcome for a in h.job(A).attempts] == ["success"]


def test_a_symbolic_link_at_a_copys_name_is_not_read(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(), names=[A])
    running(h, A)
    t = h.clock()
    path = h.log(A, "step 1\n")
    os.utime(path, (t, t))
    h.cycle()
    other = str(tmp_path / "elsewhere.log")
    _write(other, "step 1\nTRAINING FINISHED\n", t + 30)
    os.symlink(other, path + ".1")
    with open(path, "r+b") as f:
        f.truncate(0)
    h.slurm.set(h.live_id(A), "COMPLETED")
    h.cycle()
    assert h.job(A).attempts[0].outcome == "incomplete"


def test_a_shared_logs_copy_of_the_attempt_before_is_never_read_for_the_next(tmp_path):
    # the log of every attempt copied while the next one was pending, then both files
    # touched (a scratch purge guard): the copy starts otherwise than the running attempt's
    # log and holds the attempt before's lines; it is not read whole (outside review)
    cfg = timeout_stall_config(log_events=[{"name": "nccl", "pattern": "NCCL error", "mode": "nccl"}])
    cfg["job"]["log"] = "logs/{name}.log"
    cfg["restart"]["nccl"] = {"action": "restart", "max_attempts": 3}
    h = Harness(tmp_path, cfg, names=[A])
    first = h.live_id(A)
    h.slurm.set(first, "RUNNING")
    h.cycle()
    path = h.job(A).current.resolved_log_path
    _write(path, "step\n" * 10 + "NCCL error\n", h.clock())
    h.slurm.set(first, "TIMEOUT")
    h.cycle()
    h.cycle()
    assert len(h.job(A).attempts) == 2
    second = h.live_id(A)
    h.clock.now += 60
    _copytruncate(path, mtime=h.clock())        # the daily rotation while it is pending
    h.clock.now += 60
    h.slurm.set(second, "RUNNING")
    _write(path, "attempt 2 healthy\n" * 3, h.clock(), mode="w")
    h.cycle()
    h.cycle()
    h.clock.now += 60
    for p in (path, path + ".1"):
        os.utime(p, (h.clock(), h.clock()))
    h.cycle()
    h.cycle()
    att = h.job(A).attempts[1]
    assert att.live and att.outcome is None and not att.log_matches and ("scancel", second) not in h.slurm.calls


@pytest.mark.timeout(20)
def test_a_fifo_at_the_log_path_is_refused_not_waited_on(tmp_path):
    # nor another file that is not a regular one: reading it never blocks
    h = Harness(tmp_path, timeout_stall_config(inactivity_threshold_seconds=30), names=[A])
    jid = h.live_id(A)
    path = autoexp.resolve_log_path(h.plan.by_name[A].log_template, jid, jid, A, h.slurm.user)
    os.mkfifo(path)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.cycle(advance=60)
    att = h.job(A).current
    assert "not a regular file" in (att.log_error or "")
    assert [e["event"] for e in read_events(h.state_dir, "p1")].count("log_unreadable") == 1
    assert att.outcome is None  # an unreadable log is no evidence of a stall


def test_a_shared_log_its_own_job_rewrote_before_ending_is_this_attempts(tmp_path):
    """Found by the simulator (F11): the job was requeued under its id while no monitor ran;
    its new run truncated the shared log, wrote the termination string and ended. The log
    restarted, but it was last written before SLURM's end of this very job: its own lines,
    read, so the finished job is not run again."""
    cfg = config()
    cfg["job"]["log"] = "logs/{name}.log"
    h = Harness(tmp_path, cfg, names=[A])
    jid = h.live_id(A)
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    path = h.log(A, "".join("step %d\n" % i for i in range(200)))
    h.cycle()
    assert h.job(A).current.log_offset > 100
    h.clock.now += 3600  # unwatched: requeued by hand, run again, finished
    with open(path, "w") as f:
        f.write("step 0\nTRAINING FINISHED\n")
    written = h.clock() - 5
    os.utime(path, (written, written))
    h.slurm.set(jid, "COMPLETED")
    h.cycle()
    att = h.job(A).attempts[0]
    assert att.success_seen and att.outcome == "success" and h.job(A).status == "finalized"
    assert h.slurm.count("sbatch") == 1

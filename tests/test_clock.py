"""Clock jumps, in the controller with a scripted SLURM: the wall clock may jump (NTP steps it,
or a login node's runs ahead) while durations are measured on the monotonic clock, so a jump
forward is no stall, a jump back does not freeze the monitor's pause, a jump between two
processes on one host is measured, and a clock ahead at submission does not lose a finished
job."""

import pytest

from helpers import A, Harness, autoexp, timeout_stall_config

pytestmark = pytest.mark.timeout(60)


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
    h = Harness(tmp_path, timeout_stall_config(**mon), names=[A])
    clocks = TwoClocks(h.clock())
    h.ctl = autoexp.Controller(h.store, h.slurm, h.ctl.report, clock=clocks.time, sleep=clocks.sleep,
                               mono=clocks.monotonic)
    h.slurm.clock = clocks.time
    return h, clocks


def test_a_forward_clock_jump_is_not_a_stall(tmp_path):
    h, c = jumping_harness(tmp_path, inactivity_threshold_seconds=1800)
    h.slurm.set(h.live_id(A), "RUNNING")
    h.ctl.cycle([h.session])
    for i in range(5):
        h.log(A, "step %d\n" % i)
        c.sleep(60)
        if i == 2:
            c.wall += 3600  # NTP steps the clock an hour forward
        h.ctl.cycle([h.session])
    att = h.job(A).current
    assert att.outcome is None and att.live and not [x for x in h.slurm.calls if x[0] == "scancel"]


def test_a_backward_clock_jump_does_not_freeze_the_monitor(tmp_path):
    h, c = jumping_harness(tmp_path)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        c.mono += seconds
        c.wall += seconds - (3600 if len(slept) == 1 else 0)  # the clock goes back an hour
    h.ctl.sleep = sleep
    assert h.ctl._pause(10) is False
    assert sum(slept) == pytest.approx(10)


def test_a_clock_jump_between_two_processes_on_one_host_is_measured(tmp_path):
    h, c = jumping_harness(tmp_path, inactivity_threshold_seconds=1800)
    h.slurm.set(h.live_id(A), "RUNNING")
    h.log(A, "step 0\n")
    h.ctl.cycle([h.session])
    h.log(A, "step 1\n")
    c.sleep(60)
    h.ctl.cycle([h.session])  # saved, with its clock reference
    c.sleep(60)
    c.wall += 7200  # between two cron passes
    ctl = autoexp.Controller(h.store, h.slurm, h.ctl.report, clock=c.time, sleep=c.sleep, mono=c.monotonic)
    s = h.reload()
    ctl.cycle([s])
    att = s.job(A).current
    assert att.outcome is None and att.live


def test_a_clock_ahead_at_submission_does_not_lose_a_finished_job(tmp_path):
    h = Harness(tmp_path, timeout_stall_config(lost_after_seconds=60), names=[A])
    jid = h.live_id(A)
    att = h.job(A).current
    att.intent_at += 2 * 3600  # the login node's clock was two hours ahead when it decided
    h.slurm.set(jid, "RUNNING")
    h.cycle()
    h.log(A, "TRAINING FINISHED\n")
    h.slurm.set(jid, "COMPLETED")
    h.slurm.purge(jid)  # gone from squeue: only sacct knows
    for _ in range(10):
        h.cycle(advance=30)
    assert h.job(A).status == "finalized" and h.slurm.count("sbatch") == 1

"""The deterministic simulator (tests/sim.py) in the suite: a fixed budget of seeds with every
invariant checked after every step, determinism, and the known bugs as strict xfails that
turn into failures (to un-xfail) once fixed."""

import os
import subprocess
import sys

import pytest

import sim

# The CI budget. The fast part runs in every `pytest` run; the slow part (marked slow) is the
# bulk of the budget, on two processes. Seeds never change: a failure is replayable with
# `python3 tests/sim.py --seed N --replay` and shrinks with --shrink.
FAST_SEEDS = range(0, 40)
SLOW_SEEDS = range(40, 640)
WORKERS = 2


def _report(results):
    bad = [r for r in results if r[1] is not None]
    return "\n".join("seed %d: %s: %s\n  replay: python3 tests/sim.py --seed %d --replay   (shrink: --shrink)"
                     % (r[0], r[1], r[2], r[0]) for r in bad)


@pytest.mark.timeout(300)
def test_seeds_fast():
    results = sim.run_many(FAST_SEEDS)
    assert not [r for r in results if r[1]], _report(results)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_seeds_budget(capsys):
    results = sim.run_many(SLOW_SEEDS, workers=WORKERS)
    days = sum(r[3] for r in results) / 86400.0
    with capsys.disabled():
        sys.stdout.write("\nsimulator: %d seeds, %.1f simulated sweep-days, %d steps, %d monitor cycles\n" % (
            len(results), days, sum(r[4] for r in results), sum(r[5] for r in results)))
    assert not [r for r in results if r[1]], _report(results)


@pytest.mark.timeout(120)
def test_same_seed_same_trace():
    """Same seed, same trace, byte for byte: twice here, and once in another process with
    another hash seed (set iteration order must not matter)."""
    seed = 7
    a = sim.run_seed(seed, keep_trace=True)
    b = sim.run_seed(seed, keep_trace=True)
    assert a.trace == b.trace and a.digest == b.digest
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, os.path.join(sim.HERE, "sim.py"), "--seed", str(seed)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=100)
    assert "trace sha1 %s" % a.digest in out.stdout, out.stdout + out.stderr


class ExpectedViolation(AssertionError):
    """The invariant a known bug breaks, broken as expected."""


# (scenario switch, seed that shows it, the invariant it breaks). Each is a strict xfail: once
# the bug is fixed the seed passes, the xfail turns into a failure, and the entry must be
# moved to FIXED (which runs it as a normal test) and the switch into the default mix.
KNOWN = [
    # issue 11's list
    ("tqdm_progress", 0, "no-healthy-cancel"),        # item 1
    ("clock_jumps", 8, "keeps-cycling"),              # item 9: backward jump freezes the monitor
    ("clock_jumps", 11, "no-healthy-cancel"),         # item 9: forward jump makes a stall
    ("clock_ahead", 1, "no-rerun"),                   # item 9: -S window after the job's end
    ("jobid_wrap", 15, "one-live"),                   # item 12
    ("squeue_extra_column", 11, "one-live"),          # item 13
    ("throttle_overflow", 1, "no-traceback"),         # item 8
    ("term_at_4mib", 0, "no-rerun"),                  # item 15
    ("rotate_tail", 0, "no-rerun"),                   # item 21: rotation loses the last lines
    ("lock_deleted", 3, "journal"),                   # item 4
    ("foreign_newline", 0, "converges"),              # item 18
    ("term_newline", 0, "no-rerun"),                  # item 16
    ("sbatch_notice", 88, "no-orphan"),               # item 20 (its harm here goes through F5)
    # found by the simulator (sim.FINDINGS)
    ("suspend_stall", 14, "no-healthy-cancel"),       # F1
    ("cron_recovery", 10, "journal"),                 # F2: events
    ("cron_recovery", 18, "actions-once"),            # F2: payloads
    ("slow_accounting", 76, "no-orphan"),             # F3
    ("throttle_then_error", 5, "retries-honoured"),   # F4
    ("queued_last_try", 72, "no-orphan"),             # F5
    ("shared_log_replace", 41, "true-success"),       # F6
    ("unknown_state_requeue", 13, "one-live"),        # F7
    ("requeue_after_end", 23, "no-rerun"),            # F8
    ("runaway_record", 14, "converges"),              # F9
]
FIXED = [
]


def _run_known(scenario, seed, invariant):
    res = sim.run_seed(seed, [scenario])
    if res.violation is None:
        return
    if res.violation == invariant:
        raise ExpectedViolation("%s (seed %d): %s" % (scenario, seed, res.stats["detail"]))
    raise AssertionError("%s (seed %d) broke %s, not the expected %s: %s" % (
        scenario, seed, res.violation, invariant, res.stats["detail"]))


@pytest.mark.timeout(300)
@pytest.mark.xfail(strict=True, raises=ExpectedViolation)
@pytest.mark.parametrize("scenario,seed,invariant", KNOWN, ids=["%s-%d" % k[:2] for k in KNOWN])
def test_known_bug(scenario, seed, invariant):
    _run_known(scenario, seed, invariant)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario,seed,invariant", FIXED, ids=["%s-%d" % k[:2] for k in FIXED])
def test_fixed_bug(scenario, seed, invariant):
    _run_known(scenario, seed, invariant)

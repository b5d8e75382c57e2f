#!/usr/bin/env python3
"""A longer crash soak than CI runs: many sweeps with restarts on the fake SLURM, each
monitor SIGKILLed at random moments (seeded) and resumed, every invariant of
tests/test_crash.py checked after each sweep. Prints the counts.

    .venv-test/bin/python bench/soak.py [TRIALS] [SEED]      (default: 30 trials, seed 1)

(.venv-test is made by tests/run.sh; the invariants are the tests' own.)
"""

import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from conftest import fake_slurm  # noqa: E402
import test_crash  # noqa: E402


def trial(root, plan_id, rng):
    fake = fake_slurm.FakeSlurm(str(root / "fake"))
    try:
        return test_crash._sigkill_trial(root / "proj", fake, plan_id, rng, max_kills=4)
    finally:
        fake.shutdown()


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)
    kills = subs = failures = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(trials):
            root = Path(tmp) / ("t%d" % i)
            root.mkdir()
            try:
                k, n = trial(root, "soak%d" % i, rng)
                kills += k
                subs += n
            except Exception:  # report and go on: one soak run shows every kind of failure
                failures += 1
                print("trial %d FAILED:\n%s" % (i, traceback.format_exc()))
    print("soak: %d trials, %d SIGKILLs, %d submissions (expected %d), %d invariant violations, %.0fs"
          % (trials, kills, subs, trials * sum(len(v) for v in test_crash.EXPECTED.values()), failures,
             time.time() - t0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The deterministic simulator at any budget: runs seeds (on several processes) and prints
simulated sweep-days, seeds, steps, monitor cycles, wall time and every failing seed with the
command that replays it.

    python3 bench/sim.py [--seeds A:B] [--workers N] [--scenario NAME ...] [--no-mix] [--scan]
                         [--grep REGEX]

Without --scenario the seeds run the default mix (tests/sim.py MIX); --no-mix turns it off.
--scan runs every scenario switch (tests/sim.py KNOWN_BUGS and FINDINGS) on the seed range and
prints, per switch, how many seeds fail and the first ones: how the xfail seeds of
tests/test_sim.py were found. --grep prints the seeds whose trace matches REGEX (a multiline
search): how the FIXED seeds, which must show their situation, were found. Set
AUTOEXP_PARANOID=1 to measure with the store's change-tracking check on. Nothing is asserted:
figures, not a test.
"""

import argparse
import collections
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import sim  # noqa: E402


def summary(results, wall):
    days = sum(r[3] for r in results) / 86400.0
    steps = sum(r[4] for r in results)
    cycles = sum(r[5] for r in results)
    bad = [r for r in results if r[1]]
    print("%d seeds, %.1f simulated sweep-days, %d steps, %d monitor cycles, %d failing, %.1f s wall "
          "(%.1f sweep-days/s)" % (len(results), days, steps, cycles, len(bad), wall, days / max(wall, 1e-9)))
    return bad


def _grep_one(args):
    seed, scenarios, mix, pattern = args
    res = sim.run_seed(seed, scenarios, keep_trace=True, mix=mix)
    return seed, res.violation, bool(re.search(pattern, "\n".join(res.trace), re.M))


def grep(seeds, scenarios, mix, pattern, workers):
    jobs = [(seed, tuple(scenarios), mix, pattern) for seed in seeds]
    if workers <= 1:
        return [_grep_one(j) for j in jobs]
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return sorted(pool.imap_unordered(_grep_one, jobs, chunksize=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0:200", help="A:B (default 0:200)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--scenario", action="append", default=[], choices=list(sim.SCENARIOS))
    ap.add_argument("--no-mix", dest="mix", action="store_false", help="without --scenario: no switch at all")
    ap.add_argument("--scan", action="store_true", help="every scenario switch on the seed range")
    ap.add_argument("--grep", metavar="REGEX", help="the seeds whose trace matches REGEX")
    args = ap.parse_args()
    lo, _, hi = args.seeds.partition(":")
    seeds = range(int(lo), int(hi))
    if args.grep:
        out = grep(seeds, args.scenario, args.mix, args.grep, args.workers)
        hits = [r for r in out if r[2]]
        print("%d/%d seeds match: %s" % (len(hits), len(out), " ".join(
            "%d%s" % (r[0], "" if r[1] is None else "(FAIL %s)" % r[1]) for r in hits)))
        return 0
    if args.scan:
        for name in args.scenario or list(sim.SCENARIOS):
            t = time.time()
            results = sim.run_many(seeds, [name], workers=args.workers)
            bad = [r for r in results if r[1]]
            kinds = collections.Counter(r[1] for r in bad)
            print("%-22s %3d/%d fail %s (%.0f s)  first: %s" % (
                name, len(bad), len(results), dict(kinds), time.time() - t,
                ", ".join("%d:%s" % (r[0], r[1]) for r in bad[:6])))
            sys.stdout.flush()
        return 0
    t = time.time()
    results = sim.run_many(seeds, args.scenario, workers=args.workers, mix=args.mix)
    bad = summary(results, time.time() - t)
    for r in bad:
        print("seed %d: %s: %s" % (r[0], r[1], r[2]))
        print("  " + sim.replay_command(r[0], args.scenario, mix=args.mix))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

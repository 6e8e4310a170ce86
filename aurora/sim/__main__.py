"""Command line: run seeds, print the first failing seed with its replay command."""
import argparse
import multiprocessing
import os
import resource
import sys
import time

from aurora.sim.bugs import BUGS, active_bug
from aurora.sim.world import Violation, run_seed


def replay_command(seed, swarm, bug, long=False):
    return "python -m aurora.sim --seed %d%s%s%s" % (seed, " --swarm" if swarm else "", " --long" if long else "",
                                                     " --bug %s" % bug if bug else "")


def default_workers():
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_seconds():
    """User + system CPU time of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def check_seed(args):
    """(seed, None) or (seed, violation message); picklable for the worker pool."""
    seed, swarm, bug, long = args
    try:
        run_seed(seed, swarm, bug, long)
        return seed, None
    except Violation as exc:
        return seed, str(exc)
    except Exception as exc:   # a crash of the simulator or of the code under test
        return seed, "%s: %s" % (type(exc).__name__, exc)


def run_seeds(first, count, swarm=False, bug=None, workers=1, stop_at_first=True, long=False):
    """Run seeds first..first+count-1; returns (seeds run, [(seed, message)])."""
    jobs = [(seed, swarm, bug, long) for seed in range(first, first + count)]
    failures = []
    ran = 0
    if workers <= 1:
        results = map(check_seed, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(check_seed, jobs, chunksize=8)
    try:
        for seed, message in results:
            ran += 1
            if message is not None:
                failures.append((seed, message))
                if stop_at_first:
                    break
    finally:
        if pool is not None:
            pool.terminate()
    return ran, failures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aurora.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds to run (default 1 with --seed, else 100)")
    parser.add_argument("--seed", type=int, default=None, help="the (first) seed")
    parser.add_argument("--swarm", action="store_true", help="each seed draws its own fault probabilities")
    parser.add_argument("--long", action="store_true",
                        help="600 MTRs a seed and a background slice every few ms: logs roll over and GC deletes files")
    parser.add_argument("--bug", choices=sorted(BUGS), default=None,
                        help="plant a known bug (also AURORA_SIM_BUG); the simulator should find it")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes to run seeds in (default: one per CPU)")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at the first failing seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each seed's faults and stats")
    args = parser.parse_args(argv)
    bug = active_bug(args.bug)
    first = args.seed if args.seed is not None else 0
    count = args.seeds if args.seeds is not None else (1 if args.seed is not None else 100)
    if args.verbose and count == 1:
        try:
            world = run_seed(first, args.swarm, bug, args.long)
            print("seed %d ok: %s\nfaults: %s" % (first, world.stats, world.faults.describe()))
            return 0
        except Violation as exc:
            print("seed %d FAILED: %s\nreplay: %s" % (first, exc, replay_command(first, args.swarm, bug, args.long)))
            return 1
    workers = args.workers if args.workers is not None else min(default_workers(), count)
    started = time.monotonic()
    cpu_started = cpu_seconds()
    ran, failures = run_seeds(first, count, args.swarm, bug, workers, not args.keep_going, args.long)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds() - cpu_started
    for seed, message in failures:
        print("seed %d FAILED: %s\nreplay: %s" % (seed, message, replay_command(seed, args.swarm, bug, args.long)))
    # CPU time too: on a shared machine the wall clock says as much about the neighbours.
    print("%d seeds in %.1f s with %d worker%s (%.0f seeds/minute; %.1f s CPU, %.0f seeds per CPU-minute), "
          "%d failed%s"
          % (ran, elapsed, workers, "" if workers == 1 else "s", ran / elapsed * 60 if elapsed else 0,
             cpu, ran / cpu * 60 if cpu else 0, len(failures), "; planted bug: %s" % bug if bug else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

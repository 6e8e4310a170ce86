"""Quorum tracker throughput in acks per second: native against the pure-Python reference.

    python -m pytest bench/test_bench_quorum.py --benchmark-json=bench/results/quorum.json -q

One round of the workload sends one batch of 16 dense LSNs (the last one a CPL) to each of
the PGs, then all 6 members of every PG ack their batch with the batch's last LSN (so PGCL,
VCL and VDL advance on the 4th ack of each PG).  The timed call runs ROUNDS_PER_CALL rounds
from Python, registering records included; the acks-per-second figure counts acks only, so it
is a lower bound on the ack path alone.  "c-loop" runs the same workload inside C without the
GIL (aurora._native._quorum_bench_acks): what the tracker costs once the Python call is gone.

extra_info: acks_per_s at the median round, acks_per_s_best at the fastest one.
"""
import numpy as np
import pytest

from aurora._native import QuorumTracker as NativeTracker
from aurora._native import _quorum_bench_acks
from aurora.reference.quorum import QuorumTracker as ReferenceTracker

MEMBERS = 6
BATCH_RECORDS = 16
PG_COUNTS = (1, 16)
# Acks per timed call: 6 * PGs * rounds = 6144 for both PG counts.
ROUNDS_PER_CALL = {1: 1024, 16: 64}
BENCH_ROUNDS = {"native": 60, "reference": 8}
CONTENDERS = {"native": NativeTracker, "reference": ReferenceTracker}


def _workload(pgs):
    """The batches of one timed call, built outside the timing: (pg, lsns, last LSN) per
    batch, grouped by round."""
    cpl = np.zeros(BATCH_RECORDS, dtype=np.uint8)
    cpl[-1] = 1
    rounds = []
    lsn = 0
    for _ in range(ROUNDS_PER_CALL[pgs]):
        batches = []
        for pg in range(pgs):
            lsns = np.arange(lsn + 1, lsn + BATCH_RECORDS + 1, dtype=np.uint64)
            lsn += BATCH_RECORDS
            batches.append((pg, lsns, lsn))
        rounds.append(batches)
    return rounds, cpl


def _run(tracker, rounds, cpl):
    sent = tracker.sent
    ack = tracker.ack
    members = range(MEMBERS)
    for batches in rounds:
        for pg, lsns, _ in batches:
            sent(pg, lsns, cpl)
        for pg, _, last in batches:
            for m in members:
                ack(pg, m, last)
    assert tracker.vdl == rounds[-1][-1][2]


def _record(benchmark, acks):
    stats = benchmark.stats.stats
    benchmark.extra_info["acks"] = acks
    benchmark.extra_info["acks_per_s"] = round(acks / stats.median)
    benchmark.extra_info["acks_per_s_best"] = round(acks / stats.min)


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("pgs", PG_COUNTS)
def test_quorum_acks(benchmark, pgs, contender):
    benchmark.group = f"quorum-acks-{pgs}pg"
    rounds, cpl = _workload(pgs)

    def setup():  # a fresh tracker per timed call: LSNs restart at 1
        return (CONTENDERS[contender](MEMBERS, 4, 0), rounds, cpl), {}

    benchmark.pedantic(_run, setup=setup, rounds=BENCH_ROUNDS[contender], warmup_rounds=1)
    _record(benchmark, MEMBERS * pgs * ROUNDS_PER_CALL[pgs])


@pytest.mark.parametrize("pgs", PG_COUNTS)
def test_quorum_acks_c_loop(benchmark, pgs):
    benchmark.group = f"quorum-acks-{pgs}pg"
    rounds = 100_000 // pgs
    acks, vdl = benchmark.pedantic(_quorum_bench_acks, args=(pgs, rounds, BATCH_RECORDS),
                                   rounds=20, warmup_rounds=1)
    assert acks == MEMBERS * pgs * rounds and vdl == pgs * rounds * BATCH_RECORDS
    _record(benchmark, acks)

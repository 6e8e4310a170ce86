"""The quorum tracker: hand cases and threaded behaviour on both backends (native and the
pure-Python reference), then random interleavings and a hypothesis state machine that compare
the two after every step and hold them to DESIGN.md invariant 2 (SCL, PGCL, VCL, VDL only move
forward) plus VDL <= VCL and "VDL is a registered CPL or the start point"."""
import random
import threading
import time

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aurora import errors
from aurora._native import QuorumTracker as NativeTracker
from aurora._native import status_codes
from aurora.reference.quorum import QuorumTracker as ReferenceTracker

BACKENDS = {"native": NativeTracker, "reference": ReferenceTracker}
CODE_OF = {cls: code for code, cls in status_codes().items()}
# A thread that should have woken long ago; generous for a loaded 2-core machine.
JOIN_S = 10.0


@pytest.fixture(params=sorted(BACKENDS))
def Tracker(request):
    return BACKENDS[request.param]


def ack_all(t, pg, scl, members=range(6)):
    vdl = None
    for m in members:
        vdl = t.ack(pg, m, scl)
    return vdl


# ---- hand cases ------------------------------------------------------------------------

def test_four_of_six_make_pgcl_three_do_not(Tracker):
    t = Tracker()
    t.sent(7, [1, 2, 3], [0, 0, 1])
    assert t.outstanding == 3
    for m in range(3):
        assert t.ack(7, m, 3) == 0
    assert t.pgcl(7) == 0 and t.vcl == 0 and t.vdl == 0 and t.outstanding == 3
    assert t.ack(7, 3, 3) == 3
    assert t.pgcl(7) == 3 and t.vcl == 3 and t.vdl == 3 and t.outstanding == 0
    assert t.member_scls(7) == [3, 3, 3, 3, 0, 0]


def test_pgcl_is_the_fourth_highest_scl(Tracker):
    t = Tracker()
    t.sent(0, list(range(1, 11)), [1] * 10)
    for member, scl in enumerate([10, 2, 9, 5, 7, 1]):
        t.ack(0, member, scl)
    assert t.pgcl(0) == 5  # sorted: 10 9 7 5 2 1
    assert t.vcl == 5 and t.vdl == 5 and t.outstanding == 5


def test_vdl_stops_at_the_last_cpl(Tracker):
    t = Tracker()
    t.sent(0, [1, 2, 3, 4, 5], [0, 0, 1, 0, 0])
    assert ack_all(t, 0, 5) == 3
    assert t.vcl == 5 and t.vdl == 3
    t.sent(0, [6], [1])
    assert t.vcl == 5 and t.vdl == 3
    assert ack_all(t, 0, 6) == 6


def test_lagging_pg_holds_vcl_back(Tracker):
    t = Tracker()
    t.sent(1, [1, 2], [0, 1])
    t.sent(2, [3, 4], [0, 1])
    t.sent(3, [5], [1])
    ack_all(t, 2, 4)
    ack_all(t, 3, 5)
    assert t.pgcl(2) == 4 and t.pgcl(3) == 5
    assert t.vcl == 0 and t.vdl == 0 and t.outstanding == 2
    ack_all(t, 1, 1, members=range(4))
    assert t.vcl == 1 and t.vdl == 0  # record 2 (PG 1) still outstanding; no CPL at 1
    ack_all(t, 1, 2, members=range(4))
    assert t.vcl == 5 and t.vdl == 5 and t.outstanding == 0


def test_lower_scl_is_ignored(Tracker):
    t = Tracker()
    t.sent(0, [1, 2, 3, 4, 5], [1, 1, 1, 1, 1])
    t.ack(0, 0, 5)
    assert t.ack(0, 0, 3) == 0
    assert t.scl(0, 0) == 5
    for m in (1, 2, 3):
        t.ack(0, m, 4)
    assert t.pgcl(0) == 4 and t.vdl == 4
    for m in (1, 2, 3):
        assert t.ack(0, m, 2) == 4  # stale acks change nothing
    assert t.pgcl(0) == 4 and t.vcl == 4 and t.vdl == 4 and t.scl(0, 1) == 4


def test_start_lsn(Tracker):
    t = Tracker(start_lsn=100)
    assert (t.vcl, t.vdl, t.highest_lsn, t.outstanding) == (100, 100, 100, 0)
    assert t.pgcl(5) == 100 and t.scl(5, 2) == 100 and t.member_scls(5) == [100] * 6
    for lsns in ([99], [100], [101, 101]):
        with pytest.raises(errors.OrderError):
            t.sent(0, lsns, [1] * len(lsns))
    assert t.highest_lsn == 100 and t.outstanding == 0
    t.sent(0, [101, 102], [0, 1])
    assert ack_all(t, 0, 102, members=range(4)) == 102


def test_order_across_calls_and_pgs(Tracker):
    t = Tracker()
    t.sent(0, [1, 2])
    t.sent(1, [3])
    with pytest.raises(errors.OrderError):
        t.sent(2, [3])
    with pytest.raises(errors.OrderError):
        t.sent(0, [5, 4])
    assert t.highest_lsn == 3 and t.outstanding == 3
    t.sent(0, [])  # nothing to register is not an error
    assert t.highest_lsn == 3


def test_bad_acks(Tracker):
    t = Tracker()
    t.sent(0, [1, 2], [0, 1])
    with pytest.raises(ValueError, match="member 6"):
        t.ack(0, 6, 1)
    with pytest.raises(ValueError, match="above the highest LSN sent"):
        t.ack(0, 0, 3)
    with pytest.raises(ValueError):
        t.scl(0, 6)
    assert t.member_scls(0) == [0] * 6
    # An ack for a PG that has no records yet is fine (its SCL may cover other PGs' LSNs).
    assert t.ack(9, 0, 2) == 0
    assert t.scl(9, 0) == 2


def test_geometry(Tracker):
    for members, quorum in ((0, 0), (6, 0), (6, 7), (17, 4)):
        with pytest.raises(ValueError):
            Tracker(members=members, write_quorum=quorum)
    t = Tracker(members=3, write_quorum=2)
    t.sent(0, [1], [1])
    assert t.ack(0, 0, 1) == 0
    assert t.ack(0, 2, 1) == 1
    t = Tracker(members=1, write_quorum=1)
    t.sent(0, [1], [1])
    assert t.ack(0, 0, 1) == 1


def test_arrays_and_flags(Tracker):
    t = Tracker()
    t.sent(0, np.arange(1, 5, dtype=np.uint64), np.array([0, 1, 0, 1], dtype=np.uint8))
    t.sent(4294967295, np.arange(5, 7, dtype=np.int64), [False, True])
    t.sent(1, [7])
    with pytest.raises(ValueError):
        t.sent(0, [8, 9], [1])
    ack_all(t, 0, 7)
    assert t.vcl == 4 and t.vdl == 4
    ack_all(t, 4294967295, 7)
    assert t.vcl == 6 and t.vdl == 6
    ack_all(t, 1, 7)
    assert t.vcl == 7 and t.vdl == 6


def test_wait_lal_immediate_and_blocked(Tracker):
    t = Tracker()
    t.wait_lal(10, 10, timeout=0)  # 10 <= 0 + 10
    with pytest.raises(errors.QuorumTimeoutError):
        t.wait_lal(11, 10, timeout=0)
    t.sent(0, [1, 2], [0, 1])
    ack_all(t, 0, 2)
    t.wait_lal(12, 10, timeout=0)
    t.wait_lal(0, 0, timeout=0)
    t.wait_lal(2**64 - 1, 2**64 - 1, timeout=0)


def test_wait_timeout(Tracker):
    t = Tracker()
    t.wait(0, timeout=0)
    with pytest.raises(errors.QuorumTimeoutError) as info:
        t.wait(1, timeout=0)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, errors.AuroraError)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        t.wait(1, timeout=0.05)
    assert time.monotonic() - start >= 0.04
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            t.wait(1, timeout=bad)


def test_fail_stops_sent_and_ack_but_not_getters(Tracker):
    t = Tracker()
    t.sent(0, [1, 2], [1, 1])
    ack_all(t, 0, 1)
    t.fail(CODE_OF[errors.NativeIOError])
    t.fail(CODE_OF[errors.CorruptionError])  # the first failure wins
    assert t.failed == CODE_OF[errors.NativeIOError]
    with pytest.raises(errors.NativeIOError):
        t.sent(0, [3])
    with pytest.raises(errors.NativeIOError):
        t.ack(0, 0, 2)
    with pytest.raises(errors.NativeIOError):
        t.wait(2, timeout=0)
    t.wait(1)  # already durable: durable stays durable
    assert (t.vdl, t.vcl, t.highest_lsn) == (1, 1, 2)
    with pytest.raises(ValueError):
        t.fail(0)


# ---- threads -----------------------------------------------------------------------------

def _start_waiters(t, lsns, outcome, method="wait"):
    threads = []
    for lsn in lsns:
        def run(lsn=lsn):
            try:
                getattr(t, method)(lsn, timeout=30)
                outcome[lsn] = "ok"
            except Exception as error:  # recorded for the assertions
                outcome[lsn] = error
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def _settle():
    time.sleep(0.05)  # let waiters reach the condition variable


def test_acks_wake_exactly_the_covered_waiters(Tracker):
    t = Tracker()
    t.sent(0, [1, 2, 3], [0, 0, 1])
    t.sent(1, [4, 5, 6], [0, 0, 1])
    t.sent(0, [7, 8, 9], [0, 0, 1])
    outcome = {}
    threads = dict(zip((3, 6, 9), _start_waiters(t, (3, 6, 9), outcome)))
    _settle()
    assert outcome == {}

    acker = threading.Thread(target=ack_all, args=(t, 1, 6))
    acker.start()
    acker.join(JOIN_S)
    _settle()
    assert outcome == {}  # PG 0's record 1 holds VCL at 0

    def ack_pg0():
        for m in range(4):
            t.ack(0, m, 3)
    acker = threading.Thread(target=ack_pg0)
    acker.start()
    acker.join(JOIN_S)
    threads[3].join(JOIN_S)
    threads[6].join(JOIN_S)
    assert outcome == {3: "ok", 6: "ok"}
    _settle()
    assert threads[9].is_alive() and 9 not in outcome

    acker = threading.Thread(target=ack_all, args=(t, 0, 9))
    acker.start()
    acker.join(JOIN_S)
    threads[9].join(JOIN_S)
    assert outcome == {3: "ok", 6: "ok", 9: "ok"}


def test_lal_waiters_wake_as_vdl_advances(Tracker):
    t = Tracker()
    t.sent(0, list(range(1, 11)), [1] * 10)
    # next_lsn 14 needs VDL >= 4 with LAL 10; next_lsn 22 needs VDL >= 12 (never here).
    results = {}

    def run(next_lsn):
        try:
            t.wait_lal(next_lsn, 10, timeout=30 if next_lsn == 14 else 0.3)
            results[next_lsn] = "ok"
        except Exception as error:
            results[next_lsn] = error
    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (14, 22)]
    for thread in threads:
        thread.start()
    _settle()
    ack_all(t, 0, 5)
    for thread in threads:
        thread.join(JOIN_S)
    assert results[14] == "ok"
    assert isinstance(results[22], errors.QuorumTimeoutError)


def test_fail_wakes_every_waiter_with_the_mapped_error(Tracker):
    t = Tracker()
    t.sent(0, [1, 2, 3], [1, 1, 1])
    ack_all(t, 0, 1)
    outcome = {}
    threads = _start_waiters(t, (2, 3, 50), outcome)
    _settle()
    assert outcome == {}
    t.fail(CODE_OF[errors.CorruptionError])
    for thread in threads:
        thread.join(JOIN_S)
    assert set(outcome) == {2, 3, 50}
    for error in outcome.values():
        assert isinstance(error, errors.CorruptionError)


def test_waiters_released_as_their_deadlines_pass(Tracker):
    """Releases racing timeouts: on Linux a released waiter is woken after the tracker's mutex
    is let go, so one whose deadline passes meanwhile must still wait for its waker to be
    done with it.  Every wait ends with "ok" exactly when VDL covers its LSN, or with a timeout
    while VDL is still below it; none hangs, none returns early."""
    t = Tracker()
    committers, rounds = 8, 150
    t.sent(0, list(range(1, committers * rounds + 1)), [1] * (committers * rounds))
    failures = []

    def committer(c):
        for r in range(rounds):
            lsn = r * committers + c + 1
            try:
                t.wait(lsn, timeout=random.choice((0.0005, 0.001, 0.002)))
                if t.vdl < lsn:
                    failures.append(("ok below VDL", lsn, t.vdl))
            except errors.QuorumTimeoutError:
                pass                       # VDL may pass lsn just after the deadline
            except Exception as error:    # recorded for the assertion
                failures.append((lsn, error))

    threads = [threading.Thread(target=committer, args=(c,), daemon=True) for c in range(committers)]
    for thread in threads:
        thread.start()
    scl = 0
    # Bounded: one step per LSN; each makes VDL jump by one to three LSNs, waking a few.
    while scl < committers * rounds:
        scl = min(scl + random.randint(1, 3), committers * rounds)
        ack_all(t, 0, scl, members=range(4))
        time.sleep(0.0002)
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert t.vdl == committers * rounds

def test_wait_releases_the_gil(Tracker):
    t = Tracker()
    t.sent(0, [1], [1])
    outcome = {}
    (waiter,) = _start_waiters(t, (1,), outcome)
    _settle()
    # If the waiter held the GIL, this loop could not run until its 30 s timeout.
    start = time.monotonic()
    count = 0
    while time.monotonic() - start < 0.1:
        count += 1
    assert count > 1000 and time.monotonic() - start < 5
    assert waiter.is_alive() and outcome == {}
    ack_all(t, 0, 1)
    waiter.join(JOIN_S)
    assert outcome == {1: "ok"}


def test_concurrent_acks_from_many_threads():
    """Six acker threads (one per member) race over 64 PGs; the result must be exact."""
    t = NativeTracker()
    pgs, batches = 64, 40
    lsn = 0
    last = {}
    for b in range(batches):
        pg = b % pgs
        lsns = list(range(lsn + 1, lsn + 17))
        lsn = lsns[-1]
        t.sent(pg, lsns, [0] * 15 + [1])
        last[pg] = lsn
    vdls = {m: [] for m in range(6)}

    def acker(member):
        order = list(last.items())
        random.Random(member).shuffle(order)
        for pg, scl in order:
            vdls[member].append(t.ack(pg, member, scl))
    threads = [threading.Thread(target=acker, args=(m,)) for m in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert t.vcl == t.vdl == lsn and t.outstanding == 0
    for seen in vdls.values():
        assert seen == sorted(seen)  # each thread sees VDL move forward only


# ---- cross-checks against the reference ------------------------------------------------

def _state(t, pgs):
    return (t.vcl, t.vdl, t.highest_lsn, t.outstanding,
            [(t.pgcl(pg), t.member_scls(pg)) for pg in pgs])


class _Checker:
    """Drives both backends with the same calls; checks equality and the invariants."""

    def __init__(self, members=6, write_quorum=4, start_lsn=0):
        self.native = NativeTracker(members, write_quorum, start_lsn)
        self.reference = ReferenceTracker(members, write_quorum, start_lsn)
        self.start_lsn = start_lsn
        self.members = members
        self.cpls = {start_lsn}
        self.pgs = set()
        self.last = _state(self.native, [])
        self.last_pg = {}

    def call(self, name, *args):
        outcomes = []
        for t in (self.native, self.reference):
            try:
                outcomes.append(("ok", getattr(t, name)(*args)))
            except Exception as error:
                outcomes.append(("error", type(error)))
        assert outcomes[0] == outcomes[1], (name, args, outcomes)
        return outcomes[0]

    def sent(self, pg, lsns, flags):
        self.pgs.add(pg)
        kind, _ = self.call("sent", pg, lsns, flags)
        if kind == "ok":
            self.cpls.update(lsn for lsn, flag in zip(lsns, flags) if flag)
        return kind

    def ack(self, pg, member, scl):
        self.pgs.add(pg)
        return self.call("ack", pg, member, scl)

    def check(self):
        pgs = sorted(self.pgs)
        state = _state(self.native, pgs)
        assert state == _state(self.reference, pgs)
        vcl, vdl, highest, outstanding, per_pg = state
        old_vcl, old_vdl = self.last[0], self.last[1]
        assert vcl >= old_vcl and vdl >= old_vdl, "VCL and VDL only move forward"
        assert self.start_lsn <= vdl <= vcl <= highest
        assert vdl in self.cpls, "VDL is a registered CPL or the start point"
        for pg, (pgcl, scls) in zip(pgs, per_pg):
            # SCLs only grow, so the write_quorum-th highest does too: PGCL is exactly it.
            assert pgcl == sorted(scls, reverse=True)[self.native.write_quorum - 1]
            if pg in self.last_pg:
                old_pgcl, old_scls = self.last_pg[pg]
                assert pgcl >= old_pgcl, "PGCL only moves forward"
                assert all(a >= b for a, b in zip(scls, old_scls)), "SCLs only move forward"
            self.last_pg[pg] = (pgcl, scls)
        self.last = state


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_match_the_reference(seed):
    rng = random.Random(seed)
    pg_pool = [rng.randrange(2**32) for _ in range(rng.choice((1, 3, 16, 200)))]
    members = rng.choice((6, 6, 6, 3, 1, 9))
    write_quorum = rng.randint(1, members) if members != 6 else 4
    start_lsn = rng.choice((0, 0, 1000, 2**63))
    checker = _Checker(members, write_quorum, start_lsn)
    lsn = start_lsn
    sent_by_pg = {}
    for step in range(400):
        if rng.random() < 0.35:
            pg = rng.choice(pg_pool)
            n = rng.randint(1, 8)
            gap = rng.choice((1, 1, 1, 2, 5)) if rng.random() < 0.2 else 1
            lsns = [lsn + gap * (i + 1) for i in range(n)]
            if rng.random() < 0.03:
                lsns = [lsn - rng.randrange(2)]  # out of order: both must refuse
            flags = [int(rng.random() < 0.3) for _ in lsns]
            if checker.sent(pg, lsns, flags) == "ok":
                lsn = lsns[-1]
                sent_by_pg.setdefault(pg, []).extend(lsns)
        elif sent_by_pg:
            pg = rng.choice(list(sent_by_pg)) if rng.random() < 0.95 else rng.choice(pg_pool)
            member = rng.randrange(members + (1 if rng.random() < 0.02 else 0))
            choices = sent_by_pg.get(pg) or [lsn]
            scl = rng.choice(choices)
            if rng.random() < 0.05:
                scl = lsn + rng.randint(0, 2)  # above the highest LSN now and then
            checker.ack(pg, member, scl)
        checker.check()
    # Finally everything becomes durable.
    for pg, lsns in sent_by_pg.items():
        for m in range(members):
            checker.ack(pg, m, lsns[-1])
    checker.check()
    assert checker.native.outstanding == 0 and checker.native.vcl == lsn


class QuorumMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.checker = _Checker()
        self.lsn = 0
        self.sent_by_pg = {}

    @rule(pg=st.integers(0, 4), n=st.integers(1, 5), data=st.data())
    def sent(self, pg, n, data):
        flags = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        lsns = list(range(self.lsn + 1, self.lsn + n + 1))
        assert self.checker.sent(pg, lsns, flags) == "ok"
        self.lsn = lsns[-1]
        self.sent_by_pg.setdefault(pg, []).extend(lsns)

    @rule(pg=st.integers(0, 4), lsns=st.lists(st.integers(0, 3), min_size=1, max_size=3))
    def sent_out_of_order(self, pg, lsns):
        lsns = [max(self.lsn - x, 0) for x in lsns]
        assert self.checker.sent(pg, lsns, [1] * len(lsns)) == "error"

    @precondition(lambda self: self.sent_by_pg)
    @rule(member=st.integers(0, 5), data=st.data())
    def ack(self, member, data):
        pg = data.draw(st.sampled_from(sorted(self.sent_by_pg)))
        scl = data.draw(st.integers(0, self.lsn))
        self.checker.ack(pg, member, scl)

    @precondition(lambda self: self.sent_by_pg)
    @rule(member=st.integers(0, 5), data=st.data())
    def ack_own_record(self, member, data):
        pg = data.draw(st.sampled_from(sorted(self.sent_by_pg)))
        self.checker.ack(pg, member, data.draw(st.sampled_from(self.sent_by_pg[pg])))

    @invariant()
    def same_and_monotonic(self):
        self.checker.check()


TestQuorumMachine = QuorumMachine.TestCase
# Each example runs up to 30 steps, each checked against the reference: a quarter of the
# profile's examples keeps the default run near 2 s and still scales with "soak".
TestQuorumMachine.settings = settings(max_examples=max(settings().max_examples // 4, 10),
                                      stateful_step_count=30)

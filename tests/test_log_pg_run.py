"""log_pg_run: one PG's part of an MTR encoded and registered with the tracker in one native
call must give exactly what encode_batch + QuorumTracker.sent give."""
import numpy as np
import pytest

from aurora import _native, errors


def reference(tracker, first, prev_pg, page_nos, types, prev_page, payloads, ends_mtr):
    n = len(payloads)
    lsns = list(range(first, first + n))
    flags = [0] * (n - 1) + [_native.FLAG_CPL if ends_mtr else 0]
    batch = _native.encode_batch(9, 4, 3, 2, lsns, [prev_pg] + lsns[:-1], prev_page, page_nos,
                                 types, flags, payloads)
    tracker.sent(4, np.array(lsns, dtype=np.uint64), np.array([f != 0 for f in flags], dtype=np.uint8))
    return batch


def records(n, seed):
    rng = np.random.default_rng(seed)
    page_nos = sorted(int(x) for x in rng.choice(1000, n, replace=False))
    payloads = [bytes(rng.integers(0, 256, int(rng.integers(4, 200)), dtype=np.uint8)) for _ in range(n)]
    payloads = [_native.encode_change(bytes(4096), p + bytes(4096 - len(p)))[1] for p in payloads]
    types = [_native.encode_change(bytes(4096), b"\x01" + bytes(4095))[0]] * n
    prev_page = [int(x) for x in rng.integers(0, 50, n)]
    return page_nos, types, prev_page, payloads


@pytest.mark.parametrize("n", [1, 2, 7, 64])
@pytest.mark.parametrize("ends_mtr", [True, False])
def test_same_bytes_and_same_tracker_state_as_encode_batch_and_sent(n, ends_mtr):
    page_nos, types, prev_page, payloads = records(n, n)
    ours, theirs = _native.QuorumTracker(6, 4, 99), _native.QuorumTracker(6, 4, 99)
    got = _native.log_pg_run(ours, 9, 4, 3, 2, 100, 77, page_nos, types, prev_page, payloads, ends_mtr)
    want = reference(theirs, 100, 77, page_nos, types, prev_page, payloads, ends_mtr)
    assert got == want
    assert ours.highest_lsn == theirs.highest_lsn == 100 + n - 1
    for m in range(4):
        ours.ack(4, m, 100 + n - 1)
        theirs.ack(4, m, 100 + n - 1)
    assert ours.vdl == theirs.vdl == (100 + n - 1 if ends_mtr else 99)
    header, rows = _native.decode_batch(got)
    assert list(rows["lsn"]) == list(range(100, 100 + n))


def test_memoryview_payloads_are_taken_too():
    page_nos, types, prev_page, payloads = records(3, 5)
    a = _native.log_pg_run(_native.QuorumTracker(), 9, 4, 3, 2, 100, 0, page_nos, types, prev_page,
                           [memoryview(p) for p in payloads], True)
    b = _native.log_pg_run(_native.QuorumTracker(), 9, 4, 3, 2, 100, 0, page_nos, types, prev_page,
                           payloads, True)
    assert a == b


def test_bad_runs_raise_and_register_nothing():
    page_nos, types, prev_page, payloads = records(2, 1)
    tracker = _native.QuorumTracker(6, 4, 60)
    with pytest.raises(ValueError):
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, [], [], [], [], True)
    with pytest.raises(ValueError):
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, page_nos[:1], types, prev_page, payloads, True)
    with pytest.raises(ValueError):
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, page_nos * 40, types * 40, prev_page * 40,
                           payloads * 40, True)   # more than PG_RUN_RECORDS_MAX
    with pytest.raises(errors.LengthError):
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, page_nos, types, prev_page,
                           [payloads[0], bytes(_native.RECORD_PAYLOAD_MAX + 1)], True)
    with pytest.raises(errors.FormatError):
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, page_nos, [255, 255], prev_page, payloads, True)
    assert tracker.highest_lsn == 60 and tracker.outstanding == 0
    with pytest.raises(errors.OrderError):        # at or below what the tracker has
        _native.log_pg_run(tracker, 9, 4, 3, 2, 55, 0, page_nos, types, prev_page, payloads, True)
    assert tracker.highest_lsn == 60
    tracker.fail(-15)
    with pytest.raises(ValueError):               # a fenced writer's tracker refuses the LSNs
        _native.log_pg_run(tracker, 9, 4, 3, 2, 61, 0, page_nos, types, prev_page, payloads, True)

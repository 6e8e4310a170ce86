"""The writer's boxcar: queued APPENDs merge per PG into one batch only while LSNs increase."""
from aurora import _native, protocol as p
from aurora.testing import RedoWorkload
from aurora.writer import coalesce_appends


def batches(count, pg=0, seed=1):
    workload = RedoWorkload(pg=pg, pages=4, seed=seed)
    return [workload.batch(workload.records(3)) for _ in range(count)]


def lsns(batch):
    return [int(lsn) for lsn in _native.decode_batch(batch)[1]["lsn"]]


def test_increasing_batches_of_one_pg_merge_into_one_valid_batch():
    b = batches(5)
    out = coalesce_appends([(p.FRAME_APPEND, 0, body) for body in b])
    assert len(out) == 1
    merged = out[0][2]
    assert lsns(merged) == [lsn for body in b for lsn in lsns(body)]


def test_a_batch_put_back_after_a_resend_starts_a_new_run():
    # A reconnect queues the retained batches 1..4 in front of batch 2, which an ERROR had
    # put back: merging them all would send LSNs out of order (the node refuses the batch).
    b = batches(4)
    items = [(p.FRAME_APPEND, 0, body) for body in b] + [(p.FRAME_APPEND, 0, b[1])]
    out = coalesce_appends(items)
    assert [frame_type for frame_type, _, _ in out] == [p.FRAME_APPEND, p.FRAME_APPEND]
    for _, _, body in out:
        got = lsns(body)
        assert got == sorted(set(got))          # every merged batch decodes, in order
    assert lsns(out[1][2]) == lsns(b[1])


def test_other_frames_are_barriers():
    b = batches(3)
    items = [(p.FRAME_APPEND, 0, b[0]), (p.FRAME_SET_EPOCH, 0, b"x"), (p.FRAME_APPEND, 0, b[1]),
             (p.FRAME_APPEND, 0, b[2])]
    out = coalesce_appends(items)
    assert [t for t, _, _ in out] == [p.FRAME_APPEND, p.FRAME_SET_EPOCH, p.FRAME_APPEND]
    assert lsns(out[2][2]) == lsns(b[1]) + lsns(b[2])

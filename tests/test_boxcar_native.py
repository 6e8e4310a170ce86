"""The writer's native boxcar (csrc/boxcar.c, aurora/_boxcar.pxi) against the Python it
replaced, kept here as the oracle: byte-identical batches and frames for random queues
(non-increasing runs, size and record caps, several PGs, other frame types as barriers),
and clear errors for what is not a batch."""
import collections
import random
import struct

import pytest
from hypothesis import given, strategies as st

from aurora import _native, errors, protocol as p
from aurora.ring import RING_BYTES_MIN, SharedRing
from aurora.testing import RedoWorkload

BATCH_HEADER = struct.Struct("<IHHIIQQQQQII")   # docs/format.md: the 64-byte batch header


# ---- the Python definition (aurora/writer.py before the native boxcar) ---------------------

def reference_merge_batches(batches):
    if len(batches) == 1:
        return batches[0]
    first = BATCH_HEADER.unpack_from(batches[0])
    last = BATCH_HEADER.unpack_from(batches[-1])
    count = sum(BATCH_HEADER.unpack_from(b)[4] for b in batches)
    body = b"".join(memoryview(b)[_native.BATCH_HEADER_SIZE:] for b in batches)
    header = bytearray(BATCH_HEADER.pack(first[0], first[1], 0, 0, count, first[5], first[6], first[7],
                                         first[8], last[9], first[10], len(body)))
    struct.pack_into("<I", header, 8, _native.crc_mask(_native.crc32c(memoryview(header)[12:])))
    return bytes(header) + body


def reference_coalesce_appends(items, bytes_max=_native.BOXCAR_BYTES_MAX):
    out = []
    run = collections.OrderedDict()
    size = {}

    def flush():
        for pg, bodies in run.items():
            out.append((p.FRAME_APPEND, pg, reference_merge_batches(bodies)))
        run.clear()
        size.clear()

    for frame_type, pg, body in items:
        if frame_type != p.FRAME_APPEND:
            flush()
            out.append((frame_type, pg, body))
            continue
        bodies = run.setdefault(pg, [])
        header = BATCH_HEADER.unpack_from(body)
        records = header[4]
        if bodies and (size[pg][0] + records > _native.BATCH_RECORDS_MAX or
                       size[pg][1] + len(body) > bytes_max or
                       header[8] <= size[pg][2]):
            flush()
            bodies = run.setdefault(pg, [])
        bodies.append(body)
        count, length, _ = size.get(pg, (0, 0, 0))
        size[pg] = (count + records, length + len(body), header[9])
    flush()
    return out


# ---- helpers ------------------------------------------------------------------------------

def make_batches(seed, pgs=(0,), count=12):
    """Batches of increasing LSNs over ``pgs``, in LSN order (as committers queue them)."""
    rng = random.Random(seed)
    workloads = {pg: RedoWorkload(pg=pg, pages=4, seed=seed * 7 + pg) for pg in pgs}
    lsn = 0
    out = []
    for _ in range(count):
        pg = rng.choice(pgs)
        w = workloads[pg]
        w.lsn = max(w.lsn, lsn)
        out.append((pg, w.batch(w.records(rng.randint(1, 4)))))
        lsn = w.lsn
    return out


def queue_from(seed, batches, barriers):
    """A queue as a link sees it: the batches, some repeated out of order (resends), with
    other frame types in between."""
    rng = random.Random(seed)
    items = []
    for pg, body in batches:
        if barriers and rng.random() < 0.15:
            items.append((rng.choice([p.FRAME_SET_EPOCH, p.FRAME_CREATE_SEGMENT, p.FRAME_SET_LWM]), pg, b"x" * 8))
        items.append((p.FRAME_APPEND, pg, body))
        if rng.random() < 0.1 and items:
            items.append((p.FRAME_APPEND, pg, rng.choice(batches)[1]))
    return items


# ---- differential ------------------------------------------------------------------------

@given(seed=st.integers(0, 2 ** 32), npgs=st.integers(1, 3), barriers=st.booleans(),
       bytes_max=st.sampled_from([_native.BOXCAR_BYTES_MAX, 1500, 400, 64]))
def test_coalesce_matches_the_python_definition(seed, npgs, barriers, bytes_max):
    batches = make_batches(seed, pgs=tuple(range(npgs)))
    items = queue_from(seed, batches, barriers)
    want = reference_coalesce_appends(items, bytes_max)
    got = _native.coalesce_appends(items, bytes_max)
    assert got == want


def test_the_record_cap_cuts_a_run():
    # Batches of many records so that BATCH_RECORDS_MAX is reached by a few of them.
    workload = RedoWorkload(pg=0, pages=4, seed=3)
    big = [workload.batch(workload.records(25000, mtr_size_max=1)) for _ in range(3)]
    items = [(p.FRAME_APPEND, 0, b) for b in big]
    got = _native.coalesce_appends(items, 1 << 40)
    assert got == reference_coalesce_appends(items, 1 << 40)
    assert len(got) == 2          # 50,000 records merge, the third would pass 65,536


@given(seed=st.integers(0, 2 ** 32), inline=st.booleans(), bytes_max=st.sampled_from([_native.BOXCAR_BYTES_MAX, 700]),
       request_id=st.sampled_from([1, 77, 0xFFFFFFFE, 0xFFFFFFFF]))
def test_frame_boxcars_matches_coalesce_and_encode_frame(seed, inline, bytes_max, request_id):
    batches = [body for _, body in make_batches(seed)]
    rng = random.Random(seed)
    if rng.random() < 0.5:            # a batch put back: a non-increasing run
        batches.insert(rng.randrange(len(batches) + 1), rng.choice(batches))
    queue = collections.deque(batches)
    boxcars, next_id = _native.frame_boxcars(queue, request_id, 5, 6, 7, inline, bytes_max)
    assert not queue
    want = reference_coalesce_appends([(p.FRAME_APPEND, 0, b) for b in batches], bytes_max)
    assert [body for _, body, _, _ in boxcars] == [body for _, _, body in want]
    expect_id = request_id
    for got_id, body, last_lsn, frame in boxcars:
        assert got_id == expect_id
        expect_id = (expect_id + 1) & 0xFFFFFFFF or 1
        assert last_lsn == BATCH_HEADER.unpack_from(body)[9]
        if inline:
            assert frame == p.encode_frame(p.FRAME_APPEND, body, got_id, 5, 6, 7)
        else:
            assert frame is None
    assert next_id == expect_id


def test_frame_boxcars_of_an_empty_queue():
    assert _native.frame_boxcars(collections.deque(), 9, 1, 1, 0, True) == ([], 9)


def test_a_single_batch_is_not_copied():
    (_, body), = make_batches(1, count=1)
    assert _native.merge_batches([body]) is body
    assert _native.coalesce_appends([(p.FRAME_APPEND, 0, body)])[0][2] is body


def test_merged_batches_decode():
    batches = [body for _, body in make_batches(4)]
    merged = _native.merge_batches(batches)
    assert merged == reference_merge_batches(batches)
    header, records = _native.decode_batch(merged)
    assert [int(x) for x in records["lsn"]] == [int(x) for b in batches for x in _native.decode_batch(b)[1]["lsn"]]


@given(frame_type=st.sampled_from(sorted(p.FRAME_NAMES)), body=st.binary(max_size=300),
       request_id=st.integers(0, 2 ** 32 - 1), ids=st.tuples(*[st.integers(0, 2 ** 64 - 1)] * 3))
def test_encode_frame_matches_protocol(frame_type, body, request_id, ids):
    assert _native.encode_frame(frame_type, body, request_id, *ids) == \
        p.encode_frame(frame_type, body, request_id, *ids)
    assert _native.encode_frame(frame_type, memoryview(body), request_id, *ids) == \
        p.encode_frame(frame_type, body, request_id, *ids)


@given(values=st.tuples(st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 32 - 1),
                        st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1)))
def test_append_ring_frame_matches_protocol(values):
    ring_id, offset, length, crc, request_id = values
    assert _native.append_ring_frame(ring_id, offset, length, crc, request_id, 3, 4, 5) == p.encode_frame(
        p.FRAME_APPEND_RING, p.APPEND_RING_BODY.pack(ring_id, offset, length, crc), request_id, 3, 4, 5)


def test_ring_copy_writes_and_checksums(tmp_path):
    ring = SharedRing(RING_BYTES_MIN, directory=str(tmp_path))
    try:
        data = random.Random(2).randbytes(1000)
        assert _native.ring_copy(ring.map, 128, data) == _native.crc32c(data)
        assert ring.map[128:1128] == data
        with pytest.raises(ValueError, match="does not fit|bytes at offset"):
            _native.ring_copy(ring.map, ring.size - 10, data)
        with pytest.raises(ValueError):
            _native.ring_copy(ring.map, -1, data)
        with pytest.raises(BufferError):
            _native.ring_copy(b"read-only", 0, b"x")
    finally:
        ring.close()


# ---- bad input ---------------------------------------------------------------------------

def test_what_is_not_a_batch_is_refused_clearly():
    (_, body), = make_batches(2, count=1)
    with pytest.raises(errors.TruncatedError, match="not a batch"):
        _native.coalesce_appends([(p.FRAME_APPEND, 0, body[:40])])
    with pytest.raises(errors.MagicError, match="not a batch"):
        _native.merge_batches([b"XXXX" + body[4:], body])
    with pytest.raises(errors.LengthError, match="not a batch"):
        _native.frame_boxcars(collections.deque([body + b"extra"]), 1, 1, 1, 0, True)
    with pytest.raises(ValueError, match="no batches"):
        _native.merge_batches([])
    with pytest.raises(errors.LengthError, match="exceeds the limit"):
        _native.encode_frame(p.FRAME_APPEND, bytes(p.FRAME_LENGTH_MAX))

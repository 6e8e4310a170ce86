"""The native APPEND fast path (aurora/_node.pxi) against the Python row path it stands in for:
the same decode results and errors, the same checks, and the same segment state and log bytes
after any sequence of batches (out of order, duplicated, truncated, rolling over log files)."""
import random

import pytest

from aurora import _native, errors
from aurora.node.segment import LOG_HEADER_SIZE, Segment
from aurora.testing import RedoWorkload

PAGE_SIZE = 1024
PAGES_PER_PG = 32


def open_segment(path, log_file_bytes=64 * 1024):
    return Segment(str(path), 1, 0, PAGE_SIZE, PAGES_PER_PG, log_file_bytes)


def test_decode_small_batch_matches_decode_batch():
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=11)
    for count in (1, 2, 8, _native.SMALL_BATCH_RECORDS_MAX):
        buf = workload.batch(workload.records(count))
        header, recs = _native.decode_batch(buf)
        batch = _native.decode_small_batch(buf)
        assert batch.record_count == count
        assert batch.header == header
        assert (batch.volume_id, batch.pg, batch.volume_epoch, batch.membership_epoch, batch.last_lsn) == (
            header.volume_id, header.pg, header.volume_epoch, header.membership_epoch, header.last_lsn)
        assert batch.tolist() == recs.tolist()
        last = recs[-1]
        assert batch.first_offset == int(recs[0]["offset"])
        assert batch.end_offset == int(last["offset"]) + _native.RECORD_HEADER_SIZE + int(last["payload_length"])
        assert batch.end_offset == len(buf)


def test_decode_small_batch_declines_big_batches():
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=12)
    buf = workload.batch(workload.records(_native.SMALL_BATCH_RECORDS_MAX + 1))
    assert _native.decode_small_batch(buf) is None
    _native.decode_batch(buf)   # still a good batch for the general path


def _mutations(buf):
    rng = random.Random(5)
    yield b""
    yield buf[:10]
    yield buf[:-1]
    yield buf + b"\0"
    for _ in range(200):
        data = bytearray(buf)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield bytes(data)
    for _ in range(50):
        data = bytearray(buf)
        start = rng.randrange(len(data))
        data[start:start + 8] = rng.randbytes(8)
        yield bytes(data)


def test_malformed_batches_get_the_same_clear_error_as_decode_batch():
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=13)
    buf = workload.batch(workload.records(6))
    failures = 0
    for data in _mutations(buf):
        try:
            expected = _native.decode_batch(data)
        except errors.FormatError as exc:
            failures += 1
            with pytest.raises(type(exc)) as caught:
                _native.decode_small_batch(data)
            assert str(caught.value) == str(exc)
            assert caught.value.offset == exc.offset
        else:
            assert _native.decode_small_batch(data).tolist() == expected[1].tolist()
    assert failures > 200
    with pytest.raises(TypeError):
        _native.decode_small_batch("not bytes")
    empty = _native.SmallBatch()   # never decoded: refused, not read out of bounds
    assert empty.record_count == 0 and empty.tolist() == []
    with pytest.raises(ValueError, match="no decoded records"):
        empty.end_offset
    assert _native.small_batch_index(empty, None, None, 0) == 0


def test_small_batch_check_refuses_foreign_pages_and_odd_images():
    workload = RedoWorkload(pg=1, page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=14)
    batch = _native.decode_small_batch(workload.batch(workload.records(4)))
    _native.small_batch_check(batch, 1, PAGES_PER_PG, PAGE_SIZE)
    with pytest.raises(ValueError, match="does not belong to PG 0"):
        _native.small_batch_check(batch, 0, PAGES_PER_PG, PAGE_SIZE)
    with pytest.raises(ValueError, match="at least one page"):
        _native.small_batch_check(batch, 1, 0, PAGE_SIZE)
    image = _native.encode_batch(1, 1, 1, 0, [5], [0], [0], [PAGES_PER_PG], _native.REC_IMAGE, 0,
                                 [bytes(PAGE_SIZE)])
    batch = _native.decode_small_batch(image)
    _native.small_batch_check(batch, 1, PAGES_PER_PG, PAGE_SIZE)
    with pytest.raises(ValueError, match="512-byte pages"):
        _native.small_batch_check(batch, 1, PAGES_PER_PG, 512)


def test_small_batch_all_fresh():
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=15)
    rows = workload.records(4)
    lsns = [r["lsn"] for r in rows]
    batch = _native.decode_small_batch(workload.batch(rows))
    assert _native.small_batch_all_fresh(batch, {}, 0, [])
    assert not _native.small_batch_all_fresh(batch, {lsns[2]: 0}, 0, [])
    assert not _native.small_batch_all_fresh(batch, {}, lsns[0], [])
    assert _native.small_batch_all_fresh(batch, {}, lsns[0] - 1, [])
    assert not _native.small_batch_all_fresh(batch, {}, 0, [[lsns[1] - 1, lsns[1]]])
    assert _native.small_batch_all_fresh(batch, {}, 0, [[lsns[-1], lsns[-1] + 10]])
    with pytest.raises(TypeError):
        _native.small_batch_all_fresh(batch, [], 0, [])


def _state(segment):
    """Everything the append path changes, comparable across two segments."""
    logs = [(log.seq, log.tail, list(log.lsns), log.max_lsn, log.indexed_lsns.tolist(),
             log.indexed_pages.tolist(), bytes(log.mm[:log.tail])) for log in segment.files]
    return dict(records=dict(segment.records), chains={k: list(v) for k, v in segment.page_chains.items()},
                successor=dict(segment.successor), scl=segment.scl, max_lsn=segment.max_lsn,
                sorted_lsns=list(segment.sorted_lsns), dirty_pages=set(segment._dirty_pages), logs=logs)


def _append_rows(segment, buf):
    """The reference: the row path every APPEND took before the native one."""
    _, recs = _native.decode_batch(buf)
    rows = recs.tolist()
    segment.check_batch(recs, rows)
    return segment.append(buf, recs, rows)


def _append_native(segment, buf):
    batch = _native.decode_small_batch(buf)
    assert batch is not None
    return segment.append_small(buf, batch)


@pytest.mark.parametrize("seed", range(6))
def test_native_append_leaves_the_same_segment_as_the_row_path(tmp_path, seed):
    rng = random.Random(seed)
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=12, seed=100 + seed)
    batches = [workload.batch(workload.records(rng.randint(1, 12))) for _ in range(40)]
    # Out of order, with duplicates, so SCL waits on holes and some batches are declined.
    order = list(range(len(batches)))
    for i in range(0, len(order) - 3, 4):
        if rng.random() < 0.5:
            order[i], order[i + 2] = order[i + 2], order[i]
    order += rng.sample(range(len(batches)), 8)
    # Small log files, so batches roll over to new ones on both paths.
    reference = open_segment(tmp_path / "rows", log_file_bytes=8 * 1024)
    native = open_segment(tmp_path / "native", log_file_bytes=8 * 1024)
    truncate_at = len(order) // 2
    for step, index in enumerate(order):
        if step == truncate_at:
            after = native.scl
            for segment in (reference, native):
                segment.truncate(after, after + 40)
        assert _append_native(native, batches[index]) == _append_rows(reference, batches[index])
        assert _state(native) == _state(reference), step
    assert len(native.files) > 1
    reference.sync()
    native.sync()
    assert native.scl == reference.scl
    for page_no in workload.page_numbers:
        assert native.get_page(page_no, native.scl) == reference.get_page(page_no, reference.scl)
    reference.close()
    native.close()
    # A restart rebuilds the same index from the native path's files.
    again = open_segment(tmp_path / "native", log_file_bytes=8 * 1024)
    assert again.scl == native.scl
    assert set(again.records) == set(native.records)
    again.close()


def test_native_append_refuses_foreign_pages_before_writing(tmp_path):
    workload = RedoWorkload(pg=1, page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=16)
    segment = open_segment(tmp_path / "seg")
    buf = workload.batch(workload.records(3))
    with pytest.raises(ValueError, match="does not belong to PG 0"):
        _append_native(segment, buf)
    assert segment.records == {}
    assert all(log.tail == LOG_HEADER_SIZE for log in segment.files)
    segment.close()


def _fed_segment(tmp_path, seed, batches=30):
    from aurora.testing import feed_segment
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=6, seed=seed)
    segment = open_segment(tmp_path / "seg", log_file_bytes=8 * 1024)
    for _ in range(batches):
        feed_segment(segment, workload, workload.records(5))
    return workload, segment


@pytest.mark.parametrize("seed", range(3))
def test_apply_log_chain_builds_what_the_checked_path_builds(tmp_path, seed):
    workload, segment = _fed_segment(tmp_path, 200 + seed)
    assert len(segment.files) > 1          # chains span log files
    lsns = sorted(segment.records)
    for read_lsn in lsns[::7] + [lsns[-1]]:
        for page_no in workload.page_numbers:
            built = segment._build(page_no, read_lsn)
            assert built == segment._build_checked(page_no, read_lsn)
            assert built == (workload.page_at(page_no, read_lsn), workload.page_lsn_at(page_no, read_lsn))
    segment.close()


def test_apply_log_chain_declines_what_it_cannot_vouch_for(tmp_path):
    workload, segment = _fed_segment(tmp_path, 210)
    page_no = workload.page_numbers[0]
    chain = segment.page_chains[page_no]
    fresh = lambda: bytearray(PAGE_SIZE)
    assert _native.apply_log_chain(fresh(), 0, list(chain), segment.records, segment.files_by_seq) == chain[-1]
    assert _native.apply_log_chain(fresh(), 0, [], segment.records, segment.files_by_seq) == 0
    # An LSN the index does not hold, a log file that is gone, a record that is not the LSN
    # indexed, a chain that skips a record: None, never a wrong page.
    assert _native.apply_log_chain(fresh(), 0, [chain[0] + 10 ** 9], segment.records, segment.files_by_seq) is None
    assert _native.apply_log_chain(fresh(), 0, list(chain), segment.records, {}) is None
    wrong = dict(segment.records)
    wrong[chain[0]] = segment.records[chain[1]]
    assert _native.apply_log_chain(fresh(), 0, list(chain), wrong, segment.files_by_seq) is None
    assert _native.apply_log_chain(fresh(), 0, list(chain[1:]), segment.records, segment.files_by_seq) is None
    beyond = dict(segment.records)
    beyond[chain[0]] = (segment.records[chain[0]] >> 40 << 40) | (10 ** 9)
    assert _native.apply_log_chain(fresh(), 0, list(chain), beyond, segment.files_by_seq) is None
    # Caller mistakes are clear errors.
    with pytest.raises(ValueError, match="page"):
        _native.apply_log_chain(bytearray(100), 0, list(chain), segment.records, segment.files_by_seq)
    with pytest.raises(BufferError):
        _native.apply_log_chain(bytes(PAGE_SIZE), 0, list(chain), segment.records, segment.files_by_seq)
    with pytest.raises(TypeError):
        _native.apply_log_chain(fresh(), 0, tuple(chain), segment.records, segment.files_by_seq)
    # Bit rot in a stored record: declined here, then reported and raised by _build.
    first = segment.records[chain[-1]]
    log = segment.files_by_seq[first >> 40]
    offset = first & ((1 << 40) - 1)
    log.mm[offset + _native.RECORD_HEADER_SIZE] ^= 0x40
    assert _native.apply_log_chain(fresh(), 0, list(chain), segment.records, segment.files_by_seq) is None
    with pytest.raises(errors.CorruptionError, match="failed its CRC32C"):
        segment._build(page_no, chain[-1])
    assert chain[-1] in segment.damaged_lsns
    segment.close()


def test_encode_ack_frame_is_byte_for_byte_protocol_encode_frame():
    from aurora import protocol as p
    rng = random.Random(7)
    cases = [(1, 1, 1, 0, 0, 0, 1), (2 ** 32 - 1, 2 ** 64 - 1, 2 ** 64 - 1, 2 ** 64 - 1, 2 ** 32 - 1, 2 ** 64 - 1, 2 ** 64 - 1)]
    cases += [(rng.getrandbits(32), rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(32),
               rng.getrandbits(64), rng.getrandbits(64)) for _ in range(200)]
    for request_id, volume_id, volume_epoch, membership_epoch, pg, scl, last_lsn in cases:
        expected = p.encode_frame(p.FRAME_ACK, p.ACK_BODY.pack(pg, 0, scl, last_lsn), request_id, volume_id,
                                  volume_epoch, membership_epoch)
        got = _native.encode_ack_frame(p.FRAME_ACK, request_id, volume_id, volume_epoch, membership_epoch, pg,
                                       scl, last_lsn)
        assert got == expected
    frame = p.decode_frame(got)
    assert frame.type == p.FRAME_ACK and p.ACK_BODY.unpack(frame.body) == (pg, 0, scl, last_lsn)
    with pytest.raises(OverflowError):
        _native.encode_ack_frame(p.FRAME_ACK, 2 ** 32, 1, 1, 0, 0, 0, 1)
    with pytest.raises(OverflowError):
        _native.encode_ack_frame(p.FRAME_ACK, 1, 1, 1, 0, 0, -1, 1)

"""The record and batch codec: native (aurora._native) against the reference
(aurora.reference.format), round trips, corruption, truncation, logs."""
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from aurora import _native, errors
from aurora.reference import format as reference
from aurora.reference.crc32c import crc32c

IMAGE_SIZES = [512, 1024, 2048, 4096]
COLUMNS = ("lsn", "prev_lsn_pg", "prev_lsn_page", "page_no", "type", "flags")


@st.composite
def delta_payloads(draw, max_runs=4):
    runs = []
    position = 0
    for _ in range(draw(st.integers(1, max_runs))):
        offset = position + draw(st.integers(0, 300))
        data = draw(st.binary(min_size=1, max_size=40))
        if offset + len(data) > reference.PAGE_SIZE_MAX:
            break
        runs.append(struct.pack("<HH", offset, len(data)) + data)
        position = offset + len(data)
    return b"".join(runs)


@st.composite
def records(draw, min_size=1, max_size=8, first_lsn=None):
    """A dict of columns + payloads describing valid records with increasing LSNs."""
    n = draw(st.integers(min_size, max_size))
    lsn = draw(st.integers(1, 2**40)) if first_lsn is None else first_lsn
    rows = {name: [] for name in COLUMNS}
    payloads = []
    for _ in range(n):
        record_type = draw(st.sampled_from([reference.REC_DELTA, reference.REC_IMAGE,
                                            reference.REC_ZERO, reference.REC_NOOP,
                                            reference.REC_SIZE]))
        if record_type in reference.PAGE_TYPES:
            page_no = draw(st.integers(0, reference.PAGE_NO_MAX))
        else:
            page_no = reference.PAGE_NO_NONE
        if record_type == reference.REC_DELTA:
            payload = draw(delta_payloads())
        elif record_type == reference.REC_IMAGE:
            payload = draw(st.sampled_from(IMAGE_SIZES)) * draw(st.sampled_from([b"\x00", b"\xa5"]))
        elif record_type == reference.REC_SIZE:
            payload = draw(st.binary(min_size=4, max_size=4))
        else:
            payload = b""
        rows["lsn"].append(lsn)
        rows["prev_lsn_pg"].append(draw(st.integers(0, lsn - 1)))
        rows["prev_lsn_page"].append(draw(st.integers(0, lsn - 1)))
        rows["page_no"].append(page_no)
        rows["type"].append(record_type)
        rows["flags"].append(draw(st.sampled_from([0, reference.FLAG_CPL])))
        payloads.append(payload)
        lsn += draw(st.integers(1, 1000))
    return rows, payloads


batch_ids = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                      st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


def encode_args(ids, rows, payloads):
    return (*ids, *(rows[name] for name in COLUMNS), payloads)


def fix_record_crc(buf, offset):
    """Recompute the CRC of the record at ``offset`` in place (after a deliberate edit)."""
    payload_length = struct.unpack_from("<I", buf, offset + 8)[0]
    end = offset + reference.RECORD_HEADER_SIZE + payload_length
    struct.pack_into("<I", buf, offset, reference.crc_mask(crc32c(bytes(buf[offset + 4:end]))))


def fix_batch_crc(buf):
    struct.pack_into("<I", buf, 8, reference.crc_mask(crc32c(bytes(buf[12:64]))))


def outcome(function, *args):
    """What a call did, comparable between native and reference: ("ok", result) with arrays
    as lists, or (exception class, offset)."""
    try:
        result = function(*args)
    except ValueError as exc:  # FormatError is a ValueError
        return (type(exc), getattr(exc, "offset", None))
    if isinstance(result, tuple):
        return ("ok",) + tuple(r.tolist() if hasattr(r, "tolist") else r for r in result)
    return ("ok", result)


def same_outcome(name, *args):
    native = outcome(getattr(_native, name), *args)
    ref = outcome(getattr(reference, name), *args)
    assert native == ref, (name, native, ref)
    return native


def small_batch():
    """Two records (a DELTA and a NOOP CPL) in one batch, 150 bytes."""
    return _native.encode_batch(
        7, 3, 1, 2, [5, 6], [0, 5], [0, 0], [1, reference.PAGE_NO_NONE],
        [reference.REC_DELTA, reference.REC_NOOP], [0, reference.FLAG_CPL],
        [b"\x00\x00\x02\x00ab", b""])


def log_of(n, payload_size=64):
    """n DELTA records back to back, as a segment log stores them; returns (bytes, offsets)."""
    run = struct.pack("<HH", 16, payload_size - 4) + bytes(range(payload_size - 4))
    data = _native.encode_records(np.arange(1, n + 1), 0, 0, 9, reference.REC_DELTA, 0,
                                  [run] * n)
    step = reference.RECORD_HEADER_SIZE + payload_size
    return data, [i * step for i in range(n)]


# ---- constants and layout -----------------------------------------------------------------

def test_constants_match_the_reference():
    for name in ["FORMAT_VERSION", "PAGE_SIZE_MIN", "PAGE_SIZE_MAX", "PAGE_NO_MAX",
                 "PAGE_NO_NONE", "LSN_NONE", "LSN_MAX", "RECORD_HEADER_SIZE",
                 "RECORD_PAYLOAD_MAX", "REC_DELTA", "REC_IMAGE", "REC_ZERO", "REC_NOOP",
                 "REC_SIZE", "REC_SIZE_PAYLOAD_LENGTH", "FLAG_CPL", "FLAGS_KNOWN",
                 "DELTA_RUN_HEADER_SIZE", "DELTA_RUN_LENGTH_MAX", "BATCH_MAGIC",
                 "BATCH_HEADER_SIZE", "BATCH_RECORDS_MAX", "BATCH_BODY_MAX", "CRC_MASK_DELTA"]:
        assert getattr(_native, name) == getattr(reference, name), name
    assert _native.RECORD_DTYPE == reference.RECORD_DTYPE
    assert _native.BatchHeader._fields == reference.BatchHeader._fields
    assert struct.pack("<I", reference.BATCH_MAGIC) == b"AURB"


@given(st.integers(0, 2**32 - 1))
def test_crc_mask_round_trips_and_matches(crc):
    assert _native.crc_mask(crc) == reference.crc_mask(crc)
    assert _native.crc_unmask(_native.crc_mask(crc)) == crc


# ---- round trips --------------------------------------------------------------------------

@given(batch_ids, records())
def test_batch_round_trip_native_equals_reference(ids, described):
    rows, payloads = described
    args = encode_args(ids, rows, payloads)
    data = _native.encode_batch(*args)
    assert data == reference.encode_batch(*args)
    header, decoded = _native.decode_batch(data)
    ref_header, ref_decoded = reference.decode_batch(data)
    assert header == ref_header
    assert decoded.tolist() == ref_decoded.tolist()
    volume_id, pg, volume_epoch, membership_epoch = ids
    assert (header.volume_id, header.pg, header.volume_epoch, header.membership_epoch) == ids
    assert header.record_count == len(payloads) and header.body_length == len(data) - 64
    assert (header.first_lsn, header.last_lsn) == (rows["lsn"][0], rows["lsn"][-1])
    for name in COLUMNS:
        assert decoded[name].tolist() == rows[name], name
    for record, payload in zip(decoded, payloads):
        start = int(record["offset"]) + reference.RECORD_HEADER_SIZE
        assert data[start:start + int(record["payload_length"])] == payload


@given(records(min_size=0, max_size=6))
def test_log_round_trip_native_equals_reference(described):
    rows, payloads = described
    # A log holds records in arrival order: shuffle LSNs to show no order is required.
    rows = dict(rows, lsn=rows["lsn"][::-1], prev_lsn_pg=[0] * len(payloads),
                prev_lsn_page=[0] * len(payloads))
    args = tuple(rows[name] for name in COLUMNS) + (payloads,)
    data = _native.encode_records(*args)
    assert data == reference.encode_records(*args)
    native = same_outcome("scan_log", data, 0)
    assert native[2:] == (len(data), "end")
    assert [r[0] for r in native[1]] == rows["lsn"]


def test_columns_accept_arrays_and_scalars():
    payloads = [b""] * 3
    a = _native.encode_records(np.array([1, 2, 3], np.uint64), 0, 0,
                               reference.PAGE_NO_NONE, reference.REC_NOOP, 0, payloads)
    b = reference.encode_records([1, 2, 3], [0], 0, [reference.PAGE_NO_NONE] * 3,
                                 reference.REC_NOOP, np.uint8(0), payloads)
    assert a == b


@pytest.mark.parametrize("module", [_native, reference], ids=["native", "reference"])
@pytest.mark.parametrize("column,value", [("lsn", -1), ("page_no", 2**32), ("type", 256),
                                          ("flags", -1), ("prev_lsn_pg", 2**64)])
def test_out_of_range_columns_are_value_errors(module, column, value):
    values = dict(lsn=5, prev_lsn_pg=0, prev_lsn_page=0, page_no=reference.PAGE_NO_NONE,
                  type=reference.REC_NOOP, flags=0)
    values[column] = [value]
    with pytest.raises(ValueError):
        module.encode_records(*(values[name] for name in COLUMNS), [b""])


# ---- encoder validation: same class and offset on both sides -----------------------------

DELTA_OK = struct.pack("<HH", 0, 2) + b"ab"
BAD_RECORDS = [
    # (lsn, prev_pg, prev_page, page_no, type, flags, payload), expected error class
    ((5, 0, 0, 1, reference.REC_IMAGE, 0, b"\x00" * 1000), errors.LengthError),
    ((5, 0, 0, 1, reference.REC_IMAGE, 0, b"\x00" * 256), errors.LengthError),
    ((5, 0, 0, 1, reference.REC_ZERO, 0, b"x"), errors.LengthError),
    ((5, 0, 0, reference.PAGE_NO_NONE, reference.REC_NOOP, 0, b"x"), errors.LengthError),
    ((5, 0, 0, reference.PAGE_NO_NONE, reference.REC_SIZE, 0, b"xyz"), errors.LengthError),
    ((5, 0, 0, reference.PAGE_NO_NONE, reference.REC_DELTA, 0, DELTA_OK), errors.RangeError),
    ((5, 0, 0, 3, reference.REC_NOOP, 0, b""), errors.RangeError),
    ((0, 0, 0, 3, reference.REC_DELTA, 0, DELTA_OK), errors.OrderError),
    ((2**64 - 1, 0, 0, 3, reference.REC_DELTA, 0, DELTA_OK), errors.OrderError),
    ((5, 5, 0, 3, reference.REC_DELTA, 0, DELTA_OK), errors.OrderError),
    ((5, 0, 6, 3, reference.REC_DELTA, 0, DELTA_OK), errors.OrderError),
    ((5, 0, 0, 3, 4, 0, b""), errors.UnknownTypeError),
    ((5, 0, 0, 3, 0, 0, b""), errors.UnknownTypeError),
    ((5, 0, 0, 3, reference.REC_ZERO, 2, b""), errors.FlagsError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, b""), errors.LengthError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, b"\x00\x00\x00\x00"), errors.LengthError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, DELTA_OK + b"\x01"), errors.LengthError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, struct.pack("<HH", 0, 9) + b"ab"), errors.LengthError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, struct.pack("<HH", 65535, 2) + b"ab"),
     errors.RangeError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, DELTA_OK + struct.pack("<HH", 1, 1) + b"c"),
     errors.RangeError),
    ((5, 0, 0, 3, reference.REC_DELTA, 0, DELTA_OK + struct.pack("<HH", 0, 1) + b"c"),
     errors.RangeError),
    ((5, 0, 0, 3, reference.REC_IMAGE, 0, b"\x00" * 65537), errors.LengthError),
]


@pytest.mark.parametrize("record,expected", BAD_RECORDS)
def test_encoders_refuse_invalid_records_alike(record, expected):
    good = (1, 0, 0, 2, reference.REC_ZERO, 0, b"")
    columns = [[g, r] for g, r in zip(good[:6], record[:6])]
    args = (*columns, [good[6], record[6]])
    native = same_outcome("encode_batch", 1, 2, 3, 4, *args)
    assert native == (expected, 64 + 40)
    assert same_outcome("encode_records", *args) == (expected, 40)


def test_adjacent_delta_runs_and_the_last_page_byte_are_fine():
    payload = DELTA_OK + struct.pack("<HH", 2, 1) + b"c" + struct.pack("<HH", 65535, 1) + b"z"
    args = ([5], [0], [0], [3], [reference.REC_DELTA], [0], [payload])
    assert same_outcome("encode_records", *args)[0] == "ok"


@pytest.mark.parametrize("lsns", [[5, 5], [6, 5]])
def test_batch_lsns_must_strictly_increase(lsns):
    args = (1, 2, 3, 4, lsns, 0, 0, reference.PAGE_NO_NONE, reference.REC_NOOP, 0, [b"", b""])
    assert same_outcome("encode_batch", *args) == (errors.OrderError, 104)


def test_empty_batch_is_a_length_error():
    args = (1, 2, 3, 4, [], [], [], [], [], [], [])
    assert same_outcome("encode_batch", *args) == (errors.LengthError, 12)
    assert same_outcome("encode_records", *args[4:]) == ("ok", b"")


# ---- decoder: specific errors --------------------------------------------------------------

def edited(data, offset, value, fmt="<B", record=None, header_crc=False):
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    if record is not None:
        fix_record_crc(buf, record)
    if header_crc:
        fix_batch_crc(buf)
    return bytes(buf)


@pytest.mark.parametrize("edit,expected", [
    (dict(offset=0, value=0x42525542, fmt="<I"), (errors.MagicError, 0)),
    (dict(offset=4, value=2, fmt="<H"), (errors.VersionError, 4)),
    (dict(offset=6, value=1, fmt="<H"), (errors.FlagsError, 6)),
    (dict(offset=8, value=0, fmt="<I"), (errors.ChecksumError, 8)),
    (dict(offset=20, value=1, fmt="<B"), (errors.ChecksumError, 8)),
    (dict(offset=12, value=0, fmt="<I", header_crc=True), (errors.LengthError, 12)),
    (dict(offset=12, value=3, fmt="<I", header_crc=True), (errors.LengthError, 12)),
    (dict(offset=12, value=1, fmt="<I", header_crc=True), (errors.LengthError, 110)),
    (dict(offset=60, value=87, fmt="<I", header_crc=True), (errors.TruncatedError, 150)),
    (dict(offset=60, value=85, fmt="<I", header_crc=True), (errors.LengthError, 60)),
    (dict(offset=40, value=4, fmt="<Q", header_crc=True), (errors.OrderError, 40)),
    (dict(offset=40, value=0, fmt="<Q", header_crc=True), (errors.OrderError, 40)),
    (dict(offset=48, value=7, fmt="<Q", header_crc=True), (errors.OrderError, 48)),
    (dict(offset=48, value=4, fmt="<Q", header_crc=True), (errors.OrderError, 48)),
    (dict(offset=64 + 4, value=9, record=64), (errors.UnknownTypeError, 68)),
    (dict(offset=64 + 5, value=0x80, record=64), (errors.FlagsError, 69)),
    (dict(offset=64 + 6, value=1, fmt="<H", record=64), (errors.FlagsError, 70)),
    (dict(offset=64 + 12, value=reference.PAGE_NO_NONE, fmt="<I", record=64),
     (errors.RangeError, 76)),
    (dict(offset=110 + 16, value=5, fmt="<Q", record=110), (errors.OrderError, 134)),
    (dict(offset=110 + 16, value=4, fmt="<Q", record=110), (errors.OrderError, 134)),
    (dict(offset=110 + 24, value=6, fmt="<Q", record=110), (errors.OrderError, 134)),
    (dict(offset=64 + 40, value=0, fmt="<H", record=64), ("ok",)),
    (dict(offset=64 + 42, value=0, fmt="<H", record=64), (errors.LengthError, 106)),
    (dict(offset=64 + 8, value=70000, fmt="<I"), (errors.LengthError, 72)),
    (dict(offset=64 + 8, value=7, fmt="<I"), (errors.ChecksumError, 64)),
    (dict(offset=64 + 8, value=200, fmt="<I"), (errors.LengthError, 64)),
])
def test_decode_batch_names_the_broken_rule(edit, expected):
    data = edited(small_batch(), **edit)
    result = same_outcome("decode_batch", data)
    assert result[:len(expected)] == expected


def test_errors_carry_offset_and_message():
    data = edited(small_batch(), offset=64 + 4, value=9, record=64)
    with pytest.raises(errors.UnknownTypeError, match="offset 68") as info:
        _native.decode_batch(data)
    assert info.value.offset == 68


def test_every_single_byte_flip_is_detected():
    data = small_batch()
    for position in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            buf = bytearray(data)
            buf[position] ^= mask
            native = same_outcome("decode_batch", bytes(buf))
            assert native[0] != "ok", (position, mask)
            cls = native[0]
            if 12 <= position < 64:
                assert cls is errors.ChecksumError
            elif position >= 64:
                assert cls is not errors.MagicError and cls is not errors.VersionError


def test_every_truncation_is_a_truncated_error():
    data = small_batch()
    for size in range(len(data)):
        assert same_outcome("decode_batch", data[:size]) == (errors.TruncatedError, size)


def test_trailing_bytes_are_a_length_error():
    assert same_outcome("decode_batch", small_batch() + b"\x00") == (errors.LengthError, 60)


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_and_agree(data):
    same_outcome("decode_batch", data)
    same_outcome("scan_log", data, 0)
    same_outcome("log_resync", data, 0)


@given(batch_ids, records(max_size=4), st.data())
def test_mutated_batches_agree_with_reference(ids, described, data):
    rows, payloads = described
    buf = bytearray(_native.encode_batch(*encode_args(ids, rows, payloads)))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(buf) - 1))
        buf[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        for offset in _native.scan_log(bytes(buf), 64)[0]["offset"].tolist():
            fix_record_crc(buf, offset)
        fix_batch_crc(buf)
    same_outcome("decode_batch", bytes(buf))
    same_outcome("scan_log", bytes(buf), 64)


def test_large_batch_round_trip_releases_the_gil_path():
    n = 2000
    payload = struct.pack("<HH", 100, 60) + b"x" * 60
    data = _native.encode_batch(1, 2, 3, 4, np.arange(10, 10 + n), 0, 0, 5,
                                reference.REC_DELTA, 0, [payload] * n)
    assert len(data) > 65536
    header, decoded = _native.decode_batch(data)
    assert header.record_count == n and decoded["lsn"][-1] == 10 + n - 1
    assert reference.decode_batch(data)[1].tolist() == decoded.tolist()


# ---- segment log: torn tail vs damage in the middle ---------------------------------------

def test_scan_log_reads_a_clean_log_to_the_end():
    data, offsets = log_of(10)
    records, end, reason = _native.scan_log(data)
    assert (len(records), end, reason) == (10, len(data), "end")
    assert records["offset"].tolist() == offsets


def test_scan_log_stops_at_preallocated_zeroes():
    data, _ = log_of(5)
    for tail in (b"\x00" * 4096, b"\x00" * 7):
        assert same_outcome("scan_log", data + tail, 0)[2:] == (len(data), "zero")


@pytest.mark.parametrize("cut", [1, 39, 40, 41, 103])
def test_torn_tail_reads_as_end_of_log(cut):
    data, _ = log_of(5)
    extra, _ = log_of(1)
    torn = data + extra[:cut]
    records, end, reason = _native.scan_log(torn)
    assert (len(records), end, reason) == (5, len(data), "truncated")
    assert _native.log_resync(torn, end + 1) is None
    assert same_outcome("scan_log", torn, 0)[2:] == (len(data), "truncated")
    assert same_outcome("log_resync", torn, end + 1) == ("ok", None)


def test_torn_tail_followed_by_zeroes_is_detected():
    data, offsets = log_of(5)
    buf = bytearray(data + b"\x00" * 512)
    buf[offsets[4] + 60] ^= 0xFF   # the last record was half-written
    records, end, reason = _native.scan_log(bytes(buf))
    assert (len(records), end, reason) == (4, offsets[4], "checksum")
    assert _native.log_resync(bytes(buf), end + 1) is None


def test_damage_in_the_middle_is_found_and_skipped():
    data, offsets = log_of(10)
    buf = bytearray(data)
    buf[offsets[3] + 50] ^= 0x01
    records, end, reason = same_outcome("scan_log", bytes(buf), 0)[1:]
    assert (len(records), end, reason) == (3, offsets[3], "checksum")
    found = _native.log_resync(bytes(buf), end + 1)
    assert found == offsets[4] == reference.log_resync(bytes(buf), end + 1)
    rest, end, reason = _native.scan_log(bytes(buf), found)
    assert (len(rest), end, reason) == (6, len(data), "end")


def test_scan_log_caps_and_resumes():
    data, offsets = log_of(10)
    first, end, reason = _native.scan_log(data, 0, max_records=4)
    assert (len(first), end, reason) == (4, offsets[4], "cap")
    assert same_outcome("scan_log", data, 0, 4)[2:] == (offsets[4], "cap")
    rest, end, reason = _native.scan_log(data, end)
    assert (len(rest), end, reason) == (6, len(data), "end")
    assert _native.scan_log(data, 0, max_records=0)[1:] == (0, "cap")
    assert _native.scan_log(data, len(data))[1:] == (len(data), "end")


def test_scan_log_crosses_its_chunk_size():
    n = 65536 + 10
    data = _native.encode_records(np.arange(1, n + 1), 0, 0, reference.PAGE_NO_NONE,
                                  reference.REC_NOOP, 0, [b""] * n)
    records, end, reason = _native.scan_log(data)
    assert (len(records), end, reason) == (n, len(data), "end")
    assert records["lsn"][-1] == n


@pytest.mark.parametrize("function", ["scan_log", "log_resync"])
def test_start_outside_the_buffer_is_refused(function):
    for start in (-1, 151):
        assert same_outcome(function, small_batch(), start)[0] is ValueError

"""Reference codec of redo records and batches, in plain Python with ``struct``.

Same API and semantics as the native one in ``aurora._native`` (csrc/record.c): the same
bytes out, the same records decoded, the same exception class *and offset* for every bad
input, because the checks run in the same order (docs/format.md, "Validation").  It is
written for clarity, not speed.
"""
import operator
import struct
from collections import namedtuple

import numpy as np

from aurora import errors
from aurora.reference.crc32c import crc32c

# ---- constants (csrc/format.h; tests check they match the native build) -----------------
FORMAT_VERSION = 1
PAGE_SIZE_MIN = 512
PAGE_SIZE_MAX = 65536
PAGE_NO_MAX = 0xFFFFFFFE
PAGE_NO_NONE = 0xFFFFFFFF
LSN_NONE = 0
LSN_MAX = 0xFFFFFFFFFFFFFFFE
RECORD_HEADER_SIZE = 40
RECORD_PAYLOAD_MAX = PAGE_SIZE_MAX
REC_DELTA, REC_IMAGE, REC_ZERO, REC_NOOP, REC_SIZE = 1, 2, 3, 16, 17
REC_SIZE_PAYLOAD_LENGTH = 4
PAGE_TYPES = frozenset((REC_DELTA, REC_IMAGE, REC_ZERO))
KNOWN_TYPES = PAGE_TYPES | {REC_NOOP, REC_SIZE}
FLAG_CPL = 0x01
FLAGS_KNOWN = FLAG_CPL
DELTA_RUN_HEADER_SIZE = 4
DELTA_RUN_LENGTH_MAX = 0xFFFF
BATCH_MAGIC = 0x42525541
BATCH_HEADER_SIZE = 64
BATCH_RECORDS_MAX = 65536
BATCH_BODY_MAX = 64 * 1024 * 1024
CRC_MASK_DELTA = 0xA282EAD8

# record header: crc type flags reserved payload_length page_no lsn prev_lsn_pg prev_lsn_page
RECORD_HEADER = struct.Struct("<IBBHIIQQQ")
# batch header: magic version flags crc record_count volume_id volume_epoch membership_epoch
#               first_lsn last_lsn pg body_length
BATCH_HEADER = struct.Struct("<IHHIIQQQQQII")
DELTA_RUN = struct.Struct("<HH")
assert RECORD_HEADER.size == RECORD_HEADER_SIZE and BATCH_HEADER.size == BATCH_HEADER_SIZE

RECORD_DTYPE = np.dtype({
    "names": ["lsn", "prev_lsn_pg", "prev_lsn_page", "offset", "page_no", "payload_length",
              "type", "flags"],
    "formats": [np.uint64, np.uint64, np.uint64, np.uint64, np.uint32, np.uint32, np.uint8,
                np.uint8],
    "offsets": [0, 8, 16, 24, 32, 36, 40, 41],
    "itemsize": 48,
})

BatchHeader = namedtuple("BatchHeader", [
    "version", "flags", "crc", "record_count", "volume_id", "volume_epoch", "membership_epoch",
    "first_lsn", "last_lsn", "pg", "body_length"])


def crc_mask(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + CRC_MASK_DELTA) & 0xFFFFFFFF


def crc_unmask(masked):
    rot = (masked - CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


class _Invalid(Exception):
    """Internal: a rule broken at ``offset`` (relative to what is being checked)."""

    def __init__(self, cls, offset):
        super().__init__(cls, offset)
        self.cls = cls
        self.offset = offset


def _raise(cls, context, offset):
    raise cls("%s: %s at offset %d" % (context, cls.__doc__.rstrip("."), offset), offset)


# ---- records ------------------------------------------------------------------------------

def _check_header_fields(rtype, flags, reserved, payload_length):
    if rtype not in KNOWN_TYPES:
        raise _Invalid(errors.UnknownTypeError, 4)
    if flags & ~FLAGS_KNOWN:
        raise _Invalid(errors.FlagsError, 5)
    if reserved:
        raise _Invalid(errors.FlagsError, 6)
    if payload_length > RECORD_PAYLOAD_MAX:
        raise _Invalid(errors.LengthError, 8)


def _check_delta_runs(payload):
    if len(payload) < DELTA_RUN_HEADER_SIZE:
        raise _Invalid(errors.LengthError, 8)
    pos = 0
    prev_end = 0
    while pos < len(payload):
        at = RECORD_HEADER_SIZE + pos
        if len(payload) - pos < DELTA_RUN_HEADER_SIZE:
            raise _Invalid(errors.LengthError, at)
        run_offset, run_length = DELTA_RUN.unpack_from(payload, pos)
        if run_length == 0:
            raise _Invalid(errors.LengthError, at + 2)
        if run_offset + run_length > PAGE_SIZE_MAX:
            raise _Invalid(errors.RangeError, at)
        if run_offset < prev_end:
            raise _Invalid(errors.RangeError, at)
        if run_length > len(payload) - pos - DELTA_RUN_HEADER_SIZE:
            raise _Invalid(errors.LengthError, at + 2)
        prev_end = run_offset + run_length
        pos += DELTA_RUN_HEADER_SIZE + run_length


def _check_semantics(rtype, page_no, lsn, prev_lsn_pg, prev_lsn_page, payload):
    if (rtype in PAGE_TYPES) == (page_no == PAGE_NO_NONE):
        raise _Invalid(errors.RangeError, 12)
    n = len(payload)
    if rtype == REC_DELTA:
        length_ok = n >= DELTA_RUN_HEADER_SIZE
    elif rtype == REC_IMAGE:
        length_ok = PAGE_SIZE_MIN <= n <= PAGE_SIZE_MAX and n & (n - 1) == 0
    elif rtype == REC_SIZE:
        length_ok = n == REC_SIZE_PAYLOAD_LENGTH
    else:
        length_ok = n == 0
    if not length_ok:
        raise _Invalid(errors.LengthError, 8)
    if lsn == LSN_NONE or lsn > LSN_MAX:
        raise _Invalid(errors.OrderError, 16)
    if prev_lsn_pg >= lsn:
        raise _Invalid(errors.OrderError, 24)
    if prev_lsn_page >= lsn:
        raise _Invalid(errors.OrderError, 32)
    if rtype == REC_DELTA:
        _check_delta_runs(payload)


def _record_crc(record_bytes):
    return crc_mask(crc32c(record_bytes[4:]))


def check_record(buf, offset, end):
    """Validate the record at buf[offset:end]; return its row tuple (RECORD_DTYPE order).
    Raises _Invalid with an offset relative to ``offset``; TruncatedError's offset is the
    number of bytes available."""
    avail = end - offset
    if avail < RECORD_HEADER_SIZE:
        raise _Invalid(errors.TruncatedError, avail)
    (crc, rtype, flags, reserved, payload_length, page_no, lsn, prev_lsn_pg,
     prev_lsn_page) = RECORD_HEADER.unpack_from(buf, offset)
    _check_header_fields(rtype, flags, reserved, payload_length)
    if avail - RECORD_HEADER_SIZE < payload_length:
        raise _Invalid(errors.TruncatedError, avail)
    record_end = offset + RECORD_HEADER_SIZE + payload_length
    if _record_crc(buf[offset:record_end]) != crc:
        raise _Invalid(errors.ChecksumError, 0)
    payload = buf[offset + RECORD_HEADER_SIZE:record_end]
    _check_semantics(rtype, page_no, lsn, prev_lsn_pg, prev_lsn_page, payload)
    return (lsn, prev_lsn_pg, prev_lsn_page, offset, page_no, payload_length, rtype, flags)


def encode_record(lsn, prev_lsn_pg, prev_lsn_page, page_no, rtype, flags, payload):
    """One record as bytes; raises _Invalid (offset relative to the record) if invalid."""
    payload = bytes(payload)
    _check_header_fields(rtype, flags, 0, len(payload))
    _check_semantics(rtype, page_no, lsn, prev_lsn_pg, prev_lsn_page, payload)
    body = RECORD_HEADER.pack(0, rtype, flags, 0, len(payload), page_no, lsn, prev_lsn_pg,
                              prev_lsn_page)[4:] + payload
    return struct.pack("<I", crc_mask(crc32c(body))) + body


# ---- encoders -------------------------------------------------------------------------------

def _scalar(value, bits, name):
    value = operator.index(value)
    if value < 0 or value >> bits:
        raise ValueError("%s: %d is not in [0, 2**%d)" % (name, value, bits))
    return value


def _column(values, bits, n, name):
    if isinstance(values, (int, np.integer)):
        values = [values] * n
    values = [_scalar(v, bits, name) for v in values]
    if len(values) == 1 and n != 1:
        values = values * n
    if len(values) != n:
        raise ValueError("%s has %d values for %d payloads" % (name, len(values), n))
    return values


def _encode(with_header, volume_id, pg, volume_epoch, membership_epoch, lsn, prev_lsn_pg,
            prev_lsn_page, page_no, rtype, flags, payloads):
    context = "encode_batch" if with_header else "encode_records"
    payloads = [bytes(memoryview(p).cast("B")) for p in payloads]
    n = len(payloads)
    header_size = BATCH_HEADER_SIZE if with_header else 0
    if with_header and not 1 <= n <= BATCH_RECORDS_MAX:
        _raise(errors.LengthError, context, 12)
    columns = list(zip(_column(lsn, 64, n, "lsn"), _column(prev_lsn_pg, 64, n, "prev_lsn_pg"),
                       _column(prev_lsn_page, 64, n, "prev_lsn_page"),
                       _column(page_no, 32, n, "page_no"), _column(rtype, 8, n, "type"),
                       _column(flags, 8, n, "flags"), payloads))
    total = header_size
    for payload in payloads:
        if len(payload) > RECORD_PAYLOAD_MAX:
            _raise(errors.LengthError, context, total)
        total += RECORD_HEADER_SIZE + len(payload)
    if with_header and total - header_size > BATCH_BODY_MAX:
        _raise(errors.LengthError, context, 60)
    parts = []
    offset = header_size
    for i, row in enumerate(columns):
        try:
            parts.append(encode_record(*row))
        except _Invalid as invalid:
            _raise(invalid.cls, context, offset)
        if with_header and i > 0 and row[0] <= columns[i - 1][0]:
            _raise(errors.OrderError, context, offset)
        offset += len(parts[-1])
    body = b"".join(parts)
    if not with_header:
        return body
    fields = (len(payloads), volume_id, volume_epoch, membership_epoch, columns[0][0],
              columns[-1][0], pg, len(body))
    header_tail = BATCH_HEADER.pack(0, 0, 0, 0, *fields)[12:]
    header = struct.pack("<IHHI", BATCH_MAGIC, FORMAT_VERSION, 0,
                         crc_mask(crc32c(header_tail))) + header_tail
    return header + body


def encode_batch(volume_id, pg, volume_epoch, membership_epoch, lsn, prev_lsn_pg,
                 prev_lsn_page, page_no, type, flags, payloads):
    """See aurora._native.encode_batch."""
    return _encode(True, _scalar(volume_id, 64, "volume_id"), _scalar(pg, 32, "pg"),
                   _scalar(volume_epoch, 64, "volume_epoch"),
                   _scalar(membership_epoch, 64, "membership_epoch"), lsn, prev_lsn_pg,
                   prev_lsn_page, page_no, type, flags, payloads)


def encode_records(lsn, prev_lsn_pg, prev_lsn_page, page_no, type, flags, payloads):
    """See aurora._native.encode_records."""
    return _encode(False, 0, 0, 0, 0, lsn, prev_lsn_pg, prev_lsn_page, page_no, type, flags,
                   payloads)


# ---- decoders -------------------------------------------------------------------------------

def _rows(rows):
    return np.array(rows, dtype=RECORD_DTYPE) if rows else np.empty(0, dtype=RECORD_DTYPE)


def decode_batch_header(buf):
    """Validate the header and body length of a batch; return its BatchHeader."""
    buf = bytes(memoryview(buf).cast("B"))
    context = "decode_batch: header"
    if len(buf) >= 4 and struct.unpack_from("<I", buf)[0] != BATCH_MAGIC:
        _raise(errors.MagicError, context, 0)
    if len(buf) < BATCH_HEADER_SIZE:
        _raise(errors.TruncatedError, context, len(buf))
    (_, version, flags, crc, record_count, volume_id, volume_epoch, membership_epoch,
     first_lsn, last_lsn, pg, body_length) = BATCH_HEADER.unpack_from(buf)
    if version != FORMAT_VERSION:
        _raise(errors.VersionError, context, 4)
    if flags:
        _raise(errors.FlagsError, context, 6)
    if crc_mask(crc32c(buf[12:BATCH_HEADER_SIZE])) != crc:
        _raise(errors.ChecksumError, context, 8)
    if not 1 <= record_count <= BATCH_RECORDS_MAX:
        _raise(errors.LengthError, context, 12)
    if body_length > BATCH_BODY_MAX:
        _raise(errors.LengthError, context, 60)
    if record_count * RECORD_HEADER_SIZE > body_length:
        _raise(errors.LengthError, context, 12)
    if first_lsn == LSN_NONE:
        _raise(errors.OrderError, context, 40)
    if last_lsn < first_lsn or last_lsn > LSN_MAX:
        _raise(errors.OrderError, context, 48)
    available = len(buf) - BATCH_HEADER_SIZE
    if body_length > available:
        _raise(errors.TruncatedError, context, len(buf))
    if body_length < available:
        _raise(errors.LengthError, context, 60)
    return BatchHeader(version, flags, crc, record_count, volume_id, volume_epoch,
                       membership_epoch, first_lsn, last_lsn, pg, body_length)


def decode_batch(buf):
    """See aurora._native.decode_batch."""
    buf = bytes(memoryview(buf).cast("B"))
    header = decode_batch_header(buf)
    context = "decode_batch"
    rows = []
    offset = BATCH_HEADER_SIZE
    for i in range(header.record_count):
        if offset == len(buf):
            _raise(errors.LengthError, context, 12)
        try:
            row = check_record(buf, offset, len(buf))
        except _Invalid as invalid:
            if invalid.cls is errors.TruncatedError:
                _raise(errors.LengthError, context, offset)
            _raise(invalid.cls, context, offset + invalid.offset)
        if i == 0 and row[0] != header.first_lsn:
            _raise(errors.OrderError, context, 40)
        if i > 0 and row[0] <= rows[-1][0]:
            _raise(errors.OrderError, context, offset + 16)
        rows.append(row)
        offset += RECORD_HEADER_SIZE + row[5]
    if offset != len(buf):
        _raise(errors.LengthError, context, offset)
    if rows[-1][0] != header.last_lsn:
        _raise(errors.OrderError, context, 48)
    return header, _rows(rows)


_STOP_NAMES = {
    errors.TruncatedError: "truncated", errors.ChecksumError: "checksum",
    errors.UnknownTypeError: "type", errors.FlagsError: "flags", errors.LengthError: "length",
    errors.RangeError: "range", errors.OrderError: "order",
}


def scan_log(buf, start=0, max_records=None):
    """See aurora._native.scan_log."""
    buf = bytes(memoryview(buf).cast("B"))
    if not 0 <= start <= len(buf):
        raise ValueError("scan_log: start %d outside a %d-byte buffer" % (start, len(buf)))
    if max_records is not None and max_records < 0:
        raise ValueError("max_records must be >= 0")
    rows = []
    offset = start
    while True:
        if offset == len(buf):
            reason = "end"
            break
        if not any(buf[offset:offset + RECORD_HEADER_SIZE]):
            reason = "zero"
            break
        if max_records is not None and len(rows) == max_records:
            reason = "cap"
            break
        try:
            row = check_record(buf, offset, len(buf))
        except _Invalid as invalid:
            reason = _STOP_NAMES[invalid.cls]
            break
        rows.append(row)
        offset += RECORD_HEADER_SIZE + row[5]
    return _rows(rows), offset, reason


def log_resync(buf, start):
    """See aurora._native.log_resync."""
    buf = bytes(memoryview(buf).cast("B"))
    if not 0 <= start <= len(buf):
        raise ValueError("log_resync: start %d outside a %d-byte buffer" % (start, len(buf)))
    for offset in range(start, len(buf) - RECORD_HEADER_SIZE + 1):
        try:
            check_record(buf, offset, len(buf))
        except _Invalid:
            continue
        return offset
    return None

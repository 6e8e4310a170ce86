# Redo records and batches (csrc/record.h).  Records cross into Python as one numpy
# structured array (RECORD_DTYPE) filled by C, never as per-record objects.

import operator
from collections import namedtuple
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.buffer cimport PyBUF_WRITABLE
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.string cimport memset
from libc.stdint cimport uint16_t

import numpy as np

cdef extern from "format.h" nogil:
    unsigned int AUR_REC_DELTA
    unsigned int AUR_REC_IMAGE
    unsigned int AUR_REC_ZERO
    unsigned int AUR_REC_NOOP
    unsigned int AUR_REC_SIZE
    unsigned int AUR_REC_FLAG_CPL
    unsigned int AUR_REC_FLAGS_KNOWN
    unsigned int AUR_REC_SIZE_PAYLOAD_LENGTH
    unsigned int AUR_RECORD_PAYLOAD_MAX
    unsigned int AUR_PAGE_NO_NONE
    unsigned int AUR_PAGE_NO_MAX
    unsigned long long AUR_LSN_NONE
    unsigned long long AUR_LSN_MAX
    unsigned int AUR_DELTA_RUN_HEADER_SIZE
    unsigned int AUR_DELTA_RUN_LENGTH_MAX
    unsigned int AUR_BATCH_MAGIC
    unsigned int AUR_BATCH_RECORDS_MAX
    unsigned int AUR_BATCH_BODY_MAX
    unsigned int AUR_CRC_MASK_DELTA
    uint32_t aur_crc_mask(uint32_t crc)
    uint32_t aur_crc_unmask(uint32_t masked)

cdef extern from "record.h" nogil:
    ctypedef struct aur_record_view:
        uint64_t lsn
        uint64_t prev_lsn_pg
        uint64_t prev_lsn_page
        uint64_t offset
        uint32_t page_no
        uint32_t payload_length
        uint8_t type
        uint8_t flags

    ctypedef struct aur_batch_header:
        uint32_t magic
        uint16_t version
        uint16_t flags
        uint32_t crc
        uint32_t record_count
        uint64_t volume_id
        uint64_t volume_epoch
        uint64_t membership_epoch
        uint64_t first_lsn
        uint64_t last_lsn
        uint32_t pg
        uint32_t body_length


    enum:
        AUR_SCAN_END
        AUR_SCAN_ZERO
        AUR_SCAN_CAP

    int aur_record_encode(uint8_t *out, size_t cap, const aur_record_view *meta,
                          const uint8_t *payload, size_t *written)
    int aur_batch_encode_header(uint8_t *out, size_t cap, const aur_batch_header *hdr)
    int aur_batch_decode_header(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                                size_t *error_offset)
    int aur_batch_decode(const uint8_t *buf, size_t len, aur_batch_header *hdr,
                         aur_record_view *records, uint32_t records_cap, size_t *error_offset)
    int aur_log_scan(const uint8_t *buf, size_t len, size_t start, aur_record_view *records,
                     uint32_t cap, uint32_t *count, size_t *end, int *stop_reason)
    int aur_log_resync(const uint8_t *buf, size_t len, size_t start, size_t *found)

REC_DELTA = AUR_REC_DELTA
REC_IMAGE = AUR_REC_IMAGE
REC_ZERO = AUR_REC_ZERO
REC_NOOP = AUR_REC_NOOP
REC_SIZE = AUR_REC_SIZE
REC_SIZE_PAYLOAD_LENGTH = AUR_REC_SIZE_PAYLOAD_LENGTH
FLAG_CPL = AUR_REC_FLAG_CPL
FLAGS_KNOWN = AUR_REC_FLAGS_KNOWN
RECORD_PAYLOAD_MAX = AUR_RECORD_PAYLOAD_MAX
PAGE_NO_NONE = AUR_PAGE_NO_NONE
PAGE_NO_MAX = AUR_PAGE_NO_MAX
LSN_NONE = AUR_LSN_NONE
LSN_MAX = AUR_LSN_MAX
DELTA_RUN_HEADER_SIZE = AUR_DELTA_RUN_HEADER_SIZE
DELTA_RUN_LENGTH_MAX = AUR_DELTA_RUN_LENGTH_MAX
BATCH_MAGIC = AUR_BATCH_MAGIC
BATCH_RECORDS_MAX = AUR_BATCH_RECORDS_MAX
BATCH_BODY_MAX = AUR_BATCH_BODY_MAX
CRC_MASK_DELTA = AUR_CRC_MASK_DELTA

# One row per record; mirrors aur_record_view (48 bytes, the 6 pad bytes unnamed).
RECORD_DTYPE = np.dtype({
    "names": ["lsn", "prev_lsn_pg", "prev_lsn_page", "offset", "page_no", "payload_length",
              "type", "flags"],
    "formats": [np.uint64, np.uint64, np.uint64, np.uint64, np.uint32, np.uint32, np.uint8,
                np.uint8],
    "offsets": [0, 8, 16, 24, 32, 36, 40, 41],
    "itemsize": 48,
})


cdef int _check_record_dtype() except -1:
    cdef aur_record_view probe
    cdef char *base = <char *>&probe
    actual = [<char *>&probe.lsn - base, <char *>&probe.prev_lsn_pg - base,
              <char *>&probe.prev_lsn_page - base, <char *>&probe.offset - base,
              <char *>&probe.page_no - base, <char *>&probe.payload_length - base,
              <char *>&probe.type - base, <char *>&probe.flags - base]
    expected = [RECORD_DTYPE.fields[name][1] for name in RECORD_DTYPE.names]
    if sizeof(aur_record_view) != RECORD_DTYPE.itemsize or actual != expected:
        raise ImportError("aur_record_view layout %r does not match RECORD_DTYPE %r"
                          % (actual, expected))
    return 0


_check_record_dtype()

BatchHeader = namedtuple("BatchHeader", [
    "version", "flags", "crc", "record_count", "volume_id", "volume_epoch", "membership_epoch",
    "first_lsn", "last_lsn", "pg", "body_length"])
BatchHeader.__doc__ = "The fields of a batch header (docs/format.md), in wire order; crc as stored."

# Why scan_log stopped: an aur_scan_stop, or the status of the record that failed validation.
SCAN_STOP_REASONS = {
    AUR_SCAN_END: "end",
    AUR_SCAN_ZERO: "zero",
    AUR_SCAN_CAP: "cap",
    AUR_E_TRUNCATED: "truncated",
    AUR_E_CRC: "checksum",
    AUR_E_TYPE: "type",
    AUR_E_FLAGS: "flags",
    AUR_E_LENGTH: "length",
    AUR_E_RANGE: "range",
    AUR_E_ORDER: "order",
}

# Scans are done in chunks of this many records, so a huge log does not need one huge
# allocation up front.
cdef enum:
    SCAN_CHUNK_RECORDS = 65536


def crc_mask(uint32_t crc):
    """The stored form of a CRC (format.h aur_crc_mask)."""
    return aur_crc_mask(crc)


def crc_unmask(uint32_t masked):
    """Inverse of crc_mask."""
    return aur_crc_unmask(masked)


_SMALL_COLUMN_MAX = 32
_COLUMN_LIMITS = {np.uint64: (1 << 64) - 1, np.uint32: (1 << 32) - 1, np.uint8: 0xFF}


def _small_column(list values, dtype, str name):
    cdef object limit = _COLUMN_LIMITS[dtype]
    cdef list checked = []
    for value in values:
        if isinstance(value, float) or not hasattr(type(value), "__index__"):
            raise TypeError("%s must hold integers, not %s" % (name, type(value).__name__))
        value = operator.index(value)
        if value < 0 or value > limit:
            raise ValueError("%s: values must be in [0, %d]" % (name, limit))
        checked.append(value)
    return np.array(checked, dtype=dtype)


def _column(values, dtype, Py_ssize_t n, str name):
    """``values`` (a sequence, array or scalar) as a contiguous length-n array of ``dtype``;
    ValueError if a value does not fit."""
    if (type(values) is np.ndarray and values.dtype == dtype and values.ndim == 1
            and values.shape[0] == n and values.flags.c_contiguous):
        return values   # the hot path: already the right array, every value fits
    if type(values) is list and len(values) == n and n <= _SMALL_COLUMN_MAX:
        # A writer's MTR is a few records: checking each value here costs far less than
        # numpy's conversion, reductions and broadcast on a tiny array.
        return _small_column(values, dtype, name)
    array = np.asarray(values)
    if array.dtype.kind == "O" or (array.dtype.kind == "f" and array.size
                                   and not isinstance(values, np.ndarray)):
        # Python ints beyond int64 (numpy makes those object or float arrays): check each.
        limit = np.iinfo(dtype).max
        checked = [operator.index(v) for v in np.ravel(np.asarray(values, dtype=object))]
        if any(v < 0 or v > limit for v in checked):
            raise ValueError("%s: values must be in [0, %d]" % (name, limit))
        array = np.array(checked, dtype=dtype).reshape(np.shape(values))
    elif array.dtype.kind not in "uib" and array.size:
        raise TypeError("%s must hold integers, not %s" % (name, array.dtype))
    if array.size:
        limits = np.iinfo(dtype)
        if int(array.min()) < 0 or int(array.max()) > limits.max:
            raise ValueError("%s: values must be in [0, %d]" % (name, limits.max))
    try:
        array = np.broadcast_to(array, (n,))
    except ValueError:
        raise ValueError("%s has %d values for %d payloads" % (name, array.size, n)) from None
    return np.ascontiguousarray(array, dtype=dtype)


def _scalar(value, int bits, str name):
    """An unsigned integer of ``bits`` bits, or ValueError (TypeError if not an integer)."""
    value = operator.index(value)
    if value < 0 or value >> bits:
        raise ValueError("%s: %d is not in [0, 2**%d)" % (name, value, bits))
    return value


cdef int _encode_loop(uint8_t *out, size_t total, size_t off, Py_ssize_t n, bint ordered,
                      const uint64_t *lsn, const uint64_t *prev_lsn_pg,
                      const uint64_t *prev_lsn_page, const uint32_t *page_no,
                      const uint8_t *type_, const uint8_t *flags, Py_buffer *views,
                      Py_ssize_t *failed_index, size_t *failed_offset) noexcept nogil:
    """Encode records i = 0..n-1 at out + off; on failure report which record and where."""
    cdef aur_record_view meta
    cdef size_t written
    cdef Py_ssize_t i
    cdef int rc
    memset(&meta, 0, sizeof(meta))
    for i in range(n):
        meta.lsn = lsn[i]
        meta.prev_lsn_pg = prev_lsn_pg[i]
        meta.prev_lsn_page = prev_lsn_page[i]
        meta.page_no = page_no[i]
        meta.type = type_[i]
        meta.flags = flags[i]
        meta.payload_length = <uint32_t>views[i].len
        rc = aur_record_encode(out + off, total - off, &meta, <const uint8_t *>views[i].buf,
                               &written)
        if rc == AUR_OK and ordered and i > 0 and meta.lsn <= lsn[i - 1]:
            rc = AUR_E_ORDER
        if rc != AUR_OK:
            failed_index[0] = i
            failed_offset[0] = off
            return rc
        off += written
    failed_offset[0] = off
    return AUR_OK


cdef object _encode(bint with_header, uint64_t volume_id, uint32_t pg, uint64_t volume_epoch,
                    uint64_t membership_epoch, lsn, prev_lsn_pg, prev_lsn_page, page_no,
                    type_, flags, payloads):
    cdef str context = "encode_batch" if with_header else "encode_records"
    payloads = list(payloads)
    cdef Py_ssize_t n = len(payloads)
    cdef size_t header_size = AUR_BATCH_HEADER_SIZE if with_header else 0
    if with_header and (n == 0 or n > AUR_BATCH_RECORDS_MAX):
        raise_status(AUR_E_LENGTH, "%s: %d records (1..%d)" % (context, n, AUR_BATCH_RECORDS_MAX), 12)
    cdef const uint64_t[::1] lsn_v = _column(lsn, np.uint64, n, "lsn")
    cdef const uint64_t[::1] prev_pg_v = _column(prev_lsn_pg, np.uint64, n, "prev_lsn_pg")
    cdef const uint64_t[::1] prev_page_v = _column(prev_lsn_page, np.uint64, n, "prev_lsn_page")
    cdef const uint32_t[::1] page_no_v = _column(page_no, np.uint32, n, "page_no")
    cdef const uint8_t[::1] type_v = _column(type_, np.uint8, n, "type")
    cdef const uint8_t[::1] flags_v = _column(flags, np.uint8, n, "flags")

    cdef Py_buffer *views = <Py_buffer *>PyMem_Calloc(<size_t>n if n else 1, sizeof(Py_buffer))
    cdef uint8_t *owned = <uint8_t *>PyMem_Calloc(<size_t>n if n else 1, 1)
    if views == NULL or owned == NULL:
        PyMem_Free(views)
        PyMem_Free(owned)
        raise MemoryError()
    cdef Py_ssize_t acquired = 0
    cdef Py_ssize_t i
    cdef size_t total = header_size
    cdef size_t off
    cdef int rc = AUR_OK
    cdef aur_batch_header hdr
    cdef uint8_t *out
    try:
        for i in range(n):
            payload = payloads[i]
            if PyBytes_CheckExact(payload):
                # bytes need no buffer acquisition: the list keeps them alive.
                views[i].buf = PyBytes_AS_STRING(payload)
                views[i].len = PyBytes_GET_SIZE(payload)
            else:
                PyObject_GetBuffer(payload, &views[i], PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
                owned[i] = 1
            acquired += 1
            if <size_t>views[i].len > AUR_RECORD_PAYLOAD_MAX:
                raise_status(AUR_E_LENGTH, "%s: record %d has a %d-byte payload (max %d)"
                             % (context, i, views[i].len, AUR_RECORD_PAYLOAD_MAX), total)
            total += AUR_RECORD_HEADER_SIZE + <size_t>views[i].len
        if with_header and total - header_size > AUR_BATCH_BODY_MAX:
            raise_status(AUR_E_LENGTH, "%s: body of %d bytes (max %d)"
                         % (context, total - header_size, AUR_BATCH_BODY_MAX), 60)
        result = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        out = <uint8_t *>PyBytes_AS_STRING(result)
        off = header_size
        if total >= CRC32C_RELEASE_GIL_BYTES:
            with nogil:
                rc = _encode_loop(out, total, header_size, n, with_header, &lsn_v[0],
                                  &prev_pg_v[0], &prev_page_v[0], &page_no_v[0], &type_v[0],
                                  &flags_v[0], views, &i, &off)
        elif n:
            rc = _encode_loop(out, total, header_size, n, with_header, &lsn_v[0],
                              &prev_pg_v[0], &prev_page_v[0], &page_no_v[0], &type_v[0],
                              &flags_v[0], views, &i, &off)
        if rc != AUR_OK:
            raise_status(rc, "%s: record %d" % (context, i), off)
        if with_header:
            memset(&hdr, 0, sizeof(hdr))
            hdr.record_count = <uint32_t>n
            hdr.volume_id = volume_id
            hdr.volume_epoch = volume_epoch
            hdr.membership_epoch = membership_epoch
            hdr.first_lsn = lsn_v[0]
            hdr.last_lsn = lsn_v[n - 1]
            hdr.pg = pg
            hdr.body_length = <uint32_t>(total - header_size)
            rc = aur_batch_encode_header(out, total, &hdr)
            if rc != AUR_OK:
                raise_status(rc, "%s: header" % context, 0)
        return result
    finally:
        for i in range(acquired):
            if owned[i]:
                PyBuffer_Release(&views[i])
        PyMem_Free(views)
        PyMem_Free(owned)


def encode_batch(volume_id, pg, volume_epoch, membership_epoch, lsn, prev_lsn_pg,
                 prev_lsn_page, page_no, type, flags, payloads):
    """One batch (64-byte header + records) as bytes.

    The record columns (lsn ... flags) are sequences or arrays with one value per payload, or
    scalars; ``payloads`` is a sequence of contiguous buffers.  Every record is validated as
    decode_batch would (same exception classes), LSNs must be strictly increasing; an error's
    ``offset`` is where the offending record would start in the output.
    """
    return _encode(True, _scalar(volume_id, 64, "volume_id"), _scalar(pg, 32, "pg"),
                   _scalar(volume_epoch, 64, "volume_epoch"),
                   _scalar(membership_epoch, 64, "membership_epoch"), lsn, prev_lsn_pg,
                   prev_lsn_page, page_no, type, flags, payloads)


def encode_records(lsn, prev_lsn_pg, prev_lsn_page, page_no, type, flags, payloads):
    """Back-to-back records without a batch header (a segment log's layout), as bytes.
    Same columns and validation as encode_batch, except that any LSN order is allowed."""
    return _encode(False, 0, 0, 0, 0, lsn, prev_lsn_pg, prev_lsn_page, page_no, type, flags,
                   payloads)


cdef inline uint8_t *_rows(object array):
    cdef uint8_t[::1] raw = array.view(np.uint8)
    return &raw[0] if raw.shape[0] else NULL


def decode_batch(buf):
    """Validate a whole batch; return (BatchHeader, records ndarray of RECORD_DTYPE).

    A record's payload is ``buf[offset + RECORD_HEADER_SIZE : ... + payload_length]``.
    Raises the aurora.errors.FormatError subclass of the first rule broken, with ``offset``
    the byte of ``buf`` where it was found.
    """
    cdef Py_buffer view
    cdef aur_batch_header hdr
    cdef size_t error_offset = 0
    cdef int rc
    cdef uint8_t *rows
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        rc = aur_batch_decode_header(<const uint8_t *>view.buf, <size_t>view.len, &hdr,
                                     &error_offset)
        if rc != AUR_OK:
            raise_status(rc, "decode_batch: header", error_offset)
        records = np.empty(hdr.record_count, dtype=RECORD_DTYPE)
        rows = _rows(records)
        if view.len >= CRC32C_RELEASE_GIL_BYTES:
            with nogil:
                rc = aur_batch_decode(<const uint8_t *>view.buf, <size_t>view.len, &hdr,
                                      <aur_record_view *>rows, hdr.record_count, &error_offset)
        else:
            rc = aur_batch_decode(<const uint8_t *>view.buf, <size_t>view.len, &hdr,
                                  <aur_record_view *>rows, hdr.record_count, &error_offset)
        if rc != AUR_OK:
            raise_status(rc, "decode_batch", error_offset)
    finally:
        PyBuffer_Release(&view)
    header = BatchHeader(hdr.version, hdr.flags, hdr.crc, hdr.record_count, hdr.volume_id,
                         hdr.volume_epoch, hdr.membership_epoch, hdr.first_lsn, hdr.last_lsn,
                         hdr.pg, hdr.body_length)
    return header, records


def scan_log(buf, Py_ssize_t start=0, max_records=None):
    """Scan back-to-back records of a segment log from ``start``.

    Returns (records ndarray of RECORD_DTYPE, end_offset, stop_reason): end_offset is just
    after the last good record; stop_reason is "end" (buffer consumed), "zero" (all-zero
    header: unwritten space), "cap" (max_records reached), or why the record at end_offset is
    bad: "truncated" (runs past the buffer), "checksum", "type", "flags", "length", "range",
    "order".  Use log_resync(buf, end_offset + 1) to tell a torn tail from mid-log damage.
    """
    cdef Py_buffer view
    cdef uint32_t count = 0
    cdef uint32_t cap
    cdef size_t end = 0
    cdef size_t position
    cdef int reason = AUR_SCAN_END
    cdef int rc = AUR_OK
    cdef uint8_t *rows
    cdef Py_ssize_t limit
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        if start < 0 or start > view.len:
            raise_status(AUR_E_ARGUMENT, "scan_log: start %d outside a %d-byte buffer"
                         % (start, view.len), start)
        limit = -1 if max_records is None else max_records
        if max_records is not None and limit < 0:
            raise ValueError("max_records must be >= 0")
        chunks = []
        position = <size_t>start
        total = 0
        while True:
            cap = SCAN_CHUNK_RECORDS
            cap = min(cap, <uint32_t>((<size_t>view.len - position) // AUR_RECORD_HEADER_SIZE + 1))
            if limit >= 0 and limit - total < cap:
                cap = <uint32_t>(limit - total)
            records = np.empty(cap, dtype=RECORD_DTYPE)
            rows = _rows(records)
            if <size_t>view.len - position >= CRC32C_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_log_scan(<const uint8_t *>view.buf, <size_t>view.len, position,
                                      <aur_record_view *>rows, cap, &count, &end, &reason)
            else:
                rc = aur_log_scan(<const uint8_t *>view.buf, <size_t>view.len, position,
                                  <aur_record_view *>rows, cap, &count, &end, &reason)
            if rc != AUR_OK:
                raise_status(rc, "scan_log", position)
            chunks.append(records[:count])
            total += count
            position = end
            if reason != AUR_SCAN_CAP or (limit >= 0 and total >= limit):
                break
    finally:
        PyBuffer_Release(&view)
    records = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return records, end, SCAN_STOP_REASONS[reason]


def log_resync(buf, Py_ssize_t start):
    """The first offset >= start holding a fully valid record, or None."""
    cdef Py_buffer view
    cdef size_t found = 0
    cdef int rc
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        if start < 0 or start > view.len:
            raise_status(AUR_E_ARGUMENT, "log_resync: start %d outside a %d-byte buffer"
                         % (start, view.len), start)
        with nogil:
            rc = aur_log_resync(<const uint8_t *>view.buf, <size_t>view.len, <size_t>start,
                                &found)
        if rc != AUR_OK:
            raise_status(rc, "log_resync", start)
        return None if found == <size_t>view.len else found
    finally:
        PyBuffer_Release(&view)

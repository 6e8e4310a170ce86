# The writer's send path (csrc/boxcar.h): queued batches merged per PG into boxcars and framed
# in C, one call per PG and round, instead of struct unpacks, joins and header CRCs in Python.
# tests/test_boxcar_native.py keeps the Python definition the bytes must equal.

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "boxcar.h" nogil:
    enum:
        AUR_BOXCAR_BYTES_MAX
    ctypedef struct aur_boxcar_batch:
        uint32_t record_count
        uint32_t pg
        uint64_t first_lsn
        uint64_t last_lsn
    int aur_boxcar_peek(const uint8_t *batch, size_t len, aur_boxcar_batch *info)
    int aur_boxcar_joins(uint64_t run_records, uint64_t run_bytes, uint64_t run_last_lsn,
                         const aur_boxcar_batch *next, size_t next_len, uint64_t bytes_max)
    int aur_boxcar_merge(const uint8_t *const *batches, const size_t *lens, uint32_t count,
                         uint8_t *out, size_t cap, size_t *out_len)
    int aur_frame_seal(uint8_t *frame, size_t frame_len, uint16_t type, uint32_t request_id,
                       uint64_t volume_id, uint64_t volume_epoch, uint64_t membership_epoch)
    void aur_append_ring_body(uint8_t *out, uint64_t ring_id, uint64_t offset, uint32_t length,
                              uint32_t crc)

BOXCAR_BYTES_MAX = AUR_BOXCAR_BYTES_MAX


cdef inline bytes _batch_bytes(object body):
    """``body`` as bytes: the writer's batches are bytes already; anything else is copied."""
    if PyBytes_CheckExact(body):
        return <bytes>body
    return bytes(memoryview(body))


cdef int _peek(bytes body, aur_boxcar_batch *info, str context) except -1:
    cdef int rc = aur_boxcar_peek(<const uint8_t *>PyBytes_AS_STRING(body),
                                  <size_t>PyBytes_GET_SIZE(body), info)
    if rc != AUR_OK:
        raise_status(rc, "%s: a queued APPEND of %d bytes is not a batch" % (context, len(body)), 0)
    return 0


cdef bytes _merge(list bodies):
    """One batch holding the records of ``bodies`` (bytes, one run as aur_boxcar_joins allows);
    a run of one is returned as it is."""
    cdef Py_ssize_t n = len(bodies)
    if n == 1:
        return <bytes>bodies[0]
    cdef const uint8_t **ptrs = <const uint8_t **>PyMem_Malloc(<size_t>n * sizeof(uint8_t *))
    cdef size_t *lens = <size_t *>PyMem_Malloc(<size_t>n * sizeof(size_t))
    cdef size_t total = AUR_BATCH_HEADER_SIZE, written = 0
    cdef Py_ssize_t i
    cdef int rc
    cdef bytes body, out
    try:
        if ptrs == NULL or lens == NULL:
            raise MemoryError("boxcar: out of memory for %d batches" % n)
        for i in range(n):
            body = <bytes>bodies[i]
            ptrs[i] = <const uint8_t *>PyBytes_AS_STRING(body)
            lens[i] = <size_t>PyBytes_GET_SIZE(body)
            total += lens[i] - AUR_BATCH_HEADER_SIZE
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        rc = aur_boxcar_merge(ptrs, lens, <uint32_t>n, <uint8_t *>PyBytes_AS_STRING(out), total, &written)
        if rc != AUR_OK:
            raise_status(rc, "boxcar: merging %d batches of %d bytes" % (n, total))
        assert written == total, (written, total)
        return out
    finally:
        PyMem_Free(ptrs)
        PyMem_Free(lens)


cdef bytes _frame(uint16_t frame_type, const uint8_t *body, size_t n, uint32_t request_id,
                  uint64_t volume_id, uint64_t volume_epoch, uint64_t membership_epoch):
    cdef size_t length = AUR_FRAME_HEADER_BYTES + n
    if n > AUR_FRAME_LENGTH_MAX - AUR_FRAME_HEADER_BYTES:
        raise _errors.LengthError("frame of %d bytes exceeds the limit of %d"
                                  % (length, AUR_FRAME_LENGTH_MAX))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
    cdef uint8_t *frame = <uint8_t *>PyBytes_AS_STRING(out)
    memcpy(frame + AUR_FRAME_HEADER_BYTES, body, n)
    cdef int rc = aur_frame_seal(frame, length, frame_type, request_id, volume_id, volume_epoch,
                                 membership_epoch)
    if rc != AUR_OK:
        raise_status(rc, "frame of %d bytes" % length)
    return out


def merge_batches(list batches not None):
    """One batch holding the records of ``batches`` (same PG and epochs, strictly increasing
    LSNs): the records keep their own CRCs, only a new header is made; one batch is returned
    as it is.  A batch that is not one (short, wrong magic, body length off) raises the
    FormatError of its fault."""
    if not batches:
        raise ValueError("merge_batches: no batches")
    cdef aur_boxcar_batch info
    bodies = [_batch_bytes(b) for b in batches]
    for body in bodies:
        _peek(body, &info, "merge_batches")
    return _merge(bodies)


cdef void _flush(list runs, dict index, list out):
    for run in runs:
        out.append((AUR_FRAME_TYPE_APPEND, run[0], _merge(run[1])))
    del runs[:]
    index.clear()


def coalesce_appends(items, uint64_t bytes_max=AUR_BOXCAR_BYTES_MAX):
    """Queued frames ``items`` ((frame type, pg, body), ...) with each run of consecutive
    APPENDs folded into one APPEND per PG (the boxcar: every MTR that queued while the sender
    was busy leaves in one batch per PG).  Other frames stay where they are, as barriers.
    Only a strictly increasing run merges (a resend after a reconnect can queue batches
    before one that an ERROR put back), of at most BATCH_RECORDS_MAX records and
    ``bytes_max`` bytes; a run that cannot take the next batch is cut, and with it every
    PG's run (so the frames keep their queue order)."""
    cdef list out = []
    cdef list runs = []          # [pg, [bodies], records, bytes, last LSN], in arrival order
    cdef dict index = {}         # pg -> its run in runs
    cdef aur_boxcar_batch info
    cdef list run
    for frame_type, pg, body in items:
        if frame_type != AUR_FRAME_TYPE_APPEND:
            _flush(runs, index, out)
            out.append((frame_type, pg, body))
            continue
        body = _batch_bytes(body)
        _peek(body, &info, "coalesce_appends")
        run = index.get(pg)
        if run is not None and not aur_boxcar_joins(run[2], run[3], run[4], &info,
                                                    <size_t>PyBytes_GET_SIZE(body), bytes_max):
            _flush(runs, index, out)
            run = None
        if run is None:
            run = [pg, [], 0, 0, 0]
            index[pg] = run
            runs.append(run)
        (<list>run[1]).append(body)
        run[2] += info.record_count
        run[3] += PyBytes_GET_SIZE(body)
        run[4] = info.last_lsn
    _flush(runs, index, out)
    return out


def frame_boxcars(batches not None, uint32_t next_request_id, uint64_t volume_id,
                  uint64_t volume_epoch, uint64_t membership_epoch, bint inline,
                  uint64_t bytes_max=AUR_BOXCAR_BYTES_MAX):
    """Take every batch queued in ``batches`` (a deque of one PG's batches, emptied with
    popleft, so committers may keep appending) and make its boxcars, as coalesce_appends
    would: returns ([(request_id, body, last LSN, APPEND frame or None), ...], the next
    request id).  Request ids count up from ``next_request_id``, skipping 0 at the wrap; the
    APPEND frame is made only if ``inline``."""
    cdef list out = []
    cdef list run = []
    cdef uint64_t records = 0, run_bytes = 0, last_lsn = 0
    cdef aur_boxcar_batch info
    cdef bytes body
    cdef uint32_t request_id = next_request_id or 1
    while batches:
        body = _batch_bytes(batches.popleft())
        _peek(body, &info, "frame_boxcars")
        if run and not aur_boxcar_joins(records, run_bytes, last_lsn, &info,
                                        <size_t>PyBytes_GET_SIZE(body), bytes_max):
            request_id = _boxcar_out(out, run, last_lsn, request_id, volume_id, volume_epoch,
                                     membership_epoch, inline)
            run = []
            records = run_bytes = 0
        run.append(body)
        records += info.record_count
        run_bytes += <uint64_t>PyBytes_GET_SIZE(body)
        last_lsn = info.last_lsn
    if run:
        request_id = _boxcar_out(out, run, last_lsn, request_id, volume_id, volume_epoch,
                                 membership_epoch, inline)
    return out, request_id


cdef uint32_t _boxcar_out(list out, list run, uint64_t last_lsn, uint32_t request_id,
                          uint64_t volume_id, uint64_t volume_epoch, uint64_t membership_epoch,
                          bint inline) except 0:
    cdef bytes body = _merge(run)
    frame = None
    if inline:
        frame = _frame(AUR_FRAME_TYPE_APPEND, <const uint8_t *>PyBytes_AS_STRING(body),
                       <size_t>PyBytes_GET_SIZE(body), request_id, volume_id, volume_epoch,
                       membership_epoch)
    out.append((request_id, body, last_lsn, frame))
    request_id += 1          # wraps to 0 at 2**32, which is skipped: 0 means "no request"
    return request_id or 1


def encode_frame(uint16_t frame_type, body, uint32_t request_id=0, uint64_t volume_id=0,
                 uint64_t volume_epoch=0, uint64_t membership_epoch=0):
    """One frame as bytes, exactly aurora.protocol.encode_frame's for a bytes-like body;
    LengthError past FRAME_LENGTH_MAX."""
    cdef Py_buffer view
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        return _frame(frame_type, <const uint8_t *>view.buf, <size_t>view.len, request_id,
                      volume_id, volume_epoch, membership_epoch)
    finally:
        PyBuffer_Release(&view)


def append_ring_frame(uint64_t ring_id, uint64_t offset, uint32_t length, uint32_t crc,
                      uint32_t request_id, uint64_t volume_id, uint64_t volume_epoch,
                      uint64_t membership_epoch):
    """The APPEND_RING frame announcing a ring slot (protocol.APPEND_RING_BODY)."""
    cdef uint8_t body[AUR_FRAME_APPEND_RING_BODY_BYTES]
    aur_append_ring_body(body, ring_id, offset, length, crc)
    return _frame(AUR_FRAME_TYPE_APPEND_RING, body, AUR_FRAME_APPEND_RING_BODY_BYTES, request_id,
                  volume_id, volume_epoch, membership_epoch)


def ring_copy(destination not None, Py_ssize_t offset, data not None):
    """Copy ``data`` into the writable buffer ``destination`` (the ring's mapping) at
    ``offset``; returns the CRC32C of ``data``.  ValueError if it does not fit."""
    cdef Py_buffer dst, src
    cdef uint32_t crc
    PyObject_GetBuffer(destination, &dst, PyBUF_SIMPLE | PyBUF_WRITABLE)
    try:
        PyObject_GetBuffer(data, &src, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if offset < 0 or offset > dst.len or src.len > dst.len - offset:
                raise ValueError("ring_copy: %d bytes at offset %d of a %d-byte buffer"
                                 % (src.len, offset, dst.len))
            memcpy(<uint8_t *>dst.buf + offset, src.buf, <size_t>src.len)
            crc = _crc32c_unlocked(0, src.buf, <size_t>src.len)
        finally:
            PyBuffer_Release(&src)
    finally:
        PyBuffer_Release(&dst)
    return crc

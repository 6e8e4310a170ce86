# One PG's part of an MTR, encoded as a batch and registered with the quorum tracker in one
# call (the writer's commit path).  encode_batch + QuorumTracker.sent did the same through six
# numpy columns and two more for the tracker: about 20 us of the committing thread's time
# under the GIL for a one-record MTR, most of it building small arrays.

# Records one log_pg_run call takes; the columns live on the C stack.
from libc.stdint cimport UINT64_MAX

cdef enum:
    LOG_PG_RUN_RECORDS_MAX = 64

PG_RUN_RECORDS_MAX = LOG_PG_RUN_RECORDS_MAX


def log_pg_run(QuorumTracker tracker not None, uint64_t volume_id, uint32_t pg,
               uint64_t volume_epoch, uint64_t membership_epoch, uint64_t first_lsn,
               uint64_t prev_lsn_pg, list page_nos, list types, list prev_lsn_page,
               list payloads, bint ends_mtr):
    """Encode records first_lsn, first_lsn + 1, ... of PG ``pg`` (one per payload, dense
    LSNs, each one's PG backlink the one before it, the first's ``prev_lsn_pg``; the last a CPL
    if ``ends_mtr``) as one batch, register their LSNs with ``tracker`` (QuorumTracker.sent),
    and return the batch bytes.  Exactly what encode_batch and sent give for the same columns,
    with the same exceptions; nothing is registered if encoding fails.  At most
    PG_RUN_RECORDS_MAX records (more: use encode_batch and sent)."""
    tracker._check()
    cdef Py_ssize_t n = len(payloads)
    if n == 0 or n > LOG_PG_RUN_RECORDS_MAX:
        raise ValueError("log_pg_run: %d records; 1 to %d" % (n, LOG_PG_RUN_RECORDS_MAX))
    if len(page_nos) != n or len(types) != n or len(prev_lsn_page) != n:
        raise ValueError("log_pg_run: %d payloads, %d page numbers, %d types, %d page "
                         "backlinks; one of each per record"
                         % (n, len(page_nos), len(types), len(prev_lsn_page)))
    if first_lsn == 0 or first_lsn > UINT64_MAX - <uint64_t>n:
        raise ValueError("log_pg_run: first LSN %d with %d records" % (first_lsn, n))
    cdef uint64_t lsn[LOG_PG_RUN_RECORDS_MAX]
    cdef uint64_t prev_pg[LOG_PG_RUN_RECORDS_MAX]
    cdef uint64_t prev_page[LOG_PG_RUN_RECORDS_MAX]
    cdef uint32_t page_no[LOG_PG_RUN_RECORDS_MAX]
    cdef uint8_t type_[LOG_PG_RUN_RECORDS_MAX]
    cdef uint8_t flags[LOG_PG_RUN_RECORDS_MAX]
    cdef Py_buffer views[LOG_PG_RUN_RECORDS_MAX]
    cdef bint owned[LOG_PG_RUN_RECORDS_MAX]
    cdef Py_ssize_t acquired = 0
    cdef Py_ssize_t i
    cdef size_t total = AUR_BATCH_HEADER_SIZE
    cdef size_t off
    cdef int rc = AUR_OK
    cdef aur_batch_header hdr
    cdef uint8_t *out
    for i in range(n):
        lsn[i] = first_lsn + <uint64_t>i
        prev_pg[i] = prev_lsn_pg if i == 0 else lsn[i - 1]
        prev_page[i] = prev_lsn_page[i]
        page_no[i] = page_nos[i]
        type_[i] = types[i]
        flags[i] = AUR_REC_FLAG_CPL if ends_mtr and i == n - 1 else 0
    try:
        for i in range(n):
            payload = payloads[i]
            owned[i] = not PyBytes_CheckExact(payload)
            if owned[i]:
                PyObject_GetBuffer(payload, &views[i], PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
            else:
                # bytes need no buffer acquisition: the list keeps them alive.
                views[i].buf = PyBytes_AS_STRING(payload)
                views[i].len = PyBytes_GET_SIZE(payload)
            acquired += 1
            if <size_t>views[i].len > AUR_RECORD_PAYLOAD_MAX:
                raise_status(AUR_E_LENGTH, "log_pg_run: record %d has a %d-byte payload (max %d)"
                             % (i, views[i].len, AUR_RECORD_PAYLOAD_MAX), total)
            total += AUR_RECORD_HEADER_SIZE + <size_t>views[i].len
        if total - AUR_BATCH_HEADER_SIZE > AUR_BATCH_BODY_MAX:
            raise_status(AUR_E_LENGTH, "log_pg_run: body of %d bytes (max %d)"
                         % (total - AUR_BATCH_HEADER_SIZE, AUR_BATCH_BODY_MAX), 60)
        result = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
        out = <uint8_t *>PyBytes_AS_STRING(result)
        off = AUR_BATCH_HEADER_SIZE
        if total >= CRC32C_RELEASE_GIL_BYTES:
            with nogil:
                rc = _encode_loop(out, total, off, n, True, lsn, prev_pg, prev_page, page_no,
                                  type_, flags, views, &i, &off)
        else:
            rc = _encode_loop(out, total, off, n, True, lsn, prev_pg, prev_page, page_no,
                              type_, flags, views, &i, &off)
        if rc != AUR_OK:
            raise_status(rc, "log_pg_run: record %d" % i, off)
        memset(&hdr, 0, sizeof(hdr))
        hdr.record_count = <uint32_t>n
        hdr.volume_id = volume_id
        hdr.volume_epoch = volume_epoch
        hdr.membership_epoch = membership_epoch
        hdr.first_lsn = lsn[0]
        hdr.last_lsn = lsn[n - 1]
        hdr.pg = pg
        hdr.body_length = <uint32_t>(total - AUR_BATCH_HEADER_SIZE)
        rc = aur_batch_encode_header(out, total, &hdr)
        if rc != AUR_OK:
            raise_status(rc, "log_pg_run: header", 0)
    finally:
        for i in range(acquired):
            if owned[i]:
                PyBuffer_Release(&views[i])
    rc = aur_quorum_sent(tracker._q, pg, <uint32_t>n, lsn, flags)
    if rc != AUR_OK:
        if rc == AUR_E_ORDER:
            raise_status(rc, "QuorumTracker.sent: PG %d, LSNs %d..%d; every LSN must be "
                         "above the previous one and above the highest registered (%d)"
                         % (pg, lsn[0], lsn[n - 1], aur_quorum_highest_lsn(tracker._q)))
        raise_status(rc, "QuorumTracker.sent: PG %d, %d records" % (pg, n))
    return result

# The storage node's APPEND fast path (aurora/node/core.py, aurora/node/segment.py).
#
# A live APPEND carries a boxcar of a few records.  Decoding it into a numpy array, turning the
# array into Python rows and indexing those rows in interpreted Python cost a node about 50 us
# per batch, most of its foreground CPU beside the kernel's.  Here a small batch is decoded
# into C memory (no numpy array, no Python object per record) and checked and indexed by
# typed loops that update the segment's dictionaries and lists directly.  The decisions are
# the same as segment.py's row path (_check_rows, _fresh_rows, _index_small), which stays the
# reference and still serves every batch this path declines (duplicates, truncated or
# collected LSNs, a batch that needs a new log file, big batches).

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem, PyDict_Contains
from cpython.list cimport PyList_Append, PyList_GET_SIZE, PyList_GET_ITEM
from cpython.ref cimport PyObject
from cpython.mem cimport PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from bisect import insort as _bisect_insort

cdef extern from "record.h" nogil:
    int aur_record_check(const uint8_t *buf, size_t avail, uint64_t base, aur_record_view *view,
                         size_t *error_offset)

# Batches of up to this many records take the fast path; it must not exceed
# segment.SMALL_INDEX_RECORDS, the bound of the row path it stands in for.
SMALL_BATCH_RECORDS_MAX = 64
cdef enum:
    SMALL_BATCH_CAP = 64
    # segment.LOCATION_SEQ_SHIFT: an index location is log sequence << 40 | offset.
    LOCATION_SEQ_SHIFT_BITS = 40

cdef uint32_t NOT_A_PAGE_U32 = 0xFFFFFFFF


cdef class SmallBatch:
    """A validated batch of at most SMALL_BATCH_RECORDS_MAX records, its record views in C
    memory.  Offsets index into the buffer it was decoded from, which the caller keeps."""
    cdef aur_batch_header hdr
    cdef aur_record_view records[SMALL_BATCH_CAP]

    @property
    def record_count(self):
        return self.hdr.record_count

    @property
    def header(self):
        """The BatchHeader, as decode_batch returns it."""
        h = self.hdr
        return BatchHeader(h.version, h.flags, h.crc, h.record_count, h.volume_id,
                           h.volume_epoch, h.membership_epoch, h.first_lsn, h.last_lsn,
                           h.pg, h.body_length)

    @property
    def volume_id(self):
        return self.hdr.volume_id

    @property
    def pg(self):
        return self.hdr.pg

    @property
    def volume_epoch(self):
        return self.hdr.volume_epoch

    @property
    def membership_epoch(self):
        return self.hdr.membership_epoch

    @property
    def last_lsn(self):
        return self.hdr.last_lsn

    @property
    def first_offset(self):
        """Where the first record starts in the buffer."""
        self._check_decoded()
        return self.records[0].offset

    @property
    def end_offset(self):
        """Just after the last record (records of a batch lie back to back)."""
        self._check_decoded()
        cdef aur_record_view *last = &self.records[self.hdr.record_count - 1]
        return last.offset + AUR_RECORD_HEADER_SIZE + last.payload_length

    cdef int _check_decoded(self) except -1:
        # A SmallBatch() made from Python holds no records (a decoded one has 1 to the cap).
        if self.hdr.record_count == 0 or self.hdr.record_count > SMALL_BATCH_CAP:
            raise ValueError("this SmallBatch holds no decoded records; use decode_small_batch")
        return 0

    def tolist(self):
        """The records as rows, exactly as decode_batch(buf)[1].tolist() gives them."""
        cdef uint32_t i
        cdef aur_record_view *r
        out = []
        for i in range(self.hdr.record_count):
            r = &self.records[i]
            out.append((r.lsn, r.prev_lsn_pg, r.prev_lsn_page, r.offset, r.page_no,
                        r.payload_length, r.type, r.flags))
        return out


def decode_small_batch(buf):
    """Validate a whole batch as decode_batch does (same exceptions and offsets); return a
    SmallBatch, or None when the batch holds more than SMALL_BATCH_RECORDS_MAX records (the
    caller then decodes it with decode_batch)."""
    cdef Py_buffer view
    cdef size_t error_offset = 0
    cdef int rc
    cdef SmallBatch batch = SmallBatch.__new__(SmallBatch)
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        rc = aur_batch_decode_header(<const uint8_t *>view.buf, <size_t>view.len, &batch.hdr,
                                     &error_offset)
        if rc != AUR_OK:
            raise_status(rc, "decode_batch: header", error_offset)
        if batch.hdr.record_count > SMALL_BATCH_CAP:
            return None
        rc = aur_batch_decode(<const uint8_t *>view.buf, <size_t>view.len, &batch.hdr,
                              batch.records, SMALL_BATCH_CAP, &error_offset)
        if rc != AUR_OK:
            raise_status(rc, "decode_batch", error_offset)
    finally:
        PyBuffer_Release(&view)
    return batch


cdef enum:
    # What _small_batch_problem finds (small_batch_check raises for each; the APPEND lane
    # declines the batch instead).
    BATCH_FITS = 0
    BATCH_NO_PAGES = 1        # a PG of zero pages
    BATCH_FOREIGN_PAGE = 2    # a record of a page outside the PG (*page_no says which)
    BATCH_IMAGE_SIZE = 3      # an IMAGE record whose payload is not one page


cdef int _small_batch_problem(SmallBatch batch, uint32_t pg, uint32_t pages_per_pg, uint32_t page_size,
                              uint32_t *page_no) noexcept:
    """Segment.check_batch's checks, in its order: every record's page first, then IMAGE sizes."""
    cdef uint32_t i
    cdef aur_record_view *r
    if pages_per_pg == 0:
        return BATCH_NO_PAGES
    for i in range(batch.hdr.record_count):
        r = &batch.records[i]
        if r.page_no != NOT_A_PAGE_U32 and r.page_no // pages_per_pg != pg:
            page_no[0] = r.page_no
            return BATCH_FOREIGN_PAGE
    for i in range(batch.hdr.record_count):
        r = &batch.records[i]
        if r.type == AUR_REC_IMAGE and r.payload_length != page_size:
            return BATCH_IMAGE_SIZE
    return BATCH_FITS


def small_batch_check(SmallBatch batch, uint32_t pg, uint32_t pages_per_pg, uint32_t page_size):
    """Segment.check_batch for a SmallBatch: ValueError for a record of a page outside PG
    ``pg``, then for an IMAGE record whose payload is not one page (same order and messages)."""
    cdef uint32_t page_no = 0
    cdef int problem = _small_batch_problem(batch, pg, pages_per_pg, page_size, &page_no)
    if problem == BATCH_NO_PAGES:
        raise ValueError("a PG needs at least one page")
    if problem == BATCH_FOREIGN_PAGE:
        raise ValueError("page %d does not belong to PG %d (%d pages per PG)" % (page_no, pg, pages_per_pg))
    if problem == BATCH_IMAGE_SIZE:
        raise ValueError("an IMAGE record does not match the segment's %d-byte pages" % page_size)


def small_batch_all_fresh(SmallBatch batch, dict records, uint64_t gc_lsn, list truncations):
    """Whether every record of ``batch`` is one the segment should store: above ``gc_lsn``,
    not in ``records`` (LSN -> location), outside every [after, through] range of
    ``truncations`` (after exclusive).  Segment._fresh_rows, answered for the whole batch."""
    return _small_batch_all_fresh(batch, records, gc_lsn, truncations) == 1


cdef int _small_batch_all_fresh(SmallBatch batch, dict records, uint64_t gc_lsn,
                                list truncations) except -1:
    cdef uint32_t i
    cdef aur_record_view *r
    cdef Py_ssize_t t, ranges = len(truncations)
    cdef uint64_t after, through
    for i in range(batch.hdr.record_count):
        r = &batch.records[i]
        if r.lsn <= gc_lsn:
            return 0
        if PyDict_Contains(records, r.lsn):
            return 0
        for t in range(ranges):
            after, through = truncations[t]
            if after < r.lsn <= through:
                return 0
    return 1


def small_batch_index(SmallBatch batch, segment, log, int64_t shift):
    """Segment._index_small for a batch whose records are all fresh (small_batch_all_fresh)
    and were copied to ``log`` at their batch offset + ``shift``.  Updates the segment's
    index (records, page chains, dirty pages, successor links above SCL, max LSN, sorted
    LSNs) and the log file's (lsns, indexed LSN and page columns, max LSN).  Returns the
    number of records indexed (all of them)."""
    return _small_batch_index(batch, segment, log, shift)


cdef Py_ssize_t _small_batch_index(SmallBatch batch, segment, log, int64_t shift) except -1:
    cdef uint32_t i, n = batch.hdr.record_count
    cdef aur_record_view *r
    cdef dict records, chains, successor
    cdef set dirty_pages
    cdef list log_lsns, ordered, chain
    cdef PyObject *found
    cdef uint64_t scl, max_lsn, log_max
    cdef int64_t base
    cdef uint64_t lsns_out[SMALL_BATCH_CAP]
    cdef uint32_t pages_out[SMALL_BATCH_CAP]
    cdef bint is_page
    if n == 0:
        return 0
    if n > SMALL_BATCH_CAP:
        raise ValueError("a SmallBatch of %d records" % n)
    records = segment.records
    chains = segment.page_chains
    successor = segment.successor
    dirty_pages = segment._dirty_pages
    log_lsns = log.lsns
    ordered = segment.sorted_lsns
    scl = segment.scl
    max_lsn = segment.max_lsn
    log_max = log.max_lsn
    base = shift + (<int64_t>log.seq << LOCATION_SEQ_SHIFT_BITS)
    added = []
    for i in range(n):
        r = &batch.records[i]
        lsn = r.lsn
        PyDict_SetItem(records, lsn, <int64_t>r.offset + base)
        PyList_Append(added, lsn)
        lsns_out[i] = r.lsn
        is_page = r.type == AUR_REC_DELTA or r.type == AUR_REC_IMAGE or r.type == AUR_REC_ZERO
        pages_out[i] = r.page_no if is_page else NOT_A_PAGE_U32
        if is_page:
            page = r.page_no
            found = PyDict_GetItem(chains, page)
            if found is NULL:
                PyDict_SetItem(chains, page, [lsn])
            else:
                chain = <list>found
                if PyList_GET_SIZE(chain) == 0 or <object>PyList_GET_ITEM(chain, PyList_GET_SIZE(chain) - 1) < lsn:
                    PyList_Append(chain, lsn)
                else:
                    _bisect_insort(chain, lsn)
            dirty_pages.add(page)
        if r.lsn > max_lsn:
            max_lsn = r.lsn
        if r.lsn > scl:
            PyDict_SetItem(successor, r.prev_lsn_pg, lsn)
    log.indexed_lsns.frombytes((<char *>lsns_out)[:n * sizeof(uint64_t)])
    log.indexed_pages.frombytes((<char *>pages_out)[:n * sizeof(uint32_t)])
    log_lsns.extend(added)
    # LSNs of a batch rise strictly (decode checks it), so the last is the top.
    if batch.records[n - 1].lsn > log_max:
        log.max_lsn = batch.records[n - 1].lsn
    segment.max_lsn = max_lsn
    if PyList_GET_SIZE(ordered) == 0 or <object>PyList_GET_ITEM(ordered, PyList_GET_SIZE(ordered) - 1) < batch.records[0].lsn:
        ordered.extend(added)
    else:
        segment._insert_sorted(added)
    return n


cdef enum:
    LOCATION_OFFSET_MASK_BITS = 40


def apply_log_chain(page, uint64_t page_lsn, list lsns, dict records, dict files_by_seq):
    """Apply the held records ``lsns`` (a slice of one page's chain, ascending) to ``page`` (a
    writable buffer of one page at ``page_lsn``), each read from its log file's mapping and
    fully re-checked (CRC included) first, as Segment._build does in Python.  Returns the
    page's new LSN, or None when anything is not as expected -- an LSN not in ``records``
    (LSN -> log sequence << 40 | offset), a log file not in ``files_by_seq``, a record out of
    bounds, failing a check or not the LSN indexed, a chain that does not apply -- and then
    ``page`` may be partly changed: the caller rebuilds it on the checked Python path, which
    reports exactly what failed.  ValueError if ``page`` is not a page-sized buffer."""
    cdef Py_ssize_t n = len(lsns), i, held = 0
    cdef Py_buffer page_view
    cdef Py_buffer *views = NULL
    cdef uint8_t *types = NULL
    cdef uint64_t *chain_lsns = NULL
    cdef uint64_t *prevs = NULL
    cdef const uint8_t **payloads = NULL
    cdef uint32_t *lengths = NULL
    cdef aur_record_view record
    cdef size_t error_offset = 0
    cdef uint64_t packed, offset, lsn_now = page_lsn
    cdef uint32_t applied = 0
    cdef int rc
    cdef bint ok = True
    PyObject_GetBuffer(page, &page_view, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        _page_size_check(page_view.len, "apply_log_chain")
        if n == 0:
            return page_lsn
        views = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        types = <uint8_t *>PyMem_Malloc(n * sizeof(uint8_t))
        chain_lsns = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        prevs = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        payloads = <const uint8_t **>PyMem_Malloc(n * sizeof(uint8_t *))
        lengths = <uint32_t *>PyMem_Malloc(n * sizeof(uint32_t))
        if (views == NULL or types == NULL or chain_lsns == NULL or prevs == NULL
                or payloads == NULL or lengths == NULL):
            raise MemoryError()
        for i in range(n):
            lsn = lsns[i]
            location = records.get(lsn)
            if location is None:
                ok = False
                break
            packed = location
            log = files_by_seq.get(packed >> LOCATION_OFFSET_MASK_BITS)
            if log is None:
                ok = False
                break
            offset = packed & ((<uint64_t>1 << LOCATION_OFFSET_MASK_BITS) - 1)
            try:
                PyObject_GetBuffer(log.mm, &views[held], PyBUF_SIMPLE)
            except (ValueError, BufferError, TypeError):   # a closed mapping
                ok = False
                break
            held += 1
            if offset >= <uint64_t>views[i].len:
                ok = False
                break
            rc = aur_record_check(<const uint8_t *>views[i].buf + offset, <size_t>views[i].len - offset,
                                  offset, &record, &error_offset)
            if rc != AUR_OK or record.lsn != <uint64_t>lsn:
                ok = False
                break
            types[i] = record.type
            chain_lsns[i] = record.lsn
            prevs[i] = record.prev_lsn_page
            payloads[i] = <const uint8_t *>views[i].buf + offset + AUR_RECORD_HEADER_SIZE
            lengths[i] = record.payload_length
        if not ok:
            return None
        rc = aur_page_apply_chain(<uint8_t *>page_view.buf, <uint32_t>page_view.len, &lsn_now,
                                  <uint32_t>n, types, chain_lsns, prevs, payloads, lengths, &applied)
        if rc != AUR_OK:
            return None
        return lsn_now
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
        PyMem_Free(views)
        PyMem_Free(types)
        PyMem_Free(chain_lsns)
        PyMem_Free(prevs)
        PyMem_Free(payloads)
        PyMem_Free(lengths)
        PyBuffer_Release(&page_view)


cdef extern from "frame.h":
    # The ACK frame's layout, shared with the writer's ACK receiver (csrc/frame.h; the test
    # compares every byte with protocol.encode_frame, which stays the one definition).
    enum:
        AUR_FRAME_HEADER_BYTES
        AUR_FRAME_CRC_START
        AUR_FRAME_LENGTH_MAX
        AUR_FRAME_TYPE_ACK
        AUR_FRAME_ACK_BYTES


cdef inline void _put_u16(uint8_t *out, uint16_t value):
    out[0] = value & 0xFF
    out[1] = value >> 8


cdef inline void _put_u32(uint8_t *out, uint32_t value):
    cdef int i
    for i in range(4):
        out[i] = (value >> (8 * i)) & 0xFF


cdef inline void _put_u64(uint8_t *out, uint64_t value):
    cdef int i
    for i in range(8):
        out[i] = (value >> (8 * i)) & 0xFF


def encode_ack_frame(uint16_t frame_type, uint32_t request_id, uint64_t volume_id, uint64_t volume_epoch,
                     uint64_t membership_epoch, uint32_t pg, uint64_t scl, uint64_t last_lsn):
    """The 64-byte ACK frame, byte for byte what protocol.encode_frame(frame_type,
    ACK_BODY.pack(pg, 0, scl, last_lsn), request_id, volume_id, volume_epoch,
    membership_epoch) returns, built without the Python struct and bytes calls (one per
    APPEND on every node).  Out-of-range fields are OverflowError."""
    cdef uint8_t out[AUR_FRAME_ACK_BYTES]
    _ack_frame_write(out, frame_type, request_id, volume_id, volume_epoch, membership_epoch, pg,
                     scl, last_lsn)
    return PyBytes_FromStringAndSize(<char *>out, AUR_FRAME_ACK_BYTES)


cdef void _ack_frame_write(uint8_t *out, uint16_t frame_type, uint32_t request_id, uint64_t volume_id,
                           uint64_t volume_epoch, uint64_t membership_epoch, uint32_t pg, uint64_t scl,
                           uint64_t last_lsn) noexcept:
    """encode_ack_frame's bytes, written to ``out`` (AUR_FRAME_ACK_BYTES of room)."""
    _put_u32(out, AUR_FRAME_ACK_BYTES)
    _put_u16(out + 4, frame_type)
    _put_u16(out + 6, 0)
    _put_u32(out + 12, request_id)
    _put_u64(out + 16, volume_id)
    _put_u64(out + 24, volume_epoch)
    _put_u64(out + 32, membership_epoch)
    _put_u32(out + 40, pg)
    _put_u32(out + 44, 0)
    _put_u64(out + 48, scl)
    _put_u64(out + 56, last_lsn)
    _put_u32(out + 8, aur_crc_mask(aur_crc32c(0, out + AUR_FRAME_CRC_START,
                                              AUR_FRAME_ACK_BYTES - AUR_FRAME_CRC_START)))

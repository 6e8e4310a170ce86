# Page delta, apply and coalesce (csrc/page.h): typed wrappers, GIL released around chains and
# large pages, errors through raise_status.  Semantics: docs/page-operations.md.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "format.h" nogil:
    # Aliased: other units may declare the same constants.
    unsigned int _page_AUR_REC_DELTA "AUR_REC_DELTA"
    unsigned int _page_AUR_REC_IMAGE "AUR_REC_IMAGE"
    unsigned int _page_AUR_REC_ZERO "AUR_REC_ZERO"
    unsigned int _page_AUR_DELTA_RUN_HEADER_SIZE "AUR_DELTA_RUN_HEADER_SIZE"
    unsigned int _page_AUR_DELTA_RUN_LENGTH_MAX "AUR_DELTA_RUN_LENGTH_MAX"
    unsigned long long _page_AUR_LSN_MAX "AUR_LSN_MAX"

cdef extern from "page.h" nogil:
    size_t AUR_PAGE_DELTA_MAX(uint32_t page_size)
    size_t AUR_PAGE_COALESCE_WORKSPACE_SIZE(uint32_t page_size)
    const char *aur_page_kernel_init()
    const char *aur_page_kernel()
    uint32_t aur_page_kernels_available(const char **names, uint32_t cap)
    int aur_page_set_kernel(const char *name)
    int aur_page_delta(const uint8_t *old_page, const uint8_t *new_page, uint32_t page_size,
                       uint8_t *out, size_t cap, size_t *written)
    int aur_page_encode_change(const uint8_t *old_page, const uint8_t *new_page,
                               uint32_t page_size, uint8_t *out, size_t cap, uint8_t *type,
                               size_t *written)
    int aur_page_check(uint32_t page_size, uint8_t type, const uint8_t *payload,
                       uint32_t payload_length, uint32_t *error_offset)
    int aur_page_apply(uint8_t *page, uint32_t page_size, uint8_t type, const uint8_t *payload,
                       uint32_t payload_length)
    int aur_page_apply_chain(uint8_t *page, uint32_t page_size, uint64_t *page_lsn,
                             uint32_t count, const uint8_t *types, const uint64_t *lsns,
                             const uint64_t *prev_lsn_page, const uint8_t **payloads,
                             const uint32_t *payload_lengths, uint32_t *applied)
    int aur_page_apply_chain_buf(uint8_t *page, uint32_t page_size, uint64_t *page_lsn,
                                 uint32_t count, const uint8_t *types, const uint64_t *lsns,
                                 const uint64_t *prev_lsn_page, const uint8_t *buf,
                                 size_t buf_len, const uint64_t *payload_offsets,
                                 const uint32_t *payload_lengths, uint32_t *applied)
    int aur_page_coalesce(uint32_t page_size, uint32_t count, const uint8_t *types,
                          const uint8_t **payloads, const uint32_t *payload_lengths,
                          void *workspace, size_t workspace_size, uint8_t *out, size_t cap,
                          uint8_t *type, size_t *written, uint32_t *error_index)
    int aur_page_coalesce_buf(uint32_t page_size, uint32_t count, const uint8_t *types,
                              const uint8_t *buf, size_t buf_len,
                              const uint64_t *payload_offsets, const uint32_t *payload_lengths,
                              void *workspace, size_t workspace_size, uint8_t *out, size_t cap,
                              uint8_t *type, size_t *written, uint32_t *error_index)

cdef enum:
    # Pages of at least this many bytes are diffed / applied without the GIL; below it,
    # releasing and retaking the GIL costs more than the work.
    PAGE_RELEASE_GIL_BYTES = 32768
    # Chains of at least this many records are applied / coalesced without the GIL.
    PAGE_RELEASE_GIL_RECORDS = 16
    # Output and workspace for pages up to this size live on the C stack.
    PAGE_STACK_BYTES = 4096
    PAGE_STACK_OUT_BYTES = 4096 + 8
    # Chains up to this many records keep their payload pointers inside _PagePayloads.
    PAGE_SMALL_CHAIN_RECORDS = 32
    # (4096 / 64 bitmap words + 4096 / 8 page words) 64-bit words of coalesce workspace.
    PAGE_STACK_WORKSPACE_WORDS = 64 + 512

REC_DELTA = _page_AUR_REC_DELTA
REC_IMAGE = _page_AUR_REC_IMAGE
REC_ZERO = _page_AUR_REC_ZERO
DELTA_RUN_HEADER_SIZE = _page_AUR_DELTA_RUN_HEADER_SIZE
DELTA_RUN_LENGTH_MAX = _page_AUR_DELTA_RUN_LENGTH_MAX
LSN_MAX = _page_AUR_LSN_MAX

page_kernel_default = aur_page_kernel_init().decode()

_PAGE_TYPE_NAMES = {_page_AUR_REC_DELTA: "DELTA", _page_AUR_REC_IMAGE: "IMAGE",
                    _page_AUR_REC_ZERO: "ZERO"}


def page_kernel():
    """Name of the byte-comparison kernel in use: "avx2", "sse2" or "portable"."""
    return aur_page_kernel().decode()


def page_kernels():
    """Kernels this CPU can run, best first."""
    cdef const char *names[8]
    cdef uint32_t count = aur_page_kernels_available(names, 8)
    return tuple(names[i].decode() for i in range(min(count, 8)))


def _page_set_kernel(str name):
    """Force a kernel (tests and benchmarks only; not while other threads compute deltas).
    AURORA_SIMD=<name> in the environment does the same at import."""
    if aur_page_set_kernel(name.encode()) != AUR_OK:
        raise ValueError("page kernel %r is unknown or not supported by this CPU; available: %s"
                         % (name, ", ".join(page_kernels())))


cdef inline str _page_type_name(int t):
    return _PAGE_TYPE_NAMES.get(t, "type %d" % t)


cdef int _page_size_check(Py_ssize_t size, str what) except -1:
    if size < AUR_PAGE_SIZE_MIN or size > AUR_PAGE_SIZE_MAX:
        raise ValueError("%s: a page is %d bytes; page sizes are %d to %d bytes"
                         % (what, size, AUR_PAGE_SIZE_MIN, AUR_PAGE_SIZE_MAX))
    return 0


cdef int _page_raise(int code, str context, object offset, dict attributes) except -1:
    """raise_status, then attach ``attributes`` (index, lsn, page_lsn, applied) to the error."""
    try:
        raise_status(code, context, offset)
    except BaseException as error:
        for key, value in attributes.items():
            setattr(error, key, value)
        raise
    return -1


def page_delta(old_page, new_page):
    """Canonical delta payload (bytes) turning ``old_page`` into ``new_page`` (equal-sized
    buffers of 512..65536 bytes); empty when they are identical."""
    cdef Py_buffer a, b
    cdef uint8_t stack_out[PAGE_STACK_OUT_BYTES]
    cdef uint8_t *out = stack_out
    cdef size_t written = 0
    cdef int rc
    cdef uint32_t n
    PyObject_GetBuffer(old_page, &a, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(new_page, &b, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if a.len != b.len:
                raise ValueError("page_delta: old page is %d bytes, new page %d; they must be "
                                 "the same size" % (a.len, b.len))
            _page_size_check(a.len, "page_delta")
            n = <uint32_t>a.len
            if AUR_PAGE_DELTA_MAX(n) > PAGE_STACK_OUT_BYTES:
                out = <uint8_t *>PyMem_Malloc(AUR_PAGE_DELTA_MAX(n))
                if out == NULL:
                    raise MemoryError()
            if n >= PAGE_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_page_delta(<const uint8_t *>a.buf, <const uint8_t *>b.buf, n, out,
                                        AUR_PAGE_DELTA_MAX(n), &written)
            else:
                rc = aur_page_delta(<const uint8_t *>a.buf, <const uint8_t *>b.buf, n, out,
                                    AUR_PAGE_DELTA_MAX(n), &written)
            if rc != AUR_OK:
                raise_status(rc, "page_delta of a %d-byte page" % n)
            return PyBytes_FromStringAndSize(<char *>out, <Py_ssize_t>written)
        finally:
            if out != stack_out:
                PyMem_Free(out)
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&a)


def encode_change(old_page, new_page):
    """(type, payload) of the smallest record turning ``old_page`` into ``new_page``:
    (REC_ZERO, b"") if the new page is all zero, else (REC_DELTA, delta) if the delta is
    shorter than a page (b"" when the pages are identical), else (REC_IMAGE, new page)."""
    cdef Py_buffer a, b
    cdef uint8_t stack_out[PAGE_STACK_OUT_BYTES]
    cdef uint8_t *out = stack_out
    cdef size_t written = 0
    cdef uint8_t record_type = 0
    cdef int rc
    cdef uint32_t n
    PyObject_GetBuffer(old_page, &a, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(new_page, &b, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if a.len != b.len:
                raise ValueError("encode_change: old page is %d bytes, new page %d; they must "
                                 "be the same size" % (a.len, b.len))
            _page_size_check(a.len, "encode_change")
            n = <uint32_t>a.len
            if n > PAGE_STACK_OUT_BYTES:
                out = <uint8_t *>PyMem_Malloc(n)
                if out == NULL:
                    raise MemoryError()
            if n >= PAGE_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_page_encode_change(<const uint8_t *>a.buf, <const uint8_t *>b.buf,
                                                n, out, n, &record_type, &written)
            else:
                rc = aur_page_encode_change(<const uint8_t *>a.buf, <const uint8_t *>b.buf, n,
                                            out, n, &record_type, &written)
            if rc != AUR_OK:
                raise_status(rc, "encode_change of a %d-byte page" % n)
            return (record_type, PyBytes_FromStringAndSize(<char *>out, <Py_ssize_t>written))
        finally:
            if out != stack_out:
                PyMem_Free(out)
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&a)


def apply(page, int type, payload):
    """Apply one DELTA / IMAGE / ZERO record to ``page`` (a writable buffer) in place.
    The payload is validated completely first: on any error the page is untouched."""
    cdef Py_buffer p, q
    cdef int rc
    cdef uint32_t n, error_offset = 0
    if type < 0 or type > 255:
        raise_status(AUR_E_TYPE, "apply record of type %d" % type)
    PyObject_GetBuffer(page, &p, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        _page_size_check(p.len, "apply")
        n = <uint32_t>p.len
        PyObject_GetBuffer(payload, &q, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if q.len > 0xFFFFFFFF:
                raise_status(AUR_E_LENGTH, "apply: %d-byte payload" % q.len)
            if n >= PAGE_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_page_apply(<uint8_t *>p.buf, n, <uint8_t>type,
                                        <const uint8_t *>q.buf, <uint32_t>q.len)
            else:
                rc = aur_page_apply(<uint8_t *>p.buf, n, <uint8_t>type, <const uint8_t *>q.buf,
                                    <uint32_t>q.len)
            if rc != AUR_OK:
                aur_page_check(n, <uint8_t>type, <const uint8_t *>q.buf, <uint32_t>q.len,
                               &error_offset)
                raise_status(rc, "apply %s record (%d-byte payload) to a %d-byte page"
                             % (_page_type_name(type), q.len, n), error_offset)
        finally:
            PyBuffer_Release(&q)
    finally:
        PyBuffer_Release(&p)


cdef class _PagePayloads:
    """Pointers and lengths of a sequence of payload buffers, held for one native call.

    bytes objects are read directly (kept alive by the tuple this holds); any other buffer is
    acquired with the buffer protocol and released by close().  The sequence is copied to a
    tuple, so another thread mutating the caller's list while the GIL is released is harmless."""
    cdef tuple items
    cdef const uint8_t **pointers
    cdef uint32_t *lengths
    # Short chains (the common case) need no allocation.
    cdef const uint8_t *small_pointers[PAGE_SMALL_CHAIN_RECORDS]
    cdef uint32_t small_lengths[PAGE_SMALL_CHAIN_RECORDS]
    cdef Py_buffer *views
    cdef Py_ssize_t count, view_count
    cdef uint64_t total_length

    def __cinit__(self, payloads):
        cdef Py_ssize_t i
        cdef object item
        self.items = payloads if type(payloads) is tuple else tuple(payloads)
        self.count = len(self.items)
        if self.count <= PAGE_SMALL_CHAIN_RECORDS:
            self.pointers = self.small_pointers
            self.lengths = self.small_lengths
        else:
            self.pointers = <const uint8_t **>PyMem_Malloc(self.count * sizeof(uint8_t *))
            self.lengths = <uint32_t *>PyMem_Malloc(self.count * sizeof(uint32_t))
            if self.pointers == NULL or self.lengths == NULL:
                raise MemoryError()
        for i in range(self.count):
            item = self.items[i]
            if PyBytes_CheckExact(item):
                self.pointers[i] = <const uint8_t *>PyBytes_AS_STRING(item)
                self._set_length(i, PyBytes_GET_SIZE(item))
            else:
                if self.views == NULL:
                    self.views = <Py_buffer *>PyMem_Malloc(self.count * sizeof(Py_buffer))
                    if self.views == NULL:
                        raise MemoryError()
                PyObject_GetBuffer(item, &self.views[self.view_count],
                                   PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
                self.view_count += 1
                self.pointers[i] = <const uint8_t *>self.views[self.view_count - 1].buf
                self._set_length(i, self.views[self.view_count - 1].len)

    cdef int _set_length(self, Py_ssize_t i, Py_ssize_t length) except -1:
        if length > 0xFFFFFFFF:
            raise_status(AUR_E_LENGTH, "payload %d is %d bytes" % (i, length))
        self.lengths[i] = <uint32_t>length
        self.total_length += <uint64_t>length
        return 0

    cdef void close(self):
        cdef Py_ssize_t i
        for i in range(self.view_count):
            PyBuffer_Release(&self.views[i])
        self.view_count = 0

    def __dealloc__(self):
        self.close()
        if self.pointers != self.small_pointers:
            PyMem_Free(self.pointers)
            PyMem_Free(self.lengths)
        PyMem_Free(self.views)


cdef inline bint _page_payload_error(int rc):
    return rc == AUR_E_TRUNCATED or rc == AUR_E_LENGTH or rc == AUR_E_RANGE or rc == AUR_E_TYPE


cdef object _chain_error(int rc, str function, Py_ssize_t index, uint64_t page_lsn_before,
                         uint64_t page_lsn, uint32_t applied, int record_type, uint64_t lsn,
                         uint64_t prev_lsn, object offset):
    context = ("%s: record %d (%s, LSN %d, prev_lsn_page %d) on the page at LSN %d "
               "(%d records applied, page LSN was %d)"
               % (function, index, _page_type_name(record_type), lsn, prev_lsn, page_lsn,
                  applied, page_lsn_before))
    _page_raise(rc, context, offset, {"index": index, "lsn": lsn, "page_lsn": page_lsn,
                                      "applied": applied})


cdef int _chain_lengths(str function, Py_ssize_t n, Py_ssize_t lsns_len, Py_ssize_t prevs_len,
                        Py_ssize_t payloads_len) except -1:
    if not (n == lsns_len == prevs_len == payloads_len):
        raise ValueError("%s: types, lsns, prev_lsn_page and payloads must have one entry per "
                         "record; got %d, %d, %d and %d" % (function, n, lsns_len, prevs_len,
                                                            payloads_len))
    if n > 0x7FFFFFFF:
        raise ValueError("%s: %d records in one call; at most 2**31 - 1" % (function, n))
    return 0


cdef object _numpy = None


cdef object _np_array(object values, str dtype):
    global _numpy
    if _numpy is None:
        import numpy
        _numpy = numpy
    array = _numpy.ascontiguousarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError("expected a one-dimensional array of %s, got shape %r"
                         % (dtype, array.shape))
    return array


# Arrays in: a contiguous buffer of the right item type (numpy array, bytes for uint8, array
# module) is used as is, without a copy; anything else goes through numpy.ascontiguousarray.
cdef const uint8_t[::1] _as_u8(object values):
    cdef const uint8_t[::1] view
    try:
        view = values
    except (TypeError, ValueError, BufferError):
        view = _np_array(values, "uint8")
    return view


cdef const uint32_t[::1] _as_u32(object values):
    cdef const uint32_t[::1] view
    try:
        view = values
    except (TypeError, ValueError, BufferError):
        view = _np_array(values, "uint32")
    return view


cdef const uint64_t[::1] _as_u64(object values):
    cdef const uint64_t[::1] view
    try:
        view = values
    except (TypeError, ValueError, BufferError):
        view = _np_array(values, "uint64")
    return view


def apply_chain(page, uint64_t page_lsn, types, lsns, prev_lsn_page, payloads):
    """Apply one page's chain of records in order to ``page`` (a writable buffer) whose LSN is
    ``page_lsn``; returns the page's new LSN.

    ``types`` (uint8), ``lsns`` and ``prev_lsn_page`` (uint64) are arrays (numpy, bytes or
    sequences); ``payloads`` a sequence of buffers.  Record i needs lsns[i] > the page's LSN
    (else OrderError) and prev_lsn_page[i] == the page's LSN (else ChainGapError).  Each record
    is atomic, the chain is not: the error carries ``index`` (the failing record), ``lsn``,
    ``applied`` (records applied before it) and ``page_lsn`` (the page's LSN now)."""
    cdef Py_buffer p
    cdef const uint8_t[::1] types_view
    cdef const uint64_t[::1] lsns_view, prevs_view
    cdef _PagePayloads held
    cdef uint64_t lsn_now = page_lsn
    cdef uint32_t applied = 0, n, count, error_offset = 0
    cdef int rc
    types_view = _as_u8(types)
    lsns_view = _as_u64(lsns)
    prevs_view = _as_u64(prev_lsn_page)
    held = _PagePayloads(payloads)
    try:
        _chain_lengths("apply_chain", types_view.shape[0], lsns_view.shape[0],
                       prevs_view.shape[0], held.count)
        count = <uint32_t>held.count
        PyObject_GetBuffer(page, &p, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
        try:
            _page_size_check(p.len, "apply_chain")
            n = <uint32_t>p.len
            if count == 0:
                return page_lsn
            if count >= PAGE_RELEASE_GIL_RECORDS or n >= PAGE_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_page_apply_chain(<uint8_t *>p.buf, n, &lsn_now, count,
                                              &types_view[0], &lsns_view[0], &prevs_view[0],
                                              held.pointers, held.lengths, &applied)
            else:
                rc = aur_page_apply_chain(<uint8_t *>p.buf, n, &lsn_now, count, &types_view[0],
                                          &lsns_view[0], &prevs_view[0], held.pointers,
                                          held.lengths, &applied)
            if rc != AUR_OK:
                offset = None
                if _page_payload_error(rc) and aur_page_check(
                        n, types_view[applied], held.pointers[applied], held.lengths[applied],
                        &error_offset) != AUR_OK:
                    offset = error_offset
                _chain_error(rc, "apply_chain", applied, page_lsn, lsn_now, applied,
                             types_view[applied], lsns_view[applied], prevs_view[applied],
                             offset)
            return lsn_now
        finally:
            PyBuffer_Release(&p)
    finally:
        held.close()


def apply_chain_buf(page, uint64_t page_lsn, buf, types, lsns, prev_lsn_page, payload_offsets,
                    payload_lengths):
    """apply_chain with the payloads in one buffer ``buf`` (e.g. an mmap'd log): record i's
    payload is buf[payload_offsets[i] : payload_offsets[i] + payload_lengths[i]].
    ``payload_offsets`` is a uint64 array, ``payload_lengths`` uint32.  A payload outside
    ``buf`` raises RangeError; error offsets are offsets in ``buf``."""
    cdef Py_buffer p, b
    cdef const uint8_t[::1] types_view
    cdef const uint64_t[::1] lsns_view, prevs_view, offsets_view
    cdef const uint32_t[::1] lengths_view
    cdef uint64_t lsn_now = page_lsn
    cdef uint32_t applied = 0, n, count, error_offset = 0
    cdef int rc
    types_view = _as_u8(types)
    lsns_view = _as_u64(lsns)
    prevs_view = _as_u64(prev_lsn_page)
    offsets_view = _as_u64(payload_offsets)
    lengths_view = _as_u32(payload_lengths)
    _chain_lengths("apply_chain_buf", types_view.shape[0], lsns_view.shape[0],
                   prevs_view.shape[0], offsets_view.shape[0])
    _chain_lengths("apply_chain_buf", types_view.shape[0], lsns_view.shape[0],
                   prevs_view.shape[0], lengths_view.shape[0])
    count = <uint32_t>types_view.shape[0]
    PyObject_GetBuffer(page, &p, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        _page_size_check(p.len, "apply_chain_buf")
        n = <uint32_t>p.len
        if count == 0:
            return page_lsn
        PyObject_GetBuffer(buf, &b, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if count >= PAGE_RELEASE_GIL_RECORDS or n >= PAGE_RELEASE_GIL_BYTES:
                with nogil:
                    rc = aur_page_apply_chain_buf(<uint8_t *>p.buf, n, &lsn_now, count,
                                                  &types_view[0], &lsns_view[0], &prevs_view[0],
                                                  <const uint8_t *>b.buf, <size_t>b.len,
                                                  &offsets_view[0], &lengths_view[0], &applied)
            else:
                rc = aur_page_apply_chain_buf(<uint8_t *>p.buf, n, &lsn_now, count,
                                              &types_view[0], &lsns_view[0], &prevs_view[0],
                                              <const uint8_t *>b.buf, <size_t>b.len,
                                              &offsets_view[0], &lengths_view[0], &applied)
            if rc != AUR_OK:
                # Error offsets are offsets in buf: of the payload if it lies outside buf,
                # else of the problem inside it.
                offset = None
                if _page_payload_error(rc):
                    if offsets_view[applied] > <uint64_t>b.len or \
                            <uint64_t>b.len - offsets_view[applied] < lengths_view[applied]:
                        offset = offsets_view[applied]
                    elif aur_page_check(n, types_view[applied],
                                        <const uint8_t *>b.buf + offsets_view[applied],
                                        lengths_view[applied], &error_offset) != AUR_OK:
                        offset = offsets_view[applied] + error_offset
                _chain_error(rc, "apply_chain_buf", applied, page_lsn, lsn_now, applied,
                             types_view[applied], lsns_view[applied], prevs_view[applied],
                             offset)
            return lsn_now
        finally:
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&p)


cdef object _coalesce_result(int rc, str function, uint32_t page_size, uint8_t record_type,
                             uint8_t *out, size_t written, uint32_t error_index,
                             const uint8_t *types):
    if rc != AUR_OK:
        _page_raise(rc, "%s: record %d (%s) of a chain for a %d-byte page"
                    % (function, error_index, _page_type_name(types[error_index]), page_size),
                    None, {"index": error_index})
    return (record_type, PyBytes_FromStringAndSize(<char *>out, <Py_ssize_t>written))


def coalesce(uint32_t page_size, types, payloads):
    """(type, payload) of one record equivalent to applying the chain ``types``/``payloads``
    in order, on any base page of ``page_size`` bytes: an IMAGE or ZERO if the chain holds an
    IMAGE or ZERO or its DELTAs cover the whole page, else a DELTA of the union of the bytes the
    DELTAs write, each byte from the last record that wrote it."""
    cdef const uint8_t[::1] types_view
    cdef _PagePayloads held
    cdef uint64_t stack_workspace[PAGE_STACK_WORKSPACE_WORDS]
    cdef uint8_t stack_out[PAGE_STACK_OUT_BYTES]
    cdef uint8_t *out = stack_out
    cdef void *workspace = NULL
    cdef size_t cap, written = 0, workspace_size = 0
    cdef uint8_t record_type = 0
    cdef uint32_t count, error_index = 0
    cdef const uint8_t *types_pointer = NULL
    cdef int rc
    cdef Py_ssize_t types_count
    _page_size_check(page_size, "coalesce")
    if PyBytes_CheckExact(types):  # the common case, without a memoryview
        types_pointer = <const uint8_t *>PyBytes_AS_STRING(types)
        types_count = PyBytes_GET_SIZE(types)
    else:
        types_view = _as_u8(types)
        types_count = types_view.shape[0]
        if types_count:
            types_pointer = &types_view[0]
    held = _PagePayloads(payloads)
    try:
        if types_count != held.count or held.count > 0x7FFFFFFF:
            raise ValueError("coalesce: %d types for %d payloads" % (types_count, held.count))
        count = <uint32_t>held.count
        cap = <size_t>max(<uint64_t>page_size, held.total_length)
        if cap > PAGE_STACK_OUT_BYTES:
            out = <uint8_t *>PyMem_Malloc(cap)
            if out == NULL:
                raise MemoryError()
        if page_size <= PAGE_STACK_BYTES:
            workspace = stack_workspace
            workspace_size = sizeof(stack_workspace)
        if count >= PAGE_RELEASE_GIL_RECORDS or page_size >= PAGE_RELEASE_GIL_BYTES:
            with nogil:
                rc = aur_page_coalesce(page_size, count, types_pointer, held.pointers,
                                       held.lengths, workspace, workspace_size, out, cap,
                                       &record_type, &written, &error_index)
        else:
            rc = aur_page_coalesce(page_size, count, types_pointer, held.pointers, held.lengths,
                                   workspace, workspace_size, out, cap, &record_type, &written,
                                   &error_index)
        return _coalesce_result(rc, "coalesce", page_size, record_type, out, written,
                                error_index, types_pointer)
    finally:
        if out != stack_out:
            PyMem_Free(out)
        held.close()


def coalesce_buf(uint32_t page_size, buf, types, payload_offsets, payload_lengths):
    """coalesce with the payloads in one buffer (see apply_chain_buf)."""
    cdef Py_buffer b
    cdef const uint8_t[::1] types_view
    cdef const uint64_t[::1] offsets_view
    cdef const uint32_t[::1] lengths_view
    cdef uint64_t stack_workspace[PAGE_STACK_WORKSPACE_WORDS]
    cdef uint8_t stack_out[PAGE_STACK_OUT_BYTES]
    cdef uint8_t *out = stack_out
    cdef void *workspace = NULL
    cdef size_t cap, written = 0, workspace_size = 0
    cdef uint8_t record_type = 0
    cdef uint32_t count, error_index = 0
    cdef int rc
    cdef Py_ssize_t i
    cdef uint64_t total = 0
    _page_size_check(page_size, "coalesce_buf")
    types_view = _as_u8(types)
    offsets_view = _as_u64(payload_offsets)
    lengths_view = _as_u32(payload_lengths)
    if not (types_view.shape[0] == offsets_view.shape[0] == lengths_view.shape[0]) \
            or types_view.shape[0] > 0x7FFFFFFF:
        raise ValueError("coalesce_buf: %d types, %d offsets and %d lengths; one per record"
                         % (types_view.shape[0], offsets_view.shape[0], lengths_view.shape[0]))
    count = <uint32_t>types_view.shape[0]
    if count == 0:
        return (REC_DELTA, b"")
    for i in range(count):
        total += lengths_view[i]
    PyObject_GetBuffer(buf, &b, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        cap = <size_t>max(<uint64_t>page_size, total)
        if cap > PAGE_STACK_OUT_BYTES:
            out = <uint8_t *>PyMem_Malloc(cap)
            if out == NULL:
                raise MemoryError()
        if page_size <= PAGE_STACK_BYTES:
            workspace = stack_workspace
            workspace_size = sizeof(stack_workspace)
        if count >= PAGE_RELEASE_GIL_RECORDS or page_size >= PAGE_RELEASE_GIL_BYTES:
            with nogil:
                rc = aur_page_coalesce_buf(page_size, count, &types_view[0],
                                           <const uint8_t *>b.buf, <size_t>b.len,
                                           &offsets_view[0], &lengths_view[0], workspace,
                                           workspace_size, out, cap, &record_type, &written,
                                           &error_index)
        else:
            rc = aur_page_coalesce_buf(page_size, count, &types_view[0], <const uint8_t *>b.buf,
                                       <size_t>b.len, &offsets_view[0], &lengths_view[0],
                                       workspace, workspace_size, out, cap, &record_type,
                                       &written, &error_index)
        return _coalesce_result(rc, "coalesce_buf", page_size, record_type, out, written,
                                error_index, &types_view[0])
    finally:
        if out != stack_out:
            PyMem_Free(out)
        PyBuffer_Release(&b)


def _page_bench_delta(old_page, new_page, unsigned int iterations):
    """Benchmark helper: compute the delta ``iterations`` times in C, without the GIL and
    without the Python call overhead; returns the last delta."""
    cdef Py_buffer a, b
    cdef uint8_t out[65536 + 8]
    cdef size_t written = 0
    cdef unsigned int i
    cdef int rc = AUR_OK
    PyObject_GetBuffer(old_page, &a, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(new_page, &b, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
        try:
            if a.len != b.len:
                raise ValueError("_page_bench_delta: pages of different sizes")
            _page_size_check(a.len, "_page_bench_delta")
            with nogil:
                for i in range(iterations):
                    rc = aur_page_delta(<const uint8_t *>a.buf, <const uint8_t *>b.buf,
                                        <uint32_t>a.len, out, sizeof(out), &written)
                    if rc != AUR_OK:
                        break
            if rc != AUR_OK:
                raise_status(rc, "_page_bench_delta")
            return PyBytes_FromStringAndSize(<char *>out, <Py_ssize_t>written)
        finally:
            PyBuffer_Release(&b)
    finally:
        PyBuffer_Release(&a)

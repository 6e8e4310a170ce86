# The writer's ACK receive path without the GIL (csrc/acks.h): the receiver thread waits on
# every member connection in C, feeds each ACK's SCL to the quorum tracker there, and comes back
# to Python only for rare events and, once per return, the bookkeeping of the ACKs it handled.

import os as _acks_os
from libc.errno cimport errno

cdef extern from "acks.h" nogil:
    unsigned int AUR_ACKS_LINKS_MAX
    unsigned int AUR_ACKS_BUFFER_BYTES
    unsigned int AUR_ACKS_COMPLETED_MAX
    ctypedef struct aur_ack:
        uint32_t link
        uint32_t request_id
        uint32_t pg
        uint32_t member
        uint64_t scl
        uint64_t last_lsn
    enum:
        AUR_ACKS_STOP_MORE
        AUR_ACKS_STOP_OTHER
        AUR_ACKS_STOP_FULL
    enum:
        AUR_ACKS_EVENT_TIMEOUT
        AUR_ACKS_EVENT_WAKE
        AUR_ACKS_EVENT_WINDOW
        AUR_ACKS_EVENT_FULL
        AUR_ACKS_EVENT_PYTHON
        AUR_ACKS_EVENT_BAD
        AUR_ACKS_EVENT_CLOSED
    ctypedef struct aur_acks_event:
        int kind
        uint32_t link
        int code
        uint64_t offset
    ctypedef struct aur_acks:
        pass
    int aur_acks_parse(const uint8_t *data, size_t len, aur_ack *acks, uint32_t acks_max,
                       uint32_t *ack_count, size_t *consumed, int *stop)
    aur_acks *aur_acks_new(uint32_t links)
    void aur_acks_free(aur_acks *rx)
    int aur_acks_set_link(aur_acks *rx, uint32_t link, int fd, int python)
    void aur_acks_clear_members(aur_acks *rx)
    int aur_acks_set_member(aur_acks *rx, uint32_t link, uint32_t pg, uint32_t member)
    void aur_acks_set_held(aur_acks *rx, int held)
    const uint8_t *aur_acks_buffer(aur_acks *rx, uint32_t link, size_t *len)
    void aur_acks_drop_buffer(aur_acks *rx, uint32_t link)
    const aur_ack *aur_acks_completed(aur_acks *rx, uint32_t *count)
    void aur_acks_clear_completed(aur_acks *rx)
    int aur_acks_run(aur_acks *rx, aur_quorum *q, int wake_fd, int timeout_ms,
                     aur_acks_event *event)

FRAME_ACK_BYTES = AUR_FRAME_ACK_BYTES
FRAME_HEADER_BYTES = AUR_FRAME_HEADER_BYTES
FRAME_CRC_START = AUR_FRAME_CRC_START
FRAME_LENGTH_MAX = AUR_FRAME_LENGTH_MAX
FRAME_TYPE_ACK = AUR_FRAME_TYPE_ACK
ACKS_LINKS_MAX = AUR_ACKS_LINKS_MAX
ACKS_BUFFER_BYTES = AUR_ACKS_BUFFER_BYTES
ACKS_COMPLETED_MAX = AUR_ACKS_COMPLETED_MAX
ACKS_STOP_MORE = AUR_ACKS_STOP_MORE
ACKS_STOP_OTHER = AUR_ACKS_STOP_OTHER
ACKS_STOP_FULL = AUR_ACKS_STOP_FULL
ACKS_EVENT_TIMEOUT = AUR_ACKS_EVENT_TIMEOUT
ACKS_EVENT_WAKE = AUR_ACKS_EVENT_WAKE
ACKS_EVENT_WINDOW = AUR_ACKS_EVENT_WINDOW
ACKS_EVENT_FULL = AUR_ACKS_EVENT_FULL
ACKS_EVENT_PYTHON = AUR_ACKS_EVENT_PYTHON
ACKS_EVENT_BAD = AUR_ACKS_EVENT_BAD
ACKS_EVENT_CLOSED = AUR_ACKS_EVENT_CLOSED

# Longest single wait of AckReceiver.run; a longer timeout is cut to it.
cdef enum:
    ACKS_RUN_TIMEOUT_MS_MAX = 3600 * 1000


def parse_acks(data):
    """Parse the consecutive whole ACK frames at the start of ``data`` (bytes-like): returns
    (acks, consumed, stop) where acks is a list of (request_id, pg, scl, last_lsn), consumed
    the bytes they took and stop one of ACKS_STOP_MORE (the rest is a partial frame),
    ACKS_STOP_OTHER (a frame of another type starts at consumed) or ACKS_STOP_FULL.  A
    malformed frame raises the FormatError subclass of its fault with its offset."""
    cdef Py_buffer view
    cdef aur_ack acks[256]
    cdef uint32_t count = 0
    cdef size_t consumed = 0, at = 0
    cdef int stop = AUR_ACKS_STOP_MORE
    cdef int rc = AUR_OK
    cdef uint32_t i
    out = []
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE | PyBUF_ANY_CONTIGUOUS)
    try:
        # 256 at a time; bounded by the buffer's length over the 64 bytes of an ACK.
        while True:
            rc = aur_acks_parse(<const uint8_t *>view.buf + at, <size_t>view.len - at, acks, 256,
                                &count, &consumed, &stop)
            for i in range(count):
                out.append((acks[i].request_id, acks[i].pg, acks[i].scl, acks[i].last_lsn))
            at += consumed
            if rc != AUR_OK or stop != AUR_ACKS_STOP_FULL:
                break
    finally:
        PyBuffer_Release(&view)
    if rc != AUR_OK:
        raise_status(rc, "parse_acks: malformed frame after %d ACKs" % len(out), at)
    return out, at, stop


def acks_error(int code, str context, offset=None):
    """The exception (not raised) that status ``code`` maps to, for an event of
    AckReceiver.run that carries one (ACKS_EVENT_BAD)."""
    try:
        raise_status(code, context, offset)
    except Exception as exc:
        return exc
    return None


cdef class AckReceiver:
    """Waits on up to ACKS_LINKS_MAX member connections at once with the GIL released,
    feeding every ACK frame's SCL to ``tracker`` as the member ``set_member`` named for that
    (connection, PG).  ``run`` returns an event (kind, link, code, offset) for what needs Python:
    ACKS_EVENT_PYTHON (a frame that is not an ACK, or an ACK for an unknown (link, PG), is at
    the front of ``take_buffer(link)``; or a link set with python=True is readable),
    ACKS_EVENT_BAD (a malformed frame; code is the status, offset where it starts in the
    connection), ACKS_EVENT_CLOSED (code: errno, 0 at EOF), ACKS_EVENT_WAKE (``wake_fd`` is
    readable), ACKS_EVENT_WINDOW (while held, an ACK advanced a PGCL), ACKS_EVENT_FULL and
    ACKS_EVENT_TIMEOUT.  ``completed()`` lists the ACKs handled since it was last called.

    One thread uses it, except ``set_held``, which any thread may call.  The caller keeps
    every descriptor given to ``set_link`` open until it replaces or unsets it."""

    cdef aur_acks *_rx
    cdef QuorumTracker _tracker
    cdef uint32_t _links

    def __init__(self, uint32_t links, QuorumTracker tracker not None):
        tracker._check()
        if links == 0 or links > AUR_ACKS_LINKS_MAX:
            raise ValueError("AckReceiver: %d links; 1 to %d" % (links, AUR_ACKS_LINKS_MAX))
        cdef aur_acks *rx = aur_acks_new(links)
        if rx == NULL:
            raise MemoryError("AckReceiver: out of memory")
        if self._rx != NULL:
            aur_acks_free(self._rx)
        self._rx = rx
        self._tracker = tracker
        self._links = links

    def __dealloc__(self):
        if self._rx != NULL:
            aur_acks_free(self._rx)
            self._rx = NULL

    cdef inline int _check(self, uint32_t link) except -1:
        if self._rx == NULL:
            raise RuntimeError("AckReceiver.__init__ was not called")
        if link >= self._links:
            raise ValueError("AckReceiver: link %d; it serves links 0 to %d" % (link, self._links - 1))
        return 0

    def set_link(self, uint32_t link, int fd, bint python=False):
        """Read link ``link`` from descriptor ``fd`` (-1: none) from now on; its buffered
        bytes are dropped.  python=True: the caller reads it (run reports it readable)."""
        self._check(link)
        if fd < -1:
            raise ValueError("AckReceiver.set_link: descriptor %d" % fd)
        cdef int rc = aur_acks_set_link(self._rx, link, fd, python)
        if rc != AUR_OK:
            raise_status(rc, "AckReceiver.set_link: link %d" % link)

    def clear_members(self):
        self._check(0)
        aur_acks_clear_members(self._rx)

    def set_member(self, uint32_t link, uint32_t pg, uint32_t member):
        """ACKs of PG ``pg`` on link ``link`` are member ``member`` of the PG."""
        self._check(link)
        cdef int rc = aur_acks_set_member(self._rx, link, pg, member)
        if rc != AUR_OK:
            raise_status(rc, "AckReceiver.set_member: link %d, PG %d, member %d" % (link, pg, member))

    def set_held(self, bint held):
        """Some PG's batches wait for its window (any thread)."""
        self._check(0)
        aur_acks_set_held(self._rx, held)

    def take_buffer(self, uint32_t link):
        """The bytes buffered for ``link``, which the receiver forgets."""
        cdef size_t n = 0
        self._check(link)
        cdef const uint8_t *data = aur_acks_buffer(self._rx, link, &n)
        out = PyBytes_FromStringAndSize(<const char *>data, <Py_ssize_t>n) if n else b""
        aur_acks_drop_buffer(self._rx, link)
        return out

    def completed(self):
        """[(link, request_id, pg, scl), ...] handled since the last call, in arrival order."""
        cdef uint32_t count = 0, i
        self._check(0)
        cdef const aur_ack *acks = aur_acks_completed(self._rx, &count)
        out = [(acks[i].link, acks[i].request_id, acks[i].pg, acks[i].scl) for i in range(count)]
        aur_acks_clear_completed(self._rx)
        return out

    def run(self, int wake_fd, timeout):
        """Wait (GIL released) for the next event, handling ACKs meanwhile; ``timeout`` in
        seconds (None: up to an hour).  Returns (kind, link, code, offset)."""
        self._check(0)
        cdef int timeout_ms = ACKS_RUN_TIMEOUT_MS_MAX
        if timeout is not None:
            seconds = float(timeout)
            if not seconds >= 0.0:
                raise ValueError("AckReceiver.run: timeout %r; it must be >= 0" % (timeout,))
            if seconds * 1000.0 < ACKS_RUN_TIMEOUT_MS_MAX:
                timeout_ms = <int>(seconds * 1000.0)
        cdef aur_acks_event event
        cdef int rc
        cdef aur_quorum *q = self._tracker._q
        with nogil:
            rc = aur_acks_run(self._rx, q, wake_fd, timeout_ms, &event)
        if rc != AUR_OK:
            if rc == AUR_E_IO:
                raise OSError(errno, "AckReceiver.run: poll failed: %s" % _acks_os.strerror(errno))
            raise_status(rc, "AckReceiver.run: wake descriptor %d" % wake_fd)
        return event.kind, event.link, event.code, event.offset

# The storage node's native APPEND lane (aurora/node/server.py).
#
# Under a commit load almost every frame a node receives is an APPEND_RING notice (or, from a
# remote writer, an APPEND) carrying a boxcar of a few records.  Served in Python, each one
# went through the frame reader, the dispatcher, the ring reader, NodeCore._append,
# Segment.append_small, LogFile.append and a Reply object: about 0.1 ms of interpreted code
# per round on every node, more than the native work it wraps.  The lane serves such frames
# from a connection's received bytes in one native call: frame checks, the ring slot (bounds
# and CRC), the batch decode, both epoch checks, the same page checks and freshness test as
# Segment.append_small, one pwrite, the native indexing, the SCL advance and the ACK frame,
# appended to the connection's output that waits for the next group commit.
#
# The Python path stays the reference.  The lane serves a frame only when every condition of
# the native path in Segment.append_small holds, and it changes nothing before it has decided
# to serve: at the first frame it cannot serve completely (another type, a malformed frame, a
# bad ring notice, a big batch, an unknown segment, a wrong epoch, a duplicate, truncated or
# collected LSN, a log file without room or not yet zeroed that far, a failed write) it stops
# and the server hands that frame to the Python path, which answers it -- with the error, if
# it is one -- exactly as before.  So the replies and the files are the same byte for byte,
# whichever path served a frame (tests/test_append_lane.py checks it).

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.dict cimport PyDict_DelItem
from cpython.mem cimport PyMem_Realloc
from libc.errno cimport errno, EINTR
from libc.string cimport memcpy
from posix.types cimport off_t
from posix.unistd cimport pwrite

cdef extern from "frame.h":
    enum:
        AUR_FRAME_TYPE_APPEND
        AUR_FRAME_TYPE_APPEND_RING
        AUR_FRAME_APPEND_RING_BODY_BYTES
        AUR_RING_HEADER_BYTES

FRAME_TYPE_APPEND = AUR_FRAME_TYPE_APPEND
FRAME_TYPE_APPEND_RING = AUR_FRAME_TYPE_APPEND_RING
FRAME_APPEND_RING_BODY_BYTES = AUR_FRAME_APPEND_RING_BODY_BYTES
RING_HEADER_BYTES = AUR_RING_HEADER_BYTES

# Why the lane stopped (AppendLane.stop_reason; AppendLane.declined counts each).  LANE_MORE
# is no decline: the bytes end inside a frame, which waits for the next receive.
cdef enum:
    LANE_SERVED = 0
    LANE_MORE = 1
    LANE_FRAME = 2         # not an APPEND or APPEND_RING, or the frame fails its checks
    LANE_RING = 3          # the ring notice is malformed, names no attached ring, or its slot fails
    LANE_BATCH = 4         # the batch does not decode
    LANE_BIG = 5           # more than SMALL_BATCH_RECORDS_MAX records
    LANE_SEGMENT = 6       # no such volume or segment on this node
    LANE_EPOCH = 7         # the volume or membership epoch is not the node's
    LANE_CHECK = 8         # a page outside the PG, or an IMAGE not one page (an error reply)
    LANE_NOT_FRESH = 9     # a duplicate, truncated or collected LSN: the row path decides
    LANE_LOG_FILE = 10     # no log file, no room in it, space not zeroed yet, or not the real disk
    LANE_WRITE = 11        # pwrite failed: the Python path tries again and reports it
    LANE_REASONS = 12

LANE_REASON_NAMES = ("served", "more", "frame", "ring", "batch", "big", "segment", "epoch", "check",
                     "not_fresh", "log_file", "write")
assert len(LANE_REASON_NAMES) == LANE_REASONS

cdef enum:
    # pwrite calls (short or interrupted) for one batch before the lane leaves it to Python.
    LANE_WRITE_ATTEMPTS_MAX = 64


cdef inline uint16_t _get_u16(const uint8_t *p) noexcept nogil:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t _get_u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))


cdef inline uint64_t _get_u64(const uint8_t *p) noexcept nogil:
    return <uint64_t>_get_u32(p) | (<uint64_t>_get_u32(p + 4) << 32)


cdef class AppendLane:
    """Serves the APPEND and APPEND_RING frames at the front of a connection's received bytes
    (see the top of this file).  One per node server, used by its loop thread only, with the
    node's lock held: it changes segments as NodeCore._append does."""
    cdef SmallBatch batch
    # A ring slot is copied out of the writer's mapping before it is checked and decoded (the
    # writer could be rewriting it); the copy grows to the largest slot seen, at most a ring.
    cdef uint8_t *copy
    cdef size_t copy_bytes
    cdef object disk
    cdef uint64_t counts[LANE_REASONS]
    cdef public int stop_reason
    cdef public Py_ssize_t frames_served     # by the last serve() call
    cdef public Py_ssize_t bytes_used        # by the last serve() call

    def __cinit__(self, disk):
        """``disk`` is the one whose files the lane may write with pwrite (REAL_DISK): a log
        file of any other (the simulator's) goes through its own methods, in Python."""
        self.batch = SmallBatch.__new__(SmallBatch)
        self.copy = NULL
        self.copy_bytes = 0
        self.disk = disk
        memset(self.counts, 0, sizeof(self.counts))
        self.stop_reason = LANE_MORE

    def __dealloc__(self):
        PyMem_Free(self.copy)

    @property
    def served(self):
        """Frames served since the lane was made."""
        return self.counts[LANE_SERVED]

    @property
    def declined(self):
        """Frames declined since the lane was made, by reason (the LANE_REASON_NAMES after
        "served" and "more")."""
        return {LANE_REASON_NAMES[i]: self.counts[i] for i in range(LANE_FRAME, LANE_REASONS)}

    @property
    def stop_reason_name(self):
        return LANE_REASON_NAMES[self.stop_reason]

    def serve(self, buf, dict rings, core, bytearray after_sync):
        """Serve the frames at the front of ``buf`` (bytes-like: a connection's received
        bytes) while each is one the lane serves completely.  ``rings`` maps ring ids to the
        connection's RingReaders, ``core`` is the NodeCore, ``after_sync`` the connection's
        replies that wait for the next group commit: each ACK is appended to it.

        Returns the bytes used (whole frames); frames_served and bytes_used say the same after
        an exception too, and stop_reason why it stopped.  The caller collects the dirty file
        descriptors (NodeCore.dirty_fds) under the same lock when frames_served > 0."""
        cdef Py_buffer view
        cdef const uint8_t *data
        cdef const uint8_t *frame
        cdef Py_ssize_t position = 0, available
        cdef uint32_t length
        cdef uint16_t frame_type
        cdef int reason = LANE_MORE
        self.frames_served = 0
        self.bytes_used = 0
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            data = <const uint8_t *>view.buf
            # Each pass serves one whole frame or stops: bounded by the frames in ``buf``.
            while True:
                available = view.len - position
                if available < 4:
                    reason = LANE_MORE
                    break
                frame = data + position
                length = _get_u32(frame)
                if length < AUR_FRAME_HEADER_BYTES or length > AUR_FRAME_LENGTH_MAX:
                    reason = LANE_FRAME
                    break
                if available < length:
                    reason = LANE_MORE
                    break
                frame_type = _get_u16(frame + 4)
                if frame_type != AUR_FRAME_TYPE_APPEND and frame_type != AUR_FRAME_TYPE_APPEND_RING:
                    reason = LANE_FRAME
                    break
                if (_get_u16(frame + 6) != 0 or aur_crc_mask(_crc32c_unlocked(
                        0, frame + AUR_FRAME_CRC_START, length - AUR_FRAME_CRC_START)) != _get_u32(frame + 8)):
                    reason = LANE_FRAME
                    break
                if frame_type == AUR_FRAME_TYPE_APPEND_RING:
                    reason = self._append_ring(frame, length, rings, core, after_sync)
                else:
                    reason = self._append(frame, frame + AUR_FRAME_HEADER_BYTES,
                                          length - AUR_FRAME_HEADER_BYTES, core, after_sync)
                if reason != LANE_SERVED:
                    break
                position += length
                self.frames_served += 1
                self.bytes_used = position
                self.counts[LANE_SERVED] += 1
        finally:
            PyBuffer_Release(&view)
        self.stop_reason = reason
        if reason != LANE_MORE:
            self.counts[reason] += 1
        return position

    cdef int _append_ring(self, const uint8_t *frame, uint32_t length, dict rings, core,
                          bytearray after_sync) except -1:
        """RingReader.read's checks, then _append over a copy of the slot."""
        cdef const uint8_t *body = frame + AUR_FRAME_HEADER_BYTES
        cdef uint64_t offset, slot_length, size
        cdef uint32_t crc
        cdef Py_buffer mapping
        cdef PyObject *found
        cdef uint8_t *grown
        if length - AUR_FRAME_HEADER_BYTES != AUR_FRAME_APPEND_RING_BODY_BYTES:
            return LANE_RING
        found = PyDict_GetItem(rings, _get_u64(body))
        if found is NULL:
            return LANE_RING
        reader = <object>found
        offset = _get_u64(body + 8)
        slot_length = _get_u32(body + 16)
        crc = _get_u32(body + 20)
        size = reader.size
        # offset + slot_length cannot wrap: both were checked against size first.
        if (offset < AUR_RING_HEADER_BYTES or slot_length == 0 or offset > size
                or slot_length > size - offset):
            return LANE_RING
        try:
            PyObject_GetBuffer(reader.map, &mapping, PyBUF_SIMPLE)
        except (ValueError, BufferError, TypeError):     # a closed mapping
            return LANE_RING
        try:
            if offset + slot_length > <uint64_t>mapping.len:
                return LANE_RING
            if slot_length > self.copy_bytes:
                grown = <uint8_t *>PyMem_Realloc(self.copy, slot_length)
                if grown is NULL:
                    raise MemoryError()
                self.copy = grown
                self.copy_bytes = slot_length
            memcpy(self.copy, <const uint8_t *>mapping.buf + offset, slot_length)
        finally:
            PyBuffer_Release(&mapping)
        if _crc32c_unlocked(0, self.copy, slot_length) != crc:
            return LANE_RING
        return self._append(frame, self.copy, <uint32_t>slot_length, core, after_sync)

    cdef int _append(self, const uint8_t *frame, const uint8_t *body, uint32_t body_length, core,
                     bytearray after_sync) except -1:
        """NodeCore._append for a small batch, when Segment.append_small would take its
        native path; otherwise a LANE_* reason, with nothing changed."""
        cdef SmallBatch batch = self.batch
        cdef size_t error_offset = 0
        cdef aur_record_view *last
        cdef PyObject *found
        cdef uint64_t first, end, tail, written = 0
        cdef ssize_t wrote
        cdef int fd, rc, attempts = 0
        cdef uint32_t foreign_page = 0
        cdef Py_ssize_t size
        cdef const uint8_t *source
        cdef list files
        if aur_batch_decode_header(body, body_length, &batch.hdr, &error_offset) != AUR_OK:
            batch.hdr.record_count = 0
            return LANE_BATCH
        if batch.hdr.record_count > SMALL_BATCH_CAP:
            batch.hdr.record_count = 0
            return LANE_BIG
        if batch.hdr.record_count == 0:     # the decoder refuses empty batches; never indexed
            return LANE_BATCH
        # Every record's CRC is checked: up to 64 page images, so without the GIL when long.
        if body_length >= CRC32C_RELEASE_GIL_BYTES:
            with nogil:
                rc = aur_batch_decode(body, body_length, &batch.hdr, batch.records, SMALL_BATCH_CAP,
                                      &error_offset)
        else:
            rc = aur_batch_decode(body, body_length, &batch.hdr, batch.records, SMALL_BATCH_CAP,
                                  &error_offset)
        if rc != AUR_OK:
            batch.hdr.record_count = 0
            return LANE_BATCH
        found = PyDict_GetItem(core.volumes, batch.hdr.volume_id)
        if found is NULL:
            return LANE_SEGMENT
        volume = <object>found
        found = PyDict_GetItem(volume.segments, batch.hdr.pg)
        if found is NULL:
            return LANE_SEGMENT
        segment = <object>found
        state = segment.state
        if volume.epoch != batch.hdr.volume_epoch or state["membership_epoch"] != batch.hdr.membership_epoch:
            return LANE_EPOCH
        if _small_batch_problem(batch, segment.pg, segment.pages_per_pg, segment.page_size,
                                &foreign_page) != BATCH_FITS:
            return LANE_CHECK
        files = segment.files
        if PyList_GET_SIZE(files) == 0:
            return LANE_LOG_FILE
        log = files[PyList_GET_SIZE(files) - 1]
        last = &batch.records[batch.hdr.record_count - 1]
        first = batch.records[0].offset
        end = last.offset + AUR_RECORD_HEADER_SIZE + last.payload_length
        tail = log.tail
        # LogFile.append's own checks: room in the file, and zeros written ahead of the tail
        # (LogFile._zero_ahead, left to the Python path when due).
        if log.disk is not self.disk or log.size - tail < end - first or tail + (end - first) > log.zeroed_end:
            return LANE_LOG_FILE
        if not _small_batch_all_fresh(batch, segment.records, state["gc_lsn"], state["truncations"]):
            return LANE_NOT_FRESH
        # Decided: from here on the frame is served.  The write is LogFile.append's pwrite;
        # a failed one leaves the tail where it was, for the Python path to try again.
        fd = log.fd
        source = body + first
        while written < end - first:
            with nogil:
                wrote = pwrite(fd, source + written, end - first - written, <off_t>(tail + written))
            attempts += 1
            if wrote < 0 and errno == EINTR and attempts < LANE_WRITE_ATTEMPTS_MAX:
                continue
            if wrote <= 0 or attempts > LANE_WRITE_ATTEMPTS_MAX:
                return LANE_WRITE
            written += <uint64_t>wrote
        log.tail = tail + written
        segment._dirty_files.add(log)
        _small_batch_index(batch, segment, log, <int64_t>tail - <int64_t>first)
        _advance_scl(segment)
        size = PyByteArray_GET_SIZE(after_sync)
        PyByteArray_Resize(after_sync, size + AUR_FRAME_ACK_BYTES)
        _ack_frame_write(<uint8_t *>PyByteArray_AS_STRING(after_sync) + size, AUR_FRAME_TYPE_ACK,
                         _get_u32(frame + 12), _get_u64(frame + 16), volume.epoch, state["membership_epoch"],
                         batch.hdr.pg, segment.scl, batch.hdr.last_lsn)
        return LANE_SERVED


cdef int _advance_scl(segment) except -1:
    """Segment._advance_scl: follow the successor links up from SCL, removing them."""
    cdef dict successor = segment.successor
    cdef PyObject *found
    scl = segment.scl
    # Each step removes one link: bounded by the links held.
    found = PyDict_GetItem(successor, scl)
    while found is not NULL:
        following = <object>found
        PyDict_DelItem(successor, scl)
        scl = following
        found = PyDict_GetItem(successor, scl)
    segment.scl = scl
    return 0

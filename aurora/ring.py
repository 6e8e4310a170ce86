"""The shared-memory redo ring: a boxcar written once, read by every node on the same host.

The writer maps one file (on /dev/shm where it exists) and copies each boxcar into it once;
every member that listens on a Unix socket of this host is sent a 24-byte APPEND_RING frame
naming the slot instead of the batch itself, maps the same file read-only (RING_ATTACH, once
per connection), copies the slot out, checks it against the CRC the notice carries, and serves
it as the APPEND it stands for. Six copies through six socket buffers become one memcpy in the
writer and one per node.

A slot is reused only after every member it was announced to has answered that request (ACK
or ERROR) or lost its connection, so a node never reads a slot that is being rewritten; the
CRC in the notice would catch it if it did. A full ring is not an error: the boxcar goes inline
over the socket, as to a remote member.

File layout: a 64-byte header (``RING_HEADER``: magic, total size, ring id) and the slots.
"""
import collections
import mmap
import os
import stat
import struct
import tempfile
import threading

from aurora import _native

RING_MAGIC = b"AURRING1"
RING_HEADER = struct.Struct("<8sQQ40x")      # magic, size (whole file), ring_id
RING_BYTES_DEFAULT = 16 * 1024 * 1024
RING_BYTES_MIN = 64 * 1024
RING_SLOT_ALIGN = 64


def ring_directory():
    """/dev/shm when it is a writable directory (memory, never written back), else the
    temporary directory."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def sweep_stale(directory):
    """Remove rings left by writers that died without closing (SIGKILL): the file name
    carries the writer's pid."""
    prefix = "aurora-ring-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RingSlot:
    __slots__ = ("offset", "length", "crc", "refs", "free")

    def __init__(self, offset, length, crc):
        self.offset = offset
        self.length = length
        self.crc = crc
        self.refs = 1            # the round that made it; each announcement adds one
        self.free = False


class SharedRing:
    """The writer's side: allocate slots in arrival order, free them in any order; the space
    of a run of freed slots at the oldest end is reused."""

    def __init__(self, size=RING_BYTES_DEFAULT, directory=None):
        if size < RING_BYTES_MIN:
            raise ValueError("ring of %d bytes is below the minimum of %d" % (size, RING_BYTES_MIN))
        self.size = size
        self.ring_id = int.from_bytes(os.urandom(8), "little") or 1
        directory = directory or ring_directory()
        sweep_stale(directory)
        fd, self.path = tempfile.mkstemp(prefix="aurora-ring-%d-" % os.getpid(), dir=directory)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        self.map[:RING_HEADER.size] = RING_HEADER.pack(RING_MAGIC, size, self.ring_id)
        self.lock = threading.Lock()
        self.slots = collections.deque()     # allocation order
        self.head = RING_HEADER.size         # where the next slot starts
        self.closed = False

    def put(self, data):
        """Copy ``data`` into a free slot; the slot, or None when the ring has no room."""
        n = len(data)
        with self.lock:
            if self.closed:
                return None
            span = (n + RING_SLOT_ALIGN - 1) // RING_SLOT_ALIGN * RING_SLOT_ALIGN
            offset = self._reserve(span)
            if offset is None:
                return None
            # One native call copies and checksums (a slice assignment, then a CRC call).
            crc = _native.ring_copy(self.map, offset, data)
            self.head = offset + span
            slot = RingSlot(offset, n, crc)
            self.slots.append(slot)
            return slot

    def _reserve(self, n):
        """Offset of ``n`` free bytes (a multiple of RING_SLOT_ALIGN, as every offset is) or
        None.  When the live bytes wrap, ``head`` stays strictly below ``tail``."""
        start = RING_HEADER.size
        if not self.slots:
            self.head = start
            return start if start + n <= self.size else None
        tail = self.slots[0].offset
        if self.head > tail:                 # live bytes are [tail, head)
            if self.head + n <= self.size:
                return self.head
            if start + n < tail:             # wrap to the front
                return start
            return None
        # wrapped: live bytes are [tail, size) and [start, head)
        if self.head + n < tail:
            return self.head
        return None

    def hold(self, slot, count=1):
        """``count`` more holders of ``slot`` (a round announces it to several members at
        once)."""
        with self.lock:
            slot.refs += count

    def release(self, slot, count=1):
        """``count`` holders of ``slot`` let go; its space is reused once none is left."""
        with self.lock:
            slot.refs -= count
            assert slot.refs >= 0, "ring slot at %d released more often than held" % slot.offset
            if slot.refs > 0:
                return
            slot.free = True
            slots = self.slots
            while slots and slots[0].free:
                slots.popleft()

    def in_use(self):
        with self.lock:
            return len(self.slots)

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.slots.clear()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.map.close()


class RingReader:
    """A node's side of one attached ring: the writer's file mapped read-only."""

    def __init__(self, path, size, ring_id):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("ring %s is not a regular file" % path)
            if st.st_uid != os.getuid():
                raise ValueError("ring %s belongs to uid %d, not this node's %d" % (path, st.st_uid, os.getuid()))
            if st.st_size != size or size < RING_BYTES_MIN:
                raise ValueError("ring %s has %d bytes, the writer said %d" % (path, st.st_size, size))
            self.map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, file_size, file_ring_id = RING_HEADER.unpack_from(self.map)
        if magic != RING_MAGIC or file_size != size or file_ring_id != ring_id:
            self.map.close()
            raise ValueError("ring %s has a bad header (magic %r, size %d, id %d)" % (path, magic, file_size, file_ring_id))
        self.size = size
        self.ring_id = ring_id

    def read(self, offset, length, crc):
        """The slot's bytes (a copy); ValueError if it is out of bounds or not what the
        writer announced."""
        if offset < RING_HEADER.size or length == 0 or offset + length > self.size:
            raise ValueError("ring slot [%d, +%d) outside [%d, %d)" % (offset, length, RING_HEADER.size, self.size))
        data = self.map[offset:offset + length]
        if _native.crc32c(data) != crc:
            raise ValueError("ring slot at %d changed before it was read (CRC mismatch)" % offset)
        return data

    def close(self):
        self.map.close()

"""The storage node's disk: every file operation the node's stores make, behind one object.

``RealDisk`` is the operating system (os calls and mmap; the default, and the node's code runs
exactly as before).  ``SimDisk`` is the deterministic simulator's disk (aurora/sim/): files
live in memory, a "mapping" is the file's own bytearray, and the disk remembers, per file,
the bytes that were last made durable (fsync/fdatasync/msync) and which directory entries
were made durable (fsync of the directory).  ``crash()`` throws away, keeps or scrambles
every byte and name that was not durable, chosen by the simulator's seeded random source, so
a node rebuilt from the disk afterwards runs the real restart scan over what a real crash
could have left.

The methods mirror the os functions they replace (same arguments, same exceptions for the
cases the node relies on: FileNotFoundError, FileExistsError), so the node's code reads the
same with either disk.
"""
import errno
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

SECTOR_BYTES = 512               # the unit a crash keeps, drops or scrambles
DIRECTORY_FD = -1                # SimDisk: what opening a directory returns
ASYNC_SYNC_THREADS = 2           # RealDisk: threads running fdatasync_async for the whole process

_async_sync_pool = None
_async_sync_lock = threading.Lock()


class RealDisk:
    """The operating system's files.  Methods are the os functions themselves, so going
    through the disk costs one attribute lookup."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    pwrite = staticmethod(os.pwrite)
    write = staticmethod(os.write)
    fsync = staticmethod(os.fsync)
    fdatasync = staticmethod(os.fdatasync)
    ftruncate = staticmethod(os.ftruncate)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    listdir = staticmethod(os.listdir)
    exists = staticmethod(os.path.exists)
    makedirs = staticmethod(os.makedirs)

    @staticmethod
    def file_size(fd):
        return os.fstat(fd).st_size

    @staticmethod
    def mmap(fd, size):
        return mmap.mmap(fd, size)

    @staticmethod
    def read_file(path):
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def preallocate(fd, size):
        """Reserve ``size`` bytes so appends never hit a full disk mid-record."""
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # macOS: no posix_fallocate; the size is still set so mmap can cover it
            os.ftruncate(fd, size)

    @staticmethod
    def fsync_directory(path):
        """Make a directory entry (a created, renamed or removed file) durable."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def fdatasync_async(fd):
        """Start fdatasync(fd) on a helper thread; a Future that is done once it returned (its
        result raises the OSError, if any).  The caller must not close ``fd`` before then."""
        global _async_sync_pool
        with _async_sync_lock:
            if _async_sync_pool is None:
                _async_sync_pool = ThreadPoolExecutor(ASYNC_SYNC_THREADS, thread_name_prefix="aurora-page-sync")
        return _async_sync_pool.submit(os.fdatasync, fd)


REAL_DISK = RealDisk()


# ---- the simulator's disk -------------------------------------------------------------------

class SimMapping(bytearray):
    """A SimFile's bytes, used directly as its memory mapping (slices, memoryview, struct and
    numpy all work on it as on an mmap).  ``flush`` is msync: it makes the file durable."""

    def flush(self):
        self.file.sync()

    def close(self):
        pass


class SimFile:
    __slots__ = ("data", "durable", "path")

    def __init__(self, path, data=b""):
        self.path = path
        self.data = SimMapping(data)
        self.data.file = self
        self.durable = bytes(data)

    def sync(self):
        if len(self.durable) != len(self.data) or self.durable != self.data:
            self.durable = bytes(self.data)

    def dirty(self):
        return len(self.durable) != len(self.data) or self.durable != self.data

    def resize(self, size):
        # A new buffer: a bytearray with exported views cannot change size, and a real file
        # must be remapped after it grows anyway.
        data = SimMapping(self.data[:size])
        if len(data) < size:
            data.extend(bytes(size - len(data)))
        data.file = self
        self.data = data


class SimDisk:
    """An in-memory disk for one simulated node.  Single-threaded.

    Durability model: a file's bytes are durable after fsync/fdatasync of any descriptor of
    it or flush() of its mapping; a name (create, rename, unlink) is durable after
    fsync_directory of its directory.  Directories themselves never go away.
    """

    def __init__(self):
        self.names = {}          # path -> SimFile, as the running node sees them
        self.durable_names = {}  # path -> SimFile, what a crash leaves
        self.directories = {"/"}
        self.fds = {}            # fd -> SimFile
        self.next_fd = 3
        self.syncs = 0

    # ---- namespace -------------------------------------------------------------------

    def makedirs(self, path, mode=0o777, exist_ok=False):
        path = os.path.normpath(path)
        if path in self.directories and not exist_ok:
            raise FileExistsError(errno.EEXIST, "directory exists", path)
        while path not in self.directories:
            self.directories.add(path)
            path = os.path.dirname(path)

    def exists(self, path):
        path = os.path.normpath(path)
        return path in self.names or path in self.directories

    def listdir(self, path):
        path = os.path.normpath(path)
        if path not in self.directories:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        out = [os.path.basename(p) for p in self.names if os.path.dirname(p) == path]
        out.extend(os.path.basename(d) for d in self.directories if d != path and os.path.dirname(d) == path)
        return out

    def replace(self, src, dst):
        src, dst = os.path.normpath(src), os.path.normpath(dst)
        f = self.names.pop(src, None)
        if f is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", src)
        f.path = dst
        self.names[dst] = f

    def unlink(self, path):
        path = os.path.normpath(path)
        if self.names.pop(path, None) is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)

    def fsync_directory(self, path):
        path = os.path.normpath(path)
        for name in [n for n in self.durable_names if os.path.dirname(n) == path]:
            if self.names.get(name) is not self.durable_names[name]:
                del self.durable_names[name]
        for name, f in self.names.items():
            if os.path.dirname(name) == path:
                self.durable_names[name] = f
        self.syncs += 1

    # ---- descriptors -----------------------------------------------------------------

    def open(self, path, flags, mode=0o777):
        path = os.path.normpath(path)
        if path in self.directories:
            return DIRECTORY_FD
        f = self.names.get(path)
        if f is None:
            if not flags & os.O_CREAT:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            if os.path.dirname(path) not in self.directories:
                raise FileNotFoundError(errno.ENOENT, "no such directory", os.path.dirname(path))
            f = self.names[path] = SimFile(path)
        elif flags & os.O_CREAT and flags & os.O_EXCL:
            raise FileExistsError(errno.EEXIST, "file exists", path)
        if flags & os.O_TRUNC:
            f.resize(0)
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = f
        return fd

    def close(self, fd):
        if fd != DIRECTORY_FD:
            del self.fds[fd]

    def _file(self, fd):
        f = self.fds.get(fd)
        if f is None:
            raise OSError(errno.EBADF, "bad file descriptor %d" % fd)
        return f

    def file_size(self, fd):
        return len(self._file(fd).data)

    def pwrite(self, fd, data, offset):
        f = self._file(fd)
        end = offset + len(data)
        if end > len(f.data):
            f.resize(end)
        f.data[offset:end] = data
        return len(data)

    def write(self, fd, data):
        # Only used on freshly created or truncated files (JSON, metadata): appends at the end.
        f = self._file(fd)
        return self.pwrite(fd, data, len(f.data))

    def ftruncate(self, fd, size):
        self._file(fd).resize(size)

    def preallocate(self, fd, size):
        f = self._file(fd)
        if len(f.data) < size:
            f.resize(size)

    def fsync(self, fd):
        if fd != DIRECTORY_FD:
            self._file(fd).sync()
        self.syncs += 1

    fdatasync = fsync

    def fdatasync_async(self, fd):
        """Deterministic: the sync happens now; the Future is already done."""
        self.fsync(fd)
        future = Future()
        future.set_result(None)
        return future

    def mmap(self, fd, size):
        f = self._file(fd)
        if len(f.data) != size:
            f.resize(size)
        return f.data

    def read_file(self, path):
        path = os.path.normpath(path)
        f = self.names.get(path)
        if f is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return bytes(f.data)

    # ---- faults ----------------------------------------------------------------------

    def unsynced_files(self):
        """Paths whose bytes or names are not all durable."""
        out = [path for path, f in self.names.items() if f.dirty()]
        out.extend(path for path in self.names if self.durable_names.get(path) is not self.names[path])
        return out

    def crash(self, rng, keep_probability=0.0, scramble_probability=0.0):
        """Power loss: names revert to the durable ones; every sector written since the last
        sync is kept with ``keep_probability``, replaced by random bytes with
        ``scramble_probability``, otherwise lost.  Descriptors and mappings are gone."""
        self.names = dict(self.durable_names)
        self.fds = {}
        # Distinct files in name order: the outcome must not depend on object addresses.
        for f in dict.fromkeys(self.names.values()):
            if f.dirty():
                old = f.durable
                new = f.data
                out = bytearray(old)
                if keep_probability or scramble_probability:
                    size = max(len(old), len(new))
                    if len(new) > len(old) and rng.random() < keep_probability:
                        out.extend(bytes(len(new) - len(old)))
                    for start in range(0, min(size, len(out)), SECTOR_BYTES):
                        end = min(start + SECTOR_BYTES, len(out))
                        if new[start:end] == old[start:end]:
                            continue
                        draw = rng.random()
                        if draw < keep_probability:
                            out[start:end] = new[start:end].ljust(end - start, b"\0")
                        elif draw < keep_probability + scramble_probability:
                            # A torn sector: the bytes being written are garbage; bytes that
                            # were durable and not rewritten stay (sector writes never
                            # damage data they do not change).
                            fresh = new[start:end].ljust(end - start, b"\0")
                            noise = rng.randbytes(end - start)
                            out[start:end] = bytes(o if n == o else g for o, n, g in
                                                   zip(out[start:end], fresh, noise))
                f.data = SimMapping(out)
                f.data.file = f
            f.durable = bytes(f.data)

    def flip_byte(self, rng, suffix=".aur"):
        """Bit rot at rest: flip one bit of one written byte of a file ending in ``suffix``
        (in the running node's view and on the durable copy alike).  Returns (path, offset)
        or None if there is nothing to flip."""
        files = sorted(p for p in self.names if p.endswith(suffix))
        if not files:
            return None
        path = rng.choice(files)
        f = self.names[path]
        size = len(f.data)
        if size == 0:
            return None
        offset = rng.randrange(size)
        # Prefer written bytes: a flip in zeroed, unwritten space is rarely interesting.
        for _ in range(8):
            if f.data[offset]:
                break
            offset = rng.randrange(size)
        bit = 1 << rng.randrange(8)
        f.data[offset] ^= bit
        durable = bytearray(f.durable)
        if offset < len(durable):
            durable[offset] ^= bit
            f.durable = bytes(durable)
        return path, offset

# SQLite VFS (csrc/vfs.h): the callbacks that route the main database file of a volume to the
# Python Volume, and VfsVolume, one registered VFS per open volume.  aurora/sqlite.py builds
# aurora.connect() on it; docs/sqlite.md explains the design.
#
# Callbacks run on whatever thread SQLite runs on, usually with the GIL released by the sqlite3
# module; each takes the GIL ("with gil"), calls the Volume, and turns any exception into a
# status code for C while keeping the exception, per thread, for aurora.sqlite to attach to
# the sqlite3 error it causes.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF, Py_DECREF, PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

import os
import threading as _threading

cdef extern from "vfs.h" nogil:
    ctypedef struct aur_vfs_volume:
        pass
    ctypedef struct aur_vfs_volume_ops:
        int (*read_page)(void *, uint64_t, uint8_t *, uint32_t) noexcept
        int (*write_range)(void *, uint64_t, uint32_t, const uint8_t *, uint32_t) noexcept
        int (*commit_nowait)(void *, uint64_t *) noexcept
        int (*wait_durable)(void *, uint64_t) noexcept
        void (*rollback)(void *) noexcept
        void (*destroy)(void *) noexcept
    ctypedef struct aur_vfs_lock_state:
        uint32_t shared
        uint32_t reserved
        uint32_t pending
        uint32_t exclusive
        uint32_t open_files
        uint32_t poisoned
        int64_t file_bytes
        uint64_t commits
    unsigned int AUR_VFS_SQLITE_HEADER_SIZE
    unsigned int AUR_VFS_NAME_MAX
    int aur_vfs_library_load(const char *path, char *error, size_t error_cap)
    int aur_vfs_library_probe(const char *path, char *error, size_t error_cap)
    const char *aur_vfs_library_version()
    int aur_vfs_volume_create(const char *vfs_name, const char *db_name, uint32_t page_size,
                              const aur_vfs_volume_ops *ops, void *ctx, aur_vfs_volume **out)
    void aur_vfs_volume_release(aur_vfs_volume *volume)
    void aur_vfs_volume_lock_state(aur_vfs_volume *volume, aur_vfs_lock_state *state)
    void aur_vfs_volume_poison(aur_vfs_volume *volume)
    int aur_vfs_header_database_bytes(const uint8_t *page1, size_t length, uint64_t *bytes)

cdef enum:
    VFS_LIBRARY_ERROR_BYTES = 512


cdef int _vfs_failed(object handle, object exc) noexcept:
    """Keep exc for this thread (see VfsVolume.take_error); the C side gets AUR_E_IO."""
    try:
        (<VfsVolume>handle)._errors.exc = exc
    except BaseException:
        pass
    return AUR_E_IO


cdef int _vfs_read_page(void *ctx, uint64_t page_no, uint8_t *out,
                        uint32_t page_size) noexcept with gil:
    cdef VfsVolume handle = <VfsVolume>ctx
    cdef bytes data
    try:
        data = bytes(handle.volume.read(page_no))
        if len(data) != page_size:
            raise _errors.CorruptionError("volume page %d is %d bytes, expected %d"
                                          % (page_no, len(data), page_size))
        memcpy(out, <const char *>data, page_size)
        return AUR_OK
    except BaseException as exc:
        return _vfs_failed(handle, exc)


cdef int _vfs_write_range(void *ctx, uint64_t page_no, uint32_t offset, const uint8_t *data,
                          uint32_t length) noexcept with gil:
    cdef VfsVolume handle = <VfsVolume>ctx
    try:
        handle.volume.write(page_no, PyBytes_FromStringAndSize(<const char *>data, length),
                            offset)
        return AUR_OK
    except BaseException as exc:
        return _vfs_failed(handle, exc)


cdef int _vfs_commit_nowait(void *ctx, uint64_t *lsn) noexcept with gil:
    cdef VfsVolume handle = <VfsVolume>ctx
    try:
        lsn[0] = handle.volume.commit_nowait() or 0
        return AUR_OK
    except BaseException as exc:
        return _vfs_failed(handle, exc)


cdef int _vfs_wait_durable(void *ctx, uint64_t lsn) noexcept with gil:
    cdef VfsVolume handle = <VfsVolume>ctx
    try:
        handle.volume.wait_durable(lsn)
        return AUR_OK
    except BaseException as exc:
        # C poisons the volume on this failure; remember why, for every later error.
        handle.poisoned_by = exc
        return _vfs_failed(handle, exc)


cdef void _vfs_rollback(void *ctx) noexcept with gil:
    cdef VfsVolume handle = <VfsVolume>ctx
    try:
        handle.volume.rollback()
    except BaseException:
        pass


cdef void _vfs_destroy(void *ctx) noexcept with gil:
    # Drops the reference VfsVolume took on itself when it registered.
    Py_DECREF(<object>ctx)


cdef aur_vfs_volume_ops _vfs_ops
_vfs_ops.read_page = _vfs_read_page
_vfs_ops.write_range = _vfs_write_range
_vfs_ops.commit_nowait = _vfs_commit_nowait
_vfs_ops.wait_durable = _vfs_wait_durable
_vfs_ops.rollback = _vfs_rollback
_vfs_ops.destroy = _vfs_destroy


def vfs_library_load(path):
    """Bind the VFS to the SQLite library of the shared object at ``path`` (already loaded:
    it is never loaded here), or of the whole process if ``path`` is None.  Returns None, or
    a message saying why the library's functions cannot be reached."""
    cdef char error[VFS_LIBRARY_ERROR_BYTES]
    cdef bytes encoded = None if path is None else os.fsencode(path)
    cdef const char *c_path = NULL
    cdef int rc
    if encoded is not None:
        c_path = encoded
    rc = aur_vfs_library_load(c_path, error, sizeof(error))
    return None if rc == AUR_OK else error.decode("utf-8", "replace")


def vfs_library_probe(path):
    """Like vfs_library_load, without binding (for tests)."""
    cdef char error[VFS_LIBRARY_ERROR_BYTES]
    cdef bytes encoded = None if path is None else os.fsencode(path)
    cdef const char *c_path = NULL
    cdef int rc
    if encoded is not None:
        c_path = encoded
    rc = aur_vfs_library_probe(c_path, error, sizeof(error))
    return None if rc == AUR_OK else error.decode("utf-8", "replace")


def vfs_library_version():
    """sqlite3_libversion() of the library the VFS is bound to, or None."""
    cdef const char *version = aur_vfs_library_version()
    return None if version == NULL else version.decode()


def vfs_header_database_bytes(page1):
    """Database size in bytes according to SQLite's header in page 1 (see csrc/vfs.h)."""
    cdef const uint8_t[::1] view = page1
    cdef uint64_t size = 0
    cdef int rc = aur_vfs_header_database_bytes(&view[0] if view.shape[0] else NULL,
                                                <size_t>view.shape[0], &size)
    if rc != AUR_OK:
        raise_status(rc, "vfs_header_database_bytes: %d bytes" % view.shape[0])
    return size


cdef class VfsVolume:
    """A SQLite VFS named ``vfs_name`` whose main database file ``db_name`` lives in
    ``volume`` (anything with the Volume API: page_size, read, write, commit_nowait,
    wait_durable, rollback).  Registered on creation; ``release()`` unregisters it, and the
    C side lets go of this object once the last database file on it closes."""

    cdef aur_vfs_volume *_c
    cdef readonly object volume
    cdef readonly str vfs_name
    cdef readonly str db_name
    cdef readonly bint released
    cdef object _errors
    cdef public object poisoned_by

    def __cinit__(self, volume, str vfs_name, str db_name):
        cdef bytes vfs_encoded = vfs_name.encode()
        cdef bytes db_encoded = db_name.encode()
        cdef int rc
        self.volume = volume
        self.vfs_name = vfs_name
        self.db_name = db_name
        self._errors = _threading.local()
        self.poisoned_by = None
        if vfs_library_version() is None:
            raise RuntimeError("VfsVolume: vfs_library_load() has not succeeded")
        Py_INCREF(self)      # dropped by _vfs_destroy, called by C when it lets go
        rc = aur_vfs_volume_create(vfs_encoded, db_encoded, <uint32_t>volume.page_size,
                                   &_vfs_ops, <void *>self, &self._c)
        if rc != AUR_OK:
            Py_DECREF(self)
            self._c = NULL
            raise_status(rc, "registering SQLite VFS %r for database %r (page size %d)"
                         % (vfs_name, db_name, volume.page_size))

    def release(self):
        """Unregister the VFS: no new connection can open it.  Open ones keep working."""
        if self._c != NULL and not self.released:
            self.released = True
            aur_vfs_volume_release(self._c)

    def take_error(self):
        """The exception a callback raised on this thread since the last call, or None."""
        exc = getattr(self._errors, "exc", None)
        self._errors.exc = None
        return exc

    def clear_error(self):
        self._errors.exc = None

    def poison(self):
        """Refuse every later write and sync (tests; an in-doubt commit found elsewhere)."""
        if self._c != NULL and not self.released:
            aur_vfs_volume_poison(self._c)

    def lock_state(self):
        """The lock table and counters, as a dict (for tests and status)."""
        cdef aur_vfs_lock_state state
        if self._c == NULL or self.released:
            return None   # after release C may free the volume with its last file
        aur_vfs_volume_lock_state(self._c, &state)
        return {"shared": state.shared, "reserved": bool(state.reserved),
                "pending": bool(state.pending), "exclusive": bool(state.exclusive),
                "open_files": state.open_files, "poisoned": bool(state.poisoned),
                "file_bytes": state.file_bytes, "commits": state.commits}

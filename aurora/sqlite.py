"""SQLite on an aurora volume: ``aurora.connect()`` returns a plain ``sqlite3.Connection``.

The main database file lives in the volume's pages through a VFS written in C
(csrc/vfs.c), registered in the very SQLite library Python's ``sqlite3`` module uses, so
DB-API 2.0 code, SQLAlchemy and pandas work unchanged.  Every connection of a process to one
volume shares one Volume (one buffer pool) and one lock table; the journal stays in memory and
every commit is one mini-transaction (MTR) in the storage log.  docs/sqlite.md has the design.

    import aurora
    db = aurora.connect("/var/lib/myapp")          # an embedded 6-node fleet in that folder
    db.execute("create table t (x)")
    with db:
        db.execute("insert into t values (1)")
"""
import atexit
import functools
import os
import sqlite3
import threading
import urllib.parse

from aurora import _native, errors

__all__ = ["connect", "close", "Connection", "Cursor", "SQLiteLibraryError"]

TIMEOUT_S_DEFAULT = 5.0          # how long a connection retries a lock held by another one
_SQLITE_IOERR = 10
_SQLITE_CANTOPEN = 14


class SQLiteLibraryError(errors.AuroraError):
    """The SQLite library of Python's sqlite3 module does not let aurora register a VFS."""


_lock = threading.RLock()
_clusters = {}      # absolute data directory -> Cluster started or attached by connect()
_volumes = {}       # (id(cluster), volume name) -> (cluster, Volume)
_handles = {}       # id(Volume) -> VfsVolume
_library_bound = False


# ---- the SQLite library ---------------------------------------------------------------------

def _bind_library():
    """Bind csrc/vfs.c to the SQLite that the sqlite3 module loaded (never a second copy)."""
    global _library_bound
    if _library_bound:
        return
    import _sqlite3
    path = getattr(_sqlite3, "__file__", None)   # None: built into the interpreter
    why = _native.vfs_library_load(path)
    if why is not None:
        raise SQLiteLibraryError(
            "aurora cannot register its VFS in the SQLite library of Python's sqlite3 module "
            "(SQLite %s; %s). aurora reaches sqlite3_vfs_register and friends with dlsym from "
            "the module %s, which works when _sqlite3 links a shared libsqlite3 or exports "
            "SQLite's symbols. Use a Python built against a shared libsqlite3 (the usual "
            "build on Linux distributions, python.org installers, pyenv and conda)."
            % (sqlite3.sqlite_version, why, path or "built into the interpreter"))
    _library_bound = True


def sqlite_library_version():
    """The version of the SQLite library the VFS is registered in (None before connect)."""
    return _native.vfs_library_version()


# ---- volumes and their VFSes ----------------------------------------------------------------

def _is_volume(target):
    return all(hasattr(target, name) for name in ("page_size", "read", "write", "commit_nowait",
                                                  "wait_durable", "rollback"))


def _open_volume(target, name, page_size):
    if _is_volume(target):
        return target
    from aurora.cluster import Cluster
    if isinstance(target, Cluster):
        cluster = target
    elif isinstance(target, (str, os.PathLike)):
        data_dir = os.path.abspath(os.fspath(target))
        cluster = _clusters.get(data_dir)
        if cluster is None:
            cluster = _clusters[data_dir] = Cluster.local(data_dir)
    else:
        raise TypeError("aurora.connect: target must be a data directory, a Cluster or an open "
                        "Volume, not %r" % type(target).__name__)
    key = (id(cluster), name)
    entry = _volumes.get(key)
    if entry is not None and entry[0] is cluster and not getattr(entry[1], "_closed", False):
        return entry[1]
    volume = cluster.open_volume(name, page_size)
    _volumes[key] = (cluster, volume)
    return volume


def _handle_for(volume, name):
    handle = _handles.get(id(volume))
    if handle is not None and handle.volume is volume:
        return handle
    base = "aurora-%s" % getattr(volume, "volume_id", name)
    taken = {h.vfs_name for h in _handles.values()
             if not getattr(h.volume, "_closed", False) and not h.released}
    vfs_name = base
    suffix = 2
    while vfs_name in taken:
        vfs_name = "%s-%d" % (base, suffix)
        suffix += 1
    for key, old in list(_handles.items()):
        if getattr(old.volume, "_closed", False):
            old.release()
            del _handles[key]
    handle = _native.VfsVolume(volume, vfs_name, name)
    _handles[id(volume)] = handle
    return handle


def vfs_for(connection):
    """The VfsVolume behind an aurora connection (lock table, poisoning; for tests)."""
    return connection._aurora


def volume_of(connection):
    """The writer Volume behind an aurora connection (status, statistics, recovery time)."""
    return connection._aurora.volume


# ---- connections whose aurora failures say so -----------------------------------------------

def _aurora_cause(handle, exc):
    """The aurora exception behind sqlite3 error exc, if there is one."""
    cause = handle.take_error()
    if cause is not None:
        return cause
    code = getattr(exc, "sqlite_errorcode", None)
    io_error = (code & 0xFF in (_SQLITE_IOERR, _SQLITE_CANTOPEN) if code is not None
                else "disk I/O error" in str(exc))
    return handle.poisoned_by if io_error else None


def _translated(method):
    """Wrap a sqlite3 method so that an error caused inside aurora (a fenced writer, a lost
    quorum) re-raises as the same sqlite3 class with aurora's message, and the aurora
    exception as its __cause__."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        handle = self._aurora_handle()
        if handle is None:
            return method(self, *args, **kwargs)
        handle.clear_error()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            cause = _aurora_cause(handle, exc)
            if cause is None:
                raise
            if handle.poisoned_by is cause:
                what = ("%s: %s; the volume handle is poisoned (a commit is in doubt): every "
                        "later write fails until the volume is reopened"
                        % (type(cause).__name__, cause))
            else:
                what = "%s: %s" % (type(cause).__name__, cause)
            translated = type(exc)("%s (aurora: %s)" % (exc, what))
            for attribute in ("sqlite_errorcode", "sqlite_errorname"):
                if hasattr(exc, attribute):
                    setattr(translated, attribute, getattr(exc, attribute))
            raise translated from cause
    return call


class Cursor(sqlite3.Cursor):
    """sqlite3.Cursor; errors caused inside aurora carry aurora's message."""

    def _aurora_handle(self):
        return getattr(self.connection, "_aurora", None)

    execute = _translated(sqlite3.Cursor.execute)
    executemany = _translated(sqlite3.Cursor.executemany)
    executescript = _translated(sqlite3.Cursor.executescript)
    fetchone = _translated(sqlite3.Cursor.fetchone)
    fetchmany = _translated(sqlite3.Cursor.fetchmany)
    fetchall = _translated(sqlite3.Cursor.fetchall)
    __next__ = _translated(sqlite3.Cursor.__next__)


class Connection(sqlite3.Connection):
    """sqlite3.Connection on an aurora volume; errors caused inside aurora carry aurora's
    message."""

    _aurora = None

    def _aurora_handle(self):
        return self._aurora

    def cursor(self, factory=Cursor):
        return super().cursor(factory)

    execute = _translated(sqlite3.Connection.execute)
    executemany = _translated(sqlite3.Connection.executemany)
    executescript = _translated(sqlite3.Connection.executescript)
    commit = _translated(sqlite3.Connection.commit)
    rollback = _translated(sqlite3.Connection.rollback)
    __exit__ = _translated(sqlite3.Connection.__exit__)


# ---- the entry point ------------------------------------------------------------------------

def connect(target, *, volume="main", page_size=4096, timeout=TIMEOUT_S_DEFAULT,
            **sqlite_kwargs):
    """A ``sqlite3.Connection`` to the SQLite database in volume ``volume`` of ``target``.

    ``target`` is a data directory (an embedded fleet: ``Cluster.local(target)``, started or
    re-attached once per directory in this process), a ``Cluster``, or an open Volume.
    ``page_size`` applies when the volume is created; the database always uses the volume's
    page size.  ``timeout`` is how long a statement retries a lock another connection holds
    (sqlite3's ``timeout``); other keyword arguments go to ``sqlite3.connect`` (``uri``,
    ``check_same_thread`` and ``factory`` are set by aurora).  Connections may be used from
    any thread, one thread at a time each; all connections to one volume share its Volume and
    its lock table.
    """
    for reserved in ("uri", "check_same_thread", "factory"):
        if reserved in sqlite_kwargs:
            raise TypeError("aurora.connect sets %s itself" % reserved)
    with _lock:
        _bind_library()
        opened = _open_volume(target, volume, page_size)
        handle = _handle_for(opened, volume)
    uri = "file:%s?vfs=%s" % (urllib.parse.quote(handle.db_name, safe=""),
                              urllib.parse.quote(handle.vfs_name, safe=""))
    connection = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=timeout,
                                 factory=Connection, **sqlite_kwargs)
    connection._aurora = handle
    try:
        connection.execute("PRAGMA journal_mode=MEMORY").fetchall()
        if connection.execute("PRAGMA page_count").fetchone()[0] == 0:
            connection.execute("PRAGMA page_size=%d" % opened.page_size).fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def close(target=None):
    """Close what ``connect`` opened for ``target`` (a data directory or Cluster; None: all):
    release the VFSes, close the volumes, stop the fleets it started.  Connections still open
    on them fail from then on."""
    with _lock:
        data_dir = (os.path.abspath(os.fspath(target))
                    if isinstance(target, (str, os.PathLike)) else None)
        clusters = []
        if target is None:
            clusters = list(_clusters.values()) + [c for c, _ in _volumes.values()]
        elif data_dir is not None:
            if data_dir in _clusters:
                clusters = [_clusters[data_dir]]
        else:
            clusters = [target]
        for key, (cluster, volume) in list(_volumes.items()):
            if any(cluster is c for c in clusters):
                handle = _handles.pop(id(volume), None)
                if handle is not None:
                    handle.release()
                try:
                    volume.close()
                except errors.AuroraError:
                    pass
                del _volumes[key]
        for directory, cluster in list(_clusters.items()):
            if any(cluster is c for c in clusters):
                del _clusters[directory]
                cluster.close()


atexit.register(close)

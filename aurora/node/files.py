"""Small durable-file helpers shared by the node's stores.  ``disk`` is the node's disk
(aurora/node/disk.py): the operating system unless a simulator passes its own."""
import json
import os

from aurora.node.disk import REAL_DISK


def fsync_directory(path, disk=REAL_DISK):
    """Make a directory entry (a created, renamed or removed file) durable."""
    disk.fsync_directory(path)


def write_json_durably(path, value, disk=REAL_DISK):
    """Replace ``path`` with ``value`` as JSON, atomically and durably (tmp, fsync, rename)."""
    tmp = path + ".tmp"
    data = json.dumps(value, sort_keys=True, indent=1).encode()
    fd = disk.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        disk.write(fd, data)
        disk.fsync(fd)
    finally:
        disk.close(fd)
    disk.replace(tmp, path)
    disk.fsync_directory(os.path.dirname(path) or ".")


def read_json(path, default=None, disk=REAL_DISK):
    try:
        return json.loads(disk.read_file(path).decode())
    except FileNotFoundError:
        return default


def preallocate(fd, size, disk=REAL_DISK):
    """Reserve ``size`` bytes for a file so appends never hit a full disk mid-record."""
    disk.preallocate(fd, size)

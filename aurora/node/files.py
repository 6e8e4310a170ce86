"""Small durable-file helpers shared by the node's stores."""
import json
import os


def fsync_directory(path):
    """Make a directory entry (a created, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path, value):
    """Replace ``path`` with ``value`` as JSON, atomically and durably (tmp, fsync, rename)."""
    tmp = path + ".tmp"
    data = json.dumps(value, sort_keys=True, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path) or ".")


def read_json(path, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except FileNotFoundError:
        return default


def preallocate(fd, size):
    """Reserve ``size`` bytes for a file so appends never hit a full disk mid-record."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:  # macOS: no posix_fallocate; the size is still set so mmap can cover it
        os.ftruncate(fd, size)

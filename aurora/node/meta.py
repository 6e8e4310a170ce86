"""Volume metadata kept on the node: versioned key -> value entries under data_dir/meta/.

The writer stores the volume's geometry, PG membership, epochs and truncation history here on
a quorum of nodes, so no single disk holds the only copy (DESIGN.md section 3).  The node does
not interpret keys or values; it keeps, per key, the value of the highest version it was given
and refuses to go back (META_PUT with a version not above the stored one changes nothing).

One file per key, named by the SHA-256 of the key (keys may hold any UTF-8, file names may
not), replaced atomically: tmp + fsync + rename + fsync of the directory.

File layout (little-endian):

    offset size field
     0      4   magic          META_MAGIC "AURM"
     4      4   crc            masked CRC32C of bytes [8, end)
     8      8   version
    16      2   key_length
    18      4   value_length
    22      ..  key, then value
"""
import hashlib
import os
import struct

from aurora import errors
from aurora import _native
from aurora._native import crc32c
from aurora.node.disk import REAL_DISK

META_FILE_HEADER = struct.Struct("<IIQHI")
META_MAGIC = 0x4D525541  # "AURM"
META_KEY_BYTES_MAX = 256
META_VALUE_BYTES_MAX = 1024 * 1024



class MetaStore:
    """Versioned metadata entries of one node.  Not thread-safe: the node's lock guards it."""

    def __init__(self, directory, disk=REAL_DISK):
        self.directory = directory
        self.disk = disk
        disk.makedirs(directory, mode=0o700, exist_ok=True)
        self._cache = {}   # key bytes -> (version, value bytes)

    def _path(self, key):
        return os.path.join(self.directory, hashlib.sha256(key).hexdigest() + ".meta")

    def get(self, key):
        """(version, value) stored for ``key`` (bytes); (0, b"") when absent."""
        _check_key(key)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        path = self._path(key)
        try:
            data = self.disk.read_file(path)
        except FileNotFoundError:
            return 0, b""
        entry = _decode(data, key, path)
        self._cache[key] = entry
        return entry

    def put(self, key, version, value):
        """Store ``value`` at ``version`` if that is above the stored version, durably before
        returning.  Returns the version now stored."""
        _check_key(key)
        if len(value) > META_VALUE_BYTES_MAX:
            raise ValueError("metadata value of %d bytes; at most %d" % (len(value), META_VALUE_BYTES_MAX))
        try:
            stored, _ = self.get(key)
        except errors.CorruptionError:
            stored = 0     # a damaged copy is replaced by any new version
        if version <= stored:
            return stored
        body = META_FILE_HEADER.pack(META_MAGIC, 0, version, len(key), len(value))[8:] + key + bytes(value)
        data = struct.pack("<II", META_MAGIC, _native.crc_mask(crc32c(body))) + body
        path = self._path(key)
        tmp = path + ".tmp"
        disk = self.disk
        fd = disk.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[disk.write(fd, view):]
            disk.fsync(fd)
        finally:
            disk.close(fd)
        disk.replace(tmp, path)
        disk.fsync_directory(self.directory)
        self._cache[key] = (version, bytes(value))
        return version


def _check_key(key):
    if not 1 <= len(key) <= META_KEY_BYTES_MAX:
        raise ValueError("metadata key of %d bytes; 1 to %d allowed" % (len(key), META_KEY_BYTES_MAX))


def _decode(data, key, path):
    if len(data) < META_FILE_HEADER.size:
        raise errors.CorruptionError("metadata file is shorter than its header", path, 0)
    magic, crc, version, key_length, value_length = META_FILE_HEADER.unpack_from(data)
    if magic != META_MAGIC or _native.crc_mask(crc32c(memoryview(data)[8:])) != crc:
        raise errors.CorruptionError("metadata file failed its CRC32C", path, 0)
    if META_FILE_HEADER.size + key_length + value_length != len(data):
        raise errors.CorruptionError("metadata file lengths do not add up", path, 16)
    stored_key = data[META_FILE_HEADER.size:META_FILE_HEADER.size + key_length]
    if stored_key != key:
        raise errors.CorruptionError("metadata file holds key %r, expected %r" % (stored_key, key), path, 22)
    return version, data[META_FILE_HEADER.size + key_length:]

"""The node wire protocol: frames, their bodies, and a sans-IO frame reader.

Layout (docs/protocol.md has the grammar):

    offset size field
     0      4   length            bytes of the whole frame, header included
     4      2   type              FRAME_*
     6      2   flags             must be zero
     8      4   crc               masked CRC32C of bytes [12, length)
    12      4   request_id        echoed in the reply
    16      8   volume_id
    24      8   volume_epoch
    32      8   membership_epoch
    40          body (type-specific, fixed little-endian fields; no pickle, no code)

A frame that fails any check makes the reader raise a FormatError subclass; the server answers
with one ERROR frame and closes that connection only.
"""
import json
import struct

from aurora import errors
from aurora import _native
from aurora._native import crc32c

FRAME_MAGIC_HEADER = struct.Struct("<IHHIIQQQ")
FRAME_HEADER_SIZE = FRAME_MAGIC_HEADER.size
assert FRAME_HEADER_SIZE == 40
FRAME_CRC_START = 12
# The largest frame: a batch of the largest body plus its headers, with room to spare.
FRAME_LENGTH_MAX = 64 * 1024 * 1024 + 4096

# Frame types.  Requests are odd-free on purpose: each reply type is listed beside its request.
FRAME_APPEND = 1           # body: one batch (docs/format.md)          -> ACK
FRAME_ACK = 2              # body: ACK_BODY
FRAME_GET_PAGE = 3         # body: GET_PAGE_BODY                        -> PAGE
FRAME_PAGE = 4             # body: PAGE_BODY + page bytes
FRAME_STATUS = 5           # body: empty                                -> STATUS_REPLY
FRAME_STATUS_REPLY = 6     # body: UTF-8 JSON object
FRAME_SET_EPOCH = 7        # body: SET_EPOCH_BODY                       -> OK
FRAME_OK = 8               # body: OK_BODY
FRAME_TRUNCATE = 9         # body: TRUNCATE_BODY                        -> OK
FRAME_GOSSIP_SCL = 10      # body: SCL_BODY (the sender's SCL)          -> GOSSIP_SCL (receiver's)
FRAME_FETCH = 11           # body: FETCH_BODY                           -> RECORDS
FRAME_RECORDS = 12         # body: RECORDS_BODY + back-to-back records
FRAME_ERROR = 13           # body: ERROR_BODY + UTF-8 message
FRAME_CREATE_SEGMENT = 14  # body: CREATE_SEGMENT_BODY                  -> OK
FRAME_SET_LWM = 15         # body: SET_LWM_BODY (PGMRPL)                -> OK
FRAME_LIST_RECORDS = 16    # body: LIST_RECORDS_BODY                    -> RECORD_LIST
FRAME_RECORD_LIST = 17     # body: RECORD_LIST_BODY + count x RECORD_LIST_ENTRY
FRAME_VOLUME_HINT = 18     # body: VOLUME_HINT_BODY (the writer's VDL)  -> OK
FRAME_META_GET = 19        # body: UTF-8 key                            -> META
FRAME_META = 20            # body: META_BODY + value bytes
FRAME_META_PUT = 21        # body: META_PUT_BODY + key + value          -> OK (value = version stored)
FRAME_SET_MEMBERS = 22     # body: SET_MEMBERS_BODY + peer list         -> OK
FRAME_RING_ATTACH = 23     # body: RING_ATTACH_BODY + UTF-8 path        -> OK (aurora/ring.py)
FRAME_APPEND_RING = 24     # body: APPEND_RING_BODY (a slot holding a batch) -> ACK, as APPEND

FRAME_NAMES = {v: k[len("FRAME_"):] for k, v in globals().items()
               if k.startswith("FRAME_") and isinstance(v, int) and k not in
               ("FRAME_HEADER_SIZE", "FRAME_CRC_START", "FRAME_LENGTH_MAX")}

ACK_BODY = struct.Struct("<IIQQ")              # pg, reserved, scl, last_lsn (of the batch)
GET_PAGE_BODY = struct.Struct("<IIQ")          # pg, page_no, read_lsn
PAGE_BODY = struct.Struct("<IIQQ")             # page_no, page_size, page_lsn, read_lsn
SET_EPOCH_BODY = struct.Struct("<QQ")          # new volume_epoch, new membership_epoch
OK_BODY = struct.Struct("<QQQ")                # volume_epoch, membership_epoch, value
TRUNCATE_BODY = struct.Struct("<IIQQ")         # pg, reserved, after_lsn, through_lsn: drop (after, through]
SCL_BODY = struct.Struct("<IIQ")               # pg, reserved, scl
FETCH_BODY = struct.Struct("<IIQQ")            # pg, max_bytes, after_lsn, through_lsn
RECORDS_BODY = struct.Struct("<IIQ")           # pg, record_count, scl of the sender
ERROR_BODY = struct.Struct("<HH")              # code, reserved
CREATE_SEGMENT_BODY = struct.Struct("<IIQ")    # pg, page_size, pages_per_pg
SET_LWM_BODY = struct.Struct("<IIQ")           # pg, reserved, lwm (PGMRPL)
LIST_RECORDS_BODY = struct.Struct("<IIQ")      # pg, max_count, after_lsn
RECORD_LIST_BODY = struct.Struct("<IIQQQ")     # pg, count, scl, vdl_hint, last_at_or_below
RECORD_LIST_ENTRY = struct.Struct("<QQB7x")    # lsn, prev_lsn_pg, flags, pad
RING_ATTACH_BODY = struct.Struct("<QQ")        # ring_id, size of the ring file
APPEND_RING_BODY = struct.Struct("<QQII")      # ring_id, offset, length, crc32c of the slot
RING_PATH_MAX = 4096
RINGS_PER_CONNECTION_MAX = 4
VOLUME_HINT_BODY = struct.Struct("<Q")         # vdl
META_BODY = struct.Struct("<Q")                # version (0 with an empty value: absent)
META_PUT_BODY = struct.Struct("<QH")           # version, key_length; then key, then value
SET_MEMBERS_BODY = struct.Struct("<I")         # pg; then a peer list
PEER_COUNT = struct.Struct("<I")               # a peer list: count, then per peer
PEER_LENGTH = struct.Struct("<H")              #   length + UTF-8 address
assert RECORD_LIST_ENTRY.size == 24

# Limits of the variable-size bodies.  A PG has 6 members, a membership change briefly 11
# (the old and the new set); the rest is room for tests and tools.
PEERS_MAX = 32
PEER_ADDRESS_BYTES_MAX = 1024
LIST_RECORDS_COUNT_MAX = 65536
META_KEY_BYTES_MAX = 256
META_VALUE_BYTES_MAX = 1024 * 1024

# Error codes carried by ERROR frames, each mapped to the exception the client raises.
ERROR_MALFORMED = 1        # the frame failed validation; the connection is closed
ERROR_STALE_EPOCH = 2      # an epoch older than the node's
ERROR_EPOCH_AHEAD = 3      # an epoch newer than the node's: SET_EPOCH first
ERROR_UNKNOWN_SEGMENT = 4  # no such (volume, pg) on this node
ERROR_READ_POINT = 5       # read point above SCL or below the low-water mark
ERROR_BAD_REQUEST = 6      # well-formed but impossible (wrong page size, bad range)
ERROR_CORRUPT = 7          # the node's copy is damaged and awaits repair
ERROR_INTERNAL = 8         # a bug in the node; it keeps serving other connections


class StaleEpochError(errors.AuroraError):
    """A request carried an epoch older than the node's: the sender has been fenced."""


class EpochAheadError(errors.AuroraError):
    """A request carried an epoch newer than the node's; the node needs SET_EPOCH first."""


class UnknownSegmentError(errors.AuroraError):
    """The node hosts no segment for that (volume, PG)."""


class ReadPointError(errors.AuroraError):
    """The read point is above the node's SCL or below its low-water mark."""


class BadRequestError(errors.AuroraError, ValueError):
    """A well-formed request that cannot be served as asked."""


class RemoteError(errors.AuroraError):
    """The node reported an error it has no more specific class for."""


ERROR_CLASSES = {
    ERROR_MALFORMED: errors.FormatError,
    ERROR_STALE_EPOCH: StaleEpochError,
    ERROR_EPOCH_AHEAD: EpochAheadError,
    ERROR_UNKNOWN_SEGMENT: UnknownSegmentError,
    ERROR_READ_POINT: ReadPointError,
    ERROR_BAD_REQUEST: BadRequestError,
    ERROR_CORRUPT: errors.CorruptionError,
    ERROR_INTERNAL: RemoteError,
}
ERROR_CODES = {cls: code for code, cls in ERROR_CLASSES.items()}


class Frame:
    """One decoded frame.  ``body`` is a memoryview into the receive buffer's copy."""

    __slots__ = ("type", "request_id", "volume_id", "volume_epoch", "membership_epoch", "body")

    def __init__(self, type, request_id, volume_id, volume_epoch, membership_epoch, body):
        self.type = type
        self.request_id = request_id
        self.volume_id = volume_id
        self.volume_epoch = volume_epoch
        self.membership_epoch = membership_epoch
        self.body = body

    def __repr__(self):
        return "Frame(%s, request_id=%d, volume=%d, epochs=%d/%d, body=%d bytes)" % (
            FRAME_NAMES.get(self.type, self.type), self.request_id, self.volume_id,
            self.volume_epoch, self.membership_epoch, len(self.body))


def encode_frame(type, body=b"", request_id=0, volume_id=0, volume_epoch=0,
                 membership_epoch=0):
    """One frame as bytes.  ``body`` may be bytes or a list of buffers (joined once)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = b"".join(body)
    length = FRAME_HEADER_SIZE + len(body)
    if length > FRAME_LENGTH_MAX:
        raise errors.LengthError("frame of %d bytes exceeds the limit of %d"
                                 % (length, FRAME_LENGTH_MAX))
    header = bytearray(FRAME_MAGIC_HEADER.pack(length, type, 0, 0, request_id, volume_id,
                                               volume_epoch, membership_epoch))
    crc = crc32c(body, crc32c(memoryview(header)[FRAME_CRC_START:]))
    struct.pack_into("<I", header, 8, _native.crc_mask(crc))
    return bytes(header) + bytes(body)



def decode_frame(data):
    """Decode exactly one whole frame from ``data`` (bytes-like)."""
    data = memoryview(data)
    if len(data) < FRAME_HEADER_SIZE:
        raise errors.TruncatedError("frame header needs %d bytes, got %d"
                                    % (FRAME_HEADER_SIZE, len(data)), 0)
    (length, type, flags, crc, request_id, volume_id, volume_epoch,
     membership_epoch) = FRAME_MAGIC_HEADER.unpack_from(data)
    if length < FRAME_HEADER_SIZE or length > FRAME_LENGTH_MAX:
        raise errors.LengthError("frame length %d outside [%d, %d]"
                                 % (length, FRAME_HEADER_SIZE, FRAME_LENGTH_MAX), 0)
    if length != len(data):
        cls = errors.TruncatedError if length > len(data) else errors.LengthError
        raise cls("frame length field says %d bytes, got %d" % (length, len(data)), 0)
    if _native.crc_mask(crc32c(data[FRAME_CRC_START:])) != crc:
        raise errors.ChecksumError("frame CRC32C mismatch", 8)
    if flags != 0:
        raise errors.FlagsError("frame flags 0x%04x are not zero" % flags, 6)
    if type not in FRAME_NAMES:
        raise errors.UnknownTypeError("unknown frame type %d" % type, 4)
    return Frame(type, request_id, volume_id, volume_epoch, membership_epoch,
                 data[FRAME_HEADER_SIZE:])


class FrameReader:
    """Sans-IO reassembly: feed bytes as they arrive, take whole frames out.

    The length field is checked before any body is buffered, so a peer cannot make the
    reader hold more than FRAME_LENGTH_MAX bytes.
    """

    def __init__(self):
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += data

    def frames(self):
        """Yield every complete frame buffered so far; raise FormatError on a bad one."""
        buffer = self._buffer
        while len(buffer) >= 4:
            (length,) = struct.unpack_from("<I", buffer)
            if length < FRAME_HEADER_SIZE or length > FRAME_LENGTH_MAX:
                raise errors.LengthError("frame length %d outside [%d, %d]"
                                         % (length, FRAME_HEADER_SIZE, FRAME_LENGTH_MAX), 0)
            if len(buffer) < length:
                return
            # One copy out of the buffer (bytes(buffer[:length]) made two).
            with memoryview(buffer) as whole:
                data = bytes(whole[:length])
            frame = decode_frame(data)
            if len(buffer) == length:
                buffer.clear()
            else:
                del buffer[:length]
            yield frame

    @property
    def buffered_bytes(self):
        return len(self._buffer)

    @property
    def buffered(self):
        """The bytes buffered and not yet taken as frames: a native reader (the node's APPEND
        lane) serves frames from them directly, then discard()s what it used."""
        return self._buffer

    def discard(self, count):
        """Drop the first ``count`` buffered bytes."""
        del self._buffer[:count]


def error_body(code, message):
    return ERROR_BODY.pack(code, 0) + message.encode("utf-8", "replace")[:4096]


def raise_error_frame(frame):
    """Raise the exception an ERROR frame stands for."""
    code, _ = ERROR_BODY.unpack_from(frame.body)
    message = bytes(frame.body[ERROR_BODY.size:]).decode("utf-8", "replace")
    raise ERROR_CLASSES.get(code, RemoteError)(message)


def encode_peers(peers):
    """A peer list: peer_count:u32, then per peer length:u16 + UTF-8 address."""
    peers = list(peers)
    if len(peers) > PEERS_MAX:
        raise ValueError("%d peers, at most %d" % (len(peers), PEERS_MAX))
    out = [PEER_COUNT.pack(len(peers))]
    for address in peers:
        data = address.encode("utf-8")
        if not data or len(data) > PEER_ADDRESS_BYTES_MAX:
            raise ValueError("peer address %r: 1 to %d bytes of UTF-8" % (address, PEER_ADDRESS_BYTES_MAX))
        out.append(PEER_LENGTH.pack(len(data)))
        out.append(data)
    return b"".join(out)


def decode_peers(body, offset):
    """(list of addresses, offset after the list) from a peer list at ``offset`` of ``body``.

    Every count and length is checked against the body and the limits before use: a list
    that runs past the body is a LengthError (malformed frame), an impossible count or
    address a BadRequestError."""
    if len(body) < offset + PEER_COUNT.size:
        raise errors.LengthError("peer list needs %d bytes at offset %d, body has %d"
                                 % (PEER_COUNT.size, offset, len(body)), offset)
    (count,) = PEER_COUNT.unpack_from(body, offset)
    if count > PEERS_MAX:
        raise BadRequestError("%d peers in one PG, at most %d" % (count, PEERS_MAX))
    offset += PEER_COUNT.size
    peers = []
    for _ in range(count):
        if len(body) < offset + PEER_LENGTH.size:
            raise errors.LengthError("peer list truncated at offset %d" % offset, offset)
        (length,) = PEER_LENGTH.unpack_from(body, offset)
        offset += PEER_LENGTH.size
        if length == 0 or length > PEER_ADDRESS_BYTES_MAX:
            raise BadRequestError("peer address of %d bytes; 1 to %d allowed" % (length, PEER_ADDRESS_BYTES_MAX))
        if len(body) < offset + length:
            raise errors.LengthError("peer address runs past the body at offset %d" % offset, offset)
        try:
            address = bytes(body[offset:offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("peer address at offset %d is not UTF-8" % offset) from None
        if not (address.startswith("unix:") or address.startswith("tcp:")):
            raise BadRequestError("peer address %r: expected unix:PATH or tcp:HOST:PORT" % address)
        peers.append(address)
        offset += length
    return peers, offset


def status_body(status):
    return json.dumps(status, sort_keys=True).encode()


def parse_status_body(body):
    return json.loads(bytes(body).decode())

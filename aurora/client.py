"""A blocking client for one storage node (docs/protocol.md).

Used by tests and tools now, and by the writer's drivers later.  Not thread-safe: give each
thread its own client.  Requests may be pipelined with send()/receive(); replies come back in
request order on one connection.
"""
import socket

from aurora import errors, protocol as p
from aurora.node.server import parse_address

RECV_BYTES = 1 << 20


class NodeClient:
    """``tls`` (an aurora.tls.TLSConfig) is used for a ``tcp:`` address: the node must show a
    certificate of the cluster CA naming the host, and is shown this party's.  A ``unix:``
    address never uses TLS (file modes protect it)."""

    def __init__(self, address, timeout=10.0, volume_id=0, volume_epoch=0, membership_epoch=0, tls=None):
        family, sockaddr = parse_address(address)
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(sockaddr)
        except BaseException:
            self.sock.close()
            raise
        if family != socket.AF_UNIX:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                self.sock = tls.wrap_client(self.sock, sockaddr[0], timeout)
        self.reader = p.FrameReader()
        self._frames = []
        self._next_id = 1
        self.volume_id = volume_id
        self.volume_epoch = volume_epoch
        self.membership_epoch = membership_epoch

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- framing -----------------------------------------------------------------------

    def send(self, type, body=b"", volume_id=None, volume_epoch=None, membership_epoch=None):
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        self.sock.sendall(p.encode_frame(
            type, body, request_id,
            self.volume_id if volume_id is None else volume_id,
            self.volume_epoch if volume_epoch is None else volume_epoch,
            self.membership_epoch if membership_epoch is None else membership_epoch))
        return request_id

    def send_raw(self, data):
        self.sock.sendall(data)

    def receive(self, raise_errors=True):
        """The next reply frame; an ERROR frame raises its exception unless told not to."""
        while not self._frames:
            data = self.sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("node at %s closed the connection" % self.address)
            self.reader.feed(data)
            self._frames.extend(self.reader.frames())
        frame = self._frames.pop(0)
        if raise_errors and frame.type == p.FRAME_ERROR:
            p.raise_error_frame(frame)
        return frame

    def request(self, type, body=b"", expect=None, **epochs):
        self.send(type, body, **epochs)
        frame = self.receive()
        if expect is not None and frame.type != expect:
            raise errors.FormatError("expected a %s reply, got %s"
                                     % (p.FRAME_NAMES[expect], p.FRAME_NAMES.get(frame.type, frame.type)))
        return frame

    # ---- requests ----------------------------------------------------------------------

    def create_segment(self, pg, page_size, pages_per_pg, peers=()):
        """Create (or confirm) a segment; ``peers`` are the PG's other members' addresses
        (the node drops its own address if listed).  Returns the OK tuple
        (volume_epoch, membership_epoch, SCL)."""
        body = p.CREATE_SEGMENT_BODY.pack(pg, page_size, pages_per_pg) + p.encode_peers(peers)
        frame = self.request(p.FRAME_CREATE_SEGMENT, body, p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)

    def set_members(self, pg, peers):
        """Replace the PG's peer list at this client's membership epoch (the node takes the
        epoch if it is newer; an older one is refused).  Returns the OK tuple
        (volume_epoch, membership_epoch, number of peers kept)."""
        body = p.SET_MEMBERS_BODY.pack(pg) + p.encode_peers(peers)
        frame = self.request(p.FRAME_SET_MEMBERS, body, p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)

    def list_records(self, pg, after_lsn, max_count=65536):
        """Recovery listing: (scl, vdl_hint, last_at_or_below, entries) with entries a list of
        (lsn, prev_lsn_pg, flags) of the records held with lsn > after_lsn, in LSN order, at
        most ``max_count``; page on with after_lsn = the last entry's LSN."""
        self.send(p.FRAME_LIST_RECORDS, p.LIST_RECORDS_BODY.pack(pg, max_count, after_lsn))
        return self._record_list(self.receive(raise_errors=False))

    def list_records_many(self, asks, window=64):
        """``list_records`` for each (pg, after_lsn, max_count) of ``asks``, pipelined on this
        connection ``window`` at a time (recovery asks every PG of a member at once).  A list
        in the same order of answers, or of the AuroraError an ERROR reply raised."""
        results = [None] * len(asks)
        for start in range(0, len(asks), window):
            # Replies may come out of order (an ERROR leaves at once, a RECORD_LIST after the
            # group commit that makes its SCL durable): each is placed by its request id.
            waiting = {}
            for i in range(start, min(start + window, len(asks))):
                pg, after_lsn, max_count = asks[i]
                waiting[self.send(p.FRAME_LIST_RECORDS, p.LIST_RECORDS_BODY.pack(pg, max_count, after_lsn))] = i
            while waiting:
                frame = self.receive(raise_errors=False)
                i = waiting.pop(frame.request_id, None)
                if i is None:
                    raise errors.FormatError("reply to request %d, which is not waiting" % frame.request_id)
                try:
                    results[i] = self._record_list(frame)
                except errors.AuroraError as exc:
                    results[i] = exc
        return results

    def _record_list(self, frame):
        if frame.type == p.FRAME_ERROR:
            p.raise_error_frame(frame)
        if frame.type != p.FRAME_RECORD_LIST:
            raise errors.FormatError("expected a RECORD_LIST reply, got %s" % p.FRAME_NAMES.get(frame.type, frame.type))
        _, count, scl, vdl_hint, last_at_or_below = p.RECORD_LIST_BODY.unpack_from(frame.body)
        start = p.RECORD_LIST_BODY.size
        if len(frame.body) != start + count * p.RECORD_LIST_ENTRY.size:
            raise errors.LengthError("RECORD_LIST of %d entries in a %d-byte body" % (count, len(frame.body)))
        entries = list(p.RECORD_LIST_ENTRY.iter_unpack(frame.body[start:]))
        return scl, vdl_hint, last_at_or_below, entries

    def volume_hint(self, vdl):
        """Tell the node the volume's VDL (it keeps the highest); returns the hint it holds."""
        frame = self.request(p.FRAME_VOLUME_HINT, p.VOLUME_HINT_BODY.pack(vdl), p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)[2]

    def meta_get(self, key):
        """(version, value bytes) of a metadata key; (0, b"") when the node has none."""
        frame = self.request(p.FRAME_META_GET, _meta_key(key), p.FRAME_META)
        (version,) = p.META_BODY.unpack_from(frame.body)
        return version, bytes(frame.body[p.META_BODY.size:])

    def meta_put(self, key, version, value):
        """Store ``value`` under ``key`` at ``version`` if that is above the stored version
        (durably before the reply); returns the version the node now holds."""
        return self.meta_put_taken(key, version, value)[0]

    def meta_put_taken(self, key, version, value):
        """Like ``meta_put``; returns (version now held, whether the node holds exactly
        ``value`` at ``version`` now: the compare-and-set took)."""
        key = _meta_key(key)
        frame = self.request(p.FRAME_META_PUT, [p.META_PUT_BODY.pack(version, len(key)), key, bytes(value)],
                             p.FRAME_OK)
        _, taken, stored = p.OK_BODY.unpack_from(frame.body)
        return stored, bool(taken)

    def append(self, batch):
        """Send one batch; returns (pg, scl, last_lsn) from the ACK (after the node synced)."""
        frame = self.request(p.FRAME_APPEND, batch, p.FRAME_ACK)
        pg, _, scl, last_lsn = p.ACK_BODY.unpack_from(frame.body)
        return pg, scl, last_lsn

    def append_many(self, batches):
        """Pipeline many batches on this connection; returns every ACK's (pg, scl, last_lsn)."""
        for batch in batches:
            self.send(p.FRAME_APPEND, batch)
        acks = []
        for _ in batches:
            frame = self.receive()
            pg, _, scl, last_lsn = p.ACK_BODY.unpack_from(frame.body)
            acks.append((pg, scl, last_lsn))
        return acks

    def get_page(self, pg, page_no, read_lsn):
        """GetPage@LSN: (page bytes, page LSN)."""
        frame = self.request(p.FRAME_GET_PAGE, p.GET_PAGE_BODY.pack(pg, page_no, read_lsn), p.FRAME_PAGE)
        page_no_back, page_size, page_lsn, _ = p.PAGE_BODY.unpack_from(frame.body)
        page = bytes(frame.body[p.PAGE_BODY.size:])
        if page_no_back != page_no or len(page) != page_size:
            raise errors.FormatError("PAGE reply for page %d of %d bytes, asked for page %d"
                                     % (page_no_back, len(page), page_no))
        return page, page_lsn

    def status(self):
        return p.parse_status_body(self.request(p.FRAME_STATUS, b"", p.FRAME_STATUS_REPLY).body)

    def status_segment(self, pg, volume_id=None):
        """The STATUS entry of one segment of this client's volume."""
        volume_id = self.volume_id if volume_id is None else volume_id
        for segment in self.status()["segments"]:
            if segment["pg"] == pg and segment["volume_id"] == volume_id:
                return segment
        raise KeyError("node at %s holds no segment %d/%d" % (self.address, volume_id, pg))

    def set_epoch(self, volume_epoch, membership_epoch=0, truncations=()):
        """Raise the volume's epoch; ``truncations`` are (pg, after, through) ranges the node
        drops durably before taking the new epoch."""
        from aurora.node.core import TRUNCATION_ENTRY
        body = p.SET_EPOCH_BODY.pack(volume_epoch, membership_epoch) + b"".join(
            TRUNCATION_ENTRY.pack(pg, 0, after, through) for pg, after, through in truncations)
        frame = self.request(p.FRAME_SET_EPOCH, body, p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)

    def truncate(self, pg, after, through):
        frame = self.request(p.FRAME_TRUNCATE, p.TRUNCATE_BODY.pack(pg, 0, after, through), p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)

    def gossip_scl(self, pg, my_scl=0):
        frame = self.request(p.FRAME_GOSSIP_SCL, p.SCL_BODY.pack(pg, 0, my_scl), p.FRAME_GOSSIP_SCL)
        return p.SCL_BODY.unpack_from(frame.body)[2]

    def fetch(self, pg, after, through, max_bytes=1 << 20):
        """Records with after < lsn <= through as one bytes object of back-to-back records,
        plus the peer's SCL and the reply's epochs (the caller must check them)."""
        frame = self.request(p.FRAME_FETCH, p.FETCH_BODY.pack(pg, max_bytes, after, through), p.FRAME_RECORDS)
        _, count, scl = p.RECORDS_BODY.unpack_from(frame.body)
        return bytes(frame.body[p.RECORDS_BODY.size:]), count, scl, frame.volume_epoch

    def set_lwm(self, pg, lwm):
        frame = self.request(p.FRAME_SET_LWM, p.SET_LWM_BODY.pack(pg, 0, lwm), p.FRAME_OK)
        return p.OK_BODY.unpack_from(frame.body)[2]


def _meta_key(key):
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)

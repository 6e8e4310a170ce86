"""The storage node process: a selectors loop around NodeCore with group commit in the loop,
bounded background work when the loop is idle, and the gossip thread (aurora/node/gossip.py).

One lock (``NodeServer.lock``) guards NodeCore and its segments: the loop holds it while it
serves a frame and collects the dirty files, and for each background slice; the gossip thread
holds it only to snapshot and to apply what it fetched.  Network I/O and fdatasync never run
under it (the sync works on descriptors collected under it).

Group commit: replies that must wait for durability (ACKs) are queued, per connection in
request order, with the file descriptors the appends dirtied.  After serving every frame a
round of the loop received, the loop fdatasyncs them itself and sends the ACKs; every batch
that arrives while a sync runs waits in its socket buffer and shares the next one.

The APPEND lane: the APPEND and APPEND_RING frames of a small batch at the front of a
connection's received bytes are served by one native call (_native.AppendLane,
aurora/_append_lane.pxi) that does what the Python path below does for them, ACK queued for
the sync included.  At the first frame it declines, the Python path serves that frame, then
the lane goes on: frames are served in order, whichever path serves them, and the Python path
stays the reference for every reply (tests/test_append_lane.py).

TLS (aurora/tls.py): a TCP listener given a TLSConfig speaks only TLS with a client
certificate of the cluster CA.  Each connection's handshake advances inside this loop as its
bytes arrive (memory BIOs, never a blocking call), is bounded by HANDSHAKE_TIMEOUT_S, and a
client that fails it is logged and disconnected; no frame is served before it succeeds.
"""
import json
import logging
import os
import selectors
import signal
import socket
import ssl
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from aurora import _native, errors, protocol as p, tls as tls_module
from aurora.node.disk import REAL_DISK
from aurora.node.core import NodeCore
from aurora.node.gossip import GOSSIP_INTERVAL_S, Gossiper
from aurora.node import segment as segment_module
from aurora.ring import RingReader

log = logging.getLogger("aurora.node")

RECV_BYTES = 1 << 20
LISTEN_BACKLOG = 512
CONNECTIONS_MAX = 4096
# Background slices: how often, and how much each may do (bounded so the loop stays fast).
# An idle loop runs them back to back while they find work; a busy one still runs one every
# BACKGROUND_INTERVAL_S, so materialization and GC keep up with a steady stream of appends.
BACKGROUND_INTERVAL_S = 0.02
GC_INTERVAL_S = 1.0
MATERIALIZE_PAGES_PER_SLICE = 64
GC_PAGES_PER_SLICE = 4096
# Materializing or collecting a page may wait for the disk (a page fault on a mapping that is
# no longer cached: 5-10 ms each on a busy disk, so 64 of them held the loop for 0.6 s in the
# 1 GiB benchmark).  The page budgets of the next slice halve after a slice longer than this
# and double, up to the maxima above, after one under a quarter of it.
BACKGROUND_SLICE_TARGET_S = 0.02
# A materialization pass gives every page dirtied since the last one a new version.  Begun
# every slice, passes ran back to back and a hot page got a version about every 40 ms: under
# a commit load that was one 4 KiB version write (page faults in the page store's mapping
# included) per commit, the largest share of a node's CPU beside the kernel's.  Passes begin
# at most this often; reads in between build pages from their (longer) chains.  At 0.1 s a
# node spent 0.028-0.031 ms CPU per commit at 16 threads, at 1 s 0.022-0.026 ms
# (tools/commit_cpu.py).  A read point held between two pass targets no longer keeps log
# files from GC at this cadence: Segment._reclaim_step asks for a file pass.
MATERIALIZE_PASS_INTERVAL_S = 1.0
SCRUB_BYTES_PER_SLICE = 16 * 1024   # with 50 slices/s: at most ~800 KB/s of scrubbing
# Log files of different segments synced in parallel by one group commit.
SYNC_THREADS_MAX = 8
PARENT_CHECK_INTERVAL_S = 1.0
ORPHAN_STOP_GRACE_S = 8.0
# Refused TLS clients are logged, at most this many lines a minute (then one line of count),
# so a port scanner cannot fill the disk with them.
TLS_REFUSALS_LOGGED_PER_MINUTE = 20


def parse_address(address):
    """'unix:/path' or 'tcp:host:port' -> (family, sockaddr)."""
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[5:]
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("bad TCP address %r: expected tcp:HOST:PORT" % address)
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port))
    raise ValueError("bad address %r: expected unix:PATH or tcp:HOST:PORT" % address)


def listen(address):
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        directory = os.path.dirname(os.path.abspath(sockaddr))
        # Several nodes of one fleet start at once and share the directory: no check-then-make.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(sockaddr) and stat.S_ISSOCK(os.stat(sockaddr).st_mode):
            os.unlink(sockaddr)   # left by a node that was killed
        old_umask = os.umask(0o177)
        try:
            sock.bind(sockaddr)
        finally:
            os.umask(old_umask)
        os.chmod(sockaddr, 0o600)
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class Connection:
    __slots__ = ("sock", "reader", "out", "closing", "peer", "rings", "tls", "received", "writing",
                 "after_sync", "after_sync_count", "holding")

    def __init__(self, sock, peer, tls=None):
        self.sock = sock
        self.reader = p.FrameReader()
        self.out = bytearray()   # plaintext replies (encrypted by ``tls`` on the way out)
        self.closing = False
        self.peer = peer
        self.rings = {}          # ring_id -> RingReader (a same-host writer's shared memory)
        self.tls = tls           # a tls.ServerSession on a TLS listener
        self.received = 0        # bytes received (a probe that sends none is not logged)
        self.writing = False     # registered for EVENT_WRITE (output is waiting for room)
        # Replies (ACKs) that leave after the next group commit, back to back in request
        # order, how many, and whether this connection is in NodeServer.pending_conns.
        self.after_sync = bytearray()
        self.after_sync_count = 0
        self.holding = False


def _journal_synced(facts):
    """Sync-journal test mode (AURORA_NODE_SYNC_JOURNAL): append the (log file, length)
    facts an fdatasync just made durable, one JSON line each, before any ACK they cover
    leaves.  The harness in tests/test_crash_consistency.py drops every byte not covered."""
    lines = "".join(json.dumps({"path": path, "length": length}) + "\n" for path, length in facts)
    with open(segment_module.SYNC_JOURNAL, "a") as f:
        f.write(lines)


class GroupCommit:
    """fdatasyncs the log files a round of requests dirtied, before their ACKs leave.

    The loop calls ``sync`` itself once per round, after serving every frame that arrived:
    frames that come in while a sync runs wait in the socket buffers and share the next
    one.  Syncing in the loop (not in a thread it hands over to) saves two thread switches
    per commit, which on a small host is most of a commit's latency beside the disk."""

    def __init__(self):
        self.syncs = 0
        self.pool = None

    def sync(self, fds, facts=()):
        """Returns None when every descriptor is durable, else the first error (then nothing
        is acked)."""
        failed = None
        if len(fds) <= 1:
            # The common round: one segment's log file, synced here without a closure.
            for fd in fds:
                try:
                    os.fdatasync(fd)
                except OSError as exc:   # a full or failing disk: never ack what is not durable
                    failed = exc
        else:
            # Several segments' files at once, so the file system can fold their journal
            # commits together.
            errors_seen = []

            def one(fd):
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    errors_seen.append(exc)

            if self.pool is None:
                self.pool = ThreadPoolExecutor(SYNC_THREADS_MAX, thread_name_prefix="aurora-fdatasync")
            list(self.pool.map(one, fds))
            failed = errors_seen[0] if errors_seen else None
        self.syncs += 1
        if facts and failed is None:
            _journal_synced(facts)
        return failed

    def stop(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class NodeServer:
    def __init__(self, data_dir, listen_address, node_id, az, log_file_bytes=None,
                 background=True, gossip=True, gossip_interval_s=GOSSIP_INTERVAL_S, tls=None,
                 append_lane=True):
        family, _ = parse_address(listen_address)
        if tls is not None and family == socket.AF_UNIX:
            raise ValueError("TLS is for TCP listeners; %s is a Unix socket, which file modes "
                             "protect (0600 in a 0700 directory): drop the --tls-* options" % listen_address)
        kwargs = {} if log_file_bytes is None else {"log_file_bytes": log_file_bytes}
        # The TLS contexts are built (and the files read) before anything else starts, so a
        # bad certificate or key stops the node at once with the file named.
        self.tls_context = tls.server_context if tls is not None else None
        if tls is not None:
            tls.client_context
        self.core = NodeCore(data_dir, node_id, az, self_address=listen_address, **kwargs)
        self.lock = threading.Lock()
        # Gossip dials peers with the client side of the same identity.
        self.gossiper = Gossiper(self.core, self.lock, gossip_interval_s, tls=tls) if gossip else None
        self.address = listen_address
        self.listener = listen(listen_address)
        if tls is None and family != socket.AF_UNIX:
            log.warning("listening on %s in plaintext: anyone who reaches this port can append redo, "
                        "change epochs and read pages; give --tls-ca, --tls-cert and --tls-key", listen_address)
        self.handshaking = {}        # fd -> Connection whose TLS handshake is not done
        self.tls_refused = 0
        self._refusals_logged = 0
        self._refusals_unlogged = 0
        self._refusal_window_start = 0.0
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.group_commit = GroupCommit()
        self.pending_fds = []
        self.pending_facts = []      # sync-journal test mode only
        # Connections holding replies for the next sync (Connection.after_sync), in the
        # order they first queued one.
        self.pending_conns = []
        # The native APPEND lane; None serves every frame in Python (the reference, which
        # tests compare the lane with).
        self.lane = _native.AppendLane(REAL_DISK) if append_lane else None
        self.core.append_lane = self.lane
        self.connections = {}
        self.running = False
        self.started = False
        self.background = background
        self._last_gc = 0.0
        self._last_background = 0.0
        self._last_pass_start = 0.0      # when a slice last let materialization passes begin
        self._background_busy = False    # the last slice found work: run the next one soon
        self._materialize_pages = MATERIALIZE_PAGES_PER_SLICE   # page budgets of the next slice
        self._gc_pages = GC_PAGES_PER_SLICE
        # One receive buffer for the loop: recv() of RECV_BYTES allocated (and for 1 MiB,
        # mmap'ed, mremap'ed and munmap'ed) a fresh object for every frame that arrived.
        self._recv_buffer = bytearray(RECV_BYTES)
        self._recv_view = memoryview(self._recv_buffer)

    # ---- loop --------------------------------------------------------------------------

    def serve_forever(self):
        self.running = True
        self.started = True
        if self.gossiper is not None:
            self.gossiper.start()
        try:
            while self.running:
                if not self.background:
                    timeout = 0.1
                elif self._background_busy:
                    timeout = 0.0
                else:
                    timeout = BACKGROUND_INTERVAL_S
                events = self.selector.select(timeout)
                for key, mask in events:
                    if key.data is None:
                        self._accept()
                    else:
                        conn = key.data
                        if mask & selectors.EVENT_READ:
                            self._on_readable(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                            self._flush(conn)
                self._commit_round()
                if self.handshaking:
                    self._expire_handshakes()
                if self.background and (not events or
                                        time.monotonic() - self._last_background >= BACKGROUND_INTERVAL_S):
                    self._background()
        finally:
            self._shutdown()

    def stop(self):
        self.running = False

    def _accept(self):
        for _ in range(64):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            if len(self.connections) >= CONNECTIONS_MAX:
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = None
            if self.tls_context is not None:
                session = tls_module.ServerSession(self.tls_context, time.monotonic())
            conn = Connection(sock, peer, session)
            self.connections[sock.fileno()] = conn
            if session is not None:
                self.handshaking[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn):
        try:
            received = conn.sock.recv_into(self._recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not received:
            if conn.tls is not None and not conn.tls.handshaken and conn.received:
                self._refuse(conn, "closed the connection during the TLS handshake")
            self._close(conn)
            return
        conn.received += received
        data = self._recv_view[:received]
        lane = self.lane
        if conn.tls is not None:
            # TLS connections are served in Python only (their bytes come decrypted).
            lane = None
            data = self._decrypt(conn, bytes(data))
            if not data:
                return
        reader = conn.reader
        declined = False     # the lane stopped at the first frame buffered: Python serves it
        if lane is not None and not conn.closing and not reader.buffered_bytes:
            # The common case: frames served straight from the receive buffer; only what the
            # lane leaves (a partial frame, or the frames from the first it declined on) is
            # copied into the reader.
            data = data[self._run_lane(conn, data):]
            declined = bool(data)
        if data:
            reader.feed(data)     # feed copies the bytes
        try:
            # Each pass serves at least one frame or stops: bounded by the frames received.
            # As ever, a connection that is closing has one more frame served, no more.
            while True:
                if lane is not None and not declined and not conn.closing and reader.buffered_bytes:
                    used = self._run_lane(conn, reader.buffered)
                    if used:
                        reader.discard(used)
                    if conn.closing:
                        break
                declined = False
                if not reader.buffered_bytes:
                    break        # the lane served everything (the common case)
                frame = next(reader.frames(), None)
                if frame is None:
                    break
                self._dispatch(conn, frame)
                if conn.closing:
                    break
        except errors.FormatError as exc:
            # A frame that cannot even be delimited or checked: answer once, drop this
            # connection, keep serving every other one.
            self._send(conn, p.encode_frame(p.FRAME_ERROR, p.error_body(p.ERROR_MALFORMED, str(exc))))
            conn.closing = True
        self._flush(conn)

    def _decrypt(self, conn, data):
        """The plaintext ``data`` completes on a TLS connection (b"" if none yet); a client
        that fails the handshake or breaks TLS is logged and disconnected."""
        session = conn.tls
        handshaken = session.handshaken
        try:
            data = session.receive(data)
        except ssl.SSLError as exc:
            reason = tls_module.describe_failure(exc, "the client", "this node")
            self._refuse(conn, reason if not handshaken else "TLS error after the handshake: %s" % reason)
            # The alert OpenSSL wrote tells the client why; sent if the socket takes it now.
            self._send_wire(conn, session.wire)
            self._close(conn)
            return b""
        except Exception:   # a bug must not take the node down: this connection goes
            log.exception("TLS failure on the connection from %s; disconnected", _peer_text(conn.peer))
            self._close(conn)
            return b""
        if session.handshaken and not handshaken:
            self.handshaking.pop(conn.sock.fileno(), None)
            log.debug("TLS %s from %s (%s)", session.tls.version(), conn.peer, session.peer_name())
        if session.eof:
            conn.closing = True
        if not data:
            self._flush(conn)      # handshake messages
        return data

    def _refuse(self, conn, reason):
        self.tls_refused += 1
        now = time.monotonic()
        if now - self._refusal_window_start >= 60.0:
            if self._refusals_unlogged:
                log.warning("%d more TLS clients refused in the last minute (not logged one by one)",
                            self._refusals_unlogged)
            self._refusal_window_start = now
            self._refusals_logged = self._refusals_unlogged = 0
        if self._refusals_logged < TLS_REFUSALS_LOGGED_PER_MINUTE:
            self._refusals_logged += 1
            log.warning("refused TLS client %s: %s; disconnected", _peer_text(conn.peer), reason)
        else:
            self._refusals_unlogged += 1

    def _expire_handshakes(self):
        now = time.monotonic()
        for conn in [c for c in self.handshaking.values() if now >= c.tls.deadline]:
            if conn.received:
                self._refuse(conn, "TLS handshake not done within %.0f s" % tls_module.HANDSHAKE_TIMEOUT_S)
            self._close(conn)

    def _send_wire(self, conn, wire):
        if wire:
            try:
                del wire[:conn.sock.send(wire)]
            except OSError:
                pass

    def _run_lane(self, conn, data):
        """Serve the front of ``data`` with the APPEND lane; the bytes it used."""
        lane = self.lane
        with self.lock:
            used = None
            try:
                used = lane.serve(data, conn.rings, self.core, conn.after_sync)
            except Exception as exc:  # a bug must not take the node down
                log.exception("internal error in the APPEND lane")
                self._send(conn, p.encode_frame(p.FRAME_ERROR, p.error_body(
                    p.ERROR_INTERNAL, "internal error: %s" % exc)))
                conn.closing = True
            served = lane.frames_served
            if served:
                # As _dispatch does for the replies it holds, under the same lock.
                self.pending_fds.extend(self.core.dirty_fds())
                if segment_module.SYNC_JOURNAL:
                    self.pending_facts.extend(segment_module.SYNC_FACTS)
                    segment_module.SYNC_FACTS.clear()
        if served:
            conn.after_sync_count += served
            if not conn.holding:
                conn.holding = True
                self.pending_conns.append(conn)
        if used is None:
            # The frame it failed on may be half served: like the frame _dispatch fails on, it
            # is consumed, and nothing after it is served (the connection is closing).
            return len(data)
        return used

    def _hold(self, conn, data):
        """Queue ``data`` on ``conn`` until the next group commit."""
        conn.after_sync += data
        conn.after_sync_count += 1
        if not conn.holding:
            conn.holding = True
            self.pending_conns.append(conn)

    def _dispatch(self, conn, frame):
        if frame.type == p.FRAME_RING_ATTACH or frame.type == p.FRAME_APPEND_RING:
            frame = self._ring_frame(conn, frame)
            if frame is None:
                return
        with self.lock:
            try:
                replies = self.core.handle(frame)
            except Exception as exc:  # a bug must not take the node down
                log.exception("internal error serving %r", frame)
                replies = [self.core._error(frame, p.ERROR_INTERNAL, "internal error: %s" % exc, close=True)]
            if any(r.after_sync for r in replies):
                # Collected under the lock, so files the gossip thread dirtied before this
                # reply's SCL was computed are synced before the reply leaves.
                self.pending_fds.extend(self.core.dirty_fds())
                if segment_module.SYNC_JOURNAL:
                    # Taken under the lock with the fds: facts a sync outside the loop
                    # noted earlier were synced under this lock already.
                    self.pending_facts.extend(segment_module.SYNC_FACTS)
                    segment_module.SYNC_FACTS.clear()
        for reply in replies:
            if reply.after_sync:
                self._hold(conn, reply.data)
            else:
                self._send(conn, reply.data)
            if reply.close:
                conn.closing = True

    def _ring_frame(self, conn, frame):
        """Serve RING_ATTACH here (it maps a file: I/O, not the core's business); turn an
        APPEND_RING into the APPEND it stands for.  None when answered already."""
        try:
            if frame.type == p.FRAME_RING_ATTACH:
                if not (p.RING_ATTACH_BODY.size < len(frame.body) <= p.RING_ATTACH_BODY.size + p.RING_PATH_MAX):
                    raise ValueError("RING_ATTACH body of %d bytes" % len(frame.body))
                ring_id, size = p.RING_ATTACH_BODY.unpack_from(frame.body)
                path = bytes(frame.body[p.RING_ATTACH_BODY.size:]).decode("utf-8")
                if not os.path.isabs(path):
                    raise ValueError("ring path %r is not absolute" % path)
                if ring_id not in conn.rings and len(conn.rings) >= p.RINGS_PER_CONNECTION_MAX:
                    raise ValueError("a connection may attach at most %d rings" % p.RINGS_PER_CONNECTION_MAX)
                reader = RingReader(path, size, ring_id)
                old = conn.rings.pop(ring_id, None)
                if old is not None:
                    old.close()
                conn.rings[ring_id] = reader
                self._send(conn, p.encode_frame(p.FRAME_OK, p.OK_BODY.pack(0, 0, size), frame.request_id,
                                                frame.volume_id, frame.volume_epoch, frame.membership_epoch))
                return None
            if len(frame.body) != p.APPEND_RING_BODY.size:
                raise ValueError("APPEND_RING body of %d bytes, expected %d" % (len(frame.body), p.APPEND_RING_BODY.size))
            ring_id, offset, length, crc = p.APPEND_RING_BODY.unpack(frame.body)
            reader = conn.rings.get(ring_id)
            if reader is None:
                raise ValueError("ring %d is not attached on this connection" % ring_id)
            body = reader.read(offset, length, crc)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self._send(conn, p.encode_frame(p.FRAME_ERROR, p.error_body(p.ERROR_BAD_REQUEST, "%s refused: %s" % (
                p.FRAME_NAMES[frame.type], exc)), frame.request_id, frame.volume_id))
            return None
        return p.Frame(p.FRAME_APPEND, frame.request_id, frame.volume_id, frame.volume_epoch,
                       frame.membership_epoch, body)

    def _commit_round(self):
        """Make this round's appends durable, then release the replies waiting for it."""
        if not self.pending_conns:
            return
        fds, conns, facts = set(self.pending_fds), self.pending_conns, self.pending_facts
        self.pending_fds, self.pending_conns, self.pending_facts = [], [], []
        failed = self.group_commit.sync(fds, facts)
        for conn in conns:
            held, count = conn.after_sync, conn.after_sync_count
            conn.after_sync = bytearray()
            conn.after_sync_count = 0
            conn.holding = False
            if conn.sock.fileno() < 0:
                continue
            if failed is None:
                if conn.out:
                    conn.out += held
                else:
                    conn.out = held      # no copy when nothing else waits to be sent
            else:
                # One ERROR in place of each reply held.
                conn.out += p.encode_frame(p.FRAME_ERROR, p.error_body(
                    p.ERROR_INTERNAL, "log sync failed, nothing acknowledged: %s" % failed)) * count
            self._flush(conn)

    def _send(self, conn, data):
        conn.out += data

    def _flush(self, conn):
        out = conn.out if conn.tls is None else conn.tls.seal(conn.out)
        if out:
            try:
                sent = conn.sock.send(out)
                del out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(conn)
                return
        # The selector is told only of changes (its modify() costs a few lookups even when
        # nothing changes, and this runs for every reply).
        if out:
            if not conn.writing:
                self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                conn.writing = True
        else:
            if conn.closing:
                self._close(conn)
                return
            if conn.writing:
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                conn.writing = False

    def _close(self, conn):
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self.connections.pop(fd, None)
        self.handshaking.pop(fd, None)
        for reader in conn.rings.values():
            reader.close()
        conn.rings.clear()
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _background(self):
        now = time.monotonic()
        self._last_background = now
        # GC looks for new work once a second; a log file it has begun to unindex goes on
        # in every slice until it is deleted.
        gc = now - self._last_gc >= GC_INTERVAL_S or self.core.gc_pending
        if gc:
            self._last_gc = now
        start_passes = now - self._last_pass_start >= MATERIALIZE_PASS_INTERVAL_S
        if start_passes:
            self._last_pass_start = now
        self._background_busy = False
        try:
            with self.lock:
                started = time.monotonic()
                work = self.core.background_step(self._materialize_pages, SCRUB_BYTES_PER_SLICE, gc=gc,
                                                 gc_pages=self._gc_pages, start_passes=start_passes)
                self._note_slice(time.monotonic() - started, work)
            self._background_busy = bool(work) or self.core.background_pending
        except Exception:
            log.exception("background work failed; will retry")

    def _note_slice(self, seconds, work):
        if seconds > BACKGROUND_SLICE_TARGET_S:
            self._materialize_pages = max(1, self._materialize_pages // 2)
            self._gc_pages = max(16, self._gc_pages // 2)
        elif work and seconds < BACKGROUND_SLICE_TARGET_S / 4:
            # Only a slice that did work says its budget was affordable.
            self._materialize_pages = min(MATERIALIZE_PAGES_PER_SLICE, self._materialize_pages * 2)
            self._gc_pages = min(GC_PAGES_PER_SLICE, self._gc_pages * 2)
        stats = self.core.background_stats
        stats["slices"] += 1
        stats["seconds_total"] += seconds
        stats["seconds_max"] = max(stats["seconds_max"], seconds)
        if seconds > 0.05:
            stats["slices_over_50ms"] += 1

    def _shutdown(self):
        if self.gossiper is not None and self.gossiper.is_alive():
            self.gossiper.stop()
            self.gossiper.join(timeout=10)
        if self.pending_conns:
            # Clean shutdown: everything queued is made durable and acknowledged first.
            self._commit_round()
        self.group_commit.stop()
        for conn in list(self.connections.values()):
            try:
                conn.sock.setblocking(True)
                conn.sock.settimeout(1.0)
                out = conn.out if conn.tls is None else conn.tls.seal(conn.out)
                if out:
                    conn.sock.sendall(out)
            except OSError:
                pass
            self._close(conn)
        with self.lock:
            self.core.close()
        self.listener.close()
        family, sockaddr = parse_address(self.address)
        if family == socket.AF_UNIX:
            try:
                os.unlink(sockaddr)
            except OSError:
                pass


def watch_parent(server, parent_pid, interval_s=PARENT_CHECK_INTERVAL_S):
    """Stop the node cleanly once the process that started it is gone: an embedded fleet
    must not outlive the program it serves (it is started again by the next one)."""
    def run():
        while server.running or not server.started:
            if os.getppid() != parent_pid:
                log.warning("parent process %d is gone; shutting down", parent_pid)
                server.stop()
                # A clean stop syncs and answers what is queued; on a loaded host it can wait
                # on a gossip request's timeout.  An orphan must not linger: past the grace
                # period it exits as a crash would, which every file of the node survives.
                time.sleep(ORPHAN_STOP_GRACE_S)
                log.warning("clean stop took over %.0f s; exiting now", ORPHAN_STOP_GRACE_S)
                os._exit(1)
            time.sleep(interval_s)

    threading.Thread(target=run, name="aurora-node-parent-watch", daemon=True).start()


def _peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        return "%s:%s" % (peer[0], peer[1])
    return str(peer) or "(unix socket)"


def serve(data_dir, listen_address, node_id, az, log_file_bytes=None, parent_pid=None, tls=None):
    """Run a node in the foreground until SIGTERM or SIGINT (clean) or SIGKILL (crash), or,
    with ``parent_pid``, until that process is gone.  ``tls`` (an aurora.tls.TLSConfig) makes
    a TCP listener TLS-only with client certificates."""
    server = NodeServer(data_dir, listen_address, node_id, az, log_file_bytes, tls=tls)
    if parent_pid:
        watch_parent(server, parent_pid)

    def on_signal(signum, _frame):
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("aurora node %s (%s) serving %s%s from %s" % (node_id, az, listen_address,
                                                       " (TLS, client certificates required)" if tls else "",
                                                       data_dir), flush=True)
    server.serve_forever()
    return 0

"""The writer: a volume opened for writing inside the user's process.

It allocates LSNs, groups changes into mini-transactions (MTRs), ships only redo records to
every protection group's 6 members, turns their ACKs into PGCL, VCL and VDL in the quorum
tracker (C), and wakes committers once VDL covers their commit.  Reads are served from a
buffer pool or by GetPage@LSN from one member whose SCL covers the read point, hedged to a
second member when the first is slow.

LSNs are *dense*: every record's LSN is the previous one + 1.  That makes the whole volume's
log one sequence, so recovery can tell exactly which LSNs exist without replaying anything
(see Volume._recover).

Invariants (DESIGN.md section 2) and where they are kept:
  1. commit() returns only once VDL >= its CPL (QuorumTracker.wait);
  2. the tracker's values only move forward; a new epoch starts a new tracker;
  5. an MTR's records reach the log together, under one lock, with the CPL last;
  6. _recover fences first (a new epoch on a write quorum of every PG), then reads a read
     quorum of fenced members, then truncates (VDL, VDL + LAL] durably under one more epoch,
     all before the first write;
  7. the buffer pool never evicts a page whose LSN is above VDL (BufferPool.evict).
"""
import array
import bisect
import collections
import contextlib
import json
import logging
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from aurora import _native, errors, protocol as p, recovery
from aurora.client import NodeClient
from aurora.node.core import TRUNCATION_ALL_PGS, TRUNCATION_ENTRY
from aurora.node.server import parse_address
from aurora.ring import RING_BYTES_DEFAULT, SharedRing

log = logging.getLogger("aurora.writer")

MEMBERS_PER_PG = 6
WRITE_QUORUM = 4
READ_QUORUM = 3
LAL_DEFAULT = 10_000_000
PAGES_PER_PG_DEFAULT = 2_621_440          # 10 GiB of 4 KiB pages, as in the Aurora paper
COMMIT_TIMEOUT_S_DEFAULT = 30.0
BUFFER_POOL_PAGES_DEFAULT = 16384
HEDGE_DELAY_S_DEFAULT = 0.005
READ_TIMEOUT_S = 5.0
RECONNECT_DELAY_S_MIN = 0.05
RECONNECT_DELAY_S_MAX = 1.0
HINT_INTERVAL_S = 0.1
LWM_RETENTION_SAMPLES_MAX = 1024          # (time, VDL) samples kept for the retention window
RETAINED_BYTES_MAX = 64 * 1024 * 1024      # redo kept for resending to members that reconnect
LIST_PAGE_RECORDS = 65536
RECOVERY_ROUNDS_MAX = 10_000              # bound on LIST_RECORDS paging per member
META_KEY_PREFIX = "volume/"
RECOVERY_PARALLEL_MAX = 16                # recovery requests in flight at once
RECOVERY_POLL_S = 0.02                    # while waiting for gossip to re-replicate recovered redo
PG_RANGES_MAX = 1 << 22                   # batch LSN ranges remembered per PG for read points
READERS_PRUNE_EVERY = 32                  # look for connections of finished threads this often
OPEN_ATTEMPTS = 5                         # opens retried after another writer's metadata won a race
RECV_BYTES = 1 << 20
BOXCAR_BYTES_MAX = _native.BOXCAR_BYTES_MAX   # largest batch the sender makes by merging
KICK_ROUNDS_MAX = 4                       # rounds one kick runs for others before waking the sender
APPEND_WINDOW = int(os.environ.get("AURORA_APPEND_WINDOW", "1"))  # boxcars per PG awaiting a quorum
# ACKs are received in C without the GIL (csrc/acks.h) unless a link uses TLS or
# AURORA_NATIVE_ACKS=0 asks for the Python receive loop.
NATIVE_ACKS = os.environ.get("AURORA_NATIVE_ACKS", "1") != "0"


# ---- quorum round trips that do not wait for stragglers ---------------------------------------

def gather_until(items, fn, enough, failures=None):
    """``fn(item)`` for every item at once; {item: result} of those that answered, returned as
    soon as ``enough(answers)`` holds or every call has finished.  A call that raises OSError
    or AuroraError is a failure (its message goes to ``failures``, a dict, if given).

    Calls still running are left to finish on their own: a member that is slow (a long
    background step, a loaded machine) must not hold up a quorum that the others already
    make, or recovery's time would be the slowest node's, not the quorum's.  Every call is
    bounded by its socket timeout."""
    answers = {}
    if not items:
        return answers
    pool = ThreadPoolExecutor(max_workers=min(RECOVERY_PARALLEL_MAX, len(items)))
    futures = {pool.submit(fn, item): item for item in items}
    try:
        for future in as_completed(futures):
            item = futures[future]
            try:
                answers[item] = future.result()
            except (OSError, errors.AuroraError) as exc:
                if failures is not None:
                    failures[item] = exc
                continue
            if enough(answers):
                break
    finally:
        pool.shutdown(wait=False)
    return answers


# ---- metadata on the nodes, quorum-written ----------------------------------------------------

def meta_read(links, key, need=READ_QUORUM):
    """(version, value dict or None) from at least ``need`` nodes, the highest version wins
    (a read quorum meets every completed write quorum, so ``need`` answers are enough)."""
    def get(link):
        with link.client() as client:
            return client.meta_get(key)

    failed = {}
    got = gather_until(list(links), get, lambda answers: len(answers) >= need, failed)
    answers = list(got.values())
    failures = ["%s (%s)" % (link.node_id, exc) for link, exc in failed.items()]
    if len(answers) < need:
        raise errors.QuorumLost("metadata %r: %d of %d nodes answered, need %d; unreachable: %s"
                                % (key, len(answers), len(links), need, ", ".join(failures)))
    version, value = max(answers, key=lambda a: a[0])
    return version, (json.loads(value.decode()) if version else None)


def meta_write(links, key, version, value, need=WRITE_QUORUM):
    """Store ``value`` under ``version`` on every reachable node; at least ``need`` must take
    it, as a compare-and-set: a node that holds this version (or a newer one) with another
    value refuses.  Raises MetadataConflict when another writer's value has the version on
    enough nodes that this one cannot reach ``need``, QuorumLost when nodes did not answer."""
    data = json.dumps(value, sort_keys=True).encode()

    def put(link):
        with link.client() as client:
            return client.meta_put_taken(key, version, data)[1]

    failed = {}
    got = gather_until(list(links), put, lambda answers: sum(answers.values()) >= need, failed)
    taken = sum(got.values())
    if taken >= need:
        return
    refused = [link.node_id for link, took in got.items() if not took]
    if refused:
        raise errors.MetadataConflict(
            "metadata %r version %d: another writer holds it on %s (taken by %d of %d nodes, need %d)"
            % (key, version, ", ".join(sorted(refused)), taken, len(links), need))
    failures = ["%s (%s)" % (link.node_id, exc) for link, exc in failed.items()]
    raise errors.QuorumLost("metadata %r version %d reached %d of %d nodes, need %d; unreachable: %s"
                            % (key, version, taken, len(links), need, ", ".join(failures)))


# ---- boxcars ---------------------------------------------------------------------------------

# Queued frames with each run of consecutive APPENDs folded into one APPEND per PG (the boxcar:
# every MTR that queued while the sender was busy leaves in one batch per PG); other frames
# stay where they are, as barriers, and only a strictly increasing run merges.  Native
# (csrc/boxcar.c), byte for byte the Python it replaced (tests/test_boxcar_native.py).
coalesce_appends = _native.coalesce_appends


# ---- one member connection --------------------------------------------------------------------

class MemberLink:
    """The writer's view of one storage node: a queue of frames to send, the requests in
    flight, the SCLs it acknowledged, and its connection.  The threads are shared by every
    link of the volume (LinkPump), so a commit wakes one sender, not six."""

    def __init__(self, volume, node_id, az, address, tls=None):
        self.volume = volume
        self.node_id = node_id
        self.az = az
        self.address = address
        self.tls = tls                       # aurora.tls.TLSConfig for a tcp: member
        self.pump = None
        self.queue = collections.deque()     # (frame type, pg, body)
        self.inflight = {}                   # request_id -> (frame type, pg, body)
        self.sock = None
        self.reader = None
        self.connected = False
        self.drop_traffic = False            # test hook: silently lose everything sent
        self.next_request_id = 1
        self.acked_scl = {}                  # pg -> highest SCL this member acknowledged
        self.latency_s = 0.001               # EWMA of GetPage latency
        self.last_error = None
        self.retry_at = 0.0
        self.retry_delay = RECONNECT_DELAY_S_MIN
        self.ring_ok = False                 # attached to the volume's shared-memory ring
        self.ring_refs = {}                  # request_id -> RingSlot announced to this member

    def client(self, timeout=READ_TIMEOUT_S):
        v = self.volume
        return NodeClient(self.address, timeout=timeout, volume_id=v.volume_id if v else 0,
                          volume_epoch=v.epoch if v else 0, tls=self.tls)

    def enqueue(self, frame_type, pg, body):
        if not self.connected and frame_type in (p.FRAME_APPEND, p.FRAME_VOLUME_HINT):
            # A down member gets its redo from the retained buffer when it is back (or from
            # its peers by gossip); queueing it here would only grow without bound.
            return
        self.queue.append((frame_type, pg, body))
        if self.pump is not None:
            self.pump.wake_sender()

    def on_frame(self, frame):
        request = self.inflight.pop(frame.request_id, None)
        slot = self.ring_refs.pop(frame.request_id, None)
        if slot is not None:
            self.volume.ring.release(slot)
        if frame.type == p.FRAME_ACK:
            pg, _, scl, _ = p.ACK_BODY.unpack_from(frame.body)
            self.volume._on_ack(self, pg, scl)
            return
        if frame.type == p.FRAME_OK and request is not None and request[0] == p.FRAME_CREATE_SEGMENT:
            missing = self.volume.segments_missing.get(self.node_id)
            if missing is not None and request[1] in missing:
                missing.discard(request[1])
                self.volume.stats["segments_created_late"] += 1
            return
        if frame.type != p.FRAME_ERROR or request is None:
            return
        code, _ = p.ERROR_BODY.unpack_from(frame.body)
        message = bytes(frame.body[p.ERROR_BODY.size:]).decode("utf-8", "replace")
        frame_type, pg, body = request
        if slot is not None and code == p.ERROR_BAD_REQUEST:
            # The node could not take it from the ring: stop using the ring on this link.
            log.warning("node %s refused a ring slot (%s); sending inline", self.node_id, message)
            self.ring_ok = False
            self.enqueue(frame_type, pg, body)
        elif code == p.ERROR_STALE_EPOCH:
            self.volume._fence("node %s: %s" % (self.node_id, message))
        elif code == p.ERROR_EPOCH_AHEAD and frame_type != p.FRAME_SET_EPOCH:
            # The node missed this writer's recovery: give it the epoch and the truncations
            # first, then the request again.
            self.enqueue(p.FRAME_SET_EPOCH, pg, self.volume._set_epoch_body())
            self.enqueue(frame_type, pg, body)
        elif code == p.ERROR_UNKNOWN_SEGMENT and frame_type == p.FRAME_APPEND:
            self.volume.segments_missing[self.node_id].add(pg)
            self.enqueue(p.FRAME_CREATE_SEGMENT, pg, self.volume._create_segment_body(pg, self))
            self.enqueue(frame_type, pg, body)
        else:
            log.warning("node %s refused %s: %s", self.node_id, p.FRAME_NAMES.get(frame_type), message)


class LinkPump:
    """Two threads serve every MemberLink of a volume: the sender writes each link's queued
    frames with one sendall (APPENDs merged per PG: the boxcar leaves as soon as the sender is
    free, with no added delay) and (re)connects links with backoff; the receiver waits on all
    sockets at once and feeds replies to their links.  A (re)connected member is sent again
    whatever redo it has not acknowledged."""

    def __init__(self, volume, links):
        self.volume = volume
        self.links = list(links)
        for link in self.links:
            link.pump = self
        self.cond = threading.Condition()
        self.pending = False
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.registered = {}                 # link -> socket registered with the selector
        self.registered_version = 0          # bumped (under cond) whenever registered changes
        self.round_wanted = False            # an ACK may have opened a held PG's window
        self.round_asked = False             # a kick found a round running: one more is due
        self.next_request_id = 1             # one counter for every link (sender thread only)
        self.flying = {}                     # pg -> last LSNs of boxcars not yet at a quorum
        self.round_lock = threading.Lock()   # one send round at a time (sender or a committer)
        # Held while a round writes to the links' sockets and while a socket is closed, so a
        # descriptor is never closed (and its number reused) in the middle of a round's send.
        self.io_lock = threading.Lock()
        self.held = False                    # a PG's batches wait for its window to open
        # The native receive path (csrc/acks.h) serves plain sockets only: TLS needs Python.
        self.acks = None
        if NATIVE_ACKS and len(self.links) <= _native.ACKS_LINKS_MAX and \
                all(link.tls is None or link.address.startswith("unix:") for link in self.links):
            self.acks = _native.AckReceiver(len(self.links), volume.tracker)
        self.sender = threading.Thread(target=self._send_loop, name="aurora-sender", daemon=True)
        receive = self._receive_loop if self.acks is None else self._receive_loop_native
        self.receiver = threading.Thread(target=receive, name="aurora-receiver", daemon=True)

    def start(self):
        self.sender.start()
        self.receiver.start()

    def wake_sender(self):
        with self.cond:
            self.pending = True
            self.cond.notify()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify()
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass
        for thread in (self.sender, self.receiver):
            if thread.is_alive():
                thread.join(timeout=5)
        for link in self.links:
            self._close(link)
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()

    # sender

    def _send_loop(self):
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait(self._next_retry_in())
                    if self._retry_due():
                        break
                if self.stopping:
                    return
                self.pending = False
            with self.round_lock:
                self.round_asked = False
                self._round(connect=True)
            self._rounds_asked()     # kicks that found this round running

    def kick(self):
        """Called by a committer right after it handed an MTR to the log: if no round is
        running, send it from this thread (one thread switch less on the commit path);
        otherwise leave word for the thread running the round, which runs one more for it
        before it lets go (_rounds_asked)."""
        self.round_asked = True
        self._rounds_asked()

    def _rounds_asked(self):
        """Run the rounds asked for (``round_asked``) while no other thread runs one.  Whoever
        holds round_lock looks at the flag again after releasing it, and a kick sets the flag
        before it tries the lock, so a batch is never left behind: either the kick gets the
        lock, or the holder still has to look and sees the flag.  Waking the sender thread
        instead, for every commit that found a round running, cost a thread switch and a GIL
        hand-over each at 16 threads.  At most KICK_ROUNDS_MAX rounds here; more are the
        sender's."""
        for _ in range(KICK_ROUNDS_MAX):
            if not self.round_asked or not self.round_lock.acquire(blocking=False):
                return
            try:
                self.round_asked = False
                self._round(connect=False)
            finally:
                self.round_lock.release()
        if self.round_asked:
            self.wake_sender()

    def _round(self, connect):
        shared = self._take_outbox()
        if not shared and not connect:
            # A committer's (or the receiver's) round with no boxcar to send: nearly every
            # commit at 16 threads, whose PG waits for its window.  Frames queued on a link
            # are the sender thread's: whatever queues one wakes it (MemberLink.enqueue), and
            # _connect queues resends within the sender's own round.
            return
        outgoing = []
        announced = []            # (link, request id, ring slot) of this round's notices
        for link in self.links:
            if not link.connected:
                if connect and time.monotonic() >= link.retry_at:
                    self._connect(link)
                if not link.connected:
                    continue      # it gets its redo from the retained buffer on reconnect
            if link.queue or shared:
                data = self._frames_for(link, shared, announced)
                if data is not None:
                    outgoing.append((link, data))
        ring = self.volume.ring
        if announced:
            # Each member a slot is announced to holds it: one hold per slot for all of them,
            # taken before the slot is recorded on the links (a link that fails meanwhile
            # releases only what is recorded) and before anything is sent (no ACK can
            # release a hold that is not there yet).
            for item in shared:
                if item[7]:
                    ring.hold(item[4], item[7])
            for link, request_id, slot in announced:
                link.ring_refs[request_id] = slot
        if outgoing:
            self._send_all(outgoing)
        for item in shared:
            if item[4] is not None:
                ring.release(item[4])     # the round's own hold on the slot

    def _next_retry_in(self):
        waits = [link.retry_at - time.monotonic() for link in self.links if not link.connected]
        return max(0.0, min(waits)) if waits else 0.5

    def _retry_due(self):
        now = time.monotonic()
        return any(not link.connected and now >= link.retry_at for link in self.links)

    def _take_outbox(self):
        """Batches shipped since the last round, merged per PG and framed once: the same bytes
        go to all six members (request ids come from one counter for the whole volume, so
        they stay unique on every link).

        A PG with APPEND_WINDOW boxcars not yet durable at a write quorum keeps its new
        batches back until one is: its members are busy syncing those, and whatever queues
        meanwhile leaves as one boxcar (one frame and one append per member instead of many)
        when the first ACK that makes room arrives."""
        v = self.volume
        outbox = v.outbox
        shared = []
        ring_links = -1          # counted once a PG has something to send
        held_pgs = []
        for pg in list(outbox):
            batches = outbox[pg]
            if not batches:
                continue
            flying = self.flying.get(pg)
            if flying is None:
                flying = self.flying[pg] = collections.deque()
            elif flying:
                pgcl = v.tracker.pgcl(pg)
                while flying and flying[0] <= pgcl:
                    flying.popleft()
            if len(flying) >= APPEND_WINDOW:
                held_pgs.append(pg)
                continue
            if ring_links < 0:
                ring_links = sum(1 for link in self.links if link.ring_ok) if v.ring is not None else 0
            # Merged and framed in one native call; committers may append meanwhile (it
            # empties the deque with popleft, as they append on the right).  The APPEND frame
            # is made only if some link takes the batch inline; _frames_for makes it for a
            # batch the ring has no room for.
            boxcars, self.next_request_id = _native.frame_boxcars(
                batches, self.next_request_id, v.volume_id, v.epoch, v.membership_epoch,
                ring_links != len(self.links))
            for request_id, body, last_lsn, inline in boxcars:
                flying.append(last_lsn)
                slot = notice = None
                if ring_links:
                    slot = v.ring.put(body)
                    if slot is not None:
                        notice = _native.append_ring_frame(v.ring.ring_id, slot.offset, slot.length, slot.crc,
                                                           request_id, v.volume_id, v.epoch, v.membership_epoch)
                # The last fields: what every member's inflight entry holds (one tuple for
                # all six) and how many members the slot is announced to in this round.
                shared.append([pg, request_id, body, inline, slot, notice, (p.FRAME_APPEND, pg, body), 0])
        held = bool(held_pgs)
        self.held = held
        if self.acks is not None:
            self.acks.set_held(held)
        if held:
            # An ACK between the PGCL read above and the flag may have opened a window without
            # anyone seeing the flag: read PGCL again (after the flag, so one of the two sides
            # sees the other) and run another round if so.
            for pg in held_pgs:
                flying = self.flying[pg]
                if flying and flying[0] <= v.tracker.pgcl(pg):
                    self.wake_sender()
                    break
        return shared

    def _request_id(self):
        request_id = self.next_request_id
        self.next_request_id = (request_id + 1) & 0xFFFFFFFF or 1
        return request_id

    def _send_all(self, outgoing):
        """Write each (link, bytes) of a round to its socket: every plain socket with one
        native call, so the GIL is given up once per round, not once per member (each release,
        with many committing threads, is a switch to another thread and a wait to get the GIL
        back); a TLS link encrypts, so it sends on its own."""
        failed = []
        with self.io_lock:
            # Sockets are closed only under io_lock: those taken here stay open until the
            # call returns.  One closed just before shows as None (or fileno -1): skipped.
            live = [(link, sock, data) for link, sock, data in
                    ((link, link.sock, data) for link, data in outgoing)
                    if sock is not None and sock.fileno() >= 0]
            plain = [item for item in live if type(item[1]) is socket.socket]
            if plain:
                errnos = _native.send_all([sock.fileno() for _, sock, _ in plain],
                                          [data for _, _, data in plain])
                failed = [(link, OSError(code, os.strerror(code)))
                          for (link, _, _), code in zip(plain, errnos) if code]
            for link, sock, data in live:
                if type(sock) is not socket.socket:
                    try:
                        sock.sendall(data)
                    except OSError as exc:
                        failed.append((link, exc))
        for link, exc in failed:
            self._disconnected(link, exc)

    def _frames_for(self, link, shared, announced):
        """The bytes this round sends ``link``: its own queued frames, then the round's shared
        batches; None when there is nothing (or the link drops its traffic).  Ring notices
        are counted on their shared item and listed in ``announced`` (link, request id,
        slot) for _round, which holds the slots for the members."""
        items = []
        queue = link.queue
        while queue:
            items.append(queue.popleft())
        if link.drop_traffic:
            return None
        v = self.volume
        frames = []
        # The link's own frames first (resends after a reconnect, SET_EPOCH or CREATE_SEGMENT
        # before the APPEND they unblock), then this round's shared batches.  (Nearly every
        # round has none: six links a round, so no merge pass for an empty queue.)
        if items:
            for frame_type, pg, body in coalesce_appends(items):
                request_id = self._request_id()
                link.inflight[request_id] = (frame_type, pg, body)
                frames.append(_native.encode_frame(frame_type, body, request_id, v.volume_id, v.epoch,
                                                   v.membership_epoch))
        node_id = link.node_id
        member_sets = v.member_sets
        inflight = link.inflight
        ring_ok = link.ring_ok
        ring_frames = inline_frames = 0
        for item in shared:
            pg, request_id, body, inline, slot, notice, request, _ = item
            if node_id not in member_sets.get(pg, ()):
                continue
            inflight[request_id] = request
            if slot is not None and ring_ok:
                item[7] += 1
                announced.append((link, request_id, slot))
                frames.append(notice)
                ring_frames += 1
            else:
                if inline is None:
                    inline = item[3] = _native.encode_frame(p.FRAME_APPEND, body, request_id, v.volume_id,
                                                            v.epoch, v.membership_epoch)
                frames.append(inline)
                inline_frames += 1
        if ring_frames:
            v.stats["ring_frames"] += ring_frames
        if inline_frames:
            v.stats["inline_frames"] += inline_frames
        if not frames or link.sock is None:
            return None
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def _connect(self, link):
        family, sockaddr = parse_address(link.address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(sockaddr)
            if link.tls is not None and family != socket.AF_UNIX:
                # The handshake runs here, within the connect timeout; the TLSStream may be
                # used by this pump's sender and receiver threads at once (aurora/tls.py).
                sock = link.tls.wrap_client(sock, sockaddr[0], sock.gettimeout())
            sock.settimeout(None)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            link.last_error = exc
            link.retry_at = time.monotonic() + link.retry_delay
            link.retry_delay = min(link.retry_delay * 2, RECONNECT_DELAY_S_MAX)
            return
        link.retry_delay = RECONNECT_DELAY_S_MIN
        self._forget_inflight(link)
        if self.volume.ring is not None and family == socket.AF_UNIX:
            self._attach_ring(link, sock)
        link.sock = sock
        link.reader = p.FrameReader()
        link.connected = True
        with self.cond:
            self.registered[link] = sock
            self.registered_version += 1
        self.wake_w.send(b"r")
        # Whatever this member has not acknowledged goes again (duplicates are idempotent).
        resend = self.volume._resend_for(link)
        link.queue.extendleft(reversed(resend))

    def _attach_ring(self, link, sock):
        """RING_ATTACH on a fresh connection, before the receiver watches it: the member maps
        the ring, or it gets its redo inline."""
        v = self.volume
        ring = v.ring
        body = p.RING_ATTACH_BODY.pack(ring.ring_id, ring.size) + ring.path.encode("utf-8")
        attached = False
        try:
            sock.settimeout(2.0)
            sock.sendall(p.encode_frame(p.FRAME_RING_ATTACH, body, 0, v.volume_id, v.epoch, v.membership_epoch))
            reader = p.FrameReader()
            frame = None
            while frame is None:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("node %s closed the connection" % link.node_id)
                reader.feed(data)
                frame = next(reader.frames(), None)
            attached = frame.type == p.FRAME_OK
            if not attached:
                log.warning("node %s cannot map the redo ring: %s; sending inline", link.node_id,
                            bytes(frame.body[p.ERROR_BODY.size:]).decode("utf-8", "replace"))
        except (OSError, errors.AuroraError) as exc:
            log.warning("node %s: ring attach failed (%s); sending inline", link.node_id, exc)
        finally:
            sock.settimeout(None)
        link.ring_ok = attached

    def _forget_inflight(self, link):
        """A connection ended: its requests get no reply; the ring slots announced on it are
        free as far as this member is concerned."""
        link.inflight = {}
        refs = link.ring_refs
        while refs:
            try:
                _, slot = refs.popitem()
            except KeyError:
                break
            self.volume.ring.release(slot)

    def _disconnected(self, link, exc):
        if link.connected:
            link.last_error = exc
        link.connected = False
        self._forget_inflight(link)
        link.retry_at = time.monotonic() + link.retry_delay
        self._close(link)
        self.wake_sender()

    def _close(self, link):
        sock, link.sock = link.sock, None
        with self.cond:
            self.registered.pop(link, None)
            self.registered_version += 1
        if sock is not None:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            with self.io_lock:
                try:
                    if self.acks is not None and type(sock) is socket.socket:
                        # The native receiver reads a duplicate of the descriptor: end the
                        # connection itself, not just this descriptor, so it sees EOF.
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass
            if self.acks is not None:
                try:
                    self.wake_w.send(b"c", socket.MSG_DONTWAIT)
                except OSError:
                    pass

    # receiver

    def _wake_up_round(self, seen_version):
        """What both receivers do first on every wake-up.  If ACKs of the last one opened a
        PG's window, send what it held from this thread (one thread switch less than waking
        the sender; the sender runs it if a round is going on), after all of them, so six ACKs
        make one round.  Returns (the registered links, link -> socket, if they changed since
        ``seen_version``, else None; the version now)."""
        if self.round_wanted:
            self.round_wanted = False
            self.kick()
        if self.registered_version == seen_version:
            return None, seen_version
        with self.cond:
            return dict(self.registered), self.registered_version

    def _receive_loop(self):
        watched = {}
        # One receive buffer for the thread's whole life: recv() of RECV_BYTES allocated (and
        # for a 1 MiB buffer, mmap'ed, mremap'ed and munmap'ed) a fresh object per ACK.
        buffer = bytearray(RECV_BYTES)
        view = memoryview(buffer)
        seen_version = -1
        while not self.stopping:
            wanted, seen_version = self._wake_up_round(seen_version)
            if wanted is not None:
                self._watch(watched, wanted)
            try:
                events = self.selector.select(0.5)
            except (OSError, ValueError):
                continue
            for key, _ in events:
                link = key.data
                if link is None:
                    try:
                        self.wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                try:
                    sock = key.fileobj
                    if type(sock) is socket.socket:
                        data = view[:sock.recv_into(buffer)]
                    else:
                        # A TLSStream: its plaintext, or None while only part of a record
                        # has come (this thread must not wait inside one link's record).
                        data = sock.recv_nowait()
                        if data is None:
                            continue
                    if not data:
                        raise ConnectionError("node %s closed the connection" % link.node_id)
                    link.reader.feed(data)     # feed copies the bytes
                    for frame in link.reader.frames():
                        link.on_frame(frame)
                except (OSError, errors.AuroraError) as exc:
                    if link.sock is key.fileobj:
                        self._disconnected(link, exc)

    def _receive_loop_native(self):
        """The receiver on the native path: AckReceiver.run waits on every connection with the
        GIL released and feeds ACKs to the tracker itself; this loop runs once per event
        (another frame type, a malformed frame, a closed connection, a wake-up, a window an
        ACK opened) and then does the handled ACKs' bookkeeping (_acks_done)."""
        v = self.volume
        rx = self.acks
        slot_of = {link: i for i, link in enumerate(self.links)}
        watched = {}          # link -> [socket, duplicate descriptor the receiver reads]
        pushed = None         # the volume's member_index last given to rx
        seen_version = -1
        try:
            while not self.stopping:
                wanted, seen_version = self._wake_up_round(seen_version)
                if wanted is not None:
                    self._watch_native(watched, wanted, slot_of)
                if v.member_index is not pushed:
                    # Replaced whole (never changed in place) when the metadata changes.
                    pushed = v.member_index
                    rx.clear_members()
                    for pg, indexes in pushed.items():
                        for node_id, index in indexes.items():
                            slot = slot_of.get(v.links.get(node_id))
                            if slot is not None:
                                rx.set_member(slot, pg, index)
                try:
                    kind, i, code, offset = rx.run(self.wake_r.fileno(), 0.5)
                except (OSError, ValueError) as exc:
                    log.warning("ACK receiver: %s", exc)
                    time.sleep(0.01)
                    continue
                self._acks_done(rx.completed())
                if kind == _native.ACKS_EVENT_WAKE:
                    try:
                        self.wake_r.recv(4096)
                    except OSError:
                        pass
                elif kind == _native.ACKS_EVENT_WINDOW:
                    self.round_wanted = True
                elif kind == _native.ACKS_EVENT_PYTHON:
                    self._frames_in_python(watched, self.links[i], i)
                elif kind == _native.ACKS_EVENT_BAD:
                    self._native_lost(watched, self.links[i], i, _native.acks_error(
                        code, "node %s sent a malformed frame at byte %d of the connection"
                        % (self.links[i].node_id, offset), offset))
                elif kind == _native.ACKS_EVENT_CLOSED:
                    link = self.links[i]
                    exc = OSError(code, os.strerror(code)) if code else \
                        ConnectionError("node %s closed the connection" % link.node_id)
                    self._native_lost(watched, link, i, exc)
        finally:
            for link, (sock, fd) in watched.items():
                rx.set_link(slot_of[link], -1)
                os.close(fd)
            watched.clear()

    def _watch_native(self, watched, wanted, slot_of):
        """Make the native receiver read exactly the sockets in ``wanted`` (link -> socket),
        each through a duplicate descriptor that only this thread closes: the sender may
        close a link's socket at any time, and the number could then name another file."""
        rx = self.acks
        for link, (sock, fd) in list(watched.items()):
            if wanted.get(link) is not sock:
                rx.set_link(slot_of[link], -1)
                os.close(fd)
                del watched[link]
        for link, sock in wanted.items():
            if link in watched:
                continue
            with self.io_lock:       # sockets are closed only under it: the number is this one's
                try:
                    fd = os.dup(sock.fileno())
                except (OSError, ValueError):
                    continue         # closed meanwhile: the next registration says so
            rx.set_link(slot_of[link], fd)
            watched[link] = [sock, fd]

    def _frames_in_python(self, watched, link, i):
        """A frame the native receiver leaves to Python: its buffered bytes, or what a link in
        Python mode has to read, go through the link's FrameReader; the link returns to the
        native path once that holds no partial frame."""
        entry = watched.get(link)
        if entry is None:
            return
        sock, fd = entry
        rx = self.acks
        data = rx.take_buffer(i)
        try:
            if not data:
                data = os.read(fd, RECV_BYTES)
                if not data:
                    raise ConnectionError("node %s closed the connection" % link.node_id)
            if link.sock is sock:
                link.reader.feed(data)
                for frame in link.reader.frames():
                    link.on_frame(frame)
        except (OSError, errors.AuroraError) as exc:
            self._native_lost(watched, link, i, exc)
            return
        rx.set_link(i, fd, link.sock is sock and link.reader.buffered_bytes > 0)

    def _native_lost(self, watched, link, i, exc):
        """Link ``i``'s connection failed on the native path: forget its descriptor and, if it
        is still the link's connection, disconnect the link."""
        entry = watched.pop(link, None)
        self.acks.set_link(i, -1)
        if entry is None:
            return
        sock, fd = entry
        os.close(fd)
        if link.sock is sock:
            self._disconnected(link, exc)

    def _acks_done(self, acks):
        """Bookkeeping of ACKs the native receiver handled (the tracker has them already):
        their requests are no longer in flight, their ring slots are free for that member,
        and the member's SCL may let retained redo go."""
        links = self.links
        highest = {}            # pg -> highest SCL among these ACKs
        freed = None            # ring slot -> members that let it go in these ACKs
        for i, request_id, pg, scl in acks:
            link = links[i]
            link.inflight.pop(request_id, None)
            if link.ring_refs:
                slot = link.ring_refs.pop(request_id, None)
                if slot is not None:
                    if freed is None:
                        freed = {}
                    freed[slot] = freed.get(slot, 0) + 1
            if scl > link.acked_scl.get(pg, 0):
                link.acked_scl[pg] = scl
            if scl > highest.get(pg, 0):
                highest[pg] = scl
        if freed:
            # One release per slot, not per ACK: the six ACKs of a boxcar took the ring's lock
            # six times.
            ring = self.volume.ring
            for slot, count in freed.items():
                ring.release(slot, count)
        # Retained redo once per PG, not once per ACK: six ACKs of a boxcar made six passes.
        for pg, scl in highest.items():
            self.volume._trim_if_covered(pg, scl)

    def _watch(self, watched, wanted):
        """Make the selector watch exactly the sockets in ``wanted`` (link -> socket)."""
        for link, sock in list(watched.items()):
            if wanted.get(link) is not sock:
                try:
                    self.selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                del watched[link]
        for link, sock in wanted.items():
            if link not in watched:
                try:
                    self.selector.register(sock, selectors.EVENT_READ, link)
                    watched[link] = sock
                except (KeyError, ValueError, OSError):
                    pass


# ---- buffer pool -------------------------------------------------------------------------------

class BufferPool:
    """Page images shared by every connection of the volume; LRU, bounded, and never evicting a
    page whose latest change is above VDL (invariant 7): that change may exist nowhere else
    yet in a form a reader could see."""

    def __init__(self, capacity_pages):
        self.capacity = capacity_pages
        self.pages = collections.OrderedDict()   # page_no -> [bytes, page_lsn]
        self.hits = 0
        self.misses = 0
        self.evictions = 0                        # pages dropped so far

    def get(self, page_no):
        entry = self.pages.get(page_no)
        if entry is not None:
            self.pages.move_to_end(page_no)
            self.hits += 1
        else:
            self.misses += 1
        return entry

    def put(self, page_no, data, page_lsn, vdl):
        self.pages[page_no] = [data, page_lsn]
        self.pages.move_to_end(page_no)
        if len(self.pages) > self.capacity:
            self.evict(vdl)

    def put_fetched(self, page_no, data, page_lsn, vdl, evictions):
        """Cache an image read from a node without the log lock, unless the pool meanwhile
        got a newer one (a committer wrote the page) or dropped any page (which might have
        been a newer version of this one): then the read is stale and is thrown away."""
        entry = self.pages.get(page_no)
        if self.evictions != evictions or (entry is not None and entry[1] >= page_lsn):
            return
        if entry is None:
            self.put(page_no, data, page_lsn, vdl)

    def evict(self, vdl):
        over = len(self.pages) - self.capacity
        if over <= 0:
            return
        victims = []
        for page_no, entry in self.pages.items():     # least recently used first
            if entry[1] <= vdl:
                victims.append(page_no)
                if len(victims) == over:
                    break
        for page_no in victims:
            del self.pages[page_no]
        self.evictions += len(victims)


# ---- the volume ---------------------------------------------------------------------------

class Volume:
    """A volume of fixed-size pages, opened for writing.  Thread-safe."""

    def __init__(self, cluster, name="main", page_size=_native.PAGE_SIZE_DEFAULT,
                 pages_per_pg=None, lal=LAL_DEFAULT, commit_timeout=COMMIT_TIMEOUT_S_DEFAULT,
                 buffer_pool_pages=BUFFER_POOL_PAGES_DEFAULT, hedge_delay=HEDGE_DELAY_S_DEFAULT,
                 ring_bytes=None, lwm_retention_s=0.0):
        self.cluster = cluster
        self.name = name
        self.commit_timeout = commit_timeout
        self.hedge_delay = hedge_delay
        self._lock = threading.RLock()        # the log: LSN allocation and MTR hand-off
        self._mtrs = threading.local()
        self._readers = {}                    # (thread id, node id) -> NodeClient
        self._readers_lock = threading.Lock()
        self._closed = False
        self._fenced = None
        self._broken = None                   # why the log can take no more MTRs (_break_log)
        self.volume_id = 0
        self.epoch = 0
        self.membership_epoch = 0
        self.links = {}
        self.stats = collections.Counter()
        self._retained_lock = threading.Lock()
        for node in cluster.nodes:
            self.links[node.node_id] = MemberLink(self, node.node_id, node.az, node.address,
                                                  getattr(cluster, "tls", None))
        self.pool = BufferPool(buffer_pool_pages)
        # PGs whose segment a member is known (or feared) to lack: it was down when the PG
        # was created, or refused recovery's listing for want of it.  CREATE_SEGMENT goes to
        # it first thing whenever its link (re)connects (_resend_for), so it gets the segment
        # and catches up by gossip without waiting for an APPEND to that PG to be refused.
        self.segments_missing = {node.node_id: set() for node in cluster.nodes}
        self._segments_seen = set()           # (pg, node id) recovery saw listing (_list_first)
        # Every metadata value this writer writes carries this token, so two writers racing
        # to write the same version never write the same bytes: only one takes it (meta_write).
        self.writer_token = os.urandom(8).hex()
        started = time.monotonic()
        self._open_retrying(page_size, pages_per_pg or cluster.pages_per_pg or PAGES_PER_PG_DEFAULT, lal)
        self.recovery_seconds = time.monotonic() - started
        # Members on this host (Unix sockets) read redo from one shared-memory ring
        # (aurora/ring.py); ring_bytes=0 or AURORA_RING=0 sends everything inline.
        if ring_bytes is None:
            ring_bytes = RING_BYTES_DEFAULT if os.environ.get("AURORA_RING", "1") != "0" else 0
        self.ring = None
        if ring_bytes and any(link.address.startswith("unix:") for link in self.links.values()):
            self.ring = SharedRing(ring_bytes)
        # The links start only now: recovery talks to the nodes on connections of its own.
        self.pump = LinkPump(self, self.links.values())
        self.pump.start()
        self._hint_sent = 0
        self._init_pgmrpl(lwm_retention_s)
        self._ticker = threading.Thread(target=self._tick, name="aurora-writer-tick", daemon=True)
        self._ticker.start()

    # ---- open and recovery -------------------------------------------------------------

    def _all_links(self):
        return list(self.links.values())

    def _open_retrying(self, page_size, pages_per_pg, lal):
        """``_open``, again from a fresh read of the metadata when another writer opening the
        volume at the same moment wrote a metadata version first (the later one then fences
        the earlier, as any second writer does)."""
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return self._open(page_size, pages_per_pg, lal)
            except errors.MetadataConflict:
                if attempt == OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))

    def _write_meta(self, key, meta, version):
        """Make ``meta`` this writer's view at ``version`` and write it to a write quorum."""
        meta = dict(meta, writer=self.writer_token)
        self._apply_meta(meta, version)
        meta_write(self._all_links(), key, version, meta)

    def _open(self, page_size, pages_per_pg, lal):
        key = META_KEY_PREFIX + self.name
        version, meta = meta_read(self._all_links(), key)
        if meta is None:
            meta = {"name": self.name, "volume_id": int.from_bytes(os.urandom(7), "little") or 1,
                    "page_size": page_size, "pages_per_pg": pages_per_pg, "lal": lal, "epoch": 1,
                    "membership_epoch": 0, "pgs": {}, "truncations": []}
            self._write_meta(key, meta, version + 1)
            self._start(vdl=0, next_lsn=1, prev_lsn_pg={})
            self.recovery = {"created": True, "vdl": 0}
            return
        if meta["page_size"] != page_size:
            raise ValueError("volume %r has %d-byte pages, not %d" % (self.name, meta["page_size"], page_size))
        self._apply_meta(meta, version)
        self._recover(key)

    def _apply_meta(self, meta, version):
        self.meta = meta
        self.meta_version = version
        self.volume_id = meta["volume_id"]
        self.page_size = meta["page_size"]
        self.pages_per_pg = meta["pages_per_pg"]
        self.lal = meta["lal"]
        self.epoch = meta["epoch"]
        self.membership_epoch = meta["membership_epoch"]
        self.members = {int(pg): ids for pg, ids in meta["pgs"].items()}
        self.member_sets = {pg: frozenset(ids) for pg, ids in self.members.items()}
        self.member_index = {pg: {n: i for i, n in enumerate(ids)} for pg, ids in self.members.items()}

    def _start(self, vdl, next_lsn, prev_lsn_pg):
        self.tracker = _native.QuorumTracker(MEMBERS_PER_PG, WRITE_QUORUM, vdl)
        self.next_lsn = next_lsn
        self.prev_lsn_pg = dict(prev_lsn_pg)
        # A PG's own records are the only ones its members hold, so a segment's SCL stops at
        # the PG's last record even when VDL is far above it.  To read at a volume read point
        # R, ask for the PG's last LSN <= R: each batch's LSNs are one contiguous run, kept
        # here as (first, last) ranges; recovery leaves the PG's last LSN <= VDL as floor.
        self.pg_floor = dict(prev_lsn_pg)
        self.pg_ranges = {}
        self.retained = {pg: collections.deque() for pg in self.members}
        self.retained_bytes = 0
        self.outbox = {}                      # pg -> deque of batches not yet taken
        self.fresh_pgs = {}                   # pg created by this writer -> bitmap of pages written
        self.highest_cpl = vdl
        # The tracker starts every member at ``vdl`` before any of them has acknowledged
        # anything; recovery fills in which members it saw holding each PG's recovered chain
        # (pg -> node ids), so reads go to those first.  A member that acknowledges a record
        # of this writer (SCL above ``vdl``) holds the chain below it too.
        self.recovered_holders = {}

    def _recover(self, key):
        """Writer recovery (DESIGN.md invariant 6), with no redo replay, in three steps whose
        order is what makes it safe against an old writer that is still alive:

        1. fence: bump the volume epoch in the metadata and on a write quorum of every PG, so
           from then on those members refuse the old writer's APPENDs (it gets STALE_EPOCH
           and raises WriterFenced);
        2. read: list a read quorum of every PG, taken only from members that took the new
           epoch, and find VCL and VDL from the dense LSN sequence;
        3. truncate: record (VDL, VDL + LAL] in the metadata and send it with a second epoch
           bump to a write quorum of every PG, then start above it.

        Reading before fencing would let the old writer get a record acknowledged by 4 of 6
        between the reads and the fence, and the VDL computed from the earlier reads would
        then truncate an acknowledged commit.  After step 1 no member of the read set takes
        anything from the old writer, so every record the old writer ever had acknowledged
        is on one of them (a write quorum of 4 and a read quorum of 3 of 6 intersect) and
        VDL covers it.  See docs/writer.md, "Recovery and fencing"."""
        meta = self.meta
        phases = {}
        started = time.monotonic()
        # Step 1: fence.  The epoch alone; the truncation history rides along so a member
        # that missed an earlier recovery catches up (nodes skip ranges they hold already).
        fenced = self._raise_epoch(key, dict(meta, epoch=meta["epoch"] + 1), "recovery (fencing)")
        phases["fence_s"], started = time.monotonic() - started, time.monotonic()
        # Step 2: read, from fenced members only: a member that has not taken the new epoch
        # may still be accepting the old writer's records and its listing could miss one that
        # is acknowledged a moment later.
        base, listings = self._read_recovery_quorum(fenced)
        phases["read_s"], started = time.monotonic() - started, time.monotonic()
        # The decisions (VCL, VDL, backlinks, truncation range) are sans-IO, shared with the
        # simulator (aurora/recovery.py).
        result = recovery.compute_recovery(self.members, listings, base, self.meta["truncations"], self.lal)
        vcl, vdl, prev_lsn_pg = result.vcl, result.vdl, result.prev_lsn_pg
        through = result.truncate_through
        # Step 3: truncate, under one more epoch.  A member that took the fence but misses
        # this step holds records above VDL that must never be served or gossiped; at the
        # fence's epoch it would take this writer's APPENDs without having dropped them.  At
        # a newer epoch it refuses them (EPOCH_AHEAD) and the writer sends it SET_EPOCH with
        # every truncation first, so no member ever holds this epoch without the truncation.
        truncated = dict(self.meta, epoch=self.meta["epoch"] + 1,
                         truncations=self.meta["truncations"] + [[vdl, through]])
        have_epoch = self._raise_epoch(key, truncated, "recovery (truncating)")
        phases["truncate_s"], started = time.monotonic() - started, time.monotonic()
        holders = self._await_recovered_quorum(prev_lsn_pg, have_epoch)
        phases["await_quorum_s"] = time.monotonic() - started
        # A member that never listed a PG may lack its segment (down when the PG was created,
        # and no APPEND has reached it since): its link sends CREATE_SEGMENT when it connects,
        # which costs nothing where the segment exists.
        for pg, ids in self.members.items():
            for node_id in ids:
                if (pg, node_id) not in self._segments_seen:
                    self.segments_missing[node_id].add(pg)
        # Every LSN up to `through` is now durable or void, so the new writer starts there:
        # its VDL begins at `through` (LAL back-pressure counts from it) and its first record
        # is through + 1.
        self._start(vdl=through, next_lsn=through + 1, prev_lsn_pg=prev_lsn_pg)
        self.recovered_holders = holders
        self.recovery = {"created": False, "base": base, "vcl": vcl, "vdl": vdl,
                         "records_listed": result.records_listed, "truncated": [vdl, through], "epoch": self.epoch,
                         "phases": phases}

    def _raise_epoch(self, key, new_meta, what):
        """Make ``new_meta`` (a higher epoch, maybe a longer truncation history) the volume's:
        durable in the metadata on a write quorum of nodes first, then SET_EPOCH with every
        truncation range to every member.  A write quorum of every PG must take it.  Returns
        the node ids that did (their epoch is now at least the new one, for good)."""
        assert new_meta["epoch"] > self.meta["epoch"], (new_meta["epoch"], self.meta["epoch"])
        self._write_meta(key, new_meta, self.meta_version + 1)
        nodes = sorted({n for ids in self.members.values() for n in ids})
        failures = {}
        done = self._send_epoch(nodes, lambda answers: self._every_pg_has(answers, WRITE_QUORUM), failures)
        for pg, ids in self.members.items():
            if len([n for n in ids if n in done]) < WRITE_QUORUM:
                raise self._quorum_lost(pg, [n for n in ids if n not in done], WRITE_QUORUM, what, failures)
        return done

    def _send_epoch(self, nodes, enough, failures=None):
        """SET_EPOCH (this writer's epoch and every truncation range) to ``nodes`` at once; the
        set of those that took it, returned once ``enough(answers)`` holds (see gather_until)."""
        body = self._set_epoch_body()

        def set_epoch(node_id):
            with self.links[node_id].client() as client:
                client.request(p.FRAME_SET_EPOCH, body, p.FRAME_OK, volume_epoch=self.epoch)

        return set(gather_until(nodes, set_epoch, enough, failures))

    def _per_node(self, pairs, ask, enough):
        """``ask(client, node id, pgs)`` -> {pg: answer} for the pairs of ``pairs`` (pg, node
        id), grouped by node: one connection per node, not one per pair (a volume of 400
        small PGs made recovery open 2,400 connections and take seconds), the nodes at once.
        {(pg, node id): answer} of those that answered, returned once ``enough`` of it holds.
        A node whose connection fails gives nothing."""
        by_node = collections.defaultdict(list)
        for pg, node_id in pairs:
            by_node[node_id].append(pg)

        def ask_node(node_id):
            with self.links[node_id].client() as client:
                return ask(client, node_id, by_node[node_id])

        def flat(got):
            return {(pg, node_id): answer for node_id, answers in got.items() for pg, answer in answers.items()}

        return flat(gather_until(list(by_node), ask_node, lambda got: enough(flat(got))))

    def _list_first(self, client, pgs, after, max_count, node_id=None):
        """{pg: list_records answer} for ``pgs``, pipelined; a PG the node refused is left out.
        With ``node_id``, recovery notes which (PG, member) pairs showed they hold the segment
        (``_segments_seen``); _recover fears the others lack it."""
        answers = client.list_records_many([(pg, after, max_count) for pg in pgs])
        got = {pg: a for pg, a in zip(pgs, answers) if not isinstance(a, errors.AuroraError)}
        if node_id is not None:
            self._segments_seen.update((pg, node_id) for pg in got)
        return got

    def _every_pg_has(self, answered, need):
        """Whether ``need`` members of every PG are in ``answered`` (node ids, or (pg, node
        id) pairs)."""
        for pg, ids in self.members.items():
            if sum(1 for n in ids if n in answered or (pg, n) in answered) < need:
                return False
        return True

    def _read_recovery_quorum(self, fenced):
        """(base, listings) from the members in ``fenced``; a read quorum of each PG must answer.

        Round 1: every member's SCL and VDL hint; everything <= the highest hint is durable,
        so it is the base.  Round 2: every record above the base, paged."""
        pairs = [(pg, n) for pg, ids in self.members.items() for n in ids if n in fenced]

        def first_round(client, node_id, pgs):
            return self._list_first(client, pgs, _native.LSN_MAX, 0, node_id)

        answers = self._per_node(pairs, first_round, lambda got: self._every_pg_has(got, READ_QUORUM))
        short = [pg for pg, ids in self.members.items() if sum((pg, n) in answers for n in ids) < READ_QUORUM]
        if short:
            # Fencing returns at a write quorum of *nodes*, and a node that took the epoch can
            # lack a PG's segment (the PG was created while the node was down and no APPEND
            # has reached it since): it refuses the listing.  Fence that PG's other members
            # too (the rule stays: only members at the new epoch are read) and ask them.
            others = sorted({n for pg in short for n in self.members[pg] if n not in fenced})
            fenced = set(fenced) | self._send_epoch(others, lambda answers: len(answers) == len(others))
            more = [(pg, n) for pg in short for n in self.members[pg] if n in fenced and (pg, n) not in pairs]
            pairs = pairs + more

            def short_ones_have_quorum(got):
                return all(sum((pg, n) in answers or (pg, n) in got for n in self.members[pg]) >= READ_QUORUM
                           for pg in short)

            answers.update(self._per_node(more, first_round, short_ones_have_quorum))
        for pg, ids in self.members.items():
            got = [n for n in ids if (pg, n) in answers]
            if len(got) < READ_QUORUM:
                raise self._quorum_lost(pg, [n for n in ids if n not in got], READ_QUORUM, "recovery")
        base = recovery.recovery_base(a[1] for a in answers.values())
        listings = {}         # pg -> {node id: MemberListing}

        def second_round(client, node_id, pgs):
            listings = {}
            for pg, (scl, hint, below, entries) in self._list_first(client, pgs, base, LIST_PAGE_RECORDS).items():
                listing = listings[pg] = recovery.MemberListing()
                listing.last_at_or_below = below
                listing.entries.extend(entries)
                for _ in range(RECOVERY_ROUNDS_MAX):      # a PG with more: page on, one at a time
                    if len(entries) < LIST_PAGE_RECORDS:
                        break
                    scl, hint, below, entries = client.list_records(pg, entries[-1][0], LIST_PAGE_RECORDS)
                    listing.entries.extend(entries)
            return listings

        # Only members that answered the first round, and only until a read quorum of every
        # PG has listed completely.
        answered = [pair for pair in pairs if pair in answers]
        for (pg, node_id), listing in self._per_node(
                answered, second_round, lambda got: self._every_pg_has(got, READ_QUORUM)).items():
            listings.setdefault(pg, {})[node_id] = listing
        for pg, ids in self.members.items():
            if len(listings.get(pg, {})) < READ_QUORUM:
                raise self._quorum_lost(pg, [n for n in ids if n not in listings.get(pg, {})],
                                        READ_QUORUM, "recovery")
        return base, listings

    def _await_recovered_quorum(self, prev_lsn_pg, have_epoch=None):
        """Recovery counts a record seen on any one member of a read quorum; until gossip has
        copied the recovered chain of every PG to a write quorum it is not durable, and this
        writer must neither hint VDL nor commit on top of it (found by the simulator).

        Members not in ``have_epoch`` (the truncation step returned without them) are sent
        SET_EPOCH again first: peers gossip only at equal epochs, so a recovered record held
        only by a member still at an older epoch could not spread until it has the new one.

        Returns {pg: node ids seen holding that PG's recovered chain} (a write quorum at least)."""
        deadline = time.monotonic() + self.commit_timeout
        have_epoch = set(have_epoch) if have_epoch is not None else None
        body = self._set_epoch_body()
        while True:
            pairs = [(pg, n) for pg, ids in self.members.items() for n in ids]

            def scl_of(client, node_id, pgs):
                if have_epoch is not None and node_id not in have_epoch:
                    client.request(p.FRAME_SET_EPOCH, body, p.FRAME_OK, volume_epoch=self.epoch)
                    have_epoch.add(node_id)
                return {pg: a[0] for pg, a in self._list_first(client, pgs, _native.LSN_MAX, 0, node_id).items()}

            def covered(got):
                return self._every_pg_has({pair for pair, scl in got.items()
                                           if scl >= prev_lsn_pg.get(pair[0], 0)}, WRITE_QUORUM)

            member_scls = collections.defaultdict(list)
            holders = collections.defaultdict(set)
            for (pg, node_id), scl in self._per_node(pairs, scl_of, covered).items():
                member_scls[pg].append(scl)
                if scl >= prev_lsn_pg.get(pg, 0):
                    holders[pg].add(node_id)
            behind = recovery.pgs_below_write_quorum(prev_lsn_pg, member_scls, WRITE_QUORUM)
            if not behind:
                return dict(holders)
            if time.monotonic() >= deadline:
                raise errors.QuorumLost(
                    "recovery: the recovered redo of PG %s is on fewer than %d members after %.1f s "
                    "(members down?); it must reach a write quorum before this writer may commit"
                    % (", ".join(map(str, behind)), WRITE_QUORUM, self.commit_timeout))
            time.sleep(RECOVERY_POLL_S)

    def _set_epoch_body(self):
        # LSNs are volume-wide, so each range holds for every PG: one entry per range, not
        # one per range and PG (a node then makes a SET_EPOCH durable in one write).
        return p.SET_EPOCH_BODY.pack(self.epoch, self.membership_epoch) + b"".join(
            TRUNCATION_ENTRY.pack(TRUNCATION_ALL_PGS, 0, after, through)
            for after, through in self.meta["truncations"])

    def _create_segment_body(self, pg, link):
        peers = [self.links[n].address for n in self.members[pg] if n != link.node_id]
        body = p.CREATE_SEGMENT_BODY.pack(pg, self.page_size, self.pages_per_pg)
        body += struct.pack("<I", len(peers))
        for address in peers:
            data = address.encode()
            body += struct.pack("<H", len(data)) + data
        return body

    # ---- protection groups -------------------------------------------------------------

    def _choose_members(self, pg):
        """Six nodes over three AZs, two per AZ, rotating with the PG so load spreads."""
        by_az = collections.OrderedDict()
        for node in self.cluster.nodes:
            by_az.setdefault(node.az, []).append(node.node_id)
        if len(by_az) < 3 or sum(len(v) for v in by_az.values()) < MEMBERS_PER_PG:
            raise errors.QuorumLost("a protection group needs 6 nodes in 3 AZs; the cluster has %d nodes in %d AZs"
                                    % (sum(len(v) for v in by_az.values()), len(by_az)))
        azs = list(by_az)
        chosen = []
        for i in range(3):
            az_nodes = by_az[azs[(pg + i) % len(azs)]]
            for j in range(2):
                chosen.append(az_nodes[(pg + j) % len(az_nodes)])
        if len(set(chosen)) < MEMBERS_PER_PG:
            raise errors.QuorumLost("cannot place PG %d on 6 distinct nodes" % pg)
        return chosen

    def _ensure_pg(self, pg):
        """Create PG ``pg``'s segments on its members (a write quorum must take them) and
        record the membership in the volume's metadata.  Called with the log lock held."""
        if pg in self.members:
            return
        ids = self._choose_members(pg)
        self.members[pg] = ids
        created = []
        for node_id in ids:
            link = self.links[node_id]
            try:
                with link.client() as client:
                    client.request(p.FRAME_CREATE_SEGMENT, self._create_segment_body(pg, link), p.FRAME_OK)
                created.append(node_id)
            except p.StaleEpochError as exc:
                # A newer writer has recovered the volume: this one is fenced, and says so.
                del self.members[pg]
                self._fence("node %s: %s" % (node_id, exc))
                raise errors.WriterFenced(self._fenced) from None
            except (OSError, errors.AuroraError):
                self.segments_missing[node_id].add(pg)
                continue
        if len(created) < WRITE_QUORUM:
            lost = self._quorum_lost(pg, [n for n in ids if n not in created], WRITE_QUORUM, "creating a segment")
            del self.members[pg]
            raise lost
        meta = dict(self.meta)
        meta["pgs"] = {str(g): m for g, m in self.members.items()}
        try:
            self._write_meta(META_KEY_PREFIX + self.name, meta, self.meta_version + 1)
        except errors.MetadataConflict as exc:
            # A newer writer has written the volume's metadata: it recovered the volume.
            del self.members[pg]
            self._fence(str(exc))
            raise errors.WriterFenced(self._fenced) from None
        self.retained[pg] = collections.deque()
        self.fresh_pgs[pg] = bytearray((self.pages_per_pg + 7) // 8)   # bit per page written
        self.prev_lsn_pg.setdefault(pg, 0)

    def _member_index(self, pg, node_id):
        return self.members[pg].index(node_id)

    # ---- the write path ----------------------------------------------------------------

    def _check_open(self):
        if self._broken:
            raise errors.VolumeClosed(self._broken)
        if self._closed:
            raise errors.VolumeClosed("volume %r is closed" % self.name)
        if self._fenced:
            raise errors.WriterFenced(self._fenced)

    def write(self, page_no, data, offset=0):
        """Stage a change to ``page_no`` in this thread's current MTR."""
        self._check_open()
        data = bytes(data)
        if page_no < 0 or page_no > _native.PAGE_NO_MAX:
            raise ValueError("page number %d out of range" % page_no)
        if offset < 0 or offset + len(data) > self.page_size:
            raise ValueError("write of %d bytes at offset %d does not fit a %d-byte page"
                             % (len(data), offset, self.page_size))
        mtr = getattr(self._mtrs, "changes", None)
        if mtr is None:
            mtr = self._mtrs.changes = {}
        mtr.setdefault(page_no, []).append((offset, data))

    def rollback(self):
        """Drop this thread's staged, uncommitted changes."""
        self._mtrs.changes = {}

    def commit(self, timeout=None):
        """End this thread's MTR (its last record is the CPL) and return its LSN once VDL has
        reached it: durable at 4 of 6 in every PG it touched."""
        lsn = self._log_mtr()
        self.wait_durable(lsn, timeout)
        return lsn

    def commit_nowait(self):
        """End this thread's MTR and hand it to the log without waiting for durability;
        returns its CPL LSN (pass it to wait_durable).  Pipelined commits: the caller can
        release its own locks between the two."""
        return self._log_mtr()

    def commit_async(self):
        """End this thread's MTR now; return a future that resolves to its LSN once durable."""
        from concurrent.futures import Future
        lsn = self._log_mtr()
        future = Future()

        def wait():
            try:
                self.wait_durable(lsn)
                future.set_result(lsn)
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=wait, name="aurora-commit-wait", daemon=True).start()
        return future

    def wait_durable(self, lsn, timeout=None):
        timeout = self.commit_timeout if timeout is None else timeout
        try:
            self.tracker.wait(lsn, timeout)
        except Exception:
            self._check_open()
            if self.tracker.vdl >= lsn:
                return
            raise self._quorum_lost_for(lsn, timeout)

    def _log_mtr(self):
        try:
            lsn = self._append_mtr()
        except ValueError:
            # Another thread fenced this writer (a newer writer recovered the volume) after
            # this MTR passed its check: the failed tracker refuses the LSNs.  Say what happened.
            if self._fenced:
                raise errors.WriterFenced(self._fenced) from None
            raise
        self.pump.kick()
        return lsn

    def _append_mtr(self):
        """Turn this thread's staged changes into one MTR in the log (under the log lock);
        returns its CPL.

        Every committer runs this with the GIL and the log lock held, so its Python is the
        writer's serial part: at 16 threads it was most of the writer's user CPU per commit
        (~45 us on the 2-core host for a one-page MTR).  The buffer pool, read-point ranges,
        retained redo, outbox and counters are therefore updated inline here, once per record
        or PG run, instead of through a helper call each (``_page_for_write``, ``pool.put``,
        ``_remember_range``, ``_ship`` do the same for the rare paths)."""
        mtrs = self._mtrs
        changes = getattr(mtrs, "changes", None) or {}
        mtrs.changes = {}
        pool = self.pool
        pages = pool.pages
        for page_no in changes:
            if page_no not in pages:
                self._prefetch(changes)
                break
        with self._lock:
            if self._closed or self._fenced or self._broken:
                self._check_open()
            records = []   # (pg, page_no, type, payload, new image, page LSN before)
            pages_per_pg = self.pages_per_pg
            encode_change = _native.encode_change
            for page_no in (sorted(changes) if len(changes) > 1 else changes):
                entry = pool.get(page_no)
                old, old_lsn = self._page_load(page_no) if entry is None else entry
                ranges = changes[page_no]
                if len(ranges) == 1:
                    offset, data = ranges[0]
                    new = old[:offset] + data + old[offset + len(data):]
                    if type(new) is not bytes:      # the pool holds bytes; stay immutable
                        new = bytes(new)
                else:
                    image = bytearray(old)
                    for offset, data in ranges:
                        image[offset:offset + len(data)] = data
                    new = bytes(image)
                if new == old:
                    continue
                rtype, payload = encode_change(old, new)
                records.append((page_no // pages_per_pg, page_no, rtype, payload, new, old_lsn))
            if not records:
                return min(self.highest_cpl, self.next_lsn - 1)
            count = len(records)
            tracker = self.tracker
            tracker.wait_lal(self.next_lsn + count - 1, self.lal, self.commit_timeout)
            # Records are grouped by PG and LSNs allocated in that order, so each PG's batch is
            # one increasing run; the MTR's last record, the CPL, closes the whole MTR.
            if count > 1:
                records.sort(key=lambda r: (r[0], r[1]))
            fresh_pgs = self.fresh_pgs
            for r in records:
                if r[0] not in self.members:
                    self._ensure_pg(r[0])
                written = fresh_pgs.get(r[0])
                if written is not None:    # after _ensure_pg: a PG created for this MTR is fresh
                    index = r[1] % pages_per_pg
                    written[index >> 3] |= 1 << (index & 7)
            # Only now: _ensure_pg writes the metadata, which replaces self.members with a new
            # dict, so one taken before it lacked the second PG an MTR created (KeyError after
            # the first PG's LSNs were registered, and every later commit failed: the chaos run).
            members = self.members
            # One batch per PG run, encoded and registered with the tracker by one native call
            # (log_pg_run), without the numpy columns encode_batch and sent would build.
            vdl = tracker.vdl      # read once: a lower VDL only keeps more pages (invariant 7)
            first = self.next_lsn
            cpl = first + count - 1
            prev_lsn_pgs = self.prev_lsn_pg
            pg_ranges = self.pg_ranges
            outbox = self.outbox
            shipped_bytes = batch_bytes = 0
            start = 0
            registered = False
            try:
                # Bounded by count: every pass takes at least one record.
                while start < count:
                    pg = records[start][0]
                    end = start + 1
                    while end < count and records[end][0] == pg:
                        end += 1
                    last = first + (end - start) - 1
                    if end - start == 1:
                        r = records[start]
                        run = (r,)
                        page_nos, types, payloads, prev_lsn_page = [r[1]], [r[2]], [r[3]], [r[5]]
                    else:
                        run = records[start:end]
                        page_nos = [r[1] for r in run]
                        types = [r[2] for r in run]
                        payloads = [r[3] for r in run]
                        prev_lsn_page = [r[5] for r in run]
                    prev_lsn_pg = prev_lsn_pgs.get(pg, 0)
                    if end - start <= _native.PG_RUN_RECORDS_MAX:
                        batch = _native.log_pg_run(tracker, self.volume_id, pg, self.epoch,
                                                   self.membership_epoch, first, prev_lsn_pg, page_nos,
                                                   types, prev_lsn_page, payloads, last == cpl)
                    else:
                        lsns = list(range(first, last + 1))
                        flags = [0] * (end - start - 1) + [_native.FLAG_CPL if last == cpl else 0]
                        batch = _native.encode_batch(self.volume_id, pg, self.epoch, self.membership_epoch,
                                                     lsns, [prev_lsn_pg] + lsns[:-1], prev_lsn_page,
                                                     page_nos, types, flags, payloads)
                        tracker.sent(pg, np.array(lsns, dtype=np.uint64),
                                     np.array([f != 0 for f in flags], dtype=np.uint8))
                    registered = True
                    prev_lsn_pgs[pg] = last
                    # The new images go into the pool above VDL: never evicted until durable.
                    lsn = first
                    for r in run:
                        pages[r[1]] = [r[4], lsn]
                        pages.move_to_end(r[1])
                        lsn += 1
                    ranges = pg_ranges.get(pg)
                    if ranges is not None and len(ranges[0]) < PG_RANGES_MAX:
                        ranges[0].append(first)
                        ranges[1].append(last)
                    else:
                        self._remember_range(pg, first, last)
                    # Shipped once: the sender merges and frames the batch a single time for all
                    # members.
                    size = len(batch)
                    with self._retained_lock:
                        retained = self.retained.get(pg)
                        if retained is None:
                            retained = self.retained[pg] = collections.deque()
                        retained.append((first, last, batch))
                        self.retained_bytes += size
                    shipped_bytes += size * len(members[pg])
                    batch_bytes += size
                    queue = outbox.get(pg)
                    if queue is None:
                        queue = outbox[pg] = collections.deque()
                    queue.append(batch)
                    first = last + 1
                    start = end
            except BaseException as exc:
                if registered:
                    # Some of this MTR's LSNs are registered and next_lsn cannot move
                    # past them: every later MTR would fail with an order error.  Say so
                    # once, clearly, and stop taking MTRs (reopening the volume recovers).
                    self._break_log(exc)
                raise
            if len(pages) > pool.capacity:
                pool.evict(vdl)
            self.next_lsn = cpl + 1
            self.highest_cpl = cpl
            stats = self.stats
            stats["mtrs"] += 1
            stats["records"] += count
            stats["bytes_shipped"] += shipped_bytes
            stats["batch_bytes"] += batch_bytes
            return cpl

    def _remember_range(self, pg, first, last):
        firsts, lasts = self.pg_ranges.setdefault(pg, (array.array("Q"), array.array("Q")))
        if len(firsts) >= PG_RANGES_MAX:
            keep = PG_RANGES_MAX // 2
            self.pg_floor[pg] = lasts[-keep - 1]
            del firsts[:-keep], lasts[:-keep]
        firsts.append(first)
        lasts.append(last)

    def _pg_read_point(self, pg, read_lsn):
        """The PG's last LSN at or below the volume read point ``read_lsn``."""
        ranges = self.pg_ranges.get(pg)
        if ranges is not None:
            index = bisect.bisect_right(ranges[0], read_lsn) - 1
            if index >= 0:
                return min(ranges[1][index], read_lsn)
        floor = self.pg_floor.get(pg, 0)
        return floor if floor <= read_lsn else read_lsn

    def _ship(self, pg, first, last, batch):
        with self._retained_lock:
            retained = self.retained.setdefault(pg, collections.deque())
            retained.append((first, last, batch))
            self.retained_bytes += len(batch)
        self.stats["bytes_shipped"] += len(batch) * len(self.members[pg])
        self.stats["batch_bytes"] += len(batch)
        # Shipped once: the sender merges and frames the batch a single time for all members.
        queue = self.outbox.get(pg)
        if queue is None:
            queue = self.outbox[pg] = collections.deque()
        queue.append(batch)

    def _resend_for(self, link):
        """Frames a (re)connected member still needs: the segments it lacks (CREATE_SEGMENT),
        then every retained batch above its SCL."""
        frames = [(p.FRAME_CREATE_SEGMENT, pg, self._create_segment_body(pg, link))
                  for pg in sorted(self.segments_missing.get(link.node_id, ())) if pg in self.members]
        with self._retained_lock:
            for pg, ids in list(self.members.items()):
                if link.node_id not in ids:
                    continue
                acked = link.acked_scl.get(pg, 0)
                for first, last, batch in list(self.retained.get(pg, ())):
                    if last > acked:
                        frames.append((p.FRAME_APPEND, pg, batch))
        return frames

    def _on_ack(self, link, pg, scl):
        """An ACK received in Python (the native receiver feeds the tracker itself and does
        this bookkeeping in LinkPump._acks_done)."""
        index = self.member_index.get(pg, {}).get(link.node_id)
        if index is None or self._fenced:
            if scl > link.acked_scl.get(pg, 0):
                link.acked_scl[pg] = scl
            return      # a fenced writer's tracker has failed: acks change nothing any more
        # An SCL above everything registered says nothing more (it can only come from a
        # member that has not truncated yet); the tracker refuses it, so clamp.
        tracker = self.tracker
        tracker.ack(pg, index, min(scl, tracker.highest_lsn))
        if self.pump.held:
            self.pump.round_wanted = True     # this ACK may open a PG's window
        self._acked(link, pg, scl)

    def _acked(self, link, pg, scl):
        """Member bookkeeping of an ACK the tracker has had: the highest SCL the member
        reported, and retained redo that every member (or, over the bound, a write quorum)
        now holds."""
        if scl > link.acked_scl.get(pg, 0):
            link.acked_scl[pg] = scl
        self._trim_if_covered(pg, scl)

    def _trim_if_covered(self, pg, scl):
        if self._fenced:
            return
        retained = self.retained.get(pg)
        # Nothing can be trimmed unless this ack covers the oldest retained batch (it may have
        # raised the minimum) or the retained bytes are over the bound.
        if retained and (retained[0][1] <= scl or self.retained_bytes > RETAINED_BYTES_MAX):
            self._trim(pg)

    def _trim(self, pg):
        """Drop retained redo every member has acknowledged; past RETAINED_BYTES_MAX also what
        a write quorum has (stragglers then catch up by gossip)."""
        retained = self.retained.get(pg)
        if not retained:
            return
        scls = [self.links[n].acked_scl.get(pg, 0) for n in self.members[pg]]
        everyone = min(scls)
        quorum = sorted(scls, reverse=True)[WRITE_QUORUM - 1]
        with self._retained_lock:
            while retained and (retained[0][1] <= everyone or
                                (self.retained_bytes > RETAINED_BYTES_MAX and retained[0][1] <= quorum)):
                self.retained_bytes -= len(retained.popleft()[2])

    def _break_log(self, exc):
        """An error inside the log lock after some of an MTR's LSNs were registered with the
        tracker: the log cannot go on (the next MTR's LSNs would collide with them).  Every
        later write, commit and waiting committer gets VolumeClosed naming the cause; what
        was acknowledged stays durable, and reopening the volume recovers the rest."""
        if not self._broken:
            self._broken = ("volume %r can take no more commits: an internal error left its log "
                            "inconsistent (%s: %s); close it and open the volume again"
                            % (self.name, type(exc).__name__, exc))
            log.error(self._broken)
            self.tracker.fail(-15)

    def _fence(self, why):
        if not self._fenced:
            self._fenced = "writer of volume %r (epoch %d) was fenced by a newer writer: %s" % (
                self.name, self.epoch, why)
            log.warning(self._fenced)
            self.tracker.fail(-15)

    # ---- errors that name what is missing ------------------------------------------------

    def _quorum_lost(self, pg, missing, need, what, failures=None):
        """QuorumLost naming the PG, the members missing by AZ and, when known, why each
        failed (a refusal is not the same as a dead node)."""
        az_of = {n.node_id: n.az for n in self.cluster.nodes}
        ids = self.members.get(pg, [])
        by_az = collections.defaultdict(list)
        for node_id in missing:
            by_az[az_of.get(node_id, "?")].append(node_id)
        down = "; ".join("%s: %s down" % (az, ", ".join(nodes)) for az, nodes in sorted(by_az.items()))
        why = ""
        if failures:
            why = " [%s]" % "; ".join("%s: %s" % (n, failures[n]) for n in missing if n in failures)
        return errors.QuorumLost("%s: PG %d has %d of %d members reachable (%s); needs %d%s"
                                 % (what, pg, len(ids) - len(missing), len(ids), down, need, why))

    def _quorum_lost_for(self, lsn, timeout):
        for pg, ids in sorted(self.members.items()):
            scls = self.tracker.member_scls(pg)
            behind = [n for i, n in enumerate(ids) if scls[i] < min(lsn, self.prev_lsn_pg.get(pg, 0))]
            if len(ids) - len(behind) < WRITE_QUORUM:
                return self._quorum_lost(pg, behind, WRITE_QUORUM,
                                         "commit at LSN %d not durable after %.1f s" % (lsn, timeout))
        return errors.QuorumLost("commit at LSN %d not durable after %.1f s (VDL %d)" % (lsn, timeout, self.tracker.vdl))

    # ---- the read path -----------------------------------------------------------------

    @property
    def vdl(self):
        return self.tracker.vdl

    def read(self, page_no, lsn=None):
        """The page as of ``lsn`` (default: the latest, including this writer's own changes
        that are not yet durable)."""
        self._check_open()
        if lsn is None:
            self._prefetch((page_no,))
            with self._lock:
                image = self._page_for_write(page_no)[0]
            staged = (getattr(self._mtrs, "changes", None) or {}).get(page_no)
            if staged:      # this thread sees its own uncommitted writes
                image = bytearray(image)
                for offset, data in staged:
                    image[offset:offset + len(data)] = data
                image = bytes(image)
            return image
        if lsn > self.tracker.vdl:
            raise ValueError("read point %d is above VDL %d" % (lsn, self.tracker.vdl))
        with self.read_point(lsn):
            return self._get_page(page_no, lsn)[0]

    def _prefetch(self, page_nos):
        """Read the pages an MTR changes that are not cached, before taking the log lock, so
        one committer's GetPage round trips do not hold up every other committer."""
        for page_no in page_nos:
            if page_no in self.pool.pages or self._never_written(page_no):
                continue
            evictions = self.pool.evictions
            vdl = self.tracker.vdl
            try:
                data, page_lsn = self._get_page(page_no, vdl)
            except (OSError, errors.AuroraError):
                # Only a warm-up: the locked path checks for fencing first, reads again and
                # raises what is really wrong.
                return
            with self._lock:     # committers put their new images under it
                self.pool.put_fetched(page_no, data, page_lsn, vdl, evictions)

    def _page_for_write(self, page_no):
        """(image, page LSN) of the latest version; the log lock is held."""
        entry = self.pool.get(page_no)
        if entry is None:
            return self._page_load(page_no)
        return entry[0], entry[1]

    def _page_load(self, page_no):
        """(image, page LSN) of a page the pool missed, now cached; the log lock is held."""
        if self._never_written(page_no):
            data, page_lsn = bytes(self.page_size), 0
        else:
            data, page_lsn = self._get_page(page_no, self.tracker.vdl)
        self.pool.put(page_no, data, page_lsn, self.tracker.vdl)
        entry = self.pool.get(page_no)
        return entry[0], entry[1]

    def _never_written(self, page_no):
        """True for a page of a PG this writer created and has not written yet: it is all
        zeros at LSN 0 on every member, so no GetPage round trip is needed."""
        written = self.fresh_pgs.get(page_no // self.pages_per_pg)
        if written is None:
            return False
        index = page_no % self.pages_per_pg
        return not written[index >> 3] & (1 << (index & 7))

    def _get_page(self, page_no, read_lsn):
        pg = page_no // self.pages_per_pg
        ids = self.members.get(pg)
        if ids is None:
            return bytes(self.page_size), 0      # a PG never written: all zero pages
        read_lsn = self._pg_read_point(pg, read_lsn)
        scls = self.tracker.member_scls(pg)
        links = self.links
        start = self.tracker.start_lsn
        holders = self.recovered_holders.get(pg)
        # Covered: the member acknowledged a record of this writer at or above the read point,
        # or it is one recovery saw holding the PG's chain (the tracker starts every member at
        # the recovery's VDL, before any of them acknowledged anything).
        covered = sorted((n for i, n in enumerate(ids)
                          if scls[i] >= read_lsn and links[n].connected
                          and (scls[i] > start or holders is None or n in holders)),
                         key=lambda n: links[n].latency_s)
        # Every other member follows, connected ones first: the tracker's view can still be
        # wrong (a member's segment can lose records after it acknowledged them, and a node
        # refuses a read point above its SCL, so the next member is asked).  Reads use
        # connections of their own, so a member whose link is still connecting is asked too.
        rest = sorted((n for n in ids if n not in covered),
                      key=lambda n: (not links[n].connected, links[n].latency_s))
        return self._hedged_read(pg, page_no, read_lsn, covered + rest)

    def _reader(self, node_id):
        """This thread's GetPage connection to ``node_id``.  Connections are kept per thread
        (a request and its reply must not interleave with another thread's) in one table the
        volume owns, so they are closed with it and with the threads that made them."""
        key = (threading.get_ident(), node_id)
        with self._readers_lock:
            client = self._readers.get(key)
        if client is None:
            client = self.links[node_id].client()
            with self._readers_lock:
                self._readers[key] = client
                if len(self._readers) % READERS_PRUNE_EVERY == 0:
                    alive = {t.ident for t in threading.enumerate()}
                    for k in [k for k in self._readers if k[0] not in alive]:
                        self._readers.pop(k).close()
        return client

    def _drop_reader(self, node_id):
        with self._readers_lock:
            client = self._readers.pop((threading.get_ident(), node_id), None)
        if client is not None:
            client.close()

    def _hedged_read(self, pg, page_no, read_lsn, candidates):
        """GetPage@LSN from the fastest member; a second one is asked too if the first has
        not answered within the hedge delay, and the first answer wins."""
        body = p.GET_PAGE_BODY.pack(pg, page_no, read_lsn)
        failures = []
        pending = {}
        order = list(candidates)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while order or pending:
            if order and (not pending or len(pending) < 2):
                node_id = order.pop(0)
                try:
                    client = self._reader(node_id)
                    client.send(p.FRAME_GET_PAGE, body, volume_id=self.volume_id, volume_epoch=self.epoch)
                    pending[client.sock] = (node_id, client, time.monotonic())
                except (OSError, errors.AuroraError) as exc:
                    self._drop_reader(node_id)
                    failures.append("%s: %s" % (node_id, exc))
                    continue
            wait = self.hedge_delay if order and len(pending) < 2 else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(list(pending), [], [], wait)
            if not ready:
                if time.monotonic() >= deadline:
                    break
                self.stats["hedged_reads"] += 1
                continue
            sock = ready[0]
            node_id, client, started = pending.pop(sock)
            try:
                frame = client.receive()
                page_no_back, page_size, page_lsn, _ = p.PAGE_BODY.unpack_from(frame.body)
                data = bytes(frame.body[p.PAGE_BODY.size:])
                if frame.type != p.FRAME_PAGE or page_no_back != page_no or len(data) != self.page_size:
                    raise errors.FormatError("unexpected reply to GET_PAGE from %s" % node_id)
            except p.StaleEpochError as exc:
                # A newer writer has recovered the volume: this one is fenced, and says so.
                for other_node, _, _ in pending.values():
                    self._drop_reader(other_node)
                self._drop_reader(node_id)
                self._fence("node %s: %s" % (node_id, exc))
                raise errors.WriterFenced(self._fenced) from None
            except (OSError, errors.AuroraError) as exc:
                self._drop_reader(node_id)
                failures.append("%s: %s" % (node_id, exc))
                continue
            link = self.links[node_id]
            link.latency_s = 0.8 * link.latency_s + 0.2 * (time.monotonic() - started)
            for other_node, _, _ in pending.values():   # abandon the slower request
                self._drop_reader(other_node)
            return data, page_lsn
        for other_node, _, _ in pending.values():
            self._drop_reader(other_node)
        raise errors.QuorumLost("page %d at LSN %d: no member of PG %d could serve it (%s)"
                                % (page_no, read_lsn, pg, "; ".join(failures) or "timed out"))

    # ---- background: VDL hints and the low-water mark -----------------------------------

    def _tick(self):
        while not self._closed:
            time.sleep(HINT_INTERVAL_S)
            if self._fenced or self._closed:
                continue
            vdl = self.tracker.vdl
            if vdl > self._hint_sent:
                self._hint_sent = vdl
                body = struct.pack("<Q", vdl)
                members = {n for ids in list(self.members.values()) for n in ids}
                for node_id in members:
                    self.links[node_id].enqueue(p.FRAME_VOLUME_HINT, 0, body)
            self._advance_pgmrpl()

    # ---- PGMRPL: the lowest read point in use, sent as SET_LWM --------------------------
    #
    # Storage nodes garbage-collect page versions and log below the low-water mark a PG's
    # members are told (SET_LWM) and refuse reads below it.  The writer's is the lowest read
    # point any read of this volume may still use: VDL (every read without an explicit LSN
    # reads at VDL), lowered by reads at an explicit older LSN while they run (read_point) and
    # by the retention window ``lwm_retention_s`` (history kept below VDL for later reads at
    # older points; 0, the default, keeps nothing extra).  Per PG it is the PG's last LSN at
    # or below it (_pg_read_point), the read point GetPage uses; to each member at most its
    # acknowledged SCL (a node clamps to its SCL anyway; so a member that is behind is sent the
    # rest once it acknowledges more).  It never goes back, and is sent only when it moved.

    def _init_pgmrpl(self, retention_s):
        if retention_s < 0:
            raise ValueError("lwm_retention_s must be >= 0, not %r" % (retention_s,))
        self.lwm_retention_s = retention_s
        self.pgmrpl = 0                       # the volume read point the LWMs were computed from
        self._pinned = collections.Counter()  # explicit read points in use -> reads using them
        self._pinned_lock = threading.Lock()
        self._vdl_samples = collections.deque()   # (monotonic time, VDL) for the retention window
        self._vdl_seen = None                 # the newest (time, VDL) not sampled yet
        self._lwm_sent = {}                   # (node id, pg) -> LWM last sent to that member

    @contextlib.contextmanager
    def read_point(self, lsn):
        """Hold the read point ``lsn`` for the reads made inside: the writer's PGMRPL (and so
        every member's low-water mark) stays at or below it until the block ends.  A read
        point below PGMRPL is refused at once with ReadPointError: nodes may already have
        collected what it needs."""
        with self._pinned_lock:
            if lsn < self.pgmrpl:
                raise p.ReadPointError(
                    "read point %d of volume %r is below the low-water mark (PGMRPL) %d: storage nodes "
                    "may have garbage-collected the versions it needs; read at or above it, or open the "
                    "volume with a longer lwm_retention_s" % (lsn, self.name, self.pgmrpl))
            self._pinned[lsn] += 1
        try:
            yield lsn
        finally:
            with self._pinned_lock:
                self._pinned[lsn] -= 1
                if not self._pinned[lsn]:
                    del self._pinned[lsn]

    def _retention_bound(self, vdl, now):
        """The highest VDL sampled at least ``lwm_retention_s`` ago (0 if none yet): history
        above it is kept.  Samples are spaced so at most LWM_RETENTION_SAMPLES_MAX are kept."""
        samples = self._vdl_samples
        spacing = max(HINT_INTERVAL_S, self.lwm_retention_s / LWM_RETENTION_SAMPLES_MAX)
        # A VDL is remembered with the time it was first seen; it becomes a sample once the
        # spacing allows (so a VDL that then stays put is released after the window too).
        if vdl > (self._vdl_seen[1] if self._vdl_seen else samples[-1][1] if samples else -1):
            self._vdl_seen = (now, vdl)
        if self._vdl_seen and (not samples or now - samples[-1][0] >= spacing):
            samples.append(self._vdl_seen)
            self._vdl_seen = None
        cutoff = now - self.lwm_retention_s
        while len(samples) > 1 and samples[1][0] <= cutoff:
            samples.popleft()
        return samples[0][1] if samples[0][0] <= cutoff else 0

    def _advance_pgmrpl(self):
        """Raise PGMRPL if it can move, and send SET_LWM to each member whose LWM that (or a
        higher acknowledged SCL) moves.  Runs on the tick thread.

        Computed under the log lock (skipped this tick if a committer holds it): a read at VDL
        under that lock reads VDL and sends its GET_PAGE before letting go, so no LWM computed
        here can pass it.  The warm-up reads outside the lock (_prefetch) may be refused;
        they fall back to the locked path."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            vdl = self.tracker.vdl
            lwm = vdl
            if self.lwm_retention_s:
                lwm = min(lwm, self._retention_bound(vdl, time.monotonic()))
            with self._pinned_lock:
                if self._pinned:
                    lwm = min(lwm, min(self._pinned))
                if lwm > self.pgmrpl:
                    self.pgmrpl = lwm
                lwm = self.pgmrpl
            per_pg = {pg: self._pg_read_point(pg, lwm) for pg in list(self.members)}
        finally:
            self._lock.release()
        for pg, pg_lwm in per_pg.items():
            for node_id in self.members[pg]:
                link = self.links[node_id]
                value = min(pg_lwm, link.acked_scl.get(pg, 0))
                if link.connected and value > self._lwm_sent.get((node_id, pg), 0):
                    self._lwm_sent[(node_id, pg)] = value
                    link.enqueue(p.FRAME_SET_LWM, pg, p.SET_LWM_BODY.pack(pg, 0, value))

    # ---- status and close --------------------------------------------------------------

    def status(self):
        return {
            "name": self.name, "volume_id": self.volume_id, "epoch": self.epoch,
            "vdl": self.tracker.vdl, "vcl": self.tracker.vcl, "next_lsn": self.next_lsn,
            "pgs": {pg: {"members": ids, "scls": self.tracker.member_scls(pg), "pgcl": self.tracker.pgcl(pg)}
                    for pg, ids in self.members.items()},
            "links": {n: {"connected": l.connected, "az": l.az} for n, l in self.links.items()},
            "fenced": self._fenced, "stats": dict(self.stats),
            "buffer_pool": {"pages": len(self.pool.pages), "hits": self.pool.hits, "misses": self.pool.misses},
        }

    def close(self, timeout=5.0):
        if self._closed:
            return
        if not self._fenced:
            try:
                self.tracker.wait(self.highest_cpl, timeout)
            except errors.AuroraError:
                pass
        self._closed = True
        self._stop_links()
        with self._readers_lock:
            readers, self._readers = list(self._readers.values()), {}
        for client in readers:
            client.close()

    def _stop_links(self):
        pump = getattr(self, "pump", None)
        if pump is not None:
            pump.stop()
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

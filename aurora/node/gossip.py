"""Gossip and repair: the node's background thread that fills holes from PG peers.

Every GOSSIP_INTERVAL_S, for each segment that has peers, the thread asks each peer for its
SCL (GOSSIP_SCL).  When a peer was ahead already in the last round, or this segment has holes,
it FETCHes the missing ranges — (our SCL, what a peer held a round ago] and each hole — up to
GOSSIP_FETCH_BYTES_PER_ROUND (the newest records are left to the writer), checks every
record (scan_log: CRC, lengths, type; LSN inside the range asked for; page inside the PG) and
appends the good ones through the same Segment.append as an APPEND, so they reach disk by the
same path: they mark their log files dirty, and the next ACK's dirty_fds() collection syncs
them before it reports an SCL that includes them.

Repair uses the same rounds: a segment marked ``needs_repair`` gets its holes (records the
restart scan found damaged are not indexed, so they are holes) filled as above, damaged copies
of indexed records (found by the scrub or on read) re-fetched and replaced, and damaged page
versions rebuilt from the log or, when the log no longer holds their chain, fetched as page
images by GET_PAGE at the version's LSN.  Once SCL has reached the highest SCL a peer reported
and nothing damaged remains, ``needs_repair`` is cleared durably and the repair recorded in
the segment's status.

Locking: segments and NodeCore are not thread-safe.  The server loop and this thread share one
lock; this thread holds it only to take a snapshot and to apply what it fetched, never across
network I/O.

Epochs: records are accepted only from a peer whose reply carries the node's own volume epoch
and the segment's membership epoch (accept_gossip_records).  A peer of an older epoch may hold
records a writer recovery discarded; a peer of a newer one has truncated what this node still
needs to drop first.
"""
import logging
import threading
import time

import numpy as np

from aurora import errors, protocol as p
from aurora import _native

log = logging.getLogger("aurora.node.gossip")

GOSSIP_INTERVAL_S = 0.05
GOSSIP_IDLE_INTERVAL_S = 1.0      # the longest wait of a node in step with its peers
GOSSIP_FETCH_BYTES_PER_ROUND = 4 * 1024 * 1024     # per segment per round
GOSSIP_FETCHES_PER_ROUND = 32                      # FETCH requests per segment per round
GOSSIP_PAGES_PER_ROUND = 16                        # GET_PAGE repairs per segment per round
GOSSIP_REQUEST_TIMEOUT_S = 2.0
GOSSIP_PEER_BACKOFF_S = 0.25                       # after a peer failed to connect or answer
GOSSIP_RESYNCS_MAX = 64                            # bad records skipped in one RECORDS body
VDL_HINT_PERSIST_INTERVAL_S = 1.0


def accept_gossip_records(volume_epoch, membership_epoch, reply_volume_epoch, reply_membership_epoch):
    """Whether records (or a page image) a peer sent may be stored: only if the reply was
    made at exactly this node's volume epoch and the segment's membership epoch.

    This is the one place the rule lives; the simulator plants bugs here to prove its
    checkers catch a node that takes records from a fenced writer's epoch."""
    return reply_volume_epoch == volume_epoch and reply_membership_epoch == membership_epoch


def scan_fetched_records(body, after, through):
    """(records ndarray, bad count) for the back-to-back records of a RECORDS body: each is
    CRC-checked by scan_log; a bad one is skipped (resync to the next valid record) and
    counted; records outside (after, through] are dropped as a peer bug."""
    view = memoryview(body)
    parts = []
    bad = 0
    position = 0
    for _ in range(GOSSIP_RESYNCS_MAX + 1):
        recs, end, reason = _native.scan_log(view, position, None)
        if len(recs):
            parts.append(recs)
        if reason == "end" or end >= len(view):
            break
        bad += 1
        found = _native.log_resync(view, end + 1)
        if found is None:
            break
        position = found
    if not parts:
        return None, bad
    recs = np.concatenate(parts) if len(parts) > 1 else parts[0]
    inside = (recs["lsn"] > after) & (recs["lsn"] <= through)
    if not inside.all():
        bad += int((~inside).sum())
        recs = recs[inside]
    return recs, bad


class Gossiper(threading.Thread):
    """The gossip and repair thread of one node process."""

    def __init__(self, core, lock, interval_s=GOSSIP_INTERVAL_S, tls=None):
        super().__init__(name="aurora-node-gossip", daemon=True)
        self.core = core
        self.lock = lock
        self.interval_s = interval_s
        self.tls = tls             # the node's TLSConfig: peers on TCP are dialled with it
        self.stopping = threading.Event()
        self.clients = {}          # address -> NodeClient
        self.backoff_until = {}    # address -> monotonic time
        self.rounds = 0
        self._last_hint_persist = time.monotonic()
        # (volume id, pg) -> (highest peer SCL, this segment's top) seen by the last round
        self._last_seen = {}

    def stop(self):
        self.stopping.set()

    def run(self):
        try:
            wait = self.interval_s
            while not self.stopping.wait(wait):
                busy = True
                try:
                    busy = self.round()
                except Exception:   # a bug here must not stop gossip for good
                    log.exception("gossip round failed; will retry")
                # A node in step with its peers backs off (an idle fleet must not spend its
                # CPU asking six peers for their SCL twenty times a second, nor a fleet a
                # writer keeps in step: that polling was a third of a node's CPU per commit);
                # any sign of being stuck behind brings the short interval back.
                wait = self.interval_s if busy else min(wait * 2, GOSSIP_IDLE_INTERVAL_S)
                now = time.monotonic()
                if now - self._last_hint_persist >= VDL_HINT_PERSIST_INTERVAL_S:
                    self._last_hint_persist = now
                    try:
                        self.core.persist_vdl_hints()
                    except OSError:
                        log.exception("could not persist the VDL hint; will retry")
        finally:
            for client in self.clients.values():
                client.close()
            self.clients.clear()

    # ---- one round -----------------------------------------------------------------------

    def round(self):
        """One pass over every segment; True if any was behind its peers or damaged."""
        with self.lock:
            targets = self.core.gossip_targets()
            self.core.gossip_stats["rounds"] += 1
            self.core.gossip_stats["scl_requests"] += sum(len(t["peers"]) for t in targets)
        busy = False
        for target in targets:
            if self.stopping.is_set():
                return busy
            busy = self._gossip_segment(target) or busy
        self.rounds += 1
        return busy

    def _gossip_segment(self, t):
        # Which peers are reachable, at our epochs, and how far their SCL goes.
        answers = []
        for address in t["peers"]:
            frame = self._request(address, t, p.FRAME_GOSSIP_SCL, p.SCL_BODY.pack(t["pg"], 0, t["scl"]),
                                  p.FRAME_GOSSIP_SCL)
            if frame is None:
                continue
            if not accept_gossip_records(t["volume_epoch"], t["membership_epoch"], frame.volume_epoch,
                                         frame.membership_epoch):
                continue
            answers.append((p.SCL_BODY.unpack_from(frame.body)[2], address))
        if not answers:
            return bool(t["holes"] or t["needs_repair"])
        with self.lock:
            self.core.note_peer_scls(t["volume_id"], t["pg"], answers)
        answers.sort(reverse=True)
        peer_scl_max = answers[0][0]
        ranges = list(t["holes"])
        top = max(t["scl"], t["max_lsn"])
        key = (t["volume_id"], t["pg"])
        last = self._last_seen.get(key)
        self._last_seen[key] = (peer_scl_max, top)
        # Only what a peer held a round ago is fetched: while a writer streams, every member
        # is a moment behind one peer or another, and fetching the newest records races the
        # writer's own APPEND of them (which then arrives as a duplicate).  A member that is
        # behind and did not move since the last round is stuck: rounds stay short for it.
        settled = min(peer_scl_max, last[0]) if last is not None else top
        stuck = peer_scl_max > top and (last is None or top <= last[1])
        if settled > top:
            ranges.append((top, settled))
        ranges.extend((lsn - 1, lsn) for lsn in t["damaged_lsns"])
        budget = GOSSIP_FETCH_BYTES_PER_ROUND
        fetches = 0
        for after, through in ranges:
            while budget > 0 and fetches < GOSSIP_FETCHES_PER_ROUND and after < through:
                fetches += 1
                got = self._fetch_range(t, answers, after, through, budget)
                if got is None:
                    break
                size, last = got
                budget -= size
                after = last
        for slot, page_no, lsn in t["corrupt_versions"][:GOSSIP_PAGES_PER_ROUND]:
            self._repair_version(t, answers, slot, page_no, lsn)
        for page_no in t["missing_bases"][:GOSSIP_PAGES_PER_ROUND]:
            self._repair_base(t, answers, page_no)
        if t["needs_repair"]:
            with self.lock:
                if self.core.complete_repair(t["volume_id"], t["pg"], peer_scl_max):
                    log.info("volume %d PG %d repaired from peers; SCL reached %d",
                             t["volume_id"], t["pg"], peer_scl_max)
        return bool(ranges or stuck or t["corrupt_versions"] or t["missing_bases"] or t["needs_repair"])

    def _fetch_range(self, t, answers, after, through, budget):
        """Fetch (after, through] from the first peer that has some of it; append what is
        good.  Returns (bytes received, highest LSN received) or None if no peer had any."""
        for peer_scl, address in answers:
            frame = self._request(address, t, p.FRAME_FETCH,
                                  p.FETCH_BODY.pack(t["pg"], min(budget, 0xFFFFFFFF), after, through),
                                  p.FRAME_RECORDS)
            if frame is None:
                continue
            _, count, _ = p.RECORDS_BODY.unpack_from(frame.body)
            if count == 0:
                continue
            body = bytes(frame.body[p.RECORDS_BODY.size:])
            recs, bad = scan_fetched_records(body, after, through)
            if bad:
                log.warning("peer %s sent %d bad record(s) for volume %d PG %d range (%d, %d]; dropped",
                            address, bad, t["volume_id"], t["pg"], after, through)
                with self.lock:
                    self.core.gossip_stats["records_rejected_bad"] += bad
            if recs is None or len(recs) == 0:
                continue
            with self.lock:
                try:
                    applied = self.core.apply_gossip(t["volume_id"], t["pg"], frame.volume_epoch,
                                                     frame.membership_epoch, body, recs)
                except ValueError as exc:   # records of another PG or page size: a peer bug
                    log.warning("peer %s sent records that do not fit volume %d PG %d: %s",
                                address, t["volume_id"], t["pg"], exc)
                    self.core.gossip_stats["records_rejected_bad"] += len(recs)
                    continue
            if applied is None:
                log.warning("records from %s for volume %d PG %d refused: reply epochs %d/%d",
                            address, t["volume_id"], t["pg"], frame.volume_epoch, frame.membership_epoch)
                continue
            return len(body), int(recs["lsn"].max())
        return None

    def _repair_version(self, t, answers, slot, page_no, lsn):
        with self.lock:
            if self.core.rebuild_version(t["volume_id"], t["pg"], slot, page_no, lsn):
                return
        # Peers serve read points at or above their low-water mark only.  Below ours no read
        # can need this version, so asking at max(lsn, our LWM) gets either this version or
        # the page's newer state at the LWM, which is what reads will need instead.
        self._page_from_peers(t, answers, page_no, max(lsn, t["lwm"]), lsn, lambda frame, page_lsn, page: (
            self.core.install_version(t["volume_id"], t["pg"], frame.volume_epoch, frame.membership_epoch,
                                      slot, page_no, page_lsn, page)))

    def _repair_base(self, t, answers, page_no):
        """A page left without a base (its only version damaged after GC collected the records
        that could rebuild it): a peer's image at this segment's LWM becomes its new version."""
        self._page_from_peers(t, answers, page_no, t["lwm"], 0, lambda frame, page_lsn, page: (
            self.core.install_base(t["volume_id"], t["pg"], frame.volume_epoch, frame.membership_epoch,
                                   page_no, page_lsn, page)))

    def _page_from_peers(self, t, answers, page_no, read_lsn, lowest_lsn, install):
        """GET_PAGE ``page_no`` at ``read_lsn`` from the peers that cover it, until one answers
        with a page LSN in [lowest_lsn, read_lsn] (a state of the page that can stand in) and
        ``install(frame, page_lsn, page)``, called under the lock, takes it."""
        for peer_scl, address in answers:
            if peer_scl < read_lsn:
                continue
            frame = self._request(address, t, p.FRAME_GET_PAGE, p.GET_PAGE_BODY.pack(t["pg"], page_no, read_lsn),
                                  p.FRAME_PAGE)
            if frame is None:
                continue
            back_page_no, page_size, page_lsn, _ = p.PAGE_BODY.unpack_from(frame.body)
            page = bytes(frame.body[p.PAGE_BODY.size:])
            if back_page_no != page_no or len(page) != page_size or not lowest_lsn <= page_lsn <= read_lsn:
                continue
            with self.lock:
                if install(frame, page_lsn, page):
                    return

    # ---- peers ---------------------------------------------------------------------------

    def _request(self, address, t, type, body, expect):
        """One request to a peer at the segment's epochs; None on any failure (logged at
        debug level: a peer being down is normal and gossip just tries again later)."""
        now = time.monotonic()
        if self.backoff_until.get(address, 0) > now:
            return None
        client = self.clients.get(address)
        try:
            if client is None:
                from aurora.client import NodeClient   # here: aurora.client imports the server
                client = NodeClient(address, timeout=GOSSIP_REQUEST_TIMEOUT_S, tls=self.tls)
                self.clients[address] = client
            frame = client.request(type, body, expect, volume_id=t["volume_id"],
                                   volume_epoch=t["volume_epoch"], membership_epoch=t["membership_epoch"])
            return frame
        except (p.StaleEpochError, p.EpochAheadError, p.UnknownSegmentError, p.ReadPointError,
                p.BadRequestError, errors.CorruptionError) as exc:
            log.debug("peer %s refused %s: %s", address, p.FRAME_NAMES[type], exc)
            return None
        except (OSError, ConnectionError, errors.AuroraError, ValueError) as exc:
            log.debug("peer %s unreachable: %s", address, exc)
            if client is not None:
                client.close()
                self.clients.pop(address, None)
            self.backoff_until[address] = now + GOSSIP_PEER_BACKOFF_S
            return None

"""One simulated world: six storage nodes, a writer, a network and a clock, driven by one seed.

Real code runs everywhere it can: every node is a real ``NodeCore`` (segments, page stores,
restart scan, fencing, gossip and repair) over a ``SimDisk``; every message is a real frame
(``protocol.encode_frame``/``decode_frame``, batches from ``_native.encode_batch``); the
writer's decisions come from ``aurora/recovery.py`` (recovery, MTR batches) and the quorum
tracker is the native one; gossip is the real ``Gossiper`` with its request function replaced
by a simulated exchange.  What is simulated: time, the network (drop, duplicate, delay,
reorder, partitions), disks (unsynced bytes lost or scrambled on a crash, bit flips), crashes
and restarts, and the writer's own I/O loop (a small driver that mirrors aurora/writer.py).

Every check is against DESIGN.md section 2 and a reference model of every page at every LSN
that survives; a violation raises ``Violation`` with what broke, at which simulated time.
"""
import bisect
import contextlib
import heapq
import logging
import random
import struct

import numpy as np

from aurora import _native, errors, protocol as p, recovery
from aurora.node import core as node_core
from aurora.node import gossip as node_gossip
from aurora.node.core import TRUNCATION_ALL_PGS, NodeCore, TRUNCATION_ENTRY
from aurora.node.disk import SimDisk
from aurora.node.segment import I_FILE, I_LENGTH, I_OFFSET
from aurora.reference.quorum import QuorumTracker as ReferenceQuorumTracker

# ---- geometry and limits (small, so a seed runs in tens of milliseconds) ----------------------

AZS = ("az1", "az2", "az3")
NODES_PER_AZ = 2
MEMBERS_PER_PG = 6
WRITE_QUORUM = 4
READ_QUORUM = recovery.READ_QUORUM
VOLUME_ID = 0x51A
PAGE_SIZE = 512
PAGES_PER_PG = 4
PG_COUNT = 2
LOG_FILE_BYTES = 2048           # small, so logs roll over and GC deletes whole files
LAL = 64                        # small, so back-pressure and truncation ranges matter
READ_PIN_MS = 200.0             # a GET_PAGE holds its read point this long at most (a timeout)
STEPS_MAX = 200_000             # bound on events per seed
QUIESCE_MS = 3_000              # after the workload: faults stop, everything heals
GOSSIP_ROUNDS_FINAL = 6         # rounds after the AZ loss before the final reads
RECOVERY_RETRY_MS = 40


class Violation(AssertionError):
    """An invariant broke; the message says which and when."""


class Faults:
    """Fault probabilities for one seed.  Defaults are moderate; swarm mode draws each one
    from the seed, so some seeds hammer one fault and others never see it."""

    def __init__(self, rng=None, long=False):
        self.drop = 0.02
        self.duplicate = 0.02
        self.delay_ms = (0.2, 4.0)
        self.crash_node = 0.15          # per fault tick
        self.crash_az = 0.03
        self.partition = 0.10
        self.crash_writer = 0.04
        self.flip = 0.05
        self.slow = 0.05
        self.crash_keep = 0.3           # share of unsynced sectors a crash keeps
        self.crash_scramble = 0.05      # share it replaces with garbage
        self.sync_ms = (0.5, 3.0)
        self.gossip_ms = 60.0
        self.mtr_ms = 6.0
        self.mtrs = 40
        if rng is not None:
            self.drop = rng.choice((0.0, 0.0, 0.01, 0.05, 0.2))
            self.duplicate = rng.choice((0.0, 0.02, 0.1))
            self.delay_ms = (0.1, rng.choice((1.0, 5.0, 20.0)))
            self.crash_node = rng.choice((0.0, 0.1, 0.3))
            self.crash_az = rng.choice((0.0, 0.0, 0.05, 0.15))
            self.partition = rng.choice((0.0, 0.1, 0.3))
            self.crash_writer = rng.choice((0.0, 0.03, 0.1))
            self.flip = rng.choice((0.0, 0.0, 0.05, 0.2))
            self.slow = rng.choice((0.0, 0.1, 0.3))
            self.crash_keep = rng.choice((0.0, 0.5, 1.0))
            self.crash_scramble = rng.choice((0.0, 0.0, 0.1))
            self.sync_ms = (0.2, rng.choice((1.0, 3.0, 10.0)))
            self.gossip_ms = rng.choice((30.0, 60.0, 150.0))
            self.mtr_ms = rng.choice((2.0, 6.0, 15.0))
            self.mtrs = rng.randint(20, 60)
        if long:
            # Long runs: enough redo that logs roll over many times, LWMs become durable and
            # GC deletes whole log files between the faults (40 MTRs never got that far).
            self.mtrs = 600

    def describe(self):
        return ", ".join("%s=%s" % (k, v) for k, v in sorted(vars(self).items()))


# ---- the reference model -----------------------------------------------------------------

class Model:
    """Every page at every LSN that survives: the MTRs every writer logged, minus the ranges
    recoveries truncated; and the highest CPL ever acknowledged to a committer."""

    def __init__(self):
        self.history = {}        # page_no -> [(lsn, image)] in LSN order
        self.pg_lsns = {}        # pg -> sorted record LSNs
        self.cpls = []           # every surviving CPL, increasing
        self.acked = 0           # highest acknowledged commit (CPL)
        self.truncated = []      # (after, through] of every recovery

    def is_truncated(self, lsn):
        return any(after < lsn <= through for after, through in self.truncated)

    def log(self, records, cpl):
        # A deposed writer that is still alive may log an MTR after a recovery truncated
        # its LSNs: the nodes drop those records for good, so the model does too.
        if self.is_truncated(cpl):
            return
        for lsn, pg, page_no, image in records:
            self.history.setdefault(page_no, []).append((lsn, image))
            self.pg_lsns.setdefault(pg, []).append(lsn)
        self.cpls.append(cpl)

    def truncate(self, after, through):
        self.truncated.append((after, through))
        for page_no, rows in self.history.items():
            self.history[page_no] = [r for r in rows if not after < r[0] <= through]
        for pg, lsns in self.pg_lsns.items():
            self.pg_lsns[pg] = [l for l in lsns if not after < l <= through]
        self.cpls = [c for c in self.cpls if not after < c <= through]

    def page_at(self, page_no, lsn):
        """(image, page LSN) after every surviving record <= lsn."""
        rows = self.history.get(page_no, ())
        index = bisect.bisect_right(rows, (lsn, b"\xff" * (PAGE_SIZE + 1))) - 1
        if index < 0:
            return bytes(PAGE_SIZE), 0
        return rows[index][1], rows[index][0]

    def pg_read_point(self, pg, lsn):
        """The PG's last record LSN at or below the volume read point ``lsn`` (0 if none)."""
        lsns = self.pg_lsns.get(pg, ())
        index = bisect.bisect_right(lsns, lsn) - 1
        return lsns[index] if index >= 0 else 0


# ---- storage nodes -----------------------------------------------------------------------

class _GossipStale(Exception):
    """The node crashed while its gossip round was waiting on the network."""


class _NodeLock:
    """The node lock the gossip thread takes around every use of NodeCore.  In the simulator a
    round's requests let time pass (other events run meanwhile), so the node may have crashed
    and been rebuilt: then the old round, like the old process's thread, is gone."""

    def __init__(self, gossiper):
        self.gossiper = gossiper

    def __enter__(self):
        node = self.gossiper.node
        if node.gossiper is not self.gossiper or not node.up:
            raise _GossipStale()

    def __exit__(self, *exc):
        return False


class SimGossiper(node_gossip.Gossiper):
    """The node's real gossip and repair logic; only the request goes through the world."""

    def __init__(self, world, node):
        super().__init__(node.core, None)
        self.lock = _NodeLock(self)
        self.world = world
        self.node = node

    def round(self):
        try:
            super().round()
        except _GossipStale:
            pass

    def _request(self, address, t, type, body, expect):
        if self.node.gossiper is not self:
            return None
        return self.world.gossip_request(self.node, address, t, type, body, expect)


class SimNode:
    def __init__(self, world, index, az):
        self.world = world
        self.node_id = "n%d" % (index + 1)
        self.az = az
        self.address = "unix:/sim/%s.sock" % self.node_id
        self.data_dir = "/%s" % self.node_id
        self.disk = SimDisk()
        self.core = None
        self.gossiper = None
        self.pending = []          # (destination, reply frame bytes) waiting for the log sync
        self.pending_fds = []
        self.sync_due = False
        self.slow_factor = 1.0
        self.flipped = False       # its disk lost bytes to bit rot: SCL may go back on restart
        self.durable_checked = {}  # pg -> SCL up to which records were seen durable
        self.reported = {}         # (pg, volume epoch) -> highest SCL sent in an ACK/RECORD_LIST
        self.start()

    @property
    def up(self):
        return self.core is not None

    def gc_counts(self):
        """(log files deleted, file passes asked for) by this node's segments since it started."""
        deleted = passes = 0
        for segment in self.core.segments():
            deleted += segment.gc_stats["log_files_deleted"]
            passes += segment.gc_stats["file_passes"]
        return deleted, passes

    def start(self):
        world = self.world
        try:
            self.core = NodeCore(self.data_dir, self.node_id, self.az, LOG_FILE_BYTES,
                                 self.address, disk=self.disk)
        except Exception as exc:   # invariant 9: a node must come back from any crash
            world.fail("node %s failed to restart from its disk: %s: %s"
                       % (self.node_id, type(exc).__name__, exc))
        self.gossiper = SimGossiper(world, self)
        self.durable_checked = {}
        original = self.core.apply_gossip

        def checked_apply_gossip(volume_id, pg, reply_volume_epoch, reply_membership_epoch, buf, recs):
            # Fencing, checked from outside: a node stores records only from a reply made at
            # its own volume epoch and the segment's membership epoch.
            volume = self.core.volumes.get(volume_id)
            epoch = volume.epoch if volume else None
            segment = volume.segments.get(pg) if volume else None
            membership = segment.membership_epoch if segment else None
            added = original(volume_id, pg, reply_volume_epoch, reply_membership_epoch, buf, recs)
            if added is not None and (reply_volume_epoch != epoch or reply_membership_epoch != membership):
                world.fail("fencing: node %s at volume epoch %s stored records gossiped at epoch %d"
                           % (self.node_id, epoch, reply_volume_epoch))
            return added

        self.core.apply_gossip = checked_apply_gossip
        if world.started:
            self._check_restart()

    def _check_restart(self):
        """After a restart every SCL this node reported (in an ACK or RECORD_LIST, which leave
        only after their records are durable) is still covered (invariants 2 and 3)."""
        if self.flipped:
            return
        for volume in self.core.volumes.values():
            for pg, segment in volume.segments.items():
                reported = self.reported.get((pg, volume.epoch), 0)
                if segment.scl < reported:
                    self.world.fail("node %s PG %d came back with SCL %d below the SCL %d it acknowledged "
                                    "at epoch %d" % (self.node_id, pg, segment.scl, reported, volume.epoch))

    def crash(self, rng, faults):
        if not self.up:
            return
        self.core = None
        self.gossiper = None
        self.pending = []
        self.pending_fds = []
        self.disk.crash(rng, faults.crash_keep, faults.crash_scramble)

    # ---- requests --------------------------------------------------------------------

    def handle(self, data):
        """Serve one request frame; returns the replies that may leave now."""
        frame = p.decode_frame(data)
        try:
            replies = self.core.handle(frame)
        except Exception as exc:   # invariant 9: bad input gets an error, never a crash
            self.world.fail("node %s raised serving %r: %s: %s" % (self.node_id, frame, type(exc).__name__, exc))
        out = []
        for reply in replies:
            if reply.after_sync and self.world.bug != "ack-before-persist":
                self.pending_fds.extend(self.core.dirty_fds())
                out.append((reply.data, True))
            else:
                out.append((reply.data, False))
        return out

    def sync(self):
        """Group commit: fdatasync what the held replies need, then release them."""
        self.sync_due = False
        if not self.up:
            return []
        fds, self.pending_fds = self.pending_fds, []
        for fd in dict.fromkeys(fds):
            self.disk.fdatasync(fd)
        released, self.pending = self.pending, []
        for _, data in released:
            self.check_leaving(data)
        return released

    def check_leaving(self, data):
        """Invariant 3 at the moment a reply leaves: an ACK or RECORD_LIST reports an SCL
        whose every record is durable on this node's disk; and reported SCLs only grow
        within an epoch (invariant 2)."""
        (type,) = struct.unpack_from("<H", data, 4)
        if type not in (p.FRAME_ACK, p.FRAME_RECORD_LIST):
            return
        (volume_epoch,) = struct.unpack_from("<Q", data, 24)
        pg, _, scl = struct.unpack_from("<IIQ", data, p.FRAME_HEADER_SIZE)
        volume = self.core.volumes.get(VOLUME_ID)
        segment = volume.segments.get(pg) if volume else None
        if segment is None:
            return
        key = (pg, volume_epoch)
        if scl > self.reported.get(key, 0):
            self.reported[key] = scl
        checked = self.durable_checked.get(pg, 0)
        if scl <= checked:
            return
        ordered = segment.sorted_lsns
        for lsn in ordered[bisect.bisect_right(ordered, checked):bisect.bisect_right(ordered, scl)]:
            entry = segment._entry(lsn)
            log = entry[I_FILE]
            start, end = entry[I_OFFSET], entry[I_OFFSET] + entry[I_LENGTH]
            f = self.disk.fds.get(log.fd)
            if f is None or f.durable[start:end] != f.data[start:end] \
                    or self.disk.durable_names.get(log.path) is not f:
                self.world.fail("invariant 3: node %s reported SCL %d for PG %d but record %d is not durable"
                                % (self.node_id, scl, pg, lsn))
        self.durable_checked[pg] = scl


# ---- the writer --------------------------------------------------------------------------

class CplOnlyTracker(ReferenceQuorumTracker):
    """Planted bug vdl-ignores-cpl: the reference tracker told that every record is a CPL."""

    def sent(self, pg, lsns, is_cpl=None):
        return super().sent(pg, lsns, [True] * len(lsns))


class SimWriter:
    """The writer's I/O loop, simulated: it mirrors aurora/writer.py's Volume (MTRs, per-PG
    batches, resending what a member has not acknowledged, SET_EPOCH and CREATE_SEGMENT on
    the matching errors, VDL hints) over the world's network."""

    def __init__(self, world, generation, epoch, start_vdl, next_lsn, prev_lsn_pg):
        self.world = world
        self.name = "writer-%d" % generation
        self.alive = True
        self.fenced = False
        self.epoch = epoch
        if world.bug == "vdl-ignores-cpl":
            self.tracker = CplOnlyTracker(MEMBERS_PER_PG, WRITE_QUORUM, start_vdl)
        else:
            self.tracker = _native.QuorumTracker(MEMBERS_PER_PG, WRITE_QUORUM, start_vdl)
        self.start_vdl = start_vdl
        # What this writer tells a member that missed its recovery: its own epoch and the
        # truncations decided up to it (Volume._set_epoch_body), never a later writer's.
        self.set_epoch_body = world.set_epoch_body()
        self.next_lsn = next_lsn
        self.prev_lsn_pg = dict(prev_lsn_pg)
        self.prev_lsn_pg_recovered = dict(prev_lsn_pg)
        self.cpls = {start_vdl}
        self.pending_cpls = []          # CPLs logged, not yet covered by VDL
        self.retained = {pg: [] for pg in range(PG_COUNT)}   # (first, last, batch)
        self.acked_scl = {}             # (node id, pg) -> SCL
        self.inflight = {}              # request id -> (node id, type, pg, body, extra)
        self.next_request_id = 1
        self.last_vcl = start_vdl
        self.last_vdl = start_vdl
        self.hint_sent = 0
        # PGMRPL, as Volume._advance_pgmrpl: VDL, held down by reads in flight at older read
        # points (pinned until answered or READ_PIN_MS old).
        self.pgmrpl = 0
        self.pins = {}                  # request id -> (volume read point, sim time sent)
        self.lwm_sent = {}              # (node id, pg) -> LWM sent
        # A recovered writer opens once every PG's recovered chain is on a write quorum
        # (recovery.pgs_below_write_quorum); a new volume's writer is open at once.
        self.opened = not prev_lsn_pg
        self.reported_scl = {}          # (node id, pg) -> SCL from RECORD_LIST polls
        # The page cache: the latest image and page LSN of every page (from the model at
        # the recovered VDL; the real writer reads these by GetPage@VDL on demand).
        self.pages = {}
        for page_no in range(PAGES_PER_PG * PG_COUNT):
            self.pages[page_no] = world.model.page_at(page_no, start_vdl)

    # ---- sending ---------------------------------------------------------------------

    def send(self, node, type, body, pg=0, extra=None):
        request_id = self.next_request_id
        self.next_request_id += 1
        self.inflight[request_id] = (node.node_id, type, pg, body, extra)
        data = p.encode_frame(type, body, request_id, VOLUME_ID, self.epoch, 0)
        self.world.send(self, node, data)

    def log_mtr(self, rng):
        """One MTR over 1..3 pages, possibly in both PGs; False if LAL holds it back."""
        pages = sorted(rng.sample(range(PAGES_PER_PG * PG_COUNT), rng.randint(1, 3)))
        if self.next_lsn + len(pages) - 1 > self.tracker.vdl + LAL:
            return False               # LAL back-pressure (tracker.wait_lal in the writer)
        records = []
        images = {}
        for page_no in pages:
            old, old_lsn = self.pages[page_no]
            new = bytearray(old)
            for _ in range(rng.randint(1, 2)):
                length = rng.randint(1, 24)
                offset = rng.randrange(PAGE_SIZE - length)
                new[offset:offset + length] = rng.randbytes(length)
            new = bytes(new)
            if new == old:
                continue
            rtype, payload = _native.encode_change(old, new)
            records.append((page_no // PAGES_PER_PG, page_no, rtype, payload, old_lsn))
            images[page_no] = new
        if not records:
            return True
        cpl, batches = recovery.build_mtr_batches(records, self.next_lsn, self.prev_lsn_pg)
        model_rows = []
        for b in batches:
            # The same batch as writer.Volume encodes, its columns handed over as arrays:
            # encode_batch checks a list column value by value (27 us for a two-record batch;
            # 138 us before _column's list fast path), an array of the right dtype at once
            # (13 us including the conversion here).
            lsns = np.array(b.lsns, dtype=np.uint64)
            batch = recovery.encode_mtr_batch(VOLUME_ID, self.epoch, 0, b._replace(
                lsns=lsns, prev_lsn_pg=np.array(b.prev_lsn_pg, dtype=np.uint64),
                prev_lsn_page=np.array(b.prev_lsn_page, dtype=np.uint64),
                page_nos=np.array(b.page_nos, dtype=np.uint32), types=np.array(b.types, dtype=np.uint8),
                flags=np.array(b.flags, dtype=np.uint8)))
            self.tracker.sent(b.pg, lsns, np.array([f & _native.FLAG_CPL for f in b.flags], dtype=np.uint8))
            self.retained[b.pg].append((b.lsns[0], b.lsns[-1], batch))
            for lsn, page_no in zip(b.lsns, b.page_nos):
                self.pages[page_no] = (images[page_no], lsn)
                model_rows.append((lsn, b.pg, page_no, images[page_no]))
            for node in self.world.members(b.pg):
                self.send(node, p.FRAME_APPEND, batch, b.pg)
        self.next_lsn = cpl + 1
        self.cpls.add(cpl)
        self.pending_cpls.append(cpl)
        self.world.model.log(model_rows, cpl)
        return True

    def resend(self):
        """What a member has not acknowledged goes again (duplicates are idempotent)."""
        for pg, retained in self.retained.items():
            for node in self.world.members(pg):
                acked = self.acked_scl.get((node.node_id, pg), 0)
                for first, last, batch in retained:
                    if last > acked:
                        self.send(node, p.FRAME_APPEND, batch, pg)

    def send_hint(self):
        vdl = self.tracker.vdl
        if vdl > self.hint_sent:
            self.hint_sent = vdl
            for node in self.world.nodes:
                self.send(node, p.FRAME_VOLUME_HINT, p.VOLUME_HINT_BODY.pack(vdl))

    def read_check(self, rng):
        """GetPage of one page from one member at VDL or, half the time, at an older read
        point at or above PGMRPL (what garbage collection must keep); the answer is checked
        on arrival.  The read point stays pinned while the request is in flight."""
        vdl = self.tracker.vdl
        point = vdl if rng.random() < 0.5 else rng.randint(min(self.pgmrpl, vdl), vdl)
        page_no = rng.randrange(PAGES_PER_PG * PG_COUNT)
        pg = page_no // PAGES_PER_PG
        read_lsn = self.world.model.pg_read_point(pg, point)
        scls = self.tracker.member_scls(pg)
        candidates = [n for i, n in enumerate(self.world.members(pg)) if scls[i] >= read_lsn]
        if not candidates:
            return
        node = rng.choice(candidates)
        self.pins[self.next_request_id] = (point, self.world.now)
        self.send(node, p.FRAME_GET_PAGE, p.GET_PAGE_BODY.pack(pg, page_no, read_lsn), pg,
                  extra=(page_no, read_lsn))

    def send_lwm(self):
        """SET_LWM to each member whose LWM PGMRPL moves (Volume._advance_pgmrpl): per PG the
        PG's read point at PGMRPL, to each member at most its acknowledged SCL."""
        now = self.world.now
        for request_id, (_, sent) in list(self.pins.items()):
            if now - sent > READ_PIN_MS:
                del self.pins[request_id]
        lwm = min([self.tracker.vdl] + [point for point, _ in self.pins.values()])
        if lwm > self.pgmrpl:
            self.pgmrpl = lwm
        for pg in range(PG_COUNT):
            pg_lwm = self.world.model.pg_read_point(pg, self.pgmrpl)
            for node in self.world.members(pg):
                value = min(pg_lwm, self.acked_scl.get((node.node_id, pg), 0))
                if value > self.lwm_sent.get((node.node_id, pg), 0):
                    self.lwm_sent[(node.node_id, pg)] = value
                    self.send(node, p.FRAME_SET_LWM, p.SET_LWM_BODY.pack(pg, 0, value), pg)

    # ---- replies ---------------------------------------------------------------------

    def on_reply(self, node, data):
        if not self.alive:
            return
        frame = p.decode_frame(data)
        request = self.inflight.pop(frame.request_id, None)
        self.pins.pop(frame.request_id, None)
        if frame.type == p.FRAME_ACK:
            pg, _, scl, _ = p.ACK_BODY.unpack_from(frame.body)
            self.on_ack(node, pg, scl)
        elif frame.type == p.FRAME_RECORD_LIST:
            pg, _, scl, _, _ = p.RECORD_LIST_BODY.unpack_from(frame.body)
            key = (node.node_id, pg)
            self.reported_scl[key] = max(self.reported_scl.get(key, 0), scl)
            self.check_open()
        elif frame.type == p.FRAME_PAGE and request is not None:
            page_no, read_lsn = request[4]
            back, _, page_lsn, _ = p.PAGE_BODY.unpack_from(frame.body)
            page = bytes(frame.body[p.PAGE_BODY.size:])
            want, want_lsn = self.world.model.page_at(page_no, read_lsn)
            if back != page_no or page != want or page_lsn != want_lsn:
                self.world.fail("invariant 4: node %s served page %d at read point %d (page LSN %d) that "
                                "differs from the model (page LSN %d)"
                                % (node.node_id, page_no, read_lsn, page_lsn, want_lsn))
        elif frame.type == p.FRAME_ERROR and request is not None:
            code, _ = p.ERROR_BODY.unpack_from(frame.body)
            _, type, pg, body, extra = request
            if code == p.ERROR_STALE_EPOCH:
                self.fenced = True       # a newer writer exists: stop (Volume._fence)
            elif code == p.ERROR_EPOCH_AHEAD and type != p.FRAME_SET_EPOCH:
                self.send(node, p.FRAME_SET_EPOCH, self.set_epoch_body)
                self.send(node, type, body, pg, extra)
            elif code == p.ERROR_UNKNOWN_SEGMENT and type == p.FRAME_APPEND:
                self.send(node, p.FRAME_CREATE_SEGMENT, self.world.create_segment_body(pg), pg)
                self.send(node, type, body, pg, extra)

    def poll(self):
        """Until open: ask every member for its SCL (RECORD_LIST answers only once durable)."""
        for pg in range(PG_COUNT):
            for node in self.world.members(pg):
                self.send(node, p.FRAME_LIST_RECORDS, p.LIST_RECORDS_BODY.pack(pg, 0, _native.LSN_MAX), pg)

    def check_open(self):
        scls = {pg: [self.reported_scl.get((n.node_id, pg), 0) for n in self.world.members(pg)]
                for pg in range(PG_COUNT)}
        if not recovery.pgs_below_write_quorum(self.prev_lsn_pg_recovered, scls, WRITE_QUORUM):
            self.opened = True

    def on_ack(self, node, pg, scl):
        key = (node.node_id, pg)
        if scl > self.acked_scl.get(key, 0):
            self.acked_scl[key] = scl
        member = self.world.member_index(pg, node)
        self.tracker.ack(pg, member, min(scl, self.tracker.highest_lsn))
        retained = self.retained[pg]
        everyone = min(self.acked_scl.get((n.node_id, pg), 0) for n in self.world.members(pg))
        while retained and retained[0][1] <= everyone:
            retained.pop(0)
        self.check_points()

    def check_points(self):
        """Invariants 1, 2 and 5 on the writer's side, after every change."""
        t = self.tracker
        vcl, vdl = t.vcl, t.vdl
        if vcl < self.last_vcl or vdl < self.last_vdl:
            self.world.fail("invariant 2: VCL/VDL went back from %d/%d to %d/%d"
                            % (self.last_vcl, self.last_vdl, vcl, vdl))
        if vdl > vcl:
            self.world.fail("VDL %d above VCL %d" % (vdl, vcl))
        if vdl not in self.cpls:
            self.world.fail("invariant 5: VDL %d is not the end of an MTR (a read at VDL would see "
                            "part of one)" % vdl)
        self.last_vcl, self.last_vdl = vcl, vdl
        while self.pending_cpls and self.pending_cpls[0] <= vdl:
            cpl = self.pending_cpls.pop(0)
            # Invariant 1: this commit is now acknowledged to its caller, so no recovery may
            # have truncated it (a deposed writer still alive is acknowledged only what the
            # new writer's recovery found).
            if self.world.model.is_truncated(cpl):
                self.world.fail("invariant 1: %s acknowledged commit %d at epoch %d, inside a range a "
                                "recovery truncated (%s)" % (self.name, cpl, self.epoch, self.world.model.truncated))
            if cpl > self.world.model.acked:
                self.world.model.acked = cpl
                self.world.maybe_crash_writer_after_commit()


# ---- the world ---------------------------------------------------------------------------

class World:
    def __init__(self, seed, swarm=False, bug=None, long=False):
        self.seed = seed
        self.rng = random.Random(seed)
        self.long = long
        self.faults = Faults(random.Random(seed ^ 0x5EED) if swarm else None, long)
        # Whether a background step may begin a materialization pass: spaced out as the
        # server's MATERIALIZE_PASS_INTERVAL_S does, so a held LWM meets file passes.  Its own
        # stream, so the choice leaves the world's stream (and every seed's faults) as it was.
        self.pass_rng = random.Random(seed ^ 0x9A55)
        self.bug = bug
        self.quiet = True               # no random faults (set up, quiesce, final check)
        self.nested = False             # inside a gossip exchange's network time
        self.final = False
        self.now = 0.0
        self.events = []
        self.event_seq = 0
        self.steps = 0
        self.started = False
        self.model = Model()
        self.nodes = [SimNode(self, i, AZS[i // NODES_PER_AZ]) for i in range(len(AZS) * NODES_PER_AZ)]
        self.by_address = {n.address: n for n in self.nodes}
        self.blocked = set()            # frozenset({a, b}) of endpoint names that cannot talk
        self.lost = set()               # node ids gone for good (the final AZ loss)
        self.meta = {"epoch": 1, "truncations": []}   # the volume metadata (quorum-stored in the fleet)
        self.generation = 0
        self.writer = None
        self.stats = {"messages": 0, "dropped": 0, "crashes": 0, "recoveries": 0, "flips": 0,
                      "partitions": 0, "writer_crashes": 0, "deposals": 0, "mtrs": 0, "reads": 0,
                      "background_errors": 0, "log_files_deleted": 0, "file_passes": 0}
        self.recovering = False         # a recovery is between its steps (time passes there)
        self.deposed = []               # writers replaced while alive: they keep running

    # ---- failure ---------------------------------------------------------------------

    def fail(self, what):
        raise Violation("t=%.1fms: %s" % (self.now, what))

    # ---- membership ------------------------------------------------------------------

    def members(self, pg):
        return self.nodes        # six nodes in three AZs: every PG lives on all of them

    def member_index(self, pg, node):
        return self.nodes.index(node)

    def set_epoch_body(self):
        return p.SET_EPOCH_BODY.pack(self.meta["epoch"], 0) + b"".join(
            TRUNCATION_ENTRY.pack(TRUNCATION_ALL_PGS, 0, after, through)
            for after, through in self.meta["truncations"])

    def create_segment_body(self, pg):
        return p.CREATE_SEGMENT_BODY.pack(pg, PAGE_SIZE, PAGES_PER_PG) + p.encode_peers(
            [n.address for n in self.nodes])

    # ---- scheduling ------------------------------------------------------------------

    def at(self, delay_ms, fn, *args):
        self.event_seq += 1
        heapq.heappush(self.events, (self.now + delay_ms, self.event_seq, fn, args))

    def reachable(self, a, b):
        return frozenset((a, b)) not in self.blocked

    def send(self, src, dst, data, reply=False):
        """A frame from ``src`` to ``dst`` (a SimNode or SimWriter)."""
        self.stats["messages"] += 1
        f = self.faults
        if not self.quiet and self.rng.random() < f.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if not self.quiet and self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = self.rng.uniform(*f.delay_ms) * max(getattr(src, "slow_factor", 1.0),
                                                        getattr(dst, "slow_factor", 1.0))
            self.at(delay, self.deliver, src, dst, data)

    def deliver(self, src, dst, data):
        if not self.reachable(src.name_for_network(), dst.name_for_network()):
            self.stats["dropped"] += 1
            return
        if isinstance(dst, SimWriter):
            dst.on_reply(src, data)
            return
        if not dst.up or dst.node_id in self.lost:
            return
        for reply, held in dst.handle(data):
            if held:
                dst.pending.append((src, reply))
                if not dst.sync_due:
                    dst.sync_due = True
                    self.at(self.rng.uniform(*self.faults.sync_ms) * dst.slow_factor, self.node_sync, dst)
            else:
                dst.check_leaving(reply)
                self.send(dst, src, reply)

    def node_sync(self, node):
        for dst, reply in node.sync():
            self.send(node, dst, reply)

    # ---- synchronous exchanges (gossip, recovery) --------------------------------------

    def rpc(self, src_name, node, data):
        """A request answered at once (the exchange's time is folded into the event that
        made it); None if the node is down, lost or cut off.  A reply that waits for the log
        sync gets one first, as the server would (unless the planted bug skips it)."""
        if not node.up or node.node_id in self.lost or not self.reachable(src_name, node.node_id):
            return None
        out = node.handle(data)
        if any(held for _, held in out):
            for dst, reply in node.sync():
                self.send(node, dst, reply)
        for reply, _ in out:
            node.check_leaving(reply)
        return p.decode_frame(out[0][0]) if out else None

    def gossip_request(self, node, address, t, type, body, expect):
        peer = self.by_address.get(address)
        if peer is None or (not self.quiet and self.rng.random() < self.faults.drop):
            return None
        frame = self.rpc(node.node_id, peer, p.encode_frame(type, body, 0, t["volume_id"], t["volume_epoch"],
                                                            t["membership_epoch"]))
        if not self.nested and not self.final:
            # The exchange takes network time, and the world moves meanwhile: epochs change,
            # nodes crash.  (One level deep: gossip of other nodes waits for this round.)
            gossiper = node.gossiper
            self.nested = True
            try:
                self.run_until(lambda: False, self.rng.uniform(*self.faults.delay_ms) * 2)
            finally:
                self.nested = False
            if node.gossiper is not gossiper:
                return None
        if frame is None or frame.type != expect:
            return None
        return frame

    # ---- events ----------------------------------------------------------------------

    def ev_mtr(self):
        w = self.writer
        if self.mtrs_left > 0:
            if w is not None and w.alive and not w.fenced and w.opened:
                if w.log_mtr(self.rng):
                    self.mtrs_left -= 1
                    self.stats["mtrs"] += 1
            self.at(self.rng.expovariate(1.0 / self.faults.mtr_ms), self.ev_mtr)

    def ev_writer_tick(self):
        w = self.writer
        if w is not None and w.alive and not w.fenced and not w.opened:
            w.poll()
        elif w is not None and w.alive and not w.fenced:
            w.resend()
            w.send_hint()
            w.send_lwm()
            if self.rng.random() < 0.5:
                self.stats["reads"] += 1
                w.read_check(self.rng)
        self.at(20.0, self.ev_writer_tick)

    def ev_gossip(self, node):
        if self.nested:                 # one gossip round at a time; this one goes next
            self.at(self.faults.delay_ms[1] * 2, self.ev_gossip, node)
            return
        if node.up and node.node_id not in self.lost:
            node.gossiper.round()
        if node.up and node.node_id not in self.lost:
            if self.rng.random() < 0.3:
                try:   # as the server's _background: a failed slice is logged and retried
                    node.core.background_step(materialize_pages=8, scrub_bytes=16 * 1024, gc=True,
                                              start_passes=self.pass_rng.random() < 0.3)
                except errors.AuroraError:
                    self.stats["background_errors"] += 1
            if self.rng.random() < 0.1:
                node.core.persist_vdl_hints()
        self.at(self.faults.gossip_ms * self.rng.uniform(0.5, 1.5), self.ev_gossip, node)

    def ev_background(self, node):
        """Long runs: a node's background slice between gossip rounds, often enough that
        LWMs become durable and GC deletes whole log files within the run, the way a node's
        loop runs one every 20 ms.  Its timing and choices come from ``pass_rng``, so the
        world's stream, and with it the seed's faults, stay as they were."""
        r = self.pass_rng
        if self.nested:                 # inside a gossip exchange's network time
            self.at(self.faults.delay_ms[1] * 2, self.ev_background, node)
            return
        if node.up and node.node_id not in self.lost:
            before = node.gc_counts()
            try:
                node.core.background_step(materialize_pages=r.choice([1, 8, 64]), scrub_bytes=4096, gc=True,
                                          start_passes=r.random() < 0.3)
            except errors.AuroraError:
                self.stats["background_errors"] += 1
            after = node.gc_counts()
            self.stats["log_files_deleted"] += after[0] - before[0]
            self.stats["file_passes"] += after[1] - before[1]
            if r.random() < 0.2:
                node.core.persist_vdl_hints()
        if not self.final:
            self.at(r.uniform(2.0, 10.0), self.ev_background, node)

    def ev_fault(self):
        if self.quiet:
            return
        f = self.faults
        r = self.rng
        live = [n for n in self.nodes if n.up]
        if r.random() < f.crash_node and live:
            node = r.choice(live)
            self.crash_node(node)
        if r.random() < f.crash_az:
            az = r.choice(AZS)
            for node in self.nodes:
                if node.az == az:
                    self.crash_node(node)
        for node in self.nodes:
            if not node.up and r.random() < 0.3:
                node.start()
        if r.random() < f.partition:
            self.stats["partitions"] += 1
            if r.random() < 0.5:
                az = r.choice(AZS)
                inside = [n.node_id for n in self.nodes if n.az == az]
                outside = [n.node_id for n in self.nodes if n.az != az] + [self.writer_name()]
                self.blocked |= {frozenset((a, b)) for a in inside for b in outside}
            else:
                a = r.choice(self.nodes).node_id
                b = r.choice([n.node_id for n in self.nodes if n.node_id != a] + [self.writer_name()])
                self.blocked.add(frozenset((a, b)))
        elif self.blocked and r.random() < 0.4:
            self.blocked = set()
        if r.random() < f.flip:
            # Bit rot stays within one node per seed: with an AZ lost at the end, that is
            # the "AZ plus one" the design promises to survive.
            node = self.rot_node
            if node.up and node.disk.flip_byte(r) is not None:
                node.flipped = True
                self.stats["flips"] += 1
        for node in self.nodes:
            node.slow_factor = 10.0 if r.random() < f.slow else 1.0
        if r.random() < f.crash_writer and self.writer is not None and self.writer.alive:
            if r.random() < 0.5:
                self.crash_writer()
                self.at(r.uniform(5, 50), self.ev_recover)
            else:
                self.at(r.uniform(0.1, 5), self.ev_recover, True)
        self.at(r.uniform(10, 40), self.ev_fault)

    def maybe_crash_writer_after_commit(self):
        """The moment right after an acknowledgment is the riskiest one to lose the writer:
        the commit may be on exactly a write quorum."""
        if not self.quiet and self.rng.random() < self.faults.crash_writer:
            self.at(0.0, self.ev_crash_writer)

    def ev_crash_writer(self):
        if self.writer is not None and self.writer.alive and not self.quiet:
            if self.rng.random() < 0.5:
                self.crash_writer()
                self.at(self.rng.uniform(0.1, 5), self.ev_recover)
            else:
                self.at(self.rng.uniform(0.1, 5), self.ev_recover, True)

    def crash_node(self, node):
        if node.up:
            self.stats["crashes"] += 1
            node.crash(self.rng, self.faults)

    def writer_name(self):
        return "writer"

    def crash_writer(self):
        self.stats["writer_crashes"] += 1
        self.writer.alive = False

    def ev_recover(self, depose=False):
        """A new writer recovers the volume: after the old one died, or (``depose``) while
        the old one is alive and still committing, as when a second process opens the
        volume; the old one must then be fenced without losing what it was acknowledged."""
        if self.recovering:
            self.at(RECOVERY_RETRY_MS, self.ev_recover, depose)
            return
        if self.writer is not None and self.writer.alive and not (depose and not self.quiet):
            return
        if depose and self.writer is not None and self.writer.alive:
            self.stats["deposals"] += 1
        if not self.recover():
            self.at(RECOVERY_RETRY_MS, self.ev_recover, depose)

    # ---- writer recovery (aurora/recovery.py does the deciding) ------------------------

    def recover(self, final=False):
        """A new writer, in the order aurora/writer.py's Volume._recover uses: (1) fence, a
        new epoch on a write quorum of every PG; (2) read, list a read quorum of fenced
        members of every PG and compute VCL/VDL and the truncation range; (3) truncate, the
        range recorded and sent with one more epoch to a write quorum; start above it.
        Network time passes between the steps, so an old writer that is still alive keeps
        committing meanwhile.  False if a quorum was unreachable (the caller retries)."""
        self.recovering = True
        try:
            return self._recover(final)
        finally:
            self.recovering = False

    def _recovery_pause(self):
        """The network time between two recovery steps; the world (an old writer included)
        moves meanwhile.  Not inside a gossip exchange's time nor in the final check."""
        if self.nested or self.final or self.quiet:
            return
        self.run_until(lambda: False, self.rng.uniform(*self.faults.delay_ms) * 2)

    def _raise_epoch(self, name, epoch, truncation=None):
        """Record the new epoch (and a truncation range) in the metadata, then SET_EPOCH with
        every truncation to every node.  The nodes that took it, or None if fewer than a
        write quorum of some PG did."""
        truncations = self.meta["truncations"] + ([list(truncation)] if truncation else [])
        self.meta = {"epoch": epoch, "truncations": truncations}
        if truncation:
            self.model.truncate(*truncation)
        body = self.set_epoch_body()
        done = []
        for node in self.nodes:
            frame = self.rpc(name, node, p.encode_frame(p.FRAME_SET_EPOCH, body, 0, VOLUME_ID, epoch, 0))
            if frame is not None and frame.type == p.FRAME_OK:
                done.append(node)
        if any(len([n for n in self.members(pg) if n in done]) < WRITE_QUORUM for pg in range(PG_COUNT)):
            return None
        return done

    def _recover(self, final):
        r = self.rng
        name = self.writer_name()
        old = self.writer if self.writer is not None and self.writer.alive else None
        reads_first = self.bug == "recovery-reads-before-fence"
        if reads_first:
            # Planted bug: the order before the fix, reads first and the epoch bump after.
            fenced = list(self.nodes)
        else:
            # Step 1: fence.
            fenced = self._raise_epoch(name, self.meta["epoch"] + 1)
            if fenced is None:
                return False
            self._recovery_pause()
        # Step 2: read, only from members that took the new epoch.
        hints = []
        reachable = {}
        for pg in range(PG_COUNT):
            reachable[pg] = []
            for node in self.members(pg):
                if node not in fenced:
                    continue
                frame = self.rpc(name, node, p.encode_frame(p.FRAME_LIST_RECORDS,
                                                            p.LIST_RECORDS_BODY.pack(pg, 0, _native.LSN_MAX),
                                                            0, VOLUME_ID, self.meta["epoch"], 0))
                if frame is None or frame.type != p.FRAME_RECORD_LIST:
                    continue
                hints.append(p.RECORD_LIST_BODY.unpack_from(frame.body)[3])
                reachable[pg].append(node)
            if len(reachable[pg]) < READ_QUORUM:
                return False
        base = recovery.recovery_base(hints)
        # List exactly a read quorum of each PG, chosen by the seed: the least the protocol
        # promises to work with (the fleet's writer lists every member it reaches).
        quorum = 2 if self.bug == "recovery-read-2-of-6" else READ_QUORUM
        listings = {}
        for pg in range(PG_COUNT):
            listings[pg] = {}
            for node in r.sample(reachable[pg], len(reachable[pg])):
                if len(listings[pg]) == quorum:
                    break
                listing = self.list_member(name, node, pg, base)
                if listing is not None:
                    listings[pg][node.node_id] = listing
            if len(listings[pg]) < quorum:
                return False
        result = recovery.compute_recovery({pg: [n.node_id for n in self.members(pg)] for pg in range(PG_COUNT)},
                                           listings, base, self.meta["truncations"], LAL, read_quorum=quorum)
        if result.vdl < self.model.acked:
            self.fail("invariant 1: recovery found VDL %d below the acknowledged commit %d (VCL %d, base %d)"
                      % (result.vdl, self.model.acked, result.vcl, base))
        self._recovery_pause()
        # Step 3: truncate under one more epoch.  An old writer still alive may have been
        # acknowledged a commit since the reads: only the fence taken before them stops that.
        if self.model.acked > result.vdl and self.model.acked <= result.truncate_through:
            self.fail("invariant 1: commit %d was acknowledged after recovery read VDL %d; truncating "
                      "(%d, %d] loses it" % (self.model.acked, result.vdl, result.truncate_after,
                                             result.truncate_through))
        if self._raise_epoch(name, self.meta["epoch"] + 1,
                             (result.truncate_after, result.truncate_through)) is None:
            return False
        self.stats["recoveries"] += 1
        self.generation += 1
        if old is not None and old.alive:
            self.deposed.append(old)
        self.writer = SimWriter(self, self.generation, self.meta["epoch"], result.truncate_through,
                                result.truncate_through + 1, result.prev_lsn_pg)
        self.writer.cpls.add(result.vdl)
        return True

    def list_member(self, name, node, pg, base):
        listing = recovery.MemberListing()
        after = base
        for _ in range(1000):
            frame = self.rpc(name, node, p.encode_frame(p.FRAME_LIST_RECORDS,
                                                        p.LIST_RECORDS_BODY.pack(pg, 256, after),
                                                        0, VOLUME_ID, self.meta["epoch"], 0))
            if frame is None or frame.type != p.FRAME_RECORD_LIST:
                return None
            _, count, _, _, below = p.RECORD_LIST_BODY.unpack_from(frame.body)
            if after == base:
                listing.last_at_or_below = below
            entries = list(p.RECORD_LIST_ENTRY.iter_unpack(frame.body[p.RECORD_LIST_BODY.size:]))
            listing.entries.extend(entries)
            if len(entries) < 256:
                return listing
            after = entries[-1][0]
        return None

    # ---- the run ---------------------------------------------------------------------

    def setup(self):
        self.quiet = True
        for node in self.nodes:
            for pg in range(PG_COUNT):
                frame = self.rpc("setup", node, p.encode_frame(p.FRAME_CREATE_SEGMENT, self.create_segment_body(pg),
                                                               0, VOLUME_ID, 1, 0))
                assert frame.type == p.FRAME_OK, frame
        self.writer = SimWriter(self, 0, 1, 0, 1, {})
        self.rot_node = self.rng.choice(self.nodes)
        self.started = True
        self.quiet = False
        self.mtrs_left = self.faults.mtrs
        self.at(0.0, self.ev_mtr)
        self.at(5.0, self.ev_writer_tick)
        self.at(10.0, self.ev_fault)
        for node in self.nodes:
            self.at(self.rng.uniform(0, self.faults.gossip_ms), self.ev_gossip, node)
            if self.long:
                self.at(self.pass_rng.uniform(0, 10.0), self.ev_background, node)

    def run_until(self, predicate, limit_ms):
        end = self.now + limit_ms
        while self.events and not predicate():
            when, _, fn, args = self.events[0]
            if when > end:
                break
            heapq.heappop(self.events)
            self.now = max(self.now, when)
            self.steps += 1
            if self.steps > STEPS_MAX:
                self.fail("more than %d events: the run does not converge" % STEPS_MAX)
            fn(*args)
            w = self.writer
            if w is not None and w.alive:
                w.check_points()
        if not predicate():
            self.now = max(self.now, end)

    def run(self):
        self.setup()
        self.run_until(lambda: self.mtrs_left <= 0, 60_000)
        self.quiet = True
        self.blocked = set()
        for node in self.nodes:
            node.slow_factor = 1.0
            if not node.up:
                node.start()
        if self.rng.random() < 0.5:
            # Abrupt end: the writer dies and an AZ is lost right now, before gossip has
            # evened the members out; whatever was acknowledged must still be there.
            self.final_check()
            return
        # Quiesce: faults stop, everything heals and restarts; the writer (or a new one)
        # gets every MTR acknowledged.
        if self.writer is None or not self.writer.alive:
            if not self.recover():
                self.fail("recovery impossible with every node up and reachable")
        w = self.writer
        self.run_until(lambda: w.fenced or not w.pending_cpls, QUIESCE_MS)
        if not w.fenced and w.pending_cpls:
            self.fail("liveness: %d MTRs not durable %d ms after every fault healed (VDL %d, first pending %d)"
                      % (len(w.pending_cpls), QUIESCE_MS, w.tracker.vdl, w.pending_cpls[0]))
        self.final_check()

    def final_check(self):
        """Lose one whole AZ for good, recover a new writer from the four nodes left, and read
        every page at VDL: every acknowledged commit must be there (invariant 1, 4)."""
        self.final = True
        if self.writer is not None:
            self.writer.alive = False
        for writer in self.deposed:
            writer.alive = False
        az = self.rng.choice(AZS)
        self.lost = {n.node_id for n in self.nodes if n.az == az}
        for node in self.nodes:
            self.node_sync(node)
        if not self.recover(final=True):
            self.fail("recovery failed after losing %s with the other two AZs healthy" % az)
        survivors = [n for n in self.nodes if n.node_id not in self.lost]
        for _ in range(GOSSIP_ROUNDS_FINAL):
            for node in survivors:
                node.gossiper.round()
        vdl = self.writer.tracker.vdl
        if vdl < self.model.acked:
            self.fail("invariant 1: VDL %d after losing %s is below the acknowledged commit %d"
                      % (vdl, az, self.model.acked))
        name = self.writer_name()
        for page_no in range(PAGES_PER_PG * PG_COUNT):
            pg = page_no // PAGES_PER_PG
            read_lsn = self.model.pg_read_point(pg, vdl)
            want, want_lsn = self.model.page_at(page_no, read_lsn)
            served = 0
            for node in survivors:
                frame = self.rpc(name, node, p.encode_frame(p.FRAME_GET_PAGE,
                                                            p.GET_PAGE_BODY.pack(pg, page_no, read_lsn),
                                                            0, VOLUME_ID, self.meta["epoch"], 0))
                if frame is None or frame.type != p.FRAME_PAGE:
                    continue
                page = bytes(frame.body[p.PAGE_BODY.size:])
                page_lsn = p.PAGE_BODY.unpack_from(frame.body)[2]
                if page != want or page_lsn != want_lsn:
                    self.fail("invariant 4: after losing %s node %s served page %d at %d (page LSN %d) that "
                              "differs from the model (page LSN %d)"
                              % (az, node.node_id, page_no, read_lsn, page_lsn, want_lsn))
                served += 1
            if not served:
                self.fail("invariant 1: page %d at read point %d is readable from no node after losing %s"
                          % (page_no, read_lsn, az))


def _name_for_network_node(self):
    return self.node_id


def _name_for_network_writer(self):
    return "writer"


SimNode.name_for_network = _name_for_network_node
SimWriter.name_for_network = _name_for_network_writer


@contextlib.contextmanager
def planted(bug):
    """Install a planted bug that lives in shared node code (only gossip-stale-epoch)."""
    if bug != "gossip-stale-epoch":
        yield
        return
    original = node_gossip.accept_gossip_records

    def stale_ok(volume_epoch, membership_epoch, reply_volume_epoch, reply_membership_epoch):
        return reply_volume_epoch <= volume_epoch and reply_membership_epoch == membership_epoch

    node_core.accept_gossip_records = node_gossip.accept_gossip_records = stale_ok
    try:
        yield
    finally:
        node_core.accept_gossip_records = node_gossip.accept_gossip_records = original


def run_seed(seed, swarm=False, bug=None, long=False):
    """Run one seed.  Returns the world (stats, faults) on success; raises Violation."""
    world = World(seed, swarm, bug, long)
    logging.disable(logging.WARNING)    # nodes log refused gossip and repairs; the checks speak
    with planted(bug):
        try:
            world.run()
        except Violation:
            raise
        except errors.AuroraError as exc:
            raise Violation("t=%.1fms: unexpected %s: %s" % (world.now, type(exc).__name__, exc)) from exc
    return world

"""The storage node's request core: frames in, reply frames out.

The protocol logic (epoch fencing, dispatch, which replies must wait for durability) lives
here with no sockets, threads or clocks, so the same code serves the real server
(aurora/node/server.py) and can be driven by a simulator.  Storage is the Segment objects it
owns; each reply is tagged with whether it may leave before the next log sync (an ACK never
may: a node persists a record before it acknowledges it, DESIGN.md invariant 3).
"""
import os
import struct
import threading
import time

from aurora import errors, protocol as p
from aurora import _native
from aurora.node.disk import REAL_DISK
from aurora.node.files import read_json, write_json_durably
from aurora.node.gossip import accept_gossip_records
from aurora.node.meta import MetaStore
from aurora.node.segment import (GC_PAGES_PER_STEP, LOG_FILE_BYTES_DEFAULT, SMALL_INDEX_RECORDS, ReadPointRefused,
                                 Segment, add_range, range_covered)

TRUNCATION_ENTRY = struct.Struct("<IIQQ")   # pg, reserved, after_lsn, through_lsn
TRUNCATION_ALL_PGS = 0xFFFFFFFF             # the pg of a range that holds for every PG of the volume
SET_EPOCH_TRUNCATIONS_MAX = 65536
FETCH_MAX_BYTES_CAP = 16 * 1024 * 1024
GOSSIP_HOLES_PER_ROUND = 16    # hole ranges and damaged records one gossip round goes after
# A raised LWM is made durable (a JSON write with two fsyncs, up to 0.4 s on a busy disk) at
# most every this many GC steps of a segment, about once per 5 s in the server: GC lags that
# much behind the writer's PGMRPL at most.
GC_LWM_SAVE_EVERY = 5


def _truncate_once(segment, after, through):
    """Drop (after, through] from ``segment`` unless its recorded ranges cover it already:
    truncation is idempotent, and every recovery's SET_EPOCH carries the whole history."""
    if range_covered(segment.state["truncations"], after, through):
        return False
    segment.truncate(after, through)
    return True


def _apply_volume_truncations(volume, segment):
    """Apply the volume-wide ranges ``segment`` does not record yet, without syncing: they
    are durable in volume.json, and the segment records each only after its page drops are."""
    for after, through in volume.truncations:
        segment.truncate(after, through, durable=False)


class Reply:
    """One outgoing frame; ``after_sync`` holds it until the log is durable."""

    __slots__ = ("data", "after_sync", "close")

    def __init__(self, data, after_sync=False, close=False):
        self.data = data
        self.after_sync = after_sync
        self.close = close


class Volume:
    """What a node knows of one volume: its epoch and the writer's latest VDL hint, kept
    durably in volume.json.

    The file is written from two threads (epoch changes on the loop, the VDL hint from the
    gossip thread outside the node lock), so every write takes ``save_lock`` and writes the
    fields as they are at that moment: the last write always carries the newest epoch."""

    def __init__(self, directory, volume_id, epoch, vdl_hint=0, disk=REAL_DISK, truncations=()):
        self.directory = directory
        self.disk = disk
        self.volume_id = volume_id
        self.epoch = epoch
        # Volume-wide truncation ranges (sorted, merged): saved here with the epoch that came
        # with them, so a SET_EPOCH is one durable write however many segments the node holds;
        # each segment applies them again after a restart until its own state records them.
        self.truncations = [list(r) for r in truncations]
        self.vdl_hint = vdl_hint
        self.vdl_hint_saved = vdl_hint
        self.segments = {}
        self.save_lock = threading.Lock()

    def save(self):
        with self.save_lock:
            hint = self.vdl_hint
            write_json_durably(os.path.join(self.directory, "volume.json"),
                               {"volume_id": self.volume_id, "volume_epoch": self.epoch,
                                "vdl_hint": hint, "truncations": self.truncations}, self.disk)
            self.vdl_hint_saved = hint


class NodeCore:
    def __init__(self, data_dir, node_id, az, log_file_bytes=LOG_FILE_BYTES_DEFAULT, self_address=None,
                 disk=REAL_DISK):
        self.data_dir = data_dir
        self.disk = disk
        self.node_id = node_id
        self.az = az
        self.log_file_bytes = log_file_bytes
        self.self_address = self_address
        self.volumes = {}
        self.meta = MetaStore(os.path.join(data_dir, "meta"), disk)
        self.gossip_stats = {"records_accepted": 0, "records_rejected_epoch": 0,
                             "records_rejected_bad": 0, "rounds": 0, "scl_requests": 0}
        self.gc_pending = False       # the last background_step left GC work (see there)
        self.background_pending = False   # ... or a materialization pass under way
        # Filled in by the driver, which owns the clock (server.py): how long the background
        # slices held the node, so STATUS shows whether they stay bounded.
        self.background_stats = {"slices": 0, "seconds_total": 0.0, "seconds_max": 0.0,
                                 "slices_over_50ms": 0}
        # The server's native APPEND lane (_native.AppendLane), if it has one: STATUS shows how
        # many frames it served and why it declined the others.
        self.append_lane = None
        disk.makedirs(os.path.join(data_dir, "volumes"), mode=0o700, exist_ok=True)
        identity_path = os.path.join(data_dir, "node.json")
        identity = read_json(identity_path, disk=disk)
        if identity is None:
            write_json_durably(identity_path, {"node_id": node_id, "az": az}, disk)
        elif identity["node_id"] != node_id or identity["az"] != az:
            raise errors.AuroraError(
                "data directory %s belongs to node %r in %r, not node %r in %r"
                % (data_dir, identity["node_id"], identity["az"], node_id, az))
        self._load()

    # ---- state -------------------------------------------------------------------------

    def _volume_dir(self, volume_id):
        return os.path.join(self.data_dir, "volumes", "%016x" % volume_id)

    def _load(self):
        root = os.path.join(self.data_dir, "volumes")
        for name in sorted(self.disk.listdir(root)):
            meta = read_json(os.path.join(root, name, "volume.json"), disk=self.disk)
            if meta is None:
                continue
            volume = Volume(os.path.join(root, name), meta["volume_id"], meta["volume_epoch"],
                            meta.get("vdl_hint", 0), self.disk, meta.get("truncations", ()))
            self.volumes[volume.volume_id] = volume
            for entry in sorted(self.disk.listdir(volume.directory)):
                if not entry.startswith("pg-"):
                    continue
                seg_dir = os.path.join(volume.directory, entry)
                state = read_json(os.path.join(seg_dir, "state.json"), disk=self.disk)
                if state is None:
                    continue
                pg = int(entry[3:])
                segment = Segment(seg_dir, volume.volume_id, pg, state["page_size"],
                                  state["pages_per_pg"], self.log_file_bytes, self.disk)
                _apply_volume_truncations(volume, segment)
                volume.segments[pg] = segment

    def segments(self):
        for volume in self.volumes.values():
            for segment in volume.segments.values():
                yield segment

    def close(self):
        self.persist_vdl_hints()
        for segment in self.segments():
            segment.close()

    def persist_vdl_hints(self):
        """Write every volume's VDL hint that changed since it was last saved.  Called from
        the background side (never the ack path) and on clean shutdown; needs no node lock."""
        saved = 0
        for volume in list(self.volumes.values()):
            if volume.vdl_hint != volume.vdl_hint_saved:
                volume.save()
                saved += 1
        return saved

    def _own_address(self, address):
        if self.self_address is None:
            return False
        if address == self.self_address:
            return True
        if address.startswith("unix:") and self.self_address.startswith("unix:"):
            return os.path.abspath(address[5:]) == os.path.abspath(self.self_address[5:])
        return False

    def _peers(self, body, offset):
        """The peer list at ``offset`` of a request body, without this node's own address."""
        peers, end = p.decode_peers(body, offset)
        if end != len(body):
            raise errors.LengthError("%d bytes after the peer list" % (len(body) - end), end)
        out = []
        for address in peers:
            if not self._own_address(address) and address not in out:
                out.append(address)
        return out

    # ---- dispatch ----------------------------------------------------------------------

    def handle(self, frame):
        """Serve one decoded request frame; returns a list of Reply."""
        handler = self._handlers.get(frame.type)
        try:
            if handler is None:
                raise p.BadRequestError("frame type %s is not a request"
                                        % p.FRAME_NAMES.get(frame.type, frame.type))
            return [handler(self, frame)]
        except errors.FormatError as exc:
            return [self._error(frame, p.ERROR_MALFORMED, str(exc), close=True)]
        except (p.StaleEpochError, p.EpochAheadError, p.UnknownSegmentError,
                p.BadRequestError) as exc:
            return [self._error(frame, p.ERROR_CODES[type(exc)], str(exc))]
        except ReadPointRefused as exc:
            return [self._error(frame, p.ERROR_READ_POINT, str(exc))]
        except (errors.CorruptionError, errors.ChainGapError) as exc:
            return [self._error(frame, p.ERROR_CORRUPT, str(exc))]
        except (ValueError, struct.error) as exc:
            return [self._error(frame, p.ERROR_BAD_REQUEST, str(exc))]

    def _reply(self, frame, type, body=b"", volume=None, after_sync=False, membership_epoch=0):
        epoch = volume.epoch if volume is not None else 0
        return Reply(p.encode_frame(type, body, frame.request_id, frame.volume_id, epoch,
                                    membership_epoch), after_sync)

    def _error(self, frame, code, message, close=False):
        volume = self.volumes.get(frame.volume_id)
        reply = self._reply(frame, p.FRAME_ERROR, p.error_body(code, message), volume)
        reply.close = close
        return reply

    def _volume(self, volume_id):
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise p.UnknownSegmentError("node %s holds no volume %d" % (self.node_id, volume_id))
        return volume

    def _segment(self, volume, pg):
        segment = volume.segments.get(pg)
        if segment is None:
            raise p.UnknownSegmentError("node %s holds no segment of volume %d PG %d"
                                        % (self.node_id, volume.volume_id, pg))
        return segment

    def _check_epoch(self, volume, epoch, what):
        if epoch < volume.epoch:
            raise p.StaleEpochError("%s with volume epoch %d refused: volume %d is at epoch %d "
                                    "(a newer writer has recovered it)" % (what, epoch, volume.volume_id, volume.epoch))
        if epoch > volume.epoch:
            raise p.EpochAheadError("%s with volume epoch %d: node %s is at epoch %d for volume %d; "
                                    "send SET_EPOCH first" % (what, epoch, self.node_id, volume.epoch, volume.volume_id))

    def _check_membership(self, segment, epoch, what):
        if epoch < segment.membership_epoch:
            raise p.StaleEpochError("%s with membership epoch %d refused: PG %d is at %d"
                                    % (what, epoch, segment.pg, segment.membership_epoch))
        if epoch > segment.membership_epoch:
            raise p.EpochAheadError("%s with membership epoch %d: PG %d is at %d; send SET_EPOCH first"
                                    % (what, epoch, segment.pg, segment.membership_epoch))

    # ---- requests ----------------------------------------------------------------------

    def _append(self, frame):
        # A live batch is a few records: decoded into C memory and appended by the native
        # fast path (aurora/_node.pxi), no numpy array or Python object per record.
        batch = _native.decode_small_batch(frame.body)
        if batch is not None:
            volume = self._volume(batch.volume_id)
            segment = self._segment(volume, batch.pg)
            self._check_epoch(volume, batch.volume_epoch, "APPEND")
            self._check_membership(segment, batch.membership_epoch, "APPEND")
            segment.append_small(frame.body, batch)
            # The same bytes as _reply(frame, FRAME_ACK, ACK_BODY.pack(...)), built natively.
            return Reply(_native.encode_ack_frame(p.FRAME_ACK, frame.request_id, frame.volume_id, volume.epoch,
                                                  segment.membership_epoch, batch.pg, segment.scl,
                                                  batch.last_lsn), True)
        header, recs = _native.decode_batch(frame.body)
        volume = self._volume(header.volume_id)
        segment = self._segment(volume, header.pg)
        self._check_epoch(volume, header.volume_epoch, "APPEND")
        self._check_membership(segment, header.membership_epoch, "APPEND")
        # A live batch is a few records: read them as Python rows once, for both steps.
        rows = recs.tolist() if len(recs) <= SMALL_INDEX_RECORDS else None
        segment.check_batch(recs, rows)
        segment.append(frame.body, recs, rows)
        body = p.ACK_BODY.pack(header.pg, 0, segment.scl, header.last_lsn)
        return self._reply(frame, p.FRAME_ACK, body, volume, after_sync=True,
                           membership_epoch=segment.membership_epoch)

    def _get_page(self, frame):
        pg, page_no, read_lsn = p.GET_PAGE_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "GET_PAGE")
        segment = self._segment(volume, pg)
        page, page_lsn = segment.get_page(page_no, read_lsn)
        body = p.PAGE_BODY.pack(page_no, segment.page_size, page_lsn, read_lsn) + page
        return self._reply(frame, p.FRAME_PAGE, body, volume, membership_epoch=segment.membership_epoch)

    def _status(self, frame):
        status = {
            "node_id": self.node_id,
            "az": self.az,
            "pid": os.getpid(),
            "volumes": {str(v.volume_id): {"volume_epoch": v.epoch, "vdl_hint": v.vdl_hint}
                        for v in self.volumes.values()},
            "segments": [s.status() for s in self.segments()],
            "gossip": dict(self.gossip_stats),
            "background": dict(self.background_stats),
        }
        if self.append_lane is not None:
            status["append_lane"] = {"served": self.append_lane.served, "declined": self.append_lane.declined}
        return self._reply(frame, p.FRAME_STATUS_REPLY, p.status_body(status),
                           self.volumes.get(frame.volume_id))

    def _create_segment(self, frame):
        pg, page_size, pages_per_pg = p.CREATE_SEGMENT_BODY.unpack_from(frame.body)
        # The peer list is optional on the wire (a bare 16-byte body means no peers).
        peers = None
        if len(frame.body) > p.CREATE_SEGMENT_BODY.size:
            peers = self._peers(frame.body, p.CREATE_SEGMENT_BODY.size)
        if page_size < _native.PAGE_SIZE_MIN or page_size > _native.PAGE_SIZE_MAX or page_size & (page_size - 1):
            raise p.BadRequestError("page size %d is not a power of two in [%d, %d]"
                                    % (page_size, _native.PAGE_SIZE_MIN, _native.PAGE_SIZE_MAX))
        if pages_per_pg < 1:
            raise p.BadRequestError("a PG needs at least one page")
        volume = self.volumes.get(frame.volume_id)
        if volume is None:
            directory = self._volume_dir(frame.volume_id)
            self.disk.makedirs(directory, mode=0o700, exist_ok=True)
            volume = Volume(directory, frame.volume_id, frame.volume_epoch, disk=self.disk)
            volume.save()
            self.volumes[frame.volume_id] = volume
        else:
            self._check_epoch(volume, frame.volume_epoch, "CREATE_SEGMENT")
        segment = volume.segments.get(pg)
        if segment is None:
            segment = Segment(os.path.join(volume.directory, "pg-%d" % pg), frame.volume_id, pg,
                              page_size, pages_per_pg, self.log_file_bytes, self.disk)
            _apply_volume_truncations(volume, segment)
            segment.set_members(peers or [], frame.membership_epoch)
            volume.segments[pg] = segment
        elif segment.page_size != page_size or segment.pages_per_pg != pages_per_pg:
            raise p.BadRequestError("segment %d/%d exists with %d-byte pages and %d pages per PG"
                                    % (frame.volume_id, pg, segment.page_size, segment.pages_per_pg))
        elif peers is not None and frame.membership_epoch >= segment.membership_epoch:
            # A repeated CREATE_SEGMENT (a writer retrying) may bring the peer list.
            segment.set_members(peers, segment.membership_epoch)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, segment.membership_epoch, segment.scl),
                           volume, membership_epoch=segment.membership_epoch)

    def _set_epoch(self, frame):
        new_epoch, new_membership = p.SET_EPOCH_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        if new_epoch < volume.epoch:
            raise p.StaleEpochError("SET_EPOCH to %d refused: volume %d is already at epoch %d"
                                    % (new_epoch, volume.volume_id, volume.epoch))
        # Truncation ranges ride with the epoch bump: a node must drop the old writer's
        # records above VDL before it accepts a single record of the new epoch.
        rest = frame.body[p.SET_EPOCH_BODY.size:]
        if len(rest) % TRUNCATION_ENTRY.size or len(rest) // TRUNCATION_ENTRY.size > SET_EPOCH_TRUNCATIONS_MAX:
            raise errors.LengthError("SET_EPOCH truncation list of %d bytes is malformed" % len(rest))
        truncations = [TRUNCATION_ENTRY.unpack_from(rest, i) for i in range(0, len(rest), TRUNCATION_ENTRY.size)]
        for pg, _, after, through in truncations:
            if through < after:
                raise p.BadRequestError("truncation range (%d, %d] of PG %d is empty" % (after, through, pg))
        if new_epoch > volume.epoch:
            # A range of one PG is dropped, durably, before the epoch is saved: a crash in
            # between leaves the old epoch, the writer sends the same SET_EPOCH again, and
            # ranges already done are skipped (so a re-sent or cumulative list costs nothing
            # per old range).  Volume-wide ranges are saved with the epoch in one write, then
            # applied to every segment in memory; a restart applies them again (_load).
            for pg, _, after, through in truncations:
                if pg == TRUNCATION_ALL_PGS:
                    add_range(volume.truncations, after, through)
                    continue
                segment = volume.segments.get(pg)
                if segment is not None:
                    _truncate_once(segment, after, through)
            volume.epoch = new_epoch
            volume.save()
            for segment in volume.segments.values():
                _apply_volume_truncations(volume, segment)
        # At the node's own epoch a SET_EPOCH is a repeat (a writer retrying, or a member
        # told twice): OK, and nothing changes.  Truncations only ride an epoch increase, so a
        # node never holds an epoch without every truncation decided before it.
        for segment in volume.segments.values():
            if new_membership > segment.membership_epoch:
                segment.set_membership_epoch(new_membership)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, new_membership, 0), volume)

    def _truncate(self, frame):
        pg, _, after, through = p.TRUNCATE_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "TRUNCATE")
        segment = self._segment(volume, pg)
        if through < after:
            raise p.BadRequestError("truncation range (%d, %d] is empty" % (after, through))
        _truncate_once(segment, after, through)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, segment.membership_epoch, segment.scl),
                           volume)

    def _gossip_scl(self, frame):
        pg, _, peer_scl = p.SCL_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "GOSSIP_SCL")
        segment = self._segment(volume, pg)
        return self._reply(frame, p.FRAME_GOSSIP_SCL, p.SCL_BODY.pack(pg, 0, segment.scl), volume,
                           membership_epoch=segment.membership_epoch)

    def _fetch(self, frame):
        pg, max_bytes, after, through = p.FETCH_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "FETCH")
        segment = self._segment(volume, pg)
        records = segment.fetch(after, through, min(max_bytes, FETCH_MAX_BYTES_CAP))
        body = [p.RECORDS_BODY.pack(pg, len(records), segment.scl)] + records
        return self._reply(frame, p.FRAME_RECORDS, body, volume, membership_epoch=segment.membership_epoch)

    def _set_lwm(self, frame):
        pg, _, lwm = p.SET_LWM_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "SET_LWM")
        segment = self._segment(volume, pg)
        value = segment.set_lwm(lwm)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, segment.membership_epoch, value), volume)

    def _set_members(self, frame):
        (pg,) = p.SET_MEMBERS_BODY.unpack_from(frame.body)
        peers = self._peers(frame.body, p.SET_MEMBERS_BODY.size)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "SET_MEMBERS")
        segment = self._segment(volume, pg)
        if frame.membership_epoch < segment.membership_epoch:
            raise p.StaleEpochError("SET_MEMBERS with membership epoch %d refused: PG %d is at %d"
                                    % (frame.membership_epoch, pg, segment.membership_epoch))
        segment.set_members(peers, frame.membership_epoch)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, segment.membership_epoch, len(peers)),
                           volume, membership_epoch=segment.membership_epoch)

    def _list_records(self, frame):
        # Read-only and served at any epoch (recovery lists members after fencing them, but a
        # listing changes nothing, so no epoch needs refusing).  The reply header carries the
        # node's epochs.
        pg, max_count, after_lsn = p.LIST_RECORDS_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        segment = self._segment(volume, pg)
        count = min(max_count, p.LIST_RECORDS_COUNT_MAX)
        entries, last_at_or_below = segment.list_records(after_lsn, count)
        body = [p.RECORD_LIST_BODY.pack(pg, len(entries), segment.scl, volume.vdl_hint, last_at_or_below)]
        body.extend(p.RECORD_LIST_ENTRY.pack(lsn, prev, flags) for lsn, prev, flags in entries)
        # Held until the next log sync: the SCL it reports may include records gossip appended
        # and recovery must only count what survives a crash.
        return self._reply(frame, p.FRAME_RECORD_LIST, body, volume, after_sync=True,
                           membership_epoch=segment.membership_epoch)

    def _volume_hint(self, frame):
        (vdl,) = p.VOLUME_HINT_BODY.unpack_from(frame.body)
        volume = self._volume(frame.volume_id)
        self._check_epoch(volume, frame.volume_epoch, "VOLUME_HINT")
        if vdl > volume.vdl_hint:
            volume.vdl_hint = vdl    # persisted by the background side (persist_vdl_hints)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch, 0, volume.vdl_hint), volume)

    def _meta_get(self, frame):
        key = bytes(frame.body)
        if not 1 <= len(key) <= p.META_KEY_BYTES_MAX:
            raise p.BadRequestError("metadata key of %d bytes; 1 to %d allowed" % (len(key), p.META_KEY_BYTES_MAX))
        version, value = self.meta.get(key)
        return self._reply(frame, p.FRAME_META, [p.META_BODY.pack(version), value],
                           self.volumes.get(frame.volume_id))

    def _meta_put(self, frame):
        body = frame.body
        version, key_length = p.META_PUT_BODY.unpack_from(body)
        start = p.META_PUT_BODY.size
        if not 1 <= key_length <= p.META_KEY_BYTES_MAX or start + key_length > len(body):
            raise p.BadRequestError("metadata key of %d bytes in a %d-byte body; keys are 1 to %d bytes"
                                    % (key_length, len(body), p.META_KEY_BYTES_MAX))
        value = bytes(body[start + key_length:])
        if len(value) > p.META_VALUE_BYTES_MAX:
            raise p.BadRequestError("metadata value of %d bytes; at most %d" % (len(value), p.META_VALUE_BYTES_MAX))
        key = bytes(body[start:start + key_length])
        stored = self.meta.put(key, version, value)
        # Compare-and-set: the put "took" only if this node now holds exactly this value at
        # this version (a retry of the same put takes too).  Two writers writing the same
        # version race, and only one can have a write quorum take it.
        taken = int(stored == version and self.meta.get(key)[1] == value)
        volume = self.volumes.get(frame.volume_id)
        return self._reply(frame, p.FRAME_OK, p.OK_BODY.pack(volume.epoch if volume else 0, taken, stored), volume)

    _handlers = {
        p.FRAME_APPEND: _append,
        p.FRAME_GET_PAGE: _get_page,
        p.FRAME_STATUS: _status,
        p.FRAME_CREATE_SEGMENT: _create_segment,
        p.FRAME_SET_EPOCH: _set_epoch,
        p.FRAME_TRUNCATE: _truncate,
        p.FRAME_GOSSIP_SCL: _gossip_scl,
        p.FRAME_FETCH: _fetch,
        p.FRAME_SET_LWM: _set_lwm,
        p.FRAME_SET_MEMBERS: _set_members,
        p.FRAME_LIST_RECORDS: _list_records,
        p.FRAME_VOLUME_HINT: _volume_hint,
        p.FRAME_META_GET: _meta_get,
        p.FRAME_META_PUT: _meta_put,
    }

    # ---- background work ---------------------------------------------------------------

    def background_step(self, materialize_pages=64, scrub_bytes=256 * 1024, gc=False, gc_pages=GC_PAGES_PER_STEP,
                        start_passes=True):
        """One bounded slice of background work over every segment: materialization, scrub
        and, with ``gc``, garbage collection.  Returns the work done (records folded, versions
        dropped, log files deleted); ``gc_pending`` tells whether GC left work for the next
        slice (a log file half taken out of the index).  ``start_passes`` false lets passes
        under way go on without beginning new ones (Segment.materialize_step)."""
        work = 0
        pending = False
        busy = False
        failure = None
        for volume in list(self.volumes.values()):
            for segment in list(volume.segments.values()):
                # One segment's failure must not stop the others' background work: it is
                # raised after every segment had its slice.
                try:
                    work += segment.materialize_step(materialize_pages, start_pass=start_passes)
                    if scrub_bytes:
                        segment.scrub_step(scrub_bytes)
                    if gc:
                        # Log files go only up to the VDL hint this node has made durable: a
                        # recovery lists records above the hints it is told.
                        dropped, deleted = segment.gc_step(volume.vdl_hint_saved, max_pages=gc_pages,
                                                           lwm_save_every=GC_LWM_SAVE_EVERY)
                        work += dropped + deleted
                except Exception as exc:
                    failure = failure or exc
                pending = pending or segment.gc_pending()
                busy = busy or segment.background_pending()
        self.gc_pending = pending
        self.background_pending = busy
        if failure is not None:
            raise failure
        return work

    def note_peer_scls(self, volume_id, pg, answers):
        """Record the SCLs a gossip round heard from peers (``answers``: (scl, address))."""
        _, segment = self._gossip_segment(volume_id, pg)
        if segment is not None:
            for scl, address in answers:
                segment.note_peer_scl(address, scl)

    # ---- gossip and repair (driven by aurora/node/gossip.py, under the node's lock) --------

    def gossip_targets(self):
        """A snapshot of what the gossip thread needs per segment that has peers: plain data,
        so no network I/O ever happens while the lock is held."""
        targets = []
        for volume in self.volumes.values():
            for segment in volume.segments.values():
                if not segment.peers:
                    continue
                holes = segment.holes()[:GOSSIP_HOLES_PER_ROUND] if segment.max_lsn > segment.scl else []
                targets.append({
                    "volume_id": volume.volume_id, "pg": segment.pg, "volume_epoch": volume.epoch,
                    "membership_epoch": segment.membership_epoch, "scl": segment.scl,
                    "max_lsn": segment.max_lsn, "lwm": segment.lwm, "holes": holes,
                    "peers": list(segment.peers),
                    "needs_repair": segment.state["needs_repair"],
                    "damaged_lsns": sorted(segment.damaged_lsns)[:GOSSIP_HOLES_PER_ROUND],
                    "corrupt_versions": segment.corrupt_versions(),
                    "missing_bases": sorted(segment.missing_bases)[:GOSSIP_HOLES_PER_ROUND],
                })
        return targets

    def _gossip_segment(self, volume_id, pg):
        volume = self.volumes.get(volume_id)
        return volume, (volume.segments.get(pg) if volume is not None else None)

    def apply_gossip(self, volume_id, pg, reply_volume_epoch, reply_membership_epoch, buf, recs):
        """Append records a peer sent in a RECORDS reply (already scanned and CRC-checked into
        ``recs`` over ``buf``).  The epochs are checked here, against the node's epochs *now*
        (they may have moved while the fetch was on the wire).  Returns records appended (or
        replaced, for damaged copies), or None if the reply was refused."""
        volume, segment = self._gossip_segment(volume_id, pg)
        if segment is None:
            return None
        if not accept_gossip_records(volume.epoch, segment.membership_epoch,
                                     reply_volume_epoch, reply_membership_epoch):
            self.gossip_stats["records_rejected_epoch"] += len(recs)
            return None
        segment.check_batch(recs)
        replaced = segment.replace_records(buf, recs) if segment.damaged_lsns else 0
        added = segment.append(buf, recs)
        self.gossip_stats["records_accepted"] += added + replaced
        if segment.state["needs_repair"]:
            segment.repair["records_fetched"] += added + replaced
        return added + replaced

    def rebuild_version(self, volume_id, pg, slot, page_no, lsn):
        _, segment = self._gossip_segment(volume_id, pg)
        return segment is not None and segment.rebuild_version(slot, page_no, lsn)

    def install_version(self, volume_id, pg, reply_volume_epoch, reply_membership_epoch, slot, page_no, lsn,
                        page):
        """Install a page image a peer sent (PAGE reply) in place of damaged version ``slot``."""
        volume, segment = self._gossip_segment(volume_id, pg)
        if segment is None or not accept_gossip_records(volume.epoch, segment.membership_epoch,
                                                        reply_volume_epoch, reply_membership_epoch):
            return False
        return segment.install_version(slot, page_no, lsn, page)

    def install_base(self, volume_id, pg, reply_volume_epoch, reply_membership_epoch, page_no, lsn, page):
        """Install a peer's image of a page left without a base (PAGE reply at the LWM)."""
        volume, segment = self._gossip_segment(volume_id, pg)
        if segment is None or not accept_gossip_records(volume.epoch, segment.membership_epoch,
                                                        reply_volume_epoch, reply_membership_epoch):
            return False
        return segment.install_base(page_no, lsn, page)

    def complete_repair(self, volume_id, pg, peer_scl_max):
        _, segment = self._gossip_segment(volume_id, pg)
        return segment is not None and segment.complete_repair(peer_scl_max, time.time())

    def dirty_fds(self):
        """The log files every segment dirtied since the last call (Segment.dirty_fds).  Runs
        once per served request batch: segments with nothing dirty are passed over."""
        fds = []
        for volume in self.volumes.values():
            for segment in volume.segments.values():
                if segment._dirty_files:
                    fds.extend(segment.dirty_fds())
        return fds

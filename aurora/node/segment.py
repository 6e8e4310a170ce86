"""One segment: the redo log of one protection group (PG) of one volume on this node, its
in-memory index, SCL tracking, materialization, garbage collection and scrubbing.

Log files are preallocated, memory-mapped and appended in arrival order.  Each holds a 64-byte
file header and then whole records back to back, exactly as they arrived (each carries its own
CRC32C), so a restart rebuilds everything by scanning: a torn tail is the end of the log;
damage in the middle is corruption, reported with file and offset, and the records after it
are kept.

Invariants kept here (DESIGN.md section 2): a record is acknowledged only after sync() has made
it durable (the server enforces the order); SCL only moves forward within an epoch; a read at
read point R returns exactly the page after all records <= R and is refused when R is above
SCL or below the low-water mark; no page or record is served without its CRC checked.
"""
import array
import bisect
import collections
import gc
import os
import struct

import numpy as np

from aurora import errors
from aurora import _native
from aurora.node.disk import REAL_DISK
from aurora.node.files import read_json, write_json_durably
from aurora.node.pagestore import SLOT_WORD_FREE, PageStore

LOG_HEADER = struct.Struct("<IHHIIQIIQ")  # magic, version, flags, crc, reserved, volume, pg, reserved, seq
LOG_HEADER_SIZE = 64
LOG_MAGIC = 0x4C525541  # "AURL"
LOG_VERSION = 1
LOG_FILE_BYTES_DEFAULT = 64 * 1024 * 1024
LOG_FILE_BYTES_MIN = 1024       # small files let the simulator roll logs and collect them
# Appends zero the preallocated space this far ahead of themselves (LogFile._zero_ahead).
LOG_ZERO_AHEAD_BYTES = 256 * 1024
_ZEROS = memoryview(bytes(LOG_ZERO_AHEAD_BYTES))
RECORD_HEADER_SIZE = _native.RECORD_HEADER_SIZE
SCAN_RECORDS_PER_CALL = 65536
# How far past a torn tail the restart clears old bytes, so that a later append followed by a
# crash can never be mistaken for damage in the middle of the log.
TORN_TAIL_CLEAR_CHUNK = 64 * 1024
CORRUPTION_REPORTS_MAX = 256   # the newest damage reports kept for status
# Batches up to this many records are indexed record by record (see _index_small).
SMALL_INDEX_RECORDS = 64
# Background work is done in bounded slices so the node's loop answers requests promptly:
MATERIALIZE_RECORDS_PER_STEP = 16384   # records one materialize_step folds, at most
# A pass syncs the page store every this many new versions, not only at its end: one sync of
# a whole 262,144-page pass held a node's loop for up to a second (4 GiB benchmark).
MATERIALIZE_SYNC_PAGES = 1024
GC_PAGES_PER_STEP = 4096               # page version lists one gc_step cleans, at most
GC_RECORDS_PER_STEP = 32768            # log records one gc_step takes out of the index, at most
FILE_PASS_AFTER_CHECKS = 5             # reclaim checks a log file waits before a file pass is asked for
LSN_TOP = 1 << 64
PAGE_TYPES = frozenset((_native.REC_DELTA, _native.REC_IMAGE, _native.REC_ZERO))
NOT_A_PAGE = 0xFFFFFFFF        # LogFile.indexed_pages of a record that changes no page
# Test mode (tests/test_crash_consistency.py): with AURORA_NODE_SYNC_JOURNAL set, the server
# journals which log bytes each group commit made durable, so a harness can drop everything
# else as a power loss would.  Unset (always, outside tests) it costs one attribute test.
SYNC_JOURNAL = os.environ.get("AURORA_NODE_SYNC_JOURNAL") or None
SYNC_FACTS = collections.deque()   # (log path, synced length), taken by the server's sync journal

# Index entry fields (a tuple per record, kept small and flat).
I_FILE, I_OFFSET, I_LENGTH, I_PAGE, I_TYPE, I_FLAGS, I_PREV_PG, I_PREV_PAGE = range(8)
RECORD_HEADER = struct.Struct("<IBBHIIQQQ")  # crc, type, flags, reserved, payload_length, page_no, lsn, prev_pg, prev_page
assert RECORD_HEADER.size == RECORD_HEADER_SIZE
LOCATION_SEQ_SHIFT = 40                      # index value: log sequence << 40 | offset
LOCATION_OFFSET_MASK = (1 << LOCATION_SEQ_SHIFT) - 1
# Fields of a ``recs.tolist()`` row, in RECORD_DTYPE order (the small-batch paths use rows).
R_LSN, R_PREV_PG, R_PREV_PAGE, R_OFFSET, R_PAGE, R_PAYLOAD_LENGTH, R_TYPE, R_FLAGS = range(8)
assert _native.RECORD_DTYPE.names == ("lsn", "prev_lsn_pg", "prev_lsn_page", "offset", "page_no",
                                      "payload_length", "type", "flags")


def range_covered(ranges, after, through):
    """Whether (after, through] lies inside one of ``ranges`` (sorted, disjoint [after, through]
    pairs, as ``add_range`` keeps them)."""
    i = bisect.bisect_right(ranges, [after, LSN_TOP]) - 1
    return i >= 0 and ranges[i][0] <= after and through <= ranges[i][1]


def add_range(ranges, after, through):
    """Add (after, through] to ``ranges`` in place, merging it with every range it overlaps or
    touches, so the list stays sorted, disjoint and as short as the history allows: each
    recovery adds a range, and every appended record is checked against the list."""
    merged = [after, through]
    keep = []
    for r in ranges:
        if r[1] < merged[0] or merged[1] < r[0]:
            keep.append(r)
        else:
            merged = [min(r[0], merged[0]), max(r[1], merged[1])]
    keep.append(merged)
    keep.sort()
    ranges[:] = keep


def _remove_sorted(ordered, values):
    """Remove ``values`` (all present) from the sorted list ``ordered``.  When they are its
    smallest elements, as collected records are, one slice deletion does it."""
    values.sort()
    count = len(values)
    if count <= len(ordered) and ordered[count - 1] == values[-1]:
        del ordered[:count]      # the count smallest include the largest removed: a prefix
    else:
        remove = set(values)
        ordered[:] = [v for v in ordered if v not in remove]


def _first_nonzero(view, start, chunk=1 << 20):
    """Offset of the first non-zero byte at or after ``start``, or None."""
    position = start
    total = len(view)
    while position < total:
        block = np.frombuffer(view, dtype=np.uint8, count=min(chunk, total - position), offset=position)
        hits = np.flatnonzero(block)
        if len(hits):
            return position + int(hits[0])
        position += len(block)
    return None


def _note_sync_facts(logs):
    """Sync-journal test mode: remember how far each log is about to be synced.  The facts
    are journaled only after the fdatasync that covers them succeeded (server.py)."""
    SYNC_FACTS.extend((log.path, log.tail) for log in logs)


class ReadPointRefused(errors.AuroraError):
    """GetPage@LSN at a read point this segment cannot serve."""


class LogFile:
    """One preallocated, memory-mapped log file."""

    def __init__(self, path, seq, fd, mm, size, disk=REAL_DISK):
        self.disk = disk
        self.path = path
        self.seq = seq
        self.fd = fd
        self.mm = mm
        self.size = size
        self.tail = LOG_HEADER_SIZE
        # Written space ends here (zeroed ahead of the appends, see _zero_ahead); 0 after an
        # open, until the first append zeroes from the tail on.
        self.zeroed_end = 0
        self.lsns = []           # LSNs of the records indexed in this file
        self.max_lsn = 0         # at least the highest of them (GC: O(1) "all below the horizon?")
        # Every (LSN, page) indexed into this file, append-only (12 bytes a record; page
        # NOT_A_PAGE for control records): GC takes the file's records out of the page chains
        # from these instead of reading each header back from a file no longer cached.
        self.indexed_lsns = array.array("Q")
        self.indexed_pages = array.array("I")
        # The target of a complete file pass over this file's pages (Segment._reclaim_step),
        # or None: every page with a record here has a durable version covering it at or
        # below that target.
        self.covered_at = None

    def note_indexed(self, lsns, pages):
        """Remember (LSN, page) pairs: numpy uint64/uint32 columns or small sequences."""
        if isinstance(lsns, np.ndarray):
            self.indexed_lsns.frombytes(lsns.astype("<u8").tobytes())
            self.indexed_pages.frombytes(pages.astype("<u4").tobytes())
        else:
            self.indexed_lsns.extend(lsns)
            self.indexed_pages.extend(pages)
        self.synced_tail = LOG_HEADER_SIZE

    @classmethod
    def create(cls, path, seq, size, volume_id, pg, disk=REAL_DISK):
        fd = disk.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        disk.preallocate(fd, size)
        header = bytearray(LOG_HEADER_SIZE)
        LOG_HEADER.pack_into(header, 0, LOG_MAGIC, LOG_VERSION, 0, 0, 0, volume_id, pg, 0, seq)
        struct.pack_into("<I", header, 8, _native.crc_mask(_native.crc32c(memoryview(header)[12:])))
        disk.pwrite(fd, bytes(header), 0)
        disk.fsync(fd)
        disk.fsync_directory(os.path.dirname(path))
        return cls(path, seq, fd, disk.mmap(fd, size), size, disk)

    @classmethod
    def open(cls, path, seq, volume_id, pg, disk=REAL_DISK):
        fd = disk.open(path, os.O_RDWR)
        size = disk.file_size(fd)
        if size < LOG_HEADER_SIZE:
            disk.close(fd)
            raise errors.CorruptionError("log file is shorter than its header", path, 0)
        mm = disk.mmap(fd, size)
        self = cls(path, seq, fd, mm, size, disk)
        magic, version, flags, crc, _, volume, file_pg, _, file_seq = LOG_HEADER.unpack_from(mm)
        if magic != LOG_MAGIC or _native.crc_mask(_native.crc32c(memoryview(mm)[12:LOG_HEADER_SIZE])) != crc:
            self.close()
            raise errors.CorruptionError("log file header is damaged", path, 0)
        if version != LOG_VERSION:
            self.close()
            raise errors.VersionError("log file version %d, this build reads %d" % (version, LOG_VERSION), 4)
        if volume != volume_id or file_pg != pg or file_seq != seq:
            self.close()
            raise errors.CorruptionError("log file belongs to volume %d PG %d seq %d" % (volume, file_pg, file_seq), path, 0)
        return self

    def room(self):
        return self.size - self.tail

    def append(self, data):
        """Write ``data`` (whole records) at the tail; durable after the next fdatasync.

        Written with pwrite, not through the mapping (which stays the way records are read):
        a store to a mapped page that the last fdatasync wrote back takes a write-protect
        fault, once per group commit, and the writeback itself must first take the page's
        mapping back to read-only.  The kernel copies a pwrite front to back and checks for a
        fatal signal only between pages, so a node killed in the middle leaves a prefix of
        the batch: a torn tail, never a bad record followed by good ones."""
        offset = self.tail
        end = offset + len(data)
        if end > self.size:
            raise ValueError("an append of %d bytes at %d overflows log file %s of %d bytes"
                             % (len(data), offset, self.path, self.size))
        if end > self.zeroed_end:
            self._zero_ahead(end)
        view = memoryview(data)
        written = 0
        while written < len(view):     # a regular file takes it whole; loop all the same
            written += self.disk.pwrite(self.fd, view[written:], offset + written)
        self.tail = end
        return offset

    def _zero_ahead(self, end):
        """Write zeros over the preallocated space from ``end`` on, LOG_ZERO_AHEAD_BYTES at a
        time.  posix_fallocate leaves its blocks *unwritten* extents: the first writeback
        of each block converts its extent, a change of the file's block map that every group
        commit's fdatasync then also had to write (and the extent grew one block at a time).
        Zeroed ahead, a whole run converts once and the commits' syncs write data only: about
        a fifth less CPU per fdatasync on ext4 (docs/node.md).  Zeros past the tail are what a
        log holds there anyway, so a crash at any point leaves a valid log."""
        stop = min(self.size, end + LOG_ZERO_AHEAD_BYTES)
        position = end
        while position < stop:
            written = self.disk.pwrite(self.fd, _ZEROS[:stop - position], position)
            position += written
        self.zeroed_end = stop

    def close(self):
        self.mm.close()
        self.disk.close(self.fd)



class MaterializationPass:
    """One materialization pass (Segment.materialize_step): every page in ``pages`` gets a
    version at ``target``.  ``file`` is the LogFile a file pass covers (None for a pass over
    the dirty pages); ``failed`` when a page could not be built (the pass then counts for
    nothing); ``syncing`` once every page is done and the versions' sync has begun."""
    __slots__ = ("target", "pages", "file", "failed", "syncing")

    def __init__(self, target, pages, file=None):
        self.target = target
        self.pages = list(pages)
        self.file = file
        self.failed = False
        self.syncing = False

class Segment:
    """The log, index and pages of one (volume, PG) on this node."""

    def __init__(self, directory, volume_id, pg, page_size, pages_per_pg,
                 log_file_bytes=LOG_FILE_BYTES_DEFAULT, disk=REAL_DISK):
        if log_file_bytes < LOG_FILE_BYTES_MIN:
            raise ValueError("log files must be at least %d bytes" % LOG_FILE_BYTES_MIN)
        self.directory = directory
        self.disk = disk
        self.volume_id = volume_id
        self.pg = pg
        self.page_size = page_size
        self.pages_per_pg = pages_per_pg
        self.log_file_bytes = max(log_file_bytes, 2 * (RECORD_HEADER_SIZE + page_size) + LOG_HEADER_SIZE)
        self.files = []           # LogFile, in sequence order
        self.seq_on_disk = 0      # highest log sequence on disk, damaged files included
        self.records = {}         # lsn -> log sequence << 40 | offset (see _entry)
        self.files_by_seq = {}
        self.page_chains = {}     # page_no -> sorted LSNs of that page's records
        self.successor = {}       # prev_lsn_pg -> lsn, for records above SCL
        self.scl = 0
        self.max_lsn = 0
        self.corruption = []      # human-readable reports: "file@offset: what"
        self.scrub = {"log_bytes_checked": 0, "page_slots_checked": 0, "passes": 0, "damage": 0}
        self._scrub_file = 0
        self._scrub_offset = LOG_HEADER_SIZE
        self._scrub_record_bytes = 64   # average record size the last scrub step met
        self._dirty_files = set()
        self._dirty_pages = set()
        self._truncation_unsynced = False   # truncate(durable=False) ran since the last save
        # Materialization pass: [target LSN, pages left, a page failed, synced, log file] --
        # the log file for a file pass (_reclaim_step), None for a pass over the dirty pages.
        self._pass = None               # the MaterializationPass under way
        self._file_pass_wanted = None   # (log file, target) _reclaim_step asked for
        self._blocked = [None, 0]       # [log file, reclaim checks] found blocked in a row
        self._reclaim = None      # log file being taken out of the index: [log, position in its indexed_lsns]
        self._gc_more = False     # the last gc_step may have left collectable work
        # Targets of complete materialization passes, ascending (see _reclaim_step).
        self._pass_targets = []
        # The last SCL each peer reported to gossip (address -> SCL, in memory): no log record
        # a peer still lacks is collected, so a member that fell behind can always catch up.
        self.peer_scls = {}
        self.gc_stats = {"pages_visited": 0, "versions_dropped": 0, "log_files_deleted": 0,
                         "log_records_reclaimed": 0, "file_passes": 0}
        self._restoring = []      # (lsn, prev_lsn_pg) columns gathered by a restart scan
        self.sorted_lsns = []     # every held LSN, ascending: LIST_RECORDS, FETCH and holes bisect it
        self.damage = []          # [file name, offset] of log damage found by the restart scan
        self.damaged_lsns = set() # indexed records whose bytes failed a CRC since (scrub or read)
        self.missing_bases = set()  # pages whose chain reaches no version here (see _base_lost)
        self.repair = {"records_fetched": 0, "records_replaced": 0, "pages_rebuilt": 0,
                       "pages_fetched": 0, "slots_freed": 0, "repairs_completed": 0}
        state = read_json(self._state_path(), disk=disk)
        if state is None:
            state = {"page_size": page_size, "pages_per_pg": pages_per_pg, "membership_epoch": 0,
                     "truncations": [], "lwm": 0, "materialized_lsn": 0, "gc_lsn": 0,
                     "needs_repair": False, "peers": [], "repaired_damage": [], "repair_history": []}
            disk.makedirs(directory, mode=0o700, exist_ok=True)
            write_json_durably(self._state_path(), state, disk)
        elif state["page_size"] != page_size or state["pages_per_pg"] != pages_per_pg:
            raise errors.CorruptionError("segment geometry on disk (%d-byte pages, %d per PG) differs "
                                         "from the request (%d, %d)" % (state["page_size"], state["pages_per_pg"],
                                                                        page_size, pages_per_pg),
                                         self._state_path())
        # Files written before peers and repair existed lack these keys.
        state.setdefault("peers", [])
        state.setdefault("repaired_damage", [])
        state.setdefault("repair_history", [])
        state.setdefault("bases_unknown", False)
        self.state = state
        # SET_LWM raises the low-water mark in memory (a reply that waited for an fsync per
        # SET_LWM would slow the loop for nothing); GC acts only on the LWM made durable, so a
        # crash that loses a raise never lets a read at the older LWM meet collected data.
        self._lwm_durable = state["lwm"]
        self._gc_steps_unsaved = 0
        self.pages = PageStore(os.path.join(directory, "pages.aur"), volume_id, pg, page_size, disk,
                               repair_header=True)
        # No truncation reaches below the low-water mark (it starts at a recovered VDL, and
        # every LWM was at most some writer's VDL): versions below it need no tracking for one.
        self.pages.raise_recent_floor(min(state["lwm"], state["materialized_lsn"]))
        if state["materialized_lsn"]:
            self._pass_targets.append(state["materialized_lsn"])
        if self.pages.header_repaired:
            # Bit rot in the file header took the node down at every restart (simulator,
            # swarm seed 10187).  The slots are checked one by one; damaged ones get repaired.
            self._report("pages.aur@0: page store header is damaged; rewritten")
        for slot, offset in self.pages.corrupt_slots:
            self._report("pages.aur@%d: page version in slot %d failed its CRC" % (offset, slot))
        self._scan_logs()

    # ---- persistent state --------------------------------------------------------------

    def _state_path(self):
        return os.path.join(self.directory, "state.json")

    def _save_state(self):
        # A truncation applied without its own sync (a volume-wide range, made durable in
        # volume.json) may be recorded here only once the page versions it dropped are gone
        # on disk too: a recorded range is never applied again after a restart.
        if self._truncation_unsynced:
            self.pages.sync()
            self._truncation_unsynced = False
        write_json_durably(self._state_path(), self.state, self.disk)
        self._lwm_durable = self.state["lwm"]
        self._gc_steps_unsaved = 0

    @property
    def lwm(self):
        return self.state["lwm"]

    @property
    def materialized_lsn(self):
        return self.state["materialized_lsn"]

    @property
    def membership_epoch(self):
        return self.state["membership_epoch"]

    def set_membership_epoch(self, epoch):
        if epoch != self.state["membership_epoch"]:
            self.state["membership_epoch"] = epoch
            self._save_state()

    @property
    def peers(self):
        return self.state["peers"]

    def set_members(self, peers, membership_epoch):
        """Durably record the PG's other members and the membership epoch they belong to."""
        peers = list(peers)
        if peers != self.state["peers"] or membership_epoch != self.state["membership_epoch"]:
            self.state["peers"] = peers
            self.state["membership_epoch"] = membership_epoch
            self._save_state()

    def _truncated(self, lsn):
        for after, through in self.state["truncations"]:
            if after < lsn <= through:
                return True
        return False

    def _report(self, what):
        # The scrub meets the same damage on every pass until it is repaired: report it once.
        if what not in self.corruption:
            self.corruption.append(what)
            del self.corruption[:-CORRUPTION_REPORTS_MAX]
        if not self.state["needs_repair"]:
            self.state["needs_repair"] = True
            self._save_state()

    # ---- restart -----------------------------------------------------------------------

    def _log_path(self, seq):
        return os.path.join(self.directory, "log-%08d.aur" % seq)

    def _scan_logs(self):
        # Millions of index tuples are made here and none can be part of a cycle: the cyclic
        # collector would only re-traverse the growing index again and again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._scan_all_logs()
        finally:
            if collecting:
                gc.enable()

    def _scan_all_logs(self):
        names = sorted(n for n in self.disk.listdir(self.directory) if n.startswith("log-") and n.endswith(".aur"))
        for n, name in enumerate(names):
            seq = int(name[4:12])
            self.seq_on_disk = max(self.seq_on_disk, seq)
            path = os.path.join(self.directory, name)
            try:
                log = LogFile.open(path, seq, self.volume_id, self.pg, self.disk)
            except errors.AuroraError as exc:
                self._report_damage(name, 0, "%s@0: %s" % (name, exc))
                continue
            self.files.append(log)
            self.files_by_seq[seq] = log
            self._scan_file(log, last=(n == len(names) - 1))
        self._restore_scl()
        self.sorted_lsns = sorted(self.records)
        # Damage repaired earlier is gone from the index for good; forget entries of deleted files.
        present = {os.path.basename(log.path) for log in self.files}
        kept = [d for d in self.state["repaired_damage"] if d[0] in present]
        if kept != self.state["repaired_damage"]:
            self.state["repaired_damage"] = kept
            self._save_state()

    def _report_damage(self, name, offset, what):
        """Restart-scan damage: reported (and the segment marked for repair) unless it is
        damage that was already repaired from peers; the damaged bytes stay in the file, the
        good copy fetched from a peer lives further on, so every later restart meets them."""
        if [name, offset] in self.state["repaired_damage"]:
            return
        self.damage.append([name, offset])
        self._report(what)

    def _scan_file(self, log, last):
        view = memoryview(log.mm)
        position = LOG_HEADER_SIZE
        while True:
            recs, end, reason = _native.scan_log(view, position, SCAN_RECORDS_PER_CALL)
            self._index(log, recs)
            if reason == "cap":
                position = end
                continue
            if reason == "end":
                log.tail = end
                break
            # Unwritten space, or a record that failed validation, at `end`: a torn tail if
            # nothing valid follows it, damage in the middle (every later record kept) if
            # something does.  Zeroed bytes in the middle of a log look like unwritten space,
            # so they get the same search.
            if reason == "zero":
                nonzero = _first_nonzero(view, end)
                found = None if nonzero is None else _native.log_resync(view, nonzero)
            else:
                found = _native.log_resync(view, end + 1)
            if found is None:
                log.tail = end
                self._clear_torn_tail(log, end)
                break
            name = os.path.basename(log.path)
            self._report_damage(name, end, "%s@%d: %s; records from offset %d on are kept"
                                % (name, end, reason, found))
            position = found
        view.release()
        log.synced_tail = log.tail

    def _clear_torn_tail(self, log, start):
        """Zero the bytes of a torn tail so later appends start from a clean end of log."""
        position = start
        zero = bytes(TORN_TAIL_CLEAR_CHUNK)
        while position < log.size:
            end = min(position + TORN_TAIL_CLEAR_CHUNK, log.size)
            if log.mm[position:end] == zero[:end - position]:
                break
            log.mm[position:end] = zero[:end - position]
            position = end
        log.mm.flush()
        if SYNC_JOURNAL:   # msync made every byte up to the tail durable
            _note_sync_facts([log])

    def _index(self, log, recs, shift=0, rows=None):
        """Index the records of ``recs`` stored in ``log`` at their offset + ``shift``, skipping
        LSNs below the GC point, in a truncated range, or already held.  Whole columns at a
        time: a restart indexes millions of records, so nothing here loops per record in
        Python except the dictionary updates, which run at C speed.  ``rows``, when given,
        is ``recs.tolist()`` already made by the caller."""
        if len(recs) == 0:
            return 0
        if self._restoring is None and len(recs) <= SMALL_INDEX_RECORDS:
            return self._index_small(log, recs.tolist() if rows is None else rows, shift)
        lsn = recs["lsn"]
        keep = lsn > self.state["gc_lsn"]
        for after, through in self.state["truncations"]:
            keep &= ~((lsn > after) & (lsn <= through))
        if self.records:
            records = self.records
            keep &= np.fromiter((l not in records for l in lsn.tolist()), dtype=bool, count=len(lsn))
        if not keep.all():
            recs = recs[keep]
            if len(recs) == 0:
                return 0
        lsn = recs["lsn"]
        lsns = lsn.tolist()
        page_no = recs["page_no"]
        types = recs["type"]
        # The index holds only where each record is (file sequence and offset packed in one
        # int); everything else is read back from the record's own header in the mapping.
        packed = recs["offset"].astype(np.int64) + (shift + (log.seq << LOCATION_SEQ_SHIFT))
        self.records.update(zip(lsns, packed.tolist()))
        log.lsns.extend(lsns)
        is_page = (types >= _native.REC_DELTA) & (types <= _native.REC_ZERO)
        log.note_indexed(lsn.astype(np.uint64), np.where(is_page, page_no, NOT_A_PAGE).astype(np.uint32))
        if self._restoring is None:
            self._insert_sorted(lsns)
        if is_page.any():
            pages = page_no[is_page]
            page_lsns = lsn[is_page]
            order = np.lexsort((page_lsns, pages))
            pages = pages[order]
            page_lsns = page_lsns[order]
            bounds = np.flatnonzero(pages[1:] != pages[:-1]) + 1
            starts = [0] + bounds.tolist()
            ends = bounds.tolist() + [len(pages)]
            chains = self.page_chains
            lsn_list = page_lsns.tolist()
            for page, a, b in zip(pages[starts].tolist(), starts, ends):
                group = lsn_list[a:b]
                chain = chains.get(page)
                if chain is None:
                    chains[page] = group
                elif chain[-1] < group[0]:
                    chain.extend(group)
                else:
                    chain.extend(group)
                    chain.sort()
            self._dirty_pages.update(pages[starts].tolist())
        top = lsns[-1] if len(lsns) == 1 else int(lsn.max())
        if top > self.max_lsn:
            self.max_lsn = top
        if top > log.max_lsn:
            log.max_lsn = top
        if self._restoring is not None:
            self._restoring.append((lsn, recs["prev_lsn_pg"]))
        else:
            above = lsn > self.scl
            self.successor.update(zip(recs["prev_lsn_pg"][above].tolist(), lsn[above].tolist()))
        return len(lsns)

    def _index_small(self, log, rows, shift):
        """_index for a live batch of a few records, given as ``recs.tolist()`` rows (fields
        in RECORD_DTYPE order): plain Python beats numpy's per-call cost here, and this runs
        for every batch on the acknowledgement path."""
        gc_lsn = self.state["gc_lsn"]
        truncations = self.state["truncations"]
        records = self.records
        chains = self.page_chains
        base = shift + (log.seq << LOCATION_SEQ_SHIFT)
        added = []
        for lsn, prev_pg, _, offset, page_no, _, rtype, _ in rows:
            if lsn <= gc_lsn or lsn in records:
                continue
            if truncations and any(after < lsn <= through for after, through in truncations):
                continue
            records[lsn] = offset + base
            added.append(lsn)
            log.indexed_lsns.append(lsn)
            log.indexed_pages.append(page_no if rtype in PAGE_TYPES else NOT_A_PAGE)
            if rtype in PAGE_TYPES:
                chain = chains.get(page_no)
                if chain is None:
                    chains[page_no] = [lsn]
                elif chain[-1] < lsn:
                    chain.append(lsn)
                else:
                    bisect.insort(chain, lsn)
                self._dirty_pages.add(page_no)
            if lsn > self.max_lsn:
                self.max_lsn = lsn
            if lsn > self.scl:
                self.successor[prev_pg] = lsn
        if added:
            log.lsns.extend(added)
            top = max(added)
            if top > log.max_lsn:
                log.max_lsn = top
            self._insert_sorted(added)
        return len(added)

    def _insert_sorted(self, lsns):
        """Add new LSNs to ``sorted_lsns``.  Writers send LSNs in increasing order, so the
        common case is an append; out-of-order arrivals are inserted by bisection."""
        ordered = self.sorted_lsns
        if len(lsns) == 1 and (not ordered or ordered[-1] < lsns[0]):
            ordered.append(lsns[0])
            return
        if all(a < b for a, b in zip(lsns, lsns[1:])) and (not ordered or ordered[-1] < lsns[0]):
            ordered.extend(lsns)
            return
        for lsn in lsns:
            if not ordered or ordered[-1] < lsn:
                ordered.append(lsn)
            else:
                bisect.insort(ordered, lsn)

    def _unchain(self, page_no, lsn):
        """Take a dropped record (truncated or garbage-collected) out of its page's chain."""
        chain = self.page_chains.get(page_no)
        if chain is not None:
            chain.remove(lsn)
            if not chain:
                del self.page_chains[page_no]

    def _entry(self, lsn):
        """(log, offset, length, page_no, type, flags, prev_lsn_pg, prev_lsn_page) of a held
        record, from its header in the log mapping."""
        packed = self.records[lsn]
        log = self.files_by_seq[packed >> LOCATION_SEQ_SHIFT]
        offset = packed & LOCATION_OFFSET_MASK
        _, rtype, flags, _, payload_length, page_no, _, prev_pg, prev_page = RECORD_HEADER.unpack_from(log.mm, offset)
        return (log, offset, RECORD_HEADER_SIZE + payload_length, page_no, rtype, flags, prev_pg, prev_page)

    def _restore_scl(self):
        """SCL after a restart, computed over whole columns: sorted by LSN, the PG chain is
        complete up to the first record whose backlink is not its predecessor."""
        columns, self._restoring = self._restoring, None
        base = self.state["gc_lsn"]
        self.successor = {}
        if not columns:
            self.scl = base
            return
        lsn = np.concatenate([c[0] for c in columns])
        prev = np.concatenate([c[1] for c in columns])
        order = np.argsort(lsn, kind="stable")
        lsn, prev = lsn[order], prev[order]
        expected = np.empty_like(lsn)
        expected[0] = base
        expected[1:] = lsn[:-1]
        broken = np.flatnonzero(prev != expected)
        complete = int(broken[0]) if len(broken) else len(lsn)
        self.scl = int(lsn[complete - 1]) if complete else base
        self.successor = dict(zip(prev[complete:].tolist(), lsn[complete:].tolist()))
        self._advance_scl()

    def _recompute_scl(self):
        base = self.state["gc_lsn"]
        self.successor = {}
        for lsn in self.records:
            if lsn > base:
                self.successor[self._entry(lsn)[I_PREV_PG]] = lsn
        self.scl = base
        self._advance_scl()

    def _advance_scl(self):
        successor = self.successor
        scl = self.scl
        nxt = successor.pop(scl, None)
        while nxt is not None:
            scl = nxt
            nxt = successor.pop(scl, None)
        self.scl = scl

    # ---- the write path ----------------------------------------------------------------

    def check_batch(self, recs, rows=None):
        """Refuse a batch carrying records of pages outside this PG (a writer bug).  ``rows``,
        when given, is ``recs.tolist()`` already made by the caller (small batches)."""
        if len(recs) == 0:
            return
        if len(recs) <= SMALL_INDEX_RECORDS:
            self._check_rows(recs.tolist() if rows is None else rows)
            return
        pages = recs["page_no"]
        in_pg = (pages == 0xFFFFFFFF) | ((pages // self.pages_per_pg) == self.pg)
        if not bool(in_pg.all()):
            bad = int(pages[~in_pg][0])
            raise ValueError("page %d does not belong to PG %d (%d pages per PG)"
                             % (bad, self.pg, self.pages_per_pg))
        images = recs["type"] == _native.REC_IMAGE
        if bool(images.any()) and not bool((recs["payload_length"][images] == self.page_size).all()):
            raise ValueError("an IMAGE record does not match the segment's %d-byte pages" % self.page_size)

    def _check_rows(self, rows):
        """check_batch for a few records as ``recs.tolist()`` rows: the same checks, in the
        same order, without numpy's per-call cost."""
        pages_per_pg, pg = self.pages_per_pg, self.pg
        for row in rows:
            page_no = row[R_PAGE]
            if page_no != 0xFFFFFFFF and page_no // pages_per_pg != pg:
                raise ValueError("page %d does not belong to PG %d (%d pages per PG)"
                                 % (page_no, pg, pages_per_pg))
        for row in rows:
            if row[R_TYPE] == _native.REC_IMAGE and row[R_PAYLOAD_LENGTH] != self.page_size:
                raise ValueError("an IMAGE record does not match the segment's %d-byte pages" % self.page_size)

    def append(self, buf, recs, rows=None):
        """Append the records of a decoded batch (``recs`` index into ``buf``) that this
        segment does not hold yet.  Durable only after sync().  Returns how many were new.

        Duplicates are idempotent and truncated LSNs stay dropped.  The common case, a batch
        of all-new records, is one copy of the batch body into the log.  A live batch of a
        few records is read as ``recs.tolist()`` rows (``rows``, if the caller made them
        already): plain Python beats numpy's per-call cost there, and this runs for every
        batch on the acknowledgement path.  Larger ones (gossip, bulk loads) are read as
        columns.  Either way the same code decides between one copy and record by record."""
        count = len(recs)
        if count == 0:
            return 0
        if count <= SMALL_INDEX_RECORDS:
            if rows is None:
                rows = recs.tolist()
            fresh = self._fresh_rows(rows)
            offsets = [row[R_OFFSET] for row in rows]
            lengths = [row[R_PAYLOAD_LENGTH] for row in rows]
            payload_bytes = sum(lengths)
        else:
            rows = None
            fresh = self._fresh(recs).tolist()
            offsets = recs["offset"]
            lengths = recs["payload_length"]
            payload_bytes = int(lengths.sum())
        return self._append_runs(memoryview(buf), recs, rows, fresh, offsets, lengths, payload_bytes)

    def append_small(self, buf, batch):
        """append() for a batch decoded by _native.decode_small_batch: the same checks
        (check_batch) and the same result.  The common case -- every record new, the batch
        fitting in the current log file -- is one copy and one native indexing call; any other
        batch goes through the row path of append()."""
        _native.small_batch_check(batch, self.pg, self.pages_per_pg, self.page_size)
        first = batch.first_offset
        end = batch.end_offset
        if (self.files and self.files[-1].room() >= end - first
                and _native.small_batch_all_fresh(batch, self.records, self.state["gc_lsn"],
                                                  self.state["truncations"])):
            log = self.files[-1]
            at = log.append(memoryview(buf)[first:end])
            self._dirty_files.add(log)
            added = _native.small_batch_index(batch, self, log, at - first)
            if added:
                self._advance_scl()
            return added
        # Duplicates, truncated or collected LSNs, or a new log file: the general path, with
        # the rows it reads (the same values decode_batch gives).
        _, recs = _native.decode_batch(buf)
        return self.append(buf, recs, batch.tolist())

    def _append_runs(self, view, recs, rows, fresh, offsets, lengths, payload_bytes):
        """append()'s one decision, for rows and columns alike: a contiguous batch of only new
        records that fits in one log file is one copy; anything else is copied record by
        record, the records this segment holds (or must not hold) left out."""
        count = len(recs)
        first = int(offsets[0])
        last = int(offsets[-1]) + RECORD_HEADER_SIZE + int(lengths[-1])
        contiguous = last - first == payload_bytes + RECORD_HEADER_SIZE * count
        if contiguous and all(fresh) and last - first <= self.log_file_bytes - LOG_HEADER_SIZE:
            log, at = self._write(view, first, last)
            added = self._index(log, recs, at - first, rows)
        else:
            added = 0
            for i in range(count):
                if not fresh[i]:
                    continue
                offset = int(offsets[i])
                log, at = self._write(view, offset, offset + RECORD_HEADER_SIZE + int(lengths[i]))
                added += self._index(log, recs[i:i + 1], at - offset,
                                     None if rows is None else rows[i:i + 1])
        if added:
            self._advance_scl()
        return added

    def _write(self, view, start, end):
        """Copy ``view[start:end]`` (whole records) to the end of a log file with room; the
        file is dirty until the next sync.  Returns (log file, offset written at)."""
        log = self._log_for(end - start)
        at = log.append(view[start:end])
        self._dirty_files.add(log)
        return log, at

    def _fresh_rows(self, rows):
        """_fresh for ``recs.tolist()`` rows: a list of bools."""
        gc_lsn = self.state["gc_lsn"]
        truncations = self.state["truncations"]
        records = self.records
        if not truncations:
            return [row[R_LSN] > gc_lsn and row[R_LSN] not in records for row in rows]
        return [row[R_LSN] > gc_lsn and row[R_LSN] not in records
                and not any(after < row[R_LSN] <= through for after, through in truncations)
                for row in rows]

    def _fresh(self, recs):
        """Which records of ``recs`` this segment should store (a bool column)."""
        lsn = recs["lsn"]
        keep = lsn > self.state["gc_lsn"]
        for after, through in self.state["truncations"]:
            keep &= ~((lsn > after) & (lsn <= through))
        records = self.records
        keep &= np.fromiter((l not in records for l in lsn.tolist()), dtype=bool, count=len(lsn))
        return keep

    def _log_for(self, length):
        if self.files and self.files[-1].room() >= length:
            return self.files[-1]
        # Above every file on disk: one whose header is damaged is not in self.files, but its
        # name is taken (found by the simulator: a flipped header bit blocked every append).
        seq = max(self.files[-1].seq if self.files else 0, self.seq_on_disk) + 1
        self.seq_on_disk = seq
        log = LogFile.create(self._log_path(seq), seq, self.log_file_bytes, self.volume_id, self.pg, self.disk)
        self.files.append(log)
        self.files_by_seq[seq] = log
        return log

    def dirty_fds(self):
        """File descriptors that need an fdatasync before the appends so far are durable;
        clears the set (the caller must sync them before acknowledging)."""
        fds = [log.fd for log in self._dirty_files]
        for log in self._dirty_files:
            log.synced_tail = log.tail
        if SYNC_JOURNAL:
            _note_sync_facts(self._dirty_files)
        self._dirty_files.clear()
        return fds

    def sync(self):
        for fd in self.dirty_fds():
            self.disk.fdatasync(fd)

    # ---- reads -------------------------------------------------------------------------

    def record_bytes(self, lsn):
        entry = self._entry(lsn)
        offset = entry[I_OFFSET]
        return entry[I_FILE].mm[offset:offset + entry[I_LENGTH]]

    def _verified_record(self, entry):
        """A memoryview of one stored record after re-checking its CRC (bit rot since arrival
        must never reach a reader)."""
        view = memoryview(entry[I_FILE].mm)[entry[I_OFFSET]:entry[I_OFFSET] + entry[I_LENGTH]]
        (crc,) = struct.unpack_from("<I", view)
        if _native.crc_mask(_native.crc32c(view[4:])) != crc:
            view.release()
            where = "%s@%d" % (os.path.basename(entry[I_FILE].path), entry[I_OFFSET])
            self._report("%s: record failed its CRC on read" % where)
            lsn = self._lsn_at(entry[I_FILE], entry[I_OFFSET])
            if lsn is not None:
                self.damaged_lsns.add(lsn)
            raise errors.CorruptionError("record at %s failed its CRC32C" % where,
                                         entry[I_FILE].path, entry[I_OFFSET])
        return view

    def get_page(self, page_no, read_lsn):
        """GetPage@LSN: (page bytes, page LSN) after every record <= read_lsn."""
        if page_no // self.pages_per_pg != self.pg:
            raise ValueError("page %d is not in PG %d" % (page_no, self.pg))
        if read_lsn > self.scl:
            raise ReadPointRefused("read point %d is above this segment's SCL %d (volume %d PG %d)"
                                   % (read_lsn, self.scl, self.volume_id, self.pg))
        if read_lsn < self.lwm:
            raise ReadPointRefused("read point %d is below the low-water mark %d (volume %d PG %d)"
                                   % (read_lsn, self.lwm, self.volume_id, self.pg))
        if self.state["bases_unknown"] and self.pages.newest(page_no, read_lsn) is None:
            chain = self.page_chains.get(page_no, ())
            if not chain or chain[0] > read_lsn:
                # A version of some page was lost after GC and nothing tells which page: with
                # no version and no record this page would read as zeros, maybe wrongly.
                self._base_lost(page_no)
                raise errors.CorruptionError(
                    "page %d of volume %d PG %d has no version here and a version of an unknown page "
                    "was lost; its copy is being fetched from a peer" % (page_no, self.volume_id, self.pg))
        try:
            return self._build(page_no, read_lsn)
        except errors.ChainGapError as exc:
            self._base_lost(page_no)
            raise errors.CorruptionError("page %d of volume %d PG %d cannot be built at %d here (%s); "
                                         "its copy is being fetched from a peer"
                                         % (page_no, self.volume_id, self.pg, read_lsn, exc)) from None

    def _base_lost(self, page_no):
        """A page's chain does not reach back to any version it has: a damaged version was
        freed after GC had collected the records that could rebuild it.  Only a peer's copy
        of the page (at the LWM) can stand in; gossip fetches it (install_base)."""
        if page_no not in self.missing_bases:
            self.missing_bases.add(page_no)
            self._report("page %d: no version to build it from and its older records are collected; "
                         "a peer's copy is needed" % page_no)

    def _build(self, page_no, read_lsn):
        """The page after every record <= read_lsn, from its newest version at or below
        read_lsn plus its chain (callers check the read point).

        The chain is read, re-checked and applied by one native call; when it finds anything
        amiss (a record failing its CRC, a chain that does not apply) the page is built again
        on the checked path below, which reports and raises exactly as before."""
        page, page_lsn, lsns = self._base_and_chain(page_no, read_lsn)
        if not lsns:
            return bytes(page), page_lsn
        built = _native.apply_log_chain(page, page_lsn, lsns, self.records, self.files_by_seq)
        if built is not None:
            return bytes(page), built
        return self._build_checked(page_no, read_lsn)

    def _base_and_chain(self, page_no, read_lsn):
        """(page bytearray, its LSN, the LSNs of the page's records above it up to read_lsn):
        the newest version at or below read_lsn (zeros at LSN 0 if none) and what to apply."""
        base = self.pages.newest(page_no, read_lsn)
        if base is None:
            page = bytearray(self.page_size)
            page_lsn = 0
        else:
            page = bytearray(self.pages.read(base[1], page_no))
            page_lsn = base[0]
        chain = self.page_chains.get(page_no, ())
        return page, page_lsn, chain[bisect.bisect_right(chain, page_lsn):bisect.bisect_right(chain, read_lsn)]

    def _build_checked(self, page_no, read_lsn):
        """_build record by record in Python: the reference, and the path that reports a
        damaged record (and marks it for repair) before raising."""
        page, page_lsn, lsns = self._base_and_chain(page_no, read_lsn)
        if lsns:
            entries = [self._entry(lsn) for lsn in lsns]
            views = [self._verified_record(e) for e in entries]
            try:
                page_lsn = _native.apply_chain(
                    page, page_lsn,
                    np.array([e[I_TYPE] for e in entries], dtype=np.uint8),
                    np.array(lsns, dtype=np.uint64),
                    np.array([e[I_PREV_PAGE] for e in entries], dtype=np.uint64),
                    [v[RECORD_HEADER_SIZE:] for v in views])
            finally:
                for v in views:
                    v.release()
        return bytes(page), page_lsn

    def fetch(self, after, through, max_bytes):
        """Records with after < lsn <= through, in LSN order, up to about max_bytes (at least
        one record when there is one): what a peer missing that range needs."""
        ordered = self.sorted_lsns
        lsns = ordered[bisect.bisect_right(ordered, after):bisect.bisect_right(ordered, through)]
        out = []
        size = 0
        for lsn in lsns:
            data = self.record_bytes(lsn)
            if out and size + len(data) > max_bytes:
                break
            out.append(data)
            size += len(data)
        return out

    def holes(self):
        """Missing ranges above SCL as (after, through) pairs: each hole ends where a present
        record's PG backlink points."""
        present = self.sorted_lsns[bisect.bisect_right(self.sorted_lsns, self.scl):]
        ranges = []
        low = self.scl
        for lsn in present:
            prev = self._entry(lsn)[I_PREV_PG]
            if prev > low and prev not in self.records:
                ranges.append((low, prev))
            low = lsn
        return ranges

    def list_records(self, after_lsn, max_count):
        """LIST_RECORDS: ([(lsn, prev_lsn_pg, flags)] of up to ``max_count`` held records with
        lsn > after_lsn in LSN order, the highest held LSN <= after_lsn or 0).  Two bisections
        of the sorted LSN list, then one header read per listed record."""
        ordered = self.sorted_lsns
        start = bisect.bisect_right(ordered, after_lsn)
        last_at_or_below = ordered[start - 1] if start else 0
        # Collected records were held too: the highest of them (gc_lsn, a record of this PG)
        # may be the PG's last LSN at or below the base, which recovery needs as the new
        # writer's PG backlink.
        gc_lsn = self.state["gc_lsn"]
        if last_at_or_below < gc_lsn <= after_lsn:
            last_at_or_below = gc_lsn
        entries = []
        for lsn in ordered[start:start + max_count]:
            entry = self._entry(lsn)
            entries.append((lsn, entry[I_PREV_PG], entry[I_FLAGS]))
        return entries, last_at_or_below

    # ---- repair from peers (the gossip thread drives these, under the node's lock) ---------

    def _lsn_at(self, log, offset):
        """The indexed LSN whose record starts at ``offset`` of ``log``, or None."""
        for lsn in log.lsns:
            packed = self.records.get(lsn)
            if packed is not None and packed >> LOCATION_SEQ_SHIFT == log.seq \
                    and packed & LOCATION_OFFSET_MASK == offset:
                return lsn
        return None

    def replace_records(self, buf, recs):
        """Replace the stored copies of damaged records (``damaged_lsns``) by the good copies
        in ``recs`` (scanned from ``buf``), appended at the end of the log.  The damaged bytes
        stay where they are and are no longer indexed.  Returns how many were replaced."""
        view = memoryview(buf)
        replaced = 0
        for i in range(len(recs)):
            lsn = int(recs["lsn"][i])
            if lsn not in self.damaged_lsns or lsn not in self.records:
                continue
            # The damaged copy's header cannot be trusted; its file comes from the index.
            old_log = self.files_by_seq[self.records[lsn] >> LOCATION_SEQ_SHIFT]
            offset = int(recs["offset"][i])
            length = RECORD_HEADER_SIZE + int(recs["payload_length"][i])
            log, at = self._write(view, offset, offset + length)
            old_log.lsns.remove(lsn)
            log.lsns.append(lsn)
            log.max_lsn = max(log.max_lsn, lsn)
            page_no = int(recs["page_no"][i])
            log.note_indexed((lsn,), (page_no if int(recs["type"][i]) in PAGE_TYPES else NOT_A_PAGE,))
            self.records[lsn] = at + (log.seq << LOCATION_SEQ_SHIFT)
            self.damaged_lsns.discard(lsn)
            replaced += 1
        self.repair["records_replaced"] += replaced
        return replaced

    def corrupt_versions(self):
        """The damaged page versions as (slot, page_no, lsn) read from their slot headers;
        (slot, None, None) when the header itself cannot be trusted."""
        out = []
        seen = set()
        for slot, offset in self.pages.corrupt_slots:
            if slot in seen:
                continue
            seen.add(slot)
            _, _, page_no, _, lsn, _ = struct.unpack_from("<IIIIQQ", self.pages.mm, offset)
            if page_no // self.pages_per_pg != self.pg or lsn == 0 or lsn > max(self.max_lsn, self.scl):
                out.append((slot, None, None))
            else:
                out.append((slot, page_no, lsn))
        return out

    def _unlist_slot(self, slot):
        pages = self.pages
        for page_no, versions in list(pages.versions.items()):
            if any(s == slot for _, s in versions):
                kept = [v for v in versions if v[1] != slot]
                if kept:
                    pages.versions[page_no] = kept
                else:
                    del pages.versions[page_no]

    def _free_corrupt_slot(self, slot):
        pages = self.pages
        self._unlist_slot(slot)
        pages._pwrite(SLOT_WORD_FREE, pages._slot_offset(slot))
        pages.free_slots.append(slot)
        pages.corrupt_slots = [c for c in pages.corrupt_slots if c[0] != slot]
        pages.dirty = True
        self.repair["slots_freed"] += 1

    def rebuild_version(self, slot, page_no, lsn):
        """Rebuild a damaged page version from an older version and the log, if the log still
        holds every record of that page's chain up to ``lsn``.  True when the slot is dealt
        with; False when a peer's page image is needed (apply_chain's backlink check refuses a
        chain with a gap, so a rebuild is never silently wrong)."""
        self._unlist_slot(slot)
        if page_no is None:
            # Nothing tells which version this was.  Free it: a read that needed it as a base
            # now fails the chain check (never a wrong page) and asks a peer (_base_lost).
            # No complete pass vouches for every page any more, so no log file goes until the
            # next pass completes (which meets that page and reports it).
            self._free_corrupt_slot(slot)
            self._pass_targets.clear()
            if self.state["gc_lsn"] and not self.state["bases_unknown"]:
                # The lost version's page may have no record left either: it would read as
                # zeros.  From now on a page with neither is fetched from a peer (get_page).
                self.state["bases_unknown"] = True
                self._save_state()
            return True
        try:
            page, page_lsn = self._build(page_no, lsn)
        except errors.AuroraError:
            return False
        if page_lsn != lsn:
            return False
        self.pages.write(page_no, lsn, page)
        self._free_corrupt_slot(slot)
        self.pages.sync()
        self.repair["pages_rebuilt"] += 1
        return True

    def install_version(self, slot, page_no, lsn, page):
        """Replace damaged version ``slot`` by a page image fetched from a peer (GetPage at
        ``lsn`` whose page LSN is ``lsn``)."""
        if page_no // self.pages_per_pg != self.pg or len(page) != self.page_size:
            raise ValueError("page %d of %d bytes does not fit PG %d" % (page_no, len(page), self.pg))
        if not any(c[0] == slot for c in self.pages.corrupt_slots):
            return False
        if not any(v[0] == lsn for v in self.pages.versions.get(page_no, ())):
            self.pages.write(page_no, lsn, page)
        self._free_corrupt_slot(slot)
        self.pages.sync()
        self.repair["pages_fetched"] += 1
        return True

    def repair_outstanding(self):
        """What still stands between this segment and a clean bill: damaged indexed records,
        damaged page versions and pages left without a base (holes are filled by ordinary
        gossip)."""
        return len(self.damaged_lsns) + len(self.pages.corrupt_slots) + len(self.missing_bases)

    def install_base(self, page_no, lsn, page):
        """Install a peer's image of a page in ``missing_bases`` (GET_PAGE at this segment's
        LWM; ``lsn`` its page LSN, at or below the LWM) as a new version: every read at or
        above the LWM starts from it, and the records above it are in the log."""
        if page_no // self.pages_per_pg != self.pg or len(page) != self.page_size:
            raise ValueError("page %d of %d bytes does not fit PG %d" % (page_no, len(page), self.pg))
        if page_no not in self.missing_bases or lsn > self.lwm:
            return False
        self.pages.write(page_no, lsn, page)
        self.pages.sync()
        self.missing_bases.discard(page_no)
        self._dirty_pages.add(page_no)
        self.repair["pages_fetched"] += 1
        return True

    def complete_repair(self, peer_scl_max, now):
        """Clear ``needs_repair`` durably once SCL has caught up with the highest SCL a peer
        reported and no damaged record or page version remains.  Returns True if cleared."""
        if not self.state["needs_repair"] or self.scl < peer_scl_max or self.repair_outstanding():
            return False
        self.sync()   # the records that repaired the segment are durable before the flag clears
        entry = {"time": now, "scl": self.scl, "reports": self.corruption[-8:],
                 "damage": [list(d) for d in self.damage]}
        entry.update(self.repair)
        self.state["repair_history"] = (self.state["repair_history"] + [entry])[-8:]
        self.state["repaired_damage"] = self.state["repaired_damage"] + [
            d for d in self.damage if d not in self.state["repaired_damage"]]
        self.state["needs_repair"] = False
        self._save_state()
        self.damage = []
        self.corruption = []
        self.repair["repairs_completed"] += 1
        return True

    # ---- epochs and truncation -----------------------------------------------------------

    def truncate(self, after, through, durable=True):
        """Drop every record with after < lsn <= through (writer recovery).

        The cost is in the records dropped, the records above SCL and one look at each page's
        list of versions, not in the log's size: writer recovery truncates every PG, and its
        time must not grow with the volume.  A range already recorded costs nothing.

        ``durable=False`` is for a range the caller has made durable elsewhere and applies
        again after a restart until this segment records it (NodeCore: the volume-wide
        ranges in volume.json): nothing here is synced then, so a SET_EPOCH costs one
        durable write per node, not two per segment."""
        if through < after:
            raise ValueError("truncation range (%d, %d] is empty" % (after, through))
        # Every recovery's SET_EPOCH carries the volume's whole truncation history, so a node
        # meets each range again at every later epoch.  A recorded range was applied in full
        # (below: its page versions dropped durably before it was recorded, its records gone
        # from the index and refused ever since), so there is nothing left to do.
        if range_covered(self.state["truncations"], after, through):
            return
        # Page versions inside the range go first, and durably, before the range is recorded:
        # a crash in between leaves the range unrecorded (and the volume epoch unchanged), so
        # the writer's SET_EPOCH comes again.  Every version above `after` is looked at:
        # materialized_lsn is no bound on them (a pass in progress, or an earlier range of a
        # multi-range SET_EPOCH, leaves versions above it) -- found by the simulator, seed
        # 2441: a version at LSN 104 survived the truncation (103, 169] and GET_PAGE raised
        # ChainGapError.  The page store tracks the pages with versions above its floor, so
        # this costs the versions written since the low-water mark, not one look per page.
        changed = self.pages.drop_range(after, through)
        self._dirty_pages.update(changed)
        dropped_versions = bool(changed)
        add_range(self.state["truncations"], after, through)
        # A complete pass at a target above `after` no longer vouches for anything: versions
        # above `after` are gone, and a page whose versions all were has none left for its
        # records at or below it.  The highest complete target at or below `after` still
        # does (its versions all lie at or below it); with none, nothing does.  (It used to
        # become `after` itself, which claimed such pages were covered: after a restart, GC
        # deleted their records -- tests/test_node_gc.py's crash test with truncations.)
        del self._pass_targets[bisect.bisect_right(self._pass_targets, after):]
        if self.state["materialized_lsn"] > after:
            self.state["materialized_lsn"] = self._pass_targets[-1] if self._pass_targets else 0
        if durable:
            if dropped_versions:
                self.pages.sync()
            self._save_state()
        else:
            self._truncation_unsynced = self._truncation_unsynced or dropped_versions
        ordered = self.sorted_lsns
        lo = bisect.bisect_right(ordered, after)
        hi = bisect.bisect_right(ordered, through)
        dropped = ordered[lo:hi]
        if dropped:
            gone = set(dropped)
            touched = set()
            for lsn in dropped:
                entry = self._entry(lsn)
                touched.add(entry[I_FILE])
                del self.records[lsn]
                self._unchain(entry[I_PAGE], lsn)
            for log in touched:
                log.lsns = [l for l in log.lsns if l not in gone]
                log.max_lsn = max(log.lsns) if log.lsns else 0
            del ordered[lo:hi]
            self.damaged_lsns = {lsn for lsn in self.damaged_lsns if lsn not in gone}
        self.max_lsn = ordered[-1] if ordered else self.state["gc_lsn"]
        if self._pass is not None:
            # The pass is abandoned; the pages it had not reached yet are dirty again.  (They
            # were forgotten: a later pass then completed without them and GC deleted log
            # records no version held -- tests/test_node_gc.py.)  The pages it did reach keep
            # a version at or below the range, or drop_range just made them dirty.
            self._dirty_pages.update(self._pass.pages)
            self._pass = None
        if dropped or self.scl > after:
            # SCL cannot pass the range any more; the chain above it is rebuilt from the
            # records that remain above the new SCL only.
            if self.scl > after:
                below = bisect.bisect_right(ordered, after)
                self.scl = max(ordered[below - 1] if below else 0, self.state["gc_lsn"])
            first = bisect.bisect_right(ordered, self.scl)
            self.successor = {self._entry(lsn)[I_PREV_PG]: lsn for lsn in ordered[first:]}
            self._advance_scl()

    def set_lwm(self, lwm):
        """Raise the low-water mark (PGMRPL); it never moves back and never passes SCL.

        Reads below it are refused from now on.  It is saved with the next state write (gc_step
        makes it durable before collecting anything below it), not here: a crash may bring an
        older LWM back, and reads between the two then still find everything they need."""
        lwm = min(lwm, self.scl)
        if lwm > self.state["lwm"]:
            self.state["lwm"] = lwm
        return self.state["lwm"]

    def note_peer_scl(self, address, scl):
        """Remember the SCL a peer reported to gossip (it bounds which log files GC may delete)."""
        self.peer_scls[address] = scl

    # ---- background work (bounded steps, never on the ack path) ---------------------------

    def materialize_step(self, max_pages, max_records=MATERIALIZE_RECORDS_PER_STEP, start_pass=True):
        """Materialize up to ``max_pages`` pages (folding about ``max_records`` records at
        most) at the current pass's target LSN.  Returns the number of records folded into
        new page versions.

        A pass covers the pages dirty when it starts, at the SCL then; once every one has a
        version that includes its records up to the target, the versions are synced and
        ``materialized_lsn`` moves to the target.  A page whose records or base version fail
        their checks (reported by _build) stays dirty and keeps the pass from counting as
        complete: GC deletes log files on the strength of ``materialized_lsn`` alone.

        With ``start_pass`` false a pass under way goes on but no new one begins: the
        driver spaces passes out, so a page changed by many commits in between gets one new
        version instead of one per pass.

        A file pass, which _reclaim_step asks for when a log file waits for want of a pass
        target inside its window, begins whenever no pass is under way: it covers the pages
        with records in that file, at a target at or below the GC horizon, and when it is
        complete and synced the file may go (LogFile.covered_at); it does not move
        ``materialized_lsn``, since pages outside the file were not looked at."""
        if self._pass is None and self._file_pass_wanted is not None:
            log, target = self._file_pass_wanted
            self._file_pass_wanted = None
            if log in self.files:
                pages = set(log.indexed_pages)
                pages.discard(NOT_A_PAGE)
                self._pass = MaterializationPass(target, pages, log)
        if self._pass is None:
            if not self._dirty_pages or not start_pass:
                return 0
            # Any order will do, so no sort: a pass after a restart covers every page with
            # records in the log.
            self._pass = MaterializationPass(self.scl, self._dirty_pages)
            self._dirty_pages = set()
        pass_ = self._pass
        target, pages, file_pass = pass_.target, pass_.pages, pass_.file
        folded = 0
        while pages and max_pages > 0 and folded < max_records:
            page_no = pages.pop()
            max_pages -= 1
            chain = self.page_chains.get(page_no, ())
            # The newest version at or below the target, not the newest of all: after the
            # pass every page has a version between its last record <= target and the target
            # (GC relies on it), even if a version above the target survived a crash.
            base = self.pages.newest(page_no, target)
            lo = bisect.bisect_right(chain, base[0] if base is not None else 0)
            hi = bisect.bisect_right(chain, target)
            if hi < len(chain) and file_pass is None:
                self._dirty_pages.add(page_no)   # records above the target wait for a later pass
            if hi <= lo:
                continue
            try:
                page, page_lsn = self._build(page_no, target)
            except errors.AuroraError as exc:
                # Damage, reported where it was found; repair from peers makes the page
                # buildable again.  Until then no pass counts as complete.
                if isinstance(exc, errors.ChainGapError):
                    self._base_lost(page_no)
                self._dirty_pages.add(page_no)
                pass_.failed = True
                continue
            self.pages.write(page_no, page_lsn, page)
            folded += hi - lo
        if self.pages.writes_unsynced >= MATERIALIZE_SYNC_PAGES:
            self.pages.sync_begin()           # bounds what the pass's last sync has to write
        if not pages:
            # The pass counts once its versions are durable: its last sync runs off the loop,
            # and a later slice finishes the pass when it is done.
            if not pass_.syncing:
                if not self.pages.sync_begin():
                    return folded
                pass_.syncing = True
            if self.pages.sync_running():
                return folded
            if not pass_.failed and file_pass is not None:
                file_pass.covered_at = target
            elif not pass_.failed:
                # The sync made the pass durable; state.json learns the new materialized_lsn
                # with its next write (a durable JSON write here held the loop for up to 0.4 s
                # on a busy disk).  A restart that finds an older one materializes again.
                if target > self.state["materialized_lsn"]:
                    self.state["materialized_lsn"] = target
                if not self._pass_targets or target > self._pass_targets[-1]:
                    self._pass_targets.append(target)
            self._pass = None
        return folded

    def gc_horizon(self):
        """The LSN at or below which page versions are garbage once a newer one at or below it
        exists: no read at or above the durable low-water mark needs them, and versions up to
        ``materialized_lsn`` come from complete, synced materialization passes."""
        return min(self._lwm_durable, self.state["materialized_lsn"], self.scl)

    def log_gc_horizon(self, vdl_hint_durable=None):
        """The LSN at or below which whole log files may be deleted: the GC horizon, further
        bounded by every peer's last reported SCL (a member that fell behind fetches what it
        lacks from its peers; one never heard from holds everything back) and by the volume's
        durable VDL hint (``vdl_hint_durable``, None for no bound): recovery lists records
        above the highest hint of a read quorum and needs every one of them, so no member
        may have collected a record above its own durable hint."""
        horizon = self.gc_horizon()
        if vdl_hint_durable is not None:
            horizon = min(horizon, vdl_hint_durable)
        for address in self.state["peers"]:
            horizon = min(horizon, self.peer_scls.get(address, 0))
        return horizon

    def gc_step(self, vdl_hint_durable=None, max_pages=GC_PAGES_PER_STEP, max_records=GC_RECORDS_PER_STEP,
                lwm_save_every=1):
        """One bounded slice of garbage collection below the low-water mark: drop the page
        versions no read at or above it can need, and take at most ``max_records`` records of
        a fully covered log file out of the index, deleting the file once all are out.

        The cost is the work done (versions dropped, records unindexed) plus O(log files),
        never O(pages): candidates come off the page store's GC heap.  Returns (versions
        dropped, log files deleted); ``gc_pending()`` says whether more is waiting.  A raised
        LWM is saved (GC acts on a durable LWM only, see set_lwm) at most every
        ``lwm_save_every`` calls, unless another state write carried it meanwhile."""
        self._gc_steps_unsaved += 1
        if self.state["lwm"] > self._lwm_durable and self._gc_steps_unsaved >= lwm_save_every:
            self._save_state()
        horizon = self.gc_horizon()
        dropped = 0
        candidates = self.pages.gc_candidates(horizon, max_pages)
        if candidates:
            # The versions kept must be on disk before the ones they replace are freed (a
            # version of a pass still running may be among them).
            self.pages.sync()
            for page_no in candidates:
                dropped += self.pages.drop_below_newest(page_no, horizon)
            self.gc_stats["pages_visited"] += len(candidates)
            self.gc_stats["versions_dropped"] += dropped
        self.pages.raise_recent_floor(horizon)
        deleted = self._reclaim_step(self.log_gc_horizon(vdl_hint_durable), max_records)
        # One file per step; after one went, the next may be collectable too.
        self._gc_more = bool(deleted) or len(candidates) == max_pages
        return dropped, deleted

    def gc_pending(self):
        """Whether gc_step stopped with collectable work maybe left: a log file half taken
        out of the index, a file just deleted (the next may go too), or a full batch of
        page version lists (more may wait on the heap)."""
        return self._reclaim is not None or self._gc_more

    def materialize_pending(self):
        """Whether a materialization pass is under way."""
        return self._pass is not None

    def background_pending(self):
        """Whether a materialization pass or a log file's reclaim is under way: the next
        background slice has work for certain (a pass that only waits for its sync has none)."""
        return (self._pass is not None and not self._pass.syncing) or self._reclaim is not None

    def _reclaim_step(self, horizon, max_records):
        """Unindex up to ``max_records`` records of the oldest log file that no read at or
        above the LWM needs; delete the file when none is left.  Returns files deleted.

        A file qualifies when all its records are at or below the target T of a complete
        materialization pass with T <= ``horizon``: that pass left every page it changed a
        durable version between the page's last record <= T and T, so at or below the
        horizon, where GC keeps the newest version (or a newer one at or below it); a read at
        R >= LWM >= horizon starts from that version or a later one and needs no record of
        the file.  (The newest version of all is no proof: it may lie above the LWM, and a
        read between the two would miss the record -- tests/test_node_gc.py's crash test.)
        Not while any repair is outstanding: a damaged page version may need the log to be
        rebuilt."""
        if self._reclaim is None:
            if self.pages.corrupt_slots or self.damaged_lsns or self.state["needs_repair"]:
                return 0
            targets = self._pass_targets
            below = bisect.bisect_right(targets, horizon)
            covered = targets[below - 1] if below else 0
            if below > 1:
                del targets[:below - 1]       # the horizon never moves back: older ones are moot
            waiting = None
            for log in self.files[:-1]:       # never the file appends go to
                if log.max_lsn > horizon or log in self._dirty_files:
                    continue
                if log.max_lsn <= covered or (log.covered_at is not None and log.covered_at <= horizon):
                    self._reclaim = [log, 0]
                    break
                if waiting is None:
                    waiting = log
            else:
                self._note_blocked(waiting, horizon)
                return 0
        log, position = self._reclaim
        end = min(position + max_records, len(log.indexed_lsns))
        self._unindex(log, position, end)
        self._reclaim[1] = end
        if end < len(log.indexed_lsns):
            return 0
        # Every record is out of the index: record the GC point (records at or below it are
        # skipped by a restart scan, and it is SCL's base then), then delete the file.
        self.pages.sync()
        self.state["gc_lsn"] = max(self.state["gc_lsn"], log.max_lsn)
        self._save_state()
        index = self.files.index(log)
        del self.files[index]
        # The scrub's cursor is an index into self.files: keep it on the file it was in (the
        # 4 GiB benchmark found it pointing past the end of the next file, and the scrub's
        # error stopped every segment's background work on the node).
        if index < self._scrub_file:
            self._scrub_file -= 1
        elif index == self._scrub_file:
            self._scrub_offset = LOG_HEADER_SIZE
        del self.files_by_seq[log.seq]
        log.close()
        self.disk.unlink(log.path)
        self.disk.fsync_directory(self.directory)
        self._reclaim = None
        self.gc_stats["log_files_deleted"] += 1
        return 1

    def _note_blocked(self, log, horizon):
        """``log`` (or None) is the oldest file all of whose records lie at or below the
        horizon but that no complete pass covers: every pass target is below its newest
        record or above the horizon.  That clears by itself once the horizon passes the next
        target -- unless a read point holds the horizon still (tests/test_writer_gc.py), when
        no pass that targets the SCL ever helps.  After FILE_PASS_AFTER_CHECKS reclaim
        checks in a row find the same file waiting, a file pass at the horizon is asked for
        (materialize_step)."""
        blocked = self._blocked
        if log is None or blocked[0] is not log:
            self._blocked = [log, 1]
            return
        blocked[1] += 1
        pass_ = self._pass
        if (blocked[1] >= FILE_PASS_AFTER_CHECKS and self._file_pass_wanted is None
                and (pass_ is None or pass_.file is not log)):
            self._file_pass_wanted = (log, horizon)
            self._blocked = [log, 0]
            self.gc_stats["file_passes"] += 1

    def _unindex(self, log, start, end):
        """Take the records ``log`` indexed at positions [start, end) of its indexed_lsns out
        of the index, the page chains and the sorted LSN list (those since moved to another
        file, truncated or collected are skipped).  Nothing is read from the file.  Collected
        records are the oldest, so each list loses a prefix in the common case: one slice
        deletion per page, not a search per record."""
        records = self.records
        seq = log.seq
        by_page = {}
        gone = []
        for lsn, page_no in zip(log.indexed_lsns[start:end], log.indexed_pages[start:end]):
            packed = records.get(lsn)
            if packed is None or packed >> LOCATION_SEQ_SHIFT != seq:
                continue
            del records[lsn]
            gone.append(lsn)
            if page_no != NOT_A_PAGE:
                by_page.setdefault(page_no, []).append(lsn)
        if not gone:
            return
        for page_no, page_lsns in by_page.items():
            chain = self.page_chains.get(page_no)
            if chain is None:
                continue
            _remove_sorted(chain, page_lsns)
            if not chain:
                del self.page_chains[page_no]
        _remove_sorted(self.sorted_lsns, gone)
        if self.damaged_lsns:
            self.damaged_lsns.difference_update(gone)
        self.gc_stats["log_records_reclaimed"] += len(gone)

    def scrub_step(self, max_bytes):
        """Re-check CRCs of up to ``max_bytes`` of log and a matching share of page slots."""
        damage = 0
        if self.files:
            if self._scrub_file >= len(self.files):
                self._scrub_file = 0
                self._scrub_offset = LOG_HEADER_SIZE
                self.scrub["passes"] += 1
            log = self.files[self._scrub_file]
            if self._scrub_offset > log.tail:     # never expected; start the file again
                self._scrub_offset = LOG_HEADER_SIZE
            view = memoryview(log.mm)[:log.tail]
            start = self._scrub_offset
            # The scan caps records, not bytes: ask for as many as the budget holds at the
            # size records had in the last step (a fixed 64 bytes a record checked 7x the
            # budget on a commit stream's ~450-byte records).
            cap = max(1, max_bytes // self._scrub_record_bytes)
            recs, end, reason = _native.scan_log(view, start, cap)
            view.release()
            if len(recs):
                self._scrub_record_bytes = max(RECORD_HEADER_SIZE, (end - start) // len(recs))
            self.scrub["log_bytes_checked"] += end - start
            if reason == "end" or end >= log.tail:
                self._scrub_file += 1
                self._scrub_offset = LOG_HEADER_SIZE
            elif reason == "cap":
                self._scrub_offset = end
            else:
                name = os.path.basename(log.path)
                if [name, end] not in self.damage and [name, end] not in self.state["repaired_damage"]:
                    # Damage the restart scan found (and maybe repaired) stays in the file;
                    # only new damage counts.
                    damage += 1
                    self._report("%s@%d: scrub found %s" % (name, end, reason))
                    self.damage.append([name, end])
                    lsn = self._lsn_at(log, end)
                    if lsn is not None:
                        self.damaged_lsns.add(lsn)
                found = _native.log_resync(memoryview(log.mm)[:log.tail], end + 1)
                if found is None:
                    self._scrub_file += 1
                    self._scrub_offset = LOG_HEADER_SIZE
                else:
                    self._scrub_offset = found
        slots = max(1, max_bytes // self.pages.slot_size)
        for slot, offset in self.pages.scrub_step(slots):
            damage += 1
            self._report("pages.aur@%d: scrub found slot %d damaged" % (offset, slot))
        self.scrub["page_slots_checked"] += slots
        self.scrub["damage"] += damage
        return damage

    # ---- status and shutdown ---------------------------------------------------------------

    def status(self):
        return {
            "volume_id": self.volume_id,
            "pg": self.pg,
            "page_size": self.page_size,
            "pages_per_pg": self.pages_per_pg,
            "scl": self.scl,
            "max_lsn": self.max_lsn,
            "materialized_lsn": self.state["materialized_lsn"],
            "lwm": self.state["lwm"],
            "gc_lsn": self.state["gc_lsn"],
            "membership_epoch": self.state["membership_epoch"],
            "records": len(self.records),
            "log_files": len(self.files),
            "log_bytes": sum(log.tail - LOG_HEADER_SIZE for log in self.files),
            "page_count": len(self.pages.versions),
            "gc": dict(self.gc_stats),
            "page_versions": self.pages.version_count(),
            "holes": [list(h) for h in self.holes()[:16]],
            "needs_repair": self.state["needs_repair"],
            "corruption": self.corruption[-16:],
            "scrub": dict(self.scrub),
            "truncations": self.state["truncations"],
            "peers": list(self.state["peers"]),
            "damaged_lsns": sorted(self.damaged_lsns)[:16],
            "corrupt_page_slots": len(self.pages.corrupt_slots),
            "missing_bases": sorted(self.missing_bases)[:16],
            "repair": dict(self.repair),
            "repair_history": self.state["repair_history"],
        }

    def close(self):
        self.sync()
        if self.state["lwm"] != self._lwm_durable:
            self._save_state()
        self.pages.close()
        for log in self.files:
            log.close()
        self.files = []

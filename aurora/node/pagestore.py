"""The page store: materialized page versions in one memory-mapped file.

File layout: a 64-byte file header, then fixed-size slots of SLOT_HEADER_SIZE + page_size
bytes.  A slot header is

    offset size field
     0      4   crc        masked CRC32C of bytes [4, SLOT_HEADER_SIZE + page_size) of the slot
     4      4   flags      SLOT_IN_USE or 0
     8      4   page_no
    12      4   page_size
    16      8   page_lsn   the LSN of the last record this image includes
    24      8   reserved   zero

A version is written page bytes first and its crc+flags word last, so a process killed in
the middle leaves a slot that reads as free, never as a torn page.  A slot whose flags say
in use but whose CRC fails is corruption: it is reported and never served.
"""
import hashlib
import heapq
import os
import struct

from aurora import errors
from aurora import _native
from aurora._native import crc32c
from aurora.node.disk import REAL_DISK

FILE_HEADER = struct.Struct("<IHHIIQIIQ")  # magic, version, flags, crc, page_size, volume, pg, reserved, reserved
FILE_HEADER_SIZE = 64
FILE_MAGIC = 0x50525541  # "AURP"
FILE_VERSION = 1
SLOT_HEADER = struct.Struct("<IIIIQQ")
SLOT_HEADER_SIZE = SLOT_HEADER.size
assert SLOT_HEADER_SIZE == 32
SLOT_IN_USE = 1
SLOT_WORD = struct.Struct("<II")           # crc, flags: a slot's first 8 bytes
SLOT_WORD_FREE = SLOT_WORD.pack(0, 0)
SLOTS_INITIAL = 64
# ``recent`` (versions above a floor, for truncation) is pruned only once it has grown this
# much past what the last prune kept, so pruning costs O(versions written since), not O(pages).
RECENT_PRUNE_MIN = 4096
# Test mode (see segment.py SYNC_JOURNAL): a copy of the file as each sync left it.
SYNC_JOURNAL = os.environ.get("AURORA_NODE_SYNC_JOURNAL") or None



def synced_copy_path(journal, path):
    """Where the sync-journal test mode keeps the last synced image of page store ``path``."""
    return "%s.pages/%s" % (journal, hashlib.sha1(os.path.abspath(path).encode()).hexdigest())


def _journal_snapshot(store):
    """Sync-journal test mode: keep the file as this fdatasync left it durable."""
    target = synced_copy_path(SYNC_JOURNAL, store.path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "wb") as f:
        f.write(store.mm[:])
    os.replace(target + ".tmp", target)


class PageStore:
    """Page versions of one segment.  Not thread-safe: the node's loop owns it."""

    def __init__(self, path, volume_id, pg, page_size, disk=REAL_DISK, repair_header=False):
        """``repair_header``: a header that fails its magic or CRC check (bit rot) is rewritten
        from the expected geometry instead of refusing the file, and ``header_repaired`` says
        so; every slot is still CRC-checked on its own.  The segment opens its store this way:
        its old page versions may be the only copy of pages whose log records were collected,
        and a node must come back from a damaged file (invariant 9)."""
        self.disk = disk
        self.header_repaired = False
        self.path = path
        self.volume_id = volume_id
        self.pg = pg
        self.page_size = page_size
        self.slot_size = SLOT_HEADER_SIZE + page_size
        self.versions = {}        # page_no -> sorted list of [lsn, slot]
        self.free_slots = []
        # Slots freed since the last sync: their old version may still be what the disk holds,
        # so they are reused only after the sync that makes them free on disk (a crash can
        # then never leave an old version's header over a new version's bytes).
        self.freed_unsynced = []
        # GC candidates: (LSN of the page's second-oldest version, page_no), a min-heap.  The
        # oldest version of a page is garbage once its second-oldest is at or below the GC
        # horizon, so GC pops only entries at or below the horizon: its cost is the versions
        # it drops (plus stale entries, each pushed by a version change), never the page count.
        self.gc_heap = []
        # (lsn, page_no) of every version with lsn > recent_floor (and maybe some below): a
        # truncation above the floor looks at these pages only, not at every page.
        self.recent = []
        self.recent_floor = 0
        self._recent_kept = 0
        self.corrupt_slots = []   # (slot, offset) found by open or scrub
        self.dirty = False
        self.writes_unsynced = 0  # page versions written since the last sync
        self._sync_future = None  # an fdatasync started by sync_begin, maybe still running
        self._freed_in_flight = []   # slots it frees once it is done
        self.scrub_cursor = 0
        exists = disk.exists(path)
        self.fd = disk.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.mm = None
        try:
            if not exists or disk.file_size(self.fd) == 0:
                self._create()
            size = disk.file_size(self.fd)
            self.capacity = (size - FILE_HEADER_SIZE) // self.slot_size
            self.mm = disk.mmap(self.fd, size)
            if repair_header and not self._header_intact():
                self.mm[:FILE_HEADER_SIZE] = self._header_bytes()
                disk.fdatasync(self.fd)
                self.header_repaired = True
            self._check_header()
            self._load()
        except BaseException:
            # A refused file must not keep its descriptor and mapping: every retried open
            # leaked one (found by fuzz_pagestore: EMFILE after ~270,000 refused headers).
            if self.mm is not None:
                self.mm.close()
            disk.close(self.fd)
            raise

    # ---- file management ---------------------------------------------------------------

    def _header_bytes(self):
        header = bytearray(FILE_HEADER_SIZE)
        FILE_HEADER.pack_into(header, 0, FILE_MAGIC, FILE_VERSION, 0, 0, self.page_size,
                              self.volume_id, self.pg, 0, 0)
        struct.pack_into("<I", header, 8, _native.crc_mask(crc32c(memoryview(header)[12:])))
        return bytes(header)

    def _header_intact(self):
        """The header's magic and CRC check out (its fields may still not match)."""
        if len(self.mm) < FILE_HEADER_SIZE:
            return True   # _check_header refuses a file too short to repair
        magic, _, _, crc, _, _, _, _, _ = FILE_HEADER.unpack_from(self.mm)
        return magic == FILE_MAGIC and _native.crc_mask(crc32c(memoryview(self.mm)[12:FILE_HEADER_SIZE])) == crc

    def _create(self):
        size = FILE_HEADER_SIZE + SLOTS_INITIAL * self.slot_size
        self.disk.ftruncate(self.fd, size)
        self.disk.pwrite(self.fd, self._header_bytes(), 0)
        self.disk.fsync(self.fd)
        self.disk.fsync_directory(os.path.dirname(self.path))

    def _check_header(self):
        if len(self.mm) < FILE_HEADER_SIZE:
            raise errors.CorruptionError("page store is shorter than its header", self.path, 0)
        magic, version, flags, crc, page_size, volume, pg, _, _ = FILE_HEADER.unpack_from(self.mm)
        if magic != FILE_MAGIC or _native.crc_mask(crc32c(memoryview(self.mm)[12:FILE_HEADER_SIZE])) != crc:
            raise errors.CorruptionError("page store header is damaged", self.path, 0)
        if version != FILE_VERSION:
            raise errors.VersionError("page store version %d, this build reads %d"
                                      % (version, FILE_VERSION), 4)
        if page_size != self.page_size or volume != self.volume_id or pg != self.pg:
            raise errors.CorruptionError(
                "page store belongs to volume %d PG %d with %d-byte pages, expected %d/%d/%d"
                % (volume, pg, page_size, self.volume_id, self.pg, self.page_size), self.path, 0)

    def _load(self):
        for slot in range(self.capacity - 1, -1, -1):
            state = self._check_slot(slot)
            if state is None:
                self.free_slots.append(slot)
            elif state is False:
                self.corrupt_slots.append((slot, self._slot_offset(slot)))
            else:
                page_no, lsn = state
                self._insert_version(page_no, lsn, slot)

    def _slot_offset(self, slot):
        return FILE_HEADER_SIZE + slot * self.slot_size

    def _check_slot(self, slot):
        """None: free; False: in use but damaged; (page_no, lsn): a good version."""
        off = self._slot_offset(slot)
        crc, flags, page_no, page_size, lsn, _ = SLOT_HEADER.unpack_from(self.mm, off)
        if flags == 0:
            return None
        view = memoryview(self.mm)[off + 4:off + self.slot_size]
        try:
            if flags != SLOT_IN_USE or page_size != self.page_size or _native.crc_mask(crc32c(view)) != crc:
                return False
        finally:
            view.release()
        return page_no, lsn

    def _grow(self):
        old = self.capacity
        new = max(old * 2, SLOTS_INITIAL)   # a file cut short to its header has 0 slots
        self.mm.flush()
        self.mm.close()
        self.disk.ftruncate(self.fd, FILE_HEADER_SIZE + new * self.slot_size)
        self.mm = self.disk.mmap(self.fd, FILE_HEADER_SIZE + new * self.slot_size)
        self.capacity = new
        self.free_slots.extend(range(new - 1, old - 1, -1))

    def _insert_version(self, page_no, lsn, slot):
        versions = self.versions.setdefault(page_no, [])
        second = versions[1][0] if len(versions) >= 2 else None
        versions.append([lsn, slot])
        if len(versions) > 1 and versions[-2][0] > lsn:
            versions.sort()
        # A new GC candidate entry only when the second-oldest version changed: the common
        # case, a version above the others, pushes once per page (when it gets its second).
        if len(versions) >= 2 and versions[1][0] != second:
            heapq.heappush(self.gc_heap, (versions[1][0], page_no))
        if lsn > self.recent_floor:
            self.recent.append((lsn, page_no))

    # ---- versions ----------------------------------------------------------------------

    def newest(self, page_no, at_or_below):
        """(lsn, slot) of the newest version with lsn <= at_or_below, or None."""
        best = None
        for entry in self.versions.get(page_no, ()):
            if entry[0] <= at_or_below:
                best = entry
            else:
                break
        return best

    def newest_lsn(self, page_no):
        versions = self.versions.get(page_no)
        return versions[-1][0] if versions else 0

    def read(self, slot, page_no):
        """The page image in ``slot``, CRC-checked on every read."""
        state = self._check_slot(slot)
        if not state or state[0] != page_no:
            off = self._slot_offset(slot)
            self.corrupt_slots.append((slot, off))
            raise errors.CorruptionError("page %d version in slot %d failed its CRC" % (page_no, slot),
                                         self.path, off)
        off = self._slot_offset(slot) + SLOT_HEADER_SIZE
        return self.mm[off:off + self.page_size]

    def write(self, page_no, lsn, page):
        """Store a new version; durable after the next sync()."""
        if len(page) != self.page_size:
            raise ValueError("page of %d bytes, store holds %d" % (len(page), self.page_size))
        if not self.free_slots:
            if self.freed_unsynced:
                self.sync()     # makes the slots GC and truncation freed reusable
            else:
                self._grow()
        slot = self.free_slots.pop()
        off = self._slot_offset(slot)
        # The slot is built in memory and written with pwrite, not through the mapping: a
        # store to a mapped page the last sync wrote back takes a write-protect fault (two
        # per version: a slot straddles two memory pages), and the sync must first take the
        # page's mapping back to read-only.  Reads still go through the mapping.
        image = bytearray(self.slot_size)
        image[SLOT_HEADER_SIZE:] = page
        SLOT_HEADER.pack_into(image, 0, 0, SLOT_IN_USE, page_no, self.page_size, lsn, 0)
        with memoryview(image) as view:
            crc = _native.crc_mask(crc32c(view[4:]))
            # The crc+flags word goes last, in a write of its own: until it lands the slot
            # reads as free (a free slot's word is zero on disk; see _free and sync).
            self._pwrite(view[8:], off + 8)
        self._pwrite(SLOT_WORD.pack(crc, SLOT_IN_USE), off)
        self._insert_version(page_no, lsn, slot)
        self.dirty = True
        self.writes_unsynced += 1
        return slot

    def drop_versions(self, page_no, predicate):
        """Free every version of ``page_no`` whose lsn satisfies ``predicate``."""
        versions = self.versions.get(page_no)
        if not versions:
            return 0
        keep = []
        dropped = 0
        for lsn, slot in versions:
            if predicate(lsn):
                self._free(slot)
                dropped += 1
            else:
                keep.append([lsn, slot])
        if keep:
            self.versions[page_no] = keep
            if len(keep) >= 2 and dropped:
                heapq.heappush(self.gc_heap, (keep[1][0], page_no))
        else:
            del self.versions[page_no]
        return dropped

    def _pwrite(self, data, offset):
        written = 0
        while written < len(data):     # a regular file takes it whole; loop all the same
            written += self.disk.pwrite(self.fd, data[written:], offset + written)

    def _free(self, slot):
        self._pwrite(SLOT_WORD_FREE, self._slot_offset(slot))
        self.freed_unsynced.append(slot)
        self.dirty = True

    def drop_below_newest(self, page_no, horizon):
        """Free every version of ``page_no`` older than its newest version at or below
        ``horizon``: no read at or above the horizon can use them.  Returns how many."""
        versions = self.versions.get(page_no)
        if not versions or len(versions) < 2 or versions[1][0] > horizon:
            return 0
        keep_from = 1
        while keep_from + 1 < len(versions) and versions[keep_from + 1][0] <= horizon:
            keep_from += 1
        for _, slot in versions[:keep_from]:
            self._free(slot)
        del versions[:keep_from]
        if len(versions) >= 2:
            heapq.heappush(self.gc_heap, (versions[1][0], page_no))
        return keep_from

    def gc_candidates(self, horizon, max_pages):
        """Pages (at most ``max_pages``) whose oldest version is garbage at ``horizon``, taken
        off the GC heap.  Entries made stale by later changes are skipped (each was pushed by
        a version change, so skipping them is paid for by that change)."""
        heap = self.gc_heap
        out = []
        while heap and heap[0][0] <= horizon and len(out) < max_pages:
            key, page_no = heapq.heappop(heap)
            versions = self.versions.get(page_no)
            if versions is None or len(versions) < 2:
                continue
            if versions[1][0] != key and versions[1][0] > horizon:
                # A later change moved the second-oldest version above the horizon; make sure
                # an entry for its current key exists (a duplicate is skipped later).
                heapq.heappush(heap, (versions[1][0], page_no))
                continue
            out.append(page_no)
        return out

    def drop_range(self, after, through):
        """Free every version with after < lsn <= through (a truncation); returns the pages
        that lost one.  Above the floor of ``recent`` only the pages it lists are looked at,
        so the cost is the versions written since the low-water mark, not the page count."""
        if after < self.recent_floor:
            pages = list(self.versions)
        else:
            pages = {page_no for lsn, page_no in self.recent if lsn > after}
            self.recent = [entry for entry in self.recent if not after < entry[0] <= through]
        changed = set()
        for page_no in pages:
            if self.drop_versions(page_no, lambda lsn: after < lsn <= through):
                changed.add(page_no)
        return changed

    def raise_recent_floor(self, floor):
        """Stop tracking versions at or below ``floor`` in ``recent`` (no truncation reaches
        below it: truncations start at a recovered VDL, never below a low-water mark).
        Amortized: the list is filtered only once it has doubled since the last filter."""
        if floor > self.recent_floor:
            self.recent_floor = floor
        if len(self.recent) >= max(RECENT_PRUNE_MIN, 2 * self._recent_kept):
            floor = self.recent_floor
            self.recent = [entry for entry in self.recent if entry[0] > floor]
            self._recent_kept = len(self.recent)

    def version_count(self):
        return sum(len(v) for v in self.versions.values())

    def sync(self):
        """Make every version written so far durable (waits for a sync_begin in flight)."""
        self._finish_sync_begun()
        if self.dirty:
            self.dirty = False
            self.writes_unsynced = 0
            self.disk.fdatasync(self.fd)
            if SYNC_JOURNAL:
                _journal_snapshot(self)
        if self.freed_unsynced:
            # Free on disk now: reusable.
            self.free_slots.extend(self.freed_unsynced)
            self.freed_unsynced = []

    def sync_begin(self):
        """Start making every version written so far durable without waiting for the disk
        (the node's loop must not sit in an fdatasync of a large mapping: up to a second on a
        busy disk).  False if the previous one is still running (call again later); see
        sync_running.  The sync-journal test mode syncs at once."""
        if SYNC_JOURNAL:
            self.sync()
            return True
        if self.sync_running():
            return False
        if self.dirty:
            self.dirty = False
            self.writes_unsynced = 0
            self._freed_in_flight, self.freed_unsynced = self.freed_unsynced, []
            self._sync_future = self.disk.fdatasync_async(self.fd)
        return True

    def sync_running(self):
        """Whether a sync_begin is still in flight; once it is done, the slots it freed are
        reusable (an error it met is raised here, and its writes count as unsynced again)."""
        if self._sync_future is None:
            return False
        if not self._sync_future.done():
            return True
        self._finish_sync_begun()
        return False

    def _finish_sync_begun(self):
        future, self._sync_future = self._sync_future, None
        if future is None:
            return
        freed, self._freed_in_flight = self._freed_in_flight, []
        try:
            future.result()
        except OSError:
            self.dirty = True
            self.freed_unsynced.extend(freed)
            raise
        self.free_slots.extend(freed)

    def scrub_step(self, max_slots):
        """Check up to ``max_slots`` slots; return the damaged ones found."""
        found = []
        for _ in range(min(max_slots, self.capacity)):
            slot = self.scrub_cursor
            self.scrub_cursor = (self.scrub_cursor + 1) % self.capacity
            if self._check_slot(slot) is False:
                entry = (slot, self._slot_offset(slot))
                if entry not in self.corrupt_slots:
                    self.corrupt_slots.append(entry)
                found.append(entry)
                for page_no, versions in list(self.versions.items()):
                    if any(s == slot for _, s in versions):
                        self.versions[page_no] = [v for v in versions if v[1] != slot]
                        if not self.versions[page_no]:
                            del self.versions[page_no]
        return found

    def close(self):
        try:
            self.sync()
        finally:
            self.mm.close()
            self.disk.close(self.fd)

"""The segment log, index, page store and background work, in process, on real files."""
import os
import time
import pytest

from aurora import _native, errors
from aurora.node.disk import RealDisk
from aurora.node.pagestore import SLOT_HEADER_SIZE, PageStore
from aurora.node.segment import LOG_HEADER_SIZE, LOG_ZERO_AHEAD_BYTES, LogFile, ReadPointRefused, Segment
from aurora.testing import RedoWorkload, feed_segment as feed, materialize_all

PAGE_SIZE = 1024
PAGES_PER_PG = 32
LOG_FILE_BYTES = 64 * 1024


def open_segment(path):
    return Segment(str(path), 1, 0, PAGE_SIZE, PAGES_PER_PG, LOG_FILE_BYTES)


def assert_reads_match(segment, workload, read_points):
    for lsn in read_points:
        for page_no in workload.page_numbers:
            page, page_lsn = segment.get_page(page_no, lsn)
            assert page == workload.page_at(page_no, lsn), (page_no, lsn)
            assert page_lsn == workload.page_lsn_at(page_no, lsn)


def test_out_of_order_and_duplicate_batches_advance_scl_along_backlinks(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=1)
    batches = [workload.records(5) for _ in range(6)]
    segment = open_segment(tmp_path / "seg")
    order = [3, 0, 5, 0, 1, 3, 2, 4]
    received = set()
    for index in order:
        feed(segment, workload, batches[index])
        received.add(index)
        contiguous = 0
        while contiguous in received:
            contiguous += 1
        expected_scl = batches[contiguous - 1][-1]["lsn"] if contiguous else 0
        assert segment.scl == expected_scl
    assert segment.scl == batches[-1][-1]["lsn"]
    assert segment.holes() == []
    assert len(segment.records) == 30
    lsns = [r["lsn"] for b in batches for r in b]
    assert_reads_match(segment, workload, lsns[::3] + [lsns[-1]])
    segment.close()


def test_holes_are_reported_and_reads_above_scl_refused(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=2)
    first, missing, last = workload.records(3), workload.records(3), workload.records(3)
    segment = open_segment(tmp_path / "seg")
    feed(segment, workload, first)
    feed(segment, workload, last)
    assert segment.scl == first[-1]["lsn"]
    assert segment.holes() == [(first[-1]["lsn"], missing[-1]["lsn"])]
    with pytest.raises(ReadPointRefused, match="above this segment's SCL"):
        segment.get_page(workload.page_numbers[0], last[-1]["lsn"])
    feed(segment, workload, missing)
    assert segment.scl == last[-1]["lsn"]
    assert segment.holes() == []
    segment.close()


def test_restart_rebuilds_the_same_state_from_the_files(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=3)
    segment = open_segment(tmp_path / "seg")
    for _ in range(100):   # enough to fill several 64 KiB log files
        feed(segment, workload, workload.records(8))
    assert len(segment.files) > 2
    scl, count = segment.scl, len(segment.records)
    segment.close()
    segment = open_segment(tmp_path / "seg")
    assert (segment.scl, len(segment.records)) == (scl, count)
    assert not segment.state["needs_repair"]
    assert_reads_match(segment, workload, [scl // 2, scl])
    segment.close()


def test_materialize_gc_and_low_water_mark(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=4)
    segment = open_segment(tmp_path / "seg")
    for _ in range(100):
        feed(segment, workload, workload.records(8))
    middle = segment.scl // 2
    materialize_all(segment, 4)
    assert segment.materialized_lsn == segment.scl
    assert segment.pages.version_count() >= len(workload.page_numbers) - 1
    assert_reads_match(segment, workload, [middle, segment.scl])
    files_before = len(segment.files)
    # More writes and a second pass, so that versions exist below the low-water mark.
    for _ in range(10):
        feed(segment, workload, workload.records(8))
    materialize_all(segment, 4)
    lwm = segment.set_lwm(segment.materialized_lsn)
    dropped, deleted = segment.gc_step()
    assert deleted >= 1 and len(segment.files) < files_before + 2
    with pytest.raises(ReadPointRefused, match="below the low-water mark"):
        segment.get_page(workload.page_numbers[0], lwm - 1)
    assert_reads_match(segment, workload, [lwm, segment.scl])
    segment.close()
    segment = open_segment(tmp_path / "seg")
    assert_reads_match(segment, workload, [lwm, segment.scl])
    segment.close()


def test_materialize_step_without_start_pass_finishes_a_pass_but_begins_none(tmp_path):
    # The server spaces passes out (MATERIALIZE_PASS_INTERVAL_S) with start_pass=False.
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=9)
    segment = open_segment(tmp_path / "seg")
    feed(segment, workload, workload.records(16))
    assert segment.materialize_step(64, start_pass=False) == 0
    assert not segment.materialize_pending() and segment.materialized_lsn == 0
    assert segment.materialize_step(1) > 0          # a pass begins with one page
    target = segment.scl
    while segment.materialize_pending():           # ... and goes on without start_pass
        segment.materialize_step(1, start_pass=False)
        time.sleep(0.0005)
    assert segment.materialized_lsn == target
    feed(segment, workload, workload.records(8))
    assert segment.materialize_step(64, start_pass=False) == 0
    assert not segment.materialize_pending() and segment.materialized_lsn == target
    materialize_all(segment)
    assert segment.materialized_lsn == segment.scl > target
    assert_reads_match(segment, workload, [target, segment.scl])
    segment.close()


def test_truncate_drops_records_durably(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=5)
    segment = open_segment(tmp_path / "seg")
    kept = workload.records(10)
    dropped = workload.records(10)
    feed(segment, workload, kept)
    feed(segment, workload, dropped)
    materialize_all(segment, 8)
    after = kept[-1]["lsn"]
    segment.truncate(after, after + 1000)
    assert segment.scl == after
    assert all(r["lsn"] not in segment.records for r in dropped)
    assert_reads_match(segment, workload, [after])
    segment.close()
    segment = open_segment(tmp_path / "seg")
    assert segment.scl == after
    assert all(r["lsn"] not in segment.records for r in dropped)
    assert_reads_match(segment, workload, [after])
    segment.close()


# ---- corruption: patch bytes in the files of a closed segment, reopen ---------------------

def written_segment(tmp_path, seed, batches=12):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=seed)
    segment = open_segment(tmp_path / "seg")
    for _ in range(batches):
        feed(segment, workload, workload.records(6))
    offsets = [segment._entry(lsn)[1] for lsn in sorted(segment.files[0].lsns)]
    path = segment.files[0].path
    tail = segment.files[0].tail
    scl = segment.scl
    segment.close()
    return workload, path, offsets, tail, scl


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def assert_no_bad_page(segment, workload, lsn):
    """Every read either matches the model or raises; it never returns other bytes."""
    for page_no in workload.page_numbers:
        try:
            page, _ = segment.get_page(page_no, lsn)
        except (errors.AuroraError, ReadPointRefused):
            continue
        assert page == workload.page_at(page_no, lsn)


@pytest.mark.parametrize("damage", ["flip", "zero"])
def test_damage_in_the_middle_of_the_log_is_reported_and_later_records_kept(tmp_path, damage):
    workload, path, offsets, tail, scl = written_segment(tmp_path, seed=6)
    victim = offsets[len(offsets) // 2]
    if damage == "flip":
        with open(path, "rb") as f:
            f.seek(victim + 20)
            byte = f.read(1)
        patch(path, victim + 20, bytes([byte[0] ^ 0x40]))
    else:
        patch(path, victim, bytes(48))
    segment = open_segment(tmp_path / "seg")
    assert segment.state["needs_repair"]
    report = " ".join(segment.corruption)
    assert "%s@%d" % (os.path.basename(path), victim) in report
    # Records after the damage are kept: the last record of the file is still indexed.
    last_offset = offsets[-1]
    assert any(segment._entry(l)[1] == last_offset for l in segment.records)
    assert segment.scl < scl   # the damaged record is a hole in the PG chain
    assert_no_bad_page(segment, workload, segment.scl)
    segment.close()


def test_torn_tail_is_end_of_log_not_corruption(tmp_path):
    workload, path, offsets, tail, scl = written_segment(tmp_path, seed=7, batches=3)
    last = offsets[-1]
    # Tear the last record: keep its header, scramble the end of its payload.
    patch(path, tail - 3, b"\xff\xfe\xfd")
    segment = open_segment(tmp_path / "seg")
    assert not segment.state["needs_repair"], segment.corruption
    assert segment.files[0].tail == last
    assert segment.scl < scl
    assert_no_bad_page(segment, workload, segment.scl)
    segment.close()


def test_truncated_log_file_is_end_of_log(tmp_path):
    workload, path, offsets, tail, scl = written_segment(tmp_path, seed=8, batches=3)
    os.truncate(path, offsets[-1] + 10)
    segment = open_segment(tmp_path / "seg")
    assert not segment.state["needs_repair"]
    assert segment.files[0].tail == offsets[-1]
    assert_no_bad_page(segment, workload, segment.scl)
    segment.close()


def test_damaged_log_header_marks_the_segment_for_repair(tmp_path):
    workload, path, offsets, tail, scl = written_segment(tmp_path, seed=9)
    patch(path, 20, b"\x01")
    segment = open_segment(tmp_path / "seg")
    assert segment.state["needs_repair"]
    assert "header is damaged" in " ".join(segment.corruption)
    assert_no_bad_page(segment, workload, segment.scl)
    segment.close()


def materialized_segment(tmp_path, seed):
    """A segment holding six batches of a workload, every page version materialized."""
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=seed)
    segment = open_segment(tmp_path / "seg")
    for _ in range(6):
        feed(segment, workload, workload.records(6))
    materialize_all(segment, 8)
    return workload, segment


def test_damaged_page_version_is_never_served(tmp_path):
    workload, segment = materialized_segment(tmp_path, seed=10)
    scl = segment.scl
    page_no, versions = next(iter(segment.pages.versions.items()))
    slot = versions[-1][1]
    offset = segment.pages._slot_offset(slot) + 100
    path = segment.pages.path
    segment.close()
    patch(path, offset, b"\x5a\x5a")
    segment = open_segment(tmp_path / "seg")
    assert segment.state["needs_repair"]
    assert any("pages.aur" in line for line in segment.corruption)
    # The log still holds the records, so the page is rebuilt from them, correctly.
    page, _ = segment.get_page(page_no, scl)
    assert page == workload.page_at(page_no, scl)
    segment.close()


def test_damaged_page_store_header_is_rewritten_not_fatal(tmp_path):
    """Found by the simulator (swarm seed 10187): one flipped bit in the reserved bytes of
    pages.aur's header made every restart of the node fail ("page store header is damaged").
    The header holds only the geometry the segment already knows, so it is rewritten, the
    segment is marked for repair, and the page versions (CRC-checked per slot) still serve."""
    workload, segment = materialized_segment(tmp_path, seed=12)
    scl = segment.scl
    versions = segment.pages.version_count()
    assert versions
    path = segment.pages.path
    segment.close()
    with open(path, "rb") as f:
        byte = f.read(64)[55]
    patch(path, 55, bytes([byte ^ 0x10]))
    segment = open_segment(tmp_path / "seg")
    assert segment.state["needs_repair"]
    assert any("page store header is damaged" in line for line in segment.corruption)
    assert segment.pages.version_count() == versions
    assert_reads_match(segment, workload, [scl])
    segment.close()
    segment = open_segment(tmp_path / "seg")          # the rewritten header is durable
    assert not segment.pages.header_repaired
    segment.close()


def test_scrub_finds_bit_rot_in_a_running_segment(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=11)
    segment = open_segment(tmp_path / "seg")
    for _ in range(6):
        feed(segment, workload, workload.records(6))
    lsn = sorted(segment.files[0].lsns)[5]
    entry = segment._entry(lsn)
    entry[0].mm[entry[1] + 45] ^= 0x01        # bit rot under a live mapping
    damage = 0
    for _ in range(20):
        damage += segment.scrub_step(4096)
    assert damage >= 1 and segment.state["needs_repair"]
    with pytest.raises(errors.CorruptionError):
        segment.get_page(entry[3], segment.scl)
    segment.close()


def test_a_scrub_step_checks_about_its_byte_budget(tmp_path):
    """The scan caps records, so the scrub sizes the cap by the records it met: with a fixed
    64 bytes a record a 16 KiB step checked ~111 KB on a commit stream (nodecpu2 profile)."""
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=13)
    segment = open_segment(tmp_path / "seg")
    while not segment.files or segment.files[0].tail < 48 * 1024:
        feed(segment, workload, workload.records(6))
    budget = 4096
    steps = []
    for _ in range(6):
        before = segment.scrub["log_bytes_checked"]
        segment.scrub_step(budget)
        steps.append(segment.scrub["log_bytes_checked"] - before)
    assert steps[0] > 0
    # After the first step has seen the records' size, each stays within the budget plus a
    # record or two (records vary in size).
    assert all(step <= budget + 2 * PAGE_SIZE + 200 for step in steps[1:]), steps
    assert sum(steps[1:]) >= 5 * budget // 2, steps
    segment.close()


def test_records_of_another_pg_are_refused(tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=12)
    rows = workload.records(2)
    rows[1]["page_no"] = PAGES_PER_PG + 1
    segment = open_segment(tmp_path / "seg")
    header, recs = _native.decode_batch(workload.batch(rows))
    with pytest.raises(ValueError, match="does not belong to PG 0"):
        segment.check_batch(recs)
    segment.close()


class CountingDisk(RealDisk):
    """The real disk, noting every pwrite as (offset, length); ``fail_at`` makes the pwrite
    of that index (0-based) raise, as a node killed between two writes would stop."""

    def __init__(self, fail_at=None):
        self.writes = []
        self.fail_at = fail_at

    def pwrite(self, fd, data, offset):
        if self.fail_at is not None and len(self.writes) == self.fail_at:
            raise OSError("simulated stop before write %d" % self.fail_at)
        self.writes.append((offset, len(data)))
        return os.pwrite(fd, data, offset)


def test_log_appends_write_through_pwrite_and_zero_ahead_once_per_run(tmp_path):
    size = LOG_HEADER_SIZE + 2 * LOG_ZERO_AHEAD_BYTES + 4096
    disk = CountingDisk()
    log = LogFile.create(str(tmp_path / "log-00000001.aur"), 1, size, 1, 0, disk)
    # Bytes past the tail that are not zero (what the zeroing must overwrite).
    os.pwrite(log.fd, b"\xaa" * (size - LOG_HEADER_SIZE), LOG_HEADER_SIZE)
    disk.writes.clear()
    record = bytes(range(1, 101))
    assert log.append(record) == LOG_HEADER_SIZE
    end = LOG_HEADER_SIZE + 100
    assert log.zeroed_end == end + LOG_ZERO_AHEAD_BYTES
    assert log.mm[LOG_HEADER_SIZE:end] == record          # visible through the mapping
    assert not any(log.mm[end:log.zeroed_end])
    assert log.mm[log.zeroed_end:log.zeroed_end + 8] == b"\xaa" * 8
    assert disk.writes == [(end, LOG_ZERO_AHEAD_BYTES), (LOG_HEADER_SIZE, 100)]
    # Appends inside the zeroed run write their bytes only.
    for i in range(10):
        log.append(record)
    assert len(disk.writes) == 12 and log.zeroed_end == end + LOG_ZERO_AHEAD_BYTES
    # The next run starts where an append crosses the end of the last one; the last run
    # stops at the end of the file.
    log.append(bytes(LOG_ZERO_AHEAD_BYTES))
    assert log.zeroed_end == log.tail + LOG_ZERO_AHEAD_BYTES
    log.append(bytes(size - log.tail - 10))
    assert log.zeroed_end == size and log.tail == size - 10
    assert not any(log.mm[log.tail:size])
    with pytest.raises(ValueError, match="overflows log file"):
        log.append(bytes(11))
    log.close()


def test_restart_after_zeroed_appends_scans_clean_and_appends_zero_from_the_new_tail(tmp_path):
    workload, path, offsets, tail, scl = written_segment(tmp_path, seed=21, batches=4)
    segment = open_segment(tmp_path / "seg")
    assert not segment.state["needs_repair"], segment.corruption
    assert segment.files[0].tail == tail and segment.scl == scl
    assert segment.files[0].zeroed_end == 0          # unknown after an open
    feed(segment, workload, workload.records(6))
    log = segment.files[0]
    assert log.zeroed_end == min(log.size, log.tail + LOG_ZERO_AHEAD_BYTES)
    scl = segment.scl
    segment.sync()
    segment.close()
    segment = open_segment(tmp_path / "seg")
    assert not segment.state["needs_repair"], segment.corruption
    assert segment.scl == scl
    assert_reads_match(segment, workload, [scl])
    segment.close()


def test_page_versions_written_by_pwrite_survive_reopen_and_frees_stick(tmp_path):
    path = str(tmp_path / "pages.aur")
    store = PageStore(path, 1, 0, PAGE_SIZE)
    pages = {n: bytes([n + 1]) * PAGE_SIZE for n in range(4)}
    slots = {n: store.write(n, 10 + n, page) for n, page in pages.items()}
    for n, page in pages.items():
        assert store.read(slots[n], n) == page          # reads go through the mapping
    store.write(0, 50, bytes([9]) * PAGE_SIZE)
    assert store.drop_versions(1, lambda lsn: True) == 1
    store.close()
    store = PageStore(path, 1, 0, PAGE_SIZE)
    assert not store.corrupt_slots
    assert store.versions[0] == [[10, slots[0]], [50, store.versions[0][1][1]]]
    assert 1 not in store.versions                   # the freed slot stays free on disk
    assert store.read(slots[3], 3) == pages[3]
    store.close()


def test_a_page_version_whose_slot_word_never_landed_reads_as_free(tmp_path):
    """A version is two writes, the slot's bytes from offset 8 on and then its crc+flags
    word: a node stopped between them leaves a free slot, never a corrupt one."""
    path = str(tmp_path / "pages.aur")
    store = PageStore(path, 1, 0, PAGE_SIZE)
    store.write(0, 10, bytes([1]) * PAGE_SIZE)
    store.sync()
    store.close()
    disk = CountingDisk(fail_at=1)
    store = PageStore(path, 1, 0, PAGE_SIZE, disk=disk)
    with pytest.raises(OSError, match="simulated stop"):
        store.write(0, 20, bytes([2]) * PAGE_SIZE)
    offset, length = disk.writes[0]
    assert length == SLOT_HEADER_SIZE - 8 + PAGE_SIZE and (offset - 8 - 64) % (SLOT_HEADER_SIZE + PAGE_SIZE) == 0
    store.mm.close()
    os.close(store.fd)
    store = PageStore(path, 1, 0, PAGE_SIZE)
    assert not store.corrupt_slots
    assert [v[0] for v in store.versions[0]] == [10]
    store.close()

"""Gossip and repair between PG peers, recovery listing, VDL hint, volume metadata.

Most tests run real `aurora node serve` processes on Unix sockets; the epoch rule, the record
scan and the durability hand-off are also checked in process on NodeCore."""
import os
import struct
import shutil
import tempfile
import threading
import time
import types

import pytest

from aurora import _native, errors, protocol as p
from aurora.client import NodeClient
from aurora.node.core import NodeCore
from aurora.node.gossip import Gossiper, accept_gossip_records, scan_fetched_records
from aurora.node.process import NodeProcess
from aurora import testing
from aurora.testing import RedoWorkload

PAGE_SIZE = 1024
PAGES_PER_PG = 32
LOG_FILE_BYTES = 64 * 1024
CATCH_UP_DEADLINE_S = 15.0


# ---- helpers -----------------------------------------------------------------------------

class Fleet:
    """Three node processes, each a member of volume 1 PG 0, each listing the others."""

    def __init__(self, tmp_path, count=3):
        self.sockets = sockets = tempfile.mkdtemp(prefix="aur-")
        for i in range(count):
            (tmp_path / ("n%d" % i)).mkdir()
        self.nodes = [NodeProcess(str(tmp_path / ("n%d" % i) / "data"), "unix:%s/n%d.sock" % (sockets, i),
                                  "n%d" % i, "az%d" % i, LOG_FILE_BYTES,
                                  log_path=str(tmp_path / ("n%d.log" % i)))
                      for i in range(count)]
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()

    @property
    def addresses(self):
        return [n.address for n in self.nodes]

    def client(self, i, volume_epoch=1, membership_epoch=0):
        return NodeClient(self.nodes[i].address, volume_id=1, volume_epoch=volume_epoch,
                          membership_epoch=membership_epoch)

    def create(self, i, pg=0, peers=None, volume_epoch=1):
        with self.client(i, volume_epoch) as c:
            return c.create_segment(pg, PAGE_SIZE, PAGES_PER_PG,
                                    peers=self.addresses if peers is None else peers)

    def stop(self):
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def workload(seed):
    return RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=12, seed=seed)


def append_to(fleet, indexes, batches):
    for i in indexes:
        with fleet.client(i) as c:
            c.append_many(batches)


def wait_for(predicate, what, deadline_s=CATCH_UP_DEADLINE_S):
    return testing.wait_for(predicate, what, deadline_s, poll_s=0.02)


def segment_status(fleet, i):
    with fleet.client(i) as c:
        return c.status_segment(0)


def wait_scl(fleet, i, lsn):
    return wait_for(lambda: (lambda s: s if s["scl"] >= lsn else None)(segment_status(fleet, i)),
                    "node %d to reach SCL %d" % (i, lsn))


def assert_pages(fleet, i, model, read_points):
    with fleet.client(i) as c:
        for lsn in read_points:
            for page_no in model.page_numbers:
                page, page_lsn = c.get_page(0, page_no, lsn)
                assert page == model.page_at(page_no, lsn), (i, page_no, lsn)
                assert page_lsn == model.page_lsn_at(page_no, lsn)


def log_path(fleet, i, seq=1):
    return os.path.join(fleet.nodes[i].data_dir, "volumes", "%016x" % 1, "pg-0", "log-%08d.aur" % seq)


# ---- the epoch rule and the record scan (in process) ----------------------------------------

def test_accept_gossip_records_needs_both_epochs_equal():
    assert accept_gossip_records(3, 1, 3, 1)
    assert not accept_gossip_records(3, 1, 2, 1)    # a peer of a fenced (older) epoch
    assert not accept_gossip_records(3, 1, 4, 1)    # a peer already in a newer epoch
    assert not accept_gossip_records(3, 1, 3, 0)    # another membership epoch
    assert not accept_gossip_records(3, 1, 3, 2)


def test_gossip_leaves_the_newest_records_to_the_writer_and_fetches_once_stuck():
    """A member a moment behind a peer while the writer streams is not fetched for (that raced
    the writer's own APPEND, and kept every node polling 5 peers 20 times a second); what a
    peer held a round ago and this member still lacks is fetched, and a member that stopped
    moving keeps the short interval."""
    peer_scl = [0]
    fetched = []

    class Core:
        gossip_stats = {"rounds": 0, "scl_requests": 0}

        def note_peer_scls(self, volume_id, pg, answers):
            pass

    gossiper = Gossiper(Core(), threading.Lock())
    reply = lambda: types.SimpleNamespace(volume_epoch=1, membership_epoch=0,
                                          body=p.SCL_BODY.pack(0, 0, peer_scl[0]))
    gossiper._request = lambda address, t, type, body, expect: reply()
    gossiper._fetch_range = lambda t, answers, after, through, budget: fetched.append((after, through))

    def round_at(own_scl, peer):
        peer_scl[0] = peer
        t = {"volume_id": 1, "pg": 0, "peers": ["unix:/peer"], "volume_epoch": 1, "membership_epoch": 0,
             "scl": own_scl, "max_lsn": own_scl, "holes": [], "damaged_lsns": [], "corrupt_versions": [],
             "missing_bases": [], "needs_repair": False, "lwm": 0}
        return gossiper._gossip_segment(t)

    assert round_at(100, 120) is True and fetched == []      # first sight of a peer ahead: wait a round
    assert round_at(125, 140) is False and fetched == []     # the writer delivered meanwhile: in step
    assert round_at(125, 160) is True                        # stuck below what the peer held before
    assert fetched == [(125, 140)]                           # only that, not the peer's newest
    assert round_at(160, 160) is False


def records_body(model, rows):
    batch = model.batch(rows)
    _, recs = _native.decode_batch(batch)
    start = int(recs["offset"][0])
    return bytearray(batch[start:]), recs


def test_scan_fetched_records_drops_bad_and_out_of_range_records():
    model = workload(1)
    rows = model.records(6)
    body, recs = records_body(model, rows)
    first = int(recs["offset"][0])
    victim = int(recs["offset"][2]) - first
    body[victim + 20] ^= 0x40                       # one record's LSN field: its CRC fails
    got, bad = scan_fetched_records(bytes(body), 0, rows[-1]["lsn"])
    assert bad == 1
    assert got["lsn"].tolist() == [r["lsn"] for i, r in enumerate(rows) if i != 2]
    got, bad = scan_fetched_records(bytes(records_body(model, rows)[0]), rows[1]["lsn"], rows[3]["lsn"])
    assert got["lsn"].tolist() == [rows[2]["lsn"], rows[3]["lsn"]] and bad == 4
    assert scan_fetched_records(b"", 0, 10) == (None, 0)


def core_with_segment(tmp_path, name="core"):
    core = NodeCore(str(tmp_path / name), name, "az1", LOG_FILE_BYTES)
    frame = p.decode_frame(p.encode_frame(p.FRAME_CREATE_SEGMENT,
                                          p.CREATE_SEGMENT_BODY.pack(0, PAGE_SIZE, PAGES_PER_PG)
                                          + p.encode_peers(["unix:/nowhere"]), 1, 1, 1, 0))
    assert core.handle(frame)[0].data[4:6] == struct.pack("<H", p.FRAME_OK)
    return core


def test_apply_gossip_checks_epochs_now_and_dirties_files_before_the_next_ack(tmp_path):
    core = core_with_segment(tmp_path)
    model = workload(2)
    rows = model.records(8)
    body, _ = records_body(model, rows)
    recs, bad = scan_fetched_records(bytes(body), 0, rows[-1]["lsn"])
    assert bad == 0
    segment = core.volumes[1].segments[0]
    assert core.apply_gossip(1, 0, 2, 0, bytes(body), recs) is None     # a peer at epoch 2
    assert core.apply_gossip(1, 0, 1, 1, bytes(body), recs) is None     # another membership
    assert segment.scl == 0 and core.gossip_stats["records_rejected_epoch"] == 16
    assert core.apply_gossip(1, 0, 1, 0, bytes(body), recs) == 8
    assert segment.scl == rows[-1]["lsn"]
    # The gossiped records are not synced yet: the next ACK (here of a duplicate batch, whose
    # SCL includes them) collects their file for the group commit before it may leave.
    replies = core.handle(p.decode_frame(p.encode_frame(p.FRAME_APPEND, model.batch(rows[:1]), 2, 1, 1, 0)))
    assert replies[0].after_sync
    assert segment.files[-1].fd in core.dirty_fds()
    assert core.dirty_fds() == []
    core.close()


# ---- gossip between processes -------------------------------------------------------------

def test_a_member_that_missed_every_append_catches_up_by_gossip_and_after_a_crash(fleet):
    for i in range(3):
        fleet.create(i)
    model = workload(3)
    batches = [model.batch(model.records(6)) for _ in range(40)]
    append_to(fleet, [0, 1], batches[:25])
    append_to(fleet, [0], batches[25:])      # the rest only on n0
    status = wait_scl(fleet, 2, model.lsn)
    assert status["scl"] == model.lsn and status["holes"] == []
    assert status["peers"] == [fleet.addresses[0], fleet.addresses[1]]   # its own address dropped
    wait_scl(fleet, 1, model.lsn)
    assert_pages(fleet, 2, model, [model.lsn // 3, model.lsn // 2, model.lsn])
    # n2 crashes; the writer goes on with n0 and n1; n2 restarts and catches up again.
    fleet.nodes[2].kill()
    more = [model.batch(model.records(6)) for _ in range(20)]
    append_to(fleet, [0, 1], more)
    fleet.nodes[2].start()
    wait_scl(fleet, 2, model.lsn)
    assert_pages(fleet, 2, model, [model.lsn])
    with fleet.client(2) as c:
        assert c.status()["gossip"]["records_accepted"] >= 20 * 6   # counted since the restart


def test_damaged_log_repairs_from_peers_after_restart(fleet):
    for i in range(3):
        fleet.create(i)
    model = workload(4)
    batches = [model.batch(model.records(6)) for _ in range(30)]
    append_to(fleet, [0, 1, 2], batches)
    fleet.nodes[2].stop()
    path = log_path(fleet, 2)
    with open(path, "rb") as f:
        data = f.read()
    recs, end, reason = _native.scan_log(memoryview(data), 64, None)
    victim = int(recs["offset"][len(recs) // 2])
    with open(path, "r+b") as f:
        f.seek(victim + 20)
        f.write(bytes([data[victim + 20] ^ 0x40]))
    fleet.nodes[2].start()
    status = wait_for(lambda: (lambda s: s if s["repair_history"] and not s["needs_repair"] else None)(
        segment_status(fleet, 2)), "n2 to repair")
    assert status["scl"] == model.lsn
    repair = status["repair_history"][-1]
    assert repair["records_fetched"] >= 1
    assert repair["damage"] == [[os.path.basename(path), victim]]
    assert_pages(fleet, 2, model, [int(recs["lsn"][len(recs) // 2]), model.lsn])
    # The damaged bytes are still in the file, but known to be repaired: a restart is clean.
    fleet.nodes[2].stop()
    fleet.nodes[2].start()
    time.sleep(0.3)    # the scrub passes the damaged bytes again: not news
    status = segment_status(fleet, 2)
    assert not status["needs_repair"] and status["corruption"] == [], status["corruption"]
    assert status["scl"] == model.lsn and status["scrub"]["passes"] >= 1


def test_bit_rot_under_a_running_node_is_found_by_the_scrub_and_replaced_from_a_peer(fleet):
    for i in range(3):
        fleet.create(i)
    model = workload(8)
    append_to(fleet, [0, 1, 2], [model.batch(model.records(6)) for _ in range(10)])
    path = log_path(fleet, 2)
    with open(path, "rb") as f:
        data = f.read()
    recs, _, _ = _native.scan_log(memoryview(data), 64, None)
    victim = int(recs["offset"][len(recs) // 3])
    with open(path, "r+b") as f:      # the node's shared mapping sees this at once
        f.seek(victim + 45)
        f.write(bytes([data[victim + 45] ^ 0x01]))
    status = wait_for(lambda: (lambda s: s if s["repair_history"] and not s["needs_repair"] else None)(
        segment_status(fleet, 2)), "the scrub to find the damage and gossip to repair it")
    assert status["repair"]["records_replaced"] == 1
    assert_pages(fleet, 2, model, [int(recs["lsn"][len(recs) // 3]), model.lsn])
    time.sleep(0.3)    # later scrub passes meet the old bytes again: not news
    assert not segment_status(fleet, 2)["needs_repair"]


def collect_then_damage_a_version(fleet, damage_offset):
    """Three members collect all but their last log file, then n2, stopped, gets one byte of a
    page version below its GC point flipped at ``damage_offset`` into the slot, and restarts:
    the log no longer holds that version's chain.  Returns the workload model."""
    for i in range(3):
        fleet.create(i)
    model = workload(5)
    # Enough redo for several 64 KiB log files, then a low-water mark at the top so that
    # materialization and GC drop the old log files: page versions are the only copy left.
    batches = [model.batch(model.records(8)) for _ in range(20)]
    # Then redo of one page only, over more than a log file: the other pages' versions end up
    # below the GC point, with no log records left to rebuild them from.
    model.page_numbers = model.page_numbers[:1]
    batches += [model.batch(model.records(8)) for _ in range(60)]
    append_to(fleet, [0, 1, 2], batches)
    for i in range(3):
        with fleet.client(i) as c:
            wait_for(lambda: c.status_segment(0)["materialized_lsn"] == model.lsn, "materialization")
            # Log files go only below the VDL hint a node has made durable (recovery lists
            # records above the hints): a writer sends both.
            c.volume_hint(model.lsn)
            c.set_lwm(0, model.lsn)
    with fleet.client(2) as c:
        wait_for(lambda: c.status_segment(0)["gc_lsn"] > 0, "GC of old log files")
    fleet.nodes[2].stop()
    directory = os.path.dirname(log_path(fleet, 2))
    pages_path = os.path.join(directory, "pages.aur")
    gc_lsn = segment_status_offline(directory)
    with open(pages_path, "r+b") as f:
        data = f.read()
        slot_size = 32 + PAGE_SIZE
        victim = None
        for slot in range((len(data) - 64) // slot_size):
            offset = 64 + slot * slot_size
            crc, flags, page_no, page_size, lsn, _ = struct.unpack_from("<IIIIQQ", data, offset)
            if flags == 1 and lsn <= gc_lsn and page_no != model.page_numbers[0]:
                victim = (offset, page_no, lsn)
                break
        assert victim is not None
        f.seek(victim[0] + damage_offset)
        f.write(bytes([data[victim[0] + damage_offset] ^ 0xFF]))
    fleet.nodes[2].start()
    return model


def test_damaged_page_version_without_its_log_is_fetched_from_a_peer(fleet):
    model = collect_then_damage_a_version(fleet, 32 + 100)     # a byte of the page image
    status = wait_for(lambda: (lambda s: s if s["repair_history"] and not s["needs_repair"] else None)(
        segment_status(fleet, 2)), "n2 to repair its page store")
    assert status["repair"]["pages_fetched"] == 1    # the log no longer had its chain
    assert status["corrupt_page_slots"] == 0
    model.page_numbers = list(range(12))
    assert_pages(fleet, 2, model, [model.lsn])


def test_a_page_left_without_any_version_is_fetched_from_a_peer(fleet):
    """The damaged byte is in the slot header's page number: nothing tells which page the
    version was, so the slot is freed; the page then has no version and no log to build from.
    A read gets a clean CORRUPT error (never a wrong page), and gossip fetches the page's
    image at the LWM from a peer."""
    model = collect_then_damage_a_version(fleet, 11)           # high byte of page_no
    wait_for(lambda: segment_status(fleet, 2)["repair"]["slots_freed"] == 1, "n2 to free the slot")
    model.page_numbers = list(range(12))

    def every_page_reads_back():
        try:
            assert_pages(fleet, 2, model, [model.lsn])
            return True
        except errors.CorruptionError as exc:
            assert "is being fetched from a peer" in str(exc)
            return False

    wait_for(every_page_reads_back, "n2 to fetch the page left without a version")
    status = wait_for(lambda: (lambda s: s if not s["needs_repair"] else None)(segment_status(fleet, 2)),
                      "n2 to finish its repair")
    assert status["repair"]["pages_fetched"] >= 1


def segment_status_offline(directory):
    import json
    with open(os.path.join(directory, "state.json")) as f:
        return json.load(f)["gc_lsn"]


def test_records_of_a_peer_at_another_epoch_are_not_taken(fleet):
    for i in range(3):
        fleet.create(i)
    model = workload(6)
    old = model.records(10)
    new = model.records(10)
    append_to(fleet, [1], [model.batch(old)])
    with fleet.client(0) as c:
        c.append(model.batch(old))
        c.set_epoch(2)
        c.volume_epoch = 2
        c.append(model.batch(new, volume_epoch=2))
    # n2 (epoch 1) takes n1's epoch-1 records, and never n0's epoch-2 ones.
    wait_scl(fleet, 2, old[-1]["lsn"])
    time.sleep(0.5)    # ten gossip rounds
    status = segment_status(fleet, 2)
    assert status["scl"] == old[-1]["lsn"] and status["max_lsn"] == old[-1]["lsn"]


# ---- membership, recovery listing, VDL hint, metadata ----------------------------------------

def test_set_members_is_durable_and_fenced_by_membership_epoch(fleet):
    fleet.create(0, peers=[fleet.addresses[1]])
    with fleet.client(0, membership_epoch=3) as c:
        volume_epoch, membership_epoch, kept = c.set_members(0, fleet.addresses)
        assert (volume_epoch, membership_epoch, kept) == (1, 3, 2)
    with fleet.client(0, membership_epoch=2) as c:
        with pytest.raises(p.StaleEpochError):
            c.set_members(0, [])
    with fleet.client(0, membership_epoch=3) as c:
        with pytest.raises(p.BadRequestError):
            c.send(p.FRAME_SET_MEMBERS, p.SET_MEMBERS_BODY.pack(0) + p.PEER_COUNT.pack(p.PEERS_MAX + 1))
            c.receive()
    fleet.nodes[0].kill()
    fleet.nodes[0].start()
    status = segment_status(fleet, 0)
    assert status["peers"] == fleet.addresses[1:] and status["membership_epoch"] == 3


def test_list_records_content_paging_and_last_at_or_below(fleet):
    fleet.create(0, peers=[])
    model = workload(7)
    batches = [model.records(5) for _ in range(6)]
    with fleet.client(0) as c:
        for index in (0, 1, 3, 4):             # batch 2 missing: a hole, SCL stops before it
            c.append(model.batch(batches[index]))
        c.volume_hint(batches[1][-1]["lsn"])
    held = [(r["lsn"], r["prev_lsn_pg"], r["flags"]) for i in (0, 1, 3, 4) for r in batches[i]]
    # Any epoch may list (recovery runs before the new epoch exists); the reply carries the node's.
    with fleet.client(0, volume_epoch=7) as c:
        scl, vdl_hint, last, entries = c.list_records(0, 0)
        assert (scl, vdl_hint, last) == (batches[1][-1]["lsn"], batches[1][-1]["lsn"], 0)
        assert entries == held
        paged, after = [], 0
        while True:
            _, _, last, page = c.list_records(0, after, max_count=7)
            assert last == (after if after else 0)
            if not page:
                break
            paged.extend(page)
            after = page[-1][0]
        assert paged == held
        gap_low, gap_high = batches[1][-1]["lsn"], batches[3][0]["lsn"]
        _, _, last, page = c.list_records(0, gap_high - 1, max_count=2)
        assert last == gap_low and page == held[10:12]
        _, _, last, page = c.list_records(0, held[-1][0] + 100)
        assert last == held[-1][0] and page == []
        c.send(p.FRAME_LIST_RECORDS, p.LIST_RECORDS_BODY.pack(0, 1, 0))
        assert c.receive().volume_epoch == 1
        with pytest.raises(p.UnknownSegmentError):
            c.list_records(5, 0)


def test_volume_hint_keeps_the_highest_and_survives_a_clean_restart(fleet):
    fleet.create(0, peers=[])
    with fleet.client(0) as c:
        assert c.volume_hint(100) == 100
        assert c.volume_hint(50) == 100
        assert c.status()["volumes"]["1"]["vdl_hint"] == 100
    with fleet.client(0, volume_epoch=2) as c:
        with pytest.raises(p.EpochAheadError):
            c.volume_hint(200)
    fleet.nodes[0].stop()
    fleet.nodes[0].start()
    with fleet.client(0) as c:
        assert c.status()["volumes"]["1"]["vdl_hint"] == 100
        assert c.list_records(0, 0)[1] == 100


def test_meta_put_get_versions_limits_and_durability(fleet):
    with NodeClient(fleet.addresses[0]) as c:      # no volume, no epochs: metadata needs neither
        assert c.meta_get("volume/1/geometry") == (0, b"")
        assert c.meta_put("volume/1/geometry", 1, b"first") == 1
        assert c.meta_put("volume/1/geometry", 1, b"other") == 1
        assert c.meta_get("volume/1/geometry") == (1, b"first")
        assert c.meta_put("volume/1/geometry", 3, b"third") == 3
        assert c.meta_put("volume/1/geometry", 2, b"second") == 3
        assert c.meta_get("volume/1/geometry") == (3, b"third")
        big = os.urandom(p.META_VALUE_BYTES_MAX)
        assert c.meta_put("k" * p.META_KEY_BYTES_MAX, 1, big) == 1
        with pytest.raises(p.BadRequestError):
            c.meta_put("k" * (p.META_KEY_BYTES_MAX + 1), 1, b"x")
        with pytest.raises(p.BadRequestError):
            c.meta_put("x", 1, big + b"!")
        with pytest.raises(p.BadRequestError):
            c.meta_get("")
    fleet.nodes[0].kill()      # durable before the reply: a crash loses nothing
    fleet.nodes[0].start()
    with NodeClient(fleet.addresses[0]) as c:
        assert c.meta_get("volume/1/geometry") == (3, b"third")
        assert c.meta_get("k" * p.META_KEY_BYTES_MAX) == (1, big)


def test_malformed_peer_lists_are_refused_and_the_node_keeps_serving(fleet):
    with fleet.client(0) as c:
        body = p.CREATE_SEGMENT_BODY.pack(0, PAGE_SIZE, PAGES_PER_PG) + p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(50)
        with pytest.raises(errors.FormatError):
            c.request(p.FRAME_CREATE_SEGMENT, body + b"unix:/short")
    with fleet.client(0) as c:
        with pytest.raises(p.BadRequestError):
            c.request(p.FRAME_CREATE_SEGMENT, p.CREATE_SEGMENT_BODY.pack(0, PAGE_SIZE, PAGES_PER_PG)
                      + p.PEER_COUNT.pack(1) + p.PEER_LENGTH.pack(4) + b"ftp:")
        assert c.create_segment(0, PAGE_SIZE, PAGES_PER_PG)[2] == 0

"""Writer recovery fences before it reads (DESIGN.md invariants 1 and 6).

Recovery bumps the volume epoch on a write quorum of every PG first, then lists a read quorum
of the members that took it, then records the truncation under one more epoch.  These tests
hold it to that: an old writer that keeps committing while a new writer recovers loses
nothing it was told is committed and is refused from then on; the nodes' SET_EPOCH and
TRUNCATE are idempotent, refuse a stale epoch, and never let a member hold the new writer's
epoch without the truncation; the simulator finds the old order (reads first) as a planted bug.
"""
import random
import threading
import time

import pytest

from aurora import errors, protocol as p, recovery
from aurora.client import NodeClient
from aurora.cluster import Cluster
from aurora.writer import Volume, meta_read, meta_write
from aurora.node.core import TRUNCATION_ALL_PGS, TRUNCATION_ENTRY, NodeCore
from aurora.node.disk import SimDisk
from aurora.node.segment import add_range, range_covered
from aurora.sim import Violation, run_seed
from aurora.testing import RedoWorkload

PAGE_SIZE = 4096
PAGES_PER_PG = 64            # tiny segments: an old writer's commits span several PGs
LOG_FILE_BYTES = 1 << 20
OLD_WRITER_THREADS = 4       # commits in flight at once: the race needs some on the wire
COMMITS_MAX = 4000           # one fresh page per commit, so every commit is checked alone
FENCE_DEADLINE_S = 20.0


def page_bytes(n):
    return n.to_bytes(8, "little") * (PAGE_SIZE // 8)


# ---- real processes: an old writer committing while a new one recovers ---------------------

class OldWriter:
    """Threads committing one fresh page each (page n holds n) on ``volume`` until it is
    fenced; remembers every commit it saw succeed."""

    def __init__(self, volume):
        self.volume = volume
        self.lock = threading.Lock()
        self.next_page = 0
        self.acked = []
        self.errors = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(OLD_WRITER_THREADS)]

    def _take(self):
        with self.lock:
            n = self.next_page
            self.next_page += 1
            return n

    def _run(self):
        while True:
            n = self._take()
            if n >= COMMITS_MAX:
                return
            try:
                self.volume.write(n, page_bytes(n))
                self.volume.commit()
            except errors.WriterFenced as exc:
                self.volume.rollback()
                with self.lock:
                    self.errors.append(exc)
                return
            except Exception as exc:      # anything else fails the test below, named
                with self.lock:
                    self.errors.append(exc)
                return
            with self.lock:
                self.acked.append(n)

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(FENCE_DEADLINE_S)
        assert not any(t.is_alive() for t in self.threads), "the old writer was never fenced"


@pytest.fixture
def cluster(short_dir):
    with Cluster.local(short_dir, log_file_bytes=LOG_FILE_BYTES,
                       pages_per_pg=PAGES_PER_PG) as c:
        yield c


def slow_compute_recovery(monkeypatch, pause_s):
    """Widen the window between recovery's reads and what follows them, as a slow network
    or a descheduled process would.  Before the fix this window was open to the old writer
    (its commits acknowledged here were then truncated); now it is after the fence."""
    original = recovery.compute_recovery

    def slow(*args, **kwargs):
        time.sleep(pause_s)
        return original(*args, **kwargs)

    monkeypatch.setattr(recovery, "compute_recovery", slow)


@pytest.mark.process
@pytest.mark.parametrize("pause_s", [0.0, 0.3])
def test_old_writer_loses_no_acknowledged_commit_while_a_new_writer_recovers(cluster, monkeypatch, pause_s):
    slow_compute_recovery(monkeypatch, pause_s)
    old = cluster.open_volume("race", PAGE_SIZE, commit_timeout=10.0)
    writer = OldWriter(old)
    writer.start()
    deadline = time.monotonic() + FENCE_DEADLINE_S
    while len(writer.acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.005)
    new = cluster.open_volume("race", PAGE_SIZE)      # recovers while the old writer commits
    writer.join()
    assert new.epoch > old.epoch
    # The old writer stopped on the fencing error, and only on it.
    assert writer.errors and all(isinstance(e, errors.WriterFenced) for e in writer.errors), writer.errors
    assert "fenced by a newer writer" in str(writer.errors[0])
    # Every commit it saw succeed is in the volume the new writer recovered.
    assert writer.acked
    lost = [n for n in writer.acked if new.read(n) != page_bytes(n)]
    assert not lost, "acknowledged commits lost by recovery: %s" % lost[:20]
    assert new.recovery["vdl"] >= 1
    # Its later commits raise the fencing error at once.
    with pytest.raises(errors.WriterFenced, match="fenced by a newer writer"):
        old.write(COMMITS_MAX + 1, page_bytes(1))
        old.commit()
    # The new writer commits on top, and a third writer recovers it all.
    new.write(COMMITS_MAX + 2, page_bytes(7))
    new.commit()
    new.close()
    old.close()
    third = cluster.open_volume("race", PAGE_SIZE)
    assert third.read(COMMITS_MAX + 2) == page_bytes(7)
    assert all(third.read(n) == page_bytes(n) for n in writer.acked[-50:])
    third.close()


@pytest.mark.process
def test_recovery_fences_before_it_reads(cluster, monkeypatch):
    """By the time recovery lists the members, a write quorum of every PG refuses the old
    writer's epoch."""
    volume = cluster.open_volume("order", PAGE_SIZE)
    volume.write(3, page_bytes(3))
    volume.commit()
    old_epoch = volume.epoch
    volume.close()
    seen = {}
    original = recovery.compute_recovery

    def spy(*args, **kwargs):
        epochs = [node.status()["volumes"].get(str(volume.volume_id), {}).get("volume_epoch")
                  for node in cluster.nodes]
        seen["epochs"] = epochs
        return original(*args, **kwargs)

    monkeypatch.setattr(recovery, "compute_recovery", spy)
    again = cluster.open_volume("order", PAGE_SIZE)
    assert sum(1 for e in seen["epochs"] if e is not None and e > old_epoch) >= 4, seen
    assert again.epoch == old_epoch + 2     # the fence, then the truncation's own epoch
    assert again.read(3) == page_bytes(3)
    assert again.recovery["truncated"][0] == again.recovery["vdl"]
    again.close()



@pytest.mark.process
def test_metadata_write_is_a_compare_and_set(cluster):
    """Two writers recovering at the same moment write the same metadata version; a node
    keeps the first value it was given at a version, and only the writer whose value a write
    quorum holds may go on."""
    volume = cluster.open_volume("cas", PAGE_SIZE)
    links = list(volume.links.values())
    meta_write(links, "test/cas", 5, {"writer": "a"})
    meta_write(links, "test/cas", 5, {"writer": "a"})          # a retry of the same put takes
    with pytest.raises(errors.MetadataConflict, match="another writer holds it"):
        meta_write(links, "test/cas", 5, {"writer": "b"})
    # Split: another writer's value reached three nodes first; this one can reach only three.
    for link in links[:3]:
        with link.client() as client:
            assert client.meta_put_taken("test/cas", 6, b'{"writer": "c"}') == (6, True)
    with pytest.raises(errors.MetadataConflict):
        meta_write(links, "test/cas", 6, {"writer": "d"})
    meta_write(links, "test/cas", 7, {"writer": "d"})          # a newer version takes everywhere
    assert meta_read(links, "test/cas") == (7, {"writer": "d"})
    volume.close()


@pytest.mark.process
def test_two_writers_opening_at_once_never_both_commit(cluster):
    first = cluster.open_volume("twins", PAGE_SIZE)
    first.write(1, page_bytes(1))
    first.commit()
    first.close()
    barrier = threading.Barrier(2)
    opened = [None, None]

    def open_one(i):
        barrier.wait()
        try:
            opened[i] = cluster.open_volume("twins", PAGE_SIZE, commit_timeout=3.0)
        except errors.AuroraError as exc:       # a clear error is allowed, a second writer is not
            opened[i] = exc

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    volumes = [v for v in opened if not isinstance(v, Exception)]
    assert volumes, opened
    committed = []
    for i, volume in enumerate(volumes):
        try:
            volume.write(10 + i, page_bytes(10 + i))
            volume.commit()
            committed.append(volume)
        except (errors.WriterFenced, errors.QuorumLost):
            volume.rollback()
    assert len(committed) == 1, "two writers committed at epochs %s" % [v.epoch for v in committed]
    winner = committed[0]
    assert winner.epoch == max(v.epoch for v in volumes)
    for volume in volumes:
        volume.close()
    third = cluster.open_volume("twins", PAGE_SIZE)
    assert third.read(1) == page_bytes(1)
    n = 10 + volumes.index(winner)
    assert third.read(n) == page_bytes(n)
    third.close()


# ---- the node: SET_EPOCH and TRUNCATE --------------------------------------------------------

NODE_PAGE_SIZE = 1024
NODE_PAGES_PER_PG = 32


def request(core, frame_type, body, volume_epoch, request_id=1):
    replies = core.handle(p.decode_frame(p.encode_frame(frame_type, body, request_id, 1, volume_epoch, 0)))
    frame = p.decode_frame(replies[0].data)
    if frame.type == p.FRAME_ERROR:
        code, _ = p.ERROR_BODY.unpack_from(frame.body)
        return code
    return frame.type


def set_epoch_body(epoch, truncations=()):
    return p.SET_EPOCH_BODY.pack(epoch, 0) + b"".join(TRUNCATION_ENTRY.pack(0, 0, a, t) for a, t in truncations)


@pytest.fixture
def core(tmp_path):
    core = NodeCore(str(tmp_path / "node"), "node", "az1", 64 * 1024)
    body = p.CREATE_SEGMENT_BODY.pack(0, NODE_PAGE_SIZE, NODE_PAGES_PER_PG)
    assert request(core, p.FRAME_CREATE_SEGMENT, body, 1) == p.FRAME_OK
    yield core
    core.close()


def workload():
    return RedoWorkload(page_size=NODE_PAGE_SIZE, pages_per_pg=NODE_PAGES_PER_PG, pages=8, seed=5)


def test_set_epoch_is_idempotent_and_refuses_a_stale_epoch(core):
    model = workload()
    rows = model.records(20)
    assert request(core, p.FRAME_APPEND, model.batch(rows), 1) == p.FRAME_ACK
    segment = core.volumes[1].segments[0]
    cut = rows[9]["lsn"]
    fence = set_epoch_body(2)
    assert request(core, p.FRAME_SET_EPOCH, fence, 2) == p.FRAME_OK
    assert request(core, p.FRAME_SET_EPOCH, fence, 2) == p.FRAME_OK          # a repeat: nothing changes
    assert segment.max_lsn == rows[-1]["lsn"]                                  # the fence drops nothing
    # The old writer is refused from the fence on.
    assert request(core, p.FRAME_APPEND, model.batch(model.records(2)), 1) == p.ERROR_STALE_EPOCH
    truncate = set_epoch_body(3, [(cut, cut + 1000)])
    assert request(core, p.FRAME_SET_EPOCH, truncate, 3) == p.FRAME_OK
    assert segment.max_lsn == cut and segment.scl <= cut
    assert segment.state["truncations"] == [[cut, cut + 1000]]
    # Repeated, or carried again in a later recovery's history: done once only.
    assert request(core, p.FRAME_SET_EPOCH, truncate, 3) == p.FRAME_OK
    assert request(core, p.FRAME_SET_EPOCH, set_epoch_body(4, [(cut, cut + 1000)]), 4) == p.FRAME_OK
    assert segment.state["truncations"] == [[cut, cut + 1000]]
    # A writer of an older epoch can neither fence nor truncate any more.
    assert request(core, p.FRAME_SET_EPOCH, set_epoch_body(3, [(0, 5)]), 3) == p.ERROR_STALE_EPOCH
    stale = p.TRUNCATE_BODY.pack(0, 0, 0, cut)
    assert request(core, p.FRAME_TRUNCATE, stale, 3) == p.ERROR_STALE_EPOCH
    assert segment.max_lsn == cut


def test_truncate_frame_is_idempotent(core):
    model = workload()
    rows = model.records(12)
    assert request(core, p.FRAME_APPEND, model.batch(rows), 1) == p.FRAME_ACK
    segment = core.volumes[1].segments[0]
    body = p.TRUNCATE_BODY.pack(0, 0, rows[5]["lsn"], rows[5]["lsn"] + 100)
    assert request(core, p.FRAME_TRUNCATE, body, 1) == p.FRAME_OK
    assert request(core, p.FRAME_TRUNCATE, body, 1) == p.FRAME_OK
    assert segment.state["truncations"] == [[rows[5]["lsn"], rows[5]["lsn"] + 100]]
    assert segment.max_lsn == rows[5]["lsn"]


def test_a_member_fenced_but_not_truncated_refuses_the_new_writer_until_it_truncates(core):
    """The reason the truncation rides its own epoch: a member that took the fence and
    missed the truncation holds the old writer's records above VDL.  At the fence's epoch it
    would take the new writer's APPENDs on top of them; at the next it asks for SET_EPOCH."""
    model = workload()
    rows = model.records(16)
    assert request(core, p.FRAME_APPEND, model.batch(rows), 1) == p.FRAME_ACK
    segment = core.volumes[1].segments[0]
    assert request(core, p.FRAME_SET_EPOCH, set_epoch_body(2), 2) == p.FRAME_OK     # fenced only
    vdl = rows[7]["lsn"]
    through = vdl + 1000
    new_writer = RedoWorkload(page_size=NODE_PAGE_SIZE, pages_per_pg=NODE_PAGES_PER_PG, pages=8, seed=9,
                              volume_epoch=3, lsn_start=through, prev_lsn_pg=vdl)
    batch = new_writer.batch(new_writer.records(3))
    assert request(core, p.FRAME_APPEND, batch, 3) == p.ERROR_EPOCH_AHEAD
    assert segment.max_lsn == rows[-1]["lsn"]
    # What the writer does on EPOCH_AHEAD: SET_EPOCH with every truncation, then the batch again.
    assert request(core, p.FRAME_SET_EPOCH, set_epoch_body(3, [(vdl, through)]), 3) == p.FRAME_OK
    assert request(core, p.FRAME_APPEND, batch, 3) == p.FRAME_ACK
    assert all(not vdl < lsn <= through for lsn in segment.sorted_lsns)


# ---- the simulator ---------------------------------------------------------------------------

def test_simulator_finds_recovery_that_reads_before_it_fences():
    """The planted bug is the order before the fix; the simulator's deposed writers (alive,
    still committing while a new writer recovers) must expose it."""
    for seed in range(200):
        try:
            run_seed(seed, bug="recovery-reads-before-fence")
        except Violation as exc:
            assert "invariant 1" in str(exc)
            return
    pytest.fail("recovery-reads-before-fence not found in 200 seeds")


def test_simulator_deposes_live_writers_and_holds_the_invariants():
    deposals = 0
    for seed in range(30):
        deposals += run_seed(seed).stats["deposals"]
    assert deposals > 0


def test_a_volume_wide_range_is_one_durable_write_and_outlives_a_crash_before_segments_save():
    """The long chaos run (seed 8865809, 361 PGs of 4 pages) stopped at its final reopen: a
    SET_EPOCH saved every segment's state once per range, two fsyncs each, and every member
    took longer than the writer's 5 s timeout.  A range for every PG is now saved once, in
    volume.json with the epoch, and applied to the segments in memory; a crash before any
    segment saves must not bring a truncated record back."""
    disk = SimDisk()
    core = NodeCore("/node", "node", "az1", 64 * 1024, disk=disk)
    pgs = 12
    models = {}
    for pg in range(pgs):
        body = p.CREATE_SEGMENT_BODY.pack(pg, NODE_PAGE_SIZE, NODE_PAGES_PER_PG)
        assert request(core, p.FRAME_CREATE_SEGMENT, body, 1) == p.FRAME_OK
        models[pg] = RedoWorkload(pg=pg, page_size=NODE_PAGE_SIZE, pages_per_pg=NODE_PAGES_PER_PG,
                                  pages=4, seed=pg, lsn_start=pg * 1000)
        assert request(core, p.FRAME_APPEND, models[pg].batch(models[pg].records(20)), 1) == p.FRAME_ACK
    for segment in core.volumes[1].segments.values():
        segment.sync()
        while segment.materialize_step(64):     # page versions, durable, on both sides of the cut
            pass
        assert segment.max_lsn > 5
    after, through = 5, 20_000          # one range that cuts into every PG's records
    syncs = []
    real_fsync, real_dirsync = disk.fsync, disk.fsync_directory
    disk.fsync = lambda fd: (syncs.append(fd), real_fsync(fd))[1]
    disk.fsync_directory = lambda path: (syncs.append(path), real_dirsync(path))[1]
    body = p.SET_EPOCH_BODY.pack(2, 0) + TRUNCATION_ENTRY.pack(TRUNCATION_ALL_PGS, 0, after, through)
    assert request(core, p.FRAME_SET_EPOCH, body, 2) == p.FRAME_OK
    assert len(syncs) <= 2, "one durable write per SET_EPOCH, not per segment: %r" % syncs
    for segment in core.volumes[1].segments.values():
        assert segment.max_lsn <= after
    assert core.volumes[1].truncations == [[after, through]]
    # Crash with nothing else synced: each segment's state.json still lacks the range.
    disk.crash(random.Random(3))
    again = NodeCore("/node", "node", "az1", 64 * 1024, disk=disk)
    assert again.volumes[1].epoch == 2
    for pg, segment in again.volumes[1].segments.items():
        assert segment.max_lsn <= after, pg
        assert segment.state["truncations"] == [[after, through]]
        assert segment.list_records(after, 100)[0] == []
        assert all(lsn <= after for versions in segment.pages.versions.values() for lsn, _ in versions)
    # The same range once more (the next recovery carries the history): nothing to do.
    syncs.clear()
    disk.fsync, disk.fsync_directory = (lambda fd: (syncs.append(fd), real_fsync(fd))[1],
                                        lambda path: (syncs.append(path), real_dirsync(path))[1])
    body = p.SET_EPOCH_BODY.pack(3, 0) + TRUNCATION_ENTRY.pack(TRUNCATION_ALL_PGS, 0, after, through)
    assert request(again, p.FRAME_SET_EPOCH, body, 3) == p.FRAME_OK
    assert len(syncs) <= 2
    again.close()


def test_truncation_ranges_merge_and_cover():
    ranges = []
    add_range(ranges, 100, 200)
    add_range(ranges, 300, 400)
    assert ranges == [[100, 200], [300, 400]]
    add_range(ranges, 100, 250)                 # same start, further end (the end + LAL rule)
    assert ranges == [[100, 250], [300, 400]]
    add_range(ranges, 240, 300)                 # bridges both
    assert ranges == [[100, 400]]
    add_range(ranges, 10, 20)
    assert ranges == [[10, 20], [100, 400]]
    assert range_covered(ranges, 100, 400) and range_covered(ranges, 150, 160)
    assert range_covered(ranges, 10, 20)
    assert not range_covered(ranges, 15, 150) and not range_covered(ranges, 399, 401)
    assert not range_covered([], 1, 2)


def test_recovery_reads_late_fenced_members_when_a_fenced_one_lacks_the_pg(cluster, monkeypatch):
    """Fencing returns at a write quorum of nodes, and a node that took the epoch can lack a
    PG's segment (the PG was created while the node was down).  Recovery must fence and read
    that PG's other members rather than give up: the long chaos run (seed 8865809) failed so,
    'PG 4 has 2 of 6 members reachable', with every node up."""
    volume = cluster.open_volume("late", pages_per_pg=PAGES_PER_PG)
    volume.write(0, b"a" * 100)
    volume.commit()
    cluster.kill_az("az1")
    new_page = PAGES_PER_PG * 3                       # its PG is created while az1 is down
    volume.write(new_page, b"b" * 100)
    volume.commit()
    volume.close()
    cluster.restart_az("az1")
    az_of = {n.node_id: n.az for n in cluster.nodes}
    real = Volume._raise_epoch

    def fence_answered_by_az1_and_az3_first(self, key, new_meta, what):
        done = real(self, key, new_meta, what)
        if what == "recovery (fencing)":
            return {n for n in done if az_of[n] in ("az1", "az3")}
        return done

    monkeypatch.setattr(Volume, "_raise_epoch", fence_answered_by_az1_and_az3_first)
    # Invariant 6's order holds on the new branch too: a node listed by recovery's read has
    # taken the new epoch first (in the fence, or in the late fence of the PG's other members).
    took_epoch, listed = set(), set()
    real_send, real_read, real_per_node = Volume._send_epoch, Volume._read_recovery_quorum, Volume._per_node

    def send_epoch(self, nodes, enough, failures=None):
        done = real_send(self, nodes, enough, failures)
        took_epoch.update(done)
        return done

    def read_recovery_quorum(self, fenced):
        took_epoch.update(fenced)
        self._reading = True
        try:
            return real_read(self, fenced)
        finally:
            self._reading = False

    def per_node(self, pairs, ask, enough):
        if getattr(self, "_reading", False):
            assert {n for _, n in pairs} <= took_epoch, "listed a member that had not taken the epoch"
            listed.update(n for _, n in pairs)
        return real_per_node(self, pairs, ask, enough)

    monkeypatch.setattr(Volume, "_send_epoch", send_epoch)
    monkeypatch.setattr(Volume, "_read_recovery_quorum", read_recovery_quorum)
    monkeypatch.setattr(Volume, "_per_node", per_node)
    reopened = cluster.open_volume("late")
    assert listed - {n for n in az_of if az_of[n] in ("az1", "az3")}, "the late fence was not exercised"
    assert reopened.read(new_page)[:100] == b"b" * 100
    assert reopened.read(0)[:100] == b"a" * 100
    reopened.close()


def test_a_member_that_missed_a_pgs_creation_gets_the_segment_without_an_append(cluster):
    """A PG created while an AZ was down lived on 4 segments until an APPEND to that PG was
    refused by a returning member; a PG nobody writes again stayed so for good, one node
    loss from refusing writes.  Now the reopening writer, which sees those members never
    list the PG, sends them CREATE_SEGMENT when their links connect, and gossip fills the
    new segments from their peers -- with no further write to the PG."""
    volume = cluster.open_volume("created-late", pages_per_pg=PAGES_PER_PG)
    volume.write(0, b"a" * 100)
    volume.commit()
    cluster.kill_az("az1")
    pg = 3
    volume.write(PAGES_PER_PG * pg, b"b" * 100)
    lsn = volume.commit()
    volume.close()
    cluster.restart_az("az1")
    returned = [n for n in cluster.nodes if n.az == "az1"]
    for node in returned:
        with NodeClient(node.address, volume_id=volume.volume_id) as client:
            with pytest.raises(KeyError):
                client.status_segment(pg)
    reopened = cluster.open_volume("created-late")
    assert all(pg in reopened.segments_missing[n.node_id] or reopened.stats["segments_created_late"]
               for n in returned)

    def caught_up():
        for node in returned:
            with NodeClient(node.address, volume_id=volume.volume_id) as client:
                try:
                    if client.status_segment(pg)["scl"] < lsn:
                        return False
                except KeyError:
                    return False
        return True

    deadline = time.monotonic() + 30
    while not caught_up():
        assert time.monotonic() < deadline, "az1 never got PG %d's segment and records" % pg
        time.sleep(0.2)
    assert reopened.stats["segments_created_late"] >= len(returned)
    assert not any(pg in reopened.segments_missing[n.node_id] for n in returned)
    assert reopened.read(PAGES_PER_PG * pg)[:100] == b"b" * 100
    reopened.close()

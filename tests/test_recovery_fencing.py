"""Writer recovery fences before it reads (DESIGN.md invariants 1 and 6).

Recovery bumps the volume epoch on a write quorum of every PG first, then lists a read quorum
of the members that took it, then records the truncation under one more epoch.  These tests
hold it to that: an old writer that keeps committing while a new writer recovers loses
nothing it was told is committed and is refused from then on; the nodes' SET_EPOCH and
TRUNCATE are idempotent, refuse a stale epoch, and never let a member hold the new writer's
epoch without the truncation; the simulator finds the old order (reads first) as a planted bug.
"""
import struct
import tempfile
import threading
import time

import pytest

from aurora import _native, errors, protocol as p, recovery
from aurora.cluster import Cluster
from aurora.node.core import TRUNCATION_ENTRY, NodeCore
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
def cluster():
    with Cluster.local(tempfile.mkdtemp(prefix="aur-"), log_file_bytes=LOG_FILE_BYTES,
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

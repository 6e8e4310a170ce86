"""The writer's PGMRPL (SET_LWM) on real node processes: the nodes collect below it (their
log shrinks) while reads at VDL still return every committed byte; reads at an explicit older
LSN hold it down while they run; the retention window keeps history; a read below it is
refused clearly, by the writer and by a node."""
import collections
import random
import time
import types

import pytest

from aurora import protocol as p
from aurora.client import NodeClient
from aurora.cluster import Cluster
from aurora.testing import wait_for
from aurora.writer import Volume

pytestmark = pytest.mark.process

PAGE_SIZE = 4096
PAGES_PER_PG = 64
LOG_FILE_BYTES = 256 * 1024


@pytest.fixture
def cluster(tmp_path):
    """Six local node processes with small log files and 64-page PGs."""
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=LOG_FILE_BYTES,
                       pages_per_pg=PAGES_PER_PG) as cluster:
        yield cluster


def segments(cluster, volume):
    """Every node's STATUS entries for this volume's segments."""
    out = []
    for node in cluster.nodes:
        for segment in node.status()["segments"]:
            if segment["volume_id"] == volume.volume_id:
                out.append((node.node_id, segment))
    return out


def commit_pages(volume, rng, pages, commits, expected):
    """``commits`` MTRs, each rewriting one of ``pages`` whole (4 KiB of redo each)."""
    lsns = []
    for _ in range(commits):
        page_no = rng.choice(pages)
        data = rng.randbytes(PAGE_SIZE)
        volume.write(page_no, data)
        expected[page_no] = data
        lsns.append(volume.commit())
    return lsns


def read_back(volume, expected):
    volume.pool.pages.clear()                 # every page from the nodes, at VDL
    for page_no, data in expected.items():
        assert volume.read(page_no) == data, page_no


def test_nodes_collect_below_pgmrpl_and_reads_at_vdl_still_match(cluster):
    volume = cluster.open_volume("gc", PAGE_SIZE)
    rng = random.Random(1)
    expected = {}
    pages = [1, 2, 3, 5, 8, PAGES_PER_PG + 1, PAGES_PER_PG + 9]      # two PGs
    # ~2.4 MiB of redo per PG copy: ten 256 KiB log files on every member.
    commit_pages(volume, rng, pages, 1200, expected)
    written = 6 * volume.stats["batch_bytes"]          # redo the members appended
    assert written > 6 * 4 * 1024 * 1024

    def collected():
        status = segments(cluster, volume)
        if all(s["gc_lsn"] > 0 and s["log_files"] <= 2 for _, s in status):
            return status
        return None

    status = wait_for(collected, "every member to collect all but its last log files")
    held = sum(s["log_bytes"] for _, s in status)
    assert held < written / 4, (written, held)
    assert volume.pgmrpl > 0
    for node_id, segment in status:
        # Each member was told its PG's read point at PGMRPL, never above its SCL.
        assert 0 < segment["lwm"] <= segment["scl"], (node_id, segment)
        assert segment["gc"]["log_files_deleted"] > 0
    for node in cluster.nodes:
        assert node.status()["background"]["slices"] > 0
    read_back(volume, expected)
    # More commits after collection: still right, from the nodes and after a reopen.
    commit_pages(volume, rng, pages, 50, expected)
    read_back(volume, expected)
    volume.close()
    reopened = cluster.open_volume("gc", PAGE_SIZE)
    read_back(reopened, expected)
    reopened.close()


def test_a_read_at_an_older_lsn_holds_pgmrpl_and_one_below_it_is_refused(cluster):
    volume = cluster.open_volume("pin", PAGE_SIZE)
    rng = random.Random(2)
    expected = {}
    commit_pages(volume, rng, [7, 9, 11], 300, expected)     # log files below the read point
    old = rng.randbytes(PAGE_SIZE)
    volume.write(7, old)
    old_lsn = volume.commit()
    with volume.read_point(old_lsn):
        commit_pages(volume, rng, [7, 9, 11], 300, expected)
        # Members collect below the held read point, and not past it.
        wait_for(lambda: all(s["gc"]["log_files_deleted"] for _, s in segments(cluster, volume)),
                 "GC on every member below the held read point")
        assert volume.pgmrpl <= old_lsn
        assert volume.read(7, old_lsn) == old
        assert all(s["lwm"] <= old_lsn for _, s in segments(cluster, volume))
    # Released: PGMRPL moves past it, and the read point is refused from then on.
    wait_for(lambda: volume.pgmrpl > old_lsn, "PGMRPL to move once the read point is released")
    with pytest.raises(p.ReadPointError, match="below the low-water mark"):
        volume.read(7, old_lsn)
    # A node refuses it too, with its own clear error, once it has been told.
    pg_lwm = wait_for(lambda: min(s["lwm"] for _, s in segments(cluster, volume) if s["pg"] == 0),
                      "every member of PG 0 to have an LWM")
    with NodeClient(cluster.nodes[0].address, volume_id=volume.volume_id,
                    volume_epoch=volume.epoch) as client:
        with pytest.raises(p.ReadPointError, match="below the low-water mark"):
            client.get_page(0, 7, pg_lwm - 1)
        page, _ = client.get_page(0, 7, volume._pg_read_point(0, volume.vdl))
        assert page == expected[7]
    assert volume.read(7) == expected[7]
    volume.close()


def test_the_retention_window_keeps_history_readable(cluster):
    volume = cluster.open_volume("keep", PAGE_SIZE, lwm_retention_s=3.0)
    rng = random.Random(3)
    old = rng.randbytes(PAGE_SIZE)
    volume.write(4, old)
    old_lsn = volume.commit()
    started = time.monotonic()
    expected = {}
    commit_pages(volume, rng, [4, 6], 100, expected)
    time.sleep(0.5)
    if time.monotonic() - started < 2.5:      # a slow host may already be past the window
        assert volume.pgmrpl < old_lsn
        assert volume.read(4, old_lsn) == old
    wait_for(lambda: volume.pgmrpl > old_lsn, "PGMRPL to pass the window")
    assert time.monotonic() - started >= 3.0
    with pytest.raises(p.ReadPointError, match="below the low-water mark"):
        volume.read(4, old_lsn)
    volume.close()


def test_retention_samples_stay_bounded_and_lag_by_the_window():
    fake = types.SimpleNamespace(lwm_retention_s=3600.0, _vdl_samples=collections.deque(), _vdl_seen=None)
    bound = Volume._retention_bound
    now = 1000.0
    vdl = 0
    for step in range(200_000):                  # 2 days of a VDL moving every second
        now += 1.0
        vdl += 10
        got = bound(fake, vdl, now)
        if step % 10_000 == 0 and now - 1000.0 > 3600:
            # At least an hour of history is kept, and not much more than that.
            assert (now - 3600 - 1000.0) * 10 - 60 <= got <= (now - 3600 - 1000.0) * 10
    assert len(fake._vdl_samples) <= 1025 + 1
    assert bound(fake, vdl, now + 3599) < vdl
    assert bound(fake, vdl, now + 3601) == vdl     # idle for the window: nothing held back

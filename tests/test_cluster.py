"""The protocol end to end on real node processes: writer, quorum, gossip, recovery, fencing."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from aurora import errors
from aurora.cluster import Cluster

pytestmark = pytest.mark.process

PAGE_SIZE = 4096
PAGES_PER_PG = 64          # tiny segments so a test spans several PGs
LOG_FILE_BYTES = 1 << 20


@pytest.fixture
def cluster(short_dir):
    with Cluster.local(short_dir, log_file_bytes=LOG_FILE_BYTES, pages_per_pg=PAGES_PER_PG) as c:
        yield c


def page_bytes(tag, n, size=PAGE_SIZE):
    rng = random.Random("%s/%d" % (tag, n))
    return rng.randbytes(size)


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def segment_scls(cluster, volume, pg):
    scls = {}
    for node in cluster.nodes:
        if not node.alive():
            continue
        for seg in node.status()["segments"]:
            if seg["volume_id"] == volume.volume_id and seg["pg"] == pg:
                scls[node.node_id] = seg["scl"]
    return scls


def test_commit_then_read_back_across_pgs(cluster):
    volume = cluster.open_volume("v", PAGE_SIZE)
    expected = {}
    for i in range(20):
        page_no = (i * 37) % (PAGES_PER_PG * 3)
        data = page_bytes("a", i)
        volume.write(page_no, data)
        expected[page_no] = data
        lsn = volume.commit()
        assert volume.vdl >= lsn
    assert len(volume.members) == 3
    for page_no, data in expected.items():
        assert volume.read(page_no) == data
    # Partial writes become small deltas.
    before = volume.stats["batch_bytes"]
    volume.write(5, b"hello", offset=100)
    volume.commit()
    assert volume.stats["batch_bytes"] - before < 200
    assert volume.read(5)[100:105] == b"hello"
    volume.close()
    # A new writer sees every committed page (through recovery, from the nodes).
    volume = cluster.open_volume("v", PAGE_SIZE)
    for page_no, data in expected.items():
        if page_no == 5:
            data = data[:100] + b"hello" + data[105:]
        assert volume.read(page_no) == data
    volume.close()


def test_concurrent_committers_share_fsyncs(cluster):
    volume = cluster.open_volume("c", PAGE_SIZE)
    results = {}

    def worker(t):
        for i in range(20):
            page_no = t * 4 + (i % 4)
            volume.write(page_no, page_bytes("t%d" % t, i))
            results[t, i] = volume.commit()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 160 and volume.vdl >= max(results.values())
    for t in range(8):
        for j in range(4):
            last = max(i for i in range(20) if i % 4 == j)
            assert volume.read(t * 4 + j) == page_bytes("t%d" % t, last)
    volume.close()


def test_losing_an_az_keeps_commits_going_and_it_catches_up_by_gossip(cluster):
    volume = cluster.open_volume("az", PAGE_SIZE)
    volume.write(1, page_bytes("x", 0))
    volume.commit()
    killed = cluster.kill_az("az2")
    for i in range(30):
        volume.write(1 + i % 5, page_bytes("x", i + 1))
        volume.commit(timeout=10)
    target = volume.vdl
    for node in killed:
        node.restart()
    wait_for(lambda: all(scl >= target for scl in segment_scls(cluster, volume, 0).values())
             and len(segment_scls(cluster, volume, 0)) == 6, what="the AZ to catch up")
    volume.close()


def test_az_plus_one_down_reads_go_on_and_commits_raise_quorum_lost(cluster):
    volume = cluster.open_volume("az1", PAGE_SIZE, commit_timeout=2.0)
    data = page_bytes("y", 0)
    volume.write(2, data)
    volume.commit()
    volume.pool.pages.clear()          # force reads to go to the nodes
    cluster.kill_az("az1")
    cluster.node("node-2").kill()
    assert volume.read(2) == data
    volume.write(2, page_bytes("y", 1))
    with pytest.raises(errors.QuorumLost, match="PG 0 has 3 of 6 members reachable"):
        volume.commit()
    volume.close()


def test_dropped_traffic_is_repaired_by_gossip_alone(cluster):
    volume = cluster.open_volume("g", PAGE_SIZE)
    volume.write(3, page_bytes("g", 0))
    volume.commit()
    victim = volume.members[0][0]
    volume.links[victim].drop_traffic = True
    for i in range(20):
        volume.write(3, page_bytes("g", i + 1))
        volume.commit()
    target = volume.vdl
    volume.links[victim].drop_traffic = False
    wait_for(lambda: segment_scls(cluster, volume, 0).get(victim, 0) >= target,
             what="gossip to fill the dropped range")
    volume.close()


WRITER_SCRIPT = r"""
import sys, time, random
from aurora.cluster import Cluster
cluster = Cluster.local(sys.argv[1])
volume = cluster.open_volume("w", 4096)
i = 0
while True:
    page_no = i % 200
    volume.write(page_no, random.Random(i).randbytes(4096))
    lsn = volume.commit()
    print(i, page_no, lsn, flush=True)
    i += 1
"""


def test_writer_sigkill_recovery_keeps_every_acknowledged_commit(cluster, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    from aurora.node.process import _package_root
    env = dict(os.environ, PYTHONPATH=_package_root())
    proc = subprocess.Popen([sys.executable, str(script), cluster.data_dir], stdout=subprocess.PIPE,
                            env=env, cwd=str(tmp_path), text=True)
    acked = []
    for line in proc.stdout:
        acked.append(tuple(int(x) for x in line.split()))
        if len(acked) >= 150:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:     # commits printed before the kill landed were acknowledged too
        if line.strip():
            acked.append(tuple(int(x) for x in line.split()))
    proc.stdout.close()
    started = time.monotonic()
    volume = cluster.open_volume("w", PAGE_SIZE)
    elapsed = time.monotonic() - started
    assert volume.recovery["vdl"] >= acked[-1][2]
    latest = {}
    for i, page_no, lsn in acked:
        latest[page_no] = i
    for page_no, i in latest.items():
        data = volume.read(page_no)
        # The page holds the last acknowledged write or a later one that also made it.
        later = [j for j in range(i, i + 200) if j % 200 == page_no]
        assert any(data == random.Random(j).randbytes(PAGE_SIZE) for j in [i] + later)
    assert elapsed < 10
    volume.close()


def test_second_writer_fences_the_first(cluster):
    first = cluster.open_volume("f", PAGE_SIZE, commit_timeout=5.0)
    first.write(1, page_bytes("f", 0))
    first.commit()
    second = cluster.open_volume("f", PAGE_SIZE)
    assert second.epoch > first.epoch       # recovery fences, then truncates under one more epoch
    # The first writer learns of the new epoch from the first node that refuses it (an
    # APPEND, or its periodic VDL hint): from then on it cannot write.
    with pytest.raises(errors.WriterFenced, match="fenced by a newer writer"):
        first.write(1, page_bytes("f", 1))
        first.commit()
    assert second.read(1) == page_bytes("f", 0)
    second.write(1, page_bytes("f", 2))
    second.commit()
    assert second.read(1) == page_bytes("f", 2)
    second.close()
    first.close()

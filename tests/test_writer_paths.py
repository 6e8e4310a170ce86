"""Writer fast paths that must not change what is read back: pages of a PG this writer created
are known to be zero until written (no GetPage), and uncached pages are fetched outside the
log lock."""
import random
import struct

import pytest

from aurora import protocol as p
from aurora.cluster import Cluster
from aurora.testing import wait_for

pytestmark = pytest.mark.process


def test_new_pages_of_a_fresh_pg_need_no_read_and_read_back_after_recovery(tmp_path):
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("fresh", pages_per_pg=256, buffer_pool_pages=8)
        fetched = []
        committed = set()
        real_get_page = volume._get_page

        def counting_get_page(page_no, read_lsn):
            if page_no // 256 in volume.members:          # a PG not created yet is not asked
                fetched.append((page_no, page_no in committed))
            return real_get_page(page_no, read_lsn)

        volume._get_page = counting_get_page
        rng = random.Random(3)
        expected = {}
        for i in range(60):
            page_no = rng.randrange(600)                   # three PGs, all created by this writer
            data = rng.randbytes(300)
            offset = rng.randrange(0, 4096 - 300)
            volume.write(page_no, data, offset)
            page = bytearray(expected.get(page_no, bytes(4096)))
            page[offset:offset + 300] = data
            expected[page_no] = bytes(page)
            volume.commit()
            committed.add(page_no)
        # Only pages written before and evicted since (the pool holds 8) were read back.
        assert fetched and all(written for _, written in fetched), fetched
        assert volume.read(599 if 599 not in expected else 598) == bytes(4096)
        # The same writer, its cache emptied: every page written (the first MTR of each PG
        # included) is read from the nodes, never taken for a fresh zero page.
        volume.pool.pages.clear()
        for page_no, page in expected.items():
            assert volume.read(page_no) == page
        volume.close()
        # A new writer recovers the volume: nothing is "fresh" any more, every page reads back.
        reopened = cluster.open_volume("fresh")
        assert not reopened.fresh_pgs
        for page_no, page in expected.items():
            assert reopened.read(page_no) == page


def test_a_read_asks_every_member_in_the_end_covered_and_connected_first(tmp_path):
    """A member the writer counts as covered can still refuse (test_recovery_fencing failed
    once so: 'read point 59 above SCL 56', only node-1 asked); its refusal must not end the
    read.  Every member is a candidate: covered and connected ones first."""
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("order", pages_per_pg=64)
        volume.write(5, b"x" * 100)
        volume.commit()
        asked = spy_on_candidates(volume)
        ids = volume.members[0]
        lone = ids[2]
        for node_id in ids:                      # as if only one link had connected yet
            volume.links[node_id].connected = node_id == lone
        volume.pool.pages.clear()
        assert volume.read(5)[:100] == b"x" * 100
        assert sorted(asked[0]) == sorted(ids) and asked[0][0] == lone
        volume.close()


def spy_on_candidates(volume):
    """The candidate lists ``volume``'s uncached reads are given, in order, appended to a list."""
    asked = []
    real = volume._hedged_read

    def spy(pg, page_no, read_lsn, candidates):
        asked.append(list(candidates))
        return real(pg, page_no, read_lsn, candidates)

    volume._hedged_read = spy
    return asked


def test_after_recovery_reads_go_first_to_members_seen_holding_the_chain(tmp_path):
    """The tracker starts every member at the recovery's VDL before any has acknowledged
    anything; a member recovery did not see holding a PG's chain is not taken as covered
    (only asked after the others) until it acknowledges a record of the new writer."""
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        first = cluster.open_volume("holders", pages_per_pg=64)
        first.write(5, b"y" * 100)
        first.commit()
        first.close()
        volume = cluster.open_volume("holders")                     # recovery
        ids = volume.members[0]
        holders = volume.recovered_holders[0]
        assert len(holders) >= 4 and holders <= set(ids), holders
        wait_for(lambda: all(volume.links[n].connected for n in ids), "every member link connected")
        only, fast = ids[3], ids[0]
        volume.recovered_holders[0] = {only}     # as if recovery had seen only one holder
        for node_id in ids:
            volume.links[node_id].latency_s = 0.01
        volume.links[fast].latency_s = 0.0      # the one a latency order alone would pick
        asked = spy_on_candidates(volume)
        volume.pool.pages.clear()
        assert volume.read(5)[:100] == b"y" * 100
        assert asked[0][0] == only and sorted(asked[0]) == sorted(ids), asked[0]
        # Once every member has acknowledged a record of this writer, each counts as covered.
        volume.write(6, b"z" * 100)
        volume.commit()
        start = volume.tracker.start_lsn
        wait_for(lambda: min(volume.tracker.member_scls(0)) > start, "every member's acknowledgement")
        volume.links[fast].latency_s = 0.0
        volume.pool.pages.clear()
        assert volume.read(5)[:100] == b"y" * 100
        assert asked[-1][0] == fast, asked[-1]
        volume.close()


def test_send_all_writes_every_byte_and_reports_each_socket():
    """The one-GIL-release send of a round (csrc/sendv.c): every byte reaches each socket in
    order, a dead peer is reported by its errno without stopping the others."""
    import errno
    import socket

    from aurora import _native

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        payloads = [b"a" * 10, bytearray(b"b" * 100_000), memoryview(b"c" * 7)]
        pairs[1][1].setblocking(False)
        received = bytearray()

        def drain():
            while len(received) < 100_000:
                try:
                    received.extend(pairs[1][1].recv(65536))
                except BlockingIOError:
                    import time
                    time.sleep(0.001)

        import threading
        reader = threading.Thread(target=drain)
        reader.start()
        assert _native.send_all([s.fileno() for s, _ in pairs], payloads) == [0, 0, 0]
        reader.join(timeout=10)
        assert pairs[0][1].recv(100) == b"a" * 10
        assert bytes(received) == b"b" * 100_000
        assert pairs[2][1].recv(100) == b"c" * 7
        pairs[0][1].close()
        codes = _native.send_all([pairs[0][0].fileno(), pairs[2][0].fileno()], [b"x", b"y"])
        assert codes[0] in (errno.EPIPE, errno.ECONNRESET) and codes[1] == 0
        with pytest.raises(ValueError):
            _native.send_all([pairs[2][0].fileno()], [])
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_round_with_no_boxcar_leaves_a_links_frames_to_the_sender_thread(tmp_path):
    # Nearly every commit at 16 threads runs a send round that has no boxcar to send (its
    # PG waits for its window).  Such a round returns at once; frames queued on a link are
    # sent by the sender thread, which whatever queues them wakes.
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("round")
        volume.write(1, b"x" * 100)
        volume.commit()
        pump = volume.pump
        link = next(link for link in pump.links if link.connected)
        hint = (p.FRAME_VOLUME_HINT, 0, struct.pack("<Q", volume.vdl))
        with pump.round_lock:                  # no other round meanwhile
            link.queue.append(hint)            # queued without waking the sender
            pump._round(connect=False)         # a committer's round: nothing to send
            assert list(link.queue) == [hint]
        pump.wake_sender()
        wait_for(lambda: not link.queue, "the sender thread to send the link's frame")
        volume.write(2, b"y" * 100)
        assert volume.commit() == volume.vdl
        assert volume.read(2)[:100] == b"y" * 100
        volume.close()


def test_an_mtr_that_creates_two_pgs_commits_and_the_log_goes_on(short_dir):
    """Creating a PG writes the volume's metadata, which replaces Volume.members with a new
    dict; the commit path held the old one, so an MTR creating two PGs raised KeyError after
    the first PG's LSNs were registered, and every later commit failed with an order error
    (the chaos workload writes each id to two PGs: 3,183 of 52,320 commits acknowledged)."""
    with Cluster.local(short_dir, log_file_bytes=1 << 20, pages_per_pg=4) as cluster:
        volume = cluster.open_volume("two-pgs")
        expected = {}
        for i in range(6):
            for page_no in (4 * (10 * i + 1), 4 * (10 * i + 5)):   # two PGs new to the volume
                data = struct.pack("<Q", i + 1) * 8
                volume.write(page_no, data)
                expected[page_no] = data
            volume.commit()
        assert len(volume.members) == 12
        for page_no, data in expected.items():
            assert volume.read(page_no)[:64] == data
        volume.close()


def test_an_error_after_an_mtrs_lsns_are_registered_closes_the_volume_clearly(short_dir, monkeypatch):
    """If anything fails inside the log lock once some of an MTR's LSNs are registered with
    the tracker, the log cannot go on; later commits must say so, not fail with order errors,
    and a reopened volume still has everything acknowledged before."""
    from aurora import errors
    from aurora.writer import Volume
    with Cluster.local(short_dir, log_file_bytes=1 << 20, pages_per_pg=4) as cluster:
        volume = cluster.open_volume("broken")
        volume.write(0, b"a" * 64)
        volume.commit()

        def fail(self, pg, first, last):
            raise RuntimeError("injected")

        monkeypatch.setattr(Volume, "_remember_range", fail)
        volume.write(40, b"b" * 64)                    # a new PG: its range list is new too
        with pytest.raises(RuntimeError, match="injected"):
            volume.commit()
        monkeypatch.undo()
        with pytest.raises(errors.VolumeClosed, match="internal error left its log inconsistent"):
            volume.write(0, b"c" * 64)
            volume.commit()
        volume.close()
        reopened = cluster.open_volume("broken")
        assert reopened.read(0)[:64] == b"a" * 64
        reopened.write(0, b"d" * 64)
        reopened.commit()
        assert reopened.read(0)[:64] == b"d" * 64
        reopened.close()

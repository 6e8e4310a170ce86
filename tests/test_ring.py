"""The shared-memory redo ring (aurora/ring.py): slot allocation, a real node reading APPENDs
from it, every way a ring notice can be wrong, and a writer on six local nodes using it."""
import os
import random
import time

import pytest

from aurora import _native, protocol as p
from aurora.client import NodeClient
from aurora.cluster import Cluster
from aurora.node.process import NodeProcess
from aurora.ring import RING_BYTES_MIN, RING_HEADER, RingReader, SharedRing, sweep_stale
from aurora.testing import RedoWorkload

PAGE_SIZE = 4096
PAGES_PER_PG = 64


@pytest.fixture
def ring(tmp_path):
    r = SharedRing(RING_BYTES_MIN, directory=str(tmp_path))
    yield r
    r.close()


def test_slots_wrap_and_are_reused_only_when_every_holder_released(ring):
    rng = random.Random(5)
    live = []
    written = 0
    for step in range(3000):
        if live and (rng.random() < 0.5 or len(live) > 40):
            slot, data = live.pop(rng.randrange(len(live)))
            # What a node reads is what was written, until the last holder lets go.
            assert bytes(ring.map[slot.offset:slot.offset + slot.length]) == data
            ring.release(slot)
            continue
        data = rng.randbytes(rng.randrange(1, 6000))
        slot = ring.put(data)
        if slot is None:
            assert live, "an empty ring refused %d bytes" % len(data)
            continue
        written += len(data)
        assert RING_HEADER.size <= slot.offset and slot.offset + slot.length <= ring.size
        for other, _ in live:   # no two live slots overlap
            assert slot.offset + slot.length <= other.offset or other.offset + other.length <= slot.offset
        live.append((slot, data))
    assert written > 4 * ring.size   # it wrapped many times
    for slot, _ in live:
        ring.release(slot)
    assert ring.in_use() == 0


def test_a_held_slot_survives_its_creator_release(ring):
    slot = ring.put(b"x" * 100)
    ring.hold(slot)
    ring.release(slot)
    assert ring.in_use() == 1
    ring.release(slot)
    assert ring.in_use() == 0


def test_a_full_ring_refuses_instead_of_overwriting(ring):
    slots = []
    while True:
        slot = ring.put(b"y" * 4096)
        if slot is None:
            break
        slots.append(slot)
    assert len(slots) >= (ring.size - RING_HEADER.size) // 4096 - 2
    ring.release(slots[1])
    assert ring.put(b"z" * 4096) is None       # freed out of order: not reusable yet
    ring.release(slots[0])
    assert ring.put(b"z" * 4096) is not None   # the two oldest slots' space comes back


def test_reader_checks_header_owner_size_and_crc(ring, tmp_path):
    reader = RingReader(ring.path, ring.size, ring.ring_id)
    slot = ring.put(b"hello ring")
    assert reader.read(slot.offset, slot.length, slot.crc) == b"hello ring"
    with pytest.raises(ValueError, match="CRC"):
        reader.read(slot.offset, slot.length, slot.crc ^ 1)
    with pytest.raises(ValueError, match="outside"):
        reader.read(ring.size - 4, 8, 0)
    with pytest.raises(ValueError, match="outside"):
        reader.read(0, 8, 0)   # the header is not a slot
    reader.close()
    with pytest.raises(ValueError, match="bad header"):
        RingReader(ring.path, ring.size, ring.ring_id + 1)
    with pytest.raises(ValueError, match="bytes"):
        RingReader(ring.path, ring.size * 2, ring.ring_id)
    plain = tmp_path / "not-a-ring"
    plain.write_bytes(bytes(RING_BYTES_MIN))
    with pytest.raises(ValueError, match="bad header"):
        RingReader(str(plain), RING_BYTES_MIN, 1)
    link = tmp_path / "link"
    os.symlink(ring.path, link)
    with pytest.raises(OSError):
        RingReader(str(link), ring.size, ring.ring_id)   # O_NOFOLLOW


def test_rings_of_dead_writers_are_swept(tmp_path):
    dead = tmp_path / "aurora-ring-999999999-abc"
    dead.write_bytes(b"")
    mine = tmp_path / ("aurora-ring-%d-abc" % os.getpid())
    mine.write_bytes(b"")
    sweep_stale(str(tmp_path))
    assert not dead.exists() and mine.exists()


# ---- a real node ---------------------------------------------------------------------------

@pytest.fixture
def node(tmp_path, short_dir):
    address = "unix:%s/node.sock" % short_dir
    proc = NodeProcess(str(tmp_path / "data"), address, "n1", "az1", 256 * 1024,
                       log_path=str(tmp_path / "node.log"))
    proc.start()
    yield proc
    proc.stop()


def ask(client, type, body):
    """One request; the reply frame, ERROR included."""
    client.send(type, body)
    return client.receive(raise_errors=False)


def attach(client, ring, path=None, size=None, ring_id=None):
    body = p.RING_ATTACH_BODY.pack(ring.ring_id if ring_id is None else ring_id,
                                   ring.size if size is None else size) + (path or ring.path).encode()
    return ask(client, p.FRAME_RING_ATTACH, body)


def notice(ring, slot, **changes):
    fields = dict(ring_id=ring.ring_id, offset=slot.offset, length=slot.length, crc=slot.crc)
    fields.update(changes)
    return p.APPEND_RING_BODY.pack(fields["ring_id"], fields["offset"], fields["length"], fields["crc"])


def test_a_node_serves_appends_from_the_ring_like_inline_ones(node, ring):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=6, seed=3)
    batches = [workload.batch(workload.records(5)) for _ in range(12)]
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        client.create_segment(0, PAGE_SIZE, PAGES_PER_PG)
        assert attach(client, ring).type == p.FRAME_OK
        for i, batch in enumerate(batches):
            if i % 3 == 2:
                pg, scl, last = client.append(batch)           # inline and ring mix freely
            else:
                slot = ring.put(batch)
                frame = client.request(p.FRAME_APPEND_RING, notice(ring, slot), p.FRAME_ACK)
                ring.release(slot)
                pg, _, scl, last = p.ACK_BODY.unpack_from(frame.body)
            assert last == _native.decode_batch(batch)[0].last_lsn
        assert scl == workload.lsn
        for page_no in workload.page_numbers:
            page, _ = client.get_page(0, page_no, workload.lsn)
            assert page == workload.page_at(page_no, workload.lsn)


def test_bad_ring_notices_are_refused_and_change_nothing(node, ring, tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=4, seed=4)
    good = workload.batch(workload.records(3))
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        client.create_segment(0, PAGE_SIZE, PAGES_PER_PG)
        slot = ring.put(good)
        # Not attached yet.
        frame = ask(client, p.FRAME_APPEND_RING, notice(ring, slot))
        assert frame.type == p.FRAME_ERROR and b"not attached" in bytes(frame.body)
        # Attach refusals: relative path, missing file, wrong size, wrong id.
        for kwargs in ({"path": "relative/ring"}, {"path": str(tmp_path / "missing")},
                       {"size": ring.size + 4096}, {"ring_id": ring.ring_id + 7}):
            frame = attach(client, ring, **kwargs)
            assert frame.type == p.FRAME_ERROR, kwargs
            assert p.ERROR_BODY.unpack_from(frame.body)[0] == p.ERROR_BAD_REQUEST
        assert attach(client, ring).type == p.FRAME_OK
        # Slot refusals: CRC, bounds, body length, another ring.
        for body in (notice(ring, slot, crc=slot.crc ^ 0xFF), notice(ring, slot, offset=ring.size),
                     notice(ring, slot, length=0), notice(ring, slot)[:-1],
                     notice(ring, slot, ring_id=ring.ring_id ^ 1)):
            frame = ask(client, p.FRAME_APPEND_RING, body)
            assert frame.type == p.FRAME_ERROR
            assert p.ERROR_BODY.unpack_from(frame.body)[0] == p.ERROR_BAD_REQUEST
        # A slot holding garbage is a malformed batch, answered (and the connection closed)
        # exactly as the same bytes sent inline would be.
        junk = ring.put(b"\x00" * 200)
        frame = ask(client, p.FRAME_APPEND_RING, notice(ring, junk))
        assert p.ERROR_BODY.unpack_from(frame.body)[0] == p.ERROR_MALFORMED
    # The node kept serving: nothing was appended, and a new connection appends normally.
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        assert client.list_records(0, _native.LSN_MAX, 0)[0] == 0
        assert attach(client, ring).type == p.FRAME_OK
        frame = client.request(p.FRAME_APPEND_RING, notice(ring, slot), p.FRAME_ACK)
        assert p.ACK_BODY.unpack_from(frame.body)[2] == workload.lsn


# ---- the writer ----------------------------------------------------------------------------

def test_writer_ships_through_the_ring_and_falls_back_inline_when_full(tmp_path):
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("ring", ring_bytes=RING_BYTES_MIN)
        deadline = time.monotonic() + 10
        while not all(link.ring_ok for link in volume.links.values()):   # links connect in the background
            assert time.monotonic() < deadline, "members did not attach the ring"
            time.sleep(0.01)
        rng = random.Random(9)
        expected = {}
        for i in range(60):
            # Every tenth MTR rewrites 24 whole pages: ~96 KiB, more than the ring holds.
            pages = rng.sample(range(40), 24) if i % 10 == 9 else [rng.randrange(40)]
            for page_no in pages:
                data = rng.randbytes(PAGE_SIZE if len(pages) > 1 else rng.randrange(100, 2000))
                volume.write(page_no, data)
                page = bytearray(expected.get(page_no, bytes(PAGE_SIZE)))
                page[:len(data)] = data
                expected[page_no] = bytes(page)
            volume.commit()
        assert volume.stats["ring_frames"] > 0
        assert volume.stats["inline_frames"] > 0          # the big boxcars went inline
        path = volume.ring.path
        volume.close()
        assert not os.path.exists(path)        # the ring goes with the volume
        reader = cluster.open_volume("ring", ring_bytes=0)
        assert reader.ring is None
        for page_no, page in expected.items():
            assert reader.read(page_no) == page


def test_writer_without_a_ring_sends_everything_inline(tmp_path, monkeypatch):
    monkeypatch.setenv("AURORA_RING", "0")
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("inline")
        volume.write(1, b"abc")
        volume.commit()
        assert volume.ring is None
        assert volume.stats["ring_frames"] == 0 and volume.stats["inline_frames"] >= 4

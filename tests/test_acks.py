"""The native ACK receive path (csrc/acks.h): frame parsing, malformed frames, and the
receiver feeding the quorum tracker from real sockets without Python per ACK."""
import os
import random
import socket
import struct

import pytest

from aurora import _native, errors, protocol as p

VOLUME_ID = 77


def ack(pg, scl, request_id=1, last_lsn=None):
    body = p.ACK_BODY.pack(pg, 0, scl, scl if last_lsn is None else last_lsn)
    return p.encode_frame(p.FRAME_ACK, body, request_id, VOLUME_ID, 1, 0)


def ok_frame(request_id=9):
    return p.encode_frame(p.FRAME_OK, p.OK_BODY.pack(1, 0, 5), request_id, VOLUME_ID, 1, 0)


def test_constants_agree_with_the_python_protocol():
    # csrc/frame.h repeats these for the C that reads and writes ACK frames.
    assert _native.FRAME_ACK_BYTES == p.FRAME_HEADER_SIZE + p.ACK_BODY.size == len(ack(0, 1))
    assert _native.FRAME_HEADER_BYTES == p.FRAME_HEADER_SIZE
    assert _native.FRAME_CRC_START == p.FRAME_CRC_START
    assert _native.FRAME_LENGTH_MAX == p.FRAME_LENGTH_MAX
    assert _native.FRAME_TYPE_ACK == p.FRAME_ACK


def test_parse_whole_acks_and_stop_at_a_partial_frame():
    frames = ack(3, 10, 7, 12) + ack(4, 11, 8)
    got, consumed, stop = _native.parse_acks(frames + ack(5, 1)[:30])
    assert got == [(7, 3, 10, 12), (8, 4, 11, 11)]
    assert consumed == len(frames)
    assert stop == _native.ACKS_STOP_MORE


def test_parse_more_acks_than_one_native_call_holds():
    data = b"".join(ack(1, lsn, lsn) for lsn in range(1, 1001))
    got, consumed, stop = _native.parse_acks(data)
    assert [scl for _, _, scl, _ in got] == list(range(1, 1001))
    assert consumed == len(data) and stop == _native.ACKS_STOP_MORE


def test_parse_stops_at_another_frame_type_from_its_first_six_bytes():
    got, consumed, stop = _native.parse_acks(ack(1, 5) + ok_frame()[:6])
    assert len(got) == 1 and consumed == 64 and stop == _native.ACKS_STOP_OTHER


@pytest.mark.parametrize("patch, error", [
    (lambda f: struct.pack_into("<I", f, 0, 39), errors.LengthError),           # below a header
    (lambda f: struct.pack_into("<I", f, 0, p.FRAME_LENGTH_MAX + 1), errors.LengthError),
    (lambda f: struct.pack_into("<I", f, 0, 65), errors.LengthError),           # an ACK is 64
    (lambda f: struct.pack_into("<H", f, 6, 1), errors.FlagsError),
    (lambda f: f.__setitem__(50, f[50] ^ 0x01), errors.ChecksumError),           # body bit
    (lambda f: f.__setitem__(14, f[14] ^ 0x80), errors.ChecksumError),           # request id
])
def test_malformed_frames_raise_a_clear_error_with_their_offset(patch, error):
    bad = bytearray(ack(2, 9))
    patch(bad)
    with pytest.raises(error) as caught:
        _native.parse_acks(ack(2, 8) + bytes(bad))
    assert caught.value.offset == 64
    assert "after 1 ACKs" in str(caught.value)


def test_random_bytes_never_crash_the_parser():
    rng = random.Random(5)
    good = ack(1, 3) * 4
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))])
        try:
            got, consumed, stop = _native.parse_acks(data)
        except errors.FormatError as exc:
            assert exc.offset is not None and 0 <= exc.offset <= len(data)
        else:
            assert consumed <= len(data) and consumed == 64 * len(got)


# ---- the receiver --------------------------------------------------------------------------

@pytest.fixture
def rig():
    """A tracker with one PG of 6 members holding LSNs 1..10 (CPL at 5 and 10), a receiver of
    2 links each reading one end of a socket pair, link i acting as member i of PG 0."""
    tracker = _native.QuorumTracker(6, 4, 0)
    tracker.sent(0, list(range(1, 11)), [1 if lsn in (5, 10) else 0 for lsn in range(1, 11)])
    rx = _native.AckReceiver(2, tracker)
    pairs = [socket.socketpair() for _ in range(2)]
    for i, (ours, _) in enumerate(pairs):
        rx.set_link(i, ours.fileno())
        rx.set_member(i, 0, i)
    wake_r, wake_w = socket.socketpair()
    yield tracker, rx, [theirs for _, theirs in pairs], wake_r, wake_w
    for i in range(2):
        rx.set_link(i, -1)
    for pair in pairs:
        for s in pair:
            s.close()
    wake_r.close()
    wake_w.close()


def test_acks_reach_the_tracker_without_an_event(rig):
    tracker, rx, nodes, wake_r, _ = rig
    # Members 2..5 are fed directly; links 0 and 1 (members 0, 1) through the receiver.
    for member in (2, 3):
        tracker.ack(0, member, 10)
    nodes[0].sendall(ack(0, 7, 11) + ack(0, 10, 12))
    nodes[1].sendall(ack(0, 10, 21)[:20])
    assert rx.run(wake_r.fileno(), 0)[0] == _native.ACKS_EVENT_TIMEOUT
    assert tracker.vdl == 0                       # members 0, 2, 3 at 10: the 4th is at 0
    assert tracker.scl(0, 0) == 10
    nodes[1].sendall(ack(0, 10, 21)[20:])
    assert rx.run(wake_r.fileno(), 0)[0] == _native.ACKS_EVENT_TIMEOUT
    assert tracker.vdl == 10
    assert rx.completed() == [(0, 11, 0, 7), (0, 12, 0, 10), (1, 21, 0, 10)]
    assert rx.completed() == []


def test_an_scl_above_every_sent_lsn_is_clamped(rig):
    tracker, rx, nodes, wake_r, _ = rig
    nodes[0].sendall(ack(0, 1000))
    rx.run(wake_r.fileno(), 0)
    assert tracker.scl(0, 0) == 10
    assert rx.completed() == [(0, 1, 0, 1000)]    # the bookkeeping sees what was sent


def test_window_event_only_while_held_and_only_when_pgcl_moves(rig):
    tracker, rx, nodes, wake_r, _ = rig
    for member in (2, 3, 4):
        tracker.ack(0, member, 5)
    nodes[0].sendall(ack(0, 5))
    assert rx.run(wake_r.fileno(), 0)[0] == _native.ACKS_EVENT_TIMEOUT   # not held
    assert tracker.pgcl(0) == 5
    rx.set_held(True)
    nodes[1].sendall(ack(0, 5))                   # a 5th member: PGCL stays at 5
    assert rx.run(wake_r.fileno(), 0)[0] == _native.ACKS_EVENT_TIMEOUT
    for member in (2, 3, 4):
        tracker.ack(0, member, 10)
    nodes[0].sendall(ack(0, 10))                  # the 4th at 10: PGCL moves
    assert rx.run(wake_r.fileno(), 0)[:2] == (_native.ACKS_EVENT_WINDOW, 0)
    assert tracker.pgcl(0) == 10


def test_other_frames_and_unknown_pgs_go_to_python_in_order(rig):
    tracker, rx, nodes, wake_r, _ = rig
    rest = ok_frame() + ack(0, 9)
    nodes[0].sendall(ack(0, 3) + rest)
    assert rx.run(wake_r.fileno(), 0)[:2] == (_native.ACKS_EVENT_PYTHON, 0)
    assert rx.completed() == [(0, 1, 0, 3)]
    assert rx.take_buffer(0) == rest              # the OK frame onwards, untouched
    assert tracker.scl(0, 0) == 3
    nodes[1].sendall(ack(5, 3))                   # PG 5: no member entry for link 1
    assert rx.run(wake_r.fileno(), 0)[:2] == (_native.ACKS_EVENT_PYTHON, 1)
    assert rx.take_buffer(1) == ack(5, 3)
    assert rx.completed() == []


def test_a_link_in_python_mode_is_reported_readable_and_not_read(rig):
    tracker, rx, nodes, wake_r, _ = rig
    # Link 0 again, on a fresh pair, in Python mode.
    ours, theirs = socket.socketpair()
    try:
        rx.set_link(0, ours.fileno(), True)
        theirs.sendall(ack(0, 4))
        assert rx.run(wake_r.fileno(), 0)[:2] == (_native.ACKS_EVENT_PYTHON, 0)
        assert rx.take_buffer(0) == b""
        assert ours.recv(100) == ack(0, 4)         # still in the socket for the caller
        assert tracker.scl(0, 0) == 0
    finally:
        rx.set_link(0, -1)
        ours.close()
        theirs.close()


def test_a_corrupt_frame_is_reported_after_the_good_ones_are_applied(rig):
    tracker, rx, nodes, wake_r, _ = rig
    bad = bytearray(ack(0, 9))
    bad[55] ^= 0xFF
    nodes[1].sendall(ack(0, 6) + bytes(bad))
    kind, link, code, offset = rx.run(wake_r.fileno(), 0)
    assert (kind, link, offset) == (_native.ACKS_EVENT_BAD, 1, 64)
    exc = _native.acks_error(code, "node 1", offset)
    assert isinstance(exc, errors.ChecksumError) and exc.offset == 64
    assert tracker.scl(0, 1) == 6


def test_a_frame_too_big_for_the_buffer_goes_to_python(rig):
    tracker, rx, nodes, wake_r, _ = rig
    huge = p.encode_frame(p.FRAME_ERROR, p.ERROR_BODY.pack(8, 0) + b"x" * 100000, 3, VOLUME_ID, 1, 0)
    nodes[0].setblocking(False)
    try:
        nodes[0].send(huge)
    except BlockingIOError:
        pass
    assert rx.run(wake_r.fileno(), 0)[:2] == (_native.ACKS_EVENT_PYTHON, 0)
    assert rx.take_buffer(0)[:6] == huge[:6]


def test_eof_and_wake_up(rig):
    tracker, rx, nodes, wake_r, wake_w = rig
    wake_w.send(b"x")
    assert rx.run(wake_r.fileno(), 0)[0] == _native.ACKS_EVENT_WAKE
    wake_r.recv(10)
    nodes[1].close()
    assert rx.run(wake_r.fileno(), 0)[:3] == (_native.ACKS_EVENT_CLOSED, 1, 0)


def test_receiver_arguments_are_checked():
    tracker = _native.QuorumTracker(6, 4, 0)
    with pytest.raises(ValueError):
        _native.AckReceiver(0, tracker)
    with pytest.raises(ValueError):
        _native.AckReceiver(_native.ACKS_LINKS_MAX + 1, tracker)
    rx = _native.AckReceiver(2, tracker)
    with pytest.raises(ValueError):
        rx.set_link(2, -1)
    with pytest.raises(ValueError):
        rx.set_member(0, 0, _native.QUORUM_MEMBERS_MAX)
    with pytest.raises(ValueError):
        rx.run(-1, -1.0)
    assert rx.run(-1, 0)[0] == _native.ACKS_EVENT_TIMEOUT


def test_many_member_entries_grow_the_map():
    tracker = _native.QuorumTracker(6, 4, 0)
    rx = _native.AckReceiver(6, tracker)
    for pg in range(5000):
        for link in range(6):
            rx.set_member(link, pg, link)
    rx.clear_members()


# ---- the writer on both receive paths --------------------------------------------------------

@pytest.mark.process
@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_writer_commits_on_both_receive_paths(tmp_path, monkeypatch, native):
    import threading

    from aurora import writer
    from aurora.cluster import Cluster
    monkeypatch.setattr(writer, "NATIVE_ACKS", native)
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("paths", pages_per_pg=64)
        assert (volume.pump.acks is not None) == native
        expected = {}

        def worker(t):
            for i in range(40):
                page_no = t * 40 + i                  # 160 pages over three PGs
                data = bytes([t, i]) * 50
                volume.write(page_no, data, 0)
                lsn = volume.commit()
                assert volume.vdl >= lsn
                expected[page_no] = data

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        assert len(expected) == 160
        for page_no, data in expected.items():
            assert volume.read(page_no)[:100] == data
        assert all(link.connected for link in volume.links.values())
        volume.close()


@pytest.mark.process
def test_a_malformed_frame_from_a_node_drops_that_connection_and_commits_go_on(tmp_path):
    from aurora.cluster import Cluster
    from aurora.testing import wait_for
    with Cluster.local(str(tmp_path / "fleet"), log_file_bytes=1 << 20) as cluster:
        volume = cluster.open_volume("bad")
        volume.write(1, b"a" * 100)
        volume.commit()
        pump = volume.pump
        assert pump.acks is not None
        link = next(iter(volume.links.values()))
        old = link.sock
        # Inject a corrupt ACK as if the node had sent it: the receiver reads the duplicate
        # descriptor of the same connection, so push bytes through a socket pair spliced in.
        bad = bytearray(ack(0, 1))
        bad[50] ^= 1
        ours, theirs = socket.socketpair()
        with pump.cond:
            pump.registered[link] = ours
            pump.registered_version += 1
        link.sock = ours
        pump.wake_w.send(b"r")
        theirs.sendall(bytes(bad))
        wait_for(lambda: not link.connected or link.sock is not ours, "the link to drop", 10)
        assert isinstance(link.last_error, errors.ChecksumError)
        old.close()
        theirs.close()
        for i in range(20):                       # the other 5 members carry on; it reconnects
            volume.write(2, bytes([i]) * 100)
            volume.commit()
        wait_for(lambda: link.connected, "the link to reconnect", 30)
        volume.close()


def test_error_offsets_count_from_the_start_of_the_connection_across_python_hand_offs():
    tracker = _native.QuorumTracker(6, 4, 0)
    tracker.sent(0, [1, 2, 3])
    rx = _native.AckReceiver(1, tracker)
    ours, theirs = socket.socketpair()
    try:
        rx.set_link(0, ours.fileno())
        rx.set_member(0, 0, 0)
        theirs.sendall(ack(0, 2) + ok_frame())
        assert rx.run(-1, 0)[:2] == (_native.ACKS_EVENT_PYTHON, 0)
        assert rx.take_buffer(0) == ok_frame()
        rx.set_link(0, ours.fileno())             # the caller handled it: the same connection
        bad = bytearray(ack(0, 3))
        bad[60] ^= 0x10
        theirs.sendall(ack(0, 3) + bytes(bad))
        kind, link, code, offset = rx.run(-1, 0)
        assert (kind, link) == (_native.ACKS_EVENT_BAD, 0)
        assert offset == 64 + len(ok_frame()) + 64
        assert tracker.scl(0, 0) == 3
    finally:
        rx.set_link(0, -1)
        ours.close()
        theirs.close()

"""The node's native APPEND lane (aurora/_append_lane.pxi, driven by NodeServer._on_readable)
against the Python path it stands in for: for the same bytes received on a connection, split
across receives anywhere, the same replies in the same order, byte for byte, and the same log
files, index and pages -- over random sequences of inline and ring APPENDs mixed with other
requests, wrong epochs, duplicates, truncations, bad ring notices, unknown segments, big
batches, full log files and malformed frames.  Each decline reason is exercised, and shown to
hand its frame to the Python path."""
import collections
import contextlib
import os
import random
import socket

import pytest

from aurora import _native, protocol as p
from aurora.node.server import Connection, NodeServer
from aurora.ring import RING_HEADER, SharedRing
from aurora.testing import RedoWorkload

PAGE_SIZE = 1024
PAGES_PER_PG = 64
LOG_FILE_BYTES = 24 * 1024
VOLUME_ID = 1
RING_BYTES = 1 << 20


class FakeSocket:
    """The server's view of a connected socket: receives the chunks given, keeps what is sent."""
    family = socket.AF_UNIX

    def __init__(self):
        self.chunks = collections.deque()
        self.sent = bytearray()
        self.closed = False

    def recv_into(self, buffer):
        chunk = self.chunks.popleft()
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def send(self, data):
        self.sent += data
        return len(data)

    def fileno(self):
        return -1 if self.closed else 1 << 20

    def close(self):
        self.closed = True


class Harness:
    """One NodeServer (no loop, no background, no gossip) and one fake connection to it."""

    def __init__(self, directory, short_dir, name, append_lane):
        self.server = NodeServer(os.path.join(directory, name), "unix:%s/%s.sock" % (short_dir, name), "n1",
                                 "az1", LOG_FILE_BYTES, background=False, gossip=False, append_lane=append_lane)
        self.sock = FakeSocket()
        self.conn = Connection(self.sock, "test")
        self.server.connections[self.sock.fileno()] = self.conn

    def receive(self, chunk):
        if self.sock.closed:
            return
        self.sock.chunks.append(chunk)
        self.server._on_readable(self.conn)

    def commit(self):
        self.server._commit_round()

    def close(self):
        self.server.listener.close()
        self.server.group_commit.stop()
        with self.server.lock:
            self.server.core.close()
        os.unlink(self.server.address[5:])


def frame(type, body, request_id, volume_epoch=1, membership_epoch=0, volume_id=VOLUME_ID):
    return p.encode_frame(type, body, request_id, volume_id, volume_epoch, membership_epoch)


def split_frames(data):
    out = []
    position = 0
    while position < len(data):
        (length,) = p.struct.unpack_from("<I", data, position)
        out.append(p.decode_frame(bytes(data[position:position + length])))
        position += length
    return out


def segment_state(server):
    out = []
    for volume in server.core.volumes.values():
        for pg, segment in sorted(volume.segments.items()):
            files = [(log.seq, log.tail, bytes(log.mm[:log.tail]), list(log.lsns), log.max_lsn,
                      log.indexed_lsns.tolist(), log.indexed_pages.tolist()) for log in segment.files]
            out.append((pg, segment.scl, segment.max_lsn, dict(segment.records), dict(segment.page_chains),
                        dict(segment.successor), list(segment.sorted_lsns), sorted(segment._dirty_pages), files))
    return out


def pages(server, workload):
    segment = server.core.volumes[VOLUME_ID].segments[0]
    out = []
    for page_no in workload.page_numbers:
        for read_lsn in (segment.scl, max(segment.scl // 2, 0)):
            try:
                out.append((page_no, read_lsn, segment.get_page(page_no, read_lsn)))
            except Exception as exc:
                out.append((page_no, read_lsn, type(exc).__name__, str(exc)))
    return out


class Script:
    """A random request stream: the bytes, and the kinds of frames in it."""

    def __init__(self, seed, ring):
        self.rng = random.Random(seed)
        self.ring = ring
        self.workload = RedoWorkload(volume_id=VOLUME_ID, pg=0, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE,
                                     pages=8, seed=seed, volume_epoch=1, membership_epoch=0)
        self.request_id = 0
        self.sent = []        # batches sent, for duplicates
        self.frames = []
        self.kinds = collections.Counter()

    def next_id(self):
        self.request_id += 1
        return self.request_id

    def add(self, kind, data):
        self.kinds[kind] += 1
        self.frames.append(data)

    def setup(self):
        self.add("create", frame(p.FRAME_CREATE_SEGMENT, p.CREATE_SEGMENT_BODY.pack(0, PAGE_SIZE, PAGES_PER_PG),
                                 self.next_id()))
        body = p.RING_ATTACH_BODY.pack(self.ring.ring_id, self.ring.size) + self.ring.path.encode()
        self.add("attach", frame(p.FRAME_RING_ATTACH, body, self.next_id()))

    def append(self, batch, kind, volume_epoch=1, membership_epoch=0, ring=None, mangle=None):
        use_ring = self.rng.random() < 0.6 if ring is None else ring
        if use_ring:
            slot = self.ring.put(batch)
            ring_id, offset, length, crc = self.ring.ring_id, slot.offset, slot.length, slot.crc
            if mangle == "crc":
                crc ^= 1
            elif mangle == "ring_id":
                ring_id += 1
            elif mangle == "bounds":
                offset = self.ring.size - 64
            body = p.APPEND_RING_BODY.pack(ring_id, offset, length, crc)
            if mangle == "body":
                body += b"\0"
            self.add(kind + ("_ring" if mangle is None else "_ring_" + mangle),
                     frame(p.FRAME_APPEND_RING, body, self.next_id(), volume_epoch, membership_epoch))
        else:
            self.add(kind + "_inline", frame(p.FRAME_APPEND, batch, self.next_id(), volume_epoch, membership_epoch))

    def step(self):
        rng = self.rng
        w = self.workload
        roll = rng.random()
        if roll < 0.55 or not self.sent:
            batch = w.batch(w.records(rng.randint(1, 6)))
            self.sent.append(batch)
            self.append(batch, "append")
        elif roll < 0.62:
            self.append(rng.choice(self.sent), "duplicate")
        elif roll < 0.66:
            # Out of order: a later batch before an earlier one.
            first = w.batch(w.records(rng.randint(1, 3)))
            second = w.batch(w.records(rng.randint(1, 3)))
            self.sent += [first, second]
            self.append(second, "append")
            self.append(first, "append")
        elif roll < 0.69:
            batch = w.batch(w.records(1), volume_epoch=rng.choice((0, 2)))
            self.append(batch, "epoch")
        elif roll < 0.71:
            batch = w.batch(w.records(1), membership_epoch=1)
            self.append(batch, "membership")
        elif roll < 0.74:
            self.append(w.batch(w.records(1)), "ring", ring=True, mangle=rng.choice(("crc", "ring_id", "bounds", "body")))
        elif roll < 0.76:
            batch = w.batch(w.records(_native.SMALL_BATCH_RECORDS_MAX + 1))
            self.sent.append(batch)
            self.append(batch, "big")
        elif roll < 0.78:
            rows = w.records(1)
            rows[0]["page_no"] = PAGES_PER_PG + 3      # PG 1's page, in a batch of PG 0
            self.append(w.batch(rows), "foreign")
        elif roll < 0.80:
            other = RedoWorkload(volume_id=VOLUME_ID, pg=5, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE,
                                 seed=rng.randrange(1000), volume_epoch=1, membership_epoch=0)
            self.append(other.batch(other.records(1)), "unknown_segment")
        elif roll < 0.83:
            through = w.lsn
            after = max(0, through - rng.randint(1, 30))
            self.add("truncate", frame(p.FRAME_TRUNCATE, p.TRUNCATE_BODY.pack(0, 0, after, through), self.next_id()))
            w.truncate(after, through)
        elif roll < 0.87:
            self.add("gossip_scl", frame(p.FRAME_GOSSIP_SCL, p.SCL_BODY.pack(0, 0, 0), self.next_id()))
        elif roll < 0.90:
            self.add("list", frame(p.FRAME_LIST_RECORDS, p.LIST_RECORDS_BODY.pack(0, 16, 0), self.next_id()))
        elif roll < 0.93:
            self.add("hint", frame(p.FRAME_VOLUME_HINT, p.VOLUME_HINT_BODY.pack(w.lsn // 2), self.next_id()))
        elif roll < 0.945:
            # Page images: a batch over CRC32C_RELEASE_GIL_BYTES, checked without the GIL.
            rows = w.records(40)
            for row in rows:
                row["type"] = _native.REC_IMAGE
                row["payload"] = dict(w.history[row["page_no"]])[row["lsn"]]
            batch = w.batch(rows)
            assert len(batch) > 32 * 1024
            self.sent.append(batch)
            self.append(batch, "images")
        elif roll < 0.96:
            page_no = rng.choice(w.page_numbers)
            self.add("get_page", frame(p.FRAME_GET_PAGE, p.GET_PAGE_BODY.pack(0, page_no, 0), self.next_id()))
        else:
            self.add("not_a_request", frame(p.FRAME_ACK, p.ACK_BODY.pack(0, 0, 0, 0), self.next_id()))

    def malformed(self):
        data = bytearray(frame(p.FRAME_APPEND, self.workload.batch(self.workload.records(1)), self.next_id()))
        data[-1] ^= 0x40     # fails the frame CRC: the connection is answered once and closed
        self.add("malformed", bytes(data))


def chunks_of(data, rng):
    """``data`` cut at random places: frames split across receives, several in one."""
    out = []
    position = 0
    while position < len(data):
        size = rng.choice((1, 7, 40, 64, 100, 500, 3000, 1 << 16))
        out.append(data[position:position + size])
        position += size
    return out


def run_both(directory, short_dir, script, rng):
    data = b"".join(script.frames)
    chunks = chunks_of(data, rng)
    commits = [rng.random() < 0.4 for _ in chunks]
    # Some group commits fail (a full disk): every reply they held becomes an ERROR.
    failing = {i for i in range(len(chunks) + 1) if i % 7 == 3}
    results = []
    for name, lane in (("python", False), ("lane", True)):
        harness = Harness(directory, short_dir, name, lane)
        real_sync = harness.server.group_commit.sync
        calls = [0]

        def sync(fds, facts=(), real_sync=real_sync, calls=calls):
            calls[0] += 1
            if calls[0] in failing:
                return OSError(28, "No space left on device")
            return real_sync(fds, facts)

        harness.server.group_commit.sync = sync
        try:
            for chunk, commit in zip(chunks, commits):
                harness.receive(chunk)
                if commit:
                    harness.commit()
            harness.commit()
            results.append((bytes(harness.sock.sent), segment_state(harness.server),
                            pages(harness.server, script.workload),
                            harness.server.lane))
        finally:
            harness.close()
    return results


def run_seed(directory, short_dir, seed):
    """One random stream through both servers: (python results, lane results), each (bytes
    sent, segment state, pages, lane)."""
    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(seed, ring)
        script.setup()
        for _ in range(150):
            script.step()
        if seed % 3 == 0:
            script.malformed()
            script.step()     # after the connection is closed: never served
        return run_both(directory, short_dir, script, random.Random(seed * 7 + 1))
    finally:
        ring.close()


@pytest.mark.parametrize("seed", range(12))
def test_lane_and_python_path_give_the_same_replies_and_state(tmp_path, short_dir, seed):
    (python_sent, python_state, python_pages, _), (lane_sent, lane_state, lane_pages, lane) = run_seed(
        str(tmp_path), short_dir, seed)
    assert lane_sent == python_sent
    assert lane_state == python_state
    assert lane_pages == python_pages
    replies = split_frames(python_sent)
    if seed % 3:
        assert any(f.type == p.FRAME_ACK for f in replies)
    else:
        # The malformed frame closed the connection: its answer is the last thing sent (and
        # ACKs still waiting for a sync were dropped with the connection, as ever).
        assert replies[-1].type == p.FRAME_ERROR
        assert p.ERROR_BODY.unpack_from(replies[-1].body)[0] == p.ERROR_MALFORMED
    assert lane.served > 0


def test_the_random_streams_meet_every_decline_reason(tmp_path, short_dir):
    declined = collections.Counter()
    for seed in range(6):
        _, (_, _, _, lane) = run_seed(str(tmp_path / str(seed)), short_dir, seed)
        declined.update({k: v for k, v in lane.declined.items() if v})
    expected = {"frame", "ring", "big", "segment", "epoch", "check", "not_fresh", "log_file"}
    assert expected <= set(declined), declined


def _acks_and_errors(sent):
    return [(f.type, f.request_id) for f in split_frames(sent)]


def test_each_decline_hands_its_frame_to_python_in_order(tmp_path, short_dir):
    """One frame of each decline reason between good APPENDs, all in one receive: every good
    APPEND is acknowledged in request order after the sync, every declined frame gets the
    Python path's answer, and the lane says why it declined each."""
    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(99, ring)
        script.setup()
        w = script.workload
        harness = Harness(str(tmp_path), short_dir, "order", True)
        try:
            harness.receive(b"".join(script.frames))
            harness.commit()
            harness.sock.sent.clear()
            script.frames.clear()
            good = []

            def good_append(ring_use):
                script.append(w.batch(w.records(2)), "append", ring=ring_use)
                good.append(script.request_id)

            good_append(True)
            script.append(w.batch(w.records(1), volume_epoch=2), "epoch")           # epoch
            epoch_id = script.request_id
            good_append(False)
            script.append(w.batch(w.records(1)), "ring", ring=True, mangle="crc")   # ring
            ring_id = script.request_id
            good_append(True)
            script.append(w.batch(w.records(_native.SMALL_BATCH_RECORDS_MAX + 2)), "big")   # big
            good.append(script.request_id)
            good_append(False)
            script.frames.append(frame(p.FRAME_GOSSIP_SCL, p.SCL_BODY.pack(0, 0, 0), script.next_id()))  # frame
            scl_id = script.request_id
            good_append(True)
            harness.receive(b"".join(script.frames))
            before_sync = _acks_and_errors(harness.sock.sent)
            # Nothing durable yet: only the immediate answers have left, in request order.
            assert [rid for _, rid in before_sync] == [epoch_id, ring_id, scl_id]
            assert [t for t, _ in before_sync] == [p.FRAME_ERROR, p.FRAME_ERROR, p.FRAME_GOSSIP_SCL]
            harness.commit()
            after = _acks_and_errors(harness.sock.sent)[len(before_sync):]
            assert after == [(p.FRAME_ACK, rid) for rid in good]
            lane = harness.server.lane
            declined = {k for k, v in lane.declined.items() if v}
            assert {"epoch", "ring", "big", "frame"} <= declined
        finally:
            harness.close()
    finally:
        ring.close()


def test_malformed_frame_after_lane_frames_gets_the_clear_error_and_closes(tmp_path, short_dir):
    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(5, ring)
        script.setup()
        for _ in range(3):
            script.append(script.workload.batch(script.workload.records(1)), "append")
        script.malformed()
        script.append(script.workload.batch(script.workload.records(1)), "append")   # never served
        harness = Harness(str(tmp_path), short_dir, "bad", True)
        try:
            harness.receive(b"".join(script.frames))
            replies = split_frames(harness.sock.sent)
            assert replies[-1].type == p.FRAME_ERROR
            code, _ = p.ERROR_BODY.unpack_from(replies[-1].body)
            assert code == p.ERROR_MALFORMED
            assert b"CRC" in bytes(replies[-1].body)
            assert harness.sock.closed
            # The first APPEND makes the segment's first log file: the Python path's work.
            assert harness.server.lane.declined["log_file"] == 1
            assert harness.server.lane.served == 2
            assert harness.server.lane.declined["frame"] == 3     # CREATE_SEGMENT, RING_ATTACH, the bad one
            segment = harness.server.core.volumes[VOLUME_ID].segments[0]
            assert len(segment.records) == 3
        finally:
            harness.close()
    finally:
        ring.close()


def test_frame_constants_match_the_protocol():
    # csrc/frame.h repeats these for the lane and the writer's boxcars (csrc/boxcar.h).
    assert _native.FRAME_TYPE_APPEND == p.FRAME_APPEND
    assert _native.FRAME_TYPE_APPEND_RING == p.FRAME_APPEND_RING
    assert _native.FRAME_APPEND_RING_BODY_BYTES == p.APPEND_RING_BODY.size
    assert _native.RING_HEADER_BYTES == RING_HEADER.size


def serve_on_both(directory, short_dir, prefix, rest, around_rest):
    """Serve ``prefix`` and then ``rest``, each followed by a group commit, on a server
    without the lane and on one with it; ``around_rest(harness)`` is a context manager
    wrapped around the second part.  [(replies sent, segment state)] for the two."""
    results = []
    for name, lane in (("python", False), ("lane", True)):
        harness = Harness(directory, short_dir, name, lane)
        try:
            harness.receive(prefix)
            harness.commit()
            with around_rest(harness):
                harness.receive(rest)
                harness.commit()
            results.append((bytes(harness.sock.sent), segment_state(harness.server)))
        finally:
            harness.close()
    return results


def test_a_failed_write_is_left_to_the_python_path_and_its_error(tmp_path, short_dir):
    """A pwrite that fails (here: the log file's descriptor swapped for a read-only one) is
    declined before anything changes; the Python path then meets the same failure and answers
    as it always did, for either server."""

    @contextlib.contextmanager
    def read_only_log(harness):
        log = harness.server.core.volumes[VOLUME_ID].segments[0].files[-1]
        read_only = os.open(log.path, os.O_RDONLY)
        writable, log.fd = log.fd, read_only
        try:
            tail = log.tail
            yield
            assert log.tail == tail
        finally:
            log.fd = writable
            os.close(read_only)
        if harness.server.lane is not None:
            assert harness.server.lane.declined["write"] == 1

    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(8, ring)
        script.setup()
        for _ in range(4):
            script.append(script.workload.batch(script.workload.records(2)), "append")
        prefix = b"".join(script.frames)
        script.frames.clear()
        script.append(script.workload.batch(script.workload.records(2)), "append", ring=False)
        script.append(script.workload.batch(script.workload.records(2)), "append", ring=True)
        results = serve_on_both(str(tmp_path), short_dir, prefix, b"".join(script.frames), read_only_log)
    finally:
        ring.close()
    assert results[0] == results[1]
    last = split_frames(results[0][0])[-1]
    assert last.type == p.FRAME_ERROR
    assert p.ERROR_BODY.unpack_from(last.body)[0] == p.ERROR_INTERNAL


def test_a_closing_connection_is_served_as_the_python_path_serves_it(tmp_path, short_dir):
    """Bytes that arrive on a connection already closing (its output not yet drained) get the
    Python path's treatment, one frame and no more, with or without the lane."""

    @contextlib.contextmanager
    def closing(harness):
        harness.conn.closing = True
        yield
        assert len(harness.server.core.volumes[VOLUME_ID].segments[0].records) == 4

    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(3, ring)
        script.setup()
        for _ in range(3):
            script.append(script.workload.batch(script.workload.records(1)), "append")
        prefix = b"".join(script.frames)
        script.frames.clear()
        for _ in range(3):
            script.append(script.workload.batch(script.workload.records(1)), "append")
        results = serve_on_both(str(tmp_path), short_dir, prefix, b"".join(script.frames), closing)
    finally:
        ring.close()
    assert results[0] == results[1]


def test_an_internal_error_in_the_lane_closes_the_connection_without_serving_again(tmp_path, short_dir,
                                                                                   monkeypatch):
    """A bug in the lane (here: its indexing raising) is answered with an INTERNAL error and
    the connection closed, as a bug in the Python path is; the frame it failed on is not
    handed to the Python path to be served a second time."""
    ring = SharedRing(RING_BYTES, directory=short_dir)
    try:
        script = Script(4, ring)
        script.setup()
        script.append(script.workload.batch(script.workload.records(1)), "append")
        prefix = b"".join(script.frames)
        script.frames.clear()
        for _ in range(3):
            script.append(script.workload.batch(script.workload.records(1)), "append")
        harness = Harness(str(tmp_path), short_dir, "bug", True)
        try:
            harness.receive(prefix)
            harness.commit()
            harness.sock.sent.clear()
            segment = harness.server.core.volumes[VOLUME_ID].segments[0]
            records = len(segment.records)
            monkeypatch.setattr(segment, "page_chains", None)   # the index raises on it
            harness.receive(b"".join(script.frames))
            monkeypatch.undo()
            replies = split_frames(harness.sock.sent)
            assert [f.type for f in replies] == [p.FRAME_ERROR]
            assert p.ERROR_BODY.unpack_from(replies[0].body)[0] == p.ERROR_INTERNAL
            assert harness.sock.closed
            assert len(segment.records) <= records + 1
        finally:
            harness.close()
    finally:
        ring.close()

"""CPU of one storage-node APPEND round, in process, with and without the native APPEND lane.

    PYTHONPATH=. python tools/node_round_cpu.py [ROUNDS=3000] [PAIRS=3]

One round is what a node's loop does for a commit boxcar: an APPEND_RING notice naming a
9-record (~2.5 KB) batch is received on a Unix socket, served, its log file fdatasynced and the
ACK sent (NodeServer._on_readable + NodeServer._commit_round).  The loop thread's CPU time
(time.thread_time: user + system, the fdatasync's kernel work included) is taken per chunk of
rounds; the median chunk is printed per build, alternating a server with the lane and one
without (the Python path), so the host's load moves both alike.  Everything it makes lives in
a temporary directory that is removed.
"""
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

from aurora import protocol as p
from aurora.node.server import NodeServer
from aurora.ring import SharedRing
from aurora.testing import RedoWorkload

PAGE_SIZE = 4096
PAGES_PER_PG = 4096
RECORDS_PER_BATCH = 9
CHUNK_ROUNDS = 300


def frame(type, body, request_id, volume_epoch=1):
    return p.encode_frame(type, body, request_id, 1, volume_epoch, 0)


def measure(directory, append_lane, rounds):
    path = tempfile.mkdtemp(prefix="r-", dir=directory)
    server = NodeServer(os.path.join(path, "data"), "unix:%s/n.sock" % path, "n1", "az1",
                        background=False, gossip=False, append_lane=append_lane)
    # Small, so it wraps soon and its pages stay mapped, as a long-lived writer's ring does.
    ring = SharedRing(256 * 1024, directory=path)
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(server.address[5:])
        server._accept()
        (conn,) = server.connections.values()

        def request(data):
            client.sendall(data)
            server._on_readable(conn)
            server._commit_round()

        def drain():
            client.setblocking(False)
            try:
                while client.recv(1 << 16):
                    pass
            except BlockingIOError:
                pass
            client.setblocking(True)

        request(frame(p.FRAME_CREATE_SEGMENT, p.CREATE_SEGMENT_BODY.pack(0, PAGE_SIZE, PAGES_PER_PG), 1))
        request(frame(p.FRAME_RING_ATTACH, p.RING_ATTACH_BODY.pack(ring.ring_id, ring.size) + ring.path.encode(), 2))
        workload = RedoWorkload(volume_id=1, pg=0, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE, pages=64,
                                seed=1, volume_epoch=1, membership_epoch=0)
        batches = [workload.batch(workload.records(RECORDS_PER_BATCH, mtr_size_max=1)) for _ in range(rounds)]
        drain()
        chunks = []
        request_id = 3
        for start in range(0, rounds, CHUNK_ROUNDS):
            spent = 0.0
            for batch in batches[start:start + CHUNK_ROUNDS]:
                slot = ring.put(batch)
                request_id += 1
                client.sendall(frame(p.FRAME_APPEND_RING, p.APPEND_RING_BODY.pack(
                    ring.ring_id, slot.offset, slot.length, slot.crc), request_id))
                began = time.thread_time()
                server._on_readable(conn)
                server._commit_round()
                spent += time.thread_time() - began
                reply = p.decode_frame(client.recv(1 << 16))
                if reply.type != p.FRAME_ACK:
                    raise RuntimeError("expected an ACK, got %r" % reply)
                ring.release(slot)
            chunks.append(spent / CHUNK_ROUNDS)
        served = server.lane.served if server.lane is not None else 0
        return statistics.median(chunks), served
    finally:
        client.close()
        server.listener.close()
        server.group_commit.stop()
        with server.lock:
            server.core.close()
        ring.close()
        shutil.rmtree(path, ignore_errors=True)


def main(rounds=3000, pairs=3):
    directory = tempfile.mkdtemp(prefix="aur-round-cpu-")
    try:
        for pair in range(pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            for lane in order:
                median, served = measure(directory, lane, rounds)
                print("%-11s %6.1f us CPU per round (median of %d-round chunks; lane served %d)"
                      % ("lane" if lane else "python path", median * 1e6, CHUNK_ROUNDS, served), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

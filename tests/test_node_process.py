"""A real `aurora node serve` process: appends, GetPage@LSN, SIGKILL, bad input, epochs."""
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from aurora import _native, errors, protocol as p
from aurora.client import NodeClient
from aurora.node.process import NodeProcess
from aurora.testing import RedoWorkload

pytestmark = pytest.mark.process

PAGE_SIZE = 4096
PAGES_PER_PG = 64
LOG_FILE_BYTES = 256 * 1024


@pytest.fixture(params=["unix", "tcp"])
def node(request, tmp_path, short_dir):
    if request.param == "unix":
        address = "unix:%s/node.sock" % short_dir
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = "tcp:127.0.0.1:%d" % port
    proc = NodeProcess(str(tmp_path / "data"), address, "n1", "az1", LOG_FILE_BYTES,
                       log_path=str(tmp_path / "node.log"))
    proc.start()
    yield proc
    proc.stop()


def client_for(node, **epochs):
    return NodeClient(node.address, volume_id=1, volume_epoch=epochs.get("volume_epoch", 1),
                      membership_epoch=epochs.get("membership_epoch", 0))


def setup_segment(client, pg=0):
    return client.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)


def test_unix_socket_is_private(tmp_path, short_dir):
    socket_dir = os.path.join(short_dir, "private")
    proc = NodeProcess(str(tmp_path / "data"), "unix:%s/node.sock" % socket_dir, "n1", "az1",
                       LOG_FILE_BYTES, log_path=str(tmp_path / "node.log")).start()
    try:
        assert os.stat(socket_dir + "/node.sock").st_mode & 0o777 == 0o600
        assert os.stat(socket_dir).st_mode & 0o777 == 0o700
    finally:
        proc.stop()


def test_out_of_order_duplicate_appends_and_get_page_at_many_read_points(node):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=6, seed=21)
    batches = [workload.batch(workload.records(4)) for _ in range(10)]
    last_lsns = [_native.decode_batch(b)[0].last_lsn for b in batches]
    with client_for(node) as client:
        setup_segment(client)
        order = [1, 0, 0, 2, 5, 3, 4, 4, 9, 6, 7, 8, 1]
        seen = set()
        for index in order:
            pg, scl, last = client.append(batches[index])
            seen.add(index)
            contiguous = 0
            while contiguous in seen:
                contiguous += 1
            assert scl == (last_lsns[contiguous - 1] if contiguous else 0)
            assert last == last_lsns[index]
        for lsn in range(1, workload.lsn + 1, 3):
            for page_no in workload.page_numbers:
                page, page_lsn = client.get_page(0, page_no, lsn)
                assert page == workload.page_at(page_no, lsn)
                assert page_lsn == workload.page_lsn_at(page_no, lsn)
        with pytest.raises(p.ReadPointError):
            client.get_page(0, workload.page_numbers[0], workload.lsn + 1)


def test_pipelined_listings_answer_each_pg_or_name_its_error(node):
    """Recovery asks a member about all its PGs on one connection, pipelined: each answer is
    the one a lone LIST_RECORDS gives, and a PG the node lacks is an error of its own that
    leaves the others answered."""
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=6, seed=26)
    with client_for(node) as client:
        setup_segment(client)
        for _ in range(5):
            client.append(workload.batch(workload.records(4)))
        asks = [(0, 0, 7), (99, 0, 7), (0, 10, 100), (0, 0, 0)] * 40
        answers = client.list_records_many(asks, window=16)
        assert len(answers) == len(asks)
        for (pg, after, count), answer in zip(asks, answers):
            if pg == 99:
                assert isinstance(answer, p.UnknownSegmentError)
            else:
                assert answer == client.list_records(pg, after, count)
        lsns = [e[0] for e in answers[0][3]]
        assert len(lsns) == 7 and lsns == sorted(lsns)


def test_sigkill_mid_stream_loses_no_acknowledged_record(node, tmp_path):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=16, seed=22)
    batches = [workload.batch(workload.records(8)) for _ in range(400)]
    acked = []
    with client_for(node) as client:
        setup_segment(client)

    def stream():
        try:
            with client_for(node) as c:
                for batch in batches:
                    acked.append(c.append(batch)[1])
        except (OSError, ConnectionError, errors.AuroraError):
            pass

    thread = threading.Thread(target=stream)
    thread.start()
    while len(acked) < 50 and thread.is_alive():
        time.sleep(0.001)
    node.kill()
    thread.join()
    assert 50 <= len(acked) < len(batches), "the kill must land mid-stream"
    acked_scl = max(acked)
    node.start()
    with client_for(node) as client:
        status = client.status()
        segment = status["segments"][0]
        assert segment["scl"] >= acked_scl
        assert not segment["needs_repair"], segment["corruption"]
        # Nothing is reported beyond what is really stored: every read up to SCL is right.
        for lsn in (acked_scl // 2, acked_scl, segment["scl"]):
            for page_no in workload.page_numbers:
                page, _ = client.get_page(0, page_no, lsn)
                assert page == workload.page_at(page_no, lsn)


def test_epochs_fence_stale_writers(node):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=23)
    with client_for(node) as client:
        setup_segment(client)
        client.append(workload.batch(workload.records(3)))
        client.set_epoch(2)
        with pytest.raises(p.StaleEpochError, match="epoch 1 refused"):
            client.append(workload.batch(workload.records(3)))
        with pytest.raises(p.EpochAheadError):
            client.append(workload.batch(workload.records(3), volume_epoch=3))
        with pytest.raises(p.StaleEpochError):
            client.set_epoch(1)
        # The connection is still good after refusals.
        assert client.status()["volumes"]["1"]["volume_epoch"] == 2


def test_set_epoch_truncates_before_taking_the_new_epoch(node):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=24)
    with client_for(node) as client:
        setup_segment(client)
        kept = workload.records(5)
        client.append(workload.batch(kept))
        client.append(workload.batch(workload.records(5)))
        vdl = kept[-1]["lsn"]
        client.set_epoch(2, truncations=[(0, vdl, vdl + 10_000)])
        assert client.status()["segments"][0]["scl"] == vdl
    node.restart()
    with client_for(node, volume_epoch=2) as client:
        segment = client.status()["segments"][0]
        assert segment["scl"] == vdl and segment["max_lsn"] == vdl


DATA_FIELDS = ("volume_id", "pg", "scl", "max_lsn", "records", "log_bytes", "holes", "needs_repair",
               "corruption", "membership_epoch", "truncations", "lwm")


def data_state(client):
    """What bad input must not change (background counters such as scrub progress may)."""
    return [{k: seg.get(k) for k in DATA_FIELDS} for seg in client.status()["segments"]]


def random_frames(rng, count):
    valid = p.encode_frame(p.FRAME_STATUS, b"", 1, 1, 1, 0)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3:
            yield rng.randbytes(rng.randint(1, 200))
        elif kind < 0.6:
            frame = bytearray(valid + rng.randbytes(rng.randint(0, 64)))
            struct.pack_into("<I", frame, 0, len(frame))
            frame[rng.randrange(4, len(frame))] ^= 1 << rng.randrange(8)
            yield bytes(frame)
        elif kind < 0.8:
            # A well-formed frame around a garbage batch: the CRC is right, the body is not.
            yield p.encode_frame(p.FRAME_APPEND, rng.randbytes(rng.randint(0, 300)), 1, 1, 1, 0)
        else:
            yield struct.pack("<I", rng.choice([0, 3, 39, 0xFFFFFFFF, 1 << 30])) + rng.randbytes(40)


def test_random_and_mutated_frames_get_errors_and_change_nothing(node):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=25)
    with client_for(node) as client:
        setup_segment(client)
        client.append(workload.batch(workload.records(20)))
        before = data_state(client)
        pages_before = [client.get_page(0, n, workload.lsn) for n in workload.page_numbers]
    rng = random.Random(26)
    errors_seen = 0
    family, sockaddr = __import__("aurora.node.server", fromlist=["parse_address"]).parse_address(node.address)
    for data in random_frames(rng, 150):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(sockaddr)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        if reply:
            frame = p.decode_frame(reply[:struct.unpack_from("<I", reply)[0]])
            assert frame.type == p.FRAME_ERROR
            errors_seen += 1
    assert errors_seen > 50
    assert node.alive()
    with client_for(node) as client:
        assert data_state(client) == before
        assert [client.get_page(0, n, workload.lsn) for n in workload.page_numbers] == pages_before


def test_status_command_prints_segments(node):
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=27)
    with client_for(node) as client:
        setup_segment(client)
        client.append(workload.batch(workload.records(5)))
    from aurora.node.process import _package_root
    env = dict(os.environ, PYTHONPATH=_package_root())
    out = subprocess.run([sys.executable, "-m", "aurora.cli", "node", "status", "--connect", node.address],
                         check=True, capture_output=True, text=True, cwd="/", env=env).stdout
    assert "node n1  az az1" in out
    assert "SCL" in out and str(workload.lsn) in out


PARENT_SCRIPT = r"""
import sys, time
from aurora.node.process import NodeProcess
proc = NodeProcess(sys.argv[1], sys.argv[2], "orphan", "az1").start()
print(proc.pid, flush=True)
time.sleep(600)
"""


def test_a_node_stops_when_the_process_that_started_it_dies(tmp_path, short_dir):
    from aurora.node.process import _package_root
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    address = "unix:%s/orphan.sock" % short_dir
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), address],
                              stdout=subprocess.PIPE, text=True, cwd=str(tmp_path),
                              env=dict(os.environ, PYTHONPATH=_package_root()))
    node_pid = int(parent.stdout.readline())
    parent.stdout.close()
    parent.kill()
    parent.wait()
    # The node notices within a second and stops cleanly, or exits after an 8 s grace period
    # (server.ORPHAN_STOP_GRACE_S); the rest of the window is for a loaded host.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(node_pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(node_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.kill(node_pid, 9)
        raise AssertionError("the orphaned node %d kept running" % node_pid)

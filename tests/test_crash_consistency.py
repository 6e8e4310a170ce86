"""Crash consistency of a node's files: SIGKILL plus a simulated power loss.

A SIGKILL alone loses nothing the kernel holds: the page cache survives the process.  A power
loss also drops every byte that no fsync/fdatasync/msync made durable.  To simulate one (in the
spirit of LazyFS and SQLite's crash VFS) the node runs in a test mode,
``AURORA_NODE_SYNC_JOURNAL=<path>``: after every successful group-commit fdatasync it appends
the (log file, length) facts that sync made durable, and after every page-store sync it keeps a
copy of the page file as synced.  After the kill, ``power_loss`` rewrites every byte beyond those
facts — truncated away, zeroed, replaced by garbage, or torn (each 512-byte sector independently
kept, reverted, zeroed or garbage) — and the node restarts from what is left.

The checks: every ACK the test received is covered (the segment's SCL is at least the highest
acknowledged SCL) and every GET_PAGE at every read point up to SCL returns exactly the reference
model's bytes; nothing is ever served wrong.
"""
import json
import os
import random
import threading
import time

import pytest

from aurora import errors, protocol as p
from aurora.client import NodeClient
from aurora.node.pagestore import FILE_HEADER_SIZE as PAGE_FILE_HEADER_SIZE, synced_copy_path
from aurora.node.process import NodeProcess
from aurora.node.segment import LOG_HEADER_SIZE
from aurora.ring import RING_BYTES_MIN, SharedRing
from aurora.testing import RedoWorkload

pytestmark = pytest.mark.process

PAGE_SIZE = 4096
PAGES_PER_PG = 64
LOG_FILE_BYTES = 64 * 1024       # small log files: several per cycle, so file rollover is crashed too
SECTOR_BYTES = 512
BATCHES_PER_CYCLE = 120
RECORDS_PER_BATCH = 4
MODES = ("truncate", "zero", "garbage", "torn")


def synced_lengths(journal):
    """Log path -> the highest length a sync made durable, from the journal."""
    lengths = {}
    if os.path.exists(journal):
        with open(journal) as f:
            for line in f:
                if line.strip():
                    fact = json.loads(line)
                    lengths[fact["path"]] = max(lengths.get(fact["path"], 0), fact["length"])
    return lengths


def _unsynced_sector(rng, mode, new, old):
    """What a power loss leaves of one sector whose newest bytes were never synced."""
    if mode == "zero":
        return bytes(len(new))
    if mode == "garbage":
        return rng.randbytes(len(new))
    choice = rng.randrange(4)          # torn: every sector on its own
    if choice == 0:
        return new
    if choice == 1 and old is not None:
        return old
    if choice == 2:
        return bytes(len(new))
    return rng.randbytes(len(new))


def power_loss(data_dir, journal, rng, mode):
    """Drop every byte of every log and page file that no sync covered.  Returns bytes changed."""
    lengths = synced_lengths(journal)
    changed = 0
    for root, _, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            if name.startswith("log-") and name.endswith(".aur"):
                # A log file's header is fsync'd when the file is created.
                synced = max(lengths.get(os.path.abspath(path), 0), LOG_HEADER_SIZE)
                with open(path, "r+b") as f:
                    data = f.read()
                    if mode == "truncate":
                        f.truncate(synced)
                        changed += len(data) - synced
                        continue
                    out = bytearray(data[:synced])
                    for start in range(synced, len(data), SECTOR_BYTES):
                        out += _unsynced_sector(rng, mode, data[start:start + SECTOR_BYTES], None)
                    f.seek(0)
                    f.write(out)
                    changed += sum(a != b for a, b in zip(data[synced:], out[synced:]))
            elif name == "pages.aur":
                copy = synced_copy_path(journal, path)
                with open(path, "r+b") as f:
                    data = f.read()
                    # Created with its header and zero slots, fsync'd; the header is never rewritten.
                    old = data[:PAGE_FILE_HEADER_SIZE] + bytes(len(data) - PAGE_FILE_HEADER_SIZE)
                    if os.path.exists(copy):
                        with open(copy, "rb") as synced_copy:
                            old = synced_copy.read()
                    out = bytearray()
                    for start in range(0, len(data), SECTOR_BYTES):
                        new = data[start:start + SECTOR_BYTES]
                        before = old[start:start + SECTOR_BYTES] if start < len(old) else None
                        if before == new:
                            out += new
                        else:
                            out += _unsynced_sector(rng, "torn" if mode == "truncate" else mode,
                                                    new, before if before and len(before) == len(new) else None)
                    out[:PAGE_FILE_HEADER_SIZE] = data[:PAGE_FILE_HEADER_SIZE]
                    f.seek(0)
                    f.write(out)
                    changed += sum(a != b for a, b in zip(data, out))
    return changed


class Streamer:
    """Pipelines APPENDs on one connection and records every ACK, until the node dies.  With
    ``ring``, every batch goes through a shared-memory ring (APPEND_RING notices), as the
    writer sends to same-host nodes: an ACK for a ring slot must be as durable as any."""

    def __init__(self, address, batches, ring=False):
        self.acks = []                 # (scl, last_lsn)
        self.client = NodeClient(address, volume_id=1, volume_epoch=1)
        self.batches = batches
        self.ring = None
        if ring:
            # Big enough that no slot is reused while this stream lasts.
            self.ring = SharedRing(max(RING_BYTES_MIN, 2 * sum(len(b) for b in batches)))
            body = p.RING_ATTACH_BODY.pack(self.ring.ring_id, self.ring.size) + self.ring.path.encode()
            self.client.request(p.FRAME_RING_ATTACH, body, p.FRAME_OK)
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.receiver = threading.Thread(target=self._receive, daemon=True)

    def start(self):
        self.sender.start()
        self.receiver.start()
        return self

    def _send(self):
        try:
            for batch in self.batches:
                if self.ring is None:
                    self.client.send(p.FRAME_APPEND, batch)
                    continue
                slot = self.ring.put(batch)
                self.client.send(p.FRAME_APPEND_RING, p.APPEND_RING_BODY.pack(
                    self.ring.ring_id, slot.offset, slot.length, slot.crc))
        except OSError:
            pass

    def _receive(self):
        try:
            for _ in self.batches:
                frame = self.client.receive()
                _, _, scl, last = p.ACK_BODY.unpack_from(frame.body)
                self.acks.append((scl, last))
        except (OSError, ConnectionError, errors.AuroraError):
            pass

    def join(self):
        self.sender.join(10)
        self.receiver.join(10)
        self.client.close()
        if self.ring is not None:
            self.ring.close()


def check_node(address, workload, acked_scl, rng):
    """Every acknowledged record is there; every read up to SCL is the model's page."""
    with NodeClient(address, volume_id=1, volume_epoch=1) as client:
        segment = client.status()["segments"][0]
        scl = segment["scl"]
        assert scl >= acked_scl, "acknowledged SCL %d lost: node restarted at SCL %d (%s)" % (
            acked_scl, scl, segment["corruption"])
        lsns = sorted({lsn for history in workload.history.values() for lsn, _ in history if lsn <= scl})
        points = sorted(set(rng.sample(lsns, min(40, len(lsns))) + lsns[-3:])) if lsns else []
        for lsn in points:
            for page_no in workload.page_numbers:
                page, page_lsn = client.get_page(0, page_no, lsn)
                assert page == workload.page_at(page_no, lsn), "wrong bytes: page %d at LSN %d" % (page_no, lsn)
                assert page_lsn == workload.page_lsn_at(page_no, lsn)
        return scl, segment


def run_power_loss_cycles(tmp_path, short_dir, monkeypatch, seed, cycles, modes, process_crash_first=False, ring=False):
    rng = random.Random(seed)
    print("crash-consistency seed", seed)
    journal = str(tmp_path / "sync.journal")
    monkeypatch.setenv("AURORA_NODE_SYNC_JOURNAL", journal)
    address = "unix:%s/node.sock" % short_dir
    data_dir = str(tmp_path / "data")
    node = NodeProcess(data_dir, address, "n1", "az1", LOG_FILE_BYTES, log_path=str(tmp_path / "node.log"))
    node.start()
    workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, pages=12, seed=seed)
    batches = []                       # (last LSN, batch), every one ever made
    acked_scl = 0
    scl = 0
    summary = []
    try:
        with NodeClient(address, volume_id=1, volume_epoch=1) as client:
            client.create_segment(0, PAGE_SIZE, PAGES_PER_PG)
        for cycle in range(cycles):
            for _ in range(BATCHES_PER_CYCLE):
                batch = workload.batch(workload.records(RECORDS_PER_BATCH))
                batches.append((workload.lsn, batch))
            # Like a writer, send again everything the node may have lost (duplicates are idempotent).
            todo = [b for last, b in batches if last > scl]
            stream = Streamer(address, todo, ring).start()
            want = rng.randint(5, max(6, len(todo) // 2))
            deadline = time.monotonic() + 20
            while len(stream.acks) < want and stream.receiver.is_alive() and time.monotonic() < deadline:
                time.sleep(0.0005)
            if process_crash_first and cycle % 2 == 1:
                # A plain crash first: unsynced bytes survive in the page cache and the restart
                # reads them; the power loss comes on the next kill.
                node.kill()
                stream.join()
                acked_scl = max([acked_scl] + [a[0] for a in stream.acks])
                node.start()
                stream = Streamer(address, [b for last, b in batches if last > acked_scl], ring).start()
                while len(stream.acks) < 3 and stream.receiver.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.0005)
            node.kill()
            stream.join()
            acked_scl = max([acked_scl] + [a[0] for a in stream.acks])
            mode = modes[cycle % len(modes)]
            changed = power_loss(data_dir, journal, rng, mode)
            node.start()
            scl, segment = check_node(address, workload, acked_scl, rng)
            summary.append((mode, len(stream.acks), acked_scl, scl, changed, segment["needs_repair"]))
        print("cycles (mode, acks, acked SCL, SCL after restart, bytes changed, needs_repair):", summary)
        return summary
    finally:
        node.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_power_loss_after_sigkill_loses_no_acknowledged_record(tmp_path, short_dir, monkeypatch, seed):
    summary = run_power_loss_cycles(tmp_path, short_dir, monkeypatch, seed, cycles=4, modes=MODES)
    assert any(changed for *_, changed, _ in summary), "the power loss must have dropped something"


def test_power_loss_loses_no_record_acknowledged_from_the_ring(tmp_path, short_dir, monkeypatch):
    summary = run_power_loss_cycles(tmp_path, short_dir, monkeypatch, 5, cycles=4, modes=MODES, ring=True)
    assert any(changed for *_, changed, _ in summary), "the power loss must have dropped something"
    assert sum(acks for _, acks, *_ in summary) > 0


def test_crash_then_restart_then_power_loss(tmp_path, short_dir, monkeypatch):
    """Bytes a crashed node left unsynced in the page cache are read back on restart; the node
    must make them durable before it acknowledges anything that counts on them."""
    run_power_loss_cycles(tmp_path, short_dir, monkeypatch, 3, cycles=4, modes=("torn", "garbage"),
                          process_crash_first=True)


def test_journal_is_off_and_absent_without_the_variable(tmp_path, short_dir, monkeypatch):
    monkeypatch.delenv("AURORA_NODE_SYNC_JOURNAL", raising=False)
    address = "unix:%s/node.sock" % short_dir
    node = NodeProcess(str(tmp_path / "data"), address, "n1", "az1", LOG_FILE_BYTES,
                       log_path=str(tmp_path / "node.log")).start()
    try:
        workload = RedoWorkload(page_size=PAGE_SIZE, pages_per_pg=PAGES_PER_PG, seed=4)
        with NodeClient(address, volume_id=1, volume_epoch=1) as client:
            client.create_segment(0, PAGE_SIZE, PAGES_PER_PG)
            client.append(workload.batch(workload.records(4)))
    finally:
        node.stop()
    assert not [n for n in os.listdir(tmp_path) if "journal" in n]


@pytest.mark.slow
def test_power_loss_soak(tmp_path, short_dir, monkeypatch):
    seed = int(os.environ.get("AURORA_CRASH_SEED", random.randrange(1 << 30)))
    run_power_loss_cycles(tmp_path, short_dir, monkeypatch, seed, cycles=30, modes=MODES, process_crash_first=True)

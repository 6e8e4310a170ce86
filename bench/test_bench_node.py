"""Storage-node benchmarks (issue 3).

    pytest bench/test_bench_node.py --benchmark-json=bench/results/node.json

* ingest: records/s and MB/s acknowledged with group commit, 1, 4 and 16 concurrent senders,
  against a loop of plain fdatasync on the same disk (the floor: one sync per batch);
* GetPage@LSN latency over a Unix socket, materialized pages and pages with a 10-record chain
  (p50/p99 from per-request timings, in extra_info);
* materialization (records/s) and restart scan (MB/s), in process.
"""
import os
import shutil
import statistics
import tempfile
import threading
import time

import pytest

from aurora import _native
from aurora.client import NodeClient
from aurora.node.process import NodeProcess
from aurora.node.segment import Segment
from aurora.testing import RedoWorkload

PAGE_SIZE = 4096
PAGES_PER_PG = 1 << 16
RECORDS_PER_BATCH = 16
BATCHES_PER_SENDER = 200


@pytest.fixture
def scratch():
    """A short-named scratch directory (a node's socket path must stay short), removed after
    the test with everything in it."""
    path = tempfile.mkdtemp(prefix="aur-bench-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def node():
    directory = tempfile.mkdtemp(prefix="aur-bench-")
    proc = NodeProcess(os.path.join(directory, "data"), "unix:%s/node.sock" % directory, "bench", "az1",
                       log_file_bytes=64 << 20)
    proc.start()
    yield proc
    proc.stop()
    shutil.rmtree(directory, ignore_errors=True)


def make_batches(pg, count, seed):
    workload = RedoWorkload(volume_id=1, pg=pg, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE,
                            pages=256, seed=seed)
    return [workload.batch(workload.records(RECORDS_PER_BATCH)) for _ in range(count)]


@pytest.mark.parametrize("senders", [1, 4, 16])
def test_ingest_group_commit(benchmark, node, senders):
    """``senders`` connections stream one PG's batches concurrently, each sending a batch and
    waiting for its ACK before the next (as committers do); their batches share fsyncs."""
    pg = senders
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        client.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)
    batches = make_batches(pg, BATCHES_PER_SENDER * senders, seed=senders)
    work = [batches[s::senders] for s in range(senders)]
    total_bytes = sum(len(b) for b in batches)

    def run():
        def sender(share):
            with NodeClient(node.address, volume_id=1, volume_epoch=1) as c:
                for batch in share:
                    c.append(batch)
        threads = [threading.Thread(target=sender, args=(share,)) for share in work]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    benchmark.group = "node ingest"
    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = benchmark.stats.stats.median
    records = senders * BATCHES_PER_SENDER * RECORDS_PER_BATCH
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        assert client.status_segment(pg)["scl"] == _native.decode_batch(batches[-1])[0].last_lsn
    benchmark.extra_info.update(records_per_s=records / seconds, mb_per_s=total_bytes / seconds / 1e6,
                                acks_per_s=senders * BATCHES_PER_SENDER / seconds)


def test_fdatasync_floor(benchmark, scratch):
    """One 4 KiB write + fdatasync per batch: what a node without group commit could do."""
    fd = os.open(os.path.join(scratch, "floor"), os.O_RDWR | os.O_CREAT, 0o600)
    block = os.urandom(RECORDS_PER_BATCH * 100)
    offset = [0]

    def one():
        os.pwrite(fd, block, offset[0])
        offset[0] += len(block)
        os.fdatasync(fd)

    benchmark.group = "node ingest"
    benchmark.pedantic(one, rounds=200, iterations=1)
    benchmark.extra_info.update(records_per_s=RECORDS_PER_BATCH / benchmark.stats.stats.median,
                                syncs_per_s=1 / benchmark.stats.stats.median)
    os.close(fd)


def _latencies(client, pg, pages, read_lsn, rounds):
    samples = []
    for i in range(rounds):
        page_no = pages[i % len(pages)]
        start = time.perf_counter_ns()
        client.get_page(pg, page_no, read_lsn)
        samples.append((time.perf_counter_ns() - start) / 1000.0)
    samples.sort()
    return samples


@pytest.mark.parametrize("chain", [0, 10])
def test_get_page_latency(benchmark, node, chain):
    pg = 7000 + chain
    workload = RedoWorkload(volume_id=1, pg=pg, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE,
                            pages=32, seed=99)
    with NodeClient(node.address, volume_id=1, volume_epoch=1) as client:
        client.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)
        # Every page gets an image first, then is materialized; then `chain` more deltas each.
        for page_no in workload.page_numbers:
            client.append(workload.batch(workload.records(1)))
        deadline = time.monotonic() + 30
        while client.status_segment(pg)["materialized_lsn"] < workload.lsn and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(chain):
            for _ in workload.page_numbers:
                client.append(workload.batch(workload.records(1)))
        read_lsn = workload.lsn
        pages = workload.page_numbers
        if chain == 0:
            assert client.status_segment(pg)["materialized_lsn"] >= read_lsn
        samples = _latencies(client, pg, pages, read_lsn, 3000)
        benchmark.group = "node GetPage@LSN"
        benchmark.pedantic(lambda: client.get_page(pg, pages[0], read_lsn), rounds=2000, iterations=1)
    benchmark.extra_info.update(
        p50_us=samples[len(samples) // 2], p99_us=samples[int(len(samples) * 0.99)],
        mean_us=statistics.fmean(samples), chain_records=chain)


def _filled_segment(directory, records):
    segment = Segment(directory, 1, 0, PAGE_SIZE, PAGES_PER_PG, 64 << 20)
    workload = RedoWorkload(volume_id=1, pg=0, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE,
                            pages=512, seed=5)
    for _ in range(records // 100):
        batch = workload.batch(workload.records(100))
        _, recs = _native.decode_batch(batch)
        segment.append(batch, recs)
    segment.sync()
    return segment


def test_materialization(benchmark, scratch):
    counter = [0]

    def setup():
        counter[0] += 1
        segment = _filled_segment(os.path.join(scratch, "m%d" % counter[0]), 20000)
        return (segment,), {}

    def materialize(segment):
        folded = 0
        while True:
            n = segment.materialize_step(1 << 20)
            folded += n
            if segment._pass is None:
                break
        segment.close()
        return folded

    benchmark.group = "node background"
    folded = benchmark.pedantic(materialize, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info.update(records_per_s=folded / benchmark.stats.stats.median)


def test_restart_scan(benchmark, scratch):
    directory = os.path.join(scratch, "scan")
    segment = _filled_segment(directory, 50000)
    log_bytes = sum(log.tail for log in segment.files)
    segment.close()

    def reopen():
        Segment(directory, 1, 0, PAGE_SIZE, PAGES_PER_PG, 64 << 20).close()

    benchmark.group = "node background"
    benchmark.pedantic(reopen, rounds=3, iterations=1)
    benchmark.extra_info.update(mb_per_s=log_bytes / benchmark.stats.stats.median / 1e6,
                                log_bytes=log_bytes)

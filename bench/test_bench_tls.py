"""What TLS costs on the wire: the same requests to three node processes, one listening on a
Unix socket, one on plain TCP, one on TCP with TLS and client certificates (aurora/tls.py).

    pytest bench/test_bench_tls.py --benchmark-json=bench/results/tls.json

* GetPage@LSN round trip of a materialized 4 KiB page (p50/p99 from per-request timings),
  per transport and interleaved request by request (the fair ratio on a shared machine);
* APPEND round trip, one 16-record batch at a time (each waits for its node's fdatasync);
* pipelined APPEND: 400 batches sent back to back, then their ACKs (MB/s of redo);
* connect: TCP connect, TLS handshake where there is one, one STATUS, close.
"""
import os
import shutil
import socket
import statistics
import tempfile
import time

import pytest

from aurora.client import NodeClient
from aurora.node.process import NodeProcess
from aurora.testing import RedoWorkload

pytest.importorskip("cryptography")
from aurora.tls import make_test_certificates  # noqa: E402

PAGE_SIZE = 4096
PAGES_PER_PG = 1 << 12
RECORDS_PER_BATCH = 16
SAMPLES = 3000
TRANSPORTS = ["unix", "tcp", "tls"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fleet():
    scratch = tempfile.mkdtemp(prefix="aur-bench-tls-")
    certs = make_test_certificates(os.path.join(scratch, "certs"))
    addresses = {"unix": "unix:%s/node.sock" % scratch, "tcp": "tcp:127.0.0.1:%d" % _port(),
                 "tls": "tcp:127.0.0.1:%d" % _port()}
    nodes = {}
    try:
        for name, address in addresses.items():
            nodes[name] = NodeProcess(os.path.join(scratch, name, "data"), address, name, "az1",
                                      log_file_bytes=64 << 20, log_path=os.path.join(scratch, name + ".log"),
                                      tls=certs.node_config() if name == "tls" else None)
            os.makedirs(os.path.join(scratch, name), exist_ok=True)
            nodes[name].start()
        yield {name: (node.address, certs.client_config() if name == "tls" else None)
               for name, node in nodes.items()}
    finally:
        for node in nodes.values():
            node.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def client(fleet, transport, **kwargs):
    address, tls = fleet[transport]
    return NodeClient(address, volume_id=1, volume_epoch=1, tls=tls, **kwargs)


def materialized_pages(c, pg, seed):
    """A segment of 32 pages with one image each, materialized: (page numbers, read LSN)."""
    workload = RedoWorkload(volume_id=1, pg=pg, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE, pages=32, seed=seed)
    c.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)
    for _ in workload.page_numbers:
        c.append(workload.batch(workload.records(1)))
    deadline = time.monotonic() + 30
    while c.status_segment(pg)["materialized_lsn"] < workload.lsn and time.monotonic() < deadline:
        time.sleep(0.05)
    return workload.page_numbers, workload.lsn


def percentiles(samples):
    samples = sorted(samples)
    return {"p50_us": samples[len(samples) // 2], "p99_us": samples[int(len(samples) * 0.99)],
            "mean_us": statistics.fmean(samples)}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_page_round_trip(benchmark, fleet, transport):
    pg = 1
    with client(fleet, transport) as c:
        pages, read_lsn = materialized_pages(c, pg, seed=1)
        samples = []
        for i in range(SAMPLES):
            start = time.perf_counter_ns()
            c.get_page(pg, pages[i % len(pages)], read_lsn)
            samples.append((time.perf_counter_ns() - start) / 1000.0)
        benchmark.group = "transport GetPage@LSN"
        benchmark.pedantic(lambda: c.get_page(pg, pages[0], read_lsn), rounds=2000, iterations=1)
    benchmark.extra_info.update(transport=transport, **percentiles(samples))


def test_get_page_interleaved(benchmark, fleet):
    """The three transports asked in turn, request by request, so that the load of a shared
    machine weighs on each alike: the fairest ratio of the three."""
    pg = 4
    clients = {}
    try:
        for transport in TRANSPORTS:
            clients[transport] = client(fleet, transport)
            pages, read_lsn = materialized_pages(clients[transport], pg, seed=4)
        samples = {transport: [] for transport in TRANSPORTS}
        for i in range(SAMPLES):
            for transport in TRANSPORTS:
                start = time.perf_counter_ns()
                clients[transport].get_page(pg, pages[i % len(pages)], read_lsn)
                samples[transport].append((time.perf_counter_ns() - start) / 1000.0)
        benchmark.group = "transport GetPage@LSN"
        benchmark.pedantic(lambda: [clients[t].get_page(pg, pages[0], read_lsn) for t in TRANSPORTS],
                           rounds=500, iterations=1)
    finally:
        for c in clients.values():
            c.close()
    p50 = {t: percentiles(samples[t])["p50_us"] for t in TRANSPORTS}
    benchmark.extra_info.update({"%s_p50_us" % t: p50[t] for t in TRANSPORTS})
    benchmark.extra_info.update({"%s_p99_us" % t: percentiles(samples[t])["p99_us"] for t in TRANSPORTS})
    benchmark.extra_info.update(tls_over_tcp_p50=p50["tls"] / p50["tcp"],
                                tls_minus_tcp_p50_us=p50["tls"] - p50["tcp"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_append_round_trip(benchmark, fleet, transport):
    pg = 2
    workload = RedoWorkload(volume_id=1, pg=pg, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE, pages=64, seed=2)
    batches = [workload.batch(workload.records(RECORDS_PER_BATCH)) for _ in range(300)]
    with client(fleet, transport) as c:
        c.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)
        samples = []
        for batch in batches[:100]:
            start = time.perf_counter_ns()
            c.append(batch)
            samples.append((time.perf_counter_ns() - start) / 1000.0)
        rest = iter(batches[100:])
        benchmark.group = "transport APPEND"
        benchmark.pedantic(lambda: c.append(next(rest)), rounds=200, iterations=1)
    benchmark.extra_info.update(transport=transport, batch_bytes=len(batches[0]), **percentiles(samples))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_append_pipelined(benchmark, fleet, transport):
    pg = 3
    workload = RedoWorkload(volume_id=1, pg=pg, pages_per_pg=PAGES_PER_PG, page_size=PAGE_SIZE, pages=256, seed=3)
    batches = [workload.batch(workload.records(RECORDS_PER_BATCH)) for _ in range(400)]
    total = sum(len(b) for b in batches)
    with client(fleet, transport) as c:
        c.create_segment(pg, PAGE_SIZE, PAGES_PER_PG)
        benchmark.group = "transport pipelined APPEND"
        benchmark.pedantic(lambda: c.append_many(batches), rounds=3, iterations=1)
    benchmark.extra_info.update(transport=transport, batches=len(batches),
                                mb_per_s=total / benchmark.stats.stats.median / 1e6)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_connect(benchmark, fleet, transport):
    def once():
        with client(fleet, transport, timeout=5.0) as c:
            c.status()

    benchmark.group = "transport connect + STATUS"
    benchmark.pedantic(once, rounds=200, iterations=1)
    benchmark.extra_info.update(transport=transport)

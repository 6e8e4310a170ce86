"""Writer benchmarks (issue 4): commit throughput and latency on 6 local node processes.

    pytest bench/test_bench_writer.py --benchmark-json=bench/results/writer.json

Side by side in one run: aurora commits (one 100-byte change to a 4 KiB page per commit) with
1, 4 and 16 committing threads; a loop of local fdatasync (the single-disk durability floor);
SQLite in WAL mode with synchronous=FULL, one row update per transaction, same thread counts.
Latency percentiles come from per-commit timings and are put in extra_info.
"""
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time

import pytest

from aurora.cluster import Cluster
from aurora.testing import run_in_threads

# Commits per thread: about 1-3 s of steady commits per run (200 each, as before, made the
# 16-thread run 0.7 s long, short enough that a fleet's first materialization pass or a
# neighbour's burst moved the figure by a third between runs).
COMMITS_PER_THREAD = {1: 1500, 4: 1000, 16: 500}
WARMUP_COMMITS_PER_THREAD = 20


@pytest.fixture
def scratch():
    """A short directory under /tmp (Unix socket paths must stay short), removed afterwards:
    every run used to leave its fleet's preallocated logs behind, 2 GB a run."""
    directory = tempfile.mkdtemp(prefix="aur-bench-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    directory = tempfile.mkdtemp(prefix="aur-bench-")
    try:
        with Cluster.local(directory, log_file_bytes=64 << 20) as c:
            yield c
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_threads(threads, work, count):
    latencies = []
    lock = threading.Lock()

    def worker(t):
        mine = []
        for i in range(count):
            start = time.perf_counter()
            work(t, i)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    return run_in_threads(threads, worker), sorted(latencies)


def report(benchmark, threads, seconds, latencies):
    commits = threads * COMMITS_PER_THREAD[threads]
    benchmark.extra_info.update(
        threads=threads, commits_per_s=commits / seconds,
        p50_ms=latencies[len(latencies) // 2] * 1e3,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3,
        mean_ms=statistics.fmean(latencies) * 1e3)


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_aurora_commit(benchmark, cluster, threads):
    volume = cluster.open_volume("bench-%d" % threads)
    rng = random.Random(threads)
    row = rng.randbytes(100)

    done = [0] * threads

    def work(t, i):
        # Every commit changes its page: the same bytes at the same offset again would be an
        # empty MTR, which commits without shipping anything.
        n = done[t] = done[t] + 1
        volume.write(t * 8 + n % 8, n.to_bytes(8, "little") + row[8:], offset=(n * 100) % 3900)
        volume.commit()

    benchmark.group = "commit %d threads" % threads
    # Untimed: the volume's first commits create its segments and warm the page cache.
    run_threads(threads, work, WARMUP_COMMITS_PER_THREAD)
    result = {}
    benchmark.pedantic(lambda: result.update(zip(("s", "l"), run_threads(threads, work, COMMITS_PER_THREAD[threads]))),
                       rounds=1, iterations=1)
    report(benchmark, threads, result["s"], result["l"])
    benchmark.extra_info["bytes_per_commit"] = volume.stats["bytes_shipped"] / max(1, volume.stats["mtrs"])
    volume.close()


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_sqlite_wal_full_commit(benchmark, scratch, threads):
    path = os.path.join(scratch, "wal.db")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    setup.executemany("INSERT INTO t VALUES (?, ?)", [(i, b"x" * 100) for i in range(1000)])
    setup.commit()
    setup.close()
    local = threading.local()

    def work(t, i):
        db = getattr(local, "db", None)
        if db is None:
            db = local.db = sqlite3.connect(path, timeout=60, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE t SET v = ? WHERE id = ?", (os.urandom(100), (t * 37 + i) % 1000))
        db.execute("COMMIT")

    benchmark.group = "commit %d threads" % threads
    run_threads(threads, work, WARMUP_COMMITS_PER_THREAD)
    result = {}
    benchmark.pedantic(lambda: result.update(zip(("s", "l"), run_threads(threads, work, COMMITS_PER_THREAD[threads]))),
                       rounds=1, iterations=1)
    report(benchmark, threads, result["s"], result["l"])


def test_local_fdatasync_floor(benchmark, scratch):
    fd = os.open(os.path.join(scratch, "floor"), os.O_RDWR | os.O_CREAT, 0o600)
    block = os.urandom(4096)
    position = [0]

    def one():
        os.pwrite(fd, block, position[0])
        position[0] += 4096
        os.fdatasync(fd)

    benchmark.group = "commit 1 threads"
    benchmark.pedantic(one, rounds=300, iterations=1)
    benchmark.extra_info.update(p50_ms=benchmark.stats.stats.median * 1e3,
                                commits_per_s=1 / benchmark.stats.stats.median)
    os.close(fd)


def test_quorum_fdatasync_floor(benchmark, scratch):
    """The durability floor of a 4-of-6 write when all six copies share this host's one disk:
    six threads each write 4 KiB to their own file and fdatasync it at the same moment; the
    figure is the time until the fourth sync returns (no network, no Python in between)."""
    fds = [os.open(os.path.join(scratch, "copy%d" % i), os.O_RDWR | os.O_CREAT, 0o600) for i in range(6)]
    block = os.urandom(4096)
    rounds = []
    position = [0]

    def one():
        done = []
        start = threading.Barrier(7)

        def copy(fd):
            start.wait()
            os.pwrite(fd, block, position[0])
            os.fdatasync(fd)
            done.append(time.perf_counter())

        threads = [threading.Thread(target=copy, args=(fd,)) for fd in fds]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        position[0] += 4096
        done.sort()
        rounds.append((done[0] - began, done[3] - began))

    benchmark.group = "commit 1 threads"
    benchmark.pedantic(one, rounds=300, iterations=1)
    first = sorted(r[0] for r in rounds)
    fourth = sorted(r[1] for r in rounds)
    benchmark.extra_info.update(first_p50_ms=first[len(first) // 2] * 1e3,
                                p50_ms=fourth[len(fourth) // 2] * 1e3,
                                p99_ms=fourth[int(len(fourth) * 0.99)] * 1e3)
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("transport", ["ring", "inline"])
def test_aurora_bulk_write(benchmark, cluster, transport):
    """Large MTRs (16 whole 4 KiB pages, ~64 KiB of redo each) from 4 threads: redo bandwidth
    with the shared-memory ring (one copy for all six local nodes) and with every batch sent
    inline to each node's socket."""
    volume = cluster.open_volume("bulk-" + transport, ring_bytes=None if transport == "ring" else 0)
    rng = random.Random(7)
    pages = [rng.randbytes(4096) for _ in range(64)]
    threads, mtrs = 4, 40

    def work(t, i):
        for k in range(16):
            volume.write(t * 4096 + (i * 16 + k) % 1024, pages[(i + k) % 64])
        volume.commit()

    benchmark.group = "bulk write"
    result = {}
    benchmark.pedantic(lambda: result.update(zip(("s", "l"), run_threads(threads, work, mtrs))),
                       rounds=1, iterations=1)
    redo = volume.stats["batch_bytes"]
    benchmark.extra_info.update(transport=transport, commits_per_s=threads * mtrs / result["s"],
                                redo_mb_per_s=redo / result["s"] / 1e6,
                                ring_frames=volume.stats["ring_frames"], inline_frames=volume.stats["inline_frames"],
                                p50_ms=result["l"][len(result["l"]) // 2] * 1e3)
    volume.close()

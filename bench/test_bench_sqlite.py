"""SQLite benchmarks (issue 5): the bookstore on aurora.connect against plain SQLite files.

    pytest bench/test_bench_sqlite.py --benchmark-json=bench/results/sqlite.json
    python bench/summarize.py --trim

Each client is a thread with its own connection, buying books in one transaction each (the
transaction of aurora/demo.py: take one book from the inventory, insert the order, add loyalty
points).  Side by side in one run and one pytest-benchmark group per client count (1, 4, 16):

* ``aurora``: aurora.connect on 6 local node processes (2 in each of 3 AZs);
* ``rollback-full``: a plain SQLite file on the same disk, journal_mode=DELETE, synchronous=FULL;
* ``wal-full``: a plain SQLite file on the same disk, journal_mode=WAL, synchronous=FULL.

extra_info has transactions/s and the latency percentiles of the commit call and of the whole
transaction; for aurora also the redo shipped per transaction (``stats["bytes_shipped"] /
stats["mtrs"]`` of the writer, six copies included) against what shipping whole pages to six
copies would cost (``stats["records"]`` per transaction x page size x 6).
"""
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time

import pytest

import aurora
import aurora.sqlite as aurora_sqlite
from aurora.cluster import Cluster
from aurora.demo import BOOKS, POINTS_PER_ORDER, SCHEMA, STOCK_PER_BOOK

TRANSACTIONS_TOTAL = 480          # per benchmark, split among the clients
TRANSACTIONS_PER_CLIENT_MIN = 30
LOCK_TIMEOUT_S = 120.0
COPIES = 6
CLIENTS = (1, 4, 16)
CONTENDERS = ("aurora", "rollback-full", "wal-full")


@pytest.fixture(scope="module")
def cluster():
    data_dir = tempfile.mkdtemp(prefix="aur-bsql-")
    with Cluster.local(data_dir, log_file_bytes=64 << 20) as c:
        yield c
        aurora_sqlite.close(c)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def scratch():
    path = tempfile.mkdtemp(prefix="aur-bsql-file-")     # the same disk as the fleet (/tmp)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def percentile(values, q):
    return values[min(len(values) - 1, int(len(values) * q))]


def create_bookstore(db, clients):
    db.executescript(SCHEMA)
    with db:
        db.executemany("INSERT INTO books VALUES (?, ?, ?)",
                       [(b, "Book %d" % b, 500 + 37 * b) for b in range(1, BOOKS + 1)])
        db.executemany("INSERT INTO inventory VALUES (?, ?)", [(b, STOCK_PER_BOOK) for b in range(1, BOOKS + 1)])
        db.executemany("INSERT INTO customers VALUES (?, ?)", [(c, "Customer %d" % c) for c in range(1, clients + 1)])
        db.executemany("INSERT INTO customer_points VALUES (?, 0)", [(c,) for c in range(1, clients + 1)])


def run_clients(clients, connect):
    """Every client buys its share of books; returns (seconds, commit latencies, transaction
    latencies), the latencies sorted, in seconds."""
    per_client = max(TRANSACTIONS_PER_CLIENT_MIN, TRANSACTIONS_TOTAL // clients)
    connections = [connect() for _ in range(clients)]
    commits, transactions, failures = [], [], []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def client(customer_id, db):
        mine_commit, mine_txn = [], []
        try:
            start_gate.wait()
            for n in range(per_client):
                book_id = (customer_id * 13 + n) % BOOKS + 1
                started = time.perf_counter()
                # UPDATE first, so the transaction asks for the write lock before it reads
                # anything (SQLite's busy handler then waits instead of failing a deadlock).
                db.execute("UPDATE inventory SET quantity = quantity - 1 WHERE book_id = ?", (book_id,))
                db.execute("INSERT INTO orders VALUES (?, ?, ?, ?)",
                           ("c%d-%d" % (customer_id, n), customer_id, book_id, time.time()))
                db.execute("UPDATE customer_points SET points = points + ? WHERE customer_id = ?",
                           (POINTS_PER_ORDER, customer_id))
                committing = time.perf_counter()
                db.commit()
                done = time.perf_counter()
                mine_commit.append(done - committing)
                mine_txn.append(done - started)
        except Exception as exc:
            failures.append(exc)
        with lock:
            commits.extend(mine_commit)
            transactions.extend(mine_txn)

    threads = [threading.Thread(target=client, args=(c + 1, connections[c])) for c in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    check = connections[0]
    stock = check.execute("SELECT sum(quantity) FROM inventory").fetchone()[0]
    orders = check.execute("SELECT count(*) FROM orders").fetchone()[0]
    for db in connections:
        db.close()
    assert failures == [], failures[:3]
    assert orders == clients * per_client and stock + orders == BOOKS * STOCK_PER_BOOK
    return seconds, sorted(commits), sorted(transactions)


def report(benchmark, clients, contender, seconds, commits, transactions):
    benchmark.extra_info.update(
        contender=contender, clients=clients, transactions=len(transactions),
        txn_per_s=len(transactions) / seconds,
        commit_p50_ms=percentile(commits, 0.5) * 1e3,
        commit_p99_ms=percentile(commits, 0.99) * 1e3,
        txn_p50_ms=percentile(transactions, 0.5) * 1e3,
        txn_p99_ms=percentile(transactions, 0.99) * 1e3,
        txn_mean_ms=statistics.fmean(transactions) * 1e3)


def bench(benchmark, clients, contender, connect):
    benchmark.group = "sqlite bookstore %d clients" % clients
    result = {}
    benchmark.pedantic(lambda: result.update(zip(("s", "c", "t"), run_clients(clients, connect))),
                       rounds=1, iterations=1)
    report(benchmark, clients, contender, result["s"], result["c"], result["t"])


# The contenders of one client count run back to back (the top decorator varies fastest).
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("clients", CLIENTS)
def test_bookstore(benchmark, cluster, scratch, contender, clients):
    if contender == "aurora":
        volume_name = "bookstore-%d" % clients

        def connect():
            return aurora.connect(cluster, volume=volume_name, timeout=LOCK_TIMEOUT_S)
    else:
        path = os.path.join(scratch, "bookstore.db")
        journal_mode = "WAL" if contender == "wal-full" else "DELETE"

        def connect():
            db = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S, check_same_thread=False)
            assert db.execute("PRAGMA journal_mode=%s" % journal_mode).fetchone()[0].upper() == journal_mode
            db.execute("PRAGMA synchronous=FULL")
            return db

    setup = connect()
    create_bookstore(setup, clients)
    if contender == "aurora":
        volume = aurora_sqlite.volume_of(setup)
        before = {key: volume.stats[key] for key in ("bytes_shipped", "mtrs", "records")}
    bench(benchmark, clients, contender, connect)
    if contender == "aurora":
        shipped, mtrs, records = (volume.stats[key] - before[key] for key in ("bytes_shipped", "mtrs", "records"))
        shipped_per_txn = shipped / max(1, mtrs)
        whole_pages_per_txn = records / max(1, mtrs) * volume.page_size * COPIES
        benchmark.extra_info.update(
            bytes_shipped_per_txn=shipped_per_txn, records_per_txn=records / max(1, mtrs),
            whole_pages_bytes_per_txn=whole_pages_per_txn,
            whole_pages_over_shipped=whole_pages_per_txn / max(1.0, shipped_per_txn))
    setup.close()

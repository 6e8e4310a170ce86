"""`aurora demo`: the bookstore from the Aurora guide on an embedded 6-node fleet.

The parent process starts the fleet and a writer process; the writer runs N concurrent
customers, each buying a book in one transaction and reporting every commit that returned.
Midway the parent kills a whole AZ (2 of 6 nodes) and orders keep coming; then it SIGKILLs the
writer, reopens the volume (writer recovery, timed), and checks that every acknowledged order
is there and the stock adds up.
"""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BOOKS = 40
STOCK_PER_BOOK = 100_000
POINTS_PER_ORDER = 10
STATS_INTERVAL_S = 0.5

SCHEMA = """
CREATE TABLE books (book_id INTEGER PRIMARY KEY, title TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE inventory (book_id INTEGER PRIMARY KEY REFERENCES books, quantity INTEGER NOT NULL);
CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers,
                     book_id INTEGER NOT NULL REFERENCES books, ordered_at REAL NOT NULL);
CREATE TABLE customer_points (customer_id INTEGER PRIMARY KEY REFERENCES customers, points INTEGER NOT NULL);
"""


# ---- the writer process -----------------------------------------------------------------------

def writer_main(args):
    import aurora
    from aurora import sqlite as aurora_sqlite

    out_lock = threading.Lock()

    def emit(*fields):
        with out_lock:
            sys.stdout.write(" ".join(str(f) for f in fields) + "\n")
            sys.stdout.flush()

    conn = aurora.connect(args.data_dir)
    volume = aurora_sqlite.volume_of(conn)
    if not conn.execute("SELECT name FROM sqlite_master WHERE name = 'books'").fetchone():
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany("INSERT INTO books VALUES (?, ?, ?)",
                             [(b, "Book %d" % b, 500 + 37 * b) for b in range(1, BOOKS + 1)])
            conn.executemany("INSERT INTO inventory VALUES (?, ?)",
                             [(b, STOCK_PER_BOOK) for b in range(1, BOOKS + 1)])
            conn.executemany("INSERT INTO customers VALUES (?, ?)",
                             [(c, "Customer %d" % c) for c in range(1, args.customers + 1)])
            conn.executemany("INSERT INTO customer_points VALUES (?, 0)",
                             [(c,) for c in range(1, args.customers + 1)])
    emit("ready", volume.recovery_seconds)
    stop = threading.Event()

    def customer(customer_id):
        db = aurora.connect(args.data_dir)
        rng = random.Random(customer_id)
        n = 0
        while not stop.is_set():
            book_id = rng.randint(1, BOOKS)
            order_id = "c%d-%d" % (customer_id, n)
            n += 1
            started = time.perf_counter()
            try:
                with db:   # one transaction: commits on exit, rolls back on error
                    cur = db.execute("UPDATE inventory SET quantity = quantity - 1 "
                                     "WHERE book_id = ? AND quantity > 0", (book_id,))
                    if cur.rowcount != 1:
                        continue
                    db.execute("INSERT INTO orders VALUES (?, ?, ?, ?)",
                               (order_id, customer_id, book_id, time.time()))
                    db.execute("UPDATE customer_points SET points = points + ? WHERE customer_id = ?",
                               (POINTS_PER_ORDER, customer_id))
            except Exception as exc:   # a commit that did not return is simply not acknowledged
                emit("error", type(exc).__name__, str(exc).replace("\n", " ")[:200])
                time.sleep(0.1)
                continue
            emit("ack", order_id, customer_id, book_id, "%.3f" % ((time.perf_counter() - started) * 1e3))

    threads = [threading.Thread(target=customer, args=(c,), daemon=True) for c in range(1, args.customers + 1)]
    for t in threads:
        t.start()
    while True:   # runs until the parent kills this process
        time.sleep(STATS_INTERVAL_S)
        stats = volume.status()["stats"]
        emit("stats", json.dumps({"records": stats.get("records", 0), "mtrs": stats.get("mtrs", 0),
                                  "bytes_shipped": stats.get("bytes_shipped", 0), "vdl": volume.vdl,
                                  "page_size": volume.page_size}))


# ---- the parent: fleet, chaos, checks, report -------------------------------------------------

class Run:
    def __init__(self):
        self.acked = {}           # order_id -> (customer, book)
        self.latencies_ms = []
        self.errors = []
        self.stats = {}
        self.ready = threading.Event()
        self.lock = threading.Lock()

    def reader(self, stream):
        for line in stream:
            parts = line.split()
            if not parts:
                continue
            with self.lock:
                if parts[0] == "ack":
                    self.acked[parts[1]] = (int(parts[2]), int(parts[3]))
                    self.latencies_ms.append(float(parts[4]))
                elif parts[0] == "stats":
                    self.stats = json.loads(line[6:])
                elif parts[0] == "ready":
                    self.ready.set()
                elif parts[0] == "error":
                    self.errors.append(line.strip())


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def node_line(cluster):
    parts = []
    for az in cluster.azs():
        nodes = [n for n in cluster.nodes if n.az == az]
        parts.append("%s[%s]" % (az, " ".join("up" if n.alive() else "DOWN" for n in nodes)))
    return " ".join(parts)


def live(run, cluster, started, phase, last):
    with run.lock:
        orders = len(run.acked)
        recent = run.latencies_ms[-500:]
    elapsed = time.monotonic() - started
    rate = (orders - last[0]) / max(1e-9, elapsed - last[1])
    last[0], last[1] = orders, elapsed
    print("  %5.1fs  %-22s orders %6d  %7.0f txn/s  commit p50 %6.2f ms  p99 %6.2f ms  nodes %s"
          % (elapsed, phase, orders, rate, percentile(recent, 0.5), percentile(recent, 0.99), node_line(cluster)),
          flush=True)


def run_phase(run, cluster, started, phase, seconds, last):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(STATS_INTERVAL_S)
        live(run, cluster, started, phase, last)


def demo(args):
    from aurora.cluster import Cluster
    import aurora
    from aurora import sqlite as aurora_sqlite

    own_dir = args.data_dir is None
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="aurora-demo-")
    print("aurora demo: bookstore on an embedded fleet of 6 storage nodes in 3 AZs")
    print("  data directory %s" % data_dir)
    cluster = Cluster.local(data_dir)
    checks = []
    try:
        env = dict(os.environ)
        from aurora.node.process import _package_root
        env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        writer = subprocess.Popen([sys.executable, "-m", "aurora.demo", "--child", "--data-dir", data_dir,
                                   "--customers", str(args.customers)],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=data_dir)
        run = Run()
        reader = threading.Thread(target=run.reader, args=(writer.stdout,), daemon=True)
        reader.start()
        if not run.ready.wait(120):
            raise RuntimeError("the writer process did not start; see %s" % data_dir)
        print("  writer process %d: %d customers buying books (one transaction each)\n" % (writer.pid, args.customers))
        started = time.monotonic()
        last = [0, 0.0]
        phase_s = args.seconds / 3
        run_phase(run, cluster, started, "all 6 nodes up", phase_s, last)
        killed = cluster.kill_az("az2")
        print("  ---- killed AZ az2 (%s): SIGKILL to 2 of 6 nodes ----" % ", ".join(n.node_id for n in killed))
        before = len(run.acked)
        run_phase(run, cluster, started, "az2 down", phase_s, last)
        during_az_loss = len(run.acked) - before
        checks.append(("orders continued with a whole AZ down", during_az_loss > 0,
                       "%d orders committed while az2 was down" % during_az_loss))
        for node in killed:
            node.restart()
        print("  ---- restarted az2; its nodes catch up by gossip ----")
        run_phase(run, cluster, started, "az2 back", phase_s, last)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        reader.join(timeout=5)
        total_s = time.monotonic() - started
        print("  ---- SIGKILL to the writer process (pid %d) ----" % writer.pid)
        with run.lock:
            acked = dict(run.acked)
            latencies = list(run.latencies_ms)
            stats = dict(run.stats)
        reopen_started = time.monotonic()
        conn = aurora.connect(cluster)
        reopen_s = time.monotonic() - reopen_started
        volume = aurora_sqlite.volume_of(conn)
        print("  reopened: writer recovery %.0f ms (volume epoch %d, recovered VDL %d, %d records in flight listed)\n"
              % (volume.recovery_seconds * 1e3, volume.epoch, volume.recovery["vdl"],
                 volume.recovery.get("records_listed", 0)))
        present = {row[0] for row in conn.execute("SELECT order_id FROM orders")}
        lost = [o for o in acked if o not in present]
        checks.append(("every acknowledged order is present", not lost,
                       "%d acknowledged, %d present in the table, %d lost" % (len(acked), len(present), len(lost))))
        stock = conn.execute("SELECT SUM(quantity) FROM inventory").fetchone()[0]
        orders = conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
        checks.append(("stock adds up", stock + orders == BOOKS * STOCK_PER_BOOK,
                       "%d in stock + %d sold = %d" % (stock, orders, stock + orders)))
        mismatched = conn.execute(
            "SELECT COUNT(*) FROM customer_points p WHERE p.points != ? * "
            "(SELECT COUNT(*) FROM orders o WHERE o.customer_id = p.customer_id)", (POINTS_PER_ORDER,)).fetchone()[0]
        checks.append(("loyalty points match orders", mismatched == 0, "%d customers mismatched" % mismatched))
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        checks.append(("SQLite integrity_check", integrity == "ok", integrity))
        conn.close()
        records = max(1, stats.get("records", 0))
        mtrs = max(1, stats.get("mtrs", 0))
        page_size = stats.get("page_size", 4096)
        shipped_per_txn = stats.get("bytes_shipped", 0) / mtrs
        whole_pages_per_txn = records / mtrs * page_size * 6
        rows = [
            ("transactions acknowledged", "%d" % len(acked)),
            ("throughput", "%.0f txn/s" % (len(acked) / total_s)),
            ("commit latency p50 / p99", "%.2f / %.2f ms" % (percentile(latencies, 0.5), percentile(latencies, 0.99))),
            ("commit latency mean", "%.2f ms" % (statistics.fmean(latencies) if latencies else float("nan"))),
            ("redo shipped per transaction", "%.0f bytes (to 6 copies)" % shipped_per_txn),
            ("whole pages to 6 copies would be", "%.0f bytes (%.1fx more)" % (
                whole_pages_per_txn, whole_pages_per_txn / max(1.0, shipped_per_txn))),
            ("writer recovery after SIGKILL", "%.0f ms (open %.0f ms)" % (volume.recovery_seconds * 1e3, reopen_s * 1e3)),
        ]
        print("  result")
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print("    %-*s  %s" % (width, key, value))
        print("\n  invariant checks")
        for name, ok, detail in checks:
            print("    [%s] %-40s %s" % ("ok" if ok else "FAILED", name, detail))
        if run.errors:
            print("\n  %d transactions raised (not acknowledged, so not counted), e.g. %s"
                  % (len(run.errors), run.errors[0]))
        return 0 if all(ok for _, ok, _ in checks) else 1
    finally:
        aurora_sqlite.close()
        cluster.close()
        if own_dir and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def add_arguments(parser):
    parser.add_argument("--data-dir", default=None, help="fleet directory (default: a temporary one)")
    parser.add_argument("--customers", type=int, default=8, help="concurrent customers (default 8)")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the workload runs (default 15)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="aurora demo", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child:
        return writer_main(args)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())

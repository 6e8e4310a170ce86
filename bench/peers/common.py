"""What every peer shares: the workloads' SQL, the closed-loop client driver, CPU accounting."""
import os
import random
import socket
import threading
import time

# The bookstore of aurora/demo.py, with the same SQL; kv is the table of the single-row
# workloads (update, point select, read-mostly mix).
BOOKS = 40
STOCK_PER_BOOK = 100_000
POINTS_PER_ORDER = 10
CUSTOMERS = 64            # one customer per client thread, up to the largest client count
KV_ROWS = 10_000
KV_PAD_BYTES = 100
MIX_READ_FRACTION = 0.9

WORKLOADS = ("bookstore", "update", "select", "mix")
CLIENT_COUNTS = (1, 4, 16, 64)

OPS_PER_CLIENT_MAX = 10_000_000    # bounds every client loop besides its deadline
START_TIMEOUT_S = 120.0            # how long a client may take to connect
ERROR_BACKOFF_S = 0.01

BOOKSTORE_SCHEMA = [
    "CREATE TABLE books (book_id INTEGER PRIMARY KEY, title TEXT NOT NULL, price_cents INTEGER NOT NULL)",
    "CREATE TABLE inventory (book_id INTEGER PRIMARY KEY REFERENCES books, quantity INTEGER NOT NULL)",
    "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE orders (order_id TEXT PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers, "
    "book_id INTEGER NOT NULL REFERENCES books, ordered_at REAL NOT NULL)",
    "CREATE TABLE customer_points (customer_id INTEGER PRIMARY KEY REFERENCES customers, points INTEGER NOT NULL)",
    "CREATE TABLE kv (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad TEXT NOT NULL)",
]


def seed_rows():
    """(table, rows) to insert after the schema."""
    return [
        ("books", [(b, "Book %d" % b, 500 + 37 * b) for b in range(1, BOOKS + 1)]),
        ("inventory", [(b, STOCK_PER_BOOK) for b in range(1, BOOKS + 1)]),
        ("customers", [(c, "Customer %d" % c) for c in range(1, CUSTOMERS + 1)]),
        ("customer_points", [(c, 0) for c in range(1, CUSTOMERS + 1)]),
        ("kv", [(k, 0, ("%d" % k).rjust(KV_PAD_BYTES, "x")) for k in range(1, KV_ROWS + 1)]),
    ]


class SqlClient:
    """The four workloads over one DB-API connection.  ``ph`` is the driver's placeholder;
    ``transaction()`` returns a context manager that commits on success."""

    ph = "?"

    def __init__(self, client_id, tag):
        self.client_id = client_id
        self.tag = tag
        self.rng = random.Random(client_id * 7919 + hash(tag) % 1000)
        self.n = 0

    def sql(self, text):
        return text.replace("?", self.ph)

    def execute(self, text, params=()):
        raise NotImplementedError

    def transaction(self):
        raise NotImplementedError

    def bookstore(self):
        book_id = self.rng.randint(1, BOOKS)
        customer_id = (self.client_id - 1) % CUSTOMERS + 1
        order_id = "%s-c%d-%d" % (self.tag, self.client_id, self.n)
        self.n += 1
        with self.transaction():
            count = self.execute("UPDATE inventory SET quantity = quantity - 1 "
                                 "WHERE book_id = ? AND quantity > 0", (book_id,))
            if count != 1:
                raise RuntimeError("book %d is sold out" % book_id)
            self.execute("INSERT INTO orders VALUES (?, ?, ?, ?)",
                         (order_id, customer_id, book_id, time.time()))
            self.execute("UPDATE customer_points SET points = points + ? WHERE customer_id = ?",
                         (POINTS_PER_ORDER, customer_id))

    def update(self):
        with self.transaction():
            self.execute("UPDATE kv SET v = v + 1 WHERE id = ?", (self.rng.randint(1, KV_ROWS),))

    def select(self):
        self.query_one("SELECT v, pad FROM kv WHERE id = ?", (self.rng.randint(1, KV_ROWS),))

    def mix(self):
        if self.rng.random() < MIX_READ_FRACTION:
            self.select()
        else:
            self.update()

    def close(self):
        pass


# ---- CPU accounting from /proc ---------------------------------------------------------------

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()   # fields from the 3rd (state) on


def cpu_seconds(pids):
    """User + system CPU seconds of these processes (their own, not waited-for children)."""
    total = 0.0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except (OSError, ValueError):
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS_PER_S   # utime, stime
    return total


def descendants(pid):
    """pid and every process below it (one pass over /proc)."""
    parent_of = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent_of[int(name)] = int(_stat_fields(int(name))[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parent_of.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return sorted(found)


def child_env():
    """Environment for a child Python that imports bench.peers and aurora: aurora from where
    this process found it (an installed wheel, or an in-place build), then this checkout for
    ``bench``.  Children run outside the checkout so that its uncompiled aurora/ never shadows
    an installed one."""
    import aurora
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(aurora.__file__))),
             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the closed-loop driver --------------------------------------------------------------------

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def run_cell(peer, workload, clients, seconds, warmup_s, tag):
    """``clients`` threads, each with its own connection, run ``workload`` back to back for
    ``seconds`` after ``warmup_s``.  Returns throughput, latency percentiles, CPU and bytes."""
    made = []
    errors = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1, timeout=START_TIMEOUT_S)
    go = threading.Event()
    window = {}
    samples = [None] * clients

    def client_main(index):
        try:
            client = peer.client(index + 1, tag)
        except Exception as exc:     # counted: a cell whose clients cannot connect is reported
            with lock:
                errors.append("connect: %s: %s" % (type(exc).__name__, exc))
            ready.wait()
            return
        with lock:
            made.append(client)
        op = getattr(client, workload)
        latencies = []
        failed = 0
        ready.wait()
        go.wait(START_TIMEOUT_S)
        start, end = window["start"], window["end"]
        for _ in range(OPS_PER_CLIENT_MAX):
            began = time.perf_counter()
            if began >= end:
                break
            try:
                op()
            except Exception as exc:
                failed += 1
                if failed <= 3:
                    with lock:
                        errors.append("%s: %s" % (type(exc).__name__, str(exc).splitlines()[0][:160]))
                time.sleep(ERROR_BACKOFF_S)
                continue
            if began >= start:
                latencies.append(time.perf_counter() - began)
        samples[index] = (latencies, failed)

    threads = [threading.Thread(target=client_main, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()   # every client has connected (or failed to)
    pids = peer.pids()
    window["start"] = time.perf_counter() + warmup_s
    window["end"] = window["start"] + seconds
    go.set()
    time.sleep(max(0.0, window["start"] - time.perf_counter()))
    cpu_before = cpu_seconds(pids) + cpu_seconds([os.getpid()])
    peer_cpu_before = cpu_seconds(pids)
    marker = peer.bytes_marker()
    time.sleep(max(0.0, window["end"] - time.perf_counter()))
    cpu_after = cpu_seconds(pids) + cpu_seconds([os.getpid()])
    peer_cpu_after = cpu_seconds(pids)
    shipped = peer.bytes_since(marker)
    for t in threads:
        t.join(timeout=seconds + 60)
    for client in made:
        try:
            client.close()
        except Exception:
            pass
    latencies = sorted(x for s in samples if s for x in s[0])
    failed = sum(s[1] for s in samples if s)
    txns = len(latencies)
    elapsed = window["end"] - window["start"]
    result = {
        "workload": workload, "clients": clients, "seconds": round(elapsed, 3),
        "txns": txns, "errors": failed + sum(1 for s in samples if s is None),
        "txn_per_s": round(txns / elapsed, 1),
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "p999_ms": _ms(percentile(latencies, 0.999)),
        "cpu_ms_per_txn": round((cpu_after - cpu_before) / txns * 1e3, 3) if txns else None,
        "peer_cpu_ms_per_txn": round((peer_cpu_after - peer_cpu_before) / txns * 1e3, 3) if txns else None,
    }
    if shipped is not None and txns:
        for key, value in shipped.items():
            result[key] = round(value / txns, 1) if key.endswith("_bytes") else value
    if errors:
        result["error_examples"] = errors[:3]
    return result


def _ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3)

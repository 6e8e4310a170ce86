"""Child process of the recovery measurements: grow a database to a size, then write until
SIGKILL.

    python -m bench.peers.recovery_child sqlite PATH SIZE_BYTES MODE
    python -m bench.peers.recovery_child aurora DATA_DIR SIZE_BYTES

Prints ``loaded <bytes>`` once the database holds at least SIZE_BYTES, then ``writing`` once
its writer threads run.  It exits by itself after WRITE_SECONDS_MAX if nobody kills it.
"""
import sqlite3
import sys
import threading
import time

ROWS_PER_LOAD_TXN = 2000
ROW_BYTES = 1000
WRITERS = 2
UPDATES_PER_WRITE_TXN = 20
WRITE_SECONDS_MAX = 120.0
LOAD_TXNS_MAX = 1_000_000

CREATE = "CREATE TABLE IF NOT EXISTS big (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL)"
LOAD = ("INSERT INTO big (v, pad) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < %d) SELECT x, randomblob(%d) FROM c" % (ROWS_PER_LOAD_TXN, ROW_BYTES))


def size_of(conn):
    return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]


def main(argv):
    kind, target, size_bytes = argv[0], argv[1], int(argv[2])
    if kind == "aurora":
        import aurora

        def connect():
            return aurora.connect(target, timeout=60, isolation_level=None)
    else:
        from bench.peers.sqlite_peer import MODES
        journal_mode, synchronous = MODES[argv[3]]

        def connect():
            conn = sqlite3.connect(target, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=%s" % journal_mode).fetchall()
            conn.execute("PRAGMA synchronous=%s" % synchronous)
            return conn
    conn = connect()
    conn.execute(CREATE)
    for _ in range(LOAD_TXNS_MAX):
        if size_of(conn) >= size_bytes:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(LOAD)
        conn.execute("COMMIT")
    rows = conn.execute("SELECT max(id) FROM big").fetchone()[0]
    print("loaded %d %d" % (size_of(conn), rows), flush=True)

    def writer(seed):
        import random
        rng = random.Random(seed)
        db = connect()
        deadline = time.monotonic() + WRITE_SECONDS_MAX
        while time.monotonic() < deadline:
            db.execute("BEGIN IMMEDIATE")
            for _ in range(UPDATES_PER_WRITE_TXN):
                db.execute("UPDATE big SET v = v + 1 WHERE id = ?", (rng.randint(1, rows),))
            db.execute("INSERT INTO big (v, pad) VALUES (0, randomblob(%d))" % ROW_BYTES)
            db.execute("COMMIT")

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    print("writing", flush=True)
    for t in threads:
        t.join(WRITE_SECONDS_MAX + 10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

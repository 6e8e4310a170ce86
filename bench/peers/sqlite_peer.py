"""Plain SQLite files in a temporary directory, and aurora's SQLite on a local 6-node fleet.

Both run in the benchmark's own process (SQLite is a library); write transactions start with
BEGIN IMMEDIATE so that concurrent writers queue on SQLite's busy handler instead of failing
on a lock upgrade.  The statements inside are those of aurora/demo.py.
"""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from bench.peers import common

BUSY_TIMEOUT_S = 10.0    # a client stuck on a lock longer than this counts an error
RECOVERY_CHILD_TIMEOUT_S = 900.0
KILL_AFTER_WRITING_S = 0.5

MODES = {
    # name: (journal_mode, synchronous)
    "sqlite-journal-full": ("DELETE", "FULL"),
    "sqlite-wal-full": ("WAL", "FULL"),
    "sqlite-wal-normal": ("WAL", "NORMAL"),
}


class _Transaction:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False


class SqliteClient(common.SqlClient):
    def __init__(self, conn, client_id, tag):
        super().__init__(client_id, tag)
        self.conn = conn

    def execute(self, text, params=()):
        return self.conn.execute(text, params).rowcount

    def query_one(self, text, params=()):
        return self.conn.execute(text, params).fetchone()

    def transaction(self):
        return _Transaction(self.conn)

    def close(self):
        self.conn.close()


def create_schema(conn):
    for statement in common.BOOKSTORE_SCHEMA:
        conn.execute(statement)
    conn.execute("BEGIN")
    for table, rows in common.seed_rows():
        conn.executemany("INSERT INTO %s VALUES (%s)" % (table, ", ".join("?" * len(rows[0]))), rows)
    conn.execute("COMMIT")


class SqlitePeer:
    """One SQLite database file in journal mode ``mode`` (a key of MODES)."""

    kind = "sqlite"

    def __init__(self, mode, scratch):
        self.name = mode
        self.journal_mode, self.synchronous = MODES[mode]
        self.dir = tempfile.mkdtemp(prefix="sqlite-", dir=scratch)
        self.path = os.path.join(self.dir, "bench.db")

    def start(self):
        conn = self._connect()
        create_schema(conn)
        conn.close()

    def _connect(self):
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=%s" % self.journal_mode).fetchall()
        conn.execute("PRAGMA synchronous=%s" % self.synchronous)
        return conn

    def client(self, client_id, tag):
        return SqliteClient(self._connect(), client_id, tag)

    def pids(self):
        return []

    def bytes_marker(self):
        return None

    def bytes_since(self, marker):
        return None          # nothing is replicated

    def stop(self):
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- recovery after SIGKILL during writes ----------------------------------------------------

def run_recovery_child(kind, target, size_bytes, mode=None):
    """Start bench.peers.recovery_child: it grows ``target`` to ``size_bytes`` and then writes
    until it is killed.  Returns (process, data bytes) once it is writing."""
    command = [sys.executable, "-m", "bench.peers.recovery_child", kind, target, str(size_bytes)]
    if mode:
        command.append(mode)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=common.child_env(),
                             cwd=os.path.dirname(os.path.abspath(target)))
    deadline = time.monotonic() + RECOVERY_CHILD_TIMEOUT_S
    data_bytes = None
    try:
        for line in child.stdout:
            if line.startswith("loaded"):
                data_bytes = int(line.split()[1])
            if line.startswith("writing"):
                return child, data_bytes
            if time.monotonic() > deadline:
                break
    except BaseException:
        child.kill()
        child.wait()
        raise
    child.kill()
    child.wait()
    raise RuntimeError("recovery child %s did not start writing (exit %s)" % (kind, child.returncode))


def kill_child(child):
    time.sleep(KILL_AFTER_WRITING_S)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


def sqlite_recovery(mode, sizes_mib, scratch):
    """Open + first query after SIGKILL during writes, per data size (the file grows)."""
    journal_mode, synchronous = MODES[mode]
    directory = tempfile.mkdtemp(prefix="sqlite-recovery-", dir=scratch)
    path = os.path.join(directory, "big.db")
    points = []
    try:
        for size in sizes_mib:
            child, data_bytes = run_recovery_child("sqlite", path, size << 20, mode)
            kill_child(child)
            hot = [name for name in os.listdir(directory) if name != "big.db"]
            started = time.perf_counter()
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("SELECT v FROM big WHERE id = 1").fetchone()
            seconds = time.perf_counter() - started
            conn.close()
            points.append({"size_mib": size, "data_bytes": data_bytes, "recovery_s": round(seconds, 4),
                           "left_behind": sorted(hot)})
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return points

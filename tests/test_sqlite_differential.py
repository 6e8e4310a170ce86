"""Same results as a plain SQLite file: a seeded random workload, side by side.

Every statement of a seeded random workload (DDL with indexes, inserts, updates, deletes,
joins, aggregates, explicit transactions with rollbacks and savepoints) runs on two
connections to an aurora volume and on two connections to a plain SQLite file on local disk,
the same connection on each side.  Each statement must return the same rows or fail with the
same error; at the end (and again after the volume is reopened, which runs writer recovery)
``iterdump()`` must list the same SQL and ``PRAGMA integrity_check`` must be ok.

The fleet uses 64 pages per PG, so the database spans several PGs.  A failure names the
seed and the statements that led to it; rerun any seed with
``AURORA_DIFF_SEED=<seed> pytest -m slow tests/test_sqlite_differential.py -k env_seed``.  The long
seeds run with ``-m slow``.
"""
import os
import random
import shutil
import sqlite3
import tempfile

import pytest

import aurora
import aurora.sqlite as aurora_sqlite
from aurora.cluster import Cluster

pytestmark = [
    pytest.mark.process,
    # aurora/cluster.py's Cluster._answers leaks a socket when a node does not answer yet
    # (see tests/test_sqlite.py); that is the cluster's to fix, not this test's.
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"),
]

PAGES_PER_PG = 64                 # 256 KiB per PG: a few MB of data spans many PGs
LOG_FILE_BYTES = 1 << 20
TABLES = ("t0", "t1", "t2", "t3")
CONNECTIONS = 2                   # per side: commits of one must be seen by the other
HISTORY_SHOWN = 40                # statements printed before a mismatch
CI_SEEDS = (1, 2)
CI_STATEMENTS = 1000
SLOW_SEEDS = tuple(range(100, 110))
SLOW_STATEMENTS = 6000


@pytest.fixture
def cluster():
    data_dir = tempfile.mkdtemp(prefix="aur-diff-")    # short: node socket paths
    with Cluster.local(data_dir, log_file_bytes=LOG_FILE_BYTES, pages_per_pg=PAGES_PER_PG) as c:
        yield c
    shutil.rmtree(data_dir, ignore_errors=True)


# ---- the workload ---------------------------------------------------------------------------

class Workload:
    """Draws statements from a seeded RNG.  It looks at the reference database (never the one
    under test) to know which tables, columns and indexes exist, so a rolled-back DDL does
    not derail it."""

    def __init__(self, seed, reference):
        self.rng = random.Random(seed)
        self.reference = reference
        self.in_transaction = None        # index of the connection holding a transaction
        self.savepoints = []
        self.savepoint_serial = 0

    # -- introspection of the reference --
    def tables(self):
        return [r[0] for r in self.reference.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def columns(self, table):
        return [r[1] for r in self.reference.execute("PRAGMA table_info(%s)" % table)]

    def indexes(self):
        return [r[0] for r in self.reference.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")]

    # -- values --
    def value(self, column):
        rng = self.rng
        if rng.random() < 0.05:
            return None
        if column in ("id",):
            return rng.randint(1, 400)
        if column == "a":
            return rng.randint(-50, 50)
        if column == "b":
            return "b%d" % rng.randint(0, 60) + ("x" * rng.choice((0, 0, 10, 200)))
        if column == "c":
            return round(rng.uniform(-1000, 1000), rng.choice((0, 2, 6)))
        if column == "d":
            # Mostly small; sometimes past a page, so rows overflow onto chains of pages.
            size = rng.choice((0, 16, 100, 700, 1500, 3000, 5000, 12000))
            return rng.randbytes(size)
        return rng.choice((rng.randint(0, 9), "e%d" % rng.randint(0, 9)))

    # -- statements: (connection index, sql, parameters, many) --
    def next(self):
        rng = self.rng
        tables = self.tables()
        if self.in_transaction is not None:
            conn = self.in_transaction
            if rng.random() < 0.08:
                return conn, self.end_transaction(), (), False
            if rng.random() < 0.08:
                return conn, self.savepoint_step(), (), False
            if rng.random() < 0.15:
                # The other connection reads committed state while this one writes.
                other = (conn + 1) % CONNECTIONS
                sql, params = self.query(tables) if tables else ("SELECT 1", ())
                return other, sql, params, False
        else:
            conn = rng.randrange(CONNECTIONS)
            if rng.random() < 0.30:
                # Mostly explicit transactions: every autocommit write is a commit, and a
                # commit is a round trip to six nodes.
                self.in_transaction = conn
                return conn, rng.choice(("BEGIN", "BEGIN IMMEDIATE", "BEGIN DEFERRED")), (), False
            if rng.random() < 0.03:
                # A SAVEPOINT outside a transaction opens one.
                self.in_transaction = conn
                return conn, self.savepoint_step(), (), False
        if not tables or rng.random() < 0.04:
            return (conn,) + self.ddl(tables) + (False,)
        roll = rng.random()
        if roll < 0.40:
            return (conn,) + self.insert(tables)
        if roll < 0.55:
            return (conn,) + self.update(tables) + (False,)
        if roll < 0.63:
            return (conn,) + self.delete(tables) + (False,)
        return (conn,) + self.query(tables) + (False,)

    def end_transaction(self):
        self.in_transaction = None
        self.savepoints = []
        return "COMMIT" if self.rng.random() < 0.65 else "ROLLBACK"

    def savepoint_step(self):
        rng = self.rng
        if self.savepoints and rng.random() < 0.6:
            name = rng.choice(self.savepoints)
            if rng.random() < 0.5:
                # ROLLBACK TO keeps the savepoint (and discards the ones after it).
                del self.savepoints[self.savepoints.index(name) + 1:]
                return "ROLLBACK TO %s" % name
            # RELEASE of the savepoint that opened the transaction commits it; the runner
            # then sees SQLite's in_transaction drop and calls settle().
            del self.savepoints[self.savepoints.index(name):]
            return "RELEASE %s" % name
        self.savepoint_serial += 1
        name = "sp%d" % self.savepoint_serial
        self.savepoints.append(name)
        return "SAVEPOINT %s" % name

    def settle(self, in_transaction):
        """Follow SQLite's own idea of which connection holds a transaction."""
        if in_transaction is None:
            self.savepoints = []
        self.in_transaction = in_transaction

    def ddl(self, tables):
        rng = self.rng
        missing = [t for t in TABLES if t not in tables]
        roll = rng.random()
        if missing and (roll < 0.5 or not tables):
            table = rng.choice(missing)
            if rng.random() < 0.25:
                return ("CREATE TABLE %s (id INTEGER PRIMARY KEY, a INTEGER NOT NULL DEFAULT 0, b TEXT, "
                        "c REAL, d BLOB, CHECK (a > -1000)) WITHOUT ROWID" % table, ())
            return ("CREATE TABLE %s (id INTEGER PRIMARY KEY, a INTEGER NOT NULL DEFAULT 0, b TEXT, "
                    "c REAL, d BLOB, CHECK (a > -1000))" % table, ())
        table = rng.choice(tables)
        if roll < 0.75:
            column, unique = rng.choice((("a", ""), ("b", ""), ("b, c", ""), ("c", "UNIQUE "),
                                         ("a, b", "UNIQUE "), ("length(d)", "")))
            name = "%s_%s" % (table, column.replace(", ", "_").replace("(", "_").replace(")", ""))
            return ("CREATE %sINDEX IF NOT EXISTS %s ON %s (%s)" % (unique, name, table, column), ())
        if roll < 0.85:
            indexes = self.indexes()
            if indexes:
                return ("DROP INDEX %s" % rng.choice(indexes), ())
        if roll < 0.95 and len(self.columns(table)) < 8:
            extra = "e%d" % len(self.columns(table))
            return ("ALTER TABLE %s ADD COLUMN %s TEXT DEFAULT 'new'" % (table, extra), ())
        if len(tables) > 1:
            return ("DROP TABLE %s" % table, ())
        return ("CREATE INDEX IF NOT EXISTS %s_a ON %s (a)" % (table, table), ())

    def insert(self, tables):
        rng = self.rng
        table = rng.choice(tables)
        columns = self.columns(table)
        if rng.random() < 0.1 and len(tables) > 1:
            source = rng.choice([t for t in tables if t != table])
            return ("INSERT OR IGNORE INTO %s (id, a, b, c, d) SELECT id + ?, a, b, c, d FROM %s "
                    "WHERE a %% 3 = ? LIMIT 30" % (table, source), (rng.randint(0, 500), rng.randint(0, 2)), False)
        verb = rng.choice(("INSERT", "INSERT", "INSERT", "INSERT OR REPLACE", "INSERT OR IGNORE"))
        chosen = [c for c in columns if c != "id" or rng.random() < 0.5]
        sql = "%s INTO %s (%s) VALUES (%s)" % (verb, table, ", ".join(chosen), ", ".join("?" * len(chosen)))
        if rng.random() < 0.25:
            rows = [tuple(self.value(c) for c in chosen) for _ in range(rng.randint(2, 25))]
            return sql, rows, True
        return sql, tuple(self.value(c) for c in chosen), False

    def update(self, tables):
        rng = self.rng
        table = rng.choice(tables)
        columns = [c for c in self.columns(table) if c != "id"]
        column = rng.choice(columns)
        where, params = self.where()
        if column == "a":
            return "UPDATE %s SET a = a + ? WHERE %s" % (table, where), (rng.randint(-3, 3),) + params
        if column == "d" and rng.random() < 0.5:
            return ("UPDATE %s SET d = zeroblob(?) WHERE %s" % (table, where),
                    (rng.choice((0, 300, 4000, 9000)),) + params)
        return "UPDATE %s SET %s = ? WHERE %s" % (table, column, where), (self.value(column),) + params

    def delete(self, tables):
        table = self.rng.choice(tables)
        where, params = self.where()
        return "DELETE FROM %s WHERE %s" % (table, where), params

    def where(self):
        rng = self.rng
        return rng.choice((
            ("id = ?", (rng.randint(1, 400),)),
            ("id %% %d = ?" % rng.choice((3, 7, 11)), (rng.randint(0, 2),)),
            ("a BETWEEN ? AND ?", (rng.randint(-50, 0), rng.randint(0, 50))),
            ("b = ?", ("b%d" % rng.randint(0, 60),)),
            ("c > ?", (rng.uniform(-1000, 1000),)),
            ("length(d) > ?", (rng.choice((100, 1000, 5000)),)),
        ))

    def query(self, tables):
        rng = self.rng
        table = rng.choice(tables)
        other = rng.choice(tables)
        where, params = self.where()
        return rng.choice((
            ("SELECT * FROM %s WHERE %s ORDER BY id" % (table, where), params),
            ("SELECT id, a, b, c, length(d), hex(substr(d, 1, 8)) FROM %s ORDER BY id LIMIT ? OFFSET ?"
             % table, (rng.randint(1, 50), rng.randint(0, 100))),
            ("SELECT count(*), sum(a), total(c), min(b), max(b), max(length(d)), count(DISTINCT a) FROM %s"
             % table, ()),
            ("SELECT a %% 5, count(*), sum(length(d)), group_concat(id) FROM "
             "(SELECT * FROM %s ORDER BY id) GROUP BY a %% 5 HAVING count(*) > ? ORDER BY 1" % table,
             (rng.randint(0, 3),)),
            ("SELECT x.id, y.id, x.a, y.b FROM %s x JOIN %s y ON x.a = y.a WHERE x.id < y.id "
             "ORDER BY x.id, y.id LIMIT 60" % (table, other), ()),
            ("SELECT x.id, count(y.id) FROM %s x LEFT JOIN %s y ON y.b = x.b GROUP BY x.id "
             "ORDER BY x.id LIMIT 60" % (table, other), ()),
            ("SELECT id FROM %s WHERE a IN (SELECT a FROM %s WHERE %s) ORDER BY id" % (table, other, where),
             params),
            ("SELECT b, c FROM %s WHERE b >= ? ORDER BY b, c, id LIMIT 20" % table,
             ("b%d" % rng.randint(0, 60),)),
        ))


# ---- running it side by side ----------------------------------------------------------------

def outcome(connection, sql, params, many):
    try:
        if many:
            cursor = connection.executemany(sql, params)
            return ("ok", cursor.rowcount)
        cursor = connection.execute(sql, params)
        return ("ok", cursor.fetchall(), cursor.rowcount)
    except sqlite3.Error as exc:
        return ("error", type(exc).__name__, str(exc))


def shown(sql, params, many):
    text = repr(params)
    return "%s  %s%s" % (sql, "many " if many else "", text if len(text) < 200 else text[:200] + "...")


def run_workload(seed, statements, cluster, tmp_path):
    reference_path = str(tmp_path / ("reference-%d.db" % seed))
    reference = [sqlite3.connect(reference_path, isolation_level=None, timeout=2)
                 for _ in range(CONNECTIONS)]
    for connection in reference:
        connection.execute("PRAGMA synchronous=OFF")   # the reference need not be durable
    under_test = [aurora.connect(cluster, isolation_level=None, timeout=2) for _ in range(CONNECTIONS)]
    workload = Workload(seed, reference[0])
    history = []

    def fail(what):
        lines = "\n".join("  %5d [conn %d] %s" % entry for entry in history[-HISTORY_SHOWN:])
        pytest.fail("seed %d: %s\nlast statements:\n%s" % (seed, what, lines), pytrace=False)

    try:
        for n in range(statements):
            conn, sql, params, many = workload.next()
            history.append((n, conn, shown(sql, params, many)))
            expected = outcome(reference[conn], sql, params, many)
            got = outcome(under_test[conn], sql, params, many)
            if got != expected:
                fail("statement %d differs:\n  plain SQLite: %r\n  aurora:       %r" % (n, expected, got))
            for i in range(CONNECTIONS):
                if reference[i].in_transaction != under_test[i].in_transaction:
                    fail("after statement %d, connection %d: in_transaction %s on plain SQLite, %s on aurora"
                         % (n, i, reference[i].in_transaction, under_test[i].in_transaction))
            holders = [i for i in range(CONNECTIONS) if reference[i].in_transaction]
            assert len(holders) <= 1, "seed %d: the workload opened two transactions" % seed
            workload.settle(holders[0] if holders else None)
        if workload.in_transaction is not None:
            for side in (reference, under_test):
                side[workload.in_transaction].execute("COMMIT")
        expected_dump = list(reference[0].iterdump())
        if list(under_test[1].iterdump()) != expected_dump:
            fail("iterdump() differs at the end")
        integrity = under_test[0].execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            fail("integrity_check on aurora: %r" % integrity)
        pages = under_test[0].execute("PRAGMA page_count").fetchone()[0]
    finally:
        for connection in under_test + reference:
            connection.close()
    # Writer recovery: a new Volume of the same fleet sees exactly the same database.
    aurora_sqlite.close(cluster)
    again = aurora.connect(cluster)
    try:
        if list(again.iterdump()) != expected_dump:
            fail("iterdump() differs after the volume was reopened")
        if again.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
            fail("integrity_check after reopening")
    finally:
        again.close()
        aurora_sqlite.close(cluster)
    return pages


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_same_results_as_a_plain_sqlite_file(seed, cluster, tmp_path):
    pages = run_workload(seed, CI_STATEMENTS, cluster, tmp_path)
    assert pages > 2 * PAGES_PER_PG, "seed %d: the database should span several PGs (%d pages)" % (seed, pages)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_same_results_as_a_plain_sqlite_file_long(seed, tmp_path, request):
    # Deselected by default (pyproject: -m "not slow"); the fleet starts only when it runs.
    run_workload(seed, SLOW_STATEMENTS, request.getfixturevalue("cluster"), tmp_path)


@pytest.mark.slow
def test_env_seed(tmp_path, request):
    """AURORA_DIFF_SEED=<n> [AURORA_DIFF_STATEMENTS=<m>] runs one more seed (reproducing a
    failure seen elsewhere); skipped otherwise."""
    seed = os.environ.get("AURORA_DIFF_SEED")
    if seed is None:
        pytest.skip("set AURORA_DIFF_SEED to run one chosen seed")
    run_workload(int(seed), int(os.environ.get("AURORA_DIFF_STATEMENTS", CI_STATEMENTS)),
                 request.getfixturevalue("cluster"), tmp_path)

"""SQLite on aurora: aurora.connect(), the VFS (csrc/vfs.c) and its Cython layer.

Every test that takes ``db`` runs against two backends: ``fake`` (tests/sqlite_fake.py, an
in-memory Volume with the writer's API) and ``real`` (an embedded 6-node fleet through
aurora.writer.Volume).
"""
import importlib.util
import os
import pathlib
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import aurora
import aurora.sqlite as aurora_sqlite
from aurora import _native, errors

_spec = importlib.util.spec_from_file_location(
    "sqlite_fake", pathlib.Path(__file__).with_name("sqlite_fake.py"))
sqlite_fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sqlite_fake)

WAL_MESSAGE = "aurora: WAL is not supported"


# ---- backends ---------------------------------------------------------------------------------

class FakeBackend:
    name = "fake"

    def __init__(self, tmp_path):
        self.store = sqlite_fake.FakeStore()
        self.volume = self.store.open_volume()

    def target(self):
        return self.volume

    def connect(self, **kwargs):
        return aurora.connect(self.volume, **kwargs)

    def reopen(self):
        """A new writer of the same storage (the fake's 'new cluster on the same data dir')."""
        self.volume.close()
        self.volume = self.store.open_volume()

    def stats(self):
        return self.volume.stats

    def close(self):
        self.volume.close()


class RealBackend:
    name = "real"

    def __init__(self, tmp_path):
        self.data_dir = str(tmp_path / "fleet")

    def target(self):
        return self.data_dir

    def connect(self, **kwargs):
        return aurora.connect(self.data_dir, **kwargs)

    def reopen(self):
        aurora_sqlite.close(self.data_dir)

    def stats(self):
        return aurora_sqlite.vfs_for(self.connect()).volume.stats

    def close(self):
        aurora_sqlite.close(self.data_dir)


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.process)])
def backend(request, tmp_path):
    if request.param == "real":
        b = RealBackend(tmp_path)
    else:
        b = FakeBackend(tmp_path)
    yield b
    b.close()


@pytest.fixture
def db(backend):
    connection = backend.connect()
    yield connection
    connection.close()


# ---- basics -----------------------------------------------------------------------------------

def test_connect_returns_a_plain_sqlite3_connection(db):
    assert isinstance(db, sqlite3.Connection)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    assert db.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert aurora.connect is aurora_sqlite.connect
    assert aurora_sqlite.sqlite_library_version() == sqlite3.sqlite_version


def test_create_insert_select(db):
    db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)")
    with db:
        db.executemany("INSERT INTO kv VALUES (?, ?)", [("k%d" % i, i) for i in range(100)])
    assert db.execute("SELECT count(*), sum(v) FROM kv").fetchone() == (100, 4950)
    assert db.execute("SELECT v FROM kv WHERE k = 'k42'").fetchone() == (42,)
    assert [r[0] for r in db.execute("SELECT k FROM kv ORDER BY v LIMIT 3")] == ["k0", "k1", "k2"]


def test_commit_and_rollback(db):
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.execute("INSERT INTO t VALUES (2)")
    db.rollback()
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    with pytest.raises(ZeroDivisionError):
        with db:
            db.execute("INSERT INTO t VALUES (3)")
            raise ZeroDivisionError
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    state = aurora_sqlite.vfs_for(db).lock_state()
    assert not state["reserved"] and not state["exclusive"] and not state["poisoned"]


def test_other_connections_see_commits_not_open_transactions(backend):
    a, b = backend.connect(), backend.connect()
    try:
        a.execute("CREATE TABLE t (x)")
        a.commit()
        a.execute("INSERT INTO t VALUES (1)")
        assert b.execute("SELECT count(*) FROM t").fetchone() == (0,)
        a.commit()
        assert b.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        a.close()
        b.close()


def test_threads_with_their_own_connections_insert_concurrently(backend):
    setup = backend.connect()
    setup.execute("CREATE TABLE t (thread INTEGER, n INTEGER, PRIMARY KEY (thread, n))")
    setup.commit()
    threads_count, rows_per_thread = 8, 40
    failures = []

    def work(thread_no):
        connection = backend.connect(timeout=30.0)
        try:
            for n in range(rows_per_thread):
                with connection:
                    connection.execute("INSERT INTO t VALUES (?, ?)", (thread_no, n))
        except Exception as exc:
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    rows = setup.execute("SELECT thread, n FROM t ORDER BY thread, n").fetchall()
    assert rows == [(t, n) for t in range(threads_count) for n in range(rows_per_thread)]
    assert setup.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    state = aurora_sqlite.vfs_for(setup).lock_state()
    assert (state["shared"], state["reserved"], state["exclusive"]) == (0, False, False)
    setup.close()


def test_big_transaction_spanning_many_pages(db):
    db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, payload BLOB)")
    db.commit()
    # ~6 MB: past SQLite's 2 MB page cache, so it spills pages before the commit.
    rows = [(i, os.urandom(600)) for i in range(10000)]
    with db:
        db.executemany("INSERT INTO big VALUES (?, ?)", rows)
    assert db.execute("SELECT count(*), sum(length(payload)) FROM big").fetchone() == (10000, 6000000)
    assert db.execute("SELECT payload FROM big WHERE id = 7777").fetchone()[0] == rows[7777][1]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 1500
    # A big transaction that spills and then rolls back leaves nothing behind.
    db.execute("UPDATE big SET payload = zeroblob(600)")
    db.executemany("INSERT INTO big VALUES (?, ?)", [(20000 + i, b"x" * 600) for i in range(5000)])
    db.rollback()
    assert db.execute("SELECT payload FROM big WHERE id = 7777").fetchone()[0] == rows[7777][1]
    assert db.execute("SELECT count(*) FROM big").fetchone() == (10000,)
    assert db.execute("PRAGMA page_count").fetchone()[0] == pages
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # Shrinking: the header's page count drives the size.
    db.execute("DELETE FROM big WHERE id >= 1000")
    db.commit()
    db.execute("VACUUM")
    assert db.execute("PRAGMA page_count").fetchone()[0] < pages // 5
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM big").fetchone() == (1000,)


def test_reopen_sees_everything(backend):
    db = backend.connect()
    db.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT)")
    with db:
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, "row %d" % i) for i in range(3000)])
    db.close()
    backend.reopen()
    again = backend.connect()
    try:
        assert again.execute("SELECT count(*), max(x) FROM t").fetchone() == (3000, 2999)
        assert again.execute("SELECT y FROM t WHERE x = 1234").fetchone() == ("row 1234",)
        assert again.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        again.close()


def test_wal_refused_with_the_aurora_message(db):
    with pytest.raises(sqlite3.OperationalError, match=WAL_MESSAGE) as info:
        db.execute("PRAGMA journal_mode=WAL")
    assert "journal_mode=MEMORY" in str(info.value) and "mini-transaction" in str(info.value)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    # Journal modes that would put a file on local disk keep the journal in memory.
    assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "memory"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "memory"


def test_page_size_and_exclusive_locking_refused(db):
    db.execute("CREATE TABLE t (x)")
    db.commit()
    with pytest.raises(sqlite3.OperationalError, match="page_size=8192 refused.*4096"):
        db.execute("PRAGMA page_size=8192")
    db.execute("PRAGMA page_size=4096")
    with pytest.raises(sqlite3.OperationalError, match="locking_mode=exclusive refused"):
        db.execute("PRAGMA locking_mode=exclusive")


def test_integrity_check_ok_after_mixed_work(db):
    db.executescript("""
        CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);
        CREATE INDEX a_v ON a (v);
        CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a(id), w BLOB);
    """)
    for round_no in range(5):
        with db:
            db.executemany("INSERT INTO a (v) VALUES (?)", [("v%d-%d" % (round_no, i),) for i in range(300)])
            db.executemany("INSERT INTO b (a_id, w) VALUES (?, randomblob(200))", [(i,) for i in range(1, 300)])
        with db:
            db.execute("DELETE FROM a WHERE id % 7 = 0")
            db.execute("UPDATE b SET w = randomblob(50) WHERE id % 3 = 0")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_synchronous_off_commits_at_unlock(backend):
    db = backend.connect()
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE t (x)")
    with db:
        db.execute("INSERT INTO t VALUES (1)")
    other = backend.connect()
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]
    db.close()
    other.close()


def test_one_row_update_ships_tens_of_bytes(backend):
    db = backend.connect()
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    with db:
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, "value %05d" % i) for i in range(200)])
    stats = aurora_sqlite.vfs_for(db).volume.stats
    before = stats["batch_bytes"]
    with db:
        db.execute("UPDATE t SET v = 'changed 001' WHERE id = 100")
    shipped = stats["batch_bytes"] - before
    # Two records (page 1's change counter, the row's leaf page), each a delta of a few
    # bytes plus its header, in one batch: far below even one 4 KiB page.
    assert 0 < shipped < 512, shipped
    db.close()


# ---- SQLAlchemy and pandas, unchanged -------------------------------------------------------

def test_sqlalchemy_core(backend):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine("sqlite://", creator=backend.connect)
    metadata = sqlalchemy.MetaData()
    users = sqlalchemy.Table(
        "users", metadata,
        sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
        sqlalchemy.Column("name", sqlalchemy.String(50)))
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(users.insert(), [{"name": "ada"}, {"name": "grace"}, {"name": "edsger"}])
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.select(users.c.name).order_by(users.c.id)).scalars().all()
        assert names == ["ada", "grace", "edsger"]
    try:
        with engine.begin() as connection:
            connection.execute(users.insert(), [{"name": "rolled back"}])
            raise KeyError
    except KeyError:
        pass
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(users)).scalar() == 3
    engine.dispose()


def test_pandas_to_sql_and_read_sql(backend):
    pandas = pytest.importorskip("pandas")
    db = backend.connect()
    frame = pandas.DataFrame({"id": range(500), "x": [i * 0.5 for i in range(500)],
                              "label": ["L%d" % (i % 7) for i in range(500)]})
    frame.to_sql("frame", db, index=False)
    back = pandas.read_sql("SELECT * FROM frame ORDER BY id", db)
    pandas.testing.assert_frame_equal(back, frame)
    grouped = pandas.read_sql("SELECT label, count(*) AS n FROM frame GROUP BY label ORDER BY label", db)
    assert grouped["n"].sum() == 500
    db.close()


# ---- the commit pipeline, failures and fencing (fake: failures injected) --------------------

@pytest.fixture
def fake():
    b = FakeBackend(None)
    yield b
    b.close()


def test_pipelined_commits_release_the_write_lock_before_durability(fake):
    a, b = fake.connect(), fake.connect()
    a.execute("CREATE TABLE t (who TEXT)")
    a.commit()
    fake.volume.hold_durability = True
    done = []

    def commit_a():
        with a:
            a.execute("INSERT INTO t VALUES ('a')")
        done.append("a")

    thread = threading.Thread(target=commit_a)
    thread.start()
    deadline = time.monotonic() + 10
    while fake.volume.stats["mtrs"] < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fake.volume.stats["mtrs"] == 2 and done == []   # a's MTR is in the log, not durable
    # b takes the write lock and hands its own MTR to the log while a still waits.
    b_thread = threading.Thread(target=lambda: (b.execute("INSERT INTO t VALUES ('b')"), b.commit(), done.append("b")))
    b_thread.start()
    while fake.volume.stats["mtrs"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fake.volume.stats["mtrs"] == 3 and done == []
    fake.volume.release_durability()
    thread.join(10)
    b_thread.join(10)
    assert sorted(done) == ["a", "b"]
    assert sorted(r[0] for r in a.execute("SELECT who FROM t")) == ["a", "b"]
    a.close()
    b.close()


def test_failed_durability_wait_poisons_the_volume(fake):
    db = fake.connect()
    db.execute("CREATE TABLE t (x)")
    db.commit()
    fake.volume.hold_durability = True
    fake.volume.durability_error = errors.QuorumLost("PG 0 has 3 of 6 members reachable; needs 4")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="QuorumLost: PG 0 has 3 of 6.*poisoned") as info:
        db.commit()
    assert isinstance(info.value.__cause__, errors.QuorumLost)
    assert aurora_sqlite.vfs_for(db).lock_state()["poisoned"]
    # Every later write fails loudly, naming why, instead of a rollback clobbering commits.
    fake.volume.durability_error = None
    with pytest.raises(sqlite3.OperationalError, match="poisoned"):
        with db:
            db.execute("INSERT INTO t VALUES (2)")
    other = fake.connect()
    with pytest.raises(sqlite3.OperationalError, match="poisoned"):
        with other:
            other.execute("INSERT INTO t VALUES (3)")
    db.close()
    other.close()


def test_fenced_writer_commit_fails_clearly_and_database_stays_intact(fake):
    db = fake.connect()
    db.execute("CREATE TABLE t (x)")
    with db:
        db.execute("INSERT INTO t VALUES (1)")
    newer = fake.store.open_volume()          # a newer writer recovers the volume
    # The fake knows at once (its first read fails); the real writer may only learn it when
    # the nodes refuse the commit's batch: either way the error names the fencing.
    with pytest.raises(sqlite3.OperationalError, match="WriterFenced: writer of volume 'main'") as info:
        db.execute("INSERT INTO t VALUES (2)")
        db.commit()
    assert isinstance(info.value.__cause__, errors.WriterFenced)
    db.close()
    fresh = aurora.connect(newer)
    assert fresh.execute("SELECT x FROM t").fetchall() == [(1,)]
    assert fresh.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    fresh.close()
    newer.close()


@pytest.mark.process
def test_process_level_fencing(tmp_path):
    data_dir = str(tmp_path / "fleet")
    db = aurora.connect(data_dir)
    db.execute("CREATE TABLE t (who TEXT)")
    with db:
        db.execute("INSERT INTO t VALUES ('first')")
    script = ("import aurora, sys\n"
              "db = aurora.connect(sys.argv[1])\n"
              "with db:\n"
              "    db.execute(\"INSERT INTO t VALUES ('second process')\")\n"
              "db.close()\n")
    # cwd is not the source tree, and PYTHONPATH names the aurora this test imported, so
    # the child runs the same build (installed or in place).
    from aurora.node.process import _package_root
    env = dict(os.environ, PYTHONPATH=_package_root())
    subprocess.run([sys.executable, "-c", script, data_dir], check=True, env=env, timeout=120,
                   cwd=str(tmp_path))
    with pytest.raises(sqlite3.OperationalError, match="WriterFenced"):
        db.execute("INSERT INTO t VALUES ('fenced')")
        db.commit()
    db.close()
    aurora_sqlite.close(data_dir)
    again = aurora.connect(data_dir)
    try:
        assert sorted(r[0] for r in again.execute("SELECT who FROM t")) == ["first", "second process"]
        assert again.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        again.close()
        aurora_sqlite.close(data_dir)


# ---- the library, the header, the lock table -----------------------------------------------

def test_library_discovery_reports_what_is_missing(monkeypatch):
    libc = "libc.so.6" if sys.platform.startswith("linux") else "/usr/lib/libSystem.B.dylib"
    assert "symbol sqlite3_vfs_register not found" in _native.vfs_library_probe(libc)
    assert "cannot reach /nonexistent/libsqlite3.so" in _native.vfs_library_probe("/nonexistent/libsqlite3.so")
    import _sqlite3
    assert _native.vfs_library_probe(getattr(_sqlite3, "__file__", None)) is None
    monkeypatch.setattr(aurora_sqlite, "_library_bound", False)
    monkeypatch.setattr(_native, "vfs_library_load", lambda path: "symbol sqlite3_vfs_register not found in x")
    with pytest.raises(aurora_sqlite.SQLiteLibraryError, match="shared libsqlite3"):
        aurora.connect(sqlite_fake.FakeVolume())


def _header(page_count, change_counter, valid_for, page_size=4096):
    page = bytearray(page_size)
    page[:16] = b"SQLite format 3\0"
    page[16:18] = (1 if page_size == 65536 else page_size).to_bytes(2, "big")
    page[24:28] = change_counter.to_bytes(4, "big")
    page[28:32] = page_count.to_bytes(4, "big")
    page[92:96] = valid_for.to_bytes(4, "big")
    return bytes(page)


def test_header_database_bytes():
    assert _native.vfs_header_database_bytes(bytes(4096)) == 0
    assert _native.vfs_header_database_bytes(_header(10, 3, 3)) == 40960
    assert _native.vfs_header_database_bytes(_header(10, 3, 3, 65536)) == 655360
    assert _native.vfs_header_database_bytes(_header(10, 4, 3)) == 4096     # stale count
    assert _native.vfs_header_database_bytes(b"not sqlite".ljust(4096, b"\0")) == 4096
    with pytest.raises(errors.LengthError):
        _native.vfs_header_database_bytes(bytes(99))


def test_lock_table_is_shared_and_released(fake):
    a, b = fake.connect(), fake.connect()
    handle = aurora_sqlite.vfs_for(a)
    assert handle is aurora_sqlite.vfs_for(b)
    a.execute("CREATE TABLE t (x)")
    a.commit()
    a.execute("BEGIN IMMEDIATE")
    assert handle.lock_state()["reserved"]
    b_fast = fake.connect(timeout=0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        b_fast.execute("BEGIN IMMEDIATE")
    a.execute("INSERT INTO t VALUES (1)")
    a.commit()
    state = handle.lock_state()
    assert (state["shared"], state["reserved"], state["exclusive"]) == (0, False, False)
    assert state["open_files"] == 3
    b_fast.execute("BEGIN IMMEDIATE")
    b_fast.rollback()
    for connection in (a, b, b_fast):
        connection.close()
    assert handle.lock_state()["open_files"] == 0

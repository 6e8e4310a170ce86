"""PostgreSQL 15: a primary and two streaming standbys on 127.0.0.1, synchronous replication.

The "mirrored" database of the Aurora paper's comparison.  initdb makes the primary,
pg_basebackup (-R, WAL streamed) makes standbys s1 and s2; ``synchronous_standby_names`` is
switched between 'ANY 1 (s1, s2)' and 'FIRST 2 (s1, s2)' with ALTER SYSTEM + pg_reload_conf,
so both settings run on the same three servers.  synchronous_commit stays 'on' (a commit
returns once the chosen standbys have flushed its WAL).  The servers run as an unprivileged
user (postgres refuses root): the Debian package's ``postgres`` user, else one made with
useradd.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from bench.peers import common

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.01
BENCH_USER = "aurora-bench"
SYNC_SETTINGS = {"pg-sync-any1": "ANY 1 (s1, s2)", "pg-sync-first2": "FIRST 2 (s1, s2)"}
STANDBYS = ("s1", "s2")
RECOVERY_WRITERS = 2
RECOVERY_WRITE_S = 1.0


def bin_dir():
    for directory in PG_BIN_DIRS:
        if os.path.exists(os.path.join(directory, "initdb")):
            return directory
    found = shutil.which("pg_basebackup")
    return os.path.dirname(found) if found else None


def available():
    """None when PostgreSQL 15 and psycopg are usable, else why not."""
    if bin_dir() is None:
        return "PostgreSQL binaries (initdb, pg_basebackup) not found: run bench/install_peers.sh"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install '.[bench]'"
    return None


def _run_as():
    """(uid, gid) to run the servers as; None when this process is not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", BENCH_USER):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", BENCH_USER],
                   check=True, timeout=30)
    entry = pwd.getpwnam(BENCH_USER)
    return entry.pw_uid, entry.pw_gid


class Server:
    """One postgres process on a data directory."""

    def __init__(self, owner, data, port, socket_dir, name):
        self.owner, self.data, self.port, self.socket_dir, self.name = owner, data, port, socket_dir, name
        self.proc = None

    def start(self):
        log = open(self.data + ".log", "ab")
        kwargs = {"user": self.owner[0], "group": self.owner[1]} if self.owner else {}
        self.proc = subprocess.Popen([os.path.join(bin_dir(), "postgres"), "-D", self.data], cwd=self.socket_dir,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        log.close()

    def conninfo(self, dbname="postgres"):
        return "host=127.0.0.1 port=%d user=bench dbname=%s" % (self.port, dbname)

    def wait_accepting(self, timeout=START_TIMEOUT_S):
        import psycopg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("postgres %s exited with %s; see %s.log" % (self.name, self.proc.returncode, self.data))
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(POLL_S)
        raise TimeoutError("postgres %s did not accept connections in %.0f s" % (self.name, timeout))

    def pids(self):
        return common.descendants(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def kill(self):
        """SIGKILL the postmaster and every backend: a crash of the whole server."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(STOP_TIMEOUT_S)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)      # fast shutdown
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


def _write_conf(path, lines):
    with open(path, "a") as f:
        f.write("\n# bench/peers/postgres_peer.py\n" + "\n".join(lines) + "\n")


class PgClient(common.SqlClient):
    ph = "%s"

    def __init__(self, conn, client_id, tag):
        super().__init__(client_id, tag)
        self.conn = conn

    def execute(self, text, params=()):
        return self.conn.execute(self.sql(text), params).rowcount

    def query_one(self, text, params=()):
        return self.conn.execute(self.sql(text), params).fetchone()

    def transaction(self):
        return self.conn.transaction()

    def close(self):
        self.conn.close()


class PostgresCluster:
    """Primary + standbys s1, s2 in one temporary directory."""

    def __init__(self, scratch, standbys=STANDBYS, tag="pg"):
        self.owner = _run_as()
        if self.owner:
            os.chmod(scratch, os.stat(scratch).st_mode | 0o111)   # the server's user must reach its dir
        self.dir = tempfile.mkdtemp(prefix="%s-" % tag, dir=scratch)
        os.chmod(self.dir, 0o755)
        if self.owner:
            os.chown(self.dir, *self.owner)
        self.standby_names = standbys
        self.primary = None
        self.standbys = []

    def _as_owner(self, command, **kwargs):
        extra = {"user": self.owner[0], "group": self.owner[1]} if self.owner else {}
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.dir,
                              timeout=START_TIMEOUT_S, **extra, **kwargs)
        if done.returncode != 0:
            raise RuntimeError("%s failed (exit %d): %s" % (os.path.basename(command[0]), done.returncode,
                                                            done.stdout.strip()[-500:]))
        return done

    def start(self):
        bindir = bin_dir()
        data = os.path.join(self.dir, "primary")
        self._as_owner([os.path.join(bindir, "initdb"), "-D", data, "-U", "bench", "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"])
        self.primary = Server(self.owner, data, common.free_port(), self.dir, "primary")
        _write_conf(os.path.join(data, "postgresql.conf"), [
            "listen_addresses = '127.0.0.1'", "port = %d" % self.primary.port,
            "unix_socket_directories = '%s'" % self.dir, "max_connections = 200",
            "wal_level = replica", "max_wal_senders = 10", "hot_standby = on",
            "synchronous_commit = on", "fsync = on", "full_page_writes = on",
            "logging_collector = off", "log_min_messages = warning",
        ])
        with open(os.path.join(data, "pg_hba.conf"), "a") as f:
            f.write("host replication bench 127.0.0.1/32 trust\n")
        self.primary.start()
        self.primary.wait_accepting()
        for name in self.standby_names:
            standby_data = os.path.join(self.dir, name)
            self._as_owner([os.path.join(bindir, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                            "-U", "bench", "-D", standby_data, "-R", "-X", "stream", "--no-sync",
                            "-c", "fast"])
            server = Server(self.owner, standby_data, common.free_port(), self.dir, name)
            _write_conf(os.path.join(standby_data, "postgresql.auto.conf"), [
                "port = %d" % server.port,
                "primary_conninfo = 'host=127.0.0.1 port=%d user=bench application_name=%s'"
                % (self.primary.port, name),
            ])
            server.start()
            self.standbys.append(server)
        for server in self.standbys:
            server.wait_accepting()
        self.wait_streaming()

    def wait_streaming(self, timeout=START_TIMEOUT_S):
        import psycopg
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                names = {row[0] for row in conn.execute(
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")}
                if names >= set(self.standby_names):
                    return
                time.sleep(0.05)
        raise TimeoutError("standbys %s did not stream within %.0f s" % (self.standby_names, timeout))

    def set_sync(self, names):
        import psycopg
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '%s'" % names.replace("'", "''"))
            conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if conn.execute("SHOW synchronous_standby_names").fetchone()[0] == names:
                    states = [r[0] for r in conn.execute("SELECT sync_state FROM pg_stat_replication")]
                    if names == "" or any(s in ("sync", "quorum") for s in states):
                        return states
                time.sleep(0.05)
        raise TimeoutError("synchronous_standby_names = %r did not take effect" % names)

    def pids(self):
        return [pid for server in [self.primary] + self.standbys for pid in server.pids()]

    def stop(self):
        try:
            for server in self.standbys + [self.primary]:
                if server is not None:
                    server.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class PostgresPeer:
    """One synchronous_standby_names setting of a shared PostgresCluster."""

    kind = "postgres"

    def __init__(self, name, cluster):
        self.name = name
        self.cluster = cluster
        self.setting = SYNC_SETTINGS[name]
        self._admin = None

    def start(self):
        import psycopg
        self.sync_states = self.cluster.set_sync(self.setting)
        self._admin = psycopg.connect(self.cluster.primary.conninfo(), autocommit=True)
        if not self._admin.execute("SELECT to_regclass('kv')").fetchone()[0]:
            for statement in common.BOOKSTORE_SCHEMA:
                self._admin.execute(statement.replace(" REAL ", " DOUBLE PRECISION "))
            with self._admin.transaction():
                for table, rows in common.seed_rows():
                    with self._admin.cursor() as cur:
                        cur.executemany("INSERT INTO %s VALUES (%s)" % (table, ", ".join(["%s"] * len(rows[0]))), rows)
            self._admin.execute("VACUUM ANALYZE")

    def client(self, client_id, tag):
        import psycopg
        conn = psycopg.connect(self.cluster.primary.conninfo(), autocommit=True)
        return PgClient(conn, client_id, tag)

    def pids(self):
        return self.cluster.pids()

    def bytes_marker(self):
        return self._admin.execute("SELECT pg_current_wal_lsn()").fetchone()[0]

    def bytes_since(self, marker):
        wal = int(self._admin.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (marker,)).fetchone()[0])
        return {"replicated_bytes": wal * len(self.cluster.standbys), "wal_bytes": wal}

    def stop(self):
        if self._admin is not None:
            self._admin.close()


# ---- recovery: restart after SIGKILL during writes ---------------------------------------------

def postgres_recovery(sizes_mib, scratch):
    """Time from starting postgres to accepting connections after SIGKILL of the whole server
    during writes, per data size.  A single server (no standbys: their copies would only slow
    the load on this small machine); CHECKPOINT after each load, so that WAL replay covers the
    writes of the last second, as in steady state, not the bulk load."""
    import psycopg
    cluster = PostgresCluster(scratch, standbys=(), tag="pg-recovery")
    points = []
    try:
        cluster.start()
        server = cluster.primary
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE big (id BIGINT PRIMARY KEY, v BIGINT NOT NULL, pad TEXT NOT NULL)")
        for size in sizes_mib:
            with psycopg.connect(server.conninfo(), autocommit=True) as conn:
                for _ in range(1_000_000):
                    loaded = conn.execute("SELECT count(*) > 0 FROM big").fetchone()[0]
                    if loaded and conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] >= size << 20:
                        break
                    conn.execute("INSERT INTO big SELECT g, 0, repeat(md5(g::text), 31) FROM generate_series("
                                 "(SELECT coalesce(max(id), 0) + 1 FROM big), (SELECT coalesce(max(id), 0) + 4000 FROM big)) g")
                data_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                rows = conn.execute("SELECT max(id) FROM big").fetchone()[0]
                conn.execute("CHECKPOINT")
            stop = threading.Event()

            def writer(seed):
                import random
                rng = random.Random(seed)
                try:
                    with psycopg.connect(server.conninfo(), autocommit=True) as db:
                        while not stop.is_set():
                            with db.transaction():
                                for _ in range(20):
                                    db.execute("UPDATE big SET v = v + 1 WHERE id = %s", (rng.randint(1, rows),))
                except Exception:
                    pass        # psycopg.Error: the server was killed under it

            threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(RECOVERY_WRITERS)]
            for t in threads:
                t.start()
            time.sleep(RECOVERY_WRITE_S)
            server.kill()
            stop.set()
            for t in threads:
                t.join(STOP_TIMEOUT_S)
            started = time.perf_counter()
            server.start()
            server.wait_accepting()
            with psycopg.connect(server.conninfo()) as conn:
                conn.execute("SELECT v FROM big WHERE id = 1").fetchone()
            seconds = time.perf_counter() - started
            points.append({"size_mib": size, "data_bytes": data_bytes, "recovery_s": round(seconds, 4)})
    finally:
        cluster.stop()
    return points

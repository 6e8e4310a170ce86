"""aurora.connect on a local fleet of 6 storage-node processes in 3 AZ folders.

The writer runs inside the benchmark's process (that is where aurora's writer lives), so the
process's own CPU is the writer's plus the clients'; the six node processes are the peer's.
"""
import shutil
import tempfile
import time

from bench.peers import common
from bench.peers.sqlite_peer import SqliteClient, create_schema, kill_child, run_recovery_child

BUSY_TIMEOUT_S = 60.0
NODE_COPIES = 6


class AuroraPeer:
    kind = "aurora"

    def __init__(self, scratch):
        self.name = "aurora"
        self.dir = tempfile.mkdtemp(prefix="aurora-", dir=scratch)
        self.cluster = None
        self.volume = None
        self._admin = None

    def start(self):
        import aurora
        from aurora import sqlite as aurora_sqlite
        from aurora.cluster import Cluster
        self.cluster = Cluster.local(self.dir)
        self._admin = aurora.connect(self.cluster, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self.volume = aurora_sqlite.volume_of(self._admin)
        create_schema(self._admin)

    def client(self, client_id, tag):
        import aurora
        conn = aurora.connect(self.volume, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        return SqliteClient(conn, client_id, tag)

    def pids(self):
        return [node.process.proc.pid for node in self.cluster.nodes
                if node.process is not None and node.process.proc is not None]

    def bytes_marker(self):
        return dict(self.volume.stats)

    def bytes_since(self, marker):
        now = self.volume.stats
        records = now["records"] - marker["records"]
        return {
            "replicated_bytes": now["bytes_shipped"] - marker["bytes_shipped"],
            "whole_page_bytes": records * self.volume.page_size * NODE_COPIES,
            "records": records,
            "mtrs": now["mtrs"] - marker["mtrs"],
        }

    def stop(self):
        from aurora import sqlite as aurora_sqlite
        try:
            if self.cluster is not None:
                aurora_sqlite.close(self.cluster)
                self.cluster.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def aurora_recovery(sizes_mib, scratch):
    """The writer's reopen time (aurora.connect + first query) after SIGKILL during writes,
    per data size; the fleet stays up, as it would when only the writer's host dies."""
    import aurora
    from aurora import sqlite as aurora_sqlite
    from aurora.cluster import Cluster
    directory = tempfile.mkdtemp(prefix="aurora-recovery-", dir=scratch)
    cluster = Cluster.local(directory)
    points = []
    try:
        for size in sizes_mib:
            child, data_bytes = run_recovery_child("aurora", directory, size << 20)
            kill_child(child)
            started = time.perf_counter()
            conn = aurora.connect(cluster, timeout=BUSY_TIMEOUT_S)
            conn.execute("SELECT v FROM big WHERE id = 1").fetchone()
            seconds = time.perf_counter() - started
            volume = aurora_sqlite.volume_of(conn)
            points.append({"size_mib": size, "data_bytes": data_bytes, "recovery_s": round(seconds, 4),
                           "writer_recovery_s": round(volume.recovery_seconds, 4),
                           "records_listed": volume.recovery.get("records_listed", 0)})
            conn.close()
            aurora_sqlite.close(cluster)   # release the volume so the next child can open it
    finally:
        aurora_sqlite.close(cluster)
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)
    return points

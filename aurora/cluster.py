"""A fleet of storage nodes: started locally (the embedded default) or attached to.

`Cluster.local(data_dir)` starts (or re-attaches to) six node processes, two per AZ folder,
watches them and stops the ones it started on exit; they listen on Unix sockets (file modes
protect them; no TLS).  `Cluster.connect(addresses, tls=...)` attaches to nodes started
elsewhere with `aurora node serve`; over TCP it speaks TLS with the given identity
(aurora/tls.py), which every connection of the writer, recovery and tools then uses.  Volume geometry, PG membership and epochs
are not kept here: they live on the nodes, quorum-written (aurora/writer.py), so no single
file is the only copy.  The only local file is the fleet's address book, cluster.json.
"""
import hashlib
import json
import os
import tempfile

from aurora import errors
from aurora.client import NodeClient
from aurora.node.files import write_json_durably
from aurora.node.process import NodeProcess

CLUSTER_FILE = "cluster.json"
# Unix socket paths must fit sockaddr_un (108 bytes on Linux, 104 on macOS).
SOCKET_PATH_MAX = 100
PAGES_PER_PG_LOCAL_DEFAULT = 262144       # 1 GiB segments of 4 KiB pages on an embedded fleet


class Node:
    """One storage node of a cluster, started here or attached to."""

    def __init__(self, node_id, az, address, process=None, tls=None):
        self.node_id = node_id
        self.az = az
        self.address = address
        self.process = process
        self.tls = tls

    def __repr__(self):
        return "Node(%s, %s, %s, %s)" % (self.node_id, self.az, self.address,
                                         "up" if self.alive() else "down")

    def alive(self):
        if self.process is not None:
            return self.process.alive()
        try:
            with NodeClient(self.address, timeout=1.0, tls=self.tls) as client:
                client.status()
            return True
        except (OSError, errors.AuroraError):
            return False

    def _managed(self):
        if self.process is None:
            raise errors.AuroraError("node %s was started elsewhere; this cluster cannot kill or restart it"
                                     % self.node_id)
        return self.process

    def kill(self):
        """SIGKILL the node process: a crash."""
        self._managed().kill()

    def stop(self):
        """SIGTERM: a clean shutdown."""
        self._managed().stop()

    def start(self):
        self._managed().start()

    def restart(self):
        """Start the node again (after a kill or stop); it recovers from its files."""
        process = self._managed()
        if process.alive():
            process.kill()
        process.start()

    def status(self, timeout=2.0):
        with NodeClient(self.address, timeout=timeout, tls=self.tls) as client:
            return client.status()


class Cluster:
    def __init__(self, nodes, data_dir=None, pages_per_pg=None, tls=None):
        self.nodes = nodes
        self.data_dir = data_dir
        self.pages_per_pg = pages_per_pg
        self.tls = tls               # aurora.tls.TLSConfig for tcp: members, or None
        self._volumes = []

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def local(cls, data_dir, nodes=6, azs=3, log_file_bytes=None, pages_per_pg=PAGES_PER_PG_LOCAL_DEFAULT):
        """Start (or re-attach to) ``nodes`` node processes spread over ``azs`` AZ folders
        under ``data_dir``."""
        if nodes < 6 or azs < 3:
            raise ValueError("a fleet needs at least 6 nodes in 3 AZs (each PG has 2 copies in each of 3 AZs)")
        data_dir = os.path.abspath(data_dir)
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        book_path = os.path.join(data_dir, CLUSTER_FILE)
        book = None
        if os.path.exists(book_path):
            with open(book_path) as f:
                book = json.load(f)
        if book is None:
            socket_dir = cls._socket_dir(data_dir)
            entries = []
            for i in range(nodes):
                az = "az%d" % (i % azs + 1)
                node_id = "node-%d" % (i + 1)
                entries.append({"node_id": node_id, "az": az, "data": os.path.join(az, node_id),
                                "address": "unix:%s/%s.sock" % (socket_dir, node_id)})
            os.makedirs(socket_dir, mode=0o700, exist_ok=True)
            book = {"nodes": entries, "log_file_bytes": log_file_bytes, "pages_per_pg": pages_per_pg}
            write_json_durably(book_path, book)
        members = []
        cluster = cls([], data_dir, book.get("pages_per_pg") or pages_per_pg)
        try:
            for entry in book["nodes"]:
                process = NodeProcess(os.path.join(data_dir, entry["data"]), entry["address"], entry["node_id"],
                                      entry["az"], book.get("log_file_bytes"),
                                      log_path=os.path.join(data_dir, entry["data"] + ".log"))
                node = Node(entry["node_id"], entry["az"], entry["address"], process)
                if not cls._answers(node):
                    process.start(wait=False)
                else:
                    node.attached = True
                members.append(node)
            for node in members:
                if node.process.proc is not None:
                    node.process.wait_ready()
        except BaseException:
            for node in members:
                if node.process.proc is not None:
                    node.process.kill()
            raise
        cluster.nodes = members
        return cluster

    @staticmethod
    def _socket_dir(data_dir):
        candidate = os.path.join(data_dir, "run")
        if len(candidate) + len("/node-99.sock") <= SOCKET_PATH_MAX:
            return candidate
        digest = hashlib.sha1(data_dir.encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), "aurora-%s" % digest)

    @staticmethod
    def _answers(node):
        try:
            with NodeClient(node.address, timeout=1.0) as client:
                status = client.status()
            return status.get("node_id") == node.node_id
        except (OSError, errors.AuroraError, ValueError):
            return False

    @classmethod
    def connect(cls, addresses, pages_per_pg=None, tls=None):
        """Attach to running nodes; each tells its node id and AZ.  ``tls`` (an
        aurora.tls.TLSConfig: the cluster CA, this writer's certificate and key) is required
        to reach nodes that serve TLS, and used for every ``tcp:`` address."""
        nodes = []
        for address in addresses:
            with NodeClient(address, timeout=5.0, tls=tls) as client:
                status = client.status()
            nodes.append(Node(status["node_id"], status["az"], address, tls=tls))
        return cls(nodes, pages_per_pg=pages_per_pg, tls=tls)

    # ---- fleet operations ----------------------------------------------------------------

    def node(self, node_id):
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def azs(self):
        return sorted({node.az for node in self.nodes})

    def kill_az(self, az):
        """SIGKILL every node of one AZ: the loss of a whole failure domain."""
        killed = [node for node in self.nodes if node.az == az]
        if not killed:
            raise KeyError("no nodes in AZ %r" % az)
        for node in killed:
            node.kill()
        return killed

    def restart_az(self, az):
        for node in self.nodes:
            if node.az == az:
                node.restart()

    def node_states(self):
        return {node.node_id: {"az": node.az, "alive": node.alive()} for node in self.nodes}

    # ---- volumes ---------------------------------------------------------------------------

    def open_volume(self, name="main", page_size=4096, **options):
        """Open (creating if needed) a volume for writing.  Opening runs writer recovery and
        fences any earlier writer of the same volume."""
        from aurora.writer import Volume
        volume = Volume(self, name, page_size, **options)
        self._volumes.append(volume)
        return volume

    def close(self):
        for volume in self._volumes:
            try:
                volume.close()
            except errors.AuroraError:
                pass
        self._volumes = []
        for node in self.nodes:
            if node.process is not None and node.process.proc is not None:
                node.process.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

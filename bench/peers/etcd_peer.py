"""A 3-member etcd cluster on 127.0.0.1, driven through its v3 JSON gateway (HTTP, keep-alive).

etcd is a key-value store on a Raft log, not SQL: "bookstore" and "update" are one durable
single-key put (acknowledged once a majority, 2 of 3, has fsynced it), "select" a linearizable
single-key get, "mix" 90 % gets.  Each client keeps one HTTP connection to one member (client
i to member i mod 3), as etcd's client balancer would; puts on a follower go to the leader.
Bytes replicated are the members' peer-network bytes sent (etcd_network_peer_sent_bytes_total
from /metrics), which includes Raft heartbeats and acks.
"""
import base64
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time

from bench.peers import common

MEMBERS = 3
KEYS = 10_000
VALUE_BYTES = 100
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 30.0


def available():
    if shutil.which("etcd") is None:
        return "etcd not found: run bench/install_peers.sh (Debian etcd-server)"
    return None


def _b64(text):
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdClient:
    def __init__(self, port, client_id):
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
        self.rng = random.Random(client_id)
        self.value = _b64(os.urandom(VALUE_BYTES // 4 * 3))

    def call(self, path, body):
        self.http.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.http.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError("etcd %s: HTTP %d %s" % (path, response.status, data[:200]))
        return json.loads(data)

    def put(self):
        self.call("/v3/kv/put", {"key": _b64("k%d" % self.rng.randint(1, KEYS)), "value": self.value})

    def get(self):
        self.call("/v3/kv/range", {"key": _b64("k%d" % self.rng.randint(1, KEYS))})

    bookstore = update = put
    select = get

    def mix(self):
        if self.rng.random() < common.MIX_READ_FRACTION:
            self.get()
        else:
            self.put()

    def close(self):
        self.http.close()


class EtcdPeer:
    kind = "etcd"

    def __init__(self, scratch):
        self.name = "etcd-3"
        self.dir = tempfile.mkdtemp(prefix="etcd-", dir=scratch)
        self.procs = []
        self.client_ports = []

    def start(self):
        names = ["e%d" % (i + 1) for i in range(MEMBERS)]
        peer_ports = [common.free_port() for _ in names]
        self.client_ports = [common.free_port() for _ in names]
        initial = ",".join("%s=http://127.0.0.1:%d" % (n, p) for n, p in zip(names, peer_ports))
        for name, peer_port, client_port in zip(names, peer_ports, self.client_ports):
            log = open(os.path.join(self.dir, name + ".log"), "ab")
            self.procs.append(subprocess.Popen([
                "etcd", "--name", name, "--data-dir", os.path.join(self.dir, name),
                "--listen-client-urls", "http://127.0.0.1:%d" % client_port,
                "--advertise-client-urls", "http://127.0.0.1:%d" % client_port,
                "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port,
                "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer_port,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", "aurora-bench", "--log-level", "warn",
            ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._healthy(port) for port in self.client_ports):
                break
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError("etcd exited with %s; see %s" % (proc.returncode, self.dir))
            time.sleep(0.1)
        else:
            raise TimeoutError("etcd cluster not healthy within %.0f s" % START_TIMEOUT_S)
        seed = EtcdClient(self.client_ports[0], 0)
        for key in range(1, KEYS + 1, 50):      # a sample of keys exists; gets of the rest are empty
            seed.call("/v3/kv/put", {"key": _b64("k%d" % key), "value": seed.value})
        seed.close()

    @staticmethod
    def _healthy(port):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            ok = json.loads(conn.getresponse().read()).get("health") in ("true", True)
            conn.close()
            return ok
        except (OSError, ValueError):
            return False

    def client(self, client_id, tag):
        return EtcdClient(self.client_ports[client_id % MEMBERS], client_id)

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def _peer_bytes(self):
        total = 0.0
        for port in self.client_ports:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            for line in conn.getresponse().read().decode().splitlines():
                if line.startswith("etcd_network_peer_sent_bytes_total"):
                    total += float(line.rsplit(" ", 1)[1])
            conn.close()
        return total

    def bytes_marker(self):
        return self._peer_bytes()

    def bytes_since(self, marker):
        return {"replicated_bytes": self._peer_bytes() - marker}

    def stop(self):
        try:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.procs:
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

"""TLS with mutual authentication on TCP (aurora/tls.py, docs/protocol.md "Transport"): a
writer, recovery and gossip work through it on real node processes; clients without a
certificate of the cluster CA, plaintext and garbage are refused and never hurt the node."""
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from aurora import errors, protocol as p
from aurora.client import NodeClient
from aurora.cluster import Cluster
from aurora.node.process import NodeProcess, _package_root
from aurora.node.server import NodeServer
from aurora import tls as tls_module
from aurora.testing import HoldingProxy, RedoWorkload, wait_for
from aurora.tls import HANDSHAKE_TIMEOUT_S, HandshakeError, TLSConfig, TLSStream

pytestmark = pytest.mark.process

pytest.importorskip("cryptography")
from aurora.tls import make_test_certificates  # noqa: E402  (needs cryptography)

PAGE_SIZE = 4096
PAGES_PER_PG = 64
LOG_FILE_BYTES = 1 << 20
DEADLINE_S = 20.0
PORT_ATTEMPTS = 3


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_test_certificates(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """Another cluster's CA: its certificates must get nowhere in ours."""
    return make_test_certificates(str(tmp_path_factory.mktemp("other-certs")), name="other-cluster")


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_nodes(tmp_path, tls, count, host="127.0.0.1"):
    def make(i):
        (tmp_path / ("n%d" % i)).mkdir(parents=True, exist_ok=True)
        return NodeProcess(str(tmp_path / ("n%d" % i) / "data"), "tcp:%s:%d" % (host, free_port(host)),
                           "node-%d" % (i + 1), "az%d" % (i % 3 + 1), LOG_FILE_BYTES,
                           log_path=str(tmp_path / ("n%d.log" % i)), tls=tls)

    nodes = []
    try:
        for i in range(count):
            nodes.append(make(i))
            nodes[-1].start(wait=False)
        for i in range(count):
            for attempt in range(PORT_ATTEMPTS):
                try:
                    nodes[i].wait_ready()
                    break
                except RuntimeError:
                    # The free port was taken (by another test process) before the node bound it.
                    if attempt == PORT_ATTEMPTS - 1 or "Address already in use" not in node_log(nodes[i]):
                        raise
                    nodes[i] = make(i)
                    nodes[i].start(wait=False)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def node_log(node):
    with open(node.log_path) as f:
        return f.read()


# ---- configuration (in process) -----------------------------------------------------------

def test_config_needs_all_three_files(certs, tmp_path):
    assert TLSConfig.from_options(None, None, None) is None
    with pytest.raises(ValueError, match="missing --tls-key"):
        TLSConfig.from_options(certs.ca_file, certs.node_cert, None)
    with pytest.raises(FileNotFoundError, match="CA file"):
        TLSConfig(str(tmp_path / "nope.pem"), certs.node_cert, certs.node_key)
    # A key that is not this certificate's is found when the contexts are built.
    with pytest.raises(ValueError, match="TLS files unusable"):
        TLSConfig(certs.ca_file, certs.node_cert, certs.client_key).server_context
    context = certs.node_config().server_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert certs.client_config().client_context.check_hostname


def test_a_unix_listener_refuses_tls_options(certs, tmp_path):
    with pytest.raises(ValueError, match="Unix socket"):
        NodeServer(str(tmp_path / "data"), "unix:%s/n.sock" % tmp_path, "n1", "az1", tls=certs.node_config())


# ---- a writer on six TLS nodes ----------------------------------------------------------------

def test_writer_commits_reads_and_recovers_over_tls_on_six_tcp_nodes(certs, tmp_path):
    nodes = start_nodes(tmp_path, certs.node_config(), 6)
    try:
        addresses = [n.address for n in nodes]
        with pytest.raises(OSError):
            Cluster.connect(addresses[:1])      # no certificate: not even the node id
        cluster = Cluster.connect(addresses, pages_per_pg=PAGES_PER_PG, tls=certs.client_config())
        assert sorted(n.node_id for n in cluster.nodes) == ["node-%d" % i for i in range(1, 7)]
        volume = cluster.open_volume("v", PAGE_SIZE)
        expected = {}
        for i in range(30):
            page_no = (i * 37) % (PAGES_PER_PG * 3)
            data = os.urandom(PAGE_SIZE)
            volume.write(page_no, data)
            expected[page_no] = data
            lsn = volume.commit()
            assert volume.vdl >= lsn
        # Big MTRs: boxcars of many TLS records each.
        for i in range(4):
            for page_no in range(PAGES_PER_PG * i, PAGES_PER_PG * i + 40):
                expected[page_no] = os.urandom(PAGE_SIZE)
                volume.write(page_no, expected[page_no])
            volume.commit()
        assert all(link.connected for link in volume.links.values())
        assert all(volume.read(page_no) == data for page_no, data in expected.items())
        # Committers in several threads (the links' sender and receiver threads share each
        # TLS stream), while one member is down; it comes back and its link reconnects.
        nodes[1].kill()
        errors_seen = []

        def committer(t):
            try:
                for i in range(15):
                    page_no = PAGES_PER_PG * 5 + t * 16 + i
                    data = os.urandom(PAGE_SIZE)
                    volume.write(page_no, data)
                    volume.commit()
                    expected[page_no] = data
            except Exception as exc:   # noqa: BLE001  (reported below)
                errors_seen.append(exc)

        threads = [threading.Thread(target=committer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors_seen == []
        nodes[1].start()
        wait_for(lambda: volume.links["node-2"].connected, "the writer's link to node-2 to reconnect over TLS", DEADLINE_S)
        volume.commit()
        assert all(volume.read(page_no) == data for page_no, data in expected.items())
        volume.close()
        # A new writer recovers through TLS (metadata, recovery listing, SET_EPOCH) and reads
        # every page back from the nodes.
        volume = cluster.open_volume("v", PAGE_SIZE)
        assert all(volume.read(page_no) == data for page_no, data in expected.items())
        volume.close()
        cluster.close()
        # The one plaintext attempt above, and nothing of the writer's, was refused.
        assert [node_log(node).count("refused TLS client") for node in nodes] == [1, 0, 0, 0, 0, 0]
    finally:
        for node in nodes:
            node.stop()


def test_a_member_stopped_mid_record_holds_up_no_other_members_acks(certs, tmp_path, monkeypatch):
    """The writer's receiver reads all six TLS links from one thread.  A member whose reply
    stops halfway through a TLS record must not stop it: the other five carry commits."""
    # Long enough that a receiver waiting inside the record would fail every check below.
    monkeypatch.setattr(tls_module, "RECORD_WAIT_S", 120.0)
    nodes = start_nodes(tmp_path, certs.node_config(), 6)
    host, port = nodes[5].address.split(":")[1:]
    proxy = HoldingProxy(host, int(port))
    try:
        addresses = [n.address for n in nodes[:5]] + [proxy.address]
        cluster = Cluster.connect(addresses, pages_per_pg=PAGES_PER_PG, tls=certs.client_config())
        volume = cluster.open_volume("v", PAGE_SIZE)
        expected = {}

        def commit(page_no):
            expected[page_no] = os.urandom(PAGE_SIZE)
            volume.write(page_no, expected[page_no])
            volume.commit()

        commit(0)
        assert volume.links["node-6"].connected
        proxy.hold()
        done = []
        first = threading.Thread(target=lambda: (commit(1), done.append(1)), daemon=True)
        first.start()
        assert proxy.split.wait(DEADLINE_S), "node-6 sent no reply through the proxy"
        later = threading.Thread(target=lambda: ([commit(page_no) for page_no in range(2, 12)], done.append(2)),
                                 daemon=True)
        later.start()
        later.join(DEADLINE_S)
        first.join(DEADLINE_S)
        assert sorted(done) == [1, 2], "commits stalled behind node-6's half-sent TLS record"
        # The link was never given up: the record completes when the member goes on.
        assert volume.links["node-6"].connected
        proxy.release()
        commit(12)
        wait_for(lambda: volume.tracker.scl(0, volume.member_index[0]["node-6"]) >= volume.vdl,
                 "node-6 to acknowledge everything once its reply completes", DEADLINE_S)
        assert all(volume.read(page_no) == data for page_no, data in expected.items())
        volume.close()
        cluster.close()
    finally:
        proxy.close()
        for node in nodes:
            node.stop()


# ---- gossip between TLS nodes ---------------------------------------------------------------

def test_gossip_between_tls_nodes_fills_a_member_that_missed_records(certs, tmp_path):
    nodes = start_nodes(tmp_path, certs.node_config(), 3)
    tls = certs.client_config()
    addresses = [n.address for n in nodes]

    def client(i):
        return NodeClient(addresses[i], volume_id=1, volume_epoch=1, tls=tls)

    try:
        for i in range(3):
            with client(i) as c:
                c.create_segment(0, 1024, 32, peers=addresses)
        model = RedoWorkload(page_size=1024, pages_per_pg=32, pages=12, seed=7)
        batches = [model.batch(model.records(6)) for _ in range(30)]
        for i in (0, 1):
            with client(i) as c:
                c.append_many(batches)

        def caught_up():
            with client(2) as c:
                return c.status_segment(0)["scl"] == model.lsn

        wait_for(caught_up, "node 3 to catch up by gossip over TLS", DEADLINE_S)
        with client(2) as c:
            assert c.status()["gossip"]["records_accepted"] >= 30 * 6
            for page_no in model.page_numbers:
                assert c.get_page(0, page_no, model.lsn)[0] == model.page_at(page_no, model.lsn)
        for node in nodes:
            assert "refused TLS client" not in node_log(node)
    finally:
        for node in nodes:
            node.stop()


def test_gossip_to_a_plaintext_peer_gets_nothing(certs, tmp_path):
    """A node without the cluster's TLS identity cannot feed or be fed by TLS nodes."""
    tls_node = start_nodes(tmp_path / "a", certs.node_config(), 1)[0]
    plain_node = start_nodes(tmp_path / "b", None, 1)[0]
    try:
        model = RedoWorkload(page_size=1024, pages_per_pg=32, pages=4, seed=8)
        batch = model.batch(model.records(6))
        with NodeClient(plain_node.address, volume_id=1, volume_epoch=1) as c:
            c.create_segment(0, 1024, 32, peers=[tls_node.address])
            c.append(batch)
        with NodeClient(tls_node.address, volume_id=1, volume_epoch=1, tls=certs.client_config()) as c:
            c.create_segment(0, 1024, 32, peers=[plain_node.address])
            wait_for(lambda: "refused TLS client" in node_log(tls_node), "the TLS node to refuse plaintext gossip")
            time.sleep(0.3)
            assert c.status_segment(0)["scl"] == 0
    finally:
        tls_node.stop()
        plain_node.stop()


# ---- who gets in ----------------------------------------------------------------------------

def no_certificate_context(certs):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca_file)
    return context


def test_only_clients_with_a_certificate_of_the_cluster_ca_get_in(certs, other_certs, tmp_path):
    node = start_nodes(tmp_path, certs.node_config(), 1)[0]
    try:
        good = NodeClient(node.address, timeout=5.0, tls=certs.client_config())
        assert good.status()["node_id"] == "node-1"
        assert good.sock.version() in ("TLSv1.3", "TLSv1.2")

        # Plaintext: the node hangs up.
        with pytest.raises((ConnectionError, OSError)):
            with NodeClient(node.address, timeout=5.0) as c:
                c.status()
        # TLS without a client certificate.
        with pytest.raises(ConnectionError, match="certificate required"):
            raw = socket.create_connection(("127.0.0.1", int(node.address.rsplit(":", 1)[1])), timeout=5.0)
            try:
                stream = TLSStream(raw, no_certificate_context(certs), "127.0.0.1", 5.0)
            except BaseException:
                raw.close()
                raise
            try:
                stream.sendall(p.encode_frame(p.FRAME_STATUS, b""))
                stream.recv(4096)
            finally:
                stream.close()
        # A certificate of another CA (which trusts our node's CA, so only the node decides).
        stranger = TLSConfig(certs.ca_file, other_certs.client_cert, other_certs.client_key)
        with pytest.raises(ConnectionError, match="unknown ca"):
            with NodeClient(node.address, timeout=5.0, tls=stranger) as c:
                c.status()
        # A client of the other cluster does not take our node for one of its own.
        with pytest.raises(HandshakeError, match="certificate refused"):
            NodeClient(node.address, timeout=5.0, tls=other_certs.client_config())

        log_text = wait_for(lambda: (lambda t: t if t.count("refused TLS client") >= 4 else None)(node_log(node)),
                            "four refusals in the node's log")
        assert "not TLS (plaintext or garbage bytes)" in log_text
        assert "no client certificate" in log_text
        assert "certificate refused" in log_text
        # The good client's connection was never disturbed.
        assert good.status()["node_id"] == "node-1"
        good.close()
        assert node.alive()
    finally:
        node.stop()


def test_a_node_must_hold_a_server_certificate_naming_its_address(certs, tmp_path):
    """A client certificate (clientAuth only) cannot serve as a node, and a node certificate
    is good only for the hosts it names."""
    impostor = start_nodes(tmp_path / "impostor", TLSConfig(certs.ca_file, certs.client_cert, certs.client_key), 1)[0]
    elsewhere = start_nodes(tmp_path / "elsewhere", certs.node_config(), 1, host="127.0.0.2")[0]
    try:
        with pytest.raises(HandshakeError, match="certificate purpose"):
            NodeClient(impostor.address, timeout=5.0, tls=certs.client_config())
        with pytest.raises(HandshakeError, match="mismatch"):
            NodeClient(elsewhere.address, timeout=5.0, tls=certs.client_config())
    finally:
        impostor.stop()
        elsewhere.stop()


def test_garbage_and_stalled_handshakes_do_not_hurt_the_node(certs, tmp_path):
    node = start_nodes(tmp_path, certs.node_config(), 1)[0]
    port = int(node.address.rsplit(":", 1)[1])
    try:
        good = NodeClient(node.address, volume_id=1, volume_epoch=1, timeout=5.0, tls=certs.client_config())
        good.create_segment(0, 1024, 32)
        # A client that starts a handshake and goes silent holds nothing for long.
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"\x16\x03\x01\x02\x00")          # a TLS record header, then nothing
        started = time.monotonic()
        for seed in range(8):
            junk = socket.create_connection(("127.0.0.1", port))
            rng = __import__("random").Random(seed)
            try:
                junk.sendall(rng.randbytes(rng.choice([1, 40, 5000, 1 << 20])))
                junk.shutdown(socket.SHUT_WR)
            except OSError:
                pass    # refused before it had sent everything
            junk.settimeout(5.0)
            try:
                while junk.recv(65536):
                    pass
            except OSError:
                pass
            junk.close()
        # A plaintext frame that would change the epoch gets nowhere.
        sneaky = socket.create_connection(("127.0.0.1", port))
        sneaky.sendall(p.encode_frame(p.FRAME_SET_EPOCH, p.SET_EPOCH_BODY.pack(99, 0), 1, 1, 1, 0))
        sneaky.settimeout(5.0)
        try:
            assert sneaky.recv(4096) == b""
        except ConnectionResetError:
            pass
        sneaky.close()
        # The good client is served all along, at the epoch it set.
        model = RedoWorkload(page_size=1024, pages_per_pg=32, pages=4, seed=9)
        assert good.append(model.batch(model.records(5)))[1] == model.lsn
        assert good.status()["volumes"]["1"]["volume_epoch"] == 1
        stalled.settimeout(HANDSHAKE_TIMEOUT_S + 5.0)
        try:
            assert stalled.recv(4096) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S + 4.0
        stalled.close()
        assert "TLS handshake not done within" in node_log(node)
        assert good.status()["node_id"] == "node-1"
        good.close()
        assert node.alive()
    finally:
        node.stop()


def test_cli_status_over_tls(certs, tmp_path):
    node = start_nodes(tmp_path, certs.node_config(), 1)[0]
    try:
        env = dict(os.environ, PYTHONPATH=_package_root())
        base = [sys.executable, "-m", "aurora.cli", "node", "status", "--connect", node.address, "--json"]
        out = subprocess.run(base + ["--tls-ca", certs.ca_file, "--tls-cert", certs.client_cert,
                                     "--tls-key", certs.client_key],
                             capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"node_id": "node-1"' in out.stdout
        out = subprocess.run(base, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
        assert out.returncode != 0
    finally:
        node.stop()


def test_errors_are_connection_errors():
    # Every caller that copes with an unreachable node (OSError) copes with a refused one.
    assert issubclass(HandshakeError, ConnectionError) and issubclass(HandshakeError, OSError)
    assert not issubclass(HandshakeError, errors.AuroraError)


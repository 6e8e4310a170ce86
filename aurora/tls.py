"""TLS with mutual authentication for every TCP connection of a fleet (docs/protocol.md,
"Transport").

One cluster CA signs every certificate of the cluster, and nothing else: a node accepts a
client only if its certificate chains to that CA (``CERT_REQUIRED``), and a client accepts a
node only if the node's certificate chains to it *and* names the host the client dialled
(the HOST of ``tcp:HOST:PORT``, in subjectAltName: standard hostname verification), so one
node's key cannot stand in for another address.  Roles are told apart by extended key usage,
which OpenSSL checks during verification: node certificates carry serverAuth and clientAuth
(nodes are clients of their peers when they gossip), writer and tool certificates clientAuth
only, so a stolen client key cannot pose as a node.  TLS 1.2 is the floor; OpenSSL picks 1.3
whenever both ends have it.

Unix sockets never use TLS: they are protected by file modes (0600 in a 0700 directory).

Two drivers move the bytes, both on ``ssl.MemoryBIO`` pairs so that the code, not OpenSSL,
does every socket call:

* ``ServerSession``: one accepted connection in the node's selector loop.  Nothing in it
  blocks; a handshake advances as bytes arrive and is bounded by ``HANDSHAKE_TIMEOUT_S``
  (the loop enforces it); every byte of plaintext a read makes available is returned at
  once, so none waits inside OpenSSL where the selector cannot see it.
* ``TLSStream``: a client connection (``NodeClient``, the writer's member links).  It looks
  like a blocking socket (``fileno``, ``recv``, ``sendall``) and may be used by one sending
  and one receiving thread at once (the writer's LinkPump does that): OpenSSL forbids two
  threads inside one SSL object, so every use of it is under a lock, and socket I/O happens
  outside that lock.
"""
import dataclasses
import datetime
import functools
import ipaddress
import os
import select
import socket
import ssl
import threading
import time

HANDSHAKE_TIMEOUT_S = 5.0
# A blocking reader (TLSStream.recv: a NodeClient waiting for its one reply) that has part of
# a TLS record waits at most this long for the rest, then gives that connection up.  The
# writer's receiver, which serves every member link from one thread, never waits inside a
# record (TLSStream.recv_nowait).
RECORD_WAIT_S = 2.0
READ_CHUNK_BYTES = 64 * 1024        # > the 16 KiB of plaintext one TLS record carries
RAW_RECV_BYTES = 1 << 20
# TLS 1.2 suites when 1.3 is not available at the other end: forward secret and AEAD only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class HandshakeError(ConnectionError):
    """A TLS handshake failed (a ConnectionError, so every caller that copes with a node
    being unreachable copes with this too); the message says which end to check."""


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """This party's TLS identity: the cluster CA, its certificate and its private key (PEM
    files).  The same config builds the server side (a node) and the client side (a writer,
    a tool, or a node gossiping to its peers)."""

    ca_file: str
    cert_file: str
    key_file: str

    def __post_init__(self):
        for what, path in (("CA", self.ca_file), ("certificate", self.cert_file), ("key", self.key_file)):
            if not path or not os.path.isfile(path):
                raise FileNotFoundError("TLS %s file %r does not exist" % (what, path))

    @classmethod
    def from_options(cls, ca_file=None, cert_file=None, key_file=None):
        """The config of ``--tls-ca/--tls-cert/--tls-key``: None when none is given; all three
        or nothing."""
        given = {"--tls-ca": ca_file, "--tls-cert": cert_file, "--tls-key": key_file}
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ValueError("TLS needs --tls-ca, --tls-cert and --tls-key together; missing %s"
                             % ", ".join(missing))
        return cls(ca_file, cert_file, key_file)

    @functools.cached_property
    def server_context(self):
        """Accepts only clients with a certificate of the cluster CA (clientAuth usage)."""
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        # No session tickets: every connection authenticates with its certificate, and no
        # post-handshake message arrives that a blocking client would have to read.
        context.num_tickets = 0
        return context

    @functools.cached_property
    def client_context(self):
        """Accepts only nodes with a certificate of the cluster CA (serverAuth usage) that
        names the host dialled."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = True
        return context

    def _context(self, protocol):
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(TLS12_CIPHERS)
        context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            context.load_verify_locations(cafile=self.ca_file)
        except ssl.SSLError as exc:
            raise ValueError("TLS files unusable (CA %s, certificate %s, key %s): %s"
                             % (self.ca_file, self.cert_file, self.key_file, exc)) from None
        return context

    def wrap_client(self, sock, host, timeout=None):
        """Run the client handshake on the connected socket ``sock`` to node ``host`` and
        return the TLSStream.  ``sock`` is closed if the handshake fails."""
        try:
            return TLSStream(sock, self.client_context, host,
                             HANDSHAKE_TIMEOUT_S if timeout is None else timeout)
        except BaseException:
            sock.close()
            raise


def describe_failure(exc, other="the other end", this="this party"):
    """A short reason for a failed handshake, for logs and errors; ``other`` names the peer
    (an alert it sent means it refused this party)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate refused: %s" % (exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        for prefix in ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_"):
            if exc.reason.startswith(prefix):
                return "%s refused %s: %s" % (other, this, exc.reason[len(prefix):].lower().replace("_", " "))
        return {"WRONG_VERSION_NUMBER": "not TLS (plaintext or garbage bytes)",
                "HTTP_REQUEST": "not TLS (an HTTP request)",
                "RECORD_LAYER_FAILURE": "not TLS (plaintext or garbage bytes)",
                "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
                "CERTIFICATE_VERIFY_FAILED": "certificate refused",
                }.get(exc.reason, exc.reason.lower().replace("_", " "))
    return str(exc) or type(exc).__name__


def read_available(tls, incoming):
    """(every byte of plaintext the SSL object ``tls`` can give now, whether the peer ended
    the stream).  Reads only while bytes wait: an SSLWantReadError costs more than decrypting
    a page.  Raises ssl.SSLError on a protocol failure or an alert."""
    chunks = []
    eof = False
    while incoming.pending or tls.pending():
        try:
            chunk = tls.read(READ_CHUNK_BYTES)
        except ssl.SSLWantReadError:
            break
        except ssl.SSLZeroReturnError:
            eof = True
            break
        if not chunk:
            eof = True
            break
        chunks.append(chunk)
    return b"".join(chunks), eof


# ---- server side: one connection in the node's selector loop ----------------------------------

class ServerSession:
    """The TLS state of one accepted connection.  The loop feeds it what the socket gave
    (``receive``) and sends what ``seal`` returns; nothing here touches the socket."""

    __slots__ = ("tls", "incoming", "outgoing", "handshaken", "deadline", "wire", "eof")

    def __init__(self, context, now):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False
        self.deadline = now + HANDSHAKE_TIMEOUT_S
        self.wire = bytearray()          # ciphertext not yet sent
        self.eof = False                 # the client sent close_notify

    def receive(self, data):
        """Feed bytes from the socket; returns the plaintext they complete (maybe empty).
        Raises ssl.SSLError when the client is refused or breaks the protocol; what OpenSSL
        wants to say to it (an alert) is in ``wire`` then."""
        self.incoming.write(data)
        try:
            if not self.handshaken:
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    return b""
                self.handshaken = True
            data, self.eof = read_available(self.tls, self.incoming)
            return data
        finally:
            self._drain()

    def seal(self, plaintext):
        """Encrypt and consume the bytearray ``plaintext`` (only once the handshake is done);
        returns the ciphertext buffer to send (the caller deletes what it sent)."""
        if plaintext and self.handshaken:
            view = memoryview(plaintext)
            written = 0
            while written < len(view):
                written += self.tls.write(view[written:])
            view.release()
            del plaintext[:]
        self._drain()
        return self.wire

    def _drain(self):
        if self.outgoing.pending:
            self.wire += self.outgoing.read()

    def peer_name(self):
        """The subject CN (or first subjectAltName) of the authenticated client."""
        cert = self.tls.getpeercert() if self.handshaken else None
        if not cert:
            return "?"
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        names = cert.get("subjectAltName", ())
        return names[0][1] if names else "?"


# ---- client side: a blocking, two-thread-safe stream -------------------------------------------

class TLSStream:
    """A TLS connection over a connected socket, used like a blocking socket.

    ``recv`` returns every byte of plaintext available, whatever ``bufsize`` says, so nothing
    is left inside OpenSSL where a selector on ``fileno()`` would not see it; it returns b"" only at the end of the stream.  One thread may ``sendall`` while
    another ``recv``s."""

    def __init__(self, sock, context, host, timeout):
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._lock = threading.Lock()          # the SSL object: one thread inside at a time
        self._send_lock = threading.Lock()     # records leave in the order OpenSSL made them
        self._poll = None
        self.host = host
        try:
            self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=False,
                                         server_hostname=host)
        except ValueError as exc:
            raise HandshakeError("cannot verify node %s: %s" % (host, exc)) from None
        self._handshake(timeout)

    def _handshake(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._push(block=True)     # the alert tells the node why
                raise HandshakeError("TLS handshake with node %s failed: %s"
                                     % (self.host, describe_failure(exc, "the node"))) from None
            self._push(block=True)
            left = deadline - time.monotonic()
            if left <= 0:
                raise HandshakeError("TLS handshake with node %s took over %.1f s" % (self.host, timeout))
            self._sock.settimeout(left)
            try:
                data = self._sock.recv(RAW_RECV_BYTES)
            except socket.timeout:
                raise HandshakeError("TLS handshake with node %s took over %.1f s" % (self.host, timeout)) from None
            if not data:
                raise HandshakeError("node %s closed the connection during the TLS handshake (does it "
                                     "listen with TLS? is this party's certificate of its CA?)" % self.host)
            self._incoming.write(data)
        self._push(block=True)
        self._sock.settimeout(timeout)

    # ---- socket-like surface ----------------------------------------------------------

    def fileno(self):
        return self._sock.fileno()

    @property
    def family(self):
        return self._sock.family

    def settimeout(self, timeout):
        self._sock.settimeout(timeout)

    def gettimeout(self):
        return self._sock.gettimeout()

    def setsockopt(self, *args):
        self._sock.setsockopt(*args)

    def getpeercert(self):
        return self._tls.getpeercert()

    def version(self):
        return self._tls.version()

    def close(self):
        self._sock.close()

    def sendall(self, data):
        with self._send_lock:
            with self._lock:
                view = memoryview(data)
                written = 0
                while written < len(view):
                    written += self._tls.write(view[written:])
                view.release()
                out = self._outgoing.read()
            self._sock.sendall(out)

    def recv(self, bufsize):
        return self._read(wait=True)

    def recv_nowait(self):
        """For a reader that a selector on ``fileno()`` wakes: every byte of plaintext
        available now, b"" at the end of the stream, or None when what has arrived is only
        part of a record (the selector wakes the reader again when more comes).  It never
        waits, so a member that stops mid-record holds up no other connection the same
        thread reads (the writer's receiver serves all six links)."""
        return self._read(wait=False)

    def _read(self, wait):
        while True:
            with self._lock:
                try:
                    data, eof = read_available(self._tls, self._incoming)
                except ssl.SSLError as exc:
                    # Under TLS 1.3 a node that refuses this party's certificate says so only
                    # after the client's handshake is done: here, on the first read.
                    raise ConnectionError("TLS connection with node %s failed: %s"
                                          % (self.host, describe_failure(exc, "the node"))) from None
                replies = self._outgoing.pending
            if replies:
                self._push(block=False)
            if data:
                return data
            if eof:
                return b""
            if wait:
                data = self._recv_raw()
            else:
                try:
                    data = self._sock.recv(RAW_RECV_BYTES, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return None
            if not data:
                return b""
            with self._lock:
                self._incoming.write(data)

    def _recv_raw(self):
        if self._sock.gettimeout() is None:
            # A blocking reader: bound the wait for the rest of a record.
            if self._poll is None:
                self._poll = select.poll()
                self._poll.register(self._sock.fileno(), select.POLLIN)
            if not self._poll.poll(RECORD_WAIT_S * 1000):
                raise socket.timeout("node %s sent part of a TLS record and nothing for %.0f s"
                                     % (self.host, RECORD_WAIT_S))
        return self._sock.recv(RAW_RECV_BYTES)

    def _push(self, block):
        """Send what OpenSSL wrote on its own (handshake messages, alerts).  Without
        ``block`` a sender busy in sendall takes it along instead (it drains the same
        buffer first, so order holds)."""
        if not self._send_lock.acquire(blocking=block):
            return
        try:
            with self._lock:
                out = self._outgoing.read() if self._outgoing.pending else b""
            if out:
                self._sock.sendall(out)
        finally:
            self._send_lock.release()


# ---- certificates for tests and trials --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CertificateSet:
    """Paths made by ``make_test_certificates``."""
    directory: str
    ca_file: str
    node_cert: str
    node_key: str
    client_cert: str
    client_key: str

    def node_config(self):
        return TLSConfig(self.ca_file, self.node_cert, self.node_key)

    def client_config(self):
        return TLSConfig(self.ca_file, self.client_cert, self.client_key)


def make_test_certificates(directory, hosts=("127.0.0.1", "localhost", "::1"), name="aurora-test",
                           days=30):
    """A throw-away cluster CA plus one node certificate (serverAuth and clientAuth, naming
    ``hosts``) and one client certificate (clientAuth only), as PEM files in ``directory``:
    ca.pem, node.pem, node.key, client.pem, client.key.  The CA's key is not kept, so no
    other certificate can ever be issued under this CA.  Needs the ``cryptography`` package
    (the ``test`` extra); docs/node.md shows how to make real ones with openssl."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ImportError("make_test_certificates needs the 'cryptography' package "
                          "(pip install 'aurora-storage[test]'); see docs/node.md to use openssl") from None

    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    def subject(common_name):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(filename, data, mode=0o644):
        path = os.path.join(directory, filename)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject("%s CA" % name)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    def leaf(common_name, usages, names):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject(common_name)).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_before).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    san = []
    for host in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            san.append(x509.DNSName(host))
    node_pem, node_key = leaf("%s node" % name, [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], san)
    client_pem, client_key = leaf("%s client" % name, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return CertificateSet(
        directory=directory,
        ca_file=write("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM)),
        node_cert=write("node.pem", node_pem), node_key=write("node.key", node_key, 0o600),
        client_cert=write("client.pem", client_pem), client_key=write("client.key", client_key, 0o600))

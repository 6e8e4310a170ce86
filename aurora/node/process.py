"""Start, stop, kill and restart storage-node processes (`aurora node serve`)."""
import os
import signal
import socket
import subprocess
import sys
import time

import aurora
from aurora.node.server import parse_address

START_TIMEOUT_S = 30.0


def _package_root():
    """The directory this aurora was imported from, so a child imports the same build."""
    return os.path.dirname(os.path.dirname(os.path.abspath(aurora.__file__)))


class NodeProcess:
    """One `aurora node serve` child process.  The node's output goes to ``log_path``.
    ``tls`` (an aurora.tls.TLSConfig, for a tcp: address) is the node's identity: it then
    serves TLS only, to clients with a certificate of the same CA."""

    def __init__(self, data_dir, address, node_id, az, log_file_bytes=None, log_path=None, tls=None):
        self.data_dir = data_dir
        self.address = address
        self.node_id = node_id
        self.az = az
        self.log_file_bytes = log_file_bytes
        self.tls = tls
        self.log_path = log_path or os.path.join(os.path.dirname(os.path.abspath(data_dir)),
                                                 "%s.log" % node_id)
        self.proc = None

    def command(self):
        cmd = [sys.executable, "-m", "aurora.cli", "node", "serve", "--data", self.data_dir,
               "--listen", self.address, "--node-id", self.node_id, "--az", self.az]
        if self.log_file_bytes:
            cmd += ["--log-file-bytes", str(self.log_file_bytes)]
        if self.tls is not None:
            cmd += ["--tls-ca", os.path.abspath(self.tls.ca_file), "--tls-cert", os.path.abspath(self.tls.cert_file),
                    "--tls-key", os.path.abspath(self.tls.key_file)]
        # The node stops with the process that started it; a crashed test or program must
        # not leave a fleet running.
        cmd += ["--parent-pid", str(os.getpid())]
        return cmd

    def start(self, wait=True):
        if self.alive():
            raise RuntimeError("node %s is already running (pid %d)" % (self.node_id, self.proc.pid))
        env = dict(os.environ)
        env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            # cwd is not the source tree: `python -m` must import the built package.
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         cwd=os.path.dirname(os.path.abspath(self.data_dir)),
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT_S):
        family, sockaddr = parse_address(self.address)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("node %s exited with %s during start-up; see %s"
                                   % (self.node_id, self.proc.returncode, self.log_path))
            try:
                # A bare connect: a TLS node does not log a client that sends nothing.
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1.0)
                    sock.connect(sockaddr)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("node %s did not listen on %s within %.0f s; see %s"
                                       % (self.node_id, self.address, timeout, self.log_path))
                time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def kill(self):
        """SIGKILL: a crash. Whatever was not synced may be lost."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout=15.0):
        """SIGTERM: a clean shutdown; SIGKILL if it does not finish in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode if self.proc else None

    def restart(self):
        self.kill()
        return self.start()

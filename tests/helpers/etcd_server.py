"""A real 1-node etcd for the cluster tests: 127.0.0.1, a temp data dir,
free ports; up in about a second; stopped (and its dir removed) by stop(),
also when the test failed. Needs the ``etcd`` binary (Debian:
etcd-server, installed by .ci/run)."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the test process dies, even by
    SIGKILL (PR_SET_PDEATHSIG), so nothing outlives a killed test run."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, startup: float = 20.0):
        self.dir = tempfile.mkdtemp(prefix="tha-etcd-")
        self.proc = None
        for _ in range(5):  # a free port taken meanwhile by someone else: again
            self.port, peer = free_port(), free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.log = open(os.path.join(self.dir, "etcd.log"), "wb")
            self.proc = subprocess.Popen(
                [ETCD, "--name", "t", "--data-dir", os.path.join(self.dir, "data"),
                 "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"t=http://127.0.0.1:{peer}",
                 "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
            t0 = time.monotonic()
            while time.monotonic() - t0 < startup and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                        if b'"true"' in r.read():
                            self.startup = time.monotonic() - t0
                            return
                except OSError:
                    time.sleep(0.05)
            self.stop(remove=False)
        tail = open(os.path.join(self.dir, "etcd.log"), errors="replace").read()[-2000:]
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError(f"etcd did not start: {tail}")

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

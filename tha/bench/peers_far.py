"""The far ends of the peers benchmark (tha/bench/peers.py, ``python -m
tha bench --peers``) and what both of its ends share.

The records (issue 12): N ``struct emp`` of 64 bytes (name[32], id, salary,
mgr, dept) and one ``struct dept`` per 250 of them. Record i has id i; its
manager always has a smaller id (record 0 has none), so a pickle of the
object graph never recurses deeper than one manager, however the rounds
rewire it.

The digest, computed alike on both ends of every contender: SHA-1 of the
records' ids (int64), then their salaries (float64), then their managers'
ids (int64; -1 for none), little-endian, in id order. Redis holds strings,
so its contender (a Lua script inside redis-server) uses the text digest:
SHA-1 of one line ``id,salary,mgr`` per record, ``salary`` as Python's
``repr()``, the string redis-py stores.

The far ends, each a process of its own on 127.0.0.1:

  ``python -m tha.bench.peers_far tha [RESERVE]``  a tha.Standby (port 0):
                  the heap comes by bulk sync, the digest reads the root
                  "emps"; with RESERVE (bytes) it touches that much memory
                  at start for its first bulk sync (``Standby(reserve=)``)
  ``python -m tha.bench.peers_far py``   a socket server, one message at a
                  time (a kind byte and a length, then the payload): ``R``
                  raw bytes, read into a 1 MiB buffer and dropped; ``W`` a
                  pickle of the whole state, which replaces its copy (the old
                  one dropped first, so it is freed before the answer and not
                  during the next contender's round); ``C``
                  a pickle of changed records, applied into its copy; ``S``
                  (a count n) makes an array of n 64-byte records and ``G``
                  (k, k indexes, k records) scatters records into it by
                  index (numpy), the hand-written gather/scatter. Each
                  is answered with one byte once done. Automatic garbage
                  collection is off (the graph has no cycles: reference
                  counts free it), as a pickle user tuning a big graph would
                  have it.
  ``redis-server``  started by :class:`RedisServer` (no persistence)

A Python far end prints its port as its first line, then answers commands
on stdin, one a line (``digest N``: the digest of its first N records), and
exits when stdin closes: the benchmark ended, however it ended. Every far
end also gets SIGTERM if the benchmark process dies (PR_SET_PDEATHSIG;
redis-server through ``setpriv --pdeathsig``).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array

from ..errors import Error
from ..replication import Standby

EMP_SIZE = 64
EMP_WORDS = EMP_SIZE // 8
DEPT_SIZE = 36
EMPS_PER_DEPT = 250
NO_MGR = -1
SCHEMA = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; };
"""
HDR = struct.Struct("<cQ")  # message kind, payload length
ACK = b"k"
RECV_BUF = 1 << 20          # the raw sink's reader buffer (as the driver's)
RAW, WHOLE, CHANGED = b"R", b"W", b"C"
# the hand-written gather/scatter: SCATTER_SIZE (payload u64 n) gives the far end an
# array of n 64-byte records; SCATTERED (u64 k, k u64 indexes, k records)
# writes record j of the message to element indexes[j] of it
SCATTER_SIZE, SCATTERED = b"S", b"G"
START_TIMEOUT = 60.0        # seconds a far end may take to start listening


class PeerError(Error):
    """A far end failed: it exited, did not answer in time, or answered
    something else than the protocol says."""


class VerifyError(Error):
    """A far end's copy differs from the near end's or from the expected
    state: the contender mirrored wrong."""


# ---- the records in Python (the pickle contenders' state) --------------------

class Dept:
    """A plain class: of the styles measured (__slots__, __dict__, a custom
    __reduce__), pickle.dumps of the graph is fastest with a plain __dict__
    class without extra code (0.38 s against 0.69 s per 200,000 records with
    __slots__), so that is what the pickle contenders get."""

    def __init__(self, name: str, id: int):
        self.name = name
        self.id = id


class Emp:
    def __init__(self, name: str, id: int, salary: float, mgr, dept):
        self.name = name
        self.id = id
        self.salary = salary
        self.mgr = mgr
        self.dept = dept


def emp_name(i: int) -> str:
    return "emp%07d" % i


def dept_count(n: int) -> int:
    return max(1, -(-n // EMPS_PER_DEPT))


# ---- the digest -----------------------------------------------------------------

def digest_of(ids, salaries, mgr_ids) -> str:
    """SHA-1 hex of ids, salaries, manager ids as int64/float64/int64 arrays."""
    h = hashlib.sha1()
    for code, values in (("q", ids), ("d", salaries), ("q", mgr_ids)):
        h.update(array(code, values).tobytes())
    return h.hexdigest()


def text_digest_of(ids, salaries, mgr_ids) -> str:
    """SHA-1 hex of the lines ``id,repr(salary),mgr_id``, one per record."""
    text = "".join([f"{i},{s!r},{m}\n" for i, s, m in zip(ids, salaries, mgr_ids)])
    return hashlib.sha1(text.encode()).hexdigest()


def py_digest(emps: list) -> str:
    return digest_of([e.id for e in emps], [e.salary for e in emps],
                     [NO_MGR if e.mgr is None else e.mgr.id for e in emps])


def tha_digest(heap, n: int) -> str:
    """The digest of the first n records of the array at the heap's root
    "emps", read from its memory. A manager pointer that is not the start of
    an element of that array gives id -2 (so the digest differs)."""
    ffi = heap.schema.ffi
    emps = heap.roots["emps"]
    start = heap.offset_of(emps)
    if start + n * EMP_SIZE > heap.stats()["top"]:
        raise VerifyError(f"the heap's 'emps' at offset {start} cannot hold {n} records")
    raw = ffi.buffer(emps, n * EMP_SIZE)
    u32, f64, u64 = array("I"), array("d"), array("Q")
    for a in (u32, f64, u64):
        a.frombytes(raw)
    ids = u32[8::EMP_SIZE // 4]               # id: bytes 32..35
    base = heap.base + start
    end = base + n * EMP_SIZE
    mgr = [ids[(p - base) >> 6] if base <= p < end and not (p - base) & 63
           else (NO_MGR if p == 0 else -2) for p in u64[6::EMP_WORDS]]
    return digest_of(ids, f64[5::EMP_WORDS], mgr)


# ---- messages ---------------------------------------------------------------------

def recv_exact(sock: socket.socket, n: int):
    """n bytes (a bytearray), or None if the peer closed first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            return None
        got += k
    return buf


def send_msg(sock: socket.socket, kind: bytes, payload) -> None:
    sock.sendall(HDR.pack(kind, len(payload)))
    sock.sendall(payload)


def wait_ack(sock: socket.socket, what: str) -> None:
    if sock.recv(1) != ACK:
        raise PeerError(f"{what}: the far end closed the connection instead of answering")


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


# ---- the Python far ends ------------------------------------------------------------

class _PyFar:
    """The state a ``py`` far end holds and how it applies messages."""

    def __init__(self):
        self.lock = threading.Lock()
        self.depts: list = []
        self.emps: list = []
        self.records = None      # SCATTER_SIZE's array (numpy), for SCATTERED
        self.scatter_buf = bytearray()  # kept: a fresh one per round would fault

    def serve(self, conn: socket.socket) -> None:
        """One connection's messages, until it closes or one is malformed
        (then it is closed here: the accept loop still holds the socket)."""
        with conn:
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray(RECV_BUF)
        view = memoryview(buf)
        while True:
            hdr = recv_exact(conn, HDR.size)
            if hdr is None:
                return
            kind, n = HDR.unpack(hdr)
            if kind == RAW:
                left = n
                while left:
                    k = conn.recv_into(view, min(left, RECV_BUF))
                    if not k:
                        return
                    left -= k
                conn.sendall(ACK)
                continue
            if kind == SCATTERED:
                if not self._scatter(conn, n):
                    return
                conn.sendall(ACK)
                continue
            data = recv_exact(conn, n)
            if data is None:
                return
            with self.lock:
                if kind == WHOLE:
                    # the replaced copy is freed before the answer: freeing it
                    # after would take CPU from the next contender's round
                    self.depts = self.emps = None
                    self.depts, self.emps = pickle.loads(data)
                elif kind == CHANGED:
                    self._apply(pickle.loads(data))
                elif kind == SCATTER_SIZE:
                    import numpy
                    (count,) = struct.unpack("<Q", data)
                    self.records = numpy.full(count * EMP_SIZE, 0xA5,
                                              numpy.uint8).view(f"V{EMP_SIZE}")
                else:
                    print(f"peers_far: unknown message kind {kind!r}", file=sys.stderr)
                    return
            del data
            conn.sendall(ACK)

    def _scatter(self, conn: socket.socket, n: int) -> bool:
        """Reads a SCATTERED message of n bytes into the kept buffer and
        writes its records into the array; False if the peer closed or the
        message is malformed (said on stderr; the connection is dropped)."""
        import numpy
        if len(self.scatter_buf) < n:
            self.scatter_buf = bytearray(n)
        view, got = memoryview(self.scatter_buf), 0
        while got < n:
            k = conn.recv_into(view[got:n], n - got)
            if not k:
                return False
            got += k
        (count,) = struct.unpack_from("<Q", self.scatter_buf) if n >= 8 else (-1,)
        if self.records is None or n != 8 + count * (8 + EMP_SIZE):
            print(f"peers_far: a {n}-byte scatter message of {count} records does not "
                  f"add up, or came before its array", file=sys.stderr)
            return False
        idx = numpy.frombuffer(self.scatter_buf, numpy.intp, count, 8)  # < 2**63
        if count and not 0 <= int(idx.min()) <= int(idx.max()) < len(self.records):
            print(f"peers_far: a scatter index is outside the {len(self.records)} "
                  "records", file=sys.stderr)
            return False
        recs = numpy.frombuffer(self.scatter_buf, f"V{EMP_SIZE}", count, 8 + 8 * count)
        self.records[idx] = recs
        return True

    def _apply(self, recs) -> None:
        emps, depts = self.emps, self.depts
        for i, name, salary, mgr, dept in recs:
            e = emps[i]
            e.name = name
            e.salary = salary
            e.mgr = emps[mgr] if mgr >= 0 else None
            e.dept = depts[dept]

    def digest(self, n: int) -> str:
        with self.lock:
            return py_digest(self.emps[:n])


def _serve_py(far: _PyFar, lst: socket.socket) -> None:
    while True:
        conn, _ = lst.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=far.serve, args=(conn,), daemon=True).start()


def _die_with_parent() -> None:
    """SIGTERM when the process that started this one dies."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def main(argv) -> int:
    if not (argv[:1] == ["py"] and len(argv) == 1 or argv[:1] == ["tha"] and len(argv) <= 2
            and all(a.isdigit() for a in argv[1:])):
        print("usage: python -m tha.bench.peers_far tha [RESERVE_BYTES] | py",
              file=sys.stderr)
        return 2
    _die_with_parent()
    if argv[0] == "tha":
        sb = Standby(("127.0.0.1", 0), timeout=60.0,
                     reserve=int(argv[1]) if len(argv) == 2 else None)
        port = sb.address[1]

        def digest(n):
            with sb.cond:
                return tha_digest(sb.heap, n) if sb.heap is not None else "no-heap"
    else:
        gc.disable()
        far = _PyFar()
        lst = socket.create_server(("127.0.0.1", 0))
        port = lst.getsockname()[1]
        threading.Thread(target=_serve_py, args=(far, lst), daemon=True).start()
        digest = far.digest
    print(port, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        try:
            if len(cmd) == 2 and cmd[0] == "digest":
                print(digest(int(cmd[1])), flush=True)
            else:
                print(f"error unknown command {line.strip()!r}", flush=True)
        except Exception as e:  # the answer names it; the far end goes on
            print(f"error {type(e).__name__}: {e}".replace("\n", " "), flush=True)
    os._exit(0)  # stdin closed: the benchmark is over


class Child:
    """A Python far end (``python -m tha.bench.peers_far KIND``) and its port."""

    def __init__(self, kind: str, what: str, *args: str):
        self.what = what
        self.proc = subprocess.Popen([sys.executable, "-m", "tha.bench.peers_far", kind,
                                      *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        try:
            self.port = int(self._line(START_TIMEOUT))
        except (PeerError, ValueError) as e:
            self.close()
            raise PeerError(f"{what}: the far end did not start: {e}") from None

    def _line(self, timeout: float) -> str:
        ready = select.select([self.proc.stdout], [], [], timeout)[0]
        if not ready:
            raise PeerError(f"{self.what}: no answer within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"{self.what}: the far end exited (status {self.proc.wait()})")
        return line.strip()

    def ask(self, command: str) -> None:
        """Sends a command; answer() reads its answer (so several far ends
        can work on theirs at once)."""
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise PeerError(f"{self.what}: the far end exited "
                            f"(status {self.proc.poll()})") from None

    def answer(self, timeout: float = 600.0) -> str:
        line = self._line(timeout)
        if line.startswith("error "):
            raise PeerError(f"{self.what}: {line[6:]}")
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


# ---- redis-server ------------------------------------------------------------------

def free_port() -> int:
    """A port free on 127.0.0.1 right now (for a server that cannot take 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_version() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "unknown"


class RedisServer:
    """A redis-server on 127.0.0.1 at a free port, without persistence
    (``--save "" --appendonly no``), its files in ``directory``. A replica
    (``replicaof``: the primary's port) loads a full resync straight from
    the socket into its empty database (``repl-diskless-load on-empty-db``),
    a primary sends it without a file or a delay (``repl-diskless-sync``,
    delay 0); no output-buffer limit drops a replica that lags in a burst
    of a million writes."""

    def __init__(self, directory: str, name: str, replicaof: int | None = None):
        exe = shutil.which("redis-server")
        if exe is None:
            raise PeerError("redis-server is not installed")
        self.name = name
        self.log = os.path.join(directory, name + ".log")
        pdeath = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        why = ""
        for _ in range(5):  # the port may be taken between free_port() and the bind
            self.port = free_port()
            argv = pdeath + [
                exe, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", directory,
                "--dbfilename", name + ".rdb", "--logfile", self.log,
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                "--repl-diskless-load", "on-empty-db",
                "--client-output-buffer-limit", "replica 0 0 0"]
            if replicaof is not None:
                argv += ["--replicaof", "127.0.0.1", str(replicaof)]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            why = self._wait_ready()
            if not why:
                return
            self.close()
            if "in use" not in why:
                break
        raise PeerError(f"redis-server ({name}) did not start: {why}")

    def _wait_ready(self) -> str:
        """'' once it answers PING, else why not."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self._log_tail() or f"exited with status {self.proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return ""
            except OSError:
                pass
            time.sleep(0.02)
        return f"no answer to PING within {START_TIMEOUT:g} s"

    def _log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # no persistence: it exits at once
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Active and Standby: the replication driver.

The protocol lives in C (``tha_session_*``, sans-I/O); this module only
moves bytes between sessions and sockets, keeps time and turns session
events into Python state. Per connection there is a reader thread (socket →
session) and a writer thread (session → socket); a ticker thread per node
drives heartbeats and timeouts. Everything touching a session or its heap
runs under the heap's lock; sockets are written outside it (the bytes stay
valid until the session is told they went out).

Ack levels, weakest first (compare DRBD protocols A/B/C and PostgreSQL
``synchronous_commit``):

* ``"none"`` — ``sync()`` returns once the frame is queued: a crash of the
  active right after may lose it (async replication).
* ``"received"`` — the standby holds the frame in memory: lost only if both
  nodes die before it is applied.
* ``"applied"`` — the standby applied it to its live heap: a failover now
  resumes from this state.
* ``"persisted"`` — the standby has it on disk: in its fsync'd delta log,
  or in a checkpoint it wrote after a bulk sync. Only a standby that keeps a
  log (``Standby(save=..., log=...)``) ever acks this level; with its log's
  fsync policy ``"always"`` the ack comes with the apply, with ``"every N
  ms"`` after the next fsync (at most N ms later), with ``"never"`` after its
  next checkpoint (``save_every``). A sync waiting for a standby without a
  log times out naming it.

``sync()`` never downgrades: if the required standbys do not answer within
``timeout`` it raises :class:`SyncTimeout`. An application holds its replies
to clients until ``sync()`` returns.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from ._ffi import ffi as _cffi, lib
from .errors import (AuthError, Error, Fenced, SchemaMismatch, StateError, SyncTimeout,
                     VersionMismatch, check)
from .heap import Heap, _TRACKING
from .schema import Schema

log = logging.getLogger("tha")
_logger = log  # for Standby.__init__, whose log= parameter shadows it

ACK_LEVELS = {"none": lib.THA_ACK_NONE, "received": lib.THA_ACK_RECEIVED,
              "applied": lib.THA_ACK_APPLIED, "persisted": lib.THA_ACK_PERSISTED}
_INLINE_MAX = 64 << 10  # send_now() leaves bigger output items to the writer
_STATES = {0: "handshake", 1: "bulk", 2: "catching-up", 3: "streaming", 4: "closed"}


# A standby refused this active (or this active refused it) for a reason
# another attempt in a second will not change: see Active.refused_retry.
_DEFINITE = {lib.THA_EAUTH: AuthError, lib.THA_EMISMATCH: SchemaMismatch,
             lib.THA_EVERSION: VersionMismatch}


def _disk_code(code: int) -> bool:
    """A status that says the disk, not the frame, failed: -errno, or the
    log refusing frames after an earlier failure (THA_ESTATE)."""
    return -4096 < code < 0 or code == lib.THA_ESTATE


def _os_reason(e: BaseException) -> str:
    """'Connection refused', 'timed out', '[SSL: ...] ...': what the OS or
    TLS said, without the errno noise."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


@dataclass
class SyncResult:
    seq: int           # the frame this sync produced (standby.applied_seq counts the same)
    bytes: int         # its size on the wire
    acked_by: list = field(default_factory=list)  # standby addresses that acked


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


@_cffi.def_extern()
def tha_py_mac(ctx, key, key_len, parts, nparts, out):
    """HMAC-SHA256(key, parts...) for the C session when the extension was
    built without OpenSSL's headers (libtha holds no cryptography)."""
    m = hmac.new(bytes(_cffi.buffer(key, key_len)), digestmod="sha256")
    for i in range(nparts):
        m.update(_cffi.buffer(parts[i].data, parts[i].len))
    _cffi.memmove(out, m.digest(), 32)


# The C session calls this for the handshake and for every message.
_MAC_FN = lib.tha_py_openssl_mac if lib.tha_py_have_openssl else lib.tha_py_mac


def _check_listen(host: str, secret) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not secret:
        raise Error(f"refusing to listen on {host} without a secret: anyone who "
                    "can reach it could replace the standby's state")


class _Conn:
    """One socket and its session."""

    def __init__(self, node, sock, role, heap_c, backlog_c, peer: str):
        self.node, self.sock, self.peer = node, sock, peer
        self.born = time.monotonic()  # the handshake must end by born + timeout
        self.closed = False        # no more reading; the writer flushes and ends
        self.aborted = False       # closed without sending what is queued
        self.keep = None           # a heap the session points at, kept till destroy
        self.sending = False       # the writer is sending an output item, unlocked
        self._inline = not isinstance(sock, ssl.SSLSocket)  # see send_now
        self._fd = sock.fileno()
        # Input: one thread at a time receives into the session (`reading`).
        # An active's sync() reads its acks itself (`owner` > 0) rather than
        # waiting for the reader thread to pass them on: one wake-up less per
        # round trip. The reader then waits on rcond; it polls the socket
        # before it reads, so it never sits in a recv that would take the ack.
        # While syncs keep coming (the last ended less than `idle` ago) the
        # reader stays off the socket too: else each ack would wake it as
        # well as sync(), and on few cores that second wake-up (GIL, lock)
        # costs more than the round trip. What arrives meanwhile is read by
        # the next sync(), or by the reader at most `idle` later.
        self.reading = False
        self.owner = 0
        self.owned_until = 0.0     # monotonic: the last sync's end + idle
        self.idle = min(node.heartbeat, node.timeout) / 4
        self.shared_input = self._inline and role == lib.THA_ROLE_ACTIVE
        self.rcond = threading.Condition(node._lock)
        self.wcond = threading.Condition(node._lock)  # the writer waits here
        self._out = (_cffi.new("void **"), _cffi.new("size_t *"))
        self._in = (_cffi.new("void **"), _cffi.new("size_t *"))
        self._ev = _cffi.new("tha_event_t *")
        self._st = _cffi.new("tha_session_status_t *")
        self._sock_closed = False
        self._secret_buf = None
        cfg = _cffi.new("tha_session_config_t *")
        cfg.role = role
        cfg.node_id = node.node_id
        cfg.heartbeat_ms = int(node.heartbeat * 1000)
        cfg.timeout_ms = int(node.timeout * 1000)
        if node.secret:
            self._secret_buf = _cffi.from_buffer(node.secret)  # copied by create
            cfg.secret = self._secret_buf
            cfg.secret_len = len(node.secret)
            cfg.mac = node.mac_fn or _MAC_FN
        out = _cffi.new("tha_session_t **")
        check(lib.tha_session_create(out, cfg, heap_c, backlog_c))
        self.s = out[0]
        self.reader = threading.Thread(target=self._read, daemon=True,
                                       name=f"tha-read-{peer}")
        self.writer = threading.Thread(target=self._write, daemon=True,
                                       name=f"tha-write-{peer}")

    def start(self) -> None:
        """Starts the session's clock and both threads; the caller holds the
        node's lock and publishes the connection in the same locked step."""
        check(lib.tha_session_start(self.s, _now_ms()))
        self.reader.start()
        self.writer.start()

    def _read(self) -> None:
        node, sock = self.node, self.sock
        by_protocol = False  # the session closed itself: let the writer flush
        buf, cap = self._in
        poller = None
        if self.shared_input:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
        try:
            while not self.closed:
                if poller is not None:
                    with node.cond:
                        while not self.closed:
                            if self.owner or self.reading:
                                self.rcond.wait(self.idle)
                                continue
                            left = self.owned_until - time.monotonic()
                            if left <= 0:
                                break
                            self.rcond.wait(left)
                    if self.closed:
                        break
                    poller.poll()  # readable, or hung up
                with node.cond:
                    while (self.owner or self.reading) and not self.closed:
                        self.rcond.wait()
                    if self.closed or self.s is None:
                        break
                    if lib.tha_session_recv_buffer(self.s, buf, cap) < 0:
                        by_protocol = True
                        break
                    self.reading = True
                view = _cffi.buffer(buf[0], cap[0])
                try:
                    if poller is None:  # nobody else reads: block in recv
                        n = sock.recv_into(view)
                    else:
                        n = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    n = -1
                except BaseException:
                    with node.cond:
                        self.reading = False
                    raise
                with node.cond:
                    self.reading = False
                    if n == 0 or self.s is None:
                        break
                    if n > 0 and self.received(n):
                        by_protocol = True
                        break
        except (OSError, ValueError) as e:
            if not self.closed:
                log.info("%s: connection to %s lost: %s", node.role_name, self.peer, e)
        except Exception:  # a bug or a callback's error: say so, then close
            log.exception("%s: reading from %s", node.role_name, self.peer)
        finally:
            if not by_protocol:
                self.close()

    def received(self, n: int) -> bool:
        """Under the lock: n bytes arrived in the session's buffer. The
        events are handled before the answers (an ack) go out, so the node's
        state (applied_seq, on_applied) has moved when the peer learns it.
        True if the session closed itself."""
        lib.tha_session_received(self.s, n, _now_ms())
        self.node._drain(self)
        self.flush()
        self.node.cond.notify_all()
        return self._state() == 4

    def read_owned(self) -> None:
        """Under the lock, by sync() (owner): reads what the socket has."""
        if self.reading or self.closed or self.s is None:
            return
        buf, cap = self._in
        if lib.tha_session_recv_buffer(self.s, buf, cap) < 0:
            return
        try:
            n = self.sock.recv_into(_cffi.buffer(buf[0], cap[0]), 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except (OSError, ValueError):
            n = 0
        if n == 0:  # the reader thread finds out too, and closes
            self.owner = 0
            self.rcond.notify_all()
            return
        self.received(n)

    def _write(self) -> None:
        node, sock = self.node, self.sock
        data = _cffi.new("void **")
        size = _cffi.new("size_t *")
        try:
            while True:
                rc = 0
                with node.cond:
                    while True:
                        if self.aborted:  # what is queued is not true: drop it
                            return
                        if self.closed:
                            lib.tha_session_output(self.s, data, size)
                            if not size[0]:
                                return
                            break
                        rc = lib.tha_session_output(self.s, data, size)
                        node._drain(self)
                        if rc < 0 or size[0]:
                            self.sending = rc >= 0
                            break
                        if self._state() == 4:  # closed: said all it had to say
                            return
                        self.wcond.wait(0.05)
                if rc < 0:
                    return
                sent = 0
                try:
                    sent = sock.send(_cffi.buffer(data[0], size[0]))
                finally:  # one locked step, or send_now could resend the item
                    with node.cond:
                        self.sending = False
                        if sent:
                            lib.tha_session_advance(self.s, sent)
        except (OSError, ValueError) as e:
            if not self.closed:
                log.info("%s: connection to %s lost (sending): %s", node.role_name,
                         self.peer, _os_reason(e))
        except Exception:
            log.exception("%s: writing to %s", node.role_name, self.peer)
        finally:
            self.close()

    def send_now(self) -> None:
        """Under the lock: sends small queued output (acks, small frames)
        from the calling thread, as far as the socket takes it without
        blocking, so a round trip needs no wake-up of the writer thread. The
        writer sends the rest (large items, a full socket buffer, TLS)."""
        if not self._inline or self.sending or self.closed or self.s is None:
            return
        lib.tha_net_send_output(self.s, self._fd, _INLINE_MAX, _cffi.NULL)

    def flush(self) -> None:
        """Under the lock: send_now, then wakes the writer if output is left."""
        if self.s is None:
            return
        self.send_now()
        data, size = self._out
        if self.closed or (lib.tha_session_output(self.s, data, size) >= 0 and size[0]):
            self.wcond.notify()

    def fileno(self) -> int:
        return self._fd

    def _state(self) -> int:
        st = self._st
        lib.tha_session_status(self.s, st)
        return st.state

    def status(self) -> dict:
        st = _cffi.new("tha_session_status_t *")
        lib.tha_session_status(self.s, st)
        return {"peer": self.peer, "state": _STATES.get(st.state, str(st.state)),
                "peer_seq": st.peer_seq, "sent_seq": st.sent_seq,
                "acked_received": st.acked[1], "acked_applied": st.acked[2],
                "acked_persisted": st.acked[3],
                "resumed": getattr(self, "resumed", None),
                "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                "bulk_done": st.bulk_done, "bulk_total": st.bulk_total}

    def acked(self, level: int) -> int:
        st = self._st
        lib.tha_session_status(self.s, st)
        return st.acked[level]

    def peer_node(self) -> int:
        """The node id the peer proved itself with (0 before proof)."""
        st = self._st
        lib.tha_session_status(self.s, st)
        return st.peer_node

    def abort(self, reason: str) -> None:
        """Under the lock: ends the connection without sending anything
        still queued (acks for a state this node did not make live): the
        peer learns nothing more from this session."""
        if not self.aborted:
            log.error("%s: aborting the connection to %s without sending its "
                      "queued output: %s", self.node.role_name, self.peer, reason)
        self.aborted = True
        self.close()

    def close(self) -> None:
        with self.node.cond:
            if self._sock_closed:
                return
            self._sock_closed = self.closed = True
            self.node.cond.notify_all()
            self.rcond.notify_all()
            self.wcond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.node._forget(self)

    def destroy(self) -> None:
        """After both threads ended: free the session."""
        for t in (self.reader, self.writer):
            if t.is_alive() and t is not threading.current_thread():
                t.join(5)
        if self.s is not None:
            lib.tha_session_destroy(self.s)
            self.s = None


class _TlsPending:
    """A standby's TLS handshake, run by its own thread (so one peer that
    connects and says nothing cannot stop the accepting of others)."""

    def __init__(self, node, sock, peer: str):
        self.node, self.sock, self.peer = node, sock, peer
        self.born = time.monotonic()
        self.aborted = False

    def close(self) -> None:
        """Under the node's lock, from any thread: ends the handshake (its
        thread wakes with an error and closes the socket)."""
        self.aborted = True
        if self in self.node._tls_pending:
            self.node._tls_pending.remove(self)
        try:  # the plain socket's shutdown: SSLSocket.shutdown drops its state
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass


class _Node:
    """What Active and Standby share: lock, ticker, connections, secret."""

    role_name = "node"
    mac_fn = None  # the HMAC callback: None picks _MAC_FN (tests set another)

    def __init__(self, secret, heartbeat, timeout, ssl_context):
        if secret and not isinstance(secret, (bytes, bytearray, memoryview)):
            raise Error(f"{self.role_name}: secret must be bytes, not "
                        f"{type(secret).__name__}")
        if secret and len(secret) > 256:
            raise Error(f"{self.role_name}: a secret of {len(secret)} bytes; at most "
                        "256 (hash a longer one first)")
        self.secret = bytes(secret) if secret else None
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.node_id = int.from_bytes(os.urandom(8), "little")
        self.conns: list[_Conn] = []
        self._dead: list[_Conn] = []
        self._tls_pending: list[_TlsPending] = []  # standby: TLS handshakes running
        self._stopping = False
        self._wake = threading.Event()  # set on close: ends every back-off wait
        self.ticker = threading.Thread(target=self._tick, daemon=True,
                                       name=f"tha-tick-{self.role_name}")

    def _tick(self) -> None:
        period = min(self.heartbeat, self.timeout) / 4
        while not self._stopping:
            time.sleep(period)
            try:
                with self.cond:
                    for c in list(self.conns):
                        if c.s is not None and not c.closed:
                            lib.tha_session_tick(c.s, _now_ms())
                            self._drain(c)
                            c.flush()
                    self._on_tick()
                    self._reap_handshakes()
                    self.cond.notify_all()
                    dead, self._dead = self._dead, []
                for c in dead:
                    c.destroy()
            except Exception:  # never let the heartbeat die silently
                log.exception("%s: ticker", self.role_name)

    def _on_tick(self) -> None:
        pass

    def _unauthenticated(self) -> list:
        """Under the lock: connections not past the handshake yet (TLS or
        tha's), oldest first."""
        pending = [c for c in self.conns
                   if c.s is not None and not c.closed and c._state() == 0]
        pending += [h for h in self._tls_pending if not h.aborted]
        pending.sort(key=lambda c: c.born)
        return pending

    def _reap_handshakes(self) -> None:
        """Under the lock: closes what is still in the handshake ``timeout``
        after it connected. The session's silence timeout alone would let a
        peer that trickles a byte a second hold a connection for ever."""
        limit = time.monotonic() - self.timeout
        for c in self._unauthenticated():
            if c.born > limit:
                break
            log.warning("%s: %s did not finish the handshake within %gs: closing",
                        self.role_name, c.peer, self.timeout)
            c.close()

    def _forget(self, conn: _Conn) -> None:
        with self.cond:
            if conn in self.conns:
                self.conns.remove(conn)
                self._dead.append(conn)
            self.cond.notify_all()

    def _drain(self, conn: _Conn) -> None:
        ev = conn._ev
        while (conn.s is not None and not conn.aborted
               and lib.tha_session_event(conn.s, ev)):
            self._on_event(conn, ev)

    def _on_event(self, conn, ev) -> None:
        raise NotImplementedError

    def _close_all(self) -> None:
        self._stopping = True
        self._wake.set()
        with self.cond:
            for h in list(self._tls_pending):
                h.close()
        for c in list(self.conns):
            c.close()
        if self.ticker.is_alive():
            self.ticker.join(5)
        for c in self._dead + self.conns:
            c.destroy()
        self._dead = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Standby(_Node):
    """Listens for an active and mirrors its heap.

    ``heap`` — a heap to start from (its schema must match the active's);
    without one the first bulk sync creates it from the schema the active
    sends, so a standby needs no application code. ``promote_after`` —
    seconds without the active after which this standby promotes itself
    (None: only on ``promote()``). ``on_applied(seq, nbytes, bulk)`` is
    called, under the heap's lock, each time the live heap moves: after a
    delta (``bulk`` False, ``nbytes`` its size) or when a bulk sync goes
    live at ``seq`` (``bulk`` True, ``nbytes`` the image size). Keep it short.
    It runs before the active hears of that state: no ack (received,
    applied, persisted) for it leaves until the callback returned and, with
    ``save``, the checkpoint after a bulk sync is written. If it raises, or
    the bulk sync's heap cannot be taken (``Heap._adopt`` refuses it), the
    connection is aborted without sending what it
    had queued (the active sees no ack), the reason is logged, and the
    standby keeps its previous live state (a delta already applied stays
    applied: the active learns of it when it reconnects).

    ``tracking`` — how the heap finds changes once this standby is promoted
    ("auto", "wp", "diff", "explicit", as for ``tha.Heap``; default "auto":
    plain writes by the application that carries on are replicated). While
    a standby, the mirror needs no write tracking of its own (it only
    applies frames), so a heap made by bulk sync or loaded from ``save``
    runs in "explicit" until ``promote()`` switches it.

    On disk: ``save`` — a checkpoint file; ``log`` — a delta log beside it
    (fsync policy ``fsync``: "always", "every N ms", "never"). If ``save``
    exists at start, the standby starts from it (``Heap.load(save,
    log=log)``, then the log is attached again), so the active resumes it
    from its backlog instead of a bulk sync. The state is checkpointed every
    ``save_every`` seconds (with a log: compaction, checkpoint + fresh
    log), after each bulk sync (checkpoint + fresh log, before it is acked
    persisted) and on ``close()``. Only a standby with ``log`` acks
    ``ack="persisted"``.

    A disk that fails (full, EIO from fsync) never stops the mirroring: the
    standby drops its log (its files stay at the last state they hold
    whole), goes on applying frames in memory and acking them ``applied``
    but not ``persisted``, and retries the disk with a back-off (0.5 s
    doubling up to ``disk_retry_max``); once a checkpoint and a fresh log
    are written it acks persisted again. ``disk_error`` says why meanwhile.
    """

    disk_retry_max = 30.0

    role_name = "standby"

    def __init__(self, listen=("127.0.0.1", 0), secret: bytes | None = None,
                 heap: Heap | None = None, promote_after: float | None = None,
                 heartbeat: float = 0.2, timeout: float = 2.0, ssl_context=None,
                 functions: dict | None = None, on_applied=None,
                 save=None, log=None, fsync: str = "always",
                 save_every: float | None = None, tracking: str = "auto"):
        _check_listen(listen[0], secret)
        if tracking not in _TRACKING:
            raise Error(f"Standby: tracking must be one of {sorted(_TRACKING)}, "
                        f"not {tracking!r}")
        self.tracking = tracking
        if log is not None and save is None:
            raise Error("Standby: log= needs save= (the checkpoint the log follows)")
        if save_every is not None and save_every <= 0:
            raise Error(f"Standby: save_every must be > 0 seconds, not {save_every}")
        super().__init__(secret, heartbeat, timeout, ssl_context)
        self.save = None if save is None else os.fspath(save)
        self.log_path = None if log is None else os.fspath(log)
        self.fsync = fsync
        self.save_every = save_every
        self.functions = functions or {}
        self.load_report = None   # a tha.LoadReport when resumed from disk
        self.bulk_syncs = 0       # bulk syncs begun (SNAP_BEGIN received)
        self._last_save = time.monotonic()
        self._saved_seq = None
        self.disk_error = None    # why the disk fails, while it does
        self._disk_backoff = 0.0
        self._disk_retry_at = 0.0
        from_disk = False
        if self.save is not None:
            if self.log_path is not None:
                from .durability import parse_fsync
                parse_fsync(fsync)  # a bad policy fails here, not at the first bulk
            given = heap
            heap = self._open_disk(heap)
            from_disk = heap is not None and given is None
            if heap is not None:
                self._saved_seq = heap.stats()["seq"] if given is not None else None
        self.heap = heap
        self._lock = heap._lock if heap else threading.RLock()
        self.cond = threading.Condition(self._lock)
        self.promote_after = promote_after
        self.on_applied = on_applied
        self.promoted_epoch = None
        self.applied_seq = heap.stats()["seq"] if heap else 0
        self.bulk = (0, 0)
        self._last_active = time.monotonic()
        # a state from disk may be stale: promote only after an active was seen
        self._ever_synced = heap is not None and not from_disk
        self._listener = socket.create_server(listen, reuse_port=False)
        self.address = self._listener.getsockname()[:2]
        self._accepting = threading.Thread(target=self._accept, daemon=True,
                                           name="tha-accept")
        self._accepting.start()
        self.ticker.start()
        _logger.info("standby listening on %s:%d", *self.address)

    # Connections not past the handshake (TLS, then tha's HELLO/WELCOME)
    # at once. Beyond it the oldest is closed, not the newcomer refused: a
    # flood of idle connections then only delays a real active by the
    # moment it takes to authenticate (it would be closed only after this
    # many newer connections arrived during its own handshake), whereas
    # refusing new ones would lock it out until the flood's connections
    # reach their handshake deadline (``timeout``), again and again.
    max_unauthenticated = 16

    def _accept(self) -> None:
        """The accept thread: never ends before close(). An accept error
        (EMFILE: out of fds, ENOBUFS, ...) is logged once, then retried
        with a back-off up to 1 s; out of fds, the oldest unauthenticated
        connection is closed to make room."""
        backoff, failing = 0.0, None
        while not self._stopping:
            try:
                sock, addr = self._listener.accept()
            except OSError as e:
                if self._stopping:
                    return
                if e.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                    continue  # that one peer gave up before we took it
                reason = _os_reason(e)
                if reason != failing:
                    log.error("standby: cannot accept connections on %s:%d: %s; "
                              "retrying", self.address[0], self.address[1], reason)
                    failing = reason
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    with self.cond:
                        pending = self._unauthenticated()
                        if pending:
                            log.warning("standby: out of file descriptors: closing "
                                        "%s (not authenticated)", pending[0].peer)
                            pending[0].close()
                backoff = min(backoff * 2, 1.0) if backoff else 0.01
                self._wake.wait(backoff)
                continue
            if failing is not None:
                log.warning("standby: accepting connections again")
                backoff, failing = 0.0, None
            if self._stopping:
                sock.close()
                return
            try:
                self._admit(sock, f"{addr[0]}:{addr[1]}")
            except Exception:  # never let the listener die with one connection
                log.exception("standby: cannot take the connection from %s:%d", *addr[:2])
                sock.close()

    def _admit(self, sock, peer: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.cond:
            pending = self._unauthenticated()
            for old in pending[:max(0, len(pending) - self.max_unauthenticated + 1)]:
                log.warning("standby: %d connections not authenticated: closing the "
                            "oldest, %s", len(pending), old.peer)
                old.close()
            if self.ssl_context is None:
                self._start_conn(sock, peer)
                return
            # no I/O yet (do_handshake_on_connect=False): that is the thread's
            tls = self.ssl_context.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
            hs = _TlsPending(self, tls, peer)
            self._tls_pending.append(hs)
        try:
            threading.Thread(target=self._tls_handshake, args=(hs,), daemon=True,
                             name=f"tha-tls-{peer}").start()
        except RuntimeError:  # can't start a thread: drop this one connection
            with self.cond:
                hs.close()
            tls.close()
            raise

    def _tls_handshake(self, hs: _TlsPending) -> None:
        """Its own thread: the TLS handshake, bounded by ``timeout`` per
        read (and, for a peer that trickles, by the ticker's handshake
        deadline, which closes it)."""
        sock = hs.sock
        try:
            sock.settimeout(self.timeout)
            sock.do_handshake()
            sock.settimeout(None)
        except (OSError, ValueError) as e:
            with self.cond:
                aborted = hs.aborted
                hs.close()
            if not aborted and not self._stopping:
                log.warning("standby: TLS handshake with %s failed: %s", hs.peer,
                            _os_reason(e))
            sock.close()
            return
        with self.cond:
            if hs.aborted or self._stopping:
                sock.close()
                return
            self._tls_pending.remove(hs)  # it is a connection now
            try:
                conn = self._start_conn(sock, hs.peer)
            except Exception:
                log.exception("standby: cannot take the connection from %s", hs.peer)
                sock.close()
                return
            conn.born = hs.born  # one deadline for both handshakes

    def _start_conn(self, sock, peer: str) -> _Conn:
        """Under the lock: a session for an accepted socket."""
        heap_c = self.heap._h if self.heap is not None else _cffi.NULL
        conn = _Conn(self, sock, lib.THA_ROLE_STANDBY, heap_c, _cffi.NULL, peer)
        conn.start()
        self.conns.append(conn)
        return conn

    def _on_event(self, conn, ev) -> None:
        """Under the lock, before anything the session queued while making
        these events goes out (received() flushes after the drain): a
        handler that fails aborts the connection, so the active never hears
        an ack for a state this standby did not take (see _go_live)."""
        try:
            self._handle(conn, ev)
        except Exception as e:  # any failure: nothing queued may leave
            what = {lib.THA_EV_APPLIED: f"applying seq {ev.seq}",
                    lib.THA_EV_BULK_DONE: f"taking the bulk sync live at seq {ev.seq}"}
            conn.abort(f"{what.get(ev.type, 'handling an event')} failed: "
                       f"{type(e).__name__}: {e}")

    def _handle(self, conn, ev) -> None:
        t = ev.type
        msg = _cffi.string(ev.msg).decode(errors="replace")
        if t == lib.THA_EV_READY:
            if self.promoted_epoch is not None:
                # The session fences only an active older than this epoch;
                # one of a newer epoch ignores it: then this node is the
                # stale one, and its own Active will be fenced.
                if ev.epoch > self.promoted_epoch:
                    log.warning("standby: active %s of epoch %d connected to this "
                                "node promoted to epoch %d: refused (this node is "
                                "stale)", conn.peer, ev.epoch, self.promoted_epoch)
                lib.tha_session_fence(conn.s, self.promoted_epoch)
                conn.flush()
                return
            log.info("standby: active %s connected (its seq %d, ours %d)",
                     conn.peer, ev.seq, ev.a)
            self._last_active = time.monotonic()
            if self.heap is not None:  # a state from disk counts once an active is seen
                self._ever_synced = True
            for other in list(self.conns):  # one active at a time: the newest
                if other is not conn:
                    other.close()
        elif t == lib.THA_EV_APPLIED:
            # The frame is in the live heap (apply is all-or-nothing); the
            # callback sees it before the ack the session queued goes out.
            self.applied_seq = ev.seq
            self._last_active = time.monotonic()
            if self.on_applied is not None:
                self.on_applied(ev.seq, ev.a, False)
        elif t == lib.THA_EV_BULK_BEGIN:
            self.bulk = (0, ev.a)
            self.bulk_syncs += 1
            log.info("standby: bulk sync from %s: %d bytes", conn.peer, ev.a)
        elif t == lib.THA_EV_BULK_PROGRESS:
            self.bulk = (ev.a, ev.b)
            self._last_active = time.monotonic()
        elif t == lib.THA_EV_BULK_DONE:
            self._go_live(conn, ev)
        elif t == lib.THA_EV_HEARTBEAT:
            self._last_active = time.monotonic()
        elif t in (lib.THA_EV_ERROR, lib.THA_EV_REFUSED, lib.THA_EV_FENCED):
            log.warning("standby: %s: %s", conn.peer, msg)
            if (t == lib.THA_EV_ERROR and self.heap is not None
                    and self.heap._log_path is not None and _disk_code(ev.code)):
                # the log refused the frame (full, fsync failed): the active
                # bulk syncs (it was NACKed); that state goes live in memory
                self._disk_failed(msg)
        elif t == lib.THA_EV_TIMEOUT:
            log.warning("standby: %s: %s", conn.peer, msg)
            conn.close()

    def _go_live(self, conn, ev) -> None:
        """Under the lock: the bulk sync's heap is consistent and the session
        has queued its applied ack. In order: wrap it (Heap._adopt, which
        may refuse), make it the live heap, on_applied, then with ``save``
        the checkpoint + fresh log and the persisted ack. The acks leave
        after all that (received() flushes after the drain). If the adopt or
        the callback fails the previous live heap (and its log) is put back
        and the exception propagates: _on_event aborts the connection
        unsent. A checkpoint that cannot be written is a disk failure: the
        new state stays live in memory, without the persisted ack."""
        old, old_seq = self.heap, self.applied_seq
        heap_c = lib.tha_session_take_heap(conn.s)
        new = Heap._adopt(heap_c, self._lock, self.functions)
        conn.keep = new  # the session points at it until it is destroyed
        detached = False
        try:
            self.heap, self.applied_seq = new, ev.seq
            if self.on_applied is not None:
                self.on_applied(ev.seq, ev.a, True)
            if self.save is not None:  # the disk follows the new state
                if old is not None and old._log_path is not None:
                    try:
                        old.detach_log()  # the files stay as they are until _rebase
                    except Error:
                        pass              # its fsync failed: the files hold less
                    detached = True
                try:
                    self._rebase(new)
                except Error as e:      # live in memory; no persisted ack
                    self._disk_failed(f"cannot write the new state to {self.save}: {e}")
                else:
                    self._disk_works()
                    self._persisted(new.stats()["seq"], flush=False)
        except BaseException:
            self.heap, self.applied_seq = old, old_seq
            if detached:
                self._reattach(old)
            raise
        self._ever_synced = True
        log.info("standby: bulk sync done, live at seq %d", ev.seq)

    def _disk_failed(self, why: str) -> None:
        """Under the lock: the disk refused a write. The log is dropped (the
        files keep the last whole state they hold), mirroring goes on in
        memory without persisted acks, and _on_tick retries the disk."""
        if self.heap is not None and self.heap._log_path is not None:
            try:
                self.heap.detach_log()
            except Error:
                pass  # its fsync fails too: what it held unsynced is not counted
        self._disk_backoff = min(self._disk_backoff * 2, self.disk_retry_max) \
            if self._disk_backoff else 0.5
        self._disk_retry_at = time.monotonic() + self._disk_backoff
        self._saved_seq = None
        if why != self.disk_error:
            log.error("standby: %s; mirroring in memory without persisted acks, "
                      "retrying the disk (back-off up to %gs)", why, self.disk_retry_max)
        else:
            log.debug("standby: the disk still fails: %s", why)
        self.disk_error = why

    def _disk_works(self) -> None:
        """Under the lock: a checkpoint and a fresh log were written."""
        if self.disk_error is not None:
            log.warning("standby: writing to %s again (seq %d on disk); acking "
                        "persisted again", self.save, self.heap.stats()["seq"])
        self.disk_error = None
        self._disk_backoff = 0.0

    def _reattach(self, heap) -> None:
        """The old heap's log again, after a failed rebase: its files were
        left as they were unless the new checkpoint already replaced them."""
        try:
            heap.attach_log(self.log_path, self.fsync)
        except Error as e:  # no log: this standby stops acking persisted
            log.error("standby: cannot attach %s to the previous state again: %s",
                      self.log_path, e)

    # -- on disk (save=, log=) -------------------------------------------

    def _open_disk(self, heap) -> Heap | None:
        """At start: the state saved by an earlier run, if any, with its log
        attached again; else ``heap``, written to disk at once."""
        if not os.path.exists(self.save):
            if heap is not None:
                self._rebase(heap)
            return heap
        if heap is not None:
            raise Error(f"Standby: {self.save} exists; pass heap= or a save "
                        "file to resume from, not both")
        use_log = self.log_path if (self.log_path is not None
                                    and os.path.exists(self.log_path)) else None
        # a mirror tracks nothing itself; promote() switches to self.tracking
        heap = Heap.load(self.save, log=use_log, functions=self.functions,
                         tracking="explicit")
        self.load_report = heap.load_report
        log.info("standby: resuming from %s: %s", self.save, heap.load_report)
        if self.log_path is not None:
            try:
                if use_log is None:
                    raise Error("no log yet")
                heap.attach_log(self.log_path, self.fsync)
            except Error as e:  # not a continuation of this state: start over
                log.info("standby: starting a fresh log %s (%s)", self.log_path, e)
                self._rebase(heap)
        return heap

    def _rebase(self, heap=None) -> None:
        """Under the lock: puts the current state on disk and restarts the
        log from it. Order (so the files always hold a real state): the
        checkpoint replaces the old one atomically first; the old log may
        then still sit beside it (load skips or stops at its frames); then
        the old log is removed and a fresh one (header at this seq) made."""
        heap = heap if heap is not None else self.heap
        if heap._log_path is not None:  # a continuation: compaction is atomic
            heap.compact(self.save)
            return
        heap.checkpoint(self.save)
        if self.log_path is not None:
            try:
                os.unlink(self.log_path)
            except FileNotFoundError:
                pass
            heap.attach_log(self.log_path, self.fsync)

    def _persisted(self, seq: int, flush: bool = True) -> None:
        """Under the lock: the state through seq is on disk (checkpoint plus
        fresh log): the active may count it as persisted. ``flush`` False
        from an event handler: the ack leaves with the rest after the drain."""
        if self.log_path is None:
            return  # no log, no persisted acks (documented)
        for c in self.conns:
            if c.s is not None and not c.closed:
                lib.tha_session_persisted(c.s, seq)
                if flush:
                    c.flush()

    def checkpoint(self) -> None:
        """Writes the mirrored state to ``save`` now (with a log: compaction,
        checkpoint + fresh log) and acks it as persisted."""
        with self.cond:
            self._save_locked()

    def _save_locked(self) -> None:
        self._last_save = time.monotonic()
        if self.save is None or self.heap is None:
            return
        seq = self.heap.stats()["seq"]
        if seq == self._saved_seq and os.path.exists(self.save):
            return
        try:
            self._rebase()
        except Error as e:
            self._disk_failed(f"cannot write to {self.save}: {e}")
            raise
        self._disk_works()
        self._saved_seq = seq
        self._persisted(seq)

    def _on_tick(self) -> None:
        now = time.monotonic()
        if self.save is not None and (
                (self.disk_error is not None and now >= self._disk_retry_at)
                or (self.disk_error is None and self.save_every is not None
                    and now - self._last_save >= self.save_every)):
            try:
                self._save_locked()
            except Error:
                pass  # _disk_failed logged it and set the next retry
        if (self.promote_after is not None and self.promoted_epoch is None
                and self._ever_synced
                and time.monotonic() - self._last_active > self.promote_after):
            log.warning("standby: no word from the active for %.1fs: promoting",
                        self.promote_after)
            self._promote_locked()

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """True once the live heap has applied frame ``seq``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.applied_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def _promote_locked(self) -> Heap:
        if self.heap is None:
            raise Error("cannot promote: this standby never received a state")
        if self.promoted_epoch is None:
            epoch = self.heap.stats()["epoch"] + 1
            # The application writes this heap from now on: it must find
            # those writes the way it asked (a bulk-synced heap is explicit).
            self.heap.set_tracking(self.tracking)
            check(lib.tha_heap_set_epoch(self.heap._h, epoch))
            self.promoted_epoch = epoch
            for c in list(self.conns):
                if c.s is not None:
                    lib.tha_session_fence(c.s, epoch)
                    c.flush()
            log.warning("standby: promoted to epoch %d at seq %d", epoch,
                        self.applied_seq)
        self.cond.notify_all()
        return self.heap

    def promote(self) -> Heap:
        """Becomes the active: bumps the epoch (fencing the old active) and
        returns the heap to carry on with, e.g. ``tha.Active(heap, ...)``."""
        with self.cond:
            return self._promote_locked()

    @property
    def promoted(self) -> bool:
        return self.promoted_epoch is not None

    def status(self) -> dict:
        with self.cond:
            st = self.heap.stats() if self.heap is not None else {}
            return {"role": "promoted" if self.promoted else "standby",
                    "address": self.address, "epoch": st.get("epoch", 0),
                    "applied_seq": self.applied_seq,
                    "peers": [c.status() for c in self.conns if c.s is not None],
                    "bulk": self.bulk, "bulk_syncs": self.bulk_syncs,
                    "save": self.save, "log": self.log_path}

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        try:  # wakes the accept thread; close() alone would leave it blocked
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepting.join(5)
        self._close_all()
        if self.save is not None and self.heap is not None:
            with self.cond:  # the last state on disk (also on SIGTERM via the CLI)
                try:
                    self._save_locked()
                finally:
                    if not self.promoted and self.heap._log_path is not None:
                        self.heap.detach_log()


class _Peer:
    """An active's view of one configured standby address, across its
    connections: why it is not (yet) usable."""

    def __init__(self, addr):
        self.addr = addr
        self.where = f"{addr[0]}:{addr[1]}"
        self.refused: Error | None = None  # a definite refusal, until READY
        self.refused_at = 0.0
        self.proven = False                # the refusal came after proof
        self.error: str | None = None      # the last connect/session failure
        self.logged: str | None = None     # the last reason logged (log once)


class Active(_Node):
    """Replicates ``heap`` to standbys; ``sync()`` ships what changed.

    ``ack`` is the default level ``sync()`` waits for; ``ack_quorum`` how
    many standbys must reach it (default: all). ``backlog_bytes`` bounds the
    deltas kept for resume and how far a standby may lag before it is
    dropped to bulk sync.

    The constructor does not block: a thread per standby connects (and
    reconnects) in the background. A standby that refuses for a reason that
    will not change by itself — a wrong or missing secret on either side
    (:class:`AuthError`), another schema (:class:`tha.SchemaMismatch`, naming
    the field), another protocol version (:class:`VersionMismatch`) — is
    logged once and retried only every ``refused_retry`` seconds, or every
    ``unproven_retry`` if it came before the standby proved the secret (so
    a standby fixed meanwhile is picked up, and a stranger at its address
    cannot deny it for longer than it stays); while too few standbys are left
    to reach ``ack_quorum``, ``sync()`` raises that refusal at once, naming
    the standby, instead of a :class:`SyncTimeout`. The first ``sync()``
    after the constructor thus raises the refusal as soon as the standby
    answers. A standby that cannot be reached is named, with the OS's
    reason, in the :class:`SyncTimeout`.
    """

    role_name = "active"
    # sync() polls its sockets without sleeping for up to this long (seconds)
    # before it waits in select: 0 never spins.
    spin = 100e-6
    # Seconds between attempts at a standby that refused definitely (see the
    # class doc). A refusal by a standby that proved the secret (another
    # schema) waits refused_retry; one before proof (a wrong secret, another
    # version) only unproven_retry: anyone at the standby's address could
    # have sent it, so it may change nothing but this short pace and what
    # sync() says — whoever holds the address can deny us that standby
    # anyway (by not answering), but must not deny it for longer than it
    # stays there.
    refused_retry = 15.0
    unproven_retry = 1.0

    def __init__(self, heap: Heap, standbys, secret: bytes | None = None,
                 ack: str = "applied", ack_quorum: int | None = None,
                 timeout: float = 5.0, backlog_bytes: int = 64 << 20,
                 heartbeat: float = 0.2, peer_timeout: float = 2.0,
                 ssl_context=None):
        if ack not in ACK_LEVELS:
            raise Error(f"ack must be one of {list(ACK_LEVELS)}, not {ack!r}")
        super().__init__(secret, heartbeat, peer_timeout, ssl_context)
        self.heap = heap
        self._lock = heap._lock
        self.cond = threading.Condition(self._lock)
        self.standbys = [tuple(a) for a in standbys]
        self.ack = ack
        self.ack_quorum = len(self.standbys) if ack_quorum is None else ack_quorum
        if not 0 <= self.ack_quorum <= len(self.standbys):
            raise Error(f"ack_quorum {ack_quorum} is not within 0..{len(self.standbys)}")
        self.sync_timeout = timeout
        self.fenced_epoch = None
        self.fenced_by = None  # the standby that said so
        self._by_addr: dict = {}
        self._peers = {a: _Peer(a) for a in self.standbys}
        out = _cffi.new("tha_backlog_t **")
        check(lib.tha_backlog_create(out, backlog_bytes))
        self._backlog = _cffi.gc(out[0], lib.tha_backlog_destroy)
        self._connectors = [threading.Thread(target=self._connect_loop, args=(a,),
                                             daemon=True, name=f"tha-connect-{a[1]}")
                            for a in self.standbys]
        for t in self._connectors:
            t.start()
        self.ticker.start()

    def _connect_loop(self, addr) -> None:
        peer = self._peers[addr]
        delay = 0.05
        while not self._stopping and self.fenced_epoch is None:
            with self.cond:
                current = self._by_addr.get(addr)
                refused_at = peer.refused_at if peer.refused is not None else None
                if current is not None and current.closed:
                    del self._by_addr[addr]
            if current is not None and not current.closed:
                self._wake.wait(0.05)
                continue
            if current is not None:
                if getattr(current, "ready", False):
                    delay = 0.05  # it worked: reconnect at once
                else:  # it failed before the handshake ended: back off
                    self._wake.wait(delay)
                    delay = min(delay * 2, 1.0)
                    continue
            if refused_at is not None:  # a definite refusal: the slow pace
                pace = self.refused_retry if peer.proven else self.unproven_retry
                left = refused_at + pace - time.monotonic()
                if left > 0:
                    self._wake.wait(min(left, 1.0))
                    continue
            try:
                # self.timeout bounds the connect and the TLS handshake
                sock = socket.create_connection(addr, timeout=self.timeout)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if self.ssl_context is not None:
                        sock = self.ssl_context.wrap_socket(sock, server_hostname=addr[0])
                    sock.settimeout(None)
                except BaseException:
                    sock.close()
                    raise
            except (OSError, ValueError) as e:
                self._link_error(peer, f"cannot connect: {_os_reason(e)}")
                self._wake.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            with self.cond:
                if self._stopping:
                    sock.close()
                    return
                if peer.refused is not None:  # keeps the slow pace if this fails
                    peer.refused_at = time.monotonic()
                try:
                    conn = _Conn(self, sock, lib.THA_ROLE_ACTIVE, self.heap._h,
                                 self._backlog, peer.where)
                    conn.addr = addr
                    conn.start()
                except Exception as e:  # never let this standby's thread die
                    log.error("active: cannot start a session with %s: %s", peer.where, e)
                    sock.close()
                    self._wake.wait(1.0)
                    continue
                self.conns.append(conn)
                self._by_addr[addr] = conn

    def _link_error(self, peer, reason: str) -> None:
        """A connection attempt failed: logged when the reason changes (the
        retries behind it at debug level), kept for SyncTimeout's message."""
        with self.cond:
            peer.error = reason
            if reason == peer.logged:
                log.debug("active: %s: %s", peer.where, reason)
                return
            peer.logged = reason
        log.warning("active: standby %s: %s; retrying (with a back-off up to 1s)",
                    peer.where, reason)

    def _on_event(self, conn, ev) -> None:
        t = ev.type
        msg = _cffi.string(ev.msg).decode(errors="replace")
        peer = self._peers.get(getattr(conn, "addr", None))
        if t == lib.THA_EV_READY:
            conn.resumed = bool(ev.b)
            conn.ready = True
            log.info("active: standby %s ready at seq %d (%s)", conn.peer, ev.seq,
                     "resuming" if ev.b else "bulk sync")
            if peer is not None:
                if peer.refused is not None:
                    log.warning("active: standby %s accepts this active now", peer.where)
                elif peer.logged is not None:
                    log.warning("active: standby %s reached", peer.where)
                peer.refused = peer.error = peer.logged = None
        elif t == lib.THA_EV_FENCED:
            # The session reports this only for a standby that proved the
            # secret and names an epoch newer than ours (docs/protocol.md).
            self.fenced_epoch = ev.epoch or -1
            self.fenced_by = conn.peer
            log.error("active: fenced by %s: %s", conn.peer, msg)
        elif t in (lib.THA_EV_REFUSED, lib.THA_EV_ERROR) and ev.code in _DEFINITE \
                and peer is not None and not (t == lib.THA_EV_ERROR
                                              and getattr(conn, "ready", False)):
            # (A message that fails its MAC *after* both ends proved the
            # secret is a changed byte on the way, a failing link: it falls
            # through to the link error below and the connection is retried
            # at once, not paced and raised as a wrong secret.)
            conn.last_error = msg
            self._refused(peer, _DEFINITE[ev.code], msg,
                          proven=t == lib.THA_EV_REFUSED and bool(ev.a))
        elif t in (lib.THA_EV_REFUSED, lib.THA_EV_ERROR) and peer is not None \
                and not getattr(conn, "ready", False):
            # in the handshake: the connect loop backs off; logged once per reason
            conn.last_error = msg
            self._link_error(peer, msg)
        elif t == lib.THA_EV_REFUSED:
            log.error("active: %s refused: %s", conn.peer, msg)
            conn.last_error = msg
        elif t == lib.THA_EV_ERROR:
            log.warning("active: %s: %s", conn.peer, msg)
            conn.last_error = msg
            if peer is not None:
                peer.error = msg
        elif t == lib.THA_EV_TIMEOUT:
            log.warning("active: %s: %s", conn.peer, msg)
            conn.close()
        elif t == lib.THA_EV_BULK_DONE:
            log.info("active: bulk sync of %d bytes sent to %s", ev.a, conn.peer)

    def _refused(self, peer, cls, msg: str, proven: bool) -> None:
        """Under the lock: a definite refusal (ev.code decides; the text is
        only shown). Logged once per distinct reason."""
        peer.refused = cls(f"standby {peer.where}: {msg}")
        peer.refused_at = time.monotonic()
        peer.proven = proven
        peer.error = msg
        if peer.logged == msg:
            log.debug("active: %s still refuses: %s", peer.where, msg)
            return
        peer.logged = msg
        log.error("active: standby %s: %s; retrying it every %gs", peer.where, msg,
                  self.refused_retry if proven else self.unproven_retry)

    def _refusal(self, acked) -> Error | None:
        """Under the lock: the error to raise if the standbys that refused
        definitely leave too few to reach the quorum."""
        refused = [p for p in self._peers.values()
                   if p.refused is not None and p.where not in acked]
        if not refused or len(self._peers) - len(refused) >= self.ack_quorum:
            return None
        first = refused[0].refused
        if len(refused) == 1:
            return type(first)(str(first))
        return type(first)("; ".join(str(p.refused) for p in refused))

    def _why(self, where: str) -> str:
        """Under the lock: why a standby has not acked, for SyncTimeout."""
        peer = next((p for p in self._peers.values() if p.where == where), None)
        if peer is None:
            return ""
        conn = self._by_addr.get(peer.addr)
        if conn is None or conn.closed or conn.s is None:
            return f" ({peer.error or 'not connected'})"
        state = conn._state()
        if state == 0:
            return " (connected; the handshake has not finished)"
        if state == 1:
            return " (bulk sync in progress)"
        return ""

    def sync(self, ack: str | None = None, timeout: float | None = None) -> SyncResult:
        """Encodes what changed since the last sync and ships it; returns once
        ``ack_quorum`` standbys have it at level ``ack``. Call it at a point
        where the heap is consistent for your application."""
        ack = ack or self.ack
        if ack not in ACK_LEVELS:
            raise Error(f"ack must be one of {list(ACK_LEVELS)}, not {ack!r}")
        level = ACK_LEVELS[ack]
        timeout = self.sync_timeout if timeout is None else timeout
        with self.cond:
            if self.fenced_epoch is not None:
                raise Fenced(f"this active is fenced: standby {self.fenced_by} was "
                             f"promoted to epoch {self.fenced_epoch}; stop and rejoin "
                             "as a standby")
            if self._backlog is None:
                raise StateError("this active is closed: sync() needs a new Active")
            # Encoded straight into the backlog, which reuses the memory of the
            # frame it last dropped: no copy, no fresh pages per sync.
            seq_p = _cffi.new("uint64_t *")
            len_p = _cffi.new("size_t *")
            self.heap._check(lib.tha_backlog_encode(self._backlog, self.heap._h,
                                                    seq_p, len_p))
            seq, nbytes = seq_p[0], len_p[0]
            for c in self.conns:
                if c.s is not None and not c.closed:
                    lib.tha_session_pump(c.s, max(level, lib.THA_ACK_RECEIVED))
                    self._drain(c)
                    c.flush()
            result = SyncResult(seq, nbytes)
            if level == lib.THA_ACK_NONE or self.ack_quorum == 0:
                return result
            deadline = time.monotonic() + timeout
            owned = [c for c in self.conns if c.shared_input and not c.closed]
            for c in owned:
                c.owner += 1
            try:
                return self._wait_acks(result, seq, level, ack, timeout, deadline)
            finally:
                # No notify: the reader waits with a timeout (see _Conn), and
                # waking it now would cost the next round trip its wake-up.
                until = time.monotonic()
                for c in owned:
                    c.owner -= 1
                    if not c.owner:
                        c.owned_until = until + c.idle

    def _wait_acks(self, result, seq, level, ack, timeout, deadline) -> SyncResult:
        """Under the lock: until enough standbys acked seq at level. Reads
        the sockets it owns itself, with the lock released while it waits."""
        spin_until = time.perf_counter() + self.spin
        while True:
            if self.fenced_epoch is not None:
                raise Fenced(f"fenced while waiting for seq {seq}: standby "
                             f"{self.fenced_by} was promoted to epoch {self.fenced_epoch}")
            # A quorum counts nodes, not connections: the handshake proves
            # "knows the secret", not "is the standby at this address", so a
            # relay at one standby's address to another must not make that
            # other count twice (one node, one vote: the first address).
            acked, nodes = [], set()
            for c in self.conns:
                if c.s is not None and c.acked(level) >= seq:
                    node = c.peer_node()
                    if node not in nodes:
                        nodes.add(node)
                        acked.append(c.peer)
            if len(acked) >= self.ack_quorum:
                result.acked_by = acked
                return result
            refusal = self._refusal(acked)
            if refusal is not None:
                raise refusal
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [f"{a[0]}:{a[1]}" for a in self.standbys
                           if f"{a[0]}:{a[1]}" not in acked]
                hint = ""
                if level == lib.THA_ACK_PERSISTED:
                    applied = [c.peer for c in self.conns if c.s is not None
                               and c.acked(lib.THA_ACK_APPLIED) >= seq
                               and c.peer in missing]
                    if applied:
                        errors = [f"{p.where}: {p.error}" for p in self._peers.values()
                                  if p.where in applied and p.error]
                        hint = (f" ({', '.join(applied)} applied it but did not "
                                "persist it: " + ("; ".join(errors) if errors else
                                "a standby acks 'persisted' only if it keeps a "
                                "delta log, Standby(save=..., log=...) or --log")
                                + ")")
                raise SyncTimeout(
                    f"seq {seq}: {len(acked)} of {self.ack_quorum} required "
                    f"standbys acknowledged '{ack}' within {timeout}s; "
                    f"missing: {', '.join(m + self._why(m) for m in missing)}{hint}")
            wait = min(left, 0.05)
            fds = [c for c in self.conns if c.owner and not c.closed
                   and not c.reading and c.s is not None]
            if fds and time.perf_counter() < spin_until:
                # Polls briefly before sleeping: a small ack is often back
                # within tens of µs, and waking from select costs about as
                # much again (far more when the standby runs on another CPU
                # of a VM). sched_yield lets a standby on this CPU run.
                os.sched_yield()
                for c in fds:
                    c.read_owned()
                continue
            if not fds:
                self.cond.wait(wait)
                continue
            saved = self._lock._release_save()
            try:
                ready = select.select(fds, (), (), wait)[0]
            except (OSError, ValueError):  # a socket closed under us
                ready = []
            finally:
                self._lock._acquire_restore(saved)
            for c in ready:
                c.read_owned()

    @property
    def fenced(self) -> bool:
        return self.fenced_epoch is not None

    def status(self) -> dict:
        with self.cond:
            st = self.heap.stats()
            first, last, nbytes = (_cffi.new("uint64_t *") for _ in range(3))
            if self._backlog is not None:
                lib.tha_backlog_range(self._backlog, first, last, nbytes)
            peers = []
            for c in self.conns:
                if c.s is None:
                    continue
                p = c.status()
                p["lag_frames"] = st["seq"] - p["acked_applied"]
                peers.append(p)
            standbys = {}
            for p in self._peers.values():
                conn = self._by_addr.get(p.addr)
                standbys[p.where] = {
                    "connected": conn is not None and not conn.closed,
                    "refused": None if p.refused is None else str(p.refused),
                    "error": p.error}
            return {"role": "fenced" if self.fenced else "active",
                    "epoch": st["epoch"], "seq": st["seq"],
                    "backlog": {"first": first[0], "last": last[0], "bytes": nbytes[0]},
                    "peers": peers, "standbys": standbys}

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        for t in self._connectors:
            t.join(5)
        self._close_all()
        # The backlog makes the heap's frames while it exists (the heap
        # refuses delta()/snapshot() meanwhile): freed once its sessions
        # are, so the heap is the application's own again.
        with self.cond:
            if self._backlog is not None:
                _cffi.release(self._backlog)
                self._backlog = None


__all__ = ["Active", "Standby", "SyncResult", "Fenced", "SyncTimeout",
           "AuthError", "VersionMismatch", "ACK_LEVELS", "Schema"]

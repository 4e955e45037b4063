"""The connection layer of the replication driver: one socket and its C
session (:class:`_Conn`, a reader and a writer thread), a TLS handshake in
progress (:class:`_TlsPending`) and what an active and a standby share
(:class:`_Node`: the lock, the ticker thread that drives heartbeats and
timeouts, the list of connections, the secret, the HMAC callback).

The protocol lives in C (``tha_session_*``, sans-I/O); this layer only
moves bytes between sessions and sockets, keeps time and hands session
events to the node (``_Node._on_event``, which tha/replication/active.py
and standby.py implement). Everything touching a session or its heap runs
under the heap's lock; sockets are written outside it (the bytes stay valid
until the session is told they went out).
"""

from __future__ import annotations

import hmac
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Tuple, Union

from .._ffi import ffi as _cffi, lib
from ..errors import Error, InvalidArgument, check

log = logging.getLogger("tha")

_INLINE_MAX = 0  # send_now() sends items of any size, as far as the socket takes them
_STATES = {0: "handshake", 1: "bulk", 2: "catching-up", 3: "streaming", 4: "closed"}


def _os_reason(e: BaseException) -> str:
    """'Connection refused', 'timed out', '[SSL: ...] ...': what the OS or
    TLS said, without the errno noise."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__



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
        min_epoch = getattr(node, "min_epoch", None)
        if role == lib.THA_ROLE_STANDBY and min_epoch is not None:
            cfg.min_epoch = int(min_epoch())  # older actives fenced at HELLO
        bindings = getattr(node, "_bindings", None)
        if role == lib.THA_ROLE_STANDBY and bindings is not None:
            cfg.bindings = bindings  # node keeps it (and its cdata) alive
        reserve = getattr(node, "_reserve", None)
        if role == lib.THA_ROLE_STANDBY and reserve is not None:
            cfg.reserve = reserve  # node keeps it alive while its sessions live
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
                if not node.may_send():  # an active whose lease ran out
                    with node.cond:
                        self.abort("the lease ran out: nothing more may be sent")
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
        """Under the lock: sends queued output (acks, frames) from the
        calling thread, as far as the socket takes it without blocking, so a
        round trip needs no wake-up of the writer thread (for a frame of
        150 KB that wake-up, the GIL and the lock hand-over cost more than
        the send: f = 0.1% of the bench's records, 1.7-3.0 ms -> 1.3 ms).
        The socket's free space bounds what one call copies under the lock;
        the writer sends the rest (a full socket buffer, TLS)."""
        if not self._inline or self.sending or self.closed or self.s is None:
            return
        if not self.node.may_send():
            return  # the writer thread aborts the connection
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


# an address: a (host, port) pair or a 'HOST:PORT' string
Address = Union[Tuple[str, int], str]


def parse_address(value: Address, what: str, any_port: bool = False) -> tuple:
    """(host, port) from a (host, port) pair or a 'HOST:PORT' string
    ('[::1]:7400' for IPv6); InvalidArgument naming ``what`` otherwise.
    Port 0 ("any free port") only where ``any_port`` (a listener)."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):
            raise InvalidArgument(f"{what}: {value!r} is not HOST:PORT")
        value = (host.strip("[]"), int(port))
    try:
        host, port = value
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what}: {value!r} is not (host, port) or 'HOST:PORT'") \
            from None
    if not isinstance(host, str) or not host:
        raise InvalidArgument(f"{what}: the host of {value!r} must be a non-empty string")
    if isinstance(port, bool) or not isinstance(port, int) or \
            not (0 if any_port else 1) <= port <= 65535:
        raise InvalidArgument(f"{what}: port {port!r} is not within "
                              f"{0 if any_port else 1}..65535")
    return host, port


def _duration(who: str, what: str, value) -> float:
    """Seconds, finite and at least 1 ms; InvalidArgument naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0.001 <= value < float("inf"):
        raise InvalidArgument(f"{who}: {what} must be a number of seconds, at least "
                              f"0.001 and finite, not {value!r}")
    return float(value)


class _Node:
    """What Active and Standby share: lock, ticker, connections, secret."""

    role_name = "node"
    mac_fn = None  # the HMAC callback: None picks _MAC_FN (tests set another)

    def __init__(self, secret, heartbeat, timeout, ssl_context, timeout_name="timeout"):
        if secret and not isinstance(secret, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"{self.role_name}: secret must be bytes, not "
                        f"{type(secret).__name__}")
        if secret and len(secret) > 256:
            raise InvalidArgument(f"{self.role_name}: a secret of {len(secret)} bytes; at most "
                        "256 (hash a longer one first)")
        self.secret = bytes(secret) if secret else None
        # The liveness rule counts a gap between ticks beyond the heartbeat
        # period as this process's own stall: heartbeat=0 would make every
        # gap one (no timeout, no promotion, ever). The session takes whole
        # ms (0: its default), so below 1 ms the two clocks would disagree.
        self.heartbeat = _duration(self.role_name, "heartbeat", heartbeat)
        self.timeout = _duration(self.role_name, timeout_name, timeout)
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
        last = time.monotonic()
        while not self._stopping:
            time.sleep(period)
            try:
                with self.cond:
                    # Ticks come every period; a gap beyond the heartbeat
                    # period is this process's own stall (CPU, the GIL),
                    # in which it could not read: no silence of the peer's
                    # (the same rule as tha_session_tick's timeout clock).
                    now = time.monotonic()
                    stall, last = max(0.0, now - last - self.heartbeat), now
                    for c in list(self.conns):
                        if c.s is not None and not c.closed:
                            lib.tha_session_tick(c.s, _now_ms())
                            self._drain(c)
                            c.flush()
                    self._on_tick(stall)
                    self._reap_handshakes()
                    self.cond.notify_all()
                    dead, self._dead = self._dead, []
                for c in dead:
                    c.destroy()
            except Exception:  # never let the heartbeat die silently
                log.exception("%s: ticker", self.role_name)

    def _on_tick(self, stall: float) -> None:
        """Under the lock, every tick; stall: seconds of this process's own
        stall since the last one (see _tick)."""

    def may_send(self) -> bool:
        """False while nothing may be sent (an Active past its lease)."""
        return True

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

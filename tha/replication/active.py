"""Active: replicates a heap to standbys; ``sync()`` ships what changed
and waits for the acks (the ack levels: tha/replication/__init__.py)."""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._ffi import ffi as _cffi, lib
from ..errors import (Error, Fenced, InvalidArgument, NotLeader, StateError, SyncTimeout,
                       check, error_class)
from ..heap import Heap
from .connection import Address, _Conn, _Node, _os_reason, log, parse_address

ACK_LEVELS = {"none": lib.THA_ACK_NONE, "received": lib.THA_ACK_RECEIVED,
              "applied": lib.THA_ACK_APPLIED, "persisted": lib.THA_ACK_PERSISTED}


# A standby refused this active (or this active refused it) for a reason
# another attempt in a second will not change: see Active.refused_retry.
# The codes only; their classes come from the one map (errors.error_class).
_DEFINITE = (lib.THA_EAUTH, lib.THA_EMISMATCH, lib.THA_EVERSION)
# session events an active only counts (the session keeps the acks)
_QUIET = frozenset((lib.THA_EV_ACK, lib.THA_EV_HEARTBEAT, lib.THA_EV_BULK_PROGRESS))


@dataclass
class SyncResult:
    seq: int           # the frame this sync produced (standby.applied_seq counts the same)
    bytes: int         # its size on the wire
    acked_by: list = field(default_factory=list)  # standby addresses that acked



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

    ``set_standbys()`` changes the standbys while it runs (the backlog and
    the connections to the standbys kept stay); ``set_quorum()`` asks for
    acks from several groups of them at once (tha.Node uses both while a
    member joins). ``lease_until`` (a ``time.monotonic()`` deadline, None:
    none) bounds how long this active may act: past it ``sync()`` raises
    :class:`tha.NotLeader` instead of encoding or returning, and nothing
    more is sent or connected (tha.Node sets it from its leader lease).

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

    def __init__(self, heap: Heap, standbys: Iterable[Address],
                 secret: bytes | None = None,
                 ack: str = "applied", ack_quorum: int | None = None,
                 timeout: float = 5.0, backlog_bytes: int = 64 << 20,
                 heartbeat: float = 0.2, peer_timeout: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None):
        if ack not in ACK_LEVELS:
            raise InvalidArgument(f"ack must be one of {list(ACK_LEVELS)}, not {ack!r}")
        super().__init__(secret, heartbeat, peer_timeout, ssl_context, "peer_timeout")
        self.heap = heap
        self._lock = heap._lock
        self.cond = threading.Condition(self._lock)
        if isinstance(standbys, (str, tuple)):
            raise InvalidArgument("Active: standbys is a list of addresses, e.g. "
                                  f"[('127.0.0.1', 7400)] or ['127.0.0.1:7400'], not "
                                  f"{standbys!r}")
        self.standbys = [parse_address(a, "Active: standby") for a in standbys]
        self.ack = ack
        self.ack_quorum = len(self.standbys) if ack_quorum is None else ack_quorum
        if not 0 <= self.ack_quorum <= len(self.standbys):
            raise InvalidArgument(f"ack_quorum {ack_quorum} is not within "
                                  f"0..{len(self.standbys)}")
        # set_quorum's [(standbys as "HOST:PORT", acks needed)]: sync()
        # returns once every group has its count; None: ack_quorum of all
        self._groups = None
        self.lease_until: float | None = None
        self.sync_timeout = timeout
        self.fenced_epoch = None
        self.fenced_by = None  # the standby that said so
        self._by_addr: dict = {}
        self._peers = {a: _Peer(a) for a in self.standbys}
        out = _cffi.new("tha_backlog_t **")
        check(lib.tha_backlog_create(out, backlog_bytes))
        self._backlog = _cffi.gc(out[0], lib.tha_backlog_destroy)
        self._connectors = []
        for a in self.standbys:
            self._start_connector(a)
        self.ticker.start()

    @property
    def ack_quorum(self) -> int:
        return self._ack_quorum

    @ack_quorum.setter
    def ack_quorum(self, k: int) -> None:
        """How many of all standbys must ack (drops set_quorum's groups)."""
        self._ack_quorum = k
        self._groups = None

    @property
    def _quorum(self) -> list:
        if self._groups is not None:
            return self._groups
        return [(frozenset(f"{a[0]}:{a[1]}" for a in self.standbys), self._ack_quorum)]

    def _start_connector(self, addr) -> None:
        t = threading.Thread(target=self._connect_loop, args=(addr,), daemon=True,
                             name=f"tha-connect-{addr[1]}")
        self._connectors.append(t)
        t.start()

    def may_send(self) -> bool:
        """False once the lease (lease_until) ran out: nothing may leave."""
        until = self.lease_until
        return until is None or time.monotonic() < until

    def _check_lease(self, what: str) -> None:
        if not self.may_send():
            raise NotLeader(f"{what}: this active's lease ran out "
                            f"{time.monotonic() - self.lease_until:.3f}s ago; "
                            "it may no longer replicate")

    def set_standbys(self, standbys: Iterable[Address]) -> None:
        """Replicates to ``standbys`` from now on: new ones are connected
        (they resume from the backlog or bulk sync), dropped ones
        disconnected. The quorum becomes one group of all of them needing
        ``ack_quorum`` (capped at their number): call set_quorum() after
        for another."""
        addrs = [parse_address(a, "Active.set_standbys") for a in standbys]
        with self.cond:
            new = [a for a in addrs if a not in self._peers]
            gone = [a for a in self._peers if a not in addrs]
            for a in gone:
                del self._peers[a]
                conn = self._by_addr.pop(a, None)
                if conn is not None:
                    conn.close()
            for a in new:
                self._peers[a] = _Peer(a)
            self.standbys = addrs
            self.ack_quorum = min(self._ack_quorum, len(addrs))
            self.cond.notify_all()
        for a in new:
            self._start_connector(a)

    def set_quorum(self, groups: Iterable[tuple[Iterable[Address], int]]) -> None:
        """``groups``: [(standby addresses, acks needed), ...]; sync()
        returns once each group has that many acks (one node, one vote, as
        always). Every address must be a standby."""
        out = []
        with self.cond:
            known = {p.where for p in self._peers.values()}
            for addrs, k in groups:
                where = frozenset("%s:%d" % parse_address(a, "Active.set_quorum")
                                  for a in addrs)
                if not where <= known:
                    raise InvalidArgument(f"Active.set_quorum: {sorted(where - known)} "
                                          "are not standbys of this active")
                if not 0 <= k <= len(where):
                    raise InvalidArgument(f"Active.set_quorum: {k} acks from "
                                          f"{len(where)} standbys")
                out.append((where, k))
            self._groups = out or [(frozenset(), 0)]
            self._ack_quorum = max(k for _, k in self._groups)
            self.cond.notify_all()

    def _connect_loop(self, addr) -> None:
        peer = self._peers[addr]
        delay = 0.05
        while not self._stopping and self.fenced_epoch is None:
            if self._peers.get(addr) is not peer:
                return  # set_standbys dropped it
            if not self.may_send():  # the lease ran out: connect to no one
                self._wake.wait(0.05)
                continue
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
                if self._stopping or self._peers.get(addr) is not peer:
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
        if t in _QUIET:  # every sync's ACK: nothing to do, no text to decode
            return
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
            self._refused(peer, error_class(ev.code), msg,
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
        definitely leave too few to reach the quorum (of some group)."""
        refused = [p for p in self._peers.values()
                   if p.refused is not None and p.where not in acked]
        out = {p.where for p in refused}
        if not refused or all(len(g) - len(g & out) >= k for g, k in self._quorum):
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
            raise InvalidArgument(f"ack must be one of {list(ACK_LEVELS)}, not {ack!r}")
        level = ACK_LEVELS[ack]
        timeout = self.sync_timeout if timeout is None else timeout
        with self.cond:
            if self.fenced_epoch is not None:
                raise Fenced(f"this active is fenced: standby {self.fenced_by} was "
                             f"promoted to epoch {self.fenced_epoch}; stop and rejoin "
                             "as a standby")
            if self._backlog is None:
                raise StateError("this active is closed: sync() needs a new Active")
            self._check_lease("sync")
            # Encoded straight into the backlog, which reuses the memory of the
            # frame it last dropped: no copy, no fresh pages per sync.
            seq_p = _cffi.new("uint64_t *")
            len_p = _cffi.new("size_t *")
            self.heap.roots._refresh()   # roots.bind(): read before the frame
            self.heap._check(lib.tha_backlog_encode(self._backlog, self.heap._h,
                                                    seq_p, len_p))
            seq, nbytes = seq_p[0], len_p[0]
            for c in self.conns:
                if c.s is not None and not c.closed:
                    lib.tha_session_pump(c.s, max(level, lib.THA_ACK_RECEIVED))
                    self._drain(c)
                    c.flush()
            # the frame is on its way from the backlog's reused buffer: its
            # copy of its own now, while the standbys apply it (ENOMEM: the
            # next encode makes it, or says so)
            lib.tha_backlog_settle(self._backlog)
            result = SyncResult(seq, nbytes)
            if level == lib.THA_ACK_NONE or all(k == 0 for _, k in self._quorum):
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
            have = set(acked)
            if all(len(g & have) >= k for g, k in self._quorum):
                # acks that came back after the lease ran out prove nothing:
                # a new leader may exist that never had this frame
                self._check_lease(f"seq {seq}")
                result.acked_by = acked
                return result
            refusal = self._refusal(acked)
            if refusal is not None:
                raise refusal
            self._check_lease(f"waiting for seq {seq}")
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

    def acked_seqs(self, ack: str = "applied") -> dict:
        """{standby "HOST:PORT": the highest seq it acked at level ``ack``}
        over its live connections (a standby not connected is absent)."""
        level = ACK_LEVELS[ack]
        out = {}
        with self.cond:
            for c in self.conns:
                if c.s is not None and not c.closed and getattr(c, "ready", False):
                    where = f"{c.addr[0]}:{c.addr[1]}"
                    out[where] = max(out.get(where, 0), c.acked(level))
        return out

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

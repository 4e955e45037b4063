"""Standby: listens for an active and mirrors its heap (in memory, and on
disk with ``save=``/``log=``); promotes itself or on ``promote()``."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable

from .._ffi import ffi as _cffi, lib
from ..durability import parse_fsync
from ..errors import CapacityError, Error, InvalidArgument, OSFailure, check
from ..heap import Heap, PathLike, _TRACKING
from ..schema import c_bindings
from ..schema import warm_parser
from .connection import (Address, _Conn, _Node, _os_reason, _TlsPending, log,
                         parse_address)

_logger = log  # for Standby.__init__, whose log= parameter shadows it


def _disk_code(code: int) -> bool:
    """A status that says the disk, not the frame, failed: -errno, or the
    log refusing frames after an earlier failure (THA_ESTATE)."""
    return -4096 < code < 0 or code == lib.THA_ESTATE



def _check_listen(host: str, secret) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not secret:
        raise InvalidArgument(f"refusing to listen on {host} without a secret: anyone who "
                    "can reach it could replace the standby's state")



def _make_reserve(nbytes):
    """A tha_reserve_t of nbytes touched pages, freed with its owner."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 < nbytes <= 1 << 44:
        raise InvalidArgument(f"Standby: reserve must be a number of bytes, 1 to 2**44, "
                              f"not {nbytes!r}")
    out = _cffi.new("tha_reserve_t **")
    rc = lib.tha_reserve_create(out, nbytes)
    if rc == lib.THA_ENOMEM:
        raise CapacityError(f"Standby: reserve: this machine cannot give {nbytes:,} "
                            f"bytes of memory to touch now")
    check(rc)
    return _cffi.gc(out[0], lib.tha_reserve_destroy)


def _check_writable_dir(what: str, path: str) -> None:
    """At start, not at the first save: the directory of a state file must
    exist and take new files (a checkpoint is a temp file renamed there)."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OSFailure(f"Standby: {what}={path}: the directory {d} does not exist",
                        -errno.ENOENT)
    if not os.access(d, os.W_OK | os.X_OK):
        raise OSFailure(f"Standby: {what}={path}: cannot create files in {d}",
                        -errno.EACCES)


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

    ``functions`` and ``externs`` — this process's function pointers and
    data externs by name (as ``tha.Schema`` takes them), bound in the
    schema the active sends before a bulk sync's heap is made of it, so a
    standby without a heap mirrors function pointer slots and pointers into
    externs. A standby given ``heap`` also uses that heap's bindings (they
    count over these). A bulk sync that meets a function pointer or extern
    word this standby leaves unbound refuses the active, by name
    (``SchemaMismatch`` from its ``sync()``), and nothing goes live; names
    never used need no binding.

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

    ``reserve`` — bytes of memory to map and touch now, at start, for the
    first bulk sync's heap (as a JVM's AlwaysPreTouch does for its heap):
    a machine short of that memory fails here (``CapacityError``) and not
    in the middle of a sync, and the bulk sync writes the image into pages
    that are already there instead of faulting in fresh ones (on a VM
    that can be most of its time, and vary 10x from one sync to the next:
    README, "Against what users would pick instead"). The size of the
    active's image (``heap.stats()["top"]``) is what it needs; what is
    beyond the heap's capacity is given back when the sync takes it. One
    bulk sync takes it (also one that fails); ``status()["reserved"]`` is
    what is left (rounded up to 64 KiB).

    ``accept(epoch)`` — called (under the heap's lock) when an active has
    passed the handshake, with the epoch it replicates in; False closes the
    connection (tha.Node follows only the active of the leader epoch it
    read from etcd). None accepts every active the protocol accepts.
    ``min_epoch()`` — called for each new connection: an active below that
    epoch is fenced at its HELLO, before it can send a frame (tha.Node: the
    newest leader epoch it knows, so a deposed leader woken from a freeze
    gets nothing applied). None: the heap's own epoch only.
    """

    disk_retry_max = 30.0

    role_name = "standby"

    def __init__(self, listen: Address = ("127.0.0.1", 0), secret: bytes | None = None,
                 heap: Heap | None = None, promote_after: float | None = None,
                 heartbeat: float = 0.2, timeout: float = 2.0,
                 ssl_context: ssl.SSLContext | None = None,
                 functions: dict | None = None, externs: dict | None = None,
                 on_applied: Callable[[int, int, bool], None] | None = None,
                 save: PathLike | None = None, log: PathLike | None = None,
                 fsync: str = "always",
                 save_every: float | None = None, tracking: str = "auto",
                 accept: Callable[[int], bool] | None = None,
                 min_epoch: Callable[[], int] | None = None,
                 reserve: int | None = None):
        listen = parse_address(listen, "Standby: listen", any_port=True)
        _check_listen(listen[0], secret)
        if tracking not in _TRACKING:
            raise InvalidArgument(f"Standby: tracking must be one of {sorted(_TRACKING)}, "
                        f"not {tracking!r}")
        self.tracking = tracking
        if log is not None and save is None:
            raise InvalidArgument("Standby: log= needs save= (the checkpoint the log follows)")
        for what, path in (("save", save), ("log", log)):
            if path is not None:
                _check_writable_dir(what, os.fspath(path))
        if save_every is not None and save_every <= 0:
            raise InvalidArgument(f"Standby: save_every must be > 0 seconds, not {save_every}")
        self._reserve = None if reserve is None else _make_reserve(reserve)
        super().__init__(secret, heartbeat, timeout, ssl_context)
        self.save = None if save is None else os.fspath(save)
        self.log_path = None if log is None else os.fspath(log)
        self.fsync = fsync
        self.save_every = save_every
        self.functions = functions or {}
        self.externs = externs or {}
        # what the active's schema is bound with before a bulk sync's heap
        # is made of it (tha_session_config_t.bindings): the cdata stay in
        # self.functions / self.externs
        self._bindings = (c_bindings(self.functions, self.externs)
                          if self.functions or self.externs else None)
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
                parse_fsync(fsync)  # a bad policy fails here, not at the first bulk
            given = heap
            heap = self._open_disk(heap)
            from_disk = heap is not None and given is None
            if heap is not None:
                self._saved_seq = heap.stats()["seq"] if given is not None else None
        self.heap = heap
        if heap is None:  # the first bulk sync parses the active's schema:
            warm_parser()  # cffi's parser set-up now, not after its last byte
        self._lock = heap._lock if heap else threading.RLock()
        self.cond = threading.Condition(self._lock)
        self.promote_after = promote_after
        self.on_applied = on_applied
        self.accept = accept
        self.min_epoch = min_epoch
        self.promoted_epoch = None
        self.applied_seq = heap.stats()["seq"] if heap else 0
        self.bulk = (0, 0)
        # when the active was last heard, moved past this process's own
        # stalls (_on_tick): promote_after counts from here
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
        if t in (lib.THA_EV_ERROR, lib.THA_EV_REFUSED, lib.THA_EV_FENCED,
                 lib.THA_EV_TIMEOUT):  # only these say something in words
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
            if self.accept is not None and not self.accept(ev.epoch):
                log.info("standby: active %s of epoch %d not accepted now: closing",
                         conn.peer, ev.epoch)
                conn.abort(f"an active of epoch {ev.epoch} is not the one to follow")
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
        if old is not None and heap_c == old._h:
            # same-address: the bulk sync landed on the base the live mirror
            # holds, which took the image in place (its C log was detached)
            new = old
        else:
            new = Heap._adopt(heap_c, self._lock, self.functions, self.externs)
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
                         externs=self.externs, tracking="explicit")
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

    def _on_tick(self, stall: float) -> None:
        now = time.monotonic()
        # The promote clock counts only time this standby could listen:
        # heartbeats sent while it stalled wait unread in the socket.
        self._last_active = min(now, self._last_active + stall)
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

    def _promote_locked(self, epoch: int | None = None) -> Heap:
        if self.heap is None:
            raise Error("cannot promote: this standby never received a state")
        if self.promoted_epoch is None:
            if epoch is None:
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

    def promote(self, epoch: int | None = None) -> Heap:
        """Becomes the active: raises the epoch (to ``epoch``, which must be
        newer than the heap's; default one more), fencing the old active,
        and returns the heap to carry on with, e.g. ``tha.Active(heap, ...)``."""
        with self.cond:
            return self._promote_locked(epoch)

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
                    "save": self.save, "log": self.log_path,
                    "reserved": lib.tha_reserve_bytes(self._reserve)
                    if self._reserve is not None else 0}

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
        with self.cond:  # no session is left to take it
            self._reserve = None
        if self.save is not None and self.heap is not None:
            with self.cond:  # the last state on disk (also on SIGTERM via the CLI)
                try:
                    self._save_locked()
                finally:
                    if not self.promoted and self.heap._log_path is not None:
                        self.heap.detach_log()

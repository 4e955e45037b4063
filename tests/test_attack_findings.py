"""Findings of the security review of the replication protocol and its
drivers (docs/protocol.md, "Security model"): each test shows one way an
attacker WITHOUT the shared secret gets what the model says it cannot.

Every test here failed on the code it was written against (a review by
someone who did not build it) and passes since the fix: a quorum counts
proven nodes, not connections; the native driver takes neither an
unproven "fenced" nor an unproven hang-up for the active's word; a
session reserves one handshake message of memory before proof; peer text
is made printable; status() shows no unproven claims. Everything runs on
127.0.0.1, with bounded loops and timeouts.

Tried and held (no test here): pre-handshake HELLO/WELCOME/REFUSE/
HEARTBEAT/SCHEMA, bad versions/roles/MACs, oversized and garbage headers
(a 12k-case in-process fuzz of tha_session_feed/received, both roles, no
crash, no READY/FENCED/APPLIED); a MITM that duplicates, drops or flips a
keyed message (session closed, no state applied), splices session 1's
messages into session 2, or replays session 1's HELLO (MAC failure, the
next clean session works); connection floods (threads/fds/RSS stay
bounded, the established link survives, the standby neither promotes nor
fences); TLS trickles and silent TLS clients (closed at the deadline).
"""

import logging
import os
import socket
import struct
import threading
import time

import pytest

import tha
from tha._ffi import ffi, lib
from tha.replication import Active, Standby, SyncTimeout
from tha.replication.connection import _MAC_FN

from test_attacks import (CDEF, HELLO, REFUSE, closed_by_peer, message,
                          refuse_fenced)
from test_replication import company, mutate

SECRET = b"k"


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


class Relay:
    """A dumb TCP relay at its own port to `target`: what an attacker who
    answers at a standby's address (the standby is down, or the attacker
    took its address) and can connect to another standby does. It never
    reads, changes or forges a byte. Until enable() it accepts and closes
    (the address looks dead)."""

    def __init__(self, target):
        self.target = target
        self.enabled = threading.Event()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.address = self.srv.getsockname()[:2]
        self.stop = threading.Event()
        self.relayed = 0
        self.socks = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def enable(self):
        self.enabled.set()

    def _accept(self):
        self.srv.settimeout(0.05)
        while not self.stop.is_set():
            try:
                a, _ = self.srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self.enabled.is_set():
                a.close()
                continue
            try:
                b = socket.create_connection(self.target, timeout=2)
            except OSError:
                a.close()
                continue
            self.relayed += 1
            self.socks += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x, y):
        try:
            x.settimeout(None)
            while True:
                d = x.recv(65536)
                if not d:
                    break
                y.sendall(d)
        except OSError:
            pass
        for s in (x, y):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.srv.close()
        self.thread.join(5)
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# F1 (high): one standby counted as two toward ack_quorum
# ---------------------------------------------------------------------------

def test_relay_to_another_standby_does_not_fake_a_quorum(schema):
    """Active replicating to standbys [A, B] with ack_quorum=2. B is down;
    an attacker without the secret answers at B's address and relays the
    bytes to A, untouched. sync() must not return: only one standby holds
    the frame. It returns acked_by=[A, B]."""
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    sb_a = Standby(secret=SECRET)
    relay = Relay(sb_a.address)  # "standby B"
    act = Active(heap, [sb_a.address, relay.address], secret=SECRET,
                 ack_quorum=2, timeout=3)
    timer = threading.Timer(0.3, relay.enable)  # B's address "comes back"
    try:
        timer.start()
        mutate(heap, es, 1)
        with pytest.raises(SyncTimeout):
            r = act.sync()
            # what it returns: both addresses, one standby process
            print("acked_by", r.acked_by, "relayed", relay.relayed)
    finally:
        timer.cancel()
        act.close()
        relay.close()
        sb_a.close()


# ---------------------------------------------------------------------------
# F2 (high, native driver): an unproven REFUSE(EFENCED) is returned as
# THA_EFENCED, which tha.h documents as "this active was replaced and must
# stop"
# ---------------------------------------------------------------------------

def _rogue_server(payload_fn, rounds=4):
    """A listener at 'the standby's address' that answers each connection
    with payload_fn() and closes; stops after `rounds` connections or 10 s."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop = threading.Event()

    def run():
        end = time.monotonic() + 10
        n = 0
        while not stop.is_set() and n < rounds and time.monotonic() < end:
            try:
                c, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            n += 1
            with c:
                try:
                    c.sendall(payload_fn())
                    time.sleep(0.1)
                except OSError:
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, stop, t


def _net_options(keep):
    opt = ffi.new("tha_net_options_t *")
    sec = ffi.new("char[]", SECRET)
    keep.append(sec)
    opt.secret = sec
    opt.secret_len = len(SECRET)
    opt.mac = _MAC_FN
    opt.timeout_ms = 1000
    opt.open_timeout_ms = 2000
    return opt


def test_native_active_not_told_fenced_by_a_stranger(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    srv, stop, t = _rogue_server(lambda: message(REFUSE, refuse_fenced(99)))
    keep = []
    out = ffi.new("tha_net_t **")
    try:
        port = srv.getsockname()[1]
        rc = lib.tha_net_active_open(out, heap._h, b"127.0.0.1", port,
                                     _net_options(keep))
        why = ffi.string(lib.tha_net_errmsg(out[0])).decode() if out[0] else ""
        assert rc != 0  # the connection failed, as it should
        assert rc != lib.THA_EFENCED, f"told it is fenced by a stranger: {why}"
        rc = lib.tha_net_reconnect(out[0])
        assert rc != lib.THA_EFENCED, "told it is fenced by a stranger again"
    finally:
        if out[0]:
            lib.tha_net_close(out[0])
        stop.set()
        t.join(5)
        srv.close()


# ---------------------------------------------------------------------------
# F3 (medium, native driver): a stranger's connect+close is reported as
# "the active closed the connection"; the example standby exits on it
# ---------------------------------------------------------------------------

def test_native_standby_does_not_take_a_stranger_for_the_active():
    keep = []
    out = ffi.new("tha_net_t **")
    port = ffi.new("uint16_t *", 0)
    assert lib.tha_net_standby_listen(out, ffi.NULL, b"127.0.0.1", port,
                                      _net_options(keep)) == 0
    n = out[0]
    try:
        s = socket.create_connection(("127.0.0.1", port[0]))
        assert lib.tha_net_standby_accept(n, 2000) == 0
        s.close()  # never said a word, never proved anything
        rc = lib.tha_net_standby_serve(n, 3000)
        why = ffi.string(lib.tha_net_errmsg(n)).decode()
        assert rc != 0, f"a stranger's close reads as the active's: {why!r}"
    finally:
        lib.tha_net_close(n)


# ---------------------------------------------------------------------------
# F4 (low): 1 MiB reserved per connection before the peer proved anything
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["standby", "active"])
def test_unproven_session_reserves_about_a_handshake(schema, role):
    heap = bl = None
    cfg = ffi.new("tha_session_config_t *")
    sec = ffi.new("char[]", SECRET)
    cfg.secret, cfg.secret_len, cfg.mac = sec, len(SECRET), _MAC_FN
    if role == "active":
        heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
        company(heap)
        blp = ffi.new("tha_backlog_t **")
        assert lib.tha_backlog_create(blp, 1 << 20) == 0
        bl = blp[0]
        cfg.role = lib.THA_ROLE_ACTIVE
    else:
        cfg.role = lib.THA_ROLE_STANDBY
    sp = ffi.new("tha_session_t **")
    assert lib.tha_session_create(sp, cfg, heap._h if heap else ffi.NULL,
                                  bl if bl else ffi.NULL) == 0
    s = sp[0]
    try:
        assert lib.tha_session_start(s, 1000) == 0
        buf, cap = ffi.new("void **"), ffi.new("size_t *")
        assert lib.tha_session_recv_buffer(s, buf, cap) == 0
        # a whole handshake message plus a header's worth of slack
        assert cap[0] <= 4 * lib.THA_HANDSHAKE_MAX, (
            f"{cap[0]} bytes reserved for a peer that proved nothing")
    finally:
        lib.tha_session_destroy(s)
        if bl:
            lib.tha_backlog_destroy(bl)


# ---------------------------------------------------------------------------
# F5 (low): an unproven peer writes raw lines into the node's log
# ---------------------------------------------------------------------------

FORGED = "x\nERROR tha: active: fenced by 10.0.0.9: forged line"


def test_stranger_cannot_write_lines_into_the_log(schema, caplog):
    text = FORGED.encode()
    srv, stop, t = _rogue_server(
        lambda: message(REFUSE, struct.pack("<iQI", lib.THA_EAUTH, 0, len(text)) + text),
        rounds=2)
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    caplog.set_level(logging.DEBUG, logger="tha")
    act = Active(heap, [srv.getsockname()[:2]], secret=SECRET, timeout=1)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                "fenced by 10.0.0.9" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if "forged line" in r.getMessage()]
        assert lines, "the rogue's refusal never reached the active"
        assert not any("\n" in m for m in lines), f"forged log line: {lines[0]!r}"
    finally:
        act.close()
        stop.set()
        t.join(5)
        srv.close()


# ---------------------------------------------------------------------------
# F6 (low): status() shows what an unproven standby claims in its HELLO
# ---------------------------------------------------------------------------

def test_active_status_ignores_an_unproven_hello(schema):
    claimed = 0x7EEDBEEF0000

    def fake_hello():
        fixed = struct.pack("<II6Q", 2, 2, 1, 0, 0, claimed, 0, 0)
        return message(HELLO, fixed + os.urandom(16) + bytes(32)
                       + struct.pack("<IIQQ", 1, 0, 0, 0))

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    act = Active(heap, [srv.getsockname()[:2]], secret=SECRET, peer_timeout=3)
    c = None
    try:
        c, _ = srv.accept()
        c.sendall(fake_hello())
        c.settimeout(3)
        c.recv(4096)  # the active's HELLO; no WELCOME follows
        seen = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not seen:
            seen = [p["peer_seq"] for p in act.status()["peers"]]
            time.sleep(0.02)
        assert seen, "the active shows no connection"
        assert claimed not in seen, "status() shows the stranger's claimed seq"
    finally:
        if c is not None:
            c.close()
        act.close()
        srv.close()

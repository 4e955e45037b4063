"""What a peer that has not proven the shared secret can do to a real
Standby or Active over loopback TCP: nothing (issue 8, items 7-10). The
stranger writes well-formed protocol messages by hand."""

import os
import socket
import struct
import threading
import time

import pytest

import tha
from tha.replication import Active, Standby

from org import company
from test_replication import mutate

CDEF = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""

HELLO, WELCOME, REFUSE, HEARTBEAT = 1, 2, 3, 9
EFENCED = -30021


def crc32c(data: bytes) -> int:
    """Bitwise CRC32C (Castagnoli), as the wire uses."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def message(mtype: int, payload: bytes, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = struct.pack("<IHHII", 0x4D414854, mtype, 0, n, crc32c(payload))
    return head + struct.pack("<I", crc32c(head)) + payload


def hello(role: int, epoch: int) -> bytes:
    fixed = struct.pack("<II6Q", 2, role, 1, epoch, 0, 0, 0, 0)
    return fixed + os.urandom(16) + bytes(32) + struct.pack("<IIQQ", 0, 0, 0, 0)


def refuse_fenced(epoch: int) -> bytes:
    text = b"fenced by a stranger"
    return struct.pack("<iQI", EFENCED, epoch, len(text)) + text


def closed_by_peer(sock, timeout=5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def test_stranger_heartbeats_do_not_stop_a_failover(schema):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    sb = Standby(secret=b"k", promote_after=0.8, heartbeat=0.05, timeout=0.5)
    act = Active(heap, [sb.address], secret=b"k", heartbeat=0.05)
    act.sync()
    act.close()  # the active is gone; a stranger keeps talking
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            try:
                with socket.create_connection(sb.address, timeout=1) as s:
                    while not stop.is_set():
                        s.sendall(message(HEARTBEAT, struct.pack("<3Q", 99, 99, 0)))
                        time.sleep(0.02)
            except OSError:
                time.sleep(0.02)

    t = threading.Thread(target=chatter, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not sb.promoted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sb.promoted, "a stranger's heartbeats held off the failover"
    finally:
        stop.set()
        t.join(5)
        sb.close()


@pytest.mark.parametrize("how", ["hello-epoch", "refuse-fenced"])
def test_stranger_cannot_fence_the_active(schema, how):
    """A stranger answers at one standby address: it claims a newer epoch
    in its HELLO or sends REFUSE(EFENCED). The active is not fenced and
    goes on syncing with the real standby."""
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    lsock = socket.create_server(("127.0.0.1", 0))
    fake = lsock.getsockname()[:2]
    stop = threading.Event()

    def impostor():
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            with c:
                if how == "hello-epoch":
                    c.sendall(message(HELLO, hello(role=2, epoch=99)))
                    c.settimeout(1)
                    try:
                        c.recv(4096)  # the active's HELLO
                        c.sendall(message(WELCOME, bytes(32)))
                    except OSError:
                        pass
                else:
                    c.sendall(message(REFUSE, refuse_fenced(99)))
                time.sleep(0.1)

    t = threading.Thread(target=impostor, daemon=True)
    t.start()
    sb = Standby(secret=b"k")
    act = Active(heap, [sb.address, fake], secret=b"k", ack_quorum=1)
    try:
        for rnd in range(1, 8):
            mutate(heap, es, rnd)
            r = act.sync()
            assert f"{sb.address[0]}:{sb.address[1]}" in r.acked_by
            time.sleep(0.05)
        assert not act.fenced
        assert heap.stats()["epoch"] == 0
        assert sb.heap.dump() == heap.dump()
    finally:
        stop.set()
        t.join(5)
        act.close()
        sb.close()
        lsock.close()


def test_huge_message_before_proof_is_refused_at_once(schema):
    """A header declaring a 4 GiB message, before any proof: the standby
    closes the connection instead of reserving the memory."""
    sb = Standby(secret=b"k")
    try:
        socks = []
        for _ in range(3):
            s = socket.create_connection(sb.address)
            s.sendall(message(HELLO, b"", length=0xFFFFFFFF))
            socks.append(s)
        for s in socks:
            assert closed_by_peer(s), "the standby kept a 4 GiB message open"
            s.close()
        # and it still serves a real active
        heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
        company(heap)
        with Active(heap, [sb.address], secret=b"k") as act:
            r = act.sync()
            assert sb.wait_for(r.seq, 10)
    finally:
        sb.close()


def test_silent_peer_is_dropped_after_the_handshake_deadline(schema):
    sb = Standby(secret=b"k", timeout=0.5, heartbeat=0.1)
    try:
        s = socket.create_connection(sb.address)
        s.recv(4096)  # its HELLO
        s.sendall(b"TH")  # a trickle, never a whole message
        assert closed_by_peer(s, timeout=5)
        s.close()
    finally:
        sb.close()


def test_python_hmac_and_openssl_hmac_interoperate(schema):
    """The extension's MAC (OpenSSL when built with its headers) and the
    Python fallback are the same HMAC-SHA256: a node on each agrees."""
    from tha._ffi import lib

    class PythonMacActive(Active):
        mac_fn = lib.tha_py_mac

    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    es = company(heap)
    sb = Standby(secret=b"k")  # the default MAC
    try:
        with PythonMacActive(heap, [sb.address], secret=b"k") as act:
            for rnd in range(1, 4):
                mutate(heap, es, rnd)
                r = act.sync()
            assert sb.wait_for(r.seq, 10)
            assert sb.heap.dump() == heap.dump()
    finally:
        sb.close()


@pytest.mark.parametrize("secret, why", [("text", "must be bytes"),
                                         (b"x" * 300, "at most 256")])
def test_bad_secret_is_a_clear_error(secret, why):
    with pytest.raises(tha.Error, match=why):
        Standby(secret=secret)

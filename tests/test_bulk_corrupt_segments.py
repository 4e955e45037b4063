"""A bulk sync whose segments were edited on the way by someone who can
make them pass every checksum (no secret: the standby receives segment
data in place, straight into its staging heap; docs/protocol.md, "Receiving
a segment in place"), into a standby that already mirrors a heap. What the
segment check or the go-live heap check refuses must leave the live mirror
exactly as it was, the reason logged naming the bulk sync; once the edits
stop, the next bulk sync goes live. Real TCP on 127.0.0.1 through a relay
that reseals the frame it edits."""
import logging
import socket
import struct
import threading
import time

import pytest
import tha
import org
from conftest import reseal, runs, header
from tha.replication import Active, Standby

SNAP_DATA = 5


class CorruptingProxy:
    """127.0.0.1 relay; active->standby messages parsed; the k-th SNAP_DATA
    of each connection goes through edit(frame) -> frame while armed."""

    def __init__(self, target, edit, k=1):
        self.target, self.edit, self.k = target, edit, k
        self.armed = True
        self.edited = 0
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = self.lsock.getsockname()
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(b, a), daemon=True).start()
            threading.Thread(target=self._edit_pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                dst.sendall(d)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _edit_pipe(self, src, dst):
        buf, n = b"", 0
        try:
            while True:
                d = src.recv(1 << 20)
                if not d:
                    break
                buf += d
                while len(buf) >= 20:
                    (ln,) = struct.unpack_from("<I", buf, 8)
                    if len(buf) < 20 + ln:
                        break
                    msg, buf = buf[:20 + ln], buf[20 + ln:]
                    ty = struct.unpack_from("<H", msg, 4)[0]
                    if ty == SNAP_DATA:
                        if n == self.k and self.armed:
                            f = self.edit(bytearray(msg[20:]))
                            hdr = bytearray(msg[:20])
                            struct.pack_into("<I", hdr, 8, len(f))
                            struct.pack_into("<I", hdr, 16, crc(hdr[:16]))
                            msg = bytes(hdr) + f
                            self.edited += 1
                        n += 1
                    dst.sendall(msg)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.lsock.close()


def crc(b):
    from conftest import crc32c
    return crc32c(b)


def wild_pointer(f):
    _pos, off, nb, mask, data = runs(f)[0]
    b = nb - 1
    f[mask + b] |= 1
    struct.pack_into("<Q", f, data + b * 64, header(f)["top"] + 4096)
    return bytearray(reseal(f))


def moved_run(f):
    pos, off, nb, mask, data = runs(f)[0]
    struct.pack_into("<Q", f, pos, off + 64)
    return bytearray(reseal(f))


def flipped_data(f):
    _pos, off, nb, mask, data = runs(f)[0]
    f[data + 100] ^= 0x10
    return bytearray(reseal(f))


@pytest.mark.parametrize("edit", [wild_pointer, moved_run, flipped_data])
def test_a_corrupt_bulk_leaves_the_live_mirror(edit, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    schema = tha.Schema(org.CDEF)
    h1 = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    org.company(h1, 200, mgr=False)
    sb = Standby(heartbeat=0.1, timeout=1.0)
    try:
        with Active(h1, [sb.address]) as a1:
            r = a1.sync(ack="applied")
            assert sb.wait_for(r.seq)
        with sb.cond:
            before = sb.heap.dump()
            old = sb.heap
        h2 = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
        org.company(h2, 300, mgr=False)
        h2.delta()  # nothing dirty: the bulk is consistent at SNAP_END, and
        #             no catch-up frame rewrites the edited blocks
        px = CorruptingProxy(sb.address, edit, k=0)
        a2 = Active(h2, [px.address], timeout=1.0)
        try:
            deadline = time.monotonic() + 3
            while px.edited < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert px.edited >= 1
            with sb.cond:
                assert sb.heap is old and sb.heap.dump() == before
                sb.heap.check()
            refusals = [r.getMessage() for r in caplog.records
                        if r.getMessage().startswith("standby:") and "bulk sync" in r.getMessage()
                        and r.levelno >= logging.WARNING]
            assert refusals, "the refusal is not logged"
            px.armed = False
            r = a2.sync(ack="applied", timeout=10)
            assert sb.wait_for(r.seq, 10)
            with sb.cond:
                assert sb.heap.dump() == h2.dump()
                sb.heap.check()
        finally:
            a2.close()
            px.close()
    finally:
        sb.close()

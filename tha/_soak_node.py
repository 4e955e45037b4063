"""One member of a tha cluster as its own process, for test_jepsen.py.

    jepsen_node.py --name N --secret S --peers H:P,H:P [--init] [options]

The process is a standby (a tha Standby listening on 127.0.0.1, port 0) or,
with --init, the first active (a fresh heap). It can become the active
(``promote``, or by itself after ``heir`` set a promote_after timeout) and,
once fenced, a standby again keeping its heap (``demote``: the new active
resumes it from its backlog or bulk syncs it). ``--peers`` are the
addresses this node's Active connects to: the test's per-link proxies.

Line protocol, one JSON object per line. stdin: ``{"id": I, "cmd": C, ...}``;
stdout: ``{"id": I, ...}`` answers (writes answer when their sync returns,
possibly after other answers) and ``{"ev": ...}`` events (``listening``
with the port, each time a Standby starts listening; ``active`` when this
node starts an Active).

Commands: ``status`` (role, epoch, seq, applied seq, streaming, digest of
``repr(heap.dump())``, count of records), ``state`` (status plus the ops the
heap holds), ``tick`` (a sync without a write, ack "none"), ``write`` (op: adds record ``op`` and changes an older one,
then ``sync(ack="applied")``), ``promote``, ``heir`` (after: seconds or
null), ``demote``, ``quit``.

The data: ``struct table`` (root "t") heads a linked list of ``struct rec``,
one per write, newest first; ``slots[op % 64]`` points at the latest record
of its slot, and a write changes the record it replaces (``val ^= op``):
each write adds a record (so a state tells which writes it holds) and
changes an existing one.

Rogue modes (no member of the cluster; a wrong secret, a made-up epoch):
``--rogue-active H:P`` connects to H:P as an active and syncs garbage;
``--rogue-standby`` listens as a standby whose heap claims --rogue-epoch.
"""

import argparse
import hashlib
import json
import os
import queue
import sys
import threading
import time

import tha
from tha._ffi import lib
from tha.errors import check
from tha.replication import Active, Fenced, Standby, SyncTimeout

CDEF = """
struct rec { uint64_t op; uint64_t val; struct rec *prev; };
struct table { uint64_t count; uint64_t last; struct rec *head; struct rec *slots[64]; };
"""
NSLOTS = 64
# A workaround for exploring past the mutual-fencing bug (default off):
# once this node's Active is fenced, close its promoted Standby (whose
# listener fences every active that connects, newer ones too). It narrows
# the window; it does not close it (see the report in test_jepsen.py).
CLOSE_FENCED = os.environ.get("THA_JEPSEN_CLOSE_FENCED") == "1"
MASK64 = (1 << 64) - 1

_out_lock = threading.Lock()


def emit(obj) -> None:
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def new_heap(epoch=None):
    heap = tha.Heap(tha.Schema(CDEF), capacity=32 << 20, tracking="auto")
    with heap._lock:
        t = heap.new("struct table")
        heap.touch(t)
        heap.roots["t"] = t
        if epoch is not None:
            check(lib.tha_heap_set_epoch(heap._h, epoch))
    return heap


def write_op(heap, op: int, touch: bool) -> None:
    """Under the heap's lock: record `op`, and change the record it replaces."""
    with heap._lock:
        t = heap.roots["t"]
        r = heap.new("struct rec", op=op, val=op, prev=t.head)
        old = t.slots[op % NSLOTS]
        if old:
            old.val = (old.val ^ op) & MASK64
            if touch:
                heap.touch(old, "val")
        t.slots[op % NSLOTS] = r
        t.head = r
        t.count += 1
        t.last = op
        if touch:
            heap.touch(r)
            heap.touch(t)


def ops_of(heap) -> list:
    """Under the heap's lock: the ops of the records reachable from root t."""
    try:
        t = heap.roots["t"]
    except tha.NotFound:
        return []
    out = []
    r = t.head
    while r:
        out.append(int(r.op))
        r = r.prev
    return out


class Node:
    def __init__(self, args):
        self.args = args
        self.name = args.name
        self.secret = os.fsencode(args.secret)
        self.peers = [addr(p) for p in args.peers.split(",") if p]
        self.touch = not args.plain
        self.mu = threading.RLock()    # role transitions
        self.sb = None                 # tha Standby (also kept once promoted: it fences)
        self.act = None                # tha Active
        self.heir_after = None
        self.writes: queue.Queue = queue.Queue()
        if args.init:
            self._start_active(new_heap())
        else:
            self._start_standby(None)
        threading.Thread(target=self._writer, daemon=True).start()
        threading.Thread(target=self._monitor, daemon=True).start()

    # -- roles ---------------------------------------------------------------

    def _start_standby(self, heap) -> None:
        a = self.args
        self.sb = Standby(listen=("127.0.0.1", 0), secret=self.secret, heap=heap,
                          promote_after=self.heir_after, heartbeat=a.heartbeat,
                          timeout=a.peer_timeout)
        emit({"ev": "listening", "port": self.sb.address[1],
              "seq": heap.stats()["seq"] if heap is not None else 0})

    def _start_active(self, heap) -> None:
        a = self.args
        quorum = len(self.peers) if a.quorum < 0 else a.quorum
        self.act = Active(heap, self.peers, secret=self.secret, ack="applied",
                          ack_quorum=quorum, timeout=a.sync_timeout,
                          heartbeat=a.heartbeat, peer_timeout=a.peer_timeout)
        st = heap.stats()
        emit({"ev": "active", "epoch": st["epoch"], "seq": st["seq"]})

    def _monitor(self) -> None:
        """A standby that promoted itself (promote_after) starts its Active."""
        while True:
            time.sleep(0.02)
            with self.mu:
                if self.act is None and self.sb is not None and self.sb.promoted:
                    self._start_active(self.sb.heap)
                if (CLOSE_FENCED and self.act is not None and self.act.fenced
                        and self.sb is not None):
                    # workaround (THA_JEPSEN_CLOSE_FENCED=1): a promoted
                    # standby fences every active that connects, newer too
                    self.sb.close()
                    self.sb = None

    def promote(self) -> dict:
        with self.mu:
            if self.act is not None:
                return {"ok": False, "why": "already an active"}
            try:
                heap = self.sb.promote()
            except tha.Error as e:
                return {"ok": False, "why": str(e)}
            self._start_active(heap)
            return {"ok": True, "epoch": heap.stats()["epoch"]}

    def demote(self) -> dict:
        """Back to standby, keeping the heap (rejoin of a fenced active)."""
        with self.mu:
            if self.act is None:
                return {"ok": False, "why": "not an active"}
            heap = self.act.heap
            self.act.close()
            self.act = None
            if self.sb is not None:
                self.sb.close()
                self.sb = None
            self.heir_after = None
            self._start_standby(heap)
            st = heap.stats()
            return {"ok": True, "epoch": st["epoch"], "seq": st["seq"]}

    def heir(self, after) -> dict:
        with self.mu:
            self.heir_after = after
            if self.sb is not None:
                with self.sb.cond:
                    self.sb.promote_after = after
                    self.sb._last_active = time.monotonic()  # the timeout counts from now
            return {"ok": True}

    def tick(self) -> dict:
        """A sync with no write (ack="none"): a bulk sync goes live only
        once a frame encoded after it arrives (docs/protocol.md), so an idle
        active is nudged."""
        with self.mu:
            act = self.act
        if act is None or act.fenced:
            return {"ok": False, "why": "not an unfenced active"}
        try:
            return {"ok": True, "seq": act.sync(ack="none").seq}
        except tha.Error as e:
            return {"ok": False, "why": repr(e)}

    # -- writes --------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            req = self.writes.get()
            emit(self._write(req))

    def _write(self, req) -> dict:
        rid, op = req["id"], req["op"]
        with self.mu:
            act = self.act
        if act is None:
            return {"id": rid, "op": op, "result": "notactive"}
        if act.fenced:
            return {"id": rid, "op": op, "result": "fenced", "fenced_epoch": act.fenced_epoch}
        heap = act.heap
        epoch = heap.stats()["epoch"]
        write_op(heap, op, self.touch)
        try:
            r = act.sync(ack="applied")
        except Fenced as e:
            return {"id": rid, "op": op, "result": "fenced", "epoch": epoch, "why": str(e)}
        except SyncTimeout as e:
            return {"id": rid, "op": op, "result": "timeout", "epoch": epoch, "why": str(e)}
        except tha.Error as e:
            return {"id": rid, "op": op, "result": "error", "epoch": epoch, "why": repr(e)}
        return {"id": rid, "op": op, "result": "acked", "epoch": epoch, "seq": r.seq,
                "acked_by": r.acked_by}

    # -- status --------------------------------------------------------------

    def status(self, with_ops: bool) -> dict:
        with self.mu:
            act, sb = self.act, self.sb
            if act is not None:
                role = "fenced" if act.fenced else "active"
                heap = act.heap
            elif sb is not None:
                role = "promoting" if sb.promoted else "standby"
                heap = sb.heap
            else:
                role, heap = "none", None
            out = {"name": self.name, "role": role, "pid": os.getpid(),
                   "heir": self.heir_after}
            if act is not None:
                out["fenced_epoch"] = act.fenced_epoch
                ast = act.status()
                out["peers"] = [{"peer": p["peer"], "state": p["state"],
                                 "acked_applied": p["acked_applied"]} for p in ast["peers"]]
            if sb is not None:
                sst = sb.status()
                out["applied_seq"] = sst["applied_seq"]
                out["bulk_syncs"] = sst["bulk_syncs"]
                out["streaming"] = any(p["state"] == "streaming" for p in sst["peers"])
                out["links"] = [p["state"] for p in sst["peers"]]
            if heap is None:
                out.update(epoch=0, seq=0, digest=None, nops=0)
                if with_ops:
                    out["ops"] = []
                return out
            with heap._lock:  # seq, dump and ops of one moment
                st = heap.stats()
                dump = heap.dump()
                ops = ops_of(heap)
            out.update(epoch=st["epoch"], seq=st["seq"], nops=len(ops),
                       digest=hashlib.sha256(repr(dump).encode()).hexdigest()[:16])
            if with_ops:
                out["ops"] = ops
            return out

    def serve(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            req = json.loads(line)
            cmd, rid = req["cmd"], req["id"]
            if cmd == "write":
                self.writes.put(req)
                continue
            try:
                if cmd in ("status", "state"):
                    ans = self.status(cmd == "state")
                elif cmd == "promote":
                    ans = self.promote()
                elif cmd == "demote":
                    ans = self.demote()
                elif cmd == "tick":
                    ans = self.tick()
                elif cmd == "heir":
                    ans = self.heir(req.get("after"))
                elif cmd == "quit":
                    emit({"id": rid, "ok": True})
                    break
                else:
                    ans = {"ok": False, "why": f"unknown command {cmd!r}"}
            except Exception as e:  # report, keep serving
                ans = {"ok": False, "why": repr(e)}
            ans["id"] = rid
            emit(ans)


def run_rogue(args) -> int:
    """A process that is no member: wrong secret, made-up epoch."""
    secret = os.fsencode(args.secret)
    heap = new_heap(epoch=args.rogue_epoch)
    for i in range(5):
        write_op(heap, 10**12 + i, True)
    if args.rogue_standby:
        sb = Standby(listen=("127.0.0.1", 0), secret=secret, heap=heap)
        emit({"ev": "listening", "port": sb.address[1]})
        sys.stdin.read()  # until the test closes stdin or kills it
        sb.close()
        return 0
    act = Active(heap, [addr(args.rogue_active)], secret=secret, ack="none")
    emit({"ev": "started"})
    deadline = time.monotonic() + args.rogue_seconds
    i = 100
    while time.monotonic() < deadline:
        write_op(heap, 10**12 + i, True)
        i += 1
        try:
            act.sync(ack="none")
        except tha.Error:
            break
        time.sleep(0.05)
    act.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--name", default="rogue")
    p.add_argument("--secret", required=True)
    p.add_argument("--peers", default="")
    p.add_argument("--init", action="store_true")
    p.add_argument("--quorum", type=int, default=-1, help="-1: all peers")
    p.add_argument("--sync-timeout", type=float, default=1.0)
    p.add_argument("--heartbeat", type=float, default=0.1)
    p.add_argument("--peer-timeout", type=float, default=1.0)
    p.add_argument("--plain", action="store_true",
                   help="no heap.touch(): rely on the heap's tracking")
    p.add_argument("--rogue-active")
    p.add_argument("--rogue-standby", action="store_true")
    p.add_argument("--rogue-epoch", type=int, default=1000)
    p.add_argument("--rogue-seconds", type=float, default=1.5)
    args = p.parse_args()
    if args.rogue_active or args.rogue_standby:
        return run_rogue(args)
    Node(args).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

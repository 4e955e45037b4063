"""One member of a tha cluster as its own process, for the soak command
(tha/soak/cluster.py, ``python -m tha soak``) and tests/test_jepsen.py.

    python -m tha.soak.node --name N --secret-file F --peers H:P,H:P [--init] [options]

The process is a standby (a tha Standby listening on 127.0.0.1, port 0) or,
with --init, the first active (a fresh heap). It can become the active
(``promote``, or by itself after ``heir`` set a promote_after timeout) and,
once fenced, a standby again keeping its heap (``demote``: the new active
resumes it from its backlog or bulk syncs it). ``--peers`` are the
addresses this node's Active connects to: the caller's per-link proxies.

Line protocol, one JSON object per line. stdin: ``{"id": I, "cmd": C, ...}``;
stdout: ``{"id": I, ...}`` answers (writes answer when their sync returns,
possibly after other answers) and ``{"ev": ...}`` events (``listening``
with the port, each time a Standby starts listening; ``active`` when this
node starts an Active).

Commands: ``status`` (role, epoch, seq, applied seq, streaming, digest of
``repr(heap.dump())``, count of records, the standbys' lag), ``state``
(status plus the ops the heap holds and ``problems``: every broken
invariant of the data, see ``audit``), ``tick`` (a sync without a write,
ack "none"), ``write`` (op: adds record ``op``, changes an older one and
mutates the pool, then ``sync(ack="applied")``; the answer has the seq and
the frame's bytes), ``promote``, ``heir`` (after: seconds or null),
``demote``, ``lag`` (the active's standbys and how many frames each has
not acked applied, without a dump), ``quit``.

The data: ``struct table`` (root "t") heads a linked list of ``struct rec``,
one per write, newest first; ``slots[op % 64]`` points at the latest record
of its slot, and a write changes the record it replaces (``val ^= op``):
each write adds a record (so a state tells which writes it holds) and
changes an existing one. Each write also makes a few random changes to a
pool of ``struct blob`` arrays (``pool[32]``, 1 to 200 elements, so slab
and span allocations): allocations (the old array freed), frees, pointer
rewires (``link`` to another pool entry, ``rec`` to a record) and plain
byte writes, each array keeping ``sum`` = the number of byte writes it
had and ``bsum`` = the sum of its data bytes, so a torn state shows.
By default every write is a plain cdata write found by the heap's
tracking (``--touch``: heap.touch() as well).

Rogue modes (no member of the cluster; a wrong secret, a made-up epoch):
``--rogue-active H:P`` connects to H:P as an active and syncs garbage;
``--rogue-standby`` listens as a standby whose heap claims --rogue-epoch.
"""

import argparse
import hashlib
import json
import os
import queue
import random
import sys
import threading
import time

import tha
from tha._ffi import lib
from tha.errors import check
from tha.replication import Active, Fenced, Standby, SyncTimeout

CDEF = """
struct rec { uint64_t op; uint64_t val; struct rec *prev; };
struct blob { uint64_t op; uint64_t n; uint64_t sum; uint64_t bsum;
              struct blob *link; struct rec *rec; uint8_t data[32]; };
struct table { uint64_t count; uint64_t last; struct rec *head; struct rec *slots[64];
               struct blob *pool[32]; };
"""
NSLOTS = 64
NPOOL = 32
BLOB_SIZES = (1, 1, 2, 3, 8, 40, 120, 200)   # 200 x 80 B: a span
CAPACITY = 256 << 20
# A workaround for exploring past the mutual-fencing bug (default off):
# once this node's Active is fenced, close its promoted Standby (whose
# listener fences every active that connects, newer ones too). It narrows
# the window; it does not close it (see the report in test_jepsen.py).
CLOSE_FENCED = os.environ.get("THA_JEPSEN_CLOSE_FENCED") == "1"
MASK64 = (1 << 64) - 1
SABOTAGE = os.environ.get("THA_SOAK_SABOTAGE")

_out_lock = threading.Lock()


def emit(obj) -> None:
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def secret_of(args) -> bytes:
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            return f.read().rstrip(b"\r\n")
    return os.fsencode(args.secret)


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def new_heap(epoch=None, capacity=CAPACITY):
    heap = tha.Heap(tha.Schema(CDEF), capacity=capacity, tracking="auto")
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
        mutate_pool(heap, t, op, touch)


def _unlink(heap, t, victim, touch) -> None:
    """Clears every pointer to the pool array `victim` (before it is freed)."""
    for j in range(NPOOL):
        b = t.pool[j]
        if b and b.link == victim:
            b.link = heap.schema.ffi.NULL
            if touch:
                heap.touch(b, "link")


def mutate_pool(heap, t, op: int, touch: bool) -> None:
    """Under the heap's lock: a few random changes to the pool (seeded by op)."""
    rng = random.Random(op)
    ffi = heap.schema.ffi
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(NPOOL)
        cur = t.pool[i]
        what = rng.random()
        if what < 0.3 or not cur:           # allocate, freeing the old one
            n = rng.choice(BLOB_SIZES)
            b = heap.new("struct blob", count=n)
            b.op, b.n, b.rec = op, n, t.head
            other = t.pool[rng.randrange(NPOOL)]
            b.link = other if other and other != cur else ffi.NULL
            k = rng.randrange(n)
            v = rng.randrange(1, 256)
            b[k].data[rng.randrange(32)] = v
            b.bsum = v
            if touch:
                heap.touch(b, "n")  # the header words
                heap.touch(b + k)
                heap.touch(b)
            t.pool[i] = b
            if touch:
                heap.touch(t)
            if cur:
                _unlink(heap, t, cur, touch)
                heap.free(cur)
        elif what < 0.45:                   # free
            t.pool[i] = ffi.NULL
            if touch:
                heap.touch(t)
            _unlink(heap, t, cur, touch)
            heap.free(cur)
        elif what < 0.7:                    # rewire
            other = t.pool[rng.randrange(NPOOL)]
            cur.link = other if other else ffi.NULL
            if rng.random() < 0.5:
                cur.rec = t.slots[rng.randrange(NSLOTS)]
            if touch:
                heap.touch(cur)
        else:                               # plain byte writes
            for _ in range(rng.randint(1, 6)):
                k = rng.randrange(int(cur.n))
                j = rng.randrange(32)
                v = rng.randrange(256)
                cur.bsum = cur.bsum - cur[k].data[j] + v
                cur[k].data[j] = v
                cur.sum += 1
                if touch:
                    heap.touch(cur + k)
            if touch:
                heap.touch(cur)


def audit(heap) -> list:
    """Under the heap's lock: what is wrong with the data (empty: a state
    the writes could have made). Checks the allocator (heap.check()), the
    record list (ops strictly decreasing, each record's val = op ^ the op
    of the next newer record of its slot, slots pointing at the newest,
    count and last), and the pool (links to live pool arrays, n and bsum)."""
    problems = []
    try:
        heap.check()
    except tha.Error as e:
        return [f"heap.check(): {e}"]
    try:
        t = heap.roots["t"]
    except tha.NotFound:
        return problems
    newest = {}                     # slot -> op of the newest record seen so far
    r, prev_op, n = t.head, None, 0
    recs = set()
    ffi = heap.schema.ffi
    while r:
        op, val = int(r.op), int(r.val)
        addr = int(ffi.cast("uintptr_t", r))
        recs.add(addr)
        if prev_op is not None and op >= prev_op:
            problems.append(f"record {op} follows record {prev_op}: not newest first")
            break
        s = op % NSLOTS
        want = op ^ newest[s] if s in newest else op
        if val != want:
            problems.append(f"record {op}: val {val:#x}, want {want:#x} "
                            f"(replaced by {newest.get(s)})")
        if s not in newest and t.slots[s] != r:
            problems.append(f"slot {s} does not point at its newest record {op}")
        newest[s] = op
        prev_op = op
        n += 1
        r = r.prev
        if len(problems) > 5:
            break
    if int(t.count) != n:
        problems.append(f"count {int(t.count)} but {n} records")
    if n and int(t.last) != int(t.head.op):
        problems.append(f"last {int(t.last)} but the newest record is {int(t.head.op)}")
    live = {int(ffi.cast("uintptr_t", t.pool[i])) for i in range(NPOOL) if t.pool[i]}
    for i in range(NPOOL):
        b = t.pool[i]
        if not b:
            continue
        if b.link and int(ffi.cast("uintptr_t", b.link)) not in live:
            problems.append(f"pool[{i}].link points at no live pool array")
        if b.rec and int(ffi.cast("uintptr_t", b.rec)) not in recs:
            problems.append(f"pool[{i}].rec points at no record")
        nb = int(b.n)
        if nb not in BLOB_SIZES:
            problems.append(f"pool[{i}].n is {nb}")
            continue
        total = sum(sum(b[k].data) for k in range(nb))
        if total != int(b.bsum):
            problems.append(f"pool[{i}] (op {int(b.op)}): data sums to {total}, "
                            f"bsum says {int(b.bsum)}")
    return problems


def digest_of(dump) -> str:
    """A short digest of heap.dump(): equal exactly when the dumps are."""
    return hashlib.sha256(repr(dump).encode()).hexdigest()[:16]


def digest(heap) -> str:
    with heap._lock:
        return digest_of(heap.dump())


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
        self.secret = secret_of(args)
        self.peers = [addr(p) for p in args.peers.split(",") if p]
        self.touch = args.touch
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
            # THA_SOAK_SABOTAGE=no-sync (the checker's own test): answer
            # "acked" without syncing, as a buggy library would
            if SABOTAGE == "no-sync":
                return {"id": rid, "op": op, "result": "acked", "epoch": epoch,
                        "seq": heap.stats()["seq"], "bytes": 0, "acked_by": []}
            r = act.sync(ack="applied")
        except Fenced as e:
            return {"id": rid, "op": op, "result": "fenced", "epoch": epoch, "why": str(e)}
        except SyncTimeout as e:
            return {"id": rid, "op": op, "result": "timeout", "epoch": epoch, "why": str(e)}
        except tha.Error as e:
            return {"id": rid, "op": op, "result": "error", "epoch": epoch, "why": repr(e)}
        return {"id": rid, "op": op, "result": "acked", "epoch": epoch, "seq": r.seq,
                "bytes": r.bytes, "acked_by": r.acked_by}

    # -- status --------------------------------------------------------------

    def lag(self) -> dict:
        """The active's standbys, without a dump (cheap)."""
        with self.mu:
            act = self.act
        if act is None:
            return {"peers": []}
        return {"peers": [{"peer": p["peer"], "state": p["state"], "lag": p["lag_frames"]}
                          for p in act.status()["peers"]]}

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
                                 "acked_applied": p["acked_applied"],
                                 "lag": p["lag_frames"]} for p in ast["peers"]]
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
                if with_ops:
                    out["problems"] = audit(heap)
            out.update(epoch=st["epoch"], seq=st["seq"], nops=len(ops),
                       digest=digest_of(dump))
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
                elif cmd == "lag":
                    ans = self.lag()
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
    secret = secret_of(args)
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
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--secret")
    g.add_argument("--secret-file")
    p.add_argument("--peers", default="")
    p.add_argument("--init", action="store_true")
    p.add_argument("--quorum", type=int, default=-1, help="-1: all peers")
    p.add_argument("--sync-timeout", type=float, default=1.0)
    p.add_argument("--heartbeat", type=float, default=0.1)
    p.add_argument("--peer-timeout", type=float, default=1.0)
    p.add_argument("--touch", action="store_true",
                   help="heap.touch() after each write (default: plain writes, "
                        "found by the heap's tracking)")
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

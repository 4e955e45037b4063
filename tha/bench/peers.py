"""``python -m tha bench --peers``: tha against what users would pick
instead (issue 12), on one workload, in one run.

The workload: N ``struct emp { char name[32]; uint32_t id; double salary;
struct emp *mgr; struct dept *dept; }`` (64 bytes; default 1,000,000) and a
``struct dept`` per 250 of them; the far end of every contender is another
process on 127.0.0.1 (tha/bench/peers_far.py). A round changes the salary
and the manager of a fraction f of the records (the same records, values
and new managers for every contender: a sample of the ids, each given a
manager with a smaller id) and ends when the far end has applied the
change. Per phase (f = 0.1%, 1%, 10%, 100%, and first the initial bulk sync
of the whole graph) one warm-up round, then ROUNDS rounds; within a round
the contenders take turns, the order rotating from round to round, so a
noisy neighbour hits all of them alike, with a pause of SETTLE seconds
before each (untimed: what one contender's processes still do after their
round, such as freeing memory, must not land in the next one's). Medians
are reported.

Times per round: ``round`` from the first write to the far end's answer;
``mirror`` the part after the application's writes, i.e. what replication
costs:

  memcpy          one copy of the changed bytes (records x 64) between two
                  present buffers: the memory limit (mirror only)
  tcp             those bytes with one sendall to a far end that reads them
                  into a 1 MiB buffer and answers one byte: the wire limit
                  (mirror only); every "÷ raw TCP" is against this row
  tcp-scatter     a hand-written mirror of scattered changes: the changed
                  records gathered out of an array of N records (numpy take),
                  sent with their indexes in one sendall, scattered by index
                  into the far end's array of N records; "÷ scatter" is
                  against this row (mirror only; no tracking, checks or
                  framing, but ~2 random memory accesses per record on each
                  side, which raw TCP of contiguous bytes does not pay)
  tha-wp, -diff, -explicit
                  the writes of salary and mgr as two ``heap.store_many``
                  calls (the indexes as array('Q'), salaries array('d'),
                  managers as element indexes with ``target=emps``: one C
                  call per field for the whole batch, each write marked, so
                  explicit tracking needs no touch; a cffi write per record
                  costs 4-5x more, ~0.6 us per record and field), then
                  ``Active.sync(ack="applied")`` to a tha.Standby in its own
                  process: mirror = the sync
  pickle-changed  attribute writes on Python objects (a plain class, managers
                  as references), then a pickle of the changed records as
                  (id, name, salary, mgr id, dept id) tuples, sent to a far end
                  that unpickles them and applies them into its copy, answers
  pickle-whole    the same writes, then a pickle of the whole graph (depts and
                  emps, references kept), which the far end unpickles as its
                  new copy
  redis           a redis-server primary and replica (no persistence), records
                  as hashes ``emp:ID`` (name, id, salary, mgr, dept); a round
                  is pipelined HSETs of salary and mgr (10,000 per round trip)
                  and ``WAIT 1 120000``: round = mirror (the store is the
                  state). WAIT, not polling INFO replication's offsets: the
                  primary asks the replica for its offset at once (REPLCONF
                  GETACK) and answers when the replica reports it has
                  processed (applied) every write of this client, one round
                  trip; polling would add its own interval and two INFO round
                  trips per poll, and could return early on another client's
                  offset

The bulk phase: memcpy and raw TCP of the image's payload (records x 64 +
depts x 36; memcmp of it too, the target for diff at 0.1%), a tha bulk sync
(a new Active on a heap of its own to a freshly started standby process:
connect, handshake, image, apply, ack; once into a standby that faults in
fresh pages as it writes the image, once into one started with
``reserve=`` the image's size, which touched them at its start), pickle of the whole state, a Redis
full load (FLUSHALL untimed, then every record by pipelined HSET and WAIT)
and a fresh Redis replica's full resync (a new redis-server started
untimed, then REPLICAOF until its link is up with the primary's offset).

Every contender's far end is verified after every phase: the digest of
(id, salary, manager id) per record (peers_far.py) computed on both ends
(for Redis a text digest, by a Lua script inside primary and replica) must
equal each other and the digest of the expected state; otherwise
:class:`VerifyError`.
The limits hold no copy and are not verified.

Output: a table per phase (round ms, mirror ms, ratio to raw TCP of the
same bytes, wire MB), the targets of issue 12 with ok/MISSED, a JSON file
of every raw sample with the machine (CPU model, cores, kernel, versions)
and a PNG plot (round time against f, log-log, one line per contender;
needs matplotlib, ``pip install 'tha[bench]'``; without it the plot is
skipped, saying so). Every far end and redis-server is stopped on the way
out, also after an error or Ctrl-C (and by SIGTERM if this process dies).
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import platform
import random
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import threading
import time
from array import array

from .. import __version__
from ..errors import Error, InvalidArgument
from ..heap import Heap
from ..replication import Active
from ..schema import Schema
from .peers_far import (CHANGED, DEPT_SIZE, EMP_SIZE, EMP_WORDS, EMPS_PER_DEPT, HDR,
                        NO_MGR, RAW, SCATTER_SIZE, SCATTERED, SCHEMA, WHOLE, Child, Dept, Emp, PeerError,
                        RedisServer, VerifyError, connect, dept_count, digest_of,
                        text_digest_of,
                        emp_name, py_digest, redis_server_version, send_msg,
                        tha_digest, wait_ack)
from .workload import machine

FRACTIONS = (0.001, 0.01, 0.10, 1.0)
ROUNDS = 5
QUICK_RECORDS = 20_000
QUICK_ROUNDS = 3
MAX_RECORDS = 10_000_000      # names are "emp%07d"
SYNC_TIMEOUT = 120.0          # seconds a sync or a far end's answer may take
REDIS_CHUNK = 10_000          # pipelined commands per round trip
REDIS_WAIT_MS = 120_000
SETTLE = 0.01                 # seconds of quiet before each timed round
PROTO = pickle.HIGHEST_PROTOCOL
BULK = "bulk"
THA_MODES = ("wp", "diff", "explicit")
KEYS = ("memcpy", "tcp", "tcp-scatter", "tha-wp", "tha-diff", "tha-explicit", "pickle-changed",
        "pickle-whole", "redis")
LABELS = {
    "memcpy": "memcpy of the changed bytes",
    "tcp": "raw TCP of the changed bytes",
    "tcp-scatter": "raw TCP, records gathered + scattered",
    "tha-wp": "tha wp",
    "tha-diff": "tha diff",
    "tha-explicit": "tha explicit",
    "pickle-changed": "pickle of the changed records",
    "pickle-whole": "pickle of the whole state",
    "redis": "Redis primary -> replica",
}
BULK_LABELS = {
    "memcpy": "memcpy of the image",
    "tcp": "raw TCP of the image",
    "tha-bulk": "tha bulk sync (fresh standby)",
    "tha-bulk-reserved": "tha bulk sync (standby with reserve=)",
    "pickle-whole": "pickle of the whole state",
    "redis-load": "Redis full load (HSET + WAIT)",
    "redis-resync": "Redis fresh replica full resync",
}
# Issue 12's targets, as same-run ratios.
TARGET_1PCT_VS_TCP = {"tha-wp": 3.0, "tha-explicit": 3.0, "tha-diff": 5.0}
TARGET_THROUGHPUT = 0.60      # of raw TCP, at f = 100% and for the bulk sync
TARGET_VS = {"pickle-changed": 20.0, "redis": 50.0, "pickle-whole": 1000.0}
TARGET_BULK_VS_REDIS = 100.0


def _now() -> float:
    return time.perf_counter()


# ---- what changes, and what the far ends must hold -----------------------------

def changed_count(n: int, f: float) -> int:
    """Records a round at fraction f changes (record 0, the root, never)."""
    return min(n - 1, max(1, round(n * f)))


class Mutation:
    """One round's change: record idx[j] gets salary[j] and manager mgr[j]."""

    __slots__ = ("idx", "salary", "mgr")

    def __init__(self, idx: array, salary: array, mgr: array):
        self.idx, self.salary, self.mgr = idx, salary, mgr

    def __len__(self) -> int:
        return len(self.idx)


def make_mutation(n: int, f: float, seed: int) -> Mutation:
    rng = random.Random(seed)
    idx = array("Q", sorted(rng.sample(range(1, n), changed_count(n, f))))
    rand = rng.random
    salary = array("d", [round(20_000 + 180_000 * rand(), 2) for _ in idx])
    mgr = array("Q", [int(rand() * i) for i in idx])  # a smaller id: see peers_far
    return Mutation(idx, salary, mgr)


class Model:
    """The expected state: each record's salary and manager id. At the start
    record i earns 50,000 + i and reports to (i - 1) // 4 (a 4-ary tree;
    record 0 to nobody)."""

    def __init__(self, n: int):
        self.n = n
        self.salary = array("d", [50_000.0 + i for i in range(n)])
        self.mgr = array("q", [(i - 1) // 4 for i in range(n)])

    def apply(self, m: Mutation) -> None:
        sal, mgr = self.salary, self.mgr
        for i, s, g in zip(m.idx, m.salary, m.mgr):
            sal[i] = s
            mgr[i] = g

    def digest(self, kind: str = "bin") -> str:
        """peers_far's digest ("bin") or text digest ("text", Redis's)."""
        return (digest_of if kind == "bin" else text_digest_of)(range(self.n), self.salary,
                                                                 self.mgr)


class Plan:
    """The rounds' mutations, made in order (phase by phase, the warm-up
    first) and applied to the model as they are made; the ones of the
    current phase are kept, so contenders that run one after the other
    (pytest) get the same ones. ``expected(phase)`` is the digest after it."""

    def __init__(self, n: int, fractions=FRACTIONS, rounds: int = ROUNDS, seed: int = 1):
        self.n, self.fractions, self.seed = n, tuple(fractions), seed
        self.per_phase = rounds + 1  # one warm-up round
        self.model = Model(n)
        self._kept: dict = {}
        self._next = (0, 0)
        self._digests: dict = {}

    def make(self, phase: int, r: int) -> Mutation:
        """Round r's mutation of phase (r = 0: the warm-up), made anew."""
        return make_mutation(self.n, self.fractions[phase],
                             self.seed * 1_000_003 + phase * 1000 + r)

    def mutation(self, phase: int, r: int) -> Mutation:
        """The same, applied to the model when first made (the ones before
        it too, if nobody asked for them)."""
        if (phase, r) in self._kept:
            return self._kept[(phase, r)]
        if (phase, r) < self._next:
            raise InvalidArgument(f"peers: mutation {(phase, r)} is gone (the plan "
                                  f"is at {self._next})")
        while True:
            p, q = self._next
            if q == 0:
                self._kept.clear()
            m = self.make(p, q)
            self.model.apply(m)
            self._kept[(p, q)] = m
            self._next = (p, q + 1) if q + 1 < self.per_phase else (p + 1, 0)
            if (p, q) == (phase, r):
                return m

    def expected(self, phase, kind: str = "bin") -> str:
        """The digest after ``phase`` (BULK: before any mutation)."""
        if (phase, kind) not in self._digests:
            at = (0, 0) if phase == BULK else (phase + 1, 0)
            if self._next != at:
                raise InvalidArgument(f"peers: the expected state after phase {phase!r} "
                                      f"is gone (the plan is at {self._next})")
            self._digests[(phase, kind)] = self.model.digest(kind)
        return self._digests[(phase, kind)]


# ---- the near ends' states ----------------------------------------------------

def python_state(n: int):
    """(depts, emps): the records as Python objects, managers as references."""
    depts = [Dept(f"dept{j}", j) for j in range(dept_count(n))]
    emps: list = []
    for i in range(n):
        emps.append(Emp(emp_name(i), i, 50_000.0 + i, emps[(i - 1) // 4] if i else None,
                        depts[i // EMPS_PER_DEPT]))
    return depts, emps


def image_bytes(n: int) -> int:
    return n * EMP_SIZE + dept_count(n) * DEPT_SIZE


def tha_heap(schema: Schema, n: int, tracking: str):
    """(heap, emps): the depts and emps arrays in a new heap, roots "depts"
    and "emps", written as one image built column by column."""
    nd = dept_count(n)
    heap = Heap(schema, capacity=image_bytes(n) * 9 // 8 + (8 << 20), tracking=tracking)
    depts = heap.new("struct dept", count=nd)
    emps = heap.new("struct emp", count=n)
    ebase = heap.base + heap.offset_of(emps)
    dbase = heap.base + heap.offset_of(depts)
    img = array("Q", bytes(n * EMP_SIZE))
    w = EMP_WORDS
    names = array("Q", b"".join([b"emp%07d\0\0\0\0\0\0" % i for i in range(n)]))
    img[0::w] = names[0::2]
    img[1::w] = names[1::2]
    img[4::w] = array("Q", range(n))                                  # id (+ padding)
    img[5::w] = array("Q", array("d", [50_000.0 + i for i in range(n)]).tobytes())
    img[6::w] = array("Q", [ebase + (i - 1) // 4 * EMP_SIZE if i else 0 for i in range(n)])
    img[7::w] = array("Q", [dbase + i // EMPS_PER_DEPT * DEPT_SIZE for i in range(n)])
    ffi = schema.ffi
    ffi.memmove(emps, img, n * EMP_SIZE)
    dimg = bytearray(nd * DEPT_SIZE)
    for j in range(nd):
        struct.pack_into("<32sI", dimg, j * DEPT_SIZE, b"dept%d" % j, j)
    ffi.memmove(depts, dimg, len(dimg))
    heap.roots["depts"] = depts
    heap.roots["emps"] = emps
    return heap, emps


# ---- contenders -------------------------------------------------------------------

class Contender:
    """One way to keep the far end level. ``round(m)`` applies a mutation
    and mirrors it; a contender with a copy (``stateful``) answers
    ``far_ask``/``far_answer`` and ``near_digest`` for the verification."""

    key = ""
    stateful = True
    digest_kind = "bin"  # which digest near_digest and the far end compute

    def label(self) -> str:
        return LABELS[self.key]

    def ready(self) -> None:
        """Before a phase's rounds (untimed)."""

    def round(self, m: Mutation) -> dict:
        raise NotImplementedError

    def far_ask(self, n: int) -> None:
        self.far.ask(f"digest {n}")

    def far_answer(self) -> str:
        return self.far.answer(SYNC_TIMEOUT)

    def near_digest(self, n: int) -> str:
        raise NotImplementedError

    def close(self) -> None:
        far = getattr(self, "far", None)
        if far is not None:
            far.close()


class Memcpy(Contender):
    key = "memcpy"
    stateful = False

    def __init__(self, nbytes: int):
        self.src = bytearray(b"\x5a") * nbytes  # present, not zero pages
        self.dst = bytearray(b"\xa5") * nbytes
        self.cmp = bytearray(self.src)

    def move(self, nbytes: int) -> dict:
        src, dst = memoryview(self.src)[:nbytes], memoryview(self.dst)
        t = _now()
        dst[:nbytes] = src
        return {"mirror_s": _now() - t, "payload_bytes": nbytes, "wire_bytes": nbytes}

    def memcmp(self) -> float:
        """One memcmp of the two whole buffers (bytearray ==; a memoryview
        compares element by element, ten times slower)."""
        a, b = self.src, self.cmp
        t = _now()
        if a != b:
            raise VerifyError("memcmp baseline: the buffers differ")
        return _now() - t

    def round(self, m: Mutation) -> dict:
        return self.move(len(m) * EMP_SIZE)


class RawTcp(Contender):
    key = "tcp"
    stateful = False

    def __init__(self, nbytes: int):
        self.far = Child("py", "raw TCP far end")
        self.sock = connect(self.far.port)
        self.tx = bytearray(b"\x5a") * (HDR.size + nbytes)

    def send(self, nbytes: int) -> dict:
        HDR.pack_into(self.tx, 0, RAW, nbytes)
        view = memoryview(self.tx)[:HDR.size + nbytes]
        t = _now()
        self.sock.sendall(view)
        wait_ack(self.sock, "raw TCP")
        return {"mirror_s": _now() - t, "payload_bytes": nbytes, "wire_bytes": nbytes}

    def round(self, m: Mutation) -> dict:
        return self.send(len(m) * EMP_SIZE)

    def close(self) -> None:
        self.sock.close()
        super().close()


class ScatterTcp(Contender):
    """A hand-written mirror of scattered changes: the changed records
    gathered out of an array of n records into one buffer (numpy's take),
    sent with their indexes in one sendall, and scattered by index into the
    far end's array of n records (numpy), which then answers. No tracking,
    no framing, no checks: a baseline for what tha's delta adds."""

    key = "tcp-scatter"
    stateful = False

    def __init__(self, n: int):
        import numpy
        self.np = numpy
        self.far = Child("py", "raw TCP scatter far end")
        self.sock = connect(self.far.port)
        send_msg(self.sock, SCATTER_SIZE, struct.pack("<Q", n))
        wait_ack(self.sock, "raw TCP scatter")
        self.rec = numpy.dtype(f"V{EMP_SIZE}")  # one item per record: a 64-byte copy
        self.src = numpy.full(n * EMP_SIZE, 0x5A, numpy.uint8).view(self.rec)  # present
        self.tx = bytearray(b"\x5a") * (HDR.size + 8 + n * (8 + EMP_SIZE))  # present

    def round(self, m: Mutation) -> dict:
        np, k = self.np, len(m)
        size = 8 + k * (8 + EMP_SIZE)
        idx = np.frombuffer(m.idx, np.uint64).astype(np.intp)  # the caller's indexes
        body = HDR.size + 8
        t = _now()
        HDR.pack_into(self.tx, 0, SCATTERED, size)
        struct.pack_into("<Q", self.tx, HDR.size, k)
        self.tx[body:body + 8 * k] = m.idx
        out = np.frombuffer(self.tx, self.rec, k, body + 8 * k)
        np.take(self.src, idx, out=out)
        self.sock.sendall(memoryview(self.tx)[:HDR.size + size])
        wait_ack(self.sock, "raw TCP scatter")
        return {"mirror_s": _now() - t, "payload_bytes": k * EMP_SIZE,
                "wire_bytes": size}

    def close(self) -> None:
        self.sock.close()
        super().close()


class ThaMode(Contender):
    """A heap tracked by ``tracking``, an Active, a Standby process."""

    def __init__(self, schema: Schema, n: int, tracking: str):
        self.key = f"tha-{tracking}"
        self.heap, self.emps = tha_heap(schema, n, tracking)
        self.mechanism = self.heap.stats()["tracking_mechanism"]
        self.far = Child("tha", f"tha {tracking} standby")
        snap = self.heap.frame_size("snapshot")
        self.active = Active(self.heap, [("127.0.0.1", self.far.port)],
                             timeout=SYNC_TIMEOUT, peer_timeout=60.0,
                             backlog_bytes=2 * snap + (64 << 20))
        self.active.sync(ack="applied")  # the bulk sync
        # Steady state, as a long-running active is in: the backlog full, so
        # each frame reuses the memory of the one it drops (fresh pages cost
        # first-touch faults that are not replication).
        for _ in range(3):
            self.heap.touch_all()
            self.active.sync(ack="applied")

    def label(self) -> str:
        return f"{LABELS[self.key]} [{self.mechanism}]"

    def round(self, m: Mutation) -> dict:
        emps, heap = self.emps, self.heap
        t0 = _now()
        heap.store_many(emps, "salary", m.idx, m.salary)
        heap.store_many(emps, "mgr", m.idx, m.mgr, target=emps)
        t1 = _now()
        r = self.active.sync(ack="applied")
        t2 = _now()
        return {"round_s": t2 - t0, "mirror_s": t2 - t1, "write_s": t1 - t0,
                "payload_bytes": len(m) * EMP_SIZE, "wire_bytes": r.bytes}

    def near_digest(self, n: int) -> str:
        return tha_digest(self.heap, n)

    def close(self) -> None:
        self.active.close()
        super().close()


class ThaBulk(Contender):
    """Bulk sync: per round a new standby process (started untimed) and a new
    Active on this heap; timed from the Active's creation to the ack. With
    ``reserve`` the standby touched memory for the image at its start
    (``Standby(reserve=)``, untimed too), as a standby that waits for its
    active has done long before the sync; without, the sync pays the first
    touch of every page it writes."""

    def __init__(self, schema: Schema, n: int, heap=None, reserve: bool = False):
        self.n = n
        self.key = "tha-bulk-reserved" if reserve else "tha-bulk"
        self.heap = heap if heap is not None else tha_heap(schema, n, "auto")[0]
        self.reserve = reserve
        self.far = None

    def label(self) -> str:
        return BULK_LABELS[self.key]

    def prepare(self) -> None:
        """Untimed: the previous round's standby stopped, a new one started."""
        if self.far is not None:
            self.far.close()
        reserve = (str(self.heap.stats()["top"]),) if self.reserve else ()
        self.far = Child("tha", f"tha bulk-sync standby ({self.key})", *reserve)

    def bulk(self) -> dict:
        t0 = _now()
        active = Active(self.heap, [("127.0.0.1", self.far.port)], timeout=SYNC_TIMEOUT,
                        peer_timeout=60.0)
        try:
            active.sync(ack="applied")
            t1 = _now()
            peers = active.status()["peers"]
        finally:
            active.close()
        return {"mirror_s": t1 - t0, "payload_bytes": image_bytes(self.n),
                "wire_bytes": peers[0]["bytes_out"] if peers else None}

    def near_digest(self, n: int) -> str:
        return tha_digest(self.heap, n)


class PickleChanged(Contender):
    key = "pickle-changed"

    def __init__(self, n: int):
        self.depts, self.emps = python_state(n)
        self.far = Child("py", f"{self.key} far end")
        self.sock = connect(self.far.port)
        self.send_whole()  # the far end's first copy

    def write(self, m: Mutation) -> None:
        emps = self.emps
        for i, s, g in zip(m.idx, m.salary, m.mgr):
            e = emps[i]
            e.salary = s
            e.mgr = emps[g]

    def send_whole(self) -> int:
        data = pickle.dumps((self.depts, self.emps), protocol=PROTO)
        send_msg(self.sock, WHOLE, data)
        wait_ack(self.sock, self.key)
        return len(data)

    def round(self, m: Mutation) -> dict:
        t0 = _now()
        self.write(m)
        t1 = _now()
        recs = [(e.id, e.name, e.salary, NO_MGR if e.mgr is None else e.mgr.id, e.dept.id)
                for e in map(self.emps.__getitem__, m.idx)]
        data = pickle.dumps(recs, protocol=PROTO)
        send_msg(self.sock, CHANGED, data)
        wait_ack(self.sock, self.key)
        t2 = _now()
        return {"round_s": t2 - t0, "mirror_s": t2 - t1, "write_s": t1 - t0,
                "payload_bytes": len(m) * EMP_SIZE, "wire_bytes": len(data)}

    def near_digest(self, n: int) -> str:
        return py_digest(self.emps[:n])

    def close(self) -> None:
        self.sock.close()
        super().close()


class PickleWhole(PickleChanged):
    key = "pickle-whole"

    def round(self, m: Mutation) -> dict:
        t0 = _now()
        self.write(m)
        t1 = _now()
        nbytes = self.send_whole()
        t2 = _now()
        return {"round_s": t2 - t0, "mirror_s": t2 - t1, "write_s": t1 - t0,
                "payload_bytes": len(m) * EMP_SIZE, "wire_bytes": nbytes}

    def bulk(self) -> dict:
        t0 = _now()
        nbytes = self.send_whole()
        return {"mirror_s": _now() - t0, "payload_bytes": image_bytes(len(self.emps)),
                "wire_bytes": nbytes}


# Runs inside redis-server: peers_far.text_digest_of from the stored strings
# (salary as redis-py stored it: Python's repr()).
REDIS_DIGEST = """
local n = tonumber(ARGV[1])
local parts = {}
for i = 0, n - 1 do
  local v = redis.call('HMGET', 'emp:' .. i, 'id', 'salary', 'mgr')
  if not v[1] or not v[2] or not v[3] then
    return redis.error_reply('record ' .. i .. ' is missing')
  end
  parts[i + 1] = v[1] .. ',' .. v[2] .. ',' .. v[3] .. '\\n'
end
return redis.sha1hex(table.concat(parts))
"""


def redis_unavailable() -> str | None:
    """Why the Redis contender cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return ("redis-server is not installed (Debian: apt-get install redis-server; "
                ".ci/run installs it)")
    try:
        import redis  # noqa: F401
    except ImportError:
        return ("the redis Python client is not installed "
                "(pip install 'tha[bench]', or redis and hiredis)")
    return None


class Redis(Contender):
    key = "redis"
    digest_kind = "text"

    def __init__(self, n: int, tmpdir: str):
        import redis
        self._redis = redis
        self.n, self.tmpdir = n, tmpdir
        self.primary = RedisServer(tmpdir, "primary")
        self.replica = None
        self.fresh = None
        self._resyncs = 0
        self._fresh_c = None
        self._far_result = None
        self._far_thread = None
        try:
            self.r = self._client(self.primary.port)
            self.replica = RedisServer(tmpdir, "replica", replicaof=self.primary.port)
            self.q = self._client(self.replica.port)
            self._await_replica(self.q, 0, 60.0)
        except BaseException:
            self.close()
            raise
        self.hiredis = bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False))

    def _client(self, port: int):
        return self._redis.Redis(host="127.0.0.1", port=port, socket_timeout=SYNC_TIMEOUT)

    def _await_replica(self, c, offset: int, timeout: float) -> None:
        """Until c's link to the primary is up, its sync done, its offset >= offset."""
        deadline = time.monotonic() + timeout
        while True:
            info = c.info("replication")
            if (info.get("master_link_status") == "up"
                    and not info.get("master_sync_in_progress")
                    and info.get("slave_repl_offset", -1) >= offset):
                return
            if time.monotonic() > deadline:
                raise PeerError(f"Redis replica: not in sync with the primary within "
                                f"{timeout:g} s ({info.get('master_link_status')})")
            time.sleep(0.001)

    def _wait(self) -> None:
        if self.r.wait(1, REDIS_WAIT_MS) < 1:
            raise PeerError(f"Redis: the replica did not acknowledge within "
                            f"{REDIS_WAIT_MS / 1000:g} s")

    def _offset(self) -> int:
        return self.r.info("replication")["master_repl_offset"]

    def prepare_load(self) -> None:
        """Untimed: FLUSHALL, on the replica too."""
        self.r.flushall()
        self._wait()

    def load(self, model: Model) -> dict:
        """A full load of the model's state into the (flushed) primary."""
        n, sal, mgr = model.n, model.salary, model.mgr
        off = self._offset()
        t0 = _now()
        pipe = self.r.pipeline(transaction=False)
        for j in range(dept_count(n)):
            pipe.hset(f"dept:{j}", mapping={"name": f"dept{j}", "id": j})
        for i in range(n):
            pipe.hset(f"emp:{i}", mapping={"name": emp_name(i), "id": i, "salary": sal[i],
                                           "mgr": mgr[i], "dept": i // EMPS_PER_DEPT})
            if len(pipe) >= REDIS_CHUNK:
                pipe.execute()
        pipe.execute()
        t1 = _now()
        self._wait()
        t2 = _now()
        return {"mirror_s": t2 - t0, "wait_s": t2 - t1, "payload_bytes": image_bytes(n),
                "wire_bytes": self._offset() - off}

    def prepare_resync(self) -> None:
        """Untimed: a new, empty redis-server (the previous one stopped)."""
        self.drop_fresh()
        self._resyncs += 1
        self.fresh = RedisServer(self.tmpdir, f"fresh{self._resyncs}")
        self._fresh_c = self._client(self.fresh.port)

    def resync(self) -> dict:
        """The new server becomes a replica, until its full resync is done.
        Stop it (drop_fresh) before the next WAIT: with a second replica
        WAIT 1 could return for the wrong one."""
        target = self._offset()
        t0 = _now()
        self._fresh_c.replicaof("127.0.0.1", self.primary.port)
        self._await_replica(self._fresh_c, target, SYNC_TIMEOUT)
        return {"mirror_s": _now() - t0, "payload_bytes": image_bytes(self.n),
                "wire_bytes": None}

    def fresh_digest(self, n: int) -> str:
        return self._digest(self._fresh_c, n)

    def drop_fresh(self) -> None:
        if self.fresh is not None:
            self._fresh_c.close()
            self.fresh.close()
            self.fresh = None

    def round(self, m: Mutation) -> dict:
        off = self._offset()
        pipe = self.r.pipeline(transaction=False)
        t0 = _now()
        for i, s, g in zip(m.idx, m.salary, m.mgr):
            pipe.hset(f"emp:{i}", mapping={"salary": s, "mgr": g})
            if len(pipe) >= REDIS_CHUNK:
                pipe.execute()
        pipe.execute()
        t1 = _now()
        self._wait()
        t2 = _now()
        return {"round_s": t2 - t0, "mirror_s": t2 - t0, "write_s": t1 - t0,
                "wait_s": t2 - t1, "payload_bytes": len(m) * EMP_SIZE,
                "wire_bytes": self._offset() - off}

    def _digest(self, c, n: int) -> str:
        try:
            d = c.eval_ro(REDIS_DIGEST, 0, n)
        except self._redis.RedisError as e:
            raise PeerError(f"Redis digest: {e}") from None
        return d.decode() if isinstance(d, bytes) else d

    def far_ask(self, n: int) -> None:
        def run():
            try:
                self._far_result = self._digest(self.q, n)
            except Error as e:
                self._far_result = e
        self._far_thread = threading.Thread(target=run, daemon=True)
        self._far_thread.start()

    def far_answer(self) -> str:
        self._far_thread.join()
        if isinstance(self._far_result, Error):
            raise self._far_result
        return self._far_result

    def near_digest(self, n: int) -> str:
        return self._digest(self.r, n)

    def close(self) -> None:
        for srv in (self.fresh, self.replica, self.primary):
            if srv is not None:
                srv.close()


# ---- the run ------------------------------------------------------------------------

def _median(samples: list) -> dict:
    keys = {k for s in samples for k, v in s.items() if isinstance(v, (int, float))}
    return {k: statistics.median([s[k] for s in samples if s.get(k) is not None])
            for k in sorted(keys) if any(s.get(k) is not None for s in samples)}


class _named:
    """A far end's socket or Redis failing mid-round (OSError, redis's
    errors) as a PeerError naming the contender."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if e is None or isinstance(e, Error):
            return False
        failures = (OSError, EOFError)
        if "redis" in sys.modules:
            failures += (sys.modules["redis"].RedisError,)
        if isinstance(e, failures):
            raise PeerError(f"{self.key}: the far end failed: "
                            f"{type(e).__name__}: {e}") from e
        return False


def _rotate(items: list, r: int) -> list:
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


class PeersBench:
    """The contenders and their far ends; phases run them (bulk first)."""

    def __init__(self, records: int, rounds: int = ROUNDS, fractions=FRACTIONS,
                 contenders=None, log=None, seed: int = 1):
        if not 100 <= records <= MAX_RECORDS:
            raise InvalidArgument(f"peers: records must be within 100..{MAX_RECORDS:,}, "
                                  f"not {records}")
        if rounds < 1:
            raise InvalidArgument(f"peers: rounds must be >= 1, not {rounds}")
        wanted = list(KEYS if contenders is None else contenders)
        unknown = [k for k in wanted if k not in KEYS]
        if unknown:
            raise InvalidArgument(f"peers: no contender {', '.join(unknown)} "
                                  f"(there are {', '.join(KEYS)})")
        self.n, self.rounds, self.fractions = records, rounds, tuple(fractions)
        self.wanted = wanted
        self.plan = Plan(records, self.fractions, rounds, seed)
        self.log = log or (lambda msg: None)
        self.skipped: dict = {}
        self.c: dict = {}          # key -> Contender, in KEYS order
        self.bulks: dict = {}      # "tha-bulk", "tha-bulk-reserved" -> ThaBulk
        self.tmpdir = None
        self.t_start = _now()
        self.phases: list = []

    def say(self, msg: str) -> None:
        self.log(f"[{_now() - self.t_start:7.1f} s] {msg}")

    # -- set-up and tear-down ----------------------------------------------------------

    def setup(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="tha-peers-")
        n, image = self.n, image_bytes(self.n)
        schema = Schema(SCHEMA)
        for key in self.wanted:
            if key == "tcp-scatter":
                try:
                    import numpy  # noqa: F401
                except ImportError:
                    why = "numpy is not installed (pip install 'tha[bench]')"
                    self.skipped[key] = why
                    self.say(f"{key}: skipped: {why}")
                    continue
            if key == "redis":
                why = redis_unavailable()
                if why:
                    self.skipped["redis"] = why
                    self.say(f"redis: skipped: {why}")
                    continue
            self.say(f"setting up {key}")
            if key == "memcpy":
                c = Memcpy(image)
            elif key == "tcp":
                c = RawTcp(image)
            elif key == "tcp-scatter":
                c = ScatterTcp(n)
            elif key.startswith("tha-"):
                c = ThaMode(schema, n, key[4:])
            elif key == "pickle-changed":
                c = PickleChanged(n)
            elif key == "pickle-whole":
                c = PickleWhole(n)
            else:
                c = Redis(n, self.tmpdir)
            self.c[key] = c
        if any(k.startswith("tha-") for k in self.wanted):
            self.say("setting up tha-bulk, tha-bulk-reserved")
            fresh = ThaBulk(schema, n)
            self.bulks = {"tha-bulk": fresh,
                          "tha-bulk-reserved": ThaBulk(schema, n, fresh.heap, reserve=True)}
        gc.collect()
        gc.freeze()  # the states are long-lived: no collection rescans them

    def close(self) -> None:
        """Stops every far end (Actives first, so none reports a lost standby)."""
        errors = []
        for c in sorted(list(self.c.values()) + list(self.bulks.values()),
                        key=lambda c: not isinstance(c, ThaMode)):
            try:
                c.close()
            except Exception as e:  # close the rest regardless
                errors.append(f"{c.key}: {e}")
        self.c.clear()
        self.bulks = {}
        gc.unfreeze()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        if errors:
            raise PeerError("closing: " + "; ".join(errors))

    # -- phases ----------------------------------------------------------------------

    def bulk_items(self) -> list:
        """(key, fn) of the bulk phase; fn(last) returns {key: sample}."""
        image = image_bytes(self.n)
        items = []
        if "memcpy" in self.c:
            mc = self.c["memcpy"]

            def memcpy(last):
                s = mc.move(image)
                s["memcmp_s"] = mc.memcmp()
                return {"memcpy": s}
            items.append(("memcpy", memcpy))
        if "tcp" in self.c:
            items.append(("tcp", lambda last: {"tcp": self.c["tcp"].send(image)}))
        for key, bc in self.bulks.items():
            def tha_bulk(last, bc=bc):
                bc.prepare()
                time.sleep(SETTLE)
                return {bc.key: bc.bulk()}
            items.append((key, tha_bulk))
        if "pickle-whole" in self.c:
            items.append(("pickle-whole",
                          lambda last: {"pickle-whole": self.c["pickle-whole"].bulk()}))
        if "redis" in self.c:
            rd = self.c["redis"]

            def redis(last):  # the load first: the resync copies it
                rd.prepare_load()
                time.sleep(SETTLE)
                out = {"redis-load": rd.load(self.plan.model)}
                rd.prepare_resync()
                time.sleep(SETTLE)
                out["redis-resync"] = rd.resync()
                if last:
                    out["redis-resync"]["digest"] = rd.fresh_digest(self.n)
                rd.drop_fresh()
                return out
            items.append(("redis", redis))
        return items

    def run_bulk(self) -> dict:
        rows: dict = {}
        items = self.bulk_items()
        for r in range(self.rounds):
            self.say(f"bulk sync, round {r + 1}/{self.rounds}")
            for _key, fn in _rotate(items, r):
                time.sleep(SETTLE)
                with _named(_key):
                    got = fn(r == self.rounds - 1)
                for k, s in got.items():
                    rows.setdefault(k, []).append(s)
        verify = self.verify(BULK, [c for c in (*self.bulks.values(),
                                                self.c.get("pickle-whole"), self.c.get("redis"))
                                    if c is not None])
        if "redis-resync" in rows:
            exp = self.plan.expected(BULK, "text")
            d = rows["redis-resync"][-1].pop("digest")
            verify["redis-resync"] = {"near": verify["redis"]["near"], "far": d,
                                      "expected": exp, "equal": d == exp}
            if d != exp:
                raise VerifyError(f"redis-resync: the fresh replica's copy differs after "
                                  f"its full resync: digest {d[:12]}, expected {exp[:12]}")
        for v in rows.values():
            for s in v:
                s.pop("digest", None)
        phase = {"phase": BULK, "records_changed": self.n,
                 "payload_bytes": image_bytes(self.n), "rows": {
                     k: {"label": BULK_LABELS.get(k, k), "samples": v, "median": _median(v)}
                     for k, v in rows.items()}, "verify": verify}
        self.phases.append(phase)
        return phase

    def run_fraction(self, fi: int) -> dict:
        f = self.fractions[fi]
        keys = list(self.c)
        for c in self.c.values():
            c.ready()
        rows: dict = {k: [] for k in keys}
        for r in range(self.rounds + 1):
            self.say(f"f = {f:.1%}, " + ("warm-up round" if r == 0 else
                                          f"round {r}/{self.rounds}"))
            m = self.plan.mutation(fi, r)
            for key in _rotate(keys, r):
                time.sleep(SETTLE)
                with _named(key):
                    s = self.c[key].round(m)
                if r:
                    rows[key].append(s)
        verify = self.verify(fi, [c for c in self.c.values() if c.stateful])
        k = changed_count(self.n, f)
        phase = {"phase": f, "records_changed": k, "payload_bytes": k * EMP_SIZE,
                 "rows": {key: {"label": self.c[key].label(), "samples": v,
                                "median": _median(v)} for key, v in rows.items()},
                 "verify": verify}
        self.phases.append(phase)
        return phase

    def verify(self, phase, contenders: list) -> dict:
        """Digests on both ends (the far ones computing meanwhile) against
        the expected state; VerifyError naming the contender otherwise."""
        n = self.n
        self.say(f"verifying {len(contenders)} far ends")
        for c in contenders:
            c.far_ask(n)
        out = {}
        for c in contenders:
            expected = self.plan.expected(phase, c.digest_kind)
            near = c.near_digest(n)
            far = c.far_answer()
            out[c.key] = {"near": near, "far": far, "expected": expected,
                          "equal": near == far == expected}
        bad = [k for k, v in out.items() if not v["equal"]]
        if bad:
            where = "the bulk sync" if phase == BULK else f"f = {self.fractions[phase]:.1%}"
            raise VerifyError("the far end's copy differs after " + where + ": " + "; ".join(
                f"{k}: near {out[k]['near'][:12]}, far {out[k]['far'][:12]}, "
                f"expected {out[k]['expected'][:12]}" for k in bad))
        return out

    def run(self) -> dict:
        """Everything: set-up, the bulk phase, each fraction; then closes."""
        try:
            self.setup()
            self.machine = machine_info(self)
            self.run_bulk()
            for fi in range(len(self.fractions)):
                self.run_fraction(fi)
            self.machine["loadavg_end"] = list(os.getloadavg())
        finally:
            self.close()
        self.say("done")
        return self.results()

    def results(self) -> dict:
        return {"benchmark": "tha peers (issue 12)", "machine": self.machine,
                "config": {"records": self.n, "depts": dept_count(self.n),
                           "emp_bytes": EMP_SIZE, "dept_bytes": DEPT_SIZE,
                           "rounds": self.rounds, "warmup_rounds": 1,
                           "fractions": list(self.fractions),
                           "contenders": self.wanted, "redis_chunk": REDIS_CHUNK,
                           "writes": "heap.store_many(emps, field, array('Q') of "
                                     "indexes, values[, target=emps])"},
                "skipped": self.skipped, "phases": self.phases,
                "targets": targets({"phases": self.phases})}


def machine_info(bench: PeersBench | None = None) -> dict:
    import cffi
    m = machine()
    m["kernel"] = platform.release()
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    m["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    m["versions"] = {"tha": __version__, "cffi": cffi.__version__,
                     "python": platform.python_version(),
                     "redis_server": redis_server_version()}
    for mod in ("redis", "hiredis", "matplotlib"):
        try:
            m["versions"][mod] = __import__(mod).__version__
        except ImportError:
            m["versions"][mod] = None
    if bench is not None:
        m["tracking"] = {k: c.mechanism for k, c in bench.c.items()
                         if isinstance(c, ThaMode)}
        if "redis" in bench.c:
            m["redis_parser"] = "hiredis" if bench.c["redis"].hiredis else "python"
    m["loadavg_start"] = list(os.getloadavg())
    return m


# ---- targets, table, plot --------------------------------------------------------------

def _med(phases: dict, phase, key: str, field: str = "mirror_s"):
    row = phases.get(phase, {}).get("rows", {}).get(key)
    return None if row is None else row["median"].get(field)


def targets(res: dict) -> list:
    """Issue 12's targets against this run: {what, value, target, ok}."""
    ph = {p["phase"]: p for p in res["phases"]}
    out = []

    def add(what, value, op, target):
        if value is not None:
            out.append({"what": what, "value": value, "target": f"{op} {target:g}",
                        "ok": value <= target if op == "<=" else value >= target})

    tcp1 = _med(ph, 0.01, "tcp")
    for key, t in TARGET_1PCT_VS_TCP.items():
        m = _med(ph, 0.01, key)
        if m is not None and tcp1:
            add(f"{key}: mirror / raw TCP at f = 1%", m / tcp1, "<=", t)
    tcp100 = _med(ph, 1.0, "tcp")
    for key in ("tha-wp", "tha-diff", "tha-explicit"):
        m = _med(ph, 1.0, key)
        if m and tcp100:
            add(f"{key}: share of raw TCP throughput at f = 100%", tcp100 / m, ">=",
                TARGET_THROUGHPUT)
    bulk, tcpb = _med(ph, BULK, "tha-bulk"), _med(ph, BULK, "tcp")
    for key, what in (("tha-bulk", "fresh standby"), ("tha-bulk-reserved", "reserve=")):
        m = _med(ph, BULK, key)
        if m and tcpb:
            add(f"tha bulk sync ({what}): share of raw TCP throughput", tcpb / m, ">=",
                TARGET_THROUGHPUT)
    d01, memcmp = _med(ph, 0.001, "tha-diff"), _med(ph, BULK, "memcpy", "memcmp_s")
    if d01 and memcmp:
        add("tha-diff: mirror at f = 0.1% / memcmp of the image", d01 / memcmp, "<=", 1.0)
    for key in ("tha-wp", "tha-diff", "tha-explicit"):
        mine = _med(ph, 0.01, key, "round_s")
        for other, t in TARGET_VS.items():
            theirs = _med(ph, 0.01, other, "round_s")
            if mine and theirs:
                add(f"{key}: round at f = 1%, times faster than {other}", theirs / mine,
                    ">=", t)
    load = _med(ph, BULK, "redis-load")
    if bulk and load:
        add("tha bulk sync: times faster than a Redis full load", load / bulk, ">=",
            TARGET_BULK_VS_REDIS)
    return out


def _ms(s) -> str:
    if s is None:
        return "—"
    ms = s * 1e3
    if ms >= 100:
        return f"{ms:,.0f}"
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 0.1 else f"{ms:.3f}"


def _x(r) -> str:
    if r is None:
        return "—"
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def report(res: dict, out=sys.stdout) -> None:
    m, cfg = res["machine"], res["config"]
    print(f"tha peers benchmark (issue 12): {cfg['records']:,} struct emp (64 B) + "
          f"{cfg['depts']:,} struct dept, each far end another process on 127.0.0.1; "
          f"median of {cfg['rounds']} rounds after 1 warm-up, contenders alternating",
          file=out)
    print(f"machine: {m['cpu']}, {m['cores']} cores, Linux {m.get('kernel')}, "
          f"Python {m['python']}, redis-server {m['versions'].get('redis_server')}; "
          f"load average {m['loadavg_start'][0]:.2f} at the start", file=out)
    for k, why in res["skipped"].items():
        print(f"{k}: skipped: {why}", file=out)
    for p in res["phases"]:
        tcp = p["rows"].get("tcp", {}).get("median", {}).get("mirror_s")
        scat = p["rows"].get("tcp-scatter", {}).get("median", {}).get("mirror_s")
        if p["phase"] == BULK:
            head = (f"initial bulk sync of the whole graph "
                    f"({p['payload_bytes'] / 1e6:.1f} MB payload)")
        else:
            head = (f"f = {p['phase']:.1%} ({p['records_changed']:,} records changed, "
                    f"{p['payload_bytes'] / 1e6:.2f} MB payload)")
        print(f"\n{head}", file=out)
        print(f"{'contender':<44}{'round ms':>10}{'mirror ms':>11}{'÷ raw TCP':>11}"
              + (f"{'÷ scatter':>11}" if scat else "") + f"{'wire MB':>9}  note", file=out)
        for key, row in p["rows"].items():
            med = row["median"]
            ratio = med["mirror_s"] / tcp if tcp else None
            wire = med.get("wire_bytes")
            note = []
            if "write_s" in med:
                note.append(f"writes {_ms(med['write_s'])} ms")
            if "wait_s" in med:
                note.append(f"of it WAIT {_ms(med['wait_s'])} ms")
            if "memcmp_s" in med:
                note.append(f"memcmp {_ms(med['memcmp_s'])} ms")
            if p["phase"] == BULK or p["phase"] == 1.0:
                if tcp and key != "tcp":
                    share = tcp / med["mirror_s"]
                    note.append(f"{share:.0%} of raw TCP throughput" if share >= 0.01
                                else f"{share:.2%} of raw TCP throughput")
            print(f"{row['label']:<44}{_ms(med.get('round_s')):>10}"
                  f"{_ms(med['mirror_s']):>11}{_x(ratio):>11}"
                  + (f"{_x(med['mirror_s'] / scat):>11}" if scat else "") +
                  f"{'—' if wire is None else f'{wire / 1e6:.2f}':>9}  "
                  f"{', '.join(note)}", file=out)
        print("far ends verified equal: " + ", ".join(
            k for k, v in p["verify"].items() if v["equal"]), file=out)
    if res["targets"]:
        print("\ntargets (issue 12), this run:", file=out)
        for t in res["targets"]:
            print(f"  {t['what']}: {t['value']:.3g} (target {t['target']}) "
                  f"{'ok' if t['ok'] else 'MISSED'}", file=out)


def plot(res: dict, path: str) -> str | None:
    """Writes the PNG; returns None, or why it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (pip install 'tha[bench]'): no plot"
    fr = [p for p in res["phases"] if p["phase"] != BULK]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    keys = [k for k in KEYS if any(k in p["rows"] for p in fr)]
    for key in keys:
        xs, ys = [], []
        for p in fr:
            row = p["rows"].get(key)
            if row:
                med = row["median"]
                xs.append(p["phase"] * 100)
                ys.append(med.get("round_s", med["mirror_s"]) * 1e3)
        label = next(p["rows"][key]["label"] for p in fr if key in p["rows"])
        style = "--" if key in ("memcpy", "tcp", "tcp-scatter") else "-"
        ax.plot(xs, ys, style, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records changed per round (%)")
    ax.set_ylabel("round: mutate + mirror until applied (ms, median)")
    cfg, m = res["config"], res["machine"]
    ax.set_title(f"{cfg['records']:,} struct emp, far end in another process "
                 f"(127.0.0.1)\n{m['cpu']}, {m['cores']} cores; limits: mirror only",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def run_cli(records: int, rounds: int, out_dir: str, contenders=None,
            fractions=FRACTIONS, out=sys.stdout) -> int:
    """The command: runs, prints the table, writes peers.json and peers.png."""
    if not os.path.isdir(out_dir):
        raise InvalidArgument(f"peers: --out {out_dir}: no such directory")
    bench = PeersBench(records, rounds, fractions, contenders,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        res = bench.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    report(res, out)
    jpath = os.path.join(out_dir, "peers.json")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"\nraw samples: {jpath}", file=out)
    ppath = os.path.join(out_dir, "peers.png")
    why = plot(res, ppath)
    print(f"plot: {why}" if why else f"plot: {ppath}", file=out)
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the clean-up

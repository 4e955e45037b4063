"""``python -m tha node``: one member of an etcd-led cluster (tha.Node)
serving a small replicated key-value store over HTTP, so a cluster can be
run, watched and failed over with no application code.

Your own program uses ``tha.Node`` with its heap and on_promote /
on_demote; this command is that with a built-in application: a hash table
of keys and values on the heap. On the leader ``PUT /kv/KEY`` (the body is
the value) writes it and returns once ``sync()`` has it on a quorum
(200 with the seq and epoch; 503 if the sync fails); any other node
answers 307 to the leader's address (``curl -L`` follows it), or 503 while
there is none. ``GET /kv/KEY`` and ``GET /kv`` read this node's copy (a
standby's may lag). The health endpoint is the same port: /leader,
/replica, /health, /metrics (tha/cluster/health.py).

The first line of output is ``node NAME: replication HOST:PORT, http
HOST:PORT``; then a line per role change. With ``--events`` it prints JSON
lines instead, one per role change and per frame applied (the cluster
tests check them), and stops when its stdin closes (so it ends with the
process that started it). SIGTERM or SIGINT stop it (a leader gives its key up
first, so an election follows at once).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse

from ..errors import Error, NotLeader
from ..heap import Heap
from ..schema import Schema
from .console import common_options, parse_duration, start

KV_CDEF = """
struct entry { char key[64]; char val[192]; uint64_t version; struct entry *next; };
struct table { uint64_t count; uint64_t writes; struct entry *buckets[256]; };
"""
NBUCKETS = 256
KEY_MAX, VAL_MAX = 63, 191


def new_heap(capacity: int) -> Heap:
    heap = Heap(Schema(KV_CDEF), capacity)
    heap.roots["kv"] = heap.new("struct table")
    return heap


def _bucket(key: bytes) -> int:
    h = 2166136261
    for b in key:  # FNV-1a: the same bucket on every node
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h % NBUCKETS


def kv_put(heap: Heap, key: bytes, val: bytes) -> int:
    """Under the heap's lock: sets key to val; returns its version."""
    t = heap.roots["kv"]
    i = _bucket(key)
    e = t.buckets[i]
    ffi = heap.schema.ffi
    while e:
        if ffi.string(e.key) == key:
            break
        e = e.next
    if not e:
        e = heap.new("struct entry")
        e.key = key
        e.next = t.buckets[i]
        t.buckets[i] = e
        t.count += 1
    e.val = val + b"\0" * (VAL_MAX + 1 - len(val))  # the old tail goes too
    e.version += 1
    t.writes += 1
    return int(e.version)


def kv_items(heap: Heap) -> dict:
    out = {}
    with heap._lock:
        try:
            t = heap.roots["kv"]
        except Error:
            return out
        ffi = heap.schema.ffi
        for i in range(NBUCKETS):
            e = t.buckets[i]
            while e:
                out[ffi.string(e.key).decode(errors="replace")] = \
                    ffi.string(e.val).decode(errors="replace")
                e = e.next
    return out


def _json(code: int, obj) -> tuple:
    return code, (json.dumps(obj, sort_keys=True) + "\n").encode(), "application/json"


def put_route(node, handler) -> tuple:
    key = urllib.parse.unquote(handler.path.split("?")[0][len("/kv/"):]).encode()
    n = int(handler.headers.get("Content-Length") or 0)
    val = handler.rfile.read(n) if n else b""
    if not key or len(key) > KEY_MAX or b"\0" in key:
        return _json(400, {"error": f"a key is 1..{KEY_MAX} bytes"})
    if len(val) > VAL_MAX or b"\0" in val:
        return _json(400, {"error": f"a value is 0..{VAL_MAX} bytes, no NUL"})
    try:
        with node.leading() as heap:  # the write and its sync: one consistent point
            version = kv_put(heap, key, val)
            r = node.sync()
            epoch = heap.stats()["epoch"]
    except NotLeader as e:
        ldr = node.leader
        if ldr is not None and ldr.http and ldr.name != node.name:
            # 307 keeps the method and the body: curl -L lands on the leader
            return (307, (json.dumps({"leader": ldr.name}) + "\n").encode(),
                    "application/json", {"Location": f"http://{ldr.http}{handler.path}"})
        return _json(503, {"error": str(e), "leader": e.leader})
    except Error as e:
        return _json(503, {"error": f"{type(e).__name__}: {e}"})
    return _json(200, {"key": key.decode(errors="replace"), "version": version,
                       "seq": r.seq, "epoch": epoch, "acked_by": r.acked_by})


def get_route(node, handler) -> tuple:
    heap = node.heap
    items = kv_items(heap) if heap is not None else {}
    path = urllib.parse.unquote(handler.path.split("?")[0])
    if path.rstrip("/") == "/kv":
        return _json(200, items)
    key = path[len("/kv/"):]
    if key not in items:
        return _json(404, {"error": f"no key {key!r} on {node.name}"})
    return 200, items[key].encode(), "text/plain"


def add_parser(sub):
    p = sub.add_parser("node", help="a member of an etcd-led cluster (a replicated "
                       "key-value store over HTTP)", description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       parents=[common_options()])
    p.add_argument("--etcd", required=True, metavar="URL",
                   help="etcd endpoints, http://HOST:PORT[,...]")
    p.add_argument("--cluster", required=True, help="the cluster's name")
    p.add_argument("--name", required=True, help="this member's name")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="replication address (default 127.0.0.1:0: a free port)")
    p.add_argument("--http", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="HTTP address: health checks, metrics and the store "
                        "(default 127.0.0.1:0)")
    p.add_argument("--ttl", type=int, default=10, metavar="S",
                   help="leader lease TTL in whole seconds (default 10)")
    p.add_argument("--loop-wait", type=parse_duration, default=1.0, metavar="T",
                   help="seconds between two rounds of the node's loop (default 1s)")
    p.add_argument("--retry-timeout", type=parse_duration, metavar="T",
                   help="deadline of one etcd request (default (ttl - loop_wait) / 2)")
    p.add_argument("--ack", default="applied", choices=("received", "applied"),
                   help="what a write waits for (default applied)")
    p.add_argument("--ack-quorum", type=int, metavar="N",
                   help="members (the leader included) that must hold a write "
                        "(default: a majority of the voters)")
    p.add_argument("--sync-timeout", type=parse_duration, default=5.0, metavar="T",
                   help="a write fails if the quorum has not acked within T (default 5s)")
    p.add_argument("--capacity", type=int, default=64 << 20,
                   help="heap capacity in bytes (default 64 MiB)")
    p.add_argument("--events", action="store_true",
                   help="JSON lines on stdout: role changes and every frame applied")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    console, secret = start(args)
    from ..cluster import Node

    def event(**kw):
        if args.events:
            console.put(json.dumps(dict(kw, t=time.monotonic(), name=args.name),
                                   separators=(",", ":")))

    holder = {}

    def on_promote(heap):
        st = heap.stats()
        node = holder.get("node")
        since = node.promotions[-1][0] if node and node.promotions else None
        # syncs from: a forced failover waits out the old leader's lease
        event(ev="promoted", epoch=st["epoch"], seq=st["seq"], since=since,
              syncs_from=node._accept_from if node else None)
        if not args.events:
            console.put(f"node {args.name}: leader at epoch {st['epoch']}, seq {st['seq']}")

    def on_demote():
        node = holder.get("node")
        stopped, epoch, until = node.demotions[-1] if node and node.demotions else (0, 0, 0)
        event(ev="demoted", epoch=epoch, until=until, stopped=stopped)
        if not args.events:
            console.put(f"node {args.name}: no longer the leader")

    def on_applied(seq, nbytes, bulk):
        node = holder.get("node")
        heap = node.standby.heap if node is not None and node.standby else None
        event(ev="applied", seq=seq, bytes=nbytes, bulk=bulk,
              epoch=heap.stats()["epoch"] if heap is not None else None)

    try:
        node = Node(args.name, args.listen, etcd=args.etcd, cluster=args.cluster,
                    secret=secret, create=lambda: new_heap(args.capacity),
                    on_promote=on_promote, on_demote=on_demote, on_applied=on_applied,
                    ack=args.ack, ack_quorum=args.ack_quorum, timeout=args.sync_timeout,
                    ttl=args.ttl, loop_wait=args.loop_wait,
                    retry_timeout=args.retry_timeout, http=args.http, start=False)
    except (Error, OSError) as e:
        console.say(f"python -m tha node: error: {e}", err=True)
        return 2
    holder["node"] = node
    node.http.routes[("PUT", "/kv/")] = put_route
    node.http.routes[("GET", "/kv")] = get_route
    addr = "%s:%d" % tuple(node.address)
    http = node.me["http"]
    if args.events:
        event(ev="listening", addr=addr, http=http)
    else:
        console.say(f"node {args.name}: replication {addr}, http {http}")
    node._thread.start()
    if args.events:  # ends with the process that reads the events
        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            console.stop.set()
        threading.Thread(target=watch_stdin, daemon=True, name="stdin").start()
    try:
        while not console.stop.is_set():
            console.pump(0.1)
    finally:
        node.close()
        event(ev="stopped")
        console.flush()
    return 0

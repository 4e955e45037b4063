"""``python -m tha bench``: the benchmarks of tha/bench/ from the command
line (the codec by default; --replication, --tracking, --leaks,
--checkpoint, --peers instead). ``python -m tha.bench`` runs the same."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..bench import (checkpoint as bc, codec, leaks as bl, peers as bp, replication as br,
                     same_address as bs, tracking as bt)
from ..bench.workload import machine
from .console import parse_size


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``bench`` on an argparse subparsers object; sets func=run."""
    p = subparsers.add_parser(
        "bench", help="codec throughput against memcpy, measured in the same run",
        description=codec.__doc__.split("\n\n")[1] if codec.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=1_000_000, metavar="N",
                   help="struct emp objects in the graph (default 1,000,000)")
    p.add_argument("--clustered", action="store_true",
                   help="the dirty emps are one contiguous stretch (default: scattered)")
    p.add_argument("--dirty", type=float, default=1.0, metavar="PCT",
                   help="percent of the emps changed per delta (default 1)")
    p.add_argument("--repeat", type=int, default=None, metavar="K",
                   help="rounds; best and median are reported (default 7; "
                   "--checkpoint 3, --peers 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--replication", action="store_true",
                   help="instead: Active -> Standby (another process) over loopback "
                   "TCP against raw sockets (see tha/bench/replication.py); "
                   "--objects sizes the large delta, --repeat the rounds")
    p.add_argument("--tracking", action="store_true",
                   help="instead: cost of transparent tracking (diff, wp through "
                   "userfaultfd and mprotect) on a 256 MiB heap against untracked "
                   "writes and memcmp (see tha/bench/tracking.py); --repeat rounds")
    p.add_argument("--leaks", action="store_true",
                   help="instead: heap.leaks() over --objects separate allocations "
                   "(1%% garbage), objects/s against a plain sweep "
                   "(see tha/bench/leaks.py); --repeat rounds")
    p.add_argument("--checkpoint", action="store_true",
                   help="instead: checkpoint() and Heap.load() against a plain "
                   "sequential write+fsync / cold read of the same bytes to the same "
                   "disk (see tha/bench/checkpoint.py); --size, --dir, --repeat")
    p.add_argument("--same-address", action="store_true",
                   help="instead: applying a same-address heap's frames (raw "
                   "addresses, a straight copy) against a relocatable heap's and "
                   "memcpy of the same bytes (see tha/bench/same_address.py); "
                   "--objects, --dirty, --repeat")
    p.add_argument("--peers", action="store_true",
                   help="instead: tha (wp, diff, explicit) against memcpy, raw TCP, "
                   "pickle and a Redis primary + replica, far ends in other processes, "
                   "f = 0.1%%..100%% of --records changed per round and the bulk "
                   "sync; a table, --out/peers.json and --out/peers.png (see "
                   "tha/bench/peers.py); --repeat rounds (default 5)")
    p.add_argument("--records", type=int, default=None, metavar="N",
                   help="with --peers: struct emp records (default 1,000,000; "
                   "--quick: 20,000)")
    p.add_argument("--quick", action="store_true",
                   help="with --peers: a smoke run under a minute (20,000 records, "
                   "3 rounds)")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="with --peers: directory for peers.json and peers.png "
                   "(default: the current one)")
    p.add_argument("--contenders", default=None, metavar="LIST",
                   help="with --peers: comma-separated subset of "
                   + ",".join(bp.KEYS) + " (default: all)")
    p.add_argument("--size", type=parse_size, default="256M", metavar="BYTES",
                   help="with --checkpoint: heap image size (256M, 1G; default 256M)")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="with --checkpoint: directory on the disk to measure "
                   "(default: the temp directory)")
    p.add_argument("--small", type=int, default=200, metavar="M",
                   help="with --replication: small syncs and ping-pongs per round")
    p.add_argument("--secret", action="store_true",
                   help="with --replication: authenticate the link (a shared "
                   "secret: every message carries a MAC)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    if getattr(args, "peers", False):
        records = args.records or (bp.QUICK_RECORDS if args.quick else 1_000_000)
        rounds = args.repeat if args.repeat is not None else (
            bp.QUICK_ROUNDS if args.quick else bp.ROUNDS)
        wanted = args.contenders.split(",") if args.contenders else None
        return bp.run_cli(records, rounds, args.out, wanted)
    repeat = 7 if args.repeat is None else args.repeat
    if args.objects < 2 or repeat < 1 or not 0 < args.dirty <= 100:
        print("bench: need --objects >= 2, --repeat >= 1, 0 < --dirty <= 100",
              file=sys.stderr)
        return 2
    if getattr(args, "same_address", False):
        res = bs.run(args.objects, args.dirty, repeat)
        if args.json:
            json.dump({"modes": res["modes"], **res["info"]}, sys.stdout, indent=2)
            print()
        else:
            bs.report(res)
        return 0
    if args.leaks:
        res = bl.run(args.objects, repeat)
        if args.json:
            json.dump({**res, "machine": machine()}, sys.stdout, indent=2)
            print()
        else:
            bl.report(res, machine())
        return 0
    if getattr(args, "checkpoint", False):
        res = bc.run(args.size, 3 if args.repeat is None else repeat, args.dir)
        if args.json:
            json.dump(res, sys.stdout, indent=2)
            print()
        else:
            bc.report(res)
        return 0
    if args.tracking:
        res = bt.run(repeat)
        if args.json:
            rows = [{"mechanism": k[0], "pattern": k[1], **v} for k, v in res["rows"].items()]
            json.dump({"memcmp_s": res["memcmp_s"], "rows": rows, "machine": machine()},
                      sys.stdout, indent=2)
            print()
        else:
            bt.report(res, repeat)
        return 0
    if args.replication:
        if args.secret:  # the peer processes read it too
            os.environ["THA_BENCH_SECRET"] = os.urandom(16).hex()
        res = br.run(args.objects, repeat, args.small)
        if args.json:
            json.dump({**res["info"], **res["summary"]}, sys.stdout, indent=2)
            print()
        else:
            br.report(res["summary"], res["info"])
        return 0
    res = codec.run(args.objects, args.dirty, repeat, args.clustered)
    if args.json:
        json.dump({**res["info"], **res["summary"]}, sys.stdout, indent=2)
        print()
    else:
        codec.report(res["summary"], res["info"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tha.bench")
    sub = ap.add_subparsers(dest="cmd")
    add_parser(sub)
    return run(ap.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)]))

"""``python -m tha cluster list|switchover|failover``: look at and steer a
cluster of ``python -m tha node`` (or tha.Node) members through etcd.

* ``list`` — every member: role, voter or not, epoch, applied seq, lag
  behind the leader in frames and bytes, last heard; a table, or --json.
* ``switchover [--to NAME]`` — planned: the leader stops taking syncs,
  waits until the target has applied everything, then hands the leader
  key over in one transaction (no acknowledged sync is lost). Without
  --to, the most up-to-date voter.
* ``failover --to NAME`` — forced: NAME takes the leader key now, whether
  or not the leader lives and however far NAME lags (syncs it lacks are
  lost: for a cluster that cannot elect, e.g. too few voters left). If a
  leader still held the key, NAME takes syncs only once that leader's
  lease has run out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..cluster import etcd as E
from ..cluster.coord import parse_cluster
from ..errors import CoordinationError, Error
from .console import parse_duration


def _common(p):
    p.add_argument("--etcd", required=True, metavar="URL",
                   help="etcd endpoints, http://HOST:PORT[,...]")
    p.add_argument("--cluster", required=True, help="the cluster's name")


def add_parser(sub):
    p = sub.add_parser("cluster", help="list, switch over or fail over a cluster "
                       "(etcd)", description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="cluster_command", required=True)
    ls = csub.add_parser("list", help="members, roles, epochs, seq, lag, last heard")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.set_defaults(func=run_list)
    sw = csub.add_parser("switchover", help="planned handover to another member")
    _common(sw)
    sw.add_argument("--to", metavar="NAME", help="the new leader (default: the most "
                    "up-to-date voter)")
    sw.add_argument("--timeout", type=parse_duration, default=10.0, metavar="T",
                    help="give up after T (default 10s)")
    sw.set_defaults(func=run_switchover)
    fo = csub.add_parser("failover", help="forced: NAME leads now (may lose syncs)")
    _common(fo)
    fo.add_argument("--to", required=True, metavar="NAME", help="the new leader")
    fo.add_argument("--timeout", type=parse_duration, default=10.0, metavar="T",
                    help="wait up to T for it to lead (default 10s)")
    fo.set_defaults(func=run_failover)
    return p


class _Reader:
    """The cluster's keys, read (no lease: a reader, not a member)."""

    def __init__(self, args):
        self.client = E.Etcd(args.etcd, timeout=5.0)
        self.prefix = f"/tha/{args.cluster}/"

    def read(self):
        return parse_cluster(self.prefix, *self.client.get_prefix(self.prefix))


def _read(args) -> tuple:
    c = _Reader(args)
    return c, c.read()


def members(cl) -> list:
    """One dict per member, leader first, for list's table and --json."""
    ldr = cl.leader.name if cl.leader else None
    lst = cl.statuses.get(ldr, {}) if ldr else {}
    lead_seq = lst.get("seq")
    lags = lst.get("standbys") or {}
    now = time.time()
    out = []
    for name in sorted(set(cl.members) | set(cl.statuses)):
        st = cl.statuses.get(name)
        m = cl.members.get(name, {})
        row = {"name": name, "addr": m.get("addr"), "http": m.get("http"),
               "voter": name in cl.voters, "alive": st is not None,
               "role": ("leader" if name == ldr else st.get("role")) if st else "down",
               "epoch": st.get("epoch") if st else None,
               "seq": st.get("seq") if st else None,
               "last_heard": round(now - st["heard"], 3) if st and "heard" in st else None}
        if name == ldr:
            row["lag_frames"], row["lag_bytes"] = 0, 0
        elif name in lags and lags[name] is not None:
            row["lag_frames"], row["lag_bytes"] = lags[name]["frames"], lags[name]["bytes"]
        elif st is not None and lead_seq is not None:
            row["lag_frames"], row["lag_bytes"] = max(0, lead_seq - st.get("seq", 0)), None
        else:
            row["lag_frames"] = row["lag_bytes"] = None
        out.append(row)
    out.sort(key=lambda r: (r["name"] != ldr, r["name"]))
    return out


def run_list(args) -> int:
    try:
        _, cl = _read(args)
    except (CoordinationError, Error) as e:
        print(f"python -m tha cluster list: error: {e}", file=sys.stderr)
        return 1
    rows = members(cl)
    if args.json:
        print(json.dumps({"cluster": args.cluster,
                          "leader": cl.leader.name if cl.leader else None,
                          "epoch": cl.leader.epoch if cl.leader else None,
                          "voters": cl.voters, "quorum": cl.quorum,
                          "members": rows}, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"cluster {args.cluster}: no members")
        return 0
    head = ("member", "role", "voter", "epoch", "seq", "lag", "lag bytes", "last heard",
            "address")

    def cell(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)
    table = [head] + [(r["name"], r["role"], "yes" if r["voter"] else "no",
                       cell(r["epoch"]), cell(r["seq"]), cell(r["lag_frames"]),
                       cell(r["lag_bytes"]), cell(r["last_heard"], "{:.1f}s ago"),
                       cell(r["addr"])) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    ldr = cl.leader
    print(f"cluster {args.cluster}: leader {ldr.name if ldr else 'none'}"
          + (f" at epoch {ldr.epoch}" if ldr else "")
          + f"; {len(cl.voters)} voters, a sync needs {cl.quorum}")
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _wait_leader(c, want, old_epoch, timeout, request=True) -> tuple:
    """(cluster, None) once a leader other than epoch ``old_epoch`` (named
    ``want``, if given) says it leads at its epoch; (None, why) if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cl = c.read()
        ldr = cl.leader
        if ldr is not None and ldr.epoch != old_epoch and (want is None or ldr.name == want):
            st = cl.statuses.get(ldr.name) or {}
            if st.get("role") == "leader" and st.get("epoch") == ldr.epoch:
                return cl, None
        elif request and cl.request is None:
            return None, "the leader gave the request up (see its log)"
        time.sleep(0.01)
    return None, f"no new leader within {timeout:g}s"


def run_switchover(args) -> int:
    prog = "python -m tha cluster switchover"
    try:
        c, cl = _read(args)
        if cl.leader is None:
            print(f"{prog}: error: the cluster has no leader (use failover --to)",
                  file=sys.stderr)
            return 1
        if args.to is not None and args.to not in cl.voters:
            print(f"{prog}: error: {args.to} is not a voting member of {args.cluster} "
                  f"(voters: {', '.join(cl.voters)})", file=sys.stderr)
            return 1
        if args.to == cl.leader.name:
            print(f"{prog}: {args.to} already leads")
            return 0
        t0 = time.monotonic()
        req = {"from": cl.leader.name, "to": args.to, "timeout": args.timeout}
        c.client.put(c.prefix + "ctl/switchover", json.dumps(req))
        done, err = _wait_leader(c, args.to, cl.leader.epoch, args.timeout)
        if err is not None:
            try:
                c.client.delete(c.prefix + "ctl/switchover")
            except CoordinationError:
                pass
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 1
    except CoordinationError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    new = done.leader
    print(f"switched over from {cl.leader.name} to {new.name}: epoch {new.epoch} "
          f"(handover {time.monotonic() - t0:.3f}s)")
    return 0


def run_failover(args) -> int:
    prog = "python -m tha cluster failover"
    try:
        c, cl = _read(args)
        st = cl.statuses.get(args.to)
        info = cl.members.get(args.to)
        if st is None or info is None or not st.get("lease"):
            print(f"{prog}: error: {args.to} is not a live member of {args.cluster}",
                  file=sys.stderr)
            return 1
        if not st.get("synced"):
            print(f"{prog}: error: {args.to} holds no state to lead with", file=sys.stderr)
            return 1
        wait = 0.0
        ops = []
        if cl.leader is not None:
            if cl.leader.name == args.to:
                print(f"{prog}: {args.to} already leads")
                return 0
            # the old leader may act until its lease would run out
            out = c.client.call("lease/timetolive", {"ID": str(cl.leader.lease)})
            wait = float(out.get("grantedTTL") or 0) if int(out.get("TTL", -1)) > 0 else 0.0
        voters = cl.voters if args.to in cl.voters else sorted(set(cl.voters) | {args.to})
        config = json.dumps({"voters": voters, "quorum": cl.quorum, "leader": args.to})
        ops = [E.op_put(c.prefix + "ctl/leader", json.dumps(dict(info, wait=wait)),
                        int(st["lease"])),
               E.op_put(c.prefix + "ctl/config", config)]
        cmp = [E.cmp_lease(c.prefix + "status/" + args.to, int(st["lease"]))]
        if cl.leader is not None:
            cmp.append(E.cmp_mod(c.prefix + "ctl/leader", cl.leader.epoch))
        else:
            cmp.append(E.cmp_create(c.prefix + "ctl/leader", 0))
        ok, _, rev = c.client.txn(cmp, ops)
        if not ok:
            print(f"{prog}: error: the cluster changed meanwhile; try again",
                  file=sys.stderr)
            return 1
        done, err = _wait_leader(c, args.to, None, args.timeout, request=False)
    except CoordinationError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if err is not None:
        print(f"{prog}: error: {args.to} took the key at epoch {rev} but {err}",
              file=sys.stderr)
        return 1
    print(f"forced failover to {args.to}: epoch {rev}"
          + (f"; it takes syncs in {wait:g}s, when the old leader's lease has run out"
             if wait else ""))
    return 0

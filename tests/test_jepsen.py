"""A checker in the spirit of Jepsen for tha's replication (issue 8).

Real processes (tests/helpers/jepsen_node.py, THA_JEPSEN_NODES of them,
default 3) on 127.0.0.1 with a shared secret: one active, the others
standbys. Every connection between two nodes goes through a proxy the test
controls (tests/helpers/linkproxy.py, one per directed link). The test is
the client: a workload thread sends writes to the node it believes is the
active (each write adds record `op`, op numbers are unique) and records
every write whose ``sync(ack="applied")`` returned, with its epoch and
seq, whenever that answer arrives. Meanwhile the test injects random
faults for a bounded time: kill -9 of the active or a standby, SIGSTOP of
the active past the heir's promote_after then SIGCONT, cut links, isolated
nodes and flaky links, explicit promotions, rejoins (a killed node comes
back as a fresh standby; a fenced active becomes a standby keeping its
heap, so the new active resumes it or bulk syncs it) and intruders (a
process with the wrong secret and a made-up epoch, as an active or as an
imposter at a standby's address).

After each event the workload pauses, the cluster settles (one active;
every other live node an in-sync standby or fenced, twice in a row) and
the checker asserts:

* the active's state holds every write ever acknowledged "applied";
* every standby that reports itself in sync (streaming, same epoch,
  applied seq == the active's seq) has a dump equal to the active's;
* no active is fenced by an epoch no member ever had (only a member's
  promotion may fence);
* an ack from an old active after a newer epoch exists is flagged, and a
  violation if its write is not in the new active's state (the first
  check covers it);
* and the cluster settles at all within a generous bound.

Knobs (environment): THA_JEPSEN_SECONDS (40), THA_JEPSEN_SEED (printed;
fixes the schedule of faults: kinds, targets by role, durations),
THA_JEPSEN_NODES (3), THA_JEPSEN_QUORUM ("all", or a number of standbys),
THA_JEPSEN_TOUCH=1 (heap.touch() after each write; by default writes are
plain cdata writes found by tracking, promoted heaps included),
THA_JEPSEN_KINDS (comma list of event kinds to draw from),
THA_JEPSEN_CLOSE_FENCED=1 (a node closes its promoted Standby once its
Active is fenced: an application-side workaround, to explore further).
"""

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, "tests", "helpers")
sys.path.insert(0, HELPERS)
from linkproxy import LinkProxy  # noqa: E402

NODE = os.path.join(HELPERS, "jepsen_node.py")
SECONDS = float(os.environ.get("THA_JEPSEN_SECONDS", "40"))
SEED = int(os.environ.get("THA_JEPSEN_SEED", "8"))
NODES = int(os.environ.get("THA_JEPSEN_NODES", "3"))
QUORUM = os.environ.get("THA_JEPSEN_QUORUM", "all")
PLAIN = os.environ.get("THA_JEPSEN_TOUCH") != "1"
ALL_KINDS = ("kill", "stop", "cut", "promote", "rejoin", "intruder")
KINDS = tuple(k for k in os.environ.get("THA_JEPSEN_KINDS", ",".join(ALL_KINDS)).split(",")
              if k)
SECRET = "jepsen-secret"
HEIR_AFTER = 1.5        # the heir's promote_after (s)
SYNC_TIMEOUT = 1.0      # each write's sync(ack="applied", timeout=)
PEER_TIMEOUT = 1.0      # heartbeat silence before a link is dropped
REPLY_WAIT = SYNC_TIMEOUT + 2.0  # the workload waits this long for an answer
RECOVER_AFTER = 8.0     # not settled after this long: a violation; then recover
SETTLE_BOUND = 16.0     # not settled after this long even so: give up this check


class NodeProc:
    """One node process: JSON lines on stdin/stdout, stderr to a file."""

    def __init__(self, cluster, name):
        self.cluster, self.name = cluster, name
        self.p = None
        self.incarnation = 0
        self.gen = 0          # Standby generations (each `listening` event)
        self.port = None
        self.stopped = False
        self.dead = True
        self.last = {}        # the last status seen
        self._ids = iter(range(1, 1 << 62))
        self._pending = {}
        self._lock = threading.Lock()
        self._started = threading.Event()

    # -- process ---------------------------------------------------------

    def start(self, init=False):
        self.incarnation += 1
        c = self.cluster
        peers = ",".join("%s:%d" % c.proxies[(self.name, o.name)].address
                         for o in c.nodes if o is not self)
        args = [sys.executable, NODE, "--name", self.name, "--secret", SECRET,
                "--peers", peers, "--sync-timeout", str(SYNC_TIMEOUT),
                "--peer-timeout", str(PEER_TIMEOUT)]
        if QUORUM != "all":
            args += ["--quorum", QUORUM]
        if PLAIN:
            args.append("--plain")
        if init:
            args.append("--init")
        err = open(c.tmp / f"{self.name}.{self.incarnation}.err", "wb")
        self._started.clear()
        self.p = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        err.close()
        self.dead, self.stopped, self.last = False, False, {}
        threading.Thread(target=self._read, args=(self.p, self.incarnation),
                         daemon=True).start()
        if not self._started.wait(30):
            raise AssertionError(f"{self.name} did not start: {self.stderr()}")

    def stderr(self):
        try:
            return (self.cluster.tmp / f"{self.name}.{self.incarnation}.err").read_text(
                errors="replace")[-3000:]
        except OSError:
            return ""

    def _read(self, p, inc):
        for line in p.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "ev" in msg:
                self.cluster.on_node_event(self, inc, msg)
                self._started.set()
                continue
            with self._lock:
                ent = self._pending.pop(msg.get("id"), None)
            if ent is not None:
                ent[1].append(msg)
                if ent[2] is not None:
                    ent[2](self, inc, msg)
                ent[0].set()
        with self._lock:  # EOF: nothing more will answer
            pending, self._pending = self._pending, {}
        for ev, _slot, _cb in pending.values():
            ev.set()

    def send(self, cmd, callback=None, **kw):
        """Sends a command; returns (event, slot) to wait on."""
        ev, slot = threading.Event(), []
        with self._lock:
            if self.dead or self.p is None or self.p.poll() is not None:
                ev.set()
                return ev, slot
            rid = next(self._ids)
            self._pending[rid] = (ev, slot, callback)
            try:
                self.p.stdin.write(json.dumps({"id": rid, "cmd": cmd, **kw}) + "\n")
                self.p.stdin.flush()
            except (OSError, ValueError):
                self._pending.pop(rid, None)
                ev.set()
        return ev, slot

    def request(self, cmd, timeout=5.0, **kw):
        ev, slot = self.send(cmd, **kw)
        ev.wait(timeout)
        return slot[0] if slot else None

    def signal(self, sig):
        if self.p is not None and self.p.poll() is None:
            self.p.send_signal(sig)

    def kill(self):
        with self._lock:
            self.dead = True
        if self.p is not None:
            if self.p.poll() is None:
                self.p.send_signal(signal.SIGCONT)
                self.p.kill()
            self.p.wait(10)
        self.stopped = False

    def close(self):
        self.kill()
        if self.p is not None:
            for f in (self.p.stdin, self.p.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    @property
    def up(self):
        """Alive and running (not killed, not stopped)."""
        return not self.dead and not self.stopped and self.p.poll() is None


class Cluster:
    def __init__(self, tmp, seed):
        self.tmp = tmp
        self.seed = seed
        self.rng = random.Random(seed)          # the schedule of faults
        self.t0 = time.monotonic()
        self.history = []
        self.violations = []
        self.checks = 0
        self.events = collections.Counter()
        self.results = collections.Counter()    # write answers by result
        self.acks = {}                          # op -> how it was acked
        self.stale_acks = 0
        self.events_ticks = 0
        self.lost_reported = set()
        self.diverged_reported = set()
        self.max_epoch = 0
        self.rogues = []
        self.nodes = [NodeProc(self, f"n{i}") for i in range(NODES)]
        self.proxies = {}
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    self.proxies[(a.name, b.name)] = LinkProxy(
                        f"{a.name}->{b.name}", random.Random(self.rng.random()))
        self.lock = threading.Lock()
        # workload
        self.stop_workload = threading.Event()
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.active_guess = None
        self.next_op = 0
        self.workload = None

    # -- bookkeeping -------------------------------------------------------

    def log(self, text):
        line = f"{time.monotonic() - self.t0:7.2f}s {text}"
        with self.lock:
            self.history.append(line)

    def violation(self, text):
        self.log("VIOLATION " + text)
        with self.lock:
            self.violations.append(f"{time.monotonic() - self.t0:.2f}s {text}")

    def on_node_event(self, node, inc, msg):
        if inc != node.incarnation:
            return
        if msg["ev"] == "listening":
            node.port = msg["port"]
            node.gen += 1
            for o in self.nodes:
                if o is not node:
                    self.proxies[(o.name, node.name)].set_upstream(("127.0.0.1", node.port))
        elif msg["ev"] == "active":
            self.log(f"{node.name} is an active now: epoch {msg['epoch']} at seq {msg['seq']}")
            self.max_epoch = max(self.max_epoch, msg["epoch"])

    def on_write_reply(self, node, inc, msg):
        res = msg.get("result")
        self.results[res] += 1
        if res != "acked":
            return
        info = {"node": node.name, "inc": inc, "epoch": msg["epoch"], "seq": msg["seq"],
                "t": round(time.monotonic() - self.t0, 2),
                "stale": msg["epoch"] < self.max_epoch}
        if info["stale"]:
            self.stale_acks += 1
            self.log(f"stale ack: op {msg['op']} acked by {node.name} at epoch "
                     f"{msg['epoch']} seq {msg['seq']} while epoch {self.max_epoch} exists")
        with self.lock:
            self.acks[msg["op"]] = info

    def statuses(self, ops=False):
        """{name: status} of every node that is up and answers."""
        sent = [(n, n.send("state" if ops else "status")) for n in self.nodes if n.up]
        out = {}
        for n, (ev, slot) in sent:
            ev.wait(5)
            if slot and "role" in slot[0]:
                n.last = slot[0]
                out[n.name] = slot[0]
                self.max_epoch = max(self.max_epoch, slot[0]["epoch"])
        for name, st in out.items():
            fe = st.get("fenced_epoch")
            if fe is not None and fe > self.max_epoch:
                key = ("foreign-fence", name, fe)
                if key not in self.diverged_reported:
                    self.diverged_reported.add(key)
                    self.violation(f"{name} (active at epoch {st['epoch']}) was fenced by "
                                   f"epoch {fe}, which no member ever had (members reached "
                                   f"{self.max_epoch}): an unauthenticated peer fenced it")
        return out

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    # -- workload ------------------------------------------------------------

    def find_active(self):
        sts = self.statuses()
        act = [s for s in sts.values() if s["role"] == "active"]
        if not act:
            return None
        return self.node(max(act, key=lambda s: s["epoch"])["name"])

    def _workload(self):
        timeouts = 0
        while not self.stop_workload.is_set():
            if self.paused.is_set():
                self.idle.set()
                time.sleep(0.01)
                continue
            self.idle.clear()
            target = self.active_guess
            if target is None or target.dead:
                self.active_guess = self.find_active()
                if self.active_guess is None:
                    time.sleep(0.1)
                continue
            self.next_op += 1
            op = self.next_op
            ev, slot = target.send("write", callback=self.on_write_reply, op=op)
            ev.wait(REPLY_WAIT)
            res = slot[0].get("result") if slot else None
            if res in (None, "notactive", "fenced", "error"):
                self.active_guess = None
            elif res == "timeout":
                timeouts += 1
                if timeouts >= 3:
                    timeouts = 0
                    self.active_guess = None
            else:
                timeouts = 0
            time.sleep(0.004)

    def start_workload(self):
        self.workload = threading.Thread(target=self._workload, daemon=True)
        self.workload.start()

    def pause(self):
        self.idle.clear()
        self.paused.set()
        if not self.idle.wait(REPLY_WAIT + 10):
            self.violation("the workload did not pause")

    def resume(self):
        self.paused.clear()

    # -- settling and checking -------------------------------------------

    @staticmethod
    def in_sync(s, cur):
        # not the epoch: a standby resumed by a new active takes its epoch
        # with the first frame of that epoch it applies
        return (s["role"] == "standby" and bool(s.get("streaming"))
                and s.get("applied_seq") == cur["seq"] and s["seq"] == cur["seq"])

    def settle(self, why):
        """Waits for one active and every other up node in sync or fenced
        (the same picture twice in a row); returns (active status, all)."""
        start = time.monotonic()
        recovered = False
        prev = None
        lagging_since = None
        while True:
            sts = self.statuses()
            actives = [s for s in sts.values() if s["role"] == "active"]
            cur = max(actives, key=lambda s: (s["epoch"], s["seq"])) if actives else None
            ok = False
            if cur is not None:
                ok = all(s is cur or s["role"] == "fenced" or self.in_sync(s, cur)
                         for s in sts.values())
                sig = tuple(sorted((s["name"], s["role"], s["epoch"], s["seq"],
                                    s.get("applied_seq"), s["digest"]) for s in sts.values()))
                if ok and sig == prev:
                    self.active_guess = self.node(cur["name"])
                    return cur, sts
                prev = sig if ok else None
                # A bulk sync goes live only with a frame encoded after it
                # (docs/protocol.md): the paused workload sends none, so an
                # active with a standby behind is nudged with an empty sync.
                if ok:
                    lagging_since = None
                elif lagging_since is None:
                    lagging_since = time.monotonic()
                elif time.monotonic() - lagging_since > 1.0:
                    lagging_since = None
                    ans = self.node(cur["name"]).request("tick")
                    self.events_ticks += 1
                    self.log(f"tick: empty sync on {cur['name']} (a standby is behind): {ans}")
            elapsed = time.monotonic() - start
            if not recovered and elapsed > RECOVER_AFTER:
                # A violation (liveness); then recover so the run goes on:
                # fenced nodes rejoin as standbys, and without an active the
                # most advanced standby is promoted.
                recovered = True
                self.violation(f"{'no active' if cur is None else 'not settled'} "
                               f"{RECOVER_AFTER:.0f}s after {why}: {self.describe(sts)}")
                for s in sts.values():
                    if s["role"] == "fenced":
                        ans = self.node(s["name"]).request("demote", timeout=15)
                        self.events["rejoin"] += 1
                        self.log(f"recovery: rejoin {s['name']} (fenced at epoch "
                                 f"{s['epoch']} by epoch {s.get('fenced_epoch')}): {ans}")
                if cur is None:
                    sts = self.statuses()
                    cands = [s for s in sts.values() if s["role"] == "standby" and s["digest"]]
                    if cands:
                        best = max(cands, key=lambda s: (s["epoch"], s["seq"]))
                        self.events["promote"] += 1
                        ans = self.node(best["name"]).request("promote")
                        self.log(f"recovery: promote {best['name']} (epoch {best['epoch']} "
                                 f"seq {best['seq']}): {ans}")
                prev = None
                continue
            if elapsed > SETTLE_BOUND:
                what = "no active" if cur is None else "not settled"
                self.violation(f"{what} {SETTLE_BOUND:.0f}s after {why}, even after "
                               f"recovery: {self.describe(sts)}")
                return None, sts
            time.sleep(0.2)

    @staticmethod
    def describe(sts):
        return "; ".join(
            f"{s['name']}: {s['role']} epoch {s['epoch']} seq {s['seq']}"
            + (f" applied {s['applied_seq']} links {s.get('links')}" if "applied_seq" in s else "")
            + (f" fenced by epoch {s['fenced_epoch']}" if s.get("fenced_epoch") is not None else "")
            + (f" standbys {[(p['state'], p['acked_applied']) for p in s['peers']]}"
               if "peers" in s else "")
            for s in sts.values())

    def check(self, why):
        self.pause()
        try:
            cur, sts = self.settle(why)
            if cur is None:
                return
            self.checks += 1
            active = self.node(cur["name"])
            st = active.request("state", timeout=10)
            if st is None or st.get("seq") != cur["seq"]:
                self.log(f"check skipped: {cur['name']} moved or did not answer")
                return
            ops = set(st["ops"])
            with self.lock:
                acked = dict(self.acks)
            lost = sorted(op for op in acked if op not in ops and op not in self.lost_reported)
            if lost:
                self.lost_reported.update(lost)
                ex = "; ".join(f"op {op} acked by {a['node']}#{a['inc']} epoch {a['epoch']} "
                               f"seq {a['seq']} at {a['t']}s{' (stale ack)' if a['stale'] else ''}"
                               for op, a in ((op, acked[op]) for op in lost[:5]))
                self.violation(f"after {why}: {len(lost)} acknowledged writes missing from the "
                               f"active {cur['name']} (epoch {cur['epoch']}, seq {cur['seq']}, "
                               f"{len(ops)} records): {ex}")
            for s in sts.values():
                if s is cur or not self.in_sync(s, cur) or s["digest"] == cur["digest"]:
                    continue
                node = self.node(s["name"])
                key = (s["name"], node.incarnation, node.gen, s.get("bulk_syncs"))
                if key in self.diverged_reported:
                    continue
                again = node.request("state", timeout=10)
                if again is None or again["seq"] != cur["seq"] or \
                        again["digest"] == cur["digest"]:
                    continue
                self.diverged_reported.add(key)
                theirs = set(again["ops"])
                lacks, extra = sorted(ops - theirs), sorted(theirs - ops)
                self.violation(
                    f"after {why}: {s['name']} reports itself in sync with {cur['name']} "
                    f"(streaming, epoch {cur['epoch']}, applied seq {cur['seq']}) but its "
                    f"dump differs ({again['digest']} vs {cur['digest']}): it lacks "
                    f"{len(lacks)} records the active has {lacks[:8]}, has {len(extra)} "
                    f"the active lacks {extra[:8]}; bulk syncs by this standby: "
                    f"{s.get('bulk_syncs')}")
            self.log(f"check {self.checks} after {why}: active {cur['name']} epoch "
                     f"{cur['epoch']} seq {cur['seq']}, {len(ops)} records, "
                     f"{len(acked)} acked so far; " + ", ".join(
                         f"{s['name']}={s['role']}" for s in sts.values() if s is not cur))
            self.choose_heir(cur, sts)
        finally:
            self.resume()

    def choose_heir(self, cur, sts):
        ins = sorted(s["name"] for s in sts.values() if self.in_sync(s, cur))
        heir = self.rng.choice(ins) if ins else None
        for n in self.nodes:
            if n.up and n.name != cur["name"]:
                n.request("heir", after=HEIR_AFTER if n.name == heir else None)
        self.heir = heir

    def no_heirs(self):
        for n in self.nodes:
            if n.up:
                n.request("heir", after=None)
        self.heir = None

    # -- faults ---------------------------------------------------------------

    def down(self):
        return [n for n in self.nodes if n.dead or n.last.get("role") == "fenced"]

    def pick_event(self, cur_name):
        rng = self.rng
        down = self.down()
        max_down = (NODES - 1) // 2
        standbys = [n for n in self.nodes if n.up and n.name != cur_name
                    and n.last.get("role") == "standby"]
        weights = {"kill": 2.0, "stop": 2.0, "cut": 3.0, "promote": 1.5,
                   "rejoin": 4.0 if down else 0.0, "intruder": 1.0}
        if len(down) >= max_down:
            weights["kill"] = weights["stop"] = 0.0
        if not standbys:
            weights["promote"] = 0.0
        kinds = [k for k in KINDS if weights.get(k, 0) > 0]
        if not kinds:
            return None
        return rng.choices(kinds, [weights[k] for k in kinds])[0]

    def run_event(self, kind, cur_name):
        rng = self.rng
        cur = self.node(cur_name)
        others = [n for n in self.nodes if n.up and n is not cur]
        self.events[kind] += 1
        if kind == "kill":
            victim = cur if (self.heir and rng.random() < 0.5) or not others else rng.choice(others)
            role = "active" if victim is cur else "standby"
            self.log(f"EVENT kill -9 {victim.name} ({role}, pid {victim.p.pid})")
            victim.kill()
            return f"kill -9 of {victim.name} ({role})"
        if kind == "stop":
            pause = HEIR_AFTER + rng.uniform(0.5, 1.5)
            self.log(f"EVENT SIGSTOP {cur.name} (active) for {pause:.2f}s; heir {self.heir}")
            cur.stopped = True
            cur.signal(signal.SIGSTOP)
            time.sleep(pause)
            cur.signal(signal.SIGCONT)
            cur.stopped = False
            self.log(f"SIGCONT {cur.name}")
            return f"SIGSTOP/SIGCONT of {cur.name} (active)"
        if kind == "cut":
            mode = rng.choice(("isolate", "isolate", "link", "flaky"))
            victim = cur if rng.random() < 0.6 or not others else rng.choice(others)
            hold = rng.uniform(0.5, 3.0)
            if mode == "isolate":
                links = [p for (a, b), p in self.proxies.items() if victim.name in (a, b)]
                what = f"isolate {victim.name} for {hold:.2f}s"
            elif mode == "link":
                b = rng.choice([n for n in self.nodes if n is not victim])
                a, b = (victim, b) if rng.random() < 0.5 else (b, victim)
                links = [self.proxies[(a.name, b.name)]]
                what = f"cut link {a.name}->{b.name} for {hold:.2f}s"
            else:
                links = [p for (a, b), p in self.proxies.items() if victim.name in (a, b)]
                what = f"flaky links of {victim.name} (cut after random bytes) for {hold:.2f}s"
            self.log(f"EVENT {what}")
            for p in links:
                p.flaky(200_000) if mode == "flaky" else p.cut()
            time.sleep(hold)
            for p in links:
                p.heal()
            self.log("links healed")
            return what
        if kind == "promote":
            self.no_heirs()
            cands = [n for n in others if n.last.get("role") == "standby"]
            who = rng.choice(cands)
            ans = who.request("promote", timeout=10)
            self.log(f"EVENT promote {who.name} (was {who.last.get('role')} epoch "
                     f"{who.last.get('epoch')} seq {who.last.get('seq')}): {ans}")
            return f"promotion of {who.name}"
        if kind == "rejoin":
            who = rng.choice(self.down())
            if who.dead:
                self.log(f"EVENT rejoin {who.name}: restarted as a fresh standby")
                who.start()
            else:
                ans = who.request("demote", timeout=15)
                self.log(f"EVENT rejoin {who.name}: fenced active demoted to standby "
                         f"keeping its heap: {ans}")
            return f"rejoin of {who.name}"
        if kind == "intruder":
            return self.intruder(cur, others)
        raise AssertionError(kind)

    def spawn_rogue(self, *args):
        err = open(self.tmp / f"rogue{len(self.rogues)}.err", "wb")
        p = subprocess.Popen([sys.executable, NODE, "--secret", "not-the-secret", *args],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True)
        err.close()
        self.rogues.append(p)
        return p, json.loads(p.stdout.readline() or "{}")

    def intruder(self, cur, others):
        rng = self.rng
        if rng.random() < 0.5 and others:
            target = rng.choice(others)
            self.log(f"EVENT intruder: a rogue active (wrong secret, epoch 1000) connects "
                     f"to {target.name}'s port {target.port}")
            p, _ = self.spawn_rogue("--rogue-active", f"127.0.0.1:{target.port}",
                                    "--rogue-seconds", "1.5")
            p.wait(20)
            return f"rogue active against {target.name}"
        target = rng.choice(others) if others else None
        if target is None:
            return "no intruder (no standby)"
        link = self.proxies[(cur.name, target.name)]
        p, ev = self.spawn_rogue("--rogue-standby")
        self.log(f"EVENT intruder: an imposter standby (wrong secret, epoch 1000) sits "
                 f"behind link {cur.name}->{target.name} for 1.5s")
        link.set_upstream(("127.0.0.1", ev["port"]))
        time.sleep(1.5)
        link.set_upstream(("127.0.0.1", target.port))
        p.kill()
        p.wait(10)
        return f"imposter standby behind {cur.name}->{target.name}"

    # -- the run ---------------------------------------------------------------

    def run(self, seconds):
        for n in self.nodes[1:]:
            n.start()
        self.nodes[0].start(init=True)
        self.log(f"started {NODES} nodes, {self.nodes[0].name} active; seed {self.seed}")
        self.heir = None
        self.start_workload()
        time.sleep(0.5)
        self.check("start")
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(self.violations) < 20:
            time.sleep(self.rng.uniform(0.3, 1.0))  # the workload runs
            cur = self.active_guess or self.find_active()
            if cur is None:
                self.check("no active known")
                continue
            kind = self.pick_event(cur.name)
            if kind is None:
                continue
            what = self.run_event(kind, cur.name)
            self.check(what)
        # the end: everything back, one last check
        self.log("end of faults: healing, rejoining everyone")
        self.pause()
        for p in self.proxies.values():
            p.heal()
        for n in self.nodes:
            if n.dead:
                n.start()
                self.events["rejoin"] += 1
                self.log(f"rejoin {n.name}: restarted as a fresh standby (final)")
            elif n.up and n.last.get("role") == "fenced":
                n.request("demote", timeout=15)
                self.events["rejoin"] += 1
                self.log(f"rejoin {n.name}: fenced active demoted to standby (final)")
        self.resume()
        time.sleep(0.5)
        self.check("the final heal")
        self.stop_workload.set()
        self.workload.join(REPLY_WAIT + 5)

    def close(self):
        self.stop_workload.set()
        for p in self.rogues:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for f in (p.stdin, p.stdout):
                f.close()
        for n in self.nodes:
            n.close()
        for p in self.proxies.values():
            p.close()
        if self.workload is not None:
            self.workload.join(REPLY_WAIT + 5)

    def summary(self):
        ev = ", ".join(f"{k} {self.events[k]}" for k in ALL_KINDS if self.events[k])
        return (f"jepsen: seed {self.seed}, {sum(self.events.values())} events ({ev}), "
                f"{len(self.acks)} acked syncs ({self.next_op} writes sent; answers "
                f"{dict(self.results)}; {self.stale_acks} stale acks), {self.checks} "
                f"checks, {len(self.violations)} violations")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, SEED)
    yield c
    c.close()


def test_jepsen(cluster):
    print(f"\njepsen: seed {SEED} (THA_JEPSEN_SEED={SEED} THA_JEPSEN_SECONDS={SECONDS:g} "
          f"THA_JEPSEN_NODES={NODES} THA_JEPSEN_QUORUM={QUORUM}"
          f"{'' if PLAIN else ' THA_JEPSEN_TOUCH=1'} to reproduce)")
    try:
        cluster.run(SECONDS)
    finally:
        summary = cluster.summary()
        print(summary)
        print("\n".join(cluster.history[-60:]))
    if cluster.violations:
        pytest.fail(
            f"{summary}\n\nviolations:\n" + "\n".join(cluster.violations)
            + "\n\nevent history:\n" + "\n".join(cluster.history)
            + f"\n\nnode logs: {cluster.tmp}", pytrace=False)

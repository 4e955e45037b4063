"""``python -m tha soak``: a cluster of real processes under random faults,
checked after every event (issue 9). tests/test_jepsen.py runs the same
checker (issue 8).

Real processes (``python -m tha.soak.node``, ``nodes`` of them, default 3)
on 127.0.0.1 with a generated shared secret (a file in a temp dir): one
active, the others standbys. Every connection between two nodes goes
through a proxy this process controls (tha/soak/linkproxy.py, one per directed
link). This process is the client: a workload thread sends writes to the
node it believes is the active (each write adds record ``op``, op numbers
are unique, and makes random allocations, frees, pointer rewires and plain
cdata writes in a pool of arrays; see tha/soak/node.py) and records every
write whose ``sync(ack="applied")`` returned, with its epoch and seq,
whenever that answer arrives. Meanwhile it injects random faults: kill -9
of the active or a standby, SIGSTOP of the active past the heir's
promote_after then SIGCONT, cut links, isolated nodes, flaky links (cut
after random bytes), stalled links (bytes held past the peer timeout) and
corrupted links (bits flipped in flight), explicit promotions, rejoins (a
killed node comes back as a fresh standby; a fenced active becomes a
standby keeping its heap, so the new active resumes it or bulk syncs it)
and intruders (a process with the wrong secret and a made-up epoch, as an
active or as an imposter at a standby's address).

After each event the workload pauses, the cluster settles (one active;
every other live node an in-sync standby or fenced, twice in a row) and
the checker asserts:

* the active's state holds every write ever acknowledged "applied";
* every standby that reports itself in sync (streaming, same epoch,
  applied seq == the active's seq) has a dump equal to the active's;
* every live node's state is one the writes could have made: the
  allocator's invariants (``heap.check()``), records newest first, each
  changed exactly by the write that replaced it, pool pointers to live
  arrays, byte sums intact, and no op that was never sent;
* no active is fenced by an epoch no member ever had (only a member's
  promotion may fence);
* an ack from an old active after a newer epoch exists is flagged, and a
  violation if its write is not in the new active's state (the first
  check covers it);
* and the cluster settles at all within a generous bound.

Everything it starts (processes, proxies, the temp dir with the secret and
the nodes' logs) is cleaned up when it ends, also on SIGINT/SIGTERM.
"""

from __future__ import annotations

import collections
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .linkproxy import LinkProxy

ALL_KINDS = ("kill", "stop", "cut", "promote", "rejoin", "intruder")
HEIR_AFTER = 1.5        # the heir's promote_after (s)
SYNC_TIMEOUT = 1.0      # each write's sync(ack="applied", timeout=)
PEER_TIMEOUT = 1.0      # heartbeat silence before a link is dropped
REPLY_WAIT = SYNC_TIMEOUT + 2.0  # the workload waits this long for an answer
RECOVER_AFTER = 8.0     # not settled after this long: a violation; then recover
SETTLE_BOUND = 16.0     # not settled after this long even so: give up this check
ROOT = str(Path(__file__).resolve().parents[2])  # holds tha/


@dataclass
class Config:
    seconds: float = 60.0
    seed: int = 8
    nodes: int = 3
    quorum: str = "all"            # or a number of standbys
    touch: bool = False            # heap.touch() after writes (default: plain writes)
    kinds: tuple = ALL_KINDS
    cut_modes: tuple = ("isolate", "isolate", "link", "flaky", "stall", "corrupt")
    close_fenced: bool = False     # THA_JEPSEN_CLOSE_FENCED in the nodes
    max_violations: int = 20
    extra_env: dict = field(default_factory=dict)



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
        args = [sys.executable, "-m", "tha.soak.node", "--name", self.name,
                "--secret-file", str(c.secret_file),
                "--peers", peers, "--sync-timeout", str(SYNC_TIMEOUT),
                "--peer-timeout", str(PEER_TIMEOUT)]
        if c.cfg.quorum != "all":
            args += ["--quorum", str(c.cfg.quorum)]
        if c.cfg.touch:
            args.append("--touch")
        if init:
            args.append("--init")
        err = open(c.tmp / f"{self.name}.{self.incarnation}.err", "wb")
        self._started.clear()
        self.p = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True,
                                  env=c.node_env())
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
    def __init__(self, tmp, cfg: Config):
        self.tmp = Path(tmp)
        self.cfg = cfg
        self.seed = cfg.seed
        self.rng = random.Random(cfg.seed)      # the schedule of faults
        self.secret_file = self.tmp / "secret"
        fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        self.bytes = 0                          # frame bytes of acked syncs
        self.max_lag = 0                        # frames, the worst standby seen
        self.failovers = 0                      # actives of a new epoch
        self.flipped = 0                        # bits flipped by corrupting links
        self.problems_reported = set()
        self.cut_kinds = collections.Counter()
        self.error_whys = set()
        self.sampler = None
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
        self.nodes = [NodeProc(self, f"n{i}") for i in range(cfg.nodes)]
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

    def node_env(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.cfg.extra_env)
        if self.cfg.close_fenced:
            env["THA_JEPSEN_CLOSE_FENCED"] = "1"
        # the nodes import this very package, wherever it was run from
        env["PYTHONPATH"] = os.pathsep.join(
            [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return env

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
            if msg["epoch"] > 0:
                self.failovers += 1
            self.max_epoch = max(self.max_epoch, msg["epoch"])

    def on_write_reply(self, node, inc, msg):
        res = msg.get("result")
        self.results[res] += 1
        if res == "error":
            why = msg.get("why", "")
            if why not in self.error_whys:
                self.error_whys.add(why)
                self.log(f"write {msg.get('op')} on {node.name}: error {why}")
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
            self.bytes += msg.get("bytes", 0)

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
                self.note_lag(slot[0])
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

    def note_lag(self, st):
        for p in st.get("peers") or ():
            lag = p.get("lag") or 0
            if lag > self.max_lag and p.get("state") in ("streaming", "catching-up"):
                self.max_lag = lag

    def _sampler(self):
        """How far the standbys lag behind the active (frames not acked
        applied), four times a second while the workload runs."""
        while not self.stop_workload.wait(0.25):
            n = self.active_guess
            if n is not None and n.up:
                ans = n.request("lag", timeout=2)
                if ans:
                    self.note_lag(ans)

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
        self.sampler = threading.Thread(target=self._sampler, daemon=True)
        self.sampler.start()

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
            self.audit(why, st)
            for s in sts.values():
                if s is not cur:
                    full = self.node(s["name"]).request("state", timeout=10)
                    if full is not None and "role" in full:
                        self.audit(why, full)
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

    def audit(self, why, st):
        """A node's state must be one the writes could have made."""
        problems = list(st.get("problems") or ())
        ops = st.get("ops") or []
        sent = self.next_op
        never = [op for op in ops if op > sent or op <= 0]
        if never:
            problems.append(f"holds {len(never)} records of ops never sent "
                            f"(at most {sent} were): {never[:5]}")
        if len(set(ops)) != len(ops):
            problems.append("holds a record twice")
        if not problems:
            return
        node = self.node(st["name"])
        key = ("problems", st["name"], node.incarnation, st["seq"])
        if key in self.problems_reported:
            return
        self.problems_reported.add(key)
        self.violation(f"after {why}: {st['name']} ({st['role']}, epoch {st['epoch']}, "
                       f"seq {st['seq']}) holds a state no sequence of writes made: "
                       + "; ".join(problems[:6]))

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
        max_down = (self.cfg.nodes - 1) // 2
        standbys = [n for n in self.nodes if n.up and n.name != cur_name
                    and n.last.get("role") == "standby"]
        weights = {"kill": 2.0, "stop": 2.0, "cut": 3.0, "promote": 1.5,
                   "rejoin": 4.0 if down else 0.0, "intruder": 1.0}
        if len(down) >= max_down:
            weights["kill"] = weights["stop"] = 0.0
        if not standbys:
            weights["promote"] = 0.0
        kinds = [k for k in self.cfg.kinds if weights.get(k, 0) > 0]
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
            mode = rng.choice(self.cfg.cut_modes)
            victim = cur if rng.random() < 0.6 or not others else rng.choice(others)
            hold = rng.uniform(0.5, 3.0)
            mine = [p for (a, b), p in self.proxies.items() if victim.name in (a, b)]
            if mode == "isolate":
                links = mine
                what = f"isolate {victim.name} for {hold:.2f}s"
            elif mode == "link":
                b = rng.choice([n for n in self.nodes if n is not victim])
                a, b = (victim, b) if rng.random() < 0.5 else (b, victim)
                links = [self.proxies[(a.name, b.name)]]
                what = f"cut link {a.name}->{b.name} for {hold:.2f}s"
            elif mode == "flaky":
                links = mine
                what = f"flaky links of {victim.name} (cut after random bytes) for {hold:.2f}s"
            elif mode == "stall":
                hold = PEER_TIMEOUT + rng.uniform(0.2, 1.5)
                links = mine
                what = (f"stall the links of {victim.name} (bytes held, connections "
                        f"open) for {hold:.2f}s")
            elif mode == "corrupt":
                links = mine
                rate = rng.choice((0.02, 0.1, 0.5))
                what = (f"corrupt the links of {victim.name} (a bit flipped in "
                        f"{rate:.0%} of the chunks in flight) for {hold:.2f}s")
            else:
                raise AssertionError(mode)
            self.log(f"EVENT {what}")
            flipped0 = sum(p.flipped for p in links)
            for p in links:
                if mode == "flaky":
                    p.flaky(200_000)
                elif mode == "stall":
                    p.stall()
                elif mode == "corrupt":
                    p.corrupt(rate)
                else:
                    p.cut()
            time.sleep(hold)
            for p in links:
                p.heal()
            if mode == "corrupt":
                n = sum(p.flipped for p in links) - flipped0
                self.flipped += n
                what += f": {n} bits flipped"
            self.cut_kinds[mode] += 1
            self.log(f"links healed ({what})" if mode == "corrupt" else "links healed")
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
        p = subprocess.Popen([sys.executable, "-m", "tha.soak.node",
                              "--secret", "not-the-secret", *args],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True, env=self.node_env())
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
        self.log(f"started {self.cfg.nodes} nodes, {self.nodes[0].name} active; seed {self.seed}")
        self.heir = None
        self.start_workload()
        time.sleep(0.5)
        self.check("start")
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(self.violations) < self.cfg.max_violations:
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
        if self.sampler is not None:
            self.sampler.join(5)

    def summary(self, name="soak"):
        parts = []
        for k in ALL_KINDS:
            if self.events[k]:
                if k == "cut" and self.cut_kinds:
                    modes = ", ".join(f"{m} {c}" for m, c in sorted(self.cut_kinds.items()))
                    parts.append(f"cut {self.events[k]} [{modes}]")
                else:
                    parts.append(f"{k} {self.events[k]}")
        elapsed = time.monotonic() - self.t0
        return (f"{name}: seed {self.seed}, {elapsed:.0f}s, {self.cfg.nodes} nodes: "
                f"syncs {len(self.acks)} acked ({self.next_op} writes sent; answers "
                f"{dict(self.results)}; {self.stale_acks} stale acks), failovers "
                f"{self.failovers}, bytes {self.bytes}, max lag {self.max_lag} frames, "
                f"events {sum(self.events.values())} ({', '.join(parts)}; "
                f"{self.flipped} bits flipped), checks {self.checks}, "
                f"violations {len(self.violations)}")

    def report(self) -> str:
        """The violations and the whole event history."""
        return ("violations:\n" + "\n".join(self.violations)
                + "\n\nevent history:\n" + "\n".join(self.history))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def soak(cfg: Config, out=sys.stdout, keep: bool = False, progress: bool = True) -> int:
    """Runs one soak; prints the summary line (and, on a violation, the
    violations and the event history); 0 when no violation was found.
    Everything it started is stopped and removed before it returns."""
    tmp = tempfile.mkdtemp(prefix="tha-soak-")
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _raise_interrupt)
    cluster = None
    interrupted = None
    try:
        cluster = Cluster(tmp, cfg)
        if progress:
            print(f"soak: seed {cfg.seed}, {cfg.nodes} nodes, {cfg.seconds:g}s of faults "
                  f"(python -m tha soak --seed {cfg.seed} to repeat the schedule)",
                  file=out, flush=True)
        try:
            cluster.run(cfg.seconds)
        except KeyboardInterrupt as e:
            interrupted = e
            cluster.violation(f"interrupted ({e or 'SIGINT'}): the run is incomplete")
    finally:
        if cluster is not None:
            cluster.close()
        for sig, h in old.items():
            signal.signal(sig, h)
        if cluster is not None:
            print(cluster.summary(), file=out, flush=True)
            if cluster.violations:
                print(cluster.report(), file=out, flush=True)
                if keep:
                    print(f"node logs: {tmp}", file=out, flush=True)
        if not (keep and cluster is not None and cluster.violations):
            shutil.rmtree(tmp, ignore_errors=True)
    if interrupted is not None:
        return 130
    return 1 if cluster.violations else 0

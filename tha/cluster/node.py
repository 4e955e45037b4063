"""tha.Node: one member of a cluster. It runs a tha.Standby or a tha.Active
as its coordinator (tha/cluster/coord.py) says, and tells the application
with ``on_promote(heap)`` / ``on_demote()``.

One thread (the loop) makes every role change; the application's threads
call ``sync()``, which goes to the Active while this node leads and its
lease holds. The order of a promotion: the Standby is raised to the new
epoch (fencing the old active on its open connection) and closed, an
Active replicates the heap to every other member, then on_promote. Of a
demotion: the Active is closed (nothing more leaves), on_demote, then a
Standby on the same address with the same heap (the new leader resumes it
from its backlog or bulk syncs it, as the epoch history says).

A standby follows only the active whose epoch is the leader epoch it read
(``Standby(accept=...)``); with no leader it follows nobody (an election:
its applied seq is final while it votes).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import CoordinationError, Error, InvalidArgument, NotLeader, StateError
from ..heap import Heap
from ..replication import Active, Standby, SyncResult
from ..replication.connection import Address, parse_address
from .coord import Coordinator, EtcdCoordinator, Leader, majority
from .health import BUCKETS, HealthServer

log = logging.getLogger("tha.cluster")



def _where(addr) -> str:
    host, port = parse_address(addr, "member address")
    return f"{host}:{port}"


class Node:
    """A member of a cluster, led through ``coordinator`` (default: an
    :class:`~tha.cluster.coord.EtcdCoordinator` for ``etcd`` and
    ``cluster``, with ``ttl`` / ``loop_wait`` / ``retry_timeout``).

    ``name`` names it in the cluster; ``listen`` is the replication address
    its Standby listens on, which the leader connects to (port 0: one is
    picked at start and kept). ``create()`` makes the heap of a new
    cluster: only the node that bootstraps the cluster calls it (without
    it this node only joins). ``on_promote(heap)`` runs when this node
    becomes the leader (start the application's work on ``heap``; syncs
    are accepted from then on), ``on_demote()`` when it stops being the
    leader (stop writing the heap: it is a mirror again). Both run on the
    node's loop thread: keep them short. ``on_applied`` as for Standby.

    ``ack`` / ``timeout`` are sync()'s defaults. ``ack_quorum`` counts
    members, the leader included: a sync returns once that many hold it
    (default: a majority of the voting members). ``http`` ("HOST:PORT")
    serves the health endpoint (tha/cluster/health.py).
    """

    def __init__(self, name: str, listen: Address, *, etcd: str | None = None,
                 cluster: str | None = None, coordinator: Coordinator | None = None,
                 secret: bytes | None = None, create: Callable[[], Heap] | None = None,
                 on_promote: Callable[[Heap], None] | None = None,
                 on_demote: Callable[[], None] | None = None,
                 on_applied: Callable[[int, int, bool], None] | None = None,
                 ack: str = "applied", ack_quorum: int | None = None, timeout: float = 5.0,
                 ttl: int = 10, loop_wait: float = 1.0, retry_timeout: float | None = None,
                 http: str | None = None, heartbeat: float = 0.2, peer_timeout: float = 2.0,
                 backlog_bytes: int = 64 << 20, tracking: str = "auto",
                 functions: dict | None = None, externs: dict | None = None,
                 start: bool = True):
        if coordinator is None:
            if not etcd or not cluster:
                raise InvalidArgument("Node: give etcd= and cluster=, or a coordinator=")
            coordinator = EtcdCoordinator(etcd, cluster, name, ttl=ttl, loop_wait=loop_wait,
                                          retry_timeout=retry_timeout)
        if ack_quorum is not None and ack_quorum < 1:
            raise InvalidArgument(f"Node: ack_quorum counts members, the leader "
                                  f"included: at least 1, not {ack_quorum}")
        self.name = name
        self.coord = coordinator
        self.secret = secret
        self.create = create
        self.on_promote, self.on_demote, self.on_applied = on_promote, on_demote, on_applied
        self.ack, self.ack_quorum, self.sync_timeout = ack, ack_quorum, timeout
        self.heartbeat, self.peer_timeout = heartbeat, peer_timeout
        self.backlog_bytes, self.tracking, self.functions = backlog_bytes, tracking, functions
        self.externs = externs  # with functions: what a heapless standby binds
        self._listen = parse_address(listen, "Node: listen", any_port=True)
        self._mu = threading.RLock()      # role changes (the loop) vs. readers
        self._stopping = False
        self.role = "starting"
        self.epoch = None                 # the leader epoch this node leads in
        self.leader: Leader | None = None  # whom it follows (or itself)
        self.cluster = None               # the last Cluster read
        self.standby: Standby | None = None
        self.active: Active | None = None
        self._follow = None               # the epoch accepted ("any": pair mode)
        self._min_epoch = 0               # actives below it are fenced at HELLO:
                                          # every epoch before the newest leader's
        self._synced = False              # holds a state made in this process's life
        self._paused = None               # why sync() is refused (a switchover)
        self._paused_at = None
        self._accept_from = 0.0           # a forced failover: syncs from then on
        self._join = None                 # a member being made a voter
        self._last_error = None
        self._orphan = None               # a heap waiting for its Standby (re-listen)
        self.promotions = []              # (time.monotonic(), epoch) of each promotion
        self.demotions = []
        # metrics
        self.syncs = 0
        self.sync_failures = 0
        self.sync_bytes = 0
        self._hist = [0] * (len(BUCKETS) + 1)
        self._hist_sum = 0.0
        self._frames = collections.deque(maxlen=4096)  # (seq, bytes) of recent syncs
        self._start_standby(None)
        self.address = self._listen
        me = {"name": name, "addr": f"{self._listen[0]}:{self._listen[1]}"}
        self.http = None
        if http is not None:
            self.http = HealthServer(self, http)
            me["http"] = "%s:%d" % self.http.address
        self.coord.open(me)
        self.me = me
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"tha-node-{name}")
        if start:
            self._thread.start()

    # -- the application's side ---------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    @property
    def heap(self) -> Heap | None:
        act, sb = self.active, self.standby
        if act is not None:
            return act.heap
        return sb.heap if sb is not None else None

    @contextlib.contextmanager
    def leading(self) -> Iterator[Heap]:
        """``with node.leading() as heap:`` — the heap's lock, held, on the
        leader only (NotLeader otherwise, also during a switchover): write
        the heap and sync() inside it. A demotion waits for the block to
        end, and no block starts after it began, so the heap never takes a
        write once it is a mirror again."""
        act = self.active
        if act is None or self.role != "leader":
            self._not_leader()
        with act.heap._lock:
            if self.active is not act:
                self._not_leader()
            if self._paused is not None:
                raise NotLeader(f"{self.name}: {self._paused}")
            try:
                yield act.heap
            finally:
                if self.active is not act:  # demoted meanwhile (inside sync())
                    self._off_history(act.heap)

    def _off_history(self, heap: Heap) -> None:
        """Changes no frame carried (written after the last sync, or a write
        whose sync was refused) put the heap in a state on no history: it
        must not be resumed as if it were its last frame's. One more frame,
        encoded and dropped, moves it off the new leader's history (it is
        bulk synced instead; a standby session already on it refuses the
        next delta as out of sequence and is bulk synced too)."""
        with heap._lock:
            heap.frame_size("delta")  # wp/diff: this is where plain writes are found
            dirty = heap.stats()["dirty_blocks"]
            if dirty:
                heap.delta()
                log.warning("node %s: %d blocks changed after the last sync: the "
                            "leader will bulk sync this node", self.name, dirty)

    def _not_leader(self):
        ldr = self.leader.name if self.leader is not None else None
        raise NotLeader(f"{self.name} is not the leader"
                        + (f" ({ldr} is)" if ldr and ldr != self.name else ""), ldr)

    def sync(self, ack: str | None = None, timeout: float | None = None) -> SyncResult:
        """Active.sync() on the leader. NotLeader on any other node, on a
        leader whose lease ran out, and during a switchover."""
        act = self.active
        if act is None or self.role != "leader":
            self._not_leader()
        t0 = time.perf_counter()
        try:
            with act.heap._lock:  # the check and the encode at once (see switchover)
                if self.active is not act:
                    self._not_leader()
                if self._paused is not None:
                    raise NotLeader(f"{self.name}: {self._paused}")
                if time.monotonic() < self._accept_from:
                    raise NotLeader(f"{self.name} leads after a forced failover; it takes "
                                    f"syncs in {self._accept_from - time.monotonic():.1f}s "
                                    "(when the old leader's lease has run out)")
                r = act.sync(ack or self.ack, self.sync_timeout if timeout is None
                             else timeout)
        except StateError as e:  # closed by a demotion meanwhile
            self.sync_failures += 1
            raise NotLeader(f"{self.name} stopped leading: {e}") from None
        except Error:
            self.sync_failures += 1
            raise
        dt = time.perf_counter() - t0
        self.syncs += 1
        self.sync_bytes += r.bytes
        self._hist[bisect.bisect_left(BUCKETS, dt)] += 1
        self._hist_sum += dt
        self._frames.append((r.seq, r.bytes))
        return r

    # -- roles ---------------------------------------------------------------

    def _start_standby(self, heap: Heap | None) -> None:
        sb = Standby(listen=self._listen, secret=self.secret, heap=heap,
                     heartbeat=self.heartbeat, timeout=self.peer_timeout,
                     on_applied=self._applied, tracking=self.tracking,
                     functions=self.functions, externs=self.externs,
                     accept=self._accept,
                     min_epoch=lambda: self._min_epoch)
        self._listen = sb.address  # port 0: the one picked, kept from now on
        self.standby = sb

    def _accept(self, epoch: int) -> bool:
        """Standby(accept=): under the heap's lock, an active passed the
        handshake. Only the leader we read is followed."""
        f = self._follow
        if f == "any" or (f is not None and epoch == f):
            return True
        self.coord.wake()  # maybe a leader we have not read yet
        return False

    def _applied(self, seq: int, nbytes: int, bulk: bool) -> None:
        """Standby(on_applied=), under the heap's lock, before the ack."""
        self._synced = True
        if self.on_applied is not None:
            self.on_applied(seq, nbytes, bulk)

    def _others(self, cl) -> list:
        """Replication addresses of every other member."""
        out = []
        for name, m in sorted(cl.members.items()):
            if name != self.name and m.get("addr"):
                try:
                    out.append(_where(m["addr"]))
                except InvalidArgument:
                    log.warning("node %s: member %s has a bad address %r", self.name,
                                name, m.get("addr"))
        return out

    def _groups(self, cl, voters: list, q: int) -> list:
        """The Active's quorum for ``voters`` of which ``q`` (the leader
        included) must hold a sync: q - 1 acks from the other voters."""
        addrs = [_where(cl.members[v]["addr"]) for v in voters
                 if v != self.name and v in cl.members and cl.members[v].get("addr")]
        return [(addrs, min(max(q - 1, 0), len(addrs)))]

    def _quorum_of(self, n: int) -> int:
        """How many of n voters must hold a sync (ack_quorum, default a
        majority)."""
        return min(self.ack_quorum, n) if self.ack_quorum else majority(n)

    def _promote(self, ldr: Leader, cl) -> None:
        sb = self.standby
        heap = sb.heap if sb is not None else None
        t0 = time.monotonic()
        fresh = False
        if heap is not None and ldr.epoch is not None and \
                heap.stats()["epoch"] >= ldr.epoch:
            # The key of a term this node already led and stepped down from
            # (etcd was away): that term is over; an election decides anew.
            log.warning("node %s: the leader key names this node at epoch %d, which it "
                        "left: giving it up", self.name, ldr.epoch)
            self.coord.resign(ldr.epoch)
            return
        if heap is not None and self._synced:
            sb.promote(ldr.epoch)  # fences the old active on its open connection
            sb.close()
        elif cl.config_rev == 0 and self.create is not None:  # a new cluster
            heap, fresh = self.create(), True
            if sb is not None:
                sb.close()
            if ldr.epoch:
                heap.set_epoch(ldr.epoch)
        else:
            log.error("node %s: named leader (epoch %s) without a state to lead with: "
                      "giving the lead up", self.name, ldr.epoch)
            self.coord.resign(ldr.epoch or 0)
            return
        self.standby = None
        self.epoch = ldr.epoch if ldr.epoch is not None else heap.stats()["epoch"]
        act = Active(heap, self._others(cl), secret=self.secret, ack=self.ack,
                     ack_quorum=0, timeout=self.sync_timeout, heartbeat=self.heartbeat,
                     peer_timeout=self.peer_timeout, backlog_bytes=self.backlog_bytes)
        act.set_quorum(self._groups(cl, cl.voters, cl.quorum))
        act.lease_until = self.coord.deadline()
        if fresh:  # create()'s writes as frame 1: a bulk sync then goes live at once
            act.sync(ack="none")
        self._accept_from = time.monotonic() + ldr.wait
        self._synced = True
        self._paused = None
        self._join = None
        with self._mu:
            self.active, self.leader, self.role = act, ldr, "leader"
        self.promotions.append((t0, self.epoch))
        log.warning("node %s: leading at epoch %d from seq %d", self.name, self.epoch,
                    heap.stats()["seq"])
        if self.on_promote is not None:
            self.on_promote(heap)

    def _demote(self, why: str) -> None:
        act = self.active
        log.warning("node %s: no longer the leader: %s", self.name, why)
        stopped = self._paused_at or time.monotonic()  # the last sync began before
        heap, until = None, None
        if act is not None:
            heap, until = act.heap, act.lease_until
            with heap._lock:  # a leading() block or sync() in progress ends first
                with self._mu:
                    self.role, self.active = "standby", None
                    self._follow, self.leader = None, None
            act.close()
            self._off_history(heap)
        with self._mu:
            self.role, self.active = "standby", None
            self._follow, self.leader = None, None
        self._paused = self._paused_at = None
        # (when it stopped taking syncs, epoch, the lease deadline it acted under)
        self.demotions.append((stopped, self.epoch, until))
        self.coord.resign(self.epoch or 0)  # if the key is still ours: elect now
        self.epoch = None
        if self.on_demote is not None:
            try:
                self.on_demote()
            except Exception:
                log.exception("node %s: on_demote", self.name)
        try:
            self._start_standby(heap)
        except OSError as e:  # the address is taken meanwhile: the loop retries
            log.error("node %s: cannot listen on %s:%d again: %s", self.name,
                      *self._listen, e)
            self._orphan = heap

    # -- the loop -------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._step()
                if self._last_error is not None:
                    log.warning("node %s: the coordinator answers again", self.name)
                    self._last_error = None
            except CoordinationError as e:
                if str(e) != self._last_error:
                    log.warning("node %s: %s", self.name, e)
                    self._last_error = str(e)
                self._unreachable()
            except Exception:  # never let the loop die
                log.exception("node %s: loop", self.name)
            if self._stopping:
                break
            fast = self.role == "candidate" or (self.role == "leader" and self._join)
            self.coord.wait(min(self.coord.loop_wait, 0.05) if fast else
                            self.coord.loop_wait)

    def _unreachable(self) -> None:
        """The coordinator did not answer: a leader goes on only until its
        deadline (Active refuses past it by itself), then steps down."""
        act = self.active
        if act is not None and act.lease_until is not None \
                and time.monotonic() >= act.lease_until:
            self._demote("the lease could not be renewed before its deadline")

    def _step(self) -> None:
        if self.standby is None and self.active is None:  # a failed re-listen
            self._start_standby(self._orphan)
            self._orphan = None
        if self.role == "leader":
            self._step_leader()
        else:
            self._step_standby()

    def _status(self, cl=None, vote=None) -> dict:
        heap = self.heap
        st = heap.stats() if heap is not None else {"seq": 0, "epoch": 0}
        hist = heap.history() if heap is not None else []
        entry = hist[-1] if hist else {"epoch": 0, "start_seq": 0, "id": 0}
        out = {"addr": self.me["addr"], "http": self.me.get("http"), "role": self.role,
               "synced": self._synced and heap is not None, "seq": st["seq"],
               "epoch": st["epoch"],
               "entry": [entry["epoch"], entry["start_seq"], entry["id"]],
               "following": None if self.leader is None else self.leader.epoch,
               "vote": vote}
        sb = self.standby
        if sb is not None:
            with sb.cond:
                out["_silence"] = time.monotonic() - sb._last_active
                # past the handshake and the bulk sync: a live mirror
                out["streaming"] = any(c.s is not None and not c.closed
                                       and c._state() in (2, 3) for c in sb.conns)
        out["_can_bootstrap"] = self.create is not None
        act = self.active
        if act is not None and cl is not None:
            acked = act.acked_seqs()
            by_addr = {m.get("addr") and _where(m["addr"]): n
                       for n, m in cl.members.items() if m.get("addr")}
            lag = {}
            for where, n in by_addr.items():
                if n == self.name:
                    continue
                a = acked.get(where)
                lag[n] = None if a is None else {
                    "acked": a, "frames": st["seq"] - a,
                    "bytes": sum(b for s, b in self._frames if s > a)}
            out["standbys"] = lag
            out["syncs"] = self.syncs
            if self._paused:
                out["paused"] = self._paused
        return out

    def _step_standby(self) -> None:
        cl = self.coord.read()
        self.cluster = cl
        ldr = cl.leader
        if ldr is not None and self.coord.mine(ldr):
            self._promote(ldr, cl)
            if self.role == "leader":
                self.coord.publish(self._status(cl))
            return
        if ldr is not None and not (ldr.name == self.name):
            follow = "any" if ldr.epoch is None else ldr.epoch
            if follow != self._follow:
                log.info("node %s: following %s (epoch %s)", self.name, ldr.name, ldr.epoch)
                self._set_follow(follow)
            with self._mu:
                self.leader, self.role = ldr, "standby"
            self.coord.publish(self._status(cl))
            return
        # No leader (or a key our previous life left, until its lease ends):
        # follow nobody, so the seq we vote with is final.
        if self._follow is not None:
            self._set_follow(None)
        with self._mu:
            self.leader = None
            self.role = "candidate" if ldr is None else "standby"
        if ldr is not None:
            self.coord.publish(self._status(cl))
            return
        vote = {"after": cl.config_epoch}
        status = self._status(cl, vote)
        self.coord.publish(status)
        cl = self.coord.read()  # with the votes just cast
        won = self.coord.campaign(status, cl)
        if won is not None:
            self._promote(won, cl)
            self.coord.publish(self._status(cl))

    def _set_follow(self, follow) -> None:
        """Follows the active of epoch ``follow`` only (None: none): the
        connections to any other close."""
        if isinstance(self._follow, int) and follow is None:
            # the leader we followed is gone: its epoch never leads again
            self._min_epoch = max(self._min_epoch, self._follow + 1)
        if isinstance(follow, int):
            self._min_epoch = max(self._min_epoch, follow)
        self._follow = follow
        sb = self.standby
        if sb is None:
            return
        with sb.cond:
            for c in list(sb.conns):
                c.close()

    def _step_leader(self) -> None:
        act = self.active
        deadline, cl = self.coord.renew(self.epoch)
        self.cluster = cl
        if deadline is None:
            ldr = cl.leader.name if cl.leader is not None else "nobody"
            self._demote(f"the leader key is no longer ours ({ldr} holds it)")
            return
        if act.fenced:
            self._demote(f"fenced by {act.fenced_by} (epoch {act.fenced_epoch})")
            return
        act.lease_until = None if deadline == float("inf") else deadline
        others = self._others(cl)
        if set(others) != {f"{a[0]}:{a[1]}" for a in act.standbys}:
            log.info("node %s: replicating to %s", self.name, ", ".join(others) or "nobody")
            act.set_standbys(others)
            act.set_quorum(self._groups(cl, cl.voters, cl.quorum) if self._join is None
                           else self._join["groups"])
        self._membership(cl)
        req = cl.request
        if req is not None:
            self._switchover(req, cl)
            if self.role != "leader":
                return
        self.coord.publish(self._status(cl))

    # -- membership: a member becomes a voter ---------------------------------

    def _membership(self, cl) -> None:
        """One member at a time joins the voters: first it catches up as a
        standby that does not count; then syncs need acks under the old
        voters and the new ones at once until the new ones hold the current
        seq; then the config names the new voters (see coord.py)."""
        act, j = self.active, self._join
        heap_seq = act.heap.stats()["seq"]
        if j is None:
            new = [n for n in sorted(cl.members) if n not in cl.voters and n in cl.statuses
                   and cl.members[n].get("addr")]
            if not new or cl.voters and self.name not in cl.voters:
                return
            j = self._join = {"name": new[0], "phase": 1, "seq": heap_seq,
                              "since": time.monotonic()}
            log.info("node %s: %s joins the voters: catching up", self.name, new[0])
        name = j["name"]
        if name not in cl.statuses or name in cl.voters:  # gone, or done
            self._join = None
            act.set_quorum(self._groups(cl, cl.voters, cl.quorum))
            return
        where = _where(cl.members[name]["addr"])
        acked = act.acked_seqs()
        voters = sorted(set(cl.voters) | {name})
        q = self._quorum_of(len(voters))
        new = self._groups(cl, voters, q)
        if j["phase"] == 1:
            if acked.get(where, -1) < j["seq"]:
                return
            j["groups"] = self._groups(cl, cl.voters, cl.quorum) + new
            j["phase"], j["seq"] = 2, heap_seq
            act.set_quorum(j["groups"])
            return
        (new_addrs, k), = new
        if sum(1 for a in new_addrs if acked.get(a, -1) >= j["seq"]) < k:
            return
        if self.coord.set_voters(self.epoch, voters, q):
            log.warning("node %s: voters now %s (a sync needs %d of them)", self.name,
                        ", ".join(voters), q)
            act.set_quorum(new)
        self._join = None

    # -- switchover -------------------------------------------------------------

    def _switchover(self, req: dict, cl) -> None:
        """A planned handover (``cluster switchover``): sync() is refused,
        the target catches up with the last seq, the key moves to it."""
        to = req.get("to")
        if req.get("from") not in (None, self.name) or to == self.name:
            self.coord.done(req)
            return
        st = cl.statuses.get(to) if to else None
        if to is None:  # the most up-to-date voter
            ok = [cl.statuses[n] for n in cl.voters if n != self.name and n in cl.statuses
                  and cl.statuses[n].get("synced")]
            st = max(ok, key=lambda s: s.get("seq", 0), default=None)
            to = st["name"] if st else None
        if st is None or to not in cl.voters or not st.get("synced"):
            log.error("node %s: switchover to %s refused: not a synced voter", self.name, to)
            self.coord.done(req)
            return
        act = self.active
        where = _where(cl.members[to]["addr"])
        with act.heap._lock:
            self._paused = f"switching over to {to}"
            self._paused_at = time.monotonic()
            seq = act.heap.stats()["seq"]
        t0 = time.monotonic()
        limit = t0 + float(req.get("timeout", 10))
        others = [a for a in self._others(cl) if a != where]
        while True:
            acked = act.acked_seqs()
            now = time.monotonic()
            # the target must have everything; the others get a moment to
            # catch up too (then the new leader resumes them, no bulk sync)
            if acked.get(where, -1) >= seq and (
                    all(acked.get(a, -1) >= seq for a in others if a in acked)
                    or now - t0 > 0.2):
                break
            if now > limit:
                log.error("node %s: switchover to %s: it did not reach seq %d within "
                          "%gs", self.name, to, seq, limit - t0)
                self._paused = None
                self.coord.done(req)
                return
            if act.lease_until is not None and \
                    act.lease_until - now < 2 * self.coord.retry_timeout:
                deadline, _ = self.coord.renew(self.epoch)  # the wait may outlast it
                if deadline is None:
                    self._demote("the leader key is no longer ours")
                    return
                act.lease_until = deadline
            time.sleep(0.002)
        new = self.coord.handover(self.epoch, to, cl)
        if new is None:
            self._paused = None
            log.error("node %s: switchover to %s: the handover failed", self.name, to)
            self.coord.done(req)
            return
        self._demote(f"switched over to {to} at seq {seq} (epoch {new.epoch})")

    # -- status ---------------------------------------------------------------

    def status(self) -> dict:
        """What this node publishes, plus its heap's epoch history."""
        st = self._status(self.cluster)
        heap = self.heap
        out = {k: v for k, v in st.items() if not k.startswith("_")}
        out.update(name=self.name, leader=self.leader.name if self.leader else None,
                   leader_epoch=self.epoch if self.role == "leader" else
                   (self.leader.epoch if self.leader else None),
                   history=heap.history() if heap is not None else [])
        return out

    def close(self) -> None:
        """Stops: a leader gives the key up at once (an election follows
        without waiting for the TTL), then everything is closed."""
        self._stopping = True
        self.coord.wake()
        if self._thread.is_alive():
            self._thread.join(10)
        act, sb = self.active, self.standby
        if act is not None:
            act.close()
            self.coord.resign(self.epoch or 0)
        if sb is not None:
            sb.close()
        if self.http is not None:
            self.http.close()
        self.coord.close()
        self.role = "stopped"

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

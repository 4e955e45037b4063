"""Who leads: the coordination interface tha.Node runs on, and its two
implementations.

* :class:`PairCoordinator` — two nodes and no witness, as tha.Active /
  tha.Standby do it alone: the node started as the active leads; the other
  promotes when the active has been silent for ``promote_after`` (so a cut
  link makes two actives: the split brain a witness prevents).
* :class:`EtcdCoordinator` — any number of nodes and etcd as the witness:
  a leader key held by a lease with a TTL, won in a transaction.

The node asks its coordinator the same things either way, once per loop
(every ``loop_wait`` seconds, sooner when the coordinator sees a change):
``renew()`` (leader: may I go on, and until when), ``read()`` (the
cluster as the coordinator sees it), ``campaign()`` (no leader: may I
lead, at which epoch), ``publish()`` (my state, for the others and for
``cluster list``), plus the leader's ``set_voters()`` and ``handover()``.

etcd keys, under ``/tha/<cluster>/``:

==================  ====================================================
``ctl/leader``      the leader: {name, addr, http}; held by its lease; the
                    revision that wrote it (its mod_revision) is the epoch
``ctl/config``      {voters, quorum, leader, epoch}: which members vote and
                    how many (counting the leader) must hold a sync; written
                    with the leader key, kept when it expires
``ctl/switchover``  a request from ``cluster switchover`` / ``failover``
``members/<name>``  {name, addr, http}: every member that ever joined
``status/<name>``   what the member says of itself (role, seq, epoch,
                    history entry, vote, last heard); held by its lease
==================  ====================================================

The election (no leader key; each voter, every loop):

1. It stops following (closes the connection to the old active and
   accepts no other: its applied seq is final) and publishes a *vote*:
   its seq and current epoch-history entry, "after" the epoch of the
   config it saw.
2. A sync counted as held once ``quorum`` members hold it: the leader and
   ``quorum - 1`` of the other voters. Any ``len(voters) - quorum + 1`` of
   those others then include one that holds it (pigeonhole). So a
   candidate waits for votes from that many voters (not the old leader,
   each with a state synced in this process: a restarted, empty member
   lost what it acked) and wins only if it ranks first among them: the
   newest history entry's epoch, then the highest seq, then the name.
3. It takes the leader key in a transaction: only if no leader key exists
   and the config is the one the votes were cast on; the transaction
   writes the key and the config (leader, epoch) at one revision, which
   is the new epoch: ``Heap.set_epoch`` at promotion, so every mirror
   refuses the old active's frames and the old active is fenced.

A leader acts only until ``t0 + ttl - retry_timeout``, ``t0`` the moment
it sent its last successful renewal (lease keepalive, then a check that
the key is still its own): its lease lasts at least ``ttl`` from the
moment etcd took the keepalive, so it stops before anyone else can win.
It renews every ``loop_wait``, each attempt bounded by ``retry_timeout``;
with ``ttl >= loop_wait + 2 * retry_timeout`` (Patroni's rule) a failed
attempt leaves time for another before the deadline, and a healthy leader
never reaches it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from ..errors import CoordinationError, InvalidArgument
from . import etcd as E

log = logging.getLogger("tha.cluster")


@dataclass
class Leader:
    name: str
    addr: str | None            # its replication address ("HOST:PORT")
    epoch: int | None           # None: not known (pair mode: any newer epoch)
    http: str | None = None
    wait: float = 0.0           # a forced failover: seconds before it takes syncs
    lease: int = 0              # etcd: the lease holding the key


@dataclass
class Cluster:
    """The cluster as a coordinator read it."""
    leader: Leader | None = None
    voters: list = field(default_factory=list)
    quorum: int = 1
    config_epoch: int = 0       # the epoch of the leader that wrote the config
    config_leader: str | None = None
    config_rev: int = 0         # the config key's mod_revision (0: no config)
    members: dict = field(default_factory=dict)    # name -> {name, addr, http}
    statuses: dict = field(default_factory=dict)   # name -> what it published
    request: dict | None = None                    # a switchover/failover request
    revision: int = 0


def majority(n: int) -> int:
    return n // 2 + 1


def rank(st: dict) -> tuple:
    """How up to date a member's vote is: (epoch of its newest history
    entry, seq); higher is better (ties: the smaller name, by the caller)."""
    entry = st.get("entry") or [0, 0, 0]
    return (int(entry[0]), int(st.get("seq", -1)))


def parse_cluster(prefix: str, kvs: list, revision: int) -> Cluster:
    """The Cluster that the keys under ``prefix`` describe."""
    cl = Cluster(revision=revision)
    for kv in kvs:
        rel = kv.key[len(prefix):]
        val = kv.json()
        if not isinstance(val, dict):
            continue
        if rel == "ctl/leader":
            cl.leader = Leader(str(val.get("name")), val.get("addr"), kv.mod_revision,
                               val.get("http"), float(val.get("wait") or 0), kv.lease)
        elif rel == "ctl/config":
            cl.voters = [str(v) for v in val.get("voters") or []]
            cl.quorum = int(val.get("quorum") or 1)
            cl.config_epoch = int(val.get("epoch") or kv.mod_revision)
            cl.config_leader = val.get("leader")
            cl.config_rev = kv.mod_revision
        elif rel == "ctl/switchover":
            cl.request = dict(val, rev=kv.mod_revision)
        elif rel.startswith("members/"):
            cl.members[rel[8:]] = val
        elif rel.startswith("status/"):
            cl.statuses[rel[7:]] = dict(val, lease=kv.lease)
    return cl


class Coordinator:
    """What tha.Node needs from whoever decides who leads."""

    name: str
    loop_wait: float = 1.0
    ttl: float = float("inf")
    retry_timeout: float = 1.0

    def open(self, me: dict) -> None:
        """Joins: ``me`` is {name, addr, http}."""

    def deadline(self) -> float | None:
        """Until when (time.monotonic()) a leader may act on its last
        renewal; None: no lease (pair mode)."""
        return None

    def mine(self, leader: Leader) -> bool:
        """True if ``leader`` is this node, in this life (not a key left by
        an earlier process of the same name, whose lease still runs)."""
        return leader.name == self.name

    def read(self) -> Cluster:
        raise NotImplementedError

    def renew(self, epoch: int) -> tuple:
        """Leader: (deadline as time.monotonic(), or None if it lost the
        lead; the cluster as read)."""
        raise NotImplementedError

    def publish(self, status: dict) -> None:
        pass

    def campaign(self, status: dict, cluster: Cluster) -> Leader | None:
        """No leader: this node's leadership if it may take it now."""
        raise NotImplementedError

    def set_voters(self, epoch: int, voters: list, quorum: int) -> bool:
        return False

    def handover(self, epoch: int, to: str, cluster: Cluster) -> Leader | None:
        return None

    def done(self, request: dict) -> None:
        """Leader: ``request`` (Cluster.request) is dealt with."""

    def resign(self, epoch: int) -> None:
        pass

    def wait(self, timeout: float) -> None:
        """Sleeps up to ``timeout``; sooner if something changed."""
        time.sleep(timeout)

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass


class PairCoordinator(Coordinator):
    """Two nodes, no witness (what tha.Active/Standby do alone): the node
    made with ``leader=True`` leads first; the other takes over after
    ``promote_after`` seconds without a word from the active, at the next
    epoch; an active fenced by it follows it from then on. ``peer`` is
    the other node's replication address. Nothing stops both from leading
    when the link between them breaks: that is what a witness is for."""

    def __init__(self, name: str, peer: str, leader: bool, promote_after: float = 2.0,
                 loop_wait: float = 0.1):
        self.name, self.peer = name, peer
        self.leading = leader
        self.promote_after = promote_after
        self.loop_wait = loop_wait
        self._me = {}
        self._status = {}
        self._wake = threading.Event()

    def open(self, me: dict) -> None:
        self._me = dict(me)

    def _cluster(self) -> Cluster:
        peer = {"name": "peer", "addr": self.peer}
        ldr = (Leader(self.name, self._me.get("addr"), None) if self.leading
               else Leader("peer", self.peer, None))
        return Cluster(leader=ldr, voters=[self.name, "peer"], quorum=2,
                       members={self.name: self._me, "peer": peer},
                       statuses={self.name: self._status})

    def read(self) -> Cluster:
        st = self._status
        if (not self.leading and st.get("synced")
                and st.get("_silence", 0) >= self.promote_after):
            self.leading = True  # the active is silent: this node leads now
        return self._cluster()

    def renew(self, epoch: int) -> tuple:
        return (float("inf") if self.leading else None), self._cluster()

    def publish(self, status: dict) -> None:
        self._status = dict(status)

    def campaign(self, status: dict, cluster: Cluster) -> Leader | None:
        return None  # read() always names a leader

    def resign(self, epoch: int) -> None:
        self.leading = False

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()


class EtcdCoordinator(Coordinator):
    """etcd as the witness (see the module doc). ``etcd``: endpoints
    ``http://HOST:PORT[,...]``; ``cluster``: the cluster's name (its keys
    live under ``/tha/<cluster>/``). Times in seconds; ``ttl`` is whole
    seconds (etcd's lease unit)."""

    def __init__(self, etcd: str, cluster: str, name: str, ttl: int = 10,
                 loop_wait: float = 1.0, retry_timeout: float | None = None,
                 watch: bool = True):
        if not cluster or "/" in cluster or not name or "/" in name:
            raise InvalidArgument(f"cluster {cluster!r} and name {name!r} must be "
                                  "non-empty and without '/'")
        if int(ttl) != ttl or ttl < 1:
            raise InvalidArgument(f"ttl must be whole seconds (etcd leases), not {ttl}")
        retry_timeout = (ttl - loop_wait) / 2 if retry_timeout is None else retry_timeout
        if ttl < loop_wait + 2 * retry_timeout or retry_timeout <= 0 or loop_wait <= 0:
            raise InvalidArgument(
                f"ttl {ttl}s < loop_wait {loop_wait}s + 2 x retry_timeout "
                f"{retry_timeout}s: a leader could not retry a failed renewal before "
                "it must stop (Patroni's rule: ttl >= loop_wait + 2 x retry_timeout)")
        self.client = E.Etcd(etcd, timeout=retry_timeout)
        self.url = etcd
        self.cluster, self.name = cluster, name
        self.ttl, self.loop_wait, self.retry_timeout = int(ttl), loop_wait, retry_timeout
        self.prefix = f"/tha/{cluster}/"
        self.k_leader = self.prefix + "ctl/leader"
        self.k_config = self.prefix + "ctl/config"
        self.k_request = self.prefix + "ctl/switchover"
        self.lease = 0
        self._lease_ok_at = None  # monotonic send time of the last good keepalive
        self._me = {}
        self._published = None
        self._published_at = 0.0
        self._wake = threading.Event()
        self._watcher = E.Watcher(self.client, self.prefix + "ctl/", self.wake) \
            if watch else None

    # -- plumbing ----------------------------------------------------------

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def mine(self, leader: Leader) -> bool:
        return leader.name == self.name and bool(self.lease) and leader.lease == self.lease

    def deadline(self) -> float | None:
        t0 = self._lease_ok_at
        return None if t0 is None else t0 + self.ttl - self.retry_timeout

    def _grant(self) -> None:
        self.lease = self.client.grant(self.ttl)
        self._published = None  # the status key went with the old lease

    def _keepalive(self) -> float | None:
        """Renews this member's lease; returns the monotonic time the
        renewal was sent, or None if the lease had expired (the next call
        grants a new one: the member's status key comes back with it)."""
        t0 = time.monotonic()
        if not self.lease:
            self._grant()
        elif not self.client.keepalive(self.lease):
            log.warning("etcd: the lease of %s expired", self.name)
            self.lease = 0
            self._lease_ok_at = None
            return None
        self._lease_ok_at = t0
        return t0

    def open(self, me: dict) -> None:
        self._me = dict(me)
        self.client.put(self.prefix + "members/" + self.name, json.dumps(self._me))
        self._grant()
        self._lease_ok_at = time.monotonic()

    def _parse(self, kvs: list, revision: int) -> Cluster:
        return parse_cluster(self.prefix, kvs, revision)

    def read(self) -> Cluster:
        """Renews this member's lease, then reads every key of the cluster
        (one range)."""
        if self._keepalive() is None:
            self._keepalive()  # a new lease at once
        return self._parse(*self.client.get_prefix(self.prefix))

    def renew(self, epoch: int) -> tuple:
        t0 = self._keepalive()
        if t0 is None:  # the lease is gone, and the leader key with it
            return None, self._parse(*self.client.get_prefix(self.prefix))
        ok, resp, rev = self.client.txn(
            [E.cmp_mod(self.k_leader, epoch), E.cmp_lease(self.k_leader, self.lease)],
            [E.op_get(self.prefix, prefix=True)], [E.op_get(self.prefix, prefix=True)])
        cl = self._parse(E.range_kvs(resp[0]) if resp else [], rev)
        if not ok:
            return None, cl
        return t0 + self.ttl - self.retry_timeout, cl

    def publish(self, status: dict) -> None:
        """Puts this member's status (with its lease) when it changed, or
        every ttl/3 so "last heard" stays fresh."""
        # keys starting with "_" are for the coordinator only (pair mode)
        body = {k: v for k, v in status.items() if not k.startswith("_")}
        body["name"] = self.name
        now = time.monotonic()
        if body == self._published and now - self._published_at < self.ttl / 3:
            return
        self.client.put(self.prefix + "status/" + self.name,
                        json.dumps(dict(body, heard=time.time(), pid=os.getpid())),
                        lease=self.lease)
        self._published, self._published_at = body, now

    # -- the election -------------------------------------------------------

    def candidates(self, cluster: Cluster) -> tuple:
        """(the votes that count, how many are needed) for the election
        after cluster.config_epoch."""
        others = [v for v in cluster.voters if v != cluster.config_leader]
        need = len(cluster.voters) - cluster.quorum + 1
        votes = []
        for name in others:
            st = cluster.statuses.get(name)
            vote = (st or {}).get("vote")
            if (st and vote and int(vote.get("after", -1)) == cluster.config_epoch
                    and st.get("synced")):
                votes.append(st)
        return votes, need

    def campaign(self, status: dict, cluster: Cluster) -> Leader | None:
        me = self._me
        if cluster.config_rev == 0:  # a new cluster: the first to come leads it
            if not status.get("_can_bootstrap"):
                return None
            config = json.dumps({"voters": [self.name], "quorum": 1, "leader": self.name})
            ok, _, rev = self.client.txn(
                [E.cmp_create(self.k_leader, 0), E.cmp_create(self.k_config, 0)],
                [E.op_put(self.k_leader, json.dumps(me), self.lease),
                 E.op_put(self.k_config, config)])
            return Leader(self.name, me.get("addr"), rev, me.get("http"),
                      lease=self.lease) if ok else None
        if self.name not in cluster.voters or not status.get("synced"):
            return None
        votes, need = self.candidates(cluster)
        if len(votes) < need:
            return None
        best = max(votes, key=lambda st: (rank(st), [-ord(c) for c in st["name"]]))
        if best["name"] != self.name:
            return None
        config = json.dumps({"voters": cluster.voters, "quorum": cluster.quorum,
                             "leader": self.name})
        ok, _, rev = self.client.txn(
            [E.cmp_create(self.k_leader, 0), E.cmp_mod(self.k_config, cluster.config_rev)],
            [E.op_put(self.k_leader, json.dumps(me), self.lease),
             E.op_put(self.k_config, config)])
        return Leader(self.name, me.get("addr"), rev, me.get("http"),
                      lease=self.lease) if ok else None

    # -- the leader's writes -------------------------------------------------

    def set_voters(self, epoch: int, voters: list, quorum: int) -> bool:
        config = json.dumps({"voters": voters, "quorum": quorum, "leader": self.name,
                             "epoch": epoch})
        ok, _, _ = self.client.txn([E.cmp_mod(self.k_leader, epoch)],
                                   [E.op_put(self.k_config, config)])
        return ok

    def handover(self, epoch: int, to: str, cluster: Cluster) -> Leader | None:
        """Moves the leader key to ``to`` (its lease, from its status) in
        one transaction with the config; the revision is its epoch."""
        st = cluster.statuses.get(to)
        info = cluster.members.get(to)
        if not st or not info or not st.get("lease"):
            return None
        config = json.dumps({"voters": cluster.voters, "quorum": cluster.quorum,
                             "leader": to})
        ops = [E.op_put(self.k_leader, json.dumps(info), int(st["lease"])),
               E.op_put(self.k_config, config)]
        if cluster.request is not None:
            ops.append(E.op_delete(self.k_request))
        ok, _, rev = self.client.txn([E.cmp_mod(self.k_leader, epoch)], ops)
        return Leader(to, info.get("addr"), rev, info.get("http"),
                      lease=int(st["lease"])) if ok else None

    def done(self, request: dict) -> None:
        self.client.txn([E.cmp_mod(self.k_request, int(request.get("rev", 0)))],
                        [E.op_delete(self.k_request)])

    def resign(self, epoch: int) -> None:
        """Gives the leader key up now (a clean stop), if it is still ours."""
        try:
            self.client.txn([E.cmp_mod(self.k_leader, epoch)],
                            [E.op_delete(self.k_leader)])
        except CoordinationError:
            pass

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self.lease:
            try:
                self.client.revoke(self.lease)
            except CoordinationError:
                pass
            self.lease = 0
        self.client.close()

"""The coordination layer in one process, against a real 1-node etcd
(tests/helpers/etcd_server.py): the gateway client, the coordinator's
lease / leader key / members / votes, Active's lease, dynamic standbys and
quorum groups, and tha.Node elections with nodes in this process. The
real-process tests (kills, partitions, SIGSTOP) are in
tests/test_cluster_procs.py."""

import itertools
import os
import sys
import time

import pytest

import tha
from tha.cluster import EtcdCoordinator, Node, PairCoordinator
from tha.cluster import etcd as E

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
from etcd_server import ETCD, EtcdServer  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(ETCD),
                                reason="needs etcd (Debian: etcd-server; .ci/run installs it)")

CDEF = "struct kv { uint64_t k, v; };"
_names = itertools.count()


@pytest.fixture(scope="module")
def etcd():
    s = EtcdServer()
    yield s
    s.stop()


@pytest.fixture
def cluster_name():
    return f"t{next(_names)}-{os.getpid()}"


def create_heap():
    h = tha.Heap(tha.Schema(CDEF), 1 << 20)
    h.roots["t"] = h.new("struct kv", 16)
    return h


def wait(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"{what}: not within {timeout}s")


@pytest.fixture
def nodes():
    made = []
    yield made
    for n in made:
        n.close()


def start(made, etcd, cluster, count, **kw):
    kw = dict(dict(ttl=2, loop_wait=0.1, create=create_heap), **kw)
    for i in range(count):
        made.append(Node(f"n{len(made)}", "127.0.0.1:0", etcd=etcd.url, cluster=cluster,
                         **kw))
    return made


def leaders(made):
    return [n for n in made if n.is_leader]


def settled(made, voters):
    """One leader, ``voters`` voters in its config, everyone following it."""
    ls = leaders(made)
    if len(ls) != 1 or ls[0].cluster is None or len(ls[0].cluster.voters) != voters:
        return None
    if any(n.role != "standby" or n.leader is None or n.leader.name != ls[0].name
           for n in made if n is not ls[0]):
        return None
    return ls[0]


def sync_retry(node, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return node.sync()
        except tha.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# -- the gateway client ------------------------------------------------------

def test_etcd_starts_fast_and_speaks_v3(etcd):
    assert etcd.startup < 5.0
    c = E.Etcd(etcd.url, timeout=1)
    assert c.api() == "/v3/"  # etcd 3.4 serves /v3/ (and the old /v3beta/)
    lease = c.grant(2)
    assert c.keepalive(lease) == 2
    ok, _, rev = c.txn([E.cmp_create("/x/leader", 0)], [E.op_put("/x/leader", "a", lease)])
    assert ok and rev > 0
    ok, resp, _ = c.txn([E.cmp_create("/x/leader", 0)], [E.op_put("/x/leader", "b", lease)],
                        [E.op_get("/x/leader")])
    assert not ok and E.range_kvs(resp[0])[0].value == b"a"
    kv = c.get("/x/leader")
    assert kv.mod_revision == rev and kv.lease == lease
    c.revoke(lease)
    assert c.get("/x/leader") is None          # the lease took its key along
    assert c.keepalive(lease) == 0             # an expired lease renews to 0
    with pytest.raises(tha.CoordinationError, match="lease not found"):
        c.put("/x/y", "z", lease=lease)


def test_etcd_unreachable_is_coordination_error():
    port = __import__("etcd_server").free_port()
    c = E.Etcd(f"http://127.0.0.1:{port}", timeout=0.5)
    with pytest.raises(tha.CoordinationError, match=f"127.0.0.1:{port}"):
        c.get("/x")
    with pytest.raises(tha.InvalidArgument):
        E.Etcd("https://127.0.0.1:2379")


def test_lease_expires_after_ttl(etcd):
    c = E.Etcd(etcd.url)
    lease = c.grant(1)
    c.put("/exp/k", "v", lease=lease)
    t0 = time.monotonic()
    wait(lambda: c.get("/exp/k") is None, 5, "the key to expire")
    assert 0.9 <= time.monotonic() - t0 < 3.0


def test_patroni_rule_is_enforced():
    with pytest.raises(tha.InvalidArgument, match="Patroni"):
        EtcdCoordinator("http://127.0.0.1:1", "c", "n", ttl=2, loop_wait=1,
                        retry_timeout=1, watch=False)
    with pytest.raises(tha.InvalidArgument, match="whole seconds"):
        EtcdCoordinator("http://127.0.0.1:1", "c", "n", ttl=1.5, watch=False)


def test_coordinator_bootstrap_then_one_leader(etcd, cluster_name):
    a = EtcdCoordinator(etcd.url, cluster_name, "a", ttl=2, loop_wait=0.1, watch=False)
    b = EtcdCoordinator(etcd.url, cluster_name, "b", ttl=2, loop_wait=0.1, watch=False)
    try:
        a.open({"name": "a", "addr": "127.0.0.1:1"})
        b.open({"name": "b", "addr": "127.0.0.1:2"})
        cl = a.read()
        assert cl.leader is None and cl.config_rev == 0
        assert set(cl.members) == {"a", "b"}
        st = {"_can_bootstrap": True}
        won = a.campaign(st, cl)
        assert won is not None and won.name == "a"
        assert b.campaign(st, cl) is None      # create-if-absent: one winner
        cl = b.read()
        assert cl.leader.name == "a" and cl.leader.epoch == won.epoch
        assert a.mine(cl.leader) and not b.mine(cl.leader)
        assert cl.voters == ["a"] and cl.quorum == 1
        deadline, cl2 = a.renew(won.epoch)
        assert deadline is not None and deadline > time.monotonic() + 1.0
        assert b.renew(won.epoch)[0] is None   # not b's key (another lease)
        # a's lease stops: the key goes with it within the TTL
        a.client.revoke(a.lease)
        assert b.read().leader is None
        assert a.renew(won.epoch)[0] is None   # a knows it lost the lead
    finally:
        a.close()
        b.close()


def test_votes_need_enough_voters(etcd, cluster_name):
    """The pigeonhole: with 3 voters and quorum 2, a candidate needs votes
    from both non-leaders; the best ranked wins."""
    cs = {n: EtcdCoordinator(etcd.url, cluster_name, n, ttl=2, loop_wait=0.1, watch=False)
          for n in "abc"}
    try:
        for i, (n, c) in enumerate(cs.items()):
            c.open({"name": n, "addr": f"127.0.0.1:{i + 1}"})
        won = cs["a"].campaign({"_can_bootstrap": True}, cs["a"].read())
        assert cs["a"].set_voters(won.epoch, ["a", "b", "c"], 2)
        cs["a"].client.revoke(cs["a"].lease)   # the leader dies
        cl = cs["b"].read()
        assert cl.leader is None and cl.voters == ["a", "b", "c"] and cl.config_leader == "a"
        vote = {"after": cl.config_epoch}
        b_st = {"synced": True, "seq": 10, "entry": [won.epoch, 0, 1], "vote": vote}
        cs["b"].publish(b_st)
        assert cs["b"].campaign(b_st, cs["b"].read()) is None  # c has not voted
        c_st = {"synced": True, "seq": 11, "entry": [won.epoch, 0, 1], "vote": vote}
        cs["c"].publish(c_st)
        cl = cs["b"].read()
        assert cs["b"].campaign(b_st, cl) is None   # c is more up to date
        new = cs["c"].campaign(c_st, cl)
        assert new is not None and new.epoch > won.epoch
        cl = cs["b"].read()
        assert cl.leader.name == "c" and cl.config_leader == "c"
        assert cl.config_epoch == new.epoch
    finally:
        for c in cs.values():
            c.close()


# -- Active: the lease, dynamic standbys, quorum groups ------------------------

def test_active_lease_refuses_sync_and_sends_nothing():
    h = create_heap()
    sb = tha.Standby(("127.0.0.1", 0))
    act = tha.Active(h, [sb.address], ack_quorum=1)
    try:
        act.lease_until = time.monotonic() + 60
        h.roots["t"][0].v = 1
        act.sync()
        assert sb.wait_for(act.heap.stats()["seq"], 5)
        act.lease_until = time.monotonic() - 0.001
        h.roots["t"][0].v = 2
        seq = h.stats()["seq"]
        with pytest.raises(tha.NotLeader, match="lease ran out"):
            act.sync()
        assert h.stats()["seq"] == seq  # nothing was encoded
        time.sleep(0.3)                 # heartbeats: nothing leaves either
        assert sb.applied_seq == seq
    finally:
        act.close()
        sb.close()


def test_active_set_standbys_and_quorum_groups():
    h = create_heap()
    a, b = tha.Standby(("127.0.0.1", 0)), tha.Standby(("127.0.0.1", 0))
    act = tha.Active(h, [a.address], ack_quorum=1)
    try:
        act.sync()
        act.set_standbys([a.address, b.address])
        wa, wb = ("%s:%d" % a.address), ("%s:%d" % b.address)
        act.set_quorum([([wa], 1), ([wa, wb], 2)])
        r = act.sync(timeout=10)
        assert sorted(r.acked_by) == sorted([wa, wb])
        assert act.acked_seqs()[wb] == r.seq
        with pytest.raises(tha.InvalidArgument):
            act.set_quorum([(["127.0.0.1:1"], 1)])
        act.set_standbys([b.address])   # a is dropped
        act.set_quorum([([wb], 1)])
        a_seq = a.applied_seq
        r = act.sync()
        assert r.acked_by == [wb] and a.applied_seq == a_seq
    finally:
        act.close()
        a.close()
        b.close()


def test_standby_accept_gate_and_promote_epoch():
    h = create_heap()
    sb = tha.Standby(("127.0.0.1", 0), accept=lambda epoch: epoch == 7)
    act = tha.Active(h, [sb.address], ack_quorum=1)
    try:
        with pytest.raises(tha.SyncTimeout):
            act.sync(timeout=0.5)        # epoch 0: not the one to follow
        assert sb.heap is None
        act.close()
        h.set_epoch(7)
        act = tha.Active(h, [sb.address], ack_quorum=1)
        act.sync(timeout=5)
        heap = sb.promote(epoch=42)
        assert heap.stats()["epoch"] == 42
        assert heap.history()[-1]["epoch"] == 42
    finally:
        act.close()
        sb.close()


# -- tha.Node in one process -----------------------------------------------------

def test_three_nodes_elect_one_leader_and_fail_over(etcd, cluster_name, nodes):
    start(nodes, etcd, cluster_name, 3)
    ldr = wait(lambda: settled(nodes, 3), 15, "a settled cluster")
    for i in range(10):
        ldr.heap.roots["t"][i].v = 100 + i
        r = ldr.sync()
    assert len(r.acked_by) >= 1
    for n in nodes:
        if n is not ldr:
            with pytest.raises(tha.NotLeader, match=ldr.name):
                n.sync()
    # its epoch is the leader key's revision; every heap carries it
    key = E.Etcd(etcd.url).get(f"/tha/{cluster_name}/ctl/leader")
    assert ldr.epoch == key.mod_revision == ldr.heap.stats()["epoch"]
    wait(lambda: all(n.heap is not None and n.heap.stats()["seq"] == r.seq
                     for n in nodes), 10, "everyone at the last seq")
    nodes.remove(ldr)
    t0 = time.monotonic()
    ldr.close()             # a clean stop gives the key up: no TTL to wait
    new = wait(lambda: leaders(nodes) and leaders(nodes)[0], 10, "a new leader")
    sync_retry(new)
    assert time.monotonic() - t0 < 2.0
    assert new.epoch > key.mod_revision
    assert [int(new.heap.roots["t"][i].v) for i in range(10)] == list(range(100, 110))


def test_leader_lease_expiry_elects_most_up_to_date(etcd, cluster_name, nodes):
    """The leader's keepalives stop (a hook: its coordinator's lease is
    revoked behind its back): it stops taking syncs, the standbys elect."""
    start(nodes, etcd, cluster_name, 3)
    ldr = wait(lambda: settled(nodes, 3), 15, "a settled cluster")
    r = ldr.sync()
    promoted, demoted = [], []
    for n in nodes:
        n.on_promote = lambda heap, n=n: promoted.append(n.name)
        n.on_demote = lambda n=n: demoted.append(n.name)
    E.Etcd(etcd.url).revoke(ldr.coord.lease)
    new = wait(lambda: [n for n in leaders(nodes) if n is not ldr], 10, "a new leader")[0]
    # (it learns at its next renewal: not the race the TTL rules out, as a
    # revoke is sooner than any expiry; test_cluster_procs.py has those)
    wait(lambda: promoted, 5, "on_promote")  # (it runs once the role is set)
    assert promoted == [new.name]
    wait(lambda: demoted, 5, "the old leader to step down")  # (on_demote: last)
    assert demoted == [ldr.name] and not ldr.is_leader
    with pytest.raises(tha.NotLeader):
        ldr.sync()
    r2 = sync_retry(new)
    assert r2.seq > r.seq
    # the deposed leader rejoins as a standby by itself
    wait(lambda: ldr.role == "standby" and ldr.leader is not None
         and ldr.leader.name == new.name and ldr.heap.stats()["seq"] >= r2.seq,
         10, "the old leader to follow the new one")


def test_pair_coordinator_promotes_on_silence():
    """The pair mode as a coordinator: the first leads, the other promotes
    after promote_after of silence and fences it."""
    a_port, b_port = (__import__("etcd_server").free_port() for _ in range(2))
    a = Node("a", f"127.0.0.1:{a_port}", create=create_heap, coordinator=PairCoordinator(
        "a", f"127.0.0.1:{b_port}", leader=True, loop_wait=0.05))
    b = Node("b", f"127.0.0.1:{b_port}", coordinator=PairCoordinator(
        "b", f"127.0.0.1:{a_port}", leader=False, promote_after=0.5, loop_wait=0.05))
    try:
        wait(lambda: a.is_leader, 5, "a leads")
        a.heap.roots["t"][1].v = 5
        r = sync_retry(a)
        assert b.heap is not None and b.heap.stats()["seq"] == r.seq
        a._stopping = True      # a's loop stops, and so do its heartbeats:
        a.active.close()        # the link is silent from now on
        wait(lambda: b.is_leader, 5, "b promotes")
        assert int(b.heap.roots["t"][1].v) == 5
        assert b.heap.stats()["epoch"] == 1
    finally:
        a.close()
        b.close()


def test_a_deposed_leader_with_unsynced_writes_is_bulk_synced(etcd, cluster_name, nodes):
    """A write the leader made and never synced is on no history: after a
    switchover the old leader must not be resumed as if its heap were its
    last frame's state (the next deltas would land on top of that write)."""
    import json
    start(nodes, etcd, cluster_name, 3)
    ldr = wait(lambda: settled(nodes, 3), 15, "a settled cluster")
    sync_retry(ldr)
    with ldr.leading() as heap:
        heap.roots["t"][5].v = 999   # written, never synced
    target = next(n for n in nodes if n is not ldr)
    ldr.coord.client.put(ldr.coord.k_request,
                         json.dumps({"from": ldr.name, "to": target.name}))
    wait(lambda: target.is_leader, 10, "the switchover")
    with target.leading() as heap:
        heap.roots["t"][1].v = 1
    r = sync_retry(target)
    # the old leader's own seq passes r.seq by the frame it dropped, so wait
    # for the new leader's write itself to reach it
    wait(lambda: ldr.role == "standby" and ldr.heap is not None
         and ldr.heap.stats()["seq"] >= r.seq and int(ldr.heap.roots["t"][1].v) == 1,
         10, "the old leader to follow")
    assert int(ldr.heap.roots["t"][5].v) == 0
    assert ldr.heap.dump() == target.heap.dump()
    with pytest.raises(tha.NotLeader):
        with ldr.leading():
            pass


def test_standby_min_epoch_fences_a_deposed_leader_before_any_frame():
    """Standby(min_epoch=): the newest leader epoch a node knows. An active
    below it (a deposed leader woken from SIGSTOP, frames queued) is fenced
    at its HELLO: no bulk sync, no frame, nothing applied."""
    schema = tha.Schema("struct kv { uint64_t v; };")
    heap = tha.Heap(schema, capacity=4 << 20)
    heap.set_epoch(3)
    t = heap.new("struct kv", count=4)
    heap.roots["t"] = t
    with tha.Standby(secret=b"k", min_epoch=lambda: 4) as sb:
        with tha.Active(heap, [sb.address], secret=b"k") as act:
            with pytest.raises(tha.Fenced):
                act.sync(ack="applied", timeout=10)
        assert sb.heap is None and sb.applied_seq == 0

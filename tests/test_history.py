"""Resume on history (issue 8, item 2): a node resumes incrementally only if
its (epoch, seq) lies on the active's epoch history; anything else is bulk
synced, so writes orphaned by a promotion never survive a rejoin. Real
Active/Standby over loopback TCP, in one process."""

import pytest

import tha
from tha.replication import Active, Standby

CDEF = """
struct rec { uint32_t id; uint32_t writer; double value; struct rec *next; };
"""


def write(heap, recs, writer, rnd):
    """Round rnd of writer: one record changes; touch() for heaps a bulk
    sync made (explicit tracking)."""
    r = recs + (rnd % 16)
    r.writer = writer
    r.value = float(rnd)
    heap.touch(r)


def history(heap):
    return [(e["epoch"], e["start_seq"]) for e in heap.history()]


def test_rejoin_after_two_promotions_is_bulk_synced():
    schema = tha.Schema(CDEF)
    heap_a = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    recs = heap_a.new("struct rec", count=16)
    heap_a.roots["recs"] = recs
    heap_a.touch(recs)

    # A (epoch 0) feeds B up to seq 10, then is cut off.
    b = Standby(secret=b"k")
    act_a = Active(heap_a, [b.address], secret=b"k")
    for rnd in range(10):
        write(heap_a, recs, 1, rnd)
        seq = act_a.sync().seq
    assert seq == 10 and b.applied_seq == 10
    act_a.close()

    # A goes on alone to seq 20: writes nobody acknowledged.
    for rnd in range(10, 20):
        write(heap_a, recs, 666, rnd)
        heap_a.delta()
    assert heap_a.stats()["seq"] == 20

    # B promotes at 10 (epoch 1) and feeds C to 20; C promotes at 20.
    heap_b = b.promote()
    c = Standby(secret=b"k")
    act_b = Active(heap_b, [c.address], secret=b"k")
    recs_b = heap_b.roots["recs"]
    for rnd in range(10, 20):
        write(heap_b, recs_b, 2, rnd)
        seq = act_b.sync().seq
    assert seq == 20 and c.applied_seq == 20
    act_b.close()
    heap_c = c.promote()
    assert history(heap_c) == [(0, 0), (1, 10), (2, 20)]

    # Both rejoin C at C's seq 20. A: same seq, but off C's history after
    # seq 10: bulk. B: at seq 20 of epoch 1, which C's history holds: resumed.
    a_again = Standby(secret=b"k", heap=heap_a)
    b_again = Standby(secret=b"k", heap=heap_b)
    act_c = Active(heap_c, [a_again.address, b_again.address], secret=b"k")
    write(heap_c, heap_c.roots["recs"], 3, 21)
    r = act_c.sync()
    assert a_again.wait_for(r.seq, 10) and b_again.wait_for(r.seq, 10)
    peers = {p["peer"]: p for p in act_c.status()["peers"]}
    assert peers["%s:%d" % a_again.address]["resumed"] is False
    assert peers["%s:%d" % b_again.address]["resumed"] is True
    assert a_again.bulk_syncs == 1 and b_again.bulk_syncs == 0
    for node in (a_again, b_again):
        assert node.heap.dump() == heap_c.dump()
        assert history(node.heap) == [(0, 0), (1, 10), (2, 20)]
        node.heap.check()
    writers = {a_again.heap.roots["recs"][i].writer for i in range(16)}
    assert 666 not in writers and writers <= {0, 1, 2, 3}
    act_c.close()
    for node in (a_again, b_again, b, c):
        node.close()


def test_same_epoch_number_from_two_nodes_is_not_one_history():
    """Two standbys of one active both promote to epoch 1 (split brain):
    their epochs are told apart by id, so one never resumes from the other."""
    schema = tha.Schema(CDEF)
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    recs = heap.new("struct rec", count=16)
    heap.roots["recs"] = recs
    heap.touch(recs)
    s1, s2 = Standby(secret=b"k"), Standby(secret=b"k")
    act = Active(heap, [s1.address, s2.address], secret=b"k")
    for rnd in range(5):
        write(heap, recs, 1, rnd)
        act.sync()
    act.close()
    h1, h2 = s1.promote(), s2.promote()
    assert h1.stats()["epoch"] == h2.stats()["epoch"] == 1
    write(h2, h2.roots["recs"], 2, 7)
    h2.delta()  # s2 goes on alone in its epoch 1
    rejoin = Standby(secret=b"k", heap=h2)
    act1 = Active(h1, [rejoin.address], secret=b"k")
    r = act1.sync()
    assert rejoin.wait_for(r.seq, 10)
    assert act1.status()["peers"][0]["resumed"] is False
    assert rejoin.heap.dump() == h1.dump()
    act1.close()
    rejoin.close()
    s1.close()
    s2.close()


def test_history_survives_checkpoint(tmp_path):
    schema = tha.Schema(CDEF)
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    heap.new("struct rec")
    heap.delta()
    heap.set_epoch(3)
    heap.delta()
    heap.checkpoint(tmp_path / "h.tha")
    loaded = tha.Heap.load(tmp_path / "h.tha")
    assert history(loaded) == [(0, 0), (3, 1)]
    assert loaded.history() == heap.history()
    with pytest.raises(tha.Error, match="not newer"):
        heap.set_epoch(2)

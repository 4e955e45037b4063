"""A promoted standby is an active like any other: its heap tracks changes the
way the application asked (Standby(tracking=)), whether the standby got it
by bulk sync or from its files; heaps made from snapshots and checkpoints
track the way their caller asked."""

import pytest

import tha
from tha.replication import Active, Standby

import org
from org import CDEF


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def company(heap, n=20):
    return org.company(heap, n, mgr=False)


def auto_mechanism(schema):
    return tha.Heap(schema, capacity=1 << 20).stats()["tracking_mechanism"]


MECHANISM = {"diff": "shadow-diff", "explicit": "explicit"}


def feeds_plain_writes(new):
    """A tha.Active on the promoted heap ships a write made without touch()."""
    with Standby() as sb2, Active(new, [sb2.address], timeout=5.0) as act2:
        act2.sync(ack="applied")
        new.roots["staff"][3].salary = 77.5      # a plain write, no touch()
        new.roots["staff"][4].name = b"plain"
        r = act2.sync(ack="applied")
        assert sb2.wait_for(r.seq)
        with sb2.cond:
            got = (sb2.heap.roots["staff"][3].salary,
                   sb2.heap.schema.ffi.string(sb2.heap.roots["staff"][4].name))
            same = sb2.heap.dump() == new.dump()
        return got == (77.5, b"plain") and same


def bulk_synced_standby(schema, **kw):
    heap = tha.Heap(schema, capacity=8 << 20, tracking="explicit")
    company(heap)
    sb = Standby(**kw)
    with Active(heap, [sb.address]) as act:
        r = act.sync(ack="applied")
        assert sb.wait_for(r.seq)
    return sb


def test_promoted_bulk_synced_heap_tracks_plain_writes(schema):
    sb = bulk_synced_standby(schema)
    try:
        # while a standby, the mirror needs no write tracking of its own
        assert sb.heap.stats()["tracking"] == "explicit"
        new = sb.promote()
        st = new.stats()
        assert st["tracking_mechanism"] == auto_mechanism(schema)
        assert st["tracking"] in ("wp", "diff")
        assert feeds_plain_writes(new)
    finally:
        sb.close()


@pytest.mark.parametrize("mode", ["diff", "explicit"])
def test_promoted_heap_takes_the_tracking_asked_for(schema, mode):
    sb = bulk_synced_standby(schema, tracking=mode)
    try:
        new = sb.promote()
        assert new.stats()["tracking"] == mode
        assert new.stats()["tracking_mechanism"] == MECHANISM[mode]
        if mode == "diff":
            assert feeds_plain_writes(new)
    finally:
        sb.close()


def test_standby_refuses_an_unknown_tracking_mode():
    with pytest.raises(tha.Error, match="tracking"):
        Standby(tracking="sometimes")


def test_promoted_heap_from_disk_tracks_the_way_asked(schema, tmp_path):
    save, log = tmp_path / "s.tha", tmp_path / "s.log"
    sb = bulk_synced_standby(schema, save=save, log=log, tracking="diff")
    sb.close()
    sb = Standby(save=save, log=log, tracking="diff")
    try:
        assert sb.heap is not None and sb.load_report is not None
        new = sb.promote()
        assert new.stats()["tracking_mechanism"] == "shadow-diff"
        assert feeds_plain_writes(new)
    finally:
        sb.close()


def test_from_snapshot_and_load_track_the_way_asked(schema, tmp_path):
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    company(heap)
    frame = heap.snapshot()
    heap.checkpoint(tmp_path / "c.tha")
    made = {
        "snapshot-explicit": tha.Heap.from_snapshot(frame, tracking="explicit"),
        "snapshot-diff": tha.Heap.from_snapshot(frame, tracking="diff"),
        "snapshot-auto": tha.Heap.from_snapshot(frame),
        "load-explicit": tha.Heap.load(tmp_path / "c.tha", tracking="explicit"),
        "load-diff": tha.Heap.load(tmp_path / "c.tha", tracking="diff"),
        "load-auto": tha.Heap.load(tmp_path / "c.tha"),
    }
    auto = auto_mechanism(schema)
    for name, h in made.items():
        mode = name.split("-")[1]
        want = auto if mode == "auto" else MECHANISM[mode]
        assert h.stats()["tracking_mechanism"] == want, name
        # a plain write: found by the transparent modes, not by explicit
        mirror = tha.Heap.from_snapshot(h.snapshot(), tracking="explicit")
        h.roots["staff"][2].salary = 9.25
        mirror.apply(h.delta())
        found = mirror.roots["staff"][2].salary == 9.25
        assert found == (mode != "explicit"), name
    with pytest.raises(tha.Error, match="tracking"):
        tha.Heap.from_snapshot(frame, tracking="often")


@pytest.mark.parametrize("start,to", [("explicit", "diff"), ("explicit", "wp"),
                                      ("explicit", "auto"), ("diff", "explicit"),
                                      ("diff", "wp"), ("auto", "explicit"),
                                      ("auto", "diff")])
def test_set_tracking_on_a_live_heap(schema, start, to):
    heap = tha.Heap(schema, capacity=4 << 20, tracking=start)
    es = company(heap)
    mirror = tha.Heap.from_snapshot(heap.snapshot(), tracking="explicit")
    es[1].salary = 1.5           # before the switch, touched: travels in any mode
    heap.touch(es + 1, "salary")
    es[5].salary = 5.5           # before the switch, plain: found if `start` finds it
    heap.set_tracking(to)
    assert heap.stats()["tracking"] == (heap.stats()["tracking"] if to == "auto" else to)
    es[2].salary = 2.5           # after the switch, plain: found if `to` finds it
    mirror.apply(heap.delta())
    assert mirror.roots["staff"][1].salary == 1.5
    assert (mirror.roots["staff"][5].salary == 5.5) == (start != "explicit")
    assert (mirror.roots["staff"][2].salary == 2.5) == (to != "explicit")
    heap.check()
    with pytest.raises(tha.Error, match="tracking"):
        heap.set_tracking("never")

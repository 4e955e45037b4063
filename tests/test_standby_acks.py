"""An ack is a promise: a standby acks a frame only once it is part of its
live state, its on_applied callback has seen it, and (for persisted) its
files hold it. A handler that fails (adopting the heap of a bulk sync, the
checkpoint after it, on_applied raising) aborts the connection without
sending what was queued, logs why, and keeps the previous live state."""

import logging
import os
import shutil
import threading
import time

import pytest

import tha
from tha.replication import Active, Standby, SyncTimeout

CDEF = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def company(schema, n=20):
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = heap.new("struct emp", count=n)
    for i in range(n):
        es[i].id = i
    heap.roots["staff"] = es
    heap.touch(es)
    return heap, es


def bump(heap, es, i, v):
    es[i].salary = v
    heap.touch(es + i, "salary")


class ActiveView:
    """What the active has been told, read from inside a standby callback.
    The standby's lock is held there, so nothing it queued can leave until
    the callback returns; if an ack for `seq` reaches the active within
    `grace`, it left before the callback ran."""

    def __init__(self, grace=0.3):
        self.act = None
        self.grace = grace
        self.seen = []  # (seq, bulk, the active's best ack level for seq)

    def level(self, seq):
        peers = self.act.status()["peers"] if self.act is not None else []
        best = 0
        for p in peers:
            for lvl, key in ((3, "acked_persisted"), (2, "acked_applied"),
                             (1, "acked_received")):
                if p[key] >= seq:
                    best = max(best, lvl)
        return best

    def __call__(self, seq, nbytes, bulk):
        deadline = time.monotonic() + self.grace
        lvl = self.level(seq)
        while not lvl and time.monotonic() < deadline:
            time.sleep(0.01)
            lvl = self.level(seq)
        self.seen.append((seq, bulk, lvl))


@pytest.mark.parametrize("disk", ["none", "save", "save+log"])
def test_on_applied_runs_before_any_ack_leaves(schema, tmp_path, disk):
    heap, es = company(schema)
    view = ActiveView()
    kw = {}
    if disk != "none":
        kw["save"] = tmp_path / "s.tha"
    if disk == "save+log":
        kw["log"] = tmp_path / "s.log"
    ack = "persisted" if disk == "save+log" else "applied"
    with Standby(on_applied=view, **kw) as sb, \
            Active(heap, [sb.address], timeout=5.0) as act:
        view.act = act
        r1 = act.sync(ack=ack)                 # bulk sync
        bump(heap, es, 3, 1.0)
        r2 = act.sync(ack=ack)                 # a delta
        view.grace = 0.0                       # the rest only records
        for k in range(3):
            bump(heap, es, k, 2.0 + k)
            act.sync(ack=ack)
        if disk != "none":
            got = tha.Heap.load(kw["save"], log=kw.get("log"))
            assert got.stats()["seq"] >= (r2.seq if disk == "save+log" else r1.seq)
    assert view.seen[0][:2] == (r1.seq, True)
    assert view.seen[1][:2] == (r2.seq, False)
    early = [s for s in view.seen if s[2]]
    assert not early, f"acks reached the active before on_applied saw them: {early}"


def run_until_timeout(act, ack="applied", timeout=1.0):
    with pytest.raises(SyncTimeout):
        act.sync(ack=ack, timeout=timeout)


def reasons(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "tha")


def test_adopt_failure_is_not_acked_and_keeps_the_old_state(schema, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap, es = company(schema)
    with Standby() as sb:
        with Active(heap, [sb.address], timeout=5.0) as act:
            r = act.sync()
            assert sb.wait_for(r.seq)
        before = sb.heap.dump()
        old_heap = sb.heap

        # the real refusal, injected: Heap._adopt rebuilds the schema the
        # bulk sync carried and checks it lays out the same here
        def refuse(self):
            raise tha.SchemaError("this platform lays the carried schema out "
                                  "differently (injected)")
        monkeypatch.setattr(tha.Schema, "_check_regenerated", refuse)
        other, oes = company(schema)           # another lineage: bulk sync
        bump(other, oes, 1, 5.0)
        with Active(other, [sb.address], timeout=5.0) as act2:
            run_until_timeout(act2)
            assert all(p["acked_applied"] == 0 for p in act2.status()["peers"])
        with sb.cond:
            assert sb.heap is old_heap and sb.heap.dump() == before
            assert sb.applied_seq == r.seq
    assert "lays the carried schema out differently" in reasons(caplog)


def test_adopt_failure_on_the_first_bulk_leaves_no_heap(schema, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap, es = company(schema)

    def refuse(self):
        raise tha.SchemaError("injected adopt failure")
    monkeypatch.setattr(tha.Schema, "_check_regenerated", refuse)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        run_until_timeout(act)
        assert sb.heap is None and sb.applied_seq == 0
    assert "injected adopt failure" in reasons(caplog)


def test_on_applied_raising_on_a_bulk_is_not_acked(schema, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap, es = company(schema)

    def boom(seq, n, bulk):
        raise RuntimeError("the application cannot take it")
    with Standby(on_applied=boom, save=tmp_path / "s.tha") as sb, \
            Active(heap, [sb.address]) as act:
        run_until_timeout(act)
        assert all(p["acked_applied"] == 0 for p in act.status()["peers"])
        assert sb.heap is None and sb.applied_seq == 0
    assert "the application cannot take it" in reasons(caplog)


def test_on_applied_raising_on_a_delta_sends_no_ack_on_that_connection(schema, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    heap, es = company(schema)
    fail_at = []

    def cb(seq, n, bulk):
        if fail_at and seq == fail_at[0]:
            fail_at.clear()  # once
            raise RuntimeError(f"callback refused seq {seq}")
    with Standby(on_applied=cb) as sb, Active(heap, [sb.address], timeout=5.0) as act:
        r = act.sync()
        acks = []  # (connection, seq) of every ACK the active receives
        orig = act._on_event

        def spy(conn, ev):
            if ev.type == tha._lib.THA_EV_ACK:
                acks.append((id(conn), ev.seq))
            orig(conn, ev)
        act._on_event = spy
        first = id(act.conns[0])
        bump(heap, es, 2, 9.0)
        fail_at.append(r.seq + 1)
        r2 = act.sync()   # answered by the reconnected standby (it has the frame)
        assert r2.seq == r.seq + 1
        assert not [s for c, s in acks if c == first and s >= r2.seq]
        assert sb.wait_for(r2.seq)
    assert f"callback refused seq {r.seq + 1}" in reasons(caplog)


def test_checkpoint_failure_after_a_bulk_goes_live_in_memory(schema, tmp_path, caplog):
    """A bulk sync whose checkpoint cannot be written still goes live (acked
    applied: it is in the live heap) but is not acked persisted; the standby
    says why and writes it by itself once the disk is back."""
    caplog.set_level(logging.INFO, logger="tha")
    heap, es = company(schema)
    d = tmp_path / "gone"
    d.mkdir()
    with Standby(save=d / "s.tha", log=d / "s.log") as sb:
        shutil.rmtree(d)                     # the disk cannot take the new state
        with Active(heap, [sb.address], timeout=5.0) as act:
            r = act.sync(ack="applied")
            assert sb.wait_for(r.seq)
            run_until_timeout(act, ack="persisted")
            assert sb.disk_error and str(d) in sb.disk_error
            assert sb.bulk_syncs == 1        # one bulk, not one per retry
            d.mkdir()                        # the disk is back
            r = None
            for _ in range(10):
                try:
                    r = act.sync(ack="persisted", timeout=1.0)
                    break
                except SyncTimeout:
                    continue
            assert r is not None, "the standby did not write its state once it could"
            assert sb.disk_error is None
        assert tha.Heap.load(d / "s.tha", log=d / "s.log").stats()["seq"] == r.seq
    assert str(d) in reasons(caplog)

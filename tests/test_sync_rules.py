"""Two rules of an active's frame series, over real loopback TCP:

* the heap an Active replicates makes its frames through the Active's
  backlog only: ``heap.delta()``/``snapshot()`` on it is refused with a
  clear error and the next ``sync()`` still carries every change;
* ``sync()`` never fails because another thread writes the heap while it
  encodes (diff and wp tracking find plain writes; a write racing with a
  sync lands in that frame or the next).
"""

import threading

import pytest

import tha
from tha.replication import Active, Standby

from org import CDEF, company


SYNCS = 60  # before the fix, the first few already failed


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


@pytest.mark.parametrize("tracking", ["explicit", "diff"])
def test_heap_delta_on_an_active_heap_is_refused(schema, tracking):
    heap = tha.Heap(schema, capacity=8 << 20, tracking=tracking)
    es = company(heap, 50)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        r = act.sync()
        assert sb.wait_for(r.seq, 10)
        es[3].salary = 42.0
        heap.touch(es + 3, "salary")
        seq = heap.stats()["seq"]
        for make in (heap.delta, heap.snapshot):
            with pytest.raises(tha.StateError, match=r"Active\.sync\(\)"):
                make()
        other = tha.Heap(schema, capacity=8 << 20, tracking=tracking)
        with pytest.raises(tha.StateError, match="backlog"):
            heap.apply(other.snapshot())  # nor does it take frames from elsewhere
        st = heap.stats()
        assert st["seq"] == seq and st["dirty_blocks"] > 0  # nothing changed
        r = act.sync()
        assert r.seq == seq + 1
        assert sb.applied_seq == r.seq
        assert sb.heap.dump() == heap.dump()
        es[4].salary = 43.0
        heap.touch(es + 4, "salary")
        assert act.sync().seq == seq + 2
        assert sb.heap.dump() == heap.dump()
    # a closed Active lets go of the heap: it makes its own frames again
    assert heap.delta()


@pytest.mark.parametrize("tracking", ["diff", "wp", "wp-mprotect"])
def test_sync_while_a_thread_writes(schema, tracking, monkeypatch):
    if tracking == "wp-mprotect":
        monkeypatch.setenv("THA_WP_MECHANISM", "mprotect")
        tracking = "wp"
    heap = tha.Heap(schema, capacity=32 << 20, tracking=tracking)
    # ~4.8 MB of structs, written in address order: the set of changed
    # blocks keeps growing while a sync looks for it (the race of sizing a
    # delta, then finding more changes while encoding it)
    n = 40000
    es = company(heap, n)
    stop = threading.Event()
    writes = [0]

    def writer():
        k = 0
        while not stop.is_set():
            for i in range(k % 7, n, 7):
                es[i].salary = float(k)
            k += 1
        writes[0] = k

    with Standby() as sb, Active(heap, [sb.address]) as act:
        r = act.sync()
        assert sb.wait_for(r.seq, 10)
        t = threading.Thread(target=writer)
        t.start()
        try:
            syncs = 0
            for _ in range(SYNCS):
                act.sync()  # must never raise
                syncs += 1
        finally:
            stop.set()
            t.join()
        assert syncs == SYNCS and writes[0] > 0
        r = act.sync()
        assert sb.applied_seq == r.seq
        assert sb.heap.dump() == heap.dump()

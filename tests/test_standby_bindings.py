"""A standby binds the functions and data externs the active's heap points
at before its bulk sync's heap is made (Standby(functions=, externs=), or
the bindings of the heap it was given). A word naming one it left unbound
refuses the active for good, by name: before, each bulk sync failed at its
first function pointer and was sent again, ten times a second, while the
active's sync() only said "not connected"."""

import time

import cffi
import pytest

import tha
from tha.replication import Active, Standby

FFI = cffi.FFI()
FFI.cdef("int abs(int); long labs(long);")
LIBC = FFI.dlopen(None)
CDEF = """
struct ops { int (*f)(int); long (*g)(long); char *label; struct ops *next; };
"""
LABELS = FFI.new("char[16]", b"alpha\0beta")   # the active's extern
HERE = FFI.new("char[16]", b"alpha\0beta")     # the standby's own copy
SMALL = FFI.new("char[8]")
FUNCS = {"abs": LIBC.abs, "labs": LIBC.labs}


def active_heap(externs=True):
    schema = tha.Schema(CDEF, functions=FUNCS,
                        externs={"labels": LABELS} if externs else None)
    heap = tha.Heap(schema, capacity=1 << 20, tracking="explicit")
    o = heap.new("struct ops", count=2)
    o[0].f, o[0].g, o[0].next = LIBC.abs, LIBC.labs, o + 1
    o[1].f = LIBC.abs
    if externs:
        o[0].label, o[1].label = LABELS, LABELS + 6
    heap.roots["ops"] = o
    return heap


def check_mirror(sb, externs=True):
    """The bulk-synced mirror calls the standby's functions and points into
    its own copy of the extern."""
    with sb.cond:
        o = sb.heap.roots["ops"]
        assert o[0].f(-5) == 5 and o[0].g(-7) == 7 and o[0].next.f(-2) == 2
        if externs:
            assert o[0].label == HERE and o[1].label == HERE + 6
            assert FFI.string(o[1].label) == b"beta"
        sb.heap.check()
        return o


def test_heapless_standby_binds_functions_and_externs():
    heap = active_heap()
    with Standby(functions=FUNCS, externs={"labels": HERE}) as sb, \
            Active(heap, [sb.address]) as act:
        act.sync(ack="applied")
        check_mirror(sb)
        o = heap.roots["ops"]
        o[1].g, o[1].label = LIBC.labs, LABELS + 1  # a delta of both kinds
        heap.touch(o + 1)
        act.sync(ack="applied")
        with sb.cond:
            m = sb.heap.roots["ops"]
            assert m[1].g(-3) == 3 and m[1].label == HERE + 1
            assert sb.heap.dump()["objects"][0]["value"][0]["f"] == "abs"


def test_a_standby_heap_lends_its_bindings_to_the_bulk_sync():
    mine = tha.Heap(tha.Schema(CDEF, functions=FUNCS), capacity=1 << 20)
    heap = active_heap(externs=False)  # another lineage: a bulk sync
    with Standby(heap=mine) as sb, Active(heap, [sb.address]) as act:
        act.sync(ack="applied")
        check_mirror(sb, externs=False)
        assert sb.bulk_syncs == 1


@pytest.mark.parametrize("functions,externs,named,images", [
    (None, None, "function 'abs'", 1),
    ({"abs": LIBC.abs}, {"labels": HERE}, "function 'labs'", 1),
    (FUNCS, None, "extern 'labels'", 1),
    (FUNCS, {"labels": SMALL}, "binds only 8", 0),  # at the handshake
])
def test_unbound_names_refuse_the_active_once(functions, externs, named, images):
    heap = active_heap()
    with Standby(functions=functions, externs=externs) as sb, \
            Active(heap, [sb.address]) as act:
        with pytest.raises(tha.SchemaMismatch, match=named):
            act.sync(ack="applied", timeout=5)
        time.sleep(0.5)  # the old loop sent the image again every ~0.1 s
        assert sb.heap is None and sb.bulk_syncs == images


def test_names_declared_but_unused_need_no_binding():
    schema = tha.Schema(CDEF, functions=FUNCS, externs={"labels": LABELS})
    heap = tha.Heap(schema, capacity=1 << 20, tracking="explicit")
    o = heap.new("struct ops", count=2)
    o[0].next = o + 1
    heap.roots["ops"] = o
    with Standby() as sb, Active(heap, [sb.address]) as act:
        act.sync(ack="applied")
        o[1].next = o
        heap.touch(o + 1)
        act.sync(ack="applied")
        with sb.cond:
            m = sb.heap.roots["ops"]
            assert m[1].next == m and m[0].f == FFI.NULL


def test_bad_bindings_are_refused_at_start():
    with pytest.raises(tha.SchemaError, match="function 'abs'"):
        Standby(functions={"abs": "not a function"})
    with pytest.raises(tha.SchemaError, match="size"):
        Standby(externs={"labels": FFI.cast("void *", HERE)})



def test_bindings_the_active_does_not_declare_are_ignored():
    """A standby's functions/externs may name more than one active's schema
    declares (one registry for several heaps): the extra names are left
    out, as tha_schema_bind_from does, not a bulk sync refused at go-live
    (NotFound 'never declared') and sent again, over and over."""
    other = cffi.FFI()
    other.cdef("int atoi(const char *);")
    extra = FFI.new("char[4]")
    heap = active_heap()
    with Standby(functions=dict(FUNCS, unused_fn=other.dlopen(None).atoi),
                 externs={"labels": HERE, "unused": extra}) as sb, \
            Active(heap, [sb.address]) as act:
        act.sync(ack="applied", timeout=5)
        check_mirror(sb)
        assert sb.bulk_syncs == 1


def test_a_cluster_node_standby_binds_externs():
    """tha.Node(functions=, externs=) hands both to the standby it runs: a
    heapless member mirrors a leader whose heap points into an extern
    (before, Node took no externs: refused by name, forever)."""
    import os
    import sys
    import time
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
    from etcd_server import free_port
    from tha.cluster import Node, PairCoordinator
    a_port, b_port = free_port(), free_port()
    a = Node("a", f"127.0.0.1:{a_port}", create=active_heap, coordinator=PairCoordinator(
        "a", f"127.0.0.1:{b_port}", leader=True, loop_wait=0.05))
    b = Node("b", f"127.0.0.1:{b_port}", functions=FUNCS, externs={"labels": HERE},
             coordinator=PairCoordinator("b", f"127.0.0.1:{a_port}", leader=False,
                                         promote_after=30, loop_wait=0.05))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if a.is_leader and b.standby is not None:
                    a.sync(timeout=2)
                    break
            except tha.Error:
                pass
            assert time.monotonic() < deadline, "the pair never synced"
            time.sleep(0.1)
        check_mirror(b.standby)
    finally:
        a.close()
        b.close()


def test_a_standby_heap_lends_what_the_bindings_leave_out():
    """Standby(heap=, functions=): the heap's extern binding still counts
    (before, functions= hid it: refused, 'labels' not bound in this process,
    though the standby's heap binds it)."""
    mine = tha.Heap(tha.Schema(CDEF, functions=FUNCS, externs={"labels": HERE}),
                    capacity=1 << 20)
    with Standby(heap=mine, functions=FUNCS) as sb, \
            Active(active_heap(), [sb.address]) as act:
        act.sync(ack="applied", timeout=5)
        check_mirror(sb)

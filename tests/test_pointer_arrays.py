"""Pointers to pointers ("struct ent **buckets", "char **names"): an array of
pointer words is an allocation of the implicit pointer type ("struct ent *"),
checked, reached for leaks, type checked, carried in frames and files, and
mirrored to a standby that knows the schema only from the bulk sync."""

import pytest

import tha
from tha.replication import Active, Standby

CDEF = """
struct ent { uint64_t key; struct ent *next; };
struct table { uint32_t nbuckets; struct ent **buckets; char **names;
               struct ent ***rows; };
"""
NB = 16


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def insert(heap, t, key):
    e = heap.new("struct ent", key=key)
    b = key % t.nbuckets
    e.next = t.buckets[b]
    t.buckets[b] = e
    heap.touch(t.buckets + b)
    return e


def table(heap, n=200):
    t = heap.new("struct table", nbuckets=NB)
    t.buckets = heap.new("struct ent *", NB)
    t.names = heap.new("char *", 2)
    t.names[1] = heap.new("char", 6)
    heap.schema.ffi.memmove(t.names[1], b"hello", 5)
    for k in range(1, n + 1):
        insert(heap, t, k)
    heap.roots["table"] = t
    return t


def keys(t):
    out = []
    for b in range(t.nbuckets):
        e = t.buckets[b]
        while e:
            assert e.key % t.nbuckets == b
            out.append(e.key)
            e = e.next
    return sorted(out)


def test_pointer_types_are_schema_types(schema):
    assert {"struct ent *", "char *", "struct ent **"} <= set(schema.type_names())
    assert schema.type_id("struct ent *") != schema.type_id("struct ent")
    heap = tha.Heap(schema, capacity=4 << 20)
    p = heap.new("struct ent *", 3)
    assert schema.ffi.typeof(p) is schema.ffi.typeof("struct ent **")
    assert [x for x in p[0:3]] == [schema.ffi.NULL] * 3
    e = heap.new("struct ent", key=5)
    p[2] = e
    assert p[2].key == 5
    heap.roots["p"] = p
    heap.check()
    assert heap.roots["p"][2].key == 5  # a root may be a pointer array
    objs = {o["type"] for o in heap.dump()["objects"]}
    assert "struct ent *" in objs


def test_hash_table_checks_and_leaks(schema):
    heap = tha.Heap(schema, capacity=4 << 20)
    heap.set_debug(types=True)
    t = table(heap)
    heap.check()
    assert heap.leaks() == []  # entries reached only through the array
    gone = t.buckets[3]
    t.buckets[3] = gone.next
    leaks = heap.leaks()
    assert len(leaks) == 1 and "struct ent" in str(leaks[0])
    t.buckets[3] = schema.ffi.cast("struct ent *", t)  # a table where an entry goes
    with pytest.raises(tha.Error, match="struct ent"):
        heap.check()


def test_snapshot_and_schema_bytes_carry_them(schema):
    heap = tha.Heap(schema, capacity=4 << 20)
    t = table(heap)
    again = tha.Schema.from_bytes(schema.to_bytes())
    assert again.fingerprint == schema.fingerprint
    assert "struct ent **buckets" in again.cdef
    m = tha.Heap.from_snapshot(heap.snapshot())
    mt = m.roots["table"]
    assert m.base != heap.base and keys(mt) == keys(t) == list(range(1, 201))
    assert m.schema.ffi.string(mt.names[1]) == b"hello" and mt.names[0] == m.schema.ffi.NULL
    m.check()


def test_checkpoint_round_trip(schema, tmp_path):
    heap = tha.Heap(schema, capacity=4 << 20)
    t = table(heap, 50)
    t.rows = heap.new("struct ent **", 2)
    t.rows[1] = t.buckets
    heap.checkpoint(tmp_path / "c.tha")
    back = tha.Heap.load(tmp_path / "c.tha")
    bt = back.roots["table"]
    assert keys(bt) == list(range(1, 51))
    assert bt.rows[1] == bt.buckets and bt.rows[1][1].key % NB == 1
    back.check()


@pytest.mark.parametrize("tracking", ["explicit", "wp", "diff"])
def test_mirrored_to_a_standby_without_the_schema(schema, tracking):
    heap = tha.Heap(schema, capacity=8 << 20, tracking=tracking)
    t = table(heap)
    with Standby() as sb, Active(heap, [sb.address]) as act:
        act.sync(ack="applied")
        assert keys(sb.heap.roots["table"]) == list(range(1, 201))
        for k in range(201, 301):
            insert(heap, t, k)
        t.buckets[0] = heap.schema.ffi.NULL  # a chain dropped
        heap.touch(t.buckets)
        act.sync(ack="applied")
        with sb.cond:
            st = sb.heap.roots["table"]
            assert keys(st) == [k for k in range(1, 301) if k % NB]
            assert sb.heap.dump() == heap.dump()
            sb.heap.check()

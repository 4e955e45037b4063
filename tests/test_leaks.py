"""heap.leaks() and heap.collect(): reachability from the roots through the
relocation tables, on graphs with cycles, shared subtrees, interior
pointers and pointers in arrays and nested structs; collect() leaves the
heap equal (by dump) to one built without the garbage, and mirrors follow
it through a delta."""

import random
from collections import deque

import pytest

import tha
from conftest import HOOKS, RICH_CDEF

EMP = "struct emp"


@pytest.fixture
def heap(rich_schema):
    return tha.Heap(rich_schema, capacity=16 << 20)


def offsets(leaks):
    return {lk.offset for lk in leaks}


def test_empty_heap_and_unrooted_objects(heap):
    assert heap.leaks() == [] and heap.collect() == 0
    a = heap.new(EMP, id=1)
    b = heap.new("struct dept")
    a.dept = b
    # cdata held by Python is not a root
    leaks = heap.leaks()
    assert leaks == [tha.Leak(EMP, 1, heap.offset_of(a), heap.schema.ffi.sizeof(EMP)),
                     tha.Leak("struct dept", 1, heap.offset_of(b),
                              heap.schema.ffi.sizeof("struct dept"))]
    assert leaks[0].type == EMP and leaks[0]._asdict()["count"] == 1
    assert heap.collect() == sum(lk.bytes for lk in leaks)
    assert heap.stats()["live_objects"] == 0
    heap.check()


def test_cycles(heap):
    a, b, c = (heap.new(EMP, id=i) for i in range(3))
    a.mgr, b.mgr, c.mgr = b, c, a          # rooted ring
    d, e = heap.new(EMP, id=3), heap.new(EMP, id=4)
    d.reports[0], e.reports[3] = e, d      # unrooted ring
    s = heap.new(EMP, id=5)
    s.mgr = s                              # self loop
    heap.roots["ring"] = c
    assert offsets(heap.leaks()) == {heap.offset_of(p) for p in (d, e, s)}
    assert heap.collect() == 3 * heap.schema.ffi.sizeof(EMP)
    assert heap.leaks() == []
    assert heap.roots["ring"].mgr.mgr.mgr.id == 2
    heap.check()


def test_shared_subtrees(heap):
    r1, r2, shared = heap.new(EMP), heap.new(EMP), heap.new(EMP)
    left, right, bottom = heap.new(EMP), heap.new(EMP), heap.new(EMP)
    r1.reports[0] = shared
    r2.reports[1] = shared
    shared.reports[0], shared.reports[1] = left, right
    left.mgr = right.mgr = bottom          # a diamond under the shared node
    heap.roots["r1"], heap.roots["r2"] = r1, r2
    assert heap.leaks() == []
    del heap.roots["r1"]
    assert offsets(heap.leaks()) == {heap.offset_of(r1)}
    del heap.roots["r2"]
    assert len(heap.leaks()) == 6


def test_interior_pointers(heap):
    root = heap.new(EMP)
    heap.roots["root"] = root
    buf = heap.new("char", count=100)
    root.note = buf + 57                   # char * into the middle of a buffer
    team = heap.new(EMP, count=8)
    ffi = heap.schema.ffi
    root.any = ffi.addressof(team[5], "salary")  # void * to a field of an element
    depts = heap.new("struct dept", count=4)
    root.home.office = depts + 3           # struct pointer to the last element
    words = heap.new("uint64_t", count=16)
    heap.roots["words"] = words + 9        # an interior root
    tail = heap.new("char", count=16)
    root.mgr = ffi.cast("struct emp *", ffi.cast("char *", tail) + 16)  # one past the end
    assert offsets(heap.leaks()) == {heap.offset_of(tail)}
    root.mgr = ffi.NULL
    assert heap.collect() == 16
    heap.check()
    assert heap.stats()["live_objects"] == 5


def test_pointers_in_arrays_and_nested_structs(heap):
    team = heap.new(EMP, count=10)
    heap.roots["team"] = team
    x, y, z, w = (heap.new(EMP, id=i) for i in range(4))
    team[7].reports[3] = x                 # last slot of a pointer array
    team[9].mgr = y                        # the last element of the allocation
    d = heap.new("struct dept")
    x.past[1].office = d                   # array of nested structs
    x.id = heap.offset_of(w)               # an integer: not a reference
    x.any = z
    assert offsets(heap.leaks()) == {heap.offset_of(w)}
    team[7].reports[3] = heap.schema.ffi.NULL
    assert offsets(heap.leaks()) == {heap.offset_of(p) for p in (x, z, w, d)}


def test_function_pointers_are_not_references(heap):
    root = heap.new(EMP)
    heap.roots["root"] = root
    root.hook = HOOKS["ping"]
    victim = heap.new(EMP)
    assert offsets(heap.leaks()) == {heap.offset_of(victim)}
    heap.collect()
    assert heap.dump()["objects"][0]["value"][0]["hook"] == "ping"
    heap.check()


def test_garbage_pointing_into_live_data(heap):
    live, child = heap.new(EMP, id=1), heap.new(EMP, id=2)
    live.reports[0] = child
    heap.roots["live"] = live
    g1, g2 = heap.new(EMP), heap.new(EMP)
    g1.mgr, g1.reports[2], g1.any = live, child, g2
    g2.note = heap.new("char", count=3)  # reached only from garbage
    assert len(heap.leaks()) == 3
    heap.collect()
    assert heap.roots["live"].reports[0].id == 2
    heap.check()


def test_many_leaks_and_large_spans(heap):
    """More leaks than the first buffer holds (256), and page spans."""
    keep = heap.new(EMP, count=500)        # a page span
    heap.roots["keep"] = keep
    for i in range(600):
        heap.new("struct dept", id=i)
    big = heap.new(EMP, count=400)         # an unreachable span
    keep[499].reports[1] = heap.new(EMP)
    leaks = heap.leaks()
    assert len(leaks) == 601
    assert [lk.offset for lk in leaks] == sorted(lk.offset for lk in leaks)
    assert leaks[-1] == tha.Leak(EMP, 400, heap.offset_of(big),
                                 400 * heap.schema.ffi.sizeof(EMP))
    assert heap.collect() == 600 * heap.schema.ffi.sizeof("struct dept") + leaks[-1].bytes
    heap.check()
    assert heap.stats()["live_objects"] == 2


# ---- collect() == a heap built without the garbage --------------------------

def build(heap, rng, garbage: bool) -> list:
    """A live graph of 200 emps and 20 depts with cycles, shared subtrees,
    interior pointers and pointers in arrays, the same for every seed;
    with ``garbage`` unreachable objects (some pointing into the live
    graph) are allocated between the live ones. Returns the garbage."""
    ffi = heap.schema.ffi
    junk = []

    def maybe_junk():
        if garbage and rng.random() < 0.5:
            j = heap.new(rng.choice((EMP, "struct dept", "char")),
                         count=rng.choice((None, 3)))
            junk.append(j)
            if junk and ffi.typeof(j) is ffi.typeof("struct emp *"):
                j.mgr = emps[-1] if emps else ffi.NULL  # garbage -> live
                j.any = junk[rng.randrange(len(junk))]    # garbage -> garbage

    g = random.Random(42)  # the live graph never depends on rng
    emps, depts = [], []
    for i in range(20):
        maybe_junk()
        depts.append(heap.new("struct dept", id=i, name=b"d%d" % i))
    for i in range(200):
        maybe_junk()
        e = heap.new(EMP, id=i, salary=i * 1.5, name=b"e%d" % i)
        if i:
            e.mgr = emps[(i - 1) // 4]                 # a tree ...
            emps[(i - 1) // 4].reports[(i - 1) % 4] = e
        e.dept = depts[g.randrange(20)]                # ... sharing depts
        e.home.office = depts[g.randrange(20)]
        e.past[1].office = depts[g.randrange(20)]      # nested struct arrays
        if i and g.random() < 0.3:
            e.any = ffi.addressof(emps[g.randrange(i)][0], "salary")  # interior
        emps.append(e)
    emps[0].mgr = emps[199]                            # a cycle through the root
    note = heap.new("char", count=64)
    emps[5].note = note + 10
    team = heap.new(EMP, count=5)
    emps[7].reports[0] = team + 2                      # into an array allocation
    team[4].mgr = emps[3]
    heap.roots["boss"] = emps[0]
    heap.roots["depts"] = depts[0]
    return junk


def canonical(heap) -> dict:
    """The dump with every offset replaced by (n, byte) where n numbers the
    allocations in breadth-first order from the roots (sorted by name) and
    byte is the position inside it: equal for equal graphs wherever they
    were allocated. Fails if anything is unreachable."""
    ffi, schema = heap.schema.ffi, heap.schema
    d = heap.dump()
    objs = {o["offset"]: o for o in d["objects"]}
    starts = sorted(objs)
    sizes = {o: ffi.sizeof(schema.ctype(objs[o]["type"])) * objs[o]["count"]
             for o in starts}
    ids, order = {}, deque()

    def ref(off):
        if off is None:
            return None
        import bisect
        start = starts[bisect.bisect_right(starts, off) - 1]
        assert off < start + sizes[start], off
        if start not in ids:
            ids[start] = len(ids)
            order.append(start)
        return (ids[start], off - start)

    def conv(ctype, v):
        if ctype.kind == "pointer":
            return ref(v)
        if ctype.kind == "struct":
            return {name: conv(f.type, v[name]) for name, f in ctype.fields}
        if ctype.kind == "array" and ctype.item.cname != "char":
            return [conv(ctype.item, x) for x in v]
        return v

    roots = {name: ref(off) for name, off in sorted(d["roots"].items())}
    out = []
    while order:
        o = objs[order.popleft()]
        ctype = schema.ctype(o["type"])
        value = o["value"] if ctype.cname == "char" else \
            [conv(ctype, x) for x in o["value"]]
        out.append((o["type"], o["count"], value))
    assert len(out) == len(objs), "unreachable objects left"
    return {"roots": roots, "objects": out}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_collect_equals_heap_built_without_garbage(rich_schema, seed):
    clean = tha.Heap(rich_schema, capacity=16 << 20)
    assert build(clean, random.Random(seed), garbage=False) == []
    assert clean.leaks() == []
    dirty = tha.Heap(rich_schema, capacity=16 << 20)
    junk = build(dirty, random.Random(seed), garbage=True)
    assert junk
    leaks = dirty.leaks()
    assert offsets(leaks) == {dirty.offset_of(j) for j in junk}
    # the same allocation sequence with the garbage freed by hand
    manual = tha.Heap(rich_schema, capacity=16 << 20)
    junk2 = build(manual, random.Random(seed), garbage=True)
    for j in reversed(junk2):
        manual.free(j)
    freed = dirty.collect()
    assert freed == sum(lk.bytes for lk in leaks)
    dirty.check()
    assert dirty.dump() == manual.dump()          # exactly, offsets and all
    assert canonical(dirty) == canonical(clean)   # the same graph as if never there
    assert dirty.stats()["live_bytes"] == clean.stats()["live_bytes"]


@pytest.mark.parametrize("tracking", ["explicit", "auto"])
def test_mirror_follows_collect_by_delta(rich_schema, tracking):
    src = tha.Heap(rich_schema, capacity=16 << 20, tracking=tracking)
    build(src, random.Random(5), garbage=True)
    mirror = tha.Heap.from_snapshot(src.snapshot(), functions=HOOKS)
    assert len(mirror.leaks()) == len(src.leaks()) > 0
    freed = src.collect()
    assert freed > 0
    mirror.apply(src.delta())
    mirror.check()
    assert mirror.dump() == src.dump()
    assert mirror.leaks() == []
    assert mirror.stats()["live_bytes"] == src.stats()["live_bytes"]


def test_random_graphs_against_a_reference(rich_schema):
    """Edges through every kind of slot; tha's answer equals a search in
    Python over the same edges."""
    rng = random.Random(9)
    for _ in range(15):
        heap = tha.Heap(rich_schema, capacity=8 << 20)
        ffi = heap.schema.ffi
        n = 120
        nodes = [heap.new(EMP, id=i) for i in range(n)]
        edges = {i: set() for i in range(n)}
        for _ in range(rng.randrange(2 * n)):
            a, b = rng.randrange(n), rng.randrange(n)
            kind = rng.randrange(5)
            if kind == 0:
                nodes[a].mgr = nodes[b]
            elif kind == 1:
                nodes[a].reports[rng.randrange(4)] = nodes[b]
            elif kind == 2:
                nodes[a].any = ffi.addressof(nodes[b][0], "salary")
            elif kind == 3:
                nodes[a].note = ffi.cast("char *", nodes[b]) + 3
            else:
                nodes[a].id = heap.offset_of(nodes[b])  # not an edge
                continue
        size = ffi.sizeof(EMP)
        start = {heap.offset_of(p): j for j, p in enumerate(nodes)}
        for i, p in enumerate(nodes):  # the edges as they ended up
            for t in [p.mgr, *p.reports, p.any, p.note]:
                if t != ffi.NULL:
                    off = heap.offset_of(t)
                    (j,) = [j for o, j in start.items() if o <= off < o + size]
                    edges[i].add(j)
        roots = rng.sample(range(n), rng.randrange(4))
        for k, r in enumerate(roots):
            heap.roots[f"r{k}"] = nodes[r]
        seen, todo = set(roots), list(roots)
        while todo:
            for t in edges[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        want = {heap.offset_of(nodes[i]) for i in range(n) if i not in seen}
        assert offsets(heap.leaks()) == want
        heap.collect()
        heap.check()
        assert heap.stats()["live_objects"] == len(seen)


def test_schema_from_declarations_only():
    """leaks() on a heap rebuilt from a snapshot (schema from the frame)."""
    s = tha.Schema(RICH_CDEF, functions=HOOKS)
    h = tha.Heap(s, capacity=4 << 20)
    h.roots["a"] = h.new(EMP)
    h.new("struct dept")
    m = tha.Heap.from_snapshot(h.snapshot())
    assert [lk.type for lk in m.leaks()] == ["struct dept"]

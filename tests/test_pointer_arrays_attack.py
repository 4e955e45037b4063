"""Pointer-to-pointer fields attacked: schema bytes a C peer (or a hostile
one) sends, and the Python API on pointer arrays. Each test of a finding
failed before its fix; the rest pin down what held."""

import struct

import pytest

import tha
from tha._ffi import ffi, lib


# -- schema bytes, written by hand (the canonical byte form, format 1) ------

def _s(x: str) -> bytes:
    return struct.pack("<H", len(x)) + x.encode()


def _field(name, kind, target="", off=0, prim=0, dims=(0, 0, 0, 0)):
    return (_s(name) + struct.pack("<III", off, kind, prim) + _s(target)
            + struct.pack("<4I", *dims) + struct.pack("<II", 0, 0) + _s(""))


def _blob(types) -> bytes:
    """types: (name, size, align, [fields], is_union), put in canonical order."""
    types = sorted(types, key=lambda t: (t[4], t[0].encode()))
    out = struct.pack("<IIII", 0x53414854, 1, len(types), 0)
    for name, size, align, fields, union in types:
        out += _s(name) + struct.pack("<IQQI", union, size, align, len(fields))
        out += b"".join(fields)
    return out


P, SC = lib.THA_K_PTR, lib.THA_K_SCALAR
ENT = ("ent", 8, 8, [_field("k", SC, prim=lib.THA_T_U64)], 0)


def _ptr(name, target):
    return (name, 8, 8, [_field("ptr", P, target)], 0)


def _deser(b: bytes):
    out, msg = ffi.new("tha_schema_t **"), ffi.new("char[256]")
    rc = lib.tha_schema_deserialize(b, len(b), out, msg, 256)
    if rc == 0:
        lib.tha_schema_release(out[0])
    return rc, ffi.string(msg).decode()


def _hand_registered():
    """What a C program registers for a root that is an array of pointers
    (static struct ent **table): "ent*" by hand, in exactly the implicit
    shape (tha.h allows it), no field naming it."""
    out, tid = ffi.new("tha_schema_t **"), ffi.new("uint32_t *")
    assert lib.tha_schema_create(out) == 0
    c = ffi.gc(out[0], lib.tha_schema_release)
    keep = [ffi.new("char[]", x) for x in (b"k", b"ptr", b"ent")]
    assert lib.tha_schema_add_struct(c, b"ent", 8, 8, 0, tid) == 0
    f = ffi.new("tha_field_t *", {"name": keep[0], "kind": SC, "prim": lib.THA_T_U64})
    assert lib.tha_schema_add_field(c, tid[0], f) == 0
    assert lib.tha_schema_add_struct(c, b"ent*", 8, 8, 0, tid) == 0
    f = ffi.new("tha_field_t *", {"name": keep[1], "kind": P, "target": keep[2]})
    assert lib.tha_schema_add_field(c, tid[0], f) == 0
    assert lib.tha_schema_seal(c) == 0
    n = ffi.new("size_t *")
    assert lib.tha_schema_serialize(c, ffi.NULL, 0, n) == 0
    buf = ffi.new("char[]", n[0])
    assert lib.tha_schema_serialize(c, buf, n[0], n) == 0
    return ffi.buffer(buf, n[0])[:]


@pytest.mark.parametrize("types", [
    [ENT, _ptr("ent*", "ent")],                        # hand-registered, unused
    [_ptr("void*", "void"), _ptr("char*", "char")],
    [ENT] + [_ptr("ent" + "*" * i, "ent" + "*" * (i - 1)) for i in range(1, 60)],
], ids=["ent*", "void*,char*", "ent*59"])
def test_pointer_types_no_field_names_read_back(types):
    """Finding: Schema.from_bytes rebuilt declarations only from fields, so
    a pointer type no field names was missing from the rebuilt schema:
    SchemaError 'only one side has pointer type ent*' for a valid C schema."""
    b = _blob(types)
    assert _deser(b)[0] == 0
    s = tha.Schema.from_bytes(b)
    assert s.to_bytes() == b
    assert {t[0] for t in types} <= {n.replace("struct ", "").replace(" ", "")
                                     for n in s.type_names()}


def test_standby_of_a_c_root_pointer_array():
    """The heap of such a C program, read by Python from its snapshot."""
    s = tha.Schema.from_bytes(_hand_registered())
    h = tha.Heap(s, capacity=1 << 20)
    arr = h.new("struct ent *", 3)
    arr[1] = h.new("struct ent", k=7)
    h.roots["table"] = arr
    m = tha.Heap.from_snapshot(h.snapshot())
    assert m.roots["table"][1].k == 7 and m.roots["table"][0] == m.schema.ffi.NULL
    m.check()


def test_pointer_type_python_cannot_spell_is_a_schema_error():
    """Finding: a pointer type to the untyped bytes type ("tha_raw*", valid
    in C) reached cffi unguarded: CDefError instead of SchemaError."""
    b = _blob([_ptr("tha_raw*", "tha_raw")])
    assert _deser(b)[0] == 0
    with pytest.raises(tha.SchemaError, match="tha_raw"):
        tha.Schema.from_bytes(b)


@pytest.mark.parametrize("types,needle", [
    ([_ptr("ent*", "ent")], "unregistered type 'ent'"),
    ([ENT, ("t", 8, 8, [_field("b", P, "ent*")], 0)], "unregistered type 'ent*'"),
    ([ENT, _ptr("ent*", "ent"), _ptr("ent***", "ent**")], "'ent**'"),
    ([ENT, ("ent*", 16, 8, [_field("ptr", P, "ent")], 0)], "implicit pointer type"),
    ([ENT, ("ent*", 8, 8, [_field("ptr", P, "ent")], 1)], "implicit pointer type"),
    ([ENT, ("ent*", 8, 8, [_field("p", P, "ent")], 0)], "implicit pointer type"),
    ([ENT, ("ent*", 8, 8, [_field("ptr", SC, prim=lib.THA_T_U64)], 0)],
     "implicit pointer type"),
    ([ENT, ("ent*", 8, 8, [_field("ptr", P, "ent", dims=(1, 0, 0, 0))], 0)],
     "implicit pointer type"),
    ([ENT, _ptr("x", "ent"), _ptr("ent*", "x")], "implicit pointer type"),
    ([_ptr("ent*", "ent*")], "implicit pointer type"),
    ([_ptr("int*", "int32_t")], "a star may only end"),
    ([ENT, _ptr("e*nt", "ent")], "a star may only end"),
    ([_ptr("**", "*")], "a star may only end"),
    ([ENT, _ptr("ent*", "ent"),
      ("t", 8, 8, [_field("b", lib.THA_K_STRUCT, "ent*")], 0)], "by value"),
])
def test_hostile_pointer_types_refused_by_name(types, needle):
    """Held: odd shapes, missing bases, gaps in a star chain, stars in the
    wrong place, a pointer type held by value: refused, naming it."""
    rc, msg = _deser(_blob(types))
    assert rc != 0 and needle in msg, msg
    with pytest.raises(tha.Error):
        tha.Schema.from_bytes(_blob(types))


# -- the Python API on pointer arrays ---------------------------------------

def test_arrays_of_pointers_to_c_spelled_primitives():
    """Finding: a field 'unsigned int **u' (cffi keeps that spelling) had
    only a 'uint32_t *' array to point at: heap.new('unsigned int *') was
    NotFound and t.u = heap.new('uint32_t *', n) a cffi TypeError."""
    s = tha.Schema("struct t { unsigned int **u; long **l; unsigned long ***ul; "
                   "uint32_t **v; };")
    h = tha.Heap(s, capacity=1 << 20)
    t = h.new("struct t")
    h.roots["t"] = t
    t.u = h.new("unsigned int *", 2)
    t.l = h.new("long *", 1)
    t.ul = h.new("unsigned long **", 1)
    t.v = h.new("uint32_t *", 1)
    t.u[1] = h.new("unsigned int", 1)
    t.u[1][0] = 42
    t.l[0] = h.new("long", 1)
    t.ul[0] = h.new("unsigned long *", 1)
    assert s.type_id("unsigned int *") == s.type_id("uint32_t *")
    assert s.type_id("unsigned long **") == s.type_id("uint64_t **")
    h.set_debug(types=True)
    h.check()
    assert h.leaks() == []
    m = tha.Heap.from_snapshot(h.snapshot())
    assert m.roots["t"].u[1][0] == 42
    m.check()


@pytest.mark.parametrize("tracking", ["explicit", "diff"])
def test_store_many_into_a_pointer_array(tracking):
    """Finding: store_many needed a field path, and an element of a pointer
    array has none: '' was NotFound, None an AttributeError. None (or '')
    now writes the elements themselves."""
    s = tha.Schema("struct ent { uint64_t key; struct ent *next; };"
                   "struct t { struct ent **b; };")
    h = tha.Heap(s, capacity=1 << 20, tracking=tracking)
    t = h.new("struct t")
    h.roots["t"] = t
    t.b = h.new("struct ent *", 8)
    ents = h.new("struct ent", 4)
    m = tha.Heap.from_snapshot(h.snapshot())
    h.store_many(t.b, None, range(4), [3, 2, 1, None], target=ents)
    h.store_many(t.b + 4, "", [0, 2], [0, 1], target=ents)
    assert [t.b[i] for i in range(8)] == [ents + 3, ents + 2, ents + 1, s.ffi.NULL,
                                          ents, s.ffi.NULL, ents + 1, s.ffi.NULL]
    m.apply(h.delta())
    mt = m.roots["t"]
    assert mt.b[0] == m.roots["t"].b[0] and mt.b[6] != m.schema.ffi.NULL
    assert m.dump() == h.dump()
    m.check()
    with pytest.raises(tha.Error, match="points to struct ent"):
        h.store_many(t.b, None, [0], [0], target=t)
    with pytest.raises(tha.Error, match="name the field"):
        h.store_many(ents, None, [0], [0])
    nums = h.new("uint32_t", 4)
    h.store_many(nums, None, range(4), [5, 6, 7, 8])
    assert list(nums[0:4]) == [5, 6, 7, 8]


def _c_schema(fields):
    """struct t { fields } registered from C: (name, offset, target)."""
    out, tid = ffi.new("tha_schema_t **"), ffi.new("uint32_t *")
    assert lib.tha_schema_create(out) == 0
    c = ffi.gc(out[0], lib.tha_schema_release)
    keep = []
    assert lib.tha_schema_add_struct(c, b"ent", 16, 8, 0, tid) == 0
    ent = tid[0]
    assert lib.tha_schema_add_struct(c, b"t", 8 * len(fields), 8, 0, tid) == 0
    for name, off, target, owner in [("k", 0, None, ent), ("next", 8, "ent", ent)] + \
            [(n, o, tg, tid[0]) for n, o, tg in fields]:
        keep += [ffi.new("char[]", name.encode())]
        f = ffi.new("tha_field_t *", {"name": keep[-1], "offset": off})
        if target is None:
            f.kind, f.prim = SC, lib.THA_T_U64
        else:
            keep.append(ffi.new("char[]", target.encode()))
            f.kind, f.target = P, keep[-1]
        assert lib.tha_schema_add_field(c, owner, f) == 0, \
            ffi.string(lib.tha_schema_errmsg(c))
    assert lib.tha_schema_seal(c) == 0, ffi.string(lib.tha_schema_errmsg(c))
    return c


@pytest.mark.parametrize("spellings", [
    ("struct ent *", "const char *", "unsigned int **", "void *"),
    ("ent*", "char const*", "uint32_t  * *", "void*"),
])
def test_c_and_python_peers_agree(spellings):
    """Held (and, for const, a finding fixed in C): one declaration, built
    in C with its targets ("struct ent *" for struct ent **a) in any
    spelling and in Python, is one fingerprint and one set of type ids."""
    py = tha.Schema("struct ent { uint64_t k; struct ent *next; };"
                    "struct t { struct ent **a; const char **b; unsigned ***c; "
                    "void **d; };")
    c = _c_schema([(n, 8 * i, tg) for i, (n, tg) in enumerate(zip("abcd", spellings))])
    assert lib.tha_schema_fingerprint(c) == py.fingerprint
    for name in ("ent*", "char*", "uint32_t**", "uint32_t*", "void*"):
        a, b = ffi.new("uint32_t *"), ffi.new("uint32_t *")
        assert lib.tha_schema_type_by_name(c, name.encode(), a) == 0
        assert lib.tha_schema_type_by_name(py._c, name.encode(), b) == 0
        assert a[0] == b[0]


def test_arrays_of_pointers_to_enums_and_typedefs():
    """Finding (as above, for the spellings no fixed list holds): enum e
    **p and a typedef'd integer's myint **q had no array of their own."""
    s = tha.Schema("enum e { A, B }; typedef unsigned short myint;"
                   "struct t { enum e **p; myint ***q; };")
    h = tha.Heap(s, capacity=1 << 20)
    t = h.new("struct t")
    h.roots["t"] = t
    t.p = h.new("enum e *", 2)
    t.p[1] = s.ffi.cast("enum e *", h.new("uint32_t", 1))  # (no enum e type)
    t.p[1][0] = 1
    t.q = h.new("myint **", 1)
    t.q[0] = h.new("myint *", 1)
    h.set_debug(types=True)
    h.check()
    assert h.leaks() == []
    assert tha.Heap.from_snapshot(h.snapshot()).roots["t"].p[1][0] == 1


def test_same_address_pointer_arrays(tmp_path):
    """Held: a same-address heap's pointer arrays (to structs, to untyped
    bytes through void **) travel as addresses and load back at the base."""
    import gc
    s = tha.Schema("struct ent { uint64_t key; struct ent *next; };"
                   "struct t { struct ent **b; void **raw; };")
    base = 0x2e0000000000
    a = tha.Heap(s, 4 << 20, base=base)
    t = a.new("struct t")
    a.roots["t"] = t
    t.b = a.new("struct ent *", 4)
    t.b[3] = a.new("struct ent", key=9)
    t.raw = a.new("void *", 2)
    t.raw[1] = a.new_raw(40)
    a.check()
    snap = a.snapshot()
    a.checkpoint(tmp_path / "ck")
    del t, a
    gc.collect()
    m = tha.Heap.from_snapshot(snap)
    assert m.base == base and m.roots["t"].b[3].key == 9
    m.check()
    del m
    gc.collect()
    back = tha.Heap.load(tmp_path / "ck")
    assert back.roots["t"].b[3].key == 9 and back.roots["t"].raw[1] != s.ffi.NULL
    back.check()
    assert back.leaks() == []


@pytest.mark.parametrize("cdef,field", [
    ("struct ent; struct t { int x; struct ent **b; };", "struct t field b"),
    ("struct t { int x; struct ghost ***b; };", "struct t field b"),
])
def test_pointer_to_pointer_to_nothing_names_the_field(cdef, field):
    """Finding: the error named only the implicit type ('pointer type ent*
    field ptr'), not the declaration that needs it."""
    with pytest.raises(tha.SchemaError, match=field):
        tha.Schema(cdef)


def test_heapless_standby_of_a_hand_registered_pointer_type():
    """The finding above through replication: a standby that learns the
    schema from the bulk sync rebuilds a pointer type no field names."""
    from tha.replication import Active, Standby
    s = tha.Schema.from_bytes(_hand_registered())
    h = tha.Heap(s, capacity=4 << 20)
    arr = h.new("struct ent *", 4)
    arr[2] = h.new("struct ent", k=5)
    h.roots["table"] = arr
    with Standby() as sb, Active(h, [sb.address]) as act:
        act.sync(ack="applied")
        arr[0] = h.new("struct ent", k=6)
        h.touch(arr)
        act.sync(ack="applied")
        with sb.cond:
            st = sb.heap.roots["table"]
            assert st[2].k == 5 and st[0].k == 6
            sb.heap.check()


def test_tailq_spelled_as_c_declares_it():
    """The type-check finding for sys/queue.h as its macros expand in a
    cdef: tqe_prev and tqh_last are struct job ** into a nested struct's
    pointer field (job.link.tqe_next) or the head's tqh_first."""
    s = tha.Schema("""
        struct job;
        struct job_link { struct job *tqe_next; struct job **tqe_prev; };
        struct job { uint64_t id; struct job_link link; };
        struct jobq { struct job *tqh_first; struct job **tqh_last; };
    """)
    h = tha.Heap(s, capacity=1 << 20)
    h.set_debug(types=True)
    q = h.new("struct jobq")
    h.roots["q"] = q
    q.tqh_last = s.ffi.addressof(q, "tqh_first")
    for i in range(5):  # TAILQ_INSERT_TAIL
        j = h.new("struct job", id=i)
        j.link.tqe_prev = q.tqh_last
        q.tqh_last[0] = j
        q.tqh_last = s.ffi.addressof(j.link, "tqe_next")
    h.check()
    m = tha.Heap.from_snapshot(h.snapshot())
    m.set_debug(types=True)
    m.check()
    mq, ids, j = m.roots["q"], [], m.roots["q"].tqh_first
    while j:
        assert j.link.tqe_prev[0] == j
        ids.append(j.id)
        j = j.link.tqe_next
    assert ids == list(range(5))


def test_pointer_types_cost_no_parse_each(monkeypatch):
    """Finding: every pointer type cost one cffi parse of the whole
    declaration table (ffi.typeof('struct sN *')), O(n^2) for n of them:
    4,000 structs with a struct sN ** field took 2.3x a schema without.
    The ctypes come from the layout pass (_warm) instead."""
    import cffi
    calls = []
    real = cffi.FFI.typeof
    monkeypatch.setattr(cffi.FFI, "typeof",
                        lambda self, cdecl: calls.append(cdecl) or real(self, cdecl))
    n = 200
    s = tha.Schema("".join(f"struct s{i} {{ int x; struct s{i} **p; "
                           f"unsigned **u; }};" for i in range(n)))
    assert sum(isinstance(c, str) for c in calls) < 40, calls[:50]
    assert s.type_id("struct s7 *") != s.type_id("struct s8 *")
    assert s.ffi.typeof(tha.Heap(s, capacity=1 << 20).new("struct s7 *", 2)) \
        is s.ffi.typeof("struct s7 **")

"""Data externs and tagged pointers through the Python binding (issue 11
items 2 and 3): a pointer into a static object outside the heap travels by
name and lands in the receiver's own object; one into nothing registered
fails delta()/snapshot() with a tha.Error that names the object, the field,
the value and the fix; a pointer field annotated with a tag mask carries a
tagged NULL, an unannotated one refuses it."""
import pytest

import tha

CDEF = """
struct job { uint64_t id; char *key; struct job *next; void *prev; };
struct tn { uint64_t key; struct tn *parent; /* tha: tag_mask=0x1 */
            struct tn *plain; };
"""
CAP = 1 << 20


def _side(word: bytes):
    """One process's externs: a list head (two pointers) and a key."""
    schema_ffi = tha.Schema("struct pad { char c; };").ffi
    head = schema_ffi.new("void *[2]")
    key = schema_ffi.new("char[]", word)
    return head, key


def _schema(head, key):
    return tha.Schema(CDEF, externs={"jobs_head": head, "key": key})


def test_extern_pointers_resolve_to_the_receivers_objects():
    head_a, key_a = _side(b"alpha")
    head_b, key_b = _side(b"alpha")
    sa, sb = _schema(head_a, key_a), _schema(head_b, key_b)
    assert sa.fingerprint == sb.fingerprint
    assert sa.externs() == {"jobs_head": (16, int(sa.ffi.cast("uintptr_t", head_a))),
                            "key": (6, int(sa.ffi.cast("uintptr_t", key_a)))}
    src = tha.Heap(sa, CAP, tracking="explicit")
    j = src.new("struct job", id=7)
    j.key = sa.ffi.cast("char *", key_a) + 2           # "pha": inside the extern
    j.prev = sa.ffi.cast("void *", head_a)             # &head.first
    src.roots["j"] = j
    mirror = tha.Heap(sb, CAP)
    mirror.apply(src.snapshot())
    m = mirror.roots["j"]
    ffi = sb.ffi
    assert int(ffi.cast("uintptr_t", m.key)) == int(ffi.cast("uintptr_t", key_b)) + 2
    assert ffi.string(m.key) == b"pha"
    assert int(ffi.cast("uintptr_t", m.prev)) == int(ffi.cast("uintptr_t", head_b))
    mirror.check()
    assert mirror.dump() == src.dump()                 # the extern by name
    assert src.dump()["objects"][0]["value"][0]["key"] == "&key+2"
    # a delta, and a snapshot taken into a heap of its own
    j.key = sa.ffi.cast("char *", key_a)
    src.touch(j)
    mirror.apply(src.delta())
    assert ffi.string(mirror.roots["j"].key) == b"alpha"
    _, key_c = _side(b"alpha")
    c = tha.Heap.from_snapshot(src.snapshot(), externs={"jobs_head": head_b, "key": key_c})
    assert c.schema.ffi.string(c.roots["j"].key) == b"alpha"
    assert c.schema.externs()["key"] == (6, int(ffi.cast("uintptr_t", key_c)))


def test_unbound_extern_is_refused_by_apply():
    head_a, key_a = _side(b"alpha")
    src = tha.Heap(_schema(head_a, key_a), CAP, tracking="explicit")
    j = src.new("struct job", id=1)
    j.key = src.schema.ffi.cast("char *", key_a)
    src.roots["j"] = j
    frame = src.snapshot()
    with pytest.raises(tha.FrameError) as ei:
        tha.Heap.from_snapshot(frame)
    assert "extern 'key'" in str(ei.value) and "not bound" in str(ei.value)
    mirror = tha.Heap(tha.Schema(CDEF, externs={"jobs_head": (None, 16), "key": (None, 6)}),
                      CAP)
    with pytest.raises(tha.FrameError, match="extern 'key' .* not bound"):
        mirror.apply(frame)
    assert mirror.stats()["seq"] == 0
    _, key_b = _side(b"alpha")
    mirror.schema.bind_extern("key", key_b)
    mirror.apply(frame)
    mirror.check()
    mirror.schema.bind_extern("key", None)            # unbound again:
    with pytest.raises(tha.CorruptHeap, match="outside the heap"):
        mirror.check()                                # the word it resolved is foreign


def test_foreign_pointer_error_names_object_field_value_and_fix():
    head, key = _side(b"alpha")
    src = tha.Heap(_schema(head, key), CAP, tracking="explicit")
    ffi = src.schema.ffi
    stray = ffi.new("char[]", b"not registered")
    jobs = src.new("struct job", 3)
    src.roots["jobs"] = jobs
    src.snapshot()
    jobs[2].key = stray
    src.touch(jobs)
    before = src.stats()
    with pytest.raises(tha.InvalidPointer) as ei:
        src.delta()
    assert isinstance(ei.value, tha.Error)
    msg = str(ei.value)
    for word in ("struct job field key", "element 2 of the object at 0x",
                 f"0x{int(ffi.cast('uintptr_t', stray)):x}", "tha_schema_add_extern",
                 "clear the field"):
        assert word in msg, (word, msg)
    assert src.stats()["seq"] == before["seq"]
    with pytest.raises(tha.InvalidPointer):          # every frame, until fixed
        src.snapshot()
    jobs[2].key = ffi.NULL
    src.delta()


def test_tagged_null_travels_only_in_an_annotated_field():
    schema = tha.Schema(CDEF)
    src = tha.Heap(schema, CAP, tracking="explicit")
    ffi = schema.ffi
    root, kid = src.new("struct tn", key=1), src.new("struct tn", key=2)
    root.parent = ffi.cast("struct tn *", 1)          # red root: a tagged NULL
    kid.parent = ffi.cast("struct tn *", int(ffi.cast("uintptr_t", root)) | 1)
    src.roots["root"], src.roots["kid"] = root, kid
    mirror = tha.Heap(tha.Schema(CDEF), CAP)
    mirror.apply(src.snapshot())
    mirror.check()
    mroot, mkid = mirror.roots["root"], mirror.roots["kid"]
    assert int(ffi.cast("uintptr_t", mroot.parent)) == 1
    assert int(ffi.cast("uintptr_t", mkid.parent)) == int(ffi.cast("uintptr_t", mroot)) | 1
    assert mirror.dump() == src.dump()
    assert src.dump()["objects"][0]["value"][0]["parent"] == "NULL|0x1"
    root.plain = ffi.cast("struct tn *", 1)           # not annotated
    src.touch(root)
    with pytest.raises(tha.InvalidPointer) as ei:
        src.delta()
    assert "struct tn field plain" in str(ei.value)
    assert "tagged NULL" in str(ei.value) and "tag_mask" in str(ei.value)
    root.plain = ffi.NULL
    root.parent = ffi.cast("struct tn *", 2)          # outside the mask
    with pytest.raises(tha.InvalidPointer, match="tag mask 0x1"):
        src.delta()
    root.parent = ffi.NULL
    mirror.apply(src.delta())
    assert mirror.roots["root"].parent == ffi.NULL


def test_schema_carries_masks_and_externs():
    head, key = _side(b"alpha")
    s = _schema(head, key)
    again = tha.Schema.from_bytes(s.to_bytes())
    assert again.compare(s) is None and again.fingerprint == s.fingerprint
    assert "struct tn *parent; /* tha: tag_mask=0x1 */" in again.cdef
    assert again.externs() == {"jobs_head": (16, None), "key": (6, None)}
    plain = tha.Schema(CDEF.replace("/* tha: tag_mask=0x1 */", ""),
                       externs={"jobs_head": head, "key": key})
    assert plain.fingerprint != s.fingerprint
    assert s.compare(plain) == "struct tn field parent: tag mask 0x1 vs 0x0"
    other = tha.Schema(CDEF, externs={"jobs_head": head, "key": (None, 7)})
    assert s.compare(other) == "extern 'key': size 6 vs 7"


@pytest.mark.parametrize("cdef, words", [
    ("struct t { struct t *p /* tha: tag_mask=0x1 */; };", "follows no field"),
    ("struct t { struct t *p; };\n/* tha: tag_mask=0x1 */", "follows no field"),
    ("struct t { struct t *p; /* tha: colour=1 */ };", "unknown tha annotation"),
    ("struct t { struct t *p; /* tha: tag_mask=0x8 */ };", "struct t field p: tag mask 0x8"),
    ("struct t { uint64_t k; /* tha: tag_mask=0x1 */ };", "struct t field k: tag mask 0x1"),
])
def test_bad_annotations_are_refused(cdef, words):
    with pytest.raises(tha.SchemaError, match=words):
        tha.Schema(cdef)


def test_extern_arguments_are_checked():
    head, key = _side(b"alpha")
    ffi = tha.Schema("struct pad { char c; };").ffi
    with pytest.raises(tha.SchemaError, match="size .* unknown"):
        tha.Schema(CDEF, externs={"v": ffi.cast("void *", 4096)})
    with pytest.raises(tha.SchemaError, match="expected"):
        tha.Schema(CDEF, externs={"v": (key, "six")})
    s = _schema(head, key)
    with pytest.raises(tha.SchemaError, match="3 bytes, the extern is declared with 6"):
        s.bind_extern("key", ffi.new("char[3]"))
    with pytest.raises(tha.NotFound, match="never declared"):
        s.bind_extern("nope", key)
    with pytest.raises(tha.InvalidArgument, match="overlaps extern 'jobs_head'"):
        s.bind_extern("key", int(ffi.cast("uintptr_t", head)) + 8)


def test_checkpoint_with_externs_loads(tmp_path):
    head_a, key_a = _side(b"beta")
    src = tha.Heap(_schema(head_a, key_a), CAP, tracking="explicit")
    j = src.new("struct job", id=3)
    j.key = src.schema.ffi.cast("char *", key_a)
    src.roots["j"] = j
    path = tmp_path / "ckpt"
    src.checkpoint(path)
    head_b, key_b = _side(b"beta")
    heap = tha.Heap.load(path, externs={"jobs_head": head_b, "key": key_b})
    assert heap.schema.ffi.string(heap.roots["j"].key) == b"beta"
    with pytest.raises(tha.Error, match="extern 'key'"):
        tha.Heap.load(path)

"""Schema: accepted field kinds, layout equal to a real C compiler's,
refused layouts, fingerprint, byte form and comparison."""
import shutil
import subprocess

import pytest

import tha
from tha._ffi import ffi as CFFI, lib

from conftest import HOOKS, RICH_CDEF, SMALL_CDEF


def _fields(schema, name):
    """{field: (kind, offset, dims, target)} from the C side."""
    info = CFFI.new("tha_type_info_t *")
    f = CFFI.new("tha_field_t *")
    tid = schema.type_id(name)
    assert lib.tha_schema_type_info(schema._c, tid, info) == 0
    out = {}
    for i in range(info.nfields):
        assert lib.tha_schema_field_info(schema._c, tid, i, f) == 0
        s = CFFI.string
        out[s(f.name).decode()] = (f.kind, f.offset, [d for d in f.dims if d],
                                   s(f.target).decode() if f.target else "")
    return out, info


def test_field_kinds_accepted(rich_schema):
    fields, info = _fields(rich_schema, "struct emp")
    assert fields["id"][0] == lib.THA_K_SCALAR
    assert fields["name"][0] == lib.THA_K_SCALAR and fields["name"][2] == [32]
    assert fields["mgr"][0:4:3] == (lib.THA_K_PTR, "emp")
    assert fields["reports"][0] == lib.THA_K_PTR and fields["reports"][2] == [4]
    assert fields["note"][0:4:3] == (lib.THA_K_PTR, "char")
    assert fields["any"][0:4:3] == (lib.THA_K_PTR, "void")
    assert fields["home"][0:4:3] == (lib.THA_K_STRUCT, "addr")
    assert fields["past"][2] == [2]
    assert fields["grid"][2] == [2, 3]
    assert fields["v"][0:4:3] == (lib.THA_K_STRUCT, "val")
    assert fields["level"][0] == lib.THA_K_BITS
    assert fields["hook"][0] == lib.THA_K_FUNC
    # mgr, dept, reports[4], note, any, home.office, past[2].office, hook
    assert info.nslots == 1 + 1 + 4 + 1 + 1 + 1 + 2 + 1
    assert sorted(rich_schema.type_names()) == ["struct addr", "struct dept",
                                                "struct emp", "union val"]


def test_typedefs_enums_and_spellings():
    s = tha.Schema("""
        typedef struct node { long key; unsigned short tag; struct node *next; } node_t;
        enum color { RED, GREEN };
        struct box { node_t head; node_t *tail; enum color c; _Bool ok;
                     signed char sc; unsigned long long big; size_t n; };
    """)
    assert sorted(s.type_names()) == ["struct box", "struct node"]
    fields, _ = _fields(s, "box")
    assert fields["head"][3] == "node" and fields["tail"][3] == "node"
    h = tha.Heap(s, 1 << 20)
    b = h.new("struct box")
    assert h.dump()["objects"][0]["type"] == "struct box"
    assert h.new("node_t") is not None


# ---- layout equals gcc's ----------------------------------------------------

LAYOUT_CDEF = RICH_CDEF + """
struct mixed { char c; double d; uint16_t s; uint8_t b; int64_t q; float f;
               char tail[3]; };
struct bits { uint8_t a : 3; uint8_t b : 4; uint16_t c : 9; uint32_t d : 20;
              uint64_t e : 40; char after; };
struct nest { struct mixed m[3]; struct bits bb; uint8_t x; struct mixed last; };
"""
LAYOUT_FIELDS = {
    "emp": ["name", "id", "salary", "mgr", "dept", "reports", "note", "any",
            "home", "past", "grid", "v", "hook"],
    "addr": ["street", "zip", "office"],
    "mixed": ["c", "d", "s", "b", "q", "f", "tail"],
    "bits": ["after"],
    "nest": ["m", "bb", "x", "last"],
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_layout_matches_gcc(tmp_path):
    schema = tha.Schema(LAYOUT_CDEF, functions=HOOKS)
    lines = []
    for kind, name in [("struct", n) for n in LAYOUT_FIELDS] + [("union", "val")]:
        t = f"{kind} {name}"
        lines.append(f'printf("{t} size %zu align %zu\\n", sizeof({t}), _Alignof({t}));')
        for f in LAYOUT_FIELDS.get(name, []):
            lines.append(f'printf("{t} {f} %zu\\n", offsetof({t}, {f}));')
    src = ("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
           + LAYOUT_CDEF + "\nint main(void) {\n" + "\n".join(lines)
           + "\nreturn 0;\n}\n")
    (tmp_path / "layout.c").write_text(src)
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-std=c11", "-o", str(exe), str(tmp_path / "layout.c")],
                   check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    ffi = schema.ffi
    want = []
    for kind, name in [("struct", n) for n in LAYOUT_FIELDS] + [("union", "val")]:
        t = f"{kind} {name}"
        want.append(f"{t} size {ffi.sizeof(t)} align {ffi.alignof(t)}")
        for f in LAYOUT_FIELDS.get(name, []):
            want.append(f"{t} {f} {ffi.offsetof(t, f)}")
    assert got == want
    # The C schema registered the same numbers.
    info = CFFI.new("tha_type_info_t *")
    for kind, name in [("struct", n) for n in LAYOUT_FIELDS]:
        assert lib.tha_schema_type_info(schema._c, schema.type_id(name), info) == 0
        assert (info.size, info.align) == (ffi.sizeof(f"{kind} {name}"),
                                           ffi.alignof(f"{kind} {name}"))
        fields, _ = _fields(schema, name)
        for f in LAYOUT_FIELDS[name]:
            assert fields[f][1] == ffi.offsetof(f"{kind} {name}", f), (name, f)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_bitfield_storage_matches_gcc(tmp_path):
    """Values written through cffi land on the bits gcc reads."""
    cdef = "struct bits { uint8_t a : 3; uint8_t b : 4; uint16_t c : 9; " \
           "uint32_t d : 20; uint64_t e : 40; char after; };"
    schema = tha.Schema(cdef)
    p = schema.ffi.new("struct bits *", dict(a=5, b=9, c=300, d=777777,
                                             e=(1 << 39) + 12345, after=b"z"))
    raw = bytes(schema.ffi.buffer(p))
    src = ("#include <stdio.h>\n#include <stdint.h>\n#include <string.h>\n" + cdef +
           "\nint main(void){ unsigned char b[] = {" + ",".join(map(str, raw)) +
           "}; struct bits x; memcpy(&x, b, sizeof x);"
           ' printf("%u %u %u %u %llu %c", x.a, x.b, x.c, x.d,'
           " (unsigned long long)x.e, x.after); return sizeof x != sizeof b; }")
    (tmp_path / "bits.c").write_text(src)
    subprocess.run(["gcc", "-o", str(tmp_path / "bits"), str(tmp_path / "bits.c")],
                   check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "bits")], check=True, capture_output=True,
                         text=True).stdout
    assert out == f"5 9 300 777777 {(1 << 39) + 12345} z"


# ---- refused layouts ----------------------------------------------------------

REFUSED = [
    ("struct a { int x; }; union u { struct a *p; int i; }; struct h { union u v; };",
     ["union u", "p", "pointers"]),
    ("struct w { int x; union { struct w *p; long i; }; };",
     ["struct w", "field p", "anonymous union"]),
    ("struct f { int n; int data[]; };", ["struct f", "data", "flexible array"]),
    ("struct p { int x; int (**fp)(int); };", ["struct p", "fp", "pointer to"]),
    ("struct o { int a; struct { int b; } in; };", ["struct o", "in", "anonymous"]),
    ("struct o { int a; struct { int b; }; };", ["struct o", "field b", "anonymous"]),
    ("struct l { int a; long double d; };", ["struct l", "alignment 16"]),
    ("struct z { int a; struct nowhere *p; };",
     ["struct z", "field p", "unregistered type 'nowhere'"]),
    ("typedef struct { int q; } T; struct w { T *t; };", ["struct w", "field t"]),
    ("struct c { int x; char *names[2][2]; int (*cb)(int); wchar_t w; };",
     ["struct c", "w", "wchar_t"]),
]


@pytest.mark.parametrize("cdef,words", REFUSED)
def test_unsupported_layouts_refused(cdef, words):
    with pytest.raises(tha.SchemaError) as ei:
        tha.Schema(cdef)
    assert isinstance(ei.value, tha.Error)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_unparsable_declarations():
    with pytest.raises(tha.SchemaError, match="cannot parse"):
        tha.Schema("struct x { int a; ")


# ---- fingerprint, byte form, comparison --------------------------------------

def test_fingerprint_stable_and_sensitive():
    a, b = tha.Schema(SMALL_CDEF), tha.Schema(SMALL_CDEF)
    assert a.fingerprint == b.fingerprint
    assert a.compare(b) is None
    changed = tha.Schema(SMALL_CDEF.replace("double salary", "float salary"))
    assert changed.fingerprint != a.fingerprint
    renamed = tha.Schema(SMALL_CDEF.replace("uint32_t id; };", "uint32_t code; };"))
    assert renamed.fingerprint != a.fingerprint
    # function names are part of the fingerprint, addresses are not
    fa = tha.Schema(RICH_CDEF, functions=HOOKS)
    fb = tha.Schema(RICH_CDEF, functions={"ping": HOOKS["pong"],
                                          "pong": HOOKS["ping"]})
    fc = tha.Schema(RICH_CDEF, functions={"ping": HOOKS["ping"]})
    assert fa.fingerprint == fb.fingerprint != fc.fingerprint


def test_compare_names_the_field():
    a = tha.Schema(SMALL_CDEF)
    b = tha.Schema(SMALL_CDEF.replace("double salary", "float salary"))
    msg = a.compare(b)
    assert "salary" in msg and "emp" in msg
    c = tha.Schema(SMALL_CDEF.replace("struct emp *reports[4]", "struct emp *reports[5]"))
    assert "reports" in a.compare(c)


def test_bytes_round_trip(rich_schema):
    data = rich_schema.to_bytes()
    back = tha.Schema.from_bytes(data)
    assert back.fingerprint == rich_schema.fingerprint
    assert back.compare(rich_schema) is None
    assert back.to_bytes() == data
    assert back.type_names() == rich_schema.type_names()
    for t in ("struct emp", "struct addr", "union val", "struct dept"):
        assert back.ffi.sizeof(t) == rich_schema.ffi.sizeof(t)
    assert back.ffi.offsetof("struct emp", "hook") == \
        rich_schema.ffi.offsetof("struct emp", "hook")


def test_from_bytes_refuses_garbage(rich_schema):
    data = rich_schema.to_bytes()
    for bad in (b"", b"\0" * 16, data[:-1], data[: len(data) // 2]):
        with pytest.raises(tha.FrameError):
            tha.Schema.from_bytes(bad)


def test_late_binding():
    """A struct may point to (and the heap mirror) one declared after it."""
    s = tha.Schema("""
        struct a { struct b *later; struct a *self; int x; };
        struct b { char tag[8]; struct a *back; };
    """)
    fields, _ = _fields(s, "a")
    assert fields["later"][3] == "b"
    h = tha.Heap(s, 1 << 20, tracking="explicit")
    a, b = h.new("struct a", x=1), h.new("struct b", tag=b"bee")
    a.later, b.back = b, a
    h.touch(a), h.touch(b)
    h.roots["a"] = a
    m = tha.Heap(s, 1 << 20)
    m.apply(h.snapshot())
    assert m.schema.ffi.string(m.roots["a"].later.tag) == b"bee"
    assert m.roots["a"].later.back.x == 1


def test_unknown_type_and_function():
    s = tha.Schema(SMALL_CDEF)
    with pytest.raises(tha.NotFound):
        s.type_id("struct nope")
    with pytest.raises(tha.Error):
        s.bind("nope", HOOKS["ping"])


def test_warm_parser_makes_a_fresh_process_parse_warm():
    """tha.schema.warm_parser() pays cffi's one-time parser set-up (what a
    fresh standby's first Schema.from_bytes used to pay after its bulk
    sync's last byte); it is idempotent and leaves parsing unchanged."""
    import sys
    code = (
        "import tha.schema as s, cffi.cparser as cp\n"
        "assert not s._parser_warm\n"
        "s.warm_parser(); s.warm_parser()\n"
        "assert s._parser_warm\n"
        "sch = s.Schema('struct a { int x; struct a *n; };')\n"
        "assert s.Schema.from_bytes(sch.to_bytes()).compare(sch) is None\n"
        "from tha import Standby\n"
        "s._parser_warm = False\n"
        "sb = Standby(('127.0.0.1', 0)); sb.close()\n"
        "assert s._parser_warm, 'a Standby without a heap warms the parser'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

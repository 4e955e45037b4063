"""One canonical schema: the same structs give the same byte form, type ids
and fingerprint whatever the declaration order or language (C macros or the
cdef parser); a Python process with no application code loads a heap built
by a C program that registered its structs in any order."""
import itertools
import subprocess
from pathlib import Path

import pytest

import tha

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"

# engineer < ll_node < manager < skill by name, but engineer holds skills by
# value and manager holds an engineer and a union by value: a cdef rebuilt
# in canonical (name) order must still define skill before engineer.
DECLS = {
    "skill": "struct skill { char tag[8]; uint16_t years; };",
    "pay": "union pay { uint64_t cents; double ratio; uint8_t raw[8]; };",
    "engineer": """struct engineer { char name[24]; uint32_t level;
        struct manager *boss; struct skill skills[3]; unsigned char *badge;
        int (*rate)(int, char *); unsigned int *hours; };""",
    "ll_node": """struct ll_node { uint32_t key; struct ll_node *next;
        struct engineer *owner; void (*visit)(void); };""",
    "manager": """struct manager { struct engineer self;
        struct engineer *reports[4]; union pay pay; double budget;
        uint16_t grid[2][3]; };""",
}
FORWARD = "struct manager; struct engineer;\n"
FUNCS = ("visit", "rate", "spare")
TYPES = [("union " if k == "pay" else "struct ") + k for k in DECLS]


def cdef(order):
    return FORWARD + "\n".join(DECLS[k] for k in order)


def fns(names=FUNCS):
    """Placeholder addresses for the declared functions, in this order."""
    return {f: 0x1000 + 16 * FUNCS.index(f) for f in names}


ORDERS = [
    ("skill", "pay", "engineer", "ll_node", "manager"),
    ("ll_node", "engineer", "manager", "skill", "pay")[::-1],
    ("pay", "skill", "engineer", "manager", "ll_node"),
]


def test_python_orders_same_bytes():
    ref = tha.Schema(cdef(ORDERS[0]), fns())
    for order in ORDERS:
        for funcs in itertools.permutations(FUNCS):
            s = tha.Schema(cdef(order), fns(funcs))
            assert s.to_bytes() == ref.to_bytes()
            assert s.fingerprint == ref.fingerprint
            for name in TYPES:
                assert s.type_id(name) == ref.type_id(name)
    ids = sorted(ref.type_id(n) for n in TYPES)
    assert ids == list(range(32, 37))
    # structs by name, then unions
    assert [ref.type_name(ref.ctype_of(i)) for i in ids] == [
        "struct engineer", "struct ll_node", "struct manager", "struct skill",
        "union pay"]


def test_rebuilt_cdef_defines_nested_types_first():
    ref = tha.Schema(cdef(ORDERS[0]), fns())
    again = tha.Schema.from_bytes(ref.to_bytes())
    assert again.fingerprint == ref.fingerprint
    assert again.compare(ref) is None
    assert again.ffi.sizeof("struct manager") == ref.ffi.sizeof("struct manager")
    assert again.ffi.offsetof("struct manager", "budget") == \
        ref.ffi.offsetof("struct manager", "budget")


C_PROGRAM = r"""
#include "tha.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
struct engineer; struct manager;
struct skill { char tag[8]; uint16_t years; };
union pay { uint64_t cents; double ratio; uint8_t raw[8]; };
struct engineer { char name[24]; uint32_t level; struct manager *boss;
    struct skill skills[3]; unsigned char *badge; int (*rate)(int, char *);
    unsigned int *hours; };
struct ll_node { uint32_t key; struct ll_node *next; struct engineer *owner;
    void (*visit)(void); };
struct manager { struct engineer self; struct engineer *reports[4];
    union pay pay; double budget; uint16_t grid[2][3]; };
static void visit(void) {}
static int rate(int a, char *b) { return a + (b != 0); }
#define T(c) do { int rc_ = (c); if (rc_) { fprintf(stderr, "%s: %s %s\n", #c, \
    tha_strerror(rc_), s ? tha_schema_errmsg(s) : ""); exit(1); } } while (0)
int main(int argc, char **argv) {
    tha_schema_t *s = NULL;
    uint32_t LL, ENG, MGR, SK, PAY;
    T(tha_schema_create(&s));
    /* the issue's order: ll_node first, then engineer, manager, ... */
    T(THA_STRUCT(s, struct ll_node, "ll_node", &LL));
    T(THA_FIELD_SCALAR(s, LL, struct ll_node, key, THA_T_U32, 0));
    T(THA_FIELD_PTR(s, LL, struct ll_node, next, "ll_node", 0));
    T(THA_FIELD_PTR(s, LL, struct ll_node, owner, "engineer", 0));
    T(THA_FIELD_FUNC(s, LL, struct ll_node, visit, 0));
    T(THA_STRUCT(s, struct engineer, "engineer", &ENG));
    T(THA_FIELD_SCALAR(s, ENG, struct engineer, name, THA_T_CHAR, 24));
    T(THA_FIELD_SCALAR(s, ENG, struct engineer, level, THA_T_U32, 0));
    T(THA_FIELD_PTR(s, ENG, struct engineer, boss, "manager", 0));
    T(THA_FIELD_STRUCT(s, ENG, struct engineer, skills, "skill", 3));
    T(THA_FIELD_PTR(s, ENG, struct engineer, badge, "unsigned char", 0));
    tha_field_t f = {.name = "rate", .offset = offsetof(struct engineer, rate),
                     .kind = THA_K_FUNC, .sig = "int (*)(int, char*)"};
    T(tha_schema_add_field(s, ENG, &f));
    T(THA_FIELD_PTR(s, ENG, struct engineer, hours, "uint32_t", 0));
    T(THA_STRUCT(s, struct manager, "manager", &MGR));
    T(THA_FIELD_STRUCT(s, MGR, struct manager, self, "engineer", 0));
    T(THA_FIELD_PTR(s, MGR, struct manager, reports, "engineer", 4));
    T(THA_FIELD_STRUCT(s, MGR, struct manager, pay, "union pay", 0));
    T(THA_FIELD_SCALAR(s, MGR, struct manager, budget, THA_T_F64, 0));
    tha_field_t g = {.name = "grid", .offset = offsetof(struct manager, grid),
                     .kind = THA_K_SCALAR, .prim = THA_T_U16, .dims = {2, 3}};
    T(tha_schema_add_field(s, MGR, &g));
    T(THA_STRUCT(s, struct skill, "skill", &SK));
    T(THA_FIELD_SCALAR(s, SK, struct skill, tag, THA_T_CHAR, 8));
    T(THA_FIELD_SCALAR(s, SK, struct skill, years, THA_T_U16, 0));
    T(tha_schema_add_struct(s, "pay", sizeof(union pay), _Alignof(union pay), 1, &PAY));
    T(THA_FIELD_SCALAR(s, PAY, union pay, cents, THA_T_U64, 0));
    T(THA_FIELD_SCALAR(s, PAY, union pay, ratio, THA_T_F64, 0));
    T(THA_FIELD_SCALAR(s, PAY, union pay, raw, THA_T_U8, 8));
    T(tha_schema_add_func(s, "visit", visit));
    T(tha_schema_add_func(s, "spare", NULL));
    T(tha_schema_add_func(s, "rate", (void (*)(void))rate));
    T(tha_schema_seal(s));
    tha_heap_t *h;
    T(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    struct engineer *e; struct manager *m; struct ll_node *n; uint32_t *hrs;
    T(tha_heap_alloc(h, ENG, 2, (void **)&e));
    T(tha_heap_alloc(h, MGR, 1, (void **)&m));
    T(tha_heap_alloc(h, LL, 3, (void **)&n));
    T(tha_heap_alloc(h, THA_T_U32, 4, (void **)&hrs));
    strcpy(e[0].name, "ada"); strcpy(e[1].name, "bob");
    e[0].level = 3; e[0].boss = e[1].boss = m; e[0].rate = rate;
    strcpy(e[1].skills[2].tag, "c"); e[1].skills[2].years = 4;
    e[1].hours = &hrs[1]; hrs[1] = 40;
    strcpy(m->self.name, "cy"); m->reports[0] = &e[0]; m->reports[1] = &e[1];
    m->pay.ratio = 1.5; m->budget = 1e6; m->grid[1][2] = 12;
    for (int i = 0; i < 3; i++) {
        n[i].key = (uint32_t)(10 + i); n[i].next = i < 2 ? &n[i + 1] : NULL;
        n[i].owner = &e[i % 2]; n[i].visit = visit;
    }
    T(tha_root_set(h, "list", n));
    T(tha_root_set(h, "boss", m));
    for (int k = 1; k < argc; k++) {
        if (k == 2) { /* a second frame: a delta */
            n[2].key = 99; e[0].level = 4;
            T(tha_heap_touch(h, &n[2], 0));
            T(tha_heap_touch(h, &e[0], 0));
        }
        size_t need, len;
        int kind = k == 1 ? THA_FRAME_SNAPSHOT : THA_FRAME_DELTA;
        T(tha_heap_frame_size(h, kind, &need));
        void *buf = malloc(need);
        T(tha_heap_encode(h, kind, buf, need, &len));
        FILE *fp = fopen(argv[k], "wb");
        if (!fp || fwrite(buf, 1, len, fp) != len || fclose(fp)) return 2;
        free(buf);
    }
    size_t sl;
    T(tha_schema_serialize(s, NULL, 0, &sl));
    printf("fingerprint %016llx\n", (unsigned long long)tha_schema_fingerprint(s));
    tha_heap_destroy(h);
    tha_schema_release(s);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_frames(tmp_path_factory):
    """Runs a C program that registers the structs in the issue's order and
    writes a snapshot and a delta of its heap."""
    d = tmp_path_factory.mktemp("canon")
    lib = CSRC / "build" / "libtha.a"
    proc = subprocess.run(["make", "-C", str(CSRC), "build/libtha.a"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    src = d / "prog.c"
    src.write_text(C_PROGRAM)
    exe = d / "prog"
    proc = subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Werror",
                           "-I", str(CSRC / "include"), str(src), str(lib),
                           "-lm", "-pthread", "-o", str(exe)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    snap, delta = d / "snap", d / "delta"
    proc = subprocess.run([str(exe), str(snap), str(delta)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    fp = int(proc.stdout.split()[1], 16)
    return fp, snap.read_bytes(), delta.read_bytes()


def test_c_schema_equals_python_schema(c_frames):
    fp, snap, _ = c_frames
    for order in ORDERS:
        s = tha.Schema(cdef(order), fns())
        assert s.fingerprint == fp


def test_python_loads_c_heap_in_any_order(c_frames):
    _, snap, delta = c_frames
    h = tha.Heap.from_snapshot(snap, functions=fns())  # no application code
    d = h.dump()
    h.apply(delta)
    after = h.dump()
    assert after != d
    # the same frames applied to heaps declared in Python, in every order,
    # give the same dump
    for order in ORDERS:
        p = tha.Heap(tha.Schema(cdef(order), fns()),
                     capacity=1 << 20)
        p.apply(snap)
        assert p.dump() == d
        p.apply(delta)
        assert p.dump() == after
    lst = h.roots["list"]
    assert [lst[i].key for i in range(3)] == [10, 11, 99]
    assert h.schema.ffi.string(lst[0].owner.name) == b"ada"
    assert lst[1].owner.hours[0] == 40
    assert h.roots["boss"].grid[1][2] == 12


def test_cross_order_apply_python():
    a = tha.Heap(tha.Schema(cdef(ORDERS[2]), fns(("visit", "rate", "spare"))), capacity=1 << 20)
    b = tha.Heap(tha.Schema(cdef(ORDERS[1]), fns(("spare", "rate", "visit"))), capacity=1 << 20)
    n = a.new("struct ll_node", 2)
    e = a.new("struct engineer")
    n[0].next = n + 1
    n[1].owner = e
    e.skills[1].years = 5
    a.roots["n"] = n
    b.apply(a.snapshot())
    assert b.dump() == a.dump()
    m = a.new("struct manager")
    m.pay.cents = 7
    e.boss = m
    a.touch(e)
    b.apply(a.delta())
    assert b.dump() == a.dump()

"""heap.check() checks pointer types and warns of forgotten pointer fields
(issue 11, item 6): a pointer must hold the start of an object of its
declared type or of one nested in another object (char and void pointers
anywhere in a live allocation); words no field covers that hold an address
in the heap are reported by heap.lint() and warned of by heap.check();
`python -m tha verify` checks the types of a file's pointers."""
import warnings

import pytest

import tha
from conftest import HOOKS, RICH_CDEF
from tha.cli import main

EMP = "struct emp"

# pad: 4 bytes of padding after a, 4 after n (bytes 20..23)
PAD_CDEF = """
struct pad { uint32_t a; struct pad *p; uint32_t n; };
"""


@pytest.fixture
def heap(rich_schema):
    return tha.Heap(rich_schema, capacity=4 << 20)


def test_legit_pointers_pass(heap):
    ffi = heap.schema.ffi
    boss = heap.new(EMP, id=1)
    team = heap.new(EMP, count=3)
    d = heap.new("struct dept", id=2)
    note = heap.new("char", count=16)
    boss.reports[0] = team + 2             # an element of an array
    team[1].mgr = boss
    boss.dept = d
    boss.home.office = d
    boss.past[1].office = d
    boss.note = note + 5                   # char * anywhere
    boss.any = ffi.addressof(team[2], "salary")  # void * anywhere
    heap.roots["boss"] = boss
    heap.check()
    assert heap.lint() == []


def test_check_raises_on_a_pointer_of_the_wrong_type(heap):
    ffi = heap.schema.ffi
    boss = heap.new(EMP, id=1)
    team = heap.new(EMP, count=3)
    d = heap.new("struct dept", id=2)
    heap.roots["boss"] = boss
    team[2].mgr = ffi.cast("struct emp *", d)
    with pytest.raises(tha.SchemaMismatch) as e:
        heap.check()
    msg = str(e.value)
    assert "struct emp" in msg and "[2]" in msg and "field mgr" in msg, msg
    assert "pointer to struct emp" in msg and "struct dept" in msg, msg
    team[2].mgr = ffi.cast("struct emp *", ffi.cast("char *", team + 1) + 8)
    with pytest.raises(tha.SchemaMismatch, match="where no struct emp starts"):
        heap.check()
    team[2].mgr = team + 1
    heap.check()
    # a struct dept * at the dept nested in an addr is a dept: fine; at the
    # addr's zip it is not
    boss.dept = ffi.cast("struct dept *", ffi.addressof(boss.home, "zip"))
    with pytest.raises(tha.SchemaMismatch, match="home.zip"):
        heap.check()


def test_a_mirror_checks_what_it_received(heap):
    """A frame is sound whatever the pointer types: apply takes it, and the
    mirror's own check then names the mistake."""
    ffi = heap.schema.ffi
    boss = heap.new(EMP, id=1)
    d = heap.new("struct dept")
    heap.roots["boss"] = boss
    boss.mgr = ffi.cast("struct emp *", d)
    mirror = tha.Heap(heap.schema, capacity=4 << 20)
    mirror.apply(heap.snapshot())
    with pytest.raises(tha.SchemaMismatch, match="field mgr"):
        mirror.check()


def test_set_debug_checks_what_each_frame_carries(heap):
    ffi = heap.schema.ffi
    boss = heap.new(EMP, id=1)
    d = heap.new("struct dept")
    heap.roots["boss"] = boss
    mirror = tha.Heap(heap.schema, capacity=4 << 20)
    mirror.apply(heap.snapshot())
    heap.set_debug(types=True)
    boss.mgr = ffi.cast("struct emp *", d)
    seq = heap.stats()["seq"]
    with pytest.raises(tha.SchemaMismatch, match=r"delta seq \d+: type check: .*field mgr"):
        heap.delta()
    assert heap.stats()["seq"] == seq          # nothing changed
    boss.mgr = boss
    mirror.apply(heap.delta())
    assert mirror.roots["boss"].mgr.id == 1
    heap.set_debug(types=False)
    boss.mgr = ffi.cast("struct emp *", d)
    mirror.apply(heap.delta())                 # off: the frame is sound


def pad_heap():
    h = tha.Heap(tha.Schema(PAD_CDEF), capacity=4 << 20)
    objs = h.new("struct pad", count=4)
    h.roots["pads"] = objs
    return h, objs


def test_lint_and_check_warn_of_a_forgotten_pointer():
    h, objs = pad_heap()
    ffi = h.schema.ffi
    h.check()
    target = h.base + h.offset_of(objs + 3)
    for i in (1, 2):  # a raw address in bytes 0..7: a, then padding
        ffi.cast("uint64_t *", objs + i)[0] = target
    found = h.lint()
    assert [(f.type, f.element, f.at) for f in found] == [("struct pad", 1, 0),
                                                         ("struct pad", 2, 0)]
    f = found[0]
    assert f.object == h.offset_of(objs) and f.offset == h.offset_of(objs + 1)
    assert f.target == h.offset_of(objs + 3)
    assert "bytes 0..7" in f.message and "4..7 covered by no field" in f.message
    with pytest.warns(tha.PointerWarning) as rec:
        h.check()
    assert len(rec) == 1, [str(r.message) for r in rec]  # one per field hole
    text = str(rec[0].message)
    assert "struct pad" in text and "bytes 0..7" in text and "2 objects" in text, text
    assert issubclass(tha.PointerWarning, UserWarning)
    # as errors, for a test suite that wants them so
    with warnings.catch_warnings():
        warnings.simplefilter("error", tha.PointerWarning)
        with pytest.raises(tha.PointerWarning):
            h.check()
    for i in (1, 2):
        ffi.cast("uint64_t *", objs + i)[0] = 7
    assert h.lint() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h.check()


def test_lint_reports_many_findings():
    h = tha.Heap(tha.Schema(PAD_CDEF), capacity=4 << 20)
    ffi = h.schema.ffi
    objs = h.new("struct pad", count=3000)
    h.roots["pads"] = objs
    target = h.base + h.offset_of(objs)
    for i in range(3000):
        ffi.cast("uint64_t *", objs + i)[2] = target  # bytes 16..23: n, padding
    found = h.lint()
    assert len(found) == 3000 and {f.at for f in found} == {16}
    with pytest.warns(tha.PointerWarning, match="3,000 objects"):
        h.check()


def test_verify_cli_refuses_a_pointer_of_the_wrong_type(capsys, tmp_path):
    s = tha.Schema(RICH_CDEF, functions=HOOKS)
    g = tha.Heap(s, capacity=4 << 20)
    boss = g.new(EMP)
    g.roots["boss"] = boss
    path = tmp_path / "good.thaf"
    path.write_bytes(g.snapshot())
    assert main(["verify", str(path)]) == 0
    capsys.readouterr()
    boss.mgr = s.ffi.cast("struct emp *", g.new("struct dept"))
    path = tmp_path / "wrong.thaf"
    path.write_bytes(g.snapshot())
    rc = main(["verify", str(path)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and "field mgr" in err and "struct dept" in err, err

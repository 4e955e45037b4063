"""python -m tha inspect | leaks | verify FILE, on raw snapshot frames and
on real checkpoints (with a delta log)."""

import json
import os
import subprocess
import sys

import pytest

import tha
from conftest import HOOKS, RICH_CDEF
from tha.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(garbage=True):
    s = tha.Schema(RICH_CDEF, functions=HOOKS)
    h = tha.Heap(s, capacity=4 << 20)
    boss = h.new("struct emp", name=b"ann", id=7, salary=1.5)
    team = h.new("struct emp", count=3)
    boss.reports[0] = team + 1
    team[1].mgr = boss
    team[2].name = b"bob"
    boss.hook = HOOKS["ping"]
    d = h.new("struct dept", name=b"ops", id=3)
    boss.dept = d
    boss.any = h.schema.ffi.addressof(team[2], "salary")
    note = h.new("char", count=16)
    note[0:5] = b"hello"
    boss.note = note + 2
    h.roots["boss"] = boss
    h.roots["ops"] = d
    junk = None
    if garbage:
        junk = h.new("struct emp", id=99)
        junk.mgr = boss
    return h, junk


@pytest.fixture
def snapfile(tmp_path):
    h, junk = build()
    path = tmp_path / "state.thaf"
    path.write_bytes(h.snapshot())
    return str(path), h, junk


def cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_summary(capsys, snapfile):
    path, h, _ = snapfile
    rc, out, _ = cli(capsys, "inspect", path)
    assert rc == 0
    assert "snapshot frame" in out
    assert "seq 1  epoch 0" in out
    assert "6 objects" not in out and "5 objects" in out  # live objects
    assert "unreachable 1 objects" in out
    boss = h.offset_of(h.roots["boss"])
    assert f"boss -> struct emp @0x{boss:x}" in out
    assert "ops -> struct dept @" in out
    lines = {ln.split()[0] + " " + ln.split()[1]: ln.split()[2:] for ln in out.splitlines()
             if ln.startswith("struct ")}
    assert lines["struct emp"] == ["3", "5", f"{5 * h.schema.ffi.sizeof('struct emp'):,}"]
    assert lines["struct dept"][:2] == ["1", "1"]


def test_inspect_objects_show_fields_and_targets(capsys, snapfile):
    path, h, junk = snapfile
    rc, out, _ = cli(capsys, "inspect", path, "--objects")
    assert rc == 0
    team = h.offset_of(h.roots["boss"].reports[0]) - h.schema.ffi.sizeof("struct emp")
    assert f"reports = [-> struct emp @0x{team:x}[1], NULL, NULL, NULL]" in out
    assert f"any = -> struct emp @0x{team:x}[2].salary" in out
    assert "note = -> char @0x" in out and "[2]" in out
    assert "dept = -> struct dept @" in out and "(root ops)" in out
    assert "hook = &ping" in out
    assert "name = b'ann'" in out and "[2]  name = b'bob'" in out
    assert f"struct emp @0x{h.offset_of(junk):x}" in out
    assert "mgr = -> struct emp @" in out and "(root boss)" in out


def test_inspect_type_filter_and_json(capsys, snapfile):
    path, h, _ = snapfile
    rc, out, _ = cli(capsys, "inspect", path, "--type", "dept")
    assert rc == 0
    assert "struct dept @0x" in out and "name = b'ops'" in out
    assert "struct emp @0x" not in out.split("\n\n", 1)[1]
    rc, out, _ = cli(capsys, "inspect", path, "--type", "struct emp", "--json")
    d = json.loads(out)
    assert d["kind"] == "snapshot frame" and d["seq"] == 1 and d["epoch"] == 0
    assert d["live_objects"] == 5 and d["unreachable"]["objects"] == 1
    assert {o["type"] for o in d["objects"]} == {"struct emp"}
    boss = [o for o in d["objects"] if o["roots"] == ["boss"]][0]
    v = boss["value"][0]
    assert v["name"] == "ann" and v["id"] == 7 and v["hook"] == "ping"
    assert v["dept"]["offset"] == h.offset_of(h.roots["ops"])
    assert v["dept"]["target"].startswith("struct dept @")
    assert v["mgr"] is None
    rc, _, err = cli(capsys, "inspect", path, "--type", "nope")
    assert rc == 2 and "struct emp" in err


def test_inspect_schema(capsys, snapfile):
    rc, out, _ = cli(capsys, "inspect", snapfile[0], "--schema")
    assert rc == 0 and "struct emp" in out and "reports[4]" in out


def test_leaks(capsys, snapfile, tmp_path):
    path, h, junk = snapfile
    rc, out, _ = cli(capsys, "leaks", path)
    assert rc == 1
    assert "1 of 5 allocations unreachable" in out
    assert f"0x{h.offset_of(junk):x}" in out
    rc, out, _ = cli(capsys, "leaks", path, "--json")
    d = json.loads(out)
    assert d["objects"] == 1 and d["leaks"][0]["offset"] == h.offset_of(junk)
    assert d["leaks"][0]["type"] == "struct emp"
    clean, _ = build(garbage=False)
    p2 = tmp_path / "clean.thaf"
    p2.write_bytes(clean.snapshot())
    rc, out, _ = cli(capsys, "leaks", str(p2))
    assert rc == 0 and "0 of 4 allocations" in out
    rc, _, err = cli(capsys, "leaks", str(tmp_path / "missing"))
    assert rc == 2 and "missing" in err


def test_verify_ok_and_every_kind_of_damage(capsys, snapfile, tmp_path):
    path, h, _ = snapfile
    rc, out, _ = cli(capsys, "verify", path)
    assert rc == 0 and out.startswith("ok: ") and "5 objects" in out
    data = open(path, "rb").read()
    bad = {
        "flipped": data[:5000] + bytes([data[5000] ^ 0x10]) + data[5001:],
        "truncated": data[:-100],
        "header": data[:20] + bytes([data[20] ^ 1]) + data[21:],
        "empty": b"",
        "garbage": b"not a heap at all" * 10,
    }
    for name, blob in bad.items():
        p = tmp_path / name
        p.write_bytes(blob)
        rc, out, err = cli(capsys, "verify", str(p))
        assert rc == 1, name
        assert name in err and out == "", name
    rc, _, err = cli(capsys, "verify", path, "--log", str(tmp_path / "x.log"))
    assert rc == 1 and "checkpoint" in err
    h.roots["boss"].salary = 2.0
    p = tmp_path / "delta"
    p.write_bytes(h.delta())
    rc, _, err = cli(capsys, "verify", str(p))
    assert rc == 1 and "delta" in err
    rc, _, err = cli(capsys, "verify", str(tmp_path / "missing"))
    assert rc == 1 and "missing" in err


def test_verify_catches_a_bad_pointer_that_checksums_cannot(capsys, tmp_path):
    """A frame re-sealed after a pointer was changed to point into the
    metadata still loads; the heap walk must name the problem."""
    h, _ = build(garbage=False)
    data = bytearray(h.snapshot())
    from conftest import pointer_words, reseal
    words = list(pointer_words(bytes(data)))
    assert words
    pos, _off, _v = words[0]
    data[pos:pos + 8] = (8).to_bytes(8, "little")  # offset 8: inside the region header
    p = tmp_path / "badptr"
    p.write_bytes(reseal(bytes(data)))
    rc, out, err = cli(capsys, "verify", str(p))  # the codec accepts any
    assert rc == 1 and "not inside a live allocation" in err, out + err  # in-range offset


@pytest.mark.skipif(not hasattr(tha.Heap, "load"), reason="no checkpoint support")
def test_real_checkpoint_and_log(capsys, tmp_path):
    h, junk = build()
    ck = str(tmp_path / "state.tha")
    log = str(tmp_path / "state.log")
    h.checkpoint(ck)
    rc, out, _ = cli(capsys, "inspect", ck)
    assert rc == 0 and "checkpoint" in out and "5 objects" in out
    rc, out, _ = cli(capsys, "leaks", ck)
    assert rc == 1 and f"0x{h.offset_of(junk):x}" in out
    rc, out, _ = cli(capsys, "verify", ck)
    assert rc == 0 and "ok: " in out
    seq0 = h.stats()["seq"]
    h.attach_log(log)
    for i in range(3):
        h.roots["boss"].salary = 10.0 + i
        h.touch(h.roots["boss"])
        h.delta()
    h.collect()
    h.delta()
    h.detach_log()
    rc, out, _ = cli(capsys, "verify", ck, "--log", log)
    assert rc == 0 and "4 frames replayed" in out, out
    rc, out, _ = cli(capsys, "inspect", ck, "--log", log, "--json")
    d = json.loads(out)
    assert d["seq"] == seq0 + 4 and d["unreachable"]["objects"] == 0
    assert d["log"]["frames_applied"] == 4 and d["log"]["clean"]
    rc, out, _ = cli(capsys, "leaks", ck, "--log", log)
    assert rc == 0
    blob = open(log, "rb").read()
    open(log, "wb").write(blob[:-3])  # a torn last frame
    rc, out, err = cli(capsys, "verify", ck, "--log", log)
    assert rc == 1 and "stopped" in err
    blob = bytearray(open(ck, "rb").read())
    blob[len(blob) // 2] ^= 0x40
    open(ck, "wb").write(bytes(blob))
    rc, out, err = cli(capsys, "verify", ck)
    assert rc == 1 and err


def test_cli_in_a_real_process(snapfile):
    path = snapfile[0]
    for cmd, want in (("inspect", 0), ("leaks", 1), ("verify", 0)):
        p = subprocess.run([sys.executable, "-m", "tha", cmd, path], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == want, p.stdout + p.stderr
    for cmd in ("inspect", "leaks", "verify"):
        p = subprocess.run([sys.executable, "-m", "tha", cmd, "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "FILE" in p.stdout


def test_progress_on_a_terminal_only(tmp_path):
    """Loading a big file draws a progress line on a terminal and nothing
    when stderr is piped."""
    import io
    import subprocess
    import sys

    from tha.cli.console import terminal_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bar = terminal_progress("verify: loading x", tty)
    for done in (0, 50 << 20, 100 << 20):
        bar(done, 100 << 20)
    out = tty.getvalue()
    assert "verify: loading x" in out and "  0%" in out and out.endswith("\r\x1b[K")
    assert terminal_progress("x", io.StringIO()) is None
    h = tha.Heap(tha.Schema("struct e { int a; };"))
    h.roots["e"] = h.new("struct e")
    h.checkpoint(tmp_path / "s.tha")
    r = subprocess.run([sys.executable, "-m", "tha", "verify", str(tmp_path / "s.tha")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "\r" not in r.stderr and "%" not in r.stderr, r


@pytest.mark.parametrize("kind", ["checkpoint", "snapshot"])
def test_files_with_extern_words_open(capsys, tmp_path, kind):
    """A heap pointing into data externs opens without the program: each
    extern is bound to a zeroed placeholder of its size, and the pointers
    show as the extern's name and offset."""
    ffi = tha.Schema("struct x { int a; };").ffi
    head = ffi.new("char[16]", b"alpha\0beta")
    s = tha.Schema("struct tag { char *label; struct tag *next; };",
                   externs={"labels": head})
    h = tha.Heap(s, capacity=1 << 20)
    t = h.new("struct tag", count=2)
    t[0].label, t[0].next, t[1].label = head, t + 1, head + 6
    h.roots["tags"] = t
    path = tmp_path / "ext.tha"
    if kind == "checkpoint":
        h.checkpoint(path)
    else:
        path.write_bytes(h.snapshot())
    rc, out, err = cli(capsys, "inspect", "--objects", str(path))
    assert rc == 0, err
    assert "label = -> &labels+0 (data extern)" in out
    assert "label = -> &labels+6 (data extern)" in out
    assert "next = -> struct tag @" in out
    for cmd in ("leaks", "verify"):
        rc, out, err = cli(capsys, cmd, str(path))
        assert rc == 0, (cmd, out, err)

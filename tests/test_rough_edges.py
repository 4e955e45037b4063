"""What a newcomer hit in the first minutes (issue 10): each a clean
tha.Error naming the thing, never a builtin exception or a silent default."""
import errno
import os
import signal
import subprocess
import sys

import pytest

import tha

CDEF = "struct emp { char name[32]; uint32_t id; struct emp *mgr; };"


@pytest.mark.parametrize("cap", [-1, 0, 100, (1 << 20) - 1, 1 << 60])
def test_capacity_out_of_range_says_the_range(cap):
    with pytest.raises(tha.InvalidArgument, match=f"capacity {cap} bytes is outside 1 MiB"):
        tha.Heap(tha.Schema(CDEF), capacity=cap)


@pytest.mark.parametrize("cap", ["64M", 1.5, True, None])
def test_capacity_must_be_an_int(cap):
    with pytest.raises(tha.InvalidArgument, match="capacity must be a number of bytes"):
        tha.Heap(tha.Schema(CDEF), capacity=cap)


def test_capacity_bounds_are_accepted():
    assert tha.Heap(tha.Schema(CDEF), capacity=1 << 20).stats()["capacity"] == 1 << 20


def test_schema_must_be_a_schema():
    with pytest.raises(tha.Error, match="schema must be a tha.Schema, not str"):
        tha.Heap(CDEF)


@pytest.mark.parametrize("fields, what", [
    ({"name": b"x" * 40}, "field 'name'"),
    ({"id": -1}, "field 'id'"),
    ({"id": "seven"}, "field 'id'"),
    ({"nope": 1}, "field 'nope'"),
    ({"mgr": 5}, "field 'mgr'"),
])
def test_a_failing_initializer_frees_what_it_took(fields, what):
    heap = tha.Heap(tha.Schema(CDEF))
    before = heap.stats()["live_objects"]
    with pytest.raises(tha.InvalidArgument, match=f"new struct emp: {what}"):
        heap.new("struct emp", count=3, **fields)
    assert heap.stats()["live_objects"] == before
    heap.check()


def test_count_must_be_sane():
    heap = tha.Heap(tha.Schema(CDEF))
    for bad in (0, -1, 1 << 32, "3"):
        with pytest.raises(tha.InvalidArgument, match="count must be an int"):
            heap.new("struct emp", count=bad)


@pytest.mark.parametrize("frame", ["hello", 5, None, [1, 2]])
def test_apply_of_what_is_not_bytes(frame):
    heap = tha.Heap(tha.Schema(CDEF))
    with pytest.raises(tha.InvalidArgument, match="apply: a frame is bytes"):
        heap.apply(frame)
    with pytest.raises(tha.InvalidArgument, match="from_snapshot: a frame is bytes"):
        tha.Heap.from_snapshot(frame)


def test_snapshot_into_a_bad_buffer():
    heap = tha.Heap(tha.Schema(CDEF))
    with pytest.raises(tha.InvalidArgument, match="writable buffer"):
        heap.snapshot(out=b"\0" * (1 << 20))
    with pytest.raises(tha.InvalidArgument, match="holds 10 bytes"):
        heap.snapshot(out=bytearray(10))


def test_a_pointer_from_another_schemas_heap_in_an_initializer():
    a, b = tha.Heap(tha.Schema(CDEF)), tha.Heap(tha.Schema(CDEF))
    other = b.new("struct emp")
    with pytest.raises(tha.InvalidArgument, match="field 'mgr'"):
        a.new("struct emp", mgr=other)
    assert a.stats()["live_objects"] == 0


# ---- replication arguments -------------------------------------------------

def test_addresses_as_strings_or_pairs():
    heap = tha.Heap(tha.Schema(CDEF))
    with tha.Standby(listen="127.0.0.1:0") as sb:
        host, port = sb.address
        with tha.Active(heap, [f"{host}:{port}"]) as act:
            assert act.standbys == [(host, port)]
            act.sync()
    for bad, why in [("127.0.0.1:7400", "a list of addresses"),
                     (["127.0.0.1"], "is not HOST:PORT"),
                     ([("127.0.0.1", 99999)], "port 99999 is not within 1..65535"),
                     ([("127.0.0.1", 0)], "port 0 is not within 1..65535"),
                     ([("", 7400)], "non-empty string"),
                     ([42], "is not \\(host, port\\)")]:
        with pytest.raises(tha.InvalidArgument, match=why):
            tha.Active(heap, bad)
    with pytest.raises(tha.InvalidArgument, match="port 70000"):
        tha.Standby(listen=("127.0.0.1", 70000))


def test_secret_must_be_bytes():
    heap = tha.Heap(tha.Schema(CDEF))
    with pytest.raises(tha.InvalidArgument, match="secret must be bytes, not str"):
        tha.Active(heap, [("127.0.0.1", 7400)], secret="k")
    with pytest.raises(tha.InvalidArgument, match="secret must be bytes, not str"):
        tha.Standby(secret="k")


def test_standby_save_directory_is_checked_at_start(tmp_path):
    with pytest.raises(tha.OSFailure, match="the directory .*nope does not exist") as e:
        tha.Standby(save=tmp_path / "nope" / "x.tha")
    assert e.value.errno == errno.ENOENT


# ---- the command line: one line, no traceback --------------------------------

def cli(*argv, timeout=60, stdin=None):
    return subprocess.run([sys.executable, "-m", "tha", *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=stdin)


@pytest.fixture
def key(tmp_path):
    k = tmp_path / "key"
    k.write_bytes(os.urandom(32))
    return k


@pytest.mark.parametrize("argv, why", [
    (["standby", "--listen", "127.0.0.1:99999"], "port 99999 is not within 0..65535"),
    (["standby", "--listen", "nohost"], "'nohost' is not HOST:PORT"),
    (["bench", "--checkpoint", "--size", "lots"], "'lots' is not a size"),
    (["standby", "--reserve", "0"], "'0' is not a size"),
    (["standby", "--secret-file", "/nonexistent/key"], "cannot read the secret file"),
])
def test_bad_arguments_are_one_line(argv, why):
    r = cli(*argv)
    assert r.returncode in (1, 2), r
    assert "Traceback" not in r.stderr, r.stderr
    assert why in r.stderr.strip().splitlines()[-1], r.stderr   # (usage, then) the line


def test_standby_with_an_unwritable_save_fails_at_start(key):
    r = cli("standby", "--listen", "127.0.0.1:0", "--secret-file", str(key),
            "--save", "/nonexistent/dir/x.tha", timeout=30)
    assert r.returncode != 0 and "/nonexistent/dir does not exist" in r.stderr, r
    assert "Traceback" not in r.stderr and "listening" not in r.stdout


def test_inspect_into_a_closed_pipe(tmp_path):
    heap = tha.Heap(tha.Schema(CDEF))
    p = heap.new("struct emp")
    for _ in range(2000):
        p = heap.new("struct emp", mgr=p)
    heap.roots["r"] = p
    heap.checkpoint(tmp_path / "s.tha")
    proc = subprocess.Popen([sys.executable, "-m", "tha", "inspect", "--objects",
                             str(tmp_path / "s.tha")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                 # what `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait(30)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize("kw", [{"heartbeat": 0}, {"heartbeat": -0.1},
                                {"heartbeat": float("nan")}, {"heartbeat": 0.0004},
                                {"heartbeat": "0.2"}, {"timeout": 0},
                                {"timeout": float("inf")}])
def test_heartbeat_and_timeout_must_be_positive_durations(kw):
    """heartbeat=0 made every gap between ticks a "stall" of this process's
    own (the liveness rule skips gaps beyond the heartbeat period): a
    standby with promote_after never promoted, its ticker spinning; a
    negative or NaN one killed the ticker; below 1 ms the C session took
    its 200 ms default while the Python clocks used the tiny value."""
    name = next(iter(kw))
    with pytest.raises(tha.InvalidArgument, match=f"{name} must be"):
        tha.Standby(promote_after=0.5, **kw)
    heap = tha.Heap(tha.Schema(CDEF))
    akw = {"peer_timeout" if name == "timeout" else name: kw[name]}
    with pytest.raises(tha.InvalidArgument, match=f"{next(iter(akw))} must be"):
        tha.Active(heap, [("127.0.0.1", 7400)], **akw)

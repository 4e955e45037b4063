"""Checkpoints and the delta log (tha/durability.py; csrc/src/checkpoint.c,
log.c, load.c):
round trips at another address, replay and compaction, kill -9 during
checkpoint() in real processes, torn and bit-flipped files."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tha
from tha._ffi import lib

from conftest import SMALL_CDEF

HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def schema():
    return tha.Schema(SMALL_CDEF)


def company(schema, n=200, tracking="auto", **kw):
    heap = tha.Heap(schema, 4 << 20, tracking=tracking, **kw)
    team = heap.new("struct emp", count=n)
    dept = heap.new("struct dept", name=b"ops", id=3)
    for i in range(n):
        team[i].id = i
        team[i].salary = 100.0 + i
        team[i].mgr = team + (i - 1) // 4 if i else heap.schema.ffi.NULL
        team[i].dept = dept
        team[i].reports[i % 4] = team + (i * 7) % n
    heap.roots["team"] = team
    heap.roots["dept"] = dept
    if tracking == "explicit":
        heap.touch(team)
    return heap, team


def test_round_trip_other_address(schema, tmp_path):
    heap, team = company(schema)
    mirror = tha.Heap(schema, 4 << 20)
    mirror.apply(heap.snapshot())      # seq 1
    team[5].salary = 5.5               # pending: not yet in any frame
    seen = []
    heap.checkpoint(tmp_path / "c.tha", progress=lambda d, t: seen.append((d, t)))
    st = heap.stats()
    assert st["seq"] == 1 and st["dirty_blocks"] == 1  # checkpoint touched neither
    assert seen[-1][0] == seen[-1][1] == st["top"]
    loaded = tha.Heap.load(tmp_path / "c.tha")
    assert loaded.base != heap.base
    assert loaded.dump() == heap.dump()
    loaded.check()
    ls = loaded.stats()
    assert (ls["seq"], ls["lineage"], ls["epoch"]) == (st["seq"], st["lineage"], st["epoch"])
    assert loaded.load_report.checkpoint_seq == 1 and loaded.load_report.clean
    # the loaded heap continues the frame series, and the block that was
    # pending at checkpoint time is dirty again: a mirror at seq 1 follows
    assert ls["dirty_blocks"] == 1
    mirror.apply(loaded.delta())
    assert mirror.dump() == heap.dump()
    info = tha.durability.checkpoint_info(tmp_path / "c.tha")
    assert info["seq"] == 1 and info["top"] == st["top"]


def test_load_needs_no_schema_but_compares_one(schema, tmp_path):
    heap, _ = company(schema)
    heap.checkpoint(tmp_path / "c.tha")
    other = tha.Schema(SMALL_CDEF.replace("double salary", "float salary"))
    with pytest.raises(tha.SchemaMismatch, match="salary"):
        tha.Heap.load(tmp_path / "c.tha", schema=other)
    same = tha.Heap.load(tmp_path / "c.tha", schema=schema)
    assert same.schema is schema and same.dump() == heap.dump()


def test_load_progress_and_errors(schema, tmp_path):
    heap = tha.Heap(schema, 16 << 20)
    blob = heap.new("char", count=6 << 20)
    blob[0] = b"x"
    heap.roots["blob"] = blob
    heap.checkpoint(tmp_path / "big.tha")
    seen = []
    loaded = tha.Heap.load(tmp_path / "big.tha", progress=lambda d, t: seen.append(d))
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1] == heap.stats()["top"]
    assert loaded.roots["blob"][0] == b"x"
    with pytest.raises(tha.OSFailure):
        tha.Heap.load(tmp_path / "missing.tha")
    (tmp_path / "junk.tha").write_bytes(b"x" * 500)
    with pytest.raises(tha.FrameError, match="not a tha checkpoint"):
        tha.Heap.load(tmp_path / "junk.tha")
    data = bytearray((tmp_path / "big.tha").read_bytes())
    data[4] = 7  # format version
    (tmp_path / "v.tha").write_bytes(bytes(data))
    with pytest.raises(tha.ChecksumError):  # the header checksum sees it first
        tha.Heap.load(tmp_path / "v.tha")


def test_checkpoint_is_atomic_and_leaves_no_temp(schema, tmp_path):
    heap, team = company(schema)
    heap.checkpoint(tmp_path / "c.tha")
    before = heap.dump()
    team[0].id = 4242
    heap.checkpoint(tmp_path / "c.tha")
    assert sorted(os.listdir(tmp_path)) == ["c.tha"]
    assert tha.Heap.load(tmp_path / "c.tha").dump() == heap.dump() != before


def test_foreign_pointer_fails_checkpoint_cleanly(schema, tmp_path):
    heap, team = company(schema)
    keep = schema.ffi.new("struct emp *")
    team[3].mgr = keep
    with pytest.raises(tha.InvalidPointer, match="mgr"):
        heap.checkpoint(tmp_path / "c.tha")
    assert os.listdir(tmp_path) == []


# ---- the delta log -----------------------------------------------------------

def test_log_replay_compact_and_reattach(schema, tmp_path):
    ckpt, log = tmp_path / "c.tha", tmp_path / "d.log"
    heap, team = company(schema, log=log, fsync="never")
    heap.delta()                       # seq 1
    heap.checkpoint(ckpt)
    dumps = {}
    for i in range(2, 6):
        team[i].salary = i * 1000.0
        heap.delta()
        dumps[i] = heap.dump()
    heap.sync_log()
    got = tha.Heap.load(ckpt, log=log)
    r = got.load_report
    assert got.dump() == dumps[5] and r.clean
    assert (r.checkpoint_seq, r.seq, r.frames_applied, r.frames_skipped) == (1, 5, 4, 1)
    assert got.stats()["dirty_blocks"] == 0
    # the restored heap carries on with the same log
    heap.detach_log()
    got.attach_log(log, fsync="always")
    got.roots["team"][9].id = 99
    got.delta()
    assert tha.Heap.load(ckpt, log=log).dump() == got.dump()
    # compact: a new checkpoint, an empty log, the same state
    got.compact()
    assert log.stat().st_size == 64
    again = tha.Heap.load(ckpt, log=log)
    assert again.dump() == got.dump() and again.load_report.frames_applied == 0
    # a new heap refuses a log that another heap's frames fill
    got.roots["team"][9].id = 100
    got.delta()
    with pytest.raises(tha.SequenceError, match="ends at seq"):
        tha.Heap(schema, 4 << 20, log=log)


def test_snapshot_and_active_frames_are_logged_too(schema, tmp_path):
    ckpt, log = tmp_path / "c.tha", tmp_path / "d.log"
    heap, team = company(schema)
    heap.checkpoint(ckpt)
    heap.attach_log(log, fsync="every 50ms")
    heap.snapshot()                      # seq 1: a snapshot moves seq too
    team[1].id = 11
    heap.delta()
    time.sleep(0.15)                     # the syncer thread runs meanwhile
    assert tha.Heap.load(ckpt, log=log).dump() == heap.dump()
    heap.detach_log()
    with pytest.raises(tha.Error, match="fsync must be"):
        heap.attach_log(log, fsync="sometimes")


def test_apply_is_logged_on_a_mirror(schema, tmp_path):
    src, team = company(schema)
    mirror = tha.Heap(schema, 4 << 20)
    mirror.apply(src.snapshot())
    mirror.checkpoint(tmp_path / "m.tha")
    mirror.attach_log(tmp_path / "m.log")
    for i in range(3):
        team[i].id += 100
        mirror.apply(src.delta())
    got = tha.Heap.load(tmp_path / "m.tha", log=tmp_path / "m.log")
    assert got.dump() == mirror.dump() == src.dump()
    assert got.load_report.frames_applied == 3


def _log_with_history(schema, tmp_path, frames=6):
    """A checkpoint at seq 1, a log of deltas 1..frames+1, the dump at each
    seq and the log offset at which each frame ends."""
    ckpt, log = tmp_path / "c.tha", tmp_path / "d.log"
    heap, team = company(schema, n=60, log=log, fsync="never")
    heap.delta()
    heap.checkpoint(ckpt)
    dumps = {1: heap.dump()}
    ends = {1: log.stat().st_size}
    rng = random.Random(5)
    for seq in range(2, frames + 2):
        for _ in range(3):
            team[rng.randrange(60)].salary = rng.random()
        if seq == 4:
            heap.free(heap.new("struct dept", count=3))
            team[2].dept = heap.new("struct dept", id=seq)
        heap.delta()
        dumps[seq] = heap.dump()
        ends[seq] = log.stat().st_size
    heap.detach_log()
    return ckpt, log, dumps, ends


def test_log_truncated_at_every_byte_of_the_last_frame(schema, tmp_path):
    ckpt, log, dumps, ends = _log_with_history(schema, tmp_path)
    data = log.read_bytes()
    last = max(ends)
    start = ends[last - 1]
    cut = tmp_path / "cut.log"
    for n in range(start, len(data) + 1):
        cut.write_bytes(data[:n])
        got = tha.Heap.load(ckpt, log=cut, check=False, tracking="explicit",
                             schema=schema)
        r = got.load_report
        if n in (start, len(data)):  # a frame boundary: a clean end
            assert r.clean and r.seq == (last if n == len(data) else last - 1)
            continue
        assert r.seq == last - 1 and not r.clean
        assert r.stop_offset == start and r.stop_code == lib.THA_EFRAME, r
        assert "torn" in r.message and r.skipped_bytes == n - start
        if n % 16 == 0:
            assert got.dump() == dumps[last - 1]
            got.check()


def test_log_bit_flips_never_yield_unreal_state(schema, tmp_path):
    ckpt, log, dumps, ends = _log_with_history(schema, tmp_path)
    data = log.read_bytes()
    starts = {seq: ends[seq - 1] for seq in ends if seq - 1 in ends}
    rng = random.Random(11)
    # every byte of the log header and of the last three frames, a sample
    # of the rest
    positions = list(range(0, 64)) + list(range(starts[max(ends) - 2], len(data))) + \
        rng.sample(range(len(data)), 300)
    bad = tmp_path / "bad.log"
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        got = tha.Heap.load(ckpt, log=bad, check=False, tracking="explicit",
                             schema=schema)
        r = got.load_report
        assert got.dump() == dumps[r.seq]  # a state that once was real
        assert not r.clean                 # and it says where it stopped
        assert r.stop_offset <= pos < (ends[r.seq + 1] if r.seq + 1 in ends else 64)
        assert str(r.stop_offset) in r.message or r.stop_offset == 0


def test_checkpoint_truncated_or_flipped_is_refused(schema, tmp_path):
    heap, _ = company(schema, n=50)
    ckpt = tmp_path / "c.tha"
    heap.checkpoint(ckpt)
    data = ckpt.read_bytes()
    bad = tmp_path / "bad.tha"
    info = tha.durability.checkpoint_info(ckpt)
    # the last frame is the image's last segment, then the trailer
    last_frame = len(data) - 32 - (96 + 16 + (info["top"] // 64 + 7) // 8 * 8 + info["top"])
    # every byte of the trailer and the segment's last 2 KiB and its header,
    # a stride through the rest (the C test covers them all)
    cuts = set(range(len(data) - 2048, len(data))) | \
        set(range(last_frame, last_frame + 96)) | set(range(0, len(data), 97))
    for n in sorted(cuts):
        bad.write_bytes(data[:n])
        with pytest.raises(tha.FrameError, match="truncated|header"):
            tha.Heap.load(bad, tracking="explicit", schema=schema)
    rng = random.Random(3)
    for pos in list(range(0, 160)) + list(range(len(data) - 64, len(data))) + \
            rng.sample(range(len(data)), 150):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(tha.Error) as e:
            tha.Heap.load(bad, tracking="explicit", schema=schema)
        assert "checkpoint" in str(e.value) or "schema" in str(e.value)


# ---- kill -9 during checkpoint() ------------------------------------------------

def test_kill_during_checkpoint_leaves_old_or_new(tmp_path):
    runs = 60
    proc = subprocess.Popen([sys.executable, str(HELPERS / "ckpt_zygote.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=str(HELPERS.parent))

    def ask(line):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().split()

    try:
        assert ask(f"dumps {tmp_path}") == ["ok"]
        dumps = {v: pickle.loads((tmp_path / f"{v}.pickle").read_bytes()) for v in "AB"}
        assert dumps["A"] != dumps["B"]
        path = tmp_path / "state.tha"
        # calibrate: how long one checkpoint takes here
        t0 = time.perf_counter()
        ask(f"run {path} A")
        assert ask("reap") == ["status", "0"]
        took = time.perf_counter() - t0
        current, killed, rng = "A", 0, random.Random(7)
        for i in range(runs):
            new = "B" if current == "A" else "A"
            _, pid = ask(f"run {path} {new}")
            time.sleep(rng.uniform(0, took * 1.2))
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = ask("reap")
            status = int(status)
            was_killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            got = tha.Heap.load(path, check=(i % 10 == 0)).dump()
            if was_killed:
                killed += 1
                assert got in (dumps[current], dumps[new]), f"run {i}: neither state"
            else:
                assert os.WEXITSTATUS(status) == 0 and got == dumps[new]
            current = "A" if got == dumps["A"] else "B"
        assert killed >= runs // 3, f"only {killed} of {runs} runs were killed mid-way"
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        except OSError:
            pass
        proc.wait(timeout=10)
    # temp files of killed runs were removed by the load after each kill
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.pickle", "B.pickle",
                                                          "state.tha"]


def _temps(d):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


def test_killed_checkpoint_temps_are_removed_but_not_live_ones(tmp_path):
    """kill -9 mid-checkpoint leaves a full-size path.tmp-XXXXXX behind; the
    next load (or checkpoint) of that path removes it. A temp a live process
    is still writing (stopped mid-way with SIGSTOP) is left alone, and that
    process then completes its checkpoint."""
    proc = subprocess.Popen([sys.executable, str(HELPERS / "ckpt_zygote.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=str(HELPERS.parent))

    def ask(line):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().split()

    def state(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0]

    def catch_mid_checkpoint(sig):
        """Runs checkpoints in a child until sig reaches one while its temp
        file exists (polled): SIGKILL returns once the child is reaped with
        its temp left behind, SIGSTOP once it is stopped holding one (its
        pid, for SIGCONT). None if never caught."""
        for _ in range(200):
            _, pid = ask(f"run {path} B")
            pid, hit = int(pid), False
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and state(pid) not in "ZX":
                if _temps(tmp_path):
                    os.kill(pid, sig)
                    hit = True
                    break
            if sig == signal.SIGKILL:
                _, status = ask("reap")
                if hit and os.WIFSIGNALED(int(status)) and _temps(tmp_path):
                    return pid
                continue
            if hit:
                while state(pid) not in "TZX":
                    time.sleep(0.001)
                if state(pid) == "T" and _temps(tmp_path):
                    return pid
                os.kill(pid, signal.SIGCONT)
            ask("reap")
        return None

    try:
        path = tmp_path / "state.tha"
        ask(f"run {path} A")
        assert ask("reap") == ["status", "0"]
        # killed mid-way: its temp stays behind, locked by nobody
        pid = catch_mid_checkpoint(signal.SIGKILL)
        assert pid is not None, "never caught a checkpoint with its temp file"
        assert _temps(tmp_path)  # (empty if killed right after creating it)
        tha.Heap.load(path)  # the next load removes it
        assert _temps(tmp_path) == []
        # again, removed by the next checkpoint this time
        pid = catch_mid_checkpoint(signal.SIGKILL)
        assert pid is not None
        assert _temps(tmp_path)
        heap = tha.Heap.load(path)
        heap.checkpoint(path)
        assert _temps(tmp_path) == []
        # a live writer (stopped, holding its lock) keeps its temp
        pid = catch_mid_checkpoint(signal.SIGSTOP)
        assert pid is not None
        live = _temps(tmp_path)
        assert live
        tha.Heap.load(path)
        heap.checkpoint(path)
        assert _temps(tmp_path) == live
        os.kill(pid, signal.SIGCONT)
        _, status = ask("reap")
        assert int(status) == 0  # its rename still worked
        assert _temps(tmp_path) == []
        tha.Heap.load(path, check=True)
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.flush()
        except OSError:
            pass
        proc.wait(timeout=10)

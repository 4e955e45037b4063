"""``python -m tha bench --peers`` (tha/bench/peers.py): the CI smoke run of
the comparison against raw TCP, pickle and Redis, the digest that checks
every far end, and the clean-up of every far end, also on failure.

The Redis contender runs where redis-server and the redis client are
installed (.ci/run installs redis-server, the test extra the client); only
where one is missing may the run skip it, and it must say why.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tha.bench import peers as bp
from tha.bench import peers_far as pf
from tha.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
HAVE_REDIS = bool(shutil.which("redis-server")) and \
    importlib.util.find_spec("redis") is not None
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tha", "bench", "--peers", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_quick_run_writes_table_json_and_plot(tmp_path):
    t = time.monotonic()
    p = _cli("--quick", "--out", str(tmp_path))
    took = time.monotonic() - t
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "peers.json").read_text())
    m = res["machine"]
    for k in ("cpu", "cores", "kernel", "python"):
        assert m[k], k
    assert m["versions"]["tha"] and m["versions"]["cffi"]
    cfg = res["config"]
    assert cfg["records"] == bp.QUICK_RECORDS and cfg["rounds"] == bp.QUICK_ROUNDS
    want = set(bp.KEYS)
    if HAVE_REDIS:
        assert res["skipped"] == {}
    else:
        want.discard("redis")
        assert "not installed" in res["skipped"]["redis"]
        assert "redis: skipped:" in p.stdout
    phases = [ph["phase"] for ph in res["phases"]]
    assert phases == [bp.BULK, *bp.FRACTIONS]
    for ph in res["phases"]:
        if ph["phase"] == bp.BULK:
            keys = {"memcpy", "tcp", "tha-bulk", "tha-bulk-reserved", "pickle-whole"} | (
                {"redis-load", "redis-resync"} if HAVE_REDIS else set())
            assert set(ph["rows"]) == keys
            verified = {"tha-bulk", "tha-bulk-reserved", "pickle-whole"} | (
                {"redis", "redis-resync"} if HAVE_REDIS else set())
        else:
            assert set(ph["rows"]) == want
            verified = want - {"memcpy", "tcp", "tcp-scatter"}
            assert ph["records_changed"] == bp.changed_count(cfg["records"], ph["phase"])
        assert set(ph["verify"]) == verified
        for k, v in ph["verify"].items():
            assert v["equal"] and v["near"] == v["far"] == v["expected"], k
        for k, row in ph["rows"].items():
            assert len(row["samples"]) == cfg["rounds"], k
            for s in row["samples"]:
                assert s["mirror_s"] > 0, k
                if "round_s" in s:
                    assert s["round_s"] >= s["mirror_s"], k
        if ph["phase"] != bp.BULK:
            ex = ph["rows"]["tha-explicit"]["samples"]
            assert all(0 < s["write_s"] < s["round_s"] for s in ex)
    # every far end applied the same rounds: one expected state per phase
    # (two with Redis: its digest is the text one)
    assert len({v["expected"] for ph in res["phases"]
                for v in ph["verify"].values()}) == len(phases) * (1 + HAVE_REDIS)
    assert any(t["what"].startswith("tha-wp: mirror / raw TCP at f = 1%")
               for t in res["targets"])
    assert "÷ raw TCP" in p.stdout and "raw TCP of the changed bytes" in p.stdout
    assert "÷ scatter" in p.stdout and "raw TCP, records gathered + scattered" in p.stdout
    assert "far ends verified equal: tha-wp, tha-diff, tha-explicit" in p.stdout
    if HAVE_MPL:
        png = (tmp_path / "peers.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in p.stdout
    assert took < 120, f"--quick took {took:.0f} s (CI smoke: under a minute)"


def test_redis_absent_is_skipped_saying_why(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no redis-server
    p = _cli("--quick", "--records", "500", "--repeat", "1", "--contenders",
             "tcp,pickle-changed,redis", "--out", str(tmp_path), env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "peers.json").read_text())
    assert "redis-server is not installed" in res["skipped"]["redis"]
    assert "redis: skipped: redis-server is not installed" in p.stdout
    assert all("redis" not in ph["rows"] for ph in res["phases"])


@pytest.mark.parametrize("args, message", [
    (["--out", "/nonexistent/dir"], "--out /nonexistent/dir: no such directory"),
    (["--contenders", "tcp,memcache"], "no contender memcache"),
    (["--records", "10"], "records must be within 100.."),
])
def test_bad_arguments_are_one_line_errors(args, message):
    p = _cli("--quick", *args, timeout=60)
    assert p.returncode == 1
    assert message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_digest_is_the_same_on_every_kind_of_copy():
    """One digest for the model, a tha heap and Python objects, before and
    after the same mutation; and it changes when one manager is wrong."""
    n = 1000
    model = bp.Model(n)
    heap, emps = bp.tha_heap(Schema(pf.SCHEMA), n, "explicit")
    depts, objs = bp.python_state(n)
    assert bp.tha_digest(heap, n) == pf.py_digest(objs) == model.digest()
    m = bp.make_mutation(n, 0.1, seed=7)
    assert len(m) == 100 and all(g < i for i, g in zip(m.idx, m.mgr))
    model.apply(m)
    for i, s, g in zip(m.idx, m.salary, m.mgr):
        emps[i].salary = s
        emps[i].mgr = emps + g
        objs[i].salary = s
        objs[i].mgr = objs[g]
    assert bp.tha_digest(heap, n) == pf.py_digest(objs) == model.digest()
    assert model.digest("text") == pf.text_digest_of(
        [e.id for e in objs], [e.salary for e in objs], [e.mgr.id if e.mgr else -1 for e in objs])
    emps[5].mgr = emps + 3  # was 1
    assert bp.tha_digest(heap, n) != model.digest()
    emps[5].mgr = heap.schema.ffi.cast("struct emp *", heap.base + heap.offset_of(emps) + 8)
    assert bp.tha_digest(heap, n) != model.digest()  # not the start of an element


def test_verify_catches_a_far_copy_that_differs():
    """A far end that did not get a change fails the verification, naming
    the contender (an explicit heap written without touch; a pickle far end
    sent one record that the near end does not have)."""
    b = bp.PeersBench(1000, rounds=1, contenders=["tha-explicit", "pickle-changed"])
    try:
        b.setup()
        assert set(b.verify(bp.BULK, list(b.c.values()))) == {"tha-explicit",
                                                                "pickle-changed"}
        th, pk = b.c["tha-explicit"], b.c["pickle-changed"]
        th.emps[10].salary = 1.5       # no touch: explicit does not ship it
        th.active.sync(ack="applied")
        with pytest.raises(pf.VerifyError, match="tha-explicit: near"):
            b.verify(bp.BULK, [th])
        e = pk.emps[20]
        rec = [(e.id, e.name, 2.5, e.mgr.id, e.dept.id)]
        pf.send_msg(pk.sock, pf.CHANGED, pf.pickle.dumps(rec))
        pf.wait_ack(pk.sock, "test")
        with pytest.raises(pf.VerifyError, match="pickle-changed: near"):
            b.verify(bp.BULK, [pk])
    finally:
        b.close()


def _descendants(pid: int) -> set:
    """Live (not zombie) processes below pid."""
    kids, parent = set(), {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parent[int(d)] = int(fields[1])
    todo = [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in kids:
                kids.add(c)
                todo.append(c)
    return kids


def _alive(pids: set) -> set:
    out = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.add(p)
        except OSError:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_far_ends_stop_when_the_benchmark_is_killed(tmp_path, sig):
    """Killed in the middle of the bulk phase, the benchmark leaves no far end and
    no redis-server behind: SIGTERM unwinds through the clean-up; SIGKILL
    leaves it to PR_SET_PDEATHSIG."""
    contenders = "tcp,tha-wp,pickle-changed" + (",redis" if HAVE_REDIS else "")
    p = subprocess.Popen([sys.executable, "-m", "tha", "bench", "--peers", "--records",
                          "3000", "--repeat", "50", "--contenders", contenders,
                          "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "bulk sync, round 3/" in line:
                break
        else:
            pytest.fail(f"the benchmark ended early: {p.wait()}")
        kids = _descendants(p.pid)
        want = 4 + 2 * HAVE_REDIS  # tcp, tha-wp, pickle, the bulk standby; redis x2
        assert len(kids) >= want, kids
        p.send_signal(sig)
        rc = p.wait(60)
        assert rc == (128 + sig if sig == signal.SIGTERM else -sig), rc
        deadline = time.monotonic() + 15
        while _alive(kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(kids), f"left running: {_alive(kids)}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_far_end_that_dies_is_a_clean_error_and_the_rest_stop(tmp_path):
    """The raw TCP far end killed mid-run: one line naming the contender,
    exit 1, and every other far end stopped."""
    p = subprocess.Popen([sys.executable, "-m", "tha", "bench", "--peers", "--records",
                          "3000", "--repeat", "50", "--contenders", "tcp,tha-wp",
                          "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "bulk sync, round 3/" in line:
                break
        kids = _descendants(p.pid)
        raw = [k for k in kids if b"peers_far\0py" in Path(f"/proc/{k}/cmdline").read_bytes()]
        assert len(raw) == 1, kids
        os.kill(raw[0], signal.SIGKILL)
        err = p.stderr.read()
        assert p.wait(60) == 1
        assert "python -m tha bench: error: raw TCP: the far end" in err, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        time.sleep(0.5)
        assert not _alive(kids), f"left running: {_alive(kids)}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_scatter_far_end_drops_a_malformed_message():
    """The gather/scatter baseline's far end takes only a message that adds
    up, with indexes inside its array: anything else closes the connection
    (saying why on stderr) instead of an answer, and the far end goes on."""
    import struct
    far = pf.Child("py", "scatter far end")
    try:
        s = pf.connect(far.port)
        pf.send_msg(s, pf.SCATTERED, struct.pack("<QQ", 1, 0) + bytes(64))
        with pytest.raises(pf.PeerError):  # before its array
            pf.wait_ack(s, "scatter")
        for bad in (struct.pack("<QQ", 1, 100) + bytes(64),   # index out of range
                    struct.pack("<QQ", 2, 5) + bytes(64),     # count and length differ
                    b"\x01"):                                   # no count
            s = pf.connect(far.port)
            pf.send_msg(s, pf.SCATTER_SIZE, struct.pack("<Q", 100))
            pf.wait_ack(s, "scatter")
            pf.send_msg(s, pf.SCATTERED, bad)
            with pytest.raises(pf.PeerError):
                pf.wait_ack(s, "scatter")
        s = pf.connect(far.port)
        pf.send_msg(s, pf.SCATTER_SIZE, struct.pack("<Q", 100))
        pf.wait_ack(s, "scatter")
        pf.send_msg(s, pf.SCATTERED, struct.pack("<QQ", 1, 99) + bytes(64))
        pf.wait_ack(s, "scatter")  # a good one is answered
    finally:
        far.close()

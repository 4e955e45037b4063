"""Replication between real processes on 127.0.0.1: mirrors after every
sync, kill -9 of the active, links cut at random byte offsets, fencing
across processes, a wrong secret, and the CLI roles. Every process is
killed in teardown; every wait is bounded."""

import base64
import os
import pickle
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tha.cli.console import parse_duration, read_secret
from tha.replication import Active

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = os.path.join(ROOT, "tests", "helpers")
sys.path.insert(0, HELPERS)
import node  # noqa: E402  (tests/helpers/node.py: the App and the processes)


class Proc:
    """A child process whose stdout lines are read by a thread (so it never
    blocks on a full pipe) and whose stderr goes to a file."""

    def __init__(self, args, tmp_path, name):
        self.err_path = tmp_path / f"{name}.err"
        self.errf = open(self.err_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errf, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout=15.0):
        """The next stdout line (None at EOF)."""
        line = self.lines.get(timeout=timeout)
        if line is not None:
            self.seen.append(line)
        return line

    def wait_line(self, pattern, timeout=15.0):
        """Reads until a line matches; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.01, deadline - time.monotonic()))
            assert line is not None, f"EOF before {pattern!r}: {self.seen}\n{self.stderr()}"
            m = re.search(pattern, line)
            if m:
                return m

    def ask(self, cmd, timeout=15.0):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        m = self.wait_line(r"^OK (\S+)$", timeout)
        return pickle.loads(base64.b64decode(m.group(1)))

    def address(self):
        m = self.wait_line(r"^listening (\S+):(\d+)$")
        return m.group(1), int(m.group(2))

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)

    def close(self):
        self.kill()
        for f in (self.p.stdin, self.p.stdout, self.errf):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def spawn(tmp_path):
    procs = []

    def start(*args, name=None):
        p = Proc(list(args), tmp_path, name or f"p{len(procs)}")
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.close()


def helper(*args):
    return (os.path.join(HELPERS, "node.py"), *args)


def fmt(a):
    return "%s:%d" % a


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    return pred()


def settled_state(standby):
    """(applied seq, dump) once the standby stops moving."""
    prev = standby.ask("state")
    while True:
        time.sleep(0.3)
        cur = standby.ask("state")
        if cur[0] == prev[0]:
            return cur
        prev = cur


def check_applied_log(log):
    """Deltas step by one; a bulk sync jumps forward; nothing twice."""
    assert log and log[0][1], f"the first move is a bulk sync: {log[:3]}"
    seqs = [s for s, _ in log]
    assert len(set(seqs)) == len(seqs), f"a seq was applied twice: {log}"
    for (prev, _), (seq, bulk) in zip(log, log[1:]):
        if bulk:
            assert seq > prev, f"bulk sync went back from {prev} to {seq}: {log}"
        else:
            assert seq == prev + 1, f"gap or repeat {prev} -> {seq}: {log}"


# ---- two processes ---------------------------------------------------------------

def test_two_processes_mirror_after_every_sync(spawn):
    sb = spawn(*helper("standby", "--secret", "k"), name="standby")
    addr = sb.address()
    act = spawn(*helper("active", "--standby", fmt(addr), "--secret", "k",
                        "--interactive", "--seed", "7"), name="active")
    last = 0
    for _ in range(25):
        seq, dump = act.ask("round")
        applied, mirror = sb.ask("state")
        assert applied == seq > last  # ack="applied": applied before sync returned
        assert mirror == dump
        last = seq
    check_applied_log(sb.ask("log"))


def test_an_active_that_could_not_run_does_not_call_its_standby_dead(spawn, caplog):
    """The active's process holds the interpreter lock for twice its peer
    timeout (a C extension that never releases it): its threads cannot read
    the standby's heartbeats, which wait in the socket. That stall is its
    own, not the standby's silence: the link stays up, no timeout is
    logged, and the next sync goes over the same connection."""
    import ctypes
    import logging
    import tha
    sb = spawn(*helper("standby"), name="standby")  # its timeout: 2 s
    addr = sb.address()
    heap = tha.Heap(tha.Schema("struct s { int x; };"), tracking="explicit")
    p = heap.new("struct s")
    heap.roots["s"] = p
    caplog.set_level(logging.INFO, logger="tha")
    act = Active(heap, [addr], heartbeat=0.1, peer_timeout=0.7)
    try:
        act.sync(ack="applied")
        conn = act.conns[0]
        ctypes.PyDLL(None).usleep(1_400_000)  # the lock held 1.4 s
        time.sleep(0.3)  # the threads run again: the tick, the reader
        p.x = 5
        heap.touch(p)
        act.sync(ack="applied")
        assert act.conns == [conn]
        assert "nothing from the peer" not in caplog.text
    finally:
        act.close()


def test_a_standby_that_could_not_run_does_not_promote(spawn):
    """The same stall on the standby's side: its process holds the
    interpreter lock for twice promote_after while the active, alive in
    another process, keeps sending heartbeats. The standby must not promote
    on the first tick after: it could not have heard them."""
    import ctypes
    from tha.replication import Standby
    sb = Standby(("127.0.0.1", 0), promote_after=0.7, heartbeat=0.1, timeout=0.7)
    try:
        act = spawn(*helper("active", "--standby", fmt(sb.address), "--interactive",
                            "--seed", "3"), name="active")
        seq, _ = act.ask("round")
        assert sb.wait_for(seq, 10)
        ctypes.PyDLL(None).usleep(1_400_000)  # the lock held 1.4 s
        time.sleep(0.5)
        assert not sb.promoted
        seq2, dump = act.ask("round")
        assert seq2 > seq and sb.wait_for(seq2, 10)
        assert not sb.promoted
    finally:
        sb.close()


def test_a_frozen_active_with_its_socket_open_is_failed_over_from(spawn):
    """The other side of the stall rule: the active's process is stopped
    (SIGSTOP: its socket stays open, it just says nothing). The standby,
    ticked regularly, promotes promote_after after it last heard it."""
    from tha.replication import Standby
    sb = Standby(("127.0.0.1", 0), promote_after=0.7, heartbeat=0.1, timeout=0.7)
    try:
        act = spawn(*helper("active", "--standby", fmt(sb.address), "--interactive",
                            "--seed", "3"), name="active")
        seq, _ = act.ask("round")
        assert sb.wait_for(seq, 10)
        os.kill(act.p.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        while not sb.promoted and time.monotonic() - t0 < 10:
            time.sleep(0.02)
        assert sb.promoted and time.monotonic() - t0 < 1.5
    finally:
        sb.close()


def test_a_loaded_standby_still_fails_over_in_bounded_time(spawn):
    """Ticks delayed by load: the standby's interpreter lock is held 150 ms
    of every 170 (the ticker comes late, each gap beyond the heartbeat
    period counts as its own stall). A live active is not taken for dead;
    a frozen one is still failed over from, later but within a bound
    (each tick advances the promote clock by up to a heartbeat period)."""
    import ctypes
    from tha.replication import Standby
    sb = Standby(("127.0.0.1", 0), promote_after=0.7, heartbeat=0.1, timeout=0.7)
    stop = threading.Event()

    def hog():
        while not stop.is_set():
            ctypes.PyDLL(None).usleep(150_000)
            time.sleep(0.02)
    try:
        act = spawn(*helper("active", "--standby", fmt(sb.address), "--interactive",
                            "--seed", "3"), name="active")
        seq, _ = act.ask("round")
        assert sb.wait_for(seq, 10)
        threading.Thread(target=hog, daemon=True).start()
        time.sleep(0.8)
        assert not sb.promoted
        os.kill(act.p.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        while not sb.promoted and time.monotonic() - t0 < 15:
            time.sleep(0.02)
        assert sb.promoted and time.monotonic() - t0 < 5
    finally:
        stop.set()
        sb.close()


@pytest.mark.parametrize("ack,seed", [*(("applied", s) for s in range(1, 7)),
                                      *(("none", s) for s in range(7, 11))])
def test_kill_9_active_leaves_the_state_of_one_sync(spawn, tmp_path, ack, seed):
    """The standby holds exactly the state some sync shipped (compared with
    what the active recorded before each sync): the last one that returned
    or, with ack="applied", at most the one in flight; with ack="none" any
    earlier one. Never a mix of two."""
    rng = random.Random(seed)
    record = tmp_path / "record"
    record.mkdir()
    sb = spawn(*helper("standby"), name="standby")
    addr = sb.address()
    act = spawn(*helper("active", "--standby", fmt(addr), "--ack", ack, "--seed",
                        str(seed), "--rounds", "50", "--record", str(record)),
                name="active")
    act.wait_line(rf"^round {rng.randrange(0, 50)} ")
    time.sleep(rng.uniform(0, 0.004))
    act.p.send_signal(signal.SIGKILL)
    act.p.wait(10)
    returned = int((record / "returned").read_text()) if (record / "returned").exists() else 0
    recorded = {int(f.name[:-4]): f for f in record.iterdir() if f.name.endswith(".pkl")}
    applied, mirror = settled_state(sb)
    if ack == "applied":
        assert applied >= returned >= 1
    if applied == 0:
        assert ack == "none" and mirror is None  # died before the first bulk landed
        return
    assert applied in recorded and applied <= max(recorded)
    assert mirror == pickle.loads(recorded[applied].read_bytes()), \
        f"standby at seq {applied} does not hold that sync's state"
    check_applied_log(sb.ask("log"))


# ---- links cut at random byte offsets --------------------------------------------

class CuttingProxy:
    """Loopback TCP proxy that drops each link after a random number of
    bytes (both directions counted) once cutting is on. The number is
    log-uniform in [1, max_bytes): many cuts inside the handshake and small
    frames, and now and then a link long enough for the biggest frame."""

    def __init__(self, upstream, rng, max_bytes):
        self.upstream, self.rng, self.max_bytes = upstream, rng, max_bytes
        self.cutting = False
        self.cuts = 0
        self.links: list = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()[:2]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                a, _ = self.server.accept()
                b = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                continue
            with self.lock:
                link = {"socks": (a, b), "left": int(self.max_bytes ** self.rng.random())
                        if self.cutting else None, "dead": False}
                self.links.append(link)
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(link, src, dst),
                                 daemon=True).start()

    def _pump(self, link, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if link["dead"]:
                        return
                    if link["left"] is not None:
                        data = data[:link["left"]]
                        link["left"] -= len(data)
                    cut = link["left"] == 0
                    dst.sendall(data)  # under the lock: the cut is at this byte
                    if cut:
                        self.cuts += 1
                        break
        except OSError:
            pass
        self._kill(link)

    def _kill(self, link):
        with self.lock:
            link["dead"] = True
        for s in link["socks"]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def start_cutting(self):
        with self.lock:
            self.cutting = True
            links = list(self.links)
        for link in links:  # the current link too: start over with a budget
            self._kill(link)

    def close(self):
        self.closed = True
        self.server.close()
        for link in list(self.links):
            self._kill(link)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_cut_links_resume_without_gaps_or_repeats(spawn, seed):
    rng = random.Random(seed)
    sb = spawn(*helper("standby"), name="standby")
    proxy = CuttingProxy(sb.address(), rng, max_bytes=300_000)
    app = node.App(seed)
    act = Active(app.heap, [proxy.address], ack="applied", timeout=20.0)
    try:
        act.sync()  # the bulk sync goes through whole
        proxy.start_cutting()
        for _ in range(60):
            app.mutate()
            r = act.sync(timeout=20.0)
        applied, mirror = sb.ask("state")
        assert applied == r.seq
        assert mirror == app.heap.dump()
        assert proxy.cuts >= 5, f"only {proxy.cuts} cuts"
        log = sb.ask("log")
        check_applied_log(log)
        assert log[-1][0] == r.seq
    finally:
        act.close()
        proxy.close()


# ---- fencing and authentication across processes --------------------------------

def test_promoted_standby_fences_the_restarted_active(spawn, tmp_path):
    sb = spawn(*helper("standby", "--secret", "k", "--promote-after", "0.5"),
               name="standby")
    addr = sb.address()
    act = spawn(*helper("active", "--standby", fmt(addr), "--secret", "k",
                        "--interactive"), name="active")
    for _ in range(3):
        seq, _dump = act.ask("round")
    act.kill()
    st = wait_until(lambda: (s := sb.ask("status"))["promoted"] and s, 10)
    assert st and st["epoch"] == 1 and st["applied_seq"] == seq
    (tmp_path / "r2").mkdir()
    again = spawn(*helper("active", "--standby", fmt(addr), "--secret", "k",
                          "--rounds", "3", "--record", str(tmp_path / "r2")),
                  name="again")
    m = again.wait_line(r"^FENCED (.*)$")
    assert "epoch 1" in m.group(1)
    assert again.p.wait(10) == 3
    assert sb.ask("state")[0] == seq  # nothing from the old active landed
    # the promoted process is an active like any other: plain writes travel
    assert st["tracking"] in ("uffd-wp-async", "shadow-diff")
    second = spawn(*helper("standby", "--secret", "k"), name="second")
    fseq, salary = sb.ask(f"feed {fmt(second.address())}")
    assert fseq > seq
    got_seq, got = second.ask("state")
    assert got_seq == fseq
    staff = next(o for o in got["objects"] if o["offset"] == got["roots"]["staff"])
    assert staff["value"][7]["salary"] == salary


def test_wrong_secret_is_logged_and_the_cli_standby_keeps_running(spawn, tmp_path):
    (tmp_path / "key").write_bytes(b"right\n")
    sb = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0", "--secret-file",
               str(tmp_path / "key"), name="cli-standby")
    addr = fmt(sb.address())
    (tmp_path / "r1").mkdir()
    bad = spawn(*helper("active", "--standby", addr, "--secret", "wrong", "--timeout",
                        "1", "--rounds", "1", "--record", str(tmp_path / "r1")),
                name="bad")
    m = bad.wait_line(r"^REFUSED AuthError (.*)$")
    assert addr in m.group(1) and "authentication failed" in m.group(1)
    assert bad.p.wait(10) == 5
    assert wait_until(lambda: "authentication failed" in sb.stderr())
    assert sb.p.poll() is None
    (tmp_path / "r2").mkdir()
    good = spawn(*helper("active", "--standby", addr, "--secret", "right",
                         "--rounds", "2", "--record", str(tmp_path / "r2")), name="good")
    good.wait_line(r"^done$")
    sb.wait_line(r"^applied seq 3 ")
    sb.p.send_signal(signal.SIGTERM)  # clean shutdown: says so, exits 0
    sb.wait_line(r"^standby closed$")
    assert sb.p.wait(10) == 0


# ---- the standby's listener out of file descriptors -----------------------------

def test_standby_out_of_fds_goes_on_accepting_once_they_free_up(spawn, tmp_path):
    sb = spawn(*helper("standby", "--nofile-spare", "6"), name="standby")
    addr = sb.address()
    burst = []
    try:
        for _ in range(30):  # more than it has fds for: accept() fails EMFILE
            burst.append(socket.create_connection(addr, timeout=10))
        assert wait_until(lambda: "Too many open files" in sb.stderr(), 15), sb.stderr()
    finally:
        for s in burst:
            s.close()
    # fds free up: a real active connects and syncs
    app = node.App(1)
    with Active(app.heap, [addr], timeout=15.0) as act:
        r = act.sync()
    assert sb.ask("state")[0] == r.seq
    assert sb.p.poll() is None


# ---- the CLI says why it stops, in one line --------------------------------------

def _one_line_error(text):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    return lines


def test_demo_active_with_a_wrong_secret_exits_with_the_reason(spawn, tmp_path):
    (tmp_path / "right").write_bytes(b"right\n")
    (tmp_path / "wrong").write_bytes(b"wrong\n")
    sb = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0", "--secret-file",
               str(tmp_path / "right"), name="cli-standby")
    addr = fmt(sb.address())
    p = subprocess.run([sys.executable, "-m", "tha", "demo", "--role", "active",
                        "--standby", addr, "--secret-file", str(tmp_path / "wrong"),
                        "--employees", "100", "--timeout", "30"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode not in (0, None)
    errs = [ln for ln in _one_line_error(p.stderr) if "error:" in ln]
    assert len(errs) == 1 and addr in errs[0] and "authentication failed" in errs[0], \
        p.stderr
    assert len(p.stderr.splitlines()) <= 3, p.stderr  # no retry log flood
    assert sb.p.poll() is None  # the standby is not bothered by a wrong active


def test_demo_active_names_a_schema_mismatch(spawn, tmp_path):
    # a standby resumed from a file of another layout refuses this schema
    import tha
    other = tha.Heap(tha.Schema("struct other { int x; };"), capacity=1 << 20)
    other.new("struct other", x=1)
    other.checkpoint(str(tmp_path / "other.ckpt"))
    sb = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0", "--save",
               str(tmp_path / "other.ckpt"), name="cli-standby")
    addr = fmt(sb.address())
    p = subprocess.run([sys.executable, "-m", "tha", "demo", "--role", "active",
                        "--standby", addr, "--employees", "100", "--timeout", "30"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode not in (0, None)
    errs = [ln for ln in _one_line_error(p.stderr) if "error:" in ln]
    assert len(errs) == 1 and addr in errs[0] and "schema" in errs[0], p.stderr


def test_cli_missing_secret_file_is_one_line(tmp_path):
    missing = str(tmp_path / "no-such-key")
    for argv in (("standby", "--listen", "127.0.0.1:0"),
                 ("demo", "--role", "active", "--standby", "127.0.0.1:9"),
                 ("demo", "--role", "standby", "--listen", "127.0.0.1:0")):
        p = subprocess.run([sys.executable, "-m", "tha", *argv, "--secret-file", missing],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        lines = _one_line_error(p.stderr)
        assert len(lines) == 1 and missing in lines[0], p.stderr


def test_standby_cli_says_only_what_it_saved(spawn, tmp_path):
    save = tmp_path / "state.ckpt"
    sb = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0", "--save", str(save),
               name="cli-standby")
    sb.address()
    sb.p.send_signal(signal.SIGTERM)
    sb.wait_line(r"^standby closed$")
    assert sb.p.wait(10) == 0
    assert not save.exists()
    assert not any(line.startswith("saved") for line in sb.seen), sb.seen
    assert any("nothing" in line and str(save) in line for line in sb.seen), sb.seen


def test_standby_cli_with_a_reserve_mirrors_into_it(spawn, tmp_path):
    """--reserve: memory touched at start; the demo active's bulk sync and
    deltas land and are applied as without it."""
    sb = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0", "--reserve", "16M",
               name="cli-standby")
    addr = fmt(sb.address())
    act = spawn("-m", "tha", "demo", "--role", "active", "--standby", addr, "--rounds", "2",
                "--interval", "0", "--employees", "500", name="demo-active")
    act.wait_line(r"^bulk sync: seq 1, ")
    assert act.p.wait(20) == 0
    sb.wait_line(r"^bulk sync live at seq 1 ")
    for seq in (2, 3):
        sb.wait_line(rf"^applied seq {seq} \(")
    sb.p.send_signal(signal.SIGTERM)
    assert sb.p.wait(10) == 0


# ---- the CLI roles ---------------------------------------------------------------

def test_demo_roles_mirror_and_the_standby_prints_what_it_applied(spawn, tmp_path):
    (tmp_path / "key").write_bytes(b"s3cret\n")
    key = str(tmp_path / "key")
    sb = spawn("-m", "tha", "demo", "--role", "standby", "--listen", "127.0.0.1:0",
               "--secret-file", key, name="demo-standby")
    addr = fmt(sb.address())
    act = spawn("-m", "tha", "demo", "--role", "active", "--standby", addr,
                "--secret-file", key, "--rounds", "4", "--interval", "0",
                "--employees", "500", name="demo-active")
    act.wait_line(r"^bulk sync: seq 1, ")
    rounds = [act.wait_line(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d,]+)\s+[\d.]+ms$")
              for _ in range(4)]
    assert [int(m.group(1)) for m in rounds] == [1, 2, 3, 4]
    assert [int(m.group(2)) for m in rounds] == [2, 3, 4, 5]
    assert act.p.wait(20) == 0
    sb.wait_line(r"^bulk sync live at seq 1 ")
    for seq in (2, 3, 4, 5):
        sb.wait_line(rf"^applied seq {seq} \(")
    sb.p.send_signal(signal.SIGTERM)
    assert sb.p.wait(10) == 0


def test_demo_standby_takes_over_and_feeds_a_new_standby(spawn):
    third = spawn("-m", "tha", "standby", "--listen", "127.0.0.1:0",
                  "--promote-after", "1s", name="third")
    third_addr = fmt(third.address())
    sb = spawn("-m", "tha", "demo", "--role", "standby", "--listen", "127.0.0.1:0",
               "--promote-after", "500ms", "--standby", third_addr, "--rounds", "3",
               "--interval", "0", name="demo-standby")
    addr = fmt(sb.address())
    act = spawn("-m", "tha", "demo", "--role", "active", "--standby", addr,
                "--employees", "500", "--interval", "50ms", name="demo-active")
    sb.wait_line(r"^applied seq 4 ")
    act.kill()
    m = sb.wait_line(r"^promoted: resuming as the active at seq (\d+), epoch 1$")
    resumed = int(m.group(1))
    assert resumed >= 4
    rounds = [sb.wait_line(r"^\s+(\d+)\s+(\d+)\s+") for _ in range(3)]
    assert [int(r.group(2)) for r in rounds] == [resumed + 1, resumed + 2, resumed + 3]
    assert sb.p.wait(20) == 0
    third.wait_line(r"^bulk sync live at seq \d+ ")
    third.wait_line(rf"^applied seq {resumed + 3} \(")
    # its active finished and left: the third promotes in turn
    # the generic standby's promoted heap tracks plain writes (default auto)
    third.wait_line(rf"^promoted: epoch 2 at seq {resumed + 3};.*; tracking "
                    r"(uffd-wp-async|shadow-diff)$")


def test_standby_cli_help_and_bad_input(spawn, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tha", "standby", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for word in ("--listen", "--secret-file", "--promote-after", "-v"):
        assert word in out.stdout
    (tmp_path / "empty").write_bytes(b"\n")
    out = subprocess.run([sys.executable, "-m", "tha", "standby", "--listen",
                          "127.0.0.1:0", "--secret-file", str(tmp_path / "empty")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "is empty" in out.stderr
    out = subprocess.run([sys.executable, "-m", "tha", "demo", "--role", "standby",
                          "--listen", "127.0.0.1:0", "--secret-file",
                          str(tmp_path / "missing")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"cannot read the secret file {tmp_path / 'missing'}" in out.stderr


def test_durations_and_secrets(tmp_path):
    assert parse_duration("1s") == 1.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2") == 2.0
    (tmp_path / "k").write_bytes(b"\x00ab\r\n")
    assert read_secret(str(tmp_path / "k")) == b"\x00ab"


def test_cli_errors_are_one_line(tmp_path):
    for argv, needle in ((("demo", "--local", "--capacity", "99999999"), "error:"),
                         (("demo", "--role", "active", "--employees", "0",
                           "--standby", "127.0.0.1:9"), "count"),
                         (("standby", "--listen", "127.0.0.1:0", "--save", str(tmp_path)),
                          str(tmp_path))):
        p = subprocess.run([sys.executable, "-m", "tha", *argv], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode not in (0, None), p.stdout
        lines = _one_line_error(p.stderr)
        assert len(lines) == 1 and needle in lines[0], p.stderr

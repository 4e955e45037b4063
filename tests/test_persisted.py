"""ack="persisted" and standbys that keep their state on disk (save=, log=):
the ack returns only once the standby's files hold the frame, a standby
without a log never acks it, a restarted standby resumes from its files
(no bulk sync), and a bulk sync rewrites the files so they always hold a
real state. One test runs the standby as its own process (kill -9)."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import queue
import time

import pytest

import tha
from tha.replication import Active, Standby, SyncTimeout

from org import CDEF
import org

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N = 40


@pytest.fixture
def schema():
    return tha.Schema(CDEF)


def company(heap):
    return org.company(heap, N)


def mutate(heap, es, r):
    for i in range(r % 5, N, 5):
        es[i].salary = r * 1000.0 + i
        heap.touch(es + i, "salary")


def on_disk(save, log):
    """The state a restart would start from."""
    h = tha.Heap.load(save, log=log if os.path.exists(log) else None)
    return h.stats()["seq"], h.dump()


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("fsync,save_every", [("always", None), ("every 30ms", None),
                                              ("never", 0.2)])
def test_persisted_returns_once_the_files_hold_the_frame(schema, tmp_path, fsync,
                                                         save_every):
    save, log = str(tmp_path / "s.tha"), str(tmp_path / "s.log")
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = company(heap)
    with Standby(save=save, log=log, fsync=fsync, save_every=save_every) as sb, \
            Active(heap, [sb.address]) as act:
        r = act.sync(ack="persisted")  # the bulk sync: checkpoint + fresh log
        assert on_disk(save, log) == (r.seq, heap.dump())
        for rnd in range(1, 6):
            mutate(heap, es, rnd)
            r = act.sync(ack="persisted", timeout=5)
            assert r.acked_by == ["%s:%d" % sb.address]
            # the files hold at least this frame; nothing newer exists yet
            assert on_disk(save, log) == (r.seq, heap.dump())
        st = act.status()["peers"][0]
        assert st["acked_persisted"] == r.seq


def test_a_standby_without_a_log_never_acks_persisted(schema, tmp_path):
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = company(heap)
    with Standby() as plain, \
            Standby(save=str(tmp_path / "s.tha"), log=str(tmp_path / "s.log")) as logged, \
            Active(heap, [plain.address, logged.address]) as act:
        act.sync(ack="applied")
        mutate(heap, es, 1)
        with pytest.raises(SyncTimeout) as e:
            act.sync(ack="persisted", timeout=1)
        name = "%s:%d" % plain.address
        assert f"missing: {name}" in str(e.value)
        assert "delta log" in str(e.value)
        assert "%s:%d" % logged.address not in str(e.value).split("missing:")[1]
        # a quorum of one is met by the standby that keeps a log
        act.ack_quorum = 1
        mutate(heap, es, 2)
        r = act.sync(ack="persisted", timeout=5)
        assert r.acked_by == ["%s:%d" % logged.address]
        # save= alone (no log) does not ack persisted either
    heap2 = tha.Heap(schema, capacity=4 << 20)
    company(heap2)
    with Standby(save=str(tmp_path / "only.tha")) as sb, Active(heap2, [sb.address]) as act:
        act.sync()
        with pytest.raises(SyncTimeout, match="%s:%d" % sb.address):
            act.sync(ack="persisted", timeout=0.5)


def test_restart_from_disk_resumes_instead_of_bulk_sync(schema, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tha")
    save, log = str(tmp_path / "s.tha"), str(tmp_path / "s.log")
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = company(heap)
    with Active(heap, []) as _:
        pass
    sb = Standby(save=save, log=log)
    addr = sb.address
    act = Active(heap, [addr])
    try:
        act.sync(ack="persisted")
        for rnd in range(1, 4):
            mutate(heap, es, rnd)
            act.sync(ack="persisted")
        sb.close()
        mutate(heap, es, 10)
        missed = act.sync(ack="none")   # the standby is down: only the backlog has it
        caplog.clear()
        sb = Standby(listen=addr, save=save, log=log)
        assert sb.load_report is not None and sb.applied_seq == missed.seq - 1
        mutate(heap, es, 11)
        r = act.sync(ack="persisted", timeout=5)
        assert sb.wait_for(r.seq, 5)
        assert sb.heap.dump() == heap.dump()
        assert sb.status()["bulk_syncs"] == 0
        assert act.status()["peers"][0]["resumed"] is True
        assert any("resuming" in m for m in caplog.messages)
        assert on_disk(save, log) == (r.seq, heap.dump())
    finally:
        act.close()
        sb.close()


def test_bulk_sync_rewrites_the_files_from_the_new_state(schema, tmp_path):
    """A standby restarted from files of another history bulk syncs; the
    checkpoint is rewritten and the log restarted before it acks persisted,
    and the in-between state (new checkpoint, old log) loads as the new
    checkpoint."""
    save, log = str(tmp_path / "s.tha"), str(tmp_path / "s.log")
    old = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = company(old)
    with Standby(save=save, log=log) as sb, Active(old, [sb.address]) as act:
        for rnd in range(4):
            mutate(old, es, rnd)
            act.sync(ack="persisted")
        old_log = str(tmp_path / "old.log")
        shutil.copy(log, old_log)
    new = tha.Heap(schema, capacity=4 << 20, tracking="explicit")  # another lineage
    es2 = company(new)
    mutate(new, es2, 7)
    with Standby(save=save, log=log) as sb, Active(new, [sb.address]) as act:
        r = act.sync(ack="persisted")
        assert sb.status()["bulk_syncs"] == 1
        assert on_disk(save, log) == (r.seq, new.dump())
        mutate(new, es2, 8)
        r = act.sync(ack="persisted")
        assert on_disk(save, log) == (r.seq, new.dump())
    want = on_disk(save, str(tmp_path / "none"))  # the checkpoint alone
    assert want == (r.seq, new.dump())  # close() checkpointed the last state
    # crash between "checkpoint renamed" and "log restarted": the old log of
    # the other history sits beside the new checkpoint; load stops at it
    h = tha.Heap.load(save, log=old_log)
    assert (h.stats()["seq"], h.dump()) == want
    assert not h.load_report.clean


# ---- the standby as its own process ------------------------------------------

class CliStandby:
    def __init__(self, tmp_path, *args):
        self.errf = open(tmp_path / f"standby{time.monotonic_ns()}.err", "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, "-m", "tha", "standby", *args],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=self.errf, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, prefix, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"EOF before {prefix!r}: {self.seen}"
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self.p.stdout.close()
        self.errf.close()


def test_kill_9_after_persisted_then_restart_resumes(schema, tmp_path):
    save, log = str(tmp_path / "s.tha"), str(tmp_path / "s.log")
    heap = tha.Heap(schema, capacity=4 << 20, tracking="explicit")
    es = company(heap)
    procs = []

    def start(port):
        p = CliStandby(tmp_path, "--listen", f"127.0.0.1:{port}", "--save", save,
                       "--log", log, "--save-every", "0.3")
        procs.append(p)
        line = p.wait_line("listening ")
        host, _, port = line.split()[1].rpartition(":")
        return p, (host, int(port))

    p, addr = start(0)
    act = Active(heap, [addr])
    try:
        for rnd in range(1, 8):
            mutate(heap, es, rnd)
            r = act.sync(ack="persisted", timeout=10)
        want = (r.seq, heap.dump())
        p.p.send_signal(signal.SIGKILL)
        p.p.wait(10)
        assert on_disk(save, log) == want
        # while it is down the active goes on; the backlog keeps the frames
        mutate(heap, es, 20)
        act.sync(ack="none")
        p, _ = start(addr[1])
        loaded = p.wait_line("loaded ")
        assert f"-> seq {want[0]}" in loaded
        mutate(heap, es, 21)
        r = act.sync(ack="persisted", timeout=10)
        assert act.status()["peers"][0]["resumed"] is True
        p.p.send_signal(signal.SIGTERM)
        p.wait_line("standby closed")
        assert p.p.wait(10) == 0
        assert not any(s.startswith("bulk sync live") for s in p.seen)
        assert any(s.startswith(f"applied seq {r.seq}") for s in p.seen)
        assert on_disk(save, log) == (r.seq, heap.dump())
    finally:
        act.close()
        for q in procs:
            q.close()

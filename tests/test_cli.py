"""The CLI and the README: what a newcomer runs first must work."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "tha", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_demo_local_mirrors():
    out = run("demo", "--local", "--employees", "3000", "--rounds", "4").stdout
    assert "mirror matches active: yes" in out
    rounds = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d,]+)", out, re.M)
    assert [int(r[0]) for r in rounds] == [1, 2, 3, 4]
    # seq counts one snapshot then one delta per round, without gaps
    assert [int(r[1]) for r in rounds] == [2, 3, 4, 5]
    # a round ships a small fraction of what the bulk sync did
    bulk = int(re.search(r"snapshot seq 1, ([\d,]+) bytes", out).group(1).replace(",", ""))
    assert all(int(r[3].replace(",", "")) < bulk / 10 for r in rounds)


def test_demo_local_and_role_exclude_each_other():
    p = run("demo", "--local", "--role", "active", check=False)
    assert p.returncode == 2 and "--local or --role" in p.stderr, p.stderr


def test_every_subcommand_has_help():
    top = run("--help").stdout
    subs = re.search(r"\{([a-z,]+)\}", top).group(1).split(",")
    assert "demo" in subs and "bench" in subs
    for sub in subs:
        assert "usage:" in run(sub, "--help").stdout


def test_readme_starts_with_the_two_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block[0].endswith("python -m tha demo")
    assert block[1].endswith("python -m pytest -q")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert block[0] in ci and block[1] in ci  # CI runs README's commands verbatim


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "char[32]" in p.stdout


# ---- plain `demo`: three processes; its cleanup and its checks -------------------

PID = re.compile(r"^(active|standby-1|standby-2) \(pid (\d+)\)", re.M)
REMOVED = re.compile(r"removed (\S+);")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (the demo's children are reaped by their parent)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_soon(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def start_demo(*args):
    return subprocess.Popen([sys.executable, "-m", "tha", "demo", *args], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until(p, pattern, seen, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no {pattern!r} in:\n" + "".join(seen))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_stops_every_process_and_removes_its_files(sig):
    p = start_demo()
    seen = []
    try:
        read_until(p, r"^active +active +seq +3 ", seen)
        pids = [int(m.group(2)) for m in PID.finditer("".join(seen))]
        tmp = re.search(r"generated key in (\S+)\)", seen[0]).group(1)
        assert len(set(pids)) == 3 and all(alive(x) for x in pids), seen
        assert os.path.isdir(tmp)
        p.send_signal(sig)  # the parent only: it must stop its children itself
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err, err
    assert REMOVED.search(out).group(1) == tmp
    assert not os.path.exists(tmp)
    assert gone_soon(pids, timeout=1) == []


def test_demo_children_stop_when_the_parent_dies():
    """SIGKILL of the parent: no cleanup runs in it, yet its children see
    their stdin close and end."""
    p = start_demo()
    seen = []
    try:
        read_until(p, r"^active +active +seq +3 ", seen)
        pids = [int(m.group(2)) for m in PID.finditer("".join(seen))]
        tmp = re.search(r"generated key in (\S+)\)", seen[0]).group(1)
        p.kill()
        p.wait(10)
        assert gone_soon(pids) == [], pids
    finally:
        p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_demo_says_which_process_failed_and_cleans_up():
    p = run("demo", "--capacity", "99999999", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert errors and errors[0].startswith("python -m tha demo: error: active (pid "), \
        p.stderr
    assert "exited with status" in errors[0], p.stderr
    assert "summary:" not in p.stdout
    tmp = REMOVED.search(p.stdout).group(1)
    assert not os.path.exists(tmp)
    pids = [int(m.group(2)) for m in PID.finditer(p.stdout + p.stderr)]
    assert pids and gone_soon(pids, timeout=1) == []


def fake_run(after=3):
    """What the processes of a good run say (failover.verify's inputs):
    the active acked seqs 2..5 and shipped 6, standby-1 resumed at 5."""
    def rounds(first, n, nbytes=10_000):
        return [{"round": i + 1, "seq": first + i, "bytes": nbytes} for i in range(n)]
    act = SimpleNamespace(label="active", rounds=rounds(2, 4), rc=-signal.SIGKILL,
                          shipped={s: f"d{s}" for s in range(1, 7)})
    s1 = SimpleNamespace(label="standby-1", rounds=rounds(6, after), rc=0,
                         promoted={"seq": 5, "digest": "d5"},
                         end={"seq": 5 + after, "digest": "e"})
    s2 = SimpleNamespace(label="standby-2", rc=0, bulk={"seq": 6, "bytes": 1 << 20},
                         end={"seq": 5 + after, "digest": "e"})
    return act, s1, s2


def test_demo_checks_fail_when_they_should():
    from tha.cli.failover import verify
    act, s1, s2 = fake_run()
    assert verify(act, s1, s2, acked=5, resumed=5, after=3) == []
    # the frame in flight at the kill applied: resumed one later, still fine
    act.rounds.append({"round": 5, "seq": 6, "bytes": 10_000})
    assert verify(act, s1, s2, acked=6, resumed=5, after=3) == [
        "acknowledged sync lost: the active's seq 6 was acknowledged, standby-1 "
        "resumed from seq 5"]
    act, s1, s2 = fake_run()
    s1.promoted["digest"] = "other"
    assert "with a state other than the one the active shipped" in \
        verify(act, s1, s2, 5, 5, 3)[0]
    act, s1, s2 = fake_run()
    s1.rounds[0]["bytes"] = 150_000  # the whole metadata again, not the change
    assert "more than twice the active's largest round" in verify(act, s1, s2, 5, 5, 3)[0]
    act, s1, s2 = fake_run()
    s2.end["digest"] = "diverged"
    assert "standby-2 ended at seq 8 with another state" in verify(act, s1, s2, 5, 5, 3)[0]
    act, s1, s2 = fake_run()
    s2.bulk = None
    assert verify(act, s1, s2, 5, 5, 3) == [
        "standby-2 did not join the new active by bulk sync"]
    act, s1, s2 = fake_run()
    s1.rounds[1]["seq"] = 9
    assert "standby-1's rounds synced seqs [6, 9, 8]" in verify(act, s1, s2, 5, 5, 3)[0]
    act, s1, s2 = fake_run()
    s1.rc = 1
    assert verify(act, s1, s2, 5, 5, 3) == ["standby-1 exited with status 1, not 0"]


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_live_lines_redraw_on_a_terminal_and_log_when_piped(monkeypatch):
    from tha.cli import console
    now = [100.0]
    monkeypatch.setattr(console, "time", SimpleNamespace(monotonic=lambda: now[0]))
    tty = Tty()
    board = console.LiveLines(("a", "b"), tty)
    board.set("a", "a seq 1")
    now[0] += 0.01
    board.set("b", "b seq 1")   # within 50 ms of the last redraw: drawn later
    assert "b seq 1" not in tty.getvalue()
    board.refresh()
    board.note("a note")
    board.close()
    board.note("below")
    out = tty.getvalue()
    # each redraw goes back over the board's lines and clears below
    assert out.count("\x1b[2F\x1b[J") == 2 and out.count("\x1b[1F\x1b[J") == 1
    screen = out.rsplit("\x1b[J", 1)[1]
    assert screen == "a seq 1\nb seq 1\nbelow\n"
    assert "a note\na seq 1\nb seq 1\n" in out
    piped = io.StringIO()
    board = console.LiveLines(("a", "b"), piped)
    for text in ("a seq 1", "b seq 1", "a seq 2"):
        board.set(text[0], text)
    board.note("a note")
    board.close()
    assert piped.getvalue() == "a seq 1\nb seq 1\na seq 2\na note\n"

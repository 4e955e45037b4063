"""Every code block of README.md runs: the ```python blocks in order, in one
namespace, in a temporary directory (they continue each other, as a reader
would type them); the ```sh blocks' commands as processes, except the ones
that install the package or run this very suite (listed in SKIP)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

# sh commands the tests do not run, and why
SKIP = {
    "python3 -m venv .venv": "makes the virtualenv the tests run in",
    ".venv/bin/pip install -e .": "installs the package the tests run",
    ".venv/bin/pip install -e '.[test]'": "installs the package the tests run",
    ".venv/bin/python -m pytest -q": "runs this suite",
}


def blocks(lang):
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def commands(body):
    """The commands of an sh block: one per line, split at &&, comments off."""
    out = []
    for line in body.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            out.extend(c.strip() for c in line.split("&&"))
    return out


def argv(cmd, port=None):
    """A README command as argv for this interpreter (and a free port)."""
    if port is not None:
        cmd = cmd.replace("127.0.0.1:7400", f"127.0.0.1:{port}")
    words = cmd.split()
    assert words[0] in ("python", "python3", ".venv/bin/python"), cmd
    return [sys.executable] + words[1:]


def test_every_block_is_python_or_sh():
    kinds = [kind for kind, _ in BLOCK.findall(README)]
    assert set(kinds) <= {"python", "sh", ""}, kinds
    # plain blocks are not code (the architecture's layouts live in docs/)
    assert kinds.count("python") >= 4 and kinds.count("sh") == 3, kinds


def test_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    import tha
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "readme"}
    try:
        for i, body in enumerate(blocks("python")):
            try:
                exec(compile(body, f"README.md python block {i + 1}", "exec"), ns)
            except Exception as e:
                pytest.fail(f"README python block {i + 1} fails: "
                            f"{type(e).__name__}: {e}\n{body}")
    finally:
        for v in list(ns.values()):
            if isinstance(v, (tha.Active, tha.Standby, tha.Node)):
                v.close()
    assert "ann" not in capsys.readouterr().err


SUMMARY = re.compile(r"^summary: (\d+) syncs \(([\d,]+) bytes\), (\d+) bulk syncs "
                     r"\(([\d,]+) bytes\), failover ([\d.]+) s, no acknowledged sync lost$",
                     re.M)


def test_sh_block_one_runs_the_demo(tmp_path):
    """The first command's demo, as README gives it: three processes, a
    SIGKILL, a failover; exit 0 and its summary line, and what README says
    of it."""
    cmds = [c for c in commands(blocks("sh")[0]) if c not in SKIP]
    assert cmds == [".venv/bin/python -m tha demo"], cmds
    t0 = time.monotonic()
    out = subprocess.run(argv(cmds[0]), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    wall = time.monotonic() - t0
    assert out.returncode == 0, (out.stdout, out.stderr)
    text = out.stdout
    m = SUMMARY.search(text)
    assert m, text
    syncs, failover = int(m.group(1)), float(m.group(5))
    assert syncs == 16 and int(m.group(3)) == 2, m.group(0)
    assert 1.0 <= failover < 5.0, m.group(0)  # the heartbeat timeout is 1 s
    acked = int(re.search(r"its last acknowledged sync was seq (\d+)$", text, re.M)[1])
    resumed = int(re.search(r"resuming from seq (\d+)", text)[1])
    assert resumed >= acked, text
    # the promoted standby's first rounds ship what they change: ~11 KB, not
    # the 1.2 MB image nor the fresh region's metadata (~150 KB)
    promoted_rounds = re.findall(r"^standby-1 active +seq +\d+ +dirty +\d+ +([\d,]+) B",
                                 text, re.M)
    assert len(promoted_rounds) == 8, text
    assert all(int(b.replace(",", "")) < 20_000 for b in promoted_rounds), promoted_rounds
    assert "joined the new active by bulk sync" in text
    assert text.count(": equal") == 2, text
    tmp = re.search(r"removed (\S+);", text)[1]
    assert not os.path.exists(tmp)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    assert len(set(pids)) == 3 and not any(os.path.exists(f"/proc/{p}") for p in pids)
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
    # README says five to ten seconds; 30 s bounds it on a busy machine
    assert wall < 30, wall


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_until(p, pattern, lines, timeout=30.0):
    """Reads p's stdout until a line matches (the process ends the wait by
    exiting or printing; the timeout only bounds a hang)."""
    deadline = time.monotonic() + timeout
    os.set_blocking(p.stdout.fileno(), True)
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        m = re.search(pattern, line)
        if m:
            return m
    pytest.fail(f"no line matching {pattern!r}; got:\n" + "\n".join(lines))


def test_sh_block_two_failover_as_described(tmp_path):
    """Both terminals; kill terminal 2, terminal 1 promotes and carries on."""
    cmds = commands(blocks("sh")[1])
    port = free_port()
    procs, out = [], {}
    try:
        for cmd in cmds:
            if "--role" not in cmd:  # setup, e.g. the secret file
                subprocess.run(cmd, shell=True, cwd=tmp_path, check=True, timeout=30)
                continue
            role = "standby" if "--role standby" in cmd else "active"
            p = subprocess.Popen(argv(cmd, port), cwd=tmp_path, text=True,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            procs.append(p)
            out[role] = (p, [])
            if role == "standby":
                read_until(p, r"^listening ", out[role][1])
        sb, sb_lines = out["standby"]
        act, act_lines = out["active"]
        read_until(act, r"^bulk sync: seq 1,", act_lines)
        read_until(act, r"^\s+1\s+2\s+", act_lines)        # round 1 synced
        read_until(sb, r"^applied seq 2 ", sb_lines)
        act.kill()                                        # "kill terminal 2"
        act.wait(10)
        m = read_until(sb, r"^promoted: resuming as the active at seq (\d+), epoch 1$",
                       sb_lines)
        seq = int(m.group(1))
        assert seq >= 2
        read_until(sb, rf"^\s+\d+\s+{seq + 1}\s+", sb_lines)  # carries on the rounds
        sb.send_signal(signal.SIGTERM)
        assert sb.wait(10) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            p.stdout.close()


def test_sh_block_three_runs_a_cluster(tmp_path):
    """"Running a cluster" as written: etcd and three nodes in the
    background (`&`), then each command in turn, as a person would type
    them (after the cluster has elected and every node joined). Ports are
    swapped for free ones; everything started is stopped at the end."""
    import json
    import shutil
    if shutil.which("etcd") is None:
        pytest.skip("needs etcd (Debian: etcd-server; .ci/run installs it)")
    lines = [re.sub(r"\s+#.*$", "", line).strip()
             for line in blocks("sh")[2].splitlines()]
    lines = [line for line in lines if line]
    assert lines[0].startswith("apt-get install -y etcd-server"), lines
    ports = {p: str(free_port()) for p in ("2379", "2380", "7401", "7402", "7403",
                                            "8401", "8402", "8403")}

    def local(cmd):
        for old, new in ports.items():
            cmd = cmd.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return cmd

    background, outputs, waited = [], [], False
    try:
        for line in lines[1:]:
            cmd = local(line)
            if cmd.endswith("&"):
                words = cmd[:-1].split()
                if words[0] == "python":
                    words = [sys.executable] + words[1:]
                log = open(tmp_path / f"bg{len(background)}.log", "w")
                background.append(subprocess.Popen(
                    words, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))
                log.close()
                if words[0] == "etcd":
                    _wait_http(f"http://127.0.0.1:{ports['2379']}/health", b"true")
                continue
            if cmd.startswith("python -m tha cluster list") and not waited:
                _wait_voters(tmp_path, ports["2379"], 3)  # a person waits a moment
                waited = True
            words = cmd.split()
            for attempt in range(20):
                if words[0] == "python":
                    out = subprocess.run([sys.executable] + words[1:], cwd=tmp_path,
                                         capture_output=True, text=True, timeout=60)
                else:
                    out = subprocess.run(cmd, shell=True, cwd=tmp_path,
                                         capture_output=True, text=True, timeout=60)
                if "may lag" not in line or out.stdout == "52000":
                    break
                time.sleep(0.1)  # README says a standby's copy may lag a moment
            logs = {f.name: f.read_text()[-800:] for f in sorted(tmp_path.glob("bg*.log"))}
            assert out.returncode == 0, (line, out.stdout, out.stderr, logs)
            outputs.append((line, out.stdout))
    finally:
        for p in reversed(background):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    said = dict(outputs)
    table = next(v for k, v in outputs if k.endswith("--cluster payroll"))
    assert "3 voters, a sync needs 2" in table and table.count("standby") == 2, table
    put = json.loads(next(v for k, v in outputs if k.startswith("curl -sL -X PUT")))
    assert put["key"] == "alice" and put["seq"] >= 1, put
    sw = re.search(r"^switched over from (n\d) to (n\d): epoch \d+", next(
        v for k, v in outputs if "switchover" in k), re.M)
    assert sw and sw[1] != sw[2], outputs
    assert next(v for k, v in outputs if k.startswith("curl -s http")) == "52000"
    js = json.loads(next(v for k, v in outputs if k.endswith("--json")))
    assert js["leader"] == sw[2] and len(js["members"]) == 3, js
    assert said  # every command ran


def _wait_http(url, want, timeout=30.0):
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if want in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer {want!r} within {timeout}s")


def _wait_voters(cwd, port, n, timeout=60.0):
    import json
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "tha", "cluster", "list", "--etcd",
                              f"http://127.0.0.1:{port}", "--cluster", "payroll", "--json"],
                             cwd=cwd, capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            js = json.loads(out.stdout)
            if (len(js["voters"]) == n and js["leader"]
                    and sum(m["role"] == "standby" for m in js["members"]) == n - 1):
                return
        time.sleep(0.2)
    pytest.fail(f"the README's cluster did not get {n} voters within {timeout}s")

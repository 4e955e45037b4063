"""The native driver (csrc/src/net.c) against the Python one, over loopback:
the C example examples/c/active.c mirrors to an in-process tha.Standby;
the standby is promoted and a Python tha.Active mirrors the result to the
C example examples/c/standby.c. Same wire protocol both ways."""

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tha.replication import Active, Standby

CSRC = Path(__file__).resolve().parents[1] / "csrc"
ACTIVE = CSRC / "build" / "examples" / "active"
STANDBY = CSRC / "build" / "examples" / "standby"
NSTAFF = 50
ROUNDS = 4


@pytest.fixture(scope="module")
def native():
    """Builds the two examples; returns (secret or None, environment)."""
    proc = subprocess.run(
        ["make", "-C", str(CSRC), "build/examples/active", "build/examples/standby"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout
    usage = subprocess.run([str(ACTIVE)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "usage" in usage.stdout
    env = {k: v for k, v in os.environ.items() if k != "THA_SECRET"}
    if "THA_SECRET=" in usage.stdout:  # built with OpenSSL: authenticate
        env["THA_SECRET"] = "k"
        return b"k", env
    return None, env


def run_active(port, env, rounds=ROUNDS):
    return subprocess.run([str(ACTIVE), "127.0.0.1", str(port), str(rounds)],
                          capture_output=True, text=True, env=env, timeout=120)


def expected_salary(i, rounds=ROUNDS):
    """What examples/c/active.c leaves in es[i].salary after `rounds`."""
    return rounds * 1000.0 + i if i % 7 == 0 and rounds else 0.0


def test_c_active_to_python_standby_and_back(native):
    secret, env = native
    with Standby(secret=secret) as sb:
        proc = run_active(sb.address[1], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "bulk sync" in proc.stdout
        seqs = [int(s) for s in re.findall(r"round \d+: seq (\d+) applied", proc.stdout)]
        assert len(seqs) == ROUNDS + 1
        assert seqs == list(range(seqs[0], seqs[0] + ROUNDS + 1))  # no gaps, no repeats
        # ack=applied: the standby had applied the last round when sync returned
        assert sb.applied_seq == seqs[-1]

        heap = sb.heap
        ffi = heap.schema.ffi
        staff = heap.roots["staff"]
        assert heap.stats()["seq"] == seqs[-1]
        for i in range(NSTAFF):
            assert staff[i].id == i
            assert staff[i].salary == expected_salary(i)
            assert ffi.string(staff[i].dept.name) == b"eng"
        assert staff[3].mgr.id == 1 and staff[3].mgr.mgr.id == 0
        assert staff[9].mgr.id == 1 and ffi.string(staff[9].name) == b"moved"
        assert [staff[0].reports[k].id for k in range(3)] == [1, 2, 3]
        newbie = heap.roots["newbie"]
        assert ffi.string(newbie.name) == b"newbie" and newbie.mgr.id == 0
        assert staff[0].reports[3].id == 1000
        assert heap.roots["dept"].id == 1
        heap.check()
        before = heap.dump()

        # an active that does not know the secret is turned away; state kept
        if secret:
            bad = run_active(sb.address[1], dict(env, THA_SECRET="wrong"), rounds=1)
            assert bad.returncode == 1
            assert "authentication failed" in bad.stderr
            assert sb.heap.dump() == before and sb.applied_seq == seqs[-1]

        heap2 = sb.promote()
        epoch = heap2.stats()["epoch"]
        assert epoch >= 1
        # the old (or any epoch-0) active that comes back learns it is fenced
        fenced = run_active(sb.address[1], env, rounds=1)
        assert fenced.returncode == 1
        assert "fenced" in fenced.stderr
        assert sb.heap.dump() == before

    # "and back": the promoted Python heap, mirrored by the native standby
    sbproc = subprocess.Popen([str(STANDBY), "127.0.0.1", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = sbproc.stdout.readline()
        m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        port = int(m.group(1))
        with Active(heap2, [("127.0.0.1", port)], secret=secret) as act:
            r = act.sync(ack="applied", timeout=20)  # bulk sync
            staff2 = heap2.roots["staff"]
            for rnd in range(1, 4):
                staff2[rnd].salary = 4242.0 + rnd
                heap2.touch(staff2 + rnd, "salary")
                r2 = act.sync(ack="applied", timeout=10)
                assert r2.seq == r.seq + rnd
        out, err = sbproc.communicate(timeout=60)
    finally:
        if sbproc.poll() is None:
            sbproc.kill()
            sbproc.communicate()
    assert sbproc.returncode == 0, out + err
    assert "the active closed the connection" in out
    st = heap2.stats()
    m = re.search(r"seq (\d+) epoch (\d+) objects (\d+)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (
        st["seq"], epoch, st["live_objects"])
    staff2 = heap2.roots["staff"]
    salaries = sum(staff2[i].salary for i in range(NSTAFF))
    mgr_ids = sum(staff2[i].mgr.id for i in range(NSTAFF))
    m = re.search(r"staff 50 salary_sum ([\d.]+) mgr_id_sum (\d+) dept eng", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(salaries)
    assert int(m.group(2)) == mgr_ids
    assert "newbie newbie mgr emp0" in out


def test_c_active_without_standby_fails_cleanly(native):
    _, env = native
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        proc = run_active(port, env, rounds=1)
    assert proc.returncode == 1
    assert "connecting to" in proc.stderr and "refused" in proc.stderr


@pytest.mark.parametrize("static", [False, True], ids=["shared", "static"])
def test_a_program_builds_against_the_tree_with_pkg_config(tmp_path, static):
    """`make -C csrc` writes build/tha-uninstalled.pc, so a C program builds
    against this tree before `make install`; static linking takes
    pkg-config --static (libtha needs -lm -pthread)."""
    import shutil
    if not shutil.which("pkg-config"):
        pytest.skip("pkg-config is not installed")
    r = subprocess.run(["make", "-C", str(CSRC)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    env = dict(os.environ, PKG_CONFIG_PATH=str(CSRC / "build"))
    flags = subprocess.run(["pkg-config", *(["--static"] if static else []), "--cflags",
                            "--libs", "tha-uninstalled"], capture_output=True, text=True,
                           env=env, check=True).stdout.split()
    src = tmp_path / "v.c"
    src.write_text('#include "tha.h"\n#include <stdio.h>\n'
                   'int main(void) { printf("%s\\n", tha_version()); return 0; }\n')
    exe = tmp_path / "v"
    if static:  # the archive, not the shared object beside it
        flags = [f for f in flags if f != "-ltha"] + [str(CSRC / "build" / "libtha.a")]
        cmd = ["cc", str(src), "-o", str(exe), *flags]
    else:
        cmd = ["cc", str(src), "-o", str(exe), *flags,
               f"-Wl,-rpath,{CSRC / 'build'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == tha_version()


def tha_version():
    import tha
    return tha.__version__


def test_registration_macros_compile_as_cxx(tmp_path):
    import shutil
    cxx = shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler")
    r = subprocess.run(["make", "-C", str(CSRC)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = tmp_path / "macros"
    r = subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror",
                        f"-I{CSRC / 'include'}", str(CSRC / "tests" / "cxx" / "macros.cpp"),
                        str(CSRC / "build" / "libtha.a"), "-lm", "-pthread", "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out


def test_uthash_header_compiles_as_cxx(tmp_path):
    """tha_uthash.h with uthash's macros, as C++11: a table built on one
    heap, mirrored, and found on the other (csrc/tests/cxx/uthash.cpp)."""
    import shutil
    cxx = shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler")
    if not Path("/usr/include/uthash.h").exists():
        pytest.skip("no <uthash.h> (apt-get install uthash-dev)")
    r = subprocess.run(["make", "-C", str(CSRC)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = tmp_path / "uthash"
    r = subprocess.run([cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror",
                        f"-I{CSRC / 'include'}", str(CSRC / "tests" / "cxx" / "uthash.cpp"),
                        str(CSRC / "build" / "libtha.a"), "-lm", "-pthread", "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("ok 1000 items"), out


def test_uthash_current_heap_is_one_per_program(tmp_path):
    """tha_uthash_use in one file, HASH_ADD in another: both files see the
    same current heap (csrc/tests/multi_tu)."""
    import shutil
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    if not Path("/usr/include/uthash.h").exists():
        pytest.skip("no <uthash.h> (apt-get install uthash-dev)")
    r = subprocess.run(["make", "-C", str(CSRC)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    exe = tmp_path / "multi"
    src = CSRC / "tests" / "multi_tu"
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror",
                        f"-I{CSRC / 'include'}", str(src / "main.c"), str(src / "table.c"),
                        str(CSRC / "build" / "libtha.a"), "-lm", "-pthread", "-o", str(exe)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "ok\n", out

"""examples/c/seed.c, the seed demo's operations as a scripted C program,
mirrored to Python standbys over loopback: the state the C program prints
after each sync is rebuilt here by walking the standby's heap (lists, a
tree through its parent links, a cycle, char * titles), and must match.
Part-way the program moves to a second, clean standby (bulk sync); the
first keeps the state it had then."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tha.replication import Standby

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SEED = CSRC / "build" / "examples" / "seed"


@pytest.fixture(scope="module")
def seed():
    proc = subprocess.run(["make", "-C", str(CSRC), "build/examples/seed"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout
    usage = subprocess.run([str(SEED), "x"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stdout
    env = {k: v for k, v in os.environ.items() if k != "THA_SECRET"}
    if "THA_SECRET=" in usage.stdout:  # built with OpenSSL: authenticate
        env["THA_SECRET"] = "seed-key"
        return b"seed-key", env
    return None, env


def describe(heap):
    """The line seed.c's describe() prints, from a mirror's roots."""
    ffi = heap.schema.ffi
    roots = heap.roots

    def values(head):
        out = []
        while head != ffi.NULL:
            out.append(str(head.value))
            head = head.next
        return out

    def tree_min(t):
        while t != ffi.NULL and t.left != ffi.NULL:
            t = t.left
        return t

    def tree_next(t):  # in-order successor through the parent links
        if t.right != ffi.NULL:
            return tree_min(t.right)
        p = t.parent
        while p != ffi.NULL and t == p.right:
            t, p = p, p.parent
        return p

    def preorder(t, out):
        if t != ffi.NULL:
            out.append(str(t.key))
            preorder(t.left, out)
            preorder(t.right, out)
        return out

    tree = roots["tree"]
    inorder = []
    n = tree_min(tree)
    while n != ffi.NULL:
        inorder.append(f"{n.key}/{n.parent.key if n.parent != ffi.NULL else 0}")
        n = tree_next(n)
    boss = roots["boss"]
    eng = boss.engineer
    s = lambda cdata: ffi.string(cdata).decode()  # noqa: E731
    people = (f" {s(boss.name)} ({s(boss.title)}) manages {s(eng.name)} ({s(eng.title)}),"
              f" whose manager is {s(eng.manager.name)}")
    return (f"list1: {' '.join(values(roots['list1']))} | list2: {' '.join(values(roots['list2']))}"
            f" | inorder: {' '.join(inorder)} | preorder: {' '.join(preorder(tree, []))}"
            f" | people:{people}")


def test_seed_program_alone_mirrors_in_process(seed):
    """Without arguments the script mirrors to a heap in its own process and
    checks every mirror itself (what `make -C csrc examples` runs)."""
    _, env = seed
    proc = subprocess.run([str(SEED)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("same state, heap check ok") == 8
    assert "lowest common ancestor: lca(6, 43) = 25, lca(56, 93) = 75, lca(6, 93) = 50" in out
    assert re.search(r"leaks on the active: 4 unreachable", out)
    assert re.search(r"leaks on the mirror: 4 unreachable", out)
    assert re.search(r"checkpoint \S+ at seq \d+, loaded: same state, heap check ok", out)
    assert "seed demo: every mirror matched" in out


def test_seed_program_mirrors_to_python_standbys(seed):
    secret, env = seed
    with Standby(secret=secret) as first, Standby(secret=secret) as clean:
        proc = subprocess.run(
            [str(SEED), "127.0.0.1", str(first.address[1]), "127.0.0.1", str(clean.address[1])],
            capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        states = re.findall(r"^state: (.*)$", out, re.M)
        steps = re.findall(r"^([a-z /0-9]+): (?:bulk sync|seq (\d+) applied)", out, re.M)
        assert [name for name, _ in steps] == [
            "build", "add/remove nodes", "remove half", "exchange lists",
            "clean standby", "cut list2", "collect"]
        assert len(states) == len(steps)
        # the lists were exchanged by swapping two C globals: the roots followed
        before_swap, after_swap = states[2], states[3]
        l1 = re.search(r"list1: ([\d ]*) \|", before_swap).group(1)
        assert re.search(r"list2: ([\d ]*) \|", after_swap).group(1) == l1

        # the first standby stopped at the exchange, the state it last applied
        assert describe(first.heap) == states[3]
        assert first.applied_seq == int(steps[3][1])
        first.heap.check()
        # the clean standby came by bulk sync and followed to the end
        assert describe(clean.heap) == states[-1]
        assert clean.applied_seq == int(steps[-1][1])
        clean.heap.check()
        assert clean.heap.leaks() == []  # the collect travelled too
        ffi = clean.heap.schema.ffi
        boss = clean.heap.roots["boss"]
        assert boss.engineer.manager == boss  # the cycle, rebased
        assert ffi.string(boss.title) == b"chief engineer"

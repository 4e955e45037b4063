"""The C core keeps its layers: every #include and every call between the
files of csrc/src goes down a layer or stays inside its own, no two files
depend on each other in a circle, and a private header (*_priv.h) is seen
only by its own layer.

The layers are the table under "## Layers" in docs/architecture.md, the one
place they are written: each row is `| rank | layer | files | ... |`. Calls
are read from the symbol tables of the objects (every src/*.c compiled on
its own, nm), so a call through a macro or an inline function counts too;
includes are read from the sources.
"""
import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "csrc" / "src"
DOC = ROOT / "docs" / "architecture.md"


def layer_table():
    """{file name: (rank, layer)} from the Layers table of the docs."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"^## Layers\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "docs/architecture.md has no '## Layers' section"
    table = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        rank, layer = int(cells[0]), cells[1]
        for path in re.findall(r"`csrc/src/([^`]+)`", cells[2]):
            assert path not in table, f"{path} is in two layers of the table"
            table[path] = (rank, layer)
    assert table, "the Layers table lists no csrc/src files"
    return table


def includes():
    """{file: {included src file}} for every file of csrc/src."""
    out = {}
    for p in sorted(SRC.iterdir()):
        if p.suffix not in (".c", ".h"):
            continue
        names = re.findall(r'^\s*#\s*include\s+"([^"]+)"', p.read_text(encoding="utf-8"),
                           re.M)
        out[p.name] = {n for n in names if (SRC / n).exists()}
    return out


def calls(tmp_path):
    """{file: {other file: [symbols it uses from there]}}, from nm."""
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc) or not shutil.which("nm"):
        pytest.skip("needs a C compiler and nm")
    defined, used = {}, defaultdict(set)
    for p in sorted(SRC.glob("*.c")):
        obj = tmp_path / (p.stem + ".o")
        subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-O0", "-w",
                        "-I", str(ROOT / "csrc" / "include"), "-I", str(SRC),
                        "-c", str(p), "-o", str(obj)], check=True)
        nm = subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                            check=True).stdout
        for line in nm.splitlines():
            f = line.split()
            if len(f) == 3 and f[1] in "TDBRV":
                defined[f[2]] = p.name
            elif len(f) == 2 and f[0] == "U":
                used[p.name].add(f[1])
    out = defaultdict(lambda: defaultdict(list))
    for name, syms in used.items():
        for s in sorted(syms):
            home = defined.get(s)
            if home and home != name:
                out[name][home].append(s)
    return out


def cycles(graph):
    """Strongly connected sets of more than one file (Tarjan)."""
    index, low, on, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_file_has_a_layer():
    table = layer_table()
    files = {p.name for p in SRC.iterdir() if p.suffix in (".c", ".h")}
    assert sorted(files - set(table)) == [], "csrc/src files missing from the Layers table"
    assert sorted(set(table) - files) == [], "the Layers table names files that do not exist"


def test_no_edge_points_up_a_layer(tmp_path):
    table = layer_table()
    edges = []  # (from, to, what)
    for f, incs in includes().items():
        for g in sorted(incs):
            edges.append((f, g, "#include"))
    for f, homes in calls(tmp_path).items():
        for g, syms in sorted(homes.items()):
            edges.append((f, g, "calls " + ", ".join(syms)))
    bad = []
    for f, g, what in edges:
        if f not in table or g not in table:
            continue  # test_every_file_has_a_layer says so
        (rf, lf), (rg, lg) = table[f], table[g]
        if lf == lg:
            if g.endswith("_priv.h") or rg <= rf:
                continue
        elif rg < rf and not g.endswith("_priv.h"):
            continue
        why = "a private header of another layer" if g.endswith("_priv.h") else "up"
        bad.append(f"{f} ({rf} {lf}) -> {g} ({rg} {lg}), {why}: {what}")
    assert bad == [], "edges against the layer order:\n" + "\n".join(bad)


def test_no_file_cycles(tmp_path):
    graph = defaultdict(set)
    for f, incs in includes().items():
        graph[f] |= incs
    for f, homes in calls(tmp_path).items():
        graph[f] |= set(homes)
    found = [" <-> ".join(c) for c in cycles(graph)]
    assert found == [], "files that depend on each other:\n" + "\n".join(found)

"""The Python package's layers (issue 10). The order is the table under
"### Import layers" in docs/architecture.md, read from there, so the docs
and this test cannot drift:

* every module of tha/ is in the table, and every module in the table exists;
* every import of every module (``ast``: also those inside functions, and
  ``from . import x`` resolved to the submodule) points to a strictly
  lower layer: a layer never imports its own or a higher one;
* the import graph has no cycle (the test names it if one appears);
* every module imports alone, each in a fresh interpreter;
* every ``python -m tha...`` that the package starts names a module.

Python runs a package's ``__init__`` before any of its modules (``tha``
before ``tha.heap``); that is how a package works, not an import the file
makes, so it is no edge here: ``tha`` (the facade re-exporting the API) sits
above the library it re-exports.
"""

import ast
import importlib.machinery
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tha"
DOC = ROOT / "docs" / "architecture.md"
HEADING = "### Import layers"


def modules() -> dict:
    """{dotted name: path} of every module in tha/ (the compiled extension too)."""
    out = {}
    ext = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for path in sorted(PKG.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        rel = path.relative_to(ROOT)
        if path.suffix == ".py":
            parts = list(rel.with_suffix("").parts)
        elif path.name.endswith(ext):
            parts = list(rel.parent.parts) + [path.name.split(".")[0]]
        else:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_table() -> dict:
    """{module: layer number} from the table under HEADING."""
    text = DOC.read_text()
    start = text.find("\n" + HEADING + "\n")
    assert start >= 0, f"docs/architecture.md has no {HEADING!r} section"
    section = text[start + len(HEADING) + 2:]
    section = section[:section.find("\n#")] if "\n#" in section else section
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not cells[0].isdigit():
            continue  # prose, the header row, the separator
        for name in re.findall(r"`([\w.]+)`", cells[1]):
            assert name not in table, f"{name} is in two rows of the layer table"
            table[name] = int(cells[0])
    assert table, f"no rows under {HEADING!r}"
    return table


def imports(name: str, path: Path, known) -> list:
    """(line, module) for every tha module that `name` imports."""
    if path.suffix != ".py":
        return []
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import sub` imports the module pkg.sub
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t == "tha" or t.startswith("tha."):
                while t not in known and "." in t:  # `import tha.x.y` of a name
                    t = t.rpartition(".")[0]
                out.append((node.lineno, t))
    return out


def graph() -> dict:
    mods = modules()
    return {name: imports(name, path, mods) for name, path in mods.items()}


def test_every_module_has_a_layer():
    mods, table = modules(), layer_table()
    missing = sorted(set(mods) - set(table))
    stale = sorted(set(table) - set(mods))
    assert not missing, f"modules not in the layer table of docs/architecture.md: {missing}"
    assert not stale, f"the layer table names modules that do not exist: {stale}"


def test_imports_point_down():
    table, up = layer_table(), []
    for name, edges in graph().items():
        for line, target in edges:
            if target == name:
                continue
            if table.get(target, -1) >= table.get(name, -1):
                up.append(f"{name} (layer {table.get(name)}) line {line} imports "
                          f"{target} (layer {table.get(target)})")
    assert not up, "imports that do not point to a lower layer:\n" + "\n".join(up)


def test_no_import_cycle():
    edges = {n: sorted({t for _, t in e if t != n}) for n, e in graph().items()}
    cycles, state = [], {}

    def visit(n, path):
        state[n] = "open"
        for t in edges.get(n, ()):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def runnable():
    # __main__ modules run the CLI when imported: python -m covers them
    return sorted(n for n in modules() if not n.endswith("__main__"))


@pytest.mark.parametrize("name", runnable())
def test_imports_alone(name):
    p = subprocess.run([sys.executable, "-c", "import importlib, sys; "
                        "importlib.import_module(sys.argv[1])", name],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and not p.stderr, p.stderr


def test_every_started_module_exists():
    """Each process the package and the tests start with ``python -m`` of a
    tha module names one that exists (a moved module must not leave a stale
    launch behind)."""
    mods, bad = modules(), []
    for path in sorted(PKG.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py")):
        for m in re.finditer(r"""["']-m["'],\s*["'](tha[\w.]*)["']""", path.read_text()):
            target = m.group(1)
            if target not in mods and target + ".__main__" not in mods:
                bad.append(f"{path.relative_to(ROOT)}: -m {target}")
    assert not bad, "python -m of modules that do not exist:\n" + "\n".join(bad)

"""The CLI and the README: what a newcomer runs first must work."""

import os
import re
import subprocess
import sys

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


def test_demo_without_local_says_what_is_missing():
    p = run("demo", check=False)
    assert p.returncode == 2 and "--local" in p.stdout


def test_every_subcommand_has_help():
    top = run("--help").stdout
    subs = re.search(r"\{([a-z,]+)\}", top).group(1).split(",")
    assert "demo" in subs and "bench" in subs
    for sub in subs:
        assert "usage:" in run(sub, "--help").stdout


def test_readme_starts_with_the_two_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block[0].endswith("python -m tha demo --local")
    assert block[1].endswith("python -m pytest -q")
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert block[1] in ci  # CI runs exactly README's test command


def test_readme_python_example_runs():
    text = open(os.path.join(ROOT, "README.md")).read()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "char[32]" in p.stdout

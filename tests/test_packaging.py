"""What the package says about itself: metadata, the console script, the
typing marker, and a wheel tagged for the stable ABI its extension uses."""
import glob
import importlib.metadata as md
import os
import subprocess
import sys
import zipfile

import pytest

import tha

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metadata():
    m = md.metadata("tha")
    assert m["Name"] == "tha" and m["Version"] == tha.__version__
    assert "C structs" in m["Summary"]
    assert m["License"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in m.get_all("Classifier")
    assert os.path.exists(os.path.join(ROOT, "LICENSE"))
    assert os.path.exists(os.path.join(ROOT, "CHANGELOG.md"))


def test_console_script_runs_the_cli():
    eps = [e for e in md.entry_points(group="console_scripts") if e.name == "tha"]
    assert [e.value for e in eps] == ["tha.cli:main"]
    script = os.path.join(os.path.dirname(sys.executable), "tha")
    if not os.path.exists(script):
        pytest.skip(f"{script} not installed (pip install -e . makes it)")
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and tha.__version__ in r.stdout + r.stderr


def test_typed_marker():
    assert os.path.exists(os.path.join(os.path.dirname(tha.__file__), "py.typed"))


def test_wheel_is_abi3(tmp_path):
    """The extension is built with Py_LIMITED_API (_tha.abi3.so): the wheel
    says so (cp39-abi3), holds py.typed and the license, and names the
    console script."""
    pytest.importorskip("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), ROOT],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    [whl] = glob.glob(str(tmp_path / "*.whl"))
    assert os.path.basename(whl).endswith("-cp39-abi3-linux_x86_64.whl"), whl
    names = zipfile.ZipFile(whl).namelist()
    assert "tha/py.typed" in names
    assert any(n.endswith(".abi3.so") for n in names)
    assert any(n.endswith("LICENSE") for n in names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tha = tha.cli:main" in zipfile.ZipFile(whl).read(ep).decode()

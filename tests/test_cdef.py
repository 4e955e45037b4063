"""The hand-written cdef matches the public header, and the extension has it."""
import re
from pathlib import Path

import tha
from tha._ffi import ffi, lib

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "csrc" / "include" / "tha.h").read_text()
CDEF = (ROOT / "tha" / "_cdef.h").read_text()

# "THA_API <type> <name>(" possibly across lines; the #define of THA_API
# itself is not followed by a return type and a parenthesis.
_API = re.compile(r"^THA_API\s+[\w\s\*]*?\b(tha_\w+)\s*\(", re.M)
_DECL = re.compile(r"^[\w\s\*]*?\b(tha_\w+)\s*\(", re.M)


def _strip_comments(text):
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def api_functions():
    names = _API.findall(HEADER)
    assert len(names) > 30, names  # the parse itself works
    return names


def cdef_functions():
    return set(_DECL.findall(_strip_comments(CDEF)))


def test_every_api_function_is_in_cdef_and_lib():
    declared = cdef_functions()
    missing_cdef = [n for n in api_functions() if n not in declared]
    assert not missing_cdef, f"not in tha/_cdef.h: {missing_cdef}"
    missing_lib = [n for n in api_functions() if not hasattr(lib, n)]
    assert not missing_lib, f"not on tha._ffi.lib: {missing_lib}"


def test_cdef_declares_nothing_extra():
    # the extension's own C (the driver's HMAC) is defined in build_ext.py
    own = set(_DECL.findall((ROOT / "build_ext.py").read_text()))
    extra = cdef_functions() - set(api_functions()) - own
    assert not extra, f"in tha/_cdef.h but not THA_API in tha.h: {extra}"


def test_version_matches():
    assert ffi.string(lib.tha_version()).decode() == tha.__version__
    assert ffi.string(lib.THA_VERSION_STRING).decode() == tha.__version__
    assert (
        f"{lib.THA_VERSION_MAJOR}.{lib.THA_VERSION_MINOR}.{lib.THA_VERSION_PATCH}"
        == tha.__version__
    )


ERRORS = re.findall(r'X\((THA_E\w+),\s*(-\d+),\s*"([^"]*)"\)', HEADER)


def test_every_error_code_is_in_cdef():
    assert len(ERRORS) >= 16
    missing = [n for n, _, _ in ERRORS if not re.search(rf"\b{n}\b", CDEF)]
    assert not missing, f"error codes not in tha/_cdef.h: {missing}"


def test_error_codes_and_messages():
    for name, value, msg in ERRORS:
        assert getattr(lib, name) == int(value)
        assert ffi.string(lib.tha_strerror(int(value))).decode() == msg
    assert ffi.string(lib.tha_strerror(0)) == b"ok"
    assert ffi.string(lib.tha_strerror(-2)) == b"No such file or directory"
    assert ffi.string(lib.tha_strerror(-39999)) == b"unknown error"
    assert ffi.string(lib.tha_strerror(12345)) == b"unknown error"


def test_crc32c_check_value():
    assert lib.tha_crc32c(0, b"123456789", 9) == 0xE3069283

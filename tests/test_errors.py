"""One error map (tha.errors.error_for): every C status maps to one class,
each leaf inherits the builtin it resembles, OS errors keep errno and the
detail, and the replication layer takes its classes from the same map."""
import errno
import os
import re

import pytest

import tha
from tha import errors
from tha._ffi import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def c_codes():
    with open(os.path.join(ROOT, "csrc", "include", "tha.h")) as f:
        return re.findall(r"X\((THA_E[A-Z]+),", f.read())


def test_every_c_status_has_its_own_class():
    names = c_codes()
    assert len(names) >= 23
    for name in names:
        code = getattr(lib, name)
        exc = errors.error_for(code, f"detail of {name}")
        assert type(exc) is not tha.Error, f"{name} falls to the base class"
        assert type(exc) is errors.error_class(code)
        assert isinstance(exc, tha.Error) and exc.code == code
        assert str(exc) == f"detail of {name}"
        builtin = [b for b in type(exc).__mro__ if b.__module__ == "builtins"
                   and b not in (object, BaseException, Exception)]
        assert builtin, f"{name}: {type(exc).__name__} inherits no builtin"


@pytest.mark.parametrize("name, cls, builtin", [
    ("THA_EPROTO", tha.ProtocolError, ConnectionError),
    ("THA_ECLOSED", tha.ConnectionClosed, ConnectionError),
    ("THA_EAUTH", tha.AuthError, PermissionError),
    ("THA_EFENCED", tha.Fenced, RuntimeError),
    ("THA_ETIMEOUT", tha.Timeout, TimeoutError),
    ("THA_EVERSION", tha.VersionMismatch, ValueError),
    ("THA_EINVAL", tha.InvalidArgument, ValueError),
    ("THA_ENOMEM", tha.CapacityError, MemoryError),
])
def test_the_network_and_argument_codes(name, cls, builtin):
    exc = errors.error_for(getattr(lib, name))
    assert isinstance(exc, cls) and isinstance(exc, builtin)


@pytest.mark.parametrize("e", [errno.ENOENT, errno.ENOSPC, errno.EIO, errno.EACCES])
def test_os_errors_keep_errno_and_the_detail(e):
    exc = errors.error_for(-e, "checkpoint /x/y.tha: cannot create a temp file")
    assert isinstance(exc, tha.OSFailure) and isinstance(exc, OSError)
    assert exc.errno == e and exc.strerror == os.strerror(e)
    assert str(exc) == f"checkpoint /x/y.tha: cannot create a temp file ({os.strerror(e)})"
    assert not str(exc).strip().isdigit()


def test_enomem_is_a_memory_error():
    assert isinstance(errors.error_for(-errno.ENOMEM), tha.CapacityError)


def test_a_real_os_error_from_the_library(tmp_path):
    heap = tha.Heap(tha.Schema("struct x { int a; };"))
    with pytest.raises(tha.OSFailure) as e:
        heap.checkpoint(tmp_path / "missing" / "x.tha")
    assert e.value.errno == errno.ENOENT and "missing" in str(e.value)

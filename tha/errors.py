"""Exceptions. Every error the package raises derives from :class:`Error`;
leaves also inherit the builtin they resemble, so ``except KeyError`` and
``except MemoryError`` keep working. C status codes map here in one place."""

from __future__ import annotations

import errno as _errno
import os

from ._ffi import ffi, lib


class Error(Exception):
    """Base of every tha error. ``code`` is the C status (negative)."""

    code = 0

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(Error, ValueError):
    """An argument outside what the call accepts; the message names it."""


class SchemaError(Error, ValueError):
    """A layout tha cannot mirror, or a malformed declaration."""


class SchemaMismatch(Error, ValueError):
    """Two sides disagree on the layout; the message names the field."""


class FrameError(Error, ValueError):
    """A frame is malformed, truncated, or out of range."""


class ChecksumError(FrameError):
    """A frame or file failed its checksum."""


class SequenceError(FrameError):
    """A delta does not follow the frame the heap last applied."""


class StaleEpoch(FrameError):
    """A frame comes from an older epoch than the heap has seen."""


class CapacityError(Error, MemoryError):
    """The heap (or the machine) is out of memory."""


class InvalidPointer(Error, ValueError):
    """A pointer that is not (the start of) a live allocation of this heap."""


class NotFound(Error, KeyError):
    """No root, type or function of that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StateError(Error, RuntimeError):
    """The call is not allowed in the object's current state."""


class CorruptHeap(Error, ValueError):
    """tha_heap_check found a broken invariant; the message names it."""


class PointerWarning(Error, UserWarning):
    """heap.check() found words no field covers that hold addresses in the
    heap: forgotten pointer fields, copied raw (heap.lint() lists them). A
    warning (warnings.warn); an Error too, as every class here, for a
    program that turns warnings into exceptions."""


class Timeout(Error, TimeoutError):
    """The peer did not answer in time."""


class OSFailure(Error, OSError):
    """The operating system refused (mmap, open, fsync, ...): ``errno`` and
    ``strerror`` as OSError has them, the message naming what failed."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message, code)
        if code is not None and -4096 < code < 0:
            self.errno, self.strerror = -code, os.strerror(-code)

    def __str__(self) -> str:  # OSError would print only "[Errno N] strerror"
        return str(self.args[0]) if self.args else ""


# -- replication (tha.replication raises these; re-exported there) ------------

class Fenced(Error, RuntimeError):
    """A newer active exists (a standby was promoted): this one must stop."""


class SyncTimeout(Error, TimeoutError):
    """The required standbys did not acknowledge in time."""


class AuthError(Error, PermissionError):
    """The peer does not know the shared secret."""


class VersionMismatch(FrameError):
    """Bytes of a version this build does not speak: a frame or file format,
    or a peer's protocol."""


class ProtocolError(Error, ConnectionError):
    """The peer broke the replication protocol (a malformed or unexpected
    message); the connection is closed."""


class ConnectionClosed(Error, ConnectionError):
    """The session or connection is closed."""


# -- clusters (tha.Node and its coordinators; tha/cluster/) --------------------

class NotLeader(Error, RuntimeError):
    """This node does not hold the cluster's leadership (or no longer may
    act on it: its lease could not be renewed in time); ``sync()`` must go
    to the leader. ``leader`` names it when known."""

    def __init__(self, message: str, leader: str | None = None):
        super().__init__(message)
        self.leader = leader


class CoordinationError(Error, ConnectionError):
    """The coordination service (etcd) cannot be reached or refused a
    request; the message names the endpoint and the request."""


_BY_CODE = {
    lib.THA_EINVAL: InvalidArgument,
    lib.THA_ENOMEM: CapacityError,
    lib.THA_ECAPACITY: CapacityError,
    lib.THA_ENOTLIVE: InvalidPointer,
    lib.THA_EFOREIGN: InvalidPointer,
    lib.THA_ESCHEMA: SchemaError,
    lib.THA_EMISMATCH: SchemaMismatch,
    lib.THA_EFRAME: FrameError,
    lib.THA_ECHECKSUM: ChecksumError,
    lib.THA_ESEQ: SequenceError,
    lib.THA_ERANGE: FrameError,
    lib.THA_ENOTFOUND: NotFound,
    lib.THA_ETOOSMALL: InvalidArgument,
    lib.THA_EVERSION: VersionMismatch,
    lib.THA_EFULL: StateError,
    lib.THA_ESTATE: StateError,
    lib.THA_ESTALE: StaleEpoch,
    lib.THA_ECORRUPT: CorruptHeap,
    lib.THA_ETIMEOUT: Timeout,
    lib.THA_EPROTO: ProtocolError,
    lib.THA_EAUTH: AuthError,
    lib.THA_EFENCED: Fenced,
    lib.THA_ECLOSED: ConnectionClosed,
}


def error_for(code: int, detail: str = "") -> Error:
    """The exception for C status ``code`` with the handle's detail message."""
    message = detail or ffi.string(lib.tha_strerror(code)).decode()
    if -4096 < code < 0:  # -errno: the message names what failed, then why
        if -code == _errno.ENOMEM:
            return CapacityError(message, code)
        why = os.strerror(-code)
        return OSFailure(message if why in message else f"{message} ({why})", code)
    return _BY_CODE.get(code, Error)(message, code)


def error_class(code: int) -> type:
    """The class error_for gives ``code`` (one map for every caller)."""
    if -4096 < code < 0:
        return CapacityError if -code == _errno.ENOMEM else OSFailure
    return _BY_CODE.get(code, Error)


def check(code: int, errmsg=None) -> int:
    """Raise for a negative C status; ``errmsg()`` yields the detail text."""
    if code >= 0:
        return code
    detail = ""
    if errmsg is not None:
        raw = errmsg()
        if raw != ffi.NULL:
            detail = ffi.string(raw).decode(errors="replace")
    raise error_for(code, detail)

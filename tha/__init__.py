"""tha — Transparent High Availability for C structs.

Allocate structs from a :class:`Heap`; tha tracks which blocks changed and
ships them as frames (``snapshot()``, ``delta()``) that another heap
``apply()``-s, at any base address.
"""

from ._ffi import ffi as _ffi, lib as _lib
from .errors import (AuthError, CapacityError, ChecksumError, CoordinationError, CorruptHeap,
                     Error, Fenced, NotLeader,
                     FrameError, InvalidArgument, InvalidPointer, NotFound, OSFailure,
                     PointerWarning, SchemaError, SchemaMismatch, SequenceError, StaleEpoch, StateError, SyncTimeout,
                     Timeout, VersionMismatch, ProtocolError, ConnectionClosed)
from .durability import LoadReport
from .heap import Heap, Roots
from .reach import Leak, Lint
from .schema import Schema
from .replication import Active, Standby, SyncResult
from .cluster import Node

__version__ = "0.1.0"


def set_threads(n: int) -> None:
    """Threads (1 or 2) encode/apply may use for runs of 16 MiB or more."""
    from .errors import check
    check(_lib.tha_set_threads(n))

__all__ = [
    "Active", "Standby", "SyncResult", "SyncTimeout", "Fenced", "AuthError",
    "Node", "NotLeader", "CoordinationError",
    "Heap", "Leak", "Lint", "LoadReport", "Roots", "Schema", "Error", "CapacityError", "ChecksumError",
    "CorruptHeap", "Timeout",
    "FrameError", "InvalidArgument", "InvalidPointer", "NotFound", "OSFailure", "PointerWarning", "SchemaError",
    "SchemaMismatch", "SequenceError", "StaleEpoch", "StateError", "VersionMismatch", "ProtocolError", "ConnectionClosed",
    "__version__", "set_threads",
]

"""Active and Standby: the replication driver.

The protocol lives in C (``tha_session_*``, sans-I/O); this package only
moves bytes between sessions and sockets, keeps time and turns session
events into Python state. Per connection there is a reader thread (socket →
session) and a writer thread (session → socket); a ticker thread per node
drives heartbeats and timeouts. Everything touching a session or its heap
runs under the heap's lock; sockets are written outside it (the bytes stay
valid until the session is told they went out).

``connection.py`` holds the connection (socket + session + its threads)
and the node base both roles share; ``active.py`` and ``standby.py`` one
role each. The exceptions live in tha/errors.py and are re-exported here.

Ack levels, weakest first (compare DRBD protocols A/B/C and PostgreSQL
``synchronous_commit``):

* ``"none"`` — ``sync()`` returns once the frame is queued: a crash of the
  active right after may lose it (async replication).
* ``"received"`` — the standby holds the frame in memory: lost only if both
  nodes die before it is applied.
* ``"applied"`` — the standby applied it to its live heap: a failover now
  resumes from this state.
* ``"persisted"`` — the standby has it on disk: in its fsync'd delta log,
  or in a checkpoint it wrote after a bulk sync. Only a standby that keeps a
  log (``Standby(save=..., log=...)``) ever acks this level; with its log's
  fsync policy ``"always"`` the ack comes with the apply, with ``"every N
  ms"`` after the next fsync (at most N ms later), with ``"never"`` after its
  next checkpoint (``save_every``). A sync waiting for a standby without a
  log times out naming it.

``sync()`` never downgrades: if the required standbys do not answer within
``timeout`` it raises :class:`SyncTimeout`. An application holds its replies
to clients until ``sync()`` returns.
"""

from ..errors import AuthError, Fenced, SyncTimeout, VersionMismatch
from ..schema import Schema
from .active import ACK_LEVELS, Active, SyncResult
from .standby import Standby

__all__ = ["Active", "Standby", "SyncResult", "Fenced", "SyncTimeout",
           "AuthError", "VersionMismatch", "ACK_LEVELS", "Schema"]

"""A checker in the spirit of Jepsen for tha's replication (issue 8).

The checker itself lives in tha/soak/cluster.py (``python -m tha soak`` runs it
for longer, with more link faults). Real processes (tha/soak/node.py,
THA_JEPSEN_NODES of them, default 3) on 127.0.0.1 with a shared secret: one active, the others
standbys. Every connection between two nodes goes through a proxy the test
controls (tha/soak/linkproxy.py, one per directed link). The test is
the client: a workload thread sends writes to the node it believes is the
active (each write adds record `op`, op numbers are unique) and records
every write whose ``sync(ack="applied")`` returned, with its epoch and
seq, whenever that answer arrives. Meanwhile the test injects random
faults for a bounded time: kill -9 of the active or a standby, SIGSTOP of
the active past the heir's promote_after then SIGCONT, cut links, isolated
nodes and flaky links, explicit promotions, rejoins (a killed node comes
back as a fresh standby; a fenced active becomes a standby keeping its
heap, so the new active resumes it or bulk syncs it) and intruders (a
process with the wrong secret and a made-up epoch, as an active or as an
imposter at a standby's address).

After each event the workload pauses, the cluster settles (one active;
every other live node an in-sync standby or fenced, twice in a row) and
the checker asserts:

* the active's state holds every write ever acknowledged "applied";
* every standby that reports itself in sync (streaming, same epoch,
  applied seq == the active's seq) has a dump equal to the active's;
* no active is fenced by an epoch no member ever had (only a member's
  promotion may fence);
* an ack from an old active after a newer epoch exists is flagged, and a
  violation if its write is not in the new active's state (the first
  check covers it);
* and the cluster settles at all within a generous bound.

Knobs (environment): THA_JEPSEN_SECONDS (40), THA_JEPSEN_SEED (printed;
fixes the schedule of faults: kinds, targets by role, durations),
THA_JEPSEN_NODES (3), THA_JEPSEN_QUORUM ("all", or a number of standbys),
THA_JEPSEN_TOUCH=1 (heap.touch() after each write; by default writes are
plain cdata writes found by tracking, promoted heaps included),
THA_JEPSEN_KINDS (comma list of event kinds to draw from),
THA_JEPSEN_CUTS (link faults: isolate, link, flaky, stall, corrupt),
THA_JEPSEN_CLOSE_FENCED=1 (a node closes its promoted Standby once its
Active is fenced: an application-side workaround, to explore further).
"""

import os

import pytest

from tha.soak import ALL_KINDS, Cluster, Config

SECONDS = float(os.environ.get("THA_JEPSEN_SECONDS", "40"))
SEED = int(os.environ.get("THA_JEPSEN_SEED", "8"))
NODES = int(os.environ.get("THA_JEPSEN_NODES", "3"))
QUORUM = os.environ.get("THA_JEPSEN_QUORUM", "all")
PLAIN = os.environ.get("THA_JEPSEN_TOUCH") != "1"
KINDS = tuple(k for k in os.environ.get("THA_JEPSEN_KINDS", ",".join(ALL_KINDS)).split(",")
              if k)
# the link faults of issue 8; the soak (tests/test_soak.py) adds stall and corrupt
CUT_MODES = tuple(os.environ.get("THA_JEPSEN_CUTS", "isolate,isolate,link,flaky").split(","))
CLOSE_FENCED = os.environ.get("THA_JEPSEN_CLOSE_FENCED") == "1"


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, Config(seconds=SECONDS, seed=SEED, nodes=NODES, quorum=QUORUM,
                                 touch=not PLAIN, kinds=KINDS, cut_modes=CUT_MODES,
                                 close_fenced=CLOSE_FENCED))
    yield c
    c.close()


def test_jepsen(cluster):
    print(f"\njepsen: seed {SEED} (THA_JEPSEN_SEED={SEED} THA_JEPSEN_SECONDS={SECONDS:g} "
          f"THA_JEPSEN_NODES={NODES} THA_JEPSEN_QUORUM={QUORUM}"
          f"{'' if PLAIN else ' THA_JEPSEN_TOUCH=1'} to reproduce)")
    try:
        cluster.run(SECONDS)
    finally:
        summary = cluster.summary("jepsen")
        print(summary)
        print("\n".join(cluster.history[-60:]))
    if cluster.violations:
        pytest.fail(
            f"{summary}\n\nviolations:\n" + "\n".join(cluster.violations)
            + "\n\nevent history:\n" + "\n".join(cluster.history)
            + f"\n\nnode logs: {cluster.tmp}", pytrace=False)

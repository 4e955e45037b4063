"""The soak harness: a cluster of real tha processes under random faults,
checked after every event (``python -m tha soak``, tests/test_jepsen.py,
tests/test_faults.py).

cluster.py starts the nodes, injects the faults and checks the invariants;
node.py is one node as its own process (``python -m tha.soak.node``, a
JSON line protocol on stdin/stdout); linkproxy.py is the loopback proxy
each link between two nodes goes through (cut, stall, flaky, corrupt).
"""

from .cluster import ALL_KINDS, Cluster, Config, soak

__all__ = ["ALL_KINDS", "Cluster", "Config", "soak"]

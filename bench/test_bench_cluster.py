"""Switchover time with a 1M-object heap (issue 13's target: <= 1 s): three
tha.Node members in this process (a real 1-node etcd, tests/helpers/
etcd_server.py), the leader's heap the codec benchmarks' graph of 1M
``struct emp`` (~98 MB, one allocation; tha/bench/workload.py). Timed:
the switchover request written to etcd -> the new leader's first
``sync(ack="applied")`` returned; each round hands the lead to the next
member. Printed, not asserted (a shared VM varies).

THA_BENCH_CLUSTER_OBJECTS sizes the heap (default 1M emps), and
THA_BENCH_CLUSTER_ROUNDS the switchovers (default 5).
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

import tha
from tha.bench.workload import Graph
from tha.cluster import Node

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from etcd_server import ETCD, EtcdServer  # noqa: E402

pytestmark = [pytest.mark.bench,
              pytest.mark.skipif(not os.path.exists(ETCD), reason="needs etcd")]


def test_switchover_time_1m_objects(capsys):
    n = int(os.environ.get("THA_BENCH_CLUSTER_OBJECTS", 1_000_000))
    rounds = int(os.environ.get("THA_BENCH_CLUSTER_ROUNDS", 5))
    g = Graph(n)
    heap = g.heap
    heap.roots["emps"] = g.emps
    g.mirror = None  # only the source heap is needed
    etcd = EtcdServer()
    nodes = []
    try:
        for i in range(3):
            nodes.append(Node(f"n{i}", "127.0.0.1:0", etcd=etcd.url, cluster="bench",
                              create=(lambda: heap) if i == 0 else None, ttl=10,
                              loop_wait=1.0, timeout=60.0))
            if i == 0:
                while not nodes[0].is_leader:
                    time.sleep(0.01)
        deadline = time.monotonic() + 120
        while not (nodes[0].cluster and len(nodes[0].cluster.voters) == 3
                   and all(x.heap is not None for x in nodes)):
            assert time.monotonic() < deadline, "the members did not join"
            nodes[0].sync(timeout=60)
            time.sleep(0.2)
        leader = nodes[0]
        times = []
        for r in range(rounds):
            target = nodes[(nodes.index(leader) + 1) % 3]
            with leader.leading() as h:  # a round of writes first: 1% of the emps
                emps = h.roots["emps"]
                for i in g.dirty:
                    emps[i].salary = float(r)
                    emps[i].mgr = emps + (i + r) % n
                    h.touch(emps + i)  # n0's heap is explicit (the graph's)
            leader.sync(timeout=60)
            t0 = time.monotonic()
            leader.coord.client.put(leader.coord.k_request, json.dumps(
                {"from": leader.name, "to": target.name, "timeout": 30}))
            while True:
                try:
                    target.sync(timeout=30)
                    break
                except tha.NotLeader:
                    time.sleep(0.001)
            times.append(time.monotonic() - t0)
            leader = target
        with capsys.disabled():
            print(f"\nswitchover with {n:,} objects "
                  f"({heap.stats()['top'] / 1e6:.0f} MB heap): "
                  + ", ".join(f"{t * 1000:.0f} ms" for t in times)
                  + f"; median {statistics.median(times) * 1000:.0f} ms "
                  "(request -> the new leader's first sync(ack='applied') returned)")
    finally:
        for x in nodes:
            x.close()
        etcd.stop()

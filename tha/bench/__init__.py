"""The benchmarks, each a module measuring one thing against a baseline of
the same run: codec.py (snapshot/delta against memcpy), replication.py
(Active -> Standby against raw TCP), tracking.py (transparent tracking
against untracked writes and memcmp), leaks.py (leak detection against a
plain sweep), checkpoint.py (checkpoint/load against plain write/read).
workload.py is what they share (schema, the emp graph, the machine line);
writer.py writes memory from compiled code (the tracking benchmark and
tests). ``python -m tha bench`` runs them (tha/cli/bench.py); bench/ runs
them under pytest-benchmark.
"""

"""Apply of a same-address heap's frames (raw addresses: a straight copy
after the verify) against a relocatable heap's (rebased word by word), on
the 1M struct emp graph: the snapshot (~98 MB) and 1%-dirty deltas. The
frames are recorded from a source that is then destroyed, since a
same-address mirror needs its source's base (tha/bench/same_address.py;
``python -m tha bench --same-address`` prints the ratios, memcpy included).
"""

import gc
import os

import pytest

from tha import Heap
from tha.bench import same_address as sa

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module", params=sa.MODES)
def recording(request):
    n = int(os.environ.get("THA_BENCH_OBJECTS", 1_000_000))
    dirty = float(os.environ.get("THA_BENCH_DIRTY", 1.0))
    rounds = int(os.environ.get("THA_BENCH_ROUNDS", 15))
    same = request.param == "same-address"
    return same, sa.record(n, dirty, rounds + 1, same)  # +1: the warmup round


def _mirror(same, rec):
    gc.collect()  # the previous test's mirror held the base
    return Heap(rec["schema"], capacity=rec["capacity"], tracking="explicit",
                base=sa.BASE if same else None)


def test_apply_snapshot(benchmark, recording, rounds):
    same, rec = recording
    mirror = _mirror(same, rec)
    benchmark.extra_info["bytes"] = len(rec["snapshot"])
    benchmark.extra_info["mode"] = "same-address" if same else "relocatable"
    benchmark.pedantic(mirror.apply, args=(rec["snapshot"],), rounds=rounds,
                       warmup_rounds=1)
    mirror.check()


def test_apply_delta(benchmark, recording, rounds):
    same, rec = recording
    mirror = _mirror(same, rec)
    mirror.apply(rec["snapshot"])
    frames = iter(rec["deltas"][:rounds + 1])
    benchmark.extra_info["bytes"] = len(rec["deltas"][0])
    benchmark.extra_info["mode"] = "same-address" if same else "relocatable"
    benchmark.pedantic(mirror.apply, setup=lambda: ((next(frames),), {}), rounds=rounds,
                       warmup_rounds=1)
    if rounds + 1 == len(rec["deltas"]):  # every delta applied: the source's state
        assert memoryview(mirror.snapshot())[96:] == memoryview(rec["final"])[96:]
    mirror.check()

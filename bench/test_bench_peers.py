"""tha against raw TCP, pickle and Redis (issue 12) under pytest-benchmark:
the contenders, far ends and phases of ``python -m tha bench --peers``
(tha/bench/peers.py says exactly what each one times), one test per
contender and phase. The bulk phase's tests come first (they load Redis),
then f = 0.1%, 1%, 10%, 100%, each contender's far end verified by digest
after its rounds.

Unlike the command, the contenders do not alternate round by round: pytest
runs one test at a time, so each one's rounds run back to back, and a noisy
neighbour may hit one contender and not the next. For the numbers to
publish use the command; this suite is for profiling one contender
(``-k tha-diff``) and pytest-benchmark's comparisons between commits.
Selecting by contender is fine; a contender that missed earlier phases (a
``-k`` on the fraction) first applies their rounds untimed.

The table of the command is printed at the end of the session. The
benchmark's own time is the whole round (mutate + mirror); ``extra_info``
holds the medians of round, mirror and their ratio to raw TCP.

THA_BENCH_PEERS_RECORDS (default 1,000,000) and THA_BENCH_PEERS_ROUNDS
(default 5) size it.
"""

import os

import pytest
from conftest import PEERS_RESULTS

from tha.bench import peers as bp

pytestmark = pytest.mark.bench

N = int(os.environ.get("THA_BENCH_PEERS_RECORDS", 1_000_000))
ROUNDS = int(os.environ.get("THA_BENCH_PEERS_ROUNDS", bp.ROUNDS))
BULK_KEYS = ["memcpy", "tcp", "tha-bulk", "tha-bulk-reserved", "pickle-whole", "redis-load", "redis-resync"]
PHASES = [(fi, key) for fi in range(len(bp.FRACTIONS)) for key in bp.KEYS]


@pytest.fixture(scope="module")
def peers():
    b = bp.PeersBench(N, ROUNDS)
    b.applied = {}  # contender -> the next (phase, round) it has to apply
    b.by_phase = {}
    try:
        b.setup()
        b.machine = bp.machine_info(b)
        yield b
        b.phases = [b.by_phase[p] for p in [bp.BULK, *bp.FRACTIONS] if p in b.by_phase]
        PEERS_RESULTS["res"] = b.results()
    finally:
        b.close()


def _record(b, phase, key, label, samples, verify=None, benchmark=None):
    ph = b.by_phase.setdefault(phase, {
        "phase": phase, "records_changed": b.n if phase == bp.BULK else
        bp.changed_count(b.n, phase), "payload_bytes": bp.image_bytes(b.n)
        if phase == bp.BULK else bp.changed_count(b.n, phase) * bp.EMP_SIZE,
        "rows": {}, "verify": {}})
    med = bp._median(samples)
    ph["rows"][key] = {"label": label, "samples": samples, "median": med}
    ph["verify"].update(verify or {})
    if benchmark is not None:
        tcp = ph["rows"].get("tcp", {}).get("median", {}).get("mirror_s")
        benchmark.extra_info.update({f"{k}_ms": v * 1e3 for k, v in med.items()
                                     if k.endswith("_s")})
        if tcp:
            benchmark.extra_info["mirror_vs_raw_tcp"] = med["mirror_s"] / tcp


def _need(b, key):
    base = "redis" if key.startswith("redis") else key
    if base.startswith("tha-bulk"):
        if base not in b.bulks:
            pytest.skip("no tha contender")
        return b.bulks[base]
    if base not in b.c:
        pytest.skip(b.skipped.get(base, f"{base} not set up"))
    return b.c[base]


@pytest.mark.parametrize("key", BULK_KEYS)
def test_bulk(benchmark, peers, key):
    c, image, samples = _need(peers, key), bp.image_bytes(peers.n), []
    setup = None
    if key == "memcpy":
        def one():
            s = c.move(image)
            s["memcmp_s"] = c.memcmp()
            return s
    elif key == "tcp":
        def one():
            return c.send(image)
    elif key.startswith("tha-bulk"):
        setup, one = c.prepare, c.bulk
    elif key == "pickle-whole":
        one = c.bulk
    elif key == "redis-load":
        setup, one = c.prepare_load, (lambda: c.load(peers.plan.model))
    else:
        setup, one = c.prepare_resync, c.resync
    benchmark.pedantic(lambda: samples.append(one()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=0)
    verify = {}
    if key in ("tha-bulk", "tha-bulk-reserved", "pickle-whole", "redis-load"):
        verify = peers.verify(bp.BULK, [c])
        if key == "redis-load":
            verify["redis-load"] = verify.pop("redis")
    elif key == "redis-resync":
        try:
            d, exp = c.fresh_digest(peers.n), peers.plan.expected(bp.BULK, "text")
        finally:
            c.drop_fresh()
        verify = {key: {"near": exp, "far": d, "expected": exp, "equal": d == exp}}
        assert d == exp, "the fresh replica's copy differs after its full resync"
    _record(peers, bp.BULK, key, bp.BULK_LABELS[key], samples, verify, benchmark)


@pytest.mark.parametrize("fi, key", PHASES,
                         ids=[f"{bp.FRACTIONS[fi]:.1%}-{key}" for fi, key in PHASES])
def test_round(benchmark, peers, fi, key):
    c = _need(peers, key)
    # a contender that missed earlier phases' rounds applies them untimed
    at = peers.applied.get(key, (0, 0))
    while at < (fi, 0):
        c.round(peers.plan.make(*at))
        at = (at[0], at[1] + 1) if at[1] + 1 < peers.plan.per_phase else (at[0] + 1, 0)
    c.ready()
    rounds, samples = iter(range(ROUNDS + 1)), []

    def setup():
        return (peers.plan.mutation(fi, next(rounds)),), {}
    benchmark.pedantic(lambda m: samples.append(c.round(m)), setup=setup, rounds=ROUNDS,
                       warmup_rounds=1)
    peers.applied[key] = (fi + 1, 0)
    verify = peers.verify(fi, [c]) if c.stateful else {}
    _record(peers, bp.FRACTIONS[fi], key, c.label(), samples[1:], verify, benchmark)

"""``python -m tha.bench.schema [N ...]``: what a schema of N struct types costs.

A generated cdef of N structs (``cdef(n)``): each has scalar fields, a
char array, an int array and pointers to other structs of the set (before
and after it); every fourth holds an earlier leaf struct by value, alone
and as an array; every tenth type is a union (scalars only, as a
mirrored union must be), every seventh struct has a typedef. For each N
it times, in CPU time of this process (the machine may be shared), best of
THA_BENCH_ROUNDS (3) rounds:

  build       tha.Schema(cdef)
  to_bytes    schema.to_bytes()
  from_bytes  tha.Schema.from_bytes(data) (what a standby or a load does:
              declarations rebuilt from the C schema, checked again)
  heap        tha.Heap(schema)
  new         heap.new() of one type of each hundred (other types each
              round: the first new of a type is the one that may cost)
  load        tha.Heap.load() of a checkpoint of that heap (schema from the file)

The costs should grow about linearly with N: the per-type rows say so (for
``new``, per type of the schema: N/100 calls).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from ..heap import Heap
from ..schema import Schema

STEPS = ("build", "to_bytes", "from_bytes", "heap", "new", "load")


def type_name(i: int) -> str:
    return f"union t{i}" if i % 10 == 9 else f"struct t{i}"


def _leaf(i: int) -> bool:
    """Types that hold no struct by value (so nesting stays one level)."""
    return i % 4 != 0


def cdef(n: int) -> str:
    """Declarations of n types t0..t{n-1}; pointers reach forward and back."""
    out = []
    for i in range(n):
        if i % 10 == 9:  # a union holds no pointers (cannot be mirrored)
            out.append(f"union t{i} {{ int64_t id; double x; char name[16]; "
                       "int32_t v[3]; };")
            continue
        fields = [f"int64_t id; int32_t a; uint16_t b; double x; char name[16]; "
                  f"int32_t v[3]; {type_name((i * 7 + 3) % n)} *p1; "
                  f"{type_name((i + n - 1) % n)} *p2;"]
        inner = next((j for j in range(i - 1, max(i - 8, -1), -1) if _leaf(j)), None)
        if i % 4 == 0 and inner is not None:
            fields.append(f"{type_name(inner)} inner; {type_name(inner)} pair[2];")
        out.append(f"{type_name(i)} {{ {' '.join(fields)} }};")
        if i % 7 == 0:
            out.append(f"typedef struct t{i} t{i}_t;")
    return "\n".join(out)


def _best(fn, repeat: int) -> tuple:
    """(best CPU seconds, last result) of fn() over repeat rounds. CPU time
    of this process, not wall time: on a shared machine the wall clock
    also counts the time other processes held the cores."""
    best, res = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        res = fn()
        best = min(best, time.process_time() - t)
    return best, res


def run(sizes, repeat: int = 3) -> dict:
    """{n: {step: seconds}} for each schema size."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            text, row = cdef(n), {}
            row["build"], schema = _best(lambda: Schema(text), repeat)
            row["to_bytes"], data = _best(schema.to_bytes, repeat)
            row["from_bytes"], again = _best(lambda: Schema.from_bytes(data), repeat)
            assert again.fingerprint == schema.fingerprint
            row["heap"], heap = _best(lambda: Heap(schema, 16 << 20), repeat)
            # each round news other types: a type's first new is what costs
            rounds = iter(range(repeat))
            row["new"], _ = _best(lambda: [heap.new(type_name(i))
                                           for i in range(next(rounds), n, 100)], repeat)
            heap.roots["first"] = heap.new(type_name(0))
            path = os.path.join(tmp, f"s{n}.tha")
            heap.checkpoint(path)
            row["load"], _ = _best(lambda: Heap.load(path), repeat)
            out[n] = row
    return out


def report(res: dict, out=sys.stdout, header: bool = True) -> None:
    """A row per size: CPU ms per step, then microseconds per type."""
    if header:
        print(f"{'N':>7}" + "".join(f"{s + ' ms':>14}" for s in STEPS)
              + "   per type (us): " + " ".join(f"{s:>10}" for s in STEPS), file=out)
    for n, row in res.items():
        print(f"{n:>7}" + "".join(f"{row[s] * 1e3:>14.1f}" for s in STEPS) + " " * 18
              + " ".join(f"{row[s] / n * 1e6:>10.1f}" for s in STEPS), file=out, flush=True)


def main(argv) -> int:
    sizes = [int(a) for a in argv] or [100, 1000, 3000, 10000]
    repeat = int(os.environ.get("THA_BENCH_ROUNDS", 3))
    for i, n in enumerate(sizes):  # a row as soon as it is measured
        report(run([n], repeat), header=i == 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

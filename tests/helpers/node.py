"""One end of a replication pair as its own process, for test_failover.py.

    node.py standby --listen H:P [--secret S] [--promote-after T]
        first line `listening HOST:PORT`; then answers one line per stdin
        command: `state` (applied seq + dump), `log` (every (seq, bulk) the
        live heap moved to), `status`, `feed H:P` (once promoted: a
        tha.Active on the promoted heap to the standby at H:P, a plain write
        without touch(), sync(ack="applied"); answers (seq, salary written));
        each answer is `OK <base64 pickle>`.
    node.py active --standby H:P [--secret S] [--ack A] [--seed N]
        --interactive: `round` on stdin mutates, syncs and answers
            `OK <base64 pickle of (seq, dump)>`;
        --rounds N --record DIR: runs N rounds back to back, writing
            DIR/<seq>.pkl (the dump the frame `seq` carries) before each
            sync and DIR/returned (the seq) after it returns, both fsync'd,
            then printing `round K seq S`.
    Fenced -> `FENCED <message>`, exit 3; SyncTimeout -> `TIMEOUT <message>`,
    exit 4; a definite refusal (AuthError, SchemaMismatch, ...) -> `REFUSED
    <type> <message>`, exit 5.
    standby --nofile-spare N: lowers RLIMIT_NOFILE to the fds open now + N
    (after listening), so a burst of connections runs it out of fds.
"""

import argparse
import base64
import logging
import os
import pickle
import random
import sys

import tha
from tha.cli.demo import CDEF, build, mutate
from tha.replication import Active, Fenced, Standby, SyncTimeout

EMPLOYEES, DEPTS = 200, 10


def answer(obj) -> None:
    sys.stdout.write("OK " + base64.b64encode(pickle.dumps(obj)).decode() + "\n")
    sys.stdout.flush()


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def run_standby(args) -> int:
    log = []
    sb = Standby(listen=addr(args.listen), secret=args.secret,
                 promote_after=args.promote_after,
                 on_applied=lambda seq, n, bulk: log.append((seq, bulk)))
    if args.nofile_spare is not None:
        import resource
        in_use = len(os.listdir("/proc/self/fd"))
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + args.nofile_spare, hard))
    print("listening %s:%d" % tuple(sb.address), flush=True)
    try:
        for line in sys.stdin:
            cmd = line.strip()
            with sb.cond:  # seq and dump of the same moment
                if cmd == "state":
                    answer((sb.applied_seq, sb.heap.dump() if sb.heap else None))
                elif cmd == "log":
                    answer(list(log))
                elif cmd == "status":
                    st = sb.heap.stats() if sb.heap else {}
                    answer({"applied_seq": sb.applied_seq, "promoted": sb.promoted,
                            "epoch": st.get("epoch", 0),
                            "tracking": st.get("tracking_mechanism")})
                elif cmd.startswith("feed "):
                    feed(sb, addr(cmd.split()[1]), args.secret)
                elif cmd == "quit":
                    break
    finally:
        sb.close()
    return 0


def feed(sb, standby, secret) -> None:
    heap = sb.heap
    with Active(heap, [standby], secret=secret, timeout=10.0) as act:
        act.sync(ack="applied")  # bulk sync of the promoted heap
        salary = 123456.25
        heap.roots["staff"][7].salary = salary  # plain write, no touch()
        r = act.sync(ack="applied")
        answer((r.seq, salary))


def write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


class App:
    """The demo's company plus allocations and frees, all under the heap's
    lock so a bulk sync streaming meanwhile never sees half a round."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.heap = tha.Heap(tha.Schema(CDEF), capacity=16 << 20, tracking="explicit")
        with self.heap._lock:
            self.ds, self.es = build(self.heap, EMPLOYEES, DEPTS, self.rng)
        self.extra = []

    def mutate(self):
        rng, heap = self.rng, self.heap
        with heap._lock:
            mutate(heap, self.es, self.ds, EMPLOYEES, DEPTS, rng.randrange(1, 40), rng)
            for _ in range(rng.randrange(3)):
                if self.extra and rng.random() < 0.4:
                    heap.free(self.extra.pop(rng.randrange(len(self.extra))))
                else:
                    n = rng.choice((1, 3, 40, 200))  # slabs and a span
                    self.extra.append(heap.new("struct dept", count=n,
                                               id=rng.randrange(1 << 30)))


def run_active(args) -> int:
    app = App(args.seed)
    heap = app.heap
    act = Active(heap, [addr(args.standby)], secret=args.secret, ack=args.ack,
                 timeout=args.timeout)
    try:
        if args.interactive:
            for line in sys.stdin:
                if line.strip() != "round":
                    break
                app.mutate()
                r = act.sync()
                answer((r.seq, heap.dump()))
            return 0
        for rnd in range(0, args.rounds + 1):
            if rnd:
                app.mutate()
            expect = heap.stats()["seq"] + 1
            write_atomic(os.path.join(args.record, f"{expect}.pkl"),
                         pickle.dumps(heap.dump()))
            r = act.sync()
            assert r.seq == expect, (r.seq, expect)
            write_atomic(os.path.join(args.record, "returned"), str(r.seq).encode())
            print(f"round {rnd} seq {r.seq}", flush=True)
        print("done", flush=True)
        return 0
    except Fenced as e:
        print(f"FENCED {e}", flush=True)
        return 3
    except SyncTimeout as e:
        print(f"TIMEOUT {e}", flush=True)
        return 4
    except tha.Error as e:
        print(f"REFUSED {type(e).__name__} {e}", flush=True)
        return 5
    finally:
        act.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("standby", "active"))
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--standby")
    p.add_argument("--secret", type=os.fsencode)
    p.add_argument("--promote-after", type=float)
    p.add_argument("--ack", default="applied")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interactive", action="store_true")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--record")
    p.add_argument("--nofile-spare", type=int)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    return run_standby(args) if args.role == "standby" else run_active(args)


if __name__ == "__main__":
    sys.exit(main())

"""Child processes for tests/test_faults.py, killed -9 at random moments.

  fault_proc.py writer DIR EVERY     a heap on disk (DIR/state.tha + DIR/state.log,
                                     fsync always), loaded if there, mutated and
                                     logged in a loop, compacted every EVERY frames
  fault_proc.py active HOST:PORT SECRETFILE SEED MB
                                     a deterministic heap (MB of blob + records) that
                                     bulk syncs to a standby, then syncs writes, all
                                     with ack="persisted"
  fault_proc.py standby SAVE LOG SECRETFILE
                                     a Standby(save=, log=, fsync="always"); on the
                                     line "promote" it promotes itself and writes on
                                     as an Active without standbys (its log takes
                                     every frame)
  fault_proc.py disk DIR             a heap with DIR/state.tha + DIR/state.log (fsync
                                     always) driven by stdin lines: "write" (a change,
                                     answered ``state SEQ DIGEST`` for the next
                                     frame), "delta", "checkpoint", "compact"
                                     (answered ``ok SEQ DIGEST`` or ``err CLASS
                                     MESSAGE``); run under fiu-run, so the test can
                                     make fsync fail in between (fiu-ctrl)

Every state that could reach the disk is announced before it can, on stdout
(unbuffered single writes, so a kill -9 loses none of them):
``pre SEQ DIGEST`` before the frame that makes it, ``ok SEQ DIGEST`` once that
frame is durable (delta() or sync() returned), ``compact SEQ``, ``ready``,
``listening PORT``. DIGEST is tha.soak.node.digest_of(heap.dump()).
"""

import os
import random
import sys

import tha
from tha.soak.node import digest, new_heap, write_op
from tha.replication import Active, Standby


def say(*words) -> None:
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())


def next_op(heap) -> int:
    with heap._lock:
        return int(heap.roots["t"].last) + 1


def writer(d, every) -> None:
    save, log = os.path.join(d, "state.tha"), os.path.join(d, "state.log")
    if os.path.exists(save):
        heap = tha.Heap.load(save, log=log if os.path.exists(log) else None)
        if heap._log_path is None:
            heap.attach_log(log, "always")
    else:
        heap = new_heap()
        heap.checkpoint(save)
        heap.attach_log(log, "always")
    say("ready", heap.stats()["seq"], digest(heap))
    n = 0
    while True:
        write_op(heap, next_op(heap), False)
        seq = heap.stats()["seq"] + 1
        d_ = digest(heap)
        say("pre", seq, d_)
        heap.delta()
        say("ok", seq, d_)
        n += 1
        if n % every == 0:
            heap.compact(save)
            say("compact", seq)


def build(seed, mb):
    heap = new_heap()
    rng = random.Random(seed)
    blob = heap.new("char", count=mb << 20)
    step = 4096
    data = bytes(rng.randrange(256) for _ in range(step))
    for off in range(0, mb << 20, step):
        heap.schema.ffi.memmove(blob + off, data[off // step % 7:] + data[:off // step % 7],
                                step)
    heap.roots["blob"] = blob
    for op in range(1, 41):
        write_op(heap, seed * 1000 + op, False)
    return heap


def active(addr, secret_file, seed, mb) -> None:
    host, _, port = addr.rpartition(":")
    secret = open(secret_file, "rb").read()
    heap = build(int(seed), int(mb))
    say("pre", 1, digest(heap))
    act = Active(heap, [(host, int(port))], secret=secret, ack="persisted", timeout=60)
    r = act.sync()
    say("ok", r.seq, digest(heap))
    while True:
        write_op(heap, next_op(heap), False)
        d_ = digest(heap)
        say("pre", r.seq + 1, d_)
        r = act.sync()
        say("ok", r.seq, d_)


def standby(save, log, secret_file) -> None:
    secret = open(secret_file, "rb").read()
    sb = Standby(save=save, log=log, fsync="always", secret=secret)
    say("listening", sb.address[1])
    sys.stdin.readline()            # "promote"
    heap = sb.promote()
    say("promoted", heap.stats()["epoch"], heap.stats()["seq"], digest(heap))
    act = Active(heap, [], ack="none")
    while True:
        write_op(heap, next_op(heap), False)
        d_ = digest(heap)
        seq = heap.stats()["seq"] + 1
        say("pre", seq, d_)
        act.sync()
        say("ok", seq, d_)


def disk(d) -> None:
    save, log = os.path.join(d, "state.tha"), os.path.join(d, "state.log")
    heap = new_heap()
    heap.checkpoint(save)
    heap.attach_log(log, "always")
    say("ready", heap.stats()["seq"], digest(heap))
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "write":
            write_op(heap, next_op(heap), False)
            say("state", heap.stats()["seq"] + 1, digest(heap))
            continue
        try:
            if cmd == "delta":
                heap.delta()
            elif cmd == "checkpoint":
                heap.checkpoint(save)
            elif cmd == "compact":
                heap.compact(save)
            else:
                sys.exit(f"unknown command {cmd!r}")
        except tha.Error as e:
            say("err", type(e).__name__, str(e).replace("\n", " "))
            continue
        say("ok", heap.stats()["seq"], digest(heap))


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "writer":
        writer(args[0], int(args[1]))
    elif role == "active":
        active(*args)
    elif role == "standby":
        standby(*args)
    elif role == "disk":
        disk(*args)
    else:
        sys.exit(f"unknown role {role}")

"""Crash-test helper for tests/test_durability.py: builds two heap states,
writes state A to the checkpoint, then forks a child per "run" command that
checkpoints state A or B to the same path; the test kill -9s the child at a
random moment. Protocol on stdin/stdout, one line each:

  -> dumps DIR        <- ok          (A and B dumps written as DIR/A.pickle, B.pickle)
  -> run PATH A|B     <- pid N       (the child is checkpointing)
  -> reap             <- status S    (os.waitpid status of that child)
  -> quit
"""
import os
import pickle
import sys

import tha

CDEF = """
struct node { char name[24]; uint64_t id; double w; struct node *next;
              struct node *kids[4]; char *blob; };
"""


def build(schema, variant):
    heap = tha.Heap(schema, 16 << 20, tracking="explicit")
    nodes = heap.new("struct node", count=20000)       # ~2.5 MB
    blob = heap.new("char", count=1 << 20)
    for i in range(0, 20000, 7):
        n = nodes[i]
        n.id = i * (3 if variant == "B" else 1)
        n.w = i / 7.0
        n.next = nodes + (i + 1) % 20000
        n.kids[i % 4] = nodes + (i * 13) % 20000
        n.blob = blob + i
    for i in range(0, 1 << 20, 4096):
        blob[i] = variant.encode()
    heap.roots["nodes"] = nodes
    heap.roots["blob"] = blob
    return heap


def main():
    schema = tha.Schema(CDEF)
    heaps = {v: build(schema, v) for v in "AB"}
    child = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "dumps":
            for v, h in heaps.items():
                with open(os.path.join(cmd[1], v + ".pickle"), "wb") as f:
                    pickle.dump(h.dump(), f)
            print("ok", flush=True)
        elif cmd[0] == "run":
            path, v = cmd[1], cmd[2]
            child = os.fork()
            if child == 0:
                try:
                    heaps[v].checkpoint(path)
                finally:
                    os._exit(0)
            print("pid", child, flush=True)
        elif cmd[0] == "reap":
            _, status = os.waitpid(child, 0)
            print("status", status, flush=True)
        elif cmd[0] == "quit":
            return


if __name__ == "__main__":
    main()

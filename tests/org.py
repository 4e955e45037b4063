"""The org chart the replication tests share: one schema, one way to fill
a heap with it (a department and n employees managed in a binary tree)."""

CDEF = """
struct dept { char name[32]; uint32_t id; };
struct emp { char name[32]; uint32_t id; double salary;
             struct emp *mgr; struct dept *dept; struct emp *reports[4]; };
"""


def company(heap, n=50, mgr=True):
    d = heap.new("struct dept", name=b"eng", id=1)
    es = heap.new("struct emp", count=n)
    for i in range(n):
        es[i].id = i
        es[i].dept = d
        if mgr:
            es[i].mgr = es + (i // 2)
    heap.roots["staff"] = es
    heap.touch(es)
    return es

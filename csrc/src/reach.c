/* reach.c — reachability: which allocations can the application still get
 * to from its roots? *Mark* follows every data pointer slot of each type's
 * relocation table (function-pointer slots point at code, never at objects)
 * from the roots, with a *mark* bit per 16-byte slot start kept outside the
 * region and an explicit *worklist* (a FIFO ring) instead of recursion: a
 * million-long list is one loop, not a million frames. *Sweep* reports or
 * frees what stayed unmarked: the *leaks*.
 */
#include "heap.h"

#include <stdlib.h>

/* Payload starts are 8 mod 16 in a slab (slots are 16-byte aligned: slabs
 * start on a page plus THA__SLAB_HDR, every class size is a multiple of 16,
 * the payload is THA__HDR in) and THA__SPAN_HDR past a page in a span. So
 * one mark bit per 16 bytes of [0, top), at the payload, names one
 * allocation. */
#define MARK_SHIFT 4

typedef struct mark {
    tha_heap_t *h;
    uint64_t base;        /* h->base as an integer */
    uint64_t top;         /* image end when marking started */
    uint64_t *bits;       /* bit per 16 bytes of [0, top): payload reached */
    const tha__type_t *types; /* the schema's, by id (live headers are valid) */
    uint64_t *queue;      /* ring of region offsets referenced, not yet visited */
    size_t head, n, cap;  /* first entry, entries queued, ring size (2^k) */
    uint64_t marked;      /* allocations reached */
} mark_t;

static void mark_free(mark_t *m) {
    free(m->bits);
    free(m->queue);
}

/* Breadth first over references: scanning an object queues the offsets its
 * slots hold; each is looked up when it leaves the queue. Graphs built in
 * allocation order (parents before children, arrays) are then visited in
 * roughly address order: twice as fast as depth first on a 1M-object tree
 * here. A graph scattered over the heap costs a cache miss per object
 * either way (prefetching queued headers measured no gain). */
static int enqueue(mark_t *m, uint64_t off) {
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 4096;
        uint64_t *q = realloc(m->queue, cap * sizeof *q);
        if (!q)
            return tha__hfail(m->h, THA_ENOMEM, "leak check: no memory for a "
                              "worklist of %zu references", cap);
        /* unwrap: the entries before head move to the new upper half */
        if (m->head + m->n > m->cap)
            memcpy(q + m->cap, q, (m->head + m->n - m->cap) * sizeof *q);
        m->queue = q;
        m->cap = cap;
    }
    m->queue[(m->head + m->n++) & (m->cap - 1)] = off;
    return 0;
}

static uint64_t dequeue(mark_t *m) {
    uint64_t v = m->queue[m->head];
    m->head = (m->head + 1) & (m->cap - 1);
    m->n--;
    return v;
}

static bool marked(const mark_t *m, uint64_t payload) {
    uint64_t bit = payload >> MARK_SHIFT;
    return (m->bits[bit >> 6] >> (bit & 63)) & 1;
}

/* Queues region offset off unless it is an allocation start already marked
 * (most pointers hold one; this skips their lookup: only a live
 * allocation's slot is ever marked). */
static int reference(mark_t *m, uint64_t off) {
    if ((off % 16 == THA__HDR || off % THA__PAGE == THA__SPAN_HDR) && marked(m, off))
        return 0;
    return enqueue(m, off);
}

/* An untyped allocation (THA_T_RAW, same-address heaps only) has no slots
 * to follow: it is scanned conservatively. Every 8-aligned word that holds
 * an address inside a live allocation reaches it; other words (integers,
 * unaligned copies of addresses) reach nothing. It may keep alive what a
 * coincidental integer names, never frees what a pointer holds. */
static int scan_raw(mark_t *m, uint64_t payload, uint64_t bytes) {
    const uint8_t *p = m->h->base + payload;
    for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        uint64_t off = v - m->base; /* NULL and foreign wrap past top */
        if (off >= m->top) continue;
        int rc = reference(m, off);
        if (rc) return rc;
    }
    return 0;
}

/* Every data pointer slot of every element of the allocation at payload. */
static int scan(mark_t *m, uint64_t payload) {
    const tha_heap_t *h = m->h;
    const tha__objhdr_t *oh = THA__AT(h, tha__hdr_of(payload), tha__objhdr_t);
    const tha__type_t *t = &m->types[oh->type_id];
    const uint8_t *elem = h->base + payload;
    for (uint32_t i = 0; i < oh->count; i++, elem += t->size) {
        for (uint32_t s = 0; s < t->nslots; s++) {
            if (t->slots[s].is_func) continue;
            uint64_t v;
            memcpy(&v, elem + t->slots[s].offset, 8);
            uint64_t off = v - m->base; /* NULL and foreign wrap past top */
            if (off >= m->top) continue;
            int rc = reference(m, off);
            if (rc) return rc;
        }
    }
    return 0;
}

/* Marks the live allocation holding region offset off, if any and not yet
 * marked, and scans it. An offset that is not inside a live allocation
 * (dangling, metadata, one past the end) reaches nothing. */
static int visit(mark_t *m, uint64_t off) {
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(m->h, off, &oh);
    if (!payload) return 0;
    uint64_t bit = payload >> MARK_SHIFT;
    uint64_t *w = &m->bits[bit >> 6], b = 1ull << (bit & 63);
    if (*w & b) return 0;
    *w |= b;
    m->marked++;
    if (oh->type_id == THA_T_RAW) return scan_raw(m, payload, oh->count);
    if (!m->types[oh->type_id].nslots) return 0;
    return scan(m, payload);
}

/* Marks everything reachable from the roots. On success m holds the marks;
 * the caller releases m with mark_free either way. */
static int mark_all(tha_heap_t *h, mark_t *m) {
    const tha__region_t *r = tha__reg(h);
    memset(m, 0, sizeof *m);
    m->h = h;
    m->base = tha__origin(h);
    m->top = r->top;
    m->types = h->schema->types;
    size_t words = (size_t)(((r->top >> MARK_SHIFT) + 63) / 64);
    m->bits = calloc(words ? words : 1, sizeof *m->bits);
    if (!m->bits)
        return tha__hfail(h, THA_ENOMEM, "leak check: no memory for a %zu-byte "
                          "mark bitmap", words * sizeof *m->bits);
    const tha__root_t *roots = THA__AT(h, r->roots_off, tha__root_t);
    for (uint64_t i = 0; i < r->nroots; i++) {
        int rc = enqueue(m, roots[i].offset);
        if (rc) return rc;
    }
    while (m->n) {
        int rc = visit(m, dequeue(m));
        if (rc) return rc;
    }
    return 0;
}

int tha_leaks(tha_heap_t *h, tha_leak_t *out, size_t cap, size_t *n) {
    if (!h || !n || (cap && !out)) return THA_EINVAL;
    mark_t m;
    int rc = mark_all(h, &m);
    if (rc) {
        mark_free(&m);
        return rc;
    }
    size_t k = 0;
    uint64_t cursor = 0;
    tha_obj_t o;
    while (tha_heap_next(h, &cursor, &o)) {
        if (marked(&m, o.offset)) continue;
        if (k < cap) {
            out[k].offset = o.offset;
            out[k].type_id = o.type_id;
            out[k].count = o.count;
            out[k].bytes = o.size * o.count;
        }
        k++;
    }
    THA_ASSERT(m.marked + k == tha__reg(h)->live_objects);
    mark_free(&m);
    *n = k;
    return 0;
}

int tha_collect(tha_heap_t *h, uint64_t *bytes_freed) {
    if (!h) return THA_EINVAL;
    if (bytes_freed) *bytes_freed = 0;
    mark_t m;
    int rc = mark_all(h, &m);
    if (rc) {
        mark_free(&m);
        return rc;
    }
    /* List first, free after: freeing changes the slabs and spans that
     * tha_heap_next walks. The queue is empty now; reuse its memory. */
    uint64_t *dead = m.queue, bytes = 0;
    size_t ndead = 0, cap = m.cap;
    m.queue = NULL;
    uint64_t cursor = 0;
    tha_obj_t o;
    while (tha_heap_next(h, &cursor, &o)) {
        if (marked(&m, o.offset)) continue;
        if (ndead == cap) {
            size_t c = cap ? cap * 2 : 4096;
            uint64_t *d = realloc(dead, c * sizeof *d);
            if (!d) {
                free(dead);
                mark_free(&m);
                return tha__hfail(h, THA_ENOMEM, "collect: no memory to list "
                                  "%zu unreachable objects", c);
            }
            dead = d;
            cap = c;
        }
        dead[ndead++] = o.offset;
        bytes += o.size * o.count;
    }
    mark_free(&m);
    /* The normal free path: dirty bits, pointer map and allocator metadata
     * change exactly as if the application had freed each one, so the next
     * delta carries the collection to every mirror. Unreachable objects
     * hold no root, so a free cannot be refused for one. */
    uint64_t freed = 0;
    for (size_t i = 0; i < ndead; i++) {
        tha__objhdr_t *oh = THA__AT(h, tha__hdr_of(dead[i]), tha__objhdr_t);
        uint64_t sz = tha__schema_type(h->schema, oh->type_id)->size * oh->count;
        rc = tha_heap_free(h, h->base + dead[i]);
        if (rc) break;
        freed += sz;
    }
    THA_ASSERT(rc || freed == bytes);
    free(dead);
    if (bytes_freed) *bytes_freed = freed;
    return rc;
}

int tha_heap_dangling(const tha_heap_t *h, uint64_t *slot, uint64_t *target) {
    if (!h || !slot || !target) return THA_EINVAL;
    /* untyped allocations have no slots: their words are not checked */
    const uint64_t base = tha__origin(h), top = tha__reg(h)->top;
    const tha__type_t *types = h->schema->types;
    uint64_t cursor = 0;
    tha_obj_t o;
    while (tha_heap_next(h, &cursor, &o) == 1) {
        const tha__type_t *t = &types[o.type_id];
        const uint8_t *elem = h->base + o.offset;
        for (uint32_t i = 0; i < o.count; i++, elem += t->size)
            for (uint32_t s = 0; s < t->nslots; s++) {
                if (t->slots[s].is_func) continue;
                uint64_t v;
                memcpy(&v, elem + t->slots[s].offset, 8);
                uint64_t off = v - base; /* NULL and foreign wrap past top */
                if (off >= top) continue;
                tha__objhdr_t *oh;
                if (tha__find(h, off, &oh)) continue;
                *slot = (uint64_t)(elem - h->base) + t->slots[s].offset;
                *target = off;
                return 1;
            }
    }
    return 0;
}

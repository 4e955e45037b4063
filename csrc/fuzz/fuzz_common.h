/* fuzz_common.h — what the libFuzzer targets share: a schema, a source heap
 * with slabs, free slots, a span and roots, frame resealing (so mutations
 * get past the checksums), and the oracle every accepted heap must pass:
 * tha_heap_check, then a fixed sequence of API calls, run clean. Every
 * pointer word class travels in its frames: offsets, tagged offsets,
 * function ids, data externs (fz_static, fz_label) and tagged NULLs (up). */
#ifndef THA_FUZZ_COMMON_H
#define THA_FUZZ_COMMON_H

#include "tha.h"
#include "tha_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fz_node {
    char name[24];
    uint64_t id;
    struct fz_node *next, *peer;
    void (*hook)(void);
    struct fz_node *up;  /* tag mask 0x1: a tagged NULL or a tagged pointer */
    const char *label;   /* into fz_label (an extern) or NULL */
};

static __attribute__((unused)) void fz_hook(void) {}
static uint32_t FZ_NODE;
/* data externs: a node outside the heap, a string */
static struct fz_node fz_static;
static const char fz_label[] = "fuzz label";

static __attribute__((unused)) tha_schema_t *fz_schema(void) {
    static tha_schema_t *s;
    if (s) return s;
    if (tha_schema_create(&s) ||
        THA_STRUCT(s, struct fz_node, "fz_node", &FZ_NODE) ||
        THA_FIELD_SCALAR(s, FZ_NODE, struct fz_node, name, THA_T_CHAR, 24) ||
        THA_FIELD_SCALAR(s, FZ_NODE, struct fz_node, id, THA_T_U64, 0) ||
        THA_FIELD_PTR(s, FZ_NODE, struct fz_node, next, "fz_node", 0) ||
        THA_FIELD_PTR(s, FZ_NODE, struct fz_node, peer, "fz_node", 0) ||
        THA_FIELD_FUNC(s, FZ_NODE, struct fz_node, hook, 0) ||
        THA_FIELD_PTR_TAGGED(s, FZ_NODE, struct fz_node, up, "fz_node", 0x1) ||
        THA_FIELD_PTR(s, FZ_NODE, struct fz_node, label, "char", 0) ||
        tha_schema_add_func(s, "fz_hook", fz_hook) ||
        THA_EXTERN(s, "fz_static", fz_static) || THA_EXTERN(s, "fz_label", fz_label) ||
        tha_schema_seal(s))
        abort();
    FZ_NODE = tha_schema_type_id(s, FZ_NODE);
    return s;
}

#define FZ_CAP (1u << 20)

static __attribute__((unused)) void fz_must(int rc, const char *what) {
    if (rc) {
        fprintf(stderr, "fuzz setup: %s: %s\n", what, tha_strerror(rc));
        abort();
    }
}

/* Where same-address sources and mirrors live (one at a time). */
#define FZ_BASE ((void *)(uintptr_t)0x240000000000ull)

/* A deterministic source heap: chains of nodes in two slab classes, some
 * freed, one array big enough for a span, two roots. same_address: at
 * FZ_BASE, with an untyped buffer (root "raw") holding addresses of a node,
 * of the span, of itself, and an integer. */
static __attribute__((unused)) tha_heap_t *fz_source_mode(int same_address) {
    tha_heap_t *h;
    if (same_address)
        fz_must(tha_heap_create_at(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT, FZ_BASE),
                "create at FZ_BASE");
    else
        fz_must(tha_heap_create(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT), "create");
    struct fz_node *prev = NULL, *keep[40];
    for (int i = 0; i < 40; i++) {
        struct fz_node *n;
        fz_must(tha_heap_alloc(h, FZ_NODE, i % 5 == 4 ? 3 : 1, (void **)&n), "alloc");
        snprintf(n->name, sizeof n->name, "n%d", i);
        n->id = (uint64_t)i;
        n->next = prev;
        n->hook = i % 3 ? fz_hook : NULL;
        n->up = (struct fz_node *)(i % 4 ? (uintptr_t)prev | 1 : 1); /* tagged */
        n->label = i % 3 == 1 ? fz_label + i % 5 : NULL;
        if (i % 7 == 2) n->peer = &fz_static;
        prev = keep[i] = n;
    }
    struct fz_node *big;
    fz_must(tha_heap_alloc(h, FZ_NODE, 300, (void **)&big), "alloc span");
    big[0].next = prev;
    big[299].peer = keep[3];
    big[150].up = (struct fz_node *)1;
    big[151].label = fz_label;
    fz_must(tha_root_set(h, "chain", prev), "root");
    fz_must(tha_root_set(h, "big", big), "root");
    for (int i = 5; i < 40; i += 7) {
        keep[i + 1]->next = keep[i - 1]; /* unlink keep[i] before freeing it */
        keep[i + 1]->up = (struct fz_node *)1;
        fz_must(tha_heap_free(h, keep[i]), "free");
    }
    if (same_address) {
        void **raw;
        fz_must(tha_heap_alloc(h, THA_T_RAW, 40, (void **)&raw), "alloc raw");
        raw[0] = keep[2];
        raw[1] = &big[7].id;
        raw[2] = &raw[3];
        raw[3] = (void *)(uintptr_t)12345;
        fz_must(tha_root_set(h, "raw", raw), "root");
    }
    return h;
}

static __attribute__((unused)) tha_heap_t *fz_source(void) { return fz_source_mode(0); }

/* The source's next change: a few allocs, frees, writes, a root. */
static __attribute__((unused)) void fz_mutate(tha_heap_t *h, unsigned round) {
    void *r;
    fz_must(tha_root_get(h, "chain", &r), "root get");
    struct fz_node *head = r, *n;
    fz_must(tha_heap_alloc(h, FZ_NODE, 1 + round % 4, (void **)&n), "alloc");
    n->next = head;
    n->id = round;
    n->up = (struct fz_node *)(uintptr_t)(round & 1);
    n->label = fz_label + round % sizeof fz_label;
    n->peer = round % 3 ? &fz_static : NULL;
    fz_must(tha_root_set(h, "chain", n), "root set");
    if (head->next && head->next->next) {
        struct fz_node *gone = head->next;
        head->next = gone->next;
        fz_must(tha_heap_touch(h, head, 0), "touch");
        fz_must(tha_heap_free(h, gone), "free");
    }
}

/* A pointer word of a frame as this process would hold it: what apply
 * would write if the word were valid, 0 for anything it would refuse (for
 * harnesses that lay an image in place without apply). */
static __attribute__((unused)) uint64_t fz_native(uint64_t w, uint64_t base, uint64_t top) {
    if (w == 0) return 0;
    if (!(w & THA__FUNC_TAG)) return w <= top ? base + w : 0;
    switch (THA__WIRE_CLASS(w)) {
    case 0: return (w & ~THA__FUNC_TAG) == 0 ? (uint64_t)(uintptr_t)fz_hook : 0;
    case 1: {
        uint64_t off = w & THA__EXTERN_OFF_MASK;
        uint32_t id = THA__EXTERN_ID(w); /* by name: fz_label 0, fz_static 1 */
        if (id == 0 && off < sizeof fz_label) return (uint64_t)(uintptr_t)fz_label + off;
        if (id == 1 && off < sizeof fz_static) return (uint64_t)(uintptr_t)&fz_static + off;
        return 0;
    }
    case 2: return w & THA__TAG_BITS; /* the heap check judges its slot */
    default: return 0;
    }
}

static __attribute__((unused)) uint8_t *fz_encode(tha_heap_t *h, int kind, size_t *len) {
    size_t size;
    fz_must(tha_heap_frame_size(h, kind, &size), "frame size");
    uint8_t *f = malloc(size);
    fz_must(tha_heap_encode(h, kind, f, size, len), "encode");
    return f;
}

/* Both CRCs recomputed, if there is a header to hold them. */
static __attribute__((unused)) void fz_reseal(uint8_t *f, size_t len) {
    if (len < sizeof(tha__frame_hdr_t)) return;
    tha__frame_hdr_t hd;
    memcpy(&hd, f, sizeof hd);
    hd.length = len;
    hd.body_crc = tha_crc32c(0, f + sizeof hd, len - sizeof hd);
    hd.header_crc = tha_crc32c(0, &hd, offsetof(tha__frame_hdr_t, header_crc));
    memcpy(f, &hd, sizeof hd);
}

static __attribute__((unused)) void fz_fail(tha_heap_t *h, const char *what) {
    fprintf(stderr, "ORACLE: %s: %s\n", what, tha_heap_errmsg(h));
    abort();
}

/* Every accepted heap: sound, and every API call on it safe. */
static __attribute__((unused)) void fz_oracle(tha_heap_t *h) {
    if (tha_heap_check(h)) fz_fail(h, "accepted heap fails tha_heap_check");
    tha_obj_t o;
    uint64_t cur = 0;
    unsigned nobj = 0;
    while (tha_heap_next(h, &cur, &o) == 1 && nobj < 100000) nobj++;
    uint32_t rc_cur = 0;
    const char *name;
    void *p;
    while (tha_root_next(h, &rc_cur, &name, &p)) {
        tha_obj_t lo;
        if (tha_heap_lookup(h, p, &lo)) fz_fail(h, "a root is not live");
    }
    size_t nl = 0;
    tha_leak_t leaks[16];
    if (tha_leaks(h, leaks, 16, &nl) < 0) fz_fail(h, "leaks");
    struct fz_node *a = NULL, *b = NULL;
    if (tha_heap_alloc(h, FZ_NODE, 1, (void **)&a) == 0 &&
        tha_heap_alloc(h, FZ_NODE, 2, (void **)&b) == 0) {
        a->next = b;
        b[1].peer = a;
        b[0].hook = fz_hook;
        a->up = (struct fz_node *)1;
        b[0].label = fz_label + 3;
        b[0].peer = &fz_static;
        b[1].up = (struct fz_node *)((uintptr_t)a | 1);
        if (tha_root_set(h, "fz", a)) fz_fail(h, "root set");
        void *got;
        if (tha_root_get(h, "fz", &got) || got != a) fz_fail(h, "root get");
    }
    size_t len;
    for (int kind = THA_FRAME_DELTA; kind >= THA_FRAME_SNAPSHOT; kind--) {
        size_t size;
        if (tha_heap_frame_size(h, kind, &size)) fz_fail(h, "frame size");
        uint8_t *f = malloc(size);
        int rc = tha_heap_encode(h, kind, f, size, &len);
        free(f);
        if (rc) fz_fail(h, "encode");
    }
    if (a) {
        a->next = NULL;
        if (b && tha_heap_free(h, b)) fz_fail(h, "free");
        if (tha_root_set(h, "fz", NULL)) fz_fail(h, "root remove");
        if (tha_heap_free(h, a)) fz_fail(h, "free");
    }
    if (tha_heap_check(h)) fz_fail(h, "check after the API calls");
    (void)tha_collect(h, NULL);
    if (tha_heap_check(h)) fz_fail(h, "check after collect");
}

#endif

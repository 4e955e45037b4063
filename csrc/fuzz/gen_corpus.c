/* gen_corpus.c — writes the fuzzers' seed corpora (fuzz/corpus/<target>/)
 * from real frames of fz_source (and of its same-address twin):
 * `make fuzz-corpus`. Deterministic except
 * for lineages, which the targets overwrite anyway. */
#include "fuzz_common.h"

#include <sys/stat.h>

static void put(const char *dir, const char *name, const uint8_t *a, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "fuzz/corpus/%s", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "fuzz/corpus/%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(a, 1, n, f) != n) abort();
    fclose(f);
}

typedef struct buf {
    uint8_t *p;
    size_t n;
} buf_t;

static void add(buf_t *b, const void *p, size_t n) {
    b->p = realloc(b->p, b->n + n);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void add_item(buf_t *b, const void *p, size_t n) {
    uint32_t l = (uint32_t)n;
    add(b, &l, 4);
    add(b, p, n);
}

/* Changes of kind k to a source heap: objects, roots, a span, a new class. */
static void change(tha_heap_t *h, int k) {
    void *p;
    switch (k) {
    case 0: fz_mutate(h, 1); break;
    case 1: fz_mutate(h, 2); fz_mutate(h, 3); break;
    case 2: fz_must(tha_heap_alloc(h, FZ_NODE, 500, &p), "span"); break;
    case 3: fz_must(tha_heap_alloc(h, FZ_NODE, 40, &p), "new class"); break;
    case 4:
        fz_must(tha_root_get(h, "big", &p), "root");
        fz_must(tha_root_set(h, "big", NULL), "unroot");
        fz_must(tha_heap_free(h, p), "free span");
        break;
    default: {
        struct fz_node *n;
        fz_must(tha_root_get(h, "chain", &p), "root");
        n = p;
        n->id = 77;
        fz_must(tha_heap_touch(h, &n->id, 8), "touch");
    }
    }
}

/* The same seeds for same-address heaps (fz_source_mode(1) at FZ_BASE):
 * fuzz_frame with flags bit 1, fuzz_bulk mapped at the base and filled
 * away from it (odd epoch in its first segment), fuzz_load. */
static void same_address_seeds(void) {
    uint8_t flags = 2;
    char name[40];
    tha_heap_t *h = fz_source_mode(1);
    size_t slen;
    uint8_t *snap = fz_encode(h, THA_FRAME_SNAPSHOT, &slen);
    buf_t b = {0}, bulk = {0}, away = {0};
    add(&b, &flags, 1);
    add(&b, snap, slen);
    put("fuzz_frame", "fixed_snapshot", b.p, b.n);
    uint64_t from = 0;
    for (int first = 1;; first = 0) {
        size_t cap = tha__segment_size(h, from, 1024), len;
        if (cap <= THA_FRAME_HEADER_SIZE) break;
        uint8_t *seg = malloc(cap);
        fz_must(tha__encode_segment(h, &from, 1024, seg, cap, &len), "segment");
        add_item(&bulk, seg, len);
        if (first) { /* odd epoch: the staging heap is filled elsewhere */
            tha__frame_hdr_t hd;
            memcpy(&hd, seg, sizeof hd);
            hd.epoch = 1;
            memcpy(seg, &hd, sizeof hd);
            fz_reseal(seg, len);
        }
        add_item(&away, seg, len);
        free(seg);
    }
    tha_heap_destroy(h);
    for (int k = 0; k < 6; k++) {
        h = fz_source_mode(1);
        free(fz_encode(h, THA_FRAME_SNAPSHOT, &slen));
        change(h, k);
        size_t dlen;
        uint8_t *d = fz_encode(h, THA_FRAME_DELTA, &dlen);
        free(b.p);
        b = (buf_t){0};
        add(&b, &flags, 1);
        add(&b, d, dlen);
        snprintf(name, sizeof name, "fixed_delta%d", k);
        put("fuzz_frame", name, b.p, b.n);
        if (k == 0) {
            add_item(&bulk, d, dlen);
            add_item(&away, d, dlen);
            put("fuzz_bulk", "fixed_segments_delta", bulk.p, bulk.n);
            put("fuzz_bulk", "fixed_away_segments_delta", away.p, away.n);
        }
        buf_t ld = {0};
        add_item(&ld, snap, slen);
        add_item(&ld, d, dlen);
        change(h, (k + 1) % 6);
        uint8_t *d2 = fz_encode(h, THA_FRAME_DELTA, &dlen);
        add_item(&ld, d2, dlen);
        snprintf(name, sizeof name, "fixed_ckpt_log%d", k);
        put("fuzz_load", name, ld.p, ld.n);
        free(ld.p);
        free(d);
        free(d2);
        tha_heap_destroy(h);
    }
    free(b.p);
    free(bulk.p);
    free(away.p);
    free(snap);
}

int main(void) {
    char name[32];
    uint8_t flags = 0;
    tha_heap_t *h = fz_source();
    size_t slen;
    uint8_t *snap = fz_encode(h, THA_FRAME_SNAPSHOT, &slen);
    buf_t b = {0};
    add(&b, &flags, 1);
    add(&b, snap, slen);
    put("fuzz_frame", "snapshot", b.p, b.n);
    /* bulk: the source in segments of 64 KiB, then one delta */
    buf_t bulk = {0};
    uint64_t from = 0;
    for (;;) {
        size_t cap = tha__segment_size(h, from, 1024), len;
        if (cap <= THA_FRAME_HEADER_SIZE) break;
        uint8_t *seg = malloc(cap);
        fz_must(tha__encode_segment(h, &from, 1024, seg, cap, &len), "segment");
        add_item(&bulk, seg, len);
        free(seg);
    }
    tha_heap_destroy(h);
    for (int k = 0; k < 6; k++) {
        h = fz_source();
        free(fz_encode(h, THA_FRAME_SNAPSHOT, &slen)); /* the mirror's seq */
        change(h, k);
        size_t dlen;
        uint8_t *d = fz_encode(h, THA_FRAME_DELTA, &dlen);
        free(b.p);
        b = (buf_t){0};
        add(&b, &flags, 1);
        add(&b, d, dlen);
        snprintf(name, sizeof name, "delta%d", k);
        put("fuzz_frame", name, b.p, b.n);
        if (k == 0) {
            add_item(&bulk, d, dlen);
            put("fuzz_bulk", "segments_delta", bulk.p, bulk.n);
        }
        buf_t ld = {0};
        add_item(&ld, snap, slen);
        add_item(&ld, d, dlen);
        change(h, (k + 1) % 6);
        uint8_t *d2 = fz_encode(h, THA_FRAME_DELTA, &dlen);
        add_item(&ld, d2, dlen);
        snprintf(name, sizeof name, "ckpt_log%d", k);
        put("fuzz_load", name, ld.p, ld.n);
        free(ld.p);
        free(d);
        free(d2);
        tha_heap_destroy(h);
    }
    free(b.p);
    free(bulk.p);
    free(snap);
    same_address_seeds();
    return 0;
}

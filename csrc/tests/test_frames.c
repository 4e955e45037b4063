/* test_frames.c — issue 9: whatever apply, a bulk sync or load accepts
 * passes tha_heap_check and is safe to use. Frames with valid checksums
 * that rewrite allocator metadata are refused, naming what is wrong, and
 * leave the heap as it was; tha_heap_check itself is safe (no UB) on any
 * bytes. The frames here are edited and resealed (both CRCs recomputed),
 * as an attacker or a bit flip before the checksum would make them. */
#include "tha.h"
#include "tha_internal.h"
#include "check.h"
#include "craft.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

struct emp {
    char name[24];
    uint64_t id;
    struct emp *mgr;
};

static uint32_t EMP;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 24));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    CHECK_OK(tha_schema_seal(s));
    EMP = tha_schema_type_id(s, EMP);
    return s;
}

static tha_heap_t *new_heap(tha_schema_t *s) {
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    return h;
}

/* The heap's bytes and pointer map up to its top, and its seq. */
typedef struct snap {
    uint8_t *img, *map;
    uint64_t top, seq;
} snap_t;

static snap_t take(tha_heap_t *h) {
    snap_t s;
    s.top = tha__reg(h)->top;
    s.seq = h->seq;
    s.img = malloc(s.top);
    s.map = malloc(s.top / THA__BLOCK);
    memcpy(s.img, h->base, s.top);
    memcpy(s.map, h->ptrmap, s.top / THA__BLOCK);
    return s;
}

static bool same(tha_heap_t *h, snap_t *s) {
    bool ok = tha__reg(h)->top == s->top && h->seq == s->seq &&
              memcmp(h->base, s->img, s->top) == 0 &&
              memcmp(h->ptrmap, s->map, s->top / THA__BLOCK) == 0;
    free(s->img);
    free(s->map);
    return ok;
}

/* The fixed sequence every accepted heap must survive. */
static void exercise(tha_heap_t *h) {
    CHECK_OK(tha_heap_check(h));
    struct emp *e, *f;
    CHECK_OK(tha_heap_alloc(h, EMP, 1, (void **)&e));
    CHECK_OK(tha_heap_alloc(h, EMP, 3, (void **)&f));
    e->mgr = f;
    CHECK_OK(tha_root_set(h, "x", e));
    uint64_t cur = 0;
    tha_obj_t o;
    int n = 0;
    while (tha_heap_next(h, &cur, &o) == 1) n++;
    CHECK(n >= 2);
    CHECK_OK(tha_heap_free(h, f));
    e->mgr = NULL;
    CHECK_OK(tha_heap_check(h));
}

/* A source with a slab holding live and free slots, mirrored. */
static void pair(tha_schema_t *s, tha_heap_t **src, tha_heap_t **dst, struct emp **es) {
    *src = new_heap(s);
    *dst = new_heap(s);
    for (int i = 0; i < 6; i++) {
        CHECK_OK(tha_heap_alloc(*src, EMP, 1, (void **)&es[i]));
        es[i]->id = (uint64_t)i;
        if (i) es[i]->mgr = es[0];
    }
    CHECK_OK(tha_root_set(*src, "boss", es[0]));
    CHECK_OK(tha_heap_free(*src, es[3]));
    size_t len;
    uint8_t *snap = encode(*src, THA_FRAME_SNAPSHOT, &len);
    CHECK_OK(tha_heap_apply(*dst, snap, len));
    free(snap);
}

static uint64_t slab_of(tha_heap_t *h, const void *p) {
    return ((uint64_t)((const uint8_t *)p - h->base) - tha__reg(h)->data_off) /
               (THA__SLAB_PAGES * THA__PAGE) * (THA__SLAB_PAGES * THA__PAGE) +
           tha__reg(h)->data_off;
}

/* Hole 1: a delta rewriting a slab's free list was accepted and the next
 * alloc crashed. */
static void test_delta_rewrites_free_list(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *src, *dst;
    struct emp *es[6];
    pair(s, &src, &dst, es);
    uint64_t slab = slab_of(src, es[0]);
    CHECK_OK(tha_heap_touch(src, es[1], 0));
    tha__mark(src, slab, THA__SLAB_HDR); /* the slab header travels */
    size_t len;
    uint8_t *d = encode(src, THA_FRAME_DELTA, &len);
    uint8_t *hdr = in_frame(d, slab);
    CHECK(hdr != NULL);
    if (hdr) {
        uint64_t bad = 1ull << 40;
        memcpy(hdr + offsetof(tha__slab_t, free), &bad, 8);
        reseal(d, len);
        snap_t before = take(dst);
        int rc = tha_heap_apply(dst, d, len);
        CHECK_RC(rc, THA_EFRAME);
        CHECK_CONTAINS(tha_heap_errmsg(dst), "free list");
        CHECK_CONTAINS(tha_heap_errmsg(dst), "0x10000000000");
        CHECK(same(dst, &before));
        if (rc) { /* the honest frame still applies, and the heap works */
            memcpy(hdr + offsetof(tha__slab_t, free), &((tha__slab_t *)(src->base + slab))->free, 8);
            reseal(d, len);
            CHECK_OK(tha_heap_apply(dst, d, len));
            exercise(dst);
        }
    }
    free(d);
    tha_heap_destroy(src);
    tha_heap_destroy(dst);
    tha_schema_release(s);
}

/* More metadata a delta must not break: a live slot header, the page map,
 * the counters, a root, a pointer mask on a slab header. */
static void test_delta_metadata_edits(void) {
    tha_schema_t *s = make_schema();
    for (int which = 0; which < 7; which++) {
        tha_heap_t *src, *dst;
        struct emp *es[6];
        pair(s, &src, &dst, es);
        const tha__region_t *r = tha__reg(src);
        uint64_t slab = slab_of(src, es[0]);
        uint64_t e3 = (uint64_t)((uint8_t *)es[3] - src->base); /* freed */
        tha__mark(src, 0, sizeof(tha__region_t));
        tha__mark(src, slab, THA__SLAB_HDR);
        tha__mark(src, r->pagemap_off + slab / THA__PAGE * sizeof(tha__page_t), 8);
        tha__mark(src, r->roots_off, 64);
        CHECK_OK(tha_heap_touch(src, es[2], 0));
        size_t len;
        uint8_t *d = encode(src, THA_FRAME_DELTA, &len);
        const char *want = NULL;
        uint8_t *p;
        switch (which) {
        case 0: /* a free slot's header says live */
            p = in_frame(d, e3 - THA__HDR);
            memcpy(p, &EMP, 4);
            p[4] = 1, want = "";
            break;
        case 1: /* the slab's page becomes a span head */
            p = in_frame(d, r->pagemap_off + slab / THA__PAGE * sizeof(tha__page_t));
            p[0] = THA__PG_SPAN_HEAD, want = "page";
            break;
        case 2: /* live object count */
            p = in_frame(d, offsetof(tha__region_t, live_objects));
            p[0] ^= 1, want = "counters";
            break;
        case 3: /* a root to nowhere */
            p = in_frame(d, r->roots_off + offsetof(tha__root_t, offset));
            p[0] = 3, p[1] = 0x7f, want = "root";
            break;
        case 4: /* region layout */
            p = in_frame(d, offsetof(tha__region_t, pagemap_off));
            p[5] = 1, want = "";
            break;
        case 5: /* bump past nslots */
            p = in_frame(d, slab + offsetof(tha__slab_t, bump));
            p[2] = 1, want = "slab";
            break;
        default: { /* a class list through a wild offset */
            p = in_frame(d, offsetof(tha__region_t, class_slabs) + 8 * 3);
            uint64_t w = 1ull << 41;
            memcpy(p, &w, 8), want = "";
        }
        }
        reseal(d, len);
        snap_t before = take(dst);
        int rc = tha_heap_apply(dst, d, len);
        CHECK(rc == THA_EFRAME);
        if (rc != THA_EFRAME) fprintf(stderr, "  case %d: rc %d %s\n", which, rc,
                                      tha_heap_errmsg(dst));
        CHECK_CONTAINS(tha_heap_errmsg(dst), want);
        CHECK(same(dst, &before));
        if (rc) exercise(dst);
        free(d);
        tha_heap_destroy(src);
        tha_heap_destroy(dst);
    }
    tha_schema_release(s);
}

/* A snapshot's allocator metadata is checked before it replaces the image. */
static void test_snapshot_metadata(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *src, *dst;
    struct emp *es[6];
    pair(s, &src, &dst, es);
    uint64_t slab = slab_of(src, es[0]);
    size_t len;
    uint8_t *f = encode(src, THA_FRAME_SNAPSHOT, &len);
    uint8_t *p = in_frame(f, slab + offsetof(tha__slab_t, free));
    uint64_t bad = slab + 8; /* not a slot */
    memcpy(p, &bad, 8);
    reseal(f, len);
    snap_t before = take(dst);
    int rc = tha_heap_apply(dst, f, len);
    CHECK_RC(rc, THA_EFRAME);
    CHECK_CONTAINS(tha_heap_errmsg(dst), "free list");
    CHECK(same(dst, &before));
    if (rc) exercise(dst);
    free(f);
    tha_heap_destroy(src);
    tha_heap_destroy(dst);
    tha_schema_release(s);
}

/* Hole 3: tha_heap_check did pointer arithmetic on unvalidated offsets
 * (UBSan: pointer overflow) and trusted pagemap_off / roots_off. */
static void test_check_on_wild_offsets(void) {
    tha_schema_t *s = make_schema();
    for (int which = 0; which < 4; which++) {
        tha_heap_t *h = new_heap(s);
        struct emp *e;
        CHECK_OK(tha_heap_alloc(h, EMP, 1, (void **)&e));
        tha__region_t *r = tha__reg(h);
        uint64_t *field = which == 0   ? &r->class_slabs[5]
                          : which == 1 ? &r->pagemap_off
                          : which == 2 ? &r->roots_off
                                       : &r->free_spans;
        uint64_t keep = *field;
        *field = which == 0 ? 0xfffffffffffff000ull : 1ull << 40;
        CHECK_RC(tha_heap_check(h), THA_ECORRUPT);
        *field = keep;
        CHECK_OK(tha_heap_check(h));
        tha_heap_destroy(h);
    }
    tha_schema_release(s);
}


/* ---- hole 2: a bulk sync and a checkpoint carrying a corrupt header ---- */

typedef struct end {
    tha_session_t *s;
    int bulk_done, errors, last_error;
} end_t;

static end_t *end_new(int role, tha_heap_t *heap, tha_backlog_t *bl) {
    end_t *e = calloc(1, sizeof *e);
    tha_session_config_t cfg = {.role = role, .node_id = (uint64_t)role,
                                .chunk_bytes = 4096};
    CHECK_OK(tha_session_create(&e->s, &cfg, heap, bl));
    CHECK_OK(tha_session_start(e->s, 0));
    return e;
}

static void drain(end_t *e) {
    tha_event_t ev;
    while (tha_session_event(e->s, &ev)) {
        if (ev.type == THA_EV_BULK_DONE) e->bulk_done++;
        if (ev.type == THA_EV_ERROR) e->errors++, e->last_error = ev.code;
    }
}

/* Messages from -> to; SNAP_DATA segments holding block 0 get the region
 * header edit, resealed (frame and message checksums). */
static size_t move(end_t *from, end_t *to, int corrupt) {
    size_t total = 0;
    for (;;) {
        const void *d;
        size_t n;
        if (tha_session_output(from->s, &d, &n) || !n) break;
        uint8_t *m = malloc(n);
        memcpy(m, d, n);
        for (size_t at = 0; corrupt && at + 20 <= n;) {
            uint16_t type;
            uint32_t plen;
            memcpy(&type, m + at + 4, 2);
            memcpy(&plen, m + at + 8, 4);
            uint8_t *f = m + at + 20;
            if (type == 5 /* SNAP_DATA */ && plen > sizeof(tha__frame_hdr_t) + 16) {
                uint8_t *hdr = in_frame(f, 0);
                if (hdr) {
                    uint64_t big = 1ull << 40;
                    memcpy(hdr + offsetof(tha__region_t, top), &big, 8);
                    memcpy(hdr + offsetof(tha__region_t, pagemap_off), &big, 8);
                    reseal(f, plen);
                    uint32_t c = tha_crc32c(0, f, plen);
                    memcpy(m + at + 12, &c, 4);
                    c = tha_crc32c(0, m + at, 16);
                    memcpy(m + at + 16, &c, 4);
                }
            }
            at += 20 + plen;
        }
        tha_session_feed(to->s, m, n, 1);
        free(m);
        CHECK_OK(tha_session_advance(from->s, n));
        total += n;
        drain(to);
    }
    drain(from);
    return total;
}

static void test_bulk_with_corrupt_header(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *src = new_heap(s);
    struct emp *e;
    CHECK_OK(tha_heap_alloc(src, EMP, 4, (void **)&e));
    CHECK_OK(tha_root_set(src, "e", e));
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, src, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL);
    for (int i = 0; i < 4; i++) {
        while (move(a, b, 1) + move(b, a, 0)) {}
        size_t len;
        uint8_t *d = encode(src, THA_FRAME_DELTA, &len); /* makes it consistent */
        tha_backlog_push(bl, d, len);
        free(d);
        tha_session_pump(a->s, THA_ACK_APPLIED);
    }
    CHECK(b->bulk_done == 0);
    CHECK(b->errors > 0 && b->last_error == THA_ECORRUPT);
    tha_heap_t *got = tha_session_take_heap(b->s);
    CHECK(got == NULL);
    if (got) tha_heap_destroy(got);
    tha_session_destroy(a->s);
    tha_session_destroy(b->s);
    free(a);
    free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(src);
    tha_schema_release(s);
}

static void test_load_with_corrupt_header(void) {
    tha_schema_t *s = make_schema();
    char path[] = "/tmp/tha_frames_ckptXXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    for (int which = 0; which < 3; which++) {
        tha_heap_t *h = new_heap(s);
        struct emp *e;
        CHECK_OK(tha_heap_alloc(h, EMP, 1, (void **)&e));
        tha__region_t *r = tha__reg(h);
        uint64_t *field = which == 0 ? &r->pagemap_off : which == 1 ? &r->roots_off
                                                                    : &r->nepochs;
        uint64_t keep = *field;
        *field = which == 2 ? 1000 : 1ull << 40;
        CHECK_OK(tha_heap_checkpoint(h, path, NULL, NULL));
        *field = keep;
        for (int check = 0; check < 2; check++) {
            tha_load_options_t opt = {.schema = s, .check = check};
            tha_load_report_t rep;
            tha_heap_t *l = NULL;
            CHECK_RC(tha_heap_load(&l, path, &opt, &rep), THA_ECORRUPT);
            CHECK(l == NULL);
            if (l) tha_heap_destroy(l);
        }
        tha_heap_destroy(h);
    }
    unlink(path);
    tha_schema_release(s);
}

/* An application that scribbles on the allocator's own pages (a wild write
 * into the page map) gets "no allocation there" from lookups and encodes
 * that cannot resolve a pointer, never a read outside the region (found by
 * fuzz_load, whose writer checkpoints whatever memory it is given). */
static void test_scribbled_page_map(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *h = new_heap(s);
    struct emp *a, *b;
    CHECK_OK(tha_heap_alloc(h, EMP, 1, (void **)&a));
    CHECK_OK(tha_heap_alloc(h, EMP, 200, (void **)&b)); /* a page span */
    a->mgr = &b[3];
    tha__page_t *pm = tha__pagemap(h);
    uint64_t pa = (uint64_t)((uint8_t *)a - h->base) / THA__PAGE;
    uint64_t pb = (uint64_t)((uint8_t *)b - h->base) / THA__PAGE;
    const tha__page_t saved_a = pm[pa], saved_b = pm[pb], saved_b1 = pm[pb + 1];
    tha_obj_t o;
    const uint8_t kinds[][2] = {{THA__PG_SLAB_TAIL, 0}, {THA__PG_SLAB_HEAD, 1},
                                {THA__PG_SPAN_TAIL, 0}, {THA__PG_SPAN_HEAD, 0}};
    const uint32_t links[] = {0xffffffffu, 0x7fffffffu, 3, 0};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (size_t l = 0; l < sizeof links / sizeof links[0]; l++) {
            pm[pa].kind = pm[pb].kind = pm[pb + 1].kind = kinds[k][0];
            pm[pa].link = pm[pb].link = pm[pb + 1].link = links[l];
            pm[pa].cls = pm[pb].cls = kinds[k][1] ? 250 : saved_a.cls;
            (void)tha_heap_lookup(h, a, &o);        /* any answer, no crash */
            (void)tha_heap_lookup(h, &b[150], &o);
            size_t size, len;
            if (tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &size) == 0) {
                uint8_t *f = malloc(size);
                (void)tha_heap_encode(h, THA_FRAME_SNAPSHOT, f, size, &len);
                free(f);
            }
            CHECK(tha_heap_check(h) != 0);          /* and the check says so */
        }
    pm[pa] = saved_a;
    pm[pb] = saved_b;
    pm[pb + 1] = saved_b1;
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_bulk_with_corrupt_header);
    RUN(test_scribbled_page_map);
    RUN(test_load_with_corrupt_header);
    RUN(test_check_on_wild_offsets);
    RUN(test_delta_rewrites_free_list);
    RUN(test_delta_metadata_edits);
    RUN(test_snapshot_metadata);
    return CHECK_DONE();
}

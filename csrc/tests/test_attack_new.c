/* test_attack_new.c — attacks on the newest features (data externs, tagged
 * pointers, same-address mode, size rules, type checks, bound roots): each
 * test states the input and the promise it holds the library to (whatever
 * apply accepts leaves a heap that passes tha_heap_check; on error nothing
 * changes; errors name the thing). */
#include "tha.h"
#include "tha_internal.h"
#include "check.h"
#include "craft.h"
#include "ship.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct item {
    uint64_t v;
    struct item *next;
    struct item *up; /* tag mask 0x1 */
};
struct head {
    struct item *first;
    struct item *last;
};

static uint32_t ITEM, HEAD;
static struct head head_a, head_b;

static tha_schema_t *make_schema(struct head *h) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct item, "item", &ITEM));
    CHECK_OK(THA_FIELD_SCALAR(s, ITEM, struct item, v, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, ITEM, struct item, next, "item", 0));
    CHECK_OK(THA_FIELD_PTR_TAGGED(s, ITEM, struct item, up, "item", 0x1));
    CHECK_OK(THA_STRUCT(s, struct head, "head", &HEAD));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, first, "item", 0));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, last, "item", 0));
    CHECK_OK(tha_schema_add_extern(s, "head", sizeof *h, h));
    CHECK_OK(tha_schema_seal(s));
    ITEM = tha_schema_type_id(s, ITEM);
    HEAD = tha_schema_type_id(s, HEAD);
    return s;
}

/* Applies f to `to` expecting a refusal rc whose message holds want; the
 * heap's image and seq must be as they were. */
static void refused(tha_heap_t *to, uint8_t *f, size_t len, int rc, const char *want) {
    tha_stats_t before, after;
    CHECK_OK(tha_heap_stats(to, &before));
    uint8_t *img = malloc(before.top);
    memcpy(img, tha_heap_base(to), before.top);
    int got = tha_heap_apply(to, f, len);
    CHECK(got == rc);
    if (got != rc) fprintf(stderr, "  apply: %d (%s), wanted %d\n", got, tha_heap_errmsg(to), rc);
    if (want) CHECK_CONTAINS(tha_heap_errmsg(to), want);
    CHECK_OK(tha_heap_stats(to, &after));
    CHECK(after.seq == before.seq && after.top == before.top &&
          memcmp(img, tha_heap_base(to), before.top) == 0);
    if (got == 0) CHECK_OK(tha_heap_check(to));
    free(img);
}

/* An extern word written into a scalar word (its mask bit set too), in a
 * delta over an existing object: a pointer word where the layout has none. */
static void test_extern_word_in_scalar(void) {
    tha_schema_t *sa = make_schema(&head_a), *sb = make_schema(&head_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    struct item *x;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&x));
    CHECK_OK(tha_root_set(a, "x", x));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    x->v = 7;
    CHECK_OK(tha_heap_touch(a, x, 0));
    size_t len;
    uint8_t *f = encode(a, THA_FRAME_DELTA, &len);
    uint64_t off = (uint64_t)((uint8_t *)&x->v - (uint8_t *)tha_heap_base(a));
    uint8_t *mask, *w = in_frame_at(f, off, &mask);
    CHECK(w != NULL);
    uint64_t word = THA__WIRE_EXTERN | 0; /* extern 0 ("head"), byte 0 */
    memcpy(w, &word, 8);
    *mask |= (uint8_t)(1u << (off % THA__BLOCK / 8));
    reseal(f, len);
    refused(b, f, len, THA_EFRAME, NULL);
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* A tagged NULL in the `up` slot of an object the same delta frees. */
static void test_tagged_null_in_freed_slot(void) {
    tha_schema_t *sa = make_schema(&head_a), *sb = make_schema(&head_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    struct item *x, *y;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&x));
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&y));
    CHECK_OK(tha_root_set(a, "y", y));
    x->up = (struct item *)1;
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    uint64_t off = (uint64_t)((uint8_t *)&x->up - (uint8_t *)tha_heap_base(a));
    CHECK_OK(tha_heap_free(a, x));
    y->v = 1;
    CHECK_OK(tha_heap_touch(a, y, 0));
    size_t len;
    uint8_t *f = encode(a, THA_FRAME_DELTA, &len);
    uint8_t *mask, *w = in_frame_at(f, off, &mask);
    CHECK(w != NULL);
    if (w) {
        uint64_t word = THA__WIRE_TAGNULL | 1;
        memcpy(w, &word, 8);
        *mask |= (uint8_t)(1u << (off % THA__BLOCK / 8));
        reseal(f, len);
        refused(b, f, len, THA_EFRAME, NULL);
    }
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* The receiver binds a mirrored static's extern to an address inside its
 * own heap (its region header): the apply must not write the cell there,
 * behind the allocator's back. mirror_extern refuses such a binding; one
 * made after the registration fails the apply, nothing written. */
static void test_mirrored_extern_inside_heap(void) {
    tha_schema_t *sa = make_schema(&head_a), *sb = make_schema(&head_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_mirror_extern(a, "head", HEAD));
    struct item *x;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&x));
    head_a.first = head_a.last = x;
    CHECK_OK(tha_schema_bind_extern(sb, "head", tha_heap_base(b)));
    CHECK_RC(tha_heap_mirror_extern(b, "head", HEAD), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(b), "static 'head'");
    CHECK_OK(tha_schema_bind_extern(sb, "head", &head_b));
    CHECK_OK(tha_heap_mirror_extern(b, "head", HEAD));
    CHECK_OK(tha_schema_bind_extern(sb, "head", (uint8_t *)tha_heap_base(b) + 64));
    size_t len;
    uint8_t *f = encode(a, THA_FRAME_SNAPSHOT, &len);
    refused(b, f, len, THA_ESTATE, "static 'head'");
    CHECK_OK(tha_heap_check(b));
    CHECK_OK(tha_schema_bind_extern(sb, "head", &head_b));
    CHECK_OK(tha_heap_apply(b, f, len));
    CHECK_OK(tha_heap_check(b));
    CHECK(head_b.first && head_b.first == head_b.last &&
          (uint8_t *)head_b.first >= (uint8_t *)tha_heap_base(b));
    /* the sender's side: a static inside its own heap fails the frame */
    CHECK_OK(tha_schema_bind_extern(sa, "head", (uint8_t *)tha_heap_base(a) + 64));
    size_t n;
    CHECK_RC(tha_heap_frame_size(a, THA_FRAME_DELTA, &n), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(a), "static 'head'");
    CHECK_OK(tha_schema_bind_extern(sa, "head", &head_a));
    head_a.first = head_a.last = head_b.first = head_b.last = NULL;
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* A function pointer slot is mirrored through the registry: whatever a
 * frame leaves there must be NULL or a function this process registered.
 * A frame putting a heap offset (the receiver would call into its heap's
 * data) or an extern word (a call into a static's bytes) there must be
 * refused, by snapshot and by delta, nothing written. */
struct cbo {
    uint64_t v;
    void (*cb)(void);
};
static uint32_t CBO;
static int called;
static void cb_fn(void) { called++; }
static uint64_t ext_blob[4];

static tha_schema_t *cb_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct cbo, "cbo", &CBO));
    CHECK_OK(THA_FIELD_SCALAR(s, CBO, struct cbo, v, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_FUNC(s, CBO, struct cbo, cb, 0));
    CHECK_OK(tha_schema_add_func(s, "cb_fn", cb_fn));
    CHECK_OK(tha_schema_add_extern(s, "blob", sizeof ext_blob, ext_blob));
    CHECK_OK(tha_schema_seal(s));
    CBO = tha_schema_type_id(s, CBO);
    return s;
}

static void test_func_slot_takes_only_functions(void) {
    tha_schema_t *s = cb_schema();
    tha_heap_t *a, *b, *c;
    CHECK_OK(tha_heap_create(&a, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&c, s, 4 << 20, THA_TRACK_EXPLICIT));
    struct cbo *x;
    CHECK_OK(tha_heap_alloc(a, CBO, 1, (void **)&x));
    CHECK_OK(tha_root_set(a, "x", x));
    x->cb = cb_fn;
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    x->v = 1;
    CHECK_OK(tha_heap_touch(a, x, 0));
    uint64_t off = (uint64_t)((uint8_t *)&x->cb - (uint8_t *)tha_heap_base(a));
    uint64_t words[] = {off - 8 /* x itself: an offset in the image */,
                        THA__WIRE_EXTERN | 8 /* byte 8 of "blob" */};
    size_t dlen, slen;
    uint8_t *d = encode(a, THA_FRAME_DELTA, &dlen), *sn = encode(a, THA_FRAME_SNAPSHOT, &slen);
    for (int snap = 0; snap < 2; snap++)
        for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
            uint8_t *f = snap ? sn : d;
            size_t len = snap ? slen : dlen;
            uint8_t *w = in_frame_at(f, off, NULL);
            CHECK(w != NULL);
            if (!w) continue;
            uint64_t honest;
            memcpy(&honest, w, 8);
            memcpy(w, &words[i], 8);
            reseal(f, len);
            refused(snap ? c : b, f, len, THA_EFRAME, "cb");
            memcpy(w, &honest, 8);
            reseal(f, len);
        }
    CHECK_OK(tha_heap_apply(b, d, dlen));
    CHECK_OK(tha_heap_check(b));
    /* the native check too: a function slot holding a heap address fails */
    void *r;
    CHECK_OK(tha_root_get(b, "x", &r));
    ((struct cbo *)r)->cb = (void (*)(void))r;
    CHECK_RC(tha_heap_check(b), THA_ECORRUPT);
    ((struct cbo *)r)->cb = cb_fn;
    CHECK_OK(tha_heap_check(b));
    free(d);
    free(sn);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_heap_destroy(c);
    tha_schema_release(s);
}

/* tha_heap_free with two bound roots on the object: one variable has moved
 * on, the other still points into it. The free is refused, and (on error
 * the heap is unchanged) neither root moves. */
static struct item *var_a, *var_b;
static void test_free_bound_roots_refused_whole(void) {
    tha_schema_t *s = make_schema(&head_a);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT));
    struct item *x, *y;
    CHECK_OK(tha_heap_alloc(h, ITEM, 1, (void **)&x));
    CHECK_OK(tha_heap_alloc(h, ITEM, 1, (void **)&y));
    var_a = var_b = x;
    CHECK_OK(tha_root_bind(h, "a", (void *const *)&var_a));
    CHECK_OK(tha_root_bind(h, "b", (void *const *)&var_b));
    size_t n;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n)); /* roots read */
    var_a = y; /* "a" moves on, "b" still holds x */
    CHECK_RC(tha_heap_free(h, x), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "'b'");
    void *r;
    CHECK_OK(tha_root_get(h, "a", &r));
    CHECK(r == x); /* unchanged until the next frame reads the variable */
    var_b = (struct item *)&head_b; /* "b" moves outside the heap */
    CHECK(tha_heap_free(h, x) < 0);
    CHECK_CONTAINS(tha_heap_errmsg(h), "'b'");
    CHECK_OK(tha_root_get(h, "a", &r));
    CHECK(r == x);
    var_b = NULL;
    CHECK_OK(tha_heap_free(h, x));
    CHECK_OK(tha_root_get(h, "a", &r));
    CHECK(r == y);
    CHECK_RC(tha_root_get(h, "b", &r), THA_ENOTFOUND);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* A frame roots the name of a static B mirrors by value at something that
 * is no cell (the last word of a u64 array): B's pull skips it, but once
 * promoted B pushes its static before its first frame. That push must not
 * write a 16-byte head over an 8-byte word (out of its allocation). */
static void test_push_into_foreign_cell(void) {
    tha_schema_t *sa = make_schema(&head_a), *sb = make_schema(&head_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    uint64_t *arr;
    CHECK_OK(tha_heap_alloc(a, THA_T_U64, 64, (void **)&arr));
    CHECK_OK(tha_root_set(a, "head", &arr[63]));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_heap_mirror_extern(b, "head", HEAD));
    void *r;
    CHECK_OK(tha_root_get(b, "head", &r));
    uint64_t after_before;
    memcpy(&after_before, (uint8_t *)r + 8, 8);
    head_b.first = head_b.last = (struct item *)&head_b; /* nonzero bytes */
    size_t n;
    int rc = tha_heap_frame_size(b, THA_FRAME_SNAPSHOT, &n);
    uint64_t after_now;
    memcpy(&after_now, (uint8_t *)r + 8, 8);
    CHECK(after_now == after_before); /* nothing written past the array */
    if (rc) CHECK_CONTAINS(tha_heap_errmsg(b), "head");
    CHECK_OK(tha_heap_check(b));
    head_b.first = head_b.last = NULL;
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* THA_T_RAW smuggled into a relocatable heap: a v1 delta and a v1
 * snapshot whose u64 array's header is rewritten to 32 untyped bytes (the
 * same byte count, so the counters agree). Refused, nothing written. */
static void test_raw_smuggled_in_v1(void) {
    tha_schema_t *s = make_schema(&head_a);
    tha_heap_t *a, *b, *c;
    CHECK_OK(tha_heap_create(&a, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&c, s, 4 << 20, THA_TRACK_EXPLICIT));
    uint64_t *old, *fresh;
    CHECK_OK(tha_heap_alloc(a, THA_T_U64, 4, (void **)&old));
    CHECK_OK(tha_root_set(a, "old", old));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_heap_alloc(a, THA_T_U64, 4, (void **)&fresh));
    CHECK_OK(tha_root_set(a, "fresh", fresh));
    CHECK_OK(tha_heap_touch(a, old, 0));
    size_t dlen, slen;
    uint8_t *d = encode(a, THA_FRAME_DELTA, &dlen), *sn = encode(a, THA_FRAME_SNAPSHOT, &slen);
    const uint8_t *base = tha_heap_base(a);
    tha__objhdr_t raw = {.type_id = THA_T_RAW, .count = 32};
    for (int which = 0; which < 2; which++)
        for (int snap = 0; snap < 2; snap++) {
            uint64_t off = (uint64_t)((const uint8_t *)(which ? fresh : old) - base) - THA__HDR;
            uint8_t *f = snap ? sn : d;
            size_t len = snap ? slen : dlen;
            uint8_t *w = in_frame_at(f, off, NULL);
            CHECK(w != NULL);
            if (!w) continue;
            tha__objhdr_t honest;
            memcpy(&honest, w, sizeof honest);
            memcpy(w, &raw, sizeof raw);
            reseal(f, len);
            refused(snap ? c : b, f, len, THA_EFRAME, "untyped");
            memcpy(w, &honest, sizeof honest);
            reseal(f, len);
        }
    CHECK_OK(tha_heap_apply(b, d, dlen));
    CHECK_OK(tha_heap_apply(c, sn, slen));
    free(d);
    free(sn);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_heap_destroy(c);
    tha_schema_release(s);
}

/* The receiver mirrors a static by value, then unbinds its extern: an
 * apply cannot copy the cell out, so it must not report success (the
 * static would silently stay as it was). */
static void test_apply_with_unbound_mirrored_static(void) {
    tha_schema_t *sa = make_schema(&head_a), *sb = make_schema(&head_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_mirror_extern(a, "head", HEAD));
    CHECK_OK(tha_heap_mirror_extern(b, "head", HEAD));
    struct item *x;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&x));
    head_a.first = head_a.last = x;
    CHECK_OK(tha_schema_bind_extern(sb, "head", NULL));
    size_t len;
    uint8_t *f = encode(a, THA_FRAME_SNAPSHOT, &len);
    refused(b, f, len, THA_ESTATE, "static 'head'");
    CHECK_OK(tha_schema_bind_extern(sb, "head", &head_b));
    CHECK_OK(tha_heap_apply(b, f, len));
    CHECK(head_b.first != NULL && head_b.first == head_b.last);
    head_a.first = head_a.last = head_b.first = head_b.last = NULL;
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* An empty delta of a schema with function fields (whose deltas get the
 * slot pass): it applies, again and again. Its run index once asked
 * realloc for 0 bytes, which freed the kept buffer: "no memory to check a
 * delta" (tests/test_heap.py::test_touch_variants in CI). */
static void test_empty_delta_with_func_slots(void) {
    tha_schema_t *s = cb_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 4 << 20, THA_TRACK_EXPLICIT));
    struct cbo *x;
    CHECK_OK(tha_heap_alloc(a, CBO, 1, (void **)&x));
    x->cb = cb_fn;
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    for (int i = 0; i < 3; i++) CHECK_OK(ship(a, b, THA_FRAME_DELTA)); /* nothing dirty */
    x->v = 2;
    CHECK_OK(tha_heap_touch(a, x, 0));
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_empty_delta_with_func_slots);
    RUN(test_extern_word_in_scalar);
    RUN(test_tagged_null_in_freed_slot);
    RUN(test_mirrored_extern_inside_heap);
    RUN(test_func_slot_takes_only_functions);
    RUN(test_free_bound_roots_refused_whole);
    RUN(test_push_into_foreign_cell);
    RUN(test_raw_smuggled_in_v1);
    RUN(test_apply_with_unbound_mirrored_static);
    return CHECK_DONE();
}

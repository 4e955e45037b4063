/* test_sized.c — size rules for allocators that give only a size
 * (tha_heap_size_type, tha_heap_size_multiple, tha_heap_alloc_sized): the
 * type each size gets, exact rules before multiples, the refusals (no rule,
 * two multiples, a conflicting rule), and that rules stay with their heap
 * handle: a mirror made from frames has none until its program registers
 * them, then allocates and ships back. */
#include "tha.h"
#include "check.h"
#include "ship.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct cell { /* 16 bytes: the "array of n" kind (a bucket array) */
    struct cell *next;
    uint64_t v;
};
struct wide { /* 32 bytes, another multiple rule */
    struct cell *a, *b;
    uint64_t x, y;
};
struct head { /* 64 bytes = 4 cells: the exact rule must win */
    struct cell *first;
    uint64_t pad[7];
};

static uint32_t CELL, WIDE, HEAD;

static tha_schema_t *make_schema(uint32_t *cell_handle) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct cell, "cell", &CELL));
    CHECK_OK(THA_FIELD_PTR(s, CELL, struct cell, next, "cell", 0));
    CHECK_OK(THA_FIELD_SCALAR(s, CELL, struct cell, v, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct wide, "wide", &WIDE));
    CHECK_OK(THA_FIELD_PTR(s, WIDE, struct wide, a, "cell", 0));
    CHECK_OK(THA_FIELD_PTR(s, WIDE, struct wide, b, "cell", 0));
    CHECK_OK(THA_FIELD_SCALAR(s, WIDE, struct wide, x, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, WIDE, struct wide, y, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct head, "head", &HEAD));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, first, "cell", 0));
    CHECK_OK(THA_FIELD_SCALAR(s, HEAD, struct head, pad, THA_T_U64, 7));
    CHECK_OK(tha_schema_seal(s));
    *cell_handle = CELL;
    CELL = tha_schema_type_id(s, CELL);
    WIDE = tha_schema_type_id(s, WIDE);
    HEAD = tha_schema_type_id(s, HEAD);
    return s;
}

/* The allocation at p: its type and element count. */
static void is_alloc(tha_heap_t *h, void *p, uint32_t type, uint32_t count) {
    tha_obj_t o;
    CHECK_OK(tha_heap_lookup(h, p, &o));
    CHECK(o.ptr == p && o.type_id == type && o.count == count);
}

static void test_no_rule_is_refused(void) {
    uint32_t hc;
    tha_schema_t *s = make_schema(&hc);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT));
    void *p = (void *)1;
    CHECK_RC(tha_heap_alloc_sized(h, 24, &p), THA_ESCHEMA);
    CHECK(p == NULL);
    CHECK_CONTAINS(tha_heap_errmsg(h), "24 bytes");
    CHECK_CONTAINS(tha_heap_errmsg(h), "tha_heap_size_type(h, 24, type)");
    CHECK_CONTAINS(tha_heap_errmsg(h), "tha_heap_size_multiple");
    /* a rule for another size does not cover it, and the message lists it */
    CHECK_OK(tha_heap_size_type(h, sizeof(struct head), HEAD));
    CHECK_RC(tha_heap_alloc_sized(h, 24, &p), THA_ESCHEMA);
    CHECK_CONTAINS(tha_heap_errmsg(h), "64 -> head");
    CHECK_RC(tha_heap_alloc_sized(h, 0, &p), THA_EINVAL);
    CHECK_OK(tha_heap_check(h));
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.live_objects == 0);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

static void test_exact_then_multiple(void) {
    uint32_t hc;
    tha_schema_t *s = make_schema(&hc);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT));
    /* a registration handle is accepted and means the canonical id */
    CHECK_OK(tha_heap_size_multiple(h, hc));
    CHECK_OK(tha_heap_size_type(h, sizeof(struct head), HEAD));
    CHECK_OK(tha_heap_size_type(h, 8192, THA_T_U8)); /* an exact size, n elements */
    void *p;
    CHECK_OK(tha_heap_alloc_sized(h, 64, &p)); /* exact beats 4 x cell */
    is_alloc(h, p, HEAD, 1);
    CHECK_OK(tha_heap_alloc_sized(h, 48, &p));
    is_alloc(h, p, CELL, 3);
    CHECK_OK(tha_heap_alloc_sized(h, 16 * 1000, &p)); /* a span */
    is_alloc(h, p, CELL, 1000);
    CHECK_OK(tha_heap_alloc_sized(h, 8192, &p)); /* exact beats 512 x cell */
    is_alloc(h, p, THA_T_U8, 8192);
    CHECK_OK(tha_heap_alloc_sized(h, 8192 * 2, &p));
    is_alloc(h, p, CELL, 1024);
    CHECK_RC(tha_heap_alloc_sized(h, 24, &p), THA_ESCHEMA);
    CHECK_CONTAINS(tha_heap_errmsg(h), "24 bytes");
    CHECK_CONTAINS(tha_heap_errmsg(h), "n x 16 -> cell");
    /* more elements than one allocation holds (odd: cell does not divide it) */
    CHECK_OK(tha_heap_size_multiple(h, THA_T_CHAR));
    CHECK_RC(tha_heap_alloc_sized(h, ((size_t)1 << 33) + 1, &p), THA_ECAPACITY);
    CHECK_CONTAINS(tha_heap_errmsg(h), "8589934593 bytes");
    CHECK_OK(tha_heap_alloc_sized(h, 17, &p));
    is_alloc(h, p, THA_T_CHAR, 17);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

static void test_rule_refusals(void) {
    uint32_t hc;
    tha_schema_t *s = make_schema(&hc);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT));
    /* the same rule twice is one rule; another type for a size is refused */
    CHECK_OK(tha_heap_size_type(h, 64, HEAD));
    CHECK_OK(tha_heap_size_type(h, 64, HEAD));
    CHECK_RC(tha_heap_size_type(h, 64, CELL), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "64 bytes are head already");
    /* a size that is not a whole number of elements */
    CHECK_RC(tha_heap_size_type(h, 24, CELL), THA_EINVAL);
    CHECK_CONTAINS(tha_heap_errmsg(h), "24 bytes are not a multiple of cell (16 bytes)");
    CHECK_RC(tha_heap_size_type(h, 0, CELL), THA_EINVAL);
    /* types that cannot be allocated */
    CHECK_RC(tha_heap_size_type(h, 8, THA_T_VOID), THA_EINVAL);
    CHECK_RC(tha_heap_size_multiple(h, 0), THA_EINVAL);
    CHECK_RC(tha_heap_size_multiple(h, THA_T_HANDLE + 99), THA_EINVAL);
    /* two multiples that both divide a size: refused, naming both */
    CHECK_OK(tha_heap_size_multiple(h, CELL));
    CHECK_OK(tha_heap_size_multiple(h, CELL));
    CHECK_OK(tha_heap_size_multiple(h, WIDE));
    void *p;
    CHECK_RC(tha_heap_alloc_sized(h, 96, &p), THA_ESCHEMA);
    CHECK_CONTAINS(tha_heap_errmsg(h), "96 bytes");
    CHECK_CONTAINS(tha_heap_errmsg(h), "cell");
    CHECK_CONTAINS(tha_heap_errmsg(h), "wide");
    CHECK_CONTAINS(tha_heap_errmsg(h), "tha_heap_size_type(h, 96, type)");
    CHECK_OK(tha_heap_alloc_sized(h, 48, &p)); /* only cell divides 48 */
    is_alloc(h, p, CELL, 3);
    CHECK_OK(tha_heap_size_type(h, 96, WIDE)); /* an exact rule settles 96 */
    CHECK_OK(tha_heap_alloc_sized(h, 96, &p));
    is_alloc(h, p, WIDE, 3);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* Rules belong to the heap handle, not to the image: a mirror built from
 * frames (with the schema the snapshot carries) has none; its program
 * registers them (a promoted standby), allocates, and ships back. The
 * pointer slots of sized allocations are relocated both ways. */
static void test_rules_stay_with_the_handle(void) {
    uint32_t hc;
    tha_schema_t *s = make_schema(&hc);
    tha_heap_t *a, *b, *c;
    CHECK_OK(tha_heap_create(&a, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_size_type(a, sizeof(struct head), HEAD));
    CHECK_OK(tha_heap_size_multiple(a, CELL));
    struct head *hd;
    struct cell *cells;
    CHECK_OK(tha_heap_alloc_sized(a, sizeof *hd, (void **)&hd));
    CHECK_OK(tha_heap_alloc_sized(a, 10 * sizeof *cells, (void **)&cells));
    for (int i = 0; i < 10; i++) {
        cells[i].v = (uint64_t)i;
        cells[i].next = i + 1 < 10 ? &cells[i + 1] : NULL;
    }
    hd->first = cells;
    CHECK_OK(tha_heap_touch(a, hd, 0));
    CHECK_OK(tha_heap_touch(a, cells, 0));
    CHECK_OK(tha_root_set(a, "head", hd));

    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_SNAPSHOT, &n));
    void *frame = malloc(n);
    CHECK_OK(tha_heap_encode(a, THA_FRAME_SNAPSHOT, frame, n, &len));
    tha_schema_t *carried;
    char msg[256];
    CHECK_OK(tha_frame_schema(frame, len, &carried, msg, sizeof msg));
    CHECK_OK(tha_heap_create(&b, carried, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_apply(b, frame, len));
    free(frame);
    void *r;
    CHECK_OK(tha_root_get(b, "head", &r));
    struct head *bh = r;
    uint64_t sum = 0;
    for (struct cell *x = bh->first; x; x = x->next) {
        CHECK((uint8_t *)x > (uint8_t *)tha_heap_base(b));
        sum += x->v;
    }
    CHECK(sum == 45);

    void *p;
    CHECK_RC(tha_heap_alloc_sized(b, sizeof(struct head), &p), THA_ESCHEMA);
    uint32_t bhead, bcell;
    CHECK_OK(tha_schema_type_by_name(carried, "head", &bhead));
    CHECK_OK(tha_schema_type_by_name(carried, "cell", &bcell));
    CHECK_OK(tha_heap_size_type(b, sizeof(struct head), bhead));
    CHECK_OK(tha_heap_size_multiple(b, bcell));
    struct cell *more;
    CHECK_OK(tha_heap_alloc_sized(b, 2 * sizeof *more, (void **)&more));
    is_alloc(b, more, bcell, 2);
    more[0].v = 100;
    more[0].next = &more[1];
    more[1].v = 200;
    more[1].next = bh->first;
    bh->first = more;
    CHECK_OK(tha_heap_touch(b, more, 0));
    CHECK_OK(tha_heap_touch(b, bh, 0));
    CHECK_OK(tha_heap_create(&c, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(ship(b, c, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_root_get(c, "head", &r));
    sum = 0;
    for (struct cell *x = ((struct head *)r)->first; x; x = x->next) sum += x->v;
    CHECK(sum == 345);
    CHECK_OK(tha_heap_check(b));
    CHECK_OK(tha_heap_check(c));
    size_t leaks;
    CHECK_OK(tha_leaks(c, NULL, 0, &leaks));
    CHECK(leaks == 0);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_heap_destroy(c);
    tha_schema_release(carried);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_no_rule_is_refused);
    RUN(test_exact_then_multiple);
    RUN(test_rule_refusals);
    RUN(test_rules_stay_with_the_handle);
    return CHECK_DONE();
}

/* test_typecheck.c — schema checks that catch mistakes (issue 11, item 6):
 * a pointer's target must be of its declared type or embed it
 * (tha_heap_check_types, tha_heap_check and encode under
 * THA_DEBUG_TYPES), forgotten pointer fields are found (tha_heap_lint),
 * and a scalar overlapping a pointer is refused at seal. */
#include "tha.h"
#include "check.h"
#include "ship.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The intrusive-list idiom: a node embedded in a job, twice more in an
 * array, and jobs nested in an array of an outer struct. */
struct node {
    struct node *next;
    struct node *prev;
    uint64_t key;
};
struct job {
    uint32_t id;
    int32_t delta;
    char name[16];
    struct node link;
    struct node extra[2];
    double cost;
    uint32_t count;
    uint32_t flags;
};
struct outer {
    uint64_t x;
    struct job jobs[3];
};
struct emp {
    uint64_t id;
    struct emp *boss;
    struct node *where;
    void *any;
    char *title;
    uint32_t *counter;
    double *rate;
    struct job *job;
};
/* A struct whose pointer field at offset 8 was left out of the schema. */
struct holder {
    uint64_t id;
    struct emp *forgot;
    uint32_t small;
    /* 4 bytes of padding */
    uint64_t scalar;
};
struct holders {
    uint64_t n;
    struct holder h[3];
};

static uint32_t NODE, JOB, OUTER, EMP, HOLDER, HOLDERS;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct node, "node", &NODE));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, next, "node", 0));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, prev, "node", 0));
    CHECK_OK(THA_FIELD_SCALAR(s, NODE, struct node, key, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct job, "job", &JOB));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, delta, THA_T_I32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, name, THA_T_CHAR, 16));
    CHECK_OK(THA_FIELD_STRUCT(s, JOB, struct job, link, "node", 0));
    CHECK_OK(THA_FIELD_STRUCT(s, JOB, struct job, extra, "node", 2));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, cost, THA_T_F64, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, count, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, flags, THA_T_U32, 0));
    CHECK_OK(THA_STRUCT(s, struct outer, "outer", &OUTER));
    CHECK_OK(THA_FIELD_SCALAR(s, OUTER, struct outer, x, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, OUTER, struct outer, jobs, "job", 3));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, boss, "emp", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, where, "node", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, any, "void", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, title, "char", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, counter, "uint32_t", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, rate, "double", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, job, "job", 0));
    CHECK_OK(THA_STRUCT(s, struct holder, "holder", &HOLDER));
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDER, struct holder, id, THA_T_U64, 0));
    /* forgot: not registered */
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDER, struct holder, small, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDER, struct holder, scalar, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct holders, "holders", &HOLDERS));
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDERS, struct holders, n, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, HOLDERS, struct holders, h, "holder", 3));
    CHECK_OK(tha_schema_seal(s));
    NODE = tha_schema_type_id(s, NODE);
    JOB = tha_schema_type_id(s, JOB);
    OUTER = tha_schema_type_id(s, OUTER);
    EMP = tha_schema_type_id(s, EMP);
    HOLDER = tha_schema_type_id(s, HOLDER);
    HOLDERS = tha_schema_type_id(s, HOLDERS);
    return s;
}

typedef struct world {
    tha_schema_t *s;
    tha_heap_t *h;
    struct emp *e;       /* 5 emps */
    struct job *j;       /* 2 jobs */
    struct outer *o;
    uint32_t *u32s;      /* 8 */
    double *f64s;        /* 4 */
    char *buf;           /* 32 */
} world_t;

static world_t make_world(void) {
    world_t w;
    w.s = make_schema();
    CHECK_OK(tha_heap_create(&w.h, w.s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_alloc(w.h, EMP, 5, (void **)&w.e));
    CHECK_OK(tha_heap_alloc(w.h, JOB, 2, (void **)&w.j));
    CHECK_OK(tha_heap_alloc(w.h, OUTER, 1, (void **)&w.o));
    CHECK_OK(tha_heap_alloc(w.h, THA_T_U32, 8, (void **)&w.u32s));
    CHECK_OK(tha_heap_alloc(w.h, THA_T_F64, 4, (void **)&w.f64s));
    CHECK_OK(tha_heap_alloc(w.h, THA_T_CHAR, 32, (void **)&w.buf));
    CHECK_OK(tha_root_set(w.h, "emps", w.e));
    return w;
}

static void free_world(world_t *w) {
    tha_heap_destroy(w->h);
    tha_schema_release(w->s);
}

/* tha_heap_check_types on w with *slot set to v (then restored). */
static int types_with(world_t *w, void **slot, void *v) {
    void *old = *slot;
    *slot = v;
    int rc = tha_heap_check_types(w->h);
    *slot = old;
    return rc;
}

#define ACCEPTS(w, slot, v)                                                    \
    do {                                                                       \
        int rc__ = types_with((w), (void **)&(slot), (void *)(v));             \
        if (rc__) {                                                            \
            fprintf(stderr, "%s:%d: refused %s = %s: %s\n", __FILE__,          \
                    __LINE__, #slot, #v, tha_heap_errmsg((w)->h));             \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)
#define REFUSES(w, slot, v)                                                    \
    do {                                                                       \
        int rc__ = types_with((w), (void **)&(slot), (void *)(v));             \
        if (rc__ != THA_EMISMATCH) {                                           \
            fprintf(stderr, "%s:%d: %s = %s: rc %d, want THA_EMISMATCH\n",     \
                    __FILE__, __LINE__, #slot, #v, rc__);                      \
            check_failures++;                                                  \
        }                                                                      \
    } while (0)

static void test_legit_heap_passes(void) {
    world_t w = make_world();
    CHECK_OK(tha_heap_check_types(w.h));
    /* every kind of pointer set to something right, all at once */
    struct emp *e = &w.e[2];
    e->boss = &w.e[0];
    e->where = &w.j[1].link;
    e->any = (char *)w.j + 5;
    e->title = w.j[0].name + 3;
    e->counter = &w.j[1].count;
    e->rate = &w.j[0].cost;
    e->job = &w.o->jobs[2];
    w.j[0].link.next = &w.j[1].link;
    w.j[1].link.prev = &w.j[0].link;
    w.j[0].extra[1].next = &w.o->jobs[1].extra[0];
    CHECK_OK(tha_heap_check_types(w.h));
    CHECK_OK(tha_heap_check(w.h));
    CHECK_OK(tha_heap_set_debug(w.h, THA_DEBUG_TYPES));
    CHECK_OK(tha_heap_check(w.h));
    free_world(&w);
}

static void test_wrong_struct_target(void) {
    world_t w = make_world();
    struct emp *e = &w.e[2];
    /* boss is declared struct emp *: a job is the wrong type */
    REFUSES(&w, e->boss, &w.j[1]);
    e->boss = (struct emp *)&w.j[1];
    CHECK_RC(tha_heap_check_types(w.h), THA_EMISMATCH);
    const char *m = tha_heap_errmsg(w.h);
    CHECK_CONTAINS(m, "struct emp"); /* the object holding it, declared type */
    CHECK_CONTAINS(m, "field boss");
    CHECK_CONTAINS(m, "pointer to struct emp");
    CHECK_CONTAINS(m, "struct job"); /* what it points into */
    CHECK_CONTAINS(m, "[2]");        /* the element holding it */
    /* tha_heap_check keeps to the allocator's invariants, unless asked */
    CHECK_OK(tha_heap_check(w.h));
    CHECK_OK(tha_heap_set_debug(w.h, THA_DEBUG_TYPES));
    CHECK_RC(tha_heap_check(w.h), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "field boss");
    CHECK_OK(tha_heap_set_debug(w.h, 0));
    CHECK_OK(tha_heap_check(w.h));
    CHECK_RC(tha_heap_set_debug(w.h, 1u << 7), THA_EINVAL);
    e->boss = NULL;
    /* element starts of an array are right, anything inside one is not */
    ACCEPTS(&w, e->boss, &w.e[3]);
    ACCEPTS(&w, e->boss, &w.e[0]);
    REFUSES(&w, e->boss, (char *)&w.e[3] + 8);
    REFUSES(&w, e->boss, w.u32s);
    REFUSES(&w, e->boss, w.buf);
    /* job: the start of a job allocation or of a job nested in an outer */
    ACCEPTS(&w, e->job, &w.j[1]);
    ACCEPTS(&w, e->job, &w.o->jobs[0]);
    ACCEPTS(&w, e->job, &w.o->jobs[2]);
    REFUSES(&w, e->job, w.o);            /* outer starts with x, not a job */
    REFUSES(&w, e->job, &w.o->jobs[1].link);
    REFUSES(&w, e->job, &w.e[1]);
    free_world(&w);
}

static void test_embedded_struct_accepted(void) {
    world_t w = make_world();
    struct emp *e = &w.e[2];
    /* a struct node * to a node inside a job, inside an array of them, and
     * two levels down inside an outer's array of jobs */
    ACCEPTS(&w, e->where, &w.j[0].link);
    ACCEPTS(&w, e->where, &w.j[1].link);
    ACCEPTS(&w, e->where, &w.j[1].extra[0]);
    ACCEPTS(&w, e->where, &w.j[1].extra[1]);
    ACCEPTS(&w, e->where, &w.o->jobs[2].extra[1]);
    ACCEPTS(&w, e->where, &w.o->jobs[0].link);
    /* the node's own links, the same idiom */
    ACCEPTS(&w, w.j[0].link.next, &w.o->jobs[1].link);
    ACCEPTS(&w, w.o->jobs[2].extra[0].prev, &w.j[0].extra[1]);
    /* not at a node: inside one, at the job's start, past the array */
    REFUSES(&w, e->where, &w.j[1].link.prev);
    REFUSES(&w, e->where, &w.j[1]);
    REFUSES(&w, e->where, &w.j[1].cost); /* one past extra[1] */
    REFUSES(&w, w.j[0].link.next, &w.j[1].name);
    /* the message names the target's field and the declared type */
    w.j[0].link.next = (struct node *)&w.o->jobs[1].cost;
    CHECK_RC(tha_heap_check_types(w.h), THA_EMISMATCH);
    const char *m = tha_heap_errmsg(w.h);
    CHECK_CONTAINS(m, "field link.next");
    CHECK_CONTAINS(m, "pointer to struct node");
    CHECK_CONTAINS(m, "struct outer");
    CHECK_CONTAINS(m, "jobs[1].cost");
    free_world(&w);
}

static void test_void_and_byte_pointers(void) {
    world_t w = make_world();
    struct emp *e = &w.e[2];
    void *anywhere[] = {w.e, (char *)w.e + 13, &w.j[1].cost, (char *)w.o + 77,
                        w.u32s + 3, (char *)w.f64s + 1, w.buf + 31};
    for (size_t i = 0; i < sizeof anywhere / sizeof *anywhere; i++) {
        ACCEPTS(&w, e->any, anywhere[i]);
        ACCEPTS(&w, e->title, anywhere[i]);
    }
    ACCEPTS(&w, e->title, w.j[1].name + 7); /* char * into a name array */
    ACCEPTS(&w, e->title, w.o->jobs[2].name);
    free_world(&w);
}

static void test_primitive_pointers(void) {
    world_t w = make_world();
    struct emp *e = &w.e[2];
    /* uint32_t *: a uint32_t field, array element or allocation */
    ACCEPTS(&w, e->counter, &w.j[0].count);
    ACCEPTS(&w, e->counter, &w.o->jobs[2].flags);
    ACCEPTS(&w, e->counter, &w.j[1].id);
    ACCEPTS(&w, e->counter, &w.j[1].delta); /* int32_t: C lets them alias */
    ACCEPTS(&w, e->counter, w.u32s);
    ACCEPTS(&w, e->counter, w.u32s + 7);
    REFUSES(&w, e->counter, &w.j[0].cost); /* a double */
    REFUSES(&w, e->counter, (char *)w.u32s + 2);
    REFUSES(&w, e->counter, w.f64s);
    REFUSES(&w, e->counter, w.buf);
    REFUSES(&w, e->counter, &w.j[0].link.key); /* a uint64_t */
    REFUSES(&w, e->counter, &w.e[1]);
    e->counter = (uint32_t *)&w.j[0].cost;
    CHECK_RC(tha_heap_check_types(w.h), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "field counter");
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "pointer to uint32_t");
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "field cost");
    e->counter = NULL;
    /* double *: a double field or allocation */
    ACCEPTS(&w, e->rate, &w.o->jobs[1].cost);
    ACCEPTS(&w, e->rate, w.f64s + 3);
    REFUSES(&w, e->rate, &w.j[0].link.key);
    REFUSES(&w, e->rate, w.u32s);
    free_world(&w);
}

static void test_unchecked_pointers(void) {
    world_t w = make_world();
    struct emp *e = &w.e[2];
    /* one past the end of an allocation, or a freed one: not a type
     * question (tha_heap_dangling reports them) */
    struct emp *spare;
    CHECK_OK(tha_heap_alloc(w.h, EMP, 1, (void **)&spare));
    ACCEPTS(&w, e->boss, &w.e[5]);
    CHECK_OK(tha_heap_free(w.h, spare));
    ACCEPTS(&w, e->boss, spare);
    e->boss = spare;
    uint64_t slot, target;
    CHECK(tha_heap_dangling(w.h, &slot, &target) == 1);
    e->boss = NULL;
    free_world(&w);
}

static void test_debug_encode(void) {
    world_t w = make_world();
    tha_heap_t *m;
    CHECK_OK(tha_heap_create(&m, w.s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(ship(w.h, m, THA_FRAME_SNAPSHOT));
    struct emp *e = &w.e[4], *e0 = &w.e[0]; /* 256 bytes apart: other blocks */
    /* off: a wrong type travels (the frame is sound, the program is not) */
    e0->boss = (struct emp *)&w.j[0];
    CHECK_OK(tha_heap_touch(w.h, e0, sizeof *e0));
    CHECK_OK(ship(w.h, m, THA_FRAME_DELTA));
    /* on: the delta carrying it is refused, naming it, and nothing changes */
    CHECK_OK(tha_heap_set_debug(w.h, THA_DEBUG_TYPES));
    e->rate = (double *)&w.j[1].count;
    CHECK_OK(tha_heap_touch(w.h, &e->rate, 8));
    tha_stats_t before, after;
    CHECK_OK(tha_heap_stats(w.h, &before));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(w.h, THA_FRAME_DELTA, &n));
    void *buf = malloc(n);
    CHECK_RC(tha_heap_encode(w.h, THA_FRAME_DELTA, buf, n, &len), THA_EMISMATCH);
    const char *msg = tha_heap_errmsg(w.h);
    CHECK_CONTAINS(msg, "delta");
    CHECK_CONTAINS(msg, "field rate");
    CHECK_CONTAINS(msg, "pointer to double");
    CHECK_CONTAINS(msg, "struct job");
    CHECK_CONTAINS(msg, "field count");
    CHECK_OK(tha_heap_stats(w.h, &after));
    CHECK(after.seq == before.seq && after.dirty_blocks == before.dirty_blocks);
    /* only what the frame carries is looked at: boss (clean) is not */
    e->rate = &w.j[1].cost;
    CHECK_OK(tha_heap_encode(w.h, THA_FRAME_DELTA, buf, n, &len));
    CHECK_OK(tha_heap_apply(m, buf, len));
    free(buf);
    /* a snapshot carries everything: boss is refused now */
    CHECK_OK(tha_heap_frame_size(w.h, THA_FRAME_SNAPSHOT, &n));
    buf = malloc(n);
    CHECK_RC(tha_heap_encode(w.h, THA_FRAME_SNAPSHOT, buf, n, &len), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "snapshot");
    CHECK_CONTAINS(tha_heap_errmsg(w.h), "field boss");
    e0->boss = &w.e[1];
    CHECK_OK(tha_heap_touch(w.h, &e0->boss, 8));
    CHECK_OK(tha_heap_encode(w.h, THA_FRAME_SNAPSHOT, buf, n, &len));
    CHECK_OK(tha_heap_apply(m, buf, len));
    free(buf);
    /* the mirror never inherits the flag: it holds what its source wrote */
    CHECK_OK(tha_heap_check(m));
    tha_heap_destroy(m);
    free_world(&w);
}

static void test_lint_finds_forgotten_pointer(void) {
    world_t w = make_world();
    struct holder *ho;
    struct holders *hs;
    CHECK_OK(tha_heap_alloc(w.h, HOLDER, 2, (void **)&ho));
    CHECK_OK(tha_heap_alloc(w.h, HOLDERS, 1, (void **)&hs));
    size_t n = 99;
    CHECK_OK(tha_heap_lint(w.h, NULL, 0, &n));
    CHECK(n == 0);
    /* registered words holding heap addresses are not findings: a scalar
     * field is the program's to fill */
    ho[0].scalar = (uint64_t)(uintptr_t)&w.e[1];
    ho[0].id = (uint64_t)(uintptr_t)w.j;
    CHECK_OK(tha_heap_lint(w.h, NULL, 0, &n));
    CHECK(n == 0);
    /* the forgotten field of element 1, and of a holder nested in holders */
    ho[1].forgot = &w.e[4];
    hs->h[2].forgot = &w.e[0];
    tha_lint_t out[4];
    memset(out, 0, sizeof out);
    CHECK_OK(tha_heap_lint(w.h, out, 4, &n));
    CHECK(n == 2);
    uint8_t *base = tha_heap_base(w.h);
    CHECK(out[0].offset == (uint64_t)((uint8_t *)&ho[1].forgot - base));
    CHECK(out[0].object == (uint64_t)((uint8_t *)ho - base));
    CHECK(out[0].type_id == HOLDER && out[0].element == 1 && out[0].at == 8);
    CHECK(out[0].value == (uint64_t)(uintptr_t)&w.e[4]);
    CHECK_CONTAINS(out[0].what, "struct holder");
    CHECK_CONTAINS(out[0].what, "bytes 8..15");
    CHECK_CONTAINS(out[0].what, "not covered by any field");
    CHECK_CONTAINS(out[0].what, "struct emp"); /* what it points at */
    size_t at1 = offsetof(struct holders, h) + 2 * sizeof(struct holder) + 8;
    CHECK(out[1].offset == (uint64_t)((uint8_t *)hs - base) + at1);
    CHECK(out[1].type_id == HOLDERS && out[1].element == 0 && out[1].at == at1);
    CHECK_CONTAINS(out[1].what, "struct holders");
    /* cap smaller than what there is: the first cap, the total in n */
    memset(out, 0, sizeof out);
    CHECK_OK(tha_heap_lint(w.h, out, 1, &n));
    CHECK(n == 2 && out[0].at == 8 && out[1].offset == 0);
    CHECK_RC(tha_heap_lint(w.h, NULL, 1, &n), THA_EINVAL);
    /* padding partly covered: bytes 20..23 of holder are no field's */
    ho[1].forgot = NULL;
    hs->h[2].forgot = NULL;
    uint64_t addr = (uint64_t)(uintptr_t)&w.e[2];
    memcpy((char *)&ho[0] + 16, &addr, 8); /* small and the padding after it */
    CHECK_OK(tha_heap_lint(w.h, out, 4, &n));
    CHECK(n == 1 && out[0].at == 16);
    CHECK_CONTAINS(out[0].what, "bytes 16..23");
    CHECK_CONTAINS(out[0].what, "20..23 covered by no field");
    memset((char *)&ho[0] + 16, 0, 8);
    /* values that are not addresses in the heap are not findings */
    ho[1].forgot = (struct emp *)(uintptr_t)0x1234;
    CHECK_OK(tha_heap_lint(w.h, NULL, 0, &n));
    CHECK(n == 0);
    free_world(&w);
}

static void seal_fails(tha_schema_t *s, const char *a, const char *b) {
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), a);
    CHECK_CONTAINS(tha_schema_errmsg(s), b);
    tha_schema_release(s);
}

static void add(tha_schema_t *s, uint32_t id, const char *name, uint32_t off,
                uint32_t kind, uint32_t prim, const char *target, uint32_t d0) {
    tha_field_t f = {.name = name, .offset = off, .kind = kind, .prim = prim,
                     .target = target};
    f.dims[0] = d0;
    CHECK_OK(tha_schema_add_field(s, id, &f));
}

static void test_scalar_overlapping_pointer_refused(void) {
    tha_schema_t *s;
    uint32_t a, b;
    /* union { void *p; uintptr_t bits; } flattened into a struct */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "tagged", 16, 8, 0, &a));
    add(s, a, "p", 0, THA_K_PTR, 0, "void", 0);
    add(s, a, "bits", 0, THA_K_SCALAR, THA_T_U64, NULL, 0);
    add(s, a, "n", 8, THA_K_SCALAR, THA_T_U64, NULL, 0);
    seal_fails(s, "field bits", "field p");
    /* a 4-byte scalar over half a pointer, registered first */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "half", 16, 8, 0, &a));
    add(s, a, "lo", 12, THA_K_SCALAR, THA_T_U32, NULL, 0);
    add(s, a, "q", 8, THA_K_PTR, 0, "half", 0);
    seal_fails(s, "field lo", "field q");
    /* a scalar array over a pointer of a nested struct */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "in", 16, 8, 0, &a));
    add(s, a, "key", 0, THA_K_SCALAR, THA_T_U64, NULL, 0);
    add(s, a, "next", 8, THA_K_PTR, 0, "in", 0);
    CHECK_OK(tha_schema_add_struct(s, "out", 40, 8, 0, &b));
    add(s, b, "inner", 8, THA_K_STRUCT, 0, "in", 0);
    add(s, b, "raw", 0, THA_K_SCALAR, THA_T_CHAR, NULL, 24);
    seal_fails(s, "field raw", "field inner");
    /* a bitfield over a function pointer */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "fb", 8, 8, 0, &a));
    add(s, a, "cb", 0, THA_K_FUNC, 0, NULL, 0);
    tha_field_t bf = {.name = "flag", .offset = 4, .kind = THA_K_BITS,
                      .prim = THA_T_U32, .bits = {3, 1}};
    CHECK_OK(tha_schema_add_field(s, a, &bf));
    seal_fails(s, "field flag", "field cb");
    /* a pointer over the scalar bytes of a nested struct */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "pair", 16, 8, 0, &a));
    add(s, a, "x", 0, THA_K_SCALAR, THA_T_U64, NULL, 0);
    add(s, a, "y", 8, THA_K_SCALAR, THA_T_U64, NULL, 0);
    CHECK_OK(tha_schema_add_struct(s, "holdp", 16, 8, 0, &b));
    add(s, b, "xy", 0, THA_K_STRUCT, 0, "pair", 0);
    add(s, b, "ptr", 8, THA_K_PTR, 0, "pair", 0);
    seal_fails(s, "field xy", "field ptr");
    /* scalars overlapping scalars (a flattened union of numbers), and a
     * scalar over a nested struct's scalar bytes only: fine */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "in", 16, 8, 0, &a));
    add(s, a, "key", 0, THA_K_SCALAR, THA_T_U64, NULL, 0);
    add(s, a, "next", 8, THA_K_PTR, 0, "in", 0);
    CHECK_OK(tha_schema_add_struct(s, "out", 24, 8, 0, &b));
    add(s, b, "i", 0, THA_K_SCALAR, THA_T_I64, NULL, 0);
    add(s, b, "d", 0, THA_K_SCALAR, THA_T_F64, NULL, 0);
    add(s, b, "inner", 8, THA_K_STRUCT, 0, "in", 0);
    add(s, b, "key_alias", 8, THA_K_SCALAR, THA_T_U64, NULL, 0);
    CHECK_OK(tha_schema_seal(s));
    tha_schema_release(s);
    /* unions of scalars overlap as unions do */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "num", 8, 8, 1, &a));
    add(s, a, "i", 0, THA_K_SCALAR, THA_T_I64, NULL, 0);
    add(s, a, "d", 0, THA_K_SCALAR, THA_T_F64, NULL, 0);
    add(s, a, "b", 0, THA_K_SCALAR, THA_T_U8, NULL, 8);
    CHECK_OK(tha_schema_seal(s));
    tha_schema_release(s);
}

/* A type holding more pointed-to positions than the tables may list is
 * sealed all the same and checked at element starts only. */
struct key { uint64_t k; };
#define NKEYS ((1u << 22) + 1)
static void test_big_type_seals(void) {
    tha_schema_t *s;
    uint32_t k, big, ref;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "key", 8, 8, 0, &k));
    add(s, k, "k", 0, THA_K_SCALAR, THA_T_U64, NULL, 0);
    CHECK_OK(tha_schema_add_struct(s, "big", (size_t)NKEYS * 8, 8, 0, &big));
    add(s, big, "keys", 0, THA_K_STRUCT, 0, "key", NKEYS);
    CHECK_OK(tha_schema_add_struct(s, "ref", 8, 8, 0, &ref));
    add(s, ref, "p", 0, THA_K_PTR, 0, "key", 0);
    CHECK_OK(tha_schema_seal(s));
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 64 << 20, THA_TRACK_EXPLICIT));
    struct key *b;
    void **r;
    CHECK_OK(tha_heap_alloc(h, big, 1, (void **)&b));
    CHECK_OK(tha_heap_alloc(h, ref, 1, (void **)&r));
    *r = &b[12345];
    CHECK_OK(tha_heap_check_types(h));
    *r = NULL;
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_legit_heap_passes);
    RUN(test_wrong_struct_target);
    RUN(test_embedded_struct_accepted);
    RUN(test_void_and_byte_pointers);
    RUN(test_primitive_pointers);
    RUN(test_unchecked_pointers);
    RUN(test_debug_encode);
    RUN(test_lint_finds_forgotten_pointer);
    RUN(test_scalar_overlapping_pointer_refused);
    RUN(test_big_type_seals);
    return CHECK_DONE();
}

/* test_externs.c — issue 11 item 2: pointers from the heap to data outside
 * it that a program legitimately holds (a static TAILQ_HEAD, string
 * literals, a global sentinel) travel as data externs, by name and byte
 * offset, and resolve to the receiver's own bound object. A pointer
 * outside the heap that is no registered function or extern fails encode
 * naming the allocation, the field, the value and the fix; frames with
 * extern words the receiver cannot resolve are refused, nothing written.
 *
 * One process plays both sides: the active's statics (head_a, KEY_*_A)
 * and the standby's (head_b, KEY_*_B) are different objects at different
 * addresses, declared under the same names in two schemas. */
#include "tha.h"
#include "tha_internal.h"
#include "check.h"
#include "craft.h"
#include "ship.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

struct job {
    uint64_t id;
    const char *key;
    TAILQ_ENTRY(job) link;
};
TAILQ_HEAD(jobq, job);

static struct jobq head_a = TAILQ_HEAD_INITIALIZER(head_a);
static struct jobq head_b;
static const char KEY_ALPHA_A[] = "alpha", KEY_BETA_A[] = "beta";
static const char KEY_ALPHA_B[] = "alpha", KEY_BETA_B[] = "beta";
/* a string literal, as HASH_ADD_KEYPTR(..., "gamma", ...) would hold it */
static const char *const LIT_GAMMA = "gamma";
static char lit_gamma_b[] = "gamma";

static uint32_t JOB;

/* The schema of one side: the job type and three externs bound to that
 * side's objects (or declared unbound when bind is 0). */
static tha_schema_t *make_schema(int side, int bind) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct job, "job", &JOB));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, JOB, struct job, key, "char", 0));
    CHECK_OK(THA_FIELD_TAILQ_ENTRY(s, JOB, struct job, link, "job"));
    struct jobq *head = side == 0 ? &head_a : &head_b;
    CHECK_OK(tha_schema_add_extern(s, "jobs_head", sizeof *head, bind ? head : NULL));
    CHECK_OK(tha_schema_add_extern(s, "key_alpha", sizeof KEY_ALPHA_A,
                                   !bind ? NULL : side == 0 ? KEY_ALPHA_A : KEY_ALPHA_B));
    CHECK_OK(tha_schema_add_extern(s, "key_beta", sizeof KEY_BETA_A,
                                   !bind ? NULL : side == 0 ? KEY_BETA_A : KEY_BETA_B));
    CHECK_OK(tha_schema_add_extern(s, "key_gamma", strlen(LIT_GAMMA) + 1,
                                   !bind ? NULL : side == 0 ? (const void *)LIT_GAMMA
                                                            : lit_gamma_b));
    CHECK_OK(tha_schema_seal(s));
    JOB = tha_schema_type_id(s, JOB);
    return s;
}

static const char *key_of(int side, uint64_t i) {
    switch (i % 4) {
    case 0: return side == 0 ? KEY_ALPHA_A : KEY_ALPHA_B;
    case 1: return side == 0 ? KEY_BETA_A : KEY_BETA_B;
    case 2: return side == 0 ? LIT_GAMMA : lit_gamma_b;
    default: return (side == 0 ? KEY_ALPHA_A : KEY_ALPHA_B) + 2; /* "pha": inside */
    }
}

/* The standby's static head from the roots that follow the active's. */
static void fill_head_b(tha_heap_t *b) {
    void *f = NULL, *l = NULL;
    CHECK_OK(tha_root_get(b, "first", &f));
    CHECK_OK(tha_root_get(b, "last", &l));
    head_b.tqh_first = f;
    head_b.tqh_last = l;
}

/* head_b's queue holds head_a's jobs in order, both ways, with the
 * standby's keys; the first element points back at head_b itself. */
static void same_queue(void) {
    struct job *x, *y = TAILQ_FIRST(&head_b);
    CHECK(y != NULL && y->link.tqe_prev == &head_b.tqh_first);
    TAILQ_FOREACH(x, &head_a, link) {
        CHECK(y != NULL && y->id == x->id);
        if (!y) return;
        CHECK(strcmp(y->key, x->key) == 0);
        CHECK(y->key == key_of(1, y->id)); /* the standby's own object */
        y = TAILQ_NEXT(y, link);
    }
    CHECK(y == NULL);
    size_t n = 0;
    y = TAILQ_LAST(&head_b, jobq);
    TAILQ_FOREACH_REVERSE(x, &head_a, jobq, link) { /* ends through tqe_prev */
        CHECK(y != NULL && y->id == x->id);
        if (!y) return;
        y = TAILQ_PREV(y, jobq, link);
        n++;
    }
    CHECK(y == NULL);
    CHECK(n > 0);
}

static void test_static_tailq_head_mirrored(void) {
    tha_schema_t *sa = make_schema(0, 1), *sb = make_schema(1, 1);
    CHECK(tha_schema_fingerprint(sa) == tha_schema_fingerprint(sb));
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 8 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_heap_create(&b, sb, 8 << 20, THA_TRACK_DIFF));
    CHECK(tha_heap_base(a) != tha_heap_base(b));
    TAILQ_INIT(&head_a);
    for (uint64_t i = 0; i < 100; i++) {
        struct job *j;
        CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&j));
        j->id = i;
        j->key = key_of(0, i);
        if (i % 2) TAILQ_INSERT_TAIL(&head_a, j, link);
        else TAILQ_INSERT_HEAD(&head_a, j, link);
    }
    CHECK_OK(tha_root_bind(a, "first", (void *const *)&head_a.tqh_first));
    CHECK_OK(tha_root_bind(a, "last", (void *const *)&head_a.tqh_last));
    CHECK(TAILQ_FIRST(&head_a)->link.tqe_prev == &head_a.tqh_first);
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_heap_check(a));
    CHECK_OK(tha_heap_check(b));
    fill_head_b(b);
    same_queue();
    CHECK_OK(tha_heap_check_types(b)); /* extern targets are not the heap's */

    /* deltas: the first element removed (the second now points at the
     * head), new ones at the head, keys changed, plain writes (diff) */
    for (int round = 0; round < 3; round++) {
        /* freed after the frame: until then the bound root "first" holds it */
        struct job *first = TAILQ_FIRST(&head_a);
        TAILQ_REMOVE(&head_a, first, link);
        struct job *x;
        TAILQ_FOREACH(x, &head_a, link)
            if (x->id % 5 == (uint64_t)round) {
                x->id += 1001; /* another key class (1001 % 4 == 1) */
                x->key = key_of(0, x->id);
            }
        for (uint64_t i = 0; i < 3; i++) {
            struct job *j;
            CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&j));
            j->id = 1000 + (uint64_t)round * 10 + i;
            j->key = key_of(0, j->id);
            TAILQ_INSERT_HEAD(&head_a, j, link);
        }
        CHECK_OK(ship(a, b, THA_FRAME_DELTA));
        CHECK_OK(tha_heap_check(b));
        fill_head_b(b);
        same_queue();
        CHECK_OK(tha_heap_free(a, first));
    }
    CHECK_OK(ship(a, b, THA_FRAME_DELTA)); /* the last free */
    fill_head_b(b);
    same_queue();

    /* the other way: the standby (promoted) writes, its words to head_b
     * arrive as head_a on the old active */
    struct job *first = TAILQ_FIRST(&head_b);
    TAILQ_REMOVE(&head_b, first, link);
    CHECK_OK(tha_root_bind(a, "first", NULL));
    CHECK_OK(tha_root_bind(a, "last", NULL));
    CHECK_OK(tha_root_bind(b, "first", (void *const *)&head_b.tqh_first));
    CHECK_OK(tha_root_bind(b, "last", (void *const *)&head_b.tqh_last));
    CHECK_OK(tha_heap_frame_size(b, THA_FRAME_DELTA, &(size_t){0})); /* roots follow */
    CHECK_OK(tha_heap_free(b, first));
    CHECK_OK(ship(b, a, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(a));
    void *f;
    CHECK_OK(tha_root_get(a, "first", &f));
    CHECK(f != NULL && ((struct job *)f)->link.tqe_prev == &head_a.tqh_first);
    CHECK(((struct job *)f)->key == key_of(0, ((struct job *)f)->id));

    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* The receiver declares the externs but binds none: the snapshot is
 * refused naming the extern, the heap untouched; bound, it applies. */
static void test_unbound_extern_refused(void) {
    tha_schema_t *sa = make_schema(0, 1), *sb = make_schema(1, 0);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 8 << 20, THA_TRACK_EXPLICIT));
    TAILQ_INIT(&head_a);
    struct job *j;
    CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&j));
    j->id = 1;
    TAILQ_INSERT_HEAD(&head_a, j, link); /* tqe_prev = &head_a.tqh_first */
    CHECK_OK(tha_root_set(a, "first", j));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_SNAPSHOT, &n));
    uint8_t *f = malloc(n);
    CHECK_OK(tha_heap_encode(a, THA_FRAME_SNAPSHOT, f, n, &len));
    tha_stats_t st0, st;
    CHECK_OK(tha_heap_stats(b, &st0));
    CHECK_RC(tha_heap_apply(b, f, len), THA_ERANGE);
    CHECK_CONTAINS(tha_heap_errmsg(b), "extern 'jobs_head'");
    CHECK_CONTAINS(tha_heap_errmsg(b), "not bound");
    CHECK_OK(tha_heap_stats(b, &st));
    CHECK(st.seq == st0.seq && st.live_objects == 0 && st.lineage == st0.lineage);
    CHECK_OK(tha_schema_bind_extern(sb, "jobs_head", &head_b));
    CHECK_OK(tha_heap_apply(b, f, len));
    CHECK_OK(tha_heap_check(b));
    void *r;
    CHECK_OK(tha_root_get(b, "first", &r));
    CHECK(((struct job *)r)->link.tqe_prev == &head_b.tqh_first);
    /* unbinding it makes the heap check refuse the word it resolved */
    CHECK_OK(tha_schema_bind_extern(sb, "jobs_head", NULL));
    CHECK_RC(tha_heap_check(b), THA_ECORRUPT);
    CHECK_CONTAINS(tha_heap_errmsg(b), "outside the heap");
    CHECK_OK(tha_schema_bind_extern(sb, "jobs_head", &head_b));
    CHECK_OK(tha_heap_check(b));
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* Hand-made extern words: an offset past the extern's size, an id past
 * the registry, an unknown class. Each refused naming what is wrong, the
 * heap byte for byte as it was; the honest frame still applies. */
static void test_crafted_extern_words(void) {
    tha_schema_t *sa = make_schema(0, 1), *sb = make_schema(1, 1);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 8 << 20, THA_TRACK_EXPLICIT));
    struct job *j;
    CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&j));
    CHECK_OK(tha_root_set(a, "j", j));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    j->key = KEY_BETA_A + 1; /* extern key_beta (id 2 by name), offset 1 */
    CHECK_OK(tha_heap_touch(a, j, 0));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_DELTA, &n));
    uint8_t *f = malloc(n);
    CHECK_OK(tha_heap_encode(a, THA_FRAME_DELTA, f, n, &len));
    uint64_t off = (uint64_t)((uint8_t *)&j->key - (uint8_t *)tha_heap_base(a));
    uint8_t *w = in_frame(f, off);
    CHECK(w != NULL);
    if (!w) return;
    uint64_t honest;
    memcpy(&honest, w, 8);
    CHECK(honest == (THA__WIRE_EXTERN | 2ull << THA__EXTERN_ID_SHIFT | 1));
    const struct {
        uint64_t word;
        const char *want;
    } bad[] = {
        {THA__WIRE_EXTERN | 2ull << THA__EXTERN_ID_SHIFT | sizeof KEY_BETA_A, "past"},
        {THA__WIRE_EXTERN | 2ull << THA__EXTERN_ID_SHIFT | 1ull << 39, "key_beta"},
        {THA__WIRE_EXTERN | 4ull << THA__EXTERN_ID_SHIFT, "extern id 4"},
        {THA__WIRE_EXTERN | 0xffffull << THA__EXTERN_ID_SHIFT, "out of range"},
        {THA__FUNC_TAG | 0x7full << 56, "no known class"},
        {THA__FUNC_TAG | 5ull << 56 | 1, "no known class"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(w, &bad[i].word, 8);
        reseal(f, len);
        tha_stats_t before, after;
        CHECK_OK(tha_heap_stats(b, &before));
        uint64_t top = before.top;
        uint8_t *img = malloc(top);
        memcpy(img, tha_heap_base(b), top);
        CHECK_RC(tha_heap_apply(b, f, len), THA_ERANGE);
        CHECK_CONTAINS(tha_heap_errmsg(b), bad[i].want);
        CHECK_CONTAINS(tha_heap_errmsg(b), "delta seq");
        CHECK_OK(tha_heap_stats(b, &after));
        CHECK(after.seq == before.seq && memcmp(img, tha_heap_base(b), top) == 0);
        free(img);
    }
    memcpy(w, &honest, 8);
    reseal(f, len);
    CHECK_OK(tha_heap_apply(b, f, len));
    CHECK_OK(tha_heap_check(b));
    void *r;
    CHECK_OK(tha_root_get(b, "j", &r));
    CHECK(((struct job *)r)->key == KEY_BETA_B + 1);
    free(f);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* A pointer outside the heap that nothing registers: encode fails naming
 * the allocation, the field, the value and the fix, changes nothing, and
 * the next encode after the field is cleared carries the change. */
static void test_foreign_pointer_message(void) {
    static uint64_t unregistered[4];
    tha_schema_t *sa = make_schema(0, 1);
    tha_heap_t *a;
    CHECK_OK(tha_heap_create(&a, sa, 8 << 20, THA_TRACK_EXPLICIT));
    struct job *j;
    CHECK_OK(tha_heap_alloc(a, JOB, 3, (void **)&j));
    CHECK_OK(tha_root_set(a, "j", j));
    j[2].link.tqe_prev = (struct job **)&unregistered[1];
    CHECK_OK(tha_heap_touch(a, j, 0));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_DELTA, &n));
    uint8_t *f = malloc(n);
    tha_stats_t before, after;
    CHECK_OK(tha_heap_stats(a, &before));
    CHECK_RC(tha_heap_encode(a, THA_FRAME_DELTA, f, n, &len), THA_EFOREIGN);
    const char *m = tha_heap_errmsg(a);
    char val[32], obj[32];
    snprintf(val, sizeof val, "0x%llx", (unsigned long long)(uintptr_t)&unregistered[1]);
    snprintf(obj, sizeof obj, "0x%llx",
             (unsigned long long)((uint8_t *)j - (uint8_t *)tha_heap_base(a)));
    CHECK_CONTAINS(m, "struct job field link_tqe_prev");
    CHECK_CONTAINS(m, val);
    CHECK_CONTAINS(m, obj);
    CHECK_CONTAINS(m, "element 2");
    CHECK_CONTAINS(m, "tha_schema_add_extern");
    CHECK_CONTAINS(m, "clear the field");
    CHECK_OK(tha_heap_stats(a, &after));
    CHECK(after.seq == before.seq && after.dirty_blocks == before.dirty_blocks);
    j[2].link.tqe_prev = NULL;
    CHECK_OK(tha_heap_encode(a, THA_FRAME_DELTA, f, n, &len));
    free(f);
    tha_heap_destroy(a);
    tha_schema_release(sa);
}

/* Registration: validation, canonical order by name, introspection,
 * overlapping ranges, binding before and after seal. */
static void test_extern_registry(void) {
    static uint64_t g1[4], g2[2];
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_RC(tha_schema_add_extern(s, "zero", 0, g1), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "zero");
    CHECK_RC(tha_schema_add_extern(s, "bad name", 8, NULL), THA_EINVAL);
    CHECK_RC(tha_schema_add_extern(s, "huge", (size_t)THA_EXTERN_MAX_SIZE + 1, NULL),
             THA_EINVAL);
    tha_schema_clear_add_error(s);
    CHECK_OK(THA_EXTERN(s, "zeta", g1));
    CHECK_OK(tha_schema_add_extern(s, "alpha", sizeof g2, NULL));
    CHECK_RC(tha_schema_add_extern(s, "zeta", 8, NULL), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "already declared");
    CHECK_RC(tha_schema_add_extern(s, "inside", 8, &g1[2]), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "overlaps extern 'zeta'");
    CHECK_RC(tha_schema_bind_extern(s, "nope", g2), THA_ENOTFOUND);
    tha_schema_clear_add_error(s);
    CHECK_OK(tha_schema_seal(s));
    CHECK_RC(tha_schema_add_extern(s, "late", 8, NULL), THA_ESTATE);
    CHECK(tha_schema_extern_count(s) == 2);
    const char *name;
    size_t size;
    const void *addr;
    CHECK_OK(tha_schema_extern_info(s, 0, &name, &size, &addr));
    CHECK(strcmp(name, "alpha") == 0 && size == sizeof g2 && addr == NULL);
    CHECK_OK(tha_schema_extern_info(s, 1, &name, &size, &addr));
    CHECK(strcmp(name, "zeta") == 0 && size == sizeof g1 && addr == g1);
    CHECK_RC(tha_schema_extern_info(s, 2, &name, &size, &addr), THA_ENOTFOUND);
    /* after seal: bind, overlap, rebind, unbind */
    CHECK_RC(tha_schema_bind_extern(s, "alpha", &g1[3]), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "overlaps extern 'zeta'");
    CHECK_OK(tha_schema_bind_extern(s, "alpha", g2));
    CHECK_OK(tha_schema_extern_info(s, 0, NULL, NULL, &addr));
    CHECK(addr == g2);
    CHECK_OK(tha_schema_bind_extern(s, "zeta", NULL));
    CHECK_OK(tha_schema_bind_extern(s, "alpha", g1)); /* free now */
    CHECK_OK(tha_schema_bind_extern(s, "zeta", g2));
    tha_schema_release(s);
}

/* The byte form carries externs (name, size; addresses stay behind), the
 * fingerprint covers them, compare names the one that differs; a schema
 * without externs keeps the byte form (format 1) it always had. */
static void test_extern_schema_bytes(void) {
    tha_schema_t *sa = make_schema(0, 1);
    size_t n;
    CHECK_OK(tha_schema_serialize(sa, NULL, 0, &n));
    uint8_t *buf = malloc(n);
    CHECK_OK(tha_schema_serialize(sa, buf, n, &n));
    uint32_t version;
    memcpy(&version, buf + 4, 4);
    CHECK(version == 2);
    tha_schema_t *back;
    char msg[256];
    CHECK_OK(tha_schema_deserialize(buf, n, &back, msg, sizeof msg));
    CHECK(tha_schema_fingerprint(back) == tha_schema_fingerprint(sa));
    CHECK_OK(tha_schema_compare(sa, back, msg, sizeof msg));
    CHECK(tha_schema_extern_count(back) == 4);
    const char *name;
    size_t size;
    const void *addr = &n;
    CHECK_OK(tha_schema_extern_info(back, 1, &name, &size, &addr));
    CHECK(strcmp(name, "key_alpha") == 0 && size == sizeof KEY_ALPHA_A && addr == NULL);
    /* a truncated or trailing blob is refused, with a message */
    tha_schema_t *bad = NULL;
    CHECK(tha_schema_deserialize(buf, n - 3, &bad, msg, sizeof msg) != 0 && !bad);
    CHECK(msg[0] != 0);
    free(buf);

    /* one extern's size differs; one side lacks one; a name differs */
    for (int k = 0; k < 3; k++) {
        tha_schema_t *o;
        CHECK_OK(tha_schema_create(&o));
        uint32_t id;
        CHECK_OK(THA_STRUCT(o, struct job, "job", &id));
        CHECK_OK(THA_FIELD_SCALAR(o, id, struct job, id, THA_T_U64, 0));
        CHECK_OK(THA_FIELD_PTR(o, id, struct job, key, "char", 0));
        CHECK_OK(THA_FIELD_TAILQ_ENTRY(o, id, struct job, link, "job"));
        CHECK_OK(tha_schema_add_extern(o, "jobs_head", k == 0 ? 24 : 16, NULL));
        CHECK_OK(tha_schema_add_extern(o, "key_alpha", 6, NULL));
        CHECK_OK(tha_schema_add_extern(o, "key_beta", 5, NULL));
        if (k != 1) CHECK_OK(tha_schema_add_extern(o, k == 2 ? "key_omega" : "key_gamma", 6, NULL));
        CHECK_OK(tha_schema_seal(o));
        CHECK(tha_schema_fingerprint(o) != tha_schema_fingerprint(sa));
        CHECK_RC(tha_schema_compare(sa, o, msg, sizeof msg), THA_EMISMATCH);
        CHECK_CONTAINS(msg, k == 0 ? "extern 'jobs_head': size 16 vs 24"
                            : k == 1 ? "only one side has extern 3 'key_gamma'"
                                     : "extern 3: 'key_gamma' vs 'key_omega'");
        tha_schema_release(o);
    }

    tha_schema_t *plain;
    CHECK_OK(tha_schema_create(&plain));
    uint32_t id;
    CHECK_OK(THA_STRUCT(plain, struct job, "job", &id));
    CHECK_OK(THA_FIELD_SCALAR(plain, id, struct job, id, THA_T_U64, 0));
    CHECK_OK(tha_schema_seal(plain));
    CHECK_OK(tha_schema_serialize(plain, NULL, 0, &n));
    buf = malloc(n);
    CHECK_OK(tha_schema_serialize(plain, buf, n, &n));
    memcpy(&version, buf + 4, 4);
    CHECK(version == 1);
    free(buf);
    tha_schema_release(plain);
    tha_schema_release(back);
    tha_schema_release(sa);
}

/* A global sentinel node (a struct outside the heap every list ends at):
 * pointers to it and into it travel, the receiver's sentinel is theirs. */
struct node {
    uint64_t v;
    struct node *next;
};
static struct node sentinel_a = {.v = 0xdead}, sentinel_b = {.v = 0xbeef};

static void test_global_sentinel(void) {
    tha_schema_t *ss[2];
    for (int side = 0; side < 2; side++) {
        uint32_t id;
        CHECK_OK(tha_schema_create(&ss[side]));
        CHECK_OK(THA_STRUCT(ss[side], struct node, "node", &id));
        CHECK_OK(THA_FIELD_SCALAR(ss[side], id, struct node, v, THA_T_U64, 0));
        CHECK_OK(THA_FIELD_PTR(ss[side], id, struct node, next, "node", 0));
        CHECK_OK(side ? THA_EXTERN(ss[side], "sentinel", sentinel_b)
                      : THA_EXTERN(ss[side], "sentinel", sentinel_a));
        CHECK_OK(tha_schema_seal(ss[side]));
    }
    uint32_t NODE;
    CHECK_OK(tha_schema_type_by_name(ss[0], "node", &NODE));
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, ss[0], 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, ss[1], 4 << 20, THA_TRACK_EXPLICIT));
    struct node *list = &sentinel_a;
    for (int i = 0; i < 10; i++) {
        struct node *x;
        CHECK_OK(tha_heap_alloc(a, NODE, 1, (void **)&x));
        x->v = (uint64_t)i;
        x->next = list;
        list = x;
    }
    CHECK_OK(tha_root_set(a, "list", list));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_heap_check(b));
    void *r;
    CHECK_OK(tha_root_get(b, "list", &r));
    int n = 0;
    struct node *x = r;
    for (; x != &sentinel_b && n < 20; x = x->next) n++;
    CHECK(n == 10 && x == &sentinel_b && x->v == 0xbeef);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(ss[0]);
    tha_schema_release(ss[1]);
}

/* Statics by value (tha_heap_mirror_extern): the static head's own bytes
 * travel, so the receiver's static head is ready to walk after each apply,
 * empty (tqh_last pointing at itself) or not; no roots, no fill. */
static struct jobq by_value_a = TAILQ_HEAD_INITIALIZER(by_value_a);
static struct jobq by_value_b = TAILQ_HEAD_INITIALIZER(by_value_b);
static uint32_t JOBQ;

static tha_schema_t *by_value_schema(struct jobq *head) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct job, "job", &JOB));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, JOB, struct job, key, "char", 0));
    CHECK_OK(THA_FIELD_TAILQ_ENTRY(s, JOB, struct job, link, "job"));
    CHECK_OK(THA_STRUCT(s, struct jobq, "jobq", &JOBQ));
    CHECK_OK(THA_FIELD_PTR(s, JOBQ, struct jobq, tqh_first, "job", 0));
    CHECK_OK(THA_FIELD_PTR(s, JOBQ, struct jobq, tqh_last, "void", 0));
    CHECK_OK(tha_schema_add_extern(s, "jobs", sizeof *head, head));
    CHECK_OK(tha_schema_seal(s));
    JOB = tha_schema_type_id(s, JOB);
    JOBQ = tha_schema_type_id(s, JOBQ);
    return s;
}

static uint64_t sum_ids(struct jobq *q, int reverse) {
    uint64_t sum = 0, k = 1;
    struct job *j;
    if (reverse) TAILQ_FOREACH_REVERSE(j, q, jobq, link) sum += j->id * k++;
    else TAILQ_FOREACH(j, q, link) sum += j->id * k++;
    return sum;
}

static void test_static_head_by_value(void) {
    tha_schema_t *sa = by_value_schema(&by_value_a), *sb = by_value_schema(&by_value_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 8 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_heap_create(&b, sb, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_RC(tha_heap_mirror_extern(a, "nope", JOBQ), THA_ENOTFOUND);
    CHECK_RC(tha_heap_mirror_extern(a, "jobs", JOB), THA_ESCHEMA); /* 32 vs 16 bytes */
    CHECK_CONTAINS(tha_heap_errmsg(a), "the extern is 16 bytes");
    CHECK_OK(tha_heap_mirror_extern(a, "jobs", JOBQ));
    CHECK_OK(tha_heap_mirror_extern(b, "jobs", JOBQ));
    by_value_b.tqh_first = (struct job *)&by_value_b; /* garbage: the apply overwrites */
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK(TAILQ_EMPTY(&by_value_b) && by_value_b.tqh_last == &by_value_b.tqh_first);
    struct job *js[4];
    for (int i = 0; i < 4; i++) {
        CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&js[i]));
        js[i]->id = 10 + (uint64_t)i;
        TAILQ_INSERT_TAIL(&by_value_a, js[i], link);
    }
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(sum_ids(&by_value_b, 0) == sum_ids(&by_value_a, 0));
    CHECK(sum_ids(&by_value_b, 1) == sum_ids(&by_value_a, 1));
    CHECK(TAILQ_FIRST(&by_value_b)->link.tqe_prev == &by_value_b.tqh_first);
    CHECK((void *)TAILQ_FIRST(&by_value_b) != (void *)js[0]); /* rebased */
    CHECK_OK(tha_heap_check(b));
    TAILQ_REMOVE(&by_value_a, js[0], link); /* the head moves: plain C */
    TAILQ_REMOVE(&by_value_a, js[3], link);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(sum_ids(&by_value_b, 0) == 11 + 2 * 12);
    CHECK(sum_ids(&by_value_b, 1) == 12 + 2 * 11);
    TAILQ_REMOVE(&by_value_a, js[1], link);
    TAILQ_REMOVE(&by_value_a, js[2], link);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(TAILQ_EMPTY(&by_value_b) && by_value_b.tqh_last == &by_value_b.tqh_first);
    /* an unbound extern stops the frame, naming it; nothing changes */
    CHECK_OK(tha_schema_bind_extern(sa, "jobs", NULL));
    size_t n;
    CHECK_RC(tha_heap_frame_size(a, THA_FRAME_DELTA, &n), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(a), "static 'jobs' is mirrored");
    CHECK_OK(tha_schema_bind_extern(sa, "jobs", &by_value_a));
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

int main(void) {
    RUN(test_static_head_by_value);
    RUN(test_static_tailq_head_mirrored);
    RUN(test_unbound_extern_refused);
    RUN(test_crafted_extern_words);
    RUN(test_foreign_pointer_message);
    RUN(test_extern_registry);
    RUN(test_extern_schema_bytes);
    RUN(test_global_sentinel);
    return CHECK_DONE();
}

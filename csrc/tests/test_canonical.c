/* test_canonical.c — one canonical schema: the same structs registered in any
 * order, with any spelling of the same primitive or signature, give the same
 * serialized bytes, type ids and fingerprint; ids handed out before seal keep
 * working; heaps built from differently ordered registrations mirror each
 * other. */
#include "check.h"
#include "ship.h"
#include "tha.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* engineer < ll_node < manager < skill alphabetically, but engineer holds
 * skills by value and manager holds an engineer and a union by value: the
 * dependency order is not the alphabetical one. */
struct engineer;
struct manager;
struct skill {
    char tag[8];
    uint16_t years;
};
union pay {
    uint64_t cents;
    double ratio;
    uint8_t raw[8];
};
struct engineer {
    char name[24];
    uint32_t level;
    struct manager *boss;
    struct skill skills[3];
    unsigned char *badge;
    int (*rate)(int, char *);
    uint32_t *hours;
};
struct ll_node {
    uint32_t key;
    struct ll_node *next;
    struct engineer *owner;
    void (*visit)(void);
};
struct manager {
    struct engineer self;
    struct engineer *reports[4];
    union pay pay;
    double budget;
    uint16_t grid[2][3];
};

static void visit_fn(void) {}
static int rate_fn(int a, char *b) { return a + (b != NULL); }
static void spare_fn(void) {}

enum { SKILL, PAY, ENGINEER, LL_NODE, MANAGER, NTYPES };
static const char *const tnames[NTYPES] = {"skill", "pay", "engineer",
                                           "ll_node", "manager"};

/* Registers type k; variant picks one of two spellings of each alias. */
static void reg_type(tha_schema_t *s, int k, int variant, uint32_t *ids) {
    uint32_t *id = &ids[k];
    switch (k) {
    case SKILL:
        CHECK_OK(THA_STRUCT(s, struct skill, "skill", id));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct skill, tag, THA_T_CHAR, 8));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct skill, years, THA_T_U16, 0));
        break;
    case PAY:
        CHECK_OK(tha_schema_add_struct(s, "pay", sizeof(union pay),
                                       _Alignof(union pay), 1, id));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, union pay, cents, THA_T_U64, 0));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, union pay, ratio, THA_T_F64, 0));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, union pay, raw, THA_T_U8, 8));
        break;
    case ENGINEER: {
        CHECK_OK(THA_STRUCT(s, struct engineer, "engineer", id));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct engineer, name, THA_T_CHAR, 24));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct engineer, level, THA_T_U32, 0));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct engineer, boss,
                               variant ? "struct manager" : "manager", 0));
        CHECK_OK(THA_FIELD_STRUCT(s, *id, struct engineer, skills, "skill", 3));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct engineer, badge,
                               variant ? "unsigned char" : "uint8_t", 0));
        tha_field_t f = {.name = "rate",
                         .offset = offsetof(struct engineer, rate),
                         .kind = THA_K_FUNC,
                         .sig = variant ? "int (*) (int,char*)"
                                        : "int(*)(int, char *)"};
        CHECK_OK(tha_schema_add_field(s, *id, &f));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct engineer, hours,
                               variant ? "unsigned int" : "uint32_t", 0));
        break;
    }
    case LL_NODE:
        CHECK_OK(THA_STRUCT(s, struct ll_node, "ll_node", id));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct ll_node, key, THA_T_U32, 0));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct ll_node, next, "ll_node", 0));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct ll_node, owner, "engineer", 0));
        CHECK_OK(THA_FIELD_FUNC(s, *id, struct ll_node, visit, 0));
        break;
    case MANAGER: {
        CHECK_OK(THA_STRUCT(s, struct manager, "manager", id));
        CHECK_OK(THA_FIELD_STRUCT(s, *id, struct manager, self, "engineer", 0));
        CHECK_OK(THA_FIELD_PTR(s, *id, struct manager, reports, "engineer", 4));
        CHECK_OK(THA_FIELD_STRUCT(s, *id, struct manager, pay,
                                  variant ? "union pay" : "pay", 0));
        CHECK_OK(THA_FIELD_SCALAR(s, *id, struct manager, budget, THA_T_F64, 0));
        tha_field_t g = {.name = "grid",
                         .offset = offsetof(struct manager, grid),
                         .kind = THA_K_SCALAR,
                         .prim = THA_T_U16,
                         .dims = {2, 3}};
        CHECK_OK(tha_schema_add_field(s, *id, &g));
        break;
    }
    }
}

/* order: NTYPES type indexes; funcs_rev: declare functions in reverse. */
static tha_schema_t *make(const int *order, int variant, int funcs_rev,
                          uint32_t *ids) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    for (int i = 0; i < NTYPES; i++)
        reg_type(s, order[i], variant, ids);
    static const char *const fnames[3] = {"visit", "rate", "spare"};
    void (*const fns[3])(void) = {visit_fn, (void (*)(void))rate_fn, spare_fn};
    for (int i = 0; i < 3; i++) {
        int j = funcs_rev ? 2 - i : i;
        CHECK_OK(tha_schema_add_func(s, fnames[j], fns[j]));
    }
    int rc = tha_schema_seal(s);
    CHECK_OK(rc);
    if (rc)
        fprintf(stderr, "seal: %s\n", tha_schema_errmsg(s));
    return s;
}

static uint8_t *blob(const tha_schema_t *s, size_t *len) {
    CHECK_OK(tha_schema_serialize(s, NULL, 0, len));
    uint8_t *b = malloc(*len);
    CHECK_OK(tha_schema_serialize(s, b, *len, len));
    return b;
}

static const int orders[][NTYPES] = {
    {ENGINEER, LL_NODE, MANAGER, PAY, SKILL},   /* alphabetical (structs) */
    {SKILL, PAY, MANAGER, LL_NODE, ENGINEER},   /* reverse */
    {LL_NODE, ENGINEER, MANAGER, SKILL, PAY},   /* the order */
    {PAY, SKILL, ENGINEER, MANAGER, LL_NODE},   /* dependencies first */
};
#define NORDERS (int)(sizeof orders / sizeof orders[0])

static void test_orders_same_bytes(void) {
    uint32_t ids0[NTYPES];
    tha_schema_t *ref = make(orders[0], 0, 0, ids0);
    size_t rlen;
    uint8_t *rb = blob(ref, &rlen);
    /* canonical ids: structs by name, then unions by name */
    static const char *const canon[] = {"engineer", "ll_node", "manager",
                                        "skill", "pay"};
    for (uint32_t i = 0; i < 5; i++) {
        uint32_t id = 0;
        CHECK_OK(tha_schema_type_by_name(ref, canon[i], &id));
        CHECK(id == THA_T_FIRST_USER + i);
    }
    for (int o = 0; o < NORDERS; o++)
        for (int variant = 0; variant < 2; variant++) {
            uint32_t ids[NTYPES];
            tha_schema_t *s = make(orders[o], variant, (o + variant) & 1, ids);
            size_t len;
            uint8_t *b = blob(s, &len);
            CHECK(len == rlen && memcmp(b, rb, len) == 0);
            CHECK(tha_schema_fingerprint(s) == tha_schema_fingerprint(ref));
            char msg[256];
            CHECK_OK(tha_schema_compare(s, ref, msg, sizeof msg));
            for (int k = 0; k < NTYPES; k++) {
                uint32_t id = 0, rid = 0;
                CHECK_OK(tha_schema_type_by_name(s, tnames[k], &id));
                CHECK_OK(tha_schema_type_by_name(ref, tnames[k], &rid));
                CHECK(id == rid);
                /* the id add_struct handed out still names the type */
                tha_type_info_t ti;
                CHECK_OK(tha_schema_type_info(s, ids[k], &ti));
                CHECK(ti.id == id && strcmp(ti.name, tnames[k]) == 0);
                CHECK(tha_schema_type_id(s, ids[k]) == id);
                CHECK(tha_schema_type_id(s, id) == id);
                tha_field_t f;
                CHECK_OK(tha_schema_field_info(s, ids[k], 0, &f));
            }
            /* functions by name: rate, spare, visit */
            const char *fn;
            CHECK_OK(tha_schema_func_info(s, 0, &fn, NULL));
            CHECK(strcmp(fn, "rate") == 0);
            CHECK_OK(tha_schema_func_info(s, 2, &fn, NULL));
            CHECK(strcmp(fn, "visit") == 0);
            /* spellings are stored canonically */
            uint32_t eng;
            CHECK_OK(tha_schema_type_by_name(s, "engineer", &eng));
            tha_field_t f;
            CHECK_OK(tha_schema_field_info(s, eng, 4, &f));
            CHECK(strcmp(f.target, "uint8_t") == 0);
            CHECK_OK(tha_schema_field_info(s, eng, 5, &f));
            CHECK(strcmp(f.sig, "int(*)(int,char*)") == 0);
            CHECK_OK(tha_schema_field_info(s, eng, 6, &f));
            CHECK(strcmp(f.target, "uint32_t") == 0);
            /* the byte form reads back to the same schema */
            tha_schema_t *r;
            char m2[256];
            CHECK_OK(tha_schema_deserialize(b, len, &r, m2, sizeof m2));
            CHECK(tha_schema_fingerprint(r) == tha_schema_fingerprint(ref));
            tha_schema_release(r);
            free(b);
            tha_schema_release(s);
        }
    free(rb);
    tha_schema_release(ref);
}

static void test_handles(void) {
    tha_schema_t *s;
    uint32_t a, b;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct skill, "zz", &a));
    CHECK_OK(THA_STRUCT(s, struct skill, "aa", &b));
    CHECK(a != b && a >= THA_T_HANDLE && b >= THA_T_HANDLE);
    CHECK(tha_schema_type_id(s, a) == 0); /* no canonical id before seal */
    /* before seal a plain id is not a user type (on a schema of its own:
     * a failed add makes its schema refuse to seal) */
    tha_field_t f = {.name = "x", .offset = 0, .kind = THA_K_SCALAR,
                     .prim = THA_T_CHAR};
    tha_schema_t *t;
    uint32_t ta;
    CHECK_OK(tha_schema_create(&t));
    CHECK_OK(THA_STRUCT(t, struct skill, "zz", &ta));
    CHECK_RC(tha_schema_add_field(t, THA_T_FIRST_USER, &f), THA_ENOTFOUND);
    CHECK_CONTAINS(tha_schema_errmsg(t), "tha_schema_add_struct");
    CHECK_RC(tha_schema_seal(t), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(t), "an earlier add failed");
    CHECK_CONTAINS(tha_schema_errmsg(t), "tha_schema_add_struct");
    tha_schema_release(t);
    CHECK_OK(tha_schema_add_field(s, a, &f));
    CHECK_OK(tha_schema_add_field(s, b, &f));
    CHECK_OK(tha_schema_seal(s));
    CHECK(tha_schema_type_id(s, b) == THA_T_FIRST_USER);
    CHECK(tha_schema_type_id(s, a) == THA_T_FIRST_USER + 1);
    CHECK(tha_schema_type_id(s, THA_T_HANDLE + 7) == 0);
    CHECK(tha_schema_type_id(s, THA_T_U32) == THA_T_U32);
    tha_type_info_t ti;
    CHECK_RC(tha_schema_type_info(s, THA_T_HANDLE + 7, &ti), THA_ENOTFOUND);
    tha_schema_release(s);

    /* a seal that fails (unregistered target) reorders nothing the caller
     * holds: the handles still work for a fix and a second seal */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ll_node, "ll_node", &a));
    CHECK_OK(THA_FIELD_PTR(s, a, struct ll_node, owner, "engineer", 0));
    CHECK_OK(THA_STRUCT(s, struct skill, "skill", &b));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "ll_node field owner");
    uint32_t e;
    CHECK_OK(tha_schema_add_struct(s, "engineer", sizeof(struct engineer),
                                   _Alignof(struct engineer), 0, &e));
    CHECK_OK(THA_FIELD_SCALAR(s, b, struct skill, years, THA_T_U16, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, e, struct engineer, level, THA_T_U32, 0));
    CHECK_OK(tha_schema_seal(s));
    CHECK(tha_schema_type_id(s, e) == THA_T_FIRST_USER);
    CHECK(tha_schema_type_id(s, a) == THA_T_FIRST_USER + 1);
    CHECK(tha_schema_type_id(s, b) == THA_T_FIRST_USER + 2);
    tha_field_t got;
    CHECK_OK(tha_schema_field_info(s, b, 0, &got));
    CHECK(strcmp(got.name, "years") == 0);
    tha_schema_release(s);
}

static uint64_t off(tha_heap_t *h, const void *p) {
    return p ? (uint64_t)((const char *)p - (const char *)tha_heap_base(h)) : 0;
}

/* Same objects, same types, same bytes with pointers compared as offsets. */
static bool same_heaps(tha_heap_t *a, tha_heap_t *b) {
    uint64_t ca = 0, cb = 0;
    tha_obj_t oa, ob;
    const tha_schema_t *sb = tha_heap_schema(b);
    uint32_t eng_b = 0, ll_b = 0;
    CHECK_OK(tha_schema_type_by_name(sb, "engineer", &eng_b));
    CHECK_OK(tha_schema_type_by_name(sb, "ll_node", &ll_b));
    for (;;) {
        int ma = tha_heap_next(a, &ca, &oa), mb = tha_heap_next(b, &cb, &ob);
        if (ma != mb)
            return false;
        if (!ma)
            return true;
        if (oa.offset != ob.offset || oa.type_id != ob.type_id ||
            oa.count != ob.count || oa.size != ob.size)
            return false;
        if (ob.type_id == ll_b) {
            struct ll_node *x = oa.ptr, *y = ob.ptr;
            if (x->key != y->key || off(a, x->next) != off(b, y->next) ||
                off(a, x->owner) != off(b, y->owner) || x->visit != y->visit)
                return false;
        } else if (ob.type_id == eng_b) {
            struct engineer *x = oa.ptr, *y = ob.ptr;
            if (strcmp(x->name, y->name) || x->level != y->level ||
                off(a, x->boss) != off(b, y->boss) || x->rate != y->rate ||
                memcmp(x->skills, y->skills, sizeof x->skills))
                return false;
        }
    }
}

/* A heap of order A applies a snapshot and then a delta from order B. */
static void test_cross_order_apply(void) {
    uint32_t ia[NTYPES], ib[NTYPES];
    tha_schema_t *sa = make(orders[2], 0, 0, ia);
    tha_schema_t *sb = make(orders[1], 1, 1, ib);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, sa, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, sb, 4 << 20, THA_TRACK_EXPLICIT));
    struct engineer *e;
    struct manager *m;
    struct ll_node *n;
    CHECK_OK(tha_heap_alloc(a, ia[ENGINEER], 2, (void **)&e));
    CHECK_OK(tha_heap_alloc(a, ia[MANAGER], 1, (void **)&m));
    CHECK_OK(tha_heap_alloc(a, ia[LL_NODE], 3, (void **)&n));
    strcpy(e[0].name, "ada");
    strcpy(e[1].name, "bob");
    e[0].boss = e[1].boss = m;
    e[0].rate = rate_fn;
    strcpy(e[1].skills[2].tag, "c");
    m->reports[0] = &e[0];
    m->pay.ratio = 1.5;
    m->self.skills[0].years = 9;
    for (int i = 0; i < 3; i++) {
        n[i].key = (uint32_t)i;
        n[i].next = i < 2 ? &n[i + 1] : NULL;
        n[i].owner = &e[i % 2];
        n[i].visit = visit_fn;
    }
    CHECK_OK(tha_root_set(a, "list", n));
    /* the heap reports canonical ids, equal on both sides */
    tha_obj_t o;
    CHECK_OK(tha_heap_lookup(a, &n[1], &o));
    CHECK(o.type_id == tha_schema_type_id(sa, ia[LL_NODE]));
    CHECK(o.type_id == tha_schema_type_id(sb, ib[LL_NODE]));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK(same_heaps(a, b));
    CHECK_OK(tha_heap_check(b));
    /* b's own handles allocate the same types in the mirrored heap */
    n[2].key = 42;
    CHECK_OK(tha_heap_touch(a, &n[2], sizeof n[2]));
    struct engineer *e2;
    CHECK_OK(tha_heap_alloc(a, ia[ENGINEER], 1, (void **)&e2));
    n[2].owner = e2;
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(same_heaps(a, b));
    /* the other way round after a promotion */
    CHECK_OK(tha_heap_set_epoch(b, 2));
    struct ll_node *nb;
    CHECK_OK(tha_heap_alloc(b, ib[LL_NODE], 1, (void **)&nb));
    nb->key = 7;
    nb->visit = visit_fn;
    CHECK_OK(ship(b, a, THA_FRAME_SNAPSHOT));
    CHECK(same_heaps(b, a));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(sa);
    tha_schema_release(sb);
}

/* A blob whose types or functions are out of canonical order (an older
 * writer's registration order) is refused, naming the pair. */
static void put_u32(uint8_t **p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        *(*p)++ = (uint8_t)(v >> (8 * i));
}
static void put_str(uint8_t **p, const char *s) {
    size_t n = strlen(s);
    *(*p)++ = (uint8_t)n;
    *(*p)++ = 0;
    memcpy(*p, s, n);
    *p += n;
}
static size_t two_type_blob(uint8_t *buf, const char *t1, const char *t2,
                            const char *f1, const char *f2) {
    uint8_t *p = buf;
    put_u32(&p, 0x53414854u);
    put_u32(&p, 1);
    put_u32(&p, 2);
    put_u32(&p, 2);
    const char *ts[2] = {t1, t2};
    for (int i = 0; i < 2; i++) {
        put_str(&p, ts[i]);
        put_u32(&p, 0);           /* struct */
        put_u32(&p, 8), put_u32(&p, 0); /* size */
        put_u32(&p, 8), put_u32(&p, 0); /* align */
        put_u32(&p, 0);           /* fields */
    }
    put_str(&p, f1);
    put_str(&p, f2);
    return (size_t)(p - buf);
}

static void test_non_canonical_blob(void) {
    uint8_t buf[256];
    tha_schema_t *r;
    char msg[256];
    size_t n = two_type_blob(buf, "alpha", "beta", "f", "g");
    CHECK_OK(tha_schema_deserialize(buf, n, &r, msg, sizeof msg));
    tha_schema_release(r);
    n = two_type_blob(buf, "beta", "alpha", "f", "g");
    CHECK_RC(tha_schema_deserialize(buf, n, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "struct alpha after struct beta");
    n = two_type_blob(buf, "alpha", "beta", "g", "f");
    CHECK_RC(tha_schema_deserialize(buf, n, &r, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "function f after g");
}

/* Spellings that name nothing the schema knows are still refused. */
static void test_alias_errors(void) {
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    tha_schema_t *t;
    uint32_t tid;
    CHECK_OK(tha_schema_create(&t));
    CHECK_OK(THA_STRUCT(t, struct ll_node, "ll_node", &tid));
    CHECK_RC(THA_FIELD_PTR(t, tid, struct ll_node, next, "unsigned float", 0),
             THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(t), "unsigned float");
    CHECK_RC(tha_schema_seal(t), THA_ESCHEMA); /* the error was not forgotten */
    CHECK_CONTAINS(tha_schema_errmsg(t), "unsigned float");
    tha_schema_release(t);
    CHECK_OK(THA_STRUCT(s, struct ll_node, "ll_node", &id));
    CHECK_OK(THA_FIELD_PTR(s, id, struct ll_node, next, "  long   long ", 0));
    /* cffi prints "void(*)()" for void (*)(void): the same signature */
    tha_field_t v = {.name = "visit", .offset = offsetof(struct ll_node, visit),
                     .kind = THA_K_FUNC, .sig = "void (*) ( )"};
    CHECK_OK(tha_schema_add_field(s, id, &v));
    CHECK_OK(tha_schema_seal(s));
    tha_field_t f = {0};
    CHECK_OK(tha_schema_field_info(s, id, 0, &f));
    CHECK(f.target && strcmp(f.target, "int64_t") == 0);
    CHECK_OK(tha_schema_field_info(s, id, 1, &f));
    CHECK(f.sig && f.sig[0] == 0);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_orders_same_bytes);
    RUN(test_handles);
    RUN(test_cross_order_apply);
    RUN(test_non_canonical_blob);
    RUN(test_alias_errors);
    return CHECK_DONE();
}

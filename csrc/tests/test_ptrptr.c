/* test_ptrptr.c — pointer-to-pointer fields ("struct ent **", "char **"):
 * the implicit pointer types they target (registration, canonical names,
 * byte form, the shape rule seal enforces), and a chained hash table whose
 * bucket array is such an allocation: mirrored by snapshot and delta into
 * a heap at another address, checked, reached for leaks, type checked. */
#include "tha.h"
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ent {
    uint64_t key;
    struct ent *next;
};
struct table {
    uint32_t nbuckets;
    struct ent **buckets; /* an array of nbuckets chain heads */
    char **names;         /* an array of strings */
};

static uint32_t ENT, TABLE, ENTP, CHARP;

static tha_schema_t *make_schema(const char *buckets_target) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct table, "table", &TABLE));
    CHECK_OK(THA_FIELD_SCALAR(s, TABLE, struct table, nbuckets, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_PTR(s, TABLE, struct table, buckets, buckets_target, 0));
    CHECK_OK(THA_FIELD_PTR(s, TABLE, struct table, names, "char *", 0));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &ENT));
    CHECK_OK(THA_FIELD_SCALAR(s, ENT, struct ent, key, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, ENT, struct ent, next, "ent", 0));
    CHECK_OK(tha_schema_seal(s));
    ENT = tha_schema_type_id(s, ENT);
    TABLE = tha_schema_type_id(s, TABLE);
    CHECK_OK(tha_schema_type_by_name(s, "ent*", &ENTP));
    CHECK_OK(tha_schema_type_by_name(s, "char*", &CHARP));
    return s;
}

static void test_pointer_types_are_implicit_and_canonical(void) {
    tha_schema_t *a = make_schema("ent *"), *b = make_schema("struct  ent*");
    CHECK(tha_schema_fingerprint(a) == tha_schema_fingerprint(b));
    uint32_t id;
    CHECK_OK(tha_schema_type_by_name(a, "struct ent *", &id));
    CHECK(id == ENTP);
    CHECK_OK(tha_schema_type_by_name(a, "char *", &id));
    CHECK(id == CHARP);
    CHECK_RC(tha_schema_type_by_name(a, "union ent *", &id), THA_ENOTFOUND);
    CHECK_RC(tha_schema_type_by_name(a, "table *", &id), THA_ENOTFOUND); /* never used */
    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_info(a, ENTP, &ti));
    CHECK(strcmp(ti.name, "ent*") == 0 && ti.size == 8 && ti.align == 8);
    CHECK(ti.nfields == 1 && ti.nslots == 1 && !ti.is_union && !ti.is_prim);
    tha_field_t f;
    CHECK_OK(tha_schema_field_info(a, ENTP, 0, &f));
    CHECK(f.kind == THA_K_PTR && f.offset == 0 && strcmp(f.target, "ent") == 0);
    CHECK_OK(tha_schema_field_info(a, TABLE, 1, &f));
    CHECK(strcmp(f.name, "buckets") == 0 && strcmp(f.target, "ent*") == 0);
    /* three stars: each level is its own type */
    tha_schema_t *s;
    uint32_t t;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_OK(THA_FIELD_PTR(s, t, struct ent, next, "unsigned int ***", 0));
    CHECK_OK(tha_schema_seal(s));
    CHECK_OK(tha_schema_type_by_name(s, "uint32_t**", &id));
    CHECK_OK(tha_schema_type_by_name(s, "unsigned int *", &id));
    CHECK_OK(tha_schema_field_info(s, id, 0, &f));
    CHECK(strcmp(f.target, "uint32_t") == 0);
    tha_schema_release(s);
    /* the byte form carries them; read back, the same schema */
    size_t len;
    CHECK_OK(tha_schema_serialize(a, NULL, 0, &len));
    void *buf = malloc(len);
    CHECK_OK(tha_schema_serialize(a, buf, len, &len));
    char msg[200];
    CHECK_OK(tha_schema_deserialize(buf, len, &s, msg, sizeof msg));
    CHECK(tha_schema_fingerprint(s) == tha_schema_fingerprint(a));
    CHECK_OK(tha_schema_type_by_name(s, "ent*", &id));
    CHECK(id == ENTP);
    CHECK_OK(tha_schema_compare(a, s, msg, sizeof msg));
    tha_schema_release(s);
    free(buf);
    tha_schema_release(a);
    tha_schema_release(b);
}

static void test_pointer_type_rules(void) {
    tha_schema_t *s;
    uint32_t t, p;
    /* a type so named must be exactly the implicit one */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_OK(tha_schema_add_struct(s, "ent*", 16, 8, 0, &p));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK(strstr(tha_schema_errmsg(s), "implicit pointer type") != NULL);
    tha_schema_release(s);
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_OK(tha_schema_add_struct(s, "ent*", 8, 8, 0, &p));
    CHECK_OK(tha__add_field(s, p, "ptr", 0, THA_K_PTR, 0, "table", 0));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA); /* points at the wrong type */
    tha_schema_release(s);
    /* registered by hand in exactly that shape: the same as implicit */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_OK(tha_schema_add_struct(s, "ent*", 8, 8, 0, &p));
    CHECK_OK(tha__add_field(s, p, "ptr", 0, THA_K_PTR, 0, "ent", 0));
    CHECK_OK(THA_FIELD_PTR(s, t, struct ent, next, "ent*", 0));
    CHECK_OK(tha_schema_seal(s));
    tha_schema_release(s);
    /* names a star may not be in */
    CHECK_OK(tha_schema_create(&s));
    CHECK_RC(tha_schema_add_struct(s, "a*b", 8, 8, 0, &p), THA_EINVAL);
    CHECK_RC(tha_schema_add_struct(s, "*", 8, 8, 0, &p), THA_EINVAL);
    tha_schema_release(s);
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_RC(THA_FIELD_PTR(s, t, struct ent, next, "*", 0), THA_EINVAL);
    tha_schema_release(s);
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_RC(THA_FIELD_STRUCT(s, t, struct ent, next, "ent *", 0), THA_ESCHEMA);
    tha_schema_release(s);
    /* a pointer to a pointer to nothing registered: seal names it */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct ent, "ent", &t));
    CHECK_OK(THA_FIELD_PTR(s, t, struct ent, next, "ghost **", 0));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK(strstr(tha_schema_errmsg(s), "ghost") != NULL);
    tha_schema_release(s);
}

static void *alloc(tha_heap_t *h, uint32_t type, uint32_t n) {
    void *p = NULL;
    CHECK_OK(tha_heap_alloc(h, type, n, &p));
    return p;
}

static char *str(tha_heap_t *h, const char *text) {
    char *p = alloc(h, THA_T_CHAR, (uint32_t)strlen(text) + 1);
    memcpy(p, text, strlen(text) + 1);
    return p;
}

#define NB 64

static void insert(tha_heap_t *h, struct table *t, uint64_t key) {
    struct ent *e = alloc(h, ENT, 1);
    e->key = key;
    e->next = t->buckets[key % t->nbuckets];
    t->buckets[key % t->nbuckets] = e;
}

/* The sum of keys reached from the table, and how many. */
static uint64_t walk(const struct table *t, uint64_t *n) {
    uint64_t sum = 0;
    *n = 0;
    for (uint32_t i = 0; i < t->nbuckets; i++)
        for (const struct ent *e = t->buckets[i]; e; e = e->next) {
            CHECK(e->key % t->nbuckets == i);
            sum += e->key;
            ++*n;
        }
    return sum;
}

static void ship(tha_heap_t *from, tha_heap_t *to, int kind) {
    size_t size;
    CHECK_OK(tha_heap_frame_size(from, kind, &size));
    void *frame = malloc(size);
    CHECK_OK(tha_heap_encode(from, kind, frame, size, &size));
    CHECK_OK(tha_heap_apply(to, frame, size));
    free(frame);
}

static void test_hash_table_mirrors(void) {
    tha_schema_t *s = make_schema("ent *");
    tha_heap_t *h, *m;
    CHECK_OK(tha_heap_create(&h, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&m, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK(tha_heap_base(h) != tha_heap_base(m)); /* pointers must move */
    CHECK_OK(tha_heap_set_debug(h, THA_DEBUG_TYPES));
    struct table *t = alloc(h, TABLE, 1);
    t->nbuckets = NB;
    t->buckets = alloc(h, ENTP, NB);
    t->names = alloc(h, CHARP, 3);
    t->names[0] = str(h, "zero");
    t->names[2] = str(h, "two");
    for (uint64_t k = 1; k <= 1000; k++) insert(h, t, k);
    CHECK_OK(tha_root_set(h, "table", t));
    CHECK_OK(tha_heap_check(h));
    CHECK_OK(tha_heap_check_types(h));
    size_t nleaks = 9;
    CHECK_OK(tha_leaks(h, NULL, 0, &nleaks));
    CHECK(nleaks == 0); /* entries reached only through the bucket array */
    ship(h, m, THA_FRAME_SNAPSHOT);
    CHECK_OK(tha_heap_check(m));
    struct table *mt;
    CHECK_OK(tha_root_get(m, "table", (void **)&mt));
    uint64_t n, sum = walk(mt, &n);
    CHECK(n == 1000 && sum == 1000 * 1001 / 2);
    CHECK((char *)mt->buckets > (char *)tha_heap_base(m));
    CHECK(strcmp(mt->names[0], "zero") == 0 && !mt->names[1] &&
          strcmp(mt->names[2], "two") == 0);
    /* a delta: new chain heads written into the array */
    for (uint64_t k = 1001; k <= 1100; k++) {
        insert(h, t, k);
        CHECK_OK(tha_heap_touch(h, &t->buckets[k % NB], sizeof *t->buckets));
    }
    t->names[1] = str(h, "one");
    CHECK_OK(tha_heap_touch(h, &t->names[1], sizeof *t->names));
    ship(h, m, THA_FRAME_DELTA);
    CHECK_OK(tha_heap_check(m));
    sum = walk(mt, &n);
    CHECK(n == 1100 && sum == 1100 * 1101 / 2);
    CHECK(strcmp(mt->names[1], "one") == 0);
    /* dropped from the array: a leak */
    struct ent *gone = t->buckets[5];
    t->buckets[5] = gone->next;
    tha_leak_t l[2];
    CHECK_OK(tha_leaks(h, l, 2, &nleaks));
    CHECK(nleaks == 1 && l[0].type_id == ENT);
    /* a table stored where an entry belongs: the type check says so */
    t->buckets[5] = (struct ent *)t;
    CHECK_RC(tha_heap_check_types(h), THA_EMISMATCH);
    CHECK(strstr(tha_heap_errmsg(h), "ent") != NULL);
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_pointer_types_are_implicit_and_canonical);
    RUN(test_pointer_type_rules);
    RUN(test_hash_table_mirrors);
    return CHECK_DONE();
}

/* test_ptrptr_attack.c — pointer-to-pointer fields as real C programs use
 * them, and as a hostile peer might: a "struct node **" that points at a
 * pointer field inside another struct (the hlist pprev idiom: at the head's
 * first, at the previous node's next) is a pointer to a "node*" object and
 * passes the type check; one at a non-pointer word does not. */
#include "tha.h"
#include "check.h"
#include "craft.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct node {
    uint64_t key;
    struct node *next;
    struct node **pprev; /* &head.first or &prev->next */
};
struct head {
    struct node *first;
    void *any[2];
    void **pany; /* &any[1] */
    char *name;
    char **pname; /* &name */
};

static uint32_t NODE, HEAD;

static tha_schema_t *hlist_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct node, "node", &NODE));
    CHECK_OK(THA_FIELD_SCALAR(s, NODE, struct node, key, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, next, "node", 0));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, pprev, "struct node *", 0));
    CHECK_OK(THA_STRUCT(s, struct head, "head", &HEAD));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, first, "node", 0));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, any, "void", 2));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, pany, "void *", 0));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, name, "char", 0));
    CHECK_OK(THA_FIELD_PTR(s, HEAD, struct head, pname, "char *", 0));
    CHECK_OK(tha_schema_seal(s));
    NODE = tha_schema_type_id(s, NODE);
    HEAD = tha_schema_type_id(s, HEAD);
    return s;
}

static void *alloc(tha_heap_t *h, uint32_t type, uint32_t n) {
    void *p = NULL;
    CHECK_OK(tha_heap_alloc(h, type, n, &p));
    return p;
}

static void test_pointer_to_a_pointer_field_is_well_typed(void) {
    tha_schema_t *s = hlist_schema();
    tha_heap_t *h, *m;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&m, s, 1 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_set_debug(h, THA_DEBUG_TYPES));
    struct head *hd = alloc(h, HEAD, 1);
    struct node *a = alloc(h, NODE, 1), *b = alloc(h, NODE, 1);
    hd->first = a, a->pprev = &hd->first;
    a->next = b, b->pprev = &a->next;
    hd->any[1] = b, hd->pany = &hd->any[1];
    hd->name = alloc(h, THA_T_CHAR, 4), hd->pname = &hd->name;
    CHECK_OK(tha_root_set(h, "head", hd));
    CHECK_OK(tha_heap_check_types(h));
    CHECK_OK(tha_heap_check(h)); /* runs the type check too (debug flag) */
    size_t size;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &size));
    void *frame = malloc(size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, frame, size, &size));
    CHECK_OK(tha_heap_apply(m, frame, size));
    free(frame);
    CHECK_OK(tha_heap_check(m));
    CHECK_OK(tha_heap_check_types(m));
    struct head *mh = NULL;
    CHECK_OK(tha_root_get(m, "head", (void **)&mh));
    CHECK(mh && mh->first->pprev == &mh->first && mh->first->next->pprev == &mh->first->next);
    CHECK(mh && mh->pany == &mh->any[1] && mh->pname == &mh->name);
    /* not at a pointer word: still wrong */
    b->pprev = (struct node **)&a->key;
    CHECK_RC(tha_heap_check_types(h), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(h), "pprev");
    b->pprev = &a->next;
    hd->pname = (char **)&hd->first; /* a node*, not a char* */
    CHECK_RC(tha_heap_check_types(h), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(h), "pname");
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* One field, struct argv { char **v; }, its target spelled tgt: the
 * fingerprint, or 0 if refused. */
struct argv {
    char **v;
};

static uint64_t argv_fingerprint(const char *tgt) {
    tha_schema_t *s;
    uint32_t t;
    uint64_t fp = 0;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct argv, "argv", &t));
    if (THA_FIELD_PTR(s, t, struct argv, v, tgt, 0) == 0 && tha_schema_seal(s) == 0)
        fp = tha_schema_fingerprint(s);
    else
        fprintf(stderr, "  '%s': %s\n", tgt, tha_schema_errmsg(s));
    tha_schema_release(s);
    return fp;
}

/* Qualifiers are no part of a layout: const char **argv (C), const char
 * *const *v, char const ** are the char ** Python's cffi reads them as. */
static void test_qualified_targets(void) {
    uint64_t want = argv_fingerprint("char *");
    CHECK(want != 0);
    CHECK(argv_fingerprint("const char *") == want);
    CHECK(argv_fingerprint("char const *") == want);
    CHECK(argv_fingerprint("const char * const") == want);
    CHECK(argv_fingerprint("volatile char *restrict") == want);
    tha_schema_t *s;
    uint32_t t, id, want_id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct argv, "argv", &t));
    CHECK_OK(THA_FIELD_PTR(s, t, struct argv, v, "const char *", 0));
    CHECK_OK(tha_schema_seal(s));
    CHECK_OK(tha_schema_type_by_name(s, "char*", &want_id));
    CHECK_OK(tha_schema_type_by_name(s, "const char *", &id));
    CHECK(id == want_id);
    tha_field_t f;
    CHECK_OK(tha_schema_field_info(s, tha_schema_type_id(s, t), 0, &f));
    CHECK(f.target && strcmp(f.target, "char*") == 0);
    tha_schema_release(s);
    CHECK(argv_fingerprint("constant *") == 0); /* a name, not a qualifier */
}

/* A star chain whose pointer type's name would pass the name limit is
 * refused saying so (it said 'is no type name'); one that fits works. */
static void test_star_chain_at_the_name_limit(void) {
    char base[THA_NAME_MAX], tgt[THA_NAME_MAX + 8];
    memset(base, 'a', 61);
    base[61] = 0;
    for (int stars = 2; stars <= 3; stars++) {
        tha_schema_t *s;
        uint32_t a, t;
        CHECK_OK(tha_schema_create(&s));
        CHECK_OK(tha_schema_add_struct(s, base, 8, 8, 0, &a));
        CHECK_OK(THA_STRUCT(s, struct argv, "argv", &t));
        snprintf(tgt, sizeof tgt, "%s %.*s", base, stars, "***");
        int rc = THA_FIELD_PTR(s, t, struct argv, v, tgt, 0);
        if (stars == 2) { /* "a61**" is 63 characters */
            CHECK_OK(rc);
            CHECK_OK(tha__add_field(s, a, "x", 0, THA_K_SCALAR, THA_T_U64, NULL, 0));
            CHECK_OK(tha_schema_seal(s));
        } else {
            CHECK_RC(rc, THA_EINVAL);
            CHECK_CONTAINS(tha_schema_errmsg(s), "longer than 63 characters");
        }
        tha_schema_release(s);
    }
}

/* Hostile frames over pointer arrays: a snapshot and a delta of an hlist
 * with pointer-array tables (node*, node**, char*, void*), bytes flipped
 * at random after the header, checksums resealed. Whatever apply accepts
 * passes tha_heap_check and the walks (leaks, dangling, type check: any
 * answer) under ASan; a refusal says why. */
static void test_mutated_frames_over_pointer_arrays(void) {
    tha_schema_t *s = hlist_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    struct head *hd = alloc(h, HEAD, 1);
    uint32_t NODEP, NODEPP, VOIDP, CHARP;
    CHECK_OK(tha_schema_type_by_name(s, "node*", &NODEP));
    CHECK_OK(tha_schema_type_by_name(s, "void*", &VOIDP));
    CHECK_OK(tha_schema_type_by_name(s, "char*", &CHARP));
    CHECK(tha_schema_type_by_name(s, "node**", &NODEPP) == THA_ENOTFOUND);
    struct node **b = alloc(h, NODEP, 8);
    struct node *prev = NULL;
    for (int i = 0; i < 8; i++) {
        struct node *n = alloc(h, NODE, 1);
        n->key = (uint64_t)i;
        b[i] = n;
        n->pprev = prev ? &prev->next : &hd->first;
        if (prev) prev->next = n; else hd->first = n;
        prev = n;
    }
    hd->pany = alloc(h, VOIDP, 3);
    hd->pany[0] = b + 2, hd->pany[1] = &b[3]->key, hd->pany[2] = hd;
    hd->pname = alloc(h, CHARP, 2);
    hd->pname[1] = hd->name = alloc(h, THA_T_CHAR, 5);
    CHECK_OK(tha_root_set(h, "head", hd));
    CHECK_OK(tha_root_set(h, "b", b));
    size_t slen, dlen;
    uint8_t *snap = encode(h, THA_FRAME_SNAPSHOT, &slen);
    b[7] = b[0], b[0] = NULL;
    CHECK_OK(tha_heap_touch(h, b, 8 * sizeof *b));
    hd->pany[2] = &b[5];
    CHECK_OK(tha_heap_touch(h, hd->pany, 3 * sizeof *hd->pany));
    uint8_t *delta = encode(h, THA_FRAME_DELTA, &dlen);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int accepted = 0, refused = 0;
    const int rounds = getenv("THA_TEST_UNDER_VALGRIND") ? 60 : 600;
    for (int r = 0; r < rounds; r++) {
        tha_heap_t *m;
        CHECK_OK(tha_heap_create(&m, s, 1 << 20, THA_TRACK_EXPLICIT));
        int use_delta = r & 1;
        if (use_delta) CHECK_OK(tha_heap_apply(m, snap, slen));
        size_t len = use_delta ? dlen : slen;
        uint8_t *f = malloc(len);
        memcpy(f, use_delta ? delta : snap, len);
        int flips = 1 + (int)(r % 4);
        for (int k = 0; k < flips; k++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            size_t at = sizeof(tha__frame_hdr_t) + (size_t)(seed % (len - sizeof(tha__frame_hdr_t)));
            f[at] ^= (uint8_t)(1u << (seed >> 40 & 7));
        }
        reseal(f, len);
        int rc = tha_heap_apply(m, f, len);
        if (rc == 0) {
            accepted++;
            CHECK_OK(tha_heap_check(m));
            size_t nl;
            CHECK_OK(tha_leaks(m, NULL, 0, &nl));
            uint64_t slot, target;
            (void)tha_heap_dangling(m, &slot, &target);
            rc = tha_heap_check_types(m);
            CHECK(rc == 0 || rc == THA_EMISMATCH);
            if (rc) CHECK(tha_heap_errmsg(m)[0] != 0);
        } else {
            refused++;
            CHECK(tha_heap_errmsg(m)[0] != 0);
        }
        free(f);
        tha_heap_destroy(m);
    }
    CHECK(accepted > 0 && refused > 0);
    free(snap);
    free(delta);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_mutated_frames_over_pointer_arrays);
    RUN(test_star_chain_at_the_name_limit);
    RUN(test_pointer_to_a_pointer_field_is_well_typed);
    RUN(test_qualified_targets);
    return CHECK_DONE();
}

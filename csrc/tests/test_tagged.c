/* test_tagged.c — issue 11 item 3: tagged pointers. A pointer field may
 * declare low bits that are tags (tha_field_t.tag_mask, within 0x7:
 * allocations are 8-aligned); a red-black tree that keeps its colour in
 * the parent pointer then mirrors whole, the root's tagged NULL (0x1)
 * included. A tagged NULL in a field without that mask is still refused:
 * by encode (naming the field), by apply (a hand-made frame, nothing
 * written) and by tha_heap_check. */
#include "tha.h"
#include "tha_internal.h"
#include "check.h"
#include "craft.h"
#include "ship.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct tn {
    uint64_t key;
    struct tn *left, *right;
    struct tn *parent; /* bit 0: red; the root's parent is a tagged NULL */
    struct tn *plain;  /* untagged */
};
struct holder {
    uint64_t x;
    struct tn node; /* by value: its slots keep their masks */
};

static uint32_t TN, HOLDER;

static tha_schema_t *make_schema(uint32_t parent_mask) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct tn, "tn", &TN));
    CHECK_OK(THA_FIELD_SCALAR(s, TN, struct tn, key, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, TN, struct tn, left, "tn", 0));
    CHECK_OK(THA_FIELD_PTR(s, TN, struct tn, right, "tn", 0));
    if (parent_mask)
        CHECK_OK(THA_FIELD_PTR_TAGGED(s, TN, struct tn, parent, "tn", parent_mask));
    else
        CHECK_OK(THA_FIELD_PTR(s, TN, struct tn, parent, "tn", 0));
    CHECK_OK(THA_FIELD_PTR(s, TN, struct tn, plain, "tn", 0));
    CHECK_OK(THA_STRUCT(s, struct holder, "holder", &HOLDER));
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDER, struct holder, x, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, HOLDER, struct holder, node, "tn", 0));
    CHECK_OK(tha_schema_seal(s));
    TN = tha_schema_type_id(s, TN);
    HOLDER = tha_schema_type_id(s, HOLDER);
    return s;
}

#define PARENT(n) ((struct tn *)((uintptr_t)(n)->parent & ~(uintptr_t)1))
#define RED(n) ((int)((uintptr_t)(n)->parent & 1))
#define SET_PARENT(n, p, red) ((n)->parent = (struct tn *)((uintptr_t)(p) | (uintptr_t)(red)))

/* A binary search tree of n keys (a shuffled order), colours arbitrary but
 * fixed by key, the root red: its parent word is 0x1. */
static struct tn *build(tha_heap_t *h, int n) {
    struct tn *root = NULL;
    for (int i = 0; i < n; i++) {
        uint64_t key = (uint64_t)(i * 37 % n);
        struct tn *x;
        CHECK_OK(tha_heap_alloc(h, TN, 1, (void **)&x));
        x->key = key;
        struct tn *p = NULL, **at = &root;
        while (*at) {
            p = *at;
            at = key < p->key ? &p->left : &p->right;
        }
        *at = x;
        SET_PARENT(x, p, key % 3 == 0);
    }
    SET_PARENT(root, NULL, 1);
    return root;
}

/* The mirror's tree is the source's: keys, shape, colours, parents. */
static int same_tree(const struct tn *x, const struct tn *y, const struct tn *yparent) {
    if (!x || !y) return x == y;
    CHECK(x->key == y->key);
    CHECK(RED(x) == RED(y));
    CHECK(PARENT(y) == yparent);
    return x->key == y->key && same_tree(x->left, y->left, y) &&
           same_tree(x->right, y->right, y);
}

static void test_tagged_null_travels(void) {
    tha_schema_t *s = make_schema(0x1);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_heap_create(&b, s, 8 << 20, THA_TRACK_EXPLICIT));
    struct tn *root = build(a, 200);
    CHECK(root->parent == (struct tn *)1);
    CHECK_OK(tha_root_set(a, "root", root));
    CHECK_OK(tha_heap_check_types(a)); /* a tagged field's targets, tags stripped */
    /* a non-NULL tagged pointer in an untagged field works as before */
    root->plain = (struct tn *)((uintptr_t)root->right | 3);
    struct holder *hd;
    CHECK_OK(tha_heap_alloc(a, HOLDER, 2, (void **)&hd));
    hd[1].node.parent = (struct tn *)1; /* nested: the mask came along */
    hd[0].node.parent = (struct tn *)((uintptr_t)root | 1);
    CHECK_OK(tha_root_set(a, "holder", hd));
    CHECK_OK(tha_heap_check(a));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK_OK(tha_heap_check(b));
    void *r, *rh;
    CHECK_OK(tha_root_get(b, "root", &r));
    CHECK_OK(tha_root_get(b, "holder", &rh));
    struct tn *rb = r;
    struct holder *hb = rh;
    CHECK(rb->parent == (struct tn *)1);
    CHECK(same_tree(root, rb, NULL));
    CHECK(rb->right && rb->plain == (struct tn *)((uintptr_t)rb->right | 3));
    /* ...where an untagged field holding tag bits is a type error */
    CHECK_RC(tha_heap_check_types(b), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(b), "field plain");
    CHECK(hb[1].node.parent == (struct tn *)1);
    CHECK(hb[0].node.parent == (struct tn *)((uintptr_t)rb | 1));

    /* a delta: every colour flipped (the root's word becomes NULL, then a
     * red leaf is detached as a new root of its own: 0x1) */
    for (int round = 0; round < 2; round++) {
        struct tn *stack[256];
        int sp = 0;
        stack[sp++] = root;
        while (sp) {
            struct tn *x = stack[--sp];
            x->parent = (struct tn *)((uintptr_t)x->parent ^ 1);
            if (x->left) stack[sp++] = x->left;
            if (x->right) stack[sp++] = x->right;
        }
        CHECK_OK(ship(a, b, THA_FRAME_DELTA));
        CHECK_OK(tha_heap_check(b));
        CHECK(same_tree(root, rb, NULL));
        CHECK(rb->parent == (round == 0 ? NULL : (struct tn *)1));
    }
    struct tn *lone;
    CHECK_OK(tha_heap_alloc(a, TN, 1, (void **)&lone)); /* new in this delta */
    lone->parent = (struct tn *)1;
    CHECK_OK(tha_root_set(a, "lone", lone));
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));
    CHECK_OK(tha_root_get(b, "lone", &r));
    CHECK(((struct tn *)r)->parent == (struct tn *)1);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

/* Encode: a tagged NULL where the field has no such mask fails, naming the
 * field, the value and the fix; nothing changes; cleared, it encodes. */
static void test_untagged_field_refuses(void) {
    tha_schema_t *s = make_schema(0x1);
    tha_heap_t *a;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_EXPLICIT));
    struct tn *x;
    CHECK_OK(tha_heap_alloc(a, TN, 1, (void **)&x));
    CHECK_OK(tha_root_set(a, "x", x));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_SNAPSHOT, &n));
    uint8_t *f = malloc(n);
    struct {
        int field; /* 0 plain, 1 parent */
        uintptr_t v;
        const char *want;
    } cases[] = {
        {0, 0x1, "struct tn field plain"},
        {0, 0x4, "THA_FIELD_PTR_TAGGED"},
        {1, 0x2, "struct tn field parent"},
        {1, 0x3, "tag mask 0x1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct tn **w = cases[i].field ? &x->parent : &x->plain;
        *w = (struct tn *)cases[i].v;
        CHECK_OK(tha_heap_touch(a, x, 0));
        tha_stats_t st;
        CHECK_OK(tha_heap_stats(a, &st));
        CHECK_RC(tha_heap_encode(a, THA_FRAME_SNAPSHOT, f, n, &len), THA_EFOREIGN);
        CHECK_CONTAINS(tha_heap_errmsg(a), cases[i].want);
        char val[16];
        snprintf(val, sizeof val, "holds 0x%lx", (unsigned long)cases[i].v);
        CHECK_CONTAINS(tha_heap_errmsg(a), val);
        tha_stats_t st2;
        CHECK_OK(tha_heap_stats(a, &st2));
        CHECK(st2.seq == st.seq);
        *w = NULL;
    }
    x->parent = (struct tn *)1;
    CHECK_OK(tha_heap_encode(a, THA_FRAME_SNAPSHOT, f, n, &len));
    free(f);
    tha_heap_destroy(a);
    tha_schema_release(s);
}

/* Masks: only pointer fields, only bits 0..2; refused at add_field naming
 * the field, and so at seal. */
static void test_mask_validation(void) {
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct tn, "tn", &id));
    CHECK_RC(THA_FIELD_PTR_TAGGED(s, id, struct tn, parent, "tn", 0x8), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct tn field parent");
    CHECK_CONTAINS(tha_schema_errmsg(s), "0x8");
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct tn field parent");
    tha_schema_release(s);

    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct tn, "tn", &id));
    tha_field_t fld = {.name = "key", .offset = 0, .kind = THA_K_SCALAR,
                       .prim = THA_T_U64, .tag_mask = 1};
    CHECK_RC(tha_schema_add_field(s, id, &fld), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "field key");
    fld = (tha_field_t){.name = "fn", .offset = 8, .kind = THA_K_FUNC, .tag_mask = 1};
    CHECK_RC(tha_schema_add_field(s, id, &fld), THA_ESCHEMA);
    CHECK_RC(THA_FIELD_PTR_TAGGED(s, id, struct tn, parent, "tn", 0xffffffffu), THA_ESCHEMA);
    tha_schema_clear_add_error(s);
    CHECK_OK(THA_FIELD_PTR_TAGGED(s, id, struct tn, parent, "tn", 0x7));
    CHECK_OK(tha_schema_seal(s));
    tha_schema_release(s);
}

/* The mask is part of the schema: introspection, the slot table (nested
 * too), the byte form, the fingerprint, compare. */
static void test_mask_in_schema(void) {
    tha_schema_t *s = make_schema(0x1), *u = make_schema(0);
    uint32_t tn = TN, holder = HOLDER;
    tha_field_t fi;
    CHECK_OK(tha_schema_field_info(s, tn, 3, &fi));
    CHECK(strcmp(fi.name, "parent") == 0 && fi.tag_mask == 1);
    CHECK_OK(tha_schema_field_info(s, tn, 4, &fi));
    CHECK(fi.tag_mask == 0);
    const tha__type_t *t = tha__schema_type(s, tn), *th = tha__schema_type(s, holder);
    CHECK(t->nslots == 4 && th->nslots == 4);
    for (uint32_t k = 0; k < 4; k++) {
        CHECK(t->slots[k].tag_mask == (t->slots[k].offset == 24 ? 1u : 0u));
        CHECK(th->slots[k].tag_mask == (th->slots[k].offset == 32 ? 1u : 0u));
    }
    CHECK(tha_schema_fingerprint(s) != tha_schema_fingerprint(u));
    char msg[256];
    CHECK_RC(tha_schema_compare(s, u, msg, sizeof msg), THA_EMISMATCH);
    CHECK_CONTAINS(msg, "struct tn field parent: tag mask 0x1 vs 0x0");
    size_t n;
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &n));
    uint8_t *buf = malloc(n);
    CHECK_OK(tha_schema_serialize(s, buf, n, &n));
    uint32_t version;
    memcpy(&version, buf + 4, 4);
    CHECK(version == 2);
    tha_schema_t *back;
    CHECK_OK(tha_schema_deserialize(buf, n, &back, msg, sizeof msg));
    CHECK(tha_schema_fingerprint(back) == tha_schema_fingerprint(s));
    CHECK_OK(tha_schema_field_info(back, tn, 3, &fi));
    CHECK(fi.tag_mask == 1);
    free(buf);
    CHECK_OK(tha_schema_serialize(u, NULL, 0, &n));
    buf = malloc(n);
    CHECK_OK(tha_schema_serialize(u, buf, n, &n));
    memcpy(&version, buf + 4, 4);
    CHECK(version == 1); /* no masks, no externs: the byte form it always had */
    free(buf);
    tha_schema_release(back);
    tha_schema_release(s);
    tha_schema_release(u);

    /* format 2 only when needed: a blob saying format 2 with every mask 0
     * (and no externs) is not the canonical form of what it holds */
    tha_schema_t *one;
    uint32_t id;
    CHECK_OK(tha_schema_create(&one));
    CHECK_OK(tha_schema_add_struct(one, "one", 8, 8, 0, &id));
    tha_field_t p = {.name = "p", .kind = THA_K_PTR, .target = "void", .tag_mask = 3};
    CHECK_OK(tha_schema_add_field(one, id, &p));
    CHECK_OK(tha_schema_seal(one));
    CHECK_OK(tha_schema_serialize(one, NULL, 0, &n));
    buf = malloc(n);
    CHECK_OK(tha_schema_serialize(one, buf, n, &n));
    uint32_t mask;
    memcpy(&mask, buf + n - 4, 4); /* the last field's mask ends the blob */
    CHECK(mask == 3);
    memset(buf + n - 4, 0, 4);
    CHECK_RC(tha_schema_deserialize(buf, n, &back, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "canonical");
    buf[n - 4] = 8; /* a mask no field may have */
    CHECK_RC(tha_schema_deserialize(buf, n, &back, msg, sizeof msg), THA_EFRAME);
    CHECK_CONTAINS(msg, "tag mask 0x8");
    free(buf);
    tha_schema_release(one);
}

/* Hand-made tagged-NULL words: in an untagged slot, with bits outside the
 * slot's mask, with no bits or bits past 0x7; in a delta over an existing
 * object, in a delta's new object, in a snapshot. Each refused naming the
 * field, the heap byte for byte as it was; the honest frames apply. */
static void test_crafted_tagged_words(void) {
    tha_schema_t *s = make_schema(0x1);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 8 << 20, THA_TRACK_EXPLICIT));
    struct tn *x;
    CHECK_OK(tha_heap_alloc(a, TN, 1, (void **)&x));
    CHECK_OK(tha_root_set(a, "x", x));
    x->parent = (struct tn *)1;
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    struct tn *fresh;
    CHECK_OK(tha_heap_alloc(a, TN, 1, (void **)&fresh)); /* its header in the delta */
    CHECK_OK(tha_root_set(a, "fresh", fresh));
    fresh->parent = (struct tn *)1;
    CHECK_OK(tha_heap_touch(a, x, 0));
    const uint8_t *base = tha_heap_base(a);
    const struct {
        int kind;
        int field; /* 0 plain, 1 parent */
        uint64_t word;
        const char *want;
    } bad[] = {
        {THA_FRAME_DELTA, 0, THA__WIRE_TAGNULL | 1, "struct tn field plain"},
        {THA_FRAME_DELTA, 1, THA__WIRE_TAGNULL | 2, "struct tn field parent"},
        {THA_FRAME_DELTA, 1, THA__WIRE_TAGNULL | 0, "tagged NULL"},
        {THA_FRAME_DELTA, 1, THA__WIRE_TAGNULL | 8, "tagged NULL"},
        {THA_FRAME_DELTA, 1, THA__WIRE_TAGNULL | 1ull << 40 | 1, "tagged NULL"},
        {THA_FRAME_SNAPSHOT, 0, THA__WIRE_TAGNULL | 1, "struct tn field plain"},
    };
    size_t dlen, slen;
    uint8_t *d = encode(a, THA_FRAME_DELTA, &dlen);
    tha_heap_t *c; /* the snapshot case: a fresh mirror */
    CHECK_OK(tha_heap_create(&c, s, 8 << 20, THA_TRACK_EXPLICIT));
    uint8_t *sn = encode(a, THA_FRAME_SNAPSHOT, &slen);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (int which = 0; which < 2; which++) { /* x (old), fresh (new) */
            const struct tn *o = which ? fresh : x;
            uint64_t off = (uint64_t)((const uint8_t *)(bad[i].field ? &o->parent
                                                                      : &o->plain) - base);
            int snap = bad[i].kind == THA_FRAME_SNAPSHOT;
            uint8_t *f = snap ? sn : d;
            size_t len = snap ? slen : dlen;
            tha_heap_t *to = snap ? c : b;
            uint8_t *w = in_frame(f, off);
            CHECK(w != NULL);
            if (!w) continue;
            uint64_t honest;
            memcpy(&honest, w, 8);
            memcpy(w, &bad[i].word, 8);
            reseal(f, len);
            tha_stats_t before, after;
            CHECK_OK(tha_heap_stats(to, &before));
            uint8_t *img = malloc(before.top + 1);
            memcpy(img, tha_heap_base(to), before.top);
            CHECK_RC(tha_heap_apply(to, f, len), THA_ERANGE);
            CHECK_CONTAINS(tha_heap_errmsg(to), bad[i].want);
            CHECK_OK(tha_heap_stats(to, &after));
            CHECK(after.seq == before.seq && after.top == before.top &&
                  memcmp(img, tha_heap_base(to), before.top) == 0);
            free(img);
            memcpy(w, &honest, 8);
            reseal(f, len);
        }
    CHECK_OK(tha_heap_apply(b, d, dlen));
    CHECK_OK(tha_heap_check(b));
    CHECK_OK(tha_heap_apply(c, sn, slen));
    CHECK_OK(tha_heap_check(c));
    void *r;
    CHECK_OK(tha_root_get(b, "fresh", &r));
    CHECK(((struct tn *)r)->parent == (struct tn *)1);

    /* tha_heap_check accepts exactly these words in the native heap */
    struct tn *y = r;
    y->plain = (struct tn *)1;
    CHECK_RC(tha_heap_check(b), THA_ECORRUPT);
    CHECK_CONTAINS(tha_heap_errmsg(b), "0x1");
    y->plain = NULL;
    y->parent = (struct tn *)2;
    CHECK_RC(tha_heap_check(b), THA_ECORRUPT);
    y->parent = (struct tn *)1;
    CHECK_OK(tha_heap_check(b));
    free(d);
    free(sn);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_heap_destroy(c);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_tagged_null_travels);
    RUN(test_untagged_field_refuses);
    RUN(test_mask_validation);
    RUN(test_mask_in_schema);
    RUN(test_crafted_tagged_words);
    return CHECK_DONE();
}

/* test_rbtree.c — a BSD red-black tree (libbsd's <bsd/sys/tree.h>) on a tha
 * heap, registered with THA_FIELD_RB_ENTRY / THA_FIELD_RB_HEAD, changed by
 * plain writes (inserts and removes rebalance it), mirrored to a heap at
 * another base and searched and walked there with the library's own
 * generated functions. */
#include "tha.h"
#include "check.h"
#include "ship.h"

/* RB_GENERATE_STATIC marks its functions __unused, which libbsd's cdefs.h
 * leaves undefined (Debian #522773): this file defines it. */
#define __unused __attribute__((__unused__))
#include <bsd/sys/tree.h>
#include <stdint.h>
#include <stdlib.h>

struct node {
    uint64_t key;
    RB_ENTRY(node) rb;
};
RB_HEAD(ntree, node);
struct tree {
    struct ntree t;
    uint64_t n;
};

static int cmp(struct node *a, struct node *b) {
    return a->key < b->key ? -1 : a->key > b->key;
}
RB_GENERATE_STATIC(ntree, node, rb, cmp)

static uint32_t NODE, TREE;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct node, "node", &NODE));
    CHECK_OK(THA_FIELD_SCALAR(s, NODE, struct node, key, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_RB_ENTRY(s, NODE, struct node, rb, "node"));
    CHECK_OK(THA_STRUCT(s, struct tree, "tree", &TREE));
    CHECK_OK(THA_FIELD_RB_HEAD(s, TREE, struct tree, t, "node"));
    CHECK_OK(THA_FIELD_SCALAR(s, TREE, struct tree, n, THA_T_U64, 0));
    CHECK_OK(tha_schema_seal(s));
    NODE = tha_schema_type_id(s, NODE);
    TREE = tha_schema_type_id(s, TREE);
    return s;
}

/* The mirror holds the same keys in order, and finds each of them. */
static void same_tree(struct tree *src, struct tree *dst) {
    struct node *x, *y = RB_MIN(ntree, &dst->t);
    uint64_t count = 0;
    RB_FOREACH(x, ntree, &src->t) {
        CHECK(y && y->key == x->key);
        if (!y) return;
        struct node probe = {.key = x->key};
        CHECK(RB_FIND(ntree, &dst->t, &probe) == y);
        y = RB_NEXT(ntree, &dst->t, y);
        count++;
    }
    CHECK(y == NULL && count == src->n && dst->n == src->n);
}

static void test_rb_tree_mirror(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 16 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_heap_create(&b, s, 16 << 20, THA_TRACK_EXPLICIT));
    struct tree *t;
    CHECK_OK(tha_heap_alloc(a, TREE, 1, (void **)&t));
    RB_INIT(&t->t);
    CHECK_OK(tha_root_set(a, "tree", t));
    uint64_t x = 88172645463325252ull; /* xorshift keys */
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        struct node *n;
        CHECK_OK(tha_heap_alloc(a, NODE, 1, (void **)&n));
        n->key = x % 1000000;
        if (RB_INSERT(ntree, &t->t, n)) CHECK_OK(tha_heap_free(a, n)); /* a duplicate */
        else t->n++;
    }
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    void *r;
    CHECK_OK(tha_root_get(b, "tree", &r));
    same_tree(t, r);
    /* remove half, insert a few: rebalancing rewrites links all over */
    struct node *n, *next;
    int k = 0;
    for (n = RB_MIN(ntree, &t->t); n; n = next, k++) {
        next = RB_NEXT(ntree, &t->t, n);
        if (k % 2 == 0) {
            RB_REMOVE(ntree, &t->t, n);
            CHECK_OK(tha_heap_free(a, n));
            t->n--;
        }
    }
    for (int i = 0; i < 500; i++) {
        CHECK_OK(tha_heap_alloc(a, NODE, 1, (void **)&n));
        n->key = 2000000 + (uint64_t)i * 7;
        RB_INSERT(ntree, &t->t, n);
        t->n++;
    }
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));
    same_tree(t, r);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_rb_tree_mirror);
    return CHECK_DONE();
}

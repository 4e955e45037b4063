/* test_reach.c — tha_leaks and tha_collect: cycles, shared subtrees,
 * interior pointers, pointers in arrays and nested structs, function-pointer
 * slots, garbage pointing into live data, a million-long chain (no
 * recursion), large spans; collect followed by tha_heap_check and by a
 * delta that brings a mirror level. */
#include "tha.h"
#include "check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct node {
    struct node *next;
    struct node *kids[3];
    void *any;        /* untyped: interior pointers into anything */
    char *str;        /* into a char buffer, maybe its middle */
    void (*fn)(void); /* never a reference */
    uint64_t val;     /* an address stored here is not a reference either */
};
struct pair {
    struct node *a;
    uint64_t x;
};
struct holder {
    uint32_t tag;
    struct pair p[2]; /* pointers inside an array of nested structs */
};

static void hello(void) {}

static uint32_t NODE, PAIR, HOLDER;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct node, "node", &NODE));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, next, "node", 0));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, kids, "node", 3));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, any, "void", 0));
    CHECK_OK(THA_FIELD_PTR(s, NODE, struct node, str, "char", 0));
    CHECK_OK(THA_FIELD_FUNC(s, NODE, struct node, fn, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, NODE, struct node, val, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct pair, "pair", &PAIR));
    CHECK_OK(THA_FIELD_PTR(s, PAIR, struct pair, a, "node", 0));
    CHECK_OK(THA_FIELD_SCALAR(s, PAIR, struct pair, x, THA_T_U64, 0));
    CHECK_OK(THA_STRUCT(s, struct holder, "holder", &HOLDER));
    CHECK_OK(THA_FIELD_SCALAR(s, HOLDER, struct holder, tag, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_STRUCT(s, HOLDER, struct holder, p, "pair", 2));
    CHECK_OK(tha_schema_add_func(s, "hello", hello));
    CHECK_OK(tha_schema_seal(s));
    /* canonical ids, as the heap reports them (handles work as input) */
    NODE = tha_schema_type_id(s, NODE);
    PAIR = tha_schema_type_id(s, PAIR);
    HOLDER = tha_schema_type_id(s, HOLDER);
    return s;
}

static tha_heap_t *make_heap(size_t cap) {
    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, cap, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    return h;
}

static struct node *node(tha_heap_t *h, uint64_t val) {
    void *p = NULL;
    CHECK_OK(tha_heap_alloc(h, NODE, 1, &p));
    ((struct node *)p)->val = val;
    return p;
}

static uint64_t off(tha_heap_t *h, const void *p) {
    return (uint64_t)((const char *)p - (const char *)tha_heap_base(h));
}

/* The leaks of h, sorted by offset (tha_leaks returns them in address order). */
static size_t leaks(tha_heap_t *h, tha_leak_t *out, size_t cap) {
    size_t n = 0;
    CHECK_OK(tha_leaks(h, out, cap, &n));
    for (size_t i = 1; i < n && i < cap; i++) CHECK(out[i - 1].offset < out[i].offset);
    return n;
}

/* True when the allocation starting at p is among the n leaks. */
static bool leaked(tha_heap_t *h, const tha_leak_t *l, size_t n, const void *p) {
    for (size_t i = 0; i < n; i++)
        if (l[i].offset == off(h, p)) return true;
    return false;
}

static uint64_t live_objects(tha_heap_t *h) {
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    return st.live_objects;
}

static void test_empty_and_no_roots(void) {
    tha_heap_t *h = make_heap(1 << 20);
    size_t n = 99;
    CHECK_OK(tha_leaks(h, NULL, 0, &n));
    CHECK(n == 0);
    struct node *a = node(h, 1), *b = node(h, 2);
    a->next = b;
    tha_leak_t l[4];
    n = leaks(h, l, 4);
    CHECK(n == 2 && l[0].offset == off(h, a) && l[1].offset == off(h, b));
    CHECK(l[0].type_id == NODE && l[0].count == 1 && l[0].bytes == sizeof(struct node));
    CHECK_RC(tha_leaks(h, NULL, 4, &n), THA_EINVAL);
    uint64_t freed = 0;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == 2 * sizeof(struct node));
    CHECK(live_objects(h) == 0);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
}

static void test_cycles(void) {
    tha_heap_t *h = make_heap(1 << 20);
    /* a rooted cycle a -> b -> c -> a, and an unrooted one d <-> e */
    struct node *a = node(h, 1), *b = node(h, 2), *c = node(h, 3);
    struct node *d = node(h, 4), *e = node(h, 5);
    a->next = b, b->next = c, c->next = a;
    d->next = e, e->kids[2] = d;
    struct node *self = node(h, 6);
    self->next = self; /* a self loop is garbage too */
    CHECK_OK(tha_root_set(h, "ring", b));
    tha_leak_t l[8];
    size_t n = leaks(h, l, 8);
    CHECK(n == 3 && leaked(h, l, n, d) && leaked(h, l, n, e) && leaked(h, l, n, self));
    uint64_t freed = 0;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == 3 * sizeof(struct node));
    CHECK(live_objects(h) == 3 && a->val == 1 && c->next == a);
    CHECK_OK(tha_heap_check(h));
    CHECK(leaks(h, l, 8) == 0);
    tha_heap_destroy(h);
}

static void test_shared_subtrees(void) {
    tha_heap_t *h = make_heap(1 << 20);
    /* two roots share one subtree (a diamond below it) */
    struct node *r1 = node(h, 1), *r2 = node(h, 2), *shared = node(h, 3);
    struct node *left = node(h, 4), *right = node(h, 5), *bottom = node(h, 6);
    r1->kids[0] = shared, r2->kids[1] = shared;
    shared->kids[0] = left, shared->kids[1] = right;
    left->next = bottom, right->next = bottom;
    CHECK_OK(tha_root_set(h, "r1", r1));
    CHECK_OK(tha_root_set(h, "r2", r2));
    tha_leak_t l[8];
    CHECK(leaks(h, l, 8) == 0);
    CHECK_OK(tha_root_set(h, "r1", NULL)); /* r1 goes, the subtree stays */
    size_t n = leaks(h, l, 8);
    CHECK(n == 1 && l[0].offset == off(h, r1));
    CHECK_OK(tha_root_set(h, "r2", NULL));
    CHECK(leaks(h, l, 8) == 6);
    tha_heap_destroy(h);
}

static void test_interior_pointers(void) {
    tha_heap_t *h = make_heap(1 << 20);
    struct node *root = node(h, 0);
    CHECK_OK(tha_root_set(h, "root", root));
    char *buf;
    CHECK_OK(tha_heap_alloc(h, THA_T_CHAR, 100, (void **)&buf));
    root->str = buf + 57; /* char * into the middle of a char buffer */
    struct node *team;
    CHECK_OK(tha_heap_alloc(h, NODE, 8, (void **)&team));
    root->any = &team[5].val; /* void * to a field of an array element */
    struct holder *hold;
    CHECK_OK(tha_heap_alloc(h, HOLDER, 1, (void **)&hold));
    root->kids[0] = (struct node *)&hold->p[1].x; /* any address inside counts */
    uint64_t *words; /* an interior root into a plain array */
    CHECK_OK(tha_heap_alloc(h, THA_T_U64, 16, (void **)&words));
    CHECK_OK(tha_root_set(h, "words", words + 9));
    /* one past the end of an allocation is not a reference to it */
    char *small;
    CHECK_OK(tha_heap_alloc(h, THA_T_CHAR, 16, (void **)&small));
    root->kids[1] = (struct node *)(small + 16);
    tha_leak_t l[8];
    size_t n = leaks(h, l, 8);
    CHECK(n == 1 && l[0].offset == off(h, small) && l[0].type_id == THA_T_CHAR &&
          l[0].bytes == 16);
    root->kids[1] = NULL;
    CHECK_OK(tha_collect(h, NULL));
    CHECK_OK(tha_heap_check(h));
    CHECK(live_objects(h) == 5);
    tha_heap_destroy(h);
}

static void test_pointers_in_arrays(void) {
    tha_heap_t *h = make_heap(1 << 20);
    struct node *team;
    CHECK_OK(tha_heap_alloc(h, NODE, 10, (void **)&team));
    CHECK_OK(tha_root_set(h, "team", team));
    struct node *x = node(h, 1), *y = node(h, 2), *z = node(h, 3), *w = node(h, 4);
    team[7].kids[2] = x; /* last slot of a pointer array in the 8th element */
    team[9].next = y;    /* the last element */
    struct holder *hold;
    CHECK_OK(tha_heap_alloc(h, HOLDER, 3, (void **)&hold));
    x->any = hold;
    hold[2].p[1].a = z; /* nested struct array inside an array allocation */
    hold[1].p[0].x = (uint64_t)(uintptr_t)w; /* an integer: not a reference */
    tha_leak_t l[8];
    size_t n = leaks(h, l, 8);
    CHECK(n == 1 && l[0].offset == off(h, w));
    team[7].kids[2] = NULL; /* x, hold and z go with it */
    n = leaks(h, l, 8);
    CHECK(n == 4 && leaked(h, l, n, x) && leaked(h, l, n, hold) && leaked(h, l, n, z) &&
          leaked(h, l, n, w));
    CHECK(!leaked(h, l, n, y));
    for (size_t i = 0; i < n; i++)
        if (l[i].offset == off(h, hold))
            CHECK(l[i].type_id == HOLDER && l[i].count == 3 &&
                  l[i].bytes == 3 * sizeof(struct holder));
    tha_heap_destroy(h);
}

static void test_function_slots_are_not_references(void) {
    tha_heap_t *h = make_heap(1 << 20);
    struct node *root = node(h, 0), *victim = node(h, 1);
    CHECK_OK(tha_root_set(h, "root", root));
    root->fn = hello;
    struct node *team;
    CHECK_OK(tha_heap_alloc(h, NODE, 2, (void **)&team));
    root->next = team;
    /* a heap address in a function slot (the check tolerates in-range
     * values) must not keep anything alive */
    team[1].fn = (void (*)(void))(void *)victim;
    tha_leak_t l[4];
    size_t n = leaks(h, l, 4);
    CHECK(n == 1 && l[0].offset == off(h, victim));
    team[1].fn = NULL;
    CHECK_OK(tha_collect(h, NULL));
    CHECK(root->fn == hello);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
}

static void test_garbage_into_live(void) {
    tha_heap_t *h = make_heap(1 << 20);
    struct node *live = node(h, 1), *child = node(h, 2);
    live->next = child;
    CHECK_OK(tha_root_set(h, "live", live));
    struct node *g1 = node(h, 3), *g2 = node(h, 4);
    g1->next = live, g1->kids[0] = child, g1->kids[1] = g2;
    g2->any = &child->val;
    tha_leak_t l[4];
    size_t n = leaks(h, l, 4);
    CHECK(n == 2 && leaked(h, l, n, g1) && leaked(h, l, n, g2));
    uint64_t freed;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == 2 * sizeof(struct node));
    CHECK(live->next == child && child->val == 2);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
}

static void test_dangling_and_spans(void) {
    tha_heap_t *h = make_heap(8 << 20);
    struct node *root = node(h, 0);
    CHECK_OK(tha_root_set(h, "root", root));
    struct node *gone = node(h, 1);
    struct node *big; /* page spans: 1000 and 3000 x 64 bytes */
    CHECK_OK(tha_heap_alloc(h, NODE, 1000, (void **)&big));
    root->kids[1] = &big[999];
    struct node *bigger;
    CHECK_OK(tha_heap_alloc(h, NODE, 3000, (void **)&bigger));
    big[500].next = node(h, 7);
    bigger[2999].next = node(h, 8);
    CHECK_OK(tha_heap_free(h, gone));
    root->kids[0] = gone; /* dangling: reaches nothing, trips nothing */
    tha_leak_t l[4];
    size_t n = leaks(h, l, 4);
    CHECK(n == 2 && leaked(h, l, n, bigger) && leaked(h, l, n, bigger[2999].next));
    root->kids[0] = NULL;
    uint64_t freed;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == 3001 * sizeof(struct node));
    CHECK_OK(tha_heap_check(h));
    CHECK(big[500].next->val == 7);
    tha_heap_destroy(h);
}

/* tha_heap_dangling: the first pointer slot into the image but not into a
 * live allocation, in address order; interior, NULL, foreign and function
 * slots are never reported. */
static void test_dangling_pointer_slots(void) {
    tha_heap_t *h = make_heap(8 << 20);
    uint64_t slot = 0, target = 0;
    CHECK(tha_heap_dangling(h, &slot, &target) == 0);
    struct node *a = node(h, 1), *b = node(h, 2), *c = node(h, 3);
    struct node *arr;
    CHECK_OK(tha_heap_alloc(h, NODE, 10, (void **)&arr));
    a->next = &arr[7];          /* interior: fine */
    a->any = (char *)&arr[3] + 5;
    a->fn = hello;              /* code, not a reference */
    b->any = (void *)&slot;     /* outside the image: not this check's */
    CHECK(tha_heap_dangling(h, &slot, &target) == 0);
    struct holder *hd;
    CHECK_OK(tha_heap_alloc(h, HOLDER, 1, (void **)&hd));
    CHECK_OK(tha_heap_free(h, c));
    hd->p[1].a = c;             /* freed: dangling */
    arr[9].kids[2] = c;         /* also, but later in address order? */
    CHECK(tha_heap_dangling(h, &slot, &target) == 1);
    uint64_t first = off(h, &arr[9].kids[2]) < off(h, &hd->p[1].a)
                         ? off(h, &arr[9].kids[2]) : off(h, &hd->p[1].a);
    CHECK(slot == first && target == off(h, c));
    arr[9].kids[2] = NULL;
    hd->p[1].a = (struct node *)((char *)&arr[10]); /* one past the end */
    CHECK(tha_heap_dangling(h, &slot, &target) == 1);
    CHECK(slot == off(h, &hd->p[1].a) && target == off(h, &arr[10]));
    hd->p[1].a = NULL;
    CHECK(tha_heap_dangling(h, &slot, &target) == 0);
    CHECK(tha_heap_dangling(NULL, &slot, &target) == THA_EINVAL);
    tha_heap_destroy(h);
}

static void test_cap_smaller_than_count(void) {
    tha_heap_t *h = make_heap(1 << 20);
    for (int i = 0; i < 10; i++) node(h, (uint64_t)i);
    tha_leak_t l[3];
    size_t n = 0;
    CHECK_OK(tha_leaks(h, l, 3, &n));
    CHECK(n == 10);
    tha_leak_t all[10];
    CHECK(leaks(h, all, 10) == 10);
    CHECK(memcmp(l, all, sizeof l) == 0);
    tha_heap_destroy(h);
}

/* Wide: one array whose 3 x 3000 kids are queued at once (the worklist
 * ring grows while it wraps), each kid holding a fourth level. */
static void test_wide_graph(void) {
    enum { W = 3000 };
    tha_heap_t *h = make_heap(16 << 20);
    struct node *root = node(h, 0), *arr;
    CHECK_OK(tha_root_set(h, "root", root));
    CHECK_OK(tha_heap_alloc(h, NODE, W, (void **)&arr));
    root->next = arr;
    for (int i = 0; i < W; i++)
        for (int k = 0; k < 3; k++) {
            arr[i].kids[k] = node(h, (uint64_t)i);
            arr[i].kids[k]->next = node(h, (uint64_t)k);
            arr[i].kids[k]->kids[0] = &arr[(i + 1) % W]; /* back into the array */
        }
    struct node *lost = node(h, 99);
    size_t n = 0;
    tha_leak_t l[2];
    CHECK_OK(tha_leaks(h, l, 2, &n));
    CHECK(n == 1 && l[0].offset == off(h, lost));
    CHECK(live_objects(h) == 2 + 6 * W + 1);
    tha_heap_destroy(h);
}

/* A million-long list: recursion would need a million frames. Cut it in the
 * middle, collect half, check, and carry the collection to a mirror. */
static void test_deep_chain_and_mirror(void) {
    enum { N = 1000000 };
    size_t cap = (size_t)N * 96 + (16 << 20);
    tha_heap_t *h = make_heap(cap), *mirror = make_heap(cap);
    struct node *head = node(h, 0), *p = head, *mid = NULL;
    for (uint64_t i = 1; i < N; i++) {
        p->next = node(h, i);
        p = p->next;
        if (i == N / 2) mid = p;
    }
    CHECK_OK(tha_root_set(h, "head", head));
    size_t size = 0;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &size));
    void *frame = malloc(size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, frame, size, &size));
    CHECK_OK(tha_heap_apply(mirror, frame, size));
    free(frame);

    size_t n = 1;
    CHECK_OK(tha_leaks(h, NULL, 0, &n));
    CHECK(n == 0);
    struct node *before = head;
    while (before->next != mid) before = before->next;
    before->next = NULL; /* mid .. end: N/2 nodes */
    CHECK_OK(tha_heap_touch(h, &before->next, sizeof before->next));
    CHECK_OK(tha_leaks(h, NULL, 0, &n));
    CHECK(n == N / 2);
    uint64_t freed = 0;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == (uint64_t)(N / 2) * sizeof(struct node));
    CHECK(live_objects(h) == N / 2);
    CHECK_OK(tha_heap_check(h));

    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &size));
    frame = malloc(size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, frame, size, &size));
    CHECK_OK(tha_heap_apply(mirror, frame, size));
    free(frame);
    CHECK_OK(tha_heap_check(mirror));
    CHECK(live_objects(mirror) == N / 2);
    CHECK_OK(tha_leaks(mirror, NULL, 0, &n));
    CHECK(n == 0);
    /* object for object, the mirror holds what the source holds */
    uint64_t ca = 0, cb = 0;
    tha_obj_t oa, ob;
    int ma, mb;
    while ((ma = tha_heap_next(h, &ca, &oa)) & (mb = tha_heap_next(mirror, &cb, &ob))) {
        CHECK(oa.offset == ob.offset && oa.type_id == ob.type_id);
        const struct node *x = oa.ptr, *y = ob.ptr;
        CHECK(x->val == y->val &&
              (x->next ? off(h, x->next) : 0) == (y->next ? off(mirror, y->next) : 0));
    }
    CHECK(ma == 0 && mb == 0);
    tha_heap_destroy(h);
    tha_heap_destroy(mirror);
}

/* Random graphs: every allocation tha_leaks spares is reachable by a naive
 * search over the same edges, and every one it reports is not. */
static void test_random_graphs(void) {
    enum { M = 400 };
    srand(7);
    for (int round = 0; round < 20; round++) {
        tha_heap_t *h = make_heap(4 << 20);
        struct node *all[M];
        for (int i = 0; i < M; i++) all[i] = node(h, (uint64_t)i);
        int edges = rand() % (2 * M);
        for (int e = 0; e < edges; e++) {
            struct node *a = all[rand() % M], *b = all[rand() % M];
            int slot = rand() % 6;
            if (slot < 3) a->kids[slot] = b;
            else if (slot == 3) a->next = b;
            else if (slot == 4) a->any = &b->val;
            else a->val = (uint64_t)(uintptr_t)b; /* not an edge */
        }
        int nroots = rand() % 4;
        for (int r = 0; r < nroots; r++) {
            char name[16];
            snprintf(name, sizeof name, "r%d", r);
            CHECK_OK(tha_root_set(h, name, all[rand() % M]));
        }
        /* reference: fixed point over the edges */
        bool reach[M] = {false};
        uint32_t cur = 0;
        const char *nm;
        void *rp;
        while (tha_root_next(h, &cur, &nm, &rp))
            for (int i = 0; i < M; i++)
                if (all[i] == rp) reach[i] = true;
        for (bool changed = true; changed;) {
            changed = false;
            for (int i = 0; i < M; i++) {
                if (!reach[i]) continue;
                void *t[5] = {all[i]->kids[0], all[i]->kids[1], all[i]->kids[2],
                              all[i]->next, all[i]->any};
                for (int k = 0; k < 5; k++)
                    for (int j = 0; j < M && t[k]; j++)
                        if (!reach[j] && (t[k] == all[j] || t[k] == &all[j]->val))
                            reach[j] = changed = true;
            }
        }
        tha_leak_t l[M];
        size_t n = leaks(h, l, M);
        size_t want = 0;
        for (int i = 0; i < M; i++) {
            want += !reach[i];
            CHECK(leaked(h, l, n, all[i]) == !reach[i]);
        }
        CHECK(n == want);
        CHECK_OK(tha_collect(h, NULL));
        CHECK_OK(tha_heap_check(h));
        CHECK(live_objects(h) == M - want);
        tha_heap_destroy(h);
    }
}

int main(void) {
    RUN(test_empty_and_no_roots);
    RUN(test_cycles);
    RUN(test_shared_subtrees);
    RUN(test_interior_pointers);
    RUN(test_pointers_in_arrays);
    RUN(test_function_slots_are_not_references);
    RUN(test_garbage_into_live);
    RUN(test_dangling_and_spans);
    RUN(test_dangling_pointer_slots);
    RUN(test_cap_smaller_than_count);
    RUN(test_random_graphs);
    RUN(test_wide_graph);
    RUN(test_deep_chain_and_mirror);
    return CHECK_DONE();
}

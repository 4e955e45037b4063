/* test_same_address.c — same-address mode (tha_heap_create_at): the region
 * mapped at a chosen base and refused clearly where it cannot be; frames
 * that carry raw addresses (version 2, the base in the header) applied as a
 * straight copy to a mirror at the same base (in this process after the
 * source is gone, and through tha_net to a forked standby, twice: the second
 * bulk sync lands on the address the live mirror holds); function pointers
 * still as registry ids; untyped allocations (THA_T_RAW) replicated as they
 * are, refused in relocatable heaps and frames, scanned conservatively by
 * tha_leaks; every mismatch of frame and heap refused naming both
 * addresses; untrusted words checked; checkpoints loaded at their base. */
#include "tha.h"
#include "check.h"
#include "craft.h"
#include "ship.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct item {
    uint64_t key;
    struct item *next;
    void *blob;            /* an untyped allocation */
    void (*fn)(void);
};

static uint32_t ITEM;
static int calls_a, calls_b;
static void fn_a(void) { calls_a++; }
static void fn_b(void) { calls_b++; }

/* fn bound as "hello" */
static tha_schema_t *make_schema(void (*fn)(void)) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct item, "item", &ITEM));
    CHECK_OK(THA_FIELD_SCALAR(s, ITEM, struct item, key, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_PTR(s, ITEM, struct item, next, "item", 0));
    CHECK_OK(THA_FIELD_PTR(s, ITEM, struct item, blob, "void", 0));
    CHECK_OK(THA_FIELD_FUNC(s, ITEM, struct item, fn, 0));
    CHECK_OK(tha_schema_add_func(s, "hello", fn));
    CHECK_OK(tha_schema_seal(s));
    ITEM = tha_schema_type_id(s, ITEM);
    return s;
}

/* Bases far from anything the loader or malloc uses, one per test. */
#define BASE(k) ((void *)(uintptr_t)(0x210000000000ull + (uint64_t)(k) * 0x1000000000ull))
#define CAP (4u << 20)

static void test_create_at(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *h, *g = NULL;
    CHECK_OK(tha_heap_create_at(&h, s, CAP, THA_TRACK_EXPLICIT, BASE(1)));
    CHECK(tha_heap_base(h) == BASE(1));
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.same_address == (uint64_t)(uintptr_t)BASE(1));
    /* taken by the first: refused, naming the address and the mapping */
    CHECK_RC(tha_heap_create_at(&g, s, CAP, THA_TRACK_EXPLICIT, BASE(1)), -EEXIST);
    CHECK(g == NULL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "0x211000000000");
    CHECK_CONTAINS(tha_schema_errmsg(s), "taken");
    CHECK_CONTAINS(tha_schema_errmsg(s), "211000000000-"); /* its /proc/self/maps line */
    /* partly taken: a page in the middle is enough */
    void *page = mmap((uint8_t *)BASE(2) + (1u << 20), 4096, PROT_READ,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(page == (uint8_t *)BASE(2) + (1u << 20));
    CHECK_RC(tha_heap_create_at(&g, s, CAP, THA_TRACK_EXPLICIT, BASE(2)), -EEXIST);
    CHECK_CONTAINS(tha_schema_errmsg(s), "212000100000-212000101000 r--p");
    munmap(page, 4096);
    /* not a base */
    CHECK_RC(tha_heap_create_at(&g, s, CAP, THA_TRACK_EXPLICIT,
                                (uint8_t *)BASE(3) + 4096), THA_EINVAL);
    CHECK_CONTAINS(tha_schema_errmsg(s), "multiple of 64 KiB");
    CHECK_RC(tha_heap_create_at(&g, s, CAP, THA_TRACK_EXPLICIT,
                                (void *)(uintptr_t)(1ull << 48)), THA_EINVAL);
    /* NULL: the default base */
    CHECK_OK(tha_heap_create_at(&g, s, CAP, THA_TRACK_AUTO, NULL));
    CHECK(g && tha_heap_base(g) == THA_BASE_DEFAULT);
    tha_heap_destroy(g);
    /* a relocatable heap says so */
    CHECK_OK(tha_heap_create(&g, s, CAP, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_stats(g, &st));
    CHECK(st.same_address == 0);
    tha_heap_destroy(g);
    tha_heap_destroy(h);
    /* the address is free again */
    CHECK_OK(tha_heap_create_at(&h, s, CAP, THA_TRACK_EXPLICIT, BASE(1)));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

static void test_raw_needs_same_address(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *h;
    void *p;
    CHECK_OK(tha_heap_create(&h, s, CAP, THA_TRACK_EXPLICIT));
    CHECK_RC(tha_heap_alloc(h, THA_T_RAW, 100, &p), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "same-address heap");
    tha_heap_destroy(h);
    CHECK_OK(tha_heap_create_at(&h, s, CAP, THA_TRACK_EXPLICIT, BASE(4)));
    CHECK_OK(tha_heap_alloc(h, THA_T_RAW, 100, &p));
    tha_obj_t o;
    CHECK_OK(tha_heap_lookup(h, (uint8_t *)p + 99, &o));
    CHECK(o.type_id == THA_T_RAW && o.count == 100 && o.size == 1);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* A list of n items whose blobs are raw buffers pointing back at their
 * item, at the next blob and at themselves. */
static struct item *build(tha_heap_t *h, int n, void (*fn)(void)) {
    struct item *head = NULL;
    void *next_blob = NULL;
    for (int i = n - 1; i >= 0; i--) {
        struct item *it;
        void **blob;
        CHECK_OK(tha_heap_alloc(h, ITEM, 1, (void **)&it));
        CHECK_OK(tha_heap_alloc(h, THA_T_RAW, 4 * sizeof(void *), (void **)&blob));
        blob[0] = it;
        blob[1] = next_blob;
        blob[2] = &blob[3];
        blob[3] = (void *)(uintptr_t)(0x5eed0000u + (unsigned)i); /* data */
        it->key = (uint64_t)i;
        it->next = head;
        it->blob = blob;
        it->fn = fn;
        head = it;
        next_blob = blob;
    }
    return head;
}

static void same_list(struct item *it, int n, void (*fn)(void)) {
    for (int i = 0; i < n; i++, it = it->next) {
        CHECK(it && it->key == (uint64_t)i);
        if (!it) return;
        void **blob = it->blob;
        CHECK(blob[0] == it && blob[2] == &blob[3]);
        CHECK(blob[3] == (void *)(uintptr_t)(0x5eed0000u + (unsigned)i));
        CHECK(i + 1 < n ? blob[1] == it->next->blob : 1);
        CHECK(it->fn == fn);
    }
    CHECK(it == NULL);
}

static int holds(const void *frame, size_t len, uint64_t word) {
    for (size_t i = THA_FRAME_HEADER_SIZE; i + 8 <= len; i += 8)
        if (memcmp((const uint8_t *)frame + i, &word, 8) == 0) return 1;
    return 0;
}

/* Frames made by a source at BASE(5), applied to a mirror created at the
 * same base once the source is gone (two heaps cannot share an address in
 * one process); the mirror binds "hello" to another function. */
static void test_mirror_in_process(void) {
    tha_schema_t *s = make_schema(fn_a), *m = make_schema(fn_b);
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create_at(&a, s, CAP, THA_TRACK_DIFF, BASE(5)));
    struct item *head = build(a, 50, fn_a);
    CHECK_OK(tha_root_set(a, "list", head));
    size_t slen, dlen, d2len;
    void *snap = encode(a, THA_FRAME_SNAPSHOT, &slen);
    /* plain writes, a new element with a blob, a freed one */
    head->next->key = 1; /* unchanged value: not in the delta */
    struct item *third = head->next->next;
    head->next->next = third->next;
    void **tb = third->blob;
    ((void **)head->next->blob)[1] = third->next->blob;
    CHECK_OK(tha_heap_free(a, tb));
    CHECK_OK(tha_heap_free(a, third));
    for (struct item *it = head->next->next; it; it = it->next) {
        it->key--;
        ((void **)it->blob)[3] = (void *)(uintptr_t)(0x5eed0000u + (unsigned)it->key);
    }
    void *delta = encode(a, THA_FRAME_DELTA, &dlen);
    tha_frame_info_t fi;
    CHECK_OK(tha_frame_info(snap, slen, &fi));
    CHECK(fi.version == 2 && fi.base == (uint64_t)(uintptr_t)BASE(5));
    CHECK_OK(tha_frame_info(delta, dlen, &fi));
    CHECK(fi.version == 2 && fi.base == (uint64_t)(uintptr_t)BASE(5));
    /* addresses travel as they are: the head's address is in the frame */
    CHECK(holds(snap, slen, (uint64_t)(uintptr_t)head));
    /* a third frame: a touch_all delta */
    CHECK_OK(tha_heap_touch_all(a));
    void *delta2 = encode(a, THA_FRAME_DELTA, &d2len);
    tha_heap_destroy(a);

    CHECK_OK(tha_heap_create_at(&b, m, CAP, THA_TRACK_EXPLICIT, BASE(5)));
    CHECK_OK(tha_heap_apply(b, snap, slen));
    struct item *h2;
    CHECK_OK(tha_root_get(b, "list", (void **)&h2));
    CHECK(h2 == head);
    same_list(h2, 50, fn_b); /* the id travelled, the mirror's binding applies */
    CHECK_OK(tha_heap_apply(b, delta, dlen));
    same_list(h2, 49, fn_b);
    CHECK_OK(tha_heap_apply(b, delta2, d2len));
    same_list(h2, 49, fn_b);
    h2->fn();
    CHECK(calls_b == 1 && calls_a == 0);
    CHECK_OK(tha_heap_check(b));
    uint64_t slot, target;
    CHECK(tha_heap_dangling(b, &slot, &target) == 0);
    tha_heap_destroy(b);
    free(snap);
    free(delta);
    free(delta2);
    tha_schema_release(s);
    tha_schema_release(m);
}

/* A snapshot past 16 MiB: its one run is copied by two threads, in
 * non-temporal pieces, and the function ids in it rewritten after. */
static void test_big_snapshot(void) {
    tha_schema_t *s = make_schema(fn_a), *m = make_schema(fn_b);
    tha_heap_t *a, *b;
    enum { N = 700000 }; /* 22 MB of items */
    CHECK_OK(tha_heap_create_at(&a, s, 64u << 20, THA_TRACK_EXPLICIT, BASE(14)));
    struct item *v;
    CHECK_OK(tha_heap_alloc(a, ITEM, N, (void **)&v));
    for (int i = 0; i < N; i++) {
        v[i].key = (uint64_t)i * 3;
        v[i].next = i + 1 < N ? &v[i + 1] : NULL;
        v[i].fn = i % 1000 == 0 && i > N / 2 ? fn_a : NULL; /* second half only */
    }
    CHECK_OK(tha_heap_touch(a, v, 0));
    CHECK_OK(tha_root_set(a, "v", v));
    size_t len;
    void *snap = encode(a, THA_FRAME_SNAPSHOT, &len);
    CHECK(len > (20u << 20));
    tha_heap_destroy(a);
    CHECK_OK(tha_heap_create_at(&b, m, 64u << 20, THA_TRACK_EXPLICIT, BASE(14)));
    for (int threads = 1; threads <= 2; threads++) {
        CHECK_OK(tha_set_threads(threads));
        CHECK_OK(tha_heap_apply(b, snap, len));
        int bad = 0;
        for (int i = 0; i < N; i++)
            bad += v[i].key != (uint64_t)i * 3 || v[i].next != (i + 1 < N ? &v[i + 1] : NULL) ||
                   v[i].fn != (i % 1000 == 0 && i > N / 2 ? fn_b : NULL);
        CHECK(bad == 0);
    }
    CHECK_OK(tha_heap_check(b));
    tha_heap_destroy(b);
    free(snap);
    tha_schema_release(s);
    tha_schema_release(m);
}

/* Frames and heaps of different modes or bases never meet. */
static void test_mismatch(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *a, *r, *other;
    CHECK_OK(tha_heap_create_at(&a, s, CAP, THA_TRACK_EXPLICIT, BASE(6)));
    CHECK_OK(tha_heap_create(&r, s, CAP, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create_at(&other, s, CAP, THA_TRACK_EXPLICIT, BASE(7)));
    struct item *it;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&it));
    CHECK_OK(tha_root_set(a, "it", it));
    size_t len, rlen;
    void *snap = encode(a, THA_FRAME_SNAPSHOT, &len);
    CHECK_RC(tha_heap_apply(r, snap, len), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(r), "same-address heap at 0x216000000000");
    CHECK_CONTAINS(tha_heap_errmsg(r), "relocatable");
    CHECK_RC(tha_heap_apply(other, snap, len), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(other), "0x216000000000");
    CHECK_CONTAINS(tha_heap_errmsg(other), "0x217000000000");
    /* a relocatable frame into a same-address heap */
    struct item *ri;
    CHECK_OK(tha_heap_alloc(r, ITEM, 1, (void **)&ri));
    void *rsnap = encode(r, THA_FRAME_SNAPSHOT, &rlen);
    tha_frame_info_t fi;
    CHECK_OK(tha_frame_info(rsnap, rlen, &fi));
    CHECK(fi.version == 1 && fi.base == 0);
    CHECK_RC(tha_heap_apply(other, rsnap, rlen), THA_EMISMATCH);
    CHECK_CONTAINS(tha_heap_errmsg(other), "relocatable heap");
    /* the heaps are untouched */
    CHECK_OK(tha_heap_check(other));
    CHECK_OK(tha_heap_check(r));
    free(snap);
    free(rsnap);
    tha_heap_destroy(a);
    tha_heap_destroy(r);
    tha_heap_destroy(other);
    tha_schema_release(s);
}

/* ---- untrusted frames ------------------------------------------------- */

/* frame.h's header: fields this test edits, at their offsets. */
#define OFF_VERSION 4
#define OFF_BASE64K 88

/* The frame offset of the 8-byte word holding v, or 0. */
static size_t find_word(const uint8_t *f, size_t len, uint64_t v) {
    for (size_t i = THA_FRAME_HEADER_SIZE; i + 8 <= len; i += 8)
        if (memcmp(f + i, &v, 8) == 0) return i;
    return 0;
}

static void test_untrusted(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *a, *b, *r;
    CHECK_OK(tha_heap_create_at(&a, s, CAP, THA_TRACK_EXPLICIT, BASE(8)));
    struct item *x, *y;
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&x));
    CHECK_OK(tha_heap_alloc(a, ITEM, 1, (void **)&y));
    x->next = y;
    x->key = 0x1234567;
    CHECK_OK(tha_heap_touch(a, x, 0));
    CHECK_OK(tha_root_set(a, "x", x));
    size_t len;
    uint8_t *f = encode(a, THA_FRAME_SNAPSHOT, &len);
    uint8_t *g = malloc(len);
    size_t at = find_word(f, len, (uint64_t)(uintptr_t)y);
    CHECK(at != 0);
    tha_heap_destroy(a);
    CHECK_OK(tha_heap_create_at(&b, s, CAP, THA_TRACK_EXPLICIT, BASE(8)));
    /* a pointer word below the base, past the top, into another process's
     * idea of the heap: each refused, naming the word */
    const uint64_t bad[] = {(uint64_t)(uintptr_t)BASE(8), /* base + 0 */
                            (uint64_t)(uintptr_t)BASE(8) - 8,
                            (uint64_t)(uintptr_t)BASE(8) + CAP,
                            0x1000, (1ull << 63) | 999 /* no such function */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(g, f, len);
        memcpy(g + at, &bad[i], 8);
        reseal(g, len);
        CHECK_RC(tha_heap_apply(b, g, len), THA_ERANGE);
        CHECK_CONTAINS(tha_heap_errmsg(b), "at offset 0x7050");
    }
    /* version and base must agree */
    memcpy(g, f, len);
    g[OFF_VERSION] = 1;
    reseal(g, len);
    CHECK_RC(tha_heap_apply(b, g, len), THA_EFRAME);
    CHECK_CONTAINS(tha_heap_errmsg(b), "version 1 with same-address base");
    memcpy(g, f, len);
    memset(g + OFF_BASE64K, 0, 4);
    reseal(g, len);
    CHECK_RC(tha_heap_apply(b, g, len), THA_EFRAME);
    memcpy(g, f, len);
    g[OFF_VERSION] = 3;
    reseal(g, len);
    CHECK_RC(tha_heap_apply(b, g, len), THA_EVERSION);
    CHECK_OK(tha_heap_apply(b, f, len)); /* the frame itself is fine */
    CHECK_OK(tha_heap_check(b));
    tha_heap_destroy(b);
    free(f);

    /* an untyped allocation smuggled into a relocatable frame: a
     * same-address image with no typed pointers, relabelled version 1 */
    CHECK_OK(tha_heap_create_at(&a, s, CAP, THA_TRACK_EXPLICIT, BASE(9)));
    void *raw;
    CHECK_OK(tha_heap_alloc(a, THA_T_RAW, 64, &raw));
    f = encode(a, THA_FRAME_SNAPSHOT, &len);
    tha_heap_destroy(a);
    f[OFF_VERSION] = 1;
    memset(f + OFF_BASE64K, 0, 4);
    reseal(f, len);
    CHECK_OK(tha_heap_create(&r, s, CAP, THA_TRACK_EXPLICIT));
    CHECK_RC(tha_heap_apply(r, f, len), THA_EFRAME);
    CHECK_CONTAINS(tha_heap_errmsg(r), "untyped (tha_raw)");
    CHECK_OK(tha_heap_check(r));
    tha_heap_destroy(r);
    free(f);
    free(g);
    tha_schema_release(s);
}

/* tha_leaks sees into untyped allocations conservatively: any aligned word
 * holding an address inside a live allocation reaches it. */
static void test_leaks_conservative(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create_at(&h, s, CAP, THA_TRACK_EXPLICIT, BASE(10)));
    void **root, **inner;
    struct item *kept, *interior, *lost;
    CHECK_OK(tha_heap_alloc(h, THA_T_RAW, 64, (void **)&root));
    CHECK_OK(tha_heap_alloc(h, THA_T_RAW, 40, (void **)&inner));
    CHECK_OK(tha_heap_alloc(h, ITEM, 1, (void **)&kept));
    CHECK_OK(tha_heap_alloc(h, ITEM, 2, (void **)&interior));
    CHECK_OK(tha_heap_alloc(h, ITEM, 1, (void **)&lost));
    root[0] = inner;
    root[1] = (void *)(uintptr_t)0xdeadbeef; /* not an address: ignored */
    inner[4] = &interior[1].key;              /* interior, last word of 40 */
    memcpy((uint8_t *)root + 20, &kept, 8);   /* unaligned: not a reference */
    root[5] = kept;
    CHECK_OK(tha_root_set(h, "root", root));
    size_t n;
    tha_leak_t out[4];
    CHECK_OK(tha_leaks(h, out, 4, &n));
    CHECK(n == 1 && out[0].offset == (uint64_t)((uint8_t *)lost - (uint8_t *)tha_heap_base(h)));
    root[5] = NULL; /* now only the unaligned copy remains */
    CHECK_OK(tha_leaks(h, out, 4, &n));
    CHECK(n == 2);
    uint64_t freed;
    CHECK_OK(tha_collect(h, &freed));
    CHECK(freed == 2 * sizeof(struct item));
    CHECK_OK(tha_leaks(h, out, 4, &n));
    CHECK(n == 0);
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

static char dir[] = "/tmp/tha-same-XXXXXX";

static void test_checkpoint_load(void) {
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *a, *b, *c = NULL;
    char path[64];
    snprintf(path, sizeof path, "%s/ck", dir);
    CHECK_OK(tha_heap_create_at(&a, s, CAP, THA_TRACK_DIFF, BASE(11)));
    struct item *head = build(a, 30, fn_a);
    CHECK_OK(tha_root_set(a, "list", head));
    CHECK_OK(tha_heap_checkpoint(a, path, NULL, NULL));
    tha_checkpoint_info_t ci;
    CHECK_OK(tha_checkpoint_info(path, &ci, NULL, NULL, 0));
    CHECK(ci.base == (uint64_t)(uintptr_t)BASE(11));
    /* the address is taken while the source lives */
    tha_load_report_t rep;
    tha_load_options_t opt = {.schema = s};
    CHECK_RC(tha_heap_load(&c, path, &opt, &rep), -EEXIST);
    CHECK(c == NULL);
    CHECK_CONTAINS(rep.msg, "0x21b000000000");
    tha_heap_destroy(a);
    CHECK_OK(tha_heap_load(&b, path, &opt, &rep));
    if (!b) return;
    CHECK(tha_heap_base(b) == BASE(11));
    struct item *h2;
    CHECK_OK(tha_root_get(b, "list", (void **)&h2));
    same_list(h2, 30, fn_a);
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(b, &st));
    CHECK(st.same_address == (uint64_t)(uintptr_t)BASE(11));
    tha_heap_destroy(b);
    unlink(path);
    tha_schema_release(s);
}

/* ---- replication to a forked standby ---------------------------------- */

static tha_net_t *standby_net;
static int bulks, same_handle_bulks;
static tha_heap_t *last_live;

static void standby_event(void *ctx, const tha_event_t *ev) {
    (void)ctx;
    if (ev->type != THA_EV_BULK_DONE) return;
    tha_heap_t *h = tha_net_heap(standby_net, 0);
    bulks++;
    if (h == last_live) same_handle_bulks++;
    last_live = h;
}

/* The standby: two actives in turn (two frame series, both at BASE(12);
 * no function pointers: a standby without a heap has nothing to bind):
 * the first bulk sync creates the mirror at the base, the second lands on
 * the base the mirror holds and replaces its image in place. */
static int standby_main(tha_net_t *n) {
    for (int c = 0; c < 2; c++) {
        if (tha_net_standby_accept(n, 20000)) return 10 + c;
        if (tha_net_standby_serve(n, 0)) {
            fprintf(stderr, "standby: %s\n", tha_net_errmsg(n));
            return 20 + c;
        }
        tha_heap_t *h = tha_net_heap(n, 0);
        if (!h || tha_heap_base(h) != BASE(12)) return 30 + c;
        struct item *it;
        if (tha_root_get(h, "list", (void **)&it)) return 40 + c;
        int len = c == 0 ? 40 : 25;
        int before = check_failures;
        same_list(it, len, NULL);
        if (check_failures != before) return 50 + c;
        if (tha_heap_check(h)) return 60 + c;
    }
    if (bulks != 2 || same_handle_bulks != 1) return 70;
    return 0;
}

static void test_net_standby(void) {
    uint16_t port = 0;
    tha_net_t *sb;
    tha_net_options_t sopt = {.timeout_ms = 5000, .on_event = standby_event};
    CHECK_OK(tha_net_standby_listen(&sb, NULL, "127.0.0.1", &port, &sopt));
    standby_net = sb;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int rc = standby_main(sb);
        tha_net_close(sb);
        _exit(rc);
    }
    tha_net_close(sb);
    tha_schema_t *s = make_schema(fn_a);
    for (int round = 0; round < 2; round++) {
        tha_heap_t *h;
        CHECK_OK(tha_heap_create_at(&h, s, 8u << 20, THA_TRACK_AUTO, BASE(12)));
        int len = round == 0 ? 40 : 25;
        struct item *head = build(h, len + 1, NULL);
        CHECK_OK(tha_root_set(h, "list", head));
        tha_net_t *n;
        tha_net_options_t opt = {.timeout_ms = 5000};
        CHECK_OK(tha_net_active_open(&n, h, "127.0.0.1", port, &opt));
        /* drop the last element: a delta with a free and plain writes */
        struct item *it = head;
        while (it->next->next) it = it->next;
        CHECK_OK(tha_heap_free(h, it->next->blob));
        CHECK_OK(tha_heap_free(h, it->next));
        it->next = NULL;
        ((void **)it->blob)[1] = NULL;
        uint64_t seq;
        CHECK_OK(tha_net_sync(n, THA_ACK_APPLIED, 5000, &seq));
        CHECK(seq >= 1);
        tha_net_close(n);
        tha_heap_destroy(h);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        fprintf(stderr, "standby exit status %d\n", WEXITSTATUS(status));
    tha_schema_release(s);
}

/* A standby where something else holds the active's base refuses the
 * bulk sync, naming the address and the mapping there. */
static void test_net_base_taken(void) {
    uint16_t port = 0;
    tha_net_t *sb;
    tha_net_options_t sopt = {.timeout_ms = 5000};
    CHECK_OK(tha_net_standby_listen(&sb, NULL, "127.0.0.1", &port, &sopt));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        void *page = mmap((uint8_t *)BASE(13) + 8192, 4096, PROT_READ,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        int rc = page == MAP_FAILED ? 1 : 0;
        if (!rc && tha_net_standby_accept(sb, 20000)) rc = 2;
        if (!rc && tha_net_standby_serve(sb, 0) == 0) rc = 3;
        /* (valgrind takes MAP_FIXED_NOREPLACE for a hint, as kernels before
         * 4.17 do: the other message, same facts) */
        if (!rc && (!strstr(tha_net_errmsg(sb), "[0x21d000000000, 0x21d000800000) is "
                                                "taken") ||
                    !strstr(tha_net_errmsg(sb), "21d000002000-21d000003000 r--p")))
            rc = 4;
        if (rc) fprintf(stderr, "standby: %d: %s\n", rc, tha_net_errmsg(sb));
        if (!rc && tha_net_heap(sb, 0)) rc = 5;
        tha_net_close(sb);
        _exit(rc);
    }
    tha_net_close(sb);
    tha_schema_t *s = make_schema(fn_a);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create_at(&h, s, 8u << 20, THA_TRACK_EXPLICIT, BASE(13)));
    tha_net_t *n = NULL;
    tha_net_options_t opt = {.timeout_ms = 5000};
    int rc = tha_net_active_open(&n, h, "127.0.0.1", port, &opt);
    if (rc == 0) rc = tha_net_sync(n, THA_ACK_APPLIED, 5000, NULL);
    CHECK(rc != 0);
    tha_net_close(n);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    RUN(test_create_at);
    RUN(test_raw_needs_same_address);
    RUN(test_mirror_in_process);
    RUN(test_big_snapshot);
    RUN(test_mismatch);
    RUN(test_untrusted);
    RUN(test_leaks_conservative);
    RUN(test_checkpoint_load);
    RUN(test_net_standby);
    RUN(test_net_base_taken);
    rmdir(dir);
    return CHECK_DONE();
}

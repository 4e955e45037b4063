/* test_track.c — finding what changed (track.c, wp.c) and encoding it
 * (codec.c): a sync collects once, whatever its size against the
 * backlog's first guess; diff, wp and explicit deltas of random writes
 * leave a mirror equal to the source; the two-thread compare finds the
 * same blocks as one thread; a too-small buffer reports the size the next
 * encode needs and changes nothing. */
#include "tha.h"
#include "tha_internal.h"
#include "check.h"

#include <stdint.h>
#include <stdlib.h>

struct emp { /* 64 bytes: in an array, each one spans two blocks */
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct emp *peer;
};

static uint32_t EMP;
#define N 200000u /* 12.8 MB: a compare of it takes two threads */

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, peer, "emp", 0));
    CHECK_OK(tha_schema_seal(s));
    EMP = tha_schema_type_id(s, EMP);
    return s;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A heap in mode tracking with one array of N emps, or NULL if the mode
 * cannot start here (wp without userfaultfd or signals). */
static tha_heap_t *company(tha_schema_t *s, int tracking, struct emp **es) {
    tha_heap_t *h;
    if (tha_heap_create(&h, s, 64u << 20, tracking) != 0) return NULL;
    CHECK_OK(tha_heap_alloc(h, EMP, N, (void **)es));
    for (uint32_t i = 0; i < N; i++) {
        (*es)[i].id = i;
        (*es)[i].mgr = &(*es)[i / 2];
    }
    CHECK_OK(tha_root_set(h, "emps", *es));
    if (tracking == THA_TRACK_EXPLICIT) CHECK_OK(tha_heap_touch(h, *es, N * sizeof **es));
    return h;
}

/* Salary and mgr of about n random records; explicit mode touches them. */
static void mutate(tha_heap_t *h, struct emp *es, uint32_t n, int touch) {
    for (uint32_t k = 0; k < n; k++) {
        struct emp *e = &es[next() % N];
        e->salary = (double)(next() % 100000);
        e->mgr = &es[next() % N];
        if (touch) CHECK_OK(tha_heap_touch(h, &e->salary, 16));
    }
}

static tha_heap_t *mirror_of(tha_heap_t *h, tha_schema_t *s) {
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n));
    void *f = malloc(n);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, f, n, &len));
    tha_heap_t *m;
    CHECK_OK(tha_heap_create(&m, s, 64u << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_apply(m, f, len));
    free(f);
    return m;
}

/* Relocatable heaps: a mirror equal to its source has the same image
 * with pointer words as offsets; compare record by record. */
static int equal(const struct emp *es, tha_heap_t *m) {
    void *p;
    if (tha_root_get(m, "emps", &p) != 0 || !p) return 0;
    const struct emp *me = p;
    for (uint32_t i = 0; i < N; i++) {
        if (me[i].id != es[i].id || me[i].salary != es[i].salary) return 0;
        if ((const uint8_t *)me[i].mgr - (const uint8_t *)me !=
            (const uint8_t *)es[i].mgr - (const uint8_t *)es)
            return 0;
    }
    return 1;
}

/* Rounds of random writes (small, larger than the 32 KiB guess, most of
 * the image) synced through a backlog: each sync collects once, and the
 * mirror that applies them equals the source. */
static void test_backlog_sync(int tracking, const char *name) {
    tha_schema_t *s = make_schema();
    struct emp *es;
    tha_heap_t *h = company(s, tracking, &es);
    if (!h) {
        fprintf(stderr, "test_track: %s tracking not available here, skipped\n", name);
        tha_schema_release(s);
        return;
    }
    tha_heap_t *m = mirror_of(h, s);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    static const uint32_t sizes[] = {10, 5000, 5000, 100000, 0, 1}; /* guess: short, fits, large */
    for (unsigned r = 0; r < sizeof sizes / sizeof sizes[0]; r++) {
        mutate(h, es, sizes[r], tracking == THA_TRACK_EXPLICIT);
        uint64_t c0 = h->collects, seq;
        size_t len;
        CHECK_OK(tha_backlog_encode(bl, h, &seq, &len));
        CHECK(h->collects == c0 + (tracking == THA_TRACK_EXPLICIT ? 0 : 1));
        if (sizes[r] >= 5000) CHECK(len > (32u << 10));
        tha__bframe_t *f = tha__backlog_get(bl, seq);
        CHECK(f && f->len == len);
        if (f) CHECK_OK(tha_heap_apply(m, f->data, f->len));
        tha__bframe_release(f);
        CHECK(equal(es, m));
    }
    CHECK_OK(tha_heap_check(m));
    tha_backlog_destroy(bl);
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* One thread or two, a compare marks the same blocks. */
static void test_threads_find_the_same(void) {
    tha_schema_t *s = make_schema();
    struct emp *a, *b;
    tha_heap_t *ha = company(s, THA_TRACK_DIFF, &a), *hb = company(s, THA_TRACK_DIFF, &b);
    size_t n;
    CHECK_OK(tha_heap_frame_size(ha, THA_FRAME_SNAPSHOT, &n)); /* a baseline each */
    CHECK_OK(tha_heap_frame_size(hb, THA_FRAME_SNAPSHOT, &n));
    tha__clear_dirty(ha);
    tha__clear_dirty(hb);
    uint64_t seed = rng;
    mutate(ha, a, 20000, 0);
    rng = seed;
    mutate(hb, b, 20000, 0);
    CHECK_OK(tha_set_threads(1));
    CHECK_OK(tha_heap_frame_size(ha, THA_FRAME_DELTA, &n));
    CHECK_OK(tha_set_threads(2));
    size_t n2;
    CHECK_OK(tha_heap_frame_size(hb, THA_FRAME_DELTA, &n2));
    CHECK(n == n2 && n > (1u << 20));
    uint64_t words = (ha->nblocks + 63) / 64;
    CHECK(memcmp(ha->dirty, hb->dirty, words * 8) == 0);
    CHECK(memcmp(ha->shadow, ha->base, tha__reg(ha)->top) == 0);
    CHECK(memcmp(hb->shadow, hb->base, tha__reg(hb)->top) == 0);
    tha_heap_destroy(ha);
    tha_heap_destroy(hb);
    tha_schema_release(s);
}

/* A buffer one byte short: THA_ETOOSMALL with the exact size, seq and
 * dirty bits as they were; that size then fits. */
static void test_too_small_then_exact(void) {
    tha_schema_t *s = make_schema();
    struct emp *es;
    tha_heap_t *h = company(s, THA_TRACK_DIFF, &es);
    tha_heap_t *m = mirror_of(h, s);
    mutate(h, es, 400000, 0); /* >= 2^17 dirty blocks: two threads encode it */
    size_t need, len = 0;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &need));
    uint8_t *f = malloc(need);
    uint64_t seq = h->seq, dirty = tha__count_dirty(h);
    CHECK(dirty >= 1u << 17); /* codec.c's PAR_DELTA_BLOCKS: two threads */
    CHECK_RC(tha_heap_encode(h, THA_FRAME_DELTA, f, need - 1, &len), THA_ETOOSMALL);
    CHECK(len == need && h->seq == seq && tha__count_dirty(h) == dirty);
    CHECK_RC(tha_heap_encode(h, THA_FRAME_DELTA, NULL, 0, &len), THA_ETOOSMALL);
    CHECK(len == need && h->seq == seq && tha__count_dirty(h) == dirty);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, f, need, &len));
    CHECK(len == need && h->seq == seq + 1 && tha__count_dirty(h) == 0);
    CHECK_OK(tha_heap_apply(m, f, len));
    CHECK(equal(es, m));
    free(f);
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* A foreign pointer fails the encode with the first bad word in address
 * order named, whichever thread met it; nothing changes. */
static void test_foreign_in_either_half(void) {
    tha_schema_t *s = make_schema();
    struct emp *es;
    tha_heap_t *h = company(s, THA_TRACK_DIFF, &es);
    tha_heap_t *m = mirror_of(h, s);
    static int outside;
    mutate(h, es, 400000, 0); /* two threads: see above */
    es[N - 3].peer = (struct emp *)(void *)&outside; /* in the second half */
    size_t need, len;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &need));
    uint8_t *f = malloc(need);
    uint64_t seq = h->seq, dirty = tha__count_dirty(h);
    CHECK(dirty >= 1u << 17);
    CHECK_RC(tha_heap_encode(h, THA_FRAME_DELTA, f, need, &len), THA_EFOREIGN);
    CHECK_CONTAINS(tha_heap_errmsg(h), "element 199997 ");
    CHECK(h->seq == seq && tha__count_dirty(h) == dirty);
    es[5].peer = (struct emp *)(void *)&outside; /* and in the first */
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &need));
    f = realloc(f, need);
    CHECK_RC(tha_heap_encode(h, THA_FRAME_DELTA, f, need, &len), THA_EFOREIGN);
    CHECK_CONTAINS(tha_heap_errmsg(h), "element 5 ");
    es[5].peer = es[N - 3].peer = NULL;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &need));
    f = realloc(f, need);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, f, need, &len));
    CHECK_OK(tha_heap_apply(m, f, len));
    CHECK(equal(es, m));
    free(f);
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    test_backlog_sync(THA_TRACK_DIFF, "diff");
    /* Under valgrind (make valgrind) write-protect tracking cannot run:
     * memcheck reports the very writes the SIGSEGV handler exists to see. */
    if (!getenv("THA_TEST_NO_WP")) test_backlog_sync(THA_TRACK_WP, "wp");
    test_backlog_sync(THA_TRACK_EXPLICIT, "explicit");
    test_threads_find_the_same();
    test_too_small_then_exact();
    test_foreign_in_either_half();
    return check_failures ? 1 : 0;
}

/* test_heap.c — allocator, roots, lookup and the frame codec, end to end in C:
 * random operations on a source heap mirrored by deltas into a second heap
 * at another address, checked object by object after every frame. */
#include "tha.h"
#include "check.h"
#include "ship.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct dept;
struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct dept *dept;
    struct emp *reports[4];
    void (*on_raise)(void);
};
struct dept {
    char name[32];
    uint32_t id;
    struct emp *head;
};

static uint64_t slot_sink; /* an address outside every heap */
static void raise_a(void) {}
static void raise_b(void) {}

static uint32_t EMP, DEPT;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, dept, "dept", 0)); /* late bound */
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, reports, "emp", 4));
    CHECK_OK(THA_FIELD_FUNC(s, EMP, struct emp, on_raise, 0));
    CHECK_OK(THA_STRUCT(s, struct dept, "dept", &DEPT));
    CHECK_OK(THA_FIELD_SCALAR(s, DEPT, struct dept, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, DEPT, struct dept, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_PTR(s, DEPT, struct dept, head, "emp", 0));
    CHECK_OK(tha_schema_add_func(s, "raise_a", raise_a));
    CHECK_OK(tha_schema_add_func(s, "raise_b", raise_b));
    CHECK_OK(tha_schema_seal(s));
    /* canonical ids, as the heap reports them (handles work as input) */
    EMP = tha_schema_type_id(s, EMP);
    DEPT = tha_schema_type_id(s, DEPT);
    return s;
}

static uint64_t off_of(tha_heap_t *h, const void *p) {
    return p ? (uint64_t)((const char *)p - (const char *)tha_heap_base(h)) : 0;
}

/* Every live object and root of a and b agree, pointers compared as offsets. */
static bool mirrors(tha_heap_t *a, tha_heap_t *b) {
    uint64_t ca = 0, cb = 0;
    tha_obj_t oa, ob;
    for (;;) {
        int ma = tha_heap_next(a, &ca, &oa), mb = tha_heap_next(b, &cb, &ob);
        if (ma != mb) return false;
        if (!ma) break;
        if (oa.offset != ob.offset || oa.type_id != ob.type_id || oa.count != ob.count)
            return false;
        for (uint32_t i = 0; i < oa.count; i++) {
            if (oa.type_id == EMP) {
                struct emp *x = (struct emp *)oa.ptr + i, *y = (struct emp *)ob.ptr + i;
                if (memcmp(x->name, y->name, 32) || x->id != y->id ||
                    x->salary != y->salary || off_of(a, x->mgr) != off_of(b, y->mgr) ||
                    off_of(a, x->dept) != off_of(b, y->dept) || x->on_raise != y->on_raise)
                    return false;
                for (int k = 0; k < 4; k++)
                    if (off_of(a, x->reports[k]) != off_of(b, y->reports[k])) return false;
            } else if (oa.type_id == DEPT) {
                struct dept *x = (struct dept *)oa.ptr + i, *y = (struct dept *)ob.ptr + i;
                if (memcmp(x->name, y->name, 32) || x->id != y->id ||
                    off_of(a, x->head) != off_of(b, y->head))
                    return false;
            } else if (memcmp(oa.ptr, ob.ptr, oa.size * oa.count)) {
                return false;
            }
        }
    }
    uint32_t ra = 0, rb = 0;
    const char *na, *nb;
    void *pa, *pb;
    for (;;) {
        int ma = tha_root_next(a, &ra, &na, &pa), mb = tha_root_next(b, &rb, &nb, &pb);
        if (ma != mb) return false;
        if (!ma) return true;
        if (strcmp(na, nb) || off_of(a, pa) != off_of(b, pb)) return false;
    }
}

static void test_alloc_free_lookup(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 8 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    struct emp *e, *team;
    CHECK_OK(tha_heap_alloc(h, EMP, 1, (void **)&e));
    CHECK_OK(tha_heap_alloc(h, EMP, 8, (void **)&team));
    CHECK(((uintptr_t)e & 7) == 0 && e->id == 0 && team[7].mgr == NULL);
    tha_obj_t o;
    CHECK_OK(tha_heap_lookup(h, &team[3].salary, &o));
    CHECK(o.ptr == team && o.count == 8 && o.type_id == EMP && o.size == sizeof *e);
    CHECK_RC(tha_heap_free(h, &team[3]), THA_ENOTLIVE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "interior pointer");
    CHECK_RC(tha_heap_free(h, (void *)&o), THA_EFOREIGN);
    CHECK_OK(tha_heap_free(h, team));
    CHECK_RC(tha_heap_free(h, team), THA_ENOTLIVE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "double free");
    CHECK_RC(tha_heap_lookup(h, team, &o), THA_ENOTLIVE);
    /* large span, then freed and coalesced, then reused */
    char *big, *big2;
    CHECK_OK(tha_heap_alloc(h, THA_T_CHAR, 100000, (void **)&big));
    memset(big, 7, 100000);
    CHECK_OK(tha_heap_lookup(h, big + 99999, &o));
    CHECK(o.ptr == big && o.count == 100000);
    CHECK_OK(tha_heap_free(h, big));
    CHECK_OK(tha_heap_alloc(h, THA_T_CHAR, 100000, (void **)&big2));
    CHECK(big2 == big && big2[500] == 0);
    /* capacity */
    void *huge;
    CHECK_RC(tha_heap_alloc(h, THA_T_CHAR, 9u << 20, &huge), THA_ECAPACITY);
    CHECK_CONTAINS(tha_heap_errmsg(h), "exceeds the heap capacity");
    /* roots */
    CHECK_OK(tha_root_set(h, "boss", e));
    CHECK_RC(tha_heap_free(h, e), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "root 'boss'");
    void *got;
    CHECK_OK(tha_root_get(h, "boss", &got));
    CHECK(got == e);
    CHECK_OK(tha_root_set(h, "boss", NULL));
    CHECK_RC(tha_root_get(h, "boss", &got), THA_ENOTFOUND);
    CHECK_OK(tha_heap_free(h, e));
    CHECK_OK(tha_heap_free(h, NULL)); /* as free(NULL) */
    /* root names: THA_ROOT_NAME_MAX - 1 bytes, no more */
    char name[THA_ROOT_NAME_MAX + 1];
    memset(name, 'r', sizeof name);
    name[THA_ROOT_NAME_MAX - 1] = 0;
    CHECK_OK(tha_root_set(h, name, big));
    CHECK_OK(tha_root_get(h, name, &got));
    CHECK(got == big);
    CHECK_OK(tha_root_set(h, name, NULL));
    name[THA_ROOT_NAME_MAX - 1] = 'r';
    name[THA_ROOT_NAME_MAX] = 0;
    CHECK_RC(tha_root_set(h, name, big), THA_EINVAL);
    CHECK_CONTAINS(tha_heap_errmsg(h), "55");
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.live_objects == 1 && st.live_bytes == 100000);
    tha_heap_destroy(h);
}

/* Fill the heap until it is full, free everything, do it again: the second
 * round must fit as well as the first (spans coalesce, slabs return). */
static void test_reuse_after_full(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 2 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    int rounds[2] = {0, 0};
    for (int round = 0; round < 2; round++) {
        void **ptrs = malloc(sizeof(void *) * 100000);
        int n = 0;
        for (;; n++) {
            uint32_t count = 1 + (uint32_t)(n * 7919 % 300);
            int rc = tha_heap_alloc(h, n % 3 ? EMP : THA_T_CHAR, count, &ptrs[n]);
            if (rc) {
                CHECK_RC(rc, THA_ECAPACITY);
                break;
            }
        }
        rounds[round] = n;
        for (int i = 0; i < n; i += 2) CHECK_OK(tha_heap_free(h, ptrs[i]));
        for (int i = 1; i < n; i += 2) CHECK_OK(tha_heap_free(h, ptrs[i]));
        free(ptrs);
    }
    CHECK(rounds[0] > 10 && rounds[1] >= rounds[0] - 2);
    CHECK_OK(tha_heap_check(h));
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.live_objects == 0 && st.live_bytes == 0);
    tha_heap_destroy(h);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_mirror_random(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 16 << 20, THA_TRACK_EXPLICIT));
    /* b first takes a smaller heap's address so the two bases differ */
    CHECK_OK(tha_heap_create(&b, s, 16 << 20, THA_TRACK_EXPLICIT));
    CHECK(tha_heap_base(a) != tha_heap_base(b));
    tha_schema_release(s);
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    enum { N = 400 };
    struct emp *live[N] = {0};
    for (int step = 0; step < 3000; step++) {
        int i = (int)(next_rand() % N), j = (int)(next_rand() % N);
        switch (next_rand() % 6) {
        case 0:
        case 1:
            if (!live[i]) {
                uint32_t count = 1 + (uint32_t)(next_rand() % 3);
                CHECK_OK(tha_heap_alloc(a, EMP, count, (void **)&live[i]));
                snprintf(live[i]->name, 32, "e%d", step);
                live[i]->on_raise = step % 2 ? raise_a : raise_b;
                CHECK_OK(tha_heap_touch(a, live[i], 0));
            }
            break;
        case 2:
            if (live[i]) {
                uint32_t cursor = 0;
                const char *name;
                void *p;
                bool rooted = false;
                while (tha_root_next(a, &cursor, &name, &p))
                    rooted |= p == (void *)live[i];
                for (int k = 0; k < N; k++) /* drop references to it */
                    if (live[k] && live[k]->mgr == live[i]) {
                        live[k]->mgr = NULL;
                        CHECK_OK(tha_heap_touch(a, &live[k]->mgr, 8));
                    }
                if (!rooted) {
                    CHECK_OK(tha_heap_free(a, live[i]));
                    live[i] = NULL;
                }
            }
            break;
        case 3:
            if (live[i]) {
                live[i]->mgr = live[j];
                live[i]->reports[step % 4] = live[j];
                live[i]->salary = (double)step;
                CHECK_OK(tha_heap_touch(a, live[i], 0));
            }
            break;
        case 4:
            if (live[i]) {
                char name[16];
                snprintf(name, sizeof name, "r%d", (int)(next_rand() % 8));
                CHECK_OK(tha_root_set(a, name, live[i]));
            }
            break;
        case 5:
            CHECK_OK(ship(a, b, THA_FRAME_DELTA));
            CHECK(mirrors(a, b));
            CHECK_OK(tha_heap_check(b));
            break;
        }
        if (tha_heap_check(a)) {
            fprintf(stderr, "step %d: %s\n", step, tha_heap_errmsg(a));
            CHECK(0);
            break;
        }
        /* references to freed objects are not followed by mirrors() */
        for (int k = 0; k < N; k++)
            if (live[k])
                for (int r = 0; r < 4; r++) {
                    bool ok = false;
                    for (int m = 0; m < N && !ok; m++) ok = live[k]->reports[r] == live[m];
                    if (!ok && live[k]->reports[r]) {
                        live[k]->reports[r] = NULL;
                        CHECK_OK(tha_heap_touch(a, &live[k]->reports[r], 8));
                    }
                }
    }
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(mirrors(a, b));
    /* b can carry on as the source: allocate there and ship back */
    struct emp *x;
    CHECK_OK(tha_heap_alloc(b, EMP, 1, (void **)&x));
    CHECK_OK(ship(b, a, THA_FRAME_SNAPSHOT));
    CHECK(mirrors(a, b));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
}

static void test_bad_frames(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 4 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 4 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    struct emp *e, *f;
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&e));
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&f));
    e->mgr = f;
    CHECK_OK(tha_heap_touch(a, e, 0));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    e->salary = 5;
    CHECK_OK(tha_heap_touch(a, &e->salary, 8));
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_DELTA, &n));
    uint8_t *frame = malloc(n), *bad = malloc(n);
    CHECK_OK(tha_heap_encode(a, THA_FRAME_DELTA, frame, n, &len));
    /* every truncation and every single-bit flip is refused, b unchanged */
    for (size_t cut = 0; cut < len; cut++)
        CHECK(tha_heap_apply(b, frame, cut) < 0);
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, frame, len);
        bad[i] ^= (uint8_t)(1u << (i % 8));
        CHECK(tha_heap_apply(b, bad, len) < 0);
    }
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(b, &st));
    CHECK(st.frames_applied == 1);
    CHECK_OK(tha_heap_apply(b, frame, len));
    CHECK_RC(tha_heap_apply(b, frame, len), THA_ESEQ); /* replay */
    CHECK_CONTAINS(tha_heap_errmsg(b), "out of sequence");
    CHECK(mirrors(a, b));
    /* a foreign pointer fails the encode and loses nothing */
    static struct emp outside;
    e->mgr = &outside;
    CHECK_OK(tha_heap_touch(a, e, 0));
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_DELTA, &n));
    frame = realloc(frame, n);
    CHECK_RC(tha_heap_encode(a, THA_FRAME_DELTA, frame, n, &len), THA_EFOREIGN);
    CHECK_CONTAINS(tha_heap_errmsg(a), "field mgr");
    CHECK_OK(tha_heap_stats(a, &st));
    CHECK(st.dirty_blocks > 0);
    e->mgr = NULL;
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(mirrors(a, b));
    free(frame);
    free(bad);
    tha_heap_destroy(a);
    tha_heap_destroy(b);
}

/* Transparent modes: plain writes, no touch, reach the mirror; applied
 * blocks do not come back as local changes. mode: a tracking value; force:
 * THA_WP_MECHANISM for wp ("mprotect" takes SIGSEGV) or NULL. */
static void transparent(int mode, const char *force, const char *want_name) {
    if (force) setenv("THA_WP_MECHANISM", force, 1);
    else unsetenv("THA_WP_MECHANISM");
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 64 << 20, mode));
    CHECK_OK(tha_heap_create(&b, s, 64 << 20, mode));
    unsetenv("THA_WP_MECHANISM");
    tha_schema_release(s);
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(a, &st));
    CHECK(st.tracking == (mode == THA_TRACK_AUTO ? st.tracking : mode));
    CHECK(st.tracking == THA_TRACK_DIFF || st.tracking == THA_TRACK_WP);
    if (want_name) CHECK(strcmp(tha_heap_tracking_name(a), want_name) == 0);
    struct emp *team;
    CHECK_OK(tha_heap_alloc(a, EMP, 50, (void **)&team));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    for (int round = 0; round < 20; round++) {
        int i = (int)(next_rand() % 50), j = (int)(next_rand() % 50);
        team[i].salary = round;          /* no touch anywhere */
        team[i].mgr = &team[j];
        team[j].reports[round % 4] = &team[i];
        if (round % 5 == 4) { /* a big allocation commits fresh pages */
            struct emp *big;
            CHECK_OK(tha_heap_alloc(a, EMP, 20000, (void **)&big));
            for (int k = round * 100; k < 20000; k += 7) big[k].salary = k;
        }
        CHECK_OK(ship(a, b, THA_FRAME_DELTA));
        CHECK(mirrors(a, b));
    }
    size_t n;
    CHECK_OK(tha_heap_frame_size(b, THA_FRAME_DELTA, &n));
    CHECK(n == THA_FRAME_HEADER_SIZE); /* what b applied is not b's change */
    tha_heap_destroy(a);
    tha_heap_destroy(b);
}

static void test_diff_mode(void) { transparent(THA_TRACK_DIFF, NULL, "shadow-diff"); }
static void test_auto_mode(void) { transparent(THA_TRACK_AUTO, NULL, NULL); }
static void test_wp_mode(void) { transparent(THA_TRACK_WP, NULL, NULL); }
static void test_wp_mprotect(void) { transparent(THA_TRACK_WP, "mprotect", "mprotect"); }

/* The size an encode reports with THA_ETOOSMALL is the size the next encode
 * needs: a plain write made between the two (another thread, in diff and
 * wp modes) goes in the frame after, never into a second THA_ETOOSMALL.
 * And a failed encode changes nothing: seq and dirty blocks stay. */
static void size_then_fill(int mode, const char *force) {
    if (force) setenv("THA_WP_MECHANISM", force, 1);
    else unsetenv("THA_WP_MECHANISM");
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 16 << 20, mode));
    CHECK_OK(tha_heap_create(&b, s, 16 << 20, mode));
    unsetenv("THA_WP_MECHANISM");
    tha_schema_release(s);
    struct emp *team;
    CHECK_OK(tha_heap_alloc(a, EMP, 2000, (void **)&team));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    for (int round = 1; round <= 3; round++) {
        for (int i = 0; i < 1000; i++) {
            team[i].salary = round;
            if (mode == THA_TRACK_EXPLICIT) CHECK_OK(tha_heap_touch(a, &team[i], 0));
        }
        tha_stats_t before, after;
        CHECK_OK(tha_heap_stats(a, &before));
        size_t need = 0, len = 0;
        char small[256];
        CHECK_RC(tha_heap_encode(a, THA_FRAME_DELTA, small, sizeof small, &need),
                 THA_ETOOSMALL);
        CHECK_OK(tha_heap_stats(a, &after));
        CHECK(after.seq == before.seq);
        if (mode == THA_TRACK_EXPLICIT) CHECK(after.dirty_blocks == before.dirty_blocks);
        /* a racing writer dirties more blocks (in explicit mode it would
         * touch, which is a heap call: not a race, and not done here) */
        for (int i = 1000; i < 2000; i++) team[i].salary = round;
        void *buf = malloc(need);
        CHECK_OK(tha_heap_encode(a, THA_FRAME_DELTA, buf, need, &len));
        CHECK(len == need);
        CHECK_OK(tha_heap_apply(b, buf, len));
        free(buf);
        if (mode == THA_TRACK_EXPLICIT)
            for (int i = 1000; i < 2000; i++) CHECK_OK(tha_heap_touch(a, &team[i], 0));
        CHECK_OK(ship(a, b, THA_FRAME_DELTA)); /* the racing writes */
        CHECK(mirrors(a, b));
    }
    tha_heap_destroy(a);
    tha_heap_destroy(b);
}

static void test_size_then_fill(void) {
    size_then_fill(THA_TRACK_EXPLICIT, NULL);
    size_then_fill(THA_TRACK_DIFF, NULL);
    size_then_fill(THA_TRACK_WP, NULL);
    size_then_fill(THA_TRACK_WP, "mprotect");
}

/* A mirror made in explicit mode switched to mode on a live heap: what it
 * applied is not a change, plain writes from the switch on are found, and
 * the switch back to explicit stops finding them. */
static void switched(int mode, const char *force) {
    if (force) setenv("THA_WP_MECHANISM", force, 1);
    else unsetenv("THA_WP_MECHANISM");
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b, *c;
    CHECK_OK(tha_heap_create(&a, s, 16 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 16 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&c, s, 16 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    struct emp *team;
    CHECK_OK(tha_heap_alloc(a, EMP, 50, (void **)&team));
    CHECK_OK(tha_root_set(a, "team", team));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    CHECK(mirrors(a, b));
    /* b is promoted: it becomes a source for c */
    CHECK(tha_heap_set_tracking(b, 99) == THA_EINVAL);
    CHECK_OK(tha_heap_set_tracking(b, mode));
    unsetenv("THA_WP_MECHANISM");
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(b, &st));
    CHECK(st.tracking == THA_TRACK_DIFF || st.tracking == THA_TRACK_WP);
    if (force) CHECK(strcmp(tha_heap_tracking_name(b), force) == 0);
    size_t n;
    CHECK_OK(tha_heap_frame_size(b, THA_FRAME_DELTA, &n));
    CHECK(n == THA_FRAME_HEADER_SIZE); /* nothing changed by switching */
    CHECK_OK(tha_heap_set_tracking(b, mode)); /* again: nothing to do */
    CHECK_OK(ship(b, c, THA_FRAME_SNAPSHOT));
    struct emp *bt, *ct;
    CHECK_OK(tha_root_get(b, "team", (void **)&bt));
    for (int round = 0; round < 10; round++) {
        bt[round].salary = 100 + round;    /* plain writes, no touch */
        bt[round + 1].mgr = &bt[round];
        if (round == 5) { /* a big allocation commits fresh pages */
            struct emp *big;
            CHECK_OK(tha_heap_alloc(b, EMP, 20000, (void **)&big));
            big[19999].salary = 7;
        }
        CHECK_OK(ship(b, c, THA_FRAME_DELTA));
        CHECK(mirrors(b, c));
    }
    CHECK_OK(tha_heap_check(b));
    /* back to explicit: plain writes are no longer found, touches are */
    bt[20].salary = 1;                        /* found: before the switch */
    CHECK_OK(tha_heap_set_tracking(b, THA_TRACK_EXPLICIT));
    CHECK(strcmp(tha_heap_tracking_name(b), "explicit") == 0);
    bt[21].salary = 2;                        /* not found */
    CHECK_OK(ship(b, c, THA_FRAME_DELTA));
    CHECK_OK(tha_root_get(c, "team", (void **)&ct));
    CHECK(ct[20].salary == 1 && ct[21].salary == 0);
    CHECK_OK(tha_heap_touch(b, &bt[21], sizeof bt[21]));
    CHECK_OK(ship(b, c, THA_FRAME_DELTA));
    CHECK(mirrors(b, c));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_heap_destroy(c);
}

static void test_set_tracking_diff(void) { switched(THA_TRACK_DIFF, NULL); }
static void test_set_tracking_auto(void) { switched(THA_TRACK_AUTO, NULL); }
static void test_set_tracking_mprotect(void) { switched(THA_TRACK_WP, "mprotect"); }

/* Explicit tracking when nobody knows which objects a library wrote:
 * touch_range across allocations and free space, touch_all. */
static void test_touch_range_and_all(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 8 << 20, THA_TRACK_EXPLICIT));
    struct emp *e[6];
    for (int i = 0; i < 6; i++) CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&e[i]));
    CHECK_OK(tha_heap_free(a, e[2])); /* free space inside the range */
    CHECK_OK(tha_root_set(a, "first", e[0]));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    for (int i = 0; i < 6; i++)
        if (i != 2) e[i]->id = 100 + (uint32_t)i; /* written, not touched */
    CHECK_OK(tha_heap_touch_range(a, &e[1]->id, (size_t)((char *)&e[3]->id + 4 -
                                                         (char *)&e[1]->id)));
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    void *r;
    CHECK_OK(tha_root_get(b, "first", &r));
    struct emp *m = r; /* the mirror's objects, at the same offsets */
    uint64_t stride = (uint64_t)((char *)e[1] - (char *)e[0]);
    struct emp *m1 = (struct emp *)((char *)m + stride), *m3 = (struct emp *)((char *)m + 3 * stride);
    struct emp *m5 = (struct emp *)((char *)m + 5 * stride);
    CHECK(m1->id == 101 && m3->id == 103);
    CHECK(m5->id == 0); /* outside the range: not carried */
    CHECK_OK(tha_heap_check(b));
    CHECK_OK(tha_heap_touch_all(a));
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK(m->id == 100 && m5->id == 105);
    CHECK_OK(tha_heap_check(b));
    /* outside the data pages, or past the top */
    CHECK_RC(tha_heap_touch_range(a, tha_heap_base(a), 64), THA_EFOREIGN);
    CHECK_CONTAINS(tha_heap_errmsg(a), "not inside the heap's data");
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(a, &st));
    CHECK_RC(tha_heap_touch_range(a, (char *)tha_heap_base(a) + st.top - 8, 64),
             THA_EFOREIGN);
    CHECK_RC(tha_heap_touch_range(a, &slot_sink, 8), THA_EFOREIGN);
    CHECK_OK(tha_heap_touch_range(a, e[0], 0));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

/* Roots by reference: two global list heads swapped by the program travel
 * without a tha_root_set (the seed demo's "exchange lists"). */
static struct emp *list1, *list2;

static void test_root_bind(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&b, s, 8 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&list1));
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&list2));
    list1->id = 1;
    list2->id = 2;
    CHECK_OK(tha_heap_touch(a, list1, 0));
    CHECK_OK(tha_heap_touch(a, list2, 0));
    CHECK_OK(tha_root_bind(a, "list1", (void *const *)&list1));
    CHECK_OK(tha_root_bind(a, "list2", (void *const *)&list2));
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    void *r1, *r2;
    CHECK_OK(tha_root_get(b, "list1", &r1));
    CHECK(((struct emp *)r1)->id == 1);
    struct emp *t = list1; /* exchange the lists: plain C, no tha call */
    list1 = list2;
    list2 = t;
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_root_get(b, "list1", &r1));
    CHECK_OK(tha_root_get(b, "list2", &r2));
    CHECK(((struct emp *)r1)->id == 2 && ((struct emp *)r2)->id == 1);
    list2 = NULL; /* NULL removes the root */
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_RC(tha_root_get(b, "list2", &r2), THA_ENOTFOUND);
    struct emp *gone = list1;
    CHECK_OK(tha_root_set(a, "list1", NULL));
    list1 = (struct emp *)&slot_sink; /* not in the heap: the frame fails, naming it */
    size_t n;
    CHECK_RC(tha_heap_frame_size(a, THA_FRAME_DELTA, &n), THA_EFOREIGN);
    CHECK_CONTAINS(tha_heap_errmsg(a), "root 'list1' bound to the variable");
    list1 = gone;
    CHECK_OK(tha_root_bind(a, "list1", NULL)); /* unbind: the root stays */
    CHECK_RC(tha_root_bind(a, "list1", NULL), THA_ENOTFOUND);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));

    /* A bound root follows its variable at free too: the head unlinked by
     * plain C (list1 = list1->mgr) and then freed, before any frame. */
    CHECK_OK(tha_root_bind(a, "list1", (void *const *)&list1));
    struct emp *head, *second;
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&head));
    CHECK_OK(tha_heap_alloc(a, EMP, 1, (void **)&second));
    head->mgr = second;
    list1 = head;
    CHECK_OK(ship(a, b, THA_FRAME_DELTA)); /* the root now holds head */
    list1 = head->mgr;
    CHECK_OK(tha_heap_free(a, head));
    CHECK_OK(tha_root_get(a, "list1", &r1));
    CHECK(r1 == second);
    /* while the variable still points at it, the allocation stays pinned */
    CHECK_RC(tha_heap_free(a, second), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(a), "its bound variable still points here");
    list1 = NULL; /* the list emptied: the root goes with its last node */
    CHECK_OK(tha_heap_free(a, second));
    CHECK_RC(tha_root_get(a, "list1", &r1), THA_ENOTFOUND);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_RC(tha_root_get(b, "list1", &r1), THA_ENOTFOUND);
    CHECK_OK(tha_heap_check(b));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

int main(void) {
    /* Under valgrind (make valgrind) write-protect tracking cannot run:
     * memcheck reports the very writes the SIGSEGV handler exists to see. */
    bool wp = !getenv("THA_TEST_NO_WP");
    if (wp) RUN(test_size_then_fill);
    RUN(test_diff_mode);
    RUN(test_auto_mode);
    if (wp) RUN(test_wp_mode);
    if (wp) RUN(test_wp_mprotect);
    RUN(test_set_tracking_diff);
    RUN(test_set_tracking_auto);
    if (wp) RUN(test_set_tracking_mprotect);
    RUN(test_alloc_free_lookup);
    RUN(test_touch_range_and_all);
    RUN(test_root_bind);
    RUN(test_reuse_after_full);
    RUN(test_mirror_random);
    RUN(test_bad_frames);
    return CHECK_DONE();
}

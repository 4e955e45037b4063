/* test_uthash.c — uthash 2.3, unmodified, on a tha heap through
 * tha_uthash.h: thousands of users in three tables (HASH_ADD_INT, a
 * HASH_ADD_STR key inside the element, HASH_ADD_KEYPTR keys in strings
 * allocated in the heap), deletes, bucket arrays reallocated several
 * times, HASH_SORT; mirrored (a snapshot, then deltas) to a heap at
 * another base made from the schema the snapshot carries, and searched and
 * walked there with uthash's own macros; the mirror promoted, growing on
 * its own and shipping back. Also: the refusals a user meets (no heap, a
 * schema without uthash's structs, a size no rule covers).
 *
 * test_uthash_bloom.c includes this file with HASH_BLOOM (a filter the size
 * of a bucket array) and HASH_NONFATAL_OOM. */
#include "check.h"
#include "ship.h"

static unsigned expansions; /* uthash's own hook, counted */
#define uthash_expand_fyi(tbl) (expansions++)
#if defined(HASH_NONFATAL_OOM) && HASH_NONFATAL_OOM
static unsigned ooms;
#define uthash_nonfatal_oom(obj) (ooms++)
#endif
#include "tha_uthash.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

struct user {
    int id;
    uint32_t visits;
    char *email;              /* a heap string; the key of hh_email */
    UT_hash_handle hh;        /* by id */
    UT_hash_handle hh_email;  /* by email */
};
struct group {
    char name[24];            /* HASH_ADD_STR key, inside the element */
    uint32_t members;
    UT_hash_handle hh;
};

/* The application's state: three table heads, in the heap, rooted. */
struct tables {
    struct user *by_id, *by_email;
    struct group *groups;
};

static uint32_t USER, GROUP, TABLES;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_uthash_register(s));
    CHECK_OK(THA_STRUCT(s, struct user, "user", &USER));
    CHECK_OK(THA_FIELD_SCALAR(s, USER, struct user, id, THA_T_I32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, USER, struct user, visits, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_PTR(s, USER, struct user, email, "char", 0));
    CHECK_OK(THA_FIELD_UT_HASH_HANDLE(s, USER, struct user, hh));
    CHECK_OK(THA_FIELD_UT_HASH_HANDLE(s, USER, struct user, hh_email));
    CHECK_OK(THA_STRUCT(s, struct group, "group", &GROUP));
    CHECK_OK(THA_FIELD_SCALAR(s, GROUP, struct group, name, THA_T_CHAR, 24));
    CHECK_OK(THA_FIELD_SCALAR(s, GROUP, struct group, members, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_UT_HASH_HANDLE(s, GROUP, struct group, hh));
    CHECK_OK(THA_STRUCT(s, struct tables, "tables", &TABLES));
    CHECK_OK(THA_FIELD_PTR(s, TABLES, struct tables, by_id, "user", 0));
    CHECK_OK(THA_FIELD_PTR(s, TABLES, struct tables, by_email, "user", 0));
    CHECK_OK(THA_FIELD_PTR(s, TABLES, struct tables, groups, "group", 0));
    CHECK_OK(tha_schema_seal(s));
    USER = tha_schema_type_id(s, USER);
    GROUP = tha_schema_type_id(s, GROUP);
    TABLES = tha_schema_type_id(s, TABLES);
    return s;
}

/* Every pointer of uthash's structs is a slot, every byte of a handle a
 * field at its offsetof. */
static void test_registered_layout(void) {
    tha_schema_t *s = make_schema();
    uint32_t id;
    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_by_name(s, "UT_hash_handle", &id));
    CHECK_OK(tha_schema_type_info(s, id, &ti));
    CHECK(ti.size == sizeof(UT_hash_handle) && ti.nslots == 6 && ti.nfields == 8);
    static const struct { const char *name; size_t off, size; uint32_t kind; } hh[] = {
        {"tbl", offsetof(UT_hash_handle, tbl), 8, THA_K_PTR},
        {"prev", offsetof(UT_hash_handle, prev), 8, THA_K_PTR},
        {"next", offsetof(UT_hash_handle, next), 8, THA_K_PTR},
        {"hh_prev", offsetof(UT_hash_handle, hh_prev), 8, THA_K_PTR},
        {"hh_next", offsetof(UT_hash_handle, hh_next), 8, THA_K_PTR},
        {"key", offsetof(UT_hash_handle, key), 8, THA_K_PTR},
        {"keylen", offsetof(UT_hash_handle, keylen), 4, THA_K_SCALAR},
        {"hashv", offsetof(UT_hash_handle, hashv), 4, THA_K_SCALAR},
    };
    size_t covered = 0;
    for (uint32_t i = 0; i < ti.nfields; i++) {
        tha_field_t f;
        CHECK_OK(tha_schema_field_info(s, id, i, &f));
        int found = 0;
        for (size_t j = 0; j < sizeof hh / sizeof hh[0]; j++)
            if (strcmp(f.name, hh[j].name) == 0) {
                found = 1;
                CHECK(f.offset == hh[j].off && f.kind == hh[j].kind);
                covered += hh[j].size;
            }
        CHECK(found);
    }
    CHECK(covered == sizeof(UT_hash_handle));
    CHECK_OK(tha_schema_type_by_name(s, "UT_hash_table", &id));
    CHECK_OK(tha_schema_type_info(s, id, &ti));
#ifdef HASH_BLOOM
    CHECK(ti.size == sizeof(UT_hash_table) && ti.nslots == 3);
#else
    CHECK(ti.size == sizeof(UT_hash_table) && ti.nslots == 2);
#endif
    CHECK_OK(tha_schema_type_by_name(s, "UT_hash_bucket", &id));
    CHECK_OK(tha_schema_type_info(s, id, &ti));
    CHECK(ti.size == sizeof(UT_hash_bucket) && ti.nslots == 1);
    CHECK_OK(tha_schema_type_info(s, USER, &ti));
    CHECK(ti.nslots == 1 + 2 * 6);
    tha_schema_release(s);
}

static struct tables *new_tables(tha_heap_t *h) {
    struct tables *t = NULL;
    CHECK_OK(tha_heap_alloc(h, TABLES, 1, (void **)&t));
    CHECK_OK(tha_root_set(h, "db", t));
    return t;
}

static struct tables *tables_of(tha_heap_t *h) {
    void *p = NULL;
    CHECK_OK(tha_root_get(h, "db", &p));
    return p;
}

/* A user with id, email "u<id>@<n>.example" in a heap string, in both
 * tables; every 50th id also counts in a group "g<id % 97>" (made on
 * first use). Allocates from the current heap, as a program would. */
static void add_user(struct tables *t, int id) {
    tha_heap_t *h = tha_uthash_heap();
    struct user *u;
    char email[64];
    int n = snprintf(email, sizeof email, "u%d@%d.example", id, id % 13);
    CHECK_OK(tha_heap_alloc(h, USER, 1, (void **)&u));
    CHECK_OK(tha_heap_alloc(h, THA_T_CHAR, (uint32_t)n + 1, (void **)&u->email));
    memcpy(u->email, email, (size_t)n + 1);
    u->id = id;
    u->visits = (uint32_t)id * 3u;
    HASH_ADD_INT(t->by_id, id, u);
    HASH_ADD_KEYPTR(hh_email, t->by_email, u->email, strlen(u->email), u);
    if (id % 50 == 0) {
        char name[24];
        struct group *g;
        snprintf(name, sizeof name, "g%d", id % 97);
        HASH_FIND_STR(t->groups, name, g);
        if (!g) {
            CHECK_OK(tha_heap_alloc(h, GROUP, 1, (void **)&g));
            strcpy(g->name, name);
            HASH_ADD_STR(t->groups, name, g);
        }
        g->members++;
    }
}

static void del_user(struct tables *t, struct user *u) {
    tha_heap_t *h = tha_uthash_heap();
    HASH_DEL(t->by_id, u);
    HASH_DELETE(hh_email, t->by_email, u);
    CHECK_OK(tha_heap_free(h, u->email));
    CHECK_OK(tha_heap_free(h, u));
}

static int by_id_desc(struct user *a, struct user *b) {
    return (a->id < b->id) - (a->id > b->id);
}

static int in_heap(tha_heap_t *h, const void *p) {
    tha_obj_t o;
    return p && tha_heap_lookup(h, p, &o) == 0;
}

/* dst holds what src holds: the same users in the same (sorted) order,
 * each found by id and by email with uthash's macros on dst, the groups by
 * name; every pointer followed lies in dst's heap. */
static void same_tables(const struct tables *src, tha_heap_t *dh, const struct tables *dst) {
    CHECK(HASH_COUNT(dst->by_id) == HASH_COUNT(src->by_id));
    CHECK(HASH_CNT(hh_email, dst->by_email) == HASH_CNT(hh_email, src->by_email));
    CHECK(HASH_COUNT(dst->groups) == HASH_COUNT(src->groups));
    struct user *x, *tmp, *y = dst->by_id;
    unsigned n = 0, bad = 0;
    HASH_ITER(hh, src->by_id, x, tmp) {
        if (!y || y->id != x->id) { bad++; break; }
        struct user *f = NULL, *g = NULL;
        HASH_FIND_INT(dst->by_id, &x->id, f);
        HASH_FIND(hh_email, dst->by_email, x->email, strlen(x->email), g);
        if (f != y || g != y || !in_heap(dh, y) || !in_heap(dh, y->email) ||
            strcmp(y->email, x->email) != 0 || y->visits != x->visits ||
            y->hh.tbl != dst->by_id->hh.tbl)
            bad++;
        y = y->hh.next;
        n++;
    }
    CHECK(bad == 0 && y == NULL && n == HASH_COUNT(src->by_id));
    y = dst->by_email; /* the email table's own order */
    HASH_ITER(hh_email, src->by_email, x, tmp) {
        if (!y || y->id != x->id) { bad++; break; }
        y = y->hh_email.next;
    }
    CHECK(bad == 0 && y == NULL);
    int missing = -1;
    struct user *none = NULL;
    HASH_FIND_INT(dst->by_id, &missing, none);
    CHECK(none == NULL);
    HASH_FIND(hh_email, dst->by_email, "nobody@example", 14, none);
    CHECK(none == NULL);
    struct group *gx, *gt, *gy;
    HASH_ITER(hh, src->groups, gx, gt) {
        gy = NULL;
        HASH_FIND_STR(dst->groups, gx->name, gy);
        CHECK(gy && in_heap(dh, gy) && gy->members == gx->members);
    }
    if (dst->by_id) { /* the bucket arrays are as large on both sides */
        CHECK(dst->by_id->hh.tbl->num_buckets == src->by_id->hh.tbl->num_buckets);
        CHECK(in_heap(dh, dst->by_id->hh.tbl->buckets));
    }
}

static void clean(tha_heap_t *h) {
    CHECK_OK(tha_heap_check(h));
    size_t leaks = 1;
    CHECK_OK(tha_leaks(h, NULL, 0, &leaks));
    CHECK(leaks == 0);
}

/* A mirror at another base, made as a standby makes it: from the schema
 * the snapshot carries. */
static tha_heap_t *mirror_of(tha_heap_t *a, tha_schema_t **carried) {
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(a, THA_FRAME_SNAPSHOT, &n));
    void *frame = malloc(n);
    CHECK_OK(tha_heap_encode(a, THA_FRAME_SNAPSHOT, frame, n, &len));
    char msg[256];
    CHECK_OK(tha_frame_schema(frame, len, carried, msg, sizeof msg));
    tha_heap_t *b = NULL;
    CHECK_OK(tha_heap_create(&b, *carried, 64 << 20, THA_TRACK_EXPLICIT));
    CHECK(tha_heap_base(b) != tha_heap_base(a));
    CHECK_OK(tha_heap_apply(b, frame, len));
    free(frame);
    return b;
}

/* The allocation at p has type and count. */
static void typed(tha_heap_t *h, const void *p, uint32_t type, uint32_t count) {
    tha_obj_t o;
    CHECK_OK(tha_heap_lookup(h, p, &o));
    CHECK(o.ptr == p && o.type_id == type && o.count == count);
}

static void test_tables_mirrored(int tracking) {
    tha_schema_t *s = make_schema();
    uint32_t TABLE, BUCKET;
    CHECK_OK(tha_schema_type_by_name(s, "UT_hash_table", &TABLE));
    CHECK_OK(tha_schema_type_by_name(s, "UT_hash_bucket", &BUCKET));
    tha_heap_t *a;
    CHECK_OK(tha_heap_create(&a, s, 64 << 20, tracking));
    CHECK_OK(tha_uthash_use(a));
    CHECK(tha_uthash_heap() == a);
    struct tables *t = new_tables(a);

    expansions = 0;
    for (int i = 0; i < 6000; i++) add_user(t, i * 7 + 1);
    CHECK(HASH_COUNT(t->by_id) == 6000);
    CHECK(expansions >= 8); /* both tables, four doublings each at least */
    UT_hash_table *tbl = t->by_id->hh.tbl;
    CHECK(tbl->num_buckets >= 512);
    typed(a, tbl, TABLE, 1);
    typed(a, tbl->buckets, BUCKET, tbl->num_buckets);
#ifdef HASH_BLOOM
    /* 8 KiB: the size of a 512-bucket array, typed as bytes nonetheless */
    CHECK(HASH_BLOOM_BYTELEN == 512 * sizeof(UT_hash_bucket));
    typed(a, tbl->bloom_bv, THA_T_U8, HASH_BLOOM_BYTELEN);
#endif
    /* every third user goes */
    struct user *u, *tmp;
    int k = 0;
    HASH_ITER(hh, t->by_id, u, tmp) {
        if (k++ % 3 == 0) del_user(t, u);
    }
    CHECK(HASH_COUNT(t->by_id) == 4000);
    HASH_SORT(t->by_id, by_id_desc);
    CHECK(t->by_id->id == 5999 * 7 + 1);

    tha_schema_t *carried;
    tha_heap_t *b = mirror_of(a, &carried);
    same_tables(t, b, tables_of(b));
    clean(a);
    clean(b);

    /* more: deletes at the head, adds that double the buckets again, a
     * sort of the other table; one delta */
    unsigned before = t->by_id->hh.tbl->num_buckets;
    for (int i = 0; i < 100; i++) del_user(t, t->by_id);
    for (int i = 0; i < 20000; i++) add_user(t, 100000 + i);
    CHECK(t->by_id->hh.tbl->num_buckets > before);
    HASH_SRT(hh_email, t->by_email, by_id_desc);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    same_tables(t, b, tables_of(b));
    clean(a);
    clean(b);

    /* every user gone: the tables free their buckets and headers */
    HASH_ITER(hh, t->by_id, u, tmp) del_user(t, u);
    CHECK(t->by_id == NULL && t->by_email == NULL);
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    struct tables *r = tables_of(b);
    CHECK(r->by_id == NULL && r->by_email == NULL && r->groups != NULL);
    same_tables(t, b, r);
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(b, &st));
    /* the db, the groups, their table and buckets (and bloom filter) */
#ifdef HASH_BLOOM
    CHECK(st.live_objects == 1 + HASH_COUNT(t->groups) + 3);
#else
    CHECK(st.live_objects == 1 + HASH_COUNT(t->groups) + 2);
#endif
    clean(a);
    clean(b);
    CHECK_OK(tha_uthash_use(NULL));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(carried);
    tha_schema_release(s);
}

static void test_diff(void) { test_tables_mirrored(THA_TRACK_DIFF); }
static void test_auto(void) { test_tables_mirrored(THA_TRACK_AUTO); }

/* A standby's heap, promoted: it switches to a tracking mode, points
 * uthash at itself (the size rules are installed then) and goes on; its
 * frames reach a new standby. */
static void test_promoted_mirror_grows(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a;
    CHECK_OK(tha_heap_create(&a, s, 64 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_uthash_use(a));
    struct tables *t = new_tables(a);
    for (int i = 0; i < 3000; i++) add_user(t, i);
    tha_schema_t *carried;
    tha_heap_t *b = mirror_of(a, &carried);
    CHECK_OK(tha_uthash_use(NULL));
    tha_heap_destroy(a); /* the active is gone */

    /* the carried schema numbers the types as ours does */
    uint32_t id;
    CHECK_OK(tha_schema_type_by_name(carried, "user", &id));
    CHECK(id == USER);
    /* before tha_uthash_use(b) the mirror has no rules */
    void *p;
    CHECK_RC(tha_heap_alloc_sized(b, sizeof(UT_hash_table), &p), THA_ESCHEMA);
    CHECK_OK(tha_heap_set_tracking(b, THA_TRACK_DIFF));
    CHECK_OK(tha_uthash_use(b));
    CHECK_OK(tha_uthash_use(b)); /* again: the same rules, no-op */
    struct tables *r = tables_of(b);
    unsigned before = r->by_id->hh.tbl->num_buckets;
    struct user *u, *tmp;
    int k = 0;
    HASH_ITER(hh, r->by_id, u, tmp) {
        if (k++ % 2) del_user(r, u);
    }
    for (int i = 0; i < 10000; i++) add_user(r, 50000 + i);
    CHECK(r->by_id->hh.tbl->num_buckets > before);
    CHECK(HASH_COUNT(r->by_id) == 1500 + 10000);

    tha_heap_t *c;
    CHECK_OK(tha_heap_create(&c, s, 64 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(ship(b, c, THA_FRAME_SNAPSHOT));
    same_tables(r, c, tables_of(c));
    for (int i = 0; i < 500; i++) del_user(r, r->by_email);
    for (int i = 0; i < 5000; i++) add_user(r, 90000 + i);
    CHECK_OK(ship(b, c, THA_FRAME_DELTA));
    same_tables(r, c, tables_of(c));
    clean(b);
    clean(c);
    CHECK_OK(tha_uthash_use(NULL));
    tha_heap_destroy(b);
    tha_heap_destroy(c);
    tha_schema_release(carried);
    tha_schema_release(s);
}

/* What goes wrong says what to do. */
static void test_refusals(void) {
    /* a schema without uthash's structs */
    tha_schema_t *plain;
    uint32_t G;
    CHECK_OK(tha_schema_create(&plain));
    CHECK_OK(THA_STRUCT(plain, struct group, "group", &G));
    CHECK_OK(THA_FIELD_SCALAR(plain, G, struct group, name, THA_T_CHAR, 24));
    CHECK_OK(tha_schema_seal(plain));
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, plain, 4 << 20, THA_TRACK_DIFF));
    CHECK_RC(tha_uthash_use(h), THA_ENOTFOUND);
    CHECK_CONTAINS(tha_schema_errmsg(plain), "UT_hash_table");
    CHECK(tha_uthash_heap() == NULL);
    tha_heap_destroy(h);
    tha_schema_release(plain);

    /* a size no rule covers, on a heap uthash uses */
    tha_schema_t *s = make_schema();
    CHECK_OK(tha_heap_create(&h, s, 4 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_uthash_use(h));
    void *p;
    CHECK_RC(tha_heap_alloc_sized(h, 24, &p), THA_ESCHEMA);
    CHECK_CONTAINS(tha_heap_errmsg(h), "alloc_sized of 24 bytes: no size rule covers it");
    char want[64];
    snprintf(want, sizeof want, "%zu -> UT_hash_table", sizeof(UT_hash_table));
    CHECK_CONTAINS(tha_heap_errmsg(h), want);
    CHECK_CONTAINS(tha_heap_errmsg(h), "n x 16 -> UT_hash_bucket");
    CHECK_CONTAINS(tha_heap_errmsg(h), "tha_heap_size_type(h, 24, type)");

#if defined(HASH_NONFATAL_OOM) && HASH_NONFATAL_OOM
    /* without a heap an add that needs memory is rolled back by uthash and
     * reported to uthash_nonfatal_oom; the table stays whole */
    struct tables *t = new_tables(h);
    struct group *g;
    CHECK_OK(tha_heap_alloc(h, GROUP, 1, (void **)&g));
    strcpy(g->name, "first");
    CHECK_OK(tha_uthash_use(NULL));
    ooms = 0;
    HASH_ADD_STR(t->groups, name, g);
    CHECK(ooms == 1 && t->groups == NULL);
    CHECK_OK(tha_uthash_use(h));
    HASH_ADD_STR(t->groups, name, g);
    CHECK(t->groups == g && HASH_COUNT(t->groups) == 1);
    /* an expansion that fails: the add that needed it is undone */
    CHECK_OK(tha_uthash_use(NULL));
    int added = 1, refused = 0;
    for (int i = 0; i < 2000 && !refused; i++) {
        CHECK_OK(tha_heap_alloc(h, GROUP, 1, (void **)&g));
        snprintf(g->name, sizeof g->name, "n%d", i);
        HASH_ADD_STR(t->groups, name, g);
        if (ooms == 1) {
            added++;
        } else {
            refused = 1;
            CHECK_OK(tha_heap_free(h, g));
        }
    }
    CHECK(refused && HASH_COUNT(t->groups) == (unsigned)added);
    CHECK(t->groups->hh.tbl->num_buckets == HASH_INITIAL_NUM_BUCKETS);
    CHECK_OK(tha_uthash_use(h));
    struct group *x, *tmp;
    unsigned n = 0;
    HASH_ITER(hh, t->groups, x, tmp) {
        struct group *f = NULL;
        HASH_FIND_STR(t->groups, x->name, f);
        CHECK(f == x);
        n++;
    }
    CHECK(n == (unsigned)added);
    HASH_ITER(hh, t->groups, x, tmp) {
        HASH_DEL(t->groups, x);
        CHECK_OK(tha_heap_free(h, x));
    }
    clean(h);
#else
    /* without a heap, uthash's fatal path says why and aborts */
    int fd[2];
    CHECK(pipe(fd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        struct group *g, *none = NULL;
        if (tha_heap_alloc(h, GROUP, 1, (void **)&g)) _exit(3);
        strcpy(g->name, "orphan");
        tha_uthash_use(NULL);
        HASH_ADD_STR(none, name, g);
        _exit(0); /* not reached */
    }
    close(fd[1]);
    char out[512] = {0};
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd[0], out + got, sizeof out - 1 - got)) > 0) got += (size_t)r;
    close(fd[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    CHECK_CONTAINS(out, "uthash on a tha heap: out of memory: this thread has no heap "
                        "(call tha_uthash_use(h) first)");
#endif
    CHECK_OK(tha_uthash_use(NULL));
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_registered_layout);
    RUN(test_diff);
    if (!getenv("THA_TEST_NO_WP")) RUN(test_auto);
    RUN(test_promoted_mirror_grows);
    RUN(test_refusals);
    return CHECK_DONE();
}

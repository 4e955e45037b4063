/* uthash_demo.c — an unmodified uthash table kept highly available by tha.
 *
 * A user directory: users found by id (HASH_ADD_INT) and by email
 * (HASH_ADD_KEYPTR, the addresses in strings in the heap), teams found by
 * name (HASH_ADD_STR). The tables live in a tha heap: uthash allocates its
 * own tables and bucket arrays there through tha_uthash.h. The directory
 * is mirrored to a standby heap at another address (a snapshot, then a
 * delta), searched and walked there with uthash's own macros; then the
 * active goes away, the standby takes over, keeps growing the tables, and
 * feeds a new standby.
 *
 *   make -C csrc examples      (or: cc -Icsrc/include uthash_demo.c
 *                               csrc/build/libtha.a -lm -pthread)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tha_uthash.h" /* instead of <uthash.h> */

struct user {
    int id;
    char name[32];
    char *email;             /* in the heap: the key of by_email */
    UT_hash_handle hh;       /* in dir->by_id */
    UT_hash_handle hh_email; /* in dir->by_email */
};
struct team {
    char name[24];           /* the key, inside the element */
    int members;
    UT_hash_handle hh;
};
struct directory {           /* the root: where the tables start */
    struct user *by_id, *by_email;
    struct team *teams;
};

#define TRY(call)                                                              \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_) {                                                             \
            fprintf(stderr, "%s failed: %s\n", #call, tha_strerror(rc_));      \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static uint32_t USER, TEAM, DIRECTORY;

static tha_schema_t *directory_schema(void) {
    tha_schema_t *s;
    TRY(tha_schema_create(&s));
    TRY(tha_uthash_register(s));
    TRY(THA_STRUCT(s, struct user, "user", &USER));
    TRY(THA_FIELD_SCALAR(s, USER, struct user, id, THA_T_I32, 0));
    TRY(THA_FIELD_SCALAR(s, USER, struct user, name, THA_T_CHAR, 32));
    TRY(THA_FIELD_PTR(s, USER, struct user, email, "char", 0));
    TRY(THA_FIELD_UT_HASH_HANDLE(s, USER, struct user, hh));
    TRY(THA_FIELD_UT_HASH_HANDLE(s, USER, struct user, hh_email));
    TRY(THA_STRUCT(s, struct team, "team", &TEAM));
    TRY(THA_FIELD_SCALAR(s, TEAM, struct team, name, THA_T_CHAR, 24));
    TRY(THA_FIELD_SCALAR(s, TEAM, struct team, members, THA_T_I32, 0));
    TRY(THA_FIELD_UT_HASH_HANDLE(s, TEAM, struct team, hh));
    TRY(THA_STRUCT(s, struct directory, "directory", &DIRECTORY));
    TRY(THA_FIELD_PTR(s, DIRECTORY, struct directory, by_id, "user", 0));
    TRY(THA_FIELD_PTR(s, DIRECTORY, struct directory, by_email, "user", 0));
    TRY(THA_FIELD_PTR(s, DIRECTORY, struct directory, teams, "team", 0));
    TRY(tha_schema_seal(s));
    USER = tha_schema_type_id(s, USER);
    TEAM = tha_schema_type_id(s, TEAM);
    DIRECTORY = tha_schema_type_id(s, DIRECTORY);
    return s;
}

/* The application: tha_heap_alloc where it would call malloc. */
static void add_user(tha_heap_t *h, struct directory *d, int id) {
    struct user *u;
    char email[48], team[24];
    int n = snprintf(email, sizeof email, "user%d@example.org", id);
    TRY(tha_heap_alloc(h, USER, 1, (void **)&u));
    TRY(tha_heap_alloc(h, THA_T_CHAR, (uint32_t)n + 1, (void **)&u->email));
    memcpy(u->email, email, (size_t)n + 1);
    u->id = id;
    snprintf(u->name, sizeof u->name, "User %d", id);
    HASH_ADD_INT(d->by_id, id, u);
    HASH_ADD_KEYPTR(hh_email, d->by_email, u->email, strlen(u->email), u);

    struct team *t;
    snprintf(team, sizeof team, "team-%d", id % 40);
    HASH_FIND_STR(d->teams, team, t);
    if (!t) {
        TRY(tha_heap_alloc(h, TEAM, 1, (void **)&t));
        strcpy(t->name, team);
        HASH_ADD_STR(d->teams, name, t);
    }
    t->members++;
}

static void remove_user(tha_heap_t *h, struct directory *d, struct user *u) {
    struct team *t;
    char team[24];
    snprintf(team, sizeof team, "team-%d", u->id % 40);
    HASH_FIND_STR(d->teams, team, t);
    t->members--;
    HASH_DEL(d->by_id, u);
    HASH_DELETE(hh_email, d->by_email, u);
    TRY(tha_heap_free(h, u->email));
    TRY(tha_heap_free(h, u));
}

static int by_name(struct user *a, struct user *b) { return strcmp(a->name, b->name); }

/* Encodes a frame of `kind` from src and applies it to dst. */
static void ship(tha_heap_t *src, tha_heap_t *dst, int kind) {
    size_t size, len;
    TRY(tha_heap_frame_size(src, kind, &size));
    void *frame = malloc(size);
    if (!frame) exit(1);
    if (tha_heap_encode(src, kind, frame, size, &len) || tha_heap_apply(dst, frame, len)) {
        fprintf(stderr, "ship: %s | %s\n", tha_heap_errmsg(src), tha_heap_errmsg(dst));
        exit(1);
    }
    free(frame);
}

/* A standby's heap, made from the schema the snapshot carries. */
static tha_heap_t *new_standby(tha_heap_t *active) {
    size_t size, len;
    TRY(tha_heap_frame_size(active, THA_FRAME_SNAPSHOT, &size));
    void *frame = malloc(size);
    if (!frame) exit(1);
    TRY(tha_heap_encode(active, THA_FRAME_SNAPSHOT, frame, size, &len));
    tha_schema_t *schema;
    char msg[256];
    tha_heap_t *h;
    TRY(tha_frame_schema(frame, len, &schema, msg, sizeof msg));
    TRY(tha_heap_create(&h, schema, 64 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(schema);
    TRY(tha_heap_apply(h, frame, len));
    free(frame);
    return h;
}

static struct directory *directory_of(tha_heap_t *h) {
    void *d;
    TRY(tha_root_get(h, "directory", &d));
    return d;
}

/* Searches the standby's tables for everything the active holds, with
 * uthash's macros on the standby's own pointers; 1 if all is there. */
static int same_directory(struct directory *a, tha_heap_t *sh, struct directory *b) {
    struct user *u, *tmp, *next = b->by_id;
    tha_obj_t o;
    int ok = HASH_COUNT(b->by_id) == HASH_COUNT(a->by_id) &&
             HASH_CNT(hh_email, b->by_email) == HASH_CNT(hh_email, a->by_email) &&
             HASH_COUNT(b->teams) == HASH_COUNT(a->teams);
    HASH_ITER(hh, a->by_id, u, tmp) {
        struct user *x = NULL, *y = NULL;
        HASH_FIND_INT(b->by_id, &u->id, x);
        HASH_FIND(hh_email, b->by_email, u->email, strlen(u->email), y);
        ok = ok && x && x == y && x == next && strcmp(x->name, u->name) == 0 &&
             tha_heap_lookup(sh, x, &o) == 0; /* the standby's own copy */
        next = next ? next->hh.next : NULL;
    }
    struct team *t, *ttmp;
    HASH_ITER(hh, a->teams, t, ttmp) {
        struct team *x = NULL;
        HASH_FIND_STR(b->teams, t->name, x);
        ok = ok && x && x->members == t->members;
    }
    return ok;
}

/* The heap is consistent and nothing in it is unreachable. */
static int clean(tha_heap_t *h) {
    size_t leaks;
    return tha_heap_check(h) == 0 && tha_leaks(h, NULL, 0, &leaks) == 0 && leaks == 0;
}

int main(void) {
    tha_schema_t *schema = directory_schema();
    tha_heap_t *active;
    /* uthash writes with plain stores: let the heap find them */
    TRY(tha_heap_create(&active, schema, 64 << 20, THA_TRACK_AUTO));
    TRY(tha_uthash_use(active));
    struct directory *dir;
    TRY(tha_heap_alloc(active, DIRECTORY, 1, (void **)&dir));
    TRY(tha_root_set(active, "directory", dir));

    for (int id = 1; id <= 5000; id++) add_user(active, dir, id);
    struct user *u, *tmp;
    HASH_ITER(hh, dir->by_id, u, tmp) {
        if (u->id % 5 == 0) remove_user(active, dir, u);
    }
    HASH_SORT(dir->by_id, by_name);
    tha_heap_t *standby = new_standby(active);
    struct directory *sdir = directory_of(standby);
    int ok = same_directory(dir, standby, sdir);
    printf("snapshot: %u users, %u buckets, %u teams; standby at %p (active at %p): %s\n",
           HASH_COUNT(sdir->by_id), sdir->by_id->hh.tbl->num_buckets,
           HASH_COUNT(sdir->teams), tha_heap_base(standby), tha_heap_base(active),
           ok ? "all found" : "MISMATCH");

    for (int id = 5001; id <= 20000; id++) add_user(active, dir, id);
    for (int i = 0; i < 1000; i++) remove_user(active, dir, dir->by_email);
    ship(active, standby, THA_FRAME_DELTA);
    ok = ok && same_directory(dir, standby, sdir) && clean(active) && clean(standby);
    printf("delta: %u users, %u buckets: %s\n", HASH_COUNT(sdir->by_id),
           sdir->by_id->hh.tbl->num_buckets, ok ? "all found" : "MISMATCH");

    /* failover: the active is gone; the standby tracks its own writes,
     * points uthash at its heap and carries on */
    tha_heap_destroy(active);
    TRY(tha_heap_set_tracking(standby, THA_TRACK_AUTO));
    TRY(tha_uthash_use(standby));
    for (int id = 20001; id <= 40000; id++) add_user(standby, sdir, id);
    tha_heap_t *next = new_standby(standby);
    ok = ok && same_directory(sdir, next, directory_of(next)) && clean(standby) && clean(next);
    printf("promoted: %u users, %u buckets, mirrored to %p: %s\n", HASH_COUNT(sdir->by_id),
           sdir->by_id->hh.tbl->num_buckets, tha_heap_base(next),
           ok ? "all found" : "MISMATCH");

    tha_uthash_use(NULL);
    tha_heap_destroy(standby);
    tha_heap_destroy(next);
    tha_schema_release(schema);
    return ok ? 0 : 1;
}

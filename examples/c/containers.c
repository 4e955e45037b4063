/* containers.c — a job queue in glibc's <sys/queue.h> TAILQ and an index
 * of the same jobs in libbsd's <bsd/sys/tree.h> red-black tree, both with
 * static heads (the usual idiom), on a tha heap, mirrored to a heap at
 * another base address and walked there with the libraries' own macros.
 *
 *   containers            (make -C csrc build/examples/containers; needs libbsd-dev)
 *
 * What the program tells tha, besides allocating its jobs from the heap:
 *  - the layouts: THA_FIELD_TAILQ_ENTRY / THA_FIELD_RB_ENTRY for a job's
 *    links, and the heads' two structs (the queue's last-link is a pointer
 *    into the previous element or the head: void *);
 *  - the static heads as data externs (THA_EXTERN): the first job's
 *    tqe_prev points at &queue.tqh_first, outside the heap; it travels as
 *    "extern queue + 0" and lands on the mirror's own static head;
 *  - tha_heap_mirror_extern for each head: its bytes travel too (in a
 *    cell the heap keeps), so the mirror's static heads are ready to walk
 *    after every apply.
 * Tracking is "auto": the queue and tree macros write with plain stores.
 * In one process, the mirror's heads are other statics (mqueue, mindex),
 * bound to the same extern names in the mirror's schema; a standby process
 * would bind its own `queue` and `index`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

/* RB_GENERATE_STATIC marks its functions __unused, which libbsd's cdefs.h
 * leaves undefined (Debian #522773) */
#ifndef __unused
#define __unused __attribute__((__unused__))
#endif
#include <bsd/sys/tree.h>

#include "tha.h"

struct job {
    int32_t id;
    int32_t prio;
    char name[24];
    TAILQ_ENTRY(job) link;
    RB_ENTRY(job) by_id;
};
TAILQ_HEAD(jobq, job);
RB_HEAD(jobtree, job);

static int job_cmp(struct job *a, struct job *b) {
    return a->id < b->id ? -1 : a->id > b->id;
}
RB_GENERATE_STATIC(jobtree, job, by_id, job_cmp)

/* The active's heads, and (this process playing the standby too) the
 * mirror's. */
static struct jobq queue = TAILQ_HEAD_INITIALIZER(queue);
static struct jobtree index_ = RB_INITIALIZER(&index_);
static struct jobq mqueue = TAILQ_HEAD_INITIALIZER(mqueue);
static struct jobtree mindex = RB_INITIALIZER(&mindex);

static tha_heap_t *heap;
static uint32_t JOB, JOBQ, JOBTREE;
static int failures;

#define TRY(call)                                                              \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_) {                                                             \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, tha_strerror(rc_),  \
                    heap ? tha_heap_errmsg(heap) : "");                        \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static tha_schema_t *job_schema(void) {
    tha_schema_t *s;
    TRY(tha_schema_create(&s));
    TRY(THA_STRUCT(s, struct job, "job", &JOB));
    TRY(THA_FIELD_SCALAR(s, JOB, struct job, id, THA_T_I32, 0));
    TRY(THA_FIELD_SCALAR(s, JOB, struct job, prio, THA_T_I32, 0));
    TRY(THA_FIELD_SCALAR(s, JOB, struct job, name, THA_T_CHAR, 24));
    TRY(THA_FIELD_TAILQ_ENTRY(s, JOB, struct job, link, "job"));
    TRY(THA_FIELD_RB_ENTRY(s, JOB, struct job, by_id, "job"));
    TRY(THA_STRUCT(s, struct jobq, "jobq", &JOBQ));
    TRY(THA_FIELD_PTR(s, JOBQ, struct jobq, tqh_first, "job", 0));
    TRY(THA_FIELD_PTR(s, JOBQ, struct jobq, tqh_last, "void", 0));
    TRY(THA_STRUCT(s, struct jobtree, "jobtree", &JOBTREE));
    TRY(THA_FIELD_PTR(s, JOBTREE, struct jobtree, rbh_root, "job", 0));
    TRY(THA_EXTERN(s, "queue", queue));
    TRY(THA_EXTERN(s, "index", index_));
    TRY(tha_schema_seal(s));
    JOB = tha_schema_type_id(s, JOB);
    JOBQ = tha_schema_type_id(s, JOBQ);
    JOBTREE = tha_schema_type_id(s, JOBTREE);
    return s;
}

static void add_job(int32_t id, int32_t prio) {
    struct job *j;
    TRY(tha_heap_alloc(heap, JOB, 1, (void **)&j));
    j->id = id;
    j->prio = prio;
    snprintf(j->name, sizeof j->name, "job-%d", id);
    TAILQ_INSERT_TAIL(&queue, j, link);
    RB_INSERT(jobtree, &index_, j);
}

static void remove_job(struct job *j) {
    TAILQ_REMOVE(&queue, j, link);
    RB_REMOVE(jobtree, &index_, j);
    TRY(tha_heap_free(heap, j));
}

/* A digest of both containers, walked with their own macros: the queue in
 * order and backwards, the tree in key order, and a lookup of every id. */
static uint64_t walk(struct jobq *q, struct jobtree *t, size_t *count) {
    uint64_t h = 1469598103934665603ull, n = 0;
    struct job *j, key;
    TAILQ_FOREACH(j, q, link) {
        h = (h ^ (uint64_t)(uint32_t)j->id) * 1099511628211ull;
        n++;
    }
    TAILQ_FOREACH_REVERSE(j, q, jobq, link) h = (h ^ (uint64_t)(uint32_t)j->prio) * 1099511628211ull;
    RB_FOREACH(j, jobtree, t) {
        h = (h ^ (uint64_t)(uint32_t)j->id << 1) * 1099511628211ull;
        key.id = j->id;
        if (RB_FIND(jobtree, t, &key) != j) h ^= 0xdeadull; /* the tree is broken */
        if (strncmp(j->name, "job-", 4) != 0) h ^= 0xbeefull;
    }
    *count = n;
    return h;
}

static void ship(tha_heap_t *to, int kind, const char *step) {
    size_t len;
    TRY(tha_heap_frame_size(heap, kind, &len));
    void *frame = malloc(len);
    if (!frame) exit(1);
    TRY(tha_heap_encode(heap, kind, frame, len, &len));
    int rc = tha_heap_apply(to, frame, len);
    if (rc) {
        fprintf(stderr, "%s: apply failed: %s\n", step, tha_heap_errmsg(to));
        exit(1);
    }
    free(frame);
    size_t n, mn;
    uint64_t a = walk(&queue, &index_, &n), b = walk(&mqueue, &mindex, &mn);
    int same = a == b && n == mn, checked = tha_heap_check(to) == 0;
    printf("%s: %zu bytes; mirror (%zu jobs) walked with TAILQ_FOREACH, "
           "TAILQ_FOREACH_REVERSE, RB_FOREACH, RB_FIND: %s, heap check %s\n",
           step, len, mn, same ? "same" : "DIFFERENT", checked ? "ok" : "FAILED");
    failures += !same + !checked;
}

int main(void) {
    tha_schema_t *schema = job_schema();
    TRY(tha_heap_create(&heap, schema, 64 << 20, THA_TRACK_AUTO));
    tha_schema_release(schema);
    TRY(tha_heap_mirror_extern(heap, "queue", JOBQ));
    TRY(tha_heap_mirror_extern(heap, "index", JOBTREE));

    for (int32_t i = 0; i < 5000; i++) add_job((i * 7919) % 100003, i % 10);

    /* the mirror: a heap from the snapshot's schema, its heads bound */
    size_t len;
    TRY(tha_heap_frame_size(heap, THA_FRAME_SNAPSHOT, &len));
    void *snap = malloc(len);
    if (!snap) return 1;
    TRY(tha_heap_encode(heap, THA_FRAME_SNAPSHOT, snap, len, &len));
    tha_schema_t *ms;
    char msg[256];
    TRY(tha_frame_schema(snap, len, &ms, msg, sizeof msg));
    TRY(tha_schema_bind_extern(ms, "queue", &mqueue));
    TRY(tha_schema_bind_extern(ms, "index", &mindex));
    tha_heap_t *mirror;
    TRY(tha_heap_create(&mirror, ms, 0, THA_TRACK_EXPLICIT));
    tha_schema_release(ms);
    TRY(tha_heap_mirror_extern(mirror, "queue", JOBQ));
    TRY(tha_heap_mirror_extern(mirror, "index", JOBTREE));
    TRY(tha_heap_apply(mirror, snap, len));
    free(snap);
    size_t n, mn;
    uint64_t a = walk(&queue, &index_, &n), b = walk(&mqueue, &mindex, &mn);
    printf("snapshot: %zu bytes, mirror at %p (active at %p): %zu jobs, %s\n", len,
           tha_heap_base(mirror), tha_heap_base(heap), mn, a == b ? "same" : "DIFFERENT");
    failures += a != b;

    /* 1% of the jobs removed, rekeyed and reinserted: a rebalance writes
     * nodes nobody could name, and auto tracking finds them */
    struct job *j = TAILQ_FIRST(&queue);
    for (int k = 0; j && k < 50; k++) {
        struct job *next = TAILQ_NEXT(j, link);
        for (int s = 0; s < 97 && next; s++) next = TAILQ_NEXT(next, link);
        TAILQ_REMOVE(&queue, j, link);
        RB_REMOVE(jobtree, &index_, j);
        j->id += 200000;
        TAILQ_INSERT_HEAD(&queue, j, link);
        RB_INSERT(jobtree, &index_, j);
        j = next;
    }
    ship(mirror, THA_FRAME_DELTA, "1% rekeyed");

    /* half removed, the first and the last among them */
    int k = 0;
    for (struct job *e = TAILQ_FIRST(&queue), *nx; e; e = nx, k++) {
        nx = TAILQ_NEXT(e, link);
        if (k % 2 == 0 || !nx) remove_job(e);
    }
    ship(mirror, THA_FRAME_DELTA, "half removed");

    /* emptied: tqh_last points at the static head itself again */
    while (!TAILQ_EMPTY(&queue)) remove_job(TAILQ_FIRST(&queue));
    ship(mirror, THA_FRAME_DELTA, "emptied");
    if (mqueue.tqh_last != &mqueue.tqh_first || !RB_EMPTY(&mindex)) {
        printf("the mirror's empty heads are not empty heads\n");
        failures++;
    }
    for (int32_t i = 0; i < 100; i++) add_job(i, i);
    ship(mirror, THA_FRAME_DELTA, "refilled");

    tha_heap_destroy(mirror);
    tha_heap_destroy(heap);
    printf(failures ? "FAILED: %d mismatches\n" : "containers: every mirror matched\n",
           failures);
    return failures ? 1 : 0;
}

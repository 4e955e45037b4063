/* test_queue.c — glibc's <sys/queue.h> TAILQ and LIST on a tha heap,
 * registered with THA_FIELD_TAILQ_* / THA_FIELD_LIST_* (one line each),
 * mirrored by a snapshot and deltas to a heap at another address and
 * walked there with the library's own macros, both directions. */
#include "tha.h"
#include "check.h"
#include "ship.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

struct job {
    uint64_t id;
    TAILQ_ENTRY(job) link;
    LIST_ENTRY(job) any;
};
TAILQ_HEAD(jobq, job);
LIST_HEAD(jobl, job);
struct jobs {
    struct jobq q;
    struct jobl l;
    uint32_t n;
};

static uint32_t JOB, JOBS;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct job, "job", &JOB));
    CHECK_OK(THA_FIELD_SCALAR(s, JOB, struct job, id, THA_T_U64, 0));
    CHECK_OK(THA_FIELD_TAILQ_ENTRY(s, JOB, struct job, link, "job"));
    CHECK_OK(THA_FIELD_LIST_ENTRY(s, JOB, struct job, any, "job"));
    CHECK_OK(THA_STRUCT(s, struct jobs, "jobs", &JOBS));
    CHECK_OK(THA_FIELD_TAILQ_HEAD(s, JOBS, struct jobs, q, "job"));
    CHECK_OK(THA_FIELD_LIST_HEAD(s, JOBS, struct jobs, l, "job"));
    CHECK_OK(THA_FIELD_SCALAR(s, JOBS, struct jobs, n, THA_T_U32, 0));
    CHECK_OK(tha_schema_seal(s));
    JOB = tha_schema_type_id(s, JOB);
    JOBS = tha_schema_type_id(s, JOBS);
    return s;
}

/* The mirror's queue, both ways, and its list, as the source has them. */
static void same_order(struct jobs *src, struct jobs *dst) {
    struct job *x, *y = TAILQ_FIRST(&dst->q);
    TAILQ_FOREACH(x, &src->q, link) {
        CHECK(y != NULL && y->id == x->id);
        if (!y) return;
        y = TAILQ_NEXT(y, link);
    }
    CHECK(y == NULL);
    y = TAILQ_LAST(&dst->q, jobq);
    TAILQ_FOREACH_REVERSE(x, &src->q, jobq, link) {
        CHECK(y != NULL && y->id == x->id);
        if (!y) return;
        y = TAILQ_PREV(y, jobq, link);
    }
    CHECK(y == NULL);
    y = LIST_FIRST(&dst->l);
    LIST_FOREACH(x, &src->l, any) {
        CHECK(y != NULL && y->id == x->id);
        if (!y) return;
        y = LIST_NEXT(y, any);
    }
    CHECK(y == NULL);
}

static void test_tailq_and_list_mirror(void) {
    tha_schema_t *s = make_schema();
    tha_heap_t *a, *b;
    CHECK_OK(tha_heap_create(&a, s, 8 << 20, THA_TRACK_DIFF));
    CHECK_OK(tha_heap_create(&b, s, 8 << 20, THA_TRACK_EXPLICIT));
    struct jobs *js;
    CHECK_OK(tha_heap_alloc(a, JOBS, 1, (void **)&js));
    TAILQ_INIT(&js->q);
    LIST_INIT(&js->l);
    CHECK_OK(tha_root_set(a, "jobs", js));
    for (uint64_t i = 0; i < 200; i++) {
        struct job *j;
        CHECK_OK(tha_heap_alloc(a, JOB, 1, (void **)&j));
        j->id = i;
        if (i % 2) TAILQ_INSERT_TAIL(&js->q, j, link);
        else TAILQ_INSERT_HEAD(&js->q, j, link);
        LIST_INSERT_HEAD(&js->l, j, any);
        js->n++;
    }
    CHECK_OK(ship(a, b, THA_FRAME_SNAPSHOT));
    void *r;
    CHECK_OK(tha_root_get(b, "jobs", &r));
    same_order(js, r);
    /* remove every third, move some to the front: plain writes (diff) */
    struct job *x, *next;
    uint64_t k = 0;
    for (x = TAILQ_FIRST(&js->q); x; x = next, k++) {
        next = TAILQ_NEXT(x, link);
        if (k % 3 == 0) {
            TAILQ_REMOVE(&js->q, x, link);
            LIST_REMOVE(x, any);
            CHECK_OK(tha_heap_free(a, x));
            js->n--;
        } else if (k % 7 == 0) {
            TAILQ_REMOVE(&js->q, x, link);
            TAILQ_INSERT_HEAD(&js->q, x, link);
        }
    }
    CHECK_OK(ship(a, b, THA_FRAME_DELTA));
    CHECK_OK(tha_heap_check(b));
    same_order(js, r);
    CHECK(((struct jobs *)r)->n == js->n);
    CHECK(tha_heap_base(a) != tha_heap_base(b));
    tha_heap_destroy(a);
    tha_heap_destroy(b);
    tha_schema_release(s);
}

int main(void) {
    RUN(test_tailq_and_list_mirror);
    return CHECK_DONE();
}

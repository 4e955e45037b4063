/* bench_codec.c — the codec against memcpy in C, no Python in the loop:
 * the same 1M struct emp graph as bench/test_bench_codec.py, timed as
 * best of K rounds. Build and run:
 *   make -C csrc && cc -O2 -Icsrc/include bench/bench_codec.c \
 *       csrc/build/libtha.a -lm -o /tmp/bench_codec && /tmp/bench_codec [N] [K]
 */
#define _GNU_SOURCE
#include "tha.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct dept { char name[32]; uint32_t id; };
struct emp {
    char name[32]; uint32_t id; double salary;
    struct emp *mgr; struct dept *dept; struct emp *reports[4];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define OK(x) do { int rc_ = (x); if (rc_) { fprintf(stderr, "%s: %s\n", #x, \
    tha_strerror(rc_)); exit(1); } } while (0)

static tha_schema_t *schema(void) {
    tha_schema_t *s;
    uint32_t d, e;
    OK(tha_schema_create(&s));
    OK(THA_STRUCT(s, struct dept, "dept", &d));
    OK(THA_FIELD_SCALAR(s, d, struct dept, name, THA_T_CHAR, 32));
    OK(THA_FIELD_SCALAR(s, d, struct dept, id, THA_T_U32, 0));
    OK(THA_STRUCT(s, struct emp, "emp", &e));
    OK(THA_FIELD_SCALAR(s, e, struct emp, name, THA_T_CHAR, 32));
    OK(THA_FIELD_SCALAR(s, e, struct emp, id, THA_T_U32, 0));
    OK(THA_FIELD_SCALAR(s, e, struct emp, salary, THA_T_F64, 0));
    OK(THA_FIELD_PTR(s, e, struct emp, mgr, "emp", 0));
    OK(THA_FIELD_PTR(s, e, struct emp, dept, "dept", 0));
    OK(THA_FIELD_PTR(s, e, struct emp, reports, "emp", 4));
    OK(tha_schema_seal(s));
    return s;
}

int main(int argc, char **argv) {
    uint32_t n = argc > 1 ? (uint32_t)atol(argv[1]) : 1000000, nd = n / 250 + 1;
    int k = argc > 2 ? atoi(argv[2]) : 9;
    tha_schema_t *s = schema();
    uint32_t did, eid;
    OK(tha_schema_type_by_name(s, "dept", &did));
    OK(tha_schema_type_by_name(s, "emp", &eid));
    size_t cap = ((size_t)n * 96 + nd * 36) * 9 / 8 + (8 << 20);
    tha_heap_t *h, *m;
    OK(tha_heap_create(&h, s, cap, THA_TRACK_EXPLICIT));
    OK(tha_heap_create(&m, s, cap, THA_TRACK_EXPLICIT));
    struct dept *depts;
    struct emp *emps;
    OK(tha_heap_alloc(h, did, nd, (void **)&depts));
    OK(tha_heap_alloc(h, eid, n, (void **)&emps));
    for (uint32_t i = 0; i < nd; i++) depts[i].id = i;
    for (uint32_t i = 0; i < n; i++) {
        struct emp *e = &emps[i];
        snprintf(e->name, sizeof e->name, "emp%u", i);
        e->id = i;
        e->salary = 50000 + i;
        e->mgr = i ? &emps[(i - 1) / 4] : NULL;
        e->dept = &depts[i % nd];
        for (int r = 0; r < 4; r++)
            e->reports[r] = 4ull * i + 1 + r < n ? &emps[4 * i + 1 + r] : NULL;
    }
    size_t snap;
    OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &snap));
    uint8_t *buf = malloc(snap), *dbuf = malloc(snap), *a = malloc(snap), *b = malloc(snap);
    memset(buf, 0, snap), memset(dbuf, 0, snap), memset(a, 1, snap), memset(b, 0, snap);
    size_t len, dlen = 0;
    OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, buf, snap, &len));
    OK(tha_heap_apply(m, buf, len));
    uint32_t ndirty = n / 100;
    uint32_t *dirty = malloc(ndirty * sizeof *dirty);
    srand(1);
    for (uint32_t i = 0; i < ndirty; i++) dirty[i] = 1 + (uint32_t)rand() % (n - 1);
    double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    for (int r = 0; r < k; r++) {
        double t0 = now();
        memcpy(b, a, snap);
        double t1 = now();
        OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, buf, snap, &len));
        double t2 = now();
        OK(tha_heap_apply(m, buf, len));
        double t3 = now();
        for (uint32_t i = 0; i < ndirty; i++) {
            emps[dirty[i]].salary = r;
            OK(tha_heap_touch(h, &emps[dirty[i]], sizeof(struct emp)));
        }
        double t4 = now();
        OK(tha_heap_encode(h, THA_FRAME_DELTA, dbuf, snap, &dlen));
        double t5 = now();
        OK(tha_heap_apply(m, dbuf, dlen));
        double t6 = now();
        double t[5] = {t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5};
        for (int i = 0; i < 5; i++) if (t[i] < best[i]) best[i] = t[i];
    }
    const char *names[5] = {"memcpy", "snapshot encode", "snapshot apply",
                            "delta encode", "delta apply"};
    for (int i = 0; i < 5; i++)
        printf("%-16s %9.3f ms %7.2f GB/s\n", names[i], best[i] * 1e3,
               (i < 3 ? snap : dlen) / best[i] / 1e9);
    printf("snapshot encode+apply = %.0f%% of memcpy; delta %.0fx faster (%zu / %zu bytes)\n",
           100 * best[0] / (best[1] + best[2]), (best[1] + best[2]) / (best[3] + best[4]),
           snap, dlen);
    return 0;
}

/* apply_bench.c — apply of a delta against a memcpy of its bytes, in one
 * process: 1,000,000 64-byte records in one array allocation, 4,000 depts;
 * each round changes salary and mgr of a fraction f of the records (or,
 * f = 1, touches the whole image) in explicit mode, encodes the delta and
 * applies it to a mirror. Prints medians of encode, apply and memcpy.
 *   make build/bench/apply_bench && ./build/bench/apply_bench F [ROUNDS]
 * (THA_MIRROR=diff or wp: the mirror tracks changes that way)
 */
#include "tha.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct dept { char name[24]; uint64_t budget; };
struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct dept *dept;
};

#define OK(x) do { int rc_ = (x); if (rc_) { fprintf(stderr, "%s: %d\n", #x, rc_); exit(1); } } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmpd);
    return v[n / 2];
}

int main(int argc, char **argv) {
    double f = argc > 1 ? atof(argv[1]) : 0.01;
    int rounds = argc > 2 ? atoi(argv[2]) : 9;
    const uint32_t n = 1000000, nd = 4000;
    tha_schema_t *s;
    uint32_t EMP, DEPT;
    OK(tha_schema_create(&s));
    OK(THA_STRUCT(s, struct dept, "dept", &DEPT));
    OK(THA_FIELD_SCALAR(s, DEPT, struct dept, name, THA_T_CHAR, 24));
    OK(THA_FIELD_SCALAR(s, DEPT, struct dept, budget, THA_T_U64, 0));
    OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    OK(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    OK(THA_FIELD_PTR(s, EMP, struct emp, dept, "dept", 0));
    OK(tha_schema_seal(s));
    EMP = tha_schema_type_id(s, EMP);
    DEPT = tha_schema_type_id(s, DEPT);
    tha_heap_t *h, *m;
    OK(tha_heap_create(&h, s, 256u << 20, THA_TRACK_EXPLICIT));
    /* the mirror's tracking: THA_MIRROR=explicit (default), diff or wp */
    const char *mt = getenv("THA_MIRROR");
    int mtrack = !mt || !strcmp(mt, "explicit") ? THA_TRACK_EXPLICIT
                 : !strcmp(mt, "diff")          ? THA_TRACK_DIFF
                                                : THA_TRACK_WP;
    OK(tha_heap_create(&m, s, 256u << 20, mtrack));
    struct dept *d[4000];
    for (uint32_t i = 0; i < nd; i++) OK(tha_heap_alloc(h, DEPT, 1, (void **)&d[i]));
    struct emp *e;
    OK(tha_heap_alloc(h, EMP, n, (void **)&e));
    for (uint32_t i = 0; i < n; i++) {
        snprintf(e[i].name, sizeof e[i].name, "emp%u", i);
        e[i].id = i;
        e[i].salary = 1000 + i;
        e[i].mgr = &e[i / 10];
        e[i].dept = d[i % nd];
    }
    OK(tha_root_set(h, "emps", e));
    size_t cap = 0, len;
    OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &cap));
    cap += 1u << 20;
    uint8_t *buf = malloc(cap), *dst = malloc(cap);
    memset(dst, 1, cap);
    OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, buf, cap, &len));
    OK(tha_heap_apply(m, buf, len));
    double *te = calloc(rounds, sizeof *te), *ta = calloc(rounds, sizeof *ta),
           *tm = calloc(rounds, sizeof *tm);
    uint64_t seed = 12345;
    uint32_t k = (uint32_t)(f * n);
    for (int r = 0; r < rounds; r++) {
        if (f >= 1.0) {
            OK(tha_heap_touch_all(h));
        } else {
            for (uint32_t j = 0; j < k; j++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                uint32_t i = (uint32_t)(seed >> 33) % n;
                e[i].salary += 1;
                e[i].mgr = &e[(seed >> 13) % n];
                OK(tha_heap_touch(h, &e[i], sizeof e[i]));
            }
        }
        double t0 = now();
        OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, cap, &len));
        double t1 = now();
        OK(tha_heap_apply(m, buf, len));
        double t2 = now();
        memcpy(dst, buf, len);
        double t3 = now();
        te[r] = t1 - t0;
        ta[r] = t2 - t1;
        tm[r] = t3 - t2;
    }
    OK(tha_heap_check(m));
    double a = median(ta, rounds), c = median(tm, rounds), e0 = median(te, rounds);
    /* medians, and the fastest round (least disturbed by other load) */
    printf("f=%g: frame %zu bytes, encode %.2f ms, apply %.2f ms, memcpy %.2f ms, "
           "apply/memcpy %.2f; fastest: encode %.2f apply %.2f memcpy %.2f\n", f, len, e0,
           a, c, a / c, te[0], ta[0], tm[0]);
    return 0;
}

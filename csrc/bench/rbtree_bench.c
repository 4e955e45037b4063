/* rbtree_bench.c — the cost of mirroring a big pointer-rich structure a C
 * library owns: a libbsd red-black tree (<bsd/sys/tree.h>) of N nodes on a
 * tha heap (THA_FIELD_RB_ENTRY / THA_FIELD_RB_HEAD). Each round changes 1%
 * of the nodes the way a program does: RB_REMOVE, a new key, RB_INSERT
 * (rebalancing writes links and colours all over the tree). Then the delta
 * is encoded (in diff and wp mode that includes finding the writes) and
 * applied to a mirror in another process (forked at the start: a
 * same-address mirror must live at the active's base), against memcpy of
 * the whole heap image (what a naive mirror would copy) and against memcpy
 * of the frame's blocks to their offsets in a plain buffer (what any apply
 * must at least do). Snapshots are timed warm (a second one over the
 * mirror); the first one, whose pages fault in, is shown as "cold".
 *
 * Modes: the heap relocatable (tha_heap_create) or same-address
 * (tha_heap_create_at), times the tracking: explicit (nobody knows which
 * nodes a rebalance wrote: tha_heap_touch_all), diff, wp. Every round the
 * mirror is walked with RB_FOREACH and compared with the tree (count and a
 * hash of the keys in order): a mismatch fails the run. Prints one row per
 * mode with medians over the rounds (and the best round's ratios: the
 * machine may be shared).
 *
 *   make -C csrc bench            builds build/bench/rbtree_bench (-O2)
 *   build/bench/rbtree_bench [N] [ROUNDS] [wall]   default 1000000 7, CPU time
 *   make -C csrc bench-smoke      N=3000, 2 rounds (run by tests/test_c.py)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tha.h"

/* RB_GENERATE_STATIC marks its functions __unused, which libbsd's cdefs.h
 * leaves undefined (Debian #522773). */
#define __unused __attribute__((__unused__))
#include <bsd/sys/tree.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct node {
    uint64_t key;
    RB_ENTRY(node) rb;
};
RB_HEAD(ntree, node);
struct tree {
    struct ntree t;
    uint64_t n;
};

static int cmp(struct node *a, struct node *b) {
    return a->key < b->key ? -1 : a->key > b->key;
}
RB_GENERATE_STATIC(ntree, node, rb, cmp)

#define OK(x)                                                                  \
    do {                                                                       \
        int rc_ = (x);                                                         \
        if (rc_) {                                                             \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x,         \
                    tha_strerror(rc_));                                        \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static uint32_t NODE, TREE;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    OK(tha_schema_create(&s));
    OK(THA_STRUCT(s, struct node, "node", &NODE));
    OK(THA_FIELD_SCALAR(s, NODE, struct node, key, THA_T_U64, 0));
    OK(THA_FIELD_RB_ENTRY(s, NODE, struct node, rb, "node"));
    OK(THA_STRUCT(s, struct tree, "tree", &TREE));
    OK(THA_FIELD_RB_HEAD(s, TREE, struct tree, t, "node"));
    OK(THA_FIELD_SCALAR(s, TREE, struct tree, n, THA_T_U64, 0));
    OK(tha_schema_seal(s));
    NODE = tha_schema_type_id(s, NODE);
    TREE = tha_schema_type_id(s, TREE);
    return s;
}

/* CPU time of the process by default: on a shared machine other processes
 * stretch wall time by 2x from one minute to the next, CPU time much less
 * (a run split across the codec's two threads counts both). "wall" as the
 * third argument times by the clock on the wall. */
static clockid_t clock_id = CLOCK_PROCESS_CPUTIME_ID;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(clock_id, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* What both sides compare: node count and an order-sensitive key hash. */
typedef struct digest {
    uint64_t count, hash;
} digest_t;

static digest_t walk(struct tree *t) {
    digest_t d = {0, 1469598103934665603ull};
    struct node *x;
    RB_FOREACH(x, ntree, &t->t) {
        d.count++;
        d.hash = (d.hash ^ x->key) * 1099511628211ull;
    }
    return d;
}

/* ---- the mirror process ------------------------------------------------ */

enum { OP_CREATE = 1, OP_APPLY, OP_VERIFY, OP_QUIT };
typedef struct cmd {
    int op;
    uint64_t a, b; /* CREATE: base (0: relocatable), capacity; APPLY: length */
} cmd_t;
typedef struct reply {
    int rc;
    double apply_ms, memcpy_ms; /* APPLY: the apply; memcpy of its blocks (copy_blocks) */
    digest_t d;
    char msg[256];
} reply_t;

static int to_child[2], to_parent[2];
static uint8_t *shared; /* frames travel here (MAP_SHARED, before the fork) */
static size_t shared_cap;

static void xread(int fd, void *p, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (uint8_t *)p + got, n - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            exit(r == 0 ? 0 : 2);
        }
        got += (size_t)r;
    }
}

static void xwrite(int fd, const void *p, size_t n) {
    if (write(fd, p, n) != (ssize_t)n) exit(2);
}

/* The baseline apply cannot beat: every block of the frame's runs copied
 * to its offset in a plain buffer (the frame layout of docs/architecture.md,
 * "Frames": a 96-byte header with nruns at 12 and schema_len at 80, the
 * schema padded to 8, then per run {offset, nblocks}, a mask byte per
 * block padded to 8, the blocks). */
static void copy_blocks(uint8_t *dst, const uint8_t *frame) {
    uint32_t nruns, slen;
    memcpy(&nruns, frame + 12, 4);
    memcpy(&slen, frame + 80, 4);
    const uint8_t *p = frame + THA_FRAME_HEADER_SIZE + ((slen + 7) & ~7u);
    for (uint32_t i = 0; i < nruns; i++) {
        uint64_t run[2];
        memcpy(run, p, sizeof run);
        p += sizeof run + ((run[1] + 7) & ~7ull);
        memcpy(dst + run[0], p, run[1] * 64);
        p += run[1] * 64;
    }
}

static void mirror_main(tha_schema_t *s, size_t cap) {
    tha_heap_t *m = NULL;
    uint8_t *plain = malloc(cap);
    memset(plain, 1, cap); /* no first-touch faults in the timings */
    for (;;) {
        cmd_t c;
        reply_t r;
        memset(&r, 0, sizeof r);
        xread(to_child[0], &c, sizeof c);
        if (c.op == OP_QUIT) break;
        if (c.op == OP_CREATE) {
            tha_heap_destroy(m);
            m = NULL;
            r.rc = c.a ? tha_heap_create_at(&m, s, c.b, THA_TRACK_EXPLICIT, (void *)c.a)
                       : tha_heap_create(&m, s, c.b, THA_TRACK_EXPLICIT);
            if (r.rc) snprintf(r.msg, sizeof r.msg, "%s", tha_schema_errmsg(s));
        } else if (c.op == OP_APPLY) {
            double t0 = now_ms();
            r.rc = tha_heap_apply(m, shared, c.a);
            double t1 = now_ms();
            copy_blocks(plain, shared);
            double t2 = now_ms();
            r.apply_ms = t1 - t0;
            r.memcpy_ms = t2 - t1;
            if (r.rc) snprintf(r.msg, sizeof r.msg, "%s", tha_heap_errmsg(m));
        } else if (c.op == OP_VERIFY) {
            void *t;
            r.rc = tha_root_get(m, "tree", &t);
            if (!r.rc) r.rc = tha_heap_check(m);
            if (!r.rc) r.d = walk(t);
            else snprintf(r.msg, sizeof r.msg, "%s", tha_heap_errmsg(m));
        }
        xwrite(to_parent[1], &r, sizeof r);
    }
    tha_heap_destroy(m);
    free(plain);
}

static reply_t ask(int op, uint64_t a, uint64_t b) {
    cmd_t c = {op, a, b};
    reply_t r;
    xwrite(to_child[1], &c, sizeof c);
    xread(to_parent[0], &r, sizeof r);
    if (r.rc) {
        fprintf(stderr, "mirror: %s: %s\n", tha_strerror(r.rc), r.msg);
        exit(1);
    }
    return r;
}

/* ---- the active ------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

typedef struct heap_tree {
    tha_heap_t *h;
    struct tree *t;
    struct node **nodes; /* every node, outside the heap */
    uint64_t n;
} heap_tree_t;

static void build(heap_tree_t *x, tha_schema_t *s, uint64_t n, size_t cap, void *base) {
    if (base) OK(tha_heap_create_at(&x->h, s, cap, THA_TRACK_EXPLICIT, base));
    else OK(tha_heap_create(&x->h, s, cap, THA_TRACK_EXPLICIT));
    OK(tha_heap_alloc(x->h, TREE, 1, (void **)&x->t));
    RB_INIT(&x->t->t);
    OK(tha_root_set(x->h, "tree", x->t));
    x->nodes = malloc(n * sizeof *x->nodes);
    x->n = n;
    for (uint64_t i = 0; i < n; i++) {
        struct node *nd;
        OK(tha_heap_alloc(x->h, NODE, 1, (void **)&nd));
        do nd->key = next_rand(); while (RB_INSERT(ntree, &x->t->t, nd));
        x->nodes[i] = nd;
    }
    x->t->n = n;
}

/* 1% of the nodes: out of the tree, a new key, back in. */
static void change(heap_tree_t *x) {
    uint64_t k = x->n / 100 ? x->n / 100 : 1;
    for (uint64_t i = 0; i < k; i++) {
        struct node *nd = x->nodes[next_rand() % x->n];
        RB_REMOVE(ntree, &x->t->t, nd);
        do nd->key = next_rand(); while (RB_INSERT(ntree, &x->t->t, nd));
    }
}

static size_t encode(tha_heap_t *h, int kind, double *ms) {
    size_t need, len;
    double t0 = now_ms();
    OK(tha_heap_frame_size(h, kind, &need));
    if (need > shared_cap) {
        fprintf(stderr, "frame of %zu bytes exceeds the %zu-byte buffer\n", need, shared_cap);
        exit(1);
    }
    OK(tha_heap_encode(h, kind, shared, shared_cap, &len));
    *ms = now_ms() - t0;
    return len;
}

static void verify(heap_tree_t *x, const char *mode) {
    digest_t want = walk(x->t), got = ask(OP_VERIFY, 0, 0).d;
    if (want.count != got.count || want.hash != got.hash || want.count != x->t->n) {
        fprintf(stderr, "%s: the mirror differs: %llu nodes (hash %016llx), the tree "
                "has %llu (%016llx)\n", mode, (unsigned long long)got.count,
                (unsigned long long)got.hash, (unsigned long long)want.count,
                (unsigned long long)want.hash);
        exit(1);
    }
}

static const char *const track_names[] = {"explicit", "diff", "wp"};
static const int tracks[] = {THA_TRACK_EXPLICIT, THA_TRACK_DIFF, THA_TRACK_WP};

static void run_mode(heap_tree_t *x, size_t cap, void *base, int ti, int rounds,
                     uint8_t *image_copy) {
    char mode[64];
    OK(tha_heap_set_tracking(x->h, tracks[ti]));
    snprintf(mode, sizeof mode, "%s %s%s%s", base ? "same-address" : "relocatable",
             track_names[ti], tracks[ti] == THA_TRACK_WP ? "/" : "",
             tracks[ti] == THA_TRACK_WP ? tha_heap_tracking_name(x->h) : "");
    ask(OP_CREATE, (uint64_t)(uintptr_t)base, cap);
    tha_stats_t st;
    OK(tha_heap_stats(x->h, &st));
    /* the snapshot that starts the mirror (its pages fault in: cold), then
     * another one over it (warm) */
    double enc, t0;
    size_t len = encode(x->h, THA_FRAME_SNAPSHOT, &enc);
    double cold = ask(OP_APPLY, len, 0).apply_ms;
    len = encode(x->h, THA_FRAME_SNAPSHOT, &enc);
    reply_t r = ask(OP_APPLY, len, 0);
    t0 = now_ms();
    memcpy(image_copy, tha_heap_base(x->h), st.top);
    double image_ms = now_ms() - t0;
    verify(x, mode);
    printf("%-30s snapshot %6.1f MB  encode %6.2f ms  apply %6.2f ms (cold %6.1f)  "
           "memcpy(image) %5.2f ms  (enc+apply)/memcpy(image) %5.2f  "
           "apply/memcpy(its blocks) %5.2f\n", mode, len / 1e6, enc, r.apply_ms, cold,
           image_ms, (enc + r.apply_ms) / image_ms, r.apply_ms / r.memcpy_ms);
    double *e = calloc((size_t)rounds, sizeof *e), *a = calloc((size_t)rounds, sizeof *a);
    double *m = calloc((size_t)rounds, sizeof *m), *c = calloc((size_t)rounds, sizeof *c);
    double *ratio = calloc((size_t)rounds, sizeof *ratio);
    double *same = calloc((size_t)rounds, sizeof *same);
    size_t bytes = 0;
    for (int i = 0; i < rounds; i++) {
        change(x);
        if (tracks[ti] == THA_TRACK_EXPLICIT) OK(tha_heap_touch_all(x->h));
        len = encode(x->h, THA_FRAME_DELTA, &e[i]);
        bytes += len;
        r = ask(OP_APPLY, len, 0);
        a[i] = r.apply_ms;
        c[i] = r.memcpy_ms;
        OK(tha_heap_stats(x->h, &st));
        t0 = now_ms();
        memcpy(image_copy, tha_heap_base(x->h), st.top);
        m[i] = now_ms() - t0;
        ratio[i] = (e[i] + a[i]) / m[i];
        same[i] = a[i] / c[i];
        verify(x, mode);
    }
    double me = median(e, rounds), ma = median(a, rounds), mm = median(m, rounds);
    double mr = median(ratio, rounds), ms = median(same, rounds);
    printf("%-30s delta    %6.1f MB  encode %6.2f ms  apply %6.2f ms                "
           "memcpy(image) %5.2f ms  (enc+apply)/memcpy(image) %5.2f  "
           "apply/memcpy(its blocks) %5.2f  (best %.2f / %.2f)\n", mode,
           bytes / 1e6 / rounds, me, ma, mm, mr, ms, ratio[0], same[0]);
    fflush(stdout);
    free(e), free(a), free(m), free(c), free(ratio), free(same);
}

int main(int argc, char **argv) {
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 0) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    int wall = argc > 3 && strcmp(argv[3], "wall") == 0;
    if (n < 100 || rounds < 1 || (argc > 3 && !wall)) {
        fprintf(stderr, "usage: %s [nodes >= 100] [rounds >= 1] [wall]\n", argv[0]);
        return 2;
    }
    if (wall) clock_id = CLOCK_MONOTONIC;
    /* 40-byte nodes in 48-byte slots, plus allocator metadata and room */
    size_t cap = ((n * 48 * 5 / 4) + (8u << 20) + 0xffff) & ~(size_t)0xffff;
    shared_cap = cap + cap / 32 + (1u << 20);
    shared = mmap(NULL, shared_cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                  -1, 0);
    if (shared == MAP_FAILED) return 1;
    memset(shared, 0, shared_cap);
    tha_schema_t *s = make_schema();
    if (pipe(to_child) || pipe(to_parent)) return 1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        mirror_main(s, cap);
        tha_schema_release(s);
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    printf("rbtree_bench: %llu nodes, %d rounds of 1%% changed (remove, new key, "
           "insert), mirror in another process; delta rows: medians; %s time\n",
           (unsigned long long)n, rounds, wall ? "wall" : "CPU");
    uint8_t *image_copy = malloc(cap);
    memset(image_copy, 1, cap);
    void *const base = THA_BASE_DEFAULT;
    for (int same = 0; same < 2; same++) {
        heap_tree_t x = {0};
        build(&x, s, n, cap, same ? base : NULL);
        for (int ti = 0; ti < 3; ti++) run_mode(&x, cap, same ? base : NULL, ti, rounds,
                                                image_copy);
        tha_heap_destroy(x.h);
        free(x.nodes);
    }
    cmd_t q = {OP_QUIT, 0, 0};
    xwrite(to_child[1], &q, sizeof q);
    int status;
    waitpid(pid, &status, 0);
    free(image_copy);
    tha_schema_release(s);
    munmap(shared, shared_cap);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

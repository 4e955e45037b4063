/* test_bounds.c — what a schema may cost and stale temp files (issue 9):
 * a schema nested 60,000 deep seals, travels and backs a heap without deep
 * recursion; a tiny blob declaring 2^27 pointer slots is refused at once,
 * naming the struct and field, while a big legitimate struct that fits the
 * heap works; a type larger than the heap's capacity is refused; temp files
 * of a checkpoint killed mid-way are removed by the next checkpoint or load,
 * and only those (not one being written, not one of another name). */
#include "tha.h"
#include "check.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- a blob by hand: the canonical byte form, little-endian ------------- */

typedef struct blob {
    uint8_t b[4096];
    size_t n;
} blob_t;

static void put32(blob_t *w, uint32_t v) {
    for (int i = 0; i < 4; i++) w->b[w->n++] = (uint8_t)(v >> (8 * i));
}
static void put64(blob_t *w, uint64_t v) {
    put32(w, (uint32_t)v);
    put32(w, (uint32_t)(v >> 32));
}
static void putstr(blob_t *w, const char *s) {
    size_t n = strlen(s);
    w->b[w->n++] = (uint8_t)n;
    w->b[w->n++] = 0;
    memcpy(w->b + w->n, s, n);
    w->n += n;
}
static void put_type(blob_t *w, const char *name, uint64_t size, uint32_t nfields) {
    putstr(w, name);
    put32(w, 0);
    put64(w, size);
    put64(w, 8);
    put32(w, nfields);
}
static void put_field(blob_t *w, const char *name, uint32_t kind, const char *target,
                      uint32_t d0, uint32_t d1) {
    putstr(w, name);
    put32(w, 0); /* offset */
    put32(w, kind);
    put32(w, 0); /* prim */
    putstr(w, target);
    put32(w, d0);
    put32(w, d1);
    put32(w, 0);
    put32(w, 0);
    put32(w, 0);
    put32(w, 0);
    putstr(w, "");
}
static void put_header(blob_t *w, uint32_t ntypes) {
    put32(w, 0x53414854u);
    put32(w, 1);
    put32(w, ntypes);
    put32(w, 0);
}

/* ---- 4: deep nesting ---------------------------------------------------- */

#define DEPTH 60000

/* n00000 holds n00001 by value, ... n59999 holds a pointer to n00000. */
static tha_schema_t *deep_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    uint32_t *ids = malloc(DEPTH * sizeof *ids);
    char name[16], next[16];
    for (int i = 0; i < DEPTH; i++) {
        snprintf(name, sizeof name, "n%05d", i);
        CHECK_OK(tha_schema_add_struct(s, name, 8, 8, 0, &ids[i]));
    }
    for (int i = 0; i < DEPTH; i++) {
        snprintf(next, sizeof next, "n%05d", i + 1 < DEPTH ? i + 1 : 0);
        tha_field_t f = {.name = "x", .kind = i + 1 < DEPTH ? THA_K_STRUCT : THA_K_PTR,
                         .target = next};
        CHECK_OK(tha_schema_add_field(s, ids[i], &f));
    }
    free(ids);
    return s;
}

static void test_deep_nesting(void) {
    tha_schema_t *s = deep_schema();
    CHECK_OK(tha_schema_seal(s));
    uint32_t top;
    CHECK_OK(tha_schema_type_by_name(s, "n00000", &top));
    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_info(s, top, &ti));
    CHECK(ti.nslots == 1);
    /* the byte form comes back equal */
    size_t len;
    CHECK_OK(tha_schema_serialize(s, NULL, 0, &len));
    uint8_t *buf = malloc(len);
    CHECK_OK(tha_schema_serialize(s, buf, len, &len));
    tha_schema_t *back = NULL;
    char msg[256];
    CHECK_OK(tha_schema_deserialize(buf, len, &back, msg, sizeof msg));
    CHECK_OK(tha_schema_compare(s, back, msg, sizeof msg));
    free(buf);
    /* a heap of it, a snapshot applied elsewhere, a checkpoint loaded */
    tha_heap_t *h, *m;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    void *p, *q;
    CHECK_OK(tha_heap_alloc(h, top, 2, &p));
    CHECK_OK(tha_heap_alloc(h, top, 1, &q));
    *(void **)p = q;
    CHECK_OK(tha_root_set(h, "p", p));
    size_t n;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n));
    uint8_t *frame = malloc(n);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, frame, n, &n));
    tha_schema_t *fs = NULL;
    CHECK_OK(tha_frame_schema(frame, n, &fs, msg, sizeof msg));
    CHECK_OK(tha_heap_create(&m, back, 1 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_apply(m, frame, n));
    CHECK_OK(tha_heap_check(m));
    char path[] = "/tmp/tha-deep-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    CHECK_OK(tha_heap_checkpoint(h, path, NULL, NULL));
    tha_heap_t *l = NULL;
    tha_load_report_t rep;
    tha_load_options_t opt = {.check = 1};
    CHECK_OK(tha_heap_load(&l, path, &opt, &rep));
    unlink(path);
    tha_heap_destroy(l);
    tha_heap_destroy(m);
    tha_heap_destroy(h);
    free(frame);
    tha_schema_release(fs);
    tha_schema_release(back);
    tha_schema_release(s);
}

/* A by-value cycle deep down is still found and named, without recursion. */
static void test_deep_cycle(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    uint32_t *ids = malloc(DEPTH * sizeof *ids);
    char name[16], next[16];
    for (int i = 0; i < DEPTH; i++) {
        snprintf(name, sizeof name, "c%05d", i);
        CHECK_OK(tha_schema_add_struct(s, name, 8, 8, 0, &ids[i]));
    }
    for (int i = 0; i < DEPTH; i++) {
        snprintf(next, sizeof next, "c%05d", (i + 1) % DEPTH);
        tha_field_t f = {.name = "x", .kind = THA_K_STRUCT, .target = next};
        CHECK_OK(tha_schema_add_field(s, ids[i], &f));
    }
    free(ids);
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct c59999 field x: contains struct c00000 by value");
    tha_schema_release(s);
}

/* ---- 5: what a schema may cost ----------------------------------------- */

/* struct big { void *p[1 << 27]; }: 1 GiB, 2^27 relocation-table entries. */
static void test_huge_pointer_array_blob(void) {
    blob_t w = {.n = 0};
    put_header(&w, 1);
    put_type(&w, "big", (uint64_t)8 << 27, 1);
    put_field(&w, "p", THA_K_PTR, "void", 1u << 27, 0);
    tha_schema_t *s = NULL;
    char msg[256];
    double t0 = now();
    int rc = tha_schema_deserialize(w.b, w.n, &s, msg, sizeof msg);
    double took = now() - t0;
    CHECK(rc == THA_ESCHEMA);
    CHECK(s == NULL);
    CHECK(took < 0.5);
    CHECK_CONTAINS(msg, "struct big field p");
    CHECK_CONTAINS(msg, "pointer slots");
    tha_schema_release(s);
    /* the same registered through the API: refused when sealed */
    CHECK_OK(tha_schema_create(&s));
    uint32_t id;
    CHECK_OK(tha_schema_add_struct(s, "big", (size_t)8 << 27, 8, 0, &id));
    tha_field_t f = {.name = "p", .kind = THA_K_PTR, .target = "void", .dims = {1u << 27}};
    CHECK_OK(tha_schema_add_field(s, id, &f));
    t0 = now();
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK(now() - t0 < 0.5);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct big field p");
    tha_schema_release(s);
}

/* Nested arrays multiplying out: a { void *p[4096] }, b { a x[64][64] },
 * c { b y[8] }: 2^24 slots in b, 2^27 in c, from ~150 bytes. */
static void test_nested_arrays_blob(void) {
    blob_t w = {.n = 0};
    put_header(&w, 3);
    put_type(&w, "a", 8 * 4096, 1);
    put_field(&w, "p", THA_K_PTR, "void", 4096, 0);
    put_type(&w, "b", (uint64_t)8 * 4096 * 4096, 1);
    put_field(&w, "x", THA_K_STRUCT, "a", 64, 64);
    put_type(&w, "c", (uint64_t)8 * 4096 * 4096 * 8 - 8, 1); /* < 4 GiB */
    put_field(&w, "y", THA_K_STRUCT, "b", 7, 0);
    tha_schema_t *s = NULL;
    char msg[256];
    double t0 = now();
    int rc = tha_schema_deserialize(w.b, w.n, &s, msg, sizeof msg);
    CHECK(now() - t0 < 0.5);
    CHECK(rc == THA_ESCHEMA);
    CHECK(s == NULL);
    CHECK_CONTAINS(msg, "struct b field x");
}

/* A big struct a real program might register: 1 Mi pointers inline (8 MiB),
 * held by value in another; works with a heap it fits in. */
static void test_big_legit_struct(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    uint32_t tab, outer;
    CHECK_OK(tha_schema_add_struct(s, "table", (size_t)8 << 20, 8, 0, &tab));
    tha_field_t f = {.name = "buckets", .kind = THA_K_PTR, .target = "table",
                     .dims = {1u << 20}};
    CHECK_OK(tha_schema_add_field(s, tab, &f));
    CHECK_OK(tha_schema_add_struct(s, "outer", ((size_t)8 << 20) + 8, 8, 0, &outer));
    tha_field_t g = {.name = "t", .kind = THA_K_STRUCT, .target = "table"};
    tha_field_t n = {.name = "n", .offset = 8 << 20, .kind = THA_K_SCALAR,
                     .prim = THA_T_U64};
    CHECK_OK(tha_schema_add_field(s, outer, &g));
    CHECK_OK(tha_schema_add_field(s, outer, &n));
    CHECK_OK(tha_schema_seal(s));
    tha_type_info_t ti;
    CHECK_OK(tha_schema_type_info(s, outer, &ti));
    CHECK(ti.nslots == 1u << 20);
    size_t len;
    uint8_t buf[512];
    CHECK_OK(tha_schema_serialize(s, buf, sizeof buf, &len));
    tha_schema_t *back = NULL;
    char msg[256];
    CHECK_OK(tha_schema_deserialize(buf, len, &back, msg, sizeof msg));
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 64 << 20, THA_TRACK_EXPLICIT));
    void *p;
    CHECK_OK(tha_heap_alloc(h, outer, 1, &p));
    ((void **)p)[5] = p;
    CHECK_OK(tha_heap_touch(h, p, 0));
    CHECK_OK(tha_heap_check(h));
    tha_heap_destroy(h);
    /* a heap it cannot fit in is refused, naming the type */
    CHECK_RC(tha_heap_create(&h, s, 4 << 20, THA_TRACK_EXPLICIT), THA_ESCHEMA);
    CHECK(h == NULL);
    tha_schema_release(back);
    tha_schema_release(s);
}

/* A snapshot whose schema declares a type larger than the frame's own
 * capacity: tha_frame_schema refuses it before building its tables. */
static void test_type_larger_than_capacity_in_frame(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    uint32_t id;
    CHECK_OK(tha_schema_add_struct(s, "x", 64, 8, 0, &id));
    tha_field_t f = {.name = "p", .kind = THA_K_PTR, .target = "x", .dims = {8}};
    CHECK_OK(tha_schema_add_field(s, id, &f));
    CHECK_OK(tha_schema_seal(s));
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    size_t n;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n));
    uint8_t *frame = malloc(n);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, frame, n, &n));
    /* the schema starts after the 96-byte header: type x's size is at
     * 16 + 2 + 1 + 4 = 23; make it 2 MiB (> the 1 MiB capacity) */
    uint8_t *sz = frame + THA_FRAME_HEADER_SIZE + 23;
    CHECK(sz[0] == 64);
    sz[0] = 0;
    sz[2] = 0x20;
    tha_schema_t *fs = NULL;
    char msg[256];
    CHECK_RC(tha_frame_schema(frame, n, &fs, msg, sizeof msg), THA_ESCHEMA);
    CHECK_CONTAINS(msg, "struct x");
    CHECK_CONTAINS(msg, "capacity");
    free(frame);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* Found by fuzz_schema: pointer slots that land off the 8-byte words of the
 * pointer map (a nested struct at offset 4, a size not a multiple of 8 so
 * array elements shift) were accepted and the pointer map disagreed with
 * the relocation table (tha_heap_check failed on a fresh object). */
static void test_misaligned_nested_slots(void) {
    tha_schema_t *s;
    uint32_t pt, outer;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "pt", 8, 8, 0, &pt));
    tha_field_t p = {.name = "p", .kind = THA_K_PTR, .target = "pt"};
    CHECK_OK(tha_schema_add_field(s, pt, &p));
    CHECK_OK(tha_schema_add_struct(s, "outer", 12, 4, 0, &outer));
    tha_field_t in = {.name = "in", .offset = 4, .kind = THA_K_STRUCT, .target = "pt"};
    CHECK_OK(tha_schema_add_field(s, outer, &in));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct outer field in.p");
    CHECK_CONTAINS(tha_schema_errmsg(s), "not 8-byte aligned");
    tha_schema_release(s);
    /* a pointer at 0 of a 12-byte struct: element 1's is at 12 */
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(tha_schema_add_struct(s, "odd", 12, 4, 0, &outer));
    tha_field_t q = {.name = "q", .kind = THA_K_PTR, .target = "odd"};
    CHECK_OK(tha_schema_add_field(s, outer, &q));
    CHECK_RC(tha_schema_seal(s), THA_ESCHEMA);
    CHECK_CONTAINS(tha_schema_errmsg(s), "struct odd: holds pointers but its size 12");
    tha_schema_release(s);
}

/* ---- 6: stale temp files ------------------------------------------------ */

static void touch_file(const char *path) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "junk", 4) == 4);
    close(fd);
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static void test_stale_temps(void) {
    char dir[] = "/tmp/tha-temps-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[300], stale[300], live[300], other[300], odd[300], stale_log[300],
        logp[300];
    snprintf(path, sizeof path, "%s/c.tha", dir);
    snprintf(stale, sizeof stale, "%s/c.tha.tmp-Ab3xY9", dir);
    snprintf(live, sizeof live, "%s/c.tha.tmp-LIVE00", dir);
    snprintf(other, sizeof other, "%s/d.tha.tmp-Ab3xY9", dir);
    snprintf(odd, sizeof odd, "%s/c.tha.tmp-Ab3xY9z", dir);
    snprintf(logp, sizeof logp, "%s/c.log", dir);
    snprintf(stale_log, sizeof stale_log, "%s/c.log.tmp-q1W2e3", dir);
    touch_file(stale);
    touch_file(live);
    touch_file(other);
    touch_file(odd);
    touch_file(stale_log);
    /* "live": another writer holds its lock */
    int lfd = open(live, O_RDWR);
    CHECK(lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) == 0);

    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    uint32_t id;
    CHECK_OK(tha_schema_add_struct(s, "x", 16, 8, 0, &id));
    CHECK_OK(tha_schema_seal(s));
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    void *p;
    CHECK_OK(tha_heap_alloc(h, id, 1, &p));
    CHECK_OK(tha_heap_checkpoint(h, path, NULL, NULL));
    CHECK(!exists(stale));
    CHECK(exists(live));
    CHECK(exists(other));
    CHECK(exists(odd));
    CHECK(exists(stale_log)); /* not the checkpoint's */
    /* compact cleans the log's */
    CHECK_OK(tha_heap_attach_log(h, logp, THA_LOG_FSYNC_NEVER));
    CHECK_OK(tha_heap_compact(h, path, NULL, NULL));
    CHECK(!exists(stale_log));
    CHECK(exists(live));
    /* the writer died: its lock is gone; load removes the file */
    close(lfd);
    touch_file(stale);
    touch_file(stale_log);
    tha_heap_t *l = NULL;
    tha_load_report_t rep;
    tha_load_options_t opt = {.log = logp};
    CHECK_OK(tha_heap_load(&l, path, &opt, &rep));
    CHECK(!exists(live));
    CHECK(!exists(stale));
    CHECK(!exists(stale_log));
    CHECK(exists(other));
    CHECK(exists(odd));
    /* a symlink of our naming is not followed nor removed... */
    char link[300];
    snprintf(link, sizeof link, "%s/c.tha.tmp-SymLnk", dir);
    CHECK(symlink(other, link) == 0);
    CHECK_OK(tha_heap_checkpoint(h, path, NULL, NULL));
    CHECK(exists(link) && exists(other));
    tha_heap_destroy(l);
    tha_heap_destroy(h);
    tha_schema_release(s);
    unlink(link);
    unlink(other);
    unlink(odd);
    unlink(path);
    unlink(logp);
    CHECK(rmdir(dir) == 0);
}

/* argv[1], if given, runs only the test of that name. */
#define RUN_IF(t)                                                              \
    do {                                                                       \
        if (argc < 2 || strcmp(argv[1], #t) == 0) RUN(t);                      \
    } while (0)

int main(int argc, char **argv) {
    RUN_IF(test_deep_nesting);
    RUN_IF(test_deep_cycle);
    RUN_IF(test_huge_pointer_array_blob);
    RUN_IF(test_nested_arrays_blob);
    RUN_IF(test_big_legit_struct);
    RUN_IF(test_type_larger_than_capacity_in_frame);
    RUN_IF(test_misaligned_nested_slots);
    RUN_IF(test_stale_temps);
    return CHECK_DONE();
}

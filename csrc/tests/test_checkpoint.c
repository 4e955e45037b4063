/* test_checkpoint.c — checkpoint files and the delta log, end to end in C:
 * round trip at another address, replay, compaction, torn and corrupt files
 * (every truncation of the last frame, bit flips), the append failure rule. */
#include "tha.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct emp *reports[4];
    void (*on_raise)(void);
};

static void raise_a(void) {}
static uint32_t EMP;
static char dir[] = "/tmp/tha-ckpt-XXXXXX";
static char ckpt[300], logp[300], scratch[300], scratch_log[300];

static tha_schema_t *make_schema(int salary_is_float) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, salary,
                              salary_is_float ? THA_T_F32 : THA_T_F64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, reports, "emp", 4));
    CHECK_OK(THA_FIELD_FUNC(s, EMP, struct emp, on_raise, 0));
    CHECK_OK(tha_schema_add_func(s, "raise_a", raise_a));
    CHECK_OK(tha_schema_seal(s));
    /* canonical ids, as the heap reports them (handles work as input) */
    EMP = tha_schema_type_id(s, EMP);
    return s;
}

/* A snapshot frame of h (seq bumped: only for comparing two heaps). */
static uint8_t *snap(tha_heap_t *h, size_t *len) {
    size_t n;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n));
    uint8_t *buf = malloc(n);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, buf, n, len));
    return buf;
}

/* a and b hold the same image at the same seq: their next snapshots are
 * byte for byte equal (pointers travel as offsets). Both get seq + 1. */
static int same(tha_heap_t *a, tha_heap_t *b) {
    size_t la, lb;
    uint8_t *fa = snap(a, &la), *fb = snap(b, &lb);
    int eq = la == lb && memcmp(fa, fb, la) == 0;
    free(fa);
    free(fb);
    return eq;
}

static struct emp *build(tha_heap_t *h, int n) {
    struct emp *team;
    CHECK_OK(tha_heap_alloc(h, EMP, (uint32_t)n, (void **)&team));
    for (int i = 0; i < n; i++) {
        snprintf(team[i].name, sizeof team[i].name, "emp%d", i);
        team[i].id = (uint32_t)i;
        team[i].salary = 1000.0 + i;
        team[i].mgr = i ? &team[(i - 1) / 4] : NULL;
        team[i].on_raise = i % 3 ? raise_a : NULL;
        for (int k = 0; k < 4 && 4 * i + k + 1 < n; k++) team[i].reports[k] = &team[4 * i + k + 1];
    }
    CHECK_OK(tha_heap_touch(h, team, 0));
    CHECK_OK(tha_root_set(h, "team", team));
    return team;
}

static void copy_file(const char *from, const char *to, long len) {
    int a = open(from, O_RDONLY), b = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    char buf[65536];
    long done = 0;
    while (len < 0 || done < len) {
        long want = len < 0 || len - done > (long)sizeof buf ? (long)sizeof buf : len - done;
        ssize_t r = read(a, buf, (size_t)want);
        if (r <= 0) break;
        CHECK(write(b, buf, (size_t)r) == r);
        done += r;
    }
    close(a);
    close(b);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) ? -1 : (long)st.st_size;
}

static void flip_bit(const char *p, long off, int bit) {
    int fd = open(p, O_RDWR);
    uint8_t c;
    CHECK(pread(fd, &c, 1, off) == 1);
    c ^= (uint8_t)(1u << bit);
    CHECK(pwrite(fd, &c, 1, off) == 1);
    close(fd);
}

static void test_round_trip(void) {
    tha_schema_t *s = make_schema(0);
    tha_heap_t *h, *g = NULL;
    CHECK_OK(tha_heap_create(&h, s, 4u << 20, THA_TRACK_EXPLICIT));
    struct emp *team = build(h, 3000);
    size_t n;
    uint8_t *f = snap(h, &n); /* seq 1 */
    free(f);
    team[7].salary = 7.5; /* pending: dirty in the file, dirty after load */
    CHECK_OK(tha_heap_touch(h, &team[7].salary, 8));
    CHECK_OK(tha_heap_checkpoint(h, ckpt, NULL, NULL));
    tha_stats_t st, st2;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.seq == 1 && st.dirty_blocks == 1); /* untouched by the checkpoint */

    tha_checkpoint_info_t info;
    tha_schema_t *fs = NULL;
    CHECK_OK(tha_checkpoint_info(ckpt, &info, &fs, NULL, 0));
    CHECK(info.seq == 1 && info.top == st.top && info.file_bytes == (uint64_t)file_size(ckpt));
    CHECK(tha_schema_fingerprint(fs) == tha_schema_fingerprint(s));
    tha_schema_release(fs);

    /* functions are unbound in the file's schema: the caller's binds them */
    tha_load_report_t rep;
    CHECK_RC(tha_heap_load(&g, ckpt, NULL, &rep), THA_ERANGE);
    CHECK(g == NULL);
    CHECK_CONTAINS(rep.msg, "raise_a");
    tha_load_options_t opt = {.schema = s, .check = 1, .tracking = THA_TRACK_DIFF};
    CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
    CHECK(tha_heap_base(g) != tha_heap_base(h));
    CHECK_OK(tha_heap_check(g));
    CHECK_OK(tha_heap_stats(g, &st2));
    CHECK(st2.seq == 1 && st2.lineage == st.lineage && st2.dirty_blocks == 1);
    CHECK(rep.checkpoint_seq == 1 && rep.seq == 1);
    /* the loaded heap continues the series: h's next delta applies to a
     * mirror made from g's snapshot, and g's own delta carries the pending
     * block */
    CHECK(same(h, g));
    tha_heap_destroy(g);

    /* a mismatched schema names the field */
    tha_schema_t *other = make_schema(1);
    opt.schema = other;
    CHECK_RC(tha_heap_load(&g, ckpt, &opt, &rep), THA_EMISMATCH);
    CHECK_CONTAINS(rep.msg, "salary");
    tha_schema_release(other);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

static uint64_t prog_done, prog_total;
static int prog_calls;
static void on_progress(void *ctx, uint64_t done, uint64_t total) {
    (void)ctx;
    CHECK(done >= prog_done && done <= total);
    prog_done = done;
    prog_total = total;
    prog_calls++;
}

static void test_progress_and_big(void) {
    tha_schema_t *s = make_schema(0);
    tha_heap_t *h, *g;
    CHECK_OK(tha_heap_create(&h, s, 16u << 20, THA_TRACK_EXPLICIT));
    char *big;
    CHECK_OK(tha_heap_alloc(h, THA_T_U8, 5u << 20, (void **)&big));
    for (int i = 0; i < (5 << 20); i += 4096) big[i] = (char)i;
    CHECK_OK(tha_root_set(h, "big", big));
    CHECK_OK(tha_heap_checkpoint(h, ckpt, on_progress, NULL));
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(prog_calls > 4 && prog_done == st.top && prog_total == st.top);
    prog_done = 0;
    prog_calls = 0;
    tha_load_options_t opt = {.schema = s, .progress = on_progress, .check = 1};
    CHECK_OK(tha_heap_load(&g, ckpt, &opt, NULL));
    CHECK(prog_calls > 4 && prog_done == st.top);
    CHECK(same(h, g));
    tha_heap_destroy(g);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* A heap with a log; returns the snapshot bytes of each state (seq 0..n) via
 * a mirror that follows the log's frames. */
static void test_log(void) {
    tha_schema_t *s = make_schema(0);
    tha_heap_t *h, *g;
    CHECK_OK(tha_heap_create(&h, s, 4u << 20, THA_TRACK_EXPLICIT));
    unlink(logp);
    CHECK_OK(tha_heap_attach_log(h, logp, THA_LOG_FSYNC_NEVER));
    CHECK_RC(tha_heap_attach_log(h, logp, 0), THA_ESTATE);
    struct emp *team = build(h, 500);
    static uint8_t buf[1 << 20];
    size_t len;
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len)); /* 1 */
    CHECK_OK(tha_heap_checkpoint(h, ckpt, NULL, NULL));                   /* at 1 */
    long ends[8];
    for (int i = 0; i < 5; i++) { /* deltas 2..6 */
        team[i * 10].id = 9000u + (uint32_t)i;
        CHECK_OK(tha_heap_touch(h, &team[i * 10].id, 4));
        CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len));
        ends[i] = file_size(logp);
    }
    CHECK_OK(tha_heap_sync_log(h));
    tha_load_options_t opt = {.schema = s, .log = logp, .check = 1};
    tha_load_report_t rep;
    CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
    CHECK(rep.stop_code == 0 && rep.frames_applied == 5 && rep.frames_skipped == 1);
    CHECK(rep.seq == 6 && rep.log_end == (uint64_t)ends[4]);
    {
        tha_stats_t st;
        CHECK_OK(tha_heap_stats(g, &st));
        CHECK(st.seq == 6 && st.dirty_blocks == 0);
    }
    /* reattach the loaded heap: the log continues */
    CHECK_OK(tha_heap_attach_log(g, logp, THA_LOG_FSYNC_ALWAYS));
    tha_heap_destroy(g);

    /* every truncation inside the last frame: the state before it, reported */
    for (long cut = ends[3]; cut < ends[4]; cut++) {
        copy_file(logp, scratch_log, cut);
        opt.log = scratch_log;
        opt.check = cut % 7 == 0;
        CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
        CHECK(rep.seq == 5 && rep.frames_applied == 4);
        CHECK(cut == ends[3] ? rep.stop_code == 0
                             : rep.stop_code == THA_EFRAME && rep.stop_offset == (uint64_t)ends[3]);
        tha_heap_destroy(g);
    }
    /* bit flips in the third frame: the state before it */
    for (long off = ends[1]; off < ends[2]; off += 5) {
        copy_file(logp, scratch_log, -1);
        flip_bit(scratch_log, off, (int)(off % 8));
        CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
        CHECK(rep.seq == 3 && rep.stop_offset == (uint64_t)ends[1] && rep.stop_code != 0);
        tha_heap_destroy(g);
    }
    /* a gap: drop the log, so frames follow seq 6 while the checkpoint is 1 */
    CHECK_OK(tha_heap_checkpoint(h, scratch, NULL, NULL)); /* at 6 */
    CHECK_OK(tha_heap_detach_log(h));
    unlink(logp);
    CHECK_OK(tha_heap_attach_log(h, logp, THA_LOG_FSYNC_ALWAYS)); /* base 6 */
    team[0].id = 1;
    CHECK_OK(tha_heap_touch(h, &team[0].id, 4));
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len)); /* 7 */
    opt.log = logp;
    CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
    CHECK(rep.stop_code == THA_ESEQ && rep.seq == 1 && rep.stop_seq == 7);
    CHECK_CONTAINS(rep.msg, "gap");
    tha_heap_destroy(g);
    /* an existing log that does not end at the heap's seq is refused */
    tha_heap_t *fresh;
    CHECK_OK(tha_heap_create(&fresh, s, 4u << 20, THA_TRACK_EXPLICIT));
    CHECK_RC(tha_heap_attach_log(fresh, logp, 0), THA_ESEQ);
    tha_heap_destroy(fresh);

    /* compact: new checkpoint, empty log; replay gives the same state */
    CHECK_OK(tha_heap_compact(h, ckpt, NULL, NULL));
    CHECK(file_size(logp) == 64);
    team[1].id = 2;
    CHECK_OK(tha_heap_touch(h, &team[1].id, 4));
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len)); /* 8 */
    CHECK_OK(tha_heap_load(&g, ckpt, &opt, &rep));
    CHECK(rep.stop_code == 0 && rep.frames_applied == 1 && rep.seq == 8);
    CHECK_OK(tha_heap_detach_log(h));
    CHECK(same(h, g));
    tha_heap_destroy(g);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* The checkpoint refuses every truncation and the bit flips tried. */
static void test_corrupt_checkpoint(void) {
    tha_schema_t *s = make_schema(0);
    tha_heap_t *h, *g;
    CHECK_OK(tha_heap_create(&h, s, 2u << 20, THA_TRACK_EXPLICIT));
    build(h, 200);
    CHECK_OK(tha_heap_checkpoint(h, ckpt, NULL, NULL));
    long size = file_size(ckpt);
    tha_load_options_t opt = {.schema = s};
    tha_load_report_t rep;
    for (long cut = 0; cut < size; cut += cut < 4096 || cut > size - 4096 ? 1 : 97) {
        copy_file(ckpt, scratch, cut);
        g = NULL;
        CHECK(tha_heap_load(&g, scratch, &opt, &rep) != 0);
        CHECK(g == NULL);
    }
    int refused = 0, tries = 0;
    for (long off = 0; off < size; off += off < 2048 || off > size - 2048 ? 3 : 1013) {
        copy_file(ckpt, scratch, -1);
        flip_bit(scratch, off, (int)(off % 8));
        g = NULL;
        int rc = tha_heap_load(&g, scratch, &opt, &rep);
        tries++;
        refused += rc != 0;
        if (rc == 0) tha_heap_destroy(g);
        else CHECK(g == NULL && rep.msg[0]);
    }
    CHECK(refused == tries);
    /* version */
    copy_file(ckpt, scratch, -1);
    {
        int fd = open(scratch, O_RDWR);
        uint16_t v = 9;
        CHECK(pwrite(fd, &v, 2, 4) == 2);
        close(fd);
    }
    CHECK(tha_heap_load(&g, scratch, &opt, &rep) != 0);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

/* A log that cannot grow (RLIMIT_FSIZE): the frame is not made, the heap
 * and the log are unchanged, and the next encode succeeds. */
static void test_append_failure(void) {
    tha_schema_t *s = make_schema(0);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 2u << 20, THA_TRACK_EXPLICIT));
    unlink(logp);
    CHECK_OK(tha_heap_attach_log(h, logp, THA_LOG_FSYNC_NEVER));
    build(h, 100);
    static uint8_t buf[1 << 20];
    size_t len;
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)file_size(logp) + 1000; /* part of the frame fits */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc == -EFBIG);
    CHECK_CONTAINS(tha_heap_errmsg(h), "not made");
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(h, &st));
    CHECK(st.seq == 0 && st.dirty_blocks > 0 && file_size(logp) == 64);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, buf, sizeof buf, &len));
    CHECK(file_size(logp) == 64 + (long)len);
    tha_heap_destroy(h);
    tha_schema_release(s);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    snprintf(ckpt, sizeof ckpt, "%s/state.tha", dir);
    snprintf(logp, sizeof logp, "%s/state.log", dir);
    snprintf(scratch, sizeof scratch, "%s/scratch.tha", dir);
    snprintf(scratch_log, sizeof scratch_log, "%s/scratch.log", dir);
    RUN(test_round_trip);
    RUN(test_progress_and_big);
    RUN(test_log);
    RUN(test_corrupt_checkpoint);
    RUN(test_append_failure);
    unlink(ckpt);
    unlink(logp);
    unlink(scratch);
    unlink(scratch_log);
    rmdir(dir);
    return CHECK_DONE();
}

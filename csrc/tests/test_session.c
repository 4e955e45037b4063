/* test_session.c — the sans-I/O replication session, two ends wired in
 * memory (no sockets): handshake, bulk sync, deltas with acks, resume,
 * heartbeats and timeouts; the active->standby byte stream fed back at
 * every split and truncated prefix; garbage, bad checksums, wrong MACs and
 * stale epochs. Words: end = one session and the events it produced. */
#include "tha.h"
#include "check.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sys/wait.h>

struct dept;
struct emp {
    char name[32];
    uint32_t id;
    double salary;
    struct emp *mgr;
    struct dept *dept;
    struct emp *reports[4];
};
struct dept {
    char name[32];
    uint32_t id;
};

enum { NSTAFF = 20, CAPACITY = 1 << 20, MAXEV = 4096 };

static uint32_t EMP, DEPT;

static tha_schema_t *make_schema(void) {
    tha_schema_t *s;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct emp, "emp", &EMP));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, id, THA_T_U32, 0));
    CHECK_OK(THA_FIELD_SCALAR(s, EMP, struct emp, salary, THA_T_F64, 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, mgr, "emp", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, dept, "dept", 0));
    CHECK_OK(THA_FIELD_PTR(s, EMP, struct emp, reports, "emp", 4));
    CHECK_OK(THA_STRUCT(s, struct dept, "dept", &DEPT));
    CHECK_OK(THA_FIELD_SCALAR(s, DEPT, struct dept, name, THA_T_CHAR, 32));
    CHECK_OK(THA_FIELD_SCALAR(s, DEPT, struct dept, id, THA_T_U32, 0));
    CHECK_OK(tha_schema_seal(s));
    /* canonical ids, as the heap reports them (handles work as input) */
    EMP = tha_schema_type_id(s, EMP);
    DEPT = tha_schema_type_id(s, DEPT);
    return s;
}

/* A heap with a department and NSTAFF employees rooted at "staff". */
static tha_heap_t *company_in(size_t capacity, struct emp **staff) {
    tha_schema_t *s = make_schema();
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, capacity, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    struct dept *d;
    struct emp *es;
    CHECK_OK(tha_heap_alloc(h, DEPT, 1, (void **)&d));
    CHECK_OK(tha_heap_alloc(h, EMP, NSTAFF, (void **)&es));
    strcpy(d->name, "eng");
    d->id = 1;
    for (int i = 0; i < NSTAFF; i++) {
        snprintf(es[i].name, sizeof es[i].name, "emp%d", i);
        es[i].id = (uint32_t)i;
        es[i].dept = d;
        es[i].mgr = &es[i / 2];
        if (i < 4) es[0].reports[i] = &es[i + 1];
    }
    CHECK_OK(tha_heap_touch(h, d, 0));
    CHECK_OK(tha_heap_touch(h, es, 0));
    CHECK_OK(tha_root_set(h, "staff", es));
    *staff = es;
    return h;
}

static tha_heap_t *company(struct emp **staff) { return company_in(CAPACITY, staff); }

static void mutate(tha_heap_t *h, struct emp *es, int round) {
    for (int i = round % 3; i < NSTAFF; i += 3) {
        es[i].salary = round * 1000.0 + i;
        CHECK_OK(tha_heap_touch(h, &es[i].salary, sizeof es[i].salary));
    }
}

static uint64_t off_of(tha_heap_t *h, const void *p) {
    return p ? (uint64_t)((const char *)p - (const char *)tha_heap_base(h)) : 0;
}

/* Same live objects, same bytes, pointers equal as offsets; same seq. */
static bool mirrors(tha_heap_t *a, tha_heap_t *b) {
    if (!a || !b) return false;
    tha_stats_t sa, sb;
    tha_heap_stats(a, &sa);
    tha_heap_stats(b, &sb);
    if (sa.seq != sb.seq || sa.live_objects != sb.live_objects) return false;
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
                    off_of(a, x->dept) != off_of(b, y->dept))
                    return false;
                for (int k = 0; k < 4; k++)
                    if (off_of(a, x->reports[k]) != off_of(b, y->reports[k])) return false;
            } else if (oa.type_id == DEPT) {
                struct dept *x = (struct dept *)oa.ptr + i, *y = (struct dept *)ob.ptr + i;
                if (memcmp(x->name, y->name, 32) || x->id != y->id) return false;
            }
        }
    }
    void *ra, *rb;
    if (tha_root_get(a, "staff", &ra) || tha_root_get(b, "staff", &rb)) return false;
    return off_of(a, ra) == off_of(b, rb);
}

/* ---- two ends in memory ----------------------------------------------- */

/* A keyed stand-in for HMAC-SHA256: the session only compares MACs, so any
 * keyed function exercises it; real drivers use a real HMAC. */
static void toy_mac(void *ctx, const uint8_t *key, size_t key_len,
                    const tha_mac_part_t *parts, size_t nparts, uint8_t out[THA_MAC_SIZE]) {
    (void)ctx;
    uint32_t c = tha_crc32c(0, key, key_len);
    for (uint32_t i = 0; i < THA_MAC_SIZE / 4; i++) {
        c ^= i;
        for (size_t j = 0; j < nparts; j++) c = tha_crc32c(c, parts[j].data, parts[j].len);
        memcpy(out + 4 * i, &c, 4);
    }
}

typedef struct end {
    tha_session_t *s;
    tha_event_t ev[MAXEV]; /* every event, in order */
    int nev;
} end_t;

/* Bytes that went one way, for replay. */
typedef struct tape {
    uint8_t *data;
    size_t len, cap;
} tape_t;

/* Set by make valgrind: scale down what memcheck would take minutes over. */
static bool under_valgrind(void) { return getenv("THA_TEST_UNDER_VALGRIND") != NULL; }

static end_t *end_with(const tha_session_config_t *cfg, tha_heap_t *heap,
                       tha_backlog_t *bl) {
    end_t *e = calloc(1, sizeof *e);
    CHECK_OK(tha_session_create(&e->s, cfg, heap, bl));
    CHECK_OK(tha_session_start(e->s, 0));
    return e;
}

static end_t *end_new(int role, const char *key, tha_heap_t *heap, tha_backlog_t *bl) {
    tha_session_config_t cfg = {.role = role, .node_id = (uint64_t)role,
                                .secret = key, .secret_len = key ? strlen(key) : 0,
                                .mac = key ? toy_mac : NULL,
                                .chunk_bytes = 4096};
    return end_with(&cfg, heap, bl);
}

static void end_free(end_t *e) {
    tha_session_destroy(e->s);
    free(e);
}

static void drain(end_t *e) {
    tha_event_t ev;
    while (tha_session_event(e->s, &ev))
        if (e->nev < MAXEV) e->ev[e->nev++] = ev;
}

/* The last event of a type, or NULL. */
static const tha_event_t *last_ev(const end_t *e, int type) {
    for (int i = e->nev; i-- > 0;)
        if (e->ev[i].type == type) return &e->ev[i];
    return NULL;
}

static int count_ev(const end_t *e, int type) {
    int n = 0;
    for (int i = 0; i < e->nev; i++) n += e->ev[i].type == type;
    return n;
}

static void tape_put(tape_t *t, const void *p, size_t n) {
    if (!t) return;
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2;
        t->data = realloc(t->data, t->cap);
    }
    memcpy(t->data + t->len, p, n);
    t->len += n;
}

/* Moves everything from's output into to, in pieces of at most chunk bytes. */
static size_t move(end_t *from, end_t *to, uint64_t now, size_t chunk, tape_t *t) {
    size_t total = 0;
    for (;;) {
        const void *d;
        size_t n;
        if (tha_session_output(from->s, &d, &n) || !n) break;
        if (n > chunk) n = chunk;
        tape_put(t, d, n);
        tha_session_feed(to->s, d, n, now);
        CHECK_OK(tha_session_advance(from->s, n));
        total += n;
        drain(to);
    }
    drain(from);
    return total;
}

/* Both ways until neither end has anything to say. */
static void exchange(end_t *a, end_t *b, uint64_t now, size_t chunk, tape_t *ab) {
    while (move(a, b, now, chunk, ab) + move(b, a, now, chunk, NULL)) {}
}

static int state_of(const end_t *e) {
    tha_session_status_t st;
    tha_session_status(e->s, &st);
    return st.state;
}

static uint64_t acked(const end_t *e, int level) {
    tha_session_status_t st;
    tha_session_status(e->s, &st);
    return st.acked[level];
}

/* Active: encode a delta, push it to the backlog and queue it. */
static uint64_t sync_one(tha_heap_t *h, tha_backlog_t *bl, end_t *a, int ack) {
    size_t size, len;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &size));
    void *f = malloc(size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, f, size, &len));
    CHECK_OK(tha_backlog_push(bl, f, len));
    free(f);
    if (a) CHECK_OK(tha_session_pump(a->s, ack));
    tha_stats_t st;
    tha_heap_stats(h, &st);
    return st.seq;
}

/* ---- the reference run: handshake, bulk, deltas ------------------------ */

static tape_t ref_tape;        /* active -> standby bytes of the reference run */
static size_t ref_bulk_end;    /* tape length once the bulk's first frame went */
static tha_heap_t *ref_src;    /* the active heap at the end of it */
static struct emp *ref_staff;
static tha_backlog_t *ref_backlog;
static tha_heap_t *ref_mirror; /* the standby's heap at the end of it */

static void test_handshake_bulk_deltas(void) {
    ref_src = company(&ref_staff);
    CHECK_OK(tha_backlog_create(&ref_backlog, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, ref_src, ref_backlog);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    CHECK(tha_session_take_heap(b->s) == NULL);

    exchange(a, b, 1, SIZE_MAX, &ref_tape);
    const tha_event_t *ra = last_ev(a, THA_EV_READY);
    CHECK(ra && ra->b == 0); /* a new standby: bulk */
    CHECK(last_ev(b, THA_EV_READY) != NULL);
    const tha_event_t *bb = last_ev(b, THA_EV_BULK_BEGIN);
    CHECK(bb && bb->a > 0);
    const tha_event_t *bp = last_ev(b, THA_EV_BULK_PROGRESS);
    CHECK(bp && bp->a == bb->a && bp->b == bb->a);
    CHECK(count_ev(b, THA_EV_BULK_PROGRESS) > 1); /* chunked: 4 KiB segments */
    CHECK(last_ev(a, THA_EV_BULK_DONE) != NULL);
    /* the heap was dirty while it streamed: live only after the next frame */
    CHECK(last_ev(b, THA_EV_BULK_DONE) == NULL);
    CHECK(state_of(b) == 2);

    uint64_t seq = sync_one(ref_src, ref_backlog, a, THA_ACK_APPLIED);
    exchange(a, b, 2, SIZE_MAX, &ref_tape);
    ref_bulk_end = ref_tape.len;
    const tha_event_t *bd = last_ev(b, THA_EV_BULK_DONE);
    CHECK(bd && bd->seq == seq);
    CHECK(acked(a, THA_ACK_APPLIED) == seq);
    tha_heap_t *mirror = tha_session_take_heap(b->s);
    CHECK(mirror && mirrors(ref_src, mirror));
    CHECK(tha_heap_base(mirror) != tha_heap_base(ref_src));
    CHECK_OK(tha_heap_check(mirror));
    /* a mirror live at seq has no change of its own: promoted, its first
     * delta carries only what the new active writes */
    tha_stats_t ms;
    CHECK_OK(tha_heap_stats(mirror, &ms));
    CHECK(ms.dirty_blocks == 0);

    for (int round = 1; round <= 4; round++) {
        mutate(ref_src, ref_staff, round);
        int ack = round == 2 ? THA_ACK_RECEIVED : THA_ACK_APPLIED;
        seq = sync_one(ref_src, ref_backlog, a, ack);
        exchange(a, b, 2 + (uint64_t)round, SIZE_MAX, &ref_tape);
        const tha_event_t *ap = last_ev(b, THA_EV_APPLIED);
        CHECK(ap && ap->seq == seq);
        const tha_event_t *ak = last_ev(a, THA_EV_ACK);
        CHECK(ak && ak->seq == seq && ak->a == THA_ACK_APPLIED);
        CHECK(acked(a, THA_ACK_RECEIVED) == seq && acked(a, THA_ACK_APPLIED) == seq);
        CHECK(mirrors(ref_src, mirror));
    }
    CHECK(count_ev(a, THA_EV_ERROR) == 0 && count_ev(b, THA_EV_ERROR) == 0);
    tha_session_status_t st;
    tha_session_status(a->s, &st);
    CHECK(st.state == 3 && st.sent_seq == seq && st.bytes_out == ref_tape.len);
    CHECK(tha_session_take_heap(b->s) == mirror);
    ref_mirror = mirror; /* taken: outlives the session */
    end_free(a);
    end_free(b);
}

/* ---- the same bytes at every split ------------------------------------ */

/* A fresh standby fed tape[0..k) then tape[k..): must end where the
 * reference did, and never complain about a prefix. */
static bool replay_split(size_t k) {
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    int rc1 = tha_session_feed(b->s, ref_tape.data, k, 1);
    drain(b);
    bool ok = rc1 == 0 && count_ev(b, THA_EV_ERROR) == 0 && state_of(b) != 4;
    int rc2 = tha_session_feed(b->s, ref_tape.data + k, ref_tape.len - k, 2);
    drain(b);
    ok = ok && rc2 == 0 && count_ev(b, THA_EV_ERROR) == 0;
    ok = ok && mirrors(ref_src, tha_session_take_heap(b->s));
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(b);
    if (!ok) fprintf(stderr, "split at byte %zu of %zu failed\n", k, ref_tape.len);
    return ok;
}

/* Offsets where a message starts in the tape. */
static size_t boundaries(size_t *out, size_t max) {
    size_t n = 0, at = 0;
    while (at + 20 <= ref_tape.len && n < max) {
        out[n++] = at;
        uint32_t len;
        memcpy(&len, ref_tape.data + at + 8, 4);
        at += 20 + len;
    }
    return n;
}

static void test_every_split(void) {
    CHECK(ref_tape.len > 0);
    printf("tape: %zu bytes\n", ref_tape.len);
    /* byte by byte through one standby */
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    for (size_t i = 0; i < ref_tape.len; i++) {
        CHECK_OK(tha_session_feed(b->s, ref_tape.data + i, 1, 1));
        if (i % 512 == 0) drain(b);
    }
    drain(b);
    CHECK(count_ev(b, THA_EV_ERROR) == 0);
    CHECK(mirrors(ref_src, tha_session_take_heap(b->s)));
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(b);

    /* every split in the handshake and around every message boundary, and
     * a stride through the rest (a full sweep is O(n^2) under ASan) */
    size_t bounds[4096], nb = boundaries(bounds, 4096);
    CHECK(nb > 5);
    int failed = 0;
    for (size_t k = 0; k <= 400 && k <= ref_tape.len && failed < 5; k++)
        failed += !replay_split(k);
    for (size_t i = 0; i < nb && failed < 5; i++)
        for (size_t d = 0; d < 4; d++) {
            size_t ks[2] = {bounds[i] + d, bounds[i] + 16 + d};
            for (int j = 0; j < 2; j++)
                if (ks[j] <= ref_tape.len) failed += !replay_split(ks[j]);
            if (bounds[i] >= d + 1) failed += !replay_split(bounds[i] - d - 1);
        }
    for (size_t k = 401; k < ref_tape.len && failed < 5; k += 389) failed += !replay_split(k);
    CHECK(failed == 0);
}

/* Every truncated prefix leaves the standby waiting (no error, no event
 * past the last whole message), at a whole message it is where that
 * message puts it, and its heap never holds half a frame. */
static void test_truncated_prefixes(void) {
    size_t bounds[4096], nb = boundaries(bounds, 4096);
    int failed = 0;
    for (size_t i = 1; i < nb && failed < 5; i++) {
        size_t at = bounds[i];
        if (at <= ref_bulk_end) continue; /* the frames after the bulk */
        end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
        CHECK_OK(tha_session_feed(b->s, ref_tape.data, bounds[i - 1], 1));
        drain(b);
        tha_stats_t before, after;
        tha_heap_stats(tha_session_take_heap(b->s), &before);
        int nev = b->nev;
        /* feed the message minus its last byte, in one go */
        CHECK_OK(tha_session_feed(b->s, ref_tape.data + bounds[i - 1], at - bounds[i - 1] - 1, 1));
        drain(b);
        tha_heap_stats(tha_session_take_heap(b->s), &after);
        if (b->nev != nev || after.seq != before.seq || state_of(b) == 4) failed++;
        CHECK_OK(tha_session_feed(b->s, ref_tape.data + at - 1, 1, 1));
        drain(b);
        tha_heap_stats(tha_session_take_heap(b->s), &after);
        const tha_event_t *ap = last_ev(b, THA_EV_APPLIED);
        if (after.seq != before.seq + 1 || !ap || ap->seq != after.seq) failed++;
        tha_heap_destroy(tha_session_take_heap(b->s));
        end_free(b);
    }
    CHECK(failed == 0);
}

/* ---- bad input ------------------------------------------------------- */

static void test_garbage(void) {
    /* garbage instead of the active's HELLO */
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    int rc = tha_session_feed(b->s, junk, sizeof junk - 1, 1);
    drain(b);
    CHECK(rc < 0);
    const tha_event_t *e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EPROTO);
    CHECK_CONTAINS(e ? e->msg : NULL, "garbage");
    CHECK(state_of(b) == 4);
    CHECK_RC(tha_session_feed(b->s, junk, 4, 2), THA_ECLOSED);
    end_free(b);

    /* garbage at the active, after a valid start */
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    uint8_t noise[64];
    for (unsigned i = 0; i < sizeof noise; i++) noise[i] = (uint8_t)(i * 37 + 11);
    CHECK(tha_session_feed(a->s, noise, sizeof noise, 1) < 0);
    drain(a);
    e = last_ev(a, THA_EV_ERROR);
    CHECK(e && e->code == THA_EPROTO);
    CHECK_RC(tha_session_pump(a->s, THA_ACK_APPLIED), THA_ECLOSED);
    end_free(a);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);

    /* a flipped payload byte in the last FRAME: the frame's own checksum
     * refuses it (NACK, the active re-syncs), the heap is untouched */
    size_t bounds[4096], nb = boundaries(bounds, 4096);
    size_t last = bounds[nb - 1];
    uint8_t *copy = malloc(ref_tape.len);
    memcpy(copy, ref_tape.data, ref_tape.len);
    copy[last + 20 + 100] ^= 0x40;
    b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    CHECK_OK(tha_session_feed(b->s, copy, last, 1));
    drain(b);
    tha_stats_t before, after;
    tha_heap_stats(tha_session_take_heap(b->s), &before);
    CHECK_OK(tha_session_feed(b->s, copy + last, ref_tape.len - last, 1));
    drain(b);
    e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_ECHECKSUM);
    tha_heap_stats(tha_session_take_heap(b->s), &after);
    CHECK(after.seq == before.seq && after.frames_applied == before.frames_applied);
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(b);

    /* a valid header announcing more than max_message bytes */
    tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .max_message = 100};
    tha_session_t *s;
    CHECK_OK(tha_session_create(&s, &cfg, NULL, NULL));
    CHECK_OK(tha_session_start(s, 0));
    CHECK(tha_session_feed(s, ref_tape.data, 20, 1) < 0); /* HELLO carries the schema */
    tha_event_t ev;
    int seen = 0;
    while (tha_session_event(s, &ev)) seen |= ev.type == THA_EV_ERROR && strstr(ev.msg, "limit");
    CHECK(seen);
    tha_session_destroy(s);
    free(copy);
}

static void test_wrong_mac(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));

    /* the standby finds the active's MAC wrong */
    end_t *a = end_new(THA_ROLE_ACTIVE, "right", h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, "wrong", NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    const tha_event_t *e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EAUTH);
    e = last_ev(a, THA_EV_REFUSED);
    CHECK(e && e->code == THA_EAUTH);
    CHECK_CONTAINS(e ? e->msg : NULL, "shared secret");
    CHECK(state_of(a) == 4 && state_of(b) == 4);
    CHECK(!last_ev(b, THA_EV_BULK_BEGIN) && !last_ev(a, THA_EV_READY));
    end_free(a);
    end_free(b);

    /* a standby without the secret: it finds the active's MAC set */
    a = end_new(THA_ROLE_ACTIVE, "right", h, bl);
    b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EAUTH);
    CHECK_CONTAINS(e ? e->msg : NULL, "this standby has none");
    CHECK(!last_ev(a, THA_EV_READY) && !last_ev(b, THA_EV_BULK_BEGIN));
    end_free(a);
    end_free(b);

    /* an active without the secret: the standby finds its MAC missing */
    tha_backlog_t *bl0;
    CHECK_OK(tha_backlog_create(&bl0, 0));
    a = end_new(THA_ROLE_ACTIVE, NULL, h, bl0);
    b = end_new(THA_ROLE_STANDBY, "right", NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EAUTH);
    CHECK(!last_ev(a, THA_EV_READY) && !last_ev(b, THA_EV_READY));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl0);

    /* the same secret: through, with split bytes */
    a = end_new(THA_ROLE_ACTIVE, "right", h, bl);
    b = end_new(THA_ROLE_STANDBY, "right", NULL, NULL);
    exchange(a, b, 1, 7, NULL);
    CHECK(last_ev(a, THA_EV_READY) && last_ev(b, THA_EV_BULK_BEGIN));
    uint64_t seq = sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 2, 7, NULL);
    CHECK(acked(a, THA_ACK_APPLIED) == seq);
    CHECK(mirrors(h, tha_session_take_heap(b->s)));
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* ---- resume, fencing, time ------------------------------------------- */

/* ---- what a peer that has not proven the secret can do: nothing -------- */

static void put32le(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64le(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A well-formed untagged message (what anyone can write). */
static size_t craft(uint8_t *m, int type, const void *payload, uint32_t len) {
    uint16_t t = (uint16_t)type, f = 0;
    put32le(m, 0x4D414854u);
    memcpy(m + 4, &t, 2);
    memcpy(m + 6, &f, 2);
    put32le(m + 8, len);
    if (len) memcpy(m + 20, payload, len);
    put32le(m + 12, tha_crc32c(0, m + 20, len));
    put32le(m + 16, tha_crc32c(0, m, 16));
    return 20 + len;
}

/* The first message a fresh end queued, copied out (and consumed). */
static size_t take_output(end_t *e, uint8_t *buf, size_t cap) {
    const void *d;
    size_t n;
    CHECK_OK(tha_session_output(e->s, &d, &n));
    CHECK(n <= cap);
    memcpy(buf, d, n);
    CHECK_OK(tha_session_advance(e->s, n));
    return n;
}

static void test_unproven_peer(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    uint8_t m[4096], hb[24] = {0};

    /* heartbeats before the handshake do not keep the peer alive */
    end_t *b = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
    size_t n = craft(m, 9 /* HEARTBEAT */, hb, sizeof hb);
    tha_session_feed(b->s, m, n, 5);
    drain(b);
    CHECK(!last_ev(b, THA_EV_HEARTBEAT) && state_of(b) == 4);
    end_free(b);

    /* nor does trickling bytes: the handshake has a deadline */
    b = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
    tha_session_feed(b->s, m, 3, 1999);
    tha_session_tick(b->s, 2000);
    drain(b);
    const tha_event_t *e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EPROTO && state_of(b) == 4);
    CHECK(!last_ev(b, THA_EV_TIMEOUT)); /* not the failover signal */
    CHECK_CONTAINS(e ? e->msg : NULL, "handshake");
    end_free(b);

    /* a header announcing 4 GiB costs nothing before proof */
    b = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
    n = craft(m, 1 /* HELLO */, NULL, 0);
    put32le(m + 8, 0xffffffffu);
    put32le(m + 16, tha_crc32c(0, m, 16));
    void *buf;
    size_t cap;
    CHECK_OK(tha_session_recv_buffer(b->s, &buf, &cap));
    memcpy(buf, m, 20);
    tha_session_received(b->s, 20, 1);
    drain(b);
    e = last_ev(b, THA_EV_ERROR);
    CHECK(e && e->code == THA_EPROTO && state_of(b) == 4);
    CHECK_CONTAINS(e ? e->msg : NULL, "before the peer proved");
    CHECK(tha_session_recv_buffer(b->s, &buf, &cap) < 0);
    end_free(b);

    /* the active: a stranger's HELLO claiming a newer epoch, then a
     * REFUSE(EFENCED), then a WELCOME it cannot sign: never fenced */
    for (int variant = 0; variant < 2; variant++) {
        end_t *a = end_new(THA_ROLE_ACTIVE, "k", h, bl);
        end_t *stranger = end_new(THA_ROLE_STANDBY, "not-k", NULL, NULL);
        n = take_output(stranger, m, sizeof m);
        put64le(m + 20 + 16, 99);                  /* its HELLO's epoch */
        put32le(m + 12, tha_crc32c(0, m + 20, (uint32_t)(n - 20)));
        put32le(m + 16, tha_crc32c(0, m, 16));
        tha_session_feed(a->s, m, n, 1);
        drain(a);
        CHECK(!last_ev(a, THA_EV_FENCED) && !last_ev(a, THA_EV_READY));
        if (variant == 0) {
            uint8_t r[16 + 8] = {0};
            put32le(r, (uint32_t)THA_EFENCED);
            put64le(r + 4, 99);
            put32le(r + 12, 8);
            memcpy(r + 16, "go away!", 8);
            n = craft(m, 3 /* REFUSE */, r, sizeof r);
            tha_session_feed(a->s, m, n, 2);
            drain(a);
            e = last_ev(a, THA_EV_REFUSED);
            CHECK(e && e->epoch == 0 && e->a == 0);
            CHECK_CONTAINS(e ? e->msg : NULL, "before proving");
        } else {
            uint8_t w[THA_MAC_SIZE] = {1};
            n = craft(m, 2 /* WELCOME */, w, sizeof w);
            tha_session_feed(a->s, m, n, 2);
            drain(a);
            e = last_ev(a, THA_EV_ERROR);
            CHECK(e && e->code == THA_EAUTH);
        }
        CHECK(!last_ev(a, THA_EV_FENCED) && !last_ev(a, THA_EV_READY));
        CHECK(state_of(a) == 4);
        end_free(a);
        end_free(stranger);
    }

    /* a relay that passes the handshake through verbatim, then speaks for
     * itself: every forged, replayed or dropped message is refused */
    for (int variant = 0; variant < 3; variant++) {
        end_t *a = end_new(THA_ROLE_ACTIVE, "k", h, bl);
        b = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
        tape_t t = {0};
        exchange(a, b, 1, SIZE_MAX, &t);
        sync_one(h, bl, a, THA_ACK_APPLIED); /* live after a frame, if not at once */
        exchange(a, b, 1, SIZE_MAX, &t);
        CHECK(last_ev(a, THA_EV_READY) && last_ev(b, THA_EV_BULK_DONE));
        int nev = b->nev;
        if (variant == 0) { /* a forged heartbeat, tag of zeros */
            n = craft(m, 9, hb, sizeof hb);
            memset(m + n, 0, THA_MAC_SIZE);
            tha_session_feed(b->s, m, n + THA_MAC_SIZE, 3);
        } else if (variant == 1) { /* the last message replayed */
            sync_one(h, bl, a, THA_ACK_APPLIED);
            const void *d;
            size_t len;
            CHECK_OK(tha_session_output(a->s, &d, &len));
            uint8_t *copy = malloc(len);
            memcpy(copy, d, len);
            move(a, b, 3, SIZE_MAX, NULL);
            nev = b->nev;
            tha_session_feed(b->s, copy, len, 4);
            free(copy);
        } else { /* a message dropped on the way */
            sync_one(h, bl, a, THA_ACK_APPLIED);
            const void *d;
            size_t len;
            CHECK_OK(tha_session_output(a->s, &d, &len));
            CHECK_OK(tha_session_advance(a->s, len)); /* never delivered */
            sync_one(h, bl, a, THA_ACK_APPLIED);
            move(a, b, 4, SIZE_MAX, NULL);
        }
        drain(b);
        e = last_ev(b, THA_EV_ERROR);
        CHECK(e && e->code == THA_EAUTH && state_of(b) == 4);
        CHECK_CONTAINS(e ? e->msg : NULL, "fails its MAC");
        for (int i = nev; i < b->nev; i++)
            CHECK(b->ev[i].type != THA_EV_HEARTBEAT && b->ev[i].type != THA_EV_APPLIED);
        /* a forged fencing REFUSE to the active fails the same way */
        uint8_t r[16] = {0};
        put32le(r, (uint32_t)THA_EFENCED);
        put64le(r + 4, 99);
        n = craft(m, 3, r, sizeof r);
        memset(m + n, 0xee, THA_MAC_SIZE);
        tha_session_feed(a->s, m, n + THA_MAC_SIZE, 5);
        drain(a);
        CHECK(!last_ev(a, THA_EV_FENCED));
        e = last_ev(a, THA_EV_ERROR);
        CHECK(e && e->code == THA_EAUTH);
        tha_heap_destroy(tha_session_take_heap(b->s));
        free(t.data);
        end_free(a);
        end_free(b);
    }
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* A keyed frame of several MiB is MAC'd in chunks (on two threads): it
 * goes through whole, and one flipped byte in a middle chunk is refused. */
static void test_big_keyed_frame(void) {
    for (int flip = 0; flip < 2; flip++) {
        tha_schema_t *sc = make_schema();
        tha_heap_t *h;
        CHECK_OK(tha_heap_create(&h, sc, 64 << 20, THA_TRACK_EXPLICIT));
        tha_schema_release(sc);
        tha_backlog_t *bl;
        CHECK_OK(tha_backlog_create(&bl, 0));
        end_t *a = end_new(THA_ROLE_ACTIVE, "k", h, bl);
        end_t *b = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
        exchange(a, b, 1, SIZE_MAX, NULL);
        sync_one(h, bl, a, THA_ACK_APPLIED);
        exchange(a, b, 1, SIZE_MAX, NULL);
        CHECK(last_ev(b, THA_EV_BULK_DONE) != NULL);
        struct emp *big;
        CHECK_OK(tha_heap_alloc(h, EMP, 60000, (void **)&big)); /* ~7 MB */
        for (int i = 0; i < 60000; i++) big[i].id = (uint32_t)i;
        CHECK_OK(tha_heap_touch(h, big, 0));
        CHECK_OK(tha_root_set(h, "staff", big)); /* what mirrors() compares */
        uint64_t seq = sync_one(h, bl, a, THA_ACK_APPLIED);
        /* gather the whole FRAME message (header, frame, tag items) */
        tape_t t = {0};
        for (;;) {
            const void *d;
            size_t n;
            CHECK_OK(tha_session_output(a->s, &d, &n));
            if (!n) break;
            tape_put(&t, d, n);
            CHECK_OK(tha_session_advance(a->s, n));
        }
        CHECK(t.len > (4u << 20));
        if (flip) t.data[t.len / 2] ^= 0x40;
        tha_session_feed(b->s, t.data, t.len, 2);
        drain(b);
        if (flip) {
            const tha_event_t *e = last_ev(b, THA_EV_ERROR);
            CHECK(e && e->code == THA_EAUTH && state_of(b) == 4);
            CHECK(!last_ev(b, THA_EV_APPLIED));
        } else {
            const tha_event_t *e = last_ev(b, THA_EV_APPLIED);
            CHECK(e && e->seq == seq);
            CHECK(mirrors(h, tha_session_take_heap(b->s)));
        }
        free(t.data);
        tha_heap_destroy(tha_session_take_heap(b->s));
        end_free(a);
        end_free(b);
        tha_backlog_destroy(bl);
        tha_heap_destroy(h);
    }
}

/* Each NACK gives its own frame's reason, never an earlier one's. */
static void test_nack_reasons(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    mutate(h, es, 1);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    const void *d;
    size_t len;
    CHECK_OK(tha_session_output(a->s, &d, &len));
    uint8_t *frame = malloc(len);
    memcpy(frame, d, len);
    move(a, b, 2, SIZE_MAX, NULL);
    tha_session_feed(b->s, frame, len, 3); /* again: out of sequence */
    drain(b);
    const tha_event_t *e = last_ev(b, THA_EV_ERROR);
    CHECK_CONTAINS(e ? e->msg : NULL, "out of sequence");
    uint8_t junk[64], m[128];
    memset(junk, 0x5a, sizeof junk);
    size_t n = craft(m, 7 /* FRAME */, junk, sizeof junk);
    tha_session_feed(b->s, m, n, 4);
    drain(b);
    e = last_ev(b, THA_EV_ERROR);
    CHECK_CONTAINS(e ? e->msg : NULL, "unreadable frame header");
    CHECK(e && !strstr(e->msg, "out of sequence"));
    free(frame);
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

static void test_resume(void) {
    /* the reference pair reconnects: the standby resumes from the backlog,
     * gets the two frames it missed, once each */
    mutate(ref_src, ref_staff, 10);
    uint64_t s1 = sync_one(ref_src, ref_backlog, NULL, 0);
    mutate(ref_src, ref_staff, 11);
    uint64_t s2 = sync_one(ref_src, ref_backlog, NULL, 0);
    CHECK(s2 == s1 + 1);
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, ref_src, ref_backlog);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, ref_mirror, NULL);
    exchange(a, b, 1, 100, NULL);
    const tha_event_t *r = last_ev(a, THA_EV_READY);
    CHECK(r && r->b == 1 && r->a == s1 - 1);
    CHECK(!last_ev(b, THA_EV_BULK_BEGIN));
    CHECK(count_ev(b, THA_EV_APPLIED) == 2 && b->ev[b->nev - 1].seq == s2);
    CHECK(tha_session_take_heap(b->s) == ref_mirror);
    CHECK(mirrors(ref_src, ref_mirror));
    /* nothing new: nothing sent on the next pump */
    CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
    const void *d;
    size_t n;
    CHECK_OK(tha_session_output(a->s, &d, &n));
    CHECK(n == 0);
    end_free(a);
    end_free(b);

    /* the backlog lost the next frame: bulk sync instead */
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 1)); /* keeps only the newest frame */
    sync_one(h, bl, NULL, 0); /* clean before the bulk: live at SNAP_END */
    a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    CHECK(last_ev(b, THA_EV_BULK_DONE) != NULL);
    tha_heap_t *m = tha_session_take_heap(b->s);
    CHECK(mirrors(h, m));
    end_free(a);
    end_free(b);
    mutate(h, es, 1);
    sync_one(h, bl, NULL, 0);
    mutate(h, es, 2);
    uint64_t last = sync_one(h, bl, NULL, 0);
    a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    b = end_new(THA_ROLE_STANDBY, NULL, m, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    r = last_ev(a, THA_EV_READY);
    CHECK(r && r->b == 0);
    const tha_event_t *bd = last_ev(b, THA_EV_BULK_DONE); /* nothing dirty: live at once */
    CHECK(bd && bd->seq == last);
    tha_heap_t *m2 = tha_session_take_heap(b->s);
    CHECK(m2 != m && mirrors(h, m2));
    CHECK(acked(a, THA_ACK_APPLIED) == last);
    end_free(a);
    end_free(b);
    tha_heap_destroy(m);
    tha_heap_destroy(m2);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

static void test_fencing(void) {
    /* the standby was promoted: the old active that reconnects is fenced */
    tha_heap_t *promoted = ref_mirror;
    tha_stats_t st;
    tha_heap_stats(promoted, &st);
    CHECK_OK(tha_heap_set_epoch(promoted, st.epoch + 1));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, ref_src, ref_backlog);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, promoted, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    const tha_event_t *f = last_ev(a, THA_EV_FENCED);
    CHECK(f && f->code == THA_EFENCED && f->epoch == st.epoch + 1);
    CHECK(state_of(a) == 4);
    CHECK_RC(tha_session_pump(a->s, THA_ACK_APPLIED), THA_ECLOSED);
    CHECK(!last_ev(b, THA_EV_APPLIED) && !last_ev(b, THA_EV_BULK_BEGIN));
    end_free(a);
    end_free(b);

    /* an active of an older epoch is refused by a standby that knows better
     * (it got there by a bulk from a newer active): REFUSE with EFENCED */
    struct emp *es;
    tha_heap_t *old = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    a = end_new(THA_ROLE_ACTIVE, NULL, old, bl);
    b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL); /* a bulk-syncing standby, live at once */
    sync_one(old, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 1, SIZE_MAX, NULL);
    CHECK(last_ev(b, THA_EV_BULK_DONE) != NULL);
    /* promoted on the open connection: the active hears it at once */
    tha_heap_t *nb = tha_session_take_heap(b->s);
    CHECK_OK(tha_heap_set_epoch(nb, 7));
    CHECK_OK(tha_session_fence(b->s, 7));
    exchange(a, b, 2, SIZE_MAX, NULL);
    f = last_ev(a, THA_EV_FENCED);
    CHECK(f && f->epoch == 7);
    CHECK_CONTAINS(f ? f->msg : NULL, "epoch 7");
    CHECK(state_of(a) == 4 && state_of(b) == 4);
    end_free(a);
    end_free(b);
    /* a node promoted to an older epoch than the active's (it kept
     * listening after a later promotion elsewhere) cannot fence it */
    {
        struct emp *es3;
        tha_heap_t *h3 = company(&es3);
        tha_backlog_t *bl3;
        CHECK_OK(tha_backlog_create(&bl3, 0));
        CHECK_OK(tha_heap_set_epoch(h3, 9));
        end_t *a3 = end_new(THA_ROLE_ACTIVE, "k", h3, bl3);
        end_t *b3 = end_new(THA_ROLE_STANDBY, "k", NULL, NULL);
        exchange(a3, b3, 1, SIZE_MAX, NULL);
        CHECK(last_ev(a3, THA_EV_READY) != NULL);
        CHECK_OK(tha_session_fence(b3->s, 8));
        exchange(a3, b3, 2, SIZE_MAX, NULL);
        CHECK(!last_ev(a3, THA_EV_FENCED));
        const tha_event_t *r = last_ev(a3, THA_EV_REFUSED);
        CHECK(r && r->code == THA_EFENCED && r->epoch == 0);
        end_free(a3);
        end_free(b3);
        tha_backlog_destroy(bl3);
        tha_heap_destroy(h3);
    }
    /* min_epoch: a coordinator told the standby the leader is at epoch 6;
     * the deposed leader (epoch 5, frames queued) is fenced at its HELLO,
     * before any byte of a bulk sync or frame is taken */
    {
        struct emp *es4;
        tha_heap_t *h4 = company(&es4);
        tha_backlog_t *bl4;
        CHECK_OK(tha_backlog_create(&bl4, 0));
        CHECK_OK(tha_heap_set_epoch(h4, 5));
        end_t *a4 = end_new(THA_ROLE_ACTIVE, "k", h4, bl4);
        end_t *b4 = calloc(1, sizeof *b4);
        tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                    .secret = "k", .secret_len = 1, .mac = toy_mac,
                                    .chunk_bytes = 4096, .min_epoch = 6};
        CHECK_OK(tha_session_create(&b4->s, &cfg, NULL, NULL));
        CHECK_OK(tha_session_start(b4->s, 0));
        sync_one(h4, bl4, a4, THA_ACK_APPLIED);
        exchange(a4, b4, 1, SIZE_MAX, NULL);
        const tha_event_t *f4 = last_ev(a4, THA_EV_FENCED);
        CHECK(f4 && f4->epoch == 6);
        CHECK(!last_ev(b4, THA_EV_READY) && !last_ev(b4, THA_EV_BULK_BEGIN) &&
              !last_ev(b4, THA_EV_APPLIED) && !tha_session_take_heap(b4->s));
        end_free(a4);
        end_free(b4);
        /* the leader of epoch 6 itself is followed */
        CHECK_OK(tha_heap_set_epoch(h4, 6));
        tha_backlog_t *bl5;
        CHECK_OK(tha_backlog_create(&bl5, 0));
        end_t *a5 = end_new(THA_ROLE_ACTIVE, "k", h4, bl5);
        end_t *b5 = calloc(1, sizeof *b5);
        CHECK_OK(tha_session_create(&b5->s, &cfg, NULL, NULL));
        CHECK_OK(tha_session_start(b5->s, 0));
        exchange(a5, b5, 1, SIZE_MAX, NULL);
        CHECK(last_ev(b5, THA_EV_READY) != NULL && !last_ev(a5, THA_EV_FENCED));
        end_free(a5);
        end_free(b5);
        tha_backlog_destroy(bl4);
        tha_backlog_destroy(bl5);
        tha_heap_destroy(h4);
    }
    /* a frame of the old epoch against the promoted heap: ESTALE, unchanged */
    mutate(old, es, 3);
    size_t size, len;
    CHECK_OK(tha_heap_frame_size(old, THA_FRAME_DELTA, &size));
    void *frame = malloc(size);
    CHECK_OK(tha_heap_encode(old, THA_FRAME_DELTA, frame, size, &len));
    tha_heap_stats(nb, &st);
    CHECK_RC(tha_heap_apply(nb, frame, len), THA_ESTALE);
    tha_stats_t st2;
    tha_heap_stats(nb, &st2);
    CHECK(st2.seq == st.seq);
    free(frame);
    tha_heap_destroy(nb);
    tha_backlog_destroy(bl);
    tha_heap_destroy(old);
}

static void test_heartbeat_and_timeout(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 0, SIZE_MAX, NULL);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 0, SIZE_MAX, NULL);
    /* silence for a heartbeat period: each end says it is alive */
    CHECK_OK(tha_session_tick(a->s, 250));
    CHECK_OK(tha_session_tick(b->s, 250));
    exchange(a, b, 250, SIZE_MAX, NULL);
    CHECK(last_ev(a, THA_EV_HEARTBEAT) && last_ev(b, THA_EV_HEARTBEAT));
    CHECK(!last_ev(a, THA_EV_TIMEOUT) && !last_ev(b, THA_EV_TIMEOUT));
    /* the active vanishes: the standby, ticked every heartbeat period
     * as a driver does, times out once */
    for (uint64_t t = 450; t <= 2200; t += 200) CHECK_OK(tha_session_tick(b->s, t));
    drain(b);
    CHECK(!last_ev(b, THA_EV_TIMEOUT));
    CHECK_OK(tha_session_tick(b->s, 2300));
    CHECK_OK(tha_session_tick(b->s, 2400));
    drain(b);
    CHECK(count_ev(b, THA_EV_TIMEOUT) == 1);
    CHECK_CONTAINS(last_ev(b, THA_EV_TIMEOUT)->msg, "nothing from the peer");
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* A process that could not run (its CPU or its interpreter's lock taken
 * for longer than the timeout) could not read what the peer sent: the gap
 * between two ticks beyond the heartbeat period is its own stall, not the
 * peer's silence. The first tick after it must not time out; what the
 * peer sent meanwhile, read next, proves it alive. True silence while the
 * session is ticked still times out. */
static void test_own_stall_is_not_peer_silence(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 0, SIZE_MAX, NULL);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 100, SIZE_MAX, NULL);
    /* the active stalls 5 s (twice the timeout) while the standby's
     * heartbeats pile up in its socket buffer */
    for (uint64_t t = 300; t <= 5100; t += 200) CHECK_OK(tha_session_tick(b->s, t));
    CHECK_OK(tha_session_tick(a->s, 5100));
    drain(a);
    CHECK(!last_ev(a, THA_EV_TIMEOUT));
    exchange(a, b, 5110, SIZE_MAX, NULL); /* it reads them: alive */
    CHECK_OK(tha_session_tick(a->s, 5200));
    drain(a);
    CHECK(!last_ev(a, THA_EV_TIMEOUT));
    /* then the standby really goes silent: ticked regularly, the active
     * times out once, a timeout after it last heard it */
    int fired_at = 0;
    for (uint64_t t = 5300; t <= 8000 && !fired_at; t += 100) {
        CHECK_OK(tha_session_tick(a->s, t));
        drain(a);
        if (last_ev(a, THA_EV_TIMEOUT)) fired_at = (int)t;
    }
    CHECK(fired_at >= 7110 && fired_at <= 7300);
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* A clock read before the bytes it ticks after (a driver whose reader
 * stamps the feed and whose ticker read the clock a moment earlier, or a
 * clock stepped back): a tick earlier than the last hearing is no
 * silence, and never the failover signal. */
static void test_clock_read_before_the_feed_is_not_silence(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1000, SIZE_MAX, NULL);
    CHECK_OK(tha_session_tick(b->s, 990));
    CHECK_OK(tha_session_tick(a->s, 999));
    drain(a);
    drain(b);
    CHECK(!last_ev(a, THA_EV_TIMEOUT) && !last_ev(b, THA_EV_TIMEOUT));
    CHECK(state_of(a) != 4 && state_of(b) != 4);
    /* and the clock still runs: true silence times out after the timeout */
    for (uint64_t t = 1100; t <= 3100; t += 100) CHECK_OK(tha_session_tick(b->s, t));
    drain(b);
    CHECK(count_ev(b, THA_EV_TIMEOUT) == 1);
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* A heartbeat period near 2^64 ms (a driver's "never send heartbeats"):
 * since + heartbeat_ms must not wrap and make every gap a stall of this
 * process's own, which kept a silent peer from ever timing out. */
static void test_huge_heartbeat_period_still_times_out(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *ends[2];
    for (int k = 0; k < 2; k++) {
        ends[k] = calloc(1, sizeof *ends[k]);
        tha_session_config_t cfg = {.role = k ? THA_ROLE_STANDBY : THA_ROLE_ACTIVE,
                                    .node_id = (uint64_t)k + 1,
                                    .heartbeat_ms = UINT64_MAX - 100, .timeout_ms = 1000};
        CHECK_OK(tha_session_create(&ends[k]->s, &cfg, k ? NULL : h, k ? NULL : bl));
        CHECK_OK(tha_session_start(ends[k]->s, 0));
    }
    end_t *a = ends[0], *b = ends[1];
    exchange(a, b, 0, SIZE_MAX, NULL);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 100, SIZE_MAX, NULL);
    CHECK(state_of(b) == 3);
    int fired_at = 0;
    for (uint64_t t = 200; t <= 5000 && !fired_at; t += 100) {
        CHECK_OK(tha_session_tick(b->s, t));
        drain(b);
        if (last_ev(b, THA_EV_TIMEOUT)) fired_at = (int)t;
    }
    CHECK(fired_at >= 1100 && fired_at <= 1200);
    tha_heap_destroy(tha_session_take_heap(b->s));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* A driver may tick a session it has created but not started yet: that
 * must not count as silence since the epoch of the clock. */
static void test_tick_before_start(void) {
    tha_session_config_t cfg = {.role = THA_ROLE_STANDBY};
    tha_session_t *s;
    CHECK_OK(tha_session_create(&s, &cfg, NULL, NULL));
    CHECK_OK(tha_session_tick(s, 5000000));
    tha_event_t ev;
    CHECK(tha_session_event(s, &ev) == 0);
    CHECK_OK(tha_session_start(s, 5000000));
    CHECK_RC(tha_session_start(s, 5000001), THA_ESTATE);
    CHECK_OK(tha_session_tick(s, 5000100));
    int timeouts = 0;
    while (tha_session_event(s, &ev)) timeouts += ev.type == THA_EV_TIMEOUT;
    CHECK(timeouts == 0);
    tha_session_destroy(s);
}

/* A heap whose frames tha_backlog_encode makes belongs to that backlog:
 * tha_heap_encode refuses it (a frame made there is a seq the backlog, and
 * so every standby, would never get), and every failure of
 * tha_backlog_encode leaves seq and dirty bits as they were. */
static void test_backlog_owns_the_series(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    uint64_t seq = 0;
    size_t len = 0;
    CHECK_OK(tha_backlog_encode(bl, h, &seq, &len));
    mutate(h, es, 1);
    tha_stats_t before, after;
    CHECK_OK(tha_heap_stats(h, &before));
    CHECK(before.dirty_blocks > 0);
    size_t size;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &size)); /* sizing is harmless */
    char *f = malloc(size);
    CHECK_RC(tha_heap_encode(h, THA_FRAME_DELTA, f, size, &len), THA_ESTATE);
    CHECK_CONTAINS(tha_heap_errmsg(h), "tha_backlog_encode");
    CHECK_RC(tha_heap_encode(h, THA_FRAME_SNAPSHOT, NULL, 0, &len), THA_ESTATE);
    CHECK_OK(tha_heap_stats(h, &after));
    CHECK(after.seq == before.seq && after.dirty_blocks == before.dirty_blocks);
    /* the backlog goes on, the change included */
    uint64_t seq2 = 0;
    CHECK_OK(tha_backlog_encode(bl, h, &seq2, &len));
    CHECK(seq2 == seq + 1);
    CHECK_OK(tha_heap_stats(h, &after));
    CHECK(after.seq == seq2 && after.dirty_blocks == 0);
    /* nor does it take frames from elsewhere: after an apply the next
     * tha_backlog_encode could only fail */
    {
        struct emp *es2;
        tha_heap_t *other_src = company(&es2);
        size_t n2, l2;
        CHECK_OK(tha_heap_frame_size(other_src, THA_FRAME_SNAPSHOT, &n2));
        void *snap = malloc(n2);
        CHECK_OK(tha_heap_encode(other_src, THA_FRAME_SNAPSHOT, snap, n2, &l2));
        CHECK_OK(tha_heap_stats(h, &before));
        CHECK_RC(tha_heap_apply(h, snap, l2), THA_ESTATE);
        CHECK_CONTAINS(tha_heap_errmsg(h), "backlog");
        CHECK_OK(tha_heap_stats(h, &after));
        CHECK(after.seq == before.seq && after.lineage == before.lineage);
        free(snap);
        tha_heap_destroy(other_src);
    }
    /* another backlog cannot take the heap over */
    tha_backlog_t *other;
    CHECK_OK(tha_backlog_create(&other, 0));
    mutate(h, es, 2);
    CHECK_OK(tha_heap_stats(h, &before));
    CHECK_RC(tha_backlog_encode(other, h, &seq, &len), THA_ESTATE);
    CHECK_OK(tha_heap_stats(h, &after));
    CHECK(after.seq == before.seq && after.dirty_blocks == before.dirty_blocks);
    /* once the backlog is gone the heap makes its own frames again */
    tha_backlog_destroy(bl);
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &size));
    f = realloc(f, size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, f, size, &len));
    /* ...and a heap destroyed first leaves the backlog usable (ASan) */
    CHECK_OK(tha_backlog_encode(other, h, &seq, &len));
    tha_heap_destroy(h);
    h = company(&es);
    CHECK_RC(tha_backlog_encode(other, h, &seq, &len), THA_ESEQ); /* new series */
    tha_backlog_destroy(other);

    /* tha_backlog_push: the caller encodes. A frame it made and did not
     * push leaves a gap: tha_backlog_encode refuses it and changes nothing
     * (seq, dirty bits): the heap's changes are not lost */
    CHECK_OK(tha_backlog_create(&bl, 0));
    sync_one(h, bl, NULL, 0);
    mutate(h, es, 3);
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_DELTA, &size));
    f = realloc(f, size);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_DELTA, f, size, &len)); /* not pushed */
    mutate(h, es, 4);
    CHECK_OK(tha_heap_stats(h, &before));
    CHECK(before.dirty_blocks > 0);
    CHECK_RC(tha_backlog_encode(bl, h, &seq, &len), THA_ESEQ);
    CHECK_CONTAINS(tha_heap_errmsg(h), "seq");
    CHECK_OK(tha_heap_stats(h, &after));
    CHECK(after.seq == before.seq && after.dirty_blocks == before.dirty_blocks);
    CHECK_OK(tha_backlog_push(bl, f, len)); /* the gap filled: it goes on */
    CHECK_OK(tha_backlog_encode(bl, h, &seq, &len));
    CHECK(seq == before.seq + 1);
    free(f);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}


/* ---- bulk data straight into the staging heap ------------------------- */

/* Feeds tape[0..len) the way the Python driver does: into the buffer
 * tha_session_recv_buffer hands out, at most chunk bytes per "recv";
 * records the buffers handed out. */
static int feed_zero_copy(end_t *b, const uint8_t *tape, size_t len, size_t chunk,
                          uint64_t now, uint8_t **bufs, size_t *nbufs, size_t maxbufs) {
    size_t pos = 0;
    while (pos < len) {
        void *buf;
        size_t cap;
        int rc = tha_session_recv_buffer(b->s, &buf, &cap);
        if (rc) return rc;
        CHECK(cap > 0);
        size_t n = len - pos;
        if (n > cap) n = cap;
        if (n > chunk) n = chunk;
        memcpy(buf, tape + pos, n);
        if (bufs && *nbufs < maxbufs) bufs[(*nbufs)++] = buf;
        rc = tha_session_received(b->s, n, now);
        drain(b);
        if (rc) return rc;
        if (state_of(b) == 4) return THA_ECLOSED;
        pos += n;
    }
    return 0;
}

/* Offset in tape of the payload of the k-th SNAP_DATA message (unkeyed). */
static size_t snap_data_at(const uint8_t *tape, size_t len, int k, uint32_t *plen) {
    size_t pos = 0;
    while (pos + 20 <= len) {
        uint16_t type;
        uint32_t l;
        memcpy(&type, tape + pos + 4, 2);
        memcpy(&l, tape + pos + 8, 4);
        if (type == 5 /* SNAP_DATA */ && k-- == 0) {
            *plen = l;
            return pos + 20;
        }
        pos += 20 + l;
    }
    CHECK(!"no such SNAP_DATA");
    return 0;
}

static void test_bulk_in_place(void) {
    static uint8_t *bufs[1 << 16];
    const size_t chunks[] = {SIZE_MAX, 4096, 100, 7};
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
        size_t nb = 0;
        CHECK_OK(feed_zero_copy(b, ref_tape.data, ref_tape.len, chunks[c], 1, bufs, &nb,
                                sizeof bufs / sizeof *bufs));
        CHECK(count_ev(b, THA_EV_ERROR) == 0);
        tha_heap_t *m = tha_session_take_heap(b->s);
        CHECK(m && mirrors(ref_src, m));
        CHECK_OK(tha_heap_check(m));
        tha_stats_t st;
        CHECK_OK(tha_heap_stats(m, &st));
        const uint8_t *base = tha_heap_base(m);
        size_t inside = 0;
        for (size_t i = 0; i < nb; i++) inside += bufs[i] >= base && bufs[i] < base + st.top;
        CHECK(inside > 0); /* segment data was received where it belongs */
        end_free(b);
        tha_heap_destroy(m);
    }
    /* what the direct path takes in is judged as before: a changed data
     * byte, a run moved within the image or out of it: refused, nothing
     * goes live */
    uint8_t *bad = malloc(ref_tape.len);
    for (int variant = 0; variant < 3; variant++) {
        for (size_t c = 0; c < 2; c++) {
            memcpy(bad, ref_tape.data, ref_tape.len);
            uint32_t plen;
            size_t at = snap_data_at(bad, ref_bulk_end, 1, &plen);
            uint64_t off;
            memcpy(&off, bad + at + THA_FRAME_HEADER_SIZE, 8);
            if (variant == 0) bad[at + plen - 1] ^= 0x40;
            if (variant == 1) off += 64 /* one block */;
            if (variant == 2) off = 1ull << 40;
            memcpy(bad + at + THA_FRAME_HEADER_SIZE, &off, 8);
            end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
            int rc = feed_zero_copy(b, bad, ref_tape.len, c ? 7 : SIZE_MAX, 1, NULL, NULL, 0);
            CHECK(rc != 0);
            const tha_event_t *e = last_ev(b, THA_EV_ERROR);
            CHECK(e != NULL && state_of(b) == 4);
            CHECK_CONTAINS(e ? e->msg : NULL, "bulk sync");
            CHECK(tha_session_take_heap(b->s) == NULL);
            end_free(b);
        }
    }
    free(bad);
}

/* Pages of [from, to) resident in memory. */
static size_t resident_pages(const uint8_t *from, const uint8_t *to) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (size_t)(to - from) / page, in = 0;
    unsigned char *v = malloc(n ? n : 1);
    CHECK_OK(mincore((void *)from, (size_t)(to - from), v));
    for (size_t i = 0; i < n; i++) in += v[i] & 1;
    free(v);
    return in;
}

/* A reserve's touched pages become the start of the bulk sync's heap:
 * the mirror is the same and sound, its pages past what the sync wrote
 * (past the committed part of the image) are resident already, they open
 * for allocation like any, and the reserve is empty after. A standby on a
 * taken reserve gets fresh pages; a reserve larger than the heap gives
 * what fits. */
/* ---- function pointers and extern words in a bulk sync ------------------ */

struct hook {
    void (*fn)(void);
    const char *label; /* into the extern "labels" */
    struct hook *next;
};
static void hook_a(void) {}
static void hook_b(void) {}
static const char labels[16] = "alpha\0beta";
static char labels_here[16]; /* where the standby's process keeps its copy */

/* The schema of struct hook; bind: the functions and the extern bound
 * (bound_labels: to which array). */
static tha_schema_t *hook_schema(int bind, const char *bound_labels, size_t labels_size) {
    tha_schema_t *s;
    uint32_t id;
    CHECK_OK(tha_schema_create(&s));
    CHECK_OK(THA_STRUCT(s, struct hook, "hook", &id));
    CHECK_OK(THA_FIELD_FUNC(s, id, struct hook, fn, 0));
    CHECK_OK(THA_FIELD_PTR(s, id, struct hook, label, "char", 0));
    CHECK_OK(THA_FIELD_PTR(s, id, struct hook, next, "hook", 0));
    CHECK_OK(tha_schema_add_func(s, "hook_a", bind ? hook_a : NULL));
    CHECK_OK(tha_schema_add_func(s, "hook_b", bind ? hook_b : NULL));
    CHECK_OK(tha_schema_add_extern(s, "labels", labels_size, bind ? bound_labels : NULL));
    CHECK_OK(tha_schema_seal(s));
    return s;
}

/* An active's heap of two hooks: with use, holding both functions and
 * pointing into both labels; else only linked (the names declared, unused). */
static tha_heap_t *hooks_heap(int use) {
    tha_schema_t *s = hook_schema(1, labels, sizeof labels);
    tha_heap_t *h;
    CHECK_OK(tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT));
    tha_schema_release(s);
    uint32_t id;
    CHECK_OK(tha_schema_type_by_name(tha_heap_schema(h), "hook", &id));
    struct hook *k;
    CHECK_OK(tha_heap_alloc(h, id, 2, (void **)&k));
    k[0] = (struct hook){use ? hook_a : NULL, use ? labels : NULL, &k[1]};
    k[1] = (struct hook){use ? hook_b : NULL, use ? labels + 6 : NULL, NULL};
    CHECK_OK(tha_root_set(h, "hooks", k));
    return h;
}

static void test_bulk_sync_binds_functions_and_externs(void) {
    memcpy(labels_here, labels, sizeof labels);
    tha_schema_t *none = hook_schema(0, NULL, sizeof labels);
    tha_schema_t *here = hook_schema(1, labels_here, sizeof labels);
    tha_schema_t *fns_only;
    CHECK_OK(tha_schema_create(&fns_only)); /* a registry, never sealed */
    CHECK_OK(tha_schema_add_func(fns_only, "hook_a", hook_a));
    CHECK_OK(tha_schema_add_func(fns_only, "hook_b", hook_b));
    tha_schema_t *wrong_size;
    CHECK_OK(tha_schema_create(&wrong_size));
    CHECK_OK(tha_schema_add_func(wrong_size, "hook_a", hook_a));
    CHECK_OK(tha_schema_add_func(wrong_size, "hook_b", hook_b));
    CHECK_OK(tha_schema_add_extern(wrong_size, "labels", 8, labels_here));
    tha_heap_t *empty_unbound, *empty_bound;
    CHECK_OK(tha_heap_create(&empty_unbound, none, 1 << 20, THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_create(&empty_bound, here, 1 << 20, THA_TRACK_EXPLICIT));
    const struct {
        const tha_schema_t *bindings;
        tha_heap_t *heap;
        int use;             /* the heap holds function and extern words */
        const char *refused; /* NULL: mirrored */
        int at_handshake;    /* refused before any bulk sync began */
    } cases[] = {
        {here, NULL, 1, NULL, 0},          /* a heapless standby with bindings */
        {NULL, empty_bound, 1, NULL, 0},   /* its own (fresh) heap's bindings */
        {here, empty_unbound, 1, NULL, 0}, /* bindings win; the bulk replaces it */
        {NULL, NULL, 0, NULL, 0},          /* declared, never used: nothing needed */
        {NULL, NULL, 1, "function 'hook_a'", 0},   /* nothing bound */
        {NULL, empty_unbound, 1, "function 'hook_a'", 0},
        {fns_only, NULL, 1, "extern 'labels'", 0}, /* the extern missing */
        {wrong_size, NULL, 1, "binds only 8", 1},  /* too small */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tha_heap_t *src = hooks_heap(cases[c].use);
        tha_backlog_t *bl;
        CHECK_OK(tha_backlog_create(&bl, 0));
        end_t *a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
        tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                    .bindings = cases[c].bindings};
        end_t *b = end_with(&cfg, cases[c].heap, NULL);
        tha_heap_t *mirror = NULL; /* the bulk sync's heap, taken */
        exchange(a, b, 1, SIZE_MAX, NULL);
        sync_one(src, bl, cases[c].refused ? NULL : a, THA_ACK_APPLIED); /* closed */
        exchange(a, b, 2, SIZE_MAX, NULL);
        drain(a);
        drain(b);
        if (cases[c].refused) {
            /* refused for good, by name (the active stops resending), and
             * nothing went live */
            const tha_event_t *r = last_ev(a, THA_EV_REFUSED);
            CHECK(r != NULL && r->code == THA_EMISMATCH);
            CHECK(r && strstr(r->msg, cases[c].refused) != NULL);
            CHECK(count_ev(b, THA_EV_BULK_DONE) == 0);
            CHECK(count_ev(b, THA_EV_BULK_BEGIN) == !cases[c].at_handshake);
        } else {
            CHECK(count_ev(b, THA_EV_ERROR) == 0 && last_ev(b, THA_EV_BULK_DONE) != NULL);
            tha_heap_t *m = tha_session_take_heap(b->s);
            CHECK_OK(tha_heap_check(m));
            struct hook *k;
            CHECK_OK(tha_root_get(m, "hooks", (void **)&k));
            CHECK(k[0].next == &k[1]);
            if (cases[c].use) {
                CHECK(k[0].fn == hook_a && k[1].fn == hook_b);
                CHECK(k[0].label == labels_here && strcmp(k[1].label, "beta") == 0 &&
                      k[1].label == labels_here + 6);
            } else {
                CHECK(!k[0].fn && !k[1].label);
            }
            /* and deltas after it */
            struct hook *sk;
            CHECK_OK(tha_root_get(src, "hooks", (void **)&sk));
            if (cases[c].use)
                sk[1].fn = hook_a;
            else
                sk[1].next = sk;
            CHECK_OK(tha_heap_touch(src, &sk[1], sizeof sk[1]));
            sync_one(src, bl, a, THA_ACK_APPLIED);
            exchange(a, b, 3, SIZE_MAX, NULL);
            drain(b);
            CHECK(count_ev(b, THA_EV_ERROR) == 0);
            CHECK_OK(tha_root_get(m, "hooks", (void **)&k));
            CHECK(cases[c].use ? k[1].fn == hook_a : k[1].next == k);
            if (!cases[c].use) { /* the first word it cannot resolve: refused */
                sk[0].fn = hook_b;
                CHECK_OK(tha_heap_touch(src, &sk[0], sizeof sk[0]));
                sync_one(src, bl, a, THA_ACK_APPLIED);
                exchange(a, b, 4, SIZE_MAX, NULL);
                drain(b);
                const tha_event_t *e = last_ev(b, THA_EV_ERROR);
                CHECK(e && strstr(e->msg, "function 'hook_b'") && !k[0].fn);
                CHECK_OK(tha_heap_check(m));
            }
            mirror = m;
        }
        end_free(b);
        tha_heap_destroy(mirror);
        end_free(a);
        tha_backlog_destroy(bl);
        tha_heap_destroy(src);
    }
    tha_heap_destroy(empty_unbound);
    tha_heap_destroy(empty_bound);
    tha_schema_release(none);
    tha_schema_release(here);
    tha_schema_release(fns_only);
    tha_schema_release(wrong_size);
}

/* A company heap of capacity bytes, and in *tape what an active sends a
 * fresh standby of it: the handshake, the bulk sync and one delta. */
static tha_heap_t *bulk_tape(size_t capacity, tape_t *tape) {
    struct emp *es;
    tha_heap_t *src = company_in(capacity, &es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
    end_t *first = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, first, 1, SIZE_MAX, tape);
    sync_one(src, bl, a, THA_ACK_APPLIED);
    exchange(a, first, 2, SIZE_MAX, tape);
    CHECK(last_ev(first, THA_EV_BULK_DONE) != NULL);
    end_free(first);
    end_free(a);
    tha_backlog_destroy(bl);
    return src;
}

static void test_bulk_into_reserve(void) {
    tha_reserve_t *r = NULL;
    CHECK(tha_reserve_create(&r, 0) == THA_EINVAL && r == NULL);
    CHECK(tha_reserve_create(&r, (1ull << 44) + 1) == THA_EINVAL);
    CHECK(tha_reserve_bytes(NULL) == 0);
    /* the bytes of a bulk sync of an 8 MiB heap, and the delta after it */
    enum { BIG = 8 << 20 };
    tape_t tape = {0};
    tha_heap_t *src = bulk_tape(BIG, &tape);
    const struct {
        size_t bytes;  /* 0: the reserve of the case before, taken */
        int zero_copy; /* fed through tha_session_recv_buffer */
    } cases[] = {{BIG / 2, 1}, {0, 1}, {BIG / 2, 0}, {0, 0}, {2 * BIG, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        if (cases[c].bytes) {
            tha_reserve_destroy(r);
            CHECK_OK(tha_reserve_create(&r, cases[c].bytes));
            CHECK(tha_reserve_bytes(r) == cases[c].bytes);
        }
        size_t reserved = tha_reserve_bytes(r);
        tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                    .chunk_bytes = 4096, .reserve = r};
        end_t *b = end_with(&cfg, NULL, NULL);
        if (cases[c].zero_copy)
            CHECK_OK(feed_zero_copy(b, tape.data, tape.len, SIZE_MAX, 3, NULL, NULL, 0));
        else
            CHECK_OK(tha_session_feed(b->s, tape.data, tape.len, 3));
        drain(b);
        CHECK(count_ev(b, THA_EV_ERROR) == 0 && last_ev(b, THA_EV_BULK_DONE) != NULL);
        CHECK(tha_reserve_bytes(r) == 0);
        tha_heap_t *m = tha_session_take_heap(b->s);
        end_free(b);
        CHECK(m != NULL && mirrors(src, m));
        CHECK_OK(tha_heap_check(m));
        tha_stats_t st;
        CHECK_OK(tha_heap_stats(m, &st));
        CHECK(st.capacity == BIG && st.committed < BIG / 2);
        const uint8_t *base = tha_heap_base(m);
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t want = (BIG / 2 - st.committed) / page;
        size_t in = resident_pages(base + st.committed, base + BIG / 2);
        CHECK(reserved ? in == want : in < want);
        /* allocations past the image land on those pages and stay sound */
        struct emp *more;
        CHECK_OK(tha_heap_alloc(m, EMP, 20000, (void **)&more));
        memset(more, 0, 20000 * sizeof *more);
        more[19999].mgr = &more[0];
        CHECK_OK(tha_heap_touch(m, more, 0));
        CHECK_OK(tha_heap_check(m));
        tha_heap_destroy(m);
    }
    tha_reserve_destroy(r);
    tha_heap_destroy(src);
    free(tape.data);
}

/* Deltas are encoded into a buffer the backlog reuses: a frame it holds
 * never changes after it was made. Frames queued unsent while later ones
 * are encoded (settled or not), and frames a reconnecting standby resumes
 * from, all arrive as they were made. */
static void test_backlog_frames_stay_as_encoded(void) {
    struct emp *es;
    tha_heap_t *src = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    uint64_t seq;
    size_t len;
    tape_t tape = {0};
    exchange(a, b, 1, SIZE_MAX, &tape);
    CHECK_OK(tha_backlog_encode(bl, src, &seq, &len)); /* takes the bulk live */
    CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
    exchange(a, b, 2, SIZE_MAX, &tape);
    tha_heap_t *mirror = tha_session_take_heap(b->s);
    CHECK(mirror && mirrors(src, mirror));
    /* another standby at this seq (the same bytes), to resume from later */
    end_t *c = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    CHECK_OK(tha_session_feed(c->s, tape.data, tape.len, 2));
    tha_heap_t *behind = tha_session_take_heap(c->s);
    CHECK(behind && mirrors(src, behind));
    end_free(c);
    free(tape.data);
    /* five deltas queued, none sent: the session holds each while the
     * next ones are encoded; every other one settled by the driver */
    for (int round = 1; round <= 5; round++) {
        mutate(src, es, round);
        es[round].mgr = &es[(round * 7) % NSTAFF];
        CHECK_OK(tha_heap_touch(src, &es[round].mgr, sizeof es[round].mgr));
        CHECK_OK(tha_backlog_encode(bl, src, &seq, &len));
        CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
        if (round % 2) CHECK_OK(tha_backlog_settle(bl));
    }
    CHECK_OK(tha_backlog_settle(bl));
    CHECK_OK(tha_backlog_settle(bl)); /* nothing left to settle: a no-op */
    exchange(a, b, 3, SIZE_MAX, NULL);
    CHECK(count_ev(b, THA_EV_ERROR) == 0 && count_ev(a, THA_EV_ERROR) == 0);
    CHECK(acked(a, THA_ACK_APPLIED) == seq && mirrors(src, mirror));
    end_free(a);
    end_free(b);
    /* a standby five frames behind resumes from the backlog */
    a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
    b = end_new(THA_ROLE_STANDBY, NULL, behind, NULL);
    exchange(a, b, 4, SIZE_MAX, NULL);
    const tha_event_t *ready = last_ev(a, THA_EV_READY);
    CHECK(ready && ready->b == 1); /* resumed, no bulk */
    CHECK(count_ev(b, THA_EV_ERROR) == 0 && count_ev(a, THA_EV_ERROR) == 0);
    CHECK(mirrors(src, behind));
    CHECK_OK(tha_heap_check(behind));
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(behind);
    tha_heap_destroy(mirror);
    tha_heap_destroy(src);
}

/* A driver that sends without blocking leaves the head frame partly sent;
 * the frames queued behind it still count: once the backlog drops one of
 * them unsent, the lagging standby is dropped (THA_EFULL). */
static void test_partly_sent_frame_does_not_hide_a_lagging_standby(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 1));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 2, SIZE_MAX, NULL);
    CHECK(state_of(b) == 3);
    /* frames above the session's copy limit go by reference */
    struct emp *big;
    CHECK_OK(tha_heap_alloc(h, EMP, 2048, (void **)&big));
    CHECK_OK(tha_root_set(h, "big", big));
    /* the standby stops reading; one frame goes out in part */
    CHECK_OK(tha_heap_touch(h, big, 0));
    sync_one(h, bl, a, THA_ACK_APPLIED);
    const void *d;
    size_t n;
    CHECK_OK(tha_session_output(a->s, &d, &n));
    CHECK(n == 20); /* the message header */
    CHECK_OK(tha_session_advance(a->s, n));
    CHECK_OK(tha_session_output(a->s, &d, &n));
    CHECK(n > 2);
    CHECK_OK(tha_session_advance(a->s, n / 2));
    for (int round = 2; round < 40 && state_of(a) != 4; round++) {
        big[round].id = (uint32_t)round;
        CHECK_OK(tha_heap_touch(h, big, 0));
        sync_one(h, bl, NULL, THA_ACK_APPLIED);
        int rc = tha_session_pump(a->s, THA_ACK_APPLIED);
        CHECK(rc == 0 || rc == THA_EFULL);
        drain(a);
    }
    const tha_event_t *e = last_ev(a, THA_EV_ERROR);
    CHECK(state_of(a) == 4);
    CHECK(e && e->code == THA_EFULL);
    CHECK_CONTAINS(e ? e->msg : NULL, "too slow");
    end_free(a);
    end_free(b);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}


/* tha_net_send_output over a real socket: several queued pieces (a frame's
 * header, the frame by reference, small messages) go out in order, also
 * through a send buffer too small for them, and the far end applies them. */
static void test_send_output_on_a_socket(void) {
    struct emp *es;
    tha_heap_t *h = company(&es);
    tha_backlog_t *bl;
    CHECK_OK(tha_backlog_create(&bl, 0));
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, h, bl);
    end_t *b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(a, b, 1, SIZE_MAX, NULL);
    sync_one(h, bl, a, THA_ACK_APPLIED);
    exchange(a, b, 2, SIZE_MAX, NULL);
    CHECK(state_of(b) == 3);
    struct emp *big;
    CHECK_OK(tha_heap_alloc(h, EMP, 2048, (void **)&big));
    CHECK_OK(tha_root_set(h, "big", big));
    for (int small = 0; small < 2; small++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        if (small) { /* partial sends: less room than one frame */
            int sz = 4096;
            setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        }
        uint64_t seq = 0;
        for (int round = 0; round < 3; round++) {
            big[round].id = (uint32_t)(100 + round);
            CHECK_OK(tha_heap_touch(h, big, 0));
            mutate(h, es, round + 10);
            seq = sync_one(h, bl, a, THA_ACK_APPLIED);
        }
        static uint8_t buf[1 << 16];
        for (int spins = 0; spins < 100000; spins++) {
            size_t sent = 0;
            CHECK_OK(tha_net_send_output(a->s, sv[0], 0, &sent));
            ssize_t n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                CHECK_OK(tha_session_feed(b->s, buf, (size_t)n, 3));
                drain(b);
            }
            const void *d;
            size_t left;
            CHECK_OK(tha_session_output(a->s, &d, &left));
            if (!left && n <= 0) break;
        }
        const tha_event_t *ap = last_ev(b, THA_EV_APPLIED);
        CHECK(ap && ap->seq == seq);
        CHECK(count_ev(b, THA_EV_ERROR) == 0);
        tha_heap_t *m = tha_session_take_heap(b->s);
        CHECK(m && mirrors(h, m));
        close(sv[0]);
        close(sv[1]);
    }
    tha_heap_t *m = tha_session_take_heap(b->s);
    end_free(a);
    end_free(b);
    tha_heap_destroy(m);
    tha_backlog_destroy(bl);
    tha_heap_destroy(h);
}

/* ---- attack2: the hot buffer and the reserve ---------------------------- */

/* Is any byte of [from, to) accessible? (a mapping with r, w or x listed
 * in /proc/self/maps overlapping it) */
static bool any_accessible(const uint8_t *from, const uint8_t *to) {
    FILE *f = fopen("/proc/self/maps", "re");
    CHECK(f != NULL);
    if (!f) return true;
    char line[512];
    bool acc = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) != 3) continue;
        if (hi <= (uintptr_t)from || lo >= (uintptr_t)to) continue;
        if (perms[0] != '-' || perms[1] != '-' || perms[2] != '-') acc = true;
    }
    fclose(f);
    return acc;
}

/* Every accepted mirror: sound, nothing past committed accessible, and
 * usable: allocate past the image, free, check again. */
static void mirror_usable(tha_heap_t *m) {
    CHECK_OK(tha_heap_check(m));
    tha_stats_t st;
    CHECK_OK(tha_heap_stats(m, &st));
    const uint8_t *base = tha_heap_base(m);
    CHECK(!any_accessible(base + st.committed, base + st.capacity));
    struct emp *more;
    size_t n = (size_t)(st.capacity / 4 / sizeof *more);
    if (n > 20000) n = 20000;
    int arc = tha_heap_alloc(m, EMP, (uint32_t)n, (void **)&more);
    if (arc) { fprintf(stderr, "alloc: %s\n", tha_heap_errmsg(m)); CHECK_OK(arc); return; }
    memset(more, 0, n * sizeof *more);
    more[n - 1].mgr = &more[0];
    CHECK_OK(tha_heap_touch(m, more, 0));
    CHECK_OK(tha_heap_check(m));
    CHECK_OK(tha_heap_free(m, more));
    CHECK_OK(tha_heap_check(m));
    CHECK_OK(tha_heap_stats(m, &st));
    CHECK(!any_accessible(base + st.committed, base + st.capacity));
}

/* Reserves of every awkward size against heaps of every awkward capacity. */
static void test_attack_reserve_sizes(void) {
    const size_t caps[] = {1u << 20, (1u << 20) + 1, (3u << 20) + 12345, 8u << 20};
    const size_t sizes[] = {1, 4095, 4097, 65535, 65537, (1u << 20) - 1, (1u << 20) + 1,
                            (2u << 20) + 4096, 9u << 20, 64u << 20};
    for (size_t ci = 0; ci < sizeof caps / sizeof *caps; ci++) {
        tape_t tape = {0};
        tha_heap_t *src = bulk_tape(caps[ci], &tape);
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            for (int zc = 0; zc < 2; zc++) {
                tha_reserve_t *r;
                CHECK_OK(tha_reserve_create(&r, sizes[si]));
                CHECK(tha_reserve_bytes(r) >= sizes[si]);
                tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                            .chunk_bytes = 4096, .reserve = r};
                end_t *b = end_with(&cfg, NULL, NULL);
                if (zc)
                    CHECK_OK(feed_zero_copy(b, tape.data, tape.len, 777, 3, NULL, NULL, 0));
                else
                    CHECK_OK(tha_session_feed(b->s, tape.data, tape.len, 3));
                drain(b);
                CHECK(count_ev(b, THA_EV_ERROR) == 0 && last_ev(b, THA_EV_BULK_DONE));
                CHECK(tha_reserve_bytes(r) == 0);
                tha_heap_t *m = tha_session_take_heap(b->s);
                end_free(b);
                CHECK(m && mirrors(src, m));
                if (m) mirror_usable(m);
                tha_heap_destroy(m);
                tha_reserve_destroy(r);
            }
        }
        tha_heap_destroy(src);
        free(tape.data);
    }
}

/* A bulk sync that fails midway after it took the reserve; then one that
 * succeeds with a second session sharing a fresh reserve with a third. */
static void test_attack_reserve_corrupt_and_shared(void) {
    tape_t tape = {0};
    tha_heap_t *src = bulk_tape(4u << 20, &tape);
    uint32_t plen;
    size_t at = snap_data_at(tape.data, tape.len, 1, &plen);
    uint8_t *bad = malloc(tape.len);
    memcpy(bad, tape.data, tape.len);
    bad[at + plen / 2] ^= 0x40;
    tha_reserve_t *r;
    CHECK_OK(tha_reserve_create(&r, 3u << 20));
    tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                .chunk_bytes = 4096, .reserve = r};
    for (int zc = 0; zc < 2; zc++) {
        end_t *b = end_with(&cfg, NULL, NULL);
        if (zc) feed_zero_copy(b, bad, tape.len, 4096, 3, NULL, NULL, 0);
        else tha_session_feed(b->s, bad, tape.len, 3);
        drain(b);
        CHECK(count_ev(b, THA_EV_ERROR) == 1 && state_of(b) == 4);
        CHECK(tha_session_take_heap(b->s) == NULL);
        end_free(b);
    }
    tha_reserve_destroy(r);
    CHECK_OK(tha_reserve_create(&r, 3u << 20));
    cfg.reserve = r;
    end_t *b = end_with(&cfg, NULL, NULL), *c = end_with(&cfg, NULL, NULL);
    CHECK_OK(tha_session_feed(b->s, tape.data, tape.len, 3));
    CHECK_OK(tha_session_feed(c->s, tape.data, tape.len, 3));
    drain(b);
    drain(c);
    CHECK(count_ev(b, THA_EV_ERROR) == 0 && count_ev(c, THA_EV_ERROR) == 0);
    tha_heap_t *mb = tha_session_take_heap(b->s), *mc = tha_session_take_heap(c->s);
    CHECK(mb && mc && mirrors(src, mb) && mirrors(src, mc));
    if (mb) mirror_usable(mb);
    if (mc) mirror_usable(mc);
    tha_heap_destroy(mb);
    tha_heap_destroy(mc);
    end_free(b);
    end_free(c);
    tha_reserve_destroy(r);
    free(bad);
    tha_heap_destroy(src);
    free(tape.data);
}

/* One end over a socket until done() or 10 s: output out, input in. */
static void pump_fd(end_t *e, int fd, bool (*done)(end_t *)) {
    for (int spins = 0; spins < 200000 && !done(e) && state_of(e) != 4; spins++) {
        size_t sent = 0;
        if (tha_net_send_output(e->s, fd, 0, &sent)) break;
        static uint8_t buf[1 << 16];
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) tha_session_feed(e->s, buf, (size_t)n, 3);
        else if (n == 0) break;
        else usleep(50);
        drain(e);
    }
    drain(e);
}

static uint64_t want_seq;
static bool active_done(end_t *e) { return want_seq && acked(e, THA_ACK_APPLIED) >= want_seq; }
static bool is_streaming(end_t *e) { return state_of(e) == 3; }
static bool standby_done(end_t *e) {
    return last_ev(e, THA_EV_APPLIED) && last_ev(e, THA_EV_APPLIED)->seq >= 1;
}

/* Active in a child: a same-address heap at base with n staff, one delta. */
static pid_t fork_active(int fd, void *base, int n) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid) return pid;
    munmap(base, 4u << 20); /* the parent's mirror there, copied by fork */
    tha_schema_t *s = make_schema();
    tha_heap_t *src;
    if (tha_heap_create_at(&src, s, 4u << 20, THA_TRACK_EXPLICIT, base)) _exit(2);
    tha_schema_release(s);
    struct emp *es;
    if (tha_heap_alloc(src, EMP, (uint32_t)n, (void **)&es)) _exit(3);
    for (int i = 0; i < n; i++) {
        es[i].id = (uint32_t)(i + 1000 * n);
        es[i].mgr = &es[i / 2];
    }
    tha_heap_touch(src, es, 0);
    tha_root_set(src, "staff", es);
    tha_backlog_t *bl;
    tha_backlog_create(&bl, 0);
    end_t *a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
    want_seq = 0;
    pump_fd(a, fd, is_streaming);
    es[0].salary = 1.5;
    tha_heap_touch(src, &es[0].salary, sizeof es[0].salary);
    uint64_t seq;
    size_t len;
    if (tha_backlog_encode(bl, src, &seq, &len)) _exit(4);
    tha_session_pump(a->s, THA_ACK_APPLIED);
    want_seq = seq;
    pump_fd(a, fd, active_done);
    int rc = active_done(a) ? 0 : 5;
    end_free(a);
    tha_backlog_destroy(bl);
    tha_heap_destroy(src);
    _exit(rc);
}

/* A same-address active (in a child process): the standby's staging heap
 * at the base takes the reserve; a second bulk sync into the same standby
 * (its live heap holds the base) fills elsewhere with another reserve and
 * the live heap takes the image in place. */
static void test_attack_reserve_same_address(void) {
    /* memcheck reports at the forked active's exit what it inherited from
     * this process (the mirror of the round before) as lost */
    if (under_valgrind()) return;
    void *base = (void *)(uintptr_t)0x5a0000000000ull;
    tha_schema_release(make_schema()); /* EMP */
    tha_heap_t *m = NULL;
    for (int round = 0; round < 2; round++) {
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
        int n = round ? 300 : 5000;
        pid_t pid = fork_active(sv[1], base, n);
        close(sv[1]);
        tha_reserve_t *r;
        CHECK_OK(tha_reserve_create(&r, round ? 5u << 20 : 1u << 20));
        tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                    .chunk_bytes = 4096, .reserve = r};
        end_t *b = end_with(&cfg, m, NULL);
        pump_fd(b, sv[0], standby_done);
        close(sv[0]);
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        for (int i = 0; i < b->nev; i++)
            if (b->ev[i].type == THA_EV_ERROR) fprintf(stderr, "ev: %s\n", b->ev[i].msg);
        CHECK(count_ev(b, THA_EV_ERROR) == 0 && last_ev(b, THA_EV_BULK_DONE));
        CHECK(tha_reserve_bytes(r) == 0);
        tha_heap_t *got = tha_session_take_heap(b->s);
        CHECK(got && tha_heap_base(got) == base);
        CHECK(!m || got == m);
        m = got;
        end_free(b);
        tha_reserve_destroy(r);
        if (!m) break;
        struct emp *es;
        CHECK_OK(tha_root_get(m, "staff", (void **)&es));
        CHECK(es[n - 1].id == (uint32_t)(n - 1 + 1000 * n) && es[0].salary == 1.5);
        mirror_usable(m);
    }
    tha_heap_destroy(m);
}

/* A heap with a "big" array: frames above FRAME_COPY_MAX go by reference. */
static struct emp *add_big(tha_heap_t *h, uint32_t n) {
    struct emp *big;
    CHECK_OK(tha_heap_alloc(h, EMP, n, (void **)&big));
    CHECK_OK(tha_root_set(h, "big", big));
    return big;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Moves up to n bytes of a's output into b. */
static void move_some(end_t *from, end_t *to, uint64_t now, size_t n) {
    while (n) {
        const void *d;
        size_t k;
        if (tha_session_output(from->s, &d, &k) || !k) break;
        if (k > n) k = n;
        tha_session_feed(to->s, d, k, now);
        CHECK_OK(tha_session_advance(from->s, k));
        n -= k;
        drain(to);
    }
    drain(from);
}

/* Random orders of encode / settle / partial sends / reconnects, frames
 * small, by reference, and above 8 MiB, two standbys on one backlog; every
 * standby ends as the source. */
static void reconnect(end_t **pa, end_t **pb, tha_heap_t *src, tha_backlog_t *bl,
                      const char *key, uint64_t *now) {
    tha_heap_t *m = tha_session_take_heap((*pb)->s);
    end_free(*pa);
    end_free(*pb);
    *pa = end_new(THA_ROLE_ACTIVE, key, src, bl);
    *pb = end_new(THA_ROLE_STANDBY, key, m, NULL);
    exchange(*pa, *pb, (*now)++, SIZE_MAX, NULL);
    CHECK_OK(tha_session_pump((*pa)->s, THA_ACK_APPLIED));
    exchange(*pa, *pb, (*now)++, SIZE_MAX, NULL);
    if (m && tha_session_take_heap((*pb)->s) != m) tha_heap_destroy(m);
    CHECK(state_of(*pb) == 3);
}

static void test_attack_hot_random(void) {
    for (int variant = 0; variant < 3; variant++) {
        struct emp *es;
        tha_heap_t *src = company_in(32u << 20, &es);
        uint32_t nbig = 120000; /* ~12 MiB of records */
        struct emp *big = add_big(src, nbig);
        tha_backlog_t *bl;
        CHECK_OK(tha_backlog_create(&bl, variant == 0 ? 1 : variant == 1 ? (4u << 20) : 0));
        const char *key = variant == 2 ? "k" : NULL;
        end_t *a[2], *b[2];
        uint64_t now = 1;
        for (int k = 0; k < 2; k++) {
            a[k] = end_new(THA_ROLE_ACTIVE, key, src, bl);
            b[k] = end_new(THA_ROLE_STANDBY, key, NULL, NULL);
            exchange(a[k], b[k], now++, SIZE_MAX, NULL);
        }
        uint64_t seq;
        size_t len;
        CHECK_OK(tha_backlog_encode(bl, src, &seq, &len));
        for (int k = 0; k < 2; k++) {
            CHECK_OK(tha_session_pump(a[k]->s, THA_ACK_APPLIED));
            exchange(a[k], b[k], now++, SIZE_MAX, NULL);
            CHECK(state_of(b[k]) == 3);
        }
        int reconnects = 0, huge = 0, byref = 0;
        /* memcheck runs this ~50x slower: fewer steps there (ASan runs all) */
        for (int step = 0; step < (under_valgrind() ? 40 : 400); step++) {
            int op = (int)(rnd() % 11), k = (int)(rnd() % 2);
            if (op < 4) {
                int kind = (int)(rnd() % 12);
                uint32_t n = kind < 4 ? 3 : kind < 11 ? 1000 + (uint32_t)(rnd() % 60000)
                                                      : nbig;
                uint32_t from = (uint32_t)(rnd() % (nbig - n + 1));
                for (uint32_t i = from; i < from + n; i++) big[i].id = (uint32_t)(step * 7 + i);
                CHECK_OK(tha_heap_touch(src, &big[from], n * sizeof *big));
                mutate(src, es, step);
                CHECK_OK(tha_backlog_encode(bl, src, &seq, &len));
                huge += len > (8u << 20);
                byref += len > (64u << 10);
                for (int j = 0; j < 2; j++) {
                    int rc = tha_session_pump(a[j]->s, THA_ACK_APPLIED);
                    CHECK(rc == 0 || rc == THA_EFULL || rc == THA_ECLOSED);
                }
            } else if (op < 5) {
                CHECK_OK(tha_backlog_settle(bl));
            } else if (op < 8) {
                move_some(a[k], b[k], now++, 1 + (size_t)(rnd() % 300000));
                move_some(b[k], a[k], now++, SIZE_MAX);
            } else if (op < 9) {
                move_some(a[k], b[k], now++, 1 + (size_t)(rnd() % 30));
            } else if (op < 10) {
                exchange(a[k], b[k], now++, SIZE_MAX, NULL);
            } else {
                /* a reconnect mid-frame: the standby resumes or bulk syncs */
                move_some(a[k], b[k], now++, 1 + (size_t)(rnd() % 100000));
                reconnect(&a[k], &b[k], src, bl, key, &now);
                reconnects++;
            }
            for (int j = 0; j < 2; j++) {
                drain(a[j]);
                drain(b[j]);
                if (state_of(a[j]) == 4 || state_of(b[j]) == 4) {
                    reconnect(&a[j], &b[j], src, bl, key, &now);
                    reconnects++;
                }
            }
        }
        CHECK(under_valgrind() || (huge > 0 && byref > 0)); /* the paths it is for */
        for (int k = 0; k < 2; k++) {
            exchange(a[k], b[k], now++, SIZE_MAX, NULL);
            CHECK(count_ev(b[k], THA_EV_ERROR) == 0);
            tha_heap_t *m = tha_session_take_heap(b[k]->s);
            CHECK(m && mirrors(src, m));
            if (m) {
                void *rb, *mb;
                CHECK_OK(tha_root_get(src, "big", &rb));
                CHECK_OK(tha_root_get(m, "big", &mb));
                int bad = 0;
                for (uint32_t i = 0; i < nbig; i++)
                    bad += ((struct emp *)rb)[i].id != ((struct emp *)mb)[i].id;
                CHECK(bad == 0);
                CHECK_OK(tha_heap_check(m));
            }
            end_free(a[k]);
            end_free(b[k]);
            tha_heap_destroy(m);
        }
        (void)reconnects;
        tha_backlog_destroy(bl);
        tha_heap_destroy(src);
    }
}

/* An active and a standby mirroring a heap of `cap` bytes with a root
 * "big" of nbig records, through a backlog of max_bytes: bulk sync done,
 * the first delta applied (the standby live). */
typedef struct live_pair {
    tha_heap_t *src;
    struct emp *es, *big;
    tha_backlog_t *bl;
    end_t *a, *b;
} live_pair_t;

static void pair_start(live_pair_t *p, size_t cap, uint32_t nbig, uint64_t max_bytes) {
    p->src = company_in(cap, &p->es);
    p->big = add_big(p->src, nbig);
    CHECK_OK(tha_backlog_create(&p->bl, max_bytes));
    p->a = end_new(THA_ROLE_ACTIVE, NULL, p->src, p->bl);
    p->b = end_new(THA_ROLE_STANDBY, NULL, NULL, NULL);
    exchange(p->a, p->b, 1, SIZE_MAX, NULL);
    uint64_t seq;
    size_t len;
    CHECK_OK(tha_backlog_encode(p->bl, p->src, &seq, &len));
    CHECK_OK(tha_session_pump(p->a->s, THA_ACK_APPLIED));
    exchange(p->a, p->b, 2, SIZE_MAX, NULL);
}

/* After the test destroyed the backlog and the standby got everything:
 * no error, the mirror's big[at].id is want and the mirror is sound. */
static void pair_finish(live_pair_t *p, uint32_t at, uint32_t want) {
    move_some(p->b, p->a, 4, SIZE_MAX);
    CHECK(count_ev(p->b, THA_EV_ERROR) == 0);
    tha_heap_t *m = tha_session_take_heap(p->b->s);
    CHECK(m != NULL);
    if (m) {
        struct emp *mb;
        CHECK_OK(tha_root_get(m, "big", (void **)&mb));
        CHECK(mb[at].id == want);
        CHECK_OK(tha_heap_check(m));
    }
    end_free(p->a);
    end_free(p->b);
    tha_heap_destroy(m);
    tha_heap_destroy(p->src);
}

/* The backlog destroyed while a session still sends the hot frame, partly
 * sent; the session goes on sending it and the standby applies it. */
static void test_attack_hot_outlives_backlog(void) {
    live_pair_t p;
    pair_start(&p, 8u << 20, 4000, 0);
    tha_heap_t *src = p.src;
    struct emp *es = p.es, *big = p.big;
    tha_backlog_t *bl = p.bl;
    end_t *a = p.a, *b = p.b;
    uint64_t seq;
    size_t len;
    for (int settle = 0; settle < 2; settle++) {
        for (int i = 0; i < 4000; i++) big[i].id = (uint32_t)(i * 3 + settle);
        CHECK_OK(tha_heap_touch(src, big, 0));
        CHECK_OK(tha_backlog_encode(bl, src, &seq, &len));
        CHECK(len > (64u << 10));
        CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
        move_some(a, b, 3, 20 + 1000);
        if (settle) CHECK_OK(tha_backlog_settle(bl));
        /* a failed encode right after (foreign pointer), then a good one */
        static struct emp outside;
        es[1].mgr = &outside;
        CHECK_OK(tha_heap_touch(src, &es[1].mgr, sizeof es[1].mgr));
        uint64_t s2;
        size_t l2;
        CHECK_RC(tha_backlog_encode(bl, src, &s2, &l2), THA_EFOREIGN);
        es[1].mgr = &es[0];
        CHECK_OK(tha_heap_touch(src, &es[1].mgr, sizeof es[1].mgr));
        if (!settle) {
            CHECK_OK(tha_backlog_encode(bl, src, &s2, &l2));
            CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
            move_some(a, b, 3, 500);
        }
    }
    /* the backlog goes; the session keeps what it queued */
    tha_backlog_destroy(bl);
    for (int spins = 0; spins < 1000; spins++) move_some(a, b, 4, 7777);
    pair_finish(&p, 3999, 3999u * 3 + 1); /* the second encode's frame, last */
}

/* Snapshot copy of h into a fresh explicit heap. */
static tha_heap_t *snap_copy(tha_heap_t *h) {
    size_t n, len;
    CHECK_OK(tha_heap_frame_size(h, THA_FRAME_SNAPSHOT, &n));
    void *f = malloc(n);
    CHECK_OK(tha_heap_encode(h, THA_FRAME_SNAPSHOT, f, n, &len));
    tha_stats_t st;
    tha_heap_stats(h, &st);
    tha_heap_t *m;
    CHECK_OK(tha_heap_create(&m, (tha_schema_t *)tha_heap_schema(h), st.capacity,
                             THA_TRACK_EXPLICIT));
    CHECK_OK(tha_heap_apply(m, f, len));
    free(f);
    return m;
}

/* A mirror on reserve pages promoted: wp / diff tracking finds plain
 * writes (no touch) on those pages, the allocated ones and the fresh ones
 * past the image, and the next delta carries them. */
static void test_attack_reserve_promoted_tracking(void) {
    const int modes[] = {THA_TRACK_WP, THA_TRACK_DIFF, THA_TRACK_AUTO};
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
        /* memcheck cannot run write protection (make valgrind) */
        if (modes[mi] != THA_TRACK_DIFF && getenv("THA_TEST_NO_WP")) continue;
        struct emp *es;
        tha_heap_t *src = company_in(8u << 20, &es);
        add_big(src, 3000);
        tha_backlog_t *bl;
        CHECK_OK(tha_backlog_create(&bl, 0));
        end_t *a = end_new(THA_ROLE_ACTIVE, NULL, src, bl);
        tha_reserve_t *r;
        CHECK_OK(tha_reserve_create(&r, 6u << 20));
        tha_session_config_t cfg = {.role = THA_ROLE_STANDBY, .node_id = 2,
                                    .chunk_bytes = 4096, .reserve = r};
        end_t *b = end_with(&cfg, NULL, NULL);
        exchange(a, b, 1, SIZE_MAX, NULL);
        sync_one(src, bl, a, THA_ACK_APPLIED);
        exchange(a, b, 2, SIZE_MAX, NULL);
        CHECK(tha_reserve_bytes(r) == 0);
        tha_heap_t *m = tha_session_take_heap(b->s);
        end_free(b);
        end_free(a);
        CHECK(m && mirrors(src, m));
        if (!m) continue;
        CHECK_OK(tha_heap_set_tracking(m, modes[mi]));
        tha_heap_t *copy = snap_copy(m);
        struct emp *mb, *fresh;
        CHECK_OK(tha_root_get(m, "big", (void **)&mb));
        CHECK_OK(tha_heap_alloc(m, EMP, 20000, (void **)&fresh)); /* past the image */
        CHECK_OK(tha_root_set(m, "fresh", fresh));
        for (int i = 0; i < 3000; i += 7) mb[i].id = 0xabc00000u + (uint32_t)i;
        for (int i = 0; i < 20000; i += 5) fresh[i].id = 0xdef00000u + (uint32_t)i;
        fresh[19999].mgr = &mb[5];
        size_t n, len;
        CHECK_OK(tha_heap_frame_size(m, THA_FRAME_DELTA, &n));
        void *f = malloc(n);
        CHECK_OK(tha_heap_encode(m, THA_FRAME_DELTA, f, n, &len));
        CHECK_OK(tha_heap_apply(copy, f, len));
        free(f);
        struct emp *cb, *cf;
        CHECK_OK(tha_root_get(copy, "big", (void **)&cb));
        CHECK_OK(tha_root_get(copy, "fresh", (void **)&cf));
        CHECK(cb && cf);
        if (cb && cf) {
            int bad = 0;
            for (int i = 0; i < 3000; i++) bad += cb[i].id != mb[i].id;
            for (int i = 0; i < 20000; i++) bad += cf[i].id != fresh[i].id;
            CHECK(bad == 0);
            if (bad) fprintf(stderr, "mode %d (%s): %d records differ\n", modes[mi],
                             tha_heap_tracking_name(m), bad);
            CHECK((uint8_t *)cf[19999].mgr - (uint8_t *)cb == 5 * (long)sizeof *cb);
        }
        CHECK_OK(tha_heap_check(copy));
        CHECK_OK(tha_heap_check(m));
        tha_heap_destroy(copy);
        tha_heap_destroy(m);
        tha_reserve_destroy(r);
        tha_backlog_destroy(bl);
        tha_heap_destroy(src);
    }
}

/* A frame of 1 MiB or more the backlog dropped (max_bytes) while a session
 * was still sending it: the session holds the last reference. The backlog
 * destroyed, the session finishes sending it and releases it; the frame
 * must not go back to the destroyed backlog as its spare. Frames in the
 * hot buffer, settled copies and frames of their own (above 8 MiB). */
static void test_dropped_frame_outlives_backlog(void) {
    for (int huge = 0; huge < 2; huge++) {
        uint32_t n = huge ? 100000 : 15000; /* ~9.6 MiB / ~1.4 MiB frames */
        live_pair_t p;
        pair_start(&p, 32u << 20, n, 1);
        tha_heap_t *src = p.src;
        struct emp *big = p.big;
        tha_backlog_t *bl = p.bl;
        end_t *a = p.a, *b = p.b;
        uint64_t seq;
        size_t len;
        CHECK(state_of(b) == 3);
        /* three big frames, each partly sent before the next is encoded
         * (so the session keeps them): the backlog (1 byte) drops each */
        for (int round = 0; round < 3; round++) {
            for (uint32_t i = 0; i < n; i++) big[i].id = (uint32_t)(round * 1000003 + i);
            CHECK_OK(tha_heap_touch(src, big, 0));
            CHECK_OK(tha_backlog_encode(bl, src, &seq, &len));
            CHECK(len >= (1u << 20));
            CHECK_OK(tha_session_pump(a->s, THA_ACK_APPLIED));
            if (round == 1) CHECK_OK(tha_backlog_settle(bl));
            drain(a);
            CHECK(state_of(a) == 3);
            if (round == 2) break; /* the one before, partly sent, is dropped */
            /* everything queued before, and the new frame's header and a
             * part of it */
            const void *d;
            size_t k, total = 0;
            for (;;) {
                CHECK_OK(tha_session_output(a->s, &d, &k));
                if (!k) break;
                size_t take = k == len ? k / 2 : k; /* the new frame: half */
                tha_session_feed(b->s, d, take, 3);
                CHECK_OK(tha_session_advance(a->s, take));
                drain(b);
                total += take;
                if (take < k) break; /* partly sent: the newest frame */
            }
        }
        tha_backlog_destroy(bl);
        move_some(a, b, 4, SIZE_MAX);
        pair_finish(&p, n - 1, 2u * 1000003 + n - 1);
    }
}

int main(void) {
    RUN(test_backlog_owns_the_series);
    RUN(test_tick_before_start);
    RUN(test_handshake_bulk_deltas);
    RUN(test_every_split);
    RUN(test_bulk_in_place);
    RUN(test_bulk_into_reserve);
    RUN(test_bulk_sync_binds_functions_and_externs);
    RUN(test_backlog_frames_stay_as_encoded);
    RUN(test_partly_sent_frame_does_not_hide_a_lagging_standby);
    RUN(test_send_output_on_a_socket);
    RUN(test_truncated_prefixes);
    RUN(test_garbage);
    RUN(test_wrong_mac);
    RUN(test_unproven_peer);
    RUN(test_nack_reasons);
    RUN(test_big_keyed_frame);
    RUN(test_resume);
    RUN(test_fencing);
    RUN(test_heartbeat_and_timeout);
    RUN(test_own_stall_is_not_peer_silence);
    RUN(test_clock_read_before_the_feed_is_not_silence);
    RUN(test_huge_heartbeat_period_still_times_out);
    RUN(test_dropped_frame_outlives_backlog);
    RUN(test_attack_hot_outlives_backlog);
    RUN(test_attack_hot_random);
    RUN(test_attack_reserve_sizes);
    RUN(test_attack_reserve_corrupt_and_shared);
    RUN(test_attack_reserve_same_address);
    RUN(test_attack_reserve_promoted_tracking);
    tha_heap_destroy(ref_mirror);
    tha_heap_destroy(ref_src);
    tha_backlog_destroy(ref_backlog);
    free(ref_tape.data);
    return CHECK_DONE();
}

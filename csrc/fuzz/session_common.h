/* session_common.h — what the session fuzzer and its corpus generator
 * (gen_session_corpus.c) share:
 * a fixed schema and heap (deterministic lineage), two sessions in memory,
 * the toy MAC, taping what each side sends, and the record format the
 * fuzzer turns into well-formed (checksummed, tagged) messages.
 *
 * Record: [ctl u8][type u8][flags u8][len u16 LE][payload: len bytes]
 *   ctl bit 0: payload is a tha frame: rewrite its length, body CRC and
 *              header CRC so it gets past the checksums to the checks
 *              behind them
 *       bit 1: corrupt the message's payload CRC
 *       bit 2: corrupt its tag (keyed connections)
 *       bits 4-7: advance the clock by that many x 250 ms first (ticks) */
#ifndef THA_FUZZ_SESSION_COMMON_H
#define THA_FUZZ_SESSION_COMMON_H

#include "tha.h"
#include "tha_internal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FZ_MSG_HDR 20u
#define FZ_TAG 32u
#define FZ_HELLO 128u
#define FZ_LINEAGE 0x5eed5eed5eed5eedull
#define FZ_SECRET "fuzz secret"

struct fz_emp {
    char name[16];
    uint32_t id;
    double salary;
    struct fz_emp *mgr;
    struct fz_emp *reports[2];
    void (*hook)(void);
    uint8_t flags;
};
struct fz_dept {
    struct fz_emp head;
    char *notes;
    uint16_t n;
};

static void fz_hook(void) {}

static tha_schema_t *fz_schema(void) {
    tha_schema_t *s;
    uint32_t e, d;
    if (tha_schema_create(&s)) abort();
    THA_STRUCT(s, struct fz_emp, "emp", &e);
    THA_FIELD_SCALAR(s, e, struct fz_emp, name, THA_T_CHAR, 16);
    THA_FIELD_SCALAR(s, e, struct fz_emp, id, THA_T_U32, 0);
    THA_FIELD_SCALAR(s, e, struct fz_emp, salary, THA_T_F64, 0);
    THA_FIELD_PTR(s, e, struct fz_emp, mgr, "emp", 0);
    THA_FIELD_PTR(s, e, struct fz_emp, reports, "emp", 2);
    THA_FIELD_FUNC(s, e, struct fz_emp, hook, 0);
    THA_FIELD_SCALAR(s, e, struct fz_emp, flags, THA_T_U8, 0);
    THA_STRUCT(s, struct fz_dept, "dept", &d);
    THA_FIELD_STRUCT(s, d, struct fz_dept, head, "emp", 0);
    THA_FIELD_PTR(s, d, struct fz_dept, notes, "char", 0);
    THA_FIELD_SCALAR(s, d, struct fz_dept, n, THA_T_U16, 0);
    tha_schema_add_func(s, "fz_hook", fz_hook);
    if (tha_schema_seal(s)) abort();
    return s;
}

/* A small company: a few objects pointing at each other, in one slab (the
 * bulk sync of it, a seed, stays ~90 KB). No function pointer values: a
 * standby's schema comes from the active, unbound (the fuzzer may still
 * write function ids). */
static tha_heap_t *fz_heap(tha_schema_t *s) {
    tha_heap_t *h;
    if (tha_heap_create(&h, s, 1 << 20, THA_TRACK_EXPLICIT)) abort();
    h->lineage = FZ_LINEAGE;
    tha__reg(h)->epochs[0].id = FZ_LINEAGE;
    uint32_t e;
    tha_schema_type_by_name(s, "emp", &e);
    struct fz_emp *es;
    if (tha_heap_alloc(h, e, 4, (void **)&es)) abort();
    for (int i = 0; i < 4; i++) {
        es[i].id = (uint32_t)i;
        es[i].mgr = i ? &es[0] : NULL;
        es[i].reports[i % 2] = &es[(i + 1) % 4];
    }
    tha_heap_touch(h, es, 0);
    tha_root_set(h, "staff", es);
    return h;
}

/* One delta of h into bl (so a bulk sync of h is consistent at its end:
 * nothing changed since the last frame, and the standby goes live at once). */
static void fz_settle(tha_heap_t *h, tha_backlog_t *bl) {
    size_t fsz, flen;
    if (tha_heap_frame_size(h, THA_FRAME_DELTA, &fsz)) abort();
    void *f = malloc(fsz);
    if (tha_heap_encode(h, THA_FRAME_DELTA, f, fsz, &flen) || tha_backlog_push(bl, f, flen))
        abort();
    free(f);
}

/* The toy keyed MAC of csrc/tests/test_session.c: the session only
 * compares MACs, so any keyed function exercises it. */
static void fz_mac(void *ctx, const uint8_t *key, size_t key_len,
                   const tha_mac_part_t *parts, size_t nparts, uint8_t out[THA_MAC_SIZE]) {
    (void)ctx;
    uint32_t c = tha_crc32c(0, key, key_len);
    for (uint32_t i = 0; i < THA_MAC_SIZE / 4; i++) {
        c ^= i;
        for (size_t j = 0; j < nparts; j++) c = tha_crc32c(c, parts[j].data, parts[j].len);
        memcpy(out + 4 * i, &c, 4);
    }
}

typedef struct fz_tape {
    uint8_t *data;
    size_t len, cap;
} fz_tape_t;

static void fz_tape_put(fz_tape_t *t, const void *p, size_t n) {
    if (!t || !n) return;
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2;
        t->data = realloc(t->data, t->cap);
        if (!t->data) abort();
    }
    memcpy(t->data + t->len, p, n);
    t->len += n;
}

static tha_session_t *fz_session(int role, int keyed, tha_heap_t *h, tha_backlog_t *bl) {
    tha_session_config_t cfg = {.role = role, .node_id = (uint64_t)role + 100,
                                .secret = keyed ? FZ_SECRET : NULL,
                                .secret_len = keyed ? strlen(FZ_SECRET) : 0,
                                .mac = keyed ? fz_mac : NULL, .chunk_bytes = 4096};
    tha_session_t *s;
    if (tha_session_create(&s, &cfg, h, bl)) abort();
    return s;
}

/* Drops (or tapes) every event and output byte of s. */
static int fz_verbose = -1; /* FZ_VERBOSE=1: print the target's events */

static void fz_drain_events(tha_session_t *s, int *bulk_done) {
    tha_event_t ev;
    if (fz_verbose < 0) fz_verbose = getenv("FZ_VERBOSE") != NULL;
    while (tha_session_event(s, &ev)) {
        if (bulk_done && ev.type == THA_EV_BULK_DONE) *bulk_done = 1;
        if (fz_verbose && bulk_done)
            fprintf(stderr, "event %d code %d seq %llu: %s\n", ev.type, ev.code,
                    (unsigned long long)ev.seq, ev.msg);
    }
}

/* Moves from's output to to (NULL: dropped); returns bytes moved. */
static size_t fz_move(tha_session_t *from, tha_session_t *to, uint64_t now, fz_tape_t *t) {
    size_t total = 0;
    for (;;) {
        const void *d;
        size_t n;
        if (tha_session_output(from, &d, &n) || !n) break;
        fz_tape_put(t, d, n);
        if (to) tha_session_feed(to, d, n, now);
        tha_session_advance(from, n);
        total += n;
    }
    return total;
}

static void fz_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void fz_put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A keyed direction as a third party that knows the secret and both HELLOs
 * computes it: key = HMAC(S, label || H_s || H_a); ctr = tagged messages so
 * far. */
typedef struct fz_dir {
    int keyed;
    uint8_t key[FZ_TAG];
    uint64_t ctr;
} fz_dir_t;

/* Counts the messages on a tape; the first `untagged` carry no tag. */
static uint64_t fz_count_msgs(const fz_tape_t *t, int keyed, int untagged) {
    size_t pos = 0;
    uint64_t n = 0;
    while (pos + FZ_MSG_HDR <= t->len) {
        uint32_t len;
        memcpy(&len, t->data + pos + 8, 4);
        pos += FZ_MSG_HDR + len + (keyed && (int)n >= untagged ? FZ_TAG : 0);
        n++;
    }
    return n;
}

static void fz_dir_init(fz_dir_t *d, int keyed, const char *label, const fz_tape_t *s2a,
                        const fz_tape_t *a2s, uint64_t ctr) {
    memset(d, 0, sizeof *d);
    d->keyed = keyed;
    d->ctr = ctr;
    if (!keyed || s2a->len < FZ_MSG_HDR + FZ_HELLO || a2s->len < FZ_MSG_HDR + FZ_HELLO)
        return;
    tha_mac_part_t parts[3] = {{label, strlen(label) + 1},
                               {s2a->data + FZ_MSG_HDR, FZ_HELLO},
                               {a2s->data + FZ_MSG_HDR, FZ_HELLO}};
    fz_mac(NULL, (const uint8_t *)FZ_SECRET, strlen(FZ_SECRET), parts, 3, d->key);
}

/* One well-formed message from a record; returns its length in out. */
static size_t fz_message(fz_dir_t *d, uint8_t ctl, uint8_t type, uint8_t flags,
                         const uint8_t *payload, uint32_t len, uint8_t *out) {
    uint8_t *m = out, *p = out + FZ_MSG_HDR;
    memcpy(p, payload, len);
    if ((ctl & 1) && len >= THA_FRAME_HEADER_SIZE) {
        tha__frame_hdr_t fh;
        memcpy(&fh, p, sizeof fh);
        fh.length = len;
        fh.body_crc = tha_crc32c(0, p + sizeof fh, len - sizeof fh);
        fh.header_crc = tha_crc32c(0, &fh, offsetof(tha__frame_hdr_t, header_crc));
        memcpy(p, &fh, sizeof fh);
    }
    uint16_t t16 = type, f16 = flags;
    fz_put32(m, 0x4D414854u);
    memcpy(m + 4, &t16, 2);
    memcpy(m + 6, &f16, 2);
    fz_put32(m + 8, len);
    /* FRAME and SNAP_DATA carry 0: their frames check themselves */
    uint32_t pcrc = (type == 5 || type == 7) ? 0 : tha_crc32c(0, p, len);
    if (ctl & 2) pcrc ^= 1;
    fz_put32(m + 12, pcrc);
    fz_put32(m + 16, tha_crc32c(0, m, 16));
    size_t n = FZ_MSG_HDR + len;
    if (d && d->keyed) {
        uint8_t c[8];
        fz_put64(c, d->ctr++);
        tha_mac_part_t parts[3] = {{c, 8}, {m, FZ_MSG_HDR}, {p, len}};
        fz_mac(NULL, d->key, FZ_TAG, parts, 3, out + n);
        if (ctl & 4) out[n] ^= 1;
        n += FZ_TAG;
    }
    return n;
}

/* Appends one record for a message to a corpus buffer. */
static void fz_record(fz_tape_t *t, uint8_t ctl, uint8_t type, uint8_t flags,
                      const void *payload, uint32_t len) {
    uint8_t h[5] = {ctl, type, flags, (uint8_t)len, (uint8_t)(len >> 8)};
    if (len > 0xffff) return;
    fz_tape_put(t, h, 5);
    fz_tape_put(t, payload, len);
}

/* Records of every message on a tape from message `from` on (tags, if
 * any, dropped: the fuzzer recomputes them). */
__attribute__((unused)) static void fz_tape_records(const fz_tape_t *t, int keyed, int untagged, uint64_t from,
                            fz_tape_t *out) {
    size_t pos = 0;
    uint64_t n = 0;
    while (pos + FZ_MSG_HDR <= t->len) {
        uint32_t len;
        uint16_t type, flags;
        memcpy(&len, t->data + pos + 8, 4);
        memcpy(&type, t->data + pos + 4, 2);
        memcpy(&flags, t->data + pos + 6, 2);
        if (pos + FZ_MSG_HDR + len > t->len) break;
        if (n >= from)
            fz_record(out, 0, (uint8_t)type, (uint8_t)flags, t->data + pos + FZ_MSG_HDR, len);
        pos += FZ_MSG_HDR + len + (keyed && (int)n >= untagged ? FZ_TAG : 0);
        n++;
    }
}

#endif

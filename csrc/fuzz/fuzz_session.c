/* fuzz_session.c — libFuzzer target: the replication session (session.c)
 * fed arbitrary input in either role.
 *
 * data[0] picks the setup (bits 0-2) and the input form (bit 3):
 *   0 standby, from its first byte (handshake), no secret
 *   1 active, from its first byte, no secret
 *   2 standby after a real handshake and bulk sync with an in-memory
 *     active (the input speaks for the active), no secret
 *   3 active after a real handshake and bulk sync (the input speaks for
 *     the standby), no secret
 *   4, 5 as 2, 3 with a shared secret: the harness knows the secret and
 *     both HELLOs, derives the direction's key as the protocol does and
 *     tags every message with the right counter, so inputs reach the
 *     handlers behind the MAC check (ctl bit 2 corrupts a tag)
 *   6, 7 as 0, 1 with a secret (the fuzzer cannot forge the HELLO MACs:
 *     this covers the refusals)
 *   bit 3 set: the rest is raw bytes fed as they are; clear: records
 *     (fuzz_common.h) the harness turns into well-formed messages
 *   bit 4 set: the standby starts with a heap of its own (same schema)
 * Active targets: ctl bit 3 of a record encodes and pumps a delta first.
 *
 * Oracle: no crash, UB or leak (ASan/UBSan); the heap a standby ends with
 * (bulk synced, and whatever the input applied) passes tha_heap_check and
 * then runs alloc, free, roots, delta, leaks, snapshot and check clean; an
 * active's heap is untouched by anything the standby side says. */
#include "session_common.h"

static tha_schema_t *schema;

static void die(const char *what, tha_heap_t *h) {
    fprintf(stderr, "fuzz_session oracle: %s: %s\n", what, h ? tha_heap_errmsg(h) : "");
    abort();
}

static int tolerable(int rc) { return rc == 0 || rc == THA_ECAPACITY || rc == THA_EFULL; }

/* The fixed API sequence on a heap that must be sound. */
static void exercise(tha_heap_t *h) {
    if (tha_heap_check(h)) die("heap check after the session", h);
    uint32_t e;
    if (tha_schema_type_by_name(tha_heap_schema(h), "emp", &e)) die("no emp", NULL);
    struct fz_emp *p = NULL, *q = NULL;
    int rc = tha_heap_alloc(h, e, 2, (void **)&p);
    if (!tolerable(rc)) die("alloc", h);
    rc = tha_heap_alloc(h, e, 1, (void **)&q);
    if (!tolerable(rc)) die("alloc", h);
    if (p && q) {
        p[0].mgr = q;
        p[1].reports[1] = &p[0];
        tha_heap_touch(h, p, 0);
        if (tha_root_set(h, "fz", p) && 0) die("root", h);
        if (tha_heap_free(h, q)) die("free", h);
        p[0].mgr = NULL;
        tha_heap_touch(h, p, 0);
    }
    size_t n, len;
    for (int kind = THA_FRAME_DELTA; kind >= THA_FRAME_SNAPSHOT; kind--) {
        if (tha_heap_frame_size(h, kind, &n)) die("frame size", h);
        void *f = malloc(n);
        if (tha_heap_encode(h, kind, f, n, &len)) die("encode", h);
        free(f);
    }
    size_t nleaks;
    if (tha_leaks(h, NULL, 0, &nleaks)) die("leaks", h);
    if (tha_heap_check(h)) die("heap check after the sequence", h);
}

/* Both ends exchange until neither has anything to say. */
static void converse(tha_session_t *a, tha_session_t *s, uint64_t now, fz_tape_t *a2s,
                     fz_tape_t *s2a) {
    for (int i = 0; i < 10000; i++) {
        size_t moved = fz_move(a, s, now, a2s) + fz_move(s, a, now, s2a);
        fz_drain_events(a, NULL);
        fz_drain_events(s, NULL);
        if (!moved) return;
    }
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!schema) schema = fz_schema();
    const uint8_t sel = data[0];
    const int mode = sel & 7, raw = sel & 8, own = sel & 16;
    const int standby_target = (mode % 2) == 0;
    const int post = mode >= 2 && mode <= 5;
    const int keyed = mode >= 4;
    data++;
    size--;

    tha_heap_t *ah = fz_heap(schema), *own_heap = NULL;
    tha_backlog_t *bl;
    if (tha_backlog_create(&bl, 1 << 20)) abort();
    fz_settle(ah, bl);
    if (own) own_heap = fz_heap(schema);
    tha_session_t *a = NULL, *s = NULL, *target;
    fz_tape_t a2s = {0}, s2a = {0};
    uint64_t now = 1000;
    fz_dir_t dir;
    memset(&dir, 0, sizeof dir);
    if (post || standby_target) s = fz_session(THA_ROLE_STANDBY, keyed, own_heap, NULL);
    if (post || !standby_target) a = fz_session(THA_ROLE_ACTIVE, keyed, ah, bl);
    if (s) tha_session_start(s, now);
    if (a) tha_session_start(a, now);
    if (post) {
        converse(a, s, now, &a2s, &s2a);
        tha_session_status_t st;
        tha_session_status(s, &st);
        if (st.state != 3) {
            fprintf(stderr, "fuzz_session: setup did not reach streaming (%d): %s\n",
                    st.state, tha_session_errmsg(s));
            abort();
        }
        if (standby_target)
            fz_dir_init(&dir, keyed, "tha2 key active to standby", &s2a, &a2s,
                        fz_count_msgs(&a2s, keyed, 1) - 1);
        else
            fz_dir_init(&dir, keyed, "tha2 key standby to active", &s2a, &a2s,
                        fz_count_msgs(&s2a, keyed, 2) - 2);
    }
    target = standby_target ? s : a;
    /* the peer is gone from here on: what it would say, the input says */
    fz_move(target, NULL, now, NULL);
    int bulk_seen = 0;
    uint8_t *msg = malloc(FZ_MSG_HDR + 0xffff + FZ_TAG);
    if (raw) {
        size_t pos = 0;
        while (pos < size) {
            size_t k = 1 + (data[pos] % 64);
            if (k > size - pos) k = size - pos;
            tha_session_feed(target, data + pos, k, now);
            fz_drain_events(target, &bulk_seen);
            fz_move(target, NULL, now, NULL);
            pos += k;
        }
    } else {
        size_t pos = 0;
        while (pos + 5 <= size) {
            uint8_t ctl = data[pos], type = data[pos + 1], flags = data[pos + 2];
            uint32_t len = (uint32_t)data[pos + 3] | (uint32_t)data[pos + 4] << 8;
            pos += 5;
            if (len > size - pos) len = (uint32_t)(size - pos);
            if (ctl >> 4) {
                now += 250u * (ctl >> 4);
                tha_session_tick(target, now);
            }
            if (!standby_target && (ctl & 8)) {
                struct fz_emp *e0;
                tha_root_get(ah, "staff", (void **)&e0);
                e0->salary += 1;
                tha_heap_touch(ah, e0, sizeof *e0);
                size_t fsz, flen;
                if (tha_heap_frame_size(ah, THA_FRAME_DELTA, &fsz)) abort();
                void *f = malloc(fsz);
                if (tha_heap_encode(ah, THA_FRAME_DELTA, f, fsz, &flen)) abort();
                tha_backlog_push(bl, f, flen);
                free(f);
                tha_session_pump(target, THA_ACK_APPLIED);
            }
            size_t n = fz_message(post ? &dir : NULL, ctl, type, flags, data + pos, len, msg);
            tha_session_feed(target, msg, n, now);
            fz_drain_events(target, &bulk_seen);
            fz_move(target, NULL, now, NULL);
            pos += len;
        }
    }
    free(msg);
    tha_heap_t *live = s ? tha_session_take_heap(s) : NULL;
    tha_session_destroy(s);
    tha_session_destroy(a);
    if (live) exercise(live);
    if (tha_heap_check(ah)) die("the active's heap", ah);
    if (live && live != own_heap) tha_heap_destroy(live);
    tha_heap_destroy(own_heap);
    tha_backlog_destroy(bl);
    tha_heap_destroy(ah);
    free(a2s.data);
    free(s2a.data);
    return 0;
}

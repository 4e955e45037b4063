/* session.c — one end of an active<->standby connection, without I/O.
 * Bytes in (feed), bytes out (output/advance), events out, time in (tick).
 * Words: message = 20-byte header + payload; frame = a tha frame carried
 * inside a message; bulk = the streamed image a standby starts from;
 * staging = the heap a standby fills during bulk, made live only once it
 * is consistent; backlog = the active's recent deltas, for resume.
 * Protocol: docs/protocol.md.
 */
#include "codec.h"
#include "heapcheck.h"
#include "replication.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>

#define MSG_MAGIC 0x4D414854u /* "THAM" */
#define MSG_HDR 20u
#define NONCE 16u
#define TAG THA_MAC_SIZE /* after the payload of every keyed message */
#define SECRET_MAX 256u

enum msg_type {
    M_HELLO = 1, M_WELCOME, M_REFUSE, M_SNAP_BEGIN, M_SNAP_DATA, M_SNAP_END,
    M_FRAME, M_ACK, M_HEARTBEAT, M_NACK, M_SCHEMA, M_LAST
};
static const char *const msg_names[M_LAST] = {
    "?", "HELLO", "WELCOME", "REFUSE", "SNAP_BEGIN", "SNAP_DATA", "SNAP_END",
    "FRAME", "ACK", "HEARTBEAT", "NACK", "SCHEMA"};

/* S_HANDSHAKE until the peer proved the secret (active: WELCOME verified;
 * standby: the active's HELLO verified and its SCHEMA received). Rule:
 * nothing a peer says before that changes any state (epoch, fencing,
 * liveness, heap) and it may cost only THA_HANDSHAKE_MAX bytes per
 * message and timeout_ms of time. */
enum state { S_HANDSHAKE, S_BULK, S_CATCHUP, S_STREAMING, S_CLOSED };

/* One piece of pending output: owned bytes, or a backlog frame by ref. A
 * message is one item or several (header, frame by reference, tag). */
typedef struct outitem {
    uint8_t *own;
    const uint8_t *ptr;
    size_t len, off;
    tha__bframe_t *ref;
    uint64_t ctr;   /* first item of a tagged message: its counter + 1 */
    bool cont;      /* continues the message of the item before it */
} outitem_t;

/* HELLO payload, both directions, fixed size (little-endian, packed by
 * hand). epoch_start/epoch_id: the sender's current history entry.
 * base64k: the base of the sender's heap / 64 KiB if it is same-address
 * (tha_heap_create_at), else 0; a standby bulk syncs into a heap there. */
typedef struct hello {
    uint32_t version, role;
    uint64_t node, epoch, lineage, seq, capacity, fingerprint;
    uint8_t nonce[NONCE], mac[THA_MAC_SIZE];
    uint32_t flags, base64k;
    uint64_t epoch_start, epoch_id;
} hello_t;
#define HELLO_MAC_AT (4 + 4 + 6 * 8 + NONCE)
#define HELLO_SIZE (HELLO_MAC_AT + THA_MAC_SIZE + 4 + 4 + 8 + 8)

struct tha_session {
    tha_session_config_t cfg;
    int state;
    int started;              /* tha_session_start was called: the clock is set */
    uint64_t now, last_heard, last_sent;
    uint64_t last_tick;       /* ms: the previous tha_session_tick (0: none) */
    uint64_t deaf_ms;         /* own stalls since last_heard (see tick) */
    int timed_out;
    tha_heap_t *heap;         /* active: the source; standby: live heap or NULL */
    int owns_heap;            /* standby: heap came from bulk, not yet taken */
    tha_heap_t *staging;      /* standby: being filled by bulk sync */
    tha_schema_t *peer_schema;/* standby: the schema the active announced */
    tha_backlog_t *backlog;   /* active */
    uint8_t *in;              /* partial message from the peer */
    size_t in_len, in_cap;
    outitem_t *out;           /* FIFO of pending output */
    size_t out_head, out_n, out_cap;
    int out_lent;             /* the head item was handed to the driver by
                                 tha_session_output: it may be in a send now */
    tha_event_t *ev;          /* FIFO of events for the driver */
    size_t ev_head, ev_n, ev_cap;
    uint8_t nonce[NONCE];
    /* the handshake transcript: the standby's HELLO, then the active's
     * (with its MAC); every MAC of the handshake covers both */
    uint8_t hello_s[HELLO_SIZE], hello_a[HELLO_SIZE];
    hello_t peer;             /* the peer's HELLO */
    uint8_t secret[SECRET_MAX];
    size_t secret_len;        /* 0: no authentication */
    int proven;               /* the peer proved the secret (or none is set):
                                 what it says may now be acted on */
    int keyed;                /* messages carry a TAG both ways from here on */
    uint8_t key_tx[TAG], key_rx[TAG]; /* per-direction session keys */
    uint64_t ctr_tx, ctr_rx;  /* messages tagged / verified under them */
    uint64_t started_at;      /* ms: the handshake deadline counts from here */
    /* active */
    int ack_level;            /* level requested for queued frames */
    uint64_t next_seq;        /* next backlog frame to queue */
    int bulk_phase;           /* 0 none, 1 SNAP_BEGIN next, 2 data, 3 SNAP_END */
    uint64_t bulk_block, bulk_seq;
    uint64_t acked[4];
    /* standby */
    uint64_t consistent_at;   /* staging goes live at this seq */
    uint64_t got_seq;         /* last seq applied (or gone live at) in this
                                 session: the highest it may ack */
    uint64_t persisted;       /* last seq acked THA_ACK_PERSISTED */
    uint64_t log_synced_at;   /* when tick last synced the log (ms) */
    uint64_t bulk_done, bulk_total;
    /* standby, unkeyed bulk sync: a SNAP_DATA segment whose head (message
     * header, frame header, run, mask) is in `in` has its data received
     * straight into the staging heap where the run says (see direct_head) */
    uint8_t *direct;          /* where its data goes next; NULL: not direct */
    uint64_t direct_left, direct_len;
    tha__frame_hdr_t direct_hd;
    uint64_t bytes_in, bytes_out;
    char err[256];
};

#define SFAIL(s, code, ...) tha__fail((s)->err, sizeof (s)->err, (code), __VA_ARGS__)

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- events ----------------------------------------------------------- */

static tha_event_t *push_event(tha_session_t *s, int type, int code, uint64_t seq,
                               uint64_t a, uint64_t b) {
    if (s->ev_n == s->ev_cap) {
        size_t cap = s->ev_cap ? s->ev_cap * 2 : 16;
        tha_event_t *ev = malloc(cap * sizeof *ev);
        if (!ev) return NULL;
        for (size_t i = 0; i < s->ev_n; i++) ev[i] = s->ev[(s->ev_head + i) % s->ev_cap];
        free(s->ev);
        s->ev = ev;
        s->ev_head = 0;
        s->ev_cap = cap;
    }
    tha_event_t *e = &s->ev[(s->ev_head + s->ev_n++) % s->ev_cap];
    memset(e, 0, sizeof *e);
    e->type = type;
    e->code = code;
    e->seq = seq;
    e->epoch = s->heap ? s->heap->epoch : 0;
    e->a = a;
    e->b = b;
    return e;
}

int tha_session_event(tha_session_t *s, tha_event_t *ev) {
    if (!s->ev_n) return 0;
    *ev = s->ev[s->ev_head];
    s->ev_head = (s->ev_head + 1) % s->ev_cap;
    s->ev_n--;
    return 1;
}

/* The session is over: an ERROR (or REFUSED/FENCED) event says why. */
static int close_with(tha_session_t *s, int type, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int close_with(tha_session_t *s, int type, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    tha_event_t *e = push_event(s, type, code, 0, 0, 0);
    if (e) snprintf(e->msg, sizeof e->msg, "%s", s->err);
    s->state = S_CLOSED;
    return code;
}

/* ---- output ----------------------------------------------------------- */

static int out_push(tha_session_t *s, uint8_t *own, const uint8_t *ptr, size_t len,
                    tha__bframe_t *ref, uint64_t ctr, bool cont) {
    if (s->out_n == s->out_cap) {
        size_t cap = s->out_cap ? s->out_cap * 2 : 16;
        outitem_t *o = malloc(cap * sizeof *o);
        if (!o) return THA_ENOMEM;
        for (size_t i = 0; i < s->out_n; i++) o[i] = s->out[(s->out_head + i) % s->out_cap];
        free(s->out);
        s->out = o;
        s->out_head = 0;
        s->out_cap = cap;
    }
    s->out[(s->out_head + s->out_n++) % s->out_cap] =
        (outitem_t){.own = own, .ptr = ptr, .len = len, .ref = ref, .ctr = ctr,
                    .cont = cont};
    s->last_sent = s->now;
    return 0;
}

/* FRAME and SNAP_DATA payloads are tha frames with their own checksums,
 * verified whole before anything is applied: no second pass over them. */
static bool self_checked(int type) { return type == M_FRAME || type == M_SNAP_DATA; }

static void fill_header(uint8_t *h, int type, int flags, const uint8_t *payload,
                        size_t len) {
    put32(h, MSG_MAGIC);
    uint16_t t = (uint16_t)type, f = (uint16_t)flags;
    memcpy(h + 4, &t, 2);
    memcpy(h + 6, &f, 2);
    put32(h + 8, (uint32_t)len);
    put32(h + 12, self_checked(type) ? 0 : tha_crc32c(0, payload, len));
    put32(h + 16, tha_crc32c(0, h, 16));
}

/* Payloads above TAG_CHUNK are MAC'd in chunks, then the chunks' MACs
 * are: each chunk's MAC covers the message counter and its index, the tag
 * covers counter, header (so the length) and every chunk MAC in order, so
 * nothing can be moved, dropped or swapped; and the chunks can be done on
 * two threads (a 100 MB frame's HMAC is ~75 ms on one core). */
#define TAG_CHUNK (1u << 20)

typedef struct chunk_job {
    const tha_session_t *s;
    const uint8_t *key, *payload;
    uint64_t ctr;
    size_t len, first, last; /* chunks [first, last) */
    uint8_t *macs;
} chunk_job_t;

static void *chunk_macs(void *arg) {
    chunk_job_t *j = arg;
    for (size_t i = j->first; i < j->last; i++) {
        uint8_t head[8 + 8 + 6];
        put64(head, j->ctr);
        put64(head + 8, i);
        memcpy(head + 16, "chunk", 6);
        size_t off = i * (size_t)TAG_CHUNK;
        size_t n = j->len - off < TAG_CHUNK ? j->len - off : TAG_CHUNK;
        tha_mac_part_t parts[2] = {{head, sizeof head}, {j->payload + off, n}};
        j->s->cfg.mac(j->s->cfg.mac_ctx, j->key, TAG, parts, 2, j->macs + i * TAG);
    }
    return NULL;
}

/* The MAC of one keyed message under its direction's session key. It
 * covers the direction's message counter, so a message dropped, replayed
 * or moved by anyone on the path fails too. All zeros (which no check
 * accepts) if memory runs out. */
static void msg_tag(const tha_session_t *s, const uint8_t key[TAG], uint64_t ctr,
                    const uint8_t *hdr, const uint8_t *payload, size_t len,
                    uint8_t out[TAG]) {
    uint8_t c[8];
    put64(c, ctr);
    if (len <= TAG_CHUNK) {
        tha_mac_part_t parts[3] = {{c, 8}, {hdr, MSG_HDR}, {payload, len}};
        s->cfg.mac(s->cfg.mac_ctx, key, TAG, parts, 3, out);
        return;
    }
    size_t n = (len + TAG_CHUNK - 1) / TAG_CHUNK;
    uint8_t *macs = malloc(n * TAG);
    if (!macs) {
        memset(out, 0, TAG);
        return;
    }
    chunk_job_t a = {.s = s, .key = key, .payload = payload, .ctr = ctr, .len = len,
                     .first = 0, .last = n, .macs = macs}, b = a;
    pthread_t t;
    if (tha__threads() > 1 && n >= 4) {
        a.last = b.first = n / 2;
        if (pthread_create(&t, NULL, chunk_macs, &b) == 0) {
            chunk_macs(&a);
            pthread_join(t, NULL);
        } else {
            chunk_macs(&a);
            chunk_macs(&b);
        }
    } else {
        chunk_macs(&a);
    }
    tha_mac_part_t parts[3] = {{c, 8}, {hdr, MSG_HDR}, {macs, n * TAG}};
    s->cfg.mac(s->cfg.mac_ctx, key, TAG, parts, 3, out);
    free(macs);
}

/* Bytes of a whole message with a payload of len on this session. */
static uint64_t msg_total(const tha_session_t *s, uint64_t len) {
    return MSG_HDR + len + (s->keyed ? TAG : 0);
}

/* Queues a message whose payload is copied. */
static int send_msg(tha_session_t *s, int type, int flags, const void *payload,
                    size_t len) {
    size_t tl = s->keyed ? TAG : 0;
    uint8_t *m = malloc(MSG_HDR + len + tl);
    if (!m) return THA_ENOMEM;
    if (len) memcpy(m + MSG_HDR, payload, len);
    fill_header(m, type, flags, m + MSG_HDR, len);
    uint64_t ctr = 0;
    if (tl) {
        ctr = ++s->ctr_tx;
        msg_tag(s, s->key_tx, ctr - 1, m, m + MSG_HDR, len, m + MSG_HDR + len);
    }
    int rc = out_push(s, m, m, MSG_HDR + len + tl, NULL, ctr, false);
    if (rc) {
        free(m);
        if (tl) s->ctr_tx--;
    }
    return rc;
}

/* Queues a backlog frame: a header we own, then the frame by reference,
 * then its tag. A small frame is copied behind its header instead: one
 * output item, so the driver sends the message in one call (one TCP
 * segment). */
#define FRAME_COPY_MAX (64u << 10)
static int send_frame_ref(tha_session_t *s, tha__bframe_t *f, int ack) {
    if (f->len <= FRAME_COPY_MAX) {
        int rc = send_msg(s, M_FRAME, ack, f->data, f->len);
        tha__bframe_release(f);
        return rc;
    }
    size_t tl = s->keyed ? TAG : 0;
    uint8_t *h = malloc(MSG_HDR + tl);
    if (!h) {
        tha__bframe_release(f);
        return THA_ENOMEM;
    }
    fill_header(h, M_FRAME, ack, f->data, f->len);
    uint64_t ctr = 0;
    if (tl) {
        ctr = ++s->ctr_tx;
        msg_tag(s, s->key_tx, ctr - 1, h, f->data, f->len, h + MSG_HDR);
    }
    /* all three items or none: the queue never holds part of a message */
    size_t n0 = s->out_n;
    /* h holds header and tag: the last item of the message owns it */
    int rc = out_push(s, tl ? NULL : h, h, MSG_HDR, NULL, ctr, false);
    if (!rc) rc = out_push(s, NULL, f->data, f->len, f, 0, true);
    if (!rc && tl) rc = out_push(s, h, h + MSG_HDR, TAG, NULL, 0, true);
    if (rc) {
        s->out_n = n0; /* the one reference is released once, below */
        free(h);
        tha__bframe_release(f);
        if (tl) s->ctr_tx--;
    }
    return rc;
}

static void out_free(outitem_t *o) {
    free(o->own);
    tha__bframe_release(o->ref);
}

/* Drops the queued output that has not begun to go out (a bulk sync
 * replaces it). The message at the head stays whole if any of it was
 * handed to the driver (its bytes may be in a send right now); the tag
 * counter restarts at the first message dropped, so what follows is
 * still in sequence for the peer. */
static void out_drop_unsent(tha_session_t *s) {
    size_t keep = 0;
    if (s->out_n) {
        const outitem_t *h = &s->out[s->out_head];
        if (s->out_lent || h->off || h->cont) {
            keep = 1;
            while (keep < s->out_n && s->out[(s->out_head + keep) % s->out_cap].cont) keep++;
        }
    }
    bool reset = false;
    for (size_t i = keep; i < s->out_n; i++) {
        outitem_t *o = &s->out[(s->out_head + i) % s->out_cap];
        if (o->ctr && !reset) {
            s->ctr_tx = o->ctr - 1;
            reset = true;
        }
        out_free(o);
    }
    s->out_n = keep;
}

/* ---- lifecycle -------------------------------------------------------- */

int tha_session_create(tha_session_t **out, const tha_session_config_t *cfg,
                       tha_heap_t *heap, tha_backlog_t *backlog) {
    if (!out || !cfg || (cfg->role != THA_ROLE_ACTIVE && cfg->role != THA_ROLE_STANDBY))
        return THA_EINVAL;
    if (cfg->role == THA_ROLE_ACTIVE && (!heap || !backlog)) return THA_EINVAL;
    if (cfg->secret_len > SECRET_MAX || (cfg->secret_len && (!cfg->secret || !cfg->mac)))
        return THA_EINVAL;
    tha_session_t *s = calloc(1, sizeof *s);
    if (!s) return THA_ENOMEM;
    s->cfg = *cfg;
    if (!s->cfg.heartbeat_ms) s->cfg.heartbeat_ms = 200;
    if (!s->cfg.timeout_ms) s->cfg.timeout_ms = 2000;
    if (!s->cfg.chunk_bytes) s->cfg.chunk_bytes = 1u << 20;
    if (s->cfg.chunk_bytes < THA__BLOCK * 16) s->cfg.chunk_bytes = THA__BLOCK * 16;
    if (!s->cfg.max_message || s->cfg.max_message > 0xffffffffu)
        s->cfg.max_message = 0xffffffffu;
    s->heap = heap;
    s->backlog = backlog;
    s->ack_level = THA_ACK_APPLIED;
    s->secret_len = cfg->secret_len;
    if (cfg->secret_len) memcpy(s->secret, cfg->secret, cfg->secret_len);
    s->cfg.secret = NULL; /* the copy above is the one used */
    if (getrandom(s->nonce, NONCE, 0) != (ssize_t)NONCE) {
        free(s);
        return THA_EINVAL;
    }
    *out = s;
    return 0;
}

void tha_session_destroy(tha_session_t *s) {
    if (!s) return;
    for (size_t i = 0; i < s->out_n; i++) out_free(&s->out[(s->out_head + i) % s->out_cap]);
    free(s->out);
    free(s->in);
    free(s->ev);
    tha_heap_destroy(s->staging);
    if (s->owns_heap) tha_heap_destroy(s->heap);
    tha_schema_release(s->peer_schema);
    memset(s->secret, 0, sizeof s->secret);
    memset(s->key_tx, 0, TAG);
    memset(s->key_rx, 0, TAG);
    free(s);
}

const char *tha_session_errmsg(const tha_session_t *s) { return s->err; }

tha_heap_t *tha_session_take_heap(tha_session_t *s) {
    s->owns_heap = 0;
    return s->heap;
}

/* ---- handshake -------------------------------------------------------- */

static void hello_pack(const tha_session_t *s, uint8_t *p) {
    const tha_heap_t *h = s->heap;
    const tha__region_t *r = h ? tha__reg(h) : NULL;
    const tha__epoch_t *e = r && r->nepochs && r->nepochs <= THA__MAX_EPOCHS
                                ? &r->epochs[r->nepochs - 1] : NULL;
    put32(p, THA_PROTOCOL_VERSION);
    put32(p + 4, (uint32_t)s->cfg.role);
    put64(p + 8, s->cfg.node_id);
    put64(p + 16, h ? h->epoch : 0);
    put64(p + 24, h ? h->lineage : 0);
    put64(p + 32, h ? h->seq : 0);
    put64(p + 40, r ? r->capacity : 0);
    put64(p + 48, h ? tha_schema_fingerprint(h->schema) : 0);
    memcpy(p + 56, s->nonce, NONCE);
    memset(p + HELLO_MAC_AT, 0, THA_MAC_SIZE);
    size_t q = HELLO_MAC_AT + THA_MAC_SIZE;
    put32(p + q, h ? 1u : 0u);
    put32(p + q + 4, h ? (uint32_t)(h->addr >> 16) : 0u);
    put64(p + q + 8, e ? e->start : 0);
    put64(p + q + 16, e ? e->id : 0);
}

static int hello_parse(const uint8_t *p, size_t len, hello_t *o) {
    if (len != HELLO_SIZE) return THA_EPROTO;
    o->version = get32(p);
    o->role = get32(p + 4);
    o->node = get64(p + 8);
    o->epoch = get64(p + 16);
    o->lineage = get64(p + 24);
    o->seq = get64(p + 32);
    o->capacity = get64(p + 40);
    o->fingerprint = get64(p + 48);
    memcpy(o->nonce, p + 56, NONCE);
    memcpy(o->mac, p + HELLO_MAC_AT, THA_MAC_SIZE);
    size_t q = HELLO_MAC_AT + THA_MAC_SIZE;
    o->flags = get32(p + q);
    o->base64k = get32(p + q + 4);
    o->epoch_start = get64(p + q + 8);
    o->epoch_id = get64(p + q + 16);
    return 0;
}

/* HMAC(secret, label || standby's HELLO || active's HELLO): binds a MAC
 * to both nonces, both roles and everything both ends said, so it is good
 * for this one connection only (a relayed or replayed handshake fails). */
static void transcript_mac(const tha_session_t *s, const char *label,
                           const uint8_t *hello_a, uint8_t out[THA_MAC_SIZE]) {
    tha_mac_part_t parts[3] = {{label, strlen(label) + 1}, {s->hello_s, HELLO_SIZE},
                               {hello_a, HELLO_SIZE}};
    s->cfg.mac(s->cfg.mac_ctx, s->secret, s->secret_len, parts, 3, out);
}

/* Text a peer sent (REFUSE, NACK reasons), made safe to log: control and
 * non-ASCII bytes become '?', so no peer can forge log lines. */
static void peer_text(char *dst, size_t cap, const uint8_t *src, size_t len) {
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? (char)src[i] : '?';
    dst[n] = 0;
}

static bool mac_equal(const uint8_t *a, const uint8_t *b) {
    uint8_t d = 0;
    for (unsigned i = 0; i < THA_MAC_SIZE; i++) d |= a[i] ^ b[i];
    return d == 0;
}

/* Once both HELLOs are known and the peer proved the secret: one session
 * key per direction, derived from the secret and the transcript; every
 * later message carries a tag under it. */
static void derive_keys(tha_session_t *s) {
    if (!s->secret_len) return;
    uint8_t a2s[TAG], s2a[TAG];
    transcript_mac(s, "tha2 key active to standby", s->hello_a, a2s);
    transcript_mac(s, "tha2 key standby to active", s->hello_a, s2a);
    bool active = s->cfg.role == THA_ROLE_ACTIVE;
    memcpy(s->key_tx, active ? a2s : s2a, TAG);
    memcpy(s->key_rx, active ? s2a : a2s, TAG);
    memset(a2s, 0, TAG);
    memset(s2a, 0, TAG);
    s->ctr_tx = s->ctr_rx = 0;
    s->keyed = 1;
}

int tha_session_start(tha_session_t *s, uint64_t now_ms) {
    if (s->started) return THA_ESTATE;
    s->started = 1;
    s->now = s->last_heard = s->last_sent = s->started_at = now_ms;
    if (s->cfg.role == THA_ROLE_ACTIVE) return 0; /* the standby speaks first */
    hello_pack(s, s->hello_s);
    return send_msg(s, M_HELLO, 0, s->hello_s, HELLO_SIZE);
}

static int refuse(tha_session_t *s, int code, uint64_t epoch, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int refuse(tha_session_t *s, int code, uint64_t epoch, const char *fmt, ...) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    uint8_t p[16 + sizeof msg];
    size_t ml = strlen(msg);
    put32(p, (uint32_t)code);
    put64(p + 4, epoch);
    put32(p + 12, (uint32_t)ml);
    memcpy(p + 16, msg, ml);
    send_msg(s, M_REFUSE, 0, p, 16 + ml);
    return close_with(s, THA_EV_ERROR, code, "refused the peer: %s", msg);
}

/* Standby: the active answered our HELLO. Nothing it says counts until
 * its MAC over both HELLOs checks out. */
static int on_active_hello(tha_session_t *s, const uint8_t *p, size_t len) {
    hello_t *a = &s->peer;
    if (hello_parse(p, len, a) || a->role != THA_ROLE_ACTIVE)
        return refuse(s, THA_EPROTO, 0, "malformed HELLO from the active");
    if (a->version != THA_PROTOCOL_VERSION)
        return refuse(s, THA_EVERSION, 0, "protocol version %u; this standby speaks %d",
                      a->version, THA_PROTOCOL_VERSION);
    memcpy(s->hello_a, p, HELLO_SIZE);
    uint8_t w[THA_MAC_SIZE] = {0};
    if (s->secret_len) {
        uint8_t zeroed[HELLO_SIZE], want[THA_MAC_SIZE];
        memcpy(zeroed, p, HELLO_SIZE);
        memset(zeroed + HELLO_MAC_AT, 0, THA_MAC_SIZE);
        transcript_mac(s, "tha2 active hello", zeroed, want);
        if (!mac_equal(want, a->mac))
            return refuse(s, THA_EAUTH, 0, "authentication failed: the active does "
                          "not know the shared secret");
        transcript_mac(s, "tha2 standby welcome", s->hello_a, w);
    } else if (!mac_equal(w, a->mac)) {
        return refuse(s, THA_EAUTH, 0, "authentication failed: the active uses a "
                      "shared secret and this standby has none");
    }
    /* the active proved itself: WELCOME proves us, then keyed messages */
    int rc = send_msg(s, M_WELCOME, 0, w, sizeof w);
    if (rc) return rc;
    derive_keys(s);
    s->proven = 1;
    uint64_t mine = s->heap ? s->heap->epoch : 0;
    if (mine < s->cfg.min_epoch) mine = s->cfg.min_epoch; /* a coordinator's leader */
    if (a->epoch < mine)
        return refuse(s, THA_EFENCED, mine, "fenced: the active is at epoch %llu, "
                      "this node is at epoch %llu", (unsigned long long)a->epoch,
                      (unsigned long long)mine);
    return 0; /* its SCHEMA comes next */
}

/* Standby: the active's schema, its first keyed message. */
static int on_schema(tha_session_t *s, const uint8_t *p, size_t len) {
    const hello_t *a = &s->peer;
    tha_schema_t *theirs = NULL;
    char why[200];
    /* a type larger than the active's heap is refused before it costs */
    int rc = tha__schema_deserialize(p, len, a->capacity, &theirs, why, sizeof why);
    if (rc) return refuse(s, THA_EPROTO, 0, "unreadable schema from the active: %s", why);
    if (tha_schema_fingerprint(theirs) != a->fingerprint) {
        tha_schema_release(theirs);
        return refuse(s, THA_EPROTO, 0, "the active's schema does not match the "
                      "fingerprint in its HELLO");
    }
    if (s->heap && a->fingerprint != tha_schema_fingerprint(s->heap->schema)) {
        tha_schema_compare(theirs, s->heap->schema, why, sizeof why);
        tha_schema_release(theirs);
        return refuse(s, THA_EMISMATCH, 0, "schema mismatch (active vs standby): %s", why);
    }
    /* Function pointers and extern words resolve to this process's
     * addresses, in the schema a bulk sync's heap is made of (this one):
     * bound here from the driver's bindings, then from the live heap's
     * over them (a heap there lends what the bindings leave out, and an
     * image taken in place by that heap, same-address, holds the words its
     * own schema resolves). A name left unbound costs nothing until a word
     * needs it; then the segment is refused for good (bad_segment):
     * resending it would not help. */
    if ((s->cfg.bindings && tha_schema_bind_from(theirs, s->cfg.bindings)) ||
        (s->heap && tha_schema_bind_from(theirs, s->heap->schema))) {
        snprintf(why, sizeof why, "%s", tha_schema_errmsg(theirs));
        tha_schema_release(theirs);
        return refuse(s, THA_EMISMATCH, 0, "the active's schema cannot be bound here: %s",
                      why);
    }
    tha_schema_release(s->peer_schema);
    s->peer_schema = theirs;
    s->state = S_STREAMING; /* until the active starts a bulk sync */
    tha_event_t *e = push_event(s, THA_EV_READY, 0, a->seq, s->heap ? s->heap->seq : 0, 0);
    if (e) e->epoch = a->epoch;
    return 0;
}

/* Active: the standby introduced itself; answer with our HELLO, whose MAC
 * covers both HELLOs. Nothing in the standby's counts before WELCOME. */
static int on_standby_hello(tha_session_t *s, const uint8_t *p, size_t len) {
    hello_t *b = &s->peer;
    if (hello_parse(p, len, b) || b->role != THA_ROLE_STANDBY)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed HELLO from the standby");
    if (b->version != THA_PROTOCOL_VERSION)
        return close_with(s, THA_EV_ERROR, THA_EVERSION, "standby speaks protocol "
                          "version %u; this node speaks %d", b->version,
                          THA_PROTOCOL_VERSION);
    memcpy(s->hello_s, p, HELLO_SIZE);
    hello_pack(s, s->hello_a);
    if (s->secret_len) {
        uint8_t mac[THA_MAC_SIZE];
        transcript_mac(s, "tha2 active hello", s->hello_a, mac);
        memcpy(s->hello_a + HELLO_MAC_AT, mac, THA_MAC_SIZE);
    }
    return send_msg(s, M_HELLO, 0, s->hello_a, HELLO_SIZE);
}
/* Starts a bulk sync; replaces: drops the frames queued so far (the image
 * carries their content), unless the caller keeps its queue (the schema
 * queued by the handshake). */
static int start_bulk(tha_session_t *s, bool drop_queued) {
    if (drop_queued) out_drop_unsent(s);
    s->state = S_BULK;
    s->bulk_phase = 1;
    s->bulk_block = 0;
    s->bulk_seq = s->heap->seq;
    s->next_seq = s->heap->seq + 1;
    return 0;
}

/* Rule: a node may resume only if its (epoch, epoch id, seq) lies on this
 * heap's epoch history (as PostgreSQL timelines): its epoch is one of ours,
 * begun by the same node at the same seq, and its seq is not past the
 * point where our history left that epoch. Anything else may hold writes
 * this heap never had: bulk sync. */
static bool on_history(const tha_heap_t *h, const hello_t *b) {
    const tha__region_t *r = tha__reg(h);
    uint64_t n = r->nepochs <= THA__MAX_EPOCHS ? r->nepochs : 0;
    for (uint64_t i = 0; i < n; i++) {
        const tha__epoch_t *e = &r->epochs[i];
        if (e->epoch != b->epoch || e->id != b->epoch_id || e->start != b->epoch_start)
            continue;
        uint64_t end = i + 1 < n ? r->epochs[i + 1].start : h->seq;
        return b->seq >= e->start && b->seq <= end && end <= h->seq;
    }
    return false;
}

/* Active: the standby proved itself; resume from the backlog or bulk. */
static int on_welcome(tha_session_t *s, const uint8_t *p, size_t len) {
    if (len != THA_MAC_SIZE)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed WELCOME");
    uint8_t want[THA_MAC_SIZE] = {0};
    if (s->secret_len) transcript_mac(s, "tha2 standby welcome", s->hello_a, want);
    if (!mac_equal(want, p))
        return refuse(s, THA_EAUTH, 0, "authentication failed: the standby %s",
                      s->secret_len ? "does not know the shared secret"
                                    : "uses a shared secret and this active has none");
    derive_keys(s);
    s->proven = 1;
    /* from here on what the standby said in its HELLO is authenticated */
    const hello_t *b = &s->peer;
    tha_heap_t *h = s->heap;
    if (b->epoch > h->epoch) {
        close_with(s, THA_EV_FENCED, THA_EFENCED, "fenced: the standby knows epoch "
                   "%llu, this active is at epoch %llu", (unsigned long long)b->epoch,
                   (unsigned long long)h->epoch);
        s->ev[(s->ev_head + s->ev_n - 1) % s->ev_cap].epoch = b->epoch;
        return THA_EFENCED;
    }
    size_t slen;
    int rc = tha_schema_serialize(h->schema, NULL, 0, &slen);
    uint8_t *sch = rc ? NULL : malloc(slen ? slen : 1);
    if (!rc && !sch) rc = THA_ENOMEM;
    if (!rc) rc = tha_schema_serialize(h->schema, sch, slen, &slen);
    if (!rc) rc = send_msg(s, M_SCHEMA, 0, sch, slen);
    free(sch);
    if (rc) return close_with(s, THA_EV_ERROR, rc, "cannot send the schema: %s",
                              tha_strerror(rc));
    uint64_t first = 0, last = 0, bytes;
    tha_backlog_range(s->backlog, &first, &last, &bytes);
    bool same_history = (b->flags & 1) && b->lineage == h->lineage && on_history(h, b);
    bool have = b->seq == h->seq || (last && first <= b->seq + 1 && b->seq + 1 <= last);
    tha_event_t *e = push_event(s, THA_EV_READY, 0, b->seq, b->seq, same_history && have);
    if (e) e->epoch = b->epoch;
    if (same_history && have) {
        /* it told us (authenticated by WELCOME) what it has applied */
        for (int l = THA_ACK_RECEIVED; l <= THA_ACK_APPLIED; l++)
            if (b->seq > s->acked[l]) s->acked[l] = b->seq;
        s->state = S_STREAMING;
        s->next_seq = b->seq + 1;
        return tha_session_pump(s, s->ack_level);
    }
    return start_bulk(s, false);
}

/* ---- bulk sync: active ------------------------------------------------ */

/* Produces the next bulk message when the output queue runs dry. */
static int bulk_step(tha_session_t *s) {
    tha_heap_t *h = s->heap;
    const tha__region_t *r = tha__reg(h);
    if (s->bulk_phase == 1) {
        size_t slen;
        tha_schema_serialize(h->schema, NULL, 0, &slen);
        uint8_t *p = malloc(44 + slen);
        if (!p) return THA_ENOMEM;
        put64(p, s->bulk_seq);
        put64(p + 8, h->epoch);
        put64(p + 16, h->lineage);
        put64(p + 24, r->capacity);
        put64(p + 32, r->top);
        put32(p + 40, (uint32_t)slen);
        tha_schema_serialize(h->schema, p + 44, slen, &slen);
        int rc = send_msg(s, M_SNAP_BEGIN, 0, p, 44 + slen);
        free(p);
        s->bulk_phase = 2;
        return rc;
    }
    uint64_t top_blocks = r->top / THA__BLOCK;
    if (s->bulk_phase == 2 && s->bulk_block < top_blocks) {
        uint64_t max_blocks = s->cfg.chunk_bytes / THA__BLOCK;
        size_t need = tha__segment_size(h, s->bulk_block, max_blocks), len;
        size_t tl = s->keyed ? TAG : 0;
        /* the codec writes 8-byte words: the payload must be 8-aligned, so
         * the 20-byte header starts PAD bytes into the buffer */
        enum { PAD = 4 };
        uint8_t *buf = malloc(PAD + MSG_HDR + need + tl), *m = buf + PAD;
        if (!buf) return THA_ENOMEM;
        int rc = tha__encode_segment(h, &s->bulk_block, max_blocks, m + MSG_HDR, need, &len);
        if (rc) {
            free(buf);
            return close_with(s, THA_EV_ERROR, rc, "bulk sync: %s", tha_heap_errmsg(h));
        }
        fill_header(m, M_SNAP_DATA, 0, m + MSG_HDR, len);
        uint64_t ctr = 0;
        if (tl) {
            ctr = ++s->ctr_tx;
            msg_tag(s, s->key_tx, ctr - 1, m, m + MSG_HDR, len, m + MSG_HDR + len);
        }
        rc = out_push(s, buf, m, MSG_HDR + len + tl, NULL, ctr, false);
        if (rc) {
            free(buf);
            if (tl) s->ctr_tx--;
            return rc;
        }
        push_event(s, THA_EV_BULK_PROGRESS, 0, s->bulk_seq, s->bulk_block * THA__BLOCK,
                   r->top);
        return 0;
    }
    /* SNAP_END: the standby is consistent after the first frame encoded
     * after this point, or right away if nothing changed since bulk_seq. */
    uint64_t last = h->seq;
    tha__track_collect(h); /* diff mode: dirty bits are only known after this */
    uint64_t consistent = tha__count_dirty(h) == 0 ? last : last + 1;
    uint8_t p[32];
    put64(p, s->bulk_seq);
    put64(p + 8, last);
    put64(p + 16, consistent);
    put64(p + 24, s->bulk_block);
    int rc = send_msg(s, M_SNAP_END, 0, p, sizeof p);
    s->bulk_phase = 0;
    s->state = S_STREAMING;
    push_event(s, THA_EV_BULK_DONE, 0, s->bulk_seq, r->top, r->top);
    if (!rc) rc = tha_session_pump(s, s->ack_level);
    return rc;
}

int tha_session_pump(tha_session_t *s, int ack) {
    if (s->cfg.role != THA_ROLE_ACTIVE || ack < 0 || ack > THA_ACK_PERSISTED)
        return THA_EINVAL;
    s->ack_level = ack;
    if (s->state != S_STREAMING) return s->state == S_CLOSED ? THA_ECLOSED : 0;
    uint64_t first, last, bytes;
    tha_backlog_range(s->backlog, &first, &last, &bytes);
    while (last && s->next_seq <= last) {
        tha__bframe_t *f = tha__backlog_get(s->backlog, s->next_seq);
        if (!f) { /* fell out of the backlog before we sent it */
            tha_event_t *e = push_event(s, THA_EV_ERROR, THA_ESEQ, s->next_seq, 0, 0);
            if (e) snprintf(e->msg, sizeof e->msg, "standby fell behind the backlog "
                            "(needs seq %llu, backlog starts at %llu): bulk sync",
                            (unsigned long long)s->next_seq, (unsigned long long)first);
            return start_bulk(s, true);
        }
        int rc = send_frame_ref(s, f, ack);
        if (rc) return rc;
        s->next_seq++;
    }
    /* A standby that cannot keep up is dropped, not waited for: once the
     * backlog has let go of a frame this session has not even started to
     * send, the standby lags further than the bound allows. */
    for (size_t i = 0; i < s->out_n; i++) {
        const outitem_t *o = &s->out[(s->out_head + i) % s->out_cap];
        /* the oldest frame not begun: one partly sent (a non-blocking
         * send took what fit) goes out whole and proves nothing */
        if (!o->ref || o->off) continue;
        tha_backlog_range(s->backlog, &first, &last, &bytes);
        if (o->off == 0 && o->ref->seq < first)
            return close_with(s, THA_EV_ERROR, THA_EFULL, "standby too slow: frame "
                              "%llu is still unsent and the backlog (bound %llu "
                              "bytes) starts at %llu now; dropped (it resumes or bulk "
                              "syncs when it reconnects)",
                              (unsigned long long)o->ref->seq,
                              (unsigned long long)s->backlog->max_bytes,
                              (unsigned long long)first);
        break;
    }
    return 0;
}

/* ---- bulk sync and frames: standby ------------------------------------ */

static int send_ack(tha_session_t *s, uint64_t seq, int level) {
    uint8_t p[12];
    put64(p, seq);
    put32(p + 8, (uint32_t)level);
    return send_msg(s, M_ACK, 0, p, sizeof p);
}

/* The live heap's log fsyncs each frame before apply commits it. */
static bool log_always(const tha_heap_t *h) {
    int64_t ms;
    return h && tha_heap_log_policy(h, &ms) && ms == THA_LOG_FSYNC_ALWAYS;
}

static int ack_persisted(tha_session_t *s, uint64_t seq) {
    if (seq <= s->persisted) return 0;
    s->persisted = seq;
    return send_ack(s, seq, THA_ACK_PERSISTED);
}

static int send_nack(tha_session_t *s, uint64_t seq, int code, const char *msg) {
    uint8_t p[16 + 200];
    size_t ml = strnlen(msg, 200);
    put64(p, seq);
    put32(p + 8, (uint32_t)code);
    put32(p + 12, (uint32_t)ml);
    memcpy(p + 16, msg, ml);
    return send_msg(s, M_NACK, 0, p, 16 + ml);
}

/* Staging becomes the live heap once it reached a consistent frame. */
static int maybe_go_live(tha_session_t *s, int ack) {
    if (s->state != S_CATCHUP || s->staging->seq < s->consistent_at) return 0;
    /* Nothing goes live that is not a sound heap (O(image), like the bulk). */
    int rc = tha__check_staging(s->staging);
    if (rc) {
        char why[sizeof s->staging->err];
        snprintf(why, sizeof why, "%s", tha_heap_errmsg(s->staging));
        tha_heap_destroy(s->staging);
        s->staging = NULL;
        send_nack(s, s->consistent_at, rc, "bulk sync: the image is not a sound heap");
        return close_with(s, THA_EV_ERROR, rc, "bulk sync refused at seq %llu: %s",
                          (unsigned long long)s->consistent_at, why);
    }
    if (s->staging->addr && s->staging->addr != (uint64_t)(uintptr_t)s->staging->base) {
        /* same-address, filled away from the base the live heap holds:
         * the live heap takes the image in place (same handle; it clears
         * the dirty bits too) */
        rc = tha__take_image(s->heap, s->staging);
        tha_heap_destroy(s->staging);
        s->staging = NULL;
        if (rc) {
            send_nack(s, s->consistent_at, rc, "bulk sync: cannot take the image live");
            return close_with(s, THA_EV_ERROR, rc, "bulk sync at seq %llu: %s",
                              (unsigned long long)s->consistent_at,
                              tha_heap_errmsg(s->heap));
        }
    } else {
        /* A mirror live at a seq holds no change of its own: the bits its
         * creation set (the fresh region's metadata; segments set none) are
         * cleared, or a promotion would ship them all in its first delta. */
        tha__clear_dirty(s->staging);
        if (s->owns_heap) tha_heap_destroy(s->heap);
        s->heap = s->staging;
        s->owns_heap = 1;
        s->staging = NULL;
    }
    s->state = S_STREAMING;
    /* The new heap has no log: nothing of it is on disk until the driver
     * checkpoints it and starts a fresh log (tha_session_persisted). */
    s->got_seq = s->heap->seq;
    s->persisted = 0;
    push_event(s, THA_EV_BULK_DONE, 0, s->heap->seq, s->bulk_total, s->bulk_total);
    return send_ack(s, s->heap->seq, ack > THA_ACK_APPLIED ? THA_ACK_APPLIED :
                    (ack < THA_ACK_APPLIED ? THA_ACK_APPLIED : ack));
}

/* The heap a bulk sync fills: relocatable, or at the active's base for a
 * same-address active. Its live heap may hold that base (the mirror of an
 * earlier bulk sync): two images cannot share an address, so the staging
 * heap is then filled elsewhere and the live heap takes its image at go-live
 * (tha__take_image). */
static int create_staging(tha_session_t *s, uint64_t seq, uint64_t capacity) {
    const uint64_t base = (uint64_t)s->peer.base64k << 16;
    char why[256] = "";
    int rc = tha__heap_new_reserved(&s->staging, s->peer_schema, capacity,
                                    THA_TRACK_EXPLICIT, base, base, s->cfg.reserve, why,
                                    sizeof why);
    tha_heap_t *live = s->heap;
    if (rc == -EEXIST && live && live->addr == base &&
        (uint64_t)(uintptr_t)live->base == base) {
        if (live->capacity < capacity) {
            rc = THA_ECAPACITY;
            snprintf(why, sizeof why, "the active's same-address heap at 0x%llx has "
                     "capacity %llu; the mirror there reserved %llu, and another heap "
                     "cannot share its address: restart this standby without a heap",
                     (unsigned long long)base, (unsigned long long)capacity,
                     (unsigned long long)live->capacity);
        } else {
            rc = tha__heap_new_reserved(&s->staging, s->peer_schema, capacity,
                                        THA_TRACK_EXPLICIT, 0, base, s->cfg.reserve, why,
                                        sizeof why);
        }
    }
    if (rc) {
        s->staging = NULL;
        if (!why[0]) snprintf(why, sizeof why, "%s", tha_strerror(rc));
        send_nack(s, seq, rc, "cannot create the bulk sync's heap");
        return close_with(s, THA_EV_ERROR, rc, "bulk sync: cannot create a %llu-byte "
                          "heap: %s", (unsigned long long)capacity, why);
    }
    return 0;
}

static int on_snap_begin(tha_session_t *s, const uint8_t *p, size_t len) {
    if (len < 44 || get32(p + 40) != len - 44 || !s->peer_schema)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed SNAP_BEGIN");
    uint64_t capacity = get64(p + 24);
    tha_heap_destroy(s->staging);
    s->staging = NULL;
    int rc = create_staging(s, get64(p), capacity);
    if (rc) return rc;
    /* The image is written whole, once, by this thread: in 2 MiB pages
     * that is a fault per 2 MiB instead of per 4 KiB (16k faults and page
     * allocations for 64 MiB cost the receive more than its copy). A
     * promotion to wp tracking stops new huge pages (wp.c); correctness
     * never depends on the page size. */
    madvise(s->staging->base, s->staging->capacity, MADV_HUGEPAGE);
    s->staging->fuzzy = 1;
    s->staging->seq = get64(p);
    s->staging->epoch = get64(p + 8);
    s->staging->lineage = get64(p + 16);
    s->bulk_done = 0;
    s->bulk_total = get64(p + 32);
    s->state = S_BULK;
    push_event(s, THA_EV_BULK_BEGIN, 0, s->staging->seq, s->bulk_total, 0);
    return 0;
}

/* A bulk sync's segment failed its verify. Rule: a failure caused by this
 * process (a function or extern word it has not bound: the staging heap's
 * unbound_seen) refuses the active (THA_EMISMATCH, naming it), so the
 * active stops and says so instead of sending the image again and again;
 * any other is the bytes' fault and closes the connection as before. */
static int bad_segment(tha_session_t *s, int rc) {
    if (s->staging->unbound_seen)
        return refuse(s, THA_EMISMATCH, 0, "bulk sync: %s: bind it in this standby "
                      "(Standby(functions=, externs=), tha_session_config_t.bindings)",
                      tha_heap_errmsg(s->staging));
    return close_with(s, THA_EV_ERROR, rc, "bulk sync: bad segment: %s",
                      tha_heap_errmsg(s->staging));
}

static int on_snap_data(tha_session_t *s, const uint8_t *p, size_t len) {
    if (s->state != S_BULK || !s->staging)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "SNAP_DATA outside a bulk sync");
    tha__frame_hdr_t hd; /* parsed once, here */
    int rc = tha__frame_parse(p, len, &hd, s->staging->err, sizeof s->staging->err);
    if (!rc) rc = tha__apply_segment(s->staging, &hd, p, len);
    if (rc)
        return bad_segment(s, rc);
    s->bulk_done += hd.nblocks * THA__BLOCK;
    push_event(s, THA_EV_BULK_PROGRESS, 0, s->staging->seq, s->bulk_done, s->bulk_total);
    return 0;
}

static int on_snap_end(tha_session_t *s, const uint8_t *p, size_t len) {
    if (len != 32 || s->state != S_BULK || !s->staging || get64(p) != s->staging->seq)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed SNAP_END");
    s->consistent_at = get64(p + 16);
    s->state = S_CATCHUP;
    return maybe_go_live(s, THA_ACK_APPLIED);
}

static int on_frame(tha_session_t *s, const uint8_t *p, size_t len, int ack) {
    tha_heap_t *target = s->state == S_CATCHUP ? s->staging : s->heap;
    if (s->state == S_BULK || s->state == S_HANDSHAKE || !target)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "FRAME before the standby "
                          "has a heap to apply it to");
    tha__frame_hdr_t hd; /* parsed once: apply and the log take it */
    char why[200];
    uint64_t seq = 0;
    int rc = tha__frame_parse(p, len, &hd, why, sizeof why);
    if (rc) {
        snprintf(why, sizeof why, "unreadable frame header: %s", tha_strerror(rc));
    } else {
        seq = hd.seq;
        if (ack == THA_ACK_RECEIVED && (rc = send_ack(s, seq, THA_ACK_RECEIVED)))
            snprintf(why, sizeof why, "cannot queue the ack: %s", tha_strerror(rc));
        else if ((rc = tha__apply(target, &hd, p, len)))
            snprintf(why, sizeof why, "%s", tha_heap_errmsg(target));
    }
    if (rc) { /* the heap is unchanged; the active decides what to resend.
                 The reason is this frame's own, never an older message. */
        send_nack(s, seq, rc, why);
        tha_event_t *e = push_event(s, THA_EV_ERROR, rc, seq, 0, 0);
        if (e) snprintf(e->msg, sizeof e->msg, "frame seq %llu refused: %s",
                        (unsigned long long)seq, why);
        return 0;
    }
    if (s->state == S_CATCHUP) return maybe_go_live(s, ack);
    s->got_seq = seq;
    push_event(s, THA_EV_APPLIED, 0, seq, (uint64_t)len, 0);
    if (ack < THA_ACK_RECEIVED) return 0;
    /* With fsync "always" apply appended and fsync'd the frame before it
     * committed: one ACK at level persisted also says applied. Looser
     * policies are acked persisted by tha_session_tick. */
    if (log_always(s->heap)) return ack_persisted(s, seq);
    return send_ack(s, seq, THA_ACK_APPLIED);
}

/* ---- input ------------------------------------------------------------ */

static int dispatch(tha_session_t *s, int type, int flags, const uint8_t *p, size_t len) {
    bool active = s->cfg.role == THA_ROLE_ACTIVE;
    if (type == M_REFUSE) {
        if (len < 16 || get32(p + 12) != len - 16)
            return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed REFUSE");
        int code = (int)get32(p);
        uint64_t epoch = get64(p + 4);
        /* a refusal ends the connection either way, but only a proven peer
         * that names an epoch newer than ours can fence us: before proof it
         * is just a peer going away, and a node of an older epoch (a stale
         * promoted node still listening) has no say over a newer one */
        uint64_t mine = s->heap ? s->heap->epoch : 0;
        bool fenced = code == THA_EFENCED && s->proven && epoch > mine;
        char text[200];
        peer_text(text, sizeof text, p + 16, len - 16);
        close_with(s, fenced ? THA_EV_FENCED : THA_EV_REFUSED, code,
                   "the peer refused%s: %s", s->proven ? "" : " (before proving "
                   "the shared secret)", text);
        tha_event_t *e = &s->ev[(s->ev_head + s->ev_n - 1) % s->ev_cap];
        e->epoch = fenced ? epoch : 0;
        e->a = (uint64_t)s->proven; /* 1: the refusal is authenticated */
        return code;
    }
    if (s->state == S_HANDSHAKE) {
        if (active && type == M_HELLO && !s->peer.role) return on_standby_hello(s, p, len);
        if (active && type == M_WELCOME && s->peer.role && !s->proven)
            return on_welcome(s, p, len);
        if (!active && type == M_HELLO && !s->proven) return on_active_hello(s, p, len);
        if (!active && type == M_SCHEMA && s->proven) return on_schema(s, p, len);
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "unexpected %s during the handshake",
                          msg_names[type]);
    }
    if (type == M_HEARTBEAT) {
        if (len != 24) return close_with(s, THA_EV_ERROR, THA_EPROTO, "malformed HEARTBEAT");
        s->peer.seq = get64(p);
        push_event(s, THA_EV_HEARTBEAT, 0, get64(p), get64(p), get64(p + 8));
        return 0;
    }
    if (active) {
        if (type == M_ACK && len == 12) {
            uint64_t seq = get64(p);
            uint32_t level = get32(p + 8);
            if (level < THA_ACK_RECEIVED || level > THA_ACK_PERSISTED || seq > s->heap->seq)
                return close_with(s, THA_EV_ERROR, THA_EPROTO, "ACK of seq %llu level %u "
                                  "is impossible", (unsigned long long)seq, level);
            for (uint32_t l = 1; l <= level; l++)
                if (seq > s->acked[l]) s->acked[l] = seq;
            push_event(s, THA_EV_ACK, 0, seq, level, 0);
            return 0;
        }
        if (type == M_NACK && len >= 16 && get32(p + 12) == len - 16) {
            if (s->state == S_BULK) return 0; /* about a frame the bulk replaces */
            tha_event_t *e = push_event(s, THA_EV_ERROR, (int)get32(p + 8), get64(p), 0, 0);
            char text[200];
            peer_text(text, sizeof text, p + 16, len - 16);
            if (e) snprintf(e->msg, sizeof e->msg, "standby refused seq %llu: %s; "
                            "bulk sync", (unsigned long long)get64(p), text);
            return start_bulk(s, true);
        }
    } else {
        switch (type) {
        case M_SNAP_BEGIN: return on_snap_begin(s, p, len);
        case M_SNAP_DATA: return on_snap_data(s, p, len);
        case M_SNAP_END: return on_snap_end(s, p, len);
        case M_FRAME: return on_frame(s, p, len, flags);
        default: break;
        }
    }
    return close_with(s, THA_EV_ERROR, THA_EPROTO, "unexpected %s message",
                      msg_names[type]);
}

/* Bytes needed for the message starting at p (0: need more), or < 0. */
static int64_t message_length(tha_session_t *s, const uint8_t *p, size_t avail) {
    if (avail < MSG_HDR) return 0;
    uint16_t type;
    memcpy(&type, p + 4, 2);
    if (get32(p) != MSG_MAGIC || tha_crc32c(0, p, 16) != get32(p + 16) ||
        type == 0 || type >= M_LAST)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "garbage from the peer (not a "
                          "tha message header)");
    uint64_t len = get32(p + 8);
    if (!s->proven && len > THA_HANDSHAKE_MAX) /* costs nothing before proof */
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "%s of %llu bytes before the "
                          "peer proved the shared secret (the handshake allows %u)",
                          msg_names[type], (unsigned long long)len, THA_HANDSHAKE_MAX);
    if (len > s->cfg.max_message)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "%s of %llu bytes exceeds the "
                          "limit of %llu", msg_names[type], (unsigned long long)len,
                          (unsigned long long)s->cfg.max_message);
    uint64_t total = msg_total(s, len);
    return avail >= total ? (int64_t)total : 0;
}

static int handle(tha_session_t *s, const uint8_t *m, size_t total) {
    uint16_t type, flags;
    memcpy(&type, m + 4, 2);
    memcpy(&flags, m + 6, 2);
    size_t len = total - MSG_HDR - (s->keyed ? TAG : 0);
    if (s->keyed) { /* verified before anything in it is looked at */
        uint8_t want[TAG];
        msg_tag(s, s->key_rx, s->ctr_rx, m, m + MSG_HDR, len, want);
        if (!mac_equal(want, m + MSG_HDR + len))
            return close_with(s, THA_EV_ERROR, THA_EAUTH, "%s (message %llu from the "
                              "peer) fails its MAC: forged, replayed or reordered on "
                              "the way; closing", msg_names[type],
                              (unsigned long long)s->ctr_rx);
        s->ctr_rx++;
    }
    if (!self_checked(type) && tha_crc32c(0, m + MSG_HDR, len) != get32(m + 12))
        return close_with(s, THA_EV_ERROR, THA_ECHECKSUM, "%s payload checksum mismatch",
                          msg_names[type]);
    return dispatch(s, type, flags, m + MSG_HDR, len);
}

static int finish_direct(tha_session_t *s);

int tha_session_feed(tha_session_t *s, const void *data, size_t len, uint64_t now_ms) {
    if (s->state == S_CLOSED) return THA_ECLOSED;
    s->now = now_ms;
    if (len) {
        s->last_heard = now_ms;
        s->deaf_ms = 0;
        s->timed_out = 0;
    }
    s->bytes_in += len;
    const uint8_t *p = data;
    if (s->direct) { /* a recv_buffer'd segment, finished through feed */
        size_t take = len < s->direct_left ? len : (size_t)s->direct_left;
        memcpy(s->direct, p, take);
        s->direct += take;
        s->direct_left -= take;
        p += take;
        len -= take;
        if (s->direct_left) return 0;
        int rc = finish_direct(s);
        if (rc < 0 || s->state == S_CLOSED) return rc < 0 ? rc : 0;
    }
    while (len || s->in_len) {
        int64_t need;
        if (s->in_len == 0) { /* whole messages straight from the caller's bytes */
            need = message_length(s, p, len);
            if (need < 0) return (int)need;
            if (need > 0) {
                int rc = handle(s, p, (size_t)need);
                p += need;
                len -= (size_t)need;
                if (rc < 0 || s->state == S_CLOSED) return rc < 0 ? rc : 0;
                continue;
            }
        }
        /* buffer: enough for the header, then for the whole message */
        size_t want = s->in_len < MSG_HDR ? MSG_HDR : 0;
        if (!want) {
            need = message_length(s, s->in, s->in_len);
            if (need < 0) return (int)need;
            want = need ? (size_t)need : (size_t)msg_total(s, get32(s->in + 8));
        }
        if (want > s->in_cap) {
            uint8_t *in = realloc(s->in, want);
            if (!in) return THA_ENOMEM;
            s->in = in;
            s->in_cap = want;
        }
        size_t take = want - s->in_len < len ? want - s->in_len : len;
        memcpy(s->in + s->in_len, p, take);
        s->in_len += take;
        p += take;
        len -= take;
        if (s->in_len < want) {
            if (!len) break;
            continue;
        }
        need = message_length(s, s->in, s->in_len);
        if (need < 0) return (int)need;
        if (need == 0) continue; /* header complete; payload next */
        int rc = handle(s, s->in, (size_t)need);
        s->in_len = 0;
        if (rc < 0 || s->state == S_CLOSED) return rc < 0 ? rc : 0;
    }
    return 0;
}

/* Zero-copy input. A small message may share the buffer with the next
 * ones; a large one gets a buffer of its exact size, is received straight
 * into it and applied from there: no copy between socket and heap. */
#define RECV_MIN (1u << 20)
#define RECV_EXACT (64u << 10) /* messages above this are received alone */

static int in_reserve(tha_session_t *s, size_t cap) {
    if (cap <= s->in_cap) return 0;
    uint8_t *in = realloc(s->in, cap);
    if (!in) return THA_ENOMEM;
    s->in = in;
    s->in_cap = cap;
    return 0;
}

/* Bulk data in place. A bulk sync without a secret (no MAC to verify
 * first) receives each segment's head into `in`, bounded so that nothing
 * past it is read, then its data straight into the staging heap at the
 * run's offset: the socket's copy is the only one. Rule: the bytes land
 * only inside the staging image's committed range (checked on the head
 * before any byte is received there), and the staging heap is not live:
 * tha__apply_segment_in_place then verifies the segment where it lies
 * (checksum, pointer masks) exactly as tha__apply_segment would, and a
 * refusal closes the session with nothing taken live. Whatever does not
 * fit this path (a keyed session, a head that disagrees with itself, a
 * segment already partly buffered) takes the copying path, which judges
 * it as before. */
#define SEG_FIXED (MSG_HDR + THA_FRAME_HEADER_SIZE + sizeof(tha__run_t))
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static bool in_bulk(const tha_session_t *s) {
    return s->state == S_BULK && s->staging && s->staging->mech != THA__MECH_MPROTECT;
}

/* In a bulk sync, or (a fresh standby) about to get its SNAP_BEGIN: reads
 * stop at message boundaries, so no segment is half in `in` already. */
static bool direct_ok(const tha_session_t *s) {
    return s->cfg.role == THA_ROLE_STANDBY && s->proven && !s->keyed &&
           (in_bulk(s) || (s->state == S_STREAMING && !s->heap && !s->staging));
}

/* The head in `in` (in_len bytes, exactly the head) names where its data
 * goes: set s->direct, or false to receive the segment the copying way. */
static bool start_direct(tha_session_t *s, uint64_t len, const tha__run_t *run) {
    tha_heap_t *h = s->staging;
    tha__frame_hdr_t hd;
    char why[200];
    uint64_t data = run->nblocks * THA__BLOCK;
    if (len != tha__segment_head_bytes(run->nblocks) + data ||
        tha__frame_parse(s->in + MSG_HDR, len, &hd, why, sizeof why) ||
        hd.kind != THA__FRAME_SEGMENT || hd.nruns != 1 || hd.nblocks != run->nblocks ||
        hd.top > h->capacity || run->offset % THA__BLOCK || run->offset > hd.top ||
        data > hd.top - run->offset || tha__commit(h, hd.top))
        return false;
    s->direct = h->base + run->offset;
    s->direct_left = s->direct_len = data;
    s->direct_hd = hd;
    /* fresh pages in one call, not a fault per page inside the recv
     * (explicit tracking: nothing watches these pages) */
    madvise(s->direct, data, MADV_POPULATE_WRITE);
    return true;
}

/* 1 with buf and cap set: receive into that (a bounded piece of a SNAP_DATA
 * head, or its data in place); 0: use the ordinary buffer; < 0: error. */
static int direct_head(tha_session_t *s, void **buf, size_t *cap) {
    /* until the type is known, no further than a segment's fixed head */
    size_t want = in_bulk(s) ? SEG_FIXED : MSG_HDR;
    if (s->in_len >= MSG_HDR) {
        int64_t need = message_length(s, s->in, s->in_len);
        if (need < 0) return (int)need;
        uint16_t type;
        memcpy(&type, s->in + 4, 2);
        uint64_t len = get32(s->in + 8);
        if (type == M_SNAP_BEGIN) {
            want = (size_t)msg_total(s, len); /* exactly it: segments follow */
        } else if (type != M_SNAP_DATA || !in_bulk(s) || len < SEG_FIXED - MSG_HDR) {
            return 0;
        } else if (s->in_len >= SEG_FIXED) { /* the run says how long the head is */
            tha__run_t run;
            memcpy(&run, s->in + MSG_HDR + THA_FRAME_HEADER_SIZE, sizeof run);
            if (run.nblocks == 0 || run.nblocks > len / THA__BLOCK) return 0;
            want = MSG_HDR + tha__segment_head_bytes(run.nblocks);
            if (s->in_len == want) {
                if (!start_direct(s, len, &run)) return 0;
                *buf = s->direct;
                *cap = s->direct_left;
                return 1;
            }
        }
        if (s->in_len >= want) return 0;
    }
    int rc = in_reserve(s, want);
    if (rc) return rc;
    *buf = s->in + s->in_len;
    *cap = want - s->in_len;
    return 1;
}

/* The direct segment's data is all in the heap: verify it there. */
static int finish_direct(tha_session_t *s) {
    tha__frame_hdr_t hd = s->direct_hd;
    int rc = tha__apply_segment_in_place(s->staging, &hd, s->in + MSG_HDR,
                                         s->in_len - MSG_HDR, s->direct_len);
    s->direct = NULL;
    s->in_len = 0;
    if (rc)
        return bad_segment(s, rc);
    s->bulk_done += hd.nblocks * THA__BLOCK;
    push_event(s, THA_EV_BULK_PROGRESS, 0, s->staging->seq, s->bulk_done, s->bulk_total);
    return 0;
}

int tha_session_recv_buffer(tha_session_t *s, void **buf, size_t *cap) {
    *buf = NULL;
    *cap = 0;
    if (s->state == S_CLOSED) return THA_ECLOSED;
    if (s->direct) {
        *buf = s->direct;
        *cap = s->direct_left;
        return 0;
    }
    if (direct_ok(s)) {
        int rc = direct_head(s, buf, cap);
        if (rc) return rc < 0 ? rc : 0;
    }
    /* before proof a peer gets room for one handshake message, no more */
    size_t floor = s->proven ? RECV_MIN : MSG_HDR + THA_HANDSHAKE_MAX + TAG;
    size_t room = floor;
    if (s->in_len >= MSG_HDR) { /* a message is under way: its size is known */
        int64_t need = message_length(s, s->in, s->in_len);
        if (need < 0) return (int)need;
        size_t total = (size_t)msg_total(s, get32(s->in + 8));
        if (total > RECV_EXACT) {
            int rc = in_reserve(s, total);
            if (rc) return rc;
            *buf = s->in + s->in_len;
            *cap = total - s->in_len;
            return 0;
        }
    }
    int rc = in_reserve(s, s->in_len + room > floor ? s->in_len + room : floor);
    if (rc) return rc;
    *buf = s->in + s->in_len;
    *cap = s->in_cap - s->in_len;
    return 0;
}

int tha_session_received(tha_session_t *s, size_t n, uint64_t now_ms) {
    if (s->state == S_CLOSED) return THA_ECLOSED;
    if (n > (s->direct ? s->direct_left : s->in_cap - s->in_len)) return THA_EINVAL;
    s->now = now_ms;
    if (n) {
        s->last_heard = now_ms;
        s->deaf_ms = 0;
        s->timed_out = 0;
    }
    s->bytes_in += n;
    if (s->direct) { /* n bytes of segment data went straight to the heap */
        s->direct += n;
        s->direct_left -= n;
        return s->direct_left ? 0 : finish_direct(s);
    }
    s->in_len += n;
    size_t pos = 0;
    while (s->in_len - pos >= MSG_HDR) {
        int64_t need = message_length(s, s->in + pos, s->in_len - pos);
        if (need < 0) {
            s->in_len = 0;
            return (int)need;
        }
        if (need == 0) break;
        int rc = handle(s, s->in + pos, (size_t)need);
        pos += (size_t)need;
        if (rc < 0 || s->state == S_CLOSED) {
            s->in_len = 0;
            return rc < 0 ? rc : 0;
        }
    }
    if (pos) { /* keep the partial message that follows, at the front */
        memmove(s->in, s->in + pos, s->in_len - pos);
        s->in_len -= pos;
    }
    /* a large buffer that served one big message goes back to normal size
     * only when nothing is pending in it: keep it, the next big one reuses it */
    return 0;
}

/* ---- output, time ----------------------------------------------------- */

int tha_session_output(tha_session_t *s, const void **data, size_t *len) {
    if (!s->out_n && s->cfg.role == THA_ROLE_ACTIVE && s->state == S_BULK) {
        int rc = bulk_step(s);
        if (rc) return rc;
    }
    if (!s->out_n) {
        *data = NULL;
        *len = 0;
        return 0;
    }
    outitem_t *o = &s->out[s->out_head];
    *data = o->ptr + o->off;
    *len = o->len - o->off;
    s->out_lent = 1;
    return 0;
}

int tha__session_output_vec(tha_session_t *s, const void **ptr, size_t *len, int max) {
    if (max <= 0) return 0;
    int rc = tha_session_output(s, &ptr[0], &len[0]);
    if (rc) return rc;
    if (!len[0]) return 0;
    int n = 1;
    for (size_t i = 1; i < s->out_n && n < max; i++, n++) {
        const outitem_t *o = &s->out[(s->out_head + i) % s->out_cap];
        ptr[n] = o->ptr + o->off;
        len[n] = o->len - o->off;
    }
    return n;
}

int tha_session_advance(tha_session_t *s, size_t n) {
    while (n && s->out_n) {
        outitem_t *o = &s->out[s->out_head];
        size_t take = o->len - o->off < n ? o->len - o->off : n;
        o->off += take;
        n -= take;
        s->bytes_out += take;
        if (o->off == o->len) {
            out_free(o);
            s->out_head = (s->out_head + 1) % s->out_cap;
            s->out_n--;
            s->out_lent = 0;
        }
    }
    return n ? THA_EINVAL : 0;
}

int tha_session_tick(tha_session_t *s, uint64_t now_ms) {
    if (s->state == S_CLOSED) return THA_ECLOSED;
    if (!s->started) return 0; /* no clock yet: nothing can have timed out */
    s->now = now_ms;
    /* Silence is judged over the time this process could listen. A driver
     * ticks at least every heartbeat period; a longer gap is this
     * process's own stall (CPU, an interpreter lock held, a long apply),
     * during which it could not read what the peer sent. That excess is
     * not held against the peer: the timeout clock skips it, so the first
     * tick after a stall never declares a peer dead whose heartbeats are
     * waiting unread in the socket. A peer that is really silent still
     * times out after timeout_ms of ticked time. */
    uint64_t since = s->last_tick > s->last_heard ? s->last_tick : s->last_heard;
    if (now_ms > since && now_ms - since > s->cfg.heartbeat_ms) /* no wrap */
        s->deaf_ms += now_ms - since - s->cfg.heartbeat_ms;
    s->last_tick = now_ms;
    /* a clock read before the last feed (another thread's, or stepped
     * back) is no silence: no uint64 wrap into a failover signal */
    uint64_t heard_ago = now_ms > s->last_heard ? now_ms - s->last_heard : 0;
    uint64_t silent = heard_ago > s->deaf_ms ? heard_ago - s->deaf_ms : 0;
    /* Not THA_EV_TIMEOUT, which is the failover signal: a stranger who
     * connects and says nothing must not look like a silent active. */
    if (s->state == S_HANDSHAKE && now_ms >= s->started_at &&
        now_ms - s->started_at >= s->cfg.timeout_ms)
        return close_with(s, THA_EV_ERROR, THA_EPROTO, "the peer did not finish the "
                          "handshake (prove the shared secret) within %llu ms",
                          (unsigned long long)s->cfg.timeout_ms);
    if (!s->timed_out && silent >= s->cfg.timeout_ms) {
        s->timed_out = 1;
        tha_event_t *e = push_event(s, THA_EV_TIMEOUT, 0, s->peer.seq, silent, 0);
        if (e) snprintf(e->msg, sizeof e->msg, "nothing from the peer for %llu ms",
                        (unsigned long long)silent);
    }
    int64_t ms;
    if (s->cfg.role == THA_ROLE_STANDBY && s->state == S_STREAMING && s->heap &&
        s->got_seq > s->persisted && s->heap->seq == s->got_seq &&
        tha_heap_log_policy(s->heap, &ms)) {
        /* Group commit for a looser fsync policy: every ms, sync the log
         * and ack everything applied so far as persisted. "never" waits
         * for the driver (tha_session_persisted after a checkpoint). */
        if (ms == THA_LOG_FSYNC_ALWAYS) {
            int rc = ack_persisted(s, s->got_seq);
            if (rc) return rc;
        } else if (ms > 0 && now_ms - s->log_synced_at >= (uint64_t)ms) {
            s->log_synced_at = now_ms;
            if (tha_heap_sync_log(s->heap) == 0) {
                int rc = ack_persisted(s, s->got_seq);
                if (rc) return rc;
            }
        }
    }
    if (s->state != S_HANDSHAKE && !s->out_n &&
        now_ms - s->last_sent >= s->cfg.heartbeat_ms) {
        uint8_t p[24];
        put64(p, s->heap ? s->heap->seq : 0);
        put64(p + 8, s->heap ? s->heap->epoch : 0);
        put64(p + 16, now_ms);
        return send_msg(s, M_HEARTBEAT, 0, p, sizeof p);
    }
    return 0;
}

int tha_session_persisted(tha_session_t *s, uint64_t seq) {
    if (s->cfg.role != THA_ROLE_STANDBY) return THA_EINVAL;
    if (s->state == S_CLOSED) return THA_ECLOSED;
    if (s->state != S_STREAMING || !s->got_seq) return 0;
    return ack_persisted(s, seq < s->got_seq ? seq : s->got_seq);
}

int tha_session_fence(tha_session_t *s, uint64_t epoch) {
    if (s->state == S_CLOSED) return THA_ECLOSED;
    refuse(s, THA_EFENCED, epoch, "fenced: this node was promoted to epoch %llu",
           (unsigned long long)epoch);
    return 0;
}

int tha_session_status(const tha_session_t *s, tha_session_status_t *out) {
    memset(out, 0, sizeof *out);
    out->role = s->cfg.role;
    out->state = s->state;
    /* what an unproven peer claims is nobody's business yet */
    out->peer_node = s->proven ? s->peer.node : 0;
    out->peer_seq = s->proven ? s->peer.seq : 0;
    out->sent_seq = s->next_seq ? s->next_seq - 1 : 0;
    memcpy(out->acked, s->acked, sizeof out->acked);
    if (s->cfg.role == THA_ROLE_STANDBY) { /* what this standby acked */
        out->acked[THA_ACK_APPLIED] = s->got_seq;
        out->acked[THA_ACK_PERSISTED] = s->persisted;
    }
    out->bytes_in = s->bytes_in;
    out->bytes_out = s->bytes_out;
    out->bulk_done = s->cfg.role == THA_ROLE_ACTIVE ? s->bulk_block * THA__BLOCK : s->bulk_done;
    out->bulk_total = s->bulk_total;
    out->last_heard_ms = s->last_heard;
    return 0;
}

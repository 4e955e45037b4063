/* backlog.c — the newest delta frames of one heap, kept so that a standby
 * that reconnects resumes from where it was instead of bulk syncing.
 * Frames are reference counted: a session still sending one keeps it alive
 * after the backlog dropped it (bounded by max_bytes).
 *
 * A delta up to HOT_BYTES is encoded into the hot buffer and sent from
 * there; its copy into memory of its own (the ring's frames cycle through
 * max_bytes, each written last a whole lap ago: cold, often fresh pages)
 * is made by tha_backlog_settle while the driver waits for the acks, off
 * the sync's path. Rule: frame bytes never change once appended, so the
 * hot buffer is written only when nothing but the backlog holds it.
 */
#include "codec.h"
#include "replication.h"

#include <stdlib.h>

int tha_backlog_create(tha_backlog_t **out, uint64_t max_bytes) {
    tha_backlog_t *b = calloc(1, sizeof *b);
    if (!b) return THA_ENOMEM;
    b->max_bytes = max_bytes ? max_bytes : (64u << 20);
    *out = b;
    return 0;
}

#define SPARE_MIN (1u << 20) /* smaller buffers are cheap to allocate anew */

/* A frame can outlive its backlog in a session (dropped from the ring, or
 * the hot buffer, while being sent): a destroyed backlog stays allocated
 * until the last frame it owns is released (b->live counts them). */
void tha__bframe_release(tha__bframe_t *f) {
    if (!f || --f->refs) return;
    tha_backlog_t *b = f->owner;
    if (b) {
        b->live--;
        if (b->destroyed) {
            free(f);
            if (!b->live) free(b);
            return;
        }
        if (f->cap >= SPARE_MIN && (!b->spare || b->spare->cap < f->cap)) {
            free(b->spare);
            b->spare = f;
            return;
        }
    }
    free(f);
}

/* A frame buffer of at least len bytes: the spare if it fits and the frame
 * is large too. A small frame must not take a large spare: the next large
 * delta would then land on fresh pages, and first-touch page faults cost
 * more than its encode (20-130 ms for 97.5 MB on the reference VM). */
static tha__bframe_t *bframe_alloc(tha_backlog_t *b, size_t len) {
    tha__bframe_t *f = b->spare;
    if (f && f->cap >= len && len >= SPARE_MIN && len >= f->cap / 4) {
        b->spare = NULL;
    } else {
        f = malloc(sizeof *f + len);
        if (!f) return NULL;
        f->cap = len;
    }
    f->refs = 1;
    f->owner = b;
    b->live++;
    return f;
}

/* The hot buffer, allocated once; NULL if that fails (frames of their own
 * then). Its pages are touched by the encodes that use it only. */
#define HOT_BYTES (8u << 20)

static tha__bframe_t *hot_buffer(tha_backlog_t *b) {
    if (!b->hot) {
        tha__bframe_t *f = malloc(sizeof *f + HOT_BYTES);
        if (!f) return NULL;
        f->cap = HOT_BYTES;
        f->len = 0;
        f->refs = 1; /* the backlog's */
        f->owner = b;
        b->live++;
        b->hot = f;
    }
    return b->hot;
}

void tha_backlog_destroy(tha_backlog_t *b) {
    if (!b) return;
    if (b->heap) { /* the heap makes its own frames again */
        b->heap->backlog = NULL;
        b->heap->backlog_ref = NULL;
    }
    /* a session may still hold any of them (also ones the ring dropped
     * earlier): it frees them when it lets go, and the last one frees b */
    b->live++; /* this call's own hold: b outlives the releases below */
    b->destroyed = 1;
    for (uint64_t i = 0; i < b->n; i++) tha__bframe_release(b->ring[(b->head + i) % b->cap]);
    if (b->hot) tha__bframe_release(b->hot);
    free(b->spare);
    free(b->ring);
    b->spare = b->hot = NULL;
    b->ring = NULL;
    b->n = 0;
    if (--b->live == 0) free(b);
}

static void drop_oldest(tha_backlog_t *b) {
    tha__bframe_t *f = b->ring[b->head];
    b->bytes -= f->len;
    b->head = (b->head + 1) % b->cap;
    b->n--;
    tha__bframe_release(f);
}

/* Room in the ring for one more frame. */
static int reserve(tha_backlog_t *b) {
    if (b->n < b->cap) return 0;
    uint64_t cap = b->cap ? b->cap * 2 : 64;
    tha__bframe_t **ring = malloc(cap * sizeof *ring);
    if (!ring) return THA_ENOMEM;
    for (uint64_t i = 0; i < b->n; i++) ring[i] = b->ring[(b->head + i) % b->cap];
    free(b->ring);
    b->ring = ring;
    b->head = 0;
    b->cap = cap;
    return 0;
}

/* Appends frame f (refs 1, data filled, len set; its header hd) as the
 * newest. */
static int append(tha_backlog_t *b, tha__bframe_t *f, const tha__frame_hdr_t *hd) {
    int rc;
    if (hd->kind != THA_FRAME_DELTA) return THA_EINVAL;
    if (b->n && (hd->seq != b->last_seq + 1 || hd->lineage != b->lineage))
        return THA_ESEQ;
    if ((rc = reserve(b))) return rc;
    f->seq = hd->seq;
    f->epoch = hd->epoch;
    b->ring[(b->head + b->n) % b->cap] = f;
    b->n++;
    b->bytes += f->len;
    b->last_seq = hd->seq;
    b->lineage = hd->lineage;
    /* keep at least the newest frame whatever its size */
    while (b->bytes > b->max_bytes && b->n > 1) drop_oldest(b);
    return 0;
}

int tha_backlog_settle(tha_backlog_t *b) {
    if (!b || !b->n) return 0;
    uint64_t i = (b->head + b->n - 1) % b->cap;
    tha__bframe_t *f = b->ring[i];
    if (f != b->hot) return 0; /* only the newest can be the hot one */
    tha__bframe_t *own = bframe_alloc(b, f->len);
    if (!own) return THA_ENOMEM;
    memcpy(own->data, f->data, f->len);
    own->len = f->len;
    own->seq = f->seq;
    own->epoch = f->epoch;
    b->ring[i] = own; /* same bytes: a session that asks for seq gets these */
    f->refs--;        /* the ring's; sessions sending from it keep theirs */
    return 0;
}

int tha_backlog_push(tha_backlog_t *b, const void *frame, size_t len) {
    tha__bframe_t *f = bframe_alloc(b, len);
    if (!f) return THA_ENOMEM;
    memcpy(f->data, frame, len);
    f->len = len;
    tha__frame_hdr_t hd;
    char msg[160];
    int rc = tha__frame_parse(f->data, f->len, &hd, msg, sizeof msg);
    if (!rc) rc = append(b, f, &hd);
    if (rc) tha__bframe_release(f);
    return rc;
}

/* A delta is encoded straight into a guessed buffer: encode sizes the frame
 * while it writes it, so asking first would walk the dirty map twice. The
 * guess is the newest frame's size and a quarter more (a steady workload's
 * rounds fit it), at least GUESS; a delta that does not fit is encoded
 * again at the size it reported (one collect either way). */
#define GUESS (32u << 10)

static size_t first_guess(const tha_backlog_t *b) {
    size_t g = GUESS;
    if (b->n) {
        size_t last = b->ring[(b->head + b->n - 1) % b->cap]->len;
        if (last + last / 4 > g) g = last + last / 4;
    }
    return g;
}

/* Rule: everything that can refuse the frame is checked before the heap
 * commits it (seq bump, dirty bits cleared), so a failure here leaves the
 * heap as it was and its changes go in the next frame. */
int tha_backlog_encode(tha_backlog_t *b, tha_heap_t *h, uint64_t *seq, size_t *len) {
    if (h->backlog && h->backlog != b)
        return tha__hfail(h, THA_ESTATE, "backlog: this heap is replicated through "
                          "another backlog, which makes its frames");
    if (b->heap && b->heap != h)
        return tha__hfail(h, THA_EINVAL, "backlog: it holds the frames of another heap");
    if (b->n && (h->seq != b->last_seq || h->lineage != b->lineage))
        return tha__hfail(h, THA_ESEQ, "backlog: the heap is at seq %llu%s but the "
                          "backlog's last frame is seq %llu: a frame was made without "
                          "it (tha_heap_encode) and not pushed, or the heap took "
                          "another frame series", (unsigned long long)h->seq,
                          h->lineage != b->lineage ? " of another lineage" : "",
                          (unsigned long long)b->last_seq);
    if (reserve(b)) return tha__hfail(h, THA_ENOMEM, "backlog: no memory for its ring");
    /* the last delta out of the hot buffer first: it is about to be reused */
    if (tha_backlog_settle(b))
        return tha__hfail(h, THA_ENOMEM, "backlog: no memory for a frame");
    size_t guess = first_guess(b);
    tha__bframe_t *f = NULL;
    if (guess <= HOT_BYTES && (f = hot_buffer(b)) && f->refs == 1) {
        f->refs++; /* the ring's, once appended */
    } else if (!(f = bframe_alloc(b, guess))) {
        return tha__hfail(h, THA_ENOMEM, "backlog: no memory for a frame");
    }
    tha__frame_hdr_t hd; /* the encoder's: the frame is not parsed again */
    int rc = tha__encode(h, THA_FRAME_DELTA, f->data, f->cap, &f->len, &hd);
    /* Too small: nothing changed and f->len is the size the next encode
     * needs (the codec keeps the changes it counted), so one retry fits
     * whatever other threads write; the loop only guards that rule. */
    while (rc == THA_ETOOSMALL) {
        size_t need = f->len;
        tha__bframe_release(f);
        f = bframe_alloc(b, need);
        if (!f) return tha__hfail(h, THA_ENOMEM, "backlog: no memory for a %zu-byte frame",
                                  need);
        rc = tha__encode(h, THA_FRAME_DELTA, f->data, need, &f->len, &hd);
    }
    if (rc) {
        tha__bframe_release(f);
        return rc;
    }
    if (f != b->hot && f->len < f->cap / 2 && f->cap - f->len >= GUESS / 2) {
        /* give back what it did not use (a large block shrinks in place) */
        tha__bframe_t *g = realloc(f, sizeof *f + f->len);
        if (g) {
            f = g;
            f->cap = f->len;
        }
    }
    /* Committed: the frame is next in sequence and the ring has room, so
     * append cannot refuse it. */
    rc = append(b, f, &hd);
    THA_ASSERT(rc == 0);
    (void)rc;
    b->heap = h;
    h->backlog = b;
    h->backlog_ref = &b->heap;
    *seq = f->seq;
    *len = f->len;
    return 0;
}

int tha_backlog_range(const tha_backlog_t *b, uint64_t *first_seq,
                      uint64_t *last_seq, uint64_t *bytes) {
    *first_seq = b->n ? b->ring[b->head]->seq : 0;
    *last_seq = b->n ? b->last_seq : 0;
    *bytes = b->bytes;
    return 0;
}

tha__bframe_t *tha__backlog_get(tha_backlog_t *b, uint64_t seq) {
    if (!b->n || seq < b->ring[b->head]->seq || seq > b->last_seq) return NULL;
    tha__bframe_t *f = b->ring[(b->head + (seq - b->ring[b->head]->seq)) % b->cap];
    THA_ASSERT(f->seq == seq);
    f->refs++;
    return f;
}

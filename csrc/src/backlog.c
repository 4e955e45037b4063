/* backlog.c — the newest delta frames of one heap, kept so that a standby
 * that reconnects resumes from where it was instead of bulk syncing.
 * Frames are reference counted: a session still sending one keeps it alive
 * after the backlog dropped it (bounded by max_bytes).
 */
#include "tha_internal.h"

#include <stdlib.h>

int tha_backlog_create(tha_backlog_t **out, uint64_t max_bytes) {
    tha_backlog_t *b = calloc(1, sizeof *b);
    if (!b) return THA_ENOMEM;
    b->max_bytes = max_bytes ? max_bytes : (64u << 20);
    *out = b;
    return 0;
}

void tha__bframe_release(tha__bframe_t *f) {
    if (f && --f->refs == 0) free(f);
}

void tha_backlog_destroy(tha_backlog_t *b) {
    if (!b) return;
    for (uint64_t i = 0; i < b->n; i++) tha__bframe_release(b->ring[(b->head + i) % b->cap]);
    free(b->ring);
    free(b);
}

static void drop_oldest(tha_backlog_t *b) {
    tha__bframe_t *f = b->ring[b->head];
    b->bytes -= f->len;
    b->head = (b->head + 1) % b->cap;
    b->n--;
    tha__bframe_release(f);
}

int tha_backlog_push(tha_backlog_t *b, const void *frame, size_t len) {
    tha_frame_info_t info;
    int rc = tha_frame_info(frame, len, &info);
    if (rc) return rc;
    if (info.kind != THA_FRAME_DELTA) return THA_EINVAL;
    if (b->n && (info.seq != b->last_seq + 1 || info.lineage != b->lineage))
        return THA_ESEQ;
    if (b->n == b->cap) {
        uint64_t cap = b->cap ? b->cap * 2 : 64;
        tha__bframe_t **ring = malloc(cap * sizeof *ring);
        if (!ring) return THA_ENOMEM;
        for (uint64_t i = 0; i < b->n; i++) ring[i] = b->ring[(b->head + i) % b->cap];
        free(b->ring);
        b->ring = ring;
        b->head = 0;
        b->cap = cap;
    }
    tha__bframe_t *f = malloc(sizeof *f + len);
    if (!f) return THA_ENOMEM;
    f->refs = 1;
    f->seq = info.seq;
    f->epoch = info.epoch;
    f->len = len;
    memcpy(f->data, frame, len);
    b->ring[(b->head + b->n) % b->cap] = f;
    b->n++;
    b->bytes += len;
    b->last_seq = info.seq;
    b->lineage = info.lineage;
    /* keep at least the newest frame whatever its size */
    while (b->bytes > b->max_bytes && b->n > 1) drop_oldest(b);
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

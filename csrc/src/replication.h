/* replication.h — layer 6 (replication): the backlog (backlog.c) as the
 * session (session.c) sees it.
 */
#ifndef THA_REPLICATION_H
#define THA_REPLICATION_H

#include "heap.h"

typedef struct tha__bframe {
    uint32_t refs;      /* the backlog's + each session sending it */
    uint64_t seq, epoch;
    size_t len;
    size_t cap;         /* bytes allocated for data */
    struct tha_backlog *owner; /* gets the buffer back as its spare (counted
                                  in its live) */
    uint8_t data[];     /* the delta frame */
} tha__bframe_t;

struct tha_backlog {
    tha__bframe_t **ring; /* frames head.. in seq order */
    uint64_t head, n, cap;
    uint64_t bytes;       /* sum of frame lengths held */
    uint64_t max_bytes;
    uint64_t last_seq;    /* seq of the newest frame */
    uint64_t lineage;
    tha__bframe_t *spare; /* a released big frame buffer, reused by encode
                             (a fresh one costs a page fault per 4 KiB) */
    tha__bframe_t *hot;   /* encode's own buffer (HOT_BYTES), reused while no
                             one else holds it (refs 1: the backlog's), so a
                             delta is written where the last one was: in
                             cache, no page faults. The ring holds it only as
                             its newest frame, until tha_backlog_settle (or
                             the next encode) copies it out */
    uint64_t live;        /* frames it owns with a reference (ring, hot, sent
                             by sessions): a destroyed backlog is freed by
                             the release of its last one */
    int destroyed;
    tha_heap_t *heap;     /* the heap tha_backlog_encode makes frames of
                             (tha_heap.backlog points back); NULL until then */
};

/* The frame seq with a reference taken, or NULL if not held. */
tha__bframe_t *tha__backlog_get(tha_backlog_t *b, uint64_t seq);
void tha__bframe_release(tha__bframe_t *f);

/* The session's pending output as up to max pieces (ptr, len), in order,
 * without consuming any (tha_session_advance does), for one sendmsg of a
 * frame's header with the frame (net.c). The first piece is what
 * tha_session_output gives (bulk output is produced the same way). Returns
 * the number of pieces, 0 if none, or < 0 as tha_session_output would. */
int tha__session_output_vec(tha_session_t *s, const void **ptr, size_t *len, int max);

#endif /* THA_REPLICATION_H */

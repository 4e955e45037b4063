/* codec.h — layer 5 (codec): encode, verify and apply frames (codec.c).
 */
#ifndef THA_CODEC_H
#define THA_CODEC_H

#include "frame.h"

/* tha_heap_encode without the backlog-ownership check: the backlog's own
 * encode. hd (may be NULL) gets the header of the frame made. */
int tha__encode(tha_heap_t *h, int kind, void *buf, size_t cap, size_t *len,
                tha__frame_hdr_t *hd);
/* tha_heap_apply of a frame whose header tha__frame_parse gave as hd. */
int tha__apply(tha_heap_t *h, const tha__frame_hdr_t *hd, const void *frame, size_t len);

/* Encodes blocks from *from_block on (at most max_blocks, never past the
 * current top) as a segment frame stamped with the heap's seq; advances
 * *from_block. Dirty bits and seq are untouched. */
int tha__encode_segment(tha_heap_t *h, uint64_t *from_block, uint64_t max_blocks,
                        void *buf, size_t cap, size_t *len);
/* Bytes a segment of up to max_blocks from from_block needs. */
size_t tha__segment_size(const tha_heap_t *h, uint64_t from_block, uint64_t max_blocks);
/* Applies a segment (header hd, from tha__frame_parse) to a heap being
 * filled by bulk sync: checksums, fingerprint, lineage, run and pointer
 * ranges are checked; sequence and the region header are not (the image is
 * fuzzy until caught up). */
int tha__apply_segment(tha_heap_t *h, const tha__frame_hdr_t *hd, const void *frame,
                       size_t len);
/* The same for a segment read in two pieces: head (frame header, run header
 * and mask, head_len bytes; its header parsed as hd) anywhere, its data_len
 * bytes of data already in place in the heap at the run's offset (a heap
 * not yet visible to anyone, as while loading). Verified there, then
 * rebased in place; on failure the data bytes in the heap are garbage. */
int tha__apply_segment_in_place(tha_heap_t *h, const tha__frame_hdr_t *hd,
                                const void *head, size_t head_len, uint64_t data_len);

/* A same-address bulk sync's staging heap S, filled away from the base its
 * live heap L holds (L->addr == S->addr == L's base), goes live: L takes
 * S's image in place, as if a snapshot of it were applied to L (its old
 * allocations are gone; seq, epoch and lineage become S's; its tracking
 * mode stays, re-baselined). A log attached to L is detached (synced and
 * closed): it follows the old series, and a bulk sync's heap starts without
 * one. S is left to the caller to destroy. Fails only if L cannot commit
 * S's top (L unchanged; the detail in L->err). */
int tha__take_image(tha_heap_t *L, tha_heap_t *S);

/* Threads big work may use (tha_set_threads): 1 or 2. */
int tha__threads(void);

#endif /* THA_CODEC_H */

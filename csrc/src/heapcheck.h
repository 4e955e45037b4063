/* heapcheck.h — layer 4 (check): whole-heap walks (heapcheck.c), the type
 * check (typecheck.c; reach.c has nothing the other files call).
 */
#ifndef THA_HEAPCHECK_H
#define THA_HEAPCHECK_H

#include "frame.h"

/* One run of a frame being applied, as the codec's run walk (check_runs)
 * found and bounds-checked it: first block, blocks, its mask and data in
 * the frame. The walk indexes every run once; the delta check, the slot
 * check and the copy read the index instead of parsing the body again. */
typedef struct tha__vrun {
    uint64_t b0, nb;
    const uint8_t *data, *mask;
} tha__vrun_t;
/* Room for n entries of h's run index (h->scratch, kept between frames: a
 * fresh buffer costs page faults); NULL when out of memory. */
tha__vrun_t *tha__run_index(tha_heap_t *h, uint64_t n);

/* A frame's effect on allocator metadata, checked before it is
 * applied (THA_ECORRUPT with the detail in h->err; the heap is untouched).
 * A snapshot: its whole image, in the frame (data/mask: its one run). A
 * delta: what its runs touch, on the heap with the runs laid over it
 * (runs: the frame's hd->nruns runs, indexed); the heap must be consistent. */
int tha__check_snapshot(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
                        const uint8_t *mask);
int tha__check_delta(tha_heap_t *h, const tha__frame_hdr_t *hd, const tha__vrun_t *runs);
/* The slots of a verified frame's words (runs: its runs, indexed), on
 * the heap as the frame leaves it (its structure checked already): each
 * tagged NULL must lie in a pointer slot whose field's tag mask holds its
 * bits (else THA_ERANGE naming the field); with function pointer slots in
 * the schema, a word that is no function id must lie in none of them (else
 * THA_EFRAME naming the field). */
int tha__check_slots(tha_heap_t *h, const tha__frame_hdr_t *hd, const tha__vrun_t *runs);
/* Bulk sync, before the staging heap goes live: zeroes what is above its
 * top, then tha_heap_check; clears h->fuzzy when it passes. */
int tha__check_staging(tha_heap_t *h);

/* typecheck.c: every pointer slot of the heap against its declared type
 * (tha_heap_check_types), what prefixing the message; and the pointer word
 * at region offset at, a word of the pointer map (encode under
 * THA_DEBUG_TYPES). 0 or THA_EMISMATCH with the detail in h->err. */
int tha__check_types(tha_heap_t *h, const char *what);
int tha__check_word_type(tha_heap_t *h, uint64_t at, const char *what);

#endif /* THA_HEAPCHECK_H */

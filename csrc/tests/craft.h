/* craft.h — what the C tests that hand-craft frames share: encode a frame,
 * find where a region offset travels in it, and recompute its checksums
 * after an edit. Include after check.h. */
#ifndef THA_TESTS_CRAFT_H
#define THA_TESTS_CRAFT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tha_internal.h"

/* A new frame of h (kind), its length in *len; free() it. */
static inline uint8_t *encode(tha_heap_t *h, int kind, size_t *len) {
    size_t n;
    CHECK_OK(tha_heap_frame_size(h, kind, &n));
    uint8_t *f = malloc(n);
    CHECK_OK(tha_heap_encode(h, kind, f, n, len));
    return f;
}

/* Both CRCs of an edited frame recomputed. */
static inline void reseal(uint8_t *f, size_t len) {
    tha__frame_hdr_t hd;
    memcpy(&hd, f, sizeof hd);
    hd.body_crc = tha_crc32c(0, f + sizeof hd, len - sizeof hd);
    hd.header_crc = tha_crc32c(0, &hd, offsetof(tha__frame_hdr_t, header_crc));
    memcpy(f, &hd, sizeof hd);
}

/* Where the bytes of region offset off travel in frame f (and, with maskp,
 * the pointer-mask byte of their block), or NULL. */
static inline uint8_t *in_frame_at(uint8_t *f, uint64_t off, uint8_t **maskp) {
    tha__frame_hdr_t hd;
    memcpy(&hd, f, sizeof hd);
    uint8_t *p = f + sizeof hd + tha__align_up(hd.schema_len, 8);
    for (uint32_t i = 0; i < hd.nruns; i++) {
        tha__run_t run;
        memcpy(&run, p, sizeof run);
        uint8_t *mask = p + sizeof run, *data = mask + tha__align_up(run.nblocks, 8);
        if (off >= run.offset && off < run.offset + run.nblocks * THA__BLOCK) {
            if (maskp) *maskp = mask + (off - run.offset) / THA__BLOCK;
            return data + (off - run.offset);
        }
        p = data + run.nblocks * THA__BLOCK;
    }
    return NULL;
}

static inline uint8_t *in_frame(uint8_t *f, uint64_t off) {
    return in_frame_at(f, off, NULL);
}

#endif

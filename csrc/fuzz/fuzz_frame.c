/* fuzz_frame.c — tha_heap_apply of one snapshot or delta frame to a mirror
 * of fz_source. Input: a flags byte, then the frame. flags bit 1: the
 * mirror is same-address (at FZ_BASE, a mirror of fz_source_mode(1), whose
 * frames carry raw addresses and an untyped buffer). Unless flags bit 0
 * says not to, the harness makes the frame follow the mirror (lineage, the
 * next seq for a delta) and reseals its checksums, so mutations reach the
 * structural and allocator-metadata checks. Oracle: a refused frame leaves
 * the mirror byte for byte as it was; an accepted one leaves a sound heap
 * that survives fz_oracle. */
#include "fuzz_common.h"

static uint8_t *snap[2];
static size_t snap_len[2];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int m = 0; m < 2 && !snap[1]; m++) { /* the source leaves FZ_BASE free */
        tha_heap_t *src = fz_source_mode(m);
        snap[m] = fz_encode(src, THA_FRAME_SNAPSHOT, &snap_len[m]);
        tha_heap_destroy(src);
    }
    if (size < 1) return 0;
    uint8_t flags = data[0];
    const int fixed = flags >> 1 & 1;
    size_t len = size - 1;
    uint8_t *f = malloc(len ? len : 1);
    memcpy(f, data + 1, len);
    tha_heap_t *h;
    if (fixed)
        fz_must(tha_heap_create_at(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT, FZ_BASE),
                "create at FZ_BASE");
    else
        fz_must(tha_heap_create(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT), "create");
    fz_must(tha_heap_apply(h, snap[fixed], snap_len[fixed]), "apply the base snapshot");
    if (len >= sizeof(tha__frame_hdr_t) && !(flags & 1)) {
        tha__frame_hdr_t hd;
        memcpy(&hd, f, sizeof hd);
        hd.lineage = h->lineage;
        if (hd.kind == THA_FRAME_DELTA) hd.seq = h->seq + 1;
        if (hd.kind == THA_FRAME_SNAPSHOT) hd.epoch = h->epoch;
        memcpy(f, &hd, sizeof hd);
        fz_reseal(f, len);
    }
    uint64_t top = tha__reg(h)->top, seq = h->seq;
    uint8_t *img = malloc(top), *map = malloc(top / THA__BLOCK);
    memcpy(img, h->base, top);
    memcpy(map, h->ptrmap, top / THA__BLOCK);
    int rc = tha_heap_apply(h, f, len);
    if (rc) {
        if (tha__reg(h)->top != top || h->seq != seq || memcmp(h->base, img, top) ||
            memcmp(h->ptrmap, map, top / THA__BLOCK))
            fz_fail(h, "a refused frame changed the heap");
        if (tha_heap_check(h)) fz_fail(h, "the heap a frame was refused on is broken");
    } else {
        fz_oracle(h);
    }
    free(img);
    free(map);
    free(f);
    tha_heap_destroy(h);
    return 0;
}

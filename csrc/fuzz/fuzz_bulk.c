/* fuzz_bulk.c — bulk sync into a staging heap, then go-live. Input: items
 * [u32 length][bytes]; a segment item goes through tha__frame_parse and
 * tha__apply_segment (as the session takes SNAP_DATA), any
 * other frame through tha_heap_apply (catch-up deltas on the fuzzy
 * image). The harness gives each item the staging heap's lineage (and a
 * delta the next seq) and reseals it. Then tha__check_staging, as the
 * session runs it before the heap goes live; if it passes, fz_oracle.
 * A first item of frame version 2 makes the staging heap same-address
 * (FZ_BASE, as an active's HELLO does): with an even header epoch it is
 * mapped there; with an odd one it is filled elsewhere, as when the live
 * mirror holds the base, and once it passes a live heap at FZ_BASE takes
 * its image (tha__take_image) and faces the oracle. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tha_heap_t *h;
    tha__frame_hdr_t first = {0};
    if (size >= 4 + sizeof first) memcpy(&first, data + 4, sizeof first);
    const int fixed = first.version == 2, away = fixed && (first.epoch & 1);
    char why[256];
    if (fixed)
        fz_must(tha__heap_new(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT,
                              away ? 0 : (uint64_t)(uintptr_t)FZ_BASE,
                              (uint64_t)(uintptr_t)FZ_BASE, why, sizeof why),
                "create the staging heap");
    else
        fz_must(tha_heap_create(&h, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT), "create");
    h->fuzzy = 1; /* as on_snap_begin makes it */
    h->seq = 1;
    size_t pos = 0;
    int items = 0;
    while (pos + 4 <= size && items < 64) {
        uint32_t n;
        memcpy(&n, data + pos, 4);
        pos += 4;
        if (n > size - pos) n = (uint32_t)(size - pos);
        uint8_t *f = malloc(n ? n : 1);
        memcpy(f, data + pos, n);
        pos += n;
        items++;
        tha__frame_hdr_t hd = {0};
        if (n >= sizeof hd) {
            memcpy(&hd, f, sizeof hd);
            hd.lineage = h->lineage;
            if (hd.kind == THA_FRAME_DELTA) hd.seq = h->seq + 1;
            if (hd.kind == THA__FRAME_SEGMENT) hd.seq = h->seq;
            memcpy(f, &hd, sizeof hd);
            fz_reseal(f, n);
        }
        tha__frame_hdr_t ph; /* as the session does: parse once, then apply */
        if (hd.kind == THA__FRAME_SEGMENT) {
            if (tha__frame_parse(f, n, &ph, h->err, sizeof h->err) == 0)
                (void)tha__apply_segment(h, &ph, f, n);
        } else
            (void)tha_heap_apply(h, f, n);
        free(f);
    }
    if (items && tha__check_staging(h) == 0) {
        if (away) { /* go-live in place, as maybe_go_live does */
            tha_heap_t *live;
            fz_must(tha_heap_create_at(&live, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT,
                                       FZ_BASE), "create the live heap");
            fz_must(tha__take_image(live, h), "take the image");
            tha_heap_destroy(h);
            h = live;
        }
        fz_oracle(h);
    }
    tha_heap_destroy(h);
    return 0;
}

/* track.c — which blocks changed, and which words are pointers.
 * dirty:  one bit per 64-byte block of the region, set by every write the
 *         library makes and by tha_heap_touch; cleared when a frame is made.
 * ptrmap: one byte per block, bit i = word i (8 bytes) holds a pointer.
 *         It is the relocation table of every live object laid over the
 *         region, so encode and apply never walk objects.
 * shadow: diff and wp modes, a copy of the image as of the last frame;
 *         blocks that differ from it are what plain writes changed. diff
 *         compares all of [0, top); wp only the pages wp.c found written.
 * All live outside the region: they describe it, they are not state.
 */
#include "heap.h"

#include <errno.h>
#include <sys/mman.h>

/* Summary bits for dirty words wb..we. */
static void sum_set(tha_heap_t *h, uint64_t wb, uint64_t we) {
    uint64_t sb = wb / 64, se = we / 64;
    uint64_t mb = ~0ull << (wb % 64), me = ~0ull >> (63 - we % 64);
    if (sb == se) {
        h->dsum[sb] |= mb & me;
        return;
    }
    h->dsum[sb] |= mb;
    for (uint64_t w = sb + 1; w < se; w++) h->dsum[w] = ~0ull;
    h->dsum[se] |= me;
}

void tha__mark(tha_heap_t *h, uint64_t off, uint64_t len) {
    if (len == 0) return;
    uint64_t b = off / THA__BLOCK, e = (off + len - 1) / THA__BLOCK;
    THA_ASSERT(e < h->nblocks);
    uint64_t wb = b / 64, we = e / 64;
    uint64_t mb = ~0ull << (b % 64), me = ~0ull >> (63 - e % 64);
    sum_set(h, wb, we);
    if (wb == we) {
        h->dirty[wb] |= mb & me;
        return;
    }
    h->dirty[wb] |= mb;
    for (uint64_t w = wb + 1; w < we; w++) h->dirty[w] = ~0ull;
    h->dirty[we] |= me;
}

/* Calls visit on every dirty word the summary flags; words stay as they are. */
#define FOR_EACH_FLAGGED_WORD(h, wvar, body)                                    \
    do {                                                                        \
        uint64_t nsum_ = ((h)->nblocks + 4095) / 4096;                          \
        for (uint64_t si_ = 0; si_ < nsum_; si_++)                              \
            for (uint64_t m_ = (h)->dsum[si_]; m_; m_ &= m_ - 1) {              \
                uint64_t wvar = si_ * 64 + (uint64_t)__builtin_ctzll(m_);       \
                body;                                                           \
            }                                                                   \
    } while (0)

void tha__clear_dirty(tha_heap_t *h) {
    FOR_EACH_FLAGGED_WORD(h, w, h->dirty[w] = 0);
    memset(h->dsum, 0, ((h->nblocks + 4095) / 4096) * sizeof(uint64_t));
}

uint64_t tha__count_dirty(const tha_heap_t *h) {
    uint64_t n = 0;
    FOR_EACH_FLAGGED_WORD(h, w, n += (uint64_t)__builtin_popcountll(h->dirty[w]));
    return n;
}

void tha__ptrmap_set(tha_heap_t *h, uint64_t off, const tha__type_t *t,
                     uint32_t count) {
    for (uint64_t i = 0; i < count; i++) {
        uint64_t elem = off + i * t->size;
        for (uint32_t s = 0; s < t->nslots; s++) {
            uint64_t word = (elem + t->slots[s].offset) / 8;
            h->ptrmap[word / 8] |= (uint8_t)(1u << (word % 8));
        }
    }
}

void tha__ptrmap_clear(tha_heap_t *h, uint64_t off, uint64_t len) {
    THA_ASSERT(off % 8 == 0 && len % 8 == 0);
    uint64_t w = off / 8, we = (off + len) / 8;
    while (w < we) {
        uint64_t blk = w / 8;
        unsigned lo = (unsigned)(w % 8);
        unsigned hi = (we - blk * 8) >= 8 ? 8 : (unsigned)(we - blk * 8);
        uint8_t bits = (uint8_t)(((1u << hi) - 1) & ~((1u << lo) - 1));
        if (h->ptrmap[blk] & bits) {
            h->ptrmap[blk] &= (uint8_t)~bits;
            tha__mark(h, blk * THA__BLOCK, THA__BLOCK);
        }
        w = blk * 8 + hi;
    }
}

/* Compares the pages of [from, to) (clamped to top) with the shadow: marks
 * each block that differs and copies it over. What wp.c reports written
 * pages to. */
static void track_diff(tha_heap_t *h, uint64_t from, uint64_t to) {
    const uint64_t top = tha__reg(h)->top;
    const uint8_t *img = h->base;
    uint8_t *sh = h->shadow;
    if (to > top) to = top;
    /* Whole pages first: most are unchanged and memcmp streams them at
     * memory bandwidth; only a changed page is looked at block by block. */
    for (uint64_t off = from; off < to; off += THA__PAGE) {
        if (memcmp(img + off, sh + off, THA__PAGE) == 0) continue;
        for (uint64_t b = off; b < off + THA__PAGE; b += THA__BLOCK)
            if (memcmp(img + b, sh + b, THA__BLOCK) != 0) {
                memcpy(sh + b, img + b, THA__BLOCK);
                tha__mark(h, b, THA__BLOCK);
            }
    }
}

void tha__track_collect(tha_heap_t *h) {
    if (h->mech == THA__MECH_UFFD || h->mech == THA__MECH_MPROTECT)
        tha__wp_collect(h, track_diff);
    else if (h->mech == THA__MECH_DIFF)
        track_diff(h, 0, tha__reg(h)->top);
}

void tha__track_sync_shadow(tha_heap_t *h, uint64_t b0, uint64_t n) {
    if (h->shadow)
        memcpy(h->shadow + b0 * THA__BLOCK, h->base + b0 * THA__BLOCK, n * THA__BLOCK);
}

/* ---- changing the mode of a live heap ---------------------------------- */

static int mech_of_request(int tracking, int mech_now) {
    switch (tracking) {
    case THA_TRACK_EXPLICIT: return THA__MECH_EXPLICIT;
    case THA_TRACK_DIFF: return THA__MECH_DIFF;
    case THA_TRACK_AUTO: return tha__wp_auto_mech();
    default: /* wp: a heap already under either wp mechanism keeps it */
        return mech_now == THA__MECH_UFFD || mech_now == THA__MECH_MPROTECT
                   ? mech_now : -1; /* -1: whatever tha__wp_open finds */
    }
}

int tha_heap_set_tracking(tha_heap_t *h, int tracking) {
    if (!h || tracking < THA_TRACK_AUTO || tracking > THA_TRACK_WP) return THA_EINVAL;
    int want = mech_of_request(tracking, h->mech);
    if (want == h->mech) return 0;
    const int old_mech = h->mech;
    /* What the old mechanism saw so far becomes dirty bits: they travel in
     * the next frame whatever the new mode finds. */
    tha__track_collect(h);
    h->collected = 0;
    int made_shadow = 0;
    if (want != THA__MECH_EXPLICIT && !h->shadow) {
        void *sh = mmap(NULL, h->capacity, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sh == MAP_FAILED)
            return tha__hfail(h, -errno, "tracking: cannot map a %llu-byte shadow",
                              (unsigned long long)h->capacity);
        h->shadow = sh;
        made_shadow = 1;
        /* The baseline is the image as it is now: changes count from here. */
        memcpy(h->shadow, h->base, tha__reg(h)->top);
    }
    if (old_mech == THA__MECH_UFFD || old_mech == THA__MECH_MPROTECT)
        tha__wp_stop(h); /* now diff, the shadow up to date */
    else if (old_mech == THA__MECH_EXPLICIT && h->shadow)
        h->mech = THA__MECH_DIFF;
    if (want == THA__MECH_EXPLICIT) {
        munmap(h->shadow, h->capacity);
        h->shadow = NULL;
        h->mech = THA__MECH_EXPLICIT;
        h->tracking = THA_TRACK_EXPLICIT;
        return 0;
    }
    if (want == THA__MECH_DIFF) {
        h->tracking = THA_TRACK_DIFF;
        return 0;
    }
    /* wp (or auto finding uffd): set up on the committed pages */
    int rc = tha__wp_open(h, tracking);
    if (!rc) rc = tha__wp_start(h);
    if (rc) { /* back to what it was: old was explicit or diff here */
        tha__wp_close(h);
        if (made_shadow) {
            munmap(h->shadow, h->capacity);
            h->shadow = NULL;
        }
        h->mech = old_mech;
        h->tracking = old_mech == THA__MECH_EXPLICIT ? THA_TRACK_EXPLICIT : THA_TRACK_DIFF;
        return tha__hfail(h, rc, "tracking wp: cannot start on a live heap: %s",
                          tha_strerror(rc));
    }
    if (h->mech == THA__MECH_DIFF) h->tracking = THA_TRACK_DIFF; /* auto, no uffd */
    return 0;
}

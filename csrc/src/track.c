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
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* ---- collect: the shadow compare ---------------------------------------
 * One page is one word of the dirty map (64 blocks of 64 bytes), so a
 * compare builds that word whole: each block of a page is loaded once from
 * the image and once from the shadow, and a block that differs is copied
 * over and its bit set. Only a changed block is written to the shadow.
 * Two compares of disjoint page ranges may run at once if they share no
 * word of dsum (64 pages): split points are multiples of SPLIT_ALIGN. */

_Static_assert(THA__PAGE == 64 * THA__BLOCK, "a page is one word of the dirty map");

#define SPLIT_ALIGN (64u * THA__PAGE) /* one dsum word's pages */
#define PAR_BYTES (4u << 20)          /* compares of >= 4 MiB use two threads */

/* Threads a large compare may use (tha_set_threads sets it). */
static int track_threads = 1;
__attribute__((constructor)) static void track_ctor(void) {
    track_threads = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 2 : 1;
}

void tha__track_set_threads(int n) { track_threads = n; }

/* Bit i set: block i of the page at a differs from the one at b. */
static uint64_t page_diff_portable(const uint8_t *a, const uint8_t *b) {
    uint64_t m = 0;
    for (unsigned i = 0; i < 64; i++) {
        const uint8_t *x = a + i * THA__BLOCK, *y = b + i * THA__BLOCK;
        uint64_t d = 0;
        for (unsigned j = 0; j < THA__BLOCK; j += 8) {
            uint64_t u, v;
            memcpy(&u, x + j, 8);
            memcpy(&v, y + j, 8);
            d |= u ^ v;
        }
        m |= (uint64_t)(d != 0) << i;
    }
    return m;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* A whole-page OR of differences first: most pages are unchanged and this
 * streams them as fast as memcmp; a changed page (now in L1) is looked at
 * again block by block. */
__attribute__((target("avx2"))) static uint64_t page_diff_avx2(const uint8_t *a,
                                                                const uint8_t *b) {
    const __m256i *x = (const __m256i *)(const void *)a;
    const __m256i *y = (const __m256i *)(const void *)b;
    __m256i acc = _mm256_setzero_si256();
    for (unsigned i = 0; i < THA__PAGE / 32; i += 4) {
        __m256i d0 = _mm256_xor_si256(_mm256_load_si256(x + i), _mm256_load_si256(y + i));
        __m256i d1 = _mm256_xor_si256(_mm256_load_si256(x + i + 1), _mm256_load_si256(y + i + 1));
        __m256i d2 = _mm256_xor_si256(_mm256_load_si256(x + i + 2), _mm256_load_si256(y + i + 2));
        __m256i d3 = _mm256_xor_si256(_mm256_load_si256(x + i + 3), _mm256_load_si256(y + i + 3));
        acc = _mm256_or_si256(acc, _mm256_or_si256(_mm256_or_si256(d0, d1),
                                                   _mm256_or_si256(d2, d3)));
    }
    if (_mm256_testz_si256(acc, acc)) return 0;
    uint64_t m = 0;
    for (unsigned i = 0; i < 64; i++) {
        __m256i d = _mm256_or_si256(
            _mm256_xor_si256(_mm256_load_si256(x + 2 * i), _mm256_load_si256(y + 2 * i)),
            _mm256_xor_si256(_mm256_load_si256(x + 2 * i + 1), _mm256_load_si256(y + 2 * i + 1)));
        m |= (uint64_t)!_mm256_testz_si256(d, d) << i;
    }
    return m;
}

static uint64_t (*page_diff)(const uint8_t *, const uint8_t *) = page_diff_portable;
__attribute__((constructor)) static void page_diff_ctor(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) page_diff = page_diff_avx2;
}
#else
#define page_diff page_diff_portable
#endif

/* Compares pages [from, to) (page aligned, below top) with the shadow. */
static void cmp_pages(tha_heap_t *h, uint64_t from, uint64_t to) {
    const uint8_t *img = h->base;
    uint8_t *sh = h->shadow;
    for (uint64_t off = from; off < to; off += THA__PAGE) {
        uint64_t m = page_diff(img + off, sh + off);
        if (!m) continue;
        uint64_t p = off / THA__PAGE;
        h->dirty[p] |= m;
        h->dsum[p / 64] |= 1ull << (p % 64);
        for (; m; m &= m - 1) {
            uint64_t b = off + (uint64_t)__builtin_ctzll(m) * THA__BLOCK;
            memcpy(sh + b, img + b, THA__BLOCK);
        }
    }
}

/* Pages to compare, in order: what a collect gathers before comparing. */
typedef struct pages {
    uint64_t (*r)[2]; /* [from, to) offsets */
    size_t n, cap;
    uint64_t bytes;
    int oom;          /* a range could not be kept: compare all of [0, top) */
} pages_t;

/* Compares the ranges of ps clipped to [lo, hi). wp's ranges are scattered
 * pages, where the prefetchers stop: the next range's first lines are
 * asked for while this one is compared. Same-run medians at f = 1% of 1M
 * emp (7,500 written pages), one thread: 7.1 -> 5.6 ms. */
static void cmp_ranges(tha_heap_t *h, const pages_t *ps, uint64_t lo, uint64_t hi) {
    for (size_t i = 0; i < ps->n; i++) {
        uint64_t a = ps->r[i][0] > lo ? ps->r[i][0] : lo;
        uint64_t b = ps->r[i][1] < hi ? ps->r[i][1] : hi;
        if (i + 1 < ps->n) {
            uint64_t nx = ps->r[i + 1][0];
            for (unsigned k = 0; k < 2; k++) {
                __builtin_prefetch(h->base + nx + k * THA__BLOCK, 0);
                __builtin_prefetch(h->shadow + nx + k * THA__BLOCK, 0);
            }
        }
        if (a < b) cmp_pages(h, a, b);
    }
}

typedef struct cmp_half {
    tha_heap_t *h;
    const pages_t *ps;
    uint64_t lo, hi;
} cmp_half_t;

static void *cmp_main(void *arg) {
    cmp_half_t *c = arg;
    cmp_ranges(c->h, c->ps, c->lo, c->hi);
    return NULL;
}

/* The offset that splits the bytes of ps in halves, rounded to SPLIT_ALIGN
 * (0 or past the end: no split). */
static uint64_t split_at(const pages_t *ps) {
    uint64_t half = ps->bytes / 2;
    for (size_t i = 0; i < ps->n; i++) {
        uint64_t len = ps->r[i][1] - ps->r[i][0];
        if (half < len) return tha__align_up(ps->r[i][0] + half, SPLIT_ALIGN);
        half -= len;
    }
    return 0;
}

/* Compares every range of ps, on two threads when there is much of it. */
static void cmp_all(tha_heap_t *h, const pages_t *ps) {
    uint64_t mid = ps->bytes >= PAR_BYTES && track_threads > 1 ? split_at(ps) : 0;
    pthread_t t;
    cmp_half_t second = {h, ps, mid, UINT64_MAX};
    if (!mid || pthread_create(&t, NULL, cmp_main, &second) != 0) {
        cmp_ranges(h, ps, 0, UINT64_MAX);
        return;
    }
    cmp_ranges(h, ps, 0, mid);
    pthread_join(t, NULL);
}

static void add_range(pages_t *ps, uint64_t from, uint64_t to) {
    if (ps->n && ps->r[ps->n - 1][1] == from) { /* adjacent: one range */
        ps->r[ps->n - 1][1] = to;
    } else {
        if (ps->n == ps->cap) {
            size_t cap = ps->cap ? ps->cap * 2 : 256;
            void *r = realloc(ps->r, cap * sizeof *ps->r);
            if (!r) {
                ps->oom = 1;
                return;
            }
            ps->r = r;
            ps->cap = cap;
        }
        ps->r[ps->n][0] = from;
        ps->r[ps->n][1] = to;
        ps->n++;
    }
    ps->bytes += to - from;
}

/* wp.c's report: pages [from, to) may have been written. */
static void found_pages(tha_heap_t *h, void *ctx, uint64_t from, uint64_t to) {
    pages_t *ps = ctx;
    const uint64_t top = tha__reg(h)->top;
    if (to > top) to = top;
    if (from < to) add_range(ps, from, to);
}

void tha__track_collect(tha_heap_t *h) {
    const uint64_t top = tha__reg(h)->top;
    if (h->mech != THA__MECH_EXPLICIT) h->collects++;
    if (h->mech == THA__MECH_DIFF) {
        uint64_t r[1][2] = {{0, top}};
        pages_t all = {.r = r, .n = 1, .cap = 1, .bytes = top};
        cmp_all(h, &all);
    } else if (h->mech == THA__MECH_UFFD || h->mech == THA__MECH_MPROTECT) {
        pages_t ps = {0};
        tha__wp_collect(h, found_pages, &ps);
        if (ps.oom) { /* the written pages are re-protected: compare them all */
            uint64_t r[1][2] = {{0, top}};
            pages_t all = {.r = r, .n = 1, .cap = 1, .bytes = top};
            cmp_all(h, &all);
        } else {
            cmp_all(h, &ps);
        }
        free(ps.r);
    }
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

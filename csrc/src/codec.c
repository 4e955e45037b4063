/* codec.c — snapshot and delta frames.
 * A frame is a header, (snapshot only) the schema, then runs of consecutive
 * 64-byte blocks, each run carrying one pointer-mask byte per block. Encode
 * copies blocks and rewrites pointer words to region offsets (function
 * pointers to registry ids); apply verifies everything first — checksums,
 * identity, sequence, every run and pointer word — and only then copies and
 * rebases.
 * Speed: a "big" run (a snapshot's image, a long dirty stretch) goes through
 * fused kernels that touch each byte once per pass while it is in registers:
 * copy + pointer rewrite + CRC on encode, CRC + pointer check on verify,
 * copy + rebase on apply, with the CRC split over three interleaved streams
 * (thirds of the run, combined by tha__crc32c_shift) and non-temporal stores
 * past the cache size. "Small" runs (a delta's scattered blocks) are copied
 * and rewritten one by one and their bytes checksummed later in batches, so
 * no run waits for the CRC's latency chain.
 * Byte order: little-endian hosts only (checked at compile time).
 */
#include "codec.h"
#include "heapcheck.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FAST_X86 1
#endif

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the frame format is little-endian; big-endian hosts need byte swaps");

#define CHUNK_BLOCKS 1024u    /* portable path: 64 KiB of data per pass */
#define BIG_BLOCKS 2048u      /* runs of >= 128 KiB take the fused kernels */
#define NT_BLOCKS 16384u      /* runs of >= 1 MiB are stored non-temporally */
#define CRC_BATCH (128u << 10) /* small runs: checksum every 128 KiB written */

#define PAR_BLOCKS (1u << 18) /* runs of >= 16 MiB split across two threads */

/* 1 when the CPU has the CRC32C instruction (SSE4.2): fused kernels. */
static int fast;
/* Threads a big run may use (tha_set_threads); 2 when the machine has two
 * CPUs or more. Read without a lock: changing it while frames are being
 * encoded or applied only changes how they are computed. */
static int codec_threads = 1;
__attribute__((constructor)) static void codec_ctor(void) {
#ifdef FAST_X86
    __builtin_cpu_init();
    fast = __builtin_cpu_supports("sse4.2");
#endif
    codec_threads = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 2 : 1;
}

int tha_set_threads(int n) {
    if (n < 1 || n > 2) return THA_EINVAL;
    codec_threads = n;
    tha__track_set_threads(n);
    return 0;
}

int tha__threads(void) { return codec_threads; }

/* One half of a big run for run_halves: which kernel, on what. */
typedef struct half {
    int (*fn)(struct half *);
    tha_heap_t *h;          /* the heap, or a private copy (its err buffer) */
    tha_heap_t copy;
    int kind;
    const tha__frame_hdr_t *hd;
    uint8_t *dst;
    const uint8_t *src, *mask;
    uint64_t b0, nb;
    uint32_t raw;
    int rc;
} half_t;

static void *half_main(void *arg) {
    half_t *x = arg;
    x->rc = x->fn(x);
    return NULL;
}

/* Runs a on this thread and b on a second one (or both here if none can
 * start); the halves touch disjoint bytes. */
static void run_halves(half_t *a, half_t *b) {
    pthread_t t;
    if (pthread_create(&t, NULL, half_main, b) != 0) {
        half_main(b);
        half_main(a);
        return;
    }
    half_main(a);
    pthread_join(t, NULL);
}

/* Splits [0, nb) of a run in two halves that share fn and arguments; the
 * second works on a copy of the heap struct so that error text never races. */
static void split(half_t *a, half_t *b, tha_heap_t *h, uint64_t nb, uint32_t raw) {
    uint64_t n1 = nb / 2;
    *b = *a;
    a->h = h;
    a->nb = n1;
    a->raw = raw;
    b->copy = *h;
    b->h = &b->copy;
    b->b0 = a->b0 + n1;
    b->nb = nb - n1;
    b->raw = 0;
    if (b->dst) b->dst += n1 * THA__BLOCK;
    b->src += n1 * THA__BLOCK;
    b->mask += n1;
}

/* raw CRC of a||b from the halves' raw CRCs. */
static uint32_t joined_crc(const half_t *a, const half_t *b) {
    return tha__crc32c_shift(a->raw, b->nb * THA__BLOCK) ^ b->raw;
}

#define kind_name tha__frame_kind_name

/* First word index >= wi whose summary bit is set (the summary has a bit
 * per word of the dirty map), or nwords. */
static inline uint64_t next_flagged(const uint64_t *sum, uint64_t wi, uint64_t nwords) {
    uint64_t si = wi >> 6, nsum = (nwords + 63) >> 6;
    if (si >= nsum) return nwords;
    uint64_t m = sum[si] & (~0ull << (wi & 63));
    while (!m) {
        if (++si >= nsum) return nwords;
        m = sum[si];
    }
    return (si << 6) + (uint64_t)__builtin_ctzll(m);
}

/* Next run of dirty blocks at or after *pos and below limit: 1 with its
 * first block and length, 0 when there is none. Clean stretches are
 * skipped through the summary, so a scan costs what is dirty, not the
 * heap's size; a run may cross words. */
static inline int next_run(const tha_heap_t *h, uint64_t limit, uint64_t *pos,
                           uint64_t *start, uint64_t *n) {
    const uint64_t *bits = h->dirty, nwords = (limit + 63) >> 6;
    uint64_t b = *pos;
    while (b < limit) {
        uint64_t wi = b >> 6, w = bits[wi] & (~0ull << (b & 63));
        if (!w) {
            b = next_flagged(h->dsum, wi + 1, nwords) << 6;
            continue;
        }
        uint64_t s = (wi << 6) + (uint64_t)__builtin_ctzll(w);
        if (s >= limit) break;
        uint64_t inv = ~bits[wi] & (~0ull << (s & 63)), e;
        while (!inv && ((wi + 1) << 6) < limit) inv = ~bits[++wi];
        e = inv ? (wi << 6) + (uint64_t)__builtin_ctzll(inv) : limit;
        if (e > limit) e = limit;
        *start = s;
        *n = e - s;
        *pos = e;
        return 1;
    }
    *pos = limit;
    return 0;
}

static int frame_size_now(const tha_heap_t *h, int kind, size_t *size) {
    const tha__region_t *r = tha__reg(h);
    uint64_t top_blocks = r->top / THA__BLOCK, n = THA_FRAME_HEADER_SIZE;
    if (kind == THA_FRAME_SNAPSHOT) {
        size_t slen;
        int rc = tha_schema_serialize(h->schema, NULL, 0, &slen);
        if (rc) return rc;
        n += tha__align_up(slen, 8) + tha__run_bytes(top_blocks);
    } else if (kind == THA_FRAME_DELTA) {
        uint64_t pos = 0, b, len;
        while (next_run(h, top_blocks, &pos, &b, &len)) n += tha__run_bytes(len);
    } else {
        return THA_EINVAL;
    }
    *size = n;
    return 0;
}

int tha_heap_frame_size(tha_heap_t *h, int kind, size_t *size) {
    int rc = tha__roots_refresh(h);
    if (!rc) rc = tha__statics_push(h);
    if (rc) return rc;
    tha__track_collect(h);
    h->collected = h->mech != THA__MECH_EXPLICIT;
    return frame_size_now(h, kind, size);
}

/* ---- encode ----------------------------------------------------------- */

/* The slot of the pointer word at off (in a live allocation, else NULL),
 * with the object's payload offset, element and the field path. */
static const tha__slot_t *slot_of(const tha_heap_t *h, uint64_t off, uint64_t *payload,
                                  uint64_t *elem, uint32_t *count, char *where,
                                  size_t cap) {
    tha__objhdr_t *oh;
    *payload = tha__find(h, off, &oh);
    if (!*payload) return NULL;
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    uint64_t rel = off - *payload;
    *elem = rel / t->size;
    *count = oh->count;
    if (where) tha__schema_describe(h->schema, oh->type_id, rel % t->size, where, cap);
    return tha__schema_slot_at(t, rel % t->size);
}

/* One bad pointer blocks every frame until it is fixed, so the message
 * says which object and field, what it holds, and what to do. */
static int foreign(tha_heap_t *h, int kind, uint64_t off, uint64_t value) {
    char where[160], obj[80];
    uint64_t payload, elem = 0;
    uint32_t count = 0;
    const tha__slot_t *sl = slot_of(h, off, &payload, &elem, &count, where, sizeof where);
    if (!payload)
        return tha__hfail(h, THA_EFOREIGN, "%s: pointer word at offset 0x%llx (allocator "
                          "metadata or free memory) holds 0x%llx", kind_name(kind),
                          (unsigned long long)off, (unsigned long long)value);
    if (count > 1)
        snprintf(obj, sizeof obj, "element %llu of the object at 0x%llx",
                 (unsigned long long)elem, (unsigned long long)payload);
    else
        snprintf(obj, sizeof obj, "object at 0x%llx", (unsigned long long)payload);
    if (value <= THA__TAG_BITS)
        return tha__hfail(h, THA_EFOREIGN, "%s: %s (%s) holds 0x%llx, a tagged NULL "
                          "outside the field's tag mask 0x%x: declare the bits in its "
                          "tag_mask (THA_FIELD_PTR_TAGGED) or clear them", kind_name(kind),
                          where, obj, (unsigned long long)value, sl ? sl->tag_mask : 0);
    return tha__hfail(h, THA_EFOREIGN, "%s: %s (%s) holds 0x%llx: not in the heap, a "
                      "function or an extern; register it (tha_schema_add_extern) or "
                      "clear the field", kind_name(kind), where, obj,
                      (unsigned long long)value);
}

/* A pointer word that is neither NULL nor in the heap: a registered
 * function becomes its tagged id, an address inside a bound extern the
 * extern's id and offset, a tagged NULL in a slot whose field declares
 * those bits a tagged NULL; anything else is foreign. */
__attribute__((noinline, cold)) static int wire_slow(tha_heap_t *h, int kind,
                                                     uint64_t off, uint64_t v,
                                                     uint64_t *out) {
    int64_t id = tha__schema_func_id(h->schema, (void (*)(void))(uintptr_t)v);
    if (id >= 0) {
        *out = THA__FUNC_TAG | (uint64_t)id;
        return 0;
    }
    uint64_t in;
    id = tha__schema_extern_at(h->schema, (uintptr_t)v, &in);
    if (id >= 0) {
        *out = THA__WIRE_EXTERN | (uint64_t)id << THA__EXTERN_ID_SHIFT | in;
        return 0;
    }
    if (v <= THA__TAG_BITS) {
        uint64_t payload, elem;
        uint32_t count;
        const tha__slot_t *sl = slot_of(h, off, &payload, &elem, &count, NULL, 0);
        if (sl && !(v & ~(uint64_t)sl->tag_mask)) {
            *out = THA__WIRE_TAGNULL | v;
            return 0;
        }
    }
    return foreign(h, kind, off, v);
}

/* Rewrites the pointer words of nb blocks copied to dst (first block b0):
 * heap addresses become offsets (same-address mode, fixed: stay as they
 * are), functions become tagged registry ids. */
static inline __attribute__((always_inline)) int
to_wire_k(tha_heap_t *h, int kind, uint8_t *dst, const uint8_t *mask, uint64_t b0,
          uint64_t nb, const int fixed) {
    uint64_t base = (uint64_t)(uintptr_t)h->base, top = tha__reg(h)->top;
    for (uint64_t i = 0; i < nb; i++) {
        for (unsigned m = mask[i]; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctz(m);
            uint64_t *w = (uint64_t *)(dst + i * THA__BLOCK + j * 8), v = *w;
            uint64_t o = v - base;
            if (THA__LIKELY(o - 1 < top)) { /* 1..top: offset 0 is never an object */
                if (!fixed) *w = o;
                continue;
            }
            if (v == 0) continue;
            int rc = wire_slow(h, kind, (b0 + i) * THA__BLOCK + j * 8, v, w);
            if (rc) return rc;
        }
    }
    return 0;
}

static int to_wire(tha_heap_t *h, int kind, uint8_t *dst, const uint8_t *mask,
                   uint64_t b0, uint64_t nb) {
    return h->addr ? to_wire_k(h, kind, dst, mask, b0, nb, 1)
                   : to_wire_k(h, kind, dst, mask, b0, nb, 0);
}

/* Portable big run: 64 KiB chunks copied, rewritten, then checksummed while
 * they are in cache. crc is the raw register. */
static int put_chunked(tha_heap_t *h, int kind, uint8_t *data, const uint8_t *mask,
                       uint64_t b0, uint64_t nb, uint32_t *raw) {
    for (uint64_t i = 0; i < nb; i += CHUNK_BLOCKS) {
        uint64_t n = nb - i < CHUNK_BLOCKS ? nb - i : CHUNK_BLOCKS;
        uint8_t *dst = data + i * THA__BLOCK;
        memcpy(dst, h->base + (b0 + i) * THA__BLOCK, n * THA__BLOCK);
        int rc = to_wire(h, kind, dst, mask + i, b0 + i, n);
        if (rc) return rc;
        *raw = tha__crc32c_raw(*raw, dst, n * THA__BLOCK);
    }
    return 0;
}

#ifdef FAST_X86
#define KERNEL static inline __attribute__((always_inline, target("sse4.2")))

/* One block to the wire: load, rewrite pointer words, CRC, store. fixed:
 * same-address mode, heap addresses stay as they are. */
KERNEL int enc_block(tha_heap_t *h, int kind, uint8_t *d, const uint8_t *s,
                     unsigned m, uint64_t off, uint64_t base, uint64_t top,
                     uint64_t *crc, const int nt, const int fixed) {
    uint64_t c = *crc;
#pragma GCC unroll 8
    for (unsigned j = 0; j < 8; j++) { /* word by word: it stays in a register */
        uint64_t v;
        memcpy(&v, s + j * 8, 8);
        if (m >> j & 1) {
            uint64_t o = v - base;
            if (THA__LIKELY(o - 1 < top)) {
                if (!fixed) v = o;
            } else if (v) {
                uint64_t id;
                int rc = wire_slow(h, kind, off + j * 8, v, &id);
                if (rc) return rc;
                v = id;
            }
        }
        c = _mm_crc32_u64(c, v);
        if (nt)
            _mm_stream_si64((long long *)(void *)(d + j * 8), (long long)v);
        else
            memcpy(d + j * 8, &v, 8);
    }
    *crc = c;
    return 0;
}

KERNEL int enc_run_k(tha_heap_t *h, int kind, uint8_t *dst, const uint8_t *mask,
                     uint64_t b0, uint64_t nb, uint32_t *raw, const int nt,
                     const int fixed) {
    const uint64_t base = (uint64_t)(uintptr_t)h->base, top = tha__reg(h)->top;
    const uint8_t *src = h->base + b0 * THA__BLOCK;
    uint64_t t = nb / 3, c0 = *raw, c1 = 0, c2 = 0, i;
    const uint64_t t1 = t * THA__BLOCK, t2 = 2 * t1;
    for (i = 0; i < t; i++) {
        uint64_t o = i * THA__BLOCK, off = (b0 + i) * THA__BLOCK;
        int rc = enc_block(h, kind, dst + o, src + o, mask[i], off, base, top, &c0, nt,
                           fixed);
        rc |= enc_block(h, kind, dst + t1 + o, src + t1 + o, mask[t + i], off + t1,
                        base, top, &c1, nt, fixed);
        rc |= enc_block(h, kind, dst + t2 + o, src + t2 + o, mask[2 * t + i], off + t2,
                        base, top, &c2, nt, fixed);
        if (THA__UNLIKELY(rc)) return rc;
    }
    c0 = tha__crc32c_shift((uint32_t)c0, t1) ^ (uint32_t)c1;
    c0 = tha__crc32c_shift((uint32_t)c0, t1) ^ (uint32_t)c2;
    for (i = 3 * t; i < nb; i++) {
        uint64_t o = i * THA__BLOCK;
        int rc = enc_block(h, kind, dst + o, src + o, mask[i], (b0 + i) * THA__BLOCK,
                           base, top, &c0, nt, fixed);
        if (THA__UNLIKELY(rc)) return rc;
    }
    if (nt) _mm_sfence();
    *raw = (uint32_t)c0;
    return 0;
}

__attribute__((target("sse4.2"))) static int
enc_run(tha_heap_t *h, int kind, uint8_t *dst, const uint8_t *mask, uint64_t b0,
        uint64_t nb, uint32_t *raw) {
    uint32_t r = *raw;
    int rc;
    if (h->addr) /* same-address: addresses travel as they are */
        rc = nb >= NT_BLOCKS ? enc_run_k(h, kind, dst, mask, b0, nb, &r, 1, 1)
                             : enc_run_k(h, kind, dst, mask, b0, nb, &r, 0, 1);
    else
        rc = nb >= NT_BLOCKS ? enc_run_k(h, kind, dst, mask, b0, nb, &r, 1, 0)
                             : enc_run_k(h, kind, dst, mask, b0, nb, &r, 0, 0);
    /* A failure is reported for the first bad word in address order, which
     * the three streams may not have met first. */
    if (rc) return put_chunked(h, kind, dst, mask, b0, nb, raw);
    *raw = r;
    return 0;
}

static int enc_half(half_t *x) {
    return enc_run(x->h, x->kind, x->dst, x->mask, x->b0, x->nb, &x->raw);
}
#endif

/* Asks for (the first 4 of) n blocks at block b, for reading or writing. */
static inline void prefetch_blocks(const uint8_t *base, uint64_t b, uint64_t n, const int write) {
    const uint8_t *p = base + b * THA__BLOCK;
    for (uint64_t i = 0; i < n && i < 4; i++) {
        if (write)
            __builtin_prefetch(p + i * THA__BLOCK, 1);
        else
            __builtin_prefetch(p + i * THA__BLOCK, 0);
    }
}

/* The bytes written since *from join the checksum. */
static inline void crc_flush(uint32_t *raw, const uint8_t **from, const uint8_t *to) {
    *raw = tha__crc32c_raw(*raw, *from, (size_t)(to - *from));
    *from = to;
}

/* Appends one run of nb blocks from block b0 at *q. Small runs leave their
 * bytes for a later crc_flush; big ones are checksummed here. */
static int put_run(tha_heap_t *h, int kind, uint64_t b0, uint64_t nb,
                   uint8_t **q, uint32_t *raw, const uint8_t **crc_from) {
    uint8_t *p = *q;
    tha__run_t run = {.offset = b0 * THA__BLOCK, .nblocks = nb};
    memcpy(p, &run, sizeof run);
    uint8_t *mask = p + sizeof run;
    if (nb <= 8) { /* most runs of a scattered delta: fixed-size moves only */
        uint64_t m8 = 0;
        for (uint64_t i = 0; i < nb; i++) m8 |= (uint64_t)h->ptrmap[b0 + i] << (8 * i);
        memcpy(mask, &m8, 8);
        uint8_t *data = mask + 8;
        const uint8_t *src = h->base + b0 * THA__BLOCK;
        for (uint64_t i = 0; i < nb; i++)
            memcpy(data + i * THA__BLOCK, src + i * THA__BLOCK, THA__BLOCK);
        *q = data + nb * THA__BLOCK;
        if (m8) {
            int rc = to_wire(h, kind, data, mask, b0, nb);
            if (rc) return rc;
        }
        if ((size_t)(*q - *crc_from) >= CRC_BATCH) crc_flush(raw, crc_from, *q);
        return 0;
    }
    uint64_t mlen = tha__align_up(nb, 8);
    memcpy(mask, h->ptrmap + b0, nb);
    memset(mask + nb, 0, mlen - nb);
    uint8_t *data = mask + mlen;
    *q = data + nb * THA__BLOCK;
    if (nb < BIG_BLOCKS) {
        memcpy(data, h->base + b0 * THA__BLOCK, nb * THA__BLOCK);
        int rc = to_wire(h, kind, data, mask, b0, nb);
        if (rc) return rc;
        if ((size_t)(*q - *crc_from) >= CRC_BATCH) crc_flush(raw, crc_from, *q);
        return 0;
    }
    crc_flush(raw, crc_from, data);
    *crc_from = *q;
#ifdef FAST_X86
    if (fast && codec_threads > 1 && nb >= PAR_BLOCKS) {
        half_t a = {.fn = enc_half, .kind = kind, .dst = data, .mask = mask,
                    .src = h->base + b0 * THA__BLOCK, .b0 = b0},
               b;
        split(&a, &b, h, nb, *raw);
        run_halves(&a, &b);
        if (a.rc || b.rc) /* report the first bad word in order */
            return put_chunked(h, kind, data, mask, b0, nb, raw);
        *raw = joined_crc(&a, &b);
        return 0;
    }
    if (fast) return enc_run(h, kind, data, mask, b0, nb, raw);
#endif
    return put_chunked(h, kind, data, mask, b0, nb, raw);
}

/* THA_DEBUG_TYPES: the pointer words the frame will carry, against their
 * declared types, before a byte is written (a snapshot: every one). Kept
 * out of the copy loops: off, encode pays the branch that calls this.
 * Safe on a scribbled image, as encode is (lookups are bounds-checked). */
__attribute__((noinline, cold)) static int debug_types(tha_heap_t *h, int kind) {
    char what[64];
    snprintf(what, sizeof what, "%s seq %llu: type check", kind_name(kind),
             (unsigned long long)h->seq + 1);
    if (kind == THA_FRAME_SNAPSHOT) return tha__check_types(h, what);
    uint64_t pos = 0, b, n, top_blocks = tha__reg(h)->top / THA__BLOCK;
    while (next_run(h, top_blocks, &pos, &b, &n))
        for (uint64_t i = b; i < b + n; i++)
            for (unsigned m = h->ptrmap[i]; m; m &= m - 1) {
                uint64_t at = i * THA__BLOCK + (unsigned)__builtin_ctz(m) * 8;
                int rc = tha__check_word_type(h, at, what);
                if (rc) return rc;
            }
    return 0;
}

/* The runs of a delta, walked once: a ring holds the next PREFETCH_RUNS of
 * them, and a run's blocks are asked for when it enters the ring, so the
 * scattered loads are under way before put_run copies them. */
/* A power of two. Same-run medians, 100,000 scattered 2-block runs: 1 run
 * ahead 16.9 ms, 4: 8.1, 8: 7.6, 16: 7.2, 32: 7.0. */
#define PREFETCH_RUNS 16u

typedef struct runs_ahead {
    uint64_t pos, limit;
    uint64_t b[PREFETCH_RUNS], n[PREFETCH_RUNS];
    unsigned head, count;
    int prefetch;
} runs_ahead_t;

/* The next run of the delta (1) or none (0). */
static inline int ahead_next(const tha_heap_t *h, runs_ahead_t *ra, uint64_t *b,
                             uint64_t *n) {
    while (ra->count < PREFETCH_RUNS) {
        unsigned i = (ra->head + ra->count) & (PREFETCH_RUNS - 1);
        if (!next_run(h, ra->limit, &ra->pos, &ra->b[i], &ra->n[i])) break;
        if (ra->prefetch) prefetch_blocks(h->base, ra->b[i], ra->n[i], 0);
        ra->count++;
    }
    if (!ra->count) return 0;
    *b = ra->b[ra->head];
    *n = ra->n[ra->head];
    ra->head = (ra->head + 1) & (PREFETCH_RUNS - 1);
    ra->count--;
    return 1;
}

/* One thread's share of a delta: the runs of blocks [lo, hi), written at q
 * while they fit in room bytes (room 0: counted only). need, nruns,
 * nblocks and raw (the CRC register, started by the caller) cover what
 * was written; need counts every run. */
typedef struct span {
    tha_heap_t *h;  /* the heap, or copy (a second thread's error text) */
    tha_heap_t copy;
    int kind;
    uint64_t lo, hi;
    uint8_t *q;
    size_t room, need;
    uint64_t nruns, nblocks;
    uint32_t raw;
    int rc;
} span_t;

static int encode_span(span_t *sp) {
    runs_ahead_t ra = {.pos = sp->lo, .limit = sp->hi, .prefetch = sp->room > 0};
    uint8_t *q = sp->q;
    const uint8_t *crc_from = q;
    uint64_t b, n;
    int writing = sp->room > 0; /* 0 once a run did not fit: counting only */
    while (ahead_next(sp->h, &ra, &b, &n)) {
        sp->need += tha__run_bytes(n);
        if (!writing) continue;
        if (sp->need > sp->room) {
            writing = ra.prefetch = 0;
            continue;
        }
        int rc = put_run(sp->h, sp->kind, b, n, &q, &sp->raw, &crc_from);
        if (rc) return sp->rc = rc;
        sp->nruns++;
        sp->nblocks += n;
    }
    if (writing) crc_flush(&sp->raw, &crc_from, q);
    return sp->rc = 0;
}

static void *span_main(void *arg) {
    encode_span(arg);
    return NULL;
}

/* Deltas of >= 8 MiB of blocks: two threads. Below, the second thread's
 * start (and the walk that finds where its half begins) costs more than it
 * saves: same-run medians of 1M 64-B records, encode after 10 ms idle, one
 * thread / two: 1% 0.48 / 0.70 ms, 2% 0.72 / 1.04, 5% 1.26 / 1.89, 10%
 * 2.89 / 3.03; at 30%, busy, two win by ~10%. */
#define PAR_DELTA_BLOCKS (1u << 17)

/* A block where a delta's dirty blocks split in about halves, no run
 * crossing it; 0 if there is none worth splitting at. */
static uint64_t delta_split(const tha_heap_t *h, uint64_t top_blocks) {
    const uint64_t nwords = (top_blocks + 63) / 64, nsum = (nwords + 63) / 64;
    uint64_t total = 0, half = 0, mid = 0, e, pos, b;
    for (uint64_t si = 0; si < nsum; si++)
        for (uint64_t m = h->dsum[si]; m; m &= m - 1)
            total += (uint64_t)__builtin_popcountll(h->dirty[si * 64 + (uint64_t)__builtin_ctzll(m)]);
    if (total < PAR_DELTA_BLOCKS) return 0;
    for (uint64_t si = 0; si < nsum && !mid; si++)
        for (uint64_t m = h->dsum[si]; m; m &= m - 1) {
            uint64_t w = si * 64 + (uint64_t)__builtin_ctzll(m);
            half += (uint64_t)__builtin_popcountll(h->dirty[w]);
            if (2 * half >= total) {
                mid = (w + 1) * 64;
                break;
            }
        }
    if (mid >= top_blocks) return 0;
    /* a run through mid: split at its end instead */
    if (h->dirty[(mid - 1) / 64] >> ((mid - 1) % 64) & 1) {
        pos = mid - 1;
        if (next_run(h, top_blocks, &pos, &b, &e)) mid = b + e;
    }
    return mid < top_blocks ? mid : 0;
}

/* The runs of a delta after the header at out, cap bytes in all (out NULL:
 * counted only); *need is the frame's size. On two threads when it is
 * large: halves of its dirty blocks, the second half's place known from a
 * counting walk of the first. Either way the first bad word in address
 * order is the one reported. */
static int encode_delta(tha_heap_t *h, uint8_t *out, size_t cap, size_t *need,
                        uint64_t *nruns, uint64_t *nblocks, uint32_t *raw) {
    const uint64_t top_blocks = tha__reg(h)->top / THA__BLOCK;
    const size_t room = out && cap > THA_FRAME_HEADER_SIZE ? cap - THA_FRAME_HEADER_SIZE : 0;
    uint8_t *q = room ? out + THA_FRAME_HEADER_SIZE : NULL;
    span_t a = {.h = h, .kind = THA_FRAME_DELTA, .hi = top_blocks, .q = q, .room = room,
                .raw = ~0u},
           b;
    uint64_t mid = codec_threads > 1 && room ? delta_split(h, top_blocks) : 0;
    if (mid) {
        span_t first = {.h = h, .kind = THA_FRAME_DELTA, .hi = mid}; /* counts only */
        encode_span(&first);
        if (first.need < room) { /* else too small: the one walk below counts */
            a.hi = mid;
            a.room = first.need;
        } else {
            mid = 0;
        }
    }
    pthread_t t;
    int two = 0;
    if (mid) {
        b = a;
        b.copy = *h;
        b.h = &b.copy;
        b.lo = mid;
        b.hi = top_blocks;
        b.q = q + a.room;
        b.room = room - a.room;
        b.raw = 0;
        two = pthread_create(&t, NULL, span_main, &b) == 0;
        if (!two) { /* no second thread: the whole delta here */
            mid = 0;
            a.hi = top_blocks;
            a.room = room;
        }
    }
    encode_span(&a);
    *need = THA_FRAME_HEADER_SIZE + a.need;
    *nruns = a.nruns;
    *nblocks = a.nblocks;
    *raw = a.raw;
    if (!two) return a.rc;
    pthread_join(t, NULL);
    if (!a.rc && b.rc) memcpy(h->err, b.copy.err, sizeof h->err);
    *need += b.need;
    *nruns += b.nruns;
    *nblocks += b.nblocks;
    *raw = tha__crc32c_shift(a.raw, b.need) ^ b.raw;
    return a.rc ? a.rc : b.rc;
}

/* Rule (sizing): the size frame_size or a THA_ETOOSMALL reports is the size
 * the next encode needs. Both collect (diff, wp) and leave h->collected
 * set, so that encode works on the changes they found instead of looking
 * again: plain writes from other threads in between go in the frame after,
 * never into a second THA_ETOOSMALL. Only heap calls (alloc, touch, ...)
 * change dirty bits otherwise, and those are serialised with encode.
 * Rule (one scan): a delta is encoded while its dirty runs are found, not
 * sized first: a run that would not fit ends the writing, and the rest of
 * the walk only counts what THA_ETOOSMALL reports (the buffer's bytes are
 * then unspecified). So a frame costs one walk of the dirty map, and a
 * too-small guess (tha_backlog_encode) one more.
 * Rule (failure): nothing is committed before the frame is whole; a failed
 * encode leaves seq and every pending change as it was (a collect only
 * turns pending writes into dirty bits, which the next frame carries). */
int tha__encode(tha_heap_t *h, int kind, void *buf, size_t cap, size_t *len,
                tha__frame_hdr_t *hdp) {
    if (!len || (kind != THA_FRAME_SNAPSHOT && kind != THA_FRAME_DELTA))
        return tha__hfail(h, THA_EINVAL, "encode: kind must be snapshot or delta");
    /* only a bulk sync's staging heap is away from its address; it never encodes */
    THA_ASSERT(!h->addr || h->addr == (uint64_t)(uintptr_t)h->base);
    size_t need;
    int rrc = tha__roots_refresh(h); /* a no-op if frame_size just did it */
    if (!rrc) rrc = tha__statics_push(h);
    if (rrc) return rrc;
    if (!h->collected) tha__track_collect(h); /* else frame_size just did */
    h->collected = 0;
    int rc;
    if (!buf) cap = 0;
    if (kind == THA_FRAME_SNAPSHOT) { /* its size costs nothing to know */
        rc = frame_size_now(h, kind, &need);
        if (rc) return tha__hfail(h, rc, "encode: %s", tha_strerror(rc));
        if (cap < need) goto too_small;
    }
    if (THA__UNLIKELY(h->debug & THA_DEBUG_TYPES) && (rc = debug_types(h, kind)))
        return rc;
    const tha__region_t *r = tha__reg(h);
    uint8_t *out = buf, *q = NULL;
    const uint8_t *crc_from = NULL;
    tha__frame_hdr_t hd;
    uint32_t raw = ~0u; /* tha_crc32c(0, ..) == ~raw(~0, ..) */
    uint64_t top_blocks = r->top / THA__BLOCK, nruns = 0, nblocks = 0;
    uint32_t schema_len = 0;
    if (kind == THA_FRAME_SNAPSHOT) {
        size_t slen;
        crc_from = q = out + THA_FRAME_HEADER_SIZE;
        rc = tha_schema_serialize(h->schema, q, need - (size_t)(q - out), &slen);
        if (rc) return tha__hfail(h, rc, "encode: schema: %s", tha_strerror(rc));
        schema_len = (uint32_t)slen;
        memset(q + slen, 0, tha__align_up(slen, 8) - slen);
        q += tha__align_up(slen, 8);
        rc = put_run(h, kind, 0, top_blocks, &q, &raw, &crc_from);
        if (rc) return rc;
        nruns = 1;
        nblocks = top_blocks;
    } else {
        rc = encode_delta(h, buf, cap, &need, &nruns, &nblocks, &raw);
        if (rc) return rc;
        if (need > cap) goto too_small;
        crc_from = q = out + need; /* the spans flushed their checksums */
    }
    crc_flush(&raw, &crc_from, q);
    THA_ASSERT((size_t)(q - out) == need);
    tha__frame_fill(h, &hd, kind, h->seq + 1, need);
    hd.schema_len = schema_len;
    hd.nruns = (uint32_t)nruns;
    hd.nblocks = nblocks;
    tha__frame_finish(&hd, ~raw, out);
    /* With a delta log the frame is made only once the log has it. */
    if ((rc = tha__log_append(h, &hd, out, need))) return rc;
    /* Committed: nothing above can fail any more. */
    h->seq = hd.seq;
    tha__clear_dirty(h);
    h->frames_encoded++;
    h->bytes_encoded += need;
    *len = need;
    if (hdp) *hdp = hd;
    return 0;
too_small:
    *len = need;
    h->collected = h->mech != THA__MECH_EXPLICIT; /* keep what need counts */
    return tha__hfail(h, THA_ETOOSMALL, "encode: the %s needs %zu bytes, buffer "
                      "has %zu", kind_name(kind), need, cap);
}

/* Rule (one series, one maker): a heap's frames are numbered one series;
 * once tha_backlog_encode makes them (an active replicating the heap), a
 * frame made here would take a seq the backlog, hence every standby, never
 * gets, and clear the dirty bits of changes they would never see. */
int tha_heap_encode(tha_heap_t *h, int kind, void *buf, size_t cap, size_t *len) {
    if (h->backlog)
        return tha__hfail(h, THA_ESTATE, "encode: this heap is replicated through a "
                          "backlog, which makes its frames: use tha_backlog_encode "
                          "(Python: Active.sync()); a %s made here would be a seq "
                          "the standbys never get", kind_name(kind));
    return tha__encode(h, kind, buf, cap, len, NULL);
}

/* ---- verify ----------------------------------------------------------- */

/* An extern word: an id in the registry, bound here, an offset inside. */
static int check_extern(tha_heap_t *h, const tha__frame_hdr_t *hd, uint64_t off,
                        uint64_t v) {
    const char *k = kind_name(hd->kind);
    unsigned long long seq = (unsigned long long)hd->seq;
    uint32_t id = THA__EXTERN_ID(v);
    uint64_t in = v & THA__EXTERN_OFF_MASK;
    if (id >= h->schema->nexterns)
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: extern id %u at offset 0x%llx is "
                          "out of range (%u declared)", k, seq, id,
                          (unsigned long long)off, h->schema->nexterns);
    const tha__extern_t *e = &h->schema->externs[id];
    if (!e->addr && (h->unbound_seen = 1))
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: extern '%s' at offset 0x%llx is "
                          "not bound in this process (tha_schema_bind_extern)", k, seq,
                          e->name, (unsigned long long)off);
    if (in >= e->size)
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: extern '%s' at offset 0x%llx: byte "
                          "offset %llu is past its %llu bytes", k, seq, e->name,
                          (unsigned long long)off, (unsigned long long)in,
                          (unsigned long long)e->size);
    return 0;
}

/* A pointer word as it travels: 0, an offset in 1..top (same-address
 * frames: an address in base+1..base+top), or a word of a class
 * (frame.h). A tagged NULL's slot is checked once the frame's layout is
 * (tha__check_slots): here only its form, and h->wire_tagnull says there
 * is one. */
static int check_word(tha_heap_t *h, const tha__frame_hdr_t *hd, uint64_t off,
                      uint64_t v) {
    if (v == 0) return 0;
    if (v & THA__FUNC_TAG) { /* no address below 2^48 has this bit */
        unsigned cls = THA__WIRE_CLASS(v);
        h->funcs_seen = 1; /* a class word: a same-address apply rewrites it too */
        if (cls == 1) return check_extern(h, hd, off, v);
        if (cls == 2) {
            uint64_t tags = v & ~THA__WIRE_TAGNULL;
            if (tags == 0 || tags > THA__TAG_BITS)
                return tha__hfail(h, THA_ERANGE, "%s seq %llu: tagged NULL word 0x%llx "
                                  "at offset 0x%llx has no tag bits or bits past 0x%x",
                                  kind_name(hd->kind), (unsigned long long)hd->seq,
                                  (unsigned long long)v, (unsigned long long)off,
                                  THA__TAG_BITS);
            h->wire_tagnull = 1;
            return 0;
        }
        if (cls != 0)
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: pointer word 0x%llx at offset "
                              "0x%llx is of no known class", kind_name(hd->kind),
                              (unsigned long long)hd->seq, (unsigned long long)v,
                              (unsigned long long)off);
        uint64_t id = v & ~THA__FUNC_TAG;
        if (id >= h->schema->nfuncs)
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: function id %llu at offset "
                        "0x%llx is out of range (%u registered)",
                        kind_name(hd->kind), (unsigned long long)hd->seq,
                        (unsigned long long)id, (unsigned long long)off,
                        h->schema->nfuncs);
        if (!h->schema->funcs[id].fn && (h->unbound_seen = 1))
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: function '%s' at offset "
                        "0x%llx is not bound in this process",
                        kind_name(hd->kind), (unsigned long long)hd->seq,
                        h->schema->funcs[id].name, (unsigned long long)off);
        return 0;
    }
    const uint64_t fb = tha__frame_base(hd);
    if (fb && v - fb - 1 >= hd->top)
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: pointer at offset 0x%llx holds "
                    "0x%llx, outside the same-address image [0x%llx, 0x%llx]",
                    kind_name(hd->kind), (unsigned long long)hd->seq,
                    (unsigned long long)off, (unsigned long long)v,
                    (unsigned long long)fb + 1, (unsigned long long)(fb + hd->top));
    if (!fb && v > hd->top)
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: pointer at offset 0x%llx points "
                    "to offset 0x%llx, past the image end 0x%llx",
                    kind_name(hd->kind), (unsigned long long)hd->seq,
                    (unsigned long long)off, (unsigned long long)v,
                    (unsigned long long)hd->top);
    return 0;
}

/* The region header as it will read after the frame: the current one with
 * the frame's blocks laid over it. */
static int check_region_header(tha_heap_t *h, const tha__frame_hdr_t *hd,
                               const uint8_t *body, uint64_t body_len) {
    tha__region_t want;
    if (hd->kind == THA_FRAME_SNAPSHOT)
        memset(&want, 0, sizeof want);
    else
        memcpy(&want, tha__reg(h), sizeof want);
    const uint8_t *p = body + tha__align_up(hd->schema_len, 8);
    for (uint32_t i = 0; i < hd->nruns; i++) {
        tha__run_t run;
        memcpy(&run, p, sizeof run);
        const uint8_t *data = p + sizeof run + tha__align_up(run.nblocks, 8);
        if (run.offset >= sizeof want) break; /* runs ascend */
        uint64_t n = run.nblocks * THA__BLOCK;
        if (n > sizeof want - run.offset) n = sizeof want - run.offset;
        memcpy((uint8_t *)&want + run.offset, data, n);
        p = data + run.nblocks * THA__BLOCK;
    }
    (void)body_len;
    const tha__layout_t lay = tha__region_layout(hd->capacity);
    if (want.magic == THA__REGION_MAGIC_V2)
        return tha__hfail(h, THA_EVERSION, "%s seq %llu: %s", kind_name(hd->kind),
                          (unsigned long long)hd->seq, tha__region_magic_why(want.magic));
    if (want.magic != THA__REGION_MAGIC || want.capacity != hd->capacity ||
        want.top != hd->top || want.npages != lay.npages ||
        want.roots_off != lay.roots_off || want.pagemap_off != lay.pagemap_off ||
        want.data_off != lay.data_off || want.nroots > THA_MAX_ROOTS ||
        want.top < lay.data_off)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: the region header it carries is "
                    "inconsistent", kind_name(hd->kind), (unsigned long long)hd->seq);
    return 0;
}

/* Pointer words of nb blocks at data (first block b0), one at a time.
 * lo: 1 (offsets), or base + 1 (addresses of a same-address frame). */
static inline __attribute__((always_inline)) int
check_words_k(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
              const uint8_t *mask, uint64_t b0, uint64_t nb, const uint64_t lo) {
    for (uint64_t j = 0; j < nb; j++)
        for (unsigned m = mask[j]; m; m &= m - 1) {
            unsigned w = (unsigned)__builtin_ctz(m);
            uint64_t v;
            memcpy(&v, data + j * THA__BLOCK + w * 8, 8);
            if (THA__LIKELY(v - lo < hd->top)) continue;
            int rc = check_word(h, hd, (b0 + j) * THA__BLOCK + w * 8, v);
            if (rc) return rc;
        }
    return 0;
}

__attribute__((noinline)) static int check_words(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
                       const uint8_t *mask, uint64_t b0, uint64_t nb) {
    const uint64_t fb = tha__frame_base(hd);
    return fb ? check_words_k(h, hd, data, mask, b0, nb, fb + 1)
              : check_words_k(h, hd, data, mask, b0, nb, 1);
}

/* Portable big run: checksum and check 64 KiB at a time. */
static int verify_chunked(tha_heap_t *h, const tha__frame_hdr_t *hd,
                          const uint8_t *data, const uint8_t *mask, uint64_t b0,
                          uint64_t nb, uint32_t *raw) {
    for (uint64_t c = 0; c < nb; c += CHUNK_BLOCKS) {
        uint64_t n = nb - c < CHUNK_BLOCKS ? nb - c : CHUNK_BLOCKS;
        *raw = tha__crc32c_raw(*raw, data + c * THA__BLOCK, n * THA__BLOCK);
        int rc = check_words(h, hd, data + c * THA__BLOCK, mask + c, b0 + c, n);
        if (rc) return rc;
    }
    return 0;
}

#ifdef FAST_X86
/* One block: CRC and the range check of its pointer words; nonzero if a
 * word lies above top (a function id, or out of range). NULL and offsets
 * 1..top are exactly the words <= top. fixed (a same-address frame): NULL
 * and the addresses lo..lo+top-1 (lo = base + 1) pass. */
KERNEL int ver_block(const uint8_t *s, unsigned m, uint64_t top, uint64_t *crc,
                     const int fixed, uint64_t lo) {
    uint64_t c = *crc, v;
    int bad = 0;
#pragma GCC unroll 8
    for (unsigned j = 0; j < 8; j++) {
        memcpy(&v, s + j * 8, 8);
        c = _mm_crc32_u64(c, v);
    }
    for (; m; m &= m - 1) {
        memcpy(&v, s + (unsigned)__builtin_ctz(m) * 8, 8);
        if (fixed)
            bad |= (v - lo >= top) & (v != 0);
        else
            bad |= v > top;
    }
    *crc = c;
    return bad;
}

/* Three streams over the thirds of the run. A block with a word outside
 * 1..top is checked through check_words: functions ids pass, anything else
 * fails (reported for the first bad word in order, by the caller's rescan). */
KERNEL int verify_run_k(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
                        const uint8_t *mask, uint64_t b0, uint64_t nb, uint32_t *raw,
                        const int fixed) {
    const uint64_t top = hd->top, t = nb / 3, t1 = t * THA__BLOCK, t2 = 2 * t1;
    const uint64_t lo = tha__frame_base(hd) + 1;
    uint64_t c0 = *raw, c1 = 0, c2 = 0, i;
    for (i = 0; i < t; i++) {
        const uint8_t *s = data + i * THA__BLOCK;
        int bad = ver_block(s, mask[i], top, &c0, fixed, lo);
        bad |= ver_block(s + t1, mask[t + i], top, &c1, fixed, lo) << 1;
        bad |= ver_block(s + t2, mask[2 * t + i], top, &c2, fixed, lo) << 2;
        if (THA__UNLIKELY(bad))
            for (unsigned k = 0; k < 3; k++)
                if ((bad >> k & 1) &&
                    check_words(h, hd, s + k * t1, mask + k * t + i, b0 + k * t + i, 1))
                    return verify_chunked(h, hd, data, mask, b0, nb, raw);
    }
    c0 = tha__crc32c_shift((uint32_t)c0, t1) ^ (uint32_t)c1;
    c0 = tha__crc32c_shift((uint32_t)c0, t1) ^ (uint32_t)c2;
    for (i = 3 * t; i < nb; i++) {
        const uint8_t *s = data + i * THA__BLOCK;
        if (THA__UNLIKELY(ver_block(s, mask[i], top, &c0, fixed, lo))) {
            int rc = check_words(h, hd, s, mask + i, b0 + i, 1);
            if (rc) return verify_chunked(h, hd, data, mask, b0, nb, raw);
        }
    }
    *raw = (uint32_t)c0;
    return 0;
}

__attribute__((target("sse4.2"))) static int
verify_run(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
           const uint8_t *mask, uint64_t b0, uint64_t nb, uint32_t *raw) {
    return tha__frame_base(hd) ? verify_run_k(h, hd, data, mask, b0, nb, raw, 1)
                               : verify_run_k(h, hd, data, mask, b0, nb, raw, 0);
}

static int ver_half(half_t *x) {
    return verify_run(x->h, x->hd, x->src, x->mask, x->b0, x->nb, &x->raw);
}
#endif

/* Walks the runs: bounds, order, masks, pointer words; indexes them (the
 * heap's run index, tha__run_index) for the checks and the copy that
 * follow. Reads every body byte once, in order; on failure *done is how far
 * *crc (tha_crc32c of the body so far) reaches, so the caller can finish
 * the checksum. */
static int check_runs(tha_heap_t *h, const tha__frame_hdr_t *hd,
                      const uint8_t *body, uint64_t body_len, uint64_t *done,
                      uint32_t *crc) {
    const char *k = kind_name(hd->kind);
    unsigned long long seq = (unsigned long long)hd->seq;
    uint64_t pos = tha__align_up(hd->schema_len, 8);
    uint32_t raw = ~*crc;
    const uint8_t *crc_from = body;
    int rc = 0;
    *done = 0;
    h->funcs_seen = 0;
    h->unbound_seen = 0;
    h->wire_tagnull = 0;
    if (pos > body_len)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: schema padding past the end", k, seq);
    uint64_t top_blocks = hd->top / THA__BLOCK, next_block = 0, blocks = 0;
    /* blocks below data_off hold no pointers */
    const uint64_t meta_blocks = tha__region_layout(hd->capacity).data_off / THA__BLOCK;
    /* no more runs than the body has room for: a run that passes takes at
     * least a record, 8 mask bytes and a block, so run i passes only if
     * i < fit, and a hostile count sizes nothing */
    const uint64_t fit = (body_len - pos) / (sizeof(tha__run_t) + 8 + THA__BLOCK);
    tha__vrun_t *index = tha__run_index(h, hd->nruns < fit ? hd->nruns : fit);
    if (!index)
        return tha__hfail(h, THA_ENOMEM, "%s seq %llu: no memory to index its %u runs",
                          k, seq, hd->nruns);
    for (uint32_t i = 0; i < hd->nruns; i++) {
        tha__run_t run;
        if (body_len - pos < sizeof run) {
            rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u header truncated", k,
                            seq, i);
            goto out;
        }
        memcpy(&run, body + pos, sizeof run);
        uint64_t b0 = run.offset / THA__BLOCK;
        if (run.offset % THA__BLOCK || run.nblocks == 0 || b0 < next_block ||
            b0 > top_blocks || run.nblocks > top_blocks - b0) {
            rc = tha__hfail(h, THA_ERANGE, "%s seq %llu: run %u at offset 0x%llx "
                        "(%llu blocks) is out of range or out of order (image "
                        "end 0x%llx)", k, seq, i, (unsigned long long)run.offset,
                        (unsigned long long)run.nblocks,
                        (unsigned long long)hd->top);
            goto out;
        }
        uint64_t mlen = tha__align_up(run.nblocks, 8);
        if (body_len - pos - sizeof run < mlen ||
            (body_len - pos - sizeof run - mlen) / THA__BLOCK < run.nblocks) {
            rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u at offset 0x%llx is "
                        "truncated", k, seq, i, (unsigned long long)run.offset);
            goto out;
        }
        const uint8_t *mask = body + pos + sizeof run;
        pos += sizeof run + mlen;
        for (uint64_t j = 0; b0 < meta_blocks && j < run.nblocks; j++)
            if (mask[j] && b0 + j < meta_blocks) {
                rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: pointer mask on allocator "
                            "metadata at offset 0x%llx", k, seq,
                            (unsigned long long)((b0 + j) * THA__BLOCK));
                goto out;
            }
        for (uint64_t j = run.nblocks; j < mlen; j++)
            if (mask[j]) {
                rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u mask padding is "
                            "not zero", k, seq, i);
                goto out;
            }
        const uint8_t *data = body + pos;
        pos += run.nblocks * THA__BLOCK;
        THA_ASSERT(i < fit);
        index[i] = (tha__vrun_t){.b0 = b0, .nb = run.nblocks, .data = data, .mask = mask};
        if (run.nblocks < BIG_BLOCKS) {
            rc = check_words(h, hd, data, mask, b0, run.nblocks);
            if (rc) goto out;
            if ((uint64_t)(body + pos - crc_from) >= CRC_BATCH)
                crc_flush(&raw, &crc_from, body + pos);
        } else {
            crc_flush(&raw, &crc_from, data);
            uint32_t at_data = raw;
#ifdef FAST_X86
            if (fast && codec_threads > 1 && run.nblocks >= PAR_BLOCKS) {
                half_t a = {.fn = ver_half, .hd = hd, .src = data, .mask = mask,
                            .b0 = b0},
                       b;
                split(&a, &b, h, run.nblocks, raw);
                run_halves(&a, &b);
                h->funcs_seen |= b.copy.funcs_seen;
                h->wire_tagnull |= b.copy.wire_tagnull;
                if (a.rc || b.rc) /* report the first bad word in order */
                    rc = verify_chunked(h, hd, data, mask, b0, run.nblocks, &raw);
                else
                    raw = joined_crc(&a, &b);
            } else if (fast)
                rc = verify_run(h, hd, data, mask, b0, run.nblocks, &raw);
            else
#endif
                rc = verify_chunked(h, hd, data, mask, b0, run.nblocks, &raw);
            if (rc) {
                raw = at_data; /* the checksum reaches the run's data */
                goto out;
            }
            crc_from = body + pos;
        }
        next_block = b0 + run.nblocks;
        blocks += run.nblocks;
    }
    crc_flush(&raw, &crc_from, body + pos);
    if (pos != body_len)
        rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: %llu stray bytes after the last "
                    "run", k, seq, (unsigned long long)(body_len - pos));
    else if (blocks != hd->nblocks)
        rc = tha__hfail(h, THA_EFRAME, "%s seq %llu: header counts %llu blocks, runs "
                    "hold %llu", k, seq, (unsigned long long)hd->nblocks,
                    (unsigned long long)blocks);
    else if (hd->kind == THA_FRAME_SNAPSHOT && (hd->nruns != 1 || blocks != top_blocks))
        rc = tha__hfail(h, THA_EFRAME, "snapshot seq %llu does not cover the whole "
                    "image", seq);
out:
    *done = (uint64_t)(crc_from - body);
    *crc = ~raw;
    return rc;
}

static int check_identity(tha_heap_t *h, const tha__frame_hdr_t *hd,
                          const uint8_t *frame, size_t len) {
    const tha__region_t *r = tha__reg(h);
    unsigned long long seq = (unsigned long long)hd->seq;
    int arc = tha__frame_address_ok(h, hd);
    if (arc) return arc;
    if (hd->fingerprint != tha_schema_fingerprint(h->schema)) {
        if (hd->kind == THA_FRAME_SNAPSHOT) {
            tha_schema_t *theirs = NULL;
            char why[200];
            int rc = tha_frame_schema(frame, len, &theirs, why, sizeof why);
            if (rc == 0) {
                rc = tha_schema_compare(theirs, h->schema, why, sizeof why);
                tha_schema_release(theirs);
                if (rc)
                    return tha__hfail(h, THA_EMISMATCH, "snapshot seq %llu: schema "
                                "mismatch (frame vs heap): %s", seq, why);
            } else {
                return tha__hfail(h, rc, "snapshot seq %llu: its schema is unreadable: "
                            "%s", seq, why);
            }
        }
        return tha__hfail(h, THA_EMISMATCH, "%s seq %llu: schema fingerprint %016llx, "
                    "heap has %016llx", kind_name(hd->kind), seq,
                    (unsigned long long)hd->fingerprint,
                    (unsigned long long)tha_schema_fingerprint(h->schema));
    }
    if (hd->epoch < h->epoch)
        return tha__hfail(h, THA_ESTALE, "%s seq %llu from epoch %llu: this heap is at "
                    "epoch %llu", kind_name(hd->kind), seq,
                    (unsigned long long)hd->epoch, (unsigned long long)h->epoch);
    if (hd->kind == THA_FRAME_SNAPSHOT) {
        if (hd->top > h->capacity)
            return tha__hfail(h, THA_ECAPACITY, "snapshot seq %llu needs %llu bytes; this "
                        "heap's capacity is %llu", seq,
                        (unsigned long long)hd->top, (unsigned long long)h->capacity);
        if (hd->capacity > h->capacity)
            return tha__hfail(h, THA_ECAPACITY, "snapshot seq %llu comes from a heap of "
                        "capacity %llu; this one has %llu", seq,
                        (unsigned long long)hd->capacity,
                        (unsigned long long)h->capacity);
        return 0;
    }
    if (hd->lineage != h->lineage)
        return tha__hfail(h, THA_ESEQ, "delta seq %llu belongs to another frame series "
                    "(lineage %016llx, heap follows %016llx): apply a snapshot "
                    "first", seq, (unsigned long long)hd->lineage,
                    (unsigned long long)h->lineage);
    if (hd->seq != h->seq + 1)
        return tha__hfail(h, THA_ESEQ, "delta seq %llu out of sequence: the heap is at "
                    "seq %llu and needs %llu next", seq,
                    (unsigned long long)h->seq, (unsigned long long)h->seq + 1);
    if (hd->capacity != r->capacity || hd->top < r->top)
        return tha__hfail(h, THA_EFRAME, "delta seq %llu: capacity %llu / image end "
                    "%llu do not follow the heap's %llu / %llu", seq,
                    (unsigned long long)hd->capacity, (unsigned long long)hd->top,
                    (unsigned long long)r->capacity, (unsigned long long)r->top);
    return 0;
}

/* ---- apply ------------------------------------------------------------ */

/* The native value of a verified extern or tagged-NULL word: the bound
 * extern's address plus the offset, or the tag bits. */
__attribute__((noinline, cold)) static uint64_t native_word(const tha_heap_t *h,
                                                            uint64_t v) {
    if (THA__WIRE_CLASS(v) == 1)
        return (uint64_t)h->schema->externs[THA__EXTERN_ID(v)].addr +
               (v & THA__EXTERN_OFF_MASK);
    return v & THA__TAG_BITS;
}

static void from_wire(tha_heap_t *h, uint8_t *dst, const uint8_t *mask,
                      uint64_t nb) {
    uint64_t base = (uint64_t)(uintptr_t)h->base;
    for (uint64_t i = 0; i < nb; i++)
        for (unsigned m = mask[i]; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctz(m);
            uint64_t *w = (uint64_t *)(dst + i * THA__BLOCK + j * 8), v = *w;
            if (v == 0) continue;
            if (!(v & THA__FUNC_TAG))
                *w = base + v;
            else if (THA__LIKELY(v < THA__WIRE_EXTERN))
                *w = (uint64_t)(uintptr_t)h->schema->funcs[v & ~THA__FUNC_TAG].fn;
            else
                *w = native_word(h, v);
        }
}

#ifdef FAST_X86
/* One verified block into the heap: load, rebase pointer words, store (at
 * d, and with two at d2 too: the shadow). */
static inline __attribute__((always_inline)) void
put_block2(tha_heap_t *h, uint8_t *d, uint8_t *d2, const uint8_t *s, unsigned m,
           uint64_t base, const int nt, const int two) {
#pragma GCC unroll 8
    for (unsigned j = 0; j < 8; j++) {
        uint64_t v;
        memcpy(&v, s + j * 8, 8);
        if (m >> j & 1) {
            if (THA__LIKELY(v - 1 < THA__FUNC_TAG - 1))
                v += base;
            else if (v)
                v = THA__LIKELY(v < THA__WIRE_EXTERN)
                        ? (uint64_t)(uintptr_t)h->schema->funcs[v & ~THA__FUNC_TAG].fn
                        : native_word(h, v);
        }
        if (nt)
            _mm_stream_si64((long long *)(void *)(d + j * 8), (long long)v);
        else
            memcpy(d + j * 8, &v, 8);
        if (two && nt)
            _mm_stream_si64((long long *)(void *)(d2 + j * 8), (long long)v);
        else if (two)
            memcpy(d2 + j * 8, &v, 8);
    }
}

static inline __attribute__((always_inline)) void
put_block(tha_heap_t *h, uint8_t *d, const uint8_t *s, unsigned m, uint64_t base,
          const int nt) {
    put_block2(h, d, NULL, s, m, base, nt, 0);
}

#define PUT_PIECES(two, nt)                                                     \
    for (uint64_t i = start; i < end; i++)                                      \
        put_block2(h, dst + i * THA__BLOCK, two ? sdst + i * THA__BLOCK : NULL, \
                   data + i * THA__BLOCK, mask[i], base, nt, two)

/* A big verified run into the heap, in 256 KiB pieces taken from the end
 * backwards: the verify pass has just read the frame front to back, so its
 * tail is still in the cache when this starts. sdst (the shadow's copy of
 * dst, or NULL) takes the same words in the same pass, so the shadow's sync
 * does not read the run back from memory. */
static void put_run_fast(tha_heap_t *h, uint8_t *dst, uint8_t *sdst, const uint8_t *data,
                         const uint8_t *mask, uint64_t nb) {
    const uint64_t base = (uint64_t)(uintptr_t)h->base, piece = 4096;
    const int nt = nb >= NT_BLOCKS;
    for (uint64_t end = nb; end > 0;) {
        uint64_t start = end > piece ? end - piece : 0;
        if (sdst && nt) PUT_PIECES(1, 1);
        else if (sdst) PUT_PIECES(1, 0);
        else if (nt) PUT_PIECES(0, 1);
        else PUT_PIECES(0, 0);
        end = start;
    }
    if (nt) _mm_sfence();
}
#undef PUT_PIECES

static int copy_half(half_t *x) {
    uint8_t *sdst = x->h->shadow ? x->h->shadow + x->b0 * THA__BLOCK : NULL;
    put_run_fast(x->h, x->dst, sdst, x->src, x->mask, x->nb);
    return 0;
}
#endif

/* ---- apply, same-address frames --------------------------------------- */

/* The function ids, extern words and tagged NULLs among the pointer words
 * of nb verified blocks at dst become this process's values (heap
 * addresses are right as they are). */
static void funcs_from_wire(tha_heap_t *h, uint8_t *dst, const uint8_t *mask, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++)
        for (unsigned m = mask[i]; m; m &= m - 1) {
            uint64_t *w = (uint64_t *)(dst + i * THA__BLOCK + (unsigned)__builtin_ctz(m) * 8);
            if (*w & THA__FUNC_TAG)
                *w = *w < THA__WIRE_EXTERN
                         ? (uint64_t)(uintptr_t)h->schema->funcs[*w & ~THA__FUNC_TAG].fn
                         : native_word(h, *w);
        }
}

/* A verified run of a same-address frame into the heap: a straight copy,
 * then the function ids if the verify pass met any (h->funcs_seen). A big
 * run is copied as put_run_fast copies (256 KiB pieces from the end back,
 * where the verify pass left the frame in the cache; non-temporal stores
 * from 1 MiB), only without rewriting a word: a front-to-back memcpy
 * would read it all from memory again. */
static void copy_fixed(tha_heap_t *h, uint8_t *dst, const uint8_t *data,
                       const uint8_t *mask, uint64_t nb) {
#ifdef FAST_X86
    if (nb >= BIG_BLOCKS) {
        const int nt = nb >= NT_BLOCKS;
        for (uint64_t end = nb; end > 0;) {
            uint64_t start = end > 4096 ? end - 4096 : 0;
            if (nt)
                for (uint64_t i = start; i < end; i++)
                    put_block(h, dst + i * THA__BLOCK, data + i * THA__BLOCK, 0, 0, 1);
            else
                memcpy(dst + start * THA__BLOCK, data + start * THA__BLOCK,
                       (end - start) * THA__BLOCK);
            end = start;
        }
        if (nt) _mm_sfence();
    } else
#endif
        memcpy(dst, data, nb * THA__BLOCK);
    if (h->funcs_seen) funcs_from_wire(h, dst, mask, nb);
}

static int copy_fixed_half(half_t *x) {
    copy_fixed(x->h, x->dst, x->src, x->mask, x->nb);
    return 0;
}

/* Copies and rebases every run of a verified frame into the heap (fixed,
 * a same-address frame: copies only). */
static inline __attribute__((always_inline)) void
copy_runs_k(tha_heap_t *h, const tha__vrun_t *runs, uint32_t nruns, const int fixed) {
    /* scattered runs: ask for the heap's lines (and the shadow's, which
     * tha__track_sync_shadow writes after each run) PREFETCH_RUNS runs
     * ahead, from the index: no chain of loads through the frame */
    for (uint32_t i = 0; i < PREFETCH_RUNS && i < nruns; i++)
        if (runs[i].nb < BIG_BLOCKS) {
            prefetch_blocks(h->base, runs[i].b0, runs[i].nb, 1);
            if (h->shadow) prefetch_blocks(h->shadow, runs[i].b0, runs[i].nb, 1);
        }
    for (uint32_t i = 0; i < nruns; i++) {
        if (i + PREFETCH_RUNS < nruns && runs[i + PREFETCH_RUNS].nb < BIG_BLOCKS) {
            const tha__vrun_t *ahead = &runs[i + PREFETCH_RUNS];
            prefetch_blocks(h->base, ahead->b0, ahead->nb, 1);
            __builtin_prefetch(ahead->mask); /* the frame's lines too */
            __builtin_prefetch(ahead->data);
            __builtin_prefetch(h->ptrmap + ahead->b0, 1);
            if (h->shadow) prefetch_blocks(h->shadow, ahead->b0, ahead->nb, 1);
        }
        const tha__run_t run = {.offset = runs[i].b0 * THA__BLOCK, .nblocks = runs[i].nb};
        const uint8_t *mask = runs[i].mask, *data = runs[i].data;
        uint64_t b0 = runs[i].b0;
        uint8_t *dst = h->base + b0 * THA__BLOCK;
        int synced = 0; /* the shadow took the run already */
        if (fixed && run.nblocks >= PAR_BLOCKS && codec_threads > 1) {
            half_t a = {.fn = copy_fixed_half, .dst = dst, .src = data, .mask = mask,
                        .b0 = b0},
                   b;
            split(&a, &b, h, run.nblocks, 0);
            run_halves(&a, &b);
        } else if (fixed) {
            copy_fixed(h, dst, data, mask, run.nblocks);
        } else
#ifdef FAST_X86
        if (run.nblocks >= PAR_BLOCKS && codec_threads > 1) {
            half_t a = {.fn = copy_half, .dst = dst, .src = data, .mask = mask, .b0 = b0},
                   b;
            split(&a, &b, h, run.nblocks, 0);
            run_halves(&a, &b);
            synced = 1;
        } else if (run.nblocks >= BIG_BLOCKS) {
            put_run_fast(h, dst, h->shadow ? h->shadow + b0 * THA__BLOCK : NULL, data, mask,
                         run.nblocks);
            synced = 1;
        } else
#endif
        for (uint64_t c = 0; c < run.nblocks; c += CHUNK_BLOCKS) {
            uint64_t n = run.nblocks - c < CHUNK_BLOCKS ? run.nblocks - c : CHUNK_BLOCKS;
            memcpy(dst + c * THA__BLOCK, data + c * THA__BLOCK, n * THA__BLOCK);
            from_wire(h, dst + c * THA__BLOCK, mask + c, n);
        }
        memcpy(h->ptrmap + b0, mask, run.nblocks);
        if (!synced) tha__track_sync_shadow(h, b0, run.nblocks);
    }
}

/* runs: the frame's, as check_runs indexed them. */
static void copy_runs(tha_heap_t *h, const tha__frame_hdr_t *hd, const tha__vrun_t *runs) {
    if (tha__frame_base(hd))
        copy_runs_k(h, runs, hd->nruns, 1);
    else
        copy_runs_k(h, runs, hd->nruns, 0);
}

/* A whole new image ending at top replaced one ending at old_top: what lay
 * above top reads zero, maps no pointer words and is no local change. */
static void zap_above(tha_heap_t *h, uint64_t top, uint64_t old_top) {
    if (old_top <= top) return;
    madvise(h->base + top, old_top - top, MADV_DONTNEED);
    if (h->shadow) madvise(h->shadow + top, old_top - top, MADV_DONTNEED);
    tha__wp_zapped(h, top, old_top - top);
    memset(h->ptrmap + top / THA__BLOCK, 0, (old_top - top) / THA__BLOCK);
}

int tha_heap_apply(tha_heap_t *h, const void *frame, size_t len) {
    tha__frame_hdr_t hd;
    int rc = tha__frame_parse(frame, len, &hd, h->err, sizeof h->err);
    if (rc) return rc;
    return tha__apply(h, &hd, frame, len);
}

int tha__apply(tha_heap_t *h, const tha__frame_hdr_t *hdp, const void *frame, size_t len) {
    const tha__frame_hdr_t hd = *hdp;
    int rc;
    if (hd.kind == THA__FRAME_SEGMENT)
        return tha__hfail(h, THA_EFRAME, "segment seq %llu: segments are applied by "
                          "bulk sync only", (unsigned long long)hd.seq);
    /* one series, one maker (see tha_heap_encode): a frame applied to a
     * source would leave its backlog behind the heap for good */
    if (h->backlog)
        return tha__hfail(h, THA_ESTATE, "apply: this heap is replicated through a "
                          "backlog, which makes its frames; it takes none from "
                          "elsewhere (stop replicating it first)");
    const uint8_t *f = frame, *body = f + THA_FRAME_HEADER_SIZE;
    uint64_t body_len = len - THA_FRAME_HEADER_SIZE, done = 0;
    rc = check_identity(h, &hd, f, len);
    if (rc) return rc;
    uint32_t crc = 0;
    rc = check_runs(h, &hd, body, body_len, &done, &crc);
    if (rc) { /* a corrupt frame says so, whatever broke first */
        crc = tha_crc32c(crc, body + done, body_len - done);
        if (crc != hd.body_crc)
            return tha__hfail(h, THA_ECHECKSUM, "%s seq %llu: body checksum mismatch",
                        kind_name(hd.kind), (unsigned long long)hd.seq);
        return rc;
    }
    if (crc != hd.body_crc)
        return tha__hfail(h, THA_ECHECKSUM, "%s seq %llu: body checksum mismatch",
                    kind_name(hd.kind), (unsigned long long)hd.seq);
    rc = check_region_header(h, &hd, body, body_len);
    if (rc) return rc;
    /* The allocator metadata the frame writes must stay consistent. */
    const tha__vrun_t *runs = h->scratch; /* check_runs indexed them */
    if (hd.kind == THA_FRAME_SNAPSHOT)
        rc = tha__check_snapshot(h, &hd, runs[0].data, runs[0].mask);
    else if (!h->fuzzy)
        rc = tha__check_delta(h, &hd, runs);
    if (rc) {
        if (rc != THA_ECORRUPT) return rc;
        char why[sizeof h->err];
        snprintf(why, sizeof why, "%s", h->err);
        return tha__hfail(h, THA_EFRAME, "%s seq %llu refused, it would corrupt the "
                          "heap: %s", kind_name(hd.kind), (unsigned long long)hd.seq, why);
    }
    /* Tagged NULLs and function pointer slots, in the slots the frame leaves
     * them in (a staging heap's deltas wait for its whole check, as above);
     * frames of schemas without function slots and without tagged NULLs
     * never pay for it. */
    if ((h->wire_tagnull || h->schema->func_slots) &&
        (hd.kind == THA_FRAME_SNAPSHOT || !h->fuzzy) &&
        (rc = tha__check_slots(h, &hd, runs)))
        return rc;
    if ((rc = tha__statics_placed(h))) return rc;
    rc = tha__commit(h, hd.top);
    if (rc)
        return tha__hfail(h, rc, "%s seq %llu: cannot commit %llu bytes: %s",
                    kind_name(hd.kind), (unsigned long long)hd.seq,
                    (unsigned long long)hd.top, tha_strerror(rc));

    /* With a delta log the frame is applied only once the log has it. */
    if ((rc = tha__log_append(h, &hd, frame, len))) return rc;
    /* Verified: from here on nothing fails. */
    uint64_t old_top = tha__reg(h)->top;
    copy_runs(h, &hd, h->scratch);
    if (hd.kind == THA_FRAME_SNAPSHOT) {
        zap_above(h, hd.top, old_top);
        tha__clear_dirty(h);
        h->lineage = hd.lineage;
    }
    h->seq = hd.seq;
    h->epoch = hd.epoch;
    h->frames_applied++;
    h->bytes_applied += len;
    tha__statics_pull(h);
    return 0;
}

/* ---- segments (bulk sync) --------------------------------------------- */

static uint64_t segment_blocks(const tha_heap_t *h, uint64_t from, uint64_t max) {
    uint64_t top_blocks = tha__reg(h)->top / THA__BLOCK;
    if (from >= top_blocks) return 0;
    return top_blocks - from < max ? top_blocks - from : max;
}

size_t tha__segment_size(const tha_heap_t *h, uint64_t from, uint64_t max) {
    return tha__segment_bytes(segment_blocks(h, from, max));
}

int tha__encode_segment(tha_heap_t *h, uint64_t *from, uint64_t max, void *buf,
                        size_t cap, size_t *len) {
    if (*from == 0) { /* a bulk sync or checkpoint begins: bound roots first */
        int rc = tha__roots_refresh(h);
        if (!rc) rc = tha__statics_push(h);
        if (rc) return rc;
    }
    uint64_t nb = segment_blocks(h, *from, max);
    size_t need = tha__segment_size(h, *from, max);
    *len = need;
    if (!buf || cap < need)
        return tha__hfail(h, THA_ETOOSMALL, "segment needs %zu bytes", need);
    uint8_t *out = buf, *q = out + THA_FRAME_HEADER_SIZE;
    const uint8_t *crc_from = q;
    tha__frame_hdr_t hd;
    tha__frame_fill(h, &hd, THA__FRAME_SEGMENT, h->seq, need);
    uint32_t raw = ~0u;
    if (nb) {
        int rc = put_run(h, THA__FRAME_SEGMENT, *from, nb, &q, &raw, &crc_from);
        if (rc) return rc;
        hd.nruns = 1;
        hd.nblocks = nb;
    }
    crc_flush(&raw, &crc_from, q);
    tha__frame_finish(&hd, ~raw, out);
    *from += nb;
    return 0;
}

/* A segment must belong to the heap being filled: kind, schema, frame
 * series, and a source no bigger than this heap. */
static int check_segment_identity(tha_heap_t *h, const tha__frame_hdr_t *hd) {
    unsigned long long seq = (unsigned long long)hd->seq;
    if (hd->kind != THA__FRAME_SEGMENT)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu where a segment was expected",
                          kind_name(hd->kind), seq);
    if (hd->fingerprint != tha_schema_fingerprint(h->schema) || hd->lineage != h->lineage)
        return tha__hfail(h, THA_EMISMATCH, "segment seq %llu belongs to another "
                          "schema or frame series", seq);
    if (hd->capacity > h->capacity)
        return tha__hfail(h, THA_ECAPACITY, "segment seq %llu: source capacity %llu "
                          "exceeds this heap's %llu", seq,
                          (unsigned long long)hd->capacity,
                          (unsigned long long)h->capacity);
    return tha__frame_address_ok(h, hd);
}

int tha__apply_segment(tha_heap_t *h, const tha__frame_hdr_t *hdp, const void *frame,
                       size_t len) {
    const tha__frame_hdr_t hd = *hdp;
    unsigned long long seq = (unsigned long long)hd.seq;
    int rc = check_segment_identity(h, &hd);
    if (rc) return rc;
    const uint8_t *body = (const uint8_t *)frame + THA_FRAME_HEADER_SIZE;
    uint64_t body_len = len - THA_FRAME_HEADER_SIZE, done = 0;
    uint32_t crc = 0;
    rc = check_runs(h, &hd, body, body_len, &done, &crc);
    if (rc || crc != hd.body_crc) {
        if (rc) crc = tha_crc32c(crc, body + done, body_len - done);
        if (crc != hd.body_crc)
            return tha__hfail(h, THA_ECHECKSUM, "segment seq %llu: body checksum "
                              "mismatch", seq);
        return rc;
    }
    rc = tha__commit(h, hd.top);
    if (rc)
        return tha__hfail(h, rc, "segment seq %llu: cannot commit %llu bytes", seq,
                          (unsigned long long)hd.top);
    copy_runs(h, &hd, h->scratch);
    return 0;
}

int tha__apply_segment_in_place(tha_heap_t *h, const tha__frame_hdr_t *hdp,
                                const void *head, size_t head_len, uint64_t data_len) {
    const tha__frame_hdr_t hd = *hdp;
    unsigned long long seq = (unsigned long long)hd.seq;
    int rc = check_segment_identity(h, &hd);
    if (rc) return rc;
    const uint8_t *body = (const uint8_t *)head + THA_FRAME_HEADER_SIZE;
    tha__run_t run;
    if (hd.nruns != 1 || head_len < THA_FRAME_HEADER_SIZE + sizeof run)
        return tha__hfail(h, THA_EFRAME, "segment seq %llu: not one run", seq);
    memcpy(&run, body, sizeof run);
    uint64_t b0 = run.offset / THA__BLOCK, nb = run.nblocks, mlen = tha__align_up(nb, 8);
    uint64_t top_blocks = hd.top / THA__BLOCK;
    if (run.offset % THA__BLOCK || nb == 0 || nb != hd.nblocks || b0 > top_blocks ||
        nb > top_blocks - b0 || head_len != THA_FRAME_HEADER_SIZE + sizeof run + mlen ||
        data_len != nb * THA__BLOCK || hd.length != head_len + data_len ||
        hd.top > h->committed)
        return tha__hfail(h, THA_EFRAME, "segment seq %llu: run at offset 0x%llx (%llu "
                          "blocks) does not match the bytes read", seq,
                          (unsigned long long)run.offset, (unsigned long long)nb);
    const uint8_t *mask = body + sizeof run;
    uint8_t *data = h->base + run.offset;
    /* CRC of the run header and mask, then of the data where it lies */
    uint32_t raw = tha__crc32c_raw(~0u, body, sizeof run + mlen), at_data = raw;
    rc = 0;
    const uint64_t meta_blocks = tha__region_layout(hd.capacity).data_off / THA__BLOCK;
    for (uint64_t j = 0; b0 < meta_blocks && j < nb && !rc; j++)
        if (mask[j] && b0 + j < meta_blocks)
            rc = tha__hfail(h, THA_EFRAME, "segment seq %llu: pointer mask on allocator "
                            "metadata at offset 0x%llx", seq,
                            (unsigned long long)((b0 + j) * THA__BLOCK));
    for (uint64_t j = nb; j < mlen && !rc; j++)
        if (mask[j])
            rc = tha__hfail(h, THA_EFRAME, "segment seq %llu: run mask padding is not "
                            "zero", seq);
    h->funcs_seen = 0;
    h->unbound_seen = 0;
    if (!rc) {
#ifdef FAST_X86
        if (fast)
            rc = verify_run(h, &hd, data, mask, b0, nb, &raw);
        else
#endif
            rc = verify_chunked(h, &hd, data, mask, b0, nb, &raw);
    }
    if (rc) /* a corrupt frame says so, whatever broke first */
        raw = tha__crc32c_raw(at_data, data, data_len);
    if (~raw != hd.body_crc)
        return tha__hfail(h, THA_ECHECKSUM, "segment seq %llu: body checksum mismatch",
                          seq);
    if (rc) return rc;
    if (!tha__frame_base(&hd))
        from_wire(h, data, mask, nb);
    else if (h->funcs_seen) /* same-address: the data is in place already */
        funcs_from_wire(h, data, mask, nb);
    memcpy(h->ptrmap + b0, mask, nb);
    tha__track_sync_shadow(h, b0, nb);
    return 0;
}

/* ---- a same-address bulk sync going live in place --------------------- */

int tha__take_image(tha_heap_t *L, tha_heap_t *S) {
    THA_ASSERT(L->addr && L->addr == S->addr && L->capacity >= S->capacity &&
               L->addr == (uint64_t)(uintptr_t)L->base);
    const uint64_t top = tha__reg(S)->top, old_top = tha__reg(L)->top;
    int rc = tha__commit(L, top);
    if (rc)
        return tha__hfail(L, rc, "bulk sync: the live heap at 0x%llx cannot commit the "
                          "image's %llu bytes: %s", (unsigned long long)L->addr,
                          (unsigned long long)top, tha_strerror(rc));
    if (L->log_sink) { /* what tha_heap_detach_log does, through the sink */
        L->log_sink->close(L->log);
        L->log_sink = NULL;
        L->log = NULL;
    }
    /* the staging heap passed tha__check_staging at this very address */
    memcpy(L->base, S->base, top);
    memcpy(L->ptrmap, S->ptrmap, top / THA__BLOCK);
    tha__track_sync_shadow(L, 0, top / THA__BLOCK);
    zap_above(L, top, old_top);
    tha__clear_dirty(L);
    L->collected = 0;
    L->lineage = S->lineage;
    L->seq = S->seq;
    L->epoch = S->epoch;
    L->frames_applied += S->frames_applied;
    L->bytes_applied += S->bytes_applied;
    return 0;
}

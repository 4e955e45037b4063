/* heapcheck.c — the allocator's invariants, checked on a *view* of an image:
 * the heap itself (tha_heap_check), a snapshot frame's bytes before they
 * replace the heap, or the heap with a delta's runs laid over it (the
 * post-apply view, read without writing a byte). What is checked: the
 * region header (layout exact, top, counts), the page map (every page of
 * [data_off, top) in exactly one run of the right kinds and links), slabs
 * (record, slot headers, free list, counts, never-used slots zero), spans,
 * free spans, the free span and class lists, the counters, the pointer map
 * (exactly the live objects' relocation slots, zero everywhere else), the
 * pointer values, and the roots.
 *
 * Safety rule: every offset read from the image is bounds-checked before it
 * is used to form an address, so a check of arbitrary bytes can fail but
 * never crash or hit undefined behaviour.
 *
 * A full check costs O(image). A delta's check (tha__check_delta) costs
 * what the delta touches: the runs whose page-map entries it rewrites, the
 * slabs and spans whose records, slot headers, free links or masks change,
 * and only then the class or free-span lists (walked whole: O(list)).
 */
#include "heapcheck.h"

#include <stdio.h>
#include <stdlib.h>

typedef unsigned long long ull;

#define BAD(...) return tha__hfail(v->h, THA_ECORRUPT, "heap check: " __VA_ARGS__)

#define PAGE_BLOCKS (THA__PAGE / THA__BLOCK)

/* ---- views ------------------------------------------------------------- */

typedef tha__vrun_t vrun_t;

typedef struct view {
    tha_heap_t *h;          /* schema and error text */
    const uint8_t *base;    /* image bytes */
    const uint8_t *map;     /* mask byte per block */
    uint64_t limit;         /* bytes readable at base; above: zero */
    uint64_t room;          /* the top may reach this (a delta commits after) */
    uint64_t pbase;         /* a data pointer word minus this is its offset
                               (the heap's origin; a frame: 0, or the base of
                               a same-address frame) */
    int wire;               /* function pointers are tagged ids (a frame) */
    int raw_ok;             /* a same-address image: untyped (THA_T_RAW)
                               allocations allowed, their bytes unchecked */
    int values;             /* check pointer values (else verified already) */
    const vrun_t *runs;     /* overlay: blocks replaced by a delta's runs */
    uint32_t nruns, cur;
    tha__region_t r;        /* the region header as the view reads it */
    uint64_t first, end;    /* first data page, page at top */
} view_t;

typedef struct acc {
    uint64_t objects, bytes, free_heads, slabs_listed;
} acc_t;

static const uint8_t zero_block[THA__BLOCK];

/* The overlay run holding block b, or NULL. */
static const vrun_t *vrun_of(view_t *v, uint64_t b) {
    const vrun_t *r = v->runs;
    uint32_t c = v->cur;
    if (c < v->nruns && b >= r[c].b0) {
        if (b < r[c].b0 + r[c].nb) return &r[c];
        if (c + 1 < v->nruns && b < r[c + 1].b0) return NULL;
        if (c + 1 < v->nruns && b < r[c + 1].b0 + r[c + 1].nb) {
            v->cur = c + 1;
            return &r[c + 1];
        }
    }
    uint32_t lo = 0, hi = v->nruns;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r[mid].b0 + r[mid].nb <= b) lo = mid + 1;
        else hi = mid;
    }
    if (lo < v->nruns && b >= r[lo].b0) {
        v->cur = lo;
        return &r[lo];
    }
    return NULL;
}

/* The 64 bytes of block b as the view reads them. */
static inline const uint8_t *vblock(view_t *v, uint64_t b) {
    if (v->nruns) {
        const vrun_t *r = vrun_of(v, b);
        if (r) return r->data + (b - r->b0) * THA__BLOCK;
    }
    if (b >= v->limit / THA__BLOCK) return zero_block;
    return v->base + b * THA__BLOCK;
}

static inline uint8_t vmask(view_t *v, uint64_t b) {
    if (v->nruns) {
        const vrun_t *r = vrun_of(v, b);
        if (r) return r->mask[b - r->b0];
    }
    if (b >= v->limit / THA__BLOCK) return 0;
    return v->map[b];
}

/* len bytes at off, inside one block. */
static inline void vread(view_t *v, uint64_t off, void *dst, size_t len) {
    memcpy(dst, vblock(v, off / THA__BLOCK) + off % THA__BLOCK, len);
}

static inline uint64_t vget64(view_t *v, uint64_t off) {
    uint64_t x;
    vread(v, off, &x, 8);
    return x;
}

static inline tha__page_t vpage(view_t *v, uint64_t p) {
    tha__page_t pg;
    vread(v, v->r.pagemap_off + p * sizeof pg, &pg, sizeof pg);
    return pg;
}

static inline tha__objhdr_t vhdr(view_t *v, uint64_t off) {
    tha__objhdr_t oh;
    vread(v, off, &oh, sizeof oh);
    return oh;
}

/* Set mask bits over blocks [b0, b0 + nb). */
static uint64_t vpopcount(view_t *v, uint64_t b0, uint64_t nb) {
    uint64_t n = 0, b = b0, e = b0 + nb;
    if (!v->nruns && e <= v->limit / THA__BLOCK) {
        const uint8_t *m = v->map + b0;
        uint64_t i = 0;
        for (; i + 8 <= nb; i += 8) {
            uint64_t w;
            memcpy(&w, m + i, 8);
            n += (uint64_t)__builtin_popcountll(w);
        }
        for (; i < nb; i++) n += (uint64_t)__builtin_popcount(m[i]);
        return n;
    }
    for (; b < e; b++) n += (uint64_t)__builtin_popcount(vmask(v, b));
    return n;
}

static inline bool vbit(view_t *v, uint64_t word) {
    return vmask(v, word / 8) >> (word % 8) & 1;
}

/* Bytes [off, off + len) all zero. */
static bool vzero(view_t *v, uint64_t off, uint64_t len) {
    while (len) {
        uint64_t in = THA__BLOCK - off % THA__BLOCK, n = len < in ? len : in;
        const uint8_t *p = vblock(v, off / THA__BLOCK) + off % THA__BLOCK;
        if (p != zero_block + off % THA__BLOCK) {
            uint64_t i = 0, acc = 0;
            for (; i + 8 <= n; i += 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                acc |= w;
            }
            for (; i < n; i++) acc |= p[i];
            if (acc) return false;
        }
        off += n;
        len -= n;
    }
    return true;
}

/* ---- region header ----------------------------------------------------- */

static void read_region(view_t *v) {
    for (uint64_t o = 0; o < sizeof v->r; o += THA__BLOCK) {
        uint64_t n = sizeof v->r - o < THA__BLOCK ? sizeof v->r - o : THA__BLOCK;
        memcpy((uint8_t *)&v->r + o, vblock(v, o / THA__BLOCK), n);
    }
}

/* The header's layout is the one tha__region_layout gives its capacity. */
static int check_region(view_t *v) {
    const tha__region_t *r = &v->r;
    const char *why = tha__region_magic_why(r->magic);
    if (why) BAD("region header: %s", why);
    if (r->capacity == 0 || r->capacity % THA__GRANULE || r->capacity > v->h->capacity)
        BAD("region header: capacity %llu (heap has %llu)", (ull)r->capacity,
            (ull)v->h->capacity);
    const tha__layout_t lay = tha__region_layout(r->capacity);
    const uint64_t data_off = lay.data_off;
    if (r->npages != lay.npages || r->roots_off != lay.roots_off ||
        r->pagemap_off != lay.pagemap_off || r->data_off != data_off)
        BAD("region header: layout (pagemap_off 0x%llx, roots_off 0x%llx, data_off "
            "0x%llx, npages %llu) is not the one of capacity %llu", (ull)r->pagemap_off,
            (ull)r->roots_off, (ull)r->data_off, (ull)r->npages, (ull)r->capacity);
    if (r->top % THA__PAGE || r->top < data_off || r->top > r->capacity || r->top > v->room)
        BAD("region header: top 0x%llx impossible (data from 0x%llx, %llu bytes "
            "readable)", (ull)r->top, (ull)data_off, (ull)v->room);
    if (r->nroots > THA_MAX_ROOTS) BAD("region header: %llu roots", (ull)r->nroots);
    if (r->nepochs < 1 || r->nepochs > THA__MAX_EPOCHS)
        BAD("region header: %llu epoch history entries", (ull)r->nepochs);
    v->first = data_off / THA__PAGE;
    v->end = r->top / THA__PAGE;
    return 0;
}

/* ---- objects ----------------------------------------------------------- */

/* A pointer word's value, as the view holds it, is NULL, in the image, a
 * function this process binds, inside an extern it binds, or a tagged NULL
 * of the bits the slot's field declares (tags). A function pointer slot
 * (is_func) holds NULL or a bound function only: anything else would be
 * called. */
static int check_value(view_t *v, const tha__type_t *t, uint64_t payload, uint64_t at,
                       uint32_t tags, int is_func) {
    uint64_t w = vget64(v, at), top = v->r.top;
    const tha_schema_t *s = v->h->schema;
    if (!w) return 0;
    if (v->wire) {
        if (w & THA__FUNC_TAG) {
            uint64_t id = w & ~THA__FUNC_TAG, in = w & THA__EXTERN_OFF_MASK;
            uint32_t x = THA__EXTERN_ID(w);
            switch (is_func ? 0 : THA__WIRE_CLASS(w)) {
            case 0:
                if (id < s->nfuncs && s->funcs[id].fn) return 0;
                break;
            case 1:
                if (x < s->nexterns && s->externs[x].addr && in < s->externs[x].size)
                    return 0;
                break;
            case 2:
                id = w & ~THA__WIRE_TAGNULL;
                if (id && !(id & ~(uint64_t)tags)) return 0;
                break;
            }
        } else if (!is_func && w - v->pbase - 1 < top) { /* pbase: 0, or a same-address base */
            return 0;
        }
    } else if (is_func) {
        if (tha__schema_func_id(s, (void (*)(void))(uintptr_t)w) >= 0) return 0;
    } else {
        uint64_t o = w - v->pbase;
        if (o - 1 < top) return 0;
        if (tha__schema_func_id(s, (void (*)(void))(uintptr_t)w) >= 0) return 0;
        if (tha__schema_extern_at(s, (uintptr_t)w, NULL) >= 0) return 0;
        if (!(w & ~(uint64_t)tags)) return 0;
    }
    if (is_func)
        BAD("%s at 0x%llx: function pointer at +0x%llx holds 0x%llx, no function "
            "registered in this process", t->name, (ull)payload, (ull)(at - payload),
            (ull)w);
    BAD("%s at 0x%llx: pointer at +0x%llx holds 0x%llx, outside the heap", t->name,
        (ull)payload, (ull)(at - payload), (ull)w);
}

/* The live header at slot (unit bytes with it, the payload at slot + hdr):
 * a known type that fits; every pointer slot of its elements mapped (and
 * its value sane). Adds the object's pointer words to *words. */
static int check_header(view_t *v, uint64_t slot, uint64_t unit, uint64_t hdr, acc_t *a,
                        uint64_t *words) {
    tha__objhdr_t oh = vhdr(v, slot);
    const tha__type_t *t = tha__schema_type(v->h->schema, oh.type_id);
    if (!t || t->size == 0)
        BAD("object at 0x%llx has unknown type %u", (ull)slot, oh.type_id);
    if (oh.type_id == THA_T_RAW && !v->raw_ok) /* its pointers cannot be rebased */
        BAD("object at 0x%llx is untyped (tha_raw), which only a same-address heap "
            "may hold", (ull)slot);
    if (oh.count == 0 || oh.count > (unit - hdr) / t->size)
        BAD("object at 0x%llx (%u x %s) overflows its %llu-byte slot", (ull)slot,
            oh.count, t->name, (ull)unit);
    if (hdr > THA__HDR && !vzero(v, slot + THA__HDR, hdr - THA__HDR))
        BAD("span at 0x%llx: its header block's padding is not zero", (ull)slot);
    uint64_t payload = slot + hdr;
    a->objects++;
    a->bytes += t->size * oh.count;
    *words += (uint64_t)t->nslots * oh.count;
    uint64_t nw = t->size / 8, mapb = v->limit / THA__BLOCK;
    if (t->nslots && !v->nruns && !(v->values && v->wire) && t->size % 8 == 0 && nw <= 56 &&
        (payload + t->size * oh.count) / 64 + 8 <= mapb) {
        /* fast: each element's bits of the map, as one word, are its pattern */
        uint64_t pat = 0;
        for (uint32_t k = 0; k < t->nslots; k++) pat |= 1ull << (t->slots[k].offset / 8);
        uint64_t lowmask = nw == 64 ? ~0ull : (1ull << nw) - 1;
        for (uint64_t e = 0, w0 = payload / 8; e < oh.count; e++, w0 += nw) {
            uint64_t bits;
            memcpy(&bits, v->map + w0 / 8, 8);
            if (((bits >> (w0 % 8)) & lowmask) != pat)
                BAD("%s at 0x%llx: element %llu: pointer map bits 0x%llx, the layout "
                    "has 0x%llx", t->name, (ull)payload, (ull)e,
                    (ull)((bits >> (w0 % 8)) & lowmask), (ull)pat);
            if (!v->values) continue;
            for (uint32_t k = 0; k < t->nslots; k++) {
                uint64_t at = w0 * 8 + t->slots[k].offset, w, top = v->r.top;
                memcpy(&w, v->base + at, 8);
                if (w && (w - v->pbase - 1 >= top || t->slots[k].is_func)) {
                    int rc = check_value(v, t, payload, at, t->slots[k].tag_mask,
                                         t->slots[k].is_func);
                    if (rc) return rc;
                }
            }
        }
        return 0;
    }
    for (uint32_t e = 0; e < oh.count && t->nslots; e++)
        for (uint32_t k = 0; k < t->nslots; k++) {
            uint64_t at = payload + e * t->size + t->slots[k].offset;
            if (!vbit(v, at / 8))
                BAD("%s at 0x%llx: pointer at +0x%llx is not in the pointer map",
                    t->name, (ull)payload, (ull)(at - payload));
            if (v->values) {
                int rc = check_value(v, t, payload, at, t->slots[k].tag_mask,
                                     t->slots[k].is_func);
                if (rc) return rc;
            }
        }
    return 0;
}

/* ---- runs of pages ------------------------------------------------------ */

static int check_slab(view_t *v, uint64_t p, acc_t *a) {
    uint64_t off = p * THA__PAGE;
    tha__slab_t s;
    vread(v, off, &s, sizeof s);
    int cls = vpage(v, p).cls;
    if (cls >= (int)THA__NCLASSES || s.cls != (uint32_t)cls)
        BAD("slab at 0x%llx: class %d / %u", (ull)off, cls, s.cls);
    uint32_t size = tha__class_size(cls);
    uint64_t first = off + THA__SLAB_HDR;
    if (s.nslots != (THA__SLAB_PAGES * THA__PAGE - THA__SLAB_HDR) / size ||
        s.bump > s.nslots || s.nfree > s.nslots || s.on_list > 1)
        BAD("slab at 0x%llx: counts %u/%u/%u/%u", (ull)off, s.nslots, s.bump, s.nfree,
            s.on_list);
    uint64_t live = 0, listed = 0, words = 0;
    for (uint32_t i = 0; i < s.bump; i++) {
        uint64_t slot = first + (uint64_t)i * size;
        if (vhdr(v, slot).count) {
            int rc = check_header(v, slot, size, THA__HDR, a, &words);
            if (rc) return rc;
            live++;
        }
    }
    uint64_t unused = first + (uint64_t)s.bump * size;
    if (!vzero(v, unused, off + THA__SLAB_PAGES * THA__PAGE - unused))
        BAD("slab at 0x%llx: never-used slots from 0x%llx are not zero", (ull)off,
            (ull)unused);
    for (uint64_t f = s.free; f;) {
        if (f < first || (f - first) % size || (f - first) / size >= s.bump ||
            ++listed > s.nslots)
            BAD("slab at 0x%llx: free list reaches 0x%llx", (ull)off, (ull)f);
        if (vhdr(v, f).count)
            BAD("slab at 0x%llx: live slot 0x%llx on the free list", (ull)off, (ull)f);
        f = vget64(v, f + THA__HDR);
    }
    if (live + listed + (s.nslots - s.bump) != s.nslots ||
        s.nfree != listed + (s.nslots - s.bump))
        BAD("slab at 0x%llx: %llu live + %llu listed + %u unused != %u slots (nfree %u)",
            (ull)off, (ull)live, (ull)listed, s.nslots - s.bump, s.nslots, s.nfree);
    if ((s.nfree > 0) != (s.on_list != 0))
        BAD("slab at 0x%llx: %u free slots but on_list=%u", (ull)off, s.nfree, s.on_list);
    uint64_t mapped = vpopcount(v, off / THA__BLOCK, THA__SLAB_PAGES * PAGE_BLOCKS);
    if (mapped != words)
        BAD("slab at 0x%llx: %llu words in the pointer map, its objects have %llu",
            (ull)off, (ull)mapped, (ull)words);
    a->slabs_listed += s.on_list;
    return 0;
}

/* The run starting at page p (a head): its tails, its record, its objects;
 * *n = its length in pages. */
static int check_run(view_t *v, uint64_t p, uint64_t *n, acc_t *a) {
    tha__page_t pg = vpage(v, p);
    uint8_t tail;
    *n = pg.link;
    if (pg.kind != THA__PG_FREE_HEAD && pg.kind != THA__PG_SLAB_HEAD &&
        pg.kind != THA__PG_SPAN_HEAD)
        BAD("page %llu: kind %u where a span, slab or free span must start", (ull)p,
            pg.kind);
    if (*n == 0 || *n > v->end - p)
        BAD("page %llu: run of %llu pages passes the top", (ull)p, (ull)*n);
    tail = pg.kind + 1;
    for (uint64_t q = p + 1; q < p + *n; q++) {
        tha__page_t t = vpage(v, q);
        if (t.kind != tail || (tail != THA__PG_FREE_TAIL && t.link != p))
            BAD("page %llu: kind %u link %u inside the run at page %llu", (ull)q, t.kind,
                t.link, (ull)p);
    }
    uint64_t off = p * THA__PAGE, nb = *n * PAGE_BLOCKS;
    switch (pg.kind) {
    case THA__PG_FREE_HEAD: {
        tha__span_t sp;
        vread(v, off, &sp, sizeof sp);
        if (sp.npages != *n)
            BAD("free span at page %llu: record says %llu pages, map %llu", (ull)p,
                (ull)sp.npages, (ull)*n);
        if (*n > 1 && vpage(v, p + *n - 1).link != p)
            BAD("free span at page %llu: last page points to %u", (ull)p,
                vpage(v, p + *n - 1).link);
        if (vpopcount(v, off / THA__BLOCK, nb))
            BAD("free span at page %llu: words in the pointer map", (ull)p);
        a->free_heads++;
        return 0;
    }
    case THA__PG_SLAB_HEAD:
        if (*n != THA__SLAB_PAGES) BAD("slab at page %llu spans %llu pages", (ull)p, (ull)*n);
        return check_slab(v, p, a);
    default: {
        uint64_t words = 0;
        if (!vhdr(v, off).count) BAD("span at page %llu holds no object", (ull)p);
        int rc = check_header(v, off, *n * THA__PAGE, THA__SPAN_HDR, a, &words);
        if (rc) return rc;
        if (vpopcount(v, off / THA__BLOCK, nb) != words)
            BAD("span at page %llu: pointer map does not match its object", (ull)p);
        return 0;
    }
    }
}

/* ---- lists, roots ------------------------------------------------------- */

static int check_free_list(view_t *v, uint64_t want) {
    uint64_t listed = 0, prev = 0;
    for (uint64_t off = v->r.free_spans; off;) {
        uint64_t p = off / THA__PAGE;
        tha__span_t sp;
        if (off % THA__PAGE || p < v->first || p >= v->end ||
            vpage(v, p).kind != THA__PG_FREE_HEAD || ++listed > want)
            BAD("free span list broken at 0x%llx", (ull)off);
        vread(v, off, &sp, sizeof sp);
        if (sp.prev != prev) BAD("free span list broken at 0x%llx (prev)", (ull)off);
        prev = off;
        off = sp.next;
    }
    if (listed != want)
        BAD("%llu free spans in the page map, %llu on the list", (ull)want, (ull)listed);
    return 0;
}

static int check_class_lists(view_t *v, uint64_t want) {
    uint64_t on_lists = 0;
    for (uint32_t c = 0; c < THA__NCLASSES; c++) {
        uint64_t prev = 0;
        for (uint64_t off = v->r.class_slabs[c]; off;) {
            uint64_t p = off / THA__PAGE;
            tha__slab_t s;
            if (off % THA__PAGE || p < v->first || p >= v->end ||
                vpage(v, p).kind != THA__PG_SLAB_HEAD || ++on_lists > want)
                BAD("class %u slab list broken at 0x%llx", c, (ull)off);
            vread(v, off, &s, sizeof s);
            if (s.cls != c || s.prev != prev || !s.on_list)
                BAD("class %u slab list broken at 0x%llx", c, (ull)off);
            prev = off;
            off = s.next;
        }
    }
    if (on_lists != want)
        BAD("%llu slabs flagged on a list, %llu linked", (ull)want, (ull)on_lists);
    return 0;
}

/* The unit page p belongs to, as the view's page map says: its head page
 * and that page's entry; 0 if p is in no slab or span. */
static int vunit(view_t *v, uint64_t p, uint64_t *head, tha__page_t *out) {
    tha__page_t pg = vpage(v, p);
    if (pg.kind == THA__PG_SLAB_TAIL || pg.kind == THA__PG_SPAN_TAIL) {
        if (pg.link < v->first || pg.link >= p) return 0;
        p = pg.link;
        uint8_t k = pg.kind;
        pg = vpage(v, p);
        if (pg.kind != k - 1) return 0;
    }
    if (pg.kind != THA__PG_SLAB_HEAD && pg.kind != THA__PG_SPAN_HEAD) return 0;
    *head = p;
    *out = pg;
    return 1;
}

/* Payload of the live allocation holding off in the view, or 0; the page
 * p (unit head, entry) resolved already when unit is given. */
static uint64_t vfind_in(view_t *v, uint64_t off, int have, uint64_t p, tha__page_t pg) {
    uint64_t slot, end, hdr = THA__HDR;
    if (!have) return 0;
    if (pg.kind == THA__PG_SLAB_HEAD) {
        if (pg.cls >= THA__NCLASSES) return 0;
        uint64_t first = p * THA__PAGE + THA__SLAB_HDR, size = tha__class_size(pg.cls);
        if (off < first) return 0;
        slot = first + (off - first) / size * size;
        end = slot + size;
        if (end > (p + THA__SLAB_PAGES) * THA__PAGE) return 0;
    } else {
        slot = p * THA__PAGE;
        end = (p + pg.link) * THA__PAGE;
        hdr = THA__SPAN_HDR;
    }
    tha__objhdr_t oh = vhdr(v, slot);
    const tha__type_t *t = tha__schema_type(v->h->schema, oh.type_id);
    uint64_t payload = slot + hdr;
    if (!oh.count || !t || !t->size || off < payload ||
        (off - payload) / t->size >= oh.count || oh.count > (end - payload) / t->size)
        return 0;
    return payload;
}

static uint64_t vfind(view_t *v, uint64_t off) {
    if (off < v->r.data_off || off >= v->r.top) return 0;
    uint64_t p = 0;
    tha__page_t pg = {0};
    int have = vunit(v, off / THA__PAGE, &p, &pg);
    return vfind_in(v, off, have, p, pg);
}

static int check_roots(view_t *v, bool entries) {
    for (uint32_t i = 0; i < THA_MAX_ROOTS; i++) {
        bool used = i < v->r.nroots;
        if (!used && !entries) break;
        tha__root_t rt;
        vread(v, v->r.roots_off + (uint64_t)i * sizeof rt, &rt, sizeof rt);
        if (used != (rt.name[0] != 0) || memchr(rt.name, 0, sizeof rt.name) == NULL)
            BAD("root entry %u malformed", i);
        if (used && !vfind(v, rt.offset))
            BAD("root '%s' points to 0x%llx, not a live allocation", rt.name,
                (ull)rt.offset);
    }
    return 0;
}

/* ---- the whole image ---------------------------------------------------- */

static int check_all(view_t *v) {
    read_region(v);
    int rc = check_region(v);
    if (rc) return rc;
    const tha__region_t *r = &v->r;
    acc_t a = {0};
    for (uint64_t p = 0; p < v->first; p++)
        if (vpage(v, p).kind != THA__PG_META)
            BAD("metadata page %llu marked %u", (ull)p, vpage(v, p).kind);
    if (vpopcount(v, 0, r->data_off / THA__BLOCK))
        BAD("pointer map marks words of allocator metadata");
    for (uint64_t p = v->first, n; p < v->end; p += n) {
        rc = check_run(v, p, &n, &a);
        if (rc) return rc;
    }
    rc = check_free_list(v, a.free_heads);
    if (!rc) rc = check_class_lists(v, a.slabs_listed);
    if (rc) return rc;
    if (a.objects != r->live_objects || a.bytes != r->live_bytes)
        BAD("counters say %llu objects / %llu bytes, the walk found %llu / %llu",
            (ull)r->live_objects, (ull)r->live_bytes, (ull)a.objects, (ull)a.bytes);
    return check_roots(v, true);
}

int tha_heap_check(tha_heap_t *h) {
    view_t v = {.h = h, .base = h->base, .map = h->ptrmap, .limit = h->committed,
                .room = h->committed, .pbase = tha__origin(h), .values = 1,
                .raw_ok = h->addr != 0};
    if (h->committed < sizeof(tha__region_t))
        return tha__hfail(h, THA_ECORRUPT, "heap check: nothing committed");
    int rc = check_all(&v);
    if (rc) return rc;
    /* above the top: no pointer words (fresh pages are handed out as is) */
    uint64_t top_b = v.r.top / THA__BLOCK, end_b = h->committed / THA__BLOCK;
    if (end_b > top_b && vpopcount(&v, top_b, end_b - top_b))
        return tha__hfail(h, THA_ECORRUPT, "heap check: pointer map marks words above "
                          "the top (0x%llx)", (ull)v.r.top);
    /* the types of the pointers are the program's business, unless asked:
     * apply never refuses a frame for them */
    if (h->debug & THA_DEBUG_TYPES) return tha__check_types(h, "heap check: type check");
    return 0;
}

/* A snapshot's image, checked in the frame before it replaces anything.
 * data/mask: its one run; pointer words were verified (offsets <= top,
 * bound function ids). */
int tha__check_snapshot(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
                        const uint8_t *mask) {
    view_t v = {.h = h, .base = data, .map = mask, .limit = hd->top, .room = hd->top,
                .wire = 1, .pbase = tha__frame_base(hd), .raw_ok = hd->base64k != 0};
    if (hd->top < sizeof(tha__region_t))
        return tha__hfail(h, THA_ECORRUPT, "heap check: image too small");
    return check_all(&v);
}

/* ---- a delta, on the post-apply view ------------------------------------ */

typedef struct span_set {
    uint64_t *a;   /* pairs [from, to) of pages, ascending */
    size_t n, cap;
} span_set_t;

static int set_add(span_set_t *s, uint64_t from, uint64_t to) {
    if (s->n && s->a[2 * s->n - 1] >= from) { /* touching or overlapping the last */
        if (to > s->a[2 * s->n - 1]) s->a[2 * s->n - 1] = to;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        uint64_t *a = realloc(s->a, cap * 2 * sizeof *a);
        if (!a) return THA_ENOMEM;
        s->a = a;
        s->cap = cap;
    }
    s->a[2 * s->n] = from;
    s->a[2 * s->n + 1] = to;
    s->n++;
    return 0;
}

static bool set_has(const span_set_t *s, size_t *cur, uint64_t p) {
    while (*cur < s->n && s->a[2 * *cur + 1] <= p) (*cur)++;
    return *cur < s->n && s->a[2 * *cur] <= p;
}

/* Totals of the run at page p of the heap as it is (valid: it passed). */
static uint64_t old_run(tha_heap_t *h, uint64_t p, acc_t *a) {
    const tha__page_t *pm = tha__pagemap(h);
    uint64_t off = p * THA__PAGE, n = pm[p].link;
    if (pm[p].kind == THA__PG_FREE_HEAD) {
        a->free_heads++;
    } else if (pm[p].kind == THA__PG_SLAB_HEAD) {
        const tha__slab_t *s = THA__AT(h, off, tha__slab_t);
        uint32_t size = tha__class_size(pm[p].cls);
        for (uint32_t i = 0; i < s->bump; i++) {
            const tha__objhdr_t *oh = THA__AT(h, off + THA__SLAB_HDR + (uint64_t)i * size,
                                              tha__objhdr_t);
            if (oh->count) {
                a->objects++;
                a->bytes += tha__schema_type(h->schema, oh->type_id)->size * oh->count;
            }
        }
        a->slabs_listed += s->on_list;
    } else {
        const tha__objhdr_t *oh = THA__AT(h, off, tha__objhdr_t);
        a->objects++;
        a->bytes += tha__schema_type(h->schema, oh->type_id)->size * oh->count;
    }
    return n;
}

static uint64_t old_list_len(tha_heap_t *h, uint64_t head, size_t next_at) {
    uint64_t n = 0;
    for (uint64_t off = head; off; off = *(uint64_t *)(h->base + off + next_at)) n++;
    return n;
}

/* The page starting the run that holds page x in the view (walking back
 * over free tails: O(that free run)), or UINT64_MAX if the map is broken. */
static uint64_t run_start(view_t *v, uint64_t x) {
    for (;;) {
        tha__page_t pg = vpage(v, x);
        switch (pg.kind) {
        case THA__PG_FREE_HEAD:
        case THA__PG_SLAB_HEAD:
        case THA__PG_SPAN_HEAD:
            return x;
        case THA__PG_SLAB_TAIL:
        case THA__PG_SPAN_TAIL:
            if (pg.link < v->first || pg.link >= x) return UINT64_MAX;
            x = pg.link;
            break;
        case THA__PG_FREE_TAIL:
            if (x == v->first) return UINT64_MAX;
            x--;
            break;
        default:
            return UINT64_MAX;
        }
    }
}

typedef struct dstate {
    view_t *v;
    tha_heap_t *h;
    acc_t nw, old;          /* totals over what was re-checked, new and old */
    span_set_t checked;     /* pages whose runs were checked in the view */
    uint64_t *dirty;        /* heads of slabs/spans to check, ascending */
    size_t ndirty, dcap;
    bool spans_moved, slabs_moved, structural;
} dstate_t;

static int add_dirty(dstate_t *d, uint64_t head) {
    if (d->ndirty && d->dirty[d->ndirty - 1] == head) return 0;
    if (d->ndirty == d->dcap) {
        size_t cap = d->dcap ? d->dcap * 2 : 64;
        uint64_t *a = realloc(d->dirty, cap * sizeof *a);
        if (!a) return THA_ENOMEM;
        d->dirty = a;
        d->dcap = cap;
    }
    d->dirty[d->ndirty++] = head;
    return 0;
}

/* A touched block b of the slab at page head (old structure = the view's,
 * since its page-map entries are untouched): marks the slab dirty if a
 * record, header, free link or mask changes; never-used bytes stay zero. */
static int slab_block(dstate_t *d, uint64_t head, uint64_t b, const uint8_t *nb,
                      uint8_t nmask) {
    tha_heap_t *h = d->h;
    view_t *v = d->v;
    uint64_t off = head * THA__PAGE, B = b * THA__BLOCK;
    const tha__slab_t *s = THA__AT(h, off, tha__slab_t);
    if (B == off) { /* the record */
        const tha__slab_t *ns = (const tha__slab_t *)(const void *)nb;
        if (memcmp(ns, s, sizeof *s)) {
            if (ns->next != s->next || ns->prev != s->prev || ns->on_list != s->on_list ||
                ns->cls != s->cls)
                d->slabs_moved = true;
            return add_dirty(d, head);
        }
        return nmask ? add_dirty(d, head) : 0;
    }
    if (nmask != h->ptrmap[b]) return add_dirty(d, head);
    uint32_t size = tha__class_size(tha__pagemap(h)[head].cls);
    uint64_t first = off + THA__SLAB_HDR, unused = first + (uint64_t)s->bump * size;
    uint64_t i = (B - first) / size, slot = first + i * size;
    for (; slot < B + THA__BLOCK && slot < unused; slot += size) {
        if (slot >= B && memcmp(nb + (slot - B), h->base + slot, THA__HDR))
            return add_dirty(d, head); /* a header changes */
        if (!THA__AT(h, slot, tha__objhdr_t)->count) { /* free: its link */
            uint64_t link = slot + THA__HDR;
            if (link >= B && link < B + THA__BLOCK &&
                memcmp(nb + (link - B), h->base + link, 8))
                return add_dirty(d, head);
        }
    }
    if (unused < B + THA__BLOCK) { /* never-used slots stay zero */
        uint64_t from = unused > B ? unused : B;
        if (!vzero(v, from, B + THA__BLOCK - from)) return add_dirty(d, head);
    }
    return 0;
}

/* Runs ahead whose mask, pointer-map and page-map lines scan_blocks asks for. */
#define SCAN_AHEAD 32u

/* Walks the touched data blocks outside checked runs. */
static int scan_blocks(dstate_t *d) {
    view_t *v = d->v;
    tha_heap_t *h = d->h;
    const tha__page_t *pm = tha__pagemap(h);
    uint64_t data_b = v->r.data_off / THA__BLOCK;
    size_t cur = 0;
    for (uint32_t i = 0; i < v->nruns; i++) {
        const vrun_t *run = &v->runs[i];
        if (i + SCAN_AHEAD < v->nruns) { /* scattered runs: each line is a miss */
            const vrun_t *a = &v->runs[i + SCAN_AHEAD];
            __builtin_prefetch(a->mask);
            __builtin_prefetch(h->ptrmap + a->b0);
            __builtin_prefetch(&pm[a->b0 / PAGE_BLOCKS]);
        }
        uint64_t b = run->b0 < data_b ? data_b : run->b0, e = run->b0 + run->nb;
        for (; b < e; b++) {
            uint64_t p = b / PAGE_BLOCKS;
            if (set_has(&d->checked, &cur, p)) {
                b = d->checked.a[2 * cur + 1] * PAGE_BLOCKS - 1;
                continue;
            }
            const uint8_t *nb = run->data + (b - run->b0) * THA__BLOCK;
            uint8_t nmask = run->mask[b - run->b0];
            uint8_t k = pm[p].kind;
            uint64_t head = k == THA__PG_SLAB_TAIL || k == THA__PG_SPAN_TAIL ? pm[p].link : p;
            int rc = 0;
            switch (k) {
            case THA__PG_SLAB_HEAD:
            case THA__PG_SLAB_TAIL:
                rc = slab_block(d, head, b, nb, nmask);
                break;
            case THA__PG_SPAN_HEAD:
            case THA__PG_SPAN_TAIL: {
                /* the rest of the run inside this span at once: its page-map
                 * entries are untouched (p is in no checked cluster, and
                 * clusters are whole runs), so the heap's say where it ends */
                uint64_t end = (head + pm[head].link) * PAGE_BLOCKS;
                uint64_t stop = e < end ? e : end;
                if (cur < d->checked.n && d->checked.a[2 * cur] * PAGE_BLOCKS < stop)
                    stop = d->checked.a[2 * cur] * PAGE_BLOCKS; /* as page by page */
                if (nmask != h->ptrmap[b] || /* most runs are a block or two */
                    (stop - b > 1 &&
                     memcmp(run->mask + (b + 1 - run->b0), h->ptrmap + b + 1, stop - b - 1)) ||
                    (b == head * PAGE_BLOCKS && memcmp(nb, h->base + b * THA__BLOCK,
                                                       THA__SPAN_HDR)))
                    rc = add_dirty(d, head);
                b = stop - 1;
                break;
            }
            case THA__PG_FREE_HEAD:
            case THA__PG_FREE_TAIL:
                if (nmask)
                    return tha__hfail(h, THA_ECORRUPT, "heap check: pointer map marks "
                                      "words of the free page %llu", (ull)p);
                if (k == THA__PG_FREE_HEAD && b == p * PAGE_BLOCKS) {
                    const tha__span_t *os = THA__AT(h, b * THA__BLOCK, tha__span_t);
                    tha__span_t ns;
                    memcpy(&ns, nb, sizeof ns);
                    if (ns.npages != os->npages)
                        return tha__hfail(h, THA_ECORRUPT, "heap check: free span at "
                                          "page %llu: record says %llu pages, map %u",
                                          (ull)p, (ull)ns.npages, pm[p].link);
                    if (ns.next != os->next || ns.prev != os->prev) d->spans_moved = true;
                }
                break;
            default: /* below the old top every data page is in a run */
                return tha__hfail(h, THA_ECORRUPT, "heap check: page %llu kind %u", (ull)p, k);
            }
            if (rc) return rc;
        }
    }
    return 0;
}

/* Re-walks the view's page map over the touched entries [a, b) (and the
 * pages above the old top) from the run before them to an untouched run
 * start after them. */
static int walk_cluster(dstate_t *d, const span_set_t *pmt, size_t ci, uint64_t old_end) {
    view_t *v = d->v;
    uint64_t a = pmt->a[2 * ci], b = pmt->a[2 * ci + 1];
    uint64_t s = a;
    if (a > v->first) {
        s = run_start(v, a - 1);
        if (s == UINT64_MAX)
            return tha__hfail(d->h, THA_ECORRUPT, "heap check: page %llu is in no run",
                              (ull)(a - 1));
    }
    if (d->checked.n && s < d->checked.a[2 * d->checked.n - 1])
        s = d->checked.a[2 * d->checked.n - 1]; /* walked already, to a run start */
    size_t cur = ci;
    uint64_t p = s;
    while (p < v->end) {
        if (p >= b && p < old_end && !set_has(pmt, &cur, p)) break;
        uint64_t n;
        int rc = check_run(v, p, &n, &d->nw);
        if (rc) return rc;
        p += n;
    }
    /* the same pages, as the heap has them now */
    for (uint64_t q = s; q < p && q < old_end;) q += old_run(d->h, q, &d->old);
    d->structural = true;
    return set_add(&d->checked, s, p);
}

tha__vrun_t *tha__run_index(tha_heap_t *h, uint64_t n) {
    /* at least one entry: realloc(p, 0) would free the kept buffer */
    size_t need = (n ? n : 1) * sizeof(vrun_t);
    if (h->scratch_cap < need) {
        void *nb = realloc(h->scratch, need);
        if (!nb) return NULL;
        h->scratch = nb;
        h->scratch_cap = need;
    }
    return h->scratch;
}

/* The heap with a delta's runs laid over it. */
static view_t delta_view(tha_heap_t *h, const tha__frame_hdr_t *hd, const vrun_t *runs) {
    return (view_t){.h = h, .base = h->base, .map = h->ptrmap, .limit = h->committed,
                    .room = hd->top > h->committed ? hd->top : h->committed,
                    .pbase = tha__origin(h), .runs = runs, .nruns = hd->nruns,
                    .raw_ok = hd->base64k != 0};
}

int tha__check_delta(tha_heap_t *h, const tha__frame_hdr_t *hd, const vrun_t *runs) {
    const tha__region_t *old = tha__reg(h);
    if (hd->nruns == 0) return 0;
    view_t v = delta_view(h, hd, runs);
    dstate_t d = {.v = &v, .h = h};
    span_set_t pmt = {0};
    int rc;
    read_region(&v);
    uint64_t hdr_b = tha__align_up(sizeof(tha__region_t), THA__BLOCK) / THA__BLOCK;
    bool hdr_touched = runs[0].b0 < hdr_b;
    if (hdr_touched && (rc = check_region(&v))) goto out;
    if (!hdr_touched) { /* the heap's, valid */
        v.first = v.r.data_off / THA__PAGE;
        v.end = v.r.top / THA__PAGE;
    }
    uint64_t old_end = old->top / THA__PAGE;
    uint64_t roots_b = v.r.roots_off / THA__BLOCK, pm_b = v.r.pagemap_off / THA__BLOCK;
    uint64_t pm_end_b = tha__align_up(v.r.pagemap_off + v.r.npages * sizeof(tha__page_t),
                                      THA__BLOCK) / THA__BLOCK;
    bool roots_touched = false;
    for (uint32_t i = 0; i < v.nruns && runs[i].b0 < pm_end_b; i++) {
        uint64_t b0 = runs[i].b0, e = b0 + runs[i].nb;
        if (b0 < roots_b + THA_MAX_ROOTS && e > roots_b) roots_touched = true;
        if (e > pm_b) {
            uint64_t from = b0 > pm_b ? b0 : pm_b, to = e < pm_end_b ? e : pm_end_b;
            uint64_t pa = (from * THA__BLOCK - v.r.pagemap_off) / sizeof(tha__page_t);
            uint64_t pz = (to * THA__BLOCK - v.r.pagemap_off) / sizeof(tha__page_t);
            for (uint64_t q = pa; q < v.first && q < pz; q++)
                if (vpage(&v, q).kind != THA__PG_META) {
                    rc = tha__hfail(h, THA_ECORRUPT, "heap check: metadata page %llu "
                                    "marked %u", (ull)q, vpage(&v, q).kind);
                    goto out;
                }
            if (pa < v.first) pa = v.first;
            if (pz > v.end) pz = v.end;
            if (pa < pz && (rc = set_add(&pmt, pa, pz))) goto out;
        }
    }
    if (v.end > old_end && (rc = set_add(&pmt, old_end, v.end))) goto out;
    for (size_t ci = 0; ci < pmt.n; ci++)
        if ((rc = walk_cluster(&d, &pmt, ci, old_end))) goto out;
    if ((rc = scan_blocks(&d))) goto out;
    for (size_t i = 0; i < d.ndirty; i++) {
        uint64_t n;
        if ((rc = check_run(&v, d.dirty[i], &n, &d.nw))) goto out;
        old_run(h, d.dirty[i], &d.old);
        d.structural = true;
    }
    if (v.r.live_objects != old->live_objects + d.nw.objects - d.old.objects ||
        v.r.live_bytes != old->live_bytes + d.nw.bytes - d.old.bytes) {
        rc = tha__hfail(h, THA_ECORRUPT, "heap check: counters say %llu objects / %llu "
                        "bytes, the heap would hold %llu / %llu", (ull)v.r.live_objects,
                        (ull)v.r.live_bytes,
                        (ull)(old->live_objects + d.nw.objects - d.old.objects),
                        (ull)(old->live_bytes + d.nw.bytes - d.old.bytes));
        goto out;
    }
    if (v.r.free_spans != old->free_spans || d.nw.free_heads != d.old.free_heads)
        d.spans_moved = true;
    if (memcmp(v.r.class_slabs, old->class_slabs, sizeof old->class_slabs) ||
        d.nw.slabs_listed != d.old.slabs_listed || pmt.n)
        d.slabs_moved = true;
    if (d.spans_moved || pmt.n) {
        uint64_t want = old_list_len(h, old->free_spans, offsetof(tha__span_t, next)) +
                        d.nw.free_heads - d.old.free_heads;
        if ((rc = check_free_list(&v, want))) goto out;
    }
    if (d.slabs_moved) {
        uint64_t want = 0;
        for (uint32_t c = 0; c < THA__NCLASSES; c++)
            want += old_list_len(h, old->class_slabs[c], offsetof(tha__slab_t, next));
        want += d.nw.slabs_listed - d.old.slabs_listed;
        if ((rc = check_class_lists(&v, want))) goto out;
    }
    if (roots_touched || hdr_touched || d.structural)
        rc = check_roots(&v, roots_touched || v.r.nroots != old->nroots);
out:
    free(pmt.a);
    free(d.checked.a);
    free(d.dirty);
    return rc;
}

/* ---- slot kinds of a frame's words --------------------------------------- */

/* The last page slot_of resolved: a frame's words come in address order,
 * so most share their page with the word before. */
typedef struct pcache {
    uint64_t page, head;
    tha__page_t pg;
    int have, valid;
} pcache_t;

/* The pointer slot of a live allocation holding off in the view, or NULL;
 * where (if not NULL) describes the place. */
static const tha__slot_t *slot_of(view_t *v, uint64_t off, pcache_t *pc, char *where,
                                  size_t cap) {
    if (where) snprintf(where, cap, "no live allocation");
    if (off < v->r.data_off || off >= v->r.top) return NULL;
    if (!pc->valid || pc->page != off / THA__PAGE) {
        pc->page = off / THA__PAGE;
        pc->have = vunit(v, pc->page, &pc->head, &pc->pg);
        pc->valid = 1;
    }
    uint64_t payload = vfind_in(v, off, pc->have, pc->head, pc->pg);
    if (!payload) return NULL;
    tha__objhdr_t oh = vhdr(v, tha__hdr_of(payload));
    const tha__type_t *t = tha__schema_type(v->h->schema, oh.type_id);
    uint64_t e = (off - payload) % t->size;
    if (where) tha__schema_describe(v->h->schema, oh.type_id, e, where, cap);
    return tha__schema_slot_at(t, e);
}

/* The tagged NULL (tag bits tags) at off of the view lies in a live
 * allocation's pointer slot whose field's tag mask holds those bits. */
static int tagged_slot(view_t *v, const tha__frame_hdr_t *hd, uint64_t off, uint64_t tags,
                       pcache_t *pc) {
    char where[160];
    const tha__slot_t *sl = slot_of(v, off, pc, where, sizeof where);
    if (sl && !sl->is_func && !(tags & ~(uint64_t)sl->tag_mask)) return 0;
    return tha__hfail(v->h, THA_ERANGE, "%s seq %llu: pointer at offset 0x%llx (%s) is "
                      "a tagged NULL 0x%llx outside the field's tag mask 0x%x",
                      tha__frame_kind_name(hd->kind), (ull)hd->seq, (ull)off, where,
                      (ull)tags, sl && !sl->is_func ? sl->tag_mask : 0);
}

/* A word that is no function id (an offset or address in the image, an
 * extern word) at off of the view lies in no function pointer slot: the
 * receiver would call it. */
static int data_word_slot(view_t *v, const tha__frame_hdr_t *hd, uint64_t off, uint64_t w,
                          pcache_t *pc) {
    const tha__slot_t *sl = slot_of(v, off, pc, NULL, 0);
    if (!sl || !sl->is_func) return 0; /* the structure check placed the mask */
    char where[160];
    slot_of(v, off, pc, where, sizeof where);
    return tha__hfail(v->h, THA_EFRAME, "%s seq %llu: function pointer at offset 0x%llx "
                      "(%s) holds 0x%llx, which is no function id: a call through it "
                      "would run data", tha__frame_kind_name(hd->kind), (ull)hd->seq,
                      (ull)off, where, (ull)w);
}

int tha__check_slots(tha_heap_t *h, const tha__frame_hdr_t *hd, const vrun_t *runs) {
    view_t v;
    const int funcs = h->schema->func_slots != 0;
    if (hd->kind == THA_FRAME_SNAPSHOT) /* the frame's image (its one run), as checked */
        v = (view_t){.h = h, .base = runs[0].data, .map = runs[0].mask, .limit = hd->top,
                     .room = hd->top, .wire = 1, .pbase = tha__frame_base(hd),
                     .raw_ok = hd->base64k != 0};
    else
        v = delta_view(h, hd, runs);
    read_region(&v);
    v.first = v.r.data_off / THA__PAGE;
    v.end = v.r.top / THA__PAGE;
    pcache_t pc = {0};
    for (uint32_t i = 0; i < hd->nruns; i++)
        for (uint64_t j = 0; j < runs[i].nb; j++)
            for (unsigned m = runs[i].mask[j]; m; m &= m - 1) {
                unsigned k = (unsigned)__builtin_ctz(m);
                uint64_t w, off = (runs[i].b0 + j) * THA__BLOCK + k * 8;
                memcpy(&w, runs[i].data + j * THA__BLOCK + k * 8, 8);
                int rc = 0;
                if (w >> 56 == THA__WIRE_TAGNULL >> 56)
                    rc = tagged_slot(&v, hd, off, w & ~THA__WIRE_TAGNULL, &pc);
                else if (funcs && w && (!(w & THA__FUNC_TAG) || THA__WIRE_CLASS(w) != 0))
                    rc = data_word_slot(&v, hd, off, w, &pc);
                if (rc) return rc;
            }
    return 0;
}

/* A staging heap filled by bulk sync, before it goes live: what lies above
 * its top reads zero (segments of a fuzzy image may have written there),
 * then the whole image is checked. */
int tha__check_staging(tha_heap_t *h) {
    const tha__region_t *r = tha__reg(h);
    uint64_t top = r->top;
    if (top % THA__PAGE == 0 && top <= h->committed && top >= sizeof *r) {
        if (h->committed > top) {
            memset(h->base + top, 0, h->committed - top);
            memset(h->ptrmap + top / THA__BLOCK, 0, (h->committed - top) / THA__BLOCK);
        }
    }
    int rc = tha_heap_check(h);
    if (rc == 0) h->fuzzy = 0;
    return rc;
}

/* heapcheck.c — tha_heap_check: walks a whole heap and verifies every
 * invariant the allocator and the trackers rely on (page map, slabs, free
 * lists, object headers, counters, pointer map, roots, pointer values).
 * Debug tests run it after every step; it is also how a loaded or mirrored
 * image proves it is sound. Read-only; O(image size).
 */
#include "tha_internal.h"

#include <stdio.h>

#define BAD(...) return tha__hfail(h, THA_ECORRUPT, "heap check: " __VA_ARGS__)

typedef unsigned long long ull;

/* The pointer-map bits inside [payload, payload + bytes) are exactly the
 * slots of count elements of t, and every data pointer stays in the image. */
static int check_object(tha_heap_t *h, uint64_t payload, const tha__type_t *t,
                        uint32_t count) {
    uint64_t bytes = t->size * count, top = tha__reg(h)->top;
    uint64_t want_words = (uint64_t)t->nslots * count, seen = 0;
    for (uint64_t w = payload / 8; w < (payload + bytes + 7) / 8; w++) {
        if (!(h->ptrmap[w / 8] & (1u << (w % 8)))) continue;
        uint64_t rel = (w * 8 - payload) % t->size;
        /* slots are sorted by offset: binary search (a type may have
         * millions, THA_SCHEMA_MAX_SLOTS) */
        uint32_t lo = 0, hi = t->nslots;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (t->slots[mid].offset < rel) lo = mid + 1;
            else hi = mid;
        }
        bool is_slot = lo < t->nslots && t->slots[lo].offset == rel;
        if (!is_slot)
            BAD("%s at 0x%llx: word at +0x%llx marked as a pointer", t->name,
                (ull)payload, (ull)(w * 8 - payload));
        seen++;
        uint64_t v;
        memcpy(&v, h->base + w * 8, 8);
        uint64_t o = v - (uint64_t)(uintptr_t)h->base;
        if (v && o - 1 >= top &&
            tha__schema_func_id(h->schema, (void (*)(void))(uintptr_t)v) < 0)
            BAD("%s at 0x%llx: pointer at +0x%llx holds %p, outside the heap",
                t->name, (ull)payload, (ull)(w * 8 - payload), (void *)v);
    }
    if (seen != want_words)
        BAD("%s at 0x%llx: %llu pointer words mapped, the layout has %llu",
            t->name, (ull)payload, (ull)seen, (ull)want_words);
    return 0;
}

/* A live header at slot with room for unit bytes. */
static int check_header(tha_heap_t *h, uint64_t slot, uint64_t unit,
                        uint64_t *objects, uint64_t *live_bytes) {
    const tha__objhdr_t *oh = THA__AT(h, slot, tha__objhdr_t);
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    if (!t || t->size == 0)
        BAD("object at 0x%llx has unknown type %u", (ull)slot, oh->type_id);
    if (t->size * oh->count + THA__HDR > unit)
        BAD("object at 0x%llx (%u x %s) overflows its %llu-byte slot", (ull)slot,
            oh->count, t->name, (ull)unit);
    (*objects)++;
    *live_bytes += t->size * oh->count;
    return check_object(h, slot + THA__HDR, t, oh->count);
}

static int check_slab(tha_heap_t *h, uint64_t p, uint64_t *objects,
                      uint64_t *live_bytes, uint64_t *listed) {
    const tha__page_t *pm = tha__pagemap(h);
    uint64_t off = p * THA__PAGE;
    const tha__slab_t *s = THA__AT(h, off, tha__slab_t);
    int cls = pm[p].cls;
    if (cls >= (int)THA__NCLASSES || s->cls != (uint32_t)cls)
        BAD("slab at 0x%llx: class %d / %u", (ull)off, cls, s->cls);
    uint32_t size = tha__class_size(cls);
    if (s->nslots != (THA__SLAB_PAGES * THA__PAGE - THA__SLAB_HDR) / size ||
        s->bump > s->nslots || s->nfree > s->nslots)
        BAD("slab at 0x%llx: counts %u/%u/%u", (ull)off, s->nslots, s->bump, s->nfree);
    uint64_t live = 0, nfree_list = 0;
    for (uint32_t i = 0; i < s->bump; i++) {
        uint64_t slot = off + THA__SLAB_HDR + (uint64_t)i * size;
        if (THA__AT(h, slot, tha__objhdr_t)->count) {
            int rc = check_header(h, slot, size, objects, live_bytes);
            if (rc) return rc;
            live++;
        }
    }
    for (uint64_t f = s->free; f; f = *THA__AT(h, f + THA__HDR, uint64_t)) {
        if (f < off + THA__SLAB_HDR || (f - off - THA__SLAB_HDR) % size ||
            (f - off - THA__SLAB_HDR) / size >= s->bump || ++nfree_list > s->nslots)
            BAD("slab at 0x%llx: free list reaches 0x%llx", (ull)off, (ull)f);
        if (THA__AT(h, f, tha__objhdr_t)->count)
            BAD("slab at 0x%llx: live slot 0x%llx on the free list", (ull)off, (ull)f);
    }
    if (live + nfree_list + (s->nslots - s->bump) != s->nslots ||
        s->nfree != nfree_list + (s->nslots - s->bump))
        BAD("slab at 0x%llx: %llu live + %llu listed + %u unused != %u slots",
            (ull)off, (ull)live, (ull)nfree_list, s->nslots - s->bump, s->nslots);
    if ((s->nfree > 0) != (s->on_list != 0))
        BAD("slab at 0x%llx: %u free slots but on_list=%u", (ull)off, s->nfree,
            s->on_list);
    *listed += s->on_list != 0;
    return 0;
}

int tha_heap_check(tha_heap_t *h) {
    const tha__region_t *r = tha__reg(h);
    const tha__page_t *pm = tha__pagemap(h);
    if (r->magic != THA__REGION_MAGIC || r->capacity > h->capacity ||
        r->top > r->capacity || r->top % THA__PAGE || r->npages != r->capacity / THA__PAGE ||
        r->data_off > r->top || r->nroots > THA_MAX_ROOTS)
        BAD("region header inconsistent");
    uint64_t objects = 0, live_bytes = 0, free_heads = 0, slabs_listed = 0;
    uint64_t first = r->data_off / THA__PAGE, end = r->top / THA__PAGE;
    for (uint64_t p = 0; p < first; p++)
        if (pm[p].kind != THA__PG_META) BAD("metadata page %llu marked %u", (ull)p, pm[p].kind);
    for (uint64_t p = first; p < end;) {
        uint64_t n = pm[p].link;
        uint8_t tail;
        switch (pm[p].kind) {
        case THA__PG_FREE_HEAD:
            tail = THA__PG_FREE_TAIL;
            if (THA__AT(h, p * THA__PAGE, tha__span_t)->npages != n)
                BAD("free span at page %llu: record says %llu pages, map %llu", (ull)p,
                    (ull)THA__AT(h, p * THA__PAGE, tha__span_t)->npages, (ull)n);
            if (n > 1 && p + n <= end && pm[p + n - 1].link != p)
                BAD("free span at page %llu: last page points to %u", (ull)p,
                    pm[p + n - 1].link);
            free_heads++;
            break;
        case THA__PG_SLAB_HEAD: {
            tail = THA__PG_SLAB_TAIL;
            if (n != THA__SLAB_PAGES) BAD("slab at page %llu spans %llu pages", (ull)p, (ull)n);
            int rc = check_slab(h, p, &objects, &live_bytes, &slabs_listed);
            if (rc) return rc;
            break;
        }
        case THA__PG_SPAN_HEAD: {
            tail = THA__PG_SPAN_TAIL;
            const tha__objhdr_t *oh = THA__AT(h, p * THA__PAGE, tha__objhdr_t);
            if (!oh->count) BAD("span at page %llu holds no object", (ull)p);
            int rc = check_header(h, p * THA__PAGE, n * THA__PAGE, &objects, &live_bytes);
            if (rc) return rc;
            break;
        }
        default:
            BAD("page %llu: kind %u where a span, slab or free span must start",
                (ull)p, pm[p].kind);
        }
        if (n == 0 || p + n > end) BAD("page %llu: run of %llu pages passes the top", (ull)p, (ull)n);
        for (uint64_t q = p + 1; q < p + n; q++)
            if (pm[q].kind != tail || (tail != THA__PG_FREE_TAIL && pm[q].link != p))
                BAD("page %llu: kind %u link %u inside the run at page %llu", (ull)q,
                    pm[q].kind, pm[q].link, (ull)p);
        p += n;
    }
    uint64_t listed = 0, prev = 0;
    for (uint64_t off = r->free_spans; off; off = THA__AT(h, off, tha__span_t)->next) {
        if (off % THA__PAGE || off >= r->top || pm[off / THA__PAGE].kind != THA__PG_FREE_HEAD ||
            THA__AT(h, off, tha__span_t)->prev != prev || ++listed > free_heads)
            BAD("free span list broken at 0x%llx", (ull)off);
        prev = off;
    }
    if (listed != free_heads)
        BAD("%llu free spans in the page map, %llu on the list", (ull)free_heads, (ull)listed);
    uint64_t on_lists = 0;
    for (uint32_t c = 0; c < THA__NCLASSES; c++) {
        prev = 0;
        for (uint64_t off = r->class_slabs[c]; off; off = THA__AT(h, off, tha__slab_t)->next) {
            const tha__slab_t *s = THA__AT(h, off, tha__slab_t);
            if (off % THA__PAGE || off >= r->top || pm[off / THA__PAGE].kind != THA__PG_SLAB_HEAD ||
                s->cls != c || s->prev != prev || !s->on_list || ++on_lists > slabs_listed)
                BAD("class %u slab list broken at 0x%llx", c, (ull)off);
            prev = off;
        }
    }
    if (on_lists != slabs_listed)
        BAD("%llu slabs flagged on a list, %llu linked", (ull)slabs_listed, (ull)on_lists);
    if (objects != r->live_objects || live_bytes != r->live_bytes)
        BAD("counters say %llu objects / %llu bytes, the walk found %llu / %llu",
            (ull)r->live_objects, (ull)r->live_bytes, (ull)objects, (ull)live_bytes);
    const tha__root_t *roots = THA__AT(h, r->roots_off, tha__root_t);
    for (uint32_t i = 0; i < THA_MAX_ROOTS; i++) {
        bool used = i < r->nroots;
        if (used != (roots[i].name[0] != 0) ||
            memchr(roots[i].name, 0, sizeof roots[i].name) == NULL)
            BAD("root entry %u malformed", i);
        if (used && !tha__find(h, roots[i].offset, NULL))
            BAD("root '%s' points to 0x%llx, not a live allocation", roots[i].name,
                (ull)roots[i].offset);
    }
    return 0;
}

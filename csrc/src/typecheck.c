/* typecheck.c — the schema's mistakes as the heap shows them: pointers
 * whose target is not of the type their field declares (tha_heap_check_types;
 * one pointer word at a time for encode under THA_DEBUG_TYPES), the debug
 * flags, and words no field covers that hold addresses in the heap, the
 * mark of a forgotten pointer field (tha_heap_lint). The rule is tha.h's.
 *
 * Cost: every lookup is O(1) or a binary search in a table seal built
 * (schema.h: a slot's declared target, a type's places and holes), never a
 * walk of nested types, so a whole-heap check is O(image / 64 + pointer
 * words) and a lint O(live objects x uncovered words). Read-only. The type
 * check reads the image through bounds-checked lookups only (encode runs
 * it on whatever the application left there); the lint walks the objects
 * and trusts the allocator, as tha_heap_dangling does.
 */
#include "heapcheck.h"

#include <stdarg.h>
#include <stdio.h>

typedef unsigned long long ull;

int tha_heap_set_debug(tha_heap_t *h, unsigned flags) {
    if (!h) return THA_EINVAL;
    if (flags & ~THA_DEBUG_TYPES)
        return tha__hfail(h, THA_EINVAL, "set_debug: unknown flags 0x%x",
                          flags & ~THA_DEBUG_TYPES);
    h->debug = flags;
    return 0;
}

/* "struct emp", "union u", "uint32_t", "void", "emp*". */
static void type_name(const tha_schema_t *s, uint32_t id, char *buf, size_t cap) {
    const tha__type_t *t = tha__schema_type(s, id);
    if (!t)
        snprintf(buf, cap, "type %u", id);
    else if (t->is_prim || t->is_ptr)
        snprintf(buf, cap, "%s", t->name);
    else
        snprintf(buf, cap, "%s %s", t->is_union ? "union" : "struct", t->name);
}

/* A pointer of class cls may hold byte e of an element of type a: the
 * element's start if a is of that class, else a place of a listed for it
 * (or a has no list: unchecked). */
static bool place_ok(const tha__type_t *a, uint64_t e, uint32_t cls) {
    if (e == 0 && tha__ptr_class(a->id) == cls) return true;
    if (a->places_partial) return true;
    uint32_t lo = 0, hi = a->nplaces;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const tha__place_t *p = &a->places[mid];
        if (p->offset < e || (p->offset == e && p->type < cls))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < a->nplaces && a->places[lo].offset == e && a->places[lo].type == cls;
}

__attribute__((noinline, cold)) static int wrong(tha_heap_t *h, const char *what,
                                                 const tha__type_t *t, uint64_t obj,
                                                 uint64_t i, uint32_t k, uint64_t off,
                                                 uint64_t payload, const tha__type_t *a) {
    char src[160], decl[80], dst[160];
    tha__schema_describe(h->schema, t->id, t->slots[k].offset, src, sizeof src);
    type_name(h->schema, t->slot_decl[k], decl, sizeof decl);
    uint64_t e = (off - payload) % a->size;
    tha__schema_describe(h->schema, a->id, e, dst, sizeof dst);
    return tha__hfail(h, THA_EMISMATCH, "%s: %s of 0x%llx[%llu], a pointer to %s, holds "
                      "offset 0x%llx: %s, byte %llu of 0x%llx[%llu], where no %s starts "
                      "(the wrong target type registered, or a bad cast?)", what, src,
                      (ull)obj, (ull)i, decl, (ull)off, dst, (ull)e, (ull)payload,
                      (ull)((off - payload) / a->size), decl);
}

/* Slot k of element i of the allocation at obj (type t) holds v. */
static int check_slot(tha_heap_t *h, const char *what, const tha__type_t *t, uint64_t obj,
                      uint64_t i, uint32_t k, uint64_t v) {
    uint32_t decl = t->slot_decl[k];
    if (!decl) return 0; /* a function pointer */
    uint32_t cls = tha__ptr_class(decl);
    if (tha__ptr_anywhere(cls)) return 0;
    uint64_t off = tha__slot_addr(t, k, v) - (uint64_t)(uintptr_t)h->base;
    if (off >= tha__reg(h)->top) return 0; /* NULL wraps past the top */
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(h, off, &oh);
    if (!payload) return 0; /* not in a live allocation: not a type question */
    const tha__type_t *a = &h->schema->types[oh->type_id];
    if (place_ok(a, (off - payload) % a->size, cls)) return 0;
    return wrong(h, what, t, obj, i, k, off, payload, a);
}

/* Walks the pointer map, not the objects: every lookup it makes is
 * bounds-checked (tha__find), so an image the application scribbled on
 * (encode must survive one) is read safely; pointer words come in address
 * order, each checked by tha__check_word_type. */
int tha__check_types(tha_heap_t *h, const char *what) {
    uint64_t top = tha__reg(h)->top, end = (top < h->committed ? top : h->committed) / THA__BLOCK;
    for (uint64_t b = 0; b < end; b++) {
        if (b % 8 == 0 && b + 8 <= end) { /* eight mask bytes at once */
            uint64_t m8;
            memcpy(&m8, h->ptrmap + b, 8);
            if (!m8) {
                b += 7;
                continue;
            }
        }
        for (unsigned m = h->ptrmap[b]; m; m &= m - 1) {
            int rc = tha__check_word_type(h, b * THA__BLOCK + (unsigned)__builtin_ctz(m) * 8,
                                          what);
            if (rc) return rc;
        }
    }
    return 0;
}

int tha_heap_check_types(tha_heap_t *h) {
    if (!h) return THA_EINVAL;
    return tha__check_types(h, "type check");
}

int tha__check_word_type(tha_heap_t *h, uint64_t at, const char *what) {
    uint64_t v;
    memcpy(&v, h->base + at, 8);
    if (!v) return 0; /* NULL whatever the slot's tag bits */
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(h, at, &oh);
    if (!payload) return 0; /* the pointer map marks live objects' slots only */
    const tha__type_t *t = &h->schema->types[oh->type_id];
    uint64_t rel = (at - payload) % t->size;
    uint32_t lo = 0, hi = t->nslots;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->slots[mid].offset < rel) lo = mid + 1;
        else hi = mid;
    }
    if (lo == t->nslots || t->slots[lo].offset != rel) return 0;
    return check_slot(h, what, t, payload, (at - payload) / t->size, lo, v);
}

/* ---- lint ---------------------------------------------------------------- */

/* A message that may be cut at cap bytes (names are at most 63 bytes, but
 * a finding's text has room for the usual, not for every longest). */
__attribute__((format(printf, 3, 4))) static void say(char *buf, size_t cap,
                                                      const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* The finding for word w (byte offset in its element) of element i of the
 * allocation o, type t; j: the first hole overlapping it. */
static void finding(const tha_heap_t *h, const tha_obj_t *o, const tha__type_t *t,
                    uint64_t i, uint32_t w, uint32_t j, uint64_t v, tha_lint_t *out) {
    uint64_t off = o->offset + i * t->size + w;
    uint32_t first = t->holes[j].from > w ? t->holes[j].from : w, last = first, bytes = 0;
    for (; j < t->nholes && t->holes[j].from < w + 8; j++) {
        uint32_t a = t->holes[j].from > w ? t->holes[j].from : w;
        uint32_t b = t->holes[j].to < w + 8 ? t->holes[j].to : w + 8;
        bytes += b - a;
        last = b - 1;
    }
    char name[80], cover[48] = "", dst[128] = "";
    type_name(h->schema, t->id, name, sizeof name);
    if (bytes == 8)
        snprintf(cover, sizeof cover, "not covered by any field");
    else if (last - first + 1 == bytes)
        snprintf(cover, sizeof cover, "%u..%u covered by no field", first, last);
    else
        snprintf(cover, sizeof cover, "%u of its bytes covered by no field", bytes);
    tha__objhdr_t *oh;
    uint64_t to = v - (uint64_t)(uintptr_t)h->base;
    uint64_t payload = tha__find(h, to, &oh);
    if (payload) {
        char tn[80];
        type_name(h->schema, oh->type_id, tn, sizeof tn);
        snprintf(dst, sizeof dst, " (inside %s @0x%llx)", tn, (ull)payload);
    }
    *out = (tha_lint_t){.offset = off, .object = o->offset, .type_id = o->type_id,
                        .element = (uint32_t)i, .at = w, .value = v};
    say(out->what, sizeof out->what, "%s @0x%llx[%llu] bytes %u..%u: %s, holds heap "
        "offset 0x%llx%s: a pointer field left out of the schema? (a mirror gets this "
        "heap's address)", name, (ull)o->offset, (ull)i, w, w + 7, cover, (ull)to, dst);
}

int tha_heap_lint(const tha_heap_t *h, tha_lint_t *out, size_t cap, size_t *n) {
    if (!h || !n || (cap && !out)) return THA_EINVAL;
    const uint64_t base = (uint64_t)(uintptr_t)h->base, top = tha__reg(h)->top;
    const tha__type_t *types = h->schema->types;
    size_t k = 0;
    uint64_t cursor = 0;
    tha_obj_t o;
    while (tha_heap_next(h, &cursor, &o) == 1) {
        const tha__type_t *t = &types[o.type_id];
        if (!t->nholes || t->size % 8) continue; /* payloads are 8-aligned */
        const uint8_t *elem = h->base + o.offset;
        for (uint64_t i = 0; i < o.count; i++, elem += t->size) {
            uint32_t w = 0; /* words below w are done */
            for (uint32_t j = 0; j < t->nholes; j++) {
                uint32_t from = t->holes[j].from & ~7u;
                for (w = from > w ? from : w; w < t->holes[j].to; w += 8) {
                    uint64_t v;
                    memcpy(&v, elem + w, 8);
                    if (v - base - 1 >= top - 1) continue; /* offsets 1..top-1 */
                    if (k < cap) finding(h, &o, t, i, w, j, v, &out[k]);
                    k++;
                }
            }
        }
    }
    *n = k;
    return 0;
}

/* statics.c — statics mirrored by value (tha_heap_mirror_extern).
 *
 * A program's static container heads (a `static TAILQ_HEAD`, an RB_HEAD,
 * a sentinel) live outside the heap. Element pointers into them travel as
 * extern words (schema externs); the head's own bytes travel through a
 * *cell*: an allocation of the head's type, rooted under the extern's
 * name. Before a frame (tha__statics_push, called by the codec with the
 * roots) each registered static is copied into its cell, its pointers into
 * itself (an empty TAILQ's tqh_last = &head.tqh_first) turned into the same
 * places of the cell; after an apply (tha__statics_pull) each cell is
 * copied back out into this process's static, those pointers turned back.
 * Invariant: a static and its cell differ only in those self-pointers, so
 * a promoted mirror pushes exactly what it pulled. Only pointer slots of
 * the head's type are translated; its other bytes are copied as they are.
 */
#include "heap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tha__static {
    char name[THA_NAME_MAX];
    uint32_t type_id;
};

#define MAX_STATICS 64u
#define MAX_STATIC_BYTES 4096u /* copied through a stack buffer */

static const tha__extern_t *find_extern(const tha_heap_t *h, const char *name) {
    for (uint32_t i = 0; i < h->schema->nexterns; i++)
        if (strcmp(h->schema->externs[i].name, name) == 0) return &h->schema->externs[i];
    return NULL;
}

/* A mirrored static lies outside the heap's reservation: it is copied to
 * and from by value, never through the allocator (one bound inside the
 * region would have the pull overwrite allocator metadata or objects). */
static int outside_heap(tha_heap_t *h, const tha__extern_t *e) {
    uintptr_t lo = (uintptr_t)h->base, hi = lo + h->capacity;
    if (!e->addr || e->addr >= hi || e->addr + e->size <= lo) return 0;
    return tha__hfail(h, THA_ESTATE, "static '%s' is mirrored by value but its extern "
                      "is bound at %p, inside this heap (%p..%p): a mirrored static "
                      "must lie outside the region", e->name, (void *)e->addr,
                      (void *)lo, (void *)hi);
}

int tha__statics_placed(tha_heap_t *h) {
    for (uint32_t i = 0; i < h->nstatics; i++) {
        const tha__extern_t *e = find_extern(h, h->statics[i].name);
        if (e && !e->addr) /* the pull could not copy the cell out */
            return tha__hfail(h, THA_ESTATE, "static '%s' is mirrored but its extern is "
                              "not bound in this process (tha_schema_bind_extern): an "
                              "apply could not update it", e->name);
        int rc = e ? outside_heap(h, e) : 0;
        if (rc) return rc;
    }
    return 0;
}

int tha_heap_mirror_extern(tha_heap_t *h, const char *name, uint32_t type_id) {
    if (!h || !name) return THA_EINVAL;
    const tha__extern_t *e = find_extern(h, name);
    if (!e)
        return tha__hfail(h, THA_ENOTFOUND, "mirror_extern '%s': no data extern of that "
                          "name in the schema (tha_schema_add_extern)", name);
    const tha__type_t *t = tha__schema_type(h->schema, tha_schema_type_id(h->schema, type_id));
    if (!t || t->is_prim)
        return tha__hfail(h, THA_EINVAL, "mirror_extern '%s': type %u is not a registered "
                          "struct", name, type_id);
    if (t->size != e->size)
        return tha__hfail(h, THA_ESCHEMA, "mirror_extern '%s': the extern is %llu bytes, "
                          "struct %s %llu", name, (unsigned long long)e->size, t->name,
                          (unsigned long long)t->size);
    if (t->size > MAX_STATIC_BYTES)
        return tha__hfail(h, THA_EINVAL, "mirror_extern '%s': struct %s is %llu bytes; "
                          "statics mirrored by value are heads and sentinels, at most "
                          "%u bytes", name, t->name, (unsigned long long)t->size,
                          MAX_STATIC_BYTES);
    if (strlen(name) >= THA_ROOT_NAME_MAX)
        return tha__hfail(h, THA_EINVAL, "mirror_extern '%s': its cell is a root, and "
                          "root names are at most %d bytes", name, THA_ROOT_NAME_MAX - 1);
    int rc = outside_heap(h, e);
    if (rc) return rc;
    uint32_t i = 0;
    while (i < h->nstatics && strcmp(h->statics[i].name, name) != 0) i++;
    if (i == h->nstatics) {
        if (h->nstatics == MAX_STATICS)
            return tha__hfail(h, THA_EFULL, "mirror_extern '%s': %u statics mirrored "
                              "already", name, MAX_STATICS);
        if (!h->statics && !(h->statics = calloc(MAX_STATICS, sizeof *h->statics)))
            return tha__hfail(h, THA_ENOMEM, "mirror_extern: out of memory");
        snprintf(h->statics[i].name, sizeof h->statics[i].name, "%s", name);
        h->nstatics++;
    }
    h->statics[i].type_id = t->id;
    return 0;
}

/* Words of the type's pointer slots in [from, from + size) become the same
 * places of [to, to + size); a slot's tag bits (tag_mask) stay. */
static void translate(const tha__type_t *t, uint8_t *bytes, uintptr_t from, uintptr_t to) {
    for (uint32_t k = 0; k < t->nslots; k++) {
        const tha__slot_t *sl = &t->slots[k];
        if (sl->is_func) continue;
        uint64_t v;
        memcpy(&v, bytes + sl->offset, 8);
        uint64_t tags = v & sl->tag_mask, p = v & ~(uint64_t)sl->tag_mask;
        if (p >= from && p - from < t->size) {
            v = to + (p - from) + tags;
            memcpy(bytes + sl->offset, &v, 8);
        }
    }
}

int tha__statics_push(tha_heap_t *h) {
    for (uint32_t i = 0; i < h->nstatics; i++) {
        const struct tha__static *st = &h->statics[i];
        const tha__extern_t *e = find_extern(h, st->name);
        const tha__type_t *t = tha__schema_type(h->schema, st->type_id);
        if (!e || !e->addr)
            return tha__hfail(h, THA_ESTATE, "static '%s' is mirrored but its extern is "
                              "not bound in this process (tha_schema_bind_extern)",
                              st->name);
        int rc = outside_heap(h, e);
        if (rc) return rc;
        void *cell;
        tha_obj_t o;
        if (tha_root_get(h, st->name, &cell) != 0) {
            rc = tha_heap_alloc(h, st->type_id, 1, &cell);
            if (!rc) rc = tha_root_set(h, st->name, cell);
            if (rc) return rc;
        } else if (tha_heap_lookup(h, cell, &o) || o.ptr != cell ||
                   o.type_id != st->type_id) {
            /* the root came from elsewhere (a frame, tha_root_set): a copy of
             * the static there would write past what it points to */
            return tha__hfail(h, THA_ESTATE, "static '%s' is mirrored by value, but its "
                              "root points to offset 0x%llx, not the start of a struct "
                              "%s (its cell): remove or fix that root", st->name,
                              (unsigned long long)((uint8_t *)cell - h->base), t->name);
        }
        uint8_t img[MAX_STATIC_BYTES]; /* t->size <= it (mirror_extern) */
        memcpy(img, (const void *)e->addr, t->size);
        translate(t, img, e->addr, (uintptr_t)cell);
        if (memcmp(img, cell, t->size) != 0) {
            memcpy(cell, img, t->size);
            tha__mark(h, (uint64_t)((uint8_t *)cell - h->base), t->size);
        }
    }
    return 0;
}

void tha__statics_pull(tha_heap_t *h) {
    for (uint32_t i = 0; i < h->nstatics; i++) {
        const struct tha__static *st = &h->statics[i];
        const tha__extern_t *e = find_extern(h, st->name);
        void *cell;
        tha_obj_t o;
        if (!e || !e->addr || tha_root_get(h, st->name, &cell) != 0) continue;
        /* the cell must be a whole element of the head's type, as pushed */
        if (tha_heap_lookup(h, cell, &o) || o.ptr != cell || o.type_id != st->type_id)
            continue;
        const tha__type_t *t = tha__schema_type(h->schema, st->type_id);
        uint8_t img[MAX_STATIC_BYTES];
        memcpy(img, cell, t->size);
        translate(t, img, (uintptr_t)cell, e->addr);
        memcpy((void *)e->addr, img, t->size);
    }
}

/* schema_seal.c — sealing a schema: the canonical order of types and
 * functions (ids), name resolution, the checks of what cannot be mirrored,
 * each type's relocation table (pointer slots of nested structs and arrays
 * flattened, counted against THA_SCHEMA_MAX_SLOTS before one allocation),
 * the type check's tables (where pointed-to types begin, what no field
 * covers; same bound, but past it a type is checked less instead of
 * refused), and the fingerprint. Nested types are sealed with an explicit
 * stack.
 */
#include "schema_priv.h"

#include <stdlib.h>

typedef struct slot_sort {
    tha__slot_t slot;
    uint32_t decl;
} slot_sort_t;

static int cmp_slot(const void *a, const void *b) {
    const slot_sort_t *x = a, *y = b;
    return (x->slot.offset > y->slot.offset) - (x->slot.offset < y->slot.offset);
}

/* By offset, then type. */
static int cmp_place(const void *a, const void *b) {
    const tha__place_t *x = a, *y = b;
    if (x->offset != y->offset)
        return (x->offset > y->offset) - (x->offset < y->offset);
    return (x->type > y->type) - (x->type < y->type);
}

static int cmp_hole(const void *a, const void *b) {
    const tha__hole_t *x = a, *y = b;
    return (x->from > y->from) - (x->from < y->from);
}

/* Defined types sorted by name, for lookups while sealing. */
typedef struct name_index {
    tha__type_t **v;
    uint32_t n;
} name_index_t;

static int cmp_type_name(const void *a, const void *b) {
    return strcmp((*(tha__type_t *const *)a)->name, (*(tha__type_t *const *)b)->name);
}

static int cmp_key_name(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(tha__type_t *const *)elem)->name);
}

static tha__type_t *index_find(const name_index_t *ix, const char *name) {
    tha__type_t **hit = bsearch(name, ix->v, ix->n, sizeof *ix->v, cmp_key_name);
    return hit ? *hit : NULL;
}

/* The implicit pointer type p points at target, unregistered: the error
 * names a field that needs p ("struct t field b", a struct ghost **b),
 * not only p's own field. */
static int unregistered_through(tha_schema_t *s, const name_index_t *ix,
                                const tha__type_t *p, const char *target) {
    size_t bn = strlen(target);
    while (bn && target[bn - 1] == '*')
        bn--;
    for (uint32_t i = 0; i < ix->n; i++) {
        const tha__type_t *u = ix->v[i];
        for (uint32_t j = 0; !u->is_ptr && !u->is_prim && j < u->nfields; j++) {
            const tha__field_t *f = &u->fields[j];
            if (f->pub.kind == THA_K_PTR && strncmp(f->target, target, bn) == 0 &&
                f->target[bn] == '*')
                return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                                 "%s %s field %s: points through the pointer type %s "
                                 "to unregistered type '%.*s'", tha__schema_kw(u),
                                 u->name, f->name, p->name, (int)bn, target);
        }
    }
    return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                     "pointer type %s field ptr: pointer to unregistered type '%s'",
                     p->name, target);
}

/* Field f of t before the type it holds by value is sealed: resolves its
 * target. Sets *descend to a struct type that must be sealed first. */
static int field_pre(tha_schema_t *s, const name_index_t *ix, tha__type_t *t,
                     tha__field_t *f, tha__type_t **descend) {
    const char *k = tha__schema_kw(t);
    uint32_t kind = f->pub.kind;
    *descend = NULL;
    if (kind != THA_K_STRUCT && kind != THA_K_PTR)
        return 0;
    tha__type_t *tt = index_find(ix, f->target);
    if (!tt && t->is_ptr)
        return unregistered_through(s, ix, t, f->target);
    if (!tt)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: %s unregistered type '%s'", k, t->name,
                         f->name, kind == THA_K_PTR ? "pointer to" : "contains",
                         f->target);
    f->target_id = tt->id;
    if (kind != THA_K_STRUCT)
        return 0;
    if (tt->is_prim)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: '%s' is a primitive, not a struct (use a scalar field)",
                         k, t->name, f->name, tt->name);
    if (tt->seal_state == 1)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: contains %s %s by value", k, t->name,
                         f->name, tha__schema_kw(tt), tt->name);
    if (tt->seal_state == 0)
        *descend = tt;
    return 0;
}

/* Field f of t once the type it holds by value (if any) is sealed. */
static int field_post(tha_schema_t *s, tha__type_t *t, tha__field_t *f) {
    const char *k = tha__schema_kw(t);
    uint32_t kind = f->pub.kind;
    if (kind == THA_K_STRUCT) {
        const tha__type_t *tt = &s->types[f->target_id];
        f->elem_size = tt->size;
        if (t->is_union && tt->nslots > 0)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "union %s field %s: unions holding pointers cannot be mirrored (%s %s holds pointers)",
                             t->name, f->name, tha__schema_kw(tt), tt->name);
    } else {
        f->elem_size = tha__field_elem_size(f);
    }
    uint64_t bytes = f->elem_size * f->count;
    if (bytes > UINT32_MAX)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: dims overflow", k, t->name, f->name);
    if ((uint64_t)f->pub.offset + bytes > t->size)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: offset %u + %llu bytes exceeds size %llu",
                         k, t->name, f->name, f->pub.offset,
                         (unsigned long long)bytes, (unsigned long long)t->size);
    if (kind == THA_K_PTR || kind == THA_K_FUNC) {
        if (t->is_union)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "union %s field %s: unions holding pointers cannot be mirrored",
                             t->name, f->name);
        if (f->pub.offset % 8 != 0)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: %s at offset %u is not 8-byte aligned (packed struct?)",
                             k, t->name, f->name,
                             kind == THA_K_PTR ? "pointer" : "function pointer",
                             f->pub.offset);
    }
    return 0;
}

/* t's relocation table, once every type it holds by value has its own.
 * Counted first (fields x elements x nested slots, in 64 bits) against what
 * the schema may still spend (*budget entries, THA_SCHEMA_MAX_SLOTS in all),
 * then built in one allocation of exactly that many entries. */
static int build_slots(tha_schema_t *s, tha__type_t *t, uint64_t *budget) {
    const char *k = tha__schema_kw(t);
    free(t->slots);
    free(t->slot_decl);
    t->slots = NULL;
    t->slot_decl = NULL;
    t->nslots = 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint32_t kind = f->pub.kind;
        if (kind == THA_K_PTR || kind == THA_K_FUNC)
            n += f->count; /* count < 2^32, n <= budget < 2^32 before */
        else if (kind == THA_K_STRUCT)
            n += f->count * s->types[f->target_id].nslots; /* < 2^54 */
        else
            continue;
        if (n > *budget)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: too many pointer slots: %s %s would "
                             "hold %llu, and the schema may hold %u in all "
                             "(THA_SCHEMA_MAX_SLOTS; allocate large pointer tables "
                             "as count elements instead of inline arrays)",
                             k, t->name, f->name, k, t->name,
                             (unsigned long long)n, THA_SCHEMA_MAX_SLOTS);
    }
    if (n == 0)
        return 0;
    t->slots = malloc((size_t)n * sizeof *t->slots);
    t->slot_decl = malloc((size_t)n * sizeof *t->slot_decl);
    if (!t->slots || !t->slot_decl)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM,
                         "%s %s: out of memory for %llu pointer slots", k, t->name,
                         (unsigned long long)n);
    *budget -= n;
    uint32_t m = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint32_t kind = f->pub.kind;
        if (kind == THA_K_PTR || kind == THA_K_FUNC) {
            for (uint64_t e = 0; e < f->count; e++) {
                t->slots[m].offset = (uint32_t)(f->pub.offset + e * 8);
                t->slots[m].is_func = kind == THA_K_FUNC;
                t->slots[m].tag_mask = (uint16_t)f->pub.tag_mask;
                t->slot_decl[m++] = kind == THA_K_PTR ? f->target_id : 0;
            }
        } else if (kind == THA_K_STRUCT) {
            const tha__type_t *tt = &s->types[f->target_id];
            for (uint64_t e = 0; e < f->count && tt->nslots; e++)
                for (uint32_t j = 0; j < tt->nslots; j++) {
                    t->slots[m] = tt->slots[j]; /* is_func, tag_mask */
                    t->slots[m].offset = (uint32_t)(f->pub.offset + e * f->elem_size +
                                                    tt->slots[j].offset);
                    t->slot_decl[m++] = tt->slot_decl[j];
                }
        }
    }
    THA_ASSERT(m == n);
    t->nslots = m;
    /* The pointer map is a bit per aligned 8-byte word: every slot of every
     * element must be one. Fields were checked; nested elements and the
     * elements of an allocation of count are aligned if the sizes are. */
    for (uint32_t i = 0; i < m; i++)
        if (t->slots[i].offset % 8 != 0) {
            char where[160];
            tha__schema_describe(s, t->id, t->slots[i].offset, where, sizeof where);
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s: pointer at offset %u is not 8-byte aligned (a "
                             "nested struct at an odd offset? packed struct?)", where,
                             t->slots[i].offset);
        }
    if (t->size % 8 != 0)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: holds pointers but its size %llu is not a multiple of "
                         "8, so the pointers of its array elements would be "
                         "misaligned (packed struct?)", k, t->name,
                         (unsigned long long)t->size);
    int sorted = 1;
    for (uint32_t i = 1; i < m && sorted; i++)
        sorted = t->slots[i].offset > t->slots[i - 1].offset;
    if (!sorted) { /* slots and their declared targets move together */
        slot_sort_t *v = malloc((size_t)m * sizeof *v);
        if (!v)
            return tha__fail(s->err, sizeof s->err, THA_ENOMEM,
                             "%s %s: out of memory for %u pointer slots", k, t->name, m);
        for (uint32_t i = 0; i < m; i++)
            v[i] = (slot_sort_t){t->slots[i], t->slot_decl[i]};
        qsort(v, m, sizeof *v, cmp_slot);
        for (uint32_t i = 0; i < m; i++) {
            t->slots[i] = v[i].slot;
            t->slot_decl[i] = v[i].decl;
        }
        free(v);
    }
    for (uint32_t i = 1; i < m; i++)
        if (t->slots[i].offset < t->slots[i - 1].offset + 8)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s: pointer slots at offsets %u and %u overlap", k,
                             t->name, t->slots[i - 1].offset, t->slots[i].offset);
    return 0;
}

/* Index of the first slot of t that ends after byte off (slots ascend and
 * are 8 bytes each). */
static uint32_t slot_after(const tha__type_t *t, uint64_t off) {
    uint32_t lo = 0, hi = t->nslots;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)t->slots[mid].offset + 8 <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* 1 if byte off of an element of tt is where one of its slots starts. */
static int is_slot(const tha__type_t *tt, uint64_t off) {
    uint32_t i = slot_after(tt, off);
    return i < tt->nslots && tt->slots[i].offset == off;
}

/* The field of t other than not holding the slot at byte off (a pointer or
 * function pointer field, or a struct holding pointers). */
static const tha__field_t *slot_owner(const tha_schema_t *s, const tha__type_t *t,
                                      const tha__field_t *not, uint64_t off) {
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint64_t rel = off - f->pub.offset;
        if (f == not || off < f->pub.offset || rel >= f->elem_size * f->count)
            continue;
        if (f->pub.kind == THA_K_PTR || f->pub.kind == THA_K_FUNC)
            return f;
        if (f->pub.kind == THA_K_STRUCT && is_slot(&s->types[f->target_id], rel % f->elem_size))
            return f;
    }
    return NULL; /* not reached: every slot comes from a field */
}

/* No scalar, bitfield or nested struct of t lays non-pointer bytes over a
 * pointer slot (t's slots are built and sorted). A field's bytes hold
 * count x its own slots (a struct's) and no other: two binary searches
 * count what lies there, so this costs O(fields x log slots). */
static int check_overlaps(tha_schema_t *s, const tha__type_t *t) {
    if (!t->nslots)
        return 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint32_t kind = f->pub.kind;
        if (kind == THA_K_PTR || kind == THA_K_FUNC)
            continue;
        const tha__type_t *tt = kind == THA_K_STRUCT ? &s->types[f->target_id] : NULL;
        uint64_t from = f->pub.offset, to = from + f->elem_size * f->count;
        uint32_t a = slot_after(t, from), b = slot_after(t, to + 7);
        uint64_t own = tt ? f->count * tt->nslots : 0;
        if (b - a <= own)
            continue;
        uint32_t k = a; /* the first slot there that is not the field's own */
        while (tt && is_slot(tt, (t->slots[k].offset - from) % f->elem_size))
            k++;
        uint32_t at = t->slots[k].offset;
        const tha__field_t *p = slot_owner(s, t, f, at);
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: %s field %s (bytes %llu..%llu) overlaps the %s at bytes "
                         "%u..%u of field %s: that word would be rebased as a pointer "
                         "whatever it holds (a union of a pointer and a number cannot "
                         "be mirrored: register one of them)", tha__schema_kw(t), t->name,
                         tt ? tha__schema_kw(tt) : tha__schema_kind_name(kind), f->name,
                         (unsigned long long)from,
                         (unsigned long long)to - 1,
                         t->slots[k].is_func ? "function pointer" : "pointer", at,
                         at + 7, p ? p->name : "?");
    }
    return 0;
}

/* What the type check's tables may still spend (THA_SCHEMA_MAX_SLOTS
 * entries of each kind in all) and which types pointer fields target. */
typedef struct tables {
    const uint8_t *pointed; /* by type id or primitive class: 1 if some
                               pointer field targets it */
    const uint32_t *ptr_to; /* by type id: the pointer type to it ("emp"
                               -> "emp*") if some pointer field targets
                               that, else 0: a pointer field to the type
                               is then a place of it (&e->next, a
                               struct emp **) */
    uint64_t place_budget, hole_budget;
} tables_t;

/* t's places: where in one element each pointed-to type begins (scalars of
 * pointed-to primitives, nested structs, and what those hold), flattened
 * through nested structs and arrays. Counted first; past the budget, or
 * holding a type that has none, t is left partial (checked less, never
 * refused: the schema worked before it had these tables). */
static int build_places(tha_schema_t *s, tha__type_t *t, tables_t *c) {
    free(t->places);
    t->places = NULL;
    t->nplaces = 0;
    t->places_partial = 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        if (f->pub.kind == THA_K_SCALAR && c->pointed[tha__ptr_class(f->pub.prim)]) {
            n += f->count;
        } else if (f->pub.kind == THA_K_PTR && !t->is_ptr && c->ptr_to[f->target_id]) {
            n += f->count;
        } else if (f->pub.kind == THA_K_STRUCT) {
            const tha__type_t *tt = &s->types[f->target_id];
            if (tt->places_partial) {
                t->places_partial = 1;
                return 0;
            }
            n += f->count * (c->pointed[tt->id] + (uint64_t)tt->nplaces); /* < 2^55 */
        }
        if (n > c->place_budget) {
            t->places_partial = 1;
            return 0;
        }
    }
    if (!n)
        return 0;
    tha__place_t *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM,
                         "%s %s: out of memory for %llu type check entries",
                         tha__schema_kw(t), t->name, (unsigned long long)n);
    uint64_t m = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint64_t off = f->pub.offset;
        if (f->pub.kind == THA_K_SCALAR && c->pointed[tha__ptr_class(f->pub.prim)]) {
            for (uint64_t e = 0; e < f->count; e++)
                v[m++] = (tha__place_t){(uint32_t)(off + e * f->elem_size),
                                        tha__ptr_class(f->pub.prim)};
        } else if (f->pub.kind == THA_K_PTR && !t->is_ptr && c->ptr_to[f->target_id]) {
            for (uint64_t e = 0; e < f->count; e++)
                v[m++] = (tha__place_t){(uint32_t)(off + e * 8), c->ptr_to[f->target_id]};
        } else if (f->pub.kind == THA_K_STRUCT) {
            const tha__type_t *tt = &s->types[f->target_id];
            for (uint64_t e = 0, at = off; e < f->count; e++, at += tt->size) {
                if (c->pointed[tt->id])
                    v[m++] = (tha__place_t){(uint32_t)at, tt->id};
                for (uint32_t j = 0; j < tt->nplaces; j++)
                    v[m++] = (tha__place_t){(uint32_t)(at + tt->places[j].offset),
                                            tt->places[j].type};
            }
        }
    }
    THA_ASSERT(m == n);
    qsort(v, (size_t)n, sizeof *v, cmp_place);
    uint64_t u = 1; /* a union's members may repeat a place */
    for (uint64_t i = 1; i < n; i++)
        if (v[i].offset != v[u - 1].offset || v[i].type != v[u - 1].type)
            v[u++] = v[i];
    t->places = v;
    t->nplaces = (uint32_t)u;
    c->place_budget -= u;
    return 0;
}

/* t's holes: the bytes of one element no field covers, nested structs'
 * holes included unless another field covers them. The covered intervals
 * are listed (a nested struct: the stretches between its holes, per
 * element), counted first against the budget, sorted, and complemented. */
static int build_holes(tha_schema_t *s, tha__type_t *t, tables_t *c) {
    free(t->holes);
    t->holes = NULL;
    t->nholes = 0;
    t->holes_partial = 0;
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        const tha__type_t *tt = f->pub.kind == THA_K_STRUCT ? &s->types[f->target_id] : NULL;
        if (tt && tt->holes_partial) {
            t->holes_partial = 1;
            return 0;
        }
        n += tt && tt->nholes ? f->count * ((uint64_t)tt->nholes + 1) : 1; /* < 2^55 */
        if (n + 1 > c->hole_budget) {
            t->holes_partial = 1;
            return 0;
        }
    }
    tha__hole_t *v = malloc((size_t)(n + 1) * sizeof *v);
    if (!v)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM,
                         "%s %s: out of memory for %llu type check entries",
                         tha__schema_kw(t), t->name, (unsigned long long)n);
    uint64_t m = 0;
    for (uint32_t i = 0; i < t->nfields; i++) {
        const tha__field_t *f = &t->fields[i];
        uint64_t from = f->pub.offset, bytes = f->elem_size * f->count;
        const tha__type_t *tt = f->pub.kind == THA_K_STRUCT ? &s->types[f->target_id] : NULL;
        if (!tt || !tt->nholes) {
            v[m++] = (tha__hole_t){(uint32_t)from, (uint32_t)(from + bytes)};
            continue;
        }
        for (uint64_t e = 0, at = from; e < f->count; e++, at += tt->size) {
            uint64_t cur = 0;
            for (uint32_t j = 0; j < tt->nholes; j++) {
                v[m++] = (tha__hole_t){(uint32_t)(at + cur), (uint32_t)(at + tt->holes[j].from)};
                cur = tt->holes[j].to;
            }
            v[m++] = (tha__hole_t){(uint32_t)(at + cur), (uint32_t)(at + tt->size)};
        }
    }
    THA_ASSERT(m == n);
    qsort(v, (size_t)n, sizeof *v, cmp_hole);
    uint64_t u = 0, cur = 0; /* complement in place: holes never outnumber
                                the intervals before them, plus one */
    for (uint64_t i = 0; i < n; i++) {
        tha__hole_t iv = v[i];
        if (iv.from >= iv.to) /* a nested struct ending in a hole: covers nothing */
            continue;          /* (else it splits the hole around it in two) */
        if (iv.from > cur)
            v[u++] = (tha__hole_t){(uint32_t)cur, iv.from};
        if (iv.to > cur)
            cur = iv.to;
    }
    if (cur < t->size)
        v[u++] = (tha__hole_t){(uint32_t)cur, (uint32_t)t->size};
    if (!u) {
        free(v);
        return 0;
    }
    t->holes = v;
    t->nholes = (uint32_t)u;
    c->hole_budget -= u;
    return 0;
}

/* Everything of t that needs the types it holds by value built first. */
static int build_tables(tha_schema_t *s, tha__type_t *t, uint64_t *budget, tables_t *c) {
    int rc = build_slots(s, t, budget);
    if (!rc)
        rc = check_overlaps(s, t);
    if (!rc)
        rc = build_places(s, t, c);
    if (!rc)
        rc = build_holes(s, t, c);
    return rc;
}

/* Seals every user type: resolves fields, sealing the types a struct holds
 * by value before it (depth first, in field order, so the first problem
 * reported is the one a recursive walk would meet first), then builds its
 * relocation table. The walk keeps its own stack (one entry per type being
 * sealed, at most every user type once), so nesting depth costs heap
 * memory, not call stack. */
typedef struct seal_frame {
    tha__type_t *t;
    uint32_t field;  /* next field to look at */
    uint32_t back;   /* 1: returning to that field from its nested type */
} seal_frame_t;

static int seal_types(tha_schema_t *s, const name_index_t *ix, tables_t *tab) {
    uint32_t nuser = s->ntypes > THA_T_FIRST_USER ? s->ntypes - THA_T_FIRST_USER : 0;
    s->total_slots = 0;
    if (!nuser)
        return 0;
    seal_frame_t *st = malloc(((size_t)nuser + 1) * sizeof *st);
    if (!st)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    uint64_t budget = THA_SCHEMA_MAX_SLOTS;
    int rc = 0;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes && !rc; id++) {
        if (s->types[id].seal_state == 2)
            continue;
        size_t sp = 0;
        st[sp++] = (seal_frame_t){&s->types[id], 0, 0};
        s->types[id].seal_state = 1;
        while (sp && !rc) {
            seal_frame_t *fr = &st[sp - 1];
            tha__type_t *t = fr->t;
            if (fr->field == t->nfields) {
                rc = build_tables(s, t, &budget, tab);
                t->seal_state = 2;
                sp--;
                continue;
            }
            tha__field_t *f = &t->fields[fr->field];
            if (!fr->back) {
                tha__type_t *tt;
                rc = field_pre(s, ix, t, f, &tt);
                if (rc)
                    break;
                if (tt) {
                    THA_ASSERT(sp <= nuser);
                    fr->back = 1;
                    tt->seal_state = 1;
                    st[sp++] = (seal_frame_t){tt, 0, 0};
                    continue;
                }
            }
            fr->back = 0;
            rc = field_post(s, t, f);
            fr->field++;
        }
    }
    free(st);
    s->total_slots = THA_SCHEMA_MAX_SLOTS - budget;
    return rc;
}

/* Canonical order of user types: structs by name, then unions by name
 * (names are unique across both). */
static int cmp_canonical(const void *a, const void *b) {
    const tha__type_t *x = a, *y = b;
    if (x->is_union != y->is_union)
        return x->is_union ? 1 : -1;
    return strcmp(x->name, y->name);
}

static int cmp_func(const void *a, const void *b) {
    return strcmp(((const tha__func_t *)a)->name, ((const tha__func_t *)b)->name);
}

static int cmp_extern(const void *a, const void *b) {
    return strcmp(((const tha__extern_t *)a)->name, ((const tha__extern_t *)b)->name);
}

/* One canonical schema: the same structs give the same ids, byte form and
 * fingerprint in whatever order they were registered. Sealing sorts the
 * user types (cmp_canonical) and renumbers them; nothing refers to a type
 * by id before seal except registration handles, which follow their type
 * here, so there is nothing else to rewrite (field targets are names,
 * resolved after this; relocation tables are built after this). Functions
 * and externs are sorted by name: their ids travel in pointer slots (the
 * extern address index follows its externs). */
static int canonical_order(tha_schema_t *s) {
    if (s->ntypes > THA_T_FIRST_USER + 1)
        qsort(s->types + THA_T_FIRST_USER, s->ntypes - THA_T_FIRST_USER,
              sizeof *s->types, cmp_canonical);
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        s->types[id].id = id;
        s->handles[s->types[id].handle] = id;
    }
    tha__schema_hash_rebuild(s, s->ntypes); /* the indexes moved */
    if (s->nfuncs > 1)
        qsort(s->funcs, s->nfuncs, sizeof *s->funcs, cmp_func);
    if (s->nexterns > 1)
        qsort(s->externs, s->nexterns, sizeof *s->externs, cmp_extern);
    return tha__schema_extern_reindex(s);
}

int tha_schema_seal(tha_schema_t *s) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return 0;
    if (s->add_failed)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA, "not sealed: an earlier "
                         "add failed (%s): fix it and build the schema again",
                         s->add_err);
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        int rc = tha__schema_pointer_shape(s, &s->types[id]);
        if (rc)
            return rc;
    }
    if (canonical_order(s))
        return THA_ENOMEM;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++)
        s->types[id].seal_state = 0;
    name_index_t ix = {malloc((size_t)s->ntypes * sizeof(tha__type_t *)), 0};
    if (!ix.v)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    for (uint32_t id = 1; id < s->ntypes; id++)
        if (s->types[id].defined)
            ix.v[ix.n++] = &s->types[id];
    qsort(ix.v, ix.n, sizeof *ix.v, cmp_type_name);
    uint8_t *pointed = calloc(s->ntypes, 1);
    if (!pointed) {
        free(ix.v);
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < ix.n; i++)
        for (uint32_t j = 0; j < ix.v[i]->nfields; j++) {
            const tha__field_t *f = &ix.v[i]->fields[j];
            const tha__type_t *tt;
            if (f->pub.kind == THA_K_PTR && (tt = index_find(&ix, f->target)))
                pointed[tha__ptr_class(tt->id)] = 1; /* unresolved: seal fails */
        }
    uint32_t *ptr_to = calloc(s->ntypes, sizeof *ptr_to);
    if (!ptr_to) {
        free(pointed);
        free(ix.v);
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    }
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        const tha__type_t *p = &s->types[id], *tt; /* shapes checked above */
        if (p->is_ptr && pointed[id] && (tt = index_find(&ix, p->fields[0].target)))
            ptr_to[tt->id] = id;
    }
    tables_t tab = {pointed, ptr_to, THA_SCHEMA_MAX_SLOTS, THA_SCHEMA_MAX_SLOTS};
    int rc = seal_types(s, &ix, &tab);
    free(ptr_to);
    free(pointed);
    free(ix.v);
    if (rc)
        return rc;
    s->max_size = 0;
    s->max_size_id = 0;
    s->func_slots = 0;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        if (s->types[id].size > s->max_size) {
            s->max_size = s->types[id].size;
            s->max_size_id = id;
        }
        for (uint32_t k = 0; k < s->types[id].nslots; k++)
            s->func_slots |= s->types[id].slots[k].is_func;
    }
    tha__schema_write(s, NULL, 0, &s->fingerprint);
    s->sealed = 1;
    return 0;
}

int tha__schema_fits(const tha_schema_t *s, uint64_t capacity, char *msg, size_t cap) {
    if (!s->max_size_id || s->max_size <= capacity)
        return 0;
    const tha__type_t *t = &s->types[s->max_size_id];
    return tha__fail(msg, cap, THA_ESCHEMA,
                     "%s %s is %llu bytes, larger than the heap's capacity of %llu "
                     "bytes: no element of it could ever be allocated",
                     tha__schema_kw(t), t->name, (unsigned long long)t->size,
                     (unsigned long long)capacity);
}

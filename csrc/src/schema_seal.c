/* schema_seal.c — sealing a schema: the canonical order of types and
 * functions (ids), name resolution, the checks of what cannot be mirrored,
 * each type's relocation table (pointer slots of nested structs and arrays
 * flattened, counted against THA_SCHEMA_MAX_SLOTS before one allocation),
 * and the fingerprint. Nested types are sealed with an explicit stack.
 */
#include "schema_priv.h"

#include <stdlib.h>

static int cmp_slot(const void *a, const void *b) {
    const tha__slot_t *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
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
    t->slots = NULL;
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
    if (!t->slots)
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
                t->slots[m++].tag_mask = (uint16_t)f->pub.tag_mask;
            }
        } else if (kind == THA_K_STRUCT) {
            const tha__type_t *tt = &s->types[f->target_id];
            for (uint64_t e = 0; e < f->count && tt->nslots; e++)
                for (uint32_t j = 0; j < tt->nslots; j++) {
                    t->slots[m] = tt->slots[j];
                    t->slots[m++].offset = (uint32_t)(f->pub.offset + e * f->elem_size +
                                                      tt->slots[j].offset);
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
    if (!sorted)
        qsort(t->slots, m, sizeof *t->slots, cmp_slot);
    for (uint32_t i = 1; i < m; i++)
        if (t->slots[i].offset < t->slots[i - 1].offset + 8)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s: pointer slots at offsets %u and %u overlap", k,
                             t->name, t->slots[i - 1].offset, t->slots[i].offset);
    return 0;
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

static int seal_types(tha_schema_t *s, const name_index_t *ix) {
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
                rc = build_slots(s, t, &budget);
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
    int rc = seal_types(s, &ix);
    free(ix.v);
    if (rc)
        return rc;
    s->max_size = 0;
    s->max_size_id = 0;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++)
        if (s->types[id].size > s->max_size) {
            s->max_size = s->types[id].size;
            s->max_size_id = id;
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

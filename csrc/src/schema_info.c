/* schema_info.c — reading a schema: introspection (types, fields,
 * functions), compare (naming the first difference), and the field path of
 * a byte of a type ("struct emp field reports[2]") for error messages.
 */
#include "schema_priv.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- compare ------------------------------------------------------------ */

static void dims_text(const uint32_t *dims, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = 0;
    for (int d = 0; d < THA_MAX_DIMS && dims[d]; d++) {
        int w = snprintf(buf + n, cap - n, "[%u]", dims[d]);
        if (w < 0 || (size_t)w >= cap - n)
            return;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, cap, "none");
}

static int cmp_field(const tha__type_t *t, const tha__field_t *x,
                     const tha__field_t *y, char *msg, size_t cap) {
    const char *k = tha__schema_kw(t);
    if (strcmp(x->name, y->name) != 0)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s: field %u is '%s' vs '%s'",
                         k, t->name, (unsigned)(x - t->fields), x->name, y->name);
    if (x->pub.offset != y->pub.offset)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s field %s: offset %u vs %u",
                         k, t->name, x->name, x->pub.offset, y->pub.offset);
    if (x->pub.kind != y->pub.kind)
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: field kind %s vs %s", k, t->name,
                         x->name, tha__schema_kind_name(x->pub.kind), tha__schema_kind_name(y->pub.kind));
    if (x->pub.prim != y->pub.prim)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s field %s: prim %s vs %s",
                         k, t->name, x->name, tha__schema_prim_name(x->pub.prim),
                         tha__schema_prim_name(y->pub.prim));
    if (strcmp(x->target, y->target) != 0)
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: target '%s' vs '%s'", k, t->name,
                         x->name, x->target, y->target);
    if (memcmp(x->pub.dims, y->pub.dims, sizeof x->pub.dims) != 0) {
        char a[64], b[64];
        dims_text(x->pub.dims, a, sizeof a);
        dims_text(y->pub.dims, b, sizeof b);
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s field %s: dims %s vs %s",
                         k, t->name, x->name, a, b);
    }
    if (x->pub.bits[0] != y->pub.bits[0] || x->pub.bits[1] != y->pub.bits[1])
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: bits %u:%u vs %u:%u (shift:width)", k,
                         t->name, x->name, x->pub.bits[0], x->pub.bits[1],
                         y->pub.bits[0], y->pub.bits[1]);
    if (strcmp(x->sig, y->sig) != 0)
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: signature '%s' vs '%s'", k, t->name,
                         x->name, x->sig[0] ? x->sig : "void(*)(void)",
                         y->sig[0] ? y->sig : "void(*)(void)");
    if (x->pub.tag_mask != y->pub.tag_mask)
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: tag mask 0x%x vs 0x%x", k, t->name, x->name,
                         x->pub.tag_mask, y->pub.tag_mask);
    return 0;
}

int tha_schema_compare(const tha_schema_t *a, const tha_schema_t *b, char *msg,
                       size_t msgcap) {
    if (msg && msgcap)
        msg[0] = 0;
    if (!a || !b)
        return tha__fail(msg, msgcap, THA_EINVAL, "schema is NULL");
    if (a->sealed && b->sealed && a->fingerprint == b->fingerprint)
        return 0;
    uint32_t n = a->ntypes > b->ntypes ? a->ntypes : b->ntypes;
    for (uint32_t id = THA_T_FIRST_USER; id < n; id++) {
        const tha__type_t *x = id < a->ntypes ? &a->types[id] : NULL;
        const tha__type_t *y = id < b->ntypes ? &b->types[id] : NULL;
        if (x && !x->defined)
            x = NULL;
        if (y && !y->defined)
            y = NULL;
        if (!x || !y) {
            const tha__type_t *t = x ? x : y;
            if (t)
                return tha__fail(msg, msgcap, THA_EMISMATCH,
                                 "only one side has %s %s (type %u)", tha__schema_kw(t),
                                 t->name, id);
            continue;
        }
        if (strcmp(x->name, y->name) != 0 || x->is_union != y->is_union)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "type %u: %s %s vs %s %s", id, tha__schema_kw(x), x->name,
                             tha__schema_kw(y), y->name);
        uint32_t nf = x->nfields < y->nfields ? x->nfields : y->nfields;
        for (uint32_t i = 0; i < nf; i++) {
            int rc = cmp_field(x, &x->fields[i], &y->fields[i], msg, msgcap);
            if (rc)
                return rc;
        }
        if (x->nfields != y->nfields)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: %u fields vs %u", tha__schema_kw(x), x->name,
                             x->nfields, y->nfields);
        if (x->size != y->size)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: size %llu vs %llu", tha__schema_kw(x), x->name,
                             (unsigned long long)x->size,
                             (unsigned long long)y->size);
        if (x->align != y->align)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: align %llu vs %llu", tha__schema_kw(x), x->name,
                             (unsigned long long)x->align,
                             (unsigned long long)y->align);
    }
    uint32_t nfn = a->nfuncs < b->nfuncs ? a->nfuncs : b->nfuncs;
    for (uint32_t i = 0; i < nfn; i++)
        if (strcmp(a->funcs[i].name, b->funcs[i].name) != 0)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "function %u: '%s' vs '%s'", i, a->funcs[i].name,
                             b->funcs[i].name);
    if (a->nfuncs != b->nfuncs) {
        const tha__func_t *f = a->nfuncs > b->nfuncs ? &a->funcs[nfn] : &b->funcs[nfn];
        return tha__fail(msg, msgcap, THA_EMISMATCH,
                         "only one side has function %u '%s' (%u functions vs %u)",
                         nfn, f->name, a->nfuncs, b->nfuncs);
    }
    uint32_t nex = a->nexterns < b->nexterns ? a->nexterns : b->nexterns;
    for (uint32_t i = 0; i < nex; i++) {
        const tha__extern_t *x = &a->externs[i], *y = &b->externs[i];
        if (strcmp(x->name, y->name) != 0)
            return tha__fail(msg, msgcap, THA_EMISMATCH, "extern %u: '%s' vs '%s'", i,
                             x->name, y->name);
        if (x->size != y->size)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "extern '%s': size %llu vs %llu", x->name,
                             (unsigned long long)x->size, (unsigned long long)y->size);
    }
    if (a->nexterns != b->nexterns) {
        const tha__extern_t *e = a->nexterns > b->nexterns ? &a->externs[nex]
                                                           : &b->externs[nex];
        return tha__fail(msg, msgcap, THA_EMISMATCH,
                         "only one side has extern %u '%s' (%u externs vs %u)", nex,
                         e->name, a->nexterns, b->nexterns);
    }
    if (a->sealed != b->sealed)
        return tha__fail(msg, msgcap, THA_EMISMATCH,
                         "only one side is sealed");
    return 0;
}

/* ---- introspection ------------------------------------------------------ */

const tha__type_t *tha__schema_type(const tha_schema_t *s, uint32_t id) {
    if (!s || id >= s->ntypes || !s->types[id].defined)
        return NULL;
    return &s->types[id];
}

uint32_t tha_schema_type_count(const tha_schema_t *s) {
    return s ? s->ntypes : 0;
}

int tha_schema_type_info(const tha_schema_t *s, uint32_t id,
                         tha_type_info_t *out) {
    if (!s || !out)
        return THA_EINVAL;
    uint32_t ix = tha__schema_resolve_id(s, id);
    if (!ix)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type with id %u", id);
    const tha__type_t *t = &s->types[ix];
    out->name = t->name;
    out->id = tha__schema_public_id(s, t);
    out->is_union = t->is_union;
    out->is_prim = t->is_prim;
    out->nfields = t->nfields;
    out->size = t->size;
    out->align = t->align;
    out->nslots = t->nslots;
    return 0;
}

int tha_schema_type_by_name(const tha_schema_t *s, const char *name,
                            uint32_t *id) {
    if (!s || !name)
        return THA_EINVAL;
    int keyword;
    char canon[THA_NAME_MAX];
    const char *bare = tha__schema_canonical_name(name, canon, sizeof canon, &keyword);
    const tha__type_t *t = tha__schema_find_type(s, bare), *base = t;
    /* "struct emp *": the keyword is the base's */
    for (size_t n = strlen(bare); base && n && bare[n - 1] == '*'; n--)
        base = base->nfields ? &s->types[base->fields[0].target_id] : NULL;
    if (!t || (keyword >= 0 &&
               (!base || base->is_prim || (int)base->is_union != keyword)))
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type named '%s'", name);
    if (id)
        *id = tha__schema_public_id(s, t);
    return 0;
}

int tha_schema_field_info(const tha_schema_t *s, uint32_t id, uint32_t i,
                          tha_field_t *out) {
    if (!s || !out)
        return THA_EINVAL;
    uint32_t ix = tha__schema_resolve_id(s, id);
    if (!ix)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type with id %u", id);
    const tha__type_t *t = &s->types[ix];
    if (i >= t->nfields)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "%s %s has no field %u (%u fields)", tha__schema_kw(t), t->name, i,
                         t->nfields);
    *out = t->fields[i].pub;
    return 0;
}

uint32_t tha_schema_func_count(const tha_schema_t *s) {
    return s ? s->nfuncs : 0;
}

int tha_schema_func_info(const tha_schema_t *s, uint32_t i, const char **name,
                         void (**fn)(void)) {
    if (!s)
        return THA_EINVAL;
    if (i >= s->nfuncs)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no function %u (%u declared)", i, s->nfuncs);
    if (name)
        *name = s->funcs[i].name;
    if (fn)
        *fn = s->funcs[i].fn;
    return 0;
}

uint32_t tha_schema_extern_count(const tha_schema_t *s) {
    return s ? s->nexterns : 0;
}

int tha_schema_extern_info(const tha_schema_t *s, uint32_t i, const char **name,
                           size_t *size, const void **addr) {
    if (!s)
        return THA_EINVAL;
    if (i >= s->nexterns)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no extern %u (%u declared)", i, s->nexterns);
    const tha__extern_t *e = &s->externs[i];
    if (name)
        *name = e->name;
    if (size)
        *size = (size_t)e->size;
    if (addr)
        *addr = (const void *)e->addr;
    return 0;
}

const tha__slot_t *tha__schema_slot_at(const tha__type_t *t, uint64_t off) {
    uint32_t lo = 0, hi = t->nslots;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->slots[mid].offset < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->nslots && t->slots[lo].offset == off ? &t->slots[lo] : NULL;
}

/* ---- describe ----------------------------------------------------------- */

typedef struct sbuf {
    char *buf;
    size_t cap, len;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf_t *b, const char *fmt, ...) {
    if (b->len >= b->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    b->len += (size_t)n;
    if (b->len >= b->cap)
        b->len = b->cap;
}

static uint64_t field_elem(const tha_schema_t *s, const tha__field_t *f) {
    if (f->elem_size)
        return f->elem_size;
    if (f->pub.kind == THA_K_STRUCT) {
        const tha__type_t *tt = tha__schema_find_type(s, f->target);
        return tt ? tt->size : 0;
    }
    return tha__field_elem_size(f);
}

/* Appends the field path for byte off within type t (a user type). */
static void describe_in(const tha_schema_t *s, const tha__type_t *t,
                        uint64_t off, sbuf_t *b, int depth) {
    const tha__field_t *hit = NULL;
    uint64_t esz = 0;
    for (int pass = 0; pass < 2 && !hit; pass++)
        for (uint32_t i = 0; i < t->nfields; i++) {
            const tha__field_t *f = &t->fields[i];
            /* bitfields last: a plain field is the better name */
            if ((f->pub.kind == THA_K_BITS) != (pass == 1))
                continue;
            uint64_t e = field_elem(s, f);
            if (e && off >= f->pub.offset && off - f->pub.offset < e * f->count) {
                hit = f;
                esz = e;
                break;
            }
        }
    if (!hit) {
        if (depth == 0)
            sb_printf(b, " (padding at %llu)", (unsigned long long)off);
        else
            sb_printf(b, " (padding at %llu of %s %s)", (unsigned long long)off,
                      tha__schema_kw(t), t->name);
        return;
    }
    sb_printf(b, "%s%s", depth ? "." : " field ", hit->name);
    uint64_t rel = off - hit->pub.offset;
    uint64_t idx = rel / esz, inner = rel % esz;
    if (hit->pub.dims[0]) {
        int nd = 0;
        while (nd < THA_MAX_DIMS && hit->pub.dims[nd])
            nd++;
        uint64_t sub[THA_MAX_DIMS];
        for (int d = nd - 1; d >= 0; d--) {
            sub[d] = idx % hit->pub.dims[d];
            idx /= hit->pub.dims[d];
        }
        for (int d = 0; d < nd; d++)
            sb_printf(b, "[%llu]", (unsigned long long)sub[d]);
    }
    if (hit->pub.kind == THA_K_STRUCT && depth < 16) {
        const tha__type_t *tt = tha__schema_find_type(s, hit->target);
        if (tt && !tt->is_prim)
            describe_in(s, tt, inner, b, depth + 1);
    }
}

void tha__schema_describe(const tha_schema_t *s, uint32_t id, uint64_t off,
                          char *buf, size_t cap) {
    if (!buf || cap == 0)
        return;
    buf[0] = 0;
    sbuf_t b = {buf, cap, 0};
    const tha__type_t *t = tha__schema_type(s, id);
    if (!t) {
        sb_printf(&b, "type %u (unknown)", id);
        return;
    }
    if (t->is_prim) {
        sb_printf(&b, "%s", t->name);
        return;
    }
    sb_printf(&b, "%s %s", tha__schema_kw(t), t->name);
    if (off >= t->size) {
        sb_printf(&b, " (offset %llu beyond size %llu)", (unsigned long long)off,
                  (unsigned long long)t->size);
        return;
    }
    describe_in(s, t, off, &b, 0);
}

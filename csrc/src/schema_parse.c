/* schema_parse.c — deserialization: a schema rebuilt from its canonical
 * byte form (registered, sealed, then written again and compared byte for
 * byte: only the canonical form of what it rebuilds is accepted), bounded
 * by the blob's size and, with an image, by the heap's capacity.
 */
#include "schema_priv.h"

#include <stdlib.h>

typedef struct reader {
    const uint8_t *p;
    size_t len, pos;
    int bad;
} reader_t;

static int r_need(reader_t *r, size_t n) {
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return 0;
    }
    return 1;
}

static uint32_t r_u16(reader_t *r) {
    if (!r_need(r, 2))
        return 0;
    const uint8_t *b = r->p + r->pos;
    r->pos += 2;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8;
}

static uint32_t r_u32(reader_t *r) {
    if (!r_need(r, 4))
        return 0;
    const uint8_t *b = r->p + r->pos;
    r->pos += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
           (uint32_t)b[3] << 24;
}

static uint64_t r_u64(reader_t *r) {
    uint64_t lo = r_u32(r);
    uint64_t hi = r_u32(r);
    return lo | hi << 32;
}

/* Reads a u16-prefixed string into out (cap bytes with NUL). Returns 0, or
 * 1 on an over-long or NUL-holding string (r->bad for truncation). */
static int r_str(reader_t *r, char *out, size_t cap) {
    out[0] = 0;
    uint32_t n = r_u16(r);
    if (r->bad)
        return 0;
    if (n >= cap)
        return 1;
    if (!r_need(r, n))
        return 0;
    if (memchr(r->p + r->pos, 0, n))
        return 1;
    memcpy(out, r->p + r->pos, n);
    out[n] = 0;
    r->pos += n;
    return 0;
}

static int cmp_name_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* add_field's duplicate check, for a whole deserialized type at once:
 * sorted, O(n log n) rather than a scan per field. */
static int unique_fields(const tha_schema_t *s, const tha__type_t *t, char *msg,
                         size_t msgcap) {
    (void)s;
    if (t->nfields < 2)
        return 0;
    const char **v = malloc((size_t)t->nfields * sizeof *v);
    if (!v)
        return tha__fail(msg, msgcap, THA_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < t->nfields; i++)
        v[i] = t->fields[i].name;
    qsort(v, t->nfields, sizeof *v, cmp_name_ptr);
    int rc = 0;
    for (uint32_t i = 1; i < t->nfields && !rc; i++)
        if (strcmp(v[i], v[i - 1]) == 0)
            rc = tha__fail(msg, msgcap, THA_EFRAME,
                           "schema blob: %s %s: duplicate field '%s'", tha__schema_kw(t),
                           t->name, v[i]);
    free(v);
    return rc;
}

#define TYPE_MIN_BYTES 26u  /* name len, is_union, size, align, nfields */
#define FIELD_MIN_BYTES 42u /* empty strings, all numbers (format 2: +4) */
#define EXTERN_MIN_BYTES 10u /* name len, size */

static int deser(const uint8_t *b, size_t len, tha_schema_t *s, char *msg,
                 size_t msgcap) {
    reader_t r = {.p = b, .len = len};
    char name[THA_NAME_MAX], target[THA_NAME_MAX], sig[THA__SIG_MAX];
    if (len < 16)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob truncated: %zu bytes, header needs 16", len);
    uint32_t magic = r_u32(&r), version = r_u32(&r);
    if (magic != THA__SCHEMA_MAGIC)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: bad magic 0x%08x", magic);
    if (version != THA__SCHEMA_FORMAT && version != THA__SCHEMA_FORMAT_EXT)
        return tha__fail(msg, msgcap, THA_EVERSION,
                         "schema blob: format version %u, this build reads %u and %u",
                         version, THA__SCHEMA_FORMAT, THA__SCHEMA_FORMAT_EXT);
    const int ext = version == THA__SCHEMA_FORMAT_EXT;
    uint32_t ntypes = r_u32(&r), nfuncs = r_u32(&r), nexterns = ext ? r_u32(&r) : 0;
    if (r.bad)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob truncated: %zu bytes, header needs 20", len);
    const uint32_t field_min = FIELD_MIN_BYTES + (ext ? 4u : 0u);
    size_t rest = len - r.pos;
    if (ntypes > THA_MAX_USER_TYPES || ntypes > rest / TYPE_MIN_BYTES)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: absurd type count %u for %zu bytes",
                         ntypes, len);
    if (nfuncs > THA_MAX_FUNCS || nfuncs > rest / 2)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: absurd function count %u for %zu bytes",
                         nfuncs, len);
    if (nexterns > THA_MAX_EXTERNS || nexterns > rest / EXTERN_MIN_BYTES)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: absurd extern count %u for %zu bytes",
                         nexterns, len);
#define TRUNC()                                                                \
    tha__fail(msg, msgcap, THA_EFRAME, "schema blob truncated at byte %zu of %zu", \
              r.pos, len)
#define STR(buf, what)                                                         \
    do {                                                                       \
        if (r_str(&r, (buf), sizeof(buf)))                                     \
            return tha__fail(msg, msgcap, THA_EFRAME,                          \
                             "schema blob: bad %s string at byte %zu", (what), \
                             r.pos);                                           \
        if (r.bad)                                                             \
            return TRUNC();                                                    \
    } while (0)
    /* Handles made here are never handed out: a caller's handle (from its
     * own registration) must not silently name one of these types. */
    s->internal_handles = 1;
    /* The blob lists types and functions in canonical order (see
     * canonical_order); their position is their id, which object headers
     * and function slots of the image that came with it use. A blob out of
     * that order (an older writer's registration order) would be renumbered
     * under its image: refuse it. */
    char prev[THA_NAME_MAX] = "";
    uint32_t prev_union = 0;
    for (uint32_t i = 0; i < ntypes; i++) {
        STR(name, "type name");
        uint32_t is_union = r_u32(&r);
        uint64_t size = r_u64(&r), align = r_u64(&r);
        uint32_t nfields = r_u32(&r);
        if (r.bad)
            return TRUNC();
        if (is_union > 1)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: type %s: bad union flag %u", name,
                             is_union);
        if (nfields > THA_MAX_FIELDS || nfields > (len - r.pos) / field_min)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: type %s: absurd field count %u",
                             name, nfields);
        if (size > UINT32_MAX || align > UINT32_MAX)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: type %s: absurd size or alignment",
                             name);
        if (s->max_type_bytes && size > s->max_type_bytes)
            return tha__fail(msg, msgcap, THA_ESCHEMA,
                             "schema blob: %s %s is %llu bytes, larger than the "
                             "heap's capacity of %llu bytes: no element of it could "
                             "ever be allocated", is_union == 1 ? "union" : "struct",
                             name, (unsigned long long)size,
                             (unsigned long long)s->max_type_bytes);
        if (i > 0 && (is_union < prev_union ||
                      (is_union == prev_union && strcmp(name, prev) <= 0)))
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: %s %s after %s %s: types are not in "
                             "canonical order (structs, then unions, each by name)",
                             is_union ? "union" : "struct", name,
                             prev_union ? "union" : "struct", prev);
        memcpy(prev, name, sizeof prev);
        prev_union = is_union;
        uint32_t id;
        int rc = tha_schema_add_struct(s, name, (size_t)size, (size_t)align,
                                       (int)is_union, &id);
        if (rc)
            return tha__fail(msg, msgcap, THA_EFRAME, "schema blob: %s", s->err);
        /* exactly the fields announced (the blob holds >= FIELD_MIN_BYTES
         * for each): memory stays proportional to the blob */
        tha__type_t *nt = &s->types[s->handles[s->nhandles - 1]];
        if (nfields) {
            nt->fields = malloc((size_t)nfields * sizeof *nt->fields);
            if (!nt->fields)
                return tha__fail(msg, msgcap, THA_ENOMEM, "out of memory");
            nt->fields_cap = nfields;
        }
        for (uint32_t j = 0; j < nfields; j++) {
            tha_field_t f;
            memset(&f, 0, sizeof f);
            STR(name, "field name");
            f.offset = r_u32(&r);
            f.kind = r_u32(&r);
            f.prim = r_u32(&r);
            if (r.bad)
                return TRUNC();
            STR(target, "target");
            for (int d = 0; d < THA_MAX_DIMS; d++)
                f.dims[d] = r_u32(&r);
            f.bits[0] = r_u32(&r);
            f.bits[1] = r_u32(&r);
            if (r.bad)
                return TRUNC();
            STR(sig, "signature");
            if (ext) {
                f.tag_mask = r_u32(&r);
                if (r.bad)
                    return TRUNC();
            }
            f.name = name;
            f.target = target[0] ? target : NULL;
            f.sig = sig[0] ? sig : NULL;
            rc = tha_schema_add_field(s, id, &f);
            if (rc)
                return tha__fail(msg, msgcap, THA_EFRAME, "schema blob: %s",
                                 s->err);
        }
        rc = unique_fields(s, &s->types[s->handles[s->nhandles - 1]], msg, msgcap);
        if (rc)
            return rc;
    }
    for (uint32_t i = 0; i < nfuncs; i++) {
        STR(name, "function name");
        if (i > 0 && strcmp(name, prev) <= 0)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: function %s after %s: functions are "
                             "not in canonical order (by name)", name, prev);
        memcpy(prev, name, sizeof prev);
        int rc = tha_schema_add_func(s, name, NULL);
        if (rc)
            return tha__fail(msg, msgcap, THA_EFRAME, "schema blob: %s", s->err);
    }
    for (uint32_t i = 0; i < nexterns; i++) {
        STR(name, "extern name");
        uint64_t size = r_u64(&r);
        if (r.bad)
            return TRUNC();
        if (i > 0 && strcmp(name, prev) <= 0)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: extern %s after %s: externs are not in "
                             "canonical order (by name)", name, prev);
        memcpy(prev, name, sizeof prev);
        if (size > THA_EXTERN_MAX_SIZE)
            return tha__fail(msg, msgcap, THA_EFRAME,
                             "schema blob: extern %s: absurd size %llu", name,
                             (unsigned long long)size);
        int rc = tha_schema_add_extern(s, name, (size_t)size, NULL);
        if (rc)
            return tha__fail(msg, msgcap, THA_EFRAME, "schema blob: %s", s->err);
    }
#undef STR
#undef TRUNC
    if (r.pos != len)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: %zu trailing bytes", len - r.pos);
    int rc = tha_schema_seal(s);
    if (rc)
        return tha__fail(msg, msgcap, rc, "schema blob: %s", s->err);
    /* The blob must be the canonical form of what it rebuilt. */
    if (tha__schema_write(s, NULL, 0, NULL) != len)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob is not in canonical form");
    uint8_t *tmp = malloc(len);
    if (!tmp)
        return tha__fail(msg, msgcap, THA_ENOMEM, "out of memory");
    tha__schema_write(s, tmp, len, NULL);
    int same = memcmp(tmp, b, len) == 0;
    free(tmp);
    if (!same)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob is not in canonical form");
    return 0;
}

int tha_schema_deserialize(const void *buf, size_t len, tha_schema_t **out,
                           char *msg, size_t msgcap) {
    return tha__schema_deserialize(buf, len, 0, out, msg, msgcap);
}

int tha__schema_deserialize(const void *buf, size_t len, uint64_t capacity,
                            tha_schema_t **out, char *msg, size_t msgcap) {
    if (msg && msgcap)
        msg[0] = 0;
    if (!out)
        return tha__fail(msg, msgcap, THA_EINVAL, "out is NULL");
    *out = NULL;
    if (!buf && len)
        return tha__fail(msg, msgcap, THA_EINVAL, "buf is NULL");
    tha_schema_t *s;
    int rc = tha_schema_create(&s);
    if (rc)
        return tha__fail(msg, msgcap, rc, "out of memory");
    s->bulk = 1;
    s->max_type_bytes = capacity;
    rc = deser(buf, len, s, msg, msgcap);
    s->bulk = 0;
    s->max_type_bytes = 0;
    if (rc) {
        tha_schema_release(s);
        return rc;
    }
    *out = s;
    return 0;
}

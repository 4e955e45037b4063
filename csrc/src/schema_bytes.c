/* schema_bytes.c — the canonical byte form of a schema: what
 * tha_schema_serialize writes, snapshots and checkpoints carry, and whose
 * FNV-1a 64 hash is the fingerprint (schema_seal.c). Little-endian, types
 * then functions (then externs) in canonical order; schema_parse.c reads
 * it back.
 *
 * Two formats, one canonical choice: a schema with no data extern and no
 * tag mask is written as format 1, byte for byte as before they existed
 * (so its fingerprint, and every file and peer that carries it, stay as
 * they were); any other as format 2, which adds the extern count to the
 * header, a u32 tag mask after each field and the externs (name, u64
 * size) after the functions.
 */
#include "schema_priv.h"

typedef struct writer {
    uint8_t *buf; /* NULL: count (and hash) only */
    size_t cap;
    size_t len;
    int hashing;
    uint64_t hash;
} writer_t;

static void w_bytes(writer_t *w, const void *p, size_t n) {
    const uint8_t *b = p;
    if (w->buf && w->len <= w->cap && n <= w->cap - w->len)
        memcpy(w->buf + w->len, b, n);
    if (w->hashing)
        for (size_t i = 0; i < n; i++) {
            w->hash ^= b[i];
            w->hash *= 0x100000001b3ull;
        }
    w->len += n;
}

static void w_u16(writer_t *w, uint16_t v) {
    uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    w_bytes(w, b, 2);
}

static void w_u32(writer_t *w, uint32_t v) {
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    w_bytes(w, b, 4);
}

static void w_u64(writer_t *w, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    w_bytes(w, b, 8);
}

static void w_str(writer_t *w, const char *str) {
    size_t n = strlen(str);
    w_u16(w, (uint16_t)n);
    w_bytes(w, str, n);
}

uint32_t tha__schema_format(const tha_schema_t *s) {
    if (s->nexterns)
        return THA__SCHEMA_FORMAT_EXT;
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++)
        for (uint32_t i = 0; i < s->types[id].nfields; i++)
            if (s->types[id].fields[i].pub.tag_mask)
                return THA__SCHEMA_FORMAT_EXT;
    return THA__SCHEMA_FORMAT;
}

static void write_schema(const tha_schema_t *s, writer_t *w) {
    uint32_t nuser = s->ntypes > THA_T_FIRST_USER ? s->ntypes - THA_T_FIRST_USER : 0;
    uint32_t format = tha__schema_format(s);
    w_u32(w, THA__SCHEMA_MAGIC);
    w_u32(w, format);
    w_u32(w, nuser);
    w_u32(w, s->nfuncs);
    if (format >= THA__SCHEMA_FORMAT_EXT)
        w_u32(w, s->nexterns);
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        const tha__type_t *t = &s->types[id];
        w_str(w, t->name);
        w_u32(w, t->is_union);
        w_u64(w, t->size);
        w_u64(w, t->align);
        w_u32(w, t->nfields);
        for (uint32_t i = 0; i < t->nfields; i++) {
            const tha__field_t *f = &t->fields[i];
            w_str(w, f->name);
            w_u32(w, f->pub.offset);
            w_u32(w, f->pub.kind);
            w_u32(w, f->pub.prim);
            w_str(w, f->target);
            for (int d = 0; d < THA_MAX_DIMS; d++)
                w_u32(w, f->pub.dims[d]);
            w_u32(w, f->pub.bits[0]);
            w_u32(w, f->pub.bits[1]);
            w_str(w, f->sig);
            if (format >= THA__SCHEMA_FORMAT_EXT)
                w_u32(w, f->pub.tag_mask);
        }
    }
    for (uint32_t i = 0; i < s->nfuncs; i++)
        w_str(w, s->funcs[i].name);
    for (uint32_t i = 0; i < s->nexterns; i++) {
        w_str(w, s->externs[i].name);
        w_u64(w, s->externs[i].size);
    }
}

int tha_schema_serialize(const tha_schema_t *s, void *buf, size_t cap,
                         size_t *len) {
    if (!s)
        return THA_EINVAL;
    tha_schema_t *ms = (tha_schema_t *)s; /* err only */
    if (!s->sealed)
        return tha__fail(ms->err, sizeof ms->err, THA_ESTATE,
                         "schema must be sealed before it is serialized");
    writer_t w = {0};
    write_schema(s, &w);
    size_t need = w.len;
    if (len)
        *len = need;
    if (!buf)
        return 0;
    if (cap < need)
        return tha__fail(ms->err, sizeof ms->err, THA_ETOOSMALL,
                         "schema needs %zu bytes, buffer has %zu", need, cap);
    writer_t w2 = {.buf = buf, .cap = cap};
    write_schema(s, &w2);
    THA_ASSERT(w2.len == need);
    return 0;
}

size_t tha__schema_write(const tha_schema_t *s, uint8_t *buf, size_t cap, uint64_t *hash) {
    writer_t w = {.buf = buf, .cap = cap, .hashing = hash != NULL,
                  .hash = 0xcbf29ce484222325ull};
    write_schema(s, &w);
    if (hash) *hash = w.hash;
    return w.len;
}

uint64_t tha_schema_fingerprint(const tha_schema_t *s) {
    return (s && s->sealed) ? s->fingerprint : 0;
}

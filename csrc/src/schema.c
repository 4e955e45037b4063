/* schema.c — the schema: registered struct/union layouts, primitive types and
 * the function-name registry. Owns registration and validation, sealing
 * (name resolution, relocation tables of pointer slots, fingerprint), the
 * canonical byte form (serialize/deserialize), compare, introspection and
 * the byte-to-field-path description used in error messages. */
#include "tha_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_MAGIC 0x53414854u /* "THAS" */
#define SCHEMA_FORMAT 1u
#define SIG_MAX 128u                 /* sig buffer, with the NUL */
#define MAX_USER_TYPES THA_MAX_USER_TYPES
#define MAX_FIELDS THA_MAX_FIELDS
#define MAX_FUNCS THA_MAX_FUNCS

/* ---- primitives --------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t size;
} prims[THA_T_VOID + 1] = {
    [THA_T_CHAR] = {"char", 1},     [THA_T_I8] = {"int8_t", 1},
    [THA_T_U8] = {"uint8_t", 1},    [THA_T_I16] = {"int16_t", 2},
    [THA_T_U16] = {"uint16_t", 2},  [THA_T_I32] = {"int32_t", 4},
    [THA_T_U32] = {"uint32_t", 4},  [THA_T_I64] = {"int64_t", 8},
    [THA_T_U64] = {"uint64_t", 8},  [THA_T_F32] = {"float", 4},
    [THA_T_F64] = {"double", 8},    [THA_T_BOOL] = {"bool", 1},
    [THA_T_VOID] = {"void", 0},
};

static int is_value_prim(uint32_t p) { return p >= THA_T_CHAR && p <= THA_T_BOOL; }

static const char *kw(const tha__type_t *t) {
    return t->is_union ? "union" : "struct";
}

static const char *kind_name(uint32_t k) {
    switch (k) {
    case THA_K_SCALAR: return "scalar";
    case THA_K_STRUCT: return "struct";
    case THA_K_PTR: return "pointer";
    case THA_K_FUNC: return "function pointer";
    case THA_K_BITS: return "bitfield";
    default: return "unknown";
    }
}

static const char *prim_name(uint32_t p) {
    return (p >= THA_T_CHAR && p <= THA_T_VOID) ? prims[p].name : "none";
}

/* ---- lifetime ----------------------------------------------------------- */

static void hash_rebuild(tha_schema_t *s, uint32_t need);

static int grow_types(tha_schema_t *s, uint32_t need) {
    if (need <= s->types_cap)
        return 0;
    uint32_t cap = s->types_cap ? s->types_cap : 64;
    while (cap < need)
        cap *= 2;
    uint32_t *hs = realloc(s->handles, (size_t)cap * sizeof *hs);
    if (!hs)
        return THA_ENOMEM;
    s->handles = hs;
    tha__type_t *t = realloc(s->types, (size_t)cap * sizeof *t);
    if (!t)
        return THA_ENOMEM;
    memset(t + s->types_cap, 0, (size_t)(cap - s->types_cap) * sizeof *t);
    s->types = t;
    s->types_cap = cap;
    return 0;
}

int tha_schema_create(tha_schema_t **out) {
    if (!out)
        return THA_EINVAL;
    *out = NULL;
    tha_schema_t *s = calloc(1, sizeof *s);
    if (!s)
        return THA_ENOMEM;
    if (grow_types(s, THA_T_FIRST_USER) != 0) {
        free(s->handles);
        free(s->types);
        free(s);
        return THA_ENOMEM;
    }
    for (uint32_t i = 0; i < THA_T_FIRST_USER; i++)
        s->types[i].id = i;
    for (uint32_t p = THA_T_CHAR; p <= THA_T_VOID; p++) {
        tha__type_t *t = &s->types[p];
        snprintf(t->name, sizeof t->name, "%s", prims[p].name);
        t->is_prim = 1;
        t->defined = 1;
        t->size = prims[p].size;
        t->align = prims[p].size ? prims[p].size : 1;
        t->seal_state = 2;
    }
    s->ntypes = THA_T_VOID + 1;
    s->refs = 1;
    hash_rebuild(s, THA_T_FIRST_USER);
    *out = s;
    return 0;
}

static void free_schema(tha_schema_t *s) {
    for (uint32_t i = 0; i < s->ntypes; i++) {
        free(s->types[i].fields);
        free(s->types[i].slots);
    }
    free(s->types);
    free(s->handles);
    free(s->funcs);
    free(s->nhash);
    free(s);
}

void tha_schema_release(tha_schema_t *s) {
    if (!s)
        return;
    THA_ASSERT(s->refs > 0);
    if (--s->refs <= 0)
        free_schema(s);
}

tha_schema_t *tha__schema_retain(tha_schema_t *s) {
    if (s)
        s->refs++;
    return s;
}

const char *tha_schema_errmsg(const tha_schema_t *s) {
    return s ? s->err : "no schema";
}

/* ---- lookup helpers ----------------------------------------------------- */

/* FNV-1a of a name. */
static uint32_t name_hash(const char *name) {
    uint32_t h = 0x811c9dc5u;
    for (; *name; name++) {
        h ^= (unsigned char)*name;
        h *= 0x01000193u;
    }
    return h;
}

static void hash_put(tha_schema_t *s, uint32_t ix) {
    uint32_t mask = s->nhash_cap - 1;
    uint32_t i = name_hash(s->types[ix].name) & mask;
    while (s->nhash[i])
        i = (i + 1) & mask;
    s->nhash[i] = ix;
}

/* (Re)builds the name index for at least need defined types; without
 * memory for it find_type falls back to a scan. */
static void hash_rebuild(tha_schema_t *s, uint32_t need) {
    uint32_t cap = 64;
    while (cap < 2 * need + 2)
        cap *= 2;
    uint32_t *nh = calloc(cap, sizeof *nh);
    free(s->nhash);
    s->nhash = nh;
    s->nhash_cap = nh ? cap : 0;
    if (!nh)
        return;
    for (uint32_t i = 1; i < s->ntypes; i++)
        if (s->types[i].defined)
            hash_put(s, i);
}

static tha__type_t *find_type(const tha_schema_t *s, const char *name) {
    if (s->nhash) {
        uint32_t mask = s->nhash_cap - 1;
        for (uint32_t i = name_hash(name) & mask; s->nhash[i]; i = (i + 1) & mask) {
            tha__type_t *t = &s->types[s->nhash[i]];
            if (strcmp(t->name, name) == 0)
                return t;
        }
        return NULL;
    }
    for (uint32_t i = 1; i < s->ntypes; i++) {
        tha__type_t *t = &s->types[i];
        if (t->defined && strcmp(t->name, name) == 0)
            return t;
    }
    return NULL;
}

static tha__func_t *find_func(const tha_schema_t *s, const char *name) {
    for (uint32_t i = 0; i < s->nfuncs; i++)
        if (strcmp(s->funcs[i].name, name) == 0)
            return &s->funcs[i];
    return NULL;
}

/* Index in s->types of a type id given by a caller: a primitive, a
 * registration handle (THA_T_HANDLE + n, from add_struct) or, once sealed,
 * a canonical id. 0 if it names nothing. Before seal there are no canonical
 * struct ids yet: the indexes are registration order, not the ids sealing
 * will give, so only handles name structs then. */
static uint32_t resolve_id(const tha_schema_t *s, uint32_t id) {
    if (id >= THA_T_HANDLE) {
        uint32_t n = id - THA_T_HANDLE;
        if (n >= s->nhandles || (s->sealed && s->internal_handles))
            return 0;
        return s->handles[n];
    }
    if (id >= s->ntypes || !s->types[id].defined)
        return 0;
    if (id >= THA_T_FIRST_USER && !s->sealed)
        return 0;
    return id;
}

/* The id a caller sees for types[i]: canonical once sealed, else the
 * registration handle (primitives are themselves). */
static uint32_t public_id(const tha_schema_t *s, const tha__type_t *t) {
    if (t->is_prim || s->sealed)
        return t->id;
    return THA_T_HANDLE + t->handle;
}

uint32_t tha_schema_type_id(const tha_schema_t *s, uint32_t id) {
    if (!s)
        return 0;
    uint32_t i = resolve_id(s, id);
    if (i >= THA_T_FIRST_USER && !s->sealed)
        return 0;
    return i;
}

/* 0 if name is usable: non-empty, shorter than THA_NAME_MAX, printable
 * ASCII without spaces. */
static int check_name(tha_schema_t *s, const char *what, const char *name) {
    if (!name || !*name)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL, "empty %s name", what);
    size_t n = strnlen(name, THA_NAME_MAX);
    if (n >= THA_NAME_MAX)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "%s name '%.20s...' is too long (max %d characters)",
                         what, name, THA_NAME_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c >= 0x7f)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s name '%s' has a space or non-printable character",
                             what, name);
    }
    return 0;
}

/* "struct emp" -> "emp"; "union u" -> "u"; anything else unchanged. */
static const char *strip_keyword(const char *name, int *keyword) {
    if (keyword)
        *keyword = -1;
    if (strncmp(name, "struct ", 7) == 0) {
        if (keyword)
            *keyword = 0;
        return name + 7;
    }
    if (strncmp(name, "union ", 6) == 0) {
        if (keyword)
            *keyword = 1;
        return name + 6;
    }
    return name;
}

/* ---- canonical spellings ------------------------------------------------ */

/* The rule these enforce: a schema does not depend on how a declaration was
 * spelled. Python writes what cffi prints ("int(*)(int, char *)", "uint32_t")
 * and C callers write what they like ("int (*)(int,char*)", "unsigned int");
 * both are stored in one form, so byte form and fingerprint agree. */

static int ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '$';
}

/* Copies in to out (as long as in, with the NUL), dropping whitespace except
 * one space between two identifier characters: "int (*) (int, char *)" ->
 * "int(*)(int,char*)", " unsigned  int " -> "unsigned int". */
static void squeeze_spaces(const char *in, char *out) {
    size_t n = 0;
    int gap = 0;
    for (; *in; in++) {
        char c = *in;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
            c == '\f') {
            gap = 1;
            continue;
        }
        if (gap && n > 0 && ident_char(out[n - 1]) && ident_char(c))
            out[n++] = ' ';
        gap = 0;
        out[n++] = c;
    }
    out[n] = 0;
}

/* A function pointer type in one spelling: squeezed, and an empty parameter
 * list written "(void)" (cffi prints "void(*)()" for "void (*)(void)").
 * -1 if the result does not fit cap bytes with its NUL. */
static int canonical_sig(const char *in, char *out, size_t cap) {
    char tmp[SIG_MAX];
    if (strnlen(in, sizeof tmp) >= sizeof tmp)
        return -1;
    squeeze_spaces(in, tmp);
    size_t n = 0;
    for (const char *p = tmp; *p; p++) {
        const char *add = (p[0] == '(' && p[1] == ')') ? "(void" : NULL;
        size_t k = add ? 5 : 1;
        if (n + k >= cap)
            return -1;
        memcpy(out + n, add ? add : p, k);
        n += k;
    }
    out[n] = 0;
    return 0;
}

static uint32_t int_prim(size_t size, int is_signed) {
    switch (size) {
    case 1: return is_signed ? THA_T_I8 : THA_T_U8;
    case 2: return is_signed ? THA_T_I16 : THA_T_U16;
    case 4: return is_signed ? THA_T_I32 : THA_T_U32;
    default: return is_signed ? THA_T_I64 : THA_T_U64;
    }
}

/* C spellings of the fixed-width primitives, sized by this compiler (the
 * same ABI cffi lays structs out with); Python's Schema maps the same names
 * by size and signedness. */
static const struct {
    const char *name;
    size_t size;
    int is_signed;
} prim_aliases[] = {
    {"signed char", 1, 1}, {"unsigned char", 1, 0},
    {"short", sizeof(short), 1}, {"short int", sizeof(short), 1},
    {"signed short", sizeof(short), 1}, {"signed short int", sizeof(short), 1},
    {"unsigned short", sizeof(short), 0}, {"unsigned short int", sizeof(short), 0},
    {"int", sizeof(int), 1}, {"signed", sizeof(int), 1},
    {"signed int", sizeof(int), 1}, {"unsigned", sizeof(int), 0},
    {"unsigned int", sizeof(int), 0},
    {"long", sizeof(long), 1}, {"long int", sizeof(long), 1},
    {"signed long", sizeof(long), 1}, {"signed long int", sizeof(long), 1},
    {"unsigned long", sizeof(long), 0}, {"unsigned long int", sizeof(long), 0},
    {"long long", sizeof(long long), 1}, {"long long int", sizeof(long long), 1},
    {"signed long long", sizeof(long long), 1},
    {"signed long long int", sizeof(long long), 1},
    {"unsigned long long", sizeof(long long), 0},
    {"unsigned long long int", sizeof(long long), 0},
    {"size_t", sizeof(size_t), 0}, {"ssize_t", sizeof(size_t), 1},
    {"ptrdiff_t", sizeof(ptrdiff_t), 1}, {"intptr_t", sizeof(intptr_t), 1},
    {"uintptr_t", sizeof(uintptr_t), 0},
};

/* The canonical name of a pointer target spelled as a C primitive, or name
 * itself: "unsigned int" -> "uint32_t", "_Bool" -> "bool". */
static const char *canonical_target(const char *name) {
    if (strcmp(name, "_Bool") == 0)
        return prims[THA_T_BOOL].name;
    for (size_t i = 0; i < sizeof prim_aliases / sizeof prim_aliases[0]; i++)
        if (strcmp(name, prim_aliases[i].name) == 0)
            return prims[int_prim(prim_aliases[i].size, prim_aliases[i].is_signed)].name;
    return name;
}

/* ---- registration ------------------------------------------------------- */

int tha_schema_add_struct(tha_schema_t *s, const char *name, size_t size,
                          size_t align, int is_union, uint32_t *type_id) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add struct %s",
                         name ? name : "(null)");
    int rc = check_name(s, "type", name);
    if (rc)
        return rc;
    const char *kwd = is_union ? "union" : "struct";
    if (find_type(s, name))
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "type '%s' is already registered", name);
    if (size == 0)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA, "%s %s: size 0",
                         kwd, name);
    if (size > UINT32_MAX)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: size %zu is too large", kwd, name, size);
    if (align == 0 || (align & (align - 1)) != 0)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: alignment %zu is not a power of two", kwd,
                         name, align);
    if (align > 8)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: alignment %zu exceeds the heap's 8-byte alignment",
                         kwd, name, align);
    if (size % align != 0)
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s: size %zu is not a multiple of alignment %zu",
                         kwd, name, size, align);
    uint32_t id = s->ntypes < THA_T_FIRST_USER ? THA_T_FIRST_USER : s->ntypes;
    if (id - THA_T_FIRST_USER >= MAX_USER_TYPES)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "too many types (max %u)", MAX_USER_TYPES);
    if (grow_types(s, id + 1) != 0)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    tha__type_t *t = &s->types[id];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->id = id;
    t->is_union = is_union ? 1 : 0;
    t->defined = 1;
    t->size = size;
    t->align = align;
    t->handle = s->nhandles;
    s->handles[s->nhandles++] = id;
    s->ntypes = id + 1;
    if (s->nhash && 2 * (size_t)s->ntypes + 2 <= s->nhash_cap)
        hash_put(s, id);
    else
        hash_rebuild(s, s->ntypes);
    if (type_id)
        *type_id = THA_T_HANDLE + t->handle;
    return 0;
}

static void fix_pub(tha__type_t *t) {
    for (uint32_t i = 0; i < t->nfields; i++) {
        tha__field_t *f = &t->fields[i];
        f->pub.name = f->name;
        f->pub.target = f->target;
        f->pub.sig = f->sig;
    }
}

/* Bytes of one element of a field, when known without other types. */
static uint64_t direct_elem_size(const tha__field_t *f) {
    switch (f->pub.kind) {
    case THA_K_SCALAR:
    case THA_K_BITS: return prims[f->pub.prim].size;
    case THA_K_PTR:
    case THA_K_FUNC: return 8;
    default: return 0;
    }
}

int tha_schema_add_field(tha_schema_t *s, uint32_t type_id,
                         const tha_field_t *field) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add fields");
    if (!field)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL, "field is NULL");
    uint32_t ix = resolve_id(s, type_id);
    if (!ix)
        return tha__fail(s->err, sizeof s->err, THA_ENOTFOUND,
                         "no type with id %u (pass the id tha_schema_add_struct returned)",
                         type_id);
    tha__type_t *t = &s->types[ix];
    if (t->is_prim)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "type %s is a primitive and has no fields", t->name);
    int rc = check_name(s, "field", field->name);
    if (rc)
        return rc;
    const char *fname = field->name;
    /* (deserialize checks a whole type's names at once, sorted) */
    for (uint32_t i = 0; !s->bulk && i < t->nfields; i++)
        if (strcmp(t->fields[i].name, fname) == 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s: duplicate field '%s'", kw(t), t->name, fname);
    if (t->nfields >= MAX_FIELDS)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "%s %s: too many fields", kw(t), t->name);

    tha__field_t nf;
    memset(&nf, 0, sizeof nf);
    snprintf(nf.name, sizeof nf.name, "%s", fname);
    nf.pub.offset = field->offset;
    nf.pub.kind = field->kind;
    uint32_t kind = field->kind;
    if (kind < THA_K_SCALAR || kind > THA_K_BITS)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "%s %s field %s: invalid kind %u", kw(t), t->name,
                         fname, kind);
    if (kind == THA_K_SCALAR || kind == THA_K_BITS) {
        if (!is_value_prim(field->prim))
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: prim %u is not a primitive value type",
                             kw(t), t->name, fname, field->prim);
        nf.pub.prim = field->prim;
    }
    if (kind == THA_K_PTR || kind == THA_K_STRUCT) {
        const char *tg = field->target;
        if (!tg || !*tg)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: %s field needs a target type",
                             kw(t), t->name, fname, kind_name(kind));
        char squeezed[SIG_MAX];
        if (strnlen(tg, SIG_MAX) < SIG_MAX) {
            squeeze_spaces(tg, squeezed);
            tg = strip_keyword(squeezed, NULL);
            if (kind == THA_K_PTR)
                tg = canonical_target(tg);
        }
        rc = check_name(s, "target", tg);
        if (rc)
            return rc;
        snprintf(nf.target, sizeof nf.target, "%s", tg);
    }
    if (kind == THA_K_FUNC && field->sig) {
        size_t n = strnlen(field->sig, SIG_MAX);
        if (n >= SIG_MAX)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: signature longer than %u characters",
                             kw(t), t->name, fname, SIG_MAX - 1);
        if (canonical_sig(field->sig, nf.sig, sizeof nf.sig) != 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: signature longer than %u characters",
                             kw(t), t->name, fname, SIG_MAX - 1);
        if (strcmp(nf.sig, "void(*)(void)") == 0)
            nf.sig[0] = 0;
    }
    if (kind == THA_K_BITS) {
        uint32_t shift = field->bits[0], width = field->bits[1];
        uint32_t ubits = prims[field->prim].size * 8;
        if (width == 0 || width > ubits || shift >= ubits || shift + width > ubits)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: bits %u:%u do not fit a %s",
                             kw(t), t->name, fname, shift, width,
                             prims[field->prim].name);
        nf.pub.bits[0] = shift;
        nf.pub.bits[1] = width;
        if (field->dims[0] != 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: arrays of bitfields are not supported",
                             kw(t), t->name, fname);
    }
    /* dims: 0-terminated, product fits uint32 */
    uint64_t count = 1;
    int ended = 0;
    for (int d = 0; d < THA_MAX_DIMS; d++) {
        uint32_t v = field->dims[d];
        if (v == 0) {
            ended = 1;
            continue;
        }
        if (ended)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: dims must be 0-terminated",
                             kw(t), t->name, fname);
        count *= v;
        if (count > UINT32_MAX)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: dims overflow", kw(t), t->name,
                             fname);
        nf.pub.dims[d] = v;
    }
    nf.count = count;
    nf.elem_size = direct_elem_size(&nf);
    if (nf.elem_size) {
        uint64_t bytes = nf.elem_size * count;
        if (bytes > UINT32_MAX)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: dims overflow", kw(t), t->name,
                             fname);
        if ((uint64_t)nf.pub.offset + bytes > t->size)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: offset %u + %llu bytes exceeds size %llu",
                             kw(t), t->name, fname, nf.pub.offset,
                             (unsigned long long)bytes,
                             (unsigned long long)t->size);
    } else if (nf.pub.offset >= t->size) {
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: offset %u is outside size %llu",
                         kw(t), t->name, fname, nf.pub.offset,
                         (unsigned long long)t->size);
    }

    if (t->nfields == t->fields_cap) {
        uint32_t cap = t->fields_cap ? t->fields_cap * 2 : 8;
        tha__field_t *nfs = realloc(t->fields, (size_t)cap * sizeof *nfs);
        if (!nfs)
            return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
        t->fields = nfs;
        t->fields_cap = cap;
        fix_pub(t); /* the strings moved with the array */
    }
    tha__field_t *to = &t->fields[t->nfields++];
    *to = nf;
    to->pub.name = to->name;
    to->pub.target = to->target;
    to->pub.sig = to->sig;
    return 0;
}

int tha_schema_add_func(tha_schema_t *s, const char *name, void (*fn)(void)) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add function %s",
                         name ? name : "(null)");
    int rc = check_name(s, "function", name);
    if (rc)
        return rc;
    if (find_func(s, name))
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "function '%s' is already declared", name);
    if (fn && tha__schema_func_id(s, fn) >= 0)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "function '%s': address already bound to '%s'", name,
                         s->funcs[tha__schema_func_id(s, fn)].name);
    if (s->nfuncs >= MAX_FUNCS)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "too many functions (max %u)", MAX_FUNCS);
    if (s->nfuncs == s->funcs_cap) {
        uint32_t cap = s->funcs_cap ? s->funcs_cap * 2 : 8;
        tha__func_t *f = realloc(s->funcs, (size_t)cap * sizeof *f);
        if (!f)
            return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
        s->funcs = f;
        s->funcs_cap = cap;
    }
    tha__func_t *f = &s->funcs[s->nfuncs++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->fn = fn;
    return 0;
}

int tha_schema_bind_func(tha_schema_t *s, const char *name, void (*fn)(void)) {
    if (!s)
        return THA_EINVAL;
    if (!name)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL, "empty function name");
    tha__func_t *f = find_func(s, name);
    if (!f)
        return tha__fail(s->err, sizeof s->err, THA_ENOTFOUND,
                         "function '%s' was never declared", name);
    if (fn) {
        int64_t other = tha__schema_func_id(s, fn);
        if (other >= 0 && &s->funcs[other] != f)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "function '%s': address already bound to '%s'",
                             name, s->funcs[other].name);
    }
    f->fn = fn;
    return 0;
}

int64_t tha__schema_func_id(const tha_schema_t *s, void (*fn)(void)) {
    if (!s || !fn)
        return -1;
    for (uint32_t i = 0; i < s->nfuncs; i++)
        if (s->funcs[i].fn == fn)
            return (int64_t)i;
    return -1;
}

/* ---- canonical form and fingerprint ------------------------------------- */

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

static void write_schema(const tha_schema_t *s, writer_t *w) {
    uint32_t nuser = s->ntypes > THA_T_FIRST_USER ? s->ntypes - THA_T_FIRST_USER : 0;
    w_u32(w, SCHEMA_MAGIC);
    w_u32(w, SCHEMA_FORMAT);
    w_u32(w, nuser);
    w_u32(w, s->nfuncs);
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
        }
    }
    for (uint32_t i = 0; i < s->nfuncs; i++)
        w_str(w, s->funcs[i].name);
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

uint64_t tha_schema_fingerprint(const tha_schema_t *s) {
    return (s && s->sealed) ? s->fingerprint : 0;
}

/* ---- sealing ------------------------------------------------------------ */

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
    const char *k = kw(t);
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
                         f->name, kw(tt), tt->name);
    if (tt->seal_state == 0)
        *descend = tt;
    return 0;
}

/* Field f of t once the type it holds by value (if any) is sealed. */
static int field_post(tha_schema_t *s, tha__type_t *t, tha__field_t *f) {
    const char *k = kw(t);
    uint32_t kind = f->pub.kind;
    if (kind == THA_K_STRUCT) {
        const tha__type_t *tt = &s->types[f->target_id];
        f->elem_size = tt->size;
        if (t->is_union && tt->nslots > 0)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "union %s field %s: unions holding pointers cannot be mirrored (%s %s holds pointers)",
                             t->name, f->name, kw(tt), tt->name);
    } else {
        f->elem_size = direct_elem_size(f);
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
    const char *k = kw(t);
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
                t->slots[m++].is_func = kind == THA_K_FUNC;
            }
        } else if (kind == THA_K_STRUCT) {
            const tha__type_t *tt = &s->types[f->target_id];
            for (uint64_t e = 0; e < f->count && tt->nslots; e++)
                for (uint32_t j = 0; j < tt->nslots; j++) {
                    t->slots[m].offset = (uint32_t)(f->pub.offset + e * f->elem_size +
                                                    tt->slots[j].offset);
                    t->slots[m++].is_func = tt->slots[j].is_func;
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

/* One canonical schema: the same structs give the same ids, byte form and
 * fingerprint in whatever order they were registered. Sealing sorts the
 * user types (cmp_canonical) and renumbers them; nothing refers to a type
 * by id before seal except registration handles, which follow their type
 * here, so there is nothing else to rewrite (field targets are names,
 * resolved after this; relocation tables are built after this). Functions
 * are sorted by name: their ids travel in function pointer slots. */
static void canonical_order(tha_schema_t *s) {
    if (s->ntypes > THA_T_FIRST_USER + 1)
        qsort(s->types + THA_T_FIRST_USER, s->ntypes - THA_T_FIRST_USER,
              sizeof *s->types, cmp_canonical);
    for (uint32_t id = THA_T_FIRST_USER; id < s->ntypes; id++) {
        s->types[id].id = id;
        s->handles[s->types[id].handle] = id;
    }
    hash_rebuild(s, s->ntypes); /* the indexes moved */
    if (s->nfuncs > 1)
        qsort(s->funcs, s->nfuncs, sizeof *s->funcs, cmp_func);
}

int tha_schema_seal(tha_schema_t *s) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return 0;
    canonical_order(s);
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
    writer_t w = {.hashing = 1, .hash = 0xcbf29ce484222325ull};
    write_schema(s, &w);
    s->fingerprint = w.hash;
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
                     kw(t), t->name, (unsigned long long)t->size,
                     (unsigned long long)capacity);
}


/* ---- deserialization ---------------------------------------------------- */

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
                           "schema blob: %s %s: duplicate field '%s'", kw(t),
                           t->name, v[i]);
    free(v);
    return rc;
}

#define TYPE_MIN_BYTES 26u  /* name len, is_union, size, align, nfields */
#define FIELD_MIN_BYTES 42u /* empty strings, all numbers */

static int deser(const uint8_t *b, size_t len, tha_schema_t *s, char *msg,
                 size_t msgcap) {
    reader_t r = {.p = b, .len = len};
    char name[THA_NAME_MAX], target[THA_NAME_MAX], sig[SIG_MAX];
    if (len < 16)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob truncated: %zu bytes, header needs 16", len);
    uint32_t magic = r_u32(&r), version = r_u32(&r);
    if (magic != SCHEMA_MAGIC)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: bad magic 0x%08x", magic);
    if (version != SCHEMA_FORMAT)
        return tha__fail(msg, msgcap, THA_EVERSION,
                         "schema blob: format version %u, this build reads %u",
                         version, SCHEMA_FORMAT);
    uint32_t ntypes = r_u32(&r), nfuncs = r_u32(&r);
    size_t rest = len - r.pos;
    if (ntypes > MAX_USER_TYPES || ntypes > rest / TYPE_MIN_BYTES)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: absurd type count %u for %zu bytes",
                         ntypes, len);
    if (nfuncs > MAX_FUNCS || nfuncs > rest / 2)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: absurd function count %u for %zu bytes",
                         nfuncs, len);
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
        if (nfields > MAX_FIELDS || nfields > (len - r.pos) / FIELD_MIN_BYTES)
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
#undef STR
#undef TRUNC
    if (r.pos != len)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob: %zu trailing bytes", len - r.pos);
    int rc = tha_schema_seal(s);
    if (rc)
        return tha__fail(msg, msgcap, rc, "schema blob: %s", s->err);
    /* The blob must be the canonical form of what it rebuilt. */
    writer_t w = {0};
    write_schema(s, &w);
    if (w.len != len)
        return tha__fail(msg, msgcap, THA_EFRAME,
                         "schema blob is not in canonical form");
    uint8_t *tmp = malloc(len);
    if (!tmp)
        return tha__fail(msg, msgcap, THA_ENOMEM, "out of memory");
    writer_t w2 = {.buf = tmp, .cap = len};
    write_schema(s, &w2);
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
    const char *k = kw(t);
    if (strcmp(x->name, y->name) != 0)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s: field %u is '%s' vs '%s'",
                         k, t->name, (unsigned)(x - t->fields), x->name, y->name);
    if (x->pub.offset != y->pub.offset)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s field %s: offset %u vs %u",
                         k, t->name, x->name, x->pub.offset, y->pub.offset);
    if (x->pub.kind != y->pub.kind)
        return tha__fail(msg, cap, THA_EMISMATCH,
                         "%s %s field %s: field kind %s vs %s", k, t->name,
                         x->name, kind_name(x->pub.kind), kind_name(y->pub.kind));
    if (x->pub.prim != y->pub.prim)
        return tha__fail(msg, cap, THA_EMISMATCH, "%s %s field %s: prim %s vs %s",
                         k, t->name, x->name, prim_name(x->pub.prim),
                         prim_name(y->pub.prim));
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
                                 "only one side has %s %s (type %u)", kw(t),
                                 t->name, id);
            continue;
        }
        if (strcmp(x->name, y->name) != 0 || x->is_union != y->is_union)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "type %u: %s %s vs %s %s", id, kw(x), x->name,
                             kw(y), y->name);
        uint32_t nf = x->nfields < y->nfields ? x->nfields : y->nfields;
        for (uint32_t i = 0; i < nf; i++) {
            int rc = cmp_field(x, &x->fields[i], &y->fields[i], msg, msgcap);
            if (rc)
                return rc;
        }
        if (x->nfields != y->nfields)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: %u fields vs %u", kw(x), x->name,
                             x->nfields, y->nfields);
        if (x->size != y->size)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: size %llu vs %llu", kw(x), x->name,
                             (unsigned long long)x->size,
                             (unsigned long long)y->size);
        if (x->align != y->align)
            return tha__fail(msg, msgcap, THA_EMISMATCH,
                             "%s %s: align %llu vs %llu", kw(x), x->name,
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
    uint32_t ix = resolve_id(s, id);
    if (!ix)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type with id %u", id);
    const tha__type_t *t = &s->types[ix];
    out->name = t->name;
    out->id = public_id(s, t);
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
    const char *bare = strip_keyword(name, &keyword);
    const tha__type_t *t = find_type(s, bare);
    if (!t || (keyword >= 0 && (t->is_prim || (int)t->is_union != keyword)))
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type named '%s'", name);
    if (id)
        *id = public_id(s, t);
    return 0;
}

int tha_schema_field_info(const tha_schema_t *s, uint32_t id, uint32_t i,
                          tha_field_t *out) {
    if (!s || !out)
        return THA_EINVAL;
    uint32_t ix = resolve_id(s, id);
    if (!ix)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "no type with id %u", id);
    const tha__type_t *t = &s->types[ix];
    if (i >= t->nfields)
        return tha__fail(((tha_schema_t *)s)->err, sizeof s->err, THA_ENOTFOUND,
                         "%s %s has no field %u (%u fields)", kw(t), t->name, i,
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
        const tha__type_t *tt = find_type(s, f->target);
        return tt ? tt->size : 0;
    }
    return direct_elem_size(f);
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
                      kw(t), t->name);
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
        const tha__type_t *tt = find_type(s, hit->target);
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
    sb_printf(&b, "%s %s", kw(t), t->name);
    if (off >= t->size) {
        sb_printf(&b, " (offset %llu beyond size %llu)", (unsigned long long)off,
                  (unsigned long long)t->size);
        return;
    }
    describe_in(s, t, off, &b, 0);
}

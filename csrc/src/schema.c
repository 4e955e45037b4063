/* schema.c — the schema: registered struct/union layouts, primitive types and
 * the function-name registry. Owns the schema's lifetime, lookup by name
 * and by id or handle, the canonical spellings of targets and signatures,
 * and registration with its validation. The other schema files:
 * schema_info.c (introspection, compare, field paths), schema_bytes.c (the
 * canonical byte form), schema_seal.c (seal), schema_parse.c (deserialize).
 */
#include "schema_priv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- primitives --------------------------------------------------------- */

static const struct {
    const char *name;
    uint32_t size;
} prims[THA_T_RAW + 1] = {
    [THA_T_CHAR] = {"char", 1},     [THA_T_I8] = {"int8_t", 1},
    [THA_T_U8] = {"uint8_t", 1},    [THA_T_I16] = {"int16_t", 2},
    [THA_T_U16] = {"uint16_t", 2},  [THA_T_I32] = {"int32_t", 4},
    [THA_T_U32] = {"uint32_t", 4},  [THA_T_I64] = {"int64_t", 8},
    [THA_T_U64] = {"uint64_t", 8},  [THA_T_F32] = {"float", 4},
    [THA_T_F64] = {"double", 8},    [THA_T_BOOL] = {"bool", 1},
    [THA_T_VOID] = {"void", 0},
    [THA_T_RAW] = {"tha_raw", 1}, /* untyped bytes: allocations only */
};

static int is_value_prim(uint32_t p) { return p >= THA_T_CHAR && p <= THA_T_BOOL; }

const char *tha__schema_kind_name(uint32_t k) {
    switch (k) {
    case THA_K_SCALAR: return "scalar";
    case THA_K_STRUCT: return "struct";
    case THA_K_PTR: return "pointer";
    case THA_K_FUNC: return "function pointer";
    case THA_K_BITS: return "bitfield";
    default: return "unknown";
    }
}

const char *tha__schema_prim_name(uint32_t p) {
    return (p >= THA_T_CHAR && p <= THA_T_RAW) ? prims[p].name : "none";
}

/* ---- lifetime ----------------------------------------------------------- */

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
    for (uint32_t p = THA_T_CHAR; p <= THA_T_RAW; p++) {
        tha__type_t *t = &s->types[p];
        snprintf(t->name, sizeof t->name, "%s", prims[p].name);
        t->is_prim = 1;
        t->defined = 1;
        t->size = prims[p].size;
        t->align = prims[p].size ? prims[p].size : 1;
        t->seal_state = 2;
    }
    s->ntypes = THA_T_RAW + 1;
    s->refs = 1;
    tha__schema_hash_rebuild(s, THA_T_FIRST_USER);
    *out = s;
    return 0;
}

static void free_schema(tha_schema_t *s) {
    for (uint32_t i = 0; i < s->ntypes; i++) {
        free(s->types[i].fields);
        free(s->types[i].slots);
        free(s->types[i].slot_decl);
        free(s->types[i].places);
        free(s->types[i].holes);
    }
    free(s->types);
    free(s->handles);
    free(s->funcs);
    free(s->externs);
    free(s->ext_by_addr);
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
void tha__schema_hash_rebuild(tha_schema_t *s, uint32_t need) {
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

tha__type_t *tha__schema_find_type(const tha_schema_t *s, const char *name) {
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
uint32_t tha__schema_resolve_id(const tha_schema_t *s, uint32_t id) {
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
uint32_t tha__schema_public_id(const tha_schema_t *s, const tha__type_t *t) {
    if (t->is_prim || s->sealed)
        return t->id;
    return THA_T_HANDLE + t->handle;
}

uint32_t tha_schema_type_id(const tha_schema_t *s, uint32_t id) {
    if (!s)
        return 0;
    uint32_t i = tha__schema_resolve_id(s, id);
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
const char *tha__schema_strip_keyword(const char *name, int *keyword) {
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

/* A type name in one spelling: squeezed, its qualifiers dropped (they are
 * no part of a layout: "const char * const" -> "char*", as cffi reads
 * it). in at most THA__SIG_MAX bytes with the NUL; out as large. */
static void squeeze_type(const char *in, char *out) {
    char tmp[THA__SIG_MAX];
    squeeze_spaces(in, tmp);
    size_t n = 0;
    for (const char *p = tmp; *p;) {
        if (!ident_char(*p)) {
            out[n++] = *p++;
            continue;
        }
        const char *e = p;
        while (ident_char(*e))
            e++;
        size_t k = (size_t)(e - p);
        static const char *const quals[] = {"const", "volatile", "restrict",
                                            "__restrict", "__restrict__"};
        int qual = 0;
        for (size_t i = 0; i < sizeof quals / sizeof quals[0]; i++)
            qual |= strlen(quals[i]) == k && memcmp(p, quals[i], k) == 0;
        if (!qual) {
            if (n && ident_char(out[n - 1]))
                out[n++] = ' ';
            memcpy(out + n, p, k);
            n += k;
        }
        p = *e == ' ' ? e + 1 : e; /* squeezed: a space only between names */
    }
    out[n] = 0;
}

/* A function pointer type in one spelling: squeezed, and an empty parameter
 * list written "(void)" (cffi prints "void(*)()" for "void (*)(void)").
 * -1 if the result does not fit cap bytes with its NUL. */
static int canonical_sig(const char *in, char *out, size_t cap) {
    char tmp[THA__SIG_MAX];
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

/* Pointer types. A pointer field may target a pointer ("struct emp **",
 * "char **"): it then points at an array of pointer words, an allocation
 * of the implicit pointer type named by its target's canonical name and
 * its stars, no space ("emp*", "char*", "emp**"). That type is exactly one
 * data pointer to the target one star less, in a field "ptr" at offset 0,
 * 8 bytes; add_field registers it on first use (and the one it points to;
 * a schema read from bytes carries its own) and seal refuses any type so named that is not exactly that shape, so a
 * schema that says "emp*" means one thing wherever it was built. */

/* name (spaces squeezed, keyword stripped) as a pointer type's canonical
 * name in out: 1 if it names one, 0 if it has no star, -1 if it is no
 * such name (a star before the end, nothing before the stars), -2 if that
 * name is longer than THA_NAME_MAX - 1. */
static int pointer_name(const char *name, char *out, size_t cap) {
    size_t n = strlen(name), stars = 0;
    while (stars < n && name[n - 1 - stars] == '*')
        stars++;
    if (!stars)
        return 0;
    char base[THA_NAME_MAX];
    size_t bn = n - stars;
    if (bn == 0 || memchr(name, '*', bn))
        return -1;
    if (bn >= sizeof base)
        return -2;
    memcpy(base, name, bn);
    base[bn] = 0;
    int w = snprintf(out, cap, "%s%.*s", canonical_target(base), (int)stars, name + bn);
    return w > 0 && (size_t)w < cap ? 1 : -2;
}

const char *tha__schema_canonical_name(const char *name, char *out, size_t cap,
                                       int *keyword) {
    char squeezed[THA__SIG_MAX];
    if (strnlen(name, sizeof squeezed) >= sizeof squeezed)
        return name;
    squeeze_type(name, squeezed);
    const char *bare = tha__schema_strip_keyword(squeezed, keyword);
    int rc = pointer_name(bare, out, cap);
    if (rc == 0)
        snprintf(out, cap, "%s", canonical_target(bare));
    else if (rc < 0)
        snprintf(out, cap, "%s", bare);
    return out;
}

static int add_struct(tha_schema_t *s, const char *name, size_t size, size_t align,
                      int is_union, uint32_t *type_id);
static int add_field(tha_schema_t *s, uint32_t type_id, const tha_field_t *field);

/* The implicit pointer type named name ("emp*"), registered if new (with
 * the ones it points through). */
static int ensure_pointer_type(tha_schema_t *s, const char *name) {
    if (tha__schema_find_type(s, name))
        return 0;
    uint32_t id;
    int rc = add_struct(s, name, sizeof(void *), _Alignof(void *), 0, &id);
    if (rc)
        return rc;
    char inner[THA_NAME_MAX];
    snprintf(inner, sizeof inner, "%.*s", (int)strlen(name) - 1, name);
    tha_field_t f = {.name = "ptr", .offset = 0, .kind = THA_K_PTR, .target = inner};
    return add_field(s, id, &f);
}

int tha__schema_pointer_shape(tha_schema_t *s, const tha__type_t *t) {
    size_t n = strlen(t->name);
    if (!t->is_ptr)
        return 0;
    const tha__field_t *f = t->nfields == 1 ? &t->fields[0] : NULL;
    int ok = f && !t->is_union && t->size == 8 && t->align == 8 &&
             strcmp(f->name, "ptr") == 0 && f->pub.offset == 0 &&
             f->pub.kind == THA_K_PTR && f->pub.dims[0] == 0 && f->pub.tag_mask == 0 &&
             strlen(f->target) == n - 1 && strncmp(f->target, t->name, n - 1) == 0;
    if (ok)
        return 0;
    return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                     "type %s: a name ending in '*' is the implicit pointer type, "
                     "exactly one pointer to %.*s (a field 'ptr' at offset 0, 8 "
                     "bytes); this one is not: name a pointer field's target "
                     "'%.*s *' instead of registering it", t->name, (int)n - 1,
                     t->name, (int)n - 1, t->name);
}

/* ---- registration ------------------------------------------------------- */

/* Every add that fails is remembered (the first one's message), so that
 * seal refuses a schema a caller went on building after an ignored error:
 * a missing field would otherwise travel as raw bytes. */
static int added(tha_schema_t *s, int rc) {
    if (rc && s && !s->add_failed) {
        s->add_failed = rc;
        snprintf(s->add_err, sizeof s->add_err, "%s", s->err);
    }
    return rc;
}

void tha_schema_clear_add_error(tha_schema_t *s) {
    if (s) s->add_failed = 0;
}

static int add_func(tha_schema_t *s, const char *name, void (*fn)(void));
static int add_extern(tha_schema_t *s, const char *name, size_t size, const void *addr);

int tha_schema_add_struct(tha_schema_t *s, const char *name, size_t size,
                          size_t align, int is_union, uint32_t *type_id) {
    return added(s, add_struct(s, name, size, align, is_union, type_id));
}

int tha_schema_add_field(tha_schema_t *s, uint32_t type_id, const tha_field_t *field) {
    return added(s, add_field(s, type_id, field));
}

int tha_schema_add_func(tha_schema_t *s, const char *name, void (*fn)(void)) {
    return added(s, add_func(s, name, fn));
}

int tha_schema_add_extern(tha_schema_t *s, const char *name, size_t size,
                          const void *addr) {
    return added(s, add_extern(s, name, size, addr));
}

static int add_struct(tha_schema_t *s, const char *name, size_t size, size_t align,
                      int is_union, uint32_t *type_id) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add struct %s",
                         name ? name : "(null)");
    int rc = check_name(s, "type", name);
    if (rc)
        return rc;
    char canon[THA_NAME_MAX];
    if (strchr(name, '*') &&
        (pointer_name(name, canon, sizeof canon) != 1 || strcmp(canon, name) != 0))
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "type name '%s': a star may only end the name of a pointer "
                         "type, after its target's canonical name ('emp*')", name);
    const char *kwd = is_union ? "union" : "struct";
    if (tha__schema_find_type(s, name))
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
    if (id - THA_T_FIRST_USER >= THA_MAX_USER_TYPES)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "too many types (max %u)", THA_MAX_USER_TYPES);
    if (grow_types(s, id + 1) != 0)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    tha__type_t *t = &s->types[id];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->id = id;
    t->is_union = is_union ? 1 : 0;
    t->is_ptr = strchr(name, '*') != NULL; /* a trailing run, checked above */
    t->defined = 1;
    t->size = size;
    t->align = align;
    t->handle = s->nhandles;
    s->handles[s->nhandles++] = id;
    s->ntypes = id + 1;
    if (s->nhash && 2 * (size_t)s->ntypes + 2 <= s->nhash_cap)
        hash_put(s, id);
    else
        tha__schema_hash_rebuild(s, s->ntypes);
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
uint64_t tha__field_elem_size(const tha__field_t *f) {
    switch (f->pub.kind) {
    case THA_K_SCALAR:
    case THA_K_BITS: return prims[f->pub.prim].size;
    case THA_K_PTR:
    case THA_K_FUNC: return 8;
    default: return 0;
    }
}

static int add_field(tha_schema_t *s, uint32_t type_id, const tha_field_t *field) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add fields");
    if (!field)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL, "field is NULL");
    uint32_t ix = tha__schema_resolve_id(s, type_id);
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
                             "%s %s: duplicate field '%s'", tha__schema_kw(t), t->name, fname);
    if (t->nfields >= THA_MAX_FIELDS)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "%s %s: too many fields", tha__schema_kw(t), t->name);

    tha__field_t nf;
    memset(&nf, 0, sizeof nf);
    snprintf(nf.name, sizeof nf.name, "%s", fname);
    nf.pub.offset = field->offset;
    nf.pub.kind = field->kind;
    uint32_t kind = field->kind;
    if (kind < THA_K_SCALAR || kind > THA_K_BITS)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "%s %s field %s: invalid kind %u", tha__schema_kw(t), t->name,
                         fname, kind);
    if (kind == THA_K_SCALAR || kind == THA_K_BITS) {
        if (!is_value_prim(field->prim))
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: prim %u is not a primitive value type",
                             tha__schema_kw(t), t->name, fname, field->prim);
        nf.pub.prim = field->prim;
    }
    if (kind == THA_K_PTR || kind == THA_K_STRUCT) {
        const char *tg = field->target;
        if (!tg || !*tg)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: %s field needs a target type",
                             tha__schema_kw(t), t->name, fname, tha__schema_kind_name(kind));
        char squeezed[THA__SIG_MAX], ptr[THA_NAME_MAX];
        int stars = 0;
        if (strnlen(tg, THA__SIG_MAX) < THA__SIG_MAX) {
            squeeze_type(tg, squeezed);
            tg = tha__schema_strip_keyword(squeezed, NULL);
            stars = pointer_name(tg, ptr, sizeof ptr);
            if (stars > 0)
                tg = ptr;
            else if (kind == THA_K_PTR)
                tg = canonical_target(tg);
        }
        if (stars && kind == THA_K_STRUCT)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: holds '%s' by value: a field holding a "
                             "pointer is a pointer field", tha__schema_kw(t), t->name,
                             fname, field->target);
        if (stars == -2)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: target '%s': the pointer type it needs "
                             "would have a name longer than %d characters (its "
                             "target's name and one star per level)", tha__schema_kw(t),
                             t->name, fname, field->target, THA_NAME_MAX - 1);
        if (stars < 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: target '%s' is no type name (a pointer "
                             "target is a type followed by stars: 'emp *')",
                             tha__schema_kw(t), t->name, fname, field->target);
        rc = check_name(s, "target", tg);
        if (rc)
            return rc;
        /* a byte form carries its pointer types (seal checks they are there
         * and exact); registering them may grow s->types: t moves */
        if (stars > 0 && !s->bulk) {
            rc = ensure_pointer_type(s, tg);
            if (rc)
                return rc;
            t = &s->types[ix];
        }
        snprintf(nf.target, sizeof nf.target, "%.*s", THA_NAME_MAX - 1, tg); /* checked */
    }
    if (field->tag_mask) {
        if (kind != THA_K_PTR)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: tag mask 0x%x on a %s field: only data "
                             "pointers have tag bits", tha__schema_kw(t), t->name, fname,
                             field->tag_mask, tha__schema_kind_name(kind));
        if (field->tag_mask & ~THA__TAG_BITS)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: tag mask 0x%x has bits outside 0x%x "
                             "(allocations are 8-byte aligned: only a pointer's 3 low "
                             "bits are free)", tha__schema_kw(t), t->name, fname,
                             field->tag_mask, THA__TAG_BITS);
        nf.pub.tag_mask = field->tag_mask;
    }
    if (kind == THA_K_FUNC && field->sig) {
        size_t n = strnlen(field->sig, THA__SIG_MAX);
        if (n >= THA__SIG_MAX)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: signature longer than %u characters",
                             tha__schema_kw(t), t->name, fname, THA__SIG_MAX - 1);
        if (canonical_sig(field->sig, nf.sig, sizeof nf.sig) != 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: signature longer than %u characters",
                             tha__schema_kw(t), t->name, fname, THA__SIG_MAX - 1);
        if (strcmp(nf.sig, "void(*)(void)") == 0)
            nf.sig[0] = 0;
    }
    if (kind == THA_K_BITS) {
        uint32_t shift = field->bits[0], width = field->bits[1];
        uint32_t ubits = prims[field->prim].size * 8;
        if (width == 0 || width > ubits || shift >= ubits || shift + width > ubits)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: bits %u:%u do not fit a %s",
                             tha__schema_kw(t), t->name, fname, shift, width,
                             prims[field->prim].name);
        nf.pub.bits[0] = shift;
        nf.pub.bits[1] = width;
        if (field->dims[0] != 0)
            return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                             "%s %s field %s: arrays of bitfields are not supported",
                             tha__schema_kw(t), t->name, fname);
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
                             tha__schema_kw(t), t->name, fname);
        count *= v;
        if (count > UINT32_MAX)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: dims overflow", tha__schema_kw(t), t->name,
                             fname);
        nf.pub.dims[d] = v;
    }
    nf.count = count;
    nf.elem_size = tha__field_elem_size(&nf);
    if (nf.elem_size) {
        uint64_t bytes = nf.elem_size * count;
        if (bytes > UINT32_MAX)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: dims overflow", tha__schema_kw(t), t->name,
                             fname);
        if ((uint64_t)nf.pub.offset + bytes > t->size)
            return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                             "%s %s field %s: offset %u + %llu bytes exceeds size %llu",
                             tha__schema_kw(t), t->name, fname, nf.pub.offset,
                             (unsigned long long)bytes,
                             (unsigned long long)t->size);
    } else if (nf.pub.offset >= t->size) {
        return tha__fail(s->err, sizeof s->err, THA_ESCHEMA,
                         "%s %s field %s: offset %u is outside size %llu",
                         tha__schema_kw(t), t->name, fname, nf.pub.offset,
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

static int add_func(tha_schema_t *s, const char *name, void (*fn)(void)) {
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
    if (s->nfuncs >= THA_MAX_FUNCS)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "too many functions (max %u)", THA_MAX_FUNCS);
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

/* ---- data externs -------------------------------------------------------- */

/* Invariant: ext_by_addr holds exactly the bound externs' indexes, in
 * ascending address, their ranges disjoint; every add and bind keeps it,
 * seal (which renumbers) rebuilds it. */

static tha__extern_t *find_extern(const tha_schema_t *s, const char *name) {
    if (s->sealed) { /* sorted by name */
        uint32_t lo = 0, hi = s->nexterns;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            int c = strcmp(s->externs[mid].name, name);
            if (c == 0)
                return &s->externs[mid];
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        return NULL;
    }
    for (uint32_t i = 0; i < s->nexterns; i++)
        if (strcmp(s->externs[i].name, name) == 0)
            return &s->externs[i];
    return NULL;
}

/* Position in ext_by_addr of the first bound extern at or above a. */
static uint32_t ext_lower(const tha_schema_t *s, uintptr_t a) {
    uint32_t lo = 0, hi = s->nbound;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->externs[s->ext_by_addr[mid]].addr < a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The bound extern [a, a + size) overlaps, or NULL. */
static const tha__extern_t *ext_overlap(const tha_schema_t *s, uintptr_t a, uint64_t size) {
    uint32_t pos = ext_lower(s, a);
    if (pos < s->nbound && s->externs[s->ext_by_addr[pos]].addr - a < size)
        return &s->externs[s->ext_by_addr[pos]];
    if (pos > 0) {
        const tha__extern_t *e = &s->externs[s->ext_by_addr[pos - 1]];
        if (a - e->addr < e->size)
            return e;
    }
    return NULL;
}

static void ext_unindex(tha_schema_t *s, uint32_t ix) {
    uint32_t pos = ext_lower(s, s->externs[ix].addr);
    THA_ASSERT(pos < s->nbound && s->ext_by_addr[pos] == ix);
    memmove(s->ext_by_addr + pos, s->ext_by_addr + pos + 1,
            (size_t)(s->nbound - pos - 1) * sizeof *s->ext_by_addr);
    s->nbound--;
}

static void ext_index(tha_schema_t *s, uint32_t ix) {
    uint32_t pos = ext_lower(s, s->externs[ix].addr);
    memmove(s->ext_by_addr + pos + 1, s->ext_by_addr + pos,
            (size_t)(s->nbound - pos) * sizeof *s->ext_by_addr);
    s->ext_by_addr[pos] = ix;
    s->nbound++;
}

typedef struct ext_key {
    uintptr_t addr;
    uint32_t ix;
} ext_key_t;

static int cmp_ext_key(const void *a, const void *b) {
    uintptr_t x = ((const ext_key_t *)a)->addr, y = ((const ext_key_t *)b)->addr;
    return (x > y) - (x < y);
}

int tha__schema_extern_reindex(tha_schema_t *s) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nexterns; i++)
        n += s->externs[i].addr != 0;
    s->nbound = 0;
    if (!n)
        return 0;
    ext_key_t *k = malloc((size_t)n * sizeof *k);
    if (!k)
        return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
    for (uint32_t i = 0, j = 0; i < s->nexterns; i++)
        if (s->externs[i].addr)
            k[j++] = (ext_key_t){s->externs[i].addr, i};
    qsort(k, n, sizeof *k, cmp_ext_key);
    for (uint32_t j = 0; j < n; j++)
        s->ext_by_addr[j] = k[j].ix;
    s->nbound = n;
    free(k);
    return 0;
}

/* 0 if extern e may be bound at a: in the address space with its size,
 * overlapping no other bound extern. */
static int ext_place_ok(tha_schema_t *s, const char *name, uint64_t size, uintptr_t a) {
    if (size > UINTPTR_MAX - a)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "extern '%s': %llu bytes at %p wrap around the address space",
                         name, (unsigned long long)size, (void *)a);
    const tha__extern_t *o = ext_overlap(s, a, size);
    if (o)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "extern '%s' at %p (%llu bytes) overlaps extern '%s' at %p "
                         "(%llu bytes): a pointer into both could not be told apart",
                         name, (void *)a, (unsigned long long)size, o->name,
                         (void *)o->addr, (unsigned long long)o->size);
    return 0;
}

static int add_extern(tha_schema_t *s, const char *name, size_t size, const void *addr) {
    if (!s)
        return THA_EINVAL;
    if (s->sealed)
        return tha__fail(s->err, sizeof s->err, THA_ESTATE,
                         "schema is sealed: cannot add extern %s", name ? name : "(null)");
    int rc = check_name(s, "extern", name);
    if (rc)
        return rc;
    if (size == 0 || size > THA_EXTERN_MAX_SIZE)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "extern '%s': size %zu is outside 1..%llu bytes", name, size,
                         (unsigned long long)THA_EXTERN_MAX_SIZE);
    /* (deserialize checks that names ascend, so they are unique) */
    if (!s->bulk && find_extern(s, name))
        return tha__fail(s->err, sizeof s->err, THA_EINVAL,
                         "extern '%s' is already declared", name);
    if (addr && (rc = ext_place_ok(s, name, size, (uintptr_t)addr)))
        return rc;
    if (s->nexterns >= THA_MAX_EXTERNS)
        return tha__fail(s->err, sizeof s->err, THA_EFULL,
                         "too many externs (max %u)", THA_MAX_EXTERNS);
    if (s->nexterns == s->externs_cap) {
        uint32_t cap = s->externs_cap ? s->externs_cap * 2 : 8;
        tha__extern_t *e = realloc(s->externs, (size_t)cap * sizeof *e);
        if (!e)
            return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
        s->externs = e;
        uint32_t *ix = realloc(s->ext_by_addr, (size_t)cap * sizeof *ix);
        if (!ix)
            return tha__fail(s->err, sizeof s->err, THA_ENOMEM, "out of memory");
        s->ext_by_addr = ix;
        s->externs_cap = cap;
    }
    tha__extern_t *e = &s->externs[s->nexterns];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->size = size;
    e->addr = (uintptr_t)addr;
    if (addr)
        ext_index(s, s->nexterns);
    s->nexterns++;
    return 0;
}

int tha_schema_bind_extern(tha_schema_t *s, const char *name, const void *addr) {
    if (!s)
        return THA_EINVAL;
    if (!name)
        return tha__fail(s->err, sizeof s->err, THA_EINVAL, "empty extern name");
    tha__extern_t *e = find_extern(s, name);
    if (!e)
        return tha__fail(s->err, sizeof s->err, THA_ENOTFOUND,
                         "extern '%s' was never declared", name);
    uint32_t ix = (uint32_t)(e - s->externs);
    uintptr_t old = e->addr;
    if (old)
        ext_unindex(s, ix);
    e->addr = 0;
    int rc = addr ? ext_place_ok(s, name, e->size, (uintptr_t)addr) : 0;
    e->addr = rc ? old : (uintptr_t)addr;
    if (e->addr)
        ext_index(s, ix);
    return rc;
}

int tha_schema_bind_from(tha_schema_t *dst, const tha_schema_t *src) {
    if (!dst || !src)
        return THA_EINVAL;
    for (uint32_t i = 0; i < dst->nexterns; i++) { /* sizes first: all or nothing */
        const tha__extern_t *e = find_extern(src, dst->externs[i].name);
        if (e && e->addr && e->size < dst->externs[i].size)
            return tha__fail(dst->err, sizeof dst->err, THA_EMISMATCH,
                             "extern '%s' is %llu bytes in the schema; this process "
                             "binds only %llu", e->name,
                             (unsigned long long)dst->externs[i].size,
                             (unsigned long long)e->size);
    }
    for (uint32_t i = 0; i < dst->nfuncs; i++) {
        const tha__func_t *f = find_func(src, dst->funcs[i].name);
        int rc = f && f->fn ? tha_schema_bind_func(dst, f->name, f->fn) : 0;
        if (rc)
            return rc;
    }
    for (uint32_t i = 0; i < dst->nexterns; i++) {
        const tha__extern_t *e = find_extern(src, dst->externs[i].name);
        int rc = e && e->addr ? tha_schema_bind_extern(dst, e->name, (const void *)e->addr)
                              : 0;
        if (rc)
            return rc;
    }
    return 0;
}

int64_t tha__schema_extern_at(const tha_schema_t *s, uintptr_t a, uint64_t *off) {
    uint32_t lo = 0, hi = s->nbound; /* first one above a */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->externs[s->ext_by_addr[mid]].addr <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    uint32_t ix = s->ext_by_addr[lo - 1];
    const tha__extern_t *e = &s->externs[ix];
    if (a - e->addr >= e->size)
        return -1;
    if (off)
        *off = a - e->addr;
    return ix;
}

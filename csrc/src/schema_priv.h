/* schema_priv.h — what the schema files share (layer 1, schema): schema.c
 * (registration and lookup), schema_info.c, schema_bytes.c, schema_seal.c,
 * schema_parse.c. Private to the schema layer: the layers above read a
 * schema through schema.h and tha.h.
 */
#ifndef THA_SCHEMA_PRIV_H
#define THA_SCHEMA_PRIV_H

#include "schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THA__SCHEMA_MAGIC 0x53414854u /* "THAS" */
#define THA__SCHEMA_FORMAT 1u     /* no externs, no tag masks */
#define THA__SCHEMA_FORMAT_EXT 2u /* externs and tag masks (schema_bytes.c) */
#define THA__SIG_MAX 128u             /* sig buffer, with the NUL */

static inline const char *tha__schema_kw(const tha__type_t *t) {
    return t->is_union ? "union" : t->is_ptr ? "pointer type" : "struct";
}

/* ---- schema.c ------------------------------------------------------------ */

/* "scalar", "pointer", ... for a THA_K_* field kind. */
const char *tha__schema_kind_name(uint32_t k);
/* "int32_t", ...; "none" for what is not a primitive. */
const char *tha__schema_prim_name(uint32_t p);
/* (Re)builds the name index for at least need defined types (seal moves
 * them). */
void tha__schema_hash_rebuild(tha_schema_t *s, uint32_t need);
/* The defined type of that name (without struct/union), or NULL. */
tha__type_t *tha__schema_find_type(const tha_schema_t *s, const char *name);
/* Index in s->types of a type id a caller gives (primitive, handle or
 * canonical id); 0 if it names nothing. */
uint32_t tha__schema_resolve_id(const tha_schema_t *s, uint32_t id);
/* The id a caller sees for t: canonical once sealed, else its handle. */
uint32_t tha__schema_public_id(const tha_schema_t *s, const tha__type_t *t);
/* "struct emp" -> "emp" (*keyword 0), "union u" -> "u" (1); else -1. */
const char *tha__schema_strip_keyword(const char *name, int *keyword);
/* name as the schema stores it, in out: spaces squeezed, struct/union
 * stripped (*keyword as tha__schema_strip_keyword), a primitive's or a
 * pointer type's canonical spelling ("unsigned int" -> "uint32_t",
 * "struct emp **" -> "emp**"). */
const char *tha__schema_canonical_name(const char *name, char *out, size_t cap,
                                       int *keyword);
/* 0 unless t's name ends in '*' and t is not exactly the implicit pointer
 * type of that name (then an error in s->err). */
int tha__schema_pointer_shape(tha_schema_t *s, const tha__type_t *t);
/* Bytes of one element of a field, when known without other types. */
uint64_t tha__field_elem_size(const tha__field_t *f);
/* Rebuilds ext_by_addr from the externs (seal renumbered them). */
int tha__schema_extern_reindex(tha_schema_t *s);

/* ---- schema_bytes.c ------------------------------------------------------ */

/* Writes the canonical byte form of s into buf (cap bytes; nothing when
 * buf is NULL or it does not fit) and returns its length; with hash, its
 * FNV-1a 64 too (the fingerprint). */
size_t tha__schema_write(const tha_schema_t *s, uint8_t *buf, size_t cap, uint64_t *hash);
/* The byte form's format s is written in: 1 unless it holds an extern or
 * a tag mask, then 2. */
uint32_t tha__schema_format(const tha_schema_t *s);

#endif /* THA_SCHEMA_PRIV_H */

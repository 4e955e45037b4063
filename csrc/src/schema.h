/* schema.h — layer 1 (schema): what the layers above read of a schema.
 * The schema files' own shared helpers are in schema_priv.h.
 */
#ifndef THA_SCHEMA_H
#define THA_SCHEMA_H

#include "base.h"

/* The low bits of a pointer a tag mask may claim: allocations (and so
 * heap pointers' offsets) are 8-aligned. */
#define THA__TAG_BITS 0x7u

/* One pointer slot of an element, nested structs and arrays flattened. */
typedef struct tha__slot {
    uint32_t offset;   /* bytes from the element start; multiple of 8 */
    uint16_t is_func;  /* 1: function pointer (registry id on the wire) */
    uint16_t tag_mask; /* its field's tag_mask (<= 0x7): a tagged NULL of
                          these bits is a valid value here */
} tha__slot_t;

/* Where an object of a pointed-to type begins inside one element: type is
 * a user type id or a primitive's alias class (tha__ptr_class). */
typedef struct tha__place {
    uint32_t offset;
    uint32_t type;
} tha__place_t;

/* Bytes [from, to) of one element that no field covers. */
typedef struct tha__hole {
    uint32_t from, to;
} tha__hole_t;

typedef struct tha__field {
    tha_field_t pub;            /* name/target/sig point at the arrays below */
    char name[THA_NAME_MAX];
    char target[THA_NAME_MAX];  /* "" when none */
    char sig[128];              /* "" when none */
    uint32_t target_id;         /* resolved at seal: THA_K_STRUCT, THA_K_PTR */
    uint64_t elem_size;         /* bytes of one array element of the field */
    uint64_t count;             /* elements: product of dims, 1 if none */
} tha__field_t;

typedef struct tha__type {
    char name[THA_NAME_MAX];    /* "emp" for struct emp; "uint32_t" for prims */
    uint32_t id;                /* index in tha_schema.types */
    uint32_t is_union;
    uint32_t is_prim;
    uint32_t is_ptr;            /* the implicit pointer type "emp*" (schema.c) */
    uint32_t defined;           /* 0: id reserved but never registered */
    uint64_t size, align;
    tha__field_t *fields;
    uint32_t nfields, fields_cap;
    tha__slot_t *slots;         /* relocation table of one element */
    uint32_t *slot_decl;        /* declared target of each slot (a type id;
                                   0: function pointer), for the type check */
    uint32_t nslots;
    /* Built at seal for the type check (typecheck.c), each counted against
     * THA_SCHEMA_MAX_SLOTS entries of its kind in all. A type past that
     * (or holding one by value) gets no table and its flag set. */
    tha__place_t *places;       /* sorted by (offset, type), no repeats:
                                   every position in one element where a
                                   type some pointer field targets begins,
                                   except offset 0 for the type itself */
    uint32_t nplaces;
    uint32_t places_partial;    /* 1: not listed; interior pointers unchecked */
    tha__hole_t *holes;         /* ascending, disjoint: what no field covers */
    uint32_t nholes;
    uint32_t holes_partial;     /* 1: not listed; not linted */
    uint32_t seal_state;        /* 0 unvisited, 1 in progress, 2 done */
    uint32_t handle;            /* registration order (THA_T_HANDLE + it) */
} tha__type_t;

typedef struct tha__func {
    char name[THA_NAME_MAX];
    void (*fn)(void);           /* NULL: declared but not bound here */
} tha__func_t;

typedef struct tha__extern {
    char name[THA_NAME_MAX];
    uint64_t size;              /* 1..THA_EXTERN_MAX_SIZE bytes */
    uintptr_t addr;             /* 0: declared but not bound here */
} tha__extern_t;

struct tha_schema {
    int refs;                   /* owners: the creator and each heap */
    int sealed;                 /* no more add_* once set */
    tha__type_t *types;         /* indexed by type id; [0] unused, prims 1..12 */
    uint32_t ntypes;            /* highest id + 1 */
    uint32_t types_cap;
    tha__func_t *funcs;
    uint32_t nfuncs, funcs_cap;
    tha__extern_t *externs;     /* sorted by name once sealed (id = index) */
    uint32_t nexterns, externs_cap;
    uint32_t *ext_by_addr;      /* indexes of the bound externs, ascending
                                   address (ranges disjoint): encode's and the
                                   heap check's lookup; externs_cap entries */
    uint32_t nbound;
    uint32_t *handles;          /* registration handle n -> index in types
                                   (moves when seal sorts the types) */
    uint32_t nhandles;          /* == user types registered */
    int internal_handles;       /* deserialized: handles were never handed
                                   out, so callers' handles are refused */
    uint64_t fingerprint;       /* valid once sealed */
    uint32_t *nhash;            /* open-addressed name -> index in types (0:
                                   empty), so registering n types costs O(n);
                                   NULL: find_type scans (no memory for it) */
    uint32_t nhash_cap;         /* power of two, > 2 x defined types */
    int bulk;                   /* deserializing: add_field skips its
                                   per-field duplicate scan (deser sorts)
                                   and registers no implicit pointer type
                                   (the bytes carry theirs) */
    uint64_t max_type_bytes;    /* deserializing: a type larger than this is
                                   refused before anything is built (the
                                   capacity of the heap it comes with); 0: any */
    uint64_t max_size;          /* once sealed: the largest user type... */
    uint32_t max_size_id;       /* ...and its id (0: no user types) */
    uint32_t func_slots;        /* set at seal: some type has a function
                                   pointer slot (a delta's words are then
                                   checked against them, heapcheck.c) */
    uint64_t total_slots;       /* once sealed: relocation-table entries of all
                                   types (<= THA_SCHEMA_MAX_SLOTS) */
    int add_failed;             /* the first add_* that failed: seal refuses */
    char add_err[256];          /* ...and what it said */
    char err[256];
};

/* The type a pointer to primitive id may alias: signed and unsigned of one
 * width are one (C lets them alias), and char, int8_t and uint8_t are the
 * bytes class (THA_T_U8). Struct and union ids are themselves. */
static inline uint32_t tha__ptr_class(uint32_t id) {
    switch (id) {
    case THA_T_CHAR: case THA_T_I8: return THA_T_U8;
    case THA_T_I16: return THA_T_U16;
    case THA_T_I32: return THA_T_U32;
    case THA_T_I64: return THA_T_U64;
    default: return id;
    }
}

/* A pointer declared to class c may point at any byte of an allocation. */
static inline bool tha__ptr_anywhere(uint32_t c) {
    return c == THA_T_VOID || c == THA_T_U8;
}

/* The address that slot k of an element of t refers to when it holds v:
 * its value without the tag bits its field declares (a tagged NULL is 0). */
static inline uint64_t tha__slot_addr(const tha__type_t *t, uint32_t k, uint64_t v) {
    return v & ~(uint64_t)t->slots[k].tag_mask;
}

tha_schema_t *tha__schema_retain(tha_schema_t *s);
/* tha_schema_deserialize for a schema that comes with a heap image of
 * capacity bytes (a snapshot, a checkpoint, the active's HELLO): a type
 * larger than that could never be allocated and is refused, naming it,
 * before its relocation table is built. capacity 0: no such bound. */
int tha__schema_deserialize(const void *buf, size_t len, uint64_t capacity,
                            tha_schema_t **out, char *msg, size_t msgcap);
/* 0 if every type of sealed s fits in a heap of capacity bytes; else
 * THA_ESCHEMA naming the largest, in msg. */
int tha__schema_fits(const tha_schema_t *s, uint64_t capacity, char *msg, size_t cap);
/* NULL unless id names a defined type. */
const tha__type_t *tha__schema_type(const tha_schema_t *s, uint32_t id);
/* Registry id of a bound function address; -1 if none. */
int64_t tha__schema_func_id(const tha_schema_t *s, void (*fn)(void));
/* Id of the bound extern whose range holds address a, *off the byte
 * offset in it; -1 if none. O(log bound externs). */
int64_t tha__schema_extern_at(const tha_schema_t *s, uintptr_t a, uint64_t *off);
/* The slot of t at byte off of one element (slots are sorted), or NULL. */
const tha__slot_t *tha__schema_slot_at(const tha__type_t *t, uint64_t off);
/* "struct emp field reports[2]" for byte off of one element of type id. */
void tha__schema_describe(const tha_schema_t *s, uint32_t id, uint64_t off,
                          char *buf, size_t cap);

#endif /* THA_SCHEMA_H */

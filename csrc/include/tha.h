/* tha.h — Transparent High Availability for C structs: the public C API.
 *
 * Words used throughout:
 *   schema   the registered struct layouts (types, fields, pointer slots).
 *   heap     one contiguous reserved region holding every allocation, its
 *            allocator metadata (as offsets) and a named roots table.
 *   block    64 bytes of the region: the unit of change tracking and transfer.
 *   frame    a checksummed, sequence-numbered snapshot or delta of a heap.
 *   offset   a position relative to the region base; pointers travel as
 *            offsets and are rebased on apply, so a mirror may live anywhere.
 *
 * Return values: 0 on success, a negative THA_E* code or a negative errno
 * otherwise; tha_strerror() names both. Handles remember a detail message
 * for their last failure (tha_heap_errmsg, tha_schema_errmsg); there is no
 * global "last error".
 *
 * Threads: a schema or heap handle is not safe for concurrent use; callers
 * serialise calls on one handle. Different handles are independent.
 */
#ifndef THA_H
#define THA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define THA_VERSION_MAJOR 0
#define THA_VERSION_MINOR 1
#define THA_VERSION_PATCH 0
#define THA_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define THA_API __attribute__((visibility("default")))
#else
#define THA_API
#endif

/* ---- errors ------------------------------------------------------------ */

/* One list yields the enum, the names and the messages. Library codes live
 * in -30000.. so that -errno values (mmap, open) never collide with them. */
#define THA_ERROR_LIST(X)                                                     \
    X(THA_EINVAL, -30001, "invalid argument")                                 \
    X(THA_ENOMEM, -30002, "out of memory")                                    \
    X(THA_ECAPACITY, -30003, "heap capacity exhausted")                       \
    X(THA_ENOTLIVE, -30004, "not a live allocation (double free?)")           \
    X(THA_EFOREIGN, -30005, "pointer does not belong to this heap")           \
    X(THA_ESCHEMA, -30006, "unsupported or invalid layout")                   \
    X(THA_EMISMATCH, -30007, "schema mismatch")                               \
    X(THA_EFRAME, -30008, "malformed frame")                                  \
    X(THA_ECHECKSUM, -30009, "checksum mismatch")                             \
    X(THA_ESEQ, -30010, "frame out of sequence")                              \
    X(THA_ERANGE, -30011, "offset or pointer out of range")                   \
    X(THA_ENOTFOUND, -30012, "no such name")                                  \
    X(THA_ETOOSMALL, -30013, "buffer too small")                              \
    X(THA_EVERSION, -30014, "unsupported format version")                     \
    X(THA_EFULL, -30015, "table full")                                        \
    X(THA_ESTATE, -30016, "operation not allowed in this state")              \
    X(THA_ESTALE, -30017, "frame from an older epoch")                        \
    X(THA_ECORRUPT, -30018, "heap image is inconsistent")                    \
    X(THA_EPROTO, -30019, "protocol violation")                               \
    X(THA_EAUTH, -30020, "authentication failed")                             \
    X(THA_EFENCED, -30021, "fenced: a newer epoch exists")                    \
    X(THA_ECLOSED, -30022, "session closed")                                  \
    X(THA_ETIMEOUT, -30023, "timed out waiting for the peer")

enum tha_error {
#define THA__ENUM(name, value, msg) name = value,
    THA_ERROR_LIST(THA__ENUM)
#undef THA__ENUM
    THA_OK = 0
};

/* Message for a THA_E* code or a negative errno; never NULL. */
THA_API const char *tha_strerror(int code);
/* "0.1.0"; equals THA_VERSION_STRING and tha.__version__. */
THA_API const char *tha_version(void);

/* ---- schema ------------------------------------------------------------ */

typedef struct tha_schema tha_schema_t;

/* Primitive types. Their values are also their type ids, so an allocation
 * of raw bytes is tha_heap_alloc(h, THA_T_CHAR, n, &p).
 *
 * One canonical schema: the same structs give the same type ids, byte form
 * and fingerprint whatever order they were registered in and whichever
 * language declared them. Sealing numbers struct and union ids from
 * THA_T_FIRST_USER in canonical order (structs by name, then unions by
 * name) and sorts the function registry by name; these ids are what object
 * headers, frames and every reporting call (tha_obj_t, tha_leak_t,
 * tha_type_info_t.id, tha_schema_type_by_name) carry.
 *
 * tha_schema_add_struct cannot know the final id yet: it hands out a
 * registration handle, THA_T_HANDLE + n for the n-th struct registered.
 * Handles are accepted by every call that takes a type id, before and after
 * seal (tha_schema_add_field, tha_heap_alloc, tha_schema_type_info, ...);
 * to compare one with an id a heap reports, map it with
 * tha_schema_type_id. */
enum tha_prim {
    THA_T_CHAR = 1, THA_T_I8, THA_T_U8, THA_T_I16, THA_T_U16, THA_T_I32,
    THA_T_U32, THA_T_I64, THA_T_U64, THA_T_F32, THA_T_F64, THA_T_BOOL,
    THA_T_VOID, /* only as a pointer target: void * */
    THA_T_RAW,  /* "tha_raw": untyped bytes that may hold pointers (a library
                   you cannot describe): an allocation type only,
                   tha_heap_alloc(h, THA_T_RAW, nbytes, &p), and only in a
                   same-address heap (see tha_heap_create_at) */
    THA_T_FIRST_USER = 32
};
#define THA_T_HANDLE 0x40000000u

/* Field kinds. */
enum tha_kind {
    THA_K_SCALAR = 1, /* a primitive (or array of them) */
    THA_K_STRUCT,     /* a registered struct or union, by value */
    THA_K_PTR,        /* pointer into the heap: to a struct, union, primitive or pointer */
    THA_K_FUNC,       /* function pointer, mirrored through the name registry */
    THA_K_BITS        /* bitfield: bits[0] = shift, bits[1] = width */
};

#define THA_MAX_DIMS 4
#define THA_NAME_MAX 64 /* type, field and function names, with the NUL */

/* What a schema may cost. A schema arrives from peers (the handshake's
 * SCHEMA), snapshots and checkpoint files as well as from registration, and
 * sealing it builds one relocation table per type: every pointer slot of
 * one element, nested structs and arrays flattened, 8 bytes an entry. A
 * few bytes of schema ("void *p[1 << 27]", or arrays of structs of arrays)
 * could otherwise ask for gigabytes of tables and seconds of work before a
 * single object exists. So:
 *
 *  - THA_SCHEMA_MAX_SLOTS: the pointer slots of all types together, at most
 *    4 Mi entries (12 bytes each with the slot's declared target: 48 MiB
 *    of tables, well under a second to build). That
 *    is, for instance, one struct holding 4 million pointers inline (a
 *    32 MiB struct). Large pointer tables belong in an allocation of count
 *    elements (tha_heap_alloc(h, slot_type, 1 << 24, &p)): count costs no
 *    table entries. Sealing (and so deserializing) refuses a schema over
 *    the limit with THA_ESCHEMA naming the struct and field that crossed it,
 *    before building any table.
 *  - THA_MAX_USER_TYPES types, THA_MAX_FIELDS fields per type and
 *    THA_MAX_FUNCS functions; a serialized schema must also hold at least
 *    the minimum encoding of every type and field it announces.
 *  - The type check's tables (see tha_heap_check_types) hold at most
 *    THA_SCHEMA_MAX_SLOTS entries of each kind in all, 8 bytes each; a
 *    type that would need more seals all the same and is checked less (as
 *    said there).
 *  - Sizes: a type is at most 4 GiB - 1 (UINT32_MAX bytes, checked with its
 *    array dimensions multiplied out), and no larger than the capacity of
 *    the heap it backs: tha_heap_create refuses a schema holding a type
 *    larger than the heap (no element of it could ever be allocated), and
 *    a schema that comes with a heap image (snapshot, checkpoint, the
 *    active's handshake) is refused, naming the type, when one of its types
 *    exceeds the capacity that image declares.
 *  - Nesting depth is not limited: sealing walks nested structs with a
 *    stack of its own (60,000 levels seal like one).
 * Registering and deserializing cost O(types + fields + slots) time and
 * memory (names are hashed, not scanned). */
#define THA_SCHEMA_MAX_SLOTS (1u << 22)
#define THA_MAX_USER_TYPES (1u << 16)
#define THA_MAX_FIELDS (1u << 16)
#define THA_MAX_FUNCS (1u << 16)
#define THA_MAX_EXTERNS (1u << 16)
#define THA_EXTERN_MAX_SIZE (1ull << 40) /* bytes of one data extern */

/* One field as registered. Strings are copied. */
typedef struct tha_field {
    const char *name;
    uint32_t offset;               /* bytes from the start of the struct */
    uint32_t kind;                 /* enum tha_kind */
    uint32_t prim;                 /* THA_K_SCALAR/THA_K_BITS: enum tha_prim */
    const char *target;            /* THA_K_STRUCT: type name ("emp");
                                      THA_K_PTR: type name or primitive name
                                      ("emp", "char", "void", "uint8_t"), or
                                      one followed by stars for a pointer to
                                      pointers ("emp *": struct emp **).
                                      "struct emp"/"union u" and C spellings
                                      of primitives ("unsigned int", "_Bool",
                                      "long") are accepted and stored as the
                                      canonical name ("uint32_t"); const,
                                      volatile and restrict are dropped
                                      ("const char *" is "char*") */
    uint32_t dims[THA_MAX_DIMS];   /* array dimensions, 0-terminated; all 0:
                                      not an array */
    uint32_t bits[2];              /* THA_K_BITS: shift, width */
    const char *sig;               /* THA_K_FUNC: C type text, e.g.
                                      "int(*)(int)"; NULL = "void(*)(void)".
                                      Stored with whitespace only between two
                                      identifier characters, one space:
                                      "int (*)(int, char *)" is
                                      "int(*)(int,char*)" */
    uint32_t tag_mask;             /* THA_K_PTR: low bits of the pointer that
                                      are tags (a red-black tree's colour in
                                      its parent pointer), within 0x7 since
                                      allocations are 8-aligned; 0: none. A
                                      tagged pointer into the heap travels as
                                      its offset with the tags; a tagged NULL
                                      (the value has no bits outside the mask,
                                      0x1) travels only in a field declaring
                                      those bits, and is refused (encode,
                                      apply, tha_heap_check) anywhere else */
} tha_field_t;

/* A schema is built (add_struct/add_field/add_func) then sealed; only a
 * sealed schema can back a heap. Sealing resolves late-bound names, flattens
 * pointer slots into relocation tables and computes the fingerprint; it
 * refuses layouts it cannot mirror with a message naming struct and field. */
THA_API int tha_schema_create(tha_schema_t **out);
/* Drops the caller's reference; heaps keep their own. NULL is ignored. */
THA_API void tha_schema_release(tha_schema_t *s);
THA_API const char *tha_schema_errmsg(const tha_schema_t *s);
/* is_union: 0 struct, 1 union. size/align as the C compiler lays it out.
 * *type_id receives a registration handle (see THA_T_HANDLE). */
THA_API int tha_schema_add_struct(tha_schema_t *s, const char *name,
                                  size_t size, size_t align, int is_union,
                                  uint32_t *type_id);
THA_API int tha_schema_add_field(tha_schema_t *s, uint32_t type_id,
                                 const tha_field_t *field);
/* Declares a function name for THA_K_FUNC slots; fn may be NULL and bound
 * later. Only declared names are fingerprinted. Sealing sorts the registry
 * by name: a function's id (its index in tha_schema_func_info) is its rank. */
THA_API int tha_schema_add_func(tha_schema_t *s, const char *name, void (*fn)(void));
THA_API int tha_schema_bind_func(tha_schema_t *s, const char *name, void (*fn)(void));
/* Data externs: objects outside the heap that heap pointers may point
 * into — a static TAILQ_HEAD (its first element's tqe_prev points at
 * &head.tqh_first), a string literal a hash table keys on, a global
 * sentinel node. Declared by name and size (1..THA_EXTERN_MAX_SIZE bytes;
 * both fingerprinted, so active and standby must declare the same), bound
 * to an address per process; addr may be NULL and bound later. A pointer
 * word inside [addr, addr + size) of a bound extern travels as the
 * extern's id and the byte offset inside it, and is resolved on apply to
 * the receiver's bound address + offset; a frame naming an extern this
 * process has not bound (or an id or offset out of range) is refused,
 * nothing written. Bound ranges may not overlap one another. Sealing sorts
 * the registry by name: an extern's id (its index in tha_schema_extern_info)
 * is its rank. Binding (and unbinding with NULL) is allowed after seal, but
 * not while a heap of the schema encodes, applies or is checked. */
THA_API int tha_schema_add_extern(tha_schema_t *s, const char *name, size_t size,
                                  const void *addr);
THA_API int tha_schema_bind_extern(tha_schema_t *s, const char *name, const void *addr);
/* An extern for a variable (a static, a const char array), by its size. */
#define THA_EXTERN(s, name, var) tha_schema_add_extern((s), (name), sizeof(var), &(var))
/* Binds in dst, by name, every function and data extern that dst declares
 * and src binds (src: any schema, sealed or not, e.g. one holding only
 * this process's add_func / THA_EXTERN registrations; a standby binds the
 * schema an active sends with it, tha_session_config_t.bindings). What src
 * does not bind is left as it is. THA_EMISMATCH, naming it, if src gives
 * an extern fewer bytes than dst declares (nothing bound then); THA_EINVAL
 * if an address is bound twice (as tha_schema_bind_func / _extern). */
THA_API int tha_schema_bind_from(tha_schema_t *dst, const tha_schema_t *src);
/* Fails with THA_ESCHEMA, quoting the first failure, if any add_* failed:
 * an error a caller ignored would leave a field out (its bytes copied raw,
 * a pointer never rebased). A caller that handled the failure on purpose
 * (a probe, a fallback spelling) says so with tha_schema_clear_add_error.
 * Also refuses, naming both fields, a scalar, bitfield or nested struct
 * whose non-pointer bytes overlap a pointer or function pointer slot (a
 * flattened `union { void *p; uintptr_t bits; }`): that word would be
 * rebased as a pointer whatever it held. Scalars may overlap scalars (a
 * flattened union of numbers); unions themselves hold no pointers (refused
 * too), so their members overlap freely. */
THA_API int tha_schema_seal(tha_schema_t *s);
THA_API void tha_schema_clear_add_error(tha_schema_t *s);
THA_API uint64_t tha_schema_fingerprint(const tha_schema_t *s);
/* Canonical byte form (carried by snapshots and the handshake). With buf
 * NULL only *len is set. */
THA_API int tha_schema_serialize(const tha_schema_t *s, void *buf, size_t cap,
                                 size_t *len);
/* A sealed schema from its byte form; functions come back unbound. */
THA_API int tha_schema_deserialize(const void *buf, size_t len,
                                   tha_schema_t **out, char *msg, size_t msgcap);
/* 0 if equal; THA_EMISMATCH with the first difference ("struct emp field
 * salary: offset 40 vs 48") written to msg otherwise. */
THA_API int tha_schema_compare(const tha_schema_t *a, const tha_schema_t *b,
                               char *msg, size_t msgcap);

/* Introspection, for bindings that build their own view of the layout. */
typedef struct tha_type_info {
    const char *name;    /* "emp", or the primitive's name ("uint32_t") */
    uint32_t id;
    uint32_t is_union;
    uint32_t is_prim;
    uint32_t nfields;
    uint64_t size;
    uint64_t align;
    uint32_t nslots;     /* pointer slots in one element, flattened */
} tha_type_info_t;

THA_API uint32_t tha_schema_type_count(const tha_schema_t *s); /* highest id + 1 */
/* The canonical id of a registration handle or of a canonical id (itself);
 * primitives are themselves. 0 if id names no type, or names a struct of a
 * schema not sealed yet (it has no canonical id before seal). */
THA_API uint32_t tha_schema_type_id(const tha_schema_t *s, uint32_t id);
THA_API int tha_schema_type_info(const tha_schema_t *s, uint32_t id,
                                 tha_type_info_t *out);
THA_API int tha_schema_type_by_name(const tha_schema_t *s, const char *name,
                                    uint32_t *id);
/* Field i of a struct; strings live as long as the schema. */
THA_API int tha_schema_field_info(const tha_schema_t *s, uint32_t id,
                                  uint32_t i, tha_field_t *out);
THA_API uint32_t tha_schema_func_count(const tha_schema_t *s);
THA_API int tha_schema_func_info(const tha_schema_t *s, uint32_t i,
                                 const char **name, void (**fn)(void));
/* Extern i (0..count-1: its id once sealed); *addr NULL while unbound. Any
 * out pointer may be NULL. */
THA_API uint32_t tha_schema_extern_count(const tha_schema_t *s);
THA_API int tha_schema_extern_info(const tha_schema_t *s, uint32_t i, const char **name,
                                   size_t *size, const void **addr);

/* Registration macros for native code (layout taken from the compiler);
 * they compile as C11 and as C++11. */
#ifdef __cplusplus
#define THA__ALIGNOF(T) alignof(T)
#else
#define THA__ALIGNOF(T) _Alignof(T)
#endif
#define THA_STRUCT(s, T, name, idp)                                           \
    tha_schema_add_struct((s), (name), sizeof(T), THA__ALIGNOF(T), 0, (idp))
/* One field from its parts (what the THA_FIELD_* macros expand to). */
static inline int tha__add_field_tagged(tha_schema_t *s, uint32_t id, const char *name,
                                        size_t offset, uint32_t kind, uint32_t prim,
                                        const char *target, uint32_t d0, uint32_t mask) {
#ifdef __cplusplus
    tha_field_t f = {};
#else
    tha_field_t f = {0};
#endif
    f.name = name;
    f.offset = (uint32_t)offset;
    f.kind = kind;
    f.prim = prim;
    f.target = target;
    f.dims[0] = d0;
    f.tag_mask = mask;
    return tha_schema_add_field(s, id, &f);
}
static inline int tha__add_field(tha_schema_t *s, uint32_t id, const char *name,
                                 size_t offset, uint32_t kind, uint32_t prim,
                                 const char *target, uint32_t d0) {
    return tha__add_field_tagged(s, id, name, offset, kind, prim, target, d0, 0);
}
#define THA__FIELD(s, id, T, f, k, p, tgt, d0)                                \
    tha__add_field((s), (id), #f, offsetof(T, f), (k), (p), (tgt), (uint32_t)(d0))
/* A primitive, or a 1-D array of them when n > 0 ("char name[32]"). */
#define THA_FIELD_SCALAR(s, id, T, f, prim, n)                                \
    THA__FIELD(s, id, T, f, THA_K_SCALAR, (prim), NULL, (n))
/* A pointer to type tgt ("emp", "char", "void"), or an array of n of them.
 * tgt "emp *" (struct emp **: an array of pointers) targets the implicit
 * pointer type "emp*", registered by this call; allocate one with the id
 * tha_schema_type_by_name(s, "emp*", &id) gives after seal. */
#define THA_FIELD_PTR(s, id, T, f, tgt, n)                                    \
    THA__FIELD(s, id, T, f, THA_K_PTR, 0, (tgt), (n))
/* A pointer to tgt whose low bits mask (within 0x7) are tags. */
#define THA_FIELD_PTR_TAGGED(s, id, T, f, tgt, mask)                          \
    tha__add_field_tagged((s), (id), #f, offsetof(T, f), THA_K_PTR, 0, (tgt), 0,  \
                          (uint32_t)(mask))
/* A nested struct by value, or an array of n of them. */
#define THA_FIELD_STRUCT(s, id, T, f, tgt, n)                                 \
    THA__FIELD(s, id, T, f, THA_K_STRUCT, 0, (tgt), (n))
/* A function pointer slot, or an array of n of them. */
#define THA_FIELD_FUNC(s, id, T, f, n)                                        \
    THA__FIELD(s, id, T, f, THA_K_FUNC, 0, NULL, (n))

/* <sys/queue.h> (and BSD) intrusive links, one line each. f is the
 * TAILQ_ENTRY / LIST_ENTRY field of T, or the TAILQ_HEAD / LIST_HEAD field
 * of a struct in the heap; tgt names the element type ("job"). The
 * "previous" links point at the previous element's next field (or the
 * head's first): interior pointers, registered as void *. The fields are
 * named f_tqe_next, f_tqe_prev, and so on. */
#define THA_FIELD_TAILQ_ENTRY(s, id, T, f, tgt)                               \
    (tha__add_field((s), (id), #f "_tqe_next", offsetof(T, f.tqe_next),        \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_tqe_prev", offsetof(T, f.tqe_prev),        \
                    THA_K_PTR, 0, "void", 0))
#define THA_FIELD_TAILQ_HEAD(s, id, T, f, tgt)                                \
    (tha__add_field((s), (id), #f "_tqh_first", offsetof(T, f.tqh_first),      \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_tqh_last", offsetof(T, f.tqh_last),        \
                    THA_K_PTR, 0, "void", 0))
#define THA_FIELD_LIST_ENTRY(s, id, T, f, tgt)                                \
    (tha__add_field((s), (id), #f "_le_next", offsetof(T, f.le_next),          \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_le_prev", offsetof(T, f.le_prev),          \
                    THA_K_PTR, 0, "void", 0))
#define THA_FIELD_LIST_HEAD(s, id, T, f, tgt)                                 \
    tha__add_field((s), (id), #f "_lh_first", offsetof(T, f.lh_first),         \
                   THA_K_PTR, 0, (tgt), 0)

/* BSD <sys/tree.h> red-black trees (libbsd's <bsd/sys/tree.h>, colour in
 * its own int): the three links and the colour of an RB_ENTRY field f, and
 * the root of an RB_HEAD field. */
#define THA_FIELD_RB_ENTRY(s, id, T, f, tgt)                                  \
    (tha__add_field((s), (id), #f "_rbe_left", offsetof(T, f.rbe_left),        \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_rbe_right", offsetof(T, f.rbe_right),      \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_rbe_parent", offsetof(T, f.rbe_parent),    \
                    THA_K_PTR, 0, (tgt), 0) ||                                \
     tha__add_field((s), (id), #f "_rbe_color", offsetof(T, f.rbe_color),      \
                    THA_K_SCALAR, THA_T_I32, NULL, 0))
#define THA_FIELD_RB_HEAD(s, id, T, f, tgt)                                   \
    tha__add_field((s), (id), #f "_rbh_root", offsetof(T, f.rbh_root),         \
                   THA_K_PTR, 0, (tgt), 0)

/* ---- heap -------------------------------------------------------------- */

typedef struct tha_heap tha_heap_t;

/* How a heap finds what changed. */
enum tha_tracking {
    THA_TRACK_AUTO = 0,     /* wp when userfaultfd asynchronous write-protect
                               works on the running kernel, else diff (auto
                               never installs a SIGSEGV handler) */
    THA_TRACK_EXPLICIT = 1, /* only alloc/free/roots/tha_heap_touch mark blocks:
                               no overhead; plain writes need a touch */
    THA_TRACK_DIFF = 2,     /* a shadow copy of the image, compared block by
                               block when a frame is made: plain writes are
                               found with no touch; costs a second copy of the
                               image in memory and a compare of the committed
                               size at memory bandwidth per frame */
    THA_TRACK_WP = 3        /* the region is write-protected after each frame;
                               only pages written since are compared with the
                               shadow. Mechanism: userfaultfd async WP +
                               PAGEMAP_SCAN (Linux >= 6.7; ~1 us per first
                               write to a page), else mprotect + a SIGSEGV
                               handler that chains to the previous one for
                               faults outside any heap (set THA_WP_MECHANISM=
                               mprotect to force it). tha_heap_tracking_name
                               says which. See docs/architecture.md for
                               threads, kernel writes (read() into the heap)
                               and fork. */
};

/* Reserves capacity bytes (rounded up to 64 KiB; 0 means 64 MiB) of address
 * space and commits them as the heap grows: THA_EINVAL unless 1 MiB <=
 * capacity <= 16 TiB. The heap keeps a reference to schema.
 * THA_ESCHEMA if a type of schema is larger than the capacity (the type is
 * named in tha_schema_errmsg(schema)). */
THA_API int tha_heap_create(tha_heap_t **out, tha_schema_t *schema,
                            size_t capacity, int tracking);
/* Same-address mode: the region is mapped at base (mmap with
 * MAP_FIXED_NOREPLACE), and every mirror of it must be mapped at the same
 * base in its own process. Pointer words then travel as the addresses they
 * are and apply is a straight copy with no rebasing, so allocations of
 * untyped bytes (THA_T_RAW: a library whose structs you cannot describe,
 * pointers inside) replicate too: their bytes travel as they are and mean
 * the same on the mirror. Function pointers still travel as registry ids
 * (ASLR puts code elsewhere in every process), which typed slots allow.
 *
 * base: a multiple of THA_BASE_ALIGN below 2^48; NULL selects
 * THA_BASE_DEFAULT, a range Linux leaves free unless asked for it (x86-64
 * and arm64 with 48-bit addresses). Failures: THA_EINVAL for a base that
 * is not one, -EEXIST when [base, base + capacity) is taken (by another
 * mapping, or a kernel without MAP_FIXED_NOREPLACE placed it elsewhere:
 * refused, never moved), another -errno from mmap; the detail, naming the
 * address and what occupies it, in tha_schema_errmsg(schema). Otherwise as
 * tha_heap_create.
 *
 * Frames of a same-address heap say so (frame format version 2, the base in
 * the header: tha_frame_info_t.base) and apply only to a same-address heap
 * at that base; a same-address heap takes only such frames (THA_EMISMATCH
 * both ways, naming both addresses). Apply still verifies everything: every
 * typed pointer word must be NULL, inside [base, base + top) or a bound
 * function id, so tha_heap_check passes on whatever it accepts; the bytes of
 * THA_T_RAW allocations are the program's and are not checked. Snapshots
 * name the base (tha_frame_info), checkpoints too (tha_checkpoint_info;
 * tha_heap_load maps the heap there), and a standby's bulk sync creates its
 * heap at the active's base (docs/protocol.md). */
#define THA_BASE_ALIGN (64u << 10)
#define THA_BASE_DEFAULT ((void *)0x200000000000ull) /* 32 TiB */
THA_API int tha_heap_create_at(tha_heap_t **out, tha_schema_t *schema,
                               size_t capacity, int tracking, void *base);
/* Unmaps the region: every pointer into it dies. NULL is ignored. */
THA_API void tha_heap_destroy(tha_heap_t *h);
/* Detail of the last failed call on h ("double free of offset 0x4008"). */
THA_API const char *tha_heap_errmsg(const tha_heap_t *h);
/* How h finds changes: "uffd-wp-async", "mprotect" (tracking wp),
 * "shadow-diff" (diff, or wp after its mechanism failed), "explicit".
 * Static string. */
THA_API const char *tha_heap_tracking_name(const tha_heap_t *h);
/* Changes how a live heap finds changes (a mirror promoted to active, a
 * heap loaded in one mode and run in another). Changes count from this
 * call: the image as it is now is the baseline of diff and wp; dirty bits
 * already set (library writes, touches, and what the old mode had found
 * and not yet shipped) stay set and travel in the next frame. Call it
 * while no other thread writes the heap. A mode the heap already has (auto
 * resolving to the mechanism in use) changes nothing. On failure (no
 * memory for the shadow, wp unavailable) the heap keeps its old mode. */
THA_API int tha_heap_set_tracking(tha_heap_t *h, int tracking);
THA_API const tha_schema_t *tha_heap_schema(const tha_heap_t *h);
THA_API void *tha_heap_base(const tha_heap_t *h);

/* count elements of type_id, zero-filled, 8-byte aligned. The allocation
 * lives until tha_heap_free or until a snapshot is applied over the heap. */
THA_API int tha_heap_alloc(tha_heap_t *h, uint32_t type_id, uint32_t count,
                           void **out);
/* p must be the start of a live allocation; NULL is ignored (returns 0),
 * as free(NULL) is. */
THA_API int tha_heap_free(tha_heap_t *h, void *p);

/* Size rules (sized.c), for libraries that allocate through a malloc(size)
 * hook and say nothing of the type (uthash's uthash_malloc, see
 * tha_uthash.h): an allocation needs a type, so that its pointer slots are
 * rebased, and the heap keeps rules that give each size one.
 *
 *   tha_heap_size_type(h, size, T)   exactly size bytes are size/sizeof(T)
 *                                    elements of T (size a multiple of it):
 *                                    one struct, or a byte array of a fixed
 *                                    size (T = THA_T_U8).
 *   tha_heap_size_multiple(h, T)     any multiple of sizeof(T) is that many
 *                                    elements of T (an array that grows).
 *   tha_heap_alloc_sized(h, size, &p) tha_heap_alloc of the type the rules
 *                                    give: an exact rule if one has this
 *                                    size, else the one multiple rule that
 *                                    divides it.
 *
 * Never a guess: a size no rule covers, or that two multiple rules both
 * divide (with no exact rule for it), fails with THA_ESCHEMA, the heap's
 * message naming the size, the rules that exist and the call that would
 * cover it; no allocation is made untyped. Registering a rule again is a
 * no-op; an exact rule for a size that already has another type is
 * THA_ESTATE. type_id: a registration handle or canonical id of h's
 * schema, or a primitive; THA_EINVAL for one that cannot be allocated
 * (void). Free with tha_heap_free.
 *
 * The rules belong to this heap handle, as function bindings belong to a
 * schema handle: they describe how this program's code allocates, not the
 * data, so they are not in the image, the frames or the fingerprint. A
 * mirror (snapshot, bulk sync, tha_heap_load) starts with none and applies
 * frames without them (object headers carry the types); the program that
 * promotes it registers its rules on it before it allocates, as it binds
 * its functions (tha_uthash_use does both steps for uthash). A lookup is
 * O(rules). */
THA_API int tha_heap_size_type(tha_heap_t *h, size_t size, uint32_t type_id);
THA_API int tha_heap_size_multiple(tha_heap_t *h, uint32_t type_id);
THA_API int tha_heap_alloc_sized(tha_heap_t *h, size_t size, void **out);
/* Marks [p, p+len) dirty; len 0 marks the whole allocation holding p. */
THA_API int tha_heap_touch(tha_heap_t *h, const void *p, size_t len);
/* Marks [p, p+len) dirty wherever it lies in the heap's data pages, across
 * allocations and the free space between them: for explicit tracking when
 * a library wrote somewhere in a range and nobody knows which objects.
 * THA_EFOREIGN if the range is not inside [first data page, top). */
THA_API int tha_heap_touch_range(tha_heap_t *h, const void *p, size_t len);
/* Marks every data page up to the top dirty: the next delta carries the
 * whole image (as a snapshot would, but in this frame series). */
THA_API int tha_heap_touch_all(tha_heap_t *h);

/* A live allocation. */
typedef struct tha_obj {
    void *ptr;         /* first element */
    uint64_t offset;   /* of ptr from the base */
    uint32_t type_id;
    uint32_t count;    /* elements */
    uint64_t size;     /* bytes of one element */
} tha_obj_t;

/* O(1): the live allocation containing any byte of it (interior pointers). */
THA_API int tha_heap_lookup(const tha_heap_t *h, const void *p, tha_obj_t *out);
/* Live allocations in address order. Start with *cursor = 0; returns 1 and
 * fills out while there is one, 0 at the end. */
THA_API int tha_heap_next(const tha_heap_t *h, uint64_t *cursor, tha_obj_t *out);

/* Named roots: 256 of them, names of 1 to THA_ROOT_NAME_MAX - 1 = 55 bytes
 * (a root entry is one 64-byte block: the name with its NUL, then the
 * target). p may be an interior pointer; NULL removes the root. */
#define THA_MAX_ROOTS 256
#define THA_ROOT_NAME_MAX 56
THA_API int tha_root_set(tha_heap_t *h, const char *name, const void *p);
THA_API int tha_root_get(const tha_heap_t *h, const char *name, void **p);
/* Roots by reference: the root `name` follows the pointer variable at
 * *where, read at every frame (tha_heap_frame_size, tha_heap_encode, the
 * first segment of a bulk sync), so swapping two global list heads needs
 * no tha_root_set. NULL in *where removes the root; a value that is not in
 * a live allocation fails that frame, naming the root. A root pins its
 * allocation (tha_heap_free refuses it) while the variable points into it;
 * once the variable has moved on (a list head unlinked, then freed), the
 * free takes the variable's new value (NULL or in a live allocation) as
 * the root; a free it refuses moves no root. where NULL unbinds
 * (the root keeps its last value). At most THA_MAX_ROOTS bindings. */
THA_API int tha_root_bind(tha_heap_t *h, const char *name, void *const *where);
/* Statics by value: a program's static container head (a `static
 * TAILQ_HEAD`, an RB_HEAD, a sentinel node: at most 4096 bytes), declared
 * as the data extern `name` (tha_schema_add_extern, bound in this process)
 * and registered in the schema as struct type_id of the same size.
 * Element pointers into it already travel as extern words; this makes its
 * own bytes travel too. Before every frame (as bound roots are read) the
 * static is copied into a *cell*, an allocation of type_id rooted under
 * `name` (made at the first frame), its pointers into itself (an empty
 * TAILQ's tqh_last = &head.tqh_first) turned into the same places of the
 * cell; after every apply the cell is copied out into this process's
 * static, those pointers turned back. So both ends call it, each for its
 * own static, and a mirror walks its own static head with the library's
 * macros (TAILQ_FOREACH(e, &jobs, link)). A registration belongs to the
 * heap handle, as size rules do: a heap created by a bulk sync registers
 * again. THA_ENOTFOUND without that extern, THA_ESCHEMA if the sizes
 * differ, THA_EFULL past 64 statics. A frame or an apply fails (THA_ESTATE,
 * naming it, nothing written) while a registered extern is unbound (the
 * copy could not be made) or bound inside this heap's reservation (the
 * copy would write the region behind the allocator's back); mirror_extern
 * refuses the latter.
 * A frame also fails (THA_ESTATE) while the root `name` points anywhere but
 * the start of a type_id allocation (a root a received frame or
 * tha_root_set left there): the push would write past it. */
THA_API int tha_heap_mirror_extern(tha_heap_t *h, const char *name, uint32_t type_id);
/* Roots in table order: start with *cursor = 0; 1 while there is one. name
 * points into the region and lives until the root changes. */
THA_API int tha_root_next(const tha_heap_t *h, uint32_t *cursor,
                          const char **name, void **p);

typedef struct tha_stats {
    uint64_t capacity;        /* bytes reserved */
    uint64_t committed;       /* bytes mapped read-write */
    uint64_t top;             /* bytes of the region in use (the image size) */
    uint64_t live_objects;    /* allocations */
    uint64_t live_bytes;      /* payload bytes of live allocations */
    uint64_t dirty_blocks;    /* blocks marked changed so far. Explicit: what
                                 a delta would carry now. wp/diff find plain
                                 writes only when a frame is sized (stats
                                 does not scan): call tha_heap_frame_size
                                 first for the current count */
    uint64_t seq;             /* last frame encoded or applied */
    uint64_t epoch;
    uint64_t lineage;         /* identity of the frame series */
    uint64_t frames_encoded, bytes_encoded;
    uint64_t frames_applied, bytes_applied;
    int tracking;             /* enum tha_tracking in force (never AUTO) */
    uint64_t same_address;    /* the base of a same-address heap
                                 (tha_heap_create_at), 0 if relocatable */
} tha_stats_t;

THA_API int tha_heap_stats(const tha_heap_t *h, tha_stats_t *out);

/* Walks the whole heap and verifies every allocator invariant, the pointer
 * map and that every pointer slot holds NULL, an address in the image, a
 * registered function, an address inside a bound data extern or (in a
 * field with a tag mask) a tagged NULL of those bits, and every function
 * pointer slot NULL or a registered function; untyped allocations
 * (THA_T_RAW) only in a same-address heap, their bytes unchecked (they
 * are the program's). 0, or THA_ECORRUPT with the first problem in
 * tha_heap_errmsg. Read-only; O(image size). With THA_DEBUG_TYPES set
 * (tha_heap_set_debug) it then runs tha_heap_check_types (THA_EMISMATCH). */
THA_API int tha_heap_check(tha_heap_t *h);

/* ---- type checks (typecheck.c) ------------------------------------------ */

/* What a pointer field may hold, by its declared target:
 *  - void *, char *, int8_t *, uint8_t *: any byte of a live allocation.
 *  - struct T * (or union T *): the start of an element of a T allocation
 *    (&arr[3]), or the start of a T nested by value in an element of
 *    another allocation, at any depth and in arrays of them (the intrusive
 *    idiom: a struct node * to the node inside a struct job; a struct
 *    base * to the base that begins a struct derived). Any other address
 *    inside an allocation is wrong, one past the end of a nested array
 *    included.
 *  - a pointer to a pointer (struct T **, char **, void **; target "T *"):
 *    the start of an element of a "T*" allocation, or a pointer field to
 *    T (or an element of an array of them) in an element of another
 *    allocation, at any depth: &prev->next, &head->first (hlist's pprev).
 *  - other primitives (uint32_t *, double *, bool *, ...): the start of an
 *    element of an allocation of that primitive, or of a scalar field (or
 *    array element) of it, at any depth. Signed and unsigned of one width
 *    count as one type (C lets them alias); bitfields have no address.
 * NULL is always right, and so is every pointer that is not inside a live
 * allocation (outside the heap, freed memory, allocator metadata, one past
 * the end of its allocation): those are not a question of type (encode
 * refuses foreign ones, tha_heap_dangling reports the rest). Function
 * pointer slots are not concerned.
 * Sealing lists, for each type, where in one element every type that some
 * pointer field targets begins (nested structs and arrays flattened), so a
 * check is a lookup of the allocation and a binary search. At most
 * THA_SCHEMA_MAX_SLOTS entries are listed in all: a type that would need
 * more (millions of pointed-to structs inline in one struct) is checked at
 * its element starts only, and an address inside it is accepted.
 * tha_heap_check_types: 0, or THA_EMISMATCH naming the first wrong pointer
 * in address order: the object, element and field holding it, the declared
 * type, and the allocation and field it points into. Read-only; O(image
 * / 64 + pointer slots), independent of nesting depth. */
THA_API int tha_heap_check_types(tha_heap_t *h);

/* Debug flags of one heap (0 to clear them all); THA_EINVAL for an
 * unknown bit. THA_DEBUG_TYPES: tha_heap_check also runs
 * tha_heap_check_types, and tha_heap_encode (so tha_backlog_encode,
 * tha_net_sync, Active.sync) checks the pointer words the frame carries
 * (a delta: those in its dirty blocks; a snapshot: all of them) by the
 * same rule, failing with THA_EMISMATCH and changing nothing, as any
 * failed encode. Off, encode pays one branch per frame. A runtime flag,
 * not a build option: one libtha serves debug and release runs, and a
 * test turns it on for the heap it checks. Flags are not in the image:
 * a mirror holds what its source wrote, apply never refuses a frame for
 * the types of its pointers, and what apply accepts passes tha_heap_check
 * on a heap without the flag. */
#define THA_DEBUG_TYPES 1u
THA_API int tha_heap_set_debug(tha_heap_t *h, unsigned flags);

/* A word that looks like a forgotten pointer field. */
typedef struct tha_lint {
    uint64_t offset;   /* region offset of the word */
    uint64_t object;   /* region offset of its allocation's first element */
    uint32_t type_id;  /* of that allocation */
    uint32_t element;  /* index of the element holding the word */
    uint32_t at;       /* byte offset of the word in its element */
    uint32_t unused;
    uint64_t value;    /* the word: an address in this heap */
    char what[224];    /* "struct holder @0x4008[1] bytes 8..15: not covered
                          by any field, holds 0x7f.. (offset 0x5010, struct
                          emp @0x5010): ..." */
} tha_lint_t;

/* Forgotten pointer fields: 8-byte aligned words of a struct element that
 * its fields do not wholly cover (bytes left out of the schema, padding)
 * and that hold an address inside the heap's image. Such a word is copied
 * raw: a mirror would hold this heap's address. Warnings, not errors (a
 * struct copied over padding may carry any bytes): Python's heap.check()
 * warns of them (tha.PointerWarning) and `python -m tha verify` prints
 * them. Writes the first cap, in address order, to out (NULL with cap 0
 * only counts) and the total to *n. Words of registered scalar fields are
 * never findings; nor are types whose size is not a multiple of 8 (no
 * pointer fits in each element) or whose uncovered ranges, nested arrays
 * flattened, pass THA_SCHEMA_MAX_SLOTS in all. Read-only; O(live objects
 * x uncovered words of their types). */
THA_API int tha_heap_lint(const tha_heap_t *h, tha_lint_t *out, size_t cap, size_t *n);

/* ---- reachability (reach.c) --------------------------------------------- */

/* An allocation no root reaches. */
typedef struct tha_leak {
    uint64_t offset;   /* of its first element from the base */
    uint32_t type_id;
    uint32_t count;    /* elements */
    uint64_t bytes;    /* payload: count x element size */
} tha_leak_t;

/* Marks every allocation reachable from the roots, following each type's
 * relocation table: every data pointer slot (struct, void, char and other
 * primitive pointers, in arrays and nested structs) that holds an address
 * inside a live allocation marks that allocation, interior addresses
 * included (&team[3], a char * into the middle of a buffer). Function-
 * pointer slots and integer fields are never references; a pointer to freed
 * memory, to metadata or one past the end of its allocation reaches nothing.
 * Untyped allocations (THA_T_RAW) have no slots: they are scanned
 * conservatively, every 8-aligned word of one that holds an address inside
 * a live allocation marks it (an integer that happens to look like one
 * keeps its target alive; an unaligned or disguised pointer is not seen).
 * Writes the first cap unreachable allocations, in address order, to out
 * (NULL with cap 0 only counts) and their total number to *n, which may
 * exceed cap: call again with a larger array. Iterative (no recursion);
 * O(live objects + pointer slots of reachable ones); the mark bitmap
 * (top / 128 bytes) and worklist live outside the region and are freed
 * before returning. Read-only: may run while nothing writes the heap. */
THA_API int tha_leaks(tha_heap_t *h, tha_leak_t *out, size_t cap, size_t *n);
/* Frees every allocation tha_leaks would report, through tha_heap_free (so
 * dirty bits, the pointer map and the next delta carry it to mirrors), and
 * sets *bytes_freed (may be NULL) to the payload bytes freed. Pointers held
 * by the application outside the heap are not roots: what they point to is
 * freed if no root reaches it. */
THA_API int tha_collect(tha_heap_t *h, uint64_t *bytes_freed);
/* The first data pointer slot, in address order, that holds an address
 * inside the image but not inside a live allocation (freed memory,
 * allocator metadata, one past the end of an object, the roots table):
 * returns 1 and sets *slot (region offset of the pointer word) and
 * *target (region offset it holds); 0 if every pointer is NULL, outside
 * the image, or inside a live allocation. tha_heap_check only asks that
 * pointers stay inside the image; a heap that should not dangle (a saved
 * checkpoint: `python -m tha verify`) asks this too. O(live objects +
 * pointer slots); read-only. The words of untyped allocations (THA_T_RAW)
 * are not slots and are not looked at. */
THA_API int tha_heap_dangling(const tha_heap_t *h, uint64_t *slot, uint64_t *target);

/* ---- frames ------------------------------------------------------------ */

enum tha_frame_kind { THA_FRAME_SNAPSHOT = 1, THA_FRAME_DELTA = 2 };

/* The newest frame format this build reads and writes. Version 2 is
 * version 1 plus the base of a same-address source in a header word that
 * version 1 left zero; relocatable frames are still written as version 1
 * (byte for byte what earlier builds wrote and read), same-address frames
 * as version 2, so a build that knows only version 1 refuses them
 * (THA_EVERSION) instead of misreading raw addresses as offsets. */
#define THA_FRAME_VERSION 2
#define THA_FRAME_HEADER_SIZE 96

typedef struct tha_frame_info {
    uint32_t kind;         /* enum tha_frame_kind */
    uint32_t version;
    uint64_t fingerprint;  /* schema of the source */
    uint64_t lineage;
    uint64_t epoch;
    uint64_t seq;
    uint64_t capacity;     /* of the source heap */
    uint64_t top;          /* source image size after this frame */
    uint64_t length;       /* whole frame, header included */
    uint32_t nruns;
    uint64_t nblocks;      /* data blocks carried */
    uint64_t base;         /* same-address source: its base, where a mirror
                              must map the heap (tha_heap_create_at); 0:
                              relocatable */
} tha_frame_info_t;

/* Exact bytes tha_heap_encode(kind) will need now. In diff and wp modes
 * this is where the heap looks for changes; the encode that follows uses
 * what it found (a write in between, from any thread, goes in the next
 * frame), so a buffer of *size bytes is always enough for it unless a heap
 * call in between (alloc, free, touch, roots) changes more blocks. */
THA_API int tha_heap_frame_size(tha_heap_t *h, int kind, size_t *size);
/* Encodes a snapshot (the whole image) or a delta (every block dirtied
 * since the previous frame) into buf, then clears the dirty bits and bumps
 * the sequence number. On any error nothing changes: seq, dirty bits and
 * every pending change stay (in diff and wp modes the changes the call
 * found are kept as dirty bits: the same changes, carried by the next
 * frame). THA_ETOOSMALL: *len holds the size needed, and as after
 * tha_heap_frame_size an encode with *len bytes fits whatever other
 * threads write meanwhile (buf's bytes are then unspecified: a delta is
 * written while its runs are found). A pointer slot holding neither NULL, an address
 * in the region, a registered function, an address inside a bound data
 * extern nor (in a field with a tag mask) a tagged NULL fails with
 * THA_EFOREIGN, the message naming the allocation, the field path, the
 * value and the fix (register the target with tha_schema_add_extern, or
 * clear the field): until then every frame fails the same way.
 * THA_ESTATE while a backlog makes the heap's frames (tha_backlog_encode:
 * an active replicating it): a frame made here would be a seq its standbys
 * never get. */
THA_API int tha_heap_encode(tha_heap_t *h, int kind, void *buf, size_t cap,
                            size_t *len);
/* Verifies the whole frame (checksums, fingerprint, lineage and sequence,
 * every offset and pointer) before writing anything, then applies it.
 * A snapshot replaces the whole state; a delta needs seq == last + 1 from
 * the same lineage. On error the heap is unchanged. THA_ESTATE while a
 * backlog makes the heap's frames (see tha_backlog_encode). */
THA_API int tha_heap_apply(tha_heap_t *h, const void *frame, size_t len);
/* Parses and checks a frame header only (no body checksum). */
THA_API int tha_frame_info(const void *frame, size_t len, tha_frame_info_t *out);
/* The schema a snapshot carries (a new sealed schema; release it). */
THA_API int tha_frame_schema(const void *frame, size_t len, tha_schema_t **out,
                             char *msg, size_t msgcap);

/* Raises the heap's epoch (frames it encodes carry it; frames from older
 * epochs are refused with THA_ESTALE). Appends (epoch, current seq, a random
 * id) to the heap's epoch history, which lives in the image and so reaches
 * its mirrors with the next frame, and its checkpoints. epoch must be
 * greater than the current one. */
THA_API int tha_heap_set_epoch(tha_heap_t *h, uint64_t epoch);
/* The seq where the heap's current history entry began. */
THA_API uint64_t tha_heap_epoch_start(const tha_heap_t *h);

/* One epoch of a heap's history: frames after start_seq (until the next
 * entry's start_seq) were encoded in epoch by the node that drew id. A
 * node may resume from another only if its (epoch, id, seq) lies on the
 * other's history; see docs/protocol.md. */
typedef struct tha_epoch_info {
    uint64_t epoch, start_seq, id;
} tha_epoch_info_t;
/* Copies up to cap entries of the history, oldest first (the last is the
 * current epoch; at most 32 are kept) and returns how many there are. */
THA_API size_t tha_heap_history(const tha_heap_t *h, tha_epoch_info_t *out, size_t cap);

/* ---- durability: checkpoints and the delta log (checkpoint/log/load.c) - */

/* Files are little-endian and versioned (THA_FILE_VERSION); the image and
 * the log travel as the same frames as on the wire. See
 * docs/architecture.md, "Durability".
 *
 * Threads: every call below works on one heap and is serialised with every
 * other call on that heap, like the rest of the heap API. */

#define THA_FILE_VERSION 1

/* Called after each piece of a streamed image: done of total image bytes.
 * Runs on the calling thread, inside the call that was given it. */
typedef void (*tha_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Writes the heap to path atomically: a temp file beside it, fsync, rename
 * over path, fsync of the directory; a crash leaves the old file or the new
 * one. The file holds a header (identity, seq, epoch, capacity, top), the
 * schema, which blocks are dirty, the image as segment frames streamed one
 * ~1 MiB piece at a time (no second copy of the image), and a trailer with
 * a checksum of everything. Dirty bits and seq are untouched (in diff and
 * wp modes the heap's pending changes are collected into dirty bits, which
 * the next delta carries as before), so replication is not disturbed.
 * progress may be NULL. THA_EFOREIGN as for encode; -errno for I/O.
 * Temp files: the temp is "path.tmp-XXXXXX" (mkostemp), held under an
 * exclusive flock(2) by its writer until renamed or unlinked. A writer
 * killed mid-way leaves one behind; the next tha_heap_checkpoint,
 * tha_heap_load (of path and of its log), tha_heap_attach_log and
 * tha_heap_compact (of the log) beside it delete those of path's own naming
 * whose lock they can take (regular files of this user, not symlinks): a
 * live writer's temp, stopped or not, is never touched. */
THA_API int tha_heap_checkpoint(tha_heap_t *h, const char *path,
                                tha_progress_fn progress, void *ctx);

typedef struct tha_checkpoint_info {
    uint32_t version;      /* THA_FILE_VERSION of the file */
    uint64_t fingerprint;  /* of the schema it carries */
    uint64_t lineage;
    uint64_t epoch;
    uint64_t seq;          /* of the heap when written */
    uint64_t capacity;
    uint64_t top;          /* image bytes */
    uint64_t segments;
    uint64_t file_bytes;
    uint64_t base;         /* a same-address heap's base (tha_heap_load maps
                              it there); 0: relocatable */
} tha_checkpoint_info_t;

/* Reads a checkpoint's header (and, with schema non-NULL, the schema it
 * carries: a new sealed schema, functions unbound; release it) without
 * reading the image. Detail of a failure in msg. */
THA_API int tha_checkpoint_info(const char *path, tha_checkpoint_info_t *out,
                                tha_schema_t **schema, char *msg, size_t msgcap);

/* All zero (or a NULL pointer) selects every default. */
typedef struct tha_load_options {
    tha_schema_t *schema;     /* NULL: the one the file carries (functions
                                 unbound). Else compared with the file's:
                                 THA_EMISMATCH names the differing field;
                                 the heap then uses this one (its bindings) */
    int tracking;             /* enum tha_tracking of the new heap */
    const char *log;          /* delta log to replay on top; NULL: none */
    tha_progress_fn progress; /* while the image streams in; NULL: none */
    void *progress_ctx;
    int check;                /* the checkpoint's image is always checked
                                 (tha_heap_check) before the log is
                                 replayed, and every replayed frame is
                                 checked as tha_heap_apply does; 1: the
                                 result is checked whole once more */
} tha_load_options_t;

/* What a load did. On failure only msg is meaningful. */
typedef struct tha_load_report {
    uint64_t checkpoint_seq;  /* seq of the checkpoint */
    uint64_t seq;             /* seq of the heap returned */
    uint64_t frames_applied;  /* log frames replayed */
    uint64_t frames_skipped;  /* log frames the checkpoint already held */
    uint64_t log_end;         /* offset just past the last good frame */
    uint64_t log_size;        /* bytes in the log file */
    int stop_code;            /* 0: the whole log was good; else why replay
                                 stopped (THA_EFRAME torn, THA_ECHECKSUM
                                 corrupt, THA_ESEQ gap or another series) */
    uint64_t stop_offset;     /* where it stopped (the frame's first byte) */
    uint64_t stop_seq;        /* the seq of that frame, 0 if unreadable */
    char msg[256];            /* the stop, or the load's failure, in words */
} tha_load_report_t;

/* A new heap (at an address of the system's choosing, or at the base of a
 * same-address heap's checkpoint: -EEXIST naming the address if it is
 * taken) from a checkpoint:
 * checks the format version, the header, schema and trailer checksums,
 * every segment (checksums, identity, order, pointers) and the checksum of
 * the whole file, then (opt->log) replays the log's valid prefix: frames at
 * or below the checkpoint's seq are skipped, each next delta is applied,
 * and replay stops at the first torn, corrupt or out-of-sequence frame,
 * reporting where in *report (may be NULL). A stopped replay is not a
 * failure: the heap holds the last good state. The loaded heap is at the
 * checkpoint's (or last replayed frame's) seq, lineage and epoch, so it
 * continues the same frame series; blocks that were dirty when the
 * checkpoint was written are dirty again. Returns 0 with *out set, or an
 * error with *out NULL and the detail in report->msg. */
THA_API int tha_heap_load(tha_heap_t **out, const char *path,
                          const tha_load_options_t *opt, tha_load_report_t *report);

#define THA_LOG_FSYNC_ALWAYS 0    /* fdatasync after every frame */
#define THA_LOG_FSYNC_NEVER (-1)  /* leave it to the kernel */

/* Appends every frame the heap encodes (tha_heap_encode, hence
 * tha_backlog_encode and tha_net_sync) or applies (tha_heap_apply) to the
 * log at path, before the frame takes effect. fsync_ms: THA_LOG_FSYNC_ALWAYS,
 * THA_LOG_FSYNC_NEVER, or N > 0: an fdatasync at the first append N ms or
 * more after the last one (tha_heap_sync_log forces one).
 * A new or empty file gets a log header; an existing log must end at the
 * heap's seq and lineage (as after tha_heap_load of it): its torn tail, if
 * any, is cut; otherwise THA_ESEQ.
 * Append failure rule: a frame is made only once it is in the log. If the
 * write (or the fsync the policy asks for) fails, encode/apply fail with
 * that error (-ENOSPC, -EIO), the heap is unchanged (seq, dirty bits) and
 * the log is cut back, so the next call retries. After a failed fsync, or
 * a cut that fails, the log is broken: every encode/apply fails with
 * THA_ESTATE until tha_heap_compact or tha_heap_detach_log.
 * A snapshot of another frame series applied to the heap restarts the log
 * at that snapshot. The heap owns the log until detach or destroy. */
THA_API int tha_heap_attach_log(tha_heap_t *h, const char *path, int64_t fsync_ms);
/* Syncs and closes the log. */
THA_API int tha_heap_detach_log(tha_heap_t *h);
/* fdatasync of what was appended since the last one (no-op if nothing). */
THA_API int tha_heap_sync_log(tha_heap_t *h);
/* 1 with *fsync_ms (may be NULL) set to its policy if h has a working log
 * attached (not broken), else 0. A replication standby asks this to know
 * when an applied frame is in its fsync'd log (ack "persisted"). */
THA_API int tha_heap_log_policy(const tha_heap_t *h, int64_t *fsync_ms);
/* Folds the log into a checkpoint: tha_heap_checkpoint(path), then the log
 * is replaced atomically by an empty one that follows the heap's seq. */
THA_API int tha_heap_compact(tha_heap_t *h, const char *path,
                             tha_progress_fn progress, void *ctx);

/* ---- replication session (sans-I/O) ----------------------------------- */

/* One end of one active<->standby connection: bytes in (tha_session_feed),
 * bytes out (tha_session_output/advance), events out (tha_session_event),
 * time in (tha_session_tick). No sockets, no threads, no clock of its own.
 * The standby end applies frames to its heap itself; the active end streams
 * its heap for bulk sync and its backlog of deltas.
 *
 * Wire: messages of a 20-byte header (magic "THAM", type, flags, payload
 * length, payload CRC32C, header CRC32C) and a payload; tha frames travel
 * inside them unchanged. See docs/protocol.md.
 *
 * Threads: a session, its heap and its backlog are used under one lock
 * held by the driver. */

typedef struct tha_session tha_session_t;
typedef struct tha_backlog tha_backlog_t;

/* Memory touched ahead for a standby's next bulk sync. A bulk sync writes
 * a whole image into pages the process never used, and the first touch of
 * a page (zeroing it; on a VM, the host backing it too) can cost the
 * receive more than the copy of its bytes, and vary 10x from one sync to
 * the next. A reserve maps `bytes` and touches every page at create (in
 * 2 MiB pages where the kernel gives them), so a machine short of memory
 * fails there, at start, and not in the middle of a sync; the next bulk
 * sync of a session configured with it takes those pages for the first
 * `bytes` of its heap (tha_reserve_bytes is 0 after). THA_EINVAL for 0
 * bytes or more than 2^44; THA_ENOMEM if the pages cannot be had. */
typedef struct tha_reserve tha_reserve_t;
THA_API int tha_reserve_create(tha_reserve_t **out, size_t bytes);
THA_API void tha_reserve_destroy(tha_reserve_t *r);
/* The touched bytes it still holds (bytes rounded up to 64 KiB): 0 once a
 * bulk sync took them. */
THA_API size_t tha_reserve_bytes(const tha_reserve_t *r);

#define THA_PROTOCOL_VERSION 2
#define THA_MAC_SIZE 32

enum tha_role { THA_ROLE_ACTIVE = 1, THA_ROLE_STANDBY = 2 };
/* How far a standby has a frame: also the level an active waits for. */
enum tha_ack {
    THA_ACK_NONE = 0,     /* queued for sending */
    THA_ACK_RECEIVED = 1, /* in the standby's memory, not yet applied */
    THA_ACK_APPLIED = 2,  /* applied to the standby's live heap */
    THA_ACK_PERSISTED = 3 /* in the standby's fsync'd log (or checkpoint) */
};

/* One piece of the bytes a MAC covers. */
typedef struct tha_mac_part {
    const void *data;
    size_t len;
} tha_mac_part_t;
/* HMAC-SHA256 under key of the concatenation of parts, computed by the
 * driver (libtha holds no cryptography of its own): Python's hmac, or
 * OpenSSL's HMAC in native programs. */
typedef void (*tha_mac_fn)(void *ctx, const uint8_t *key, size_t key_len,
                           const tha_mac_part_t *parts, size_t nparts,
                           uint8_t out[THA_MAC_SIZE]);

typedef struct tha_session_config {
    int role;                 /* enum tha_role */
    uint64_t node_id;         /* any number naming this node in messages */
    /* The shared secret (copied; NULL/0: no authentication, and the peer
     * must have none either) and the HMAC that uses it (required with a
     * secret). With a secret the handshake proves both ends know it and
     * derives per-direction session keys; every later message carries a
     * MAC under them, so nothing a peer says is acted on before it proved
     * the secret, and a relay or an on-path attacker can only drop the
     * connection. See docs/protocol.md, "Security model". */
    const void *secret;
    size_t secret_len;
    tha_mac_fn mac;
    void *mac_ctx;
    uint64_t heartbeat_ms;    /* send a heartbeat after this much silence; 0 = 200 */
    uint64_t timeout_ms;      /* peer silent this long: THA_EV_TIMEOUT; also the
                                 deadline of the handshake; 0 = 2000 */
    uint32_t chunk_bytes;     /* bulk sync message size; 0 = 1 MiB */
    uint64_t max_message;     /* refuse larger messages; 0 = 4 GiB - 1. Before
                                 the handshake ends, THA_HANDSHAKE_MAX applies */
    uint64_t min_epoch;       /* standby: an active below this epoch is fenced
                                 at its HELLO, before it can send a frame (a
                                 coordinator's current leader epoch: the old
                                 leader, frozen and woken, is refused
                                 whatever it sends next); 0: the standby
                                 heap's own epoch only */
    tha_reserve_t *reserve;   /* standby: the next bulk sync's heap takes its
                                 pages (not owned; it must outlive the
                                 session, and sessions that share one are
                                 driven under one lock); NULL: fresh pages */
    const tha_schema_t *bindings; /* standby: this process's functions and data
                                 externs, bound by name (tha_schema_bind_from)
                                 in the schema the active sends, which a bulk
                                 sync's heap is made of (not owned; it must
                                 outlive the session). A standby's heap, if
                                 it has one, binds over them (it lends what
                                 they leave out). A name left unbound costs
                                 nothing until a word needs it; then a bulk
                                 sync refuses the active for good (REFUSE
                                 THA_EMISMATCH naming it, nothing taken
                                 live) and a delta is NACKed */
} tha_session_config_t;

/* The largest message a session accepts before the peer proved itself. */
#define THA_HANDSHAKE_MAX 1024u

enum tha_event_type {
    THA_EV_READY = 1,    /* handshake done. active: a = standby's applied seq,
                            b = 1 if resuming from the backlog, 0 if bulk */
    THA_EV_BULK_BEGIN,   /* standby: bulk sync started; a = image bytes */
    THA_EV_BULK_PROGRESS,/* both: a = bytes so far, b = image bytes */
    THA_EV_BULK_DONE,    /* standby: a new heap is live at seq (take it with
                            tha_session_take_heap); active: stream sent */
    THA_EV_APPLIED,      /* standby: frame seq applied to the live heap */
    THA_EV_ACK,          /* active: standby has seq at level a (enum tha_ack) */
    THA_EV_FENCED,       /* the peer knows a newer epoch (epoch); an active
                            must stop: a newer active exists */
    THA_EV_REFUSED,      /* the peer refused the connection: code, msg; a = 1
                            if the peer had proven the secret (else anyone
                            could have sent it: trust it no further) */
    THA_EV_ERROR,        /* the peer broke the protocol or a frame failed:
                            code, msg; the connection must be closed */
    THA_EV_TIMEOUT,      /* nothing from the peer for timeout_ms */
    THA_EV_HEARTBEAT     /* peer alive: a = its seq (active: last encoded) */
};

typedef struct tha_event {
    int type;            /* enum tha_event_type */
    int code;            /* THA_E* for REFUSED / ERROR */
    uint64_t seq;
    uint64_t epoch;
    uint64_t a, b;
    char msg[256];
} tha_event_t;

typedef struct tha_session_status {
    int role;
    int state;           /* 0 handshake, 1 bulk, 2 catching up, 3 streaming,
                            4 closed */
    uint64_t peer_node;
    uint64_t peer_seq;   /* last seq the peer reported */
    uint64_t sent_seq;   /* active: last frame queued to this peer */
    uint64_t acked[4];   /* active: highest seq acked per enum tha_ack;
                            standby: [2] last applied, [3] last acked persisted */
    uint64_t bytes_in, bytes_out;
    uint64_t bulk_done, bulk_total; /* bytes of the current bulk sync */
    uint64_t last_heard_ms;
} tha_session_status_t;

/* A bounded, shared list of the newest delta frames (for resume). Frames
 * are copied in; the oldest are dropped past max_bytes. */
THA_API int tha_backlog_create(tha_backlog_t **out, uint64_t max_bytes);
THA_API void tha_backlog_destroy(tha_backlog_t *b);
/* frame must be a delta of the backlog's heap, next in sequence. */
THA_API int tha_backlog_push(tha_backlog_t *b, const void *frame, size_t len);
/* Encodes h's next delta straight into the backlog (no copy; the memory of
 * a dropped big frame is reused). What tha_heap_encode does to h; on error
 * the detail is in tha_heap_errmsg(h) and nothing changed (seq, dirty bits:
 * the next call carries the changes). Never fails because other threads
 * write the heap meanwhile. From the first success the backlog makes h's
 * frames: tha_heap_encode(h) refuses (THA_ESTATE), another backlog too,
 * until the backlog or h is destroyed. THA_ESEQ if h is not at the
 * backlog's last seq and lineage (a frame of h made and not pushed, a
 * snapshot applied to h). */
THA_API int tha_backlog_encode(tha_backlog_t *b, tha_heap_t *h, uint64_t *seq,
                               size_t *len);
/* A delta of up to 8 MiB is encoded into a buffer the backlog reuses (in
 * cache, no page faults) and sent from there; this copies the newest one
 * into memory of its own, which the next tha_backlog_encode would
 * otherwise do first. Call it after tha_session_pump, while waiting for
 * the acks, to take that copy off the sync's path. 0, or THA_ENOMEM (the
 * frame stays where it is, intact). */
THA_API int tha_backlog_settle(tha_backlog_t *b);
THA_API int tha_backlog_range(const tha_backlog_t *b, uint64_t *first_seq,
                              uint64_t *last_seq, uint64_t *bytes);

/* heap: active: the heap it replicates; standby: its current heap or NULL
 * (a new standby gets one by bulk sync). backlog: active only. Neither is
 * owned; both must outlive the session, except a standby heap replaced by
 * bulk sync (see tha_session_take_heap). */
THA_API int tha_session_create(tha_session_t **out, const tha_session_config_t *cfg,
                               tha_heap_t *heap, tha_backlog_t *backlog);
THA_API void tha_session_destroy(tha_session_t *s);
THA_API const char *tha_session_errmsg(const tha_session_t *s);
/* Queues the opening message. Call once, right after connecting. */
THA_API int tha_session_start(tha_session_t *s, uint64_t now_ms);
/* Consumes len bytes from the peer (any split). A protocol violation is a
 * THA_EV_ERROR event and a negative return; the session is then closed. */
THA_API int tha_session_feed(tha_session_t *s, const void *data, size_t len,
                             uint64_t now_ms);
/* Zero-copy input: a buffer inside the session to receive into (*cap > 0
 * bytes; for a large message, exactly what is missing of it, so it lands
 * in place and is applied from there; for a bulk sync segment's data in a
 * session without a secret, the staging heap where that data belongs). Valid until the next call on s;
 * then report the bytes written with tha_session_received, which acts as
 * tha_session_feed of them. Only one thread may receive into a session. */
THA_API int tha_session_recv_buffer(tha_session_t *s, void **buf, size_t *cap);
THA_API int tha_session_received(tha_session_t *s, size_t n, uint64_t now_ms);
/* The next bytes to send (*len 0: nothing now). Valid until the next call
 * on s; tell the session how much went out with tha_session_advance. */
THA_API int tha_session_output(tha_session_t *s, const void **data, size_t *len);
THA_API int tha_session_advance(tha_session_t *s, size_t n);
/* Heartbeats and timeouts. Call it at least every heartbeat_ms: a longer
 * gap between ticks counts as this process's own stall (it could not read
 * what the peer sent), not as the peer's silence, so the timeout clock
 * skips it (docs/protocol.md, Liveness). */
THA_API int tha_session_tick(tha_session_t *s, uint64_t now_ms);
/* Active: queue the frames pushed to the backlog since the last call.
 * ack: the level the standby should acknowledge them at. */
THA_API int tha_session_pump(tha_session_t *s, int ack);
/* 1 and fills ev while events are pending, 0 when none. */
THA_API int tha_session_event(tha_session_t *s, tha_event_t *ev);
/* Standby: the live heap (changes when a bulk sync completes). After
 * THA_EV_BULK_DONE the caller takes ownership of the new heap with this
 * call; the session keeps using it until destroyed. */
THA_API tha_heap_t *tha_session_take_heap(tha_session_t *s);
/* Standby: the driver made the live heap durable through seq by other
 * means than the log (a checkpoint with a fresh log after a bulk sync, a
 * compaction): acknowledge "persisted" up to seq (capped at the last seq
 * this session applied or went live at). Frames applied to a heap whose
 * log fsyncs "always" are acked persisted by the session itself; with
 * "every N ms" tha_session_tick syncs the log every N ms and acks. */
THA_API int tha_session_persisted(tha_session_t *s, uint64_t seq);
/* Refuses the peer (standby: the active after a promotion) with a fencing
 * message carrying the epoch, then closes. */
THA_API int tha_session_fence(tha_session_t *s, uint64_t epoch);
THA_API int tha_session_status(const tha_session_t *s, tha_session_status_t *out);

/* Sends the session's pending output to fd without blocking
 * (MSG_DONTWAIT), several queued items per sendmsg, stopping before an item larger than
 * max_item bytes (0: no limit) or when the socket is full. For a driver
 * that acks in the same wake-up that received the frame. *sent (may be
 * NULL) gets the byte count. Returns 0, or -errno if the socket failed. */
THA_API int tha_net_send_output(tha_session_t *s, int fd, size_t max_item, size_t *sent);

/* Threads (1 or 2) that encode/apply may use for a run of 16 MiB or more
 * (each half is copied, rewritten and checksummed on its own core), that
 * encode uses for a delta of 8192 blocks or more, and that the diff/wp
 * shadow compare uses for 4 MiB or more. Default 2 on machines with two
 * CPUs or more. Process-wide. */
THA_API int tha_set_threads(int n);

/* ---- native driver: blocking TCP (net.c) ------------------------------ */

/* A tha_net_t is one replication endpoint over plain TCP for native
 * programs: it moves bytes between a socket and a tha_session_t and does
 * nothing else (the protocol is the session's, the same one tha.Active and
 * tha.Standby speak, so a C active can feed a Python standby and back).
 * Every call blocks, bounded by a timeout; there are no threads. Sockets are
 * non-blocking underneath, served with poll(): partial reads and writes,
 * EINTR and heartbeats (tha_session_tick) are handled inside every call.
 *
 * Between calls nothing moves: an active must call tha_net_sync or
 * tha_net_poll at least every heartbeat_ms, or a standby that promotes on
 * silence will take it for dead.
 *
 * Authentication: the caller gives the shared secret and an HMAC-SHA256
 * (a tha_mac_fn) in the options; libtha has no cryptography of its own and
 * does not link libcrypto, so native users without OpenSSL are not forced
 * to have it, and those with another crypto library use that. The example
 * examples/c/netauth.h uses OpenSSL's HMAC when the build finds libcrypto.
 * With a secret every message after the handshake is authenticated under
 * a per-connection key (docs/protocol.md, "Security model"); without one
 * both ends must run without, and the standby refuses to listen on a
 * non-loopback address. The stream is not encrypted: confidentiality
 * needs TLS, which this driver does not do (tha.Active and tha.Standby
 * take an ssl.SSLContext).
 *
 * Threads: a tha_net_t and the heap it replicates or mirrors are used by
 * one thread at a time; the heap must not be written during a call. */

typedef struct tha_net tha_net_t;

/* All zero (or a NULL pointer) selects every default. */
typedef struct tha_net_options {
    const void *secret;        /* the shared secret; NULL: no authentication */
    size_t secret_len;         /* at most 256 bytes */
    tha_mac_fn mac;            /* HMAC-SHA256; required with a secret */
    void *mac_ctx;             /* passed to mac */
    uint64_t node_id;          /* names this node in messages; 0: random */
    uint64_t heartbeat_ms;     /* send a heartbeat after this much silence; 0 = 200 */
    uint64_t timeout_ms;       /* peer silent this long is gone; 0 = 2000 */
    uint64_t open_timeout_ms;  /* connect, handshake and bulk sync may go this
                                  long without progress; 0 = 10000 */
    uint64_t backlog_bytes;    /* active: deltas kept for resume; 0 = 64 MiB */
    /* Called with every session event (progress, acks, errors) as it is
     * drained, from inside the net call, after the handle took it in (for
     * THA_EV_BULK_DONE, tha_net_heap already returns the new heap); NULL:
     * none. */
    void (*on_event)(void *ctx, const tha_event_t *ev);
    void *event_ctx;
} tha_net_options_t;

/* Active: creates the handle for replicating heap to the standby listening
 * at host:port, connects, runs the handshake, then resumes the standby from
 * the backlog or writes the whole bulk sync before returning.
 * heap is not owned and must outlive the handle; opt is copied.
 * Returns 0; THA_EINVAL / THA_ENOMEM with *out NULL; or a connection error
 * with *out set to a disconnected handle (tha_net_errmsg says why;
 * tha_net_reconnect retries): -errno (ECONNREFUSED, ...), THA_ETIMEOUT,
 * THA_EAUTH (wrong secret), THA_EMISMATCH (the standby holds another
 * schema), THA_EFENCED (the standby knows a newer epoch: this active was
 * replaced and must stop), THA_EPROTO, THA_ECLOSED. */
THA_API int tha_net_active_open(tha_net_t **out, tha_heap_t *heap, const char *host,
                                uint16_t port, const tha_net_options_t *opt);
/* Active: drops the connection if any and connects again; the standby
 * resumes from the backlog if it still holds the next frame, else bulk
 * syncs. Returns as tha_net_active_open. */
THA_API int tha_net_reconnect(tha_net_t *n);
/* Active: encodes a delta of everything dirtied since the last sync, keeps
 * it in the backlog, sends it and waits until the standby has it at level
 * ack (enum tha_ack; THA_ACK_NONE: until it is written to the socket).
 * *seq (may be NULL) gets the frame's sequence number, also on failure
 * once the frame exists. The application holds its replies to clients
 * until this returns 0.
 * timeout_ms (0 = 5000) bounds the whole call. THA_ETIMEOUT: the standby
 * did not acknowledge in time; the connection stays up and the frame
 * queued, nothing is downgraded. THA_ECLOSED or -errno: the connection is
 * gone; the frame stays in the backlog for tha_net_reconnect.
 * THA_EFENCED: a standby was promoted; this and every later call fail.
 * THA_ACK_PERSISTED waits for a standby that keeps a delta log (one that
 * keeps none never acknowledges it: THA_ETIMEOUT).
 * An encode failure (THA_EFOREIGN) changes nothing. */
THA_API int tha_net_sync(tha_net_t *n, int ack, uint32_t timeout_ms, uint64_t *seq);
/* Either role: serves the connection for wait_ms (heartbeats, acks,
 * frames) and returns 0, or the error that closed it. */
THA_API int tha_net_poll(tha_net_t *n, uint32_t wait_ms);

/* Standby: listens on host:port (*port 0: any free port, written back).
 * heap: the state to start from (not owned; its schema must match the
 * active's) or NULL: the first bulk sync creates one from the schema the
 * active sends. A non-loopback host needs opt->secret (THA_EINVAL otherwise).
 * On failure *out is NULL. */
THA_API int tha_net_standby_listen(tha_net_t **out, tha_heap_t *heap,
                                   const char *host, uint16_t *port,
                                   const tha_net_options_t *opt);
/* Standby: waits up to timeout_ms (0: forever) for an active to connect,
 * replacing any current connection. THA_ETIMEOUT if none came. */
THA_API int tha_net_standby_accept(tha_net_t *n, uint32_t timeout_ms);
/* Standby: applies what the active sends and acknowledges it, until the
 * active goes away: 0 when it closed the connection, THA_ETIMEOUT when a
 * proven active fell silent for opt.timeout_ms (the failover signal),
 * another THA_E* or -errno when the connection broke (THA_EAUTH: wrong
 * secret, or a peer that did not finish the handshake within timeout_ms;
 * garbage, ...): accept again, it says nothing about the active. With
 * timeout_ms > 0 returns 1 after that long if the active is still there;
 * 0 serves until it goes away. Frames refused by the heap are reported
 * to the active (it bulk syncs) and do not end the call. */
THA_API int tha_net_standby_serve(tha_net_t *n, uint32_t timeout_ms);

/* The heap: active: the one given to open; standby: the live mirror (NULL
 * before the first bulk sync), replaced when a bulk sync completes. A
 * standby heap created by bulk sync is owned by n and destroyed by
 * tha_net_close unless take is 1, which hands it to the caller (n keeps
 * serving into it: destroy it only after tha_net_close). */
THA_API tha_heap_t *tha_net_heap(tha_net_t *n, int take);
/* Detail of the last failure on n ("standby 127.0.0.1:7400 refused: ..."). */
THA_API const char *tha_net_errmsg(const tha_net_t *n);
/* Closes the socket(s) and frees n (and, for an active, its backlog). NULL
 * is ignored. */
THA_API void tha_net_close(tha_net_t *n);

/* CRC32C (Castagnoli), hardware-accelerated where the CPU has it. */
THA_API uint32_t tha_crc32c(uint32_t crc, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* THA_H */

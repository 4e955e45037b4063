/* tha_internal.h — what the C files of libtha share and nobody else sees.
 *
 * Cross-file internals are named tha__*; file-local helpers are static.
 * Region layout, allocator records and frame layout are defined here because
 * arena.c, track.c and codec.c all read them.
 */
#ifndef THA_INTERNAL_H
#define THA_INTERNAL_H

#include "tha.h"

#include <stdarg.h>
#include <stdbool.h>
#include <string.h>

#ifdef THA_DEBUG
#include <stdio.h>
#include <stdlib.h>
#define THA_ASSERT(c)                                                          \
    do {                                                                       \
        if (!(c)) {                                                            \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__,         \
                    __LINE__, #c);                                             \
            abort();                                                           \
        }                                                                      \
    } while (0)
#else
#define THA_ASSERT(c) ((void)0)
#endif

#define THA__LIKELY(x) __builtin_expect(!!(x), 1)
#define THA__UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Writes a formatted detail message into buf (cap bytes) and returns code. */
int tha__fail(char *buf, size_t cap, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records the detail of a failed call on heap h and returns code. */
#define tha__hfail(h, code, ...) tha__fail((h)->err, sizeof (h)->err, (code), __VA_ARGS__)

static inline uint64_t tha__align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) & ~(a - 1);
}

/* ---- schema (schema.c) ------------------------------------------------- */

/* One pointer slot of an element, nested structs and arrays flattened. */
typedef struct tha__slot {
    uint32_t offset;  /* bytes from the element start; multiple of 8 */
    uint32_t is_func; /* 1: function pointer (registry id on the wire) */
} tha__slot_t;

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
    uint32_t defined;           /* 0: id reserved but never registered */
    uint64_t size, align;
    tha__field_t *fields;
    uint32_t nfields, fields_cap;
    tha__slot_t *slots;         /* relocation table of one element */
    uint32_t nslots;
    uint32_t seal_state;        /* 0 unvisited, 1 in progress, 2 done */
    uint32_t handle;            /* registration order (THA_T_HANDLE + it) */
} tha__type_t;

typedef struct tha__func {
    char name[THA_NAME_MAX];
    void (*fn)(void);           /* NULL: declared but not bound here */
} tha__func_t;

struct tha_schema {
    int refs;                   /* owners: the creator and each heap */
    int sealed;                 /* no more add_* once set */
    tha__type_t *types;         /* indexed by type id; [0] unused, prims 1..12 */
    uint32_t ntypes;            /* highest id + 1 */
    uint32_t types_cap;
    tha__func_t *funcs;
    uint32_t nfuncs, funcs_cap;
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
                                   per-field duplicate scan (deser sorts) */
    uint64_t max_type_bytes;    /* deserializing: a type larger than this is
                                   refused before anything is built (the
                                   capacity of the heap it comes with); 0: any */
    uint64_t max_size;          /* once sealed: the largest user type... */
    uint32_t max_size_id;       /* ...and its id (0: no user types) */
    uint64_t total_slots;       /* once sealed: relocation-table entries of all
                                   types (<= THA_SCHEMA_MAX_SLOTS) */
    char err[256];
};

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
/* "struct emp field reports[2]" for byte off of one element of type id. */
void tha__schema_describe(const tha_schema_t *s, uint32_t id, uint64_t off,
                          char *buf, size_t cap);

/* ---- region layout (arena.c) ------------------------------------------- */

#define THA__PAGE 4096u          /* allocator page */
#define THA__BLOCK 64u           /* tracking and transfer unit */
#define THA__HDR 8u              /* object header before each payload */
#define THA__SLAB_PAGES 16u      /* pages per slab (64 KiB) */
#define THA__SLAB_HDR 64u        /* slab record at the slab start */
#define THA__MAX_SLOT 8192u      /* larger allocations take page spans */
#define THA__NCLASSES 32u
#define THA__GRANULE (64u << 10) /* capacity is a multiple of this */
#define THA__COMMIT_STEP (1u << 20) /* commit growth, bytes */
#define THA__REGION_MAGIC 0x324e474552414854ull /* "THAREGN2" */
#define THA__MAX_EPOCHS 32u      /* epoch history entries kept in the region */

/* One epoch of the heap's history: frames with seq > start (up to the next
 * entry's start) were encoded in this epoch by the node that drew id when
 * it began the epoch (ids tell apart two nodes that promoted to the same
 * epoch number). Kept in the region so that it travels with every image,
 * delta, bulk sync and checkpoint: a mirror's history is its source's. */
typedef struct tha__epoch {
    uint64_t epoch;
    uint64_t start;  /* seq the epoch began at */
    uint64_t id;     /* random */
} tha__epoch_t;

/* At offset 0 of the region. Every reference is an offset from the base
 * (0 = none), so the image means the same at any address. */
typedef struct tha__region {
    uint64_t magic;
    uint64_t capacity;         /* bytes reserved */
    uint64_t top;              /* bytes in use, page aligned; only grows */
    uint64_t pagemap_off;      /* tha__page_t[npages] */
    uint64_t npages;           /* capacity / THA__PAGE */
    uint64_t roots_off;        /* tha__root_t[THA_MAX_ROOTS] */
    uint64_t data_off;         /* first allocatable page */
    uint64_t free_spans;       /* first free page span, 0 = none */
    uint64_t live_objects;
    uint64_t live_bytes;       /* payload bytes */
    uint64_t nroots;           /* root entries in use, packed at the start */
    uint64_t class_slabs[THA__NCLASSES]; /* slabs with a free slot, per class */
    uint64_t nepochs;          /* entries of epochs in use, oldest first; >= 1 */
    tha__epoch_t epochs[THA__MAX_EPOCHS]; /* the last one is the current epoch */
} tha__region_t;

/* Page map entry, one per page of the capacity. */
enum {
    THA__PG_UNUSED = 0, /* above top */
    THA__PG_META,       /* region header, page map, roots */
    THA__PG_FREE_HEAD,  /* first page of a free span; link = npages */
    THA__PG_FREE_TAIL,  /* other pages of a free span; link = head page */
    THA__PG_SLAB_HEAD,  /* first page of a slab; cls set; link = npages */
    THA__PG_SLAB_TAIL,  /* link = head page */
    THA__PG_SPAN_HEAD,  /* first page of a large allocation; link = npages */
    THA__PG_SPAN_TAIL   /* link = head page */
};

typedef struct tha__page {
    uint8_t kind;
    uint8_t cls;     /* size class of a slab head */
    uint16_t unused;
    uint32_t link;   /* see the kinds above */
} tha__page_t;

/* At the start of every slab; slots follow at +THA__SLAB_HDR. */
typedef struct tha__slab {
    uint64_t free;     /* offset of the first free slot, 0 = none */
    uint64_t next;     /* next slab of the class with a free slot */
    uint64_t prev;
    uint32_t nslots;
    uint32_t nfree;    /* free slots, listed or above bump */
    uint32_t bump;     /* slots at index >= bump were never used */
    uint32_t cls;
    uint32_t on_list;  /* 1 while linked in class_slabs */
    uint32_t unused[5];
} tha__slab_t;

/* At the start of every free page span. */
typedef struct tha__span {
    uint64_t next, prev; /* free span list, offsets */
    uint64_t npages;
} tha__span_t;

/* Before every payload. count == 0 marks a free slot. */
typedef struct tha__objhdr {
    uint32_t type_id;
    uint32_t count;
} tha__objhdr_t;

typedef struct tha__root {
    char name[THA_NAME_MAX - 8]; /* "" = empty entry */
    uint64_t offset;             /* target, 0 = none */
} tha__root_t;

_Static_assert(sizeof(tha__root_t) == THA__BLOCK, "root is one block");
_Static_assert(sizeof(tha__slab_t) == THA__SLAB_HDR, "slab record size");

/* A delta log as the heap sees it: hooks, installed by tha_heap_attach_log
 * (log.c) and removed by tha_heap_detach_log, that the heap's own calls go
 * through (encode and apply append, tha_heap_sync_log, tha_heap_log_policy,
 * tha_heap_destroy). Nothing below the io layer names the log itself. */
struct tha__frame_hdr; /* frame.h: the heap only hands it on */
typedef struct tha__log_sink {
    /* A frame the heap is about to commit (encoded, or verified for apply),
     * with its parsed header: 0 once the log holds it (synced as its policy
     * says); else the error with the detail in h->err, the log as it was,
     * and the heap must not commit the frame. */
    int (*append)(void *log, tha_heap_t *h, const struct tha__frame_hdr *hd,
                  const void *frame, size_t len);
    /* Makes every appended frame durable (fdatasync); the detail in h->err. */
    int (*sync)(void *log, tha_heap_t *h);
    /* 1 and the fsync policy (THA_LOG_FSYNC_ALWAYS, _NEVER or a period in
     * ms) while the log takes appends; 0 once it is broken. */
    int (*policy)(const void *log, int64_t *fsync_ms);
    /* Syncs what it can and frees the log (the heap is being destroyed). */
    void (*close)(void *log);
} tha__log_sink_t;

struct tha_heap {
    tha_schema_t *schema;   /* own reference */
    uint8_t *base;          /* region start; page aligned */
    uint64_t capacity;      /* bytes reserved */
    uint64_t committed;     /* bytes read-write from base */
    uint64_t *dirty;        /* bit per block: changed since the last frame */
    uint64_t *dsum;         /* bit per word of dirty: that word may be nonzero
                               (scans, clears and counts skip clean stretches) */
    uint8_t *ptrmap;        /* byte per block: bit i = word i is a pointer */
    uint8_t *shadow;        /* diff and wp modes: the image as of the last
                               frame (capacity bytes reserved; else NULL) */
    int collected;          /* diff/wp: frame_size just collected changes */
    void *scratch;          /* heapcheck.c: a delta's run index, kept */
    size_t scratch_cap;
    int fuzzy;              /* a staging heap being filled by bulk sync: not
                               consistent until tha__check_staging passes, so
                               deltas are not checked against it */
    int mech;               /* enum tha__mech: how changes are found */
    int uffd;               /* wp/uffd: the userfaultfd; -1 otherwise */
    int pagemap;            /* wp/uffd: /proc/self/pagemap; -1 otherwise */
    int slot;               /* wp/mprotect: signal handler registry; -1 */
    uint64_t *wpages;       /* wp/mprotect: bit per 4 KiB page written since
                               the last frame, set by the SIGSEGV handler */
    uint64_t *wtaken;       /* wp/mprotect: the set taken by a collect */
    uint64_t islands;       /* wp/mprotect: pages/chunks made writable since
                               the last frame (atomic) */
    uint32_t overflow;      /* wp/mprotect: 1 = the whole heap was made
                               writable; diff all of it at the next frame */
    uint64_t nblocks;       /* capacity / THA__BLOCK */
    uint64_t seq;           /* last frame encoded or applied */
    uint64_t epoch;         /* == the region's last history entry's epoch
                               once a frame of that epoch is encoded/applied */
    uint64_t lineage;       /* random at create; taken from applied snapshots */
    int tracking;
    uint64_t frames_encoded, bytes_encoded, frames_applied, bytes_applied;
    const tha__log_sink_t *log_sink; /* the attached delta log's hooks
                               (tha_heap_attach_log); NULL = no log */
    void *log;              /* the log itself, handed to its hooks */
    struct tha_backlog *backlog; /* the backlog whose tha_backlog_encode makes
                               this heap's frames (tha_heap_encode refuses
                               while set); it points back (tha_backlog.heap)
                               and whichever is destroyed first unlinks both */
    char err[256];
};

static inline tha__region_t *tha__reg(const tha_heap_t *h) {
    return (tha__region_t *)h->base;
}
static inline tha__page_t *tha__pagemap(const tha_heap_t *h) {
    return (tha__page_t *)(h->base + tha__reg(h)->pagemap_off);
}
#define THA__AT(h, off, T) ((T *)((h)->base + (off)))

/* Size class of a slot size (header included), or -1 for a page span. */
int tha__size_class(uint64_t slot_bytes);
uint32_t tha__class_size(int cls);

/* Commits the region up to at least bytes. */
int tha__commit(tha_heap_t *h, uint64_t bytes);
/* Offset of the allocation payload holding byte off, 0 if none live. */
uint64_t tha__find(const tha_heap_t *h, uint64_t off, tha__objhdr_t **hdr);
/* Lays out an empty region (header, page map, roots) in a committed heap. */
int tha__region_init(tha_heap_t *h);

/* Where the parts of a region of capacity bytes lie: [header][roots][page
 * map], then the pages from data_off. The one place this is computed: the
 * allocator lays regions out with it, and every reader of an image from
 * elsewhere (apply, segments, the heap check) compares with it. */
typedef struct tha__layout {
    uint64_t npages;       /* capacity / THA__PAGE */
    uint64_t roots_off;    /* tha__root_t[THA_MAX_ROOTS] */
    uint64_t pagemap_off;  /* tha__page_t[npages] */
    uint64_t data_off;     /* first allocatable page; blocks below it are
                              allocator metadata and hold no pointers */
} tha__layout_t;
tha__layout_t tha__region_layout(uint64_t capacity);

/* The heap's log, through its sink (no-ops without one). */
static inline int tha__log_append(tha_heap_t *h, const struct tha__frame_hdr *hd,
                                  const void *frame, size_t len) {
    return h->log_sink ? h->log_sink->append(h->log, h, hd, frame, len) : 0;
}

/* ---- tracking (track.c) ------------------------------------------------ */

/* Marks the blocks overlapping [off, off+len) dirty. */
void tha__mark(tha_heap_t *h, uint64_t off, uint64_t len);
void tha__clear_dirty(tha_heap_t *h);
/* diff and wp modes: marks every block written since the last collect
 * that differs from the shadow and brings the shadow up to date; nothing
 * in explicit mode. */
void tha__track_collect(tha_heap_t *h);

/* ---- write protection (wp.c) ------------------------------------------ */

enum tha__mech {
    THA__MECH_EXPLICIT = 0, /* touch() and library writes only */
    THA__MECH_DIFF,         /* compare all of [0, top) with the shadow */
    THA__MECH_UFFD,         /* userfaultfd async WP + PAGEMAP_SCAN */
    THA__MECH_MPROTECT      /* PROT_READ + SIGSEGV handler */
};
/* "explicit", "shadow-diff", "uffd-wp-async", "mprotect". */
const char *tha__mech_name(int mech);
/* Picks and sets up the mechanism for requested (THA_TRACK_WP or AUTO);
 * sets h->mech and h->tracking. Before the first commit. */
int tha__wp_open(tha_heap_t *h, int requested);
void tha__wp_close(tha_heap_t *h);
/* The mechanism THA_TRACK_AUTO picks in this process (uffd or diff). */
int tha__wp_auto_mech(void);
/* After tha__wp_open on a heap already committed: protects what is. */
int tha__wp_start(tha_heap_t *h);
/* Ends wp on a live heap (pages writable again); h->mech becomes diff. */
void tha__wp_stop(tha_heap_t *h);
/* [from, to) was just committed: protect it. */
int tha__wp_committed(tha_heap_t *h, uint64_t from, uint64_t to);
/* [off, off+len) was just dropped with MADV_DONTNEED. */
void tha__wp_zapped(tha_heap_t *h, uint64_t off, uint64_t len);
/* Pages [from, to) (offsets in the region) may have been written since the
 * last collect: the collector's report, given by track.c. */
typedef void (*tha__pages_fn)(tha_heap_t *h, uint64_t from, uint64_t to);
/* The wp half of tha__track_collect: every page written since the last
 * collect goes to found, in runs. */
void tha__wp_collect(tha_heap_t *h, tha__pages_fn found);
/* Diff mode: the shadow takes n blocks at block b0 as they are now (after
 * an apply wrote them, so they do not count as local changes). */
void tha__track_sync_shadow(tha_heap_t *h, uint64_t b0, uint64_t n);
uint64_t tha__count_dirty(const tha_heap_t *h);
/* Sets pointer-map bits for the slots of count elements of t at off. */
void tha__ptrmap_set(tha_heap_t *h, uint64_t off, const tha__type_t *t,
                     uint32_t count);
/* Clears pointer-map bits of [off, off+len) (8-aligned) and marks dirty the
 * blocks whose bits changed, so mirrors learn the words are data now. */
void tha__ptrmap_clear(tha_heap_t *h, uint64_t off, uint64_t len);

/* ---- frames (frame.c) -------------------------------------------------- */

#define THA__FRAME_MAGIC 0x46414854u /* "THAF" */
#define THA__FUNC_TAG (1ull << 63)   /* pointer word holding a registry id */

/* On the wire, little-endian, THA_FRAME_HEADER_SIZE bytes. */
typedef struct tha__frame_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t kind;
    uint32_t header_size;  /* THA_FRAME_HEADER_SIZE */
    uint32_t nruns;
    uint64_t fingerprint;
    uint64_t lineage;
    uint64_t epoch;
    uint64_t seq;
    uint64_t capacity;     /* of the source */
    uint64_t top;
    uint64_t length;       /* whole frame */
    uint64_t nblocks;
    uint32_t schema_len;   /* snapshot: schema bytes right after the header */
    uint32_t body_crc;     /* CRC32C of every byte after the header */
    uint32_t reserved;
    uint32_t header_crc;   /* CRC32C of the bytes before this field */
} tha__frame_hdr_t;

_Static_assert(sizeof(tha__frame_hdr_t) == THA_FRAME_HEADER_SIZE, "frame header");

/* One run of consecutive blocks in the body: this record, then nblocks mask
 * bytes padded to 8, then nblocks * THA__BLOCK data bytes. */
typedef struct tha__run {
    uint64_t offset;   /* of the first block */
    uint64_t nblocks;
} tha__run_t;

#define THA__FRAME_SEGMENT 3 /* one run of a heap, streamed by bulk sync */

/* Bytes of one run of nblocks in a body: the record, the mask bytes padded
 * to 8, the blocks. */
static inline uint64_t tha__run_bytes(uint64_t nblocks) {
    return sizeof(tha__run_t) + tha__align_up(nblocks, 8) + nblocks * THA__BLOCK;
}
/* A segment of nblocks (one run; none at the image end): what comes before
 * its data (header, run record, mask), and all of it. */
static inline uint64_t tha__segment_head_bytes(uint64_t nblocks) {
    return THA_FRAME_HEADER_SIZE + sizeof(tha__run_t) + tha__align_up(nblocks, 8);
}
static inline uint64_t tha__segment_bytes(uint64_t nblocks) {
    return nblocks ? tha__segment_head_bytes(nblocks) + nblocks * THA__BLOCK
                   : THA_FRAME_HEADER_SIZE;
}

/* "snapshot", "delta" or "segment", for messages. */
const char *tha__frame_kind_name(int kind);
/* A header stamped with h's identity (schema fingerprint, lineage, epoch,
 * capacity, top) for a frame of kind, seq and length; run counts and CRCs
 * are the encoder's to fill. */
void tha__frame_fill(const tha_heap_t *h, tha__frame_hdr_t *hd, int kind, uint64_t seq,
                     uint64_t length);
/* Sets hd's body CRC and header CRC and writes it at out (the frame start). */
void tha__frame_finish(tha__frame_hdr_t *hd, uint32_t body_crc, void *out);
/* What any reader checks first of a header at p (copied to *hd): magic,
 * header checksum, version, header size. Enough for a file reader, which
 * learns the rest from where the frame lies. */
int tha__frame_header_ok(const void *p, tha__frame_hdr_t *hd, char *msg, size_t cap);
/* The header of a frame of len bytes, every check that needs no body:
 * tha__frame_header_ok, kind, length, image size, schema length. Nothing
 * of the body is read, so frame may hold only the header. The one parse
 * of a frame on its way: what follows (apply, the log) takes *hd. */
int tha__frame_parse(const void *frame, size_t len, tha__frame_hdr_t *hd, char *msg,
                     size_t cap);

/* ---- codec (codec.c) -------------------------------------------------- */

/* tha_heap_encode without the backlog-ownership check: the backlog's own
 * encode. hd (may be NULL) gets the header of the frame made. */
int tha__encode(tha_heap_t *h, int kind, void *buf, size_t cap, size_t *len,
                tha__frame_hdr_t *hd);
/* tha_heap_apply of a frame whose header tha__frame_parse gave as hd. */
int tha__apply(tha_heap_t *h, const tha__frame_hdr_t *hd, const void *frame, size_t len);

/* Encodes blocks from *from_block on (at most max_blocks, never past the
 * current top) as a segment frame stamped with the heap's seq; advances
 * *from_block. Dirty bits and seq are untouched. */
int tha__encode_segment(tha_heap_t *h, uint64_t *from_block, uint64_t max_blocks,
                        void *buf, size_t cap, size_t *len);
/* Bytes a segment of up to max_blocks from from_block needs. */
size_t tha__segment_size(const tha_heap_t *h, uint64_t from_block, uint64_t max_blocks);
/* Applies a segment (header hd, from tha__frame_parse) to a heap being
 * filled by bulk sync: checksums, fingerprint, lineage, run and pointer
 * ranges are checked; sequence and the region header are not (the image is
 * fuzzy until caught up). */
int tha__apply_segment(tha_heap_t *h, const tha__frame_hdr_t *hd, const void *frame,
                       size_t len);
/* The same for a segment read in two pieces: head (frame header, run header
 * and mask, head_len bytes; its header parsed as hd) anywhere, its data_len
 * bytes of data already in place in the heap at the run's offset (a heap
 * not yet visible to anyone, as while loading). Verified there, then
 * rebased in place; on failure the data bytes in the heap are garbage. */
int tha__apply_segment_in_place(tha_heap_t *h, const tha__frame_hdr_t *hd,
                                const void *head, size_t head_len, uint64_t data_len);

/* Threads big work may use (tha_set_threads): 1 or 2. */
int tha__threads(void);
/* heapcheck.c: a frame's effect on allocator metadata, checked before it is
 * applied (THA_ECORRUPT with the detail in h->err; the heap is untouched).
 * A snapshot: its whole image, in the frame (data/mask: its one run). A
 * delta: what its runs touch, on the heap with the runs laid over it
 * (body: the first run record); the heap must be consistent. */
int tha__check_snapshot(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *data,
                        const uint8_t *mask);
int tha__check_delta(tha_heap_t *h, const tha__frame_hdr_t *hd, const uint8_t *body);
/* Bulk sync, before the staging heap goes live: zeroes what is above its
 * top, then tha_heap_check; clears h->fuzzy when it passes. */
int tha__check_staging(tha_heap_t *h);

/* crc32c.c: raw CRC (no pre/post inversion) helpers for split streams. */
uint32_t tha__crc32c_shift(uint32_t crc, uint64_t len);
/* Raw register after buf: no pre/post inversion;
 * tha_crc32c(c, ..) == ~tha__crc32c_raw(~c, ..). */
uint32_t tha__crc32c_raw(uint32_t raw, const void *buf, size_t len);
/* The same through the tables only (tests compare it with the fast path). */
uint32_t tha__crc32c_sw(uint32_t raw, const void *buf, size_t len);

/* ---- backlog (backlog.c) --------------------------------------------- */

typedef struct tha__bframe {
    uint32_t refs;      /* the backlog's + each session sending it */
    uint64_t seq, epoch;
    size_t len;
    size_t cap;         /* bytes allocated for data */
    struct tha_backlog *owner; /* gets the buffer back as its spare */
    uint8_t data[];     /* the delta frame */
} tha__bframe_t;

struct tha_backlog {
    tha__bframe_t **ring; /* frames head.. in seq order */
    uint64_t head, n, cap;
    uint64_t bytes;       /* sum of frame lengths held */
    uint64_t max_bytes;
    uint64_t last_seq;    /* seq of the newest frame */
    uint64_t lineage;
    tha__bframe_t *spare; /* a released big frame buffer, reused by encode
                             (a fresh one costs a page fault per 4 KiB) */
    tha_heap_t *heap;     /* the heap tha_backlog_encode makes frames of
                             (tha_heap.backlog points back); NULL until then */
};

/* The frame seq with a reference taken, or NULL if not held. */
tha__bframe_t *tha__backlog_get(tha_backlog_t *b, uint64_t seq);
void tha__bframe_release(tha__bframe_t *f);

#endif /* THA_INTERNAL_H */

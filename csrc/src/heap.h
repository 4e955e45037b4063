/* heap.h — layer 2 (heap): the region, its allocator records, the heap
 * struct, tracking (track.c), write protection (wp.c) and size rules
 * (sized.c).
 */
#ifndef THA_HEAP_H
#define THA_HEAP_H

#include "schema.h"

/* ---- the region (arena.c) ---------------------------------------------- */

#define THA__PAGE 4096u          /* allocator page */
#define THA__BLOCK 64u           /* tracking and transfer unit */
#define THA__HDR 8u              /* object header before each slab slot's payload */
#define THA__SPAN_HDR 64u        /* a span's first block: its object header, then
                                    zeros; the payload starts block-aligned at
                                    +64, so element i of an array of 64-byte
                                    structs is exactly block i of the payload */
#define THA__SLAB_PAGES 16u      /* pages per slab (64 KiB) */
#define THA__SLAB_HDR 64u        /* slab record at the slab start */
#define THA__MAX_SLOT 8192u      /* larger allocations take page spans */
#define THA__NCLASSES 32u
#define THA__GRANULE (64u << 10) /* capacity is a multiple of this */
#define THA__COMMIT_STEP (1u << 20) /* commit growth, bytes */
/* The region layout's version is the magic's last byte: "THAREGN3" has span
 * payloads at +THA__SPAN_HDR; "THAREGN2" images (payloads at +8 everywhere)
 * are refused by name (tha__region_magic_why). */
#define THA__REGION_MAGIC 0x334e474552414854ull    /* "THAREGN3" */
#define THA__REGION_MAGIC_V2 0x324e474552414854ull /* "THAREGN2" */
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

/* Before every payload: at slot - THA__HDR in a slab, at the start of a
 * span (payload at +THA__SPAN_HDR). count == 0 marks a free slot. */
typedef struct tha__objhdr {
    uint32_t type_id;
    uint32_t count;
} tha__objhdr_t;

/* Offset of the object header of the allocation whose payload starts at
 * payload: a span's payload lies at THA__SPAN_HDR past a page start, a slab
 * slot's at THA__HDR past a 16-aligned slot start (never 64 past a page:
 * slab payloads are 8 mod 16). */
static inline uint64_t tha__hdr_of(uint64_t payload) {
    return payload % 4096u == THA__SPAN_HDR ? payload - THA__SPAN_HDR : payload - THA__HDR;
}

/* A size rule (sized.c): size bytes are size / sizeof(type) elements of
 * type; size 0: any multiple of sizeof(type). type is a canonical id. */
typedef struct tha__size_rule {
    uint64_t size;
    uint32_t type;
} tha__size_rule_t;

typedef struct tha__root {
    char name[THA_ROOT_NAME_MAX]; /* "" = empty entry */
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
    uint64_t addr;          /* same-address mode: the address the image's
                               pointer words are relative to (== base, except
                               a bulk sync's staging heap filled away from an
                               address its live heap holds); 0: relocatable */
    uint64_t capacity;      /* bytes reserved */
    uint64_t committed;     /* bytes read-write from base */
    uint64_t *dirty;        /* bit per block: changed since the last frame */
    uint64_t *dsum;         /* bit per word of dirty: that word may be nonzero
                               (scans, clears and counts skip clean stretches) */
    uint8_t *ptrmap;        /* byte per block: bit i = word i is a pointer */
    uint8_t *shadow;        /* diff and wp modes: the image as of the last
                               frame (capacity bytes reserved; else NULL) */
    int collected;          /* diff/wp: frame_size just collected changes */
    uint64_t collects;      /* track.c: compares with the shadow so far (the
                               C tests: one sync, one collect) */
    int wire_tagnull;       /* apply: the frame being verified holds tagged-
                               NULL words (codec.c check_word), whose slots
                               are checked on its layout (tha__check_slots) */
    void *scratch;          /* heapcheck.c: a delta's run index, kept */
    size_t scratch_cap;
    int unbound_seen;       /* codec.c: the last verify failed on a function or
                               extern this process has not bound: the
                               receiver's binding, not the frame, is at fault */
    int funcs_seen;         /* codec.c: the verify pass met a word of a
                               class (a function id, extern, tagged NULL): a
                               same-address apply rewrites them only then;
                               else its copy is straight */
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
    unsigned debug;         /* THA_DEBUG_* flags (tha_heap_set_debug); this
                               process's, never in the image */
    uint64_t frames_encoded, bytes_encoded, frames_applied, bytes_applied;
    const tha__log_sink_t *log_sink; /* the attached delta log's hooks
                               (tha_heap_attach_log); NULL = no log */
    void *log;              /* the log itself, handed to its hooks */
    struct tha_backlog *backlog; /* the backlog whose tha_backlog_encode makes
                               this heap's frames (tha_heap_encode refuses
                               while set); it points back (tha_backlog.heap)
                               and whichever is destroyed first unlinks both */
    struct tha__root_bind *binds; /* tha_root_bind: roots read at each frame */
    uint32_t nbinds;
    struct tha__static *statics; /* tha_heap_mirror_extern (statics.c) */
    uint32_t nstatics;
    struct tha__size_rule *size_rules; /* tha_heap_size_type/_multiple (sized.c):
                               of this handle only, not in the image */
    uint32_t nsize_rules, size_rules_cap;
    tha_heap_t **backlog_ref; /* where that backlog points back (its heap
                               field): what tha_heap_destroy clears, since the
                               heap does not know the backlog's insides */
    char err[256];
};

/* What a pointer word of h holds minus its region offset: the base the
 * image means (same-address) or where it is mapped (relocatable). */
static inline uint64_t tha__origin(const tha_heap_t *h) {
    return h->addr ? h->addr : (uint64_t)(uintptr_t)h->base;
}

static inline tha__region_t *tha__reg(const tha_heap_t *h) {
    return (tha__region_t *)h->base;
}
/* The fixed part of every region's layout (tha__region_layout): the roots
 * table, then the page map, at offsets no capacity changes. */
#define THA__ROOTS_OFF tha__align_up(sizeof(tha__region_t), THA__BLOCK)
#define THA__PAGEMAP_OFF (THA__ROOTS_OFF + THA_MAX_ROOTS * sizeof(tha__root_t))

/* The heap's own page map lies where the layout says, not where the
 * region header (writable by the application) says it does. */
static inline tha__page_t *tha__pagemap(const tha_heap_t *h) {
    return (tha__page_t *)(h->base + THA__PAGEMAP_OFF);
}
#define THA__AT(h, off, T) ((T *)((h)->base + (off)))

/* Size class of a slot size (header included), or -1 for a page span. */
int tha__size_class(uint64_t slot_bytes);
uint32_t tha__class_size(int cls);

/* tha_heap_create / tha_heap_create_at: maps the region at `at` (0: where
 * the system likes) for an image whose pointers mean addr + offset (0:
 * relocatable). A staging heap of a same-address bulk sync whose address
 * its live heap holds is made with at 0 and addr = that address
 * (tha__take_image moves its image home). Failure details go to msg. */
int tha__heap_new(tha_heap_t **out, tha_schema_t *schema, size_t capacity, int tracking,
                  uint64_t at, uint64_t addr, char *msg, size_t msgcap);
/* The same, its region starting with reserve's touched pages (NULL, or a
 * reserve already taken: fresh pages, as tha__heap_new). */
int tha__heap_new_reserved(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                           int tracking, uint64_t at, uint64_t addr,
                           tha_reserve_t *reserve, char *msg, size_t msgcap);
/* reserve.c: moves r's pages onto [dst, dst + n), n = min(its bytes, cap),
 * PROT_NONE, r emptied; returns n, or 0 if it holds none or the move
 * failed (dst's placeholder mapping is then as it was). */
uint64_t tha__reserve_move(tha_reserve_t *r, uint8_t *dst, uint64_t cap);
/* The check of a same-address base from a caller, a frame, a file or a
 * peer: 0, or THA_EINVAL with why in msg. */
int tha__base_ok(uint64_t base, uint64_t capacity, char *msg, size_t msgcap);

/* Commits the region up to at least bytes. */
int tha__commit(tha_heap_t *h, uint64_t bytes);
/* Why a region header's magic is not this build's (NULL if it is): an
 * image of the older layout is named as such. */
const char *tha__region_magic_why(uint64_t magic);
/* Offset of the allocation payload holding byte off, 0 if none live. */
uint64_t tha__find(const tha_heap_t *h, uint64_t off, tha__objhdr_t **hdr);
/* Sets every bound root (tha_root_bind) from the variable it follows; the
 * codec calls it before it gathers a frame's changes. */
int tha__roots_refresh(tha_heap_t *h);
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

/* ---- statics mirrored by value (statics.c) ------------------------------ */

/* Before a frame: each static registered with tha_heap_mirror_extern is
 * copied into its cell (allocated and rooted on first use). */
int tha__statics_push(tha_heap_t *h);
/* Before an apply writes anything: THA_ESTATE naming the static if one is
 * unbound (the pull could not update it) or bound inside this heap's
 * reservation (the pull would write the region behind the allocator's
 * back). */
int tha__statics_placed(tha_heap_t *h);
/* After an apply: each cell is copied out into this process's static. */
void tha__statics_pull(tha_heap_t *h);

/* ---- tracking (track.c) ------------------------------------------------ */

/* Marks the blocks overlapping [off, off+len) dirty. */
void tha__mark(tha_heap_t *h, uint64_t off, uint64_t len);
void tha__clear_dirty(tha_heap_t *h);
/* diff and wp modes: marks every block written since the last collect
 * that differs from the shadow and brings the shadow up to date; nothing
 * in explicit mode. */
void tha__track_collect(tha_heap_t *h);
/* Threads (1 or 2) a collect may compare with (tha_set_threads). */
void tha__track_set_threads(int n);

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
typedef void (*tha__pages_fn)(tha_heap_t *h, void *ctx, uint64_t from, uint64_t to);
/* The wp half of tha__track_collect: every page written since the last
 * collect goes to found (with ctx), in runs. */
void tha__wp_collect(tha_heap_t *h, tha__pages_fn found, void *ctx);
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

#endif /* THA_HEAP_H */

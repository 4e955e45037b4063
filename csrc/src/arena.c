/* arena.c — the heap's region: reservation and commit, the page allocator,
 * size-class slabs, large spans, the roots table and the O(1) map from any
 * address to its allocation. Every structure lives inside the region and
 * refers to others by offset, so the bytes mean the same at any base.
 * Every write to the region made here is marked dirty (tha__mark) so that
 * a delta carries allocator state along with the objects.
 */
#include "heap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>

/* Slot sizes, header included; multiples of 16 so payloads are 8-aligned. */
static const uint32_t class_sizes[THA__NCLASSES] = {
    16,   32,   48,   64,   80,   96,   112,  128,  160,  192,  224,
    256,  320,  384,  448,  512,  640,  768,  896,  1024, 1280, 1536,
    1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168, 8192};

int tha__size_class(uint64_t slot_bytes) {
    if (slot_bytes <= 128) return slot_bytes == 0 ? 0 : (int)((slot_bytes + 15) / 16) - 1;
    for (int c = 8; c < (int)THA__NCLASSES; c++)
        if (slot_bytes <= class_sizes[c]) return c;
    return -1;
}

uint32_t tha__class_size(int cls) { return class_sizes[cls]; }

static void mark_region_header(tha_heap_t *h) {
    tha__mark(h, 0, sizeof(tha__region_t));
}

static void set_page(tha_heap_t *h, uint64_t page, uint8_t kind, uint8_t cls,
                     uint32_t link) {
    tha__page_t *pm = &tha__pagemap(h)[page];
    pm->kind = kind;
    pm->cls = cls;
    pm->unused = 0;
    pm->link = link;
    tha__mark(h, THA__PAGEMAP_OFF + page * sizeof *pm, sizeof *pm);
}

/* ---- reservation and commit ------------------------------------------- */

int tha__commit(tha_heap_t *h, uint64_t bytes) {
    if (bytes <= h->committed) return 0;
    if (bytes > h->capacity) return THA_ECAPACITY;
    uint64_t want = tha__align_up(bytes, THA__COMMIT_STEP);
    if (want > h->capacity) want = h->capacity;
    /* mprotect tracking: fresh pages start read-only like the rest */
    int prot = h->mech == THA__MECH_MPROTECT ? PROT_READ : PROT_READ | PROT_WRITE;
    if (mprotect(h->base + h->committed, want - h->committed, prot) != 0)
        return -errno;
    uint64_t from = h->committed;
    h->committed = want;
    if (h->mech == THA__MECH_UFFD || h->mech == THA__MECH_MPROTECT)
        tha__wp_committed(h, from, want);
    return 0;
}

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000 /* Linux 4.17; older kernels take a hint */
#endif

int tha__base_ok(uint64_t base, uint64_t capacity, char *msg, size_t msgcap) {
    if (base == 0 || base % THA_BASE_ALIGN || base >= (1ull << 48) ||
        capacity > (1ull << 48) - base)
        return tha__fail(msg, msgcap, THA_EINVAL, "same-address base 0x%llx: not a "
                         "multiple of 64 KiB below 2^48 with room for %llu bytes",
                         (unsigned long long)base, (unsigned long long)capacity);
    return 0;
}

/* What this process has mapped over [addr, addr + len), from
 * /proc/self/maps: the first overlapping mapping, or why it is not known. */
static void occupant(uint64_t addr, uint64_t len, char *buf, size_t cap) {
    snprintf(buf, cap, "no mapping listed in /proc/self/maps");
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) {
        snprintf(buf, cap, "/proc/self/maps unreadable: %s", strerror(errno));
        return;
    }
    char line[512];
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi;
        if (sscanf(line, "%llx-%llx", &lo, &hi) != 2 || hi <= addr || lo >= addr + len)
            continue;
        line[strcspn(line, "\n")] = 0;
        snprintf(buf, cap, "%.200s", line);
        break;
    }
    fclose(f);
}

int tha__heap_new(tha_heap_t **out, tha_schema_t *schema, size_t capacity, int tracking,
                  uint64_t at, uint64_t addr, char *msg, size_t msgcap) {
    return tha__heap_new_reserved(out, schema, capacity, tracking, at, addr, NULL, msg,
                                  msgcap);
}

int tha__heap_new_reserved(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                           int tracking, uint64_t at, uint64_t addr,
                           tha_reserve_t *reserve, char *msg, size_t msgcap) {
    if (!out || !schema || !schema->sealed) return THA_EINVAL;
    if (tracking < THA_TRACK_AUTO || tracking > THA_TRACK_WP) return THA_EINVAL;
    *out = NULL;
    uint64_t cap = tha__align_up(capacity ? capacity : (64u << 20), THA__GRANULE);
    if (cap < (1u << 20) || cap > (1ull << 44)) return THA_EINVAL;
    int rc;
    if (addr && (rc = tha__base_ok(addr, cap, msg, msgcap))) return rc;
    /* a type larger than the heap could never be allocated (detail in the
     * schema's errmsg) */
    int fit = tha__schema_fits(schema, cap, schema->err, sizeof schema->err);
    if (fit) return fit;
    tha_heap_t *h = calloc(1, sizeof *h);
    if (!h) return THA_ENOMEM;
    h->capacity = cap;
    h->nblocks = cap / THA__BLOCK;
    h->tracking = tracking;
    h->uffd = h->pagemap = h->slot = -1;
    h->addr = addr;
    rc = THA_ENOMEM;
    /* Same-address: that range or nothing; MAP_FIXED_NOREPLACE never
     * replaces what is there, and a kernel that ignores it (it is then a
     * hint) and maps elsewhere is refused just the same. */
    void *want = (void *)(uintptr_t)at;
    void *base = mmap(want, cap, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE |
                          (at ? MAP_FIXED_NOREPLACE : 0), -1, 0);
    if (base == MAP_FAILED || (at && base != want)) {
        char who[300];
        rc = base == MAP_FAILED ? -errno : -EEXIST;
        occupant(at, cap, who, sizeof who);
        if (base != MAP_FAILED) {
            munmap(base, cap);
            tha__fail(msg, msgcap, rc, "same-address heap at 0x%llx: the kernel mapped "
                      "it at %p instead (it does not know MAP_FIXED_NOREPLACE, Linux < "
                      "4.17, and [0x%llx, 0x%llx) is taken: %s)", (unsigned long long)at,
                      base, (unsigned long long)at, (unsigned long long)(at + cap), who);
        } else if (at && rc == -EEXIST) {
            tha__fail(msg, msgcap, rc, "same-address heap at 0x%llx: [0x%llx, 0x%llx) "
                      "is taken in this process: %s", (unsigned long long)at,
                      (unsigned long long)at, (unsigned long long)(at + cap), who);
        } else {
            tha__fail(msg, msgcap, rc, "cannot reserve %llu bytes%s: %s",
                      (unsigned long long)cap, at ? " at the same-address base" : "",
                      strerror(-rc));
        }
        free(h);
        return rc;
    }
    h->base = base;
    if (reserve) tha__reserve_move(reserve, base, cap);
    /* Side tables outside the region: zero pages until used. */
    h->dirty = calloc((h->nblocks + 63) / 64, sizeof(uint64_t));
    h->dsum = calloc(((h->nblocks + 63) / 64 + 63) / 64, sizeof(uint64_t));
    h->ptrmap = calloc(h->nblocks, 1);
    if (!h->dirty || !h->dsum || !h->ptrmap) goto fail;
    if (tracking == THA_TRACK_WP || tracking == THA_TRACK_AUTO) {
        rc = tha__wp_open(h, tracking); /* sets mech and tracking */
        if (rc) goto fail;
    } else {
        h->mech = tracking == THA_TRACK_DIFF ? THA__MECH_DIFF : THA__MECH_EXPLICIT;
    }
    /* Explicit and diff heaps take 2 MiB pages where the kernel gives them
     * (THP "madvise"): on 4 KiB pages each scattered block a delta writes or
     * reads costs a TLB miss (1M x 64 B records, 1% changed: apply 1.2-1.9
     * -> 0.8-1.0 ms, encode 1.0-1.4 -> 0.8-0.9 ms). Write protection keeps
     * 4 KiB pages (its faults and scans are per page; wp.c asks for them). */
    if (h->mech == THA__MECH_EXPLICIT || h->mech == THA__MECH_DIFF)
        madvise(base, cap, MADV_HUGEPAGE);
    if (h->mech != THA__MECH_EXPLICIT) {
        void *sh = mmap(NULL, cap, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sh == MAP_FAILED) {
            rc = -errno;
            goto fail;
        }
        h->shadow = sh;
        /* never protected: 2 MiB pages whatever the mechanism (an apply's
         * scattered blocks are copied here too, tha__track_sync_shadow) */
        madvise(sh, cap, MADV_HUGEPAGE);
    }
    if (getrandom(&h->lineage, sizeof h->lineage, 0) != sizeof h->lineage) {
        rc = -errno;
        goto fail;
    }
    h->schema = tha__schema_retain(schema);
    rc = tha__region_init(h);
    if (rc) goto fail;
    *out = h;
    return 0;
fail:
    tha_heap_destroy(h);
    return rc;
}

int tha_heap_create(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                    int tracking) {
    char msg[256];
    return tha__heap_new(out, schema, capacity, tracking, 0, 0, msg, sizeof msg);
}

int tha_heap_create_at(tha_heap_t **out, tha_schema_t *schema, size_t capacity,
                       int tracking, void *base) {
    if (!schema) return THA_EINVAL;
    uint64_t b = (uint64_t)(uintptr_t)(base ? base : THA_BASE_DEFAULT);
    return tha__heap_new(out, schema, capacity, tracking, b, b, schema->err,
                         sizeof schema->err);
}

void tha_heap_destroy(tha_heap_t *h) {
    if (!h) return;
    if (h->backlog_ref) *h->backlog_ref = NULL; /* it may serve another heap now */
    tha__wp_close(h); /* before the unmap: the signal handler forgets it */
    if (h->log_sink) h->log_sink->close(h->log);
    if (h->base) munmap(h->base, h->capacity);
    if (h->shadow) munmap(h->shadow, h->capacity);
    free(h->dirty);
    free(h->dsum);
    free(h->ptrmap);
    free(h->scratch);
    free(h->binds);
    free(h->statics);
    free(h->size_rules);
    tha_schema_release(h->schema);
    free(h);
}

tha__layout_t tha__region_layout(uint64_t capacity) {
    tha__layout_t l;
    l.npages = capacity / THA__PAGE;
    l.roots_off = THA__ROOTS_OFF;
    l.pagemap_off = THA__PAGEMAP_OFF;
    l.data_off = tha__align_up(l.pagemap_off + l.npages * sizeof(tha__page_t), THA__PAGE);
    return l;
}

int tha__region_init(tha_heap_t *h) {
    const tha__layout_t lay = tha__region_layout(h->capacity);
    const uint64_t npages = lay.npages, roots_off = lay.roots_off,
                   pagemap_off = lay.pagemap_off, data_off = lay.data_off;
    if (data_off + THA__SLAB_PAGES * THA__PAGE > h->capacity) return THA_EINVAL;
    int rc = tha__commit(h, data_off);
    if (rc) return rc;
    tha__region_t *r = tha__reg(h);
    memset(r, 0, sizeof *r);
    r->magic = THA__REGION_MAGIC;
    r->capacity = h->capacity;
    r->top = data_off;
    r->pagemap_off = pagemap_off;
    r->npages = npages;
    r->roots_off = roots_off;
    r->data_off = data_off;
    r->nepochs = 1; /* epoch 0 from seq 0, named after the frame series */
    r->epochs[0] = (tha__epoch_t){.epoch = 0, .start = 0, .id = h->lineage};
    for (uint64_t p = 0; p < data_off / THA__PAGE; p++)
        set_page(h, p, THA__PG_META, 0, 0);
    tha__mark(h, 0, data_off);
    return 0;
}

const tha_schema_t *tha_heap_schema(const tha_heap_t *h) { return h->schema; }
void *tha_heap_base(const tha_heap_t *h) { return h->base; }
const char *tha_heap_errmsg(const tha_heap_t *h) { return h->err; }
const char *tha_heap_tracking_name(const tha_heap_t *h) { return tha__mech_name(h->mech); }

/* ---- the log sink --------------------------------------------------------- */

int tha_heap_sync_log(tha_heap_t *h) {
    if (!h || !h->log_sink)
        return h ? tha__hfail(h, THA_ESTATE, "sync_log: no log") : THA_EINVAL;
    return h->log_sink->sync(h->log, h);
}

int tha_heap_log_policy(const tha_heap_t *h, int64_t *fsync_ms) {
    int64_t ms;
    if (!h || !h->log_sink || !h->log_sink->policy(h->log, &ms)) return 0;
    if (fsync_ms) *fsync_ms = ms;
    return 1;
}

/* ---- page spans ------------------------------------------------------- */

static void span_unlink(tha_heap_t *h, uint64_t off) {
    tha__region_t *r = tha__reg(h);
    tha__span_t *s = THA__AT(h, off, tha__span_t);
    if (s->prev) {
        THA__AT(h, s->prev, tha__span_t)->next = s->next;
        tha__mark(h, s->prev, sizeof *s);
    } else {
        r->free_spans = s->next;
        mark_region_header(h);
    }
    if (s->next) {
        THA__AT(h, s->next, tha__span_t)->prev = s->prev;
        tha__mark(h, s->next, sizeof *s);
    }
}

/* Records a free span of n pages at page p and pushes it on the list. */
static void span_push(tha_heap_t *h, uint64_t p, uint64_t n) {
    tha__region_t *r = tha__reg(h);
    uint64_t off = p * THA__PAGE;
    tha__span_t *s = THA__AT(h, off, tha__span_t);
    s->npages = n;
    s->prev = 0;
    s->next = r->free_spans;
    if (s->next) {
        THA__AT(h, s->next, tha__span_t)->prev = off;
        tha__mark(h, s->next, sizeof *s);
    }
    r->free_spans = off;
    mark_region_header(h);
    tha__mark(h, off, sizeof *s);
    set_page(h, p, THA__PG_FREE_HEAD, 0, (uint32_t)n);
    /* Only the last page needs its head (for coalescing); pages between
     * stay FREE_TAIL with whatever link they had. */
    if (n > 1) set_page(h, p + n - 1, THA__PG_FREE_TAIL, 0, (uint32_t)p);
}

/* Takes n pages: first fit from the free spans, else from the top. The
 * caller sets the page map entries of the pages it gets. */
static int pages_alloc(tha_heap_t *h, uint64_t n, uint64_t *page, bool *fresh) {
    tha__region_t *r = tha__reg(h);
    for (uint64_t off = r->free_spans; off;) {
        tha__span_t *s = THA__AT(h, off, tha__span_t);
        if (s->npages >= n) {
            uint64_t p = off / THA__PAGE, have = s->npages;
            span_unlink(h, off);
            if (have > n) span_push(h, p + n, have - n);
            *page = p;
            *fresh = false;
            return 0;
        }
        off = s->next;
    }
    uint64_t bytes = n * THA__PAGE;
    if (n > r->npages || r->top + bytes > r->capacity) return THA_ECAPACITY;
    int rc = tha__commit(h, r->top + bytes);
    if (rc) return rc;
    *page = r->top / THA__PAGE;
    *fresh = true;
    r->top += bytes;
    mark_region_header(h);
    return 0;
}

/* Returns n pages at p to the free spans, merging with free neighbours. */
static void pages_free(tha_heap_t *h, uint64_t p, uint64_t n) {
    tha__region_t *r = tha__reg(h);
    tha__page_t *pm = tha__pagemap(h);
    uint64_t first_data = r->data_off / THA__PAGE;
    for (uint64_t i = 0; i < n; i++)
        set_page(h, p + i, THA__PG_FREE_TAIL, 0, (uint32_t)p);
    if (p > first_data) {
        uint64_t q = p - 1, head = q;
        if (pm[q].kind == THA__PG_FREE_TAIL) head = pm[q].link;
        if (pm[q].kind == THA__PG_FREE_HEAD || pm[q].kind == THA__PG_FREE_TAIL) {
            uint64_t hn = THA__AT(h, head * THA__PAGE, tha__span_t)->npages;
            span_unlink(h, head * THA__PAGE);
            p = head;
            n += hn;
        }
    }
    uint64_t next = p + n;
    if (next * THA__PAGE < r->top && pm[next].kind == THA__PG_FREE_HEAD) {
        uint64_t nn = THA__AT(h, next * THA__PAGE, tha__span_t)->npages;
        span_unlink(h, next * THA__PAGE);
        set_page(h, next, THA__PG_FREE_TAIL, 0, (uint32_t)p);
        n += nn;
    }
    span_push(h, p, n);
}

/* ---- slabs ------------------------------------------------------------ */

static tha__slab_t *slab_at(tha_heap_t *h, uint64_t off) {
    return THA__AT(h, off, tha__slab_t);
}

static void slab_list_push(tha_heap_t *h, uint64_t off) {
    tha__region_t *r = tha__reg(h);
    tha__slab_t *s = slab_at(h, off);
    s->prev = 0;
    s->next = r->class_slabs[s->cls];
    if (s->next) {
        slab_at(h, s->next)->prev = off;
        tha__mark(h, s->next, THA__SLAB_HDR);
    }
    r->class_slabs[s->cls] = off;
    s->on_list = 1;
    mark_region_header(h);
    tha__mark(h, off, THA__SLAB_HDR);
}

static void slab_list_unlink(tha_heap_t *h, uint64_t off) {
    tha__region_t *r = tha__reg(h);
    tha__slab_t *s = slab_at(h, off);
    if (s->prev) {
        slab_at(h, s->prev)->next = s->next;
        tha__mark(h, s->prev, THA__SLAB_HDR);
    } else {
        r->class_slabs[s->cls] = s->next;
        mark_region_header(h);
    }
    if (s->next) {
        slab_at(h, s->next)->prev = s->prev;
        tha__mark(h, s->next, THA__SLAB_HDR);
    }
    s->next = s->prev = 0;
    s->on_list = 0;
    tha__mark(h, off, THA__SLAB_HDR);
}

/* Offset of a free slot of class cls; *fresh when never used before. */
static int slot_alloc(tha_heap_t *h, int cls, uint64_t *slot, bool *fresh) {
    tha__region_t *r = tha__reg(h);
    uint64_t off = r->class_slabs[cls];
    if (!off) {
        uint64_t p;
        bool fresh_pages;
        int rc = pages_alloc(h, THA__SLAB_PAGES, &p, &fresh_pages);
        if (rc) return rc;
        set_page(h, p, THA__PG_SLAB_HEAD, (uint8_t)cls, THA__SLAB_PAGES);
        for (uint32_t i = 1; i < THA__SLAB_PAGES; i++)
            set_page(h, p + i, THA__PG_SLAB_TAIL, 0, (uint32_t)p);
        off = p * THA__PAGE;
        tha__slab_t *s = slab_at(h, off);
        memset(s, 0, sizeof *s);
        s->cls = (uint32_t)cls;
        s->nslots = (THA__SLAB_PAGES * THA__PAGE - THA__SLAB_HDR) / class_sizes[cls];
        s->nfree = s->nslots;
        if (!fresh_pages) { /* recycled pages: slot headers must read free */
            memset((uint8_t *)s + THA__SLAB_HDR, 0,
                   THA__SLAB_PAGES * THA__PAGE - THA__SLAB_HDR);
            tha__mark(h, off, THA__SLAB_PAGES * THA__PAGE);
        } /* pages from above the top are zero here and on every mirror */
        slab_list_push(h, off);
    }
    tha__slab_t *s = slab_at(h, off);
    if (s->free) {
        *slot = s->free;
        s->free = *THA__AT(h, *slot + THA__HDR, uint64_t);
        *fresh = false;
    } else {
        THA_ASSERT(s->bump < s->nslots);
        *slot = off + THA__SLAB_HDR + (uint64_t)s->bump * class_sizes[cls];
        s->bump++;
        *fresh = true;
    }
    s->nfree--;
    tha__mark(h, off, THA__SLAB_HDR);
    if (s->nfree == 0) slab_list_unlink(h, off);
    return 0;
}

static void slot_free(tha_heap_t *h, uint64_t slab_off, uint64_t slot) {
    tha__slab_t *s = slab_at(h, slab_off);
    *THA__AT(h, slot + THA__HDR, uint64_t) = s->free;
    tha__mark(h, slot + THA__HDR, 8);
    s->free = slot;
    s->nfree++;
    tha__mark(h, slab_off, THA__SLAB_HDR);
    if (!s->on_list) slab_list_push(h, slab_off);
    /* An empty slab goes back to the page spans unless it is the class's
     * only one (keeps alloc/free of one object from thrashing pages). */
    if (s->nfree == s->nslots &&
        (s->next || s->prev || tha__reg(h)->class_slabs[s->cls] != slab_off)) {
        slab_list_unlink(h, slab_off);
        pages_free(h, slab_off / THA__PAGE, THA__SLAB_PAGES);
    }
}

/* ---- lookup ----------------------------------------------------------- */

/* Slot start (header offset) and page-map view of the allocation unit
 * holding off, whether live or not; 0 if off is in no slot or span.
 * Bounded by what this heap has committed, not by what its metadata says:
 * an application that scribbles on the allocator's pages (a wild write)
 * gets a "no allocation there" from a lookup or an encode, never a read
 * outside the region (found by fuzz_load's writer). */
static uint64_t unit_of(const tha_heap_t *h, uint64_t off, uint64_t *unit_bytes,
                        uint64_t *slab_off) {
    const tha__region_t *r = tha__reg(h);
    const uint64_t end = r->top < h->committed ? r->top : h->committed;
    const uint64_t first_page = tha__region_layout(h->capacity).data_off / THA__PAGE;
    if (off < r->data_off || off >= end || off / THA__PAGE < first_page) return 0;
    const tha__page_t *pm = tha__pagemap(h);
    const uint64_t end_page = end / THA__PAGE;
    uint64_t p = off / THA__PAGE;
    switch (pm[p].kind) {
    case THA__PG_SLAB_TAIL:
        p = pm[p].link;
        if (p < first_page || p >= end_page) return 0;
        /* fall through */
    case THA__PG_SLAB_HEAD: {
        uint64_t base = p * THA__PAGE, first = base + THA__SLAB_HDR;
        if (off < first || pm[p].cls >= THA__NCLASSES) return 0;
        uint32_t size = class_sizes[pm[p].cls];
        uint64_t idx = (off - first) / size;
        if (idx >= THA__AT(h, base, tha__slab_t)->nslots) return 0;
        if (first + (idx + 1) * size > end) return 0;
        *unit_bytes = size;
        *slab_off = base;
        return first + idx * size;
    }
    case THA__PG_SPAN_TAIL:
        p = pm[p].link;
        if (p < first_page || p >= end_page) return 0;
        /* fall through */
    case THA__PG_SPAN_HEAD:
        if (p + (uint64_t)pm[p].link > end_page) return 0;
        *unit_bytes = (uint64_t)pm[p].link * THA__PAGE;
        *slab_off = 0;
        return p * THA__PAGE;
    default:
        return 0;
    }
}

const char *tha__region_magic_why(uint64_t magic) {
    if (magic == THA__REGION_MAGIC) return NULL;
    if (magic == THA__REGION_MAGIC_V2)
        return "region layout version 2 (span payloads at +8, from an older tha); "
               "this build reads layout version 3 only: re-create the image with it";
    return "bad magic (not a tha region)";
}

/* Where the payload of the unit at slot starts: a span's is block aligned. */
static inline uint64_t payload_at(uint64_t slot, uint64_t slab_off) {
    return slot + (slab_off ? THA__HDR : THA__SPAN_HDR);
}

uint64_t tha__find(const tha_heap_t *h, uint64_t off, tha__objhdr_t **hdr) {
    uint64_t unit_bytes, slab_off;
    uint64_t slot = unit_of(h, off, &unit_bytes, &slab_off);
    if (!slot) return 0;
    tha__objhdr_t *oh = THA__AT(h, slot, tha__objhdr_t);
    if (oh->count == 0) return 0;
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    uint64_t payload = payload_at(slot, slab_off);
    if (!t || off < payload || off >= payload + t->size * oh->count) return 0;
    if (hdr) *hdr = oh;
    return payload;
}

static void fill_obj(const tha_heap_t *h, uint64_t payload,
                     const tha__objhdr_t *oh, tha_obj_t *out) {
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    out->ptr = h->base + payload;
    out->offset = payload;
    out->type_id = oh->type_id;
    out->count = oh->count;
    out->size = t ? t->size : 0;
}

int tha_heap_lookup(const tha_heap_t *h, const void *p, tha_obj_t *out) {
    uint64_t off = (uint64_t)((const uint8_t *)p - h->base);
    if ((const uint8_t *)p < h->base || off >= h->capacity) return THA_EFOREIGN;
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(h, off, &oh);
    if (!payload) return THA_ENOTLIVE;
    fill_obj(h, payload, oh, out);
    return 0;
}

int tha_heap_next(const tha_heap_t *h, uint64_t *cursor, tha_obj_t *out) {
    const tha__region_t *r = tha__reg(h);
    const tha__page_t *pm = tha__pagemap(h);
    uint64_t off = *cursor < r->data_off ? r->data_off : *cursor;
    while (off < r->top) {
        uint64_t p = off / THA__PAGE;
        switch (pm[p].kind) {
        case THA__PG_SLAB_TAIL:
            p = pm[p].link;
            /* fall through */
        case THA__PG_SLAB_HEAD: {
            uint64_t base = p * THA__PAGE, first = base + THA__SLAB_HDR;
            const tha__slab_t *s = THA__AT(h, base, tha__slab_t);
            uint32_t size = class_sizes[pm[p].cls];
            uint64_t idx = off <= first ? 0 : (off - first + size - 1) / size;
            for (; idx < s->bump; idx++) {
                uint64_t slot = first + idx * size;
                const tha__objhdr_t *oh = THA__AT(h, slot, tha__objhdr_t);
                if (oh->count) {
                    fill_obj(h, slot + THA__HDR, oh, out);
                    *cursor = slot + size;
                    return 1;
                }
            }
            off = base + (uint64_t)THA__SLAB_PAGES * THA__PAGE;
            break;
        }
        case THA__PG_SPAN_HEAD:
            if (off == p * THA__PAGE) {
                const tha__objhdr_t *oh = THA__AT(h, off, tha__objhdr_t);
                fill_obj(h, off + THA__SPAN_HDR, oh, out);
                *cursor = off + (uint64_t)pm[p].link * THA__PAGE;
                return 1;
            }
            off = (p + pm[p].link) * THA__PAGE;
            break;
        case THA__PG_SPAN_TAIL:
            off = (pm[p].link + pm[pm[p].link].link) * THA__PAGE;
            break;
        case THA__PG_FREE_HEAD:
            off = (p + pm[p].link) * THA__PAGE;
            break;
        default:
            off = (p + 1) * THA__PAGE;
        }
    }
    *cursor = off;
    return 0;
}

/* ---- alloc and free --------------------------------------------------- */

int tha_heap_alloc(tha_heap_t *h, uint32_t type_id, uint32_t count, void **out) {
    /* a registration handle or a canonical id; headers hold the canonical */
    uint32_t given = type_id;
    type_id = tha_schema_type_id(h->schema, type_id);
    const tha__type_t *t = tha__schema_type(h->schema, type_id);
    if (!t || t->size == 0)
        return tha__hfail(h, THA_EINVAL, "type id %u cannot be allocated%s", given,
                          given >= THA_T_HANDLE && !t
                              ? " (a registration handle of another schema?)" : "");
    if (count == 0) return tha__hfail(h, THA_EINVAL, "count must be at least 1");
    if (type_id == THA_T_RAW && !h->addr) /* only a copy at the same address keeps them */
        return tha__hfail(h, THA_ESTATE, "an untyped allocation (tha_raw, %u bytes) "
                          "needs a same-address heap (tha_heap_create_at): the pointers "
                          "inside it would reach a mirror at another address unrebased",
                          count);
    tha__region_t *r = tha__reg(h);
    uint64_t bytes = t->size * (uint64_t)count;
    if (bytes > r->capacity)
        return tha__hfail(h, THA_ECAPACITY, "%u x %s (%llu bytes) exceeds the heap "
                    "capacity of %llu bytes", count, t->name,
                    (unsigned long long)bytes, (unsigned long long)r->capacity);
    uint64_t slot;
    bool fresh;
    int cls = tha__size_class(bytes + THA__HDR), rc;
    if (cls >= 0) {
        rc = slot_alloc(h, cls, &slot, &fresh);
    } else {
        uint64_t n = (bytes + THA__SPAN_HDR + THA__PAGE - 1) / THA__PAGE, p;
        rc = pages_alloc(h, n, &p, &fresh);
        if (!rc) {
            set_page(h, p, THA__PG_SPAN_HEAD, 0, (uint32_t)n);
            for (uint64_t i = 1; i < n; i++)
                set_page(h, p + i, THA__PG_SPAN_TAIL, 0, (uint32_t)p);
            slot = p * THA__PAGE;
        }
    }
    if (rc == THA_ECAPACITY)
        return tha__hfail(h, rc, "out of capacity: %u x %s (%llu bytes) does not fit "
                    "in the %llu-byte heap (%llu bytes live)", count, t->name,
                    (unsigned long long)bytes, (unsigned long long)r->capacity,
                    (unsigned long long)r->live_bytes);
    if (rc) return tha__hfail(h, rc, "allocation failed: %s", tha_strerror(rc));
    tha__objhdr_t *oh = THA__AT(h, slot, tha__objhdr_t);
    oh->type_id = type_id;
    oh->count = count;
    uint64_t payload = cls >= 0 ? slot + THA__HDR : slot + THA__SPAN_HDR;
    if (!fresh) {
        memset(h->base + payload, 0, bytes);
        tha__ptrmap_clear(h, payload, tha__align_up(bytes, 8));
    }
    if (t->nslots) tha__ptrmap_set(h, payload, t, count);
    if (!fresh && cls < 0) /* the span header block's padding reads zero */
        memset(h->base + slot + THA__HDR, 0, THA__SPAN_HDR - THA__HDR);
    tha__mark(h, slot, payload - slot + bytes);
    r->live_objects++;
    r->live_bytes += bytes;
    mark_region_header(h);
    *out = h->base + payload;
    return 0;
}

/* 1 and the value of the variable root `name` is bound to (tha_root_bind),
 * 0 if it is not bound. */
static int bound_value(const tha_heap_t *h, const char *name, void **now);

/* Name of a root holding an address inside [payload, payload+bytes), or NULL. */
static const char *rooted(const tha_heap_t *h, uint64_t payload, uint64_t bytes) {
    const tha__region_t *r = tha__reg(h);
    const tha__root_t *roots = THA__AT(h, r->roots_off, tha__root_t);
    for (uint64_t i = 0; i < r->nroots; i++)
        if (roots[i].offset >= payload && roots[i].offset < payload + bytes)
            return roots[i].name;
    return NULL;
}

int tha_heap_free(tha_heap_t *h, void *ptr) {
    if (!ptr) return h ? 0 : THA_EINVAL; /* as free(NULL) */
    uint8_t *p = ptr;
    tha__region_t *r = tha__reg(h);
    if (p < h->base || p >= h->base + r->top)
        return tha__hfail(h, THA_EFOREIGN, "free of %p: not an address in this heap "
                    "(region %p..%p)", ptr, (void *)h->base,
                    (void *)(h->base + r->top));
    uint64_t off = (uint64_t)(p - h->base), unit_bytes, slab_off;
    uint64_t slot = unit_of(h, off, &unit_bytes, &slab_off);
    tha__objhdr_t *oh = slot ? THA__AT(h, slot, tha__objhdr_t) : NULL;
    if (!oh || oh->count == 0)
        return tha__hfail(h, THA_ENOTLIVE, "free of offset 0x%llx: no live allocation "
                    "there (double free?)", (unsigned long long)off);
    if (off != payload_at(slot, slab_off))
        return tha__hfail(h, THA_ENOTLIVE, "free of offset 0x%llx: interior pointer; "
                    "the allocation starts at 0x%llx", (unsigned long long)off,
                    (unsigned long long)payload_at(slot, slab_off));
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    uint64_t bytes = t->size * oh->count;
    /* A root pins its allocation; a bound root follows its variable, so
     * one whose variable has moved on (a list head unlinked, then freed) is
     * refreshed here rather than blocking the free. */
    /* every such root is checked before any moves: a refusal changes nothing */
    const tha__root_t *roots = THA__AT(h, r->roots_off, tha__root_t);
    for (uint64_t i = 0; i < r->nroots; i++) {
        if (roots[i].offset < off || roots[i].offset >= off + bytes) continue;
        void *now;
        tha_obj_t o;
        const char *root = roots[i].name;
        if (!bound_value(h, root, &now) ||
            ((uint8_t *)now >= p && (uint8_t *)now < p + bytes))
            return tha__hfail(h, THA_ESTATE, "free of offset 0x%llx: still held by root "
                        "'%s'; %s", (unsigned long long)off, root,
                        bound_value(h, root, &now) ? "its bound variable still points here"
                                                   : "remove the root first");
        if (now && tha_heap_lookup(h, now, &o))
            return tha__hfail(h, THA_ENOTLIVE, "free of offset 0x%llx: root '%s' is bound "
                        "to a variable now holding %p, not in a live allocation",
                        (unsigned long long)off, root, now);
    }
    for (const char *root; (root = rooted(h, off, bytes));) {
        void *now = NULL;
        bound_value(h, root, &now); /* bound, elsewhere: checked above */
        char name[THA_ROOT_NAME_MAX];
        snprintf(name, sizeof name, "%s", root);
        int rc = tha_root_set(h, name, now);
        if (rc) return rc;
    }
    if (t->nslots) tha__ptrmap_clear(h, off, tha__align_up(bytes, 8));
    oh->type_id = 0;
    oh->count = 0;
    tha__mark(h, slot, THA__HDR);
    r->live_objects--;
    r->live_bytes -= bytes;
    mark_region_header(h);
    if (slab_off)
        slot_free(h, slab_off, slot);
    else
        pages_free(h, slot / THA__PAGE, unit_bytes / THA__PAGE);
    return 0;
}

int tha_heap_touch(tha_heap_t *h, const void *ptr, size_t len) {
    const uint8_t *p = ptr;
    uint64_t off = (uint64_t)(p - h->base);
    if (p < h->base || off >= tha__reg(h)->top)
        return tha__hfail(h, THA_EFOREIGN, "touch of %p: not an address in this heap",
                    ptr);
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(h, off, &oh);
    if (!payload)
        return tha__hfail(h, THA_ENOTLIVE, "touch of offset 0x%llx: no live "
                    "allocation there", (unsigned long long)off);
    const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
    uint64_t end = payload + t->size * oh->count;
    if (len == 0) {
        tha__mark(h, payload, end - payload);
        return 0;
    }
    if (len > end - off)
        return tha__hfail(h, THA_ERANGE, "touch of %zu bytes at offset 0x%llx runs "
                    "past the end of its allocation (0x%llx)", len,
                    (unsigned long long)off, (unsigned long long)end);
    tha__mark(h, off, len);
    return 0;
}

int tha_heap_touch_range(tha_heap_t *h, const void *ptr, size_t len) {
    if (!h || (!ptr && len)) return THA_EINVAL;
    const uint64_t first = tha__region_layout(h->capacity).data_off, top = tha__reg(h)->top;
    const uint8_t *p = ptr;
    uint64_t off = (uint64_t)(uintptr_t)p - (uint64_t)(uintptr_t)h->base;
    if (p < h->base || off < first || off > top || len > top - off)
        return tha__hfail(h, THA_EFOREIGN, "touch_range of %zu bytes at %p: not inside "
                          "the heap's data (offsets 0x%llx..0x%llx)", len, ptr,
                          (unsigned long long)first, (unsigned long long)top);
    if (len) tha__mark(h, off, len);
    return 0;
}

int tha_heap_touch_all(tha_heap_t *h) {
    if (!h) return THA_EINVAL;
    const uint64_t first = tha__region_layout(h->capacity).data_off, top = tha__reg(h)->top;
    if (top > first) tha__mark(h, first, top - first);
    return 0;
}

/* ---- roots ------------------------------------------------------------ */

struct tha__root_bind {
    char name[THA_ROOT_NAME_MAX];
    void *const *where;
};

static tha__root_t *roots_table(const tha_heap_t *h) {
    return THA__AT(h, tha__reg(h)->roots_off, tha__root_t);
}

static int root_name_ok(tha_heap_t *h, const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= sizeof(((tha__root_t *)0)->name))
        return tha__hfail(h, THA_EINVAL, "root name must be 1..%zu bytes",
                    sizeof(((tha__root_t *)0)->name) - 1);
    return 0;
}

static int64_t root_find(const tha_heap_t *h, const char *name) {
    const tha__region_t *r = tha__reg(h);
    const tha__root_t *roots = roots_table(h);
    for (uint64_t i = 0; i < r->nroots; i++)
        if (strcmp(roots[i].name, name) == 0) return (int64_t)i;
    return -1;
}

int tha_root_set(tha_heap_t *h, const char *name, const void *ptr) {
    int rc = root_name_ok(h, name);
    if (rc) return rc;
    tha__region_t *r = tha__reg(h);
    tha__root_t *roots = roots_table(h);
    int64_t i = root_find(h, name);
    if (!ptr) { /* remove: keep the table packed */
        if (i < 0) return tha__hfail(h, THA_ENOTFOUND, "no root named '%s'", name);
        uint64_t last = r->nroots - 1;
        roots[i] = roots[last];
        memset(&roots[last], 0, sizeof roots[last]);
        r->nroots--;
        tha__mark(h, r->roots_off + (uint64_t)i * sizeof *roots, sizeof *roots);
        tha__mark(h, r->roots_off + last * sizeof *roots, sizeof *roots);
        mark_region_header(h);
        return 0;
    }
    const uint8_t *p = ptr;
    uint64_t off = (uint64_t)(p - h->base);
    if (p < h->base || off >= r->top)
        return tha__hfail(h, THA_EFOREIGN, "root '%s': %p is not an address in this "
                    "heap", name, ptr);
    if (!tha__find(h, off, NULL))
        return tha__hfail(h, THA_ENOTLIVE, "root '%s': offset 0x%llx is not inside a "
                    "live allocation", name, (unsigned long long)off);
    if (i < 0) {
        if (r->nroots >= THA_MAX_ROOTS)
            return tha__hfail(h, THA_EFULL, "root '%s': all %d root entries are in use",
                        name, THA_MAX_ROOTS);
        i = (int64_t)r->nroots++;
        memset(&roots[i], 0, sizeof roots[i]);
        strcpy(roots[i].name, name);
        mark_region_header(h);
    }
    roots[i].offset = off;
    tha__mark(h, r->roots_off + (uint64_t)i * sizeof *roots, sizeof *roots);
    return 0;
}

int tha_root_get(const tha_heap_t *h, const char *name, void **p) {
    if (!name || !p) return THA_EINVAL;
    int64_t i = root_find(h, name);
    if (i < 0) return THA_ENOTFOUND;
    *p = h->base + roots_table(h)[i].offset;
    return 0;
}

int tha_root_bind(tha_heap_t *h, const char *name, void *const *where) {
    int rc = root_name_ok(h, name);
    if (rc) return rc;
    uint32_t i = 0;
    while (i < h->nbinds && strcmp(h->binds[i].name, name) != 0) i++;
    if (!where) { /* unbind */
        if (i == h->nbinds) return tha__hfail(h, THA_ENOTFOUND, "no root bound as '%s'", name);
        h->binds[i] = h->binds[--h->nbinds];
        return 0;
    }
    if (i == h->nbinds) {
        if (h->nbinds == THA_MAX_ROOTS)
            return tha__hfail(h, THA_EFULL, "root_bind '%s': %d roots are bound already",
                              name, THA_MAX_ROOTS);
        if (!h->binds) {
            h->binds = calloc(THA_MAX_ROOTS, sizeof *h->binds);
            if (!h->binds) return tha__hfail(h, THA_ENOMEM, "root_bind: out of memory");
        }
        snprintf(h->binds[i].name, sizeof h->binds[i].name, "%s", name);
        h->nbinds++;
    }
    h->binds[i].where = where;
    return 0;
}

static int bound_value(const tha_heap_t *h, const char *name, void **now) {
    for (uint32_t i = 0; i < h->nbinds; i++)
        if (strcmp(h->binds[i].name, name) == 0) {
            *now = *h->binds[i].where;
            return 1;
        }
    return 0;
}

int tha__roots_refresh(tha_heap_t *h) {
    for (uint32_t i = 0; i < h->nbinds; i++) {
        const struct tha__root_bind *b = &h->binds[i];
        void *now = *b->where, *was = NULL;
        int have = tha_root_get(h, b->name, &was) == 0;
        if (have ? now == was : now == NULL) continue;
        int rc = tha_root_set(h, b->name, now);
        if (rc) {
            char why[sizeof h->err];
            snprintf(why, sizeof why, "%s", h->err);
            return tha__hfail(h, rc, "root '%s' bound to the variable at %p: %s", b->name,
                              (const void *)b->where, why);
        }
    }
    return 0;
}

int tha_root_next(const tha_heap_t *h, uint32_t *cursor, const char **name,
                  void **p) {
    const tha__region_t *r = tha__reg(h);
    if (*cursor >= r->nroots) return 0;
    const tha__root_t *root = &roots_table(h)[*cursor];
    *name = root->name;
    *p = h->base + root->offset;
    (*cursor)++;
    return 1;
}

/* ---- stats ------------------------------------------------------------ */

int tha_heap_stats(const tha_heap_t *h, tha_stats_t *out) {
    const tha__region_t *r = tha__reg(h);
    memset(out, 0, sizeof *out);
    out->capacity = r->capacity;
    out->committed = h->committed;
    out->top = r->top;
    out->live_objects = r->live_objects;
    out->live_bytes = r->live_bytes;
    out->dirty_blocks = tha__count_dirty(h);
    out->seq = h->seq;
    out->epoch = h->epoch;
    out->lineage = h->lineage;
    out->frames_encoded = h->frames_encoded;
    out->bytes_encoded = h->bytes_encoded;
    out->frames_applied = h->frames_applied;
    out->bytes_applied = h->bytes_applied;
    out->tracking = h->tracking;
    out->same_address = h->addr;
    return 0;
}

/* ---- epochs ----------------------------------------------------------- */

int tha_heap_set_epoch(tha_heap_t *h, uint64_t epoch) {
    if (epoch <= h->epoch)
        return tha__hfail(h, THA_EINVAL, "epoch %llu is not newer than the heap's %llu",
                          (unsigned long long)epoch, (unsigned long long)h->epoch);
    uint64_t id;
    if (getrandom(&id, sizeof id, 0) != sizeof id)
        return tha__hfail(h, -errno, "epoch %llu: no randomness for its id: %s",
                          (unsigned long long)epoch, strerror(errno));
    tha__region_t *r = tha__reg(h);
    if (r->nepochs >= THA__MAX_EPOCHS) { /* the oldest goes: its nodes bulk sync */
        r->nepochs = THA__MAX_EPOCHS;
        memmove(r->epochs, r->epochs + 1, (THA__MAX_EPOCHS - 1) * sizeof r->epochs[0]);
        r->nepochs--;
    }
    r->epochs[r->nepochs++] = (tha__epoch_t){.epoch = epoch, .start = h->seq, .id = id};
    /* the next frame carries the new history to the mirrors */
    tha__mark(h, (uint64_t)((uint8_t *)&r->nepochs - h->base),
              sizeof r->nepochs + sizeof r->epochs);
    h->epoch = epoch;
    return 0;
}

uint64_t tha_heap_epoch_start(const tha_heap_t *h) {
    const tha__region_t *r = tha__reg(h);
    return r->nepochs && r->nepochs <= THA__MAX_EPOCHS ? r->epochs[r->nepochs - 1].start : 0;
}

size_t tha_heap_history(const tha_heap_t *h, tha_epoch_info_t *out, size_t cap) {
    const tha__region_t *r = tha__reg(h);
    size_t n = r->nepochs <= THA__MAX_EPOCHS ? (size_t)r->nepochs : 0;
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = (tha_epoch_info_t){.epoch = r->epochs[i].epoch,
                                    .start_seq = r->epochs[i].start,
                                    .id = r->epochs[i].id};
    return n;
}

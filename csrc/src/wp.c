/* wp.c — write-protect tracking: which pages plain writes touched since the
 * last frame. Two mechanisms, best first:
 *   uffd      userfaultfd asynchronous write-protect: the kernel resolves a
 *             write fault itself (no thread, no signal) and PAGEMAP_SCAN
 *             returns the written pages and re-protects them in one call.
 *   mprotect  PROT_READ, and a SIGSEGV handler that makes the page writable
 *             and sets its bit in `wpages`; bounded in the mappings it splits.
 * Words: a *written* page is one a write may have changed; the collector
 * reports each run of them to the callback it is given (track.c compares
 * them with the shadow and marks only the 64-byte blocks that differ).
 */
#include "heap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The installed headers may predate these (uapi values, Linux 6.7). */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ull << 15)
#endif
#ifndef PAGEMAP_SCAN
struct page_region {
    uint64_t start, end, categories;
};
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_WRITTEN (1 << 1)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#endif

#define NPAGES(h) ((h)->capacity / THA__PAGE)
#define WORDS(h) ((NPAGES(h) + 63) / 64)

/* ---- userfaultfd ------------------------------------------------------ */

static int uffd_open(void) {
    /* User-mode-only works without privilege whatever
     * vm.unprivileged_userfaultfd says; asynchronous WP never delivers a
     * fault to us, so kernel-mode writes (read() into the heap) are
     * resolved by the kernel all the same. */
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0 && errno == EINVAL) fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(fd, UFFDIO_API, &api) != 0 || !(api.features & UFFD_FEATURE_WP_ASYNC)) {
        int e = errno ? -errno : THA_EINVAL;
        close(fd);
        return e;
    }
    return fd;
}

static int uffd_protect(int fd, void *p, uint64_t len) {
    struct uffdio_writeprotect wp = {
        .range = {.start = (uint64_t)(uintptr_t)p, .len = len},
        .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp) == 0 ? 0 : -errno;
}

/* Written pages of [p, p+len) through fn, re-protected on the way. */
static int uffd_scan(int pagemap, uint8_t *p, uint64_t len,
                     void (*fn)(void *ctx, uint64_t a, uint64_t b), void *ctx) {
    struct page_region vec[256];
    struct pm_scan_arg a = {.size = sizeof a,
                            .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                            .start = (uint64_t)(uintptr_t)p,
                            .end = (uint64_t)(uintptr_t)p + len,
                            .vec = (uint64_t)(uintptr_t)vec,
                            .vec_len = sizeof vec / sizeof vec[0],
                            .category_mask = PAGE_IS_WRITTEN,
                            .return_mask = PAGE_IS_WRITTEN};
    for (;;) {
        long n = ioctl(pagemap, PAGEMAP_SCAN, &a);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        for (long i = 0; i < n; i++) fn(ctx, vec[i].start, vec[i].end);
        if (a.walk_end >= a.end) return 0;
        a.start = a.walk_end;
    }
}

static void count_pages(void *ctx, uint64_t a, uint64_t b) {
    *(uint64_t *)ctx += (b - a) / THA__PAGE;
}

/* Does the whole mechanism work here? Checked once per process on a
 * scratch mapping: a written page is reported once, then not again. */
static int uffd_works(void) {
    static int cached = -1; /* -1 unknown, 0 no, 1 yes */
    int c = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (c >= 0) return c;
    int ok = 0, fd = uffd_open(), pm = -1;
    size_t len = 4 * THA__PAGE;
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fd >= 0 && m != MAP_FAILED &&
        (pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) >= 0) {
        struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)m, .len = len},
                                      .mode = UFFDIO_REGISTER_MODE_WP};
        uint64_t n1 = 0, n2 = 0;
        if (ioctl(fd, UFFDIO_REGISTER, &reg) == 0 && uffd_protect(fd, m, len) == 0) {
            m[THA__PAGE + 5] = 1;
            if (uffd_scan(pm, m, len, count_pages, &n1) == 0 &&
                uffd_scan(pm, m, len, count_pages, &n2) == 0)
                ok = n1 == 1 && n2 == 0;
        }
    }
    if (pm >= 0) close(pm);
    if (fd >= 0) close(fd);
    if (m != MAP_FAILED) munmap(m, len);
    __atomic_store_n(&cached, ok, __ATOMIC_RELEASE);
    return ok;
}

static int uffd_setup(tha_heap_t *h) {
    if (!uffd_works()) return THA_EINVAL;
    int fd = uffd_open();
    if (fd < 0) return fd;
    /* 4 KiB granularity: a written huge page would be reported whole. */
    madvise(h->base, h->capacity, MADV_NOHUGEPAGE);
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)h->base, .len = h->capacity},
        .mode = UFFDIO_REGISTER_MODE_WP};
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0 || ioctl(fd, UFFDIO_REGISTER, &reg) != 0) {
        int e = -errno;
        if (pm >= 0) close(pm);
        close(fd);
        return e;
    }
    h->uffd = fd;
    h->pagemap = pm;
    return 0;
}

/* ---- mprotect + SIGSEGV ----------------------------------------------- */

/* Mappings the handler may add before it coarsens: each writable page in a
 * read-only range can split one mapping into three, and vm.max_map_count
 * (65530 by default) is process-wide. Above SOFT islands it unprotects
 * aligned 2 MiB chunks; above HARD the whole heap until the next frame. */
#define ISLANDS_SOFT 8192
#define ISLANDS_HARD 15000
#define CHUNK_PAGES 512u
#define MAX_SLOTS 1024

/* The handler's view of mprotect-tracked heaps: lock-free, published by a
 * release store of base (0 = free slot), read with acquire. */
static struct slot {
    uintptr_t base;       /* region start; 0: slot free */
    uint64_t end;         /* bytes committed (protected) from base */
    tha_heap_t *heap;
} slots[MAX_SLOTS];
static uint32_t slots_hi;           /* slots in use are below this */
static uint64_t islands_all;        /* writable islands over every heap */
static struct sigaction prev_segv;  /* what was installed before us */
static int handler_state;           /* 0 none, 1 installing, 2 installed */

static void set_bits(uint64_t *bits, uint64_t p0, uint64_t n) {
    for (uint64_t p = p0; p < p0 + n; p++)
        __atomic_fetch_or(&bits[p / 64], 1ull << (p % 64), __ATOMIC_RELEASE);
}

/* The order matters: writable first, bit second, so a page the collector
 * has re-protected after taking its bit is always found again. */
static int wp_fault(struct slot *s, tha_heap_t *h, uintptr_t addr) {
    uint64_t end = __atomic_load_n(&s->end, __ATOMIC_ACQUIRE);
    uint64_t page = (addr - s->base) / THA__PAGE;
    uint64_t g = __atomic_add_fetch(&islands_all, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&h->islands, 1, __ATOMIC_RELAXED);
    if (g <= ISLANDS_SOFT) {
        if (mprotect((void *)(s->base + page * THA__PAGE), THA__PAGE,
                     PROT_READ | PROT_WRITE) == 0) {
            set_bits(h->wpages, page, 1);
            return 1;
        }
    } else if (g <= ISLANDS_HARD) {
        uint64_t c0 = page & ~(uint64_t)(CHUNK_PAGES - 1), n = CHUNK_PAGES;
        if ((c0 + n) * THA__PAGE > end) n = end / THA__PAGE - c0;
        if (mprotect((void *)(s->base + c0 * THA__PAGE), n * THA__PAGE,
                     PROT_READ | PROT_WRITE) == 0) {
            set_bits(h->wpages, c0, n);
            return 1;
        }
    }
    /* The whole heap writable merges its mappings back into one; the next
     * frame compares all of it with the shadow (diff for one frame). */
    if (mprotect((void *)s->base, end, PROT_READ | PROT_WRITE) != 0) return 0;
    __atomic_store_n(&h->overflow, 1, __ATOMIC_RELEASE);
    return 1;
}

static void chain(int sig, siginfo_t *si, void *uc) {
    struct sigaction *p = &prev_segv;
    if (p->sa_flags & SA_SIGINFO) {
        if (p->sa_sigaction) {
            p->sa_sigaction(sig, si, uc);
            return;
        }
    } else if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN) {
        p->sa_handler(sig);
        return;
    }
    /* Default action: the faulting instruction runs again and kills the
     * process as if we had never been installed. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (si->si_code <= 0) raise(sig); /* sent, not a fault: send it again */
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
    int saved = errno;
    uintptr_t a = (uintptr_t)si->si_addr;
    if (si->si_code == SEGV_ACCERR) {
        uint32_t n = __atomic_load_n(&slots_hi, __ATOMIC_ACQUIRE);
        for (uint32_t i = 0; i < n; i++) {
            struct slot *s = &slots[i];
            uintptr_t b = __atomic_load_n(&s->base, __ATOMIC_ACQUIRE);
            if (!b || a < b || a - b >= __atomic_load_n(&s->end, __ATOMIC_ACQUIRE))
                continue;
            if (wp_fault(s, s->heap, a)) {
                errno = saved;
                return;
            }
            break;
        }
    }
    chain(sig, si, uc);
    errno = saved;
}

static int install_handler(void) {
    int st = 0;
    if (__atomic_compare_exchange_n(&handler_state, &st, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &prev_segv) != 0) {
            int e = -errno;
            __atomic_store_n(&handler_state, 0, __ATOMIC_RELEASE);
            return e;
        }
        __atomic_store_n(&handler_state, 2, __ATOMIC_RELEASE);
        return 0;
    }
    while (__atomic_load_n(&handler_state, __ATOMIC_ACQUIRE) == 1) sched_yield();
    return __atomic_load_n(&handler_state, __ATOMIC_ACQUIRE) == 2 ? 0 : THA_EINVAL;
}

static int mprotect_setup(tha_heap_t *h) {
    int rc = install_handler();
    if (rc) return rc;
    h->wpages = calloc(WORDS(h), sizeof(uint64_t));
    h->wtaken = calloc(WORDS(h), sizeof(uint64_t));
    if (!h->wpages || !h->wtaken) return THA_ENOMEM;
    for (uint32_t i = 0; i < MAX_SLOTS; i++) {
        uintptr_t zero = 0;
        /* claim with a sentinel so the handler never sees a half-made slot */
        if (!__atomic_compare_exchange_n(&slots[i].base, &zero, (uintptr_t)1, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            continue;
        slots[i].heap = h;
        __atomic_store_n(&slots[i].end, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&slots[i].base, (uintptr_t)h->base, __ATOMIC_RELEASE);
        uint32_t hi = __atomic_load_n(&slots_hi, __ATOMIC_RELAXED);
        while (hi < i + 1 && !__atomic_compare_exchange_n(&slots_hi, &hi, i + 1, 1,
                                                          __ATOMIC_ACQ_REL,
                                                          __ATOMIC_RELAXED)) {
        }
        h->slot = (int)i;
        return 0;
    }
    return tha__hfail(h, THA_EFULL, "tracking wp: more than %d heaps use the "
                      "mprotect mechanism", MAX_SLOTS);
}

/* Next run of set bits in bits[0, limit) from *pos: 1 and [*start, +*n). */
static int next_run(const uint64_t *bits, uint64_t limit, uint64_t *pos,
                    uint64_t *start, uint64_t *n) {
    uint64_t i = *pos;
    while (i < limit) {
        uint64_t w = bits[i / 64] >> (i % 64);
        if (!w) {
            i = (i / 64 + 1) * 64;
            continue;
        }
        i += (uint64_t)__builtin_ctzll(w);
        if (i >= limit) break;
        uint64_t e = i;
        while (e < limit && (bits[e / 64] >> (e % 64) & 1)) e++;
        *start = i;
        *n = e - i;
        *pos = e;
        return 1;
    }
    *pos = limit;
    return 0;
}

/* ---- the heap's side -------------------------------------------------- */

const char *tha__mech_name(int mech) {
    switch (mech) {
    case THA__MECH_DIFF: return "shadow-diff";
    case THA__MECH_UFFD: return "uffd-wp-async";
    case THA__MECH_MPROTECT: return "mprotect";
    default: return "explicit";
    }
}

int tha__wp_open(tha_heap_t *h, int requested) {
    h->uffd = h->pagemap = h->slot = -1;
    const char *force = getenv("THA_WP_MECHANISM"); /* tests: "mprotect", "uffd" */
    int want_mprotect = force && strcmp(force, "mprotect") == 0;
    if (!want_mprotect && uffd_setup(h) == 0) {
        h->mech = THA__MECH_UFFD;
        h->tracking = THA_TRACK_WP;
        return 0;
    }
    if (requested == THA_TRACK_AUTO) { /* auto never takes over SIGSEGV */
        h->mech = THA__MECH_DIFF;
        h->tracking = THA_TRACK_DIFF;
        return 0;
    }
    int rc = mprotect_setup(h);
    if (rc) return rc;
    h->mech = THA__MECH_MPROTECT;
    h->tracking = THA_TRACK_WP;
    return 0;
}

void tha__wp_close(tha_heap_t *h) {
    if (h->slot >= 0) {
        struct slot *s = &slots[h->slot];
        __atomic_store_n(&s->base, (uintptr_t)1, __ATOMIC_RELEASE); /* unseen */
        s->heap = NULL;
        __atomic_store_n(&s->base, (uintptr_t)0, __ATOMIC_RELEASE);
        __atomic_sub_fetch(&islands_all, __atomic_exchange_n(&h->islands, 0, __ATOMIC_RELAXED),
                           __ATOMIC_RELAXED);
        h->slot = -1;
    }
    if (h->uffd >= 0) close(h->uffd);
    if (h->pagemap >= 0) close(h->pagemap);
    h->uffd = h->pagemap = -1;
    free(h->wpages);
    free(h->wtaken);
    h->wpages = h->wtaken = NULL;
}

static void degrade(tha_heap_t *h, int err);

/* What THA_TRACK_AUTO gives in this process: uffd, else diff. */
int tha__wp_auto_mech(void) {
    const char *force = getenv("THA_WP_MECHANISM");
    if (force && strcmp(force, "mprotect") == 0) return THA__MECH_DIFF;
    return uffd_works() ? THA__MECH_UFFD : THA__MECH_DIFF;
}

/* A heap whose pages are already committed (and may hold data) starts
 * wp tracking: every committed page is protected, so the first write to
 * each from now on is recorded. */
int tha__wp_start(tha_heap_t *h) {
    if (h->mech == THA__MECH_UFFD) {
        int rc = uffd_protect(h->uffd, h->base, h->committed);
        if (rc) degrade(h, rc);
    } else if (h->mech == THA__MECH_MPROTECT) {
        __atomic_store_n(&slots[h->slot].end, h->committed, __ATOMIC_RELEASE);
        if (h->committed && mprotect(h->base, h->committed, PROT_READ) != 0) {
            int rc = -errno;
            tha__wp_stop(h);
            return rc;
        }
    }
    return 0;
}

/* Ends wp tracking on a live heap: its pages become plainly writable
 * first (a write between the two is then neither faulted nor lost), then
 * the mechanism is closed; h->mech becomes diff (the shadow stays). */
void tha__wp_stop(tha_heap_t *h) {
    if (h->mech == THA__MECH_MPROTECT && h->committed)
        mprotect(h->base, h->committed, PROT_READ | PROT_WRITE);
    if (h->mech == THA__MECH_UFFD && h->committed) {
        struct uffdio_writeprotect wp = {
            .range = {.start = (uint64_t)(uintptr_t)h->base, .len = h->committed},
            .mode = 0};
        ioctl(h->uffd, UFFDIO_WRITEPROTECT, &wp);
    }
    tha__wp_close(h);
    h->mech = THA__MECH_DIFF;
}

/* Falls back to comparing everything with the shadow from now on. */
static void degrade(tha_heap_t *h, int err) {
    (void)err;
    if (h->mech == THA__MECH_UFFD) {
        close(h->uffd);
        close(h->pagemap);
        h->uffd = h->pagemap = -1;
    }
    h->mech = THA__MECH_DIFF;
}

int tha__wp_committed(tha_heap_t *h, uint64_t from, uint64_t to) {
    if (h->mech == THA__MECH_UFFD) {
        int rc = uffd_protect(h->uffd, h->base + from, to - from);
        if (rc) degrade(h, rc);
    } else if (h->mech == THA__MECH_MPROTECT) {
        __atomic_store_n(&slots[h->slot].end, to, __ATOMIC_RELEASE);
    }
    return 0;
}

void tha__wp_zapped(tha_heap_t *h, uint64_t off, uint64_t len) {
    /* MADV_DONTNEED drops anonymous pages' write-protect markers */
    if (h->mech == THA__MECH_UFFD && len) {
        int rc = uffd_protect(h->uffd, h->base + off, len);
        if (rc) degrade(h, rc);
    }
}

/* uffd_scan's ranges are addresses; the report is offsets. */
typedef struct report {
    tha_heap_t *h;
    tha__pages_fn found;
    void *ctx;
} report_t;

static void report_range(void *ctx, uint64_t a, uint64_t b) {
    report_t *r = ctx;
    uint64_t base = (uint64_t)(uintptr_t)r->h->base;
    r->found(r->h, r->ctx, a - base, b - base);
}

void tha__wp_collect(tha_heap_t *h, tha__pages_fn found, void *ctx) {
    const uint64_t top = tha__reg(h)->top;
    if (h->mech == THA__MECH_UFFD) {
        report_t rep = {h, found, ctx};
        int rc = uffd_scan(h->pagemap, h->base, h->committed, report_range, &rep);
        if (rc) {
            degrade(h, rc);
            found(h, ctx, 0, top);
        }
        return;
    }
    /* mprotect: take the written set, re-protect it, then compare (a write
     * after the re-protect faults again and is found next time). */
    __atomic_sub_fetch(&islands_all, __atomic_exchange_n(&h->islands, 0, __ATOMIC_RELAXED),
                       __ATOMIC_RELAXED);
    uint32_t all = __atomic_exchange_n(&h->overflow, 0, __ATOMIC_ACQ_REL);
    uint64_t words = (h->committed / THA__PAGE + 63) / 64, runs = 0;
    for (uint64_t w = 0; w < words; w++) {
        uint64_t v = __atomic_exchange_n(&h->wpages[w], 0, __ATOMIC_ACQ_REL);
        h->wtaken[w] = v;
        runs += (uint64_t)__builtin_popcountll(v & ~(v << 1));
    }
    if (all || runs > 64) {
        mprotect(h->base, h->committed, PROT_READ);
    } else {
        uint64_t pos = 0, p, n;
        while (next_run(h->wtaken, words * 64, &pos, &p, &n))
            mprotect(h->base + p * THA__PAGE, n * THA__PAGE, PROT_READ);
    }
    if (all) {
        found(h, ctx, 0, top);
        return;
    }
    uint64_t pos = 0, p, n, tp = top / THA__PAGE;
    while (next_run(h->wtaken, words * 64 < tp ? words * 64 : tp, &pos, &p, &n))
        found(h, ctx, p * THA__PAGE, (p + n) * THA__PAGE);
}

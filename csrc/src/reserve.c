/* reserve.c — pages touched ahead for a standby's next bulk sync (tha.h,
 * tha_reserve_create). The reserve is one private anonymous mapping, every
 * page written once; a heap takes it by moving those pages (mremap, no
 * copy, no fault) onto the start of its own region.
 */
#include "heap.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

struct tha_reserve {
    uint8_t *base; /* NULL once taken */
    size_t len;    /* a multiple of the page size */
};

int tha_reserve_create(tha_reserve_t **out, size_t bytes) {
    if (!out) return THA_EINVAL;
    *out = NULL;
    if (bytes == 0 || bytes > (1ull << 44)) return THA_EINVAL;
    size_t len = tha__align_up(bytes, THA__GRANULE);
    tha_reserve_t *r = calloc(1, sizeof *r);
    if (!r) return THA_ENOMEM;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(r);
        return THA_ENOMEM;
    }
    /* the bulk sync's heap asks for 2 MiB pages too (session.c) */
    madvise(p, len, MADV_HUGEPAGE);
    if (madvise(p, len, MADV_POPULATE_WRITE) != 0) {
        if (errno != EINVAL) { /* ENOMEM, EFAULT: the pages are not there */
            munmap(p, len);
            free(r);
            return THA_ENOMEM;
        }
        /* a kernel before 5.14: one write per page does it */
        long page = sysconf(_SC_PAGESIZE);
        for (size_t o = 0; o < len; o += (size_t)page) ((volatile uint8_t *)p)[o] = 0;
    }
    r->base = p;
    r->len = len;
    *out = r;
    return 0;
}

void tha_reserve_destroy(tha_reserve_t *r) {
    if (!r) return;
    if (r->base) munmap(r->base, r->len);
    free(r);
}

size_t tha_reserve_bytes(const tha_reserve_t *r) { return r && r->base ? r->len : 0; }

uint64_t tha__reserve_move(tha_reserve_t *r, uint8_t *dst, uint64_t cap) {
    if (!r || !r->base || !dst) return 0;
    uint64_t n = r->len < cap ? r->len : cap;
    /* MREMAP_FIXED replaces what is at dst: the caller's own PROT_NONE
     * placeholder. On failure the kernel may have unmapped that range
     * already, so it is mapped again (still the caller's) before return. */
    void *q = mremap(r->base, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    if (q == MAP_FAILED || q != (void *)dst) {
        mmap(dst, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
             -1, 0);
        return 0;
    }
    /* the region's rule: nothing past its committed top is accessible
     * (tha__commit opens it); the pages stay resident under PROT_NONE */
    mprotect(dst, n, PROT_NONE);
    if (r->len > n) munmap(r->base + n, r->len - n);
    r->base = NULL;
    r->len = 0;
    return n;
}

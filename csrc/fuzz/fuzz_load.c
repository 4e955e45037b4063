/* fuzz_load.c — tha_heap_load of a checkpoint and its delta log. Input:
 * [u32 length][a snapshot frame][delta frames: u32 length + bytes]*. The
 * snapshot's image is laid straight into a heap (no checks: it stands for
 * whatever a writer's memory held, a bit flip before the checksums), its
 * region's capacity and top set so the writer can stream it, and that heap
 * writes a real checkpoint (valid checksums) and, through its log, the
 * deltas (each given the next seq and resealed). A version-2 snapshot
 * makes that writer a same-address heap at FZ_BASE (gone before the load,
 * which maps the heap there again). Then load; if it returns a heap,
 * fz_oracle. */
#include "fuzz_common.h"

#include <unistd.h>

static char ckpt[64], logf[64];

/* Pointer words as a writer's memory holds them: offsets (same-address:
 * addresses already) in the image stay, function id 0 is fz_hook, the
 * rest NULL. */
static void rebase(tha_heap_t *h, uint64_t top, uint64_t fb) {
    uint64_t base = (uint64_t)(uintptr_t)h->base;
    for (uint64_t b = 0; b < top / THA__BLOCK; b++)
        for (unsigned m = h->ptrmap[b]; m; m &= m - 1) {
            uint64_t *w = (uint64_t *)(h->base + b * THA__BLOCK + __builtin_ctz(m) * 8);
            if (fb && !(*w & THA__FUNC_TAG)) { /* same-address: addresses already */
                if (*w && *w - fb - 1 >= top) *w = 0;
                continue;
            }
            *w = fz_native(*w, base, top);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ckpt[0]) {
        /* in memory where there is a tmpfs: every run fsyncs twice */
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(ckpt, sizeof ckpt, "%s/tha_fuzz_load_%d.ckpt", dir, (int)getpid());
        snprintf(logf, sizeof logf, "%s/tha_fuzz_load_%d.log", dir, (int)getpid());
    }
    if (size < 4) return 0;
    uint32_t n;
    memcpy(&n, data, 4);
    if (n > size - 4) n = (uint32_t)(size - 4);
    const uint8_t *snapf = data + 4;
    tha__frame_hdr_t hd;
    if (n < sizeof hd + sizeof(tha__run_t)) return 0;
    memcpy(&hd, snapf, sizeof hd);
    uint64_t slen = tha__align_up(hd.schema_len, 8);
    if (hd.kind != THA_FRAME_SNAPSHOT || slen > n - sizeof hd - sizeof(tha__run_t)) return 0;
    const uint8_t *p = snapf + sizeof hd + slen;
    tha__run_t run;
    memcpy(&run, p, sizeof run);
    uint64_t avail = n - sizeof hd - slen - sizeof run;
    uint64_t nb = run.nblocks, mlen = tha__align_up(nb, 8);
    if (nb == 0 || nb > FZ_CAP / THA__BLOCK || mlen + nb * THA__BLOCK > avail) return 0;
    uint64_t top = tha__align_up(nb * THA__BLOCK, THA__PAGE);
    /* a same-address snapshot (version 2) stands for a same-address writer */
    const uint64_t fb = hd.version == 2 ? (uint64_t)(uintptr_t)FZ_BASE : 0;
    tha_heap_t *src;
    if (fb)
        fz_must(tha_heap_create_at(&src, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT, FZ_BASE),
                "create at FZ_BASE");
    else
        fz_must(tha_heap_create(&src, fz_schema(), FZ_CAP, THA_TRACK_EXPLICIT), "create");
    if (tha__commit(src, top)) {
        tha_heap_destroy(src);
        return 0;
    }
    memset(src->base, 0, src->committed);
    memcpy(src->base, p + sizeof run + mlen, nb * THA__BLOCK);
    memcpy(src->ptrmap, p + sizeof run, nb);
    rebase(src, top, fb);
    tha__region_t *r = tha__reg(src);
    r->capacity = FZ_CAP; /* what the writer itself relies on */
    r->top = top;
    int rc = tha_heap_checkpoint(src, ckpt, NULL, NULL);
    int have_log = 0;
    if (rc == 0 && tha_heap_attach_log(src, logf, -1) == 0) {
        have_log = 1;
        size_t pos = 4 + n;
        for (int i = 0; pos + 4 <= size && i < 16; i++) {
            uint32_t m;
            memcpy(&m, data + pos, 4);
            pos += 4;
            if (m > size - pos) m = (uint32_t)(size - pos);
            if (m >= sizeof hd) {
                uint8_t *f = malloc(m);
                memcpy(f, data + pos, m);
                tha__frame_hdr_t fh;
                memcpy(&fh, f, sizeof fh);
                fh.lineage = src->lineage;
                fh.seq = src->seq + 1 + (uint64_t)i;
                memcpy(f, &fh, sizeof fh);
                fz_reseal(f, m);
                memcpy(&fh, f, sizeof fh);
                (void)tha__log_append(src, &fh, f, m); /* through the heap's sink */
                free(f);
            }
            pos += m;
        }
        tha_heap_detach_log(src);
    }
    tha_heap_destroy(src);
    if (rc == 0) {
        tha_load_options_t opt = {.schema = fz_schema(), .log = have_log ? logf : NULL};
        tha_load_report_t rep;
        tha_heap_t *h = NULL;
        if (tha_heap_load(&h, ckpt, &opt, &rep) == 0) fz_oracle(h);
        tha_heap_destroy(h);
    }
    unlink(ckpt);
    unlink(logf);
    return 0;
}

/* codec.c — snapshot and delta frames.
 * A frame is a header, (snapshot only) the schema, then runs of consecutive
 * 64-byte blocks, each run carrying one pointer-mask byte per block. Encode
 * copies blocks and rewrites pointer words to region offsets (function
 * pointers to registry ids); apply verifies everything first — checksums,
 * identity, sequence, every run and pointer word — and only then copies and
 * rebases. Data is processed in chunks that stay in cache between the copy,
 * the pointer pass and the checksum.
 * Byte order: little-endian hosts only (checked at compile time).
 */
#include "tha_internal.h"

#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "the frame format is little-endian; big-endian hosts need byte swaps");

#define CHUNK_BLOCKS 1024u /* 64 KiB of data per pass */

static uint64_t run_bytes(uint64_t nblocks) {
    return sizeof(tha__run_t) + tha__align_up(nblocks, 8) + nblocks * THA__BLOCK;
}

static const char *kind_name(int kind) {
    return kind == THA_FRAME_SNAPSHOT ? "snapshot" : "delta";
}

int tha_heap_frame_size(const tha_heap_t *h, int kind, size_t *size) {
    const tha__region_t *r = tha__reg(h);
    uint64_t top_blocks = r->top / THA__BLOCK, n = THA_FRAME_HEADER_SIZE;
    if (kind == THA_FRAME_SNAPSHOT) {
        size_t slen;
        int rc = tha_schema_serialize(h->schema, NULL, 0, &slen);
        if (rc) return rc;
        n += tha__align_up(slen, 8) + run_bytes(top_blocks);
    } else if (kind == THA_FRAME_DELTA) {
        uint64_t b = 0, len;
        while ((b = tha__next_dirty_run(h, b, top_blocks, &len)) < top_blocks) {
            n += run_bytes(len);
            b += len;
        }
    } else {
        return THA_EINVAL;
    }
    *size = n;
    return 0;
}

/* ---- encode ----------------------------------------------------------- */

static int foreign(tha_heap_t *h, int kind, uint64_t off, uint64_t value) {
    char where[160] = "allocator metadata";
    tha__objhdr_t *oh;
    uint64_t payload = tha__find(h, off, &oh);
    if (payload) {
        const tha__type_t *t = tha__schema_type(h->schema, oh->type_id);
        tha__schema_describe(h->schema, oh->type_id, (off - payload) % t->size,
                             where, sizeof where);
    }
    return tha__hfail(h, THA_EFOREIGN, "%s: pointer at offset 0x%llx (%s) holds %p, "
                "which is neither in this heap nor a registered function",
                kind_name(kind), (unsigned long long)off, where, (void *)value);
}

/* Rewrites the pointer words of nb blocks copied to dst (first block b0):
 * heap addresses become offsets, functions become tagged registry ids. */
static int to_wire(tha_heap_t *h, int kind, uint8_t *dst, const uint8_t *mask,
                   uint64_t b0, uint64_t nb) {
    uint64_t base = (uint64_t)(uintptr_t)h->base, top = tha__reg(h)->top;
    for (uint64_t i = 0; i < nb; i++) {
        for (unsigned m = mask[i]; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctz(m);
            uint64_t *w = (uint64_t *)(dst + i * THA__BLOCK + j * 8), v = *w;
            if (v == 0) continue;
            uint64_t o = v - base;
            if (o - 1 < top) { /* 1..top: NULL keeps 0, offset 0 is never an object */
                *w = o;
                continue;
            }
            int64_t id = tha__schema_func_id(h->schema, (void (*)(void))(uintptr_t)v);
            if (id < 0) return foreign(h, kind, (b0 + i) * THA__BLOCK + j * 8, v);
            *w = THA__FUNC_TAG | (uint64_t)id;
        }
    }
    return 0;
}

/* Appends one run of nb blocks from block b0 at *q, updating *crc. */
static int put_run(tha_heap_t *h, int kind, uint64_t b0, uint64_t nb,
                   uint8_t **q, uint32_t *crc) {
    uint8_t *p = *q;
    tha__run_t run = {.offset = b0 * THA__BLOCK, .nblocks = nb};
    memcpy(p, &run, sizeof run);
    uint8_t *mask = p + sizeof run;
    memcpy(mask, h->ptrmap + b0, nb);
    memset(mask + nb, 0, tha__align_up(nb, 8) - nb);
    uint64_t head = sizeof run + tha__align_up(nb, 8);
    *crc = tha_crc32c(*crc, p, head);
    uint8_t *data = p + head;
    for (uint64_t i = 0; i < nb; i += CHUNK_BLOCKS) {
        uint64_t n = nb - i < CHUNK_BLOCKS ? nb - i : CHUNK_BLOCKS;
        uint8_t *dst = data + i * THA__BLOCK;
        memcpy(dst, h->base + (b0 + i) * THA__BLOCK, n * THA__BLOCK);
        int rc = to_wire(h, kind, dst, mask + i, b0 + i, n);
        if (rc) return rc;
        *crc = tha_crc32c(*crc, dst, n * THA__BLOCK);
    }
    *q = data + nb * THA__BLOCK;
    return 0;
}

int tha_heap_encode(tha_heap_t *h, int kind, void *buf, size_t cap, size_t *len) {
    if (!len || (kind != THA_FRAME_SNAPSHOT && kind != THA_FRAME_DELTA))
        return tha__hfail(h, THA_EINVAL, "encode: kind must be snapshot or delta");
    size_t need;
    int rc = tha_heap_frame_size(h, kind, &need);
    if (rc) return tha__hfail(h, rc, "encode: %s", tha_strerror(rc));
    *len = need;
    if (!buf || cap < need)
        return tha__hfail(h, THA_ETOOSMALL, "encode: the %s needs %zu bytes, buffer "
                    "has %zu", kind_name(kind), need, buf ? cap : 0);
    const tha__region_t *r = tha__reg(h);
    uint8_t *out = buf, *q = out + THA_FRAME_HEADER_SIZE;
    tha__frame_hdr_t hd;
    memset(&hd, 0, sizeof hd);
    hd.magic = THA__FRAME_MAGIC;
    hd.version = THA_FRAME_VERSION;
    hd.kind = (uint16_t)kind;
    hd.header_size = THA_FRAME_HEADER_SIZE;
    hd.fingerprint = tha_schema_fingerprint(h->schema);
    hd.lineage = h->lineage;
    hd.epoch = h->epoch;
    hd.seq = h->seq + 1;
    hd.capacity = r->capacity;
    hd.top = r->top;
    hd.length = need;
    uint32_t crc = 0;
    uint64_t top_blocks = r->top / THA__BLOCK;
    if (kind == THA_FRAME_SNAPSHOT) {
        size_t slen;
        rc = tha_schema_serialize(h->schema, q, need - (size_t)(q - out), &slen);
        if (rc) return tha__hfail(h, rc, "encode: schema: %s", tha_strerror(rc));
        hd.schema_len = (uint32_t)slen;
        memset(q + slen, 0, tha__align_up(slen, 8) - slen);
        crc = tha_crc32c(crc, q, tha__align_up(slen, 8));
        q += tha__align_up(slen, 8);
        rc = put_run(h, kind, 0, top_blocks, &q, &crc);
        if (rc) return rc;
        hd.nruns = 1;
        hd.nblocks = top_blocks;
    } else {
        uint64_t b = 0, n;
        while ((b = tha__next_dirty_run(h, b, top_blocks, &n)) < top_blocks) {
            rc = put_run(h, kind, b, n, &q, &crc);
            if (rc) return rc;
            hd.nruns++;
            hd.nblocks += n;
            b += n;
        }
    }
    THA_ASSERT((size_t)(q - out) == need);
    hd.body_crc = crc;
    hd.header_crc = tha_crc32c(0, &hd, offsetof(tha__frame_hdr_t, header_crc));
    memcpy(out, &hd, sizeof hd);
    /* Committed: nothing above can fail any more. */
    h->seq = hd.seq;
    tha__clear_dirty(h);
    h->frames_encoded++;
    h->bytes_encoded += need;
    return 0;
}

/* ---- header ----------------------------------------------------------- */

static int parse_header(const void *frame, size_t len, tha__frame_hdr_t *hd,
                        char *msg, size_t cap) {
    if (!frame || len < THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, cap, THA_EFRAME, "frame truncated: %zu bytes, a "
                         "header alone is %d", len, THA_FRAME_HEADER_SIZE);
    memcpy(hd, frame, sizeof *hd);
    if (hd->magic != THA__FRAME_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "not a tha frame (magic 0x%08x)",
                         hd->magic);
    if (tha_crc32c(0, hd, offsetof(tha__frame_hdr_t, header_crc)) != hd->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "frame header checksum mismatch");
    if (hd->version != THA_FRAME_VERSION)
        return tha__fail(msg, cap, THA_EVERSION, "frame format version %u; this "
                         "build reads version %d", hd->version, THA_FRAME_VERSION);
    if (hd->header_size != THA_FRAME_HEADER_SIZE ||
        (hd->kind != THA_FRAME_SNAPSHOT && hd->kind != THA_FRAME_DELTA))
        return tha__fail(msg, cap, THA_EFRAME, "frame header malformed (kind %u, "
                         "header size %u)", hd->kind, hd->header_size);
    if (hd->length != len)
        return tha__fail(msg, cap, THA_EFRAME, "frame seq %llu truncated or "
                         "padded: header says %llu bytes, got %zu",
                         (unsigned long long)hd->seq,
                         (unsigned long long)hd->length, len);
    if (hd->top % THA__PAGE || hd->top > hd->capacity ||
        hd->capacity % THA__GRANULE || hd->capacity == 0)
        return tha__fail(msg, cap, THA_EFRAME, "frame seq %llu: impossible image "
                         "size %llu for capacity %llu", (unsigned long long)hd->seq,
                         (unsigned long long)hd->top,
                         (unsigned long long)hd->capacity);
    if (hd->kind == THA_FRAME_DELTA && hd->schema_len)
        return tha__fail(msg, cap, THA_EFRAME, "delta carries a schema");
    if ((uint64_t)hd->schema_len > len - THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, cap, THA_EFRAME, "schema length %u runs past the "
                         "frame end", hd->schema_len);
    return 0;
}

int tha_frame_info(const void *frame, size_t len, tha_frame_info_t *out) {
    tha__frame_hdr_t hd;
    char msg[160];
    int rc = parse_header(frame, len, &hd, msg, sizeof msg);
    if (rc) return rc;
    out->kind = hd.kind;
    out->version = hd.version;
    out->fingerprint = hd.fingerprint;
    out->lineage = hd.lineage;
    out->epoch = hd.epoch;
    out->seq = hd.seq;
    out->capacity = hd.capacity;
    out->top = hd.top;
    out->length = hd.length;
    out->nruns = hd.nruns;
    out->nblocks = hd.nblocks;
    return 0;
}

int tha_frame_schema(const void *frame, size_t len, tha_schema_t **out,
                     char *msg, size_t msgcap) {
    tha__frame_hdr_t hd;
    char tmp[160];
    if (!msg) { msg = tmp; msgcap = sizeof tmp; }
    int rc = parse_header(frame, len, &hd, msg, msgcap);
    if (rc) return rc;
    if (hd.kind != THA_FRAME_SNAPSHOT)
        return tha__fail(msg, msgcap, THA_EINVAL, "only snapshots carry a schema");
    return tha_schema_deserialize((const uint8_t *)frame + THA_FRAME_HEADER_SIZE,
                                  hd.schema_len, out, msg, msgcap);
}

/* ---- verify ----------------------------------------------------------- */

/* A pointer word as it travels: 0, an offset in 1..top, or a tagged id. */
static int check_word(tha_heap_t *h, const tha__frame_hdr_t *hd, uint64_t off,
                      uint64_t v) {
    if (v == 0) return 0;
    if (v & THA__FUNC_TAG) {
        uint64_t id = v & ~THA__FUNC_TAG;
        if (id >= h->schema->nfuncs)
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: function id %llu at offset "
                        "0x%llx is out of range (%u registered)",
                        kind_name(hd->kind), (unsigned long long)hd->seq,
                        (unsigned long long)id, (unsigned long long)off,
                        h->schema->nfuncs);
        if (!h->schema->funcs[id].fn)
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: function '%s' at offset "
                        "0x%llx is not bound in this process",
                        kind_name(hd->kind), (unsigned long long)hd->seq,
                        h->schema->funcs[id].name, (unsigned long long)off);
        return 0;
    }
    if (v > hd->top)
        return tha__hfail(h, THA_ERANGE, "%s seq %llu: pointer at offset 0x%llx points "
                    "to offset 0x%llx, past the image end 0x%llx",
                    kind_name(hd->kind), (unsigned long long)hd->seq,
                    (unsigned long long)off, (unsigned long long)v,
                    (unsigned long long)hd->top);
    return 0;
}

/* The region header as it will read after the frame: the current one with
 * the frame's blocks laid over it. */
static int check_region_header(tha_heap_t *h, const tha__frame_hdr_t *hd,
                               const uint8_t *body, uint64_t body_len) {
    tha__region_t want;
    if (hd->kind == THA_FRAME_SNAPSHOT)
        memset(&want, 0, sizeof want);
    else
        memcpy(&want, tha__reg(h), sizeof want);
    const uint8_t *p = body + tha__align_up(hd->schema_len, 8);
    for (uint32_t i = 0; i < hd->nruns; i++) {
        tha__run_t run;
        memcpy(&run, p, sizeof run);
        const uint8_t *data = p + sizeof run + tha__align_up(run.nblocks, 8);
        if (run.offset >= sizeof want) break; /* runs ascend */
        uint64_t n = run.nblocks * THA__BLOCK;
        if (n > sizeof want - run.offset) n = sizeof want - run.offset;
        memcpy((uint8_t *)&want + run.offset, data, n);
        p = data + run.nblocks * THA__BLOCK;
    }
    (void)body_len;
    uint64_t npages = hd->capacity / THA__PAGE;
    uint64_t roots_off = tha__align_up(sizeof want, THA__BLOCK);
    uint64_t pagemap_off = roots_off + THA_MAX_ROOTS * sizeof(tha__root_t);
    uint64_t data_off = tha__align_up(pagemap_off + npages * sizeof(tha__page_t),
                                      THA__PAGE);
    if (want.magic != THA__REGION_MAGIC || want.capacity != hd->capacity ||
        want.top != hd->top || want.npages != npages ||
        want.roots_off != roots_off || want.pagemap_off != pagemap_off ||
        want.data_off != data_off || want.nroots > THA_MAX_ROOTS ||
        want.top < data_off)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: the region header it carries is "
                    "inconsistent", kind_name(hd->kind), (unsigned long long)hd->seq);
    return 0;
}

/* Walks the runs: bounds, order, masks, pointer words. Reads every body
 * byte once, in order, and returns where it stopped in *done. */
static int check_runs(tha_heap_t *h, const tha__frame_hdr_t *hd,
                      const uint8_t *body, uint64_t body_len, uint64_t *done,
                      uint32_t *crc) {
    const char *k = kind_name(hd->kind);
    unsigned long long seq = (unsigned long long)hd->seq;
    uint64_t pos = tha__align_up(hd->schema_len, 8);
    if (pos > body_len) {
        *done = 0;
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: schema padding past the end", k, seq);
    }
    *crc = tha_crc32c(*crc, body, pos);
    *done = pos;
    uint64_t top_blocks = hd->top / THA__BLOCK, next_block = 0, blocks = 0;
    uint64_t meta_blocks = 0; /* blocks below data_off hold no pointers */
    {
        uint64_t npages = hd->capacity / THA__PAGE;
        uint64_t pm = tha__align_up(sizeof(tha__region_t), THA__BLOCK) +
                      THA_MAX_ROOTS * sizeof(tha__root_t);
        meta_blocks = tha__align_up(pm + npages * sizeof(tha__page_t), THA__PAGE) /
                      THA__BLOCK;
    }
    for (uint32_t i = 0; i < hd->nruns; i++) {
        tha__run_t run;
        if (body_len - pos < sizeof run)
            return tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u header truncated", k,
                        seq, i);
        memcpy(&run, body + pos, sizeof run);
        uint64_t b0 = run.offset / THA__BLOCK;
        if (run.offset % THA__BLOCK || run.nblocks == 0 || b0 < next_block ||
            b0 > top_blocks || run.nblocks > top_blocks - b0)
            return tha__hfail(h, THA_ERANGE, "%s seq %llu: run %u at offset 0x%llx "
                        "(%llu blocks) is out of range or out of order (image "
                        "end 0x%llx)", k, seq, i, (unsigned long long)run.offset,
                        (unsigned long long)run.nblocks,
                        (unsigned long long)hd->top);
        uint64_t mlen = tha__align_up(run.nblocks, 8);
        if (body_len - pos - sizeof run < mlen ||
            (body_len - pos - sizeof run - mlen) / THA__BLOCK < run.nblocks)
            return tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u at offset 0x%llx is "
                        "truncated", k, seq, i, (unsigned long long)run.offset);
        const uint8_t *mask = body + pos + sizeof run;
        *crc = tha_crc32c(*crc, body + pos, sizeof run + mlen);
        pos += sizeof run + mlen;
        *done = pos;
        for (uint64_t j = 0; j < run.nblocks; j++)
            if (mask[j] && b0 + j < meta_blocks)
                return tha__hfail(h, THA_EFRAME, "%s seq %llu: pointer mask on allocator "
                            "metadata at offset 0x%llx", k, seq,
                            (unsigned long long)((b0 + j) * THA__BLOCK));
        for (uint64_t j = run.nblocks; j < mlen; j++)
            if (mask[j])
                return tha__hfail(h, THA_EFRAME, "%s seq %llu: run %u mask padding is "
                            "not zero", k, seq, i);
        const uint8_t *data = body + pos;
        for (uint64_t c = 0; c < run.nblocks; c += CHUNK_BLOCKS) {
            uint64_t n = run.nblocks - c < CHUNK_BLOCKS ? run.nblocks - c : CHUNK_BLOCKS;
            const uint8_t *chunk = data + c * THA__BLOCK;
            *crc = tha_crc32c(*crc, chunk, n * THA__BLOCK);
            pos += n * THA__BLOCK;
            *done = pos;
            for (uint64_t j = 0; j < n; j++)
                for (unsigned m = mask[c + j]; m; m &= m - 1) {
                    unsigned w = (unsigned)__builtin_ctz(m);
                    uint64_t v;
                    memcpy(&v, chunk + j * THA__BLOCK + w * 8, 8);
                    int rc = check_word(h, hd, (b0 + c + j) * THA__BLOCK + w * 8, v);
                    if (rc) return rc;
                }
        }
        next_block = b0 + run.nblocks;
        blocks += run.nblocks;
    }
    if (pos != body_len)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: %llu stray bytes after the last "
                    "run", k, seq, (unsigned long long)(body_len - pos));
    if (blocks != hd->nblocks)
        return tha__hfail(h, THA_EFRAME, "%s seq %llu: header counts %llu blocks, runs "
                    "hold %llu", k, seq, (unsigned long long)hd->nblocks,
                    (unsigned long long)blocks);
    if (hd->kind == THA_FRAME_SNAPSHOT && (hd->nruns != 1 || blocks != top_blocks))
        return tha__hfail(h, THA_EFRAME, "snapshot seq %llu does not cover the whole "
                    "image", seq);
    return 0;
}

static int check_identity(tha_heap_t *h, const tha__frame_hdr_t *hd,
                          const uint8_t *frame, size_t len) {
    const tha__region_t *r = tha__reg(h);
    unsigned long long seq = (unsigned long long)hd->seq;
    if (hd->fingerprint != tha_schema_fingerprint(h->schema)) {
        if (hd->kind == THA_FRAME_SNAPSHOT) {
            tha_schema_t *theirs = NULL;
            char why[200];
            int rc = tha_frame_schema(frame, len, &theirs, why, sizeof why);
            if (rc == 0) {
                rc = tha_schema_compare(theirs, h->schema, why, sizeof why);
                tha_schema_release(theirs);
                if (rc)
                    return tha__hfail(h, THA_EMISMATCH, "snapshot seq %llu: schema "
                                "mismatch (frame vs heap): %s", seq, why);
            } else {
                return tha__hfail(h, rc, "snapshot seq %llu: its schema is unreadable: "
                            "%s", seq, why);
            }
        }
        return tha__hfail(h, THA_EMISMATCH, "%s seq %llu: schema fingerprint %016llx, "
                    "heap has %016llx", kind_name(hd->kind), seq,
                    (unsigned long long)hd->fingerprint,
                    (unsigned long long)tha_schema_fingerprint(h->schema));
    }
    if (hd->epoch < h->epoch)
        return tha__hfail(h, THA_ESTALE, "%s seq %llu from epoch %llu: this heap is at "
                    "epoch %llu", kind_name(hd->kind), seq,
                    (unsigned long long)hd->epoch, (unsigned long long)h->epoch);
    if (hd->kind == THA_FRAME_SNAPSHOT) {
        if (hd->top > h->capacity)
            return tha__hfail(h, THA_ECAPACITY, "snapshot seq %llu needs %llu bytes; this "
                        "heap's capacity is %llu", seq,
                        (unsigned long long)hd->top, (unsigned long long)h->capacity);
        if (hd->capacity > h->capacity)
            return tha__hfail(h, THA_ECAPACITY, "snapshot seq %llu comes from a heap of "
                        "capacity %llu; this one has %llu", seq,
                        (unsigned long long)hd->capacity,
                        (unsigned long long)h->capacity);
        return 0;
    }
    if (hd->lineage != h->lineage)
        return tha__hfail(h, THA_ESEQ, "delta seq %llu belongs to another frame series "
                    "(lineage %016llx, heap follows %016llx): apply a snapshot "
                    "first", seq, (unsigned long long)hd->lineage,
                    (unsigned long long)h->lineage);
    if (hd->seq != h->seq + 1)
        return tha__hfail(h, THA_ESEQ, "delta seq %llu out of sequence: the heap is at "
                    "seq %llu and needs %llu next", seq,
                    (unsigned long long)h->seq, (unsigned long long)h->seq + 1);
    if (hd->capacity != r->capacity || hd->top < r->top)
        return tha__hfail(h, THA_EFRAME, "delta seq %llu: capacity %llu / image end "
                    "%llu do not follow the heap's %llu / %llu", seq,
                    (unsigned long long)hd->capacity, (unsigned long long)hd->top,
                    (unsigned long long)r->capacity, (unsigned long long)r->top);
    return 0;
}

/* ---- apply ------------------------------------------------------------ */

static void from_wire(tha_heap_t *h, uint8_t *dst, const uint8_t *mask,
                      uint64_t nb) {
    uint64_t base = (uint64_t)(uintptr_t)h->base;
    for (uint64_t i = 0; i < nb; i++)
        for (unsigned m = mask[i]; m; m &= m - 1) {
            unsigned j = (unsigned)__builtin_ctz(m);
            uint64_t *w = (uint64_t *)(dst + i * THA__BLOCK + j * 8), v = *w;
            if (v == 0) continue;
            *w = (v & THA__FUNC_TAG)
                     ? (uint64_t)(uintptr_t)h->schema->funcs[v & ~THA__FUNC_TAG].fn
                     : base + v;
        }
}

int tha_heap_apply(tha_heap_t *h, const void *frame, size_t len) {
    tha__frame_hdr_t hd;
    int rc = parse_header(frame, len, &hd, h->err, sizeof h->err);
    if (rc) return rc;
    const uint8_t *f = frame, *body = f + THA_FRAME_HEADER_SIZE;
    uint64_t body_len = len - THA_FRAME_HEADER_SIZE, done = 0;
    rc = check_identity(h, &hd, f, len);
    if (rc) return rc;
    uint32_t crc = 0;
    rc = check_runs(h, &hd, body, body_len, &done, &crc);
    if (rc) { /* a corrupt frame says so, whatever broke first */
        crc = tha_crc32c(crc, body + done, body_len - done);
        if (crc != hd.body_crc)
            return tha__hfail(h, THA_ECHECKSUM, "%s seq %llu: body checksum mismatch",
                        kind_name(hd.kind), (unsigned long long)hd.seq);
        return rc;
    }
    if (crc != hd.body_crc)
        return tha__hfail(h, THA_ECHECKSUM, "%s seq %llu: body checksum mismatch",
                    kind_name(hd.kind), (unsigned long long)hd.seq);
    rc = check_region_header(h, &hd, body, body_len);
    if (rc) return rc;
    rc = tha__commit(h, hd.top);
    if (rc)
        return tha__hfail(h, rc, "%s seq %llu: cannot commit %llu bytes: %s",
                    kind_name(hd.kind), (unsigned long long)hd.seq,
                    (unsigned long long)hd.top, tha_strerror(rc));

    /* Verified: from here on nothing fails. */
    uint64_t old_top = tha__reg(h)->top;
    const uint8_t *p = body + tha__align_up(hd.schema_len, 8);
    for (uint32_t i = 0; i < hd.nruns; i++) {
        tha__run_t run;
        memcpy(&run, p, sizeof run);
        const uint8_t *mask = p + sizeof run;
        const uint8_t *data = mask + tha__align_up(run.nblocks, 8);
        uint64_t b0 = run.offset / THA__BLOCK;
        for (uint64_t c = 0; c < run.nblocks; c += CHUNK_BLOCKS) {
            uint64_t n = run.nblocks - c < CHUNK_BLOCKS ? run.nblocks - c : CHUNK_BLOCKS;
            uint8_t *dst = h->base + (b0 + c) * THA__BLOCK;
            memcpy(dst, data + c * THA__BLOCK, n * THA__BLOCK);
            from_wire(h, dst, mask + c, n);
        }
        memcpy(h->ptrmap + b0, mask, run.nblocks);
        p = data + run.nblocks * THA__BLOCK;
    }
    if (hd.kind == THA_FRAME_SNAPSHOT) {
        if (old_top > hd.top) { /* the image shrank: what lay above reads zero */
            madvise(h->base + hd.top, old_top - hd.top, MADV_DONTNEED);
            memset(h->ptrmap + hd.top / THA__BLOCK, 0, (old_top - hd.top) / THA__BLOCK);
        }
        tha__clear_dirty(h);
        h->lineage = hd.lineage;
    }
    h->seq = hd.seq;
    h->epoch = hd.epoch;
    h->frames_applied++;
    h->bytes_applied += len;
    return 0;
}

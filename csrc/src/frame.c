/* frame.c — the frame header: filled for the encoder, checked and parsed
 * for every reader (apply, bulk sync, the log and checkpoint readers, the
 * public tha_frame_info and tha_frame_schema). The layout of a frame is in
 * frame.h and docs/architecture.md, "Frames".
 */
#include "frame.h"

const char *tha__frame_kind_name(int kind) {
    return kind == THA_FRAME_SNAPSHOT ? "snapshot"
           : kind == THA__FRAME_SEGMENT ? "segment" : "delta";
}

void tha__frame_fill(const tha_heap_t *h, tha__frame_hdr_t *hd, int kind, uint64_t seq,
                     uint64_t length) {
    const tha__region_t *r = tha__reg(h);
    memset(hd, 0, sizeof *hd);
    hd->magic = THA__FRAME_MAGIC;
    /* relocatable frames stay version 1, byte for byte */
    hd->version = h->addr ? THA_FRAME_VERSION : THA__FRAME_V1;
    hd->base64k = (uint32_t)(h->addr >> 16); /* tha__base_ok: < 2^48, 64 KiB aligned */
    hd->kind = (uint16_t)kind;
    hd->header_size = THA_FRAME_HEADER_SIZE;
    hd->fingerprint = tha_schema_fingerprint(h->schema);
    hd->lineage = h->lineage;
    hd->epoch = h->epoch;
    hd->seq = seq;
    hd->capacity = r->capacity;
    hd->top = r->top;
    hd->length = length;
}

void tha__frame_finish(tha__frame_hdr_t *hd, uint32_t body_crc, void *out) {
    hd->body_crc = body_crc;
    hd->header_crc = tha_crc32c(0, hd, offsetof(tha__frame_hdr_t, header_crc));
    memcpy(out, hd, sizeof *hd);
}

static int malformed(const tha__frame_hdr_t *hd, char *msg, size_t cap) {
    return tha__fail(msg, cap, THA_EFRAME, "frame header malformed (kind %u, header "
                     "size %u)", hd->kind, hd->header_size);
}

int tha__frame_header_ok(const void *p, tha__frame_hdr_t *hd, char *msg, size_t cap) {
    memcpy(hd, p, sizeof *hd);
    if (hd->magic != THA__FRAME_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "not a tha frame (magic 0x%08x)",
                         hd->magic);
    if (tha_crc32c(0, hd, offsetof(tha__frame_hdr_t, header_crc)) != hd->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "frame header checksum mismatch");
    if (hd->version != THA__FRAME_V1 && hd->version != THA_FRAME_VERSION)
        return tha__fail(msg, cap, THA_EVERSION, "frame format version %u; this "
                         "build reads versions 1 to %d", hd->version, THA_FRAME_VERSION);
    if (hd->header_size != THA_FRAME_HEADER_SIZE) return malformed(hd, msg, cap);
    /* version 2 is exactly the frames with a base */
    if ((hd->version == THA__FRAME_V1) != (hd->base64k == 0))
        return tha__fail(msg, cap, THA_EFRAME, "frame header malformed: version %u "
                         "with same-address base 0x%llx", hd->version,
                         (unsigned long long)tha__frame_base(hd));
    return 0;
}

int tha__frame_parse(const void *frame, size_t len, tha__frame_hdr_t *hd, char *msg,
                     size_t cap) {
    if (!frame || len < THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, cap, THA_EFRAME, "frame truncated: %zu bytes, a "
                         "header alone is %d", len, THA_FRAME_HEADER_SIZE);
    int rc = tha__frame_header_ok(frame, hd, msg, cap);
    if (rc) return rc;
    if (hd->kind != THA_FRAME_SNAPSHOT && hd->kind != THA_FRAME_DELTA &&
        hd->kind != THA__FRAME_SEGMENT)
        return malformed(hd, msg, cap);
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
    if (hd->kind != THA_FRAME_SNAPSHOT && hd->schema_len)
        return tha__fail(msg, cap, THA_EFRAME, "%s carries a schema",
                         tha__frame_kind_name(hd->kind));
    if ((uint64_t)hd->schema_len > len - THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, cap, THA_EFRAME, "schema length %u runs past the "
                         "frame end", hd->schema_len);
    return 0;
}

int tha__frame_address_ok(tha_heap_t *h, const tha__frame_hdr_t *hd) {
    uint64_t fb = tha__frame_base(hd);
    if (fb == h->addr) return 0;
    unsigned long long seq = (unsigned long long)hd->seq;
    if (!h->addr)
        return tha__hfail(h, THA_EMISMATCH, "%s seq %llu comes from a same-address heap "
                          "at 0x%llx (its pointers are addresses there): this heap is "
                          "relocatable (at %p); apply it to a heap made with "
                          "tha_heap_create_at(0x%llx)", tha__frame_kind_name(hd->kind), seq,
                          (unsigned long long)fb, (void *)h->base, (unsigned long long)fb);
    if (!fb)
        return tha__hfail(h, THA_EMISMATCH, "%s seq %llu comes from a relocatable heap: "
                          "this heap is same-address (at 0x%llx) and takes only frames "
                          "of a same-address heap there", tha__frame_kind_name(hd->kind),
                          seq, (unsigned long long)h->addr);
    return tha__hfail(h, THA_EMISMATCH, "%s seq %llu comes from a same-address heap at "
                      "0x%llx: this one is at 0x%llx (pointers are addresses: a mirror "
                      "must be at its source's base)", tha__frame_kind_name(hd->kind), seq,
                      (unsigned long long)fb, (unsigned long long)h->addr);
}

int tha_frame_info(const void *frame, size_t len, tha_frame_info_t *out) {
    tha__frame_hdr_t hd;
    char msg[160];
    int rc = tha__frame_parse(frame, len, &hd, msg, sizeof msg);
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
    out->base = tha__frame_base(&hd);
    return 0;
}

int tha_frame_schema(const void *frame, size_t len, tha_schema_t **out,
                     char *msg, size_t msgcap) {
    tha__frame_hdr_t hd;
    char tmp[160];
    if (!msg) { msg = tmp; msgcap = sizeof tmp; }
    int rc = tha__frame_parse(frame, len, &hd, msg, msgcap);
    if (rc) return rc;
    if (hd.kind != THA_FRAME_SNAPSHOT)
        return tha__fail(msg, msgcap, THA_EINVAL, "only snapshots carry a schema");
    return tha__schema_deserialize((const uint8_t *)frame + THA_FRAME_HEADER_SIZE,
                                   hd.schema_len, hd.capacity, out, msg, msgcap);
}

/* frame.h — layer 3 (frame): the frame format, on the wire and in files.
 * frame.c fills, checks and parses headers; the sizes of runs and segments
 * are computed here and nowhere else.
 */
#ifndef THA_FRAME_H
#define THA_FRAME_H

#include "heap.h"

#define THA__FRAME_MAGIC 0x46414854u /* "THAF" */
/* A pointer word on the wire is 0 (NULL), 1..top (a region offset, tag
 * bits included: the base is page aligned) or, with bit 63 set, a word of
 * the class in bits 56..62 (docs/protocol.md, "Pointer words"):
 *   class 0  THA__FUNC_TAG | id                      function registry id
 *   class 1  THA__WIRE_EXTERN | id << 40 | offset    data extern id (bits
 *            40..55) and byte offset inside it (bits 0..39, < its size)
 *   class 2  THA__WIRE_TAGNULL | tags                a tagged NULL: tag bits
 *            1..7 only, valid in a slot whose field's tag mask holds them
 * An offset is at most 2^44 (THA capacity 16 TiB), so no class word is
 * ever an offset; classes 3..127 are refused, reserved. The fast apply
 * kernels rebase every word below bit 63 and look functions up inline;
 * the other classes go through tha__wire_word. */
#define THA__FUNC_TAG (1ull << 63)   /* not an offset; class 0: registry id */
#define THA__WIRE_CLASS(v) ((unsigned)((v) >> 56) & 0x7fu)
#define THA__WIRE_EXTERN (THA__FUNC_TAG | 1ull << 56)
#define THA__WIRE_TAGNULL (THA__FUNC_TAG | 2ull << 56)
#define THA__EXTERN_ID_SHIFT 40
#define THA__EXTERN_OFF_MASK ((1ull << THA__EXTERN_ID_SHIFT) - 1)
#define THA__EXTERN_ID(v) ((uint32_t)((v) >> THA__EXTERN_ID_SHIFT) & 0xffffu)

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
    uint32_t base64k;      /* version 2 (same-address source): its base / 64
                              KiB, never 0; version 1: 0 (relocatable) */
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

#define THA__FRAME_V1 1 /* relocatable frames: pointer words are offsets */

/* The base of a same-address frame's source; 0 for a relocatable one. */
static inline uint64_t tha__frame_base(const tha__frame_hdr_t *hd) {
    return (uint64_t)hd->base64k << 16;
}
/* 0 if a frame of header hd may touch h: a same-address frame only a
 * same-address heap at its base, a relocatable frame only a relocatable
 * heap; else THA_EMISMATCH naming both, the detail in h->err. */
int tha__frame_address_ok(tha_heap_t *h, const tha__frame_hdr_t *hd);

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

#endif /* THA_FRAME_H */

/* durable_priv.h — what the files of durability share (layer 7, io):
 * files.c (temp files, whole writes and reads), checkpoint.c (writing
 * checkpoint files), log.c (the delta log) and load.c (reading both back).
 * Private to the io layer. The formats are in docs/architecture.md,
 * "Durability".
 */
#ifndef THA_DURABLE_PRIV_H
#define THA_DURABLE_PRIV_H

#include "codec.h"

#include <sys/types.h>

#define THA__CKPT_MAGIC 0x43414854u    /* "THAC" */
#define THA__TRAILER_MAGIC 0x45414854u /* "THAE" */
#define THA__LOG_MAGIC 0x4c414854u     /* "THAL" */
#define THA__CKPT_HDR 128u
#define THA__TRAILER 32u
#define THA__LOG_HDR 64u
/* Blocks per segment: just under the codec's non-temporal threshold (1 MiB
 * of data), so a segment is encoded into a buffer that stays in the cache
 * for write() to read back. */
#define THA__SEG_BLOCKS 16000u
#define THA__SEG_MAX_BLOCKS (1u << 20) /* a file announcing more is refused */

/* At offset 0 of a checkpoint file, little-endian. */
typedef struct tha__ckpt_hdr {
    uint32_t magic;          /* THA__CKPT_MAGIC */
    uint16_t version;        /* THA_FILE_VERSION */
    uint16_t header_size;    /* THA__CKPT_HDR */
    uint32_t frame_version;  /* frame format version of the segments: 1, or 2
                                for a same-address heap's */
    uint32_t schema_len;     /* canonical schema bytes after the header */
    uint64_t fingerprint;
    uint64_t lineage;
    uint64_t epoch;
    uint64_t epoch_start;
    uint64_t seq;            /* the heap's seq: every segment carries it */
    uint64_t capacity;
    uint64_t top;            /* image bytes = what the segments cover */
    uint64_t dirty_len;      /* bytes of the dirty bitmap (bit per block of
                                [0, top), padded to 8) after the schema */
    uint64_t segment_blocks; /* blocks per segment (the last one fewer) */
    uint64_t nsegments;
    uint32_t schema_crc;     /* CRC32C of the schema bytes */
    uint32_t dirty_crc;      /* CRC32C of the dirty bitmap */
    uint64_t base;           /* a same-address heap's base (frame version 2);
                                0: relocatable (version 1) */
    uint64_t reserved;
    uint32_t reserved2;
    uint32_t header_crc;     /* CRC32C of the bytes before this field */
} tha__ckpt_hdr_t;

/* After the last segment, the last bytes of the file. */
typedef struct tha__ckpt_trailer {
    uint32_t magic;          /* THA__TRAILER_MAGIC */
    uint32_t reserved;
    uint64_t nsegments;
    uint64_t offset;         /* of this trailer = bytes before it */
    uint32_t file_crc;       /* CRC32C of every byte before the trailer */
    uint32_t trailer_crc;    /* CRC32C of the bytes before this field */
} tha__ckpt_trailer_t;

/* At offset 0 of a delta log. */
typedef struct tha__log_hdr {
    uint32_t magic;          /* THA__LOG_MAGIC */
    uint16_t version;        /* THA_FILE_VERSION */
    uint16_t header_size;    /* THA__LOG_HDR */
    uint64_t fingerprint;
    uint64_t lineage;        /* of the heap when the log was (re)started */
    uint64_t base_seq;       /* the heap's seq then: frames follow it */
    uint64_t epoch;
    uint64_t reserved[2];
    uint32_t reserved2;
    uint32_t header_crc;
} tha__log_hdr_t;

_Static_assert(sizeof(tha__ckpt_hdr_t) == THA__CKPT_HDR, "checkpoint header size");
_Static_assert(sizeof(tha__ckpt_trailer_t) == THA__TRAILER, "trailer size");
_Static_assert(sizeof(tha__log_hdr_t) == THA__LOG_HDR, "log header size");

/* tha_crc32c of a||b from the CRCs of a and b (b is blen bytes long). */
static inline uint32_t tha__crc_cat(uint32_t a, uint32_t b, uint64_t blen) {
    return tha__crc32c_shift(a, blen) ^ b;
}

/* ---- files.c ------------------------------------------------------------- */

/* pwrite of all n bytes at off: 0 or -errno. */
int tha__write_all(int fd, const void *buf, size_t n, uint64_t off);
/* Bytes read (fewer than n only at the end of the file) or -errno. */
ssize_t tha__read_at(int fd, void *buf, size_t n, uint64_t off);
/* fsync of the directory holding path, so a rename or a new file survives
 * a power cut: 0 or -errno. */
int tha__sync_dir(const char *path);
/* A temp file beside path ("path.tmp-XXXXXX"), created and locked (flock,
 * until the rename or unlink); its name goes to tmp. The fd or -errno. */
int tha__make_temp(const char *path, char *tmp, size_t cap);
/* Deletes the temps of path that writers killed mid-way left (their lock
 * is free); best effort. Returns how many were removed. */
int tha__remove_stale_temps(const char *path);

/* ---- log.c: reading a log (load.c replays one) ---------------------------- */

/* A log header of a file of size bytes: 0 if it is one this build reads. */
int tha__log_hdr_check(const tha__log_hdr_t *lh, uint64_t size, const char *path,
                       char *msg, size_t cap);
/* The frame at pos of a log of size bytes, read whole into *buf (grown as
 * needed): 1 with its header in *hd, 0 at the clean end, or an error for a
 * torn or unreadable frame. The body checksum is not verified here. */
int tha__log_next(int fd, uint64_t size, uint64_t pos, uint8_t **buf, size_t *cap,
                  tha__frame_hdr_t *hd, char *msg, size_t mcap);

#endif /* THA_DURABLE_PRIV_H */

/* checkpoint.c — durability: checkpoint files, the delta log, recovery.
 * checkpoint  a file holding one heap image: a file header, the schema, the
 *             dirty bitmap, the image as segment frames (the wire format),
 *             a trailer; written to a temp file, fsync'd, renamed over.
 * log         an append-only file: a log header, then every frame the heap
 *             encodes or applies, back to back, unchanged from the wire.
 * replay      applying the valid prefix of a log on top of a checkpoint.
 * The image is streamed a segment at a time both ways: never a second copy.
 */
#include "tha_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CKPT_MAGIC 0x43414854u    /* "THAC" */
#define TRAILER_MAGIC 0x45414854u /* "THAE" */
#define LOG_MAGIC 0x4c414854u     /* "THAL" */
#define CKPT_HDR 128u
#define TRAILER 32u
#define LOG_HDR 64u
/* Blocks per segment: just under the codec's non-temporal threshold (1 MiB
 * of data), so a segment is encoded into a buffer that stays in the cache
 * for write() to read back. */
#define SEG_BLOCKS 16000u
#define SEG_MAX_BLOCKS (1u << 20) /* a file announcing more is refused */
/* Writeback is started every this many bytes, so the final fsync has
 * little left to do and the disk works while segments are encoded. */
#define WRITEBACK_STEP (64u << 20)
/* Load asks the kernel for this much of the file ahead of the segment being
 * applied, so the disk reads while the CPU verifies and copies. */
#define READ_AHEAD (32u << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* At offset 0 of a checkpoint file, little-endian. */
typedef struct ckpt_hdr {
    uint32_t magic;          /* CKPT_MAGIC */
    uint16_t version;        /* THA_FILE_VERSION */
    uint16_t header_size;    /* CKPT_HDR */
    uint32_t frame_version;  /* THA_FRAME_VERSION of the segments */
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
    uint64_t reserved[2];
    uint32_t reserved2;
    uint32_t header_crc;     /* CRC32C of the bytes before this field */
} ckpt_hdr_t;

/* After the last segment, the last bytes of the file. */
typedef struct ckpt_trailer {
    uint32_t magic;          /* TRAILER_MAGIC */
    uint32_t reserved;
    uint64_t nsegments;
    uint64_t offset;         /* of this trailer = bytes before it */
    uint32_t file_crc;       /* CRC32C of every byte before the trailer */
    uint32_t trailer_crc;    /* CRC32C of the bytes before this field */
} ckpt_trailer_t;

/* At offset 0 of a delta log. */
typedef struct log_hdr {
    uint32_t magic;          /* LOG_MAGIC */
    uint16_t version;        /* THA_FILE_VERSION */
    uint16_t header_size;    /* LOG_HDR */
    uint64_t fingerprint;
    uint64_t lineage;        /* of the heap when the log was (re)started */
    uint64_t base_seq;       /* the heap's seq then: frames follow it */
    uint64_t epoch;
    uint64_t reserved[2];
    uint32_t reserved2;
    uint32_t header_crc;
} log_hdr_t;

_Static_assert(sizeof(ckpt_hdr_t) == CKPT_HDR, "checkpoint header size");
_Static_assert(sizeof(ckpt_trailer_t) == TRAILER, "trailer size");
_Static_assert(sizeof(log_hdr_t) == LOG_HDR, "log header size");

/* An attached log: h->log while h->log_sink is &delta_log. */
typedef struct dlog {
    int fd;
    char *path;
    uint64_t end;          /* bytes of good log; appends go here */
    uint64_t lineage;      /* the header's */
    int64_t fsync_ms;      /* THA_LOG_FSYNC_ALWAYS, _NEVER, or a period */
    uint64_t synced_ns;    /* CLOCK_MONOTONIC of the last fdatasync */
    int pending;           /* appended since the last fdatasync */
    int broken;            /* an append failed and could not be undone */
} dlog_t;

static const tha__log_sink_t delta_log;

/* h's delta log, or NULL. */
static dlog_t *log_of(const tha_heap_t *h) {
    return h->log_sink == &delta_log ? h->log : NULL;
}

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* tha_crc32c of a||b from the CRCs of a and b (b is blen bytes long). */
static uint32_t crc_cat(uint32_t a, uint32_t b, uint64_t blen) {
    return tha__crc32c_shift(a, blen) ^ b;
}

static int write_all(int fd, const void *buf, size_t n, uint64_t off) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (w == 0) return -EIO;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Bytes read (fewer than n only at the end of the file) or -errno. */
static ssize_t read_at(int fd, void *buf, size_t n, uint64_t off) {
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* fsync of the directory holding path, so a rename or a new file survives
 * a power cut. */
static int sync_dir(const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof dir) return -ENAMETOOLONG;
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Temp files. A checkpoint (or a compaction's new log) is written to a temp
 * file beside its target, "path.tmp-XXXXXX", and renamed over it. A writer
 * killed mid-way (kill -9, OOM killer, power cut) leaves its temp behind, as
 * large as the image. So every writer holds an exclusive flock on its temp
 * file from creation until the rename or unlink (the lock dies with the
 * process), and remove_stale_temps, run by the next checkpoint, compact,
 * attach_log and load of the same path, deletes the temps of that path's
 * naming whose lock it can take: nobody is writing them. Only names
 * make_temp makes, only beside that path, only regular files of this user,
 * never through a symlink. */

/* A temp file beside path ("path.tmp-XXXXXX"), created and locked; its name
 * goes to tmp. */
static int make_temp(const char *path, char *tmp, size_t cap) {
    for (int tries = 0; tries < 16; tries++) {
        if ((size_t)snprintf(tmp, cap, "%s.tmp-XXXXXX", path) >= cap) return -ENAMETOOLONG;
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) return -errno;
        /* A cleaner may have found the file before the lock was taken (it
         * holds the lock, or already unlinked it): take another name. */
        struct stat st;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, &st) == 0 && st.st_nlink > 0)
            return fd;
        close(fd);
    }
    return -EAGAIN;
}

/* name is "<base>.tmp-" and mkostemp's six letters or digits. */
static int our_temp_name(const char *name, const char *base, size_t blen) {
    if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp-", 5) != 0) return 0;
    const char *x = name + blen + 5;
    for (int i = 0; i < 6; i++)
        if (!isalnum((unsigned char)x[i])) return 0;
    return x[6] == 0;
}

/* Deletes the abandoned temp files of path (see above); best effort, errors
 * (a read-only directory, a file of another user) leave files alone.
 * Returns how many were removed. */
static int remove_stale_temps(const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof dir) return 0;
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    size_t blen = strlen(base);
    if (blen == 0 || blen + 12 > NAME_MAX) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int dfd = dirfd(d), removed = 0;
    uid_t me = geteuid();
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!our_temp_name(e->d_name, base, blen)) continue;
        int fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC |
                                            O_NOCTTY);
        if (fd < 0) continue; /* a symlink (ELOOP), gone, or not ours to read */
        struct stat st, now;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == me &&
            flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            /* still that file under that name */
            fstatat(dfd, e->d_name, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
            now.st_dev == st.st_dev && now.st_ino == st.st_ino &&
            unlinkat(dfd, e->d_name, 0) == 0)
            removed++;
        close(fd); /* drops the lock */
    }
    closedir(d);
    return removed;
}

/* ---- checkpoint: write ------------------------------------------------ */

/* Checkpoint's writer thread: write()s segment k from buffer k % 2 (and
 * starts its writeback) while the caller encodes segment k + 1 into the
 * other buffer, so encoding (copy + CRC) and the kernel's copy into the page
 * cache overlap. Without a thread (pthread_create failed) the caller writes
 * each buffer itself. */
typedef struct writer {
    int fd;
    int threaded;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const uint8_t *buf[2];
    size_t len[2];       /* bytes queued in buffer k; 0: free */
    uint64_t off[2];     /* their file offset */
    uint64_t synced_to;  /* writeback started up to here */
    int stop;            /* no more buffers will come */
    int err;             /* first write failure, -errno */
} writer_t;

static int writer_put(writer_t *W, int k) {
    int rc = write_all(W->fd, W->buf[k], W->len[k], W->off[k]);
    uint64_t end = W->off[k] + W->len[k];
    if (!rc && end - W->synced_to >= WRITEBACK_STEP) {
        sync_file_range(W->fd, (off_t)W->synced_to, (off_t)(end - W->synced_to),
                        SYNC_FILE_RANGE_WRITE);
        W->synced_to = end;
    }
    return rc;
}

static void *writer_main(void *arg) {
    writer_t *W = arg;
    for (int k = 0;; k ^= 1) {
        pthread_mutex_lock(&W->mu);
        while (!W->len[k] && !W->stop) pthread_cond_wait(&W->cv, &W->mu);
        size_t n = W->len[k];
        int go = n && !W->err;
        pthread_mutex_unlock(&W->mu);
        if (!n) return NULL; /* stopped, nothing left */
        int rc = go ? writer_put(W, k) : 0;
        pthread_mutex_lock(&W->mu);
        if (rc && !W->err) W->err = rc;
        W->len[k] = 0;
        pthread_cond_broadcast(&W->cv);
        pthread_mutex_unlock(&W->mu);
    }
}

/* Waits until buffer k is free; the first write failure, if any. */
static int writer_wait(writer_t *W, int k) {
    if (!W->threaded) return W->err;
    pthread_mutex_lock(&W->mu);
    while (W->len[k] && !W->err) pthread_cond_wait(&W->cv, &W->mu);
    int rc = W->err;
    pthread_mutex_unlock(&W->mu);
    return rc;
}

/* Queues len bytes of buffer k (free: writer_wait) for offset off. */
static int writer_queue(writer_t *W, int k, size_t len, uint64_t off) {
    if (!W->threaded) {
        W->len[k] = len;
        W->off[k] = off;
        int rc = writer_put(W, k);
        W->len[k] = 0;
        if (rc && !W->err) W->err = rc;
        return W->err;
    }
    pthread_mutex_lock(&W->mu);
    W->len[k] = len;
    W->off[k] = off;
    pthread_cond_broadcast(&W->cv);
    pthread_mutex_unlock(&W->mu);
    return 0;
}

/* Writes what is queued (unless a write failed) and ends the thread. */
static int writer_finish(writer_t *W, pthread_t t) {
    if (!W->threaded) return W->err;
    pthread_mutex_lock(&W->mu);
    W->stop = 1;
    pthread_cond_broadcast(&W->cv);
    pthread_mutex_unlock(&W->mu);
    pthread_join(t, NULL);
    pthread_cond_destroy(&W->cv);
    pthread_mutex_destroy(&W->mu);
    W->threaded = 0;
    return W->err;
}

int tha_heap_checkpoint(tha_heap_t *h, const char *path, tha_progress_fn progress,
                        void *ctx) {
    if (!h || !path) return THA_EINVAL;
    /* Changes not yet found (diff, wp) become dirty bits: the next delta
     * still carries them, and the file records which blocks they are. */
    tha__track_collect(h);
    const tha__region_t *r = tha__reg(h);
    uint64_t top = r->top, top_blocks = top / THA__BLOCK;
    uint64_t nseg = (top_blocks + SEG_BLOCKS - 1) / SEG_BLOCKS;
    size_t slen;
    int rc = tha_schema_serialize(h->schema, NULL, 0, &slen);
    if (rc) return tha__hfail(h, rc, "checkpoint: schema: %s", tha_strerror(rc));
    uint64_t dlen = (top_blocks + 63) / 64 * 8;
    size_t scap = tha__align_up(slen, 8);
    size_t segcap = tha__segment_size(h, 0, SEG_BLOCKS);
    size_t bufcap = segcap > scap ? segcap : scap;
    /* two segment buffers: one encoded while the other is written */
    uint8_t *buf = malloc(2 * bufcap);
    if (!buf) return tha__hfail(h, THA_ENOMEM, "checkpoint: no memory for a segment");
    remove_stale_temps(path);
    char tmp[PATH_MAX];
    int fd = make_temp(path, tmp, sizeof tmp);
    writer_t W;
    pthread_t wt;
    memset(&W, 0, sizeof W);
    memset(&wt, 0, sizeof wt);
    if (fd < 0) {
        free(buf);
        return tha__hfail(h, fd, "checkpoint %s: cannot create a temp file: %s", path,
                          tha_strerror(fd));
    }
    const char *what = "write";
    ckpt_hdr_t hd;
    memset(&hd, 0, sizeof hd);
    hd.magic = CKPT_MAGIC;
    hd.version = THA_FILE_VERSION;
    hd.header_size = CKPT_HDR;
    hd.frame_version = THA_FRAME_VERSION;
    hd.schema_len = (uint32_t)slen;
    hd.fingerprint = tha_schema_fingerprint(h->schema);
    hd.lineage = h->lineage;
    hd.epoch = h->epoch;
    hd.epoch_start = tha_heap_epoch_start(h); /* informative: the image has the history */
    hd.seq = h->seq;
    hd.capacity = r->capacity;
    hd.top = top;
    hd.dirty_len = dlen;
    hd.segment_blocks = SEG_BLOCKS;
    hd.nsegments = nseg;
    rc = tha_schema_serialize(h->schema, buf, bufcap, &slen);
    if (rc) goto fail;
    memset(buf + slen, 0, scap - slen);
    hd.schema_crc = tha_crc32c(0, buf, scap);
    /* the dirty words hold no bits at or above top_blocks */
    hd.dirty_crc = tha_crc32c(0, h->dirty, dlen);
    hd.header_crc = tha_crc32c(0, &hd, offsetof(ckpt_hdr_t, header_crc));
    uint64_t pos = 0;
    uint32_t fcrc = tha_crc32c(0, &hd, sizeof hd);
    if ((rc = write_all(fd, &hd, sizeof hd, pos))) goto fail;
    pos += sizeof hd;
    fcrc = crc_cat(fcrc, hd.schema_crc, scap);
    if ((rc = write_all(fd, buf, scap, pos))) goto fail;
    pos += scap;
    fcrc = crc_cat(fcrc, hd.dirty_crc, dlen);
    if ((rc = write_all(fd, h->dirty, dlen, pos))) goto fail;
    pos += dlen;
    W.fd = fd;
    W.buf[0] = buf;
    W.buf[1] = buf + bufcap;
    if (nseg > 1 && pthread_mutex_init(&W.mu, NULL) == 0) {
        if (pthread_cond_init(&W.cv, NULL) == 0 &&
            pthread_create(&wt, NULL, writer_main, &W) == 0)
            W.threaded = 1;
        if (!W.threaded) {
            pthread_cond_destroy(&W.cv); /* harmless if its init failed */
            pthread_mutex_destroy(&W.mu);
        }
    }
    for (uint64_t from = 0, i = 0; i < nseg; i++) {
        int k = (int)(i & 1);
        size_t len;
        what = "write";
        if ((rc = writer_wait(&W, k))) goto fail;
        what = "encode";
        uint8_t *sb = buf + (size_t)k * bufcap;
        rc = tha__encode_segment(h, &from, SEG_BLOCKS, sb, bufcap, &len);
        if (rc) goto fail;
        what = "write";
        /* body CRC from the segment header: no second pass over the bytes */
        tha__frame_hdr_t fh;
        memcpy(&fh, sb, sizeof fh);
        fcrc = crc_cat(fcrc, tha_crc32c(0, sb, THA_FRAME_HEADER_SIZE),
                       THA_FRAME_HEADER_SIZE);
        fcrc = crc_cat(fcrc, fh.body_crc, len - THA_FRAME_HEADER_SIZE);
        if ((rc = writer_queue(&W, k, len, pos))) goto fail;
        pos += len;
        if (progress) progress(ctx, from * THA__BLOCK, top);
    }
    what = "write";
    if ((rc = writer_finish(&W, wt))) goto fail;
    ckpt_trailer_t tr;
    memset(&tr, 0, sizeof tr);
    tr.magic = TRAILER_MAGIC;
    tr.nsegments = nseg;
    tr.offset = pos;
    tr.file_crc = fcrc;
    tr.trailer_crc = tha_crc32c(0, &tr, offsetof(ckpt_trailer_t, trailer_crc));
    if ((rc = write_all(fd, &tr, sizeof tr, pos))) goto fail;
    what = "fsync";
    if (fsync(fd)) {
        rc = -errno;
        goto fail;
    }
    /* renamed while still open: its lock keeps cleaners off it until then */
    what = "rename";
    if (rename(tmp, path)) {
        rc = -errno;
        goto fail;
    }
    close(fd);
    fd = -1;
    free(buf);
    /* The new file is in place; a failed directory fsync only means the
     * rename might not survive a power cut. Reported, file kept. */
    rc = sync_dir(path);
    if (rc)
        return tha__hfail(h, rc, "checkpoint %s: written, but the directory fsync "
                          "failed: %s", path, tha_strerror(rc));
    if (progress && top == 0) progress(ctx, 0, 0);
    return 0;
fail:
    if (W.threaded) {
        pthread_mutex_lock(&W.mu);
        if (!W.err) W.err = THA_ESTATE; /* the thread writes nothing more */
        pthread_mutex_unlock(&W.mu);
        writer_finish(&W, wt);
    }
    unlink(tmp); /* before the close: still ours */
    if (fd >= 0) close(fd);
    free(buf);
    if (strcmp(what, "encode") == 0) return rc; /* h->err names the pointer */
    return tha__hfail(h, rc, "checkpoint %s: %s failed: %s", path, what,
                      tha_strerror(rc));
}

/* ---- checkpoint: read ------------------------------------------------- */

/* Bytes of the segments of a checkpoint, from its header. */
static uint64_t segments_bytes(const ckpt_hdr_t *hd) {
    uint64_t top_blocks = hd->top / THA__BLOCK, full = top_blocks / hd->segment_blocks;
    uint64_t rest = top_blocks % hd->segment_blocks;
    uint64_t n = full * tha__segment_bytes(hd->segment_blocks);
    if (rest) n += tha__segment_bytes(rest);
    return n;
}

/* Reads and checks the header; *size gets the file size. */
static int read_ckpt_hdr(int fd, const char *path, ckpt_hdr_t *hd, uint64_t *size,
                         char *msg, size_t cap) {
    struct stat st;
    if (fstat(fd, &st)) return tha__fail(msg, cap, -errno, "checkpoint %s: %s", path,
                                         strerror(errno));
    *size = (uint64_t)st.st_size;
    ssize_t n = read_at(fd, hd, sizeof *hd, 0);
    if (n < 0) return tha__fail(msg, cap, (int)n, "checkpoint %s: read failed: %s",
                                path, tha_strerror((int)n));
    if (n < (ssize_t)sizeof *hd)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: truncated: %llu bytes, "
                         "the header alone is %u", path, (unsigned long long)*size,
                         CKPT_HDR);
    if (hd->magic != CKPT_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "%s is not a tha checkpoint (magic "
                         "0x%08x)", path, hd->magic);
    if (tha_crc32c(0, hd, offsetof(ckpt_hdr_t, header_crc)) != hd->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "checkpoint %s: header checksum "
                         "mismatch", path);
    if (hd->version != THA_FILE_VERSION || hd->frame_version != THA_FRAME_VERSION)
        return tha__fail(msg, cap, THA_EVERSION, "checkpoint %s: file format version "
                         "%u (frames %u); this build reads %d (frames %d)", path,
                         hd->version, hd->frame_version, THA_FILE_VERSION,
                         THA_FRAME_VERSION);
    uint64_t top_blocks = hd->top / THA__BLOCK;
    if (hd->header_size != CKPT_HDR || hd->top % THA__PAGE || hd->top == 0 ||
        hd->top > hd->capacity || hd->capacity % THA__GRANULE ||
        hd->capacity > (1ull << 44) || hd->segment_blocks == 0 ||
        hd->segment_blocks > SEG_MAX_BLOCKS ||
        hd->nsegments != (top_blocks + hd->segment_blocks - 1) / hd->segment_blocks ||
        hd->dirty_len != (top_blocks + 63) / 64 * 8)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: header is inconsistent "
                         "(top %llu, capacity %llu)", path, (unsigned long long)hd->top,
                         (unsigned long long)hd->capacity);
    uint64_t want = CKPT_HDR + tha__align_up(hd->schema_len, 8) + hd->dirty_len +
                    segments_bytes(hd) + TRAILER;
    if (*size != want)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: %s: %llu bytes, the "
                         "header announces %llu", path,
                         *size < want ? "truncated" : "trailing bytes",
                         (unsigned long long)*size, (unsigned long long)want);
    return 0;
}

/* The schema section, checked and parsed. */
static int read_ckpt_schema(int fd, const char *path, const ckpt_hdr_t *hd,
                            tha_schema_t **out, char *msg, size_t cap) {
    size_t scap = tha__align_up(hd->schema_len, 8);
    uint8_t *sb = malloc(scap ? scap : 1);
    if (!sb) return tha__fail(msg, cap, THA_ENOMEM, "checkpoint %s: no memory", path);
    ssize_t n = read_at(fd, sb, scap, CKPT_HDR);
    int rc;
    if (n != (ssize_t)scap)
        rc = tha__fail(msg, cap, n < 0 ? (int)n : THA_EFRAME, "checkpoint %s: schema "
                       "unreadable", path);
    else if (tha_crc32c(0, sb, scap) != hd->schema_crc)
        rc = tha__fail(msg, cap, THA_ECHECKSUM, "checkpoint %s: schema checksum "
                       "mismatch", path);
    else {
        char why[200];
        rc = tha__schema_deserialize(sb, hd->schema_len, hd->capacity, out, why,
                                     sizeof why);
        if (rc) tha__fail(msg, cap, rc, "checkpoint %s: schema: %s", path, why);
        else if (tha_schema_fingerprint(*out) != hd->fingerprint) {
            tha_schema_release(*out);
            *out = NULL;
            rc = tha__fail(msg, cap, THA_EMISMATCH, "checkpoint %s: the schema it "
                           "carries does not match its fingerprint", path);
        }
    }
    free(sb);
    return rc;
}

int tha_checkpoint_info(const char *path, tha_checkpoint_info_t *out,
                        tha_schema_t **schema, char *msg, size_t msgcap) {
    char tmp[256];
    if (!msg || !msgcap) { msg = tmp; msgcap = sizeof tmp; }
    if (!path || !out) return tha__fail(msg, msgcap, THA_EINVAL, "invalid argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tha__fail(msg, msgcap, -errno, "checkpoint %s: %s", path,
                                 strerror(errno));
    ckpt_hdr_t hd;
    uint64_t size;
    int rc = read_ckpt_hdr(fd, path, &hd, &size, msg, msgcap);
    if (!rc && schema) rc = read_ckpt_schema(fd, path, &hd, schema, msg, msgcap);
    close(fd);
    if (rc) return rc;
    memset(out, 0, sizeof *out);
    out->version = hd.version;
    out->fingerprint = hd.fingerprint;
    out->lineage = hd.lineage;
    out->epoch = hd.epoch;
    out->seq = hd.seq;
    out->capacity = hd.capacity;
    out->top = hd.top;
    out->segments = hd.nsegments;
    out->file_bytes = size;
    return 0;
}

/* ---- log: reading ----------------------------------------------------- */

static int log_hdr_check(const log_hdr_t *lh, uint64_t size, const char *path,
                         char *msg, size_t cap) {
    if (size < LOG_HDR)
        return tha__fail(msg, cap, THA_EFRAME, "log %s: header torn (%llu bytes)", path,
                         (unsigned long long)size);
    if (lh->magic != LOG_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "%s is not a tha delta log (magic "
                         "0x%08x)", path, lh->magic);
    if (tha_crc32c(0, lh, offsetof(log_hdr_t, header_crc)) != lh->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "log %s: header checksum mismatch", path);
    if (lh->version != THA_FILE_VERSION || lh->header_size != LOG_HDR)
        return tha__fail(msg, cap, THA_EVERSION, "log %s: format version %u; this "
                         "build reads %d", path, lh->version, THA_FILE_VERSION);
    return 0;
}

/* The frame at pos of a log of size bytes, read whole into *buf (grown as
 * needed): 1 with its header in *hd, 0 at the clean end, or an error for a
 * torn or unreadable frame. The body checksum is not verified here. */
static int log_next(int fd, uint64_t size, uint64_t pos, uint8_t **buf, size_t *cap,
                    tha__frame_hdr_t *hd, char *msg, size_t mcap) {
    if (pos == size) return 0;
    if (size - pos < THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, mcap, THA_EFRAME, "torn frame at offset %llu: %llu "
                         "bytes of a header", (unsigned long long)pos,
                         (unsigned long long)(size - pos));
    uint8_t raw[THA_FRAME_HEADER_SIZE];
    ssize_t n = read_at(fd, raw, sizeof raw, pos);
    if (n != (ssize_t)sizeof raw)
        return tha__fail(msg, mcap, n < 0 ? (int)n : THA_EFRAME, "read failed at "
                         "offset %llu", (unsigned long long)pos);
    char why[160];
    int rc = tha__frame_header_ok(raw, hd, why, sizeof why);
    if (!rc && hd->length < THA_FRAME_HEADER_SIZE)
        rc = tha__fail(why, sizeof why, THA_EFRAME, "frame header malformed (length "
                       "%llu)", (unsigned long long)hd->length);
    if (rc) return tha__fail(msg, mcap, rc, "corrupt frame at offset %llu: %s",
                             (unsigned long long)pos, why);
    if (hd->length > size - pos)
        return tha__fail(msg, mcap, THA_EFRAME, "torn frame seq %llu at offset %llu: "
                         "%llu of %llu bytes", (unsigned long long)hd->seq,
                         (unsigned long long)pos, (unsigned long long)(size - pos),
                         (unsigned long long)hd->length);
    if (hd->length > *cap) {
        uint8_t *nb = realloc(*buf, hd->length);
        if (!nb) return tha__fail(msg, mcap, THA_ENOMEM, "no memory for a %llu-byte "
                                  "frame", (unsigned long long)hd->length);
        *buf = nb;
        *cap = hd->length;
    }
    memcpy(*buf, raw, sizeof raw);
    n = read_at(fd, *buf + sizeof raw, hd->length - sizeof raw, pos + sizeof raw);
    if (n != (ssize_t)(hd->length - sizeof raw))
        return tha__fail(msg, mcap, n < 0 ? (int)n : THA_EFRAME, "read failed at "
                         "offset %llu", (unsigned long long)pos);
    return 1;
}

static void stop(tha_load_report_t *rep, int code, uint64_t off, uint64_t seq) {
    rep->stop_code = code;
    rep->stop_offset = off;
    rep->stop_seq = seq;
}

/* Applies the valid prefix of the log at path to h; where and why it
 * stopped goes to rep (stop_code 0: the whole log was good). Fails only
 * when the log cannot be opened. */
static int replay(tha_heap_t *h, const char *path, tha_load_report_t *rep) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        tha__fail(rep->msg, sizeof rep->msg, rc, "log %s: %s", path, strerror(errno));
        return rc;
    }
    struct stat st;
    if (fstat(fd, &st)) {
        int rc = -errno;
        close(fd);
        return tha__fail(rep->msg, sizeof rep->msg, rc, "log %s: %s", path,
                         tha_strerror(rc));
    }
    uint64_t size = (uint64_t)st.st_size;
    rep->log_size = size;
    log_hdr_t lh;
    memset(&lh, 0, sizeof lh);
    read_at(fd, &lh, sizeof lh, 0);
    int rc = log_hdr_check(&lh, size, path, rep->msg, sizeof rep->msg);
    if (rc) {
        stop(rep, rc, 0, 0);
        close(fd);
        return 0;
    }
    uint8_t *buf = NULL;
    size_t cap = 0;
    uint64_t pos = LOG_HDR;
    rep->log_end = pos;
    for (;;) {
        tha__frame_hdr_t hd;
        char why[200];
        rc = log_next(fd, size, pos, &buf, &cap, &hd, why, sizeof why);
        if (rc == 0) break;
        if (rc < 0) {
            stop(rep, rc, pos, 0);
            snprintf(rep->msg, sizeof rep->msg, "log %s: %s", path, why);
            break;
        }
        unsigned long long seq = (unsigned long long)hd.seq;
        bool ours = hd.lineage == h->lineage;
        if (hd.kind == THA_FRAME_DELTA || hd.kind == THA_FRAME_SNAPSHOT) {
            if (ours && hd.seq <= h->seq) { /* already in the checkpoint */
                /* still checked: replay is of the valid prefix only */
                if (tha_crc32c(0, buf + THA_FRAME_HEADER_SIZE,
                               hd.length - THA_FRAME_HEADER_SIZE) != hd.body_crc) {
                    stop(rep, THA_ECHECKSUM, pos, hd.seq);
                    snprintf(rep->msg, sizeof rep->msg, "log %s: frame seq %llu at "
                             "offset %llu: body checksum mismatch", path, seq,
                             (unsigned long long)pos);
                    break;
                }
                rep->frames_skipped++;
                pos += hd.length;
                rep->log_end = pos;
                continue;
            }
            if (hd.kind == THA_FRAME_DELTA && (!ours || hd.seq != h->seq + 1)) {
                stop(rep, THA_ESEQ, pos, hd.seq);
                if (!ours)
                    snprintf(rep->msg, sizeof rep->msg, "log %s: delta seq %llu at "
                             "offset %llu belongs to another frame series (lineage "
                             "%016llx, heap follows %016llx)", path, seq,
                             (unsigned long long)pos, (unsigned long long)hd.lineage,
                             (unsigned long long)h->lineage);
                else
                    snprintf(rep->msg, sizeof rep->msg, "log %s: gap at offset %llu: "
                             "the heap is at seq %llu, the log continues with seq %llu",
                             path, (unsigned long long)pos, (unsigned long long)h->seq,
                             seq);
                break;
            }
            rc = tha_heap_apply(h, buf, hd.length);
        } else {
            rc = tha__fail(h->err, sizeof h->err, THA_EFRAME, "%s frame in a log",
                           hd.kind == THA__FRAME_SEGMENT ? "segment" : "unknown");
        }
        if (rc) {
            stop(rep, rc, pos, hd.seq);
            snprintf(rep->msg, sizeof rep->msg, "log %s: frame seq %llu at offset "
                     "%llu refused: %s", path, seq, (unsigned long long)pos,
                     tha_heap_errmsg(h));
            break;
        }
        rep->frames_applied++;
        pos += hd.length;
        rep->log_end = pos;
    }
    free(buf);
    close(fd);
    rep->seq = h->seq;
    /* Every block dirty at checkpoint time travelled in the first frame after
     * it; what the log replayed is as clean as a mirror. */
    if (rep->frames_applied) tha__clear_dirty(h);
    return 0;
}

/* ---- load: segments --------------------------------------------------- */

/* Segment i's place: its first block, blocks, and head (frame header, run
 * header, mask) bytes. */
static void seg_geometry(const ckpt_hdr_t *hd, uint64_t next_block, uint64_t *want,
                         uint64_t *head) {
    uint64_t top_blocks = hd->top / THA__BLOCK;
    *want = top_blocks - next_block < hd->segment_blocks ? top_blocks - next_block
                                                         : hd->segment_blocks;
    *head = tha__segment_head_bytes(*want);
}

/* The head of the segment expected at next_block, its header parsed into
 * *fh (the one parse: applying it takes *fh): a sane frame header of the
 * segment's length, and the segment the file header says comes there. */
static int seg_head_ok(const ckpt_hdr_t *hd, const uint8_t *head, uint64_t want,
                       uint64_t next_block, tha__frame_hdr_t *fh, char *why,
                       size_t cap) {
    int rc = tha__frame_parse(head, tha__segment_bytes(want), fh, why, cap);
    if (rc) return rc;
    tha__run_t run;
    memcpy(&run, head + THA_FRAME_HEADER_SIZE, sizeof run);
    if (fh->kind != THA__FRAME_SEGMENT || fh->seq != hd->seq ||
        fh->epoch != hd->epoch || fh->top != hd->top || fh->capacity != hd->capacity ||
        fh->nruns != 1 || fh->nblocks != want || run.offset != next_block * THA__BLOCK ||
        run.nblocks != want)
        return tha__fail(why, cap, THA_EFRAME, "not the segment expected there (blocks "
                         "%llu..%llu of seq %llu)", (unsigned long long)next_block,
                         (unsigned long long)(next_block + want),
                         (unsigned long long)hd->seq);
    return 0;
}

/* Load's reader thread: reads segment i's head into slot i % READ_SLOTS and
 * its data straight into the heap at the segment's offset, up to
 * READ_SLOTS segments ahead of the loader, which verifies and rebases each
 * in place (the heap is nobody's until load returns). One copy of each
 * byte (page cache to heap), and the disk, the copy and the verify overlap. */
#define READ_SLOTS 4
typedef struct reader {
    int fd;
    tha_heap_t *h;
    const ckpt_hdr_t *hd;
    uint64_t pos0, size; /* file offset of segment 0; file size */
    uint8_t *slots;      /* READ_SLOTS heads of slot_cap bytes */
    size_t slot_cap;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t nread, nused; /* segments read / verified */
    int stop, failed;      /* loader gave up / segment nread unreadable */
    int err;               /* -errno, or THA_EFRAME for a short read */
} reader_t;

static void *reader_main(void *arg) {
    reader_t *R = arg;
    const ckpt_hdr_t *hd = R->hd;
    uint64_t pos = R->pos0, ahead = pos, next_block = 0;
    for (uint64_t i = 0; i < hd->nsegments; i++) {
        pthread_mutex_lock(&R->mu);
        while (!R->stop && R->nread - R->nused >= READ_SLOTS)
            pthread_cond_wait(&R->cv, &R->mu);
        int stop = R->stop;
        pthread_mutex_unlock(&R->mu);
        if (stop) break;
        uint64_t want, head;
        seg_geometry(hd, next_block, &want, &head);
        uint8_t *data = R->h->base + next_block * THA__BLOCK;
        size_t dlen = want * THA__BLOCK;
        /* keep the disk READ_AHEAD bytes ahead of the segment being read */
        if (ahead < pos + READ_AHEAD / 2 && ahead < R->size) {
            posix_fadvise(R->fd, (off_t)ahead, READ_AHEAD, POSIX_FADV_WILLNEED);
            ahead += READ_AHEAD;
        }
        struct iovec iov[2] = {{R->slots + (i % READ_SLOTS) * R->slot_cap, head},
                               {data, dlen}};
        int err = 0;
        uint64_t off = pos;
        for (int k = 0; k < 2 && !err;) {
            ssize_t n = preadv(R->fd, iov + k, 2 - k, (off_t)off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                err = n < 0 ? -errno : THA_EFRAME;
                break;
            }
            off += (uint64_t)n;
            size_t m = (size_t)n; /* skip what was filled, resume mid-piece */
            while (k < 2 && m >= iov[k].iov_len) m -= iov[k++].iov_len;
            if (k < 2) {
                iov[k].iov_base = (uint8_t *)iov[k].iov_base + m;
                iov[k].iov_len -= m;
            }
        }
        pthread_mutex_lock(&R->mu);
        if (err) {
            R->failed = 1;
            R->err = err;
        } else {
            R->nread++;
        }
        pthread_cond_broadcast(&R->cv);
        pthread_mutex_unlock(&R->mu);
        if (err) break;
        pos += head + dlen;
        next_block += want;
    }
    return NULL;
}

/* Reads, verifies and applies every segment from *pos on, joining each to
 * *fcrc. in_place: through a reader thread, straight into the heap (the
 * heap must take kernel writes: not mprotect tracking); else a segment at a
 * time through buf and tha__apply_segment. */
static int load_segments(int fd, const char *path, const ckpt_hdr_t *hd, uint64_t size,
                         tha_heap_t *h, const tha_load_options_t *opt, uint64_t *pos,
                         uint32_t *fcrc, char *msg, size_t mcap) {
    uint64_t seg_cap = tha__segment_head_bytes(hd->segment_blocks);
    int in_place = h->mech != THA__MECH_MPROTECT;
    reader_t R;
    memset(&R, 0, sizeof R);
    uint8_t *buf = NULL;
    int rc = 0, started = 0;
    if (in_place) {
        rc = tha__commit(h, hd->top);
        if (rc)
            return tha__fail(msg, mcap, rc, "checkpoint %s: cannot commit %llu bytes: %s",
                             path, (unsigned long long)hd->top, tha_strerror(rc));
        R.fd = fd;
        R.h = h;
        R.hd = hd;
        R.pos0 = *pos;
        R.size = size;
        R.slot_cap = tha__align_up(seg_cap, 64);
        /* Fresh pages cost a fault (and zeroing) each: with no write
         * tracking to disturb, this thread, whenever it would wait for the
         * reader, populates the next segment not yet read in one call, so
         * the reader's copy finds its pages in place. */
        int populate = h->mech == THA__MECH_EXPLICIT || h->mech == THA__MECH_DIFF;
        uint64_t pop_next = 0, pop_block = 0;
        buf = malloc(R.slot_cap * READ_SLOTS);
        R.slots = buf;
        if (buf && pthread_mutex_init(&R.mu, NULL) == 0) {
            if (pthread_cond_init(&R.cv, NULL) == 0) {
                pthread_t t;
                if (pthread_create(&t, NULL, reader_main, &R) == 0) {
                    started = 1;
                    rc = 0;
                    uint64_t next_block = 0;
                    for (uint64_t i = 0; i < hd->nsegments; i++) {
                        pthread_mutex_lock(&R.mu);
                        while (R.nread <= i && !R.failed) {
                            if (populate && pop_next < hd->nsegments) {
                                /* waiting: fault in pages the reader needs later */
                                pthread_mutex_unlock(&R.mu);
                                uint64_t w, hb;
                                seg_geometry(hd, pop_block, &w, &hb);
                                if (pop_next > i)
                                    madvise(h->base + pop_block * THA__BLOCK,
                                            w * THA__BLOCK, MADV_POPULATE_WRITE);
                                pop_block += w;
                                pop_next++;
                                pthread_mutex_lock(&R.mu);
                                continue;
                            }
                            pthread_cond_wait(&R.cv, &R.mu);
                        }
                        int ok = R.nread > i, err = R.err;
                        pthread_mutex_unlock(&R.mu);
                        uint64_t want, head;
                        seg_geometry(hd, next_block, &want, &head);
                        if (!ok) {
                            rc = tha__fail(msg, mcap, err, "checkpoint %s: segment %llu "
                                           "at offset %llu unreadable", path,
                                           (unsigned long long)i, (unsigned long long)*pos);
                            break;
                        }
                        const uint8_t *hp = R.slots + (i % READ_SLOTS) * R.slot_cap;
                        tha__frame_hdr_t fh;
                        char why[160];
                        rc = seg_head_ok(hd, hp, want, next_block, &fh, why, sizeof why);
                        if (!rc) {
                            rc = tha__apply_segment_in_place(h, &fh, hp, head,
                                                             want * THA__BLOCK);
                            if (rc) snprintf(why, sizeof why, "%s", tha_heap_errmsg(h));
                        }
                        if (rc) {
                            tha__fail(msg, mcap, rc, "checkpoint %s: segment %llu at offset "
                                      "%llu: %s", path, (unsigned long long)i,
                                      (unsigned long long)*pos, why);
                            break;
                        }
                        pthread_mutex_lock(&R.mu);
                        R.nused++;
                        pthread_cond_broadcast(&R.cv);
                        pthread_mutex_unlock(&R.mu);
                        *fcrc = crc_cat(*fcrc, tha_crc32c(0, hp, THA_FRAME_HEADER_SIZE),
                                        THA_FRAME_HEADER_SIZE);
                        *fcrc = crc_cat(*fcrc, fh.body_crc, fh.length - THA_FRAME_HEADER_SIZE);
                        *pos += fh.length;
                        next_block += want;
                        if (opt->progress)
                            opt->progress(opt->progress_ctx, next_block * THA__BLOCK, hd->top);
                    }
                    pthread_mutex_lock(&R.mu);
                    R.stop = 1;
                    pthread_cond_broadcast(&R.cv);
                    pthread_mutex_unlock(&R.mu);
                    pthread_join(t, NULL);
                }
                pthread_cond_destroy(&R.cv);
            }
            pthread_mutex_destroy(&R.mu);
        }
        free(buf);
        buf = NULL;
        if (started) return rc;
        /* no thread or no memory: the copying way below */
    }
    size_t bufcap = tha__align_up(tha__segment_bytes(hd->segment_blocks), 8);
    buf = malloc(bufcap);
    if (!buf)
        return tha__fail(msg, mcap, THA_ENOMEM, "checkpoint %s: no memory for a segment",
                         path);
    uint64_t next_block = 0, ahead = *pos;
    /* Fresh pages cost a fault each; in explicit mode (no write tracking to
     * disturb) they are populated in one call. */
    if (h->mech == THA__MECH_EXPLICIT && tha__commit(h, hd->top) == 0)
        madvise(h->base, hd->top, MADV_POPULATE_WRITE);
    for (uint64_t i = 0; i < hd->nsegments; i++) {
        /* keep the disk READ_AHEAD bytes ahead of the segment being applied */
        if (ahead < *pos + READ_AHEAD / 2 && ahead < size) {
            posix_fadvise(fd, (off_t)ahead, READ_AHEAD, POSIX_FADV_WILLNEED);
            ahead += READ_AHEAD;
        }
        uint64_t want, head;
        seg_geometry(hd, next_block, &want, &head);
        uint64_t len = head + want * THA__BLOCK;
        ssize_t n = read_at(fd, buf, len, *pos);
        if (n != (ssize_t)len) {
            rc = tha__fail(msg, mcap, n < 0 ? (int)n : THA_EFRAME, "checkpoint %s: "
                           "segment %llu at offset %llu unreadable", path,
                           (unsigned long long)i, (unsigned long long)*pos);
            break;
        }
        tha__frame_hdr_t fh;
        char why[160];
        rc = seg_head_ok(hd, buf, want, next_block, &fh, why, sizeof why);
        if (!rc) {
            rc = tha__apply_segment(h, &fh, buf, len);
            if (rc) snprintf(why, sizeof why, "%s", tha_heap_errmsg(h));
        }
        if (rc) {
            tha__fail(msg, mcap, rc, "checkpoint %s: segment %llu at offset %llu: %s",
                      path, (unsigned long long)i, (unsigned long long)*pos, why);
            break;
        }
        *fcrc = crc_cat(*fcrc, tha_crc32c(0, buf, THA_FRAME_HEADER_SIZE),
                        THA_FRAME_HEADER_SIZE);
        *fcrc = crc_cat(*fcrc, fh.body_crc, len - THA_FRAME_HEADER_SIZE);
        *pos += len;
        next_block += want;
        if (opt->progress) opt->progress(opt->progress_ctx, next_block * THA__BLOCK, hd->top);
    }
    free(buf);
    return rc;
}

/* ---- load ------------------------------------------------------------- */

int tha_heap_load(tha_heap_t **out, const char *path, const tha_load_options_t *opt,
                  tha_load_report_t *report) {
    tha_load_report_t local;
    tha_load_report_t *rep = report ? report : &local;
    tha_load_options_t none;
    memset(rep, 0, sizeof *rep);
    if (!opt) {
        memset(&none, 0, sizeof none);
        opt = &none;
    }
    char *msg = rep->msg;
    const size_t mcap = sizeof rep->msg;
    if (!out || !path) return tha__fail(msg, mcap, THA_EINVAL, "invalid argument");
    *out = NULL;
    /* what checkpoints and compactions killed mid-way left (see make_temp) */
    remove_stale_temps(path);
    if (opt->log) remove_stale_temps(opt->log);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tha__fail(msg, mcap, -errno, "checkpoint %s: %s", path,
                                 strerror(errno));
    ckpt_hdr_t hd;
    uint64_t size;
    tha_schema_t *schema = NULL;
    tha_heap_t *h = NULL;
    uint64_t *dirty = NULL;
    int rc = read_ckpt_hdr(fd, path, &hd, &size, msg, mcap);
    if (rc) goto done;
    rc = read_ckpt_schema(fd, path, &hd, &schema, msg, mcap);
    if (rc) goto done;
    if (opt->schema) { /* the caller's (it binds the functions) */
        char why[200];
        rc = tha_schema_compare(schema, opt->schema, why, sizeof why);
        if (rc) {
            tha__fail(msg, mcap, rc, "checkpoint %s: schema mismatch (file vs given): "
                      "%s", path, why);
            goto done;
        }
        tha_schema_release(schema);
        schema = tha__schema_retain(opt->schema);
    }
    uint64_t pos = CKPT_HDR + tha__align_up(hd.schema_len, 8);
    dirty = malloc(hd.dirty_len ? hd.dirty_len : 8);
    if (!dirty) {
        rc = tha__fail(msg, mcap, THA_ENOMEM, "checkpoint %s: no memory", path);
        goto done;
    }
    if (read_at(fd, dirty, hd.dirty_len, pos) != (ssize_t)hd.dirty_len ||
        tha_crc32c(0, dirty, hd.dirty_len) != hd.dirty_crc) {
        rc = tha__fail(msg, mcap, THA_ECHECKSUM, "checkpoint %s: dirty map checksum "
                       "mismatch", path);
        goto done;
    }
    pos += hd.dirty_len;
    uint32_t fcrc = tha_crc32c(0, &hd, sizeof hd);
    fcrc = crc_cat(fcrc, hd.schema_crc, tha__align_up(hd.schema_len, 8));
    fcrc = crc_cat(fcrc, hd.dirty_crc, hd.dirty_len);
    rc = tha_heap_create(&h, schema, hd.capacity, opt->tracking);
    if (rc) {
        tha__fail(msg, mcap, rc, "checkpoint %s: cannot create a heap of %llu bytes: "
                  "%s", path, (unsigned long long)hd.capacity, tha_strerror(rc));
        goto done;
    }
    if (h->capacity != hd.capacity) {
        rc = tha__fail(msg, mcap, THA_EFRAME, "checkpoint %s: capacity %llu is not a "
                       "heap size", path, (unsigned long long)hd.capacity);
        goto done;
    }
    h->lineage = hd.lineage;
    h->seq = hd.seq;
    h->epoch = hd.epoch;
    rc = load_segments(fd, path, &hd, size, h, opt, &pos, &fcrc, msg, mcap);
    if (rc) goto done;
    uint64_t top_blocks = hd.top / THA__BLOCK;
    ckpt_trailer_t tr;
    if (read_at(fd, &tr, sizeof tr, pos) != (ssize_t)sizeof tr ||
        tr.magic != TRAILER_MAGIC ||
        tha_crc32c(0, &tr, offsetof(ckpt_trailer_t, trailer_crc)) != tr.trailer_crc ||
        tr.nsegments != hd.nsegments || tr.offset != pos) {
        rc = tha__fail(msg, mcap, THA_ECHECKSUM, "checkpoint %s: trailer at offset %llu "
                       "is damaged", path, (unsigned long long)pos);
        goto done;
    }
    if (tr.file_crc != fcrc) {
        rc = tha__fail(msg, mcap, THA_ECHECKSUM, "checkpoint %s: file checksum "
                       "mismatch", path);
        goto done;
    }
    const tha__region_t *r = tha__reg(h);
    if (r->magic != THA__REGION_MAGIC || r->capacity != hd.capacity || r->top != hd.top) {
        rc = tha__fail(msg, mcap, THA_ECORRUPT, "checkpoint %s: the image's region "
                       "header disagrees with the file header", path);
        goto done;
    }
    /* Whatever load returns is a sound heap, and the log's frames are
     * checked against a sound base: the whole image, before the replay. */
    rc = tha_heap_check(h);
    if (rc) {
        tha__fail(msg, mcap, rc, "checkpoint %s: %s", path, tha_heap_errmsg(h));
        goto done;
    }
    /* The blocks dirty at checkpoint time are dirty again: a standby that
     * holds this seq has not seen them yet. */
    tha__clear_dirty(h);
    for (uint64_t w = 0; w < hd.dirty_len / 8; w++) {
        uint64_t bits = dirty[w];
        if (w == top_blocks / 64) bits &= (1ull << (top_blocks % 64)) - 1;
        if (!bits) continue;
        /* one tha__mark keeps the dirty summary right for the word */
        tha__mark(h, (w * 64 + (uint64_t)__builtin_ctzll(bits)) * THA__BLOCK, 1);
        h->dirty[w] |= bits;
    }
    h->collected = 0;
    rep->checkpoint_seq = hd.seq;
    rep->seq = hd.seq;
    if (opt->log) {
        rc = replay(h, opt->log, rep);
        if (rc) goto done;
    }
    if (opt->check && rep->frames_applied) { /* each was checked; again whole */
        rc = tha_heap_check(h);
        if (rc) {
            tha__fail(msg, mcap, rc, "checkpoint %s: %s", path, tha_heap_errmsg(h));
            goto done;
        }
    }
    *out = h;
    h = NULL;
done:
    close(fd);
    free(dirty);
    tha_heap_destroy(h);
    tha_schema_release(schema);
    return rc;
}

/* ---- log: writing ----------------------------------------------------- */

static void log_free(dlog_t *L) {
    if (!L) return;
    if (L->fd >= 0) close(L->fd);
    free(L->path);
    free(L);
}

static int log_sync(dlog_t *L) {
    if (!L->pending) return 0;
    if (fdatasync(L->fd)) return -errno;
    L->pending = 0;
    L->synced_ns = now_ns();
    return 0;
}

/* Writes a fresh log header to fd (h's schema and epoch; frames follow
 * base_seq of lineage) and cuts the file after it. */
static int log_start(int fd, const tha_heap_t *h, uint64_t lineage, uint64_t base_seq) {
    log_hdr_t lh;
    memset(&lh, 0, sizeof lh);
    lh.magic = LOG_MAGIC;
    lh.version = THA_FILE_VERSION;
    lh.header_size = LOG_HDR;
    lh.fingerprint = tha_schema_fingerprint(h->schema);
    lh.lineage = lineage;
    lh.base_seq = base_seq;
    lh.epoch = h->epoch;
    lh.header_crc = tha_crc32c(0, &lh, offsetof(log_hdr_t, header_crc));
    int rc = write_all(fd, &lh, sizeof lh, 0);
    if (!rc && ftruncate(fd, LOG_HDR)) rc = -errno;
    if (!rc && fdatasync(fd)) rc = -errno;
    return rc;
}

int tha_heap_attach_log(tha_heap_t *h, const char *path, int64_t fsync_ms) {
    if (!h || !path || fsync_ms < THA_LOG_FSYNC_NEVER)
        return h ? tha__hfail(h, THA_EINVAL, "attach_log: invalid argument") : THA_EINVAL;
    if (h->log_sink)
        return tha__hfail(h, THA_ESTATE, "attach_log %s: the heap already has a log "
                          "(%s)", path, log_of(h) ? log_of(h)->path : "another kind");
    remove_stale_temps(path); /* a compaction's, killed mid-way */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return tha__hfail(h, -errno, "delta log %s: %s", path, strerror(errno));
    struct stat st;
    int rc = fstat(fd, &st) ? -errno : 0;
    uint64_t size = rc ? 0 : (uint64_t)st.st_size, end = LOG_HDR;
    uint8_t *buf = NULL;
    char why[200];
    if (rc) {
        tha__hfail(h, rc, "delta log %s: %s", path, tha_strerror(rc));
    } else if (size == 0) {
        rc = log_start(fd, h, h->lineage, h->seq);
        if (!rc) rc = sync_dir(path);
        if (rc) tha__hfail(h, rc, "delta log %s: cannot write its header: %s", path,
                           tha_strerror(rc));
    } else {
        /* An existing log: it must end exactly where the heap is. */
        log_hdr_t lh;
        memset(&lh, 0, sizeof lh);
        read_at(fd, &lh, sizeof lh, 0);
        rc = log_hdr_check(&lh, size, path, why, sizeof why);
        if (!rc && lh.fingerprint != tha_schema_fingerprint(h->schema))
            rc = tha__fail(why, sizeof why, THA_EMISMATCH, "delta log %s holds another "
                           "schema", path);
        if (rc) {
            tha__hfail(h, rc, "%s", why);
        } else {
            uint64_t last_seq = lh.base_seq, last_lineage = lh.lineage;
            size_t cap = 0;
            tha__frame_hdr_t hd;
            while (log_next(fd, size, end, &buf, &cap, &hd, why, sizeof why) == 1 &&
                   tha_crc32c(0, buf + THA_FRAME_HEADER_SIZE,
                              hd.length - THA_FRAME_HEADER_SIZE) == hd.body_crc) {
                last_seq = hd.seq;
                last_lineage = hd.lineage;
                end += hd.length;
            }
            if (last_lineage != h->lineage || last_seq != h->seq)
                rc = tha__hfail(h, THA_ESEQ, "delta log %s ends at seq %llu (lineage "
                                "%016llx); the heap is at seq %llu (lineage %016llx): "
                                "load the checkpoint with this log, or start a new log",
                                path, (unsigned long long)last_seq,
                                (unsigned long long)last_lineage,
                                (unsigned long long)h->seq,
                                (unsigned long long)h->lineage);
            else if (end < size && (ftruncate(fd, (off_t)end) || fdatasync(fd)))
                rc = tha__hfail(h, -errno, "delta log %s: cannot cut its torn tail at "
                                "offset %llu: %s", path, (unsigned long long)end,
                                strerror(errno));
        }
    }
    free(buf);
    dlog_t *L = NULL;
    if (!rc) {
        L = calloc(1, sizeof *L);
        if (L) L->path = strdup(path);
        if (!L || !L->path) {
            free(L);
            L = NULL;
            rc = tha__hfail(h, THA_ENOMEM, "attach_log: no memory");
        }
    }
    if (rc) {
        close(fd);
        return rc;
    }
    L->fd = fd;
    L->end = end;
    L->lineage = h->lineage;
    L->fsync_ms = fsync_ms;
    L->synced_ns = now_ns();
    h->log = L;
    h->log_sink = &delta_log; /* from now on the heap's frames come here */
    return 0;
}

int tha_heap_detach_log(tha_heap_t *h) {
    dlog_t *L = h ? log_of(h) : NULL;
    if (!L) return h ? tha__hfail(h, THA_ESTATE, "detach_log: no log") : THA_EINVAL;
    int rc = log_sync(L);
    if (rc) tha__hfail(h, rc, "delta log %s: fsync failed: %s", L->path,
                       tha_strerror(rc));
    log_free(L);
    h->log_sink = NULL;
    h->log = NULL;
    return rc;
}

/* ---- the sink: what the heap calls ----------------------------------------- */

static int sink_sync(void *log, tha_heap_t *h) {
    dlog_t *L = log;
    int rc = log_sync(L);
    if (rc) {
        L->broken = 1; /* written pages may be lost: see sink_append */
        return tha__hfail(h, rc, "delta log %s: fsync failed: %s", L->path,
                          tha_strerror(rc));
    }
    return 0;
}

static int sink_policy(const void *log, int64_t *fsync_ms) {
    const dlog_t *L = log;
    if (L->broken) return 0;
    *fsync_ms = L->fsync_ms;
    return 1;
}

/* Rule (append failure): a frame is made only once the log has it. */
static int sink_append(void *log, tha_heap_t *h, const tha__frame_hdr_t *hdp,
                       const void *frame, size_t len) {
    dlog_t *L = log;
    const tha__frame_hdr_t hd = *hdp;
    if (L->broken)
        return tha__hfail(h, THA_ESTATE, "delta log %s is broken by an earlier failure: "
                          "compact or detach it; frame seq %llu not made", L->path,
                          (unsigned long long)hd.seq);
    int rc = 0;
    if (hd.kind == THA_FRAME_SNAPSHOT && hd.lineage != L->lineage) {
        /* The heap takes another frame series: the old frames cannot follow
         * it any more, so the log starts over at this snapshot. */
        rc = log_start(L->fd, h, hd.lineage, hd.seq - 1);
        if (rc) {
            L->broken = 1;
            return tha__hfail(h, rc, "delta log %s: cannot restart it for snapshot seq "
                              "%llu: %s", L->path, (unsigned long long)hd.seq,
                              tha_strerror(rc));
        }
        L->end = LOG_HDR;
        L->lineage = hd.lineage;
    }
    const char *what = "write";
    rc = write_all(L->fd, frame, len, L->end);
    if (!rc && (L->fsync_ms == THA_LOG_FSYNC_ALWAYS ||
                (L->fsync_ms > 0 &&
                 now_ns() - L->synced_ns >= (uint64_t)L->fsync_ms * 1000000u))) {
        what = "fsync";
        L->pending = 1;
        rc = log_sync(L);
    }
    if (rc) {
        /* Undo: the frame is not made, so the log must not hold it. After a
         * failed fsync the kernel may have dropped earlier pages too, so the
         * log is broken until compacted even if the cut works. */
        if (ftruncate(L->fd, (off_t)L->end) || strcmp(what, "fsync") == 0) L->broken = 1;
        return tha__hfail(h, rc, "delta log %s: %s of frame seq %llu at offset %llu "
                          "failed: %s; the frame was not made", L->path, what,
                          (unsigned long long)hd.seq, (unsigned long long)L->end,
                          tha_strerror(rc));
    }
    if (L->fsync_ms != THA_LOG_FSYNC_ALWAYS) L->pending = 1;
    L->end += len;
    return 0;
}

static void sink_close(void *log) {
    log_sync(log);
    log_free(log);
}

static const tha__log_sink_t delta_log = {
    .append = sink_append, .sync = sink_sync, .policy = sink_policy, .close = sink_close};

/* ---- compaction ------------------------------------------------------------ */

int tha_heap_compact(tha_heap_t *h, const char *path, tha_progress_fn progress,
                     void *ctx) {
    if (!h || !path) return THA_EINVAL;
    dlog_t *L = log_of(h);
    if (!L) return tha__hfail(h, THA_ESTATE, "compact: no log attached");
    int rc = tha_heap_checkpoint(h, path, progress, ctx);
    if (rc) return rc;
    /* The checkpoint holds everything the log did: a new, empty log takes
     * its place atomically. A crash before the rename leaves the old log,
     * whose frames up to this seq replay skips. */
    remove_stale_temps(L->path);
    char tmp[PATH_MAX];
    int fd = make_temp(L->path, tmp, sizeof tmp);
    if (fd < 0) return tha__hfail(h, fd, "compact: cannot create a new log beside %s: "
                                  "%s", L->path, tha_strerror(fd));
    rc = log_start(fd, h, h->lineage, h->seq);
    if (!rc && rename(tmp, L->path)) rc = -errno;
    if (rc) {
        unlink(tmp);
        close(fd);
        return tha__hfail(h, rc, "compact: checkpoint %s written, but the log %s could "
                          "not be replaced: %s", path, L->path, tha_strerror(rc));
    }
    flock(fd, LOCK_UN); /* it is the log now, no longer a temp */
    close(L->fd);
    L->fd = fd;
    L->end = LOG_HDR;
    L->lineage = h->lineage;
    L->pending = 0;
    L->broken = 0;
    L->synced_ns = now_ns();
    rc = sync_dir(L->path);
    if (rc) return tha__hfail(h, rc, "compact: directory fsync of %s failed: %s",
                              L->path, tha_strerror(rc));
    return 0;
}

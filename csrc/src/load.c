/* load.c — reading a checkpoint file back into a new heap (checked
 * before anything is built, streamed a segment at a time by a reader
 * thread, verified where it lies) and replaying the valid prefix of a
 * delta log on top of it; tha_checkpoint_info.
 */
#include "durable_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* Load asks the kernel for this much of the file ahead of the segment being
 * applied, so the disk reads while the CPU verifies and copies. */
#define READ_AHEAD (32u << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif


/* Bytes of the segments of a checkpoint, from its header. */
static uint64_t segments_bytes(const tha__ckpt_hdr_t *hd) {
    uint64_t top_blocks = hd->top / THA__BLOCK, full = top_blocks / hd->segment_blocks;
    uint64_t rest = top_blocks % hd->segment_blocks;
    uint64_t n = full * tha__segment_bytes(hd->segment_blocks);
    if (rest) n += tha__segment_bytes(rest);
    return n;
}

/* Reads and checks the header; *size gets the file size. */
static int read_ckpt_hdr(int fd, const char *path, tha__ckpt_hdr_t *hd, uint64_t *size,
                         char *msg, size_t cap) {
    struct stat st;
    if (fstat(fd, &st)) return tha__fail(msg, cap, -errno, "checkpoint %s: %s", path,
                                         strerror(errno));
    *size = (uint64_t)st.st_size;
    ssize_t n = tha__read_at(fd, hd, sizeof *hd, 0);
    if (n < 0) return tha__fail(msg, cap, (int)n, "checkpoint %s: read failed: %s",
                                path, tha_strerror((int)n));
    if (n < (ssize_t)sizeof *hd)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: truncated: %llu bytes, "
                         "the header alone is %u", path, (unsigned long long)*size,
                         THA__CKPT_HDR);
    if (hd->magic != THA__CKPT_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "%s is not a tha checkpoint (magic "
                         "0x%08x)", path, hd->magic);
    if (tha_crc32c(0, hd, offsetof(tha__ckpt_hdr_t, header_crc)) != hd->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "checkpoint %s: header checksum "
                         "mismatch", path);
    if (hd->version != THA_FILE_VERSION ||
        (hd->frame_version != THA__FRAME_V1 && hd->frame_version != THA_FRAME_VERSION))
        return tha__fail(msg, cap, THA_EVERSION, "checkpoint %s: file format version "
                         "%u (frames %u); this build reads %d (frames 1 to %d)", path,
                         hd->version, hd->frame_version, THA_FILE_VERSION,
                         THA_FRAME_VERSION);
    /* frames of version 2 are exactly the same-address ones */
    if ((hd->frame_version == THA__FRAME_V1) != (hd->base == 0) ||
        (hd->base && tha__base_ok(hd->base, hd->capacity, msg, cap)))
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: header is inconsistent "
                         "(frames version %u, same-address base 0x%llx)", path,
                         hd->frame_version, (unsigned long long)hd->base);
    uint64_t top_blocks = hd->top / THA__BLOCK;
    if (hd->header_size != THA__CKPT_HDR || hd->top % THA__PAGE || hd->top == 0 ||
        hd->top > hd->capacity || hd->capacity % THA__GRANULE ||
        hd->capacity > (1ull << 44) || hd->segment_blocks == 0 ||
        hd->segment_blocks > THA__SEG_MAX_BLOCKS ||
        hd->nsegments != (top_blocks + hd->segment_blocks - 1) / hd->segment_blocks ||
        hd->dirty_len != (top_blocks + 63) / 64 * 8)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: header is inconsistent "
                         "(top %llu, capacity %llu)", path, (unsigned long long)hd->top,
                         (unsigned long long)hd->capacity);
    uint64_t want = THA__CKPT_HDR + tha__align_up(hd->schema_len, 8) + hd->dirty_len +
                    segments_bytes(hd) + THA__TRAILER;
    if (*size != want)
        return tha__fail(msg, cap, THA_EFRAME, "checkpoint %s: %s: %llu bytes, the "
                         "header announces %llu", path,
                         *size < want ? "truncated" : "trailing bytes",
                         (unsigned long long)*size, (unsigned long long)want);
    return 0;
}

/* The schema section, checked and parsed. */
static int read_ckpt_schema(int fd, const char *path, const tha__ckpt_hdr_t *hd,
                            tha_schema_t **out, char *msg, size_t cap) {
    size_t scap = tha__align_up(hd->schema_len, 8);
    uint8_t *sb = malloc(scap ? scap : 1);
    if (!sb) return tha__fail(msg, cap, THA_ENOMEM, "checkpoint %s: no memory", path);
    ssize_t n = tha__read_at(fd, sb, scap, THA__CKPT_HDR);
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
    tha__ckpt_hdr_t hd;
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
    out->base = hd.base;
    return 0;
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
    tha__log_hdr_t lh;
    memset(&lh, 0, sizeof lh);
    tha__read_at(fd, &lh, sizeof lh, 0);
    int rc = tha__log_hdr_check(&lh, size, path, rep->msg, sizeof rep->msg);
    if (rc) {
        stop(rep, rc, 0, 0);
        close(fd);
        return 0;
    }
    uint8_t *buf = NULL;
    size_t cap = 0;
    uint64_t pos = THA__LOG_HDR;
    rep->log_end = pos;
    for (;;) {
        tha__frame_hdr_t hd;
        char why[200];
        rc = tha__log_next(fd, size, pos, &buf, &cap, &hd, why, sizeof why);
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
static void seg_geometry(const tha__ckpt_hdr_t *hd, uint64_t next_block, uint64_t *want,
                         uint64_t *head) {
    uint64_t top_blocks = hd->top / THA__BLOCK;
    *want = top_blocks - next_block < hd->segment_blocks ? top_blocks - next_block
                                                         : hd->segment_blocks;
    *head = tha__segment_head_bytes(*want);
}

/* The head of the segment expected at next_block, its header parsed into
 * *fh (the one parse: applying it takes *fh): a sane frame header of the
 * segment's length, and the segment the file header says comes there. */
static int seg_head_ok(const tha__ckpt_hdr_t *hd, const uint8_t *head, uint64_t want,
                       uint64_t next_block, tha__frame_hdr_t *fh, char *why,
                       size_t cap) {
    int rc = tha__frame_parse(head, tha__segment_bytes(want), fh, why, cap);
    if (rc) return rc;
    tha__run_t run;
    memcpy(&run, head + THA_FRAME_HEADER_SIZE, sizeof run);
    if (fh->kind != THA__FRAME_SEGMENT || fh->seq != hd->seq ||
        tha__frame_base(fh) != hd->base ||
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
    const tha__ckpt_hdr_t *hd;
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
    const tha__ckpt_hdr_t *hd = R->hd;
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
static int load_segments(int fd, const char *path, const tha__ckpt_hdr_t *hd, uint64_t size,
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
                        *fcrc = tha__crc_cat(*fcrc, tha_crc32c(0, hp, THA_FRAME_HEADER_SIZE),
                                        THA_FRAME_HEADER_SIZE);
                        *fcrc = tha__crc_cat(*fcrc, fh.body_crc, fh.length - THA_FRAME_HEADER_SIZE);
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
        ssize_t n = tha__read_at(fd, buf, len, *pos);
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
        *fcrc = tha__crc_cat(*fcrc, tha_crc32c(0, buf, THA_FRAME_HEADER_SIZE),
                        THA_FRAME_HEADER_SIZE);
        *fcrc = tha__crc_cat(*fcrc, fh.body_crc, len - THA_FRAME_HEADER_SIZE);
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
    /* what checkpoints and compactions killed mid-way left (see tha__make_temp) */
    tha__remove_stale_temps(path);
    if (opt->log) tha__remove_stale_temps(opt->log);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tha__fail(msg, mcap, -errno, "checkpoint %s: %s", path,
                                 strerror(errno));
    tha__ckpt_hdr_t hd;
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
    uint64_t pos = THA__CKPT_HDR + tha__align_up(hd.schema_len, 8);
    dirty = malloc(hd.dirty_len ? hd.dirty_len : 8);
    if (!dirty) {
        rc = tha__fail(msg, mcap, THA_ENOMEM, "checkpoint %s: no memory", path);
        goto done;
    }
    if (tha__read_at(fd, dirty, hd.dirty_len, pos) != (ssize_t)hd.dirty_len ||
        tha_crc32c(0, dirty, hd.dirty_len) != hd.dirty_crc) {
        rc = tha__fail(msg, mcap, THA_ECHECKSUM, "checkpoint %s: dirty map checksum "
                       "mismatch", path);
        goto done;
    }
    pos += hd.dirty_len;
    uint32_t fcrc = tha_crc32c(0, &hd, sizeof hd);
    fcrc = tha__crc_cat(fcrc, hd.schema_crc, tha__align_up(hd.schema_len, 8));
    fcrc = tha__crc_cat(fcrc, hd.dirty_crc, hd.dirty_len);
    /* a same-address heap's checkpoint: at its base or nowhere */
    char why[256] = "";
    rc = tha__heap_new(&h, schema, hd.capacity, opt->tracking, hd.base, hd.base, why,
                       sizeof why);
    if (rc) {
        tha__fail(msg, mcap, rc, "checkpoint %s: cannot create a heap of %llu bytes: "
                  "%s", path, (unsigned long long)hd.capacity,
                  why[0] ? why : tha_strerror(rc));
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
    tha__ckpt_trailer_t tr;
    if (tha__read_at(fd, &tr, sizeof tr, pos) != (ssize_t)sizeof tr ||
        tr.magic != THA__TRAILER_MAGIC ||
        tha_crc32c(0, &tr, offsetof(tha__ckpt_trailer_t, trailer_crc)) != tr.trailer_crc ||
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
    if (r->magic == THA__REGION_MAGIC_V2) {
        rc = tha__fail(msg, mcap, THA_EVERSION, "checkpoint %s: %s", path,
                       tha__region_magic_why(r->magic));
        goto done;
    }
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

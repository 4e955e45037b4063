/* checkpoint.c — writing a checkpoint file: one heap image as a file
 * header, the schema, the dirty bitmap, the image as segment frames (the
 * wire format), a trailer; written to a temp file, fsync'd, renamed over.
 * The image is streamed a segment at a time: never a second copy. load.c
 * reads it back.
 */
#include "durable_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Writeback is started every this many bytes, so the final fsync has
 * little left to do and the disk works while segments are encoded. */
#define WRITEBACK_STEP (64u << 20)

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
    int rc = tha__write_all(W->fd, W->buf[k], W->len[k], W->off[k]);
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
    uint64_t nseg = (top_blocks + THA__SEG_BLOCKS - 1) / THA__SEG_BLOCKS;
    size_t slen;
    int rc = tha_schema_serialize(h->schema, NULL, 0, &slen);
    if (rc) return tha__hfail(h, rc, "checkpoint: schema: %s", tha_strerror(rc));
    uint64_t dlen = (top_blocks + 63) / 64 * 8;
    size_t scap = tha__align_up(slen, 8);
    size_t segcap = tha__segment_size(h, 0, THA__SEG_BLOCKS);
    size_t bufcap = segcap > scap ? segcap : scap;
    /* two segment buffers: one encoded while the other is written */
    uint8_t *buf = malloc(2 * bufcap);
    if (!buf) return tha__hfail(h, THA_ENOMEM, "checkpoint: no memory for a segment");
    tha__remove_stale_temps(path);
    char tmp[PATH_MAX];
    int fd = tha__make_temp(path, tmp, sizeof tmp);
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
    tha__ckpt_hdr_t hd;
    memset(&hd, 0, sizeof hd);
    hd.magic = THA__CKPT_MAGIC;
    hd.version = THA_FILE_VERSION;
    hd.header_size = THA__CKPT_HDR;
    hd.frame_version = h->addr ? THA_FRAME_VERSION : THA__FRAME_V1; /* as its segments */
    hd.base = h->addr;
    hd.schema_len = (uint32_t)slen;
    hd.fingerprint = tha_schema_fingerprint(h->schema);
    hd.lineage = h->lineage;
    hd.epoch = h->epoch;
    hd.epoch_start = tha_heap_epoch_start(h); /* informative: the image has the history */
    hd.seq = h->seq;
    hd.capacity = r->capacity;
    hd.top = top;
    hd.dirty_len = dlen;
    hd.segment_blocks = THA__SEG_BLOCKS;
    hd.nsegments = nseg;
    rc = tha_schema_serialize(h->schema, buf, bufcap, &slen);
    if (rc) goto fail;
    memset(buf + slen, 0, scap - slen);
    hd.schema_crc = tha_crc32c(0, buf, scap);
    /* the dirty words hold no bits at or above top_blocks */
    hd.dirty_crc = tha_crc32c(0, h->dirty, dlen);
    hd.header_crc = tha_crc32c(0, &hd, offsetof(tha__ckpt_hdr_t, header_crc));
    uint64_t pos = 0;
    uint32_t fcrc = tha_crc32c(0, &hd, sizeof hd);
    if ((rc = tha__write_all(fd, &hd, sizeof hd, pos))) goto fail;
    pos += sizeof hd;
    fcrc = tha__crc_cat(fcrc, hd.schema_crc, scap);
    if ((rc = tha__write_all(fd, buf, scap, pos))) goto fail;
    pos += scap;
    fcrc = tha__crc_cat(fcrc, hd.dirty_crc, dlen);
    if ((rc = tha__write_all(fd, h->dirty, dlen, pos))) goto fail;
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
        rc = tha__encode_segment(h, &from, THA__SEG_BLOCKS, sb, bufcap, &len);
        if (rc) goto fail;
        what = "write";
        /* body CRC from the segment header: no second pass over the bytes */
        tha__frame_hdr_t fh;
        memcpy(&fh, sb, sizeof fh);
        fcrc = tha__crc_cat(fcrc, tha_crc32c(0, sb, THA_FRAME_HEADER_SIZE),
                       THA_FRAME_HEADER_SIZE);
        fcrc = tha__crc_cat(fcrc, fh.body_crc, len - THA_FRAME_HEADER_SIZE);
        if ((rc = writer_queue(&W, k, len, pos))) goto fail;
        pos += len;
        if (progress) progress(ctx, from * THA__BLOCK, top);
    }
    what = "write";
    if ((rc = writer_finish(&W, wt))) goto fail;
    tha__ckpt_trailer_t tr;
    memset(&tr, 0, sizeof tr);
    tr.magic = THA__TRAILER_MAGIC;
    tr.nsegments = nseg;
    tr.offset = pos;
    tr.file_crc = fcrc;
    tr.trailer_crc = tha_crc32c(0, &tr, offsetof(tha__ckpt_trailer_t, trailer_crc));
    if ((rc = tha__write_all(fd, &tr, sizeof tr, pos))) goto fail;
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
    rc = tha__sync_dir(path);
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

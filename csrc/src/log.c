/* log.c — the delta log: an append-only file, a log header, then every
 * frame the heap encodes or applies, back to back, unchanged from the wire.
 * tha_heap_attach_log installs it in the heap as a sink (append, sync,
 * policy, close: tha__log_sink_t), which is how the codec and the session
 * reach it; tha_heap_detach_log takes it out. Also the log's reading half
 * (header check, next frame), which attach and load.c's replay share, and
 * compaction (checkpoint + a fresh log).
 */
#include "durable_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- reading a log -------------------------------------------------------- */

int tha__log_hdr_check(const tha__log_hdr_t *lh, uint64_t size, const char *path,
                       char *msg, size_t cap) {
    if (size < THA__LOG_HDR)
        return tha__fail(msg, cap, THA_EFRAME, "log %s: header torn (%llu bytes)", path,
                         (unsigned long long)size);
    if (lh->magic != THA__LOG_MAGIC)
        return tha__fail(msg, cap, THA_EFRAME, "%s is not a tha delta log (magic "
                         "0x%08x)", path, lh->magic);
    if (tha_crc32c(0, lh, offsetof(tha__log_hdr_t, header_crc)) != lh->header_crc)
        return tha__fail(msg, cap, THA_ECHECKSUM, "log %s: header checksum mismatch", path);
    if (lh->version != THA_FILE_VERSION || lh->header_size != THA__LOG_HDR)
        return tha__fail(msg, cap, THA_EVERSION, "log %s: format version %u; this "
                         "build reads %d", path, lh->version, THA_FILE_VERSION);
    return 0;
}

int tha__log_next(int fd, uint64_t size, uint64_t pos, uint8_t **buf, size_t *cap,
                  tha__frame_hdr_t *hd, char *msg, size_t mcap) {
    if (pos == size) return 0;
    if (size - pos < THA_FRAME_HEADER_SIZE)
        return tha__fail(msg, mcap, THA_EFRAME, "torn frame at offset %llu: %llu "
                         "bytes of a header", (unsigned long long)pos,
                         (unsigned long long)(size - pos));
    uint8_t raw[THA_FRAME_HEADER_SIZE];
    ssize_t n = tha__read_at(fd, raw, sizeof raw, pos);
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
    n = tha__read_at(fd, *buf + sizeof raw, hd->length - sizeof raw, pos + sizeof raw);
    if (n != (ssize_t)(hd->length - sizeof raw))
        return tha__fail(msg, mcap, n < 0 ? (int)n : THA_EFRAME, "read failed at "
                         "offset %llu", (unsigned long long)pos);
    return 1;
}

/* ---- writing a log -------------------------------------------------------- */

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
    tha__log_hdr_t lh;
    memset(&lh, 0, sizeof lh);
    lh.magic = THA__LOG_MAGIC;
    lh.version = THA_FILE_VERSION;
    lh.header_size = THA__LOG_HDR;
    lh.fingerprint = tha_schema_fingerprint(h->schema);
    lh.lineage = lineage;
    lh.base_seq = base_seq;
    lh.epoch = h->epoch;
    lh.header_crc = tha_crc32c(0, &lh, offsetof(tha__log_hdr_t, header_crc));
    int rc = tha__write_all(fd, &lh, sizeof lh, 0);
    if (!rc && ftruncate(fd, THA__LOG_HDR)) rc = -errno;
    if (!rc && fdatasync(fd)) rc = -errno;
    return rc;
}

int tha_heap_attach_log(tha_heap_t *h, const char *path, int64_t fsync_ms) {
    if (!h || !path || fsync_ms < THA_LOG_FSYNC_NEVER)
        return h ? tha__hfail(h, THA_EINVAL, "attach_log: invalid argument") : THA_EINVAL;
    if (h->log_sink)
        return tha__hfail(h, THA_ESTATE, "attach_log %s: the heap already has a log "
                          "(%s)", path, log_of(h) ? log_of(h)->path : "another kind");
    tha__remove_stale_temps(path); /* a compaction's, killed mid-way */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return tha__hfail(h, -errno, "delta log %s: %s", path, strerror(errno));
    struct stat st;
    int rc = fstat(fd, &st) ? -errno : 0;
    uint64_t size = rc ? 0 : (uint64_t)st.st_size, end = THA__LOG_HDR;
    uint8_t *buf = NULL;
    char why[200];
    if (rc) {
        tha__hfail(h, rc, "delta log %s: %s", path, tha_strerror(rc));
    } else if (size == 0) {
        rc = log_start(fd, h, h->lineage, h->seq);
        if (!rc) rc = tha__sync_dir(path);
        if (rc) tha__hfail(h, rc, "delta log %s: cannot write its header: %s", path,
                           tha_strerror(rc));
    } else {
        /* An existing log: it must end exactly where the heap is. */
        tha__log_hdr_t lh;
        memset(&lh, 0, sizeof lh);
        tha__read_at(fd, &lh, sizeof lh, 0);
        rc = tha__log_hdr_check(&lh, size, path, why, sizeof why);
        if (!rc && lh.fingerprint != tha_schema_fingerprint(h->schema))
            rc = tha__fail(why, sizeof why, THA_EMISMATCH, "delta log %s holds another "
                           "schema", path);
        if (rc) {
            tha__hfail(h, rc, "%s", why);
        } else {
            uint64_t last_seq = lh.base_seq, last_lineage = lh.lineage;
            size_t cap = 0;
            tha__frame_hdr_t hd;
            while (tha__log_next(fd, size, end, &buf, &cap, &hd, why, sizeof why) == 1 &&
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
        L->end = THA__LOG_HDR;
        L->lineage = hd.lineage;
    }
    const char *what = "write";
    rc = tha__write_all(L->fd, frame, len, L->end);
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
    tha__remove_stale_temps(L->path);
    char tmp[PATH_MAX];
    int fd = tha__make_temp(L->path, tmp, sizeof tmp);
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
    L->end = THA__LOG_HDR;
    L->lineage = h->lineage;
    L->pending = 0;
    L->broken = 0;
    L->synced_ns = now_ns();
    rc = tha__sync_dir(L->path);
    if (rc) return tha__hfail(h, rc, "compact: directory fsync of %s failed: %s",
                              L->path, tha_strerror(rc));
    return 0;
}

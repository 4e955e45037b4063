/* files.c — the file handling durability shares: whole writes and reads,
 * the directory fsync after a rename, and temp files beside their target
 * (created locked, and the stale ones of writers killed mid-way removed).
 */
#include "durable_priv.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int tha__write_all(int fd, const void *buf, size_t n, uint64_t off) {
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

ssize_t tha__read_at(int fd, void *buf, size_t n, uint64_t off) {
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
int tha__sync_dir(const char *path) {
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
int tha__make_temp(const char *path, char *tmp, size_t cap) {
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
int tha__remove_stale_temps(const char *path) {
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

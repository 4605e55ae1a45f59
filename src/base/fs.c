/* src/base/fs.c — file helpers: mkdir -p, write-then-rename, rm -rf, the folder lock. */
#define _GNU_SOURCE /* nftw's FTW_DEPTH / FTW_PHYS */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "base.h"

int dm_mkdir_p(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int dm_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int dm_unlink_fresh(const char *path)
{
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}

FILE *dm_fopen_fresh(const char *path)
{
    if (dm_unlink_fresh(path) != 0)
        return NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "wb");
    if (!f)
        close(fd);
    return f;
}

/* nftw has no context argument: the first link found goes here (one walk at a time: a folder is
 * checked under its lock, by one thread of the command). */
static _Thread_local char link_found[4200];

static int find_link(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    if (flag != FTW_SL && flag != FTW_SLN)
        return 0;
    snprintf(link_found, sizeof link_found, "%s", p);
    return 1;
}

int dm_refuse_links(const char *dir, dm_err *err)
{
    link_found[0] = '\0';
    /* DIR/. : the folder the user named may itself be a link (an OUTDIR on another disk) */
    char root[4200];
    snprintf(root, sizeof root, "%s/.", dir);
    int rc = nftw(root, find_link, 16, FTW_PHYS);
    if (rc == 1) {
        char to[4200];
        ssize_t n = readlink(link_found, to, sizeof to - 1);
        to[n > 0 ? n : 0] = '\0';
        const char *rest = link_found + strlen(root); /* the link below DIR/. */
        return dm_err_set(err, DM_EIO, "%s%s: is a symbolic link (to %s) inside a dinomap folder; "
                          "dinomap never follows links in its own folders, so that nothing planted "
                          "there can redirect what it reads or writes: remove the link (or use "
                          "another output folder)", dir, rest, n > 0 ? to : "?");
    }
    if (rc != 0)
        return dm_err_set(err, DM_EIO, "%s: cannot list: %s", dir, strerror(errno));
    return 0;
}

int dm_sync_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

void dm_parent_dir(const char *path, char *dir, size_t n)
{
    snprintf(dir, n, "%s", path);
    char *s = strrchr(dir, '/');
    if (s)
        *(s == dir ? s + 1 : s) = '\0';
    else
        snprintf(dir, n, ".");
}

int dm_sync_parent(const char *path)
{
    char dir[4096];
    dm_parent_dir(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int dm_write_file_atomic(const char *path, const void *data, size_t n, dm_err *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    FILE *f = dm_fopen_fresh(tmp);
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fflush(f) != 0)
        ok = 0;
    if (f && fsync(fileno(f)) != 0)
        ok = 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return dm_err_set(err, DM_EIO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) != 0 && errno != ENOENT ? -1 : 0;
}

int dm_remove_tree(const char *path, dm_err *err)
{
    if (!dm_exists(path))
        return 0;
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return dm_err_set(err, DM_EIO, "%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

struct dm_lock {
    int fd;
};

int dm_lock_dir(const char *dir, dm_lock **out, dm_err *err)
{
    *out = NULL;
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, DM_LOCK_FILE);
    int fd = -1;
    /* A failed first run removes the lock file it made: a process that opened it just before
     * would lock a file no longer in the folder while another locks the new one. So the lock
     * counts only when the locked file is still the one at the path; else it is taken again. */
    for (int tries = 0;; tries++) {
        /* never through a link: the lock file is truncated and written below */
        fd = open(p, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd < 0 && errno == ELOOP)
            return dm_err_set(err, DM_EIO, "%s: is a symbolic link; dinomap never follows links "
                              "in its own folders: remove it", p);
        if (fd < 0)
            return dm_err_set(err, DM_EIO, "%s: cannot create the lock file: %s", p,
                              strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(fd);
            if (e == EWOULDBLOCK)
                return dm_err_set(err, DM_ELOCKED, "%s is in use by another dinomap run (it "
                                  "holds %s); wait for it to finish", dir, DM_LOCK_FILE);
            return dm_err_set(err, DM_EIO, "%s: cannot lock: %s", p, strerror(e));
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && lstat(p, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino)
            break;
        close(fd);
        if (tries == 100)
            return dm_err_set(err, DM_EIO, "%s: the lock file keeps being replaced", p);
    }
    dm_lock *l = malloc(sizeof *l);
    if (!l) {
        close(fd);
        return dm_err_oom(err);
    }
    /* who holds it, for people looking at the folder; the lock itself is the flock */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && write(fd, pid, (size_t)n) != n)
        (void)0;
    l->fd = fd;
    /* checked under the lock: no other dinomap changes the folder while it is walked */
    int rc = dm_refuse_links(dir, err);
    if (rc) {
        dm_unlock(l);
        return rc;
    }
    *out = l;
    return 0;
}

void dm_unlock(dm_lock *l)
{
    if (!l)
        return;
    close(l->fd); /* releases the flock */
    free(l);
}

void dm_trim_memory(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void dm_memory_policy(void)
{
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}

int dm_outdir_claim(const char *dir, dm_outdir *c, dm_err *err)
{
    memset(c, 0, sizeof *c);
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (dm_mkdir_p(dir) != 0)
            return dm_err_set(err, DM_EIO, "%s: cannot create the output folder", dir);
        c->made = 1;
    } else if (!S_ISDIR(st.st_mode)) {
        return dm_err_set(err, DM_EIO, "%s: exists and is not a folder", dir);
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, DM_LOCK_FILE);
    c->lock_existed = dm_exists(p);
    return dm_lock_dir(dir, &c->lock, err);
}

void dm_outdir_release(const char *dir, dm_outdir *c, int failed)
{
    dm_unlock(c->lock);
    c->lock = NULL;
    if (failed && c->made) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, DM_LOCK_FILE);
        if (!c->lock_existed)
            unlink(p);
        rmdir(dir);
    }
}

/* src/base/base.h — the ground floor every other folder stands on, and the one header of it:
 * errors (dm_err), the log and its sink, file helpers (mkdir -p, write-then-rename, a directory
 * lock), SHA-256, NumPy .npy files and the thread pool. Nothing here includes anything of
 * dinomap's; nothing here prints unless the caller installed a log sink. */
#ifndef DM_BASE_H
#define DM_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DINOMAP_VERSION "0.2.0"

/* --- errors ------------------------------------------------------------------------------------
 * Functions that can fail return 0 or a negative DM_E* code and write a human message into the
 * dm_err the caller passes (which may be NULL); the caller decides whether to print it. */
enum {
    DM_OK = 0,
    DM_EIO = -1,          /* cannot open/read/write/map a file */
    DM_EFORMAT = -2,      /* the file is not what it claims to be, or is damaged */
    DM_ENOMEM = -3,
    DM_EINVAL = -4,       /* bad argument or option */
    DM_ESHAPE = -5,       /* a tensor is missing, extra or mis-shaped */
    DM_EUNSUPPORTED = -6, /* valid but not supported (e.g. a forbidden pickle global) */
    DM_ELOCKED = -7,      /* another process holds the run folder */
    DM_EINTERRUPTED = -8, /* stopped on request (SIGINT/SIGTERM); what was done is kept */
    DM_EMISMATCH = -9,    /* the run folder holds a run with another configuration */
};

typedef struct dm_err {
    int code;
    char msg[1024];
} dm_err;

/* Sets err (if not NULL) and returns code. printf-style message. */
int dm_err_set(dm_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to the message already in err (for adding file names up the call chain). */
int dm_err_prefix(dm_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dm_err_oom(dm_err *err);
void dm_err_clear(dm_err *err);
/* A full disk (space.c). dm_no_space: 1 when a write that failed (errno e, 0 if unknown; the
 * message so far, or NULL) failed for want of space: ENOSPC or EDQUOT, a library's words for it
 * (SQLite's "database or disk is full"), or under 1 MiB left where path is. dm_err_space: then
 * appends ": No space left on device" to err's message (once). dm_err_space_hint: when err says
 * so, appends what to do: free space on the disk of dir and run the same command again. */
int dm_no_space(const char *path, int e, const char *msg);
int dm_err_space(dm_err *err, const char *path, int e);
void dm_err_space_hint(dm_err *err, const char *dir);

/* --- log ---------------------------------------------------------------------------------------
 * The one piece of global state. Messages go to the sink the program installed (the command line
 * prints them on stderr); with no sink they are dropped: the library never owns stderr. */
enum { DM_LOG_QUIET = 0, DM_LOG_WARN = 1, DM_LOG_INFO = 2, DM_LOG_DEBUG = 3 };
typedef void (*dm_log_sink)(void *ctx, int level, const char *msg);
void dm_log_set_sink(dm_log_sink sink, void *ctx); /* NULL: drop messages */
void dm_log_set_level(int level);                   /* messages above it are dropped */
int dm_log_get_level(void);
void dm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define dm_warn(...) dm_log(DM_LOG_WARN, __VA_ARGS__)
#define dm_info(...) dm_log(DM_LOG_INFO, __VA_ARGS__)

/* --- files ------------------------------------------------------------------------------------ */
/* Creates a directory and its parents (like mkdir -p); 0 or -1 with errno. */
int dm_mkdir_p(const char *path);
/* Writes n bytes to `path` through `path`.part, flushed and renamed into place: readers see the
 * old file or the whole new one, never a part. */
int dm_write_file_atomic(const char *path, const void *data, size_t n, dm_err *err);
/* Removes a directory tree (like rm -rf; symbolic links are removed, never followed). 0 if it is
 * gone (or never was). */
int dm_remove_tree(const char *path, dm_err *err);
/* 1 if path exists (any type). */
int dm_exists(const char *path);
/* Makes room for a file dinomap is about to create at `path` (a temporary name in a folder it
 * writes): whatever is there (a file, or a symbolic link planted to redirect the write) is
 * unlinked, never followed. 0, or -1 with errno (a folder there, or no permission). */
int dm_unlink_fresh(const char *path);
/* fopen(path, "wb") for a file that must be new: dm_unlink_fresh, then created with O_EXCL |
 * O_NOFOLLOW (a link planted between the two is refused, not followed). NULL with errno. */
FILE *dm_fopen_fresh(const char *path);
/* Refuses (DM_EIO) a folder dinomap writes or reads as a run (OUTDIR, a shard) that holds a
 * symbolic link anywhere below it: dinomap never follows a link inside its own folders, so a link
 * planted there cannot make it read or write elsewhere. The message names the link. */
int dm_refuse_links(const char *dir, dm_err *err);
/* fsync(2) of a file by name, and of the folder holding a path (after a rename into it): what a
 * commit that says "this file is in place" needs to survive a power cut. 0 or -1 with errno. */
int dm_sync_file(const char *path);
/* The folder holding path ("." for a bare name, "/" for a file at the root) into dir[n]. */
void dm_parent_dir(const char *path, char *dir, size_t n);
int dm_sync_parent(const char *path);

/* An exclusive lock on a folder (flock(2) on FOLDER/.dinomap.lock, released when the process ends,
 * however it ends). DM_ELOCKED, at once, if another process holds it. */
typedef struct dm_lock dm_lock;
int dm_lock_dir(const char *dir, dm_lock **out, dm_err *err);
void dm_unlock(dm_lock *l); /* NULL-safe; the lock file stays (removing it would race) */
#define DM_LOCK_FILE ".dinomap.lock"

/* An output folder claimed for one command: created when missing (*claim->made), then locked.
 * dm_outdir_release unlocks it and, when the command failed (failed != 0) in a folder it made,
 * removes the folder again (with the lock file, when that was new): nothing half-made stays. */
typedef struct dm_outdir {
    dm_lock *lock;
    int made, lock_existed;
} dm_outdir;
int dm_outdir_claim(const char *dir, dm_outdir *claim, dm_err *err);
void dm_outdir_release(const char *dir, dm_outdir *claim, int failed);

/* Gives the heap's free memory back to the system (glibc's malloc_trim; nothing elsewhere): after
 * a phase that freed much, so that the next one's peak is its own. */
void dm_trim_memory(void);
/* Makes the C library give large blocks (>= 128 KiB) back to the system as soon as they are
 * freed (glibc: a fixed mmap threshold) instead of keeping them for reuse: GDAL's block cache
 * churns through such blocks, and with glibc's adaptive threshold the heap grew to twice what
 * was live (a 19,968² px finalize: 396 MB peak RSS for 142 MB of heap; 163 MB with this). For
 * programs (the command line calls it first thing); a process-wide setting. */
void dm_memory_policy(void);

/* --- SHA-256 ---------------------------------------------------------------------------------- */
typedef struct dm_sha256 {
    void *ctx; /* libcrypto's digest context */
} dm_sha256;

int dm_sha256_init(dm_sha256 *s); /* 0, or -1 when out of memory */
void dm_sha256_update(dm_sha256 *s, const void *data, size_t n);
void dm_sha256_hex(dm_sha256 *s, char out[65]); /* finishes the hash and frees it */
/* Hash of a whole file as 64 hex digits. */
int dm_sha256_file(const char *path, char out[65], dm_err *err);
/* The same, remembered in a small cache ($DINOMAP_CACHE_DIR, else $XDG_CACHE_HOME/dinomap, else
 * ~/.cache/dinomap) keyed by real path, size, mtime and inode. */
int dm_sha256_file_cached(const char *path, char out[65], dm_err *err);
/* Hash of a string. */
void dm_sha256_str(const char *s, char out[65]);

/* --- NumPy .npy (version 1/2/3, C order, little-endian f32 / u8 / f64 / i64 read; f32 written) */
typedef struct dm_npy {
    char dtype;         /* 'f' (float32), 'u' (uint8); other dtypes are converted to 'f' */
    int ndim;
    int64_t shape[8];
    int64_t numel;
    float *f;           /* set when dtype == 'f' */
    uint8_t *u8;        /* set when dtype == 'u' */
} dm_npy;

int dm_npy_read(const char *path, dm_npy *out, dm_err *err);
void dm_npy_free(dm_npy *a);
/* Writes float32 data with the given shape; to a temporary name, then renamed into place. */
int dm_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                     dm_err *err);

/* --- thread pool -------------------------------------------------------------------------------
 * A small persistent pool: a job is split into contiguous shares of [0, n), one per thread (the
 * caller runs one), and dm_pool_run returns when all are done. */
typedef struct dm_pool dm_pool;
typedef void (*dm_pool_fn)(void *ctx, int64_t begin, int64_t end);
int dm_pool_create(int nthreads, dm_pool **out); /* nthreads includes the caller; 0 or -1 */
void dm_pool_run(dm_pool *p, dm_pool_fn fn, void *ctx, int64_t n);
int dm_pool_threads(const dm_pool *p);
void dm_pool_free(dm_pool *p); /* NULL-safe */

#endif

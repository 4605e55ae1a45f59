/* src/sha256.h — SHA-256 of files (weights hashes in output metadata). */
#ifndef DM_SHA256_H
#define DM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "dm_err.h"

typedef struct dm_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} dm_sha256;

void dm_sha256_init(dm_sha256 *s);
void dm_sha256_update(dm_sha256 *s, const void *data, size_t n);
void dm_sha256_hex(dm_sha256 *s, char out[65]); /* finishes the hash */
/* Hash of a whole file as 64 hex digits. */
int dm_sha256_file(const char *path, char out[65], dm_err *err);
/* The same, remembered in a small cache ($DINOMAP_CACHE_DIR, else $XDG_CACHE_HOME/dinomap, else
 * ~/.cache/dinomap) keyed by real path, size, mtime and inode. */
int dm_sha256_file_cached(const char *path, char out[65], dm_err *err);

#endif

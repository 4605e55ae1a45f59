/* src/base/sha256.c — SHA-256 of files and strings (OpenSSL libcrypto), and the hash cache. */
#include "base.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* OpenSSL's libcrypto does the hashing (with the CPU's SHA instructions where it has them: 4×
 * faster than portable C here, 0.44 s instead of 1.77 s for 360 MB). */
int dm_sha256_init(dm_sha256 *s)
{
    s->ctx = EVP_MD_CTX_new();
    if (s->ctx && EVP_DigestInit_ex(s->ctx, EVP_sha256(), NULL) == 1)
        return 0;
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
    return -1;
}

void dm_sha256_update(dm_sha256 *s, const void *data, size_t n)
{
    if (s->ctx)
        EVP_DigestUpdate(s->ctx, data, n);
}

void dm_sha256_hex(dm_sha256 *s, char out[65])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (s->ctx && EVP_DigestFinal_ex(s->ctx, d, &n) == 1 && n == 32)
        for (int i = 0; i < 32; i++)
            snprintf(out + 2 * i, 3, "%02x", d[i]);
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
}

int dm_sha256_file(const char *path, char out[65], dm_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(errno));
    dm_sha256 s;
    size_t cap = 1 << 20, n;
    uint8_t *buf = malloc(cap);
    if (!buf || dm_sha256_init(&s)) {
        free(buf);
        fclose(f);
        return dm_err_oom(err);
    }
    while ((n = fread(buf, 1, cap, f)) > 0)
        dm_sha256_update(&s, buf, n);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    dm_sha256_hex(&s, out);
    if (bad)
        return dm_err_set(err, DM_EIO, "%s: read error", path);
    if (!out[0])
        return dm_err_set(err, DM_EIO, "%s: the hash failed (libcrypto)", path);
    return 0;
}

void dm_sha256_str(const char *str, char out[65])
{
    dm_sha256 s;
    dm_sha256_init(&s);
    dm_sha256_update(&s, str, strlen(str));
    dm_sha256_hex(&s, out);
}

/* The cache: one line per file, "sha256 size mtime_ns inode realpath". A file whose size, mtime
 * and inode match is not read again (hashing a 1.2 GB checkpoint costs ~6 s on every run). */
static void cache_path(char *buf, size_t n)
{
    const char *d = getenv("DINOMAP_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"),
               *h = getenv("HOME");
    if (d && *d)
        snprintf(buf, n, "%s/sha256.txt", d);
    else if (x && *x)
        snprintf(buf, n, "%s/dinomap/sha256.txt", x);
    else if (h && *h)
        snprintf(buf, n, "%s/.cache/dinomap/sha256.txt", h);
    else
        buf[0] = '\0';
}

int dm_sha256_file_cached(const char *path, char out[65], dm_err *err)
{
    char real[4096], cp[4096], line[4400];
    struct stat st;
    if (!realpath(path, real) || stat(real, &st) != 0 || !S_ISREG(st.st_mode))
        return dm_sha256_file(path, out, err);
    long long mt = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    cache_path(cp, sizeof cp);
    FILE *f = cp[0] ? fopen(cp, "r") : NULL;
    while (f && fgets(line, sizeof line, f)) {
        char sha[65], p[4096];
        long long size, m, ino;
        if (sscanf(line, "%64s %lld %lld %lld %4095[^\n]", sha, &size, &m, &ino, p) == 5 &&
            size == (long long)st.st_size && m == mt && ino == (long long)st.st_ino &&
            !strcmp(p, real) && strlen(sha) == 64) {
            memcpy(out, sha, 65);
            fclose(f);
            return 0;
        }
    }
    if (f)
        fclose(f);
    int rc = dm_sha256_file(real, out, err);
    if (rc || !cp[0])
        return rc;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", cp);
    for (char *s = dir + 1; *s; s++) /* mkdir -p of the cache folder; failures only cost speed */
        if (*s == '/') {
            *s = '\0';
            mkdir(dir, 0755);
            *s = '/';
        }
    if ((f = fopen(cp, "a"))) {
        fprintf(f, "%s %lld %lld %lld %s\n", out, (long long)st.st_size, mt,
                (long long)st.st_ino, real);
        fclose(f);
    }
    return 0;
}

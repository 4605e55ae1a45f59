/* src/base/sha256.c — FIPS 180-4 SHA-256, small and dependency-free. */
#include "base.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(dm_sha256 *s, const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5],
             g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

void dm_sha256_init(dm_sha256 *s)
{
    static const uint32_t h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->nbuf = 0;
}

void dm_sha256_update(dm_sha256 *s, const void *data, size_t n)
{
    const uint8_t *p = data;
    s->len += n;
    if (s->nbuf) {
        size_t k = 64 - s->nbuf < n ? 64 - s->nbuf : n;
        memcpy(s->buf + s->nbuf, p, k);
        s->nbuf += k, p += k, n -= k;
        if (s->nbuf == 64) {
            block(s, s->buf);
            s->nbuf = 0;
        }
    }
    for (; n >= 64; p += 64, n -= 64)
        block(s, p);
    memcpy(s->buf, p, n);
    s->nbuf += n;
}

void dm_sha256_hex(dm_sha256 *s, char out[65])
{
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = { 0x80 };
    size_t np = (s->nbuf < 56 ? 56 : 120) - s->nbuf;
    for (int i = 0; i < 8; i++)
        pad[np + i] = (uint8_t)(bits >> (56 - 8 * i));
    dm_sha256_update(s, pad, np + 8);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

int dm_sha256_file(const char *path, char out[65], dm_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(errno));
    dm_sha256 s;
    dm_sha256_init(&s);
    size_t cap = 1 << 20, n;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return dm_err_oom(err);
    }
    while ((n = fread(buf, 1, cap, f)) > 0)
        dm_sha256_update(&s, buf, n);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad)
        return dm_err_set(err, DM_EIO, "%s: read error", path);
    dm_sha256_hex(&s, out);
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

/* tests/test_sha256.c — SHA-256 against the FIPS 180-4 examples, and its file cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/base/base.h"
#include "test.h"

static void hex_of(const char *msg, size_t n, int reps, char out[65])
{
    dm_sha256 s;
    dm_sha256_init(&s);
    for (int i = 0; i < reps; i++)
        dm_sha256_update(&s, msg, n);
    dm_sha256_hex(&s, out);
}

TEST(sha256_known_vectors)
{
    char h[65];
    hex_of("abc", 3, 1, h);
    CHECK(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    hex_of("", 0, 1, h);
    CHECK(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(m, strlen(m), 1, h);
    CHECK(!strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
    hex_of("a", 1, 1000000, h); /* a million 'a', fed byte by byte */
    CHECK(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
}

TEST(sha256_file_cache)
{
    const char *t = dm_test_tmpdir();
    char f[600], cache[600], h1[65], h2[65], h3[65];
    snprintf(f, sizeof f, "%s/w.bin", t);
    snprintf(cache, sizeof cache, "%s/cache", t);
    setenv("DINOMAP_CACHE_DIR", cache, 1);
    FILE *fp = fopen(f, "w");
    CHECK(fp && fputs("abc", fp) >= 0);
    fclose(fp);
    CHECK(dm_sha256_file_cached(f, h1, NULL) == 0);
    CHECK(!strcmp(h1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    CHECK(dm_sha256_file_cached(f, h2, NULL) == 0 && !strcmp(h1, h2)); /* from the cache */
    fp = fopen(f, "w"); /* a changed file (other size) is hashed again */
    CHECK(fp && fputs("abcd", fp) >= 0);
    fclose(fp);
    CHECK(dm_sha256_file_cached(f, h3, NULL) == 0);
    unsetenv("DINOMAP_CACHE_DIR");
    CHECK(!strcmp(h3, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"));
}

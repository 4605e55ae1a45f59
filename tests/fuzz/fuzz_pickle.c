/* tests/fuzz/fuzz_pickle.c — libFuzzer target: the pickle reader of models/pth.c. The input is
 * the data.pkl of a minimal stored zip built around it, as torch.save lays it out, with storages
 * archive/data/0..127 (all one 1 KiB blob), so that persistent ids resolve and the fuzzer spends
 * its time in the pickle machine rather than in the zip container (fuzz_pth.c covers that). */
#include "fuzz.h"
#include "../../models/weights_internal.h"

#define PKL_KEYS 128
#define PKL_BLOB 1024

static void pk_le16(unsigned char *p, unsigned v) { p[0] = v & 0xff, p[1] = (v >> 8) & 0xff; }
static void pk_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (v >> (8 * i)) & 0xff;
}

/* A local header (30 bytes + name) for a stored entry of n bytes; returns its length. */
static size_t pk_local(unsigned char *p, const char *name, uint32_t n)
{
    size_t nl = strlen(name);
    memset(p, 0, 30);
    pk_le32(p, 0x04034b50u);
    pk_le16(p + 4, 20);
    pk_le32(p + 18, n);
    pk_le32(p + 22, n);
    pk_le16(p + 26, (unsigned)nl);
    memcpy(p + 30, name, nl);
    return 30 + nl;
}

static size_t pk_central(unsigned char *p, const char *name, uint32_t n, uint32_t off)
{
    size_t nl = strlen(name);
    memset(p, 0, 46);
    pk_le32(p, 0x02014b50u);
    pk_le16(p + 4, 20);
    pk_le16(p + 6, 20);
    pk_le32(p + 20, n);
    pk_le32(p + 24, n);
    pk_le16(p + 28, (unsigned)nl);
    pk_le32(p + 42, off);
    memcpy(p + 46, name, nl);
    return 46 + nl;
}

int dm_fuzz_pickle(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    if (size > (1u << 24))
        return DM_EINVAL;
    size_t cap = 64 + size + 64 + PKL_BLOB + (PKL_KEYS + 1) * 80 + 22;
    unsigned char *z = malloc(cap);
    if (!z)
        return DM_ENOMEM;
    size_t k = pk_local(z, "archive/data.pkl", (uint32_t)size);
    if (size)
        memcpy(z + k, data, size);
    k += size;
    uint32_t blob_off = (uint32_t)k;
    k += pk_local(z + k, "archive/data/blob", PKL_BLOB);
    for (int i = 0; i < PKL_BLOB; i++)
        z[k + i] = (unsigned char)(i * 37);
    k += PKL_BLOB;
    size_t cd = k;
    k += pk_central(z + k, "archive/data.pkl", (uint32_t)size, 0);
    for (int i = 0; i < PKL_KEYS; i++) {
        char name[32];
        snprintf(name, sizeof name, "archive/data/%d", i);
        k += pk_central(z + k, name, PKL_BLOB, blob_off);
    }
    unsigned char *e = z + k;
    memset(e, 0, 22);
    pk_le32(e, 0x06054b50u);
    pk_le16(e + 8, PKL_KEYS + 1);
    pk_le16(e + 10, PKL_KEYS + 1);
    pk_le32(e + 12, (uint32_t)(k - cd));
    pk_le32(e + 16, (uint32_t)cd);
    k += 22;
    int rc = dm_fuzz_read_tensors(dm_pth_read, z, k, "fuzz.pth");
    free(z);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_pickle(data, size);
    return 0;
}
#endif

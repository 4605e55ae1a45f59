/* tests/test_loaders.c — the weight-file readers (models/pth.c, models/safetensors.c) through
 * dm_weights_open: the golden files, crafted zips/pickles/headers covering what torch.save and the
 * safetensors writers may produce, and damaged or hostile files, which must fail with a message that
 * names the file and never crash (this suite also runs under ASan+UBSan). */
#include "../models/weights.h"
#include "../models/weights_internal.h"
#include "test.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---------------------------------------------------------------------------- */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
} buf;

static void b_put(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q)
            abort(); /* tests only */
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
}
/* a byte-string literal and its length (it may contain NUL bytes) */
#define PK(lit) lit, sizeof(lit) - 1

static void b_u8(buf *b, unsigned v) { unsigned char c = (unsigned char)v; b_put(b, &c, 1); }
static void b_u16(buf *b, unsigned v) { b_u8(b, v & 0xff); b_u8(b, (v >> 8) & 0xff); }
static void b_u32(buf *b, uint32_t v) { b_u16(b, v & 0xffff); b_u16(b, v >> 16); }
static void b_u64(buf *b, uint64_t v) { b_u32(b, (uint32_t)v); b_u32(b, (uint32_t)(v >> 32)); }
static void b_str(buf *b, const char *s) { b_put(b, s, strlen(s)); }
static void b_free(buf *b) { free(b->p); memset(b, 0, sizeof *b); }

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf b = { 0 };
    unsigned char tmp[65536];
    size_t k;
    while ((k = fread(tmp, 1, sizeof tmp, f)) > 0)
        b_put(&b, tmp, k);
    fclose(f);
    *n = b.n;
    return b.p ? b.p : malloc(1);
}

static int spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static const char *tmpfile_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dm_test_tmpdir(), name);
    return out;
}

static const char *golden(char *out, size_t n, const char *rel)
{
    snprintf(out, n, "%s/golden/%s", dm_test_data(), rel);
    return out;
}

/* Opens path expecting failure; returns the code (0 if it unexpectedly opened). */
static int open_fails(const char *path, dm_err *err)
{
    dm_weights *w = NULL;
    dm_err_clear(err);
    int rc = dm_weights_open(path, &w, err);
    dm_weights_close(w);
    return rc;
}

#define CHECK_OPEN_FAILS(path, code)                                                               \
    do {                                                                                           \
        dm_err e_;                                                                                 \
        int rc_ = open_fails(path, &e_);                                                           \
        CHECKF(rc_ == (code), "%s: got %d (%s), want %d", path, rc_, rc_ ? e_.msg : "opened",     \
               code);                                                                              \
        CHECKF(strstr(e_.msg, path) != NULL, "message does not name the file: %s", e_.msg);       \
    } while (0)

static float f32_at(const dm_tensor *t, int64_t i)
{
    float v = NAN;
    dm_err err;
    if (dm_tensor_read_f32(t, i, 1, &v, &err))
        return NAN;
    return v;
}

static int shape_is(const dm_tensor *t, int ndim, const int64_t *shape)
{
    if (!t || t->ndim != ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i])
            return 0;
    return 1;
}

/* ---- a stored-zip writer (the torch.save layout) ----------------------------------------------- */

static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c >> 1 ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

typedef struct zfile {
    const char *name;
    const void *data;
    size_t len;
    unsigned method;  /* 0 stored; 8 claims deflate (the bytes are not really compressed) */
    uint64_t claim;   /* if nonzero, the size the headers claim instead of len */
} zfile;

/* Little-endian fields: widths[i] is the byte width ('1', '2', '4' or '8') of v[i]. */
static void b_fields(buf *b, const char *widths, const uint64_t *v)
{
    for (size_t i = 0; widths[i]; i++)
        for (int k = 0; k < widths[i] - '0'; k++)
            b_u8(b, (unsigned)(v[i] >> (8 * k)) & 0xff);
}

/* Like torch.save: payloads padded to 64-byte file offsets through a local-header-only extra field
 * ("FB"), so the central directory's extra length differs from the local one. zip64 writes the
 * sizes/offsets as 0xFFFFFFFF with a 0x0001 extra field plus the ZIP64 EOCD and locator. */
static void zip_build(buf *out, const zfile *f, int nf, int zip64)
{
    const uint64_t sat = 0xffffffffu, ver = zip64 ? 45 : 20;
    uint64_t *offs = calloc((size_t)nf, sizeof *offs);
    for (int i = 0; i < nf; i++) {
        size_t nl = strlen(f[i].name);
        uint64_t sz = f[i].claim ? f[i].claim : f[i].len;
        offs[i] = out->n;
        size_t pad = (64 - (out->n + 30 + nl + 4) % 64) % 64;
        b_fields(out, "42222244422", (uint64_t[]){ 0x04034b50u, ver, 0, f[i].method, 0, 0x21,
                                                   crc32_of(f[i].data, f[i].len), sz & sat,
                                                   sz & sat, nl, 4 + pad });
        b_str(out, f[i].name);
        b_fields(out, "22", (uint64_t[]){ 0x4246 /* "FB" */, pad });
        for (size_t k = 0; k < pad; k++)
            b_u8(out, 'Z');
        b_put(out, f[i].data, f[i].len);
    }
    uint64_t cd = out->n;
    for (int i = 0; i < nf; i++) {
        uint64_t sz = f[i].claim ? f[i].claim : f[i].len;
        b_fields(out, "42222224442222244",
                 (uint64_t[]){ 0x02014b50u, ver, ver, 0, f[i].method, 0, 0x21,
                               crc32_of(f[i].data, f[i].len), zip64 ? sat : sz,
                               zip64 ? sat : sz, strlen(f[i].name), zip64 ? 28 : 0, 0, 0, 0, 0,
                               zip64 ? sat : offs[i] });
        b_str(out, f[i].name);
        if (zip64)
            b_fields(out, "22888", (uint64_t[]){ 1, 24, sz, sz, offs[i] });
    }
    uint64_t cd_size = out->n - cd, n = (uint64_t)nf;
    if (zip64) {
        uint64_t rec = out->n;
        b_fields(out, "48224488884484", (uint64_t[]){ 0x06064b50u, 44, 45, 45, 0, 0, n, n,
                                                      cd_size, cd, 0x07064b50u, 0, rec, 1 });
    }
    b_fields(out, "42222442", (uint64_t[]){ 0x06054b50u, 0, 0, zip64 ? 0xffff : n,
                                            zip64 ? 0xffff : n, zip64 ? sat : cd_size,
                                            zip64 ? sat : cd, 0 });
    free(offs);
}

/* ---- a pickle writer for state dicts ----------------------------------------------------------- */

static void pk_str(buf *b, const char *s)
{
    b_u8(b, 'X');
    b_u32(b, (uint32_t)strlen(s));
    b_str(b, s);
}

static void pk_int(buf *b, long long v)
{
    if (v >= 0 && v < 256) {
        b_u8(b, 'K');
        b_u8(b, (unsigned)v);
    } else if (v >= 0 && v < 65536) {
        b_u8(b, 'M');
        b_u16(b, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        b_u8(b, 'J');
        b_u32(b, (uint32_t)(int32_t)v);
    } else { /* LONG1 with 8 bytes */
        b_u8(b, 0x8a);
        b_u8(b, 8);
        b_u64(b, (uint64_t)v);
    }
}

static void pk_global(buf *b, const char *mod, const char *name)
{
    b_u8(b, 'c');
    b_str(b, mod);
    b_u8(b, '\n');
    b_str(b, name);
    b_u8(b, '\n');
}

typedef struct ttensor {
    const char *name, *cls, *key;
    long long numel, off;
    int ndim;
    long long shape[4], stride[4];
} ttensor;

/* One _rebuild_tensor_v2(...) value, as torch writes it. */
static void pk_tensor(buf *b, const ttensor *t)
{
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    b_str(b, "((");
    pk_str(b, "storage");
    pk_global(b, "torch", t->cls);
    pk_str(b, t->key);
    pk_str(b, "cpu");
    pk_int(b, t->numel);
    b_str(b, "tQ"); /* TUPLE, BINPERSID */
    pk_int(b, t->off);
    for (int k = 0; k < 2; k++) { /* size, then stride */
        b_u8(b, '(');
        for (int i = 0; i < t->ndim; i++)
            pk_int(b, k ? t->stride[i] : t->shape[i]);
        b_u8(b, 't');
    }
    b_u8(b, 0x89); /* requires_grad False */
    pk_global(b, "collections", "OrderedDict");
    b_str(b, ")RtR"); /* hooks = OrderedDict(), then the rebuild call */
}

static void pk_state_dict(buf *b, const ttensor *t, int n)
{
    b_str(b, "\x80\x02}(");
    for (int i = 0; i < n; i++) {
        pk_str(b, t[i].name);
        pk_tensor(b, &t[i]);
    }
    b_str(b, "u.");
}

typedef struct blob {
    const char *key;
    const void *data;
    size_t len;
} blob;

/* Writes a torch.save-like zip: <prefix>/data.pkl, [<prefix>/byteorder], <prefix>/data/<key>...,
 * <prefix>/version. pkl_method/blob_claim let tests damage it. */
static int write_pth_ex(const char *path, const char *prefix, const buf *pkl, const blob *bl,
                        int nb, int zip64, const char *byteorder, unsigned pkl_method,
                        uint64_t blob_claim)
{
    zfile f[40];
    char names[40][128];
    int nf = 0;
    snprintf(names[nf], sizeof names[nf], "%s/data.pkl", prefix);
    f[nf] = (zfile){ names[nf], pkl->p, pkl->n, pkl_method, 0 };
    nf++;
    if (byteorder) {
        snprintf(names[nf], sizeof names[nf], "%s/byteorder", prefix);
        f[nf] = (zfile){ names[nf], byteorder, strlen(byteorder), 0, 0 };
        nf++;
    }
    for (int i = 0; i < nb && nf < 38; i++) {
        snprintf(names[nf], sizeof names[nf], "%s/data/%s", prefix, bl[i].key);
        f[nf] = (zfile){ names[nf], bl[i].data, bl[i].len, 0, i == 0 ? blob_claim : 0 };
        nf++;
    }
    snprintf(names[nf], sizeof names[nf], "%s/version", prefix);
    f[nf] = (zfile){ names[nf], "3\n", 2, 0, 0 };
    nf++;
    buf z = { 0 };
    zip_build(&z, f, nf, zip64);
    int rc = spit(path, z.p, z.n);
    b_free(&z);
    return rc;
}

static int write_pth(const char *path, const buf *pkl, const blob *bl, int nb)
{
    return write_pth_ex(path, "archive", pkl, bl, nb, 0, "little", 0, 0);
}

/* A 12-element f32 storage 0..11 and a one-tensor state dict over it. */
static const float twelve[12] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 };
static const blob twelve_blob = { "0", twelve, sizeof twelve };

static int write_one_tensor(const char *path, long long off, int ndim, const long long *shape,
                            const long long *stride)
{
    ttensor t = { "w", "FloatStorage", "0", 12, off, ndim, { 0 }, { 0 } };
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i], t.stride[i] = stride[i];
    buf p = { 0 };
    pk_state_dict(&p, &t, 1);
    int rc = write_pth(path, &p, &twelve_blob, 1);
    b_free(&p);
    return rc;
}

/* ---- golden files ------------------------------------------------------------------------------ */

static const float periods_ref[16] = { 1.0f,   1.3359375f, 1.78125f, 2.375f,  3.15625f, 4.21875f,
                                       5.625f, 7.5f,       10.0f,    13.3125f, 17.75f,  23.75f,
                                       31.625f, 42.25f,    56.25f,   75.0f };

TEST(loaders_pth_golden_vitl)
{
    char path[512];
    golden(path, sizeof path, "vitl_sat_tiny/backbone.pth");
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(dm_weights_format(w), "pth"));
    CHECK(dm_weights_count(w) == 70); /* 6 top-level + 15 per block x 4 + local_cls_norm x 2 */
    size_t nf32 = 0, nbf16 = 0;
    for (size_t i = 0; i < dm_weights_count(w); i++) {
        const dm_tensor *t = dm_weights_at(w, i);
        nf32 += t->dtype == DM_DT_F32;
        nbf16 += t->dtype == DM_DT_BF16;
        CHECK(dm_tensor_is_contiguous(t) && !t->swap);
    }
    CHECK(nf32 == 65 && nbf16 == 5); /* periods + 4 bias_masks are bf16 */

    const dm_tensor *q = dm_weights_find(w, "blocks.0.attn.qkv.weight");
    CHECK(shape_is(q, 2, (int64_t[]){ 384, 128 }) && q->dtype == DM_DT_F32);
    CHECK(q->stride[0] == 128 && q->stride[1] == 1);
    /* values read independently from the zip with Python */
    CHECK(f32_at(q, 0) == -0.009366946294903755f && f32_at(q, 2) == 0.09917575865983963f);
    CHECK(f32_at(q, 384 * 128 - 1) == -0.05038372799754143f);
    float *all = malloc(384 * 128 * sizeof *all);
    CHECK(all);
    int rc = dm_tensor_read_f32(q, 0, 384 * 128, all, &err);
    int same = rc == 0 && memcmp(all, q->data, 384 * 128 * sizeof *all) == 0;
    free(all);
    CHECKF(same, "read_f32 differs from the raw f32 data");

    const dm_tensor *p = dm_weights_find(w, "rope_embed.periods");
    CHECK(shape_is(p, 1, (int64_t[]){ 16 }) && p->dtype == DM_DT_BF16);
    float pv[16];
    CHECK(dm_tensor_read_f32(p, 0, 16, pv, &err) == 0);
    CHECK(memcmp(pv, periods_ref, sizeof pv) == 0);

    const dm_tensor *m = dm_weights_find(w, "blocks.3.attn.qkv.bias_mask");
    CHECK(shape_is(m, 1, (int64_t[]){ 384 }) && m->dtype == DM_DT_BF16);
    for (int i = 0; i < 384; i++) /* q and v thirds 1, k third 0 */
        CHECKF(f32_at(m, i) == (i >= 128 && i < 256 ? 0.0f : 1.0f), "bias_mask[%d]", i);

    CHECK(shape_is(dm_weights_find(w, "cls_token"), 3, (int64_t[]){ 1, 1, 128 }));
    CHECK(shape_is(dm_weights_find(w, "storage_tokens"), 3, (int64_t[]){ 1, 4, 128 }));
    CHECK(shape_is(dm_weights_find(w, "mask_token"), 2, (int64_t[]){ 1, 128 }));
    CHECK(shape_is(dm_weights_find(w, "patch_embed.proj.weight"), 4,
                   (int64_t[]){ 128, 3, 16, 16 }));
    CHECK(shape_is(dm_weights_find(w, "blocks.3.mlp.fc1.weight"), 2, (int64_t[]){ 512, 128 }));
    CHECK(dm_weights_find(w, "local_cls_norm.bias") && !dm_weights_find(w, "blocks.4.ls1.gamma"));
    CHECK(dm_weights_bytes(w) == 3598747);
    dm_weights_close(w);
}

TEST(loaders_pth_golden_vit7b_bf16)
{
    char path[512];
    golden(path, sizeof path, "vit7b_sat_tiny_bf16/backbone.pth");
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(dm_weights_count(w) == 55);
    for (size_t i = 0; i < dm_weights_count(w); i++)
        CHECKF(dm_weights_at(w, i)->dtype == DM_DT_BF16, "%s", dm_weights_at(w, i)->name);
    CHECK(!dm_weights_find(w, "blocks.0.attn.qkv.bias_mask"));
    CHECK(!dm_weights_find(w, "blocks.0.attn.qkv.bias"));
    CHECK(shape_is(dm_weights_find(w, "blocks.0.mlp.w1.weight"), 2, (int64_t[]){ 256, 128 }));
    CHECK(shape_is(dm_weights_find(w, "blocks.0.mlp.w3.weight"), 2, (int64_t[]){ 128, 256 }));
    /* size-1 dims keep torch's non-canonical strides: cls_token [1,1,128] has (128,128,1) */
    const dm_tensor *cls = dm_weights_find(w, "cls_token");
    CHECK(cls && cls->stride[0] == 128 && cls->stride[1] == 128 && dm_tensor_is_contiguous(cls));
    const dm_tensor *p = dm_weights_find(w, "rope_embed.periods");
    float pv[16];
    CHECK(p && p->ndim == 1 && p->shape[0] == 16);
    CHECK(dm_tensor_read_f32(p, 0, 16, pv, &err) == 0 && !memcmp(pv, periods_ref, sizeof pv));
    dm_weights_close(w);
}

TEST(loaders_pth_golden_head_ordereddict)
{
    /* head.pth pickles an OrderedDict with SETITEM and a trailing _metadata BUILD */
    char path[512];
    golden(path, sizeof path, "chmv2_tiny/head.pth");
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(dm_weights_count(w) == 68);
    const dm_tensor *t = dm_weights_find(w, "reassemble_blocks.projects.0.conv.weight");
    CHECK(t && t->dtype == DM_DT_F32 && t->ndim == 4);
    dm_weights_close(w);
}

TEST(loaders_safetensors_golden)
{
    char path[512], dir[512];
    golden(path, sizeof path, "vitl_sat_tiny_hf/model.safetensors");
    golden(dir, sizeof dir, "vitl_sat_tiny_hf");
    const char *which[] = { path, dir };
    for (int k = 0; k < 2; k++) {
        dm_weights *w = NULL;
        dm_err err = { 0 };
        CHECKF(dm_weights_open(which[k], &w, &err) == 0, "%s", err.msg);
        CHECK(!strcmp(dm_weights_format(w), "safetensors"));
        CHECK(dm_weights_count(w) == 41); /* 7 top-level + 17 per layer x 2 */
        const dm_tensor *q = dm_weights_find(w, "layer.0.attention.q_proj.weight");
        CHECK(shape_is(q, 2, (int64_t[]){ 128, 128 }) && q->dtype == DM_DT_F32);
        CHECK(dm_tensor_is_contiguous(q) && q->stride[0] == 128 && q->stride[1] == 1);
        CHECK(f32_at(q, 0) == -0.10016034543514252f && f32_at(q, 1) == 0.004800241440534592f);
        CHECK(shape_is(dm_weights_find(w, "embeddings.patch_embeddings.weight"), 4,
                       (int64_t[]){ 128, 3, 16, 16 }));
        const dm_tensor *pw = dm_weights_find(w, "embeddings.patch_embeddings.weight");
        CHECK(pw->stride[0] == 768 && pw->stride[1] == 256 && pw->stride[2] == 16);
        CHECK(!dm_weights_find(w, "__metadata__"));
        CHECK(dm_weights_config(w) != NULL);
        dm_weights_close(w);
    }
}

/* Splits the golden safetensors file in two shards plus an index; every tensor must come back with
 * identical bytes. */
TEST(loaders_safetensors_sharded)
{
    char path[512];
    golden(path, sizeof path, "vitl_sat_tiny_hf/model.safetensors");
    size_t n;
    unsigned char *src = slurp(path, &n);
    CHECK(src && n > 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)src[i] << (8 * i);
    cJSON *h = cJSON_ParseWithLength((const char *)src + 8, (size_t)hl);
    CHECK(h);
    const char *dir = dm_test_tmpdir();
    cJSON *index = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(index, "weight_map");
    cJSON_AddObjectToObject(index, "metadata");
    const char *shard_name[2] = { "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors" };
    int total = cJSON_GetArraySize(h) - 1, seen = 0, ok = 1;
    for (int s = 0; s < 2; s++) {
        cJSON *sh = cJSON_CreateObject();
        buf data = { 0 };
        int idx = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, h)
        {
            if (!strcmp(e->string, "__metadata__"))
                continue;
            if ((idx++ < total / 2) != (s == 0))
                continue;
            const cJSON *off = cJSON_GetObjectItem(e, "data_offsets");
            size_t b0 = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble,
                   b1 = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
            cJSON *ne = cJSON_Duplicate(e, 1);
            cJSON *no = cJSON_CreateArray();
            cJSON_AddItemToArray(no, cJSON_CreateNumber((double)data.n));
            cJSON_AddItemToArray(no, cJSON_CreateNumber((double)(data.n + b1 - b0)));
            cJSON_ReplaceItemInObject(ne, "data_offsets", no);
            cJSON_AddItemToObject(sh, e->string, ne);
            b_put(&data, src + 8 + hl + b0, b1 - b0);
            cJSON_AddStringToObject(wm, e->string, shard_name[s]);
            seen++;
        }
        char *text = cJSON_PrintUnformatted(sh);
        buf f = { 0 };
        size_t tl = strlen(text), padded = (tl + 7) / 8 * 8;
        b_u64(&f, padded);
        b_put(&f, text, tl);
        for (size_t k = tl; k < padded; k++)
            b_u8(&f, ' ');
        b_put(&f, data.p, data.n);
        char sp[600];
        snprintf(sp, sizeof sp, "%s/%s", dir, shard_name[s]);
        ok &= spit(sp, f.p, f.n) == 0;
        free(text);
        b_free(&f);
        b_free(&data);
        cJSON_Delete(sh);
    }
    char *itext = cJSON_Print(index);
    char ip[600];
    snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", dir);
    ok &= spit(ip, itext, strlen(itext)) == 0;
    free(itext);
    cJSON_Delete(index);
    cJSON_Delete(h);
    free(src);
    CHECK(ok && seen == 41);

    dm_weights *one = NULL, *sharded = NULL, *bydir = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &one, &err) == 0, "%s", err.msg);
    int rc1 = dm_weights_open(ip, &sharded, &err),
        rc2 = rc1 ? rc1 : dm_weights_open(dir, &bydir, &err);
    int same = !rc1 && !rc2 && dm_weights_count(sharded) == 41 && dm_weights_count(bydir) == 41;
    for (size_t i = 0; same && i < dm_weights_count(one); i++) {
        const dm_tensor *a = dm_weights_at(one, i), *b = dm_weights_find(sharded, a->name),
                        *c = dm_weights_find(bydir, a->name);
        size_t nb = (size_t)dm_tensor_numel(a) * dm_dtype_size(a->dtype);
        same = b && c && b->dtype == a->dtype && shape_is(b, a->ndim, a->shape) &&
               !memcmp(a->data, b->data, nb) && !memcmp(a->data, c->data, nb);
    }
    if (!same && (rc1 || rc2))
        dm_test_fail(__FILE__, __LINE__, "sharded open failed: %s", err.msg);
    dm_weights_close(one);
    dm_weights_close(sharded);
    dm_weights_close(bydir);
    CHECK(same);
}

/* ---- crafted .pth files: what torch.save may write --------------------------------------------- */

TEST(loaders_pth_zip64_prefix_views_dtypes)
{
    /* ZIP64 records, an unusual folder prefix, tensors sharing one storage at different offsets,
     * a transposed (non-contiguous) view, and integer/byte storages. */
    static const int64_t longs[3] = { -5, 7, 1LL << 40 };
    static const unsigned char bytes[4] = { 0, 1, 200, 255 };
    ttensor t[] = {
        { "a.mat", "FloatStorage", "0", 12, 0, 2, { 3, 4 }, { 4, 1 } },
        { "a.tail", "FloatStorage", "0", 12, 8, 1, { 4 }, { 1 } },
        { "a.T", "FloatStorage", "0", 12, 0, 2, { 4, 3 }, { 1, 4 } },
        { "ids", "LongStorage", "1", 3, 0, 1, { 3 }, { 1 } },
        { "mask", "ByteStorage", "2", 4, 0, 1, { 4 }, { 1 } },
        { "empty", "FloatStorage", "0", 12, 12, 1, { 0 }, { 1 } },
        { "scalar", "FloatStorage", "0", 12, 5, 0, { 0 }, { 0 } },
    };
    buf p = { 0 };
    pk_state_dict(&p, t, 7);
    blob bl[] = { twelve_blob, { "1", longs, sizeof longs }, { "2", bytes, sizeof bytes } };
    char path[512];
    tmpfile_path(path, sizeof path, "x.pth");
    CHECK(write_pth_ex(path, "my_model-v2", &p, bl, 3, 1, NULL, 0, 0) == 0);
    b_free(&p);
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(dm_weights_count(w) == 7);
    const dm_tensor *tail = dm_weights_find(w, "a.tail"), *tr = dm_weights_find(w, "a.T");
    CHECK(f32_at(tail, 0) == 8 && f32_at(tail, 3) == 11);
    CHECK(!dm_tensor_is_contiguous(tr) && f32_at(tr, 1) == 4 && f32_at(tr, 3) == 1);
    CHECK(f32_at(dm_weights_find(w, "a.mat"), 5) == 5);
    const dm_tensor *ids = dm_weights_find(w, "ids");
    CHECK(ids->dtype == DM_DT_I64 && f32_at(ids, 0) == -5 && f32_at(ids, 2) == 1099511627776.0f);
    const dm_tensor *m = dm_weights_find(w, "mask");
    CHECK(m->dtype == DM_DT_U8 && f32_at(m, 2) == 200 && f32_at(m, 3) == 255);
    CHECK(dm_tensor_numel(dm_weights_find(w, "empty")) == 0);
    const dm_tensor *sc = dm_weights_find(w, "scalar");
    CHECK(sc->ndim == 0 && dm_tensor_numel(sc) == 1 && f32_at(sc, 0) == 5);
    dm_weights_close(w);
}

TEST(loaders_pth_big_endian)
{
    /* byteorder "big": elements are stored big-endian and must be swapped when read */
    unsigned char be[4 * 3], bbf[2 * 2];
    const float v[3] = { 1.5f, -2.25f, 1e-3f };
    for (int i = 0; i < 3; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++)
            be[4 * i + k] = (unsigned char)(u >> (24 - 8 * k));
    }
    bbf[0] = 0x3f, bbf[1] = 0xc0, bbf[2] = 0xc0, bbf[3] = 0x10; /* bf16 1.5, -2.25 */
    ttensor t[] = { { "f", "FloatStorage", "0", 3, 0, 1, { 3 }, { 1 } },
                    { "h", "BFloat16Storage", "1", 2, 0, 1, { 2 }, { 1 } } };
    buf p = { 0 };
    pk_state_dict(&p, t, 2);
    blob bl[] = { { "0", be, sizeof be }, { "1", bbf, sizeof bbf } };
    char path[512];
    tmpfile_path(path, sizeof path, "be.pth");
    CHECK(write_pth_ex(path, "archive", &p, bl, 2, 0, "big", 0, 0) == 0);
    b_free(&p);
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    const dm_tensor *f = dm_weights_find(w, "f"), *h = dm_weights_find(w, "h");
    CHECK(f->swap == 1 && h->swap == 1);
    float out[3];
    CHECK(dm_tensor_read_f32(f, 0, 3, out, &err) == 0 && !memcmp(out, v, sizeof out));
    CHECK(f32_at(h, 0) == 1.5f && f32_at(h, 1) == -2.25f);
    dm_weights_close(w);
}

/* Other pickle encodings of the same state dict: protocol 4 framing, STACK_GLOBAL,
 * SHORT_BINUNICODE, MEMOIZE/BINGET, LONG1, _rebuild_parameter, OrderedDict via NEWOBJ + SETITEM
 * and a trailing _metadata BUILD, all wrapped as {"model": ..., "epoch": 3}. */
TEST(loaders_pth_pickle_variants)
{
    buf b = { 0 };
    b_put(&b, PK("\x80\x04\x95\0\0\0\0\0\0\0\0")); /* PROTO 4, FRAME */
    b_put(&b, PK("}\x94\x8c\x05model"));                /* memo 0: outer dict */
    b_put(&b, PK("\x8c\x0b" "collections\x8c\x0b" "OrderedDict\x93\x94")); /* memo 1 */
    b_put(&b, PK(")\x81\x94"));                         /* NEWOBJ; memo 2: inner dict */
    pk_str(&b, "p");
    pk_global(&b, "torch._utils", "_rebuild_parameter");
    b_u8(&b, '(');
    ttensor t = { "p", "FloatStorage", "0", 12, 2, 1, { 3 }, { 2 } };
    pk_tensor(&b, &t);
    b_put(&b, PK("\x88h\x01)RtRs")); /* True, OrderedDict() hooks; SETITEM */
    pk_str(&b, "q");
    t = (ttensor){ "q", "FloatStorage", "0", 12, 0, 1, { 2 }, { 1 } };
    pk_tensor(&b, &t);
    b_u8(&b, 's');
    pk_str(&b, "r");
    b_put(&b, PK("Ns")); /* non-tensor values are ignored */
    /* state = {"_metadata": OrderedDict([("", {"version": 1})])} then BUILD */
    b_u8(&b, '}'), pk_str(&b, "_metadata");
    b_put(&b, PK("h\x01)R")), pk_str(&b, ""), b_u8(&b, '}'), pk_str(&b, "version");
    b_put(&b, PK("\x8a\x01\x01sssb"));
    b_u8(&b, 's'); /* outer["model"] = inner */
    pk_str(&b, "epoch"), b_put(&b, PK("\x8a\x02\xfd\xffs")); /* LONG1 -3 */
    pk_str(&b, "lr"), b_put(&b, PK("G\x3f\xf8\0\0\0\0\0\0s")); /* BINFLOAT 1.5 */
    pk_str(&b, "hist"), b_put(&b, PK("](K\x01K\x02" "eNas."));
    char path[512];
    tmpfile_path(path, sizeof path, "v.pth");
    CHECK(write_pth(path, &b, &twelve_blob, 1) == 0);
    b_free(&b);
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(dm_weights_count(w) == 2);
    const dm_tensor *p = dm_weights_find(w, "p");
    CHECK(p && f32_at(p, 0) == 2 && f32_at(p, 2) == 6 && f32_at(dm_weights_find(w, "q"), 1) == 1);
    dm_weights_close(w);
}

/* ---- damaged and hostile files ------------------------------------------------------------------ */

TEST(loaders_pth_truncated_golden)
{
    char src[512];
    golden(src, sizeof src, "vitl_sat_tiny/backbone.pth");
    size_t n;
    unsigned char *d = slurp(src, &n);
    CHECK(d && n == 3598747);
    /* data.pkl is at ~[80, 6754), the first blob at 6848, the central directory in the last ~5 KB */
    const size_t cuts[] = { 4, 100, 3000, 6900, 1000000, n - 3000, n - 100, n - 22, n - 1 };
    char path[512];
    tmpfile_path(path, sizeof path, "cut.pth");
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        CHECK(spit(path, d, cuts[i]) == 0);
        CHECK_OPEN_FAILS(path, DM_EFORMAT);
    }
    free(d);
}

/* A copy of the first `cut` bytes of d that ends exactly where the heap block `tail` (n bytes)
 * ends, so under ASan any read past the cut lands in the redzone. */
static const unsigned char *flush_end(unsigned char *tail, const unsigned char *d, size_t n,
                                      size_t cut)
{
    memcpy(tail + n - cut, d, cut);
    return tail + n - cut;
}

TEST(loaders_pth_truncation_sweep)
{
    char src[512];
    golden(src, sizeof src, "vitl_sat_tiny/backbone.pth");
    size_t n;
    unsigned char *d = slurp(src, &n), *tail = malloc(n);
    int bad = !d || !tail;
    for (size_t cut = 0; cut < n && !bad; cut += 997) {
        dm_tensor_list l = { 0 };
        dm_err err = { 0 };
        int rc = dm_pth_read(flush_end(tail, d, n, cut), cut, "cut.pth", &l, &err);
        if (rc >= 0 || !strstr(err.msg, "cut.pth"))
            bad = 1, dm_test_fail(__FILE__, __LINE__, "cut at %zu: rc %d (%s)", cut, rc, err.msg);
        dm_tensor_list_free(&l);
    }
    free(tail);
    free(d);
}

/* Deterministic byte mutations of data.pkl and the zip directories of the golden file: each must
 * either load with every tensor inside the buffer or fail cleanly. */
TEST(loaders_pth_mutations)
{
    char src[512];
    golden(src, sizeof src, "vitl_sat_tiny/backbone.pth");
    size_t n;
    unsigned char *d = slurp(src, &n);
    CHECK(d && n > 8000);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int failed = 0, loaded = 0;
    for (int it = 0; it < 3000; it++) {
        size_t pos[3];
        unsigned char old[3];
        int k = 1 + it % 3;
        for (int j = 0; j < k; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t r = s >> 33;
            pos[j] = r % 2 ? 80 + r / 2 % 6674 : n - 1 - r / 2 % 5000;
            old[j] = d[pos[j]];
            d[pos[j]] = (unsigned char)(it & 1 ? r >> 8 : d[pos[j]] ^ (1u << (r >> 20) % 8));
        }
        dm_tensor_list l = { 0 };
        dm_err err = { 0 };
        int rc = dm_pth_read(d, n, "m.pth", &l, &err);
        if (rc == 0) {
            loaded++;
            for (size_t i = 0; i < l.n; i++) {
                const dm_tensor *t = &l.v[i];
                uint64_t last = 0;
                for (int q = 0; q < t->ndim; q++)
                    last += (uint64_t)(t->shape[q] ? t->shape[q] - 1 : 0) * (uint64_t)t->stride[q];
                if (dm_tensor_numel(t) &&
                    (t->data < d || t->data + (last + 1) * dm_dtype_size(t->dtype) > d + n))
                    failed = 1;
            }
        } else if (rc > 0 || !strstr(err.msg, "m.pth")) {
            failed = 1;
        }
        dm_tensor_list_free(&l);
        for (int j = k - 1; j >= 0; j--)
            d[pos[j]] = old[j];
        CHECKF(!failed, "mutation %d: rc %d %s", it, rc, err.msg);
    }
    free(d);
    CHECK(loaded > 0); /* some mutations (e.g. in names) are harmless */
}

TEST(loaders_not_weights)
{
    char path[512];
    tmpfile_path(path, sizeof path, "notes.txt");
    const char *text = "these are not the weights you are looking for\n";
    CHECK(spit(path, text, strlen(text)) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    tmpfile_path(path, sizeof path, "empty.pth");
    CHECK(spit(path, "", 0) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    tmpfile_path(path, sizeof path, "pk.pth");
    CHECK(spit(path, "PK\3\4 and nothing more of a zip", 31) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    tmpfile_path(path, sizeof path, "missing.pth");
    CHECK_OPEN_FAILS(path, DM_EIO);
    /* a valid zip without data.pkl */
    zfile f = { "archive/readme.txt", "hi", 2, 0, 0 };
    buf z = { 0 };
    zip_build(&z, &f, 1, 0);
    tmpfile_path(path, sizeof path, "nopkl.pth");
    CHECK(spit(path, z.p, z.n) == 0);
    b_free(&z);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
}

TEST(loaders_pth_compressed_entry)
{
    ttensor t = { "w", "FloatStorage", "0", 12, 0, 1, { 12 }, { 1 } };
    buf p = { 0 };
    pk_state_dict(&p, &t, 1);
    char path[512];
    tmpfile_path(path, sizeof path, "deflated.pth");
    CHECK(write_pth_ex(path, "archive", &p, &twelve_blob, 1, 0, NULL, 8, 0) == 0);
    b_free(&p);
    CHECK_OPEN_FAILS(path, DM_EUNSUPPORTED);
    dm_err e;
    open_fails(path, &e);
    CHECKF(strstr(e.msg, "compressed"), "%s", e.msg);
}

TEST(loaders_pth_blob_damage)
{
    ttensor t = { "w", "FloatStorage", "0", 12, 0, 1, { 12 }, { 1 } };
    buf p = { 0 };
    pk_state_dict(&p, &t, 1);
    char path[512];
    /* the directory claims a blob far longer than the file */
    tmpfile_path(path, sizeof path, "claim.pth");
    CHECK(write_pth_ex(path, "archive", &p, &twelve_blob, 1, 0, NULL, 0, 1u << 30) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    /* the blob is shorter than the tensor (a truncated storage in an intact zip) */
    blob half = { "0", twelve, sizeof twelve / 2 };
    tmpfile_path(path, sizeof path, "half.pth");
    CHECK(write_pth(path, &p, &half, 1) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    /* the storage key names no entry */
    blob other = { "7", twelve, sizeof twelve };
    tmpfile_path(path, sizeof path, "nokey.pth");
    CHECK(write_pth(path, &p, &other, 1) == 0);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    /* data.pkl itself cut short inside an intact zip, at every length */
    for (size_t cut = 0; cut < p.n; cut += 7) {
        buf c = { 0 };
        b_put(&c, p.p, cut);
        tmpfile_path(path, sizeof path, "pklcut.pth");
        int rc = write_pth(path, &c, &twelve_blob, 1);
        b_free(&c);
        CHECK(rc == 0);
        CHECK_OPEN_FAILS(path, DM_EFORMAT);
    }
    b_free(&p);
}

TEST(loaders_pth_bad_opcode)
{
    buf p = { 0 };
    ttensor t = { "w", "FloatStorage", "0", 12, 0, 1, { 12 }, { 1 } };
    pk_state_dict(&p, &t, 1);
    p.p[p.n - 2] = 0xfe; /* replaces SETITEMS */
    char path[512];
    tmpfile_path(path, sizeof path, "op.pth");
    CHECK(write_pth(path, &p, &twelve_blob, 1) == 0);
    char where[32];
    snprintf(where, sizeof where, "offset %zu", p.n - 2);
    b_free(&p);
    CHECK_OPEN_FAILS(path, DM_EFORMAT);
    dm_err e;
    open_fails(path, &e);
    CHECKF(strstr(e.msg, "0xfe") && strstr(e.msg, where), "%s", e.msg);
}

TEST(loaders_pth_forbidden_globals)
{
    struct { const char *pkl; size_t len; const char *needle; } cases[] = {
        { PK("\x80\x02" "cos\nsystem\n(X\x02\0\0\0lstR."), "'os system'" },
        { PK("cbuiltins\neval\n."), "'builtins eval'" },
        { PK("\x80\x04\x8c\x08" "builtins\x8c\x04" "exec\x93."), "'builtins exec'" },
        { PK("ctorch\nload\n."), "'torch load'" },
        { PK("ctorch._utils\n_rebuild_device_tensor_from_numpy\n."), "_rebuild_device" },
        { PK("ccollections\ndefaultdict\n."), "'collections defaultdict'" },
    };
    char path[512];
    tmpfile_path(path, sizeof path, "evil.pth");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf p = { 0 };
        b_put(&p, cases[i].pkl, cases[i].len);
        CHECK(write_pth(path, &p, &twelve_blob, 1) == 0);
        b_free(&p);
        CHECK_OPEN_FAILS(path, DM_EUNSUPPORTED);
        dm_err e;
        open_fails(path, &e);
        CHECKF(strstr(e.msg, "refusing global") && strstr(e.msg, cases[i].needle), "%s", e.msg);
    }
}

TEST(loaders_pth_out_of_bounds_views)
{
    /* each view reaches past the 12-element storage (or overflows on the way) */
    struct { long long off; int nd; long long shape[2], stride[2]; } cases[] = {
        { 0, 1, { 13 }, { 1 } },                     /* one too many */
        { 12, 1, { 1 }, { 1 } },                     /* offset at the end */
        { 1LL << 40, 1, { 1 }, { 1 } },              /* offset far past */
        { (1LL << 62) + 1, 1, { 1 }, { 1 } },        /* offset*itemsize overflows */
        { 0, 2, { 3, 4 }, { 5, 1 } },                /* stride past the end */
        { 0, 1, { 2 }, { 12 } },
        { 0, 2, { (1 << 24) + 1, 1 }, { 1LL << 40, 1 } }, /* (shape-1)*stride wraps to 0 */
        { 0, 2, { 1LL << 40, 1LL << 40 }, { 0, 0 } },  /* numel overflows int64 */
    };
    char path[512];
    tmpfile_path(path, sizeof path, "oob.pth");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_one_tensor(path, cases[i].off, cases[i].nd, cases[i].shape,
                               cases[i].stride) == 0);
        dm_err e;
        int rc = open_fails(path, &e);
        CHECKF(rc == DM_EFORMAT && strstr(e.msg, path), "case %zu: rc %d %s", i, rc, e.msg);
    }
    /* and the in-bounds edge cases load */
    CHECK(write_one_tensor(path, 11, 1, (long long[]){ 1 }, (long long[]){ 1 }) == 0);
    CHECK(open_fails(path, &(dm_err){ 0 }) == 0);
    CHECK(write_one_tensor(path, 0, 2, (long long[]){ 3, 4 }, (long long[]){ 1, 3 }) == 0);
    CHECK(open_fails(path, &(dm_err){ 0 }) == 0);
}

/* Small malformed pickles: each must fail with a clean error, never crash or hang. */
TEST(loaders_pth_malformed_pickles)
{
    static const struct { const char *pkl; size_t len; int code; } cases[] = {
        { PK(""), DM_EFORMAT },                              /* empty data.pkl */
        { PK("\x80\x02}"), DM_EFORMAT },                     /* no STOP */
        { PK("R."), DM_EFORMAT },                            /* stack underflow */
        { PK("(R."), DM_EFORMAT },                           /* underflow through a MARK */
        { PK("h\x05."), DM_EFORMAT },                        /* memo never set */
        { PK("}r\xff\xff\xff\xff."), DM_EFORMAT },           /* absurd memo index */
        { PK("X\xff\xff\xff\x7f" "ab."), DM_EFORMAT },       /* string longer than the file */
        { PK("\x8d\xff\xff\xff\xff\xff\xff\xff\xff."), DM_EFORMAT },
        { PK("T\xff\xff\xff\xff."), DM_EFORMAT },            /* negative BINSTRING */
        { PK("\x8a\x09" "123456789."), DM_EFORMAT },        /* LONG1 wider than 64 bits */
        { PK("\x8a\x04" "12"), DM_EFORMAT },                 /* LONG1 truncated */
        { PK("]K\x01" "a."), DM_EFORMAT },                   /* top-level list */
        { PK("}."), DM_EFORMAT },                            /* no tensors */
        { PK("}(X\x01\0\0\0" "aK\x01u."), DM_EFORMAT },     /* still no tensors */
        { PK("}(K\x01u."), DM_EFORMAT },                     /* odd SETITEMS */
        { PK("K\x01(K\x02" "e."), DM_EFORMAT },              /* APPENDS without a list */
        { PK("K\x01(K\x02u."), DM_EFORMAT },                 /* SETITEMS without a dict */
        { PK("K\x01K\x02K\x03s."), DM_EFORMAT },             /* SETITEM on an int */
        { PK("K\x01N" "b."), DM_EFORMAT },                   /* BUILD on an int */
        { PK("\x80\x06}."), DM_EUNSUPPORTED },               /* protocol 6 */
        { PK("K\x01Q."), DM_EFORMAT },                       /* persistent id not a tuple */
        { PK("(X\x07\0\0\0storageK\x01K\x02K\x03K\x04tQ."), DM_EFORMAT },
        { PK("ctorch\nFloatStorage\n)R."), DM_EFORMAT },    /* calling a storage class */
        { PK("ccollections\nOrderedDict\nK\x01\x85R."), DM_EUNSUPPORTED },
        { PK("ccollections\nOrderedDict\nK\x01\x85\x81."), DM_EUNSUPPORTED },
        { PK("ctorch._utils\n_rebuild_tensor_v2\n)R."), DM_EFORMAT },
        { PK("ctorch._utils\n_rebuild_parameter\nK\x01K\x01K\x01\x87R."), DM_EFORMAT },
        { PK("ctorch\nFloatStorage"), DM_EFORMAT },         /* unterminated GLOBAL */
        { PK("\x93."), DM_EFORMAT },                         /* STACK_GLOBAL on nothing */
        { PK("K\x01K\x02\x93."), DM_EFORMAT },               /* STACK_GLOBAL on ints */
        { PK("t."), DM_EFORMAT },                            /* TUPLE without MARK */
        { PK("\x95\x01"), DM_EFORMAT },                      /* truncated FRAME */
    };
    char path[512];
    tmpfile_path(path, sizeof path, "bad.pth");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf p = { 0 };
        b_put(&p, cases[i].pkl, cases[i].len);
        CHECK(write_pth(path, &p, &twelve_blob, 1) == 0);
        b_free(&p);
        dm_err e;
        int rc = open_fails(path, &e);
        CHECKF(rc == cases[i].code && strstr(e.msg, path), "case %zu: rc %d %s", i, rc, e.msg);
    }
    /* deep MARK nesting and a long run of memo puts are bounded by the pickle size */
    buf p = { 0 };
    for (int i = 0; i < 200000; i++)
        b_u8(&p, '(');
    b_u8(&p, '}');
    for (int i = 0; i < 50000; i++)
        b_u8(&p, 0x94);
    b_u8(&p, '.');
    CHECK(write_pth(path, &p, &twelve_blob, 1) == 0);
    b_free(&p);
    CHECK_OPEN_FAILS(path, DM_EFORMAT); /* "holds no tensors" */
}

/* ---- safetensors ------------------------------------------------------------------------------- */

/* [N][header padded to 8][data_len zero bytes]; n_override replaces N when nonzero. */
static int write_st(const char *path, const char *header, size_t data_len, uint64_t n_override)
{
    buf b = { 0 };
    size_t hl = strlen(header);
    b_u64(&b, n_override ? n_override : hl);
    b_put(&b, header, hl);
    for (size_t i = 0; i < data_len; i++)
        b_u8(&b, 0);
    int rc = spit(path, b.p, b.n);
    b_free(&b);
    return rc;
}

TEST(loaders_safetensors_crafted_ok)
{
    char path[512];
    tmpfile_path(path, sizeof path, "ok.safetensors");
    CHECK(write_st(path,
                   "{\"__metadata__\":{\"format\":\"pt\"},"
                   "\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
                   "\"b\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[12,20]},"
                   "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[20,20]},"
                   "\"m\":{\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[20,24]}}   ",
                   24, 0) == 0);
    dm_weights *w = NULL;
    dm_err err = { 0 };
    CHECKF(dm_weights_open(path, &w, &err) == 0, "%s", err.msg);
    CHECK(dm_weights_count(w) == 4);
    const dm_tensor *a = dm_weights_find(w, "a"), *b = dm_weights_find(w, "b");
    CHECK(a->dtype == DM_DT_BF16 && a->stride[0] == 3 && a->stride[1] == 1);
    CHECK(b->ndim == 0 && dm_tensor_numel(b) == 1 && b->data == a->data + 12);
    CHECK(dm_tensor_numel(dm_weights_find(w, "e")) == 0);
    CHECK(dm_weights_find(w, "m")->dtype == DM_DT_BOOL);
    dm_weights_close(w);
}

TEST(loaders_safetensors_bad)
{
    static const struct {
        const char *header;
        size_t data;
        uint64_t n;
        int code;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 1u << 20,
         DM_EFORMAT, "exceeds"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, 0, DM_EFORMAT,
         "past"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 64, 0, DM_EFORMAT,
         "header lies: tensor a declares 16 bytes but shape [2,3] f32 needs 24"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
         "\"data_offsets\":[0,0]}}",
         0, 0, DM_EFORMAT, "header lies"},
        {"{not json at all", 0, 0, DM_EFORMAT, "JSON"},
        {"{\"a\":1} trailing", 0, 0, DM_EFORMAT, "JSON"},
        {"{\"w8\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, 0,
         DM_EUNSUPPORTED, "w8 has dtype F8_E4M3"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, 0, DM_EFORMAT,
         "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, 0, DM_EFORMAT,
         "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, 0, DM_EFORMAT,
         "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, 0,
         DM_EUNSUPPORTED, "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, 0, DM_EFORMAT, "data_offsets"},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, DM_EFORMAT, "dtype"},
        {"{\"a\":[1,2]}", 0, 0, DM_EFORMAT, "not an object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", 8, 0, DM_EFORMAT,
         "data_offsets"},
    };
    char path[512];
    tmpfile_path(path, sizeof path, "bad.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(write_st(path, cases[i].header, cases[i].data, cases[i].n) == 0);
        dm_err e;
        int rc = open_fails(path, &e);
        CHECKF(rc == cases[i].code && strstr(e.msg, path) && strstr(e.msg, cases[i].needle),
               "case %zu: rc %d %s", i, rc, e.msg);
    }
}

TEST(loaders_safetensors_truncation_and_mutations)
{
    char src[512];
    golden(src, sizeof src, "vitl_sat_tiny_hf/model.safetensors");
    size_t n;
    unsigned char *d = slurp(src, &n);
    CHECK(d && n > 4000);
    unsigned char *tail = malloc(n);
    int bad = !tail;
    for (size_t cut = 0; cut < n && !bad; cut += 997) {
        dm_tensor_list l = { 0 };
        dm_err err = { 0 };
        int rc = dm_safetensors_read(flush_end(tail, d, n, cut), cut, "t.safetensors", &l, &err);
        dm_tensor_list_free(&l);
        if (rc >= 0 || !strstr(err.msg, "t.safetensors"))
            bad = 1, dm_test_fail(__FILE__, __LINE__, "cut %zu: rc %d", cut, rc);
    }
    free(tail);
    uint64_t s = 12345;
    for (int it = 0; it < 2000; it++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t pos = (size_t)(s >> 33) % 3808;
        unsigned char old = d[pos];
        d[pos] = (unsigned char)(s >> 20);
        dm_tensor_list l = { 0 };
        dm_err err = { 0 };
        int rc = dm_safetensors_read(d, n, "m.safetensors", &l, &err);
        int ok = rc <= 0;
        for (size_t i = 0; rc == 0 && i < l.n; i++)
            ok &= l.v[i].data >= d && l.v[i].data + (size_t)dm_tensor_numel(&l.v[i]) *
                                                       dm_dtype_size(l.v[i].dtype) <= d + n;
        dm_tensor_list_free(&l);
        d[pos] = old;
        CHECKF(ok && (rc == 0 || strstr(err.msg, "m.safetensors")), "mutation %d: %s", it,
               err.msg);
    }
    free(d);
}

/* tests/test_seg_head.c — the segmentation head: the .dmseg file round trip, the logits, Meta's
 * linear head folded (BatchNorm + 1×1 conv against the same sums done by hand), bad files. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/seg.h"
#include "golden.h"
#include "test.h"

static float frand(uint32_t *s)
{
    *s = dm_hash32(*s + 1);
    return (float)(*s % 20001) / 10000.0f - 1.0f;
}

TEST(seg_head_round_trip_and_logits)
{
    const char *t = dm_test_tmpdir();
    dm_seg_head *h = dm_seg_head_new(3, 5);
    CHECK(h != NULL);
    uint32_t s = 7;
    for (int i = 0; i < 15; i++)
        h->w[i] = frand(&s);
    for (int c = 0; c < 3; c++)
        h->b[c] = frand(&s);
    h->cls[1].id = 7;
    snprintf(h->cls[1].name, sizeof h->cls[1].name, "forest \"old\"");
    snprintf(h->kind, sizeof h->kind, "logistic");
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%064d", 42);
    h->layer = 3;
    h->info = strdup("{\"accuracy\":0.97}");
    char p[1100];
    snprintf(p, sizeof p, "%s/h.dmseg", t);
    dm_err err = { 0 };
    CHECKF(dm_seg_head_save(h, p, &err) == 0, "%s", err.msg);
    dm_seg_head *g = NULL;
    CHECKF(dm_seg_head_load(p, &g, &err) == 0, "%s", err.msg);
    CHECK(g->C == 3 && g->D == 5 && g->layer == 3 && !strcmp(g->kind, "logistic"));
    CHECK(!memcmp(g->w, h->w, sizeof(float) * 15) && !memcmp(g->b, h->b, sizeof(float) * 3));
    CHECK(g->cls[1].id == 7 && !strcmp(g->cls[1].name, "forest \"old\"") &&
          !memcmp(g->cls[2].rgb, h->cls[2].rgb, 3));
    CHECK(!strcmp(g->backbone_sha256, h->backbone_sha256) && g->info &&
          strstr(g->info, "0.97"));
    char a[65], b[65];
    dm_seg_head_sha256(h, a);
    dm_seg_head_sha256(g, b);
    CHECK(!strcmp(a, b));
    float x[2 * 5], lg[2 * 3];
    for (int i = 0; i < 10; i++)
        x[i] = frand(&s);
    dm_seg_logits(g, x, 2, lg);
    double worst = 0;
    for (int n = 0; n < 2; n++)
        for (int c = 0; c < 3; c++) {
            double v = h->b[c];
            for (int d = 0; d < 5; d++)
                v += (double)h->w[c * 5 + d] * x[n * 5 + d];
            worst = fmax(worst, fabs(v - lg[n * 3 + c]));
        }
    CHECKF(worst < 1e-5, "logits off by %g", worst);
    dm_seg_head_free(h);
    dm_seg_head_free(g);
}

/* A safetensors file of F32 tensors: names, shapes (up to 4 dims), values. */
static int write_st(const char *path, int n, const char *const *names, const int (*shape)[5],
                    float *const *vals)
{
    char hdr[4096];
    size_t k = 0, off = 0;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < n; i++) {
        size_t ne = 1;
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                              i ? "," : "", names[i]);
        for (int d = 0; d < shape[i][0]; d++) {
            ne *= (size_t)shape[i][1 + d];
            k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s%d", d ? "," : "", shape[i][1 + d]);
        }
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "],\"data_offsets\":[%zu,%zu]}", off,
                              off + 4 * ne);
        off += 4 * ne;
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    for (int i = 0; i < n; i++) {
        size_t ne = 1;
        for (int d = 0; d < shape[i][0]; d++)
            ne *= (size_t)shape[i][1 + d];
        fwrite(vals[i], 4, ne, f);
    }
    return fclose(f);
}

TEST(seg_head_meta_linear_head_folds_its_batchnorm)
{
    const char *t = dm_test_tmpdir();
    enum { C = 4, D = 6 };
    float cw[C * D], cb[C], g[D], be[D], mu[D], var[D];
    uint32_t s = 11;
    for (int i = 0; i < C * D; i++)
        cw[i] = frand(&s);
    for (int i = 0; i < C; i++)
        cb[i] = frand(&s);
    for (int i = 0; i < D; i++)
        g[i] = 1 + frand(&s) / 2, be[i] = frand(&s), mu[i] = frand(&s),
        var[i] = 0.5f + frand(&s) / 4;
    const char *names[] = { "decode_head.conv.weight", "decode_head.conv.bias",
                            "decode_head.batchnorm_layer.weight",
                            "decode_head.batchnorm_layer.bias",
                            "decode_head.batchnorm_layer.running_mean",
                            "decode_head.batchnorm_layer.running_var" };
    const int shape[6][5] = { { 4, C, D, 1, 1 }, { 1, C }, { 1, D }, { 1, D }, { 1, D },
                              { 1, D } };
    float *vals[6] = { cw, cb, g, be, mu, var };
    char p[1100];
    snprintf(p, sizeof p, "%s/linear.safetensors", t);
    CHECK(write_st(p, 6, names, shape, vals) == 0);
    dm_seg_head *h = NULL;
    dm_err err = { 0 };
    CHECKF(dm_seg_head_load(p, &h, &err) == 0, "%s", err.msg);
    CHECK(h->C == C && h->D == D && !strcmp(h->kind, "linear") && h->cls[0].id == 1);
    float x[D], lg[C];
    for (int i = 0; i < D; i++)
        x[i] = frand(&s);
    dm_seg_logits(h, x, 1, lg);
    double worst = 0;
    for (int c = 0; c < C; c++) {
        double v = cb[c];
        for (int d = 0; d < D; d++)
            v += cw[c * D + d] * ((x[d] - mu[d]) / sqrt(var[d] + 1e-5) * g[d] + be[d]);
        worst = fmax(worst, fabs(v - lg[c]));
    }
    dm_seg_head_free(h);
    CHECKF(worst < 1e-5, "folded head off by %g", worst);
    /* files that are not heads */
    const char *bn[] = { "something.weight" };
    const int bs[1][5] = { { 1, D } };
    float *bv[1] = { g };
    snprintf(p, sizeof p, "%s/other.safetensors", t);
    CHECK(write_st(p, 1, bn, bs, bv) == 0);
    CHECK(dm_seg_head_load(p, &h, &err) == DM_EFORMAT && strstr(err.msg, "not a segmentation "
                                                                     "head"));
    snprintf(p, sizeof p, "%s/text.dmseg", t);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    fputs("hello", f);
    fclose(f);
    CHECK(dm_seg_head_load(p, &h, &err) != 0 && h == NULL);
}

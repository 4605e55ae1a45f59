/* tests/bench_chm.c — the CHMv2 DPT decoder alone (dm_chm_decode) at the real ViT-L widths
 * (D=1024, post-process channels 128,256,512,1024, fusion 256, head 128 → 256 bins) on a 32×32
 * patch grid, i.e. one 512×512 tile. Writes a random head with those shapes (spec §5.11, Meta
 * names, fp32) to a temporary directory, opens it (the file is removed right after: the head keeps
 * fp32 copies), feeds random normed taps, and reports seconds per tile and GFLOP/s (the flops of the
 * convolutions and GEMMs), best of 3. No backbone is built or run. Not a test: it asserts nothing.
 *
 *   bench_chm [THREADS [DUMP]]    THREADS: decoder threads (default 2);
 *                                 DUMP: write the last run's logits then heights (raw fp32) there */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../heads/chmv2.h"
#include "../models/model.h"
#include "../src/blas_core.h"

enum { D = 1024, F = 256, H1 = 128, H2 = 128, NBINS = 256, GH = 32, GW = 32, RUNS = 3 };
static const int C[4] = { 128, 256, 512, 1024 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

typedef struct spec {
    char name[96];
    int64_t shape[4];
    int nd;
    float scale; /* values uniform in [-scale, scale) */
} spec;

typedef struct specs {
    spec v[96];
    int n;
} specs;

/* A weight ([out, in, k, k] or [in, out, k, k]: fan-in given) keeps activations near unit scale. */
static void add(specs *s, const char *name, int nd, int64_t a, int64_t b, int64_t c, int64_t d,
                double fan_in)
{
    spec *t = &s->v[s->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->nd = nd;
    t->shape[0] = a, t->shape[1] = b, t->shape[2] = c, t->shape[3] = d;
    t->scale = fan_in > 0 ? (float)sqrt(3.0 / fan_in) : 0.05f;
}

static int64_t numel(const spec *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->nd; i++)
        n *= t->shape[i];
    return n;
}

static void head_specs(specs *s)
{
    char n[96];
    for (int k = 0; k < 4; k++) {
        snprintf(n, sizeof n, "reassemble_blocks.readout_projects.%d.0.weight", k);
        add(s, n, 2, D, 2 * D, 0, 0, 2 * D);
        snprintf(n, sizeof n, "reassemble_blocks.readout_projects.%d.0.bias", k);
        add(s, n, 1, D, 0, 0, 0, 0);
        snprintf(n, sizeof n, "reassemble_blocks.projects.%d.conv.weight", k);
        add(s, n, 4, C[k], D, 1, 1, D);
        snprintf(n, sizeof n, "reassemble_blocks.projects.%d.conv.bias", k);
        add(s, n, 1, C[k], 0, 0, 0, 0);
        static const int ks[4] = { 4, 2, 0, 3 };
        if (ks[k]) {
            snprintf(n, sizeof n, "reassemble_blocks.resize_layers.%d.weight", k);
            add(s, n, 4, C[k], C[k], ks[k], ks[k], k == 3 ? 9.0 * C[k] : C[k]);
            snprintf(n, sizeof n, "reassemble_blocks.resize_layers.%d.bias", k);
            add(s, n, 1, C[k], 0, 0, 0, 0);
        }
        snprintf(n, sizeof n, "convs.%d.conv.weight", k);
        add(s, n, 4, F, C[k], 3, 3, 9.0 * C[k]);
    }
    for (int j = 0; j < 4; j++) {
        snprintf(n, sizeof n, "fusion_blocks.%d.project.conv.weight", j);
        add(s, n, 4, F, F, 1, 1, F);
        snprintf(n, sizeof n, "fusion_blocks.%d.project.conv.bias", j);
        add(s, n, 1, F, 0, 0, 0, 0);
        for (int u = j ? 1 : 2; u <= 2; u++)
            for (int c = 1; c <= 2; c++) {
                snprintf(n, sizeof n, "fusion_blocks.%d.res_conv_unit%d.conv%d.conv.weight", j, u, c);
                add(s, n, 4, F, F, 3, 3, 9.0 * F);
                snprintf(n, sizeof n, "fusion_blocks.%d.res_conv_unit%d.conv%d.conv.bias", j, u, c);
                add(s, n, 1, F, 0, 0, 0, 0);
            }
    }
    add(s, "conv_depth.head.0.weight", 4, H1, F, 3, 3, 9.0 * F);
    add(s, "conv_depth.head.0.bias", 1, H1, 0, 0, 0, 0);
    add(s, "conv_depth.head.2.weight", 4, H2, H1, 3, 3, 9.0 * H1);
    add(s, "conv_depth.head.2.bias", 1, H2, 0, 0, 0, 0);
    add(s, "conv_depth.head.4.weight", 4, NBINS, H2, 1, 1, H2);
    add(s, "conv_depth.head.4.bias", 1, NBINS, 0, 0, 0, 0);
}

/* Writes the specs as a safetensors file of random fp32 values. */
static int write_head(const char *path, const specs *s)
{
    size_t cap = 1 << 16, len = 0;
    char *h = malloc(cap);
    float *buf = malloc(sizeof(float) * (size_t)D * 9 * D);
    FILE *f = h && buf ? fopen(path, "wb") : NULL;
    if (!f) {
        free(h), free(buf);
        return -1;
    }
    int64_t off = 0;
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < s->n; i++) {
        int64_t bytes = numel(&s->v[i]) * 4;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                                s->v[i].name);
        for (int d = 0; d < s->v[i].nd; d++)
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "",
                                    (long long)s->v[i].shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%lld,%lld]}",
                                (long long)off, (long long)(off + bytes));
        off += bytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8)
        h[len++] = ' ';
    uint64_t hl = len;
    int ok = fwrite(&hl, 8, 1, f) == 1 && fwrite(h, 1, len, f) == len;
    for (int i = 0; ok && i < s->n; i++) {
        int64_t ne = numel(&s->v[i]);
        for (int64_t j = 0; j < ne; j++)
            buf[j] = frand() * s->v[i].scale;
        ok = fwrite(buf, 4, (size_t)ne, f) == (size_t)ne;
    }
    free(h), free(buf);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* The decoder's convolution and GEMM flops (multiply-adds × 2) for a gh×gw grid. */
static double decoder_flops(int gh, int gw)
{
    double hw = (double)gh * gw, a = (gh + 1) / 2, b = (gw + 1) / 2, fl = 0;
    for (int k = 0; k < 4; k++)
        fl += 2.0 * D * D * (hw + 1) + 2.0 * hw * D * C[k]; /* readout (+ CLS half), project */
    fl += 2.0 * C[0] * C[0] * 16 * hw + 2.0 * C[1] * C[1] * 4 * hw; /* transposed ×4, ×2 */
    fl += 2.0 * C[3] * C[3] * 9 * a * b;                            /* 3×3 stride 2 */
    static const double px[4] = { 16, 4, 1, 0 };
    for (int k = 0; k < 4; k++)                                     /* channel convs */
        fl += 2.0 * F * C[k] * 9 * (k < 3 ? px[k] * hw : a * b);
    double p = a * b;
    for (int j = 0; j < 4; j++, p *= 4)                             /* fusion: RCUs, project */
        fl += (j ? 4 : 2) * 2.0 * F * F * 9 * p + 2.0 * F * F * 4 * p;
    /* p is now the fused map's pixel count (16a·16b); the head works there and at 4× that */
    fl += 2.0 * H1 * F * 9 * p + 2.0 * H2 * H1 * 9 * 4 * p + 2.0 * NBINS * H2 * 4 * p;
    return fl;
}

int main(int argc, char **argv)
{
    dm_blas_pick_core(argv);
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    const char *dump = argc > 2 ? argv[2] : NULL;
    if (threads < 1) {
        fprintf(stderr, "usage: bench_chm [THREADS [DUMP]]\n");
        return 2;
    }
    /* a random head in a fresh temporary directory (no stray config.json next to it) */
    const char *tmp = getenv("TMPDIR");
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/dm_bench_chm_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("bench_chm: mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/head.safetensors", dir);
    static specs s;
    head_specs(&s);
    double t0 = now();
    int wrc = write_head(path, &s);
    /* the decoder reads only the width, depth (for the default taps) and register count */
    dm_model m;
    memset(&m, 0, sizeof m);
    snprintf(m.cfg.arch, sizeof m.cfg.arch, "vitl16");
    m.cfg.embed_dim = D, m.cfg.depth = 24, m.cfg.n_storage = 4;
    dm_err err = { 0 };
    dm_chm *h = NULL;
    int rc = wrc ? -1 : dm_chm_open(path, NULL, &m, NULL, &h, &err);
    unlink(path);
    rmdir(dir);
    if (wrc) {
        fprintf(stderr, "bench_chm: cannot write %s\n", path);
        return 1;
    }
    if (rc || (rc = dm_chm_set_threads(h, threads, &err))) {
        fprintf(stderr, "bench_chm: %s\n", err.msg);
        dm_chm_free(h);
        return 1;
    }
    printf("bench_chm: %s (written and opened in %.1f s)\n", dm_chm_describe(h), now() - t0);

    int N = 1 + 4 + GH * GW, Ho, Wo;
    dm_chm_out_size(GH * DM_PATCH, GW * DM_PATCH, &Ho, &Wo);
    size_t npix = (size_t)Ho * Wo;
    float *tok = malloc((size_t)DM_CHM_TAPS * N * D * sizeof *tok);
    float *logits = malloc((size_t)NBINS * npix * sizeof *logits);
    float *height = malloc(npix * sizeof *height);
    if (!tok || !logits || !height) {
        fprintf(stderr, "bench_chm: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)DM_CHM_TAPS * N * D; i++)
        tok[i] = 1.7f * frand(); /* normed tokens: about unit variance */
    const float *taps[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++)
        taps[k] = tok + (size_t)k * N * D;

    double best = INFINITY, t[RUNS];
    for (int r = 0; r < RUNS; r++) {
        t0 = now();
        if ((rc = dm_chm_decode(h, taps, GH, GW, logits, height, &err))) {
            fprintf(stderr, "bench_chm: %s\n", err.msg);
            break;
        }
        t[r] = now() - t0;
        best = t[r] < best ? t[r] : best;
    }
    if (!rc) {
        double fl = decoder_flops(GH, GW);
        printf("CHMv2 decoder, %d×%d grid (%d×%d px out), %d thread%s: %.3f s/tile best of %d "
               "(%.3f %.3f %.3f), %.1f GFLOP, %.1f GFLOP/s\n", GW, GH, Wo, Ho, threads,
               threads > 1 ? "s" : "", best, RUNS, t[0], t[1], t[2], fl * 1e-9, fl * 1e-9 / best);
        double sum = 0;
        for (size_t i = 0; i < npix; i++)
            sum += height[i];
        printf("mean height %.6f m (a checksum of the random run)\n", sum / (double)npix);
    }
    if (!rc && dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(logits, sizeof *logits, (size_t)NBINS * npix, f) != (size_t)NBINS * npix ||
            fwrite(height, sizeof *height, npix, f) != npix || fclose(f) != 0) {
            fprintf(stderr, "bench_chm: cannot write %s\n", dump);
            rc = 1;
        }
    }
    free(tok), free(logits), free(height);
    dm_chm_free(h);
    return rc ? 1 : 0;
}

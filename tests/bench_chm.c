/* tests/bench_chm.c — the CHMv2 DPT decoder alone (dm_chm_decode) at the real ViT-L widths
 * (D=1024, post-process channels 128,256,512,1024, fusion 256, head 128 → 256 bins) on a 32×32
 * patch grid, i.e. one 512×512 tile. Writes a random head with those shapes (spec §5.11, Meta
 * names, fp32) to a temporary directory, opens it (the file is removed right after: the head
 * keeps fp32 copies), feeds random normed taps, and reports seconds per tile (heights only, as
 * `dinomap chm` asks) and GFLOP/s (the flops of the convolutions as im2col GEMMs and of the other
 * GEMMs), best of 3, then the efficiency ratio (time OpenBLAS's own threaded sgemm needs for the
 * same GEMMs alone) / (decoder time), as bench_vit does for the backbone. Where the CPU has bf16
 * instructions, the same in bf16 (runs interleaved with fp32's; its floor: oneDNN's threaded
 * bf16 matmul for the GEMMs the bf16 decoder runs in bf16, sgemm for those it keeps fp32). No
 * backbone is built or run. Not a test: it asserts nothing.
 *
 *   bench_chm [THREADS [DUMP]]   THREADS: decoder threads (default 2); DUMP: one more run with
 *                                the logits, written there (raw fp32) followed by the heights */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../heads/heads.h"
#include "../models/cpu/bf16.h"
#include "../models/model.h"

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
                const char *fmt = "fusion_blocks.%d.res_conv_unit%d.conv%d.conv.%s";
                snprintf(n, sizeof n, fmt, j, u, c, "weight");
                add(s, n, 4, F, F, 3, 3, 9.0 * F);
                snprintf(n, sizeof n, fmt, j, u, c, "bias");
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

/* The decoder's GEMMs for a gh×gw grid, as row-major C[M, N] += A[M, K]·B[K, N] (convolutions
 * as their im2col GEMMs; tA: A is stored transposed, tB: B is); returns how many (at most max). */
typedef struct gemm {
    int M, N, K, tA, tB;
} gemm;

static int decoder_gemms(int gh, int gw, gemm *g, int max)
{
    int n = 0, hw = gh * gw, a = (gh + 1) / 2, b = (gw + 1) / 2;
#define G(m, nn, k, ta, tb)                                                                        \
    do {                                                                                           \
        if (n < max)                                                                               \
            g[n] = (gemm){ m, nn, k, ta, tb };                                                     \
        n++;                                                                                       \
    } while (0)
    static const int px[3] = { 16, 4, 1 };
    for (int k = 0; k < 4; k++) {
        G(hw, D, D, 0, 1);       /* readout (patch half) */
        G(C[k], hw, D, 0, 1);    /* 1×1 project */
        if (k < 2)               /* transposed ×4, ×2 */
            G(C[k] * px[k], hw, C[k], 1, 0);
        if (k == 3)              /* 3×3 stride 2 */
            G(C[k], a * b, 9 * C[k], 0, 0);
        G(F, k < 3 ? px[k] * hw : a * b, 9 * C[k], 0, 0); /* channel conv */
    }
    int p = a * b;
    for (int j = 0; j < 4; j++, p *= 4) { /* fusion: residual units, project on the ×2 map */
        for (int u = 0; u < (j ? 4 : 2); u++)
            G(F, p, 9 * F, 0, 0);
        G(F, 4 * p, F, 0, 0);
    }
    /* p is now the fused map's pixel count; the head works there and at 4× that */
    G(H1, p, 9 * F, 0, 0);
    G(H2, 4 * p, 9 * H1, 0, 0);
    G(NBINS, 4 * p, H2, 0, 0);
#undef G
    return n;
}

static double gemm_flops(const gemm *g, int n)
{
    double fl = 0;
    for (int i = 0; i < n; i++)
        fl += 2.0 * g[i].M * g[i].N * g[i].K;
    return fl;
}

/* The floor: OpenBLAS's own threaded sgemm on the same GEMMs (B in column chunks of at most CAP
 * floats, as the whole im2col matrices would not fit), nothing else. */
enum { CAP = 1 << 24 };
static double gemm_floor(const gemm *g, int n, const float *A, const float *B, float *Cm,
                         dm_bf16 *bf, const uint16_t *Ah, const uint16_t *Bh)
{
    double t0 = now();
    for (int i = 0; i < n; i++) {
        int M = g[i].M, K = g[i].K, Nc = g[i].N;
        if ((int64_t)K * Nc > CAP)
            Nc = CAP / K;
        if ((int64_t)M * Nc > CAP)
            Nc = CAP / M;
        for (int n0 = 0; n0 < g[i].N; n0 += Nc) {
            int nn = g[i].N - n0 < Nc ? g[i].N - n0 : Nc;
            if (bf && !g[i].tA) /* the convolutions: bf16 in the bf16 decoder */
                dm_bf16_gemm(bf, g[i].tB, M, nn, K, 1.0f, Ah, K, Bh, g[i].tB ? K : nn, 1, Cm, nn,
                             NULL);
            else
                cblas_sgemm(CblasRowMajor, g[i].tA ? CblasTrans : CblasNoTrans,
                        g[i].tB ? CblasTrans : CblasNoTrans, M, nn, K, 1.0f, A, g[i].tA ? M : K,
                        B, g[i].tB ? K : nn, 1.0f, Cm, nn);
        }
    }
    return now() - t0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
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

    /* the decoder runs first, the floor after: threaded OpenBLAS calls leave worker threads
     * behind that would slow the decoder's own threads */
    double t[RUNS], fl[RUNS], tb[RUNS], flb[RUNS];
    int bf16 = dm_cpu_bf16() != NULL;
    float *hb = malloc(npix * sizeof *hb);
    for (int r = 0; r < RUNS && !rc; r++) /* interleaved: fp32, bf16, fp32, bf16... */
        for (int p = 0; p < 1 + bf16 && !rc; p++) {
            if ((rc = dm_chm_set_precision(h, p ? DM_PREC_BF16 : DM_PREC_FP32, &err)))
                break;
            if (r == 0 && p) /* the first bf16 run rounds the weights: not timed */
                rc = dm_chm_decode(h, taps, GH, GW, NULL, hb, &err);
            t0 = now();
            if (!rc && (rc = dm_chm_decode(h, taps, GH, GW, NULL, p ? hb : height, &err)))
                break;
            (p ? tb : t)[r] = now() - t0;
        }
    if (rc)
        fprintf(stderr, "bench_chm: %s\n", err.msg);
    double hdiff = 0;
    for (size_t i = 0; bf16 && !rc && i < npix; i++)
        hdiff = fmax(hdiff, fabs((double)hb[i] - height[i]));
    dm_chm_set_precision(h, DM_PREC_FP32, NULL);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int same = 1;
    if (!rc && dump) { /* with the logits too: the heights must not change */
        float *h2 = malloc(npix * sizeof *h2);
        if (!h2 || (rc = dm_chm_decode(h, taps, GH, GW, logits, h2, &err)))
            fprintf(stderr, "bench_chm: %s\n", h2 ? err.msg : "out of memory");
        same = h2 && !memcmp(height, h2, npix * sizeof *h2);
        free(h2);
        FILE *f = rc ? NULL : fopen(dump, "wb");
        int ok = f && fwrite(logits, sizeof *logits, (size_t)NBINS * npix, f) ==
                          (size_t)NBINS * npix && fwrite(height, sizeof *height, npix, f) == npix;
        if (!rc && ((f && fclose(f) != 0) || !ok)) {
            fprintf(stderr, "bench_chm: cannot write %s\n", dump);
            rc = 1;
        }
    }
    gemm g[64];
    int ng = decoder_gemms(GH, GW, g, 64);
    double flops = gemm_flops(g, ng);
    float *A = calloc((size_t)D * 9 * D, sizeof *A), *B = calloc(CAP, sizeof *B),
          *Cm = calloc(CAP, sizeof *Cm);
    if (!rc && A && B && Cm) {
        for (size_t i = 0; i < (size_t)D * 9 * D; i++)
            A[i] = frand();
        for (size_t i = 0; i < CAP; i++)
            B[i] = frand();
        openblas_set_num_threads(threads);
        dm_bf16 *bf = NULL;
        uint16_t *Ah = NULL, *Bh = NULL;
        if (bf16 && !dm_bf16_create(threads, &bf, NULL)) {
            Ah = malloc((size_t)D * 9 * D * sizeof *Ah), Bh = malloc((size_t)CAP * sizeof *Bh);
            dm_bf16_from_f32(A, Ah, (int64_t)D * 9 * D);
            dm_bf16_from_f32(B, Bh, CAP);
        }
        for (int r = 0; r < RUNS; r++) {
            fl[r] = gemm_floor(g, ng, A, B, Cm, NULL, NULL, NULL);
            if (bf)
                flb[r] = gemm_floor(g, ng, A, B, Cm, bf, Ah, Bh);
        }
        dm_bf16_free(bf);
        free(Ah), free(Bh);
        double sum = 0;
        for (size_t i = 0; i < npix; i++)
            sum += height[i];
        qsort(t, RUNS, sizeof *t, cmp_double);
        qsort(fl, RUNS, sizeof *fl, cmp_double);
        printf("CHMv2 decoder, %d×%d patch grid (%d×%d px out), %d thread%s, OpenBLAS %s\n", GW,
               GH, Wo, Ho, threads, threads > 1 ? "s" : "", openblas_get_corename());
        printf("decoder:      %.3f s/tile (best of %d; median %.3f s)\n", t[0], RUNS,
               t[RUNS / 2]);
        printf("GEMM work:    %.1f GFLOP per tile (convolutions as im2col GEMMs, readout, "
               "projections), %.1f GFLOP/s achieved\n", flops * 1e-9, flops * 1e-9 / t[0]);
        printf("sgemm floor:  %.3f s (OpenBLAS's threaded sgemm on the same GEMMs alone, best of "
               "%d; median %.3f s), %.1f GFLOP/s\n", fl[0], RUNS, fl[RUNS / 2],
               flops * 1e-9 / fl[0]);
        printf("efficiency:   %.3f best/best, %.3f median/median (sgemm floor / decoder)\n",
               fl[0] / t[0], fl[RUNS / 2] / t[RUNS / 2]);
        if (bf16) {
            qsort(tb, RUNS, sizeof *tb, cmp_double);
            qsort(flb, RUNS, sizeof *flb, cmp_double);
            printf("bf16 decoder: %.3f s/tile (best of %d; median %.3f s), %.1f GFLOP/s; %.2f× "
                   "fp32's speed; heights within %.3g m of fp32's\n", tb[0], RUNS, tb[RUNS / 2],
                   flops * 1e-9 / tb[0], t[0] / tb[0], hdiff);
            printf("bf16 floor:   %.3f s (oneDNN's threaded bf16 matmul on the convolutions' GEMMs, "
                   "sgemm on the rest, best of %d; median %.3f s); efficiency %.3f best/best, "
                   "%.3f median/median\n", flb[0], RUNS, flb[RUNS / 2], flb[0] / tb[0],
                   flb[RUNS / 2] / tb[RUNS / 2]);
        } else {
            printf("bf16 decoder: not measured (this CPU has no AVX512_BF16 or AMX)\n");
        }
        printf("peak RSS:     %.0f MB\n", (double)ru.ru_maxrss / 1024.0);
        printf("mean height:  %.6f m (a checksum of the random run)\n", sum / (double)npix);
        if (dump)
            printf("dump:         %s (logits [%d, %d, %d] then heights [%d, %d]; the heights "
                   "%s those of the runs without logits)\n", dump, NBINS, Ho, Wo, Ho, Wo,
                   same ? "equal" : "DIFFER FROM");
    } else if (!rc) {
        fprintf(stderr, "bench_chm: out of memory\n");
        rc = 1;
    }
    free(A), free(B), free(Cm);
    free(tok), free(logits), free(height), free(hb);
    dm_chm_free(h);
    return rc ? 1 : 0;
}

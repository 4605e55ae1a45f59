/* tests/test_cuda_head.c — the CHMv2 head's GPU path, without a GPU:
 *   - the per-element index arithmetic of the CUDA kernels (models/kernel_math.h: im2col
 *     sources with stride, padding, ×2 upsampling and ReLU; bilinear sources in both
 *     conventions; the transposed convolution's gather; the heights of the bins), compiled as C
 *     and checked against the CPU operators (models/cpu/ops_cpu.c) and the head (heads/chmv2.c);
 *   - the head's device path (heads/chmv2_dev.c: weights, maps, tokens and the decoder's sequence
 *     through models/dops.h) on the host implementation of the device operators, against the CPU
 *     decoder on the golden tiny head, on an even and an odd patch grid. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/heads.h"
#include "../models/kernel_math.h"
#include "../models/dops.h"
#include "../models/model.h"
#include "../models/ops.h"
#include "golden.h"
#include "test.h"

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) /* [-1, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rnd(size_t n)
{
    float *p = malloc(n * sizeof *p + 4);
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* the convolution as the GPU's im2col computes each element, summed in double */
static void conv_by_indices(const dm_conv_spec *s, float *out)
{
    int Hi = s->up2 ? 2 * s->H : s->H, Wi = s->up2 ? 2 * s->W : s->W;
    int Ho = dm_conv_out_size(Hi, s->k, s->stride, s->pad);
    int Wo = dm_conv_out_size(Wi, s->k, s->stride, s->pad), K = s->cin * s->k * s->k;
    for (int o = 0; o < s->cout; o++)
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                double acc = s->bias ? s->bias[o] : 0.0;
                for (int kk = 0; kk < K; kk++) {
                    int iy, ix, ci = dm_cm_conv_src(kk, y, x, s->k, s->stride, s->pad, Hi, Wi,
                                                    &iy, &ix);
                    if (ci < 0)
                        continue;
                    const float *pl = s->in + (size_t)ci * s->H * s->W;
                    float v = s->up2 ? dm_cm_resize_at(pl, s->H, s->W, Hi, Wi, 1, iy, ix)
                                     : pl[(size_t)iy * s->W + ix];
                    if ((s->flags & DM_CONV_RELU_IN) && v < 0.0f)
                        v = 0.0f;
                    acc += (double)s->w[(size_t)o * K + kk] * v;
                }
                float r = (float)acc;
                if ((s->flags & DM_CONV_RELU_OUT) && r < 0.0f)
                    r = 0.0f;
                out[((size_t)o * Ho + y) * Wo + x] = r;
            }
}

TEST(cuda_math_conv_indices)
{
    /* cin, H, W, up2, cout, k, stride, pad, flags */
    static const int g[][9] = {
        { 3, 7, 9, 0, 5, 3, 1, 1, 0 },  { 4, 8, 6, 0, 3, 3, 2, 1, DM_CONV_RELU_IN },
        { 2, 5, 7, 1, 4, 3, 1, 1, DM_CONV_RELU_OUT }, { 6, 4, 5, 1, 3, 1, 1, 0, 0 },
        { 3, 9, 9, 0, 2, 1, 1, 0, DM_CONV_RELU_IN }, { 2, 3, 3, 0, 2, 3, 2, 1, 0 },
    };
    for (size_t t = 0; t < sizeof g / sizeof g[0]; t++) {
        const int *q = g[t];
        int Hi = q[3] ? 2 * q[1] : q[1], Wi = q[3] ? 2 * q[2] : q[2];
        int Ho = dm_conv_out_size(Hi, q[5], q[6], q[7]), Wo = dm_conv_out_size(Wi, q[5], q[6], q[7]);
        size_t no = (size_t)q[4] * Ho * Wo;
        float *in = rnd((size_t)q[0] * q[1] * q[2]), *w = rnd((size_t)q[4] * q[0] * q[5] * q[5]);
        float *b = rnd((size_t)q[4]), *o1 = malloc(no * 4), *o2 = malloc(no * 4);
        dm_conv_spec s = { in, q[0], q[1], q[2], q[3], w, b, q[4], q[5], q[6], q[7], q[8], o1,
                           NULL, NULL };
        dm_err err = { 0 };
        int rc = dm_conv_run(NULL, &s, &err);
        conv_by_indices(&s, o2);
        double e = dm_rel_err(o1, o2, (int64_t)no);
        free(in), free(w), free(b), free(o1), free(o2);
        CHECKF(rc == 0, "%s", err.msg);
        CHECKF(e < 1e-5, "geometry %zu: im2col indices give relative error %.3g", t, e);
    }
}

TEST(cuda_math_bilinear_bits)
{
    /* Hi, Wi, Ho, Wo, align_corners: down, up, odd ratios, one-pixel sides */
    static const int g[][5] = { { 5, 7, 10, 14, 1 }, { 5, 7, 10, 14, 0 }, { 9, 6, 4, 11, 0 },
                                { 9, 6, 4, 11, 1 },  { 1, 5, 3, 1, 0 },   { 8, 8, 64, 64, 0 },
                                { 3, 4, 6, 8, 1 } };
    for (size_t t = 0; t < sizeof g / sizeof g[0]; t++) {
        const int *q = g[t];
        int C = 2;
        float *in = rnd((size_t)C * q[0] * q[1]), *o = malloc(sizeof(float) * C * q[2] * q[3]);
        CHECK(dm_resize_bilinear(NULL, in, C, q[0], q[1], o, q[2], q[3], q[4], NULL) == 0);
        int bad = 0;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < q[2]; y++)
                for (int x = 0; x < q[3]; x++) {
                    float v = dm_cm_resize_at(in + (size_t)c * q[0] * q[1], q[0], q[1], q[2], q[3],
                                              q[4], y, x);
                    bad += fbits(v) != fbits(o[((size_t)c * q[2] + y) * q[3] + x]);
                }
        free(in), free(o);
        CHECKF(!bad, "resize %d×%d → %d×%d (align_corners %d): %d values differ in bits", q[1],
               q[0], q[3], q[2], q[4], bad);
    }
}

TEST(cuda_math_convt_gather)
{
    static const int g[][5] = { { 3, 4, 5, 2, 4 }, { 2, 3, 3, 3, 2 }, { 4, 2, 7, 2, 1 } };
    for (size_t t = 0; t < sizeof g / sizeof g[0]; t++) {
        int cin = g[t][0], H = g[t][1], W = g[t][2], cout = g[t][3], k = g[t][4];
        int M = cout * k * k, HW = H * W;
        size_t no = (size_t)cout * k * H * k * W;
        float *in = rnd((size_t)cin * HW), *w = rnd((size_t)cin * M), *b = rnd((size_t)cout);
        float *T = malloc(sizeof(float) * M * HW), *o1 = malloc(no * 4), *o2 = malloc(no * 4);
        for (int m = 0; m < M; m++) /* the product the GPU makes: T = wᵀ · in */
            for (int p = 0; p < HW; p++) {
                double a = 0;
                for (int i = 0; i < cin; i++)
                    a += (double)w[(size_t)i * M + m] * in[(size_t)i * HW + p];
                T[(size_t)m * HW + p] = (float)a;
            }
        for (int o = 0; o < cout; o++)
            for (int Y = 0; Y < k * H; Y++)
                for (int X = 0; X < k * W; X++)
                    o2[((size_t)o * k * H + Y) * k * W + X] =
                        T[dm_cm_convt_src(o, Y, X, k, H, W)] + b[o];
        int rc = dm_conv_transpose2d(NULL, in, cin, H, W, w, b, cout, k, o1, NULL);
        double e = dm_rel_err(o1, o2, (int64_t)no);
        free(in), free(w), free(b), free(T), free(o1), free(o2);
        CHECK(rc == 0);
        CHECKF(e < 1e-6, "transposed conv %zu: gather indices give relative error %.3g", t, e);
    }
}

/* --- the head ---------------------------------------------------------------------------------- */

typedef struct head {
    dm_weights *w;
    dm_model *m;
    dm_chm *h;
    dm_backend *be;
} head;

static void head_free(head *s)
{
    dm_backend_close(s->be);
    dm_chm_free(s->h);
    dm_model_free(s->m);
    dm_weights_close(s->w);
}

static int head_open(head *s, dm_err *err)
{
    memset(s, 0, sizeof *s);
    dm_backend_opts bo = { 1, 0, DM_PREC_FP32 };
    int rc;
    if ((rc = dm_weights_open(dm_golden("chmv2_tiny/backbone.pth"), &s->w, err)) ||
        (rc = dm_model_bind(s->w, NULL, &s->m, err)) ||
        (rc = dm_chm_open(dm_golden("chmv2_tiny/head.pth"), s->w, s->m, NULL, &s->h, err)) ||
        (rc = dm_backend_open("cpu", s->m, &bo, &s->be, err)))
        head_free(s);
    return rc;
}

TEST(cuda_math_chm_heights)
{
    head s;
    dm_err err = { 0 };
    CHECKF(head_open(&s, &err) == 0, "%s", err.msg);
    int nb = dm_chm_bins(s.h);
    enum { NP = 1000 };
    float *z = malloc(sizeof(float) * nb * NP), *h1 = malloc(sizeof(float) * NP);
    for (int i = 0; i < nb * NP; i++) /* negative (ReLU), small, large, a few infinities */
        z[i] = i % 977 == 0 ? INFINITY : frand() * (i % 3 ? 3.0f : 300.0f);
    dm_chm_heights(s.h, z, NP, h1);
    int bad = 0;
    for (int i = 0; i < NP; i++) {
        float v = dm_cm_chm_height(z + i, NP, nb, dm_chm_bin_values(s.h));
        bad += fbits(v) != fbits(h1[i]);
    }
    free(z), free(h1);
    head_free(&s);
    CHECKF(!bad, "%d of %d heights differ in bits from the CPU's", bad, NP);
}

/* The CPU decoder, then the device path on the host operators, on one random image. */
static void device_path_matches(int H, int W)
{
    head s;
    dm_err err = { 0 };
    CHECKF(head_open(&s, &err) == 0, "%s", err.msg);
    int Ho, Wo, nb = dm_chm_bins(s.h);
    dm_chm_out_size(H, W, &Ho, &Wo);
    size_t np = (size_t)Ho * Wo;
    float *img = rnd((size_t)3 * H * W);
    float *lg = malloc(sizeof(float) * nb * np), *hg = malloc(sizeof(float) * np);
    float *lg2 = malloc(sizeof(float) * nb * np), *hg2 = malloc(sizeof(float) * np);
    float *hg3 = malloc(sizeof(float) * np);
    int rc = dm_chm_run(s.h, s.be, img, H, W, lg, hg, &err);
    /* a CPU backend has no device operators: the head stays where it is */
    dm_err e2 = { 0 };
    int rc_be = dm_chm_use_backend(s.h, s.be, &e2);
    int on_cpu = !dm_chm_on_device(s.h);
    dm_ops *ws = NULL;
    dm_dops d;
    int rc2 = rc ? rc : dm_ops_create(2, &ws, &err);
    if (!rc2) {
        dm_dops_host(&d, ws);
        rc2 = dm_chm_use_dops(s.h, &d, NULL, &err);
    }
    int on_dev = dm_chm_on_device(s.h);
    if (!rc2) /* logits and heights, then heights alone (the bands' logits in scratch) */
        rc2 = dm_chm_run(s.h, s.be, img, H, W, lg2, hg2, &err);
    if (!rc2)
        rc2 = dm_chm_run(s.h, s.be, img, H, W, NULL, hg3, &err);
    double el = INFINITY, eh = INFINITY, eh3 = INFINITY;
    if (!rc2) {
        el = dm_rel_err(lg2, lg, (int64_t)nb * (int64_t)np);
        eh = dm_rel_err(hg2, hg, (int64_t)np);
        eh3 = dm_rel_err(hg3, hg, (int64_t)np);
    }
    /* a device path tied to a backend without device memory: the forward refuses, cleanly */
    int rc3 = -1;
    dm_err e3 = { 0 };
    if (!rc2 && !(rc3 = dm_chm_use_dops(s.h, &d, s.be, &e3)))
        rc3 = dm_chm_run(s.h, s.be, img, H, W, NULL, hg3, &e3);
    free(img), free(lg), free(hg), free(lg2), free(hg2), free(hg3);
    head_free(&s);
    dm_ops_free(ws);
    CHECKF(rc == 0 && rc2 == 0, "%s", err.msg);
    CHECKF(rc_be == DM_EUNSUPPORTED && on_cpu, "a CPU backend: rc %d (%s)", rc_be, e2.msg);
    CHECK(on_dev);
    printf("    %d×%d px: device path vs CPU decoder: logits %.3g, heights %.3g / %.3g\n", W, H,
           el, eh, eh3);
    CHECKF(el < 1e-5 && eh < 1e-5 && eh3 < 1e-5, "logits %.3g heights %.3g %.3g", el, eh, eh3);
    CHECKF(rc3 == DM_EINVAL && strstr(e3.msg, "on the device"), "rc %d: %s", rc3, e3.msg);
}

TEST(cuda_head_device_path_even) { device_path_matches(64, 64); }
TEST(cuda_head_device_path_odd) { device_path_matches(48, 80); }

/* The plugin may call nothing of the host's but through its table: a symbol it leaves undefined
 * (a host function compiled into a .cu by mistake) makes dlopen fail on every GPU machine. */
TEST(cuda_plugin_links_no_host_symbols)
{
    const char *out;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "lib=$(dirname %s)/libdinomap_cuda.so; [ -e \"$lib\" ] || "
             "{ echo absent; exit 0; }; nm -D --undefined-only \"$lib\" | grep -i 'dm_' || "
             "echo clean", dm_bin());
    CHECK(dm_run(cmd, &out) == 0);
    printf("    plugin: %s", out);
    CHECKF(strstr(out, "clean") || strstr(out, "absent"), "undefined in the plugin: %s", out);
}

/* The fused attention kernel's arithmetic (dm_cm_attention_row: key tiles, running max and
 * sum, bf16 numerators) against softmax(scale·qKᵀ)·V in double, N = 1029 tokens (a 512 px
 * tile), head dimensions 64 and 128, scores spread wide enough to make the running max move. */
TEST(cuda_math_online_attention)
{
    enum { N = 1029 };
    for (int hd = 64; hd <= 128; hd *= 2) {
        float *K = rnd((size_t)N * hd), *V = rnd((size_t)N * hd), *q = rnd((size_t)hd);
        float o[128];
        double ref[128], worst = 0, scale = 1.0 / sqrt((double)hd);
        for (int i = 0; i < hd; i++)
            q[i] *= 4.0f; /* logits over a range of ±~10 */
        double *s = malloc(sizeof(double) * N), mx = -1e300, sum = 0;
        for (int j = 0; j < N; j++) {
            double a = 0;
            for (int i = 0; i < hd; i++)
                a += (double)q[i] * K[(size_t)j * hd + i];
            s[j] = a * scale;
            mx = s[j] > mx ? s[j] : mx;
        }
        for (int i = 0; i < hd; i++)
            ref[i] = 0;
        for (int j = 0; j < N; j++) {
            double p = exp(s[j] - mx);
            sum += p;
            for (int i = 0; i < hd; i++)
                ref[i] += p * V[(size_t)j * hd + i];
        }
        dm_cm_attention_row(q, K, V, hd, N, hd, (float)scale, 64, o);
        double nrm = 0, err = 0;
        for (int i = 0; i < hd; i++) {
            ref[i] /= sum;
            nrm += ref[i] * ref[i];
            err += (o[i] - ref[i]) * (o[i] - ref[i]);
        }
        worst = sqrt(err / nrm);
        free(K), free(V), free(q), free(s);
        printf("    head dim %d: online softmax in tiles of 64 vs exact: %.3g\n", hd, worst);
        CHECKF(worst < 4e-3, "head dim %d: relative error %.3g", hd, worst);
    }
}

/* tests/test_chmv2.c — the CHMv2 canopy-height head (heads/chmv2.c, heads/conv.c):
 *   - golden parity (logits and heights) through the library and through `dinomap forward`, for
 *     the Meta layout (backbone.pth + head.pth) and the Hugging Face layout (one safetensors);
 *   - the fast operators (im2col+GEMM convs, transposed convs, bilinear) against slow direct loops
 *     written here from the spec's formulas;
 *   - an odd patch grid (3×5: skip resizes, output larger than the input) against a whole slow
 *     reference decoder written here from spec §5.4–5.8;
 *   - bad heads and bad options: clear errors, no crash, no files left;
 *   - threads: the operators and the whole decoder give the same bits on 1 and 3 threads. */
#include <limits.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/heads.h"
#include "../models/ops.h"
#include "../models/model.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

/* --- helpers ------------------------------------------------------------------------------------ */

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rand_buf(size_t n)
{
    float *p = malloc(n * sizeof *p + 1);
    for (size_t i = 0; i < n; i++)
        p[i] = frand();
    return p;
}

/* Backbone (+ its weights file, kept open) and head for a golden case. */
typedef struct setup {
    dm_weights *w;
    dm_model *m;
    dm_chm *h;
    dm_backend *be;
} setup;

static void setup_free(setup *s)
{
    dm_backend_close(s->be);
    dm_chm_free(s->h);
    dm_model_free(s->m);
    dm_weights_close(s->w);
    memset(s, 0, sizeof *s);
}

/* backbone: path of the backbone file; head: head file or NULL (head inside the backbone file);
 * backbone and head in precision prec. */
static int setup_open_prec(setup *s, const char *backbone, const char *head, const int *taps,
                           int prec, dm_err *err)
{
    memset(s, 0, sizeof *s);
    int rc;
    dm_backend_opts bo = { 1, 0, prec };
    if ((rc = dm_weights_open(backbone, &s->w, err)) ||
        (rc = dm_model_bind(s->w, NULL, &s->m, err)) ||
        (rc = dm_chm_open(head, s->w, s->m, taps, &s->h, err)) ||
        (rc = dm_chm_set_precision(s->h, prec, err)) ||
        (rc = dm_backend_open("cpu", s->m, &bo, &s->be, err)))
        setup_free(s);
    return rc;
}

static int setup_open(setup *s, const char *backbone, const char *head, const int *taps,
                      dm_err *err)
{
    return setup_open_prec(s, backbone, head, taps, DM_PREC_FP32, err);
}

/* --- slow reference operators (spec formulas, double accumulation) ------------------------------ */

static void ref_conv(const float *in, int cin, int H, int W, const float *w, const float *b,
                     int cout, int k, int s, int p, float *out)
{
    int Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
    for (int o = 0; o < cout; o++)
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                double acc = b ? b[o] : 0.0;
                for (int i = 0; i < cin; i++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = y * s - p + ky, ix = x * s - p + kx;
                            if (iy >= 0 && iy < H && ix >= 0 && ix < W)
                                acc += (double)w[((o * cin + i) * k + ky) * k + kx] *
                                       in[(i * H + iy) * W + ix];
                        }
                out[(o * Ho + y) * Wo + x] = (float)acc;
            }
}

/* ConvTranspose2d, general form: each input pixel scatters its k×k window (stride s, pad 0). */
static void ref_convT(const float *in, int cin, int H, int W, const float *w, const float *b,
                      int cout, int k, int s, float *out)
{
    int Ho = (H - 1) * s + k, Wo = (W - 1) * s + k;
    double *acc = calloc((size_t)cout * Ho * Wo, sizeof *acc);
    for (int i = 0; i < cin; i++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int o = 0; o < cout; o++)
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++)
                            acc[((size_t)o * Ho + y * s + ky) * Wo + x * s + kx] +=
                                (double)in[(i * H + y) * W + x] *
                                w[((i * cout + o) * k + ky) * k + kx];
    for (int o = 0; o < cout; o++)
        for (int j = 0; j < Ho * Wo; j++)
            out[(size_t)o * Ho * Wo + j] = (float)(acc[(size_t)o * Ho * Wo + j] + (b ? b[o] : 0));
    free(acc);
}

/* Bilinear (spec §8.11): src = dst·(in−1)/(out−1), or (dst+0.5)·in/out − 0.5 clamped at 0;
 * i0 = floor(src) ≤ in−1, i1 = min(i0+1, in−1), λ = src − i0. The source coordinate is computed
 * in fp32 as PyTorch does (its scale is the fp32 quotient): in double, λ would differ by up to
 * ~1e-5 relative on large downscales, which is PyTorch's own rounding, not an error. */
static void ref_src(int in, int out, int ac, int d, int *i0, int *i1, double *l)
{
    float scale =
        ac ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
    double s = ac ? scale * (float)d : scale * ((float)d + 0.5f) - 0.5f;
    if (s < 0)
        s = 0;
    int i = (int)floor(s);
    if (i > in - 1)
        i = in - 1;
    *i0 = i;
    *i1 = i + 1 < in ? i + 1 : in - 1;
    *l = s - i;
}

static void ref_bilinear(const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo, int ac)
{
    for (int c = 0; c < C; c++)
        for (int y = 0; y < Ho; y++)
            for (int x = 0; x < Wo; x++) {
                int y0, y1, x0, x1;
                double ly, lx;
                ref_src(Hi, Ho, ac, y, &y0, &y1, &ly);
                ref_src(Wi, Wo, ac, x, &x0, &x1, &lx);
                const float *p = in + (size_t)c * Hi * Wi;
                double v = (1 - ly) * ((1 - lx) * p[y0 * Wi + x0] + lx * p[y0 * Wi + x1]) +
                           ly * ((1 - lx) * p[y1 * Wi + x0] + lx * p[y1 * Wi + x1]);
                out[((size_t)c * Ho + y) * Wo + x] = (float)v;
            }
}

/* --- operators: fast path = direct loops -------------------------------------------------------- */

static double conv_case(int cin, int cout, int H, int W, int k, int s, int p, int flags)
{
    int Ho = dm_conv_out_size(H, k, s, p), Wo = dm_conv_out_size(W, k, s, p);
    size_t no = (size_t)cout * Ho * Wo;
    float *in = rand_buf((size_t)cin * H * W), *w = rand_buf((size_t)cout * cin * k * k);
    float *b = rand_buf(cout), *out = rand_buf(no), *ref = malloc(no * sizeof *ref);
    float *in2 = malloc((size_t)cin * H * W * sizeof *in2), *init = malloc(no * sizeof *init);
    memcpy(init, out, no * sizeof *out);
    for (size_t i = 0; i < (size_t)cin * H * W; i++)
        in2[i] = (flags & DM_CONV_RELU_IN) && in[i] < 0 ? 0.0f : in[i];
    ref_conv(in2, cin, H, W, w, b, cout, k, s, p, ref);
    if (flags & DM_CONV_ACCUM)
        for (size_t i = 0; i < no; i++)
            ref[i] += init[i];
    for (size_t i = 0; (flags & DM_CONV_RELU_OUT) && i < no; i++)
        ref[i] = ref[i] > 0 ? ref[i] : 0;
    dm_err err = { 0 };
    double r = dm_conv2d(NULL, in, cin, H, W, w, b, cout, k, s, p, flags, out, &err)
                   ? INFINITY : dm_rel_err(out, ref, (int64_t)no);
    free(in), free(w), free(b), free(out), free(ref), free(in2), free(init);
    return r;
}

TEST(chmv2_conv2d_matches_direct_loops)
{
    struct { int cin, cout, H, W, k, s, p, flags; } c[] = {
        { 5, 7, 9, 11, 3, 1, 1, 0 },                                /* 3×3 pad 1 */
        { 4, 6, 8, 8, 3, 1, 1, DM_CONV_RELU_IN | DM_CONV_ACCUM },   /* pre-activation residual */
        { 4, 6, 8, 8, 3, 1, 1, DM_CONV_RELU_IN | DM_CONV_ACCUM | DM_CONV_RELU_OUT },
        { 5, 3, 9, 7, 3, 2, 1, 0 },                                 /* 3×3 stride 2 pad 1, odd */
        { 6, 4, 6, 10, 3, 2, 1, 0 },                                /* stride 2, even */
        { 1, 1, 3, 5, 3, 2, 1, 0 },                                 /* ceil(h/2) of odd grids */
        { 8, 5, 7, 9, 1, 1, 0, 0 },                                 /* 1×1: the plain GEMM path */
        { 8, 5, 7, 9, 1, 1, 0, DM_CONV_RELU_IN },                   /* 1×1 through im2col */
        { 3, 2, 1, 1, 3, 1, 1, 0 },                                 /* 1 px */
        { 64, 4, 128, 128, 3, 1, 1, 0 },                            /* im2col in several bands */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        double r = conv_case(c[i].cin, c[i].cout, c[i].H, c[i].W, c[i].k, c[i].s, c[i].p,
                             c[i].flags);
        CHECKF(r <= 1e-5, "conv case %zu (Cin %d Cout %d %dx%d k%d s%d p%d flags %d): %.3g", i,
               c[i].cin, c[i].cout, c[i].H, c[i].W, c[i].k, c[i].s, c[i].p, c[i].flags, r);
    }
}

TEST(chmv2_conv_transpose_matches_direct_loops)
{
    struct { int cin, cout, H, W, k; } c[] = {
        { 5, 6, 3, 5, 4 }, { 7, 4, 4, 3, 2 }, { 3, 3, 1, 1, 4 }, { 8, 64, 80, 64, 4 } /* bands */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int k = c[i].k;
        size_t no = (size_t)c[i].cout * k * c[i].H * k * c[i].W;
        float *in = rand_buf((size_t)c[i].cin * c[i].H * c[i].W);
        float *w = rand_buf((size_t)c[i].cin * c[i].cout * k * k), *b = rand_buf(c[i].cout);
        float *out = rand_buf(no), *ref = malloc(no * sizeof *ref);
        ref_convT(in, c[i].cin, c[i].H, c[i].W, w, b, c[i].cout, k, k, ref);
        dm_err err = { 0 };
        int rc = dm_conv_transpose2d(NULL, in, c[i].cin, c[i].H, c[i].W, w, b, c[i].cout, k, out,
                                     &err);
        double r = rc ? INFINITY : dm_rel_err(out, ref, (int64_t)no);
        free(in), free(w), free(b), free(out), free(ref);
        CHECKF(r <= 1e-5, "transposed conv case %zu (k=s=%d): %.3g %s", i, k, r, err.msg);
    }
}

TEST(chmv2_bilinear_matches_formula)
{
    struct { int Hi, Wi, Ho, Wo, ac; } c[] = {
        { 5, 5, 9, 9, 0 }, { 9, 9, 5, 5, 0 }, { 5, 9, 9, 5, 1 }, { 9, 5, 5, 9, 1 },
        { 3, 5, 6, 10, 1 },  /* ×2 align_corners=True */
        { 3, 5, 4, 6, 0 },   /* an odd grid's skip resize */
        { 64, 96, 48, 80, 0 }, { 1, 4, 3, 8, 1 }, { 4, 1, 8, 1, 0 }, { 7, 6, 7, 6, 0 },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int C = 3;
        size_t no = (size_t)C * c[i].Ho * c[i].Wo;
        float *in = rand_buf((size_t)C * c[i].Hi * c[i].Wi), *out = rand_buf(no);
        float *ref = malloc(no * sizeof *ref);
        ref_bilinear(in, C, c[i].Hi, c[i].Wi, ref, c[i].Ho, c[i].Wo, c[i].ac);
        dm_err err = { 0 };
        int rc = dm_resize_bilinear(NULL, in, C, c[i].Hi, c[i].Wi, out, c[i].Ho, c[i].Wo, c[i].ac,
                                    &err);
        double r = rc ? INFINITY : dm_rel_err(out, ref, (int64_t)no);
        /* same size with align_corners=False is an exact identity */
        if (!rc && c[i].Hi == c[i].Ho && c[i].Wi == c[i].Wo)
            r = memcmp(in, out, no * sizeof *in) ? INFINITY : 0;
        free(in), free(out), free(ref);
        CHECKF(r <= 1e-5, "bilinear %dx%d -> %dx%d align_corners=%d: %.3g", c[i].Hi, c[i].Wi,
               c[i].Ho, c[i].Wo, c[i].ac, r);
    }
}

/* --- threads: the same bits with any number of threads ---------------------------------------- */

typedef struct band_copy {
    float *dst;
    size_t plane;
    int Wo, cout;
} band_copy;

static void copy_band(void *ctx, int tid, int y0, int n, float *band, size_t ld)
{
    const band_copy *c = ctx;
    (void)tid;
    for (int o = 0; o < c->cout; o++)
        memcpy(c->dst + o * c->plane + (size_t)y0 * c->Wo, band + o * ld,
               (size_t)n * c->Wo * sizeof(float));
}

/* One convolution on one thread (ws NULL) and on ws's threads. Returns 1 if those differ in any
 * bit, or if the per-band callback path or (up2) an explicit ×2 resize + conv is off by more than
 * 1e-6 (these cut the GEMMs differently: the same bits with some OpenBLAS kernels, not all). */
static int conv_threads_case(dm_ops *ws, int cin, int cout, int H, int W, int k, int s, int p,
                             int up2, int flags)
{
    int Hi = up2 ? 2 * H : H, Wi = up2 ? 2 * W : W;
    int Ho = dm_conv_out_size(Hi, k, s, p), Wo = dm_conv_out_size(Wi, k, s, p);
    size_t no = (size_t)cout * Ho * Wo;
    float *in = rand_buf((size_t)cin * H * W), *w = rand_buf((size_t)cout * cin * k * k);
    float *b = rand_buf(cout), *o[4], *big = malloc((size_t)cin * Hi * Wi * sizeof *big);
    o[0] = rand_buf(no);
    for (int i = 1; i < 4; i++)
        o[i] = malloc(no * sizeof *o[i]), memcpy(o[i], o[0], no * sizeof *o[0]);
    dm_conv_spec sp = { in, cin, H, W, up2, w, b, cout, k, s, p, flags, o[0], NULL, NULL };
    int bad = dm_conv_run(NULL, &sp, NULL) != 0;
    sp.out = o[1];
    bad |= dm_conv_run(ws, &sp, NULL) != 0;
    if (up2)
        bad |= dm_resize_bilinear(ws, in, cin, H, W, big, Hi, Wi, 1, NULL) != 0 ||
               dm_conv2d(ws, big, cin, Hi, Wi, w, b, cout, k, s, p, flags, o[2], NULL) != 0;
    else
        memcpy(o[2], o[0], no * sizeof *o[0]);
    band_copy bc = { o[3], (size_t)Ho * Wo, Wo, cout };
    dm_conv_spec sb = { in, cin, H, W, up2, w, b, cout, k, s, p, flags, NULL, copy_band, &bc };
    if (flags & DM_CONV_ACCUM)
        memcpy(o[3], o[0], no * sizeof *o[0]);
    else
        bad |= dm_conv_run(ws, &sb, NULL) != 0;
    bad |= memcmp(o[0], o[1], no * sizeof *o[0]) != 0;
    for (int i = 2; i < 4; i++)
        bad |= !(dm_rel_err(o[i], o[0], (int64_t)no) <= 1e-6);
    for (int i = 0; i < 4; i++)
        free(o[i]);
    free(in), free(w), free(b), free(big);
    return bad;
}

TEST(chmv2_operators_same_bits_on_threads)
{
    dm_ops *ws;
    dm_err err = { 0 };
    CHECKF(dm_ops_create(3, &ws, &err) == 0 && dm_ops_threads(ws) == 3, "%s", err.msg);
    struct { int cin, cout, H, W, k, s, p, up2, flags; } c[] = {
        { 5, 7, 9, 11, 3, 1, 1, 0, 0 },
        { 256, 128, 16, 16, 3, 1, 1, 0, 0 },            /* one band, slices of the outputs */
        { 64, 96, 40, 24, 3, 2, 1, 0, 0 },              /* stride 2 */
        { 16, 24, 20, 12, 3, 1, 1, 1, DM_CONV_RELU_OUT }, /* ×2 upsampled input, as the head */
        { 32, 40, 24, 16, 1, 1, 0, 1, 0 },              /* ×2 then 1×1, as the fusion project */
        { 8, 12, 30, 10, 3, 1, 1, 0, DM_CONV_RELU_IN | DM_CONV_ACCUM },
        { 8, 5, 7, 9, 1, 1, 0, 0, 0 },                  /* 1×1 reading its input in place */
        { 3, 4, 1, 1, 3, 1, 1, 1, 0 },                  /* 1 px, upsampled to 2 */
        { 16, 8, 600, 9, 3, 1, 1, 0, 0 },               /* many bands, the last one shorter */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        CHECKF(!conv_threads_case(ws, c[i].cin, c[i].cout, c[i].H, c[i].W, c[i].k, c[i].s, c[i].p,
                                  c[i].up2, c[i].flags), "conv case %zu differs", i);
    /* transposed conv and resize: 3 threads = 1 thread */
    int ok = 1;
    size_t no = (size_t)64 * 320 * 256;
    float *in = rand_buf((size_t)8 * 80 * 64), *w = rand_buf(8 * 64 * 16), *b = rand_buf(64);
    float *o1 = malloc(no * sizeof *o1), *o2 = malloc(no * sizeof *o2);
    ok &= !dm_conv_transpose2d(NULL, in, 8, 80, 64, w, b, 64, 4, o1, &err) &&
          !dm_conv_transpose2d(ws, in, 8, 80, 64, w, b, 64, 4, o2, &err) &&
          !memcmp(o1, o2, no * sizeof *o1);
    ok &= !dm_resize_bilinear(NULL, in, 8, 80, 64, o1, 48, 88, 0, &err) &&
          !dm_resize_bilinear(ws, in, 8, 80, 64, o2, 48, 88, 0, &err) &&
          !memcmp(o1, o2, (size_t)8 * 48 * 88 * sizeof *o1);
    /* no output at all is refused */
    dm_conv_spec none = { in, 8, 80, 64, 0, w, b, 8, 1, 1, 0, 0, NULL, NULL, NULL };
    ok &= dm_conv_run(ws, &none, &err) == DM_EINVAL;
    free(in), free(w), free(b), free(o1), free(o2);
    dm_ops_free(ws);
    dm_ops_free(NULL);
    CHECK(ok);
}

TEST(chmv2_geometry)
{
    /* spec §5.9 table, plus padding splits (§5.3) */
    struct { int H, W, Ho, Wo; } c[] = { { 256, 256, 256, 256 }, { 512, 512, 512, 512 },
                                        { 250, 250, 256, 256 }, { 272, 272, 288, 288 },
                                        { 384, 640, 384, 640 }, { 48, 80, 64, 96 },
                                        { 1, 1, 32, 32 } };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int Ho, Wo;
        dm_chm_out_size(c[i].H, c[i].W, &Ho, &Wo);
        CHECKF(Ho == c[i].Ho && Wo == c[i].Wo, "%dx%d -> %dx%d, want %dx%d", c[i].H, c[i].W, Ho, Wo,
               c[i].Ho, c[i].Wo);
    }
    int H = 41, W = 40, Hp, Wp; /* 41 → 48: 3 rows on top, 4 below; 40 → 48: 4 + 4 */
    dm_chm_pad_size(H, W, &Hp, &Wp);
    CHECK(Hp == 48 && Wp == 48);
    float *img = malloc(sizeof(float) * 3 * H * W), *p = malloc(sizeof(float) * 3 * Hp * Wp);
    for (int i = 0; i < 3 * H * W; i++)
        img[i] = 1.0f + (float)i;
    dm_chm_center_pad(img, H, W, p);
    int ok = 1;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < Hp; y++)
            for (int x = 0; x < Wp; x++) {
                int sy = y - 3, sx = x - 4;
                float want =
                    sy >= 0 && sy < H && sx >= 0 && sx < W ? img[(c * H + sy) * W + sx] : 0;
                ok &= p[(c * Hp + y) * Wp + x] == want;
            }
    free(img), free(p);
    CHECK(ok);
}

/* --- bins and heights --------------------------------------------------------------------------- */

TEST(chmv2_bins_and_heights)
{
    setup s;
    dm_err err = { 0 };
    CHECKF(setup_open(&s, dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"),
                      NULL, &err) == 0,
           "%s", err.msg);
    CHECK(dm_chm_bins(s.h) == 256);
    const float *b = dm_chm_bin_values(s.h);
    /* spec §5.8 reference values (fp32; a correctly rounded expf may differ by an ulp) */
    struct { int i; double v; } ref[] = { { 0, 0.00099999993 }, { 1, 0.0012219023 },
                                          { 2, 0.0018139657 }, { 7, 0.010327976 },
                                          { 64, 0.76399386 }, { 127, 3.0307505 },
                                          { 128, 3.079397 }, { 192, 7.0944257 },
                                          { 250, 11.729761 }, { 254, 11.951427 }, { 255, 12.0 } };
    for (size_t k = 0; k < sizeof ref / sizeof ref[0]; k++)
        CHECKF(fabs(b[ref[k].i] - ref[k].v) <= 3e-7 * ref[k].v, "bin[%d] = %.9g, want %.9g",
               ref[k].i, b[ref[k].i], ref[k].v);
    /* all logits <= 0: uniform weights, mean bin × 8 ≈ 33.15 m; one dominant bin: ≈ bin × 8 */
    enum { NP = 3 };
    float *lg = calloc(256 * NP, sizeof *lg), hgt[NP];
    for (int k = 0; k < 256; k++)
        lg[k * NP + 0] = -1.0f - (float)k;
    lg[200 * NP + 1] = 1e6f;
    lg[0 * NP + 2] = 1.0f, lg[255 * NP + 2] = 1.0f;
    dm_chm_heights(s.h, lg, NP, hgt);
    double mean = 0;
    for (int k = 0; k < 256; k++)
        mean += b[k];
    mean = mean / 256 * 8;
    free(lg);
    int ok0 = fabs(hgt[0] - mean) < 1e-4 * mean && fabs(mean - 33.15) < 0.01;
    int ok1 = fabs(hgt[1] - 8.0 * b[200]) < 1e-5 * hgt[1];
    int ok2 = fabs(hgt[2] - 4.0 * ((double)b[0] + b[255])) < 1e-4 * hgt[2];
    setup_free(&s);
    CHECKF(ok0 && ok1 && ok2, "heights %g (mean %g) %g %g", hgt[0], mean, hgt[1], hgt[2]);
}

/* --- golden parity through the library ---------------------------------------------------------- */

static double cmp_file(const float *ours, int64_t n, const char *ref)
{
    dm_npy r;
    if (dm_npy_read(ref, &r, NULL))
        return INFINITY;
    double e = r.numel == n ? dm_rel_err(ours, r.f, n) : INFINITY;
    dm_npy_free(&r);
    return e;
}

static void golden_lib_prec(const char *cs, const char *backbone, const char *head, int prec,
                            double tol)
{
    char dir[64], p1[128], p2[128];
    snprintf(dir, sizeof dir, "%s", cs);
    setup s;
    dm_err err = { 0 };
    snprintf(p1, sizeof p1, "%s/%s", dir, backbone);
    if (head)
        snprintf(p2, sizeof p2, "%s/%s", dir, head);
    CHECKF(setup_open_prec(&s, dm_golden(p1), head ? dm_golden(p2) : NULL, NULL, prec, &err) == 0,
           "%s", err.msg);
    const int *t = dm_chm_taps(s.h);
    CHECKF(t[0] == 0 && t[1] == 1 && t[2] == 2 && t[3] == 3, "taps %d,%d,%d,%d", t[0], t[1], t[2],
           t[3]);
    dm_npy in;
    snprintf(p1, sizeof p1, "%s/input.npy", dir);
    CHECK(dm_npy_read(dm_golden(p1), &in, &err) == 0);
    int H = (int)in.shape[1], W = (int)in.shape[2], Ho, Wo;
    dm_chm_out_size(H, W, &Ho, &Wo);
    size_t npix = (size_t)Ho * Wo;
    float *lg = malloc(256 * npix * sizeof *lg), *hg = malloc(npix * sizeof *hg);
    int rc = dm_chm_run(s.h, s.be, in.f, H, W, lg, hg, &err);
    double el = INFINITY, eh = INFINITY;
    if (!rc) {
        snprintf(p1, sizeof p1, "%s/head_logits.npy", dir);
        el = cmp_file(lg, 256 * (int64_t)npix, dm_golden(p1));
        snprintf(p1, sizeof p1, "%s/height.npy", dir);
        eh = cmp_file(hg, (int64_t)npix, dm_golden(p1));
    }
    /* the notebook's resize back to the input size is an identity here (multiples of 32) */
    float *back = malloc(npix * sizeof *back);
    int same = !rc && Ho == H && Wo == W &&
               dm_chm_resize_to_input(hg, Ho, Wo, H, W, back, &err) == 0 &&
               !memcmp(back, hg, npix * sizeof *hg);
    free(lg), free(hg), free(back);
    dm_npy_free(&in);
    setup_free(&s);
    CHECKF(rc == 0, "%s", err.msg);
    printf("    %s (%s): relative error logits %.3g, height %.3g\n", cs, dm_precision_name(prec),
           el, eh);
    CHECKF(el <= tol && eh <= tol, "%s (%s): logits %.3g height %.3g", cs,
           dm_precision_name(prec), el, eh);
    CHECKF(prec != DM_PREC_BF16 || el > 1e-5, "%s (bf16): logits error %.3g, as small as fp32's",
           cs, el);
    CHECK(same);
}

static void golden_lib(const char *cs, const char *backbone, const char *head)
{
    golden_lib_prec(cs, backbone, head, DM_PREC_FP32, DM_GOLDEN_TOL);
}

TEST(chmv2_golden_lib_meta) { golden_lib("chmv2_tiny", "backbone.pth", "head.pth"); }
TEST(chmv2_golden_lib_hf) { golden_lib("chmv2_tiny_hf", "model.safetensors", NULL); }
TEST(chmv2_golden_bf16_lib_meta)
{
    if (dm_test_bf16("chmv2_golden_bf16_lib_meta"))
        golden_lib_prec("chmv2_tiny", "backbone.pth", "head.pth", DM_PREC_BF16,
                        DM_GOLDEN_TOL_BF16);
}
TEST(chmv2_golden_bf16_lib_hf)
{
    if (dm_test_bf16("chmv2_golden_bf16_lib_hf"))
        golden_lib_prec("chmv2_tiny_hf", "model.safetensors", NULL, DM_PREC_BF16,
                        DM_GOLDEN_TOL_BF16);
}

/* bf16 convolutions: the fp32 result within the bf16 tolerance, the same bits on 1 and 3
 * threads; refused where the CPU has no bf16 instructions */
TEST(chmv2_operators_bf16)
{
    if (!dm_test_bf16("chmv2_operators_bf16"))
        return;
    dm_ops *w1, *w3;
    dm_err err = { 0 };
    CHECKF(dm_ops_create(1, &w1, &err) == 0 && dm_ops_create(3, &w3, &err) == 0 &&
           dm_ops_set_precision(w1, DM_PREC_BF16, &err) == 0 &&
           dm_ops_set_precision(w3, DM_PREC_BF16, &err) == 0, "%s", err.msg);
    struct { int cin, cout, H, W, k, s, p, up2, flags; } c[] = {
        { 5, 7, 9, 11, 3, 1, 1, 0, 0 },
        { 256, 128, 16, 16, 3, 1, 1, 0, 0 },
        { 64, 96, 40, 24, 3, 2, 1, 0, 0 },
        { 16, 24, 20, 12, 3, 1, 1, 1, DM_CONV_RELU_OUT },
        { 8, 12, 30, 10, 3, 1, 1, 0, DM_CONV_RELU_IN | DM_CONV_ACCUM },
        { 8, 5, 7, 9, 1, 1, 0, 0, 0 },
        { 16, 8, 600, 9, 3, 1, 1, 0, 0 },
    };
    int ok = 1;
    for (size_t i = 0; ok && i < sizeof c / sizeof c[0]; i++) {
        int Hi = c[i].up2 ? 2 * c[i].H : c[i].H, Wi = c[i].up2 ? 2 * c[i].W : c[i].W;
        size_t no = (size_t)c[i].cout * dm_conv_out_size(Hi, c[i].k, c[i].s, c[i].p) *
                    dm_conv_out_size(Wi, c[i].k, c[i].s, c[i].p);
        float *in = rand_buf((size_t)c[i].cin * c[i].H * c[i].W);
        float *w = rand_buf((size_t)c[i].cout * c[i].cin * c[i].k * c[i].k);
        float *b = rand_buf(c[i].cout), *o[3];
        o[0] = rand_buf(no);
        for (int t = 1; t < 3; t++)
            o[t] = malloc(no * sizeof *o[t]), memcpy(o[t], o[0], no * sizeof *o[0]);
        dm_conv_spec sp = { in, c[i].cin, c[i].H, c[i].W, c[i].up2, w, b, c[i].cout, c[i].k,
                            c[i].s, c[i].p, c[i].flags, o[0], NULL, NULL };
        ok &= dm_conv_run(NULL, &sp, &err) == 0;
        sp.out = o[1];
        ok &= dm_conv_run(w1, &sp, &err) == 0;
        sp.out = o[2];
        ok &= dm_conv_run(w3, &sp, &err) == 0;
        double r = dm_rel_err(o[1], o[0], (int64_t)no);
        ok &= !memcmp(o[1], o[2], no * sizeof *o[1]) && r <= DM_GOLDEN_TOL_BF16 && r > 1e-6;
        if (!ok)
            printf("    bf16 conv case %zu: relative error %.3g against fp32, %s on 1 and 3 "
                   "threads\n", i, r, memcmp(o[1], o[2], no * sizeof *o[1]) ? "differs" : "same");
        free(in), free(w), free(b), free(o[0]), free(o[1]), free(o[2]);
    }
    dm_ops_free(w1);
    dm_ops_free(w3);
    CHECKF(ok, "%s", err.msg);
}

/* --- an odd grid against a slow reference decoder ------------------------------------------------ */

/* Head weights by their Meta names, read here without the library's binding code. */
typedef struct rw {
    dm_weights *w;
    float *all[128];
    int n;
} rw;

static float *W_(rw *r, const char *fmt, int k)
{
    char name[160];
    snprintf(name, sizeof name, fmt, k);
    const dm_tensor *t = dm_weights_find(r->w, name);
    if (!t || r->n == 128)
        return NULL;
    int64_t n = dm_tensor_numel(t);
    float *v = malloc((size_t)n * sizeof *v);
    dm_tensor_read_f32(t, 0, n, v, NULL);
    return r->all[r->n++] = v;
}

static void ref_rcu(rw *r, const char *unit, int j, const float *x, float *out, int F, int H, int W)
{
    char n1[128], n2[128], b1[128], b2[128];
    snprintf(n1, sizeof n1, "fusion_blocks.%%d.%s.conv1.conv.weight", unit);
    snprintf(b1, sizeof b1, "fusion_blocks.%%d.%s.conv1.conv.bias", unit);
    snprintf(n2, sizeof n2, "fusion_blocks.%%d.%s.conv2.conv.weight", unit);
    snprintf(b2, sizeof b2, "fusion_blocks.%%d.%s.conv2.conv.bias", unit);
    size_t n = (size_t)F * H * W;
    float *a = calloc(n, sizeof *a),
          *t = calloc(n, sizeof *t); /* calloc: quiets -O1 -Wmaybe-uninitialized */
    for (size_t i = 0; i < n; i++)
        a[i] = x[i] > 0 ? x[i] : 0;
    ref_conv(a, F, H, W, W_(r, n1, j), W_(r, b1, j), F, 3, 1, 1, t);
    for (size_t i = 0; i < n; i++)
        t[i] = t[i] > 0 ? t[i] : 0;
    ref_conv(t, F, H, W, W_(r, n2, j), W_(r, b2, j), F, 3, 1, 1, out);
    for (size_t i = 0; i < n; i++)
        out[i] += x[i];
    free(a), free(t);
}

/* Spec §5.4–5.8 written out directly; returns heights [Ho, Wo] and logits. */
static void ref_decoder(rw *r, const dm_model *m, float *const taps[4], int gh, int gw,
                        float *logits, float *height)
{
    int D = m->cfg.embed_dim, R = m->cfg.n_storage, hw = gh * gw;
    int C[4] = { 16, 32, 64, 128 }, F = 32, a = (gh + 1) / 2, b = (gw + 1) / 2;
    int sh[4] = { 4 * gh, 2 * gh, gh, a }, sw[4] = { 4 * gw, 2 * gw, gw, b };
    float *G[4];
    for (int k = 0; k < 4; k++) {
        const float *ro = W_(r, "reassemble_blocks.readout_projects.%d.0.weight", k);
        const float *rob = W_(r, "reassemble_blocks.readout_projects.%d.0.bias", k);
        const float *pw = W_(r, "reassemble_blocks.projects.%d.conv.weight", k);
        const float *pb = W_(r, "reassemble_blocks.projects.%d.conv.bias", k);
        float *f = malloc(sizeof(float) * D), *P = malloc(sizeof(float) * C[k] * hw);
        const float *cls = taps[k];
        for (int t = 0; t < hw; t++) {
            const float *x = taps[k] + (size_t)(1 + R + t) * D;
            for (int o = 0; o < D; o++) {
                double acc = rob[o];
                for (int i = 0; i < D; i++)
                    acc +=
                        (double)ro[o * 2 * D + i] * x[i] + (double)ro[o * 2 * D + D + i] * cls[i];
                f[o] = (float)(0.5 * acc * (1.0 + erf(acc / sqrt(2.0))));
            }
            for (int o = 0; o < C[k]; o++) {
                double acc = pb[o];
                for (int i = 0; i < D; i++)
                    acc += (double)pw[o * D + i] * f[i];
                P[o * hw + t] = (float)acc;
            }
        }
        float *Rk = malloc(sizeof(float) * C[k] * sh[k] * sw[k]);
        if (k < 2)
            ref_convT(P, C[k], gh, gw, W_(r, "reassemble_blocks.resize_layers.%d.weight", k),
                      W_(r, "reassemble_blocks.resize_layers.%d.bias", k), C[k], 4 >> k, 4 >> k,
                      Rk);
        else if (k == 2)
            memcpy(Rk, P, sizeof(float) * C[k] * hw);
        else
            ref_conv(P, C[k], gh, gw, W_(r, "reassemble_blocks.resize_layers.%d.weight", k),
                     W_(r, "reassemble_blocks.resize_layers.%d.bias", k), C[k], 3, 2, 1, Rk);
        G[k] = malloc(sizeof(float) * F * sh[k] * sw[k]);
        ref_conv(Rk, C[k], sh[k], sw[k], W_(r, "convs.%d.conv.weight", k), NULL, F, 3, 1, 1, G[k]);
        free(f), free(P), free(Rk);
    }
    size_t big = (size_t)F * 16 * a * 16 * b;
    float *x = malloc(big * sizeof *x), *y = malloc(big * sizeof *y), *s = malloc(big * sizeof *s);
    int ch = a, cw = b;
    memcpy(x, G[3], sizeof(float) * F * a * b);
    for (int j = 0; j < 4; j++) {
        size_t n = (size_t)F * ch * cw;
        if (j) {
            int k = 3 - j;
            ref_bilinear(G[k], F, sh[k], sw[k], s, ch, cw, 0); /* identity when sizes agree */
            ref_rcu(r, "res_conv_unit1", j, s, y, F, ch, cw);
            for (size_t i = 0; i < n; i++)
                x[i] += y[i];
        }
        ref_rcu(r, "res_conv_unit2", j, x, y, F, ch, cw);
        ref_bilinear(y, F, ch, cw, s, 2 * ch, 2 * cw, 1);
        ch *= 2, cw *= 2;
        ref_conv(s, F, ch, cw, W_(r, "fusion_blocks.%d.project.conv.weight", j),
                 W_(r, "fusion_blocks.%d.project.conv.bias", j), F, 1, 1, 0, x);
    }
    int Ho = 2 * ch, Wo = 2 * cw;
    size_t np = (size_t)Ho * Wo;
    float *h0 = malloc(sizeof(float) * 16 * ch * cw), *h1 = malloc(sizeof(float) * 16 * np),
          *h2 = malloc(sizeof(float) * 16 * np);
    ref_conv(x, F, ch, cw, W_(r, "conv_depth.head.%d.weight", 0),
             W_(r, "conv_depth.head.%d.bias", 0), 16, 3, 1, 1, h0);
    ref_bilinear(h0, 16, ch, cw, h1, Ho, Wo, 1);
    ref_conv(h1, 16, Ho, Wo, W_(r, "conv_depth.head.%d.weight", 2),
             W_(r, "conv_depth.head.%d.bias", 2), 16, 3, 1, 1, h2);
    for (size_t i = 0; i < 16 * np; i++)
        h2[i] = h2[i] > 0 ? h2[i] : 0;
    ref_conv(h2, 16, Ho, Wo, W_(r, "conv_depth.head.%d.weight", 4),
             W_(r, "conv_depth.head.%d.bias", 4), 256, 1, 1, 0, logits);
    /* bins (spec §5.8), in double from the formulas */
    double bins[256];
    for (int i = 0; i < 256; i++) {
        double t = 1.0 - i / 255.0, lin = 0.001 + (12.0 - 0.001) * i / 255.0;
        double lg = exp(log(0.001) + (log(12.0) - log(0.001)) * i / 255.0);
        bins[i] = t * lg + (1 - t) * lin;
    }
    for (size_t p = 0; p < np; p++) {
        double den = 0, num = 0;
        for (int k = 0; k < 256; k++) {
            double v = logits[k * np + p];
            v = (v > 0 ? v : 0) + 1e-8;
            den += v;
            num += v * bins[k];
        }
        height[p] = (float)(num / den * 8.0);
    }
    for (int k = 0; k < 4; k++)
        free(G[k]);
    free(x), free(y), free(s), free(h0), free(h1), free(h2);
}

TEST(chmv2_odd_grid_matches_reference)
{
    setup s;
    dm_err err = { 0 };
    CHECKF(setup_open(&s, dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"),
                      NULL, &err) == 0,
           "%s", err.msg);
    enum { H = 48, W = 80 }; /* 3×5 patches: every fusion skip is resized */
    int Ho, Wo;
    dm_chm_out_size(H, W, &Ho, &Wo);
    CHECK(Ho == 64 && Wo == 96);
    float *img = rand_buf(3 * H * W);
    size_t np = (size_t)Ho * Wo;
    float *lg = malloc(256 * np * sizeof *lg), *hg = malloc(np * sizeof *hg);
    float *rlg = malloc(256 * np * sizeof *rlg), *rhg = malloc(np * sizeof *rhg);
    int rc = dm_chm_run(s.h, s.be, img, H, W, lg, hg, &err);
    /* the reference decoder on the same normed taps */
    int N = dm_model_tokens(s.m, H, W), D = s.m->cfg.embed_dim;
    float *tk[4];
    for (int k = 0; k < 4; k++)
        tk[k] = malloc(sizeof(float) * N * D);
    dm_vit_request req = { 4, dm_chm_taps(s.h), tk, NULL, NULL, 0 };
    int rc2 = dm_backend_forward(s.be, img, 1, H, W, &req, &err);
    double el = INFINITY, eh = INFINITY;
    if (!rc && !rc2) {
        for (int k = 0; k < 4; k++)
            dm_model_norm_tokens(s.m, tk[k], tk[k], N);
        rw r = { 0 };
        CHECK(dm_weights_open(dm_golden("chmv2_tiny/head.pth"), &r.w, NULL) == 0);
        ref_decoder(&r, s.m, tk, H / 16, W / 16, rlg, rhg);
        el = dm_rel_err(lg, rlg, 256 * (int64_t)np);
        eh = dm_rel_err(hg, rhg, (int64_t)np);
        for (int i = 0; i < r.n; i++)
            free(r.all[i]);
        dm_weights_close(r.w);
    }
    /* notebook post-processing back to 48×80 equals the formula */
    float *back = malloc(sizeof(float) * H * W), *rback = malloc(sizeof(float) * H * W);
    int rc3 = dm_chm_resize_to_input(hg, Ho, Wo, H, W, back, &err);
    ref_bilinear(hg, 1, Ho, Wo, rback, H, W, 0);
    double eb = rc3 ? INFINITY : dm_rel_err(back, rback, H * W);
    int inrange = 1;
    for (size_t i = 0; i < np; i++)
        inrange &= hg[i] >= 0.0079f && hg[i] <= 96.0f;
    for (int k = 0; k < 4; k++)
        free(tk[k]);
    free(img), free(lg), free(hg), free(rlg), free(rhg), free(back), free(rback);
    setup_free(&s);
    CHECKF(rc == 0 && rc2 == 0, "%s", err.msg);
    printf("    3x5 grid vs reference decoder: logits %.3g, height %.3g\n", el, eh);
    CHECKF(el <= 1e-5 && eh <= 1e-5, "odd grid: logits %.3g height %.3g", el, eh);
    CHECKF(eb <= 1e-6, "resize to input: %.3g", eb);
    CHECK(inrange);
}

/* A 40×72 image is centre-padded to 48×80 inside dm_chm_run, exactly as by hand. */
TEST(chmv2_run_pads_like_the_reference)
{
    setup s;
    dm_err err = { 0 };
    CHECKF(setup_open(&s, dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"),
                      NULL, &err) == 0,
           "%s", err.msg);
    int H = 40, W = 72, Hp, Wp, Ho, Wo;
    dm_chm_pad_size(H, W, &Hp, &Wp);
    dm_chm_out_size(H, W, &Ho, &Wo);
    float *img = rand_buf(3 * H * W), *pad = malloc(sizeof(float) * 3 * Hp * Wp);
    dm_chm_center_pad(img, H, W, pad);
    float *h1 = malloc(sizeof(float) * Ho * Wo), *h2 = malloc(sizeof(float) * Ho * Wo);
    int rc = dm_chm_run(s.h, s.be, img, H, W, NULL, h1, &err) ||
             dm_chm_run(s.h, s.be, pad, Hp, Wp, NULL, h2, &err);
    int same = !rc && !memcmp(h1, h2, sizeof(float) * Ho * Wo);
    free(img), free(pad), free(h1), free(h2);
    setup_free(&s);
    CHECKF(rc == 0, "%s", err.msg);
    CHECK(Hp == 48 && Wp == 80 && Ho == 64 && Wo == 96 && same);
}

/* The decoder on 3 threads gives the 1-thread bits (even and odd grids, in the other order the
 * second time: buffers reused across sizes); thread counts are checked. */
TEST(chmv2_threads_same_bits)
{
    setup s;
    dm_err err = { 0 };
    CHECKF(setup_open(&s, dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"),
                      NULL, &err) == 0,
           "%s", err.msg);
    static const int sz[2][2] = { { 48, 80 }, { 64, 64 } };
    float *img[2], *out[2][2]; /* [size][1 or 3 threads]: logits then heights */
    size_t n[2];
    int rc = dm_chm_threads(s.h) != 1, same = 1, Ho, Wo;
    for (int j = 0; j < 2; j++) {
        dm_chm_out_size(sz[j][0], sz[j][1], &Ho, &Wo);
        n[j] = (size_t)Ho * Wo;
        img[j] = rand_buf((size_t)3 * sz[j][0] * sz[j][1]);
        for (int t = 0; t < 2; t++)
            out[j][t] = malloc(257 * n[j] * sizeof(float));
    }
    for (int t = 0; t < 2 && !rc; t++) {
        if (t)
            rc = dm_chm_set_threads(s.h, 3, &err) || dm_chm_threads(s.h) != 3;
        for (int i = 0; i < 2 && !rc; i++) {
            int j = t ? 1 - i : i;
            rc = dm_chm_run(s.h, s.be, img[j], sz[j][0], sz[j][1], out[j][t],
                            out[j][t] + 256 * n[j], &err);
        }
    }
    for (int j = 0; j < 2; j++) {
        same &= !rc && !memcmp(out[j][0], out[j][1], 257 * n[j] * sizeof(float));
        free(img[j]), free(out[j][0]), free(out[j][1]);
    }
    int big = dm_chm_set_threads(s.h, 1 << 20, NULL) == DM_EINVAL && dm_chm_threads(s.h) == 3;
    int all = dm_chm_set_threads(s.h, 0, NULL) == 0 && dm_chm_threads(s.h) >= 1;
    setup_free(&s);
    CHECKF(rc == 0, "%s", err.msg);
    CHECK(same && big && all);
}

/* --- crafted heads: a safetensors copy of head.pth with edits ------------------------------------ */

typedef struct ctensor {
    char name[160];
    int nd;
    int64_t shape[8];
    float *data;
} ctensor;

static int load_tensors(const char *path, ctensor **out, int *n)
{
    dm_weights *w;
    if (dm_weights_open(path, &w, NULL))
        return -1;
    *n = (int)dm_weights_count(w);
    *out = calloc((size_t)*n + 4, sizeof **out);
    for (int i = 0; i < *n; i++) {
        const dm_tensor *t = dm_weights_at(w, i);
        ctensor *c = &(*out)[i];
        snprintf(c->name, sizeof c->name, "%s", t->name);
        c->nd = t->ndim;
        memcpy(c->shape, t->shape, sizeof c->shape);
        int64_t ne = dm_tensor_numel(t);
        c->data = malloc((size_t)ne * sizeof(float) + 1);
        dm_tensor_read_f32(t, 0, ne, c->data, NULL);
    }
    dm_weights_close(w);
    return 0;
}

static void free_tensors(ctensor *t, int n)
{
    for (int i = 0; i < n; i++)
        free(t[i].data);
    free(t);
}

static int64_t numel(const ctensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->nd; i++)
        n *= t->shape[i];
    return n;
}

/* Writes the tensors (name[0] == '\0': skipped) as an F32 safetensors file. */
static int write_safetensors(const char *path, const ctensor *t, int n)
{
    size_t cap = 256 + (size_t)n * 400, len = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(hdr + len, cap - len, "{");
    for (int i = 0; i < n; i++) {
        if (!t[i].name[0])
            continue;
        uint64_t nb = (uint64_t)numel(&t[i]) * 4;
        len += (size_t)snprintf(hdr + len, cap - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                                len > 1 ? "," : "", t[i].name);
        for (int d = 0; d < t[i].nd; d++)
            len += (size_t)snprintf(hdr + len, cap - len, "%s%lld", d ? "," : "",
                                    (long long)t[i].shape[d]);
        len += (size_t)snprintf(hdr + len, cap - len, "],\"data_offsets\":[%llu,%llu]}",
                                (unsigned long long)off, (unsigned long long)(off + nb));
        off += nb;
    }
    len += (size_t)snprintf(hdr + len, cap - len, "}");
    while (len % 8)
        hdr[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return -1;
    }
    uint64_t hl = len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(hl >> (8 * i));
    int ok = fwrite(le, 1, 8, f) == 8 && fwrite(hdr, 1, len, f) == len;
    for (int i = 0; ok && i < n; i++)
        if (t[i].name[0])
            ok = fwrite(t[i].data, 4, (size_t)numel(&t[i]), f) == (size_t)numel(&t[i]);
    free(hdr);
    return fclose(f) == 0 && ok ? 0 : -1;
}

static ctensor *find_t(ctensor *t, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].name, name))
            return &t[i];
    return NULL;
}

/* Crafts tmpdir/name.safetensors from head.pth with one edit: "drop", "narrow" (a head for a
 * D=64 backbone: every D-wide tensor cut to 64), "extra" (a batch-norm tensor), "prefix" (all
 * names under "head.", Meta names), "resize" (a ×3 transposed conv). */
static const char *craft(const char *edit)
{
    static char path[PATH_MAX];
    ctensor *t;
    int n;
    if (load_tensors(dm_golden("chmv2_tiny/head.pth"), &t, &n))
        return NULL;
    if (!strcmp(edit, "drop")) {
        find_t(t, n, "fusion_blocks.2.res_conv_unit1.conv2.conv.bias")->name[0] = '\0';
    } else if (!strcmp(edit, "narrow")) {
        for (int i = 0; i < n; i++) {
            ctensor *c = &t[i];
            if (strstr(c->name, "readout_projects") && c->nd == 2)
                c->shape[0] = 64, c->shape[1] = 128;
            else if (strstr(c->name, "readout_projects"))
                c->shape[0] = 64;
            else if (strstr(c->name, "reassemble_blocks.projects") && c->nd == 4)
                c->shape[1] = 64;
        }
    } else if (!strcmp(edit, "extra")) {
        ctensor *c = &t[n++];
        snprintf(c->name, sizeof c->name, "batchnorm_layers.0.weight");
        c->nd = 1, c->shape[0] = 16, c->data = calloc(16, sizeof(float));
    } else if (!strcmp(edit, "prefix")) {
        for (int i = 0; i < n; i++) {
            char b[160];
            snprintf(b, sizeof b, "head.%s", t[i].name);
            snprintf(t[i].name, sizeof t[i].name, "%s", b);
        }
    } else if (!strcmp(edit, "resize")) {
        ctensor *c = find_t(t, n, "reassemble_blocks.resize_layers.0.weight");
        c->shape[2] = c->shape[3] = 3; /* fewer values than stored: fine, the writer cuts */
    }
    snprintf(path, sizeof path, "%s/%s.safetensors", dm_test_tmpdir(), edit);
    int rc = write_safetensors(path, t, n);
    free_tensors(t, n);
    return rc ? NULL : path;
}

/* dm_chm_open on a crafted/bad head: fails with a message holding every string in want. */
static int open_fails(const char *backbone, const char *head, const int *taps, const char *w1,
                      const char *w2, char *msg, size_t nmsg)
{
    setup s;
    dm_err err = { 0 };
    int rc = setup_open(&s, backbone, head, taps, &err);
    snprintf(msg, nmsg, "%s", rc ? err.msg : "(no error)");
    if (!rc)
        setup_free(&s);
    return rc != 0 && strstr(err.msg, w1) && (!w2 || strstr(err.msg, w2));
}

TEST(chmv2_bad_heads_library)
{
    char msg[1100], bb[PATH_MAX];
    snprintf(bb, sizeof bb, "%s", dm_golden("chmv2_tiny/backbone.pth"));
    const char *p = craft("drop");
    CHECK(p);
    CHECKF(open_fails(bb, p, NULL, "missing tensor fusion_blocks.2.res_conv_unit1.conv2.conv.bias",
                      "expected shape [32]", msg, sizeof msg), "%s", msg);
    CHECK((p = craft("narrow")));
    CHECKF(open_fails(bb, p, NULL, "backbone of width 64", "has D=128", msg, sizeof msg), "%s",
           msg);
    CHECK((p = craft("extra")));
    CHECKF(open_fails(bb, p, NULL, "unexpected tensor batchnorm_layers.0.weight", NULL, msg,
                      sizeof msg), "%s", msg);
    CHECK((p = craft("resize")));
    CHECKF(open_fails(bb, p, NULL, "resize_layers.0.weight has shape [16,16,3,3], expected "
                      "[16,16,4,4]", NULL, msg, sizeof msg), "%s", msg);
    /* a backbone given as the head; a backbone-only HF file without --head */
    CHECKF(open_fails(bb, bb, NULL, "no CHMv2 DPT head", "--head", msg, sizeof msg), "%s", msg);
    CHECKF(open_fails(dm_golden("vitl_sat_tiny_hf/model.safetensors"), NULL, NULL, "no CHMv2 head",
                      "--head", msg, sizeof msg), "%s", msg);
    CHECKF(open_fails(bb, dm_golden("chmv2_tiny/nothere.pth"), NULL, "nothere.pth", NULL, msg,
                      sizeof msg), "%s", msg);
    /* taps: a 2-block backbone has no quarter points; bad overrides */
    CHECKF(open_fails(dm_golden("vitl_sat_tiny_hf/model.safetensors"),
                      dm_golden("chmv2_tiny/head.pth"), NULL, "not a multiple of 4", "--taps", msg,
                      sizeof msg),
           "%s", msg);
    int dup[4] = { 0, 1, 1, 2 }, big[4] = { 0, 1, 2, 9 };
    CHECKF(open_fails(bb, dm_golden("chmv2_tiny/head.pth"), dup, "tapped twice", NULL, msg,
                      sizeof msg),
           "%s", msg);
    CHECKF(open_fails(bb, dm_golden("chmv2_tiny/head.pth"), big, "tap block 9 does not exist", NULL,
                      msg, sizeof msg), "%s", msg);
    /* the same head under a "head." prefix binds; so does another backbone of the same width
     * and depth, with taps given in any order (used ascending) */
    setup s;
    dm_err err = { 0 };
    CHECK((p = craft("prefix")));
    CHECKF(setup_open(&s, bb, p, NULL, &err) == 0, "%s", err.msg);
    setup_free(&s);
    int rev[4] = { 3, 2, 1, 0 };
    CHECKF(setup_open(&s, dm_golden("vitl_sat_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"),
                      rev, &err) == 0,
           "%s", err.msg);
    const int *t = dm_chm_taps(s.h);
    int sorted = t[0] == 0 && t[1] == 1 && t[2] == 2 && t[3] == 3;
    setup_free(&s);
    CHECK(sorted);
    CHECK(dm_chm_detect(NULL) == 0);
    dm_chm_free(NULL);
}

/* --- the command line ------------------------------------------------------------------------- */

static void cli_case(const char *args, const char *cs, int want_layers)
{
    const char *tmp = dm_test_tmpdir();
    char cmd[8192];
    const char *out;
    snprintf(cmd, sizeof cmd, "rm -rf %s/o && %s forward -q %s -o %s/o", tmp, dm_bin(), args, tmp);
    int st = dm_run(cmd, &out);
    CHECKF(st == 0, "`%s`: exit %d: %s", args, st, out);
    static const char *names[] = { "head_logits", "height" };
    for (int i = 0; i < 2; i++) {
        char ours[PATH_MAX], ref[256], why[600];
        snprintf(ours, sizeof ours, "%s/o/%s.npy", tmp, names[i]);
        snprintf(ref, sizeof ref, "%s/%s.npy", cs, names[i]);
        double r = dm_cmp_npy(ours, dm_golden(ref), why, sizeof why);
        CHECKF(r >= 0, "`%s`: %s", args, why);
        CHECKF(r <= DM_GOLDEN_TOL, "`%s`: %s relative error %.3g", args, names[i], r);
    }
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/o/x_norm_patchtokens.npy", tmp);
    FILE *f = fopen(p, "rb");
    CHECKF(f != NULL, "`%s`: the backbone outputs are missing", args);
    fclose(f);
    if (want_layers) {
        snprintf(p, sizeof p, "%s/o/layer0_patch_raw.npy", tmp);
        CHECKF((f = fopen(p, "rb")) != NULL, "`%s`: layer outputs missing", args);
        fclose(f);
    }
}

TEST(chmv2_golden_cli)
{
    char a[4096], bb[PATH_MAX], hd[PATH_MAX], hf[PATH_MAX];
    snprintf(bb, sizeof bb, "%s", dm_golden("chmv2_tiny/backbone.pth"));
    snprintf(hd, sizeof hd, "%s", dm_golden("chmv2_tiny/head.pth"));
    snprintf(hf, sizeof hf, "%s", dm_golden("chmv2_tiny_hf/model.safetensors"));
    snprintf(a, sizeof a, "-m %s --head %s -i %s", bb, hd, dm_golden("chmv2_tiny/input.npy"));
    cli_case(a, "chmv2_tiny", 0);
    snprintf(a, sizeof a, "-m %s -i %s", hf, dm_golden("chmv2_tiny_hf/input.npy"));
    cli_case(a, "chmv2_tiny_hf", 0);
    /* uint8 pixels: the default normalization becomes chm with a head */
    snprintf(a, sizeof a, "-m %s --head %s -i %s", bb, hd, dm_golden("chmv2_tiny/input_u8.npy"));
    cli_case(a, "chmv2_tiny", 0);
    snprintf(a, sizeof a, "-m %s -i %s", hf, dm_golden("chmv2_tiny_hf/input_u8.npy"));
    cli_case(a, "chmv2_tiny_hf", 0);
    /* --layers sharing blocks with the taps, and explicit taps in any order */
    snprintf(a, sizeof a, "-m %s --head %s -i %s --layers 0,2 --taps 3,2,1,0 --threads 2", bb, hd,
             dm_golden("chmv2_tiny/input.npy"));
    cli_case(a, "chmv2_tiny", 1);
    snprintf(a, sizeof a, "-m %s -i %s --layers 0 --taps 0,1,2,3", hf,
             dm_golden("chmv2_tiny_hf/input_u8.npy"));
    cli_case(a, "chmv2_tiny_hf", 1);
}

TEST(chmv2_cli_norm_override_and_odd_size)
{
    const char *tmp = dm_test_tmpdir();
    char cmd[8192], ours[PATH_MAX], why[600];
    const char *out;
    /* --norm sat on u8 input: a different input, so the golden heights no longer match */
    snprintf(cmd, sizeof cmd, "%s forward -q -m %s -i %s -o %s/o --norm sat", dm_bin(),
             dm_golden("chmv2_tiny_hf/model.safetensors"), dm_golden("chmv2_tiny_hf/input_u8.npy"),
             tmp);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(ours, sizeof ours, "%s/o/height.npy", tmp);
    double r = dm_cmp_npy(ours, dm_golden("chmv2_tiny_hf/height.npy"), why, sizeof why);
    CHECKF(r > 1e-3, "--norm sat was ignored (%.3g)", r);
    /* a 40×72 normalized image: padded to 48×80 (3×5 patches), heights 64×96, as the library */
    int H = 40, W = 72;
    float *img = rand_buf(3 * (size_t)H * W);
    char in[PATH_MAX];
    snprintf(in, sizeof in, "%s/odd.npy", tmp);
    int64_t sh[3] = { 3, H, W };
    CHECK(dm_npy_write_f32(in, img, 3, sh, NULL) == 0);
    snprintf(cmd, sizeof cmd, "%s forward -m %s --head %s -i %s -o %s/p", dm_bin(),
             dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"), in, tmp);
    int st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "centre-padded to 80×48"), "exit %d: %s", st, out);
    dm_npy hgt, lg, pt;
    snprintf(ours, sizeof ours, "%s/p/height.npy", tmp);
    CHECK(dm_npy_read(ours, &hgt, NULL) == 0);
    snprintf(ours, sizeof ours, "%s/p/head_logits.npy", tmp);
    CHECK(dm_npy_read(ours, &lg, NULL) == 0);
    snprintf(ours, sizeof ours, "%s/p/x_norm_patchtokens.npy", tmp);
    CHECK(dm_npy_read(ours, &pt, NULL) == 0);
    int shapes = hgt.ndim == 2 && hgt.shape[0] == 64 && hgt.shape[1] == 96 && lg.ndim == 3 &&
                 lg.shape[0] == 256 && lg.shape[1] == 64 && lg.shape[2] == 96 &&
                 pt.shape[0] == 15;
    setup s;
    dm_err err = { 0 };
    double e = INFINITY;
    if (setup_open(&s, dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"), NULL,
                   &err) == 0) {
        float *h = malloc(sizeof(float) * 64 * 96);
        if (dm_chm_run(s.h, s.be, img, H, W, NULL, h, &err) == 0)
            e = dm_rel_err(hgt.f, h, 64 * 96);
        free(h);
        setup_free(&s);
    }
    free(img);
    dm_npy_free(&hgt), dm_npy_free(&lg), dm_npy_free(&pt);
    CHECK(shapes);
    CHECKF(e <= 1e-6, "CLI vs library on a padded image: %.3g %s", e, err.msg);
}

static void bad(const char *args, int want_code, const char *want_msg)
{
    const char *tmp = dm_test_tmpdir();
    char cmd[8192];
    const char *out;
    snprintf(cmd, sizeof cmd, "cd %s && %s%s forward %s -o out", tmp,
             dm_bin()[0] == '/' ? "" : "$OLDPWD/", dm_bin(), args);
    int st = dm_run(cmd, &out);
    char od[PATH_MAX];
    snprintf(od, sizeof od, "%s/out", tmp);
    CHECKF(st == want_code, "`%s`: exit %d, want %d: %s", args, st, want_code, out);
    CHECKF(strstr(out, want_msg) != NULL, "`%s`: message lacks \"%s\": %s", args, want_msg, out);
    CHECKF(dm_dir_empty_or_missing(od), "`%s`: left files in the output directory", args);
}

TEST(chmv2_cli_bad_inputs)
{
    char a[4096], bb[PATH_MAX], hd[PATH_MAX], in[PATH_MAX];
    snprintf(bb, sizeof bb, "%s", dm_golden("chmv2_tiny/backbone.pth"));
    snprintf(hd, sizeof hd, "%s", dm_golden("chmv2_tiny/head.pth"));
    snprintf(in, sizeof in, "%s", dm_golden("chmv2_tiny/input.npy"));
    snprintf(a, sizeof a, "-m %s --head %s -i %s", bb, bb, in);
    bad(a, 1, "no CHMv2 DPT head");
    snprintf(a, sizeof a, "-m %s --head nothere.pth -i %s", bb, in);
    bad(a, 1, "nothere.pth: cannot open");
    snprintf(a, sizeof a, "-m %s --head %s -i %s --taps 1,2", bb, hd, in);
    bad(a, 2, "--taps 1,2: expected 4");
    snprintf(a, sizeof a, "-m %s --head %s -i %s --taps 0,1,2,7", bb, hd, in);
    bad(a, 1, "tap block 7 does not exist");
    snprintf(a, sizeof a, "-m %s -i %s --taps 0,1,2,3", bb, in);
    bad(a, 1, "holds no CHMv2 head");
    snprintf(a, sizeof a, "-m %s --head %s -i %s", dm_golden("vitl_sat_tiny_hf/model.safetensors"),
             hd, dm_golden("vitl_sat_tiny_hf/input.npy"));
    bad(a, 1, "not a multiple of 4");
    const char *p = craft("narrow");
    CHECK(p);
    snprintf(a, sizeof a, "-m %s --head %s -i %s", bb, p, in);
    bad(a, 1, "has D=128");
    p = craft("drop");
    CHECK(p);
    snprintf(a, sizeof a, "-m %s --head %s -i %s", bb, p, in);
    bad(a, 1, "missing tensor");
    /* the head file given as the model: the backbone loader's message still applies */
    snprintf(a, sizeof a, "-m %s -i %s", hd, in);
    bad(a, 1, "no DINOv3 backbone");
}

/* A batch [2,3,H,W] gives [2,256,Ho,Wo] logits and [2,Ho,Wo] heights, each image's own. */
TEST(chmv2_cli_batch)
{
    const char *tmp = dm_test_tmpdir();
    dm_npy a;
    CHECK(dm_npy_read(dm_golden("chmv2_tiny/input.npy"), &a, NULL) == 0);
    size_t px = (size_t)a.numel;
    float *two = malloc(2 * px * sizeof *two);
    for (size_t i = 0; i < px; i++)
        two[i] = -a.f[i], two[px + i] = a.f[i]; /* the golden image second */
    int64_t sh[4] = { 2, 3, a.shape[1], a.shape[2] };
    char in[PATH_MAX], cmd[8192], p[PATH_MAX];
    snprintf(in, sizeof in, "%s/two.npy", tmp);
    int wrc = dm_npy_write_f32(in, two, 4, sh, NULL);
    free(two);
    dm_npy_free(&a);
    CHECK(wrc == 0);
    const char *out;
    snprintf(cmd, sizeof cmd, "%s forward -q -m %s --head %s -i %s -o %s/o", dm_bin(),
             dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"), in, tmp);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    dm_npy h, l, rh, rl;
    snprintf(p, sizeof p, "%s/o/height.npy", tmp);
    CHECK(dm_npy_read(p, &h, NULL) == 0);
    snprintf(p, sizeof p, "%s/o/head_logits.npy", tmp);
    CHECK(dm_npy_read(p, &l, NULL) == 0);
    CHECK(dm_npy_read(dm_golden("chmv2_tiny/height.npy"), &rh, NULL) == 0);
    CHECK(dm_npy_read(dm_golden("chmv2_tiny/head_logits.npy"), &rl, NULL) == 0);
    int shapes = h.ndim == 3 && h.shape[0] == 2 && h.numel == 2 * rh.numel && l.ndim == 4 &&
                 l.shape[0] == 2 && l.numel == 2 * rl.numel;
    double eh = shapes ? dm_rel_err(h.f + rh.numel, rh.f, rh.numel) : INFINITY;
    double el = shapes ? dm_rel_err(l.f + rl.numel, rl.f, rl.numel) : INFINITY;
    double diff = shapes ? dm_rel_err(h.f, rh.f, rh.numel) : 0; /* the first image differs */
    dm_npy_free(&h), dm_npy_free(&l), dm_npy_free(&rh), dm_npy_free(&rl);
    CHECK(shapes);
    CHECKF(eh <= DM_GOLDEN_TOL && el <= DM_GOLDEN_TOL && diff > 1e-3, "%.3g %.3g %.3g", eh, el,
           diff);
}

/* models/cpu/dops_host.c — models/dops.h on host memory through the CPU operators: the reference
 * a head's device path is tested against on machines without a GPU (the decode's sequence of
 * operations, its buffers and their sizes), and a way to run that path on the CPU. */
#include <stdlib.h>
#include <string.h>

#include "../dops.h"
#include "../model.h"
#include "../vit_math.h"
#include "../kernel_math.h"

static int h_alloc(void *ctx, size_t bytes, void **p, dm_err *err)
{
    (void)ctx;
    *p = malloc(bytes ? bytes : 1);
    return *p ? 0 : dm_err_oom(err);
}

static void h_release(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static int h_copy(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err)
{
    (void)ctx, (void)err;
    if (bytes)
        memmove(dst, src, bytes);
    return 0;
}

static int h_prec(void *ctx, int precision, dm_err *err)
{
    return ctx ? dm_ops_set_precision(ctx, precision, err) : precision == DM_PREC_FP32 ? 0
           : dm_err_set(err, DM_EUNSUPPORTED, "host operators without a workspace: fp32 only");
}

static int h_sgemm(void *ctx, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc, dm_err *err)
{
    (void)ctx, (void)err;
    dm_ops_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
}

static int h_conv(void *ctx, const dm_conv_spec *s, int y0, int ny, dm_err *err)
{
    int Hi = s->up2 ? 2 * s->H : s->H, Wi = s->up2 ? 2 * s->W : s->W;
    int Ho = dm_conv_out_size(Hi, s->k, s->stride, s->pad);
    int Wo = dm_conv_out_size(Wi, s->k, s->stride, s->pad);
    if (s->epi || !s->out)
        return dm_err_set(err, DM_EINVAL, "device conv: an output map and no band callback");
    if (ny == 0 || (y0 == 0 && ny == Ho))
        return dm_conv_run(ctx, s, err);
    if (y0 < 0 || ny < 0 || y0 + ny > Ho)
        return dm_err_set(err, DM_EINVAL, "device conv: rows %d..%d of %d", y0, y0 + ny, Ho);
    /* the whole map into scratch, then the rows asked for */
    size_t plane = (size_t)Ho * Wo, band = (size_t)ny * Wo;
    float *t = calloc((size_t)s->cout * plane, sizeof *t);
    if (!t)
        return dm_err_oom(err);
    if (s->flags & DM_CONV_ACCUM)
        for (int c = 0; c < s->cout; c++)
            memcpy(t + c * plane + (size_t)y0 * Wo, s->out + c * band, band * sizeof *t);
    dm_conv_spec f = *s;
    f.out = t;
    int rc = dm_conv_run(ctx, &f, err);
    for (int c = 0; !rc && c < s->cout; c++)
        memcpy(s->out + c * band, t + c * plane + (size_t)y0 * Wo, band * sizeof *t);
    free(t);
    return rc;
}

static int h_convt(void *ctx, const float *in, int cin, int H, int W, const float *w,
                   const float *bias, int cout, int k, float *out, dm_err *err)
{
    return dm_conv_transpose2d(ctx, in, cin, H, W, w, bias, cout, k, out, err);
}

static int h_resize(void *ctx, const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo,
                    int ac, dm_err *err)
{
    return dm_resize_bilinear(ctx, in, C, Hi, Wi, out, Ho, Wo, ac, err);
}

static int h_gelu(void *ctx, float *x, int64_t rows, int cols, const float *bias, dm_err *err)
{
    (void)ctx, (void)err;
    dm_bias_gelu(x, rows, cols, bias);
    return 0;
}

static int h_fill(void *ctx, float *x, int rows, int64_t cols, int64_t ld, const float *bias,
                  dm_err *err)
{
    (void)ctx, (void)err;
    for (int r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            x[r * ld + c] = bias[r];
    return 0;
}

static int h_add(void *ctx, float *x, const float *s, int64_t n, dm_err *err)
{
    (void)ctx, (void)err;
    for (int64_t i = 0; i < n; i++)
        x[i] += s[i];
    return 0;
}

static int h_ln(void *ctx, float *x, int64_t rows, int D, const float *w, const float *b,
                float eps, dm_err *err)
{
    (void)ctx, (void)err;
    dm_layernorm(x, x, rows, D, w, b, eps);
    return 0;
}

static int h_heights(void *ctx, const float *logits, int64_t ld, int64_t npix, int nbins,
                     const float *bins, float *height, dm_err *err)
{
    (void)ctx, (void)err;
    for (int64_t i = 0; i < npix; i++) /* the GPU kernel's per-pixel function */
        height[i] = dm_cm_chm_height(logits + i, ld, nbins, bins);
    return 0;
}

static int h_sync(void *ctx, dm_err *err)
{
    (void)ctx, (void)err;
    return 0;
}

void dm_dops_host(dm_dops *o, dm_ops *ws)
{
    memset(o, 0, sizeof *o);
    o->ctx = ws;
    o->alloc = h_alloc, o->release = h_release, o->put = h_copy, o->get = h_copy;
    o->copy = h_copy, o->set_precision = h_prec, o->sgemm = h_sgemm, o->conv = h_conv;
    o->conv_t = h_convt, o->resize = h_resize, o->bias_gelu = h_gelu, o->fill_rows = h_fill;
    o->add = h_add, o->layernorm = h_ln, o->heights = h_heights, o->sync = h_sync;
}

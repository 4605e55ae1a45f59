/* heads/conv.c — convolutions and bilinear resizing for the DPT heads (see conv.h). Convolutions
 * are GEMMs: im2col of a band of output rows into a bounded scratch matrix, then
 * out[Cout, band] += W[Cout, Cin·k·k] × col[Cin·k·k, band]. Bias (and the residual, with
 * DM_CONV_ACCUM) is placed in the output first so the GEMM accumulates onto it with beta = 1. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv.h"

/* Scratch cap for one im2col band, in floats (16 MB): big enough that the GEMM's N dimension
 * stays in the thousands for ViT-L widths, small enough to stay in a large cache level. */
#define COL_MAX ((size_t)4 << 20)

int dm_conv_out_size(int n, int k, int stride, int pad)
{
    return (n + 2 * pad - k) / stride + 1;
}

/* Bias (or zero) into out, or bias added onto it when accumulating. */
static void init_out(float *out, int cout, size_t plane, const float *bias, int accum)
{
    for (int o = 0; o < cout; o++) {
        float *p = out + (size_t)o * plane;
        float b = bias ? bias[o] : 0.0f;
        if (!accum) {
            for (size_t i = 0; i < plane; i++)
                p[i] = b;
        } else if (bias) {
            for (size_t i = 0; i < plane; i++)
                p[i] += b;
        }
    }
}

static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* col[(ci·k+ky)·k+kx, yy·Wo+x] = in[ci, (y0+yy)·s−p+ky, x·s−p+kx] (0 outside), yy < n. */
static void im2col(const float *in, int cin, int H, int W, int k, int s, int p, int y0, int n,
                   int Wo, int relu_in, float *col)
{
    size_t ncol = (size_t)n * Wo;
    for (int ci = 0; ci < cin; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(ci * k + ky) * k + kx) * ncol;
                /* output columns whose input column lies inside the image */
                int xlo = 0, xhi = Wo;
                while (xlo < Wo && xlo * s - p + kx < 0)
                    xlo++;
                while (xhi > xlo && (xhi - 1) * s - p + kx >= W)
                    xhi--;
                for (int yy = 0; yy < n; yy++) {
                    float *d = dst + (size_t)yy * Wo;
                    int iy = (y0 + yy) * s - p + ky;
                    if (iy < 0 || iy >= H) {
                        memset(d, 0, (size_t)Wo * sizeof *d);
                        continue;
                    }
                    const float *src = in + ((size_t)ci * H + iy) * W;
                    int off = kx - p; /* x·s + off >= 0 for x >= xlo */
                    for (int x = 0; x < xlo; x++)
                        d[x] = 0.0f;
                    if (s == 1) {
                        if (relu_in)
                            for (int x = xlo; x < xhi; x++)
                                d[x] = relu(src[x + off]);
                        else if (xhi > xlo)
                            memcpy(d + xlo, src + xlo + off, (size_t)(xhi - xlo) * sizeof *d);
                    } else {
                        for (int x = xlo; x < xhi; x++) {
                            float v = src[x * s + off];
                            d[x] = relu_in ? relu(v) : v;
                        }
                    }
                    for (int x = xhi; x < Wo; x++)
                        d[x] = 0.0f;
                }
            }
}

int dm_conv2d(const float *in, int cin, int H, int W, const float *w, const float *bias, int cout,
              int k, int stride, int pad, int flags, float *out, dm_err *err)
{
    if (cin < 1 || cout < 1 || k < 1 || stride < 1 || pad < 0 || H < 1 || W < 1)
        return dm_err_set(err, DM_EINVAL, "conv2d: bad geometry (Cin %d, Cout %d, %d×%d px, "
                          "kernel %d, stride %d, pad %d)", cin, cout, W, H, k, stride, pad);
    int Ho = dm_conv_out_size(H, k, stride, pad), Wo = dm_conv_out_size(W, k, stride, pad);
    if (Ho < 1 || Wo < 1)
        return dm_err_set(err, DM_EINVAL, "conv2d: a %d×%d px input is smaller than the %d×%d "
                          "kernel", W, H, k, k);
    size_t plane = (size_t)Ho * Wo;
    init_out(out, cout, plane, bias, flags & DM_CONV_ACCUM);
    if (k == 1 && stride == 1 && pad == 0 && !(flags & DM_CONV_RELU_IN)) {
        /* a 1×1 convolution is a GEMM on the input as it lies */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, (int)plane, cin, 1.0f, w, cin,
                    in, (int)plane, 1.0f, out, (int)plane);
        return 0;
    }
    size_t K = (size_t)cin * k * k;
    size_t rows = COL_MAX / (K * (size_t)Wo);
    int nr = rows < 1 ? 1 : rows > (size_t)Ho ? Ho : (int)rows;
    float *col = malloc(K * (size_t)nr * Wo * sizeof *col);
    if (!col)
        return dm_err_oom(err);
    for (int y0 = 0; y0 < Ho; y0 += nr) {
        int n = Ho - y0 < nr ? Ho - y0 : nr;
        im2col(in, cin, H, W, k, stride, pad, y0, n, Wo, flags & DM_CONV_RELU_IN, col);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, n * Wo, (int)K, 1.0f, w,
                    (int)K, col, n * Wo, 1.0f, out + (size_t)y0 * Wo, (int)plane);
    }
    free(col);
    return 0;
}

int dm_conv_transpose2d(const float *in, int cin, int H, int W, const float *w, const float *bias,
                        int cout, int k, float *out, dm_err *err)
{
    if (cin < 1 || cout < 1 || k < 1 || H < 1 || W < 1)
        return dm_err_set(err, DM_EINVAL, "conv_transpose2d: bad geometry (Cin %d, Cout %d, "
                          "%d×%d px, kernel %d)", cin, cout, W, H, k);
    /* T[(o·k+ky)·k+kx, y·W+x] = Σ_i w[i, (o,ky,kx)] in[i, y·W+x]: w read transposed in place;
     * done in bands of input rows so T stays within the scratch cap */
    size_t M = (size_t)cout * k * k, HW = (size_t)H * W;
    size_t rows = COL_MAX / (M * (size_t)W);
    int nr = rows < 1 ? 1 : rows > (size_t)H ? H : (int)rows;
    float *T = malloc(M * (size_t)nr * W * sizeof *T);
    if (!T)
        return dm_err_oom(err);
    int Wout = k * W;
    for (int y0 = 0; y0 < H; y0 += nr) {
        int n = H - y0 < nr ? H - y0 : nr;
        size_t nc = (size_t)n * W;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)M, (int)nc, cin, 1.0f, w,
                    (int)M, in + (size_t)y0 * W, (int)HW, 0.0f, T, (int)nc);
        for (int o = 0; o < cout; o++) {
            float b = bias ? bias[o] : 0.0f;
            float *po = out + (size_t)o * k * H * Wout;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    const float *t = T + ((size_t)(o * k + ky) * k + kx) * nc;
                    for (int y = 0; y < n; y++) {
                        float *d = po + (size_t)(k * (y0 + y) + ky) * Wout + kx;
                        const float *s = t + (size_t)y * W;
                        for (int x = 0; x < W; x++)
                            d[(size_t)x * k] = s[x] + b;
                    }
                }
        }
    }
    free(T);
    return 0;
}

/* Source index pairs and weights along one axis, as PyTorch's CPU upsample_bilinear2d kernel
 * computes them in fp32 (area_pixel_compute_source_index + guard_index_and_lambda). */
static void lin_table(int in, int out, int ac, int *i0, int *i1, float *lam)
{
    float scale = ac ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f)
                     : (float)in / (float)out;
    for (int d = 0; d < out; d++) {
        float src = ac ? scale * (float)d : scale * ((float)d + 0.5f) - 0.5f;
        if (src < 0.0f)
            src = 0.0f;
        int i = (int)floorf(src);
        if (i > in - 1)
            i = in - 1;
        float l = src - (float)i;
        l = l < 0.0f ? 0.0f : l > 1.0f ? 1.0f : l;
        i0[d] = i;
        i1[d] = i < in - 1 ? i + 1 : i;
        lam[d] = l;
    }
}

int dm_resize_bilinear(const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo,
                       int align_corners, dm_err *err)
{
    if (C < 1 || Hi < 1 || Wi < 1 || Ho < 1 || Wo < 1)
        return dm_err_set(err, DM_EINVAL, "bilinear resize: bad size (%d planes, %d×%d → %d×%d)",
                          C, Wi, Hi, Wo, Ho);
    size_t n = (size_t)Ho + Wo;
    int *idx = malloc(2 * n * sizeof *idx);
    float *lam = malloc(n * sizeof *lam);
    if (!idx || !lam) {
        free(idx);
        free(lam);
        return dm_err_oom(err);
    }
    int *y0 = idx, *y1 = idx + Ho, *x0 = idx + 2 * Ho, *x1 = idx + 2 * Ho + Wo;
    float *ly = lam, *lx = lam + Ho;
    lin_table(Hi, Ho, align_corners, y0, y1, ly);
    lin_table(Wi, Wo, align_corners, x0, x1, lx);
    for (int c = 0; c < C; c++) {
        const float *plane = in + (size_t)c * Hi * Wi;
        for (int y = 0; y < Ho; y++) {
            const float *r0 = plane + (size_t)y0[y] * Wi, *r1 = plane + (size_t)y1[y] * Wi;
            float wy1 = ly[y], wy0 = 1.0f - wy1;
            float *d = out + ((size_t)c * Ho + y) * Wo;
            for (int x = 0; x < Wo; x++) {
                float wx1 = lx[x], wx0 = 1.0f - wx1;
                /* the order of PyTorch's separable kernel: along x inside, then along y */
                d[x] = wy0 * (wx0 * r0[x0[x]] + wx1 * r0[x1[x]]) +
                       wy1 * (wx0 * r1[x0[x]] + wx1 * r1[x1[x]]);
            }
        }
    }
    free(idx);
    free(lam);
    return 0;
}

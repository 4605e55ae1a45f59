/* models/vit_math.c — see vit_math.h. Loops are written so the compiler vectorises them
 * (-fopenmp-simd); exp and erf are polynomial forms that vectorise, accurate to ~1e-7. */
#include "vit_math.h"
#include "kernel_math.h"

#include <math.h>
#include <string.h>

/* exp and erf are kernel_math.h's, the CUDA kernels' own: one arithmetic for both backends */
#define exp_inl dm_cm_expf
#define erf_inl dm_cm_erff

float dm_expf(float x) { return exp_inl(x); }
float dm_erff(float x) { return erf_inl(x); }

/* Reductions in 16 fixed lanes combined in a fixed order: a vector loop's result would follow
 * the buffer's alignment (where the compiler starts its aligned part), so a token's value could
 * change with the buffer it sits in, the batch or the thread count. This way it cannot, and a
 * resumed or sharded run gives the same bits as one that ran straight through. */
#define LANES 16

static inline double lanes_sum_d(const double *acc)
{
    double s = 0.0;
    for (int k = 0; k < LANES; k++)
        s += acc[k];
    return s;
}

void dm_layernorm(const float *x, float *y, int64_t rows, int D, const float *w, const float *b,
                  float eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double acc[LANES] = { 0 };
        int i = 0;
        for (; i + LANES <= D; i += LANES)
#pragma omp simd
            for (int k = 0; k < LANES; k++)
                acc[k] += xr[i + k];
        for (; i < D; i++)
            acc[i % LANES] += xr[i];
        float mean = (float)(lanes_sum_d(acc) / D);
        for (int k = 0; k < LANES; k++)
            acc[k] = 0.0;
        for (i = 0; i + LANES <= D; i += LANES)
#pragma omp simd
            for (int k = 0; k < LANES; k++) {
                float d = xr[i + k] - mean;
                acc[k] += (double)d * d;
            }
        for (; i < D; i++) {
            float d = xr[i] - mean;
            acc[i % LANES] += (double)d * d;
        }
        float rstd = (float)(1.0 / sqrt(lanes_sum_d(acc) / D + eps));
#pragma omp simd
        for (int i = 0; i < D; i++)
            yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
}

void dm_rope_tables(const float *periods, int hd, int h, int w, float *cosv, float *sinv)
{
    int nf = hd / 4;
    for (int r = 0; r < h; r++) {
        for (int c = 0; c < w; c++) {
            /* fp32 exactly as the reference: coord = 2*((i+0.5)/n) - 1; angle = (2π·coord)/period */
            float cy = 2.0f * (((float)r + 0.5f) / (float)h) - 1.0f;
            float cx = 2.0f * (((float)c + 0.5f) / (float)w) - 1.0f;
            float *co = cosv + ((int64_t)r * w + c) * hd, *si = sinv + ((int64_t)r * w + c) * hd;
            for (int i = 0; i < nf; i++) {
                float ay = (6.2831855f * cy) / periods[i];
                float ax = (6.2831855f * cx) / periods[i];
                co[i] = co[i + 2 * nf] = cosf(ay);
                si[i] = si[i + 2 * nf] = sinf(ay);
                co[i + nf] = co[i + 3 * nf] = cosf(ax);
                si[i + nf] = si[i + 3 * nf] = sinf(ax);
            }
        }
    }
}

void dm_rope_apply(float *z, int64_t ld, int n, int hd, const float *cosv, const float *sinv)
{
    int half = hd / 2;
    for (int t = 0; t < n; t++) {
        float *v = z + (int64_t)t * ld;
        const float *co = cosv + (int64_t)t * hd, *si = sinv + (int64_t)t * hd;
#pragma omp simd
        for (int j = 0; j < half; j++) {
            float lo = v[j], hi = v[j + half];
            v[j] = lo * co[j] - hi * si[j];
            v[j + half] = hi * co[j + half] + lo * si[j + half];
        }
    }
}

void dm_softmax_rows_unnorm(float *s, int rows, int cols, int64_t ld, float *inv_sum)
{
    for (int r = 0; r < rows; r++) {
        float *v = s + (int64_t)r * ld;
        float mx = -INFINITY; /* a maximum is exact in any order */
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < cols; j++)
            mx = v[j] > mx ? v[j] : mx;
        float acc[LANES] = { 0 };
        int j = 0;
        for (; j + LANES <= cols; j += LANES)
#pragma omp simd
            for (int k = 0; k < LANES; k++) {
                float e = exp_inl(v[j + k] - mx);
                v[j + k] = e;
                acc[k] += e;
            }
        for (; j < cols; j++) {
            float e = exp_inl(v[j] - mx);
            v[j] = e;
            acc[j % LANES] += e;
        }
        float sum = 0.0f;
        for (int k = 0; k < LANES; k++)
            sum += acc[k];
        inv_sum[r] = 1.0f / sum;
    }
}

void dm_softmax_rows(float *s, int rows, int cols, int64_t ld)
{
    for (int r = 0; r < rows; r++) {
        float inv, *v = s + (int64_t)r * ld;
        dm_softmax_rows_unnorm(v, 1, cols, ld, &inv);
#pragma omp simd
        for (int j = 0; j < cols; j++)
            v[j] *= inv;
    }
}

void dm_bias_gelu(float *x, int64_t rows, int cols, const float *bias)
{
    for (int64_t r = 0; r < rows; r++) {
        float *v = x + r * cols;
#pragma omp simd
        for (int j = 0; j < cols; j++) {
            float a = v[j] + bias[j];
            v[j] = 0.5f * a * (1.0f + erf_inl(a * 0.70710678118654752f));
        }
    }
}

void dm_bias_swiglu(float *g, const float *u, int64_t rows, int cols, const float *bg,
                    const float *bu)
{
    for (int64_t r = 0; r < rows; r++) {
        float *gv = g + r * cols;
        const float *uv = u + r * cols;
#pragma omp simd
        for (int j = 0; j < cols; j++) {
            float a = gv[j] + bg[j];
            float silu = a / (1.0f + exp_inl(-a));
            gv[j] = silu * (uv[j] + bu[j]);
        }
    }
}

void dm_residual_ls(float *x, const float *y, int64_t rows, int D, const float *bias,
                    const float *gamma)
{
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * D;
        const float *yr = y + r * D;
#pragma omp simd
        for (int i = 0; i < D; i++)
            xr[i] += gamma[i] * (yr[i] + bias[i]);
    }
}

void dm_add_bias(float *x, int64_t rows, int cols, int64_t ld, const float *bias)
{
    for (int64_t r = 0; r < rows; r++) {
        float *v = x + r * ld;
#pragma omp simd
        for (int j = 0; j < cols; j++)
            v[j] += bias[j];
    }
}

void dm_im2patch(const float *img, int H, int W, float *out)
{
    int h = H / 16, w = W / 16;
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++) {
            float *o = out + ((int64_t)r * w + c) * 768;
            for (int ch = 0; ch < 3; ch++)
                for (int ky = 0; ky < 16; ky++)
                    memcpy(o + ch * 256 + ky * 16,
                           img + (int64_t)ch * H * W + (int64_t)(16 * r + ky) * W + 16 * c,
                           16 * sizeof(float));
        }
}

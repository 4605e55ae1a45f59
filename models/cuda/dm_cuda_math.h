/* models/cuda/dm_cuda_math.h — the numerics and index arithmetic of the CUDA kernels, as
 * functions that compile both as C11 (the CPU tests run them against models/vit_math.c and
 * models/cpu/bf16.h: tests/test_cuda_math.c) and as CUDA C __host__ __device__ code (the kernels
 * call them). What a kernel computes per element lives here; the kernels only add the threads.
 *   - fp32 → bf16 round to nearest even, NaN kept quiet: bit for bit dm_f32_bf16 (bf16.h);
 *   - exp, erf as the same polynomials as vit_math.c (GELU(erf), SiLU, softmax numerators);
 *   - LayerNorm of one row (two passes: mean, then the centred variance);
 *   - RoPE: the patch index of a token and the rotate-half pair, as dm_rope_apply;
 *   - softmax of one row, unnormalised with 1/Σ aside, as dm_softmax_rows_unnorm;
 *   - the patch matrix's source index (im2col), as dm_im2patch. */
#ifndef DM_CUDA_MATH_H
#define DM_CUDA_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define DM_HD static __host__ __device__ __forceinline__
#else
#define DM_HD static inline
#endif

DM_HD uint32_t dm_cm_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

DM_HD float dm_cm_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN → quiet NaN with its sign and top payload bits (as bf16.h). */
DM_HD uint16_t dm_cm_f32_bf16(float f)
{
    uint32_t u = dm_cm_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

DM_HD float dm_cm_bf16_f32(uint16_t h) { return dm_cm_float((uint32_t)h << 16); }

/* exp as vit_math.c's exp_inl (Cephes-style, degree-7 polynomial; within a few ulp of expf) */
DM_HD float dm_cm_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    return p * dm_cm_float((uint32_t)(((int32_t)n + 127) << 23));
}

/* erf as vit_math.c's erf_inl */
DM_HD float dm_cm_erff(float a)
{
    float t = fabsf(a), s = a * a;
    float r = fmaf(-1.72853470e-5f, t, 3.83197126e-4f);
    float u = fmaf(-3.88396438e-3f, t, 2.42546219e-2f);
    r = fmaf(r, s, u);
    r = fmaf(r, t, -1.06777877e-1f);
    r = fmaf(r, t, -6.34846687e-1f);
    r = fmaf(r, t, -1.28717512e-1f);
    r = fmaf(r, t, -t);
    float big = copysignf(1.0f - dm_cm_expf(r), a);
    float p = -5.96761703e-4f;
    p = fmaf(p, s, 4.99119423e-3f);
    p = fmaf(p, s, -2.67681349e-2f);
    p = fmaf(p, s, 1.12819925e-1f);
    p = fmaf(p, s, -3.76125336e-1f);
    p = fmaf(p, s, 1.28379166e-1f);
    float small = fmaf(p, a, a);
    return t > 0.927734375f ? big : small;
}

/* GELU, the exact erf form (not the tanh approximation of cuBLASLt's GELU epilogue) */
DM_HD float dm_cm_gelu(float a) { return 0.5f * a * (1.0f + dm_cm_erff(a * 0.70710678118654752f)); }

DM_HD float dm_cm_silu(float a) { return a / (1.0f + dm_cm_expf(-a)); }

/* One LayerNorm output given the row's statistics */
DM_HD float dm_cm_ln_out(float x, float mean, float rstd, float w, float b)
{
    return (x - mean) * rstd * w + b;
}

DM_HD float dm_cm_rstd(float var, float eps) { return 1.0f / sqrtf(var + eps); }

/* y = LN(x) of one row of D values, serially: the reference of the kernel's two passes */
DM_HD void dm_cm_layernorm_row(const float *x, float *y, int D, const float *w, const float *b,
                               float eps)
{
    float s = 0.0f;
    for (int i = 0; i < D; i++)
        s += x[i];
    float mean = s / (float)D, v = 0.0f;
    for (int i = 0; i < D; i++) {
        float d = x[i] - mean;
        v = fmaf(d, d, v);
    }
    float rstd = dm_cm_rstd(v / (float)D, eps);
    for (int i = 0; i < D; i++)
        y[i] = dm_cm_ln_out(x[i], mean, rstd, w[i], b[i]);
}

/* Token t of an image of N tokens, the last hw of which are patches: its patch index, or -1
 * for the class and register tokens (no RoPE) */
DM_HD int dm_cm_rope_patch(int t, int N, int hw)
{
    int p = t - (N - hw);
    return p >= 0 ? p : -1;
}

/* The rotate-half pair (j, j + hd/2) of one head with tables co, si of the token (hd entries):
 * as dm_rope_apply */
DM_HD void dm_cm_rope_pair(float lo, float hi, const float *co, const float *si, int j, int half,
                           float *olo, float *ohi)
{
    *olo = lo * co[j] - hi * si[j];
    *ohi = hi * co[j + half] + lo * si[j + half];
}

/* Softmax numerators of one row in place, returns 1/Σ (dm_softmax_rows_unnorm's result; the
 * kernel sums in another order) */
DM_HD float dm_cm_softmax_row(float *v, int n)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++)
        mx = v[j] > mx ? v[j] : mx;
    for (int j = 0; j < n; j++) {
        v[j] = dm_cm_expf(v[j] - mx);
        sum += v[j];
    }
    return 1.0f / sum;
}

/* im2col of the patch embedding: element k (0..767, order ch, ky, kx: the conv weight's) of
 * patch p (row-major over the (H/16)×(W/16) grid) of an image [3, H, W]: its offset */
DM_HD int64_t dm_cm_patch_src(int H, int W, int p, int k)
{
    int w = W / 16, r = p / w, c = p % w;
    int ch = k >> 8, ky = (k >> 4) & 15, kx = k & 15;
    return (int64_t)ch * H * W + (int64_t)(16 * r + ky) * W + 16 * c + kx;
}

#endif

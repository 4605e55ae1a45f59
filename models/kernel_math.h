/* models/kernel_math.h — the per-element numerics and index arithmetic of the backends' kernels,
 * as functions that compile both as C11 (the CPU backend calls the shared ones; the tests run the
 * rest against the CPU code: tests/test_cuda_math.c, tests/test_cuda_head.c) and as CUDA C
 * __host__ __device__ code (the CUDA kernels call them, adding only the threads).
 *   - fp32 → bf16 round to nearest even, NaN kept quiet (the CPU's dm_f32_bf16 is this one);
 *   - exp, erf: the polynomials vit_math.c computes with (GELU(erf), SiLU, softmax numerators);
 *   - LayerNorm of one row (two passes: mean, then the centred variance);
 *   - RoPE: the patch index of a token and the rotate-half pair, as dm_rope_apply;
 *   - softmax of one row, unnormalised with 1/Σ aside, as dm_softmax_rows_unnorm;
 *   - the patch matrix's source index (im2col), as dm_im2patch;
 *   - the DPT head's operators (models/cpu/ops_cpu.c): a convolution's im2col source, the
 *     bilinear source pair and weight along an axis (align_corners 0 and 1, as lin_table), the
 *     bilinear value of a plane in the CPU's order, the transposed convolution's gather index,
 *     and the CHMv2 height of a pixel from its bin logits (as heights_ld). */
#ifndef DM_KERNEL_MATH_H
#define DM_KERNEL_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define DM_HD static __host__ __device__ __forceinline__
#else /* always inlined: the CPU's loops over them must vectorise */
#define DM_HD static inline __attribute__((always_inline))
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

/* exp, Cephes-style: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7 polynomial, then 2^n (within
 * a few ulp of expf). Ternaries, not fminf/fmaxf: those are calls unless NaN-free. */
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

/* erf: minimax polynomials (a widely used single-precision erff design, ~2 ulp): x·P(x²) near 0,
 * 1 - exp(Q(|x|)) beyond; both branches computed and one selected, so loops vectorise. */
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

/* --- attention with an online softmax (attention.cu) ------------------------------------------
 * Keys are taken in tiles; each query row keeps its running max m and sum l, and its output
 * accumulator o. A tile's scores s (scaled) move them: m' = max(m, max s), alpha = e^(m − m'),
 * p = e^(s − m') (rounded to bf16 for the product, as the two-product path rounds its
 * numerators), l' = alpha·l + Σp (the unrounded p, as softmax.cu sums them), o' = alpha·o + p·V;
 * at the end o/l. The same result as softmax then PV up to rounding. */

/* e^(m_old − m_new), 0 before the first tile (m_old = −inf) */
DM_HD float dm_cm_online_alpha(float m_old, float m_new)
{
    return m_old == -INFINITY ? 0.0f : dm_cm_expf(m_old - m_new);
}

/* One query row of one head, serially, in tiles of `tile` keys, as the kernel computes it:
 * q [hd], K and V rows of stride ld; o [hd] out. Inputs are taken as they are (the kernel's are
 * bf16 already). The reference tests/test_cuda_head.c compares with a plain softmax. */
DM_HD void dm_cm_attention_row(const float *q, const float *K, const float *V, int64_t ld, int n,
                               int hd, float scale, int tile, float *o)
{
    float m = -INFINITY, l = 0.0f;
    for (int i = 0; i < hd; i++)
        o[i] = 0.0f;
    for (int j0 = 0; j0 < n; j0 += tile) {
        int nt = n - j0 < tile ? n - j0 : tile;
        float mx = -INFINITY;
        for (int j = 0; j < nt; j++) {
            float s = 0.0f;
            for (int i = 0; i < hd; i++)
                s = fmaf(q[i], K[(int64_t)(j0 + j) * ld + i], s);
            s *= scale;
            mx = s > mx ? s : mx;
        }
        float mn = m > mx ? m : mx, alpha = dm_cm_online_alpha(m, mn), sum = 0.0f;
        for (int i = 0; i < hd; i++)
            o[i] *= alpha;
        for (int j = 0; j < nt; j++) {
            float s = 0.0f;
            for (int i = 0; i < hd; i++)
                s = fmaf(q[i], K[(int64_t)(j0 + j) * ld + i], s);
            float p = dm_cm_expf(s * scale - mn);
            sum += p;
            float pb = dm_cm_bf16_f32(dm_cm_f32_bf16(p));
            for (int i = 0; i < hd; i++)
                o[i] = fmaf(pb, V[(int64_t)(j0 + j) * ld + i], o[i]);
        }
        l = alpha * l + sum;
        m = mn;
    }
    for (int i = 0; i < hd; i++)
        o[i] /= l;
}

/* --- the DPT head's operators ---------------------------------------------------------------- */

/* Output side of a convolution, as dm_conv_out_size (the plugin links none of the host's code) */
DM_HD int dm_cm_conv_out(int n, int k, int stride, int pad) { return (n + 2 * pad - k) / stride + 1; }

/* Row kk = (ci·k + ky)·k + kx of the im2col matrix at output pixel (y, x) of a convolution
 * (kernel k, stride s, padding p) on a Hi×Wi input: its channel ci, and in *iy, *ix the input
 * pixel; returns -1 where that pixel is padding (the column holds 0). */
DM_HD int dm_cm_conv_src(int kk, int y, int x, int k, int s, int p, int Hi, int Wi, int *iy,
                         int *ix)
{
    int ci = kk / (k * k), r = kk % (k * k), ky = r / k, kx = r % k;
    *iy = y * s - p + ky;
    *ix = x * s - p + kx;
    return *iy < 0 || *iy >= Hi || *ix < 0 || *ix >= Wi ? -1 : ci;
}

/* Output index d of a bilinear resize along one axis (in → out): source pair i0, i1 and the
 * weight of i1, as PyTorch's CPU upsample_bilinear2d in fp32 (ops_cpu.c's lin_table). */
DM_HD void dm_cm_lin_src(int d, int in, int out, int ac, int *i0, int *i1, float *lam)
{
    float scale = ac ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f)
                     : (float)in / (float)out;
    float src = ac ? scale * (float)d : scale * ((float)d + 0.5f) - 0.5f;
    if (src < 0.0f)
        src = 0.0f;
    int i = (int)floorf(src);
    if (i > in - 1)
        i = in - 1;
    float l = src - (float)i;
    l = l < 0.0f ? 0.0f : l > 1.0f ? 1.0f : l;
    *i0 = i;
    *i1 = i < in - 1 ? i + 1 : i;
    *lam = l;
}

/* The bilinear value at output (y, x) of a plane of Wi columns given both axes' pairs: along x
 * inside, then along y (the order of the CPU's bilinear_row and of bilinear_h + bilinear_v) */
DM_HD float dm_cm_bilinear(const float *plane, int Wi, int y0, int y1, float ly, int x0, int x1,
                           float lx)
{
    const float *r0 = plane + (int64_t)y0 * Wi, *r1 = plane + (int64_t)y1 * Wi;
    float wx0 = 1.0f - lx, wy0 = 1.0f - ly;
    float h0 = wx0 * r0[x0] + lx * r0[x1];
    float h1 = wx0 * r1[x0] + lx * r1[x1];
    return wy0 * h0 + ly * h1;
}

/* The value at (y, x) of a plane H×W resized bilinearly to Ho×Wo */
DM_HD float dm_cm_resize_at(const float *plane, int H, int W, int Ho, int Wo, int ac, int y,
                            int x)
{
    int y0, y1, x0, x1;
    float ly, lx;
    dm_cm_lin_src(y, H, Ho, ac, &y0, &y1, &ly);
    dm_cm_lin_src(x, W, Wo, ac, &x0, &x1, &lx);
    return dm_cm_bilinear(plane, W, y0, y1, ly, x0, x1, lx);
}

/* ConvTranspose2d with kernel = stride = k, no padding, as a product T[(o·k+ky)·k+kx, y·W+x]
 * (ops_cpu.c's convt_task) then a gather: output (o, Y, X) of the k·H × k·W map reads T at */
DM_HD int64_t dm_cm_convt_src(int o, int Y, int X, int k, int H, int W)
{
    int y = Y / k, ky = Y % k, x = X / k, kx = X % k;
    return ((int64_t)(o * k + ky) * k + kx) * ((int64_t)H * W) + (int64_t)y * W + x;
}

/* CHMv2 height of one pixel from its nbins logits z[b·ld] (spec §5.8; as heights_ld) */
DM_HD float dm_cm_chm_height(const float *z, int64_t ld, int nbins, const float *bins)
{
    float den = 0.0f, num = 0.0f;
    for (int k = 0; k < nbins; k++) {
        float v = z[(int64_t)k * ld];
        float y = (v > 0.0f ? v : 0.0f) + 1e-8f;
        den += y;
        num += y * bins[k];
    }
    float d = isfinite(den) ? den : 1.0f;
    d = d > 1e-12f ? d : 1e-12f;
    float v = num / d;
    return (v > 1e-12f ? v : 1e-12f) * 8.0f;
}

#endif

/* models/cuda/conv.cu — 2-D convolution (models/ops.h dm_conv_run, on device memory) as im2col
 * of bands of output rows + one cuBLASLt product per band, as the CPU does it (ops_cpu.c):
 *   1. the output rows asked for get the bias (or, accumulating, have it added);
 *   2. per band: the im2col matrix [K = cin·k·k, columns] in fp32 or bf16, its source pixel per
 *      element from dm_cm_conv_src, on the bilinear ×2 upsampling of the input when asked
 *      (dm_cm_resize_at, align_corners: never stored whole), ReLU on the input when asked;
 *      then out[cout, band] += W[cout, K] · col (fp32 accumulation, beta = 1);
 *   3. ReLU on the result when asked. */
#include "cuda_internal.h"
#include "../kernel_math.h"

enum { THREADS = 256 };

static __device__ __forceinline__ void put(float *p, float v) { *p = v; }
static __device__ __forceinline__ void put(__nv_bfloat16 *p, float v)
{
    *p = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
}

/* col[kk·ldc + (y−yb)·Wo + x] for output rows [yb, yb+n) */
template <typename T>
static __global__ void k_im2col(const float *in, int H, int W, int up2, int Hi, int Wi, int k,
                                int s, int p, int relu, int yb, int n, int Wo, int K, int64_t ldc,
                                T *col)
{
    int64_t N = (int64_t)n * Wo, total = (int64_t)K * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int kk = (int)(i / N);
        int64_t c = i % N;
        int y = yb + (int)(c / Wo), x = (int)(c % Wo), iy, ix;
        int ci = dm_cm_conv_src(kk, y, x, k, s, p, Hi, Wi, &iy, &ix);
        float v = 0.0f;
        if (ci >= 0) {
            const float *plane = in + (int64_t)ci * H * W;
            v = up2 ? dm_cm_resize_at(plane, H, W, Hi, Wi, 1, iy, ix)
                    : plane[(int64_t)iy * W + ix];
            v = relu && v < 0.0f ? 0.0f : v;
        }
        put(col + kk * ldc + c, v);
    }
}

/* out[c, i] = bias[c] (or 0), or out[c, i] += bias[c] when accumulating; i < n */
static __global__ void k_conv_init(float *out, int cout, int64_t n, const float *bias, int accum)
{
    int64_t total = (int64_t)cout * n;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        float b = bias ? bias[i / n] : 0.0f;
        out[i] = accum ? out[i] + b : b;
    }
}

static __global__ void k_relu(float *x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

int64_t dm_cu_conv_ld(int64_t cols) { return (cols + 7) / 8 * 8; } /* 16-byte rows in bf16 */

int dm_cu_conv(dm_cu_gemm *g, cudaStream_t st, const dm_conv_spec *s, int y0, int ny,
               const void *w, int bf16, void *col, size_t col_elems, dm_err *err)
{
    int Hi = s->up2 ? 2 * s->H : s->H, Wi = s->up2 ? 2 * s->W : s->W;
    int Ho = dm_cm_conv_out(Hi, s->k, s->stride, s->pad);
    int Wo = dm_cm_conv_out(Wi, s->k, s->stride, s->pad);
    if (ny == 0)
        y0 = 0, ny = Ho;
    int K = s->cin * s->k * s->k;
    if (Ho < 1 || Wo < 1 || y0 < 0 || ny < 1 || y0 + ny > Ho || s->epi || !s->out)
        return dm_cu_err(err, DM_EINVAL, "conv2d on the GPU: bad geometry (rows %d..%d of %d×%d, "
                         "kernel %d)", y0, y0 + ny, Wo, Ho, s->k);
    int64_t plane = (int64_t)ny * Wo;
    int nr = (int)(col_elems / ((size_t)K * dm_cu_conv_ld(Wo)));
    nr = nr < 1 ? 1 : nr > ny ? ny : nr;
    if ((size_t)K * dm_cu_conv_ld((int64_t)nr * Wo) > col_elems)
        return dm_cu_err(err, DM_EINVAL, "internal: im2col scratch too small");
    k_conv_init<<<dm_cu_blocks((int64_t)s->cout * plane, THREADS), THREADS, 0, st>>>(
        s->out, s->cout, plane, s->bias, (s->flags & DM_CONV_ACCUM) != 0);
    int relu_in = (s->flags & DM_CONV_RELU_IN) != 0;
    for (int yb = y0; yb < y0 + ny; yb += nr) {
        int n = y0 + ny - yb < nr ? y0 + ny - yb : nr;
        int64_t N = (int64_t)n * Wo, ldc = dm_cu_conv_ld(N);
        unsigned blocks = dm_cu_blocks((int64_t)K * N, THREADS);
        if (bf16)
            k_im2col<<<blocks, THREADS, 0, st>>>(s->in, s->H, s->W, s->up2, Hi, Wi, s->k,
                                                 s->stride, s->pad, relu_in, yb, n, Wo, K, ldc,
                                                 (__nv_bfloat16 *)col);
        else
            k_im2col<<<blocks, THREADS, 0, st>>>(s->in, s->H, s->W, s->up2, Hi, Wi, s->k,
                                                 s->stride, s->pad, relu_in, yb, n, Wo, K, ldc,
                                                 (float *)col);
        /* column-major: out_bandᵀ [N, cout] (ld plane) += colᵀ [N, K] · Wᵀ [K, cout] */
        int rc = dm_cu_gemm_run(g, 0, 0, (int)N, s->cout, K, 1.0f, col, ldc, 0, w, K, 0, 1.0f,
                                s->out + (int64_t)(yb - y0) * Wo, plane, 0, 1, bf16, err);
        if (rc)
            return rc;
    }
    if (s->flags & DM_CONV_RELU_OUT)
        k_relu<<<dm_cu_blocks((int64_t)s->cout * plane, THREADS), THREADS, 0, st>>>(
            s->out, (int64_t)s->cout * plane);
    return dm_cu_check(cudaGetLastError(), "a convolution kernel", err);
}

/* models/cuda/layernorm.cu — LayerNorm of token rows in fp32 (one block per row, two passes:
 * mean, then the centred variance), alone or after the residual step of a block
 * (x += gamma ⊙ (y + bias)), writing the normalised rows in fp32 and/or bf16 (the next product's
 * input). Per element as kernel_math.h. */
#include "cuda_internal.h"
#include "../kernel_math.h"

enum { THREADS = 256 };

static __device__ void ln_row(const float *xr, float *yr, __nv_bfloat16 *ybr, int D,
                              const float *w, const float *b, float eps, float *sh)
{
    float s = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        s += xr[i];
    float mean = dm_cu_block_sum(s, sh) / (float)D, v = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float d = xr[i] - mean;
        v = fmaf(d, d, v);
    }
    float rstd = dm_cm_rstd(dm_cu_block_sum(v, sh) / (float)D, eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float o = dm_cm_ln_out(xr[i], mean, rstd, w[i], b[i]);
        if (yr)
            yr[i] = o;
        if (ybr)
            ybr[i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(o) };
    }
}

static __global__ void k_layernorm(const float *x, float *y, __nv_bfloat16 *yb, int64_t rows,
                                   int D, const float *w, const float *b, float eps)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
        ln_row(x + r * D, y ? y + r * D : NULL, yb ? yb + r * D : NULL, D, w, b, eps, sh);
}

static __global__ void k_residual_ln(float *x, float *y, __nv_bfloat16 *yb, int64_t rows, int D,
                                     const float *bias, const float *gamma, const float *lw,
                                     const float *lb, float eps)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *xr = x + r * D, *yr = y + r * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            xr[i] += gamma[i] * (yr[i] + bias[i]);
        __syncthreads();
        if (lw)
            ln_row(xr, yr, yb ? yb + r * D : NULL, D, lw, lb, eps, sh);
    }
}

static unsigned row_blocks(int64_t rows) { return (unsigned)(rows < 1048576 ? rows : 1048576); }

void dm_cu_layernorm(const float *x, float *y, __nv_bfloat16 *yb, int64_t rows, int D,
                     const float *w, const float *b, float eps, cudaStream_t st)
{
    k_layernorm<<<row_blocks(rows), THREADS, 0, st>>>(x, y, yb, rows, D, w, b, eps);
}

void dm_cu_residual_ln(float *x, float *y, __nv_bfloat16 *yb, int64_t rows, int D,
                       const float *bias, const float *gamma, const float *lw, const float *lb,
                       float eps, cudaStream_t st)
{
    k_residual_ln<<<row_blocks(rows), THREADS, 0, st>>>(x, y, yb, rows, D, bias, gamma, lw, lb,
                                                        eps);
}

/* models/cuda/mlp.cu — the MLP's activations after the first product: bias + GELU (exact erf
 * form) or bias + SwiGLU (silu(gate) · up), with a bf16 copy for the second product. */
#include "cuda_internal.h"
#include "../kernel_math.h"

static __global__ void k_bias_gelu(float *h, __nv_bfloat16 *hb, const float *b, int64_t rows,
                                   int cols)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = dm_cm_gelu(h[i] + b[i % cols]);
        h[i] = v;
        if (hb)
            hb[i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
    }
}

static __global__ void k_bias_swiglu(float *g, const float *u, __nv_bfloat16 *hb,
                                     const float *bg, const float *bu, int64_t rows, int cols)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int c = (int)(i % cols);
        float v = dm_cm_silu(g[i] + bg[c]) * (u[i] + bu[c]);
        g[i] = v;
        if (hb)
            hb[i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
    }
}

void dm_cu_bias_gelu(float *h, __nv_bfloat16 *hb, const float *b, int64_t rows, int cols,
                     cudaStream_t st)
{
    k_bias_gelu<<<dm_cu_blocks(rows * cols, 256), 256, 0, st>>>(h, hb, b, rows, cols);
}

void dm_cu_bias_swiglu(float *g, const float *u, __nv_bfloat16 *hb, const float *bg,
                       const float *bu, int64_t rows, int cols, cudaStream_t st)
{
    k_bias_swiglu<<<dm_cu_blocks(rows * cols, 256), 256, 0, st>>>(g, u, hb, bg, bu, rows, cols);
}

/* models/cuda/convert.cu — fp32 → bf16 (round to nearest even, kernel_math.h), for the weights
 * once at load and for activations rows before a product. */
#include "cuda_internal.h"
#include "../kernel_math.h"

static __device__ __forceinline__ __nv_bfloat16 bf(float f)
{
    return __nv_bfloat16_raw{ dm_cm_f32_bf16(f) };
}

static __global__ void k_to_bf16(const float *in, __nv_bfloat16 *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = bf(in[i]);
}

static __global__ void k_rows_to_bf16(const float *in, int64_t ld, __nv_bfloat16 *out,
                                      int64_t rows, int cols)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        out[i] = bf(in[r * ld + c]);
    }
}

void dm_cu_to_bf16(const float *in, __nv_bfloat16 *out, int64_t n, cudaStream_t st)
{
    k_to_bf16<<<dm_cu_blocks(n, 256), 256, 0, st>>>(in, out, n);
}

void dm_cu_rows_to_bf16(const float *in, int64_t ld, __nv_bfloat16 *out, int64_t rows, int cols,
                        cudaStream_t st)
{
    k_rows_to_bf16<<<dm_cu_blocks(rows * cols, 256), 256, 0, st>>>(in, ld, out, rows, cols);
}

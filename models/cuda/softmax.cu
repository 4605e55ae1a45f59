/* models/cuda/softmax.cu — attention's softmax as the CPU path splits it: the numerators
 * exp(s - rowmax) (fp32 max and sum; dm_cm_expf) stored for the PV product in bf16 or fp32 with
 * 1/Σ aside, and after PV each output row of each head scaled by its 1/Σ. One block per row. */
#include "cuda_internal.h"
#include "../kernel_math.h"

static __global__ void k_softmax_unnorm(const float *s, float *pf, __nv_bfloat16 *pb, float *rs,
                                        int64_t rows, int cols)
{
    __shared__ float sh[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *v = s + r * cols;
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < cols; j += blockDim.x)
            mx = fmaxf(mx, v[j]);
        mx = dm_cu_block_max(mx, sh);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < cols; j += blockDim.x) {
            float e = dm_cm_expf(v[j] - mx);
            sum += e;
            if (pf)
                pf[r * cols + j] = e;
            if (pb)
                pb[r * cols + j] = __nv_bfloat16_raw{ dm_cm_f32_bf16(e) };
        }
        sum = dm_cu_block_sum(sum, sh);
        if (threadIdx.x == 0)
            rs[r] = 1.0f / sum;
    }
}

static __global__ void k_scale_heads(float *o, __nv_bfloat16 *ob, const float *rs, int N, int nh,
                                     int hd, int D)
{
    int64_t n = (int64_t)N * nh * hd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int t = (int)(i / (nh * hd)), c = (int)(i % (nh * hd)), h = c / hd;
        int64_t at = (int64_t)t * D + c;
        float v = o[at] * rs[(int64_t)h * N + t];
        o[at] = v;
        if (ob)
            ob[at] = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
    }
}

void dm_cu_softmax_unnorm(const float *s, float *pf, __nv_bfloat16 *pb, float *rs, int64_t rows,
                          int cols, cudaStream_t st)
{
    unsigned blocks = (unsigned)(rows < 1048576 ? rows : 1048576);
    k_softmax_unnorm<<<blocks, 256, 0, st>>>(s, pf, pb, rs, rows, cols);
}

void dm_cu_scale_heads(float *o, __nv_bfloat16 *ob, const float *rs, int N, int nh, int hd, int D,
                       cudaStream_t st)
{
    k_scale_heads<<<dm_cu_blocks((int64_t)N * nh * hd, 256), 256, 0, st>>>(o, ob, rs, N, nh, hd,
                                                                          D);
}

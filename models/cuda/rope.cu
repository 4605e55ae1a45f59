/* models/cuda/rope.cu — the step between the qkv product and attention: the effective bias added
 * to q, k and v, then RoPE (rotate-half, dm_cm_rope_pair) on q and k of the patch tokens only,
 * with the fp32 tables made on the host (dm_rope_tables); a bf16 copy for the products. One
 * block per token row. */
#include "cuda_internal.h"
#include "../kernel_math.h"

static __global__ void k_qkv_rope(float *qkv, __nv_bfloat16 *qb, const float *bias,
                                  const float *cosv, const float *sinv, int64_t T, int N, int hw,
                                  int D, int nh, int hd)
{
    int half = hd / 2;
    for (int64_t r = blockIdx.x; r < T; r += gridDim.x) {
        float *z = qkv + r * 3 * D;
        __nv_bfloat16 *zb = qb ? qb + r * 3 * D : NULL;
        int p = dm_cm_rope_patch((int)(r % N), N, hw);
        const float *co = p >= 0 ? cosv + (int64_t)p * hd : NULL;
        const float *si = p >= 0 ? sinv + (int64_t)p * hd : NULL;
        /* q and k: pairs (h, j) with j < half; v: plain */
        for (int i = threadIdx.x; i < 2 * nh * half; i += blockDim.x) {
            int part = i / (nh * half), h = i % (nh * half) / half, j = i % half;
            int lo = part * D + h * hd + j, hi = lo + half;
            float a = z[lo] + bias[lo], c = z[hi] + bias[hi];
            if (co)
                dm_cm_rope_pair(a, c, co, si, j, half, &a, &c);
            z[lo] = a, z[hi] = c;
            if (zb) {
                zb[lo] = __nv_bfloat16_raw{ dm_cm_f32_bf16(a) };
                zb[hi] = __nv_bfloat16_raw{ dm_cm_f32_bf16(c) };
            }
        }
        for (int i = 2 * D + threadIdx.x; i < 3 * D; i += blockDim.x) {
            float a = z[i] + bias[i];
            z[i] = a;
            if (zb)
                zb[i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(a) };
        }
    }
}

void dm_cu_qkv_rope(float *qkv, __nv_bfloat16 *qb, const float *bias, const float *cosv,
                    const float *sinv, int64_t T, int N, int hw, int D, int nh, int hd,
                    cudaStream_t st)
{
    unsigned blocks = (unsigned)(T < 1048576 ? T : 1048576);
    k_qkv_rope<<<blocks, 256, 0, st>>>(qkv, qb, bias, cosv, sinv, T, N, hw, D, nh, hd);
}

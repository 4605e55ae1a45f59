/* models/cuda/patch.cu — the patch embedding's two ends: the patch matrix of a batch of images
 * (im2col, dm_cm_patch_src) before its product, and the token rows after it (class token,
 * register tokens, patches + bias). */
#include "cuda_internal.h"
#include "../kernel_math.h"

static __global__ void k_im2patch(const float *img, int B, int H, int W, float *pf,
                                  __nv_bfloat16 *pb)
{
    int hw = (H / 16) * (W / 16);
    int64_t n = (int64_t)B * hw * 768;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int k = (int)(i % 768);
        int64_t row = i / 768;
        int b = (int)(row / hw), p = (int)(row % hw);
        float v = img[(int64_t)b * 3 * H * W + dm_cm_patch_src(H, W, p, k)];
        if (pf)
            pf[i] = v;
        if (pb)
            pb[i] = __nv_bfloat16_raw{ dm_cm_f32_bf16(v) };
    }
}

static __global__ void k_embed(float *x, const float *tmp, const float *cls, const float *storage,
                               const float *patch_b, int B, int N, int R, int D)
{
    int64_t n = (int64_t)B * N * D;
    int hw = N - 1 - R;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int d = (int)(i % D);
        int64_t row = i / D;
        int b = (int)(row / N), t = (int)(row % N);
        float v;
        if (t == 0)
            v = cls[d];
        else if (t <= R)
            v = storage[(int64_t)(t - 1) * D + d];
        else
            v = tmp[((int64_t)b * hw + (t - 1 - R)) * D + d] + patch_b[d];
        x[i] = v;
    }
}

void dm_cu_im2patch(const float *img, int B, int H, int W, float *pf, __nv_bfloat16 *pb,
                    cudaStream_t st)
{
    int64_t n = (int64_t)B * (H / 16) * (W / 16) * 768;
    k_im2patch<<<dm_cu_blocks(n, 256), 256, 0, st>>>(img, B, H, W, pf, pb);
}

void dm_cu_embed(float *x, const float *tmp, const float *cls, const float *storage,
                 const float *patch_b, int B, int N, int R, int D, cudaStream_t st)
{
    k_embed<<<dm_cu_blocks((int64_t)B * N * D, 256), 256, 0, st>>>(x, tmp, cls, storage, patch_b,
                                                                   B, N, R, D);
}

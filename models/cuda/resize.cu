/* models/cuda/resize.cu — bilinear resizing of channel-first planes (models/ops.h
 * dm_resize_bilinear, both align_corners conventions): each output pixel from its source pairs
 * and weights as the CPU computes them (dm_cm_resize_at). */
#include "cuda_internal.h"
#include "../kernel_math.h"

enum { THREADS = 256 };

static __global__ void k_resize(const float *in, int C, int Hi, int Wi, float *out, int Ho,
                                int Wo, int ac)
{
    int64_t plane = (int64_t)Ho * Wo, total = (int64_t)C * plane;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int c = (int)(i / plane);
        int64_t r = i % plane;
        out[i] = dm_cm_resize_at(in + (int64_t)c * Hi * Wi, Hi, Wi, Ho, Wo, ac, (int)(r / Wo),
                                 (int)(r % Wo));
    }
}

void dm_cu_resize(const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo, int ac,
                  cudaStream_t st)
{
    k_resize<<<dm_cu_blocks((int64_t)C * Ho * Wo, THREADS), THREADS, 0, st>>>(in, C, Hi, Wi, out,
                                                                               Ho, Wo, ac);
}

/* models/cuda/convt.cu — ConvTranspose2d with kernel = stride = k, no padding (the DPT ×4/×2
 * reassemble layers), as ops_cpu.c computes it: one product T[(o·k+ky)·k+kx, y·W+x] =
 * Σ_i w[i, (o,ky,kx)] · in[i, y·W+x] (fp32, cuBLASLt), then each output pixel gathers its one
 * value of T (dm_cm_convt_src) and adds the bias. */
#include "cuda_internal.h"
#include "../kernel_math.h"

enum { THREADS = 256 };

static __global__ void k_convt_gather(const float *T, const float *bias, int cout, int k, int H,
                                      int W, float *out)
{
    int Wo = k * W;
    int64_t plane = (int64_t)k * H * Wo, total = (int64_t)cout * plane;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int o = (int)(i / plane);
        int64_t r = i % plane;
        int Y = (int)(r / Wo), X = (int)(r % Wo);
        out[i] = T[dm_cm_convt_src(o, Y, X, k, H, W)] + (bias ? bias[o] : 0.0f);
    }
}

/* T: scratch of cout·k·k·H·W floats */
int dm_cu_conv_t(dm_cu_gemm *g, cudaStream_t st, const float *in, int cin, int H, int W,
                 const float *w, const float *bias, int cout, int k, float *out, float *T,
                 dm_err *err)
{
    int M = cout * k * k, HW = H * W;
    /* column-major: Tᵀ [HW, M] = inᵀ [HW, cin] · w [cin, M] (w stored [cin, M] row-major) */
    int rc = dm_cu_gemm_run(g, 0, 1, HW, M, cin, 1.0f, in, HW, 0, w, M, 0, 0.0f, T, HW, 0, 1, 0,
                            err);
    if (rc)
        return rc;
    k_convt_gather<<<dm_cu_blocks((int64_t)M * HW, THREADS), THREADS, 0, st>>>(T, bias, cout, k,
                                                                               H, W, out);
    return dm_cu_check(cudaGetLastError(), "the transposed convolution's gather", err);
}

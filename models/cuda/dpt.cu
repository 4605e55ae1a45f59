/* models/cuda/dpt.cu — the DPT head's elementwise steps on the GPU: a map's rows filled with a
 * per-row bias (before a product accumulates onto it), x += s, and the CHMv2 heights of pixels
 * from their bin logits (dm_cm_chm_height, as the CPU's heights_ld). */
#include "cuda_internal.h"
#include "../kernel_math.h"

enum { THREADS = 256 };

static __global__ void k_fill_rows(float *x, int rows, int64_t cols, int64_t ld, const float *b)
{
    int64_t total = (int64_t)rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols;
        x[r * ld + i % cols] = b[r];
    }
}

static __global__ void k_add(float *x, const float *s, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] += s[i];
}

static __global__ void k_heights(const float *z, int64_t ld, int64_t npix, int nbins,
                                 const float *bins, float *height)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < npix;
         i += (int64_t)gridDim.x * blockDim.x)
        height[i] = dm_cm_chm_height(z + i, ld, nbins, bins);
}

void dm_cu_fill_rows(float *x, int rows, int64_t cols, int64_t ld, const float *bias,
                     cudaStream_t st)
{
    k_fill_rows<<<dm_cu_blocks((int64_t)rows * cols, THREADS), THREADS, 0, st>>>(x, rows, cols,
                                                                                 ld, bias);
}

void dm_cu_add(float *x, const float *s, int64_t n, cudaStream_t st)
{
    k_add<<<dm_cu_blocks(n, THREADS), THREADS, 0, st>>>(x, s, n);
}

void dm_cu_heights(const float *z, int64_t ld, int64_t npix, int nbins, const float *bins,
                   float *height, cudaStream_t st)
{
    k_heights<<<dm_cu_blocks(npix, THREADS), THREADS, 0, st>>>(z, ld, npix, nbins, bins, height);
}

/* models/cuda/cuda_internal.h — what the CUDA backend's files share (CUDA C only): error checks,
 * the host table, the cuBLASLt GEMM context, and the kernels' launchers (one family per file). */
#ifndef DM_CUDA_INTERNAL_H
#define DM_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdio.h>

#include "plugin.h"

/* The host's table, given once at load (plugin.cu) and never changed after. */
extern const dm_cuda_host *dm_cu_host;

/* dm_err_set without the host library: the plugin fills the caller's dm_err itself. */
int dm_cu_err(dm_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void dm_cu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A CUDA call's failure as a dm_err: "what: cudaErrorX (text)"; out of memory → DM_ENOMEM. */
int dm_cu_check(cudaError_t e, const char *what, dm_err *err);
int dm_cu_check_blas(cublasStatus_t s, const char *what, dm_err *err);
#define CU_TRY(call, what)                                                                         \
    do {                                                                                           \
        int rc_ = dm_cu_check((call), (what), err);                                                \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

/* --- gemm.cu: cuBLASLt, column-major as BLAS: C[m,n] = alpha·op(A)·op(B) (+ beta·C), batched
 * with strides (in elements). in_bf16: A and B bf16 (tensor cores, fp32 accumulation), else fp32
 * (no TF32). C is always fp32. */
typedef struct dm_cu_gemm dm_cu_gemm;
int dm_cu_gemm_create(cudaStream_t st, dm_cu_gemm **out, dm_err *err);
void dm_cu_gemm_free(dm_cu_gemm *g);
int dm_cu_gemm_run(dm_cu_gemm *g, int transa, int transb, int m, int n, int k, float alpha,
                   const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb,
                   int64_t sB, float beta, float *C, int64_t ldc, int64_t sC, int batch,
                   int in_bf16, dm_err *err);

/* --- convert.cu */
void dm_cu_to_bf16(const float *in, __nv_bfloat16 *out, int64_t n, cudaStream_t st);
/* out[r, :cols] = bf16(in[r*ld, :cols]) */
void dm_cu_rows_to_bf16(const float *in, int64_t ld, __nv_bfloat16 *out, int64_t rows, int cols,
                        cudaStream_t st);

/* --- patch.cu: images [B,3,H,W] → patch rows [B*hw, 768] in fp32 (pf) or bf16 (pb); then
 * x[b] = [cls; storage; tmp[b] + patch_b] ([B, N, D]) */
void dm_cu_im2patch(const float *img, int B, int H, int W, float *pf, __nv_bfloat16 *pb,
                    cudaStream_t st);
void dm_cu_embed(float *x, const float *tmp, const float *cls, const float *storage,
                 const float *patch_b, int B, int N, int R, int D, cudaStream_t st);

/* --- layernorm.cu: y = LN(x) rows of D (y fp32 and/or yb bf16, either may be NULL); and the
 * residual step x += gamma ⊙ (y + bias) followed, when lw, by y/yb = LN(x) */
void dm_cu_layernorm(const float *x, float *y, __nv_bfloat16 *yb, int64_t rows, int D,
                     const float *w, const float *b, float eps, cudaStream_t st);
void dm_cu_residual_ln(float *x, float *y, __nv_bfloat16 *yb, int64_t rows, int D,
                       const float *bias, const float *gamma, const float *lw, const float *lb,
                       float eps, cudaStream_t st);

/* --- rope.cu: qkv rows [T, 3D] += bias; q and k of patch tokens rotated with the tables
 * cosv/sinv [hw, hd]; a bf16 copy in qb when not NULL */
void dm_cu_qkv_rope(float *qkv, __nv_bfloat16 *qb, const float *bias, const float *cosv,
                    const float *sinv, int64_t T, int N, int hw, int D, int nh, int hd,
                    cudaStream_t st);

/* --- softmax.cu: rows of s (cols entries): exp(s - max) into pf (fp32) or pb (bf16), and
 * rs[r] = 1/Σ; then o[t, h*hd + i] *= rs[h*N + t] for one image's heads, with a bf16 copy */
void dm_cu_softmax_unnorm(const float *s, float *pf, __nv_bfloat16 *pb, float *rs, int64_t rows,
                          int cols, cudaStream_t st);
void dm_cu_scale_heads(float *o, __nv_bfloat16 *ob, const float *rs, int N, int nh, int hd, int D,
                       cudaStream_t st);

/* --- attention.cu: softmax(scale·QKᵀ)·V of B images, every head, in one kernel with an online
 * softmax (head dimensions 64 and 128): q, k, v from the bf16 qkv rows [B·N, 3D] (RoPE applied),
 * the output rows [B·N, D] in fp32 (o) and/or bf16 (ob), either may be NULL */
int dm_cu_attention_supported(int hd);
int dm_cu_attention(const __nv_bfloat16 *qkv, float *o, __nv_bfloat16 *ob, int B, int N, int nh,
                    int hd, float scale, cudaStream_t st, dm_err *err);

/* --- mlp.cu: h = gelu(h + b) ; g = silu(g + bg) * (u + bu); bf16 copies when hb not NULL */
void dm_cu_bias_gelu(float *h, __nv_bfloat16 *hb, const float *b, int64_t rows, int cols,
                     cudaStream_t st);
void dm_cu_bias_swiglu(float *g, const float *u, __nv_bfloat16 *hb, const float *bg,
                       const float *bu, int64_t rows, int cols, cudaStream_t st);

/* --- conv.cu: dm_conv_run on device memory, output rows [y0, y0+ny) (ny = 0: all) into s->out
 * ([cout, ny, Wo]); w fp32 or (bf16) the weights in bf16; col: im2col scratch of col_elems
 * elements (fp32 or bf16), at least cin·k·k·dm_cu_conv_ld(Wo) */
int dm_cu_conv(dm_cu_gemm *g, cudaStream_t st, const dm_conv_spec *s, int y0, int ny,
               const void *w, int bf16, void *col, size_t col_elems, dm_err *err);
int64_t dm_cu_conv_ld(int64_t cols);

/* --- convt.cu: dm_conv_transpose2d on device memory; T scratch of cout·k·k·H·W floats */
int dm_cu_conv_t(dm_cu_gemm *g, cudaStream_t st, const float *in, int cin, int H, int W,
                 const float *w, const float *bias, int cout, int k, float *out, float *T,
                 dm_err *err);

/* --- resize.cu: dm_resize_bilinear on device memory */
void dm_cu_resize(const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo, int ac,
                  cudaStream_t st);

/* --- dpt.cu: x[r, :cols] = bias[r] (row stride ld); x += s; CHMv2 heights */
void dm_cu_fill_rows(float *x, int rows, int64_t cols, int64_t ld, const float *bias,
                     cudaStream_t st);
void dm_cu_add(float *x, const float *s, int64_t n, cudaStream_t st);
void dm_cu_heights(const float *z, int64_t ld, int64_t npix, int nbins, const float *bins,
                   float *height, cudaStream_t st);

/* --- block reductions (blocks of a multiple of 32 threads, at most 1024) */
static __device__ __forceinline__ float dm_cu_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float dm_cu_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* every thread of the block gets the block's sum (max); sh: 32 floats of shared memory */
static __device__ __forceinline__ float dm_cu_block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = dm_cu_warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return dm_cu_warp_sum(v);
}
static __device__ __forceinline__ float dm_cu_block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = dm_cu_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return dm_cu_warp_max(v);
}

static inline unsigned dm_cu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b > 65535 * 16 ? 65535 * 16 : b < 1 ? 1 : b);
}

/* --- vit_cuda.cu */
int dm_cu_vit_create(const dm_model *m, const dm_backend_opts *o, int gpu, void **state,
                     dm_err *err);
extern const dm_backend_ops dm_cu_vit_ops;
/* what the device operators share with the backend: its GPU, stream, GEMM context, and a slot
 * for their own state (freed with the backend by dm_cu_dops_free) */
int dm_cu_vit_gpu(void *state);
cudaStream_t dm_cu_vit_stream(void *state);
dm_cu_gemm *dm_cu_vit_gemm(void *state);
void **dm_cu_vit_dops_slot(void *state);

/* --- dops.cu: models/dops.h for a backend state */
int dm_cu_dops(void *state, dm_dops *out, dm_err *err);
void dm_cu_dops_free(void *dstate);

#endif

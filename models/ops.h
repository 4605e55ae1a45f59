/* models/ops.h — the dense operations heads compute with (the backend's operator set; the CPU
 * implementation is models/cpu/ops_cpu.c, on OpenBLAS), so that no head calls a BLAS itself and a
 * GPU backend can provide the same operations:
 *   - GEMM and GEMV on the calling thread (heads run them inside their own parallel jobs);
 *   - a thread pool with per-thread scratch buffers (dm_ops);
 * and the image operators of the DPT heads (spec §5.4–5.7), on channel-first fp32 maps [C, H, W]
 * (row-major, one image), spread over the pool:
 *   - 2-D convolution as im2col of a band of output rows + one SGEMM per band, the bands (and, for
 *     small maps, slices of the output channels) shared out over the threads, each with its own
 *     scratch; optionally on the bilinear ×2 upsampling of the input, made band by band and never
 *     stored whole, and with a per-band callback that consumes the output while it is in cache;
 *   - transposed convolution with kernel == stride and no padding (the DPT ×4/×2 reassemble
 *     layers) as SGEMMs over bands of input rows followed by a scatter;
 *   - bilinear resizing in both PyTorch conventions (align_corners True and False), as
 *     torch.nn.functional.interpolate computes it on the CPU.
 * How the work is cut depends only on the shapes, never on the thread count, so results are the
 * same bit for bit with any number of threads. */
#ifndef DM_MODELS_OPS_H
#define DM_MODELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/base/base.h"

enum {
    DM_CONV_RELU_IN = 1,  /* ReLU applied to the input as it is read (pre-activation units) */
    DM_CONV_ACCUM = 2,    /* out += conv(in) + bias instead of out = conv(in) + bias */
    DM_CONV_RELU_OUT = 4, /* ReLU applied to the result (after bias and accumulation) */
};

/* --- matrix products on the calling thread ----------------------------------------------------
 * Row-major: C[M,N] = alpha·op(A)·op(B) + beta·C with op(X) = X or Xᵀ (trans 1), as BLAS sgemm.
 * Single-threaded whatever the ops' thread count: heads call them from their own jobs. */
void dm_ops_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* y[M] = alpha·A[M,N]·x + beta·y (row-major A with row stride lda). */
void dm_ops_sgemv(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                  float *y);

/* --- threads and scratch --------------------------------------------------------------------- */

/* A workspace: a pool of threads (the caller's included) and per-thread scratch buffers kept
 * between calls, in DM_OPS_SLOTS slots per thread; slots below DM_OPS_SLOT_USER belong to the
 * operators here, the others to callers running their own jobs. One caller thread at a time.
 * With more than one thread the GEMMs run on the pool's threads, so creating one sets OpenBLAS
 * single-threaded (process-wide), as the CPU backend does. Every operator accepts ws = NULL: it
 * then runs on the caller's thread with scratch allocated for the call. */
typedef struct dm_ops dm_ops;
enum { DM_OPS_SLOTS = 6, DM_OPS_SLOT_USER = 4 };

int dm_ops_create(int threads, dm_ops **out, dm_err *err); /* threads < 1: 1 */
void dm_ops_free(dm_ops *ws);                              /* NULL-safe */
int dm_ops_threads(const dm_ops *ws);                      /* 1 for NULL */
/* The precision of the convolutions' products (dm_conv_run, dm_conv2d): 0 fp32 (the default),
 * 1 bf16 (DM_PREC_BF16 of model.h: bf16 inputs and weights, fp32 accumulation, through oneDNN;
 * refused with DM_EUNSUPPORTED on a CPU without bf16 dot-product instructions). In bf16 each
 * weight array is rounded once and kept by its address: weights must not change while the
 * workspace lives. Transposed convolutions, resizing and dm_ops_sgemm/sgemv stay fp32. */
int dm_ops_set_precision(dm_ops *ws, int precision, dm_err *err);
int dm_ops_precision(const dm_ops *ws); /* 0 for NULL */
/* Makes every thread's buffer in `slot` hold at least n floats (contents are not kept). */
int dm_ops_reserve(dm_ops *ws, int slot, size_t n, dm_err *err);
float *dm_ops_buf(const dm_ops *ws, int tid, int slot);

/* Runs fn(ctx, tid, nthreads) once on each thread, tid = 0..nthreads-1 (0 is the caller), and
 * waits for all. dm_ops_share gives thread tid its contiguous share [b, e) of n work items. */
typedef void (*dm_ops_job)(void *ctx, int tid, int nthreads);
void dm_ops_run(dm_ops *ws, dm_ops_job fn, void *ctx);
void dm_ops_share(int64_t n, int tid, int nthreads, int64_t *b, int64_t *e);

/* --- convolution ----------------------------------------------------------------------------- */

/* Output side of a convolution: (n + 2·pad − k) / stride + 1 (floor), as Conv2d. */
int dm_conv_out_size(int n, int k, int stride, int pad);

/* Called after each band of output rows [y0, y0+n) is complete (all channels), on the thread that
 * made it: band holds [cout, n·Wo] with row stride ld (channel o at band + o·ld). */
typedef void (*dm_conv_band_fn)(void *ctx, int tid, int y0, int n, float *band, size_t ld);

typedef struct dm_conv_spec {
    const float *in; /* [cin, H, W] */
    int cin, H, W;
    int up2;         /* 1: convolve the bilinear ×2 upsampling of in (align_corners=True, 2H×2W) */
    const float *w;  /* [cout, cin, k, k] (PyTorch Conv2d layout) */
    const float *bias; /* [cout] or NULL */
    int cout, k, stride, pad, flags;
    float *out;      /* [cout, Ho, Wo], not overlapping in; NULL: each band is made in scratch
                      * and handed to epi (then epi is required and DM_CONV_ACCUM not allowed) */
    dm_conv_band_fn epi; /* NULL or the per-band callback (then bands span all channels) */
    void *epi_ctx;
} dm_conv_spec;

/* The convolution s describes. Returns 0 or DM_ENOMEM / DM_EINVAL. */
int dm_conv_run(dm_ops *ws, const dm_conv_spec *s, dm_err *err);

/* out[Cout, Ho, Wo] = conv(in[Cin, H, W]) with weights w[Cout, Cin, k, k] (PyTorch Conv2d layout),
 * optional bias[Cout] (NULL: none), zero padding `pad`, stride `stride`, flags DM_CONV_*.
 * in and out must not overlap. Returns 0 or DM_ENOMEM / DM_EINVAL. */
int dm_conv2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
              const float *bias, int cout, int k, int stride, int pad, int flags, float *out,
              dm_err *err);

/* ConvTranspose2d with kernel = stride = k, padding 0: out[Cout, k·H, k·W],
 * out[o, k·y+ky, k·x+kx] = bias[o] + Σ_i w[i, o, ky, kx] · in[i, y, x]; w is in PyTorch's
 * transposed layout [Cin, Cout, k, k]; bias may be NULL. */
int dm_conv_transpose2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
                        const float *bias, int cout, int k, float *out, dm_err *err);

/* Bilinear resize of C planes Hi×Wi to Ho×Wo (torch interpolate, mode "bilinear", given size).
 * align_corners 1: src = dst·(in−1)/(out−1); 0: src = max((dst+0.5)·in/out − 0.5, 0).
 * in and out must not overlap. */
int dm_resize_bilinear(dm_ops *ws, const float *in, int C, int Hi, int Wi, float *out, int Ho,
                       int Wo, int align_corners, dm_err *err);

#endif

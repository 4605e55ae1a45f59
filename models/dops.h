/* models/dops.h — the dense operations of models/ops.h on a device's memory: the operator set a
 * head runs through when its backbone is on a GPU, so that the head's maps and the backbone's
 * tokens stay on the device. The CUDA plugin provides one table per GPU backend
 * (dm_backend_dops); models/cpu/dops_host.c provides the same table on host memory through the
 * CPU operators, so that a head's device path is tested on any machine.
 *
 * Every pointer an operator takes is the device's (made by alloc). Operators are queued in order
 * on the device (asynchronous to the host); get() and sync() wait. Each returns 0 or a DM_E*
 * code with a message (a launch or a cuBLASLt failure; DM_ENOMEM). Semantics, layouts and flags
 * are those of models/ops.h unless said. Included by both sides of the plugin (C and CUDA C). */
#ifndef DM_MODELS_DOPS_H
#define DM_MODELS_DOPS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

typedef struct dm_dops {
    void *ctx; /* the backend's state: the first argument of every call */
    int (*alloc)(void *ctx, size_t bytes, void **p, dm_err *err);
    void (*release)(void *ctx, void *p); /* NULL-safe */
    /* host → device (src host), device → host (waits for the queued work, then copies), and
     * device → device */
    int (*put)(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err);
    int (*get)(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err);
    int (*copy)(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err);
    /* the convolutions' products: DM_PREC_FP32 or DM_PREC_BF16, as dm_ops_set_precision; in
     * bf16 each weight array is converted once, kept by its address */
    int (*set_precision)(void *ctx, int precision, dm_err *err);
    /* dm_ops_sgemm (row-major, fp32) */
    int (*sgemm)(void *ctx, int transA, int transB, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc,
                 dm_err *err);
    /* dm_conv_run restricted to the output rows [y0, y0+ny): s->out holds those ny rows of
     * every channel ([cout, ny, Wo]); s->epi must be NULL, s->out set. ny = 0: all rows. */
    int (*conv)(void *ctx, const dm_conv_spec *s, int y0, int ny, dm_err *err);
    int (*conv_t)(void *ctx, const float *in, int cin, int H, int W, const float *w,
                  const float *bias, int cout, int k, float *out, dm_err *err);
    int (*resize)(void *ctx, const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo,
                  int align_corners, dm_err *err);
    /* x[r, c] = GELU(x[r, c] + bias[c]) (erf form, dm_bias_gelu), rows × cols row-major */
    int (*bias_gelu)(void *ctx, float *x, int64_t rows, int cols, const float *bias, dm_err *err);
    /* x[r, c] = bias[r] for c < cols (row stride ld) */
    int (*fill_rows)(void *ctx, float *x, int rows, int64_t cols, int64_t ld, const float *bias,
                     dm_err *err);
    int (*add)(void *ctx, float *x, const float *s, int64_t n, dm_err *err); /* x += s */
    /* LayerNorm of rows of D in place (dm_model_norm_tokens) */
    int (*layernorm)(void *ctx, float *x, int64_t rows, int D, const float *w, const float *b,
                     float eps, dm_err *err);
    /* CHMv2 heights (dm_chm_heights) of npix pixels whose nbins logits have row stride ld */
    int (*heights)(void *ctx, const float *logits, int64_t ld, int64_t npix, int nbins,
                   const float *bins, float *height, dm_err *err);
    int (*sync)(void *ctx, dm_err *err);
} dm_dops;

/* The host implementation (models/cpu/dops_host.c): "device" memory is host memory, every
 * operator is the CPU's on ws (which may be NULL; it must outlive the table's use). */
void dm_dops_host(dm_dops *out, dm_ops *ws);

#endif

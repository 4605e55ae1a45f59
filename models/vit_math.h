/* models/vit_math.h — the ViT layer math that every backend must reproduce (spec §2): LayerNorm,
 * RoPE tables and rotation, softmax, GELU(erf), SiLU, patch extraction. The CPU backend calls these
 * directly; a GPU backend is checked against them. All fp32, row-major. */
#ifndef DM_VIT_MATH_H
#define DM_VIT_MATH_H

#include <stdint.h>

/* y[r, :] = (x[r,:] - mean) / sqrt(var + eps) * w + b for r < rows (x may equal y). */
void dm_layernorm(const float *x, float *y, int64_t rows, int D, const float *w, const float *b,
                  float eps);

/* RoPE tables for an h×w patch grid (spec §2.3): cosv/sinv [h*w, hd] with the angle layout
 * [y-freqs, x-freqs] tiled twice. periods has hd/4 entries. */
void dm_rope_tables(const float *periods, int hd, int h, int w, float *cosv, float *sinv);

/* Rotates n vectors of length hd (stride ld floats apart) in place with tables row t0.. (rotate-half
 * pairing j ↔ j+hd/2). */
void dm_rope_apply(float *z, int64_t ld, int n, int hd, const float *cosv, const float *sinv);

/* Row-wise softmax in place over `cols` entries, rows `ld` apart. */
void dm_softmax_rows(float *s, int rows, int cols, int64_t ld);
/* The same without the final scaling: s = exp(s - rowmax), inv_sum[r] = 1 / Σ. softmax(S)·V then
 * equals inv_sum ⊙ (exp(...)·V), which scales h·d values per row instead of N. */
void dm_softmax_rows_unnorm(float *s, int rows, int cols, int64_t ld, float *inv_sum);

/* x = gelu(x + bias[col]) exact erf form, for a [rows, cols] matrix. */
void dm_bias_gelu(float *x, int64_t rows, int cols, const float *bias);
/* g = silu(g + bg) * (u + bu), [rows, cols] (SwiGLU: w1 gate, w2 up). */
void dm_bias_swiglu(float *g, const float *u, int64_t rows, int cols, const float *bg,
                    const float *bu);
/* x[r,:] += gamma ⊙ (y[r,:] + bias)   (residual add with layer scale) */
void dm_residual_ls(float *x, const float *y, int64_t rows, int D, const float *bias,
                    const float *gamma);
/* x[r,:] += bias */
void dm_add_bias(float *x, int64_t rows, int cols, int64_t ld, const float *bias);

/* Patch matrix of one image [3, H, W] → [h*w, 3*16*16] (order ch, ky, kx: the conv weight's). */
void dm_im2patch(const float *img, int H, int W, float *out);

/* Vectorisable exp and erf, within a few ulp of libm (tests/test_math.c measures them). */
float dm_expf(float x);
float dm_erff(float x);

#endif

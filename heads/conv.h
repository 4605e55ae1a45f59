/* heads/conv.h — the dense image operators of the DPT heads (spec §5.4–5.7), on channel-first fp32
 * maps [C, H, W] (row-major, one image):
 *   - 2-D convolution as im2col in bands of output rows + one SGEMM per band (bands bound the
 *     scratch memory and are independent, so they can be spread over threads later);
 *   - transposed convolution with kernel == stride and no padding (the DPT ×4/×2 reassemble
 *     layers) as one SGEMM followed by a scatter;
 *   - bilinear resizing in both PyTorch conventions (align_corners True and False), as
 *     torch.nn.functional.interpolate computes it on the CPU. */
#ifndef DM_HEADS_CONV_H
#define DM_HEADS_CONV_H

#include "../src/dm_err.h"

enum {
    DM_CONV_RELU_IN = 1, /* ReLU applied to the input as it is read (pre-activation units) */
    DM_CONV_ACCUM = 2,   /* out += conv(in) + bias instead of out = conv(in) + bias */
};

/* Output side of a convolution: (n + 2·pad − k) / stride + 1 (floor), as Conv2d. */
int dm_conv_out_size(int n, int k, int stride, int pad);

/* out[Cout, Ho, Wo] = conv(in[Cin, H, W]) with weights w[Cout, Cin, k, k] (PyTorch Conv2d layout),
 * optional bias[Cout] (NULL: none), zero padding `pad`, stride `stride`, flags DM_CONV_*.
 * in and out must not overlap. Returns 0 or DM_ENOMEM / DM_EINVAL. */
int dm_conv2d(const float *in, int cin, int H, int W, const float *w, const float *bias, int cout,
              int k, int stride, int pad, int flags, float *out, dm_err *err);

/* ConvTranspose2d with kernel = stride = k, padding 0: out[Cout, k·H, k·W],
 * out[o, k·y+ky, k·x+kx] = bias[o] + Σ_i w[i, o, ky, kx] · in[i, y, x]; w is in PyTorch's
 * transposed layout [Cin, Cout, k, k]; bias may be NULL. */
int dm_conv_transpose2d(const float *in, int cin, int H, int W, const float *w, const float *bias,
                        int cout, int k, float *out, dm_err *err);

/* Bilinear resize of C planes Hi×Wi to Ho×Wo (torch interpolate, mode "bilinear", given size).
 * align_corners 1: src = dst·(in−1)/(out−1); 0: src = max((dst+0.5)·in/out − 0.5, 0).
 * in and out must not overlap. */
int dm_resize_bilinear(const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo,
                       int align_corners, dm_err *err);

#endif

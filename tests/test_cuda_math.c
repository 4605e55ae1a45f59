/* tests/test_cuda_math.c — the CUDA kernels' per-element numerics and index arithmetic
 * (models/kernel_math.h, compiled here as C) against the CPU path's own functions: bf16
 * rounding bit for bit against bf16.h on every class of float, exp/erf/GELU/SiLU against
 * vit_math.c, a LayerNorm row, RoPE pairs and the patch-matrix indices against vit_math.c, a
 * softmax row against dm_softmax_rows_unnorm. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../models/cpu/bf16.h"
#include "../models/kernel_math.h"
#include "../models/vit_math.h"
#include "golden.h"
#include "test.h"

#define bits dm_cm_bits
#define from_bits dm_cm_float

TEST(cuda_math_bf16_rounding)
{
    /* every exponent and sign with the mantissas around each rounding boundary, every NaN and
     * infinity class, denormals, then random bit patterns */
    static const uint32_t man[] = { 0, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x10000, 0x17fff,
                                    0x18000, 0x18001, 0x7f7fff, 0x7f8000, 0x7fffff, 0x400000,
                                    0x3fffff, 0x2a8000 };
    long n = 0;
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t e = 0; e < 256; e++)
            for (size_t k = 0; k < sizeof man / sizeof man[0]; k++) {
                float f = from_bits(s << 31 | e << 23 | man[k]);
                uint16_t a = dm_cm_f32_bf16(f), b = dm_f32_bf16(f);
                CHECKF(a == b, "bf16(0x%08x): %04x, CPU %04x", bits(f), a, b);
                n++;
            }
    for (uint32_t i = 0; i < 2000000; i++) {
        float f = from_bits(dm_hash32(i * 2654435761u + 12345u));
        CHECKF(dm_cm_f32_bf16(f) == dm_f32_bf16(f), "bf16(0x%08x)", bits(f));
    }
    CHECK(dm_cm_f32_bf16(INFINITY) == 0x7f80 && dm_cm_f32_bf16(-INFINITY) == 0xff80);
    CHECK((dm_cm_f32_bf16(NAN) & 0x7fc0) == 0x7fc0);
    CHECK(dm_cm_f32_bf16(from_bits(0x7f800001)) == 0x7fc0); /* signalling NaN: quiet, not Inf */
    CHECK(dm_cm_f32_bf16(3.4e38f) == 0x7f80);               /* rounds up to infinity */
    CHECK(dm_cm_f32_bf16(from_bits(0x00000001)) == 0);      /* smallest denormal: to zero */
    CHECK(dm_cm_bf16_f32(0x3f80) == 1.0f && dm_cm_bf16_f32(dm_cm_f32_bf16(-2.5f)) == -2.5f);
    /* the host's array conversion (the GPU converts weights with the same function) */
    float v[64];
    uint16_t h[64];
    for (int i = 0; i < 64; i++)
        v[i] = (float)(dm_hash32((uint32_t)i) % 100000) / 777.0f - 60.0f;
    dm_bf16_from_f32(v, h, 64);
    for (int i = 0; i < 64; i++)
        CHECK(h[i] == dm_cm_f32_bf16(v[i]));
    (void)n;
}

TEST(cuda_math_functions)
{
    for (int i = -20000; i <= 20000; i++) {
        float x = (float)i / 1000.0f;
        CHECKF(bits(dm_cm_expf(x)) == bits(dm_expf(x)), "exp(%g)", x);
        CHECKF(bits(dm_cm_erff(x)) == bits(dm_erff(x)), "erf(%g)", x);
        CHECKF(fabsf(dm_cm_erff(x) - erff(x)) <= 3e-7f, "erf(%g) %.9g vs libm %.9g", x,
               dm_cm_erff(x), erff(x));
    }
    /* GELU and SwiGLU as vit_math's row functions compute them */
    enum { C = 333 };
    float a[C], g[C], u[C], z[C], bias[C];
    for (int j = 0; j < C; j++) {
        a[j] = (float)(j - 160) / 23.0f;
        u[j] = (float)(j % 17) / 5.0f - 1.5f;
        z[j] = 0.0f;
        bias[j] = (float)(j % 7) / 10.0f - 0.3f;
    }
    memcpy(g, a, sizeof a);
    dm_bias_gelu(g, 1, C, bias);
    for (int j = 0; j < C; j++)
        CHECKF(fabsf(g[j] - dm_cm_gelu(a[j] + bias[j])) <= 1e-6f * (1.0f + fabsf(g[j])),
               "gelu(%g): %g vs %g", a[j] + bias[j], g[j], dm_cm_gelu(a[j] + bias[j]));
    memcpy(g, a, sizeof a);
    dm_bias_swiglu(g, u, 1, C, bias, z);
    for (int j = 0; j < C; j++) {
        float want = dm_cm_silu(a[j] + bias[j]) * u[j];
        CHECKF(fabsf(g[j] - want) <= 1e-6f * (1.0f + fabsf(want)), "swiglu %d", j);
    }
    /* GELU is the erf form, not tanh's approximation (which differs by ~1e-3 near ±2) */
    float t = 0.5f * 2.0f * (1.0f + tanhf(0.7978845608f * (2.0f + 0.044715f * 8.0f)));
    CHECK(fabsf(dm_cm_gelu(2.0f) - 1.9544997f) < 1e-6f && fabsf(t - dm_cm_gelu(2.0f)) > 1e-5f);
}

TEST(cuda_math_layernorm_softmax)
{
    static const int Ds[] = { 1, 7, 128, 1024, 4096 };
    for (size_t k = 0; k < sizeof Ds / sizeof Ds[0]; k++) {
        int D = Ds[k];
        float *x = malloc(D * sizeof(float)), *y1 = malloc(D * sizeof(float));
        float *y2 = malloc(D * sizeof(float)), *w = malloc(D * sizeof(float));
        float *b = malloc(D * sizeof(float));
        for (int i = 0; i < D; i++) {
            x[i] = 30.0f + (float)(dm_hash32((uint32_t)(i + 7 * D)) % 20000) / 1000.0f;
            w[i] = 0.5f + (float)(i % 5) / 4.0f;
            b[i] = (float)(i % 3) - 1.0f;
        }
        dm_layernorm(x, y1, 1, D, w, b, 1e-5f);
        dm_cm_layernorm_row(x, y2, D, w, b, 1e-5f);
        double worst = 0;
        for (int i = 0; i < D; i++)
            worst = fmax(worst, fabs((double)y1[i] - y2[i]));
        CHECKF(worst <= 2e-5, "LayerNorm D=%d: %.3g", D, worst);
        free(x), free(y1), free(y2), free(w), free(b);
    }
    enum { N = 1029 };
    static float s1[N], s2[N];
    for (int j = 0; j < N; j++)
        s1[j] = s2[j] = (float)(dm_hash32((uint32_t)j) % 4000) / 200.0f - 10.0f;
    float inv1, inv2;
    dm_softmax_rows_unnorm(s1, 1, N, N, &inv1);
    inv2 = dm_cm_softmax_row(s2, N);
    for (int j = 0; j < N; j++)
        CHECKF(bits(s1[j]) == bits(s2[j]), "softmax numerator %d", j);
    CHECKF(fabsf(inv1 - inv2) <= 1e-6f * inv1, "1/sum %g vs %g", inv1, inv2);
}

TEST(cuda_math_rope_patches)
{
    /* RoPE: the pair rotation on dm_rope_tables' rows equals dm_rope_apply, and only patch
     * tokens are rotated (1 class + 4 registers before them) */
    int hd = 64, h = 5, w = 7, hw = h * w, N = 1 + 4 + hw, half = hd / 2;
    float periods[16];
    for (int i = 0; i < hd / 4; i++)
        periods[i] = powf(100.0f, (float)(4 * i) / (float)hd);
    float *co = malloc(sizeof(float) * hw * hd), *si = malloc(sizeof(float) * hw * hd);
    dm_rope_tables(periods, hd, h, w, co, si);
    CHECK(dm_cm_rope_patch(0, N, hw) == -1 && dm_cm_rope_patch(4, N, hw) == -1);
    CHECK(dm_cm_rope_patch(5, N, hw) == 0 && dm_cm_rope_patch(N - 1, N, hw) == hw - 1);
    float v[64], r[64];
    for (int p = 0; p < hw; p++) {
        for (int j = 0; j < hd; j++)
            v[j] = r[j] = (float)(dm_hash32((uint32_t)(p * 64 + j)) % 1000) / 250.0f - 2.0f;
        dm_rope_apply(r, hd, 1, hd, co + p * hd, si + p * hd);
        for (int j = 0; j < half; j++) {
            float lo, hi;
            dm_cm_rope_pair(v[j], v[j + half], co + p * hd, si + p * hd, j, half, &lo, &hi);
            CHECKF(bits(lo) == bits(r[j]) && bits(hi) == bits(r[j + half]), "rope p=%d j=%d",
                   p, j);
        }
    }
    free(co), free(si);
    /* im2col: every element of the patch matrix of a 48×80 image */
    int H = 48, W = 80, np = (H / 16) * (W / 16);
    float *img = malloc(sizeof(float) * 3 * H * W), *pm = malloc(sizeof(float) * np * 768);
    for (int i = 0; i < 3 * H * W; i++)
        img[i] = (float)i;
    dm_im2patch(img, H, W, pm);
    for (int p = 0; p < np; p++)
        for (int k = 0; k < 768; k++)
            CHECKF(pm[p * 768 + k] == img[dm_cm_patch_src(H, W, p, k)], "patch %d elem %d", p,
                   k);
    free(img), free(pm);
}

/* tests/test_math.c — the layer math against libm and against the spec's worked values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../models/model.h"
#include "../models/vit_math.h"
#include "test.h"

TEST(math_exp_accuracy)
{
    double worst = 0;
    for (float x = -80.0f; x <= 80.0f; x += 0.00731f) {
        double ref = exp((double)x), rel = fabs(dm_expf(x) - ref) / ref;
        if (rel > worst)
            worst = rel;
    }
    CHECKF(worst < 4e-7, "exp relative error %.3g", worst);
}

TEST(math_erf_accuracy)
{
    double worst = 0, worst_rel = 0;
    for (float x = -6.0f; x <= 6.0f; x += 0.000913f) {
        double ref = erf((double)x), d = fabs(dm_erff(x) - ref);
        if (d > worst)
            worst = d;
        if (ref != 0 && d / fabs(ref) > worst_rel)
            worst_rel = d / fabs(ref);
    }
    CHECKF(worst < 2.5e-7 && worst_rel < 5e-7, "erf error %.3g abs, %.3g rel", worst, worst_rel);
}

TEST(math_softmax_rows_sum_to_one)
{
    float s[3 * 5] = { 0, 1, 2, 3, 4, -100, 0, 100, 3, 3, 7, 7, 7, 7, 7 };
    dm_softmax_rows(s, 3, 5, 5);
    for (int r = 0; r < 3; r++) {
        double sum = 0;
        for (int j = 0; j < 5; j++)
            sum += s[r * 5 + j];
        CHECKF(fabs(sum - 1) < 1e-6, "row %d sums to %.9g", r, sum);
    }
    CHECK(fabsf(s[14] - 0.2f) < 1e-7f);
    CHECK(fabsf(s[7] - 1.0f) < 1e-6f);
    /* row 0 against libm */
    double z = 0;
    for (int j = 0; j < 5; j++)
        z += exp(j - 4.0);
    for (int j = 0; j < 5; j++)
        CHECK(fabs(s[j] - exp(j - 4.0) / z) < 1e-7);
}

TEST(math_rope_tables_layout)
{
    /* hd 16 → 4 frequencies; a 2×3 grid. Spec §2.3: angle = 2π·coord / period, [y, x, y, x]. */
    float per[4] = { 1.0f, 1.3359375f, 1.78125f, 2.375f };
    float co[6 * 16], si[6 * 16];
    dm_rope_tables(per, 16, 2, 3, co, si);
    int r = 1, c = 2, t = r * 3 + c;
    float cy = 2.0f * ((1.5f) / 2.0f) - 1.0f, cx = 2.0f * ((2.5f) / 3.0f) - 1.0f;
    for (int i = 0; i < 4; i++) {
        float ay = (6.2831855f * cy) / per[i], ax = (6.2831855f * cx) / per[i];
        CHECK(co[t * 16 + i] == cosf(ay) && co[t * 16 + 8 + i] == cosf(ay));
        CHECK(si[t * 16 + 4 + i] == sinf(ax) && si[t * 16 + 12 + i] == sinf(ax));
    }
    /* rotation pairs j with j+hd/2 */
    float z[16];
    for (int j = 0; j < 16; j++)
        z[j] = (float)(j + 1);
    float z0 = z[0], z8 = z[8];
    dm_rope_apply(z, 16, 1, 16, co + t * 16, si + t * 16);
    CHECK(fabsf(z[0] - (z0 * co[t * 16] - z8 * si[t * 16])) < 1e-6f);
    CHECK(fabsf(z[8] - (z8 * co[t * 16 + 8] + z0 * si[t * 16 + 8])) < 1e-6f);
}

TEST(math_layernorm)
{
    float x[4] = { 1, 2, 3, 4 }, w[4] = { 1, 1, 2, 1 }, b[4] = { 0, 0, 0, 1 }, y[4];
    dm_layernorm(x, y, 1, 4, w, b, 1e-5f);
    double sd = sqrt(1.25 + 1e-5);
    CHECK(fabs(y[0] - (-1.5 / sd)) < 1e-6);
    CHECK(fabs(y[2] - 2 * (0.5 / sd)) < 1e-6);
    CHECK(fabs(y[3] - (1.5 / sd + 1)) < 1e-6);
}

TEST(math_gelu_exact_erf_form)
{
    float x[5] = { -3, -0.5f, 0, 0.7f, 2.5f }, zero[5] = { 0 };
    float y[5];
    memcpy(y, x, sizeof y);
    dm_bias_gelu(y, 1, 5, zero);
    for (int i = 0; i < 5; i++) {
        double ref = 0.5 * x[i] * (1 + erf(x[i] / sqrt(2.0)));
        CHECKF(fabs(y[i] - ref) < 2e-7 * (1 + fabs(ref)), "gelu(%g) = %.9g, want %.9g", x[i], y[i],
               ref);
    }
}

TEST(math_presets)
{
    const dm_norm *s = dm_norm_get("sat"), *c = dm_norm_get("chm"), *l = dm_norm_get("lvd");
    CHECK(s && c && l && !dm_norm_get("foo"));
    CHECK(s->mean[0] == 0.430f && c->mean[0] == 0.420f && l->mean[0] == 0.485f);
    CHECK(s->std[2] == 0.143f && c->std[1] == 0.156f && l->std[2] == 0.225f);
    const dm_arch_preset *p = dm_arch_find("vit7b16");
    CHECK(p && p->embed_dim == 4096 && p->depth == 40 && p->num_heads == 32 &&
          p->ffn_hidden == 8192 && p->swiglu);
    p = dm_arch_find("vits16plus");
    CHECK(p && p->ffn_hidden == 1536 && p->swiglu);
}

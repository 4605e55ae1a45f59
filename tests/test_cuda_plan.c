/* tests/test_cuda_plan.c — the CUDA backend's memory plan (models/cuda/dm_cuda_plan.h), on the
 * CPU: ViT-L/16 and ViT-7B/16 at 512 px, batches 1, 8 and 32, bf16 and fp32; the weights of the
 * 7B model in bf16 are ~13.4 GB and with a batch of 8 everything fits in 20 GB (with the
 * two-product attention's score matrices; the fused kernel needs less). */
#include <stdio.h>

#include "../models/cuda/dm_cuda_plan.h"
#include "../models/model.h"
#include "test.h"

static dm_cu_shape shape_of(const char *arch)
{
    const dm_arch_preset *a = dm_arch_find(arch);
    dm_cu_shape s = { a->embed_dim, a->depth, a->num_heads, a->ffn_hidden, a->swiglu, 4, 0 };
    return s;
}

TEST(cuda_plan_vitl_7b)
{
    static const int batches[3] = { 1, 8, 32 };
    const char *archs[2] = { "vitl16", "vit7b16" };
    for (int a = 0; a < 2; a++) {
        dm_cu_shape m = shape_of(archs[a]);
        uint64_t prev = 0;
        for (int i = 0; i < 3; i++) {
            dm_cu_plan p, f;
            int B = batches[i];
            dm_cu_plan_make(&m, B, 512, 512, 1, &p);
            dm_cu_plan_make(&m, B, 512, 512, 0, &f);
            printf("    %s batch %2d bf16: %.2f GB weights + %.2f GB activations = %.2f GB "
                   "(fp32 %.2f GB)\n", archs[a], B, p.weights / 1e9, p.activations / 1e9,
                   p.total / 1e9, f.total / 1e9);
            uint64_t T = (uint64_t)B * 1029;
            CHECK(p.x == T * m.D * 4 && p.qkv == T * 3 * m.D * 4 && p.hid == T * m.ffn * 4);
            CHECK(p.s == (uint64_t)m.heads * 1029 * 1029 * 4 && p.pb == p.s / 2 && !p.pf);
            CHECK(f.pf == f.s && !f.pb && !f.ab && !f.qkvb && f.patches);
            CHECK((p.up != 0) == (m.swiglu != 0));
            CHECK(p.total == p.weights + p.activations && p.activations > prev);
            CHECK(f.weights > p.weights && f.total > p.total);
            prev = p.activations;
            dm_cu_shape mf = m; /* the fused attention kernel holds no score matrices */
            mf.fused = 1;
            dm_cu_plan q;
            dm_cu_plan_make(&mf, B, 512, 512, 1, &q);
            CHECK(!q.s && !q.pb && !q.rs && q.total == p.total - p.s - p.pb - p.rs);
            if (a == 1 && B == 8)
                CHECKF(p.total <= 20000000000ull, "ViT-7B bf16 batch 8 needs %.2f GB", p.total / 1e9);
        }
        dm_cu_plan p;
        dm_cu_plan_make(&m, 1, 512, 512, 1, &p);
        if (a == 0) /* ViT-L: 0.30 G parameters in bf16 */
            CHECKF(p.weights > 0.60e9 && p.weights < 0.62e9, "ViT-L %.3f GB", p.weights / 1e9);
        else
            CHECKF(p.weights > 13.3e9 && p.weights < 13.5e9, "ViT-7B %.3f GB", p.weights / 1e9);
    }
}

/* models/cuda/dm_cuda_plan.h — the CUDA backend's memory plan: the bytes of every buffer the
 * ViT forward pass holds on the GPU for a model shape, batch and image size, computed on the
 * host before anything is allocated. vit_cuda.cu sizes its weight pools and grows its
 * activation buffers by it (nothing else is allocated per batch), `dinomap` can say what a batch
 * needs before it fails, and tests/test_cuda_plan.c checks it on the CPU for ViT-L and ViT-7B.
 * Compiles as C11 and as CUDA C. */
#ifndef DM_CUDA_PLAN_H
#define DM_CUDA_PLAN_H

#include <stdint.h>

typedef struct dm_cu_shape {
    int D, depth, heads, ffn, swiglu, R; /* embed dim, blocks, heads, MLP width, SwiGLU, registers */
    int fused; /* attention in one kernel (attention.cu): no score matrices */
} dm_cu_shape;

typedef struct dm_cu_plan {
    /* weights: matrices (bf16 or fp32, each rounded up to 256 B) and fp32 vectors (64 floats) */
    uint64_t w_mats, w_vecs;
    /* activations of a batch B of H×W images: T = B·N token rows */
    uint64_t img, x, y, qkv, att, hid, up, qkvb, ab, patches; /* [T, ·] buffers */
    uint64_t s, pf, pb, rs;  /* one image's attention scores and numerators, all heads */
    uint64_t rope;           /* cos and sin tables [hw, hd] */
    uint64_t gemm_ws;        /* cuBLASLt's workspace */
    uint64_t weights, activations, total;
} dm_cu_plan;

#define DM_CU_GEMM_WS ((uint64_t)32 << 20)

static inline uint64_t dm_cu_r256(uint64_t b) { return (b + 255) & ~(uint64_t)255; }
static inline uint64_t dm_cu_r64(uint64_t n) { return (n + 63) & ~(uint64_t)63; }

/* The plan for shape m, batch B, H×W px (multiples of 16), bf16 (1) or fp32 (0). */
static inline void dm_cu_plan_make(const dm_cu_shape *m, int B, int H, int W, int bf16,
                                   dm_cu_plan *p)
{
    uint64_t e = bf16 ? 2 : 4, D = (uint64_t)m->D, F = (uint64_t)m->ffn, R = (uint64_t)m->R;
    uint64_t hw = (uint64_t)(H / 16) * (uint64_t)(W / 16), N = 1 + R + hw, T = (uint64_t)B * N;
    uint64_t hd = D / (uint64_t)m->heads, L = (uint64_t)m->depth;
    /* weights as vit_cuda.cu's upload lays them out */
    uint64_t per = dm_cu_r256(3 * D * D * e) + dm_cu_r256(D * D * e) +
                   dm_cu_r256(F * D * e) * (m->swiglu ? 3 : 2);
    p->w_mats = dm_cu_r256(D * 768 * e) + per * L;
    uint64_t vn = dm_cu_r64(D) + dm_cu_r64(R * D + 1) + 3 * dm_cu_r64(D);
    vn += L * (6 * dm_cu_r64(D) + dm_cu_r64(3 * D) + dm_cu_r64(D) + 2 * dm_cu_r64(F) +
               dm_cu_r64(D));
    p->w_vecs = vn * 4;
    /* activations */
    p->img = (uint64_t)B * 3 * (uint64_t)H * (uint64_t)W * 4;
    p->x = p->y = p->att = T * D * 4;
    p->qkv = T * 3 * D * 4;
    p->hid = T * F * 4;
    p->up = m->swiglu ? T * F * 4 : 0;
    p->qkvb = bf16 ? T * 3 * D * 2 : 0;
    uint64_t nab = T * (F > D ? F : D);
    if (nab < (uint64_t)B * hw * 768)
        nab = (uint64_t)B * hw * 768;
    p->ab = bf16 ? nab * 2 : 0;
    p->patches = bf16 ? 0 : (uint64_t)B * hw * 768 * 4;
    uint64_t ns = m->fused ? 0 : (uint64_t)m->heads * N * N;
    p->s = ns * 4;
    p->pb = bf16 ? ns * 2 : 0;
    p->pf = bf16 ? 0 : ns * 4;
    p->rs = m->fused ? 0 : (uint64_t)m->heads * N * 4;
    p->rope = 2 * hw * hd * 4;
    p->gemm_ws = DM_CU_GEMM_WS;
    p->weights = p->w_mats + p->w_vecs;
    p->activations = p->img + p->x + p->y + p->qkv + p->att + p->hid + p->up + p->qkvb + p->ab +
                     p->patches + p->s + p->pf + p->pb + p->rs + p->rope + p->gemm_ws;
    p->total = p->weights + p->activations;
}

#endif

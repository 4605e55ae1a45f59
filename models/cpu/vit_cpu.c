/* models/cpu/vit_cpu.c — the CPU backend: the DINOv3 ViT forward pass in fp32 with OpenBLAS sgemm
 * for every matrix product (linear layers and attention) and the shared layer math of
 * ../vit_math.c for the rest. fp32 weights are used in place from the mapping; bf16/fp16 weights
 * are widened one matrix at a time into a scratch buffer, so a 7B model never needs fp32 copies of
 * all its weights. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../backend_internal.h"
#include "../vit_math.h"
#include "../../src/base/base.h"

typedef struct cpu {
    const dm_model *m;
    int threads;
    int parts;           /* column slices of every GEMM (see job_gemm) */
    float *scratch;      /* widened weights, largest matrix */
    size_t scratch_n;
    /* activations, grown on demand */
    float *x, *y, *qkv, *att, *hid, *up, *s, *patches;
    float *rowscale;     /* 1/Σ of each softmax row, [nh, N] */
    size_t cap_tokens;   /* B*N the buffers hold */
    int cap_n;           /* N the score buffer holds */
    float *rcos, *rsin;  /* rope tables for (rh, rw) */
    int rh, rw;
    dm_pool *pool;       /* elementwise work on the same number of threads as the GEMMs */
} cpu;

/* --- elementwise work spread over the pool: one context type, one dispatcher per op ---- */
typedef struct rows_job {
    const dm_vit_config *cfg;
    float *x, *y;              /* in/out rows */
    const float *a, *b;        /* op parameters (weights, biases, gammas) */
    const float *lw, *lb;      /* LayerNorm after a residual add (NULL: none) */
    float *rs;                 /* softmax row scales */
    int cols;
    int64_t ld;
    const float *rcos, *rsin;  /* rope */
    int N, hw;
} rows_job;

static void job_layernorm(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_layernorm(j->x + b * j->cols, j->y + b * j->cols, e - b, j->cols, j->a, j->b,
                 j->cfg->ln_eps);
}

/* x += gamma ⊙ (y + bias), then y = LN(x) with the next norm, row by row while it is in cache */
static void job_residual_ln(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    for (int64_t r = b; r < e; r++) {
        float *x = j->x + r * j->cols, *y = j->y + r * j->cols;
        dm_residual_ls(x, y, 1, j->cols, j->a, j->b);
        if (j->lw)
            dm_layernorm(x, y, 1, j->cols, j->lw, j->lb, j->cfg->ln_eps);
    }
}

/* qkv rows: add the effective bias, then RoPE on q and k of patch tokens (not CLS/registers) */
static void job_qkv(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    int nh = j->cfg->num_heads, hd = j->cfg->head_dim, D = j->cfg->embed_dim;
    for (int64_t r = b; r < e; r++) {
        float *z = j->x + r * j->ld;
        dm_add_bias(z, 1, 3 * D, j->ld, j->a);
        int64_t p = r % j->N - (j->N - j->hw); /* patch index within its image */
        if (p < 0)
            continue;
        for (int h = 0; h < nh; h++) {
            dm_rope_apply(z + h * hd, j->ld, 1, hd, j->rcos + p * hd, j->rsin + p * hd);
            dm_rope_apply(z + D + h * hd, j->ld, 1, hd, j->rcos + p * hd, j->rsin + p * hd);
        }
    }
}

static void job_gelu(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_bias_gelu(j->x + b * j->cols, e - b, j->cols, j->a);
}

static void job_swiglu(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_bias_swiglu(j->x + b * j->cols, j->y + b * j->cols, e - b, j->cols, j->a, j->b);
}

static void cpu_destroy(void *state)
{
    cpu *c = state;
    if (!c)
        return;
    free(c->scratch), free(c->x), free(c->y), free(c->qkv), free(c->att), free(c->hid);
    free(c->up), free(c->s), free(c->patches), free(c->rcos), free(c->rsin), free(c->rowscale);
    dm_pool_free(c->pool);
    free(c);
}

static int cpu_create(const dm_model *m, const dm_backend_opts *o, void **state, dm_err *err)
{
    cpu *c = calloc(1, sizeof *c);
    if (!c)
        return dm_err_oom(err);
    c->m = m;
    c->threads = o->threads > 0 ? o->threads : openblas_get_num_threads();
    c->parts = o->gemm_parts > 0 ? o->gemm_parts : c->threads;
    /* The pool's threads run everything, GEMMs included: each calls single-threaded sgemm on
     * its share of the output columns (linear layers) or of the heads (attention). One set of
     * threads, no hand-over between OpenBLAS's and ours, and attention stays per-thread. */
    openblas_set_num_threads(1);
    if (dm_pool_create(c->threads, &c->pool)) {
        int n = c->threads;
        free(c);
        return dm_err_set(err, DM_ENOMEM, "cannot start %d threads", n);
    }
    size_t D = (size_t)m->cfg.embed_dim, F = (size_t)m->cfg.ffn_hidden;
    c->scratch_n = F * D > D * 768 ? F * D : D * 768;
    if (3 * D * D > c->scratch_n)
        c->scratch_n = 3 * D * D;
    c->scratch = malloc(c->scratch_n * sizeof(float));
    if (!c->scratch) {
        cpu_destroy(c);
        return dm_err_oom(err);
    }
    *state = c;
    return 0;
}

/* fp32 row-major view of a weight slice: in place when the file holds aligned contiguous fp32,
 * else widened into the scratch buffer (valid until the next call). */
static const float *weights_f32(cpu *c, const dm_mat *mm, dm_err *err)
{
    const dm_tensor *t = mm->t;
    const unsigned char *p = t->data + (size_t)(mm->row0 * mm->cols) * dm_dtype_size(t->dtype);
    if (t->dtype == DM_DT_F32 && !t->swap && dm_tensor_is_contiguous(t) &&
        ((uintptr_t)p & 3u) == 0)
        return (const float *)(const void *)p;
    if ((size_t)(mm->rows * mm->cols) > c->scratch_n) {
        dm_err_set(err, DM_EINVAL, "internal: scratch too small for %s", t->name);
        return NULL;
    }
    if (dm_tensor_read_f32(t, mm->row0 * mm->cols, mm->rows * mm->cols, c->scratch, err))
        return NULL;
    return c->scratch;
}

/* C[rows, mm.rows] (ldc) = A[rows, mm.cols] (lda) · W^T */
typedef struct gemm_job {
    const float *a, *w;
    float *c;
    int64_t lda, ldc, rows, outs, k;
    int parts;
} gemm_job;

/* Item i: image i / parts, its column slice i % parts: C[:, o0:o1] = A · W[o0:o1, :]^T, o split
 * in multiples of 16. OpenBLAS's Haswell sgemm gives other bits for another M or N of a call, so
 * the calls' shapes depend on neither the batch (one image per call) nor the thread count (the
 * slices are the backend's `parts`, however many threads share them): a window gets the same
 * tokens in any batch, and on a resumed run with another thread count. */
static void job_gemm(void *ctx, int64_t b, int64_t e)
{
    gemm_job *g = ctx;
    for (int64_t i = b; i < e; i++) {
        int64_t img = i / g->parts, part = i % g->parts, blocks = (g->outs + 15) / 16;
        int64_t o0 = blocks * part / g->parts * 16, o1 = blocks * (part + 1) / g->parts * 16;
        if (o1 > g->outs)
            o1 = g->outs;
        if (o1 > o0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->rows, (int)(o1 - o0),
                        (int)g->k, 1.0f, g->a + img * g->rows * g->lda, (int)g->lda,
                        g->w + o0 * g->k, (int)g->k, 0.0f, g->c + img * g->rows * g->ldc + o0,
                        (int)g->ldc);
    }
}

/* C[rows, mm.rows] (ldc) = A[rows, mm.cols] (lda) · W^T for images of img_rows rows each,
 * spread over the pool */
static int linear(cpu *c, const float *a, int64_t lda, int64_t rows, int64_t img_rows,
                  const dm_mat *mm, float *out, int64_t ldc, dm_err *err)
{
    const float *w = weights_f32(c, mm, err);
    if (!w)
        return err ? err->code : DM_EFORMAT;
    gemm_job g = { a, w, out, lda, ldc, img_rows, mm->rows, mm->cols, c->parts };
    dm_pool_run(c->pool, job_gemm, &g, (rows / img_rows) * c->parts);
    return 0;
}

static int grow(float **p, size_t n)
{
    float *q = realloc(*p, (n ? n : 1) * sizeof(float));
    if (!q)
        return -1;
    *p = q;
    return 0;
}

static int ensure(cpu *c, int B, int N, int h, int w, dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    size_t T = (size_t)B * N, D = (size_t)cfg->embed_dim, F = (size_t)cfg->ffn_hidden;
    if (T > c->cap_tokens) {
        if (grow(&c->x, T * D) || grow(&c->y, T * D) || grow(&c->qkv, T * 3 * D) ||
            grow(&c->att, T * D) || grow(&c->hid, T * F) ||
            (cfg->swiglu && grow(&c->up, T * F)) || grow(&c->patches, (size_t)h * w * 768))
            return dm_err_oom(err);
        c->cap_tokens = T;
    }
    if (N > c->cap_n) { /* scores of every head at once: [nh, N, N] */
        if (grow(&c->s, (size_t)cfg->num_heads * N * N) ||
            grow(&c->rowscale, (size_t)cfg->num_heads * N))
            return dm_err_oom(err);
        c->cap_n = N;
    }
    if (grow(&c->patches, (size_t)h * w * 768))
        return dm_err_oom(err);
    if (h != c->rh || w != c->rw) {
        size_t n = (size_t)h * w * cfg->head_dim;
        if (grow(&c->rcos, n) || grow(&c->rsin, n))
            return dm_err_oom(err);
        dm_rope_tables(cfg->periods, cfg->head_dim, h, w, c->rcos, c->rsin);
        c->rh = h;
        c->rw = w;
    }
    return 0;
}

static int embed(cpu *c, const float *images, int B, int H, int W, int N, dm_err *err)
{
    const dm_model *m = c->m;
    int D = m->cfg.embed_dim, R = m->cfg.n_storage, hw = (H / 16) * (W / 16);
    for (int b = 0; b < B; b++) {
        float *xb = c->x + (size_t)b * N * D;
        memcpy(xb, m->cls_token, (size_t)D * sizeof(float));
        if (R)
            memcpy(xb + D, m->storage, (size_t)R * D * sizeof(float));
        dm_im2patch(images + (size_t)b * 3 * H * W, H, W, c->patches);
        int rc = linear(c, c->patches, 768, hw, hw, &m->patch_w, xb + (size_t)(1 + R) * D, D,
                        err);
        if (rc)
            return rc;
        dm_add_bias(xb + (size_t)(1 + R) * D, hw, D, D, m->patch_b);
    }
    return 0;
}

typedef struct attn_job {
    cpu *c;
    float *qkv, *att; /* one image */
    int N;
} attn_job;

/* heads [b, e) of one image, each start to finish on this thread: S = QK^T·scale, exp(S - max)
 * with 1/Σ kept aside, O = S·V, O rows times 1/Σ (so S is touched twice, not three times) */
static void job_attention(void *ctx, int64_t b, int64_t e)
{
    attn_job *j = ctx;
    const dm_vit_config *cfg = &j->c->m->cfg;
    int D = cfg->embed_dim, hd = cfg->head_dim, N = j->N;
    int64_t ld = 3 * (int64_t)D;
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t h = b; h < e; h++) {
        float *s = j->c->s + (size_t)h * N * N, *rs = j->c->rowscale + h * N;
        float *o = j->att + h * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, scale, j->qkv + h * hd,
                    (int)ld, j->qkv + D + h * hd, (int)ld, 0.0f, s, N);
        dm_softmax_rows_unnorm(s, N, N, N, rs);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, 1.0f, s, N,
                    j->qkv + 2 * D + h * hd, (int)ld, 0.0f, o, D);
        for (int r = 0; r < N; r++) {
            float *v = o + (int64_t)r * D, sc = rs[r];
#pragma omp simd
            for (int i = 0; i < hd; i++)
                v[i] *= sc;
        }
    }
}

static void attention(cpu *c, int B, int N)
{
    int D = c->m->cfg.embed_dim;
    for (int b = 0; b < B; b++) {
        attn_job j = { c, c->qkv + (size_t)b * N * 3 * D, c->att + (size_t)b * N * D, N };
        dm_pool_run(c->pool, job_attention, &j, c->m->cfg.num_heads);
    }
}

static void layernorm(cpu *c, const float *x, float *y, int64_t T, const float *w, const float *b)
{
    rows_job j = { .cfg = &c->m->cfg, .x = (float *)x, .y = y, .a = w, .b = b,
                   .cols = c->m->cfg.embed_dim };
    dm_pool_run(c->pool, job_layernorm, &j, T);
}

/* x += gamma ⊙ (y + bias); then, if lw, y = LN(x). */
static void residual_ln(cpu *c, int64_t T, const float *bias, const float *gamma, const float *lw,
                        const float *lb)
{
    rows_job j = { .cfg = &c->m->cfg, .x = c->x, .y = c->y, .a = bias, .b = gamma, .lw = lw,
                   .lb = lb, .cols = c->m->cfg.embed_dim };
    dm_pool_run(c->pool, job_residual_ln, &j, T);
}

/* One block. On entry y = LN1(x) (done by the previous step); on exit x is the block's output
 * and, if next is not NULL, y = next's LN1(x). */
static int block(cpu *c, const dm_vit_block *blk, const dm_vit_block *next, int B, int N, int hw,
                 dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, F = cfg->ffn_hidden, rc;
    int64_t T = (int64_t)B * N;
    if (blk->qkv.t) { /* one [3D, D] product is faster than three [D, D] ones */
        if ((rc = linear(c, c->y, D, T, N, &blk->qkv, c->qkv, 3 * D, err)))
            return rc;
    } else if ((rc = linear(c, c->y, D, T, N, &blk->q, c->qkv, 3 * D, err)) ||
               (rc = linear(c, c->y, D, T, N, &blk->k, c->qkv + D, 3 * D, err)) ||
               (rc = linear(c, c->y, D, T, N, &blk->v, c->qkv + 2 * D, 3 * D, err))) {
        return rc;
    }
    rows_job qj = { .cfg = cfg, .x = c->qkv, .a = blk->qkv_b, .ld = 3 * D, .rcos = c->rcos,
                    .rsin = c->rsin, .N = N, .hw = hw };
    dm_pool_run(c->pool, job_qkv, &qj, T);
    attention(c, B, N);
    if ((rc = linear(c, c->att, D, T, N, &blk->proj, c->y, D, err)))
        return rc;
    residual_ln(c, T, blk->proj_b, blk->ls1, blk->norm2_w, blk->norm2_b);
    if (cfg->swiglu) {
        if ((rc = linear(c, c->y, D, T, N, &blk->w1, c->hid, F, err)) ||
            (rc = linear(c, c->y, D, T, N, &blk->w2, c->up, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .y = c->up, .a = blk->fc1_b, .b = blk->w2_b, .cols = F };
        dm_pool_run(c->pool, job_swiglu, &j, T);
    } else {
        if ((rc = linear(c, c->y, D, T, N, &blk->fc1, c->hid, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .a = blk->fc1_b, .cols = F };
        dm_pool_run(c->pool, job_gelu, &j, T);
    }
    if ((rc = linear(c, c->hid, F, T, N, &blk->fc2, c->y, D, err)))
        return rc;
    residual_ln(c, T, blk->fc2_b, blk->ls2, next ? next->norm1_w : NULL,
                next ? next->norm1_b : NULL);
    return 0;
}

static int cpu_forward(void *state, const float *images, int B, int H, int W,
                       const dm_vit_request *req, dm_err *err)
{
    cpu *c = state;
    const dm_model *m = c->m;
    int h = H / 16, w = W / 16, hw = h * w, N = dm_model_tokens(m, H, W), D = m->cfg.embed_dim;
    size_t tokbytes = (size_t)B * N * D * sizeof(float);
    int rc = ensure(c, B, N, h, w, err);
    if (rc || (rc = embed(c, images, B, H, W, N, err)))
        return rc;
    layernorm(c, c->x, c->y, (int64_t)B * N, m->blocks[0].norm1_w, m->blocks[0].norm1_b);
    for (int i = 0; i < m->cfg.depth; i++) {
        const dm_vit_block *next = i + 1 < m->cfg.depth ? &m->blocks[i + 1] : NULL;
        if ((rc = block(c, &m->blocks[i], next, B, N, hw, err)))
            return rc;
        for (int k = 0; req && k < req->n_layers; k++)
            if (req->layers[k] == i && req->layer_out && req->layer_out[k])
                memcpy(req->layer_out[k], c->x, tokbytes);
    }
    if (req && req->prenorm)
        memcpy(req->prenorm, c->x, tokbytes);
    if (req && req->normed)
        layernorm(c, c->x, req->normed, (int64_t)B * N, m->norm_w, m->norm_b);
    return 0;
}

const dm_backend_ops dm_cpu_backend = { "cpu", cpu_create, cpu_forward, cpu_destroy };

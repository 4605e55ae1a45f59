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
#include "pool.h"

typedef struct cpu {
    const dm_model *m;
    int threads;
    float *scratch;      /* widened weights, largest matrix */
    size_t scratch_n;
    /* activations, grown on demand */
    float *x, *y, *qkv, *att, *hid, *up, *s, *patches;
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

static void job_bias(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_add_bias(j->x + b * j->ld, e - b, j->cols, j->ld, j->a);
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

static void job_residual(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_residual_ls(j->x + b * j->cols, j->y + b * j->cols, e - b, j->cols, j->a, j->b);
}

static void job_softmax(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_softmax_rows(j->x + b * j->ld, (int)(e - b), j->cols, j->ld);
}

/* items = (image, head, q|k): rotate that head's patch tokens */
static void job_rope(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    int nh = j->cfg->num_heads, hd = j->cfg->head_dim, D = j->cfg->embed_dim;
    for (int64_t it = b; it < e; it++) {
        int64_t img = it / (2 * nh), h = (it / 2) % nh, s = it % 2;
        float *z = j->x + (img * j->N + (j->N - j->hw)) * j->ld + s * D + h * hd;
        dm_rope_apply(z, j->ld, j->hw, hd, j->rcos, j->rsin);
    }
}

static void cpu_destroy(void *state)
{
    cpu *c = state;
    if (!c)
        return;
    free(c->scratch), free(c->x), free(c->y), free(c->qkv), free(c->att), free(c->hid);
    free(c->up), free(c->s), free(c->patches), free(c->rcos), free(c->rsin);
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
    openblas_set_num_threads(c->threads);
    if (dm_pool_create(c->threads, &c->pool)) {
        int n = c->threads;
        free(c);
        return dm_err_set(err, DM_ENOMEM, "cannot start %d threads", n);
    }
    size_t D = (size_t)m->cfg.embed_dim, F = (size_t)m->cfg.ffn_hidden;
    c->scratch_n = F * D > D * 768 ? F * D : D * 768;
    if (D * D > c->scratch_n)
        c->scratch_n = D * D;
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
static int linear(cpu *c, const float *a, int64_t lda, int64_t rows, const dm_mat *mm, float *out,
                  int64_t ldc, dm_err *err)
{
    const float *w = weights_f32(c, mm, err);
    if (!w)
        return err ? err->code : DM_EFORMAT;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)mm->rows, (int)mm->cols,
                1.0f, a, (int)lda, w, (int)mm->cols, 0.0f, out, (int)ldc);
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
        if (grow(&c->s, (size_t)cfg->num_heads * N * N))
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
        int rc = linear(c, c->patches, 768, hw, &m->patch_w, xb + (size_t)(1 + R) * D, D, err);
        if (rc)
            return rc;
        dm_add_bias(xb + (size_t)(1 + R) * D, hw, D, D, m->patch_b);
    }
    return 0;
}

/* Attention for every image: all heads' scores by sgemm, one softmax pass over all of them on
 * the pool, then all P·V products (three phases, so the elementwise part is parallel too). */
static void attention(cpu *c, int B, int N, int hw)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, hd = cfg->head_dim, nh = cfg->num_heads;
    int64_t ld = 3 * (int64_t)D;
    float scale = 1.0f / sqrtf((float)hd);
    /* RoPE on the patch tokens only (CLS and registers are not rotated) */
    rows_job rj = { .cfg = cfg, .x = c->qkv, .ld = ld, .rcos = c->rcos, .rsin = c->rsin, .N = N,
                    .hw = hw };
    dm_pool_run(c->pool, job_rope, &rj, (int64_t)B * nh * 2);
    for (int b = 0; b < B; b++) {
        float *qkv = c->qkv + (size_t)b * N * ld;
        for (int h = 0; h < nh; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, scale, qkv + h * hd,
                        (int)ld, qkv + D + h * hd, (int)ld, 0.0f, c->s + (size_t)h * N * N, N);
        rows_job sj = { .cfg = cfg, .x = c->s, .cols = N, .ld = N };
        dm_pool_run(c->pool, job_softmax, &sj, (int64_t)nh * N);
        for (int h = 0; h < nh; h++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, 1.0f,
                        c->s + (size_t)h * N * N, N, qkv + 2 * D + h * hd, (int)ld, 0.0f,
                        c->att + (size_t)b * N * D + h * hd, D);
    }
}

static void layernorm(cpu *c, const float *x, float *y, int64_t T, const float *w, const float *b)
{
    rows_job j = { .cfg = &c->m->cfg, .x = (float *)x, .y = y, .a = w, .b = b,
                   .cols = c->m->cfg.embed_dim };
    dm_pool_run(c->pool, job_layernorm, &j, T);
}

static void residual(cpu *c, const float *y, int64_t T, const float *bias, const float *gamma)
{
    rows_job j = { .x = c->x, .y = (float *)y, .a = bias, .b = gamma, .cols = c->m->cfg.embed_dim };
    dm_pool_run(c->pool, job_residual, &j, T);
}

static int block(cpu *c, const dm_vit_block *blk, int B, int N, int hw, dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, F = cfg->ffn_hidden, rc;
    int64_t T = (int64_t)B * N;
    layernorm(c, c->x, c->y, T, blk->norm1_w, blk->norm1_b);
    if ((rc = linear(c, c->y, D, T, &blk->q, c->qkv, 3 * D, err)) ||
        (rc = linear(c, c->y, D, T, &blk->k, c->qkv + D, 3 * D, err)) ||
        (rc = linear(c, c->y, D, T, &blk->v, c->qkv + 2 * D, 3 * D, err)))
        return rc;
    rows_job bj = { .x = c->qkv, .a = blk->qkv_b, .cols = 3 * D, .ld = 3 * D };
    dm_pool_run(c->pool, job_bias, &bj, T);
    attention(c, B, N, hw);
    if ((rc = linear(c, c->att, D, T, &blk->proj, c->y, D, err)))
        return rc;
    residual(c, c->y, T, blk->proj_b, blk->ls1);
    layernorm(c, c->x, c->y, T, blk->norm2_w, blk->norm2_b);
    if (cfg->swiglu) {
        if ((rc = linear(c, c->y, D, T, &blk->w1, c->hid, F, err)) ||
            (rc = linear(c, c->y, D, T, &blk->w2, c->up, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .y = c->up, .a = blk->fc1_b, .b = blk->w2_b, .cols = F };
        dm_pool_run(c->pool, job_swiglu, &j, T);
    } else {
        if ((rc = linear(c, c->y, D, T, &blk->fc1, c->hid, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .a = blk->fc1_b, .cols = F };
        dm_pool_run(c->pool, job_gelu, &j, T);
    }
    if ((rc = linear(c, c->hid, F, T, &blk->fc2, c->y, D, err)))
        return rc;
    residual(c, c->y, T, blk->fc2_b, blk->ls2);
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
    for (int i = 0; i < m->cfg.depth; i++) {
        if ((rc = block(c, &m->blocks[i], B, N, hw, err)))
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

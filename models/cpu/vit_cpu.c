/* models/cpu/vit_cpu.c — the CPU backend: the DINOv3 ViT forward pass with the shared layer math
 * of ../vit_math.c, in one of two precisions:
 *   - fp32: OpenBLAS sgemm for every matrix product (linear layers and attention). fp32 weights
 *     are used in place from the mapping; bf16/fp16 weights are widened one matrix at a time into
 *     a scratch buffer, so a 7B model never needs fp32 copies of all its weights.
 *   - bf16: the same products as oneDNN bf16 matmuls with fp32 accumulation (bf16.c), on the same
 *     slices and threads. Weights are held in bf16: a bf16 file's are used in place from the
 *     mapping, others are rounded once when the backend is made. The activations are rounded to
 *     bf16 just before each product; LayerNorm, softmax, RoPE, biases and residuals stay fp32. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../backend_internal.h"
#include "../vit_math.h"
#include "../../src/base/base.h"
#include "bf16.h"

typedef struct wbf16 {
    const dm_mat *mm;
    const uint16_t *w; /* [mm.rows, mm.cols] bf16 row-major */
} wbf16;

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
    /* bf16 precision */
    int bf16;
    dm_bf16 *g;
    wbf16 *wb;           /* every weight matrix the forward pass multiplies by */
    int nwb;
    uint16_t *wown;      /* the ones rounded from fp32/fp16 (one allocation) */
    uint16_t *abf;       /* the current product's input rows in bf16 [B*N, K] */
    size_t cap_abf;
    uint16_t *qkvb;      /* q, k, v after bias and RoPE in bf16 [B*N, 3D] */
    uint16_t *pb;        /* softmax numerators in bf16 [nh, N, N] */
    dm_job_err jerr;     /* a job's bf16 GEMM failed */
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
    uint16_t *h;               /* bf16 copy of the rows written (NULL: none) */
} rows_job;

/* h[r, :cols] = bf16(x[r*ld, :cols]) */
static void job_to_bf16(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    for (int64_t r = b; r < e; r++)
        dm_bf16_from_f32(j->x + r * j->ld, j->h + r * j->cols, j->cols);
}

static void job_layernorm(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    dm_layernorm(j->x + b * j->cols, j->y + b * j->cols, e - b, j->cols, j->a, j->b,
                 j->cfg->ln_eps);
    if (j->h)
        dm_bf16_from_f32(j->y + b * j->cols, j->h + b * j->cols, (e - b) * j->cols);
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
        if (j->lw && j->h) /* bf16: the next product's input, rounded while in cache */
            dm_bf16_from_f32(y, j->h + r * j->cols, j->cols);
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
        for (int h = 0; p >= 0 && h < nh; h++) {
            dm_rope_apply(z + h * hd, j->ld, 1, hd, j->rcos + p * hd, j->rsin + p * hd);
            dm_rope_apply(z + D + h * hd, j->ld, 1, hd, j->rcos + p * hd, j->rsin + p * hd);
        }
        if (j->h) /* bf16: the row rounded while it is in cache */
            dm_bf16_from_f32(z, j->h + r * 3 * D, 3 * D);
    }
}

static void job_gelu(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    for (int64_t r = b; r < e; r++) {
        dm_bias_gelu(j->x + r * j->cols, 1, j->cols, j->a);
        if (j->h)
            dm_bf16_from_f32(j->x + r * j->cols, j->h + r * j->cols, j->cols);
    }
}

static void job_swiglu(void *ctx, int64_t b, int64_t e)
{
    rows_job *j = ctx;
    for (int64_t r = b; r < e; r++) {
        dm_bias_swiglu(j->x + r * j->cols, j->y + r * j->cols, 1, j->cols, j->a, j->b);
        if (j->h)
            dm_bf16_from_f32(j->x + r * j->cols, j->h + r * j->cols, j->cols);
    }
}

static void cpu_destroy(void *state)
{
    cpu *c = state;
    if (!c)
        return;
    free(c->scratch), free(c->x), free(c->y), free(c->qkv), free(c->att), free(c->hid);
    free(c->up), free(c->s), free(c->patches), free(c->rcos), free(c->rsin), free(c->rowscale);
    free(c->wb), free(c->wown), free(c->abf), free(c->qkvb), free(c->pb);
    dm_bf16_free(c->g);
    dm_pool_free(c->pool);
    free(c);
}

/* bf16 in place in the mapping? */
static const uint16_t *mapped_bf16(const dm_mat *mm)
{
    const dm_tensor *t = mm->t;
    const unsigned char *p = t->data + (size_t)(mm->row0 * mm->cols) * 2;
    if (t->dtype == DM_DT_BF16 && !t->swap && dm_tensor_is_contiguous(t) &&
        ((uintptr_t)p & 1u) == 0)
        return (const uint16_t *)(const void *)p;
    return NULL;
}

/* The bf16 weights of every matrix the forward pass multiplies by: in place where the file holds
 * bf16, else rounded once from the file's values (through the fp32 scratch, a matrix at a time). */
static int prepare_bf16(cpu *c, dm_err *err)
{
    const dm_model *m = c->m;
    int L = m->cfg.depth, n = 0;
    wbf16 *all = c->wb = calloc((size_t)L * 6 + 1, sizeof *all);
    if (!all)
        return dm_err_oom(err);
    all[n++].mm = &m->patch_w;
    for (int i = 0; i < L; i++) {
        const dm_vit_block *b = &m->blocks[i];
        if (b->qkv.t) {
            all[n++].mm = &b->qkv;
        } else {
            all[n++].mm = &b->q;
            all[n++].mm = &b->k;
            all[n++].mm = &b->v;
        }
        all[n++].mm = &b->proj;
        if (m->cfg.swiglu) {
            all[n++].mm = &b->w1;
            all[n++].mm = &b->w2;
        } else {
            all[n++].mm = &b->fc1;
        }
        all[n++].mm = &b->fc2;
    }
    c->nwb = n;
    size_t own = 0;
    for (int i = 0; i < n; i++)
        if (!mapped_bf16(all[i].mm))
            own += (size_t)(all[i].mm->rows * all[i].mm->cols);
    if (own && !(c->wown = malloc(own * sizeof(uint16_t))))
        return dm_err_oom(err);
    uint16_t *q = c->wown;
    for (int i = 0; i < n; i++) {
        const dm_mat *mm = all[i].mm;
        size_t k = (size_t)(mm->rows * mm->cols);
        if ((all[i].w = mapped_bf16(mm)))
            continue;
        if (k > c->scratch_n)
            return dm_err_set(err, DM_EINVAL, "internal: scratch too small for %s", mm->t->name);
        if (dm_tensor_read_f32(mm->t, mm->row0 * mm->cols, (int64_t)k, c->scratch, err))
            return err ? err->code : DM_EFORMAT;
        dm_bf16_from_f32(c->scratch, q, (int64_t)k);
        dm_tensor_release(mm->t, mm->row0 * mm->cols, (int64_t)k); /* only the bf16 copy stays */
        all[i].w = q;
        q += k;
    }
    return 0;
}

static const uint16_t *weights_bf16(const cpu *c, const dm_mat *mm)
{
    for (int i = 0; i < c->nwb; i++)
        if (c->wb[i].mm == mm)
            return c->wb[i].w;
    return NULL;
}

static int cpu_create(const dm_model *m, const dm_backend_opts *o, void **state, dm_err *err)
{
    if (o->precision != DM_PREC_FP32 && o->precision != DM_PREC_BF16)
        return dm_err_set(err, DM_EINVAL, "internal: the CPU backend takes fp32 or bf16 "
                          "(resolve auto first)");
    int rc;
    if (o->precision == DM_PREC_BF16 && (rc = dm_bf16_require(err)))
        return rc;
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
    c->bf16 = o->precision == DM_PREC_BF16;
    if (c->bf16 && ((rc = dm_bf16_create(1, &c->g, err)) || (rc = prepare_bf16(c, err)))) {
        cpu_destroy(c);
        return rc;
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
    cpu *be;                 /* bf16: the backend, and the inputs in bf16 (a, w unused) */
    const uint16_t *ab, *wb;
} gemm_job;

/* The column slice [o0, o1) of part `part` of `outs` outputs: multiples of 16. */
static void gemm_slice(int64_t outs, int64_t part, int parts, int64_t *o0, int64_t *o1)
{
    int64_t blocks = (outs + 15) / 16;
    *o0 = blocks * part / parts * 16;
    *o1 = blocks * (part + 1) / parts * 16;
    if (*o1 > outs)
        *o1 = outs;
}

/* Item i: image i / parts, its column slice i % parts: C[:, o0:o1] = A · W[o0:o1, :]^T, o split
 * in multiples of 16. OpenBLAS's Haswell sgemm gives other bits for another M or N of a call, so
 * the calls' shapes depend on neither the batch (one image per call) nor the thread count (the
 * slices are the backend's `parts`, however many threads share them): a window gets the same
 * tokens in any batch, and on a resumed run with another thread count. */
static void job_gemm(void *ctx, int64_t b, int64_t e)
{
    gemm_job *g = ctx;
    for (int64_t i = b; i < e; i++) {
        int64_t img = i / g->parts, part = i % g->parts, o0, o1;
        gemm_slice(g->outs, part, g->parts, &o0, &o1);
        if (o1 > o0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g->rows, (int)(o1 - o0),
                        (int)g->k, 1.0f, g->a + img * g->rows * g->lda, (int)g->lda,
                        g->w + o0 * g->k, (int)g->k, 0.0f, g->c + img * g->rows * g->ldc + o0,
                        (int)g->ldc);
    }
}

/* job_gemm in bf16: the same items and slices, A in bf16 with row stride k */
static void job_gemm_bf16(void *ctx, int64_t b, int64_t e)
{
    gemm_job *g = ctx;
    for (int64_t i = b; i < e; i++) {
        int64_t img = i / g->parts, part = i % g->parts, o0, o1;
        gemm_slice(g->outs, part, g->parts, &o0, &o1);
        dm_err err;
        if (o1 > o0 &&
            dm_bf16_gemm(g->be->g, 1, (int)g->rows, (int)(o1 - o0), (int)g->k, 1.0f,
                         g->ab + img * g->rows * g->k, g->k, g->wb + o0 * g->k, g->k, 0,
                         g->c + img * g->rows * g->ldc + o0, g->ldc, &err))
            dm_job_err_put(&g->be->jerr, &err);
    }
}

/* C[rows, mm.rows] (ldc) = A[rows, mm.cols] (lda) · W^T for images of img_rows rows each,
 * spread over the pool. bf16: ready = 1 when the step that made A also left it in c->abf (row
 * stride mm.cols), else A is rounded into it first. */
static int linear(cpu *c, const float *a, int64_t lda, int ready, int64_t rows,
                  int64_t img_rows, const dm_mat *mm, float *out, int64_t ldc, dm_err *err)
{
    if (c->bf16) {
        const uint16_t *w = weights_bf16(c, mm);
        if (!w)
            return dm_err_set(err, DM_EINVAL, "internal: no bf16 weights for %s", mm->t->name);
        rows_job cj = { .x = (float *)a, .ld = lda, .cols = (int)mm->cols, .h = c->abf };
        if (!ready)
            dm_pool_run(c->pool, job_to_bf16, &cj, rows);
        gemm_job g = { .c = out, .ldc = ldc, .rows = img_rows, .outs = mm->rows, .k = mm->cols,
                       .parts = c->parts, .be = c, .ab = c->abf, .wb = w };
        dm_pool_run(c->pool, job_gemm_bf16, &g, (rows / img_rows) * c->parts);
        return dm_job_err_take(&c->jerr, err);
    }
    const float *w = weights_f32(c, mm, err);
    if (!w)
        return err ? err->code : DM_EFORMAT;
    gemm_job g = { a, w, out, lda, ldc, img_rows, mm->rows, mm->cols, c->parts, NULL, NULL, NULL };
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

static int grow16(uint16_t **p, size_t n)
{
    uint16_t *q = realloc(*p, (n ? n : 1) * sizeof(uint16_t));
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
            (cfg->swiglu && grow(&c->up, T * F)) || grow(&c->patches, (size_t)h * w * 768) ||
            (c->bf16 && grow16(&c->qkvb, T * 3 * D)))
            return dm_err_oom(err);
        c->cap_tokens = T;
    }
    if (N > c->cap_n) { /* scores of every head at once: [nh, N, N] */
        if (grow(&c->s, (size_t)cfg->num_heads * N * N) ||
            grow(&c->rowscale, (size_t)cfg->num_heads * N) ||
            (c->bf16 && grow16(&c->pb, (size_t)cfg->num_heads * N * N)))
            return dm_err_oom(err);
        c->cap_n = N;
    }
    if (grow(&c->patches, (size_t)h * w * 768))
        return dm_err_oom(err);
    size_t nabf = T * (F > D ? F : D) > (size_t)h * w * 768 ? T * (F > D ? F : D)
                                                            : (size_t)h * w * 768;
    if (c->bf16 && nabf > c->cap_abf) {
        if (grow16(&c->abf, nabf))
            return dm_err_oom(err);
        c->cap_abf = nabf;
    }
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
        int rc = linear(c, c->patches, 768, 0, hw, hw, &m->patch_w, xb + (size_t)(1 + R) * D, D,
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
    const uint16_t *qkvb; /* bf16: the image's q, k, v in bf16 */
    uint16_t *attb;       /* bf16: the image's output rows in bf16 */
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

/* job_attention in bf16: QKᵀ and PV as bf16 matmuls, each score row's exp rounded to bf16 while
 * it is in cache; the max, Σ and 1/Σ in fp32 */
static void job_attention_bf16(void *ctx, int64_t b, int64_t e)
{
    attn_job *j = ctx;
    cpu *c = j->c;
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, hd = cfg->head_dim, N = j->N;
    int64_t ld = 3 * (int64_t)D;
    float scale = 1.0f / sqrtf((float)hd);
    dm_err err;
    for (int64_t h = b; h < e; h++) {
        float *s = c->s + (size_t)h * N * N, *rs = c->rowscale + h * N;
        uint16_t *p = c->pb + (size_t)h * N * N;
        float *o = j->att + h * hd;
        const uint16_t *q = j->qkvb + h * hd;
        if (dm_bf16_gemm(c->g, 1, N, N, hd, scale, q, ld, q + D, ld, 0, s, N, &err)) {
            dm_job_err_put(&c->jerr, &err);
            return;
        }
        for (int r = 0; r < N; r++) {
            dm_softmax_rows_unnorm(s + (int64_t)r * N, 1, N, N, rs + r);
            dm_bf16_from_f32(s + (int64_t)r * N, p + (int64_t)r * N, N);
        }
        if (dm_bf16_gemm(c->g, 0, N, hd, N, 1.0f, p, N, q + 2 * D, ld, 0, o, D, &err)) {
            dm_job_err_put(&c->jerr, &err);
            return;
        }
        for (int r = 0; r < N; r++) { /* also the projection's input in bf16 */
            float *v = o + (int64_t)r * D, sc = rs[r];
            uint16_t *vb = j->attb + (int64_t)r * D + h * hd;
#pragma omp simd
            for (int i = 0; i < hd; i++) {
                v[i] *= sc;
                vb[i] = dm_f32_bf16(v[i]);
            }
        }
    }
}

static int attention(cpu *c, int B, int N, dm_err *err)
{
    int D = c->m->cfg.embed_dim;
    for (int b = 0; b < B; b++) {
        attn_job j = { c, c->qkv + (size_t)b * N * 3 * D, c->att + (size_t)b * N * D, N,
                       c->bf16 ? c->qkvb + (size_t)b * N * 3 * D : NULL,
                       c->bf16 ? c->abf + (size_t)b * N * D : NULL };
        dm_pool_run(c->pool, c->bf16 ? job_attention_bf16 : job_attention, &j,
                    c->m->cfg.num_heads);
    }
    return dm_job_err_take(&c->jerr, err);
}

/* y = LN(x); bf16_out (if not NULL) receives y in bf16 */
static void layernorm(cpu *c, const float *x, float *y, int64_t T, const float *w, const float *b,
                      uint16_t *bf16_out)
{
    rows_job j = { .cfg = &c->m->cfg, .x = (float *)x, .y = y, .a = w, .b = b,
                   .cols = c->m->cfg.embed_dim, .h = bf16_out };
    dm_pool_run(c->pool, job_layernorm, &j, T);
}

/* x += gamma ⊙ (y + bias); then, if lw, y = LN(x). */
static void residual_ln(cpu *c, int64_t T, const float *bias, const float *gamma, const float *lw,
                        const float *lb)
{
    rows_job j = { .cfg = &c->m->cfg, .x = c->x, .y = c->y, .a = bias, .b = gamma, .lw = lw,
                   .lb = lb, .cols = c->m->cfg.embed_dim, .h = c->bf16 ? c->abf : NULL };
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
        if ((rc = linear(c, c->y, D, 1, T, N, &blk->qkv, c->qkv, 3 * D, err)))
            return rc;
    } else if ((rc = linear(c, c->y, D, 1, T, N, &blk->q, c->qkv, 3 * D, err)) ||
               (rc = linear(c, c->y, D, 1, T, N, &blk->k, c->qkv + D, 3 * D, err)) ||
               (rc = linear(c, c->y, D, 1, T, N, &blk->v, c->qkv + 2 * D, 3 * D, err))) {
        return rc;
    }
    rows_job qj = { .cfg = cfg, .x = c->qkv, .a = blk->qkv_b, .ld = 3 * D, .rcos = c->rcos,
                    .rsin = c->rsin, .N = N, .hw = hw, .h = c->bf16 ? c->qkvb : NULL };
    dm_pool_run(c->pool, job_qkv, &qj, T);
    if ((rc = attention(c, B, N, err)))
        return rc;
    if ((rc = linear(c, c->att, D, 1, T, N, &blk->proj, c->y, D, err)))
        return rc;
    residual_ln(c, T, blk->proj_b, blk->ls1, blk->norm2_w, blk->norm2_b);
    if (cfg->swiglu) {
        if ((rc = linear(c, c->y, D, 1, T, N, &blk->w1, c->hid, F, err)) ||
            (rc = linear(c, c->y, D, 1, T, N, &blk->w2, c->up, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .y = c->up, .a = blk->fc1_b, .b = blk->w2_b, .cols = F,
                       .h = c->bf16 ? c->abf : NULL };
        dm_pool_run(c->pool, job_swiglu, &j, T);
    } else {
        if ((rc = linear(c, c->y, D, 1, T, N, &blk->fc1, c->hid, F, err)))
            return rc;
        rows_job j = { .x = c->hid, .a = blk->fc1_b, .cols = F, .h = c->bf16 ? c->abf : NULL };
        dm_pool_run(c->pool, job_gelu, &j, T);
    }
    if ((rc = linear(c, c->hid, F, 1, T, N, &blk->fc2, c->y, D, err)))
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
    layernorm(c, c->x, c->y, (int64_t)B * N, m->blocks[0].norm1_w, m->blocks[0].norm1_b,
              c->bf16 ? c->abf : NULL);
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
        layernorm(c, c->x, req->normed, (int64_t)B * N, m->norm_w, m->norm_b, NULL);
    return 0;
}

const dm_backend_ops dm_cpu_backend = { "cpu", cpu_create, cpu_forward, cpu_destroy };

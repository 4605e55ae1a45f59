/* models/cuda/vit_cuda.cu — the CUDA backend: the DINOv3 ViT forward pass on one GPU, step for
 * step the CPU backend's (models/cpu/vit_cpu.c), in one of two precisions:
 *   - bf16 (the GPU's default): weights converted once to bf16 on the device; every matrix
 *     product on bf16 inputs with fp32 accumulation (cuBLASLt, gemm.cu); the step that makes a
 *     product's input writes it in bf16 as well; LayerNorm, softmax, RoPE, biases, residuals and
 *     the outputs stay fp32;
 *   - fp32: the same with fp32 weights and fp32 products (no TF32), for parity checks.
 * Activations [B·N, D] row-major fp32 as on the CPU; a batch runs as one product per linear
 * layer (M = B·N rows); attention one image at a time, all heads in one strided-batched product
 * (QKᵀ, then PV) around the softmax kernel. Outputs are copied back as the request asks: raw
 * blocks, prenorm, normed. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dm_cuda_plan.h"

typedef __nv_bfloat16 bf16_t;

typedef struct cblock {
    float *n1w, *n1b, *n2w, *n2b, *ls1, *ls2, *qkv_b, *proj_b, *fc1_b, *w2_b, *fc2_b;
    void *qkv, *proj, *fc1, *w2, *fc2; /* fc1: fc1 or the SwiGLU gate w1; w2: the SwiGLU up */
} cblock;

typedef struct cu {
    const dm_model *m;
    int gpu, bf16;
    cudaStream_t st;
    dm_cu_gemm *g;
    /* weights: matrices in one allocation (bf16 or fp32), vectors in another (fp32) */
    void *wpool;
    size_t wbytes, wused;
    float *vpool;
    size_t vn, vused;
    void *patch_w;
    float *cls, *storage, *patch_b, *norm_w, *norm_b;
    cblock *blk;
    /* activations, grown on demand */
    float *img, *x, *y, *qkv, *att, *hid, *up, *s, *pf, *rs, *patches;
    bf16_t *ab, *qkvb, *pb;
    size_t cap_img, cap_t, cap_s, cap_ab, cap_patch;
    float *rcos, *rsin;
    int rh, rw;
    void *dops; /* the device operators' state (dops.cu), made on first use */
    int fused;  /* attention in one kernel (attention.cu) rather than two products */
} cu;

int dm_cu_vit_gpu(void *state) { return ((cu *)state)->gpu; }
cudaStream_t dm_cu_vit_stream(void *state) { return ((cu *)state)->st; }
dm_cu_gemm *dm_cu_vit_gemm(void *state) { return ((cu *)state)->g; }
void **dm_cu_vit_dops_slot(void *state) { return &((cu *)state)->dops; }

static size_t esz(const cu *c) { return c->bf16 ? 2 : 4; }

static void cu_destroy(void *state)
{
    cu *c = (cu *)state;
    if (!c)
        return;
    cudaSetDevice(c->gpu);
    if (c->st)
        cudaStreamSynchronize(c->st);
    dm_cu_dops_free(c->dops);
    void *bufs[] = { c->wpool, c->vpool, c->img, c->x, c->y, c->qkv, c->att, c->hid, c->up,
                     c->s, c->pf, c->rs, c->patches, c->ab, c->qkvb, c->pb, c->rcos, c->rsin };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            cudaFree(bufs[i]);
    dm_cu_gemm_free(c->g);
    if (c->st)
        cudaStreamDestroy(c->st);
    free(c->blk);
    free(c);
}

/* --- weights ------------------------------------------------------------------------------- */

static dm_cu_shape plan_shape(const dm_model *m, int fused)
{
    const dm_vit_config *cfg = &m->cfg;
    dm_cu_shape s = { cfg->embed_dim, cfg->depth, cfg->num_heads, cfg->ffn_hidden, cfg->swiglu,
                      cfg->n_storage, fused };
    return s;
}

typedef struct loader {
    float *host;  /* pinned staging, CHUNK floats */
    float *dev;   /* device staging for the bf16 conversion, CHUNK floats */
} loader;

static const int64_t CHUNK = 8 << 20;

static int vec(cu *c, const float *src, size_t n, float **out, dm_err *err)
{
    if (c->vused + n > c->vn)
        return dm_cu_err(err, DM_EINVAL, "internal: vector pool too small");
    *out = c->vpool + c->vused;
    c->vused += (n + 63) & ~(size_t)63;
    CU_TRY(cudaMemcpyAsync(*out, src, n * sizeof(float), cudaMemcpyHostToDevice, c->st),
           "copying a bias or norm vector to the GPU");
    return 0;
}

/* A [rows, cols] slice of a weight tensor onto the GPU (bf16 or fp32), at dst + the matrix
 * offset given; the mapped file's pages are released once copied. */
static int mat_to(cu *c, loader *ld, const dm_mat *mm, void *dst, dm_err *err)
{
    int64_t n = mm->rows * mm->cols, first = mm->row0 * mm->cols;
    for (int64_t off = 0; off < n; off += CHUNK) {
        int64_t k = n - off < CHUNK ? n - off : CHUNK;
        CU_TRY(cudaStreamSynchronize(c->st), "waiting for a weight copy");
        if (dm_cu_host->tensor_read_f32(mm->t, first + off, k, ld->host, err))
            return err ? err->code : DM_EFORMAT;
        if (c->bf16) {
            CU_TRY(cudaMemcpyAsync(ld->dev, ld->host, (size_t)k * 4, cudaMemcpyHostToDevice,
                                   c->st), "copying weights to the GPU");
            dm_cu_to_bf16(ld->dev, (bf16_t *)dst + off, k, c->st);
        } else {
            CU_TRY(cudaMemcpyAsync((float *)dst + off, ld->host, (size_t)k * 4,
                                   cudaMemcpyHostToDevice, c->st), "copying weights to the GPU");
        }
    }
    CU_TRY(cudaStreamSynchronize(c->st), "converting weights on the GPU");
    dm_cu_host->tensor_release(mm->t, first, n);
    return 0;
}

static void *take(cu *c, int64_t elems)
{
    void *p = (char *)c->wpool + c->wused;
    c->wused += ((size_t)elems * esz(c) + 255) & ~(size_t)255;
    return p;
}

static int mat(cu *c, loader *ld, const dm_mat *mm, void **out, dm_err *err)
{
    *out = take(c, mm->rows * mm->cols);
    return mat_to(c, ld, mm, *out, err);
}

static int upload(cu *c, dm_err *err)
{
    const dm_model *m = c->m;
    const dm_vit_config *cfg = &m->cfg;
    int L = cfg->depth, rc = 0;
    size_t D = (size_t)cfg->embed_dim, F = (size_t)cfg->ffn_hidden, R = (size_t)cfg->n_storage;
    /* sizes first (the memory plan): one allocation each for matrices and vectors */
    dm_cu_plan plan;
    dm_cu_shape shape = plan_shape(m, c->fused);
    dm_cu_plan_make(&shape, 1, 16, 16, c->bf16, &plan);
    size_t mats = (size_t)plan.w_mats, vn = (size_t)plan.w_vecs / sizeof(float);
    c->wbytes = mats, c->vn = vn;
    CU_TRY(cudaMalloc(&c->wpool, mats), "cudaMalloc (weights)");
    CU_TRY(cudaMalloc(&c->vpool, vn * sizeof(float)), "cudaMalloc (weight vectors)");
    c->blk = (cblock *)calloc((size_t)L, sizeof *c->blk);
    if (!c->blk)
        return dm_cu_err(err, DM_ENOMEM, "out of memory");
    loader ld = { NULL, NULL };
    CU_TRY(cudaMallocHost(&ld.host, CHUNK * sizeof(float)), "cudaMallocHost (weight staging)");
    if (c->bf16 && (rc = dm_cu_check(cudaMalloc(&ld.dev, CHUNK * sizeof(float)),
                                     "cudaMalloc (weight staging)", err))) {
        cudaFreeHost(ld.host);
        return rc;
    }
    if (!(rc = vec(c, m->cls_token, D, &c->cls, err)) &&
        !(rc = (R ? vec(c, m->storage, R * D, &c->storage, err) : 0)) &&
        !(rc = vec(c, m->patch_b, D, &c->patch_b, err)) &&
        !(rc = vec(c, m->norm_w, D, &c->norm_w, err)) &&
        !(rc = vec(c, m->norm_b, D, &c->norm_b, err)))
        rc = mat(c, &ld, &m->patch_w, &c->patch_w, err);
    for (int i = 0; !rc && i < L; i++) {
        const dm_vit_block *b = &m->blocks[i];
        cblock *k = &c->blk[i];
        if ((rc = vec(c, b->norm1_w, D, &k->n1w, err)) ||
            (rc = vec(c, b->norm1_b, D, &k->n1b, err)) ||
            (rc = vec(c, b->norm2_w, D, &k->n2w, err)) ||
            (rc = vec(c, b->norm2_b, D, &k->n2b, err)) ||
            (rc = vec(c, b->ls1, D, &k->ls1, err)) || (rc = vec(c, b->ls2, D, &k->ls2, err)) ||
            (rc = vec(c, b->qkv_b, 3 * D, &k->qkv_b, err)) ||
            (rc = vec(c, b->proj_b, D, &k->proj_b, err)) ||
            (rc = vec(c, b->fc1_b, F, &k->fc1_b, err)) ||
            (rc = (cfg->swiglu ? vec(c, b->w2_b, F, &k->w2_b, err) : 0)) ||
            (rc = vec(c, b->fc2_b, D, &k->fc2_b, err)))
            break;
        if (b->qkv.t) {
            rc = mat(c, &ld, &b->qkv, &k->qkv, err);
        } else { /* q, k, v of the file as the three row blocks of one [3D, D] matrix */
            k->qkv = take(c, 3 * (int64_t)D * D);
            char *base = (char *)k->qkv;
            if (!(rc = mat_to(c, &ld, &b->q, base, err)) &&
                !(rc = mat_to(c, &ld, &b->k, base + D * D * esz(c), err)))
                rc = mat_to(c, &ld, &b->v, base + 2 * D * D * esz(c), err);
        }
        if (!rc)
            rc = mat(c, &ld, &b->proj, &k->proj, err);
        if (!rc && cfg->swiglu && !(rc = mat(c, &ld, &b->w1, &k->fc1, err)))
            rc = mat(c, &ld, &b->w2, &k->w2, err);
        if (!rc && !cfg->swiglu)
            rc = mat(c, &ld, &b->fc1, &k->fc1, err);
        if (!rc)
            rc = mat(c, &ld, &b->fc2, &k->fc2, err);
    }
    if (!rc)
        rc = dm_cu_check(cudaStreamSynchronize(c->st), "copying weights to the GPU", err);
    cudaFreeHost(ld.host);
    if (ld.dev)
        cudaFree(ld.dev);
    if (!rc && c->wused > c->wbytes)
        rc = dm_cu_err(err, DM_EINVAL, "internal: weight pool overrun");
    return rc;
}

int dm_cu_vit_create(const dm_model *m, const dm_backend_opts *o, int gpu, void **state,
                     dm_err *err)
{
    *state = NULL;
    if (o->precision != DM_PREC_FP32 && o->precision != DM_PREC_BF16)
        return dm_cu_err(err, DM_EINVAL, "internal: the CUDA backend takes fp32 or bf16 "
                         "(resolve auto first)");
    if (m->cfg.head_dim % 2 || m->cfg.embed_dim != m->cfg.num_heads * m->cfg.head_dim)
        return dm_cu_err(err, DM_EUNSUPPORTED, "CUDA backend: head dimension %d of width %d "
                         "not supported", m->cfg.head_dim, m->cfg.embed_dim);
    cu *c = (cu *)calloc(1, sizeof *c);
    if (!c)
        return dm_cu_err(err, DM_ENOMEM, "out of memory");
    c->m = m, c->gpu = gpu, c->bf16 = o->precision == DM_PREC_BF16;
    /* attention: one fused kernel in bf16 for head dimensions 64 and 128; the two products
     * around softmax.cu otherwise, or when DINOMAP_CUDA_ATTENTION=gemm (the reference) */
    const char *att = getenv("DINOMAP_CUDA_ATTENTION");
    c->fused = c->bf16 && dm_cu_attention_supported(m->cfg.head_dim) &&
               !(att && !strcmp(att, "gemm"));
    int rc = dm_cu_check(cudaSetDevice(c->gpu), "selecting the GPU", err);
    if (!rc)
        rc = dm_cu_check(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking),
                         "creating a stream", err);
    if (!rc)
        rc = dm_cu_gemm_create(c->st, &c->g, err);
    if (!rc)
        rc = upload(c, err);
    if (rc) {
        cu_destroy(c);
        return rc;
    }
    dm_cu_log(DM_LOG_INFO, "cuda:%d: %s weights on the GPU, %.1f MB; attention: %s", c->gpu,
              c->bf16 ? "bf16" : "fp32", (double)c->wused / 1e6,
              c->fused ? "fused kernel" : "two products around a softmax");
    *state = c;
    return 0;
}

/* --- buffers ------------------------------------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t bytes, const char *what, dm_err *err)
{
    if (bytes <= *cap)
        return 0;
    if (*p)
        cudaFree(*p);
    *p = NULL;
    *cap = 0;
    CU_TRY(cudaMalloc(p, bytes), what);
    *cap = bytes;
    return 0;
}

/* The buffers of a batch B of H×W images, sized by the memory plan (dm_cuda_plan.h); each grown
 * only when the plan asks for more than it has. */
static int ensure_plan(cu *c, int B, int H, int W, dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int h = H / 16, w = W / 16, hw = h * w, rc;
    dm_cu_plan p;
    dm_cu_shape shape = plan_shape(c->m, c->fused);
    dm_cu_plan_make(&shape, B, H, W, c->bf16, &p);
    size_t T = (size_t)B * (1 + cfg->n_storage + hw);
    if ((rc = grow((void **)&c->img, &c->cap_img, p.img, "cudaMalloc (images)", err)))
        return rc;
    if (T > c->cap_t) { /* the token buffers together */
        void **bufs[] = { (void **)&c->x, (void **)&c->y, (void **)&c->qkv, (void **)&c->att,
                          (void **)&c->hid, (void **)&c->up, (void **)&c->qkvb };
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (*bufs[i]) {
                cudaFree(*bufs[i]);
                *bufs[i] = NULL;
            }
        c->cap_t = 0;
        CU_TRY(cudaMalloc(&c->x, p.x), "cudaMalloc (tokens)");
        CU_TRY(cudaMalloc(&c->y, p.y), "cudaMalloc (tokens)");
        CU_TRY(cudaMalloc(&c->qkv, p.qkv), "cudaMalloc (qkv)");
        CU_TRY(cudaMalloc(&c->att, p.att), "cudaMalloc (attention output)");
        CU_TRY(cudaMalloc(&c->hid, p.hid), "cudaMalloc (MLP hidden)");
        if (p.up)
            CU_TRY(cudaMalloc(&c->up, p.up), "cudaMalloc (MLP up)");
        if (p.qkvb)
            CU_TRY(cudaMalloc(&c->qkvb, p.qkvb), "cudaMalloc (qkv bf16)");
        c->cap_t = T;
    }
    if (p.ab && (rc = grow((void **)&c->ab, &c->cap_ab, p.ab, "cudaMalloc (bf16 inputs)", err)))
        return rc;
    if (p.patches &&
        (rc = grow((void **)&c->patches, &c->cap_patch, p.patches, "cudaMalloc (patches)", err)))
        return rc;
    size_t ns = (size_t)p.s / 4;
    if (ns && ns > c->cap_s) { /* one image's scores and numerators, all heads */
        if (c->s)
            cudaFree(c->s);
        if (c->pf)
            cudaFree(c->pf);
        if (c->pb)
            cudaFree(c->pb);
        if (c->rs)
            cudaFree(c->rs);
        c->s = c->pf = c->rs = NULL;
        c->pb = NULL;
        c->cap_s = 0;
        CU_TRY(cudaMalloc(&c->s, p.s), "cudaMalloc (attention scores)");
        if (p.pb)
            CU_TRY(cudaMalloc(&c->pb, p.pb), "cudaMalloc (attention numerators)");
        if (p.pf)
            CU_TRY(cudaMalloc(&c->pf, p.pf), "cudaMalloc (attention numerators)");
        CU_TRY(cudaMalloc(&c->rs, p.rs), "cudaMalloc (softmax sums)");
        c->cap_s = ns;
    }
    if (h != c->rh || w != c->rw) { /* RoPE tables made on the host, as the CPU's */
        size_t n = (size_t)p.rope / 8;
        float *hc = (float *)malloc(n * 4), *hs = (float *)malloc(n * 4);
        if (!hc || !hs) {
            free(hc), free(hs);
            return dm_cu_err(err, DM_ENOMEM, "out of memory");
        }
        dm_cu_host->rope_tables(cfg->periods, cfg->head_dim, h, w, hc, hs);
        if (c->rcos)
            cudaFree(c->rcos);
        if (c->rsin)
            cudaFree(c->rsin);
        c->rcos = c->rsin = NULL;
        c->rh = c->rw = 0;
        rc = dm_cu_check(cudaMalloc(&c->rcos, n * 4), "cudaMalloc (RoPE)", err);
        if (!rc)
            rc = dm_cu_check(cudaMalloc(&c->rsin, n * 4), "cudaMalloc (RoPE)", err);
        if (!rc)
            rc = dm_cu_check(cudaMemcpy(c->rcos, hc, n * 4, cudaMemcpyHostToDevice), "RoPE", err);
        if (!rc)
            rc = dm_cu_check(cudaMemcpy(c->rsin, hs, n * 4, cudaMemcpyHostToDevice), "RoPE", err);
        free(hc), free(hs);
        if (!rc)
            c->rh = h, c->rw = w;
    }
    return rc;
}

static int ensure(cu *c, int B, int H, int W, dm_err *err)
{
    int rc = ensure_plan(c, B, H, W, err);
    if (rc == DM_ENOMEM && err) { /* say what the batch needs */
        dm_cu_plan p;
        dm_cu_shape shape = plan_shape(c->m, c->fused);
        dm_cu_plan_make(&shape, B, H, W, c->bf16, &p);
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        char add[400];
        int k = snprintf(add, sizeof add, " (a batch of %d at %d×%d px needs %.2f GB: %.2f GB "
                         "weights + %.2f GB activations; the GPU has %.2f GB): use a smaller "
                         "--batch", B, W, H, (double)p.total / 1e9, (double)p.weights / 1e9,
                         (double)p.activations / 1e9, (double)tot / 1e9);
        size_t l = strlen(err->msg), n = k > 0 ? (size_t)k : 0;
        if (l + n >= sizeof err->msg)
            n = sizeof err->msg - 1 - l;
        memcpy(err->msg + l, add, n);
        err->msg[l + n] = 0;
    }
    return rc;
}

/* --- the forward pass ---------------------------------------------------------------------- */

/* out[rows, outs] (ldc) = in[rows, K] · W[outs, K]ᵀ; in is the bf16 buffer in bf16 mode */
static int linear(cu *c, const void *in, int64_t rows, const void *W, int outs, int K, float *out,
                  int64_t ldc, dm_err *err)
{
    return dm_cu_gemm_run(c->g, 1, 0, outs, (int)rows, K, 1.0f, W, K, 0, in, K, 0, 0.0f, out,
                          ldc, 0, 1, c->bf16, err);
}

static int attention(cu *c, int B, int N, dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, nh = cfg->num_heads, hd = cfg->head_dim, rc;
    float scale = 1.0f / sqrtf((float)hd);
    int64_t ld = 3 * (int64_t)D, nn = (int64_t)N * N;
    if (c->fused) /* every image and head in one kernel */
        return dm_cu_attention(c->qkvb, c->att, c->ab, B, N, nh, hd, scale, c->st, err);
    for (int b = 0; b < B; b++) {
        size_t e = c->bf16 ? 2 : 4;
        const char *q = c->bf16 ? (const char *)(c->qkvb + (size_t)b * N * 3 * D)
                                : (const char *)(c->qkv + (size_t)b * N * 3 * D);
        float *o = c->att + (size_t)b * N * D;
        bf16_t *ob = c->bf16 ? c->ab + (size_t)b * N * D : NULL;
        /* S_h[t, j] = scale · q_t · k_j for every head h (a batch of nh products) */
        if ((rc = dm_cu_gemm_run(c->g, 1, 0, N, N, hd, scale, q + D * e, ld, hd, q, ld, hd, 0.0f,
                                 c->s, N, nn, nh, c->bf16, err)))
            return rc;
        dm_cu_softmax_unnorm(c->s, c->pf, c->pb, c->rs, (int64_t)nh * N, N, c->st);
        /* O_h[t, :] = Σ_j P_h[t, j] v_j */
        const void *P = c->bf16 ? (const void *)c->pb : (const void *)c->pf;
        if ((rc = dm_cu_gemm_run(c->g, 0, 0, hd, N, N, 1.0f, q + 2 * D * e, ld, hd, P, N, nn,
                                 0.0f, o, D, hd, nh, c->bf16, err)))
            return rc;
        dm_cu_scale_heads(o, ob, c->rs, N, nh, hd, D, c->st);
    }
    return 0;
}

/* One block. On entry the LN1 of x is in y (fp32) or ab (bf16); on exit x is the block's output
 * and, when next, next's LN1 of it is in y / ab. */
static int block(cu *c, const cblock *k, const cblock *next, int B, int N, int hw, dm_err *err)
{
    const dm_vit_config *cfg = &c->m->cfg;
    int D = cfg->embed_dim, F = cfg->ffn_hidden, rc;
    int64_t T = (int64_t)B * N;
    float eps = cfg->ln_eps;
    const void *in = c->bf16 ? (const void *)c->ab : (const void *)c->y;
    if ((rc = linear(c, in, T, k->qkv, 3 * D, D, c->qkv, 3 * D, err)))
        return rc;
    dm_cu_qkv_rope(c->qkv, c->qkvb, k->qkv_b, c->rcos, c->rsin, T, N, hw, D, cfg->num_heads,
                   cfg->head_dim, c->st);
    if ((rc = attention(c, B, N, err)))
        return rc;
    in = c->bf16 ? (const void *)c->ab : (const void *)c->att;
    if ((rc = linear(c, in, T, k->proj, D, D, c->y, D, err)))
        return rc;
    dm_cu_residual_ln(c->x, c->y, c->bf16 ? c->ab : NULL, T, D, k->proj_b, k->ls1, k->n2w, k->n2b,
                      eps, c->st);
    in = c->bf16 ? (const void *)c->ab : (const void *)c->y;
    if (cfg->swiglu) {
        if ((rc = linear(c, in, T, k->fc1, F, D, c->hid, F, err)) ||
            (rc = linear(c, in, T, k->w2, F, D, c->up, F, err)))
            return rc;
        dm_cu_bias_swiglu(c->hid, c->up, c->bf16 ? c->ab : NULL, k->fc1_b, k->w2_b, T, F, c->st);
    } else {
        if ((rc = linear(c, in, T, k->fc1, F, D, c->hid, F, err)))
            return rc;
        dm_cu_bias_gelu(c->hid, c->bf16 ? c->ab : NULL, k->fc1_b, T, F, c->st);
    }
    in = c->bf16 ? (const void *)c->ab : (const void *)c->hid;
    if ((rc = linear(c, in, T, k->fc2, D, F, c->y, D, err)))
        return rc;
    dm_cu_residual_ln(c->x, c->y, c->bf16 ? c->ab : NULL, T, D, k->fc2_b, k->ls2,
                      next ? next->n1w : NULL, next ? next->n1b : NULL, eps, c->st);
    return dm_cu_check(cudaGetLastError(), "a kernel launch", err);
}

static int cu_forward(void *state, const float *images, int B, int H, int W,
                      const dm_vit_request *req, dm_err *err)
{
    cu *c = (cu *)state;
    const dm_model *m = c->m;
    const dm_vit_config *cfg = &m->cfg;
    int h = H / 16, w = W / 16, hw = h * w, R = cfg->n_storage, N = 1 + R + hw;
    int D = cfg->embed_dim, rc;
    int64_t T = (int64_t)B * N;
    size_t tokbytes = (size_t)T * D * sizeof(float);
    /* outputs in host memory, or (on_device: the head beside us) in this GPU's */
    cudaMemcpyKind out_kind = req && req->on_device ? cudaMemcpyDeviceToDevice
                                                    : cudaMemcpyDeviceToHost;
    CU_TRY(cudaSetDevice(c->gpu), "selecting the GPU");
    if ((rc = ensure(c, B, H, W, err)))
        return rc;
    CU_TRY(cudaMemcpyAsync(c->img, images, (size_t)B * 3 * H * W * sizeof(float),
                           cudaMemcpyHostToDevice, c->st), "copying images to the GPU");
    /* patch embedding: the patch matrix, its product (into y), then the token rows */
    dm_cu_im2patch(c->img, B, H, W, c->bf16 ? NULL : c->patches, c->bf16 ? c->ab : NULL, c->st);
    const void *pin = c->bf16 ? (const void *)c->ab : (const void *)c->patches;
    if ((rc = linear(c, pin, (int64_t)B * hw, c->patch_w, D, 768, c->y, D, err)))
        return rc;
    dm_cu_embed(c->x, c->y, c->cls, c->storage, c->patch_b, B, N, R, D, c->st);
    dm_cu_layernorm(c->x, c->bf16 ? NULL : c->y, c->bf16 ? c->ab : NULL, T, D, c->blk[0].n1w,
                    c->blk[0].n1b, cfg->ln_eps, c->st);
    for (int i = 0; i < cfg->depth; i++) {
        const cblock *next = i + 1 < cfg->depth ? &c->blk[i + 1] : NULL;
        if ((rc = block(c, &c->blk[i], next, B, N, hw, err)))
            return rc;
        for (int k = 0; req && k < req->n_layers; k++)
            if (req->layers[k] == i && req->layer_out && req->layer_out[k])
                CU_TRY(cudaMemcpyAsync(req->layer_out[k], c->x, tokbytes, out_kind, c->st),
                       "copying a block's output from the GPU");
    }
    if (req && req->prenorm)
        CU_TRY(cudaMemcpyAsync(req->prenorm, c->x, tokbytes, out_kind, c->st),
               "copying tokens from the GPU");
    if (req && req->normed) {
        dm_cu_layernorm(c->x, c->y, NULL, T, D, c->norm_w, c->norm_b, cfg->ln_eps, c->st);
        CU_TRY(cudaMemcpyAsync(req->normed, c->y, tokbytes, out_kind, c->st),
               "copying tokens from the GPU");
    }
    CU_TRY(cudaGetLastError(), "a kernel launch");
    CU_TRY(cudaStreamSynchronize(c->st), "the forward pass");
    return 0;
}

const dm_backend_ops dm_cu_vit_ops = { "cuda", NULL, cu_forward, cu_destroy };

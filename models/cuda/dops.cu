/* models/cuda/dops.cu — models/dops.h on one GPU backend: the operators a head runs through
 * beside the backbone (the CHMv2 DPT decoder), queued on the backend's stream, products through
 * its cuBLASLt context. State per backend: the precision of the convolutions, their bf16 weight
 * copies (converted on the device once, kept by address as ops_cpu.c keeps its own), and the
 * scratch of im2col and of the transposed convolution's product. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "../kernel_math.h"

enum { MAX_WC = 128 };
static const size_t COL_CAP = (size_t)32 << 20; /* im2col elements per band (≤ 128 MB fp32) */

typedef struct wcopy {
    const float *w;
    size_t n;
    __nv_bfloat16 *h;
} wcopy;

typedef struct dstate {
    void *be; /* the backend state */
    int gpu, bf16;
    cudaStream_t st;
    dm_cu_gemm *g;
    void *col;
    size_t col_bytes;
    float *T;
    size_t T_bytes;
    wcopy wc[MAX_WC];
    int nwc;
} dstate;

void dm_cu_dops_free(void *p)
{
    dstate *d = (dstate *)p;
    if (!d)
        return;
    cudaSetDevice(d->gpu);
    cudaStreamSynchronize(d->st);
    for (int i = 0; i < d->nwc; i++)
        cudaFree(d->wc[i].h);
    if (d->col)
        cudaFree(d->col);
    if (d->T)
        cudaFree(d->T);
    free(d);
}

#define D_ ((dstate *)ctx)
#define SET_DEV() CU_TRY(cudaSetDevice(D_->gpu), "selecting the GPU")

static int scratch(void **p, size_t *cap, size_t bytes, const char *what, dm_err *err)
{
    if (*cap >= bytes)
        return 0;
    if (*p)
        cudaFree(*p);
    *p = NULL;
    *cap = 0;
    CU_TRY(cudaMalloc(p, bytes), what);
    *cap = bytes;
    return 0;
}

static int d_alloc(void *ctx, size_t bytes, void **p, dm_err *err)
{
    SET_DEV();
    *p = NULL;
    CU_TRY(cudaMalloc(p, bytes ? bytes : 1), "cudaMalloc (head maps)");
    return 0;
}

static void d_release(void *ctx, void *p)
{
    if (!p)
        return;
    cudaSetDevice(D_->gpu);
    cudaStreamSynchronize(D_->st); /* the memory may still be in use by queued work */
    cudaFree(p);
}

static int d_put(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err)
{
    SET_DEV();
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, D_->st), "copying to the GPU");
    /* src is the caller's pageable memory, which it may change as soon as we return */
    CU_TRY(cudaStreamSynchronize(D_->st), "copying to the GPU");
    return 0;
}

static int d_get(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err)
{
    SET_DEV();
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, D_->st),
           "copying from the GPU");
    CU_TRY(cudaStreamSynchronize(D_->st), "the head on the GPU");
    return 0;
}

static int d_copy(void *ctx, void *dst, const void *src, size_t bytes, dm_err *err)
{
    SET_DEV();
    CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, D_->st),
           "copying on the GPU");
    return 0;
}

static int d_prec(void *ctx, int precision, dm_err *err)
{
    if (precision != DM_PREC_FP32 && precision != DM_PREC_BF16)
        return dm_cu_err(err, DM_EINVAL, "internal: the operators take fp32 or bf16");
    D_->bf16 = precision == DM_PREC_BF16;
    return 0;
}

static int d_sgemm(void *ctx, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc, dm_err *err)
{
    SET_DEV();
    /* row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ on the same memory */
    return dm_cu_gemm_run(D_->g, tb, ta, N, M, K, alpha, B, ldb, 0, A, lda, 0, beta, C, ldc, 0, 1,
                          0, err);
}

/* the bf16 copy of the weights w (n floats), made on first use */
static const __nv_bfloat16 *weights_bf16(dstate *d, const float *w, size_t n, dm_err *err)
{
    for (int i = 0; i < d->nwc; i++)
        if (d->wc[i].w == w && d->wc[i].n == n)
            return d->wc[i].h;
    if (d->nwc == MAX_WC) { /* more weight arrays than any head has: start over */
        cudaStreamSynchronize(d->st);
        for (int i = 0; i < d->nwc; i++)
            cudaFree(d->wc[i].h);
        d->nwc = 0;
    }
    __nv_bfloat16 *h = NULL;
    if (dm_cu_check(cudaMalloc(&h, n * 2), "cudaMalloc (bf16 head weights)", err))
        return NULL;
    dm_cu_to_bf16(w, h, (int64_t)n, d->st);
    d->wc[d->nwc++] = wcopy{ w, n, h };
    return h;
}

static int d_conv(void *ctx, const dm_conv_spec *s, int y0, int ny, dm_err *err)
{
    SET_DEV();
    dstate *d = D_;
    if (s->cin < 1 || s->cout < 1 || s->k < 1 || s->stride < 1 || s->pad < 0 || s->H < 1 ||
        s->W < 1)
        return dm_cu_err(err, DM_EINVAL, "conv2d on the GPU: bad geometry");
    int Wi = s->up2 ? 2 * s->W : s->W, Wo = dm_cm_conv_out(Wi, s->k, s->stride, s->pad);
    size_t K = (size_t)s->cin * s->k * s->k, es = d->bf16 ? 2 : 4;
    size_t need = K * (size_t)dm_cu_conv_ld(Wo), elems = need > COL_CAP ? need : COL_CAP;
    int rc = scratch(&d->col, &d->col_bytes, elems * es, "cudaMalloc (im2col)", err);
    if (rc)
        return rc;
    const void *w = s->w;
    if (d->bf16 && !(w = weights_bf16(d, s->w, (size_t)s->cout * K, err)))
        return err ? err->code : DM_ENOMEM;
    return dm_cu_conv(d->g, d->st, s, y0, ny, w, d->bf16, d->col, d->col_bytes / es, err);
}

static int d_convt(void *ctx, const float *in, int cin, int H, int W, const float *w,
                   const float *bias, int cout, int k, float *out, dm_err *err)
{
    SET_DEV();
    dstate *d = D_;
    if (cin < 1 || cout < 1 || k < 1 || H < 1 || W < 1)
        return dm_cu_err(err, DM_EINVAL, "conv_transpose2d on the GPU: bad geometry");
    int rc = scratch((void **)&d->T, &d->T_bytes, (size_t)cout * k * k * H * W * 4,
                     "cudaMalloc (transposed convolution)", err);
    return rc ? rc : dm_cu_conv_t(d->g, d->st, in, cin, H, W, w, bias, cout, k, out, d->T, err);
}

static int d_resize(void *ctx, const float *in, int C, int Hi, int Wi, float *out, int Ho, int Wo,
                    int ac, dm_err *err)
{
    SET_DEV();
    if (C < 1 || Hi < 1 || Wi < 1 || Ho < 1 || Wo < 1)
        return dm_cu_err(err, DM_EINVAL, "bilinear resize on the GPU: bad size");
    dm_cu_resize(in, C, Hi, Wi, out, Ho, Wo, ac, D_->st);
    return dm_cu_check(cudaGetLastError(), "the resize kernel", err);
}

static int d_gelu(void *ctx, float *x, int64_t rows, int cols, const float *bias, dm_err *err)
{
    SET_DEV();
    dm_cu_bias_gelu(x, NULL, bias, rows, cols, D_->st);
    return dm_cu_check(cudaGetLastError(), "the bias + GELU kernel", err);
}

static int d_fill(void *ctx, float *x, int rows, int64_t cols, int64_t ld, const float *bias,
                  dm_err *err)
{
    SET_DEV();
    dm_cu_fill_rows(x, rows, cols, ld, bias, D_->st);
    return dm_cu_check(cudaGetLastError(), "the bias kernel", err);
}

static int d_add(void *ctx, float *x, const float *s, int64_t n, dm_err *err)
{
    SET_DEV();
    dm_cu_add(x, s, n, D_->st);
    return dm_cu_check(cudaGetLastError(), "the add kernel", err);
}

static int d_ln(void *ctx, float *x, int64_t rows, int D, const float *w, const float *b,
                float eps, dm_err *err)
{
    SET_DEV();
    dm_cu_layernorm(x, x, NULL, rows, D, w, b, eps, D_->st); /* in place: see layernorm.cu */
    return dm_cu_check(cudaGetLastError(), "the LayerNorm kernel", err);
}

static int d_heights(void *ctx, const float *z, int64_t ld, int64_t npix, int nbins,
                     const float *bins, float *height, dm_err *err)
{
    SET_DEV();
    dm_cu_heights(z, ld, npix, nbins, bins, height, D_->st);
    return dm_cu_check(cudaGetLastError(), "the heights kernel", err);
}

static int d_sync(void *ctx, dm_err *err)
{
    SET_DEV();
    CU_TRY(cudaStreamSynchronize(D_->st), "the head on the GPU");
    return 0;
}

int dm_cu_dops(void *state, dm_dops *o, dm_err *err)
{
    void **slot = dm_cu_vit_dops_slot(state);
    if (!*slot) {
        dstate *d = (dstate *)calloc(1, sizeof *d);
        if (!d)
            return dm_cu_err(err, DM_ENOMEM, "out of memory");
        d->be = state, d->gpu = dm_cu_vit_gpu(state), d->st = dm_cu_vit_stream(state);
        d->g = dm_cu_vit_gemm(state);
        *slot = d;
    }
    memset(o, 0, sizeof *o);
    o->ctx = *slot;
    o->alloc = d_alloc, o->release = d_release, o->put = d_put, o->get = d_get;
    o->copy = d_copy, o->set_precision = d_prec, o->sgemm = d_sgemm, o->conv = d_conv;
    o->conv_t = d_convt, o->resize = d_resize, o->bias_gelu = d_gelu, o->fill_rows = d_fill;
    o->add = d_add, o->layernorm = d_ln, o->heights = d_heights, o->sync = d_sync;
    return 0;
}

/* models/cpu/ops_cpu.c — the CPU's dense operations (see ../ops.h): GEMMs through OpenBLAS, the
 * pool, and the convolutions and bilinear resizing of the DPT heads. Convolutions
 * are GEMMs: im2col of a band of output rows into a per-thread scratch matrix, then
 * out[Cout, band] += W[Cout, Cin·k·k] × col[Cin·k·k, band]. Bias (and the residual, with
 * DM_CONV_ACCUM) is placed in the output first so the GEMM accumulates onto it with beta = 1.
 * The work is a list of tasks (bands × output-channel slices) cut from the shapes alone; each
 * thread takes a contiguous share of it. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/base/base.h"
#include "../model.h"
#include "../kernel_math.h"
#include "../ops.h"
#include "bf16.h"

/* Scratch cap for one thread's im2col band, in floats (16 MB): enough columns to amortise the
 * packing of the weights in each SGEMM (smaller bands measured slower on one and two threads). */
#define COL_CAP ((size_t)1 << 22)
/* Columns per band when a 1×1 convolution reads its input as it lies (no scratch). */
#define DIRECT_COLS 4096
/* Cut a convolution into at least this many tasks when the map allows (bands first, then
 * slices of at least MIN_SLICE output channels), so that all threads get work on small maps. */
#define MIN_TASKS 16
#define MIN_SLICE 32
#define MIN_COLS 256

enum { SLOT_COL = 0, SLOT_WIN = 1, SLOT_OUT = 2, SLOT_HROW = 3 };

void dm_ops_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void dm_ops_sgemv(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                  float *y)
{
    cblas_sgemv(CblasRowMajor, CblasNoTrans, M, N, alpha, A, lda, x, 1, beta, y, 1);
}

/* --- workspace ------------------------------------------------------------------------------- */

typedef struct wbf {
    const float *w; /* the caller's fp32 weights */
    size_t n;
    uint16_t *h;    /* their bf16 copy */
} wbf;

struct dm_ops {
    int n;          /* threads, the caller's included */
    dm_pool *pool;  /* NULL when n == 1 */
    float **buf;    /* [n][DM_OPS_SLOTS] */
    size_t *cap;
    dm_ops_job fn; /* the job being run */
    void *ctx;
    /* bf16 products */
    int bf16;
    dm_bf16 *g;
    uint16_t **hbuf; /* [n] a band's GEMM operand in bf16 */
    size_t *hcap;
    wbf *wc;         /* weights rounded so far */
    int nwc, capwc;
    dm_job_err jerr;
};

int dm_ops_create(int threads, dm_ops **out, dm_err *err)
{
    *out = NULL;
    dm_ops *ws = calloc(1, sizeof *ws);
    int n = threads < 1 ? 1 : threads;
    if (!ws)
        return dm_err_oom(err);
    ws->n = n;
    ws->buf = calloc((size_t)n * DM_OPS_SLOTS, sizeof *ws->buf);
    ws->cap = calloc((size_t)n * DM_OPS_SLOTS, sizeof *ws->cap);
    if (!ws->buf || !ws->cap) {
        dm_ops_free(ws);
        return dm_err_oom(err);
    }
    if (n > 1) {
        openblas_set_num_threads(1); /* our threads call sgemm; OpenBLAS must not add its own */
        if (dm_pool_create(n, &ws->pool)) {
            dm_ops_free(ws);
            return dm_err_set(err, DM_ENOMEM, "cannot start %d threads", n);
        }
    }
    *out = ws;
    return 0;
}

void dm_ops_free(dm_ops *ws)
{
    if (!ws)
        return;
    dm_pool_free(ws->pool);
    for (int i = 0; ws->hbuf && i < ws->n; i++)
        free(ws->hbuf[i]);
    free(ws->hbuf), free(ws->hcap);
    for (int i = 0; i < ws->nwc; i++)
        free(ws->wc[i].h);
    free(ws->wc);
    dm_bf16_free(ws->g);
    for (int i = 0; ws->buf && i < ws->n * DM_OPS_SLOTS; i++)
        free(ws->buf[i]);
    free(ws->buf);
    free(ws->cap);
    free(ws);
}

int dm_ops_threads(const dm_ops *ws) { return ws ? ws->n : 1; }

int dm_ops_set_precision(dm_ops *ws, int precision, dm_err *err)
{
    if (precision != DM_PREC_FP32 && precision != DM_PREC_BF16)
        return dm_err_set(err, DM_EINVAL, "internal: the operators take fp32 or bf16");
    int rc;
    if (precision == DM_PREC_BF16 && (rc = dm_bf16_require(err)))
        return rc;
    if (precision == DM_PREC_BF16 && !ws->g) {
        if (!(ws->hbuf = calloc((size_t)ws->n, sizeof *ws->hbuf)) ||
            !(ws->hcap = calloc((size_t)ws->n, sizeof *ws->hcap)))
            return dm_err_oom(err);
        if ((rc = dm_bf16_create(1, &ws->g, err)))
            return rc;
    }
    ws->bf16 = precision == DM_PREC_BF16;
    return 0;
}

int dm_ops_precision(const dm_ops *ws) { return ws && ws->bf16 ? DM_PREC_BF16 : DM_PREC_FP32; }

/* The bf16 copy of n weights at w, made on first use (on the caller's thread, before a job). */
static const uint16_t *weights_bf16(dm_ops *ws, const float *w, size_t n, dm_err *err)
{
    for (int i = 0; i < ws->nwc; i++)
        if (ws->wc[i].w == w && ws->wc[i].n == n)
            return ws->wc[i].h;
    if (ws->nwc == ws->capwc) {
        int cap = ws->capwc ? 2 * ws->capwc : 32;
        wbf *q = realloc(ws->wc, (size_t)cap * sizeof *q);
        if (!q) {
            dm_err_oom(err);
            return NULL;
        }
        ws->wc = q;
        ws->capwc = cap;
    }
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) {
        dm_err_oom(err);
        return NULL;
    }
    dm_bf16_from_f32(w, h, (int64_t)n);
    ws->wc[ws->nwc++] = (wbf){ w, n, h };
    return h;
}

/* Thread tid's bf16 scratch of at least n values (grown on its own thread), or NULL. */
static uint16_t *hscratch(dm_ops *ws, int tid, size_t n)
{
    if (ws->hcap[tid] < n) {
        free(ws->hbuf[tid]);
        ws->hcap[tid] = 0;
        if (!(ws->hbuf[tid] = malloc(n * sizeof(uint16_t))))
            return NULL;
        ws->hcap[tid] = n;
    }
    return ws->hbuf[tid];
}



int dm_ops_reserve(dm_ops *ws, int slot, size_t n, dm_err *err)
{
    for (int t = 0; t < ws->n; t++) {
        size_t i = (size_t)t * DM_OPS_SLOTS + (size_t)slot;
        if (ws->cap[i] >= n)
            continue;
        free(ws->buf[i]);
        ws->cap[i] = 0;
        if (!(ws->buf[i] = malloc((n ? n : 1) * sizeof(float))))
            return dm_err_oom(err);
        ws->cap[i] = n;
    }
    return 0;
}

float *dm_ops_buf(const dm_ops *ws, int tid, int slot)
{
    return ws->buf[(size_t)tid * DM_OPS_SLOTS + (size_t)slot];
}

static void trampoline(void *ctx, int64_t b, int64_t e)
{
    dm_ops *ws = ctx;
    for (int64_t i = b; i < e; i++)
        ws->fn(ws->ctx, (int)i, ws->n);
}

void dm_ops_run(dm_ops *ws, dm_ops_job fn, void *ctx)
{
    if (ws->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    ws->fn = fn;
    ws->ctx = ctx;
    dm_pool_run(ws->pool, trampoline, ws, ws->n); /* one item per thread: its index */
}

void dm_ops_share(int64_t n, int tid, int nthreads, int64_t *b, int64_t *e)
{
    *b = n * tid / nthreads;
    *e = n * (tid + 1) / nthreads;
}

/* ws, or a one-thread workspace of the call's own in *own (freed by the caller). */
static int use_ws(dm_ops **ws, dm_ops **own, dm_err *err)
{
    *own = NULL;
    if (*ws)
        return 0;
    int rc = dm_ops_create(1, own, err);
    *ws = *own;
    return rc;
}

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int cdiv(int a, int b) { return (a + b - 1) / b; }
static inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

/* --- bilinear tables and rows ---------------------------------------------------------------- */

/* Source index pairs and weights along one axis, as PyTorch's CPU upsample_bilinear2d kernel
 * computes them in fp32 (area_pixel_compute_source_index + guard_index_and_lambda). */
static void lin_table(int in, int out, int ac, int *i0, int *i1, float *lam)
{
    for (int d = 0; d < out; d++) /* the CUDA resize's own arithmetic (kernel_math.h) */
        dm_cm_lin_src(d, in, out, ac, &i0[d], &i1[d], &lam[d]);
}

/* The tables of a resize Hi×Wi → Ho×Wo, in one allocation. */
typedef struct lin2 {
    int *y0, *y1, *x0, *x1;
    float *ly, *lx;
    int Wo;
} lin2;

static int lin2_make(lin2 *t, int Hi, int Wi, int Ho, int Wo, int ac, dm_err *err)
{
    size_t n = (size_t)Ho + (size_t)Wo;
    int *idx = malloc(2 * n * sizeof *idx);
    float *lam = malloc(n * sizeof *lam);
    if (!idx || !lam) {
        free(idx);
        free(lam);
        return dm_err_oom(err);
    }
    t->y0 = idx, t->y1 = idx + Ho, t->x0 = idx + 2 * Ho, t->x1 = idx + 2 * Ho + Wo;
    t->ly = lam, t->lx = lam + Ho;
    t->Wo = Wo;
    lin_table(Hi, Ho, ac, t->y0, t->y1, t->ly);
    lin_table(Wi, Wo, ac, t->x0, t->x1, t->lx);
    return 0;
}

static void lin2_free(lin2 *t)
{
    free(t->y0);
    free(t->ly);
}

/* The horizontal half of a row: h[x] = wx0·r[x0] + wx1·r[x1] (one source row, all columns). */
static void bilinear_h(const lin2 *t, const float *r, float *h)
{
    const int *x0 = t->x0, *x1 = t->x1;
    const float *lx = t->lx;
    for (int x = 0; x < t->Wo; x++) {
        float wx1 = lx[x], wx0 = 1.0f - wx1;
        h[x] = wx0 * r[x0[x]] + wx1 * r[x1[x]];
    }
}

/* The vertical half: output row y from the horizontal halves of its two source rows (the same
 * operations, in the same order, as bilinear_row). */
static void bilinear_v(const lin2 *t, int y, const float *h0, const float *h1, float *d)
{
    float wy1 = t->ly[y], wy0 = 1.0f - wy1;
    for (int x = 0; x < t->Wo; x++)
        d[x] = wy0 * h0[x] + wy1 * h1[x];
}

/* Output row y of one plane (Wi columns). */
static void bilinear_row(const lin2 *t, const float *plane, int Wi, int y, float *d)
{
    const float *r0 = plane + (size_t)t->y0[y] * Wi, *r1 = plane + (size_t)t->y1[y] * Wi;
    const int *x0 = t->x0, *x1 = t->x1;
    const float *lx = t->lx;
    float wy1 = t->ly[y], wy0 = 1.0f - wy1;
    for (int x = 0; x < t->Wo; x++) {
        float wx1 = lx[x], wx0 = 1.0f - wx1;
        /* the order of PyTorch's separable kernel: along x inside, then along y */
        d[x] = wy0 * (wx0 * r0[x0[x]] + wx1 * r0[x1[x]]) +
               wy1 * (wx0 * r1[x0[x]] + wx1 * r1[x1[x]]);
    }
}

/* --- convolution ----------------------------------------------------------------------------- */

int dm_conv_out_size(int n, int k, int stride, int pad)
{
    return (n + 2 * pad - k) / stride + 1;
}

/* col[(ci·k+ky)·k+kx, yy·Wo+x] = in[ci, (y0+yy)·s−p+ky, x·s−p+kx] (0 outside), yy < n, where in
 * holds only the rows [r0, r0+wr) of the H×W image (each plane wr rows long) and every row the
 * band reads inside the image lies there. */
static void im2col(const float *in, int cin, int r0, int wr, int H, int W, int k, int s, int p,
                   int y0, int n, int Wo, int relu_in, float *col)
{
    size_t ncol = (size_t)n * Wo;
    for (int ci = 0; ci < cin; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *dst = col + ((size_t)(ci * k + ky) * k + kx) * ncol;
                /* output columns whose input column lies inside the image */
                int xlo = 0, xhi = Wo;
                while (xlo < Wo && xlo * s - p + kx < 0)
                    xlo++;
                while (xhi > xlo && (xhi - 1) * s - p + kx >= W)
                    xhi--;
                for (int yy = 0; yy < n; yy++) {
                    float *d = dst + (size_t)yy * Wo;
                    int iy = (y0 + yy) * s - p + ky;
                    if (iy < 0 || iy >= H) {
                        memset(d, 0, (size_t)Wo * sizeof *d);
                        continue;
                    }
                    const float *src = in + ((size_t)ci * wr + (size_t)(iy - r0)) * W;
                    int off = kx - p; /* x·s + off >= 0 for x >= xlo */
                    for (int x = 0; x < xlo; x++)
                        d[x] = 0.0f;
                    if (s == 1) {
                        if (relu_in)
                            for (int x = xlo; x < xhi; x++)
                                d[x] = relu(src[x + off]);
                        else if (xhi > xlo)
                            memcpy(d + xlo, src + xlo + off, (size_t)(xhi - xlo) * sizeof *d);
                    } else {
                        for (int x = xlo; x < xhi; x++) {
                            float v = src[x * s + off];
                            d[x] = relu_in ? relu(v) : v;
                        }
                    }
                    for (int x = xhi; x < Wo; x++)
                        d[x] = 0.0f;
                }
            }
}

/* A convolution cut into tasks: nb bands of nr output rows × ms slices of msz output channels. */
typedef struct plan {
    int Hi, Wi, Ho, Wo; /* the input the convolution sees (2H×2W with up2), the output */
    size_t K, plane;
    int direct;         /* 1×1, stride 1, no padding, no ReLU on the input: no im2col */
    int nr, nb, msz, ms;
    size_t col_n, win_n, hrow_n, out_n; /* per-thread scratch, floats */
} plan;

static void make_plan(const dm_conv_spec *s, plan *p)
{
    p->Hi = s->up2 ? 2 * s->H : s->H;
    p->Wi = s->up2 ? 2 * s->W : s->W;
    p->Ho = dm_conv_out_size(p->Hi, s->k, s->stride, s->pad);
    p->Wo = dm_conv_out_size(p->Wi, s->k, s->stride, s->pad);
    p->K = (size_t)s->cin * s->k * s->k;
    p->plane = (size_t)p->Ho * p->Wo;
    p->direct = s->k == 1 && s->stride == 1 && s->pad == 0 && !(s->flags & DM_CONV_RELU_IN);
    /* scratch per output row: the im2col columns, or (1×1 on an upsampled input) its rows */
    size_t per_row = !p->direct ? p->K * (size_t)p->Wo : s->up2 ? (size_t)s->cin * p->Wo : 0;
    size_t cap = per_row ? COL_CAP / per_row : (size_t)DIRECT_COLS / (size_t)p->Wo;
    int nr = cap < 1 ? 1 : cap > (size_t)p->Ho ? p->Ho : (int)cap;
    /* enough bands for the threads, but none narrower than MIN_COLS (each SGEMM packs all the
     * weights it uses: on small maps, slices of the output channels share the work instead) */
    int want = cdiv(p->Ho, MIN_TASKS), least = cdiv(MIN_COLS, p->Wo);
    nr = imin(nr, want > least ? want : least);
    p->nb = cdiv(p->Ho, nr);
    p->nr = cdiv(p->Ho, p->nb); /* even bands */
    p->nb = cdiv(p->Ho, p->nr);
    p->ms = 1, p->msz = s->cout;
    if (!s->epi && p->nb < MIN_TASKS && s->cout >= 2 * MIN_SLICE) {
        int ms = imin(cdiv(MIN_TASKS, p->nb), s->cout / MIN_SLICE);
        p->msz = (cdiv(s->cout, ms) + 15) / 16 * 16;
        p->ms = cdiv(s->cout, p->msz);
    }
    p->col_n = p->direct ? 0 : p->K * (size_t)p->nr * p->Wo;
    int wrows = imin(p->Hi, (p->nr - 1) * s->stride + s->k);
    p->win_n = s->up2 ? (size_t)s->cin * wrows * p->Wi : 0;
    p->hrow_n = s->up2 ? (size_t)(wrows + 2) * p->Wi : 0; /* source rows of a window, one plane */
    p->out_n = s->out ? 0 : (size_t)s->cout * p->nr * p->Wo;
}

typedef struct conv_job {
    const dm_conv_spec *s;
    const plan *p;
    dm_ops *ws;
    const lin2 *up; /* up2 tables, or NULL */
    const uint16_t *wh; /* bf16: the weights in bf16 */
} conv_job;

/* The GEMM's right operand for the band [y0, y0+n) and its row stride. */
static const float *band_source(const conv_job *j, int tid, int y0, int n, size_t *ldb)
{
    const dm_conv_spec *s = j->s;
    const plan *p = j->p;
    const float *src = s->in;
    int r0 = 0, wr = s->H;
    if (s->up2) { /* the upsampled rows this band reads, made here */
        r0 = y0 * s->stride - s->pad;
        r0 = r0 < 0 ? 0 : r0;
        int r1 = imin(p->Hi, (y0 + n - 1) * s->stride - s->pad + s->k);
        wr = r1 > r0 ? r1 - r0 : 0;
        float *win = dm_ops_buf(j->ws, tid, SLOT_WIN);
        float *hr = dm_ops_buf(j->ws, tid, SLOT_HROW);
        const lin2 *u = j->up;
        /* the source rows these read (the tables are nondecreasing), each interpolated along x
         * once, then mixed along y */
        int s0 = wr ? u->y0[r0] : 0, s1 = wr ? u->y1[r0 + wr - 1] : -1;
        for (int ci = 0; ci < s->cin; ci++) {
            const float *plane = s->in + (size_t)ci * s->H * s->W;
            for (int sy = s0; sy <= s1; sy++)
                bilinear_h(u, plane + (size_t)sy * s->W, hr + (size_t)(sy - s0) * p->Wi);
            for (int y = 0; y < wr; y++)
                bilinear_v(u, r0 + y, hr + (size_t)(u->y0[r0 + y] - s0) * p->Wi,
                           hr + (size_t)(u->y1[r0 + y] - s0) * p->Wi,
                           win + ((size_t)ci * wr + (size_t)y) * p->Wi);
        }
        src = win;
    }
    if (p->direct) {
        *ldb = s->up2 ? (size_t)n * p->Wo : p->plane;
        return s->up2 ? src : src + (size_t)y0 * p->Wo;
    }
    float *col = dm_ops_buf(j->ws, tid, SLOT_COL);
    im2col(src, s->cin, r0, wr, p->Hi, p->Wi, s->k, s->stride, s->pad, y0, n, p->Wo,
           s->flags & DM_CONV_RELU_IN, col);
    *ldb = (size_t)n * p->Wo;
    return col;
}

static void conv_task(void *ctx, int tid, int nt)
{
    const conv_job *j = ctx;
    const dm_conv_spec *s = j->s;
    const plan *p = j->p;
    int64_t b, e;
    dm_ops_share((int64_t)p->nb * p->ms, tid, nt, &b, &e);
    int last = -1;
    const float *B = NULL;
    const uint16_t *Bh = NULL;
    size_t ldb = 0;
    for (int64_t t = b; t < e; t++) {
        int band = (int)(t / p->ms), m0 = (int)(t % p->ms) * p->msz;
        int y0 = band * p->nr, n = imin(p->nr, p->Ho - y0), m1 = imin(s->cout, m0 + p->msz);
        size_t N = (size_t)n * p->Wo, ldo = s->out ? p->plane : N;
        if (band != last) { /* consecutive slices of one band share its im2col */
            B = band_source(j, tid, y0, n, &ldb);
            last = band;
            if (j->wh) { /* bf16: the band's operand rounded, contiguous [K, N] */
                uint16_t *h = hscratch(j->ws, tid, p->K * N);
                if (!h) {
                    dm_err oom;
                    dm_err_oom(&oom);
                    dm_job_err_put(&j->ws->jerr, &oom);
                    return;
                }
                for (size_t r = 0; r < p->K; r++)
                    dm_bf16_from_f32(B + r * ldb, h + r * N, (int64_t)N);
                Bh = h;
            }
        }
        float *o = s->out ? s->out + (size_t)y0 * p->Wo : dm_ops_buf(j->ws, tid, SLOT_OUT);
        for (int c = m0; c < m1; c++) { /* bias (or zero) in, or added on when accumulating */
            float *r = o + (size_t)c * ldo, bv = s->bias ? s->bias[c] : 0.0f;
            if (!(s->flags & DM_CONV_ACCUM)) {
                for (size_t i = 0; i < N; i++)
                    r[i] = bv;
            } else if (s->bias) {
                for (size_t i = 0; i < N; i++)
                    r[i] += bv;
            }
        }
        dm_err ge;
        if (!j->wh)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m1 - m0, (int)N, (int)p->K,
                        1.0f, s->w + (size_t)m0 * p->K, (int)p->K, B, (int)ldb, 1.0f,
                        o + (size_t)m0 * ldo, (int)ldo);
        else if (dm_bf16_gemm(j->ws->g, 0, m1 - m0, (int)N, (int)p->K, 1.0f,
                              j->wh + (size_t)m0 * p->K, (int64_t)p->K, Bh, (int64_t)N, 1,
                              o + (size_t)m0 * ldo, (int64_t)ldo, &ge)) {
            dm_job_err_put(&j->ws->jerr, &ge);
            return;
        }
        if (s->flags & DM_CONV_RELU_OUT)
            for (int c = m0; c < m1; c++) {
                float *r = o + (size_t)c * ldo;
                for (size_t i = 0; i < N; i++)
                    r[i] = relu(r[i]);
            }
        if (s->epi)
            s->epi(s->epi_ctx, tid, y0, n, o, ldo);
    }
}

static int check_spec(const dm_conv_spec *s, dm_err *err)
{
    if (s->cin < 1 || s->cout < 1 || s->k < 1 || s->stride < 1 || s->pad < 0 || s->H < 1 ||
        s->W < 1 || s->H > (1 << 20) || s->W > (1 << 20))
        return dm_err_set(err, DM_EINVAL, "conv2d: bad geometry (Cin %d, Cout %d, %d×%d px, "
                          "kernel %d, stride %d, pad %d)", s->cin, s->cout, s->W, s->H, s->k,
                          s->stride, s->pad);
    if (!s->out && (!s->epi || (s->flags & DM_CONV_ACCUM)))
        return dm_err_set(err, DM_EINVAL, "conv2d: no output (needs an output map or a band "
                          "callback, and accumulation needs the map)");
    int Hi = s->up2 ? 2 * s->H : s->H, Wi = s->up2 ? 2 * s->W : s->W;
    int Ho = dm_conv_out_size(Hi, s->k, s->stride, s->pad);
    int Wo = dm_conv_out_size(Wi, s->k, s->stride, s->pad);
    if (Ho < 1 || Wo < 1)
        return dm_err_set(err, DM_EINVAL, "conv2d: a %d×%d px input is smaller than the %d×%d "
                          "kernel", Wi, Hi, s->k, s->k);
    if ((size_t)Ho * Wo > INT_MAX || (size_t)s->cin * s->k * s->k > INT_MAX)
        return dm_err_set(err, DM_EINVAL, "conv2d: a %d×%d px output is too large", Wo, Ho);
    return 0;
}

int dm_conv_run(dm_ops *ws, const dm_conv_spec *s, dm_err *err)
{
    int rc = check_spec(s, err);
    if (rc)
        return rc;
    plan p;
    make_plan(s, &p);
    dm_ops *own;
    lin2 up = { 0 };
    if ((rc = use_ws(&ws, &own, err)))
        return rc;
    if (!(rc = dm_ops_reserve(ws, SLOT_COL, p.col_n, err)) &&
        !(rc = dm_ops_reserve(ws, SLOT_WIN, p.win_n, err)) &&
        !(rc = dm_ops_reserve(ws, SLOT_OUT, p.out_n, err)) &&
        !(rc = dm_ops_reserve(ws, SLOT_HROW, p.hrow_n, err)) &&
        !(rc = s->up2 ? lin2_make(&up, s->H, s->W, p.Hi, p.Wi, 1, err) : 0)) {
        conv_job j = { s, &p, ws, s->up2 ? &up : NULL, NULL };
        if (ws->bf16 && !(j.wh = weights_bf16(ws, s->w, (size_t)s->cout * p.K, err)))
            rc = err ? err->code : DM_ENOMEM;
        if (!rc) {
            dm_ops_run(ws, conv_task, &j);
            rc = dm_job_err_take(&ws->jerr, err);
        }
    }
    lin2_free(&up);
    dm_ops_free(own);
    return rc;
}

int dm_conv2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
              const float *bias, int cout, int k, int stride, int pad, int flags, float *out,
              dm_err *err)
{
    dm_conv_spec s = { in, cin, H, W, 0, w, bias, cout, k, stride, pad, flags, out, NULL, NULL };
    if (!out)
        return dm_err_set(err, DM_EINVAL, "conv2d: no output map");
    return dm_conv_run(ws, &s, err);
}

/* --- transposed convolution ------------------------------------------------------------------ */

typedef struct convt_job {
    const float *in, *w, *bias;
    int cin, H, W, cout, k, nr, nb;
    float *out;
    dm_ops *ws;
} convt_job;

/* T[(o·k+ky)·k+kx, y·W+x] = Σ_i w[i, (o,ky,kx)] in[i, y·W+x] for a band of input rows (w read
 * transposed in place), then scattered to the output with the bias. */
static void convt_task(void *ctx, int tid, int nt)
{
    const convt_job *j = ctx;
    int k = j->k, W = j->W, Wout = k * W;
    size_t M = (size_t)j->cout * k * k, HW = (size_t)j->H * W;
    float *T = dm_ops_buf(j->ws, tid, SLOT_COL);
    int64_t b, e;
    dm_ops_share(j->nb, tid, nt, &b, &e);
    for (int64_t t = b; t < e; t++) {
        int y0 = (int)t * j->nr, n = imin(j->nr, j->H - y0);
        size_t nc = (size_t)n * W;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)M, (int)nc, j->cin, 1.0f, j->w,
                    (int)M, j->in + (size_t)y0 * W, (int)HW, 0.0f, T, (int)nc);
        for (int o = 0; o < j->cout; o++) {
            float bv = j->bias ? j->bias[o] : 0.0f;
            float *po = j->out + (size_t)o * k * j->H * Wout;
            for (int ky = 0; ky < k; ky++)
                for (int kx = 0; kx < k; kx++) {
                    const float *tt = T + ((size_t)(o * k + ky) * k + kx) * nc;
                    for (int y = 0; y < n; y++) {
                        float *d = po + (size_t)(k * (y0 + y) + ky) * Wout + kx;
                        const float *sr = tt + (size_t)y * W;
                        for (int x = 0; x < W; x++)
                            d[(size_t)x * k] = sr[x] + bv;
                    }
                }
        }
    }
}

int dm_conv_transpose2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
                        const float *bias, int cout, int k, float *out, dm_err *err)
{
    if (cin < 1 || cout < 1 || k < 1 || H < 1 || W < 1 || H > (1 << 20) || W > (1 << 20))
        return dm_err_set(err, DM_EINVAL, "conv_transpose2d: bad geometry (Cin %d, Cout %d, "
                          "%d×%d px, kernel %d)", cin, cout, W, H, k);
    size_t M = (size_t)cout * k * k;
    size_t cap = COL_CAP / (M * (size_t)W);
    int nr = cap < 1 ? 1 : cap > (size_t)H ? H : (int)cap;
    int want = cdiv(H, MIN_TASKS), least = cdiv(MIN_COLS, W);
    nr = imin(nr, want > least ? want : least);
    int nb = cdiv(H, nr);
    nr = cdiv(H, nb);
    nb = cdiv(H, nr);
    dm_ops *own;
    int rc = use_ws(&ws, &own, err);
    if (!rc && !(rc = dm_ops_reserve(ws, SLOT_COL, M * (size_t)nr * W, err))) {
        convt_job j = { in, w, bias, cin, H, W, cout, k, nr, nb, out, ws };
        dm_ops_run(ws, convt_task, &j);
    }
    dm_ops_free(own);
    return rc;
}

/* --- bilinear resize ------------------------------------------------------------------------- */

typedef struct resize_job {
    const float *in;
    float *out;
    int C, Hi, Wi, Ho;
    const lin2 *t;
} resize_job;

static void resize_task(void *ctx, int tid, int nt)
{
    const resize_job *j = ctx;
    int64_t b, e;
    dm_ops_share((int64_t)j->C * j->Ho, tid, nt, &b, &e);
    for (int64_t r = b; r < e; r++) {
        int c = (int)(r / j->Ho), y = (int)(r % j->Ho);
        bilinear_row(j->t, j->in + (size_t)c * j->Hi * j->Wi, j->Wi, y,
                     j->out + (size_t)r * j->t->Wo);
    }
}

int dm_resize_bilinear(dm_ops *ws, const float *in, int C, int Hi, int Wi, float *out, int Ho,
                       int Wo, int align_corners, dm_err *err)
{
    if (C < 1 || Hi < 1 || Wi < 1 || Ho < 1 || Wo < 1)
        return dm_err_set(err, DM_EINVAL, "bilinear resize: bad size (%d planes, %d×%d → %d×%d)", C,
                          Wi, Hi, Wo, Ho);
    lin2 t;
    int rc = lin2_make(&t, Hi, Wi, Ho, Wo, align_corners, err);
    if (rc)
        return rc;
    resize_job j = { in, out, C, Hi, Wi, Ho, &t };
    if (ws)
        dm_ops_run(ws, resize_task, &j);
    else
        resize_task(&j, 0, 1);
    lin2_free(&t);
    return 0;
}

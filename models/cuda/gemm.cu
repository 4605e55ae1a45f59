/* models/cuda/gemm.cu — matrix products through cuBLASLt: bf16 inputs with fp32 accumulation and
 * fp32 output (tensor cores), or fp32 throughout (CUBLAS_COMPUTE_32F: no TF32). No epilogue: the
 * biases and activations are applied by this backend's own kernels, as the CPU path does (and
 * cuBLASLt's GELU is the tanh approximation, not DINOv3's erf form). The algorithm of each shape
 * is chosen once by cuBLASLt's heuristic and kept, so a shape always runs the same way. The
 * operands' address alignment (up to 256 bytes) is part of the shape: cuBLASLt's heuristic
 * otherwise assumes 256-byte aligned pointers, which a band of a map or a slice of qkv is not. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"
#include "dm_cuda_plan.h"

enum { CACHE = 96, WORKSPACE = (int)DM_CU_GEMM_WS }; /* the memory plan counts it */

typedef struct plan {
    int used, ta, tb, m, n, k, batch, bf16;
    uint32_t alA, alB, alC; /* byte alignment of the operands' addresses (≤ 256) */
    int64_t lda, ldb, ldc, sA, sB, sC;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} plan;

struct dm_cu_gemm {
    cublasLtHandle_t lt;
    cudaStream_t st;
    void *ws;
    plan cache[CACHE];
    int next;
};

static void plan_free(plan *p)
{
    if (!p->used)
        return;
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->c)
        cublasLtMatrixLayoutDestroy(p->c);
    memset(p, 0, sizeof *p);
}

int dm_cu_gemm_create(cudaStream_t st, dm_cu_gemm **out, dm_err *err)
{
    *out = NULL;
    dm_cu_gemm *g = (dm_cu_gemm *)calloc(1, sizeof *g);
    if (!g)
        return dm_cu_err(err, DM_ENOMEM, "out of memory");
    g->st = st;
    int rc = dm_cu_check_blas(cublasLtCreate(&g->lt), "cublasLtCreate", err);
    if (!rc)
        rc = dm_cu_check(cudaMalloc(&g->ws, WORKSPACE), "cudaMalloc (GEMM workspace)", err);
    if (rc) {
        dm_cu_gemm_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

void dm_cu_gemm_free(dm_cu_gemm *g)
{
    if (!g)
        return;
    for (int i = 0; i < CACHE; i++)
        plan_free(&g->cache[i]);
    if (g->ws)
        cudaFree(g->ws);
    if (g->lt)
        cublasLtDestroy(g->lt);
    free(g);
}

static int layout(cublasLtMatrixLayout_t *l, cudaDataType t, int rows, int cols, int64_t ld,
                  int batch, int64_t stride, dm_err *err)
{
    int rc = dm_cu_check_blas(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols,
                                                          ld), "matrix layout", err);
    if (!rc && batch > 1) {
        int32_t bc = batch;
        rc = dm_cu_check_blas(cublasLtMatrixLayoutSetAttribute(*l,
                                  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc),
                              "batch count", err);
        if (!rc)
            rc = dm_cu_check_blas(cublasLtMatrixLayoutSetAttribute(*l,
                                      CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                      sizeof stride), "batch stride", err);
    }
    return rc;
}

static int plan_make(dm_cu_gemm *g, plan *p, dm_err *err)
{
    cudaDataType tin = p->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    int rc = dm_cu_check_blas(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                              "matmul descriptor", err);
    cublasOperation_t ta = p->ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (!rc)
        rc = dm_cu_check_blas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                             &ta, sizeof ta), "transa", err);
    if (!rc)
        rc = dm_cu_check_blas(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                             &tb, sizeof tb), "transb", err);
    /* A is m×k after op: stored k×m when transposed */
    if (!rc)
        rc = layout(&p->a, tin, p->ta ? p->k : p->m, p->ta ? p->m : p->k, p->lda, p->batch,
                    p->sA, err);
    if (!rc)
        rc = layout(&p->b, tin, p->tb ? p->n : p->k, p->tb ? p->k : p->n, p->ldb, p->batch,
                    p->sB, err);
    if (!rc)
        rc = layout(&p->c, CUDA_R_32F, p->m, p->n, p->ldc, p->batch, p->sC, err);
    cublasLtMatmulPreference_t pref = NULL;
    if (!rc)
        rc = dm_cu_check_blas(cublasLtMatmulPreferenceCreate(&pref), "preference", err);
    uint64_t wsz = WORKSPACE;
    if (!rc)
        rc = dm_cu_check_blas(cublasLtMatmulPreferenceSetAttribute(pref,
                                  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz),
                              "workspace preference", err);
    const cublasLtMatmulPreferenceAttributes_t al[3] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES };
    const uint32_t av[3] = { p->alA, p->alB, p->alC };
    for (int i = 0; !rc && i < 3; i++)
        rc = dm_cu_check_blas(cublasLtMatmulPreferenceSetAttribute(pref, al[i], &av[i],
                                                                   sizeof av[i]),
                              "alignment preference", err);
    if (!rc) /* D is C */
        rc = dm_cu_check_blas(cublasLtMatmulPreferenceSetAttribute(pref,
                                  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &av[2], sizeof av[2]),
                              "alignment preference", err);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (!rc)
        rc = dm_cu_check_blas(cublasLtMatmulAlgoGetHeuristic(g->lt, p->op, p->a, p->b, p->c,
                                                             p->c, pref, 1, &res, &found),
                              "algorithm heuristic", err);
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (!rc && found < 1)
        rc = dm_cu_err(err, DM_EUNSUPPORTED, "cuBLASLt: no algorithm for a %s GEMM m=%d n=%d "
                       "k=%d batch %d", p->bf16 ? "bf16" : "fp32", p->m, p->n, p->k, p->batch);
    if (!rc)
        p->algo = res.algo;
    return rc;
}

static uint32_t align_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && a % al)
        al >>= 1;
    return al;
}

int dm_cu_gemm_run(dm_cu_gemm *g, int transa, int transb, int m, int n, int k, float alpha,
                   const void *A, int64_t lda, int64_t sA, const void *B, int64_t ldb,
                   int64_t sB, float beta, float *C, int64_t ldc, int64_t sC, int batch,
                   int in_bf16, dm_err *err)
{
    plan key;
    memset(&key, 0, sizeof key);
    key.used = 1, key.ta = transa, key.tb = transb, key.m = m, key.n = n, key.k = k;
    key.batch = batch, key.bf16 = in_bf16, key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.sA = batch > 1 ? sA : 0, key.sB = batch > 1 ? sB : 0, key.sC = batch > 1 ? sC : 0;
    key.alA = align_of(A), key.alB = align_of(B), key.alC = align_of(C);
    plan *p = NULL;
    for (int i = 0; i < CACHE && !p; i++) {
        plan *q = &g->cache[i];
        if (q->used && q->ta == key.ta && q->tb == key.tb && q->m == m && q->n == n &&
            q->k == k && q->batch == key.batch && q->bf16 == key.bf16 && q->lda == lda &&
            q->ldb == ldb && q->ldc == ldc && q->sA == key.sA && q->sB == key.sB &&
            q->sC == key.sC && q->alA == key.alA && q->alB == key.alB && q->alC == key.alC)
            p = q;
    }
    if (!p) {
        p = &g->cache[g->next];
        g->next = (g->next + 1) % CACHE;
        plan_free(p);
        *p = key;
        int rc = plan_make(g, p, err);
        if (rc) {
            plan_free(p);
            return rc;
        }
    }
    return dm_cu_check_blas(cublasLtMatmul(g->lt, p->op, &alpha, A, p->a, B, p->b, &beta, C, p->c,
                                           C, p->c, &p->algo, g->ws, WORKSPACE, g->st),
                            "cublasLtMatmul", err);
}

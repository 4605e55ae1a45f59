/* models/cpu/bf16.h — bf16 matrix products on the calling thread, through oneDNN's matmul (bf16
 * inputs, fp32 accumulation and output), for the CPU backend's bf16 precision and the heads'
 * operators. Internal to models/. */
#ifndef DM_MODELS_CPU_BF16_H
#define DM_MODELS_CPU_BF16_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../../src/base/base.h"
#include "../kernel_math.h"

/* Round to nearest even, as PyTorch's and oneDNN's float → bfloat16 (NaN stays NaN). */
static inline uint16_t dm_f32_bf16(float f) { return dm_cm_f32_bf16(f); }
/* out[i] = bf16(in[i]) for i < n */
void dm_bf16_from_f32(const float *in, uint16_t *out, int64_t n);

/* A bf16 GEMM context: oneDNN's engine and, for each thread that calls it, a stream and a cache
 * of matmul primitives by shape (made on the thread's first call). inner: the OpenMP threads
 * oneDNN may use inside one call. The backends pass 1: the caller decides how work is split, so
 * results depend on the shapes of the calls only, never on the number of threads (a benchmark
 * of oneDNN's own threading passes more). */
typedef struct dm_bf16 dm_bf16;
int dm_bf16_create(int inner, dm_bf16 **out, dm_err *err);
void dm_bf16_free(dm_bf16 *g); /* NULL-safe */

/* C[M,N] (row stride ldc, fp32) = alpha · A[M,K] · op(B) (+ C when accumulate), A bf16 (row
 * stride lda); transB 1: B is [N,K] (row stride ldb) and op(B) = Bᵀ; 0: B is [K,N]. Runs on the
 * calling thread. Returns 0 or a DM_E* code with a message. */
int dm_bf16_gemm(dm_bf16 *g, int transB, int M, int N, int K, float alpha, const uint16_t *A,
                 int64_t lda, const uint16_t *B, int64_t ldb, int accumulate, float *C,
                 int64_t ldc, dm_err *err);

/* 0 where the CPU has bf16 dot-product instructions (dm_cpu_bf16), else DM_EUNSUPPORTED with the
 * message a user sees for --precision bf16. */
int dm_bf16_require(dm_err *err);

/* The first failure of a job's bf16 GEMMs on pool threads (which return nothing), reported by
 * the step once the pool is done. Zero-initialised = none. */
typedef struct dm_job_err {
    atomic_int set;
    dm_err e;
} dm_job_err;
static inline void dm_job_err_put(dm_job_err *j, const dm_err *e)
{
    int expect = 0;
    if (atomic_compare_exchange_strong(&j->set, &expect, 1))
        j->e = *e;
}
/* 0, or the recorded failure (copied to err) and the record cleared */
static inline int dm_job_err_take(dm_job_err *j, dm_err *err)
{
    if (!atomic_load(&j->set))
        return 0;
    atomic_store(&j->set, 0);
    if (err)
        *err = j->e;
    return j->e.code ? j->e.code : DM_EINVAL;
}

/* What oneDNN reports: "oneDNN 2.6.3 (OpenMP runtime), ISA avx512_core_bf16" */
const char *dm_bf16_library(char *buf, size_t n);

#endif

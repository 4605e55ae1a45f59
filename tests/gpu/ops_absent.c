/* tests/gpu/ops_absent.c — models/ops.h without the CPU (no OpenBLAS or oneDNN on the GPU
 * machine): what the CHMv2 head calls of it while its decoder runs on the GPU (a workspace and
 * its precision) works; every CPU operator says it is absent. The GPU check links this instead
 * of models/cpu/ops_cpu.c, so a head left on the CPU by mistake fails loudly. */
#include <stdlib.h>

#include "../../models/model.h"
#include "../../models/ops.h"

struct dm_ops {
    int n, precision;
};

static int absent(dm_err *err, const char *what)
{
    return dm_err_set(err, DM_EUNSUPPORTED, "%s: the CPU operators are not in the GPU check (the "
                      "head should be on the GPU)", what);
}

void dm_ops_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)transA, (void)transB, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
    (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    abort(); /* no error path: never reached with the head on the GPU */
}

void dm_ops_sgemv(int M, int N, float alpha, const float *A, int lda, const float *x, float beta,
                  float *y)
{
    (void)M, (void)N, (void)alpha, (void)A, (void)lda, (void)x, (void)beta, (void)y;
    abort();
}

int dm_ops_create(int threads, dm_ops **out, dm_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return dm_err_oom(err);
    (*out)->n = threads < 1 ? 1 : threads;
    return 0;
}

void dm_ops_free(dm_ops *ws) { free(ws); }
int dm_ops_threads(const dm_ops *ws) { return ws ? ws->n : 1; }

int dm_ops_set_precision(dm_ops *ws, int precision, dm_err *err)
{
    (void)err;
    ws->precision = precision;
    return 0;
}

int dm_ops_precision(const dm_ops *ws) { return ws ? ws->precision : DM_PREC_FP32; }

int dm_ops_reserve(dm_ops *ws, int slot, size_t n, dm_err *err)
{
    (void)ws, (void)slot, (void)n;
    return absent(err, "dm_ops_reserve");
}

float *dm_ops_buf(const dm_ops *ws, int tid, int slot)
{
    (void)ws, (void)tid, (void)slot;
    return NULL;
}

void dm_ops_run(dm_ops *ws, dm_ops_job fn, void *ctx)
{
    (void)ws;
    fn(ctx, 0, 1);
}

void dm_ops_share(int64_t n, int tid, int nthreads, int64_t *b, int64_t *e)
{
    *b = n * tid / nthreads;
    *e = n * (tid + 1) / nthreads;
}

int dm_conv_out_size(int n, int k, int stride, int pad) { return (n + 2 * pad - k) / stride + 1; }

int dm_conv_run(dm_ops *ws, const dm_conv_spec *s, dm_err *err)
{
    (void)ws, (void)s;
    return absent(err, "conv2d");
}

int dm_conv2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
              const float *bias, int cout, int k, int stride, int pad, int flags, float *out,
              dm_err *err)
{
    (void)ws, (void)in, (void)cin, (void)H, (void)W, (void)w, (void)bias, (void)cout, (void)k;
    (void)stride, (void)pad, (void)flags, (void)out;
    return absent(err, "conv2d");
}

int dm_conv_transpose2d(dm_ops *ws, const float *in, int cin, int H, int W, const float *w,
                        const float *bias, int cout, int k, float *out, dm_err *err)
{
    (void)ws, (void)in, (void)cin, (void)H, (void)W, (void)w, (void)bias, (void)cout, (void)k;
    (void)out;
    return absent(err, "conv_transpose2d");
}

int dm_resize_bilinear(dm_ops *ws, const float *in, int C, int Hi, int Wi, float *out, int Ho,
                       int Wo, int align_corners, dm_err *err)
{
    (void)ws, (void)in, (void)C, (void)Hi, (void)Wi, (void)out, (void)Ho, (void)Wo;
    (void)align_corners;
    return absent(err, "bilinear resize");
}

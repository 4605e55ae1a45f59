/* models/cpu/bf16.c — bf16 GEMMs through oneDNN's matmul primitive (see bf16.h), and the CPU's
 * bf16 capability as oneDNN sees it (model.h: dm_cpu_bf16, dm_precision_*). */
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model.h"
#include "bf16.h"

/* oneDNN on Debian runs on OpenMP; each call asks for a team of `inner` threads (an OpenMP ICV is
 * per thread): 1 in the backends, so oneDNN never starts threads of its own beside dinomap's
 * pool. */
extern void omp_set_num_threads(int n);

void dm_bf16_from_f32(const float *in, uint16_t *out, int64_t n)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        out[i] = dm_f32_bf16(in[i]);
}

enum { CACHE = 48 };

typedef struct prim {
    int used, transB, M, N, K, acc;
    int64_t lda, ldb, ldc;
    float alpha;
    dnnl_primitive_t p;
    dnnl_memory_t a, b, c;
} prim;

typedef struct slot {
    pthread_t owner;
    dnnl_stream_t stream;
    prim cache[CACHE];
    int next;           /* the entry replaced when the cache is full */
    struct slot *older;
} slot;

struct dm_bf16 {
    dnnl_engine_t eng;
    int inner;
    _Atomic(slot *) slots; /* one per calling thread, pushed by that thread, never removed */
};

static int dnnl_fail(dm_err *err, dnnl_status_t s, const char *what)
{
    return dm_err_set(err, s == dnnl_out_of_memory ? DM_ENOMEM : DM_EUNSUPPORTED,
                      "oneDNN: %s failed (status %d)", what, (int)s);
}

int dm_bf16_create(int inner, dm_bf16 **out, dm_err *err)
{
    *out = NULL;
    dm_bf16 *g = calloc(1, sizeof *g);
    if (!g)
        return dm_err_oom(err);
    g->inner = inner > 0 ? inner : 1;
    dnnl_status_t s = dnnl_engine_create(&g->eng, dnnl_cpu, 0);
    if (s != dnnl_success) {
        free(g);
        return dnnl_fail(err, s, "creating the CPU engine");
    }
    atomic_init(&g->slots, NULL);
    *out = g;
    return 0;
}

static void prim_free(prim *e)
{
    if (!e->used)
        return;
    if (e->p)
        dnnl_primitive_destroy(e->p);
    if (e->a)
        dnnl_memory_destroy(e->a);
    if (e->b)
        dnnl_memory_destroy(e->b);
    if (e->c)
        dnnl_memory_destroy(e->c);
    memset(e, 0, sizeof *e);
}

void dm_bf16_free(dm_bf16 *g)
{
    if (!g)
        return;
    for (slot *sl = atomic_load(&g->slots), *o; sl; sl = o) {
        o = sl->older;
        for (int k = 0; k < CACHE; k++)
            prim_free(&sl->cache[k]);
        dnnl_stream_destroy(sl->stream);
        free(sl);
    }
    dnnl_engine_destroy(g->eng);
    free(g);
}

/* this thread's slot, made on its first call (only this thread adds it, so never twice) */
static slot *my_slot(dm_bf16 *g, dm_err *err)
{
    pthread_t self = pthread_self();
    slot *head = atomic_load(&g->slots);
    for (slot *sl = head; sl; sl = sl->older)
        if (pthread_equal(sl->owner, self))
            return sl;
    slot *sl = calloc(1, sizeof *sl);
    if (!sl) {
        dm_err_oom(err);
        return NULL;
    }
    sl->owner = self;
    dnnl_status_t s = dnnl_stream_create(&sl->stream, g->eng, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        free(sl);
        dnnl_fail(err, s, "creating a stream");
        return NULL;
    }
    do
        sl->older = head;
    while (!atomic_compare_exchange_weak(&g->slots, &head, sl));
    return sl;
}

static int prim_make(dm_bf16 *g, prim *e, dm_err *err)
{
    dnnl_memory_desc_t ad, bd, cd;
    dnnl_dims_t adim = { e->M, e->K }, bdim = { e->K, e->N }, cdim = { e->M, e->N };
    dnnl_dims_t as = { e->lda, 1 }, cs = { e->ldc, 1 };
    dnnl_dims_t bs = { e->transB ? 1 : e->ldb, e->transB ? e->ldb : 1 };
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s;
    const char *what = "describing a bf16 matmul";
    if ((s = dnnl_memory_desc_init_by_strides(&ad, 2, adim, dnnl_bf16, as)) ||
        (s = dnnl_memory_desc_init_by_strides(&bd, 2, bdim, dnnl_bf16, bs)) ||
        (s = dnnl_memory_desc_init_by_strides(&cd, 2, cdim, dnnl_f32, cs)) ||
        (s = dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd)) ||
        (s = dnnl_primitive_attr_create(&attr)))
        goto fail;
    if (e->alpha != 1.0f && (s = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &e->alpha)))
        goto fail;
    if (e->acc && ((s = dnnl_post_ops_create(&po)) || (s = dnnl_post_ops_append_sum(po, 1.0f)) ||
                   (s = dnnl_primitive_attr_set_post_ops(attr, po))))
        goto fail;
    what = "creating a bf16 matmul";
    if ((s = dnnl_primitive_desc_create(&pd, &md, attr, g->eng, NULL)) ||
        (s = dnnl_primitive_create(&e->p, pd)))
        goto fail;
    what = "binding a bf16 matmul's memory";
    if ((s = dnnl_memory_create(&e->a, &ad, g->eng, DNNL_MEMORY_NONE)) ||
        (s = dnnl_memory_create(&e->b, &bd, g->eng, DNNL_MEMORY_NONE)) ||
        (s = dnnl_memory_create(&e->c, &cd, g->eng, DNNL_MEMORY_NONE)))
        goto fail;
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_post_ops_destroy(po);
    e->used = 1;
    return 0;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_post_ops_destroy(po);
    e->used = 1; /* so that prim_free releases what was made */
    prim_free(e);
    return dnnl_fail(err, s, what);
}

int dm_bf16_gemm(dm_bf16 *g, int transB, int M, int N, int K, float alpha, const uint16_t *A,
                 int64_t lda, const uint16_t *B, int64_t ldb, int accumulate, float *C,
                 int64_t ldc, dm_err *err)
{
    if (M <= 0 || N <= 0)
        return 0;
    slot *sl = my_slot(g, err);
    if (!sl)
        return err ? err->code : DM_EINVAL;
    prim *e = NULL;
    for (int k = 0; k < CACHE && !e; k++) {
        prim *q = &sl->cache[k];
        if (q->used && q->transB == transB && q->M == M && q->N == N && q->K == K &&
            q->lda == lda && q->ldb == ldb && q->ldc == ldc && q->alpha == alpha &&
            q->acc == !!accumulate)
            e = q;
    }
    if (!e) {
        for (int k = 0; k < CACHE && !e; k++)
            if (!sl->cache[k].used)
                e = &sl->cache[k];
        if (!e) {
            e = &sl->cache[sl->next];
            sl->next = (sl->next + 1) % CACHE;
            prim_free(e);
        }
        *e = (prim){ 0, transB, M, N, K, !!accumulate, lda, ldb, ldc, alpha, 0, 0, 0, 0 };
        int rc = prim_make(g, e, err);
        if (rc)
            return rc;
    }
    dnnl_status_t s;
    if ((s = dnnl_memory_set_data_handle(e->a, (void *)A)) ||
        (s = dnnl_memory_set_data_handle(e->b, (void *)B)) ||
        (s = dnnl_memory_set_data_handle(e->c, C)))
        return dnnl_fail(err, s, "binding a bf16 matmul's memory");
    omp_set_num_threads(g->inner);
    dnnl_exec_arg_t args[3] = { { DNNL_ARG_SRC, e->a }, { DNNL_ARG_WEIGHTS, e->b },
                                { DNNL_ARG_DST, e->c } };
    if ((s = dnnl_primitive_execute(e->p, sl->stream, 3, args)) ||
        (s = dnnl_stream_wait(sl->stream)))
        return dnnl_fail(err, s, "running a bf16 matmul");
    return 0;
}

const char *dm_bf16_library(char *buf, size_t n)
{
    const dnnl_version_t *v = dnnl_version();
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    const char *rt = v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP"
                     : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                     : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential" : "other";
    const char *is = (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx
                         ? "avx512_core_amx"
                     : (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16
                         ? "avx512_core_bf16"
                     : (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? "avx512_core"
                     : (isa & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2 ? "avx2" : "older";
    snprintf(buf, n, "oneDNN %d.%d.%d (%s runtime), ISA %s", v->major, v->minor, v->patch, rt, is);
    return buf;
}

/* --- the CPU's bf16 capability (model.h) ----------------------------------------------------- */

const char *dm_cpu_bf16(void)
{
    /* testing knob: DINOMAP_CPU_BF16=0 plays a CPU without bf16 instructions */
    const char *fake = getenv("DINOMAP_CPU_BF16");
    if (fake && !strcmp(fake, "0"))
        return NULL;
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if ((isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx)
        return "AMX";
    if ((isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16)
        return "AVX512_BF16";
    return NULL;
}

int dm_bf16_require(dm_err *err)
{
    if (dm_cpu_bf16())
        return 0;
    return dm_err_set(err, DM_EUNSUPPORTED, "--precision bf16: this CPU has no bf16 dot-product "
                      "instructions (AVX512_BF16 or AMX), so bf16 would be slower than fp32; use "
                      "--precision fp32 (or auto)");
}

int dm_precision_parse(const char *s, int *out, dm_err *err)
{
    if (!strcmp(s, "fp32"))
        *out = DM_PREC_FP32;
    else if (!strcmp(s, "bf16"))
        *out = DM_PREC_BF16;
    else if (!strcmp(s, "auto"))
        *out = DM_PREC_AUTO;
    else
        return dm_err_set(err, DM_EINVAL, "--precision %s: unknown (fp32, bf16, auto)", s);
    return 0;
}

const char *dm_precision_name(int p)
{
    return p == DM_PREC_BF16 ? "bf16" : p == DM_PREC_AUTO ? "auto" : "fp32";
}

int dm_precision_resolve(int requested, int *resolved, char *why, size_t n, dm_err *err)
{
    const char *isa = dm_cpu_bf16();
    if (why && n)
        why[0] = 0;
    if (requested == DM_PREC_FP32) {
        *resolved = DM_PREC_FP32;
        return 0;
    }
    if (requested == DM_PREC_BF16 && !isa)
        return dm_bf16_require(err);
    *resolved = isa ? DM_PREC_BF16 : DM_PREC_FP32;
    if (why && n && requested == DM_PREC_AUTO)
        snprintf(why, n, isa ? "--precision auto: bf16 (this CPU has %s)"
                             : "--precision auto: fp32 (this CPU has no AVX512_BF16 or AMX)%s",
                 isa ? isa : "");
    return 0;
}

/* tests/gpu/gpu_chm.c — the GPU check's CHMv2 and pipeline modes (tests/gpu/gpu_check.c calls
 * them): the CHMv2 head on the GPU beside its backbone (golden cases, a forward for PyTorch
 * parity, tiles/s of backbone + head), and the run engine's reader → model → writer pipeline
 * (tiling/pipeline.c) with a synthetic reader and writer against the model alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../heads/heads.h"
#include "../../models/model.h"
#include "../../tiling/pipeline.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct chm_set {
    dm_weights *w;
    dm_model *m;
    dm_chm *h;
    dm_backend *be;
} chm_set;

static void chm_close(chm_set *s)
{
    dm_chm_free(s->h);
    dm_backend_close(s->be);
    dm_model_free(s->m);
    dm_weights_close(s->w);
}

/* backbone file (holding the head when head is NULL), the head, a CUDA backend, the head on it */
static int chm_open(chm_set *s, const char *model, const char *head, int prec)
{
    memset(s, 0, sizeof *s);
    dm_err err = { 0 };
    dm_backend_opts bo = { 1, 0, prec };
    int rc;
    if ((rc = dm_weights_open(model, &s->w, &err)) ||
        (rc = dm_model_bind(s->w, NULL, &s->m, &err)) ||
        (rc = dm_chm_open(head, s->w, s->m, NULL, &s->h, &err)) ||
        (rc = dm_backend_open("cuda:0", s->m, &bo, &s->be, &err)) ||
        (rc = dm_chm_use_backend(s->h, s->be, &err)) ||
        (rc = dm_chm_set_precision(s->h, prec, &err))) {
        fprintf(stderr, "gpu_check: %s: %s\n", model, err.msg);
        chm_close(s);
    }
    return rc;
}

static double rel(const float *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md))
            md = d;
        if (fabs((double)b[i]) > mr)
            mr = fabs((double)b[i]);
    }
    return mr > 0 ? md / mr : md;
}

static double cmp(const char *dir, const char *file, const float *v, int64_t n)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    dm_npy r;
    if (dm_npy_read(p, &r, NULL))
        return INFINITY;
    double e = r.numel == n ? rel(v, r.f, n) : INFINITY;
    dm_npy_free(&r);
    return e;
}

int gpu_chm_golden(const char *dir, const char *precs, int prec)
{
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    char model[1200], head[1200], p[1200];
    snprintf(head, sizeof head, "%s/head.pth", dir);
    FILE *f = fopen(head, "rb");
    int meta = f != NULL;
    if (f)
        fclose(f);
    snprintf(model, sizeof model, "%s/%s", dir, meta ? "backbone.pth" : "model.safetensors");
    chm_set s;
    if (chm_open(&s, model, meta ? head : NULL, prec)) {
        printf("golden %s %s worst=inf (cannot open) FAIL\n", name, precs);
        return 1;
    }
    snprintf(p, sizeof p, "%s/input.npy", dir);
    dm_npy in;
    memset(&in, 0, sizeof in);
    dm_err err = { 0 };
    int rc = dm_npy_read(p, &in, &err);
    int H = rc ? 0 : (int)in.shape[in.ndim - 2], W = rc ? 0 : (int)in.shape[in.ndim - 1], Ho, Wo;
    dm_chm_out_size(H, W, &Ho, &Wo);
    int64_t np = (int64_t)Ho * Wo, nb = dm_chm_bins(s.h);
    float *lg = malloc(sizeof(float) * (size_t)(nb * np)), *hg = malloc(sizeof(float) * np);
    if (!rc)
        rc = dm_chm_run(s.h, s.be, in.f, H, W, lg, hg, &err);
    double el = rc ? INFINITY : cmp(dir, "head_logits.npy", lg, nb * np);
    double eh = rc ? INFINITY : cmp(dir, "height.npy", hg, np);
    if (rc)
        fprintf(stderr, "gpu_check: %s: %s\n", name, err.msg);
    double tol = prec == DM_PREC_BF16 ? 2e-2 : 1e-4, worst = el > eh ? el : eh;
    printf("golden %s %s worst=%.3g (%s; logits %.3g, height %.3g) %s\n", name, precs, worst,
           el >= eh ? "head_logits" : "height", el, eh, worst <= tol ? "PASS" : "FAIL");
    free(lg), free(hg);
    dm_npy_free(&in);
    chm_close(&s);
    return !(worst <= tol);
}

int gpu_chm_forward(const char *model, const char *head, const char *inp, const char *outp,
                    int prec)
{
    chm_set s;
    if (chm_open(&s, model, strcmp(head, "-") ? head : NULL, prec))
        return 1;
    dm_npy in;
    memset(&in, 0, sizeof in);
    dm_err err = { 0 };
    int rc = dm_npy_read(inp, &in, &err), H = 0, W = 0, Ho, Wo;
    if (!rc)
        H = (int)in.shape[in.ndim - 2], W = (int)in.shape[in.ndim - 1];
    dm_chm_out_size(H, W, &Ho, &Wo);
    float *hg = malloc(sizeof(float) * (size_t)Ho * Wo);
    if (!rc)
        rc = dm_chm_run(s.h, s.be, in.f, H, W, NULL, hg, &err);
    int64_t shape[2] = { Ho, Wo };
    if (!rc)
        rc = dm_npy_write_f32(outp, hg, 2, shape, &err);
    if (rc)
        fprintf(stderr, "gpu_check: %s\n", err.msg);
    free(hg);
    dm_npy_free(&in);
    chm_close(&s);
    return rc != 0;
}

int gpu_chm_bench(const char *model, const char *head, int side, int prec, double secs)
{
    chm_set s;
    double t0 = now();
    if (chm_open(&s, model, strcmp(head, "-") ? head : NULL, prec))
        return 1;
    printf("chm-bench %s: D=%d, loaded in %.1f s\n", model, s.m->cfg.embed_dim, now() - t0);
    size_t px = (size_t)3 * side * side;
    float *img = malloc(px * sizeof(float)), *hg = malloc(sizeof(float) * (size_t)side * side);
    for (size_t i = 0; i < px; i++)
        img[i] = (float)((i * 2654435761u) >> 20 & 1023) / 512.0f - 1.0f;
    dm_err err = { 0 };
    int rc = dm_chm_run(s.h, s.be, img, side, side, NULL, hg, &err), iters = 0;
    double start = now(), t = start;
    while (!rc && (t - start < secs || iters < 3)) {
        rc = dm_chm_run(s.h, s.be, img, side, side, NULL, hg, &err);
        iters++;
        t = now();
    }
    if (rc)
        fprintf(stderr, "gpu_check: %s\n", err.msg);
    else
        printf("chm-bench side=%d tiles/s=%.1f ms/tile=%.2f iters=%d\n", side, iters / (t - start),
               1e3 * (t - start) / iters, iters);
    free(img), free(hg);
    chm_close(&s);
    return rc != 0;
}

/* --- the pipeline with a synthetic reader and writer ----------------------------------------- */

typedef struct pjob {
    float *img, *tok;
} pjob;

typedef struct pctx {
    dm_backend *be;
    int side, N, D;
    float *bimg, *btok; /* a batch, contiguous */
    double sink;
} pctx;

static int p_alloc(void *ctx, dm_job *j, dm_err *err)
{
    pctx *c = ctx;
    pjob *p = calloc(1, sizeof *p);
    if (!p || !(p->img = malloc(sizeof(float) * 3 * c->side * c->side)) ||
        !(p->tok = malloc(sizeof(float) * (size_t)c->N * c->D))) {
        if (p)
            free(p->img);
        free(p);
        return dm_err_oom(err);
    }
    j->data = p;
    return 0;
}

static void p_release(void *ctx, dm_job *j)
{
    (void)ctx;
    pjob *p = j->data;
    if (p)
        free(p->img), free(p->tok);
    free(p);
}

static int p_read(void *ctx, dm_job *j, dm_err *err)
{
    (void)err;
    pctx *c = ctx;
    pjob *p = j->data;
    size_t px = (size_t)3 * c->side * c->side;
    for (size_t i = 0; i < px; i++) /* a tile "decoded": every pixel written */
        p->img[i] = (float)(((i + (size_t)j->index * 977) * 2654435761u) >> 20 & 1023) / 512.0f;
    return 0;
}

static int p_infer(void *ctx, dm_job **jobs, int n, dm_err *err)
{
    pctx *c = ctx;
    size_t px = (size_t)3 * c->side * c->side, nt = (size_t)c->N * c->D;
    for (int i = 0; i < n; i++)
        memcpy(c->bimg + i * px, ((pjob *)jobs[i]->data)->img, px * sizeof(float));
    dm_vit_request req = { 0, NULL, NULL, NULL, c->btok, 0 };
    int rc = dm_backend_forward(c->be, c->bimg, n, c->side, c->side, &req, err);
    for (int i = 0; !rc && i < n; i++)
        memcpy(((pjob *)jobs[i]->data)->tok, c->btok + i * nt, nt * sizeof(float));
    return rc;
}

static int p_write(void *ctx, dm_job *j, dm_err *err)
{
    (void)err;
    pctx *c = ctx;
    pjob *p = j->data;
    double s = 0;
    for (size_t i = 0; i < (size_t)c->N * c->D; i += 64) /* a writer reading every tile */
        s += p->tok[i];
    c->sink += s;
    return 0;
}

int gpu_pipeline_bench(const char *weights, int side, int prec, double secs, int B)
{
    dm_model *m = NULL;
    dm_backend *be = NULL;
    dm_err err = { 0 };
    dm_backend_opts bo = { 1, 0, prec };
    if (dm_model_open(weights, NULL, &m, &err) || dm_backend_open("cuda:0", m, &bo, &be, &err)) {
        fprintf(stderr, "gpu_check: %s: %s\n", weights, err.msg);
        dm_model_free(m);
        return 1;
    }
    pctx c = { be, side, dm_model_tokens(m, side, side), m->cfg.embed_dim, NULL, NULL, 0 };
    size_t px = (size_t)3 * side * side, nt = (size_t)c.N * c.D;
    c.bimg = malloc(sizeof(float) * px * B);
    c.btok = malloc(sizeof(float) * nt * B);
    int rc = !c.bimg || !c.btok;
    dm_vit_request req = { 0, NULL, NULL, NULL, c.btok, 0 };
    /* the model alone: the same batches back to back */
    if (!rc)
        rc = dm_backend_forward(be, c.bimg, B, side, side, &req, &err); /* warm-up */
    int iters = 0;
    double start = now(), t = start;
    while (!rc && (t - start < secs || iters < 3)) {
        rc = dm_backend_forward(be, c.bimg, B, side, side, &req, &err);
        iters++;
        t = now();
    }
    double model_tps = rc ? 0 : iters * B / (t - start);
    /* the pipeline: as many tiles as the model ran in `secs` */
    int n = iters * B;
    dm_pipeline_fns f = { &c, p_alloc, p_release, p_read, p_infer, p_write };
    start = now();
    if (!rc)
        rc = dm_pipeline_run(&f, n, B, 2, &err);
    double pipe_tps = rc ? 0 : n / (now() - start);
    if (rc)
        fprintf(stderr, "gpu_check: pipeline: %s\n", err.msg);
    else
        printf("pipeline batch=%d model_only tiles/s=%.1f pipeline tiles/s=%.1f ratio=%.2f\n", B,
               model_tps, pipe_tps, pipe_tps / model_tps);
    free(c.bimg), free(c.btok);
    dm_backend_close(be);
    dm_model_free(m);
    return rc != 0;
}

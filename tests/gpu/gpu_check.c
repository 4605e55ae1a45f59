/* tests/gpu/gpu_check.c — the GPU check's driver (tests/gpu/run.sh builds it): dinomap's model
 * library without GDAL, OpenBLAS or oneDNN (models/ and src/base/ only, the CPU backend left
 * out) running the CUDA plugin. Modes:
 *   golden CASE_DIR PREC           every output of a golden case against its .npy references;
 *                                  prints "golden NAME PREC worst=E (file) PASS|FAIL"
 *   forward WEIGHTS IN.npy OUT.npy PREC
 *                                  the normed tokens [B, N, D] of IN ([B,3,H,W] or [3,H,W])
 *   bench WEIGHTS SIDE PREC SECONDS B1,B2,...
 *                                  tiles/s and TFLOP/s of random tiles SIDE×SIDE px per batch
 *   golden CASE_DIR PREC           (a CHMv2 case) the head on the GPU beside its backbone:
 *                                  logits and heights against the references
 *   chm-forward MODEL HEAD|- IN.npy OUT.npy PREC
 *                                  the heights [Ho, Wo] of IN [3,H,W] (HEAD "-": in MODEL)
 *   chm-bench MODEL HEAD|- SIDE PREC SECONDS
 *                                  tiles/s of backbone + head (dm_chm_run, tokens on the GPU)
 *   pipeline WEIGHTS SIDE PREC SECONDS BATCH
 *                                  tiles/s of the engine's pipeline (tiling/pipeline.c) with a
 *                                  synthetic reader and writer against the model alone
 * PREC is bf16 or fp32. Exit status 0 when everything asked for passed. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../models/backend_internal.h"

/* --- what the library needs of models/cpu/ (not built here: no BLAS on the GPU machine) --- */
static int no_cpu(const dm_model *m, const dm_backend_opts *o, void **state, dm_err *err)
{
    (void)m, (void)o, (void)state;
    return dm_err_set(err, DM_EUNSUPPORTED, "the GPU check is built without the CPU backend");
}
static int no_fwd(void *s, const float *i, int B, int H, int W, const dm_vit_request *r,
                  dm_err *err)
{
    (void)s, (void)i, (void)B, (void)H, (void)W, (void)r;
    return dm_err_set(err, DM_EUNSUPPORTED, "no CPU backend");
}
static void no_destroy(void *s) { (void)s; }
const dm_backend_ops dm_cpu_backend = { "cpu (absent)", no_cpu, no_fwd, no_destroy };
const char *dm_cpu_bf16(void) { return NULL; }
int dm_precision_resolve(int requested, int *resolved, char *why, size_t n, dm_err *err)
{
    (void)err;
    if (why && n)
        why[0] = 0;
    *resolved = requested == DM_PREC_BF16 ? DM_PREC_BF16 : DM_PREC_FP32;
    return 0;
}

/* gpu_chm.c */
int gpu_chm_golden(const char *dir, const char *precs, int prec);
int gpu_chm_forward(const char *model, const char *head, const char *inp, const char *outp,
                    int prec);
int gpu_chm_bench(const char *model, const char *head, int side, int prec, double secs);
int gpu_pipeline_bench(const char *weights, int side, int prec, double secs, int B);

static void sink(void *ctx, int level, const char *msg)
{
    (void)ctx, (void)level;
    fprintf(stderr, "  [dinomap] %s\n", msg);
}

static int prec_of(const char *s) { return !strcmp(s, "fp32") ? DM_PREC_FP32 : DM_PREC_BF16; }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double rel_err(const float *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) /* NaN wins */
            md = d;
        if (fabs((double)b[i]) > mr)
            mr = fabs((double)b[i]);
    }
    return mr > 0 ? md / mr : md;
}

static int open_model(const char *weights, int prec, dm_model **m, dm_backend **be)
{
    dm_err err = { 0 };
    dm_backend_opts bo = { 1, 0, prec };
    if (dm_model_open(weights, NULL, m, &err) || dm_backend_open("cuda:0", *m, &bo, be, &err)) {
        fprintf(stderr, "gpu_check: %s: %s\n", weights, err.msg);
        return 1;
    }
    return 0;
}

/* --- golden --------------------------------------------------------------------------------- */

static double cmp_ref(const char *dir, const char *file, const float *tok, int D, int t0, int nt)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.npy", dir, file);
    dm_npy ref;
    if (dm_npy_read(path, &ref, NULL))
        return INFINITY;
    double r = ref.numel == (int64_t)nt * D ? rel_err(tok + (size_t)t0 * D, ref.f, ref.numel)
                                             : INFINITY;
    dm_npy_free(&ref);
    return r;
}

static int golden(const char *dir, const char *precs)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/case.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "gpu_check: cannot open %s\n", path);
        return 1;
    }
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(j, "checkpoint");
    const cJSON *ls = cJSON_GetObjectItemCaseSensitive(j, "intermediate_layers"), *e;
    const cJSON *hwj = cJSON_GetObjectItemCaseSensitive(j, "image_hw");
    int layers[16], nl = 0;
    cJSON_ArrayForEach(e, ls) if (nl < 16) layers[nl++] = e->valueint;
    int H = cJSON_GetArrayItem(hwj, 0) ? cJSON_GetArrayItem(hwj, 0)->valueint : 0;
    int W = cJSON_GetArrayItem(hwj, 1) ? cJSON_GetArrayItem(hwj, 1)->valueint : 0;
    int hf = cJSON_IsString(ck) && strstr(ck->valuestring, "safetensors");
    cJSON_Delete(j);
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    char weights[1300];
    snprintf(weights, sizeof weights, "%s/%s", dir, hf ? "model.safetensors" : "backbone.pth");
    int prec = prec_of(precs);
    double tol = prec == DM_PREC_BF16 ? 2e-2 : 1e-4;
    dm_model *m = NULL;
    dm_backend *be = NULL;
    if (open_model(weights, prec, &m, &be)) {
        printf("golden %s %s worst=inf (cannot open) FAIL\n", name, precs);
        dm_model_free(m);
        return 1;
    }
    snprintf(path, sizeof path, "%s/input.npy", dir);
    dm_npy in;
    dm_err err = { 0 };
    if (dm_npy_read(path, &in, &err)) {
        fprintf(stderr, "gpu_check: %s\n", err.msg);
        return 1;
    }
    int D = m->cfg.embed_dim, N = dm_model_tokens(m, H, W), R = m->cfg.n_storage, hw = N - 1 - R;
    float *normed = malloc(sizeof(float) * N * D), *pre = malloc(sizeof(float) * N * D);
    float *raw[16];
    for (int k = 0; k < nl; k++)
        raw[k] = malloc(sizeof(float) * N * D);
    dm_vit_request req = { nl, layers, raw, pre, normed, 0 };
    int rc = dm_backend_forward(be, in.f, 1, H, W, &req, &err);
    double worst = rc ? INFINITY : 0;
    char wname[64] = "forward failed";
#define CMP(file, b, t0, nt)                                                                       \
    do {                                                                                           \
        double r_ = cmp_ref(dir, file, b, D, t0, nt);                                              \
        if (!(r_ <= worst)) {                                                                      \
            worst = r_;                                                                            \
            snprintf(wname, sizeof wname, "%s", file);                                             \
        }                                                                                          \
    } while (0)
    if (!rc) {
        snprintf(wname, sizeof wname, "-");
        CMP("x_norm_clstoken", normed, 0, 1);
        CMP("x_storage_tokens", normed, 1, R);
        CMP("x_norm_patchtokens", normed, 1 + R, hw);
        CMP("x_prenorm", pre, 0, N);
        for (int k = 0; k < nl; k++) {
            char fn[64];
            snprintf(fn, sizeof fn, "layer%d_patch_raw", layers[k]);
            CMP(fn, raw[k], 1 + R, hw);
            dm_model_norm_tokens(m, raw[k], raw[k], N);
            snprintf(fn, sizeof fn, "layer%d_patch_norm", layers[k]);
            CMP(fn, raw[k], 1 + R, hw);
            snprintf(fn, sizeof fn, "layer%d_cls_norm", layers[k]);
            CMP(fn, raw[k], 0, 1);
            snprintf(fn, sizeof fn, "layer%d_storage_norm", layers[k]);
            CMP(fn, raw[k], 1, R);
        }
    } else {
        fprintf(stderr, "gpu_check: %s: %s\n", name, err.msg);
    }
    int ok = worst <= tol;
    printf("golden %s %s worst=%.3g (%s) tol=%g %s\n", name, precs, worst, wname, tol,
           ok ? "PASS" : "FAIL");
    for (int k = 0; k < nl; k++)
        free(raw[k]);
    free(normed), free(pre);
    dm_npy_free(&in);
    dm_backend_close(be);
    dm_model_free(m);
    return !ok;
}

/* --- forward -------------------------------------------------------------------------------- */

static int forward(const char *weights, const char *inp, const char *outp, const char *precs)
{
    dm_model *m = NULL;
    dm_backend *be = NULL;
    dm_npy in;
    dm_err err = { 0 };
    if (dm_npy_read(inp, &in, &err)) {
        fprintf(stderr, "gpu_check: %s\n", err.msg);
        return 1;
    }
    int B = in.ndim == 4 ? (int)in.shape[0] : 1;
    int H = (int)in.shape[in.ndim - 2], W = (int)in.shape[in.ndim - 1];
    double t0 = now();
    if (open_model(weights, prec_of(precs), &m, &be))
        return 1;
    double t1 = now();
    int N = dm_model_tokens(m, H, W), D = m->cfg.embed_dim;
    float *normed = malloc(sizeof(float) * B * N * D);
    dm_vit_request req = { 0, NULL, NULL, NULL, normed, 0 };
    int rc = dm_backend_forward(be, in.f, B, H, W, &req, &err);
    double t2 = now();
    if (!rc) {
        int64_t shape[3] = { B, N, D };
        rc = dm_npy_write_f32(outp, normed, 3, shape, &err);
    }
    if (rc)
        fprintf(stderr, "gpu_check: %s\n", err.msg);
    else
        printf("forward %s: %d×%dx%d px, load %.1f s, forward %.3f s\n", weights, B, H, W,
               t1 - t0, t2 - t1);
    free(normed);
    dm_npy_free(&in);
    dm_backend_close(be);
    dm_model_free(m);
    return rc != 0;
}

/* --- bench ---------------------------------------------------------------------------------- */

/* multiply-adds ×2 of one tile of N tokens */
static double tile_flops(const dm_vit_config *c, int N, int hw)
{
    double D = c->embed_dim, F = c->ffn_hidden;
    double mats = 3 * D * D + D * D + (c->swiglu ? 3 : 2) * D * F;
    return 2.0 * hw * 768 * D + c->depth * (2.0 * N * mats + 4.0 * (double)N * N * D);
}

static int bench(const char *weights, int side, const char *precs, double secs, const char *bl)
{
    dm_model *m = NULL;
    dm_backend *be = NULL;
    double t0 = now();
    if (open_model(weights, prec_of(precs), &m, &be))
        return 1;
    printf("bench %s: %s, D=%d, depth %d, loaded in %.1f s\n", weights, m->cfg.arch,
           m->cfg.embed_dim, m->cfg.depth, now() - t0);
    int rc = 0;
    for (const char *p = bl; *p && !rc;) {
        int B = atoi(p);
        p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
        if (B < 1)
            continue;
        int N = dm_model_tokens(m, side, side), D = m->cfg.embed_dim, hw = N - 1 - m->cfg.n_storage;
        size_t px = (size_t)B * 3 * side * side;
        float *img = malloc(px * sizeof(float)), *out = malloc((size_t)B * N * D * sizeof(float));
        for (size_t i = 0; i < px; i++)
            img[i] = (float)((i * 2654435761u) >> 20 & 1023) / 512.0f - 1.0f;
        dm_vit_request req = { 0, NULL, NULL, NULL, out, 0 };
        dm_err err = { 0 };
        rc = dm_backend_forward(be, img, B, side, side, &req, &err); /* warm-up */
        int iters = 0;
        double start = now(), t = start;
        while (!rc && (t - start < secs || iters < 3)) {
            rc = dm_backend_forward(be, img, B, side, side, &req, &err);
            iters++;
            t = now();
        }
        if (rc) {
            fprintf(stderr, "gpu_check: batch %d: %s\n", B, err.msg);
        } else {
            double per = (t - start) / iters, tiles = B / per;
            printf("bench batch=%d tiles/s=%.1f ms/batch=%.2f TFLOP/s=%.1f iters=%d\n", B, tiles,
                   1e3 * per, tiles * tile_flops(&m->cfg, N, hw) / 1e12, iters);
        }
        free(img), free(out);
    }
    dm_backend_close(be);
    dm_model_free(m);
    return rc != 0;
}

int main(int argc, char **argv)
{
    dm_log_set_sink(sink, NULL);
    dm_log_set_level(DM_LOG_INFO);
    if (argc == 4 && !strcmp(argv[1], "golden")) {
        char p[1200];
        snprintf(p, sizeof p, "%s/case.json", argv[2]);
        FILE *f = fopen(p, "rb");
        char buf[4096] = "";
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (strstr(buf, "\"chmv2\""))
            return gpu_chm_golden(argv[2], argv[3], prec_of(argv[3]));
        return golden(argv[2], argv[3]);
    }
    if (argc == 7 && !strcmp(argv[1], "chm-forward"))
        return gpu_chm_forward(argv[2], argv[3], argv[4], argv[5], prec_of(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "chm-bench"))
        return gpu_chm_bench(argv[2], argv[3], atoi(argv[4]), prec_of(argv[5]), atof(argv[6]));
    if (argc == 7 && !strcmp(argv[1], "pipeline"))
        return gpu_pipeline_bench(argv[2], atoi(argv[3]), prec_of(argv[4]), atof(argv[5]),
                                  atoi(argv[6]));
    if (argc == 6 && !strcmp(argv[1], "forward"))
        return forward(argv[2], argv[3], argv[4], argv[5]);
    if (argc == 7 && !strcmp(argv[1], "bench"))
        return bench(argv[2], atoi(argv[3]), argv[4], atof(argv[5]), argv[6]);
    fprintf(stderr, "usage: gpu_check golden CASE_DIR bf16|fp32\n"
                    "       gpu_check forward WEIGHTS IN.npy OUT.npy bf16|fp32\n"
                    "       gpu_check bench WEIGHTS SIDE bf16|fp32 SECONDS B1,B2,...\n"
                    "       gpu_check chm-forward MODEL HEAD|- IN.npy OUT.npy bf16|fp32\n"
                    "       gpu_check chm-bench MODEL HEAD|- SIDE bf16|fp32 SECONDS\n"
                    "       gpu_check pipeline WEIGHTS SIDE bf16|fp32 SECONDS BATCH\n");
    return 2;
}

/* tests/bench_vit.c — `make bench`: ViT-L/16 on one 512×512 tile on the CPU.
 * Generates a full-size random ViT-L/16 checkpoint once (build/bench/, safetensors with Meta
 * names, fp32), then reports seconds per tile, GFLOP/s, peak RSS, and the efficiency ratio
 * (time OpenBLAS's threaded sgemm needs for exactly the forward pass's GEMMs, on the same weights
 * and buffer shapes, measured in the same run) / (forward time). Not a test: it asserts nothing. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../models/model.h"
#include "../models/model.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

typedef struct spec {
    char name[96];
    int64_t shape[4];
    int nd;
    int kind; /* 0 random*scale, 1 ones, 2 zeros+scale, 3 periods, 4 bias mask */
    float scale;
} spec;

static int nspecs;
static spec specs[512];

static void add(const char *name, int nd, int64_t a, int64_t b, int64_t c, int64_t d, int kind,
                float scale)
{
    spec *s = &specs[nspecs++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->nd = nd;
    s->shape[0] = a, s->shape[1] = b, s->shape[2] = c, s->shape[3] = d;
    s->kind = kind;
    s->scale = scale;
}

static int64_t numel(const spec *s)
{
    int64_t n = 1;
    for (int i = 0; i < s->nd; i++)
        n *= s->shape[i];
    return n;
}

/* Writes a random ViT-L/16 (Meta names) as safetensors. */
static int generate(const char *path)
{
    const int D = 1024, F = 4096, L = 24;
    char n[96];
    add("cls_token", 3, 1, 1, D, 0, 0, 0.5f);
    add("storage_tokens", 3, 1, 4, D, 0, 0, 0.5f);
    add("patch_embed.proj.weight", 4, D, 3, 16, 16, 0, 0.03f);
    add("patch_embed.proj.bias", 1, D, 0, 0, 0, 0, 0.1f);
    add("rope_embed.periods", 1, 16, 0, 0, 0, 3, 0);
    for (int i = 0; i < L; i++) {
#define B(fmt, ...) (snprintf(n, sizeof n, "blocks.%d." fmt, i), add(n, __VA_ARGS__))
        B("norm1.weight", 1, D, 0, 0, 0, 1, 0);
        B("norm1.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("attn.qkv.weight", 2, 3 * D, D, 0, 0, 0, 0.05f);
        B("attn.qkv.bias", 1, 3 * D, 0, 0, 0, 0, 0.05f);
        B("attn.qkv.bias_mask", 1, 3 * D, 0, 0, 0, 4, 0);
        B("attn.proj.weight", 2, D, D, 0, 0, 0, 0.05f);
        B("attn.proj.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("ls1.gamma", 1, D, 0, 0, 0, 0, 0.3f);
        B("norm2.weight", 1, D, 0, 0, 0, 1, 0);
        B("norm2.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("mlp.fc1.weight", 2, F, D, 0, 0, 0, 0.05f);
        B("mlp.fc1.bias", 1, F, 0, 0, 0, 0, 0.05f);
        B("mlp.fc2.weight", 2, D, F, 0, 0, 0, 0.025f);
        B("mlp.fc2.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("ls2.gamma", 1, D, 0, 0, 0, 0, 0.3f);
#undef B
    }
    add("norm.weight", 1, D, 0, 0, 0, 1, 0);
    add("norm.bias", 1, D, 0, 0, 0, 0, 0.05f);
    /* header */
    size_t cap = 1 << 20, len = 0;
    char *h = malloc(cap);
    int64_t off = 0;
    len += snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < nspecs; i++) {
        int64_t bytes = numel(&specs[i]) * 4;
        len +=
            snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[", specs[i].name);
        for (int d = 0; d < specs[i].nd; d++)
            len += snprintf(h + len, cap - len, "%s%lld", d ? "," : "",
                            (long long)specs[i].shape[d]);
        len += snprintf(h + len, cap - len, "],\"data_offsets\":[%lld,%lld]}", (long long)off,
                        (long long)(off + bytes));
        off += bytes;
    }
    len += snprintf(h + len, cap - len, "}");
    while (len % 8)
        h[len++] = ' ';
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return -1;
    uint64_t hl = len;
    fwrite(&hl, 8, 1, f);
    fwrite(h, 1, len, f);
    free(h);
    float *buf = malloc(sizeof(float) * 4096 * 1024);
    for (int i = 0; i < nspecs; i++) {
        int64_t ne = numel(&specs[i]);
        for (int64_t j = 0; j < ne; j++) {
            switch (specs[i].kind) {
            case 0: buf[j] = frand() * specs[i].scale; break;
            case 1: buf[j] = 1.0f + 0.1f * frand(); break;
            case 3: buf[j] = powf(100.0f, (float)j * 4.0f / 64.0f); break;
            case 4: buf[j] = (j >= ne / 3 && j < 2 * ne / 3) ? 0.0f : 1.0f; break;
            default: buf[j] = 0; break;
            }
        }
        fwrite(buf, 4, (size_t)ne, f);
    }
    free(buf);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return -1;
    return 0;
}

/* The forward pass's GEMMs alone, on the model's own weights and same-shaped buffers. */
static double gemm_floor(const dm_model *m, int N, int hw, double *flops)
{
    int D = m->cfg.embed_dim, F = m->cfg.ffn_hidden, nh = m->cfg.num_heads, hd = m->cfg.head_dim;
    float *x = calloc((size_t)N * D, 4), *qkv = calloc((size_t)N * 3 * D, 4);
    float *att = calloc((size_t)N * D, 4), *hid = calloc((size_t)N * F, 4);
    float *s = calloc((size_t)N * N, 4), *pat = calloc((size_t)hw * 768, 4);
    for (size_t i = 0; i < (size_t)N * D; i++)
        x[i] = frand();
    double t0 = now(), fl = 0;
#define W(mm) ((const float *)(const void *)((mm).t->data) + (mm).row0 * (mm).cols)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hw, D, 768, 1, pat, 768, W(m->patch_w),
                768, 0, x, D);
    fl += 2.0 * hw * 768 * D;
    for (int l = 0; l < m->cfg.depth; l++) {
        const dm_vit_block *b = &m->blocks[l];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, 3 * D, D, 1, x, D, W(b->qkv), D,
                    0, qkv, 3 * D); /* the forward pass fuses q, k, v for Meta files */
        for (int h = 0; h < nh; h++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, 1, qkv + h * hd, 3 * D,
                        qkv + D + h * hd, 3 * D, 0, s, N);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, 1, s, N,
                        qkv + 2 * D + h * hd, 3 * D, 0, att + h * hd, D);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, D, D, 1, att, D, W(b->proj), D, 0,
                    x, D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, F, D, 1, x, D, W(b->fc1), D, 0,
                    hid, F);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, D, F, 1, hid, F, W(b->fc2), F, 0,
                    x, D);
        fl += 2.0 * N * D * 3 * D + 4.0 * nh * (double)N * N * hd + 2.0 * N * D * D +
              4.0 * N * D * F;
    }
    double t = now() - t0;
    free(x), free(qkv), free(att), free(hid), free(s), free(pat);
    *flops = fl;
    return t;
}

int main(int argc, char **argv)
{
    dm_blas_pick_core(argv);
    int threads = argc > 1 ? atoi(argv[1]) : 2, size = argc > 2 ? atoi(argv[2]) : 512;
    const char *dir = "build/bench", *path = "build/bench/vitl16_random.safetensors";
    mkdir("build", 0777);
    mkdir(dir, 0777);
    struct stat st;
    if (stat(path, &st) != 0) {
        printf("generating a random full-size ViT-L/16 checkpoint (once): %s\n", path);
        pid_t pid = fork(); /* in a child, so its memory does not count in our peak RSS */
        if (pid == 0)
            _exit(generate(path) ? 1 : 0);
        int ws;
        waitpid(pid, &ws, 0);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws)) {
            fprintf(stderr, "bench: cannot write %s\n", path);
            return 1;
        }
    }
    dm_err err = { 0 };
    dm_model *m;
    if (dm_model_open(path, NULL, &m, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    dm_backend *be;
    dm_backend_opts bo = { threads, 0, DM_PREC_FP32 };
    if (dm_backend_open("cpu", m, &bo, &be, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return 1;
    }
    int H = size, W = size, N = dm_model_tokens(m, H, W), D = m->cfg.embed_dim;
    float *img = malloc(sizeof(float) * 3 * H * W), *out = malloc(sizeof(float) * N * D);
    for (int i = 0; i < 3 * H * W; i++)
        img[i] = frand();
    dm_vit_request req = { 0, NULL, NULL, NULL, out };
    printf("model %s (D=%d, %d blocks), tile %d×%d (%d tokens), %d threads, OpenBLAS %s\n",
           m->cfg.arch, D, m->cfg.depth, W, H, N, threads, openblas_get_config());
    dm_backend_forward(be, img, 1, H, W, &req, &err); /* warm-up: pages in the weights */
    /* all forward passes first, then the floor: threaded OpenBLAS calls leave worker threads
     * that slow a forward pass run right after them (in dinomap they never run) */
    enum { REPS = 5 };
    double fw[REPS], fl[REPS], flops = 0;
    for (int r = 0; r < REPS; r++) {
        double t0 = now();
        if (dm_backend_forward(be, img, 1, H, W, &req, &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return 1;
        }
        fw[r] = now() - t0;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = (double)ru.ru_maxrss / 1024.0;
    /* the floor is OpenBLAS's own threaded sgemm (the backend keeps OpenBLAS single-threaded and
     * splits the work over its own threads) */
    openblas_set_num_threads(threads);
    for (int r = 0; r < REPS; r++)
        fl[r] = gemm_floor(m, N, N - 5, &flops);
    qsort(fw, REPS, sizeof(double), cmp_double);
    qsort(fl, REPS, sizeof(double), cmp_double);
    printf("forward:        %.3f s/tile (best of %d; median %.3f s)\n", fw[0], REPS, fw[REPS / 2]);
    printf("GEMM work:      %.1f GFLOP per tile, %.1f GFLOP/s achieved\n", flops / 1e9,
           flops / 1e9 / fw[0]);
    printf("sgemm floor:    %.3f s (the same GEMMs alone, best of %d; median %.3f s), %.1f "
           "GFLOP/s\n", fl[0], REPS, fl[REPS / 2], flops / 1e9 / fl[0]);
    printf("efficiency:     %.3f best/best, %.3f median/median (sgemm floor / forward; "
           "target >= 0.85)\n", fl[0] / fw[0], fl[REPS / 2] / fw[REPS / 2]);
    printf("peak RSS:       %.0f MB (target <= 1600 MB for ViT-L fp32 at 512 px)\n", rss_mb);
    free(img), free(out);
    dm_backend_close(be);
    dm_model_free(m);
    return 0;
}

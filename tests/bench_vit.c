/* tests/bench_vit.c — `make bench`: the CPU forward pass in fp32 and bf16, in one run.
 * Generates a full-size random ViT-L/16 checkpoint once (build/bench/, safetensors with Meta
 * names, fp32) and a 7B-shaped one (2 of ViT-7B/16's 40 blocks, bf16 as Meta ships 7B), then
 * reports, interleaving the precisions, seconds per tile at batch 1 and 4, GFLOP/s, peak RSS, and
 * each precision against its floor measured in the same run on exactly the forward pass's GEMM
 * shapes: OpenBLAS's threaded sgemm for fp32, oneDNN's threaded bf16 matmul for bf16. It says
 * which OpenBLAS kernels ran and what the environment preset. Not a test: it asserts nothing. */
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

#include "../models/cpu/bf16.h"
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

/* Writes a random ViT (Meta names) as safetensors: D, FFN F, L blocks, MLP or SwiGLU (then no
 * qkv bias, as ViT-7B/16), head dim hd, fp32 or bf16. */
static int generate(const char *path, int D, int F, int L, int swiglu, int hd, int bf16)
{
    char n[96];
    nspecs = 0;
    add("cls_token", 3, 1, 1, D, 0, 0, 0.5f);
    add("storage_tokens", 3, 1, 4, D, 0, 0, 0.5f);
    add("patch_embed.proj.weight", 4, D, 3, 16, 16, 0, 0.03f);
    add("patch_embed.proj.bias", 1, D, 0, 0, 0, 0, 0.1f);
    add("rope_embed.periods", 1, hd / 4, 0, 0, 0, 3, 0);
    float ws = 1.6f / sqrtf((float)D), wf = 1.6f / sqrtf((float)F);
    for (int i = 0; i < L; i++) {
#define B(fmt, ...) (snprintf(n, sizeof n, "blocks.%d." fmt, i), add(n, __VA_ARGS__))
        B("norm1.weight", 1, D, 0, 0, 0, 1, 0);
        B("norm1.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("attn.qkv.weight", 2, 3 * D, D, 0, 0, 0, ws);
        if (!swiglu) {
            B("attn.qkv.bias", 1, 3 * D, 0, 0, 0, 0, 0.05f);
            B("attn.qkv.bias_mask", 1, 3 * D, 0, 0, 0, 4, 0);
        }
        B("attn.proj.weight", 2, D, D, 0, 0, 0, ws);
        B("attn.proj.bias", 1, D, 0, 0, 0, 0, 0.05f);
        B("ls1.gamma", 1, D, 0, 0, 0, 0, 0.3f);
        B("norm2.weight", 1, D, 0, 0, 0, 1, 0);
        B("norm2.bias", 1, D, 0, 0, 0, 0, 0.05f);
        if (swiglu) {
            B("mlp.w1.weight", 2, F, D, 0, 0, 0, ws);
            B("mlp.w1.bias", 1, F, 0, 0, 0, 0, 0.05f);
            B("mlp.w2.weight", 2, F, D, 0, 0, 0, ws);
            B("mlp.w2.bias", 1, F, 0, 0, 0, 0, 0.05f);
            B("mlp.w3.weight", 2, D, F, 0, 0, 0, wf);
            B("mlp.w3.bias", 1, D, 0, 0, 0, 0, 0.05f);
        } else {
            B("mlp.fc1.weight", 2, F, D, 0, 0, 0, ws);
            B("mlp.fc1.bias", 1, F, 0, 0, 0, 0, 0.05f);
            B("mlp.fc2.weight", 2, D, F, 0, 0, 0, wf);
            B("mlp.fc2.bias", 1, D, 0, 0, 0, 0, 0.05f);
        }
        B("ls2.gamma", 1, D, 0, 0, 0, 0, 0.3f);
#undef B
    }
    add("norm.weight", 1, D, 0, 0, 0, 1, 0);
    add("norm.bias", 1, D, 0, 0, 0, 0, 0.05f);
    int esz = bf16 ? 2 : 4;
    size_t cap = 1 << 20, len = 0;
    char *h = malloc(cap);
    int64_t off = 0;
    len += snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < nspecs; i++) {
        int64_t bytes = numel(&specs[i]) * esz;
        len += snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                        specs[i].name, bf16 ? "BF16" : "F32");
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
    size_t most = (size_t)(F > 3 * D ? F : 3 * D) * D;
    float *buf = malloc(sizeof(float) * most);
    uint16_t *hb = malloc(sizeof(uint16_t) * most);
    for (int i = 0; i < nspecs; i++) {
        int64_t ne = numel(&specs[i]);
        for (int64_t j = 0; j < ne; j++) {
            switch (specs[i].kind) {
            case 0: buf[j] = frand() * specs[i].scale; break;
            case 1: buf[j] = 1.0f + 0.1f * frand(); break;
            case 3: buf[j] = powf(100.0f, (float)j * 4.0f / (float)hd); break;
            case 4: buf[j] = (j >= ne / 3 && j < 2 * ne / 3) ? 0.0f : 1.0f; break;
            default: buf[j] = 0; break;
            }
        }
        if (bf16) {
            dm_bf16_from_f32(buf, hb, ne);
            fwrite(hb, 2, (size_t)ne, f);
        } else {
            fwrite(buf, 4, (size_t)ne, f);
        }
    }
    free(buf), free(hb);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return -1;
    return 0;
}

/* Makes the checkpoint once, in a child (its memory does not count in our peak RSS). */
static int ensure_file(const char *path, int D, int F, int L, int swiglu, int hd, int bf16)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return 0;
    printf("generating a random checkpoint (once): %s\n", path);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
        _exit(generate(path, D, F, L, swiglu, hd, bf16) ? 1 : 0);
    int ws;
    waitpid(pid, &ws, 0);
    if (!WIFEXITED(ws) || WEXITSTATUS(ws)) {
        fprintf(stderr, "bench: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

/* --- the floor: the forward pass's GEMMs alone, on the model's weights and same-shaped
 * buffers, through the library's own threading ---------------------------------------------- */

typedef struct wcopy {
    const float *f;    /* fp32 weights (in place or widened) */
    const uint16_t *h; /* bf16 weights (in place or rounded) */
    void *own_f, *own_h;
} wcopy;

static void wcopy_make(const dm_mat *mm, int bf16, wcopy *w)
{
    memset(w, 0, sizeof *w);
    const dm_tensor *t = mm->t;
    size_t n = (size_t)(mm->rows * mm->cols);
    const unsigned char *p = t->data + (size_t)(mm->row0 * mm->cols) * dm_dtype_size(t->dtype);
    float *f = NULL;
    if (!bf16 && t->dtype == DM_DT_F32) {
        w->f = (const float *)(const void *)p;
        return;
    }
    if (bf16 && t->dtype == DM_DT_BF16) {
        w->h = (const uint16_t *)(const void *)p;
        return;
    }
    f = malloc(n * sizeof(float));
    dm_tensor_read_f32(t, mm->row0 * mm->cols, (int64_t)n, f, NULL);
    if (!bf16) {
        w->f = w->own_f = f;
        return;
    }
    uint16_t *h = malloc(n * sizeof(uint16_t));
    dm_bf16_from_f32(f, h, (int64_t)n);
    free(f);
    w->h = w->own_h = h;
}

typedef struct floorset {
    int bf16;
    dm_bf16 *g;      /* bf16: oneDNN with `threads` OpenMP threads inside each call */
    wcopy patch, *blk; /* blk: [depth][4]: qkv, proj, fc1|w1, fc2|w3; w2 in [depth][4] + 4 */
    int nblk;
} floorset;

static void floorset_make(const dm_model *m, int bf16, int threads, floorset *fs)
{
    memset(fs, 0, sizeof *fs);
    fs->bf16 = bf16;
    if (bf16 && dm_bf16_create(threads, &fs->g, NULL))
        fs->g = NULL;
    fs->nblk = m->cfg.depth;
    fs->blk = calloc((size_t)fs->nblk * 5, sizeof(wcopy));
    wcopy_make(&m->patch_w, bf16, &fs->patch);
    for (int l = 0; l < fs->nblk; l++) {
        const dm_vit_block *b = &m->blocks[l];
        wcopy *w = fs->blk + (size_t)l * 5;
        wcopy_make(&b->qkv, bf16, &w[0]);
        wcopy_make(&b->proj, bf16, &w[1]);
        wcopy_make(m->cfg.swiglu ? &b->w1 : &b->fc1, bf16, &w[2]);
        wcopy_make(&b->fc2, bf16, &w[3]);
        if (m->cfg.swiglu)
            wcopy_make(&b->w2, bf16, &w[4]);
    }
}

static void floorset_free(floorset *fs)
{
    for (int i = 0; i < fs->nblk * 5; i++)
        free(fs->blk[i].own_f), free(fs->blk[i].own_h);
    free(fs->patch.own_f), free(fs->patch.own_h);
    free(fs->blk);
    dm_bf16_free(fs->g);
}

/* C[M,N] = A[M,K] · op(B) in the set's precision (A, B: fp32 or bf16 as the set is) */
static void mm(const floorset *fs, int transB, int M, int N, int K, float alpha, const void *A,
               int lda, const void *B, int ldb, float *C, int ldc)
{
    if (fs->bf16)
        dm_bf16_gemm(fs->g, transB, M, N, K, alpha, A, lda, B, ldb, 0, C, ldc, NULL);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                    alpha, A, lda, B, ldb, 0.0f, C, ldc);
}

#define WP(w) (fs->bf16 ? (const void *)(w).h : (const void *)(w).f)

/* One image's GEMMs; returns seconds, *flops the work */
static double gemm_floor(const dm_model *m, const floorset *fs, int N, int hw, double *flops)
{
    int D = m->cfg.embed_dim, F = m->cfg.ffn_hidden, nh = m->cfg.num_heads, hd = m->cfg.head_dim;
    size_t es = fs->bf16 ? 2 : 4;
    /* inputs in the set's precision; outputs fp32 */
    void *x = calloc((size_t)N * F, es), *qkvi = calloc((size_t)N * 3 * D, es);
    void *pi = calloc((size_t)N * N, es), *pat = calloc((size_t)hw * 768, es);
    float *o = calloc((size_t)N * (F > 3 * D ? F : 3 * D), 4), *s = calloc((size_t)N * N, 4);
    double t0 = now(), fl = 0;
    mm(fs, 1, hw, D, 768, 1, pat, 768, WP(fs->patch), 768, o, D);
    fl += 2.0 * hw * 768 * D;
    for (int l = 0; l < m->cfg.depth; l++) {
        const wcopy *w = fs->blk + (size_t)l * 5;
        mm(fs, 1, N, 3 * D, D, 1, x, D, WP(w[0]), D, o, 3 * D);
        for (int h = 0; h < nh; h++) {
            const char *q = (const char *)qkvi + (size_t)h * hd * es;
            mm(fs, 1, N, N, hd, 1, q, 3 * D, q + (size_t)D * es, 3 * D, s, N);
            mm(fs, 0, N, hd, N, 1, pi, N, q + (size_t)2 * D * es, 3 * D, o + h * hd, D);
        }
        mm(fs, 1, N, D, D, 1, x, D, WP(w[1]), D, o, D);
        mm(fs, 1, N, F, D, 1, x, D, WP(w[2]), D, o, F);
        if (m->cfg.swiglu)
            mm(fs, 1, N, F, D, 1, x, D, WP(w[4]), D, o, F);
        mm(fs, 1, N, D, F, 1, x, F, WP(w[3]), F, o, D);
        fl += 2.0 * N * D * 3 * D + 4.0 * nh * (double)N * N * hd + 2.0 * N * D * D +
              (m->cfg.swiglu ? 6.0 : 4.0) * N * D * F;
    }
    double t = now() - t0;
    free(x), free(qkvi), free(pi), free(pat), free(o), free(s);
    *flops = fl;
    return t;
}

/* --- measuring ---------------------------------------------------------------------------- */

enum { REPS = 3, MAXB = 4 };

typedef struct series {
    double t[REPS];
} series;

static double best(series *s)
{
    qsort(s->t, REPS, sizeof(double), cmp_double);
    return s->t[0];
}
static double median(series *s)
{
    qsort(s->t, REPS, sizeof(double), cmp_double);
    return s->t[REPS / 2];
}

static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* Peak RSS of a child that opens the model and runs one tile in precision prec (MB). */
static double child_rss(const char *path, int prec, int threads, int size)
{
    int fd[2];
    if (pipe(fd))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        dm_model *m;
        dm_backend *be;
        dm_backend_opts bo = { threads, 0, prec };
        double mb = -1;
        if (!dm_model_open(path, NULL, &m, NULL) && !dm_backend_open("cpu", m, &bo, &be, NULL)) {
            int N = dm_model_tokens(m, size, size);
            float *img = calloc((size_t)3 * size * size, 4);
            float *out = malloc(sizeof(float) * N * m->cfg.embed_dim);
            dm_vit_request req = { 0, NULL, NULL, NULL, out, 0 };
            if (!dm_backend_forward(be, img, 1, size, size, &req, NULL)) {
                struct rusage ru;
                getrusage(RUSAGE_SELF, &ru);
                mb = (double)ru.ru_maxrss / 1024.0;
            }
        }
        if (write(fd[1], &mb, sizeof mb) != sizeof mb)
            _exit(1);
        _exit(0);
    }
    close(fd[1]);
    double mb = -1;
    if (read(fd[0], &mb, sizeof mb) != sizeof mb)
        mb = -1;
    close(fd[0]);
    waitpid(pid, NULL, 0);
    return mb;
}

typedef struct result {
    double best[2][MAXB + 1], med[2][MAXB + 1]; /* [precision][batch] per tile */
    double fbest[2], fmed[2];                    /* floor per tile */
    double flops;
} result;

/* Interleaves fp32 and bf16 forward passes (batches 1 and 4) on one model, then the floors. */
static int measure(const char *path, int threads, int size, int nprec, int batch4, result *r)
{
    dm_err err = { 0 };
    dm_model *m;
    if (dm_model_open(path, NULL, &m, &err)) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return -1;
    }
    dm_backend *be[2] = { 0 };
    for (int p = 0; p < nprec; p++) {
        dm_backend_opts bo = { threads, 0, p ? DM_PREC_BF16 : DM_PREC_FP32 };
        if (dm_backend_open("cpu", m, &bo, &be[p], &err)) {
            fprintf(stderr, "bench: %s\n", err.msg);
            return -1;
        }
    }
    int H = size, W = size, N = dm_model_tokens(m, H, W), D = m->cfg.embed_dim;
    float *img = malloc(sizeof(float) * 3 * H * W * MAXB);
    float *out = malloc(sizeof(float) * N * D * MAXB);
    for (int i = 0; i < 3 * H * W * MAXB; i++)
        img[i] = frand();
    dm_vit_request req = { 0, NULL, NULL, NULL, out, 0 };
    printf("model %s (D=%d, %d blocks, %d heads, %s FFN %d), tile %d×%d (%d tokens), %d threads\n",
           m->cfg.arch, D, m->cfg.depth, m->cfg.num_heads, m->cfg.swiglu ? "SwiGLU" : "MLP",
           m->cfg.ffn_hidden, W, H, N, threads);
    fflush(stdout);
    int batches[2] = { 1, MAXB };
    for (int bi = 0; bi < (batch4 ? 2 : 1); bi++) {
        int B = batches[bi];
        series s[2];
        for (int p = 0; p < nprec && B == 1; p++) /* warm-up: pages in the weights */
            dm_backend_forward(be[p], img, B, H, W, &req, &err);
        for (int rep = 0; rep < REPS; rep++)
            for (int p = 0; p < nprec; p++) {
                double t0 = now();
                if (dm_backend_forward(be[p], img, B, H, W, &req, &err)) {
                    fprintf(stderr, "bench: %s\n", err.msg);
                    return -1;
                }
                s[p].t[rep] = (now() - t0) / B;
            }
        for (int p = 0; p < nprec; p++) {
            r->best[p][B] = best(&s[p]);
            r->med[p][B] = median(&s[p]);
        }
    }
    for (int p = 0; p < nprec; p++)
        dm_backend_close(be[p]);
    /* the floors last: the libraries' own threads spin a while after their calls and would slow
     * a forward pass run right after them (in dinomap they never run) */
    floorset fs[2];
    for (int p = 0; p < nprec; p++)
        floorset_make(m, p, threads, &fs[p]);
    openblas_set_num_threads(threads);
    series f[2];
    for (int p = 0; p < nprec; p++) /* warm-up */
        gemm_floor(m, &fs[p], N, N - 1 - m->cfg.n_storage, &r->flops);
    for (int rep = 0; rep < REPS; rep++)
        for (int p = 0; p < nprec; p++)
            f[p].t[rep] = gemm_floor(m, &fs[p], N, N - 1 - m->cfg.n_storage, &r->flops);
    openblas_set_num_threads(1);
    for (int p = 0; p < nprec; p++) {
        r->fbest[p] = best(&f[p]);
        r->fmed[p] = median(&f[p]);
        floorset_free(&fs[p]);
    }
    free(img), free(out);
    dm_model_free(m);
    return 0;
}

static void report(const result *r, int nprec, int batch4)
{
    static const char *pn[2] = { "fp32", "bf16" }, *lib[2] = { "OpenBLAS sgemm", "oneDNN bf16" };
    printf("GEMM work: %.1f GFLOP per tile (linear layers, attention QKᵀ and PV, patch "
           "embedding)\n", r->flops / 1e9);
    printf("%-5s %-5s %-9s %-9s %-8s | %-15s %-9s %-9s %-8s | %s\n", "prec", "batch", "best s",
           "median s", "GFLOP/s", "floor library", "best s", "median s", "GFLOP/s",
           "efficiency best/best, median/median");
    for (int p = 0; p < nprec; p++)
        for (int B = 1; B <= MAXB; B += batch4 ? MAXB - 1 : MAXB)
            printf("%-5s %-5d %-9.3f %-9.3f %-8.1f | %-15s %-9.3f %-9.3f %-8.1f | %.3f, %.3f\n",
                   pn[p], B, r->best[p][B], r->med[p][B], r->flops / 1e9 / r->best[p][B], lib[p],
                   r->fbest[p], r->fmed[p], r->flops / 1e9 / r->fbest[p],
                   r->fbest[p] / r->best[p][B], r->fmed[p] / r->med[p][B]);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--core")) { /* the kernels OpenBLAS runs with here */
        printf("%s\n", openblas_get_corename());
        return 0;
    }
    dm_blas_pick_core(argv);
    int threads = argc > 1 ? atoi(argv[1]) : 2, size = argc > 2 ? atoi(argv[2]) : 512;
    int fp32_only = argc > 3 && !strcmp(argv[3], "fp32");
    const char *vitl = "build/bench/vitl16_random.safetensors";
    const char *v7b = "build/bench/vit7b16_2blocks_random_bf16.safetensors";
    mkdir("build", 0777);
    mkdir("build/bench", 0777);
    const char *isa = dm_cpu_bf16();
    int nprec = isa && !fp32_only ? 2 : 1;
    char model[256] = "?", lib[160];
    FILE *ci = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (ci && fgets(line, sizeof line, ci))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    if (ci)
        fclose(ci);
    const char *ct = getenv("OPENBLAS_CORETYPE"), *l2 = getenv("OPENBLAS_L2_SIZE");
    printf("machine: %s, %ld cores online; bf16 dot-product instructions: %s\n", model,
           sysconf(_SC_NPROCESSORS_ONLN), isa ? isa : "none (bf16 not measured)");
    printf("OpenBLAS: %s; sgemm kernels: %s (OPENBLAS_CORETYPE=%s, OPENBLAS_L2_SIZE=%s in the "
           "environment)\n", openblas_get_config(), openblas_get_corename(), ct ? ct : "(unset)",
           l2 ? l2 : "(unset)");
    printf("bf16 library: %s\n", dm_bf16_library(lib, sizeof lib));
    printf("load average (1 min) at the start: %.2f\n", loadavg());
    if (ensure_file(vitl, 1024, 4096, 24, 0, 64, 0))
        return 1;
    double rss[2] = { -1, -1 };
    for (int p = 0; p < nprec; p++)
        rss[p] = child_rss(vitl, p ? DM_PREC_BF16 : DM_PREC_FP32, threads, size);
    result r;
    memset(&r, 0, sizeof r);
    if (measure(vitl, threads, size, nprec, 1, &r))
        return 1;
    report(&r, nprec, 1);
    printf("peak RSS, one tile (fp32 file): fp32 %.0f MB (target <= 1600 MB)", rss[0]);
    if (nprec == 2)
        printf(", bf16 %.0f MB (weights rounded once to bf16, the file's pages released)", rss[1]);
    printf("\n");
    if (nprec == 2) {
        printf("bf16 / fp32: %.2f× faster at batch 1, %.2f× at batch 4 (best)\n",
               r.best[0][1] / r.best[1][1], r.best[0][MAXB] / r.best[1][MAXB]);
        printf("targets: bf16 batch 1 %.3f s/tile (<= 1.1 s: %s); fp32 efficiency %.3f (>= 0.85: "
               "%s)\n", r.best[1][1], r.best[1][1] <= 1.1 ? "met" : "NOT met",
               r.fbest[0] / r.best[0][1], r.fbest[0] / r.best[0][1] >= 0.85 ? "met" : "NOT met");
    }
    if (fp32_only)
        return 0;
    /* 7B-shaped blocks: D=4096, 32 heads × 128, SwiGLU 8192, no qkv bias, a bf16 file */
    if (ensure_file(v7b, 4096, 8192, 2, 1, 128, 1))
        return 1;
    result r7;
    memset(&r7, 0, sizeof r7);
    printf("\n7B-shaped blocks (2 of ViT-7B/16's 40, bf16 file: fp32 widens it every tile, bf16 "
           "uses it in place):\n");
    if (measure(v7b, threads, size, nprec, 0, &r7))
        return 1;
    report(&r7, nprec, 0);
    if (nprec == 2)
        printf("bf16 per FLOP: 7B-shaped %.1f GFLOP/s against ViT-L/16 %.1f GFLOP/s (%s)\n",
               r7.flops / 1e9 / r7.best[1][1], r.flops / 1e9 / r.best[1][1],
               r7.flops / r7.best[1][1] >= r.flops / r.best[1][1] ? "at least as fast"
                                                                  : "slower");
    printf("load average (1 min) at the end: %.2f\n", loadavg());
    return 0;
}

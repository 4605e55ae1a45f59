/* tests/fake_cuda.c — a stand-in for the CUDA plugin (plain C, no CUDA), built as
 * build/tests/libfake_cuda.so: the tests load it through DINOMAP_CUDA_LIB to exercise the
 * plugin's loading, its errors and the multi-GPU workers on a machine without a GPU. Its
 * "forward" writes a fixed function of each image, so a batch gives the same numbers however it
 * is shared out. Behaviour set by the environment:
 *   DM_FAKE_GPUS=N      GPUs it reports (default 2); "fail": the CUDA driver "fails"
 *   DM_FAKE_ABI=bad     reports another ABI number; DM_FAKE_LAYOUT=bad another layout
 *   DM_FAKE_FAIL_GPU=K  forward on GPU K fails
 *   DM_FAKE_FAIL_AFTER=N  a forward fails once N images have run (any GPU): a device that
 *                       breaks in the middle of a run
 *   DM_FAKE_DELAY_MS=T  each forward takes T ms more (a slow device: the pipeline must give the
 *                       same outputs)
 *   DM_FAKE_BATCH_LOG=F each forward appends its batch size to file F, one per line
 * Built with -DFAKE_NO_ENTRY: the same without the entry symbol. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../models/cuda/plugin.h"

static atomic_int images_on[DM_MAX_GPUS];
static atomic_int images_all;

/* for the tests (dlsym): images a GPU has run since load */
int fake_cuda_images(int gpu) { return gpu >= 0 && gpu < DM_MAX_GPUS ? images_on[gpu] : -1; }

static int fail(dm_err *err, int code, const char *msg)
{
    if (err) {
        err->code = code;
        snprintf(err->msg, sizeof err->msg, "%s", msg);
    }
    return code;
}

static int fake_count(int *n, dm_err *err)
{
    const char *g = getenv("DM_FAKE_GPUS");
    if (g && !strcmp(g, "fail"))
        return fail(err, DM_EUNSUPPORTED, "no CUDA driver (fake: cudaGetDeviceCount says "
                    "insufficient driver)");
    *n = g ? atoi(g) : 2;
    return 0;
}

static void fake_name(int dev, char *buf, size_t n) { snprintf(buf, n, "Fake GPU %d", dev); }

typedef struct fake {
    const dm_model *m;
    int gpu;
} fake;

static int fake_create(const dm_model *m, const dm_backend_opts *o, int gpu, void **state,
                       dm_err *err)
{
    (void)o;
    fake *f = calloc(1, sizeof *f);
    if (!f)
        return fail(err, DM_ENOMEM, "out of memory");
    f->m = m;
    f->gpu = gpu;
    *state = f;
    return 0;
}

static void fill(float *out, const float *img, int N, int D, int px, float add)
{
    for (int t = 0; t < N; t++)
        for (int d = 0; d < D; d++)
            out[(size_t)t * D + d] = img[((size_t)t * 7 + d) % px] * (1.0f + 0.001f * d) + add;
}

static int fake_forward(void *state, const float *images, int B, int H, int W,
                        const dm_vit_request *req, dm_err *err)
{
    fake *f = state;
    const char *fg = getenv("DM_FAKE_FAIL_GPU");
    if (fg && atoi(fg) == f->gpu) {
        char msg[80];
        snprintf(msg, sizeof msg, "fake GPU %d: out of memory", f->gpu);
        return fail(err, DM_ENOMEM, msg);
    }
    const char *fa = getenv("DM_FAKE_FAIL_AFTER");
    if (fa && atomic_load(&images_all) + B > atoi(fa)) {
        char msg[120];
        snprintf(msg, sizeof msg, "fake GPU %d: the device failed after %d images", f->gpu,
                 atomic_load(&images_all));
        return fail(err, DM_EIO, msg);
    }
    const char *dl = getenv("DM_FAKE_DELAY_MS");
    if (dl && atoi(dl) > 0) {
        struct timespec ts = { atoi(dl) / 1000, (long)(atoi(dl) % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    const char *bl = getenv("DM_FAKE_BATCH_LOG");
    FILE *lf = bl ? fopen(bl, "a") : NULL;
    if (lf) {
        fprintf(lf, "%d\n", B);
        fclose(lf);
    }
    atomic_fetch_add(&images_all, B);
    int D = f->m->cfg.embed_dim, N = 1 + f->m->cfg.n_storage + (H / 16) * (W / 16);
    int px = 3 * H * W;
    for (int b = 0; b < B; b++) {
        const float *img = images + (size_t)b * px;
        size_t off = (size_t)b * N * D;
        if (req && req->normed)
            fill(req->normed + off, img, N, D, px, 0.0f);
        if (req && req->prenorm)
            fill(req->prenorm + off, img, N, D, px, 1.0f);
        for (int i = 0; req && req->layer_out && i < req->n_layers; i++)
            if (req->layer_out[i])
                fill(req->layer_out[i] + off, img, N, D, px, 2.0f + (float)req->layers[i]);
        if (f->gpu >= 0 && f->gpu < DM_MAX_GPUS)
            atomic_fetch_add(&images_on[f->gpu], 1);
    }
    return 0;
}

static void fake_destroy(void *state) { free(state); }

static const dm_backend_ops ops = { "fake-cuda", NULL, fake_forward, fake_destroy };

/* the entry, under another name in the build without it */
#ifndef FAKE_NO_ENTRY
#define ENTRY dm_cuda_plugin_entry
#else
#define ENTRY dm_cuda_plugin_entry_misspelt
#endif
const dm_cuda_plugin *ENTRY(const dm_cuda_host *host);
const dm_cuda_plugin *ENTRY(const dm_cuda_host *host)
{
    static dm_cuda_plugin p;
    (void)host;
    const char *a = getenv("DM_FAKE_ABI"), *l = getenv("DM_FAKE_LAYOUT");
    p.abi = DM_CUDA_ABI + (a && !strcmp(a, "bad"));
    p.layout = dm_cuda_layout() + (l && !strcmp(l, "bad"));
    p.version = DINOMAP_VERSION;
    p.build = "fake, no CUDA";
    p.device_count = fake_count;
    p.device_name = fake_name;
    p.create = fake_create;
    p.ops = &ops;
    return &p;
}

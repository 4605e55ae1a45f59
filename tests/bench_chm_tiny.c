/* tests/bench_chm_tiny.c — `make bench`, canopy height: backbone + CHMv2 head per tile with the
 * tiny Hugging Face CHMv2 test model (tests/data/golden/chmv2_tiny_hf), and the share of the time
 * spent in the head (the same tiles through the backbone alone, with the head's taps). Not a test. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../heads/heads.h"
#include "../models/model.h"
#include "../models/model.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    dm_blas_pick_core(argv);
    int threads = argc > 1 ? atoi(argv[1]) : 2, T = argc > 2 ? atoi(argv[2]) : 512, reps = 5;
    const char *path = "tests/data/golden/chmv2_tiny_hf/model.safetensors";
    dm_err err = { 0 };
    dm_model *m;
    dm_chm *h;
    dm_backend *be;
    dm_backend_opts bo = { threads, 0, DM_PREC_FP32 };
    if (dm_model_open(path, NULL, &m, &err) || dm_chm_open(NULL, m->w, m, NULL, &h, &err) ||
        dm_chm_set_threads(h, threads, &err) ||
        dm_backend_open("cpu", m, &bo, &be, &err)) {
        fprintf(stderr, "bench_chm_tiny: %s\n", err.msg);
        return 1;
    }
    float *img = malloc(sizeof(float) * 3 * T * T), *height = malloc(sizeof(float) * T * T);
    for (int i = 0; i < 3 * T * T; i++)
        img[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    int N = dm_model_tokens(m, T, T), D = m->cfg.embed_dim;
    float *tap[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++)
        tap[k] = malloc(sizeof(float) * N * D);
    dm_vit_request req = { DM_CHM_TAPS, dm_chm_taps(h), tap, NULL, NULL, 0 };
    double best_full = 1e30, best_bb = 1e30;
    dm_chm_run(h, be, img, T, T, NULL, height, &err); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (dm_chm_run(h, be, img, T, T, NULL, height, &err)) {
            fprintf(stderr, "bench_chm_tiny: %s\n", err.msg);
            return 1;
        }
        double t1 = now();
        dm_backend_forward(be, img, 1, T, T, &req, &err);
        for (int k = 0; k < DM_CHM_TAPS; k++)
            dm_model_norm_tokens(m, tap[k], tap[k], N);
        double t2 = now();
        best_full = t1 - t0 < best_full ? t1 - t0 : best_full;
        best_bb = t2 - t1 < best_bb ? t2 - t1 : best_bb;
    }
    printf("CHMv2 (tiny test model: D=%d, %d blocks, head %s), %d×%d tiles, %d threads\n", D,
           m->cfg.depth, dm_chm_describe(h), T, T, threads);
    printf("backbone + head: %.3f s/tile (%.2f tiles/s), best of %d\n", best_full, 1 / best_full,
           reps);
    printf("backbone alone:  %.3f s/tile; share of the time in the head: %.0f%%\n", best_bb,
           100 * (1 - best_bb / best_full));
    for (int k = 0; k < DM_CHM_TAPS; k++)
        free(tap[k]);
    free(img), free(height);
    dm_backend_close(be);
    dm_chm_free(h);
    dm_model_free(m);
    return 0;
}

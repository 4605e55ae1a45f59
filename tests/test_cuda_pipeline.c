/* tests/test_cuda_pipeline.c — the run engine's reader → model → writer pipeline with a GPU
 * backend that is slow or fails, without a GPU: `dinomap features --device cuda` on the stand-in
 * plugin (tests/fake_cuda.c, whose forward is a fixed function of each image):
 *   - batches: every forward but the last gets a full batch, and together they cover every tile;
 *   - a slow device (each forward delayed) gives outputs identical to a fast one, batch 1 or 4;
 *   - a device that fails in the middle stops the run with its error, keeps the chunks finished
 *     before it, and the resumed run ends with the outputs of an uninterrupted one. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "golden.h"
#include "test.h"

static const char *fake_lib(void)
{
    static char path[PATH_MAX + 64];
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[k > 0 ? k : 0] = 0;
    char *s = strrchr(exe, '/');
    if (s)
        *s = 0;
    snprintf(path, sizeof path, "%s/tests/libfake_cuda.so", exe);
    return path;
}

/* features of in into dir on the fake GPU, with extra environment and options */
static int feat(const char *env, const char *in, const char *dir, const char *opts,
                const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "DINOMAP_CUDA_LIB=%s DM_FAKE_GPUS=1 %s %s features --progress none "
             "-m %s %s -o %s --tile 32 --halo 16 --chunk 2 --device cuda %s", fake_lib(), env,
             dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), in, dir, opts);
    return dm_run(cmd, out);
}

/* the batch sizes a log holds; returns their count */
static int read_batches(const char *path, int *b, int max)
{
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && n < max && fscanf(f, "%d", &b[n]) == 1)
        n++;
    if (f)
        fclose(f);
    return n;
}

static int make_in(const char *t, char *in, size_t n)
{
    snprintf(in, n, "%s/in.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    return dm_make_tif(in, 160, 128, 3, gt, 32631, -1, 41);
}

TEST(cuda_pipeline_slow_device_batches)
{
    const char *t = dm_test_tmpdir(), *out;
    char in[1100], a[1100], b[1100], env[2400], why[600];
    CHECK(make_in(t, in, sizeof in) == 0);
    snprintf(a, sizeof a, "%s/a", t);
    snprintf(b, sizeof b, "%s/b", t);
    snprintf(env, sizeof env, "DM_FAKE_BATCH_LOG=%s/a.log", t);
    CHECKF(feat(env, in, a, "--batch 1", &out) == 0, "%s", out);
    snprintf(env, sizeof env, "DM_FAKE_BATCH_LOG=%s/b.log DM_FAKE_DELAY_MS=25", t);
    CHECKF(feat(env, in, b, "--batch 4", &out) == 0, "%s", out);
    static const char *names[] = { "features.tif", NULL };
    CHECKF(dm_same_outputs(a, b, names, why, sizeof why), "slow device, batch 4: %s", why);
    int ba[512], bb[512], tiles = 0, sum = 0;
    char p[1200];
    snprintf(p, sizeof p, "%s/a.log", t);
    int na = read_batches(p, ba, 512);
    snprintf(p, sizeof p, "%s/b.log", t);
    int nb = read_batches(p, bb, 512);
    for (int i = 0; i < na; i++)
        tiles += ba[i];
    int full = 1;
    for (int i = 0; i < nb; i++) {
        sum += bb[i];
        full &= i == nb - 1 ? bb[i] >= 1 && bb[i] <= 4 : bb[i] == 4;
    }
    printf("    %d tiles: batch 1 → %d forwards; batch 4 (slow device) → %d forwards\n", tiles,
           na, nb);
    CHECKF(na == tiles && tiles > 8, "batch 1: %d forwards for %d tiles", na, tiles);
    CHECKF(sum == tiles && full && nb == (tiles + 3) / 4, "batch 4: %d forwards, %d tiles, "
           "full %d", nb, sum, full);
}

TEST(cuda_pipeline_device_fails_mid_run)
{
    const char *t = dm_test_tmpdir(), *out;
    char in[1100], a[1100], k[1100], cmd[8192], why[600];
    CHECK(make_in(t, in, sizeof in) == 0);
    snprintf(a, sizeof a, "%s/a", t);
    snprintf(k, sizeof k, "%s/k", t);
    CHECKF(feat("", in, a, "--batch 2", &out) == 0, "%s", out);
    /* the device breaks after 13 images, in a batch of 2 (each forward slow enough for the
     * writer to finish the chunks done before it) */
    int st = feat("DM_FAKE_FAIL_AFTER=13 DM_FAKE_DELAY_MS=40", in, k, "--batch 2", &out);
    CHECKF(st != 0 && strstr(out, "fake GPU 0: the device failed after 12 images"),
           "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s status --json %s", dm_bin(), k);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    cJSON *j = cJSON_Parse(out);
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "chunks");
    double left = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ch, "left"));
    double done = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ch, "done"));
    cJSON_Delete(j);
    printf("    after the failure: %g chunks done, %g left\n", done, left);
    CHECKF(done >= 1 && left >= 1, "%g done, %g left", done, left);
    CHECKF(feat("", in, k, "--batch 3", &out) == 0, "the resumed run: %s", out);
    static const char *names[] = { "features.tif", NULL };
    CHECKF(dm_same_outputs(a, k, names, why, sizeof why), "resumed after the failure: %s", why);
}

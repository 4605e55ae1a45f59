/* tests/test_cuda_plugin.c — the CUDA device on a machine without a GPU: the device names, the
 * plugin's loading and each of its errors (not built, not loadable, no entry symbol, built from
 * other sources, no driver, no GPU, a GPU number out of range), `auto` falling back to the CPU,
 * and the workers of a multi-GPU device, through a stand-in plugin (tests/fake_cuda.c, built as
 * <build>/tests/libfake_cuda.so: C, no CUDA). */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../models/model.h"
#include "golden.h"
#include "test.h"

/* <folder of this test program>/tests/NAME */
static const char *beside(const char *name)
{
    static char path[PATH_MAX + 64];
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[k > 0 ? k : 0] = 0;
    char *s = strrchr(exe, '/');
    if (s)
        *s = 0;
    snprintf(path, sizeof path, "%s/tests/%s", exe, name);
    return path;
}

static void env_clear(void)
{
    unsetenv("DINOMAP_CUDA_LIB");
    unsetenv("DM_FAKE_GPUS");
    unsetenv("DM_FAKE_ABI");
    unsetenv("DM_FAKE_LAYOUT");
    unsetenv("DM_FAKE_FAIL_GPU");
}

/* dm_backend_open(device) on the tiny golden backbone: its code, its message in msg */
static int try_open(const char *device, char *msg, size_t n)
{
    dm_err err = { 0 };
    dm_model *m = NULL;
    int rc = dm_model_open(dm_golden("vitl_sat_tiny/backbone.pth"), NULL, &m, &err);
    dm_backend *be = NULL;
    if (!rc)
        rc = dm_backend_open(device, m, NULL, &be, &err);
    snprintf(msg, n, "%s", rc ? err.msg : "");
    dm_backend_close(be);
    dm_model_free(m);
    return rc;
}

TEST(cuda_device_names)
{
    static const struct { const char *in, *out; } ok[] = {
        { "cpu", "cpu" }, { NULL, "cpu" }, { "cuda", "cuda:0" }, { "cuda:3", "cuda:3" },
        { "cuda:0,1", "cuda:0,1" }, { "cuda:1,0,2", "cuda:1,0,2" }, { "auto", "auto" },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        dm_device d;
        dm_err err = { 0 };
        char buf[64];
        CHECKF(dm_device_parse(ok[i].in, &d, &err) == 0, "%s: %s", ok[i].in, err.msg);
        CHECKF(!strcmp(dm_device_str(&d, buf, sizeof buf), ok[i].out), "%s → %s, want %s",
               ok[i].in, buf, ok[i].out);
    }
    static const struct { const char *in, *msg; } bad[] = {
        { "tpu", "unknown device" }, { "cuda:", "expected cuda:N" },
        { "cuda:x", "expected cuda:N" }, { "cuda:0,", "expected cuda:N" },
        { "cuda:-1", "expected cuda:N" }, { "cuda:0,0", "listed twice" },
        { "cuda:1234", "expected cuda:N" }, { "CUDA", "unknown device" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dm_device d;
        dm_err err = { 0 };
        CHECKF(dm_device_parse(bad[i].in, &d, &err) == DM_EINVAL && strstr(err.msg, bad[i].msg),
               "%s: %s", bad[i].in, err.msg);
    }
    CHECK(!strcmp(dm_device_class("cuda:0,1"), "cuda") && !strcmp(dm_device_class("cpu"), "cpu"));
    CHECK(!strcmp(dm_device_class(NULL), "cpu"));
    int p = -1;
    CHECK(dm_precision_resolve_on("cuda:0", DM_PREC_AUTO, &p, NULL, 0, NULL) == 0 &&
          p == DM_PREC_BF16);
    CHECK(dm_precision_resolve_on("cuda:1", DM_PREC_BF16, &p, NULL, 0, NULL) == 0 &&
          p == DM_PREC_BF16);
    CHECK(dm_precision_resolve_on("cuda:0", DM_PREC_FP32, &p, NULL, 0, NULL) == 0 &&
          p == DM_PREC_FP32);
    CHECK(dm_ops_precision_on("cpu", DM_PREC_FP32) == DM_PREC_FP32);
    CHECK(dm_ops_precision_on("cuda:0", DM_PREC_BF16) ==
          (dm_cpu_bf16() ? DM_PREC_BF16 : DM_PREC_FP32));
}

TEST(cuda_plugin_errors)
{
    char msg[1200], pick[64], why[400];
    dm_err err = { 0 };
    env_clear();
    /* not built (nothing at the path) */
    setenv("DINOMAP_CUDA_LIB", "/nonexistent/libdinomap_cuda.so", 1);
    int rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "--device cuda: this dinomap has no CUDA backend") &&
           strstr(msg, "/nonexistent/libdinomap_cuda.so") && strstr(msg, "--device cpu"),
           "%d %s", rc, msg);
    CHECK(dm_device_pick("auto", pick, sizeof pick, why, sizeof why, &err) == 0);
    CHECKF(!strcmp(pick, "cpu") && strstr(why, "--device auto: cpu (this dinomap has no CUDA"),
           "%s / %s", pick, why);
    /* not a shared object: dlopen's own words */
    setenv("DINOMAP_CUDA_LIB", dm_golden("vitl_sat_tiny/case.json"), 1);
    rc = try_open("cuda:0", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "cannot load the CUDA backend") &&
           strstr(msg, "case.json:"), "%d %s", rc, msg);
    /* no entry symbol */
    setenv("DINOMAP_CUDA_LIB", beside("libfake_cuda_noentry.so"), 1);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "is not a dinomap CUDA backend (no symbol "
                                                "dm_cuda_plugin_entry)"), "%d %s", rc, msg);
    /* built from other sources */
    setenv("DINOMAP_CUDA_LIB", beside("libfake_cuda.so"), 1);
    setenv("DM_FAKE_ABI", "bad", 1);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "was built from other sources"), "%d %s", rc,
           msg);
    unsetenv("DM_FAKE_ABI");
    setenv("DM_FAKE_LAYOUT", "bad", 1);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "was built from other sources"), "%d %s", rc,
           msg);
    unsetenv("DM_FAKE_LAYOUT");
    /* the driver fails */
    setenv("DM_FAKE_GPUS", "fail", 1);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "--device cuda: no CUDA driver"), "%d %s", rc,
           msg);
    CHECK(dm_device_pick("auto", pick, sizeof pick, why, sizeof why, &err) == 0);
    CHECKF(!strcmp(pick, "cpu") && strstr(why, "--device auto: cpu (no CUDA driver"), "%s / %s",
           pick, why);
    /* no GPU */
    setenv("DM_FAKE_GPUS", "0", 1);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == DM_EUNSUPPORTED && strstr(msg, "--device cuda:0: the CUDA backend sees no GPU"),
           "%d %s", rc, msg);
    CHECK(dm_device_pick("auto", pick, sizeof pick, why, sizeof why, &err) == 0);
    CHECKF(!strcmp(pick, "cpu") && strstr(why, "sees no GPU"), "%s / %s", pick, why);
    /* a GPU number out of range */
    setenv("DM_FAKE_GPUS", "2", 1);
    rc = try_open("cuda:7", msg, sizeof msg);
    CHECKF(rc == DM_EINVAL && strstr(msg, "--device cuda:7: there is no GPU 7 (this machine has "
                                          "2: cuda:0 to cuda:1)"), "%d %s", rc, msg);
    rc = try_open("cuda:0,2", msg, sizeof msg);
    CHECKF(rc == DM_EINVAL && strstr(msg, "there is no GPU 2"), "%d %s", rc, msg);
    setenv("DM_FAKE_GPUS", "1", 1);
    rc = try_open("cuda:1", msg, sizeof msg);
    CHECKF(rc == DM_EINVAL && strstr(msg, "(this machine has 1: cuda:0)"), "%d %s", rc, msg);
    /* and when all is well, auto picks the GPU and says which */
    CHECK(dm_device_pick("auto", pick, sizeof pick, why, sizeof why, &err) == 0);
    CHECKF(!strcmp(pick, "cuda:0") && strstr(why, "--device auto: cuda:0 (Fake GPU 0"),
           "%s / %s", pick, why);
    rc = try_open("cuda", msg, sizeof msg);
    CHECKF(rc == 0, "%s", msg);
    char d[600];
    dm_cuda_describe(d, sizeof d);
    CHECKF(strstr(d, "1 GPU: cuda:0 Fake GPU 0") && strstr(d, "fake, no CUDA"), "%s", d);
    env_clear();
}

/* cuda:0,1 shares a batch of 5 out (3 + 2 images) and gives what one GPU gives; a failure on
 * one GPU is the forward's failure */
TEST(cuda_plugin_workers)
{
    env_clear();
    setenv("DINOMAP_CUDA_LIB", beside("libfake_cuda.so"), 1);
    setenv("DM_FAKE_GPUS", "2", 1);
    void *dl = dlopen(beside("libfake_cuda.so"), RTLD_NOW | RTLD_LOCAL);
    CHECKF(dl != NULL, "%s", dlerror());
    int (*count)(int);
    void *sym = dlsym(dl, "fake_cuda_images");
    memcpy(&count, &sym, sizeof count);
    CHECK(sym != NULL);
    dm_err err = { 0 };
    dm_model *m = NULL;
    CHECKF(dm_model_open(dm_golden("vitl_sat_tiny/backbone.pth"), NULL, &m, &err) == 0, "%s",
           err.msg);
    int B = 5, H = 32, W = 48, N = dm_model_tokens(m, H, W), D = m->cfg.embed_dim;
    size_t px = (size_t)3 * H * W, tok = (size_t)N * D;
    float *img = malloc(B * px * sizeof(float));
    float *o1 = calloc(B * tok, sizeof(float)), *o2 = calloc(B * tok, sizeof(float));
    float *l1 = calloc(B * tok, sizeof(float)), *l2 = calloc(B * tok, sizeof(float));
    for (size_t i = 0; i < B * px; i++)
        img[i] = (float)(dm_hash32((uint32_t)i) % 1000) / 500.0f - 1.0f;
    int layers[2] = { 1, 3 };
    float *lo1[2] = { NULL, l1 }, *lo2[2] = { NULL, l2 };
    dm_vit_request r1 = { 2, layers, lo1, NULL, o1, 0 }, r2 = { 2, layers, lo2, NULL, o2, 0 };
    dm_backend *one = NULL, *two = NULL;
    int rc = dm_backend_open("cuda:1", m, NULL, &one, &err);
    int before0 = count(0), before1 = count(1);
    if (!rc)
        rc = dm_backend_forward(one, img, B, H, W, &r1, &err);
    int after1 = count(1);
    if (!rc)
        rc = dm_backend_open("cuda:0,1", m, NULL, &two, &err);
    if (!rc)
        rc = dm_backend_forward(two, img, B, H, W, &r2, &err);
    int on0 = count(0) - before0, on1 = count(1) - after1;
    int same = !rc && !memcmp(o1, o2, B * tok * sizeof(float)) &&
               !memcmp(l1, l2, B * tok * sizeof(float));
    CHECKF(rc == 0, "%s", err.msg);
    CHECKF(!strcmp(dm_backend_name(two), "cuda:0,1"), "%s", dm_backend_name(two));
    CHECKF(after1 - before1 == 5 && on0 == 3 && on1 == 2, "images per GPU: %d; then %d + %d",
           after1 - before1, on0, on1);
    CHECK(same);
    setenv("DM_FAKE_FAIL_GPU", "1", 1);
    rc = dm_backend_forward(two, img, B, H, W, &r2, &err);
    CHECKF(rc == DM_ENOMEM && strstr(err.msg, "fake GPU 1: out of memory"), "%d %s", rc, err.msg);
    rc = dm_backend_forward(two, img, 1, H, W, &r2, &err); /* one image: GPU 0 alone */
    CHECKF(rc == 0, "%s", err.msg);
    dm_backend_close(one);
    dm_backend_close(two);
    dm_model_free(m);
    dlclose(dl);
    free(img), free(o1), free(o2), free(l1), free(l2);
    env_clear();
}

/* The command line: --device cuda fails with exit 1 and a clear message here (whichever way this
 * machine lacks a GPU), auto falls back to the CPU and says so; through the stand-in, cuda:0,1
 * runs. */
TEST(cuda_cli_device)
{
    env_clear();
    const char *tmp = dm_test_tmpdir();
    char cmd[4096];
    const char *out;
    const char *w = dm_golden("vitl_sat_tiny/backbone.pth");
    char in[1024];
    snprintf(in, sizeof in, "%s", dm_golden("vitl_sat_tiny/input.npy"));
    snprintf(cmd, sizeof cmd, "%s forward -m %s -i %s -o %s/a --device cuda", dm_bin(), w, in,
             tmp);
    int st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "--device cuda") &&
           (strstr(out, "no CUDA backend") || strstr(out, "cannot load the CUDA backend") ||
            strstr(out, "no usable CUDA driver") || strstr(out, "sees no GPU")),
           "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s/a", tmp);
    CHECKF(dm_dir_empty_or_missing(cmd), "--device cuda left files behind");
    snprintf(cmd, sizeof cmd, "%s forward -m %s -i %s -o %s/b --device auto", dm_bin(), w, in,
             tmp);
    st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "--device auto: cpu (") && strstr(out, ", cpu, "),
           "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "DINOMAP_CUDA_LIB=%s DM_FAKE_GPUS=2 %s forward -m %s -i %s -o %s/c "
             "--device cuda:0,1", beside("libfake_cuda.so"), dm_bin(), w, in, tmp);
    st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "cuda:0,1"), "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "DINOMAP_CUDA_LIB=%s DM_FAKE_GPUS=2 %s forward -m %s -i %s -o %s/d "
             "--device cuda:2", beside("libfake_cuda.so"), dm_bin(), w, in, tmp);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "there is no GPU 2 (this machine has 2: cuda:0 to cuda:1)"),
           "exit %d: %s", st, out);
}

/* A run records the device's kind (cpu or cuda), "auto" settled first: a CPU run resumes with
 * --device auto on a machine without a GPU, and refuses to go on on a GPU (other numbers) */
TEST(cuda_engine_device_in_configuration)
{
    env_clear();
    const char *t = dm_test_tmpdir();
    char in[1100], od[1100], cmd[8192], wk[1000];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    CHECK(dm_make_tif(in, 96, 96, 3, gt, 32631, -1, 9) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    snprintf(wk, sizeof wk, "%s", dm_golden("vitl_sat_tiny/backbone.pth"));
    snprintf(cmd, sizeof cmd, "DINOMAP_CUDA_LIB=/nonexistent.so %s features --progress none -m %s "
             "%s -o %s --tile 64 --halo 16 --device auto", dm_bin(), wk, in, od);
    int st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "--device auto: cpu (this dinomap has no CUDA backend"),
           "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--device cpu", dm_bin(), wk, in, od);
    CHECKF((st = dm_run(cmd, &out)) == 0, "resume on cpu: exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "DINOMAP_CUDA_LIB=%s DM_FAKE_GPUS=2 %s features --progress none "
             "-m %s %s -o %s --tile 64 --halo 16 --device cuda:1", beside("libfake_cuda.so"),
             dm_bin(), wk, in, od);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "another configuration") &&
           strstr(out, "device: \"cuda\" now, \"cpu\""), "exit %d: %s", st, out);
}

/* tests/test_golden.c — every backbone case of tests/data/golden (computed with the official
 * DINOv3 code) reproduced through the library API and through `dinomap forward`, with
 * max |ours - ref| / max |ref| <= 1e-4 for every output. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../models/model.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

typedef struct gcase {
    char dir[512];
    char weights[600];
    int layers[16];
    int nl;
    int H, W;
} gcase;

static int load_case(const char *name, gcase *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "%s/golden/%s", dm_test_data(), name);
    char path[700];
    snprintf(path, sizeof path, "%s/case.json", g->dir);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    if (!j)
        return -1;
    const cJSON *ck = cJSON_GetObjectItem(j, "checkpoint");
    int hf = cJSON_IsString(ck) && strstr(ck->valuestring, "safetensors");
    snprintf(g->weights, sizeof g->weights, "%s/%s", g->dir,
             hf ? "model.safetensors" : "backbone.pth");
    const cJSON *e, *ls = cJSON_GetObjectItem(j, "intermediate_layers");
    cJSON_ArrayForEach(e, ls) if (g->nl < 16) g->layers[g->nl++] = e->valueint;
    const cJSON *hw = cJSON_GetObjectItem(j, "image_hw");
    g->H = cJSON_GetArrayItem(hw, 0)->valueint;
    g->W = cJSON_GetArrayItem(hw, 1)->valueint;
    cJSON_Delete(j);
    return 0;
}

static double cmp_tokens(const gcase *g, const char *file, const float *tok, int N, int D, int t0,
                         int nt)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s.npy", g->dir, file);
    dm_npy ref;
    if (dm_npy_read(path, &ref, NULL))
        return INFINITY;
    double r = ref.numel == (int64_t)nt * D ? dm_rel_err(tok + (size_t)t0 * D, ref.f, ref.numel)
                                             : INFINITY;
    (void)N;
    dm_npy_free(&ref);
    return r;
}

/* Library API: dm_model_open + dm_backend_forward, every output against its golden file, in
 * precision prec within tol. */
static void check_library_prec(const char *name, int prec, double tol)
{
    gcase g;
    CHECKF(load_case(name, &g) == 0, "cannot read case %s", name);
    dm_err err = { 0 };
    dm_model *m;
    CHECKF(dm_model_open(g.weights, NULL, &m, &err) == 0, "%s", err.msg);
    dm_backend *be;
    dm_backend_opts bo = { 1, 0, prec };
    CHECKF(dm_backend_open("cpu", m, &bo, &be, &err) == 0, "%s", err.msg);
    char path[700];
    snprintf(path, sizeof path, "%s/input.npy", g.dir);
    dm_npy in;
    CHECK(dm_npy_read(path, &in, &err) == 0);
    CHECK(in.ndim == 3 && in.shape[1] == g.H && in.shape[2] == g.W);
    int D = m->cfg.embed_dim, N = dm_model_tokens(m, g.H, g.W), R = m->cfg.n_storage;
    int hw = N - 1 - R;
    float *normed = malloc(sizeof(float) * N * D), *pre = malloc(sizeof(float) * N * D);
    float *raw[16];
    for (int k = 0; k < g.nl; k++)
        raw[k] = malloc(sizeof(float) * N * D);
    dm_vit_request req = { g.nl, g.layers, raw, pre, normed, 0 };
    int rc = dm_backend_forward(be, in.f, 1, g.H, g.W, &req, &err);
    double worst = 0;
    char worst_name[64] = "";
#define CMP(file, buf, t0, nt)                                                                     \
    do {                                                                                           \
        double r_ = cmp_tokens(&g, file, buf, N, D, t0, nt);                                       \
        if (!(r_ <= worst)) {                                                                      \
            worst = r_;                                                                            \
            snprintf(worst_name, sizeof worst_name, "%s", file);                                   \
        }                                                                                          \
    } while (0)
    if (rc == 0) {
        CMP("x_norm_clstoken", normed, 0, 1);
        CMP("x_storage_tokens", normed, 1, R);
        CMP("x_norm_patchtokens", normed, 1 + R, hw);
        CMP("x_prenorm", pre, 0, N);
        for (int k = 0; k < g.nl; k++) {
            char f[64];
            snprintf(f, sizeof f, "layer%d_patch_raw", g.layers[k]);
            CMP(f, raw[k], 1 + R, hw);
            dm_model_norm_tokens(m, raw[k], raw[k], N);
            snprintf(f, sizeof f, "layer%d_patch_norm", g.layers[k]);
            CMP(f, raw[k], 1 + R, hw);
            snprintf(f, sizeof f, "layer%d_cls_norm", g.layers[k]);
            CMP(f, raw[k], 0, 1);
            snprintf(f, sizeof f, "layer%d_storage_norm", g.layers[k]);
            CMP(f, raw[k], 1, R);
        }
    }
    free(normed), free(pre);
    for (int k = 0; k < g.nl; k++)
        free(raw[k]);
    dm_npy_free(&in);
    dm_backend_close(be);
    dm_model_free(m);
    CHECKF(rc == 0, "forward failed: %s", err.msg);
    printf("    %s (%s): worst relative error %.3g (%s)\n", name, dm_precision_name(prec), worst,
           worst_name);
    CHECKF(worst <= tol, "%s (%s): %s relative error %.3g > %g", name, dm_precision_name(prec),
           worst_name, worst, tol);
    /* bf16 rounding shows: a bf16 run that came out exact would not have run in bf16 */
    CHECKF(prec != DM_PREC_BF16 || worst > 1e-5, "%s (bf16): error %.3g, as small as fp32's",
           name, worst);
}

static void check_library(const char *name)
{
    check_library_prec(name, DM_PREC_FP32, DM_GOLDEN_TOL);
}

static void check_library_bf16(const char *name)
{
    if (dm_test_bf16(name))
        check_library_prec(name, DM_PREC_BF16, DM_GOLDEN_TOL_BF16);
}

TEST(golden_lib_vitl_sat_tiny) { check_library("vitl_sat_tiny"); }
TEST(golden_lib_vit7b_sat_tiny_bf16) { check_library("vit7b_sat_tiny_bf16"); }
TEST(golden_lib_vitl_sat_tiny_hf) { check_library("vitl_sat_tiny_hf"); }
TEST(golden_bf16_lib_vitl_sat_tiny) { check_library_bf16("vitl_sat_tiny"); }
TEST(golden_bf16_lib_vit7b_sat_tiny_bf16) { check_library_bf16("vit7b_sat_tiny_bf16"); }
TEST(golden_bf16_lib_vitl_sat_tiny_hf) { check_library_bf16("vitl_sat_tiny_hf"); }

/* bf16: the same bits with 1 and 2 threads for the same gemm_parts, and for a batch of two */
TEST(golden_bf16_threads_same_bits)
{
    if (!dm_test_bf16("golden_bf16_threads_same_bits"))
        return;
    gcase g;
    CHECK(load_case("vitl_sat_tiny", &g) == 0);
    dm_err err = { 0 };
    dm_model *m;
    CHECKF(dm_model_open(g.weights, NULL, &m, &err) == 0, "%s", err.msg);
    char path[700];
    snprintf(path, sizeof path, "%s/input.npy", g.dir);
    dm_npy in;
    CHECK(dm_npy_read(path, &in, NULL) == 0);
    size_t px = (size_t)in.numel, n = (size_t)dm_model_tokens(m, g.H, g.W) * m->cfg.embed_dim;
    float *two = malloc(2 * px * sizeof(float)), *out[3];
    memcpy(two, in.f, px * sizeof(float));
    memcpy(two + px, in.f, px * sizeof(float));
    int rc = 0;
    for (int t = 0; t < 3; t++) { /* 1 thread; 2 threads; 2 threads, batch of 2 */
        dm_backend_opts bo = { t ? 2 : 1, 2, DM_PREC_BF16 };
        dm_backend *be = NULL;
        out[t] = malloc(2 * n * sizeof(float));
        dm_vit_request req = { 0, NULL, NULL, NULL, out[t], 0 };
        if (!rc && !(rc = dm_backend_open("cpu", m, &bo, &be, &err)))
            rc = dm_backend_forward(be, two, t == 2 ? 2 : 1, g.H, g.W, &req, &err);
        dm_backend_close(be);
    }
    int same = !rc && !memcmp(out[0], out[1], n * sizeof(float)) &&
               !memcmp(out[0], out[2], n * sizeof(float)) &&
               !memcmp(out[0], out[2] + n, n * sizeof(float));
    double d = rc ? INFINITY : dm_rel_err(out[1], out[0], (int64_t)n);
    for (int t = 0; t < 3; t++)
        free(out[t]);
    free(two);
    dm_npy_free(&in);
    dm_model_free(m);
    CHECKF(rc == 0, "%s", err.msg);
    CHECKF(same, "bf16 results differ with the thread count or the batch (rel. %.3g)", d);
}

/* bf16 on a CPU without bf16 instructions is refused with a message saying why; auto runs fp32
 * there and says so (DINOMAP_CPU_BF16=0 plays such a CPU) */
TEST(golden_bf16_refused_without_instructions)
{
    gcase g;
    CHECK(load_case("vitl_sat_tiny", &g) == 0);
    const char *tmp = dm_test_tmpdir();
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "DINOMAP_CPU_BF16=0 %s forward -m %s -i %s/input.npy -o %s/out "
             "--precision bf16", dm_bin(), g.weights, g.dir, tmp);
    const char *out;
    int st = dm_run(cmd, &out);
    CHECKF(st != 0 && strstr(out, "--precision bf16: this CPU has no bf16 dot-product "
                             "instructions") && strstr(out, "use --precision fp32"),
           "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "DINOMAP_CPU_BF16=0 %s forward -m %s -i %s/input.npy -o %s/out "
             "--precision auto", dm_bin(), g.weights, g.dir, tmp);
    st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "--precision auto: fp32"), "exit %d: %s", st, out);
    char ours[900], ref[900], why[600];
    snprintf(ours, sizeof ours, "%s/out/x_norm_patchtokens.npy", tmp);
    snprintf(ref, sizeof ref, "%s/x_norm_patchtokens.npy", g.dir);
    double r = dm_cmp_npy(ours, ref, why, sizeof why);
    CHECKF(r >= 0 && r <= DM_GOLDEN_TOL, "auto without bf16 must be fp32: %.3g %s", r, why);
    snprintf(cmd, sizeof cmd, "%s forward -m %s -i %s/input.npy -o %s/out --precision bf17",
             dm_bin(), g.weights, g.dir, tmp);
    st = dm_run(cmd, &out);
    CHECKF(st == 2 && strstr(out, "--precision bf17: unknown (fp32, bf16, auto)"), "exit %d: %s",
           st, out);
}

/* The CLI on input.npy (normalized), on input_u8.npy (--norm sat) and on a GeoTIFF of the same
 * pixels: every golden output file present and within tolerance. */
static void check_cli_prec(const char *name, const char *input_kind, const char *prec,
                           double tol)
{
    gcase g;
    CHECKF(load_case(name, &g) == 0, "cannot read case %s", name);
    const char *tmp = dm_test_tmpdir();
    char input[800], cmd[4096], layers[128] = "";
    if (!strcmp(input_kind, "tif")) {
        /* a GeoTIFF with the same RGB pixels, written through GDAL's own tool */
        char u8[700];
        snprintf(u8, sizeof u8, "%s/input_u8.npy", g.dir);
        dm_npy a;
        CHECK(dm_npy_read(u8, &a, NULL) == 0);
        char raw[800];
        snprintf(raw, sizeof raw, "%s/in.rgb", tmp);
        FILE *f = fopen(raw, "wb");
        CHECK(f && fwrite(a.u8, 1, a.numel, f) == (size_t)a.numel);
        fclose(f);
        dm_npy_free(&a);
        char vrt[800];
        snprintf(vrt, sizeof vrt, "%s/in.vrt", tmp);
        f = fopen(vrt, "w");
        CHECK(f != NULL);
        fprintf(f, "<VRTDataset rasterXSize=\"%d\" rasterYSize=\"%d\">\n", g.W, g.H);
        for (int b = 0; b < 3; b++)
            fprintf(f,
                    " <VRTRasterBand dataType=\"Byte\" band=\"%d\" subClass=\"VRTRawRasterBand\">"
                    "<SourceFilename relativetoVRT=\"1\">in.rgb</SourceFilename>"
                    "<ImageOffset>%d</ImageOffset><PixelOffset>3</PixelOffset>"
                    "<LineOffset>%d</LineOffset></VRTRasterBand>\n",
                    b + 1, b, 3 * g.W);
        fprintf(f, "</VRTDataset>\n");
        fclose(f);
        snprintf(input, sizeof input, "%s/in.tif", tmp);
        snprintf(cmd, sizeof cmd, "gdal_translate -q %s %s", vrt, input);
        CHECKF(dm_run(cmd, NULL) == 0, "gdal_translate failed");
    } else {
        snprintf(input, sizeof input, "%s/%s.npy", g.dir, input_kind);
    }
    for (int k = 0; k < g.nl; k++)
        snprintf(layers + strlen(layers), sizeof layers - strlen(layers), "%s%d", k ? "," : "",
                 g.layers[k]);
    snprintf(cmd, sizeof cmd, "%s forward -q -m %s -i %s -o %s/out --layers %s --threads 2 "
             "--precision %s", dm_bin(), g.weights, input, tmp, layers, prec);
    const char *out;
    int st = dm_run(cmd, &out);
    CHECKF(st == 0, "exit %d: %s", st, out);
    static const char *base[] = { "x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens",
                                  "x_prenorm" };
    char names[80][64];
    int nn = 0;
    for (int i = 0; i < 4; i++)
        snprintf(names[nn++], 64, "%s", base[i]);
    for (int k = 0; k < g.nl; k++) {
        static const char *suf[] = { "patch_norm", "cls_norm", "storage_norm", "patch_raw" };
        for (int s = 0; s < 4; s++)
            snprintf(names[nn++], 64, "layer%d_%s", g.layers[k], suf[s]);
    }
    /* from u8 pixels the normalization is ours, so the golden input.npy itself is the bound of
     * what can differ; it is float-exact in practice */
    for (int i = 0; i < nn; i++) {
        char ours[900], ref[900], why[600];
        snprintf(ours, sizeof ours, "%s/out/%s.npy", tmp, names[i]);
        snprintf(ref, sizeof ref, "%s/%s.npy", g.dir, names[i]);
        double r = dm_cmp_npy(ours, ref, why, sizeof why);
        CHECKF(r >= 0, "%s", why);
        CHECKF(r <= tol, "%s %s (%s): relative error %.3g > %g", name, names[i], prec, r, tol);
    }
}

static void check_cli(const char *name, const char *input_kind)
{
    check_cli_prec(name, input_kind, "fp32", DM_GOLDEN_TOL);
}

TEST(golden_cli_vitl_sat_tiny) { check_cli("vitl_sat_tiny", "input"); }
TEST(golden_cli_vit7b_sat_tiny_bf16) { check_cli("vit7b_sat_tiny_bf16", "input"); }
TEST(golden_cli_vitl_sat_tiny_hf) { check_cli("vitl_sat_tiny_hf", "input"); }
TEST(golden_cli_u8_vitl_sat_tiny) { check_cli("vitl_sat_tiny", "input_u8"); }
TEST(golden_cli_u8_vit7b_sat_tiny_bf16) { check_cli("vit7b_sat_tiny_bf16", "input_u8"); }
TEST(golden_cli_geotiff_vitl_sat_tiny_hf) { check_cli("vitl_sat_tiny_hf", "tif"); }
TEST(golden_bf16_cli_vit7b_sat_tiny_bf16)
{
    if (dm_test_bf16("golden_bf16_cli_vit7b_sat_tiny_bf16"))
        check_cli_prec("vit7b_sat_tiny_bf16", "input", "bf16", DM_GOLDEN_TOL_BF16);
}
TEST(golden_bf16_cli_vitl_sat_tiny_hf)
{
    if (dm_test_bf16("golden_bf16_cli_vitl_sat_tiny_hf"))
        check_cli_prec("vitl_sat_tiny_hf", "input", "bf16", DM_GOLDEN_TOL_BF16);
}

/* The normalization of uint8 pixels reproduces the golden input.npy. */
TEST(golden_normalize_u8)
{
    static const char *cases[] = { "vitl_sat_tiny", "vit7b_sat_tiny_bf16", "vitl_sat_tiny_hf" };
    for (int c = 0; c < 3; c++) {
        char p1[700], p2[700];
        snprintf(p1, sizeof p1, "%s/golden/%s/input_u8.npy", dm_test_data(), cases[c]);
        snprintf(p2, sizeof p2, "%s/golden/%s/input.npy", dm_test_data(), cases[c]);
        dm_npy a, b;
        CHECK(dm_npy_read(p1, &a, NULL) == 0);
        CHECK(dm_npy_read(p2, &b, NULL) == 0);
        int H = (int)a.shape[0], W = (int)a.shape[1];
        float *x = malloc(sizeof(float) * 3 * H * W);
        dm_normalize_rgb8(a.u8, H, W, dm_norm_get("sat"), x);
        double r = dm_rel_err(x, b.f, b.numel);
        free(x);
        dm_npy_free(&a);
        dm_npy_free(&b);
        CHECKF(r <= 1e-6, "%s: normalized input differs by %.3g", cases[c], r);
    }
}

/* A batch of two images gives each image's single-image result. */
TEST(golden_batch_matches_single)
{
    gcase g;
    CHECK(load_case("vitl_sat_tiny", &g) == 0);
    dm_err err = { 0 };
    dm_model *m;
    CHECKF(dm_model_open(g.weights, NULL, &m, &err) == 0, "%s", err.msg);
    dm_backend *be;
    CHECK(dm_backend_open("cpu", m, NULL, &be, &err) == 0);
    char path[700];
    snprintf(path, sizeof path, "%s/input.npy", g.dir);
    dm_npy in;
    CHECK(dm_npy_read(path, &in, NULL) == 0);
    size_t px = (size_t)in.numel;
    float *two = malloc(2 * px * sizeof(float));
    memcpy(two, in.f, px * sizeof(float));
    for (size_t i = 0; i < px; i++) /* second image: the first mirrored in value */
        two[px + i] = -in.f[i];
    int N = dm_model_tokens(m, g.H, g.W), D = m->cfg.embed_dim;
    float *ob = malloc(2 * (size_t)N * D * sizeof(float)), *o1 = malloc((size_t)N * D * 4);
    dm_vit_request rb = { 0, NULL, NULL, NULL, ob, 0 }, r1 = { 0, NULL, NULL, NULL, o1, 0 };
    int rc = dm_backend_forward(be, two, 2, g.H, g.W, &rb, &err);
    int rc1 = dm_backend_forward(be, two + px, 1, g.H, g.W, &r1, &err);
    double d = rc || rc1 ? INFINITY : dm_rel_err(ob + (size_t)N * D, o1, (size_t)N * D);
    double d0 = INFINITY;
    if (!rc && !dm_backend_forward(be, two, 1, g.H, g.W, &r1, &err))
        d0 = dm_rel_err(ob, o1, (size_t)N * D);
    free(two), free(ob), free(o1);
    dm_npy_free(&in);
    dm_backend_close(be);
    dm_model_free(m);
    CHECKF(d <= 1e-5 && d0 <= 1e-5, "batch vs single: %.3g / %.3g", d0, d);
}

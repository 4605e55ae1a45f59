/* tests/test_conventions.c — GDAL's conventions on dinomap's command line: -co creation options,
 * --config, -of Zarr, GDAL's messages routed through dinomap's, --crs checked up front, one-line
 * usage errors with a "did you mean" hint and the "dinomap: " prefix on every line, -q, inputs
 * through /vsicurl/ (a local HTTP server), and the software/date tags of every raster. */
#include <arpa/inet.h>
#include <cpl_string.h>
#include <gdal.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <ogr_srs_api.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "golden.h"
#include "test.h"

static const char *tiny(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }

/* `dinomap features` with the tiny checkpoint on 64-px tiles with a 16-px halo. */
static int feat(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s --tile 64 --halo 16 %s",
             dm_bin(), tiny(), args);
    return dm_run(cmd, out);
}

/* A 128×128 px 3-band GeoTIFF in UTM 31N, 0.5 m pixels. */
static int make_in(const char *path, uint32_t seed)
{
    double gt[6] = { 431000, 0.5, 0, 5412000, 0, -0.5 };
    return dm_make_tif(path, 128, 128, 3, gt, 32631, -1, seed);
}

static int nlines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* 1 when every line of s begins with "dinomap: " (and s ends with a newline). */
static int all_prefixed(const char *s)
{
    for (const char *l = s; *l; l = strchr(l, '\n') + 1) {
        if (strncmp(l, "dinomap: ", 9) || !strchr(l, '\n'))
            return 0;
    }
    return 1;
}

/* A usage error: exit 2, exactly one line, "dinomap: " first, `want` in it, no output folder.
 * 0 when so, else -1 with why. */
static int usage_error(const char *cmd, const char *want, const char *outdir, char *why,
                       size_t n)
{
    const char *out;
    int st = dm_run(cmd, &out);
    if (st != 2 || nlines(out) != 1 || !all_prefixed(out) || !strstr(out, want) ||
        strstr(out, "ERROR") || (outdir && !dm_dir_empty_or_missing(outdir))) {
        snprintf(why, n, "`%s`: exit %d, want 2, one line \"dinomap: ...%s...\" and no %s: %s",
                 cmd, st, want, outdir ? outdir : "-", out);
        return -1;
    }
    return 0;
}

static GDALDatasetH open_ro(const char *p)
{
    GDALAllRegister();
    return GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
}

/* Every band of a raster as float32 [bands, h, w] (malloc'd), or NULL. */
static float *read_all(const char *path, int *bands, int *w, int *h)
{
    GDALDatasetH d = open_ro(path);
    if (!d)
        return NULL;
    *bands = GDALGetRasterCount(d), *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d);
    size_t n = (size_t)*bands * *w * *h;
    float *v = malloc(sizeof *v * n);
    if (v && GDALDatasetRasterIO(d, GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32, *bands, NULL,
                                 4, (GSpacing)4 * *w, (GSpacing)4 * *w * *h) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

/* 0 when two rasters hold the same samples, bit for bit. */
static int same_pixels(const char *a, const char *b)
{
    int ba, wa, ha, bb, wb, hb;
    float *x = read_all(a, &ba, &wa, &ha), *y = read_all(b, &bb, &wb, &hb);
    int r = !x || !y || ba != bb || wa != wb || ha != hb ||
            memcmp(x, y, sizeof *x * (size_t)ba * wa * ha);
    free(x), free(y);
    return r;
}

/* An IMAGE_STRUCTURE item of a raster ("" when absent) and its tile size. */
static void structure(const char *path, const char *key, char *val, size_t n, int *bx, int *by)
{
    val[0] = '\0';
    *bx = *by = 0;
    GDALDatasetH d = open_ro(path);
    if (!d)
        return;
    const char *v = GDALGetMetadataItem(d, key, "IMAGE_STRUCTURE");
    snprintf(val, n, "%s", v ? v : "");
    GDALGetBlockSize(GDALGetRasterBand(d, 1), bx, by);
    GDALClose(d);
}

static int write_text(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(s, f);
    return fclose(f);
}

/* --- -co ------------------------------------------------------------------------------------- */

TEST(conv_co_reaches_the_cogs)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100], v[64];
    const char *out;
    int bx, by;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 1) == 0);
    /* dinomap's defaults: DEFLATE, floating-point predictor (horizontal for bytes), 256 px */
    snprintf(args, sizeof args, "%s -o %s/d", in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/d/features.tif", t);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "DEFLATE") && bx == 256 && by == 256, "%s %d×%d", v, bx, by);
    structure(p, "PREDICTOR", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "3"), "predictor %s", v);
    /* the user's, in GDAL's COG names, over them; PREDICTOR=YES picks per sample type */
    snprintf(args, sizeof args, "%s -o %s/u -co COMPRESS=ZSTD -co LEVEL=5 -co BLOCKSIZE=128 "
             "-co PREDICTOR=YES -co BIGTIFF=YES", in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/u/features.tif", t);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "ZSTD") && bx == 128 && by == 128, "%s %d×%d", v, bx, by);
    structure(p, "PREDICTOR", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "3"), "features predictor %s", v);
    snprintf(p, sizeof p, "%s/u/features_pca.tif", t);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "ZSTD") && bx == 128, "pca: %s %d", v, bx);
    structure(p, "PREDICTOR", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "2"), "pca predictor %s", v);
    /* the layout is still band-interleaved, and the samples are the same */
    snprintf(p, sizeof p, "%s/u/features.tif", t);
    structure(p, "INTERLEAVE", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "BAND"), "interleave %s", v);
    char q[1100];
    snprintf(q, sizeof q, "%s/d/features.tif", t);
    CHECK(same_pixels(p, q) == 0);
    /* GTiff's own names too */
    snprintf(args, sizeof args, "%s -o %s/g -co COMPRESS=LZW -co BLOCKXSIZE=64 -co BLOCKYSIZE=64",
             in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/g/features.tif", t);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "LZW") && bx == 64 && by == 64, "%s %d×%d", v, bx, by);
}

TEST(conv_co_bad_refused_before_any_work)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], od[1100], why[9000];
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 2) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    static const struct {
        const char *args, *says;
    } bad[] = {
        { "-co TILED=NO", "-co TILED=NO: not allowed: dinomap's outputs are tiled" },
        { "-co INTERLEAVE=PIXEL", "-co INTERLEAVE=PIXEL: not allowed: dinomap's outputs are "
                                  "band-interleaved" },
        { "-co NBITS=4", "-co NBITS=4: not allowed" },
        { "-co FOO=1", "-co FOO=1: GDAL's GeoTIFF writer does not take it (driver GTiff does not "
                       "support creation option FOO)" },
        { "-co BIGTIFF=MAYBE", "-co BIGTIFF=MAYBE: GDAL's GeoTIFF writer does not take it" },
        { "-co COMPRESS=JPEG", "-co COMPRESS=JPEG: expected NONE, DEFLATE" },
        { "-co COMPRESS=ZSTD -co LEVEL=99", "-co LEVEL=99: expected 1 to 22" },
        { "-co COMPRESS=LZW -co LEVEL=3", "-co LEVEL=3: COMPRESS=LZW has no level" },
        { "-co BLOCKSIZE=100", "-co BLOCKSIZE=100: expected a multiple of 16" },
        { "-co PREDICTOR=7", "-co PREDICTOR=7: expected YES, NO" },
        { "-co COMPRESS", "-co COMPRESS: expected NAME=VALUE" },
        { "-co", "-co: needs a value" },
        { "-of Zarr -co COMPRESS=DEFLATE", "-co COMPRESS=DEFLATE: GDAL's Zarr writer does not "
                                           "take it" },
        { "-of Zarr -co BLOCKSIZE=4,4", "-co BLOCKSIZE=4,4: expected the chunk sizes along band" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s %s", dm_bin(), tiny(), in, od,
                 bad[i].args);
        CHECKF(usage_error(cmd, bad[i].says, od, why, sizeof why) == 0, "%s", why);
    }
}

/* Creation options change the outputs, not the chunks: another -co rebuilds only the rasters,
 * and `dinomap finalize` keeps the folder's unless given others. */
TEST(conv_co_change_rebuilds_outputs_only)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100], keep[1100], cmd[8192], v[64];
    const char *out;
    int bx, by;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 3) == 0);
    snprintf(args, sizeof args, "%s -o %s/o", in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    snprintf(keep, sizeof keep, "%s/first.tif", t);
    snprintf(cmd, sizeof cmd, "cp %s %s", p, keep);
    CHECK(dm_run(cmd, NULL) == 0);
    /* the same command again: nothing to do (and nothing said off a terminal) */
    CHECKF(feat(args, &out) == 0 && !out[0], "%s", out);
    snprintf(args, sizeof args, "%s -o %s/o -co COMPRESS=LZW --log %s/log.jsonl", in, t, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "0 tiles mapped") && !strstr(out, "to run"), "recomputed: %s", out);
    snprintf(cmd, sizeof cmd, "grep -c '\"tiles_run\":0' %s/log.jsonl && ! grep "
             "'\"tiles_run\":[1-9]' %s/log.jsonl", t, t);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) >= 1, "%s", out);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "LZW"), "%s", v);
    CHECK(same_pixels(p, keep) == 0);
    /* finalize without -co: the folder's last options */
    snprintf(cmd, sizeof cmd, "%s finalize -q %s/o", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "LZW"), "finalize forgot the run's -co: %s", v);
    snprintf(cmd, sizeof cmd, "%s finalize -q -co COMPRESS=ZSTD %s/o", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "ZSTD"), "%s", v);
    snprintf(cmd, sizeof cmd, "%s finalize -co TILED=NO %s/o", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 2 && nlines(out) == 1 && strstr(out, "dinomap: -co TILED=NO"),
           "%s", out);
    /* the first command again: the defaults back, still nothing recomputed */
    snprintf(args, sizeof args, "%s -o %s/o", in, t);
    CHECKF(feat(args, &out) == 0 && strstr(out, "0 tiles mapped"), "%s", out);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "DEFLATE"), "%s", v);
    CHECK(same_pixels(p, keep) == 0);
}

/* --- -of ------------------------------------------------------------------------------------- */

/* The Zarr store's array `name` [band, y, x] as float32 (malloc'd), its x coordinates' first
 * value, its CRS's EPSG code and its "software" attribute. */
static float *read_zarr(const char *path, int dims[3], double *x0, int *epsg, char *sw, size_t n)
{
    GDALAllRegister();
    GDALDatasetH z = GDALOpenEx(path, GDAL_OF_MULTIDIM_RASTER | GDAL_OF_READONLY, NULL, NULL,
                                NULL);
    if (!z)
        return NULL;
    GDALGroupH g = GDALDatasetGetRootGroup(z);
    GDALMDArrayH a = g ? GDALGroupOpenMDArray(g, "features", NULL) : NULL;
    GDALMDArrayH xa = g ? GDALGroupOpenMDArray(g, "x", NULL) : NULL;
    float *v = NULL;
    size_t nd = 0;
    GDALDimensionH *dh = a ? GDALMDArrayGetDimensions(a, &nd) : NULL;
    if (a && xa && nd == 3) {
        for (int i = 0; i < 3; i++)
            dims[i] = (int)GDALDimensionGetSize(dh[i]);
        GDALExtendedDataTypeH f32 = GDALExtendedDataTypeCreate(GDT_Float32);
        GDALExtendedDataTypeH f64 = GDALExtendedDataTypeCreate(GDT_Float64);
        size_t total = (size_t)dims[0] * dims[1] * dims[2];
        GUInt64 st[3] = { 0, 0, 0 };
        size_t cnt[3] = { (size_t)dims[0], (size_t)dims[1], (size_t)dims[2] }, one = 1;
        v = malloc(sizeof *v * total);
        if (v && !GDALMDArrayRead(a, st, cnt, NULL, NULL, f32, v, v, sizeof *v * total)) {
            free(v);
            v = NULL;
        }
        GDALMDArrayRead(xa, st, &one, NULL, NULL, f64, x0, x0, sizeof *x0);
        OGRSpatialReferenceH s = GDALMDArrayGetSpatialRef(a);
        const char *code = s ? OSRGetAuthorityCode(s, NULL) : NULL;
        *epsg = code ? atoi(code) : 0;
        if (s)
            OSRDestroySpatialReference(s);
        GDALAttributeH at = GDALMDArrayGetAttribute(a, "software");
        const char *str = at ? GDALAttributeReadAsString(at) : NULL;
        snprintf(sw, n, "%s", str ? str : "");
        if (at)
            GDALAttributeRelease(at);
        GDALExtendedDataTypeRelease(f32);
        GDALExtendedDataTypeRelease(f64);
    }
    if (dh)
        GDALReleaseDimensions(dh, nd);
    if (a)
        GDALMDArrayRelease(a);
    if (xa)
        GDALMDArrayRelease(xa);
    if (g)
        GDALGroupRelease(g);
    GDALClose(z);
    return v;
}

TEST(conv_of_zarr_holds_the_features)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], tif[1100], zarr[1100], cmd[8192], sw[64];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 4) == 0);
    for (int quant = 0; quant < 2; quant++) {
        snprintf(args, sizeof args, "%s -o %s/z%d -of Zarr -co BLOCKSIZE=16,4,4%s", in, t, quant,
                 quant ? " --quantize int8" : "");
        CHECKF(feat(args, &out) == 0, "%s", out);
        snprintf(tif, sizeof tif, "%s/z%d/features.tif", t, quant);
        snprintf(zarr, sizeof zarr, "%s/z%d/features.zarr", t, quant);
        int B, W, H, dims[3] = { 0 }, epsg = 0;
        double x0 = 0;
        float *a = read_all(tif, &B, &W, &H);
        float *z = read_zarr(zarr, dims, &x0, &epsg, sw, sizeof sw);
        CHECK(a && z);
        int ok = dims[0] == B && dims[1] == H && dims[2] == W && B == 128 && W == 8 && H == 8;
        /* float32: the COG's samples; int8: decoded as value = q·scale + offset, nodata NaN */
        GDALDatasetH d = open_ro(tif);
        for (int b = 0; ok && b < B; b++) {
            double sc = 1, of = 0;
            if (quant) {
                sc = GDALGetRasterScale(GDALGetRasterBand(d, b + 1), NULL);
                of = GDALGetRasterOffset(GDALGetRasterBand(d, b + 1), NULL);
            }
            for (int i = 0; ok && i < W * H; i++) {
                float q = a[(size_t)b * W * H + i], want = quant ? (float)(q * sc + of) : q;
                ok = quant && q == 0 ? isnan(z[(size_t)b * W * H + i])
                                     : !memcmp(&want, &z[(size_t)b * W * H + i], 4);
            }
        }
        GDALClose(d);
        free(a), free(z);
        CHECKF(ok, "zarr %d×%d×%d differs from the COG (%d×%d×%d)", dims[0], dims[1], dims[2], B,
               H, W);
        CHECKF(x0 == 431000 + 8 * 0.5 && epsg == 32631, "x0 %.17g EPSG %d", x0, epsg);
        CHECKF(!strcmp(sw, "dinomap " DINOMAP_VERSION), "software '%s'", sw);
    }
    /* finalize keeps the folder's format; -of COG takes the store away */
    snprintf(cmd, sizeof cmd, "%s finalize -q %s/z0 && test -d %s/z0/features.zarr && %s finalize "
             "-q -of COG %s/z0 && test ! -e %s/z0/features.zarr && test -e %s/z0/features.tif",
             dm_bin(), t, t, dm_bin(), t, t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
}

TEST(conv_of_bad_refused)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], od[1100], why[9000];
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 5) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s -of NetCDF", dm_bin(), tiny(), in, od);
    CHECKF(usage_error(cmd, "-of NetCDF: expected COG or Zarr", od, why, sizeof why) == 0, "%s",
           why);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s -of", dm_bin(), tiny(), in, od);
    CHECKF(usage_error(cmd, "-of: needs a value", od, why, sizeof why) == 0, "%s", why);
    snprintf(cmd, sizeof cmd, "%s chm -m %s %s -o %s -of Zarr", dm_bin(),
             dm_golden("chmv2_tiny_hf/model.safetensors"), in, od);
    CHECKF(usage_error(cmd, "-of Zarr: only the features have a Zarr output", od, why,
                       sizeof why) == 0, "%s", why);
}

/* --- --config -------------------------------------------------------------------------------- */

TEST(conv_config_two_arguments_and_ini)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], od[1100], why[9000], p[1100], v[64];
    const char *out;
    int bx, by;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 6) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    static const struct {
        const char *args, *says;
    } bad[] = {
        { "--config GDAL_CACHEMAX", "--config GDAL_CACHEMAX: needs a value (--config KEY "
                                    "VALUE)" },
        { "--config", "--config: needs KEY VALUE" },
        { "--config GDAL_CACHEMAX lots", "--config GDAL_CACHEMAX lots: expected megabytes" },
        { "--config=GDAL_CACHEMAX", "--config GDAL_CACHEMAX: needs a value" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s %s", dm_bin(), tiny(), in, od,
                 bad[i].args);
        CHECKF(usage_error(cmd, bad[i].says, od, why, sizeof why) == 0, "%s", why);
    }
    /* KEY VALUE and KEY=VALUE both reach GDAL (CPL_DEBUG makes GDAL talk) */
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s --tile 64 --halo 16 %s -o %s "
             "--config GDAL_CACHEMAX 64 --config CPL_DEBUG=GTiff", dm_bin(), tiny(), in, od);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "GTiff: "), "%s", out);
    /* in an INI file: config = KEY=VALUE; co repeats, or lists options separated by spaces */
    snprintf(p, sizeof p, "%s/r.ini", t);
    char ini[4096];
    snprintf(ini, sizeof ini, "products = features\nmodel = %s\ninput = in.tif\noutput = r\n"
             "tile = 64\nhalo = 16\nprogress = none\nconfig = GDAL_CACHEMAX=64\n"
             "co = COMPRESS=ZSTD LEVEL=3\nco = BLOCKSIZE=64\n", tiny());
    CHECK(write_text(p, ini) == 0);
    snprintf(cmd, sizeof cmd, "%s run %s", dm_bin(), p);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/r/features.tif", t);
    structure(p, "COMPRESSION", v, sizeof v, &bx, &by);
    CHECKF(!strcmp(v, "ZSTD") && bx == 64, "%s %d", v, bx);
    snprintf(p, sizeof p, "%s/b.ini", t);
    snprintf(ini, sizeof ini, "products = features\nmodel = %s\ninput = in.tif\noutput = b\n"
             "config = GDAL_CACHEMAX\n", tiny());
    CHECK(write_text(p, ini) == 0);
    snprintf(cmd, sizeof cmd, "%s run %s", dm_bin(), p);
    snprintf(od, sizeof od, "%s/b", t);
    CHECKF(usage_error(cmd, "b.ini:5: config = GDAL_CACHEMAX: needs a value", od, why,
                       sizeof why) == 0, "%s", why);
}

/* --- GDAL's messages and --crs --------------------------------------------------------------- */

static char got[8][600];
static int got_level[8], ngot;

static void keep_line(void *ctx, int level, const char *msg)
{
    (void)ctx;
    if (ngot < 8) {
        got_level[ngot] = level;
        snprintf(got[ngot++], sizeof got[0], "%s", msg);
    }
}

TEST(conv_gdal_messages_go_to_the_log)
{
    ngot = 0;
    dm_log_set_sink(keep_line, NULL);
    dm_gis_log_messages();
    CPLError(CE_Warning, CPLE_AppDefined, "first line\nsecond line");
    CPLError(CE_Failure, CPLE_OpenFailed, "cannot open x.tif");
    CPLPushErrorHandler(CPLQuietErrorHandler); /* where dinomap handles them: not logged */
    CPLError(CE_Failure, CPLE_AppDefined, "handled");
    CPLPopErrorHandler();
    CPLSetErrorHandler(NULL);
    dm_log_set_sink(NULL, NULL);
    CHECKF(ngot == 2, "%d messages", ngot);
    CHECKF(!strcmp(got[0], "GDAL: first line second line") && got_level[0] == DM_LOG_WARN, "%s",
           got[0]);
    CHECKF(!strcmp(got[1], "GDAL: cannot open x.tif") && got_level[1] == DM_LOG_WARN, "%s",
           got[1]);
}

TEST(conv_crs_checked_up_front)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], od[1100], why[9000];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 7) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    static const char *bad[] = { "FOO", "EPSG:999999", "+proj=nothing" };
    for (int i = 0; i < 3; i++) {
        char want[200];
        snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s --crs %s", dm_bin(), tiny(), in,
                 od, bad[i]);
        snprintf(want, sizeof want, "dinomap: --crs %s: not a CRS GDAL/PROJ knows (", bad[i]);
        CHECKF(usage_error(cmd, want, od, why, sizeof why) == 0, "%s", why);
    }
    snprintf(cmd, sizeof cmd, "%s chm -m %s %s -o %s --crs FOO", dm_bin(),
             dm_golden("chmv2_tiny_hf/model.safetensors"), in, od);
    CHECKF(usage_error(cmd, "--crs FOO: not a CRS", od, why, sizeof why) == 0, "%s", why);
    /* a good one still works */
    char args[2048];
    snprintf(args, sizeof args, "%s -o %s --crs EPSG:32632 -q", in, od);
    CHECKF(feat(args, &out) == 0 && !out[0], "%s", out);
}

/* --- the command line ------------------------------------------------------------------------ */

TEST(conv_unknown_options_one_line_with_hint)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], od[1100], why[9000], p[1100];
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 8) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    snprintf(p, sizeof p, "%s/r.ini", t);
    char ini[2048];
    snprintf(ini, sizeof ini, "products = features\nmodel = %s\ninput = in.tif\noutput = o\n",
             tiny());
    CHECK(write_text(p, ini) == 0);
    const char *M = tiny();
    static const struct {
        const char *cmd, *says;
    } bad[] = {
        { "features -m %s IN -o OUT --tiel 64", "--tiel: unknown option (did you mean --tile?" },
        { "features -m %s IN -o OUT --hallo 16", "did you mean --halo?" },
        { "features -m %s IN -o OUT --thraeds 2", "did you mean --threads?" },
        { "features -m %s IN -o OUT --frobnicate", "--frobnicate: unknown option (dinomap "
                                                   "features --help" },
        { "features -m %s IN -o OUT --tile", "--tile: needs a value" },
        { "features -m %s IN -o OUT --t 5", "--t: ambiguous (--tile, --threads)" },
        { "features -m %s IN -o OUT -x", "-x: unknown option" },
        { "chm -m %s IN -o OUT --overlpa 32", "did you mean --overlap?" },
        { "chm -m %s IN -o OUT --quantize int8", "--quantize: unknown option" },
        { "run INI --tiel 5 #%s", "did you mean --tile?" },
        { "finalize --drop-chunsk OUT #%s", "did you mean --drop-chunks?" },
        { "status --jsno OUT #%s", "did you mean --json?" },
        { "info --tensros %s", "did you mean --tensors?" },
        { "forward -m %s -i IN -o OUT --layres 1", "did you mean --layers?" },
        { "featurs #%s", "unknown command 'featurs' (did you mean features?" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char a[2048], b[4096];
        snprintf(a, sizeof a, bad[i].cmd, M);
        /* IN, OUT and INI by their paths */
        size_t o = 0;
        for (const char *s = a; *s && o < sizeof b - 1200;) {
            if (!strncmp(s, "IN ", 3))
                o += (size_t)snprintf(b + o, sizeof b - o, "%s ", in), s += 3;
            else if (!strncmp(s, "OUT", 3))
                o += (size_t)snprintf(b + o, sizeof b - o, "%s", od), s += 3;
            else if (!strncmp(s, "INI", 3))
                o += (size_t)snprintf(b + o, sizeof b - o, "%s", p), s += 3;
            else
                b[o++] = *s++;
        }
        b[o] = '\0';
        snprintf(cmd, sizeof cmd, "%s %s", dm_bin(), b);
        CHECKF(usage_error(cmd, bad[i].says, od, why, sizeof why) == 0, "%s", why);
    }
    /* an INI key: the same hint, with the file and line */
    snprintf(ini, sizeof ini, "products = features\nmodel = %s\ninput = in.tif\ntiel = 64\n", M);
    CHECK(write_text(p, ini) == 0);
    snprintf(cmd, sizeof cmd, "%s run %s -o %s", dm_bin(), p, od);
    CHECKF(usage_error(cmd, "r.ini:4: unknown key 'tiel' (did you mean tile?)", od, why,
                       sizeof why) == 0, "%s", why);
}

TEST(conv_every_line_prefixed)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096];
    const char *out;
    /* a geographic input (warped to UTM, notices), progress lines, the summary */
    snprintf(in, sizeof in, "%s/geo.tif", t);
    double gt[6] = { 2.30, 0.00001, 0, 48.86, 0, -0.00001 };
    CHECK(dm_make_tif(in, 96, 96, 3, gt, 4326, -1, 9) == 0);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s features --progress auto -m %s --tile 64 --halo 16 %s -o %s/o "
             "--gsd 1", dm_bin(), tiny(), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(nlines(out) >= 5 && all_prefixed(out) && strstr(out, "EPSG:32631") &&
           strstr(out, "tiles mapped"), "%s", out);
    /* an error message from below (GDAL's open error, multi-part) */
    snprintf(args, sizeof args, "%s/missing.tif -o %s/m", t, t);
    CHECKF(feat(args, &out) == 1 && all_prefixed(out) && !strstr(out, "ERROR"), "%s", out);
    /* the usage line of a bare `dinomap` */
    snprintf(cmd, sizeof cmd, "%s", dm_bin());
    CHECKF(dm_run(cmd, &out) == 2 && nlines(out) == 1 && all_prefixed(out), "%s", out);
}

TEST(conv_quiet_leaves_warnings_and_errors)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], cmd[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 10) == 0);
    /* without -q: notices, progress, the summary */
    snprintf(cmd, sizeof cmd, "%s features --progress auto -m %s --tile 64 --halo 16 %s -o %s/a",
             dm_bin(), tiny(), in, t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "tiles to run") && strstr(out, "100%") &&
           strstr(out, "tiles mapped"), "%s", out);
    /* with -q (and no --progress): nothing at all */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s --tile 64 --halo 16 %s -o %s/b", dm_bin(),
             tiny(), in, t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "-q said: %s", out);
    /* a rebuild with other -co, and finalize: silent too */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s --tile 64 --halo 16 %s -o %s/b -co "
             "COMPRESS=LZW && %s finalize -q %s/b", dm_bin(), tiny(), in, t, dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "-q said: %s", out);
    /* a warning stays: an input without georeferencing */
    char ng[1100];
    snprintf(ng, sizeof ng, "%s/nogeo.tif", t);
    CHECK(dm_make_tif(ng, 64, 64, 3, NULL, 0, -1, 11) == 0);
    snprintf(args, sizeof args, "%s -o %s/c -q --allow-ungeoreferenced", ng, t);
    CHECKF(feat(args, &out) == 0 && nlines(out) == 1 &&
           strstr(out, "dinomap: warning: the input has no georeferencing") == out, "%s", out);
    /* and an error */
    snprintf(args, sizeof args, "%s -o %s/d -q", ng, t);
    CHECKF(feat(args, &out) == 1 && nlines(out) == 1 && all_prefixed(out), "%s", out);
}

/* --- /vsicurl/ ------------------------------------------------------------------------------- */

/* 1 once something listens on 127.0.0.1:port (waits up to 10 s). */
static int listening(int port)
{
    for (int i = 0; i < 200; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0;
        if (s >= 0)
            close(s);
        if (ok)
            return 1;
        usleep(50000);
    }
    return 0;
}

static long file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

/* The runs against a server on `port` serving `dir` (the server's log: dir/../srv.log). */
static void vsicurl_runs(const char *t, int port)
{
    char args[4096], a[1100], b[1100], log[1100], cmd[4096];
    const char *out;
    snprintf(log, sizeof log, "%s/srv.log", t);
    snprintf(args, sizeof args, "%s/www/in.tif -o %s/local", t, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "/vsicurl/http://127.0.0.1:%d/in.tif -o %s/remote", port, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "grep -c '\"GET /in.tif' %s", log);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) >= 1, "the server saw no GET: %s", out);
    /* the same pixels in, the same features out, bit for bit (one machine, one build) */
    for (int i = 0; i < 2; i++) {
        const char *name = i ? "features_pca.tif" : "features.tif";
        snprintf(a, sizeof a, "%s/local/%s", t, name);
        snprintf(b, sizeof b, "%s/remote/%s", t, name);
        CHECKF(same_pixels(a, b) == 0, "%s differs between the local and the /vsicurl/ run",
               name);
    }
    /* --config reaches GDAL's network code: the folder listing (GET /) GDAL asks for to find
     * side files is not asked for with EMPTY_DIR */
    snprintf(cmd, sizeof cmd, "grep -c '\"GET / ' %s", log);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) >= 1, "no listing without the option: %s", out);
    long before = file_size(log);
    snprintf(args, sizeof args, "/vsicurl/http://127.0.0.1:%d/in.tif -o %s/remote2 --config "
             "GDAL_DISABLE_READDIR_ON_OPEN EMPTY_DIR", port, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "tail -c +%ld %s | grep -c '\"GET / '", before + 1, log);
    CHECKF(dm_run(cmd, &out) == 1 && atoi(out) == 0, "listed the folder: %s", out);
    snprintf(cmd, sizeof cmd, "tail -c +%ld %s | grep -c '\"GET /in.tif'", before + 1, log);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) >= 1, "no GET: %s", out);
    snprintf(a, sizeof a, "%s/remote2/features.tif", t);
    snprintf(b, sizeof b, "%s/local/features.tif", t);
    CHECK(same_pixels(a, b) == 0);
}

TEST(conv_vsicurl_input_same_as_local)
{
    const char *t = dm_test_tmpdir();
    char www[1100], in[1200], cmd[4096];
    const char *out;
    snprintf(www, sizeof www, "%s/www", t);
    mkdir(www, 0755);
    snprintf(in, sizeof in, "%s/in.tif", www);
    CHECK(make_in(in, 12) == 0);
    /* a free port: the system's pick for a socket bound to port 0 */
    CHECK(dm_run("python3 -c \"import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                 "print(s.getsockname()[1])\"", &out) == 0);
    int port = atoi(out);
    CHECKF(port > 0, "%s", out);
    snprintf(cmd, sizeof cmd, "exec python3 -m http.server --bind 127.0.0.1 --directory %s %d "
             ">>%s/srv.log 2>&1 & echo $!", www, port, t);
    CHECK(dm_run(cmd, &out) == 0);
    int pid = atoi(out);
    CHECKF(pid > 0, "%s", out);
    int up = listening(port);
    if (up)
        vsicurl_runs(t, port);
    kill(pid, SIGTERM); /* always, whatever the runs did */
    CHECKF(up, "the HTTP server did not start on port %d", port);
}

/* --- the software and date tags -------------------------------------------------------------- */

/* 0 when `gdalinfo path` shows TIFFTAG_SOFTWARE=dinomap VERSION and a TIFFTAG_DATETIME between
 * t0 and t1 (UTC, to the second); else -1 with why. */
static int tagged(const char *path, time_t t0, time_t t1, char *why, size_t n)
{
    char cmd[1200];
    const char *out;
    snprintf(cmd, sizeof cmd, "gdalinfo %s", path);
    if (dm_run(cmd, &out) != 0)
        return snprintf(why, n, "gdalinfo %s: %s", path, out), -1;
    const char *d = strstr(out, "TIFFTAG_DATETIME=");
    struct tm tm = { 0 };
    int ok = strstr(out, "TIFFTAG_SOFTWARE=dinomap " DINOMAP_VERSION "\n") && d &&
             sscanf(d + 17, "%4d:%2d:%2d %2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec) == 6 && d[17 + 19] == '\n';
    if (ok) {
        tm.tm_year -= 1900, tm.tm_mon -= 1;
        time_t w = timegm(&tm);
        ok = w >= t0 - 1 && w <= t1 + 1;
    }
    if (!ok)
        return snprintf(why, n, "%s: no software/date tags of this run: %.2000s", path, out), -1;
    return 0;
}

TEST(conv_every_raster_says_software_and_date)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1200], why[4000], cmd[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_in(in, 13) == 0);
    time_t t0 = time(NULL);
    snprintf(args, sizeof args, "%s -o %s/o", in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    /* block COGs and their VRT */
    snprintf(args, sizeof args, "%s -o %s/b --max-cog-gib 0.000001", in, t);
    CHECKF(feat(args, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s/c --tile 64 --overlap 32",
             dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    time_t t1 = time(NULL);
    static const char *files[] = { "o/features.tif", "o/features_pca.tif", "b/features.vrt",
                                   "b/features_blocks/features_r000_c000.tif", "c/chm.tif",
                                   "o/chunks/c000000.features.tif" };
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", t, files[i]);
        CHECKF(tagged(p, t0, t1, why, sizeof why) == 0, "%s", why);
    }
}

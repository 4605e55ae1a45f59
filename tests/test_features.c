/* tests/test_features.c — `dinomap features` as a user runs it: georeferencing, the patch ↔ pixel
 * correspondence (against `dinomap forward` on the same pixels), COG validity, metadata, mosaics
 * of several inputs, nodata, AOI, quantisation, the tile index, bounded memory, bad inputs. */
#include <cpl_string.h>
#include <gdal.h>
#include <limits.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

static const char *tiny(void)
{
    static char p[PATH_MAX + 64];
    char root[PATH_MAX];
    if (!realpath(dm_test_data(), root))
        snprintf(root, sizeof root, "%s", dm_test_data());
    snprintf(p, sizeof p, "%s/golden/vitl_sat_tiny/backbone.pth", root);
    return p;
}

static int run_features(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s", dm_bin(), tiny(), args);
    return dm_run(cmd, out);
}

static GDALDatasetH open_ro(const char *p)
{
    GDALAllRegister();
    return GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
}

TEST(features_georef_projected_odd_size)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 431234.5, 0.5, 0, 5412345.25, 0, -0.5 };
    CHECK(dm_make_tif(in, 203, 117, 3, gt, 32631, -1, 1) == 0);
    snprintf(args, sizeof args, "%s -o %s/o --tile 64 --halo 16", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(in, sizeof in, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(in);
    CHECK(d != NULL);
    double g[6];
    GDALGetGeoTransform(d, g);
    int w = GDALGetRasterXSize(d), h = GDALGetRasterYSize(d), nb = GDALGetRasterCount(d);
    OGRSpatialReferenceH s = OSRNewSpatialReference(GDALGetProjectionRef(d));
    const char *code = OSRGetAuthorityCode(s, NULL);
    int epsg = code ? atoi(code) : 0;
    OSRDestroySpatialReference(s);
    const char *layer = GDALGetMetadataItem(d, "DINOMAP_LAYER", NULL);
    const char *sha = GDALGetMetadataItem(d, "DINOMAP_WEIGHTS_SHA256", NULL);
    const char *desc = GDALGetDescription(GDALGetRasterBand(d, 128));
    int has_nd = 0;
    double nd = GDALGetRasterNoDataValue(GDALGetRasterBand(d, 1), &has_nd);
    int ovr = GDALGetOverviewCount(GDALGetRasterBand(d, 1));
    (void)ovr;
    int ok_desc = desc && !strcmp(desc, "f0127");
    int ok_meta = layer && sha && strlen(sha) == 64;
    GDALClose(d);
    /* exactly the input's origin, 16× its pixel size, ceil(size/16): no dropped edge */
    CHECKF(g[0] == gt[0] && g[3] == gt[3] && g[1] == 8.0 && g[5] == -8.0 && g[2] == 0 && g[4] == 0,
           "geotransform %.17g %.17g %.17g %.17g", g[0], g[1], g[3], g[5]);
    CHECKF(w == 13 && h == 8 && nb == 128, "%d×%d×%d", w, h, nb);
    CHECKF(epsg == 32631, "EPSG %d", epsg);
    CHECK(has_nd && isnan(nd));
    CHECK(ok_desc && ok_meta);
}

TEST(features_geographic_input_goes_to_utm)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/geo.tif", t);
    double gt[6] = { 2.30, 0.00001, 0, 48.86, 0, -0.00001 }; /* Paris, ~1 m */
    CHECK(dm_make_tif(in, 96, 96, 3, gt, 4326, -1, 2) == 0);
    snprintf(args, sizeof args, "%s -o %s/o --tile 64 --halo 0", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "EPSG:32631"), "no notice of the UTM zone: %s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL);
    OGRSpatialReferenceH s = OSRNewSpatialReference(GDALGetProjectionRef(d));
    const char *code = OSRGetAuthorityCode(s, NULL);
    int epsg = code ? atoi(code) : 0;
    OSRDestroySpatialReference(s);
    double g[6];
    GDALGetGeoTransform(d, g);
    GDALClose(d);
    CHECKF(epsg == 32631, "EPSG %d", epsg);
    CHECK(g[2] == 0 && g[4] == 0 && g[5] < 0 && fabs(g[1] + g[5]) < 1e-9);
}

/* A patch at output pixel (i, j) comes from input pixels [16i, 16i+16) × [16j, 16j+16): one tile
 * covering the image exactly (no halo) equals `dinomap forward` on the same pixels. */
TEST(features_patch_pixels_match_forward)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 1000, 2, 0, 2000, 0, -2 };
    CHECK(dm_make_tif(in, 96, 96, 3, gt, 32632, -1, 3) == 0);
    snprintf(args, sizeof args, "%s -o %s/o --tile 96 --halo 0 --no-pca", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s forward -q -m %s -i %s -o %s/f", dm_bin(), tiny(), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/f/x_norm_patchtokens.npy", t);
    dm_npy ref;
    CHECK(dm_npy_read(p, &ref, NULL) == 0);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL && GDALGetRasterXSize(d) == 6 && GDALGetRasterCount(d) == 128);
    float *f = malloc(sizeof(float) * 36 * 128);
    CHECK(GDALDatasetRasterIO(d, GF_Read, 0, 0, 6, 6, f, 6, 6, GDT_Float32, 128, NULL, 4 * 128,
                        4 * 128 * 6, 4) == CE_None);
    GDALClose(d);
    double r = dm_rel_err(f, ref.f, 36 * 128);
    dm_npy_free(&ref);
    CHECKF(r <= 1e-6, "features.tif differs from forward by %.3g", r);
    /* --layer 1: block 1's output through the final norm = forward's layer1_patch_norm */
    snprintf(args, sizeof args, "%s -o %s/l1 --tile 96 --halo 0 --no-pca --layer 1", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s forward -q -m %s -i %s -o %s/f1 --layers 1", dm_bin(), tiny(),
             in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/f1/layer1_patch_norm.npy", t);
    CHECK(dm_npy_read(p, &ref, NULL) == 0);
    snprintf(p, sizeof p, "%s/l1/features.tif", t);
    d = open_ro(p);
    CHECK(d != NULL);
    CHECK(GDALDatasetRasterIO(d, GF_Read, 0, 0, 6, 6, f, 6, 6, GDT_Float32, 128, NULL, 4 * 128,
                              4 * 128 * 6, 4) == CE_None);
    const char *lm = GDALGetMetadataItem(d, "DINOMAP_LAYER", NULL);
    char lay[256];
    snprintf(lay, sizeof lay, "%s", lm ? lm : "(none)");
    int ok = !strncmp(lay, "1 ", 2);
    GDALClose(d);
    r = dm_rel_err(f, ref.f, 36 * 128);
    free(f);
    dm_npy_free(&ref);
    CHECKF(ok, "DINOMAP_LAYER = %s", lay);
    CHECKF(r <= 1e-6, "--layer 1 differs from forward's layer1_patch_norm by %.3g", r);
}

static int validate_cog(const char *path, const char **out)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -m osgeo_utils.samples."
             "validate_cloud_optimized_geotiff %s", path);
    return dm_run(cmd, out);
}

TEST(features_outputs_are_valid_cogs_with_overviews)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 0, 1, 0, 0, 0, -1 };
    CHECK(dm_make_tif(in, 1024 * 5, 640, 3, gt, 3857, -1, 4) == 0); /* 320×40 features: overviews */
    snprintf(args, sizeof args, "%s -o %s/o --tile 512 --halo 0 --quantize int8", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    static const char *names[] = { "features.tif", "features_pca.tif" };
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/o/%s", t, names[i]);
        CHECKF(validate_cog(p, &out) == 0, "%s: %s", names[i], out);
        CHECKF(strstr(out, "is a valid cloud optimized GeoTIFF"), "%s", out);
        GDALDatasetH d = open_ro(p);
        CHECK(d != NULL);
        int ovr = GDALGetOverviewCount(GDALGetRasterBand(d, 1));
        const char *prod = GDALGetMetadataItem(d, "DINOMAP_PRODUCT", NULL);
        int ok = prod && !strcmp(prod, i ? "features_pca" : "features");
        GDALClose(d);
        CHECKF(ovr >= 1, "%s has no overviews", names[i]);
        CHECK(ok);
    }
    /* int8: GDAL's scale/offset give the value back within half a step */
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    GDALRasterBandH b = GDALGetRasterBand(d, 5);
    int ok = 0;
    double sc = GDALGetRasterScale(b, &ok), off = GDALGetRasterOffset(b, NULL);
    int hasnd = 0;
    double nd = GDALGetRasterNoDataValue(b, &hasnd);
    CHECK(GDALGetRasterDataType(b) == GDT_Byte && ok && sc > 0 && fabs(off + 128 * sc) < 1e-9 &&
          hasnd && nd == 0);
    CHECK(GDALGetMetadataItem(d, "DINOMAP_QUANTIZATION", NULL) != NULL);
    GDALClose(d);
}

TEST(features_mosaic_of_four_equals_one)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[8192], cmd[4096];
    const char *out;
    snprintf(in, sizeof in, "%s/whole.tif", t);
    double gt[6] = { 500000, 1, 0, 4000000, 0, -1 };
    CHECK(dm_make_tif(in, 200, 160, 3, gt, 32633, -1, 5) == 0);
    /* four quarters with uneven splits */
    int xs[3] = { 0, 77, 200 }, ys[3] = { 0, 101, 160 };
    char parts[1024] = "";
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            snprintf(cmd, sizeof cmd, "gdal_translate -q -srcwin %d %d %d %d %s %s/q%d%d.tif",
                     xs[b], ys[a], xs[b + 1] - xs[b], ys[a + 1] - ys[a], in, t, a, b);
            CHECK(dm_run(cmd, NULL) == 0);
            snprintf(parts + strlen(parts), sizeof parts - strlen(parts), " %s/q%d%d.tif", t, a,
                     b);
        }
    snprintf(args, sizeof args, "%s -o %s/one --tile 64 --halo 16", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s/four --tile 64 --halo 16", parts, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    char p1[1100], p2[1100];
    snprintf(p1, sizeof p1, "%s/one/features.tif", t);
    snprintf(p2, sizeof p2, "%s/four/features.tif", t);
    GDALDatasetH a = open_ro(p1), b = open_ro(p2);
    CHECK(a && b);
    int w = GDALGetRasterXSize(a), h = GDALGetRasterYSize(a);
    double ga[6], gb[6];
    GDALGetGeoTransform(a, ga);
    GDALGetGeoTransform(b, gb);
    int same_grid = w == GDALGetRasterXSize(b) && h == GDALGetRasterYSize(b) &&
                    !memcmp(ga, gb, sizeof ga);
    size_t n = (size_t)w * h * 128;
    float *fa = malloc(n * 4), *fb = malloc(n * 4);
    CHECK(GDALDatasetRasterIO(a, GF_Read, 0, 0, w, h, fa, w, h, GDT_Float32, 128, NULL, 0, 0, 0) ==
          CE_None);
    CHECK(GDALDatasetRasterIO(b, GF_Read, 0, 0, w, h, fb, w, h, GDT_Float32, 128, NULL, 0, 0, 0) ==
          CE_None);
    GDALClose(a);
    GDALClose(b);
    double r = same_grid ? dm_rel_err(fb, fa, (int64_t)n) : INFINITY;
    free(fa), free(fb);
    CHECK(same_grid);
    CHECKF(r == 0, "mosaic of 4 differs from one input by %.3g", r);
}

TEST(features_nodata_aoi_and_tile_index)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 256, 256, 3, gt, 32631, 0, 6) == 0); /* top-left 128×128 is nodata */
    snprintf(args, sizeof args, "%s -o %s/o --tile 64 --halo 16 --chunk 2", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL);
    float v[2];
    CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 2, 2, 1, 1, &v[0], 1, 1, GDT_Float32, 0,
                       0) == CE_None);
    CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 12, 12, 1, 1, &v[1], 1, 1, GDT_Float32, 0,
                       0) == CE_None);
    GDALClose(d);
    CHECKF(isnan(v[0]) && !isnan(v[1]), "nodata area %g, data area %g", v[0], v[1]);
    /* the index: 16 tiles, the 4 of the nodata quarter empty, 12 done with embeddings */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "ogrinfo -q -sql \"SELECT state, COUNT(*) AS n FROM tiles GROUP BY "
             "state ORDER BY state\" %s/o/tiles.gpkg", t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "state (String) = done") && strstr(out, "n (Integer) = 12") &&
           strstr(out, "state (String) = empty") && strstr(out, "n (Integer) = 4"), "%s", out);
    /* AOI: a polygon over the bottom-right corner only */
    char aoi[1100];
    snprintf(aoi, sizeof aoi, "%s/aoi.geojson", t);
    FILE *f = fopen(aoi, "w");
    CHECK(f != NULL);
    fprintf(f,
            "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\",\"properties\":"
            "{\"name\":\"urn:ogc:def:crs:EPSG::32631\"}},\"features\":[{\"type\":\"Feature\","
            "\"properties\":{},\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[[600200,"
            "4999800],[600250,4999800],[600250,4999750],[600200,4999750],[600200,4999800]]]}}]}");
    fclose(f);
    snprintf(args, sizeof args, "%s -o %s/a --tile 64 --halo 16 --aoi %s", in, t, aoi);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    /* the run maps the tiles that meet the AOI (px 200..250): one, px 192..256, 4 × 4 patches;
     * its values are the whole mosaic's run's (same tile, same window) where the AOI keeps them */
    snprintf(cmd, sizeof cmd, "ogrinfo -q -sql \"SELECT COUNT(*) AS n FROM tiles WHERE state = "
             "'done'\" %s/a/tiles.gpkg", t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "n (Integer) = 1"), "%s", out);
    snprintf(p, sizeof p, "%s/a/features.tif", t);
    int w, h, nb, fw, fh, fb;
    float *av = dm_read_all(p, &w, &h, &nb);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    float *ov = dm_read_all(p, &fw, &fh, &fb);
    snprintf(p, sizeof p, "%s/a/features.tif", t);
    d = open_ro(p);
    double agt[6] = { 0 };
    int georef = d && GDALGetGeoTransform(d, agt) == CE_None;
    if (d)
        GDALClose(d);
    int kept = 0, same = 0, outside_nan = 0;
    for (int b = 0; av && ov && b < nb && w == 4 && h == 4 && nb == fb; b++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float u = av[((size_t)b * h + y) * w + x];
                float r = ov[((size_t)b * fh + 12 + y) * fw + 12 + x];
                if (isnan(u)) {
                    outside_nan += b == 0;
                    continue;
                }
                kept += b == 0;
                same += memcmp(&u, &r, sizeof u) == 0;
            }
    free(av), free(ov);
    CHECKF(georef && w == 4 && h == 4 && agt[0] == 600192 && agt[3] == 5000000 - 192 &&
           agt[1] == 16, "%d×%d px at (%.10g, %.10g), %g m", w, h, agt[0], agt[3], agt[1]);
    CHECKF(kept >= 4 && outside_nan >= 1 && same == kept * nb, "%d patches kept, %d nodata, %d "
           "of %d values the whole mosaic's", kept, outside_nan, same, kept * nb);
}

static int dir_empty_or_missing(const char *d)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "test ! -e %s || test -z \"$(ls -A %s)\"", d, d);
    return dm_run(cmd, NULL) == 0;
}

TEST(features_bad_inputs)
{
    const char *t = dm_test_tmpdir();
    char in[1024], one[1024], ungeo[1024], args[4096], od[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    snprintf(one, sizeof one, "%s/one.tif", t);
    snprintf(ungeo, sizeof ungeo, "%s/ungeo.tif", t);
    double gt[6] = { 0, 1, 0, 0, 0, -1 };
    CHECK(dm_make_tif(in, 64, 64, 3, gt, 32631, -1, 7) == 0);
    CHECK(dm_make_tif(one, 64, 64, 1, gt, 32631, -1, 7) == 0);
    CHECK(dm_make_tif(ungeo, 64, 64, 3, NULL, 0, -1, 7) == 0);
    snprintf(od, sizeof od, "%s/out", t);
    struct {
        const char *fmt;
        int code;
        const char *msg;
    } cases[] = {
        { "%s/missing.tif -o %s", 1, "not a raster GDAL can open" },
        { "%s/in.tif -o %s --bands 1,2,9", 1, "asks for band 9" },
        { "%s/one.tif -o %s", 1, "has 1 band" },
        { "%s/ungeo.tif -o %s", 1, "no georeferencing" },
        { "%s/in.tif -o %s --tile 100", 1, "multiple of 16" },
        { "%s/in.tif -o %s --halo 8", 1, "multiple of 16" },
        { "%s/in.tif -o %s --layer 7", 1, "--layer 7" },
        { "%s/in.tif -o %s --quantize int4", 2, "none or int8" },
        { "%s/in.tif -o %s --bands 1,2", 2, "three" },
        { "%s/in.tif -o %s --aoi /nonexistent.geojson", 1, "nonexistent" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[2048];
        snprintf(a, sizeof a, cases[i].fmt, t, od);
        snprintf(args, sizeof args, "%s", a);
        int st = run_features(args, &out);
        CHECKF(st == cases[i].code, "`%s`: exit %d (want %d): %s", a, st, cases[i].code, out);
        CHECKF(strstr(out, cases[i].msg), "`%s`: message lacks \"%s\": %s", a, cases[i].msg, out);
        CHECKF(dir_empty_or_missing(od), "`%s` left files in OUTDIR", a);
    }
    /* not a weights file / weights of a head */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s features -m %s -o %s %s", dm_bin(), in, od, in);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "not a weights file"), "%s", out);
    CHECK(dir_empty_or_missing(od));
    /* unwritable OUTDIR */
    snprintf(cmd, sizeof cmd, "%s features -m %s -o /proc/nope/out %s", dm_bin(), tiny(), in);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "cannot create the output folder"), "%s", out);
    /* OUTDIR already holding a run: the same command resumes (here: nothing to do), another
     * configuration is refused, naming what differs */
    snprintf(args, sizeof args, "%s -o %s --tile 64", in, od);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s --tile 32", in, od);
    CHECKF(run_features(args, &out) == 1 && strstr(out, "another configuration") &&
           strstr(out, "tile: 32 now, 64 in the folder's run"), "%s", out);
    /* ungeoreferenced, allowed explicitly: runs with a warning */
    snprintf(args, sizeof args, "%s -o %s/u --tile 64 --allow-ungeoreferenced", ungeo, t);
    CHECKF(run_features(args, &out) == 0 && strstr(out, "pixel coordinates"), "%s", out);
}

/* Writes a minimal random DINOv3-shaped checkpoint (Meta names, D dims, 1 block, heads of 64 or
 * fewer, MLP 2D) as safetensors: the pipeline's cost is then mostly I/O and the outputs' size,
 * which is what the memory test needs. */
static int write_micro_checkpoint(const char *path, int D)
{
    int hd = D < 64 ? D : 64, F = 2 * D;
    const struct {
        const char *name;
        int nd;
        int s[4];
    } t[] = {
        { "cls_token", 3, { 1, 1, D } }, { "storage_tokens", 3, { 1, 4, D } },
        { "patch_embed.proj.weight", 4, { D, 3, 16, 16 } }, { "patch_embed.proj.bias", 1, { D } },
        { "rope_embed.periods", 1, { hd / 4 } },
        { "blocks.0.norm1.weight", 1, { D } }, { "blocks.0.norm1.bias", 1, { D } },
        { "blocks.0.attn.qkv.weight", 2, { 3 * D, D } }, { "blocks.0.attn.qkv.bias", 1, { 3 * D } },
        { "blocks.0.attn.proj.weight", 2, { D, D } }, { "blocks.0.attn.proj.bias", 1, { D } },
        { "blocks.0.ls1.gamma", 1, { D } }, { "blocks.0.norm2.weight", 1, { D } },
        { "blocks.0.norm2.bias", 1, { D } }, { "blocks.0.mlp.fc1.weight", 2, { F, D } },
        { "blocks.0.mlp.fc1.bias", 1, { F } }, { "blocks.0.mlp.fc2.weight", 2, { D, F } },
        { "blocks.0.mlp.fc2.bias", 1, { D } }, { "blocks.0.ls2.gamma", 1, { D } },
        { "norm.weight", 1, { D } }, { "norm.bias", 1, { D } },
    };
    int n = (int)(sizeof t / sizeof t[0]);
    char hdr[8192];
    size_t k = 0, off = 0;
    k += snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < n; i++) {
        size_t ne = 1;
        for (int d = 0; d < t[i].nd; d++)
            ne *= (size_t)t[i].s[d];
        k += snprintf(hdr + k, sizeof hdr - k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                      i ? "," : "", t[i].name);
        for (int d = 0; d < t[i].nd; d++)
            k += snprintf(hdr + k, sizeof hdr - k, "%s%d", d ? "," : "", t[i].s[d]);
        k += snprintf(hdr + k, sizeof hdr - k, "],\"data_offsets\":[%zu,%zu]}", off, off + 4 * ne);
        off += 4 * ne;
    }
    k += snprintf(hdr + k, sizeof hdr - k, "}");
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    uint32_t r = 1;
    for (int i = 0; i < n; i++) {
        size_t ne = 1;
        for (int d = 0; d < t[i].nd; d++)
            ne *= (size_t)t[i].s[d];
        for (size_t j = 0; j < ne; j++) {
            float v;
            r = dm_hash32(r + (uint32_t)j);
            if (strstr(t[i].name, "periods"))
                v = powf(100.0f, (float)j / (float)(hd / 4));
            else if (strstr(t[i].name, "norm") && strstr(t[i].name, "weight"))
                v = 1.0f;
            else
                v = ((float)(r % 2001) / 1000.0f - 1.0f) * 0.2f;
            fwrite(&v, 4, 1, f);
        }
    }
    return fclose(f);
}

/* A 19,968 × 19,968 px virtual mosaic of 676 sources (1.2 GB of RGB) through the whole run, tile
 * phase and finalize, with a 128-dimensional model (a 1248² × 128-band output, 800 MB as float32):
 * peak RSS stays far below the sizes involved. Before the engine streamed finalize, this run
 * peaked at 1.9 GB. */
TEST(features_memory_bounded_on_large_mosaic)
{
    if (getenv("DM_SANITIZED")) /* sanitizer builds are too slow and use shadow memory */
        return;
    const char *t = dm_test_tmpdir();
    char small[1024], vrt[1024];
    const char *out;
    snprintf(small, sizeof small, "%s/small.tif", t);
    double gt[6] = { 300000, 0.6, 0, 5000000, 0, -0.6 };
    CHECK(dm_make_tif(small, 768, 768, 3, gt, 32631, -1, 8) == 0);
    snprintf(vrt, sizeof vrt, "%s/big.vrt", t);
    FILE *f = fopen(vrt, "w");
    CHECK(f != NULL);
    fprintf(f, "<VRTDataset rasterXSize=\"19968\" rasterYSize=\"19968\">\n"
               "<GeoTransform>300000, 0.6, 0, 5000000, 0, -0.6</GeoTransform>\n");
    fprintf(f, "<SRS>EPSG:32631</SRS>\n");
    for (int b = 1; b <= 3; b++) {
        fprintf(f, "<VRTRasterBand dataType=\"Byte\" band=\"%d\">\n", b);
        for (int i = 0; i < 26; i++)
            for (int j = 0; j < 26; j++)
                fprintf(f, "<SimpleSource><SourceFilename relativeToVRT=\"1\">small.tif"
                           "</SourceFilename><SourceBand>%d</SourceBand><SrcRect xOff=\"0\" "
                           "yOff=\"0\" xSize=\"768\" ySize=\"768\"/><DstRect xOff=\"%d\" "
                           "yOff=\"%d\" xSize=\"768\" ySize=\"768\"/></SimpleSource>\n", b,
                        j * 768, i * 768);
        fprintf(f, "</VRTRasterBand>\n");
    }
    fprintf(f, "</VRTDataset>\n");
    fclose(f);
    char micro[1024], cmd[8192];
    snprintf(micro, sizeof micro, "%s/micro.safetensors", t);
    CHECK(write_micro_checkpoint(micro, 128) == 0);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s/o --tile 512 --halo 0 "
             "--threads 2", dm_bin(), micro, vrt, t);
    double mb;
    CHECKF(dm_run_peak(cmd, &out, &mb) == 0, "%s", out);
    printf("    peak RSS of the 19968×19968 px, 676-source run (D=128): %.0f MB\n", mb);
    /* the bound: GDAL's block cache (256 MB, set by dinomap) + a chunk + the model's buffers */
    CHECKF(mb < 600, "peak RSS %.0f MB", mb);
    char p[1100];
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d && GDALGetRasterXSize(d) == 1248 && GDALGetRasterYSize(d) == 1248 &&
          GDALGetRasterCount(d) == 128);
    GDALClose(d);
}

/* Inputs in another CRS are warped to the first's; an alpha band masks like nodata. */
TEST(features_mixed_crs_and_alpha)
{
    const char *t = dm_test_tmpdir();
    char a[1024], b[1024], rgba[1024], cmd[4096], args[4096], p[1100];
    const char *out;
    snprintf(a, sizeof a, "%s/a.tif", t);
    snprintf(b, sizeof b, "%s/b.tif", t);
    double gt[6] = { 448000, 1, 0, 5411000, 0, -1 }; /* UTM 31N, near 2.3E 48.9N */
    CHECK(dm_make_tif(a, 128, 128, 3, gt, 32631, -1, 21) == 0);
    /* the neighbouring area, in geographic coordinates */
    snprintf(cmd, sizeof cmd, "gdal_translate -q %s %s/a_shift.tif -a_ullr 448128 5411000 448256 "
             "5410872 && gdalwarp -q -t_srs EPSG:4326 %s/a_shift.tif %s", a, t, t, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s %s -o %s/o --tile 64 --halo 0 --no-pca", a, b, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL);
    OGRSpatialReferenceH s = OSRNewSpatialReference(GDALGetProjectionRef(d));
    const char *code = OSRGetAuthorityCode(s, NULL);
    int epsg = code ? atoi(code) : 0;
    OSRDestroySpatialReference(s);
    int w = GDALGetRasterXSize(d);
    GDALClose(d);
    CHECKF(epsg == 32631 && w >= 15, "EPSG %d, width %d", epsg, w);
    /* RGBA: alpha 0 on the left half → nodata there */
    snprintf(rgba, sizeof rgba, "%s/rgba.tif", t);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -b 1 -b 2 -b 3 -b 1 -colorinterp_4 alpha "
             "-co ALPHA=YES %s %s/tmp.tif && /usr/bin/python3 -c "
             "\"from osgeo import gdal; d = gdal.Open('%s/tmp.tif', 1); b = d.GetRasterBand(4); "
             "import numpy as n; v = n.full((128, 128), 255, n.uint8); v[:, :64] = 0; "
             "b.WriteArray(v); d = None\" && mv %s/tmp.tif %s", a, t, t, t, rgba);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s/r --tile 64 --halo 0 --no-pca", rgba, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/r/features.tif", t);
    d = open_ro(p);
    CHECK(d != NULL);
    float v[2];
    CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 1, 3, 1, 1, &v[0], 1, 1, GDT_Float32, 0,
                       0) == CE_None);
    CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 6, 3, 1, 1, &v[1], 1, 1, GDT_Float32, 0,
                       0) == CE_None);
    GDALClose(d);
    CHECKF(isnan(v[0]) && !isnan(v[1]), "alpha 0 gives %g, alpha 255 gives %g", v[0], v[1]);
}

/* --batch N runs several tiles per forward pass: the raster is the same as one at a time. */
TEST(features_batch_equals_single)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p1[1100], p2[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 1000, 1, 0, 2000, 0, -1 };
    CHECK(dm_make_tif(in, 150, 120, 3, gt, 32631, -1, 31) == 0);
    snprintf(args, sizeof args, "%s -o %s/one --tile 64 --halo 16 --no-pca", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s/three --tile 64 --halo 16 --no-pca --batch 3", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p1, sizeof p1, "%s/one/features.tif", t);
    snprintf(p2, sizeof p2, "%s/three/features.tif", t);
    GDALDatasetH a = open_ro(p1), b = open_ro(p2);
    CHECK(a && b);
    size_t n = 10 * 8 * 128;
    float *fa = malloc(n * 4), *fb = malloc(n * 4);
    CHECK(GDALDatasetRasterIO(a, GF_Read, 0, 0, 10, 8, fa, 10, 8, GDT_Float32, 128, NULL, 0, 0,
                              0) == CE_None);
    CHECK(GDALDatasetRasterIO(b, GF_Read, 0, 0, 10, 8, fb, 10, 8, GDT_Float32, 128, NULL, 0, 0,
                              0) == CE_None);
    GDALClose(a);
    GDALClose(b);
    size_t nan_a = 0, nan_same = 0; /* the 6-px last column is nodata (under half a patch) */
    for (size_t i = 0; i < n; i++) {
        nan_a += isnan(fa[i]);
        nan_same += isnan(fa[i]) && isnan(fb[i]);
        if (isnan(fa[i]) || isnan(fb[i]))
            fa[i] = fb[i] = 0;
    }
    double r = dm_rel_err(fb, fa, (int64_t)n);
    free(fa), free(fb);
    CHECKF(nan_a == 8 * 128 && nan_same == nan_a, "nodata %zu, in both %zu", nan_a, nan_same);
    CHECKF(r <= 1e-6, "batch 3 vs batch 1: %.3g", r);
}

/* --gsd warps to the asked pixel size (features 16× that); --progress json prints JSON lines. */
TEST(features_gsd_and_json_progress)
{
    const char *t = dm_test_tmpdir();
    char in[1024], cmd[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 500000, 1, 0, 4000000, 0, -1 };
    CHECK(dm_make_tif(in, 128, 96, 3, gt, 32631, -1, 41) == 0);
    snprintf(cmd, sizeof cmd, "%s features --progress json -m %s %s -o %s/o --gsd 2 --tile 32 "
             "--halo 0 --no-pca 2>&1 >/dev/null", dm_bin(), tiny(), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "{\"what\":\"tiles\",\"done\":") && strstr(out, "\"percent\":100"),
           "no JSON progress: %s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL);
    double g[6];
    GDALGetGeoTransform(d, g);
    int w = GDALGetRasterXSize(d), h = GDALGetRasterYSize(d);
    GDALClose(d);
    CHECKF(g[1] == 32 && g[5] == -32 && g[0] == 500000 && g[3] == 4000000 && w == 4 && h == 3,
           "gt %.17g %.17g %.17g %.17g, %d×%d", g[0], g[1], g[3], g[5], w, h);
}

/* Bytes this process has read so far (/proc/self/io rchar), or -1. */
static long long bytes_read(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    long long v = -1;
    char line[128];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "rchar: %lld", &v) == 1)
            break;
    if (f)
        fclose(f);
    return v;
}

/* The share of a raster's file read to get bands 1-3 whole (a fresh open, nothing cached). */
static double share_read_for_three_bands(const char *p)
{
    struct stat st;
    if (stat(p, &st))
        return -1;
    GDALDatasetH d = open_ro(p);
    if (!d)
        return -1;
    int w = GDALGetRasterXSize(d), h = GDALGetRasterYSize(d);
    float *buf = malloc(sizeof *buf * (size_t)w * h * 3);
    int bands[3] = { 1, 2, 3 };
    long long before = bytes_read();
    CPLErr e = buf ? GDALDatasetRasterIO(d, GF_Read, 0, 0, w, h, buf, w, h, GDT_Float32, 3, bands,
                                         0, 0, 0)
                   : CE_Failure;
    long long after = bytes_read();
    GDALClose(d);
    free(buf);
    return e == CE_None && before >= 0 ? (double)(after - before) / (double)st.st_size : -1;
}

/* Many-band outputs are band-interleaved: a client reading 3 of 128 bands (QGIS drawing an RGB
 * of them) reads those bands' blocks only, not every band's. */
TEST(features_reading_three_bands_reads_only_theirs)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1100], pix[1100], cmd[4096];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 768, 512, 3, gt, 32631, -1, 12) == 0);
    snprintf(args, sizeof args, "%s -o %s/o --tile 256 --halo 0 --no-pca", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = open_ro(p);
    CHECK(d != NULL);
    const char *v = GDALGetMetadataItem(d, "INTERLEAVE", "IMAGE_STRUCTURE");
    char il[32];
    snprintf(il, sizeof il, "%s", v ? v : "?"); /* the item lives only as long as d */
    int nb = GDALGetRasterCount(d);
    GDALClose(d);
    CHECKF(!strcmp(il, "BAND") && nb >= 64, "interleave %s, %d bands", il, nb);
    /* the same raster pixel-interleaved, to show what the measure sees there */
    snprintf(pix, sizeof pix, "%s/pixel.tif", t);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE -co "
             "INTERLEAVE=PIXEL %s %s", p, pix);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    double band = share_read_for_three_bands(p), pixel = share_read_for_three_bands(pix);
    printf("    reading 3 of %d bands reads %.1f%% of features.tif (pixel-interleaved: %.1f%%)\n",
           nb, 100 * band, 100 * pixel);
    CHECKF(band >= 0 && band < 3.0 * 3 / nb, "%.3f of the file read for 3 of %d bands", band, nb);
    CHECKF(pixel > 0.5, "pixel-interleaved copy: %.3f read", pixel);
}

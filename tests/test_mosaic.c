/* tests/test_mosaic.c — what the mosaic makes of its inputs: validity that survives every band
 * count and every path (warps, --gsd, geographic inputs, mosaics with gaps), the first input's
 * grid kept exactly in mixed-CRS mosaics, the AOI as a pixel mask, and the edge-patch rule. */
#include <gdal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gis/gis.h"
#include "golden.h"
#include "test.h"

static int features(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s features --progress none -q -m %s %s --no-pca", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), args);
    return dm_run(cmd, out);
}

/* Band 1 of a run's features.tif (malloc'd, *w × *h), or NULL. */
static float *band1(const char *dir, int *w, int *h)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/features.tif", dir);
    GDALAllRegister();
    GDALDatasetH d = GDALOpen(p, GA_ReadOnly);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d);
    float *v = malloc(sizeof *v * (size_t)*w * *h);
    if (v && GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32,
                          0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

static int count_nan(const float *v, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += isnan(v[i]);
    return k;
}

/* A 4-band RGB + near-infrared GeoTIFF (band 4 "undefined", as NAIP's: not alpha), optionally
 * UInt16; nodata >= 0 paints the top-left quarter. */
static int make_rgbn(const char *path, int w, int h, const double *gt, int epsg, int nodata,
                     uint32_t seed, int uint16)
{
    char tmp[1100], cmd[2600];
    snprintf(tmp, sizeof tmp, "%s.byte.tif", path);
    if (dm_make_tif(tmp, w, h, 4, gt, epsg, nodata, seed))
        return -1;
    /* ×37 keeps 0 at 0, so the nodata value stays the nodata value */
    snprintf(cmd, sizeof cmd, "gdal_translate -q %s %s -co PHOTOMETRIC=RGB -co ALPHA=UNSPECIFIED "
             "%s && rm %s", uint16 ? "-ot UInt16 -scale 0 255 0 9435" : "", tmp, path, tmp);
    if (dm_run(cmd, NULL))
        return -1;
    GDALDatasetH d = GDALOpen(path, GA_ReadOnly);
    int ok = d && GDALGetRasterCount(d) == 4 &&
             GDALGetRasterColorInterpretation(GDALGetRasterBand(d, 4)) == GCI_Undefined;
    if (d)
        GDALClose(d);
    return ok ? 0 : -1;
}

/* The same raster without its 4th band. */
static int rgb_of(const char *rgbn, const char *rgb)
{
    char cmd[2600];
    snprintf(cmd, sizeof cmd, "gdal_translate -q -b 1 -b 2 -b 3 %s %s", rgbn, rgb);
    return dm_run(cmd, NULL);
}

/* Runs features on the 4-band inputs and on their 3-band copies with the same options: the two
 * rasters must be identical (the same three bands feed the model), with nodata where expected. */
static int same_as_rgb(const char *t, const char *name, const char *in4, const char *in3,
                       const char *opts, int *nan, char *why, size_t nwhy)
{
    char args[4096], d4[1100], d3[1100];
    const char *out;
    snprintf(d4, sizeof d4, "%s/%s4", t, name);
    snprintf(d3, sizeof d3, "%s/%s3", t, name);
    snprintf(args, sizeof args, "%s -o %s %s", in4, d4, opts);
    if (features(args, &out))
        return snprintf(why, nwhy, "%s, 4 bands: %s", name, out), -1;
    snprintf(args, sizeof args, "%s -o %s %s", in3, d3, opts);
    if (features(args, &out))
        return snprintf(why, nwhy, "%s, 3 bands: %s", name, out), -1;
    int w4, h4, w3, h3;
    float *a = band1(d4, &w4, &h4), *b = band1(d3, &w3, &h3);
    int rc = 0;
    if (!a || !b || w4 != w3 || h4 != h3) {
        snprintf(why, nwhy, "%s: rasters missing or of other sizes", name);
        rc = -1;
    } else {
        *nan = count_nan(a, w4 * h4);
        int differ = 0;
        for (int i = 0; i < w4 * h4; i++)
            differ += isnan(a[i]) != isnan(b[i]) || (!isnan(a[i]) && a[i] != b[i]);
        if (differ || *nan != count_nan(b, w3 * h3)) {
            snprintf(why, nwhy, "%s: %d of %d patches differ; nodata %d with 4 bands, %d with 3",
                     name, differ, w4 * h4, *nan, count_nan(b, w3 * h3));
            rc = -1;
        }
    }
    free(a), free(b);
    return rc;
}

TEST(mosaic_rgbn_keeps_nodata_on_every_path)
{
    const char *t = dm_test_tmpdir();
    char a4[1024], b4[1024], a3[1024], b3[1024], n4[1024], n3[1024], g4[1024], g3[1024];
    char u4[1024], list4[4200], list3[4200], cmd[4096], why[600];
    const char *out;
    snprintf(a4, sizeof a4, "%s/a4.tif", t), snprintf(a3, sizeof a3, "%s/a3.tif", t);
    snprintf(b4, sizeof b4, "%s/b4.tif", t), snprintf(b3, sizeof b3, "%s/b3.tif", t);
    snprintf(n4, sizeof n4, "%s/n4.tif", t), snprintf(n3, sizeof n3, "%s/n3.tif", t);
    snprintf(g4, sizeof g4, "%s/g4.tif", t), snprintf(g3, sizeof g3, "%s/g3.tif", t);
    snprintf(u4, sizeof u4, "%s/u4.tif", t);
    /* two tiles without nodata, 100 px apart */
    double ga[6] = { 600000, 1, 0, 5000000, 0, -1 }, gb[6] = { 600228, 1, 0, 5000000, 0, -1 };
    CHECK(make_rgbn(a4, 128, 128, ga, 32631, -1, 1, 0) == 0 && rgb_of(a4, a3) == 0);
    CHECK(make_rgbn(b4, 128, 128, gb, 32631, -1, 2, 0) == 0 && rgb_of(b4, b3) == 0);
    snprintf(list4, sizeof list4, "%s %s", a4, b4);
    snprintf(list3, sizeof list3, "%s %s", a3, b3);
    int nan = 0;
    CHECKF(same_as_rgb(t, "gap", list4, list3, "--tile 64 --halo 16", &nan, why, sizeof why) == 0,
           "%s", why);
    /* 356 px = 23 patches; the gap spans x 128..228: patches 8..13 wholly, 14 by 4 of 16 px
     * (kept); patch 22 has 4 of its 16 columns in the mosaic (nodata) */
    CHECKF(nan == 7 * 8, "gap: %d nodata patches, expected 56", nan);
    /* nodata (top-left quarter) through a --gsd warp */
    double gn[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(make_rgbn(n4, 256, 256, gn, 32631, 0, 3, 0) == 0 && rgb_of(n4, n3) == 0);
    CHECKF(same_as_rgb(t, "gsd", n4, n3, "--tile 64 --halo 16 --gsd 1.2", &nan, why,
                       sizeof why) == 0, "%s", why);
    /* 214 px = 14 patches: ~7×7 of the quarter, and the last column and row (6 px each) */
    CHECKF(nan >= 72 && nan <= 78, "--gsd 1.2: %d nodata patches, expected ~49 + 27", nan);
    /* UInt16, geographic (so warped to UTM), nodata quarter and the corners the warp adds */
    CHECK(make_rgbn(u4, 256, 256, gn, 32631, 0, 4, 1) == 0);
    snprintf(cmd, sizeof cmd, "gdalwarp -q -t_srs EPSG:4326 -co PHOTOMETRIC=RGB -co "
             "ALPHA=UNSPECIFIED %s %s", u4, g4);
    CHECKF(dm_run(cmd, &out) == 0 && rgb_of(g4, g3) == 0, "%s", out);
    CHECKF(same_as_rgb(t, "geo", g4, g3, "--tile 64 --halo 16", &nan, why, sizeof why) == 0,
           "%s", why);
    CHECKF(nan >= 64, "UInt16 EPSG:4326: %d nodata patches, expected the quarter and corners",
           nan);
    /* a mixed-CRS mosaic of the two kinds */
    snprintf(list4, sizeof list4, "%s %s", a4, g4);
    snprintf(list3, sizeof list3, "%s %s", a3, g3);
    CHECKF(same_as_rgb(t, "mixed", list4, list3, "--tile 64 --halo 16 --scale 0,9435", &nan, why,
                       sizeof why) == 0, "%s", why);
}

/* A mosaic of an input on the grid and one in another CRS: the first is read as it is (its
 * pixels exactly, at its 0.6 m pixel size), only the second is warped onto that grid. */
TEST(mosaic_keeps_the_first_inputs_grid)
{
    const char *t = dm_test_tmpdir();
    char a[1024], b0[1024], b[1024], c[1024], cmd[4096];
    const char *out;
    snprintf(a, sizeof a, "%s/a.tif", t);
    snprintf(b0, sizeof b0, "%s/b0.tif", t);
    snprintf(b, sizeof b, "%s/b.tif", t);
    snprintf(c, sizeof c, "%s/c.tif", t);
    double ga[6] = { 448000.3, 0.6, 0, 5411000.9, 0, -0.6 };
    double gb[6] = { 448100.3, 0.6, 0, 5411000.9, 0, -0.6 };
    double gc[6] = { 448000, 1.0, 0, 5410900, 0, -1.0 };
    CHECK(dm_make_tif(a, 128, 128, 3, ga, 32631, -1, 5) == 0);
    CHECK(dm_make_tif(b0, 128, 128, 3, gb, 32631, -1, 6) == 0);
    CHECK(dm_make_tif(c, 50, 50, 3, gc, 32631, -1, 7) == 0);
    snprintf(cmd, sizeof cmd, "gdalwarp -q -t_srs EPSG:4326 %s %s", b0, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    const char *in[3] = { a, b, c };
    dm_mosaic_opts o = { .inputs = in, .n_inputs = 3, .bands = { 1, 2, 3 } };
    dm_mosaic *m = NULL;
    dm_err err = { 0 };
    CHECKF(dm_mosaic_open(&o, &m, &err) == 0, "%s", err.msg);
    double gt[6];
    dm_mosaic_geotransform(m, gt);
    int W, H;
    dm_mosaic_size(m, &W, &H);
    /* the grid: a's pixel size exactly, a's corner on a whole pixel */
    double col = (ga[0] - gt[0]) / gt[1], row = (ga[3] - gt[3]) / gt[5];
    CHECKF(gt[1] == 0.6 && gt[5] == -0.6 && fabs(col - round(col)) < 1e-6 &&
           fabs(row - round(row)) < 1e-6, "mosaic pixel %.17g × %.17g, a at col %.9f row %.9f",
           gt[1], gt[5], col, row);
    CHECKF(strstr(dm_mosaic_notes(m), "2 of 3 inputs warped"), "notes: %s", dm_mosaic_notes(m));
    /* a's pixels, unresampled */
    uint8_t *rgb = malloc(3 * 128 * 128), *valid = malloc(128 * 128), *ref = malloc(128 * 128);
    CHECK(rgb && valid && ref);
    CHECK(dm_mosaic_read(m, (int)round(col), (int)round(row), 128, 128, rgb, valid, &err) == 0);
    GDALDatasetH d = GDALOpen(a, GA_ReadOnly);
    CHECK(d && GDALRasterIO(GDALGetRasterBand(d, 2), GF_Read, 0, 0, 128, 128, ref, 128, 128,
                            GDT_Byte, 0, 0) == CE_None);
    GDALClose(d);
    int diff = 0, inval = 0;
    for (int i = 0; i < 128 * 128; i++)
        diff += rgb[128 * 128 + i] != ref[i], inval += !valid[i];
    /* b's footprint right of a: valid, warped pixels */
    int bvalid = 0;
    CHECK(dm_mosaic_read(m, (int)round(col) + 180, (int)round(row) + 20, 64, 64, rgb, valid,
                         &err) == 0);
    for (int i = 0; i < 64 * 64; i++)
        bvalid += valid[i];
    free(rgb), free(valid), free(ref);
    dm_mosaic_close(m);
    CHECKF(diff == 0 && inval == 0, "a through the mosaic: %d pixels differ, %d invalid", diff,
           inval);
    CHECKF(bvalid == 64 * 64, "b's area: %d of 4096 pixels valid", bvalid);
    /* the features raster: 16 mosaic pixels a patch, on a's grid */
    char args[4096];
    snprintf(args, sizeof args, "%s %s -o %s/o --tile 64 --halo 16", a, b, t);
    CHECKF(features(args, &out) == 0, "%s", out);
    char p[1100];
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    d = GDALOpen(p, GA_ReadOnly);
    CHECK(d != NULL);
    GDALGetGeoTransform(d, gt);
    GDALClose(d);
    col = (ga[0] - gt[0]) / 0.6;
    CHECKF(fabs(gt[1] - 9.6) < 1e-9 && fabs(col - round(col)) < 1e-6, "features pixel %.17g, "
           "a at %.9f mosaic px", gt[1], col);
}

/* Is the pixel centre (x, y) inside the triangle? (signs of the three edge functions) */
static int in_triangle(double x, double y, const double *v)
{
    int pos = 0, neg = 0;
    for (int i = 0; i < 3; i++) {
        const double *p = v + 2 * i, *q = v + 2 * ((i + 1) % 3);
        double e = (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0]);
        pos += e > 0, neg += e < 0;
    }
    return !(pos && neg);
}

/* --aoi masks pixels: a patch is kept when half of its pixel centres lie in the polygon, and
 * there its values are those of the run that keeps whole tiles; chm pixels outside are nodata. */
TEST(mosaic_aoi_masks_pixels)
{
    const char *t = dm_test_tmpdir();
    char in[1024], aoi[1024], args[4096], d1[1100], d2[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 256, 256, 3, gt, 32631, -1, 9) == 0);
    /* a triangle in pixel coordinates (x right, y down), not on the patch grid */
    double v[6] = { 20.3, 30.7, 230.2, 70.1, 90.6, 220.4 };
    snprintf(aoi, sizeof aoi, "%s/aoi.geojson", t);
    FILE *f = fopen(aoi, "w");
    CHECK(f != NULL);
    fprintf(f, "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\",\"properties\":"
               "{\"name\":\"urn:ogc:def:crs:EPSG::32631\"}},\"features\":[{\"type\":\"Feature\","
               "\"properties\":{},\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[");
    for (int i = 0; i <= 3; i++)
        fprintf(f, "%s[%.3f,%.3f]", i ? "," : "", 600000 + v[2 * (i % 3)],
                5000000 - v[2 * (i % 3) + 1]);
    fprintf(f, "]]}}]}");
    fclose(f);
    snprintf(d1, sizeof d1, "%s/pix", t);
    snprintf(d2, sizeof d2, "%s/whole", t);
    snprintf(args, sizeof args, "%s -o %s --tile 64 --halo 16 --aoi %s", in, d1, aoi);
    CHECKF(features(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s --tile 64 --halo 16 --aoi %s --aoi-whole-tiles", in, d2,
             aoi);
    CHECKF(features(args, &out) == 0, "%s", out);
    int w, h, w2, h2;
    float *a = band1(d1, &w, &h), *b = band1(d2, &w2, &h2);
    CHECK(a && b && w == 16 && h == 16 && w2 == 16 && h2 == 16);
    int wrong = 0, kept = 0, cut = 0;
    for (int pr = 0; pr < 16; pr++)
        for (int pc = 0; pc < 16; pc++) {
            int n = 0;
            for (int y = 0; y < 16; y++)
                for (int x = 0; x < 16; x++)
                    n += in_triangle(pc * 16 + x + 0.5, pr * 16 + y + 0.5, v);
            float x = a[pr * 16 + pc], y = b[pr * 16 + pc];
            if (2 * n >= 256) {
                kept++;
                wrong += isnan(x) || x != y;
            } else {
                cut += !isnan(y); /* data in the whole-tiles run, cut by the polygon */
                wrong += !isnan(x);
            }
        }
    free(a), free(b);
    CHECKF(wrong == 0 && kept > 40 && cut > 20, "%d patches wrong (%d kept, %d cut)", wrong, kept,
           cut);
    /* chm: every pixel centre outside the triangle is nodata, those inside have heights */
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s chm --progress none -q -m %s %s -o %s/chm --tile 64 "
             "--overlap 32 --aoi %s", dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"), in,
             t, aoi);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    char p[1200];
    snprintf(p, sizeof p, "%s/chm/chm.tif", t);
    GDALDatasetH d = GDALOpen(p, GA_ReadOnly);
    CHECK(d && GDALGetRasterXSize(d) == 256);
    float *c = malloc(256 * 256 * sizeof *c);
    CHECK(c && GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, 256, 256, c, 256, 256,
                            GDT_Float32, 0, 0) == CE_None);
    GDALClose(d);
    wrong = 0;
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++)
            wrong += in_triangle(x + 0.5, y + 0.5, v) == isnan(c[y * 256 + x]);
    free(c);
    CHECKF(wrong == 0, "chm: %d pixels on the wrong side of the AOI", wrong);
    /* the option alone is a mistake, said before anything runs */
    snprintf(args, sizeof args, "%s -o %s/alone --aoi-whole-tiles", in, t);
    int rc = features(args, &out);
    snprintf(d1, sizeof d1, "%s/alone", t);
    CHECKF(rc == 2 && strstr(out, "dinomap: --aoi-whole-tiles needs --aoi") &&
           dm_dir_empty_or_missing(d1), "exit %d: %s", rc, out);
}

/* A patch counts all its 16×16 pixels: one with 4 of its 16 columns inside the mosaic is nodata,
 * one with 8 of 16 rows (half) is kept. */
TEST(mosaic_edge_patches_count_all_their_pixels)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], d[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 100, 120, 3, gt, 32631, -1, 11) == 0);
    snprintf(d, sizeof d, "%s/o", t);
    snprintf(args, sizeof args, "%s -o %s --tile 64 --halo 16", in, d);
    CHECKF(features(args, &out) == 0, "%s", out);
    int w, h;
    float *a = band1(d, &w, &h);
    CHECK(a && w == 7 && h == 8);
    int bad = 0;
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 7; c++)
            bad += isnan(a[r * 7 + c]) != (c == 6);
    free(a);
    CHECKF(bad == 0, "%d patches break the half-of-16×16 rule", bad);
}

/* A mosaic of more inputs than the process may open files: inputs are opened one at a time and
 * the mosaic VRT's sources through GDAL's pool. */
TEST(mosaic_more_inputs_than_open_files)
{
    const char *t = dm_test_tmpdir();
    char path[1024], cmd[8192];
    const char *out;
    for (int i = 0; i < 300; i++) {
        snprintf(path, sizeof path, "%s/t%03d.tif", t, i);
        double gt[6] = { 600000 + 32 * (i % 20), 1, 0, 5000000 - 32 * (i / 20), 0, -1 };
        CHECK(dm_make_tif(path, 32, 32, 3, gt, 32631, -1, (uint32_t)i) == 0);
    }
    snprintf(cmd, sizeof cmd, "ulimit -n 128 && %s features --progress none -q -m %s %s/t*.tif "
             "-o %s/o --tile 64 --halo 16 --no-pca", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    char d[1100];
    snprintf(d, sizeof d, "%s/o", t);
    int w, h;
    float *a = band1(d, &w, &h);
    CHECK(a && w == 40 && h == 30);
    int nan = count_nan(a, w * h);
    free(a);
    CHECKF(nan == 0, "%d nodata patches in a gapless mosaic", nan);
}

/* Geotransforms that place no pixel (size 0, NaN) are refused up front, naming the file; the
 * output folder is not created. */
TEST(mosaic_refuses_broken_geotransforms)
{
    const char *t = dm_test_tmpdir();
    static const double bad[2][6] = { { 600000, 0, 0, 5000000, 0, 0 },
                                      { NAN, 1, 0, 5000000, 0, -1 } };
    for (int i = 0; i < 2; i++) {
        char in[1024], args[4096], o[1100];
        const char *out;
        snprintf(in, sizeof in, "%s/bad%d.tif", t, i);
        snprintf(o, sizeof o, "%s/o%d", t, i);
        CHECK(dm_make_tif(in, 64, 64, 3, bad[i], 32631, -1, 1) == 0);
        snprintf(args, sizeof args, "%s -o %s", in, o);
        int rc = features(args, &out);
        CHECKF(rc == 1 && strstr(out, "geotransform") && strstr(out, in), "rc %d: %s", rc, out);
        CHECKF(dm_dir_empty_or_missing(o), "%s was left behind", o);
    }
}

/* The default stretch of 16-bit input counts valid pixels only: a 5-band RGBN + alpha file
 * whose alpha-0 part holds 60000s (GDAL's own statistics would count them, and a warp leaves
 * 0s there). Read whole, sampled in windows (over 1024 px), and warped (--gsd 1.5). */
TEST(mosaic_stretch_counts_valid_pixels_only)
{
    const char *t = dm_test_tmpdir();
    static const int sizes[3] = { 300, 1100, 300 };
    for (int s = 0; s < 3; s++) {
        int n = sizes[s];
        char in[1024];
        snprintf(in, sizeof in, "%s/rgbna%d.tif", t, s);
        GDALAllRegister();
        GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), in, n, n, 5, GDT_UInt16, NULL);
        CHECK(d != NULL);
        double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
        GDALSetGeoTransform(d, gt);
        GDALSetProjection(d, "EPSG:32631");
        uint16_t *buf = malloc(sizeof *buf * (size_t)n * n);
        CHECK(buf != NULL);
        for (int b = 1; b <= 5; b++) {
            for (int y = 0; y < n; y++)
                for (int x = 0; x < n; x++) {
                    int outside = x < n / 2; /* alpha 0 on the left half */
                    buf[(size_t)y * n + x] = b == 5 ? (outside ? 0 : 255)
                                             : outside ? 60000
                                                       : (uint16_t)(1000 + (dm_hash32((uint32_t)(
                                                             y * n + x) * 5u + (uint32_t)b) % 8000));
                }
            CHECK(GDALRasterIO(GDALGetRasterBand(d, b), GF_Write, 0, 0, n, n, buf, n, n,
                               GDT_UInt16, 0, 0) == CE_None);
        }
        GDALSetRasterColorInterpretation(GDALGetRasterBand(d, 5), GCI_AlphaBand);
        GDALClose(d);
        free(buf);
        const char *inputs[1] = { in };
        dm_mosaic_opts o = { .inputs = inputs, .n_inputs = 1, .bands = { 1, 2, 3 },
                             .gsd = s == 2 ? 1.5 : 0 };
        dm_mosaic *m = NULL;
        dm_err err = { 0 };
        CHECKF(dm_mosaic_open(&o, &m, &err) == 0, "%s", err.msg);
        int scaled;
        double lo, hi;
        dm_mosaic_scale(m, &scaled, &lo, &hi);
        dm_mosaic_close(m);
        /* 2 and 98 % of uniform 1000..8999: ~1160 and ~8840 (bilinear resampling of this
         * noise narrows it, but never reaches 0 or 60000) */
        int ok = s == 2 ? lo > 1000 && hi < 9000
                        : fabs(lo - 1160) < 80 && fabs(hi - 8840) < 80;
        CHECKF(scaled && ok, "%d px%s: stretch %g..%g", n, s == 2 ? ", warped" : "", lo, hi);
    }
}

/* A scene georeferenced by ground control points only (no geotransform) is warped with them:
 * a geographic GCP CRS goes to its UTM zone like any geographic input. */
TEST(mosaic_gcps_only_input_is_warped)
{
    const char *t = dm_test_tmpdir();
    char in[1024], gcp[1024], cmd[4096], args[4096];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    snprintf(gcp, sizeof gcp, "%s/gcp.tif", t);
    CHECK(dm_make_tif(in, 128, 128, 3, NULL, 0, -1, 13) == 0);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -a_srs EPSG:4326 -gcp 0 0 2.30 48.90 -gcp 128 0 "
             "2.3017 48.90 -gcp 0 128 2.30 48.8989 -gcp 128 128 2.3017 48.8989 %s %s", in, gcp);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s/o --tile 64 --halo 16", gcp, t);
    CHECKF(features(args, &out) == 0, "%s", out);
    char p[1100];
    snprintf(p, sizeof p, "%s/o/features.tif", t);
    GDALDatasetH d = GDALOpen(p, GA_ReadOnly);
    CHECK(d != NULL);
    double gt[6];
    int has = GDALGetGeoTransform(d, gt) == CE_None;
    const char *wkt = GDALGetProjectionRef(d);
    int utm = wkt && strstr(wkt, "UTM zone 31N");
    GDALClose(d);
    /* 0.0017° of longitude at 48.9° N is ~125 m: 128 px of ~0.98 m, 16 px a patch */
    CHECKF(has && utm && gt[1] > 14 && gt[1] < 17, "georeferenced %d, UTM 31N %d, pixel %g", has,
           utm, gt[1]);
}

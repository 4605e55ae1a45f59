/* tests/test_change.c — `dinomap change A B` as a user runs it, on a 256×256 synthetic scene
 * (smooth dark green fields) mapped with tiles of 64 + 2 × 16 px: two runs of the same date are
 * unchanged (distance 0 everywhere); a second date whose top-right 128×64 px became bright
 * stripes ranks those two tiles first, and a nodata block of the second date stays NaN; other
 * grids and other models are refused; change.tif is a valid COG with its metadata. */
#include <cpl_conv.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/heads.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

#define S 256
static const double GT[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };

/* The scene: w×S px; changed: the top-right 128×64 px are stripes; hole: the bottom-left
 * 64×64 px are nodata (0). */
static int make_scene(const char *path, int w, int changed, int hole)
{
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, w, S, 3, GDT_Byte, NULL);
    if (!d)
        return -1;
    GDALSetGeoTransform(d, (double *)GT);
    dm_set_epsg(d, 32631);
    uint8_t *px = malloc((size_t)3 * w * S);
    static const int green[3] = { 40, 90, 40 };
    for (int b = 0; b < 3; b++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < w; x++) {
                uint32_t r = dm_hash32((uint32_t)(b * w * S + y * w + x) * 2654435761u + 7);
                int v = green[b] + 1 + (int)(r % 8);
                if (changed && x >= 128 && y < 64)
                    v = (x / 4) % 2 ? 230 : 30;
                if (hole && x < 64 && y >= 192)
                    v = 0;
                px[(size_t)b * w * S + (size_t)y * w + x] = (uint8_t)v;
            }
    CPLErr e = GDALDatasetRasterIO(d, GF_Write, 0, 0, w, S, px, w, S, GDT_Byte, 3, NULL, 0, 0, 0);
    for (int b = 1; b <= 3; b++)
        GDALSetRasterNoDataValue(GDALGetRasterBand(d, b), 0);
    free(px);
    GDALClose(d);
    return e == CE_None ? 0 : -1;
}

/* dinomap features of t/NAME.tif into t/NAME (more: extra options). */
static int features(const char *t, const char *name, const char *more, const char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s features -q --progress none -m %s %s/%s.tif -o %s/%s --tile 64 "
             "--halo 16 --no-pca %s", dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), t, name,
             t, name, more ? more : "");
    return dm_run(cmd, out);
}

static int change(const char *args, const char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s change %s", dm_bin(), args);
    return dm_run(cmd, out);
}

static float *read_band(const char *path, int *w, int *h)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d);
    float *v = malloc(sizeof(float) * (size_t)*w * *h);
    if (v && GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32,
                          0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

typedef struct trow {
    int col0, row0, rank, valid;
    double change; /* NaN: NULL */
} trow;

/* change_tiles.gpkg's tiles, in the layer's order; n: how many (-1: unreadable). */
static int read_tiles(const char *path, trow *t, int cap)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL);
    OGRLayerH l = d ? GDALDatasetGetLayerByName(d, "tiles") : NULL;
    if (!l) {
        if (d)
            GDALClose(d);
        return -1;
    }
    OGRFeatureDefnH fd = OGR_L_GetLayerDefn(l);
    int ic = OGR_FD_GetFieldIndex(fd, "change"), ir = OGR_FD_GetFieldIndex(fd, "rank");
    int iv = OGR_FD_GetFieldIndex(fd, "valid_patches"), ix = OGR_FD_GetFieldIndex(fd, "col0");
    int iy = OGR_FD_GetFieldIndex(fd, "row0");
    int n = 0;
    OGRFeatureH f;
    while ((f = OGR_L_GetNextFeature(l))) {
        if (n < cap && OGR_F_GetGeometryRef(f)) {
            trow *r = &t[n++];
            r->col0 = OGR_F_GetFieldAsInteger(f, ix), r->row0 = OGR_F_GetFieldAsInteger(f, iy);
            r->valid = OGR_F_GetFieldAsInteger(f, iv);
            r->rank = OGR_F_IsFieldSetAndNotNull(f, ir) ? OGR_F_GetFieldAsInteger(f, ir) : 0;
            r->change = OGR_F_IsFieldSetAndNotNull(f, ic) ? OGR_F_GetFieldAsDouble(f, ic) : NAN;
        }
        OGR_F_Destroy(f);
    }
    GDALClose(d);
    return n;
}

/* The distance sums: 0 for one direction, 1 orthogonal, 2 opposite, NaN from either side, the
 * same whatever the grouping of the bands. */
TEST(change_distance_sums)
{
    enum { D = 5, N = 6 };
    /* [D, N] band-major: patch 0 a = b, 1 b = 3a, 2 orthogonal, 3 opposite, 4 NaN in b, 5 zero */
    float a[D * N], b[D * N];
    for (int d = 0; d < D; d++) {
        float x = (float)(d + 1);
        a[d * N + 0] = x, b[d * N + 0] = x;
        a[d * N + 1] = x, b[d * N + 1] = 3 * x;
        a[d * N + 2] = d == 0, b[d * N + 2] = d == 1;
        a[d * N + 3] = x, b[d * N + 3] = -x;
        a[d * N + 4] = x, b[d * N + 4] = d == 2 ? NAN : x;
        a[d * N + 5] = 0, b[d * N + 5] = 0;
    }
    float out[2][N];
    for (int g = 0; g < 2; g++) {
        double dot[N] = { 0 }, na[N] = { 0 }, nb[N] = { 0 };
        int step = g ? 2 : D;
        for (int b0 = 0; b0 < D; b0 += step) {
            int k = D - b0 < step ? D - b0 : step;
            float pa[D * N], pb[D * N];
            memcpy(pa, a + b0 * N, sizeof(float) * k * N);
            memcpy(pb, b + b0 * N, sizeof(float) * k * N);
            dm_sim_pair_accumulate(pa, pb, k, N, dot, na, nb);
        }
        dm_sim_distance_finish(dot, na, nb, N, out[g]);
    }
    CHECKF(fabsf(out[0][0]) < 1e-6f && fabsf(out[0][1]) < 1e-6f, "%g %g", out[0][0], out[0][1]);
    CHECKF(fabsf(out[0][2] - 1) < 1e-6f && fabsf(out[0][3] - 2) < 1e-6f, "%g %g", out[0][2],
           out[0][3]);
    CHECK(isnan(out[0][4]) && out[0][5] == 0);
    for (int i = 0; i < N; i++)
        CHECKF((isnan(out[0][i]) && isnan(out[1][i])) || out[0][i] == out[1][i], "patch %d", i);
}

/* Two runs of one date: distance 0 everywhere; the outputs, the COG, the metadata. */
TEST(change_same_date_is_zero)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], args[4096];
    snprintf(p, sizeof p, "%s/a.tif", t);
    CHECK(make_scene(p, S, 0, 0) == 0);
    snprintf(p, sizeof p, "%s/a2.tif", t);
    CHECK(make_scene(p, S, 0, 0) == 0);
    CHECKF(features(t, "a", NULL, &out) == 0, "%s", out);
    CHECKF(features(t, "a2", NULL, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "-q %s/a %s/a2 -o %s/c", t, t, t);
    CHECKF(change(args, &out) == 0 && !out[0], "%s", out);
    snprintf(p, sizeof p, "%s/c/change.tif", t);
    int w, h, nan = 0;
    float *v = read_band(p, &w, &h);
    CHECK(v && w == 16 && h == 16);
    double mx = 0;
    for (int i = 0; v && i < w * h; i++) {
        nan += isnan(v[i]);
        if (!isnan(v[i]) && fabs(v[i]) > mx)
            mx = fabs(v[i]);
    }
    free(v);
    CHECKF(nan == 0 && mx <= 1e-6, "%d NaN, max distance %g", nan, mx);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -m osgeo_utils.samples."
             "validate_cloud_optimized_geotiff %s", p);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "is a valid cloud optimized"), "%s", out);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d != NULL);
    if (d) {
        double gt[6];
        GDALGetGeoTransform(d, gt);
        CHECKF(fabs(gt[0] - GT[0]) < 1e-6 && fabs(gt[1] - 9.6) < 1e-9, "%g %g", gt[0], gt[1]);
        CHECK(strstr(GDALGetProjectionRef(d), "32631") != NULL);
        GDALRasterBandH b = GDALGetRasterBand(d, 1);
        int has = 0;
        CHECK(GDALGetRasterCount(d) == 1 && GDALGetRasterDataType(b) == GDT_Float32);
        CHECK(isnan(GDALGetRasterNoDataValue(b, &has)) && has);
        CHECK(!strcmp(GDALGetDescription(b), "cosine_distance"));
        const char *a = GDALGetMetadataItem(d, "DINOMAP_CHANGE_A", NULL);
        const char *bb = GDALGetMetadataItem(d, "DINOMAP_CHANGE_B", NULL);
        const char *sha = GDALGetMetadataItem(d, "DINOMAP_WEIGHTS_SHA256", NULL);
        CHECKF(a && bb && strstr(a, "a") && strstr(bb, "a2"), "%s %s", a, bb);
        CHECK(sha && strlen(sha) == 64 && GDALGetMetadataItem(d, "DINOMAP_LAYER", NULL));
        GDALClose(d);
    }
    snprintf(p, sizeof p, "%s/c/change.qml", t);
    CHECK(dm_exists(p));
    /* A a run folder: its 16 tiles of 4×4 patches, all valid, ranked 1..16 */
    trow r[64];
    snprintf(p, sizeof p, "%s/c/change_tiles.gpkg", t);
    int n = read_tiles(p, r, 64), ranks = 0;
    CHECKF(n == 16, "%d tiles", n);
    for (int i = 0; i < n; i++) {
        CHECK(r[i].valid == 16 && fabs(r[i].change) <= 1e-6);
        ranks |= 1 << (r[i].rank - 1);
    }
    CHECKF(ranks == 0xffff, "ranks %x", ranks);
    snprintf(p, sizeof p, "%s/c/change_tiles.part.gpkg", t);
    CHECK(!dm_exists(p));
    /* two features.tif: squares of 32 patches, one here */
    snprintf(args, sizeof args, "%s/a/features.tif %s/a2/features.tif -o %s/c2", t, t, t);
    CHECKF(change(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/c2/change_tiles.gpkg", t);
    n = read_tiles(p, r, 64);
    CHECKF(n == 1 && r[0].valid == 256 && r[0].rank == 1, "%d tiles", n);
}

/* A changed region ranks first; a nodata block of one date is NaN and its tile unranked. */
TEST(change_ranks_the_changed_tiles)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], args[4096];
    snprintf(p, sizeof p, "%s/a.tif", t);
    CHECK(make_scene(p, S, 0, 0) == 0);
    snprintf(p, sizeof p, "%s/b.tif", t);
    CHECK(make_scene(p, S, 1, 1) == 0);
    CHECKF(features(t, "a", NULL, &out) == 0, "%s", out);
    CHECKF(features(t, "b", NULL, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "-q %s/a %s/b -o %s/c", t, t, t);
    CHECKF(change(args, &out) == 0 && !out[0], "%s", out);
    snprintf(p, sizeof p, "%s/c/change.tif", t);
    int w, h, bad_nan = 0;
    float *v = read_band(p, &w, &h);
    CHECK(v && w == 16 && h == 16);
    double in_lo = INFINITY, out_hi = 0;
    for (int y = 0; v && y < h; y++)
        for (int x = 0; x < w; x++) {
            float d = v[y * w + x];
            int hole = x < 4 && y >= 12, chg = x >= 8 && y < 4;
            if (hole != !!isnan(d))
                bad_nan++;
            else if (chg && d < in_lo)
                in_lo = d;
            else if (!chg && !hole && d > out_hi)
                out_hi = d;
        }
    free(v);
    CHECKF(bad_nan == 0, "%d patches with the wrong nodata", bad_nan);
    trow r[64];
    snprintf(p, sizeof p, "%s/c/change_tiles.gpkg", t);
    int n = read_tiles(p, r, 64);
    CHECKF(n == 16, "%d tiles", n);
    double top = INFINITY, rest = 0;
    for (int i = 0; i < n; i++) {
        int chg = r[i].col0 >= 8 && r[i].row0 == 0, hole = r[i].col0 == 0 && r[i].row0 == 12;
        if (hole) {
            CHECKF(r[i].rank == 0 && isnan(r[i].change) && r[i].valid == 0, "rank %d",
                   r[i].rank);
        } else if (chg) {
            CHECKF(r[i].rank == 1 || r[i].rank == 2, "changed tile %d,%d ranked %d",
                   r[i].col0, r[i].row0, r[i].rank);
            top = r[i].change < top ? r[i].change : top;
        } else {
            CHECKF(r[i].rank > 2 && r[i].rank <= 15, "rank %d", r[i].rank);
            rest = r[i].change > rest ? r[i].change : rest;
        }
    }
    CHECKF(top > 3 * rest && top > 0.05, "changed tiles %g, others at most %g", top, rest);
    printf("change: changed tiles >= %.4f, others <= %.4f; patches %.4f vs %.4f\n", top, rest,
           in_lo, out_hi);
}

/* Other grids, other models, missing inputs, usage: one line, the exit code, nothing written. */
TEST(change_refuses_what_it_cannot_compare)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], q[1200], args[4096];
    snprintf(p, sizeof p, "%s/a.tif", t);
    CHECK(make_scene(p, S, 0, 0) == 0);
    snprintf(p, sizeof p, "%s/n.tif", t);
    CHECK(make_scene(p, 192, 0, 0) == 0);
    CHECKF(features(t, "a", NULL, &out) == 0, "%s", out);
    CHECKF(features(t, "n", NULL, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s/a %s/n -o %s/c", t, t, t);
    CHECKF(change(args, &out) == 1 && strstr(out, "dinomap: change: ") && strstr(out, "same grid")
           && strstr(out, "16×16") && strstr(out, "12×16"), "%s", out);
    snprintf(p, sizeof p, "%s/c", t);
    CHECK(dm_dir_empty_or_missing(p));
    /* the same grid, another layer: a copy of the features with another DINOMAP_LAYER */
    snprintf(p, sizeof p, "%s/a/features.tif", t);
    snprintf(q, sizeof q, "%s/l.tif", t);
    GDALDatasetH s = GDALOpen(p, GA_ReadOnly);
    CHECK(s != NULL);
    GDALDatasetH d = s ? GDALCreateCopy(GDALGetDriverByName("GTiff"), q, s, 0, NULL, NULL, NULL)
                       : NULL;
    CHECK(d != NULL);
    if (d) {
        GDALSetMetadataItem(d, "DINOMAP_LAYER", "7 (output of block 7 through the final norm)",
                            NULL);
        GDALClose(d);
    }
    if (s)
        GDALClose(s);
    snprintf(args, sizeof args, "%s/a %s -o %s/c", t, q, t);
    CHECKF(change(args, &out) == 1 && strstr(out, "DINOMAP_LAYER") && strstr(out, "layer"),
           "%s", out);
    snprintf(p, sizeof p, "%s/c", t);
    CHECK(dm_dir_empty_or_missing(p));
    /* missing, not features, usage */
    snprintf(args, sizeof args, "%s/a %s/nope -o %s/c", t, t, t);
    CHECKF(change(args, &out) == 1 && strstr(out, "nope: no such file"), "%s", out);
    snprintf(args, sizeof args, "%s/a %s/a.tif -o %s/c", t, t, t);
    CHECKF(change(args, &out) == 1 && strstr(out, "a.tif"), "%s", out);
    CHECK(dm_dir_empty_or_missing(p));
    snprintf(args, sizeof args, "%s/a %s/a", t, t);
    CHECKF(change(args, &out) == 2 && strstr(out, "missing -o"), "%s", out);
    snprintf(args, sizeof args, "%s/a -o %s/c", t, t);
    CHECKF(change(args, &out) == 2 && strstr(out, "two features outputs"), "%s", out);
    CHECKF(change("--bogus", &out) == 2, "%s", out);
    CHECKF(change("--help", &out) == 0 && strstr(out, "usage: dinomap change A B"), "%s", out);
    CHECK(dm_dir_empty_or_missing(p));
}

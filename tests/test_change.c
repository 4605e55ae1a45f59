/* tests/test_change.c — `dinomap change A B` as a user runs it, on a 256×256 synthetic scene
 * (smooth dark green fields) mapped with tiles of 64 + 2 × 16 px: two runs of the same date are
 * unchanged (distance 0 everywhere); a second date whose top-right 128×64 px became bright
 * stripes ranks those two tiles first, and a nodata block of the second date stays NaN; -co and
 * --max-cog-gib shape change.tif as other products; B on another grid is warped onto A's: the
 * second date's imagery reprojected to EPSG:3857 and mapped there (int8) gives nearly the
 * same-grid map, copies of A's features on shifted grids give exactly the vectors the shift
 * says (bilinear at patch centres, nearest), another extent leaves NaN where B is absent; the
 * same CRS written as other WKT is not warped; no overlap, no CRS and other models are refused. */
#include <cpl_conv.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gis/gis.h"
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

/* The first date (changed: with the stripes) mapped into t/a; feat: its features.tif. */
static int map_a(const char *t, int changed, char *feat, size_t n, const char **out)
{
    snprintf(feat, n, "%s/a.tif", t);
    if (make_scene(feat, S, changed, 0) != 0) {
        *out = "cannot write the scene";
        return -1;
    }
    snprintf(feat, n, "%s/a/features.tif", t);
    return features(t, "a", NULL, out);
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

/* A copy of a features raster as a VRT over its pixels with other georeferencing or metadata
 * (gdal_translate's ARGS: -a_ullr, -a_srs, -mo, -b, -srcwin). */
static int vrt_copy(const char *src, const char *dst, const char *args, const char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "gdal_translate -q -of VRT %s '%s' '%s'", args, src, dst);
    return dm_run(cmd, out);
}

/* gdal_translate -a_ullr for a copy of the features whose grid is A's moved by (dx, dy)
 * patches east and north. */
static void shifted(char *buf, size_t n, double dx, double dy, int w, int h)
{
    double p = 16 * GT[1], x0 = GT[0] + dx * p, y0 = GT[3] + dy * p;
    snprintf(buf, n, "-a_ullr %.17g %.17g %.17g %.17g", x0, y0, x0 + w * p, y0 - h * p);
}

static int set_meta(const char *path, const char *key, const char *value)
{
    GDALDatasetH d = GDALOpen(path, GA_Update);
    if (!d)
        return -1;
    CPLErr e = key ? GDALSetMetadataItem(d, key, value, NULL) : GDALSetProjection(d, value);
    GDALClose(d);
    return e == CE_None ? 0 : -1;
}

/* Every band of a float32 features raster: [D, h, w]. */
static float *read_feats(const char *path, int *w, int *h, int *D)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d), *D = GDALGetRasterCount(d);
    float *v = malloc(sizeof(float) * (size_t)*w * *h * *D);
    if (v && GDALDatasetRasterIO(d, GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32, *D, NULL, 0,
                                 0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

/* 1 − cos of patches i and j of f [D, plane]. */
static double dist(const float *f, int D, size_t plane, size_t i, size_t j)
{
    double dot = 0, a = 0, b = 0;
    for (int d = 0; d < D; d++) {
        double x = f[d * plane + i], y = f[d * plane + j];
        dot += x * y, a += x * x, b += y * y;
    }
    return 1 - dot / sqrt(a * b);
}

static int same_values(const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        if (!(a[i] == b[i] || (isnan(a[i]) && isnan(b[i]))))
            return 0;
    return 1;
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
        const char *grid = GDALGetMetadataItem(d, "DINOMAP_CHANGE_GRID", NULL);
        CHECKF(grid && strstr(grid, "not warped"), "%s", grid ? grid : "no DINOMAP_CHANGE_GRID");
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

/* A changed region ranks first; a nodata block of one date is NaN and its tile unranked; -co
 * and --max-cog-gib give the same values in the layout asked for. */
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
    for (int y = 0; y < h; y++)
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
    CHECKF(bad_nan == 0, "%d patches with the wrong nodata", bad_nan);
    trow r[64], rb[64];
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
    /* -co: the creation option reaches change.tif; the values are the same */
    snprintf(args, sizeof args, "-q -co COMPRESS=LZW %s/a %s/b -o %s/cz", t, t, t);
    CHECKF(change(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/cz/change.tif", t);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    const char *cmp = d ? GDALGetMetadataItem(d, "COMPRESSION", "IMAGE_STRUCTURE") : NULL;
    CHECKF(cmp && !strcmp(cmp, "LZW"), "COMPRESSION %s", cmp ? cmp : "none");
    if (d)
        GDALClose(d);
    float *vz = read_band(p, &w, &h);
    CHECK(vz && same_values(v, vz, 256));
    free(vz);
    /* --max-cog-gib below the raster's size: change.vrt over block COGs, the same values and
     * ranks */
    snprintf(args, sizeof args, "--max-cog-gib 0.0000001 %s/a %s/b -o %s/cb", t, t, t);
    CHECKF(change(args, &out) == 0 && strstr(out, "change.vrt change_blocks/"), "%s", out);
    snprintf(p, sizeof p, "%s/cb/change.tif", t);
    CHECK(!dm_exists(p));
    snprintf(p, sizeof p, "%s/cb/change_blocks", t);
    CHECK(!dm_dir_empty_or_missing(p));
    snprintf(p, sizeof p, "%s/cb/change.vrt", t);
    float *vb = read_band(p, &w, &h);
    CHECK(vb && w == 16 && h == 16 && same_values(v, vb, 256));
    free(vb);
    free(v);
    snprintf(p, sizeof p, "%s/cb/change_tiles.gpkg", t);
    CHECK(read_tiles(p, rb, 64) == n);
    for (int i = 0; i < n; i++)
        CHECKF(rb[i].rank == r[i].rank, "tile %d: rank %d, %d from one COG", i, rb[i].rank,
               r[i].rank);
}

/* The second date's imagery reprojected to EPSG:3857 and mapped there (int8 features, 11.9 m
 * patches): warped onto A's grid, the map is nearly the one of the same imagery mapped on A's
 * grid; bilinear and nearest both rank the changed tiles first. */
TEST(change_warps_another_crs)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], args[4096];
    snprintf(p, sizeof p, "%s/a.tif", t);
    CHECK(make_scene(p, S, 0, 0) == 0);
    snprintf(p, sizeof p, "%s/b.tif", t);
    CHECK(make_scene(p, S, 1, 1) == 0);
    snprintf(args, sizeof args, "gdalwarp -q -t_srs EPSG:3857 -r bilinear %s/b.tif %s/m.tif", t,
             t);
    CHECKF(dm_run(args, &out) == 0, "%s", out);
    CHECKF(features(t, "a", NULL, &out) == 0, "%s", out);
    CHECKF(features(t, "b", NULL, &out) == 0, "%s", out);
    CHECKF(features(t, "m", "--quantize int8", &out) == 0, "%s", out);
    snprintf(args, sizeof args, "-q %s/a %s/b -o %s/same", t, t, t);
    CHECKF(change(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s/a %s/m -o %s/w", t, t, t);
    CHECKF(change(args, &out) == 0 && strstr(out, "was warped onto A's") &&
           strstr(out, "EPSG:3857") && strstr(out, "EPSG:32631") && strstr(out, "bilinear"),
           "%s", out);
    snprintf(args, sizeof args, "-q -r nearest %s/a %s/m -o %s/wn", t, t, t);
    CHECKF(change(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/w/change.tif", t);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    const char *grid = d ? GDALGetMetadataItem(d, "DINOMAP_CHANGE_GRID", NULL) : NULL;
    CHECKF(grid && strstr(grid, "EPSG:3857") && strstr(grid, "warped"), "%s", grid);
    if (d)
        GDALClose(d);
    int w, h;
    snprintf(p, sizeof p, "%s/same/change.tif", t);
    float *ref = read_band(p, &w, &h), *m[2];
    snprintf(p, sizeof p, "%s/w/change.tif", t);
    m[0] = read_band(p, &w, &h);
    snprintf(p, sizeof p, "%s/wn/change.tif", t);
    m[1] = read_band(p, &w, &h);
    CHECK(ref && m[0] && m[1] && w == 16 && h == 16);
    double moved = 0;
    for (int k = 0; k < 2; k++) {
        double diff = 0, chg_lo = INFINITY, rest_hi = 0;
        int bad = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                float v = m[k][y * w + x], r0 = ref[y * w + x];
                int chg = x >= 8 && y < 4;
                /* B's nodata block (patches x < 4, y >= 12): NaN inside; valid one patch away
                 * (the resampling reaches one patch into it) */
                if ((x < 3 && y >= 13 && !isnan(v)) || ((x >= 5 || y <= 10) && isnan(v)))
                    bad++;
                if (isnan(v) || isnan(r0))
                    continue;
                diff = fmax(diff, fabs(v - r0));
                if (chg)
                    chg_lo = fmin(chg_lo, v);
                else if (x >= 5 || y <= 10)
                    rest_hi = fmax(rest_hi, v);
                if (k)
                    moved = fmax(moved, fabs(v - m[0][y * w + x]));
            }
        printf("change warped from EPSG:3857 (%s): changed >= %.4f, others <= %.4f, "
               "|warped - same grid| <= %.4f\n", k ? "nearest" : "bilinear", chg_lo, rest_hi,
               diff);
        CHECKF(bad == 0, "%s: %d patches with the wrong nodata", k ? "nearest" : "bilinear",
               bad);
        /* measured: changed >= 1.10, others <= 0.11, within 0.083 of the same-grid map */
        CHECKF(chg_lo > 0.8 && rest_hi < 0.2 && diff < 0.15, "%s: changed >= %g, others <= %g, "
               "off the same-grid map by %g", k ? "nearest" : "bilinear", chg_lo, rest_hi, diff);
    }
    CHECKF(moved > 1e-3, "nearest and bilinear give the same map (%g)", moved);
    free(ref), free(m[0]), free(m[1]);
    trow r[64];
    snprintf(p, sizeof p, "%s/w/change_tiles.gpkg", t);
    int n = read_tiles(p, r, 64);
    CHECKF(n == 16, "%d tiles", n);
    double top = INFINITY, rest = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].col0 >= 8 && r[i].row0 == 0) {
            CHECKF(r[i].rank == 1 || r[i].rank == 2, "changed tile %d,%d ranked %d", r[i].col0,
                   r[i].row0, r[i].rank);
            top = fmin(top, r[i].change);
        } else if (!isnan(r[i].change)) {
            rest = fmax(rest, r[i].change);
        }
    }
    CHECKF(top > 5 * rest, "changed tiles %g, others at most %g", top, rest);
}

/* Copies of A's features on other grids of its CRS: the warped vectors are exactly those the
 * shift says (bilinear at B's patch centres; nearest at any shift), NaN where B is absent. */
TEST(change_warps_a_shifted_grid)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], q[1200], args[4096], sh[400];
    CHECKF(map_a(t, 1, p, sizeof p, &out) == 0, "%s", out);
    int w, h, D;
    float *f = read_feats(p, &w, &h, &D);
    CHECK(f && w == 16 && h == 16 && D == 128);
    size_t plane = (size_t)w * h;
    /* B = A moved 3 patches east and 2 north (exactly on patch centres), and 3.3 east, 2.2
     * north: A's patch (col i, row j) sees B's vector of A's patch (i - 3, j + 2) */
    for (int k = 0; k < 3; k++) {
        double dx = k ? 3.3 : 3, dy = k ? 2.2 : 2;
        shifted(sh, sizeof sh, dx, dy, w, h);
        snprintf(q, sizeof q, "%s/s%d.vrt", t, k);
        CHECKF(vrt_copy(p, q, sh, &out) == 0, "%s", out);
        int nearest = k == 1;
        snprintf(args, sizeof args, "%s %s/a %s -o %s/c%d", nearest ? "-r nearest" : "", t, q,
                 t, k);
        CHECKF(change(args, &out) == 0 && strstr(out, "another grid") &&
               strstr(out, nearest ? "nearest patch" : "bilinear"), "%s", out);
        snprintf(q, sizeof q, "%s/c%d/change.tif", t, k);
        int cw, ch, bad = 0;
        float *v = read_band(q, &cw, &ch);
        CHECK(v && cw == w && ch == h);
        double worst = 0, off = 0;
        for (int j = 0; j < h; j++)
            for (int i = 0; i < w; i++) {
                float d = v[j * w + i];
                if (i < 3 || j > h - 3) {
                    bad += !isnan(d);
                    continue;
                }
                if (isnan(d)) {
                    bad++;
                    continue;
                }
                double e = dist(f, D, plane, (size_t)j * w + i, (size_t)(j + 2) * w + i - 3);
                if (k == 2)
                    off = fmax(off, fabs(d - e)); /* bilinear between B's centres */
                else
                    worst = fmax(worst, fabs(d - e));
            }
        free(v);
        CHECKF(bad == 0, "shift %g,%g: %d patches with the wrong nodata", dx, dy, bad);
        CHECKF(worst <= 1e-5, "shift %g,%g (%s): off the shifted vectors by %g", dx, dy,
               nearest ? "nearest" : "bilinear", worst);
        if (k == 2)
            CHECKF(off > 1e-3, "bilinear between patch centres gave the nearest vectors (%g)",
                   off);
    }
    /* B = the first 12 columns of A: the same vectors there, NaN beyond */
    snprintf(q, sizeof q, "%s/part.vrt", t);
    CHECKF(vrt_copy(p, q, "-srcwin 0 0 12 16", &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s/a %s -o %s/cp", t, q, t);
    CHECKF(change(args, &out) == 0 && strstr(out, "12×16"), "%s", out);
    snprintf(q, sizeof q, "%s/cp/change.tif", t);
    int cw, ch, bad = 0;
    float *v = read_band(q, &cw, &ch);
    CHECK(v && cw == 16 && ch == 16);
    for (int i = 0; i < 256; i++)
        bad += i % 16 < 12 ? !(fabsf(v[i]) <= 1e-6f) : !isnan(v[i]);
    free(v);
    free(f);
    CHECKF(bad == 0, "%d patches wrong where B is the first 12 columns of A", bad);
}

/* One CRS written two ways is one grid: no warping, distance 0. */
TEST(change_same_crs_other_wkt)
{
    static const char *defs[] = { "EPSG:32631", "+proj=utm +zone=31 +datum=WGS84 +units=m "
                                  "+no_defs", "EPSG:4326", "OGC:CRS84", "EPSG:32632",
                                  "EPSG:3857" };
    char *wkt[7] = { 0 };
    for (int i = 0; i < 6; i++) {
        OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
        CHECK(OSRSetFromUserInput(s, defs[i]) == OGRERR_NONE);
        CHECK(OSRExportToWkt(s, &wkt[i]) == OGRERR_NONE);
        if (i == 0) {
            const char *o[] = { "FORMAT=WKT2_2019", NULL };
            CHECK(OSRExportToWktEx(s, &wkt[6], o) == OGRERR_NONE);
        }
        OSRDestroySpatialReference(s);
    }
    CHECK(strcmp(wkt[0], wkt[1]) && strcmp(wkt[0], wkt[6]) && strcmp(wkt[2], wkt[3]));
    CHECK(dm_gis_crs_same(wkt[0], wkt[1]) == 1 && dm_gis_crs_same(wkt[0], wkt[6]) == 1);
    CHECK(dm_gis_crs_same(wkt[2], wkt[3]) == 1); /* lat,lon and lon,lat: one raster grid */
    CHECK(dm_gis_crs_same(wkt[0], wkt[4]) == 0 && dm_gis_crs_same(wkt[0], wkt[5]) == 0);
    CHECK(dm_gis_crs_same("", "") == 1 && dm_gis_crs_same("", wkt[0]) == 0);
    CHECK(dm_gis_crs_same("PROJCS[nonsense", wkt[0]) == -1);
    char lab[400];
    const char *unit;
    dm_gis_crs_label(wkt[5], lab, sizeof lab, &unit);
    CHECKF(strstr(lab, "EPSG:3857") && strstr(lab, "Pseudo-Mercator") && !strcmp(unit, " m"),
           "%s%s", lab, unit);
    dm_gis_crs_label(wkt[2], lab, sizeof lab, &unit);
    CHECKF(strstr(lab, "EPSG:4326") && !strcmp(unit, "°"), "%s%s", lab, unit);
    dm_gis_crs_label("", lab, sizeof lab, &unit);
    CHECK(!strcmp(lab, "no CRS"));
    for (int i = 0; i < 7; i++)
        CPLFree(wkt[i]);
    /* A's features with the CRS given as a PROJ string: other WKT, the same grid */
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], q[1200], args[4096];
    CHECKF(map_a(t, 0, p, sizeof p, &out) == 0, "%s", out);
    snprintf(q, sizeof q, "%s/p.vrt", t);
    CHECKF(vrt_copy(p, q, "-a_srs '+proj=utm +zone=31 +datum=WGS84 +units=m +no_defs'", &out)
           == 0, "%s", out);
    GDALDatasetH da = GDALOpen(p, GA_ReadOnly), db = GDALOpen(q, GA_ReadOnly);
    CHECK(da && db);
    CHECKF(strcmp(GDALGetProjectionRef(da), GDALGetProjectionRef(db)), "the same WKT: %s",
           GDALGetProjectionRef(db));
    GDALClose(da);
    GDALClose(db);
    snprintf(args, sizeof args, "%s/a %s -o %s/c", t, q, t);
    CHECKF(change(args, &out) == 0 && !strstr(out, "warped"), "%s", out);
    snprintf(p, sizeof p, "%s/c/change.tif", t);
    int w, h, bad = 0;
    float *v = read_band(p, &w, &h);
    CHECK(v && w == 16 && h == 16);
    for (int i = 0; i < w * h; i++)
        bad += !(fabsf(v[i]) <= 1e-6f);
    free(v);
    CHECKF(bad == 0, "%d patches not 0", bad);
}

/* Other models, no overlap, no CRS, missing inputs, usage: one line, the exit code, nothing
 * written. */
TEST(change_refuses_what_it_cannot_compare)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1200], q[1200], args[4096], sh[400];
    CHECKF(map_a(t, 0, p, sizeof p, &out) == 0, "%s", out);
    char c[1200];
    snprintf(c, sizeof c, "%s/c", t);
    /* other models or settings, whatever the grid (the last one is 100 km away too) */
    char bands[400] = "";
    for (int b = 1; b <= 64; b++)
        snprintf(bands + strlen(bands), sizeof bands - strlen(bands), "-b %d ", b);
    shifted(sh, sizeof sh, 10000 / 9.6, 0, 16, 16);
    char far_layer[600];
    snprintf(far_layer, sizeof far_layer, "%s -mo 'DINOMAP_LAYER=7 (output of block 7 through "
             "the final norm)'", sh);
    const struct { const char *args, *says[2]; } model[] = {
        { "-mo 'DINOMAP_LAYER=7 (output of block 7 through the final norm)'",
          { "DINOMAP_LAYER", "layer (--layer)" } },
        { "-mo DINOMAP_WEIGHTS_SHA256=0000000000000000000000000000000000000000000000000000000000"
          "000000", { "DINOMAP_WEIGHTS_SHA256", "weights (-m)" } },
        { "-mo 'DINOMAP_NORMALIZATION=lvd mean=0.430,0.411,0.296 std=0.213,0.156,0.143'",
          { "DINOMAP_NORMALIZATION", "normalization" } },
        { bands, { "128 feature bands", " 64" } },
        { far_layer, { "DINOMAP_LAYER", "layer" } },
    };
    for (int i = 0; i < 5; i++) {
        snprintf(q, sizeof q, "%s/m%d.vrt", t, i);
        CHECKF(vrt_copy(p, q, model[i].args, &out) == 0, "%s", out);
        snprintf(args, sizeof args, "%s/a %s -o %s", t, q, c);
        CHECKF(change(args, &out) == 1 && strstr(out, "dinomap: change: ") &&
               strstr(out, model[i].says[0]) && strstr(out, model[i].says[1]), "%s", out);
        CHECK(dm_dir_empty_or_missing(c));
    }
    /* the same model 100 km away: no overlap */
    snprintf(q, sizeof q, "%s/far.vrt", t);
    CHECKF(vrt_copy(p, q, sh, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s/a %s -o %s", t, q, c);
    CHECKF(change(args, &out) == 1 && strstr(out, "do not overlap") && strstr(out, "A covers"),
           "%s", out);
    CHECK(dm_dir_empty_or_missing(c));
    /* on another grid without a CRS */
    shifted(sh, sizeof sh, 3, 0, 16, 16);
    snprintf(q, sizeof q, "%s/nocrs.vrt", t);
    CHECKF(vrt_copy(p, q, sh, &out) == 0, "%s", out);
    CHECK(set_meta(q, NULL, "") == 0);
    snprintf(args, sizeof args, "%s/a %s -o %s", t, q, c);
    CHECKF(change(args, &out) == 1 && strstr(out, "no CRS"), "%s", out);
    CHECK(dm_dir_empty_or_missing(c));
    /* usage: -r, -co, --max-cog-gib, -of; nothing written */
    static const char *usage[][2] = { { "-r cubic", "bilinear or nearest" },
                                      { "-co TILED=NO", "TILED" },
                                      { "--max-cog-gib x", "--max-cog-gib" },
                                      { "-of Zarr", "of" } };
    for (int i = 0; i < 4; i++) {
        snprintf(args, sizeof args, "%s %s/a %s/a -o %s", usage[i][0], t, t, c);
        CHECKF(change(args, &out) == 2 && strstr(out, usage[i][1]), "%s: %s", usage[i][0], out);
        CHECK(dm_dir_empty_or_missing(c));
    }
    /* missing, not features, usage */
    snprintf(args, sizeof args, "%s/a %s/nope -o %s", t, t, c);
    CHECKF(change(args, &out) == 1 && strstr(out, "nope: no such file"), "%s", out);
    snprintf(args, sizeof args, "%s/a %s/a.tif -o %s", t, t, c);
    CHECKF(change(args, &out) == 1 && strstr(out, "a.tif"), "%s", out);
    CHECK(dm_dir_empty_or_missing(c));
    snprintf(args, sizeof args, "%s/a %s/a", t, t);
    CHECKF(change(args, &out) == 2 && strstr(out, "missing -o"), "%s", out);
    snprintf(args, sizeof args, "%s/a -o %s", t, c);
    CHECKF(change(args, &out) == 2 && strstr(out, "two features outputs"), "%s", out);
    CHECKF(change("--bogus", &out) == 2, "%s", out);
    CHECKF(change("--help", &out) == 0 && strstr(out, "usage: dinomap change A B") &&
           strstr(out, "-r METHOD") && strstr(out, "--max-cog-gib") && strstr(out, "-co"),
           "%s", out);
    CHECK(dm_dir_empty_or_missing(c));
}

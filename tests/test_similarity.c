/* tests/test_similarity.c — `dinomap similarity` as a user runs it, on a synthetic mosaic of three
 * covers side by side (smooth dark green, bright stripes, high-contrast noise; 64 px = 4 patches
 * wide each): a point inside a cover is more similar to its own cover than to the others, and 1
 * at its own patch; the same point in EPSG:4326 gives the same map; a query AOI over the cover
 * ranks alike; a rerun with another point recomputes no tile and rebuilds only similarity.tif;
 * --features on the run's own features (float32, int8, blocks + VRT) gives the run's values; the
 * product in an INI run with chm; bad inputs: one prefixed line, the exit code, nothing left;
 * and the cosine sums, whatever the grouping of the bands. */
#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <gdal.h>
#include <limits.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../heads/heads.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

#define W 192
#define H 128
static const double GT[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };

/* A patch's centre in the mosaic's CRS (EPSG:32631). */
static double cx(int col) { return GT[0] + (col * 16 + 8) * GT[1]; }
static double cy(int row) { return GT[3] + (row * 16 + 8) * GT[5]; }

static const char *tiny(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }

/* The three covers: columns 0-3 of the feature grid, 4-7 and 8-11. */
static int make_covers(const char *path)
{
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, W, H, 3, GDT_Byte, NULL);
    if (!d)
        return -1;
    GDALSetGeoTransform(d, (double *)GT);
    dm_set_epsg(d, 32631);
    static uint8_t px[3 * W * H];
    static const int green[3] = { 40, 90, 40 };
    for (int b = 0; b < 3; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                uint32_t r = dm_hash32((uint32_t)(b * W * H + y * W + x) * 2654435761u + 7);
                int v = x < 64 ? green[b] + (int)(r % 8)         /* smooth */
                        : x < 128 ? ((x / 4) % 2 ? 230 : 30)      /* stripes */
                                  : (int)(r % 256);               /* noise */
                px[(size_t)b * W * H + (size_t)y * W + x] = (uint8_t)v;
            }
    CPLErr e = GDALDatasetRasterIO(d, GF_Write, 0, 0, W, H, px, W, H, GDT_Byte, 3, NULL, 0, 0, 0);
    GDALClose(d);
    return e == CE_None ? 0 : -1;
}

/* Band 1 of a raster as float32 [h, w] (malloc'd), its size and geotransform; NULL: unreadable. */
static float *read_band(const char *path, int *w, int *h, double gt[6])
{
    GDALAllRegister();
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d);
    if (gt)
        GDALGetGeoTransform(d, gt);
    float *v = malloc(sizeof(float) * (size_t)*w * *h);
    if (v && GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32,
                          0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

/* A metadata item of a raster into buf ("" when absent). */
static void meta(const char *path, const char *key, char *buf, size_t n)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    const char *v = d ? GDALGetMetadataItem(d, key, NULL) : NULL;
    snprintf(buf, n, "%s", v ? v : "");
    if (d)
        GDALClose(d);
}

/* The mean similarity over each cover's columns of the 12×8 map. */
static void cover_means(const float *s, double m[3])
{
    for (int c = 0; c < 3; c++) {
        double sum = 0;
        for (int y = 0; y < 8; y++)
            for (int x = c * 4; x < c * 4 + 4; x++)
                sum += s[y * 12 + x];
        m[c] = sum / 32;
    }
}

/* max |a - b| over two maps of the same size (NaN against a number: infinite). */
static double max_diff(const char *a, const char *b)
{
    int w1, h1, w2, h2;
    float *x = read_band(a, &w1, &h1, NULL), *y = read_band(b, &w2, &h2, NULL);
    double d = x && y && w1 == w2 && h1 == h2 ? 0 : INFINITY;
    for (int i = 0; d < INFINITY && i < w1 * h1; i++) {
        if (isnan(x[i]) != isnan(y[i]))
            d = INFINITY;
        else if (!isnan(x[i]) && fabs((double)x[i] - y[i]) > d)
            d = fabs((double)x[i] - y[i]);
    }
    free(x), free(y);
    return d;
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return cJSON_Parse(buf);
}

static int nlines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static int sim(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s similarity --progress none %s", dm_bin(), args);
    return dm_run(cmd, out);
}

/* The run of most tests: the covers, tiles of 64 + 2 × 16 px, the query at patch (row, col). */
static int run_at(const char *t, const char *out, int row, int col, const char *more,
                  const char **msg)
{
    char args[4096];
    snprintf(args, sizeof args, "-m %s --at %.17g,%.17g %s/covers.tif -o %s/%s --tile 64 "
             "--halo 16 %s", tiny(), cx(col), cy(row), t, t, out, more ? more : "");
    return sim(args, msg);
}

static double mtime(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
}

/* The sums do not depend on how the bands are grouped (finalize reads as many bands at once as
 * fit in its buffer, which depends on the piece's size), nodata stays nodata, and a vector's
 * similarity to its own direction is 1. */
TEST(similarity_sums_group_independent)
{
    enum { D = 37, N = 11 };
    float v[D * N], q[D];
    double sum[D] = { 0 };
    uint8_t all[N];
    for (int i = 0; i < D * N; i++)
        v[i] = (float)((int)(dm_hash32((uint32_t)i + 99) % 2001) - 1000) / 250.0f;
    v[3] = NAN; /* patch 3 is nodata (band 0) */
    for (int i = 0; i < N; i++)
        all[i] = i == 5; /* the query: patch 5 */
    dm_sim_sum(v, D, N, all, sum);
    CHECK(dm_sim_unit(sum, D, q) == 0);
    float ref[N];
    for (int g = 1; g <= D; g += g < 4 ? 1 : 11) {
        double dot[N] = { 0 }, nn[N] = { 0 };
        for (int b0 = 0; b0 < D; b0 += g) {
            int nb = D - b0 < g ? D - b0 : g;
            dm_sim_accumulate(q + b0, nb, v + (size_t)b0 * N, N, dot, nn);
        }
        float out[N];
        dm_sim_finish(dot, nn, N, out);
        if (g == 1)
            memcpy(ref, out, sizeof out);
        CHECKF(!memcmp(ref, out, sizeof out), "groups of %d bands give other values", g);
    }
    CHECK(isnan(ref[3]) && fabs(ref[5] - 1.0) < 1e-6);
    for (int i = 0; i < N; i++)
        CHECKF(isnan(ref[i]) || (ref[i] >= -1.0f - 1e-6f && ref[i] <= 1.0f + 1e-6f), "%g", ref[i]);
    double zero[D] = { 0 };
    CHECK(dm_sim_unit(zero, D, q) == -1);
}

TEST(similarity_point_ranks_its_cover)
{
    const char *t = dm_test_tmpdir();
    char p[1200], q[1200], v[600], cmd[4096];
    const char *out;
    snprintf(p, sizeof p, "%s/covers.tif", t);
    CHECK(make_covers(p) == 0);
    /* a point in the smooth cover, then one in the stripes */
    for (int k = 0; k < 2; k++) {
        int row = k ? 3 : 4, col = k ? 6 : 1;
        char dir[16];
        snprintf(dir, sizeof dir, "o%d", k);
        CHECKF(run_at(t, dir, row, col, NULL, &out) == 0, "%s", out);
        snprintf(p, sizeof p, "%s/%s/similarity.tif", t, dir);
        int w, h, fw, fh;
        double gt[6], fgt[6];
        float *s = read_band(p, &w, &h, gt);
        snprintf(q, sizeof q, "%s/%s/features.tif", t, dir);
        float *f = read_band(q, &fw, &fh, fgt);
        CHECK(s && f);
        free(f);
        /* the features' grid exactly */
        CHECKF(w == 12 && h == 8 && fw == 12 && fh == 8 && !memcmp(gt, fgt, sizeof gt),
               "%d×%d vs %d×%d", w, h, fw, fh);
        double m[3];
        cover_means(s, m);
        float at = s[row * 12 + col];
        int nan = 0;
        for (int i = 0; i < 96; i++)
            nan += isnan(s[i]);
        free(s);
        CHECKF(fabs(at - 1.0) < 1e-5, "similarity %.9g at the query patch", at);
        CHECKF(!nan, "%d nodata patches", nan);
        int own = k;
        for (int c = 0; c < 3; c++)
            CHECKF(c == own || m[own] > m[c] + 0.1, "cover means %.3f %.3f %.3f (query in %d)",
                   m[0], m[1], m[2], own);
    }
    /* what the raster says of itself */
    snprintf(p, sizeof p, "%s/o0/similarity.tif", t);
    snprintf(q, sizeof q, "%s/o0/features.tif", t);
    meta(p, "DINOMAP_PRODUCT", v, sizeof v);
    CHECKF(!strcmp(v, "similarity"), "%s", v);
    meta(p, "DINOMAP_QUERY_PATCH", v, sizeof v);
    CHECKF(!strncmp(v, "row 4, col 1", 12), "%s", v);
    char sha[100], fsha[100];
    meta(p, "DINOMAP_WEIGHTS_SHA256", sha, sizeof sha);
    meta(q, "DINOMAP_WEIGHTS_SHA256", fsha, sizeof fsha);
    CHECKF(strlen(sha) == 64 && !strcmp(sha, fsha), "%s vs %s", sha, fsha);
    meta(p, "DINOMAP_QUERY_AT", v, sizeof v);
    CHECKF(strstr(v, ","), "%s", v);
    meta(p, "DINOMAP_QUANTIZATION", v, sizeof v);
    CHECK(!v[0]);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d != NULL);
    int has = 0;
    double nd = GDALGetRasterNoDataValue(GDALGetRasterBand(d, 1), &has);
    const char *desc = GDALGetDescription(GDALGetRasterBand(d, 1));
    int dok = desc && !strcmp(desc, "cosine_similarity");
    int ovr = GDALGetOverviewCount(GDALGetRasterBand(d, 1)), nb = GDALGetRasterCount(d);
    GDALDataType ty = GDALGetRasterDataType(GDALGetRasterBand(d, 1));
    GDALClose(d);
    CHECK(has && isnan(nd) && dok && nb == 1 && ty == GDT_Float32 && ovr == 0);
    snprintf(cmd, sizeof cmd, "grep -c singlebandpseudocolor %s/o0/similarity.qml", t);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) == 1, "%s", out);
    /* the Item lists the map and its style, and is valid */
    snprintf(p, sizeof p, "%s/o0/item.json", t);
    cJSON *item = read_json(p);
    const cJSON *as = cJSON_GetObjectItemCaseSensitive(item, "assets");
    const cJSON *sa = cJSON_GetObjectItemCaseSensitive(as, "similarity");
    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(as, "similarity_style");
    int ok = sa && ss &&
             !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(sa, "href")), "similarity.tif") &&
             !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(ss, "href")), "similarity.qml");
    cJSON_Delete(item);
    CHECK(ok);
    char root[PATH_MAX];
    if (!realpath(dm_test_data(), root))
        snprintf(root, sizeof root, "%s", dm_test_data());
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/../stac_validate.py %s/stac %s", root, root, p);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* run.json holds the query */
    snprintf(p, sizeof p, "%s/o0/run.json", t);
    cJSON *rj = read_json(p);
    const cJSON *qp = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(rj, "similarity"), "query_patch");
    ok = cJSON_GetNumberValue(cJSON_GetObjectItem(qp, "row")) == 4 &&
         cJSON_GetNumberValue(cJSON_GetObjectItem(qp, "col")) == 1;
    cJSON_Delete(rj);
    CHECKF(ok, "run.json: no similarity.query_patch row 4 col 1");
}

TEST(similarity_rerun_other_query_recomputes_no_tile)
{
    const char *t = dm_test_tmpdir();
    char p[1200], f[1200], keep[1200], cmd[4096], v[600], log[1200];
    const char *out;
    snprintf(p, sizeof p, "%s/covers.tif", t);
    CHECK(make_covers(p) == 0);
    CHECKF(run_at(t, "o", 4, 1, NULL, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/similarity.tif", t);
    snprintf(f, sizeof f, "%s/o/features.tif", t);
    snprintf(keep, sizeof keep, "%s/first.tif", t);
    snprintf(cmd, sizeof cmd, "cp %s %s", p, keep);
    CHECK(dm_run(cmd, NULL) == 0);
    double ft = mtime(f);
    /* the same command: nothing to do, nothing said */
    CHECKF(run_at(t, "o", 4, 1, NULL, &out) == 0 && !out[0], "%s", out);
    /* the same point in longitude, latitude: the same map, no tile run */
    OGRSpatialReferenceH utm = OSRNewSpatialReference(NULL), ll = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(utm, 32631);
    OSRImportFromEPSG(ll, 4326);
    OSRSetAxisMappingStrategy(utm, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(ll, OAMS_TRADITIONAL_GIS_ORDER);
    OGRCoordinateTransformationH tr = OCTNewCoordinateTransformation(utm, ll);
    double lon = cx(1), lat = cy(4);
    int okt = tr && OCTTransform(tr, 1, &lon, &lat, NULL);
    OCTDestroyCoordinateTransformation(tr);
    OSRDestroySpatialReference(utm), OSRDestroySpatialReference(ll);
    CHECK(okt && lon > 2.9 && lon < 3.1 && lat > 36 && lat < 36.3);
    snprintf(log, sizeof log, "%s/log.jsonl", t);
    char args[4096];
    snprintf(args, sizeof args, "-m %s --at %.12f,%.12f --srs EPSG:4326 %s/covers.tif -o %s/o "
             "--tile 64 --halo 16 --log %s", tiny(), lon, lat, t, t, log);
    CHECKF(sim(args, &out) == 0 && strstr(out, "0 tiles mapped") &&
           strstr(out, "finalize: similarity") && !strstr(out, "finalize: features"), "%s", out);
    CHECKF(max_diff(p, keep) == 0, "EPSG:4326 map differs by %g", max_diff(p, keep));
    meta(p, "DINOMAP_QUERY_SRS", v, sizeof v);
    CHECKF(!strcmp(v, "EPSG:4326"), "%s", v);
    /* another point: only similarity.tif is rebuilt, no tile recomputed */
    snprintf(args, sizeof args, "--log %s", log);
    CHECKF(run_at(t, "o", 3, 6, args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "0 tiles mapped") && !strstr(out, "to run"), "recomputed: %s", out);
    snprintf(cmd, sizeof cmd, "grep -c '\"tiles_to_do\":0' %s && ! grep '\"tiles_run\":[1-9]' %s",
             log, log);
    CHECKF(dm_run(cmd, &out) == 0 && atoi(out) == 2, "%s", out);
    CHECKF(mtime(f) == ft, "features.tif was rewritten");
    double d = max_diff(p, keep);
    CHECKF(d > 0.3 && d < INFINITY, "the map changed by %g only", d);
    int w, h;
    float *s = read_band(p, &w, &h, NULL);
    CHECK(s && fabs(s[3 * 12 + 6] - 1.0) < 1e-5);
    free(s);
    snprintf(p, sizeof p, "%s/o/run.json", t);
    cJSON *rj = read_json(p);
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(rj, "timings");
    const cJSON *qp = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(rj, "similarity"), "query_patch");
    int ok = tm && cJSON_GetNumberValue(cJSON_GetObjectItem(tm, "tiles_run")) == 0 &&
             cJSON_GetNumberValue(cJSON_GetObjectItem(qp, "col")) == 6;
    const char *outs = cJSON_GetStringValue(cJSON_GetObjectItem(rj, "outputs"));
    ok = ok && outs && strstr(outs, "features.tif") && strstr(outs, "similarity.qml");
    cJSON_Delete(rj);
    CHECKF(ok, "run.json: tiles_run, query or outputs wrong");
    /* dinomap finalize keeps the last query */
    snprintf(cmd, sizeof cmd, "%s finalize -q %s/o", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    snprintf(p, sizeof p, "%s/o/similarity.tif", t);
    meta(p, "DINOMAP_QUERY_PATCH", v, sizeof v);
    CHECKF(!strncmp(v, "row 3, col 6", 12), "finalize forgot the query: %s", v);
    ft = mtime(f); /* finalize rebuilt everything */
    /* a query AOI over the smooth cover ranks like a point in it (a GeoJSON in longitude,
     * latitude: the centres of cols 0..3, rows 2..5 are inside, 16 patches) */
    OGRSpatialReferenceH a = OSRNewSpatialReference(NULL), b = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(a, 32631);
    OSRImportFromEPSG(b, 4326);
    OSRSetAxisMappingStrategy(a, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(b, OAMS_TRADITIONAL_GIS_ORDER);
    tr = OCTNewCoordinateTransformation(a, b);
    double xs[5] = { 500001, 500037, 500037, 500001, 500001 };
    double ys[5] = { 3999940, 3999940, 3999980, 3999980, 3999940 };
    okt = tr && OCTTransform(tr, 5, xs, ys, NULL);
    OCTDestroyCoordinateTransformation(tr);
    OSRDestroySpatialReference(a), OSRDestroySpatialReference(b);
    CHECK(okt);
    snprintf(p, sizeof p, "%s/q.geojson", t);
    FILE *g = fopen(p, "w");
    CHECK(g != NULL);
    fprintf(g, "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\","
               "\"properties\":{},\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[");
    for (int i = 0; i < 5; i++)
        fprintf(g, "%s[%.12f,%.12f]", i ? "," : "", xs[i], ys[i]);
    fprintf(g, "]]}}]}\n");
    fclose(g);
    snprintf(args, sizeof args, "-m %s --query-aoi %s %s/covers.tif -o %s/o --tile 64 --halo 16",
             tiny(), p, t, t);
    CHECKF(sim(args, &out) == 0 && strstr(out, "0 tiles mapped"), "%s", out);
    snprintf(p, sizeof p, "%s/o/similarity.tif", t);
    meta(p, "DINOMAP_QUERY_PATCHES", v, sizeof v);
    CHECKF(atoi(v) == 16, "%s patches inside", v);
    s = read_band(p, &w, &h, NULL);
    CHECK(s != NULL);
    double m[3];
    cover_means(s, m);
    free(s);
    CHECKF(m[0] > m[1] + 0.1 && m[0] > m[2] + 0.1, "cover means %.3f %.3f %.3f", m[0], m[1], m[2]);
    CHECKF(mtime(f) == ft, "features.tif was rewritten");
}

TEST(similarity_from_features_equals_the_run)
{
    const char *t = dm_test_tmpdir();
    char p[1200], q[1200], args[4096], cmd[8192], v[600];
    const char *out;
    snprintf(p, sizeof p, "%s/covers.tif", t);
    CHECK(make_covers(p) == 0);
    CHECKF(run_at(t, "o", 4, 1, NULL, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/similarity.tif", t);
    /* from the run's features.tif, and from its folder */
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "--features %s/o%s --at %.17g,%.17g -o %s/f%d", t,
                 k ? "" : "/features.tif", cx(1), cy(4), t, k);
        CHECKF(sim(args, &out) == 0, "%s", out);
        snprintf(q, sizeof q, "%s/f%d/similarity.tif", t, k);
        double d = max_diff(p, q);
        CHECKF(d <= 1e-5, "--features differs from the run by %g", d);
        snprintf(q, sizeof q, "%s/f%d/similarity.qml", t, k);
        CHECK(dm_exists(q));
    }
    snprintf(q, sizeof q, "%s/f0/similarity.tif", t);
    meta(q, "DINOMAP_WEIGHTS", v, sizeof v);
    CHECKF(!strcmp(v, "backbone.pth"), "%s", v);
    /* int8 features: the scales applied, within a few quantization steps of float32 */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s %s/covers.tif -o %s/q8 --tile 64 --halo 16 "
             "--quantize int8 --no-pca", dm_bin(), tiny(), t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "--features %s/q8/features.tif --at %.17g,%.17g -o %s/f8", t,
             cx(1), cy(4), t);
    CHECKF(sim(args, &out) == 0, "%s", out);
    snprintf(q, sizeof q, "%s/f8/similarity.tif", t);
    double d = max_diff(p, q);
    CHECKF(d < 0.01, "int8 differs from float32 by %g", d);
    int w, h;
    float *s = read_band(q, &w, &h, NULL);
    CHECK(s && fabs(s[4 * 12 + 1] - 1.0) < 1e-5);
    free(s);
    /* blocks + VRT (a tiny --max-cog-gib): GDAL opens the VRT */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s %s/covers.tif -o %s/blk --tile 64 --halo 16 "
             "--chunk 1 --no-pca --max-cog-gib 0.00001", dm_bin(), tiny(), t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(q, sizeof q, "%s/blk/features.vrt", t);
    CHECK(dm_exists(q));
    snprintf(args, sizeof args, "--features %s/blk --at %.17g,%.17g -o %s/fb", t, cx(1), cy(4),
             t);
    CHECKF(sim(args, &out) == 0, "%s", out);
    snprintf(q, sizeof q, "%s/fb/similarity.tif", t);
    d = max_diff(p, q);
    CHECKF(d <= 1e-5, "blocks differ from the run by %g", d);
}

TEST(similarity_in_a_run_config_with_chm)
{
    const char *t = dm_test_tmpdir();
    char p[1200], ini[4096], cmd[8192], v[600];
    const char *out;
    snprintf(p, sizeof p, "%s/covers.tif", t);
    CHECK(make_covers(p) == 0);
    snprintf(ini, sizeof ini, "[run]\nproducts = similarity, chm\nmodel = %s\ninput = covers.tif\n"
             "tile = 64\nhalo = 16\nat = %.17g,%.17g\n",
             dm_golden("chmv2_tiny_hf/model.safetensors"), cx(1), cy(4));
    snprintf(p, sizeof p, "%s/r.ini", t);
    FILE *f = fopen(p, "w");
    CHECK(f && fputs(ini, f) >= 0 && fclose(f) == 0);
    snprintf(cmd, sizeof cmd, "cd %s && %s run r.ini -o j -q", t, dm_bin());
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    /* similarity brings the features along */
    static const char *files[] = { "features.tif", "chm.tif", "similarity.tif", "similarity.qml",
                                   "chm.qml" };
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/j/%s", t, files[i]);
        CHECKF(dm_exists(p), "no %s", files[i]);
    }
    snprintf(p, sizeof p, "%s/j/run.json", t);
    cJSON *rj = read_json(p);
    char *prods = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(rj, "products"));
    int ok = prods && !strcmp(prods, "[\"features\",\"similarity\",\"chm\"]");
    free(prods);
    cJSON_Delete(rj);
    CHECK(ok);
    int w, h;
    snprintf(p, sizeof p, "%s/j/similarity.tif", t);
    float *s = read_band(p, &w, &h, NULL);
    CHECK(s && w == 12 && h == 8 && fabs(s[4 * 12 + 1] - 1.0) < 1e-5);
    free(s);
    /* a query on the command line replaces the file's */
    snprintf(cmd, sizeof cmd, "cd %s && %s run r.ini -o j -q --at %.17g,%.17g", t, dm_bin(),
             cx(6), cy(3));
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    meta(p, "DINOMAP_QUERY_PATCH", v, sizeof v);
    CHECKF(!strncmp(v, "row 3, col 6", 12), "%s", v);
    /* a query without the similarity product is refused */
    snprintf(cmd, sizeof cmd, "cd %s && %s run r.ini -o k -q --products chm", t, dm_bin());
    CHECKF(dm_run(cmd, &out) == 2 && nlines(out) == 1 && strstr(out, "dinomap: --at: a query "
           "is for the similarity product"), "%s", out);
    snprintf(p, sizeof p, "%s/k", t);
    CHECK(dm_dir_empty_or_missing(p));
}

/* A bad command: exit `code`, one line, "dinomap: " first, `want` in it, no OUTDIR left. */
static int refused(const char *t, const char *args, int code, const char *want, char *why,
                   size_t n)
{
    const char *out;
    char a[4096], o[1200];
    snprintf(o, sizeof o, "%s/bad", t);
    snprintf(a, sizeof a, "%s -o %s", args, o);
    int rc = sim(a, &out);
    if (rc != code || nlines(out) != 1 || strncmp(out, "dinomap: ", 9) || !strstr(out, want) ||
        !dm_dir_empty_or_missing(o)) {
        snprintf(why, n, "%s: exit %d (want %d), left %s: %s", args, rc, code,
                 dm_dir_empty_or_missing(o) ? "nothing" : "files", out);
        return 0;
    }
    return 1;
}

TEST(similarity_bad_inputs)
{
    const char *t = dm_test_tmpdir();
    char p[1200], in[1200], a[4096], why[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/covers.tif", t);
    CHECK(make_covers(in) == 0);
    /* a mosaic whose top-left quarter is nodata */
    snprintf(p, sizeof p, "%s/nd.tif", t);
    CHECK(dm_make_tif(p, W, H, 3, GT, 32631, 0, 5) == 0);
    char m[1400];
    snprintf(m, sizeof m, "-m %s --tile 64 --halo 16", tiny());
    struct {
        const char *args;
        int code;
        const char *want;
    } cases[] = {
        { "%s --at 1,2,3 %s", 2, "--at 1,2,3: expected two numbers" },
        { "%s --at abc %s", 2, "--at abc: expected two numbers" },
        { "%s %s", 2, "similarity needs a query" },
        { "%s --at 500010,3999990 --query-aoi x.gpkg %s", 2, "give one query" },
        { "%s --at 3,36 --srs EPSG:999999 %s", 2, "--srs EPSG:999999: not a CRS" },
        { "%s --at 1,2 %s", 1, "--at 1,2: outside the mosaic" },
        { "%s --at 1,2 --srs EPSG:4326 %s", 1, "outside the mosaic" },
        { "%s --query-aoi %s %s", 1, "--query-aoi" }, /* a raster is no AOI */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strstr(cases[i].args, "--query-aoi %s"))
            snprintf(a, sizeof a, cases[i].args, m, in, in);
        else
            snprintf(a, sizeof a, cases[i].args, m, in);
        CHECKF(refused(t, a, cases[i].code, cases[i].want, why, sizeof why), "%s", why);
    }
    /* a point on a nodata patch, found before any tile runs */
    snprintf(a, sizeof a, "%s --at %.17g,%.17g %s", m, cx(1), cy(1), p);
    CHECKF(refused(t, a, 1, "is nodata", why, sizeof why), "%s", why);
    /* an AOI with no patch centre inside (a sliver between two rows of centres) */
    snprintf(p, sizeof p, "%s/sliver.geojson", t);
    FILE *g = fopen(p, "w");
    CHECK(g != NULL);
    fprintf(g, "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\",\"properties\":"
               "{\"name\":\"urn:ogc:def:crs:EPSG::32631\"}},\"features\":[{\"type\":"
               "\"Feature\",\"properties\":{},\"geometry\":{\"type\":\"Polygon\","
               "\"coordinates\":[[[500001,3999990],[500100,3999990],[500100,3999992],"
               "[500001,3999992],[500001,3999990]]]}}]}\n");
    fclose(g);
    snprintf(a, sizeof a, "%s --query-aoi %s %s", m, p, in);
    CHECKF(refused(t, a, 1, "no patch centre", why, sizeof why), "%s", why);
    /* --features: not a features raster, a features run folder as -o, options it does not use */
    CHECKF(run_at(t, "o", 4, 1, "-q", &out) == 0, "%s", out);
    snprintf(a, sizeof a, "--features %s --at 500010,3999990", in);
    CHECKF(refused(t, a, 1, "is not a dinomap features raster", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/o/features_pca.tif --at 500010,3999990", t);
    CHECKF(refused(t, a, 1, "DINOMAP_PRODUCT=features_pca", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/o --at 500010,3999990 --tile 64", t);
    CHECKF(refused(t, a, 2, "--tile: not used with --features", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/o --at 500010,3999990 %s", t, in);
    CHECKF(refused(t, a, 2, "no INPUT", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/o --at 5,6", t);
    CHECKF(refused(t, a, 1, "outside the mosaic", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/missing.tif --at 5,6", t);
    CHECKF(refused(t, a, 1, "missing.tif", why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "--features %s/o --at 500010,3999990 -o %s/o", t, t);
    CHECKF(sim(a, &out) == 1 && nlines(out) == 1 && strstr(out, "is a run folder"), "%s", out);
    snprintf(p, sizeof p, "%s/o/similarity.tif", t);
    /* the run folder's own map is untouched: still the first query's */
    char v[600];
    meta(p, "DINOMAP_QUERY_PATCH", v, sizeof v);
    CHECKF(!strncmp(v, "row 4, col 1", 12), "%s", v);
    /* --at is similarity's */
    snprintf(a, sizeof a, "%s features --at 1,2 -m %s %s -o %s/bad", dm_bin(), tiny(), in, t);
    CHECKF(dm_run(a, &out) == 2 && nlines(out) == 1 && strstr(out, "--at: unknown option"),
           "%s", out);
}

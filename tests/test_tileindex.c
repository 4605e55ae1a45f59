/* tests/test_tileindex.c — the tile index (tiles.gpkg) read back with plain GDAL/OGR and ogrinfo, as
 * QGIS and a merge script would see it; and areas of interest (GeoJSON, GeoPackage) in a UTM grid. */
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <cpl_conv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../gis/gis.h"
#include "golden.h"
#include "test.h"

/* the grid: 100 × 50 tiles of 512 px at 10 m, chunks of 4 × 4 tiles */
#define ROWS 100
#define COLS 50
#define CH 4
#define CCOLS ((COLS + CH - 1) / CH)
#define DIM 64
#define X0 500000.0
#define Y0 5000000.0
#define TS 5120.0

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static char *utm31_wkt(void)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    char *wkt = NULL;
    if (OSRImportFromEPSG(s, 32631) == OGRERR_NONE)
        OSRExportToWkt(s, &wkt);
    OSRRelease(s);
    return wkt; /* CPLFree */
}

static void make_grid(dm_tile_rec *t, dm_tile_state *st)
{
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < COLS; c++) {
            dm_tile_rec *x = &t[r * COLS + c];
            x->id = (int64_t)r * COLS + c;
            x->row = r;
            x->col = c;
            x->chunk = (r / CH) * CCOLS + c / CH;
            x->px0 = c * 512;
            x->py0 = r * 512;
            x->pw = x->ph = 512;
            x->minx = X0 + c * TS;
            x->maxx = x->minx + TS;
            x->maxy = Y0 - r * TS;
            x->miny = x->maxy - TS;
            st[r * COLS + c] = c >= COLS - 2 ? DM_TILE_OUTSIDE_AOI : DM_TILE_PENDING;
        }
}

/* A deterministic unit vector per tile and kind. */
static void unit_vec(float *v, int64_t id, int kind)
{
    double s = 0;
    for (int i = 0; i < DIM; i++) {
        v[i] = (float)sin(0.37 * (double)(id + 1) * (i + 1) + kind);
        s += (double)v[i] * v[i];
    }
    for (int i = 0; i < DIM; i++)
        v[i] = (float)(v[i] / sqrt(s));
}

static void f32le(unsigned char *b, const float *v)
{
    for (int i = 0; i < DIM; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++)
            b[4 * i + k] = (unsigned char)(u >> (8 * k));
    }
}

/* The tiles of chunk `ch` in grid order; returns how many. */
static int chunk_tiles(const dm_tile_rec *t, int ch, int64_t *ids)
{
    int n = 0;
    for (int i = 0; i < ROWS * COLS; i++)
        if (t[i].chunk == ch)
            ids[n++] = t[i].id;
    return n;
}

/* Marks chunk ch done: every tile done (valid 0.75) except the chunk's second tile (empty, no
 * vectors); the third has a CLS vector only. */
static int finish_chunk(dm_tileindex *ti, const dm_tile_rec *t, int ch, float *vecs, dm_err *err)
{
    int64_t ids[CH * CH];
    dm_tile_result res[CH * CH];
    int n = chunk_tiles(t, ch, ids);
    for (int i = 0; i < n; i++) {
        float *cls = vecs + (size_t)(2 * i) * DIM, *mean = cls + DIM;
        unit_vec(cls, ids[i], 0);
        unit_vec(mean, ids[i], 1);
        res[i] = (dm_tile_result){ ids[i], DM_TILE_DONE, 0.75f, cls, mean };
        if (i == 1)
            res[i] = (dm_tile_result){ ids[i], DM_TILE_EMPTY, 0.0f, NULL, NULL };
        if (i == 2)
            res[i].mean = NULL;
    }
    char file[64];
    snprintf(file, sizeof file, "chunks/c%05d.tif", ch);
    return dm_tileindex_chunk_done(ti, ch, file, res, n, NULL, 0, 1, err);
}

static int has_blob(OGRFeatureH f, const char *field, const float *want)
{
    int i = OGR_F_GetFieldIndex(f, field), nb = 0;
    if (i < 0)
        return 0;
    if (!want)
        return !OGR_F_IsFieldSetAndNotNull(f, i);
    const GByte *b = OGR_F_GetFieldAsBinary(f, i, &nb);
    unsigned char exp[DIM * 4];
    f32le(exp, want);
    return nb == DIM * 4 && memcmp(b, exp, sizeof exp) == 0;
}

TEST(tileindex_roundtrip)
{
    char path[512], cmd[1200];
    snprintf(path, sizeof path, "%s/tiles.gpkg", dm_test_tmpdir());
    static dm_tile_rec t[ROWS * COLS];
    static dm_tile_state st[ROWS * COLS];
    static float vecs[2 * CH * CH * DIM];
    make_grid(t, st);
    char *wkt = utm31_wkt();
    CHECK(wkt != NULL);
    dm_err err = { 0 };
    dm_tileindex *ti = NULL;
    int rc = dm_tileindex_create(path, wkt, "{\"model\":\"test\",\"tile\":512}", DIM, &ti, &err);
    CPLFree(wkt);
    CHECKF(rc == 0, "create: %s", err.msg);

    double t0 = now_ms();
    rc = dm_tileindex_add_tiles(ti, t, st, ROWS * COLS, &err);
    double t1 = now_ms();
    CHECKF(rc == 0, "add_tiles: %s", err.msg);
    rc = finish_chunk(ti, t, 0, vecs, &err);
    double t2 = now_ms();
    for (int ch = 1; rc == 0 && ch < 3; ch++)
        rc = finish_chunk(ti, t, ch, vecs, &err);
    CHECKF(rc == 0, "chunk_done: %s", err.msg);
    printf("    tileindex: %d tiles added in %.1f ms; a chunk of %d tiles done in %.2f ms\n",
           ROWS * COLS, t1 - t0, CH * CH, t2 - t1);

    int64_t n[5];
    CHECKF(dm_tileindex_counts(ti, n, &err) == 0, "counts: %s", err.msg);
    CHECK(n[DM_TILE_DONE] == 3 * 15 && n[DM_TILE_EMPTY] == 3 && n[DM_TILE_FAILED] == 0);
    CHECK(n[DM_TILE_OUTSIDE_AOI] == 2 * ROWS);
    CHECK(n[DM_TILE_PENDING] == ROWS * COLS - 48 - 2 * ROWS);

    /* atomic: the first tile of chunk 3 is fine, the second does not exist */
    int64_t ids[CH * CH];
    chunk_tiles(t, 3, ids);
    float v[DIM];
    unit_vec(v, ids[0], 0);
    dm_tile_result bad[2] = { { ids[0], DM_TILE_DONE, 1.0f, v, v },
                              { 999999, DM_TILE_DONE, 1.0f, v, v } };
    CHECK(dm_tileindex_chunk_done(ti, 3, "c3.tif", bad, 2, NULL, 0, 1, &err) != 0);
    CHECKF(strstr(err.msg, "999999") && strstr(err.msg, "tiles.gpkg"), "%s", err.msg);
    bad[1].id = ids[0] + CH; /* a real tile of chunk 4 */
    CHECK(dm_tileindex_chunk_done(ti, 3, "c3.tif", bad, 2, NULL, 0, 1, &err) != 0);
    CHECKF(strstr(err.msg, "chunk 4"), "%s", err.msg);
    int64_t m[5];
    CHECK(dm_tileindex_counts(ti, m, &err) == 0);
    CHECK(memcmp(n, m, sizeof n) == 0);
    CHECKF(dm_tileindex_close(ti, &err) == 0, "close: %s", err.msg);

    /* read back as any GDAL client would */
    const char *drivers[] = { "GPKG", NULL };
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, drivers, NULL, NULL);
    CHECK(ds != NULL);
    OGRLayerH l = GDALDatasetGetLayerByName(ds, "tiles");
    OGRLayerH e = GDALDatasetGetLayerByName(ds, "embeddings");
    OGRLayerH c = GDALDatasetGetLayerByName(ds, "chunks");
    int ok = l && e && c && GDALDatasetGetLayerByName(ds, "runs");
    OGRSpatialReferenceH srs = l ? OGR_L_GetSpatialRef(l) : NULL;
    const char *code = srs ? OSRGetAuthorityCode(srs, NULL) : NULL;
    ok = ok && code && strcmp(code, "32631") == 0 && OGR_L_GetGeomType(l) == wkbPolygon;
    ok = ok && OGR_L_GetFeatureCount(l, TRUE) == ROWS * COLS;
    ok = ok && OGR_L_GetFeatureCount(e, TRUE) == 3 * 15 && OGR_L_GetFeatureCount(c, TRUE) ==
         (ROWS / CH) * CCOLS;
    int64_t k = 2 * COLS + 1; /* row 2, col 1: chunk 0, its 10th tile */
    OGRFeatureH f = ok ? OGR_L_GetFeature(l, k) : NULL;
    OGREnvelope env = { 0 };
    if (f)
        OGR_G_GetEnvelope(OGR_F_GetGeometryRef(f), &env);
    ok = ok && f && env.MinX == t[k].minx && env.MaxX == t[k].maxx && env.MinY == t[k].miny &&
         env.MaxY == t[k].maxy;
    ok = ok && strcmp(OGR_F_GetFieldAsString(f, OGR_F_GetFieldIndex(f, "state")), "done") == 0 &&
         OGR_F_GetFieldAsDouble(f, OGR_F_GetFieldIndex(f, "valid_fraction")) == 0.75 &&
         OGR_F_GetFieldAsInteger(f, OGR_F_GetFieldIndex(f, "px0")) == 512 &&
         OGR_F_GetFieldAsInteger(f, OGR_F_GetFieldIndex(f, "chunk")) == 0;
    if (f)
        OGR_F_Destroy(f);
    CHECKF(ok, "tiles layer, CRS, counts or tile %lld not as written", (long long)k);
    /* the tile of chunk 3 that was in the failed update stayed pending, without embeddings */
    f = OGR_L_GetFeature(l, ids[0]);
    ok = f && strcmp(OGR_F_GetFieldAsString(f, OGR_F_GetFieldIndex(f, "state")), "pending") == 0;
    if (f)
        OGR_F_Destroy(f);
    f = OGR_L_GetFeature(e, ids[0]);
    ok = ok && !f;
    if (f)
        OGR_F_Destroy(f);
    f = OGR_L_GetFeature(c, 3);
    ok = ok && f && strcmp(OGR_F_GetFieldAsString(f, OGR_F_GetFieldIndex(f, "state")), "pending")
         == 0;
    if (f)
        OGR_F_Destroy(f);
    f = OGR_L_GetFeature(c, 1);
    ok = ok && f && strcmp(OGR_F_GetFieldAsString(f, OGR_F_GetFieldIndex(f, "file")),
                           "chunks/c00001.tif") == 0;
    if (f)
        OGR_F_Destroy(f);
    f = OGR_L_GetFeature(l, COLS - 1);
    ok = ok && f &&
         strcmp(OGR_F_GetFieldAsString(f, OGR_F_GetFieldIndex(f, "state")), "outside_aoi") == 0;
    if (f)
        OGR_F_Destroy(f);
    CHECKF(ok, "failed chunk update left traces, or outside_aoi lost");
    /* embeddings byte-exact: chunk 1's tiles 0 (both), 1 (none: empty), 2 (cls only) */
    chunk_tiles(t, 1, ids);
    float cls[DIM], mean[DIM];
    for (int i = 0; i < 3 && ok; i++) {
        unit_vec(cls, ids[i], 0);
        unit_vec(mean, ids[i], 1);
        f = OGR_L_GetFeature(e, ids[i]);
        if (i == 1)
            ok = !f;
        else
            ok = f && has_blob(f, "cls", cls) && has_blob(f, "mean", i == 2 ? NULL : mean) &&
                 OGR_F_GetFieldAsInteger(f, OGR_F_GetFieldIndex(f, "dim")) == DIM;
        if (f)
            OGR_F_Destroy(f);
    }
    CHECKF(ok, "embeddings of chunk 1 not byte-exact");
    /* a search reads embeddings joined to footprints with plain SQL */
    OGRLayerH q = GDALDatasetExecuteSQL(ds, "SELECT COUNT(*) FROM embeddings e JOIN tiles t ON "
                                        "t.tile_id = e.tile_id WHERE t.state = 'done'", NULL, NULL);
    f = q ? OGR_L_GetNextFeature(q) : NULL;
    ok = f && OGR_F_GetFieldAsInteger(f, 0) == 3 * 15;
    if (f)
        OGR_F_Destroy(f);
    if (q)
        GDALDatasetReleaseResultSet(ds, q);
    GDALClose(ds);
    CHECKF(ok, "SQL join of embeddings and tiles");

    const char *out;
    snprintf(cmd, sizeof cmd, "ogrinfo -so '%s' tiles", path);
    CHECKF(dm_run(cmd, &out) == 0, "%s: %s", cmd, out);
    CHECKF(strstr(out, "Feature Count: 5000") && strstr(out, "32631"), "%s", out);

    /* a rerun reopens the file and finds what is done */
    CHECK(dm_tileindex_open(path, "{}", DIM + 1, &ti, &err) == DM_EINVAL);
    CHECKF(strstr(err.msg, "length 64"), "%s", err.msg);
    CHECKF(dm_tileindex_open(path, "{\"resumed\":true}", DIM, &ti, &err) == 0, "%s", err.msg);
    int *done = NULL, nd = 0;
    rc = dm_tileindex_done_chunks(ti, &done, &nd, &err);
    int want = rc == 0 && nd == 3 && done[0] == 0 && done[1] == 1 && done[2] == 2;
    free(done);
    CHECKF(want, "done_chunks: rc %d n %d %s", rc, nd, err.msg);
    CHECKF(finish_chunk(ti, t, 3, vecs, &err) == 0, "%s", err.msg);
    CHECK(dm_tileindex_counts(ti, m, &err) == 0 && m[DM_TILE_DONE] == 4 * 15);
    /* redoing a chunk replaces its rows, it does not add */
    CHECKF(finish_chunk(ti, t, 3, vecs, &err) == 0, "%s", err.msg);
    CHECK(dm_tileindex_counts(ti, m, &err) == 0 && m[DM_TILE_DONE] == 4 * 15);
    CHECK(dm_tileindex_close(ti, &err) == 0);
    dm_tileindex_close(NULL, &err);
}

TEST(tileindex_bad_paths)
{
    char path[512], other[512];
    dm_err err = { 0 };
    dm_tileindex *ti = NULL;
    struct stat sb;
    snprintf(other, sizeof other, "%s/tiles.sqlite", dm_test_tmpdir());
    CHECK(dm_tileindex_create(other, NULL, NULL, 8, &ti, &err) == DM_EINVAL && !ti);
    CHECKF(strstr(err.msg, ".gpkg") && strstr(err.msg, "tiles.sqlite"), "%s", err.msg);
    CHECK(stat(other, &sb) != 0);

    /* no CRS: a layer GDAL still opens */
    snprintf(path, sizeof path, "%s/tiles.gpkg", dm_test_tmpdir());
    CHECKF(dm_tileindex_create(path, NULL, NULL, 8, &ti, &err) == 0, "%s", err.msg);
    dm_tile_rec r = { 7, 0, 7, 0, 0, 0, 16, 16, 0, 0, 16, 16 };
    CHECKF(dm_tileindex_add_tiles(ti, &r, NULL, 1, &err) == 0, "%s", err.msg);
    CHECK(dm_tileindex_add_tiles(ti, &r, NULL, 1, &err) != 0); /* the same id twice */
    CHECKF(strstr(err.msg, "tile 7"), "%s", err.msg);
    CHECK(dm_tileindex_close(ti, &err) == 0);
    CHECK(stat(path, &sb) == 0);
    off_t size = sb.st_size;

    ti = NULL;
    CHECK(dm_tileindex_create(path, NULL, NULL, 8, &ti, &err) == DM_EIO && !ti);
    CHECKF(strstr(err.msg, "already exists") && strstr(err.msg, "tiles.gpkg"), "%s", err.msg);
    CHECK(stat(path, &sb) == 0 && sb.st_size == size);
    const char *out;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ogrinfo -so '%s' tiles", path);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "Feature Count: 1"), "%s", out);

    snprintf(other, sizeof other, "%s/bad_crs.gpkg", dm_test_tmpdir());
    CHECK(dm_tileindex_create(other, "NOT A CRS", NULL, 8, &ti, &err) == DM_EINVAL);
    CHECKF(strstr(err.msg, "CRS"), "%s", err.msg);
    CHECK(stat(other, &sb) != 0); /* no half-made file left behind */

    snprintf(other, sizeof other, "%s/missing.gpkg", dm_test_tmpdir());
    CHECK(dm_tileindex_open(other, NULL, 8, &ti, &err) != 0 && !ti);
    CHECKF(strstr(err.msg, "missing.gpkg"), "%s", err.msg);
    CHECK(strcmp(dm_tile_state_name(DM_TILE_OUTSIDE_AOI), "outside_aoi") == 0);
}

/* --- areas of interest ------------------------------------------------------------------------ */

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int rc = fputs(text, f) < 0;
    return fclose(f) || rc ? -1 : 0;
}

/* A GeoPackage with one layer per WKT (EPSG code epsg, 0 for none). */
static int write_gpkg(const char *path, int epsg, const char *const *wkts, int n)
{
    GDALAllRegister();
    GDALDriverH drv = GDALGetDriverByName("GPKG");
    GDALDatasetH ds = drv ? GDALCreate(drv, path, 0, 0, 0, GDT_Unknown, NULL) : NULL;
    if (!ds)
        return -1;
    OGRSpatialReferenceH srs = NULL;
    if (epsg) {
        srs = OSRNewSpatialReference(NULL);
        OSRImportFromEPSG(srs, epsg);
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "layer%d", i);
        OGRLayerH l = GDALDatasetCreateLayer(ds, name, srs, wkbUnknown, NULL);
        char *w = (char *)wkts[i];
        OGRGeometryH g = NULL;
        OGRFeatureH f = l ? OGR_F_Create(OGR_L_GetLayerDefn(l)) : NULL;
        if (!f || OGR_G_CreateFromWkt(&w, NULL, &g) != OGRERR_NONE ||
            OGR_F_SetGeometryDirectly(f, g) != OGRERR_NONE || OGR_L_CreateFeature(l, f))
            rc = -1;
        if (f)
            OGR_F_Destroy(f);
    }
    if (srs)
        OSRRelease(srs);
    GDALClose(ds);
    return rc;
}

/* lon/lat → UTM 31N */
static void to_utm(double lon, double lat, double *x, double *y)
{
    OGRSpatialReferenceH a = OSRNewSpatialReference(NULL), b = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(a, 4326);
    OSRImportFromEPSG(b, 32631);
    OSRSetAxisMappingStrategy(a, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(b, OAMS_TRADITIONAL_GIS_ORDER);
    OGRCoordinateTransformationH ct = OCTNewCoordinateTransformation(a, b);
    *x = lon;
    *y = lat;
    if (!ct || !OCTTransform(ct, 1, x, y, NULL))
        *x = *y = NAN;
    if (ct)
        OCTDestroyCoordinateTransformation(ct);
    OSRRelease(a);
    OSRRelease(b);
}

static int touches_around(const dm_aoi *a, double lon, double lat, double half)
{
    double x, y;
    to_utm(lon, lat, &x, &y);
    return dm_aoi_touches(a, x - half, y - half, x + half, y + half);
}

TEST(aoi_geojson_to_utm)
{
    char path[512];
    snprintf(path, sizeof path, "%s/aoi.geojson", dm_test_tmpdir());
    /* a triangle: the corner near (3.06, 45.16) is outside it but inside its envelope */
    CHECK(write_text(path, "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\","
                           "\"properties\":{\"name\":\"site\"},\"geometry\":{\"type\":\"Polygon\","
                           "\"coordinates\":[[[2.9,45.0],[3.1,45.0],[2.9,45.2],[2.9,45.0]]]}}]}")
          == 0);
    char *wkt = utm31_wkt();
    dm_aoi *a = NULL;
    dm_err err = { 0 };
    int rc = dm_aoi_open(path, wkt, &a, &err);
    CPLFree(wkt);
    CHECKF(rc == 0, "%s", err.msg);
    int inside = touches_around(a, 2.95, 45.05, 50);
    int notch = touches_around(a, 3.06, 45.16, 50);
    int far = touches_around(a, 4.0, 46.0, 50);
    int edge = touches_around(a, 3.0, 45.0, 100); /* straddles the south border */
    int big = touches_around(a, 3.0, 45.1, 30000); /* contains the whole triangle */
    double x0, y0, x1, y1; /* a rectangle from inside across the hypotenuse */
    to_utm(2.95, 45.05, &x0, &y0);
    to_utm(3.1, 45.15, &x1, &y1);
    int across = dm_aoi_touches(a, x0, y0, x1, y1);
    dm_aoi_free(a);
    dm_aoi_free(NULL);
    CHECKF(inside && !notch && !far && edge && big && across,
           "inside %d notch %d far %d edge %d big %d across %d", inside, notch, far, edge, big,
           across);
}

TEST(aoi_gpkg_layers)
{
    char path[512];
    snprintf(path, sizeof path, "%s/aoi.gpkg", dm_test_tmpdir());
    const char *wkts[] = { "POLYGON ((500000 4990000,510000 4990000,510000 5000000,500000 5000000,"
                           "500000 4990000))",
                           "MULTIPOLYGON (((600000 4990000,601000 4990000,601000 4991000,"
                           "600000 4990000)))" };
    CHECK(write_gpkg(path, 32631, wkts, 2) == 0);
    char *wkt = utm31_wkt();
    dm_aoi *a = NULL;
    dm_err err = { 0 };
    int rc = dm_aoi_open(path, wkt, &a, &err);
    CPLFree(wkt);
    CHECKF(rc == 0, "%s", err.msg);
    CHECK(dm_aoi_touches(a, 504000, 4994000, 505000, 4995000) == 1);  /* inside */
    CHECK(dm_aoi_touches(a, 520000, 4994000, 521000, 4995000) == 0);  /* outside */
    CHECK(dm_aoi_touches(a, 509500, 4994000, 510500, 4995000) == 1);  /* across the east edge */
    CHECK(dm_aoi_touches(a, 510000, 4994000, 511000, 4995000) == 1);  /* touching it */
    CHECK(dm_aoi_touches(a, 600800, 4990100, 600900, 4990200) == 1);  /* second layer */
    CHECK(dm_aoi_touches(a, 600100, 4990800, 600200, 4990900) == 0);  /* its envelope only */
    dm_aoi_free(a);
    /* no target CRS: the polygons as stored */
    CHECKF(dm_aoi_open(path, NULL, &a, &err) == 0, "%s", err.msg);
    CHECK(dm_aoi_touches(a, 504000, 4994000, 505000, 4995000) == 1);
    dm_aoi_free(a);
}

TEST(aoi_bad_inputs)
{
    char path[512];
    const char *d = dm_test_tmpdir();
    char *wkt = utm31_wkt();
    dm_aoi *a = NULL;
    dm_err err = { 0 };
    int ok = 1;
    char why[1400] = "";

    snprintf(path, sizeof path, "%s/nope.geojson", d);
    if (!(dm_aoi_open(path, wkt, &a, &err) == DM_EIO && strstr(err.msg, "no such file") &&
          strstr(err.msg, "nope.geojson")))
        ok = 0, snprintf(why, sizeof why, "missing: %s", err.msg);

    snprintf(path, sizeof path, "%s/points.geojson", d);
    write_text(path,
               "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\","
               "\"properties\":{},\"geometry\":{\"type\":\"Point\",\"coordinates\":[3,45]}}]}");
    if (ok && !(dm_aoi_open(path, wkt, &a, &err) == DM_EFORMAT && strstr(err.msg, "polygons") &&
                strstr(err.msg, "POINT")))
        ok = 0, snprintf(why, sizeof why, "points: %s", err.msg);

    snprintf(path, sizeof path, "%s/empty.geojson", d);
    write_text(path, "{\"type\":\"FeatureCollection\",\"features\":[]}");
    if (ok && !(dm_aoi_open(path, wkt, &a, &err) == DM_EFORMAT && strstr(err.msg, "no polygons")))
        ok = 0, snprintf(why, sizeof why, "empty: %s", err.msg);

    snprintf(path, sizeof path, "%s/junk.geojson", d);
    write_text(path, "this is not a vector file\n");
    if (ok && !(dm_aoi_open(path, wkt, &a, &err) == DM_EFORMAT && strstr(err.msg, "junk")))
        ok = 0, snprintf(why, sizeof why, "junk: %s", err.msg);

    snprintf(path, sizeof path, "%s/nocrs.gpkg", d);
    const char *sq[] = { "POLYGON ((0 0,1 0,1 1,0 0))" };
    if (ok && write_gpkg(path, 0, sq, 1) != 0)
        ok = 0, snprintf(why, sizeof why, "cannot write %s", path);
    if (ok && !(dm_aoi_open(path, wkt, &a, &err) == DM_EFORMAT && strstr(err.msg, "no CRS")))
        ok = 0, snprintf(why, sizeof why, "no CRS: %s", err.msg);
    if (ok && dm_aoi_open(path, NULL, &a, &err) != 0) /* fine when nothing is to be transformed */
        ok = 0, snprintf(why, sizeof why, "no CRS, no target: %s", err.msg);
    dm_aoi_free(a);
    a = NULL;

    snprintf(path, sizeof path, "%s/lines.gpkg", d);
    const char *ln[] = { "LINESTRING (500000 4990000,510000 4990000)" };
    if (ok && write_gpkg(path, 32631, ln, 1) != 0)
        ok = 0, snprintf(why, sizeof why, "cannot write %s", path);
    if (ok && !(dm_aoi_open(path, wkt, &a, &err) == DM_EFORMAT && strstr(err.msg, "polygons")))
        ok = 0, snprintf(why, sizeof why, "lines: %s", err.msg);
    if (ok && !(dm_aoi_open(path, "garbage", &a, &err) == DM_EINVAL && strstr(err.msg, "CRS")))
        ok = 0, snprintf(why, sizeof why, "bad target: %s", err.msg);
    CPLFree(wkt);
    CHECKF(ok && !a, "%s", why);
}

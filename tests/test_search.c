/* tests/test_search.c — `dinomap search` on a run of a synthetic mosaic of three covers (256×256
 * px, tiles of 64 + 2 × 16 px: 4 × 4 tiles; tile columns 0-1 smooth green, 2 stripes, 3 noise):
 * a tile finds itself first (score 1) and then a tile of its own cover; the point at its centre
 * (in the run's CRS and in EPSG:4326) and its own vector (.npy) give the same list; --within
 * keeps the tiles touching a polygon; the GeoJSON opens with OGR, k polygons in degrees; two
 * indexes at once; the errors: one prefixed line, exit 1 or 2. */
#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../gis/gis.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

#define W 256
#define H 256
static const double GT[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };

/* The centre of tile (row, col) in the mosaic's CRS (EPSG:32631). */
static double tx(int col) { return GT[0] + (col * 64 + 32) * GT[1]; }
static double ty(int row) { return GT[3] + (row * 64 + 32) * GT[5]; }

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
                int v = x < 128 ? green[b] + (int)(r % 8)         /* smooth */
                        : x < 192 ? ((x / 4) % 2 ? 230 : 30)      /* stripes */
                                  : (int)(r % 256);               /* noise */
                px[(size_t)b * W * H + (size_t)y * W + x] = (uint8_t)v;
            }
    CPLErr e = GDALDatasetRasterIO(d, GF_Write, 0, 0, W, H, px, W, H, GDT_Byte, 3, NULL, 0, 0, 0);
    GDALClose(d);
    return e == CE_None ? 0 : -1;
}

/* The run of every test, in dm_test_tmpdir()/NAME (once per test). */
static int make_run(const char *name, const char **out)
{
    const char *t = dm_test_tmpdir();
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/covers.tif", t);
    if (!dm_exists(cmd) && make_covers(cmd))
        return -1;
    snprintf(cmd, sizeof cmd, "%s features -q --progress none -m %s %s/covers.tif -o %s/%s "
             "--tile 64 --halo 16 --no-pca", dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"),
             t, t, name);
    return dm_run(cmd, out);
}

static int search(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s search %s", dm_bin(), args);
    return dm_run(cmd, out);
}

/* The hits of a --json search: tile ids and scores (at most 16); the count, -1 unreadable. */
static int hits(const char *out, long long *id, double *score, int *col)
{
    cJSON *j = cJSON_Parse(out);
    int n = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, j)
    {
        if (n >= 16)
            break;
        id[n] = (long long)cJSON_GetObjectItemCaseSensitive(h, "tile_id")->valuedouble;
        score[n] = cJSON_GetObjectItemCaseSensitive(h, "score")->valuedouble;
        col[n] = (int)cJSON_GetObjectItemCaseSensitive(h, "col")->valuedouble;
        n++;
    }
    int ok = cJSON_IsArray(j);
    cJSON_Delete(j);
    return ok ? n : -1;
}

TEST(search_queries)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char a[4096];
    long long id[16], id2[16];
    double s[16], s2[16];
    int col[16], col2[16];
    /* tile (1, 0) = id 4: itself, then a green tile */
    snprintf(a, sizeof a, "%s/r --tile 4 -k 16 --json", t);
    CHECKF(search(a, &out) == 0, "%s", out);
    int n = hits(out, id, s, col);
    CHECKF(n == 16, "%d: %s", n, out);
    CHECKF(id[0] == 4 && fabs(s[0] - 1) < 1e-5, "%lld %g", id[0], s[0]);
    CHECKF(col[1] <= 1 && s[1] < s[0], "%d %g", col[1], s[1]);
    for (int i = 1; i < n; i++)
        CHECK(s[i] <= s[i - 1]);
    /* a noise tile (2, 3) = id 11: a noise tile next */
    snprintf(a, sizeof a, "%s/r/tiles.gpkg --tile 11 -k 2 --json", t);
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 2, "%s", out);
    CHECKF(id2[0] == 11 && col2[1] == 3, "%lld %d", id2[0], col2[1]);
    /* the point at the centre of tile 4, in the run's CRS and in degrees */
    snprintf(a, sizeof a, "%s/r --at %.17g,%.17g -k 16 --json", t, tx(0), ty(1));
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 16, "%s", out);
    for (int i = 0; i < 16; i++)
        CHECKF(id2[i] == id[i] && fabs(s2[i] - s[i]) < 1e-9, "%d", i);
    double lon = tx(0), lat = ty(1);
    dm_err err = { 0 };
    OGRSpatialReferenceH u = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(u, 32631);
    char *wkt = NULL;
    OSRExportToWkt(u, &wkt);
    OSRDestroySpatialReference(u);
    int rc = dm_gis_to_lonlat(wkt, 1, &lon, &lat, &err);
    CPLFree(wkt);
    CHECKF(rc == 0 && lon > 2 && lon < 4 && lat > 30, "%s %g %g", err.msg, lon, lat);
    snprintf(a, sizeof a, "%s/r --at %.12f,%.12f --srs EPSG:4326 -k 3 --json", t, lon, lat);
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 3 && id2[0] == 4, "%s", out);
    /* the table: a header and k lines, tile 4 first with score 1 */
    snprintf(a, sizeof a, "%s/r --tile 4 -k 3", t);
    CHECKF(search(a, &out) == 0, "%s", out);
    int lines = 0;
    for (const char *c = out; *c; c++)
        lines += *c == '\n';
    CHECKF(lines == 4 && strstr(out, "rank") && strstr(out, "1.000000"), "%s", out);
}

/* A statement on a tile index (a copy the test spoils). */
static int spoil(const char *gpkg, const char *sql)
{
    const char *drivers[] = { "GPKG", NULL };
    GDALDatasetH d = GDALOpenEx(gpkg, GDAL_OF_VECTOR | GDAL_OF_UPDATE, drivers, NULL, NULL);
    if (!d)
        return -1;
    CPLErrorReset();
    OGRLayerH r = GDALDatasetExecuteSQL(d, sql, NULL, NULL);
    if (r)
        GDALDatasetReleaseResultSet(d, r);
    int bad = CPLGetLastErrorType() >= CE_Failure;
    GDALClose(d);
    return bad ? -1 : 0;
}

/* One line on stderr, prefixed, naming what: the rest of the errors' contract. */
static int one_line(const char *out, const char *what)
{
    int n = 0;
    for (const char *c = out; *c; c++)
        n += *c == '\n';
    return n == 1 && !strncmp(out, "dinomap: ", 9) && strstr(out, what);
}

TEST(search_vector_within_geojson_two_indexes)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char a[4096], p[4096];
    long long id[16], id2[16];
    double s[16], s2[16];
    int col[16], col2[16];
    /* --vector: tile 4's cls vector, times 3 (normalised by search), as .npy */
    snprintf(p, sizeof p, "%s/r/tiles.gpkg", t);
    dm_search_tiles ti;
    dm_err err = { 0 };
    CHECKF(dm_search_tiles_load(p, &ti, &err) == 0, "%s", err.msg);
    CHECKF(ti.n == 16 && ti.dim == 128 && ti.id[4] == 4 && ti.row[4] == 1 && ti.col[4] == 0,
           "%lld %d", (long long)ti.n, ti.dim);
    float v[128];
    for (int i = 0; i < 128; i++)
        v[i] = 3 * ti.cls[4 * 128 + i];
    dm_search_tiles_free(&ti);
    snprintf(p, sizeof p, "%s/q.npy", t);
    int64_t shape[1] = { 128 };
    CHECKF(dm_npy_write_f32(p, v, 1, shape, &err) == 0, "%s", err.msg);
    snprintf(a, sizeof a, "%s/r --tile 4 --embedding cls -k 16 --json", t);
    CHECKF(search(a, &out) == 0 && hits(out, id, s, col) == 16, "%s", out);
    CHECKF(id[0] == 4 && fabs(s[0] - 1) < 1e-5 && col[1] <= 1, "%lld %g %d", id[0], s[0], col[1]);
    snprintf(a, sizeof a, "%s/r --vector %s/q.npy --embedding cls -k 16 --json", t, t);
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 16, "%s", out);
    for (int i = 0; i < 16; i++)
        CHECKF(id2[i] == id[i] && fabs(s2[i] - s[i]) < 1e-5, "%d: %lld %lld", i, id2[i], id[i]);
    /* --within: a polygon inside tile column 0 (tiles 0, 4, 8, 12) */
    snprintf(p, sizeof p, "%s/aoi.geojson", t);
    FILE *f = fopen(p, "w");
    CHECK(f);
    fprintf(f, "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\",\"properties\":"
               "{\"name\":\"urn:ogc:def:crs:EPSG::32631\"}},\"features\":[{\"type\":\"Feature\","
               "\"properties\":{},\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[[500005,"
               "3999995],[500030,3999995],[500030,3999850],[500005,3999850],[500005,3999995]]]}}"
               "]}\n");
    fclose(f);
    snprintf(a, sizeof a, "%s/r --tile 5 --within %s -k 10 --json", t, p);
    CHECKF(search(a, &out) == 0 && hits(out, id, s, col) == 4, "%s", out);
    for (int i = 0; i < 4; i++)
        CHECKF(col[i] == 0 && id[i] % 4 == 0, "%lld", id[i]);
    /* --geojson: k polygons in degrees with rank, score, tile id, index */
    snprintf(a, sizeof a, "%s/r --tile 4 -k 5 --geojson %s/hits.geojson", t, t);
    CHECKF(search(a, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/hits.geojson", t);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d);
    OGRLayerH l = GDALDatasetGetLayer(d, 0);
    int nf = (int)OGR_L_GetFeatureCount(l, TRUE), ok = 1, first = 0;
    OGRSpatialReferenceH srs = OGR_L_GetSpatialRef(l);
    const char *code = srs ? OSRGetAuthorityCode(srs, NULL) : NULL;
    OGRFeatureH g;
    while ((g = OGR_L_GetNextFeature(l))) {
        OGREnvelope e;
        OGR_G_GetEnvelope(OGR_F_GetGeometryRef(g), &e);
        ok &= e.MinX > 2 && e.MaxX < 4 && e.MinY > 30 && e.MaxY < 40 && e.MaxX > e.MinX;
        if (OGR_F_GetFieldAsInteger(g, OGR_F_GetFieldIndex(g, "rank")) == 1)
            first = OGR_F_GetFieldAsInteger(g, OGR_F_GetFieldIndex(g, "tile_id")) == 4 &&
                    OGR_F_GetFieldAsDouble(g, OGR_F_GetFieldIndex(g, "score")) > 0.99999 &&
                    strstr(OGR_F_GetFieldAsString(g, OGR_F_GetFieldIndex(g, "index")), "r/");
        OGR_F_Destroy(g);
    }
    int is4326 = code && !strcmp(code, "4326");
    GDALClose(d);
    CHECKF(nf == 5 && ok && first && is4326, "%d %d %d %d", nf, ok, first, is4326);
    /* two indexes: a second run of the same mosaic gives tile 4 twice with score 1 */
    CHECKF(make_run("r2", &out) == 0, "%s", out);
    snprintf(a, sizeof a, "%s/r %s/r2/tiles.gpkg --tile 4 -k 2", t, t);
    CHECKF(search(a, &out) == 0, "%s", out);
    CHECKF(strstr(out, "index") && strstr(out, "index 2: ") && strstr(out, "r2/tiles.gpkg"),
           "%s", out);
    snprintf(a, sizeof a, "%s/r %s/r2 --tile 4 -k 2 --json", t, t);
    CHECKF(search(a, &out) == 0 && hits(out, id, s, col) == 2, "%s", out);
    CHECKF(id[0] == 4 && id[1] == 4 && s[1] > 0.99999 && strstr(out, "r2/tiles.gpkg"), "%s", out);
}

TEST(search_errors)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char a[4096], p[4096];
    struct { const char *args; int code; const char *what; } bad[] = {
        { "%s/r", 2, "one query" },
        { "%s/r --tile 1 --at 1,2", 2, "one query" },
        { "%s/r --tile 1 -k 0", 2, "-k" },
        { "%s/r --tile 1 --embedding patch", 2, "--embedding" },
        { "%s/r --tile 1 --srs EPSG:4326", 2, "--srs" },
        { "%s/r --at 1,2 --srs EPSG:999999", 2, "--srs" },
        { "%s/r --at nowhere", 2, "--at" },
        { "%s/r --tile 1 --bogus", 2, "bogus" },
        { "--tile 1", 2, "OUTDIR" },
        { "%s/r --tile 999", 1, "no done tile" },
        { "%s/r --at 0,0", 1, "under no done tile" },
        { "%s/r --vector %s/short.npy", 1, "the embeddings have 128" },
        { "%s/nothing --tile 1", 1, "cannot open" },
        { "%s/r %s/empty.gpkg --tile 1", 1, "no embeddings" },
        { "%s/r %s/other.gpkg --tile 1", 1, "different models" },
    };
    float v[5] = { 1, 2, 3, 4, 5 };
    int64_t shape[1] = { 5 };
    snprintf(p, sizeof p, "%s/short.npy", t);
    CHECK(dm_npy_write_f32(p, v, 1, shape, NULL) == 0);
    snprintf(a, sizeof a, "cp %s/r/tiles.gpkg %s/empty.gpkg && cp %s/r/tiles.gpkg %s/other.gpkg",
             t, t, t, t);
    CHECK(dm_run(a, NULL) == 0);
    snprintf(p, sizeof p, "%s/empty.gpkg", t);
    CHECK(spoil(p, "DELETE FROM embeddings") == 0);
    snprintf(p, sizeof p, "%s/other.gpkg", t);
    CHECK(spoil(p, "UPDATE config SET value = replace(value, '\"weights_sha256\":\"', "
                   "'\"weights_sha256\":\"0') WHERE key = 'config'") == 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[1024];
        snprintf(args, sizeof args, bad[i].args, t, t);
        snprintf(a, sizeof a, "%s 2>&1 >/dev/null", args);
        int rc = search(a, &out);
        CHECKF(rc == bad[i].code && one_line(out, bad[i].what), "%s: %d: %s", args, rc, out);
    }
    snprintf(a, sizeof a, "--help");
    CHECKF(search(a, &out) == 0 && strstr(out, "--within"), "%s", out);
}

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
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(s, 32631);
    char *wkt = NULL;
    OSRExportToWkt(s, &wkt);
    GDALSetProjection(d, wkt);
    CPLFree(wkt);
    OSRDestroySpatialReference(s);
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

/* tests/test_search.c — `dinomap search` on a run of a synthetic mosaic of three covers (256×256
 * px, tiles of 64 + 2 × 16 px: 4 × 4 tiles; tile columns 0-1 smooth green, 2 stripes, 3 noise):
 * a tile finds itself first (score 1) and then a tile of its own cover; the point at its centre
 * (in the run's CRS and in EPSG:4326), its own vector (.npy) and --exact give the same list;
 * --within keeps the tiles touching a polygon; the GeoJSON opens with OGR, k polygons in degrees;
 * two indexes at once; --image of a chip cut to a tile's window gives that tile's list, other
 * weights are refused; the search file is built, reused, rebuilt when the index changed (a
 * resumed run, `gen` alone) or the file is damaged, and kept in memory where it cannot be
 * written; recall@10 of the default search against exact on 20,000 clustered vectors; the
 * errors: one prefixed line, exit 1 or 2. */
#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <fcntl.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "../src/base/base.h"
#include "golden.h"
#include "search_synth.h"
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
    /* --exact scores every tile: the same list, the same scores */
    snprintf(a, sizeof a, "%s/r --tile 4 -k 16 --json --exact", t);
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 16, "%s", out);
    for (int i = 0; i < 16; i++)
        CHECKF(id2[i] == id[i] && s2[i] == s[i], "%d: %lld %lld", i, id2[i], id[i]);
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
    dm_sindex *ti = NULL;
    dm_err err = { 0 };
    CHECKF(dm_search_open(p, DM_EMB_CLS, &ti, &err) == 0, "%s", err.msg);
    const dm_sindex_info *in = dm_sindex_get_info(ti);
    int row, col4;
    dm_sindex_rowcol(ti, 4, &row, &col4);
    CHECKF(in->n == 16 && in->dim == 128 && in->emb == DM_EMB_CLS && dm_sindex_find(ti, 4) == 4 &&
           dm_sindex_id(ti, 4) == 4 && row == 1 && col4 == 0, "%lld %d", (long long)in->n,
           in->dim);
    float v[128];
    for (int i = 0; i < 128; i++)
        v[i] = 3 * dm_sindex_vec(ti, 4)[i];
    dm_sindex_close(ti);
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
        { "%s/r --image %s/short.npy", 2, "-m WEIGHTS" },
        { "%s/r --tile 1 -m %s/w.pth", 2, "-m goes with --image" },
        { "%s/r --tile 1 --image %s/c.tif -m w", 2, "one query" },
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
    CHECKF(search(a, &out) == 0 && strstr(out, "--within") && strstr(out, "--exact") &&
           strstr(out, "--image CHIP") && strstr(out, "-m, --model") &&
           strstr(out, "tiles.mean.search"), "%s", out);
}

/* --- --image ---------------------------------------------------------------------------------- */

TEST(search_image_agrees_with_tile)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char a[4096], w[4096];
    snprintf(w, sizeof w, "%s", dm_golden("vitl_sat_tiny/backbone.pth"));
    long long id[16], id2[16];
    double s[16], s2[16];
    int col[16], col2[16];
    /* chips cut to the windows (core + 16 px halo) of inner tiles of each cover: the tile's own
     * embeddings, so the same list as --tile, both embeddings */
    static const int tiles[] = { 5, 6, 10 };
    for (int k = 0; k < 3; k++)
        for (int cls = 0; cls < 2; cls++) {
            int r = tiles[k] / 4, c = tiles[k] % 4;
            snprintf(a, sizeof a, "gdal_translate -q -srcwin %d %d 96 96 %s/covers.tif "
                     "%s/chip%d.tif", c * 64 - 16, r * 64 - 16, t, t, tiles[k]);
            CHECKF(dm_run(a, &out) == 0, "%s", out);
            const char *e = cls ? "--embedding cls" : "";
            snprintf(a, sizeof a, "%s/r --tile %d -k 16 --json %s", t, tiles[k], e);
            CHECKF(search(a, &out) == 0 && hits(out, id, s, col) == 16, "%s", out);
            snprintf(a, sizeof a, "%s/r --image %s/chip%d.tif -m %s -k 16 --json %s", t, t,
                     tiles[k], w, e);
            CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 16, "%s", out);
            CHECKF(id2[0] == tiles[k] && s2[0] > 0.99999, "tile %d %s: %lld %g", tiles[k], e,
                   id2[0], s2[0]);
            for (int i = 0; i < 16; i++)
                CHECKF(id2[i] == id[i] && fabs(s2[i] - s[i]) < 1e-5, "tile %d %s, %d: %lld %g, "
                       "%lld %g", tiles[k], e, i, id2[i], s2[i], id[i], s[i]);
        }
    /* a chip of another tile is not tile 6's: its own tile first */
    snprintf(a, sizeof a, "%s/r --image %s/chip10.tif -m %s -k 1 --json", t, t, w);
    CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 1 && id2[0] == 10, "%s", out);
    /* a run in bf16 (where the CPU has it): the chip is embedded in the run's precision */
    snprintf(a, sizeof a, "%s features -q --progress none -m %s %s/covers.tif -o %s/rb --tile 64 "
             "--halo 16 --no-pca --precision auto", dm_bin(), w, t, t);
    CHECKF(dm_run(a, &out) == 0, "%s", out);
    for (int cls = 0; cls < 2; cls++) { /* the same computation: 1 to float rounding (a chip
                                          * embedded in fp32 scores 0.99999 here) */
        snprintf(a, sizeof a, "%s/rb --image %s/chip6.tif -m %s -k 1 --json%s", t, t, w,
                 cls ? " --embedding cls" : "");
        CHECKF(search(a, &out) == 0 && hits(out, id2, s2, col2) == 1 && id2[0] == 6 &&
               s2[0] > 1 - 1e-6, "bf16 run: %s", out);
    }
}

TEST(search_image_refuses)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char a[8192], p[4096], w[4096];
    snprintf(w, sizeof w, "%s", dm_golden("vitl_sat_tiny/backbone.pth"));
    snprintf(a, sizeof a, "gdal_translate -q -srcwin 48 48 96 96 %s/covers.tif %s/chip.tif", t,
             t);
    CHECKF(dm_run(a, &out) == 0, "%s", out);
    /* other weights: both hashes named */
    const char *other = dm_golden("vitl_sat_tiny_hf/model.safetensors");
    char sha_other[65], sha_run[65];
    dm_err err = { 0 };
    CHECKF(dm_sha256_file(other, sha_other, &err) == 0, "%s", err.msg);
    CHECKF(dm_sha256_file(w, sha_run, &err) == 0, "%s", err.msg);
    snprintf(a, sizeof a, "%s/r --image %s/chip.tif -m %s 2>&1 >/dev/null", t, t, other);
    int rc = search(a, &out);
    CHECKF(rc == 1 && one_line(out, "not the run's") && strstr(out, sha_other) &&
           strstr(out, sha_run), "%d: %s", rc, out);
    /* a missing chip, a file that is no image: the file named, exit 1, nothing written */
    snprintf(p, sizeof p, "%s/junk.tif", t);
    FILE *f = fopen(p, "w");
    CHECK(f);
    fputs("not an image\n", f);
    fclose(f);
    static const char *chips[] = { "missing.tif", "junk.tif" };
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/r --image %s/%s -m %s --geojson %s/h.geojson 2>&1 >/dev/null",
                 t, t, chips[i], w, t);
        rc = search(a, &out);
        CHECKF(rc == 1 && one_line(out, chips[i]), "%s: %d: %s", chips[i], rc, out);
        snprintf(p, sizeof p, "%s/h.geojson", t);
        CHECK(!dm_exists(p));
    }
}

/* --- the search file -------------------------------------------------------------------------- */

/* dm_search_open of index: whether it (re)built the file (-1: failed), why into why. */
static int opened(const char *index, int emb, char *why, size_t n, int *in_memory)
{
    dm_sindex *s = NULL;
    dm_err err = { 0 };
    if (dm_search_open(index, emb, &s, &err)) {
        snprintf(why, n, "%s", err.msg);
        return -1;
    }
    const dm_sindex_info *in = dm_sindex_get_info(s);
    int built = in->built;
    snprintf(why, n, "%s", in->why);
    if (in_memory)
        *in_memory = in->in_memory;
    /* whatever happened, it must search right: tile 4 finds itself */
    int64_t k = dm_sindex_find(s, 4);
    dm_search_match m[2];
    int nm = 0;
    dm_search_opts o = { 2, 0, NULL, NULL, 0, 0 };
    if (k < 0 || dm_sindex_search(s, dm_sindex_vec(s, k), &o, m, &nm, &err) || nm != 2 ||
        m[0].i != k || fabs(m[0].score - 1) > 1e-5) {
        snprintf(why, n, "tile 4 does not find itself");
        built = -1;
    }
    dm_sindex_close(s);
    return built;
}

static long long inode(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_ino : -1;
}

/* Writes n bytes at off of path (n 0: truncates it to off). */
static int damage(const char *path, long off, const void *bytes, size_t n)
{
    if (!n)
        return truncate(path, off);
    FILE *f = fopen(path, "r+b");
    if (!f)
        return -1;
    int rc = fseek(f, off, SEEK_SET) || fwrite(bytes, 1, n, f) != n;
    return fclose(f) || rc ? -1 : 0;
}

TEST(search_file_kept_and_rebuilt)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECKF(make_run("r", &out) == 0, "%s", out);
    char idx[4096], file[4200], why[256];
    snprintf(idx, sizeof idx, "%s/r/tiles.gpkg", t);
    dm_search_file_path(idx, DM_EMB_MEAN, file, sizeof file);
    CHECKF(strstr(file, "/r/tiles.mean.search"), "%s", file);
    /* the index's time a minute ahead: every open then also compares `gen` (a write within the
     * file system's time resolution of the build could hide behind an equal time) */
    struct timespec tt[2];
    clock_gettime(CLOCK_REALTIME, &tt[0]);
    tt[0].tv_sec += 60, tt[0].tv_nsec = 0, tt[1] = tt[0];
    CHECK(utimensat(AT_FDCWD, idx, tt, 0) == 0);
    int built = opened(idx, DM_EMB_MEAN, why, sizeof why, NULL);
    CHECKF(built == 1 && dm_exists(file), "%d %s", built, why);
    long long ino = inode(file);
    CHECKF((built = opened(idx, DM_EMB_MEAN, why, sizeof why, NULL)) == 0 && inode(file) == ino,
           "reused: %d %s", built, why);
    /* cls has its own file; mean's stays */
    char cfile[4200];
    dm_search_file_path(idx, DM_EMB_CLS, cfile, sizeof cfile);
    CHECKF(opened(idx, DM_EMB_CLS, why, sizeof why, NULL) == 1 && dm_exists(cfile) &&
           inode(file) == ino, "%s", why);
    /* `gen` bumped with the index's size and time as they were: rebuilt */
    struct stat st0, st1;
    CHECK(stat(idx, &st0) == 0);
    CHECK(spoil(idx, "UPDATE config SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
                     "WHERE key = 'gen'") == 0);
    CHECK(utimensat(AT_FDCWD, idx, tt, 0) == 0 && stat(idx, &st1) == 0);
    CHECKF(st1.st_size == st0.st_size, "the index's size changed: %lld %lld",
           (long long)st1.st_size, (long long)st0.st_size);
    CHECKF((built = opened(idx, DM_EMB_MEAN, why, sizeof why, NULL)) == 1 && strstr(why, "gen"),
           "%d %s", built, why);
    CHECK(opened(idx, DM_EMB_MEAN, why, sizeof why, NULL) == 0);
    /* any other write to the index (its time): rebuilt */
    tt[0].tv_sec += 1, tt[1] = tt[0];
    CHECK(utimensat(AT_FDCWD, idx, tt, 0) == 0);
    CHECKF((built = opened(idx, DM_EMB_MEAN, why, sizeof why, NULL)) == 1 &&
           strstr(why, "changed"), "%d %s", built, why);
    /* damaged files are rebuilt, never used */
    struct stat fs;
    CHECK(stat(file, &fs) == 0);
    int64_t bad_id = 7;
    struct { long off; const void *bytes; size_t n; const char *says; } dmg[] = {
        { (long)fs.st_size - 100, NULL, 0, "truncated" },
        { 0, "NOTDINO!", 8, "not a dinomap search file" },
        { 200, "x", 1, "damaged" },
        { 4096 + 8, &bad_id, 8, "ascend" }, /* the second tile id (1) becomes 7 */
        { 0, NULL, 0, "empty" },
    };
    for (size_t i = 0; i < sizeof dmg / sizeof dmg[0]; i++) {
        CHECK(damage(file, dmg[i].off, dmg[i].bytes, dmg[i].n) == 0);
        CHECKF((built = opened(idx, DM_EMB_MEAN, why, sizeof why, NULL)) == 1 &&
               strstr(why, dmg[i].says), "%zu: %d %s", i, built, why);
        CHECKF(opened(idx, DM_EMB_MEAN, why, sizeof why, NULL) == 0, "%zu: %s", i, why);
    }
    /* a file that cannot be written (its temporary's name taken by a folder): in memory */
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", file, (long)getpid());
    CHECK(unlink(file) == 0 && mkdir(tmp, 0755) == 0);
    int mem = 0;
    built = opened(idx, DM_EMB_MEAN, why, sizeof why, &mem);
    rmdir(tmp);
    CHECKF(built == 1 && mem && !dm_exists(file), "%d %d %s", built, mem, why);
    /* a folder the user cannot write (not as root: root writes anyway): the command says so */
    if (geteuid() != 0) {
        char a[8192], dir[4096];
        snprintf(dir, sizeof dir, "%s/r", t);
        CHECK(chmod(dir, 0555) == 0);
        snprintf(a, sizeof a, "%s --tile 4 -k 3 --json", dir);
        int rc = search(a, &out);
        chmod(dir, 0755);
        CHECKF(rc == 0 && strstr(out, "in-memory copy") && !dm_exists(file), "%d: %s", rc, out);
    }
}

TEST(search_file_follows_a_resumed_run)
{
    const char *t = dm_test_tmpdir(), *out;
    char cmd[8192], idx[4096], why[256];
    snprintf(cmd, sizeof cmd, "%s/covers.tif", t);
    CHECK(make_covers(cmd) == 0);
    /* chunks of 2 × 2 tiles: killed after 9 tiles, two chunks are done */
    for (int pass = 0; pass < 2; pass++) {
        snprintf(cmd, sizeof cmd, "%s%s features -q --progress none -m %s %s/covers.tif -o %s/r "
                 "--tile 64 --halo 16 --chunk 2 --no-pca", pass ? "" : "DINOMAP_FAULT=tile:9 ",
                 dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), t, t);
        int rc = dm_run(cmd, &out);
        CHECKF(pass ? rc == 0 : rc != 0, "%d: %s", rc, out);
        snprintf(idx, sizeof idx, "%s/r/tiles.gpkg", t);
        dm_sindex *s = NULL;
        dm_err err = { 0 };
        CHECKF(dm_search_open(idx, DM_EMB_MEAN, &s, &err) == 0, "%s", err.msg);
        int64_t n = dm_sindex_get_info(s)->n;
        int built = dm_sindex_get_info(s)->built;
        snprintf(why, sizeof why, "%s", dm_sindex_get_info(s)->why);
        dm_sindex_close(s);
        CHECKF(built == 1 && (pass ? n == 16 : n > 0 && n < 16), "pass %d: %d %lld %s", pass,
               built, (long long)n, why);
    }
}

/* --- the search itself ------------------------------------------------------------------------ */

/* |a ∩ b| of two lists of positions. */
static int common(const dm_search_match *a, int na, const dm_search_match *b, int nb)
{
    int h = 0;
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            h += a[i].i == b[j].i;
    return h;
}

TEST(search_recall_synthetic)
{
    /* 20,000 × 128 clustered unit vectors (200 clusters), tile ids 1, 4, 7, ... */
    enum { N = 20000, D = 128, Q = 100 };
    dm_synth y;
    CHECK(dm_synth_init(&y, D, 200, 11) == 0);
    dm_sfile_meta fm = { D, DM_EMB_MEAN, N, "", "sha", "arch", 0, 0, 0, 0 };
    dm_sfile_writer *w = NULL;
    dm_sindex *s = NULL;
    dm_err err = { 0 };
    CHECKF(dm_sfile_create(NULL, &fm, &w, NULL, &err) == 0, "%s", err.msg);
    float v[D];
    for (int64_t i = 0; i < N; i++) {
        dm_synth_vector(&y, (uint64_t)i, v);
        double box[4] = { (double)i, 0, (double)i + 1, 1 };
        CHECKF(dm_sfile_add(w, 3 * i + 1, (int)(i / 100), (int)(i % 100), box, v, &err) == 0,
               "%s", err.msg);
    }
    CHECKF(dm_sfile_add(w, 3 * N + 1, 0, 0, (double[4]){ 0 }, v, &err) != 0, "one too many");
    CHECKF(dm_sfile_commit(w, &s, &err) == 0, "%s", err.msg);
    CHECK(dm_sindex_get_info(s)->n == N && dm_sindex_find(s, 3 * 777 + 1) == 777 &&
          dm_sindex_find(s, 3) == -1 && dm_sindex_id(s, N - 1) == 3 * (N - 1) + 1);
    dm_pool *pool = NULL;
    CHECK(dm_pool_create(2, &pool) == 0);
    uint8_t *even = malloc(N);
    CHECK(even);
    for (int i = 0; i < N; i++)
        even[i] = i % 2 == 0;
    int hits = 0, hits_small = 0, worst = 10;
    for (int q = 0; q < Q; q++) {
        dm_synth_vector(&y, N + 7919 * (uint64_t)(q + 1), v); /* not one of the set */
        dm_search_match ex[10], df[10], sm[10];
        int ne = 0, nd = 0, ns = 0;
        dm_search_opts oe = { 10, 1, NULL, pool, 0, 0 }, od = { 10, 0, NULL, pool, 0, 0 };
        dm_search_opts os = { 10, 0, NULL, pool, 40, 10 }; /* candidates cut short */
        CHECK(dm_sindex_search(s, v, &oe, ex, &ne, &err) == 0 && ne == 10);
        CHECK(dm_sindex_search(s, v, &od, df, &nd, &err) == 0 && nd == 10);
        CHECK(dm_sindex_search(s, v, &os, sm, &ns, &err) == 0 && ns == 10);
        if (q == 0) { /* exact is exact: the best by a plain double dot product over all */
            double best = -2;
            int64_t at = -1;
            for (int64_t i = 0; i < N; i++) {
                double d = 0;
                for (int j = 0; j < D; j++)
                    d += (double)v[j] * dm_sindex_vec(s, i)[j];
                if (d > best)
                    best = d, at = i;
            }
            CHECKF(ex[0].i == at && fabs(ex[0].score - best) < 1e-5, "%lld %lld",
                   (long long)ex[0].i, (long long)at);
        }
        for (int i = 1; i < 10; i++)
            CHECK(ex[i].score <= ex[i - 1].score && df[i].score <= df[i - 1].score);
        int h = common(df, nd, ex, ne);
        hits += h, hits_small += common(sm, ns, ex, ne);
        worst = h < worst ? h : worst;
        /* the default's scores are the exact ones */
        for (int i = 0; i < nd; i++)
            for (int j = 0; j < ne; j++)
                if (df[i].i == ex[j].i)
                    CHECK(df[i].score == ex[j].score);
        /* only allowed tiles, and the same as exact over them */
        oe.allow = od.allow = even;
        CHECK(dm_sindex_search(s, v, &oe, ex, &ne, &err) == 0 && ne == 10);
        CHECK(dm_sindex_search(s, v, &od, df, &nd, &err) == 0 && nd == 10);
        for (int i = 0; i < 10; i++)
            CHECK(ex[i].i % 2 == 0 && df[i].i % 2 == 0);
    }
    double recall = hits / (10.0 * Q), small = hits_small / (10.0 * Q);
    CHECKF(recall >= 0.99, "recall@10 %.3f (worst query %d of 10)", recall, worst);
    /* the sign bits do the work: with too few candidates recall drops */
    CHECKF(small < recall - 0.05, "recall with 40 candidates %.3f, default %.3f", small, recall);
    /* more than there are: all of them, best first */
    dm_search_match all[3];
    int na = 0;
    dm_search_opts o3 = { 3, 0, NULL, NULL, 0, 0 };
    CHECK(dm_sindex_search(s, dm_sindex_vec(s, 5), &o3, all, &na, &err) == 0 && na == 3 &&
          all[0].i == 5);
    free(even);
    dm_pool_free(pool);
    dm_sindex_close(s);
    dm_synth_free(&y);
}

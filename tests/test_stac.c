/* tests/test_stac.c — the GIS conventions of a run folder: item.json (STAC 1.0.0 with the
 * projection, raster and eo extensions) validated offline against the schemas in
 * tests/data/stac by python3-jsonschema (and a broken copy refused), for plain, block + VRT and
 * ungeoreferenced runs; the tile index's srs_id (-1 without georeferencing); the weights
 * recorded by name and SHA-256, never by path; int8 features without clipping, against a
 * float32 run of the same input. */
#include <cjson/cJSON.h>
#include <gdal.h>
#include <limits.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

static const char *tiny(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }

static int run_features(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s", dm_bin(), tiny(), args);
    return dm_run(cmd, out);
}

/* 0: valid (and every href there); 1: invalid, the reasons in *out. */
static int validate(const char *item, const char **out)
{
    char root[PATH_MAX], cmd[8192];
    if (!realpath(dm_test_data(), root))
        snprintf(root, sizeof root, "%s", dm_test_data());
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/../stac_validate.py %s/stac %s", root, root,
             item);
    return dm_run(cmd, out);
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

static int write_json(const char *path, const cJSON *j)
{
    char *s = cJSON_Print(j);
    FILE *f = s ? fopen(path, "w") : NULL;
    int ok = f && fputs(s, f) >= 0;
    if (f)
        ok = !fclose(f) && ok;
    free(s);
    return ok ? 0 : -1;
}

static const cJSON *at(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static cJSON *mat(cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

/* A broken copy of the Item must fail validation, with `why` in the reasons. */
static int refused(const char *dir, const cJSON *item, void (*breakit)(cJSON *), const char *why,
                   char *msg, size_t n)
{
    char p[1200];
    snprintf(p, sizeof p, "%s/broken.json", dir);
    cJSON *b = cJSON_Duplicate(item, 1);
    breakit(b);
    int rc = write_json(p, b);
    cJSON_Delete(b);
    const char *out = "";
    if (!rc)
        rc = validate(p, &out);
    snprintf(msg, n, "%s", out);
    remove(p);
    return rc == 1 && strstr(out, why) != NULL;
}

static void epsg_as_text(cJSON *j)
{
    cJSON_ReplaceItemInObject(mat(j, "properties"), "proj:epsg", cJSON_CreateString("32631"));
}

static void nodata_nan_capital(cJSON *j)
{
    cJSON *b = cJSON_GetArrayItem(mat(mat(mat(j, "assets"), "features"), "raster:bands"), 0);
    cJSON_ReplaceItemInObject(b, "nodata", cJSON_CreateString("NaN"));
}

static void no_datetime(cJSON *j) { cJSON_DeleteItemFromObject(mat(j, "properties"), "datetime"); }

static void gone_href(cJSON *j)
{
    cJSON_ReplaceItemInObject(mat(mat(j, "assets"), "features"), "href",
                              cJSON_CreateString("gone.tif"));
}

static int ogr_sql(const char *gpkg, const char *sql, const char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "ogrinfo -q -sql \"%s\" %s", sql, gpkg);
    return dm_run(cmd, out);
}

/* An int8 features run: a valid Item, what it says about the grid, footprint, assets and bands;
 * broken copies refused; the tile index keeps the run's EPSG. */
TEST(stac_item_of_a_features_run_is_valid)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1200], msg[16384];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 128, 128, 3, gt, 32631, -1, 11) == 0);
    snprintf(args, sizeof args, "%s -o %s/myrun --tile 64 --halo 16 --quantize int8", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/myrun/item.json", t);
    CHECKF(validate(p, &out) == 0, "%s", out);
    cJSON *it = read_json(p);
    CHECK(it != NULL);
    const cJSON *pr = at(it, "properties"), *as = at(it, "assets"), *bb = at(it, "bbox");
    const cJSON *ep = at(pr, "proj:epsg"), *pb = at(pr, "proj:bbox"), *sh = at(pr, "proj:shape");
    const cJSON *f = at(as, "features"), *pca = at(as, "features_pca");
    int ok_id = cJSON_IsString(at(it, "id")) && !strcmp(at(it, "id")->valuestring, "myrun");
    int ok_epsg = cJSON_IsNumber(ep) && ep->valueint == 32631;
    /* the features grid: 8×8 px of 16 m from the input's origin */
    double pbv[4] = { 0 };
    for (int i = 0; cJSON_GetArraySize(pb) == 4 && i < 4; i++)
        pbv[i] = cJSON_GetArrayItem(pb, i)->valuedouble;
    int ok_grid = pbv[0] == 600000 && pbv[1] == 4999872 && pbv[2] == 600128 &&
                  pbv[3] == 5000000 && cJSON_GetArraySize(sh) == 2 &&
                  cJSON_GetArrayItem(sh, 0)->valueint == 8;
    /* bbox: the corners of proj:bbox in EPSG:4326, by OSR here */
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL), d = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(s, 32631);
    OSRImportFromEPSG(d, 4326);
    OSRSetAxisMappingStrategy(d, OAMS_TRADITIONAL_GIS_ORDER);
    OGRCoordinateTransformationH ct = OCTNewCoordinateTransformation(s, d);
    double x[4] = { pbv[0], pbv[2], pbv[2], pbv[0] }, y[4] = { pbv[1], pbv[1], pbv[3], pbv[3] };
    int tok = ct && OCTTransform(ct, 4, x, y, NULL);
    OCTDestroyCoordinateTransformation(ct);
    OSRDestroySpatialReference(s), OSRDestroySpatialReference(d);
    double want[4] = { fmin(x[0], x[3]), fmin(y[0], y[1]), fmax(x[1], x[2]), fmax(y[2], y[3]) };
    double berr = cJSON_GetArraySize(bb) == 4 ? 0 : INFINITY;
    for (int i = 0; tok && !isinf(berr) && i < 4; i++)
        berr = fmax(berr, fabs(cJSON_GetArrayItem(bb, i)->valuedouble - want[i]));
    /* the assets: media types, roles, the bands as the file has them */
    const cJSON *fb = at(f, "raster:bands"), *b5 = cJSON_GetArrayItem(fb, 4);
    GDALAllRegister();
    snprintf(p, sizeof p, "%s/myrun/features.tif", t);
    GDALDatasetH ds = GDALOpen(p, GA_ReadOnly);
    CHECK(ds != NULL);
    double sc = GDALGetRasterScale(GDALGetRasterBand(ds, 5), NULL);
    GDALClose(ds);
    int ok_f = f && !strcmp(at(f, "href")->valuestring, "features.tif") &&
               !strcmp(at(f, "type")->valuestring,
                       "image/tiff; application=geotiff; profile=cloud-optimized") &&
               cJSON_GetArraySize(fb) == 128 && !strcmp(at(b5, "data_type")->valuestring,
                                                        "uint8") &&
               at(b5, "nodata")->valuedouble == 0 && at(b5, "scale")->valuedouble == sc &&
               at(b5, "offset")->valuedouble == -128 * sc;
    const cJSON *eo = at(pca, "eo:bands"), *e0 = cJSON_GetArrayItem(eo, 0);
    int ok_eo = cJSON_GetArraySize(eo) == 3 && !strcmp(at(e0, "name")->valuestring, "pc1") &&
                !at(e0, "common_name") && !strcmp(cJSON_GetArrayItem(at(pca, "roles"), 0)
                                                      ->valuestring, "visual");
    const cJSON *ti = at(as, "tiles"), *rj = at(as, "run");
    int ok_meta = ti && !strcmp(at(ti, "type")->valuestring, "application/geopackage+sqlite3") &&
                  rj && !strcmp(at(rj, "href")->valuestring, "run.json");
    snprintf(p, sizeof p, "%s/myrun/run.json", t);
    cJSON *run = read_json(p);
    const cJSON *fin = at(run, "finalized"), *dt = at(pr, "datetime");
    int ok_dt = cJSON_IsString(fin) && cJSON_IsString(dt) &&
                !strcmp(fin->valuestring, dt->valuestring);
    cJSON_Delete(run);
    int ref = 1;
    static const struct { void (*fn)(cJSON *); const char *why; } broken[] = {
        { epsg_as_text, "'32631' is not of type 'integer', 'null'" },
        { nodata_nan_capital, "raster:bands/0/nodata" },
        { no_datetime, "'datetime' is a required property" },
        { gone_href, "gone.tif does not exist" },
    };
    for (size_t i = 0; ref && i < sizeof broken / sizeof broken[0]; i++)
        ref = refused(t, it, broken[i].fn, broken[i].why, msg, sizeof msg);
    cJSON_Delete(it);
    CHECK(ok_id);
    CHECK(ok_epsg);
    CHECK(ok_grid);
    CHECKF(tok && berr < 1e-7, "bbox differs from the transformed corners by %g°", berr);
    CHECK(ok_f);
    CHECK(ok_eo);
    CHECK(ok_meta);
    CHECK(ok_dt);
    CHECKF(ref, "a broken item.json was not refused as expected: %s", msg);
    /* a georeferenced run's tile index keeps its CRS */
    snprintf(p, sizeof p, "%s/myrun/tiles.gpkg", t);
    CHECKF(ogr_sql(p, "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'tiles'",
                   &out) == 0 && strstr(out, ") = 32631"), "%s", out);
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* features (int8) + chm in blocks and VRTs, the weights and head in a folder whose name must
 * appear in no output; then finalized again as single COGs: the Item follows. */
TEST(stac_item_of_blocks_and_chm_names_weights_not_paths)
{
    const char *t = dm_test_tmpdir();
    char in[1024], ini[8192], p[1200], cmd[8192], w[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    CHECK(dm_make_tif(in, 128, 128, 3, gt, 32633, -1, 12) == 0);
    snprintf(w, sizeof w, "%s/private_weights_7f3a", t);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s %s %s/", w,
             dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"), w);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(ini, sizeof ini, "[run]\nproducts = features, chm\nmodel = %s/backbone.pth\n"
             "head = %s/head.pth\ninput = %s\ntile = 64\nhalo = 16\nchunk = 1\n"
             "quantize = int8\n", w, w, in);
    snprintf(p, sizeof p, "%s/joint.ini", t);
    CHECK(write_text(p, ini) == 0);
    /* 1 KiB: features (8×8 px × 128 B) in blocks of 4×4 px (the chunk), chm (128² px × 4 B) in
     * one block (blocks of chm are multiples of 256 px) */
    snprintf(cmd, sizeof cmd, "%s run %s -o %s/b --progress none --max-cog-gib 0.000001",
             dm_bin(), p, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/b/item.json", t);
    CHECKF(validate(p, &out) == 0, "%s", out);
    cJSON *it = read_json(p);
    CHECK(it != NULL);
    const cJSON *as = at(it, "assets"), *f = at(as, "features"), *c = at(as, "chm");
    const cJSON *st = at(as, "chm_style"), *blk = at(as, "chm_r000_c000");
    const cJSON *fblk = at(as, "features_r000_c000");
    const cJSON *cb = cJSON_GetArrayItem(at(c, "raster:bands"), 0), *csh = at(c, "proj:shape");
    const cJSON *ct = at(c, "proj:transform");
    int nblocks = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, as)
        nblocks += !strncmp(at(a, "href")->valuestring, "features_blocks/", 16);
    int ok_vrt = f && !strcmp(at(f, "href")->valuestring, "features.vrt") && fblk &&
                 c && !strcmp(at(c, "href")->valuestring, "chm.vrt") && blk && nblocks == 4;
    int ok_chm = cb && !strcmp(at(cb, "unit")->valuestring, "m") &&
                 !strcmp(at(cb, "nodata")->valuestring, "nan") &&
                 !strcmp(at(cb, "data_type")->valuestring, "float32") &&
                 cJSON_GetArrayItem(csh, 0)->valueint == 128 &&
                 cJSON_GetArrayItem(ct, 0)->valuedouble == 0.6;
    int ok_qml = st && !strcmp(at(st, "href")->valuestring, "chm.qml") &&
                 !strcmp(cJSON_GetArrayItem(at(st, "roles"), 0)->valuestring, "style");
    const cJSON *pr = at(it, "properties");
    int ok_w = !strcmp(at(pr, "dinomap:weights")->valuestring, "backbone.pth") &&
               strlen(at(pr, "dinomap:weights_sha256")->valuestring) == 64 &&
               strlen(at(pr, "dinomap:head_sha256")->valuestring) == 64;
    cJSON_Delete(it);
    CHECKF(ok_vrt, "block assets: %d of features", nblocks);
    CHECK(ok_chm);
    CHECK(ok_qml);
    CHECK(ok_w);
    /* the weights' folder in no file of the run (rasters, blocks, VRTs, index, JSON); grep
     * finds their names, so it would find the folder */
    snprintf(cmd, sizeof cmd, "cd %s/b && grep -rla private_weights_7f3a . ; "
             "grep -la backbone.pth features_blocks/*.tif chm_blocks/*.tif tiles.gpkg run.json "
             "item.json | wc -l; grep -la head.pth chm_blocks/*.tif tiles.gpkg | wc -l", t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    int named = 0, hnamed = 0;
    CHECKF(sscanf(out, "%d %d", &named, &hnamed) == 2 && named >= 7 && hnamed >= 2,
           "a path of the weights is in the outputs, or their names are not: %s", out);
    /* finalized again as one COG per product: item.json rewritten, no block left in it */
    snprintf(cmd, sizeof cmd, "%s finalize %s/b -q --max-cog-gib 16", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(validate(p, &out) == 0, "%s", out);
    it = read_json(p);
    CHECK(it != NULL);
    as = at(it, "assets");
    int ok_one = !strcmp(at(at(as, "features"), "href")->valuestring, "features.tif") &&
                 !strcmp(at(at(as, "chm"), "href")->valuestring, "chm.tif") &&
                 !at(as, "chm_r000_c000") && cJSON_GetArraySize(as) == 6;
    cJSON_Delete(it);
    CHECK(ok_one);
    snprintf(cmd, sizeof cmd, "grep -rla private_weights_7f3a %s/b", t);
    CHECKF(dm_run(cmd, &out) == 1, "after finalize: %s", out);
}

/* Without georeferencing: geometry null, no bbox, proj:epsg null; the tiles layer in GeoPackage's
 * "Undefined cartesian SRS" (-1), in its registration and in every geometry's header. */
TEST(stac_ungeoreferenced_item_and_undefined_srs)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1200];
    const char *out;
    snprintf(in, sizeof in, "%s/ungeo.tif", t);
    CHECK(dm_make_tif(in, 128, 128, 3, NULL, 0, -1, 13) == 0);
    snprintf(args, sizeof args, "%s -o %s/u --tile 64 --halo 16 --allow-ungeoreferenced", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/u/item.json", t);
    CHECKF(validate(p, &out) == 0, "%s", out);
    cJSON *it = read_json(p);
    CHECK(it != NULL);
    const cJSON *pr = at(it, "properties"), *f = at(at(it, "assets"), "features");
    int ok = cJSON_IsNull(at(it, "geometry")) && !at(it, "bbox") &&
             cJSON_IsNull(at(pr, "proj:epsg")) && !at(pr, "proj:wkt2") &&
             !at(pr, "proj:transform") && !at(f, "proj:transform") && at(f, "proj:shape");
    cJSON_Delete(it);
    CHECK(ok);
    snprintf(p, sizeof p, "%s/u/tiles.gpkg", t);
    CHECKF(ogr_sql(p, "SELECT srs_id FROM gpkg_contents WHERE table_name = 'tiles'", &out) == 0 &&
           strstr(out, ") = -1"), "%s", out);
    CHECKF(ogr_sql(p, "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'tiles'",
                   &out) == 0 && strstr(out, ") = -1"), "%s", out);
    CHECKF(ogr_sql(p, "SELECT COUNT(*) AS n FROM tiles WHERE hex(substr(geom, 5, 4)) <> "
                   "'FFFFFFFF'", &out) == 0 && strstr(out, ") = 0"),
           "a geometry not in srs_id -1: %s", out);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -m osgeo_utils.samples.validate_gpkg %s", p);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
}

/* int8 features: each band's scale is its largest |value| / 127, so every value is within half a
 * step of the float32 run's and none is clipped (as the metadata, run.json and item.json say);
 * gdal_translate -unscale with -a_nodata nan gives the values back. */
TEST(stac_int8_features_are_not_clipped)
{
    const char *t = dm_test_tmpdir();
    char in[1024], args[4096], p[1200], q[1200], cmd[4096];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    double gt[6] = { 600000, 1, 0, 5000000, 0, -1 };
    CHECK(dm_make_tif(in, 128, 128, 3, gt, 32631, 0, 14) == 0); /* a nodata quarter */
    snprintf(args, sizeof args, "%s -o %s/f --tile 64 --halo 16 --no-pca", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(args, sizeof args, "%s -o %s/q --tile 64 --halo 16 --no-pca --quantize int8", in, t);
    CHECKF(run_features(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/f/features.tif", t);
    snprintf(q, sizeof q, "%s/q/features.tif", t);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -unscale -ot Float32 -a_nodata nan %s %s/u.tif",
             q, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    GDALAllRegister();
    GDALDatasetH fd = GDALOpen(p, GA_ReadOnly), qd = GDALOpen(q, GA_ReadOnly);
    snprintf(cmd, sizeof cmd, "%s/u.tif", t);
    GDALDatasetH ud = GDALOpen(cmd, GA_ReadOnly);
    CHECK(fd && qd && ud);
    int n = 64, D = GDALGetRasterCount(fd);
    const char *cl = GDALGetMetadataItem(qd, "DINOMAP_INT8_CLIPPED", NULL);
    int meta0 = cl && !strcmp(cl, "0");
    float *v = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n);
    uint8_t *r = malloc((size_t)n);
    int64_t over = 0, valid = 0, nodata_ok = 1, io = 0;
    double worst_scale = 0, worst_u = 0;
    for (int b = 1; b <= D; b++) {
        GDALRasterBandH fb = GDALGetRasterBand(fd, b), qb = GDALGetRasterBand(qd, b);
        io |= GDALRasterIO(fb, GF_Read, 0, 0, 8, 8, v, 8, 8, GDT_Float32, 0, 0) != CE_None;
        io |= GDALRasterIO(qb, GF_Read, 0, 0, 8, 8, r, 8, 8, GDT_Byte, 0, 0) != CE_None;
        io |= GDALRasterIO(GDALGetRasterBand(ud, b), GF_Read, 0, 0, 8, 8, u, 8, 8, GDT_Float32, 0,
                           0) != CE_None;
        double sc = GDALGetRasterScale(qb, NULL), of = GDALGetRasterOffset(qb, NULL), mx = 0;
        for (int i = 0; i < n; i++) {
            nodata_ok &= isnan(v[i]) == (r[i] == 0) && isnan(v[i]) == isnan(u[i]);
            if (isnan(v[i]))
                continue;
            valid++;
            mx = fmax(mx, fabs(v[i]));
            over += fabs(r[i] * sc + of - v[i]) > 0.5 * sc * (1 + 1e-5); /* clipped */
            worst_u = fmax(worst_u, fabs(u[i] - v[i]) / (0.5 * sc));
        }
        worst_scale = fmax(worst_scale, fabs(127 * sc / mx - 1));
    }
    free(v), free(u), free(r);
    GDALClose(fd), GDALClose(qd), GDALClose(ud);
    snprintf(p, sizeof p, "%s/q/run.json", t);
    cJSON *run = read_json(p);
    const cJSON *rc = at(at(run, "int8"), "clipped_values");
    int run0 = cJSON_IsNumber(rc) && rc->valuedouble == 0;
    cJSON_Delete(run);
    snprintf(p, sizeof p, "%s/q/item.json", t);
    cJSON *it = read_json(p);
    const cJSON *ic = at(at(it, "properties"), "dinomap:int8_clipped");
    int item0 = cJSON_IsNumber(ic) && ic->valuedouble == 0;
    cJSON_Delete(it);
    CHECK(!io);
    CHECKF(valid > 128 * 40, "only %lld valid values", (long long)valid);
    CHECK(nodata_ok);
    CHECKF(over == 0, "%lld of %lld values further than half a step (clipped)", (long long)over,
           (long long)valid);
    CHECKF(worst_scale < 1e-6, "a band's scale is not its largest |value| / 127 (%.3g)",
           worst_scale);
    CHECKF(worst_u <= 1 + 1e-5, "gdal_translate -unscale: %.3f half-steps off", worst_u);
    CHECK(meta0 && run0 && item0);
}

/* gis/search.c — what `dinomap search` reads and writes: the done tiles of a tile index with their
 * embeddings (read only, in one query), points moved to longitude/latitude, and the hits as a
 * GeoJSON layer in EPSG:4326 (RFC 7946). The similarity itself is the caller's (src/cmd_search.c).
 */
#include "gis.h"

#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_vsi.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dm_search_tiles_free(dm_search_tiles *t)
{
    if (!t)
        return;
    free(t->path), free(t->wkt), free(t->id), free(t->row), free(t->col), free(t->box);
    free(t->cls), free(t->mean);
    memset(t, 0, sizeof *t);
}

/* Little-endian float32 blob into v [dim]; 0 when its length is not dim floats. */
static int blob_to(const GByte *b, int n, int dim, float *v)
{
    if (!b || n != 4 * dim)
        return 0;
    for (int i = 0; i < dim; i++) {
        uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                     (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        memcpy(&v[i], &u, 4);
    }
    return 1;
}

static void read_config(GDALDatasetH ds, dm_search_tiles *t)
{
    OGRLayerH r = GDALDatasetExecuteSQL(ds, "SELECT value FROM config WHERE key = 'config'", NULL,
                                        NULL);
    if (!r)
        return;
    OGRFeatureH f = OGR_L_GetNextFeature(r);
    cJSON *j = f ? cJSON_Parse(OGR_F_GetFieldAsString(f, 0)) : NULL;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "weights_sha256");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "arch");
    if (cJSON_IsString(s))
        snprintf(t->sha256, sizeof t->sha256, "%s", s->valuestring);
    if (cJSON_IsString(a))
        snprintf(t->arch, sizeof t->arch, "%s", a->valuestring);
    cJSON_Delete(j);
    if (f)
        OGR_F_Destroy(f);
    GDALDatasetReleaseResultSet(ds, r);
}

static int load(GDALDatasetH ds, dm_search_tiles *t, dm_err *err)
{
    OGRLayerH tl = GDALDatasetGetLayerByName(ds, "tiles");
    if (!tl || !GDALDatasetGetLayerByName(ds, "embeddings"))
        return dm_err_set(err, DM_EFORMAT, "%s: not a dinomap tile index (no `tiles` layer or "
                          "`embeddings` table)", t->path);
    OGRSpatialReferenceH srs = OGR_L_GetSpatialRef(tl);
    char *w = NULL;
    if (srs && OSRExportToWkt(srs, &w) == OGRERR_NONE && w)
        t->wkt = strdup(w);
    else
        t->wkt = strdup("");
    CPLFree(w);
    read_config(ds, t);
    OGRLayerH r = GDALDatasetExecuteSQL(ds, "SELECT e.dim FROM embeddings e JOIN tiles t ON "
                                        "t.tile_id = e.tile_id WHERE t.state = 'done' LIMIT 1",
                                        NULL, NULL);
    OGRFeatureH f = r ? OGR_L_GetNextFeature(r) : NULL;
    t->dim = f ? OGR_F_GetFieldAsInteger(f, 0) : 0;
    if (f)
        OGR_F_Destroy(f);
    if (r)
        GDALDatasetReleaseResultSet(ds, r);
    r = GDALDatasetExecuteSQL(ds, "SELECT count(*) FROM embeddings e JOIN tiles t ON t.tile_id "
                              "= e.tile_id WHERE t.state = 'done'", NULL, NULL);
    f = r ? OGR_L_GetNextFeature(r) : NULL;
    int64_t cap = f ? OGR_F_GetFieldAsInteger64(f, 0) : 0;
    if (f)
        OGR_F_Destroy(f);
    if (r)
        GDALDatasetReleaseResultSet(ds, r);
    if (!t->wkt || !t->path)
        return dm_err_oom(err);
    if (t->dim <= 0 || cap <= 0)
        return dm_err_set(err, DM_EINVAL, "%s: no embeddings in the index (no tile done by a "
                          "features run yet?)", t->path);
    size_t D = (size_t)t->dim, n = (size_t)cap;
    t->id = malloc(n * sizeof *t->id), t->row = malloc(n * sizeof *t->row);
    t->col = malloc(n * sizeof *t->col), t->box = malloc(n * 4 * sizeof *t->box);
    t->cls = malloc(n * D * sizeof *t->cls), t->mean = malloc(n * D * sizeof *t->mean);
    if (!t->id || !t->row || !t->col || !t->box || !t->cls || !t->mean)
        return dm_err_oom(err);
    r = GDALDatasetExecuteSQL(ds, "SELECT t.tile_id AS tid, t.row AS r, t.col AS c, "
                              "ST_MinX(t.geom) AS x0, ST_MinY(t.geom) AS y0, ST_MaxX(t.geom) AS "
                              "x1, ST_MaxY(t.geom) AS y1, e.cls AS vc, e.mean AS vm "
                              "FROM tiles t JOIN embeddings e ON e.tile_id = t.tile_id WHERE "
                              "t.state = 'done' ORDER BY t.tile_id", NULL, NULL);
    if (!r)
        return dm_err_set(err, DM_EIO, "%s: cannot read the embeddings: %s", t->path, dm_gdal_msg());
    /* by name: OGR may take the tile id as the result's FID rather than a field */
    OGRFeatureDefnH fd = OGR_L_GetLayerDefn(r);
    static const char *names[] = { "tid", "r", "c", "x0", "y0", "x1", "y1", "vc", "vm" };
    int fi[9], rc = 0;
    for (int i = 0; i < 9; i++)
        if ((fi[i] = OGR_FD_GetFieldIndex(fd, names[i])) < 0 && i > 0)
            rc = dm_err_set(err, DM_EFORMAT, "%s: the embeddings query has no column %s",
                            t->path, names[i]);
    int64_t k = 0;
    while (rc == 0 && k < cap && (f = OGR_L_GetNextFeature(r))) {
        t->id[k] = fi[0] >= 0 ? OGR_F_GetFieldAsInteger64(f, fi[0]) : OGR_F_GetFID(f);
        t->row[k] = OGR_F_GetFieldAsInteger(f, fi[1]);
        t->col[k] = OGR_F_GetFieldAsInteger(f, fi[2]);
        for (int i = 0; i < 4; i++)
            t->box[4 * k + i] = OGR_F_GetFieldAsDouble(f, fi[3 + i]);
        int nc = 0, nm = 0;
        const GByte *c = OGR_F_GetFieldAsBinary(f, fi[7], &nc);
        const GByte *m = OGR_F_GetFieldAsBinary(f, fi[8], &nm);
        if (!blob_to(c, nc, t->dim, t->cls + (size_t)k * D) ||
            !blob_to(m, nm, t->dim, t->mean + (size_t)k * D))
            rc = dm_err_set(err, DM_EFORMAT, "%s: tile %lld: its embeddings are not %d float32 "
                            "values each", t->path, (long long)t->id[k], t->dim);
        OGR_F_Destroy(f);
        k++;
    }
    GDALDatasetReleaseResultSet(ds, r);
    t->n = k;
    return rc;
}

int dm_search_tiles_load(const char *path, dm_search_tiles *out, dm_err *err)
{
    memset(out, 0, sizeof *out);
    out->path = strdup(path);
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    const char *drivers[] = { "GPKG", NULL };
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, drivers, NULL, NULL);
    int rc = ds ? load(ds, out, err)
                : dm_err_set(err, DM_EIO, "%s: cannot open as a tile index (a run folder or its "
                             "tiles.gpkg): %s", path, dm_gdal_msg());
    if (ds)
        GDALClose(ds);
    CPLPopErrorHandler();
    if (rc)
        dm_search_tiles_free(out);
    return rc;
}

/* A transformation from wkt to EPSG:4326 in longitude, latitude order. */
static OGRCoordinateTransformationH to_lonlat(const char *wkt, OGRSpatialReferenceH *a,
                                              OGRSpatialReferenceH *b)
{
    *a = OSRNewSpatialReference(NULL), *b = OSRNewSpatialReference(NULL);
    if (!*a || !*b || OSRImportFromWkt(*a, (char **)&wkt) != OGRERR_NONE ||
        OSRImportFromEPSG(*b, 4326) != OGRERR_NONE)
        return NULL;
    OSRSetAxisMappingStrategy(*a, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(*b, OAMS_TRADITIONAL_GIS_ORDER);
    return OCTNewCoordinateTransformation(*a, *b);
}

static void release(OGRCoordinateTransformationH t, OGRSpatialReferenceH a,
                    OGRSpatialReferenceH b)
{
    if (t)
        OCTDestroyCoordinateTransformation(t);
    if (a)
        OSRDestroySpatialReference(a);
    if (b)
        OSRDestroySpatialReference(b);
}

int dm_gis_to_lonlat(const char *wkt, int n, double *x, double *y, dm_err *err)
{
    if (!wkt || !wkt[0])
        return dm_err_set(err, DM_EINVAL, "the index has no CRS: no longitude/latitude");
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRSpatialReferenceH a, b;
    OGRCoordinateTransformationH t = to_lonlat(wkt, &a, &b);
    int rc = 0;
    if (!t || !OCTTransform(t, n, x, y, NULL))
        rc = dm_err_set(err, DM_EINVAL, "cannot move points to EPSG:4326: %s", dm_gdal_msg());
    release(t, a, b);
    CPLPopErrorHandler();
    return rc;
}

static int add_field(OGRLayerH l, const char *name, OGRFieldType type)
{
    OGRFieldDefnH fd = OGR_Fld_Create(name, type);
    OGRErr e = OGR_L_CreateField(l, fd, TRUE);
    OGR_Fld_Destroy(fd);
    return e == OGRERR_NONE ? 0 : -1;
}

static int write_hits(GDALDatasetH ds, const dm_search_hit *h, int n, const char *path,
                      dm_err *err)
{
    OGRSpatialReferenceH ll = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(ll, 4326);
    OSRSetAxisMappingStrategy(ll, OAMS_TRADITIONAL_GIS_ORDER);
    const char *lopt[] = { "RFC7946=YES", NULL };
    OGRLayerH l = GDALDatasetCreateLayer(ds, "search", ll, wkbPolygon, (char **)lopt);
    OSRDestroySpatialReference(ll);
    if (!l || add_field(l, "rank", OFTInteger) || add_field(l, "score", OFTReal) ||
        add_field(l, "tile_id", OFTInteger64) || add_field(l, "row", OFTInteger) ||
        add_field(l, "col", OFTInteger) || add_field(l, "index", OFTString))
        return dm_err_set(err, DM_EIO, "%s: cannot create the layer: %s", path, dm_gdal_msg());
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        /* the footprint's sides, 8 points each: straight in the index's CRS, curved in degrees */
        double x[33], y[33];
        const double *b = h[i].box;
        for (int s = 0; s < 4; s++)
            for (int j = 0; j < 8; j++) {
                double u = j / 8.0;
                int k = s * 8 + j;
                x[k] = s == 0 ? b[0] + u * (b[2] - b[0]) : s == 1 ? b[2]
                       : s == 2 ? b[2] - u * (b[2] - b[0]) : b[0];
                y[k] = s == 0 ? b[1] : s == 1 ? b[1] + u * (b[3] - b[1])
                       : s == 2 ? b[3] : b[3] - u * (b[3] - b[1]);
            }
        x[32] = x[0], y[32] = y[0];
        if ((rc = dm_gis_to_lonlat(h[i].wkt, 33, x, y, err)))
            break;
        OGRGeometryH ring = OGR_G_CreateGeometry(wkbLinearRing);
        for (int k = 0; k < 33; k++)
            OGR_G_AddPoint_2D(ring, x[k], y[k]);
        OGRGeometryH poly = OGR_G_CreateGeometry(wkbPolygon);
        OGR_G_AddGeometryDirectly(poly, ring);
        OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(l));
        OGR_F_SetFieldInteger(f, 0, h[i].rank);
        OGR_F_SetFieldDouble(f, 1, h[i].score);
        OGR_F_SetFieldInteger64(f, 2, h[i].id);
        OGR_F_SetFieldInteger(f, 3, h[i].row);
        OGR_F_SetFieldInteger(f, 4, h[i].col);
        OGR_F_SetFieldString(f, 5, h[i].index);
        OGR_F_SetGeometryDirectly(f, poly);
        if (OGR_L_CreateFeature(l, f) != OGRERR_NONE)
            rc = dm_err_set(err, DM_EIO, "%s: cannot write a feature: %s", path, dm_gdal_msg());
        OGR_F_Destroy(f);
    }
    return rc;
}

int dm_search_write_geojson(const char *path, const dm_search_hit *h, int n, dm_err *err)
{
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALDriverH drv = GDALGetDriverByName("GeoJSON");
    int rc = 0;
    GDALDatasetH ds = NULL;
    VSIUnlink(path); /* the driver does not overwrite */
    if (!drv)
        rc = dm_err_set(err, DM_EUNSUPPORTED, "this GDAL has no GeoJSON driver");
    else if (!(ds = GDALCreate(drv, path, 0, 0, 0, GDT_Unknown, NULL)))
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", path, dm_gdal_msg());
    if (rc == 0)
        rc = write_hits(ds, h, n, path, err);
    if (ds)
        GDALClose(ds);
    if (rc)
        VSIUnlink(path);
    CPLPopErrorHandler();
    return rc;
}

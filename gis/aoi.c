/* gis/aoi.c — areas of interest: every polygon of an OGR vector file, moved into the run's CRS once,
 * then asked "does this tile touch you?" for every tile of the grid. See aoi.h.
 *
 * The grid may have tens of thousands of tiles and an AOI may be a coastline with 10^5 vertices, so
 * each polygon keeps its envelope (most tiles are rejected by four comparisons) and a GEOS prepared
 * geometry (indexed edges: the exact test does not re-convert the polygon on each call). GEOS builds
 * a prepared geometry's index lazily, so one dm_aoi is queried from one thread at a time (the grid
 * is selected before the pipeline's threads start). */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include "gis.h"

#include <gdal.h>
#include <gdal_alg.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <stdlib.h>
#include <string.h>

/* Geographic sources are densified to this step (degrees, ~1 km) before projecting: a long
 * straight edge in lon/lat is a curve in UTM, and projecting only its end points would cut off
 * tiles along it. */
#define GEOGRAPHIC_STEP_DEG 0.01

struct dm_aoi {
    int n, cap;
    OGRGeometryH *g;            /* [n] polygons/multipolygons in the target CRS */
    OGRPreparedGeometryH *prep; /* [n] prepared forms, NULL where GEOS could not prepare */
    OGREnvelope *env;           /* [n] */
    OGREnvelope all;            /* union of env */
};

void dm_aoi_extent(const dm_aoi *a, double env[4])
{
    env[0] = a->all.MinX, env[1] = a->all.MinY, env[2] = a->all.MaxX, env[3] = a->all.MaxY;
}

void dm_aoi_free(dm_aoi *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n; i++) {
        if (a->prep[i])
            OGRDestroyPreparedGeometry(a->prep[i]);
        OGR_G_DestroyGeometry(a->g[i]);
    }
    free(a->g);
    free(a->prep);
    free(a->env);
    free(a);
}

/* Takes ownership of g (in the target CRS) whatever happens. */
static int keep(dm_aoi *a, OGRGeometryH g, dm_err *err)
{
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        OGRGeometryH *ng = realloc(a->g, sizeof *ng * (size_t)cap);
        if (ng)
            a->g = ng;
        OGRPreparedGeometryH *np = realloc(a->prep, sizeof *np * (size_t)cap);
        if (np)
            a->prep = np;
        OGREnvelope *ne = realloc(a->env, sizeof *ne * (size_t)cap);
        if (ne)
            a->env = ne;
        if (!ng || !np || !ne) {
            OGR_G_DestroyGeometry(g);
            return dm_err_oom(err);
        }
        a->cap = cap;
    }
    /* A self-intersecting ring (common in hand-drawn AOIs) makes GEOS throw and Intersects answer
     * "no"; the repaired shape covers the same area. */
    if (!OGR_G_IsValid(g)) {
        OGRGeometryH v = OGR_G_MakeValid(g);
        if (v) {
            OGR_G_DestroyGeometry(g);
            g = v;
        }
    }
    OGR_G_GetEnvelope(g, &a->env[a->n]);
    a->prep[a->n] = OGRHasPreparedGeometrySupport() ? OGRCreatePreparedGeometry(g) : NULL;
    a->g[a->n] = g;
    const OGREnvelope *e = &a->env[a->n];
    if (a->n == 0) {
        a->all = *e;
    } else {
        a->all.MinX = e->MinX < a->all.MinX ? e->MinX : a->all.MinX;
        a->all.MinY = e->MinY < a->all.MinY ? e->MinY : a->all.MinY;
        a->all.MaxX = e->MaxX > a->all.MaxX ? e->MaxX : a->all.MaxX;
        a->all.MaxY = e->MaxY > a->all.MaxY ? e->MaxY : a->all.MaxY;
    }
    a->n++;
    return 0;
}

/* A polygonal copy of g (curves linearised, collections of polygons merged), or NULL when g is not
 * an area. */
static OGRGeometryH as_polygons(OGRGeometryH g)
{
    OGRwkbGeometryType t = wkbFlatten(OGR_G_GetGeometryType(g));
    OGRGeometryH c = OGR_G_Clone(g);
    if (!c)
        return NULL;
    OGR_G_FlattenTo2D(c);
    if (t == wkbPolygon || t == wkbMultiPolygon)
        return c;
    if (!OGR_GT_IsSurface(t) && !OGR_GT_IsSubClassOf(t, wkbMultiSurface) &&
        t != wkbGeometryCollection) {
        OGR_G_DestroyGeometry(c);
        return NULL;
    }
    c = OGR_G_ForceToMultiPolygon(c); /* returns its input unchanged when it cannot convert */
    if (c && wkbFlatten(OGR_G_GetGeometryType(c)) != wkbMultiPolygon) {
        OGR_G_DestroyGeometry(c);
        c = NULL;
    }
    return c;
}

/* GeoPackage has no "no CRS": layers written without one get the reserved "Undefined geographic
 * SRS" (srs_id 0) or "Undefined Cartesian SRS" (-1), which say nothing about where the data is. */
static int srs_known(OGRSpatialReferenceH s)
{
    const char *name = s ? OSRGetName(s) : NULL;
    return s && !(name && strncmp(name, "Undefined ", 10) == 0 && !OSRGetAuthorityCode(s, NULL));
}

/* Reads one layer's polygons into a. */
static int read_layer(dm_aoi *a, const char *path, OGRLayerH l, OGRSpatialReferenceH target,
                      dm_err *err)
{
    const char *lname = OGR_L_GetName(l);
    if (OGR_L_GetGeomType(l) == wkbNone)
        return 0; /* an attribute table beside the polygons */
    OGRSpatialReferenceH lsrs = OGR_L_GetSpatialRef(l), src = NULL;
    if (!srs_known(lsrs))
        lsrs = NULL;
    OGRCoordinateTransformationH ct = NULL;
    int geographic = 0, rc = 0;
    if (target && lsrs && !OSRIsSame(lsrs, target)) {
        src = OSRClone(lsrs);
        if (!src)
            return dm_err_oom(err);
        OSRSetAxisMappingStrategy(src, OAMS_TRADITIONAL_GIS_ORDER); /* x = lon, as stored */
        geographic = OSRIsGeographic(src);
        if (!(ct = OCTNewCoordinateTransformation(src, target)))
            rc = dm_err_set(err, DM_EFORMAT, "AOI %s: layer %s: no transformation from its CRS "
                            "to the output CRS: %s", path, lname, dm_gdal_msg());
    }
    OGRFeatureH f;
    OGR_L_ResetReading(l);
    while (rc == 0 && (f = OGR_L_GetNextFeature(l))) {
        OGRGeometryH g = OGR_F_GetGeometryRef(f);
        if (g && !OGR_G_IsEmpty(g)) {
            OGRGeometryH p = as_polygons(g);
            if (!p) {
                rc = dm_err_set(err, DM_EFORMAT, "AOI %s: layer %s, feature %lld is a %s; an area "
                                "of interest needs polygons (buffer points or lines into areas "
                                "first, e.g. in QGIS: Vector > Geoprocessing > Buffer)", path,
                                lname, (long long)OGR_F_GetFID(f), OGR_G_GetGeometryName(g));
            } else if (target && !lsrs) {
                OGR_G_DestroyGeometry(p);
                rc = dm_err_set(err, DM_EFORMAT, "AOI %s: layer %s has no CRS, so its polygons "
                                "cannot be placed on the image; assign one (e.g. ogr2ogr -a_srs "
                                "EPSG:4326 fixed.gpkg %s)", path, lname, path);
            } else {
                if (geographic)
                    OGR_G_Segmentize(p, GEOGRAPHIC_STEP_DEG);
                if (ct && OGR_G_Transform(p, ct) != OGRERR_NONE) {
                    OGR_G_DestroyGeometry(p);
                    rc = dm_err_set(err, DM_EFORMAT, "AOI %s: layer %s, feature %lld cannot be "
                                    "transformed to the output CRS (outside its area of use?): "
                                    "%s", path, lname, (long long)OGR_F_GetFID(f), dm_gdal_msg());
                } else {
                    rc = keep(a, p, err);
                }
            }
        }
        OGR_F_Destroy(f);
    }
    if (ct)
        OCTDestroyCoordinateTransformation(ct);
    if (src)
        OSRRelease(src); /* OSRRelease(NULL) raises a CPLError */
    return rc;
}

int dm_aoi_open(const char *path, const char *target_wkt, dm_aoi **out, dm_err *err)
{
    *out = NULL;
    dm_aoi *a = calloc(1, sizeof *a);
    if (!a)
        return dm_err_oom(err);
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    OGRSpatialReferenceH target = NULL;
    GDALDatasetH ds = NULL;
    if (target_wkt && *target_wkt) {
        if (!(target = OSRNewSpatialReference(target_wkt)))
            rc = dm_err_set(err, DM_EINVAL, "AOI %s: the output CRS is not valid WKT: %s", path,
                            dm_gdal_msg());
        else
            OSRSetAxisMappingStrategy(target, OAMS_TRADITIONAL_GIS_ORDER);
    }
    if (rc == 0 && !(ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL))) {
        VSIStatBufL st;
        if (VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) != 0)
            rc = dm_err_set(err, DM_EIO, "AOI %s: no such file; check the path", path);
        else
            rc = dm_err_set(err, DM_EFORMAT, "AOI %s: not a vector file GDAL can read (%s); use "
                            "a GeoPackage, GeoJSON or Shapefile", path,
                            CPLGetLastErrorMsg()[0] ? CPLGetLastErrorMsg()
                                                    : "no vector driver recognises it");
    }
    int nl = ds ? GDALDatasetGetLayerCount(ds) : 0;
    for (int i = 0; rc == 0 && i < nl; i++)
        rc = read_layer(a, path, GDALDatasetGetLayer(ds, i), target, err);
    if (rc == 0 && a->n == 0)
        rc = dm_err_set(err, DM_EFORMAT, "AOI %s: no polygons in any layer; draw the area as a "
                        "polygon layer", path);
    if (ds)
        GDALClose(ds);
    if (target)
        OSRRelease(target);
    CPLPopErrorHandler();
    if (rc) {
        dm_aoi_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

/* An axis-aligned rectangle as a polygon; NULL when out of memory. */
static OGRGeometryH rectangle(double minx, double miny, double maxx, double maxy)
{
    OGRGeometryH ring = OGR_G_CreateGeometry(wkbLinearRing), rect = OGR_G_CreateGeometry(wkbPolygon);
    if (!ring || !rect) {
        OGR_G_DestroyGeometry(ring);
        OGR_G_DestroyGeometry(rect);
        return NULL;
    }
    OGR_G_AddPoint_2D(ring, minx, miny);
    OGR_G_AddPoint_2D(ring, maxx, miny);
    OGR_G_AddPoint_2D(ring, maxx, maxy);
    OGR_G_AddPoint_2D(ring, minx, maxy);
    OGR_G_AddPoint_2D(ring, minx, miny);
    OGR_G_AddGeometryDirectly(rect, ring);
    return rect;
}

int dm_aoi_touches(const dm_aoi *a, double minx, double miny, double maxx, double maxy)
{
    if (maxx < a->all.MinX || minx > a->all.MaxX || maxy < a->all.MinY || miny > a->all.MaxY)
        return 0;
    OGRGeometryH rect = NULL;
    int hit = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    for (int i = 0; !hit && i < a->n; i++) {
        const OGREnvelope *e = &a->env[i];
        if (maxx < e->MinX || minx > e->MaxX || maxy < e->MinY || miny > e->MaxY)
            continue;
        /* built only for the few tiles that pass an envelope; out of memory: keep the tile
         * rather than lose data */
        if (!rect && !(rect = rectangle(minx, miny, maxx, maxy))) {
            hit = 1;
            break;
        }
        hit = a->prep[i] ? OGRPreparedGeometryIntersects(a->prep[i], rect)
                         : OGR_G_Intersects(a->g[i], rect);
    }
    CPLPopErrorHandler();
    OGR_G_DestroyGeometry(rect);
    return hit;
}

int dm_aoi_mask(const dm_aoi *a, const double gt[6], int x0, int y0, int w, int h, uint8_t *mask,
                dm_err *err)
{
    double minx = gt[0] + x0 * gt[1], maxx = gt[0] + (x0 + w) * gt[1];
    double maxy = gt[3] + y0 * gt[5], miny = gt[3] + (y0 + h) * gt[5];
    OGRGeometryH rect = NULL, *hit = malloc(sizeof *hit * (size_t)(a->n ? a->n : 1));
    if (!hit)
        return dm_err_oom(err);
    int nhit = 0, inside = 0, rc = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    for (int i = 0; i < a->n && !inside; i++) {
        const OGREnvelope *e = &a->env[i];
        if (maxx < e->MinX || minx > e->MaxX || maxy < e->MinY || miny > e->MaxY)
            continue;
        if (!rect && a->prep[i])
            rect = rectangle(minx, miny, maxx, maxy);
        /* a window wholly inside one polygon (the common case) keeps its mask */
        inside = rect && a->prep[i] && OGRPreparedGeometryContains(a->prep[i], rect);
        hit[nhit++] = a->g[i];
    }
    OGR_G_DestroyGeometry(rect);
    if (!inside) {
        GDALDatasetH mem = GDALCreate(GDALGetDriverByName("MEM"), "", w, h, 1, GDT_Byte, NULL);
        uint8_t *in = malloc((size_t)w * h);
        double wgt[6] = { minx, gt[1], 0, maxy, 0, gt[5] };
        int band = 1;
        double burn = 1;
        char *opt[] = { "ALL_TOUCHED=FALSE", NULL };
        if (!mem || !in)
            rc = dm_err_oom(err);
        else if (GDALSetGeoTransform(mem, wgt) != CE_None ||
                 (nhit && GDALRasterizeGeometries(mem, 1, &band, nhit, hit, NULL, NULL, &burn,
                                                  opt, NULL, NULL) != CE_None) ||
                 GDALRasterIO(GDALGetRasterBand(mem, 1), GF_Read, 0, 0, w, h, in, w, h, GDT_Byte,
                              0, 0) != CE_None)
            rc = dm_err_set(err, DM_EIO, "cannot rasterize the AOI: %s", dm_gdal_msg());
        for (size_t i = 0; !rc && i < (size_t)w * h; i++)
            mask[i] = mask[i] && in[i];
        free(in);
        if (mem)
            GDALClose(mem);
    }
    CPLPopErrorHandler();
    free(hit);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int dm_aoi_sha256(const char *path, char out[65], dm_err *err)
{
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL);
    char **files = ds ? GDALGetFileList(ds) : NULL;
    if (ds)
        GDALClose(ds);
    CPLPopErrorHandler();
    if (!files) /* not a file GDAL lists (a URL...): its name alone */
        return dm_sha256_file_cached(path, out, err);
    dm_sha256 s;
    int rc = dm_sha256_init(&s) ? dm_err_oom(err) : 0;
    /* a shapefile's .shp, .shx, .dbf, .prj: all of them, in one order */
    qsort(files, (size_t)CSLCount(files), sizeof *files, cmp_str);
    for (int i = 0; !rc && files[i]; i++) {
        char one[65];
        if (!(rc = dm_sha256_file_cached(files[i], one, err)))
            dm_sha256_update(&s, one, 64);
    }
    CSLDestroy(files);
    dm_sha256_hex(&s, out);
    return rc;
}

/* gis/labels.c — segmentation labels (see gis.h): a class raster or a polygon layer, read once,
 * then turned into one class per 16×16-px patch of a features raster's grid.
 *
 * The pixels are those of the mosaic the features came from (the features' geotransform with a
 * 16× finer pixel), so a label means the same whatever grid the labels were drawn on. They are
 * made strip by strip (a few million pixels at a time) in memory: a class raster is warped with
 * nearest neighbour and the exact transformation (no approximation that could move a boundary by
 * a pixel), polygons are burnt at pixel centres as gdal_rasterize does. */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include "gis.h"

#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <gdal.h>
#include <gdal_alg.h>
#include <gdal_utils.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GEOGRAPHIC_STEP_DEG 0.01 /* as gis/aoi.c: lon/lat edges densified before projecting */
#define STRIP_PX (1 << 22)        /* pixels made at a time */
#define OUTLINE_STEPS 32          /* points per edge of a raster's footprint */

struct dm_labels {
    char *path;
    int vector;
    GDALDatasetH ds;              /* the raster (band 1 read), or NULL */
    GDALDatasetH band1;           /* a VRT of band 1 when the raster has more bands, or NULL */
    char *wkt;                    /* the labels' CRS */
    double gt[6];
    int W, H;
    /* polygons: each labelled feature in the layer's CRS, with its class id */
    int n, cap;
    OGRGeometryH *g;
    int *id;
    char field[80];
    dm_label_class cls[DM_LABEL_IDS];
};

void dm_labels_free(dm_labels *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->n; i++)
        OGR_G_DestroyGeometry(l->g[i]);
    free(l->g), free(l->id);
    if (l->band1)
        GDALClose(l->band1);
    if (l->ds)
        GDALClose(l->ds);
    free(l->path), free(l->wkt);
    free(l);
}

int dm_labels_is_vector(const dm_labels *l) { return l->vector; }
const char *dm_labels_field(const dm_labels *l) { return l->vector ? l->field : NULL; }

const dm_label_class *dm_labels_class(const dm_labels *l, int id)
{
    return id >= 0 && id < DM_LABEL_IDS ? &l->cls[id] : NULL;
}

/* --- a class raster -------------------------------------------------------------------------- */

static int col_named(const char *name, const char *const *names)
{
    for (int i = 0; names[i]; i++)
        if (!strcasecmp(name, names[i]))
            return 1;
    return 0;
}

/* The attribute table's names and colours, by GDAL's field usages, else by the usual names. */
static void read_rat(dm_labels *l, GDALRasterBandH b)
{
    GDALRasterAttributeTableH rat = GDALGetDefaultRAT(b);
    if (!rat)
        return;
    static const char *vn[] = { "value", "val", "id", "class_id", "classid", "code", NULL };
    static const char *nn[] = { "class", "class_name", "classname", "name", "label", NULL };
    static const char *rn[] = { "red", "r", NULL }, *gn[] = { "green", "g", NULL },
                      *bn[] = { "blue", "b", NULL };
    int col[6] = { -1, -1, -1, -1, -1, -1 }, score[6] = { 0 }; /* value name red green blue min */
    for (int i = 0; i < GDALRATGetColumnCount(rat); i++) {
        GDALRATFieldUsage u = GDALRATGetUsageOfCol(rat, i);
        const char *nm = GDALRATGetNameOfCol(rat, i);
        int str = GDALRATGetTypeOfCol(rat, i) == GFT_String;
        int hit[6] = {
            u == GFU_MinMax ? 2 : !str && col_named(nm, vn),
            u == GFU_Name ? 2 : str && col_named(nm, nn),
            u == GFU_Red ? 2 : !str && col_named(nm, rn),
            u == GFU_Green ? 2 : !str && col_named(nm, gn),
            u == GFU_Blue ? 2 : !str && col_named(nm, bn),
            u == GFU_Min ? 2 : 0,
        };
        for (int k = 0; k < 6; k++)
            if (hit[k] > score[k])
                score[k] = hit[k], col[k] = i;
    }
    double r0 = 0, bin = 1;
    int linear = GDALRATGetLinearBinning(rat, &r0, &bin);
    for (int r = 0; r < GDALRATGetRowCount(rat); r++) {
        double v = col[0] >= 0 ? GDALRATGetValueAsDouble(rat, r, col[0])
                   : col[5] >= 0 ? GDALRATGetValueAsDouble(rat, r, col[5])
                   : linear ? r0 + r * bin : r;
        if (v != floor(v) || v < 0 || v >= DM_LABEL_IDS)
            continue;
        dm_label_class *c = &l->cls[(int)v];
        const char *nm = col[1] >= 0 ? GDALRATGetValueAsString(rat, r, col[1]) : NULL;
        if (nm && *nm) {
            snprintf(c->name, sizeof c->name, "%s", nm);
            c->has_name = 1;
        }
        if (col[2] >= 0 && col[3] >= 0 && col[4] >= 0) {
            for (int k = 0; k < 3; k++) {
                int x = GDALRATGetValueAsInt(rat, r, col[2 + k]);
                c->rgb[k] = (uint8_t)(x < 0 ? 0 : x > 255 ? 255 : x);
            }
            c->has_rgb = 1;
        }
    }
}

static int open_raster(dm_labels *l, GDALDatasetH ds, const char *field, dm_err *err)
{
    l->ds = ds;
    if (field)
        return dm_err_set(err, DM_EINVAL, "labels %s: a raster, whose values are the classes; "
                          "--label-field is for vector labels", l->path);
    if (GDALGetRasterCount(ds) < 1)
        return dm_err_set(err, DM_EFORMAT, "labels %s: no raster band", l->path);
    const char *wkt = GDALGetProjectionRef(ds);
    if (GDALGetGeoTransform(ds, l->gt) != CE_None || !wkt || !*wkt)
        return dm_err_set(err, DM_EFORMAT, "labels %s: no georeferencing (a CRS and a "
                          "geotransform), so its classes cannot be placed on the imagery; "
                          "assign them (gdal_edit.py -a_srs ... -a_ullr ...)", l->path);
    if (!(l->wkt = strdup(wkt)))
        return dm_err_oom(err);
    l->W = GDALGetRasterXSize(ds), l->H = GDALGetRasterYSize(ds);
    GDALRasterBandH b = GDALGetRasterBand(ds, 1);
    read_rat(l, b);
    GDALColorTableH ct = GDALGetRasterColorTable(b);
    for (int i = 0; ct && i < GDALGetColorEntryCount(ct) && i < DM_LABEL_IDS; i++) {
        const GDALColorEntry *e = GDALGetColorEntry(ct, i);
        if (e && !l->cls[i].has_rgb) {
            l->cls[i].rgb[0] = (uint8_t)e->c1, l->cls[i].rgb[1] = (uint8_t)e->c2;
            l->cls[i].rgb[2] = (uint8_t)e->c3;
            l->cls[i].has_rgb = 1;
        }
    }
    if (GDALGetRasterCount(ds) > 1) { /* the warp reads band 1 alone */
        char *argv[] = { "-of", "VRT", "-b", "1", NULL };
        GDALTranslateOptions *to = GDALTranslateOptionsNew(argv, NULL);
        l->band1 = to ? GDALTranslate("", ds, to, NULL) : NULL;
        GDALTranslateOptionsFree(to);
        if (!l->band1)
            return dm_err_set(err, DM_EFORMAT, "labels %s: cannot select band 1: %s", l->path,
                              dm_gdal_msg());
    }
    return 0;
}

/* --- a polygon layer ------------------------------------------------------------------------- */

/* GeoPackage's reserved "Undefined ... SRS" say nothing about where the data is (as aoi.c). */
static int srs_known(OGRSpatialReferenceH s)
{
    const char *name = s ? OSRGetName(s) : NULL;
    return s && !(name && strncmp(name, "Undefined ", 10) == 0 && !OSRGetAuthorityCode(s, NULL));
}

static int is_class_field(OGRFieldType t)
{
    return t == OFTInteger || t == OFTInteger64 || t == OFTString;
}

/* "a (Integer), b (String)" */
static void list_fields(OGRFeatureDefnH d, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < OGR_FD_GetFieldCount(d) && k < n; i++) {
        OGRFieldDefnH f = OGR_FD_GetFieldDefn(d, i);
        k += (size_t)snprintf(buf + k, n - k, "%s%s (%s)", i ? ", " : "", OGR_Fld_GetNameRef(f),
                              OGR_GetFieldTypeName(OGR_Fld_GetType(f)));
    }
    if (!buf[0])
        snprintf(buf, n, "it has none");
}

static int keep(dm_labels *l, OGRGeometryH g, int id, dm_err *err)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        OGRGeometryH *ng = realloc(l->g, sizeof *ng * (size_t)cap);
        if (ng)
            l->g = ng;
        int *ni = realloc(l->id, sizeof *ni * (size_t)cap);
        if (ni)
            l->id = ni;
        if (!ng || !ni) {
            OGR_G_DestroyGeometry(g);
            return dm_err_oom(err);
        }
        l->cap = cap;
    }
    l->g[l->n] = g, l->id[l->n] = id;
    l->n++;
    return 0;
}

/* A 2-D polygonal copy of g, or NULL when g is not an area. */
static OGRGeometryH as_polygons(OGRGeometryH g)
{
    OGRwkbGeometryType t = wkbFlatten(OGR_G_GetGeometryType(g));
    if (!OGR_GT_IsSurface(t) && !OGR_GT_IsSubClassOf(t, wkbMultiSurface) &&
        t != wkbGeometryCollection)
        return NULL;
    OGRGeometryH c = OGR_G_Clone(g);
    if (!c)
        return NULL;
    OGR_G_FlattenTo2D(c);
    if (t != wkbPolygon && t != wkbMultiPolygon)
        c = OGR_G_ForceToMultiPolygon(c);
    t = c ? wkbFlatten(OGR_G_GetGeometryType(c)) : wkbUnknown;
    if (c && t != wkbPolygon && t != wkbMultiPolygon) {
        OGR_G_DestroyGeometry(c);
        c = NULL;
    }
    return c;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int open_vector(dm_labels *l, GDALDatasetH ds, const char *field, dm_err *err)
{
    OGRLayerH ly = GDALDatasetGetLayerCount(ds) > 0 ? GDALDatasetGetLayer(ds, 0) : NULL;
    if (!ly)
        return dm_err_set(err, DM_EFORMAT, "labels %s: no layer", l->path);
    const char *lname = OGR_L_GetName(ly);
    OGRSpatialReferenceH srs = OGR_L_GetSpatialRef(ly);
    if (!srs_known(srs))
        return dm_err_set(err, DM_EFORMAT, "labels %s: layer %s has no CRS, so its polygons "
                          "cannot be placed on the imagery; assign one (e.g. ogr2ogr -a_srs "
                          "EPSG:4326 fixed.gpkg %s)", l->path, lname, l->path);
    char *wkt = NULL;
    if (OSRExportToWkt(srs, &wkt) != OGRERR_NONE || !(l->wkt = strdup(wkt))) {
        CPLFree(wkt);
        return dm_err_set(err, DM_EFORMAT, "labels %s: layer %s: its CRS cannot be written as "
                          "WKT: %s", l->path, lname, dm_gdal_msg());
    }
    CPLFree(wkt);
    OGRFeatureDefnH d = OGR_L_GetLayerDefn(ly);
    char fields[600];
    list_fields(d, fields, sizeof fields);
    int fi = -1;
    if (field) {
        fi = OGR_FD_GetFieldIndex(d, field);
        if (fi < 0)
            return dm_err_set(err, DM_EINVAL, "labels %s: --label-field %s: layer %s has no such "
                              "field (its fields: %s)", l->path, field, lname, fields);
        if (!is_class_field(OGR_Fld_GetType(OGR_FD_GetFieldDefn(d, fi))))
            return dm_err_set(err, DM_EINVAL, "labels %s: --label-field %s is a %s field; the "
                              "classes come from an integer field (the ids) or a string field "
                              "(the names)", l->path, field,
                              OGR_GetFieldTypeName(OGR_Fld_GetType(OGR_FD_GetFieldDefn(d, fi))));
    } else {
        for (int i = 0; fi < 0 && i < OGR_FD_GetFieldCount(d); i++)
            if (is_class_field(OGR_Fld_GetType(OGR_FD_GetFieldDefn(d, i))))
                fi = i;
        if (fi < 0)
            return dm_err_set(err, DM_EINVAL, "labels %s: layer %s has no integer or string field "
                              "to take the classes from (its fields: %s)", l->path, lname,
                              fields);
    }
    snprintf(l->field, sizeof l->field, "%s", OGR_Fld_GetNameRef(OGR_FD_GetFieldDefn(d, fi)));
    int str = OGR_Fld_GetType(OGR_FD_GetFieldDefn(d, fi)) == OFTString, rc = 0;
    /* string classes: every value first (their ids are their ranks), each feature's kept */
    char **vals = NULL, **sorted = NULL;
    int nv = 0, capv = 0, nd = 0;
    OGRFeatureH f;
    OGR_L_ResetReading(ly);
    while (!rc && (f = OGR_L_GetNextFeature(ly))) {
        OGRGeometryH g = OGR_F_GetGeometryRef(f);
        long long fid = (long long)OGR_F_GetFID(f);
        int set = OGR_F_IsFieldSetAndNotNull(f, fi);
        long long v = set && !str ? OGR_F_GetFieldAsInteger64(f, fi) : 0;
        const char *s = set && str ? OGR_F_GetFieldAsString(f, fi) : "";
        OGRGeometryH p = NULL;
        if (!g || OGR_G_IsEmpty(g) || (str ? !*s : v == 0)) {
            OGR_F_Destroy(f); /* unlabelled */
            continue;
        }
        if (!str && (v < 0 || v >= DM_LABEL_IDS))
            rc = dm_err_set(err, DM_EINVAL, "labels %s: feature %lld: class id %lld in field %s "
                            "is outside 1..254 (0 is unlabelled; 255 is the nodata of the class "
                            "rasters dinomap writes)", l->path, fid, v, l->field);
        else if (!(p = as_polygons(g)))
            rc = dm_err_set(err, DM_EFORMAT, "labels %s: layer %s, feature %lld is a %s; labels "
                            "are polygons (buffer points or lines into areas first)", l->path,
                            lname, fid, OGR_G_GetGeometryName(g));
        else if ((rc = keep(l, p, (int)v, err)))
            ;
        else if (str) {
            if (nv == capv) {
                capv = capv ? 2 * capv : 64;
                char **nvv = realloc(vals, sizeof *nvv * (size_t)capv);
                if (!nvv)
                    rc = dm_err_oom(err);
                else
                    vals = nvv;
            }
            if (!rc && !(vals[nv++] = strdup(s)))
                rc = dm_err_oom(err);
        }
        OGR_F_Destroy(f);
    }
    if (!rc && str && nv) {
        if (!(sorted = malloc(sizeof *sorted * (size_t)nv)))
            rc = dm_err_oom(err);
        for (int i = 0; !rc && i < nv; i++)
            sorted[i] = vals[i];
        if (!rc) {
            qsort(sorted, (size_t)nv, sizeof *sorted, cmp_str);
            for (int i = 0; i < nv; i++)
                if (!nd || strcmp(sorted[nd - 1], sorted[i]))
                    sorted[nd++] = sorted[i];
            if (nd >= DM_LABEL_IDS)
                rc = dm_err_set(err, DM_EINVAL, "labels %s: field %s holds %d different "
                                "values; a head has at most 254 classes", l->path, l->field, nd);
        }
        for (int i = 0; !rc && i < nv; i++) { /* the rank of each feature's value, 1-based */
            int lo = 0, hi = nd - 1;
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (strcmp(sorted[mid], vals[i]) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            l->id[i] = lo + 1;
        }
        for (int i = 0; !rc && i < nd; i++) {
            snprintf(l->cls[i + 1].name, sizeof l->cls[i + 1].name, "%s", sorted[i]);
            l->cls[i + 1].has_name = 1;
        }
    }
    for (int i = 0; i < nv; i++)
        free(vals[i]);
    free(vals), free(sorted);
    if (!rc && !l->n)
        rc = dm_err_set(err, DM_EINVAL, "labels %s: no polygon of layer %s has a class in field "
                        "%s (all are 0, NULL or empty)", l->path, lname, l->field);
    return rc;
}

int dm_labels_open(const char *path, const char *field, dm_labels **out, dm_err *err)
{
    *out = NULL;
    dm_labels *l = calloc(1, sizeof *l);
    if (!l || !(l->path = strdup(path))) {
        free(l);
        return dm_err_oom(err);
    }
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc;
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (ds) {
        rc = open_raster(l, ds, field, err);
    } else if ((ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL))) {
        l->vector = 1;
        rc = open_vector(l, ds, field, err);
        GDALClose(ds);
    } else {
        VSIStatBufL st;
        rc = VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) != 0
                 ? dm_err_set(err, DM_EIO, "labels %s: no such file", path)
                 : dm_err_set(err, DM_EFORMAT, "labels %s: neither a raster nor a vector file "
                              "GDAL can read (%s)", path, dm_gdal_msg());
    }
    CPLPopErrorHandler();
    if (rc) {
        dm_labels_free(l);
        return rc;
    }
    *out = l;
    return 0;
}

/* --- where the labels are -------------------------------------------------------------------- */

static OGRSpatialReferenceH srs_from(const char *wkt)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    if (s && OSRSetFromUserInput(s, wkt) != OGRERR_NONE) {
        OSRRelease(s);
        return NULL;
    }
    if (s)
        OSRSetAxisMappingStrategy(s, OAMS_TRADITIONAL_GIS_ORDER); /* x = easting or longitude */
    return s;
}

/* The raster's outline, OUTLINE_STEPS points per edge, in its CRS: x, y [4·OUTLINE_STEPS]. */
static void outline(const dm_labels *l, double *x, double *y)
{
    int k = 0;
    for (int e = 0; e < 4; e++)
        for (int i = 0; i < OUTLINE_STEPS; i++, k++) {
            double t = (double)i / OUTLINE_STEPS;
            double px = e == 0 ? t * l->W : e == 1 ? l->W : e == 2 ? (1 - t) * l->W : 0;
            double py = e == 0 ? 0 : e == 1 ? t * l->H : e == 2 ? l->H : (1 - t) * l->H;
            x[k] = l->gt[0] + px * l->gt[1] + py * l->gt[2];
            y[k] = l->gt[3] + px * l->gt[4] + py * l->gt[5];
        }
}

/* Copies of the polygons moved into the CRS `to` (densified first when the labels are lon/lat). */
static int moved(const dm_labels *l, OGRSpatialReferenceH to, OGRGeometryH **out, dm_err *err)
{
    OGRSpatialReferenceH from = srs_from(l->wkt);
    OGRCoordinateTransformationH ct = from ? OCTNewCoordinateTransformation(from, to) : NULL;
    int rc = ct ? 0 : dm_err_set(err, DM_EFORMAT, "labels %s: no transformation from their CRS "
                                 "to the imagery's: %s", l->path, dm_gdal_msg());
    int geographic = from && OSRIsGeographic(from);
    OGRGeometryH *g = rc ? NULL : calloc((size_t)(l->n ? l->n : 1), sizeof *g);
    if (!rc && !g)
        rc = dm_err_oom(err);
    for (int i = 0; !rc && i < l->n; i++) {
        if (!(g[i] = OGR_G_Clone(l->g[i])))
            rc = dm_err_oom(err);
        else if (geographic)
            OGR_G_Segmentize(g[i], GEOGRAPHIC_STEP_DEG);
        if (!rc && OGR_G_Transform(g[i], ct) != OGRERR_NONE)
            rc = dm_err_set(err, DM_EFORMAT, "labels %s: polygon %d cannot be transformed to the "
                            "imagery's CRS (outside its area of use?): %s", l->path, i + 1,
                            dm_gdal_msg());
    }
    if (ct)
        OCTDestroyCoordinateTransformation(ct);
    if (from)
        OSRRelease(from);
    if (rc && g) {
        for (int i = 0; i < l->n; i++)
            OGR_G_DestroyGeometry(g[i]);
        free(g);
        g = NULL;
    }
    *out = g;
    return rc;
}

/* A growing string. */
typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (int pass = 0; pass < 2 && !b->oom; pass++) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
        } else if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        } else {
            size_t cap = (b->cap ? 2 * b->cap : 4096) + (size_t)k;
            char *p = realloc(b->s, cap);
            if (!p)
                b->oom = 1;
            else
                b->s = p, b->cap = cap;
        }
    }
}

int dm_labels_footprint(const dm_labels *l, char **json, dm_err *err)
{
    *json = NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRSpatialReferenceH wgs = OSRNewSpatialReference(NULL);
    int rc = wgs && OSRImportFromEPSG(wgs, 4326) == OGRERR_NONE
                 ? 0 : dm_err_set(err, DM_EFORMAT, "PROJ does not know EPSG:4326: %s", dm_gdal_msg());
    if (!rc)
        OSRSetAxisMappingStrategy(wgs, OAMS_TRADITIONAL_GIS_ORDER);
    sbuf b = { 0 };
    put(&b, "{\"type\":\"FeatureCollection\",\"name\":\"labels\",\"features\":[");
    if (!rc && !l->vector) {
        enum { NP = 4 * OUTLINE_STEPS };
        double x[NP], y[NP];
        int ok[NP], any = 0;
        outline(l, x, y);
        OGRSpatialReferenceH from = srs_from(l->wkt);
        OGRCoordinateTransformationH ct = from ? OCTNewCoordinateTransformation(from, wgs) : NULL;
        if (!ct || !OCTTransformEx(ct, NP, x, y, NULL, ok))
            rc = dm_err_set(err, DM_EFORMAT, "labels %s: their footprint cannot be transformed "
                            "to EPSG:4326: %s", l->path, dm_gdal_msg());
        put(&b, "{\"type\":\"Feature\",\"properties\":{},\"geometry\":{\"type\":\"Polygon\","
                "\"coordinates\":[[");
        int first = -1;
        for (int i = 0; !rc && i < NP; i++)
            if (ok[i]) {
                put(&b, "%s[%.12f,%.12f]", any++ ? "," : "", x[i], y[i]);
                first = first < 0 ? i : first;
            }
        if (!rc && any < 3)
            rc = dm_err_set(err, DM_EFORMAT, "labels %s: their footprint lies outside the area "
                            "EPSG:4326 can describe", l->path);
        if (!rc)
            put(&b, ",[%.12f,%.12f]]]}}", x[first], y[first]);
        if (ct)
            OCTDestroyCoordinateTransformation(ct);
        if (from)
            OSRRelease(from);
    } else if (!rc) {
        OGRGeometryH *g = NULL;
        char *opt[] = { "COORDINATE_PRECISION=12", NULL };
        rc = moved(l, wgs, &g, err);
        for (int i = 0; !rc && i < l->n; i++) {
            char *gj = OGR_G_ExportToJsonEx(g[i], opt);
            if (!gj)
                rc = dm_err_set(err, DM_EFORMAT, "labels %s: polygon %d cannot be written as "
                                "GeoJSON: %s", l->path, i + 1, dm_gdal_msg());
            else
                put(&b, "%s{\"type\":\"Feature\",\"properties\":{},\"geometry\":%s}", i ? "," : "",
                    gj);
            CPLFree(gj);
        }
        for (int i = 0; g && i < l->n; i++)
            OGR_G_DestroyGeometry(g[i]);
        free(g);
    }
    put(&b, "]}\n");
    if (wgs)
        OSRRelease(wgs);
    CPLPopErrorHandler();
    if (!rc && b.oom)
        rc = dm_err_oom(err);
    if (rc) {
        free(b.s);
        return rc;
    }
    *json = b.s;
    return 0;
}

/* --- one class per patch --------------------------------------------------------------------- */

/* Per patch of a strip: the class at least DM_LABEL_MIN_PX of its pixels carry, or 0. px holds
 * the strip's pixels [16·h, 16·w]. */
static int patch_classes(const dm_labels *l, const double *px, int w, int h, uint8_t *cls,
                         const double *sgt, dm_label_grid *g, dm_err *err)
{
    int pw = 16 * w, hist[DM_LABEL_IDS];
    memset(hist, 0, sizeof hist);
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++) {
            int n = 0, best = 0, tie = 0;
            uint8_t seen[256];
            for (int y = 16 * r; y < 16 * r + 16; y++)
                for (int x = 16 * c; x < 16 * c + 16; x++) {
                    double v = px[(size_t)y * pw + x];
                    if (isnan(v) || v == 0)
                        continue;
                    if (v != floor(v) || v < 0 || v >= DM_LABEL_IDS) {
                        double X = sgt[0] + (x + 0.5) * sgt[1], Y = sgt[3] + (y + 0.5) * sgt[5];
                        return dm_err_set(err, DM_EINVAL, "labels %s: value %g (at %.2f, %.2f "
                                          "in the imagery's CRS) is not a class id: classes are "
                                          "integers 1..254 (0 and nodata are unlabelled; 255 is "
                                          "the nodata of the class rasters dinomap writes: "
                                          "declare it, e.g. gdal_edit.py -a_nodata 255)", l->path,
                                          v, X, Y);
                    }
                    int k = (int)v;
                    if (!hist[k]++)
                        seen[n++] = (uint8_t)k;
                }
            int labelled = 0;
            for (int i = 0; i < n; i++) {
                int k = seen[i];
                labelled += hist[k];
                if (hist[k] > hist[best] || !best)
                    best = k, tie = 0;
                else if (hist[k] == hist[best])
                    tie = 1;
            }
            int take = best && hist[best] >= DM_LABEL_MIN_PX && !tie;
            cls[(size_t)r * w + c] = (uint8_t)(take ? best : 0);
            g->labelled_px += labelled;
            g->mixed += labelled && !take;
            for (int i = 0; i < n; i++)
                hist[seen[i]] = 0;
        }
    return 0;
}

int dm_labels_patches(const dm_labels *l, const double gt[6], const char *wkt, int W, int H,
                      dm_label_grid *out, dm_err *err)
{
    memset(out, 0, sizeof *out);
    if (!wkt || !*wkt)
        return dm_err_set(err, DM_EINVAL, "the features have no CRS, so labels %s cannot be "
                          "placed on them", l->path);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRSpatialReferenceH to = srs_from(wkt);
    int rc = to ? 0 : dm_err_set(err, DM_EFORMAT, "the features' CRS is not valid: %s",
                                 dm_gdal_msg());
    OGRGeometryH *g = NULL;
    OGREnvelope *env = NULL;
    double minx = INFINITY, miny = INFINITY, maxx = -INFINITY, maxy = -INFINITY;
    /* the labels' extent in the features' CRS */
    if (!rc && l->vector) {
        rc = moved(l, to, &g, err);
        if (!rc && !(env = malloc(sizeof *env * (size_t)(l->n ? l->n : 1))))
            rc = dm_err_oom(err);
        for (int i = 0; !rc && i < l->n; i++) {
            OGR_G_GetEnvelope(g[i], &env[i]);
            minx = fmin(minx, env[i].MinX), maxx = fmax(maxx, env[i].MaxX);
            miny = fmin(miny, env[i].MinY), maxy = fmax(maxy, env[i].MaxY);
        }
    } else if (!rc) {
        enum { NP = 4 * OUTLINE_STEPS };
        double x[NP], y[NP];
        int ok[NP];
        outline(l, x, y);
        OGRSpatialReferenceH from = srs_from(l->wkt);
        OGRCoordinateTransformationH ct = from ? OCTNewCoordinateTransformation(from, to) : NULL;
        if (!ct)
            rc = dm_err_set(err, DM_EFORMAT, "labels %s: no transformation from their CRS to "
                            "the imagery's: %s", l->path, dm_gdal_msg());
        else
            OCTTransformEx(ct, NP, x, y, NULL, ok);
        for (int i = 0; !rc && i < NP; i++)
            if (ok[i] && isfinite(x[i]) && isfinite(y[i])) {
                minx = fmin(minx, x[i]), maxx = fmax(maxx, x[i]);
                miny = fmin(miny, y[i]), maxy = fmax(maxy, y[i]);
            }
        if (ct)
            OCTDestroyCoordinateTransformation(ct);
        if (from)
            OSRRelease(from);
    }
    /* the window of patches that extent touches */
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    if (!rc && minx <= maxx && miny <= maxy) {
        double ax = (minx - gt[0]) / gt[1], bx = (maxx - gt[0]) / gt[1];
        double ay = (maxy - gt[3]) / gt[5], by = (miny - gt[3]) / gt[5];
        double lx = fmax(0, floor(fmin(ax, bx))), hx = fmin(W, ceil(fmax(ax, bx)));
        double ly = fmax(0, floor(fmin(ay, by))), hy = fmin(H, ceil(fmax(ay, by)));
        if (lx < hx && ly < hy)
            x0 = (int)lx, x1 = (int)hx, y0 = (int)ly, y1 = (int)hy;
    }
    if (!rc && (x1 <= x0 || y1 <= y0))
        rc = dm_err_set(err, DM_EINVAL, "labels %s do not overlap the imagery (%d × %d patches "
                        "of the features); check their CRS and extent", l->path, W, H);
    int w = x1 - x0, h = y1 - y0;
    if (!rc && !(out->cls = calloc((size_t)w * h, 1)))
        rc = dm_err_oom(err);
    out->x0 = x0, out->y0 = y0, out->w = w, out->h = h;
    /* strip by strip: the labels on the pixels, then per patch */
    int rows = STRIP_PX / (256 * (w ? w : 1));
    rows = rows < 1 ? 1 : rows > h ? h : rows;
    double *px = rc ? NULL : malloc(sizeof *px * (size_t)256 * w * rows);
    double *burn = l->vector && !rc ? malloc(sizeof *burn * (size_t)(l->n ? l->n : 1)) : NULL;
    OGRGeometryH *hit = l->vector && !rc ? malloc(sizeof *hit * (size_t)(l->n ? l->n : 1)) : NULL;
    if (!rc && (!px || (l->vector && (!burn || !hit))))
        rc = dm_err_oom(err);
    char *wargv[] = { "-r", "near", "-et", "0", "-wo", "INIT_DEST=0", NULL };
    GDALWarpAppOptions *wo = !rc && !l->vector ? GDALWarpAppOptionsNew(wargv, NULL) : NULL;
    if (!rc && !l->vector && !wo)
        rc = dm_err_set(err, DM_EFORMAT, "cannot set up the warp of labels %s: %s", l->path,
                        dm_gdal_msg());
    for (int r0 = 0; !rc && r0 < h; r0 += rows) {
        int n = h - r0 < rows ? h - r0 : rows, pw = 16 * w, ph = 16 * n;
        double sgt[6] = { gt[0] + x0 * gt[1], gt[1] / 16, 0, gt[3] + (y0 + r0) * gt[5], 0,
                          gt[5] / 16 };
        GDALDatasetH mem = GDALCreate(GDALGetDriverByName("MEM"), "", pw, ph, 1, GDT_Float64,
                                      NULL);
        if (!mem) {
            rc = dm_err_set(err, DM_ENOMEM, "cannot make a %d × %d px label strip: %s", pw, ph,
                            dm_gdal_msg());
            break;
        }
        GDALSetGeoTransform(mem, sgt);
        GDALSetProjection(mem, wkt);
        if (l->vector) {
            double sx0 = sgt[0], sx1 = sgt[0] + pw * sgt[1];
            double sy1 = sgt[3], sy0 = sgt[3] + ph * sgt[5];
            int nh = 0, band = 1;
            for (int i = 0; i < l->n; i++)
                if (!(env[i].MaxX < fmin(sx0, sx1) || env[i].MinX > fmax(sx0, sx1) ||
                      env[i].MaxY < fmin(sy0, sy1) || env[i].MinY > fmax(sy0, sy1)))
                    hit[nh] = g[i], burn[nh++] = l->id[i]; /* in order: later ones on top */
            if (nh && GDALRasterizeGeometries(mem, 1, &band, nh, hit, NULL, NULL, burn, NULL,
                                              NULL, NULL) != CE_None)
                rc = dm_err_set(err, DM_EIO, "cannot rasterize labels %s: %s", l->path,
                                dm_gdal_msg());
        } else {
            GDALDatasetH src = l->band1 ? l->band1 : l->ds;
            int usage = 0;
            CPLErrorReset();
            if (!GDALWarp(NULL, mem, 1, &src, wo, &usage) || CPLGetLastErrorType() >= CE_Failure)
                rc = dm_err_set(err, DM_EIO, "cannot warp labels %s onto the imagery's pixels: "
                                "%s", l->path, dm_gdal_msg());
        }
        if (!rc && GDALRasterIO(GDALGetRasterBand(mem, 1), GF_Read, 0, 0, pw, ph, px, pw, ph,
                                GDT_Float64, 0, 0) != CE_None)
            rc = dm_err_set(err, DM_EIO, "cannot read the label strip: %s", dm_gdal_msg());
        GDALClose(mem);
        if (!rc)
            rc = patch_classes(l, px, w, n, out->cls + (size_t)r0 * w, sgt, out, err);
    }
    GDALWarpAppOptionsFree(wo);
    for (int i = 0; g && i < l->n; i++)
        OGR_G_DestroyGeometry(g[i]);
    free(g), free(env), free(px), free(burn), free(hit);
    if (to)
        OSRRelease(to);
    CPLPopErrorHandler();
    if (!rc && !out->labelled_px)
        rc = dm_err_set(err, DM_EINVAL, "labels %s do not overlap the imagery: no labelled pixel "
                        "(a class id, not 0 or nodata) falls on its %d × %d patches; check their "
                        "CRS and extent", l->path, W, H);
    if (rc) {
        free(out->cls);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

/* gis/stac.c — a run's STAC Item (item.json, STAC 1.0.0) beside its outputs, so that catalogues
 * and STAC tools (pystac, stac-validator, QGIS's STAC browser) find the run: geometry and bbox in
 * EPSG:4326 (the footprint transformed with PROJ, its edges densified), the projection extension
 * (proj:epsg, proj:wkt2, proj:bbox, proj:shape, proj:transform), and one asset per file with its
 * media type and roles; rasters carry raster:bands (data type, nodata, scale/offset, unit) read
 * back from the files themselves, so the Item says what the files say. Hrefs are relative to the
 * Item: the folder can move. An ungeoreferenced run has geometry null, no bbox and proj:epsg null
 * (STAC allows it). The Item is written to a temporary name and renamed. */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <gdal.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gis.h"

#define EXT_PROJ "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
#define EXT_RASTER "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
#define EXT_EO "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
#define COG_TYPE "image/tiff; application=geotiff; profile=cloud-optimized"
#define DENSIFY 16 /* points per edge of the footprint: its curved image in EPSG:4326 */

/* What the Item is built from: the footprint so far and the CRS of the rasters. */
typedef struct stac_ctx {
    const dm_stac_spec *s;
    cJSON *assets;
    int have_fp;
    double minx, miny, maxx, maxy;   /* the rasters' union, in their CRS */
    char *wkt;                        /* the first raster's CRS (CPLFree), NULL: none */
    int have_grid;                    /* the item-level proj:transform was set */
    int shape[2];                     /* the first raster's [H, W] (item-level proj:shape) */
    double transform[6];
    int eo;                           /* some asset has eo:bands */
} stac_ctx;

static const char *data_type(GDALDataType t)
{
    switch (t) {
    case GDT_Byte: return "uint8";
    case GDT_UInt16: return "uint16";
    case GDT_Int16: return "int16";
    case GDT_UInt32: return "uint32";
    case GDT_Int32: return "int32";
    case GDT_Float32: return "float32";
    case GDT_Float64: return "float64";
    case GDT_CInt16: return "cint16";
    case GDT_CInt32: return "cint32";
    case GDT_CFloat32: return "cfloat32";
    case GDT_CFloat64: return "cfloat64";
    default: return "other";
    }
}

static const char *media_type(const char *href)
{
    const char *e = strrchr(href, '.');
    e = e ? e + 1 : "";
    if (!strcasecmp(e, "tif") || !strcasecmp(e, "tiff"))
        return COG_TYPE;
    if (!strcasecmp(e, "gpkg"))
        return "application/geopackage+sqlite3";
    if (!strcasecmp(e, "json"))
        return "application/json";
    if (!strcasecmp(e, "vrt") || !strcasecmp(e, "qml"))
        return "application/xml";
    return "application/octet-stream";
}

static int is_raster(const char *href)
{
    const char *e = strrchr(href, '.');
    return e && (!strcasecmp(e, ".tif") || !strcasecmp(e, ".tiff") || !strcasecmp(e, ".vrt"));
}

static cJSON *strings(const char *space_separated)
{
    cJSON *a = cJSON_CreateArray();
    char buf[256];
    snprintf(buf, sizeof buf, "%s", space_separated ? space_separated : "");
    char *save = NULL;
    for (char *t = strtok_r(buf, " ", &save); a && t; t = strtok_r(NULL, " ", &save))
        cJSON_AddItemToArray(a, cJSON_CreateString(t));
    return a;
}

/* GDAL's geotransform as the affine row order of proj:transform: [a, b, c, d, e, f]. */
static void affine(const double gt[6], double t[6])
{
    t[0] = gt[1], t[1] = gt[2], t[2] = gt[0], t[3] = gt[4], t[4] = gt[5], t[5] = gt[3];
}

/* Metres per unit of a projected CRS's axes; 0 when not projected or unknown. */
static double metres_per_unit(const char *wkt)
{
    OGRSpatialReferenceH r = OSRNewSpatialReference(wkt);
    double f = 0;
    if (r && OSRIsProjected(r))
        f = OSRGetLinearUnits(r, NULL);
    if (r)
        OSRDestroySpatialReference(r);
    return f;
}

static cJSON *raster_bands(GDALDatasetH d, double res_m)
{
    cJSON *a = cJSON_CreateArray();
    for (int b = 1; a && b <= GDALGetRasterCount(d); b++) {
        GDALRasterBandH h = GDALGetRasterBand(d, b);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(a, o);
        cJSON_AddStringToObject(o, "data_type", data_type(GDALGetRasterDataType(h)));
        int has = 0;
        double nd = GDALGetRasterNoDataValue(h, &has);
        if (has && isnan(nd))
            cJSON_AddStringToObject(o, "nodata", "nan");
        else if (has && isinf(nd))
            cJSON_AddStringToObject(o, "nodata", nd > 0 ? "inf" : "-inf");
        else if (has)
            cJSON_AddNumberToObject(o, "nodata", nd);
        cJSON_AddStringToObject(o, "sampling", "area");
        int hs = 0, ho = 0;
        double sc = GDALGetRasterScale(h, &hs), of = GDALGetRasterOffset(h, &ho);
        if ((hs && sc != 1) || (ho && of != 0)) {
            cJSON_AddNumberToObject(o, "scale", hs ? sc : 1);
            cJSON_AddNumberToObject(o, "offset", ho ? of : 0);
        }
        const char *u = GDALGetRasterUnitType(h);
        if (u && *u)
            cJSON_AddStringToObject(o, "unit", u);
        if (res_m > 0)
            cJSON_AddNumberToObject(o, "spatial_resolution", res_m);
    }
    return a;
}

/* eo:bands of a colour preview: each band's name (its description) and the colour it is shown
 * as; no common_name, which would claim a part of the spectrum. */
static cJSON *eo_bands(GDALDatasetH d)
{
    cJSON *a = cJSON_CreateArray();
    for (int b = 1; a && b <= GDALGetRasterCount(d); b++) {
        GDALRasterBandH h = GDALGetRasterBand(d, b);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(a, o);
        const char *n = GDALGetDescription(h);
        char nm[32], desc[128];
        snprintf(nm, sizeof nm, "b%d", b);
        cJSON_AddStringToObject(o, "name", n && *n ? n : nm);
        GDALColorInterp ci = GDALGetRasterColorInterpretation(h);
        if (ci == GCI_RedBand || ci == GCI_GreenBand || ci == GCI_BlueBand) {
            snprintf(desc, sizeof desc, "shown as %s",
                     ci == GCI_RedBand ? "red" : ci == GCI_GreenBand ? "green" : "blue");
            cJSON_AddStringToObject(o, "description", desc);
        }
    }
    return a;
}

/* The raster fields of an asset: proj:shape/transform, raster:bands, eo:bands; the footprint and
 * the CRS into c. full = 0: the grid only (a block of a VRT that carries the bands). */
static int describe_raster(stac_ctx *c, const char *path, const dm_stac_asset *as, int full,
                           cJSON *o, dm_err *err)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d) {
        return dm_err_set(err, DM_EIO, "%s: cannot open for item.json: %s", path,
                          dm_gdal_msg());
    }
    int W = GDALGetRasterXSize(d), H = GDALGetRasterYSize(d);
    double gt[6];
    const char *wkt = GDALGetProjectionRef(d);
    int geo = GDALGetGeoTransform(d, gt) == CE_None && wkt && *wkt;
    cJSON *sh = cJSON_AddArrayToObject(o, "proj:shape");
    cJSON_AddItemToArray(sh, cJSON_CreateNumber(H));
    cJSON_AddItemToArray(sh, cJSON_CreateNumber(W));
    double res_m = 0;
    if (!c->shape[0])
        c->shape[0] = H, c->shape[1] = W;
    if (geo) {
        double t[6];
        affine(gt, t);
        cJSON_AddItemToObject(o, "proj:transform", cJSON_CreateDoubleArray(t, 6));
        double xs[2] = { gt[0], gt[0] + W * gt[1] + H * gt[2] };
        double ys[2] = { gt[3], gt[3] + W * gt[4] + H * gt[5] };
        double x0 = fmin(xs[0], xs[1]), x1 = fmax(xs[0], xs[1]);
        double y0 = fmin(ys[0], ys[1]), y1 = fmax(ys[0], ys[1]);
        if (!c->have_fp)
            c->minx = x0, c->maxx = x1, c->miny = y0, c->maxy = y1;
        c->minx = fmin(c->minx, x0), c->maxx = fmax(c->maxx, x1);
        c->miny = fmin(c->miny, y0), c->maxy = fmax(c->maxy, y1);
        c->have_fp = 1;
        if (!c->wkt)
            c->wkt = CPLStrdup(wkt);
        double f = metres_per_unit(wkt);
        res_m = f > 0 && gt[2] == 0 && gt[4] == 0 ? fabs(gt[1]) * f : 0;
        if (!c->have_grid && c->shape[0] == H && c->shape[1] == W) {
            c->have_grid = 1;
            memcpy(c->transform, t, sizeof t);
        }
    }
    if (full)
        cJSON_AddItemToObject(o, "raster:bands", raster_bands(d, res_m));
    if (full && as->eo) {
        cJSON_AddItemToObject(o, "eo:bands", eo_bands(d));
        c->eo = 1;
    }
    GDALClose(d);
    return 0;
}

static int add_asset(stac_ctx *c, const char *key, const char *href, const char *title,
                     const dm_stac_asset *as, int full, dm_err *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", c->s->dir, href);
    VSIStatBufL st;
    if (VSIStatL(path, &st) != 0)
        return dm_err_set(err, DM_EIO, "%s: listed for item.json but not there (a bug)", path);
    cJSON *o = cJSON_AddObjectToObject(c->assets, key);
    if (!o)
        return dm_err_oom(err);
    cJSON_AddStringToObject(o, "href", href);
    cJSON_AddStringToObject(o, "type", as->type ? as->type : media_type(href));
    if (title)
        cJSON_AddStringToObject(o, "title", title);
    cJSON_AddItemToObject(o, "roles", strings(as->roles));
    return is_raster(href) ? describe_raster(c, path, as, full, o, err) : 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A folder of blocks: each .tif in it (sorted), keyed by its name without .tif. */
static int add_folder(stac_ctx *c, const dm_stac_asset *as, dm_err *err)
{
    char path[4200], dir[1024];
    snprintf(dir, sizeof dir, "%s", as->href);
    size_t n = strlen(dir);
    while (n && dir[n - 1] == '/')
        dir[--n] = '\0';
    snprintf(path, sizeof path, "%s/%s", c->s->dir, dir);
    char **files = VSIReadDir(path);
    int nf = CSLCount(files), rc = 0;
    if (nf > 1)
        qsort(files, (size_t)nf, sizeof *files, cmp_str);
    for (int i = 0; !rc && i < nf; i++) {
        size_t len = strlen(files[i]);
        if (len < 5 || strcasecmp(files[i] + len - 4, ".tif"))
            continue;
        char key[256], href[1400], title[600];
        snprintf(key, sizeof key, "%.*s", (int)(len - 4), files[i]);
        snprintf(href, sizeof href, "%s/%s", dir, files[i]);
        snprintf(title, sizeof title, "%s: %s", as->title ? as->title : dir, key);
        rc = add_asset(c, key, href, title, as, 0, err);
    }
    CSLDestroy(files);
    return rc;
}

/* The footprint in EPSG:4326 (longitude, latitude): geometry (a densified ring) and bbox, and
 * the centre into centre[2]. 0 on success; -1 when PROJ cannot transform it (then geometry null,
 * no bbox). A footprint across the antimeridian is not split. */
static int wgs84(const stac_ctx *c, cJSON *item, double centre[2])
{
    OGRSpatialReferenceH src = OSRNewSpatialReference(c->wkt), dst = OSRNewSpatialReference(NULL);
    OGRCoordinateTransformationH ct = NULL;
    if (src && dst && OSRImportFromEPSG(dst, 4326) == OGRERR_NONE) {
        OSRSetAxisMappingStrategy(src, OAMS_TRADITIONAL_GIS_ORDER);
        OSRSetAxisMappingStrategy(dst, OAMS_TRADITIONAL_GIS_ORDER);
        ct = OCTNewCoordinateTransformation(src, dst);
    }
    /* counter-clockwise from the lower left (RFC 7946's winding for an exterior ring), closed
     * below; the last point is the centre (proj:centroid) */
    enum { N = 4 * DENSIFY + 2 };
    double x[N], y[N];
    const double cx[5] = { c->minx, c->maxx, c->maxx, c->minx, c->minx };
    const double cy[5] = { c->miny, c->miny, c->maxy, c->maxy, c->miny };
    for (int e = 0, k = 0; e < 4; e++)
        for (int i = 0; i < DENSIFY; i++, k++) {
            double t = (double)i / DENSIFY;
            x[k] = cx[e] + (cx[e + 1] - cx[e]) * t;
            y[k] = cy[e] + (cy[e + 1] - cy[e]) * t;
        }
    x[N - 1] = (c->minx + c->maxx) / 2, y[N - 1] = (c->miny + c->maxy) / 2;
    int ok[N], good = ct != NULL;
    x[N - 2] = y[N - 2] = 0; /* the ring's closing point, set below */
    ok[N - 2] = 1;
    if (good && !OCTTransformEx(ct, N - 2, x, y, NULL, ok))
        good = 0;
    if (good && !OCTTransformEx(ct, 1, x + N - 1, y + N - 1, NULL, ok + N - 1))
        good = 0;
    for (int k = 0; good && k < N; k++)
        good = ok[k] && isfinite(x[k]) && isfinite(y[k]);
    if (ct)
        OCTDestroyCoordinateTransformation(ct);
    if (src)
        OSRDestroySpatialReference(src);
    if (dst)
        OSRDestroySpatialReference(dst);
    if (!good) {
        cJSON_AddNullToObject(item, "geometry");
        return -1;
    }
    x[N - 2] = x[0], y[N - 2] = y[0];
    double b[4] = { x[0], y[0], x[0], y[0] };
    cJSON *g = cJSON_AddObjectToObject(item, "geometry");
    cJSON_AddStringToObject(g, "type", "Polygon");
    cJSON *ring = cJSON_CreateArray();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(g, "coordinates"), ring);
    for (int k = 0; k < N - 1; k++) {
        double p[2] = { round(x[k] * 1e9) / 1e9, round(y[k] * 1e9) / 1e9 };
        cJSON_AddItemToArray(ring, cJSON_CreateDoubleArray(p, 2));
        b[0] = fmin(b[0], p[0]), b[1] = fmin(b[1], p[1]);
        b[2] = fmax(b[2], p[0]), b[3] = fmax(b[3], p[1]);
    }
    cJSON_AddItemToObject(item, "bbox", cJSON_CreateDoubleArray(b, 4));
    centre[0] = x[N - 1], centre[1] = y[N - 1];
    return 0;
}

/* proj:epsg (null unless the CRS is an EPSG one), proj:wkt2, proj:bbox, proj:centroid and the
 * first raster's grid, into properties. */
static void projection(const stac_ctx *c, cJSON *p, const double *centre)
{
    OGRSpatialReferenceH r = c->wkt ? OSRNewSpatialReference(c->wkt) : NULL;
    const char *an = r ? OSRGetAuthorityName(r, NULL) : NULL;
    const char *code = r ? OSRGetAuthorityCode(r, NULL) : NULL;
    if (an && code && !strcasecmp(an, "EPSG"))
        cJSON_AddNumberToObject(p, "proj:epsg", atoi(code));
    else
        cJSON_AddNullToObject(p, "proj:epsg");
    char *w2 = NULL;
    const char *opt[] = { "FORMAT=WKT2_2019", "MULTILINE=NO", NULL };
    if (r && OSRExportToWktEx(r, &w2, opt) == OGRERR_NONE && w2)
        cJSON_AddStringToObject(p, "proj:wkt2", w2);
    CPLFree(w2);
    if (r)
        OSRDestroySpatialReference(r);
    if (c->have_fp) {
        double b[4] = { c->minx, c->miny, c->maxx, c->maxy };
        cJSON_AddItemToObject(p, "proj:bbox", cJSON_CreateDoubleArray(b, 4));
    }
    if (centre) {
        cJSON *ce = cJSON_AddObjectToObject(p, "proj:centroid");
        cJSON_AddNumberToObject(ce, "lat", round(centre[1] * 1e9) / 1e9);
        cJSON_AddNumberToObject(ce, "lon", round(centre[0] * 1e9) / 1e9);
    }
    if (c->have_grid) {
        cJSON_AddItemToObject(p, "proj:shape", cJSON_CreateIntArray(c->shape, 2));
        cJSON_AddItemToObject(p, "proj:transform", cJSON_CreateDoubleArray(c->transform, 6));
    } else if (c->shape[0]) { /* ungeoreferenced: the size, and no transform */
        cJSON_AddItemToObject(p, "proj:shape", cJSON_CreateIntArray(c->shape, 2));
    }
}

static cJSON *build(stac_ctx *c, dm_err *err, int *rc)
{
    const dm_stac_spec *s = c->s;
    cJSON *item = cJSON_CreateObject();
    c->assets = cJSON_CreateObject();
    if (!item || !c->assets) {
        cJSON_Delete(item), cJSON_Delete(c->assets);
        *rc = dm_err_oom(err);
        return NULL;
    }
    for (int i = 0; !*rc && i < s->nassets; i++) {
        const dm_stac_asset *a = &s->assets[i];
        size_t n = strlen(a->href);
        *rc = n && a->href[n - 1] == '/' ? add_folder(c, a, err)
                                         : add_asset(c, a->key, a->href, a->title, a, 1, err);
    }
    if (*rc) {
        cJSON_Delete(item), cJSON_Delete(c->assets);
        return NULL;
    }
    cJSON_AddStringToObject(item, "type", "Feature");
    cJSON_AddStringToObject(item, "stac_version", "1.0.0");
    cJSON *ext = cJSON_AddArrayToObject(item, "stac_extensions");
    cJSON_AddItemToArray(ext, cJSON_CreateString(EXT_PROJ));
    cJSON_AddItemToArray(ext, cJSON_CreateString(EXT_RASTER));
    if (c->eo)
        cJSON_AddItemToArray(ext, cJSON_CreateString(EXT_EO));
    cJSON_AddStringToObject(item, "id", s->id);
    double centre[2];
    int geo = c->have_fp && c->wkt && wgs84(c, item, centre) == 0;
    if (c->have_fp && c->wkt && !geo)
        dm_warn("item.json: the footprint could not be transformed to EPSG:4326; its geometry "
                "is null");
    if (!c->have_fp)
        cJSON_AddNullToObject(item, "geometry");
    cJSON *p = cJSON_AddObjectToObject(item, "properties");
    char now[32];
    if (!s->datetime) {
        time_t t = time(NULL);
        struct tm tm;
        strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    }
    cJSON_AddStringToObject(p, "datetime", s->datetime ? s->datetime : now);
    cJSON_AddStringToObject(p, "created", s->datetime ? s->datetime : now);
    projection(c, p, geo ? centre : NULL);
    cJSON *extra = s->properties ? cJSON_Parse(s->properties) : NULL, *it;
    cJSON_ArrayForEach(it, extra)
        if (it->string && !cJSON_GetObjectItemCaseSensitive(p, it->string))
            cJSON_AddItemToObject(p, it->string, cJSON_Duplicate(it, 1));
    cJSON_Delete(extra);
    cJSON_AddArrayToObject(item, "links");
    cJSON_AddItemToObject(item, "assets", c->assets);
    c->assets = NULL;
    return item;
}

int dm_gis_write_stac(const dm_stac_spec *s, dm_err *err)
{
    GDALAllRegister();
    stac_ctx c = { .s = s };
    int rc = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    cJSON *item = build(&c, err, &rc);
    CPLPopErrorHandler();
    CPLFree(c.wkt);
    if (rc)
        return rc;
    char *txt = cJSON_Print(item);
    cJSON_Delete(item);
    if (!txt)
        return dm_err_oom(err);
    size_t len = strlen(txt);
    char *t2 = realloc(txt, len + 2);
    if (t2) {
        txt = t2;
        txt[len++] = '\n';
        txt[len] = '\0';
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/item.json", s->dir);
    rc = dm_write_file_atomic(path, txt, len, err);
    free(txt);
    return rc;
}

/* gis/features_in.c — feature rasters read back (for similarity maps): a dinomap features output
 * (features.tif, or the features.vrt over its blocks; float32 with NaN nodata, or int8 bytes with a
 * GDAL scale and offset per band and nodata 0) or a run's chunk file, read by groups of bands as
 * real values; and query points moved between CRSs with PROJ, x (longitude) first whatever the
 * CRS's official axis order. See gis.h. */
#include <cpl_conv.h>
#include <errno.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <gdal.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gis.h"

struct dm_gis_feat {
    GDALDatasetH d;
    int w, h, bands, block;
    double gt[6];
    char *wkt;
    char **meta;          /* DINOMAP_* items, "KEY=VALUE" */
    double *scale, *offset, *nodata;
    int *has_nodata, decode;
};

void dm_gis_feat_close(dm_gis_feat *f)
{
    if (!f)
        return;
    if (f->d)
        GDALClose(f->d);
    free(f->wkt), free(f->scale), free(f->offset), free(f->nodata), free(f->has_nodata);
    CSLDestroy(f->meta);
    free(f);
}

/* A folder: the features in it (the blocks' VRT first: it is what the run wrote when the output
 * was too large for one COG). */
static void resolve(const char *path, char *out, size_t n)
{
    struct stat st;
    snprintf(out, n, "%s", path);
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return;
    snprintf(out, n, "%s/features.vrt", path);
    if (stat(out, &st) == 0)
        return;
    snprintf(out, n, "%s/features.tif", path);
}

int dm_gis_feat_open(const char *path, const char *product, dm_gis_feat **out, dm_err *err)
{
    *out = NULL;
    GDALAllRegister();
    char p[4200];
    resolve(path, p, sizeof p);
    struct stat st;
    if (strcmp(p, path) && stat(p, &st) != 0)
        return dm_err_set(err, DM_EINVAL, "%s: a folder without features.tif or features.vrt; "
                          "give a dinomap features output (its folder or the file)", path);
    if (strncmp(p, "/vsi", 4) && stat(p, &st) != 0)
        return dm_err_set(err, DM_EIO, "%s: %s", p, strerror(errno));
    dm_gis_feat *f = calloc(1, sizeof *f);
    if (!f)
        return dm_err_oom(err);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    f->d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CPLPopErrorHandler();
    int rc = 0;
    if (!f->d)
        rc = dm_err_set(err, DM_EIO, "%s: cannot open: %s", p, dm_gdal_msg());
    const char *prod = rc ? NULL : GDALGetMetadataItem(f->d, "DINOMAP_PRODUCT", NULL);
    if (!rc && product && (!prod || strcmp(prod, product)))
        rc = dm_err_set(err, DM_EINVAL, "%s is not a dinomap %s raster (%s%s); give the "
                        "features.tif (or features.vrt) of a dinomap features run", p, product,
                        prod ? "it is DINOMAP_PRODUCT=" : "no DINOMAP_PRODUCT in its metadata",
                        prod ? prod : "");
    if (!rc) {
        f->w = GDALGetRasterXSize(f->d), f->h = GDALGetRasterYSize(f->d);
        f->bands = GDALGetRasterCount(f->d);
        if (f->bands < 1)
            rc = dm_err_set(err, DM_EINVAL, "%s: has no bands", p);
    }
    if (!rc && GDALGetGeoTransform(f->d, f->gt) != CE_None) {
        static const double id[6] = { 0, 1, 0, 0, 0, 1 };
        memcpy(f->gt, id, sizeof id);
    }
    if (!rc && (f->gt[2] != 0 || f->gt[4] != 0))
        rc = dm_err_set(err, DM_EINVAL, "%s: a rotated raster; dinomap's are north-up", p);
    if (!rc) {
        const char *w = GDALGetProjectionRef(f->d);
        f->wkt = strdup(w ? w : "");
        f->scale = calloc((size_t)f->bands, sizeof *f->scale);
        f->offset = calloc((size_t)f->bands, sizeof *f->offset);
        f->nodata = calloc((size_t)f->bands, sizeof *f->nodata);
        f->has_nodata = calloc((size_t)f->bands, sizeof *f->has_nodata);
        if (!f->wkt || !f->scale || !f->offset || !f->nodata || !f->has_nodata)
            rc = dm_err_oom(err);
    }
    for (int b = 0; !rc && b < f->bands; b++) {
        GDALRasterBandH h = GDALGetRasterBand(f->d, b + 1);
        int ok = 0;
        f->scale[b] = GDALGetRasterScale(h, &ok);
        if (!ok)
            f->scale[b] = 1;
        f->offset[b] = GDALGetRasterOffset(h, &ok);
        if (!ok)
            f->offset[b] = 0;
        f->nodata[b] = GDALGetRasterNoDataValue(h, &f->has_nodata[b]);
        f->decode |= f->scale[b] != 1 || f->offset[b] != 0;
        if (b == 0) {
            int bx = 0, by = 0;
            GDALGetBlockSize(h, &bx, &by);
            f->block = bx < 64 ? 64 : bx > 1024 ? 1024 : bx;
        }
    }
    char **md = rc ? NULL : GDALGetMetadata(f->d, NULL);
    for (int i = 0; md && md[i]; i++)
        if (!strncmp(md[i], "DINOMAP_", 8))
            f->meta = CSLAddString(f->meta, md[i]);
    if (rc) {
        dm_gis_feat_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void dm_gis_feat_info(const dm_gis_feat *f, int *w, int *h, int *bands, double gt[6],
                      const char **wkt, int *block)
{
    *w = f->w, *h = f->h, *bands = f->bands;
    memcpy(gt, f->gt, sizeof f->gt);
    *wkt = f->wkt;
    *block = f->block;
}

int dm_gis_feat_int8(const dm_gis_feat *f)
{
    return GDALGetRasterDataType(GDALGetRasterBand(f->d, 1)) == GDT_Byte;
}

const char *dm_gis_feat_meta(const dm_gis_feat *f, const char *key)
{
    return CSLFetchNameValue(f->meta, key);
}

const char *const *dm_gis_feat_meta_list(const dm_gis_feat *f)
{
    return (const char *const *)f->meta;
}

int dm_gis_feat_read(dm_gis_feat *f, int b0, int nb, int x, int y, int w, int h, float *buf,
                     dm_err *err)
{
    if (b0 < 0 || nb < 1 || b0 + nb > f->bands || x < 0 || y < 0 || x + w > f->w ||
        y + h > f->h)
        return dm_err_set(err, DM_EINVAL, "features: bands %d..%d, window %d,%d %d×%d outside "
                          "the raster (a bug)", b0, b0 + nb - 1, x, y, w, h);
    int *list = malloc(sizeof *list * (size_t)nb);
    if (!list)
        return dm_err_oom(err);
    for (int i = 0; i < nb; i++)
        list[i] = b0 + i + 1;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    CPLErr e = GDALDatasetRasterIO(f->d, GF_Read, x, y, w, h, buf, w, h, GDT_Float32, nb, list, 4,
                                   (GSpacing)4 * w, (GSpacing)4 * w * h);
    CPLPopErrorHandler();
    free(list);
    if (e != CE_None)
        return dm_err_set(err, DM_EIO, "%s: read error: %s", GDALGetDescription(f->d),
                          dm_gdal_msg());
    size_t plane = (size_t)w * h;
    for (int i = 0; i < nb; i++) {
        int b = b0 + i;
        float *v = buf + (size_t)i * plane;
        float nd = (float)f->nodata[b];
        int hn = f->has_nodata[b] && !isnan(nd);
        float sc = (float)f->scale[b], of = (float)f->offset[b];
        for (size_t k = 0; k < plane; k++) {
            if (hn && v[k] == nd)
                v[k] = NAN; /* int8: q = 0 */
            else if (f->decode)
                v[k] = v[k] * sc + of;
        }
    }
    return 0;
}

/* s from user input (EPSG:4326, WKT, PROJ...), x/lon first. */
static OGRSpatialReferenceH srs_from(const char *def, int wkt, char *why, size_t n)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    if (!s)
        return NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRErr e = wkt ? OSRImportFromWkt(s, (char **)&def) : OSRSetFromUserInput(s, def);
    snprintf(why, n, "%s", CPLGetLastErrorMsg());
    CPLPopErrorHandler();
    for (char *c = why; *c; c++)
        if (*c == '\n')
            *c = ' ';
    if (e != OGRERR_NONE) {
        OSRDestroySpatialReference(s);
        return NULL;
    }
    OSRSetAxisMappingStrategy(s, OAMS_TRADITIONAL_GIS_ORDER);
    return s;
}

int dm_gis_srs_check(const char *opt, const char *crs, dm_err *err)
{
    char why[600];
    OGRSpatialReferenceH s = srs_from(crs, 0, why, sizeof why);
    if (s) {
        OSRDestroySpatialReference(s);
        return 0;
    }
    return dm_err_set(err, DM_EINVAL, "%s %s: not a CRS GDAL/PROJ knows (%s); e.g. EPSG:4326 "
                      "(then X,Y = longitude,latitude) or EPSG:32631", opt, crs,
                      why[0] ? why : "an unknown name or format");
}

int dm_gis_point_to(const char *srs, const char *wkt, double x, double y, double *ox, double *oy,
                    dm_err *err)
{
    *ox = x, *oy = y;
    if (!srs || !srs[0])
        return 0;
    if (!wkt || !wkt[0])
        return dm_err_set(err, DM_EINVAL, "--srs %s: the features have no CRS (an "
                          "ungeoreferenced run); give --at in their own coordinates, without "
                          "--srs", srs);
    char why[600];
    OGRSpatialReferenceH a = srs_from(srs, 0, why, sizeof why), b = NULL;
    int rc = 0;
    if (!a)
        rc = dm_err_set(err, DM_EINVAL, "--srs %s: not a CRS GDAL/PROJ knows (%s)", srs, why);
    else if (!(b = srs_from(wkt, 1, why, sizeof why)))
        rc = dm_err_set(err, DM_EFORMAT, "the features' CRS is unreadable (%s)", why);
    OGRCoordinateTransformationH t = NULL;
    if (!rc) {
        CPLPushErrorHandler(CPLQuietErrorHandler);
        CPLErrorReset();
        t = OCTNewCoordinateTransformation(a, b);
        int ok = t && OCTTransform(t, 1, ox, oy, NULL) && isfinite(*ox) && isfinite(*oy);
        if (!ok)
            rc = dm_err_set(err, DM_EINVAL, "--at %.17g,%.17g --srs %s: cannot be moved into the "
                            "features' CRS (%s)", x, y, srs, dm_gdal_msg());
        CPLPopErrorHandler();
    }
    if (t)
        OCTDestroyCoordinateTransformation(t);
    if (a)
        OSRDestroySpatialReference(a);
    if (b)
        OSRDestroySpatialReference(b);
    return rc;
}

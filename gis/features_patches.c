/* gis/features_patches.c — a dinomap features raster read back by patch (see gis.h): what
 * `dinomap seg train` learns from. The file says what it is in its DINOMAP_* metadata; int8
 * rasters are decoded with their bands' GDAL scale and offset. */
#include "gis.h"

#include <cpl_error.h>
#include <gdal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STRIP_VALUES (1 << 24) /* floats read at a time (64 MB) */

struct dm_features_in {
    char *path;
    GDALDatasetH ds;
    dm_features_info info;
    char *wkt;
    double *scale, *offset, *nodata; /* [D] */
    int *has_nodata;
};

static const char *gdal_msg(void)
{
    const char *m = CPLGetLastErrorMsg();
    return m && *m ? m : "no details from GDAL";
}

void dm_features_in_close(dm_features_in *f)
{
    if (!f)
        return;
    if (f->ds)
        GDALClose(f->ds);
    free(f->path), free(f->wkt), free(f->scale), free(f->offset), free(f->nodata);
    free(f->has_nodata);
    free(f);
}

const dm_features_info *dm_features_in_info(const dm_features_in *f) { return &f->info; }

/* The first word of a metadata value ("custom (D=128, 4 blocks)" → "custom"). */
static void first_word(const char *v, char *out, size_t n)
{
    size_t k = v ? strcspn(v, " ") : 0;
    snprintf(out, n, "%.*s", (int)k, v ? v : "");
}

int dm_features_in_open(const char *path, dm_features_in **out, dm_err *err)
{
    *out = NULL;
    dm_features_in *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return dm_err_oom(err);
    }
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    f->ds = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!f->ds)
        rc = dm_err_set(err, DM_EIO, "--features %s: cannot open it as a raster: %s", path,
                        gdal_msg());
    const char *prod = f->ds ? GDALGetMetadataItem(f->ds, "DINOMAP_PRODUCT", NULL) : NULL;
    if (!rc && (!prod || strcmp(prod, "features")))
        rc = dm_err_set(err, DM_EFORMAT, "--features %s: not a dinomap features raster (its "
                        "DINOMAP_PRODUCT is %s); give the features.tif (or features.vrt) of a "
                        "dinomap features run", path, prod ? prod : "missing");
    dm_features_info *i = &f->info;
    if (!rc) {
        i->W = GDALGetRasterXSize(f->ds), i->H = GDALGetRasterYSize(f->ds);
        i->D = GDALGetRasterCount(f->ds);
        const char *wkt = GDALGetProjectionRef(f->ds);
        if (!(f->wkt = strdup(wkt ? wkt : "")))
            rc = dm_err_oom(err);
        i->wkt = f->wkt;
        if (!rc && GDALGetGeoTransform(f->ds, i->gt) != CE_None)
            rc = dm_err_set(err, DM_EFORMAT, "--features %s: no geotransform", path);
        if (!rc && (i->gt[2] != 0 || i->gt[4] != 0))
            rc = dm_err_set(err, DM_EFORMAT, "--features %s: a rotated grid; dinomap's features "
                            "are north-up", path);
        if (!rc && i->D < 1)
            rc = dm_err_set(err, DM_EFORMAT, "--features %s: no bands", path);
    }
    if (!rc) {
        first_word(GDALGetMetadataItem(f->ds, "DINOMAP_MODEL", NULL), i->arch, sizeof i->arch);
        first_word(GDALGetMetadataItem(f->ds, "DINOMAP_NORMALIZATION", NULL), i->norm,
                   sizeof i->norm);
        first_word(GDALGetMetadataItem(f->ds, "DINOMAP_WEIGHTS_SHA256", NULL), i->sha256,
                   sizeof i->sha256);
        const char *ly = GDALGetMetadataItem(f->ds, "DINOMAP_LAYER", NULL);
        i->layer = !ly || strstr(ly, "last block") ? -1 : atoi(ly);
        GDALDataType t = GDALGetRasterDataType(GDALGetRasterBand(f->ds, 1));
        i->int8 = t == GDT_Byte;
        if (t != GDT_Byte && t != GDT_Float32)
            rc = dm_err_set(err, DM_EFORMAT, "--features %s: %s samples; dinomap writes "
                            "float32 or 8-bit features", path, GDALGetDataTypeName(t));
    }
    int D = i->D;
    if (!rc) {
        f->scale = malloc(sizeof *f->scale * (size_t)D);
        f->offset = malloc(sizeof *f->offset * (size_t)D);
        f->nodata = malloc(sizeof *f->nodata * (size_t)D);
        f->has_nodata = malloc(sizeof *f->has_nodata * (size_t)D);
        if (!f->scale || !f->offset || !f->nodata || !f->has_nodata)
            rc = dm_err_oom(err);
    }
    for (int b = 0; !rc && b < D; b++) {
        GDALRasterBandH h = GDALGetRasterBand(f->ds, b + 1);
        int ok = 0;
        f->scale[b] = GDALGetRasterScale(h, &ok);
        if (!ok)
            f->scale[b] = 1;
        f->offset[b] = GDALGetRasterOffset(h, &ok);
        if (!ok)
            f->offset[b] = 0;
        f->nodata[b] = GDALGetRasterNoDataValue(h, &f->has_nodata[b]);
    }
    CPLPopErrorHandler();
    if (rc) {
        dm_features_in_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int dm_features_in_read(dm_features_in *f, const int *px, const int *py, int n, float *v,
                        uint8_t *ok, dm_err *err)
{
    const dm_features_info *fi = &f->info;
    int D = fi->D, rc = 0;
    int xmin = fi->W, xmax = -1;
    for (int i = 0; i < n; i++) {
        if (px[i] < 0 || px[i] >= fi->W || py[i] < 0 || py[i] >= fi->H ||
            (i && (py[i] < py[i - 1] || (py[i] == py[i - 1] && px[i] <= px[i - 1]))))
            return dm_err_set(err, DM_EINVAL, "patch (%d, %d): outside %s or out of order",
                              px[i], py[i], f->path);
        xmin = px[i] < xmin ? px[i] : xmin, xmax = px[i] > xmax ? px[i] : xmax;
    }
    if (!n)
        return 0;
    /* strips of rows, as many as STRIP_VALUES hold across the patches' columns */
    int64_t per_row = (int64_t)(xmax - xmin + 1) * D;
    int rows = (int)(STRIP_VALUES / per_row);
    rows = rows < 1 ? 1 : rows > 256 ? 256 : rows;
    float *buf = malloc(sizeof *buf * (size_t)(per_row * rows));
    if (!buf)
        return dm_err_oom(err);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    for (int i = 0; !rc && i < n;) {
        int ya = py[i], j = i, x0 = px[i], x1 = px[i];
        while (j < n && py[j] < ya + rows) {
            x0 = px[j] < x0 ? px[j] : x0, x1 = px[j] > x1 ? px[j] : x1;
            j++;
        }
        int nr = py[j - 1] - ya + 1, wx = x1 - x0 + 1;
        CPLErrorReset();
        size_t plane = (size_t)wx * nr;
        if (GDALDatasetRasterIO(f->ds, GF_Read, x0, ya, wx, nr, buf, wx, nr, GDT_Float32, D,
                                NULL, sizeof(float), (int)(sizeof(float) * wx),
                                (GSpacing)(sizeof(float) * plane)) != CE_None) {
            rc = dm_err_set(err, DM_EIO, "%s: cannot read rows %d..%d: %s", f->path, ya,
                            ya + nr - 1, gdal_msg());
            break;
        }
        for (int k = i; k < j; k++) {
            size_t at = (size_t)(py[k] - ya) * wx + (size_t)(px[k] - x0);
            float *dst = v + (size_t)k * D;
            int good = 1;
            for (int b = 0; b < D && good; b++) {
                float q = buf[(size_t)b * plane + at];
                if (isnan(q) || (f->has_nodata[b] && q == f->nodata[b]))
                    good = 0;
                else
                    dst[b] = (float)(q * f->scale[b] + f->offset[b]);
            }
            ok[k] = (uint8_t)good;
            if (!good)
                memset(dst, 0, sizeof *dst * (size_t)D);
        }
        i = j;
    }
    CPLPopErrorHandler();
    free(buf);
    return rc;
}

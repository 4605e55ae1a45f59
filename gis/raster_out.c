/* gis/raster_out.c — see raster_out.h. */
#include "raster_out.h"

#include <cpl_string.h>
#include <gdal.h>
#include <gdal_utils.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int dm_gis_write_chunk_f32(const char *path, const float *data, int bands, int w, int h,
                           const double gt[6], const char *wkt, dm_err *err)
{
    GDALAllRegister();
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    GDALDriverH drv = GDALGetDriverByName("GTiff");
    char **o = NULL;
    o = CSLSetNameValue(o, "TILED", "YES");
    o = CSLSetNameValue(o, "BLOCKXSIZE", "128");
    o = CSLSetNameValue(o, "BLOCKYSIZE", "128");
    o = CSLSetNameValue(o, "INTERLEAVE", "PIXEL");
    o = CSLSetNameValue(o, "BIGTIFF", "IF_SAFER");
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH ds = GDALCreate(drv, tmp, w, h, bands, GDT_Float32, o);
    CPLPopErrorHandler();
    CSLDestroy(o);
    if (!ds)
        return dm_err_set(err, DM_EIO, "%s: cannot create: %s", tmp, CPLGetLastErrorMsg());
    GDALSetGeoTransform(ds, (double *)gt);
    if (wkt && wkt[0])
        GDALSetProjection(ds, wkt);
    for (int b = 1; b <= bands; b++)
        GDALSetRasterNoDataValue(GDALGetRasterBand(ds, b), NAN);
    CPLErr e = GDALDatasetRasterIO(ds, GF_Write, 0, 0, w, h, (void *)data, w, h, GDT_Float32,
                                   bands, NULL, 4, (GSpacing)4 * w, (GSpacing)4 * w * h);
    CPLErrorReset();
    GDALClose(ds); /* flushes: a full disk shows up here */
    if (CPLGetLastErrorType() >= CE_Failure)
        e = CE_Failure;
    if (e != CE_None || rename(tmp, path) != 0) {
        unlink(tmp);
        return dm_err_set(err, DM_EIO, "%s: write failed: %s", path, CPLGetLastErrorMsg());
    }
    return 0;
}

int dm_gis_cog(void *src, const char *dst, const char *resampling, dm_err *err)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.part", dst);
    GDALDriverH cog = GDALGetDriverByName("COG");
    if (!cog)
        return dm_err_set(err, DM_EUNSUPPORTED, "this GDAL has no COG driver (GDAL >= 3.1 needed)");
    char **o = NULL;
    o = CSLSetNameValue(o, "COMPRESS", "DEFLATE");
    o = CSLSetNameValue(o, "PREDICTOR", "YES");
    o = CSLSetNameValue(o, "BLOCKSIZE", "256");
    o = CSLSetNameValue(o, "OVERVIEW_RESAMPLING", resampling);
    o = CSLSetNameValue(o, "BIGTIFF", "IF_SAFER");
    o = CSLSetNameValue(o, "NUM_THREADS", "ALL_CPUS");
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH d = GDALCreateCopy(cog, tmp, (GDALDatasetH)src, FALSE, o, NULL, NULL);
    CPLPopErrorHandler();
    CSLDestroy(o);
    int bad = !d;
    if (d) {
        CPLErrorReset();
        GDALClose(d);
        bad = CPLGetLastErrorType() >= CE_Failure;
    }
    if (bad || rename(tmp, dst) != 0) {
        unlink(tmp);
        return dm_err_set(err, DM_EIO, "%s: cannot write the Cloud-Optimized GeoTIFF: %s", dst,
                          CPLGetLastErrorMsg());
    }
    return 0;
}

static void set_meta(GDALDatasetH ds, const char *const *meta)
{
    for (int i = 0; meta && meta[i]; i++) {
        char *key = NULL;
        const char *val = CPLParseNameValue(meta[i], &key);
        if (key && val)
            GDALSetMetadataItem(ds, key, val, NULL);
        CPLFree(key);
    }
}

static GDALDatasetH tmp_tiff(const char *path, int w, int h, int bands, GDALDataType t)
{
    char **o = NULL;
    o = CSLSetNameValue(o, "TILED", "YES");
    o = CSLSetNameValue(o, "INTERLEAVE", "PIXEL");
    o = CSLSetNameValue(o, "BIGTIFF", "IF_SAFER");
    o = CSLSetNameValue(o, "COMPRESS", "LZW");
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, w, h, bands, t, o);
    CSLDestroy(o);
    return d;
}

/* Pass 2: streams the float mosaic in windows through f->pixel into the quantised and PCA
 * temporary rasters. */
static int pass2(const dm_features_final *f, GDALDatasetH vrt, GDALDatasetH q, GDALDatasetH pca,
                 dm_err *err)
{
    const int bw = 128, D = f->D;
    float *buf = malloc(sizeof(float) * (size_t)bw * bw * D);
    uint8_t *qb = q ? malloc((size_t)bw * bw * D) : NULL;
    uint8_t *rgb = pca ? malloc((size_t)bw * bw * 3) : NULL;
    uint8_t dummy[3];
    int rc = (!buf || (q && !qb) || (pca && !rgb)) ? dm_err_oom(err) : 0;
    for (int y = 0; !rc && y < f->fh; y += bw)
        for (int x = 0; !rc && x < f->fw; x += bw) {
            int w = f->fw - x < bw ? f->fw - x : bw, h = f->fh - y < bw ? f->fh - y : bw;
            if (GDALDatasetRasterIO(vrt, GF_Read, x, y, w, h, buf, w, h, GDT_Float32, D, NULL,
                                    (GSpacing)4 * D, (GSpacing)4 * D * w, 4) != CE_None) {
                rc = dm_err_set(err, DM_EIO, "reading the feature mosaic: %s",
                                CPLGetLastErrorMsg());
                break;
            }
            for (int i = 0; i < w * h; i++) {
                const float *v = buf + (size_t)i * D;
                int nodata = isnan(v[0]);
                uint8_t *qi = qb ? qb + (size_t)i * D : NULL, *ri = rgb ? rgb + 3 * i : dummy;
                if (nodata) {
                    if (qi)
                        memset(qi, 0, (size_t)D);
                    ri[0] = ri[1] = ri[2] = 0;
                } else {
                    f->pixel(f->pixel_ctx, v, qi, ri);
                }
            }
            if (q && GDALDatasetRasterIO(q, GF_Write, x, y, w, h, qb, w, h, GDT_Byte, D, NULL, D,
                                         (GSpacing)D * w, 1) != CE_None)
                rc =
                    dm_err_set(err, DM_EIO, "writing quantised features: %s", CPLGetLastErrorMsg());
            if (!rc && pca && GDALDatasetRasterIO(pca, GF_Write, x, y, w, h, rgb, w, h, GDT_Byte, 3,
                                                  NULL, 3, (GSpacing)3 * w, 1) != CE_None)
                rc = dm_err_set(err, DM_EIO, "writing the PCA preview: %s", CPLGetLastErrorMsg());
        }
    free(buf), free(qb), free(rgb);
    return rc;
}

int dm_gis_features_finalize(const dm_features_final *f, dm_err *err)
{
    GDALAllRegister();
    if (f->nchunks == 0)
        return dm_err_set(err, DM_EINVAL, "nothing was mapped: every tile is empty (nodata) or "
                          "outside the area of interest");
    char vrtname[128], path[4096], qtmp[4096], ptmp[4096], out[4096];
    snprintf(vrtname, sizeof vrtname, "/vsimem/dinomap_features_%p.vrt", (void *)f);
    snprintf(qtmp, sizeof qtmp, "%s/features_q.tmp.tif", f->outdir);
    snprintf(ptmp, sizeof ptmp, "%s/features_pca.tmp.tif", f->outdir);
    /* the VRT spans the whole feature grid: chunks never run (empty, outside the AOI) are nodata */
    double xmin = f->gt[0], ymax = f->gt[3], xmax = f->gt[0] + f->gt[1] * f->fw,
           ymin = f->gt[3] + f->gt[5] * f->fh;
    char **a = NULL;
    char b[4][64];
    snprintf(b[0], 64, "%.17g", xmin), snprintf(b[1], 64, "%.17g", ymin);
    snprintf(b[2], 64, "%.17g", xmax), snprintf(b[3], 64, "%.17g", ymax);
    a = CSLAddString(a, "-te");
    for (int i = 0; i < 4; i++)
        a = CSLAddString(a, b[i]);
    snprintf(b[0], 64, "%.17g", f->gt[1]), snprintf(b[1], 64, "%.17g", -f->gt[5]);
    a = CSLAddString(a, "-tr"), a = CSLAddString(a, b[0]), a = CSLAddString(a, b[1]);
    a = CSLAddString(a, "-vrtnodata"), a = CSLAddString(a, "nan");
    GDALBuildVRTOptions *bo = GDALBuildVRTOptionsNew(a, NULL);
    CSLDestroy(a);
    int usage = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH vrt = GDALBuildVRT(vrtname, f->nchunks, NULL, (const char *const *)f->chunks, bo,
                                    &usage);
    CPLPopErrorHandler();
    GDALBuildVRTOptionsFree(bo);
    if (!vrt)
        return dm_err_set(err, DM_EIO, "cannot assemble the chunks: %s", CPLGetLastErrorMsg());
    int rc = 0;
    if (GDALGetRasterXSize(vrt) != f->fw || GDALGetRasterYSize(vrt) != f->fh)
        rc = dm_err_set(err, DM_EIO, "internal: assembled %d×%d, expected %d×%d",
                        GDALGetRasterXSize(vrt), GDALGetRasterYSize(vrt), f->fw, f->fh);
    GDALDatasetH q = NULL, pca = NULL;
    if (!rc && f->quantize && !(q = tmp_tiff(qtmp, f->fw, f->fh, f->D, GDT_Byte)))
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", qtmp, CPLGetLastErrorMsg());
    if (!rc && f->pca && !(pca = tmp_tiff(ptmp, f->fw, f->fh, 3, GDT_Byte)))
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", ptmp, CPLGetLastErrorMsg());
    if (!rc && (q || pca)) {
        if (f->note)
            f->note(q ? "quantising features and colouring the PCA preview"
                      : "colouring the PCA preview");
        rc = pass2(f, vrt, q, pca, err);
    }
    /* metadata, band descriptions and nodata, then the COGs */
    GDALDatasetH feat = q ? q : vrt;
    if (!rc) {
        set_meta(feat, f->meta);
        GDALSetGeoTransform(feat, (double *)f->gt);
        if (f->wkt && f->wkt[0])
            GDALSetProjection(feat, f->wkt);
        for (int i = 1; i <= f->D; i++) {
            GDALRasterBandH bh = GDALGetRasterBand(feat, i);
            char d[16];
            snprintf(d, sizeof d, "f%04d", i - 1);
            GDALSetDescription(bh, d);
            if (q) {
                GDALSetRasterNoDataValue(bh, 0);
                GDALSetRasterScale(bh, f->qscale[i - 1]);
                GDALSetRasterOffset(bh, -128.0 * f->qscale[i - 1]);
            }
        }
        if (f->note)
            f->note("writing features.tif (Cloud-Optimized GeoTIFF)");
        snprintf(out, sizeof out, "%s/features.tif", f->outdir);
        rc = dm_gis_cog(feat, out, "AVERAGE", err);
    }
    if (!rc && pca) {
        set_meta(pca, f->meta);
        GDALSetMetadataItem(pca, "DINOMAP_PRODUCT", "features_pca", NULL);
        GDALSetGeoTransform(pca, (double *)f->gt);
        if (f->wkt && f->wkt[0])
            GDALSetProjection(pca, f->wkt);
        static const char *names[3] = { "pc1", "pc2", "pc3" };
        static const GDALColorInterp ci[3] = { GCI_RedBand, GCI_GreenBand, GCI_BlueBand };
        for (int i = 0; i < 3; i++) {
            GDALRasterBandH bh = GDALGetRasterBand(pca, i + 1);
            GDALSetDescription(bh, names[i]);
            GDALSetRasterColorInterpretation(bh, ci[i]);
            GDALSetRasterNoDataValue(bh, 0);
        }
        snprintf(path, sizeof path, "%s/features_pca.tif", f->outdir);
        rc = dm_gis_cog(pca, path, "AVERAGE", err);
    }
    if (q)
        GDALClose(q);
    if (pca)
        GDALClose(pca);
    GDALClose(vrt);
    VSIUnlink(vrtname);
    unlink(qtmp);
    unlink(ptmp);
    return rc;
}

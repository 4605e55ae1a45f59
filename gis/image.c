/* gis/image.c — whole-image reads for `dinomap forward` (small inputs; the mosaic tiler streams). */
#include <gdal.h>
#include <stdlib.h>

#include "gis.h"

int dm_gis_read_rgb8(const char *path, int *H, int *W, uint8_t **rgb, dm_err *err)
{
    *rgb = NULL;
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CPLPopErrorHandler();
    if (!ds)
        return dm_err_set(err, DM_EFORMAT, "%s: not a raster GDAL can open (%s)", path,
                          CPLGetLastErrorMsg()[0] ? CPLGetLastErrorMsg() : "unknown format");
    int nb = GDALGetRasterCount(ds), w = GDALGetRasterXSize(ds), h = GDALGetRasterYSize(ds);
    int rc = 0;
    if (nb != 1 && nb < 3) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: has %d bands; need 3 (RGB) or 1 (grey)", path, nb);
    } else if (GDALGetRasterDataType(GDALGetRasterBand(ds, 1)) != GDT_Byte) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: bands are %s, not 8-bit; convert first, e.g. "
                        "gdal_translate -ot Byte -scale MIN MAX 0 255 in.tif out.tif", path,
                        GDALGetDataTypeName(GDALGetRasterDataType(GDALGetRasterBand(ds, 1))));
    } else if ((int64_t)w * h > (int64_t)1 << 28) {
        rc = dm_err_set(err, DM_EINVAL, "%s: %d×%d px is too large for a single forward pass; "
                        "use `dinomap features` to tile it", path, w, h);
    } else if (!(*rgb = malloc((size_t)w * h * 3))) {
        rc = dm_err_oom(err);
    } else {
        int bands[3] = { 1, 2, 3 };
        if (nb == 1)
            bands[1] = bands[2] = 1;
        if (GDALDatasetRasterIO(ds, GF_Read, 0, 0, w, h, *rgb, w, h, GDT_Byte, 3, bands, 3,
                                (GSpacing)w * 3, 1) != CE_None) {
            rc = dm_err_set(err, DM_EIO, "%s: read failed: %s", path, CPLGetLastErrorMsg());
            free(*rgb);
            *rgb = NULL;
        }
    }
    GDALClose(ds);
    *H = h;
    *W = w;
    return rc;
}

int64_t dm_gis_cache_set(int64_t bytes)
{
    GIntBig was = GDALGetCacheMax64();
    if (bytes > 0)
        GDALSetCacheMax64(bytes);
    return was;
}

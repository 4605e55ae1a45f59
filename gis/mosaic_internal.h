/* gis/mosaic_internal.h — the mosaic's state, shared by gis/mosaic.c (opening, reading) and
 * gis/mosaic_fp.c (the input fingerprints). Not part of the library's interface. */
#ifndef DM_MOSAIC_INTERNAL_H
#define DM_MOSAIC_INTERNAL_H

#include <gdal.h>

#include "gis.h"

struct dm_mosaic {
    /* every read goes to ds: 4 bands, the three selected ones and a validity band (0 invalid:
     * outside every input, nodata, masked or alpha 0 in the input it comes from) */
    GDALDatasetH ds;
    GDALRasterBandH band[3], alpha;
    int all_valid;            /* one input with neither nodata, masks nor alpha: alpha not read */
    int W, H;                 /* the mosaic, or the window dm_mosaic_crop narrowed it to */
    int ox, oy, FW, FH;       /* that window's place in the whole mosaic, and its size */
    double gt[6];
    char *wkt;
    int georef;
    GDALDataType type;
    double lo, hi;            /* scaling to 8 bits (non-Byte input) */
    char scaling[160];
    char notes[1024];
    char **vsi;               /* /vsimem files to unlink */
    int nvsi, capvsi;
    float *fbuf;              /* read buffer for non-Byte input */
    size_t fcap;
    uint8_t *abuf;            /* read buffer for the validity band */
    size_t acap;
    int scaled;               /* lo..hi mapped to 0..255 (else 8-bit used as is) */
    dm_input_fp *fp;          /* the files read and their footprints */
    int nfp, capfp;
};

/* Adds the fingerprints of input `path` (opened as src; placed in the mosaic with geotransform
 * gt and size w×h; warped: its pixels are resampled, so a VRT's sources are not told apart). */
int dm_mosaic_add_fingerprints(dm_mosaic *m, GDALDatasetH src, const char *path,
                               const double gt[6], int w, int h, int warped, dm_err *err);

#endif

/* gis/mosaic.h — the input side of a mapping run: one or more rasters opened through GDAL as one
 * north-up mosaic (VRT in memory; warped when CRSs differ, a GSD or CRS is asked for, or the
 * input is geographic or rotated), three bands selected and scaled to 8 bits, and windowed reads
 * that may reach outside the raster (padded, and marked invalid in the mask). */
#ifndef DM_GIS_MOSAIC_H
#define DM_GIS_MOSAIC_H

#include <stdint.h>

#include "../src/base/base.h"

typedef struct dm_mosaic_opts {
    const char *const *inputs;
    int n_inputs;
    int bands[3];             /* 1-based, RGB order into the model */
    double gsd;               /* output pixel size in CRS units; 0 = native */
    const char *crs;          /* output CRS (anything OSRSetFromUserInput takes); NULL = input's */
    int scale_set;            /* --scale MIN,MAX */
    double scale_min, scale_max;
    int stretch_set;          /* --stretch P1,P2 (percentiles over the whole mosaic) */
    double p1, p2;
    int allow_ungeoreferenced;
} dm_mosaic_opts;

typedef struct dm_mosaic dm_mosaic;

int dm_mosaic_open(const dm_mosaic_opts *o, dm_mosaic **out, dm_err *err);
void dm_mosaic_close(dm_mosaic *m); /* NULL-safe */

void dm_mosaic_size(const dm_mosaic *m, int *W, int *H);
void dm_mosaic_geotransform(const dm_mosaic *m, double gt[6]);
const char *dm_mosaic_wkt(const dm_mosaic *m);        /* "" when not georeferenced */
int dm_mosaic_georeferenced(const dm_mosaic *m);
/* How the pixels were brought to 8 bits, for metadata ("8-bit input", "scale 0..4095", ...). */
const char *dm_mosaic_scaling(const dm_mosaic *m);
/* Notices worth telling the user (warp chosen, UTM zone picked...), one per line; may be "". */
const char *dm_mosaic_notes(const dm_mosaic *m);

/* Reads the window [x0, x0+w) × [y0, y0+h) (may extend past the raster) as planar 8-bit RGB
 * [3, h, w] and a validity mask [h, w] (1 = valid pixel: inside the raster, not nodata, not
 * masked, alpha > 0 in every selected band). Invalid pixels are 0 in rgb. Not thread-safe: one
 * reader per mosaic. */
int dm_mosaic_read(dm_mosaic *m, int x0, int y0, int w, int h, uint8_t *rgb, uint8_t *valid,
                   dm_err *err);

#endif

/* gis/raster.h — raster input through GDAL. */
#ifndef DM_GIS_RASTER_H
#define DM_GIS_RASTER_H

#include <stdint.h>

#include "../src/base/base.h"

/* Reads the first three bands of an 8-bit raster GDAL can open as interleaved RGB [H, W, 3]
 * (malloc'd into *rgb). A single-band 8-bit raster is replicated to grey RGB. */
int dm_gis_read_rgb8(const char *path, int *H, int *W, uint8_t **rgb, dm_err *err);

#endif

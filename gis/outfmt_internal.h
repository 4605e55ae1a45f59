/* gis/outfmt_internal.h — inside gis/: the creation options of a final COG (outfmt.c), for the
 * writer (raster_out.c). Not for use outside gis/. */
#ifndef DM_GIS_OUTFMT_INTERNAL_H
#define DM_GIS_OUTFMT_INTERNAL_H

#include "gis.h"

/* GTiff creation options for the COG copy of a raster of bytes (byte = 1) or float32: dinomap's
 * defaults (DEFLATE, the predictor for the sample type, 256-px tiles, band-interleaved,
 * COPY_SRC_OVERVIEWS) with the user's -co (COG or GTiff names) over them. *bx, *by: the tile
 * size. A CSL list to CSLDestroy, or NULL with err set (DM_EINVAL naming the option). */
char **dm_cog_options(const char *const *user, int byte, int *bx, int *by, dm_err *err);

/* "YYYY:MM:DD HH:MM:SS" (UTC), the TIFF DateTime of a file written now. */
void dm_tiff_datetime(char out[20]);

#endif

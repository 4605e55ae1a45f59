/* gis/aoi.h — areas of interest: vector polygons (any OGR format) that select the tiles to run. */
#ifndef DM_GIS_AOI_H
#define DM_GIS_AOI_H

#include "../src/base/base.h"

typedef struct dm_aoi dm_aoi;

/* Reads every polygon of every layer of `path`, transformed to the CRS given as WKT (the file's
 * CRS must be known unless target_wkt is NULL/empty). Errors: unreadable file, no polygons,
 * unknown CRS. */
int dm_aoi_open(const char *path, const char *target_wkt, dm_aoi **out, dm_err *err);
/* 1 if the axis-aligned rectangle (in the target CRS) touches any polygon, else 0. */
int dm_aoi_touches(const dm_aoi *a, double minx, double miny, double maxx, double maxy);
void dm_aoi_free(dm_aoi *a); /* NULL-safe */

#endif

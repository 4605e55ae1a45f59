/* gis/srs_internal.h — what gis/ files share about CRSs: releasing a transformation and its two
 * CRSs (any may be NULL). Not for use outside gis/. */
#ifndef DM_GIS_SRS_INTERNAL_H
#define DM_GIS_SRS_INTERNAL_H

#include <ogr_srs_api.h>

void dm_srs_release(OGRCoordinateTransformationH t, OGRSpatialReferenceH a,
                    OGRSpatialReferenceH b);

#endif

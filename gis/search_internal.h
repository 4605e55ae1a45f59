/* gis/search_internal.h — between gis/search.c (the tile index side: building, freshness) and
 * gis/search_file.c (the file itself). Not for use outside gis/. */
#ifndef DM_GIS_SEARCH_INTERNAL_H
#define DM_GIS_SEARCH_INTERNAL_H

#include "gis.h"

/* Records the index a search file belongs to and why it was (re)built (built 0: reused). */
int dm_sindex_set_origin(dm_sindex *s, const char *index, int built, const char *why);

#endif

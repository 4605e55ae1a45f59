/* src/chm_run.h — the wiring of `dinomap chm`: mosaic → overlapping tiles → backbone + CHMv2 head →
 * heights blended with a Hann window in a bounded row buffer → chm.tif (COG) + chm.qml + run.json.
 * cmd_chm.c parses the command line into this. */
#ifndef DM_CHM_RUN_H
#define DM_CHM_RUN_H

#include "../gis/mosaic.h"
#include "base/base.h"

typedef struct dm_chm_opts {
    const char *weights, *head, *outdir, *arch, *device, *norm;
    dm_mosaic_opts mosaic;
    int tile, overlap, threads;
    int taps[4], taps_set;
    int progress;   /* DM_PROGRESS_* (features_run.h) */
} dm_chm_opts;

int dm_chm_map(const dm_chm_opts *o, dm_err *err);

/* The blending window of a tile of `tile` px with `overlap` px shared with each neighbour:
 * w[i] = sin²(π (i + 0.5) / tile) (Hann), or 1 everywhere when overlap is 0. */
void dm_chm_window(int tile, int overlap, float *w);

#endif

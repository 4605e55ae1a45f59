/* src/features_run.h — the wiring of `dinomap features`: mosaic → tiles → backbone → chunks →
 * COGs, PCA preview, tile index and run.json. cmd_features.c parses the command line into this. */
#ifndef DM_FEATURES_RUN_H
#define DM_FEATURES_RUN_H

#include "../gis/mosaic.h"
#include "base/base.h"

enum { DM_PROGRESS_AUTO, DM_PROGRESS_BAR, DM_PROGRESS_JSON, DM_PROGRESS_NONE };

typedef struct dm_features_opts {
    const char *weights, *outdir, *arch, *device, *aoi, *norm;
    dm_mosaic_opts mosaic;
    int tile, halo, batch, threads, chunk;
    int layer;        /* -1: last block (forward_features) */
    int quantize;     /* int8 */
    int pca;
    int progress;
    int keep_chunks;
} dm_features_opts;

int dm_features_run(const dm_features_opts *o, dm_err *err);

#endif

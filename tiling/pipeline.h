/* tiling/pipeline.h — reader → model → writer on three threads with bounded queues, so reading
 * and writing overlap with inference and memory is fixed by the number of jobs in flight, never
 * by the size of the mosaic. Knows nothing of GDAL or the model: the stages are callbacks. */
#ifndef DM_TILING_PIPELINE_H
#define DM_TILING_PIPELINE_H

#include "../src/base/base.h"

typedef struct dm_job {
    int index;   /* position in the processing order */
    int skip;    /* set by read(): nothing for the model to do (empty tile, outside the AOI) */
    void *data;  /* the caller's buffers, made once by alloc() */
} dm_job;

typedef struct dm_pipeline_fns {
    void *ctx;
    int (*alloc)(void *ctx, dm_job *job, dm_err *err);        /* once per job slot */
    void (*release)(void *ctx, dm_job *job);                   /* once per job slot */
    int (*read)(void *ctx, dm_job *job, dm_err *err);          /* reader thread */
    int (*infer)(void *ctx, dm_job **jobs, int n, dm_err *err); /* calling thread, n <= batch */
    int (*write)(void *ctx, dm_job *job, dm_err *err);         /* writer thread, in order */
} dm_pipeline_fns;

/* Runs jobs 0..n-1. batch: most jobs per infer() call; depth: jobs waiting between stages. */
int dm_pipeline_run(const dm_pipeline_fns *f, int n, int batch, int depth, dm_err *err);

#endif

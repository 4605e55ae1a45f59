/* tiling/tiling.h — the run engine, and the one header of tiling/: one crash-safe, resumable way
 * to map a mosaic with any set of products (features, chm) in one backbone pass per window.
 *
 * A run = inputs + products + one window geometry: the model sees windows of S = tile + 2·halo
 * px stepping by the tile; features keep each window's core patches; chm blends whole windows
 * with Hann weights (neighbours overlap by 2·halo). Chunks (chunk × chunk tiles) are the unit of
 * work: a chunk's results go to files under OUTDIR/chunks/ (temporary name, then renamed), then
 * the tile index (OUTDIR/tiles.gpkg) marks the chunk done in one transaction. A chunk's files
 * depend on that chunk alone (blended products store Σw·v and Σw over their windows), and
 * finalize combines them in a fixed order, so a resumed run gives the same pixels as one that
 * was never interrupted.
 *
 * Re-running the same configuration in the same OUTDIR resumes (done chunks are skipped; chunks
 * fed by inputs that changed since are redone); another configuration is refused (DM_EMISMATCH)
 * naming what differs. OUTDIR is locked while a run uses it (DM_ELOCKED). */
#ifndef DM_TILING_H
#define DM_TILING_H

#include <signal.h>
#include <stdint.h>

#include "../gis/gis.h"

/* seg (class rasters from a linear head on the patch features) is derived from the features
 * product's chunks: asking for it makes the features too. */
enum { DM_PRODUCT_FEATURES = 1, DM_PRODUCT_CHM = 2, DM_PRODUCT_SEG = 4 };
#define DM_PRODUCT_ALL (DM_PRODUCT_FEATURES | DM_PRODUCT_CHM | DM_PRODUCT_SEG)

/* "features" / "chm" / "seg" → DM_PRODUCT_*; 0 if unknown. */
unsigned dm_product_from_name(const char *name);

/* What the engine tells its caller while it works (any may be NULL). */
typedef struct dm_run_events {
    void *ctx;
    /* done of total units of a stage ("tiles", "finalize") */
    void (*progress)(void *ctx, const char *stage, int64_t done, int64_t total);
    /* one event as a JSON object on one line (start, chunk, finalize, done, ...): `--log` */
    void (*event)(void *ctx, const char *json);
} dm_run_events;

typedef struct dm_run_opts {
    unsigned products;             /* DM_PRODUCT_* */
    const char *weights, *head;    /* backbone; CHMv2 head file (NULL: inside weights, HF) */
    const char *outdir;
    dm_mosaic_opts mosaic;
    const char *aoi;               /* polygons: only tiles touching them run; pixels outside
                                    * them are nodata in every output */
    int aoi_whole_tiles;           /* keep the tiles touching the AOI whole */
    int tile, halo, chunk;         /* geometry (px, px, tiles) */
    int batch, threads;            /* windows per forward pass; compute threads (<= 0: all) */
    const char *device, *arch;     /* "cpu"; architecture preset or NULL */
    const char *norm;              /* normalization preset; NULL: chm when chm runs, else sat */
    int layer;                     /* features: 0-based block, -1 the last */
    int quantize;                  /* features: int8 */
    int pca;                       /* features: the PCA preview */
    int taps[4], taps_set;         /* chm: the head's blocks */
    /* seg: a head file to apply (.dmseg or Meta's linear head), or seg_k > 0 clusters fitted at
     * finalize (k-means, seg_seed); seg_probabilities: seg_probabilities.tif too. The head (its
     * layer and normalization become the run's), k, seed and probabilities change the outputs
     * only: another one in the same folder rebuilds them from the chunks */
    const char *seg_head;
    int seg_k;
    unsigned seg_seed;
    int seg_probabilities;
    int overwrite;                 /* remove this folder's run and start afresh */
    int drop_chunks;               /* after a complete finalize, delete chunks/ */
    double max_cog_gib;            /* finalize: above this (uncompressed), block COGs + a VRT */
    dm_out_format out;             /* finalize: -of, -co; they change the outputs, not the chunks:
                                    * a rerun with others rebuilds only the outputs */
    volatile sig_atomic_t *cancel; /* set (by a signal handler): stop soon, keep what is done */
    const char *fault;             /* testing only: "tile:N", "commit:N", "finalize:N" kills the
                                    * process (SIGKILL) at that moment */
    dm_run_events ev;
} dm_run_opts;

/* Defaults for every field (products 0: the caller sets them). */
void dm_run_opts_init(dm_run_opts *o);

typedef struct dm_run_result {
    int nothing_to_do;             /* everything was done and the outputs up to date */
    int64_t tiles_run, tiles_empty, chunks_run, chunks_reset;
    int64_t tiles_total, tiles_done, chunks_total, chunks_left;
    double seconds, seconds_model;
    char outputs[1024];            /* what finalize wrote, space-separated */
} dm_run_result;

/* What can be checked of the options before anything is opened or written: products, weights,
 * folder and inputs given, --batch, --head, --crs (GDAL/PROJ must know it), -of and -co (this
 * GDAL's drivers must take them; Zarr needs the features product). 0 or DM_EINVAL (or
 * DM_EUNSUPPORTED: no Zarr driver) with the message. dm_run begins with it. */
int dm_run_check(const dm_run_opts *o, dm_err *err);

/* Runs (or resumes) a run. Returns 0, DM_ELOCKED, DM_EINTERRUPTED (what was done is kept; run
 * again to go on), DM_EMISMATCH, or another DM_E* code; a run that fails before writing anything
 * leaves OUTDIR as it was (a folder it created is removed). */
int dm_run(const dm_run_opts *o, dm_run_result *res, dm_err *err);

typedef struct dm_finalize_opts {
    int threads;
    int drop_chunks;
    double max_cog_gib;            /* < 0: the run's own setting */
    dm_out_format out;             /* -of, -co (dm_out_format_check them first) */
    int out_set;                   /* 0: the options of the folder's last finalize */
    volatile sig_atomic_t *cancel;
    dm_run_events ev;
    const char *fault;
} dm_finalize_opts;

/* Builds OUTDIR's final rasters from the chunks marked done (the area of chunks not done is
 * nodata; a notice says so). Takes the folder's lock. */
int dm_run_finalize(const char *outdir, const dm_finalize_opts *o, dm_run_result *res,
                    dm_err *err);

/* What OUTDIR's run is and what is left, as a JSON object (malloc'd string in *json). */
int dm_run_status(const char *outdir, char **json, dm_err *err);

#endif

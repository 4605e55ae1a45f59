/* tiling/tiling.h — the run engine, and the one header of tiling/: one crash-safe, resumable way
 * to map a mosaic with any set of products (features, chm, similarity) in one backbone pass per
 * window.
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

/* seg (class rasters from a linear head on the patch features) and similarity are derived from
 * the features product's chunks: asking for either makes the features too. */
enum { DM_PRODUCT_FEATURES = 1, DM_PRODUCT_CHM = 2, DM_PRODUCT_SEG = 4, DM_PRODUCT_SIMILARITY = 8 };
#define DM_PRODUCT_ALL                                                                             \
    (DM_PRODUCT_FEATURES | DM_PRODUCT_CHM | DM_PRODUCT_SEG | DM_PRODUCT_SIMILARITY)

/* "features" / "chm" / "seg" / "similarity" → DM_PRODUCT_*; 0 if unknown. */
unsigned dm_product_from_name(const char *name);

/* What the engine tells its caller while it works (any may be NULL). */
typedef struct dm_run_events {
    void *ctx;
    /* done of total units of a stage ("tiles", "finalize") */
    void (*progress)(void *ctx, const char *stage, int64_t done, int64_t total);
    /* one event as a JSON object on one line (start, chunk, finalize, done, ...): `--log` */
    void (*event)(void *ctx, const char *json);
} dm_run_events;

/* The query of a similarity map: a point (--at, in srs; NULL: the output CRS) whose patch's
 * vector is the query, or polygons (--query-aoi, any OGR format and CRS) whose patches' mean
 * vector (patches whose centre lies inside, normalized) is. Exactly one of the two. */
typedef struct dm_sim_query {
    int at_set;
    double x, y;
    const char *srs;
    const char *aoi;
} dm_sim_query;

/* What can be checked of a query before anything is opened: one of --at and --query-aoi, --srs
 * only with --at and known to PROJ. 0 or DM_EINVAL with the message. */
int dm_sim_query_check(const dm_sim_query *q, dm_err *err);

/* Which share of the chunks this process maps (tiling/shard.c). Every shard of a run computes
 * the same grid and chunk ids and the same split: contiguous ranges of chunk ids, each holding
 * about 1/count of the tiles to run (tiles inside the AOI whose core touches an input's
 * footprint; chunks outside the AOI or empty cost nothing). Each shard writes its own folder;
 * `dinomap merge` (dm_merge) builds the run's outputs from them. */
#define DM_SHARD_MAX 100000
typedef struct dm_shard {
    int index, count;      /* 0-based; count 0: the whole run (not sharded) */
    int off;               /* --shard none: the environment is not read */
    char source[200];      /* where it came from, for the log */
} dm_shard;
/* "I/N" (shard I of N, 1 <= I <= N) or "none". 0 or DM_EINVAL with the message. */
int dm_shard_parse(const char *s, dm_shard *out, dm_err *err);
/* From a scheduler's environment (get: getenv-like): SLURM_ARRAY_TASK_ID with
 * SLURM_ARRAY_TASK_MIN, _STEP (or _MAX) and _COUNT (arrays may start at 1 or step:
 * --array=1-64, --array=0-30:10); JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or
 * AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job), both counting from 0, with the count from
 * count_opt (--shard-count; <= 0: none) or DINOMAP_SHARD_COUNT. None of them: count 0. An array
 * of one is the whole run. 0 or DM_EINVAL (an index without a count, out of range...). */
typedef const char *(*dm_getenv_fn)(const char *name, void *ctx);
int dm_shard_from_env(dm_getenv_fn get, void *ctx, int count_opt, dm_shard *out, dm_err *err);

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
    int precision;                 /* DM_PREC_FP32 (default), DM_PREC_BF16 or DM_PREC_AUTO
                                    * (resolved when the run starts; the resolved one is recorded
                                    * in the configuration: it changes pixels) */
    const char *norm;              /* normalization preset; NULL: chm when chm runs, else sat */
    int layer;                     /* features: 0-based block, -1 the last */
    int quantize;                  /* features: int8 */
    int pca;                       /* features: the PCA preview */
    int taps[4], taps_set;         /* chm: the head's blocks */
    dm_sim_query query;            /* similarity: not part of the configuration (it changes no
                                    * chunk): a rerun with another rebuilds only similarity.tif */
    /* seg: a head file to apply (.dmseg or Meta's linear head), or seg_k > 0 clusters fitted at
     * finalize (k-means, seg_seed); seg_probabilities: seg_probabilities.tif too. The head (its
     * layer and normalization become the run's), k, seed and probabilities change the outputs
     * only: another one in the same folder rebuilds them from the chunks */
    const char *seg_head;
    int seg_k;
    unsigned seg_seed;
    int seg_probabilities;
    dm_shard shard;                /* this process's share of the chunks (count 0: all). Not
                                    * part of the configuration: every shard's is the same */
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
    /* a shard (count > 0): its chunks are done when chunks_left is 0; no finalize (dm_merge) */
    int shard_index, shard_count;  /* 0-based */
    int64_t shard_chunks;          /* chunks of this shard with tiles to run */
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

/* A similarity map without a run: from a features output (features.tif, features.vrt or their
 * folder; float32 or int8) into outdir/similarity.tif and similarity.qml (outdir is created if
 * missing; a run folder is refused: its similarity.tif belongs to its run). No model needed. */
typedef struct dm_sim_opts {
    const char *features, *outdir;
    dm_sim_query query;
    double max_cog_gib;            /* above this (uncompressed), block COGs + a VRT; 0: never */
    dm_out_format out;             /* -co (COG only) */
    volatile sig_atomic_t *cancel;
    dm_run_events ev;
} dm_sim_opts;
int dm_similarity(const dm_sim_opts *o, dm_run_result *res, dm_err *err);

/* A change map between two features outputs of one area (features.tif, .vrt or their run
 * folders) from one model (weights, layer, normalization and bands; else DM_EINVAL naming what
 * differs): outdir/change.tif (float32 COG, 1 − cos(a, b) per patch, NaN where either is nodata;
 * block COGs + change.vrt above max_cog_gib), change.qml and change_tiles.gpkg (per-tile mean
 * and rank; A's tile grid when A is a run folder, else squares of 32 patches), all on A's grid.
 * B on another grid (another CRS, compared as CRSs, not as text; another origin, patch size or
 * extent) is warped onto A's (bilinear interpolation of its vectors, or nearest); two that do not
 * overlap are refused. Read by blocks and groups of bands. */
typedef struct dm_change_opts {
    const char *a, *b, *outdir;
    int nearest;                   /* B warped with nearest-neighbour, not bilinear */
    double max_cog_gib;            /* above this (uncompressed), block COGs + a VRT; 0: never */
    dm_out_format out;             /* -co (COG only; dm_out_format_check them first) */
    volatile sig_atomic_t *cancel;
} dm_change_opts;
int dm_change(const dm_change_opts *o, dm_run_result *res, dm_err *err);

/* `dinomap merge`: the outputs of a sharded run from its shards' folders (tiling/merge.c). The
 * shards must be runs of one configuration over the same inputs, and no two may hold the same
 * chunk; every chunk with tiles to run must be done in the shard holding it, or the merge is
 * refused listing the missing chunk ranges (allow_missing: built without them, their area
 * nodata). OUTDIR gets the merged tiles.gpkg, the shards' chunk files (hard links where the
 * filesystem allows, else copies) and the outputs finalize builds from them: the same pixels as
 * one machine's run. Re-run it when late shards arrive; a merge of the same shards whose outputs
 * are up to date does nothing. Nothing is written when a check fails. */
typedef struct dm_merge_opts {
    const char *outdir;
    const char *const *shards;     /* the shards' run folders */
    int nshards;
    int allow_missing;
    int overwrite;                 /* OUTDIR holds another run or merge: replace it */
    dm_finalize_opts fin;          /* out_set 0: COG with the default options */
} dm_merge_opts;

typedef struct dm_merge_result {
    dm_run_result run;             /* finalize's */
    int64_t chunks, chunks_missing;/* chunks with tiles to run; of them not done in any shard */
    int64_t linked, copied, kept;  /* chunk files hard-linked, copied, already in place */
    char missing[1200];            /* what is missing, as text ("" when nothing) */
} dm_merge_result;
int dm_merge(const dm_merge_opts *o, dm_merge_result *res, dm_err *err);

/* What OUTDIR's run is and what is left, as a JSON object (malloc'd string in *json). */
int dm_run_status(const char *outdir, char **json, dm_err *err);

/* ==== an image chip's embedding (tiling/chip.c) =================================================
 * `dinomap search --image`: a chip (any raster GDAL reads) embedded as the run of `index` embeds
 * a tile: through the mosaic with the run's bands, 8-bit scaling, GSD and CRS, the run's
 * normalization and model (the weights must have its SHA-256: DM_EMISMATCH naming both), the
 * CLS token and the mean of the valid patches of the chip's centre (the chip less the run's halo
 * on each side), both unit length, into cls [dim] and mean [dim]. A chip cut exactly to a tile's
 * window (core + halo) gives that tile's stored embeddings. At most max(1024, the run's window)
 * px a side. */
typedef struct dm_chip_opts {
    const char *index;             /* the run's tiles.gpkg */
    const char *chip, *weights;
    int threads;                   /* <= 0: all cores */
} dm_chip_opts;
int dm_chip_embed(const dm_chip_opts *o, int dim, float *cls, float *mean, dm_err *err);

/* ==== training a segmentation head (tiling/seg_train.c) ==========================================
 * `dinomap seg train`: labels (a class raster or polygons, gis.h) reduced to one class per patch,
 * the patches' feature vectors (from an existing features raster, or from a features run of the
 * mosaic over the labels' extent into a work folder: a normal, resumable run folder, reused by
 * the next training), a softmax head fitted on them (heads/seg.h), metrics on a held-out share,
 * and the head written as a .dmseg file. Nothing is written to `out` unless everything worked. */
typedef struct dm_seg_train_opts {
    dm_run_opts run;               /* the features run when features is NULL: run.outdir is the
                                    * work folder; products and the AOI are set here */
    const char *features;          /* an existing features raster (.tif, .vrt): no run */
    const char *labels, *label_field, *classes; /* classes: CSV id,name,#rrggbb (or NULL) */
    const char *out;               /* the head, .dmseg */
    double l2;                     /* λ (default 1e-3) */
    double holdout;                /* share of the labelled patches held out, 0 <= f < 1 (0.2) */
    int iterations;                /* L-BFGS iterations at most (500) */
    int threads;                   /* the fit's threads (<= 0: all cores) */
} dm_seg_train_opts;

void dm_seg_train_opts_init(dm_seg_train_opts *o);

typedef struct dm_seg_train_class {
    int id;
    char name[64];
    int64_t train, holdout;        /* labelled patches */
    double iou;                    /* on the held-out patches; NaN when none is or is said to be
                                    * of the class */
    int in_head;                   /* 0: all its patches were held out */
} dm_seg_train_class;

typedef struct dm_seg_train_result {
    int ran;                       /* a features run was made, resumed or found done */
    dm_run_result run;
    char features[4200];           /* the features raster read */
    int nclasses;                  /* every class with labelled patches; the head's first */
    dm_seg_train_class cls[255];
    int C, D;                      /* the head */
    int64_t labelled, mixed, no_features, train, holdout;
    double train_accuracy, accuracy, miou; /* accuracy, miou: NaN without held-out patches */
    double loss, l2;
    int iterations, converged;
} dm_seg_train_result;

/* 0, or DM_EINVAL (bad labels, options; no overlap, one class, no patch taking a class...),
 * DM_EFORMAT, DM_EIO, or what the features run returned (DM_EINTERRUPTED, DM_ELOCKED, ...). */
int dm_seg_train(const dm_seg_train_opts *o, dm_seg_train_result *res, dm_err *err);

#endif

/* tiling/engine.h — inside the run engine: the state of a run, the window jobs, and the interface
 * every product recipe implements (prod_features.c, prod_chm.c, prod_seg.c, prod_similarity.c).
 * Not for use outside tiling/. */
#ifndef DM_TILING_ENGINE_H
#define DM_TILING_ENGINE_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "../heads/heads.h"
#include "../models/model.h"
#include "grid.h"
#include "pipeline.h"
#include "tiling.h"

#define DM_NPROD 4 /* products one run can make (engine.c checks the table fits) */
#define DM_MAX_LAYERS 8
#define DM_PCA_SAMPLE 4096 /* patches the PCA preview is fitted on */
#define DM_ENGINE_FORMAT 1 /* the meaning of a chunk; in every run's configuration */

typedef struct dm_recipe dm_recipe;

/* One window in flight through reader → model → writer. */
typedef struct dm_wjob {
    int r, c, chunk;
    int64_t tile_id;
    dm_window win;         /* px: the S×S window (may reach outside the mosaic) */
    dm_window core;        /* px: the core, clipped to the mosaic */
    dm_window cpatch;      /* the core's patches */
    uint8_t *rgb, *valid;  /* [3, S, S], [S, S] */
    float *img;            /* [3, S, S] normalized; invalid pixels 0 */
    uint8_t *pvalid;       /* [tp, tp] core patches with at least half their pixels valid */
    dm_tile_state state;   /* done (run), empty (no valid core pixel: not run) */
    float valid_fraction;
    float *emb;            /* [2, D]: unit CLS and unit mean of the valid core patches */
    void *pd[DM_NPROD];    /* each product's buffers */
} dm_wjob;

/* What the backbone gave for one window. */
typedef struct dm_tokens {
    int N, D, gh, gw, npre;            /* tokens, width, patch grid, tokens before the patches */
    const float *normed;               /* [N, D] last block through the final norm */
    const float *layer[DM_MAX_LAYERS]; /* [N, D] raw output of block eng->layers[i] */
} dm_tokens;

/* The engine's state, shared with the recipes (read-only for them unless said). */
typedef struct dm_eng {
    const dm_run_opts *o;
    char outdir[4096];
    dm_model *m;
    dm_backend *be;
    dm_mosaic *mo;
    dm_aoi *aoi;
    dm_grid g;
    double gt[6];
    const char *wkt;
    const dm_norm *nm;
    int D, S, N;
    int gemm_parts;                    /* the backend's GEMM slicing (kept by resumed runs) */
    int precision;                     /* resolved: DM_PREC_FP32 or DM_PREC_BF16 */
    char device[80];                   /* resolved ("auto" settled): cpu, cuda:0, ... */
    char sha[65];                      /* backbone weights */
    int layers[DM_MAX_LAYERS], nlayers;/* raw blocks the recipes asked for */
    double sample_p;                   /* features: a patch is a PCA candidate when u < p */
    int nprod;
    const dm_recipe *rec[DM_NPROD];
    void *self[DM_NPROD];
    dm_tileindex *ti;
    cJSON *cfg;                        /* compared with a resumed run's: what changes pixels */
    cJSON *res;                        /* resolved facts finalize needs (grid, CRS, metadata) */
    cJSON *outset;                     /* output settings by product (the seg head, the
                                        * similarity query): they change outputs, no chunk;
                                        * recorded, never compared */
    double model_seconds;
} dm_eng;

/* Asks the backbone for the raw output of block L; returns its slot in dm_tokens.layer. */
int dm_eng_want_layer(dm_eng *e, int L, dm_err *err);

/* Finalize's view of a run: everything comes from the index, no model needed. */
typedef struct dm_fin {
    const char *outdir;
    dm_grid g;
    double gt[6];
    const char *wkt;
    dm_tileindex *ti;
    const uint8_t *done;               /* [nchunks] chunk marked done */
    char *const *files;                /* [nchunks] its files as the index records them */
    const cJSON *cfg, *res;
    const cJSON *outset;               /* the output settings to build with, by product */
    cJSON *report;                     /* what products add to run.json, by product (or NULL) */
    void *sim;                         /* similarity: its query, resolved before any output is
                                        * written (dm_sim_fin_begin) */
    double max_bytes;
    dm_out_format out;                 /* -of, -co */
    const char *const *cog_co;         /* -co for the recipes' COGs (NULL: -of is not COG) */
    int threads;
    volatile sig_atomic_t *cancel;
    const dm_run_events *ev;
    const char *fault;
    int fault_count;
    char outputs[1024];                /* files written, space-separated (appended) */
    int64_t int8_clipped;              /* features: int8 values clipped; -1 when not int8 */
    char finished[32];                 /* when finalize wrote the outputs (RFC 3339 UTC) */
    double t0;                         /* when the invocation began (CLOCK_MONOTONIC s), 0: now */
} dm_fin;

/* The file of chunk k for `product` when the index lists it (the chunk is done and made one):
 * 1 and its path; 0 when it has none (not done, or no tile of it ran); DM_EIO when the index
 * lists a file that is gone (finalize must not turn it into a hole). */
int dm_fin_chunk_file(const dm_fin *f, int k, const char *product, char *path, size_t n,
                      dm_err *err);

/* Checks for cancellation and the testing fault "finalize:N" after each unit of finalize work. */
int dm_fin_step(dm_fin *f, dm_err *err);

struct dm_recipe {
    const char *name;                  /* "features", "chm": also the chunk files' suffix */
    /* run mode, with the model open: checks options, asks for layers, adds its settings to
     * e->cfg (they change pixels) and e->res (finalize needs them) */
    int (*prepare)(dm_eng *e, void **self, dm_err *err);
    void (*free)(void *self);
    int (*job_alloc)(void *self, void **pd, dm_err *err);
    void (*job_free)(void *self, void *pd);
    /* compute thread: a window that was run (state done) */
    int (*infer)(void *self, dm_wjob *j, void *pd, const dm_tokens *t, dm_err *err);
    /* writer thread, in order: a chunk starts, each of its windows (done or empty), it ends;
     * chunk_end writes the chunk's file (temporary name, renamed) when any window ran, and
     * names it in `file` ("" when none); samples: PCA candidates (features), may stay NULL */
    int (*chunk_begin)(void *self, int chunk, dm_err *err);
    int (*write)(void *self, const dm_wjob *j, const void *pd, dm_err *err);
    int (*chunk_end)(void *self, int chunk, int any_done, char *file, size_t n,
                     const dm_sample **samples, int *nsamples, int *sdim, dm_err *err);
    /* finalize mode: builds the outputs from the done chunks */
    int (*finalize)(dm_fin *f, dm_err *err);
};

extern const dm_recipe dm_recipe_features;
extern const dm_recipe dm_recipe_chm;
extern const dm_recipe dm_recipe_similarity;

/* prod_similarity.c: finds the similarity query's vector in the done chunks (or, after
 * --drop-chunks, in the run's features raster) before finalize writes anything, so that a query
 * on nodata fails with the outputs untouched; end frees it (NULL-safe). */
int dm_sim_fin_begin(dm_fin *f, dm_err *err);
void dm_sim_fin_end(dm_fin *f);

extern const dm_recipe dm_recipe_seg;

/* prod_seg.c: a run with the seg product, before anything is opened: o with the features
 * product added and the seg head's layer and normalization (norm: storage for its name); the
 * head must load, and an explicit --layer or --norm must agree with it. */
int dm_seg_run_opts(dm_run_opts *o, char *norm, size_t n, dm_err *err);

/* Every product, in the order its recipe runs and finalizes (a product derived from another's
 * chunks comes after it): its DM_PRODUCT_* bit and recipe. */
typedef struct dm_product {
    unsigned bit;
    const dm_recipe *rec;
} dm_product;
extern const dm_product dm_products[];
extern const int dm_nproducts;
/* The recipe of product bit p, or NULL. */
const dm_recipe *dm_recipe_of(unsigned p);

/* OUTDIR/chunks/cNNNNNN.PRODUCT.tif, and the name relative to OUTDIR. */
void dm_chunk_path(const char *outdir, int chunk, const char *product, char *path, size_t n);
void dm_chunk_rel(int chunk, const char *product, char *rel, size_t n);

/* JSON helpers: a number array, and the strings of a JSON string array (NULL-terminated,
 * malloc'd: free the array only, the strings belong to the JSON). */
cJSON *dm_json_ints(const int *v, int n);
const char **dm_json_strings(const cJSON *arr);

/* The last component of a path (the weights' file name for metadata; a folder's name keeps its
 * trailing '/'). */
const char *dm_base_name(const char *path);

/* Config: the settings of a run as one flat JSON object; the differences between two, as text
 * ("tile: 512 now, 256 in the folder's run; ..."); 0 when equal. */
int dm_config_diff(const cJSON *now, const cJSON *stored, char *msg, size_t n);
/* The same with other words for the two sides ("tile: 64 in A, 128 in B"). */
int dm_config_diff_as(const cJSON *now, const cJSON *stored, const char *la, const char *lb,
                      char *msg, size_t n);

/* The run's settings that change pixels (e->cfg, compared on resume) and the facts finalize
 * needs (e->res), the recipes' included; and this invocation's parameters for `runs`. */
int dm_config_build(dm_eng *e, const char *aoi_sha, dm_err *err);
char *dm_config_invocation(const dm_eng *e);

/* A run over an AOI maps the part of the mosaic the AOI needs (dm_grid_aoi_window: the same
 * tiles and pixels), not the whole mosaic: a small AOI in a huge mosaic gives small outputs. A folder whose run mapped the whole
 * mosaic (made before this) keeps doing so. *W, *H and e->gt become the window's. */
int dm_plan_aoi_crop(dm_eng *e, const dm_run_opts *o, const cJSON *old_res, int *W, int *H,
                     dm_err *err);
/* folder.c: 1 when dir holds a run's outputs (features.tif, chm.vrt...); the removal of a run's
 * files, outputs and chunks (--overwrite); the configuration, resolved facts and shard record
 * (NULL when none) a folder's index holds (cJSON_Delete them). */
int dm_folder_holds_outputs(const char *dir);
int dm_folder_remove_run(const char *dir, dm_err *err);
int dm_folder_read(const char *index, cJSON **cfg, cJSON **res, cJSON **shard, dm_err *err);

/* plan.c: the rectangles (mosaic px) of every input file that is new, gone, or of another size
 * or time since the folder's run (nfiles: how many files; first: one of them, for messages); the
 * inputs' order as JSON and whether it changed; the weights' SHA-256 (shard by shard). */
int dm_plan_changed(const dm_input_fp *old, int nold, const dm_input_fp *cur, int ncur,
                    dm_window **rects, int *nr, int *nfiles, char *first, size_t nfirst,
                    dm_err *err);
char *dm_plan_input_order(const dm_run_opts *o);
int dm_plan_reordered(const char *old_json, const char *now_json);
int dm_weights_sha(const dm_weights *w, char out[65], dm_err *err);

/* Products that come with others (similarity: features), added to products p. */
unsigned dm_products_needed(unsigned p);

/* shard.c: the tiles to run of each chunk [nchunks] that some input's footprint (fp, mosaic px)
 * touches, of the tiles marked active [ntiles, by tile id]; the split of nch chunks with that
 * work into count shares (owner[k]: 0-based shard); chunk sets as "0-3,7,9-12" text (malloc'd;
 * *count: how many) and back (-1: not such a text, or a chunk >= n). */
int dm_shard_work(const dm_grid *g, const dm_input_fp *fp, int nfp, const uint8_t *active,
                  int64_t *work, dm_err *err);
void dm_shard_split(const int64_t *work, int nch, int count, int *owner);
/* A resumed folder's shard must be this invocation's: 0 or DM_EMISMATCH naming both. */
int dm_shard_same(const char *outdir, const cJSON *old, const dm_shard *now, dm_err *err);
/* A shard's chunks (*own, [nchunks]): those the folder's first invocation recorded (old), or (a
 * fresh folder) this shard's share of the split by work, with its record for the index (*json).
 * tst: the tiles' states in processing order (jr, jc); chunk_tiles: each chunk's tiles to run. */
int dm_shard_plan(const dm_eng *e, const dm_shard *sh, const cJSON *old, const dm_input_fp *fp,
                  int nfp, const int *jr, const int *jc, const dm_tile_state *tst,
                  const int *chunk_tiles, uint8_t **own, char **json, int *nchunks,
                  int64_t *ntiles, dm_err *err);
char *dm_ranges_str(const uint8_t *in, int n, int *count);
int dm_ranges_parse(const char *s, uint8_t *out, int n);

/* finalize.c: whether OUTDIR's outputs were built from the index's last commit and are there. */
int dm_fin_uptodate(dm_tileindex *ti, const char *outdir);
/* finalize.c: dm_run_finalize's work, with OUTDIR's lock already held (dm_merge). */
int dm_fin_folder(const char *outdir, const dm_finalize_opts *o, dm_run_result *r, dm_err *err);

/* The run.json and item.json (STAC) of a finished run (called by finalize). */
int dm_write_run_json(dm_fin *f, const dm_run_result *r, dm_err *err);
int dm_write_stac_item(dm_fin *f, dm_err *err);

#endif

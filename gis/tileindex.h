/* gis/tileindex.h — the run's tile index: one SQLite file in GeoPackage form (`tiles.gpkg`), so QGIS
 * opens the `tiles` layer (tile footprints with their state) directly; plain tables beside it hold
 * the run, the chunks and the per-tile embeddings. A chunk's tiles are marked done only after the
 * chunk's files are in place (crash safety: a rerun redoes exactly the chunks not marked done). */
#ifndef DM_GIS_TILEINDEX_H
#define DM_GIS_TILEINDEX_H

#include <stdint.h>

#include "../src/base/base.h"

typedef struct dm_tileindex dm_tileindex;

/* One tile of the grid. Footprint in the output CRS (the tile's core, without halo). */
typedef struct dm_tile_rec {
    int64_t id;            /* row * ncols + col */
    int row, col;
    int chunk;             /* chunk id */
    int px0, py0, pw, ph;  /* core window in input pixels */
    double minx, miny, maxx, maxy;
} dm_tile_rec;

typedef enum { DM_TILE_PENDING = 0, DM_TILE_DONE, DM_TILE_EMPTY, DM_TILE_OUTSIDE_AOI,
               DM_TILE_FAILED } dm_tile_state;
const char *dm_tile_state_name(dm_tile_state s); /* "pending", "done", "empty", "outside_aoi", "failed" */

/* What inference gave for one tile. */
typedef struct dm_tile_result {
    int64_t id;
    dm_tile_state state;
    float valid_fraction;  /* share of valid input pixels in the core */
    const float *cls;      /* [dim] unit-length CLS embedding, or NULL (not run) */
    const float *mean;     /* [dim] unit-length mean of the core's patch embeddings, or NULL */
} dm_tile_result;

/* Creates `path` (must not exist) with layer `tiles` (polygons in the CRS given as WKT; NULL or ""
 * for none) and tables `runs`, `chunks`, `embeddings`. run_json: the run's parameters (stored in
 * `runs`). dim: embedding length. */
int dm_tileindex_create(const char *path, const char *crs_wkt, const char *run_json, int dim,
                        dm_tileindex **out, dm_err *err);
/* Reopens an existing index for update (a rerun resuming a run): checks it is a dinomap index whose
 * embeddings have length `dim`, and records this invocation in `runs`. */
int dm_tileindex_open(const char *path, const char *run_json, int dim, dm_tileindex **out,
                      dm_err *err);
/* Adds the grid's tiles (state pending, or outside_aoi when marked so) in one transaction. */
int dm_tileindex_add_tiles(dm_tileindex *ti, const dm_tile_rec *tiles, const dm_tile_state *states,
                           int n, dm_err *err);
/* Records chunk `chunk` as done with its file (relative to the index's folder) and the results of
 * its tiles, all in one transaction. */
int dm_tileindex_chunk_done(dm_tileindex *ti, int chunk, const char *file,
                            const dm_tile_result *res, int n, dm_err *err);
/* Counts tiles per state (array indexed by dm_tile_state, 5 entries). */
int dm_tileindex_counts(dm_tileindex *ti, int64_t counts[5], dm_err *err);
/* The chunks already marked done, ascending (malloc'd; the caller frees *chunks). A rerun skips
 * them (bsearch). */
int dm_tileindex_done_chunks(dm_tileindex *ti, int **chunks, int *n, dm_err *err);
int dm_tileindex_close(dm_tileindex *ti, dm_err *err); /* NULL-safe; commits and closes */

#endif

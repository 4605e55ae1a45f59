/* tiling/grid.h — the deterministic tile grid of a run, aligned to the 16-px patch grid.
 * Units: mosaic pixels (px) and patches (16×16 px, one output pixel of a feature raster).
 * Tile (r, c) owns the core patches [c·tp, (c+1)·tp) × [r·tp, (r+1)·tp) (clipped to the
 * feature grid): cores never overlap and leave no gaps. The model sees a window of
 * S = tile + 2·halo px around the core; windows reach at most a halo past the (16-px padded)
 * mosaic on any side (edge windows are shifted inward), so every edge is treated alike and no
 * window is mostly padding; a mosaic narrower than a tile sits centred in its one window.
 * Chunks group chunk×chunk tiles: the unit of crash-safe output, resume and sharding. */
#ifndef DM_TILING_GRID_H
#define DM_TILING_GRID_H

#include "../src/base/base.h"

#define DM_PATCH_PX 16

typedef struct dm_grid {
    int W, H;          /* mosaic size, px */
    int tile, halo;    /* px, multiples of 16 */
    int S;             /* window side: tile + 2·halo */
    int tp;            /* patches per tile side */
    int fw, fh;        /* feature grid: ceil(W/16) × ceil(H/16) patches */
    int ncols, nrows;  /* tiles */
    int chunk;         /* tiles per chunk side */
    int ccols, crows;  /* chunks */
} dm_grid;

typedef struct dm_window {
    int x, y, w, h;
} dm_window;

int dm_grid_init(dm_grid *g, int W, int H, int tile, int halo, int chunk, dm_err *err);
/* The part of a W×H px mosaic (north-up geotransform gt) a run over an area of interest needs:
 * the cores of the whole mosaic's tiles (of `tile` px from its origin) that meet the AOI's
 * envelope env (minx, miny, maxx, maxy, in the mosaic's CRS). A grid over that part has the same
 * tiles, windows and so pixels as one over the whole mosaic (reads past its edges see the mosaic
 * around it). 1 and the part when it is less than the mosaic, else 0 (the whole mosaic). */
int dm_grid_aoi_window(const double gt[6], int W, int H, const double env[4], int tile,
                       dm_window *win);
int dm_grid_ntiles(const dm_grid *g);
int dm_grid_nchunks(const dm_grid *g);
/* The core patches of tile (r, c), in patch units. */
dm_window dm_grid_tile_patches(const dm_grid *g, int r, int c);
/* The core of tile (r, c) in px, clipped to the mosaic. */
dm_window dm_grid_tile_core(const dm_grid *g, int r, int c);
/* The S×S window the model sees for tile (r, c), in px (reaches at most `halo` px past the padded
 * mosaic, more only for a mosaic narrower than a tile; always contains the core's patches; x, y
 * multiples of 16). */
dm_window dm_grid_window(const dm_grid *g, int r, int c);
/* Chunk k: its tiles [r0, r1) × [c0, c1) and its patches. */
void dm_grid_chunk(const dm_grid *g, int k, int *r0, int *c0, int *r1, int *c1, dm_window *patches);
/* The pixels chunk k's windows read, clipped to the mosaic (the union of its windows). */
dm_window dm_grid_chunk_extent(const dm_grid *g, int k);
/* The processing order (chunk by chunk, row-major inside a chunk): fills rows/cols/chunks, each of
 * dm_grid_ntiles() entries. */
void dm_grid_order(const dm_grid *g, int *rows, int *cols, int *chunks);

/* 1 if the rectangles intersect (empty ones never do). */
int dm_window_overlap(dm_window a, dm_window b);

#endif

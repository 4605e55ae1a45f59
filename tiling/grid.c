/* tiling/grid.c — see grid.h. */
#include "grid.h"

#include <math.h>

static int min_i(int a, int b) { return a < b ? a : b; }
static int max_i(int a, int b) { return a > b ? a : b; }

int dm_grid_init(dm_grid *g, int W, int H, int tile, int halo, int chunk, dm_err *err)
{
    if (tile < DM_PATCH_PX || tile % DM_PATCH_PX || tile > 8192)
        return dm_err_set(err, DM_EINVAL, "--tile %d: must be a multiple of 16 between 16 and "
                          "8192", tile);
    if (halo < 0 || halo % DM_PATCH_PX || halo > 4096)
        return dm_err_set(err, DM_EINVAL, "--halo %d: must be a multiple of 16 between 0 and "
                          "4096", halo);
    if (chunk < 1 || chunk > 64)
        return dm_err_set(err, DM_EINVAL, "--chunk %d: must be between 1 and 64 tiles", chunk);
    if (W < 1 || H < 1)
        return dm_err_set(err, DM_EINVAL, "the mosaic is empty (%d×%d px)", W, H);
    g->W = W;
    g->H = H;
    g->tile = tile;
    g->halo = halo;
    g->S = tile + 2 * halo;
    g->tp = tile / DM_PATCH_PX;
    g->fw = (W + DM_PATCH_PX - 1) / DM_PATCH_PX;
    g->fh = (H + DM_PATCH_PX - 1) / DM_PATCH_PX;
    g->ncols = (g->fw + g->tp - 1) / g->tp;
    g->nrows = (g->fh + g->tp - 1) / g->tp;
    g->chunk = chunk;
    g->ccols = (g->ncols + chunk - 1) / chunk;
    g->crows = (g->nrows + chunk - 1) / chunk;
    return 0;
}

int dm_grid_ntiles(const dm_grid *g) { return g->ncols * g->nrows; }
int dm_grid_nchunks(const dm_grid *g) { return g->ccols * g->crows; }

dm_window dm_grid_tile_patches(const dm_grid *g, int r, int c)
{
    dm_window w = { c * g->tp, r * g->tp, 0, 0 };
    w.w = min_i(g->tp, g->fw - w.x);
    w.h = min_i(g->tp, g->fh - w.y);
    return w;
}

dm_window dm_grid_tile_core(const dm_grid *g, int r, int c)
{
    dm_window w = { c * g->tile, r * g->tile, 0, 0 };
    w.w = min_i(g->tile, g->W - w.x);
    w.h = min_i(g->tile, g->H - w.y);
    return w;
}

/* The window's start along one axis: the core's start minus the halo, but never more than the
 * halo past either end of the padded extent n16 = 16·ceil(n/16). So the mosaic's edges sit a
 * halo inside the edge windows on all four sides alike, and no window is mostly padding (it was
 * the last column's and row's: their heights were twice as noisy as the first's). Where the
 * extent is narrower than a tile, it sits in the window's middle (on the patch grid, the
 * smaller margin first). */
static int window_start(int core0, int halo, int S, int n)
{
    int n16 = (n + DM_PATCH_PX - 1) / DM_PATCH_PX * DM_PATCH_PX, hi = n16 + halo - S;
    if (hi < -halo)
        return -((S - n16) / DM_PATCH_PX / 2) * DM_PATCH_PX;
    return min_i(core0 - halo, hi);
}

dm_window dm_grid_window(const dm_grid *g, int r, int c)
{
    dm_window w = { window_start(c * g->tile, g->halo, g->S, g->W),
                    window_start(r * g->tile, g->halo, g->S, g->H), g->S, g->S };
    return w;
}

void dm_grid_chunk(const dm_grid *g, int k, int *r0, int *c0, int *r1, int *c1, dm_window *p)
{
    int cr = k / g->ccols, cc = k % g->ccols;
    *r0 = cr * g->chunk;
    *c0 = cc * g->chunk;
    *r1 = min_i(*r0 + g->chunk, g->nrows);
    *c1 = min_i(*c0 + g->chunk, g->ncols);
    p->x = *c0 * g->tp;
    p->y = *r0 * g->tp;
    p->w = min_i(*c1 * g->tp, g->fw) - p->x;
    p->h = min_i(*r1 * g->tp, g->fh) - p->y;
}

dm_window dm_grid_chunk_extent(const dm_grid *g, int k)
{
    int r0, c0, r1, c1;
    dm_window p;
    dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &p);
    /* window starts grow with the column (row), so the first and last windows bound the union */
    dm_window a = dm_grid_window(g, r0, c0), b = dm_grid_window(g, r1 - 1, c1 - 1);
    int x0 = max_i(a.x, 0), y0 = max_i(a.y, 0);
    int x1 = min_i(b.x + b.w, g->W), y1 = min_i(b.y + b.h, g->H);
    dm_window e = { x0, y0, x1 - x0, y1 - y0 };
    return e;
}

void dm_grid_order(const dm_grid *g, int *rows, int *cols, int *chunks)
{
    int i = 0;
    for (int k = 0; k < dm_grid_nchunks(g); k++) {
        int r0, c0, r1, c1;
        dm_window p;
        dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &p);
        for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++, i++) {
                rows[i] = r;
                cols[i] = c;
                chunks[i] = k;
            }
    }
}

int dm_window_overlap(dm_window a, dm_window b)
{
    return a.w > 0 && a.h > 0 && b.w > 0 && b.h > 0 && a.x < b.x + b.w && b.x < a.x + a.w &&
           a.y < b.y + b.h && b.y < a.y + a.h;
}

/* One axis of dm_grid_aoi_window: [lo, hi) px of the mosaic's n, whole tiles from its origin. */
static void aoi_axis(double f0, double f1, int n, int tile, int *lo, int *hi)
{
    double t0 = floor(f0 / tile), t1 = floor(f1 / tile) + 1;
    long a = t0 < 0 ? 0 : t0 * tile > n ? n : (long)t0 * tile;
    long b = t1 * tile > n ? n : t1 < 0 ? 0 : (long)t1 * tile;
    /* the last tile alone, narrower than a tile, would be centred in its window (the rule for
     * small mosaics): one more tile keeps the whole mosaic's window there */
    if (b - a < tile && a >= tile)
        a -= tile;
    *lo = (int)a, *hi = (int)b;
}

int dm_grid_aoi_window(const double gt[6], int W, int H, const double env[4], int tile,
                       dm_window *win)
{
    if (gt[1] <= 0 || gt[5] >= 0 || gt[2] != 0 || gt[4] != 0 || !(env[2] >= env[0]) ||
        !(env[3] >= env[1]) || tile < DM_PATCH_PX)
        return 0;
    int x0, x1, y0, y1;
    aoi_axis((env[0] - gt[0]) / gt[1], (env[2] - gt[0]) / gt[1], W, tile, &x0, &x1);
    aoi_axis((env[3] - gt[3]) / gt[5], (env[1] - gt[3]) / gt[5], H, tile, &y0, &y1);
    if (x1 <= x0 || y1 <= y0 || (x0 == 0 && y0 == 0 && x1 == W && y1 == H))
        return 0;
    *win = (dm_window){ x0, y0, x1 - x0, y1 - y0 };
    return 1;
}

/* tiling/prod_chm.c — the canopy-height product: Meta's CHMv2 head on each whole window, blended
 * with a separable Hann window w(i) = sin²(π (i + ½) / S) so that every pixel is a weighted mean
 * of the windows that see it, with weights falling to ~0 at each window's edge (no seams; halo 0:
 * w = 1, windows abut). A chunk file holds Σ w·h and Σ w of the chunk's own windows over their
 * full extent (2 float32 bands); finalize adds the chunks that reach a pixel in ascending order
 * and divides. So a chunk's file depends on that chunk alone, and a resumed run gives the same
 * heights as one that was never interrupted. Invalid input pixels add no weight: where no valid
 * pixel of any window lands, the height is nodata (NaN; 0 m is a real height). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

typedef struct chm {
    dm_eng *e;
    dm_chm *head;
    int S, slot[DM_CHM_TAPS];
    float *win;             /* [S] blending weights */
    float *taps;            /* [4, N, D]: the taps' tokens, normed in place by the head */
    /* writer */
    dm_window ext;          /* the chunk's extent (px) */
    float *acc;             /* [2, ext.h, ext.w]: Σ w·h, Σ w */
    size_t cap;
} chm;

typedef struct cjob {
    float *height;          /* [S, S] metres */
} cjob;

static int c_prepare(dm_eng *e, void **self, dm_err *err)
{
    const dm_run_opts *o = e->o;
    if (e->S % 32)
        return dm_err_set(err, DM_EINVAL, "chm: windows of %d px (tile %d + 2 × halo %d): the "
                          "window must be a multiple of 32 px so that the head's output lines up "
                          "pixel for pixel (e.g. --tile 384 --halo 64)", e->S, o->tile, o->halo);
    if (e->S > 4096)
        return dm_err_set(err, DM_EINVAL, "chm: windows of %d px are larger than 4096 px (the head "
                          "works at full resolution: ~%.0f GB per window)", e->S,
                          (double)e->S * e->S * 1024 * 4 / 1e9);
    double side = (double)o->chunk * o->tile + 2.0 * o->halo, cw = fmin(side, e->g.W),
           ch = fmin(side, e->g.H), bytes = cw * ch * 8;
    if (bytes > 2147483648.0)
        return dm_err_set(err, DM_EINVAL, "--chunk %d: a chunk's blending sums over %d×%d px are "
                          "%.1f GB in memory; use a smaller --chunk (e.g. %d)", o->chunk, (int)cw,
                          (int)ch, bytes / 1e9,
                          (int)fmax(1, floor(o->chunk * sqrt(2147483648.0 / bytes))));
    if (!o->head && !dm_chm_detect(e->m->w))
        return dm_err_set(err, DM_EINVAL, "%s holds no CHMv2 head: pass the head with --head "
                          "(Meta ships it as dinov3_vitl16_chmv2_dpt_head-*.pth)", o->weights);
    chm *c = calloc(1, sizeof *c);
    if (!c)
        return dm_err_oom(err);
    c->e = e;
    c->S = e->S;
    int rc = dm_chm_open(o->head, e->m->w, e->m, o->taps_set ? o->taps : NULL, &c->head, err);
    if (!rc)
        rc = dm_chm_set_threads(c->head, o->threads, err);
    if (!rc)
        rc = dm_chm_set_precision(c->head, dm_ops_precision_on(e->device, e->precision), err);
    if (!rc && !strcmp(dm_device_class(e->device), "cuda")) { /* the head beside the backbone */
        dm_err e2 = { 0 };
        int r2 = dm_chm_use_backend(c->head, e->be, &e2);
        if (!r2)
            rc = dm_chm_set_precision(c->head, e->precision, err);
        else if (r2 != DM_EUNSUPPORTED)
            rc = r2, *err = e2;
        else
            dm_info("CHMv2 head on the CPU (%s)", e2.msg);
    }
    const int *taps = rc ? NULL : dm_chm_taps(c->head);
    for (int k = 0; !rc && k < DM_CHM_TAPS; k++)
        if ((c->slot[k] = dm_eng_want_layer(e, taps[k], err)) < 0)
            rc = c->slot[k];
    char hsha[65] = "";
    if (!rc && o->head)
        rc = dm_sha256_file_cached(o->head, hsha, err);
    if (!rc && !o->head)
        memcpy(hsha, e->sha, sizeof hsha);
    c->win = rc ? NULL : malloc(sizeof(float) * c->S);
    c->taps = rc ? NULL : malloc(sizeof(float) * DM_CHM_TAPS * (size_t)e->N * e->D);
    if (!rc && (!c->win || !c->taps))
        rc = dm_err_oom(err);
    if (rc) {
        dm_chm_free(c->head);
        free(c->win), free(c->taps), free(c);
        return rc;
    }
    for (int i = 0; i < c->S; i++) {
        double s = sin(M_PI * (i + 0.5) / c->S);
        c->win[i] = o->halo > 0 ? (float)(s * s) : 1.0f;
    }
    cJSON_AddStringToObject(e->cfg, "chm_head_sha256", hsha);
    cJSON_AddItemToObject(e->cfg, "chm_taps", dm_json_ints(taps, DM_CHM_TAPS));
    cJSON *r = cJSON_AddObjectToObject(e->res, "chm");
    cJSON *meta = cJSON_AddArrayToObject(r, "meta");
    char m[700];
#define META(...)                                                                                  \
    (snprintf(m, sizeof m, __VA_ARGS__), cJSON_AddItemToArray(meta, cJSON_CreateString(m)))
    META("DINOMAP_VERSION=%s", DINOMAP_VERSION);
    META("DINOMAP_PRODUCT=canopy_height");
    META("DINOMAP_UNITS=metres above ground; nodata NaN (0 m is a real height)");
    META("DINOMAP_MODEL=CHMv2 DPT head on %s (D=%d, %d blocks), taps %d,%d,%d,%d", e->m->cfg.arch,
         e->D, e->m->cfg.depth, taps[0], taps[1], taps[2], taps[3]);
    META("DINOMAP_WEIGHTS=%s", dm_base_name(o->weights));
    META("DINOMAP_WEIGHTS_SHA256=%s", e->sha);
    META("DINOMAP_HEAD=%s", o->head ? dm_base_name(o->head) : "(in the weights file)");
    META("DINOMAP_HEAD_SHA256=%s", hsha);
    META("DINOMAP_NORMALIZATION=%s mean=%.3f,%.3f,%.3f std=%.3f,%.3f,%.3f", e->nm->name,
         e->nm->mean[0], e->nm->mean[1], e->nm->mean[2], e->nm->std[0], e->nm->std[1],
         e->nm->std[2]);
    META("DINOMAP_INPUT_SCALING=%s", dm_mosaic_scaling(e->mo));
    META("DINOMAP_GSD=%.17g", fabs(e->gt[1]));
    META("DINOMAP_TILE=%d (window %d px)", o->tile, e->S);
    META("DINOMAP_OVERLAP=%d", 2 * o->halo);
    META("DINOMAP_BLENDING=%s", o->halo ? "Hann window w = sin^2(pi (i+0.5)/window) per axis, "
         "heights averaged with these weights" : "none (windows abut)");
    META("DINOMAP_OVERVIEW_RESAMPLING=AVERAGE");
#undef META
    *self = c;
    return 0;
}

static void c_free(void *self)
{
    chm *c = self;
    if (!c)
        return;
    dm_chm_free(c->head);
    free(c->win), free(c->taps), free(c->acc);
    free(c);
}

static int c_job_alloc(void *self, void **pd, dm_err *err)
{
    chm *c = self;
    cjob *j = calloc(1, sizeof *j);
    if (!j || !(j->height = malloc(sizeof(float) * (size_t)c->S * c->S))) {
        free(j);
        return dm_err_oom(err);
    }
    *pd = j;
    return 0;
}

static void c_job_free(void *self, void *pd)
{
    (void)self;
    cjob *j = pd;
    if (j)
        free(j->height);
    free(j);
}

static int c_infer(void *self, dm_wjob *j, void *pd, const dm_tokens *t, dm_err *err)
{
    (void)j;
    chm *c = self;
    cjob *cj = pd;
    size_t n = (size_t)t->N * t->D;
    float *taps[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++) {
        taps[k] = c->taps + k * n;
        memcpy(taps[k], t->layer[c->slot[k]], n * sizeof(float));
    }
    return dm_chm_run_taps(c->head, taps, t->gh, t->gw, NULL, cj->height, err);
}

static int c_chunk_begin(void *self, int chunk, dm_err *err)
{
    chm *c = self;
    c->ext = dm_grid_chunk_extent(&c->e->g, chunk);
    size_t n = 2 * (size_t)c->ext.w * c->ext.h;
    if (n > c->cap) {
        free(c->acc);
        c->cap = 0;
        if (!(c->acc = malloc(n * sizeof(float))))
            return dm_err_oom(err);
        c->cap = n;
    }
    memset(c->acc, 0, n * sizeof(float));
    return 0;
}

static int c_write(void *self, const dm_wjob *j, const void *pd, dm_err *err)
{
    (void)err;
    chm *c = self;
    if (j->state != DM_TILE_DONE)
        return 0;
    const cjob *cj = pd;
    const dm_window *e = &c->ext;
    size_t plane = (size_t)e->w * e->h;
    float *s1 = c->acc, *s0 = c->acc + plane;
    int S = c->S;
    /* the window ∩ the chunk's extent (which lies inside the mosaic) */
    int x0 = j->win.x > e->x ? j->win.x : e->x, y0 = j->win.y > e->y ? j->win.y : e->y;
    int x1 = j->win.x + S < e->x + e->w ? j->win.x + S : e->x + e->w;
    int y1 = j->win.y + S < e->y + e->h ? j->win.y + S : e->y + e->h;
    for (int y = y0; y < y1; y++) {
        int wy = y - j->win.y;
        float fy = c->win[wy];
        const float *h = cj->height + (size_t)wy * S;
        const uint8_t *v = j->valid + (size_t)wy * S;
        float *a1 = s1 + (size_t)(y - e->y) * e->w - e->x,
              *a0 = s0 + (size_t)(y - e->y) * e->w - e->x;
        for (int x = x0; x < x1; x++) {
            int wx = x - j->win.x;
            if (!v[wx])
                continue;
            float w = fy * c->win[wx];
            a1[x] += w * h[wx];
            a0[x] += w;
        }
    }
    return 0;
}

static int c_chunk_end(void *self, int chunk, int any_done, char *file, size_t n,
                       const dm_sample **samples, int *nsamples, int *sdim, dm_err *err)
{
    (void)samples, (void)nsamples, (void)sdim;
    chm *c = self;
    file[0] = '\0';
    if (!any_done)
        return 0;
    const dm_eng *e = c->e;
    char path[4200];
    dm_chunk_path(e->outdir, chunk, "chm", path, sizeof path);
    double gt[6] = { e->gt[0] + c->ext.x * e->gt[1], e->gt[1], 0, e->gt[3] + c->ext.y * e->gt[5],
                     0, e->gt[5] };
    int rc = dm_gis_chunk_write(path, c->acc, 2, c->ext.w, c->ext.h, gt, e->wkt, err);
    if (!rc)
        dm_chunk_rel(chunk, "chm", file, n);
    return rc;
}

/* --- finalize -------------------------------------------------------------------------------- */

#define BLOCK 512 /* px per side of the pieces finalize works on */

static int c_finalize(dm_fin *fi, dm_err *err)
{
    const dm_grid *g = &fi->g;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(fi->res, "chm");
    const char **meta = dm_json_strings(cJSON_GetObjectItemCaseSensitive(r, "meta"));
    static const char *bname[1] = { "canopy_height_m" };
    dm_out_spec s = { .dir = fi->outdir, .name = "chm", .width = g->W, .height = g->H,
                      .bands = 1, .nodata = NAN, .wkt = fi->wkt, .meta = meta,
                      .band_names = bname, .unit = "m", .resampling = "AVERAGE",
                      .max_bytes = fi->max_bytes, .cancel = fi->cancel, .block_align = 256,
                      .co = fi->cog_co };
    memcpy(s.gt, fi->gt, sizeof s.gt);
    int ncc = g->ccols, ncr = g->crows, rc = meta ? 0 : dm_err_oom(err);
    /* a chunk's extent: its columns' x range, its rows' y range */
    dm_window *ce = malloc(sizeof *ce * (size_t)ncc), *re = malloc(sizeof *re * (size_t)ncr);
    double *acc = malloc(sizeof(double) * 2 * BLOCK * BLOCK);
    float *buf = malloc(sizeof(float) * 2 * BLOCK * BLOCK),
          *out = malloc(sizeof(float) * BLOCK * BLOCK);
    if (!rc && (!ce || !re || !acc || !buf || !out))
        rc = dm_err_oom(err);
    for (int i = 0; !rc && i < ncc; i++)
        ce[i] = dm_grid_chunk_extent(g, i);
    for (int i = 0; !rc && i < ncr; i++)
        re[i] = dm_grid_chunk_extent(g, i * ncc);
    dm_out *o = NULL;
    if (!rc)
        rc = dm_out_create(&s, &o, err);
    int64_t total = 0, steps = 0, any = 0;
    for (int ri = 0; !rc && ri < dm_out_nregions(o); ri++) {
        dm_region reg = dm_out_region(o, ri);
        total += (int64_t)((reg.w + BLOCK - 1) / BLOCK) * ((reg.h + BLOCK - 1) / BLOCK);
    }
    if (!rc && fi->ev->progress)
        fi->ev->progress(fi->ev->ctx, "finalize", 0, total);
    for (int ri = 0; !rc && ri < dm_out_nregions(o); ri++) {
        dm_region reg = dm_out_region(o, ri);
        rc = dm_out_begin(o, ri, err);
        for (int by = reg.y; !rc && by < reg.y + reg.h; by += BLOCK)
            for (int bx = reg.x; !rc && bx < reg.x + reg.w; bx += BLOCK) {
                int bw = reg.x + reg.w - bx < BLOCK ? reg.x + reg.w - bx : BLOCK;
                int bh = reg.y + reg.h - by < BLOCK ? reg.y + reg.h - by : BLOCK;
                dm_window b = { bx, by, bw, bh };
                size_t plane = (size_t)bw * bh;
                memset(acc, 0, 2 * plane * sizeof *acc);
                /* the chunks reaching the block, in ascending order: rows, then columns */
                for (int cr = 0; !rc && cr < ncr; cr++) {
                    dm_window ry = { b.x, re[cr].y, b.w, re[cr].h };
                    if (!dm_window_overlap(b, ry))
                        continue;
                    for (int cc = 0; !rc && cc < ncc; cc++) {
                        int k = cr * ncc + cc;
                        dm_window ex = { ce[cc].x, re[cr].y, ce[cc].w, re[cr].h };
                        if (!fi->done[k] || !dm_window_overlap(b, ex))
                            continue;
                        char path[4200];
                        int has = dm_fin_chunk_file(fi, k, "chm", path, sizeof path, err);
                        if (has < 0) {
                            rc = has;
                            break;
                        }
                        if (!has)
                            continue; /* a chunk of empty tiles has no file */
                        int x0 = b.x > ex.x ? b.x : ex.x, y0 = b.y > ex.y ? b.y : ex.y;
                        int x1 = b.x + b.w < ex.x + ex.w ? b.x + b.w : ex.x + ex.w;
                        int y1 = b.y + b.h < ex.y + ex.h ? b.y + b.h : ex.y + ex.h;
                        int w = x1 - x0, h = y1 - y0;
                        rc = dm_gis_chunk_read(path, 2, x0 - ex.x, y0 - ex.y, w, h, buf, err);
                        for (int y = 0; !rc && y < h; y++)
                            for (int x = 0; x < w; x++) {
                                size_t i = (size_t)(y0 - b.y + y) * bw + (x0 - b.x + x);
                                acc[i] += buf[(size_t)y * w + x];
                                acc[plane + i] += buf[(size_t)w * h + (size_t)y * w + x];
                            }
                        any = 1;
                    }
                }
                for (size_t i = 0; !rc && i < plane; i++)
                    out[i] = acc[plane + i] > 0 ? (float)(acc[i] / acc[plane + i]) : NAN;
                if (!rc)
                    rc = dm_out_write(o, bx, by, bw, bh, out, err);
                if (!rc)
                    rc = dm_fin_step(fi, err);
                if (fi->ev->progress)
                    fi->ev->progress(fi->ev->ctx, "finalize", ++steps, total);
            }
        if (!rc)
            rc = dm_out_end(o, err);
    }
    if (!rc && !any)
        rc = dm_err_set(err, DM_EINVAL, "nothing was mapped: every tile is empty (nodata) or "
                        "outside the area of interest");
    if (!rc)
        rc = dm_out_commit(o, err);
    char qml[4200];
    snprintf(qml, sizeof qml, "%s/chm.qml", fi->outdir);
    static const dm_ramp_stop ramp[] = {
        { 0, "#f7fcf5", "0 m" },   { 5, "#c7e9c0", "5 m" },   { 10, "#a1d99b", "10 m" },
        { 20, "#41ab5d", "20 m" }, { 30, "#006d2c", "30 m" }, { 40, "#00441b", "40 m" },
    };
    if (!rc)
        rc = dm_gis_write_qml(qml, ramp, 6, err);
    if (!rc) {
        size_t n = strlen(fi->outputs);
        snprintf(fi->outputs + n, sizeof fi->outputs - n, "%s%s chm.qml", n ? " " : "",
                 dm_out_files(o));
    }
    dm_out_free(o);
    free(meta), free(ce), free(re), free(acc), free(buf), free(out);
    return rc;
}

const dm_recipe dm_recipe_chm = {
    "chm", c_prepare, c_free, c_job_alloc, c_job_free, c_infer,
    c_chunk_begin, c_write, c_chunk_end, c_finalize,
};

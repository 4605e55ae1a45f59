/* src/features_run.c — `dinomap features` end to end. Order of work: check everything that can be
 * checked (weights, inputs, options, OUTDIR) before writing anything; then the tile index; then
 * the pipeline (reader thread: mosaic windows → normalized tiles; this thread: the backbone in
 * batches; writer thread: chunks of tiles → chunk GeoTIFFs, index updates, PCA sample); then the
 * PCA fit and the final COGs from the chunks; then run.json. */
#include "features_run.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../gis/aoi.h"
#include "../gis/raster_out.h"
#include "../gis/tileindex.h"
#include "../heads/heads.h"
#include "../models/model.h"
#include "../tiling/grid.h"
#include "../tiling/pipeline.h"
#include "cli.h"
#include "base/base.h"
#include "progress.h"

typedef struct tile_data {
    int r, c, chunk;
    dm_tile_state state;
    float valid_fraction;
    uint8_t *rgb, *valid;    /* [3,S,S], [S,S] */
    float *img;              /* [3,S,S] normalized */
    float *patches;          /* [tp*tp, D] core patch vectors */
    uint8_t *pvalid;         /* [tp*tp] patch valid (>= half of its pixels) */
    float *cls;              /* [D] */
} tile_data;

typedef struct run {
    const dm_features_opts *o;
    dm_model *m;
    dm_backend *be;
    dm_mosaic *mo;
    dm_aoi *aoi;
    dm_grid g;
    const dm_norm *nm;
    int D, S, N;             /* embed dim, model input side, tokens */
    int *order_r, *order_c, *order_k;
    double gt[6];            /* mosaic */
    /* inference */
    float *batch_img, *tokens, *raw;
    /* writer */
    dm_tileindex *ti;
    dm_pca *pca;
    float *chunk_buf;        /* [D, ch, cw] */
    dm_window chunk_win;
    int chunk_id, chunk_tiles_left;
    dm_tile_result *chunk_res;
    float *chunk_emb;        /* [chunk*chunk, 2, D] */
    int chunk_nres;
    char **chunk_files;
    int nchunk_files;
    int64_t counts[5];
    double model_seconds;
    dm_progress prog;
} run;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* --- pipeline stages ------------------------------------------------------------------- */

static int job_alloc(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    tile_data *t = calloc(1, sizeof *t);
    size_t S2 = (size_t)R->S * R->S, tp2 = (size_t)R->g.tp * R->g.tp;
    if (!t || !(t->rgb = malloc(3 * S2)) || !(t->valid = malloc(S2)) ||
        !(t->img = malloc(3 * S2 * sizeof(float))) ||
        !(t->patches = malloc(tp2 * R->D * sizeof(float))) || !(t->pvalid = malloc(tp2)) ||
        !(t->cls = malloc((size_t)R->D * sizeof(float)))) {
        if (t)
            free(t->rgb), free(t->valid), free(t->img), free(t->patches), free(t->pvalid);
        free(t);
        return dm_err_oom(err);
    }
    job->data = t;
    return 0;
}

static void job_release(void *ctx, dm_job *job)
{
    (void)ctx;
    tile_data *t = job->data;
    if (!t)
        return;
    free(t->rgb), free(t->valid), free(t->img), free(t->patches), free(t->pvalid), free(t->cls);
    free(t);
}

static void footprint(const run *R, dm_window p, double *minx, double *miny, double *maxx,
                      double *maxy)
{
    /* core patches → pixels (clipped to the mosaic) → CRS */
    double x0 = p.x * 16.0, y0 = p.y * 16.0;
    double x1 = fmin((p.x + p.w) * 16.0, R->g.W), y1 = fmin((p.y + p.h) * 16.0, R->g.H);
    double ax = R->gt[0] + x0 * R->gt[1], bx = R->gt[0] + x1 * R->gt[1];
    double ay = R->gt[3] + y0 * R->gt[5], by = R->gt[3] + y1 * R->gt[5];
    *minx = fmin(ax, bx), *maxx = fmax(ax, bx), *miny = fmin(ay, by), *maxy = fmax(ay, by);
}

static int stage_read(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    tile_data *t = job->data;
    int i = job->index;
    t->r = R->order_r[i], t->c = R->order_c[i], t->chunk = R->order_k[i];
    dm_window core = dm_grid_tile_patches(&R->g, t->r, t->c);
    if (R->aoi) {
        double a, b, c, d;
        footprint(R, core, &a, &b, &c, &d);
        if (!dm_aoi_touches(R->aoi, a, b, c, d)) {
            t->state = DM_TILE_OUTSIDE_AOI;
            t->valid_fraction = 0;
            job->skip = 1;
            return 0;
        }
    }
    dm_window in = dm_grid_tile_input(&R->g, t->r, t->c);
    int rc = dm_mosaic_read(R->mo, in.x, in.y, in.w, in.h, t->rgb, t->valid, err);
    if (rc)
        return rc;
    /* validity of the core's pixels and patches */
    int S = R->S, h0 = R->g.halo, tp = R->g.tp;
    int64_t nvalid = 0, npx = 0;
    memset(t->pvalid, 0, (size_t)tp * tp);
    for (int pr = 0; pr < core.h; pr++)
        for (int pc = 0; pc < core.w; pc++) {
            int cnt = 0, tot = 0;
            for (int y = 0; y < 16; y++) {
                int gy = (core.y + pr) * 16 + y; /* mosaic row */
                if (gy >= R->g.H)
                    break;
                for (int x = 0; x < 16; x++) {
                    int gx = (core.x + pc) * 16 + x;
                    if (gx >= R->g.W)
                        break;
                    tot++;
                    cnt += t->valid[(size_t)(h0 + pr * 16 + y) * S + h0 + pc * 16 + x];
                }
            }
            /* a patch is kept when at least half of its pixels inside the mosaic are valid */
            t->pvalid[pr * tp + pc] = tot > 0 && 2 * cnt >= tot;
            nvalid += cnt;
            npx += tot;
        }
    t->valid_fraction = npx ? (float)nvalid / (float)npx : 0;
    if (nvalid == 0) {
        t->state = DM_TILE_EMPTY;
        job->skip = 1;
        return 0;
    }
    /* normalize; invalid pixels become 0 in normalized space (the mean colour), like padding */
    size_t plane = (size_t)S * S;
    for (int ch = 0; ch < 3; ch++) {
        float mean = R->nm->mean[ch], sd = R->nm->std[ch];
        for (size_t p = 0; p < plane; p++)
            t->img[ch * plane + p] =
                t->valid[p] ? ((float)t->rgb[ch * plane + p] / 255.0f - mean) / sd : 0.0f;
    }
    t->state = DM_TILE_DONE;
    return 0;
}

static int stage_infer(void *ctx, dm_job **jobs, int n, dm_err *err)
{
    run *R = ctx;
    size_t px = 3 * (size_t)R->S * R->S;
    for (int i = 0; i < n; i++)
        memcpy(R->batch_img + i * px, ((tile_data *)jobs[i]->data)->img, px * sizeof(float));
    int layer = R->o->layer;
    dm_vit_request req = { 0 };
    float *out[1] = { R->raw };
    if (layer >= 0) {
        req.n_layers = 1;
        req.layers = &layer;
        req.layer_out = out;
    } else {
        req.normed = R->tokens;
    }
    double t0 = now();
    int rc = dm_backend_forward(R->be, R->batch_img, n, R->S, R->S, &req, err);
    if (rc)
        return rc;
    if (layer >= 0)
        dm_model_norm_tokens(R->m, R->raw, R->tokens, (int64_t)n * R->N);
    R->model_seconds += now() - t0;
    int gs = R->S / 16, hp = R->g.halo / 16, tp = R->g.tp, pre = R->N - gs * gs, D = R->D;
    for (int i = 0; i < n; i++) {
        tile_data *t = jobs[i]->data;
        const float *tok = R->tokens + (size_t)i * R->N * D;
        memcpy(t->cls, tok, (size_t)D * sizeof(float));
        for (int pr = 0; pr < tp; pr++)
            memcpy(t->patches + (size_t)pr * tp * D,
                   tok + (size_t)(pre + (hp + pr) * gs + hp) * D, (size_t)tp * D * sizeof(float));
    }
    return 0;
}

static void unit(float *dst, const float *src, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)src[i] * src[i];
    float k = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int i = 0; i < n; i++)
        dst[i] = src[i] * k;
}

static int chunk_begin(run *R, int k)
{
    int r0, c0, r1, c1;
    dm_grid_chunk(&R->g, k, &r0, &c0, &r1, &c1, &R->chunk_win);
    R->chunk_id = k;
    R->chunk_tiles_left = (r1 - r0) * (c1 - c0);
    R->chunk_nres = 0;
    size_t n = (size_t)R->D * R->chunk_win.w * R->chunk_win.h;
    for (size_t i = 0; i < n; i++)
        R->chunk_buf[i] = NAN;
    return 0;
}

static int chunk_end(run *R, dm_err *err)
{
    int any = 0;
    for (int i = 0; i < R->chunk_nres; i++)
        any |= R->chunk_res[i].state == DM_TILE_DONE;
    char rel[64] = "", path[4096];
    if (any) {
        snprintf(rel, sizeof rel, "chunks/c%06d.tif", R->chunk_id);
        snprintf(path, sizeof path, "%s/%s", R->o->outdir, rel);
        double gt[6] = { R->gt[0] + R->chunk_win.x * 16.0 * R->gt[1], R->gt[1] * 16, 0,
                         R->gt[3] + R->chunk_win.y * 16.0 * R->gt[5], 0, R->gt[5] * 16 };
        int rc = dm_gis_write_chunk_f32(path, R->chunk_buf, R->D, R->chunk_win.w, R->chunk_win.h,
                                        gt, dm_mosaic_wkt(R->mo), err);
        if (rc)
            return rc;
        char *dup = strdup(path);
        if (!dup)
            return dm_err_oom(err);
        R->chunk_files[R->nchunk_files++] = dup;
    }
    /* the index learns of the chunk only once its file is in place */
    return dm_tileindex_chunk_done(R->ti, R->chunk_id, rel, R->chunk_res, R->chunk_nres, err);
}

static int stage_write(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    tile_data *t = job->data;
    int rc;
    if (R->chunk_tiles_left == 0)
        chunk_begin(R, t->chunk);
    dm_window core = dm_grid_tile_patches(&R->g, t->r, t->c);
    int D = R->D, tp = R->g.tp, cw = R->chunk_win.w, chh = R->chunk_win.h;
    dm_tile_result *res = &R->chunk_res[R->chunk_nres];
    float *emb = R->chunk_emb + (size_t)R->chunk_nres * 2 * D;
    *res = (dm_tile_result){ (int64_t)t->r * R->g.ncols + t->c, t->state, t->valid_fraction,
                             NULL, NULL };
    if (t->state == DM_TILE_DONE) {
        double *mean = calloc((size_t)D, sizeof *mean);
        if (!mean)
            return dm_err_oom(err);
        int nv = 0;
        for (int pr = 0; pr < core.h; pr++)
            for (int pc = 0; pc < core.w; pc++) {
                if (!t->pvalid[pr * tp + pc])
                    continue;
                const float *v = t->patches + (size_t)(pr * tp + pc) * D;
                int ox = core.x - R->chunk_win.x + pc, oy = core.y - R->chunk_win.y + pr;
                for (int d = 0; d < D; d++) {
                    R->chunk_buf[((size_t)d * chh + oy) * cw + ox] = v[d];
                    mean[d] += v[d];
                }
                if (R->pca)
                    dm_pca_offer(R->pca, v);
                nv++;
            }
        unit(emb, t->cls, D);
        for (int d = 0; d < D; d++)
            emb[D + d] = nv ? (float)(mean[d] / nv) : 0.0f;
        free(mean);
        unit(emb + D, emb + D, D);
        res->cls = emb;
        res->mean = emb + D;
    }
    R->counts[t->state]++;
    R->chunk_nres++;
    dm_progress_step(&R->prog, 1);
    if (--R->chunk_tiles_left == 0 && (rc = chunk_end(R, err)))
        return rc;
    return 0;
}

/* --- set-up, run, finish ---------------------------------------------------------------- */


static char *run_json(const run *R, const char *sha, double secs, const char *created)
{
    const dm_features_opts *o = R->o;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "tool", "dinomap");
    cJSON_AddStringToObject(j, "version", DINOMAP_VERSION);
    cJSON_AddStringToObject(j, "command", "features");
    cJSON_AddStringToObject(j, "created", created);
    cJSON *in = cJSON_AddArrayToObject(j, "inputs");
    for (int i = 0; i < o->mosaic.n_inputs; i++)
        cJSON_AddItemToArray(in, cJSON_CreateString(o->mosaic.inputs[i]));
    cJSON *m = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(m, "weights", o->weights);
    cJSON_AddStringToObject(m, "sha256", sha);
    cJSON_AddStringToObject(m, "arch", R->m->cfg.arch);
    cJSON_AddNumberToObject(m, "embed_dim", R->D);
    cJSON_AddNumberToObject(m, "depth", R->m->cfg.depth);
    cJSON_AddNumberToObject(m, "layer", o->layer >= 0 ? o->layer : R->m->cfg.depth - 1);
    cJSON *p = cJSON_AddObjectToObject(j, "params");
    cJSON *b = cJSON_AddArrayToObject(p, "bands");
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToArray(b, cJSON_CreateNumber(o->mosaic.bands[i]));
    cJSON_AddStringToObject(p, "normalization", R->nm->name);
    cJSON_AddStringToObject(p, "scaling", dm_mosaic_scaling(R->mo));
    cJSON_AddNumberToObject(p, "gsd", fabs(R->gt[1]));
    cJSON_AddNumberToObject(p, "tile", o->tile);
    cJSON_AddNumberToObject(p, "halo", o->halo);
    cJSON_AddNumberToObject(p, "chunk", o->chunk);
    cJSON_AddNumberToObject(p, "batch", o->batch);
    cJSON_AddNumberToObject(p, "threads", o->threads);
    cJSON_AddStringToObject(p, "device", o->device);
    cJSON_AddStringToObject(p, "quantize", o->quantize ? "int8" : "none");
    cJSON_AddBoolToObject(p, "pca", o->pca);
    if (o->aoi)
        cJSON_AddStringToObject(p, "aoi", o->aoi);
    cJSON *g = cJSON_AddObjectToObject(j, "grid");
    cJSON_AddNumberToObject(g, "width_px", R->g.W);
    cJSON_AddNumberToObject(g, "height_px", R->g.H);
    cJSON_AddNumberToObject(g, "features_width", R->g.fw);
    cJSON_AddNumberToObject(g, "features_height", R->g.fh);
    cJSON_AddNumberToObject(g, "tiles", dm_grid_ntiles(&R->g));
    cJSON_AddNumberToObject(g, "chunks", dm_grid_nchunks(&R->g));
    cJSON *t = cJSON_AddObjectToObject(j, "tiles");
    for (int s = DM_TILE_DONE; s <= DM_TILE_FAILED; s++)
        cJSON_AddNumberToObject(t, dm_tile_state_name((dm_tile_state)s), (double)R->counts[s]);
    cJSON *tm = cJSON_AddObjectToObject(j, "timings");
    int64_t ran = R->counts[DM_TILE_DONE];
    double area_km2 = (double)ran * R->o->tile * R->o->tile * fabs(R->gt[1] * R->gt[5]) / 1e6;
    cJSON_AddNumberToObject(tm, "seconds_total", secs);
    cJSON_AddNumberToObject(tm, "seconds_model", R->model_seconds);
    cJSON_AddNumberToObject(tm, "tiles_per_s", secs > 0 ? ran / secs : 0);
    cJSON_AddNumberToObject(tm, "km2_per_h", secs > 0 && dm_mosaic_georeferenced(R->mo)
                                                 ? area_km2 / secs * 3600 : 0);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}

typedef struct quant_ctx {
    const dm_pca *pca;
    const float *qinv; /* 1/scale per band */
    int D, quantize, want_pca;
} quant_ctx;

static void stage_note(const char *stage)
{
    dm_info("%s", stage);
}

static void pixel_fn(void *ctx, const float *v, uint8_t *q, uint8_t rgb[3])
{
    quant_ctx *c = ctx;
    if (c->quantize)
        for (int d = 0; d < c->D; d++) {
            float x = floorf(v[d] * c->qinv[d] + 0.5f) + 128.0f;
            q[d] = (uint8_t)(x < 1 ? 1 : x > 255 ? 255 : x); /* 0 is nodata */
        }
    if (c->want_pca)
        dm_pca_rgb(c->pca, v, rgb);
}

static void cleanup(run *R)
{
    dm_tileindex_close(R->ti, NULL);
    dm_pca_free(R->pca);
    for (int i = 0; i < R->nchunk_files; i++)
        free(R->chunk_files[i]);
    free(R->chunk_files), free(R->chunk_buf), free(R->chunk_res), free(R->chunk_emb);
    free(R->batch_img), free(R->tokens), free(R->raw);
    free(R->order_r), free(R->order_c), free(R->order_k);
    dm_aoi_free(R->aoi);
    dm_mosaic_close(R->mo);
    dm_backend_close(R->be);
    dm_model_free(R->m);
}

int dm_features_run(const dm_features_opts *o, dm_err *err)
{
    static const char *const products[] = { "tiles.gpkg", "features.tif", NULL };
    run R;
    memset(&R, 0, sizeof R);
    R.o = o;
    double t0 = now();
    int rc = 0;
    char sha[65] = "", created[32];
    time_t tt = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
    /* 1. everything that can be checked before anything is written */
    if (!(R.nm = dm_norm_get(o->norm)))
        return dm_err_set(err, DM_EINVAL, "--norm %s: unknown preset (sat, chm, lvd)", o->norm);
    dm_model_opts mo = { o->arch };
    dm_backend_opts bo = { o->threads };
    int made_dir = 0, wrote = 0;
    if ((rc = dm_model_open(o->weights, &mo, &R.m, err)) ||
        (rc = dm_backend_open(o->device, R.m, &bo, &R.be, err)) ||
        (rc = dm_mosaic_open(&o->mosaic, &R.mo, err)))
        goto out;
    /* OUTDIR is made once the inputs and the model check out, before the options that need both */
    if (o->layer >= R.m->cfg.depth) {
        rc = dm_err_set(err, DM_EINVAL, "--layer %d: the model has blocks 0..%d", o->layer,
                        R.m->cfg.depth - 1);
        goto out;
    }
    int W, H;
    dm_mosaic_size(R.mo, &W, &H);
    dm_mosaic_geotransform(R.mo, R.gt);
    if ((rc = dm_grid_init(&R.g, W, H, o->tile, o->halo, o->chunk, err)))
        goto out;
    if (o->aoi && (rc = dm_aoi_open(o->aoi, dm_mosaic_wkt(R.mo), &R.aoi, err)))
        goto out;
    if ((rc = dm_prepare_outdir(o->outdir, products, &made_dir, err)))
        goto out;
    const char *notes = dm_mosaic_notes(R.mo);
    if (notes[0])
        fprintf(stderr, "dinomap: %s", notes);
    if (!dm_mosaic_georeferenced(R.mo))
        dm_warn("the input has no georeferencing: outputs are in pixel coordinates");
    double gsd = fabs(R.gt[1]);
    if (dm_mosaic_georeferenced(R.mo) && (gsd < 0.2 || gsd > 2.0))
        dm_info("pixel size %.3g: the SAT-493M models saw 0.6 m imagery; features at very "
                "different scales are less meaningful (--gsd warps)", gsd);
    if ((rc = dm_sha256_file_cached(o->weights, sha, err)) && rc != DM_EIO)
        goto out;
    rc = 0; /* a directory of shards has no single hash: leave it empty */
    R.D = R.m->cfg.embed_dim;
    R.S = o->tile + 2 * o->halo;
    R.N = dm_model_tokens(R.m, R.S, R.S);
    int nt = dm_grid_ntiles(&R.g), nch = dm_grid_nchunks(&R.g);
    size_t chunk_px = (size_t)o->chunk * R.g.tp * o->chunk * R.g.tp;
    R.order_r = malloc(sizeof(int) * nt), R.order_c = malloc(sizeof(int) * nt);
    R.order_k = malloc(sizeof(int) * nt);
    R.batch_img = malloc(sizeof(float) * 3 * (size_t)R.S * R.S * o->batch);
    R.tokens = malloc(sizeof(float) * (size_t)R.N * R.D * o->batch);
    R.raw = o->layer >= 0 ? malloc(sizeof(float) * (size_t)R.N * R.D * o->batch) : NULL;
    R.chunk_buf = malloc(sizeof(float) * chunk_px * R.D);
    R.chunk_res = calloc((size_t)o->chunk * o->chunk, sizeof *R.chunk_res);
    R.chunk_emb = malloc(sizeof(float) * 2 * R.D * o->chunk * o->chunk);
    R.chunk_files = calloc((size_t)nch + 1, sizeof *R.chunk_files);
    if (!R.order_r || !R.order_c || !R.order_k || !R.batch_img || !R.tokens ||
        (o->layer >= 0 && !R.raw) || !R.chunk_buf || !R.chunk_res || !R.chunk_emb ||
        !R.chunk_files) {
        rc = dm_err_oom(err);
        goto out;
    }
    dm_grid_order(&R.g, R.order_r, R.order_c, R.order_k);
    if ((o->pca || o->quantize) &&
        (rc = dm_pca_create(R.D, 4096, 0x5eed, &R.pca, err)))
        goto out;
    dm_info("%s: %s (D=%d), %d×%d px mosaic → %d×%d features, %d tiles of %d px (+%d px halo) in "
            "%d chunks, %s",
            o->weights, R.m->cfg.arch, R.D, W, H, R.g.fw, R.g.fh, nt, o->tile, o->halo, nch,
            dm_mosaic_scaling(R.mo));
    /* 2. the run's files */
    char path[4096];
    wrote = 1;
    snprintf(path, sizeof path, "%s/chunks", o->outdir);
    if (dm_mkdir_p(path) != 0) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    {
        dm_tile_rec *recs = malloc(sizeof *recs * nt);
        dm_tile_state *st = malloc(sizeof *st * nt);
        char *params = run_json(&R, sha, 0, created);
        if (!recs || !st || !params)
            rc = dm_err_oom(err);
        for (int i = 0; !rc && i < nt; i++) {
            dm_window p = dm_grid_tile_patches(&R.g, R.order_r[i], R.order_c[i]);
            dm_tile_rec *t = &recs[i];
            t->row = R.order_r[i], t->col = R.order_c[i], t->chunk = R.order_k[i];
            t->id = (int64_t)t->row * R.g.ncols + t->col;
            t->px0 = p.x * 16, t->py0 = p.y * 16;
            t->pw = (p.x + p.w) * 16 > W ? W - t->px0 : p.w * 16;
            t->ph = (p.y + p.h) * 16 > H ? H - t->py0 : p.h * 16;
            footprint(&R, p, &t->minx, &t->miny, &t->maxx, &t->maxy);
            st[i] = R.aoi && !dm_aoi_touches(R.aoi, t->minx, t->miny, t->maxx, t->maxy)
                        ? DM_TILE_OUTSIDE_AOI : DM_TILE_PENDING;
        }
        snprintf(path, sizeof path, "%s/tiles.gpkg", o->outdir);
        if (!rc)
            rc = dm_tileindex_create(path, dm_mosaic_wkt(R.mo), params, R.D, &R.ti, err);
        if (!rc)
            rc = dm_tileindex_add_tiles(R.ti, recs, st, nt, err);
        free(recs), free(st), free(params);
        if (rc)
            goto out;
    }
    /* 3. the pipeline */
    dm_progress_start(&R.prog, o->progress, nt, "tiles");
    dm_pipeline_fns fns = { &R, job_alloc, job_release, stage_read, stage_infer, stage_write };
    rc = dm_pipeline_run(&fns, nt, o->batch, 2, err);
    dm_progress_end(&R.prog);
    if (rc)
        goto out;
    /* 4. PCA, quantisation scales, final rasters */
    float *qinv = NULL, *qscale = NULL;
    if (R.pca && dm_pca_seen(R.pca) >= 2) {
        if ((rc = dm_pca_fit(R.pca, err)))
            goto out;
    }
    quant_ctx qc = { R.pca, NULL, R.D, o->quantize, o->pca && R.pca && dm_pca_seen(R.pca) >= 2 };
    if (o->quantize) {
        qinv = malloc(sizeof(float) * R.D);
        qscale = malloc(sizeof(float) * R.D);
        if (!qinv || !qscale) {
            free(qinv), free(qscale);
            rc = dm_err_oom(err);
            goto out;
        }
        for (int d = 0; d < R.D; d++) {
            float mx = R.pca && dm_pca_seen(R.pca) >= 2 ? dm_pca_absmax(R.pca, d) : 1.0f;
            qscale[d] = (mx > 0 ? mx : 1.0f) / 127.0f;
            qinv[d] = 1.0f / qscale[d];
        }
        qc.qinv = qinv;
    }
    char meta[16][512];
    int nm = 0;
    const char *mp[17];
    snprintf(meta[nm++], 512, "DINOMAP_VERSION=%s", DINOMAP_VERSION);
    snprintf(meta[nm++], 512, "DINOMAP_PRODUCT=features");
    snprintf(meta[nm++], 512, "DINOMAP_MODEL=%s (D=%d, %d blocks)", R.m->cfg.arch, R.D,
             R.m->cfg.depth);
    snprintf(meta[nm++], 512, "DINOMAP_WEIGHTS=%s", o->weights);
    snprintf(meta[nm++], 512, "DINOMAP_WEIGHTS_SHA256=%s", sha);
    if (o->layer >= 0)
        snprintf(meta[nm++], 512, "DINOMAP_LAYER=%d (output of block %d through the final norm)",
                 o->layer, o->layer);
    else
        snprintf(meta[nm++], 512, "DINOMAP_LAYER=%d (last block, normed: x_norm_patchtokens)",
                 R.m->cfg.depth - 1);
    snprintf(meta[nm++], 512, "DINOMAP_NORMALIZATION=%s mean=%.3f,%.3f,%.3f std=%.3f,%.3f,%.3f",
             R.nm->name, R.nm->mean[0], R.nm->mean[1], R.nm->mean[2], R.nm->std[0], R.nm->std[1],
             R.nm->std[2]);
    snprintf(meta[nm++], 512, "DINOMAP_INPUT_SCALING=%s", dm_mosaic_scaling(R.mo));
    snprintf(meta[nm++], 512, "DINOMAP_GSD=%.17g", gsd);
    snprintf(meta[nm++], 512, "DINOMAP_TILE=%d", o->tile);
    snprintf(meta[nm++], 512, "DINOMAP_HALO=%d", o->halo);
    snprintf(meta[nm++], 512,
             "DINOMAP_OVERVIEW_RESAMPLING=AVERAGE (mean embedding of the patches)");
    snprintf(meta[nm++], 512, "DINOMAP_CREATED=%s", created);
    if (o->quantize)
        snprintf(meta[nm++], 512, "DINOMAP_QUANTIZATION=uint8 q per band: value = (q - 128) * "
                 "scale_b (the band's GDAL scale; offset = -128 * scale_b); q = 0 is nodata");
    if (qc.want_pca)
        snprintf(meta[nm++], 512, "DINOMAP_PCA=3 components fitted on %lld sampled patches of the "
                 "whole run, explaining %.1f%% of the variance; 2-98%% ranges mapped to 1..255",
                 (long long)(dm_pca_seen(R.pca) < 4096 ? dm_pca_seen(R.pca) : 4096),
                 100 * dm_pca_explained(R.pca));
    for (int i = 0; i < nm; i++)
        mp[i] = meta[i];
    mp[nm] = NULL;
    if (o->pca && !qc.want_pca)
        dm_warn("fewer than 2 valid patches: no PCA preview");
    double fgt[6] = { R.gt[0], R.gt[1] * 16, 0, R.gt[3], 0, R.gt[5] * 16 };
    dm_features_final fin = { o->outdir, (const char *const *)R.chunk_files, R.nchunk_files,
                              R.D, R.g.fw, R.g.fh, { 0 }, dm_mosaic_wkt(R.mo), mp, o->quantize,
                              qscale, qc.want_pca, pixel_fn, &qc,
                              o->progress != DM_PROGRESS_NONE ? stage_note : NULL };
    memcpy(fin.gt, fgt, sizeof fgt);
    rc = dm_gis_features_finalize(&fin, err);
    free(qinv), free(qscale);
    if (rc)
        goto out;
    /* 5. run.json, then the chunks go (the COG holds everything) unless kept */
    double secs = now() - t0;
    char *js = run_json(&R, sha, secs, created);
    snprintf(path, sizeof path, "%s/run.json", o->outdir);
    FILE *f = js ? fopen(path, "w") : NULL;
    if (!f || fputs(js, f) < 0 || fputc('\n', f) == EOF) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot write: %s", path, strerror(errno));
    }
    if (f && fclose(f) != 0 && !rc)
        rc = dm_err_set(err, DM_EIO, "%s: cannot write: %s", path, strerror(errno));
    free(js);
    if (!rc && !o->keep_chunks) {
        for (int i = 0; i < R.nchunk_files; i++)
            unlink(R.chunk_files[i]);
        snprintf(path, sizeof path, "%s/chunks", o->outdir);
        rmdir(path);
    }
    if (!rc)
        dm_info("%lld tiles mapped, %lld empty, %lld outside the AOI in %.1f s (model %.1f s): "
                "%s/features.tif", (long long)R.counts[DM_TILE_DONE],
                (long long)R.counts[DM_TILE_EMPTY], (long long)R.counts[DM_TILE_OUTSIDE_AOI],
                secs, R.model_seconds, o->outdir);
out:
    cleanup(&R);
    if (rc && made_dir && !wrote)
        rmdir(o->outdir);
    return rc;
}

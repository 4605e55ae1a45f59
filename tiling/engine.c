/* tiling/engine.c — dm_run (see tiling.h). Order of work:
 *   1. the folder: lock it (DM_ELOCKED at once if another run holds it), --overwrite, leftovers;
 *   2. everything that can be checked before writing: model, head, inputs, AOI, the recipes, the
 *      configuration (compared with the folder's when resuming: DM_EMISMATCH names what differs);
 *   3. the plan: a new index, or the folder's, with the chunks whose inputs changed reset;
 *   4. the pipeline over the windows of the chunks to do (reader thread: mosaic → normalized
 *      windows; this thread: the backbone in batches and each recipe's compute; writer thread:
 *      each recipe's chunk file, renamed into place, then the chunk's index transaction);
 *   5. finalize (finalize.c) once every chunk is done. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* finalize.c */
int dm_fin_run(const dm_run_opts *o, dm_tileindex *ti, const cJSON *cfg, const cJSON *res,
               const cJSON *outset, double t0, dm_run_result *r, dm_err *err);

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

const dm_product dm_products[] = {
    { DM_PRODUCT_FEATURES, &dm_recipe_features },
    { DM_PRODUCT_SIMILARITY, &dm_recipe_similarity },
    { DM_PRODUCT_CHM, &dm_recipe_chm },
    { DM_PRODUCT_SEG, &dm_recipe_seg }, /* from the features' chunks */
};
const int dm_nproducts = (int)(sizeof dm_products / sizeof dm_products[0]);
_Static_assert(sizeof dm_products / sizeof dm_products[0] <= DM_NPROD,
               "DM_NPROD (engine.h) is smaller than the product table");

unsigned dm_products_needed(unsigned p)
{
    return p & (DM_PRODUCT_SIMILARITY | DM_PRODUCT_SEG) ? p | DM_PRODUCT_FEATURES : p;
}

const dm_recipe *dm_recipe_of(unsigned p)
{
    for (int i = 0; i < dm_nproducts; i++)
        if (dm_products[i].bit == p)
            return dm_products[i].rec;
    return NULL;
}

unsigned dm_product_from_name(const char *name)
{
    for (int i = 0; i < dm_nproducts; i++)
        if (!strcmp(name, dm_products[i].rec->name))
            return dm_products[i].bit;
    return 0;
}

void dm_run_opts_init(dm_run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->mosaic.bands[0] = 1, o->mosaic.bands[1] = 2, o->mosaic.bands[2] = 3;
    o->tile = 512, o->halo = 64, o->chunk = 4, o->batch = 1, o->layer = -1, o->pca = 1;
    o->device = "cpu";
    o->max_cog_gib = 16;
}

void dm_chunk_rel(int chunk, const char *product, char *rel, size_t n)
{
    snprintf(rel, n, "chunks/c%06d.%s.tif", chunk, product);
}

void dm_chunk_path(const char *outdir, int chunk, const char *product, char *path, size_t n)
{
    char rel[64];
    dm_chunk_rel(chunk, product, rel, sizeof rel);
    snprintf(path, n, "%s/%s", outdir, rel);
}

int dm_eng_want_layer(dm_eng *e, int L, dm_err *err)
{
    for (int i = 0; i < e->nlayers; i++)
        if (e->layers[i] == L)
            return i;
    if (e->nlayers == DM_MAX_LAYERS)
        return dm_err_set(err, DM_EINVAL, "more than %d backbone layers asked for", DM_MAX_LAYERS);
    e->layers[e->nlayers] = L;
    return e->nlayers++;
}

/* The testing fault "POINT:N": SIGKILL the N-th time POINT is reached ("sigterm:N": SIGTERM
 * after the N-th tile, as a user's kill would send). */
static void fault(const char *spec, const char *point, int *count)
{
    if (!spec)
        return;
    size_t n = strlen(point);
    if (strncmp(spec, point, n) || spec[n] != ':')
        return;
    if (++*count == atoi(spec + n + 1))
        raise(strcmp(point, "sigterm") ? SIGKILL : SIGTERM);
}

/* --- the run's state ------------------------------------------------------------------------- */

typedef struct run {
    dm_eng e;
    const dm_run_opts *o;
    /* plan: the windows to run, in order */
    int nj, *jr, *jc, *jk;
    int *chunk_tiles;        /* [nchunks] windows of each chunk to run */
    /* inference */
    float *batch_img, *normed, *layer_buf[DM_MAX_LAYERS];
    double *mean_acc;        /* [D] a window's mean patch vector, summed */
    /* writer */
    int cur_chunk, left, nres, any_done;
    dm_tile_result *res;
    float *emb;              /* [chunk², 2, D] */
    int faults_tile, faults_commit, faults_term;
    dm_run_result *out;
    double t_chunk;
} run;

static void emit(const dm_run_events *ev, cJSON *j)
{
    if (ev->event) {
        char *s = cJSON_PrintUnformatted(j);
        if (s)
            ev->event(ev->ctx, s);
        free(s);
    }
    cJSON_Delete(j);
}

static cJSON *event(const char *type)
{
    cJSON *j = cJSON_CreateObject();
    char ts[32];
    time_t t = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    cJSON_AddStringToObject(j, "time", ts);
    cJSON_AddStringToObject(j, "event", type);
    return j;
}

/* --- pipeline stages ------------------------------------------------------------------------- */

static int job_alloc(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    dm_eng *e = &R->e;
    size_t S2 = (size_t)e->S * e->S, tp2 = (size_t)e->g.tp * e->g.tp;
    dm_wjob *j = calloc(1, sizeof *j);
    if (!j || !(j->rgb = malloc(3 * S2)) || !(j->valid = malloc(S2)) ||
        !(j->img = malloc(3 * S2 * sizeof(float))) || !(j->pvalid = malloc(tp2)) ||
        !(j->emb = malloc(2 * (size_t)e->D * sizeof(float)))) {
        if (j)
            free(j->rgb), free(j->valid), free(j->img), free(j->pvalid);
        free(j);
        return dm_err_oom(err);
    }
    job->data = j;
    for (int i = 0; i < e->nprod; i++) {
        int rc = e->rec[i]->job_alloc(e->self[i], &j->pd[i], err);
        if (rc)
            return rc; /* job_release frees what was made */
    }
    return 0;
}

static void job_release(void *ctx, dm_job *job)
{
    run *R = ctx;
    dm_wjob *j = job->data;
    if (!j)
        return;
    for (int i = 0; i < R->e.nprod; i++)
        if (j->pd[i])
            R->e.rec[i]->job_free(R->e.self[i], j->pd[i]);
    free(j->rgb), free(j->valid), free(j->img), free(j->pvalid), free(j->emb);
    free(j);
    job->data = NULL;
}

static int cancelled(const run *R, dm_err *err)
{
    if (R->o->cancel && *R->o->cancel)
        return dm_err_set(err, DM_EINTERRUPTED, "interrupted");
    return 0;
}

static int stage_read(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    dm_eng *e = &R->e;
    dm_wjob *j = job->data;
    int i = job->index, rc = cancelled(R, err);
    if (rc)
        return rc;
    j->r = R->jr[i], j->c = R->jc[i], j->chunk = R->jk[i];
    j->tile_id = (int64_t)j->r * e->g.ncols + j->c;
    j->win = dm_grid_window(&e->g, j->r, j->c);
    j->core = dm_grid_tile_core(&e->g, j->r, j->c);
    j->cpatch = dm_grid_tile_patches(&e->g, j->r, j->c);
    if ((rc = dm_mosaic_read(e->mo, j->win.x, j->win.y, e->S, e->S, j->rgb, j->valid, err)))
        return rc;
    /* normalize; invalid pixels become 0 in normalized space (the mean colour), like padding */
    int S = e->S, tp = e->g.tp, ox = j->core.x - j->win.x, oy = j->core.y - j->win.y;
    size_t plane = (size_t)S * S;
    for (int ch = 0; ch < 3; ch++) {
        float mean = e->nm->mean[ch], sd = e->nm->std[ch];
        for (size_t p = 0; p < plane; p++)
            j->img[ch * plane + p] =
                j->valid[p] ? ((float)j->rgb[ch * plane + p] / 255.0f - mean) / sd : 0.0f;
    }
    /* outside the AOI's polygons the outputs are nodata; the model still sees those pixels, so
     * what lies inside is what an unclipped run gives */
    if (e->aoi && !R->o->aoi_whole_tiles &&
        (rc = dm_aoi_mask(e->aoi, e->gt, j->win.x, j->win.y, S, S, j->valid, err)))
        return rc;
    /* validity of the core's pixels and patches: a patch is kept when at least half of its
     * 16×16 pixels are valid (pixels past the mosaic's edge count as invalid) */
    int64_t nvalid = 0, npx = 0;
    memset(j->pvalid, 0, (size_t)tp * tp);
    for (int pr = 0; pr < j->cpatch.h; pr++)
        for (int pc = 0; pc < j->cpatch.w; pc++) {
            int cnt = 0;
            for (int y = pr * 16; y < pr * 16 + 16; y++)
                for (int x = pc * 16; x < pc * 16 + 16; x++) {
                    int v = j->valid[(size_t)(oy + y) * S + ox + x];
                    cnt += v;
                    if (y < j->core.h && x < j->core.w)
                        nvalid += v, npx++;
                }
            j->pvalid[pr * tp + pc] = 2 * cnt >= 256;
        }
    j->valid_fraction = npx ? (float)nvalid / (float)npx : 0;
    if (nvalid == 0) {
        j->state = DM_TILE_EMPTY;
        job->skip = 1;
        return 0;
    }
    j->state = DM_TILE_DONE;
    return 0;
}

static void unit(float *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)v[i] * v[i];
    float k = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int i = 0; i < n; i++)
        v[i] *= k;
}

static int stage_infer(void *ctx, dm_job **jobs, int n, dm_err *err)
{
    run *R = ctx;
    dm_eng *e = &R->e;
    int rc = cancelled(R, err);
    if (rc)
        return rc;
    size_t px = 3 * (size_t)e->S * e->S, tok = (size_t)e->N * e->D;
    for (int i = 0; i < n; i++)
        memcpy(R->batch_img + i * px, ((dm_wjob *)jobs[i]->data)->img, px * sizeof(float));
    dm_vit_request req = { e->nlayers, e->layers, R->layer_buf, NULL, R->normed, 0 };
    double t0 = now();
    if ((rc = dm_backend_forward(e->be, R->batch_img, n, e->S, e->S, &req, err)))
        return rc;
    int gs = e->S / 16, D = e->D, tp = e->g.tp;
    for (int i = 0; i < n && !rc; i++) {
        dm_wjob *j = jobs[i]->data;
        dm_tokens t = { e->N, D, gs, gs, e->N - gs * gs, R->normed + i * tok, { 0 } };
        for (int l = 0; l < e->nlayers; l++)
            t.layer[l] = R->layer_buf[l] + i * tok;
        /* the tile's embedding: CLS and the mean of its valid core patches, last block normed */
        memcpy(j->emb, t.normed, (size_t)D * sizeof(float));
        float *mean = j->emb + D;
        double *acc = R->mean_acc;
        memset(acc, 0, (size_t)D * sizeof *acc);
        int nv = 0, ox = (j->cpatch.x * 16 - j->win.x) / 16,
            oy = (j->cpatch.y * 16 - j->win.y) / 16;
        for (int pr = 0; pr < j->cpatch.h; pr++)
            for (int pc = 0; pc < j->cpatch.w; pc++) {
                if (!j->pvalid[pr * tp + pc])
                    continue;
                const float *v = t.normed + (size_t)(t.npre + (oy + pr) * gs + ox + pc) * D;
                for (int d = 0; d < D; d++)
                    acc[d] += v[d];
                nv++;
            }
        for (int d = 0; d < D; d++)
            mean[d] = nv ? (float)(acc[d] / nv) : 0.0f;
        unit(j->emb, D);
        unit(mean, D);
        for (int p = 0; p < e->nprod && !rc; p++)
            rc = e->rec[p]->infer(e->self[p], j, j->pd[p], &t, err);
    }
    e->model_seconds += now() - t0;
    return rc;
}

static int chunk_commit(run *R, dm_err *err)
{
    dm_eng *e = &R->e;
    char files[512] = "", f[128];
    const dm_sample *smp = NULL;
    int ns = 0, sdim = 1, rc = 0;
    for (int p = 0; p < e->nprod && !rc; p++) {
        const dm_sample *s = NULL;
        int n = 0, d = 1;
        rc = e->rec[p]->chunk_end(e->self[p], R->cur_chunk, R->any_done, f, sizeof f, &s, &n, &d,
                                  err);
        if (!rc && f[0]) {
            size_t o = strlen(files);
            snprintf(files + o, sizeof files - o, "%s%s", o ? " " : "", f);
        } else if (!rc) { /* none this time: an earlier attempt's file must not linger */
            char path[4200];
            dm_chunk_path(e->outdir, R->cur_chunk, e->rec[p]->name, path, sizeof path);
            unlink(path);
        }
        if (s)
            smp = s, ns = n, sdim = d;
    }
    if (rc)
        return rc;
    /* the chunk's files are in place: now the index may say so */
    fault(R->o->fault, "commit", &R->faults_commit);
    rc = dm_tileindex_chunk_done(e->ti, R->cur_chunk, files[0] ? files : NULL, R->res, R->nres,
                                 smp, ns, sdim, err);
    if (rc)
        return rc;
    R->out->chunks_run++;
    cJSON *j = event("chunk");
    cJSON_AddNumberToObject(j, "chunk", R->cur_chunk);
    cJSON_AddNumberToObject(j, "tiles", R->nres);
    cJSON_AddNumberToObject(j, "seconds", now() - R->t_chunk);
    emit(&R->o->ev, j);
    R->t_chunk = now();
    return 0;
}

static int stage_write(void *ctx, dm_job *job, dm_err *err)
{
    run *R = ctx;
    dm_eng *e = &R->e;
    dm_wjob *j = job->data;
    int rc = cancelled(R, err), D = e->D; /* a stop asked for: no further tile is recorded */
    if (rc)
        return rc;
    if (R->left == 0) {
        R->cur_chunk = j->chunk;
        R->left = R->chunk_tiles[j->chunk];
        R->nres = 0;
        R->any_done = 0;
        for (int p = 0; p < e->nprod && !rc; p++)
            rc = e->rec[p]->chunk_begin(e->self[p], j->chunk, err);
        if (rc)
            return rc;
    }
    for (int p = 0; p < e->nprod && !rc; p++)
        rc = e->rec[p]->write(e->self[p], j, j->pd[p], err);
    if (rc)
        return rc;
    float *emb = R->emb + (size_t)R->nres * 2 * D;
    dm_tile_result *t = &R->res[R->nres++];
    *t = (dm_tile_result){ j->tile_id, j->state, j->valid_fraction, NULL, NULL };
    if (j->state == DM_TILE_DONE) {
        memcpy(emb, j->emb, 2 * (size_t)D * sizeof(float));
        t->cls = emb, t->mean = emb + D;
        R->any_done = 1;
        R->out->tiles_run++;
    } else {
        R->out->tiles_empty++;
    }
    fault(R->o->fault, "tile", &R->faults_tile);
    fault(R->o->fault, "sigterm", &R->faults_term);
    if (R->o->ev.progress)
        R->o->ev.progress(R->o->ev.ctx, "tiles", R->out->tiles_run + R->out->tiles_empty, R->nj);
    if (--R->left == 0)
        rc = chunk_commit(R, err);
    return rc;
}

/* --- set-up ---------------------------------------------------------------------------------- */

/* The footprint of a tile's core in the run's CRS. */
static void footprint(const dm_eng *e, int r, int c, dm_tile_rec *t)
{
    dm_window k = dm_grid_tile_core(&e->g, r, c);
    double ax = e->gt[0] + k.x * e->gt[1], bx = e->gt[0] + (k.x + k.w) * e->gt[1];
    double ay = e->gt[3] + k.y * e->gt[5], by = e->gt[3] + (k.y + k.h) * e->gt[5];
    t->minx = fmin(ax, bx), t->maxx = fmax(ax, bx), t->miny = fmin(ay, by), t->maxy = fmax(ay, by);
    t->px0 = k.x, t->py0 = k.y, t->pw = k.w, t->ph = k.h;
}

static void free_run(run *R)
{
    dm_eng *e = &R->e;
    for (int i = 0; i < e->nprod; i++)
        if (e->self[i])
            e->rec[i]->free(e->self[i]);
    dm_tileindex_close(e->ti, NULL);
    cJSON_Delete(e->cfg);
    cJSON_Delete(e->res);
    cJSON_Delete(e->outset);
    free(R->jr), free(R->jc), free(R->jk), free(R->chunk_tiles);
    free(R->batch_img), free(R->normed), free(R->res), free(R->emb), free(R->mean_acc);
    for (int i = 0; i < DM_MAX_LAYERS; i++)
        free(R->layer_buf[i]);
    dm_aoi_free(e->aoi);
    dm_mosaic_close(e->mo);
    dm_backend_close(e->be);
    dm_model_free(e->m);
}

int dm_run_check(const dm_run_opts *o, dm_err *err)
{
    if (!o->products || (o->products & ~DM_PRODUCT_ALL))
        return dm_err_set(err, DM_EINVAL, "no product to make (features, chm, similarity)");
    if (!o->weights)
        return dm_err_set(err, DM_EINVAL, "no weights (--model)");
    if (!o->outdir || !o->outdir[0])
        return dm_err_set(err, DM_EINVAL, "no output folder (--output)");
    if (o->mosaic.n_inputs < 1)
        return dm_err_set(err, DM_EINVAL, "no input raster");
    if (o->batch < 1 || o->batch > 256)
        return dm_err_set(err, DM_EINVAL, "--batch %d: expected 1..256", o->batch);
    if (o->head && !(o->products & DM_PRODUCT_CHM))
        return dm_err_set(err, DM_EINVAL, "--head is for the chm product");
    const dm_sim_query *q = &o->query;
    if (o->products & DM_PRODUCT_SIMILARITY) {
        if (dm_sim_query_check(q, err))
            return DM_EINVAL;
    } else if (q->at_set || q->aoi || q->srs) {
        return dm_err_set(err, DM_EINVAL, "%s: a query is for the similarity product (products "
                          "= features, similarity, or dinomap similarity)",
                          q->at_set ? "--at" : q->aoi ? "--query-aoi" : "--srs");
    }
    if ((o->seg_head || o->seg_k || o->seg_probabilities) && !(o->products & DM_PRODUCT_SEG))
        return dm_err_set(err, DM_EINVAL, "seg-head, clusters and probabilities are for the seg "
                          "product (products = seg)");
    if ((o->products & DM_PRODUCT_SEG) && !o->seg_head == !o->seg_k)
        return dm_err_set(err, DM_EINVAL, "seg: %s", o->seg_head ? "a head to apply or clusters "
                          "to fit, not both" : "no head to apply (dinomap seg apply --head "
                          "HEAD.dmseg; seg-head in a config file) and no clusters to fit "
                          "(dinomap seg cluster -k K; clusters in a config file)");
    if ((o->products & DM_PRODUCT_SEG) && o->seg_k && (o->seg_k < 2 || o->seg_k > 254))
        return dm_err_set(err, DM_EINVAL, "-k %d: expected 2..254 clusters (class ids 1..K; 255 "
                          "is nodata)", o->seg_k);
    if (o->mosaic.crs && dm_gis_crs_check(o->mosaic.crs, err))
        return DM_EINVAL;
    if (o->out.format == DM_OF_ZARR && !(o->products & (DM_PRODUCT_FEATURES | DM_PRODUCT_SEG)))
        return dm_err_set(err, DM_EINVAL, "-of Zarr: only the features have a Zarr output; the "
                          "canopy height map is a COG (leave -of out)");
    return dm_out_format_check(&o->out, err);
}

int dm_run(const dm_run_opts *o, dm_run_result *res, dm_err *err)
{
    dm_run_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    int rc = dm_run_check(o, err);
    if (rc)
        return rc;
    /* a product derived from another's chunks brings that product along; seg: the head's
     * layer and normalization */
    dm_run_opts with = *o;
    with.products = dm_products_needed(o->products);
    char seg_norm[32];
    if ((with.products & DM_PRODUCT_SEG) &&
        (rc = dm_seg_run_opts(&with, seg_norm, sizeof seg_norm, err)))
        return rc;
    o = &with;
    double t0 = now();
    run R;
    memset(&R, 0, sizeof R);
    R.o = o;
    R.out = res;
    dm_eng *e = &R.e;
    e->o = o;
    snprintf(e->outdir, sizeof e->outdir, "%s", o->outdir);
    /* 1. the folder */
    struct stat st;
    int made = 0, fresh = 0, created_index = 0;
    if (stat(o->outdir, &st) != 0) {
        if (dm_mkdir_p(o->outdir) != 0)
            return dm_err_set(err, DM_EIO, "%s: cannot create the output folder: %s", o->outdir,
                              strerror(errno));
        made = 1;
    } else if (!S_ISDIR(st.st_mode)) {
        return dm_err_set(err, DM_EIO, "%s: exists and is not a folder", o->outdir);
    } else if (access(o->outdir, W_OK | X_OK) != 0) {
        return dm_err_set(err, DM_EIO, "%s: not writable: %s", o->outdir, strerror(errno));
    }
    dm_lock *lock = NULL;
    cJSON *old_cfg = NULL, *old_res = NULL, *old_shard = NULL;
    uint8_t *own = NULL; /* a shard: [nchunks] the chunks it maps */
    char index[4200], p[4200];
    snprintf(index, sizeof index, "%s/tiles.gpkg", o->outdir);
    snprintf(p, sizeof p, "%s/%s", o->outdir, DM_LOCK_FILE);
    int lock_existed = dm_exists(p);
    if ((rc = dm_lock_dir(o->outdir, &lock, err)))
        goto out;
    if (o->overwrite) {
        /* the folder's run goes only once everything below checked out (step 3) */
    } else if (dm_exists(index)) {
        if ((rc = dm_folder_read(index, &old_cfg, &old_res, &old_shard, err)) ||
            (rc = dm_shard_same(o->outdir, old_shard, &o->shard, err)))
            goto out;
    } else if (dm_folder_holds_outputs(o->outdir)) {
        rc = dm_err_set(err, DM_EINVAL, "%s holds the outputs of a run but no tile index "
                        "(tiles.gpkg); choose another OUTDIR, or --overwrite", o->outdir);
        goto out;
    }
    fresh = old_cfg == NULL;
    /* 2. everything that can be checked before anything is written */
    const char *norm = o->norm ? o->norm : (o->products & DM_PRODUCT_CHM) ? "chm" : "sat";
    if (!(e->nm = dm_norm_get(norm))) {
        rc = dm_err_set(err, DM_EINVAL, "--norm %s: unknown preset (sat, chm, lvd)", norm);
        goto out;
    }
    dm_model_opts mo = { o->arch };
    /* the GEMMs' slicing decides the bits, not the thread count: a resumed run keeps its first's */
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    const cJSON *gp = old_res ? cJSON_GetObjectItemCaseSensitive(old_res, "gemm_parts") : NULL;
    e->gemm_parts = cJSON_IsNumber(gp) && gp->valueint > 0 ? gp->valueint : threads;
    dm_backend_opts bo = { threads, e->gemm_parts, DM_PREC_FP32 };
    char why[400];
    /* "auto" is settled first: the device kind is part of the configuration */
    if ((rc = dm_device_pick(o->device, e->device, sizeof e->device, why, sizeof why, err)))
        goto out;
    if (why[0])
        dm_info("%s", why);
    if ((rc = dm_precision_resolve_on(e->device, o->precision, &bo.precision, why, sizeof why,
                                      err)))
        goto out;
    e->precision = bo.precision;
    if (why[0])
        dm_info("%s", why);
    if ((rc = dm_model_open(o->weights, &mo, &e->m, err)) ||
        (rc = dm_backend_open(e->device, e->m, &bo, &e->be, err)))
        goto out;
    if ((rc = dm_weights_sha(e->m->w, e->sha, err)))
        goto out;
    dm_mosaic_opts mopt = o->mosaic;
    const cJSON *sc = old_res ? cJSON_GetObjectItemCaseSensitive(old_res, "scaling") : NULL;
    const cJSON *slo = cJSON_GetObjectItemCaseSensitive(sc, "lo"),
                *shi = cJSON_GetObjectItemCaseSensitive(sc, "hi");
    if (sc && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sc, "scaled")) &&
        cJSON_IsNumber(slo) && cJSON_IsNumber(shi)) {
        /* the colours the folder's first invocation chose, whatever the inputs are now */
        mopt.fixed_set = 1;
        mopt.fixed_lo = slo->valuedouble;
        mopt.fixed_hi = shi->valuedouble;
        mopt.fixed_text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(sc, "text"));
    }
    if ((rc = dm_mosaic_open(&mopt, &e->mo, err)))
        goto out;
    int W, H;
    dm_mosaic_size(e->mo, &W, &H);
    dm_mosaic_geotransform(e->mo, e->gt);
    e->wkt = dm_mosaic_wkt(e->mo);
    char aoi_sha[65] = "";
    if (o->aoi && ((rc = dm_aoi_open(o->aoi, e->wkt, &e->aoi, err)) ||
                   (rc = dm_aoi_sha256(o->aoi, aoi_sha, err))))
        goto out;
    if (e->aoi && (rc = dm_plan_aoi_crop(e, o, old_res, &W, &H, err)))
        goto out;
    /* an output patch needs half of its 16×16 px valid: a smaller mosaic would map to nodata */
    if ((W < 16 ? W : 16) * (H < 16 ? H : 16) < 128) {
        char in[1024];
        dm_mosaic_inputs_label(&o->mosaic, in, sizeof in);
        rc = dm_err_set(err, DM_EINVAL, "%s: a %d×%d px mosaic is smaller than half of one "
                        "16×16-px model patch, so every output pixel would be nodata; map a "
                        "larger raster (at least 128 px of one patch)", in, W, H);
        goto out;
    }
    if ((rc = dm_grid_init(&e->g, W, H, o->tile, o->halo, o->chunk, err)))
        goto out;
    if ((int64_t)e->g.ncols * e->g.nrows > 4000000) {
        rc = dm_err_set(err, DM_EINVAL, "%d×%d px in tiles of %d px are %lld tiles; more than 4 "
                        "million is beyond what one run folder handles well: use a larger --tile, "
                        "or split the region", W, H, o->tile,
                        (long long)e->g.ncols * e->g.nrows);
        goto out;
    }
    e->D = e->m->cfg.embed_dim;
    e->S = e->g.S;
    e->N = dm_model_tokens(e->m, e->S, e->S);
    for (int i = 0; i < dm_nproducts; i++)
        if (o->products & dm_products[i].bit)
            e->rec[e->nprod++] = dm_products[i].rec;
    /* which tiles run (the AOI), and the PCA sampling rate from how many patches that is */
    int nt = dm_grid_ntiles(&e->g), nch = dm_grid_nchunks(&e->g);
    dm_tile_rec *recs = calloc((size_t)nt, sizeof *recs);
    dm_tile_state *tst = calloc((size_t)nt, sizeof *tst);
    R.jr = malloc(sizeof(int) * nt), R.jc = malloc(sizeof(int) * nt);
    R.jk = malloc(sizeof(int) * nt);
    R.chunk_tiles = calloc((size_t)nch, sizeof(int));
    if (!recs || !tst || !R.jr || !R.jc || !R.jk || !R.chunk_tiles) {
        free(recs), free(tst);
        rc = dm_err_oom(err);
        goto out;
    }
    dm_grid_order(&e->g, R.jr, R.jc, R.jk);
    int64_t active_patches = 0, active = 0;
    for (int i = 0; i < nt; i++) {
        dm_tile_rec *t = &recs[i];
        t->row = R.jr[i], t->col = R.jc[i], t->chunk = R.jk[i];
        t->id = (int64_t)t->row * e->g.ncols + t->col;
        footprint(e, t->row, t->col, t);
        tst[i] = e->aoi && !dm_aoi_touches(e->aoi, t->minx, t->miny, t->maxx, t->maxy)
                     ? DM_TILE_OUTSIDE_AOI : DM_TILE_PENDING;
        if (tst[i] == DM_TILE_PENDING) {
            dm_window pw = dm_grid_tile_patches(&e->g, t->row, t->col);
            active_patches += (int64_t)pw.w * pw.h;
            active++;
            R.chunk_tiles[t->chunk]++;
        }
    }
    if (!active) {
        free(recs), free(tst);
        rc = dm_err_set(err, DM_EINVAL, "the area of interest %s does not touch the mosaic "
                        "(%d×%d px): nothing to map; check the AOI's CRS and extent", o->aoi,
                        W, H);
        goto out;
    }
    e->sample_p = active_patches <= 2 * DM_PCA_SAMPLE ? 1.0
                                                       : 2.0 * DM_PCA_SAMPLE / active_patches;
    if ((rc = dm_config_build(e, o->aoi ? aoi_sha : NULL, err))) {
        free(recs), free(tst);
        goto out;
    }
    if (old_cfg) {
        char msg[900];
        /* runs recorded before the precision was part of the configuration ran in fp32 */
        if (!cJSON_GetObjectItemCaseSensitive(old_cfg, "precision"))
            cJSON_AddStringToObject(old_cfg, "precision", "fp32");
        if (dm_config_diff(e->cfg, old_cfg, msg, sizeof msg)) {
            free(recs), free(tst);
            rc = dm_err_set(err, DM_EMISMATCH, "%s holds a run with another configuration (%s). "
                            "Run with the folder's settings to resume it, choose another OUTDIR, "
                            "or pass --overwrite to start afresh", o->outdir, msg);
            goto out;
        }
    }
    const char *notes = dm_mosaic_notes(e->mo);
    for (const char *l = notes; fresh && *l;) { /* one message a line */
        const char *nl = strchr(l, '\n');
        int len = nl ? (int)(nl - l) : (int)strlen(l);
        if (len)
            dm_info("%.*s", len, l);
        l += len + (nl != NULL);
    }
    if (!dm_mosaic_georeferenced(e->mo) && fresh)
        dm_warn("the input has no georeferencing: outputs are in pixel coordinates");
    double gsd = fabs(e->gt[1]);
    if (fresh && dm_mosaic_georeferenced(e->mo)) {
        if ((o->products & DM_PRODUCT_CHM) && (gsd < 0.3 || gsd > 1.5))
            dm_info("pixel size %.3g m is outside 0.3-1.5 m: CHMv2 was trained on ~0.6 m imagery "
                    "and its heights are less reliable at other scales (--gsd 0.6 warps)", gsd);
        else if (!(o->products & DM_PRODUCT_CHM) && (gsd < 0.2 || gsd > 2.0))
            dm_info("pixel size %.3g: the SAT-493M models saw 0.6 m imagery; features at very "
                    "different scales are less meaningful (--gsd warps)", gsd);
    }
    /* 3. the plan */
    char *inv = dm_config_invocation(e), *order = dm_plan_input_order(o);
    dm_input_fp *fp = NULL, *ofp = NULL;
    int nfp = 0, nofp = 0;
    if (!inv)
        rc = dm_err_oom(err);
    if (!rc)
        rc = dm_mosaic_fingerprints(e->mo, &fp, &nfp, err);
    /* a shard: its chunks, as the folder's first invocation split them */
    char *shard_json = NULL;
    int64_t shard_tiles = 0;
    int shard_chunks = 0;
    if (!rc && o->shard.count)
        rc = dm_shard_plan(&R.e, &o->shard, old_shard, fp, nfp, R.jr, R.jc, tst, R.chunk_tiles, &own, &shard_json, &shard_chunks,
                        &shard_tiles, err);
    if (!rc && fresh) {
        /* made whole under a temporary name, then renamed: a kill leaves no half index */
        char part[4200];
        snprintf(part, sizeof part, "%s/.tiles.new.gpkg", o->outdir);
        dm_tileindex_unlink(part);
        char *cs = cJSON_PrintUnformatted(e->cfg), *rs = cJSON_PrintUnformatted(e->res), hash[65];
        if (!cs || !rs)
            rc = dm_err_oom(err);
        if (!rc)
            rc = dm_tileindex_create(part, e->wkt, inv, e->D, &e->ti, err);
        if (!rc) {
            dm_sha256_str(cs, hash);
            if (!(rc = dm_tileindex_config_set(e->ti, "config", cs, err)) &&
                !(rc = dm_tileindex_config_set(e->ti, "config_sha256", hash, err)) &&
                !(rc = dm_tileindex_config_set(e->ti, "resolved", rs, err)) &&
                !(rc = dm_tileindex_add_tiles(e->ti, recs, tst, nt, err)) &&
                !(rc = dm_tileindex_reset(e->ti, NULL, 0, fp, nfp, order ? order : "[]", err)) &&
                !(rc = shard_json ? dm_tileindex_config_set(e->ti, "shard", shard_json, err) : 0))
                /* chunks whose tiles are all outside the AOI: nothing to do, no files */
                rc = dm_tileindex_done_empty_chunks(e->ti, err);
        }
        free(cs), free(rs);
        if (e->ti) {
            int rc2 = dm_tileindex_close(e->ti, rc ? NULL : err);
            rc = rc ? rc : rc2;
            e->ti = NULL;
        }
        /* --overwrite: the folder's old run goes now, everything having checked out */
        if (!rc && o->overwrite)
            rc = dm_folder_remove_run(o->outdir, err);
        /* (a journal a killed run left beside the old index goes with it) */
        if (!rc)
            rc = dm_tileindex_place(part, index, err);
        if (!rc) {
            created_index = 1;
            rc = dm_tileindex_reopen(index, e->D, &e->ti, err);
        }
        if (rc)
            dm_tileindex_unlink(part);
    } else if (!rc) {
        rc = dm_tileindex_open(index, inv, e->D, &e->ti, err);
    }
    free(inv), free(recs);
    /* the output settings asked for now (the similarity query): `dinomap finalize` builds with
     * them; they are compared with those the outputs were built with, never with the run's */
    char *os = rc ? NULL : cJSON_PrintUnformatted(e->outset);
    if (!rc)
        rc = os ? dm_tileindex_config_set(e->ti, "output_settings", os, err) : dm_err_oom(err);
    free(os);
    uint8_t *cdone = NULL;
    char **cfiles = NULL;
    int ncd = 0;
    if (!rc)
        rc = dm_tileindex_chunks(e->ti, &cdone, &cfiles, &ncd, err);
    if (!rc && ncd != nch)
        rc = dm_err_set(err, DM_EFORMAT, "%s: has %d chunks, the grid %d; the index is damaged: "
                        "--overwrite", index, ncd, nch);
    /* inputs that changed, and chunks whose files are gone, are redone */
    int *reset = rc ? NULL : calloc((size_t)nch, sizeof *reset), nreset = 0;
    if (!rc && !reset)
        rc = dm_err_oom(err);
    if (!rc && !fresh) {
        dm_window *rects = NULL;
        int nr = 0, nfiles = 0;
        char first[600];
        char *dropped = NULL;
        rc = dm_tileindex_inputs(e->ti, &ofp, &nofp, err);
        if (!rc)
            rc = dm_plan_changed(ofp, nofp, fp, nfp, &rects, &nr, &nfiles, first, sizeof first,
                                 err);
        if (!rc)
            rc = dm_tileindex_config_get(e->ti, "chunks_dropped", &dropped, err);
        char *old_order = NULL;
        if (!rc)
            rc = dm_tileindex_config_get(e->ti, "input_order", &old_order, err);
        int moved = !rc && dm_plan_reordered(old_order, order);
        if (moved) { /* another input may now be on top anywhere two overlap: all of them */
            dm_window *r2 = realloc(rects, sizeof *r2 * (size_t)(nr + nfp + 1));
            if (!r2)
                rc = dm_err_oom(err);
            else
                rects = r2;
            for (int i = 0; !rc && i < nfp; i++)
                rects[nr++] = (dm_window){ fp[i].x0, fp[i].y0, fp[i].w, fp[i].h };
            if (!rc) {
                snprintf(first, sizeof first, "the order of the inputs (it decides which is on "
                         "top where they overlap)");
                nfiles = nfiles ? nfiles : 1;
            }
        }
        free(old_order);
        int was_dropped = dropped && !strcmp(dropped, "1");
        /* with the chunk files deleted, any change means recomputing everything */
        int redo_all = was_dropped && (nr > 0 || !dm_fin_uptodate(e->ti, o->outdir));
        if (redo_all)
            dm_info("the chunks were deleted after the last finalize (--drop-chunks): every "
                    "chunk is recomputed");
        for (int k = 0; !rc && k < nch; k++) {
            if (!cdone[k] || !R.chunk_tiles[k])
                continue;
            dm_window ex = dm_grid_chunk_extent(&e->g, k);
            int hit = redo_all;
            for (int i = 0; !hit && i < nr; i++)
                hit = dm_window_overlap(ex, rects[i]);
            for (const char *f = cfiles[k]; !hit && !was_dropped && f && *f;) {
                int len = (int)strcspn(f, " "); /* each recorded file must still be there */
                snprintf(p, sizeof p, "%s/%.*s", o->outdir, len, f);
                if (!dm_exists(p)) {
                    dm_warn("%s is missing: chunk %d is redone", p, k);
                    hit = 1;
                }
                f += len;
                f += *f == ' ';
            }
            if (hit)
                reset[nreset++] = k;
        }
        if (!rc && nr)
            dm_info("%d input file%s changed since the folder's run (%s%s): %d chunk%s to redo",
                    nfiles, nfiles == 1 ? "" : "s", nfiles > 1 ? "e.g. " : "", first, nreset,
                    nreset == 1 ? "" : "s");
        if (!rc && (nreset || nr || moved))
            rc = dm_tileindex_reset(e->ti, reset, nreset, fp, nfp, order ? order : "[]", err);
        if (!rc && redo_all)
            rc = dm_tileindex_config_set(e->ti, "chunks_dropped", "0", err);
        for (int i = 0; i < nreset; i++)
            cdone[reset[i]] = 0;
        res->chunks_reset = nreset;
        free(rects), free(dropped);
    }
    dm_input_fp_free(fp, nfp);
    dm_input_fp_free(ofp, nofp);
    free(reset), free(order);
    /* the windows to run: the chunks not done */
    R.nj = 0;
    int ntodo = 0;
    for (int i = 0; !rc && i < nt; i++) {
        int k = R.jk[i];
        if (cdone[k] || tst[i] == DM_TILE_OUTSIDE_AOI || (own && !own[k]))
            continue;
        R.jr[R.nj] = R.jr[i], R.jc[R.nj] = R.jc[i], R.jk[R.nj] = k;
        R.nj++;
    }
    for (int k = 0; !rc && k < nch; k++)
        ntodo += !cdone[k] && R.chunk_tiles[k] > 0 && (!own || own[k]);
    free(shard_json);
    res->chunks_total = nch;
    res->tiles_total = nt;
    dm_tileindex_chunks_free(cdone, cfiles, ncd);
    free(tst);
    if (rc)
        goto out;
    {
        cJSON *j = event("start");
        cJSON_AddStringToObject(j, "outdir", o->outdir);
        cJSON_AddBoolToObject(j, "resumed", !fresh);
        cJSON_AddNumberToObject(j, "chunks_to_do", ntodo);
        cJSON_AddNumberToObject(j, "tiles_to_do", R.nj);
        cJSON_AddNumberToObject(j, "chunks", nch);
        if (o->shard.count) {
            cJSON_AddNumberToObject(j, "shard", o->shard.index + 1);
            cJSON_AddNumberToObject(j, "shard_count", o->shard.count);
            cJSON_AddStringToObject(j, "shard_source", o->shard.source);
            cJSON_AddNumberToObject(j, "shard_chunks", shard_chunks);
        }
        emit(&o->ev, j);
    }
    if (o->shard.count && fresh)
        dm_info("shard %d/%d (%s): %d of %d chunks, %lld tiles to run", o->shard.index + 1,
                o->shard.count, o->shard.source, shard_chunks, nch, (long long)shard_tiles);
    if (R.nj)
        dm_info("%s: %s (D=%d), %d×%d px mosaic, %d of %d tiles to run (%d px + %d px halo, window "
                "%d px) in %d chunk%s%s, %s", o->weights, e->m->cfg.arch, e->D, W, H, R.nj, nt,
                o->tile, o->halo, e->S, ntodo, ntodo == 1 ? "" : "s",
                fresh ? "" : " (resuming the folder's run)", dm_mosaic_scaling(e->mo));
    /* 4. the pipeline */
    snprintf(p, sizeof p, "%s/chunks", o->outdir);
    if (R.nj && dm_mkdir_p(p) != 0) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", p, strerror(errno));
        goto out;
    }
    if (R.nj) {
        size_t px = 3 * (size_t)e->S * e->S, tok = (size_t)e->N * e->D * o->batch;
        R.batch_img = malloc(sizeof(float) * px * o->batch);
        R.normed = malloc(sizeof(float) * tok);
        R.res = calloc((size_t)o->chunk * o->chunk, sizeof *R.res);
        R.emb = malloc(sizeof(float) * 2 * e->D * o->chunk * o->chunk);
        R.mean_acc = malloc(sizeof(double) * e->D);
        int ok = R.batch_img && R.normed && R.res && R.emb && R.mean_acc;
        for (int i = 0; ok && i < e->nlayers; i++)
            ok = (R.layer_buf[i] = malloc(sizeof(float) * tok)) != NULL;
        if (!ok) {
            rc = dm_err_oom(err);
            goto out;
        }
        R.t_chunk = now();
        if (o->ev.progress)
            o->ev.progress(o->ev.ctx, "tiles", 0, R.nj);
        dm_pipeline_fns fns = { &R, job_alloc, job_release, stage_read, stage_infer, stage_write };
        rc = dm_pipeline_run(&fns, R.nj, o->batch, 2, err);
        if (rc == DM_EINTERRUPTED)
            dm_err_set(err, DM_EINTERRUPTED, "interrupted: the %lld chunk%s done in this run %s "
                       "kept; run the same command again to go on", (long long)res->chunks_run,
                       res->chunks_run == 1 ? "" : "s", res->chunks_run == 1 ? "is" : "are");
        if (rc)
            goto out;
    }
    res->seconds_model = e->model_seconds;
    if (o->shard.count) { /* a shard's outputs are built by dinomap merge, from every shard */
        res->shard_index = o->shard.index;
        res->shard_count = o->shard.count;
        res->shard_chunks = shard_chunks;
        res->nothing_to_do = R.nj == 0;
        goto out;
    }
    /* 5. finalize when every chunk is done (dm_fin_run says "nothing to do" when up to date) */
    /* the tile phase's memory goes before finalize's: the mosaic (and its cached blocks), the
     * model's buffers */
    dm_mosaic_close(e->mo);
    e->mo = NULL;
    for (int i = 0; i < DM_MAX_LAYERS; i++)
        free(R.layer_buf[i]), R.layer_buf[i] = NULL;
    free(R.batch_img), free(R.normed);
    R.batch_img = R.normed = NULL;
    dm_trim_memory();
    rc = dm_fin_run(o, e->ti, e->cfg, e->res, e->outset, t0, res, err);
out:
    if (rc == DM_EINVAL && err && !strncmp(err->msg, "nothing was mapped", 18)) {
        char in[1024];
        dm_mosaic_inputs_label(&o->mosaic, in, sizeof in);
        dm_err_prefix(err, "%s", in);
    }
    if (rc && rc != DM_EINTERRUPTED)
        dm_err_space_hint(err, o->outdir);
    if (e->ti) {
        const char *status = !rc ? (res->nothing_to_do ? "nothing to do" : "done")
                             : rc == DM_EINTERRUPTED ? "interrupted" : "failed";
        char st2[1100];
        snprintf(st2, sizeof st2, "%s%s%s", status, rc && rc != DM_EINTERRUPTED ? ": " : "",
                 rc && rc != DM_EINTERRUPTED ? err->msg : "");
        dm_tileindex_end_run(e->ti, st2, NULL);
    }
    /* a run that made nothing leaves nothing: its own index and the folder it created */
    int nothing_made = rc && fresh && created_index &&
                       (res->chunks_run == 0 || res->tiles_run == 0) && rc != DM_EINTERRUPTED &&
                       rc != DM_ELOCKED;
    free_run(&R);
    if (nothing_made || (rc && rc != DM_ELOCKED && fresh && !created_index)) {
        if (nothing_made)
            dm_folder_remove_run(o->outdir, NULL);
        if (!lock_existed) {
            snprintf(p, sizeof p, "%s/%s", o->outdir, DM_LOCK_FILE);
            unlink(p);
        }
        if (made)
            rmdir(o->outdir);
    } else if (rc == DM_ELOCKED && made) {
        rmdir(o->outdir);
    }
    dm_unlock(lock);
    cJSON_Delete(old_cfg);
    cJSON_Delete(old_res);
    cJSON_Delete(old_shard);
    free(own);
    res->seconds = now() - t0;
    if (rc) {
        cJSON *j = event("error");
        cJSON_AddStringToObject(j, "message", err->msg);
        cJSON_AddNumberToObject(j, "code", rc);
        emit(&o->ev, j);
    }
    return rc;
}

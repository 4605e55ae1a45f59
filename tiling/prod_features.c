/* tiling/prod_features.c — the features product: each window's core patch vectors (the last
 * block through the final norm, or --layer K's), one feature pixel per patch. A chunk file holds
 * the chunk's feature pixels ([D, h, w], nodata NaN). The PCA preview is fitted on a sample that
 * does not depend on how the run was cut or interrupted: each patch (x, y) of the grid has a key
 * u = hash(x, y) in [0, 1); patches with u < p are stored with their chunk, and finalize fits on
 * the DM_PCA_SAMPLE of them with the smallest u (a uniform sample of the valid patches).
 * Finalize writes features.tif (float32, or int8 with a per-band scale) and features_pca.tif.
 * The int8 scale of a band is its largest |value| over every done chunk / 127 (one read of the
 * chunks before the write pass): no value is clipped, whatever the PCA sample saw. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

typedef struct feat {
    dm_eng *e;
    int D, tp, layer, slot;
    float *normed;          /* [N, D]: --layer K through the final norm (compute thread) */
    /* writer: the chunk being assembled */
    dm_window cw;           /* its patches */
    float *buf;             /* [D, cw.h, cw.w] */
    size_t cap;
    dm_sample *smp;
    float *svec;            /* [scap, D] */
    int ns, scap;
} feat;

typedef struct fjob {
    float *patches;         /* [tp·tp, D] core patch vectors */
} fjob;

/* The sampling key of patch (x, y): splitmix64, top 53 bits as a fraction. */
static double patch_key(int x, int y)
{
    uint64_t z = ((uint64_t)(uint32_t)y << 32 | (uint32_t)x) + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int f_prepare(dm_eng *e, void **self, dm_err *err)
{
    const dm_run_opts *o = e->o;
    if (o->layer >= e->m->cfg.depth)
        return dm_err_set(err, DM_EINVAL, "--layer %d: the model has blocks 0..%d", o->layer,
                          e->m->cfg.depth - 1);
    double side = (double)o->chunk * e->g.tp, cw = fmin(side, e->g.fw), ch = fmin(side, e->g.fh);
    double bytes = cw * ch * e->D * 4;
    if (bytes > 2147483648.0)
        return dm_err_set(err, DM_EINVAL, "--chunk %d: a chunk of %d×%d feature pixels × %d bands "
                          "is %.1f GB in memory; use a smaller --chunk (e.g. %d)", o->chunk,
                          (int)cw, (int)ch, e->D, bytes / 1e9,
                          (int)fmax(1, floor(o->chunk * sqrt(2147483648.0 / bytes))));
    feat *f = calloc(1, sizeof *f);
    if (!f)
        return dm_err_oom(err);
    f->e = e;
    f->D = e->D;
    f->tp = e->g.tp;
    f->layer = o->layer;
    int rc = 0;
    if (o->layer >= 0) {
        f->slot = rc = dm_eng_want_layer(e, o->layer, err);
        if (rc >= 0 && !(f->normed = malloc(sizeof(float) * (size_t)e->N * e->D)))
            rc = dm_err_oom(err);
    }
    if (rc < 0) {
        free(f);
        return rc;
    }
    cJSON_AddNumberToObject(e->cfg, "features_layer", o->layer);
    cJSON_AddStringToObject(e->cfg, "features_quantize", o->quantize ? "int8" : "none");
    cJSON_AddBoolToObject(e->cfg, "features_pca", o->pca);
    /* what the rasters say about themselves */
    cJSON *r = cJSON_AddObjectToObject(e->res, "features");
    cJSON_AddNumberToObject(r, "dim", e->D);
    cJSON *meta = cJSON_AddArrayToObject(r, "meta");
    char m[600];
#define META(...)                                                                                  \
    (snprintf(m, sizeof m, __VA_ARGS__), cJSON_AddItemToArray(meta, cJSON_CreateString(m)))
    META("DINOMAP_VERSION=%s", DINOMAP_VERSION);
    META("DINOMAP_PRODUCT=features");
    META("DINOMAP_MODEL=%s (D=%d, %d blocks)", e->m->cfg.arch, e->D, e->m->cfg.depth);
    META("DINOMAP_WEIGHTS=%s", dm_base_name(o->weights));
    META("DINOMAP_WEIGHTS_SHA256=%s", e->sha);
    if (o->layer >= 0)
        META("DINOMAP_LAYER=%d (output of block %d through the final norm)", o->layer, o->layer);
    else
        META("DINOMAP_LAYER=%d (last block, normed: x_norm_patchtokens)", e->m->cfg.depth - 1);
    META("DINOMAP_NORMALIZATION=%s mean=%.3f,%.3f,%.3f std=%.3f,%.3f,%.3f", e->nm->name,
         e->nm->mean[0], e->nm->mean[1], e->nm->mean[2], e->nm->std[0], e->nm->std[1],
         e->nm->std[2]);
    META("DINOMAP_INPUT_SCALING=%s", dm_mosaic_scaling(e->mo));
    META("DINOMAP_GSD=%.17g", fabs(e->gt[1]));
    META("DINOMAP_TILE=%d", o->tile);
    META("DINOMAP_HALO=%d", o->halo);
    META("DINOMAP_OVERVIEW_RESAMPLING=AVERAGE (mean embedding of the patches)");
    if (o->quantize)
        META("DINOMAP_QUANTIZATION=uint8 q per band: value = (q - 128) * scale_b (the band's GDAL "
             "scale; offset = -128 * scale_b); q = 0 is nodata");
#undef META
    *self = f;
    return 0;
}

static void f_free(void *self)
{
    feat *f = self;
    if (!f)
        return;
    free(f->normed), free(f->buf), free(f->smp), free(f->svec);
    free(f);
}

static int f_job_alloc(void *self, void **pd, dm_err *err)
{
    feat *f = self;
    fjob *j = calloc(1, sizeof *j);
    if (!j || !(j->patches = malloc(sizeof(float) * (size_t)f->tp * f->tp * f->D))) {
        free(j);
        return dm_err_oom(err);
    }
    *pd = j;
    return 0;
}

static void f_job_free(void *self, void *pd)
{
    (void)self;
    fjob *j = pd;
    if (j)
        free(j->patches);
    free(j);
}

static int f_infer(void *self, dm_wjob *j, void *pd, const dm_tokens *t, dm_err *err)
{
    (void)err;
    feat *f = self;
    fjob *fj = pd;
    const float *tok = t->normed;
    if (f->layer >= 0) {
        dm_model_norm_tokens(f->e->m, t->layer[f->slot], f->normed, t->N);
        tok = f->normed;
    }
    /* the core's patches inside the window */
    int ox = (j->cpatch.x * 16 - j->win.x) / 16, oy = (j->cpatch.y * 16 - j->win.y) / 16;
    int D = f->D, tp = f->tp;
    for (int pr = 0; pr < j->cpatch.h; pr++)
        memcpy(fj->patches + (size_t)pr * tp * D,
               tok + (size_t)(t->npre + (oy + pr) * t->gw + ox) * D,
               (size_t)j->cpatch.w * D * sizeof(float));
    return 0;
}

static int f_chunk_begin(void *self, int chunk, dm_err *err)
{
    feat *f = self;
    int r0, c0, r1, c1;
    dm_grid_chunk(&f->e->g, chunk, &r0, &c0, &r1, &c1, &f->cw);
    size_t n = (size_t)f->D * f->cw.w * f->cw.h;
    if (n > f->cap) {
        free(f->buf);
        f->cap = 0;
        if (!(f->buf = malloc(n * sizeof(float))))
            return dm_err_oom(err);
        f->cap = n;
    }
    for (size_t i = 0; i < n; i++)
        f->buf[i] = NAN;
    f->ns = 0;
    return 0;
}

static int add_sample(feat *f, int x, int y, double u, const float *v, dm_err *err)
{
    if (f->ns == f->scap) {
        int cap = f->scap ? 2 * f->scap : 64;
        dm_sample *s = realloc(f->smp, sizeof *s * (size_t)cap);
        if (s)
            f->smp = s;
        float *w = realloc(f->svec, sizeof *w * (size_t)cap * f->D);
        if (w)
            f->svec = w;
        if (!s || !w)
            return dm_err_oom(err);
        f->scap = cap;
    }
    memcpy(f->svec + (size_t)f->ns * f->D, v, sizeof(float) * f->D);
    f->smp[f->ns++] = (dm_sample){ x, y, u, NULL };
    return 0;
}

static int f_write(void *self, const dm_wjob *j, const void *pd, dm_err *err)
{
    feat *f = self;
    if (j->state != DM_TILE_DONE)
        return 0;
    const fjob *fj = pd;
    int D = f->D, tp = f->tp, cw = f->cw.w, chh = f->cw.h, rc = 0;
    double p = f->e->sample_p;
    for (int pr = 0; pr < j->cpatch.h && !rc; pr++)
        for (int pc = 0; pc < j->cpatch.w && !rc; pc++) {
            if (!j->pvalid[pr * tp + pc])
                continue;
            const float *v = fj->patches + (size_t)(pr * tp + pc) * D;
            int gx = j->cpatch.x + pc, gy = j->cpatch.y + pr;
            int ox = gx - f->cw.x, oy = gy - f->cw.y;
            for (int d = 0; d < D; d++)
                f->buf[((size_t)d * chh + oy) * cw + ox] = v[d];
            double u = patch_key(gx, gy);
            if (u < p)
                rc = add_sample(f, gx, gy, u, v, err);
        }
    return rc;
}

static int f_chunk_end(void *self, int chunk, int any_done, char *file, size_t n,
                       const dm_sample **samples, int *nsamples, int *sdim, dm_err *err)
{
    feat *f = self;
    file[0] = '\0';
    for (int i = 0; i < f->ns; i++)
        f->smp[i].v = f->svec + (size_t)i * f->D;
    *samples = f->smp;
    *nsamples = f->ns;
    *sdim = f->D;
    if (!any_done)
        return 0;
    const dm_eng *e = f->e;
    char path[4200];
    dm_chunk_path(e->outdir, chunk, "features", path, sizeof path);
    double gt[6] = { e->gt[0] + f->cw.x * 16.0 * e->gt[1], e->gt[1] * 16, 0,
                     e->gt[3] + f->cw.y * 16.0 * e->gt[5], 0, e->gt[5] * 16 };
    int rc = dm_gis_chunk_write(path, f->buf, f->D, f->cw.w, f->cw.h, gt, e->wkt, err);
    if (!rc)
        dm_chunk_rel(chunk, "features", file, n);
    return rc;
}

/* --- finalize -------------------------------------------------------------------------------- */

typedef struct fctx {
    int D, quantize, want_pca;
    dm_pca *pca;
    float *qinv;            /* [D] 1/scale */
    int64_t clipped;        /* int8 values that fell outside 1..255 (0 by construction) */
} fctx;

/* A slab of a chunk [D, h, w] → quantised bytes [D, h, w] and/or PCA colours [3, h, w]. */
static void colour(fctx *c, const float *v, size_t plane, uint8_t *q, uint8_t *rgb, float *px)
{
    int D = c->D;
    for (size_t i = 0; i < plane; i++) {
        int nodata = isnan(v[i]);
        if (nodata) {
            if (q)
                for (int d = 0; d < D; d++)
                    q[(size_t)d * plane + i] = 0;
            if (rgb)
                rgb[i] = rgb[plane + i] = rgb[2 * plane + i] = 0;
            continue;
        }
        for (int d = 0; d < D; d++)
            px[d] = v[(size_t)d * plane + i];
        if (q)
            for (int d = 0; d < D; d++) {
                float x = floorf(px[d] * c->qinv[d] + 0.5f) + 128.0f;
                c->clipped += x < 1 || x > 255;
                q[(size_t)d * plane + i] = (uint8_t)(x < 1 ? 1 : x > 255 ? 255 : x); /* 0 nodata */
            }
        if (rgb) {
            uint8_t c3[3];
            dm_pca_rgb(c->pca, px, c3);
            rgb[i] = c3[0], rgb[plane + i] = c3[1], rgb[2 * plane + i] = c3[2];
        }
    }
}

/* The largest |value| of each band over every done chunk's file, read in slabs of rows
 * (mx [D]; 0 for a band with no value). */
static int chunk_absmax(dm_fin *fi, int D, size_t slab_bytes, float *mx, dm_err *err)
{
    const dm_grid *g = &fi->g;
    int64_t nch = dm_grid_nchunks(g);
    float *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int d = 0; d < D; d++)
        mx[d] = 0;
    for (int k = 0; !rc && k < nch; k++) {
        int r0, c0, r1, c1;
        dm_window cw;
        dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &cw);
        char path[4200];
        int has = dm_fin_chunk_file(fi, k, "features", path, sizeof path, err);
        if (has <= 0) {
            rc = has;
            continue;
        }
        int rows = (int)(slab_bytes / ((size_t)4 * D * cw.w));
        rows = rows < 1 ? 1 : rows > cw.h ? cw.h : rows;
        size_t plane = (size_t)cw.w * rows;
        if (plane > cap) {
            free(buf);
            if (!(buf = malloc(plane * D * sizeof *buf))) {
                rc = dm_err_oom(err);
                break;
            }
            cap = plane;
        }
        for (int y = 0; !rc && y < cw.h; y += rows) {
            int h = cw.h - y < rows ? cw.h - y : rows;
            size_t pl = (size_t)cw.w * h;
            rc = dm_gis_chunk_read(path, D, 0, y, cw.w, h, buf, err);
            for (int d = 0; !rc && d < D; d++) {
                const float *v = buf + (size_t)d * pl;
                float m = mx[d];
                for (size_t i = 0; i < pl; i++)
                    if (fabsf(v[i]) > m && isfinite(v[i])) /* NaN: nodata */
                        m = fabsf(v[i]);
                mx[d] = m;
            }
        }
        if (!rc && fi->cancel && *fi->cancel)
            rc = dm_err_set(err, DM_EINTERRUPTED, "interrupted during finalize: the chunks are "
                            "kept; run the same command (or dinomap finalize) again");
    }
    free(buf);
    return rc;
}

static int f_finalize(dm_fin *fi, dm_err *err)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(fi->res, "features");
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(r, "dim");
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(fi->cfg, "features_quantize");
    const cJSON *pj = cJSON_GetObjectItemCaseSensitive(fi->cfg, "features_pca");
    if (!cJSON_IsNumber(dj) || !cJSON_IsString(q))
        return dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: the features settings are missing "
                          "from its configuration; is this a dinomap run folder?", fi->outdir);
    fctx c = { dj->valueint, !strcmp(q->valuestring, "int8"), cJSON_IsTrue(pj), NULL, NULL, 0 };
    const dm_grid *g = &fi->g;
    int D = c.D, rc = 0, ns = 0;
    float *sv = malloc(sizeof(float) * (size_t)DM_PCA_SAMPLE * D);
    float *qscale = malloc(sizeof(float) * D), *px = malloc(sizeof(float) * D);
    c.qinv = malloc(sizeof(float) * D);
    if (!sv || !qscale || !px || !c.qinv)
        rc = dm_err_oom(err);
    const size_t SLAB = (size_t)32 << 20; /* bytes of floats per read */
    if (!rc && c.want_pca)
        rc = dm_tileindex_samples(fi->ti, DM_PCA_SAMPLE, D, sv, &ns, err);
    if (!rc && ns >= 2) {
        rc = dm_pca_create(D, DM_PCA_SAMPLE, 0x5eed, &c.pca, err);
        for (int i = 0; !rc && i < ns; i++)
            dm_pca_offer(c.pca, sv + (size_t)i * D);
        if (!rc)
            rc = dm_pca_fit(c.pca, err);
    }
    if (!rc && c.quantize)
        rc = chunk_absmax(fi, D, SLAB, qscale, err);
    for (int d = 0; !rc && c.quantize && d < D; d++) {
        double mx = qscale[d];
        qscale[d] = (float)((mx > 0 ? mx : 1.0) / 127.0);
        c.qinv[d] = 1.0f / qscale[d];
    }
    if (c.want_pca && !c.pca) {
        dm_warn("fewer than 2 valid patches: no PCA preview");
        c.want_pca = 0;
    }
    /* metadata, the PCA line added to the run's */
    const char **meta = dm_json_strings(cJSON_GetObjectItemCaseSensitive(r, "meta"));
    int nm = 0;
    while (meta && meta[nm])
        nm++;
    const char **mp = calloc((size_t)nm + 4, sizeof *mp), **mq = calloc((size_t)nm + 4, sizeof *mq);
    char pline[400] = "", prod[64] = "DINOMAP_PRODUCT=features_pca";
    if (!meta || !mp || !mq)
        rc = rc ? rc : dm_err_oom(err);
    if (!rc && c.pca)
        snprintf(pline, sizeof pline, "DINOMAP_PCA=3 components fitted on %d sampled patches of "
                 "the whole run, explaining %.1f%% of the variance; 2-98%% ranges mapped to "
                 "1..255", ns, 100 * dm_pca_explained(c.pca));
    for (int i = 0; !rc && i < nm; i++) {
        mp[i] = meta[i];
        mq[i] = strncmp(meta[i], "DINOMAP_PRODUCT=", 16) ? meta[i] : prod;
    }
    if (!rc && pline[0])
        mp[nm] = mq[nm] = pline;
    /* the scale is the exact largest |value| of the band: nothing can clip (checked below) */
    static const char iline[] = "DINOMAP_INT8_SCALE=per band: the band's largest |value| over "
                                "every mapped patch / 127; DINOMAP_INT8_CLIPPED counts the values "
                                "that did not fit";
    static const char cline[] = "DINOMAP_INT8_CLIPPED=0";
    if (!rc && c.quantize) {
        int k = nm + !!pline[0];
        mp[k] = iline;
        mp[k + 1] = cline;
    }
    char **names = rc ? NULL : calloc((size_t)D, sizeof *names);
    for (int d = 0; names && d < D; d++)
        if ((names[d] = malloc(8)))
            snprintf(names[d], 8, "f%04d", d);
    if (!rc && !names)
        rc = dm_err_oom(err);
    double fgt[6] = { fi->gt[0], fi->gt[1] * 16, 0, fi->gt[3], 0, fi->gt[5] * 16 };
    dm_out_spec fs = {.dir = fi->outdir,
                      .name = "features",
                      .width = g->fw,
                      .height = g->fh,
                      .bands = D,
                      .byte = c.quantize,
                      .nodata = c.quantize ? 0 : NAN,
                      .wkt = fi->wkt,
                      .meta = mp,
                      .band_names = (const char *const *)names,
                      .scale = c.quantize ? qscale : NULL,
                      .resampling = "AVERAGE",
                      .max_bytes = fi->max_bytes,
                      .cancel = fi->cancel,
                      .block_align = g->chunk * g->tp,
                      .co = fi->cog_co};
    memcpy(fs.gt, fgt, sizeof fgt);
    dm_out *fo = NULL, *po = NULL;
    if (!rc)
        rc = dm_out_create(&fs, &fo, err);
    static const char *pcn[3] = { "pc1", "pc2", "pc3" };
    dm_out_spec ps = { .dir = fi->outdir, .name = "features_pca", .width = g->fw,
                       .height = g->fh, .bands = 3, .byte = 1, .nodata = 0, .wkt = fi->wkt,
                       .meta = mq, .band_names = pcn, .rgb = 1, .resampling = "AVERAGE",
                       .block_align = 1, .cancel = fi->cancel, .co = fi->cog_co };
    memcpy(ps.gt, fgt, sizeof fgt);
    if (!rc && c.want_pca) {
        ps.side = dm_out_block_side(fo); /* the same blocks as features.tif */
        rc = dm_out_create(&ps, &po, err);
    }
    /* one pass over the chunks, region by region; a chunk is read in slabs of rows */
    float *slab = NULL;
    uint8_t *qb = NULL, *rgb = NULL;
    size_t cap = 0;
    int64_t nch = dm_grid_nchunks(g), steps = 0, any = 0;
    if (!rc && fi->ev->progress)
        fi->ev->progress(fi->ev->ctx, "finalize", 0, nch);
    for (int ri = 0; !rc && ri < dm_out_nregions(fo); ri++) {
        dm_region reg = dm_out_region(fo, ri);
        rc = dm_out_begin(fo, ri, err);
        if (!rc && po)
            rc = dm_out_begin(po, ri, err);
        for (int k = 0; !rc && k < nch; k++) {
            int r0, c0, r1, c1;
            dm_window cw;
            dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &cw);
            dm_window rw = { reg.x, reg.y, reg.w, reg.h };
            if (!fi->done[k] || !dm_window_overlap(cw, rw))
                continue;
            char path[4200];
            int has = dm_fin_chunk_file(fi, k, "features", path, sizeof path, err);
            if (has < 0) {
                rc = has;
                break;
            }
            if (!has)
                continue; /* a chunk of empty tiles has no file */
            int x0 = cw.x > reg.x ? cw.x : reg.x, y0 = cw.y > reg.y ? cw.y : reg.y;
            int x1 = cw.x + cw.w < reg.x + reg.w ? cw.x + cw.w : reg.x + reg.w;
            int y1 = cw.y + cw.h < reg.y + reg.h ? cw.y + cw.h : reg.y + reg.h;
            int w = x1 - x0, rows = (int)(SLAB / ((size_t)4 * D * w));
            rows = rows < 1 ? 1 : rows > y1 - y0 ? y1 - y0 : rows;
            size_t plane = (size_t)w * rows;
            if (plane > cap) {
                free(slab), free(qb), free(rgb);
                slab = malloc(plane * D * sizeof *slab);
                qb = c.quantize ? malloc(plane * D) : NULL;
                rgb = po ? malloc(plane * 3) : NULL;
                cap = plane;
                if (!slab || (c.quantize && !qb) || (po && !rgb)) {
                    rc = dm_err_oom(err);
                    break;
                }
            }
            for (int y = y0; !rc && y < y1; y += rows) {
                int h = y1 - y < rows ? y1 - y : rows;
                size_t pl = (size_t)w * h;
                rc = dm_gis_chunk_read(path, D, x0 - cw.x, y - cw.y, w, h, slab, err);
                if (!rc)
                    colour(&c, slab, pl, qb, po ? rgb : NULL, px);
                if (!rc)
                    rc = dm_out_write(fo, x0, y, w, h, c.quantize ? (void *)qb : (void *)slab,
                                      err);
                if (!rc && po)
                    rc = dm_out_write(po, x0, y, w, h, rgb, err);
            }
            any = 1;
            if (!rc)
                rc = dm_fin_step(fi, err);
            if (fi->ev->progress)
                fi->ev->progress(fi->ev->ctx, "finalize", ++steps, nch);
        }
        if (!rc)
            rc = dm_out_end(fo, err);
        if (!rc && po)
            rc = dm_out_end(po, err);
    }
    if (!rc && !any)
        rc = dm_err_set(err, DM_EINVAL, "nothing was mapped: every tile is empty (nodata) or "
                        "outside the area of interest");
    if (!rc && c.clipped) /* the metadata says 0 */
        rc = dm_err_set(err, DM_EINVAL, "features: %lld int8 values were clipped although the "
                        "scale came from the largest value (a bug)", (long long)c.clipped);
    if (!rc && c.quantize)
        fi->int8_clipped = c.clipped;
    if (!rc)
        rc = dm_out_commit(fo, err);
    if (!rc && po)
        rc = dm_out_commit(po, err);
    if (!rc) {
        size_t o = strlen(fi->outputs);
        snprintf(fi->outputs + o, sizeof fi->outputs - o, "%s%s%s%s", o ? " " : "",
                 dm_out_files(fo), po ? " " : "", po ? dm_out_files(po) : "");
        if (!po)
            dm_out_remove(fi->outdir, "features_pca", NULL); /* not from an earlier finalize */
    }
    dm_out_free(fo);
    dm_out_free(po);
    for (int d = 0; names && d < D; d++)
        free(names[d]);
    free(names), free(meta), free(mp), free(mq), free(slab), free(qb), free(rgb);
    free(sv), free(qscale), free(px), free(c.qinv);
    dm_pca_free(c.pca);
    return rc;
}

const dm_recipe dm_recipe_features = {
    "features", f_prepare, f_free, f_job_alloc, f_job_free, f_infer,
    f_chunk_begin, f_write, f_chunk_end, f_finalize,
};

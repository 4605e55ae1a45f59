/* tiling/prod_seg.c — the segmentation product: a class per pixel from a linear head on the patch
 * features (heads/seg.h: logits = W·x + b). The logits being linear in the features, the product
 * is derived from the features product's chunks (a run with seg makes the features too), and its
 * own chunk files hold only what those lack: the validity of each chunk's core pixels (uint8),
 * so that seg.tif's nodata follows the input's at pixel resolution. The head (or, for `seg
 * cluster`, k and the seed of a k-means fitted at finalize on the features' PCA sample) changes
 * no chunk: it is an output-only setting (dm_eng.outset), and another one rebuilds the outputs.
 *
 * Finalize, in two passes with memory bounded by a chunk and a block:
 *   1. each done chunk's features are read once (in slabs of rows) into per-patch logits, kept in
 *      temporary chunk files of C bands (OUTDIR/.seg_logits/, removed at the end): C ≪ D, so
 *      the second pass reads little;
 *   2. block by block, the logits of the block's patches and a one-patch margin (across chunk
 *      boundaries) are upsampled bilinearly to the pixels — patch (r, c) centred on pixel
 *      (16c + 8, 16r + 8), PyTorch's align_corners=False, clamped at the mosaic's edge; a nodata
 *      patch gives no weight and the others' weights are renormalized — then the argmax is the
 *      class id; 255 where the pixel is invalid or no valid patch is near. With probabilities,
 *      the softmax of the interpolated logits, one float32 band per class. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/seg.h"
#include "engine.h"

#define BLOCK 256                 /* px per side of the pieces pass 2 works on */
#define SEG_NODATA 255
#define KMEANS_MAX_ITER 300

typedef struct seg {
    dm_eng *e;
    dm_window px;           /* writer: the chunk's core pixels */
    uint8_t *mask;          /* [px.h, px.w] valid input pixels */
    size_t cap;
} seg;

/* --- the head in the folder's settings ------------------------------------------------------- *
 * `dinomap finalize OUTDIR` rebuilds seg.tif without the head's file, and no output may hold a
 * path of the machine that ran: the head itself goes in the index (its floats as JSON numbers,
 * which give back the same floats). */

static cJSON *head_json(const dm_seg_head *h)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "C", h->C);
    cJSON_AddNumberToObject(j, "D", h->D);
    cJSON_AddStringToObject(j, "kind", h->kind);
    cJSON_AddStringToObject(j, "backbone_sha256", h->backbone_sha256);
    cJSON_AddStringToObject(j, "arch", h->arch);
    cJSON_AddNumberToObject(j, "layer", h->layer);
    cJSON_AddStringToObject(j, "norm", h->norm);
    cJSON_AddStringToObject(j, "info", h->info ? h->info : "{}");
    cJSON_AddItemToObject(j, "classes", dm_seg_classes_json(h));
    cJSON_AddItemToObject(j, "weight", cJSON_CreateFloatArray(h->w, h->C * h->D));
    cJSON_AddItemToObject(j, "bias", cJSON_CreateFloatArray(h->b, h->C));
    return j;
}

static int floats(const cJSON *a, float *v, int n)
{
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n)
        return -1;
    int i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        if (!cJSON_IsNumber(x))
            return -1;
        v[i++] = (float)x->valuedouble;
    }
    return 0;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static double jnum(const cJSON *o, const char *k, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int head_from_json(const cJSON *j, dm_seg_head **out, const char *outdir, dm_err *err)
{
    dm_seg_head *h = dm_seg_head_new((int)jnum(j, "C", 0), (int)jnum(j, "D", 0));
    const cJSON *cl = cJSON_GetObjectItemCaseSensitive(j, "classes");
    int bad = !h || floats(cJSON_GetObjectItemCaseSensitive(j, "weight"), h->w, h->C * h->D) ||
              floats(cJSON_GetObjectItemCaseSensitive(j, "bias"), h->b, h->C) ||
              cJSON_GetArraySize(cl) != h->C;
    for (int c = 0; !bad && c < h->C; c++) {
        const cJSON *o = cJSON_GetArrayItem(cl, c);
        h->cls[c].id = (int)jnum(o, "id", -1);
        snprintf(h->cls[c].name, sizeof h->cls[c].name, "%s", jstr(o, "name"));
        bad = h->cls[c].id < 0 || h->cls[c].id > 254 ||
              dm_seg_parse_color(jstr(o, "color"), h->cls[c].rgb);
    }
    if (bad) {
        dm_seg_head_free(h);
        return dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: the segmentation head recorded in "
                          "its output_settings are damaged; run the seg command again", outdir);
    }
    snprintf(h->kind, sizeof h->kind, "%s", jstr(j, "kind"));
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%s", jstr(j, "backbone_sha256"));
    snprintf(h->arch, sizeof h->arch, "%s", jstr(j, "arch"));
    snprintf(h->norm, sizeof h->norm, "%s", jstr(j, "norm"));
    h->layer = (int)jnum(j, "layer", -1);
    if (!(h->info = strdup(jstr(j, "info")))) {
        dm_seg_head_free(h);
        return dm_err_oom(err);
    }
    *out = h;
    return 0;
}

/* --- run mode -------------------------------------------------------------------------------- */

static const char *layer_text(int layer, char *buf, size_t n)
{
    if (layer < 0)
        snprintf(buf, n, "the last block's");
    else
        snprintf(buf, n, "block %d's", layer);
    return buf;
}

int dm_seg_run_opts(dm_run_opts *o, char *norm, size_t n, dm_err *err)
{
    o->products |= DM_PRODUCT_FEATURES;
    if (!o->seg_head)
        return 0; /* clusters: fitted on the run's own features */
    dm_seg_head *h = NULL;
    int rc = dm_seg_head_load(o->seg_head, &h, err);
    if (rc)
        return rc;
    char a[32];
    if (o->layer >= 0 && o->layer != h->layer)
        rc = dm_err_set(err, DM_EINVAL, "--layer %d: the head %s was fitted on %s features; leave "
                        "--layer out (the head's layer is used)", o->layer,
                        dm_base_name(o->seg_head), layer_text(h->layer, a, sizeof a));
    else if (h->norm[0] && o->norm && strcmp(o->norm, h->norm))
        rc = dm_err_set(err, DM_EINVAL, "--norm %s: the head %s was fitted on features of %s "
                        "normalization; leave --norm out (the head's is used)", o->norm,
                        dm_base_name(o->seg_head), h->norm);
    if (!rc) {
        o->layer = h->layer;
        if (h->norm[0] && !o->norm && (o->products & DM_PRODUCT_CHM) && strcmp(h->norm, "chm"))
            dm_info("chm runs on the seg head's normalization %s (one backbone pass feeds both; "
                    "CHMv2's own is chm)", h->norm);
        if (h->norm[0]) {
            snprintf(norm, n, "%s", h->norm);
            o->norm = norm;
        }
    }
    dm_seg_head_free(h);
    return rc;
}

static int s_prepare(dm_eng *e, void **self, dm_err *err)
{
    const dm_run_opts *o = e->o;
    cJSON *fs = cJSON_AddObjectToObject(e->outset, "seg");
    if (!fs)
        return dm_err_oom(err);
    cJSON_AddBoolToObject(fs, "probabilities", o->seg_probabilities);
    if (o->seg_head) {
        dm_seg_head *h = NULL;
        int rc = dm_seg_head_load(o->seg_head, &h, err);
        if (rc)
            return rc;
        const char *hn = dm_base_name(o->seg_head), *wn = dm_base_name(o->weights);
        if (h->D != e->D)
            rc = dm_err_set(err, DM_EINVAL, "%s: a head for %d-dimensional features, but %s "
                            "gives %d (a head made with another backbone)", hn, h->D, wn, e->D);
        else if (h->backbone_sha256[0] && strcmp(h->backbone_sha256, e->sha))
            rc = dm_err_set(err, DM_EINVAL, "%s: head made with another backbone (sha %.16s…) "
                            "than %s (sha %.16s…); use the weights the head was fitted on, or "
                            "fit one on these", hn, h->backbone_sha256, wn, e->sha);
        if (rc) {
            dm_seg_head_free(h);
            return rc;
        }
        char hs[65];
        dm_seg_head_sha256(h, hs);
        cJSON_AddStringToObject(fs, "mode", "apply");
        cJSON_AddStringToObject(fs, "head_file", hn);
        cJSON_AddStringToObject(fs, "head_sha256", hs);
        cJSON_AddItemToObject(fs, "head", head_json(h));
        dm_seg_head_free(h);
    } else {
        cJSON_AddStringToObject(fs, "mode", "cluster");
        cJSON_AddNumberToObject(fs, "k", o->seg_k);
        cJSON_AddNumberToObject(fs, "seed", o->seg_seed);
    }
    seg *s = calloc(1, sizeof *s);
    if (!s)
        return dm_err_oom(err);
    s->e = e;
    *self = s;
    return 0;
}

static void s_free(void *self)
{
    seg *s = self;
    if (s)
        free(s->mask);
    free(s);
}

static int s_job_alloc(void *self, void **pd, dm_err *err)
{
    (void)self, (void)err;
    *pd = NULL; /* the window's validity mask is all this product keeps */
    return 0;
}

static void s_job_free(void *self, void *pd) { (void)self, (void)pd; }

static int s_infer(void *self, dm_wjob *j, void *pd, const dm_tokens *t, dm_err *err)
{
    (void)self, (void)j, (void)pd, (void)t, (void)err;
    return 0; /* the features product keeps the patch vectors */
}

/* The core pixels of chunk k (its patches' pixels, clipped to the mosaic). */
static dm_window chunk_px(const dm_grid *g, int k)
{
    int r0, c0, r1, c1;
    dm_window p;
    dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &p);
    dm_window w = { p.x * 16, p.y * 16, p.w * 16, p.h * 16 };
    w.w = w.w < g->W - w.x ? w.w : g->W - w.x;
    w.h = w.h < g->H - w.y ? w.h : g->H - w.y;
    return w;
}

static int s_chunk_begin(void *self, int chunk, dm_err *err)
{
    seg *s = self;
    s->px = chunk_px(&s->e->g, chunk);
    size_t n = (size_t)s->px.w * s->px.h;
    if (n > s->cap) {
        free(s->mask);
        s->cap = 0;
        if (!(s->mask = malloc(n)))
            return dm_err_oom(err);
        s->cap = n;
    }
    memset(s->mask, 0, n);
    return 0;
}

static int s_write(void *self, const dm_wjob *j, const void *pd, dm_err *err)
{
    (void)pd, (void)err;
    seg *s = self;
    if (j->state != DM_TILE_DONE)
        return 0; /* empty: no valid pixel */
    int S = s->e->S;
    for (int y = 0; y < j->core.h; y++)
        memcpy(s->mask + (size_t)(j->core.y - s->px.y + y) * s->px.w + (j->core.x - s->px.x),
               j->valid + (size_t)(j->core.y - j->win.y + y) * S + (j->core.x - j->win.x),
               (size_t)j->core.w);
    return 0;
}

static int s_chunk_end(void *self, int chunk, int any_done, char *file, size_t n,
                       const dm_sample **samples, int *nsamples, int *sdim, dm_err *err)
{
    (void)samples, (void)nsamples, (void)sdim;
    seg *s = self;
    file[0] = '\0';
    if (!any_done)
        return 0;
    const dm_eng *e = s->e;
    char path[4200];
    dm_chunk_path(e->outdir, chunk, "seg", path, sizeof path);
    double gt[6] = { e->gt[0] + s->px.x * e->gt[1], e->gt[1], 0, e->gt[3] + s->px.y * e->gt[5],
                     0, e->gt[5] };
    int rc = dm_gis_mask_write(path, s->mask, s->px.w, s->px.h, gt, e->wkt, err);
    if (!rc)
        dm_chunk_rel(chunk, "seg", file, n);
    return rc;
}

/* --- finalize -------------------------------------------------------------------------------- */

typedef struct sfin {
    dm_fin *fi;
    const dm_grid *g;
    dm_seg_head *h;
    int C, D, probs;
    char tmpdir[4200];
    uint8_t *has_lg;        /* [nchunks] pass 1 wrote the chunk's logits */
    int64_t steps, total;
} sfin;

static void lg_path(const sfin *s, int k, char *p, size_t n)
{
    snprintf(p, n, "%s/c%06d.tif", s->tmpdir, k);
}

static int progress(sfin *s, dm_err *err)
{
    int rc = dm_fin_step(s->fi, err);
    if (s->fi->ev->progress)
        s->fi->ev->progress(s->fi->ev->ctx, "finalize", ++s->steps, s->total);
    return rc;
}

/* Pass 1: the logits [C, h, w] of every done chunk's patches (NaN at nodata patches). */
static int pass_logits(sfin *s, dm_err *err)
{
    const dm_grid *g = s->g;
    const size_t SLAB = (size_t)32 << 20; /* bytes of features per read */
    int64_t nch = dm_grid_nchunks(g);
    int C = s->C, D = s->D, rc = 0;
    float *slab = NULL, *x = NULL, *lg = NULL, *out = NULL;
    size_t cap = 0, ocap = 0;
    for (int k = 0; !rc && k < nch; k++) {
        int r0, c0, r1, c1;
        dm_window cw;
        dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &cw);
        char path[4200], lp[4300];
        if (!s->fi->done[k])
            continue;
        int has = dm_fin_chunk_file(s->fi, k, "features", path, sizeof path, err);
        if (has < 0) {
            rc = has;
            break;
        }
        if (!has) { /* a chunk of empty tiles: nodata */
            rc = progress(s, err);
            continue;
        }
        int rows = (int)(SLAB / ((size_t)4 * D * cw.w));
        rows = rows < 1 ? 1 : rows > cw.h ? cw.h : rows;
        size_t plane = (size_t)cw.w * rows, all = (size_t)cw.w * cw.h * C;
        if (plane > cap) {
            free(slab), free(x), free(lg);
            slab = malloc(plane * D * sizeof *slab);
            x = malloc(plane * D * sizeof *x);
            lg = malloc(plane * C * sizeof *lg);
            cap = plane;
            if (!slab || !x || !lg) {
                rc = dm_err_oom(err);
                break;
            }
        }
        if (all > ocap) {
            free(out);
            if (!(out = malloc(all * sizeof *out))) {
                rc = dm_err_oom(err);
                break;
            }
            ocap = all;
        }
        for (int y = 0; !rc && y < cw.h; y += rows) {
            int h = cw.h - y < rows ? cw.h - y : rows;
            size_t pl = (size_t)cw.w * h;
            rc = dm_gis_chunk_read(path, D, 0, y, cw.w, h, slab, err);
            for (size_t i = 0; !rc && i < pl; i++) /* [D, pl] → [pl, D]; nodata rows 0 */
                for (int d = 0; d < D; d++) {
                    float v = slab[(size_t)d * pl + i];
                    x[i * D + d] = isnan(slab[i]) ? 0.0f : v;
                }
            if (rc)
                break;
            if (dm_seg_head_unit(s->h))
                dm_seg_unit_rows(x, (int)pl, D);
            dm_seg_logits(s->h, x, (int)pl, lg);
            for (size_t i = 0; i < pl; i++)
                for (int c = 0; c < C; c++)
                    out[(size_t)c * cw.w * cw.h + (size_t)y * cw.w + i] =
                        isnan(slab[i]) ? NAN : lg[i * C + c];
        }
        double gt[6] = { s->fi->gt[0] + cw.x * 16.0 * s->fi->gt[1], s->fi->gt[1] * 16, 0,
                         s->fi->gt[3] + cw.y * 16.0 * s->fi->gt[5], 0, s->fi->gt[5] * 16 };
        lg_path(s, k, lp, sizeof lp);
        if (!rc)
            rc = dm_gis_chunk_write(lp, out, C, cw.w, cw.h, gt, s->fi->wkt, err);
        if (!rc) {
            s->has_lg[k] = 1;
            rc = progress(s, err);
        }
    }
    free(slab), free(x), free(lg), free(out);
    return rc;
}

/* Pass 2's buffers for one block. */
typedef struct sblock {
    int qx0, qy0, pw, ph;   /* the patches read: [qx0, qx0+pw) × [qy0, qy0+ph) */
    float *lg;              /* [ph, pw, C] logits, NaN: nodata */
    float *rbuf;            /* [C, ...] a chunk file's window */
    uint8_t *mask;          /* [bh, bw] valid pixels */
    int *c0, *c1;           /* [bw] the columns' two patch columns */
    float *wx;              /* [bw] the weight of c1 */
    float *acc;             /* [C] */
    uint8_t *cls;           /* [bh, bw] */
    float *prob;            /* [C, bh, bw] or NULL */
} sblock;

/* The block's patch logits (with a one-patch margin) and its pixels' validity, from the chunk
 * files that reach them. */
static int block_read(sfin *s, sblock *b, dm_window px, dm_err *err)
{
    const dm_grid *g = s->g;
    int C = s->C, rc = 0;
    b->qx0 = px.x / 16 - 1 > 0 ? px.x / 16 - 1 : 0;
    b->qy0 = px.y / 16 - 1 > 0 ? px.y / 16 - 1 : 0;
    int qx1 = (px.x + px.w - 1) / 16 + 1, qy1 = (px.y + px.h - 1) / 16 + 1;
    qx1 = qx1 < g->fw - 1 ? qx1 : g->fw - 1;
    qy1 = qy1 < g->fh - 1 ? qy1 : g->fh - 1;
    b->pw = qx1 - b->qx0 + 1, b->ph = qy1 - b->qy0 + 1;
    for (size_t i = 0; i < (size_t)b->pw * b->ph * C; i++)
        b->lg[i] = NAN;
    dm_window q = { b->qx0, b->qy0, b->pw, b->ph };
    int cps = g->chunk * g->tp, cpx = g->chunk * g->tile;
    for (int cr = q.y / cps; !rc && cr <= (q.y + q.h - 1) / cps; cr++)
        for (int cc = q.x / cps; !rc && cc <= (q.x + q.w - 1) / cps; cc++) {
            int k = cr * g->ccols + cc, r0, c0, r1, c1;
            dm_window cw;
            if (!s->has_lg[k])
                continue;
            dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &cw);
            int x0 = q.x > cw.x ? q.x : cw.x, y0 = q.y > cw.y ? q.y : cw.y;
            int x1 = q.x + q.w < cw.x + cw.w ? q.x + q.w : cw.x + cw.w;
            int y1 = q.y + q.h < cw.y + cw.h ? q.y + q.h : cw.y + cw.h;
            int w = x1 - x0, h = y1 - y0;
            char p[4300];
            lg_path(s, k, p, sizeof p);
            rc = dm_gis_chunk_read(p, C, x0 - cw.x, y0 - cw.y, w, h, b->rbuf, err);
            for (int y = 0; !rc && y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < C; c++)
                        b->lg[((size_t)(y0 - q.y + y) * b->pw + (x0 - q.x + x)) * C + c] =
                            b->rbuf[((size_t)c * h + y) * w + x];
        }
    memset(b->mask, 0, (size_t)px.w * px.h);
    for (int cr = px.y / cpx; !rc && cr <= (px.y + px.h - 1) / cpx; cr++)
        for (int cc = px.x / cpx; !rc && cc <= (px.x + px.w - 1) / cpx; cc++) {
            int k = cr * g->ccols + cc;
            char p[4200];
            int has = dm_fin_chunk_file(s->fi, k, "seg", p, sizeof p, err);
            if (has <= 0) {
                rc = has;
                continue; /* not done, or no tile of it ran: invalid */
            }
            dm_window e = chunk_px(g, k);
            int x0 = px.x > e.x ? px.x : e.x, y0 = px.y > e.y ? px.y : e.y;
            int x1 = px.x + px.w < e.x + e.w ? px.x + px.w : e.x + e.w;
            int y1 = px.y + px.h < e.y + e.h ? px.y + px.h : e.y + e.h;
            uint8_t *m = (uint8_t *)b->rbuf;
            rc = dm_gis_mask_read(p, x0 - e.x, y0 - e.y, x1 - x0, y1 - y0, m, err);
            for (int y = 0; !rc && y < y1 - y0; y++)
                memcpy(b->mask + (size_t)(y0 - px.y + y) * px.w + (x0 - px.x),
                       m + (size_t)y * (x1 - x0), (size_t)(x1 - x0));
        }
    return rc;
}

/* Where pixel i (of n along an axis with np patches) samples the patch grid: patches a and b,
 * b's weight (PyTorch's bilinear, align_corners=False: src = max((i + ½)/16 − ½, 0)). */
static void axis(int i, int np, int *a, int *b, float *wb)
{
    double src = (i + 0.5) / 16.0 - 0.5;
    src = src < 0 ? 0 : src;
    *a = (int)src;
    *a = *a < np - 1 ? *a : np - 1;
    *b = *a + 1 < np ? *a + 1 : np - 1;
    *wb = (float)(src - *a);
}

/* The block's classes (and probabilities) from its logits. */
static void block_classes(sfin *s, sblock *b, dm_window px)
{
    const dm_grid *g = s->g;
    int C = s->C;
    size_t plane = (size_t)px.w * px.h;
    for (int x = 0; x < px.w; x++)
        axis(px.x + x, g->fw, &b->c0[x], &b->c1[x], &b->wx[x]);
    for (int y = 0; y < px.h; y++) {
        int r[2];
        float wy;
        axis(px.y + y, g->fh, &r[0], &r[1], &wy);
        float fy[2] = { 1 - wy, wy };
        for (int x = 0; x < px.w; x++) {
            size_t i = (size_t)y * px.w + x;
            int cls = -1;
            if (b->mask[i]) {
                int cx[2] = { b->c0[x], b->c1[x] };
                float fx[2] = { 1 - b->wx[x], b->wx[x] }, ws = 0;
                for (int c = 0; c < C; c++)
                    b->acc[c] = 0;
                for (int u = 0; u < 2; u++)
                    for (int v = 0; v < 2; v++) {
                        float w = fy[u] * fx[v];
                        const float *l =
                            b->lg + ((size_t)(r[u] - b->qy0) * b->pw + (cx[v] - b->qx0)) * C;
                        if (w <= 0 || isnan(l[0]))
                            continue; /* a nodata patch: the others' weights renormalized */
                        ws += w;
                        for (int c = 0; c < C; c++)
                            b->acc[c] += w * l[c];
                    }
                if (ws > 0) {
                    cls = 0;
                    for (int c = 0; c < C; c++) {
                        b->acc[c] /= ws;
                        if (b->acc[c] > b->acc[cls])
                            cls = c;
                    }
                }
            }
            b->cls[i] = cls < 0 ? SEG_NODATA : (uint8_t)s->h->cls[cls].id;
            if (!b->prob)
                continue;
            if (cls < 0) {
                for (int c = 0; c < C; c++)
                    b->prob[(size_t)c * plane + i] = NAN;
                continue;
            }
            double z = 0, mx = b->acc[cls];
            for (int c = 0; c < C; c++)
                z += exp((double)b->acc[c] - mx);
            for (int c = 0; c < C; c++)
                b->prob[(size_t)c * plane + i] = (float)(exp((double)b->acc[c] - mx) / z);
        }
    }
}

/* Pass 2: seg.tif (and seg_probabilities.tif), block by block. */
static int pass_pixels(sfin *s, dm_out *so, dm_out *po, dm_err *err)
{
    int C = s->C, side = BLOCK / 16 + 3, rc = 0;
    sblock b = { 0 };
    b.lg = malloc(sizeof(float) * (size_t)side * side * C);
    b.rbuf = malloc(sizeof(float) * ((size_t)side * side * C + BLOCK * BLOCK / 4));
    b.mask = malloc((size_t)BLOCK * BLOCK);
    b.c0 = malloc(sizeof(int) * BLOCK), b.c1 = malloc(sizeof(int) * BLOCK);
    b.wx = malloc(sizeof(float) * BLOCK), b.acc = malloc(sizeof(float) * C);
    b.cls = malloc((size_t)BLOCK * BLOCK);
    b.prob = po ? malloc(sizeof(float) * (size_t)C * BLOCK * BLOCK) : NULL;
    if (!b.lg || !b.rbuf || !b.mask || !b.c0 || !b.c1 || !b.wx || !b.acc || !b.cls ||
        (po && !b.prob))
        rc = dm_err_oom(err);
    for (int ri = 0; !rc && ri < dm_out_nregions(so); ri++) {
        dm_region reg = dm_out_region(so, ri);
        rc = dm_out_begin(so, ri, err);
        if (!rc && po)
            rc = dm_out_begin(po, ri, err);
        for (int by = reg.y; !rc && by < reg.y + reg.h; by += BLOCK)
            for (int bx = reg.x; !rc && bx < reg.x + reg.w; bx += BLOCK) {
                dm_window px = { bx, by, reg.x + reg.w - bx < BLOCK ? reg.x + reg.w - bx : BLOCK,
                                 reg.y + reg.h - by < BLOCK ? reg.y + reg.h - by : BLOCK };
                rc = block_read(s, &b, px, err);
                if (!rc)
                    block_classes(s, &b, px);
                if (!rc)
                    rc = dm_out_write(so, px.x, px.y, px.w, px.h, b.cls, err);
                if (!rc && po)
                    rc = dm_out_write(po, px.x, px.y, px.w, px.h, b.prob, err);
                if (!rc)
                    rc = progress(s, err);
            }
        if (!rc)
            rc = dm_out_end(so, err);
        if (!rc && po)
            rc = dm_out_end(po, err);
    }
    free(b.lg), free(b.rbuf), free(b.mask), free(b.c0), free(b.c1), free(b.wx), free(b.acc);
    free(b.cls), free(b.prob);
    return rc;
}

/* `seg cluster`: k-means on the features' PCA sample (the DM_PCA_SAMPLE valid patches with the
 * smallest keys: the same whatever the run's cutting, interruptions or threads), unit-length. */
static int fit_clusters(sfin *s, const cJSON *fs, int *nsamples, dm_err *err)
{
    const dm_fin *fi = s->fi;
    int K = (int)jnum(fs, "k", 0), D = s->D, ns = 0;
    uint64_t seed = (uint64_t)jnum(fs, "seed", 0);
    float *sv = malloc(sizeof(float) * (size_t)DM_PCA_SAMPLE * D);
    if (!sv)
        return dm_err_oom(err);
    int rc = dm_tileindex_samples(fi->ti, DM_PCA_SAMPLE, D, sv, &ns, err);
    if (!rc && ns < K)
        rc = dm_err_set(err, DM_EINVAL, "seg cluster: -k %d clusters, but the run's sample holds "
                        "%d valid patches; use a smaller -k or a larger mosaic", K, ns);
    if (!rc) {
        dm_seg_unit_rows(sv, ns, D);
        rc = dm_seg_kmeans(sv, ns, D, K, seed, KMEANS_MAX_ITER, &s->h, err);
    }
    free(sv);
    if (rc)
        return rc;
    dm_seg_head *h = s->h;
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%s", jstr(fi->cfg,
                                                                       "weights_sha256"));
    snprintf(h->arch, sizeof h->arch, "%s", jstr(fi->cfg, "arch"));
    snprintf(h->norm, sizeof h->norm, "%s", jstr(fi->cfg, "norm"));
    h->layer = (int)jnum(fi->cfg, "features_layer", -1);
    *nsamples = ns;
    return 0;
}

/* A formatted metadata line (malloc'd), or NULL. */
static char *line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s) {
        va_start(ap, fmt);
        vsnprintf(s, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    return s;
}

/* The features' metadata lines that hold for seg too (model, weights, layer, scaling, grid). */
static int seg_meta(const dm_fin *fi, const dm_seg_head *h, const char *head_name,
                    const char *hsha, const char *product, const char *resampling,
                    const char ***out, char ***own)
{
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(fi->res, "features"), "meta");
    int n = cJSON_GetArraySize(fm), k = 0, m = 0;
    const char **v = calloc((size_t)n + 16, sizeof *v);
    char **mine = calloc(16, sizeof *mine);
    if (!v || !mine) {
        free(v), free(mine);
        return -1;
    }
    static const char *const skip[] = { "DINOMAP_PRODUCT=", "DINOMAP_OVERVIEW_RESAMPLING=",
                                        "DINOMAP_QUANTIZATION=" };
    const cJSON *it;
    cJSON_ArrayForEach(it, fm)
    {
        int keep = cJSON_IsString(it);
        for (int i = 0; keep && i < 3; i++)
            keep = strncmp(it->valuestring, skip[i], strlen(skip[i])) != 0;
        if (keep)
            v[k++] = it->valuestring;
    }
    cJSON *cl = dm_seg_classes_json(h);
    char *cls = cl ? cJSON_PrintUnformatted(cl) : NULL;
    cJSON_Delete(cl);
    char *info = h->info && strcmp(h->info, "{}") ? h->info : NULL;
#define LINE(...)                                                                                  \
    do {                                                                                           \
        if ((mine[m] = line(__VA_ARGS__)))                                                         \
            v[k++] = mine[m++];                                                                    \
    } while (0)
    LINE("DINOMAP_PRODUCT=%s", product);
    LINE("DINOMAP_HEAD=%s", head_name);
    LINE("DINOMAP_HEAD_SHA256=%s", hsha);
    LINE("DINOMAP_HEAD_KIND=%s%s%s", h->kind, info ? " " : "", info ? info : "");
    LINE("DINOMAP_CLASSES=%s", cls ? cls : "[]");
    LINE("DINOMAP_NODATA=%s", !strcmp(product, "segmentation")
             ? "255: the input pixel is nodata (or outside the AOI), or no valid patch is near"
             : "NaN: the input pixel is nodata (or outside the AOI), or no valid patch is near");
    LINE("DINOMAP_INTERPOLATION=the head's logits of each 16x16 px patch, upsampled bilinearly "
         "to the pixels (patch centres, align_corners=False; nodata patches left out, the "
         "weights renormalized)%s", !strcmp(product, "segmentation")
             ? ", then the class of the largest" : ", then their softmax");
    LINE("DINOMAP_OVERVIEW_RESAMPLING=%s", resampling);
#undef LINE
    free(cls);
    *out = v;
    *own = mine;
    return m == 8 ? 0 : -1;
}

static void free_lines(const char **v, char **mine)
{
    for (int i = 0; mine && i < 16; i++)
        free(mine[i]);
    free(mine), free((void *)v);
}

static int s_finalize(dm_fin *fi, dm_err *err)
{
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(fi->outset, "seg");
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(fi->res, "features"), "dim");
    const char *mode = jstr(fs, "mode");
    if (!cJSON_IsNumber(dj) || (strcmp(mode, "apply") && strcmp(mode, "cluster")))
        return dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: no segmentation head or clusters "
                          "recorded; run the seg command again (dinomap seg apply/cluster)",
                          fi->outdir);
    sfin s = { .fi = fi, .g = &fi->g, .D = dj->valueint,
               .probs = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(fs, "probabilities")) };
    int cluster = !strcmp(mode, "cluster"), ns = 0, rc = 0;
    if (cluster)
        rc = fit_clusters(&s, fs, &ns, err);
    else
        rc = head_from_json(cJSON_GetObjectItemCaseSensitive(fs, "head"), &s.h, fi->outdir, err);
    if (!rc && s.h->D != s.D)
        rc = dm_err_set(err, DM_EFORMAT, "%s: the head is for %d-dimensional features, the run's "
                        "are %d", fi->outdir, s.h->D, s.D);
    if (rc) {
        dm_seg_head_free(s.h);
        return rc;
    }
    s.C = s.h->C;
    char hsha[65], hname[300];
    dm_seg_head_sha256(s.h, hsha);
    if (cluster)
        snprintf(hname, sizeof hname, "cluster.dmseg (k-means, -k %d --seed %.0f, on %d sampled "
                 "patches)", s.C, jnum(fs, "seed", 0), ns);
    else
        snprintf(hname, sizeof hname, "%s", jstr(fs, "head_file"));
    const dm_grid *g = &fi->g;
    int64_t nch = dm_grid_nchunks(g);
    /* the outputs' descriptions */
    dm_out_class *cls = calloc((size_t)s.C, sizeof *cls);
    const char **pnames = calloc((size_t)s.C, sizeof *pnames), **m1 = NULL, **m2 = NULL;
    char **own1 = NULL, **own2 = NULL;
    s.has_lg = calloc((size_t)nch, 1);
    if (!cls || !pnames || !s.has_lg ||
        seg_meta(fi, s.h, hname, hsha, "segmentation", "MODE", &m1, &own1) ||
        seg_meta(fi, s.h, hname, hsha, "segmentation_probabilities", "AVERAGE", &m2, &own2))
        rc = dm_err_oom(err);
    for (int c = 0; !rc && c < s.C; c++) {
        cls[c] = (dm_out_class){ s.h->cls[c].id, s.h->cls[c].name,
                                 { s.h->cls[c].rgb[0], s.h->cls[c].rgb[1], s.h->cls[c].rgb[2] } };
        pnames[c] = s.h->cls[c].name;
    }
    static const char *bname[1] = { "class" };
    dm_out_spec ss = { .dir = fi->outdir, .name = "seg", .width = g->W, .height = g->H,
                       .bands = 1, .byte = 1, .nodata = SEG_NODATA, .wkt = fi->wkt, .meta = m1,
                       .band_names = bname, .resampling = "MODE", .max_bytes = fi->max_bytes,
                       .cancel = fi->cancel, .block_align = BLOCK, .co = fi->cog_co,
                       .classes = cls, .nclasses = s.C };
    dm_out_spec ps = { .dir = fi->outdir, .name = "seg_probabilities", .width = g->W,
                       .height = g->H, .bands = s.C, .nodata = NAN, .wkt = fi->wkt, .meta = m2,
                       .band_names = pnames, .resampling = "AVERAGE", .max_bytes = fi->max_bytes,
                       .cancel = fi->cancel, .block_align = BLOCK, .co = fi->cog_co };
    memcpy(ss.gt, fi->gt, sizeof ss.gt);
    memcpy(ps.gt, fi->gt, sizeof ps.gt);
    dm_out *so = NULL, *po = NULL;
    /* the larger output decides the blocks (when any), the other follows */
    if (!rc && s.probs && !(rc = dm_out_create(&ps, &po, err)))
        ss.side = dm_out_block_side(po);
    if (!rc)
        rc = dm_out_create(&ss, &so, err);
    /* pass 1 into a temporary folder (a killed finalize's is cleared first) */
    snprintf(s.tmpdir, sizeof s.tmpdir, "%s/.seg_logits", fi->outdir);
    if (!rc && !(rc = dm_remove_tree(s.tmpdir, err)) && dm_mkdir_p(s.tmpdir) != 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot create", s.tmpdir);
    for (int ri = 0; !rc && ri < dm_out_nregions(so); ri++) {
        dm_region reg = dm_out_region(so, ri);
        s.total += (int64_t)((reg.w + BLOCK - 1) / BLOCK) * ((reg.h + BLOCK - 1) / BLOCK);
    }
    for (int k = 0; !rc && k < nch; k++)
        s.total += fi->done[k];
    if (!rc && fi->ev->progress)
        fi->ev->progress(fi->ev->ctx, "finalize", 0, s.total);
    if (!rc)
        rc = pass_logits(&s, err);
    if (!rc)
        rc = pass_pixels(&s, so, po, err);
    dm_remove_tree(s.tmpdir, NULL);
    if (!rc)
        rc = dm_out_commit(so, err);
    if (!rc && po)
        rc = dm_out_commit(po, err);
    char p[4200];
    snprintf(p, sizeof p, "%s/seg.qml", fi->outdir);
    if (!rc)
        rc = dm_gis_write_qml_classes(p, cls, s.C, err);
    snprintf(p, sizeof p, "%s/cluster.dmseg", fi->outdir);
    if (!rc && cluster)
        rc = dm_seg_head_save(s.h, p, err);
    if (!rc && !po)
        dm_out_remove(fi->outdir, "seg_probabilities", NULL); /* not from an earlier finalize */
    if (!rc) {
        size_t o = strlen(fi->outputs);
        snprintf(fi->outputs + o, sizeof fi->outputs - o, "%s%s seg.qml%s%s%s", o ? " " : "",
                 dm_out_files(so), po ? " " : "", po ? dm_out_files(po) : "",
                 cluster ? " cluster.dmseg" : "");
        cJSON *r = cJSON_AddObjectToObject(fi->report, "seg");
        cJSON_AddStringToObject(r, "mode", mode);
        cJSON_AddStringToObject(r, "head", cluster ? "cluster.dmseg" : hname);
        cJSON_AddStringToObject(r, "head_sha256", hsha);
        cJSON_AddStringToObject(r, "kind", s.h->kind);
        cJSON_AddItemToObject(r, "classes", dm_seg_classes_json(s.h));
        cJSON_AddBoolToObject(r, "probabilities", s.probs);
        cJSON *info = s.h->info ? cJSON_Parse(s.h->info) : NULL;
        if (info)
            cJSON_AddItemToObject(r, "head_info", info);
        if (cluster)
            cJSON_AddNumberToObject(r, "samples", ns);
    }
    dm_out_free(so);
    dm_out_free(po);
    free_lines(m1, own1);
    free_lines(m2, own2);
    free(cls), free(pnames), free(s.has_lg);
    dm_seg_head_free(s.h);
    return rc;
}

const dm_recipe dm_recipe_seg = {
    "seg", s_prepare, s_free, s_job_alloc, s_job_free, s_infer,
    s_chunk_begin, s_write, s_chunk_end, s_finalize,
};

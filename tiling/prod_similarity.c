/* tiling/prod_similarity.c — the similarity product: the DINOv3 paper's similarity maps,
 * georeferenced. similarity.tif holds, at the features' patch grid, the cosine similarity of each
 * patch's feature vector to a query vector: the vector of the patch under a point (--at X,Y, in
 * --srs or the output CRS), or the normalized mean of the patches whose centre lies inside some
 * polygons (--query-aoi). It is derived from the features' chunks: the recipe does nothing per
 * window (asking for it runs the features product), and its finalize reads the done chunks piece
 * by piece, a group of bands at a time (memory bounded whatever the mosaic and the band count).
 * The query is an output setting, not part of the configuration: another query rebuilds only
 * similarity.tif and similarity.qml (finalize.c), no tile is recomputed. The same code maps an
 * existing features raster without a run (dm_similarity, `dinomap similarity --features`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

#define SLAB ((size_t)32 << 20) /* bytes of feature values read at once */

int dm_sim_query_check(const dm_sim_query *q, dm_err *err)
{
    if (q->at_set && q->aoi)
        return dm_err_set(err, DM_EINVAL, "--at and --query-aoi: give one query, not both");
    if (!q->at_set && !q->aoi)
        return dm_err_set(err, DM_EINVAL, "similarity needs a query: --at X,Y (the patch under "
                          "the point) or --query-aoi FILE (the mean of the patches inside its "
                          "polygons)");
    if (q->srs && !q->at_set)
        return dm_err_set(err, DM_EINVAL, "--srs goes with --at (a --query-aoi file says its "
                          "own CRS)");
    if (q->at_set && !(isfinite(q->x) && isfinite(q->y)))
        return dm_err_set(err, DM_EINVAL, "--at: expected two finite numbers X,Y");
    return q->srs ? dm_gis_srs_check("--srs", q->srs, err) : 0;
}

/* --- where the feature vectors come from --------------------------------------------------- */

/* A run's done chunks (fi; pieces = chunks), a grid alone (g without fi: the pieces' windows,
 * nothing to read), or a features raster (fr; pieces = blocks of `block` px). */
typedef struct src {
    const dm_grid *g;
    dm_fin *fi;
    dm_gis_feat *fr;
    int D, fw, fh, block;
    double fgt[6];                /* the feature grid */
    const char *wkt;
} src;

static int src_npieces(const src *s)
{
    if (!s->fr)
        return dm_grid_nchunks(s->g);
    return ((s->fw + s->block - 1) / s->block) * ((s->fh + s->block - 1) / s->block);
}

static dm_window src_piece(const src *s, int k)
{
    dm_window w;
    if (!s->fr) {
        int r0, c0, r1, c1;
        dm_grid_chunk(s->g, k, &r0, &c0, &r1, &c1, &w);
        return w;
    }
    int n = (s->fw + s->block - 1) / s->block;
    w.x = k % n * s->block, w.y = k / n * s->block;
    w.w = s->fw - w.x < s->block ? s->fw - w.x : s->block;
    w.h = s->fh - w.y < s->block ? s->fh - w.y : s->block;
    return w;
}

/* Piece k to read: 1 with *f and the grid position of its pixel (0, 0); 0 when it holds nothing
 * (a chunk not done, or whose tiles were all empty). */
static int src_open(const src *s, int k, dm_gis_feat **f, int *ox, int *oy, dm_err *err)
{
    *f = NULL, *ox = *oy = 0;
    if (s->fr) {
        *f = s->fr;
        return 1;
    }
    char path[4200];
    int has = s->fi ? dm_fin_chunk_file(s->fi, k, "features", path, sizeof path, err) : 0;
    if (has <= 0)
        return has;
    dm_window w = src_piece(s, k);
    *ox = w.x, *oy = w.y;
    int rc = dm_gis_feat_open(path, NULL, f, err);
    if (!rc) {
        int fw, fh, nb, bl;
        double gt[6];
        const char *wkt;
        dm_gis_feat_info(*f, &fw, &fh, &nb, gt, &wkt, &bl);
        if (fw != w.w || fh != w.h || nb != s->D) {
            dm_gis_feat_close(*f);
            *f = NULL;
            rc = dm_err_set(err, DM_EFORMAT, "chunk %s: has %d bands of %d×%d px, not what the "
                            "run wrote (%d bands, %d×%d); was it replaced? Redo the run with "
                            "--overwrite", path, nb, fw, fh, s->D, w.w, w.h);
        }
    }
    return rc ? rc : 1;
}

static void src_close(const src *s, dm_gis_feat *f)
{
    if (f && f != s->fr)
        dm_gis_feat_close(f);
}

/* The piece's bbox in the CRS. */
static void piece_bbox(const src *s, dm_window w, double b[4])
{
    double ax = s->fgt[0] + w.x * s->fgt[1], bx = s->fgt[0] + (w.x + w.w) * s->fgt[1];
    double ay = s->fgt[3] + w.y * s->fgt[5], by = s->fgt[3] + (w.y + w.h) * s->fgt[5];
    b[0] = fmin(ax, bx), b[1] = fmin(ay, by), b[2] = fmax(ax, bx), b[3] = fmax(ay, by);
}

/* Bands per read of a w×h window: SLAB bytes at most, one band at least. */
static int group(const src *s, size_t plane)
{
    size_t nb = SLAB / (4 * (plane ? plane : 1));
    return nb < 1 ? 1 : nb > (size_t)s->D ? s->D : (int)nb;
}

/* --- the query ------------------------------------------------------------------------------- */

typedef struct simq {
    src s;
    float *q;                    /* [D] unit */
    int col, row, npatches;      /* the query patch (point), or how many patches (AOI) */
    double X, Y;                 /* the point in the features' CRS */
    dm_sim_query query;
    char aoi_sha[65];
    cJSON *keep;                 /* what query's strings point into (finalize) */
} simq;

static void simq_free(simq *m)
{
    if (!m)
        return;
    if (m->s.fr)
        dm_gis_feat_close(m->s.fr);
    free(m->q);
    cJSON_Delete(m->keep);
    free(m);
}

/* The patch under the query point; the point outside the features is an error naming their
 * extent. */
static int locate(const src *s, const dm_sim_query *q, int *col, int *row, double *X, double *Y,
                  dm_err *err)
{
    int rc = dm_gis_point_to(q->srs, s->wkt, q->x, q->y, X, Y, err);
    if (rc)
        return rc;
    double c = floor((*X - s->fgt[0]) / s->fgt[1]), r = floor((*Y - s->fgt[3]) / s->fgt[5]);
    if (c >= 0 && c < s->fw && r >= 0 && r < s->fh) {
        *col = (int)c, *row = (int)r;
        return 0;
    }
    double b[4];
    dm_window all = { 0, 0, s->fw, s->fh };
    piece_bbox(s, all, b);
    char moved[160] = "";
    if (q->srs)
        snprintf(moved, sizeof moved, " (%.10g,%.10g in the mosaic's CRS)", *X, *Y);
    return dm_err_set(err, DM_EINVAL, "--at %.10g,%.10g%s%s: outside the mosaic%s, which spans "
                      "x %.10g..%.10g, y %.10g..%.10g in its CRS%s", q->x, q->y,
                      q->srs ? " --srs " : "", q->srs ? q->srs : "", moved, b[0], b[2], b[1],
                      b[3], q->srs ? "" : "; --srs EPSG:4326 takes longitude,latitude");
}

/* The vector of patch (col, row): NaN (nodata) is an error. */
static int query_point(simq *m, dm_err *err)
{
    const src *s = &m->s;
    int k = -1;
    if (!s->fr) {
        int tc = m->col / s->g->tp / s->g->chunk, tr = m->row / s->g->tp / s->g->chunk;
        k = tr * s->g->ccols + tc;
    }
    dm_gis_feat *f;
    int ox, oy, D = s->D;
    int has = src_open(s, k, &f, &ox, &oy, err);
    if (has < 0)
        return has;
    float *v = has ? malloc(sizeof(float) * D) : NULL;
    double *sum = has ? calloc((size_t)D, sizeof *sum) : NULL;
    int rc = has && (!v || !sum) ? dm_err_oom(err) : 0;
    if (!rc && has)
        rc = dm_gis_feat_read(f, 0, D, m->col - ox, m->row - oy, 1, 1, v, err);
    src_close(s, f);
    int nodata = !has || (!rc && isnan(v[0]));
    for (int d = 0; !rc && !nodata && d < D; d++)
        sum[d] = v[d];
    if (!rc && !nodata && dm_sim_unit(sum, D, m->q))
        nodata = 1; /* a zero vector points nowhere */
    if (!rc && nodata)
        rc = dm_err_set(err, DM_EINVAL, "--at %.10g,%.10g: the patch there (row %d, col %d of "
                        "the features) is nodata%s; choose a point on mapped imagery",
                        m->query.x, m->query.y, m->row, m->col,
                        k >= 0 && s->fi && !s->fi->done[k] ? " (its chunk is not done yet)"
                                                           : "");
    m->npatches = 1;
    free(v), free(sum);
    return rc;
}

/* The normalized mean of the valid patches whose centre lies inside the polygons; each piece
 * read a group of bands at a time. With no `out` (a grid alone): only whether a centre is
 * inside (npatches 1 or 0). */
static int query_aoi(simq *m, const dm_aoi *a, int *centres, dm_err *err)
{
    const src *s = &m->s;
    int D = s->D, rc = 0, n = src_npieces(s), grid_only = !s->fi && !s->fr;
    double *sum = calloc((size_t)D, sizeof *sum);
    uint8_t *mask = NULL;
    float *buf = NULL;
    size_t cap = 0;
    int64_t count = 0;
    *centres = 0;
    if (!sum)
        rc = dm_err_oom(err);
    for (int k = 0; !rc && k < n && !(grid_only && *centres); k++) {
        dm_window w = src_piece(s, k);
        double b[4];
        piece_bbox(s, w, b);
        if (!dm_aoi_touches(a, b[0], b[1], b[2], b[3]))
            continue;
        size_t plane = (size_t)w.w * w.h;
        if (plane > cap) {
            free(mask), free(buf);
            mask = malloc(plane);
            buf = grid_only ? NULL : malloc(plane * group(s, plane) * sizeof *buf);
            cap = plane;
            if (!mask || (!grid_only && !buf)) {
                cap = 0;
                rc = dm_err_oom(err);
                break;
            }
        }
        int nb = group(s, cap); /* what buf holds for the largest piece fits this one */
        memset(mask, 1, plane);
        if ((rc = dm_aoi_mask(a, s->fgt, w.x, w.y, w.w, w.h, mask, err)))
            break;
        int inside = 0;
        for (size_t i = 0; i < plane; i++)
            inside += mask[i];
        *centres += inside;
        if (!inside || grid_only)
            continue;
        dm_gis_feat *f;
        int ox, oy, has = src_open(s, k, &f, &ox, &oy, err);
        if (has <= 0) {
            rc = has;
            continue;
        }
        for (int b0 = 0; !rc && b0 < D; b0 += nb) {
            int g = D - b0 < nb ? D - b0 : nb;
            rc = dm_gis_feat_read(f, b0, g, w.x - ox, w.y - oy, w.w, w.h, buf, err);
            for (size_t i = 0; !rc && b0 == 0 && i < plane; i++)
                mask[i] = mask[i] && !isnan(buf[i]); /* nodata patches are NaN in every band */
            if (!rc)
                dm_sim_sum(buf, g, plane, mask, sum + b0);
        }
        for (size_t i = 0; !rc && i < plane; i++)
            count += mask[i];
        src_close(s, f);
        if (!rc && s->fi)
            rc = dm_fin_step(s->fi, err);
    }
    const char *name = dm_base_name(m->query.aoi);
    if (!rc && !*centres)
        rc = dm_err_set(err, DM_EINVAL, "--query-aoi %s: no patch centre of the mosaic lies "
                        "inside its polygons (a patch is 16×16 px); check its extent and CRS",
                        name);
    else if (!rc && !grid_only && !count)
        rc = dm_err_set(err, DM_EINVAL, "--query-aoi %s: the %d patches whose centre lies inside "
                        "are all nodata", name, *centres);
    else if (!rc && !grid_only && dm_sim_unit(sum, D, m->q))
        rc = dm_err_set(err, DM_EINVAL, "--query-aoi %s: the mean vector of its patches is zero",
                        name);
    m->npatches = (int)count;
    free(sum), free(mask), free(buf);
    return rc;
}

/* Finds the query's vector (or, for a grid alone, checks the query can have one). */
static int resolve(simq *m, dm_err *err)
{
    int rc = 0;
    if (!m->s.fi && !m->s.fr) {
        /* nothing to read yet */
    } else if (!(m->q = malloc(sizeof(float) * m->s.D))) {
        return dm_err_oom(err);
    }
    if (m->query.at_set) {
        rc = locate(&m->s, &m->query, &m->col, &m->row, &m->X, &m->Y, err);
        if (!rc && m->q)
            rc = query_point(m, err);
        return rc;
    }
    dm_aoi *a = NULL;
    int centres = 0;
    rc = dm_aoi_open(m->query.aoi, m->s.wkt, &a, err);
    if (rc)
        dm_err_prefix(err, "--query-aoi");
    if (!rc)
        rc = query_aoi(m, a, &centres, err);
    if (!rc)
        rc = dm_aoi_sha256(m->query.aoi, m->aoi_sha, err);
    dm_aoi_free(a);
    return rc;
}

/* --- the map ------------------------------------------------------------------------------- */

/* The raster's metadata: the features' (model, weights, layer, normalization, grid...) less
 * what describes the feature values, then the query's. */
static char **meta_lines(const simq *m, const char *const *fmeta, const char *source)
{
    static const char *drop[] = { "DINOMAP_VERSION=", "DINOMAP_PRODUCT=", "DINOMAP_QUANTIZATION=",
                                  "DINOMAP_INT8_", "DINOMAP_PCA=", "DINOMAP_OVERVIEW_", NULL };
    int n = 0;
    while (fmeta && fmeta[n])
        n++;
    char **l = calloc((size_t)n + 16, sizeof *l);
    if (!l)
        return NULL;
    int k = 0;
    char t[1200];
#define ADD(...) (snprintf(t, sizeof t, __VA_ARGS__), l[k++] = strdup(t))
    ADD("DINOMAP_VERSION=%s", DINOMAP_VERSION);
    ADD("DINOMAP_PRODUCT=similarity");
    ADD("DINOMAP_SIMILARITY=cosine similarity (-1..1) of each patch's feature vector to the query "
        "vector; nodata NaN where the patch is nodata");
    for (int i = 0; i < n; i++) {
        int skip = 0;
        for (int j = 0; drop[j] && !skip; j++)
            skip = !strncmp(fmeta[i], drop[j], strlen(drop[j]));
        if (!skip)
            l[k++] = strdup(fmeta[i]);
    }
    const dm_sim_query *q = &m->query;
    if (q->at_set) {
        ADD("DINOMAP_QUERY=the feature vector of the patch under the point DINOMAP_QUERY_AT");
        ADD("DINOMAP_QUERY_AT=%.17g,%.17g", q->x, q->y);
        ADD("DINOMAP_QUERY_SRS=%s", q->srs ? q->srs : "the raster's CRS");
        ADD("DINOMAP_QUERY_PATCH=row %d, col %d (similarity 1)", m->row, m->col);
    } else {
        ADD("DINOMAP_QUERY=the mean feature vector of the %d patches whose centre lies inside "
            "DINOMAP_QUERY_AOI, normalized", m->npatches);
        ADD("DINOMAP_QUERY_AOI=%s", dm_base_name(q->aoi));
        ADD("DINOMAP_QUERY_AOI_SHA256=%s", m->aoi_sha);
        ADD("DINOMAP_QUERY_PATCHES=%d", m->npatches);
    }
    ADD("DINOMAP_SOURCE=%s", source);
    ADD("DINOMAP_OVERVIEW_RESAMPLING=AVERAGE");
#undef ADD
    for (int i = 0; i < k; i++)
        if (!l[i]) {
            for (int j = 0; j < k; j++)
                free(l[j]);
            free(l);
            return NULL;
        }
    return l;
}

static void lines_free(char **l)
{
    for (int i = 0; l && l[i]; i++)
        free(l[i]);
    free(l);
}

/* What run.json says of the query. */
static cJSON *report(const simq *m, float lo, float hi)
{
    cJSON *j = cJSON_CreateObject();
    const dm_sim_query *q = &m->query;
    if (q->at_set) {
        double at[2] = { q->x, q->y }, p[2] = { m->X, m->Y };
        cJSON_AddItemToObject(j, "at", cJSON_CreateDoubleArray(at, 2));
        cJSON_AddStringToObject(j, "srs", q->srs ? q->srs : "the output CRS");
        cJSON_AddItemToObject(j, "at_output_crs", cJSON_CreateDoubleArray(p, 2));
        cJSON *pt = cJSON_AddObjectToObject(j, "query_patch");
        cJSON_AddNumberToObject(pt, "row", m->row);
        cJSON_AddNumberToObject(pt, "col", m->col);
    } else {
        cJSON_AddStringToObject(j, "query_aoi", dm_base_name(q->aoi));
        cJSON_AddStringToObject(j, "query_aoi_sha256", m->aoi_sha);
        cJSON_AddNumberToObject(j, "query_patches", m->npatches);
    }
    if (hi >= lo) {
        double r[2] = { lo, hi };
        cJSON_AddItemToObject(j, "range", cJSON_CreateDoubleArray(r, 2));
    }
    return j;
}

typedef struct wctx {
    const char *dir;
    double max_bytes;
    const char *const *co;
    volatile sig_atomic_t *cancel;
    const dm_run_events *ev;
    const char *stage;
    char files[600];
    float lo, hi;                /* the values' range (lo > hi: none) */
} wctx;

/* similarity.tif (piece by piece, a group of bands at a time) and similarity.qml. */
static int write_map(simq *m, const char *const *meta, wctx *w, dm_err *err)
{
    const src *s = &m->s;
    static const char *bname[1] = { "cosine_similarity" };
    dm_out_spec os = { .dir = w->dir, .name = "similarity", .width = s->fw, .height = s->fh,
                       .bands = 1, .nodata = NAN, .wkt = s->wkt, .meta = meta,
                       .band_names = bname, .resampling = "AVERAGE", .max_bytes = w->max_bytes,
                       .cancel = w->cancel, .co = w->co,
                       .block_align = s->fr ? s->block : s->g->chunk * s->g->tp };
    memcpy(os.gt, s->fgt, sizeof os.gt);
    dm_out *o = NULL;
    int rc = dm_out_create(&os, &o, err), n = src_npieces(s), D = s->D;
    int64_t steps = 0, any = 0;
    float *buf = NULL, *out = NULL;
    double *dot = NULL, *nn = NULL;
    size_t cap = 0;
    w->lo = INFINITY, w->hi = -INFINITY;
    if (!rc && w->ev->progress)
        w->ev->progress(w->ev->ctx, w->stage, 0, n);
    for (int ri = 0; !rc && ri < dm_out_nregions(o); ri++) {
        dm_region reg = dm_out_region(o, ri);
        dm_window rw = { reg.x, reg.y, reg.w, reg.h };
        rc = dm_out_begin(o, ri, err);
        for (int k = 0; !rc && k < n; k++) {
            dm_window p = src_piece(s, k);
            if (!dm_window_overlap(p, rw))
                continue;
            dm_gis_feat *f;
            int ox, oy, has = src_open(s, k, &f, &ox, &oy, err);
            if (has <= 0) {
                rc = has;
                continue; /* a chunk not done or of empty tiles: nodata */
            }
            int x0 = p.x > rw.x ? p.x : rw.x, y0 = p.y > rw.y ? p.y : rw.y;
            int x1 = p.x + p.w < rw.x + rw.w ? p.x + p.w : rw.x + rw.w;
            int y1 = p.y + p.h < rw.y + rw.h ? p.y + p.h : rw.y + rw.h;
            int ww = x1 - x0, hh = y1 - y0;
            size_t plane = (size_t)ww * hh;
            if (plane > cap) {
                free(buf), free(out), free(dot), free(nn);
                buf = malloc(plane * group(s, plane) * sizeof *buf);
                out = malloc(plane * sizeof *out);
                dot = malloc(plane * sizeof *dot), nn = malloc(plane * sizeof *nn);
                cap = plane;
                if (!buf || !out || !dot || !nn) {
                    cap = 0;
                    rc = dm_err_oom(err);
                }
            }
            int nb = group(s, cap); /* buf, made for the largest piece, holds this one's */
            if (!rc) {
                memset(dot, 0, plane * sizeof *dot);
                memset(nn, 0, plane * sizeof *nn);
            }
            for (int b0 = 0; !rc && b0 < D; b0 += nb) {
                int g = D - b0 < nb ? D - b0 : nb;
                rc = dm_gis_feat_read(f, b0, g, x0 - ox, y0 - oy, ww, hh, buf, err);
                if (!rc)
                    dm_sim_accumulate(m->q + b0, g, buf, plane, dot, nn);
            }
            src_close(s, f);
            if (!rc)
                dm_sim_finish(dot, nn, plane, out);
            for (size_t i = 0; !rc && i < plane; i++)
                if (!isnan(out[i])) {
                    w->lo = out[i] < w->lo ? out[i] : w->lo;
                    w->hi = out[i] > w->hi ? out[i] : w->hi;
                }
            if (!rc)
                rc = dm_out_write(o, x0, y0, ww, hh, out, err);
            any = 1;
            if (!rc && s->fi)
                rc = dm_fin_step(s->fi, err);
            else if (!rc && w->cancel && *w->cancel)
                rc = dm_err_set(err, DM_EINTERRUPTED, "interrupted: nothing was written");
            if (w->ev->progress)
                w->ev->progress(w->ev->ctx, w->stage, ++steps, n);
        }
        if (!rc)
            rc = dm_out_end(o, err);
    }
    if (!rc && !any)
        rc = dm_err_set(err, DM_EINVAL, "nothing was mapped: every tile is empty (nodata) or "
                        "outside the area of interest");
    if (!rc)
        rc = dm_out_commit(o, err);
    /* the style: the values' range, in viridis (dark: unlike the query, yellow: like it) */
    float lo = w->lo, hi = w->hi;
    if (!(hi - lo > 1e-6f))
        lo = -1, hi = 1;
    static const char *col[5] = { "#440154", "#3b528b", "#21918c", "#5ec962", "#fde725" };
    char lab[5][32];
    dm_ramp_stop st[5];
    for (int i = 0; i < 5; i++) {
        double v = lo + (hi - lo) * i / 4.0;
        snprintf(lab[i], sizeof lab[i], "%.3g", v);
        st[i] = (dm_ramp_stop){ v, col[i], lab[i] };
    }
    char qml[4200];
    snprintf(qml, sizeof qml, "%s/similarity.qml", w->dir);
    if (!rc)
        rc = dm_gis_write_qml(qml, st, 5, err);
    if (!rc)
        snprintf(w->files, sizeof w->files, "%s similarity.qml", dm_out_files(o));
    dm_out_free(o);
    free(buf), free(out), free(dot), free(nn);
    return rc;
}

/* --- the recipe ------------------------------------------------------------------------------ */

/* Whether the features will have patch (col, row), by the engine's rules (engine.c): its tile
 * touches the --aoi, and at least half of its 16×16 px are valid (inside the mosaic, not
 * nodata, inside the AOI's polygons unless whole tiles are kept). */
static int point_valid(dm_eng *e, int col, int row, dm_err *err)
{
    const dm_run_opts *o = e->o;
    dm_window k = dm_grid_tile_core(&e->g, row / e->g.tp, col / e->g.tp);
    double ax = e->gt[0] + k.x * e->gt[1], bx = e->gt[0] + (k.x + k.w) * e->gt[1];
    double ay = e->gt[3] + k.y * e->gt[5], by = e->gt[3] + (k.y + k.h) * e->gt[5];
    int outside = e->aoi && !dm_aoi_touches(e->aoi, fmin(ax, bx), fmin(ay, by), fmax(ax, bx),
                                            fmax(ay, by));
    uint8_t rgb[3 * 256], valid[256];
    int rc = outside ? 0 : dm_mosaic_read(e->mo, col * 16, row * 16, 16, 16, rgb, valid, err);
    if (!rc && !outside && e->aoi && !o->aoi_whole_tiles)
        rc = dm_aoi_mask(e->aoi, e->gt, col * 16, row * 16, 16, 16, valid, err);
    int n = 0;
    for (int i = 0; !rc && !outside && i < 256; i++)
        n += valid[i];
    if (!rc && 2 * n < 256)
        rc = dm_err_set(err, DM_EINVAL, "--at %.10g,%.10g: the patch there (row %d, col %d of the "
                        "features) is nodata (%s); choose a point on mapped imagery", o->query.x,
                        o->query.y, row, col, outside ? "its tile lies outside the --aoi"
                        : "fewer than half of its 16×16 px are valid input pixels");
    return rc;
}

/* Run mode: no window work; the query is checked against the grid now (a point outside the
 * mosaic or on nodata, an AOI with no patch centre inside: refused before anything is written)
 * and recorded as the product's output setting. */
static int s_prepare(dm_eng *e, void **self, dm_err *err)
{
    const dm_sim_query *q = &e->o->query;
    *self = NULL;
    simq m = { .s = { .g = &e->g, .D = e->D, .fw = e->g.fw, .fh = e->g.fh, .wkt = e->wkt },
               .query = *q };
    double fgt[6] = { e->gt[0], e->gt[1] * 16, 0, e->gt[3], 0, e->gt[5] * 16 };
    memcpy(m.s.fgt, fgt, sizeof fgt);
    int rc = resolve(&m, err);
    if (!rc && q->at_set)
        rc = point_valid(e, m.col, m.row, err);
    if (rc)
        return rc;
    cJSON *j = cJSON_AddObjectToObject(e->outset, "similarity");
    if (q->at_set) {
        double at[2] = { q->x, q->y };
        cJSON_AddItemToObject(j, "at", cJSON_CreateDoubleArray(at, 2));
    }
    if (q->srs)
        cJSON_AddStringToObject(j, "srs", q->srs);
    if (q->aoi) {
        cJSON_AddStringToObject(j, "query_aoi", q->aoi);
        cJSON_AddStringToObject(j, "query_aoi_sha256", m.aoi_sha);
    }
    return 0;
}

static void s_free(void *self) { (void)self; }

static int s_job_alloc(void *self, void **pd, dm_err *err)
{
    (void)self, (void)err;
    *pd = NULL;
    return 0;
}

static void s_job_free(void *self, void *pd) { (void)self, (void)pd; }

static int s_infer(void *self, dm_wjob *j, void *pd, const dm_tokens *t, dm_err *err)
{
    (void)self, (void)j, (void)pd, (void)t, (void)err;
    return 0;
}

static int s_chunk_begin(void *self, int chunk, dm_err *err)
{
    (void)self, (void)chunk, (void)err;
    return 0;
}

static int s_write(void *self, const dm_wjob *j, const void *pd, dm_err *err)
{
    (void)self, (void)j, (void)pd, (void)err;
    return 0;
}

static int s_chunk_end(void *self, int chunk, int any_done, char *file, size_t n,
                       const dm_sample **samples, int *nsamples, int *sdim, dm_err *err)
{
    (void)self, (void)chunk, (void)any_done, (void)n, (void)samples, (void)nsamples;
    (void)sdim, (void)err;
    file[0] = '\0'; /* no file of its own: it reads the features' */
    return 0;
}

int dm_sim_fin_begin(dm_fin *f, dm_err *err)
{
    const cJSON *sj = cJSON_GetObjectItemCaseSensitive(f->outset, "similarity");
    const cJSON *dj = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(f->res, "features"), "dim");
    if (!cJSON_IsObject(sj))
        return dm_err_set(err, DM_EINVAL, "%s: no similarity query recorded; run dinomap "
                          "similarity on the folder with --at X,Y or --query-aoi FILE", f->outdir);
    if (!cJSON_IsNumber(dj))
        return dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: the features settings are missing "
                          "from its configuration; is this a dinomap run folder?", f->outdir);
    simq *m = calloc(1, sizeof *m);
    if (!m || !(m->keep = cJSON_Duplicate(sj, 1))) {
        free(m);
        return dm_err_oom(err);
    }
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(m->keep, "at");
    if (cJSON_IsArray(at) && cJSON_GetArraySize(at) == 2) {
        m->query.at_set = 1;
        m->query.x = cJSON_GetArrayItem(at, 0)->valuedouble;
        m->query.y = cJSON_GetArrayItem(at, 1)->valuedouble;
    }
    m->query.srs = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->keep, "srs"));
    m->query.aoi = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->keep, "query_aoi"));
    src *s = &m->s;
    *s = (src){ .g = &f->g, .fi = f, .D = dj->valueint, .fw = f->g.fw, .fh = f->g.fh,
                .wkt = f->wkt };
    double fgt[6] = { f->gt[0], f->gt[1] * 16, 0, f->gt[3], 0, f->gt[5] * 16 };
    memcpy(s->fgt, fgt, sizeof fgt);
    char *dropped = NULL;
    int rc = dm_tileindex_config_get(f->ti, "chunks_dropped", &dropped, err);
    if (!rc && dropped && !strcmp(dropped, "1")) {
        /* the chunks were deleted after the last finalize: the run's own features raster holds
         * the same vectors (to int8's step when quantized) */
        if (!(rc = dm_gis_feat_open(f->outdir, "features", &s->fr, err))) {
            int w, h, nb;
            double gt[6];
            const char *wkt;
            dm_gis_feat_info(s->fr, &w, &h, &nb, gt, &wkt, &s->block);
            if (w != s->fw || h != s->fh || nb != s->D)
                rc = dm_err_set(err, DM_EFORMAT, "%s: the features raster is not the run's "
                                "(%d×%d×%d, the run %d×%d×%d)", f->outdir, w, h, nb, s->fw,
                                s->fh, s->D);
        }
    }
    free(dropped);
    if (!rc && (rc = dm_sim_query_check(&m->query, err)) == 0)
        rc = resolve(m, err);
    if (rc) {
        simq_free(m);
        return rc;
    }
    f->sim = m;
    return 0;
}

void dm_sim_fin_end(dm_fin *f)
{
    simq_free(f->sim);
    f->sim = NULL;
}

static int s_finalize(dm_fin *fi, dm_err *err)
{
    simq *m = fi->sim;
    if (!m)
        return dm_err_set(err, DM_EINVAL, "similarity: the query was not resolved (a bug)");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(fi->res, "features");
    const char **fmeta = dm_json_strings(cJSON_GetObjectItemCaseSensitive(r, "meta"));
    char **meta = fmeta ? meta_lines(m, fmeta, m->s.fr ? "the run's features raster (its chunks "
                                     "were dropped)" : "the run's feature chunks") : NULL;
    free(fmeta);
    if (!meta)
        return dm_err_oom(err);
    dm_run_events none = { 0 };
    wctx w = { .dir = fi->outdir, .max_bytes = fi->max_bytes, .co = fi->cog_co,
               .cancel = fi->cancel, .ev = fi->ev ? fi->ev : &none, .stage = "finalize" };
    int rc = write_map(m, (const char *const *)meta, &w, err);
    lines_free(meta);
    if (!rc) {
        size_t o = strlen(fi->outputs);
        snprintf(fi->outputs + o, sizeof fi->outputs - o, "%s%s", o ? " " : "", w.files);
        if (!fi->report)
            fi->report = cJSON_CreateObject();
        if (fi->report)
            cJSON_AddItemToObject(fi->report, "similarity", report(m, w.lo, w.hi));
    }
    return rc;
}

const dm_recipe dm_recipe_similarity = {
    "similarity", s_prepare, s_free, s_job_alloc, s_job_free, s_infer,
    s_chunk_begin, s_write, s_chunk_end, s_finalize,
};

/* --- without a run -------------------------------------------------------------------------- */

int dm_similarity(const dm_sim_opts *o, dm_run_result *res, dm_err *err)
{
    dm_run_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    if (!o->features || !o->outdir || !o->outdir[0])
        return dm_err_set(err, DM_EINVAL, "similarity: needs the features (--features) and an "
                          "output folder (-o)");
    int rc = dm_sim_query_check(&o->query, err);
    if (!rc && o->out.format != DM_OF_COG)
        rc = dm_err_set(err, DM_EINVAL, "-of %s: similarity.tif is a COG (leave -of out)",
                        dm_out_format_name(o->out.format));
    if (!rc)
        rc = dm_out_format_check(&o->out, err);
    char p[4200];
    snprintf(p, sizeof p, "%s/tiles.gpkg", o->outdir);
    if (!rc && dm_exists(p))
        rc = dm_err_set(err, DM_EINVAL, "%s is a run folder (tiles.gpkg): --features writes "
                        "into a folder of its own (another -o); a run's own similarity map comes "
                        "with the run (dinomap similarity -m ..., products = features, "
                        "similarity)", o->outdir);
    simq *m = rc ? NULL : calloc(1, sizeof *m);
    if (!rc && !m)
        rc = dm_err_oom(err);
    if (rc)
        return rc;
    m->query = o->query;
    src *s = &m->s;
    rc = dm_gis_feat_open(o->features, "features", &s->fr, err);
    if (!rc) {
        dm_gis_feat_info(s->fr, &s->fw, &s->fh, &s->D, s->fgt, &s->wkt, &s->block);
        rc = resolve(m, err);
    }
    /* the folder: created if missing (and removed again when nothing came of it) */
    dm_outdir claim = { 0 };
    if (!rc)
        rc = dm_outdir_claim(o->outdir, &claim, err);
    char **meta = NULL;
    if (!rc) {
        const char *name = dm_base_name(o->features);
        meta = meta_lines(m, dm_gis_feat_meta_list(s->fr), name[0] ? name : o->features);
        if (!meta)
            rc = dm_err_oom(err);
    }
    wctx w = { .dir = o->outdir, .max_bytes = o->max_cog_gib * 1073741824.0, .co = o->out.co,
               .cancel = o->cancel, .ev = &o->ev, .stage = "similarity" };
    if (!rc) {
        /* each block is written once: a small cache is plenty (as finalize) */
        int64_t cache = dm_gis_cache_set(0), small = (int64_t)64 << 20;
        dm_gis_cache_set(cache < small ? cache : small);
        rc = write_map(m, (const char *const *)meta, &w, err);
        dm_gis_cache_set(cache);
    }
    if (!rc)
        snprintf(res->outputs, sizeof res->outputs, "%s", w.files);
    lines_free(meta);
    simq_free(m);
    dm_outdir_release(o->outdir, &claim, rc != 0); /* nothing came of it: the folder goes */
    return rc;
}

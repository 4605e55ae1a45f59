/* tiling/change.c — `dinomap change`: where two dates' features differ. The cosine distance
 * 1 − cos(a, b) of every patch's two feature vectors (heads/similarity.c's sums), read a block and
 * a group of bands at a time from both rasters as the similarity map reads one, into change.tif
 * on A's grid; then the per-tile means and ranks (gis/change_tiles.c). The two must come from one
 * model; B on another grid (another CRS, origin, patch size or extent) is read warped onto A's
 * (gis/features_in.c: GDAL's warper, bilinear interpolation of the vectors by default). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

#define SLAB ((size_t)32 << 20) /* bytes of feature values read at once, both dates together */
#define TILE_PATCHES 32          /* the squares of change_tiles.gpkg without A's tile index */

static int gt_same(const double a[6], const double b[6])
{
    for (int i = 0; i < 6; i++) {
        double m = fabs(a[i]) > fabs(b[i]) ? fabs(a[i]) : fabs(b[i]);
        if (fabs(a[i] - b[i]) > 1e-9 * m)
            return 0;
    }
    return 1;
}

static int str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

/* One model; else what differs. */
static int same_model(const dm_change_opts *o, dm_gis_feat *fa, dm_gis_feat *fb, dm_err *err)
{
    int wa, ha, da, ba, wb, hb, db, bb;
    double ga[6], gb[6];
    const char *ka, *kb;
    dm_gis_feat_info(fa, &wa, &ha, &da, ga, &ka, &ba);
    dm_gis_feat_info(fb, &wb, &hb, &db, gb, &kb, &bb);
    if (da != db)
        return dm_err_set(err, DM_EINVAL, "change: %s has %d feature bands, %s %d: the two dates "
                          "must come from the same model", o->a, da, o->b, db);
    static const char *keys[3][2] = { { "DINOMAP_WEIGHTS_SHA256", "weights (-m)" },
                                      { "DINOMAP_LAYER", "layer (--layer)" },
                                      { "DINOMAP_NORMALIZATION", "normalization (--norm)" } };
    for (int i = 0; i < 3; i++) {
        const char *x = dm_gis_feat_meta(fa, keys[i][0]), *y = dm_gis_feat_meta(fb, keys[i][0]);
        if (!str_same(x, y))
            return dm_err_set(err, DM_EINVAL, "change: %s and %s differ in %s (%s: %s in A, %s in "
                              "B): features of different models or settings are not comparable; "
                              "map both dates with the same", o->a, o->b, keys[i][1], keys[i][0],
                              x ? x : "none", y ? y : "none");
    }
    return 0;
}

/* Bands read at once from each date for a block×block window: SLAB bytes for both. */
static int band_group(int block, int D)
{
    size_t g = SLAB / (2 * 4 * (size_t)block * block);
    return g < 1 ? 1 : g > (size_t)D ? D : (int)g;
}

static void grid_text(const dm_gis_feat *f, char *buf, size_t n)
{
    int w, h, d, bl;
    double gt[6];
    const char *wkt, *unit;
    char crs[400];
    dm_gis_feat_info(f, &w, &h, &d, gt, &wkt, &bl);
    dm_gis_crs_label(wkt, crs, sizeof crs, &unit);
    if (fabs(fabs(gt[1]) - fabs(gt[5])) <= 1e-9 * fabs(gt[1]))
        snprintf(buf, n, "%s, patches of %.6g%s, %d×%d, origin %.10g,%.10g", crs, gt[1], unit, w,
                 h, gt[0], gt[3]);
    else
        snprintf(buf, n, "%s, patches of %.6g×%.6g%s, %d×%d, origin %.10g,%.10g", crs, gt[1],
                 fabs(gt[5]), unit, w, h, gt[0], gt[3]);
}

/* B onto A's grid: as it is when the two share it (the same CRS, however written, size and
 * geotransform); else *fb becomes B warped onto A's grid, said in a notice and in how (empty when
 * not warped). Refused: one of them without a CRS, or no overlap. */
static int onto_a(const dm_change_opts *o, dm_gis_feat *fa, dm_gis_feat **fb, char *how,
                  size_t n, dm_err *err)
{
    int wa, ha, da, bla, wb, hb, db, blb;
    double ga[6], gb[6];
    const char *ka, *kb;
    dm_gis_feat_info(fa, &wa, &ha, &da, ga, &ka, &bla);
    dm_gis_feat_info(*fb, &wb, &hb, &db, gb, &kb, &blb);
    how[0] = '\0';
    int same = dm_gis_crs_same(ka, kb);
    if (same < 0)
        return dm_err_set(err, DM_EFORMAT, "change: %s or %s has a CRS GDAL cannot read",
                          o->a, o->b);
    if (same && wa == wb && ha == hb && gt_same(ga, gb))
        return 0;
    if (!ka[0] || !kb[0])
        return dm_err_set(err, DM_EINVAL, "change: %s and %s are on different grids and %s has no "
                          "CRS (an ungeoreferenced run): B can be warped onto A only when both "
                          "are georeferenced; map both dates with a CRS, or both on one grid",
                          o->a, o->b, !ka[0] ? o->a : o->b);
    double a[4] = { fmin(ga[0], ga[0] + wa * ga[1]), fmin(ga[3], ga[3] + ha * ga[5]),
                    fmax(ga[0], ga[0] + wa * ga[1]), fmax(ga[3], ga[3] + ha * ga[5]) }, b[4];
    int rc = dm_gis_feat_extent_in(*fb, ka, b, err);
    if (rc)
        return rc;
    char ta[700], tb[700];
    grid_text(fa, ta, sizeof ta);
    grid_text(*fb, tb, sizeof tb);
    /* (B's x range reversed: it crosses the antimeridian; its y range decides) */
    int x_overlap = b[0] > b[2] || fmin(a[2], b[2]) > fmax(a[0], b[0]);
    if (!(x_overlap && fmin(a[3], b[3]) > fmax(a[1], b[1])))
        return dm_err_set(err, DM_EINVAL, "change: %s and %s do not overlap: A covers x %.10g.."
                          "%.10g, y %.10g..%.10g and B x %.10g..%.10g, y %.10g..%.10g (in A's "
                          "CRS); give two dates of the same area (A: %s; B: %s)", o->a, o->b,
                          a[0], a[2], a[1], a[3], b[0], b[2], b[1], b[3], ta, tb);
    snprintf(how, n, "B (%s) is on another grid (%s) and was warped onto A's (%s), %s", o->b, tb,
             ta, o->nearest ? "nearest patch" : "bilinear interpolation of its feature vectors");
    rc = dm_gis_feat_warp(fb, wa, ha, ga, ka, o->nearest, bla, band_group(bla, da), err);
    if (!rc)
        dm_info("change: %s", how);
    return rc;
}

static char **meta_lines(const dm_change_opts *o, dm_gis_feat *fa, const char *how)
{
    char **l = calloc(14, sizeof *l);
    if (!l)
        return NULL;
    const char *sha = dm_gis_feat_meta(fa, "DINOMAP_WEIGHTS_SHA256");
    const char *lay = dm_gis_feat_meta(fa, "DINOMAP_LAYER");
    const char *nrm = dm_gis_feat_meta(fa, "DINOMAP_NORMALIZATION");
    const char *model = dm_gis_feat_meta(fa, "DINOMAP_MODEL");
    char buf[7][2400];
    int n = 0;
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_PRODUCT=change");
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_CHANGE=1 - cosine(A, B) of the patch features; "
             "nodata NaN where either date is nodata");
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_CHANGE_A=%s", dm_base_name(o->a));
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_CHANGE_B=%s", dm_base_name(o->b));
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_CHANGE_GRID=%s", how[0] ? how
             : "A's; B on the same grid (not warped)");
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_OVERVIEW_RESAMPLING=AVERAGE");
    snprintf(buf[n++], sizeof buf[0], "DINOMAP_VERSION=%s", DINOMAP_VERSION);
    for (int i = 0; i < n; i++)
        l[i] = strdup(buf[i]);
    const char *kv[4][2] = { { "DINOMAP_WEIGHTS_SHA256", sha }, { "DINOMAP_LAYER", lay },
                             { "DINOMAP_NORMALIZATION", nrm }, { "DINOMAP_MODEL", model } };
    int m = n;
    for (int i = 0; i < 4; i++)
        if (kv[i][1]) {
            size_t z = strlen(kv[i][0]) + strlen(kv[i][1]) + 2;
            if ((l[m] = malloc(z)))
                snprintf(l[m], z, "%s=%s", kv[i][0], kv[i][1]);
            m++;
        }
    for (int i = 0; i < m; i++)
        if (!l[i]) {
            for (int k = 0; k < m; k++)
                free(l[k]);
            free(l);
            return NULL;
        }
    return l;
}

/* change.tif (or change.vrt over block COGs) region by region, each by blocks of A, a group of
 * bands at a time; *hi: the largest value; raster: the file to read it back from. */
static int write_map(const dm_change_opts *o, dm_gis_feat *fa, dm_gis_feat *fb,
                     const char *const *meta, float *hi, char *raster, size_t nr,
                     char *files, size_t nf, dm_err *err)
{
    int W, H, D, block;
    double gt[6];
    const char *wkt;
    dm_gis_feat_info(fa, &W, &H, &D, gt, &wkt, &block);
    static const char *bname[1] = { "cosine_distance" };
    dm_out_spec os = { .dir = o->outdir, .name = "change", .width = W, .height = H, .bands = 1,
                       .nodata = NAN, .wkt = wkt, .meta = meta, .band_names = bname,
                       .resampling = "AVERAGE", .block_align = block,
                       .max_bytes = o->max_cog_gib * 1073741824.0, .co = o->out.co,
                       .cancel = o->cancel };
    memcpy(os.gt, gt, sizeof os.gt);
    dm_out *out = NULL;
    int rc = dm_out_create(&os, &out, err);
    size_t plane = (size_t)block * block;
    int nb = band_group(block, D); /* B warped reads by these groups too */
    float *a = malloc(plane * nb * sizeof *a), *b = malloc(plane * nb * sizeof *b);
    float *v = malloc(plane * sizeof *v);
    double *dot = malloc(plane * sizeof *dot), *na = malloc(plane * sizeof *na);
    double *nn = malloc(plane * sizeof *nn);
    if (!rc && (!a || !b || !v || !dot || !na || !nn))
        rc = dm_err_oom(err);
    *hi = -INFINITY;
    for (int ri = 0; !rc && ri < dm_out_nregions(out); ri++) {
        dm_region r = dm_out_region(out, ri);
        rc = dm_out_begin(out, ri, err);
        for (int y = r.y; !rc && y < r.y + r.h; y += block)
            for (int x = r.x; !rc && x < r.x + r.w; x += block) {
                int w = r.x + r.w - x < block ? r.x + r.w - x : block;
                int h = r.y + r.h - y < block ? r.y + r.h - y : block;
                size_t n = (size_t)w * h;
                memset(dot, 0, n * sizeof *dot);
                memset(na, 0, n * sizeof *na);
                memset(nn, 0, n * sizeof *nn);
                for (int b0 = 0; !rc && b0 < D; b0 += nb) {
                    int k = D - b0 < nb ? D - b0 : nb;
                    rc = dm_gis_feat_read(fa, b0, k, x, y, w, h, a, err);
                    if (!rc)
                        rc = dm_gis_feat_read(fb, b0, k, x, y, w, h, b, err);
                    if (!rc)
                        dm_sim_pair_accumulate(a, b, k, n, dot, na, nn);
                }
                if (rc)
                    break;
                dm_sim_distance_finish(dot, na, nn, n, v);
                for (size_t i = 0; i < n; i++)
                    if (!isnan(v[i]) && v[i] > *hi)
                        *hi = v[i];
                rc = dm_out_write(out, x, y, w, h, v, err);
                if (!rc && o->cancel && *o->cancel)
                    rc = dm_err_set(err, DM_EINTERRUPTED, "interrupted: nothing was written");
            }
        if (!rc)
            rc = dm_out_end(out, err);
    }
    if (!rc)
        rc = dm_out_commit(out, err);
    if (!rc) {
        snprintf(files, nf, "%s", dm_out_files(out));
        snprintf(raster, nr, "%s/change.%s", o->outdir, dm_out_block_side(out) ? "vrt" : "tif");
    }
    dm_out_free(out);
    free(a), free(b), free(v), free(dot), free(na), free(nn);
    return rc;
}

static int write_qml(const char *dir, float hi, dm_err *err)
{
    if (!(hi > 1e-6f))
        hi = 1;
    static const char *col[5] = { "#000004", "#51127c", "#b73779", "#fc8961", "#fcfdbf" };
    char lab[5][32];
    dm_ramp_stop st[5];
    for (int i = 0; i < 5; i++) {
        double v = hi * i / 4.0;
        snprintf(lab[i], sizeof lab[i], "%.3g", v);
        st[i] = (dm_ramp_stop){ v, col[i], lab[i] };
    }
    char p[4200];
    snprintf(p, sizeof p, "%s/change.qml", dir);
    return dm_gis_write_qml(p, st, 5, err);
}

int dm_change(const dm_change_opts *o, dm_run_result *res, dm_err *err)
{
    dm_run_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    if (!o->a || !o->b || !o->outdir || !o->outdir[0])
        return dm_err_set(err, DM_EINVAL, "change: needs two features outputs and -o OUTDIR");
    if (o->out.format != DM_OF_COG)
        return dm_err_set(err, DM_EINVAL, "-of %s: change.tif is a COG (leave -of out)",
                          dm_out_format_name(o->out.format));
    int rc = dm_out_format_check(&o->out, err);
    for (int i = 0; !rc && i < 2; i++) {
        const char *p = i ? o->b : o->a;
        if (!dm_exists(p))
            rc = dm_err_set(err, DM_EINVAL, "%s: no such file or folder (a dinomap features "
                            "run folder, features.tif or features.vrt)", p);
    }
    if (rc)
        return rc;
    char p[4200], tmp[4300];
    snprintf(p, sizeof p, "%s/tiles.gpkg", o->outdir);
    if (dm_exists(p))
        return dm_err_set(err, DM_EINVAL, "%s is a run folder (tiles.gpkg): change writes into a "
                          "folder of its own (another -o)", o->outdir);
    dm_gis_feat *fa = NULL, *fb = NULL;
    char how[2000] = "";
    rc = dm_gis_feat_open(o->a, "features", &fa, err);
    if (!rc)
        rc = dm_gis_feat_open(o->b, "features", &fb, err);
    if (!rc)
        rc = same_model(o, fa, fb, err);
    if (!rc)
        rc = onto_a(o, fa, &fb, how, sizeof how, err);
    dm_outdir claim = { 0 };
    if (!rc)
        rc = dm_outdir_claim(o->outdir, &claim, err);
    char **meta = rc ? NULL : meta_lines(o, fa, how);
    if (!rc && !meta)
        rc = dm_err_oom(err);
    float hi = 0;
    char raster[4200], files[600];
    if (!rc) {
        int64_t cache = dm_gis_cache_set(0), small = (int64_t)64 << 20;
        dm_gis_cache_set(cache < small ? cache : small);
        rc = write_map(o, fa, fb, (const char *const *)meta, &hi, raster, sizeof raster, files,
                       sizeof files, err);
        dm_gis_cache_set(cache);
    }
    if (!rc)
        rc = write_qml(o->outdir, hi, err);
    /* the tiles: A's own tile grid when it is a run folder */
    struct stat sa;
    char ti[4200];
    snprintf(ti, sizeof ti, "%s/tiles.gpkg", o->a);
    int has_index = stat(o->a, &sa) == 0 && S_ISDIR(sa.st_mode) && dm_exists(ti);
    snprintf(tmp, sizeof tmp, "%s/change_tiles.part.gpkg", o->outdir);
    dm_unlink_fresh(tmp);
    if (!rc)
        rc = dm_gis_change_tiles(raster, has_index ? ti : NULL, TILE_PATCHES, tmp, err);
    char dst[4300];
    snprintf(dst, sizeof dst, "%s/change_tiles.gpkg", o->outdir);
    if (!rc && rename(tmp, dst) != 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot rename into place", dst);
    if (rc)
        unlink(tmp);
    if (!rc)
        snprintf(res->outputs, sizeof res->outputs, "%s change.qml change_tiles.gpkg", files);
    if (meta)
        for (int i = 0; meta[i]; i++)
            free(meta[i]);
    free(meta);
    dm_gis_feat_close(fa);
    dm_gis_feat_close(fb);
    dm_outdir_release(o->outdir, &claim, rc != 0);
    return rc;
}

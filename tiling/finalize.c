/* tiling/finalize.c — building a run's final rasters from its done chunks (at the end of a
 * complete run, or `dinomap finalize OUTDIR`), run.json, and `dinomap status`. Finalize needs no
 * model: the grid, the CRS and every product's settings come from the index. It is up to date
 * when no chunk was committed since it last ran (the index's `gen` counter equals the
 * `finalized_gen` it recorded), the outputs it wrote are all there, and they were written with
 * the output format and creation options asked for now (`output_format`: another -of or -co
 * rebuilds the outputs from the chunks, nothing is recomputed). Output settings (the seg head, the
 * similarity query) are the same by product: the outputs record those they were built with
 * (`output_settings_built`), and when only they changed, only those products are rebuilt. */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

int dm_fin_step(dm_fin *f, dm_err *err)
{
    if (f->cancel && *f->cancel)
        return dm_err_set(err, DM_EINTERRUPTED, "interrupted during finalize: the chunks are kept; "
                          "run the same command (or dinomap finalize) again");
    if (f->fault && !strncmp(f->fault, "finalize:", 9) && ++f->fault_count == atoi(f->fault + 9))
        raise(SIGKILL);
    return 0;
}

int dm_fin_chunk_file(const dm_fin *f, int k, const char *product, char *path, size_t n,
                      dm_err *err)
{
    if (!f->done[k] || !f->files || !f->files[k])
        return 0;
    char rel[64];
    dm_chunk_rel(k, product, rel, sizeof rel);
    size_t len = strlen(rel);
    for (const char *s = f->files[k]; (s = strstr(s, rel)); s += len)
        if ((s == f->files[k] || s[-1] == ' ') && (s[len] == ' ' || !s[len])) {
            snprintf(path, n, "%s/%s", f->outdir, rel);
            if (!dm_exists(path))
                return dm_err_set(err, DM_EIO, "%s is gone, but the index lists it for chunk %d; "
                                  "run the mapping command again to redo that chunk", path, k);
            return 1;
        }
    return 0;
}

static long long config_ll(dm_tileindex *ti, const char *key, long long def)
{
    char *v = NULL;
    long long r = def;
    if (dm_tileindex_config_get(ti, key, &v, NULL) == 0 && v)
        r = atoll(v);
    free(v);
    return r;
}

/* 1 when the outputs match the chunks: nothing committed since finalize, its files all there,
 * built with the output-only settings recorded now. */
int dm_fin_uptodate(dm_tileindex *ti, const char *outdir)
{
    long long gen = config_ll(ti, "gen", 0), fg = config_ll(ti, "finalized_gen", -1);
    if (gen != fg)
        return 0;
    char *outs = NULL;
    if (dm_tileindex_config_get(ti, "outputs", &outs, NULL) || !outs)
        return 0;
    int ok = 1;
    char *save = NULL;
    for (char *t = strtok_r(outs, " ", &save); ok && t; t = strtok_r(NULL, " ", &save)) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", outdir, t);
        ok = dm_exists(p);
    }
    free(outs);
    return ok;
}

/* The output format as the index records it: {"format":"COG","co":["COMPRESS=ZSTD"]}. */
static char *format_json(const dm_out_format *f)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", dm_out_format_name(f->format));
    cJSON *co = cJSON_AddArrayToObject(j, "co");
    for (int i = 0; f->co && f->co[i]; i++)
        cJSON_AddItemToArray(co, cJSON_CreateString(f->co[i]));
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

/* 1 when the outputs were last written in format f (a folder from before -of/-co: the
 * defaults). */
static int same_format(dm_tileindex *ti, const dm_out_format *f)
{
    char *was = NULL, *now = format_json(f);
    dm_tileindex_config_get(ti, "output_format", &was, NULL);
    dm_out_format def = { DM_OF_COG, NULL };
    char *d = was ? NULL : format_json(&def);
    int same = now && (was || d) && !strcmp(now, was ? was : d);
    free(was), free(now), free(d);
    return same;
}

/* The format of the folder's last finalize, into f; its strings live in *keep (cJSON_Delete;
 * and free *co). Defaults when none is recorded. */
static int recorded_format(dm_tileindex *ti, dm_out_format *f, cJSON **keep, const char ***co,
                           dm_err *err)
{
    char *s = NULL;
    *keep = NULL, *co = NULL;
    f->format = DM_OF_COG, f->co = NULL;
    int rc = dm_tileindex_config_get(ti, "output_format", &s, err);
    if (rc || !s)
        return rc;
    *keep = cJSON_Parse(s);
    free(s);
    const cJSON *fm = cJSON_GetObjectItemCaseSensitive(*keep, "format");
    if (!cJSON_IsString(fm) || dm_out_format_parse(fm->valuestring) < 0 ||
        !(*co = dm_json_strings(cJSON_GetObjectItemCaseSensitive(*keep, "co"))))
        return dm_err_set(err, DM_EFORMAT, "the index's output_format is damaged");
    f->format = dm_out_format_parse(fm->valuestring);
    f->co = *co;
    return 0;
}

static int has_product(const cJSON *cfg, const char *name)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cfg, "products"))
    {
        if (cJSON_IsString(it) && !strcmp(it->valuestring, name))
            return 1;
    }
    return 0;
}

/* The Zarr copy of the features, from the COG (or the blocks' VRT) just written. */
static int fin_zarr(dm_fin *f, dm_err *err)
{
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/features.vrt", f->outdir);
    if (!dm_exists(src))
        snprintf(src, sizeof src, "%s/features.tif", f->outdir);
    snprintf(dst, sizeof dst, "%s/features.zarr", f->outdir);
    dm_info("finalize: features.zarr");
    int rc = dm_gis_write_zarr(src, dst, f->out.co, f->cancel, err);
    if (!rc) {
        size_t o = strlen(f->outputs);
        snprintf(f->outputs + o, sizeof f->outputs - o, "%sfeatures.zarr", o ? " " : "");
    }
    return rc;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int num(const cJSON *o, const char *key, double *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x))
        return -1;
    *v = x->valuedouble;
    return 0;
}

/* The grid, geotransform and CRS of a run, from its configuration. */
static int fin_grid(dm_fin *f, dm_err *err)
{
    double W, H, tile, halo, chunk;
    const cJSON *gt = cJSON_GetObjectItemCaseSensitive(f->res, "geotransform");
    const cJSON *wkt = cJSON_GetObjectItemCaseSensitive(f->res, "crs_wkt");
    if (num(f->res, "width", &W) || num(f->res, "height", &H) || num(f->cfg, "tile", &tile) ||
        num(f->cfg, "halo", &halo) || num(f->cfg, "chunk", &chunk) || !cJSON_IsArray(gt) ||
        cJSON_GetArraySize(gt) != 6 || !cJSON_IsString(wkt))
        return dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: its configuration lacks the grid; is "
                          "this a dinomap run folder?", f->outdir);
    for (int i = 0; i < 6; i++)
        f->gt[i] = cJSON_GetArrayItem(gt, i)->valuedouble;
    f->wkt = wkt->valuestring;
    return dm_grid_init(&f->g, (int)W, (int)H, (int)tile, (int)halo, (int)chunk, err);
}

/* The run's products as DM_PRODUCT_* bits; 0 with the message when one is unknown. */
static unsigned run_products(const dm_fin *f, dm_err *err)
{
    unsigned all = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(f->cfg, "products"))
    {
        unsigned p = cJSON_IsString(it) ? dm_product_from_name(it->valuestring) : 0;
        if (!p) {
            dm_err_set(err, DM_EFORMAT, "%s/tiles.gpkg: unknown product in its configuration",
                       f->outdir);
            return 0;
        }
        all |= p;
    }
    return all;
}

/* 1 when file (an entry of `outputs`) is one of product `name`'s: NAME.tif, NAME.vrt, NAME.qml,
 * NAME.zarr or NAME_blocks/. */
static int output_of(const char *file, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(file, name, n))
        return 0;
    const char *t = file + n;
    return !strcmp(t, ".tif") || !strcmp(t, ".vrt") || !strcmp(t, ".qml") ||
           !strcmp(t, ".zarr") || !strcmp(t, "_blocks/");
}

/* The products whose output settings differ from those their outputs were built with. */
static unsigned stale_settings(dm_tileindex *ti, const cJSON *cfg, const cJSON *outset)
{
    char *b = NULL;
    dm_tileindex_config_get(ti, "output_settings_built", &b, NULL);
    cJSON *built = b ? cJSON_Parse(b) : NULL;
    free(b);
    unsigned stale = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cfg, "products"))
    {
        if (!cJSON_IsString(it))
            continue;
        const cJSON *now = cJSON_GetObjectItemCaseSensitive(outset, it->valuestring);
        const cJSON *was = cJSON_GetObjectItemCaseSensitive(built, it->valuestring);
        if ((now || was) && !(now && was && cJSON_Compare(now, was, 1)))
            stale |= dm_product_from_name(it->valuestring);
    }
    cJSON_Delete(built);
    return stale;
}

/* Builds the outputs of the run's products (only: those of these products, the others' outputs
 * being up to date; 0: all); the index then records them. */
static int fin_build_products(dm_fin *f, dm_run_result *r, int drop, unsigned only, dm_err *err)
{
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(f->cfg, "products"), *it;
    long long gen = config_ll(f->ti, "gen", 0);
    unsigned all = run_products(f, err);
    int rc = all ? 0 : DM_EFORMAT;
    if (!rc && only) { /* the outputs that stay, as recorded */
        char *outs = NULL, *save = NULL;
        rc = dm_tileindex_config_get(f->ti, "outputs", &outs, err);
        for (char *t = outs ? strtok_r(outs, " ", &save) : NULL; t;
             t = strtok_r(NULL, " ", &save)) {
            int mine = 0;
            for (int i = 0; i < dm_nproducts; i++)
                mine |= (only & dm_products[i].bit) && output_of(t, dm_products[i].rec->name);
            size_t o = strlen(f->outputs);
            if (!mine)
                snprintf(f->outputs + o, sizeof f->outputs - o, "%s%s", o ? " " : "", t);
        }
        free(outs);
        /* int8 features left as they are were written without clipping (finalize fails
         * otherwise) */
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(f->cfg, "features_quantize");
        if (!(only & DM_PRODUCT_FEATURES) && cJSON_IsString(q) && !strcmp(q->valuestring, "int8"))
            f->int8_clipped = 0;
    }
    /* the similarity query's vector first: a query on nodata fails before any output is touched */
    if (!rc && (all & DM_PRODUCT_SIMILARITY) && (!only || (only & DM_PRODUCT_SIMILARITY)))
        rc = dm_sim_fin_begin(f, err);
    cJSON_ArrayForEach(it, pr)
    {
        if (rc)
            break;
        unsigned p = dm_product_from_name(it->valuestring);
        const dm_recipe *rec = dm_recipe_of(p);
        if (only && !(only & p))
            continue;
        dm_info("finalize: %s", rec->name);
        /* -co belongs to the COGs with -of COG, to the Zarr store with -of Zarr */
        f->cog_co = f->out.format == DM_OF_COG ? f->out.co : NULL;
        rc = rec->finalize(f, err);
        if (!rc && p == DM_PRODUCT_FEATURES && f->out.format == DM_OF_ZARR)
            rc = fin_zarr(f, err);
        if (rc)
            break;
    }
    dm_sim_fin_end(f);
    char g[32], *fj = rc ? NULL : format_json(&f->out), zarr[4200];
    snprintf(g, sizeof g, "%lld", gen);
    snprintf(zarr, sizeof zarr, "%s/features.zarr", f->outdir);
    if (!rc && f->out.format != DM_OF_ZARR) /* not left from an earlier -of Zarr */
        rc = dm_remove_tree(zarr, err);
    if (!rc)
        rc = fj ? dm_tileindex_config_set(f->ti, "output_format", fj, err) : dm_err_oom(err);
    free(fj);
    time_t t = time(NULL);
    struct tm tm;
    strftime(f->finished, sizeof f->finished, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    if (!rc)
        snprintf(r->outputs, sizeof r->outputs, "%s", f->outputs);
    /* run.json and item.json before the index says the outputs are up to date: a kill in
     * between makes the next run finalize again, and rewrite both */
    if (!rc)
        rc = dm_write_run_json(f, r, err);
    if (!rc)
        rc = dm_write_stac_item(f, err);
    if (!rc)
        rc = dm_tileindex_config_set(f->ti, "outputs", f->outputs, err);
    char *os = rc ? NULL : cJSON_PrintUnformatted(f->outset);
    if (!rc)
        rc = os ? dm_tileindex_config_set(f->ti, "output_settings_built", os, err)
                : dm_err_oom(err);
    free(os);
    if (!rc)
        rc = dm_tileindex_config_set(f->ti, "finalized_gen", g, err);
    if (!rc && drop) { /* recorded first: a kill half-way through the deletion is then known */
        char p[4200];
        snprintf(p, sizeof p, "%s/chunks", f->outdir);
        if (!(rc = dm_tileindex_config_set(f->ti, "chunks_dropped", "1", err)) &&
            !(rc = dm_tileindex_forget_files(f->ti, err)))
            rc = dm_remove_tree(p, err);
    }
    return rc;
}

/* Builds the outputs (see fin_build_products) with a small GDAL cache. */
static int fin_build(dm_fin *f, dm_run_result *r, int drop, unsigned only, dm_err *err)
{
    /* each block is written once: 64 MB of GDAL cache is plenty, and finalize's peak memory
     * then stays near it whatever the band count (measured: 256 MB → 600 MB peak, 64 → 400) */
    int64_t cache = dm_gis_cache_set(0), small = (int64_t)64 << 20;
    dm_gis_cache_set(cache < small ? cache : small);
    /* what the recipes tell run.json, by product name */
    int rc = (f->report = cJSON_CreateObject()) ? 0 : dm_err_oom(err);
    if (!rc)
        rc = fin_build_products(f, r, drop, only, err);
    dm_gis_cache_set(cache);
    cJSON_Delete(f->report);
    f->report = NULL;
    return rc;
}

static void counts_into(dm_tileindex *ti, const uint8_t *done, int nch, dm_run_result *r)
{
    int64_t c[5];
    if (dm_tileindex_counts(ti, c, NULL) == 0) {
        r->tiles_done = c[DM_TILE_DONE];
        r->tiles_total = c[0] + c[1] + c[2] + c[3] + c[4];
    }
    r->chunks_total = nch;
    r->chunks_left = 0;
    for (int k = 0; k < nch; k++)
        r->chunks_left += !done[k];
}

int dm_fin_run(const dm_run_opts *o, dm_tileindex *ti, const cJSON *cfg, const cJSON *res,
               const cJSON *outset, double t0, dm_run_result *r, dm_err *err)
{
    uint8_t *done = NULL;
    char **files = NULL;
    int n = 0, rc = dm_tileindex_chunks(ti, &done, &files, &n, err);
    if (rc)
        return rc;
    counts_into(ti, done, n, r);
    if (r->chunks_left) {
        dm_tileindex_chunks_free(done, files, n);
        return dm_err_set(err, DM_EIO, "%lld chunks are still to do (a bug: the pipeline ended "
                          "early)", (long long)r->chunks_left);
    }
    int same = same_format(ti, &o->out);
    if (!r->chunks_run && !r->chunks_reset && dm_fin_uptodate(ti, o->outdir) && !same) {
        char *dropped = NULL;
        dm_tileindex_config_get(ti, "chunks_dropped", &dropped, NULL);
        if (dropped && !strcmp(dropped, "1")) {
            /* the outputs are all that is left: recomputing them for a creation option is
             * --overwrite's to decide */
            dm_warn("the chunks were deleted after the last finalize (--drop-chunks): the outputs "
                    "keep their format and creation options; --overwrite recomputes them with "
                    "the new ones");
            same = 1;
        }
        free(dropped);
    }
    unsigned only = 0; /* the outputs are up to date but for these products' output settings */
    if (!r->chunks_run && !r->chunks_reset && dm_fin_uptodate(ti, o->outdir) && same &&
        !(only = stale_settings(ti, cfg, outset))) {
        r->nothing_to_do = 1;
        dm_tileindex_chunks_free(done, files, n);
        return 0;
    }
    dm_fin f = { .outdir = o->outdir, .ti = ti, .done = done, .files = files, .cfg = cfg,
                 .res = res, .outset = outset, .max_bytes = o->max_cog_gib * 1073741824.0,
                 .out = o->out, .threads = o->threads, .cancel = o->cancel, .ev = &o->ev,
                 .fault = o->fault, .t0 = t0, .int8_clipped = -1 };
    rc = fin_grid(&f, err);
    if (!rc)
        rc = fin_build(&f, r, o->drop_chunks, only, err);
    dm_tileindex_chunks_free(done, files, n);
    return rc;
}

int dm_run_finalize(const char *outdir, const dm_finalize_opts *o, dm_run_result *r,
                    dm_err *err)
{
    dm_run_result dummy;
    if (!r)
        r = &dummy;
    memset(r, 0, sizeof *r);
    char index[4200];
    snprintf(index, sizeof index, "%s/tiles.gpkg", outdir);
    if (!dm_exists(index))
        return dm_err_set(err, DM_EINVAL, "%s: not a dinomap run folder (no tiles.gpkg)", outdir);
    dm_lock *lock = NULL;
    int rc = dm_lock_dir(outdir, &lock, err);
    if (rc)
        return rc;
    rc = dm_fin_folder(outdir, o, r, err);
    dm_unlock(lock);
    if (rc && rc != DM_EINTERRUPTED)
        dm_err_space_hint(err, outdir);
    return rc;
}

int dm_fin_folder(const char *outdir, const dm_finalize_opts *o, dm_run_result *r, dm_err *err)
{
    double t0 = now();
    char index[4200];
    snprintf(index, sizeof index, "%s/tiles.gpkg", outdir);
    int rc = 0;
    dm_tileindex *ti = NULL;
    char *c = NULL, *rs = NULL;
    cJSON *cfg = NULL, *res = NULL;
    uint8_t *done = NULL;
    char **files = NULL;
    int n = 0;
    dm_out_format of = { DM_OF_COG, NULL };
    cJSON *of_keep = NULL, *outset = NULL;
    const char **of_co = NULL;
    rc = dm_tileindex_open(index, "{\"command\":\"finalize\"}", 0, &ti, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "resolved", &rs, err);
    if (!rc && (!c || !rs || !(cfg = cJSON_Parse(c)) || !(res = cJSON_Parse(rs))))
        rc = dm_err_set(err, DM_EFORMAT, "%s: holds no dinomap run configuration", index);
    char *os = NULL; /* the output settings the last run asked for (a folder from before them:
                      * none) */
    if (!rc)
        rc = dm_tileindex_config_get(ti, "output_settings", &os, err);
    if (!rc && !(outset = os ? cJSON_Parse(os) : cJSON_CreateObject()))
        rc = dm_err_set(err, DM_EFORMAT, "%s: its output_settings are damaged", index);
    free(os);
    if (!rc)
        rc = dm_tileindex_chunks(ti, &done, &files, &n, err);
    if (!rc) {
        counts_into(ti, done, n, r);
        if (r->chunks_left)
            dm_warn("%lld of %lld chunks are not done yet: their area is nodata in the outputs "
                    "(run the mapping command again to finish them)", (long long)r->chunks_left,
                    (long long)n);
    }
    char *dropped = NULL;
    if (!rc)
        rc = dm_tileindex_config_get(ti, "chunks_dropped", &dropped, err);
    if (!rc && dropped && !strcmp(dropped, "1"))
        rc = dm_err_set(err, DM_EINVAL, "%s: the chunks were deleted after the last finalize "
                        "(--drop-chunks); the outputs cannot be rebuilt from them. Run the "
                        "mapping command again to recompute", outdir);
    free(dropped);
    if (!rc && o && o->out_set)
        of = o->out;
    else if (!rc)
        rc = recorded_format(ti, &of, &of_keep, &of_co, err);
    if (!rc && of.format == DM_OF_ZARR && !has_product(cfg, "features"))
        rc = dm_err_set(err, DM_EINVAL, "-of Zarr: only the features have a Zarr output, and "
                        "this run has none");
    if (!rc) {
        double run_max = 16;
        num(res, "max_cog_gib", &run_max);
        dm_fin f = { .outdir = outdir, .ti = ti, .done = done, .files = files, .cfg = cfg,
                     .res = res, .outset = outset,
                     .max_bytes = (o && o->max_cog_gib >= 0 ? o->max_cog_gib : run_max) *
                                  1073741824.0, .out = of,
                     .threads = o ? o->threads : 0, .cancel = o ? o->cancel : NULL,
                     .ev = o ? &o->ev : NULL, .fault = o ? o->fault : NULL, .t0 = t0,
                     .int8_clipped = -1 };
        dm_run_events none = { 0 };
        if (!f.ev)
            f.ev = &none;
        rc = fin_grid(&f, err);
        r->seconds = now() - t0;
        if (!rc)
            rc = fin_build(&f, r, o && o->drop_chunks, 0, err);
    }
    if (ti)
        dm_tileindex_end_run(ti, rc ? (rc == DM_EINTERRUPTED ? "interrupted" : "failed")
                                    : "finalized", NULL);
    dm_tileindex_chunks_free(done, files, n);
    dm_tileindex_close(ti, NULL);
    cJSON_Delete(cfg), cJSON_Delete(res), cJSON_Delete(of_keep), cJSON_Delete(outset);
    free(c), free(rs), free(of_co);
    r->seconds = now() - t0;
    return rc;
}

int dm_write_run_json(dm_fin *f, const dm_run_result *r, dm_err *err)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "tool", "dinomap");
    cJSON_AddStringToObject(j, "version", DINOMAP_VERSION);
    cJSON_AddStringToObject(j, "finalized", f->finished);
    cJSON_AddItemToObject(j, "products",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(f->cfg, "products"), 1));
    char *cs = NULL;
    dm_tileindex_config_get(f->ti, "config_sha256", &cs, NULL);
    cJSON_AddStringToObject(j, "config_sha256", cs ? cs : "");
    free(cs);
    cJSON_AddItemToObject(j, "config", cJSON_Duplicate(f->cfg, 1));
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(f->res, "weights");
    cJSON *m = cJSON_AddObjectToObject(j, "model");
    /* by name (older runs stored the path as given) */
    cJSON_AddStringToObject(m, "weights", cJSON_IsString(w) ? dm_base_name(w->valuestring) : "");
    cJSON_AddItemToObject(m, "sha256", cJSON_Duplicate(
                                           cJSON_GetObjectItemCaseSensitive(f->cfg,
                                                                            "weights_sha256"), 1));
    cJSON_AddItemToObject(m, "arch",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(f->cfg, "arch"), 1));
    cJSON_AddItemToObject(j, "scaling",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(f->res, "scaling"), 1));
    cJSON *g = cJSON_AddObjectToObject(j, "grid");
    cJSON_AddNumberToObject(g, "width_px", f->g.W);
    cJSON_AddNumberToObject(g, "height_px", f->g.H);
    cJSON_AddNumberToObject(g, "features_width", f->g.fw);
    cJSON_AddNumberToObject(g, "features_height", f->g.fh);
    cJSON_AddNumberToObject(g, "window_px", f->g.S);
    cJSON_AddNumberToObject(g, "tiles", dm_grid_ntiles(&f->g));
    cJSON_AddNumberToObject(g, "chunks", dm_grid_nchunks(&f->g));
    int64_t c[5] = { 0 };
    dm_tileindex_counts(f->ti, c, NULL);
    cJSON *tl = cJSON_AddObjectToObject(j, "tiles");
    for (int s = DM_TILE_PENDING; s <= DM_TILE_FAILED; s++)
        cJSON_AddNumberToObject(tl, dm_tile_state_name((dm_tile_state)s), (double)c[s]);
    cJSON_AddStringToObject(j, "outputs", f->outputs);
    if (f->int8_clipped >= 0) {
        cJSON *q = cJSON_AddObjectToObject(j, "int8");
        cJSON_AddStringToObject(q, "scale", "per band: its largest |value| / 127");
        cJSON_AddNumberToObject(q, "clipped_values", (double)f->int8_clipped);
    }
    const cJSON *rp;
    cJSON_ArrayForEach(rp, f->report) /* the products' own facts (the seg head, the query) */
    {
        cJSON_AddItemToObject(j, rp->string, cJSON_Duplicate(rp, 1));
    }
    cJSON *of = cJSON_AddObjectToObject(j, "output_format");
    cJSON_AddStringToObject(of, "format", dm_out_format_name(f->out.format));
    cJSON *co = cJSON_AddArrayToObject(of, "co");
    for (int i = 0; f->out.co && f->out.co[i]; i++)
        cJSON_AddItemToArray(co, cJSON_CreateString(f->out.co[i]));
    /* this invocation */
    cJSON *tm = cJSON_AddObjectToObject(j, "timings");
    double secs = f->t0 > 0 ? now() - f->t0 : r->seconds,
           area = (double)r->tiles_run * f->g.tile * f->g.tile * fabs(f->gt[1] * f->gt[5]) / 1e6;
    const cJSON *geo = cJSON_GetObjectItemCaseSensitive(f->res, "georeferenced");
    cJSON_AddNumberToObject(tm, "tiles_run", (double)r->tiles_run);
    cJSON_AddNumberToObject(tm, "seconds_total", secs);
    cJSON_AddNumberToObject(tm, "seconds_model", r->seconds_model);
    cJSON_AddNumberToObject(tm, "tiles_per_s", secs > 0 ? r->tiles_run / secs : 0);
    cJSON_AddNumberToObject(tm, "km2_per_h",
                            secs > 0 && cJSON_IsTrue(geo) ? area / secs * 3600 : 0);
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    if (!s)
        return dm_err_oom(err);
    char p[4200];
    snprintf(p, sizeof p, "%s/run.json", f->outdir);
    size_t len = strlen(s);
    s[len] = '\0';
    char *s2 = realloc(s, len + 2);
    if (s2) {
        s = s2;
        s[len] = '\n';
        s[len + 1] = '\0';
        len++;
    }
    int rc = dm_write_file_atomic(p, s, len, err);
    free(s);
    return rc;
}

/* What each file of a run is, for item.json: by name without extension (X.tif, X.vrt,
 * X_blocks/); anything else by its full name. */
static const struct {
    const char *stem, *key, *title, *roles;
    int eo;
} kinds[] = {
    { "features", "features", "DINOv3 patch features: one pixel per 16 x 16 px patch, a band per "
      "dimension", "data", 0 },
    { "features_pca", "features_pca", "colour preview of the features: their first three "
      "principal components", "visual", 1 },
    { "chm", "chm", "canopy height (CHMv2), metres above ground", "data", 0 },
    { "chm.qml", "chm_style", "QGIS style of chm (pseudocolour height ramp)", "style", 0 },
    { "similarity", "similarity", "cosine similarity of each patch's features to the query: one "
      "pixel per 16 x 16 px patch", "data", 0 },
    { "similarity.qml", "similarity_style", "QGIS style of similarity (pseudocolour ramp)",
      "style", 0 },
    { "seg", "seg", "segmentation classes (uint8 class ids of the head; 255 nodata), colour "
      "table and class names (RAT)", "data", 0 },
    { "seg_probabilities", "seg_probabilities", "segmentation class probabilities: a band per "
      "class (softmax of the logits)", "data", 0 },
    { "seg.qml", "seg_style", "QGIS style of seg (paletted: the classes' colours and names)",
      "style", 0 },
    { "cluster.dmseg", "seg_head", "the k-means head the classes came from (.dmseg: "
      "safetensors)", "metadata", 0 },
    { "tiles.gpkg", "tiles", "tile index (GeoPackage): tile footprints and states, per-tile "
      "embeddings, the run's configuration and invocations", "metadata", 0 },
    { "run.json", "run", "the run: configuration, model, grid, timings", "metadata", 0 },
};

int dm_write_stac_item(dm_fin *f, dm_err *err)
{
    char files[1100], titles[16][256];
    snprintf(files, sizeof files, "%s tiles.gpkg run.json", f->outputs);
    dm_stac_asset as[16];
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(files, " ", &save); t && n < 16; t = strtok_r(NULL, " ", &save)) {
        size_t len = strlen(t), stem = len;
        const char *dot = strrchr(t, '.');
        int folder = len > 8 && !strcmp(t + len - 8, "_blocks/");
        if (folder)
            stem = len - 8;
        else if (dot && !strchr(t, '/') && (!strcmp(dot, ".tif") || !strcmp(dot, ".vrt")))
            stem = (size_t)(dot - t);
        as[n] = (dm_stac_asset){ .key = t, .href = t, .roles = "data" };
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            if (strlen(kinds[k].stem) == stem && !strncmp(kinds[k].stem, t, stem)) {
                as[n].key = kinds[k].key, as[n].roles = kinds[k].roles;
                as[n].eo = kinds[k].eo, as[n].title = kinds[k].title;
            }
        if (folder) {
            snprintf(titles[n], sizeof titles[n], "block of %.*s.vrt", (int)stem, t);
            as[n].title = titles[n];
        } else if (dot && !strcmp(dot, ".vrt") && as[n].title) {
            snprintf(titles[n], sizeof titles[n], "%s (GDAL VRT mosaic of the blocks in "
                     "%.*s_blocks/)", as[n].title, (int)stem, t);
            as[n].title = titles[n];
        }
        n++;
    }
    /* the id: the run folder's name */
    char real[4200], id[256];
    const char *dir = realpath(f->outdir, real) ? real : f->outdir;
    snprintf(id, sizeof id, "%s", dm_base_name(dir));
    size_t il = strlen(id);
    while (il && id[il - 1] == '/')
        id[--il] = '\0';
    if (!il)
        snprintf(id, sizeof id, "dinomap-run");
    /* dinomap's own properties: the weights by name and SHA-256, never by path */
    cJSON *p = cJSON_CreateObject();
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(f->res, "weights");
    cJSON_AddStringToObject(p, "dinomap:version", DINOMAP_VERSION);
    cJSON_AddItemToObject(p, "dinomap:products",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(f->cfg, "products"), 1));
    cJSON_AddStringToObject(p, "dinomap:weights",
                            cJSON_IsString(w) ? dm_base_name(w->valuestring) : "");
    static const char *keys[][2] = { { "weights_sha256", "dinomap:weights_sha256" },
                                     { "chm_head_sha256", "dinomap:head_sha256" },
                                     { "arch", "dinomap:arch" } };
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->cfg, keys[k][0]);
        if (cJSON_IsString(v))
            cJSON_AddStringToObject(p, keys[k][1], v->valuestring);
    }
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(f->report, "seg"), "head_sha256");
    if (cJSON_IsString(sh))
        cJSON_AddStringToObject(p, "dinomap:seg_head_sha256", sh->valuestring);
    char *cs = NULL;
    dm_tileindex_config_get(f->ti, "config_sha256", &cs, NULL);
    if (cs)
        cJSON_AddStringToObject(p, "dinomap:config_sha256", cs);
    free(cs);
    if (f->int8_clipped >= 0)
        cJSON_AddNumberToObject(p, "dinomap:int8_clipped", (double)f->int8_clipped);
    char *props = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    if (!props)
        return dm_err_oom(err);
    dm_stac_spec s = { .dir = f->outdir, .id = id, .datetime = f->finished, .assets = as,
                       .nassets = n, .properties = props };
    int rc = dm_gis_write_stac(&s, err);
    free(props);
    return rc;
}

int dm_run_status(const char *outdir, char **json, dm_err *err)
{
    *json = NULL;
    char index[4200];
    snprintf(index, sizeof index, "%s/tiles.gpkg", outdir);
    if (!dm_exists(index))
        return dm_err_set(err, DM_EINVAL, "%s: not a dinomap run folder (no tiles.gpkg)", outdir);
    dm_tileindex *ti = NULL;
    int rc = dm_tileindex_open(index, NULL, 0, &ti, err);
    char *c = NULL, *outs = NULL;
    uint8_t *done = NULL;
    char **files = NULL;
    int n = 0;
    int64_t cnt[5] = { 0 };
    if (!rc)
        rc = dm_tileindex_config_get(ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_chunks(ti, &done, &files, &n, err);
    if (!rc)
        rc = dm_tileindex_counts(ti, cnt, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "outputs", &outs, err);
    /* cfg is parsed only for j, which takes it: a failed read above must not leak it */
    cJSON *j = rc ? NULL : cJSON_CreateObject(), *cfg = j && c ? cJSON_Parse(c) : NULL;
    if (j) {
        cJSON_AddStringToObject(j, "outdir", outdir);
        if (cfg)
            cJSON_AddItemToObject(j, "config", cfg);
        cJSON *t = cJSON_AddObjectToObject(j, "tiles");
        for (int s = 0; s < 5; s++)
            cJSON_AddNumberToObject(t, dm_tile_state_name((dm_tile_state)s), (double)cnt[s]);
        int nd = 0;
        for (int k = 0; k < n; k++)
            nd += done[k];
        cJSON *ch = cJSON_AddObjectToObject(j, "chunks");
        cJSON_AddNumberToObject(ch, "total", n);
        cJSON_AddNumberToObject(ch, "done", nd);
        cJSON_AddNumberToObject(ch, "left", n - nd);
        cJSON_AddBoolToObject(j, "complete", nd == n);
        /* a shard: its own chunks, and what is left of them */
        char *sh = NULL;
        dm_tileindex_config_get(ti, "shard", &sh, NULL);
        cJSON *rec = sh ? cJSON_Parse(sh) : NULL;
        const char *ranges = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "chunks"));
        uint8_t *own = ranges && n > 0 ? calloc((size_t)n, 1) : NULL;
        if (own && !dm_ranges_parse(ranges, own, n)) {
            int mine = 0, left = 0;
            for (int k = 0; k < n; k++)
                mine += own[k], left += own[k] && !done[k];
            cJSON_AddNumberToObject(rec, "chunks_total", mine);
            cJSON_AddNumberToObject(rec, "chunks_left", left);
            cJSON_AddBoolToObject(rec, "complete", left == 0);
            cJSON_AddItemToObject(j, "shard", rec);
            rec = NULL;
        }
        free(own), free(sh);
        cJSON_Delete(rec);
        cJSON_AddBoolToObject(j, "outputs_up_to_date", dm_fin_uptodate(ti, outdir));
        cJSON_AddStringToObject(j, "outputs", outs ? outs : "");
        char *cs = NULL;
        dm_tileindex_config_get(ti, "config_sha256", &cs, NULL);
        cJSON_AddStringToObject(j, "config_sha256", cs ? cs : "");
        free(cs);
        int nruns = 0;
        char started[64] = "", status[1100] = "";
        if (dm_tileindex_last_run(ti, &nruns, started, sizeof started, status, sizeof status,
                                  NULL) == 0) {
            cJSON *rr = cJSON_AddObjectToObject(j, "runs");
            cJSON_AddNumberToObject(rr, "invocations", nruns);
            cJSON_AddStringToObject(rr, "last_started", started);
            cJSON_AddStringToObject(rr, "last_status", status);
        }
        *json = cJSON_Print(j);
        cJSON_Delete(j);
        if (!*json)
            rc = dm_err_oom(err);
    } else if (!rc) {
        cJSON_Delete(cfg);
        rc = dm_err_oom(err);
    }
    dm_tileindex_chunks_free(done, files, n);
    dm_tileindex_close(ti, NULL);
    free(c), free(outs);
    return rc;
}

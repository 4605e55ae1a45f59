/* tiling/config.c — a run's configuration as JSON: building it, comparing a resumed run's with the
 * folder's, and small JSON helpers of the engine. The configuration is one flat object of the
 * settings that change pixels (see engine.c and the recipes); its SHA-256 is the config hash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

cJSON *dm_json_ints(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

const char **dm_json_strings(const cJSON *arr)
{
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    const char **s = calloc((size_t)n + 1, sizeof *s);
    for (int i = 0; s && i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(arr, i);
        s[i] = cJSON_IsString(x) ? x->valuestring : "";
    }
    return s;
}

const char *dm_base_name(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') /* a folder (Hugging Face weights): "name/" */
        n--;
    while (n > 0 && p[n - 1] != '/')
        n--;
    return p + n;
}

/* A value as short text for a message (long strings such as hashes are cut). */
static void show(const cJSON *v, char *buf, size_t n)
{
    if (!v) {
        snprintf(buf, n, "(not set)");
        return;
    }
    char *s = cJSON_PrintUnformatted(v);
    if (!s) {
        snprintf(buf, n, "?");
        return;
    }
    size_t len = strlen(s);
    if (len > 60)
        snprintf(buf, n, "%.24s…%s", s, s + len - 12);
    else
        snprintf(buf, n, "%s", s);
    free(s);
}

int dm_config_diff(const cJSON *now, const cJSON *stored, char *msg, size_t n)
{
    return dm_config_diff_as(now, stored, "now", "in the folder's run", msg, n);
}

int dm_config_diff_as(const cJSON *now, const cJSON *stored, const char *la, const char *lb,
                      char *msg, size_t n)
{
    int nd = 0;
    size_t o = 0;
    msg[0] = '\0';
    /* every key of either side, in the order of `now`, then keys only the folder has */
    const cJSON *sides[2] = { now, stored };
    for (int s = 0; s < 2; s++) {
        const cJSON *it;
        cJSON_ArrayForEach(it, sides[s])
        {
            const cJSON *a = cJSON_GetObjectItemCaseSensitive(now, it->string);
            const cJSON *b = cJSON_GetObjectItemCaseSensitive(stored, it->string);
            if (s == 1 && a)
                continue; /* seen in the first pass */
            if (a && b && cJSON_Compare(a, b, 1))
                continue;
            char va[128], vb[128];
            show(a, va, sizeof va);
            show(b, vb, sizeof vb);
            if (o < n)
                o += (size_t)snprintf(msg + o, n - o, "%s%s: %s %s, %s %s", nd ? "; " : "",
                                      it->string, va, la, vb, lb);
            nd++;
        }
    }
    return nd;
}

/* The normalized comparable settings of this run (e->cfg) and what finalize needs (e->res). */
int dm_config_build(dm_eng *e, const char *aoi_sha, dm_err *err)
{
    const dm_run_opts *o = e->o;
    e->cfg = cJSON_CreateObject();
    e->res = cJSON_CreateObject();
    e->outset = cJSON_CreateObject();
    if (!e->cfg || !e->res || !e->outset)
        return dm_err_oom(err);
    /* what a chunk means (window placement, blending, the PCA sample): a binary that changes it
     * bumps this, and refuses to mix its chunks with an older run's */
    cJSON_AddNumberToObject(e->cfg, "engine_format", DM_ENGINE_FORMAT);
    cJSON *pr = cJSON_AddArrayToObject(e->cfg, "products");
    for (int i = 0; i < dm_nproducts; i++)
        if (o->products & dm_products[i].bit)
            cJSON_AddItemToArray(pr, cJSON_CreateString(dm_products[i].rec->name));
    cJSON_AddStringToObject(e->cfg, "weights_sha256", e->sha);
    /* a Hugging Face config.json beside the weights sets rope_theta, layer_norm_eps, taps... */
    const char *wcfg = dm_weights_config(e->m->w);
    if (wcfg) {
        char h[65];
        dm_sha256_str(wcfg, h);
        cJSON_AddStringToObject(e->cfg, "weights_config_sha256", h);
    } else {
        cJSON_AddNullToObject(e->cfg, "weights_config_sha256");
    }
    cJSON_AddStringToObject(e->cfg, "arch", e->m->cfg.arch);
    cJSON_AddNumberToObject(e->cfg, "embed_dim", e->D);
    cJSON_AddNumberToObject(e->cfg, "depth", e->m->cfg.depth);
    /* the device kind changes the numbers; which GPU, or how many, does not */
    cJSON_AddStringToObject(e->cfg, "device", dm_device_class(e->device));
    cJSON_AddStringToObject(e->cfg, "precision", dm_precision_name(e->precision));
    cJSON_AddStringToObject(e->cfg, "norm", e->nm->name);
    cJSON_AddItemToObject(e->cfg, "bands", dm_json_ints(o->mosaic.bands, 3));
    if (o->mosaic.scale_set) {
        double v[2] = { o->mosaic.scale_min, o->mosaic.scale_max };
        cJSON_AddItemToObject(e->cfg, "scale", cJSON_CreateDoubleArray(v, 2));
    } else {
        cJSON_AddNullToObject(e->cfg, "scale");
    }
    if (o->mosaic.stretch_set) {
        double v[2] = { o->mosaic.p1, o->mosaic.p2 };
        cJSON_AddItemToObject(e->cfg, "stretch", cJSON_CreateDoubleArray(v, 2));
    } else {
        cJSON_AddNullToObject(e->cfg, "stretch");
    }
    cJSON_AddNumberToObject(e->cfg, "gsd", o->mosaic.gsd);
    if (o->mosaic.crs)
        cJSON_AddStringToObject(e->cfg, "crs", o->mosaic.crs);
    else
        cJSON_AddNullToObject(e->cfg, "crs");
    cJSON_AddBoolToObject(e->cfg, "allow_ungeoreferenced", o->mosaic.allow_ungeoreferenced);
    if (aoi_sha) {
        cJSON_AddStringToObject(e->cfg, "aoi_sha256", aoi_sha);
        cJSON_AddStringToObject(e->cfg, "aoi_mask", o->aoi_whole_tiles ? "tiles" : "pixels");
    } else {
        cJSON_AddNullToObject(e->cfg, "aoi_sha256");
        cJSON_AddNullToObject(e->cfg, "aoi_mask");
    }
    cJSON_AddNumberToObject(e->cfg, "tile", o->tile);
    cJSON_AddNumberToObject(e->cfg, "halo", o->halo);
    cJSON_AddNumberToObject(e->cfg, "chunk", o->chunk);
    char grid[512], wsha[65];
    snprintf(grid, sizeof grid, "%d×%d px, origin %.17g %.17g, pixel %.17g %.17g", e->g.W, e->g.H,
             e->gt[0], e->gt[3], e->gt[1], e->gt[5]);
    cJSON_AddStringToObject(e->cfg, "mosaic_grid", grid);
    dm_sha256_str(e->wkt, wsha);
    cJSON_AddStringToObject(e->cfg, "mosaic_crs_sha256", wsha);
    /* resolved facts */
    cJSON_AddNumberToObject(e->res, "width", e->g.W);
    cJSON_AddNumberToObject(e->res, "height", e->g.H);
    cJSON_AddItemToObject(e->res, "geotransform", cJSON_CreateDoubleArray(e->gt, 6));
    cJSON_AddStringToObject(e->res, "crs_wkt", e->wkt);
    cJSON_AddBoolToObject(e->res, "georeferenced", dm_mosaic_georeferenced(e->mo));
    int scaled;
    double lo, hi;
    dm_mosaic_scale(e->mo, &scaled, &lo, &hi);
    cJSON *sc = cJSON_AddObjectToObject(e->res, "scaling");
    cJSON_AddBoolToObject(sc, "scaled", scaled);
    cJSON_AddNumberToObject(sc, "lo", lo);
    cJSON_AddNumberToObject(sc, "hi", hi);
    cJSON_AddStringToObject(sc, "text", dm_mosaic_scaling(e->mo));
    /* the weights by name and hash (cfg), never by a path of this machine */
    cJSON_AddStringToObject(e->res, "weights", dm_base_name(o->weights));
    cJSON_AddNumberToObject(e->res, "window", e->S);
    cJSON_AddNumberToObject(e->res, "max_cog_gib", o->max_cog_gib);
    cJSON_AddNumberToObject(e->res, "gemm_parts", e->gemm_parts);
    for (int i = 0; i < e->nprod; i++) {
        int rc = e->rec[i]->prepare(e, &e->self[i], err);
        if (rc)
            return rc;
    }
    cJSON_AddNumberToObject(e->res, "sample_p", e->sample_p);
    return 0;
}

/* This invocation's parameters for `runs` (everything, not only what changes pixels). */
char *dm_config_invocation(const dm_eng *e)
{
    const dm_run_opts *o = e->o;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "version", DINOMAP_VERSION);
    cJSON *in = cJSON_AddArrayToObject(j, "inputs");
    for (int i = 0; i < o->mosaic.n_inputs; i++)
        cJSON_AddItemToArray(in, cJSON_CreateString(o->mosaic.inputs[i]));
    cJSON_AddStringToObject(j, "weights", dm_base_name(o->weights));
    cJSON_AddStringToObject(j, "weights_sha256", e->sha);
    if (o->head)
        cJSON_AddStringToObject(j, "head", dm_base_name(o->head));
    if (o->seg_head)
        cJSON_AddStringToObject(j, "seg_head", dm_base_name(o->seg_head));
    if (o->seg_k) {
        cJSON_AddNumberToObject(j, "clusters", o->seg_k);
        cJSON_AddNumberToObject(j, "seed", o->seg_seed);
    }
    if (o->aoi)
        cJSON_AddStringToObject(j, "aoi", o->aoi);
    cJSON_AddNumberToObject(j, "threads", o->threads);
    cJSON_AddNumberToObject(j, "batch", o->batch);
    cJSON_AddStringToObject(j, "output_format", dm_out_format_name(o->out.format));
    cJSON *co = cJSON_AddArrayToObject(j, "co");
    for (int i = 0; o->out.co && o->out.co[i]; i++)
        cJSON_AddItemToArray(co, cJSON_CreateString(o->out.co[i]));
    cJSON_AddItemToObject(j, "config", cJSON_Duplicate(e->cfg, 1));
    cJSON_AddItemToObject(j, "output_settings", cJSON_Duplicate(e->outset, 1));
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}


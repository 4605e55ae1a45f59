/* src/chm_run.c — `dinomap chm` end to end. Tiles of `tile` px step by tile − overlap; tile
 * (r, c) reads [c·s − overlap/2, … + tile) so the first tile's centre is on the mosaic's corner
 * and every pixel is covered. Pixels outside the mosaic or invalid are fed as zeros in normalized
 * space (the value the reference pads with) and are nodata in the output. Each tile's heights
 * are accumulated as Σ w·h and Σ w with a separable Hann window; a row of the mosaic is final once
 * the next row of tiles no longer reaches it, so the buffer holds one tile's height of rows. */
#include "chm_run.h"

#include <cjson/cJSON.h>
#include <cpl_string.h>
#include <errno.h>
#include <gdal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../gis/raster_out.h"
#include "../heads/heads.h"
#include "../models/model.h"
#include "../tiling/pipeline.h"
#include "cli.h"
#include "base/base.h"
#include "features_run.h"
#include "progress.h"

typedef struct ctile {
    int r, c, empty;
    uint8_t *rgb, *valid;   /* [3,T,T], [T,T] */
    float *img, *height;    /* [3,T,T], [T,T] */
} ctile;

typedef struct crun {
    const dm_chm_opts *o;
    dm_model *m;
    dm_chm *head;
    dm_backend *be;
    dm_mosaic *mo;
    const dm_norm *nm;
    int W, H, T, s, half, ncols, nrows;
    double gt[6];
    float *win;             /* [T] */
    /* writer: rows [acc_y0, acc_y0 + T) of the mosaic, x from -half */
    int Wb, acc_y0, row_left;
    float *sum, *wsum;      /* [T, Wb] */
    float *line;            /* [W] */
    GDALDatasetH out;
    int64_t done, empty;
    double model_seconds;
    dm_progress prog;
} crun;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void dm_chm_window(int tile, int overlap, float *w)
{
    for (int i = 0; i < tile; i++) {
        double s = sin(M_PI * (i + 0.5) / tile);
        w[i] = overlap > 0 ? (float)(s * s) : 1.0f;
    }
}

static int c_alloc(void *ctx, dm_job *job, dm_err *err)
{
    crun *R = ctx;
    size_t T2 = (size_t)R->T * R->T;
    ctile *t = calloc(1, sizeof *t);
    if (!t || !(t->rgb = malloc(3 * T2)) || !(t->valid = malloc(T2)) ||
        !(t->img = malloc(3 * T2 * sizeof(float))) || !(t->height = malloc(T2 * sizeof(float)))) {
        if (t)
            free(t->rgb), free(t->valid), free(t->img);
        free(t);
        return dm_err_oom(err);
    }
    job->data = t;
    return 0;
}

static void c_release(void *ctx, dm_job *job)
{
    (void)ctx;
    ctile *t = job->data;
    if (t)
        free(t->rgb), free(t->valid), free(t->img), free(t->height);
    free(t);
}

static int c_read(void *ctx, dm_job *job, dm_err *err)
{
    crun *R = ctx;
    ctile *t = job->data;
    t->r = job->index / R->ncols;
    t->c = job->index % R->ncols;
    int x0 = t->c * R->s - R->half, y0 = t->r * R->s - R->half, T = R->T;
    int rc = dm_mosaic_read(R->mo, x0, y0, T, T, t->rgb, t->valid, err);
    if (rc)
        return rc;
    size_t plane = (size_t)T * T, nv = 0;
    for (size_t p = 0; p < plane; p++)
        nv += t->valid[p];
    t->empty = nv == 0;
    job->skip = t->empty;
    if (t->empty)
        return 0;
    for (int ch = 0; ch < 3; ch++) {
        float mean = R->nm->mean[ch], sd = R->nm->std[ch];
        for (size_t p = 0; p < plane; p++)
            t->img[ch * plane + p] =
                t->valid[p] ? ((float)t->rgb[ch * plane + p] / 255.0f - mean) / sd : 0.0f;
    }
    return 0;
}

static int c_infer(void *ctx, dm_job **jobs, int n, dm_err *err)
{
    crun *R = ctx;
    for (int i = 0; i < n; i++) {
        ctile *t = jobs[i]->data;
        double t0 = now();
        int rc = dm_chm_run(R->head, R->be, t->img, R->T, R->T, NULL, t->height, err);
        R->model_seconds += now() - t0;
        if (rc)
            return rc;
    }
    return 0;
}

/* writes the mosaic rows [acc_y0, acc_y0 + n) that are final, then drops them from the buffer */
static int flush_rows(crun *R, int n, dm_err *err)
{
    for (int k = 0; k < n; k++) {
        int y = R->acc_y0 + k;
        if (y < 0 || y >= R->H)
            continue;
        const float *s = R->sum + (size_t)k * R->Wb + R->half,
                    *w = R->wsum + (size_t)k * R->Wb + R->half;
        for (int x = 0; x < R->W; x++)
            R->line[x] = w[x] > 0 ? s[x] / w[x] : NAN;
        if (GDALRasterIO(GDALGetRasterBand(R->out, 1), GF_Write, 0, y, R->W, 1, R->line, R->W, 1,
                         GDT_Float32, 0, 0) != CE_None)
            return dm_err_set(err, DM_EIO, "writing row %d of the height map: %s", y,
                              CPLGetLastErrorMsg());
    }
    size_t keep = (size_t)(R->T - n) * R->Wb;
    memmove(R->sum, R->sum + (size_t)n * R->Wb, keep * sizeof(float));
    memmove(R->wsum, R->wsum + (size_t)n * R->Wb, keep * sizeof(float));
    memset(R->sum + keep, 0, (size_t)n * R->Wb * sizeof(float));
    memset(R->wsum + keep, 0, (size_t)n * R->Wb * sizeof(float));
    R->acc_y0 += n;
    return 0;
}

static int c_write(void *ctx, dm_job *job, dm_err *err)
{
    crun *R = ctx;
    ctile *t = job->data;
    int T = R->T;
    if (t->empty) {
        R->empty++;
    } else {
        R->done++;
        int bx = t->c * R->s; /* buffer column of the tile's first pixel (x = bx - half) */
        for (int y = 0; y < T; y++) {
            float wy = R->win[y];
            float *s = R->sum + (size_t)y * R->Wb + bx, *w = R->wsum + (size_t)y * R->Wb + bx;
            const float *h = t->height + (size_t)y * T;
            const uint8_t *v = t->valid + (size_t)y * T;
            for (int x = 0; x < T; x++)
                if (v[x]) {
                    float wt = wy * R->win[x];
                    s[x] += wt * h[x];
                    w[x] += wt;
                }
        }
    }
    dm_progress_step(&R->prog, 1);
    if (t->c == R->ncols - 1) /* a row of tiles is complete: its first s rows are final */
        return flush_rows(R, t->r == R->nrows - 1 ? T : R->s, err);
    return 0;
}

static int write_qml(const char *path, dm_err *err)
{
    static const char *qml =
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        "<qgis version=\"3.22\" styleCategories=\"AllStyleCategories\">\n"
        "  <pipe>\n"
        "    <rasterrenderer type=\"singlebandpseudocolor\" band=\"1\" opacity=\"1\" "
        "alphaBand=\"-1\" nodataColor=\"\" classificationMin=\"0\" classificationMax=\"40\">\n"
        "      <rastershader>\n"
        "        <colorrampshader colorRampType=\"INTERPOLATED\" classificationMode=\"1\" "
        "clip=\"0\" minimumValue=\"0\" maximumValue=\"40\">\n"
        "          <item value=\"0\" label=\"0 m\" color=\"#f7fcf5\" alpha=\"255\"/>\n"
        "          <item value=\"5\" label=\"5 m\" color=\"#c7e9c0\" alpha=\"255\"/>\n"
        "          <item value=\"10\" label=\"10 m\" color=\"#a1d99b\" alpha=\"255\"/>\n"
        "          <item value=\"20\" label=\"20 m\" color=\"#41ab5d\" alpha=\"255\"/>\n"
        "          <item value=\"30\" label=\"30 m\" color=\"#006d2c\" alpha=\"255\"/>\n"
        "          <item value=\"40\" label=\"40 m\" color=\"#00441b\" alpha=\"255\"/>\n"
        "        </colorrampshader>\n"
        "      </rastershader>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n";
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fputs(qml, f) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return dm_err_set(err, DM_EIO, "%s: cannot write: %s", path, strerror(errno));
    }
    return 0;
}


int dm_chm_map(const dm_chm_opts *o, dm_err *err)
{
    static const char *const products[] = { "chm.tif", NULL };
    crun R;
    memset(&R, 0, sizeof R);
    R.o = o;
    double t0 = now();
    int rc = 0, made = 0, wrote = 0;
    char sha_b[65] = "", sha_h[65] = "", created[32], path[4096], tmp[4096];
    time_t tt = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
    snprintf(tmp, sizeof tmp, "%s/chm.tmp.tif", o->outdir);
    if (!(R.nm = dm_norm_get(o->norm)))
        return dm_err_set(err, DM_EINVAL, "--norm %s: unknown preset (sat, chm, lvd)", o->norm);
    if (o->tile < 32 || o->tile % 32 || o->tile > 4096)
        return dm_err_set(err, DM_EINVAL, "--tile %d: must be a multiple of 32 (so the head's "
                          "output lines up pixel for pixel) between 32 and 4096", o->tile);
    if (o->overlap < 0 || o->overlap % 16 || 2 * o->overlap > o->tile)
        return dm_err_set(err, DM_EINVAL, "--overlap %d: must be a multiple of 16, at most half "
                          "the tile", o->overlap);
    dm_model_opts mo = { o->arch };
    dm_backend_opts bo = { o->threads };
    if ((rc = dm_model_open(o->weights, &mo, &R.m, err)))
        goto out;
    if (!o->head && !dm_chm_detect(R.m->w)) {
        rc = dm_err_set(err, DM_EINVAL, "%s holds no CHMv2 head: pass the head with --head "
                        "(Meta ships it as dinov3_vitl16_chmv2_dpt_head-*.pth)", o->weights);
        goto out;
    }
    if ((rc = dm_chm_open(o->head, R.m->w, R.m, o->taps_set ? o->taps : NULL, &R.head, err)) ||
        (rc = dm_chm_set_threads(R.head, o->threads, err)) ||
        (rc = dm_backend_open(o->device, R.m, &bo, &R.be, err)) ||
        (rc = dm_mosaic_open(&o->mosaic, &R.mo, err)) ||
        (rc = dm_prepare_outdir(o->outdir, products, &made, err)))
        goto out;
    dm_mosaic_size(R.mo, &R.W, &R.H);
    dm_mosaic_geotransform(R.mo, R.gt);
    double gsd = fabs(R.gt[1]);
    const char *notes = dm_mosaic_notes(R.mo);
    if (notes[0])
        fprintf(stderr, "dinomap: %s", notes);
    if (!dm_mosaic_georeferenced(R.mo))
        dm_warn("the input has no georeferencing: outputs are in pixel coordinates");
    else if (gsd < 0.3 || gsd > 1.5)
        dm_info("pixel size %.3g m is outside 0.3-1.5 m: CHMv2 was trained on ~0.6 m imagery and "
                "its heights are less reliable at other scales (--gsd 0.6 warps)", gsd);
    if ((rc = dm_sha256_file_cached(o->weights, sha_b, err)) ||
        (o->head && (rc = dm_sha256_file_cached(o->head, sha_h, err))))
        goto out;
    R.T = o->tile;
    R.s = o->tile - o->overlap;
    R.half = o->overlap / 2;
    R.ncols = R.W + R.half > R.T ? (R.W + R.half - R.T + R.s - 1) / R.s + 1 : 1;
    R.nrows = R.H + R.half > R.T ? (R.H + R.half - R.T + R.s - 1) / R.s + 1 : 1;
    R.Wb = (R.ncols - 1) * R.s + R.T;
    R.acc_y0 = -R.half;
    R.win = malloc(sizeof(float) * R.T);
    R.sum = calloc((size_t)R.T * R.Wb, sizeof(float));
    R.wsum = calloc((size_t)R.T * R.Wb, sizeof(float));
    R.line = malloc(sizeof(float) * R.W);
    if (!R.win || !R.sum || !R.wsum || !R.line) {
        rc = dm_err_oom(err);
        goto out;
    }
    dm_chm_window(R.T, o->overlap, R.win);
    dm_info("%s + %s: %d×%d px mosaic, %d×%d tiles of %d px overlapping by %d px, %s",
            o->weights, o->head ? o->head : "(head in the same file)", R.W, R.H, R.ncols, R.nrows,
            R.T, o->overlap, dm_mosaic_scaling(R.mo));
    /* the height map is written row by row into a tiled GTiff, then copied to a COG */
    {
        char **co = NULL;
        co = CSLSetNameValue(co, "TILED", "YES");
        co = CSLSetNameValue(co, "COMPRESS", "LZW");
        co = CSLSetNameValue(co, "BIGTIFF", "IF_SAFER");
        wrote = 1;
        R.out = GDALCreate(GDALGetDriverByName("GTiff"), tmp, R.W, R.H, 1, GDT_Float32, co);
        CSLDestroy(co);
        if (!R.out) {
            rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", tmp, CPLGetLastErrorMsg());
            goto out;
        }
        GDALSetGeoTransform(R.out, R.gt);
        if (dm_mosaic_wkt(R.mo)[0])
            GDALSetProjection(R.out, dm_mosaic_wkt(R.mo));
    }
    dm_progress_start(&R.prog, o->progress, (int64_t)R.ncols * R.nrows, "tiles");
    dm_pipeline_fns fns = { &R, c_alloc, c_release, c_read, c_infer, c_write };
    rc = dm_pipeline_run(&fns, R.ncols * R.nrows, 1, 2, err);
    dm_progress_end(&R.prog);
    if (rc)
        goto out;
    if (R.done == 0) {
        rc = dm_err_set(err, DM_EINVAL, "nothing was mapped: every tile is empty (nodata)");
        goto out;
    }
    GDALRasterBandH b = GDALGetRasterBand(R.out, 1);
    GDALSetRasterNoDataValue(b, NAN);
    GDALSetDescription(b, "canopy_height_m");
    GDALSetRasterUnitType(b, "m");
    const int *taps = dm_chm_taps(R.head);
    char kv[16][600];
    int n = 0;
    snprintf(kv[n++], 600, "DINOMAP_VERSION=%s", DINOMAP_VERSION);
    snprintf(kv[n++], 600, "DINOMAP_PRODUCT=canopy_height");
    snprintf(kv[n++], 600, "DINOMAP_UNITS=metres above ground; nodata NaN (0 m is a real height)");
    snprintf(kv[n++], 600, "DINOMAP_MODEL=CHMv2 DPT head on %s (D=%d, %d blocks), taps %d,%d,%d,%d",
             R.m->cfg.arch, R.m->cfg.embed_dim, R.m->cfg.depth, taps[0], taps[1], taps[2], taps[3]);
    snprintf(kv[n++], 600, "DINOMAP_WEIGHTS=%s", o->weights);
    snprintf(kv[n++], 600, "DINOMAP_WEIGHTS_SHA256=%s", sha_b);
    snprintf(kv[n++], 600, "DINOMAP_HEAD=%s", o->head ? o->head : "(in the weights file)");
    snprintf(kv[n++], 600, "DINOMAP_HEAD_SHA256=%s", o->head ? sha_h : sha_b);
    snprintf(kv[n++], 600, "DINOMAP_NORMALIZATION=%s mean=%.3f,%.3f,%.3f std=%.3f,%.3f,%.3f",
             R.nm->name, R.nm->mean[0], R.nm->mean[1], R.nm->mean[2], R.nm->std[0], R.nm->std[1],
             R.nm->std[2]);
    snprintf(kv[n++], 600, "DINOMAP_INPUT_SCALING=%s", dm_mosaic_scaling(R.mo));
    snprintf(kv[n++], 600, "DINOMAP_GSD=%.17g", gsd);
    snprintf(kv[n++], 600, "DINOMAP_TILE=%d", o->tile);
    snprintf(kv[n++], 600, "DINOMAP_OVERLAP=%d", o->overlap);
    snprintf(kv[n++], 600, "DINOMAP_BLENDING=%s", o->overlap ? "Hann window w = sin^2(pi (i+0.5)/"
             "tile) per axis, heights averaged with these weights" : "none (tiles abut)");
    snprintf(kv[n++], 600, "DINOMAP_OVERVIEW_RESAMPLING=AVERAGE");
    snprintf(kv[n++], 600, "DINOMAP_CREATED=%s", created);
    for (int i = 0; i < n; i++) {
        char *key = NULL;
        const char *val = CPLParseNameValue(kv[i], &key);
        GDALSetMetadataItem(R.out, key, val, NULL);
        CPLFree(key);
    }
    snprintf(path, sizeof path, "%s/chm.tif", o->outdir);
    if ((rc = dm_gis_cog(R.out, path, "AVERAGE", err)))
        goto out;
    snprintf(path, sizeof path, "%s/chm.qml", o->outdir);
    if ((rc = write_qml(path, err)))
        goto out;
    double secs = now() - t0;
    cJSON *j = cJSON_CreateObject(), *in = cJSON_AddArrayToObject(j, "inputs");
    cJSON_AddStringToObject(j, "tool", "dinomap");
    cJSON_AddStringToObject(j, "version", DINOMAP_VERSION);
    cJSON_AddStringToObject(j, "command", "chm");
    cJSON_AddStringToObject(j, "created", created);
    for (int i = 0; i < o->mosaic.n_inputs; i++)
        cJSON_AddItemToArray(in, cJSON_CreateString(o->mosaic.inputs[i]));
    cJSON_AddStringToObject(j, "weights", o->weights);
    cJSON_AddStringToObject(j, "weights_sha256", sha_b);
    cJSON_AddStringToObject(j, "head", o->head ? o->head : "");
    cJSON_AddStringToObject(j, "head_sha256", o->head ? sha_h : sha_b);
    cJSON_AddStringToObject(j, "normalization", R.nm->name);
    cJSON_AddNumberToObject(j, "gsd", gsd);
    cJSON_AddNumberToObject(j, "tile", o->tile);
    cJSON_AddNumberToObject(j, "overlap", o->overlap);
    cJSON_AddNumberToObject(j, "tiles_done", (double)R.done);
    cJSON_AddNumberToObject(j, "tiles_empty", (double)R.empty);
    cJSON_AddNumberToObject(j, "seconds_total", secs);
    cJSON_AddNumberToObject(j, "seconds_model", R.model_seconds);
    cJSON_AddNumberToObject(j, "tiles_per_s", secs > 0 ? R.done / secs : 0);
    char *js = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/run.json", o->outdir);
    FILE *f = js ? fopen(path, "w") : NULL;
    if (!f || fputs(js, f) < 0 || fclose(f) != 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot write", path);
    free(js);
    if (!rc)
        dm_info("%lld tiles mapped, %lld empty, in %.1f s (model %.1f s): %s/chm.tif",
                (long long)R.done, (long long)R.empty, secs, R.model_seconds, o->outdir);
out:
    if (R.out)
        GDALClose(R.out);
    if (wrote)
        unlink(tmp);
    if (rc && made && !wrote)
        rmdir(o->outdir);
    free(R.win), free(R.sum), free(R.wsum), free(R.line);
    dm_mosaic_close(R.mo);
    dm_backend_close(R.be);
    dm_chm_free(R.head);
    dm_model_free(R.m);
    return rc;
}

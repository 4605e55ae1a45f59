/* tiling/chip.c — the embedding of an image chip as a run embeds a tile (`dinomap search --image`):
 * the run's configuration is read from its tile index; the chip goes through the mosaic with the
 * run's bands, 8-bit scaling, GSD and CRS, is normalized with the run's preset and seen whole by
 * the run's model (the weights must have the run's SHA-256; the GEMM slicing is the run's, as the
 * results depend on it); its CLS token and the mean of its valid centre patches (the chip less the run's
 * halo on each side, a patch valid when half its pixels are), both from the final-normed tokens
 * and of unit length. For a chip that is exactly a tile's window (core + halo), that is what the
 * run stored for the tile (engine.c: stage_read, stage_infer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* The run's configuration and resolved facts, from its index. */
static int run_config(const char *index, cJSON **cfg, cJSON **res, dm_err *err)
{
    dm_tileindex *ti = NULL;
    char *c = NULL, *r = NULL;
    int rc = dm_tileindex_open(index, NULL, 0, &ti, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "resolved", &r, err);
    dm_tileindex_close(ti, NULL);
    if (!rc && (!c || !r || !(*cfg = cJSON_Parse(c)) || !(*res = cJSON_Parse(r))))
        rc = dm_err_set(err, DM_EFORMAT, "%s: records no run configuration readable as JSON",
                        index);
    free(c), free(r);
    return rc;
}

static double num(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

static const char *str(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* The mosaic options of the run, for one chip. */
static void mosaic_opts(const cJSON *cfg, const cJSON *res, const char *const *chip,
                        dm_mosaic_opts *m)
{
    memset(m, 0, sizeof *m);
    m->inputs = chip, m->n_inputs = 1;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, "bands");
    for (int i = 0; i < 3; i++) {
        const cJSON *x = cJSON_GetArrayItem(b, i);
        m->bands[i] = cJSON_IsNumber(x) ? x->valueint : i + 1;
    }
    m->gsd = num(cfg, "gsd", 0);
    m->crs = str(cfg, "crs");
    m->allow_ungeoreferenced = 1; /* a chip is never placed on the map */
    /* the 8-bit scaling the run chose (its --scale, or the percentiles of its mosaic) */
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(res, "scaling");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(sc, "scaled"))) {
        m->fixed_set = 1;
        m->fixed_lo = num(sc, "lo", 0), m->fixed_hi = num(sc, "hi", 255);
        m->fixed_text = str(sc, "text");
    }
}

/* The unit mean of the valid patches of [pc0, pc1) × [pr0, pr1) of normed [N, D] (patch tokens
 * after npre, gw a row; valid [Sh, Sw] pixels) and the unit CLS token; how many patches. */
static int embeddings(const float *normed, int npre, int gw, int D, const uint8_t *valid, int Sw,
                      int pc0, int pc1, int pr0, int pr1, float *cls, float *mean)
{
    double *acc = calloc((size_t)D, sizeof *acc);
    if (!acc)
        return -1;
    for (int d = 0; d < D; d++)
        acc[d] = normed[d];
    dm_sim_unit(acc, D, cls);
    memset(acc, 0, sizeof *acc * (size_t)D);
    int nv = 0;
    for (int pr = pr0; pr < pr1; pr++)
        for (int pc = pc0; pc < pc1; pc++) {
            int cnt = 0;
            for (int y = pr * 16; y < pr * 16 + 16; y++)
                for (int x = pc * 16; x < pc * 16 + 16; x++)
                    cnt += valid[(size_t)y * Sw + x];
            if (2 * cnt < 256)
                continue;
            const float *v = normed + (size_t)(npre + pr * gw + pc) * D;
            for (int d = 0; d < D; d++)
                acc[d] += v[d];
            nv++;
        }
    if (!nv || dm_sim_unit(acc, D, mean)) /* the sum's direction is the mean's */
        nv = 0;
    free(acc);
    return nv;
}

/* The model of the run, checked against its record. */
static int run_model(const dm_chip_opts *o, const cJSON *cfg, const cJSON *res, int dim,
                     dm_model **m, dm_err *err)
{
    const char *arch = str(cfg, "arch"), *want = str(cfg, "weights_sha256");
    dm_model_opts mo = { arch && dm_arch_find(arch) ? arch : NULL };
    char sha[65];
    int rc = dm_model_open(o->weights, &mo, m, err);
    if (!rc)
        rc = dm_weights_sha((*m)->w, sha, err);
    if (rc)
        return rc;
    if (!want || strcmp(sha, want)) {
        const char *was = str(res, "weights");
        return dm_err_set(err, DM_EMISMATCH, "-m %s: these weights (SHA-256 %s) are not the "
                          "run's: %s was made with %s (SHA-256 %s); embed the chip with the "
                          "run's weights", o->weights, sha, o->index, was ? was : "other weights",
                          want ? want : "not recorded");
    }
    if ((*m)->cfg.embed_dim != dim)
        return dm_err_set(err, DM_EMISMATCH, "-m %s: embeddings of %d dimensions, the index's "
                          "have %d", o->weights, (*m)->cfg.embed_dim, dim);
    return 0;
}

int dm_chip_embed(const dm_chip_opts *o, int dim, float *cls, float *mean, dm_err *err)
{
    cJSON *cfg = NULL, *res = NULL;
    dm_model *m = NULL;
    dm_backend *be = NULL;
    dm_mosaic *mo = NULL;
    uint8_t *rgb = NULL, *valid = NULL;
    float *img = NULL, *normed = NULL;
    const char *chip[1] = { o->chip };
    int rc = run_config(o->index, &cfg, &res, err);
    const dm_norm *nm = NULL;
    if (!rc && !(nm = dm_norm_get(str(cfg, "norm") ? str(cfg, "norm") : "")))
        rc = dm_err_set(err, DM_EFORMAT, "%s: records no normalization preset the model knows",
                        o->index);
    if (!rc)
        rc = run_model(o, cfg, res, dim, &m, err);
    dm_mosaic_opts mopt;
    if (!rc) {
        mosaic_opts(cfg, res, chip, &mopt);
        if ((rc = dm_mosaic_open(&mopt, &mo, err)))
            dm_err_prefix(err, "--image %s", o->chip);
    }
    int W = 0, H = 0, halo = (int)num(cfg, "halo", 0);
    int limit = (int)num(res, "window", 0) > 1024 ? (int)num(res, "window", 0) : 1024;
    if (!rc) {
        dm_mosaic_size(mo, &W, &H);
        if (W > limit || H > limit)
            rc = dm_err_set(err, DM_EINVAL, "--image %s: %d×%d px; a chip is at most %d px a "
                            "side (the model sees it whole): cut the part to search for", o->chip,
                            W, H, limit);
    }
    /* the model's input: the chip padded to whole patches with invalid pixels, like a window
     * reaching past the mosaic's edge */
    int Sw = (W + 15) / 16 * 16, Sh = (H + 15) / 16 * 16, D = dim;
    size_t plane = (size_t)Sw * Sh;
    int N = rc ? 0 : dm_model_tokens(m, Sh, Sw);
    if (!rc && (!(rgb = malloc(3 * plane)) || !(valid = malloc(plane)) ||
                !(img = malloc(3 * plane * sizeof *img)) ||
                !(normed = malloc((size_t)N * D * sizeof *normed))))
        rc = dm_err_oom(err);
    if (!rc && (rc = dm_mosaic_read(mo, 0, 0, Sw, Sh, rgb, valid, err)))
        dm_err_prefix(err, "--image %s", o->chip);
    for (int ch = 0; !rc && ch < 3; ch++)
        for (size_t p = 0; p < plane; p++)
            img[ch * plane + p] = valid[p] ? ((float)rgb[ch * plane + p] / 255.0f -
                                              nm->mean[ch]) / nm->std[ch] : 0.0f;
    /* the run's precision (runs from before it was recorded: fp32) */
    dm_backend_opts bo = { o->threads, (int)num(res, "gemm_parts", 0), DM_PREC_FP32 };
    const char *prec = str(cfg, "precision");
    int want = DM_PREC_FP32;
    char why[200];
    if (!rc && prec && dm_precision_parse(prec, &want, err))
        rc = DM_EFORMAT;
    if (!rc && (rc = dm_precision_resolve(want, &bo.precision, why, sizeof why, err)))
        dm_err_prefix(err, "--image %s: the run was mapped in %s", o->chip, prec);
    if (!rc)
        rc = dm_backend_open("cpu", m, &bo, &be, err);
    dm_vit_request req = { 0, NULL, NULL, NULL, normed, 0 };
    if (!rc)
        rc = dm_backend_forward(be, img, 1, Sh, Sw, &req, err);
    if (!rc) {
        int gw = Sw / 16, gh = Sh / 16, h = W > 2 * halo && H > 2 * halo ? halo : 0;
        int nv = embeddings(normed, N - gw * gh, gw, D, valid, Sw, h / 16, (W - h + 15) / 16,
                            h / 16, (H - h + 15) / 16, cls, mean);
        if (nv < 0)
            rc = dm_err_oom(err);
        else if (nv == 0)
            rc = dm_err_set(err, DM_EINVAL, "--image %s: no valid patch in its centre (nodata "
                            "everywhere?)", o->chip);
    }
    free(rgb), free(valid), free(img), free(normed);
    dm_backend_close(be);
    dm_mosaic_close(mo);
    dm_model_free(m);
    cJSON_Delete(cfg), cJSON_Delete(res);
    return rc;
}

/* heads/chmv2.c — the CHMv2 DPT head (spec §5): binding the head weights (Meta or Hugging Face
 * names, widths read from the shapes and all checked), choosing the backbone taps, and the decoder
 * (reassemble → channel convs → fusion → UpConv head → mixlog bins) on channel-first fp32 maps.
 * The dense operators are the backend's (models/ops.h); every convolution is a GEMM, and every step of the decoder
 * is spread over the head's threads (dm_chm_set_threads). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../models/vit_math.h"
#include "chmv2_internal.h"

/* --- finding and binding the head ------------------------------------------------------------ */

/* Where a head may sit in a file, and a tensor only a DPT head has, in each naming. */
static const char *const prefixes[] = { "", "head.", "model.", "module.", "decode_head.",
                                        "model.head.", "state_dict.", "depther.decoder." };
#define ANCHOR_META "reassemble_blocks.readout_projects.0.0.weight"
#define ANCHOR_HF "reassemble_stage.readout_projects.0.0.weight"

/* Finds the prefix and naming (hf 0/1) of a head in w; 0 if found. */
static int locate(const dm_weights *w, const char **prefix, int *hf)
{
    char name[256];
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        for (int h = 0; h < 2; h++) {
            snprintf(name, sizeof name, "%s%s", prefixes[i], h ? ANCHOR_HF : ANCHOR_META);
            if (dm_weights_find(w, name)) {
                *prefix = prefixes[i];
                *hf = h;
                return 0;
            }
        }
    return -1;
}

int dm_chm_detect(const dm_weights *w)
{
    const char *p;
    int hf;
    return w && locate(w, &p, &hf) == 0;
}

typedef struct bctx {
    dm_chm *h;
    const dm_weights *w;
    const char *file;   /* the head's file, for messages */
    const char *prefix;
    int hf;
    unsigned char *used;
    dm_err *err;
} bctx;

static const char *shape_text(const int64_t *s, int nd, char *buf, size_t n)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < nd && o < n; i++)
        o += s[i] < 0 ? (size_t)snprintf(buf + o, n - o, "%s?", i ? "," : "")
                      : (size_t)snprintf(buf + o, n - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
    return buf;
}

/* Reads tensor prefix + (meta or hf name, formatted with k) as an fp32 copy, checking its shape
 * against shape[0..nd) where -1 means "any positive width" (the actual value is written back). */
static float *get(bctx *c, const char *meta, const char *hf, int k, int nd, int64_t *shape)
{
    char rel[200], name[300], s1[128], s2[128];
    snprintf(rel, sizeof rel, c->hf ? hf : meta, k);
    snprintf(name, sizeof name, "%s%s", c->prefix, rel);
    const dm_tensor *t = dm_weights_find(c->w, name);
    int D = c->h->D;
    if (!t) {
        dm_err_set(c->err, DM_ESHAPE, "head file %s: missing tensor %s (expected shape %s); the "
                   "file is not a complete CHMv2 DPT head", c->file, name,
                   shape_text(shape, nd, s1, sizeof s1));
        return NULL;
    }
    int ok = t->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = shape[i] < 0 ? t->shape[i] >= 1 && t->shape[i] <= MAX_WIDTH
                          : t->shape[i] == shape[i];
    if (!ok) {
        /* the readout is the one tensor whose width is the backbone's: say so plainly */
        int ro = strstr(name, "readout_projects") && t->ndim == 2 && t->shape[1] == 2 * t->shape[0];
        if (ro)
            dm_err_set(c->err, DM_ESHAPE, "head file %s: tensor %s has shape %s, expected %s: the "
                       "head was made for a backbone of width %lld, but backbone %s has D=%d; use "
                       "the backbone the head belongs to", c->file, name,
                       dm_shape_str(t->shape, t->ndim, s1, sizeof s1),
                       shape_text(shape, nd, s2, sizeof s2), (long long)t->shape[0],
                       dm_weights_path(c->h->m->w), D);
        else
            dm_err_set(c->err, DM_ESHAPE, "head file %s: tensor %s has shape %s, expected %s "
                       "(widths follow from the head's other tensors and the backbone's D=%d)",
                       c->file, name, dm_shape_str(t->shape, t->ndim, s1, sizeof s1),
                       shape_text(shape, nd, s2, sizeof s2), D);
        return NULL;
    }
    if (t->dtype != DM_DT_F32 && t->dtype != DM_DT_BF16 && t->dtype != DM_DT_F16) {
        dm_err_set(c->err, DM_EFORMAT, "head file %s: tensor %s has dtype %s (expected f32, bf16 "
                   "or f16)", c->file, name, dm_dtype_name(t->dtype));
        return NULL;
    }
    for (int i = 0; i < nd; i++)
        shape[i] = t->shape[i];
    if (c->h->nown >= MAX_OWN) {
        dm_err_set(c->err, DM_EINVAL, "head file %s: too many head tensors", c->file);
        return NULL;
    }
    float *v = dm_tensor_to_f32(t, c->err);
    if (!v)
        return NULL;
    size_t numel = 1;
    for (int i = 0; i < nd; i++)
        numel *= (size_t)t->shape[i];
    c->h->own_n[c->h->nown] = numel;
    c->h->own[c->h->nown++] = v;
    c->used[t - dm_weights_at(c->w, 0)] = 1;
    return v;
}

#define SHAPE(...) ((int64_t[]){ __VA_ARGS__ })
#define GET(dst, meta, hf, k, nd, ...)                                                             \
    do {                                                                                           \
        int64_t *s_ = SHAPE(__VA_ARGS__);                                                          \
        if (!((dst) = get(c, meta, hf, k, nd, s_)))                                                \
            return c->err->code;                                                                   \
        last[0] = s_[0];                                                                           \
    } while (0)

static int bind_rcu(bctx *c, rcu *r, int j, int unit)
{
    int64_t F = c->h->F, last[1];
    char m1[160], m2[160], h1[160], h2[160];
    snprintf(m1, sizeof m1, "fusion_blocks.%%d.res_conv_unit%d.conv1.conv.weight", unit);
    snprintf(m2, sizeof m2, "fusion_blocks.%%d.res_conv_unit%d.conv2.conv.weight", unit);
    snprintf(h1, sizeof h1, "fusion_layers.%%d.residual_layer%d.convolution1.weight", unit);
    snprintf(h2, sizeof h2, "fusion_layers.%%d.residual_layer%d.convolution2.weight", unit);
    GET(r->wa, m1, h1, j, 4, F, F, 3, 3);
    GET(r->wb, m2, h2, j, 4, F, F, 3, 3);
    /* the biases: same names with "bias" */
    strcpy(strstr(m1, "weight"), "bias");
    strcpy(strstr(m2, "weight"), "bias");
    strcpy(strstr(h1, "weight"), "bias");
    strcpy(strstr(h2, "weight"), "bias");
    GET(r->ba, m1, h1, j, 1, F);
    GET(r->bb, m2, h2, j, 1, F);
    (void)last;
    return 0;
}

static int bind_weights(bctx *c)
{
    dm_chm *h = c->h;
    int64_t D = h->D, last[1];
    for (int k = 0; k < 4; k++) {
        GET(h->ro_w[k], "reassemble_blocks.readout_projects.%d.0.weight",
            "reassemble_stage.readout_projects.%d.0.weight", k, 2, D, 2 * D);
        GET(h->ro_b[k], "reassemble_blocks.readout_projects.%d.0.bias",
            "reassemble_stage.readout_projects.%d.0.bias", k, 1, D);
        GET(h->pj_w[k], "reassemble_blocks.projects.%d.conv.weight",
            "reassemble_stage.layers.%d.projection.weight", k, 4, -1, D, 1, 1);
        h->C[k] = (int)last[0];
        GET(h->pj_b[k], "reassemble_blocks.projects.%d.conv.bias",
            "reassemble_stage.layers.%d.projection.bias", k, 1, (int64_t)h->C[k]);
    }
    /* resample ×4, ×2 (transposed, kernel = stride), ×1 (none), ×½ (3×3 stride 2) */
    static const int ks[4] = { 4, 2, 0, 3 };
    for (int k = 0; k < 4; k++) {
        if (!ks[k])
            continue;
        int64_t C = h->C[k];
        GET(h->rs_w[k], "reassemble_blocks.resize_layers.%d.weight",
            "reassemble_stage.layers.%d.resize.weight", k, 4, C, C, (int64_t)ks[k], (int64_t)ks[k]);
        GET(h->rs_b[k], "reassemble_blocks.resize_layers.%d.bias",
            "reassemble_stage.layers.%d.resize.bias", k, 1, C);
    }
    GET(h->cv_w[0], "convs.%d.conv.weight", "convs.%d.weight", 0, 4, -1, (int64_t)h->C[0], 3, 3);
    h->F = (int)last[0];
    int64_t F = h->F;
    for (int k = 1; k < 4; k++)
        GET(h->cv_w[k], "convs.%d.conv.weight", "convs.%d.weight", k, 4, F, (int64_t)h->C[k], 3, 3);
    for (int j = 0; j < 4; j++) {
        fusion *f = &h->fu[j];
        GET(f->pw, "fusion_blocks.%d.project.conv.weight", "fusion_layers.%d.projection.weight", j,
            4, F, F, 1, 1);
        GET(f->pb, "fusion_blocks.%d.project.conv.bias", "fusion_layers.%d.projection.bias", j, 1,
            F);
        int rc;
        if ((j > 0 && (rc = bind_rcu(c, &f->r1, j, 1))) || (rc = bind_rcu(c, &f->r2, j, 2)))
            return rc;
    }
    GET(h->hd_w[0], "conv_depth.head.%d.weight", "conv_depth.head.%d.weight", 0, 4, -1, F, 3, 3);
    h->H1 = (int)last[0];
    GET(h->hd_b[0], "conv_depth.head.%d.bias", "conv_depth.head.%d.bias", 0, 1, (int64_t)h->H1);
    GET(h->hd_w[1], "conv_depth.head.%d.weight", "conv_depth.head.%d.weight", 2, 4, -1,
        (int64_t)h->H1, 3, 3);
    h->H2 = (int)last[0];
    GET(h->hd_b[1], "conv_depth.head.%d.bias", "conv_depth.head.%d.bias", 2, 1, (int64_t)h->H2);
    GET(h->hd_w[2], "conv_depth.head.%d.weight", "conv_depth.head.%d.weight", 4, 4, -1,
        (int64_t)h->H2, 1, 1);
    h->nbins = (int)last[0];
    GET(h->hd_b[2], "conv_depth.head.%d.bias", "conv_depth.head.%d.bias", 4, 1, (int64_t)h->nbins);
    return 0;
}

/* Module names at the top of a DPT head: a tensor under one of them that we did not bind means a
 * variant we do not implement (batch norm, a post-fusion projection, ...), not a harmless extra. */
static int head_namespace(const char *rel)
{
    static const char *const tops[] = { "reassemble_", "convs.", "fusion_", "conv_depth.",
                                        "project.", "projection.", "batchnorm_layers." };
    for (size_t i = 0; i < sizeof tops / sizeof tops[0]; i++)
        if (!strncmp(rel, tops[i], strlen(tops[i])))
            return 1;
    return 0;
}

static int check_unused(bctx *c)
{
    size_t plen = strlen(c->prefix);
    for (size_t i = 0; i < dm_weights_count(c->w); i++) {
        const dm_tensor *t = dm_weights_at(c->w, i);
        if (c->used[i] || strncmp(t->name, c->prefix, plen))
            continue;
        /* with no prefix, only names of head modules belong to the head (a combined file may
         * hold other things); under "head." and the like, everything does */
        if (!plen && !head_namespace(t->name))
            continue;
        return dm_err_set(c->err, DM_ESHAPE, "head file %s: unexpected tensor %s (not part of a "
                          "CHMv2 DPT head: readout \"project\", no batch norm, no projection "
                          "after fusion); dinomap does not implement this head variant", c->file,
                          t->name);
    }
    return 0;
}

/* --- taps and bins --------------------------------------------------------------------------- */

static int check_taps(const dm_chm *h, const int *t, const char *from, dm_err *err)
{
    int depth = h->m->cfg.depth;
    for (int k = 0; k < DM_CHM_TAPS; k++) {
        if (t[k] < 0 || t[k] >= depth)
            return dm_err_set(err, DM_EINVAL, "%s: tap block %d does not exist (the backbone has "
                              "blocks 0..%d)", from, t[k], depth - 1);
        for (int j = 0; j < k; j++)
            if (t[j] == t[k])
                return dm_err_set(err, DM_EINVAL, "%s: block %d is tapped twice (the head needs "
                                  "%d distinct blocks)", from, t[k], DM_CHM_TAPS);
    }
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* HF config.json: backbone_config.out_indices (1-based stages; stage 0 is the embeddings),
 * min/max depth and the bins strategy. *found = 1 when out_indices was there. */
static int read_config(const char *json, const char *file, int *taps, int *found,
                       double *dmin, double *dmax, dm_err *err)
{
    *found = 0;
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    if (!root)
        return 0; /* no (usable) config.json: defaults */
    int rc = 0;
    const cJSON *bc = cJSON_GetObjectItemCaseSensitive(root, "backbone_config");
    const cJSON *oi = cJSON_GetObjectItemCaseSensitive(cJSON_IsObject(bc) ? bc : root,
                                                       "out_indices");
    if (cJSON_IsArray(oi)) {
        if (cJSON_GetArraySize(oi) != DM_CHM_TAPS) {
            rc = dm_err_set(err, DM_EFORMAT, "config.json of %s: backbone_config.out_indices has "
                            "%d entries; the CHMv2 head needs %d (pass --taps to override)", file,
                            cJSON_GetArraySize(oi), DM_CHM_TAPS);
            goto done;
        }
        for (int k = 0; k < DM_CHM_TAPS; k++) {
            const cJSON *v = cJSON_GetArrayItem(oi, k);
            if (!cJSON_IsNumber(v)) {
                rc = dm_err_set(err, DM_EFORMAT, "config.json of %s: backbone_config.out_indices "
                                "must hold numbers", file);
                goto done;
            }
            taps[k] = v->valueint - 1;
        }
        *found = 1;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "min_depth");
    if (cJSON_IsNumber(v))
        *dmin = v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(root, "max_depth");
    if (cJSON_IsNumber(v))
        *dmax = v->valuedouble;
    static const char *const strat[] = { "bins_strategy", "norm_strategy" };
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(root, strat[i]);
        if (cJSON_IsString(v) && strcmp(v->valuestring, "chmv2_mixlog")) {
            rc = dm_err_set(err, DM_EUNSUPPORTED, "config.json of %s: %s \"%s\" is not supported "
                            "(only chmv2_mixlog)", file, strat[i], v->valuestring);
            goto done;
        }
    }
    if (!(*dmin > 0) || !(*dmax > *dmin * 8))
        rc = dm_err_set(err, DM_EFORMAT, "config.json of %s: min_depth %g / max_depth %g do not "
                        "make mixlog bins (need 0 < min_depth < max_depth/8)", file, *dmin, *dmax);
done:
    cJSON_Delete(root);
    return rc;
}

/* torch.linspace in fp32 as the CUDA kernel computes it (spec §5.8): the first half counts up
 * from a, the second half down from b, so the last element is exactly b. */
static void linspace(float a, float b, int n, float *out)
{
    if (n == 1) {
        out[0] = a;
        return;
    }
    float step = (b - a) / (float)(n - 1);
    int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? a + step * (float)i : b - step * (float)(n - 1 - i);
}

/* chmv2_mixlog bins for max/8 (the output is rescaled ×8), blended from log-spaced near 0 to
 * linear near the top. */
static int make_bins(dm_chm *h, double dmin, double dmax, dm_err *err)
{
    int n = h->nbins;
    float *lin = malloc(3 * (size_t)n * sizeof *lin);
    h->bins = malloc((size_t)n * sizeof *h->bins);
    if (!lin || !h->bins) {
        free(lin);
        return dm_err_oom(err);
    }
    float *lg = lin + n, *t = lin + 2 * n;
    double smax = dmax / 8.0;
    linspace((float)dmin, (float)smax, n, lin);
    linspace((float)log(dmin), (float)log(smax), n, lg);
    linspace(1.0f, 0.0f, n, t);
    for (int i = 0; i < n; i++) {
        float b = t[i] * expf(lg[i]) + (1.0f - t[i]) * lin[i];
        h->bins[i] = b > 1e-12f ? b : 1e-12f;
    }
    free(lin);
    return 0;
}

/* --- open / free ----------------------------------------------------------------------------- */

int dm_chm_open(const char *head_path, dm_weights *backbone_file, const dm_model *m,
                const int *taps, dm_chm **out, dm_err *err)
{
    dm_err local;
    if (!err)
        err = &local;
    *out = NULL;
    if (!m || (!head_path && !backbone_file))
        return dm_err_set(err, DM_EINVAL, "dm_chm_open: no backbone, or neither a head file nor "
                          "the backbone's file");
    dm_weights *own = NULL, *w = backbone_file;
    int rc;
    if (head_path) {
        if ((rc = dm_weights_open(head_path, &own, err))) {
            dm_err_prefix(err, "--head");
            return rc;
        }
        w = own;
    }
    const char *file = dm_weights_path(w);
    dm_chm *h = calloc(1, sizeof *h);
    unsigned char *used = calloc(dm_weights_count(w) + 1, 1);
    if (!h || !used) {
        rc = dm_err_oom(err);
        goto fail;
    }
    h->m = m;
    h->D = m->cfg.embed_dim;
    if ((rc = dm_ops_create(1, &h->ws, err)))
        goto fail;
    bctx c = { h, w, file, NULL, 0, used, err };
    if (locate(w, &c.prefix, &c.hf)) {
        if (head_path)
            rc = dm_err_set(err, DM_ESHAPE, "head file %s: no CHMv2 DPT head in it (no tensor %s "
                            "or head.%s); --head takes the head checkpoint (e.g. "
                            "dinov3_vitl16_chmv2_dpt_head-*.pth), -m the backbone", file,
                            ANCHOR_META, ANCHOR_HF);
        else
            rc = dm_err_set(err, DM_ESHAPE, "weights file %s: holds no CHMv2 head (no "
                            "head.%s); pass the head checkpoint with --head", file, ANCHOR_HF);
        goto fail;
    }
    if ((rc = bind_weights(&c)) || (rc = check_unused(&c)))
        goto fail;

    /* taps: --taps, else config.json out_indices, else the quarter rule */
    double dmin = 0.001, dmax = 96.0;
    int cfg_taps[DM_CHM_TAPS], found;
    const char *tap_src;
    if ((rc = read_config(dm_weights_config(w), file, cfg_taps, &found, &dmin, &dmax, err)))
        goto fail;
    if (taps) {
        memcpy(h->taps, taps, sizeof h->taps);
        tap_src = "--taps";
    } else if (found) {
        memcpy(h->taps, cfg_taps, sizeof h->taps);
        tap_src = "config.json out_indices - 1";
    } else {
        int d = m->cfg.depth;
        if (d % 4) {
            rc = dm_err_set(err, DM_EINVAL, "backbone %s has %d blocks, not a multiple of 4: "
                            "cannot pick the head's taps by the quarter rule; pass --taps "
                            "(4 block indices)", dm_weights_path(m->w), d);
            goto fail;
        }
        for (int k = 0; k < DM_CHM_TAPS; k++)
            h->taps[k] = (k + 1) * d / 4 - 1;
        tap_src = "quarter rule";
    }
    char from[600];
    snprintf(from, sizeof from, "%s%s%s", taps ? "--taps" : found ? "config.json of " : "",
             taps ? "" : file, taps ? "" : found ? " (out_indices - 1)" : " (quarter rule)");
    if ((rc = check_taps(h, h->taps, from, err)))
        goto fail;
    qsort(h->taps, DM_CHM_TAPS, sizeof h->taps[0], cmp_int);
    if ((rc = make_bins(h, dmin, dmax, err)))
        goto fail;
    snprintf(h->desc, sizeof h->desc, "CHMv2 head %s (%s names%s%s%s): D=%d, channels %d,%d,%d,%d "
             "→ %d, head %d,%d → %d bins, taps %d,%d,%d,%d (%s)", file, c.hf ? "Hugging Face" :
             "Meta", *c.prefix ? ", prefix \"" : "", c.prefix, *c.prefix ? "\"" : "", h->D, h->C[0],
             h->C[1], h->C[2], h->C[3], h->F, h->H1, h->H2, h->nbins, h->taps[0], h->taps[1],
             h->taps[2], h->taps[3], tap_src);
    free(used);
    dm_weights_close(own); /* every tensor was copied */
    *out = h;
    return 0;
fail:
    free(used);
    dm_chm_free(h);
    dm_weights_close(own);
    return rc;
}

void dm_chm_free(dm_chm *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->nown; i++)
        free(h->own[i]);
    free(h->bins);
    dm_ops_free(h->ws);
    free(h->arena);
    free(h->tok);
    free(h->pad);
    dm_chm_dev_free(h);
    free(h);
}

const int *dm_chm_taps(const dm_chm *h) { return h->taps; }
int dm_chm_bins(const dm_chm *h) { return h->nbins; }
const char *dm_chm_describe(const dm_chm *h) { return h->desc; }
const float *dm_chm_bin_values(const dm_chm *h) { return h->bins; }

/* --- geometry -------------------------------------------------------------------------------- */

void dm_chm_pad_size(int H, int W, int *Hp, int *Wp)
{
    *Hp = (H + DM_PATCH - 1) / DM_PATCH * DM_PATCH;
    *Wp = (W + DM_PATCH - 1) / DM_PATCH * DM_PATCH;
}

void dm_chm_out_size(int H, int W, int *Ho, int *Wo)
{
    int gh = (H + DM_PATCH - 1) / DM_PATCH, gw = (W + DM_PATCH - 1) / DM_PATCH;
    *Ho = 32 * ((gh + 1) / 2);
    *Wo = 32 * ((gw + 1) / 2);
}

void dm_chm_center_pad(const float *img, int H, int W, float *out)
{
    int Hp, Wp;
    dm_chm_pad_size(H, W, &Hp, &Wp);
    int top = (Hp - H) / 2, left = (Wp - W) / 2; /* the smaller half before */
    memset(out, 0, (size_t)3 * Hp * Wp * sizeof *out);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < H; y++)
            memcpy(out + ((size_t)c * Hp + top + y) * Wp + left, img + ((size_t)c * H + y) * W,
                   (size_t)W * sizeof *out);
}

/* --- decoder --------------------------------------------------------------------------------- */

int dm_chm_set_threads(dm_chm *h, int n, dm_err *err)
{
    if (n < 1) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > MAX_THREADS)
        return dm_err_set(err, DM_EINVAL, "CHMv2 head: %d threads is too many (at most %d)", n,
                          MAX_THREADS);
    if (h->ws && dm_ops_threads(h->ws) == n)
        return 0;
    dm_ops *ws;
    int rc = dm_ops_create(n, &ws, err);
    if (rc)
        return rc;
    if ((rc = dm_ops_set_precision(ws, dm_ops_precision(h->ws), err))) {
        dm_ops_free(ws);
        return rc;
    }
    dm_ops_free(h->ws);
    h->ws = ws;
    return 0;
}

int dm_chm_threads(const dm_chm *h) { return dm_ops_threads(h->ws); }

int dm_chm_set_precision(dm_chm *h, int precision, dm_err *err)
{
    if (h->dev) /* the decoder is on the device: its precision, whatever this CPU has */
        return dm_chm_dev_set_precision(h, precision, err);
    return dm_ops_set_precision(h->ws, precision, err);
}

/* Heights of n pixels whose logits are channel-first with row stride ld (spec §5.8). */
static void heights_ld(const dm_chm *h, const float *logits, size_t ld, int64_t npix,
                       float *height)
{
    enum { CH = 256 };
    float den[CH], num[CH];
    for (int64_t p0 = 0; p0 < npix; p0 += CH) {
        int n = npix - p0 < CH ? (int)(npix - p0) : CH;
        for (int i = 0; i < n; i++)
            den[i] = num[i] = 0.0f;
        for (int k = 0; k < h->nbins; k++) {
            const float *z = logits + (size_t)k * ld + p0;
            float b = h->bins[k];
            for (int i = 0; i < n; i++) {
                /* ReLU, then the shift clamp(−min, 0, 1e-4) + 1e-8, which is always 1e-8 */
                float y = (z[i] > 0.0f ? z[i] : 0.0f) + 1e-8f;
                den[i] += y;
                num[i] += y * b;
            }
        }
        for (int i = 0; i < n; i++) {
            float d = isfinite(den[i]) ? den[i] : 1.0f;
            d = d > 1e-12f ? d : 1e-12f;
            float v = num[i] / d;
            height[p0 + i] = (v > 1e-12f ? v : 1e-12f) * 8.0f;
        }
    }
}

void dm_chm_heights(const dm_chm *h, const float *logits, int64_t npix, float *height)
{
    heights_ld(h, logits, (size_t)npix, npix, height);
}

/* x += s elementwise, over the threads */
typedef struct add_job {
    float *x;
    const float *s;
    size_t n;
} add_job;

static void add_task(void *ctx, int tid, int nt)
{
    const add_job *j = ctx;
    int64_t b, e;
    dm_ops_share((int64_t)j->n, tid, nt, &b, &e);
    for (int64_t i = b; i < e; i++)
        j->x[i] += j->s[i];
}

/* Pre-activation residual unit: x += conv_b(ReLU(conv_a(ReLU(src)))) + conv biases, where src is
 * x itself or (fusion's first unit) the skip, which the caller has already added to x. */
static int rcu_apply(dm_ops *ws, const rcu *r, const float *src, float *x, float *tmp, int F,
                     int H, int W, dm_err *err)
{
    int rc = dm_conv2d(ws, src, F, H, W, r->wa, r->ba, F, 3, 1, 1, DM_CONV_RELU_IN, tmp, err);
    if (!rc)
        rc = dm_conv2d(ws, tmp, F, H, W, r->wb, r->bb, F, 3, 1, 1,
                       DM_CONV_RELU_IN | DM_CONV_ACCUM, x, err);
    return rc;
}

/* Readout + GELU + 1×1 project of one tap (spec §5.4 steps 1–3), in chunks of patch tokens:
 * Y = GELU(patch·Wro[:, :D]ᵀ + cb) in the thread's scratch, then P[:, chunk] = Wp·Yᵀ + b. */
typedef struct ro_job {
    const dm_chm *h;
    int k, hw, rows; /* tap, patch tokens, tokens per chunk */
    const float *patch, *cb;
    float *P;        /* [C_k, hw] */
    dm_ops *ws;
} ro_job;

static void ro_task(void *ctx, int tid, int nt)
{
    const ro_job *j = ctx;
    const dm_chm *h = j->h;
    int D = h->D, C = h->C[j->k];
    float *Y = dm_ops_buf(j->ws, tid, DM_OPS_SLOT_USER);
    int64_t b, e;
    dm_ops_share((j->hw + j->rows - 1) / j->rows, tid, nt, &b, &e);
    for (int64_t c = b; c < e; c++) {
        int i0 = (int)c * j->rows, n = j->hw - i0 < j->rows ? j->hw - i0 : j->rows;
        dm_ops_sgemm(0, 1, n, D, D, 1.0f,
                    j->patch + (size_t)i0 * D, D, h->ro_w[j->k], 2 * D, 0.0f, Y, D);
        dm_bias_gelu(Y, n, D, j->cb);
        for (int o = 0; o < C; o++)
            for (int i = 0; i < n; i++)
                j->P[(size_t)o * j->hw + i0 + i] = h->pj_b[j->k][o];
        dm_ops_sgemm(0, 1, C, n, D, 1.0f, h->pj_w[j->k], D, Y,
                    D, 1.0f, j->P + i0, j->hw);
    }
}

/* cb = b + W·cls for the readout's CLS half (W [D, D], row stride 2D), in blocks of rows. */
typedef struct cls_job {
    const float *w, *b, *cls;
    float *cb;
    int D;
} cls_job;

static void cls_task(void *ctx, int tid, int nt)
{
    const cls_job *j = ctx;
    enum { ROWS = 64 };
    int64_t b, e;
    dm_ops_share((j->D + ROWS - 1) / ROWS, tid, nt, &b, &e);
    for (int64_t c = b; c < e; c++) {
        int r0 = (int)c * ROWS, n = j->D - r0 < ROWS ? j->D - r0 : ROWS;
        memcpy(j->cb + r0, j->b + r0, (size_t)n * sizeof *j->cb);
        dm_ops_sgemv(n, j->D, 1.0f, j->w + (size_t)r0 * 2 * j->D, 2 * j->D, j->cls, 1.0f,
                     j->cb + r0);
    }
}

/* Reassemble (spec §5.4) + channel conv (§5.5) of tap k: tokens → G [F, size_k]. */
static int reassemble(dm_chm *h, int k, const float *tok, int gh, int gw, float *P, float *Rb,
                      float *G, dm_err *err)
{
    const dm_model *m = h->m;
    int D = h->D, hw = gh * gw, C = h->C[k];
    const float *cls = tok, *patch = tok + (size_t)(1 + m->cfg.n_storage) * D;
    /* readout "project": GELU(W[:, :D]·f + (W[:, D:]·cls + b)); the bracket once per image */
    float *cb = Rb; /* D floats of scratch, used before Rb is needed */
    cls_job cj = { h->ro_w[k] + D, h->ro_b[k], cls, cb, D };
    dm_ops_run(h->ws, cls_task, &cj);
    /* chunks of 64..256 tokens: enough to share out, big enough to amortise the weights */
    int rows = (hw + 7) / 8;
    rows = rows < 64 ? 64 : rows > 256 ? 256 : rows;
    int rc = dm_ops_reserve(h->ws, DM_OPS_SLOT_USER, (size_t)rows * D, err);
    if (rc)
        return rc;
    ro_job rj = { h, k, hw, rows, patch, cb, P, h->ws };
    dm_ops_run(h->ws, ro_task, &rj);
    const float *R = P;
    int rh = gh, rw = gw;
    if (k == 0 || k == 1) {
        int f = k == 0 ? 4 : 2;
        rc = dm_conv_transpose2d(h->ws, P, C, gh, gw, h->rs_w[k], h->rs_b[k], C, f, Rb, err);
        R = Rb, rh = f * gh, rw = f * gw;
    } else if (k == 3) {
        rc = dm_conv2d(h->ws, P, C, gh, gw, h->rs_w[k], h->rs_b[k], C, 3, 2, 1, 0, Rb, err);
        R = Rb, rh = (gh + 1) / 2, rw = (gw + 1) / 2;
    }
    if (!rc)
        rc = dm_conv2d(h->ws, R, C, rh, rw, h->cv_w[k], NULL, h->F, 3, 1, 1, 0, G, err);
    return rc;
}

/* The head's second half, band by band of output rows (spec §5.7): the 3×3 conv on the ×2
 * upsampled map with its ReLU comes in as `band`; here the 1×1 conv to the bin logits (into the
 * caller's logits, or scratch) and the heights of the band's pixels. */
typedef struct tail_ctx {
    const dm_chm *h;
    float *logits, *height; /* either may be NULL */
    size_t npix;
    int Wo;
    dm_ops *ws;
} tail_ctx;

static void tail_band(void *ctx, int tid, int y0, int n, float *band, size_t ld)
{
    const tail_ctx *t = ctx;
    const dm_chm *h = t->h;
    size_t N = (size_t)n * t->Wo;
    /* in pieces of TAIL_COLS pixels, so that the heights read logits still in cache */
    for (size_t c0 = 0; c0 < N; c0 += TAIL_COLS) {
        size_t nc = N - c0 < TAIL_COLS ? N - c0 : TAIL_COLS, off = (size_t)y0 * t->Wo + c0;
        float *L = t->logits ? t->logits + off : dm_ops_buf(t->ws, tid, DM_OPS_SLOT_USER);
        size_t ldl = t->logits ? t->npix : nc;
        for (int o = 0; o < h->nbins; o++)
            for (size_t i = 0; i < nc; i++)
                L[(size_t)o * ldl + i] = h->hd_b[2][o];
        dm_ops_sgemm(0, 0, h->nbins, (int)nc, h->H2, 1.0f,
                    h->hd_w[2], h->H2, band + c0, (int)ld, 1.0f, L, (int)ldl);
        if (t->height)
            heights_ld(h, L, ldl, (int64_t)nc, t->height + off);
    }
}

void dm_chm_gsize(int gh, int gw, int gsz_h[4], int gsz_w[4])
{
    static const int up[3] = { 4, 2, 1 };
    for (int k = 0; k < 3; k++)
        gsz_h[k] = up[k] * gh, gsz_w[k] = up[k] * gw;
    gsz_h[3] = (gh + 1) / 2, gsz_w[3] = (gw + 1) / 2;
}

/* The arena's parts: the four G maps, then the reassembly scratch or the fusion maps. */
typedef struct sizes {
    size_t gn[4], g, cmax_hw, nx, nx2, nt, ns, na, total;
} sizes;

static void map_sizes(const dm_chm *h, int gh, int gw, sizes *z)
{
    int gsz_h[4], gsz_w[4];
    dm_chm_gsize(gh, gw, gsz_h, gsz_w);
    size_t F = (size_t)h->F, hw = (size_t)gh * gw, a = (size_t)(gh + 1) / 2,
           b = (size_t)(gw + 1) / 2, ab = a * b;
    z->g = 0;
    for (int k = 0; k < 4; k++)
        z->g += z->gn[k] = F * gsz_h[k] * gsz_w[k];
    int Cmax = 0;
    for (int k = 0; k < 4; k++)
        Cmax = h->C[k] > Cmax ? h->C[k] : Cmax;
    size_t rmax = (size_t)h->D, r;
    if ((r = (size_t)h->C[0] * 16 * hw) > rmax)
        rmax = r;
    if ((r = (size_t)h->C[1] * 4 * hw) > rmax)
        rmax = r;
    if ((r = (size_t)h->C[3] * ab) > rmax)
        rmax = r;
    z->cmax_hw = (size_t)Cmax * hw;
    size_t nre = z->cmax_hw + rmax;
    /* fusion outputs alternate: X gets those at 2a×2b and 8a×8b, X2 at 4a×4b and 16a×16b; the
     * RCU scratch T and the resized skip S are at most 8a×8b; A is the head's first conv */
    z->nx = F * 64 * ab, z->nx2 = F * 256 * ab, z->nt = F * 64 * ab;
    z->ns = (gh % 2 || gw % 2) ? F * 64 * ab : 0;
    z->na = (size_t)h->H1 * 256 * ab;
    size_t nfu = z->nx + z->nx2 + z->nt + z->ns + z->na;
    z->total = z->g + (nre > nfu ? nre : nfu);
}

size_t dm_chm_maps_size(const dm_chm *h, int gh, int gw)
{
    sizes z;
    map_sizes(h, gh, gw, &z);
    return z.total;
}

void dm_chm_maps_carve(const dm_chm *h, int gh, int gw, float *base, dm_chm_maps *mp)
{
    sizes z;
    map_sizes(h, gh, gw, &z);
    float *p = base;
    for (int k = 0; k < 4; k++)
        mp->G[k] = p, p += z.gn[k];
    mp->P = p, mp->Rb = p + z.cmax_hw;
    mp->X = p, mp->X2 = p + z.nx, mp->T = p + z.nx + z.nx2, mp->S = p + z.nx + z.nx2 + z.nt;
    mp->A = p + z.nx + z.nx2 + z.nt + z.ns;
}

typedef dm_chm_maps maps;

static int carve(dm_chm *h, int gh, int gw, maps *mp, dm_err *err)
{
    size_t need = dm_chm_maps_size(h, gh, gw);
    if (need > h->arena_n) {
        free(h->arena);
        h->arena_n = 0;
        if (!(h->arena = malloc(need * sizeof *h->arena)))
            return dm_err_oom(err);
        h->arena_n = need;
    }
    dm_chm_maps_carve(h, gh, gw, h->arena, mp);
    return 0;
}

int dm_chm_decode(dm_chm *h, const float *const taps[DM_CHM_TAPS], int gh, int gw, float *logits,
                  float *height, dm_err *err)
{
    if (gh < 1 || gw < 1 || gh > 8192 || gw > 8192)
        return dm_err_set(err, DM_EINVAL, "CHMv2 head: bad patch grid %d×%d", gw, gh);
    if (h->dev)
        return dm_chm_dev_run_taps(h, taps, gh, gw, 0, logits, height, err);
    int F = h->F, a = (gh + 1) / 2, b = (gw + 1) / 2, rc;
    dm_ops *ws = h->ws;
    /* per tap k the channel-conv output G_k: (4gh,4gw), (2gh,2gw), (gh,gw), (a,b) */
    int gsz_h[4], gsz_w[4];
    dm_chm_gsize(gh, gw, gsz_h, gsz_w);
    maps mp;
    memset(&mp, 0, sizeof mp);
    if ((rc = carve(h, gh, gw, &mp, err)))
        return rc;
    for (int k = 0; k < 4; k++)
        if ((rc = reassemble(h, k, taps[k], gh, gw, mp.P, mp.Rb, mp.G[k], err)))
            return rc;

    /* fusion, coarse to fine (spec §5.6): the skip is resized to the running map; block 0 works
     * on G_3 in place; each block's ×2 upsampling is made band by band inside its 1×1 project */
    float *cur = mp.G[3], *nxt = mp.X;
    int ch = a, cw = b;
    for (int j = 0; j < 4; j++) {
        const fusion *fu = &h->fu[j];
        if (j > 0) {
            int k = 3 - j;
            const float *s = mp.G[k];
            if (gsz_h[k] != ch || gsz_w[k] != cw) {
                if ((rc = dm_resize_bilinear(ws, mp.G[k], F, gsz_h[k], gsz_w[k], mp.S, ch, cw, 0,
                                             err)))
                    return rc;
                s = mp.S;
            }
            add_job aj = { cur, s, (size_t)F * ch * cw };
            dm_ops_run(ws, add_task, &aj);
            if ((rc = rcu_apply(ws, &fu->r1, s, cur, mp.T, F, ch, cw, err)))
                return rc;
        }
        if ((rc = rcu_apply(ws, &fu->r2, cur, cur, mp.T, F, ch, cw, err)))
            return rc;
        dm_conv_spec pj = { cur, F, ch, cw, 1, fu->pw, fu->pb, F, 1, 1, 0, 0, nxt, NULL, NULL };
        if ((rc = dm_conv_run(ws, &pj, err)))
            return rc;
        ch *= 2, cw *= 2;
        cur = nxt;
        nxt = nxt == mp.X ? mp.X2 : mp.X;
    }

    /* UpConv head (spec §5.7): 3×3 → ×2 (align_corners) → 3×3 → ReLU → 1×1 to the bins; from
     * the upsampling on, band by band (no full-size map but the logits, if asked for) */
    int Ho = 2 * ch, Wo = 2 * cw;
    if ((rc = dm_conv2d(ws, cur, F, ch, cw, h->hd_w[0], h->hd_b[0], h->H1, 3, 1, 1, 0, mp.A, err)))
        return rc;
    tail_ctx tc = { h, logits, height, (size_t)Ho * Wo, Wo, ws };
    dm_conv_spec tl = { mp.A, h->H1, ch, cw, 1, h->hd_w[1], h->hd_b[1], h->H2, 3, 1, 1,
                        DM_CONV_RELU_OUT, NULL, tail_band, &tc };
    if (!logits && (rc = dm_ops_reserve(ws, DM_OPS_SLOT_USER, (size_t)h->nbins * TAIL_COLS,
                                            err)))
        return rc;
    return dm_conv_run(ws, &tl, err);
}

/* The final norm on the taps' tokens, over the threads (each token on its own). */
typedef struct norm_job {
    const dm_model *m;
    float *tok;
    int64_t n;
} norm_job;

static void norm_task(void *ctx, int tid, int nt)
{
    const norm_job *j = ctx;
    int64_t b, e;
    dm_ops_share(j->n, tid, nt, &b, &e);
    if (e > b)
        dm_model_norm_tokens(j->m, j->tok + b * j->m->cfg.embed_dim,
                             j->tok + b * j->m->cfg.embed_dim, e - b);
}

/* Grows *p to n floats (contents not kept). */
static int grow(float **p, size_t *cap, size_t n, dm_err *err)
{
    if (*cap >= n)
        return 0;
    free(*p);
    *cap = 0;
    if (!(*p = malloc((n ? n : 1) * sizeof **p)))
        return dm_err_oom(err);
    *cap = n;
    return 0;
}

int dm_chm_run(dm_chm *h, dm_backend *be, const float *img, int H, int W, float *logits,
               float *height, dm_err *err)
{
    if (H < 1 || W < 1)
        return dm_err_set(err, DM_EINVAL, "CHMv2: empty %d×%d image", W, H);
    int Hp, Wp, rc;
    dm_chm_pad_size(H, W, &Hp, &Wp);
    const dm_model *m = h->m;
    int N = dm_model_tokens(m, Hp, Wp), D = h->D;
    /* the taps' tokens and the padded image stay allocated for the next call */
    if ((rc = grow(&h->tok, &h->tok_n, (size_t)DM_CHM_TAPS * N * D, err)))
        return rc;
    const float *x = img;
    if (Hp != H || Wp != W) {
        if ((rc = grow(&h->pad, &h->pad_n, (size_t)3 * Hp * Wp, err)))
            return rc;
        dm_chm_center_pad(img, H, W, h->pad);
        x = h->pad;
    }
    if (h->dev && dm_chm_dev_owns(h, be)) /* tokens stay on the device */
        return dm_chm_dev_run(h, be, x, Hp, Wp, logits, height, err);
    float *outs[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++)
        outs[k] = h->tok + (size_t)k * N * D;
    dm_vit_request req = { DM_CHM_TAPS, h->taps, outs, NULL, NULL, 0 };
    if ((rc = dm_backend_forward(be, x, 1, Hp, Wp, &req, err)))
        return rc;
    return dm_chm_run_taps(h, outs, Hp / DM_PATCH, Wp / DM_PATCH, logits, height, err);
}

int dm_chm_run_taps(dm_chm *h, float *const taps[DM_CHM_TAPS], int gh, int gw, float *logits,
                    float *height, dm_err *err)
{
    if (h->dev)
        return dm_chm_dev_run_taps(h, (const float *const *)taps, gh, gw, 1, logits, height,
                                   err);
    int N = dm_model_tokens(h->m, gh * DM_PATCH, gw * DM_PATCH);
    for (int k = 0; k < DM_CHM_TAPS; k++) {
        norm_job nj = { h->m, taps[k], (int64_t)N };
        dm_ops_run(h->ws, norm_task, &nj);
    }
    return dm_chm_decode(h, (const float *const *)taps, gh, gw, logits, height, err);
}

int dm_chm_resize_to_input(const float *height, int Ho, int Wo, int H, int W, float *out,
                           dm_err *err)
{
    return dm_resize_bilinear(NULL, height, 1, Ho, Wo, out, H, W, 0, err);
}

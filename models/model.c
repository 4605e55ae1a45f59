/* models/model.c — recognises a DINOv3 ViT in a weights file (Meta or Hugging Face names, any
 * prefix), checks every tensor's shape, and binds them to dm_model. Large matrices stay in the
 * mapping (dm_mat views); small vectors are converted to fp32 copies once. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "vit_math.h"

typedef struct ctx {
    dm_weights *w;
    dm_model *m;
    const char *prefix;
    int hf;
    unsigned char *used; /* per tensor index */
    dm_err *err;
} ctx;

static const dm_tensor *lookup(ctx *c, const char *name)
{
    char full[256];
    snprintf(full, sizeof full, "%s%s", c->prefix, name);
    return dm_weights_find(c->w, full);
}

static void mark(ctx *c, const dm_tensor *t)
{
    c->used[t - dm_weights_at(c->w, 0)] = 1;
}

/* Finds prefix+name with exactly the given shape (ndim values in the varargs). */
static const dm_tensor *need(ctx *c, const char *name, int ndim, ...)
{
    int64_t shape[DM_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++)
        shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    char s1[128], s2[128];
    const dm_tensor *t = lookup(c, name);
    const char *file = dm_weights_path(c->w);
    const char *arch = c->m->cfg.arch;
    if (!t) {
        dm_err_set(c->err, DM_ESHAPE, "weights file %s: missing tensor %s%s (expected %s for %s)",
                   file, c->prefix, name, dm_shape_str(shape, ndim, s1, sizeof s1), arch);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        dm_err_set(c->err, DM_ESHAPE, "weights file %s: tensor %s has shape %s, expected %s for %s",
                   file, t->name, dm_shape_str(t->shape, t->ndim, s1, sizeof s1),
                   dm_shape_str(shape, ndim, s2, sizeof s2), arch);
        return NULL;
    }
    if (t->dtype != DM_DT_F32 && t->dtype != DM_DT_BF16 && t->dtype != DM_DT_F16 &&
        !strstr(name, "bias_mask")) {
        dm_err_set(c->err, DM_EFORMAT, "weights file %s: tensor %s has dtype %s (expected f32, "
                   "bf16 or f16)", file, t->name, dm_dtype_name(t->dtype));
        return NULL;
    }
    mark(c, t);
    if (!strstr(name, "bias_mask")) /* a buffer, not a parameter */
        c->m->n_params += (uint64_t)dm_tensor_numel(t);
    return t;
}

static float *to_f32(ctx *c, const dm_tensor *t)
{
    return t ? dm_tensor_to_f32(t, c->err) : NULL;
}

static float *vec(ctx *c, const char *name, int64_t n)
{
    return to_f32(c, need(c, name, 1, n));
}

static int mat(ctx *c, dm_mat *out, const char *name, int64_t rows, int64_t cols)
{
    const dm_tensor *t = need(c, name, 2, rows, cols);
    if (!t)
        return c->err ? c->err->code : DM_ESHAPE;
    *out = (dm_mat){ t, 0, rows, cols };
    return 0;
}

static int cfg_int(const cJSON *j, const char *key, int def)
{
    const cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, key) : NULL;
    return cJSON_IsNumber(v) ? v->valueint : def;
}

static double cfg_num(const cJSON *j, const char *key, double def)
{
    const cJSON *v = j ? cJSON_GetObjectItemCaseSensitive(j, key) : NULL;
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int count_blocks(ctx *c)
{
    char name[128];
    int n = 0;
    for (;; n++) {
        snprintf(name, sizeof name, c->hf ? "layer.%d.norm1.weight" : "blocks.%d.norm1.weight", n);
        if (!lookup(c, name))
            return n;
    }
}

/* Works out the architecture (spec §1) from the tensors, config.json and the --arch option. */
static int recognise(ctx *c, const dm_model_opts *o, const cJSON *hfcfg)
{
    dm_vit_config *cfg = &c->m->cfg;
    const char *file = dm_weights_path(c->w);
    const dm_tensor *cls = lookup(c, c->hf ? "embeddings.cls_token" : "cls_token");
    if (cls->ndim != 3 || cls->shape[0] != 1 || cls->shape[1] != 1 || cls->shape[2] < 1 ||
        cls->shape[2] > 65536)
        return dm_err_set(c->err, DM_ESHAPE, "weights file %s: tensor %s has an unexpected shape "
                          "(expected [1,1,D])", file, cls->name);
    int D = (int)cls->shape[2];
    int depth = count_blocks(c);
    if (depth == 0)
        return dm_err_set(c->err, DM_ESHAPE, "weights file %s: no transformer blocks found "
                          "(%s%s.0.*)", file, c->prefix, c->hf ? "layer" : "blocks");
    const dm_tensor *reg = lookup(c, c->hf ? "embeddings.register_tokens" : "storage_tokens");
    cfg->n_storage = reg && reg->ndim == 3 ? (int)reg->shape[1] : 0;
    const char *gate = c->hf ? "layer.0.mlp.gate_proj.weight" : "blocks.0.mlp.w1.weight";
    const char *up = c->hf ? "layer.0.mlp.up_proj.weight" : "blocks.0.mlp.fc1.weight";
    const dm_tensor *f1 = lookup(c, gate);
    cfg->swiglu = f1 != NULL;
    if (!f1)
        f1 = lookup(c, up);
    if (!f1 || f1->ndim != 2)
        return dm_err_set(c->err, DM_ESHAPE, "weights file %s: missing FFN weight %s%s (or %s%s)",
                          file, c->prefix, up, c->prefix, gate);
    cfg->ffn_hidden = (int)f1->shape[0];
    cfg->embed_dim = D;
    cfg->depth = depth;
    cfg->ln_eps = 1e-5f;
    cfg->rope_base = 100.0f;

    int hd = 0;
    const dm_tensor *per = c->hf ? NULL : lookup(c, "rope_embed.periods");
    if (per && per->ndim == 1 && per->shape[0] > 0 && per->shape[0] <= DM_MAX_PERIODS)
        hd = (int)per->shape[0] * 4;
    if (c->hf) {
        int nh = cfg_int(hfcfg, "num_attention_heads", 0);
        if (nh > 0 && D % nh == 0)
            hd = D / nh;
        cfg->ln_eps = (float)cfg_num(hfcfg, "layer_norm_eps", 1e-5);
        cfg->rope_base = (float)cfg_num(hfcfg, "rope_theta", 100.0);
    }
    const dm_arch_preset *forced = NULL;
    if (o && o->arch && *o->arch) {
        forced = dm_arch_find(o->arch);
        if (!forced)
            return dm_err_set(c->err, DM_EINVAL, "--arch %s: unknown architecture (known: vits16, "
                              "vits16plus, vitb16, vitl16, vitl16plus, vith16plus, vit7b16)",
                              o->arch);
        if (forced->embed_dim != D || forced->depth != depth || forced->swiglu != cfg->swiglu ||
            forced->ffn_hidden != cfg->ffn_hidden)
            return dm_err_set(c->err, DM_ESHAPE, "--arch %s expects D=%d, %d blocks, %s FFN %d; "
                              "weights file %s has D=%d, %d blocks, %s FFN %d", forced->name,
                              forced->embed_dim, forced->depth, forced->swiglu ? "SwiGLU" : "MLP",
                              forced->ffn_hidden, file, D, depth, cfg->swiglu ? "SwiGLU" : "MLP",
                              cfg->ffn_hidden);
        int fhd = forced->embed_dim / forced->num_heads;
        if (hd && hd != fhd)
            return dm_err_set(c->err, DM_ESHAPE, "--arch %s has head dim %d but weights file %s "
                              "implies %d", forced->name, fhd, file, hd);
        hd = fhd;
    }
    int np;
    const dm_arch_preset *all = dm_arch_all(&np);
    if (!hd) /* no periods, no config: a full-size hub model is recognised by its sizes */
        for (int i = 0; i < np; i++)
            if (all[i].embed_dim == D && all[i].depth == depth && all[i].swiglu == cfg->swiglu)
                hd = D / all[i].num_heads;
    if (!hd || D % hd || hd % 4)
        return dm_err_set(c->err, DM_ESHAPE, "weights file %s: cannot tell the number of attention "
                          "heads (no rope_embed.periods, no config.json); pass --arch", file);
    cfg->head_dim = hd;
    cfg->num_heads = D / hd;
    snprintf(cfg->arch, sizeof cfg->arch, "custom");
    for (int i = 0; i < np; i++)
        if (all[i].embed_dim == D && all[i].depth == depth && all[i].num_heads == cfg->num_heads &&
            all[i].swiglu == cfg->swiglu && all[i].ffn_hidden == cfg->ffn_hidden)
            snprintf(cfg->arch, sizeof cfg->arch, "%s", all[i].name);

    int nf = hd / 4;
    if (per) {
        if (per->ndim != 1 || per->shape[0] != nf)
            return dm_err_set(c->err, DM_ESHAPE, "weights file %s: rope_embed.periods has %lld "
                              "entries, expected %d for head dim %d", file,
                              (long long)dm_tensor_numel(per), nf, hd);
        if (dm_tensor_read_f32(per, 0, nf, cfg->periods, c->err))
            return c->err->code;
        mark(c, per);
        cfg->periods_from_file = 1;
    } else {
        /* Hugging Face recomputes them: 1 / base ** arange(0, 1, 4/hd), in fp32 */
        float step = 4.0f / (float)hd;
        for (int i = 0; i < nf; i++)
            cfg->periods[i] = powf(cfg->rope_base, (float)i * step);
    }
    cfg->layout = c->hf ? "hf" : "meta";
    cfg->default_norm = "sat";
    return 0;
}

static int bind_block(ctx *c, int i)
{
    dm_model *m = c->m;
    dm_vit_block *b = &m->blocks[i];
    int64_t D = m->cfg.embed_dim, F = m->cfg.ffn_hidden;
    char n[160];
    const char *pre = c->hf ? "layer" : "blocks";
#define NAME(fmt) (snprintf(n, sizeof n, "%s.%d." fmt, pre, i), n)
    if (!(b->norm1_w = vec(c, NAME("norm1.weight"), D)) ||
        !(b->norm1_b = vec(c, NAME("norm1.bias"), D)) ||
        !(b->norm2_w = vec(c, NAME("norm2.weight"), D)) ||
        !(b->norm2_b = vec(c, NAME("norm2.bias"), D)))
        return c->err->code;
    b->qkv_b = calloc((size_t)(3 * D), sizeof(float));
    if (!b->qkv_b)
        return dm_err_oom(c->err);
    if (!c->hf) {
        const dm_tensor *qkv = need(c, NAME("attn.qkv.weight"), 2, 3 * D, D);
        if (!qkv)
            return c->err->code;
        b->qkv = (dm_mat){ qkv, 0, 3 * D, D };
        b->q = (dm_mat){ qkv, 0, D, D };
        b->k = (dm_mat){ qkv, D, D, D };
        b->v = (dm_mat){ qkv, 2 * D, D, D };
        if (lookup(c, NAME("attn.qkv.bias"))) {
            float *bias = vec(c, NAME("attn.qkv.bias"), 3 * D);
            if (!bias)
                return c->err->code;
            memcpy(b->qkv_b, bias, (size_t)(3 * D) * sizeof(float));
            free(bias);
            if (lookup(c, NAME("attn.qkv.bias_mask"))) { /* spec §2.4: bias ⊙ bias_mask */
                float *mask = vec(c, NAME("attn.qkv.bias_mask"), 3 * D);
                if (!mask)
                    return c->err->code;
                for (int64_t j = 0; j < 3 * D; j++)
                    b->qkv_b[j] *= mask[j];
                free(mask);
            }
        }
        if (!(b->proj_b = vec(c, NAME("attn.proj.bias"), D)) ||
            mat(c, &b->proj, NAME("attn.proj.weight"), D, D) ||
            !(b->ls1 = vec(c, NAME("ls1.gamma"), D)) || !(b->ls2 = vec(c, NAME("ls2.gamma"), D)))
            return c->err->code;
        if (m->cfg.swiglu) {
            if (mat(c, &b->w1, NAME("mlp.w1.weight"), F, D) ||
                mat(c, &b->w2, NAME("mlp.w2.weight"), F, D) ||
                mat(c, &b->fc2, NAME("mlp.w3.weight"), D, F) ||
                !(b->fc1_b = vec(c, NAME("mlp.w1.bias"), F)) ||
                !(b->w2_b = vec(c, NAME("mlp.w2.bias"), F)) ||
                !(b->fc2_b = vec(c, NAME("mlp.w3.bias"), D)))
                return c->err->code;
        } else if (mat(c, &b->fc1, NAME("mlp.fc1.weight"), F, D) ||
                   mat(c, &b->fc2, NAME("mlp.fc2.weight"), D, F) ||
                   !(b->fc1_b = vec(c, NAME("mlp.fc1.bias"), F)) ||
                   !(b->fc2_b = vec(c, NAME("mlp.fc2.bias"), D))) {
            return c->err->code;
        }
    } else {
        static const char *qkvn[3] = { "q_proj", "k_proj", "v_proj" };
        dm_mat *dst[3] = { &b->q, &b->k, &b->v };
        for (int s = 0; s < 3; s++) {
            snprintf(n, sizeof n, "layer.%d.attention.%s.weight", i, qkvn[s]);
            if (mat(c, dst[s], n, D, D))
                return c->err->code;
            snprintf(n, sizeof n, "layer.%d.attention.%s.bias", i, qkvn[s]);
            if (lookup(c, n)) {
                float *bias = vec(c, n, D);
                if (!bias)
                    return c->err->code;
                memcpy(b->qkv_b + s * D, bias, (size_t)D * sizeof(float));
                free(bias);
            }
        }
        if (!(b->proj_b = vec(c, NAME("attention.o_proj.bias"), D)) ||
            mat(c, &b->proj, NAME("attention.o_proj.weight"), D, D) ||
            !(b->ls1 = vec(c, NAME("layer_scale1.lambda1"), D)) ||
            !(b->ls2 = vec(c, NAME("layer_scale2.lambda1"), D)))
            return c->err->code;
        if (m->cfg.swiglu) {
            if (mat(c, &b->w1, NAME("mlp.gate_proj.weight"), F, D) ||
                mat(c, &b->w2, NAME("mlp.up_proj.weight"), F, D) ||
                mat(c, &b->fc2, NAME("mlp.down_proj.weight"), D, F) ||
                !(b->fc1_b = vec(c, NAME("mlp.gate_proj.bias"), F)) ||
                !(b->w2_b = vec(c, NAME("mlp.up_proj.bias"), F)) ||
                !(b->fc2_b = vec(c, NAME("mlp.down_proj.bias"), D)))
                return c->err->code;
        } else if (mat(c, &b->fc1, NAME("mlp.up_proj.weight"), F, D) ||
                   mat(c, &b->fc2, NAME("mlp.down_proj.weight"), D, F) ||
                   !(b->fc1_b = vec(c, NAME("mlp.up_proj.bias"), F)) ||
                   !(b->fc2_b = vec(c, NAME("mlp.down_proj.bias"), D))) {
            return c->err->code;
        }
    }
#undef NAME
    return 0;
}

static int is_ignored(const char *rest)
{
    return !strcmp(rest, "mask_token") || !strcmp(rest, "embeddings.mask_token") ||
           !strncmp(rest, "local_cls_norm.", 15);
}

static int bind_all(ctx *c, const dm_model_opts *o)
{
    dm_model *m = c->m;
    cJSON *hfcfg = NULL, *root = NULL;
    if (c->hf && dm_weights_config(c->w)) {
        root = cJSON_Parse(dm_weights_config(c->w));
        const cJSON *bc = cJSON_GetObjectItemCaseSensitive(root, "backbone_config");
        hfcfg = cJSON_IsObject(bc) ? (cJSON *)bc : root;
    }
    int rc = recognise(c, o, hfcfg);
    cJSON_Delete(root);
    if (rc)
        return rc;
    int64_t D = m->cfg.embed_dim, R = m->cfg.n_storage;
    if (!(m->cls_token = to_f32(c, need(c, c->hf ? "embeddings.cls_token" : "cls_token", 3,
                                        (int64_t)1, (int64_t)1, D))))
        return c->err->code;
    if (R && !(m->storage = to_f32(c, need(c, c->hf ? "embeddings.register_tokens"
                                                     : "storage_tokens", 3, (int64_t)1, R, D))))
        return c->err->code;
    const char *pw = c->hf ? "embeddings.patch_embeddings.weight" : "patch_embed.proj.weight";
    const dm_tensor *t = need(c, pw, 4, D, (int64_t)3, (int64_t)DM_PATCH, (int64_t)DM_PATCH);
    if (!t)
        return c->err->code;
    m->patch_w = (dm_mat){ t, 0, D, 3 * DM_PATCH * DM_PATCH };
    if (!(m->patch_b = vec(c, c->hf ? "embeddings.patch_embeddings.bias" : "patch_embed.proj.bias",
                           D)) ||
        !(m->norm_w = vec(c, "norm.weight", D)) || !(m->norm_b = vec(c, "norm.bias", D)))
        return c->err->code;
    m->blocks = calloc((size_t)m->cfg.depth, sizeof *m->blocks);
    if (!m->blocks)
        return dm_err_oom(c->err);
    for (int i = 0; i < m->cfg.depth; i++)
        if ((rc = bind_block(c, i)))
            return rc;
    /* every tensor under the prefix must be used or known-unused: anything else means the file is
     * not the architecture we think it is */
    size_t plen = strlen(c->prefix);
    for (size_t i = 0; i < dm_weights_count(c->w); i++) {
        const dm_tensor *x = dm_weights_at(c->w, i);
        if (c->used[i] || strncmp(x->name, c->prefix, plen))
            continue;
        if (is_ignored(x->name + plen)) {
            m->n_ignored++;
            continue;
        }
        return dm_err_set(c->err, DM_ESHAPE, "weights file %s: unexpected tensor %s (not part of "
                          "a %s DINOv3 backbone with %d blocks)", dm_weights_path(c->w), x->name,
                          m->cfg.arch, m->cfg.depth);
    }
    return 0;
}

int dm_model_bind(dm_weights *w, const dm_model_opts *o, dm_model **out, dm_err *err)
{
    static const char *prefixes[] = { "", "backbone.", "model.", "backbone.model.", "module.",
                                      "encoder.backbone." };
    dm_err local;
    if (!err)
        err = &local;
    *out = NULL;
    dm_model *m = calloc(1, sizeof *m);
    unsigned char *used = calloc(dm_weights_count(w) + 1, 1);
    if (!m || !used) {
        free(m);
        free(used);
        return dm_err_oom(err);
    }
    m->w = w;
    m->borrowed = 1;
    ctx c = { w, m, NULL, 0, used, err };
    char name[128];
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0] && !c.prefix; i++) {
        snprintf(name, sizeof name, "%scls_token", prefixes[i]);
        if (dm_weights_find(w, name)) {
            c.prefix = prefixes[i];
            break;
        }
        snprintf(name, sizeof name, "%sembeddings.cls_token", prefixes[i]);
        if (dm_weights_find(w, name)) {
            c.prefix = prefixes[i];
            c.hf = 1;
        }
    }
    int rc;
    if (!c.prefix) {
        rc = dm_err_set(err, DM_ESHAPE, "weights file %s: no DINOv3 backbone in it (no cls_token "
                        "or embeddings.cls_token tensor); if it is a head, pass it with --head",
                        dm_weights_path(w));
    } else {
        snprintf(m->prefix, sizeof m->prefix, "%s", c.prefix);
        rc = bind_all(&c, o);
    }
    free(used);
    if (rc) {
        dm_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int dm_model_open(const char *path, const dm_model_opts *o, dm_model **out, dm_err *err)
{
    dm_weights *w;
    int rc = dm_weights_open(path, &w, err);
    if (rc)
        return rc;
    rc = dm_model_bind(w, o, out, err);
    if (rc) {
        dm_weights_close(w);
        return rc;
    }
    (*out)->borrowed = 0;
    return 0;
}

void dm_model_free(dm_model *m)
{
    if (!m)
        return;
    for (int i = 0; m->blocks && i < m->cfg.depth; i++) {
        dm_vit_block *b = &m->blocks[i];
        free(b->norm1_w), free(b->norm1_b), free(b->norm2_w), free(b->norm2_b);
        free(b->ls1), free(b->ls2), free(b->qkv_b), free(b->proj_b);
        free(b->fc1_b), free(b->w2_b), free(b->fc2_b);
    }
    free(m->blocks);
    free(m->cls_token), free(m->storage), free(m->patch_b), free(m->norm_w), free(m->norm_b);
    if (!m->borrowed)
        dm_weights_close(m->w);
    free(m);
}

int dm_model_tokens(const dm_model *m, int H, int W)
{
    return 1 + m->cfg.n_storage + (H / DM_PATCH) * (W / DM_PATCH);
}

void dm_normalize_rgb8(const uint8_t *rgb, int H, int W, const dm_norm *nm, float *out)
{
    size_t plane = (size_t)H * W;
    for (int ch = 0; ch < 3; ch++) {
        float mean = nm->mean[ch], sd = nm->std[ch];
        for (size_t i = 0; i < plane; i++) {
            float v = (float)rgb[i * 3 + ch] / 255.0f; /* ToDtype(scale=True), then Normalize */
            out[ch * plane + i] = (v - mean) / sd;
        }
    }
}

void dm_model_norm_tokens(const dm_model *m, const float *in, float *out, int64_t n)
{
    dm_layernorm(in, out, n, m->cfg.embed_dim, m->norm_w, m->norm_b, m->cfg.ln_eps);
}

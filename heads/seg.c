/* heads/seg.c — segmentation heads (see seg.h): the .dmseg file, Meta's linear head, logits. */
#include "seg.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../models/ops.h"
#include "../models/weights.h"

/* --- classes and colours ------------------------------------------------------------------- */

void dm_seg_default_color(int i, uint8_t rgb[3])
{
    /* ColorBrewer's Paired, then Set2: distinct on a map */
    static const uint8_t pal[20][3] = {
        { 31, 120, 180 },  { 51, 160, 44 },   { 227, 26, 28 },   { 255, 127, 0 },
        { 106, 61, 154 },  { 177, 89, 40 },   { 166, 206, 227 }, { 178, 223, 138 },
        { 251, 154, 153 }, { 253, 191, 111 }, { 202, 178, 214 }, { 255, 255, 153 },
        { 102, 194, 165 }, { 252, 141, 98 },  { 141, 160, 203 }, { 231, 138, 195 },
        { 166, 216, 84 },  { 255, 217, 47 },  { 229, 196, 148 }, { 179, 179, 179 },
    };
    if (i >= 0 && i < 20) {
        memcpy(rgb, pal[i], 3);
        return;
    }
    uint32_t h = (uint32_t)i * 2654435761u;
    h ^= h >> 15;
    rgb[0] = (uint8_t)(64 + (h & 127)), rgb[1] = (uint8_t)(64 + ((h >> 8) & 127));
    rgb[2] = (uint8_t)(64 + ((h >> 16) & 127));
}

int dm_seg_parse_color(const char *s, uint8_t rgb[3])
{
    unsigned v;
    int n = 0;
    if (!s || s[0] != '#' || strlen(s) != 7 || sscanf(s + 1, "%6x%n", &v, &n) != 1 || n != 6)
        return -1;
    rgb[0] = (uint8_t)(v >> 16), rgb[1] = (uint8_t)(v >> 8), rgb[2] = (uint8_t)v;
    return 0;
}

dm_seg_head *dm_seg_head_new(int C, int D)
{
    if (C < 1 || C > DM_SEG_MAX_CLASSES || D < 1 || D > 1 << 16)
        return NULL;
    dm_seg_head *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->C = C, h->D = D, h->layer = -1;
    h->w = calloc((size_t)C * D, sizeof *h->w);
    h->b = calloc((size_t)C, sizeof *h->b);
    h->cls = calloc((size_t)C, sizeof *h->cls);
    if (!h->w || !h->b || !h->cls) {
        dm_seg_head_free(h);
        return NULL;
    }
    for (int c = 0; c < C; c++) {
        h->cls[c].id = c + 1 <= 254 ? c + 1 : c;
        snprintf(h->cls[c].name, sizeof h->cls[c].name, "class %d", h->cls[c].id);
        dm_seg_default_color(c, h->cls[c].rgb);
    }
    snprintf(h->kind, sizeof h->kind, "linear");
    return h;
}

void dm_seg_head_free(dm_seg_head *h)
{
    if (!h)
        return;
    free(h->w), free(h->b), free(h->cls), free(h->info);
    free(h);
}

void dm_seg_logits(const dm_seg_head *h, const float *x, int n, float *logits)
{
    for (int i = 0; i < n; i++)
        memcpy(logits + (size_t)i * h->C, h->b, sizeof(float) * (size_t)h->C);
    dm_ops_sgemm(0, 1, n, h->C, h->D, 1.0f, x, h->D, h->w, h->D, 1.0f, logits, h->C);
}

void dm_seg_head_sha256(const dm_seg_head *h, char out[65])
{
    dm_sha256 s;
    if (dm_sha256_init(&s)) {
        snprintf(out, 65, "%064d", 0);
        return;
    }
    int dims[2] = { h->C, h->D };
    dm_sha256_update(&s, dims, sizeof dims);
    dm_sha256_update(&s, h->w, sizeof(float) * (size_t)h->C * h->D);
    dm_sha256_update(&s, h->b, sizeof(float) * (size_t)h->C);
    for (int c = 0; c < h->C; c++) {
        dm_sha256_update(&s, &h->cls[c].id, sizeof h->cls[c].id);
        dm_sha256_update(&s, h->cls[c].name, strlen(h->cls[c].name) + 1);
        dm_sha256_update(&s, h->cls[c].rgb, 3);
    }
    dm_sha256_hex(&s, out);
}

/* --- the .dmseg file ------------------------------------------------------------------------ */

cJSON *dm_seg_classes_json(const dm_seg_head *h)
{
    cJSON *a = cJSON_CreateArray();
    for (int c = 0; a && c < h->C; c++) {
        cJSON *o = cJSON_CreateObject();
        char col[8];
        snprintf(col, sizeof col, "#%02x%02x%02x", h->cls[c].rgb[0], h->cls[c].rgb[1],
                 h->cls[c].rgb[2]);
        cJSON_AddNumberToObject(o, "id", h->cls[c].id);
        cJSON_AddStringToObject(o, "name", h->cls[c].name);
        cJSON_AddStringToObject(o, "color", col);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

/* A metadata value (safetensors allows strings only): a JSON item printed, or NULL. */
static void add_str_json(cJSON *md, const char *key, cJSON *item)
{
    char *s = item ? cJSON_PrintUnformatted(item) : NULL;
    cJSON_AddStringToObject(md, key, s ? s : "null");
    free(s);
    cJSON_Delete(item);
}

int dm_seg_head_save(const dm_seg_head *h, const char *path, dm_err *err)
{
    size_t wbytes = sizeof(float) * (size_t)h->C * h->D, bbytes = sizeof(float) * (size_t)h->C;
    cJSON *hdr = cJSON_CreateObject(), *md = cJSON_AddObjectToObject(hdr, "__metadata__");
    char num[32];
    cJSON_AddStringToObject(md, "format", "dinomap-seg");
    cJSON_AddStringToObject(md, "version", "1");
    cJSON_AddStringToObject(md, "kind", h->kind);
    add_str_json(md, "classes", dm_seg_classes_json(h));
    snprintf(num, sizeof num, "%d", h->D);
    cJSON_AddStringToObject(md, "embed_dim", num);
    cJSON_AddStringToObject(md, "backbone_sha256", h->backbone_sha256);
    cJSON_AddStringToObject(md, "arch", h->arch);
    snprintf(num, sizeof num, "%d", h->layer);
    cJSON_AddStringToObject(md, "layer", num);
    cJSON_AddStringToObject(md, "norm", h->norm);
    cJSON_AddStringToObject(md, "info", h->info ? h->info : "{}");
    cJSON *wt = cJSON_AddObjectToObject(hdr, "weight"), *bt = cJSON_AddObjectToObject(hdr, "bias");
    int ws[2] = { h->C, h->D }, off[2] = { 0, (int)wbytes }, off2[2] = { (int)wbytes,
                                                                          (int)(wbytes + bbytes) };
    cJSON_AddStringToObject(wt, "dtype", "F32");
    cJSON_AddItemToObject(wt, "shape", cJSON_CreateIntArray(ws, 2));
    cJSON_AddItemToObject(wt, "data_offsets", cJSON_CreateIntArray(off, 2));
    cJSON_AddStringToObject(bt, "dtype", "F32");
    cJSON_AddItemToObject(bt, "shape", cJSON_CreateIntArray(&h->C, 1));
    cJSON_AddItemToObject(bt, "data_offsets", cJSON_CreateIntArray(off2, 2));
    char *text = cJSON_PrintUnformatted(hdr);
    cJSON_Delete(hdr);
    if (!text)
        return dm_err_oom(err);
    size_t tl = strlen(text), pad = (8 - tl % 8) % 8, hl = tl + pad; /* data 8-byte aligned */
    size_t total = 8 + hl + wbytes + bbytes;
    unsigned char *buf = malloc(total);
    if (!buf) {
        free(text);
        return dm_err_oom(err);
    }
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, text, tl);
    memset(buf + 8 + tl, ' ', pad);
    memcpy(buf + 8 + hl, h->w, wbytes); /* little-endian, as the format says (x86, ARM) */
    memcpy(buf + 8 + hl + wbytes, h->b, bbytes);
    free(text);
    int rc = dm_write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

static int read_f32(const dm_tensor *t, int64_t n, float *dst, const char *path, dm_err *err)
{
    if (dm_tensor_numel(t) != n)
        return dm_err_set(err, DM_EFORMAT, "%s: tensor %s has %lld values, expected %lld", path,
                          t->name, (long long)dm_tensor_numel(t), (long long)n);
    return dm_tensor_read_f32(t, 0, n, dst, err);
}

static int parse_classes(dm_seg_head *h, const char *text, const char *path, dm_err *err)
{
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    int rc = 0;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != h->C)
        rc = dm_err_set(err, DM_EFORMAT, "%s: its classes are not a JSON array of %d classes",
                        path, h->C);
    uint8_t seen[256] = { 0 };
    for (int c = 0; !rc && c < h->C; c++) {
        const cJSON *o = cJSON_GetArrayItem(a, c);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "name");
        const cJSON *co = cJSON_GetObjectItemCaseSensitive(o, "color");
        int v = cJSON_IsNumber(id) ? id->valueint : -1;
        if (v < 0 || v > 254 || seen[v]++)
            rc = dm_err_set(err, DM_EFORMAT, "%s: class %d: its id must be a unique 0..254", path,
                            c);
        else if (co && dm_seg_parse_color(cJSON_GetStringValue(co), h->cls[c].rgb))
            rc = dm_err_set(err, DM_EFORMAT, "%s: class %d: color is not #rrggbb", path, v);
        else {
            h->cls[c].id = v;
            snprintf(h->cls[c].name, sizeof h->cls[c].name, "%s",
                     cJSON_IsString(nm) ? nm->valuestring : "");
        }
    }
    cJSON_Delete(a);
    return rc;
}

static const char *md_str(const cJSON *md, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(md, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int load_dmseg(const dm_weights *w, const cJSON *md, const char *path, dm_seg_head **out,
                      dm_err *err)
{
    const dm_tensor *wt = dm_weights_find(w, "weight"), *bt = dm_weights_find(w, "bias");
    const char *ver = md_str(md, "version");
    if (!ver || strcmp(ver, "1"))
        return dm_err_set(err, DM_EFORMAT, "%s: a dinomap-seg head of version %s; this dinomap "
                          "reads version 1", path, ver ? ver : "(none)");
    if (!wt || !bt || wt->ndim != 2 || bt->ndim != 1 || bt->shape[0] != wt->shape[0])
        return dm_err_set(err, DM_EFORMAT, "%s: needs tensors weight [C, D] and bias [C]", path);
    dm_seg_head *h = dm_seg_head_new((int)wt->shape[0], (int)wt->shape[1]);
    if (!h)
        return dm_err_set(err, DM_EFORMAT, "%s: %lld classes of %lld dimensions is not a head "
                          "dinomap can use (1..%d classes)", path, (long long)wt->shape[0],
                          (long long)wt->shape[1], DM_SEG_MAX_CLASSES);
    int rc = read_f32(wt, (int64_t)h->C * h->D, h->w, path, err);
    if (!rc)
        rc = read_f32(bt, h->C, h->b, path, err);
    if (!rc)
        rc = parse_classes(h, md_str(md, "classes"), path, err);
    const char *s;
    snprintf(h->kind, sizeof h->kind, "%s", (s = md_str(md, "kind")) ? s : "linear");
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%s",
             (s = md_str(md, "backbone_sha256")) ? s : "");
    snprintf(h->arch, sizeof h->arch, "%s", (s = md_str(md, "arch")) ? s : "");
    snprintf(h->norm, sizeof h->norm, "%s", (s = md_str(md, "norm")) ? s : "");
    h->layer = (s = md_str(md, "layer")) ? atoi(s) : -1;
    if (!rc && (s = md_str(md, "info")) && !(h->info = strdup(s)))
        rc = dm_err_oom(err);
    for (int i = 0; !rc && i < h->C * h->D; i++)
        if (!isfinite(h->w[i]))
            rc = dm_err_set(err, DM_EFORMAT, "%s: its weights hold non-finite values", path);
    if (rc) {
        dm_seg_head_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

/* Meta's linear head (spec §6.1): BatchNorm2d then a 1×1 conv, folded into one linear map:
 * W' = W·diag(g/s), b' = b + W·(β − μ·g/s), s = sqrt(var + 1e-5). */
static const dm_tensor *find_any(const dm_weights *w, const char *name)
{
    static const char *prefix[] = { "", "head.", "decode_head.", "module.", "model.head." };
    char n[160];
    for (size_t i = 0; i < sizeof prefix / sizeof prefix[0]; i++) {
        snprintf(n, sizeof n, "%s%s", prefix[i], name);
        const dm_tensor *t = dm_weights_find(w, n);
        if (t)
            return t;
    }
    return NULL;
}

static int load_linear(const dm_weights *w, const char *path, dm_seg_head **out, dm_err *err)
{
    const dm_tensor *cw = find_any(w, "conv.weight"), *cb = find_any(w, "conv.bias");
    const dm_tensor *g = find_any(w, "batchnorm_layer.weight");
    const dm_tensor *be = find_any(w, "batchnorm_layer.bias");
    const dm_tensor *mu = find_any(w, "batchnorm_layer.running_mean");
    const dm_tensor *var = find_any(w, "batchnorm_layer.running_var");
    if (!cw || !cb || cw->ndim != 4 || cw->shape[2] != 1 || cw->shape[3] != 1)
        return dm_err_set(err, DM_EFORMAT, "%s: not a segmentation head (no dinomap-seg metadata, "
                          "and not Meta's linear head: conv.weight [C, D, 1, 1] and conv.bias)",
                          path);
    dm_seg_head *h = dm_seg_head_new((int)cw->shape[0], (int)cw->shape[1]);
    if (!h)
        return dm_err_set(err, DM_EFORMAT, "%s: %lld classes: more than dinomap's %d", path,
                          (long long)cw->shape[0], DM_SEG_MAX_CLASSES);
    int C = h->C, D = h->D, rc = read_f32(cw, (int64_t)C * D, h->w, path, err);
    if (!rc)
        rc = read_f32(cb, C, h->b, path, err);
    if (!rc && g && be && mu && var) {
        float *p = malloc(sizeof *p * 4 * (size_t)D);
        if (!p)
            rc = dm_err_oom(err);
        if (!rc && !(rc = read_f32(g, D, p, path, err)) && !(rc = read_f32(be, D, p + D, path,
            err)) && !(rc = read_f32(mu, D, p + 2 * D, path, err)))
            rc = read_f32(var, D, p + 3 * D, path, err);
        for (int c = 0; !rc && c < C; c++) {
            double acc = h->b[c];
            for (int d = 0; d < D; d++) {
                double k = p[d] / sqrt((double)p[3 * D + d] + 1e-5);
                acc += h->w[(size_t)c * D + d] * (p[D + d] - p[2 * D + d] * k);
                h->w[(size_t)c * D + d] = (float)(h->w[(size_t)c * D + d] * k);
            }
            h->b[c] = (float)acc;
        }
        free(p);
    }
    snprintf(h->kind, sizeof h->kind, "linear");
    if (rc) {
        dm_seg_head_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

int dm_seg_head_load(const char *path, dm_seg_head **out, dm_err *err)
{
    *out = NULL;
    dm_weights *w = NULL;
    int rc = dm_weights_open(path, &w, err);
    if (rc)
        return rc;
    const char *mt = dm_weights_metadata(w);
    cJSON *md = mt ? cJSON_Parse(mt) : NULL;
    const char *fmt = md_str(md, "format");
    if (fmt && !strcmp(fmt, "dinomap-seg"))
        rc = load_dmseg(w, md, path, out, err);
    else
        rc = load_linear(w, path, out, err);
    cJSON_Delete(md);
    dm_weights_close(w);
    return rc;
}

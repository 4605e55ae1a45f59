/* models/safetensors.c — reads Hugging Face `.safetensors` files (spec §7.3):
 * [u64 LE N][N bytes of JSON header][data]. The header is untrusted: every tensor's byte range must
 * lie inside the data section and match its dtype and shape exactly, and no two tensors may share
 * bytes (the format's rule; a crafted file could otherwise alias one weight into another). */
#include "weights.h"
#include "weights_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The safetensors reference implementation refuses headers above 100 MB. */
#define MAX_HEADER ((uint64_t)100 << 20)

static const struct { const char *name; dm_dtype dt; } dtypes[] = {
    { "F32", DM_DT_F32 }, { "F16", DM_DT_F16 }, { "BF16", DM_DT_BF16 }, { "F64", DM_DT_F64 },
    { "I64", DM_DT_I64 }, { "I32", DM_DT_I32 }, { "I16", DM_DT_I16 }, { "I8", DM_DT_I8 },
    { "U8", DM_DT_U8 },   { "BOOL", DM_DT_BOOL },
};

__attribute__((format(printf, 4, 5))) static int ferr(dm_err *err, int code, const char *path,
                                                      const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dm_err_set(err, code, "%s: %s", path, msg);
}

/* JSON numbers are doubles: accept only exact non-negative integers a double holds exactly. */
static int json_u64(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || floor(d) != d)
        return 0;
    *v = (uint64_t)d;
    return 1;
}

static int read_tensor(const cJSON *e, const unsigned char *data, uint64_t data_size,
                       const char *path, dm_tensor_list *out, dm_err *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return ferr(err, DM_EFORMAT, path, "header entry %s is not an object", name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return ferr(err, DM_EFORMAT, path,
                    "tensor %s lacks a string \"dtype\", an array \"shape\" or \"data_offsets\"",
                    name);
    int found = -1;
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(jd->valuestring, dtypes[i].name))
            found = (int)i;
    if (found < 0)
        return ferr(err, DM_EUNSUPPORTED, path, "tensor %s has dtype %.32s, which is not supported",
                    name, jd->valuestring);
    dm_tensor t = { 0 };
    t.dtype = dtypes[found].dt;
    int nd = cJSON_GetArraySize(js);
    if (nd > DM_MAX_DIMS)
        return ferr(err, DM_EUNSUPPORTED, path,
                    "tensor %s has %d dimensions (at most %d supported)", name, nd, DM_MAX_DIMS);
    t.ndim = nd;
    /* Bytes the shape needs, saturated: a lying shape must not overflow into a plausible size. */
    uint64_t need = dm_dtype_size(t.dtype), nonzero = 1;
    const cJSON *x;
    int k = 0;
    cJSON_ArrayForEach(x, js)
    {
        uint64_t v;
        if (!json_u64(x, &v))
            return ferr(err, DM_EFORMAT, path, "tensor %s has a shape entry that is not a "
                        "non-negative integer", name);
        /* product of the non-zero sizes, saturated at 2^62 + 1 */
        if (v)
            nonzero = nonzero > ((uint64_t)1 << 62) / v ? ((uint64_t)1 << 62) + 1 : nonzero * v;
        t.shape[k++] = (int64_t)v;
        need = v && need > UINT64_MAX / v ? UINT64_MAX : need * v;
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(jo) != 2 || !json_u64(cJSON_GetArrayItem(jo, 0), &begin) ||
        !json_u64(cJSON_GetArrayItem(jo, 1), &end) || begin > end)
        return ferr(err, DM_EFORMAT, path, "tensor %s has bad data_offsets (want [begin, end], "
                    "begin <= end)", name);
    if (end > data_size)
        return ferr(err, DM_EFORMAT, path,
                    "tensor %s data_offsets [%llu, %llu] run past the %llu-byte data section "
                    "(truncated?)", name, (unsigned long long)begin, (unsigned long long)end,
                    (unsigned long long)data_size);
    if (end - begin != need) {
        char sb[160];
        return ferr(err, DM_EFORMAT, path,
                    "safetensors header lies: tensor %s declares %llu bytes but shape %s %s needs "
                    "%s%llu", name, (unsigned long long)(end - begin),
                    dm_shape_str(t.shape, nd, sb, sizeof sb), dm_dtype_name(t.dtype),
                    need == UINT64_MAX ? "more than " : "", (unsigned long long)need);
    }
    /* A size 0 makes the byte count 0 whatever the other sizes are, but the strides below and
     * dm_tensor_numel still multiply them: [2^32, 2^32, 0] must not overflow int64. */
    if (nonzero > (uint64_t)1 << 62) {
        char sb[160];
        return ferr(err, DM_EFORMAT, path,
                    "tensor %s has an empty shape %s whose other sizes multiply past 2^62", name,
                    dm_shape_str(t.shape, nd, sb, sizeof sb));
    }
    /* the product of the non-zero sizes is at most 2^62: the running products below fit */
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) {
        t.stride[i] = s;
        s *= t.shape[i] ? t.shape[i] : 1;
    }
    t.data = data + begin;
    if (!(t.name = strdup(name)))
        return dm_err_set(err, DM_ENOMEM, "%s: out of memory", path);
    int rc = dm_tensor_list_push(out, &t, err);
    if (rc)
        dm_err_prefix(err, "%s", path);
    return rc;
}

/* Tensors [from, l->n) of one file: no two non-empty byte ranges may overlap. */
static int cmp_range(const void *a, const void *b)
{
    const dm_tensor *x = *(const dm_tensor *const *)a, *y = *(const dm_tensor *const *)b;
    return (x->data > y->data) - (x->data < y->data);
}

static int check_overlaps(const dm_tensor_list *l, size_t from, const unsigned char *data,
                          const char *path, dm_err *err)
{
    size_t n = l->n - from, k = 0;
    const dm_tensor **v = malloc((n ? n : 1) * sizeof *v);
    if (!v)
        return dm_err_set(err, DM_ENOMEM, "%s: out of memory", path);
    for (size_t i = from; i < l->n; i++)
        if (dm_tensor_numel(&l->v[i]))
            v[k++] = &l->v[i];
    qsort(v, k, sizeof *v, cmp_range);
    int rc = 0;
    for (size_t i = 1; i < k && !rc; i++) {
        const dm_tensor *a = v[i - 1], *b = v[i];
        size_t a_end = (size_t)(a->data - data) +
                       (size_t)dm_tensor_numel(a) * dm_dtype_size(a->dtype);
        if ((size_t)(b->data - data) < a_end)
            rc = ferr(err, DM_EFORMAT, path, "tensors %s [%zu, %zu) and %s [%zu, ...) overlap in "
                      "the data section (a damaged or crafted file; safetensors tensors never "
                      "share bytes)", a->name, (size_t)(a->data - data), a_end, b->name,
                      (size_t)(b->data - data));
    }
    free(v);
    return rc;
}

int dm_safetensors_read(const unsigned char *base, size_t size, const char *path,
                        dm_tensor_list *out, dm_err *err)
{
    size_t first = out->n;
    if (size < 8)
        return ferr(err, DM_EFORMAT, path, "too short to be a safetensors file");
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n |= (uint64_t)base[i] << (8 * i);
    if (n > size - 8)
        return ferr(err, DM_EFORMAT, path,
                    "safetensors header length %llu exceeds the %zu bytes after it (truncated or "
                    "not a safetensors file)", (unsigned long long)n, size - 8);
    if (n > MAX_HEADER)
        return ferr(err, DM_EFORMAT, path, "safetensors header of %llu bytes is implausibly large",
                    (unsigned long long)n);
    /* cJSON gets a NUL-terminated private copy so no parser path can read past the header. */
    char *text = malloc((size_t)n + 1);
    if (!text)
        return dm_err_set(err, DM_ENOMEM, "%s: out of memory", path);
    memcpy(text, base + 8, (size_t)n);
    text[n] = '\0';
    const char *endp = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, (size_t)n, &endp, 0);
    int rc = 0;
    if (j && endp) /* the header may be padded with spaces, but nothing else may follow */
        for (const char *q = endp; q < text + n && !rc; q++)
            if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r' && *q != '\0')
                rc = 1;
    if (!cJSON_IsObject(j) || rc) {
        cJSON_Delete(j);
        free(text);
        return ferr(err, DM_EFORMAT, path, "safetensors header is not a JSON object");
    }
    const unsigned char *data = base + 8 + n;
    uint64_t data_size = size - 8 - n;
    const cJSON *e;
    cJSON_ArrayForEach(e, j)
    {
        if (!e->string)
            continue;
        if (!strcmp(e->string, "__metadata__")) { /* string → string (the format's rule) */
            if (cJSON_IsObject(e) && !out->metadata &&
                !(out->metadata = cJSON_PrintUnformatted(e)))
                rc = ferr(err, DM_ENOMEM, path, "out of memory");
            if (rc)
                break;
            continue;
        }
        if ((rc = read_tensor(e, data, data_size, path, out, err)))
            break;
    }
    if (!rc)
        rc = check_overlaps(out, first, data, path, err);
    cJSON_Delete(j);
    free(text);
    return rc;
}

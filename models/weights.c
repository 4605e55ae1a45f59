/* models/weights.c — opens weight files (mmap, read-only), dispatches to the format readers and
 * answers name look-ups. See weights.h. */
#include "weights.h"
#include "weights_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SHARDS 256

typedef struct map {
    unsigned char *p;
    size_t n;
    char *path;
} map;

struct dm_weights {
    char *path;
    const char *format;
    map maps[MAX_SHARDS];
    int nmaps;
    dm_tensor_list list;
    const dm_tensor **order; /* the tensors sorted by name, for binary search */
    char *config;
    uint64_t bytes;
};

size_t dm_dtype_size(dm_dtype t)
{
    switch (t) {
    case DM_DT_F64: case DM_DT_I64: return 8;
    case DM_DT_F32: case DM_DT_I32: return 4;
    case DM_DT_F16: case DM_DT_BF16: case DM_DT_I16: return 2;
    case DM_DT_I8: case DM_DT_U8: case DM_DT_BOOL: return 1;
    }
    return 0;
}

const char *dm_dtype_name(dm_dtype t)
{
    static const char *names[] = { "f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8",
                                   "bool" };
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

int64_t dm_tensor_numel(const dm_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int dm_tensor_is_contiguous(const dm_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s)
            return 0;
        s *= t->shape[i];
    }
    return 1;
}

const char *dm_shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t k = 0;
    k += snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
    return buf;
}

float dm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | man << 13;
    } else {
        u = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    union { uint32_t u; float f; } v = { u };
    return v.f;
}

static inline uint64_t load_le(const unsigned char *p, size_t n, int swap)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[swap ? n - 1 - i : i] << (8 * i);
    return v;
}

static float elem_f32(const unsigned char *p, dm_dtype dt, int swap)
{
    size_t sz = dm_dtype_size(dt);
    if (dt == DM_DT_F32 && !swap) {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    uint64_t v = load_le(p, sz, swap);
    switch (dt) {
    case DM_DT_F32: { union { uint32_t u; float f; } c = { (uint32_t)v }; return c.f; }
    case DM_DT_F64: { union { uint64_t u; double d; } c = { v }; return (float)c.d; }
    case DM_DT_BF16: return dm_bf16_to_f32((uint16_t)v);
    case DM_DT_F16: return dm_f16_to_f32((uint16_t)v);
    case DM_DT_I64: return (float)(int64_t)v;
    case DM_DT_I32: return (float)(int32_t)(uint32_t)v;
    case DM_DT_I16: return (float)(int16_t)(uint16_t)v;
    case DM_DT_I8: return (float)(int8_t)(uint8_t)v;
    case DM_DT_U8: return (float)(uint8_t)v;
    case DM_DT_BOOL: return v ? 1.0f : 0.0f;
    }
    return 0.0f;
}

void dm_tensor_release(const dm_tensor *t, int64_t first, int64_t count)
{
    if (!dm_tensor_is_contiguous(t) || count <= 0)
        return;
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), sz = dm_dtype_size(t->dtype);
    uintptr_t a = (uintptr_t)(t->data + (size_t)first * sz), b = a + (size_t)count * sz;
    a = (a + pg - 1) / pg * pg; /* whole pages only: neighbours may still be in use */
    b = b / pg * pg;
    if (b > a) /* the mapping is read-only and private to a file: nothing is lost */
        madvise((void *)a, b - a, MADV_DONTNEED);
}

int dm_tensor_read_f32(const dm_tensor *t, int64_t first, int64_t count, float *dst, dm_err *err)
{
    int64_t numel = dm_tensor_numel(t);
    if (first < 0 || count < 0 || first + count > numel)
        return dm_err_set(err, DM_EINVAL, "tensor %s: read of [%lld,%lld) outside %lld elements",
                          t->name, (long long)first, (long long)(first + count), (long long)numel);
    size_t sz = dm_dtype_size(t->dtype);
    if (dm_tensor_is_contiguous(t) && !t->swap) {
        const unsigned char *p = t->data + (size_t)first * sz;
        if (t->dtype == DM_DT_F32) {
            memcpy(dst, p, (size_t)count * 4);
            return 0;
        }
        if (t->dtype == DM_DT_BF16) {
            for (int64_t i = 0; i < count; i++) {
                uint16_t h;
                memcpy(&h, p + 2 * i, 2);
                dst[i] = dm_bf16_to_f32(h);
            }
            return 0;
        }
        for (int64_t i = 0; i < count; i++)
            dst[i] = elem_f32(p + (size_t)i * sz, t->dtype, 0);
        return 0;
    }
    /* general strided walk: decompose the flat index once, then step an odometer */
    int64_t idx[DM_MAX_DIMS] = { 0 };
    int64_t rem = first;
    for (int d = t->ndim - 1; d >= 0; d--) {
        idx[d] = t->shape[d] ? rem % t->shape[d] : 0;
        rem = t->shape[d] ? rem / t->shape[d] : 0;
    }
    for (int64_t i = 0; i < count; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; d++)
            off += idx[d] * t->stride[d];
        dst[i] = elem_f32(t->data + (size_t)off * sz, t->dtype, t->swap);
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return 0;
}

float *dm_tensor_to_f32(const dm_tensor *t, dm_err *err)
{
    int64_t n = dm_tensor_numel(t);
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    if (!v) {
        dm_err_oom(err);
        return NULL;
    }
    if (dm_tensor_read_f32(t, 0, n, v, err)) {
        free(v);
        return NULL;
    }
    return v;
}

int dm_tensor_check_bounds(const char *name, const int64_t *shape, const int64_t *stride, int ndim,
                           dm_dtype dt, uint64_t offset_bytes, uint64_t blob_size, dm_err *err)
{
    char sb[160];
    if (ndim < 0 || ndim > DM_MAX_DIMS)
        return dm_err_set(err, DM_EFORMAT, "tensor %s has %d dimensions (at most %d supported)",
                          name, ndim, DM_MAX_DIMS);
    uint64_t last = 0; /* largest element index reached */
    uint64_t nonzero = 1; /* product of the non-zero sizes */
    int empty = 0, too_far = 0;
    for (int i = 0; i < ndim; i++) {
        /* Bounding the product of the non-zero sizes keeps every partial product of int64 sizes
         * from overflowing, in any order and even when another size is 0 (dm_tensor_numel
         * multiplies forwards, dm_tensor_is_contiguous backwards): [0, 2^40, 2^40] is refused. */
        if (shape[i] < 0 || shape[i] > (int64_t)1 << 40 || stride[i] < 0 ||
            stride[i] > (int64_t)1 << 40 ||
            (shape[i] && nonzero > ((uint64_t)1 << 62) / (uint64_t)shape[i]))
            return dm_err_set(err, DM_EFORMAT, "tensor %s has an invalid shape %s or stride", name,
                              dm_shape_str(shape, ndim, sb, sizeof sb));
        if (shape[i])
            nonzero *= (uint64_t)shape[i];
        if (shape[i] == 0)
            empty = 1;
        else if (stride[i] && (uint64_t)(shape[i] - 1) > blob_size / (uint64_t)stride[i])
            too_far = 1; /* one term alone passes the blob; summing it could wrap to small */
        else
            last += (uint64_t)(shape[i] - 1) * (uint64_t)stride[i];
    }
    if (empty)
        return 0;
    if (too_far)
        return dm_err_set(err, DM_EFORMAT,
                          "tensor %s %s reaches past the %llu bytes of its data (truncated file?)",
                          name, dm_shape_str(shape, ndim, sb, sizeof sb),
                          (unsigned long long)blob_size);
    uint64_t need = offset_bytes + (last + 1) * dm_dtype_size(dt);
    if (need > blob_size || offset_bytes > blob_size)
        return dm_err_set(err, DM_EFORMAT,
                          "tensor %s %s needs %llu bytes but its data holds %llu (truncated file?)",
                          name, dm_shape_str(shape, ndim, sb, sizeof sb), (unsigned long long)need,
                          (unsigned long long)blob_size);
    return 0;
}

int dm_tensor_list_push(dm_tensor_list *l, dm_tensor *t, dm_err *err)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        dm_tensor *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            free(t->name);
            return dm_err_oom(err);
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *t;
    return 0;
}

void dm_tensor_list_free(dm_tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].name);
    free(l->v);
    free(l->metadata);
    l->v = NULL;
    l->metadata = NULL;
    l->n = l->cap = 0;
}

static int map_file(const char *path, map *m, dm_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return dm_err_set(err, DM_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return dm_err_set(err, DM_EFORMAT, "%s: empty file, not a weights file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return dm_err_set(err, DM_EIO, "%s: cannot map: %s", path, strerror(errno));
    if (!(m->path = strdup(path))) {
        munmap(p, (size_t)st.st_size);
        return dm_err_oom(err);
    }
    m->p = p;
    m->n = (size_t)st.st_size;
    return 0;
}

static char *read_text(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    /* a buffer the size of the file (up to max), not of max: an index is a few KB */
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < max)
        max = (size_t)st.st_size;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max, f) : 0;
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    return buf;
}

static char *dir_of(const char *path)
{
    char *d = strdup(path);
    if (!d)
        return NULL;
    char *s = strrchr(d, '/');
    if (s)
        s[s == d ? 1 : 0] = '\0';
    else
        strcpy(d, ".");
    return d;
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int add_file(dm_weights *w, const char *path, dm_err *err)
{
    if (w->nmaps == MAX_SHARDS)
        return dm_err_set(err, DM_EFORMAT, "%s: more than %d shards", path, MAX_SHARDS);
    map *m = &w->maps[w->nmaps];
    int rc = map_file(path, m, err);
    if (rc)
        return rc;
    w->nmaps++;
    w->bytes += m->n;
    if (m->n >= 4 && memcmp(m->p, "PK\x03\x04", 4) == 0) {
        w->format = "pth";
        return dm_pth_read(m->p, m->n, path, &w->list, err);
    }
    if (m->n >= 2 && m->p[0] == 0x80 && m->p[1] <= 5)
        return dm_err_set(err, DM_EUNSUPPORTED,
                          "%s: legacy (pre-zip) PyTorch file; re-save it with torch.save in a "
                          "current PyTorch", path);
    if (m->n >= 10 && m->p[8] == '{') {
        w->format = "safetensors";
        return dm_safetensors_read(m->p, m->n, path, &w->list, err);
    }
    return dm_err_set(err, DM_EFORMAT,
                      "%s: not a weights file (expected a PyTorch .pth zip or a .safetensors file)",
                      path);
}

/* model.safetensors.index.json → open every shard named in weight_map once. */
static int add_index(dm_weights *w, const char *path, dm_err *err)
{
    char *text = read_text(path, 64u << 20);
    if (!text)
        return dm_err_set(err, DM_EIO, "%s: cannot read", path);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *wm = j ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(j);
        return dm_err_set(err, DM_EFORMAT, "%s: not a safetensors index (no \"weight_map\" object)",
                          path);
    }
    char *dir = dir_of(path);
    const char *seen[MAX_SHARDS];
    int nseen = 0, rc = dir ? 0 : dm_err_oom(err);
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (rc)
            break;
        /* a shard is a plain file name beside the index: nothing an index names may lead
         * elsewhere (../x, /etc/x, sub/x) */
        if (!cJSON_IsString(e) || !*e->valuestring || strchr(e->valuestring, '/') ||
            strstr(e->valuestring, "..")) {
            rc = dm_err_set(err, DM_EFORMAT, "%s: bad shard name \"%.200s\" for tensor %s (a "
                            "shard must be a file name in the index's own folder)", path,
                            cJSON_IsString(e) ? e->valuestring : "(not a string)", e->string);
            break;
        }
        int dup = 0;
        for (int i = 0; i < nseen; i++)
            dup |= strcmp(seen[i], e->valuestring) == 0;
        if (dup)
            continue;
        if (nseen == MAX_SHARDS) {
            rc = dm_err_set(err, DM_EFORMAT, "%s: more than %d shards", path, MAX_SHARDS);
            break;
        }
        seen[nseen++] = e->valuestring;
        char shard[PATH_MAX];
        snprintf(shard, sizeof shard, "%s/%s", dir, e->valuestring);
        rc = add_file(w, shard, err);
    }
    free(dir);
    cJSON_Delete(j);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const dm_tensor *const *)a)->name, (*(const dm_tensor *const *)b)->name);
}

int dm_weights_open(const char *path, dm_weights **out, dm_err *err)
{
    *out = NULL;
    dm_weights *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return dm_err_oom(err);
    }
    struct stat st;
    int rc = 0;
    char buf[PATH_MAX];
    const char *file = path;
    if (stat(path, &st) != 0) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        snprintf(buf, sizeof buf, "%s/model.safetensors.index.json", path);
        if (access(buf, R_OK) != 0)
            snprintf(buf, sizeof buf, "%s/model.safetensors", path);
        file = buf;
    }
    if (!rc)
        rc = ends_with(file, ".index.json") ? add_index(w, file, err) : add_file(w, file, err);
    if (!rc && w->list.n == 0)
        rc = dm_err_set(err, DM_EFORMAT, "%s: holds no tensors", path);
    if (!rc) {
        /* duplicate names (e.g. the same tensor in two shards) are an error, not a silent pick */
        w->order = malloc(w->list.n * sizeof *w->order);
        if (!w->order)
            rc = dm_err_oom(err);
        for (size_t i = 0; !rc && i < w->list.n; i++)
            w->order[i] = &w->list.v[i];
        if (!rc) {
            qsort(w->order, w->list.n, sizeof *w->order, cmp_name);
            for (size_t i = 1; i < w->list.n && !rc; i++)
                if (!strcmp(w->order[i]->name, w->order[i - 1]->name))
                    rc = dm_err_set(err, DM_EFORMAT, "%s: tensor %s appears twice", path,
                                    w->order[i]->name);
        }
    }
    if (!rc) {
        char *dir = dir_of(file);
        if (dir) {
            snprintf(buf, sizeof buf, "%s/config.json", dir);
            w->config = read_text(buf, 1u << 20);
            free(dir);
        }
    }
    if (rc) {
        dm_weights_close(w);
        return rc;
    }
    *out = w;
    return 0;
}

void dm_weights_close(dm_weights *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->nmaps; i++) {
        munmap(w->maps[i].p, w->maps[i].n);
        free(w->maps[i].path);
    }
    dm_tensor_list_free(&w->list);
    free(w->order);
    free(w->config);
    free(w->path);
    free(w);
}

size_t dm_weights_count(const dm_weights *w) { return w->list.n; }
const dm_tensor *dm_weights_at(const dm_weights *w, size_t i)
{
    return i < w->list.n ? &w->list.v[i] : NULL;
}
const char *dm_weights_path(const dm_weights *w) { return w->path; }
const char *dm_weights_format(const dm_weights *w) { return w->format; }
const char *dm_weights_config(const dm_weights *w) { return w->config; }
const char *dm_weights_metadata(const dm_weights *w) { return w->list.metadata; }
uint64_t dm_weights_bytes(const dm_weights *w) { return w->bytes; }

const dm_tensor *dm_weights_find(const dm_weights *w, const char *name)
{
    size_t lo = 0, hi = w->list.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(w->order[mid]->name, name);
        if (c == 0)
            return w->order[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int dm_weights_nfiles(const dm_weights *w) { return w->nmaps; }
const char *dm_weights_file(const dm_weights *w, int i) { return w->maps[i].path; }

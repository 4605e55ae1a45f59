/* models/pth.c — reads PyTorch `.pth` files written by torch.save (spec §7.1–7.2): a zip of stored
 * entries whose `<prefix>/data.pkl` is a pickled state dict and whose `<prefix>/data/<key>` entries
 * hold the raw storages. The pickle is interpreted by a small stack machine that knows only the
 * opcodes and globals a tensor state dict needs, so nothing in a file is ever executed. Weight
 * files are untrusted input: every read is checked against the mapped size and every resource is
 * bounded by it. */
#include "weights.h"
#include "weights_internal.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Far above any real state dict (~20 objects per tensor), low enough that a hostile pickle cannot
 * make us allocate more than a few hundred MB. */
#define MAX_OBJS ((size_t)1 << 22)
#define MAX_KEY 256 /* storage keys are short decimal strings */

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | (unsigned)p[1] << 8); }
static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* off/len come from the file, so the check must not overflow. */
static int in_range(size_t size, uint64_t off, uint64_t len)
{
    return off <= size && len <= size - off;
}

/* Names from the file go into messages; keep them printable and short. */
static const char *safe(const unsigned char *s, size_t n, char *buf, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++)
        buf[k++] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
    if (k + 4 >= cap && n > k)
        memcpy(buf + k, "...", 3), k += 3;
    buf[k] = '\0';
    return buf;
}

static int eq(const unsigned char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* For messages from helpers that do not know the file name. err may be NULL. */
static int with_path(dm_err *err, int rc, const char *path)
{
    dm_err_prefix(err, "%s", path);
    return rc;
}

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

/* ---- zip container --------------------------------------------------------------------------- */

typedef struct zentry {
    const unsigned char *name;
    size_t name_len;
    uint64_t csize, usize, local_off;
    unsigned method, flags;
} zentry;

typedef struct zip {
    const unsigned char *b;
    size_t size;
    const char *path;
    zentry *e; /* sorted by name after zip_open */
    size_t n;
} zip;

static int zentry_cmp(const void *a, const void *b)
{
    const zentry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Central-directory fields saturated at 0xFFFFFFFF live in the ZIP64 extra field (id 0x0001), in
 * the fixed order usize, csize, local offset, each present only if saturated. */
static int zip64_extra(const zip *z, const unsigned char *x, size_t xl, zentry *e, size_t idx,
                       dm_err *err)
{
    int need_u = e->usize == 0xffffffffu, need_c = e->csize == 0xffffffffu,
        need_o = e->local_off == 0xffffffffu;
    if (!need_u && !need_c && !need_o)
        return 0;
    for (size_t q = 0; q + 4 <= xl;) {
        unsigned id = le16(x + q), sz = le16(x + q + 2);
        if (sz > xl - q - 4)
            break;
        if (id == 1) {
            const unsigned char *f = x + q + 4;
            size_t k = 0;
            if ((size_t)(need_u + need_c + need_o) * 8 > sz)
                break;
            if (need_u)
                e->usize = le64(f + k), k += 8;
            if (need_c)
                e->csize = le64(f + k), k += 8;
            if (need_o)
                e->local_off = le64(f + k);
            return 0;
        }
        q += 4 + (size_t)sz;
    }
    return ferr(err, DM_EFORMAT, z->path,
                "zip entry %zu has 32-bit-saturated sizes but no valid ZIP64 extra field", idx);
}

static int zip_open(zip *z, dm_err *err)
{
    const unsigned char *b = z->b;
    size_t size = z->size;
    if (size < 22)
        return ferr(err, DM_EFORMAT, z->path, "too short to be a zip (.pth) file");
    /* The EOCD is followed only by its comment, so requiring pos+22+comment == size rejects
     * signature bytes that happen to occur inside the data. */
    size_t lo = size - 22 > 0xffff ? size - 22 - 0xffff : 0, pos = SIZE_MAX;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (le32(b + p) == 0x06054b50u && p + 22 + le16(b + p + 20) == size) {
            pos = p;
            break;
        }
    }
    if (pos == SIZE_MAX)
        return ferr(err, DM_EFORMAT, z->path,
                    "no zip end-of-central-directory record (truncated or damaged file?)");
    uint64_t count = le16(b + pos + 10), cd_size = le32(b + pos + 12), cd_off = le32(b + pos + 16);
    if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        if (pos < 20 || le32(b + pos - 20) != 0x07064b50u)
            return ferr(err, DM_EFORMAT, z->path,
                        "zip needs ZIP64 records but has no ZIP64 locator");
        uint64_t r = le64(b + pos - 20 + 8);
        if (!in_range(size, r, 56) || le32(b + r) != 0x06064b50u)
            return ferr(err, DM_EFORMAT, z->path, "damaged ZIP64 end-of-central-directory record");
        if (count == 0xffff)
            count = le64(b + r + 32);
        if (cd_size == 0xffffffffu)
            cd_size = le64(b + r + 40);
        if (cd_off == 0xffffffffu)
            cd_off = le64(b + r + 48);
    }
    if (!in_range(size, cd_off, cd_size))
        return ferr(err, DM_EFORMAT, z->path,
                    "zip central directory [%llu, +%llu) lies outside the %zu-byte file "
                    "(truncated?)", (unsigned long long)cd_off, (unsigned long long)cd_size, size);
    if (count == 0 || count > cd_size / 46)
        return ferr(err, DM_EFORMAT, z->path,
                    "zip central directory claims %llu entries in %llu bytes",
                    (unsigned long long)count, (unsigned long long)cd_size);
    z->e = calloc((size_t)count, sizeof *z->e);
    if (!z->e)
        return with_path(err, dm_err_oom(err), z->path);
    const unsigned char *p = b + cd_off, *end = p + cd_size;
    for (size_t i = 0; i < count; i++) {
        if (end - p < 46 || le32(p) != 0x02014b50u)
            return ferr(err, DM_EFORMAT, z->path, "zip central directory entry %zu is damaged", i);
        size_t nl = le16(p + 28), xl = le16(p + 30), cl = le16(p + 32);
        if ((size_t)(end - p) - 46 < nl + xl + cl)
            return ferr(err, DM_EFORMAT, z->path, "zip central directory entry %zu is truncated",
                        i);
        zentry *e = &z->e[i];
        e->flags = le16(p + 8);
        e->method = le16(p + 10);
        e->csize = le32(p + 20);
        e->usize = le32(p + 24);
        e->local_off = le32(p + 42);
        e->name = p + 46;
        e->name_len = nl;
        int rc = zip64_extra(z, p + 46 + nl, xl, e, i, err);
        if (rc)
            return rc;
        p += 46 + nl + xl + cl;
        z->n++;
    }
    return 0;
}

static const zentry *zip_find(const zip *z, const char *name)
{
    zentry key = { .name = (const unsigned char *)name, .name_len = strlen(name) };
    return bsearch(&key, z->e, z->n, sizeof *z->e, zentry_cmp);
}

/* The payload starts after the LOCAL header, whose extra field (torch's 64-byte alignment padding)
 * differs from the central directory's, so the local lengths must be used. */
static int zip_payload(const zip *z, const zentry *e, const unsigned char **data, uint64_t *len,
                       dm_err *err)
{
    char nb[128];
    const char *nm = safe(e->name, e->name_len, nb, sizeof nb);
    if (e->flags & 1)
        return ferr(err, DM_EUNSUPPORTED, z->path, "zip entry %s is encrypted", nm);
    if (e->method != 0)
        return ferr(err, DM_EUNSUPPORTED, z->path,
                    "zip entry %s is compressed (method %u); only stored (uncompressed) entries, "
                    "as torch.save writes them, are supported", nm, e->method);
    if (e->csize != e->usize)
        return ferr(err, DM_EFORMAT, z->path, "stored zip entry %s has different sizes", nm);
    if (!in_range(z->size, e->local_off, 30) || le32(z->b + e->local_off) != 0x04034b50u)
        return ferr(err, DM_EFORMAT, z->path, "local header of zip entry %s is missing or damaged",
                    nm);
    uint64_t off = e->local_off + 30 + le16(z->b + e->local_off + 26) +
                   le16(z->b + e->local_off + 28);
    if (!in_range(z->size, off, e->csize))
        return ferr(err, DM_EFORMAT, z->path,
                    "zip entry %s (%llu bytes at offset %llu) runs past the end of the %zu-byte "
                    "file (truncated?)", nm, (unsigned long long)e->csize,
                    (unsigned long long)off, z->size);
    *data = z->b + off;
    *len = e->csize;
    return 0;
}

/* ---- pickle objects -------------------------------------------------------------------------- */

enum { K_NONE, K_BOOL, K_INT, K_FLOAT, K_STR, K_BYTES, K_TUPLE, K_LIST, K_DICT, K_GLOBAL,
       K_STORAGE, K_TENSOR };
enum { G_ODICT, G_REBUILD_V2, G_REBUILD_V3, G_REBUILD_PARAM, G_STORAGE, G_DTYPE };

typedef struct ptensor {
    dm_dtype dt;
    int ndim;
    int64_t shape[DM_MAX_DIMS], stride[DM_MAX_DIMS], offset;
    const unsigned char *blob;
    uint64_t blob_size;
} ptensor;

typedef struct obj obj;
struct obj {
    unsigned char kind;
    union {
        int64_t i;
        double f;
        struct { const unsigned char *p; size_t n; } s; /* str/bytes: a view into data.pkl */
        struct { obj **v; size_t n, cap; } seq;         /* tuple, list; dict as flat key,value */
        struct { int id; dm_dtype dt; } g;
        struct { const unsigned char *blob; uint64_t size; dm_dtype dt; } st;
        ptensor *t;
    } u;
};

#define POOL_CHUNK 1024
typedef struct pool {
    struct pool *next;
    size_t used;
    obj o[POOL_CHUNK];
} pool;

typedef struct up {
    const char *path;
    const zip *z;
    const unsigned char *prefix; /* "name/" of the top-level folder */
    size_t prefix_len;
    char *namebuf;
    const unsigned char *p;
    size_t n, pos;
    obj **stack;
    size_t sn, scap;
    size_t *marks;
    size_t mn, mcap;
    obj **memo;
    size_t memo_cap, memo_count;
    pool *pools;
    size_t nobj;
    obj none, yes, no, empty_tuple; /* immutable singletons: no allocation per NONE/NEWFALSE */
    dm_err *err;
} up;

__attribute__((format(printf, 3, 4))) static int perr(up *u, int code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dm_err_set(u->err, code, "%s: data.pkl: %s", u->path, msg);
}

static int oom(up *u)
{
    return with_path(u->err, dm_err_oom(u->err), u->path);
}

static const char *kind_name(int k)
{
    static const char *n[] = { "None", "bool", "int", "float", "str", "bytes", "tuple", "list",
                               "dict", "global", "storage", "tensor" };
    return n[k];
}

static int new_obj(up *u, int kind, obj **out)
{
    if (u->nobj >= MAX_OBJS)
        return perr(u, DM_EFORMAT, "more than %zu objects; not a state dict", MAX_OBJS);
    if (!u->pools || u->pools->used == POOL_CHUNK) {
        pool *pl = malloc(sizeof *pl);
        if (!pl)
            return oom(u);
        pl->next = u->pools;
        pl->used = 0;
        u->pools = pl;
    }
    obj *o = &u->pools->o[u->pools->used++];
    memset(o, 0, sizeof *o);
    o->kind = (unsigned char)kind;
    u->nobj++;
    *out = o;
    return 0;
}

static void up_free(up *u)
{
    while (u->pools) {
        pool *pl = u->pools;
        for (size_t i = 0; i < pl->used; i++) {
            obj *o = &pl->o[i];
            if (o->kind == K_TUPLE || o->kind == K_LIST || o->kind == K_DICT)
                free(o->u.seq.v);
            else if (o->kind == K_TENSOR)
                free(o->u.t);
        }
        u->pools = pl->next;
        free(pl);
    }
    free(u->stack);
    free(u->marks);
    free(u->memo);
    free(u->namebuf);
}

static int seq_add(up *u, obj *s, obj *x)
{
    if (s->u.seq.n == s->u.seq.cap) {
        size_t cap = s->u.seq.cap ? s->u.seq.cap * 2 : 8;
        obj **v = realloc(s->u.seq.v, cap * sizeof *v);
        if (!v)
            return oom(u);
        s->u.seq.v = v;
        s->u.seq.cap = cap;
    }
    s->u.seq.v[s->u.seq.n++] = x;
    return 0;
}

static int push(up *u, obj *o)
{
    if (u->sn == u->scap) {
        size_t cap = u->scap ? u->scap * 2 : 64;
        obj **v = realloc(u->stack, cap * sizeof *v);
        if (!v)
            return oom(u);
        u->stack = v;
        u->scap = cap;
    }
    u->stack[u->sn++] = o;
    return 0;
}

/* Items above the innermost MARK belong to it; ordinary ops may not pop through a mark. */
static size_t stack_base(const up *u) { return u->mn ? u->marks[u->mn - 1] : 0; }

static int pop(up *u, obj **o, size_t at)
{
    if (u->sn <= stack_base(u))
        return perr(u, DM_EFORMAT, "stack underflow at offset %zu", at);
    *o = u->stack[--u->sn];
    return 0;
}

static int top(up *u, obj **o, size_t at)
{
    if (u->sn <= stack_base(u))
        return perr(u, DM_EFORMAT, "stack underflow at offset %zu", at);
    *o = u->stack[u->sn - 1];
    return 0;
}

static int pop_mark(up *u, size_t *start, size_t at)
{
    if (!u->mn)
        return perr(u, DM_EFORMAT, "no MARK for the opcode at offset %zu", at);
    *start = u->marks[--u->mn];
    return 0;
}

static int need(up *u, uint64_t k, size_t at)
{
    if (k > u->n - u->pos)
        return perr(u, DM_EFORMAT,
                    "opcode at offset %zu reads %llu bytes past the end (truncated?)", at,
                    (unsigned long long)k);
    return 0;
}

/* Reads a k-byte (k <= 8) little-endian unsigned argument. */
static int take(up *u, size_t k, size_t at, uint64_t *v)
{
    int rc = need(u, k, at);
    if (rc)
        return rc;
    *v = 0;
    for (size_t i = 0; i < k; i++)
        *v |= (uint64_t)u->p[u->pos + i] << (8 * i);
    u->pos += k;
    return 0;
}

static int push_view(up *u, int kind, uint64_t len, size_t at)
{
    obj *o = NULL;
    int rc = need(u, len, at);
    if (!rc)
        rc = new_obj(u, kind, &o);
    if (rc)
        return rc;
    o->u.s.p = u->p + u->pos;
    o->u.s.n = (size_t)len;
    u->pos += (size_t)len;
    return push(u, o);
}

static int push_int(up *u, int64_t v)
{
    obj *o = NULL;
    int rc = new_obj(u, K_INT, &o);
    if (rc)
        return rc;
    o->u.i = v;
    return push(u, o);
}

static int memo_put(up *u, uint64_t idx, size_t at)
{
    obj *o = NULL;
    int rc = top(u, &o, at);
    if (rc)
        return rc;
    /* real pickles number memo slots 0,1,2...; a huge index would only make us allocate */
    if (idx >= u->n || idx >= MAX_OBJS)
        return perr(u, DM_EFORMAT, "memo index %llu at offset %zu is out of range",
                    (unsigned long long)idx, at);
    if (idx >= u->memo_cap) {
        size_t cap = u->memo_cap ? u->memo_cap : 64;
        while (cap <= idx)
            cap *= 2;
        obj **m = realloc(u->memo, cap * sizeof *m);
        if (!m)
            return oom(u);
        memset(m + u->memo_cap, 0, (cap - u->memo_cap) * sizeof *m);
        u->memo = m;
        u->memo_cap = cap;
    }
    if (!u->memo[idx])
        u->memo_count++;
    u->memo[idx] = o;
    return 0;
}

static int memo_get(up *u, uint64_t idx, size_t at)
{
    if (idx >= u->memo_cap || !u->memo[idx])
        return perr(u, DM_EFORMAT, "memo index %llu at offset %zu was never stored",
                    (unsigned long long)idx, at);
    return push(u, u->memo[idx]);
}

static const struct { const char *name; dm_dtype dt; } storages[] = {
    { "FloatStorage", DM_DT_F32 }, { "DoubleStorage", DM_DT_F64 }, { "HalfStorage", DM_DT_F16 },
    { "BFloat16Storage", DM_DT_BF16 }, { "LongStorage", DM_DT_I64 }, { "IntStorage", DM_DT_I32 },
    { "ShortStorage", DM_DT_I16 }, { "CharStorage", DM_DT_I8 }, { "ByteStorage", DM_DT_U8 },
    { "BoolStorage", DM_DT_BOOL },
};
/* torch.dtype objects pickle as globals `torch <name>`; _rebuild_tensor_v3 takes one. */
static const struct { const char *name; dm_dtype dt; } dtypes[] = {
    { "float32", DM_DT_F32 }, { "float64", DM_DT_F64 }, { "float16", DM_DT_F16 },
    { "bfloat16", DM_DT_BF16 }, { "int64", DM_DT_I64 }, { "int32", DM_DT_I32 },
    { "int16", DM_DT_I16 }, { "int8", DM_DT_I8 }, { "uint8", DM_DT_U8 }, { "bool", DM_DT_BOOL },
};

/* The whitelist (like torch.load(weights_only=True)): anything else is refused, never resolved. */
static int push_global(up *u, const unsigned char *mod, size_t ml, const unsigned char *name,
                       size_t nl)
{
    int id = -1;
    dm_dtype dt = DM_DT_F32;
    if (eq(mod, ml, "collections") && eq(name, nl, "OrderedDict")) {
        id = G_ODICT;
    } else if (eq(mod, ml, "torch._utils")) {
        if (eq(name, nl, "_rebuild_tensor_v2"))
            id = G_REBUILD_V2;
        else if (eq(name, nl, "_rebuild_tensor_v3"))
            id = G_REBUILD_V3;
        else if (eq(name, nl, "_rebuild_parameter"))
            id = G_REBUILD_PARAM;
    } else if (eq(mod, ml, "torch")) {
        for (size_t i = 0; i < sizeof storages / sizeof storages[0]; i++)
            if (eq(name, nl, storages[i].name))
                id = G_STORAGE, dt = storages[i].dt;
        for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
            if (eq(name, nl, dtypes[i].name))
                id = G_DTYPE, dt = dtypes[i].dt;
    }
    if (id < 0) {
        char a[96], b[96];
        return perr(u, DM_EUNSUPPORTED,
                    "refusing global '%s %s' (only tensor state dicts are accepted)",
                    safe(mod, ml, a, sizeof a), safe(name, nl, b, sizeof b));
    }
    obj *o = NULL;
    int rc = new_obj(u, K_GLOBAL, &o);
    if (rc)
        return rc;
    o->u.g.id = id;
    o->u.g.dt = dt;
    return push(u, o);
}

static int read_line(up *u, const unsigned char **s, size_t *n, size_t at)
{
    const unsigned char *nl = memchr(u->p + u->pos, '\n', u->n - u->pos);
    if (!nl)
        return perr(u, DM_EFORMAT, "unterminated GLOBAL at offset %zu", at);
    *s = u->p + u->pos;
    *n = (size_t)(nl - *s);
    u->pos += *n + 1;
    return 0;
}

static int str_arg(up *u, const obj *o, const unsigned char **s, size_t *n, size_t at)
{
    if (o->kind != K_STR)
        return perr(u, DM_EFORMAT, "expected a str at offset %zu, got a %s", at,
                    kind_name(o->kind));
    *s = o->u.s.p;
    *n = o->u.s.n;
    return 0;
}

/* ("storage", StorageClass, key, location, numel) → the blob <prefix>/data/<key>. */
static int persistent_load(up *u, const obj *pid, size_t at)
{
    const obj *const *a = pid->kind == K_TUPLE ? (const obj *const *)pid->u.seq.v : NULL;
    if (!a || pid->u.seq.n != 5 || a[0]->kind != K_STR ||
        !eq(a[0]->u.s.p, a[0]->u.s.n, "storage") ||
        a[1]->kind != K_GLOBAL || a[1]->u.g.id != G_STORAGE || a[2]->kind != K_STR ||
        a[4]->kind != K_INT || a[4]->u.i < 0)
        return perr(u, DM_EFORMAT,
                    "persistent id at offset %zu is not (\"storage\", StorageClass, key, location, "
                    "numel)", at);
    const unsigned char *key = a[2]->u.s.p;
    size_t kl = a[2]->u.s.n;
    char kb[64];
    if (kl == 0 || kl > MAX_KEY || memchr(key, '\0', kl))
        return perr(u, DM_EFORMAT, "bad storage key '%s' at offset %zu",
                    safe(key, kl, kb, sizeof kb), at);
    memcpy(u->namebuf, u->prefix, u->prefix_len);
    memcpy(u->namebuf + u->prefix_len, "data/", 5);
    memcpy(u->namebuf + u->prefix_len + 5, key, kl);
    u->namebuf[u->prefix_len + 5 + kl] = '\0';
    const zentry *e = zip_find(u->z, u->namebuf);
    if (!e) {
        char nb[128];
        return perr(u, DM_EFORMAT, "storage '%s' has no zip entry %s (truncated or damaged file?)",
                    safe(key, kl, kb, sizeof kb),
                    safe((const unsigned char *)u->namebuf, strlen(u->namebuf), nb, sizeof nb));
    }
    const unsigned char *blob;
    uint64_t blob_size;
    int rc = zip_payload(u->z, e, &blob, &blob_size, u->err);
    obj *o = NULL;
    if (!rc)
        rc = new_obj(u, K_STORAGE, &o);
    if (rc)
        return rc;
    o->u.st.blob = blob;
    o->u.st.size = blob_size;
    o->u.st.dt = a[1]->u.g.dt;
    return push(u, o);
}

static int int_tuple(up *u, const obj *t, int64_t *v, int *n, const char *what, size_t at)
{
    if (t->kind != K_TUPLE)
        return perr(u, DM_EFORMAT, "tensor %s at offset %zu is a %s, not a tuple", what, at,
                    kind_name(t->kind));
    if (t->u.seq.n > DM_MAX_DIMS)
        return perr(u, DM_EUNSUPPORTED, "tensor at offset %zu has %zu dimensions (at most %d "
                    "supported)", at, t->u.seq.n, DM_MAX_DIMS);
    for (size_t i = 0; i < t->u.seq.n; i++) {
        const obj *x = t->u.seq.v[i];
        if (x->kind != K_INT || x->u.i < 0)
            return perr(u, DM_EFORMAT, "tensor %s at offset %zu holds a negative or non-int value",
                        what, at);
        v[i] = x->u.i;
    }
    *n = (int)t->u.seq.n;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]);
 * v3 adds a dtype after hooks. Bounds are checked later, once the tensor's name is known. */
static int rebuild(up *u, obj *const *a, size_t na, int v3, size_t at)
{
    size_t base = v3 ? 7 : 6;
    if (na != base && na != base + 1)
        return perr(u, DM_EFORMAT, "_rebuild_tensor_v%d at offset %zu has %zu arguments",
                    v3 ? 3 : 2, at, na);
    if (a[0]->kind != K_STORAGE || a[1]->kind != K_INT || a[1]->u.i < 0)
        return perr(u, DM_EFORMAT, "tensor at offset %zu has no storage or a bad storage offset",
                    at);
    dm_dtype dt = a[0]->u.st.dt;
    if (v3) {
        if (a[6]->kind != K_GLOBAL || a[6]->u.g.id != G_DTYPE)
            return perr(u, DM_EFORMAT, "_rebuild_tensor_v3 at offset %zu has no dtype", at);
        dt = a[6]->u.g.dt;
    }
    obj *o = NULL;
    int rc = new_obj(u, K_TENSOR, &o);
    if (rc)
        return rc;
    ptensor *t = o->u.t = calloc(1, sizeof *t);
    if (!t)
        return oom(u);
    int ns = 0, nst = 0;
    if ((rc = int_tuple(u, a[2], t->shape, &ns, "size", at)) ||
        (rc = int_tuple(u, a[3], t->stride, &nst, "stride", at)))
        return rc;
    if (ns != nst)
        return perr(u, DM_EFORMAT, "tensor at offset %zu has %d sizes but %d strides", at, ns, nst);
    t->ndim = ns;
    t->dt = dt;
    t->offset = a[1]->u.i;
    t->blob = a[0]->u.st.blob;
    t->blob_size = a[0]->u.st.size;
    return push(u, o);
}

static int reduce(up *u, obj *fn, obj *args, size_t at)
{
    if (fn->kind != K_GLOBAL || args->kind != K_TUPLE)
        return perr(u, DM_EFORMAT, "REDUCE at offset %zu applies a %s to a %s", at,
                    kind_name(fn->kind), kind_name(args->kind));
    obj *const *a = args->u.seq.v;
    size_t na = args->u.seq.n;
    obj *o = NULL;
    int rc;
    switch (fn->u.g.id) {
    case G_ODICT:
        if (na)
            return perr(u, DM_EUNSUPPORTED, "OrderedDict built with arguments at offset %zu", at);
        if ((rc = new_obj(u, K_DICT, &o)))
            return rc;
        return push(u, o);
    case G_REBUILD_V2:
    case G_REBUILD_V3:
        return rebuild(u, a, na, fn->u.g.id == G_REBUILD_V3, at);
    case G_REBUILD_PARAM: /* (data, requires_grad, hooks[, state]) → just the data */
        if ((na != 3 && na != 4) || a[0]->kind != K_TENSOR)
            return perr(u, DM_EFORMAT, "bad _rebuild_parameter at offset %zu", at);
        return push(u, a[0]);
    default:
        return perr(u, DM_EFORMAT, "REDUCE at offset %zu calls a storage class or dtype", at);
    }
}

/* Runs data.pkl; on success *result is the object STOP returned. Every opcode consumes at least
 * one byte, so the loop, the stack and the object count are all bounded by the pickle's size. */
static int unpickle(up *u, obj **result)
{
    for (;;) {
        if (u->pos >= u->n)
            return perr(u, DM_EFORMAT, "ends without STOP (truncated?)");
        size_t at = u->pos;
        unsigned op = u->p[u->pos++];
        const unsigned char *s1 = NULL, *s2 = NULL;
        size_t n1 = 0, n2 = 0, start = 0;
        obj *a = NULL, *b = NULL, *c = NULL, *o = NULL;
        uint64_t v = 0, w = 0;
        int rc = 0;
        switch (op) {
        case 0x80: /* PROTO */
            if (!(rc = take(u, 1, at, &v)) && v > 5)
                rc = perr(u, DM_EUNSUPPORTED, "pickle protocol %u is newer than 5", (unsigned)v);
            break;
        case 0x95: /* FRAME: framing is transparent when the whole pickle is in memory */
            rc = take(u, 8, at, &v);
            break;
        case 'c': /* GLOBAL */
            if (!(rc = read_line(u, &s1, &n1, at)) && !(rc = read_line(u, &s2, &n2, at)))
                rc = push_global(u, s1, n1, s2, n2);
            break;
        case 0x93: /* STACK_GLOBAL */
            if (!(rc = pop(u, &b, at)) && !(rc = pop(u, &a, at)) &&
                !(rc = str_arg(u, a, &s1, &n1, at)) && !(rc = str_arg(u, b, &s2, &n2, at)))
                rc = push_global(u, s1, n1, s2, n2);
            break;
        case '}': /* EMPTY_DICT */
        case ']': /* EMPTY_LIST */
            if (!(rc = new_obj(u, op == '}' ? K_DICT : K_LIST, &o)))
                rc = push(u, o);
            break;
        case ')': rc = push(u, &u->empty_tuple); break;
        case 'N': rc = push(u, &u->none); break;
        case 0x88: rc = push(u, &u->yes); break;
        case 0x89: rc = push(u, &u->no); break;
        case '(': /* MARK */
            if (u->mn == u->mcap) {
                size_t cap = u->mcap ? u->mcap * 2 : 16;
                size_t *m = realloc(u->marks, cap * sizeof *m);
                if (!m)
                    return oom(u);
                u->marks = m;
                u->mcap = cap;
            }
            u->marks[u->mn++] = u->sn;
            break;
        case 't': /* TUPLE */
            if ((rc = pop_mark(u, &start, at)) || (rc = new_obj(u, K_TUPLE, &o)))
                break;
            for (size_t i = start; i < u->sn && !rc; i++)
                rc = seq_add(u, o, u->stack[i]);
            u->sn = start;
            if (!rc)
                rc = push(u, o);
            break;
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            size_t k = op - 0x84;
            obj *it[3];
            for (size_t i = 0; i < k && !rc; i++)
                rc = pop(u, &it[k - 1 - i], at);
            if (rc || (rc = new_obj(u, K_TUPLE, &o)))
                break;
            for (size_t i = 0; i < k && !rc; i++)
                rc = seq_add(u, o, it[i]);
            if (!rc)
                rc = push(u, o);
            break;
        }
        case 'X':  /* BINUNICODE */
        case 'B':  /* BINBYTES */
        case 'T':  /* BINSTRING: i32 length */
        case 0x8c: /* SHORT_BINUNICODE */
        case 'U':  /* SHORT_BINSTRING */
        case 'C':  /* SHORT_BINBYTES */
        case 0x8d: /* BINUNICODE8 */
            if ((rc = take(u, op == 0x8d ? 8 : strchr("XBT", (int)op) ? 4 : 1, at, &v)))
                break;
            rc = op == 'T' && v >> 31
                     ? perr(u, DM_EFORMAT, "negative BINSTRING length at offset %zu", at)
                     : push_view(u, op == 'B' || op == 'C' ? K_BYTES : K_STR, v, at);
            break;
        case 'J': /* BININT: i32 */
            if (!(rc = take(u, 4, at, &v)))
                rc = push_int(u, v >> 31 ? (int64_t)v - ((int64_t)1 << 32) : (int64_t)v);
            break;
        case 'K': /* BININT1 */
        case 'M': /* BININT2 */
            if (!(rc = take(u, op == 'K' ? 1 : 2, at, &v)))
                rc = push_int(u, (int64_t)v);
            break;
        case 0x8a: /* LONG1: n-byte little-endian two's complement */
            if ((rc = take(u, 1, at, &v)))
                break;
            if (v > 8) {
                rc = perr(u, DM_EFORMAT, "integer wider than 64 bits at offset %zu", at);
            } else if (!(rc = take(u, (size_t)v, at, &w))) {
                if (v && v < 8 && (w >> (8 * v - 1)) & 1) /* sign-extend */
                    w |= ~(uint64_t)0 << (8 * v);
                /* two's complement reinterpretation without implementation-defined casts */
                rc = push_int(u, w >> 63 ? -(int64_t)(~w) - 1 : (int64_t)w);
            }
            break;
        case 'G': /* BINFLOAT: big-endian f64 */
            if ((rc = take(u, 8, at, &v)) || (rc = new_obj(u, K_FLOAT, &o)))
                break;
            for (int i = 0; i < 8; i++)
                w = w << 8 | (v >> (8 * i) & 0xff);
            memcpy(&o->u.f, &w, 8);
            rc = push(u, o);
            break;
        case 'q': /* BINPUT */
        case 'r': /* LONG_BINPUT */
        case 'h': /* BINGET */
        case 'j': /* LONG_BINGET */
            if (!(rc = take(u, op == 'q' || op == 'h' ? 1 : 4, at, &v)))
                rc = op == 'q' || op == 'r' ? memo_put(u, v, at) : memo_get(u, v, at);
            break;
        case 0x94: rc = memo_put(u, u->memo_count, at); break; /* MEMOIZE */
        case 'Q': /* BINPERSID */
            if (!(rc = pop(u, &a, at)))
                rc = persistent_load(u, a, at);
            break;
        case 'R': /* REDUCE */
            if (!(rc = pop(u, &b, at)) && !(rc = pop(u, &a, at)))
                rc = reduce(u, a, b, at);
            break;
        case 0x81: /* NEWOBJ: only OrderedDict.__new__(OrderedDict) */
            if ((rc = pop(u, &b, at)) || (rc = pop(u, &a, at)))
                break;
            if (a->kind != K_GLOBAL || a->u.g.id != G_ODICT || b->kind != K_TUPLE || b->u.seq.n) {
                rc = perr(u, DM_EUNSUPPORTED, "NEWOBJ at offset %zu builds something other than "
                          "an OrderedDict", at);
            } else if (!(rc = new_obj(u, K_DICT, &o))) {
                rc = push(u, o);
            }
            break;
        case 'b': /* BUILD: only the state dict's `_metadata` (or a tensor's state); ignored */
            if ((rc = pop(u, &b, at)) || (rc = top(u, &a, at)))
                break;
            if (a->kind != K_DICT && a->kind != K_TENSOR)
                rc = perr(u, DM_EFORMAT, "BUILD at offset %zu on a %s", at, kind_name(a->kind));
            break;
        case 's': /* SETITEM */
            if ((rc = pop(u, &c, at)) || (rc = pop(u, &b, at)) || (rc = top(u, &a, at)))
                break;
            if (a->kind != K_DICT)
                rc = perr(u, DM_EFORMAT, "SETITEM at offset %zu on a %s", at, kind_name(a->kind));
            else if (!(rc = seq_add(u, a, b)))
                rc = seq_add(u, a, c);
            break;
        case 'u': /* SETITEMS */
        case 'e': /* APPENDS */
            if ((rc = pop_mark(u, &start, at)))
                break;
            if (start <= stack_base(u) ||
                u->stack[start - 1]->kind != (op == 'u' ? K_DICT : K_LIST)) {
                rc = perr(u, DM_EFORMAT, "%s at offset %zu without a %s below its MARK",
                          op == 'u' ? "SETITEMS" : "APPENDS", at, op == 'u' ? "dict" : "list");
                break;
            }
            if (op == 'u' && (u->sn - start) % 2)
                rc = perr(u, DM_EFORMAT, "SETITEMS at offset %zu has an odd item count", at);
            for (size_t i = start; i < u->sn && !rc; i++)
                rc = seq_add(u, u->stack[start - 1], u->stack[i]);
            u->sn = start;
            break;
        case 'a': /* APPEND */
            if ((rc = pop(u, &b, at)) || (rc = top(u, &a, at)))
                break;
            rc = a->kind == K_LIST ? seq_add(u, a, b)
                                   : perr(u, DM_EFORMAT, "APPEND at offset %zu on a %s", at,
                                          kind_name(a->kind));
            break;
        case '.': /* STOP */
            return pop(u, result, at);
        default:
            return perr(u, DM_EFORMAT, "unknown or unsupported pickle opcode 0x%02x at offset %zu",
                        op, at);
        }
        if (rc)
            return rc;
    }
}

static size_t count_tensors(const obj *d)
{
    size_t n = 0;
    for (size_t i = 1; i < d->u.seq.n; i += 2)
        n += d->u.seq.v[i]->kind == K_TENSOR;
    return n;
}

/* The top object is name → tensor. A checkpoint wrapped as {"model": {...}, "epoch": ...} is
 * accepted when exactly one value is a dict of tensors; other non-tensor values are ignored. */
static int collect(up *u, const obj *root, int swap, dm_tensor_list *out)
{
    if (root->kind != K_DICT)
        return perr(u, DM_EFORMAT, "the pickled object is a %s, not a state dict",
                    kind_name(root->kind));
    const obj *d = root;
    if (!count_tensors(d)) {
        const obj *inner = NULL;
        size_t found = 0;
        for (size_t i = 1; i < d->u.seq.n; i += 2) {
            const obj *v = d->u.seq.v[i];
            if (v->kind == K_DICT && count_tensors(v)) {
                inner = v;
                found++;
            }
        }
        if (found > 1)
            return perr(u, DM_EFORMAT,
                        "holds %zu nested state dicts; save the one wanted on its own", found);
        if (!found)
            return perr(u, DM_EFORMAT, "the pickled dict holds no tensors");
        d = inner;
    }
    for (size_t i = 0; i + 1 < d->u.seq.n; i += 2) {
        const obj *k = d->u.seq.v[i], *v = d->u.seq.v[i + 1];
        if (v->kind != K_TENSOR)
            continue;
        if (k->kind != K_STR || memchr(k->u.s.p, '\0', k->u.s.n))
            return perr(u, DM_EFORMAT, "a tensor is stored under a non-string key");
        const ptensor *pt = v->u.t;
        size_t isz = dm_dtype_size(pt->dt);
        dm_tensor t = { 0 };
        if (!(t.name = malloc(k->u.s.n + 1)))
            return oom(u);
        memcpy(t.name, k->u.s.p, k->u.s.n);
        t.name[k->u.s.n] = '\0';
        /* offset is checked before it is scaled so the byte offset cannot overflow */
        int rc = 0;
        if ((uint64_t)pt->offset > pt->blob_size / isz)
            rc = perr(u, DM_EFORMAT, "tensor %s: storage offset %lld is past its %llu-byte storage",
                      t.name, (long long)pt->offset, (unsigned long long)pt->blob_size);
        else if ((rc = dm_tensor_check_bounds(t.name, pt->shape, pt->stride, pt->ndim, pt->dt,
                                              (uint64_t)pt->offset * isz, pt->blob_size, u->err)))
            with_path(u->err, rc, u->path);
        if (rc) {
            free(t.name);
            return rc;
        }
        t.dtype = pt->dt;
        t.ndim = pt->ndim;
        memcpy(t.shape, pt->shape, sizeof t.shape);
        memcpy(t.stride, pt->stride, sizeof t.stride);
        t.data = pt->blob + (uint64_t)pt->offset * isz;
        t.swap = swap;
        if ((rc = dm_tensor_list_push(out, &t, u->err)))
            return with_path(u->err, rc, u->path);
    }
    return 0;
}

/* `byteorder` is "little" or "big"; absent in older files, meaning little. */
static int read_byteorder(const zip *z, const char *name, int *swap, dm_err *err)
{
    const zentry *e = zip_find(z, name);
    const unsigned char *p;
    uint64_t n;
    *swap = 0;
    if (!e)
        return 0;
    int rc = zip_payload(z, e, &p, &n, err);
    if (rc)
        return rc;
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r' || p[n - 1] == ' '))
        n--;
    if (eq(p, (size_t)n, "big"))
        *swap = 1;
    else if (!eq(p, (size_t)n, "little"))
        return ferr(err, DM_EFORMAT, z->path, "unknown byte order in %s", name);
    return 0;
}

int dm_pth_read(const unsigned char *base, size_t size, const char *path, dm_tensor_list *out,
                dm_err *err)
{
    zip z = { .b = base, .size = size, .path = path };
    up u;
    memset(&u, 0, sizeof u);
    u.path = path;
    u.z = &z;
    u.err = err;
    u.none.kind = K_NONE;
    u.yes.kind = u.no.kind = K_BOOL;
    u.yes.u.i = 1;
    u.empty_tuple.kind = K_TUPLE;
    int rc = zip_open(&z, err);
    if (rc)
        goto done;
    /* The top-level folder is whatever torch.save named it (file stem, or "archive"): take it from
     * the one entry that must exist rather than assuming a name. */
    const zentry *pk = NULL;
    for (size_t i = 0; i < z.n && !pk; i++) {
        const zentry *e = &z.e[i];
        if (e->name_len > 9 && !memcmp(e->name + e->name_len - 9, "/data.pkl", 9) &&
            !memchr(e->name, '/', e->name_len - 9))
            pk = e;
    }
    if (!pk) {
        rc = ferr(err, DM_EFORMAT, path,
                  "zip has no <folder>/data.pkl entry; not a torch.save file");
        goto done;
    }
    zentry pkl = *pk; /* the sort below moves entries */
    u.prefix = pkl.name;
    u.prefix_len = pkl.name_len - 8;
    qsort(z.e, z.n, sizeof *z.e, zentry_cmp);
    if (!(u.namebuf = malloc(u.prefix_len + 5 + MAX_KEY + 16))) {
        rc = oom(&u);
        goto done;
    }
    memcpy(u.namebuf, u.prefix, u.prefix_len);
    memcpy(u.namebuf + u.prefix_len, "byteorder", 10);
    int swap;
    uint64_t n;
    if ((rc = read_byteorder(&z, u.namebuf, &swap, err)) ||
        (rc = zip_payload(&z, &pkl, &u.p, &n, err)))
        goto done;
    u.n = (size_t)n;
    obj *result = NULL;
    if (!(rc = unpickle(&u, &result)))
        rc = collect(&u, result, swap, out);
done:
    up_free(&u);
    free(z.e);
    return rc;
}

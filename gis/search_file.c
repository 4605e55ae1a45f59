/* gis/search_file.c — the search file of `dinomap search` (see gis.h): its layout, the writer, the
 * checks made when it is opened, and the scans over it (exact float32; or sign bits → int8 →
 * float32 re-rank). Nothing here reads the tile index: gis/search.c builds the file from it.
 *
 * Layout (native byte order, recorded and checked; sections 64-byte aligned, in this order):
 *   header   4096 bytes: magic, version, byte order, dim, embedding, n, what the file was built
 *            from, the model, each section's offset and length, the file's length, a checksum
 *   ids      int64 [n]        ascending tile ids
 *   rowcol   int32 [n, 2]
 *   box      float64 [n, 4]   minx, miny, maxx, maxy in the index's CRS
 *   scale    float32 [n]      v ≈ scale · q8
 *   q8       int8 [n, dim]
 *   bits     uint64 [n, ⌈dim/64⌉]  bit j: v[j] > 0
 *   f32      float32 [n, dim]
 *   wkt      the CRS, NUL-terminated
 * A file is written whole under a temporary name and renamed, so a reader sees an old file or a
 * whole new one; what else can go wrong (a truncated copy, a damaged header) fails the checks
 * and the caller rebuilds it. */
#include "search_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SF_MAGIC "DMSEARCH"
#define SF_VERSION 1u
#define SF_ENDIAN 0x01020304u
#define SF_HEADER 4096
#define SF_SLAB 1024 /* tiles buffered per section before they are written */

enum { S_ID, S_RC, S_BOX, S_SCALE, S_Q8, S_BITS, S_F32, S_WKT, S_N };

typedef struct sf_header {
    char magic[8];
    uint32_t version, endian, header_bytes, dim;
    uint32_t emb, words, reserved[2];
    uint64_t n;
    int64_t src_size, src_mtime_ns, src_gen, built_ns;
    char sha256[72];
    char arch[48];
    uint64_t off[S_N], len[S_N];
    uint64_t file_bytes;
    uint64_t checksum;        /* FNV-1a of the header with this field 0 */
} sf_header;
_Static_assert(sizeof(sf_header) <= SF_HEADER, "the header must fit its block");

struct dm_sindex {
    const uint8_t *base;
    size_t len;
    int mapped;               /* 1: munmap, 0: free */
    sf_header h;
    const int64_t *id;
    const int32_t *rc;
    const double *box;
    const float *scale, *f32;
    const int8_t *q8;
    const uint64_t *bits;
    char *index, *file;
    dm_sindex_info info;
};

const char *dm_emb_name(int emb) { return emb == DM_EMB_CLS ? "cls" : "mean"; }

static uint64_t fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t header_sum(const sf_header *h)
{
    sf_header c = *h;
    c.checksum = 0;
    return fnv1a(&c, sizeof c);
}

static uint64_t align64(uint64_t x) { return (x + 63) & ~(uint64_t)63; }

/* Every section's length from n and dim (wkt: its string's), laid out in order. */
static void layout(sf_header *h, uint64_t wkt_len)
{
    uint64_t n = h->n, d = h->dim;
    uint64_t item[S_N] = { 8, 8, 32, 4, d, 8 * (uint64_t)h->words, 4 * d, 0 };
    uint64_t at = SF_HEADER;
    for (int s = 0; s < S_N; s++) {
        h->len[s] = s == S_WKT ? wkt_len : item[s] * n;
        h->off[s] = at;
        at = align64(at + h->len[s]);
    }
    h->file_bytes = h->off[S_WKT] + h->len[S_WKT];
}

/* The int8 copy and the sign bits of v [dim]. */
static float quantize(const float *v, int dim, int8_t *q8, uint64_t *bits, int words)
{
    float m = 0;
    for (int j = 0; j < dim; j++)
        m = fabsf(v[j]) > m ? fabsf(v[j]) : m;
    float scale = m > 0 ? m / 127.0f : 0.0f, inv = m > 0 ? 127.0f / m : 0.0f;
    /* a subnormal m makes inv infinite, and 0 · inf is NaN (whose conversion to int8 is
     * undefined): divide by m then, |v[j] / m| <= 1 */
    int tiny = !isfinite(inv);
    for (int j = 0; j < dim; j++) {
        float x = rintf(tiny ? v[j] / m * 127.0f : v[j] * inv);
        q8[j] = (int8_t)(x > 127 ? 127 : x < -127 ? -127 : x);
    }
    memset(bits, 0, (size_t)words * 8);
    for (int j = 0; j < dim; j++)
        if (v[j] > 0)
            bits[j / 64] |= 1ull << (j % 64);
    return scale;
}

/* --- writing --------------------------------------------------------------------------------- */

struct dm_sfile_writer {
    sf_header h;
    char *path, *tmp, *wkt;
    int fd;                   /* -1: in memory */
    uint8_t *mem;
    int64_t added, last_id;
    int nslab;
    uint8_t *slab[S_WKT];     /* SF_SLAB tiles of each per-tile section */
};

static uint64_t item_bytes(const sf_header *h, int s) { return h->len[s] / (h->n ? h->n : 1); }

void dm_sfile_abort(dm_sfile_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    for (int s = 0; s < S_WKT; s++)
        free(w->slab[s]);
    free(w->mem), free(w->path), free(w->tmp), free(w->wkt);
    free(w);
}

static int put(dm_sfile_writer *w, uint64_t off, const void *data, size_t n, dm_err *err)
{
    if (w->fd < 0) {
        memcpy(w->mem + off, data, n);
        return 0;
    }
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t k = pwrite(w->fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return dm_err_set(err, DM_EIO, "%s: cannot write: %s", w->tmp,
                              k < 0 ? strerror(errno) : "short write");
        p += k, off += (uint64_t)k, n -= (size_t)k;
    }
    return 0;
}

int dm_sfile_create(const char *path, const dm_sfile_meta *m, dm_sfile_writer **out,
                    int *os_errno, dm_err *err)
{
    *out = NULL;
    if (os_errno)
        *os_errno = 0;
    if (m->dim < 1 || m->dim > 16384 || m->n < 1 || m->n > ((int64_t)1 << 40))
        return dm_err_set(err, DM_EINVAL, "a search file of %lld tiles of %d dimensions",
                          (long long)m->n, m->dim);
    dm_sfile_writer *w = calloc(1, sizeof *w);
    if (!w)
        return dm_err_oom(err);
    w->fd = -1;
    w->last_id = INT64_MIN;
    sf_header *h = &w->h;
    memcpy(h->magic, SF_MAGIC, 8);
    h->version = SF_VERSION, h->endian = SF_ENDIAN, h->header_bytes = SF_HEADER;
    h->dim = (uint32_t)m->dim, h->emb = m->emb == DM_EMB_CLS, h->words = (uint32_t)(m->dim + 63) / 64;
    h->n = (uint64_t)m->n;
    h->src_size = m->src_size, h->src_mtime_ns = m->src_mtime_ns, h->src_gen = m->src_gen;
    h->built_ns = m->built_ns;
    snprintf(h->sha256, sizeof h->sha256, "%s", m->sha256 ? m->sha256 : "");
    snprintf(h->arch, sizeof h->arch, "%s", m->arch ? m->arch : "");
    w->wkt = strdup(m->wkt ? m->wkt : "");
    if (!w->wkt) {
        dm_sfile_abort(w);
        return dm_err_oom(err);
    }
    layout(h, strlen(w->wkt) + 1);
    for (int s = 0; s < S_WKT; s++)
        if (!(w->slab[s] = malloc(item_bytes(h, s) * SF_SLAB))) {
            dm_sfile_abort(w);
            return dm_err_oom(err);
        }
    int rc = 0;
    if (!path) {
        if (!(w->mem = calloc(1, h->file_bytes)))
            rc = dm_err_set(err, DM_ENOMEM, "out of memory for a search copy of %lld tiles "
                            "(%.1f GB)", (long long)m->n, (double)h->file_bytes / 1e9);
    } else {
        size_t n = strlen(path) + 32;
        w->path = strdup(path);
        w->tmp = malloc(n);
        if (!w->path || !w->tmp) {
            dm_sfile_abort(w);
            return dm_err_oom(err);
        }
        snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
        unlink(w->tmp); /* a leftover of a killed build by a process of the same id */
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        int e = w->fd < 0 ? errno : posix_fallocate(w->fd, 0, (off_t)h->file_bytes);
        if (e == EOPNOTSUPP || e == EINVAL) /* a file system without it: written as we go */
            e = ftruncate(w->fd, (off_t)h->file_bytes) ? errno : 0;
        if (e) {
            if (os_errno)
                *os_errno = e;
            rc = dm_err_set(err, DM_EIO, "%s: cannot create it (%.1f GB): %s", path,
                            (double)h->file_bytes / 1e9, strerror(e));
        }
    }
    if (rc) {
        dm_sfile_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

static int flush(dm_sfile_writer *w, dm_err *err)
{
    int rc = 0;
    uint64_t first = (uint64_t)(w->added - w->nslab);
    for (int s = 0; s < S_WKT && !rc && w->nslab; s++) {
        uint64_t b = item_bytes(&w->h, s);
        rc = put(w, w->h.off[s] + first * b, w->slab[s], b * (uint64_t)w->nslab, err);
    }
    w->nslab = 0;
    return rc;
}

int dm_sfile_add(dm_sfile_writer *w, int64_t id, int row, int col, const double box[4],
                 const float *v, dm_err *err)
{
    if (w->added >= (int64_t)w->h.n)
        return dm_err_set(err, DM_EINVAL, "search file: more tiles than the %llu announced",
                          (unsigned long long)w->h.n);
    if (id <= w->last_id)
        return dm_err_set(err, DM_EINVAL, "search file: tile ids must ascend (%lld after %lld)",
                          (long long)id, (long long)w->last_id);
    int D = (int)w->h.dim, k = w->nslab;
    int32_t rc2[2] = { row, col };
    memcpy(w->slab[S_ID] + 8 * k, &id, 8);
    memcpy(w->slab[S_RC] + 8 * k, rc2, 8);
    memcpy(w->slab[S_BOX] + 32 * k, box, 32);
    memcpy(w->slab[S_F32] + (size_t)4 * D * k, v, (size_t)4 * D);
    float scale = quantize(v, D, (int8_t *)(w->slab[S_Q8] + (size_t)D * k),
                           (uint64_t *)(w->slab[S_BITS] + (size_t)8 * w->h.words * k),
                           (int)w->h.words);
    memcpy(w->slab[S_SCALE] + 4 * k, &scale, 4);
    w->last_id = id;
    w->added++;
    return ++w->nslab == SF_SLAB ? flush(w, err) : 0;
}

static int wrap(uint8_t *base, size_t len, int mapped, dm_sindex **out, dm_err *err);

int dm_sfile_commit(dm_sfile_writer *w, dm_sindex **opened, dm_err *err)
{
    if (opened)
        *opened = NULL;
    int rc = flush(w, err);
    if (!rc && w->added != (int64_t)w->h.n)
        rc = dm_err_set(err, DM_EINVAL, "search file: %lld tiles of the %llu announced",
                        (long long)w->added, (unsigned long long)w->h.n);
    if (!rc)
        rc = put(w, w->h.off[S_WKT], w->wkt, w->h.len[S_WKT], err);
    w->h.checksum = header_sum(&w->h);
    uint8_t block[SF_HEADER] = { 0 };
    memcpy(block, &w->h, sizeof w->h);
    if (!rc)
        rc = put(w, 0, block, sizeof block, err); /* last: until here the header says nothing */
    if (!rc && w->fd >= 0) {
        int bad = fsync(w->fd) != 0;
        bad |= close(w->fd) != 0;
        w->fd = -1;
        if (bad || rename(w->tmp, w->path) != 0 || dm_sync_parent(w->path) != 0) {
            rc = dm_err_set(err, DM_EIO, "%s: cannot put into place: %s", w->path,
                            strerror(errno));
            unlink(w->tmp);
        } else if (opened) {
            rc = dm_sindex_open_file(w->path, opened, err);
        }
    } else if (!rc && opened) {
        rc = wrap(w->mem, w->h.file_bytes, 0, opened, err);
        w->mem = NULL; /* the index owns it (or wrap freed it) */
    }
    dm_sfile_abort(w);
    return rc;
}

/* --- opening ---------------------------------------------------------------------------------- */

static int check(const sf_header *h, uint64_t len, char *why, size_t n)
{
    if (len < SF_HEADER || memcmp(h->magic, SF_MAGIC, 8))
        return snprintf(why, n, "not a dinomap search file"), -1;
    if (h->version != SF_VERSION || h->endian != SF_ENDIAN)
        return snprintf(why, n, "version %u (this dinomap writes %u) or another byte order",
                        h->version, SF_VERSION), -1;
    if (h->checksum != header_sum(h))
        return snprintf(why, n, "its header is damaged (checksum)"), -1;
    if (h->header_bytes != SF_HEADER || h->dim < 1 || h->dim > 16384 || h->emb > 1 ||
        h->words != (h->dim + 63) / 64 || h->n < 1 || h->n > ((uint64_t)1 << 40) ||
        !memchr(h->sha256, 0, sizeof h->sha256) || !memchr(h->arch, 0, sizeof h->arch))
        return snprintf(why, n, "its header is damaged (counts)"), -1;
    sf_header e = *h;
    layout(&e, h->len[S_WKT]);
    if (memcmp(e.off, h->off, sizeof e.off) || memcmp(e.len, h->len, sizeof e.len) ||
        e.file_bytes != h->file_bytes || h->len[S_WKT] < 1)
        return snprintf(why, n, "its sections do not match its counts"), -1;
    if (h->file_bytes != len)
        return snprintf(why, n, "%llu bytes, its header says %llu (truncated?)",
                        (unsigned long long)len, (unsigned long long)h->file_bytes), -1;
    return 0;
}

static int wrap(uint8_t *base, size_t len, int mapped, dm_sindex **out, dm_err *err)
{
    *out = NULL;
    char why[200];
    sf_header h;
    memset(&h, 0, sizeof h);
    if (len >= sizeof h)
        memcpy(&h, base, sizeof h);
    int rc = check(&h, len, why, sizeof why);
    const char *wkt = (const char *)base + h.off[S_WKT];
    if (!rc && wkt[h.len[S_WKT] - 1] != '\0')
        rc = -1, snprintf(why, sizeof why, "its CRS is damaged");
    const int64_t *id = (const int64_t *)(base + h.off[S_ID]);
    for (uint64_t i = 1; !rc && i < h.n; i++)
        if (id[i] <= id[i - 1])
            rc = -1, snprintf(why, sizeof why, "its tile ids do not ascend (damaged)");
    dm_sindex *s = rc ? NULL : calloc(1, sizeof *s);
    if (rc || !s) {
        if (mapped)
            munmap(base, len);
        else
            free(base);
        return rc ? dm_err_set(err, DM_EFORMAT, "%s", why) : dm_err_oom(err);
    }
    s->base = base, s->len = len, s->mapped = mapped, s->h = h;
    s->id = id;
    s->rc = (const int32_t *)(base + h.off[S_RC]);
    s->box = (const double *)(base + h.off[S_BOX]);
    s->scale = (const float *)(base + h.off[S_SCALE]);
    s->q8 = (const int8_t *)(base + h.off[S_Q8]);
    s->bits = (const uint64_t *)(base + h.off[S_BITS]);
    s->f32 = (const float *)(base + h.off[S_F32]);
    dm_sindex_info *in = &s->info;
    in->index = in->file = "";
    in->wkt = wkt, in->sha256 = s->h.sha256, in->arch = s->h.arch;
    in->dim = (int)h.dim, in->emb = (int)h.emb, in->n = (int64_t)h.n;
    in->src_size = h.src_size, in->src_mtime_ns = h.src_mtime_ns, in->src_gen = h.src_gen;
    in->built_ns = h.built_ns;
    in->in_memory = !mapped;
    in->bytes = (int64_t)len;
    *out = s;
    return 0;
}

int dm_sindex_open_file(const char *path, dm_sindex **out, dm_err *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(e));
    }
    void *p = st.st_size > 0 ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0)
                             : MAP_FAILED;
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return st.st_size > 0 ? dm_err_set(err, DM_EIO, "%s: cannot map: %s", path, strerror(e))
                              : dm_err_set(err, DM_EFORMAT, "%s: empty", path);
    int rc = wrap(p, (size_t)st.st_size, 1, out, err);
    if (rc)
        return dm_err_prefix(err, "%s", path), rc;
    if (!((*out)->file = strdup(path))) {
        dm_sindex_close(*out);
        *out = NULL;
        return dm_err_oom(err);
    }
    (*out)->info.file = (*out)->file;
    return 0;
}

void dm_sindex_close(dm_sindex *s)
{
    if (!s)
        return;
    if (s->mapped)
        munmap((void *)s->base, s->len);
    else
        free((void *)s->base);
    free(s->index), free(s->file);
    free(s);
}

int dm_sindex_set_origin(dm_sindex *s, const char *index, int built, const char *why)
{
    free(s->index);
    if (!(s->index = strdup(index)))
        return DM_ENOMEM;
    s->info.index = s->index;
    s->info.built = built;
    snprintf(s->info.why, sizeof s->info.why, "%s", why ? why : "");
    return 0;
}

const dm_sindex_info *dm_sindex_get_info(const dm_sindex *s) { return &s->info; }

int64_t dm_sindex_find(const dm_sindex *s, int64_t tile_id)
{
    int64_t lo = 0, hi = (int64_t)s->h.n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (s->id[mid] == tile_id)
            return mid;
        if (s->id[mid] < tile_id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int64_t dm_sindex_id(const dm_sindex *s, int64_t i) { return s->id[i]; }

void dm_sindex_rowcol(const dm_sindex *s, int64_t i, int *row, int *col)
{
    *row = s->rc[2 * i], *col = s->rc[2 * i + 1];
}

const double *dm_sindex_box(const dm_sindex *s, int64_t i) { return s->box + 4 * i; }

const float *dm_sindex_vec(const dm_sindex *s, int64_t i) { return s->f32 + (size_t)i * s->h.dim; }

/* --- searching -------------------------------------------------------------------------------- */

/* Fixed lanes, summed in a fixed order: the same score for the same pair wherever they lie in
 * memory (the exact scan and the re-rank agree to the bit). */
static float dot_f32(const float *a, const float *b, int n)
{
    float acc[32] = { 0 };
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (; i < n; i++)
        s += a[i] * b[i];
    for (int j = 0; j < 32; j++)
        s += acc[j];
    return s;
}

static int32_t dot_i8(const int8_t *a, const int8_t *b, int n)
{
    int32_t s = 0;
    for (int i = 0; i < n; i++)
        s += (int32_t)a[i] * b[i];
    return s;
}

static int hamming(const uint64_t *a, const uint64_t *b, int words)
{
    int d = 0;
    for (int i = 0; i < words; i++)
        d += __builtin_popcountll(a[i] ^ b[i]);
    return d;
}

/* a ranks after b: a lower score, or the same score later in the file */
static int after(const dm_search_match *a, const dm_search_match *b)
{
    return a->score < b->score || (a->score == b->score && a->i > b->i);
}

static int by_rank(const void *x, const void *y)
{
    const dm_search_match *a = x, *b = y;
    return after(a, b) ? 1 : after(b, a) ? -1 : 0;
}

/* The best cap matches seen: a heap whose root is the one that ranks last. */
typedef struct topk {
    dm_search_match *m;
    int n, cap;
} topk;

static void topk_push(topk *t, int64_t i, double score)
{
    dm_search_match x = { i, score };
    int at;
    if (t->n < t->cap) {
        at = t->n++;
        while (at > 0 && after(&x, &t->m[(at - 1) / 2])) {
            t->m[at] = t->m[(at - 1) / 2];
            at = (at - 1) / 2;
        }
        t->m[at] = x;
        return;
    }
    if (!after(&t->m[0], &x))
        return;
    at = 0;
    for (;;) {
        int c = 2 * at + 1;
        if (c >= t->n)
            break;
        if (c + 1 < t->n && after(&t->m[c + 1], &t->m[c]))
            c++;
        if (!after(&t->m[c], &x))
            break;
        t->m[at] = t->m[c];
        at = c;
    }
    t->m[at] = x;
}

/* Puts the best `keep` of m [n] first (in no order): quickselect. */
static void select_best(dm_search_match *m, int64_t n, int64_t keep)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi && keep > lo && keep <= hi) {
        dm_search_match p = m[lo + (hi - lo) / 2], t;
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (after(&p, &m[i]))
                i++;
            while (after(&m[j], &p))
                j--;
            if (i <= j)
                t = m[i], m[i] = m[j], m[j] = t, i++, j--;
        }
        if (keep <= j + 1)
            hi = j;
        else if (keep >= i)
            lo = i;
        else
            break;
    }
}

typedef struct scan {
    const dm_sindex *s;
    const float *q;
    const uint8_t *allow;
    int64_t shares;
    topk *heaps;              /* exact: one per share */
    const uint64_t *qbits;    /* sign bits */
    uint16_t *dist;           /* [n] Hamming distance; 0xFFFF: not allowed */
    const int8_t *q8;
    dm_search_match *cand;    /* int8 and float32 stages: the candidates, scored in place */
} scan;

static void exact_share(void *ctx, int64_t b, int64_t e)
{
    scan *c = ctx;
    const dm_sindex *s = c->s;
    int64_t n = (int64_t)s->h.n;
    int D = (int)s->h.dim;
    for (int64_t sh = b; sh < e; sh++)
        for (int64_t i = n * sh / c->shares; i < n * (sh + 1) / c->shares; i++)
            if (!c->allow || c->allow[i])
                topk_push(&c->heaps[sh], i, dot_f32(c->q, s->f32 + (size_t)i * D, D));
}

static void bits_rows(void *ctx, int64_t b, int64_t e)
{
    scan *c = ctx;
    int w = (int)c->s->h.words;
    for (int64_t i = b; i < e; i++)
        c->dist[i] = c->allow && !c->allow[i]
                         ? 0xFFFF : (uint16_t)hamming(c->qbits, c->s->bits + (size_t)i * w, w);
}

static void int8_cands(void *ctx, int64_t b, int64_t e)
{
    scan *c = ctx;
    int D = (int)c->s->h.dim;
    for (int64_t j = b; j < e; j++) {
        if (j + 4 < e) { /* the rows are scattered: fetch ahead */
            const int8_t *nx = c->s->q8 + (size_t)c->cand[j + 4].i * D;
            for (int o = 0; o < D; o += 64)
                __builtin_prefetch(nx + o);
        }
        int64_t i = c->cand[j].i;
        c->cand[j].score = (double)c->s->scale[i] * dot_i8(c->q8, c->s->q8 + (size_t)i * D, D);
    }
}

static void f32_cands(void *ctx, int64_t b, int64_t e)
{
    scan *c = ctx;
    int D = (int)c->s->h.dim;
    for (int64_t j = b; j < e; j++)
        c->cand[j].score = dot_f32(c->q, c->s->f32 + (size_t)c->cand[j].i * D, D);
}

/* Scattered rows of a file whose pages are not in memory (the first search after a reboot): ask
 * for all of them at once, so that the kernel reads them in parallel rather than one page fault
 * at a time. Skipped when a sample of them is resident (the usual, warm case). */
static void want_rows(const void *section, size_t row, const dm_search_match *c, int64_t m)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    int cold = 0;
    for (int64_t j = 0; j < 16 && j < m && !cold; j++) {
        uintptr_t a = (uintptr_t)section + (size_t)c[j * m / (m < 16 ? m : 16)].i * row;
        unsigned char v = 1;
        cold = mincore((void *)(a & ~(pg - 1)), 1, &v) == 0 && !(v & 1);
    }
    for (int64_t j = 0; cold && j < m; j++) {
        uintptr_t a = (uintptr_t)section + (size_t)c[j].i * row, b = (a + row + pg - 1) & ~(pg - 1);
        a &= ~(pg - 1);
        madvise((void *)a, b - a, MADV_WILLNEED);
    }
}

static void run(dm_pool *p, dm_pool_fn fn, void *ctx, int64_t n)
{
    if (p)
        dm_pool_run(p, fn, ctx, n);
    else
        fn(ctx, 0, n);
}

static int search_exact(scan *c, dm_pool *pool, int k, dm_search_match *out, int *nout)
{
    int64_t n = (int64_t)c->s->h.n;
    c->shares = pool ? dm_pool_threads(pool) : 1;
    c->heaps = calloc((size_t)c->shares, sizeof *c->heaps);
    int ok = c->heaps != NULL;
    for (int64_t i = 0; ok && i < c->shares; i++) {
        int64_t rows = n * (i + 1) / c->shares - n * i / c->shares;
        c->heaps[i].cap = (int)(rows < k ? rows : k);
        ok = (c->heaps[i].m = malloc(sizeof(dm_search_match) * (size_t)(c->heaps[i].cap + 1)))
             != NULL;
    }
    if (ok) {
        run(pool, exact_share, c, c->shares);
        topk all = { out, 0, k };
        for (int64_t i = 0; i < c->shares; i++)
            for (int j = 0; j < c->heaps[i].n; j++)
                topk_push(&all, c->heaps[i].m[j].i, c->heaps[i].m[j].score);
        qsort(out, (size_t)all.n, sizeof *out, by_rank);
        *nout = all.n;
    }
    for (int64_t i = 0; c->heaps && i < c->shares; i++)
        free(c->heaps[i].m);
    free(c->heaps);
    return ok ? 0 : DM_ENOMEM;
}

/* The allowed tiles nearest q in sign bits: at most `want`, ascending, into c->cand. */
static int64_t by_bits(scan *c, dm_pool *pool, int64_t want)
{
    const dm_sindex *s = c->s;
    int64_t n = (int64_t)s->h.n, *hist = calloc(s->h.dim + 1, sizeof *hist);
    if (!hist)
        return -1;
    run(pool, bits_rows, c, n);
    for (int64_t i = 0; i < n; i++)
        if (c->dist[i] != 0xFFFF)
            hist[c->dist[i]]++;
    /* the distance t at which `want` is reached: all nearer, and the first of those at t */
    int64_t cum = 0;
    int t = 0, D = (int)s->h.dim;
    while (t <= D && cum + hist[t] < want)
        cum += hist[t++];
    free(hist);
    int64_t quota = want - cum, m = 0;
    for (int64_t i = 0; i < n; i++)
        if (c->dist[i] < t || (c->dist[i] == t && quota-- > 0))
            c->cand[m++] = (dm_search_match){ i, 0 };
    return m;
}

int dm_sindex_search(const dm_sindex *s, const float *q, const dm_search_opts *o,
                     dm_search_match *out, int *nout, dm_err *err)
{
    *nout = 0;
    int64_t n = (int64_t)s->h.n;
    int D = (int)s->h.dim, k = o->k;
    if (k < 1)
        return dm_err_set(err, DM_EINVAL, "search: k = %d", k);
    scan c = { s, q, o->allow, 0, NULL, NULL, NULL, NULL, NULL };
    int64_t c2 = o->rerank > 0 ? o->rerank : (32 * (int64_t)k > 512 ? 32 * (int64_t)k : 512);
    c2 = c2 < k ? k : c2;
    int64_t c1 = o->candidates > 0 ? o->candidates : (n / 50 > 4096 ? n / 50 : 4096);
    c1 = c1 < c2 ? c2 : c1;
    if (o->exact || c2 >= n) { /* nothing to gain from the copies */
        if (search_exact(&c, o->pool, k, out, nout))
            return dm_err_oom(err);
        return 0;
    }
    int words = (int)s->h.words;
    uint64_t *qbits = malloc((size_t)words * 8);
    int8_t *q8 = malloc((size_t)D);
    c.cand = malloc(sizeof *c.cand * (size_t)(c1 < n ? c1 : n));
    c.dist = c1 < n ? malloc(sizeof *c.dist * (size_t)n) : NULL;
    int rc = 0;
    if (!qbits || !q8 || !c.cand || (c1 < n && !c.dist)) {
        rc = dm_err_oom(err);
        goto out;
    }
    quantize(q, D, q8, qbits, words);
    c.qbits = qbits, c.q8 = q8;
    int64_t m = 0;
    if (c1 < n) {
        if ((m = by_bits(&c, o->pool, c1)) < 0) {
            rc = dm_err_oom(err);
            goto out;
        }
    } else {
        for (int64_t i = 0; i < n; i++)
            if (!o->allow || o->allow[i])
                c.cand[m++] = (dm_search_match){ i, 0 };
    }
    if (m > c2) {
        want_rows(s->q8, (size_t)D, c.cand, m);
        run(o->pool, int8_cands, &c, m);
        select_best(c.cand, m, c2);
        m = c2;
    }
    want_rows(s->f32, (size_t)D * 4, c.cand, m);
    run(o->pool, f32_cands, &c, m);
    qsort(c.cand, (size_t)m, sizeof *c.cand, by_rank);
    *nout = (int)(m < k ? m : k);
    memcpy(out, c.cand, sizeof *out * (size_t)*nout);
out:
    free(qbits), free(q8), free(c.cand), free(c.dist);
    return rc;
}

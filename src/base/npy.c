/* src/base/npy.c — .npy files (see base.h). The header is parsed strictly enough to refuse what
 * we cannot read (Fortran order, big-endian, object arrays) with a clear message. */
#include "base.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse_shape(const char *h, dm_npy *a)
{
    const char *p = strstr(h, "'shape'");
    if (!p || !(p = strchr(p, '(')))
        return -1;
    p++;
    a->ndim = 0;
    a->numel = 1;
    for (;;) {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == ')')
            break;
        char *end;
        long long v = strtoll(p, &end, 10);
        /* checked before the product: 2^40 * 2^40 would overflow int64 */
        if (end == p || v < 0 || a->ndim == 8 || v > (1LL << 40) ||
            (v && a->numel > (1LL << 40) / v))
            return -1;
        a->shape[a->ndim++] = v;
        a->numel *= v;
        p = end;
        while (*p == 'L')
            p++;
    }
    return 0;
}

int dm_npy_read(const char *path, dm_npy *a, dm_err *err)
{
    memset(a, 0, sizeof *a);
    FILE *f = fopen(path, "rb");
    if (!f)
        return dm_err_set(err, DM_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char pre[12];
    int rc = 0;
    char *hdr = NULL;
    size_t hl = 0;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: not a .npy file", path);
        goto out;
    }
    if (pre[6] == 1) {
        hl = pre[8] | (size_t)pre[9] << 8;
    } else {
        if (fread(pre + 10, 1, 2, f) != 2) {
            rc = dm_err_set(err, DM_EFORMAT, "%s: truncated .npy header", path);
            goto out;
        }
        hl = pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    }
    if (hl > (1u << 20) || !(hdr = calloc(1, hl + 1)) || fread(hdr, 1, hl, f) != hl) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: bad .npy header", path);
        goto out;
    }
    if (strstr(hdr, "'fortran_order': True")) {
        rc = dm_err_set(err, DM_EUNSUPPORTED, "%s: Fortran-order arrays are not supported; save "
                        "with np.ascontiguousarray", path);
        goto out;
    }
    const char *d = strstr(hdr, "'descr'");
    const char *q = d ? strchr(d + 7, '\'') : NULL;
    if (!q || parse_shape(hdr, a)) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: bad .npy header (no 'descr', or a 'shape' that is "
                        "missing, negative or over 2^40 values)", path);
        goto out;
    }
    q++;
    size_t isz;
    char kind;
    if (!strncmp(q, "<f4", 3)) kind = 'f', isz = 4;
    else if (!strncmp(q, "|u1", 3) || !strncmp(q, "<u1", 3)) kind = 'u', isz = 1;
    else if (!strncmp(q, "<f8", 3)) kind = 'd', isz = 8;
    else {
        rc = dm_err_set(err, DM_EUNSUPPORTED, "%s: dtype %.4s not supported (float32, float64 or "
                        "uint8, little-endian)", path, q);
        goto out;
    }
    size_t n = (size_t)a->numel;
    /* the data the header declares must be in the file before anything is allocated for it: a
     * header declaring terabytes is refused by its size, not by a failed allocation */
    struct stat st;
    long pos = ftell(f);
    if (fstat(fileno(f), &st) != 0 || pos < 0 || (uint64_t)st.st_size < (uint64_t)pos ||
        ((uint64_t)st.st_size - (uint64_t)pos) / isz < n) {
        rc = dm_err_set(err, DM_EFORMAT, "%s: truncated or lying header: it declares %zu values "
                        "(%.3g GB) but the file holds %lld bytes", path, n, (double)n * isz / 1e9,
                        (long long)st.st_size);
        goto out;
    }
    void *buf = malloc(n * isz + 1);
    if (!buf) {
        rc = dm_err_oom(err);
        goto out;
    }
    if (fread(buf, isz, n, f) != n) {
        free(buf);
        rc = dm_err_set(err, DM_EFORMAT, "%s: truncated: expected %zu values", path, n);
        goto out;
    }
    if (kind == 'u') {
        a->dtype = 'u';
        a->u8 = buf;
    } else if (kind == 'f') {
        a->dtype = 'f';
        a->f = buf;
    } else {
        float *fl = malloc(n * sizeof(float) + 1);
        if (!fl) {
            free(buf);
            rc = dm_err_oom(err);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, (char *)buf + 8 * i, 8);
            fl[i] = (float)v;
        }
        free(buf);
        a->dtype = 'f';
        a->f = fl;
    }
out:
    free(hdr);
    fclose(f);
    return rc;
}

void dm_npy_free(dm_npy *a)
{
    if (!a)
        return;
    free(a->f);
    free(a->u8);
    a->f = NULL;
    a->u8 = NULL;
}

int dm_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                     dm_err *err)
{
    char dict[256], tmp[4096];
    int k = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        k += snprintf(dict + k, sizeof dict - k, "%lld,%s", (long long)shape[i],
                      i + 1 < ndim ? " " : "");
        n *= (size_t)shape[i];
    }
    k += snprintf(dict + k, sizeof dict - k, "), }");
    /* pad so that data starts at a multiple of 64 bytes, header ends with '\n' */
    int total = 10 + k + 1;
    int pad = (64 - total % 64) % 64;
    unsigned char pre[10] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0 };
    int hl = k + pad + 1;
    pre[8] = (unsigned char)(hl & 0xff);
    pre[9] = (unsigned char)(hl >> 8);
    snprintf(tmp, sizeof tmp, "%s.part", path);
    FILE *f = dm_fopen_fresh(tmp);
    if (!f)
        return dm_err_set(err, DM_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)k, f) == (size_t)k;
    for (int i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && fwrite(data, sizeof(float), n, f) == n;
    if (fclose(f) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return dm_err_set(err, DM_EIO, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

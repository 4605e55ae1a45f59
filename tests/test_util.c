/* tests/test_util.c — comparisons and command runs for the tests (see golden.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "../src/npy.h"
#include "golden.h"
#include "test.h"

double dm_rel_err(const float *a, const float *b, int64_t n)
{
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) /* NaN counts as the worst */
            md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mr)
            mr = fabs(b[i]);
    }
    return mr > 0 ? md / mr : md;
}

double dm_cmp_npy(const char *ours, const char *ref, char *why, int nwhy)
{
    dm_npy a, b;
    dm_err err = { 0 };
    if (dm_npy_read(ours, &a, &err)) {
        snprintf(why, nwhy, "%s", err.msg);
        return -1;
    }
    if (dm_npy_read(ref, &b, &err)) {
        snprintf(why, nwhy, "%s", err.msg);
        dm_npy_free(&a);
        return -1;
    }
    double r = -1;
    int same = a.ndim == b.ndim && a.dtype == 'f' && b.dtype == 'f';
    for (int i = 0; same && i < a.ndim; i++)
        same = a.shape[i] == b.shape[i];
    if (!same)
        snprintf(why, nwhy, "%s: shape/dtype differs from %s", ours, ref);
    else
        r = dm_rel_err(a.f, b.f, a.numel);
    dm_npy_free(&a);
    dm_npy_free(&b);
    return r;
}

const char *dm_bin(void)
{
    const char *b = getenv("DM_BIN");
    return b && *b ? b : "./dinomap";
}

int dm_run(const char *cmd, const char **outbuf)
{
    static char buf[16384];
    char full[8192], path[512];
    snprintf(path, sizeof path, "%s/cmd.out", dm_test_tmpdir());
    snprintf(full, sizeof full, "(%s) >%s 2>&1", cmd, path);
    int st = system(full);
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        remove(path);
    }
    if (outbuf)
        *outbuf = buf;
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

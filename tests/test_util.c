/* tests/test_util.c — comparisons and command runs for the tests (see golden.h). */
#include <cpl_conv.h>
#include <gdal.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../models/model.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

int dm_test_bf16(const char *test)
{
    if (dm_cpu_bf16())
        return 1;
    printf("    %s: skipped: this CPU has no bf16 dot-product instructions (AVX512_BF16 or AMX), "
           "so --precision bf16 is refused here\n", test);
    return 0;
}

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
    static char abs[PATH_MAX];
    const char *b = getenv("DM_BIN");
    b = b && *b ? b : "./dinomap";
    if (!abs[0] && !realpath(b, abs)) /* absolute: some tests run commands in other folders */
        snprintf(abs, sizeof abs, "%s", b);
    return abs;
}

/* A command's output file into buf (then removed). */
static void slurp(const char *path, char *buf, size_t cap)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, cap - 1, f);
        buf[n] = '\0';
        fclose(f);
        remove(path);
    }
}

int dm_run(const char *cmd, const char **outbuf)
{
    static char buf[16384];
    char full[8192], path[512];
    snprintf(path, sizeof path, "%s/cmd.out", dm_test_tmpdir());
    snprintf(full, sizeof full, "{ %s\n} >%s 2>&1", cmd, path); /* the shell's own notes too */
    int st = system(full);
    slurp(path, buf, sizeof buf);
    if (outbuf)
        *outbuf = buf;
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

int dm_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int bad = fputs(text, f) < 0;
    return fclose(f) || bad ? -1 : 0;
}

int dm_runf(const char **outbuf, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return dm_run(cmd, outbuf);
}

uint32_t dm_hash32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    return x ^ (x >> 16);
}

int dm_set_epsg(void *dataset, int epsg)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    char *wkt = NULL;
    int rc = s && OSRImportFromEPSG(s, epsg) == OGRERR_NONE &&
                     OSRExportToWkt(s, &wkt) == OGRERR_NONE &&
                     GDALSetProjection((GDALDatasetH)dataset, wkt) == CE_None
                 ? 0
                 : -1;
    CPLFree(wkt);
    OSRDestroySpatialReference(s);
    return rc;
}

/* A GeoTIFF of w×h px, `bands` Byte bands of smooth-ish random texture; epsg 0 = no CRS;
 * gt NULL = no geotransform; nodata >= 0 sets a nodata value (and paints a nodata block). */
int dm_make_tif(const char *path, int w, int h, int bands, const double *gt, int epsg,
                    int nodata, uint32_t seed)
{
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, w, h, bands, GDT_Byte, NULL);
    if (!d)
        return -1;
    if (gt)
        GDALSetGeoTransform(d, (double *)gt);
    if (epsg)
        dm_set_epsg(d, epsg);
    uint8_t *buf = malloc((size_t)w * h);
    for (int b = 1; b <= bands; b++) {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                uint32_t v = dm_hash32(seed * 7919u + (uint32_t)b * 104729u +
                                       (uint32_t)(y / 4) * 613u + (uint32_t)(x / 4));
                buf[(size_t)y * w + x] = (uint8_t)(40 + v % 180 + (x + y) % 16);
            }
        if (nodata >= 0) {
            for (int y = 0; y < h / 2; y++) /* top-left quarter is nodata */
                for (int x = 0; x < w / 2; x++)
                    buf[(size_t)y * w + x] = (uint8_t)nodata;
            GDALSetRasterNoDataValue(GDALGetRasterBand(d, b), nodata);
        }
        if (GDALRasterIO(GDALGetRasterBand(d, b), GF_Write, 0, 0, w, h, buf, w, h, GDT_Byte, 0,
                         0) != CE_None) {
            free(buf);
            GDALClose(d);
            return -1;
        }
    }
    free(buf);
    GDALClose(d);
    return 0;
}


const char *dm_golden(const char *rel)
{
    static char buf[8][PATH_MAX + 700], root[PATH_MAX];
    static int k;
    if (!root[0] && !realpath(dm_test_data(), root))
        snprintf(root, sizeof root, "%s", dm_test_data());
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/golden/%s", root, rel);
    return buf[k];
}

int dm_dir_empty_or_missing(const char *d)
{
    DIR *dp = opendir(d);
    if (!dp)
        return 1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dp)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(dp);
    return n == 0;
}

int dm_run_peak(const char *cmd, const char **outbuf, double *peak_mb)
{
    static char buf[16384];
    char path[512], full[8192];
    snprintf(path, sizeof path, "%s/cmd.out", dm_test_tmpdir());
    snprintf(full, sizeof full, "exec %s >%s 2>&1", cmd, path);
    *peak_mb = -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid)
        return -1;
    *peak_mb = (double)ru.ru_maxrss / 1024.0; /* this process and what it waited for */
    slurp(path, buf, sizeof buf);
    if (outbuf)
        *outbuf = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Every band of a raster as float32 [bands, h, w] (malloc'd), or NULL. */
float *dm_read_all(const char *path, int *w, int *h, int *bands)
{
    GDALAllRegister();
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d), *bands = GDALGetRasterCount(d);
    float *v = malloc(sizeof(float) * (size_t)*w * *h * *bands);
    if (v && GDALDatasetRasterIO(d, GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32, *bands, NULL,
                                 0, 0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

/* 1 when both rasters hold the same values (NaN equal to NaN), bit for bit; else why. */
int dm_same_raster(const char *a, const char *b, char *why, size_t n)
{
    int w1, h1, b1, w2, h2, b2;
    float *x = dm_read_all(a, &w1, &h1, &b1), *y = dm_read_all(b, &w2, &h2, &b2);
    int ok = x && y && w1 == w2 && h1 == h2 && b1 == b2;
    if (!ok)
        snprintf(why, n, "%s vs %s: unreadable or of another size", a, b);
    size_t diff = 0, tot = ok ? (size_t)w1 * h1 * b1 : 0;
    for (size_t i = 0; ok && i < tot; i++) {
        uint32_t p, q;
        memcpy(&p, &x[i], 4);
        memcpy(&q, &y[i], 4);
        diff += !(p == q || (isnan(x[i]) && isnan(y[i])));
    }
    if (ok && diff) {
        snprintf(why, n, "%s vs %s: %zu of %zu values differ", a, b, diff, tot);
        ok = 0;
    }
    free(x), free(y);
    return ok;
}

int dm_same_outputs(const char *d1, const char *d2, const char *const *names, char *why,
                    size_t n)
{
    for (int i = 0; names[i]; i++) {
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/%s", d1, names[i]);
        snprintf(b, sizeof b, "%s/%s", d2, names[i]);
        if (!dm_same_raster(a, b, why, n))
            return 0;
    }
    return 1;
}

/* gis/gdal_env.c — GDAL's process-wide environment for programs (see gis.h): its messages routed
 * into dinomap's log, configuration options (--config), and the CRS check of --crs. */
#include <cpl_conv.h>
#include <cpl_error.h>
#include <gdal.h>
#include <ogr_srs_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gis.h"

/* A damaged file can make GDAL warn once per block: the first ones tell, the rest drown the
 * run's own lines. Part of the log routing, the only state here. */
#define MAX_GDAL_MESSAGES 50
static pthread_mutex_t msg_lock = PTHREAD_MUTEX_INITIALIZER;
static int msg_count;

/* GDAL's message on one line (PROJ's and the warper's may hold newlines). */
static void one_line(const char *m, char *out, size_t n)
{
    size_t k = 0;
    for (; *m && k + 1 < n; m++)
        out[k++] = *m == '\n' || *m == '\r' ? ' ' : *m;
    while (k && out[k - 1] == ' ')
        k--;
    out[k] = '\0';
}

static void CPL_STDCALL to_log(CPLErr cls, CPLErrorNum num, const char *msg)
{
    char m[1500];
    one_line(msg ? msg : "", m, sizeof m);
    if (cls == CE_Debug) {
        /* CPL_DEBUG output stays GDAL's own, as GDAL prints it: the quiet handlers dinomap
         * pushes around its calls print it that way too, and one style beats two */
        CPLDefaultErrorHandler(cls, num, msg);
        return;
    }
    pthread_mutex_lock(&msg_lock);
    int k = ++msg_count;
    pthread_mutex_unlock(&msg_lock);
    /* whether GDAL's error ends the run is dinomap's to say, in its own message */
    if (k <= MAX_GDAL_MESSAGES)
        dm_warn("GDAL: %s", m);
    else if (k == MAX_GDAL_MESSAGES + 1)
        dm_warn("GDAL: more messages follow; not shown");
}

void dm_gis_log_messages(void)
{
    CPLSetErrorHandler(to_log);
}

void dm_gis_safe_defaults(void)
{
    if (!CPLGetConfigOption("GDAL_VRT_ENABLE_PYTHON", NULL))
        CPLSetConfigOption("GDAL_VRT_ENABLE_PYTHON", "NO");
}

/* GDAL 3.6's reading of GDAL_CACHEMAX: "N%" of the RAM, a number below 100000 megabytes, else
 * bytes. -1 when it is none of these. */
static int64_t cache_bytes(const char *v)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || !(x > 0))
        return -1;
    if (!strcmp(end, "%"))
        return (int64_t)(x / 100 * (double)CPLGetUsablePhysicalRAM());
    if (*end)
        return -1;
    return x < 100000 ? (int64_t)(x * 1024 * 1024) : (int64_t)x;
}

int dm_gis_config_set(const char *key, const char *value, dm_err *err)
{
    if (!strcasecmp(key, "GDAL_CACHEMAX")) {
        /* the program fixed the cache size at start, after which GDAL no longer reads it */
        int64_t b = cache_bytes(value);
        if (b <= 0)
            return dm_err_set(err, DM_EINVAL, "--config GDAL_CACHEMAX %s: expected megabytes "
                              "(e.g. 512), bytes, or a share of the RAM (e.g. 10%%)", value);
        GDALSetCacheMax64(b);
    }
    CPLSetConfigOption(key, value);
    return 0;
}

int dm_gis_crs_check(const char *crs, dm_err *err)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    if (!s)
        return dm_err_oom(err);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRErr e = OSRSetFromUserInput(s, crs);
    char why[600];
    one_line(CPLGetLastErrorMsg(), why, sizeof why);
    CPLPopErrorHandler();
    OSRDestroySpatialReference(s);
    if (e == OGRERR_NONE)
        return 0;
    return dm_err_set(err, DM_EINVAL, "--crs %s: not a CRS GDAL/PROJ knows (%s); e.g. EPSG:32631, "
                      "a WKT or PROJ string", crs, why[0] ? why : "an unknown name or format");
}

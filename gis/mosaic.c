/* gis/mosaic.c — the input mosaic (see gis.h). Everything stays virtual (VRTs in /vsimem) so reads
 * are windowed and memory does not grow with the mosaic.
 *
 * The mosaic keeps one grid exactly: --gsd's (pixel corners on multiples of it, as gdalwarp -tap),
 * else the first input's (warped first when its CRS is geographic or not --crs, or it is rotated).
 * An input already on that grid (same CRS, pixel size, whole-pixel offset, north-up) is read as
 * it is; only the others are warped onto it. Each input then becomes a 4-band VRT: its three
 * selected bands and a validity band made from its own nodata, masks and alpha band, whatever
 * its band count (GDAL's own default treats a last band as alpha only in 2- and 4-band files).
 * The mosaic VRT places those with whole-pixel offsets; later inputs cover earlier ones where
 * they are valid. */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include <gdal.h>
#include <gdal_alg.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <gdal_utils.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mosaic_internal.h"

#define MAX_INPUTS 4096

static void note(dm_mosaic *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(dm_mosaic *m, const char *fmt, ...)
{
    size_t n = strlen(m->notes);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->notes + n, sizeof m->notes - n, fmt, ap);
    va_end(ap);
}

/* A new /vsimem name, removed with the mosaic; NULL when out of memory. */
static const char *vsi_name(dm_mosaic *m, const char *what)
{
    if (m->nvsi == m->capvsi) {
        int cap = m->capvsi ? 2 * m->capvsi : 16;
        char **v = realloc(m->vsi, sizeof *v * (size_t)cap);
        if (!v)
            return NULL;
        m->vsi = v;
        m->capvsi = cap;
    }
    char buf[96];
    snprintf(buf, sizeof buf, "/vsimem/dinomap_%p_%s_%d.vrt", (void *)m, what, m->nvsi);
    return (m->vsi[m->nvsi] = strdup(buf)) ? m->vsi[m->nvsi++] : NULL;
}

/* --- text of the VRTs ---------------------------------------------------------------------- */

typedef struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->s ? b->cap - b->n : 0;
        int k = b->oom ? 0 : vsnprintf(b->s ? b->s + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (b->oom || k < 0)
            return;
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? 2 * b->cap : 4096) + (size_t)k;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

/* Writes text as a /vsimem file. */
static int vsi_write(const char *name, const sbuf *b, dm_err *err)
{
    if (b->oom)
        return dm_err_oom(err);
    VSILFILE *f = VSIFOpenL(name, "wb");
    int ok = f && VSIFWriteL(b->s, 1, b->n, f) == b->n;
    if (f)
        VSIFCloseL(f);
    return ok ? 0 : dm_err_set(err, DM_EIO, "cannot write %s", name);
}

static void put_header(sbuf *b, int w, int h, const char *wkt, const double *gt)
{
    put(b, "<VRTDataset rasterXSize=\"%d\" rasterYSize=\"%d\">\n", w, h);
    if (wkt && wkt[0]) {
        char *e = CPLEscapeString(wkt, -1, CPLES_XML);
        put(b, "<SRS dataAxisToSRSAxisMapping=\"1,2\">%s</SRS>\n", e);
        CPLFree(e);
    }
    if (gt)
        put(b, "<GeoTransform>%.17g,%.17g,%.17g,%.17g,%.17g,%.17g</GeoTransform>\n", gt[0], gt[1],
            gt[2], gt[3], gt[4], gt[5]);
}

static void put_source(sbuf *b, const char *kind, const char *file, const char *band,
                       const char *extra)
{
    char *e = CPLEscapeString(file, -1, CPLES_XML);
    put(b, "<%s><SourceFilename relativeToVRT=\"0\">%s</SourceFilename><SourceBand>%s"
        "</SourceBand>%s</%s>\n", kind, e, band, extra, kind);
    CPLFree(e);
}

/* One input as 4 bands: its selected bands, then validity (255 valid, 0 invalid) = its alpha band
 * (last band with an alpha colour interpretation; > 0 is valid), AND the mask of each selected
 * band (nodata, .msk, internal masks). The AND is VRT painting: the first source is the base,
 * the next write only their 0s (NODATA 255 skips the rest). With neither, 255 everywhere. */
static int normalize(dm_mosaic *m, GDALDatasetH ds, const char *file, const int bands[3],
                     GDALDataType type, const char **name, int *all_valid, dm_err *err)
{
    int n = GDALGetRasterCount(ds), w = GDALGetRasterXSize(ds), h = GDALGetRasterYSize(ds);
    double gt[6];
    int has_gt = GDALGetGeoTransform(ds, gt) == CE_None;
    sbuf b = { 0 };
    put_header(&b, w, h, GDALGetProjectionRef(ds), has_gt ? gt : NULL);
    static const char *ci[3] = { "Red", "Green", "Blue" };
    char num[32];
    for (int i = 0; i < 3; i++) {
        snprintf(num, sizeof num, "%d", bands[i]);
        put(&b, "<VRTRasterBand dataType=\"%s\" band=\"%d\"><ColorInterp>%s</ColorInterp>\n",
            GDALGetDataTypeName(type), i + 1, ci[i]);
        put_source(&b, "SimpleSource", file, num, "");
        put(&b, "</VRTRasterBand>\n");
    }
    put(&b, "<VRTRasterBand dataType=\"Byte\" band=\"4\"><ColorInterp>Alpha</ColorInterp>\n");
    static const char *lut = "<LUT>0:0,1:255,255:255</LUT>";
    int first = 1;
    if (n > 1 && GDALGetRasterColorInterpretation(GDALGetRasterBand(ds, n)) == GCI_AlphaBand) {
        snprintf(num, sizeof num, "%d", n);
        put_source(&b, "ComplexSource", file, num, lut);
        first = 0;
    }
    int per_dataset_done = 0;
    for (int i = 0; i < 3; i++) {
        int flags = GDALGetMaskFlags(GDALGetRasterBand(ds, bands[i]));
        if (flags & GMF_ALL_VALID)
            continue; /* nothing to take away (and GDAL reads such masks through its cache) */
        if (flags & GMF_PER_DATASET) { /* one mask for all bands: once */
            if (per_dataset_done)
                continue;
            per_dataset_done = 1;
        }
        char extra[96];
        snprintf(extra, sizeof extra, "%s%s", first ? "" : "<NODATA>255</NODATA>", lut);
        snprintf(num, sizeof num, "mask,%d", bands[i]);
        put_source(&b, "ComplexSource", file, num, extra);
        first = 0;
    }
    *all_valid = first;
    if (first) { /* all valid: 255 over the input's extent (0 × band + 255) */
        snprintf(num, sizeof num, "%d", bands[0]);
        put_source(&b, "ComplexSource", file, num,
                   "<ScaleOffset>255</ScaleOffset><ScaleRatio>0</ScaleRatio>");
    }
    put(&b, "</VRTRasterBand>\n</VRTDataset>\n");
    *name = vsi_name(m, "input");
    int rc = *name ? vsi_write(*name, &b, err) : dm_err_oom(err);
    free(b.s);
    return rc;
}

/* An input placed on the mosaic's grid: its normalized VRT at whole-pixel offsets. */
typedef struct part {
    const char *name;
    long col, row;
    int w, h;
    int all_valid;            /* no nodata, mask nor alpha */
} part;

/* The mosaic of the parts, the later over the earlier where valid (each source's mask is its
 * validity band); size and geotransform given. */
static int mosaic_vrt(dm_mosaic *m, const part *p, int n, int W, int H, const double gt[6],
                      long c0, long r0, const char *wkt, GDALDataType type, const char **name,
                      dm_err *err)
{
    sbuf b = { 0 };
    put_header(&b, W, H, wkt, gt);
    for (int band = 1; band <= 4; band++) {
        put(&b, "<VRTRasterBand dataType=\"%s\" band=\"%d\">%s\n",
            GDALGetDataTypeName(band == 4 ? GDT_Byte : type), band,
            band == 4 ? "<ColorInterp>Alpha</ColorInterp>" : "");
        char num[8], extra[512];
        snprintf(num, sizeof num, "%d", band);
        for (int i = 0; i < n && !b.oom; i++) {
            snprintf(extra, sizeof extra, "<SourceProperties RasterXSize=\"%d\" RasterYSize=\"%d\" "
                     "DataType=\"%s\" BlockXSize=\"128\" BlockYSize=\"128\"/>"
                     "<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"%d\" ySize=\"%d\"/>"
                     "<DstRect xOff=\"%ld\" yOff=\"%ld\" xSize=\"%d\" ySize=\"%d\"/>"
                     "<UseMaskBand>true</UseMaskBand>",
                     p[i].w, p[i].h, GDALGetDataTypeName(band == 4 ? GDT_Byte : type), p[i].w,
                     p[i].h, p[i].col - c0, p[i].row - r0, p[i].w, p[i].h);
            put_source(&b, "ComplexSource", p[i].name, num, extra);
        }
        put(&b, "</VRTRasterBand>\n");
    }
    put(&b, "</VRTDataset>\n");
    *name = vsi_name(m, "mosaic");
    int rc = *name ? vsi_write(*name, &b, err) : dm_err_oom(err);
    free(b.s);
    return rc;
}

/* --- the grid ------------------------------------------------------------------------------ */

/* GDAL utility (warp) argument list helper */
static char **args(char **l, const char *a)
{
    return CSLAddString(l, a);
}

static int is_geographic(const char *wkt)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    int geo = s && OSRImportFromWkt(s, (char **)&wkt) == OGRERR_NONE && OSRIsGeographic(s);
    OSRDestroySpatialReference(s);
    return geo;
}

static int same_crs(const char *a, const char *b)
{
    if (!a[0] || !b[0])
        return !a[0] && !b[0];
    OGRSpatialReferenceH x = OSRNewSpatialReference(a), y = OSRNewSpatialReference(b);
    int same = x && y && OSRIsSame(x, y);
    OSRDestroySpatialReference(x);
    OSRDestroySpatialReference(y);
    return same;
}

/* A CRS as WKT (anything OSRSetFromUserInput takes); NULL when PROJ does not know it. */
static char *crs_wkt(const char *crs)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    char *wkt = NULL, *out = NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    if (s && OSRSetFromUserInput(s, crs) == OGRERR_NONE && OSRExportToWkt(s, &wkt) == OGRERR_NONE)
        out = strdup(wkt);
    CPLPopErrorHandler();
    CPLFree(wkt);
    OSRDestroySpatialReference(s);
    return out;
}

/* An input's CRS: its own, or that of its ground control points (a scene georeferenced by GCPs
 * only, warped with them); "" when neither. */
static const char *input_wkt(GDALDatasetH d)
{
    const char *w = GDALGetProjectionRef(d);
    if ((!w || !w[0]) && GDALGetGCPCount(d) > 0)
        w = GDALGetGCPProjection(d);
    return w ? w : "";
}

/* "EPSG:326zz" / "EPSG:327zz" for the centre of the dataset (geographic coordinates: its
 * geotransform's, or the mean of its GCPs) */
static void utm_for(GDALDatasetH ds, char *out, size_t n)
{
    double gt[6], lon = 0, lat = 0;
    if (GDALGetGeoTransform(ds, gt) == CE_None) {
        lon = gt[0] + gt[1] * GDALGetRasterXSize(ds) / 2.0 + gt[2] * GDALGetRasterYSize(ds) / 2.0;
        lat = gt[3] + gt[4] * GDALGetRasterXSize(ds) / 2.0 + gt[5] * GDALGetRasterYSize(ds) / 2.0;
    } else {
        int k = GDALGetGCPCount(ds);
        const GDAL_GCP *g = GDALGetGCPs(ds);
        for (int i = 0; i < k; i++)
            lon += g[i].dfGCPX / k, lat += g[i].dfGCPY / k;
    }
    /* axis order of a geographic CRS in a GeoTIFF geotransform is lon, lat */
    int zone = (int)floor((lon + 180.0) / 6.0) + 1;
    zone = zone < 1 ? 1 : zone > 60 ? 60 : zone;
    snprintf(out, n, "EPSG:%d", (lat >= 0 ? 32600 : 32700) + zone);
}

/* The mosaic's grid: pixel size (rx > 0, ry < 0) and a pixel corner (x0, y0). */
typedef struct grid {
    int set;
    double x0, y0, rx, ry;
} grid;

/* Where a north-up geotransform falls on the grid: 1 with its whole-pixel offset, else 0. */
static int on_grid(const grid *g, const double gt[6], long *col, long *row)
{
    if (gt[2] != 0 || gt[4] != 0 || gt[5] >= 0 || gt[1] <= 0)
        return 0;
    if (fabs(gt[1] - g->rx) > 1e-9 * g->rx || fabs(gt[5] - g->ry) > 1e-9 * -g->ry)
        return 0;
    double c = (gt[0] - g->x0) / g->rx, r = (gt[3] - g->y0) / g->ry;
    if (fabs(c - floor(c + 0.5)) > 1e-6 || fabs(r - floor(r + 0.5)) > 1e-6 ||
        fabs(c) > 1e15 || fabs(r) > 1e15)
        return 0;
    *col = (long)floor(c + 0.5);
    *row = (long)floor(r + 0.5);
    return 1;
}

/* Warps src to target_wkt: onto grid g when it is set (the source's footprint, rounded out to
 * whole grid pixels), else with gdalwarp's own choice of grid. Areas outside the source get
 * alpha 0. */
static int warp(dm_mosaic *m, GDALDatasetH src, const char *target_wkt, const grid *g,
                const char **name, dm_err *err)
{
    char **a = NULL;
    char buf[4][64];
    a = args(a, "-of"), a = args(a, "VRT");
    a = args(a, "-t_srs"), a = args(a, target_wkt);
    if (g->set) {
        /* the source's footprint in the target CRS, as gdalwarp would choose it */
        char *opt[] = { NULL, NULL };
        char *dst = CPLStrdup(CPLSPrintf("DST_SRS=%s", target_wkt));
        opt[0] = dst;
        void *tr = GDALCreateGenImgProjTransformer2(src, NULL, opt);
        CPLFree(dst);
        double sgt[6], ext[4];
        int sw = 0, sh = 0;
        int ok = tr && GDALSuggestedWarpOutput2(src, GDALGenImgProjTransform, tr, sgt, &sw, &sh,
                                                ext, 0) == CE_None;
        if (tr)
            GDALDestroyGenImgProjTransformer(tr);
        if (!ok) {
            CSLDestroy(a);
            return dm_err_set(err, DM_EINVAL, "cannot place %s in the mosaic's CRS: %s",
                              GDALGetDescription(src), CPLGetLastErrorMsg());
        }
        /* ext: minx, miny, maxx, maxy; rounded out to whole grid pixels */
        double c0 = floor((ext[0] - g->x0) / g->rx + 1e-6);
        double c1 = ceil((ext[2] - g->x0) / g->rx - 1e-6);
        double r0 = floor((ext[3] - g->y0) / g->ry + 1e-6);
        double r1 = ceil((ext[1] - g->y0) / g->ry - 1e-6);
        snprintf(buf[0], 64, "%.17g", g->x0 + c0 * g->rx);
        snprintf(buf[1], 64, "%.17g", g->y0 + r1 * g->ry);
        snprintf(buf[2], 64, "%.17g", g->x0 + c1 * g->rx);
        snprintf(buf[3], 64, "%.17g", g->y0 + r0 * g->ry);
        a = args(a, "-te");
        for (int i = 0; i < 4; i++)
            a = args(a, buf[i]);
        snprintf(buf[0], 64, "%.17g", g->rx);
        snprintf(buf[1], 64, "%.17g", -g->ry);
        a = args(a, "-tr"), a = args(a, buf[0]), a = args(a, buf[1]);
    }
    a = args(a, "-r"), a = args(a, "bilinear");
    a = args(a, "-dstalpha"); /* the area outside the source becomes invalid, not black */
    GDALWarpAppOptions *wo = GDALWarpAppOptionsNew(a, NULL);
    CSLDestroy(a);
    int usage = 0;
    *name = vsi_name(m, "warp");
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH d = wo && *name ? GDALWarp(*name, NULL, 1, &src, wo, &usage) : NULL;
    CPLPopErrorHandler();
    GDALWarpAppOptionsFree(wo);
    if (!d)
        return dm_err_set(err, DM_EINVAL, "cannot warp %s to the mosaic's CRS: %s",
                          GDALGetDescription(src), CPLGetLastErrorMsg());
    GDALClose(d);
    return 0;
}

/* --- scaling ------------------------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Appends the valid values of the three bands in window (x, y, w, h), read at bw×bh, to v. */
static int sample(dm_mosaic *m, int x, int y, int w, int h, int bw, int bh, float *f, uint8_t *ok,
                  float *v, size_t *k, dm_err *err)
{
    size_t np = (size_t)bw * bh;
    int bad = GDALRasterIO(m->alpha, GF_Read, x, y, w, h, ok, bw, bh, GDT_Byte, 0, 0) != CE_None;
    for (int b = 0; b < 3 && !bad; b++)
        bad = GDALRasterIO(m->band[b], GF_Read, x, y, w, h, f + b * np, bw, bh, GDT_Float32, 0,
                           0) != CE_None;
    if (bad)
        return dm_err_set(err, DM_EIO, "cannot sample the mosaic for its percentiles at (%d,%d): "
                          "%s", x, y, CPLGetLastErrorMsg());
    for (int b = 0; b < 3; b++)
        for (size_t i = 0; i < np; i++)
            if ((m->all_valid || ok[i]) && !isnan(f[b * np + i]))
                v[(*k)++] = f[b * np + i];
    return 0;
}

/* The P1 and P2 percentiles of the valid pixels of the three bands (GDAL's statistics would count
 * pixels only the validity band marks invalid): all pixels of a mosaic up to 1024×1024; else
 * 16×16 windows of 64×64 px spread evenly over it (full-resolution reads touch few blocks even
 * in a huge virtual mosaic, where a decimated read of the whole reads nearly all of it), and
 * only where those find few valid pixels (a sparse mosaic) a 1024×1024 decimated read. */
static int percentiles(dm_mosaic *m, double p1, double p2, dm_err *err)
{
    int small = m->W <= 1024 && m->H <= 1024, G = 16, S = 64;
    size_t cap = 3 * (small ? (size_t)m->W * m->H : (size_t)(G * G * S * S) + 1024 * 1024);
    float *v = malloc(cap * sizeof *v), *f = malloc(3 * (size_t)1024 * 1024 * sizeof *f);
    uint8_t *ok = malloc((size_t)1024 * 1024);
    size_t k = 0;
    int rc = (!v || !f || !ok) ? dm_err_oom(err) : 0;
    if (!rc && small)
        rc = sample(m, 0, 0, m->W, m->H, m->W, m->H, f, ok, v, &k, err);
    for (int gy = 0; gy < G && !rc && !small; gy++)
        for (int gx = 0; gx < G && !rc; gx++) {
            int ww = m->W < S ? m->W : S, wh = m->H < S ? m->H : S;
            int x = (int)((int64_t)(m->W - ww) * (2 * gx + 1) / (2 * G));
            int y = (int)((int64_t)(m->H - wh) * (2 * gy + 1) / (2 * G));
            rc = sample(m, x, y, ww, wh, ww, wh, f, ok, v, &k, err);
        }
    if (!rc && !small && k < 3 * 4096) {
        int bw = m->W < 1024 ? m->W : 1024, bh = m->H < 1024 ? m->H : 1024;
        rc = sample(m, 0, 0, m->W, m->H, bw, bh, f, ok, v, &k, err);
    }
    free(ok), free(f);
    if (rc) {
        free(v);
        return rc;
    }
    if (!k) {
        free(v);
        return dm_err_set(err, DM_EINVAL, "no valid pixel to map (all nodata, masked or alpha "
                          "0); check the nodata value (gdalinfo), or give inputs with data");
    }
    qsort(v, k, sizeof *v, cmp_float);
    size_t i1 = (size_t)floor(p1 / 100.0 * (double)(k - 1) + 0.5);
    size_t i2 = (size_t)floor(p2 / 100.0 * (double)(k - 1) + 0.5);
    m->lo = v[i1];
    m->hi = v[i2] > v[i1] ? v[i2] : v[i1] + 1;
    free(v);
    snprintf(m->scaling, sizeof m->scaling, "stretch %g-%g percentiles of the mosaic: %g..%g", p1,
             p2, m->lo, m->hi);
    return 0;
}

/* How the pixels come to 8 bits: the run's fixed scale, --scale, --stretch, or the default
 * (8-bit as is; other types stretched 2-98 %). */
static int choose_scaling(dm_mosaic *m, const dm_mosaic_opts *o, dm_err *err)
{
    int rc = 0;
    if (o->fixed_set) {
        m->lo = o->fixed_lo;
        m->hi = o->fixed_hi;
        snprintf(m->scaling, sizeof m->scaling, "%s",
                 o->fixed_text ? o->fixed_text : "scale fixed by the run");
        m->type = GDT_Float32;
    } else if (o->scale_set) {
        m->lo = o->scale_min;
        m->hi = o->scale_max;
        snprintf(m->scaling, sizeof m->scaling, "scale %g..%g to 0..255", m->lo, m->hi);
        m->type = GDT_Float32; /* scale even 8-bit input when asked */
    } else if (m->type != GDT_Byte) {
        double p1 = o->stretch_set ? o->p1 : 2, p2 = o->stretch_set ? o->p2 : 98;
        if (!o->stretch_set)
            note(m, "input is %s, not 8-bit: stretching its 2-98 percentiles to 0..255 "
                    "(--scale or --stretch to choose)\n", GDALGetDataTypeName(m->type));
        rc = percentiles(m, p1, p2, err);
        m->type = GDT_Float32;
    } else if (o->stretch_set) {
        rc = percentiles(m, o->p1, o->p2, err);
        m->type = GDT_Float32;
    } else {
        snprintf(m->scaling, sizeof m->scaling, "8-bit input used as is");
    }
    m->scaled = m->type != GDT_Byte;
    return rc;
}

/* --- opening -------------------------------------------------------------------------------- */

static int open_one(const char *path, GDALDatasetH *out, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY | GDAL_OF_VERBOSE_ERROR,
                                NULL, NULL, NULL);
    CPLPopErrorHandler();
    if (!d) {
        /* say it plainly when there is no such file, or an empty one (VSI, not stat(): /vsi
         * paths too; names GDAL reads as connection strings, NETCDF:..., exist to it only) */
        VSIStatBufL st;
        if (strncmp(path, "/vsi", 4) && !strchr(path, ':') &&
            VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) != 0)
            return dm_err_set(err, DM_EIO, "%s: not a raster GDAL can open: no such file (check "
                              "the path)", path);
        if (VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG | VSI_STAT_SIZE_FLAG) == 0 &&
            VSI_ISREG(st.st_mode) && st.st_size == 0)
            return dm_err_set(err, DM_EFORMAT, "%s: an empty file (0 bytes), not a raster; was it "
                              "copied or downloaded completely?", path);
        return dm_err_set(err, DM_EFORMAT, "%s: not a raster GDAL can open (%s)", path,
                          CPLGetLastErrorMsg()[0] ? CPLGetLastErrorMsg() : "unknown format");
    }
    *out = d;
    return 0;
}

/* The type the selected bands are read as: theirs when they agree, else Float32. */
static GDALDataType bands_type(GDALDatasetH d, const int bands[3])
{
    GDALDataType t = GDALGetRasterDataType(GDALGetRasterBand(d, bands[0]));
    for (int b = 1; b < 3; b++)
        if (GDALGetRasterDataType(GDALGetRasterBand(d, bands[b])) != t)
            return GDT_Float32;
    return t;
}

/* " a JPEG JFIF file, not a GeoTIFF despite its name:" when a .tif/.tiff file is read by another
 * driver (a renamed file), else "". */
static const char *misnamed(GDALDatasetH d, const char *path, char *buf, size_t n)
{
    const char *dot = strrchr(path, '.');
    GDALDriverH drv = GDALGetDatasetDriver(d);
    const char *name = drv ? GDALGetDriverShortName(drv) : NULL;
    buf[0] = '\0';
    if (dot && (!strcasecmp(dot, ".tif") || !strcasecmp(dot, ".tiff")) && name &&
        strcmp(name, "GTiff") && strcmp(name, "COG"))
        snprintf(buf, n, " a %s file, not a GeoTIFF despite its name:",
                 GDALGetDriverLongName(drv));
    return buf;
}

/* A paletted input (one band of colour-table indices, which QGIS shows in colour) is read as its
 * RGB colours, as gdal_translate -expand rgb does, its nodata or mask as an alpha band: *d becomes
 * that VRT. Without this its indices would be taken for grey levels, or --bands 1,2,3 refused. */
static int expand_palette(dm_mosaic *m, GDALDatasetH *d, const char *file, int *expanded,
                          dm_err *err)
{
    GDALRasterBandH b = GDALGetRasterBand(*d, 1);
    *expanded = 0;
    if (GDALGetRasterCount(*d) != 1 || GDALGetRasterColorInterpretation(b) != GCI_PaletteIndex ||
        !GDALGetRasterColorTable(b))
        return 0;
    double gt[6];
    int has_gt = GDALGetGeoTransform(*d, gt) == CE_None;
    sbuf s = { 0 };
    put_header(&s, GDALGetRasterXSize(*d), GDALGetRasterYSize(*d), GDALGetProjectionRef(*d),
               has_gt ? gt : NULL);
    static const char *ci[3] = { "Red", "Green", "Blue" };
    for (int i = 0; i < 3; i++) {
        char extra[64];
        snprintf(extra, sizeof extra, "<ColorTableComponent>%d</ColorTableComponent>", i + 1);
        put(&s, "<VRTRasterBand dataType=\"Byte\" band=\"%d\"><ColorInterp>%s</ColorInterp>\n",
            i + 1, ci[i]);
        put_source(&s, "ComplexSource", file, "1", extra);
        put(&s, "</VRTRasterBand>\n");
    }
    if (!(GDALGetMaskFlags(b) & GMF_ALL_VALID)) {
        put(&s, "<VRTRasterBand dataType=\"Byte\" band=\"4\"><ColorInterp>Alpha</ColorInterp>\n");
        put_source(&s, "ComplexSource", file, "mask,1", "<LUT>0:0,1:255,255:255</LUT>");
        put(&s, "</VRTRasterBand>\n");
    }
    put(&s, "</VRTDataset>\n");
    const char *name = vsi_name(m, "palette");
    int rc = name ? vsi_write(name, &s, err) : dm_err_oom(err);
    free(s.s);
    GDALDatasetH e = NULL;
    if (!rc && !(rc = open_one(name, &e, err))) {
        GDALClose(*d);
        *d = e;
        *expanded = 1;
    }
    return rc;
}

/* Opens input i, a paletted one as RGB; the notice about it once (first). */
static int open_src(dm_mosaic *m, const dm_mosaic_opts *o, int i, int first, GDALDatasetH *d,
                    dm_err *err)
{
    int rc = open_one(o->inputs[i], d, err), expanded = 0;
    if (!rc && (rc = expand_palette(m, d, o->inputs[i], &expanded, err))) {
        GDALClose(*d);
        *d = NULL;
    }
    if (!rc && expanded && first)
        note(m, "%s: a paletted image (colour-table indices): read as its RGB colours, as "
                "gdal_translate -expand rgb does\n", o->inputs[i]);
    return rc;
}

/* Opens and checks input i (bands, georeferencing). */
static int open_input(dm_mosaic *m, const dm_mosaic_opts *o, int i, GDALDatasetH *d, int *georef,
                      dm_err *err)
{
    int rc = open_one(o->inputs[i], d, err);
    if (rc)
        return rc;
    char what[160];
    misnamed(*d, o->inputs[i], what, sizeof what);
    GDALClose(*d);
    *d = NULL;
    if ((rc = open_src(m, o, i, 1, d, err)))
        return rc;
    int nb = GDALGetRasterCount(*d);
    for (int b = 0; b < 3; b++)
        if (o->bands[b] < 1 || o->bands[b] > nb)
            return dm_err_set(err, DM_EINVAL, "%s:%s has %d band%s; --bands %d,%d,%d asks for "
                              "band %d (choose three of its bands with --bands, e.g. --bands "
                              "1,1,1 for a grey image)", o->inputs[i], what, nb,
                              nb == 1 ? "" : "s", o->bands[0], o->bands[1], o->bands[2],
                              o->bands[b]);
    double gt[6];
    const char *w = GDALGetProjectionRef(*d);
    int has_gt = GDALGetGeoTransform(*d, gt) == CE_None;
    *georef = (has_gt && w && w[0]) || (GDALGetGCPCount(*d) >= 3 && input_wkt(*d)[0]);
    int finite = 1;
    for (int k = 0; k < 6; k++)
        finite &= isfinite(gt[k]);
    if (has_gt && (!finite || fabs(gt[1] * gt[5] - gt[2] * gt[4]) < 1e-300))
        return dm_err_set(err, DM_EINVAL, "%s: its geotransform (%g, %g, %g, %g, %g, %g) places "
                          "no pixel on the map (a pixel size of 0 or not a number); fix it, e.g. "
                          "with gdal_edit.py -a_ullr", o->inputs[i], gt[0], gt[1], gt[2],
                          gt[3], gt[4], gt[5]);
    if (!*georef && !o->allow_ungeoreferenced)
        return dm_err_set(err, DM_EINVAL, "%s:%s has no georeferencing (%s); outputs could not "
                          "be placed on a map. Georeference it first (e.g. gdal_translate -a_srs "
                          "... -a_ullr ...), or pass --allow-ungeoreferenced to map it in pixel "
                          "coordinates", o->inputs[i], what, has_gt ? "no CRS" : "no geotransform");
    if (!*georef && o->n_inputs > 1)
        return dm_err_set(err, DM_EINVAL, "%s: has no georeferencing, so it cannot be placed in "
                          "a mosaic of %d inputs; map it alone", o->inputs[i], o->n_inputs);
    return 0;
}

void dm_mosaic_inputs_label(const dm_mosaic_opts *o, char *buf, size_t n)
{
    if (o->n_inputs == 1)
        snprintf(buf, n, "%s", o->inputs[0]);
    else if (o->n_inputs == 2)
        snprintf(buf, n, "%s, %s", o->inputs[0], o->inputs[1]);
    else if (o->n_inputs > 2)
        snprintf(buf, n, "%s and %d other inputs", o->inputs[0], o->n_inputs - 1);
    else
        snprintf(buf, n, "(no input)");
}

/* The target CRS as WKT: --crs, else the first input's (a geographic one: its UTM zone). */
static int target_crs(dm_mosaic *m, const dm_mosaic_opts *o, GDALDatasetH first, char **wkt,
                      dm_err *err)
{
    const char *w0 = input_wkt(first);
    if (o->crs) {
        if (!(*wkt = crs_wkt(o->crs)))
            return dm_err_set(err, DM_EINVAL, "--crs %s: not a CRS GDAL/PROJ knows (try "
                              "EPSG:32631, an ESRI/OGC WKT or a PROJ string)", o->crs);
        return 0;
    }
    if (w0 && w0[0] && is_geographic(w0)) {
        char utm[32];
        utm_for(first, utm, sizeof utm);
        note(m, "the input CRS is geographic: warping to %s (square metric pixels, as the model "
                "saw)\n", utm);
        *wkt = crs_wkt(utm);
    } else {
        *wkt = strdup(w0 ? w0 : "");
    }
    return *wkt ? 0 : dm_err_oom(err);
}

int dm_mosaic_open(const dm_mosaic_opts *o, dm_mosaic **out, dm_err *err)
{
    *out = NULL;
    GDALAllRegister();
    if (o->n_inputs < 1 || o->n_inputs > MAX_INPUTS)
        return dm_err_set(err, DM_EINVAL, "need 1 to %d input rasters, got %d", MAX_INPUTS,
                          o->n_inputs);
    int n = o->n_inputs;
    dm_mosaic *m = calloc(1, sizeof *m);
    GDALDatasetH *src = calloc((size_t)n, sizeof *src);
    part *parts = calloc((size_t)n, sizeof *parts);
    int *warped = calloc((size_t)n, sizeof *warped);
    int rc = (!m || !src || !parts || !warped) ? dm_err_oom(err) : 0;
    int georef = 0, nwarped = 0;
    char *twkt = NULL;
    GDALDataType type = GDT_Byte;
    /* inputs are opened one at a time (a mosaic may have more than the open-file limit) */
    for (int i = 0; !rc && i < n; i++) {
        rc = open_input(m, o, i, &src[i], &georef, err);
        GDALDataType t = rc ? GDT_Byte : bands_type(src[i], o->bands);
        type = i == 0 || t == type ? t : GDT_Float32;
        if (i > 0 && src[i])
            GDALClose(src[i]), src[i] = NULL;
    }
    if (!rc && georef)
        rc = target_crs(m, o, src[0], &twkt, err);
    /* the grid: --gsd's, else the first input's (as it is, or as warped) */
    grid g = { 0 };
    if (!rc && georef && o->gsd > 0)
        g = (grid){ 1, 0, 0, o->gsd, -o->gsd };
    for (int i = 0; !rc && georef && i < n; i++) {
        double gt[6];
        if (!src[i] && (rc = open_src(m, o, i, 0, &src[i], err)))
            break;
        /* by GCPs only: no geotransform, so never on the grid (warped with its GCPs) */
        int same = GDALGetGeoTransform(src[i], gt) == CE_None &&
                   same_crs(twkt, GDALGetProjectionRef(src[i]));
        if (!g.set && same && gt[2] == 0 && gt[4] == 0 && gt[5] < 0 && gt[1] > 0)
            g = (grid){ 1, gt[0], gt[3], gt[1], gt[5] };
        const char *name = NULL;
        if (!(same && on_grid(&g, gt, &parts[i].col, &parts[i].row))) {
            int was = g.set;
            if (GDALGetGeoTransform(src[i], gt) == CE_None &&
                (gt[2] != 0 || gt[4] != 0 || gt[1] <= 0 || gt[5] >= 0))
                note(m, "%s: its geotransform is not north-up (rotated, sheared or flipped: "
                        "%g, %g, %g, %g, %g, %g): warped to a north-up grid (bilinear), as "
                        "gdalwarp does\n", o->inputs[i], gt[0], gt[1], gt[2], gt[3], gt[4], gt[5]);
            if ((rc = warp(m, src[i], twkt, &g, &name, err)))
                break;
            GDALDatasetH w = NULL;
            if ((rc = open_one(name, &w, err)))
                break;
            GDALGetGeoTransform(w, gt);
            if (!was) /* the first input, warped with gdalwarp's choice: its grid */
                g = (grid){ 1, gt[0], gt[3], gt[1], gt[5] };
            on_grid(&g, gt, &parts[i].col, &parts[i].row);
            rc = normalize(m, w, name, o->bands, type, &parts[i].name, &parts[i].all_valid, err);
            parts[i].w = GDALGetRasterXSize(w), parts[i].h = GDALGetRasterYSize(w);
            GDALClose(w);
            warped[i] = 1;
            nwarped++;
        } else {
            rc = normalize(m, src[i], GDALGetDescription(src[i]), o->bands, type, &parts[i].name,
                           &parts[i].all_valid, err);
            parts[i].w = GDALGetRasterXSize(src[i]), parts[i].h = GDALGetRasterYSize(src[i]);
        }
        if (i > 0)
            GDALClose(src[i]), src[i] = NULL;
    }
    if (!rc && !georef)
        rc = normalize(m, src[0], GDALGetDescription(src[0]), o->bands, type, &parts[0].name,
                       &parts[0].all_valid, err);
    if (!rc && nwarped && (n > 1 || o->gsd > 0 || o->crs))
        note(m, "%d of %d input%s warped onto the mosaic's grid (%.10g × %.10g CRS units; other "
                "CRS, pixel size or alignment), the rest read as they are\n", nwarped, n,
             n == 1 ? "" : "s", g.rx, -g.ry);
    /* the mosaic: the parts' union on the grid */
    const char *mname = parts[0].name;
    if (!rc && n > 1) {
        long c0 = parts[0].col, r0 = parts[0].row, c1 = c0 + parts[0].w, r1 = r0 + parts[0].h;
        for (int i = 1; i < n; i++) {
            c0 = parts[i].col < c0 ? parts[i].col : c0;
            r0 = parts[i].row < r0 ? parts[i].row : r0;
            c1 = parts[i].col + parts[i].w > c1 ? parts[i].col + parts[i].w : c1;
            r1 = parts[i].row + parts[i].h > r1 ? parts[i].row + parts[i].h : r1;
        }
        if (c1 - c0 > 2000000000L || r1 - r0 > 2000000000L)
            rc = dm_err_set(err, DM_EINVAL, "the inputs span %ld × %ld px: too large a mosaic "
                            "(inputs far apart, or in different places than meant?)", c1 - c0,
                            r1 - r0);
        double mgt[6] = { g.x0 + c0 * g.rx, g.rx, 0, g.y0 + r0 * g.ry, 0, g.ry };
        if (!rc)
            rc = mosaic_vrt(m, parts, n, (int)(c1 - c0), (int)(r1 - r0), mgt, c0, r0, twkt, type,
                            &mname, err);
    }
    if (!rc)
        rc = open_one(mname, &m->ds, err);
    if (!rc) {
        m->FW = m->W = GDALGetRasterXSize(m->ds);
        m->FH = m->H = GDALGetRasterYSize(m->ds);
        m->georef = GDALGetGeoTransform(m->ds, m->gt) == CE_None;
        if (!m->georef) { /* pixel coordinates, north-up like QGIS shows such rasters */
            double id[6] = { 0, 1, 0, 0, 0, -1 };
            memcpy(m->gt, id, sizeof id);
        }
        const char *w = GDALGetProjectionRef(m->ds);
        m->wkt = strdup(w ? w : "");
        for (int b = 0; b < 3; b++)
            m->band[b] = GDALGetRasterBand(m->ds, b + 1);
        m->alpha = GDALGetRasterBand(m->ds, 4);
        m->all_valid = n == 1 && parts[0].all_valid; /* a mosaic has gaps */
        m->type = type;
        rc = !m->wkt ? dm_err_oom(err) : choose_scaling(m, o, err);
        if (rc && rc != DM_ENOMEM) {
            char in[1024];
            dm_mosaic_inputs_label(o, in, sizeof in);
            dm_err_prefix(err, "%s", in);
        }
    }
    for (int i = 0; !rc && i < n; i++) {
        double gt[6] = { g.x0 + parts[i].col * g.rx, g.rx, 0, g.y0 + parts[i].row * g.ry, 0,
                         g.ry };
        if (!georef)
            memcpy(gt, m->gt, sizeof gt);
        /* the file itself (not its RGB expansion, when paletted) */
        if (src[i] && !strncmp(GDALGetDescription(src[i]), "/vsimem/dinomap_", 16))
            GDALClose(src[i]), src[i] = NULL;
        if (!src[i] && (rc = open_one(o->inputs[i], &src[i], err)))
            break;
        rc = dm_mosaic_add_fingerprints(m, src[i], o->inputs[i], gt, parts[i].w, parts[i].h,
                                        warped[i], err);
        if (i > 0)
            GDALClose(src[i]), src[i] = NULL;
    }
    for (int i = 0; src && i < n; i++)
        if (src[i])
            GDALClose(src[i]);
    free(src), free(parts), free(warped), free(twkt);
    if (rc) {
        dm_mosaic_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

int dm_mosaic_crop(dm_mosaic *m, int x0, int y0, int w, int h, dm_err *err)
{
    if (m->ox || m->oy || m->W != m->FW || m->H != m->FH || x0 < 0 || y0 < 0 || w < 1 || h < 1 ||
        x0 > m->W - w || y0 > m->H - h)
        return dm_err_set(err, DM_EINVAL, "mosaic window %d,%d %d×%d: not inside the %d×%d px "
                          "mosaic", x0, y0, w, h, m->W, m->H);
    m->ox = x0, m->oy = y0, m->W = w, m->H = h;
    m->gt[0] += x0 * m->gt[1] + y0 * m->gt[2];
    m->gt[3] += x0 * m->gt[4] + y0 * m->gt[5];
    for (int i = 0; i < m->nfp; i++)
        m->fp[i].x0 -= x0, m->fp[i].y0 -= y0;
    return 0;
}

void dm_mosaic_close(dm_mosaic *m)
{
    if (!m)
        return;
    if (m->ds)
        GDALClose(m->ds);
    for (int i = 0; i < m->nvsi; i++) {
        VSIUnlink(m->vsi[i]);
        free(m->vsi[i]);
    }
    free(m->vsi);
    free(m->wkt);
    free(m->fbuf);
    free(m->abuf);
    dm_input_fp_free(m->fp, m->nfp);
    free(m);
}

void dm_mosaic_size(const dm_mosaic *m, int *W, int *H)
{
    *W = m->W;
    *H = m->H;
}

void dm_mosaic_geotransform(const dm_mosaic *m, double gt[6]) { memcpy(gt, m->gt, 6 * sizeof *gt); }
const char *dm_mosaic_wkt(const dm_mosaic *m) { return m->wkt; }
int dm_mosaic_georeferenced(const dm_mosaic *m) { return m->georef && m->wkt[0]; }
const char *dm_mosaic_scaling(const dm_mosaic *m) { return m->scaling; }
const char *dm_mosaic_notes(const dm_mosaic *m) { return m->notes; }

void dm_mosaic_scale(const dm_mosaic *m, int *scaled, double *lo, double *hi)
{
    *scaled = m->scaled;
    *lo = m->lo;
    *hi = m->hi;
}

/* GDAL's message names the file and block; what it means for the user is said after it. */
static int read_fail(dm_err *err, int x, int y)
{
    return dm_err_set(err, DM_EIO, "reading pixels at (%d,%d): %s (is that file truncated or "
                      "damaged? gdalinfo -checksum reads all of it)", x, y, CPLGetLastErrorMsg());
}

int dm_mosaic_read(dm_mosaic *m, int x0, int y0, int w, int h, uint8_t *rgb, uint8_t *valid,
                   dm_err *err)
{
    size_t plane = (size_t)w * h;
    memset(rgb, 0, 3 * plane);
    memset(valid, 0, plane);
    x0 += m->ox, y0 += m->oy; /* a cropped mosaic reads its surroundings too */
    int ix0 = x0 < 0 ? 0 : x0, iy0 = y0 < 0 ? 0 : y0;
    int ix1 = x0 + w > m->FW ? m->FW : x0 + w, iy1 = y0 + h > m->FH ? m->FH : y0 + h;
    if (ix1 <= ix0 || iy1 <= iy0)
        return 0;
    int rw = ix1 - ix0, rh = iy1 - iy0;
    size_t off = (size_t)(iy0 - y0) * w + (ix0 - x0), need = (size_t)rw * rh;
    GSpacing line = w;
    /* validity first: the validity band (inside an input, not nodata, not masked, alpha > 0) */
    if (need > m->acap) {
        uint8_t *a = realloc(m->abuf, need);
        if (!a)
            return dm_err_oom(err);
        m->abuf = a;
        m->acap = need;
    }
    if (!m->all_valid &&
        GDALRasterIO(m->alpha, GF_Read, ix0, iy0, rw, rh, m->abuf, rw, rh, GDT_Byte, 0, 0) !=
            CE_None)
        return read_fail(err, ix0, iy0);
    for (int y = 0; y < rh; y++)
        for (int x = 0; x < rw; x++)
            valid[off + (size_t)y * w + x] = m->all_valid || m->abuf[(size_t)y * rw + x] != 0;
    for (int b = 0; b < 3; b++) {
        uint8_t *dst = rgb + b * plane + off;
        if (m->type == GDT_Byte) {
            if (GDALRasterIO(m->band[b], GF_Read, ix0, iy0, rw, rh, dst, rw, rh, GDT_Byte, 1,
                             line) != CE_None)
                return read_fail(err, ix0, iy0);
            continue;
        }
        if (need > m->fcap) {
            float *f = realloc(m->fbuf, need * sizeof *f);
            if (!f)
                return dm_err_oom(err);
            m->fbuf = f;
            m->fcap = need;
        }
        if (GDALRasterIO(m->band[b], GF_Read, ix0, iy0, rw, rh, m->fbuf, rw, rh, GDT_Float32, 0,
                         0) != CE_None)
            return read_fail(err, ix0, iy0);
        double k = 255.0 / (m->hi - m->lo);
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++) {
                float v = m->fbuf[(size_t)y * rw + x];
                if (isnan(v)) {
                    valid[off + (size_t)y * w + x] = 0;
                    continue;
                }
                double q = floor((v - m->lo) * k + 0.5);
                dst[(size_t)y * w + x] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
            }
    }
    for (size_t y = 0; y < (size_t)h; y++) /* invalid pixels carry no colour */
        for (size_t x = 0; x < (size_t)w; x++)
            if (!valid[y * w + x])
                rgb[y * w + x] = rgb[plane + y * w + x] = rgb[2 * plane + y * w + x] = 0;
    return 0;
}

/* gis/mosaic.c — the input mosaic (see gis.h). Everything stays virtual (VRTs in /vsimem) so reads
 * are windowed and memory does not grow with the mosaic. */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include <gdal.h>
#include <cpl_minixml.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <gdal_utils.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "gis.h"

#define MAX_INPUTS 4096

struct dm_mosaic {
    GDALDatasetH ds;          /* the mosaic every read goes to */
    GDALRasterBandH band[3], mask[3];
    int all_valid[3];
    int W, H;
    double gt[6];
    char *wkt;
    int georef;
    GDALDataType type;
    double lo, hi;            /* scaling to 8 bits (non-Byte input) */
    char scaling[160];
    char notes[1024];
    char vsi[MAX_INPUTS + 2][64]; /* /vsimem files to unlink */
    int nvsi;
    float *fbuf;              /* read buffer for non-Byte input */
    size_t fcap;
    int scaled;               /* lo..hi mapped to 0..255 (else 8-bit used as is) */
    dm_input_fp *fp;          /* the files read and their footprints */
    int nfp, capfp;
};

static void note(dm_mosaic *m, const char *fmt, const char *a, double x)
{
    size_t n = strlen(m->notes);
    snprintf(m->notes + n, sizeof m->notes - n, fmt, a, x);
}

static const char *vsi_name(dm_mosaic *m, const char *what)
{
    char *s = m->vsi[m->nvsi++];
    snprintf(s, 64, "/vsimem/dinomap_%p_%s_%d.vrt", (void *)m, what, m->nvsi);
    return s;
}

/* GDAL utility (warp / buildvrt) argument list helper */
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

/* "EPSG:326zz" / "EPSG:327zz" for the centre of the dataset (geographic coordinates) */
static void utm_for(GDALDatasetH ds, char *out, size_t n)
{
    double gt[6];
    GDALGetGeoTransform(ds, gt);
    double lon =
        gt[0] + gt[1] * GDALGetRasterXSize(ds) / 2.0 + gt[2] * GDALGetRasterYSize(ds) / 2.0;
    double lat =
        gt[3] + gt[4] * GDALGetRasterXSize(ds) / 2.0 + gt[5] * GDALGetRasterYSize(ds) / 2.0;
    /* axis order of a geographic CRS in a GeoTIFF geotransform is lon, lat */
    int zone = (int)floor((lon + 180.0) / 6.0) + 1;
    zone = zone < 1 ? 1 : zone > 60 ? 60 : zone;
    snprintf(out, n, "EPSG:%d", (lat >= 0 ? 32600 : 32700) + zone);
}

static int warp(dm_mosaic *m, GDALDatasetH src, const char *crs, double gsd, GDALDatasetH *out,
                dm_err *err)
{
    char **a = NULL;
    char buf[64];
    a = args(a, "-of"), a = args(a, "VRT");
    if (crs)
        a = args(a, "-t_srs"), a = args(a, crs);
    if (gsd > 0) {
        snprintf(buf, sizeof buf, "%.17g", gsd);
        a = args(a, "-tr"), a = args(a, buf), a = args(a, buf), a = args(a, "-tap");
    }
    a = args(a, "-r"), a = args(a, "bilinear");
    a = args(a, "-dstalpha"); /* the area outside the source becomes invalid, not black */
    GDALWarpAppOptions *wo = GDALWarpAppOptionsNew(a, NULL);
    CSLDestroy(a);
    int usage = 0;
    const char *name = vsi_name(m, "warp");
    GDALDatasetH d = wo ? GDALWarp(name, NULL, 1, &src, wo, &usage) : NULL;
    GDALWarpAppOptionsFree(wo);
    if (!d)
        return dm_err_set(err, DM_EINVAL, "cannot warp %s to %s: %s", GDALGetDescription(src),
                          crs ? crs : "its own CRS", CPLGetLastErrorMsg());
    *out = d;
    return 0;
}

static int percentiles(dm_mosaic *m, double p1, double p2, dm_err *err)
{
    double lo = INFINITY, hi = -INFINITY;
    for (int b = 0; b < 3; b++) {
        double mn, mx, mean, sd;
        if (GDALComputeRasterStatistics(m->band[b], TRUE, &mn, &mx, &mean, &sd, NULL, NULL) !=
            CE_None)
            return dm_err_set(err, DM_EIO, "cannot compute statistics of the mosaic: %s",
                              CPLGetLastErrorMsg());
        lo = mn < lo ? mn : lo;
        hi = mx > hi ? mx : hi;
    }
    enum { NB = 4096 };
    GUIntBig *hist = calloc(NB, sizeof *hist), *sum = calloc(NB, sizeof *sum);
    if (!hist || !sum) {
        free(hist), free(sum);
        return dm_err_oom(err);
    }
    double step = hi > lo ? (hi - lo) / NB : 1.0;
    int rc = 0;
    for (int b = 0; b < 3 && !rc; b++) {
        if (GDALGetRasterHistogramEx(m->band[b], lo, lo + step * NB, NB, hist, FALSE, TRUE, NULL,
                                     NULL) != CE_None)
            rc = dm_err_set(err, DM_EIO, "cannot compute a histogram of the mosaic: %s",
                            CPLGetLastErrorMsg());
        for (int i = 0; i < NB; i++)
            sum[i] += hist[i];
    }
    GUIntBig total = 0, acc = 0;
    for (int i = 0; i < NB; i++)
        total += sum[i];
    double v1 = lo, v2 = hi;
    int got1 = 0;
    for (int i = 0; i < NB && total; i++) {
        acc += sum[i];
        if (!got1 && (double)acc >= p1 / 100.0 * (double)total) {
            v1 = lo + step * i;
            got1 = 1;
        }
        if ((double)acc >= p2 / 100.0 * (double)total) {
            v2 = lo + step * (i + 1);
            break;
        }
    }
    free(hist), free(sum);
    if (rc)
        return rc;
    m->lo = v1;
    m->hi = v2 > v1 ? v2 : v1 + 1;
    snprintf(m->scaling, sizeof m->scaling, "stretch %g-%g percentiles of the mosaic: %g..%g", p1,
             p2, m->lo, m->hi);
    return 0;
}

/* --- what a rerun compares: the files read, and where they go in the mosaic ------------------ */

void dm_input_fp_free(dm_input_fp *fp, int n)
{
    for (int i = 0; fp && i < n; i++)
        free(fp[i].path);
    free(fp);
}

/* A 63-bit FNV-1a hash of an XML tree's text (kept in an input fingerprint's mtime field). */
static uint64_t tree_hash(const CPLXMLNode *root)
{
    char *text = CPLSerializeXMLTree(root);
    uint64_t h = 1469598103934665603ULL;
    for (const char *t = text; t && *t; t++)
        h = (h ^ (unsigned char)*t) * 1099511628211ULL;
    CPLFree(text);
    return h & 0x7fffffffffffffffULL;
}

/* Drops what changes no pixel from a PAM tree: STATISTICS_* metadata items and histograms (what
 * gdalinfo -stats and QGIS write beside rasters), then elements left empty. */
static void strip_stats(CPLXMLNode *n)
{
    for (CPLXMLNode *c = n->psChild, *next; c; c = next) {
        next = c->psNext;
        if (c->eType != CXT_Element)
            continue;
        int drop = !strcmp(c->pszValue, "Histograms");
        if (!strcmp(c->pszValue, "MDI")) {
            const char *key = CPLGetXMLValue(c, "key", "");
            drop = !strncmp(key, "STATISTICS_", 11);
        }
        if (!drop) {
            strip_stats(c);
            int kids = 0; /* elements or text left (attributes alone do not count) */
            for (CPLXMLNode *k = c->psChild; k; k = k->psNext)
                kids += k->eType != CXT_Attribute;
            drop = !kids;
        }
        if (drop) {
            CPLRemoveXMLChild(n, c);
            CPLDestroyXMLNode(c);
        }
    }
}

/* A .aux.xml sidecar by what it says that changes pixels (nodata, georeferencing...): 0 with its
 * hash, or 1 when it holds nothing of that (statistics only): then it is not watched. */
static int aux_shape(const char *path, uint64_t *hash)
{
    CPLXMLNode *root = CPLParseXMLFile(path);
    if (!root)
        return 0; /* unreadable: watched by size and time */
    strip_stats(root);
    int empty = 1;
    for (CPLXMLNode *c = root; c; c = c->psNext)
        if (c->eType == CXT_Element && c->psChild)
            for (CPLXMLNode *k = c->psChild; k; k = k->psNext)
                empty &= k->eType == CXT_Attribute;
    *hash = tree_hash(root);
    CPLDestroyXMLNode(root);
    return empty;
}

/* Adds a file with its footprint in mosaic pixels (from a rectangle in georeferenced units),
 * clipped to the mosaic; identical entries (the same source in several bands) once. A .aux.xml
 * counts by its content without statistics (size -2, the hash in mtime_ns). */
static int add_fp(dm_mosaic *m, const char *file, double gx0, double gy0, double gx1, double gy1,
                  dm_err *err)
{
    size_t flen = strlen(file);
    uint64_t aux_hash = 0;
    int is_aux = flen > 8 && !strcasecmp(file + flen - 8, ".aux.xml");
    if (is_aux && aux_shape(file, &aux_hash))
        return 0;
    double a = (gx0 - m->gt[0]) / m->gt[1], b = (gx1 - m->gt[0]) / m->gt[1];
    double c = (gy0 - m->gt[3]) / m->gt[5], d = (gy1 - m->gt[3]) / m->gt[5];
    int x0 = (int)floor(fmin(a, b) + 1e-6), x1 = (int)ceil(fmax(a, b) - 1e-6);
    int y0 = (int)floor(fmin(c, d) + 1e-6), y1 = (int)ceil(fmax(c, d) - 1e-6);
    x0 = x0 < 0 ? 0 : x0, y0 = y0 < 0 ? 0 : y0;
    x1 = x1 > m->W ? m->W : x1, y1 = y1 > m->H ? m->H : y1;
    if (x1 <= x0 || y1 <= y0)
        x0 = y0 = x1 = y1 = 0; /* outside the mosaic: feeds nothing, still watched */
    char real[4096];
    const char *key = realpath(file, real) ? real : file;
    for (int i = m->nfp - 1; i >= 0 && i >= m->nfp - 8; i--) /* repeats come close together */
        if (m->fp[i].x0 == x0 && m->fp[i].y0 == y0 && m->fp[i].w == x1 - x0 &&
            m->fp[i].h == y1 - y0 && !strcmp(m->fp[i].path, key))
            return 0;
    if (m->nfp == m->capfp) {
        int cap = m->capfp ? 2 * m->capfp : 16;
        dm_input_fp *p = realloc(m->fp, sizeof *p * (size_t)cap);
        if (!p)
            return dm_err_oom(err);
        m->fp = p;
        m->capfp = cap;
    }
    dm_input_fp *f = &m->fp[m->nfp];
    if (!(f->path = strdup(key)))
        return dm_err_oom(err);
    VSIStatBufL st;
    if (VSIStatExL(key, &st, VSI_STAT_EXISTS_FLAG | VSI_STAT_SIZE_FLAG) == 0 &&
        !strncmp(key, "/", 1)) {
        struct stat ls;
        f->size = (int64_t)st.st_size;
        f->mtime_ns = stat(key, &ls) == 0
                          ? (int64_t)ls.st_mtim.tv_sec * 1000000000 + ls.st_mtim.tv_nsec
                          : (int64_t)st.st_mtime * 1000000000;
    } else {
        f->size = f->mtime_ns = -1;
    }
    if (is_aux)
        f->size = -2, f->mtime_ns = (int64_t)aux_hash;
    f->x0 = x0, f->y0 = y0, f->w = x1 - x0, f->h = y1 - y0;
    m->nfp++;
    return 0;
}

/* A file's mask and metadata sidecars change what is read from it: watched with its footprint. */
static int add_sidecars(dm_mosaic *m, const char *file, double x0, double y0, double x1,
                        double y1, dm_err *err)
{
    static const char *ext[] = { ".msk", ".aux.xml" };
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s%s", file, ext[i]);
        VSIStatBufL st;
        if (VSIStatExL(p, &st, VSI_STAT_EXISTS_FLAG) == 0)
            rc = add_fp(m, p, x0, y0, x1, y1, err);
    }
    return rc;
}

/* The sources of a VRT file, each with its destination rectangle (a nested VRT's files all with
 * its rectangle), so that a mosaic of many files redoes only what a changed file feeds; and a
 * hash of the VRT without the sources' file names nor statistics (its grid, bands, nodata, each
 * source's band, windows, scaling and order: a change there redoes the whole VRT).
 * 0 and *n sources found (0 when it is no plain VRT). */
static int vrt_sources(dm_mosaic *m, const char *vrt, const double gt[6], int *n,
                       uint64_t *shape, dm_err *err)
{
    *n = 0;
    *shape = 0;
    CPLXMLNode *root = CPLParseXMLFile(vrt);
    if (!root)
        return 0;
    CPLXMLNode *ds = CPLGetXMLNode(root, "=VRTDataset");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", CPLGetPath(vrt));
    int rc = 0;
    for (CPLXMLNode *b = ds ? ds->psChild : NULL; !rc && b; b = b->psNext) {
        if (b->eType != CXT_Element || strcmp(b->pszValue, "VRTRasterBand"))
            continue;
        for (CPLXMLNode *s = b->psChild; !rc && s; s = s->psNext) {
            if (s->eType != CXT_Element || !strstr(s->pszValue, "Source"))
                continue;
            const char *fn = CPLGetXMLValue(s, "SourceFilename", NULL);
            CPLXMLNode *dr = CPLGetXMLNode(s, "DstRect");
            char file[4096] = "";
            if (fn) {
                int rel = atoi(CPLGetXMLValue(s, "SourceFilename.relativeToVRT", "0"));
                snprintf(file, sizeof file, "%s", rel ? CPLFormFilename(dir, fn, NULL) : fn);
            }
            if (fn && !dr) { /* no destination window: the source fills the whole VRT */
                int w = atoi(CPLGetXMLValue(ds, "rasterXSize", "0")),
                    h = atoi(CPLGetXMLValue(ds, "rasterYSize", "0"));
                rc = add_fp(m, file, gt[0], gt[3], gt[0] + w * gt[1], gt[3] + h * gt[5], err);
                (*n)++;
            }
            if (fn && dr) {
                double x = CPLAtof(CPLGetXMLValue(dr, "xOff", "0")),
                       y = CPLAtof(CPLGetXMLValue(dr, "yOff", "0")),
                       w = CPLAtof(CPLGetXMLValue(dr, "xSize", "0")),
                       h = CPLAtof(CPLGetXMLValue(dr, "ySize", "0"));
                double x0 = gt[0] + x * gt[1], y0 = gt[3] + y * gt[5];
                double x1 = gt[0] + (x + w) * gt[1], y1 = gt[3] + (y + h) * gt[5];
                rc = add_fp(m, file, x0, y0, x1, y1, err);
                if (!rc)
                    rc = add_sidecars(m, file, x0, y0, x1, y1, err);
                size_t len = strlen(file);
                if (!rc && len > 4 && !strcasecmp(file + len - 4, ".vrt")) {
                    CPLPushErrorHandler(CPLQuietErrorHandler);
                    GDALDatasetH nd = GDALOpen(file, GA_ReadOnly);
                    CPLPopErrorHandler();
                    char **files = nd ? GDALGetFileList(nd) : NULL;
                    for (int i = 0; !rc && files && files[i]; i++)
                        rc = add_fp(m, files[i], x0, y0, x1, y1, err);
                    CSLDestroy(files);
                    if (nd)
                        GDALClose(nd);
                }
                (*n)++;
            }
            /* the source stays in the VRT's shape without its file's name: its band, windows,
             * scaling, nodata and order count; the file itself is watched by its own entry */
            CPLSetXMLValue(s, "SourceFilename", "");
        }
        /* statistics GDAL writes into a VRT (gdalinfo -stats) change no pixel */
        CPLXMLNode *md;
        while ((md = CPLGetXMLNode(b, "Metadata")))
            CPLRemoveXMLChild(b, md), CPLDestroyXMLNode(md);
        while ((md = CPLGetXMLNode(b, "Histograms")))
            CPLRemoveXMLChild(b, md), CPLDestroyXMLNode(md);
    }
    *shape = tree_hash(root);
    CPLDestroyXMLNode(root);
    return rc;
}

/* Every file of input `path` (GDAL's file list: the raster, its sidecars, a VRT's sources) with
 * the part of the mosaic it feeds: the input's footprint, or a VRT source's own rectangle. */
static int add_fingerprints(dm_mosaic *m, GDALDatasetH src, const char *path, const double gt[6],
                            int w, int h, int warped, dm_err *err)
{
    double x0 = gt[0], x1 = gt[0] + w * gt[1] + h * gt[2];
    double y0 = gt[3], y1 = gt[3] + w * gt[4] + h * gt[5];
    if (!m->georef) { /* pixel coordinates: every input covers the mosaic */
        x0 = m->gt[0], x1 = m->gt[0] + m->W * m->gt[1];
        y0 = m->gt[3], y1 = m->gt[3] + m->H * m->gt[5];
    }
    int nsrc = 0, rc = 0;
    uint64_t shape = 0;
    const char *drv = GDALGetDriverShortName(GDALGetDatasetDriver(src));
    if (!warped && m->georef && drv && !strcmp(drv, "VRT"))
        rc = vrt_sources(m, path, gt, &nsrc, &shape, err);
    if (rc)
        return rc;
    if (nsrc) { /* the VRT itself by its shape: regenerated with the same layout, it is unchanged */
        int before = m->nfp;
        rc = add_fp(m, path, x0, y0, x1, y1, err);
        if (!rc && m->nfp > before)
            m->fp[m->nfp - 1].size = -2, m->fp[m->nfp - 1].mtime_ns = (int64_t)shape;
        return rc;
    }
    rc = add_fp(m, path, x0, y0, x1, y1, err);
    char **files = GDALGetFileList(src);
    for (int i = 0; !rc && files && files[i]; i++)
        if (strcmp(files[i], path))
            rc = add_fp(m, files[i], x0, y0, x1, y1, err);
    CSLDestroy(files);
    return rc;
}

int dm_mosaic_fingerprints(const dm_mosaic *m, dm_input_fp **fp, int *n, dm_err *err)
{
    *fp = NULL;
    *n = 0;
    if (!m->nfp)
        return 0;
    dm_input_fp *c = calloc((size_t)m->nfp, sizeof *c);
    if (!c)
        return dm_err_oom(err);
    for (int i = 0; i < m->nfp; i++) {
        c[i] = m->fp[i];
        if (!(c[i].path = strdup(m->fp[i].path))) {
            dm_input_fp_free(c, i);
            return dm_err_oom(err);
        }
    }
    *fp = c;
    *n = m->nfp;
    return 0;
}

static int open_one(const char *path, GDALDatasetH *out, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY | GDAL_OF_VERBOSE_ERROR,
                                NULL, NULL, NULL);
    CPLPopErrorHandler();
    if (!d)
        return dm_err_set(err, DM_EFORMAT, "%s: not a raster GDAL can open (%s)", path,
                          CPLGetLastErrorMsg()[0] ? CPLGetLastErrorMsg() : "unknown format");
    *out = d;
    return 0;
}

int dm_mosaic_open(const dm_mosaic_opts *o, dm_mosaic **out, dm_err *err)
{
    *out = NULL;
    GDALAllRegister();
    if (o->n_inputs < 1 || o->n_inputs > MAX_INPUTS)
        return dm_err_set(err, DM_EINVAL, "need 1 to %d input rasters, got %d", MAX_INPUTS,
                          o->n_inputs);
    dm_mosaic *m = calloc(1, sizeof *m);
    GDALDatasetH *src = calloc((size_t)o->n_inputs, sizeof *src);
    char (*names)[64] = calloc((size_t)o->n_inputs, 64);
    const char **paths = calloc((size_t)o->n_inputs + 1, sizeof *paths);
    double(*igt)[6] = calloc((size_t)o->n_inputs, sizeof *igt); /* each input as mosaicked */
    int *isz = calloc(2 * (size_t)o->n_inputs, sizeof *isz), *iwarp = calloc((size_t)o->n_inputs,
                                                                            sizeof *iwarp);
    int rc = (!m || !src || !names || !paths || !igt || !isz || !iwarp) ? dm_err_oom(err) : 0;
    char target[64] = "";
    const char *crs = o->crs;
    char *wkt0 = NULL;
    for (int i = 0; !rc && i < o->n_inputs; i++) {
        rc = open_one(o->inputs[i], &src[i], err);
        if (rc)
            break;
        int nb = GDALGetRasterCount(src[i]);
        for (int b = 0; b < 3 && !rc; b++)
            if (o->bands[b] < 1 || o->bands[b] > nb)
                rc = dm_err_set(err, DM_EINVAL, "%s: has %d band%s; --bands %d,%d,%d asks for band "
                                "%d", o->inputs[i], nb, nb == 1 ? "" : "s", o->bands[0],
                                o->bands[1], o->bands[2], o->bands[b]);
        double gt[6];
        const char *w = GDALGetProjectionRef(src[i]);
        int has_gt = GDALGetGeoTransform(src[i], gt) == CE_None;
        if (!rc && (!has_gt || !w || !w[0]) && !o->allow_ungeoreferenced)
            rc = dm_err_set(err, DM_EINVAL, "%s: has no georeferencing (%s); outputs could not be "
                            "placed on a map. Georeference it first (e.g. gdal_translate -a_srs "
                            "... -a_ullr ...), or pass --allow-ungeoreferenced to map it in pixel "
                            "coordinates", o->inputs[i], has_gt ? "no CRS" : "no geotransform");
        if (!rc && i == 0)
            wkt0 = strdup(w ? w : "");
        paths[i] = o->inputs[i];
        if (!rc) {
            memcpy(igt[i], gt, sizeof gt);
            isz[2 * i] = GDALGetRasterXSize(src[i]);
            isz[2 * i + 1] = GDALGetRasterYSize(src[i]);
        }
    }
    /* target CRS: --crs, else the first input's; geographic → its UTM zone */
    if (!rc && !crs && wkt0 && wkt0[0] && is_geographic(wkt0)) {
        utm_for(src[0], target, sizeof target);
        crs = target;
        note(m, "the input CRS is geographic: warping to %s (square metric pixels, as the model "
                "saw)%.0f\n", target, 0);
    }
    int need_warp = crs || o->gsd > 0;
    for (int i = 0; !rc && !need_warp && i < o->n_inputs; i++) {
        double gt[6];
        if (GDALGetGeoTransform(src[i], gt) == CE_None && (gt[2] != 0 || gt[4] != 0 || gt[5] > 0))
            need_warp = 1; /* rotated or south-up: make it north-up */
        if (i > 0 && !same_crs(wkt0, GDALGetProjectionRef(src[i])))
            need_warp = 1;
    }
    if (!rc && need_warp) {
        for (int i = 0; !rc && i < o->n_inputs; i++) {
            GDALDatasetH w = NULL;
            rc = warp(m, src[i], crs ? crs : wkt0, o->gsd, &w, err);
            if (!rc) {
                snprintf(names[i], 64, "%s", m->vsi[m->nvsi - 1]);
                paths[i] = names[i];
                GDALGetGeoTransform(w, igt[i]);
                isz[2 * i] = GDALGetRasterXSize(w);
                isz[2 * i + 1] = GDALGetRasterYSize(w);
                iwarp[i] = 1;
                GDALClose(w);
            }
        }
        if (!rc && o->gsd > 0)
            note(m, "warped to a %s pixel size of %g\n", "", o->gsd);
    }
    if (!rc) {
        if (o->n_inputs == 1 && !need_warp) {
            m->ds = src[0];
            src[0] = NULL;
        } else {
            char **a = NULL;
            if (o->n_inputs > 1)
                a = args(a, "-addalpha"); /* gaps between inputs are invalid, not black */
            GDALBuildVRTOptions *bo = GDALBuildVRTOptionsNew(a, NULL);
            CSLDestroy(a);
            int usage = 0;
            CPLPushErrorHandler(CPLQuietErrorHandler);
            m->ds = bo ? GDALBuildVRT(vsi_name(m, "mosaic"), o->n_inputs, NULL, paths, bo, &usage)
                       : NULL;
            CPLPopErrorHandler();
            GDALBuildVRTOptionsFree(bo);
            if (!m->ds)
                rc = dm_err_set(err, DM_EFORMAT, "cannot build a mosaic of the inputs: %s",
                                CPLGetLastErrorMsg());
        }
    }
    if (!rc) {
        m->W = GDALGetRasterXSize(m->ds);
        m->H = GDALGetRasterYSize(m->ds);
        m->georef = GDALGetGeoTransform(m->ds, m->gt) == CE_None;
        if (!m->georef) { /* pixel coordinates, north-up like QGIS shows such rasters */
            double id[6] = { 0, 1, 0, 0, 0, -1 };
            memcpy(m->gt, id, sizeof id);
        }
        const char *w = GDALGetProjectionRef(m->ds);
        m->wkt = strdup(w ? w : "");
        for (int b = 0; b < 3; b++) {
            m->band[b] = GDALGetRasterBand(m->ds, o->bands[b]);
            m->mask[b] = GDALGetMaskBand(m->band[b]);
            m->all_valid[b] = GDALGetMaskFlags(m->band[b]) == GMF_ALL_VALID;
        }
        m->type = GDALGetRasterDataType(m->band[0]);
        for (int b = 1; b < 3; b++)
            if (GDALGetRasterDataType(m->band[b]) != GDT_Byte)
                m->type = GDALGetRasterDataType(m->band[b]);
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
            if (m->type == GDT_Byte)
                m->type = GDT_Float32; /* scale even 8-bit input when asked */
        } else if (m->type != GDT_Byte) {
            double p1 = o->stretch_set ? o->p1 : 2, p2 = o->stretch_set ? o->p2 : 98;
            if (!o->stretch_set)
                note(m, "input is %s, not 8-bit: stretching its 2-98 percentiles to 0..255 "
                        "(--scale or --stretch to choose)%.0f\n",
                     GDALGetDataTypeName(m->type), 0);
            rc = percentiles(m, p1, p2, err);
            m->type = GDT_Float32;
        } else if (o->stretch_set) {
            rc = percentiles(m, o->p1, o->p2, err);
            m->type = GDT_Float32;
        } else {
            snprintf(m->scaling, sizeof m->scaling, "8-bit input used as is");
        }
    }
    if (!rc)
        m->scaled = m->type != GDT_Byte;
    for (int i = 0; !rc && i < o->n_inputs; i++)
        rc = add_fingerprints(m, src[i] ? src[i] : m->ds, o->inputs[i], igt[i], isz[2 * i],
                              isz[2 * i + 1], iwarp[i], err);
    for (int i = 0; src && i < o->n_inputs; i++)
        if (src[i])
            GDALClose(src[i]);
    free(src), free(names), free(paths), free(wkt0), free(igt), free(isz), free(iwarp);
    if (rc) {
        dm_mosaic_close(m);
        return rc;
    }
    *out = m;
    return 0;
}

void dm_mosaic_close(dm_mosaic *m)
{
    if (!m)
        return;
    if (m->ds)
        GDALClose(m->ds);
    for (int i = 0; i < m->nvsi; i++)
        VSIUnlink(m->vsi[i]);
    free(m->wkt);
    free(m->fbuf);
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

int dm_mosaic_read(dm_mosaic *m, int x0, int y0, int w, int h, uint8_t *rgb, uint8_t *valid,
                   dm_err *err)
{
    size_t plane = (size_t)w * h;
    memset(rgb, 0, 3 * plane);
    memset(valid, 0, plane);
    int ix0 = x0 < 0 ? 0 : x0, iy0 = y0 < 0 ? 0 : y0;
    int ix1 = x0 + w > m->W ? m->W : x0 + w, iy1 = y0 + h > m->H ? m->H : y0 + h;
    if (ix1 <= ix0 || iy1 <= iy0)
        return 0;
    int rw = ix1 - ix0, rh = iy1 - iy0;
    size_t off = (size_t)(iy0 - y0) * w + (ix0 - x0);
    GSpacing line = w;
    /* validity first: inside the raster, then every selected band's mask */
    for (int y = 0; y < rh; y++)
        memset(valid + off + (size_t)y * w, 1, (size_t)rw);
    uint8_t *mbuf = NULL;
    for (int b = 0; b < 3; b++) {
        if (m->all_valid[b])
            continue;
        if (!mbuf && !(mbuf = malloc((size_t)rw * rh)))
            return dm_err_oom(err);
        if (GDALRasterIO(m->mask[b], GF_Read, ix0, iy0, rw, rh, mbuf, rw, rh, GDT_Byte, 0, 0) !=
            CE_None) {
            free(mbuf);
            return dm_err_set(err, DM_EIO, "reading the mask at (%d,%d): %s", ix0, iy0,
                              CPLGetLastErrorMsg());
        }
        for (int y = 0; y < rh; y++)
            for (int x = 0; x < rw; x++)
                if (!mbuf[(size_t)y * rw + x])
                    valid[off + (size_t)y * w + x] = 0;
    }
    free(mbuf);
    for (int b = 0; b < 3; b++) {
        uint8_t *dst = rgb + b * plane + off;
        if (m->type == GDT_Byte) {
            if (GDALRasterIO(m->band[b], GF_Read, ix0, iy0, rw, rh, dst, rw, rh, GDT_Byte, 1,
                             line) != CE_None)
                return dm_err_set(err, DM_EIO, "reading pixels at (%d,%d): %s", ix0, iy0,
                                  CPLGetLastErrorMsg());
            continue;
        }
        size_t need = (size_t)rw * rh;
        if (need > m->fcap) {
            float *f = realloc(m->fbuf, need * sizeof *f);
            if (!f)
                return dm_err_oom(err);
            m->fbuf = f;
            m->fcap = need;
        }
        if (GDALRasterIO(m->band[b], GF_Read, ix0, iy0, rw, rh, m->fbuf, rw, rh, GDT_Float32, 0,
                         0) != CE_None)
            return dm_err_set(err, DM_EIO, "reading pixels at (%d,%d): %s", ix0, iy0,
                              CPLGetLastErrorMsg());
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

/* gis/mosaic_fp.c — what a rerun compares (see gis.h, dm_input_fp): every file the mosaic reads,
 * with the part of the mosaic it feeds, so that a changed file redoes only its chunks. */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include <gdal.h>
#include <cpl_minixml.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "mosaic_internal.h"

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
int dm_mosaic_add_fingerprints(dm_mosaic *m, GDALDatasetH src, const char *path,
                               const double gt[6], int w, int h, int warped, dm_err *err)
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

/* gis/features_in.c — feature rasters read back (for similarity and change maps): a dinomap
 * features output (features.tif, or the features.vrt over its blocks; float32 with NaN nodata, or
 * int8 bytes with a GDAL scale and offset per band and nodata 0) or a run's chunk file, read by
 * groups of bands as real values, on its own grid or warped onto another one (GDAL's warper, one
 * warped VRT per group of bands); CRSs compared and named; query points moved between CRSs with
 * PROJ, x (longitude) first whatever the CRS's official axis order. See gis.h. */
#include "srs_internal.h"
#include <cpl_conv.h>
#include <errno.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <gdal.h>
#include <gdal_alg.h>
#include <gdalwarper.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gis.h"

struct dm_gis_feat {
    GDALDatasetH d;
    int w, h, bands, block;
    double gt[6];
    char *wkt;
    char **meta;          /* DINOMAP_* items, "KEY=VALUE" */
    double *scale, *offset, *nodata;
    int *has_nodata, decode;
    /* warped (dm_gis_feat_warp): src's bands seen on this grid, through one warped VRT per group
     * of `group` bands (made when first read); d is NULL */
    dm_gis_feat *src;
    GDALDatasetH *grp;
    int group, ngroups, nearest;
};

void dm_gis_feat_close(dm_gis_feat *f)
{
    if (!f)
        return;
    for (int i = 0; f->grp && i < f->ngroups; i++)
        if (f->grp[i])
            GDALClose(f->grp[i]); /* before src: each holds a reference to its dataset */
    free(f->grp);
    dm_gis_feat_close(f->src);
    if (f->d)
        GDALClose(f->d);
    free(f->wkt), free(f->scale), free(f->offset), free(f->nodata), free(f->has_nodata);
    CSLDestroy(f->meta);
    free(f);
}

/* A folder: the features in it (the blocks' VRT first: it is what the run wrote when the output
 * was too large for one COG). */
static void resolve(const char *path, char *out, size_t n)
{
    struct stat st;
    snprintf(out, n, "%s", path);
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return;
    snprintf(out, n, "%s/features.vrt", path);
    if (stat(out, &st) == 0)
        return;
    snprintf(out, n, "%s/features.tif", path);
}

int dm_gis_feat_open(const char *path, const char *product, dm_gis_feat **out, dm_err *err)
{
    *out = NULL;
    GDALAllRegister();
    char p[4200];
    resolve(path, p, sizeof p);
    struct stat st;
    if (strcmp(p, path) && stat(p, &st) != 0)
        return dm_err_set(err, DM_EINVAL, "%s: a folder without features.tif or features.vrt; "
                          "give a dinomap features output (its folder or the file)", path);
    if (strncmp(p, "/vsi", 4) && stat(p, &st) != 0)
        return dm_err_set(err, DM_EIO, "%s: %s", p, strerror(errno));
    dm_gis_feat *f = calloc(1, sizeof *f);
    if (!f)
        return dm_err_oom(err);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    f->d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CPLPopErrorHandler();
    int rc = 0;
    if (!f->d)
        rc = dm_err_set(err, DM_EIO, "%s: cannot open: %s", p, dm_gdal_msg());
    const char *prod = rc ? NULL : GDALGetMetadataItem(f->d, "DINOMAP_PRODUCT", NULL);
    if (!rc && product && (!prod || strcmp(prod, product)))
        rc = dm_err_set(err, DM_EINVAL, "%s is not a dinomap %s raster (%s%s); give the "
                        "features.tif (or features.vrt) of a dinomap features run", p, product,
                        prod ? "it is DINOMAP_PRODUCT=" : "no DINOMAP_PRODUCT in its metadata",
                        prod ? prod : "");
    if (!rc) {
        f->w = GDALGetRasterXSize(f->d), f->h = GDALGetRasterYSize(f->d);
        f->bands = GDALGetRasterCount(f->d);
        if (f->bands < 1)
            rc = dm_err_set(err, DM_EINVAL, "%s: has no bands", p);
    }
    if (!rc && GDALGetGeoTransform(f->d, f->gt) != CE_None) {
        static const double id[6] = { 0, 1, 0, 0, 0, 1 };
        memcpy(f->gt, id, sizeof id);
    }
    if (!rc && (f->gt[2] != 0 || f->gt[4] != 0))
        rc = dm_err_set(err, DM_EINVAL, "%s: a rotated raster; dinomap's are north-up", p);
    if (!rc) {
        const char *w = GDALGetProjectionRef(f->d);
        f->wkt = strdup(w ? w : "");
        f->scale = calloc((size_t)f->bands, sizeof *f->scale);
        f->offset = calloc((size_t)f->bands, sizeof *f->offset);
        f->nodata = calloc((size_t)f->bands, sizeof *f->nodata);
        f->has_nodata = calloc((size_t)f->bands, sizeof *f->has_nodata);
        if (!f->wkt || !f->scale || !f->offset || !f->nodata || !f->has_nodata)
            rc = dm_err_oom(err);
    }
    for (int b = 0; !rc && b < f->bands; b++) {
        GDALRasterBandH h = GDALGetRasterBand(f->d, b + 1);
        int ok = 0;
        f->scale[b] = GDALGetRasterScale(h, &ok);
        if (!ok)
            f->scale[b] = 1;
        f->offset[b] = GDALGetRasterOffset(h, &ok);
        if (!ok)
            f->offset[b] = 0;
        f->nodata[b] = GDALGetRasterNoDataValue(h, &f->has_nodata[b]);
        f->decode |= f->scale[b] != 1 || f->offset[b] != 0;
        if (b == 0) {
            int bx = 0, by = 0;
            GDALGetBlockSize(h, &bx, &by);
            f->block = bx < 64 ? 64 : bx > 1024 ? 1024 : bx;
        }
    }
    char **md = rc ? NULL : GDALGetMetadata(f->d, NULL);
    for (int i = 0; md && md[i]; i++)
        if (!strncmp(md[i], "DINOMAP_", 8))
            f->meta = CSLAddString(f->meta, md[i]);
    if (rc) {
        dm_gis_feat_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void dm_gis_feat_info(const dm_gis_feat *f, int *w, int *h, int *bands, double gt[6],
                      const char **wkt, int *block)
{
    *w = f->w, *h = f->h, *bands = f->bands;
    memcpy(gt, f->gt, sizeof f->gt);
    *wkt = f->wkt;
    *block = f->block;
}

int dm_gis_feat_int8(const dm_gis_feat *f)
{
    const dm_gis_feat *r = f->src ? f->src : f; /* warped: its source's samples */
    return GDALGetRasterDataType(GDALGetRasterBand(r->d, 1)) == GDT_Byte;
}

const char *dm_gis_feat_meta(const dm_gis_feat *f, const char *key)
{
    return CSLFetchNameValue(f->meta, key);
}

const char *const *dm_gis_feat_meta_list(const dm_gis_feat *f)
{
    return (const char *const *)f->meta;
}

/* Bands first..first+nb-1 (1-based) of d's window into buf [nb, h, w] as float32, unchanged. */
static int read_raw(GDALDatasetH d, int first, int nb, int x, int y, int w, int h, float *buf,
                    dm_err *err)
{
    int *list = malloc(sizeof *list * (size_t)nb);
    if (!list)
        return dm_err_oom(err);
    for (int i = 0; i < nb; i++)
        list[i] = first + i;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    CPLErr e = GDALDatasetRasterIO(d, GF_Read, x, y, w, h, buf, w, h, GDT_Float32, nb, list, 4,
                                   (GSpacing)4 * w, (GSpacing)4 * w * h);
    CPLPopErrorHandler();
    free(list);
    if (e != CE_None)
        return dm_err_set(err, DM_EIO, "%s: read error: %s", GDALGetDescription(d),
                          dm_gdal_msg());
    return 0;
}

static GDALDatasetH warped_group(dm_gis_feat *f, int g, dm_err *err);

int dm_gis_feat_read(dm_gis_feat *f, int b0, int nb, int x, int y, int w, int h, float *buf,
                     dm_err *err)
{
    if (b0 < 0 || nb < 1 || b0 + nb > f->bands || x < 0 || y < 0 || x + w > f->w ||
        y + h > f->h)
        return dm_err_set(err, DM_EINVAL, "features: bands %d..%d, window %d,%d %d×%d outside "
                          "the raster (a bug)", b0, b0 + nb - 1, x, y, w, h);
    size_t plane = (size_t)w * h;
    int rc = 0;
    if (!f->src) {
        rc = read_raw(f->d, b0 + 1, nb, x, y, w, h, buf, err);
    } else { /* the groups' VRTs the bands fall in */
        for (int b = b0; !rc && b < b0 + nb;) {
            int g = b / f->group, end = (g + 1) * f->group;
            end = end < b0 + nb ? end : b0 + nb;
            GDALDatasetH v = warped_group(f, g, err);
            rc = v ? read_raw(v, b - g * f->group + 1, end - b, x, y, w, h,
                              buf + (size_t)(b - b0) * plane, err) : DM_EIO;
            b = end;
        }
    }
    if (rc)
        return rc;
    for (int i = 0; i < nb; i++) {
        int b = b0 + i;
        float *v = buf + (size_t)i * plane;
        float nd = (float)f->nodata[b];
        int hn = f->has_nodata[b] && !isnan(nd);
        float sc = (float)f->scale[b], of = (float)f->offset[b];
        for (size_t k = 0; k < plane; k++) {
            if (hn && v[k] == nd)
                v[k] = NAN; /* int8: q = 0 */
            else if (f->decode)
                v[k] = v[k] * sc + of;
        }
    }
    return 0;
}

/* --- warped onto another grid ---------------------------------------------------------------- */

/* v with blocks of side × side: GDAL 3.6's GDALCreateWarpedVRT makes them 512 × 128 whatever
 * the reads, so that reads of another shape warp some blocks twice once the cache has let them
 * go; its XML (the VRT's own description of itself) takes another size. v itself when that
 * fails (slower, the same values). */
static GDALDatasetH reblock(GDALDatasetH v, int side)
{
    char **x = GDALGetMetadata(v, "xml:VRT");
    const char *t = x ? x[0] : NULL;
    const char *bx = t ? strstr(t, "<BlockXSize>") : NULL;
    const char *by = bx ? strstr(bx, "</BlockYSize>") : NULL;
    if (!by)
        return v;
    size_t n = strlen(t) + 100;
    char *xml = malloc(n);
    if (!xml)
        return v;
    snprintf(xml, n, "%.*s<BlockXSize>%d</BlockXSize><BlockYSize>%d</BlockYSize>%s",
             (int)(bx - t), t, side, side, by + strlen("</BlockYSize>"));
    GDALDatasetH r = GDALOpenEx(xml, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    free(xml);
    int bw = 0, bh = 0;
    if (r)
        GDALGetBlockSize(GDALGetRasterBand(r, 1), &bw, &bh);
    if (!r || bw != side || bh != side) {
        if (r)
            GDALClose(r);
        return v;
    }
    GDALClose(v);
    return r;
}

/* The warped VRT of group g: src's bands [g·group, ...) on f's grid, float32 (int8's q values
 * interpolated as reals, decoded afterwards: (q - 128)·scale is affine, so interpolating q is
 * interpolating the values), NaN where no valid source patch is in reach. */
static GDALDatasetH warped_group(dm_gis_feat *f, int g, dm_err *err)
{
    if (f->grp[g])
        return f->grp[g];
    const dm_gis_feat *s = f->src;
    int b0 = g * f->group, k = s->bands - b0 < f->group ? s->bands - b0 : f->group;
    int isbyte = GDALGetRasterDataType(GDALGetRasterBand(s->d, 1)) == GDT_Byte;
    GDALWarpOptions *o = GDALCreateWarpOptions();
    o->hSrcDS = s->d;
    o->eResampleAlg = f->nearest ? GRA_NearestNeighbour : GRA_Bilinear;
    o->eWorkingDataType = GDT_Float32; /* also the VRT's band type */
    o->nBandCount = k;
    o->panSrcBands = CPLMalloc(sizeof(int) * k);
    o->panDstBands = CPLMalloc(sizeof(int) * k);
    o->padfSrcNoDataReal = CPLMalloc(sizeof(double) * k);
    o->padfDstNoDataReal = CPLMalloc(sizeof(double) * k);
    int src_nodata = 0;
    for (int i = 0; i < k; i++) {
        int b = b0 + i;
        o->panSrcBands[i] = b + 1, o->panDstBands[i] = i + 1;
        /* float features: NaN is nodata even where the file does not say so */
        o->padfSrcNoDataReal[i] = s->has_nodata[b] ? s->nodata[b] : NAN;
        src_nodata |= s->has_nodata[b] || !isbyte;
        o->padfDstNoDataReal[i] = NAN;
    }
    if (!src_nodata) { /* bytes without a nodata value: the file's mask, if any, says */
        CPLFree(o->padfSrcNoDataReal);
        o->padfSrcNoDataReal = NULL;
    }
    o->papszWarpOptions = CSLSetNameValue(o->papszWarpOptions, "INIT_DEST", "NO_DATA");
    char **to = f->wkt[0] ? CSLSetNameValue(NULL, "DST_SRS", f->wkt) : NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    void *t = GDALCreateGenImgProjTransformer2(s->d, NULL, to);
    CSLDestroy(to);
    GDALDatasetH v = NULL;
    if (t) {
        GDALSetGenImgProjTransformerDstGeoTransform(t, f->gt);
        /* every patch centre reprojected exactly (gdalwarp -et 0): an approximated
         * transformation moves samples by a fraction of a patch, and where B's vectors vary
         * quickly between patches that is visible in the distance */
        o->pfnTransformer = GDALGenImgProjTransform, o->pTransformerArg = t;
        v = GDALCreateWarpedVRT(s->d, f->w, f->h, f->gt, o); /* owns the transformer */
        if (!v)
            GDALDestroyTransformer(t);
    }
    if (v && f->wkt[0])
        GDALSetProjection(v, f->wkt);
    for (int i = 0; v && i < k; i++)
        GDALSetRasterNoDataValue(GDALGetRasterBand(v, i + 1), NAN);
    if (v)
        v = reblock(v, f->block);
    if (!v)
        dm_err_set(err, DM_EIO, "%s: cannot warp bands %d..%d onto the target grid: %s",
                   GDALGetDescription(s->d), b0 + 1, b0 + k, dm_gdal_msg());
    CPLPopErrorHandler();
    GDALDestroyWarpOptions(o);
    return f->grp[g] = v;
}

int dm_gis_feat_warp(dm_gis_feat **f, int w, int h, const double gt[6], const char *wkt,
                     int nearest, int block, int group, dm_err *err)
{
    const dm_gis_feat *s = *f;
    if (w < 1 || h < 1 || group < 1 || block < 16)
        return dm_err_set(err, DM_EINVAL, "features: a warp onto %d×%d px by groups of %d bands "
                          "(a bug)", w, h, group);
    if (!s->d)
        return dm_err_set(err, DM_EINVAL, "features: a warped raster warped again (a bug)");
    dm_gis_feat *v = calloc(1, sizeof *v);
    if (!v)
        return dm_err_oom(err);
    size_t nb = (size_t)s->bands;
    v->w = w, v->h = h, v->bands = s->bands, v->block = block;
    memcpy(v->gt, gt, sizeof v->gt);
    v->wkt = strdup(wkt ? wkt : "");
    v->meta = CSLDuplicate(s->meta);
    v->scale = malloc(nb * sizeof *v->scale), v->offset = malloc(nb * sizeof *v->offset);
    v->nodata = calloc(nb, sizeof *v->nodata), v->has_nodata = calloc(nb, sizeof(int));
    v->group = group < s->bands ? group : s->bands;
    v->ngroups = (s->bands + v->group - 1) / v->group;
    v->grp = calloc((size_t)v->ngroups, sizeof *v->grp);
    v->nearest = nearest;
    if (!v->wkt || (s->meta && !v->meta) || !v->scale || !v->offset || !v->nodata ||
        !v->has_nodata || !v->grp) {
        dm_gis_feat_close(v);
        return dm_err_oom(err);
    }
    /* the warper's output is NaN where nothing valid was in reach; values are decoded as src's */
    memcpy(v->scale, s->scale, nb * sizeof *v->scale);
    memcpy(v->offset, s->offset, nb * sizeof *v->offset);
    v->decode = s->decode;
    /* the first group now: an error (a CRS PROJ cannot join) shows before any work */
    v->src = *f;
    if (!warped_group(v, 0, err)) {
        v->src = NULL; /* still the caller's */
        dm_gis_feat_close(v);
        return DM_EIO;
    }
    *f = v;
    return 0;
}

/* --- CRSs ------------------------------------------------------------------------------------ */

/* s from user input (EPSG:4326, WKT, PROJ...), x/lon first. */
static OGRSpatialReferenceH srs_from(const char *def, int wkt, char *why, size_t n)
{
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    if (!s)
        return NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRErr e = wkt ? OSRImportFromWkt(s, (char **)&def) : OSRSetFromUserInput(s, def);
    snprintf(why, n, "%s", CPLGetLastErrorMsg());
    CPLPopErrorHandler();
    for (char *c = why; *c; c++)
        if (*c == '\n')
            *c = ' ';
    if (e != OGRERR_NONE) {
        OSRDestroySpatialReference(s);
        return NULL;
    }
    OSRSetAxisMappingStrategy(s, OAMS_TRADITIONAL_GIS_ORDER);
    return s;
}

void dm_srs_release(OGRCoordinateTransformationH t, OGRSpatialReferenceH a,
                    OGRSpatialReferenceH b)
{
    if (t)
        OCTDestroyCoordinateTransformation(t);
    if (a)
        OSRDestroySpatialReference(a);
    if (b)
        OSRDestroySpatialReference(b);
}

int dm_gis_srs_check(const char *opt, const char *crs, dm_err *err)
{
    char why[600];
    OGRSpatialReferenceH s = srs_from(crs, 0, why, sizeof why);
    if (s) {
        OSRDestroySpatialReference(s);
        return 0;
    }
    return dm_err_set(err, DM_EINVAL, "%s %s: not a CRS GDAL/PROJ knows (%s); e.g. EPSG:4326 "
                      "(then X,Y = longitude,latitude) or EPSG:32631", opt, crs,
                      why[0] ? why : "an unknown name or format");
}

int dm_gis_point_to(const char *srs, const char *wkt, double x, double y, double *ox, double *oy,
                    dm_err *err)
{
    *ox = x, *oy = y;
    if (!srs || !srs[0])
        return 0;
    if (!wkt || !wkt[0])
        return dm_err_set(err, DM_EINVAL, "--srs %s: the features have no CRS (an "
                          "ungeoreferenced run); give --at in their own coordinates, without "
                          "--srs", srs);
    char why[600];
    OGRSpatialReferenceH a = srs_from(srs, 0, why, sizeof why), b = NULL;
    int rc = 0;
    if (!a)
        rc = dm_err_set(err, DM_EINVAL, "--srs %s: not a CRS GDAL/PROJ knows (%s)", srs, why);
    else if (!(b = srs_from(wkt, 1, why, sizeof why)))
        rc = dm_err_set(err, DM_EFORMAT, "the features' CRS is unreadable (%s)", why);
    OGRCoordinateTransformationH t = NULL;
    if (!rc) {
        CPLPushErrorHandler(CPLQuietErrorHandler);
        CPLErrorReset();
        t = OCTNewCoordinateTransformation(a, b);
        int ok = t && OCTTransform(t, 1, ox, oy, NULL) && isfinite(*ox) && isfinite(*oy);
        if (!ok)
            rc = dm_err_set(err, DM_EINVAL, "--at %.17g,%.17g --srs %s: cannot be moved into the "
                            "features' CRS (%s)", x, y, srs, dm_gdal_msg());
        CPLPopErrorHandler();
    }
    dm_srs_release(t, a, b);
    return rc;
}

/* A CRS from WKT ("" none: NULL, *bad 0), data axes in GDAL's traditional GIS order (a raster's
 * geotransform has x the easting or longitude whatever the CRS's declared axis order). */
static OGRSpatialReferenceH srs_wkt(const char *wkt, int *bad)
{
    char why[600];
    OGRSpatialReferenceH s = wkt && wkt[0] ? srs_from(wkt, 1, why, sizeof why) : NULL;
    *bad = wkt && wkt[0] && !s;
    return s;
}

int dm_gis_crs_same(const char *a, const char *b)
{
    int bad_a, bad_b;
    OGRSpatialReferenceH x = srs_wkt(a, &bad_a), y = srs_wkt(b, &bad_b);
    /* both in the same data axis order, so the CRSs alone are compared (EPSG:4326 and OGC:CRS84
     * are one grid for a raster); geographic CRSs whatever their declared axis order */
    static const char *const opt[] = { "IGNORE_DATA_AXIS_TO_SRS_AXIS_MAPPING=YES",
                                       "CRITERION=EQUIVALENT_EXCEPT_AXIS_ORDER_GEOGCRS", NULL };
    int same = bad_a || bad_b ? -1 : !x || !y ? !x && !y : OSRIsSameEx(x, y, opt) ? 1 : 0;
    dm_srs_release(NULL, x, y);
    return same;
}

void dm_gis_crs_label(const char *wkt, char *buf, size_t n, const char **unit)
{
    int bad;
    OGRSpatialReferenceH s = srs_wkt(wkt, &bad);
    *unit = "";
    if (!s) {
        snprintf(buf, n, "%s", bad ? "an unreadable CRS" : "no CRS");
        return;
    }
    const char *name = OSRGetName(s), *auth = OSRGetAuthorityName(s, NULL);
    const char *code = OSRGetAuthorityCode(s, NULL);
    if (auth && code)
        snprintf(buf, n, "%s:%s (%s)", auth, code, name ? name : "unnamed");
    else
        snprintf(buf, n, "%s", name ? name : "an unnamed CRS");
    if (OSRIsGeographic(s)) {
        *unit = "°";
    } else {
        char *u = NULL;
        OSRGetLinearUnits(s, &u);
        *unit = u && !strcmp(u, "metre") ? " m" : u && !strcmp(u, "US survey foot") ? " US ft"
              : u && !strcmp(u, "foot") ? " ft" : "";
    }
    OSRDestroySpatialReference(s);
}

int dm_gis_feat_extent_in(const dm_gis_feat *f, const char *wkt, double box[4], dm_err *err)
{
    double x0 = f->gt[0], x1 = f->gt[0] + f->w * f->gt[1];
    double y0 = f->gt[3], y1 = f->gt[3] + f->h * f->gt[5];
    box[0] = fmin(x0, x1), box[1] = fmin(y0, y1), box[2] = fmax(x0, x1), box[3] = fmax(y0, y1);
    int bad_a, bad_b;
    OGRSpatialReferenceH a = srs_wkt(f->wkt, &bad_a), b = srs_wkt(wkt, &bad_b);
    OGRCoordinateTransformationH t = NULL;
    int rc = 0;
    if (bad_a || bad_b || !a != !b)
        rc = dm_err_set(err, DM_EINVAL, "%s: %s", GDALGetDescription(f->d ? f->d : f->src->d),
                        bad_a || bad_b ? "a CRS GDAL cannot read" : "one of the rasters has no "
                        "CRS: its extent cannot be compared with the other's");
    if (!rc && a && dm_gis_crs_same(f->wkt, wkt) != 1) {
        CPLPushErrorHandler(CPLQuietErrorHandler);
        CPLErrorReset();
        t = OCTNewCoordinateTransformation(a, b);
        double o[4];
        /* the edges densified: a reprojected rectangle's sides bend */
        if (!t || !OCTTransformBounds(t, box[0], box[1], box[2], box[3], &o[0], &o[1], &o[2],
                                      &o[3], 21) || !(isfinite(o[0]) && isfinite(o[1]) &&
                                                      isfinite(o[2]) && isfinite(o[3])))
            rc = dm_err_set(err, DM_EINVAL, "%s: its extent (%.10g, %.10g .. %.10g, %.10g) "
                            "cannot be moved into the other CRS (%s)",
                            GDALGetDescription(f->d ? f->d : f->src->d), box[0], box[1],
                            box[2], box[3], dm_gdal_msg());
        else
            memcpy(box, o, sizeof o);
        CPLPopErrorHandler();
    }
    dm_srs_release(t, a, b);
    return rc;
}

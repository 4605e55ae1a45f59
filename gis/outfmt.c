/* gis/outfmt.c — the output formats (see gis.h): -of and -co checked against this GDAL's drivers,
 * the GeoTIFF creation options of a final COG (dinomap's defaults under the user's), and the Zarr
 * copy of the features (GDAL's multidimensional API: one [band, y, x] array, which xarray opens
 * as one DataArray; GDAL 3.6's raster Zarr writer would make one array per band). */
#include <cpl_string.h>
#include <ctype.h>
#include <gdal.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "outfmt_internal.h"

int dm_out_format_parse(const char *name)
{
    if (!strcasecmp(name, "COG"))
        return DM_OF_COG;
    if (!strcasecmp(name, "Zarr"))
        return DM_OF_ZARR;
    return -1;
}

const char *dm_out_format_name(int format) { return format == DM_OF_ZARR ? "Zarr" : "COG"; }

void dm_tiff_datetime(char out[20])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 20, "%Y:%m:%d %H:%M:%S", &tm);
}

/* --- checking options against a driver ------------------------------------------------------- */

static void CPL_STDCALL first_msg(CPLErr cls, CPLErrorNum num, const char *msg)
{
    (void)cls, (void)num;
    char *buf = CPLGetErrorHandlerUserData();
    if (!buf[0])
        snprintf(buf, 512, "%s", msg);
}

/* 1 when the driver takes the creation option "NAME=VALUE" (GDAL's own check: the name in its
 * list, the value of the option's type and range); else 0 and GDAL's reason in why[512]. */
static int driver_takes(GDALDriverH d, const char *item, char *why)
{
    char *one[2] = { (char *)item, NULL };
    why[0] = '\0';
    CPLPushErrorHandlerEx(first_msg, why);
    int ok = GDALValidateCreationOptions(d, (CSLConstList)one);
    CPLPopErrorHandler();
    if (!ok && !why[0])
        snprintf(why, 512, "refused by GDAL");
    return ok;
}

/* The NAME and VALUE of a "NAME=VALUE" option; -1 unless both are there. */
static int split(const char *item, char *name, size_t n, const char **value)
{
    const char *eq = strchr(item, '=');
    if (!eq || eq == item || !eq[1] || (size_t)(eq - item) >= n)
        return -1;
    memcpy(name, item, (size_t)(eq - item));
    name[eq - item] = '\0';
    *value = eq + 1;
    return 0;
}

static int in_list(const char *v, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (!strcasecmp(v, list[i]))
            return 1;
    return 0;
}

#define BAD_SYNTAX(err, item)                                                                      \
    dm_err_set(err, DM_EINVAL, "-co %s: expected NAME=VALUE, e.g. -co COMPRESS=ZSTD", item)

/* --- GeoTIFF (COG) options ------------------------------------------------------------------- */

/* Lossless codecs (and LERC's bounded error) that take float32; JPEG and WEBP take only bytes. */
static const char *const codecs[] = { "NONE", "DEFLATE", "LZW", "ZSTD", "LZMA", "PACKBITS",
                                      "LERC", "LERC_DEFLATE", "LERC_ZSTD", NULL };

static int has_predictor(const char *c)
{
    static const char *const p[] = { "DEFLATE", "LZW", "ZSTD", "LZMA", NULL };
    return in_list(c, p);
}

/* GDAL's COG driver spells one LEVEL for every codec; GTiff has one name per codec. */
static const char *level_name(const char *c)
{
    if (!strcasecmp(c, "DEFLATE") || !strcasecmp(c, "LERC_DEFLATE"))
        return "ZLEVEL";
    if (!strcasecmp(c, "ZSTD") || !strcasecmp(c, "LERC_ZSTD"))
        return "ZSTD_LEVEL";
    if (!strcasecmp(c, "LZMA"))
        return "LZMA_PRESET";
    return NULL;
}

/* Options that would break what dinomap's outputs are (tiled, band-interleaved COGs, their
 * samples and metadata as written), with the one value allowed (NULL: none) and why. */
static const struct {
    const char *name, *only, *why;
} fixed[] = {
    { "TILED", "YES", "dinomap's outputs are tiled Cloud-Optimized GeoTIFFs" },
    { "INTERLEAVE", "BAND", "dinomap's outputs are band-interleaved (reading 3 of 1024 bands "
                            "reads 3 bands)" },
    { "COPY_SRC_OVERVIEWS", NULL, "dinomap sets it: the overviews come first, as in a COG" },
    { "STREAMABLE_OUTPUT", NULL, "a streamable GeoTIFF is not a COG" },
    { "PROFILE", "GDALGeoTIFF", "other profiles drop the band names, nodata and scales" },
    { "NBITS", NULL, "it would change the samples dinomap writes" },
    { "PIXELTYPE", NULL, "it would change the samples dinomap writes" },
    { "SIGNEDBYTE", NULL, "it would change the samples dinomap writes" },
    { "PHOTOMETRIC", NULL, "dinomap sets the bands' colour interpretation" },
    { "ALPHA", NULL, "dinomap sets the bands' colour interpretation" },
    { "TFW", NULL, "the georeferencing is inside the GeoTIFF; no side files" },
    { "WORLDFILE", NULL, "the georeferencing is inside the GeoTIFF; no side files" },
    { "RPB", NULL, "no side files" },
    { "RPCTXT", NULL, "no side files" },
};

/* The numeric options GTiff's list gives no range for (GDAL would take ZSTD_LEVEL=99). */
static const struct {
    const char *name;
    double lo, hi;
} ranges[] = { { "ZLEVEL", 1, 12 }, { "ZSTD_LEVEL", 1, 22 }, { "LZMA_PRESET", 0, 9 },
               { "MAX_Z_ERROR", 0, 1e300 } };

/* A tile side: a multiple of 16 px (GeoTIFF's rule), 16..4096; -1 if not. */
static int block_side(const char *v)
{
    char *end;
    long b = strtol(v, &end, 10);
    return *end || b < 16 || b > 4096 || b % 16 ? -1 : (int)b;
}

char **dm_cog_options(const char *const *user, int byte, int *bx, int *by, dm_err *err)
{
    GDALAllRegister();
    GDALDriverH gt = GDALGetDriverByName("GTiff");
    char name[128], why[512];
    const char *v;
    const char *codec = "DEFLATE";
    for (int i = 0; user && user[i]; i++) {
        if (split(user[i], name, sizeof name, &v)) {
            BAD_SYNTAX(err, user[i]);
            return NULL;
        }
        if (!strcasecmp(name, "COMPRESS"))
            codec = v;
    }
    if (!in_list(codec, codecs)) {
        dm_err_set(err, DM_EINVAL, "-co COMPRESS=%s: expected NONE, DEFLATE, LZW, ZSTD, LZMA, "
                   "PACKBITS, LERC, LERC_DEFLATE or LERC_ZSTD (dinomap's rasters are float32; "
                   "JPEG and WEBP take only 8-bit samples)", codec);
        return NULL;
    }
    *bx = *by = 256;
    char **o = CSLSetNameValue(NULL, "TILED", "YES");
    o = CSLSetNameValue(o, "INTERLEAVE", "BAND");
    o = CSLSetNameValue(o, "BIGTIFF", "IF_SAFER");
    o = CSLSetNameValue(o, "COPY_SRC_OVERVIEWS", "YES");
    o = CSLSetNameValue(o, "NUM_THREADS", "ALL_CPUS");
    o = CSLSetNameValue(o, "COMPRESS", codec);
    if (has_predictor(codec))
        o = CSLSetNameValue(o, "PREDICTOR", byte ? "2" : "3");
    for (int i = 0; user && user[i]; i++) {
        split(user[i], name, sizeof name, &v);
        char item[600];
        for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++)
            if (!strcasecmp(name, fixed[k].name) && !(fixed[k].only &&
                                                     !strcasecmp(v, fixed[k].only))) {
                dm_err_set(err, DM_EINVAL, "-co %s: not allowed: %s%s%s", user[i], fixed[k].why,
                           fixed[k].only ? "; only " : "", fixed[k].only ? fixed[k].only : "");
                goto bad;
            }
        const char *key = name;
        if (!strcasecmp(name, "LEVEL") && !(key = level_name(codec))) {
            dm_err_set(err, DM_EINVAL, "-co %s: COMPRESS=%s has no level (DEFLATE, ZSTD, LZMA, "
                       "LERC_DEFLATE and LERC_ZSTD have)", user[i], codec);
            goto bad;
        }
        if (!strcasecmp(name, "PREDICTOR")) {
            /* the COG driver's names, GTiff's numbers; 3 (floating point) is for float32 only */
            static const char *const cog[] = { "NO", "STANDARD", "FLOATING_POINT", "YES" };
            int p = 0;
            for (int k = 0; k < 4 && !p; k++)
                p = !strcasecmp(v, cog[k]) ? k + 1 : 0;
            if (!p && v[0] >= '1' && v[0] <= '3' && !v[1])
                p = v[0] - '0';
            if (!p) {
                dm_err_set(err, DM_EINVAL, "-co %s: expected YES, NO, STANDARD, FLOATING_POINT, "
                           "1, 2 or 3", user[i]);
                goto bad;
            }
            if (p > 1 && !has_predictor(codec)) {
                dm_err_set(err, DM_EINVAL, "-co %s: COMPRESS=%s takes no predictor (DEFLATE, "
                           "LZW, ZSTD and LZMA do)", user[i], codec);
                goto bad;
            }
            p = p == 4 ? (byte ? 2 : 3) : p == 3 && byte ? 2 : p;
            o = CSLSetNameValue(o, "PREDICTOR", p == 1 ? "1" : p == 2 ? "2" : "3");
            continue;
        }
        int side = 0;
        if (!strcasecmp(name, "BLOCKSIZE") || !strcasecmp(name, "BLOCKXSIZE") ||
            !strcasecmp(name, "BLOCKYSIZE")) {
            if ((side = block_side(v)) < 0) {
                dm_err_set(err, DM_EINVAL, "-co %s: expected a multiple of 16 px from 16 to "
                           "4096, e.g. 256 or 512", user[i]);
                goto bad;
            }
            if (toupper((unsigned char)name[5]) != 'Y')
                *bx = side;
            if (toupper((unsigned char)name[5]) != 'X')
                *by = side;
            if (!strcasecmp(name, "BLOCKSIZE")) {
                o = CSLSetNameValue(o, "BLOCKXSIZE", v);
                o = CSLSetNameValue(o, "BLOCKYSIZE", v);
                continue;
            }
        }
        for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
            char *end;
            double x = strtod(v, &end);
            if (!strcasecmp(key, ranges[k].name) && (*end || !(x >= ranges[k].lo) ||
                                                     !(x <= ranges[k].hi))) {
                if (ranges[k].hi < 1e300)
                    dm_err_set(err, DM_EINVAL, "-co %s: expected %g to %g (%s with COMPRESS=%s)",
                               user[i], ranges[k].lo, ranges[k].hi, key, codec);
                else
                    dm_err_set(err, DM_EINVAL, "-co %s: expected a number >= 0", user[i]);
                goto bad;
            }
        }
        snprintf(item, sizeof item, "%s=%s", key, v);
        if (!driver_takes(gt, item, why)) {
            dm_err_set(err, DM_EINVAL, "-co %s: GDAL's GeoTIFF writer does not take it (%s)",
                       user[i], why);
            goto bad;
        }
        o = CSLSetNameValue(o, key, v);
    }
    if (CSLFetchNameValue(o, "BLOCKXSIZE") == NULL) {
        o = CSLSetNameValue(o, "BLOCKXSIZE", "256");
        o = CSLSetNameValue(o, "BLOCKYSIZE", "256");
    }
    return o;
bad:
    CSLDestroy(o);
    return NULL;
}

/* --- Zarr options ---------------------------------------------------------------------------- */

/* The chunk shape [band, y, x] of BLOCKSIZE=B,Y,X; -1 if not three positive sizes. */
static int zarr_chunks(const char *v, int c[3])
{
    char *end;
    for (int i = 0; i < 3; i++) {
        long x = strtol(v, &end, 10);
        if (end == v || x < 1 || x > 1 << 20 || (*end != (i < 2 ? ',' : '\0')))
            return -1;
        c[i] = (int)x;
        v = end + 1;
    }
    return 0;
}

static int zarr_check(const char *const *co, dm_err *err)
{
    GDALDriverH z = GDALGetDriverByName("Zarr");
    char name[128], why[512];
    const char *v;
    for (int i = 0; co && co[i]; i++) {
        if (split(co[i], name, sizeof name, &v))
            return BAD_SYNTAX(err, co[i]);
        if (!strcasecmp(name, "APPEND_SUBDATASET"))
            return dm_err_set(err, DM_EINVAL, "-co %s: not allowed: dinomap writes a new store",
                              co[i]);
        int c[3];
        if (!strcasecmp(name, "BLOCKSIZE")) {
            if (zarr_chunks(v, c))
                return dm_err_set(err, DM_EINVAL, "-co %s: expected the chunk sizes along band, "
                                  "y and x, e.g. BLOCKSIZE=32,256,256", co[i]);
            if ((double)c[0] * c[1] * c[2] * 4 > 256.0 * 1024 * 1024)
                return dm_err_set(err, DM_EINVAL, "-co %s: chunks of more than 256 MiB", co[i]);
        }
        if (!driver_takes(z, co[i], why))
            return dm_err_set(err, DM_EINVAL, "-co %s: GDAL's Zarr writer does not take it (%s)",
                              co[i], why);
    }
    return 0;
}

int dm_out_format_check(const dm_out_format *f, dm_err *err)
{
    GDALAllRegister();
    if (f->format == DM_OF_ZARR) {
        GDALDriverH z = GDALGetDriverByName("Zarr");
        if (!z || !GDALGetMetadataItem(z, GDAL_DCAP_CREATE_MULTIDIMENSIONAL, NULL))
            return dm_err_set(err, DM_EUNSUPPORTED, "-of Zarr: this GDAL (%s) has no Zarr writer "
                              "(GDAL 3.4 or later, built with it); the COG outputs need none",
                              GDALVersionInfo("RELEASE_NAME"));
        return zarr_check(f->co, err);
    }
    if (f->format != DM_OF_COG)
        return dm_err_set(err, DM_EINVAL, "-of: unknown format %d (a bug)", f->format);
    int bx, by;
    for (int byte = 0; byte < 2; byte++) {
        char **o = dm_cog_options(f->co, byte, &bx, &by, err);
        if (!o)
            return DM_EINVAL;
        CSLDestroy(o);
    }
    return 0;
}

/* --- the Zarr copy --------------------------------------------------------------------------- */

typedef struct zarr_w {
    GDALDatasetH in, z;
    GDALGroupH root;
    GDALDimensionH dim[3];
    GDALMDArrayH arr, coord[3];
    GDALExtendedDataTypeH f32, f64;
    char **dsopt, **aopt;
    float *buf;
    uint8_t *b8;
    int *bands;
} zarr_w;

static void zarr_free(zarr_w *w)
{
    for (int i = 0; i < 3; i++) {
        if (w->coord[i])
            GDALMDArrayRelease(w->coord[i]);
        if (w->dim[i])
            GDALDimensionRelease(w->dim[i]);
    }
    if (w->arr)
        GDALMDArrayRelease(w->arr);
    if (w->root)
        GDALGroupRelease(w->root);
    if (w->f32)
        GDALExtendedDataTypeRelease(w->f32);
    if (w->f64)
        GDALExtendedDataTypeRelease(w->f64);
    CSLDestroy(w->dsopt);
    CSLDestroy(w->aopt);
    free(w->buf), free(w->b8), free(w->bands);
}

static int str_attr(GDALMDArrayH a, const char *name, const char *value)
{
    GDALExtendedDataTypeH t = GDALExtendedDataTypeCreateString(0);
    GDALAttributeH at = GDALMDArrayCreateAttribute(a, name, 0, NULL, t, NULL);
    int ok = at && GDALAttributeWriteString(at, value);
    if (at)
        GDALAttributeRelease(at);
    GDALExtendedDataTypeRelease(t);
    return ok ? 0 : -1;
}

/* A coordinate variable of n values v0 + (i + 0.5)·step (cell centres; band: 0, 1, ...). */
static GDALMDArrayH coordinate(zarr_w *w, int i, const char *name, int n, double v0, double step)
{
    GDALMDArrayH a = GDALGroupCreateMDArray(w->root, name, 1, &w->dim[i], w->f64, NULL);
    double *v = malloc(sizeof *v * (size_t)n);
    int ok = a && v;
    for (int k = 0; ok && k < n; k++)
        v[k] = i == 0 ? k : v0 + (k + 0.5) * step;
    GUInt64 start = 0;
    size_t count = (size_t)n;
    ok = ok && GDALMDArrayWrite(a, &start, &count, NULL, NULL, w->f64, v, v, sizeof *v * n) &&
         GDALDimensionSetIndexingVariable(w->dim[i], a);
    free(v);
    if (!ok && a) {
        GDALMDArrayRelease(a);
        a = NULL;
    }
    return a;
}

/* The store's structure: dimensions, coordinates, the array, its CRS and attributes. */
static int zarr_layout(zarr_w *w, const char *name, int B, int W, int H, const double *gt)
{
    w->root = GDALDatasetGetRootGroup(w->z);
    w->f32 = GDALExtendedDataTypeCreate(GDT_Float32);
    w->f64 = GDALExtendedDataTypeCreate(GDT_Float64);
    if (!w->root || !w->f32 || !w->f64)
        return -1;
    w->dim[0] = GDALGroupCreateDimension(w->root, "band", NULL, NULL, (GUInt64)B, NULL);
    w->dim[1] = GDALGroupCreateDimension(w->root, "y", GDAL_DIM_TYPE_HORIZONTAL_Y, NULL,
                                         (GUInt64)H, NULL);
    w->dim[2] = GDALGroupCreateDimension(w->root, "x", GDAL_DIM_TYPE_HORIZONTAL_X, NULL,
                                         (GUInt64)W, NULL);
    if (!w->dim[0] || !w->dim[1] || !w->dim[2])
        return -1;
    if (!(w->coord[0] = coordinate(w, 0, "band", B, 0, 1)) ||
        !(w->coord[1] = coordinate(w, 1, "y", H, gt[3], gt[5])) ||
        !(w->coord[2] = coordinate(w, 2, "x", W, gt[0], gt[1])))
        return -1;
    w->arr = GDALGroupCreateMDArray(w->root, name, 3, w->dim, w->f32, (CSLConstList)w->aopt);
    if (!w->arr || !GDALMDArraySetNoDataValueAsDouble(w->arr, NAN))
        return -1;
    const char *wkt = GDALGetProjectionRef(w->in);
    if (wkt && wkt[0]) {
        OGRSpatialReferenceH s = OSRNewSpatialReference(wkt);
        int ok = s && GDALMDArraySetSpatialRef(w->arr, s);
        OSRDestroySpatialReference(s);
        if (!ok)
            return -1;
    }
    char **md = GDALGetMetadata(w->in, NULL);
    for (int i = 0; md && md[i]; i++) {
        char *key = NULL;
        const char *val = CPLParseNameValue(md[i], &key);
        int r = key && val && strncmp(key, "TIFFTAG_", 8) ? str_attr(w->arr, key, val) : 0;
        CPLFree(key);
        if (r)
            return -1;
    }
    char when[20], sw[64];
    dm_tiff_datetime(when);
    snprintf(sw, sizeof sw, "dinomap %s", DINOMAP_VERSION);
    return str_attr(w->arr, "software", sw) || str_attr(w->arr, "datetime", when) ? -1 : 0;
}

/* Copies the raster chunk by chunk: each write fills whole chunks, so nothing is read back. */
static int zarr_fill(zarr_w *w, const int c[3], int B, int W, int H, volatile sig_atomic_t *cancel)
{
    GDALRasterBandH b1 = GDALGetRasterBand(w->in, 1);
    int byte = GDALGetRasterDataType(b1) == GDT_Byte;
    size_t n = (size_t)c[0] * c[1] * c[2];
    w->buf = malloc(sizeof *w->buf * n);
    w->b8 = byte ? malloc(n) : NULL;
    w->bands = malloc(sizeof *w->bands * (size_t)c[0]);
    if (!w->buf || (byte && !w->b8) || !w->bands)
        return -2;
    for (int y0 = 0; y0 < H; y0 += c[1])
        for (int x0 = 0; x0 < W; x0 += c[2])
            for (int k0 = 0; k0 < B; k0 += c[0]) {
                if (cancel && *cancel)
                    return -3;
                int nb = B - k0 < c[0] ? B - k0 : c[0], h = H - y0 < c[1] ? H - y0 : c[1];
                int wd = W - x0 < c[2] ? W - x0 : c[2];
                size_t plane = (size_t)wd * h;
                for (int k = 0; k < nb; k++)
                    w->bands[k] = k0 + k + 1;
                void *dst = byte ? (void *)w->b8 : (void *)w->buf;
                int sz = byte ? 1 : 4;
                if (GDALDatasetRasterIO(w->in, GF_Read, x0, y0, wd, h, dst, wd, h,
                                        byte ? GDT_Byte : GDT_Float32, nb, w->bands, sz,
                                        (GSpacing)sz * wd, (GSpacing)sz * plane) != CE_None)
                    return -1;
                for (int k = 0; byte && k < nb; k++) { /* int8: value = q·scale + offset */
                    GDALRasterBandH bh = GDALGetRasterBand(w->in, k0 + k + 1);
                    double sc = GDALGetRasterScale(bh, NULL), of = GDALGetRasterOffset(bh, NULL);
                    int has_nd = 0;
                    double nd = GDALGetRasterNoDataValue(bh, &has_nd);
                    for (size_t i = 0; i < plane; i++) {
                        uint8_t q = w->b8[k * plane + i];
                        w->buf[k * plane + i] = has_nd && q == nd ? NAN : (float)(q * sc + of);
                    }
                }
                GUInt64 start[3] = { (GUInt64)k0, (GUInt64)y0, (GUInt64)x0 };
                size_t count[3] = { (size_t)nb, (size_t)h, (size_t)wd };
                if (!GDALMDArrayWrite(w->arr, start, count, NULL, NULL, w->f32, w->buf, w->buf,
                                      sizeof *w->buf * n))
                    return -1;
            }
    return 0;
}

int dm_gis_write_zarr(const char *src, const char *dst, const char *const *co,
                      volatile sig_atomic_t *cancel, dm_err *err)
{
    GDALAllRegister();
    GDALDriverH drv = GDALGetDriverByName("Zarr");
    if (!drv)
        return dm_err_set(err, DM_EUNSUPPORTED, "%s: this GDAL has no Zarr writer", dst);
    zarr_w w;
    memset(&w, 0, sizeof w);
    char part[4200], name[256];
    snprintf(part, sizeof part, "%s.part", dst);
    dm_unlink_fresh(part);
    const char *base = strrchr(dst, '/');
    snprintf(name, sizeof name, "%s", base ? base + 1 : dst);
    char *dot = strrchr(name, '.');
    if (dot && !strcasecmp(dot, ".zarr"))
        *dot = '\0';
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    w.in = GDALOpenEx(src, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    int rc = 0;
    if (!w.in) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot open: %s", src, CPLGetLastErrorMsg());
        goto out;
    }
    int B = GDALGetRasterCount(w.in), W = GDALGetRasterXSize(w.in), H = GDALGetRasterYSize(w.in);
    double gt[6] = { 0, 1, 0, 0, 0, 1 };
    GDALGetGeoTransform(w.in, gt);
    /* 32 bands × 256² px chunks (8 MiB): a pixel's vector in a few reads, a band's map in few */
    int c[3] = { B < 32 ? B : 32, H < 256 ? H : 256, W < 256 ? W : 256 }, compress_set = 0;
    w.aopt = CSLSetNameValue(NULL, "COMPRESS", "ZSTD");
    for (int i = 0; co && co[i]; i++) {
        char *key = NULL;
        const char *v = CPLParseNameValue(co[i], &key);
        if (!key || !v) {
            CPLFree(key);
            continue; /* checked by dm_out_format_check */
        }
        if (!strcasecmp(key, "FORMAT") || !strcasecmp(key, "CREATE_ZMETADATA"))
            w.dsopt = CSLSetNameValue(w.dsopt, key, v);
        else if (!strcasecmp(key, "ARRAY_NAME"))
            snprintf(name, sizeof name, "%s", v);
        else if (!strcasecmp(key, "BLOCKSIZE") && zarr_chunks(v, c) == 0)
            ;
        else
            w.aopt = CSLSetNameValue(w.aopt, key, v);
        compress_set |= !strcasecmp(key, "COMPRESS");
        CPLFree(key);
    }
    if (!compress_set)
        w.aopt = CSLSetNameValue(w.aopt, "ZSTD_LEVEL", "3");
    char bs[64];
    snprintf(bs, sizeof bs, "%d,%d,%d", c[0], c[1], c[2]);
    w.aopt = CSLSetNameValue(w.aopt, "BLOCKSIZE", bs);
    dm_remove_tree(part, NULL);
    if (!(w.z = GDALCreateMultiDimensional(drv, part, NULL, (CSLConstList)w.dsopt)) ||
        zarr_layout(&w, name, B, W, H, gt)) {
        rc = dm_err_set(err, DM_EIO, "%s: cannot create the Zarr store: %s", part,
                        CPLGetLastErrorMsg());
        goto out;
    }
    int r = zarr_fill(&w, c, B, W, H, cancel);
    if (r == -2)
        rc = dm_err_oom(err);
    else if (r == -3)
        rc = dm_err_set(err, DM_EINTERRUPTED, "interrupted while writing %s: the chunks are "
                        "kept; run the same command (or dinomap finalize) again", dst);
    else if (r)
        rc = dm_err_set(err, DM_EIO, "%s: write failed: %s", part, CPLGetLastErrorMsg());
out:
    zarr_free(&w);
    if (w.z) {
        CPLErrorReset();
        GDALClose(w.z); /* flushes the last chunks and the metadata */
        if (!rc && CPLGetLastErrorType() >= CE_Failure)
            rc = dm_err_set(err, DM_EIO, "%s: write failed: %s", part, CPLGetLastErrorMsg());
    }
    if (w.in)
        GDALClose(w.in);
    CPLPopErrorHandler();
    /* the old store goes only once the new one is whole */
    if (!rc && (dm_remove_tree(dst, err) || rename(part, dst) != 0))
        rc = dm_err_set(err, DM_EIO, "%s: cannot put into place", dst);
    if (rc == DM_EIO) /* before the partial store gives its room back */
        dm_err_space(err, part, 0);
    if (rc)
        dm_remove_tree(part, NULL);
    return rc;
}

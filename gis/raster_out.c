/* gis/raster_out.c — the rasters a run writes (see gis.h): chunk files, and the final outputs as
 * Cloud-Optimized GeoTIFFs or block COGs with a mosaic VRT, and QGIS styles.
 *
 * A final COG is made the way COGs were made before GDAL's COG driver: a tiled temporary GeoTIFF
 * filled by windows, its overviews, then a copy with COPY_SRC_OVERVIEWS=YES (overviews first, every
 * IFD at the start: GDAL's validator accepts it). Unlike GDAL 3.6's COG driver this keeps the
 * output band-interleaved (reading 3 of 1024 bands reads 3 bands) and its memory small whatever the
 * band count: the COG driver reading a VRT of many pixel-interleaved chunk files kept one block
 * buffer per open source (1.9 GB for a 19,968² px mosaic of a 128-dim model). The copy's creation
 * options are dinomap's defaults under the user's -co (outfmt.c); every raster written here is
 * stamped with TIFFTAG_SOFTWARE and TIFFTAG_DATETIME. */
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <gdal.h>
#include <gdal_utils.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>

#include "outfmt_internal.h"

/* What every raster dinomap writes says: the software and when (TIFF tags in a GeoTIFF). */
static void stamp(GDALDatasetH d)
{
    char when[20];
    dm_tiff_datetime(when);
    GDALSetMetadataItem(d, "TIFFTAG_SOFTWARE", "dinomap " DINOMAP_VERSION, NULL);
    GDALSetMetadataItem(d, "TIFFTAG_DATETIME", when, NULL);
}

/* ZSTD where this GDAL has it (Debian's does), else DEFLATE: for files only dinomap reads back. */
static const char *fast_codec(void)
{
    static int zstd = -1;
    if (zstd < 0) {
        const char *l = GDALGetMetadataItem(GDALGetDriverByName("GTiff"),
                                            GDAL_DMD_CREATIONOPTIONLIST, NULL);
        zstd = l && strstr(l, "ZSTD") ? 1 : 0;
    }
    return zstd ? "ZSTD" : "DEFLATE";
}

static char **fast_options(char **o)
{
    const char *c = fast_codec();
    o = CSLSetNameValue(o, "COMPRESS", c);
    o = CSLSetNameValue(o, strcmp(c, "ZSTD") ? "ZLEVEL" : "ZSTD_LEVEL", "1");
    return o;
}

/* Tiled, band-interleaved GeoTIFF creation options with blocks of bx × by px. */
static char **tiled(char **o, int bx, int by)
{
    char x[16], y[16];
    snprintf(x, sizeof x, "%d", bx);
    snprintf(y, sizeof y, "%d", by);
    o = CSLSetNameValue(o, "TILED", "YES");
    o = CSLSetNameValue(o, "BLOCKXSIZE", x);
    o = CSLSetNameValue(o, "BLOCKYSIZE", y);
    o = CSLSetNameValue(o, "INTERLEAVE", "BAND");
    return CSLSetNameValue(o, "BIGTIFF", "IF_SAFER");
}

/* --- chunk files ----------------------------------------------------------------------------- */

/* A chunk file of `bands` bands of type t (float32 with nodata NaN, or a uint8 mask). */
static int chunk_write(const char *path, const void *data, GDALDataType t, int bands, int w,
                       int h, const double gt[6], const char *wkt, dm_err *err)
{
    GDALAllRegister();
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.part", path);
    dm_unlink_fresh(tmp); /* a link planted at the temporary name is removed, not written through */
    /* blocks no larger than the chunk (a 128-px chunk in 256-px blocks would be 4× the work);
     * no predictor: libtiff's floating-point one made reads 8× slower for 5 % less size */
    char **o =
        tiled(NULL, w >= 256 ? 256 : (w + 15) / 16 * 16, h >= 256 ? 256 : (h + 15) / 16 * 16);
    o = fast_options(o);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALDatasetH ds = GDALCreate(GDALGetDriverByName("GTiff"), tmp, w, h, bands, t, o);
    CSLDestroy(o);
    CPLErr e = ds ? CE_None : CE_Failure;
    if (ds) {
        int sz = GDALGetDataTypeSizeBytes(t);
        GDALSetGeoTransform(ds, (double *)gt);
        if (wkt && wkt[0])
            GDALSetProjection(ds, wkt);
        stamp(ds);
        for (int b = 1; b <= bands && t == GDT_Float32; b++)
            GDALSetRasterNoDataValue(GDALGetRasterBand(ds, b), NAN);
        e = GDALDatasetRasterIO(ds, GF_Write, 0, 0, w, h, (void *)data, w, h, t, bands, NULL, sz,
                                (GSpacing)sz * w, (GSpacing)sz * w * h);
        GDALClose(ds); /* flushes: a full disk shows up here */
        if (CPLGetLastErrorType() >= CE_Failure)
            e = CE_Failure;
    }
    int rc = 0;
    /* on disk before the rename, and the rename on disk before the index says "done" */
    if (e != CE_None || dm_sync_file(tmp) != 0 || rename(tmp, path) != 0 ||
        dm_sync_parent(path) != 0) {
        int en = errno;
        rc = dm_err_set(err, DM_EIO, "%s: cannot write the chunk: %s", path,
                        e != CE_None ? dm_gdal_msg() : strerror(en));
        dm_err_space(err, tmp, e != CE_None ? 0 : en); /* while the part file takes its room */
        VSIUnlink(tmp);
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_gis_chunk_write(const char *path, const float *data, int bands, int w, int h,
                       const double gt[6], const char *wkt, dm_err *err)
{
    return chunk_write(path, data, GDT_Float32, bands, w, h, gt, wkt, err);
}

int dm_gis_mask_write(const char *path, const uint8_t *mask, int w, int h, const double gt[6],
                      const char *wkt, dm_err *err)
{
    return chunk_write(path, mask, GDT_Byte, 1, w, h, gt, wkt, err);
}

static int chunk_read(const char *path, GDALDataType t, int bands, int x, int y, int w, int h,
                      void *buf, dm_err *err)
{
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    const char *drv[] = { "GTiff", NULL };
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, drv, NULL, NULL);
    int rc = 0, sz = GDALGetDataTypeSizeBytes(t);
    if (!d)
        rc = dm_err_set(err, DM_EIO, "chunk %s: cannot open: %s", path, dm_gdal_msg());
    else if (GDALGetRasterCount(d) != bands || x < 0 || y < 0 ||
             x + w > GDALGetRasterXSize(d) || y + h > GDALGetRasterYSize(d) ||
             GDALGetRasterDataType(GDALGetRasterBand(d, 1)) != t)
        rc = dm_err_set(err, DM_EFORMAT, "chunk %s: has %d bands of %d×%d px, not what the run "
                        "wrote (%d bands, window %d,%d %d×%d); was it replaced? Redo the run with "
                        "--overwrite", path, GDALGetRasterCount(d), GDALGetRasterXSize(d),
                        GDALGetRasterYSize(d), bands, x, y, w, h);
    else if (GDALDatasetRasterIO(d, GF_Read, x, y, w, h, buf, w, h, t, bands, NULL, sz,
                                 (GSpacing)sz * w, (GSpacing)sz * w * h) != CE_None)
        rc = dm_err_set(err, DM_EIO, "chunk %s: read error: %s", path, dm_gdal_msg());
    if (d)
        GDALClose(d);
    CPLPopErrorHandler();
    return rc;
}

int dm_gis_chunk_read(const char *path, int bands, int x, int y, int w, int h, float *buf,
                      dm_err *err)
{
    return chunk_read(path, GDT_Float32, bands, x, y, w, h, buf, err);
}

int dm_gis_mask_read(const char *path, int x, int y, int w, int h, uint8_t *buf, dm_err *err)
{
    return chunk_read(path, GDT_Byte, 1, x, y, w, h, buf, err);
}

/* --- final rasters --------------------------------------------------------------------------- */

struct dm_out {
    dm_out_spec s;
    char *dir, *name;
    int side, nrx, nry;      /* blocks: side px, columns, rows (side 0: one region) */
    int cur;                 /* region being written, -1 none */
    dm_region reg;
    GDALDatasetH tmp;
    char tmp_path[4200];
    char **parts;            /* [regions] finished COGs under their .part names, NULL until done */
    char **co;               /* the COG copy's creation options */
    int bx, by;              /* its tile size */
    char files[4400];
};


/* GDAL keeps what a GeoTIFF cannot hold (a class raster's RAT) in PATH.aux.xml beside it: it
 * travels with its raster. */
static void unlink_aux(const char *path)
{
    char a[4300];
    snprintf(a, sizeof a, "%s.aux.xml", path);
    unlink(a);
}

/* Renames a raster and its .aux.xml (a stale one at the target goes). */
static int rename_raster(const char *from, const char *to)
{
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s.aux.xml", from);
    snprintf(b, sizeof b, "%s.aux.xml", to);
    if (dm_exists(a) ? rename(a, b) != 0 : (unlink(b) != 0 && errno != ENOENT))
        return -1;
    return rename(from, to);
}

static int nregions(const dm_out *o) { return o->side ? o->nrx * o->nry : 1; }

int dm_out_nregions(const dm_out *o) { return nregions(o); }
int dm_out_block_side(const dm_out *o) { return o ? o->side : 0; }

dm_region dm_out_region(const dm_out *o, int i)
{
    dm_region r = { 0, 0, o->s.width, o->s.height };
    if (o->side) {
        r.x = (i % o->nrx) * o->side;
        r.y = (i / o->nrx) * o->side;
        r.w = o->s.width - r.x < o->side ? o->s.width - r.x : o->side;
        r.h = o->s.height - r.y < o->side ? o->s.height - r.y : o->side;
    }
    return r;
}

/* Where region i's COG goes: dir/name.tif, or dir/name_blocks/name_rRRR_cCCC.tif. */
static void region_path(const dm_out *o, int i, char *p, size_t n)
{
    if (!o->side)
        snprintf(p, n, "%s/%s.tif", o->dir, o->name);
    else
        snprintf(p, n, "%s/%s_blocks/%s_r%03d_c%03d.tif", o->dir, o->name, o->name, i / o->nrx,
                 i % o->nrx);
}

int dm_out_create(const dm_out_spec *s, dm_out **out, dm_err *err)
{
    *out = NULL;
    GDALAllRegister();
    if (s->width < 1 || s->height < 1 || s->bands < 1)
        return dm_err_set(err, DM_EINVAL, "%s: empty raster (%d×%d px, %d bands)", s->name,
                          s->width, s->height, s->bands);
    dm_out *o = calloc(1, sizeof *o);
    if (!o)
        return dm_err_oom(err);
    o->s = *s;
    o->dir = strdup(s->dir);
    o->name = strdup(s->name);
    o->cur = -1;
    double bpp = (double)s->bands * (s->byte ? 1 : 4);
    if (s->side > 0) {
        o->side = s->side;
        o->nrx = (s->width + o->side - 1) / o->side;
        o->nry = (s->height + o->side - 1) / o->side;
    } else if (s->max_bytes > 0 && (double)s->width * s->height * bpp > s->max_bytes) {
        int align = s->block_align > 0 ? s->block_align : 1;
        int side = (int)floor(sqrt(s->max_bytes / bpp));
        side = side / align * align;
        o->side = side < align ? align : side;
        o->nrx = (s->width + o->side - 1) / o->side;
        o->nry = (s->height + o->side - 1) / o->side;
    }
    o->parts = calloc((size_t)nregions(o), sizeof *o->parts);
    if (!o->dir || !o->name || !o->parts) {
        dm_out_free(o);
        return dm_err_oom(err);
    }
    if (!(o->co = dm_cog_options(s->co, s->byte, &o->bx, &o->by, err))) {
        dm_err_prefix(err, "%s", s->name);
        dm_out_free(o);
        return DM_EINVAL;
    }
    if (o->side) {
        char d[4200];
        snprintf(d, sizeof d, "%s/%s_blocks", o->dir, o->name);
        if (dm_mkdir_p(d) != 0) {
            dm_out_free(o);
            return dm_err_set(err, DM_EIO, "%s: cannot create", d);
        }
    }
    *out = o;
    return 0;
}

/* A class raster's colour table (the classes' colours; every other value transparent) and its
 * Raster Attribute Table (Value, Class, Red, Green, Blue: class names for QGIS >= 3.30, ArcGIS;
 * GDAL keeps it in the GeoTIFF's .aux.xml, the COG copy carries it over). */
static void describe_classes(const dm_out_spec *s, GDALRasterBandH h)
{
    GDALColorTableH ct = GDALCreateColorTable(GPI_RGB);
    GDALColorEntry none = { 0, 0, 0, 0 };
    for (int v = 0; v < 256; v++)
        GDALSetColorEntry(ct, v, &none);
    for (int i = 0; i < s->nclasses; i++) {
        const dm_out_class *c = &s->classes[i];
        GDALColorEntry e = { c->rgb[0], c->rgb[1], c->rgb[2], 255 };
        GDALSetColorEntry(ct, c->value, &e);
    }
    GDALSetRasterColorTable(h, ct);
    GDALDestroyColorTable(ct);
    GDALRasterAttributeTableH rat = GDALCreateRasterAttributeTable();
    GDALRATSetTableType(rat, GRTT_THEMATIC);
    GDALRATCreateColumn(rat, "Value", GFT_Integer, GFU_MinMax);
    GDALRATCreateColumn(rat, "Class", GFT_String, GFU_Name);
    GDALRATCreateColumn(rat, "Red", GFT_Integer, GFU_Red);
    GDALRATCreateColumn(rat, "Green", GFT_Integer, GFU_Green);
    GDALRATCreateColumn(rat, "Blue", GFT_Integer, GFU_Blue);
    GDALRATSetRowCount(rat, s->nclasses);
    for (int i = 0; i < s->nclasses; i++) {
        const dm_out_class *c = &s->classes[i];
        GDALRATSetValueAsInt(rat, i, 0, c->value);
        GDALRATSetValueAsString(rat, i, 1, c->name);
        for (int k = 0; k < 3; k++)
            GDALRATSetValueAsInt(rat, i, 2 + k, c->rgb[k]);
    }
    GDALSetDefaultRAT(h, rat);
    GDALDestroyRasterAttributeTable(rat);
}

static void describe(const dm_out *o, GDALDatasetH d, const double gt[6])
{
    const dm_out_spec *s = &o->s;
    GDALSetGeoTransform(d, (double *)gt);
    if (s->wkt && s->wkt[0])
        GDALSetProjection(d, s->wkt);
    for (int i = 0; s->meta && s->meta[i]; i++) {
        char *key = NULL;
        const char *val = CPLParseNameValue(s->meta[i], &key);
        if (key && val)
            GDALSetMetadataItem(d, key, val, NULL);
        CPLFree(key);
    }
    stamp(d);
    static const GDALColorInterp rgb[3] = { GCI_RedBand, GCI_GreenBand, GCI_BlueBand };
    for (int b = 0; b < s->bands; b++) {
        GDALRasterBandH h = GDALGetRasterBand(d, b + 1);
        GDALSetRasterNoDataValue(h, s->nodata);
        if (s->band_names)
            GDALSetDescription(h, s->band_names[b]);
        if (s->scale) {
            GDALSetRasterScale(h, s->scale[b]);
            GDALSetRasterOffset(h, -128.0 * s->scale[b]);
        }
        if (s->rgb && b < 3)
            GDALSetRasterColorInterpretation(h, rgb[b]);
        if (s->unit)
            GDALSetRasterUnitType(h, s->unit);
        if (s->classes && s->byte && b == 0)
            describe_classes(s, h);
    }
}

int dm_out_begin(dm_out *o, int region, dm_err *err)
{
    if (o->cur >= 0 || region < 0 || region >= nregions(o))
        return dm_err_set(err, DM_EINVAL, "%s: region %d out of order (a bug)", o->name, region);
    o->reg = dm_out_region(o, region);
    char p[4200];
    region_path(o, region, p, sizeof p);
    snprintf(o->tmp_path, sizeof o->tmp_path, "%s.tmp.tif", p);
    dm_unlink_fresh(o->tmp_path);
    char **co = tiled(NULL, o->bx, o->by);
    /* uncompressed: read back once, and no codec buffers churning the heap (finalize of a
     * 19,968² px run: 312 MB peak this way, 385 MB with ZSTD) */
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    o->tmp = GDALCreate(GDALGetDriverByName("GTiff"), o->tmp_path, o->reg.w, o->reg.h, o->s.bands,
                        o->s.byte ? GDT_Byte : GDT_Float32, co);
    CPLPopErrorHandler();
    CSLDestroy(co);
    if (!o->tmp) {
        dm_err_set(err, DM_EIO, "%s: cannot create: %s", o->tmp_path, dm_gdal_msg());
        return dm_err_space(err, o->tmp_path, 0);
    }
    const double *g = o->s.gt;
    double gt[6] = { g[0] + o->reg.x * g[1], g[1], 0, g[3] + o->reg.y * g[5], 0, g[5] };
    describe(o, o->tmp, gt);
    o->cur = region;
    return 0;
}

int dm_out_write(dm_out *o, int x, int y, int w, int h, const void *buf, dm_err *err)
{
    int rx = x - o->reg.x, ry = y - o->reg.y;
    if (o->cur < 0 || rx < 0 || ry < 0 || rx + w > o->reg.w || ry + h > o->reg.h)
        return dm_err_set(err, DM_EINVAL, "%s: window %d,%d %d×%d outside the region (a bug)",
                          o->name, x, y, w, h);
    int sz = o->s.byte ? 1 : 4;
    CPLErrorReset();
    if (GDALDatasetRasterIO(o->tmp, GF_Write, rx, ry, w, h, (void *)buf, w, h,
                            o->s.byte ? GDT_Byte : GDT_Float32, o->s.bands, NULL, sz,
                            (GSpacing)sz * w, (GSpacing)sz * w * h) != CE_None) {
        dm_err_set(err, DM_EIO, "%s: write failed: %s", o->tmp_path, dm_gdal_msg());
        return dm_err_space(err, o->tmp_path, 0);
    }
    return 0;
}

/* GDAL's progress callback: FALSE stops the work when the run was told to stop. */
static int CPL_STDCALL keep_going(double done, const char *msg, void *ctx)
{
    (void)done, (void)msg;
    const dm_out *o = ctx;
    return !(o->s.cancel && *o->s.cancel);
}

static int stopped(const dm_out *o, dm_err *err)
{
    return dm_err_set(err, DM_EINTERRUPTED, "interrupted while writing %s: the chunks are kept; "
                      "run the same command (or dinomap finalize) again", o->name);
}

int dm_out_end(dm_out *o, dm_err *err)
{
    if (o->cur < 0)
        return dm_err_set(err, DM_EINVAL, "%s: no region open (a bug)", o->name);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALClose(o->tmp); /* fills the blocks never written with nodata */
    o->tmp = NULL;
    int rc = 0;
    if (CPLGetLastErrorType() >= CE_Failure)
        rc = dm_err_set(err, DM_EIO, "%s: write failed: %s", o->tmp_path, dm_gdal_msg());
    /* overviews by halves until one fits in a COG tile */
    GDALDatasetH d = rc ? NULL : GDALOpen(o->tmp_path, GA_Update);
    if (!rc && !d)
        rc = dm_err_set(err, DM_EIO, "%s: cannot reopen: %s", o->tmp_path, dm_gdal_msg());
    int lev[32], nl = 0;
    for (int f = 2; nl < 30 && (o->reg.w > o->bx * (f / 2) || o->reg.h > o->by * (f / 2)); f *= 2)
        lev[nl++] = f;
    if (d) /* the time the raster is written, not when its first window was */
        stamp(d);
    /* the overview levels first (empty), then band by band: GDAL's all-bands path holds a
     * strip of every band at once (224 MB for 128 bands, growing with the band count) */
    if (!rc && nl && GDALBuildOverviews(d, "NONE", nl, lev, 0, NULL, NULL, NULL) != CE_None)
        rc = dm_err_set(err, DM_EIO, "%s: cannot build overviews: %s", o->tmp_path, dm_gdal_msg());
    for (int b = 1; !rc && nl && b <= o->s.bands; b++) {
        GDALRasterBandH src = GDALGetRasterBand(d, b), ov[32];
        int n = GDALGetOverviewCount(src);
        for (int i = 0; i < n && i < 32; i++)
            ov[i] = GDALGetOverview(src, i);
        if (GDALRegenerateOverviews(src, n < 32 ? n : 32, ov, o->s.resampling, keep_going, o) !=
            CE_None)
            rc = keep_going(0, NULL, o) ? dm_err_set(err, DM_EIO, "%s: cannot build overviews: %s",
                                                     o->tmp_path, dm_gdal_msg())
                                        : stopped(o, err);
    }
    if (d) {
        CPLErrorReset();
        GDALClose(d);
        if (!rc && CPLGetLastErrorType() >= CE_Failure)
            rc = dm_err_set(err, DM_EIO, "%s: write failed: %s", o->tmp_path, dm_gdal_msg());
    }
    char p[4200], part[4300];
    region_path(o, o->cur, p, sizeof p);
    snprintf(part, sizeof part, "%s.part", p);
    dm_unlink_fresh(part);
    d = rc ? NULL : GDALOpen(o->tmp_path, GA_ReadOnly);
    if (!rc && !d)
        rc = dm_err_set(err, DM_EIO, "%s: cannot reopen: %s", o->tmp_path, dm_gdal_msg());
    if (!rc) {
        CPLErrorReset();
        GDALDatasetH c = GDALCreateCopy(GDALGetDriverByName("GTiff"), part, d, FALSE, o->co,
                                        keep_going, o);
        if (c) {
            CPLErrorReset();
            GDALClose(c);
        }
        if (!c || CPLGetLastErrorType() >= CE_Failure) {
            rc = !keep_going(0, NULL, o) ? stopped(o, err)
                                         : dm_err_set(err, DM_EIO, "%s: cannot write the "
                                                      "Cloud-Optimized GeoTIFF: %s", p,
                                                      dm_gdal_msg());
            VSIUnlink(part);
            unlink_aux(part);
        }
    }
    if (d)
        GDALClose(d);
    if (rc == DM_EIO) /* before the temporary file gives its room back */
        dm_err_space(err, o->tmp_path, 0);
    GDALDeleteDataset(GDALGetDriverByName("GTiff"), o->tmp_path); /* with its .ovr */
    VSIUnlink(o->tmp_path);
    unlink_aux(o->tmp_path);
    CPLPopErrorHandler();
    if (!rc && !(o->parts[o->cur] = strdup(part)))
        rc = dm_err_oom(err);
    o->cur = -1;
    return rc;
}

int dm_out_commit(dm_out *o, dm_err *err)
{
    int n = nregions(o);
    for (int i = 0; i < n; i++)
        if (!o->parts[i])
            return dm_err_set(err, DM_EINVAL, "%s: region %d was never written (a bug)", o->name,
                              i);
    char p[4200];
    /* the other layout, left by an earlier finalize of another size, goes */
    if (o->side) {
        snprintf(p, sizeof p, "%s/%s.tif", o->dir, o->name);
        unlink(p);
        unlink_aux(p);
    } else {
        snprintf(p, sizeof p, "%s/%s.vrt", o->dir, o->name);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s_blocks", o->dir, o->name);
        dm_remove_tree(p, NULL);
    }
    for (int i = 0; i < n; i++) {
        region_path(o, i, p, sizeof p);
        if (rename_raster(o->parts[i], p) != 0)
            return dm_err_set(err, DM_EIO, "%s: cannot rename into place", p);
        free(o->parts[i]);
        o->parts[i] = NULL;
    }
    if (!o->side) {
        snprintf(o->files, sizeof o->files, "%s.tif", o->name);
        return 0;
    }
    /* the mosaic VRT over the blocks, with relative paths so the folder can move */
    char **files = NULL, vrt[4200], part[4300];
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s_blocks/%s_r%03d_c%03d.tif", o->name, o->name, i / o->nrx,
                 i % o->nrx);
        files = CSLAddString(files, p);
    }
    snprintf(vrt, sizeof vrt, "%s/%s.vrt", o->dir, o->name);
    snprintf(part, sizeof part, "%s.part.vrt", vrt);
    dm_unlink_fresh(part);
    char cwd[4096];
    int rc = 0;
    if (!getcwd(cwd, sizeof cwd) || chdir(o->dir) != 0) {
        CSLDestroy(files);
        return dm_err_set(err, DM_EIO, "%s: cannot enter the folder to build the VRT", o->dir);
    }
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    char rel_part[4400];
    snprintf(rel_part, sizeof rel_part, "%s.vrt.part.vrt", o->name);
    GDALBuildVRTOptions *bo = GDALBuildVRTOptionsNew(NULL, NULL);
    GDALDatasetH v = GDALBuildVRT(rel_part, n, NULL, (const char *const *)files, bo, NULL);
    GDALBuildVRTOptionsFree(bo);
    if (v) {
        const double *g = o->s.gt;
        describe(o, v, g);
        GDALClose(v);
    }
    if (!v || CPLGetLastErrorType() >= CE_Failure)
        rc = dm_err_set(err, DM_EIO, "%s: cannot build the mosaic VRT: %s", vrt, dm_gdal_msg());
    CPLPopErrorHandler();
    CSLDestroy(files);
    if (chdir(cwd) != 0 && !rc)
        rc = dm_err_set(err, DM_EIO, "cannot return to %s", cwd);
    if (!rc && rename(part, vrt) != 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot rename into place", vrt);
    if (rc)
        unlink(part);
    snprintf(o->files, sizeof o->files, "%s.vrt %s_blocks/", o->name, o->name);
    return rc;
}

const char *dm_out_files(const dm_out *o) { return o->files; }

void dm_out_free(dm_out *o)
{
    if (!o)
        return;
    if (o->tmp) {
        CPLPushErrorHandler(CPLQuietErrorHandler);
        GDALClose(o->tmp);
        GDALDeleteDataset(GDALGetDriverByName("GTiff"), o->tmp_path);
        VSIUnlink(o->tmp_path);
        unlink_aux(o->tmp_path);
        CPLPopErrorHandler();
    }
    for (int i = 0; o->parts && i < nregions(o); i++)
        if (o->parts[i]) {
            unlink(o->parts[i]);
            unlink_aux(o->parts[i]);
            free(o->parts[i]);
        }
    free(o->parts);
    CSLDestroy(o->co);
    free(o->dir);
    free(o->name);
    free(o);
}

int dm_out_remove(const char *dir, const char *name, dm_err *err)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/%s.tif", dir, name);
    unlink(p);
    unlink_aux(p);
    snprintf(p, sizeof p, "%s/%s.vrt", dir, name);
    unlink(p);
    snprintf(p, sizeof p, "%s/%s.zarr", dir, name);
    if (dm_remove_tree(p, err))
        return DM_EIO;
    snprintf(p, sizeof p, "%s/%s_blocks", dir, name);
    return dm_remove_tree(p, err);
}

/* --- QGIS styles ----------------------------------------------------------------------------- */

int dm_gis_write_qml(const char *path, const dm_ramp_stop *st, int n, dm_err *err)
{
    if (n < 2)
        return dm_err_set(err, DM_EINVAL, "%s: a ramp needs two stops", path);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return dm_err_oom(err);
    double lo = st[0].value, hi = st[n - 1].value;
    fprintf(f, "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
               "<qgis version=\"3.22\" styleCategories=\"AllStyleCategories\">\n"
               "  <pipe>\n"
               "    <rasterrenderer type=\"singlebandpseudocolor\" band=\"1\" opacity=\"1\" "
               "alphaBand=\"-1\" nodataColor=\"\" classificationMin=\"%g\" "
               "classificationMax=\"%g\">\n"
               "      <rastershader>\n"
               "        <colorrampshader colorRampType=\"INTERPOLATED\" classificationMode=\"1\" "
               "clip=\"0\" minimumValue=\"%g\" maximumValue=\"%g\">\n", lo, hi, lo, hi);
    for (int i = 0; i < n; i++)
        fprintf(f, "          <item value=\"%g\" label=\"%s\" color=\"%s\" alpha=\"255\"/>\n",
                st[i].value, st[i].label, st[i].color);
    fprintf(f, "        </colorrampshader>\n"
               "      </rastershader>\n"
               "    </rasterrenderer>\n"
               "  </pipe>\n"
               "</qgis>\n");
    fclose(f);
    int rc = dm_write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}

/* s with XML's five special characters escaped (for attribute values), into buf. */
static const char *xml_attr(const char *s, char *buf, size_t n)
{
    size_t k = 0;
    for (; *s && k + 7 < n; s++) {
        const char *e = *s == '&' ? "&amp;" : *s == '<' ? "&lt;" : *s == '>' ? "&gt;"
                        : *s == '"' ? "&quot;" : *s == '\'' ? "&apos;" : NULL;
        if (e)
            k += (size_t)snprintf(buf + k, n - k, "%s", e);
        else
            buf[k++] = *s;
    }
    buf[k] = '\0';
    return buf;
}

int dm_gis_write_qml_classes(const char *path, const dm_out_class *c, int n, dm_err *err)
{
    char *buf = NULL, name[512];
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return dm_err_oom(err);
    fprintf(f, "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
               "<qgis version=\"3.22\" styleCategories=\"AllStyleCategories\">\n"
               "  <pipe>\n"
               "    <rasterrenderer type=\"paletted\" band=\"1\" opacity=\"1\" alphaBand=\"-1\" "
               "nodataColor=\"\">\n"
               "      <colorPalette>\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "        <paletteEntry value=\"%d\" color=\"#%02x%02x%02x\" label=\"%s\" "
                   "alpha=\"255\"/>\n", c[i].value, c[i].rgb[0], c[i].rgb[1], c[i].rgb[2],
                xml_attr(c[i].name, name, sizeof name));
    fprintf(f, "      </colorPalette>\n"
               "    </rasterrenderer>\n"
               "  </pipe>\n"
               "</qgis>\n");
    fclose(f);
    int rc = dm_write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}

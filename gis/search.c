/* gis/search.c — the tile index's side of `dinomap search`: its search files (gis.h) are built
 * from the index's done tiles and one embedding (read only, in one query, streamed into the
 * writer of gis/search_file.c), reused while the index is unchanged, rebuilt when it changed or
 * when the file fails its checks; points moved to longitude/latitude, and the hits as a GeoJSON
 * layer in EPSG:4326 (RFC 7946). The scoring is gis/search_file.c's.
 */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include "srs_internal.h"
#include "search_internal.h"

#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_vsi.h>
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Little-endian float32 blob into v [dim]; 0 when its length is not dim floats or a value is not
 * finite (a damaged or forged index: the search file's int8 copy cannot hold NaN or Inf). */
static int blob_to(const GByte *b, int n, int dim, float *v)
{
    if (!b || n != 4 * dim)
        return 0;
    for (int i = 0; i < dim; i++) {
        uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                     (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
        memcpy(&v[i], &u, 4);
        if (!isfinite(v[i]))
            return 0;
    }
    return 1;
}

/* The first column of the first row of a query, as text (malloc'd), or NULL. */
static char *sql_text(GDALDatasetH ds, const char *sql)
{
    OGRLayerH r = GDALDatasetExecuteSQL(ds, sql, NULL, NULL);
    OGRFeatureH f = r ? OGR_L_GetNextFeature(r) : NULL;
    char *v = f && OGR_F_IsFieldSetAndNotNull(f, 0) ? strdup(OGR_F_GetFieldAsString(f, 0)) : NULL;
    if (f)
        OGR_F_Destroy(f);
    if (r)
        GDALDatasetReleaseResultSet(ds, r);
    return v;
}

static int64_t sql_int(GDALDatasetH ds, const char *sql)
{
    char *v = sql_text(ds, sql);
    int64_t x = v ? atoll(v) : 0;
    free(v);
    return x;
}

static int64_t index_gen(GDALDatasetH ds)
{
    return sql_int(ds, "SELECT value FROM config WHERE key = 'gen'");
}

/* What the file records of the index: the tiles' CRS and the run's model. */
typedef struct index_meta {
    char *wkt;
    char sha256[65], arch[48];
} index_meta;

static int read_meta(GDALDatasetH ds, const char *path, index_meta *m, dm_err *err)
{
    OGRLayerH tl = GDALDatasetGetLayerByName(ds, "tiles");
    if (!tl || !GDALDatasetGetLayerByName(ds, "embeddings"))
        return dm_err_set(err, DM_EFORMAT, "%s: not a dinomap tile index (no `tiles` layer or "
                          "`embeddings` table)", path);
    OGRSpatialReferenceH srs = OGR_L_GetSpatialRef(tl);
    char *w = NULL;
    if (srs && OSRExportToWkt(srs, &w) == OGRERR_NONE && w)
        m->wkt = strdup(w);
    else
        m->wkt = strdup("");
    CPLFree(w);
    char *c = sql_text(ds, "SELECT value FROM config WHERE key = 'config'");
    cJSON *j = c ? cJSON_Parse(c) : NULL;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "weights_sha256");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "arch");
    snprintf(m->sha256, sizeof m->sha256, "%s", cJSON_IsString(s) ? s->valuestring : "");
    snprintf(m->arch, sizeof m->arch, "%s", cJSON_IsString(a) ? a->valuestring : "");
    cJSON_Delete(j);
    free(c);
    return m->wkt ? 0 : dm_err_oom(err);
}

/* Streams the done tiles (ascending ids) and their `emb` vectors into w; 1 when they were not n
 * (the index changed since they were counted). */
static int stream(GDALDatasetH ds, const char *path, int emb, int dim, int64_t n,
                  dm_sfile_writer *w, dm_err *err)
{
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT t.tile_id AS tid, t.row AS r, t.col AS c, ST_MinX(t.geom) "
             "AS x0, ST_MinY(t.geom) AS y0, ST_MaxX(t.geom) AS x1, ST_MaxY(t.geom) AS y1, "
             "e.%s AS v FROM tiles t JOIN embeddings e ON e.tile_id = t.tile_id WHERE t.state = "
             "'done' ORDER BY t.tile_id", dm_emb_name(emb));
    OGRLayerH r = GDALDatasetExecuteSQL(ds, sql, NULL, NULL);
    if (!r)
        return dm_err_set(err, DM_EIO, "%s: cannot read the embeddings: %s", path, dm_gdal_msg());
    /* by name: OGR may take the tile id as the result's FID rather than a field */
    OGRFeatureDefnH fd = OGR_L_GetLayerDefn(r);
    static const char *names[] = { "tid", "r", "c", "x0", "y0", "x1", "y1", "v" };
    int fi[8], rc = 0;
    for (int i = 0; i < 8; i++)
        if ((fi[i] = OGR_FD_GetFieldIndex(fd, names[i])) < 0 && i > 0)
            rc = dm_err_set(err, DM_EFORMAT, "%s: the embeddings query has no column %s",
                            path, names[i]);
    float *v = rc ? NULL : malloc(sizeof *v * (size_t)dim);
    if (!rc && !v)
        rc = dm_err_oom(err);
    OGRFeatureH f;
    int64_t k = 0;
    while (rc == 0 && (f = OGR_L_GetNextFeature(r))) {
        int64_t id = fi[0] >= 0 ? OGR_F_GetFieldAsInteger64(f, fi[0]) : OGR_F_GetFID(f);
        double box[4];
        for (int i = 0; i < 4; i++)
            box[i] = OGR_F_GetFieldAsDouble(f, fi[3 + i]);
        int nb = 0;
        const GByte *b = OGR_F_GetFieldAsBinary(f, fi[7], &nb);
        if (!blob_to(b, nb, dim, v))
            rc = dm_err_set(err, DM_EFORMAT, "%s: tile %lld: its %s embedding is not %d finite "
                            "float32 values", path, (long long)id, dm_emb_name(emb), dim);
        else if (++k > n)
            rc = 1;
        else
            rc = dm_sfile_add(w, id, OGR_F_GetFieldAsInteger(f, fi[1]),
                              OGR_F_GetFieldAsInteger(f, fi[2]), box, v, err);
        OGR_F_Destroy(f);
    }
    GDALDatasetReleaseResultSet(ds, r);
    free(v);
    return !rc && k != n ? 1 : rc;
}

static int64_t mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static GDALDatasetH open_index(const char *path, dm_err *err)
{
    GDALAllRegister();
    const char *drivers[] = { "GPKG", NULL };
    VSIStatBufL st;
    if (VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) != 0) {
        dm_err_set(err, DM_EIO, "%s: cannot open: no such file (give a run folder or its "
                   "tiles.gpkg)", path);
        return NULL;
    }
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, drivers, NULL, NULL);
    if (!ds)
        dm_err_set(err, DM_EIO, "%s: cannot open as a tile index (a run folder or its "
                   "tiles.gpkg): %s", path, dm_gdal_msg());
    return ds;
}

/* The writer for n tiles: the file, or (it cannot be written) memory, said once. */
static int writer(const char **file, const dm_sfile_meta *fm, dm_sfile_writer **w, dm_err *err)
{
    int os_errno = 0;
    dm_err werr = { 0 };
    if (*file) {
        if (fm->n >= 100000)
            dm_info("building the search file %s (%lld tiles, %s embedding); once, until the "
                    "index changes", *file, (long long)fm->n, dm_emb_name(fm->emb));
        if (dm_sfile_create(*file, fm, w, &os_errno, &werr) == 0)
            return 0;
        if (!os_errno)
            return dm_err_set(err, werr.code, "%s", werr.msg);
        dm_warn("%s; searching an in-memory copy instead (built again at every search until "
                "it can be written)", werr.msg);
        *file = NULL;
    }
    return dm_sfile_create(NULL, fm, w, NULL, err);
}

/* Builds the search file of `index` (st: its stat, taken at t0, before anything was read; NULL:
 * not a local file, built in memory) and opens it. */
static int build(GDALDatasetH ds, const char *index, const struct stat *st, int64_t t0, int emb,
                 const char *file, dm_sindex **out, dm_err *err)
{
    index_meta m = { 0 };
    int rc = read_meta(ds, index, &m, err);
    int dim = rc ? 0 : (int)sql_int(ds, "SELECT e.dim FROM embeddings e JOIN tiles t ON "
                                        "t.tile_id = e.tile_id WHERE t.state = 'done' LIMIT 1");
    /* a run committing chunks meanwhile changes the count: read again (each query is its own
     * snapshot; one transaction over the whole read would hold the run's commits back) */
    for (int attempt = 0; !rc; attempt++) {
        int64_t n = sql_int(ds, "SELECT count(*) FROM embeddings e JOIN tiles t ON t.tile_id = "
                                "e.tile_id WHERE t.state = 'done'");
        if (dim <= 0 || n <= 0) {
            rc = dm_err_set(err, DM_EINVAL, "%s: no embeddings in the index (no tile done by a "
                            "features run yet?)", index);
            break;
        }
        dm_sfile_meta fm = { dim, emb, n, m.wkt, m.sha256, m.arch, 0, 0, 0, t0 };
        if (st)
            fm.src_size = st->st_size, fm.src_mtime_ns = mtime_ns(st), fm.src_gen = index_gen(ds);
        dm_sfile_writer *w = NULL;
        if ((rc = writer(&file, &fm, &w, err)))
            break;
        rc = stream(ds, index, emb, dim, n, w, err);
        if (rc) {
            dm_sfile_abort(w);
            if (rc == 1 && attempt < 4) {
                rc = 0;
                continue;
            }
            if (rc == 1)
                rc = dm_err_set(err, DM_EIO, "%s: changed while it was read (a run is "
                                "committing chunks?); search again", index);
            break;
        }
        rc = dm_sfile_commit(w, out, err);
        break;
    }
    free(m.wkt);
    return rc;
}

void dm_search_file_path(const char *index, int emb, char *buf, size_t n)
{
    size_t len = strlen(index);
    if (len > 5 && !strcmp(index + len - 5, ".gpkg"))
        len -= 5;
    snprintf(buf, n, "%.*s.%s.search", (int)len, index, dm_emb_name(emb));
}

/* Whether an opened file still describes the index (st: the index's stat now). Where the index
 * was written in the last 2 s before the file was built, its time could hide a later write (a
 * coarse clock, a file system with 1-2 s times): then its `gen` decides too. */
static int fresh(const dm_sindex *s, const struct stat *st, const char *index, char *why,
                 size_t n)
{
    const dm_sindex_info *in = dm_sindex_get_info(s);
    if (in->src_size != (int64_t)st->st_size || in->src_mtime_ns != mtime_ns(st))
        return snprintf(why, n, "the index changed since it was built"), 0;
    if (in->src_mtime_ns < in->built_ns - 2000000000LL)
        return 1;
    GDALDatasetH ds = open_index(index, NULL);
    int64_t gen = ds ? index_gen(ds) : -1;
    if (ds)
        GDALClose(ds);
    if (gen != in->src_gen)
        return snprintf(why, n, "the index's gen is %lld, the file's %lld", (long long)gen,
                        (long long)in->src_gen), 0;
    return 1;
}

int dm_search_open(const char *index, int emb, dm_sindex **out, dm_err *err)
{
    *out = NULL;
    char file[4200], why[200] = "";
    dm_search_file_path(index, emb, file, sizeof file);
    struct stat st;
    int64_t t0 = now_ns();
    int local = stat(index, &st) == 0 && S_ISREG(st.st_mode);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    dm_sindex *s = NULL;
    dm_err ferr = { 0 };
    if (!local) {
        snprintf(why, sizeof why, "not a local file");
    } else if (dm_sindex_open_file(file, &s, &ferr) == 0) {
        if (dm_sindex_get_info(s)->emb != emb)
            snprintf(why, sizeof why, "it holds another embedding");
        else if (fresh(s, &st, index, why, sizeof why))
            rc = 1;
        if (!rc)
            dm_sindex_close(s), s = NULL;
    } else if (dm_exists(file)) {
        snprintf(why, sizeof why, "%s", ferr.msg);
    } else {
        snprintf(why, sizeof why, "none yet");
    }
    if (rc == 1) {
        rc = 0;
    } else {
        if (why[0] && dm_exists(file))
            dm_log(DM_LOG_DEBUG, "%s: rebuilt (%s)", file, why);
        GDALDatasetH ds = open_index(index, err);
        rc = ds ? build(ds, index, local ? &st : NULL, t0, emb, local ? file : NULL, &s, err)
                : DM_EIO;
        if (ds)
            GDALClose(ds);
    }
    CPLPopErrorHandler();
    if (!rc && (rc = dm_sindex_set_origin(s, index, why[0] != 0, why)))
        rc = dm_err_oom(err);
    if (rc)
        dm_sindex_close(s);
    else
        *out = s;
    return rc;
}

/* A transformation from wkt to EPSG:4326 in longitude, latitude order. */
static OGRCoordinateTransformationH to_lonlat(const char *wkt, OGRSpatialReferenceH *a,
                                              OGRSpatialReferenceH *b)
{
    *a = OSRNewSpatialReference(NULL), *b = OSRNewSpatialReference(NULL);
    if (!*a || !*b || OSRImportFromWkt(*a, (char **)&wkt) != OGRERR_NONE ||
        OSRImportFromEPSG(*b, 4326) != OGRERR_NONE)
        return NULL;
    OSRSetAxisMappingStrategy(*a, OAMS_TRADITIONAL_GIS_ORDER);
    OSRSetAxisMappingStrategy(*b, OAMS_TRADITIONAL_GIS_ORDER);
    return OCTNewCoordinateTransformation(*a, *b);
}

int dm_gis_to_lonlat(const char *wkt, int n, double *x, double *y, dm_err *err)
{
    if (!wkt || !wkt[0])
        return dm_err_set(err, DM_EINVAL, "the index has no CRS: no longitude/latitude");
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRSpatialReferenceH a, b;
    OGRCoordinateTransformationH t = to_lonlat(wkt, &a, &b);
    int rc = 0;
    if (!t || !OCTTransform(t, n, x, y, NULL))
        rc = dm_err_set(err, DM_EINVAL, "cannot move points to EPSG:4326: %s", dm_gdal_msg());
    dm_srs_release(t, a, b);
    CPLPopErrorHandler();
    return rc;
}

static int add_field(OGRLayerH l, const char *name, OGRFieldType type)
{
    OGRFieldDefnH fd = OGR_Fld_Create(name, type);
    OGRErr e = OGR_L_CreateField(l, fd, TRUE);
    OGR_Fld_Destroy(fd);
    return e == OGRERR_NONE ? 0 : -1;
}

static int write_hits(GDALDatasetH ds, const dm_search_hit *h, int n, const char *path,
                      dm_err *err)
{
    OGRSpatialReferenceH ll = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(ll, 4326);
    OSRSetAxisMappingStrategy(ll, OAMS_TRADITIONAL_GIS_ORDER);
    const char *lopt[] = { "RFC7946=YES", NULL };
    OGRLayerH l = GDALDatasetCreateLayer(ds, "search", ll, wkbPolygon, (char **)lopt);
    OSRDestroySpatialReference(ll);
    if (!l || add_field(l, "rank", OFTInteger) || add_field(l, "score", OFTReal) ||
        add_field(l, "tile_id", OFTInteger64) || add_field(l, "row", OFTInteger) ||
        add_field(l, "col", OFTInteger) || add_field(l, "index", OFTString))
        return dm_err_set(err, DM_EIO, "%s: cannot create the layer: %s", path, dm_gdal_msg());
    int rc = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        /* the footprint's sides, 8 points each: straight in the index's CRS, curved in degrees */
        double x[33], y[33];
        const double *b = h[i].box;
        for (int s = 0; s < 4; s++)
            for (int j = 0; j < 8; j++) {
                double u = j / 8.0;
                int k = s * 8 + j;
                x[k] = s == 0 ? b[0] + u * (b[2] - b[0]) : s == 1 ? b[2]
                       : s == 2 ? b[2] - u * (b[2] - b[0]) : b[0];
                y[k] = s == 0 ? b[1] : s == 1 ? b[1] + u * (b[3] - b[1])
                       : s == 2 ? b[3] : b[3] - u * (b[3] - b[1]);
            }
        x[32] = x[0], y[32] = y[0];
        if ((rc = dm_gis_to_lonlat(h[i].wkt, 33, x, y, err)))
            break;
        OGRGeometryH ring = OGR_G_CreateGeometry(wkbLinearRing);
        for (int k = 0; k < 33; k++)
            OGR_G_AddPoint_2D(ring, x[k], y[k]);
        OGRGeometryH poly = OGR_G_CreateGeometry(wkbPolygon);
        OGR_G_AddGeometryDirectly(poly, ring);
        OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(l));
        OGR_F_SetFieldInteger(f, 0, h[i].rank);
        OGR_F_SetFieldDouble(f, 1, h[i].score);
        OGR_F_SetFieldInteger64(f, 2, h[i].id);
        OGR_F_SetFieldInteger(f, 3, h[i].row);
        OGR_F_SetFieldInteger(f, 4, h[i].col);
        OGR_F_SetFieldString(f, 5, h[i].index);
        OGR_F_SetGeometryDirectly(f, poly);
        if (OGR_L_CreateFeature(l, f) != OGRERR_NONE)
            rc = dm_err_set(err, DM_EIO, "%s: cannot write a feature: %s", path, dm_gdal_msg());
        OGR_F_Destroy(f);
    }
    return rc;
}

int dm_search_write_geojson(const char *path, const dm_search_hit *h, int n, dm_err *err)
{
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALDriverH drv = GDALGetDriverByName("GeoJSON");
    int rc = 0;
    GDALDatasetH ds = NULL;
    VSIUnlink(path); /* the driver does not overwrite */
    if (!drv)
        rc = dm_err_set(err, DM_EUNSUPPORTED, "this GDAL has no GeoJSON driver");
    else if (!(ds = GDALCreate(drv, path, 0, 0, 0, GDT_Unknown, NULL)))
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", path, dm_gdal_msg());
    if (rc == 0)
        rc = write_hits(ds, h, n, path, err);
    if (ds)
        GDALClose(ds);
    if (rc)
        VSIUnlink(path);
    CPLPopErrorHandler();
    return rc;
}

/* gis/tileindex.c — the run's tile index `tiles.gpkg`, written through OGR's GeoPackage driver so
 * that QGIS (and ogr2ogr, for merging shards) read it with no dinomap code. See gis.h; the run's
 * bookkeeping tables (config, inputs, samples) are in tileindex_run.c.
 *
 * Schema (every table is an OGR layer, so all of it is registered in gpkg_contents and visible to
 * GIS tools; the FID of each layer is its INTEGER PRIMARY KEY, named as below):
 *   tiles       (tile_id PK, geom POLYGON in the run CRS + R-tree, row, col, chunk, px0, py0, pw,
 *                ph, state TEXT, valid_fraction REAL, updated DATETIME)   indexes on state, chunk
 *   chunks      (chunk PK, state TEXT 'pending'|'done', file TEXT (space-separated), updated
 *                DATETIME, run_id INTEGER: the invocation that computed it)  index on state
 *   embeddings  (tile_id PK, dim INTEGER, cls BLOB, mean BLOB)  float32 little-endian, unit length
 *   runs        (run_id PK, started DATETIME, params TEXT (JSON), dim INTEGER, finished DATETIME,
 *                status TEXT)  one row per invocation, so a resumed run leaves a trace of each
 *   config      (config_id PK, key TEXT unique, value TEXT)  the run's configuration (JSON, hash)
 *                and counters: `gen` counts chunk commits, `finalized_gen` what finalize used
 *   inputs      (input_id PK, path, size, mtime_ns, x0, y0, w, h)  the files read, and where
 *   samples     (sample_id PK, chunk, px, py, u REAL, vec BLOB)  PCA sample candidates
 * tile_id (row * ncols + col) and chunk ids are global to the grid, so the index files of shards
 * merge with `ogr2ogr -append` (or INSERT OR REPLACE) without renumbering. A rerun reopens the
 * file (dm_tileindex_open) and skips the chunks whose state is 'done'; a chunk and its tiles change
 * state in one SQLite transaction, so the file never says "done" for half a chunk.
 *
 * SQLite locking is unsafe over NFS: one index per machine (shard), merged afterwards
 * (`ogr2ogr -append -preserve_fid all.gpkg shard.gpkg`, per layer). A dm_tileindex is used by one
 * thread at a time (the pipeline's writer). */
#define _LARGEFILE64_SOURCE /* VSIStatBufL is a struct stat64 */
#include "tileindex_internal.h"

#include <gdal.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <cpl_conv.h>
#include <cpl_error.h>
#include <cpl_string.h>
#include <cpl_vsi.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>


const char *dm_tile_state_name(dm_tile_state s)
{
    static const char *names[] = { "pending", "done", "empty", "outside_aoi", "failed" };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

static int state_from_name(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (s && strcmp(s, dm_tile_state_name((dm_tile_state)i)) == 0)
            return i;
    return -1;
}

const char *dm_gdal_msg(void)
{
    const char *m = CPLGetLastErrorMsg();
    return m && *m ? m : "no details from GDAL";
}
#define gdal_msg dm_gdal_msg

int dm_ti_fail(const dm_tileindex *ti, int code, const char *what, dm_err *err)
{
    dm_err_set(err, code, "tile index %s: %s: %s", ti->path, what, gdal_msg());
    return dm_err_space(err, ti->path, 0); /* SQLite: "database or disk is full" */
}
#define gdal_fail dm_ti_fail

/* OGR_F_SetFieldDateTimeEx wants broken-down UTC; milliseconds make successive updates
 * distinguishable in a fast run. */
void dm_ti_set_now(OGRFeatureH f, int idx)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    OGR_F_SetFieldDateTimeEx(f, idx, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                             tm.tm_min, (float)tm.tm_sec + (float)(ts.tv_nsec / 1000000) / 1000.0f,
                             100 /* UTC */);
}

/* Blobs are little-endian by contract, whatever the host. */
const unsigned char *dm_ti_blob(dm_tileindex *ti, const float *v, int n)
{
    size_t need = (size_t)n * 4;
    if (need > ti->blob_n) {
        unsigned char *b = realloc(ti->blob, need);
        if (!b)
            return NULL;
        ti->blob = b;
        ti->blob_n = need;
    }
    unsigned char *b = ti->blob;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        b[4 * i] = (unsigned char)u;
        b[4 * i + 1] = (unsigned char)(u >> 8);
        b[4 * i + 2] = (unsigned char)(u >> 16);
        b[4 * i + 3] = (unsigned char)(u >> 24);
    }
    return b;
}

/* Runs a statement that returns no rows (GPKG hands it to SQLite). ExecuteSQL reports failure only
 * through CPLError, hence the reset before. */
int dm_ti_exec(dm_tileindex *ti, const char *sql, dm_err *err)
{
    CPLErrorReset();
    OGRLayerH r = GDALDatasetExecuteSQL(ti->ds, sql, NULL, NULL);
    if (r)
        GDALDatasetReleaseResultSet(ti->ds, r);
    if (CPLGetLastErrorType() >= CE_Failure) {
        dm_err_set(err, DM_EIO, "tile index %s: `%s` failed: %s", ti->path, sql, gdal_msg());
        return dm_err_space(err, ti->path, 0);
    }
    return 0;
}

int dm_ti_exec_bound(dm_tileindex *ti, const char *sql, const char *text, int64_t number,
                     dm_err *err)
{
    sqlite3 *db = GDALGetInternalHandle(ti->ds, "SQLITE_HANDLE");
    if (!db)
        return dm_err_set(err, DM_EIO, "tile index %s: GDAL gives no SQLite connection for it", ti->path);
    sqlite3_stmt *st = NULL;
    int e = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (e == SQLITE_OK && sqlite3_bind_parameter_count(st) > 0)
        e = text ? sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT)
                 : sqlite3_bind_int64(st, 1, number);
    while (e == SQLITE_OK || e == SQLITE_ROW)
        e = sqlite3_step(st);
    int rc = 0;
    if (e != SQLITE_DONE)
        rc = dm_err_set(err, DM_EIO, "tile index %s: `%s` failed: %s", ti->path, sql,
                        sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static int add_field(dm_tileindex *ti, OGRLayerH l, const char *name, OGRFieldType t,
                     OGRFieldSubType st, dm_err *err)
{
    OGRFieldDefnH fd = OGR_Fld_Create(name, t);
    OGR_Fld_SetSubType(fd, st);
    OGRErr e = OGR_L_CreateField(l, fd, TRUE);
    OGR_Fld_Destroy(fd);
    if (e != OGRERR_NONE) {
        char what[128];
        snprintf(what, sizeof what, "cannot create field %s", name);
        return gdal_fail(ti, DM_EIO, what, err);
    }
    return 0;
}

static int field_index(dm_tileindex *ti, OGRLayerH l, const char *name, int *idx, dm_err *err)
{
    *idx = OGR_FD_GetFieldIndex(OGR_L_GetLayerDefn(l), name);
    if (*idx < 0)
        return dm_err_set(err, DM_EFORMAT, "tile index %s: layer %s has no field %s; is this a "
                          "dinomap tiles.gpkg? Start a new run folder", ti->path,
                          OGR_L_GetName(l), name);
    return 0;
}

/* The attribute tables: name, layer options, fields. */
#define MAX_FIELDS 7
typedef struct table_def {
    const char *name, *fid, *desc;
    struct { const char *name; OGRFieldType t; OGRFieldSubType st; } f[MAX_FIELDS];
} table_def;
static const table_def tables[] = {
    { "chunks", "FID=chunk", "DESCRIPTION=dinomap chunks: a rerun skips state=done",
      { { "state", OFTString, OFSTNone }, { "file", OFTString, OFSTNone },
        { "updated", OFTDateTime, OFSTNone }, { "run_id", OFTInteger64, OFSTNone } } },
    { "embeddings", "FID=tile_id",
      "DESCRIPTION=dinomap per-tile embeddings: float32 little-endian, unit length",
      { { "dim", OFTInteger, OFSTNone }, { "cls", OFTBinary, OFSTNone },
        { "mean", OFTBinary, OFSTNone } } },
    { "runs", "FID=run_id", "DESCRIPTION=dinomap runs (one row per invocation)",
      { { "started", OFTDateTime, OFSTNone }, { "params", OFTString, OFSTJSON },
        { "dim", OFTInteger, OFSTNone }, { "finished", OFTDateTime, OFSTNone },
        { "status", OFTString, OFSTNone } } },
    { "config", "FID=config_id", "DESCRIPTION=dinomap run configuration and counters",
      { { "key", OFTString, OFSTNone }, { "value", OFTString, OFSTNone } } },
    { "inputs", "FID=input_id",
      "DESCRIPTION=dinomap input files: size, mtime and the mosaic pixels they feed",
      { { "path", OFTString, OFSTNone }, { "size", OFTInteger64, OFSTNone },
        { "mtime_ns", OFTInteger64, OFSTNone }, { "x0", OFTInteger, OFSTNone },
        { "y0", OFTInteger, OFSTNone }, { "w", OFTInteger, OFSTNone },
        { "h", OFTInteger, OFSTNone } } },
    { "samples", "FID=sample_id",
      "DESCRIPTION=dinomap PCA sample: patch vectors with the smallest keys u",
      { { "chunk", OFTInteger, OFSTNone }, { "px", OFTInteger, OFSTNone },
        { "py", OFTInteger, OFSTNone }, { "u", OFTReal, OFSTNone },
        { "vec", OFTBinary, OFSTNone } } },
};
#define NTABLES (sizeof tables / sizeof tables[0])

static OGRLayerH *table_slot(dm_tileindex *ti, size_t k)
{
    OGRLayerH *dst[] = { &ti->chunks, &ti->emb, &ti->runs, &ti->config, &ti->inputs,
                         &ti->samples };
    return dst[k];
}

/* Finds the layers and their fields (after create, and when reopening). */
static int bind_layers(dm_tileindex *ti, dm_err *err)
{
    if (!(ti->tiles = GDALDatasetGetLayerByName(ti->ds, "tiles")))
        return dm_err_set(err, DM_EFORMAT, "tile index %s: no layer `tiles`; is this a dinomap "
                          "tiles.gpkg? Start a new run folder", ti->path);
    for (size_t k = 0; k < NTABLES; k++)
        if (!(*table_slot(ti, k) = GDALDatasetGetLayerByName(ti->ds, tables[k].name)))
            return dm_err_set(err, DM_EFORMAT, "tile index %s: no table `%s`; is this a tiles.gpkg "
                              "of this dinomap version? Start a new run folder (or --overwrite)",
                              ti->path, tables[k].name);
    struct { OGRLayerH l; const char *name; int *idx; } f[] = {
        { ti->tiles, "row", &ti->t_row }, { ti->tiles, "col", &ti->t_col },
        { ti->tiles, "chunk", &ti->t_chunk }, { ti->tiles, "px0", &ti->t_px0 },
        { ti->tiles, "py0", &ti->t_py0 }, { ti->tiles, "pw", &ti->t_pw },
        { ti->tiles, "ph", &ti->t_ph }, { ti->tiles, "state", &ti->t_state },
        { ti->tiles, "valid_fraction", &ti->t_vf }, { ti->tiles, "updated", &ti->t_upd },
        { ti->chunks, "state", &ti->c_state }, { ti->chunks, "file", &ti->c_file },
        { ti->chunks, "updated", &ti->c_upd }, { ti->chunks, "run_id", &ti->c_run },
        { ti->emb, "dim", &ti->e_dim }, { ti->emb, "cls", &ti->e_cls },
        { ti->emb, "mean", &ti->e_mean }, { ti->runs, "started", &ti->r_started },
        { ti->runs, "params", &ti->r_params }, { ti->runs, "dim", &ti->r_dim },
        { ti->runs, "finished", &ti->r_finished }, { ti->runs, "status", &ti->r_status },
        { ti->config, "key", &ti->k_key }, { ti->config, "value", &ti->k_value },
        { ti->inputs, "path", &ti->i_path }, { ti->inputs, "size", &ti->i_size },
        { ti->inputs, "mtime_ns", &ti->i_mtime }, { ti->inputs, "x0", &ti->i_x0 },
        { ti->inputs, "y0", &ti->i_y0 }, { ti->inputs, "w", &ti->i_w },
        { ti->inputs, "h", &ti->i_h }, { ti->samples, "chunk", &ti->s_chunk },
        { ti->samples, "px", &ti->s_px }, { ti->samples, "py", &ti->s_py },
        { ti->samples, "u", &ti->s_u }, { ti->samples, "vec", &ti->s_vec },
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        int rc = field_index(ti, f[i].l, f[i].name, f[i].idx, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int create_layers(dm_tileindex *ti, const char *crs_wkt, dm_err *err)
{
    OGRSpatialReferenceH srs = NULL;
    if (crs_wkt && *crs_wkt) {
        CPLErrorReset();
        if (!(srs = OSRNewSpatialReference(crs_wkt)))
            return dm_err_set(err, DM_EINVAL, "tile index %s: the output CRS is not valid WKT: %s",
                              ti->path, gdal_msg());
    }
    /* FID=tile_id makes the tile id the table's INTEGER PRIMARY KEY: look-ups by id are rowid
     * look-ups and QGIS shows it as the first column. */
    const char *topt[] = { "FID=tile_id", "GEOMETRY_NAME=geom", "SPATIAL_INDEX=YES",
                           "IDENTIFIER=dinomap tiles", "DESCRIPTION=dinomap tile footprints (core, "
                           "without halo) and their processing state", NULL };
    ti->tiles = GDALDatasetCreateLayer(ti->ds, "tiles", srs, wkbPolygon, (char **)topt);
    if (srs)
        OSRRelease(srs);
    if (!ti->tiles)
        return gdal_fail(ti, DM_EIO, "cannot create layer tiles", err);
    static const struct { const char *name; OGRFieldType t; } tf[] = {
        { "row", OFTInteger }, { "col", OFTInteger }, { "chunk", OFTInteger },
        { "px0", OFTInteger }, { "py0", OFTInteger }, { "pw", OFTInteger }, { "ph", OFTInteger },
        { "state", OFTString }, { "valid_fraction", OFTReal }, { "updated", OFTDateTime },
    };
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof tf / sizeof tf[0]; i++)
        rc = add_field(ti, ti->tiles, tf[i].name, tf[i].t, OFSTNone, err);

    /* The other tables are attribute-only layers (wkbNone): plain SQLite tables that GPKG also
     * registers, so QGIS lists them and ogr2ogr copies them. */
    for (size_t k = 0; rc == 0 && k < NTABLES; k++) {
        const char *opt[] = { tables[k].fid, tables[k].desc, NULL };
        char what[64];
        snprintf(what, sizeof what, "cannot create table %s", tables[k].name);
        OGRLayerH *dst = table_slot(ti, k);
        if (!(*dst = GDALDatasetCreateLayer(ti->ds, tables[k].name, NULL, wkbNone,
                                            (char **)opt)))
            rc = gdal_fail(ti, DM_EIO, what, err);
        for (int i = 0; rc == 0 && i < MAX_FIELDS && tables[k].f[i].name; i++)
            rc = add_field(ti, *dst, tables[k].f[i].name, tables[k].f[i].t, tables[k].f[i].st,
                           err);
    }

    /* state: counts and "what is left"; chunk: a chunk's tiles. ExecuteSQL first creates the
     * deferred tables, so the indexes find them. */
    static const char *idx[] = {
        "CREATE INDEX tiles_state_idx ON tiles(state)",
        "CREATE INDEX tiles_chunk_idx ON tiles(chunk)",
        "CREATE INDEX chunks_state_idx ON chunks(state)",
        "CREATE UNIQUE INDEX config_key_idx ON config(key)",
        "CREATE INDEX samples_chunk_idx ON samples(chunk)",
        "CREATE INDEX samples_u_idx ON samples(u)",
    };
    for (size_t i = 0; rc == 0 && i < sizeof idx / sizeof idx[0]; i++)
        rc = dm_ti_exec(ti, idx[i], err);
    return rc;
}

/* One row in `runs` for this invocation. */
static int add_run(dm_tileindex *ti, const char *run_json, dm_err *err)
{
    OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(ti->runs));
    if (!f)
        return dm_err_oom(err);
    dm_ti_set_now(f, ti->r_started);
    if (run_json)
        OGR_F_SetFieldString(f, ti->r_params, run_json);
    OGR_F_SetFieldInteger(f, ti->r_dim, ti->dim);
    int rc = 0;
    if (OGR_L_CreateFeature(ti->runs, f) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot record the run", err);
    else
        ti->run_id = OGR_F_GetFID(f);
    OGR_F_Destroy(f);
    return rc;
}

static int check_path(const char *path, int dim, dm_err *err)
{
    size_t n = path ? strlen(path) : 0;
    if (n < 6 || strcasecmp(path + n - 5, ".gpkg") != 0)
        return dm_err_set(err, DM_EINVAL, "tile index %s: the name must end in .gpkg (GDAL and "
                          "QGIS recognise GeoPackages by it), e.g. tiles.gpkg",
                          path ? path : "(null)");
    if (dim <= 0 || dim > (1 << 20))
        return dm_err_set(err, DM_EINVAL, "tile index %s: embedding length %d is not valid", path,
                          dim);
    return 0;
}

static dm_tileindex *alloc_index(const char *path, int dim, dm_err *err)
{
    dm_tileindex *ti = calloc(1, sizeof *ti);
    if (ti) {
        ti->path = strdup(path);
        ti->dim = dim;
    }
    if (!ti || !ti->path) {
        if (ti) {
            free(ti->path);
            free(ti->blob);
            free(ti);
        }
        dm_err_oom(err);
        return NULL;
    }
    return ti;
}

static void free_index(dm_tileindex *ti)
{
    if (ti->ds)
        GDALClose(ti->ds);
    free(ti->path);
    free(ti->blob);
    free(ti);
}

int dm_tileindex_create(const char *path, const char *crs_wkt, const char *run_json, int dim,
                        dm_tileindex **out, dm_err *err)
{
    *out = NULL;
    int rc = check_path(path, dim, err);
    if (rc)
        return rc;
    VSIStatBufL st; /* VSI, not stat(): /vsi paths work too */
    if (VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) == 0)
        return dm_err_set(err, DM_EIO, "tile index %s: already exists; a new run needs a new "
                          "output folder (or delete the file; to resume, reopen it instead)", path);
    dm_tileindex *ti = alloc_index(path, dim, err);
    if (!ti)
        return DM_ENOMEM;
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALDriverH drv = GDALGetDriverByName("GPKG");
    if (!drv)
        rc = dm_err_set(err, DM_EUNSUPPORTED, "tile index %s: this GDAL has no GPKG driver; "
                        "install a GDAL built with SQLite (Debian: libgdal32)", path);
    else if (!(ti->ds = GDALCreate(drv, path, 0, 0, 0, GDT_Unknown, NULL)))
        rc = gdal_fail(ti, DM_EIO, "cannot create (is the folder writable?)", err);
    int created = ti->ds != NULL;
    /* One transaction for the whole schema: fewer fsyncs, and no half-made file on success. */
    if (rc == 0 && GDALDatasetStartTransaction(ti->ds, FALSE) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot start a transaction", err);
    if (rc == 0)
        rc = create_layers(ti, crs_wkt, err);
    if (rc == 0)
        rc = bind_layers(ti, err);
    if (rc == 0)
        rc = add_run(ti, run_json, err);
    /* No CRS: the tiles layer is in GeoPackage's predefined "Undefined cartesian SRS" (srs_id
     * -1); OGR would put it in srs_id 0, the undefined *geographic* one, which tells QGIS the
     * pixel coordinates are degrees. */
    int undefined = !(crs_wkt && *crs_wkt);
    if (rc == 0 && undefined)
        rc = dm_ti_exec(ti, "UPDATE gpkg_contents SET srs_id = -1 WHERE table_name = 'tiles'", err);
    if (rc == 0 && undefined)
        rc = dm_ti_exec(ti, "UPDATE gpkg_geometry_columns SET srs_id = -1 WHERE table_name = "
                        "'tiles'", err);
    if (rc == 0 && GDALDatasetCommitTransaction(ti->ds) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot commit the new schema", err);
    /* reopened, so that OGR reads the layer's srs_id back and puts it in every geometry's header */
    if (rc == 0 && undefined) {
        GDALClose(ti->ds);
        const char *drivers[] = { "GPKG", NULL };
        if (!(ti->ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_UPDATE, drivers, NULL, NULL)))
            rc = gdal_fail(ti, DM_EIO, "cannot reopen the new index", err);
        if (rc == 0)
            rc = bind_layers(ti, err);
    }
    if (rc) {
        free_index(ti);
        /* SQLite's own words for a full disk are often lost in GDAL's (a missing table...): the
         * disk is asked while the half-made index still takes its space */
        int full = rc == DM_EIO && strncmp(path, "/vsi", 4) && dm_no_space(path, 0, err->msg);
        if (created)
            VSIUnlink(path); /* a half-made index would block the rerun */
        if (full)
            rc = dm_err_set(err, DM_EIO, "tile index %s: cannot be created: No space left on "
                            "device", path);
    }
    CPLPopErrorHandler();
    if (rc == 0)
        *out = ti;
    return rc;
}

static void journal_path(const char *path, char *j, size_t n)
{
    snprintf(j, n, "%s-journal", path);
}

/* A process killed inside a transaction leaves PATH-journal, which SQLite rolls back at the next
 * opening, but only for a connection that may write: a read-only one fails ("attempt to write a
 * readonly database") for as long as the journal is there, and a rerun would never resume. So a
 * reader first opens the file for update when a journal is there; SQLite's locks tell a dead
 * writer's journal from a live one's (which it leaves alone). 1 when a journal is still there. */
static int roll_back_journal(const char *path, const char *const *drivers)
{
    char j[4200];
    journal_path(path, j, sizeof j);
    VSIStatBufL st;
    if (VSIStatL(j, &st) != 0 || st.st_size == 0)
        return 0;
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_UPDATE, drivers, NULL, NULL);
    if (d)
        GDALClose(d);
    return VSIStatL(j, &st) == 0 && st.st_size > 0;
}

int dm_tileindex_unlink(const char *path)
{
    char j[4200];
    journal_path(path, j, sizeof j);
    int rc = unlink(path) != 0 && errno != ENOENT ? -1 : 0;
    if (unlink(j) != 0 && errno != ENOENT)
        rc = -1;
    return rc;
}

int dm_tileindex_place(const char *from, const char *to, dm_err *err)
{
    char j[4200];
    journal_path(to, j, sizeof j);
    if ((unlink(j) != 0 && errno != ENOENT) || dm_sync_file(from) != 0 || rename(from, to) != 0 ||
        dm_sync_parent(to) != 0) {
        int e = errno;
        dm_err_set(err, DM_EIO, "%s: cannot put into place: %s", to, strerror(e));
        return dm_err_space(err, to, e);
    }
    return 0;
}

/* mode 0: read only; 1: update, this invocation a new row of `runs`; 2: update, continuing the
 * last row (the index a run just created under another name). */
static int open_index(const char *path, int mode, const char *run_json, int dim,
                      dm_tileindex **out, dm_err *err)
{
    *out = NULL;
    int rc = check_path(path, dim ? dim : 1, err);
    if (rc)
        return rc;
    dm_tileindex *ti = alloc_index(path, dim, err);
    if (!ti)
        return DM_ENOMEM;
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    const char *drivers[] = { "GPKG", NULL };
    VSIStatBufL st;
    int journal = 0;
    if (VSIStatExL(path, &st, VSI_STAT_EXISTS_FLAG) != 0)
        rc = dm_err_set(err, DM_EIO, "tile index %s: no such file", path);
    else if (!mode)
        journal = roll_back_journal(path, drivers);
    if (!rc)
        ti->ds = GDALOpenEx(path, GDAL_OF_VECTOR | (mode ? GDAL_OF_UPDATE : 0), drivers, NULL,
                            NULL);
    if (!rc && !ti->ds) {
        const char *g = CPLGetLastErrorMsg();
        rc = dm_err_set(err, DM_EIO, "tile index %s: cannot open as a GeoPackage (a damaged or "
                        "overwritten file? a run folder's index cannot be rebuilt: start the run "
                        "afresh with --overwrite)%s%s", path, g && *g ? ": " : "", g ? g : "");
        if (journal) /* e.g. a folder this user may not write in */
            dm_err_prefix(err, "%s-journal holds a transaction of a process that was killed; it "
                          "is undone when the index is next opened by a process that may write "
                          "in the folder", path);
    }
    if (rc == 0)
        rc = bind_layers(ti, err);
    /* The embeddings already stored must have the same length as the ones this run adds. */
    if (rc == 0) {
        OGRFeatureH f;
        int stored = 0;
        GIntBig last = -1;
        OGR_L_ResetReading(ti->runs);
        while ((f = OGR_L_GetNextFeature(ti->runs))) {
            if (OGR_F_GetFID(f) > last) {
                last = OGR_F_GetFID(f);
                stored = OGR_F_GetFieldAsInteger(f, ti->r_dim);
            }
            OGR_F_Destroy(f);
        }
        if (mode == 2)
            ti->run_id = last;
        if (!dim)
            ti->dim = dim = stored;
        else if (stored != dim)
            rc = dm_err_set(err, DM_EINVAL, "tile index %s: holds embeddings of length %d but "
                            "this run makes %d; resume with the same model, or start a new run "
                            "folder", path, stored, dim);
    }
    if (rc == 0 && mode == 1)
        rc = add_run(ti, run_json, err);
    if (rc)
        free_index(ti);
    CPLPopErrorHandler();
    if (rc == 0)
        *out = ti;
    return rc;
}

int dm_tileindex_open(const char *path, const char *run_json, int dim, dm_tileindex **out,
                      dm_err *err)
{
    return open_index(path, run_json ? 1 : 0, run_json, dim, out, err);
}

int dm_tileindex_reopen(const char *path, int dim, dm_tileindex **out, dm_err *err)
{
    return open_index(path, 2, NULL, dim, out, err);
}

int dm_tileindex_dim(const dm_tileindex *ti) { return ti->dim; }
int64_t dm_tileindex_run_id(const dm_tileindex *ti) { return ti->run_id; }

/* Makes sure `chunks` has a row for chunk c (state pending when new). */
static int ensure_chunk(dm_tileindex *ti, int c, dm_err *err)
{
    OGRFeatureH f = OGR_L_GetFeature(ti->chunks, c);
    if (f) {
        OGR_F_Destroy(f);
        return 0;
    }
    f = OGR_F_Create(OGR_L_GetLayerDefn(ti->chunks));
    if (!f)
        return dm_err_oom(err);
    OGR_F_SetFID(f, c);
    OGR_F_SetFieldString(f, ti->c_state, "pending");
    dm_ti_set_now(f, ti->c_upd);
    int rc = 0;
    if (OGR_L_CreateFeature(ti->chunks, f) != OGRERR_NONE) {
        char what[64];
        snprintf(what, sizeof what, "cannot add chunk %d", c);
        rc = gdal_fail(ti, DM_EIO, what, err);
    }
    OGR_F_Destroy(f);
    return rc;
}

static int rollback(dm_tileindex *ti, int rc)
{
    GDALDatasetRollbackTransaction(ti->ds);
    return rc;
}

int dm_tileindex_add_tiles(dm_tileindex *ti, const dm_tile_rec *tiles, const dm_tile_state *states,
                           int n, dm_err *err)
{
    if (n <= 0)
        return 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    /* One feature and one polygon reused for every tile: only their values change. */
    OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(ti->tiles));
    OGRGeometryH poly = OGR_G_CreateGeometry(wkbPolygon);
    OGRGeometryH ring = OGR_G_CreateGeometry(wkbLinearRing);
    if (!f || !poly || !ring) {
        rc = dm_err_oom(err);
        OGR_G_DestroyGeometry(ring);
        ring = NULL;
    } else {
        for (int k = 0; k < 5; k++)
            OGR_G_AddPoint_2D(ring, 0, 0);
        OGR_G_AddGeometryDirectly(poly, ring);
        ring = OGR_G_GetGeometryRef(poly, 0);
    }
    if (rc == 0 && GDALDatasetStartTransaction(ti->ds, FALSE) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot start a transaction", err);
    int last_chunk = -1, have_last = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        const dm_tile_rec *t = &tiles[i];
        dm_tile_state s = states ? states[i] : DM_TILE_PENDING;
        if (t->id < 0 || !(t->minx < t->maxx && t->miny < t->maxy) || (unsigned)s > 4) {
            rc = rollback(ti, dm_err_set(err, DM_EINVAL, "tile index %s: tile %lld: bad id, "
                                         "footprint or state (a bug in the caller)", ti->path,
                                         (long long)t->id));
            break;
        }
        if (!have_last || t->chunk != last_chunk) {
            if ((rc = ensure_chunk(ti, t->chunk, err)) != 0) {
                rollback(ti, rc);
                break;
            }
            last_chunk = t->chunk;
            have_last = 1;
        }
        /* counter-clockwise exterior, as GeoPackage readers expect */
        OGR_G_SetPoint_2D(ring, 0, t->minx, t->miny);
        OGR_G_SetPoint_2D(ring, 1, t->maxx, t->miny);
        OGR_G_SetPoint_2D(ring, 2, t->maxx, t->maxy);
        OGR_G_SetPoint_2D(ring, 3, t->minx, t->maxy);
        OGR_G_SetPoint_2D(ring, 4, t->minx, t->miny);
        OGR_F_SetFID(f, t->id);
        OGR_F_SetGeometry(f, poly);
        OGR_F_SetFieldInteger(f, ti->t_row, t->row);
        OGR_F_SetFieldInteger(f, ti->t_col, t->col);
        OGR_F_SetFieldInteger(f, ti->t_chunk, t->chunk);
        OGR_F_SetFieldInteger(f, ti->t_px0, t->px0);
        OGR_F_SetFieldInteger(f, ti->t_py0, t->py0);
        OGR_F_SetFieldInteger(f, ti->t_pw, t->pw);
        OGR_F_SetFieldInteger(f, ti->t_ph, t->ph);
        OGR_F_SetFieldString(f, ti->t_state, dm_tile_state_name(s));
        OGR_F_SetFieldNull(f, ti->t_vf);
        dm_ti_set_now(f, ti->t_upd);
        if (OGR_L_CreateFeature(ti->tiles, f) != OGRERR_NONE) {
            char what[96];
            snprintf(what, sizeof what, "cannot add tile %lld (already there?)",
                     (long long)t->id);
            rc = rollback(ti, gdal_fail(ti, DM_EIO, what, err));
        }
    }
    if (rc == 0 && GDALDatasetCommitTransaction(ti->ds) != OGRERR_NONE)
        rc = rollback(ti, gdal_fail(ti, DM_EIO, "cannot commit the tiles", err));
    OGR_G_DestroyGeometry(poly);
    if (f)
        OGR_F_Destroy(f);
    CPLPopErrorHandler();
    return rc;
}

/* Updates one tile's state and replaces its embeddings row. */
static int tile_result(dm_tileindex *ti, int chunk, const dm_tile_result *r, OGRFeatureH ef,
                       dm_err *err)
{
    if ((unsigned)r->state > 4)
        return dm_err_set(err, DM_EINVAL, "tile index %s: tile %lld: state %d is not valid",
                          ti->path, (long long)r->id, (int)r->state);
    OGRFeatureH f = OGR_L_GetFeature(ti->tiles, r->id);
    if (!f)
        return dm_err_set(err, DM_EINVAL, "tile index %s: tile %lld is not in the index (a bug "
                          "in the caller: results must come from the indexed grid)", ti->path,
                          (long long)r->id);
    int rc = 0, tc = OGR_F_GetFieldAsInteger(f, ti->t_chunk);
    if (tc != chunk) {
        rc = dm_err_set(err, DM_EINVAL, "tile index %s: tile %lld belongs to chunk %d, not %d",
                        ti->path, (long long)r->id, tc, chunk);
    } else {
        OGR_F_SetFieldString(f, ti->t_state, dm_tile_state_name(r->state));
        OGR_F_SetFieldDouble(f, ti->t_vf, r->valid_fraction);
        dm_ti_set_now(f, ti->t_upd);
        if (OGR_L_SetFeature(ti->tiles, f) != OGRERR_NONE)
            rc = gdal_fail(ti, DM_EIO, "cannot update a tile", err);
    }
    OGR_F_Destroy(f);
    if (rc)
        return rc;
    /* Replace, not merge: a redone tile must not keep a vector from an earlier attempt. */
    OGRErr e = OGR_L_DeleteFeature(ti->emb, r->id);
    if (e != OGRERR_NONE && e != OGRERR_NON_EXISTING_FEATURE)
        return gdal_fail(ti, DM_EIO, "cannot replace an embedding", err);
    if (!r->cls && !r->mean)
        return 0;
    OGR_F_SetFID(ef, r->id);
    OGR_F_SetFieldInteger(ef, ti->e_dim, ti->dim);
    const float *v[2] = { r->cls, r->mean };
    int idx[2] = { ti->e_cls, ti->e_mean };
    for (int k = 0; k < 2; k++) {
        if (v[k]) {
            const unsigned char *b = dm_ti_blob(ti, v[k], ti->dim);
            if (!b)
                return dm_err_oom(err);
            OGR_F_SetFieldBinary(ef, idx[k], ti->dim * 4, b);
        } else {
            OGR_F_SetFieldNull(ef, idx[k]);
        }
    }
    if (OGR_L_CreateFeature(ti->emb, ef) != OGRERR_NONE)
        return gdal_fail(ti, DM_EIO, "cannot store an embedding", err);
    return 0;
}

int dm_tileindex_chunk_done(dm_tileindex *ti, int chunk, const char *file,
                            const dm_tile_result *res, int n, const dm_sample *samples,
                            int nsamples, int sdim, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    OGRFeatureH ef = OGR_F_Create(OGR_L_GetLayerDefn(ti->emb)), cf = NULL;
    if (!ef)
        rc = dm_err_oom(err);
    if (rc == 0 && GDALDatasetStartTransaction(ti->ds, FALSE) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot start a transaction", err);
    int in_tx = rc == 0;
    for (int i = 0; rc == 0 && i < n; i++)
        rc = tile_result(ti, chunk, &res[i], ef, err);
    if (rc == 0 && !(cf = OGR_L_GetFeature(ti->chunks, chunk)))
        rc = dm_err_set(err, DM_EINVAL, "tile index %s: chunk %d is not in the index (add its "
                        "tiles first)", ti->path, chunk);
    if (rc == 0) {
        OGR_F_SetFieldString(cf, ti->c_state, "done");
        if (file)
            OGR_F_SetFieldString(cf, ti->c_file, file);
        else
            OGR_F_SetFieldNull(cf, ti->c_file);
        dm_ti_set_now(cf, ti->c_upd);
        OGR_F_SetFieldInteger64(cf, ti->c_run, ti->run_id);
        if (OGR_L_SetFeature(ti->chunks, cf) != OGRERR_NONE)
            rc = gdal_fail(ti, DM_EIO, "cannot mark the chunk done", err);
    }
    if (rc == 0)
        rc = dm_ti_replace_samples(ti, chunk, samples, nsamples, sdim, err);
    if (rc == 0)
        rc = dm_ti_bump_gen(ti, err);
    if (rc == 0 && GDALDatasetCommitTransaction(ti->ds) != OGRERR_NONE)
        rc = gdal_fail(ti, DM_EIO, "cannot commit the chunk", err);
    if (rc && in_tx)
        GDALDatasetRollbackTransaction(ti->ds);
    if (rc)
        dm_err_prefix(err, "chunk %d not recorded", chunk);
    if (cf)
        OGR_F_Destroy(cf);
    if (ef)
        OGR_F_Destroy(ef);
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_counts(dm_tileindex *ti, int64_t counts[5], dm_err *err)
{
    for (int i = 0; i < 5; i++)
        counts[i] = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    OGRLayerH r = GDALDatasetExecuteSQL(ti->ds, "SELECT state, COUNT(*) AS n FROM tiles "
                                        "GROUP BY state", NULL, NULL);
    if (!r) {
        rc = gdal_fail(ti, DM_EIO, "cannot count tiles", err);
    } else {
        OGRFeatureH f;
        while (rc == 0 && (f = OGR_L_GetNextFeature(r))) {
            const char *name = OGR_F_GetFieldAsString(f, 0);
            int s = state_from_name(name);
            if (s < 0)
                rc = dm_err_set(err, DM_EFORMAT, "tile index %s: unknown tile state '%s'",
                                ti->path, name);
            else
                counts[s] = OGR_F_GetFieldAsInteger64(f, 1);
            OGR_F_Destroy(f);
        }
        GDALDatasetReleaseResultSet(ti->ds, r);
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_done_chunks(dm_tileindex *ti, int **chunks, int *n, dm_err *err)
{
    *chunks = NULL;
    *n = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0, cap = 0;
    OGRLayerH r = GDALDatasetExecuteSQL(ti->ds, "SELECT chunk FROM chunks WHERE state = 'done' "
                                        "ORDER BY chunk", NULL, NULL);
    if (!r) {
        rc = gdal_fail(ti, DM_EIO, "cannot list the chunks", err);
    } else {
        OGRFeatureH f;
        while (rc == 0 && (f = OGR_L_GetNextFeature(r))) {
            /* the selected primary key comes back as the FID, not as a field */
            GIntBig c = OGR_FD_GetFieldCount(OGR_F_GetDefnRef(f)) > 0
                            ? OGR_F_GetFieldAsInteger64(f, 0) : OGR_F_GetFID(f);
            if (*n == cap) {
                int *p = realloc(*chunks, sizeof **chunks * (size_t)(cap = cap ? 2 * cap : 64));
                if (!p)
                    rc = dm_err_oom(err);
                else
                    *chunks = p;
            }
            if (rc == 0)
                (*chunks)[(*n)++] = (int)c;
            OGR_F_Destroy(f);
        }
        GDALDatasetReleaseResultSet(ti->ds, r);
    }
    if (rc) {
        free(*chunks);
        *chunks = NULL;
        *n = 0;
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_close(dm_tileindex *ti, dm_err *err)
{
    if (!ti)
        return 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GDALClose(ti->ds); /* GDAL 3.6's GDALClose reports failure only through CPLError */
    ti->ds = NULL;
    int rc = 0;
    if (CPLGetLastErrorType() >= CE_Failure)
        rc = gdal_fail(ti, DM_EIO, "closing failed", err);
    CPLPopErrorHandler();
    free_index(ti);
    return rc;
}

/* gis/tileindex_run.c — the tile index's bookkeeping for resumable runs (see gis.h): the `config`
 * key/value table, how each invocation ended, the input fingerprints, resetting chunks whose
 * inputs changed, per-chunk run ids and the PCA sample. */
#include <cpl_conv.h>
#include <cpl_error.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tileindex_internal.h"

OGRFeatureH dm_ti_config_feature(dm_tileindex *ti, const char *key)
{
    char flt[300];
    snprintf(flt, sizeof flt, "key = '%s'", key); /* keys are dinomap's own words */
    OGR_L_SetAttributeFilter(ti->config, flt);
    OGR_L_ResetReading(ti->config);
    OGRFeatureH f = OGR_L_GetNextFeature(ti->config);
    OGR_L_SetAttributeFilter(ti->config, NULL);
    return f;
}

int dm_tileindex_config_get(dm_tileindex *ti, const char *key, char **value, dm_err *err)
{
    *value = NULL;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRFeatureH f = dm_ti_config_feature(ti, key);
    int rc = 0;
    if (f) {
        if (OGR_F_IsFieldSetAndNotNull(f, ti->k_value) &&
            !(*value = strdup(OGR_F_GetFieldAsString(f, ti->k_value))))
            rc = dm_err_oom(err);
        OGR_F_Destroy(f);
    } else if (CPLGetLastErrorType() >= CE_Failure) {
        rc = dm_ti_fail(ti, DM_EIO, "cannot read the configuration", err);
    }
    CPLPopErrorHandler();
    return rc;
}

/* Sets key = value without a transaction of its own (the caller's, or SQLite's per statement). */
static int config_put(dm_tileindex *ti, const char *key, const char *value, dm_err *err)
{
    OGRFeatureH f = dm_ti_config_feature(ti, key);
    int rc = 0, isnew = !f;
    if (!f && !(f = OGR_F_Create(OGR_L_GetLayerDefn(ti->config))))
        return dm_err_oom(err);
    OGR_F_SetFieldString(f, ti->k_key, key);
    OGR_F_SetFieldString(f, ti->k_value, value);
    if ((isnew ? OGR_L_CreateFeature(ti->config, f) : OGR_L_SetFeature(ti->config, f)) !=
        OGRERR_NONE) {
        char what[320];
        snprintf(what, sizeof what, "cannot store %s", key);
        rc = dm_ti_fail(ti, DM_EIO, what, err);
    }
    OGR_F_Destroy(f);
    return rc;
}

int dm_tileindex_config_set(dm_tileindex *ti, const char *key, const char *value, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = config_put(ti, key, value, err);
    CPLPopErrorHandler();
    return rc;
}

int dm_ti_bump_gen(dm_tileindex *ti, dm_err *err)
{
    OGRFeatureH f = dm_ti_config_feature(ti, "gen");
    long long g = f ? atoll(OGR_F_GetFieldAsString(f, ti->k_value)) : 0;
    if (f)
        OGR_F_Destroy(f);
    char v[32];
    snprintf(v, sizeof v, "%lld", g + 1);
    return config_put(ti, "gen", v, err);
}

int dm_tileindex_end_run(dm_tileindex *ti, const char *status, dm_err *err)
{
    if (!ti->run_id)
        return 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    OGRFeatureH f = OGR_L_GetFeature(ti->runs, ti->run_id);
    if (!f) {
        rc = dm_ti_fail(ti, DM_EIO, "cannot find this run's row", err);
    } else {
        dm_ti_set_now(f, ti->r_finished);
        OGR_F_SetFieldString(f, ti->r_status, status);
        if (OGR_L_SetFeature(ti->runs, f) != OGRERR_NONE)
            rc = dm_ti_fail(ti, DM_EIO, "cannot record how the run ended", err);
        OGR_F_Destroy(f);
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_ti_replace_samples(dm_tileindex *ti, int chunk, const dm_sample *s, int n, int sdim,
                          dm_err *err)
{
    char sql[128];
    snprintf(sql, sizeof sql, "DELETE FROM samples WHERE chunk = %d", chunk);
    int rc = dm_ti_exec(ti, sql, err);
    OGRFeatureH f = n > 0 ? OGR_F_Create(OGR_L_GetLayerDefn(ti->samples)) : NULL;
    if (n > 0 && !f)
        return dm_err_oom(err);
    for (int i = 0; rc == 0 && i < n; i++) {
        const unsigned char *b = dm_ti_blob(ti, s[i].v, sdim);
        if (!b) {
            rc = dm_err_oom(err);
            break;
        }
        OGR_F_SetFID(f, OGRNullFID);
        OGR_F_SetFieldInteger(f, ti->s_chunk, chunk);
        OGR_F_SetFieldInteger(f, ti->s_px, s[i].px);
        OGR_F_SetFieldInteger(f, ti->s_py, s[i].py);
        OGR_F_SetFieldDouble(f, ti->s_u, s[i].u);
        OGR_F_SetFieldBinary(f, ti->s_vec, sdim * 4, b);
        if (OGR_L_CreateFeature(ti->samples, f) != OGRERR_NONE)
            rc = dm_ti_fail(ti, DM_EIO, "cannot store a sample", err);
    }
    if (f)
        OGR_F_Destroy(f);
    return rc;
}

int dm_tileindex_samples(dm_tileindex *ti, int limit, int sdim, float *v, int *n, dm_err *err)
{
    *n = 0;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT vec FROM samples ORDER BY u, py, px LIMIT %d", limit);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRLayerH r = GDALDatasetExecuteSQL(ti->ds, sql, NULL, NULL);
    int rc = 0;
    if (!r) {
        rc = dm_ti_fail(ti, DM_EIO, "cannot read the PCA sample", err);
    } else {
        OGRFeatureH f;
        while (rc == 0 && *n < limit && (f = OGR_L_GetNextFeature(r))) {
            int nb = 0;
            const GByte *b = OGR_F_GetFieldAsBinary(f, 0, &nb);
            if (nb != sdim * 4) {
                rc = dm_err_set(err, DM_EFORMAT, "tile index %s: a sample of %d bytes, expected "
                                "%d", ti->path, nb, sdim * 4);
            } else {
                float *d = v + (size_t)*n * sdim;
                for (int i = 0; i < sdim; i++) {
                    uint32_t u = (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                                 (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
                    memcpy(&d[i], &u, 4);
                }
                (*n)++;
            }
            OGR_F_Destroy(f);
        }
        GDALDatasetReleaseResultSet(ti->ds, r);
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_chunk_runs(dm_tileindex *ti, int64_t **run_ids, int *n, dm_err *err)
{
    *run_ids = NULL;
    *n = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    GIntBig cnt = OGR_L_GetFeatureCount(ti->chunks, TRUE), max = -1;
    int64_t *v = calloc((size_t)(cnt > 0 ? cnt : 1), sizeof *v);
    if (!v)
        rc = dm_err_oom(err);
    OGRFeatureH f;
    OGR_L_ResetReading(ti->chunks);
    while (rc == 0 && (f = OGR_L_GetNextFeature(ti->chunks))) {
        GIntBig c = OGR_F_GetFID(f);
        if (c >= 0 && c < cnt) {
            v[c] = OGR_F_IsFieldSetAndNotNull(f, ti->c_run)
                       ? OGR_F_GetFieldAsInteger64(f, ti->c_run) : 0;
            max = c > max ? c : max;
        }
        OGR_F_Destroy(f);
    }
    CPLPopErrorHandler();
    if (rc) {
        free(v);
        return rc;
    }
    *run_ids = v;
    *n = (int)(max + 1);
    return 0;
}

static int store_inputs(dm_tileindex *ti, const dm_input_fp *fp, int n, dm_err *err)
{
    int rc = dm_ti_exec(ti, "DELETE FROM inputs", err);
    OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(ti->inputs));
    if (!f)
        return dm_err_oom(err);
    for (int i = 0; rc == 0 && i < n; i++) {
        OGR_F_SetFID(f, OGRNullFID);
        OGR_F_SetFieldString(f, ti->i_path, fp[i].path);
        OGR_F_SetFieldInteger64(f, ti->i_size, fp[i].size);
        OGR_F_SetFieldInteger64(f, ti->i_mtime, fp[i].mtime_ns);
        OGR_F_SetFieldInteger(f, ti->i_x0, fp[i].x0);
        OGR_F_SetFieldInteger(f, ti->i_y0, fp[i].y0);
        OGR_F_SetFieldInteger(f, ti->i_w, fp[i].w);
        OGR_F_SetFieldInteger(f, ti->i_h, fp[i].h);
        if (OGR_L_CreateFeature(ti->inputs, f) != OGRERR_NONE)
            rc = dm_ti_fail(ti, DM_EIO, "cannot store an input fingerprint", err);
    }
    OGR_F_Destroy(f);
    return rc;
}

int dm_tileindex_reset(dm_tileindex *ti, const int *chunks, int nchunks, const dm_input_fp *fp,
                       int nfp, const char *input_order, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0;
    if (GDALDatasetStartTransaction(ti->ds, FALSE) != OGRERR_NONE)
        rc = dm_ti_fail(ti, DM_EIO, "cannot start a transaction", err);
    int in_tx = rc == 0;
    char sql[256];
    for (int i = 0; rc == 0 && i < nchunks; i++) {
        snprintf(sql, sizeof sql, "UPDATE chunks SET state = 'pending' WHERE chunk = %d",
                 chunks[i]);
        rc = dm_ti_exec(ti, sql, err);
        if (rc == 0) {
            snprintf(sql, sizeof sql, "UPDATE tiles SET state = 'pending' WHERE chunk = %d AND "
                     "state <> 'outside_aoi'", chunks[i]);
            rc = dm_ti_exec(ti, sql, err);
        }
        if (rc == 0) { /* its PCA sample goes with it: a finalize before the redo must not use it */
            snprintf(sql, sizeof sql, "DELETE FROM samples WHERE chunk = %d", chunks[i]);
            rc = dm_ti_exec(ti, sql, err);
        }
    }
    if (rc == 0 && nchunks > 0) /* the outputs no longer match the chunks */
        rc = dm_ti_bump_gen(ti, err);
    if (rc == 0 && fp)
        rc = store_inputs(ti, fp, nfp, err);
    if (rc == 0 && input_order)
        rc = config_put(ti, "input_order", input_order, err);
    if (rc == 0 && GDALDatasetCommitTransaction(ti->ds) != OGRERR_NONE)
        rc = dm_ti_fail(ti, DM_EIO, "cannot commit", err);
    if (rc && in_tx)
        GDALDatasetRollbackTransaction(ti->ds);
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_inputs(dm_tileindex *ti, dm_input_fp **fp, int *n, dm_err *err)
{
    *fp = NULL;
    *n = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    int rc = 0, cap = 0;
    OGRFeatureH f;
    OGR_L_ResetReading(ti->inputs);
    while (rc == 0 && (f = OGR_L_GetNextFeature(ti->inputs))) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            dm_input_fp *p = realloc(*fp, sizeof *p * (size_t)cap);
            if (!p) {
                rc = dm_err_oom(err);
                OGR_F_Destroy(f);
                break;
            }
            *fp = p;
        }
        dm_input_fp *x = &(*fp)[*n];
        x->path = strdup(OGR_F_GetFieldAsString(f, ti->i_path));
        x->size = OGR_F_GetFieldAsInteger64(f, ti->i_size);
        x->mtime_ns = OGR_F_GetFieldAsInteger64(f, ti->i_mtime);
        x->x0 = OGR_F_GetFieldAsInteger(f, ti->i_x0);
        x->y0 = OGR_F_GetFieldAsInteger(f, ti->i_y0);
        x->w = OGR_F_GetFieldAsInteger(f, ti->i_w);
        x->h = OGR_F_GetFieldAsInteger(f, ti->i_h);
        if (!x->path)
            rc = dm_err_oom(err);
        else
            (*n)++;
        OGR_F_Destroy(f);
    }
    CPLPopErrorHandler();
    if (rc) {
        dm_input_fp_free(*fp, *n);
        *fp = NULL;
        *n = 0;
    }
    return rc;
}

int dm_tileindex_chunks(dm_tileindex *ti, uint8_t **done, char ***files, int *n, dm_err *err)
{
    *done = NULL;
    *files = NULL;
    *n = 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GIntBig cnt = OGR_L_GetFeatureCount(ti->chunks, TRUE);
    size_t m = (size_t)(cnt > 0 ? cnt : 1);
    uint8_t *d = calloc(m, 1);
    char **f = calloc(m, sizeof *f);
    int rc = d && f ? 0 : dm_err_oom(err), max = -1;
    OGRFeatureH ft;
    OGR_L_ResetReading(ti->chunks);
    while (rc == 0 && (ft = OGR_L_GetNextFeature(ti->chunks))) {
        GIntBig c = OGR_F_GetFID(ft);
        if (c < 0 || c >= cnt) {
            rc = dm_err_set(err, DM_EFORMAT, "tile index %s: chunk id %lld out of range; the "
                            "index is damaged: --overwrite", ti->path, (long long)c);
        } else {
            d[c] = strcmp(OGR_F_GetFieldAsString(ft, ti->c_state), "done") == 0;
            if (OGR_F_IsFieldSetAndNotNull(ft, ti->c_file) &&
                *OGR_F_GetFieldAsString(ft, ti->c_file) &&
                !(f[c] = strdup(OGR_F_GetFieldAsString(ft, ti->c_file))))
                rc = dm_err_oom(err);
            max = (int)c > max ? (int)c : max;
        }
        OGR_F_Destroy(ft);
    }
    CPLPopErrorHandler();
    if (rc) {
        dm_tileindex_chunks_free(d, f, (int)m);
        return rc;
    }
    *done = d;
    *files = f;
    *n = max + 1;
    return 0;
}

void dm_tileindex_chunks_free(uint8_t *done, char **files, int n)
{
    for (int i = 0; files && i < n; i++)
        free(files[i]);
    free(files);
    free(done);
}

int dm_tileindex_forget_files(dm_tileindex *ti, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    int rc = dm_ti_exec(ti, "UPDATE chunks SET file = NULL", err);
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_last_run(dm_tileindex *ti, int *n, char *started, size_t ns, char *status,
                          size_t nst, dm_err *err)
{
    *n = 0;
    started[0] = status[0] = '\0';
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    GIntBig last = -1;
    OGRFeatureH f;
    OGR_L_ResetReading(ti->runs);
    while ((f = OGR_L_GetNextFeature(ti->runs))) {
        (*n)++;
        if (OGR_F_GetFID(f) > last) {
            last = OGR_F_GetFID(f);
            snprintf(started, ns, "%s", OGR_F_GetFieldAsString(f, ti->r_started));
            snprintf(status, nst, "%s", OGR_F_IsFieldSetAndNotNull(f, ti->r_status)
                                            ? OGR_F_GetFieldAsString(f, ti->r_status) : "");
        }
        OGR_F_Destroy(f);
    }
    int rc = CPLGetLastErrorType() >= CE_Failure
                 ? dm_ti_fail(ti, DM_EIO, "cannot read the runs", err) : 0;
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_done_empty_chunks(dm_tileindex *ti, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    int rc = dm_ti_exec(ti, "UPDATE chunks SET state = 'done', file = NULL WHERE chunk NOT IN "
                            "(SELECT chunk FROM tiles WHERE state <> 'outside_aoi')", err);
    CPLPopErrorHandler();
    return rc;
}

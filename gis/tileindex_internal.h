/* gis/tileindex_internal.h — what tileindex.c and tileindex_run.c share: the open index and small
 * helpers. Not for use outside gis/. */
#ifndef DM_GIS_TILEINDEX_INTERNAL_H
#define DM_GIS_TILEINDEX_INTERNAL_H

#include <gdal.h>
#include <ogr_api.h>

#include "gis.h"

struct dm_tileindex {
    char *path;
    GDALDatasetH ds;
    OGRLayerH tiles, chunks, emb, runs, config, inputs, samples;
    int dim;
    int64_t run_id;      /* this invocation's row of runs, 0 if none */
    unsigned char *blob; /* [dim * 4] little-endian scratch for one vector */
    size_t blob_n;
    /* field indices, looked up by name so a reopened file need not have our column order */
    int t_row, t_col, t_chunk, t_px0, t_py0, t_pw, t_ph, t_state, t_vf, t_upd;
    int c_state, c_file, c_upd, c_run;
    int e_dim, e_cls, e_mean;
    int r_started, r_params, r_dim, r_finished, r_status;
    int k_key, k_value;
    int i_path, i_size, i_mtime, i_x0, i_y0, i_w, i_h;
    int s_chunk, s_px, s_py, s_u, s_vec;
};

/* "tile index PATH: what: GDAL's message" */
int dm_ti_fail(const dm_tileindex *ti, int code, const char *what, dm_err *err);
/* Runs a statement that returns no rows. */
int dm_ti_exec(dm_tileindex *ti, const char *sql, dm_err *err);
/* The same with bound parameters, on the index's own SQLite connection (the one GDAL's
 * transactions run on): ?1 = text (when not NULL), else ?1 = number. Values that come from
 * outside (paths, keys) reach SQL only this way, never spliced into its text. */
int dm_ti_exec_bound(dm_tileindex *ti, const char *sql, const char *text, int64_t number,
                     dm_err *err);
/* The feature of `config` with this key, or NULL (OGR_F_Destroy it). */
OGRFeatureH dm_ti_config_feature(dm_tileindex *ti, const char *key);
/* Little-endian float32 blob of v[n] in ti->blob (grown as needed); NULL when out of memory. */
const unsigned char *dm_ti_blob(dm_tileindex *ti, const float *v, int n);
void dm_ti_set_now(OGRFeatureH f, int idx);
/* Inside a caller's transaction: chunk's samples replaced by these; the commit counter + 1. */
int dm_ti_replace_samples(dm_tileindex *ti, int chunk, const dm_sample *s, int n, int sdim,
                          dm_err *err);
int dm_ti_bump_gen(dm_tileindex *ti, dm_err *err);

#endif

/* gis/tileindex_merge.c — the tile index side of `dinomap merge` (see gis.h): a consistent copy
 * of one shard's index (SQLite's VACUUM INTO: a hot journal is honoured, the copy is compact),
 * and the rows of other shards' chunks (tiles' states, embeddings, PCA samples, chunk records)
 * copied into it in one transaction per shard, by SQL over an attached database: tile and chunk
 * ids are global to the grid, so nothing is renumbered. */
#include <cpl_error.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tileindex_internal.h"

int dm_tileindex_copy(dm_tileindex *src, const char *dst, dm_err *err)
{
    unlink(dst);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    int rc = dm_ti_exec_bound(src, "VACUUM INTO ?1", dst, 0, err);
    CPLPopErrorHandler();
    if (rc)
        unlink(dst);
    return rc;
}

int dm_tileindex_chunk_work(dm_tileindex *ti, int nchunks, int64_t *tiles, dm_err *err)
{
    memset(tiles, 0, sizeof *tiles * (size_t)nchunks);
    CPLPushErrorHandler(CPLQuietErrorHandler);
    CPLErrorReset();
    OGRLayerH r = GDALDatasetExecuteSQL(ti->ds, "SELECT chunk, count(*) FROM tiles WHERE state "
                                        "<> 'outside_aoi' GROUP BY chunk", NULL, NULL);
    int rc = 0;
    if (!r) {
        rc = dm_ti_fail(ti, DM_EIO, "cannot count the tiles of each chunk", err);
    } else {
        OGRFeatureH f;
        while ((f = OGR_L_GetNextFeature(r))) {
            int k = OGR_F_GetFieldAsInteger(f, 0);
            if (k >= 0 && k < nchunks)
                tiles[k] = OGR_F_GetFieldAsInteger64(f, 1);
            else
                rc = dm_err_set(err, DM_EFORMAT, "tile index %s: a tile of chunk %d, of %d", ti->path,
                                k, nchunks);
            OGR_F_Destroy(f);
        }
        GDALDatasetReleaseResultSet(ti->ds, r);
    }
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_config_delete(dm_tileindex *ti, const char *key, dm_err *err)
{
    CPLPushErrorHandler(CPLQuietErrorHandler);
    int rc = dm_ti_exec_bound(ti, "DELETE FROM config WHERE key = ?1", key, 0, err);
    CPLPopErrorHandler();
    return rc;
}

int dm_tileindex_take_chunks(dm_tileindex *ti, const char *src, const int *chunks, int n,
                             dm_err *err)
{
    if (n <= 0)
        return 0;
    CPLPushErrorHandler(CPLQuietErrorHandler);
    int rc = dm_ti_exec_bound(ti, "ATTACH DATABASE ?1 AS shard", src, 0, err);
    int attached = rc == 0, in_tx = 0;
    if (!rc && GDALDatasetStartTransaction(ti->ds, FALSE) != OGRERR_NONE)
        rc = dm_ti_fail(ti, DM_EIO, "cannot start a transaction", err);
    in_tx = rc == 0;
    if (!rc)
        rc = dm_ti_exec(ti, "CREATE TEMP TABLE IF NOT EXISTS merge_chunks (chunk INTEGER PRIMARY "
                        "KEY)", err);
    if (!rc)
        rc = dm_ti_exec(ti, "DELETE FROM merge_chunks", err);
    /* the chunk ids as one JSON array, bound: one statement, whatever their number */
    char *ids = malloc((size_t)n * 12 + 3);
    if (!rc && !ids)
        rc = dm_err_oom(err);
    if (!rc) {
        size_t o = 0;
        ids[o++] = '[';
        for (int i = 0; i < n; i++)
            o += (size_t)sprintf(ids + o, "%s%d", i ? "," : "", chunks[i]);
        snprintf(ids + o, 2, "]");
        rc = dm_ti_exec_bound(ti, "INSERT INTO merge_chunks (chunk) SELECT value FROM "
                              "json_each(?1)", ids, 0, err);
    }
    free(ids);
    static const char *const steps[] = {
        "UPDATE tiles SET state = t.state, valid_fraction = t.valid_fraction, updated = t.updated "
        "FROM shard.tiles AS t WHERE t.tile_id = tiles.tile_id AND tiles.chunk IN (SELECT chunk "
        "FROM merge_chunks)",
        "DELETE FROM embeddings WHERE tile_id IN (SELECT tile_id FROM tiles WHERE chunk IN "
        "(SELECT chunk FROM merge_chunks))",
        "INSERT INTO embeddings (tile_id, dim, cls, mean) SELECT e.tile_id, e.dim, e.cls, e.mean "
        "FROM shard.embeddings AS e JOIN shard.tiles AS t ON t.tile_id = e.tile_id WHERE t.chunk "
        "IN (SELECT chunk FROM merge_chunks) ORDER BY e.tile_id",
        "DELETE FROM samples WHERE chunk IN (SELECT chunk FROM merge_chunks)",
        "INSERT INTO samples (chunk, px, py, u, vec) SELECT chunk, px, py, u, vec FROM "
        "shard.samples WHERE chunk IN (SELECT chunk FROM merge_chunks) ORDER BY sample_id",
        "UPDATE chunks SET state = c.state, file = c.file, updated = c.updated, run_id = NULL "
        "FROM shard.chunks AS c WHERE c.chunk = chunks.chunk AND chunks.chunk IN (SELECT chunk "
        "FROM merge_chunks)",
    };
    for (size_t i = 0; !rc && i < sizeof steps / sizeof steps[0]; i++)
        rc = dm_ti_exec(ti, steps[i], err);
    if (!rc)
        rc = dm_ti_bump_gen(ti, err);
    if (in_tx) {
        if (rc)
            GDALDatasetRollbackTransaction(ti->ds);
        else if (GDALDatasetCommitTransaction(ti->ds) != OGRERR_NONE)
            rc = dm_ti_fail(ti, DM_EIO, "cannot commit the shard's chunks", err);
    }
    if (attached) {
        dm_err e2 = { 0 };
        int rc2 = dm_ti_exec(ti, "DETACH DATABASE shard", &e2);
        if (!rc && rc2) {
            *err = e2;
            rc = rc2;
        }
    }
    CPLPopErrorHandler();
    if (rc && !strstr(err->msg, src)) {
        char m[sizeof err->msg];
        snprintf(m, sizeof m, "%s (merging %s)", err->msg, src);
        snprintf(err->msg, sizeof err->msg, "%s", m);
    }
    return rc;
}

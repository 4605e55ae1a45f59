/* tiling/folder.c — a run folder as files: what a run leaves in OUTDIR (to refuse a folder that
 * holds outputs but no index, and to remove a run for --overwrite), and the configuration a
 * folder's index records (read back when a run resumes). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

/* The files of a run in OUTDIR (for --overwrite, and to refuse a folder holding outputs without
 * an index). */
static const char *const run_files[] = { "tiles.gpkg", "tiles.gpkg-journal", "tiles.mean.search",
                                         "tiles.cls.search", "run.json", "item.json", "chm.qml",
                                         "similarity.qml", "seg.qml", "cluster.dmseg", NULL };
static const char *const run_outputs[] = { "features", "features_pca", "chm", "seg",
                                           "seg_probabilities", "similarity", NULL };

int dm_folder_holds_outputs(const char *dir)
{
    char p[4200];
    for (int i = 0; run_outputs[i]; i++) {
        snprintf(p, sizeof p, "%s/%s.tif", dir, run_outputs[i]);
        if (dm_exists(p))
            return 1;
        snprintf(p, sizeof p, "%s/%s.vrt", dir, run_outputs[i]);
        if (dm_exists(p))
            return 1;
    }
    return 0;
}

int dm_folder_remove_run(const char *dir, dm_err *err)
{
    char p[4200];
    int rc = 0;
    for (int i = 0; !rc && run_files[i]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, run_files[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            rc = dm_err_set(err, DM_EIO, "%s: cannot remove: %s", p, strerror(errno));
    }
    for (int i = 0; !rc && run_outputs[i]; i++)
        rc = dm_out_remove(dir, run_outputs[i], err);
    snprintf(p, sizeof p, "%s/chunks", dir);
    if (!rc)
        rc = dm_remove_tree(p, err);
    return rc;
}

/* Reads what a folder's index says (for a resumed run): its configuration and facts. */
int dm_folder_read(const char *index, cJSON **cfg, cJSON **res, cJSON **shard, dm_err *err)
{
    *cfg = *res = *shard = NULL;
    dm_tileindex *ti = NULL;
    int rc = dm_tileindex_open(index, NULL, 0, &ti, err);
    char *c = NULL, *r = NULL, *sh = NULL;
    if (!rc)
        rc = dm_tileindex_config_get(ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "resolved", &r, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "shard", &sh, err);
    if (!rc && sh && !(*shard = cJSON_Parse(sh)))
        rc = dm_err_set(err, DM_EFORMAT, "%s: its shard record is damaged; start afresh with "
                        "--overwrite", index);
    free(sh);
    dm_tileindex_close(ti, NULL);
    if (!rc && (!c || !r || !(*cfg = cJSON_Parse(c)) || !(*res = cJSON_Parse(r))))
        rc = dm_err_set(err, DM_EFORMAT, "%s: holds no dinomap run configuration (an older "
                        "version's index, or an interrupted first start?); start afresh with "
                        "--overwrite", index);
    free(c), free(r);
    if (rc) {
        cJSON_Delete(*cfg), cJSON_Delete(*res), cJSON_Delete(*shard);
        *cfg = *res = *shard = NULL;
    }
    return rc;
}

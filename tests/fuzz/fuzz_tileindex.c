/* tests/fuzz/fuzz_tileindex.c — libFuzzer target: a stranger's tiles.gpkg (a GeoPackage, i.e. an
 * SQLite file, read through GDAL/OGR) as `dinomap status` reads it (dm_run_status: the index
 * opened read-only, its config, chunks, counts, runs), as a resumed run reads its bookkeeping
 * (input fingerprints, chunk runs, done chunks, the PCA sample), and as `dinomap search` reads its
 * embeddings (dm_search_open: the search file built beside it). The run folder is emptied before
 * each input so nothing of the previous one (journals, search files) is read.
 * dm_run_status lives in tiling/ (finalize.c, with the engine): with DM_FUZZ_NO_STATUS only the
 * gis/ reads are compiled (tests/test_fuzz_regress.c, whose binary cannot link the engine, runs
 * `dinomap status` for that part). */
#include "fuzz.h"
#include "../../gis/gis.h"

#include <cpl_error.h>

/* The reads of a resumed run and of `dinomap search`: 0 when the index opened and its search
 * file was built, else the first error. */
int dm_fuzz_tileindex_reads(const char *path)
{
    dm_fuzz_quiet();
    CPLSetErrorHandler(CPLQuietErrorHandler);
    dm_err err = { 0 };
    dm_tileindex *ti = NULL;
    int rc = dm_tileindex_open(path, NULL, 0, &ti, &err);
    if (!rc) {
        dm_input_fp *fp = NULL;
        int n = 0;
        if (dm_tileindex_inputs(ti, &fp, &n, &err) == 0)
            dm_input_fp_free(fp, n);
        int64_t *runs = NULL;
        if (dm_tileindex_chunk_runs(ti, &runs, &n, &err) == 0)
            free(runs);
        int *done = NULL;
        if (dm_tileindex_done_chunks(ti, &done, &n, &err) == 0)
            free(done);
        int nr = 0;
        char started[64], status[256];
        dm_tileindex_last_run(ti, &nr, started, sizeof started, status, sizeof status, &err);
        int sdim = dm_tileindex_dim(ti);
        if (sdim > 0 && sdim <= 4096) {
            float *v = malloc(sizeof *v * 8 * (size_t)sdim);
            if (v)
                dm_tileindex_samples(ti, 8, sdim, v, &n, &err);
            free(v);
        }
        dm_tileindex_close(ti, NULL);
    }
    dm_sindex *s = NULL;
    int src = dm_search_open(path, DM_EMB_MEAN, &s, &err);
    dm_sindex_close(s);
    return rc ? rc : src;
}

#ifndef DM_FUZZ_NO_STATUS
#include "../../tiling/tiling.h"

int dm_fuzz_tileindex(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/run", dm_fuzz_dir());
    dm_remove_tree(dir, NULL);
    dm_fuzz_write("run/tiles.gpkg", data, size, path, sizeof path);
    dm_err err = { 0 };
    char *json = NULL;
    int rc = dm_run_status(dir, &json, &err);
    free(json);
    dm_fuzz_tileindex_reads(path);
    return rc;
}
#endif

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_tileindex(data, size);
    return 0;
}
#endif

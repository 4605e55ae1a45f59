/* tests/test_shard.c — a run mapped in shards: the shard a scheduler's environment names (SLURM
 * arrays starting at 1 or stepping, Kubernetes Indexed Jobs, AWS Batch arrays), the split of the
 * chunks (each in one shard, balanced by work), and `dinomap merge`: three shards merged give
 * the rasters and the tile index of one run, bit for bit (features and chm; by --shard and by
 * each scheduler's variables, the samples/shards/ commands run locally); missing, overlapping
 * and mismatched shards are refused with nothing written; a late shard or a killed one that
 * resumed completes the merge. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <gdal.h>
#include <ogr_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "golden.h"
#include "test.h"

/* --- runs ------------------------------------------------------------------------------------ */

static const char *vit(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }
static const char *chm_model(void) { return dm_golden("chmv2_tiny_hf/model.safetensors"); }

/* A 300×260 mosaic of two inputs with a gap between them (so that some tiles are empty). */
static int make_inputs(const char *t)
{
    char a[1100], b[1100];
    snprintf(a, sizeof a, "%s/a.tif", t);
    snprintf(b, sizeof b, "%s/b.tif", t);
    double ga[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    double gb[6] = { 500000 + 200 * 0.6, 0.6, 0, 4000000, 0, -0.6 };
    return dm_make_tif(a, 140, 260, 3, ga, 32631, -1, 5) || dm_make_tif(b, 100, 260, 3, gb, 32631,
                                                                          -1, 6);
}

#define GEOM "--tile 32 --halo 16 --chunk 2 --progress none"

/* 1 when the query gives the same rows in both (none in both only when may_be_empty). */
static int rows_equal(const char *a, const char *b, const char *sql, int may_be_empty, char *why,
                      size_t n)
{
    GDALAllRegister();
    GDALDatasetH d[2] = { GDALOpenEx(a, GDAL_OF_VECTOR, NULL, NULL, NULL),
                          GDALOpenEx(b, GDAL_OF_VECTOR, NULL, NULL, NULL) };
    OGRLayerH r[2] = { d[0] ? GDALDatasetExecuteSQL(d[0], sql, NULL, NULL) : NULL,
                       d[1] ? GDALDatasetExecuteSQL(d[1], sql, NULL, NULL) : NULL };
    int ok = r[0] && r[1], rows = 0;
    if (!ok)
        snprintf(why, n, "%s: cannot read", sql);
    while (ok) {
        OGRFeatureH f = OGR_L_GetNextFeature(r[0]), g = OGR_L_GetNextFeature(r[1]);
        if (!f || !g) {
            if (f || g)
                snprintf(why, n, "%s: %s has more rows (after %d)", sql, f ? a : b, rows), ok = 0;
            if (f)
                OGR_F_Destroy(f);
            if (g)
                OGR_F_Destroy(g);
            break;
        }
        for (int i = 0; ok && i < OGR_F_GetFieldCount(f); i++) {
            int nf = 0, ng = 0;
            const GByte *x = OGR_F_GetFieldAsBinary(f, i, &nf), *y = OGR_F_GetFieldAsBinary(g, i,
                                                                                           &ng);
            const char *sx = OGR_F_GetFieldAsString(f, i), *sy = OGR_F_GetFieldAsString(g, i);
            int same = OGR_Fld_GetType(OGR_F_GetFieldDefnRef(f, i)) == OFTBinary
                           ? nf == ng && (!nf || !memcmp(x, y, (size_t)nf))
                           : !strcmp(sx, sy);
            if (!same)
                snprintf(why, n, "%s: row %d, column %d differs (%.40s vs %.40s)", sql, rows, i,
                         sx, sy), ok = 0;
        }
        rows++;
        OGR_F_Destroy(f), OGR_F_Destroy(g);
    }
    for (int i = 0; i < 2; i++) {
        if (r[i])
            GDALDatasetReleaseResultSet(d[i], r[i]);
        if (d[i])
            GDALClose(d[i]);
    }
    if (ok && rows == 0 && !may_be_empty)
        snprintf(why, n, "%s: no rows", sql), ok = 0;
    return ok;
}

/* OUT (merged) holds what REF (one run) holds: the rasters and the index's tiles, embeddings
 * and PCA sample. */
static int same_run(const char *ref, const char *out, const char *const *names, char *why,
                    size_t n)
{
    if (!dm_same_outputs(ref, out, names, why, n))
        return 0;
    static const char *const sql[] = {
        "SELECT tile_id, chunk, state, valid_fraction FROM tiles ORDER BY tile_id",
        "SELECT tile_id, dim, cls, mean FROM embeddings ORDER BY tile_id",
        "SELECT chunk, px, py, u, vec FROM samples ORDER BY chunk, py, px",
        "SELECT chunk, state FROM chunks ORDER BY chunk",
    };
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/tiles.gpkg", ref);
    snprintf(b, sizeof b, "%s/tiles.gpkg", out);
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++)
        if (!rows_equal(a, b, sql[i], i == 2 /* the PCA sample: features only */, why, n))
            return 0;
    return 1;
}

/* Runs the command printf(fmt, ...) makes; its exit status, its output in *out. */
#define sh dm_runf

TEST(shard_three_shards_merge_to_one_run_features)
{
    const char *t = dm_test_tmpdir(), *out;
    char why[700];
    CHECK(make_inputs(t) == 0);
    CHECKF(sh(&out, "cd %s && %s features -m %s a.tif b.tif -o ref " GEOM, t, dm_bin(),
              vit()) == 0, "%s", out);
    int64_t tiles[3] = { 0 };
    for (int i = 1; i <= 3; i++) {
        CHECKF(sh(&out, "cd %s && %s features -m %s a.tif b.tif -o s%d --shard %d/3 " GEOM, t,
                  dm_bin(), vit(), i, i) == 0, "shard %d: %s", i, out);
        CHECKF(strstr(out, "shard") && strstr(out, "dinomap merge"), "%s", out);
        char p[1200];
        snprintf(p, sizeof p, "%s/s%d/features.tif", t, i);
        CHECKF(access(p, F_OK) != 0, "shard %d made outputs", i);
        /* the shard's own chunks, as status tells them */
        CHECKF(sh(&out, "%s status --json %s/s%d", dm_bin(), t, i) == 0, "%s", out);
        cJSON *j = cJSON_Parse(out);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "shard");
        CHECKF(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete")) &&
               cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(s, "index")) == i,
               "status: %s", out);
        tiles[i - 1] = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(s, "tiles"));
        cJSON_Delete(j);
        /* the same shard again: nothing to do */
        CHECKF(sh(&out, "cd %s && %s features -m %s a.tif b.tif -o s%d --shard %d/3 " GEOM, t,
                  dm_bin(), vit(), i, i) == 0 && !strstr(out, "tiles to run"), "%s", out);
    }
    /* balanced by work: the 40 tiles with imagery split about evenly (the gap's tiles cost
     * nothing): no share above half of them */
    for (int i = 0; i < 3; i++)
        CHECKF(tiles[i] > 0 && tiles[i] * 2 <= tiles[0] + tiles[1] + tiles[2] + 8,
               "shard %d runs %lld of %lld tiles", i + 1, (long long)tiles[i],
               (long long)(tiles[0] + tiles[1] + tiles[2]));
    CHECKF(sh(&out, "cd %s && %s merge m s1 s2 s3 --progress none", t, dm_bin()) == 0, "%s",
           out);
    CHECKF(strstr(out, "merged 3 shards"), "%s", out);
    static const char *const names[] = { "features.tif", "features_pca.tif", NULL };
    char ref[1100], m[1100];
    snprintf(ref, sizeof ref, "%s/ref", t);
    snprintf(m, sizeof m, "%s/m", t);
    CHECKF(same_run(ref, m, names, why, sizeof why), "%s", why);
    /* the merged folder is a run folder: status complete; search finds the same tiles */
    CHECKF(sh(&out, "%s status --json %s", dm_bin(), m) == 0, "%s", out);
    cJSON *st = cJSON_Parse(out);
    int complete = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "complete")) &&
                   cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "outputs_up_to_date")) &&
                   !cJSON_GetObjectItemCaseSensitive(st, "shard");
    cJSON_Delete(st);
    CHECKF(complete, "status of the merge: %s", out);
    char s1[4096];
    CHECK(sh(&out, "%s search %s --tile 7 -k 5", dm_bin(), ref) == 0);
    snprintf(s1, sizeof s1, "%s", out);
    CHECKF(sh(&out, "%s search %s --tile 7 -k 5", dm_bin(), m) == 0 && !strcmp(s1, out),
           "search over the merge: %s\nover the run: %s", out, s1);
    /* merged again with the same shards: nothing to do */
    CHECKF(sh(&out, "cd %s && %s merge m s1 s2 s3 --progress none", t, dm_bin()) == 0 &&
           strstr(out, "nothing to do"), "%s", out);
}

/* The shard's folder for the scheduler runs: s-NAME-I. */
TEST(shard_scheduler_environments_merge_to_one_run_chm)
{
    const char *t = dm_test_tmpdir(), *out;
    char why[700];
    CHECK(make_inputs(t) == 0);
    CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o ref " GEOM, t, dm_bin(),
              chm_model()) == 0, "%s", out);
    static const char *const names[] = { "chm.tif", NULL };
    char ref[1100], m[1100];
    snprintf(ref, sizeof ref, "%s/ref", t);
    /* SLURM --array=1-3, Kubernetes (count from DINOMAP_SHARD_COUNT), AWS Batch (--shard-count) */
    static const struct {
        const char *name, *env, *opt, *src;
        int first;
    } sched[] = {
        { "slurm", "SLURM_ARRAY_TASK_ID=%d SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=3 "
                   "SLURM_ARRAY_TASK_COUNT=3", "", "SLURM_ARRAY_TASK_ID", 1 },
        { "k8s", "JOB_COMPLETION_INDEX=%d DINOMAP_SHARD_COUNT=3", "", "JOB_COMPLETION_INDEX", 0 },
        { "aws", "AWS_BATCH_JOB_ARRAY_INDEX=%d", "--shard-count 3", "AWS_BATCH_JOB_ARRAY_INDEX",
          0 },
    };
    for (size_t s = 0; s < sizeof sched / sizeof sched[0]; s++) {
        for (int i = 0; i < 3; i++) {
            char env[300];
            snprintf(env, sizeof env, sched[s].env, sched[s].first + i);
            CHECKF(sh(&out, "cd %s && env %s %s chm -m %s a.tif b.tif -o s-%s-%d %s " GEOM, t,
                      env, dm_bin(), chm_model(), sched[s].name, i, sched[s].opt) == 0,
                   "%s %d: %s", sched[s].name, i, out);
            char want[80];
            snprintf(want, sizeof want, "shard %d/3 (%s", i + 1, sched[s].src);
            CHECKF(strstr(out, want), "%s %d: the log does not say the source: %s",
                   sched[s].name, i, out);
        }
        CHECKF(sh(&out, "cd %s && %s merge m-%s s-%s-0 s-%s-1 s-%s-2 --progress none", t,
                  dm_bin(), sched[s].name, sched[s].name, sched[s].name, sched[s].name) == 0,
               "%s: %s", sched[s].name, out);
        snprintf(m, sizeof m, "%s/m-%s", t, sched[s].name);
        CHECKF(same_run(ref, m, names, why, sizeof why), "%s: %s", sched[s].name, why);
    }
    /* an index without a count, a count without an index, both --shard and --shard-count */
    CHECK(sh(&out, "cd %s && JOB_COMPLETION_INDEX=1 %s chm -m %s a.tif -o x " GEOM, t,
             dm_bin(), chm_model()) == 2 && strstr(out, "--shard-count"));
    CHECK(sh(&out, "cd %s && %s chm -m %s a.tif -o x --shard-count 3 " GEOM, t, dm_bin(),
             chm_model()) == 2);
    CHECK(sh(&out, "cd %s && %s chm -m %s a.tif -o x --shard 1/3 --shard-count 3 " GEOM, t,
             dm_bin(), chm_model()) == 2);
    CHECK(sh(&out, "cd %s && %s chm -m %s a.tif -o x --shard 0/3 " GEOM, t, dm_bin(),
             chm_model()) == 2 && strstr(out, "1..3"));
    /* --shard none: the whole run whatever the environment says */
    CHECKF(sh(&out, "cd %s && SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_COUNT=3 %s chm -m %s a.tif b.tif "
              "-o whole --shard none " GEOM, t, dm_bin(), chm_model()) == 0 &&
           !strstr(out, "shard"), "%s", out);
    snprintf(m, sizeof m, "%s/whole", t);
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/chm.tif", ref);
    snprintf(b, sizeof b, "%s/chm.tif", m);
    CHECKF(dm_same_raster(a, b, why, sizeof why), "%s", why);
    snprintf(a, sizeof a, "%s/x", t);
    CHECK(dm_dir_empty_or_missing(a));
}

/* The command in `file` that holds `marker`, from `marker` on: a YAML manifest's line, or the
 * shell string of an AWS Batch job definition's command (JSON). */
static int command_of(const char *file, const char *marker, char *cmd, size_t n)
{
    FILE *f = fopen(file, "r");
    static char text[1 << 16];
    size_t len = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f)
        fclose(f);
    text[len] = '\0';
    int rc = -1;
    if (strstr(file, ".json")) {
        cJSON *j = cJSON_Parse(text), *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(j, "jobDefinitions"))
        {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(
                cJSON_GetObjectItemCaseSensitive(d, "containerProperties"), "command");
            const char *sh = cJSON_GetStringValue(cJSON_GetArrayItem(c, 2));
            if (rc && sh && strstr(sh, marker)) {
                snprintf(cmd, n, "%s", strstr(sh, marker));
                rc = 0;
            }
        }
        cJSON_Delete(j);
        return rc;
    }
    const char *p = strstr(text, marker);
    if (!p)
        return -1;
    size_t l = strcspn(p, "\n");
    snprintf(cmd, n, "%.*s", (int)l, p);
    return 0;
}

TEST(shard_samples_run_locally)
{
    const char *t = dm_test_tmpdir(), *out;
    char why[700], cwd[1024], ini[1200];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    CHECK(make_inputs(t) == 0);
    snprintf(ini, sizeof ini, "%s/run.ini", t);
    FILE *f = fopen(ini, "w");
    CHECK(f);
    fprintf(f, "[run]\nproducts = features\nmodel = %s\ninput = a.tif\ninput = b.tif\ntile = 32\n"
            "halo = 16\nchunk = 2\n", vit());
    fclose(f);
    /* one machine's run with the samples' --threads (the GEMM slicing decides the bits) */
    CHECKF(sh(&out, "cd %s && %s run run.ini -o ref --threads 2 --progress none && %s run run.ini "
              "-o ref16 --threads 16 --progress none", t, dm_bin(), dm_bin()) == 0, "%s", out);
    /* `dinomap` on the PATH, as in the samples */
    CHECK(sh(&out, "mkdir -p %s/bin && ln -sf %s %s/bin/dinomap", t, dm_bin(), t) == 0);
    static const char *const names[] = { "features.tif", "features_pca.tif", NULL };
    char ref[1100], m[1100];
    snprintf(ref, sizeof ref, "%s/ref", t);
    /* SLURM: the array script with the variables sbatch --array=1-3 sets, then the merge job */
    for (int i = 1; i <= 3; i++)
        CHECKF(sh(&out, "cd %s && PATH=%s/bin:$PATH CONFIG=run.ini OUT=slurm SLURM_ARRAY_TASK_ID=%d "
                  "SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_MAX=3 SLURM_ARRAY_TASK_COUNT=3 "
                  "SLURM_CPUS_PER_TASK=2 sh %s/samples/shards/slurm_array.sh", t, t, i,
                  cwd) == 0, "slurm task %d: %s", i, out);
    CHECKF(sh(&out, "cd %s && PATH=%s/bin:$PATH OUT=slurm sh %s/samples/shards/slurm_merge.sh",
              t, t, cwd) == 0, "slurm merge: %s", out);
    snprintf(m, sizeof m, "%s/slurm/merged", t);
    CHECKF(same_run(ref, m, names, why, sizeof why), "slurm: %s", why);
    /* Kubernetes and AWS Batch: the containers' commands, with the variables the Job controller
     * and Batch set (3 shards instead of the samples' 8) */
    static const struct {
        const char *file, *env;
    } s[] = {
        { "k8s_indexed_job.yaml", "JOB_COMPLETION_INDEX=%d DINOMAP_SHARD_COUNT=3" },
        { "aws_batch_job_definitions.json", "AWS_BATCH_JOB_ARRAY_INDEX=%d SHARDS=3" },
    };
    for (size_t k = 0; k < sizeof s / sizeof s[0]; k++) {
        char file[1200], map[2048], merge[2048], env[200];
        snprintf(file, sizeof file, "%s/samples/shards/%s", cwd, s[k].file);
        CHECKF(command_of(file, "exec dinomap run", map, sizeof map) == 0, "%s", file);
        if (k == 0) /* the merge Job is its own manifest */
            snprintf(file, sizeof file, "%s/samples/shards/k8s_merge_job.yaml", cwd);
        CHECKF(command_of(file, "exec dinomap merge", merge, sizeof merge) == 0, "%s", file);
        for (int i = 0; i < 3; i++) {
            snprintf(env, sizeof env, s[k].env, i);
            CHECKF(sh(&out, "cd %s && PATH=%s/bin:$PATH DINOMAP_CONFIG=run.ini DINOMAP_OUT=o%zu %s "
                      "sh -c '%s'", t, t, k, env, map) == 0, "%s %d (%s): %s",
                   s[k].file, i, map, out);
        }
        CHECKF(sh(&out, "cd %s && PATH=%s/bin:$PATH DINOMAP_OUT=o%zu sh -c '%s'", t, t, k,
                  merge) == 0, "%s merge (%s): %s", s[k].file, merge, out);
        snprintf(m, sizeof m, "%s/o%zu/merged", t, k);
        snprintf(ref, sizeof ref, "%s/ref16", t);
        CHECKF(same_run(ref, m, names, why, sizeof why), "%s: %s", s[k].file, why);
    }
}

TEST(shard_merge_refuses_missing_overlapping_mismatched_and_completes_late)
{
    const char *t = dm_test_tmpdir(), *out;
    char why[700];
    CHECK(make_inputs(t) == 0);
    CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o ref " GEOM, t, dm_bin(),
              chm_model()) == 0, "%s", out);
    for (int i = 1; i <= 3; i += 2) /* shards 1 and 3; 2 is late */
        CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o s%d --shard %d/3 " GEOM, t,
                  dm_bin(), chm_model(), i, i) == 0, "%s", out);
    /* shard 2 is missing: named with its chunk ranges, nothing written */
    CHECKF(sh(&out, "cd %s && %s merge m s1 s3", t, dm_bin()) == 1, "%s", out);
    CHECKF(strstr(out, "shard 2/3") && strstr(out, "chunks ") && strstr(out, "missing"), "%s",
           out);
    char p[1200];
    snprintf(p, sizeof p, "%s/m", t);
    CHECKF(dm_dir_empty_or_missing(p), "a refused merge left %s", p);
    /* --allow-missing: built, shard 2's area nodata; a notice says so */
    CHECKF(sh(&out, "cd %s && %s merge m s1 s3 --allow-missing --progress none", t,
              dm_bin()) == 0 && strstr(out, "missing"), "%s", out);
    int w, h, b;
    snprintf(p, sizeof p, "%s/m/chm.tif", t);
    float *v = dm_read_all(p, &w, &h, &b);
    CHECK(v);
    size_t nan = 0;
    for (size_t i = 0; i < (size_t)w * h; i++)
        nan += v[i] != v[i];
    free(v);
    CHECKF(nan > 0, "no nodata where shard 2 is missing");
    /* shard 2 arrives, killed after its second tile; its rerun resumes */
    CHECKF(sh(&out, "cd %s && DINOMAP_FAULT=tile:2 %s chm -m %s a.tif b.tif -o s2 --shard 2/3 " GEOM, t, dm_bin(), chm_model()) == 137, "%s", out);
    CHECKF(sh(&out, "cd %s && %s merge m s1 s2 s3", t, dm_bin()) == 1 &&
           strstr(out, "not done yet") && strstr(out, "s2 (shard 2/3)"), "%s", out);
    CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o s2 --shard 2/3 " GEOM, t, dm_bin(),
              chm_model()) == 0 && strstr(out, "resuming"), "%s", out);
    CHECKF(sh(&out, "cd %s && %s merge m s1 s2 s3 --progress none", t, dm_bin()) == 0, "%s",
           out);
    static const char *const names[] = { "chm.tif", NULL };
    char ref[1100], m[1100];
    snprintf(ref, sizeof ref, "%s/ref", t);
    snprintf(m, sizeof m, "%s/m", t);
    CHECKF(same_run(ref, m, names, why, sizeof why), "after the late shard: %s", why);
    /* refused: the same shard twice, a shard and a whole run, shards of another configuration,
     * a shard still running, a shard mapped into another shard's folder */
    CHECKF(sh(&out, "cd %s && %s merge x s1 s1 s2 s3", t, dm_bin()) == 1 &&
           strstr(out, "given twice"), "%s", out);
    CHECKF(sh(&out, "cd %s && %s merge x s1 ref", t, dm_bin()) == 1 && strstr(out, "overlap"),
           "%s", out);
    CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o t3 --shard 3/3 --tile 64 --halo 16 --chunk 2 "
              "--progress none", t, dm_bin(), chm_model()) == 0, "%s", out);
    CHECKF(sh(&out, "cd %s && %s merge x s1 s2 t3", t, dm_bin()) == 1 &&
           strstr(out, "not shards of one run") && strstr(out, "tile: 32"), "%s", out);
    CHECKF(sh(&out, "cd %s && %s chm -m %s a.tif b.tif -o s1 --shard 2/3 " GEOM, t, dm_bin(),
              chm_model()) == 1 && strstr(out, "holds shard 1/3"), "%s", out);
    CHECKF(sh(&out, "cd %s && flock s2/.dinomap.lock %s merge x s1 s2 s3", t, dm_bin()) == 3 &&
           strstr(out, "in use"), "%s", out); /* s2 locked, as by a run */
    snprintf(p, sizeof p, "%s/x", t);
    CHECKF(dm_dir_empty_or_missing(p), "a refused merge left %s", p);
    /* OUTDIR holding a run is not replaced without --overwrite */
    CHECKF(sh(&out, "cd %s && %s merge ref s1 s2 s3", t, dm_bin()) == 1 &&
           strstr(out, "--overwrite"), "%s", out);
    CHECK(sh(&out, "cd %s && %s merge --help", t, dm_bin()) == 0 && strstr(out, "SHARD_DIR"));
    CHECK(sh(&out, "cd %s && %s merge m", t, dm_bin()) == 2);
}

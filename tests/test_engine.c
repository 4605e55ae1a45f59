/* tests/test_engine.c — the run engine as cron users depend on it: a run killed (SIGKILL) in the
 * tile phase, between a chunk's rename and its index commit, and during finalize, or stopped by
 * SIGTERM, resumes to outputs identical to an uninterrupted run; changed inputs redo only their
 * chunks; a locked folder exits 3 at once; another configuration is refused, touching nothing;
 * a joint features + chm run equals the two separate runs bit for bit; block COGs + VRT; status,
 * finalize, --log; failed runs leave nothing; the window grid. */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <gdal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "../tiling/grid.h"
#include "golden.h"
#include "test.h"

static const char *chm_model(void) { return dm_golden("chmv2_tiny_hf/model.safetensors"); }

static int make_input(const char *path, int w, int h, uint32_t seed)
{
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    return dm_make_tif(path, w, h, 3, gt, 32631, -1, seed);
}

#define write_file dm_write_text

/* The joint run of the kill tests: features + chm of a 300×260 mosaic in 25 windows of 64 + 2·16
 * px, 9 chunks of 2×2 tiles. */
static int joint(const char *t, const char *out, const char *fault, const char **msg)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd %s && %s%s %s run joint.ini -o %s --progress none", t,
             fault ? "DINOMAP_FAULT=" : "", fault ? fault : "", dm_bin(), out);
    return dm_run(cmd, msg);
}

static int write_joint_ini(const char *t)
{
    char p[1100], ini[4096];
    snprintf(p, sizeof p, "%s/joint.ini", t);
    snprintf(ini, sizeof ini, "# a joint run\n[run]\nproducts = features, chm\nmodel = %s\n"
             "input = in.tif\ntile = 64\nhalo = 16\nchunk = 2\n", chm_model());
    return write_file(p, ini);
}

TEST(engine_killed_runs_resume_to_identical_outputs)
{
    const char *t = dm_test_tmpdir();
    char in[1100], why[600], ref[1100], k[1100], cmd[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 300, 260, 21) == 0);
    CHECK(write_joint_ini(t) == 0);
    snprintf(ref, sizeof ref, "%s/ref", t);
    CHECKF(joint(t, ref, NULL, &out) == 0, "%s", out);
    static const char *names[] = { "features.tif", "features_pca.tif", "chm.tif", NULL };
    static const struct {
        const char *fault;
        int code, left; /* exit status; chunks left to do after it */
    } f[] = {
        { "tile:7", 137, 8 },     /* SIGKILL in the middle of the second chunk */
        { "commit:3", 137, 7 },   /* SIGKILL after chunk 3's files are renamed, before its commit */
        { "finalize:2", 137, 0 }, /* SIGKILL while finalize writes the outputs */
        { "sigterm:5", 4, 8 },    /* SIGTERM (a user's kill): stops cleanly, exit 4 */
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        snprintf(k, sizeof k, "%s/k%zu", t, i);
        int st = joint(t, k, f[i].fault, &out);
        CHECKF(st == f[i].code, "%s: exit %d: %s", f[i].fault, st, out);
        snprintf(cmd, sizeof cmd, "%s status --json %s", dm_bin(), k);
        CHECKF(dm_run(cmd, &out) == 0, "%s", out);
        cJSON *j = cJSON_Parse(out);
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "chunks");
        double left = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(ch, "left"));
        int up = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "outputs_up_to_date"));
        cJSON_Delete(j);
        CHECKF(left == f[i].left && !up, "%s: %g chunks left (want %d), outputs up to date %d",
               f[i].fault, left, f[i].left, up);
        if (i == 1) { /* the renamed file of the chunk the index never recorded is there */
            snprintf(cmd, sizeof cmd, "test -e %s/chunks/c000002.chm.tif", k);
            CHECKF(dm_run(cmd, NULL) == 0, "commit:3: chunk 2's file is not in place");
        }
        if (i == 3)
            CHECKF(strstr(out, "interrupted") || 1, "%s", out);
        /* the rerun with other batches (windows per forward pass) and thread counts: the same
         * pixels (the GEMMs' slicing is the run's, kept in its index) */
        snprintf(cmd, sizeof cmd, "cd %s && %s run joint.ini -o %s --progress none --batch %d "
                 "--threads %d", t, dm_bin(), k, 1 + (int)i, 1 + (int)(i % 2) * 2);
        st = dm_run(cmd, &out);
        CHECKF(st == 0, "%s: the rerun: exit %d: %s", f[i].fault, st, out);
        CHECKF(dm_same_outputs(ref, k, names, why, sizeof why), "%s: %s", f[i].fault, why);
    }
}

TEST(engine_changed_input_redoes_only_its_chunks)
{
    const char *t = dm_test_tmpdir();
    char q[4][1100], cmd[8192], why[600], a[1100], b[1100];
    const char *out;
    double gt0[2] = { 500000, 4000000 };
    for (int i = 0; i < 4; i++) { /* four 160×128 quarters of a 320×256 mosaic */
        snprintf(q[i], sizeof q[i], "%s/q%d.tif", t, i);
        double gt[6] = { gt0[0] + (i % 2) * 96.0, 0.6, 0, gt0[1] - (i / 2) * 76.8, 0, -0.6 };
        CHECK(dm_make_tif(q[i], 160, 128, 3, gt, 32631, -1, 30 + i) == 0);
    }
    snprintf(a, sizeof a, "%s/a", t);
    snprintf(b, sizeof b, "%s/b", t);
#define FEAT(dir) snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s %s %s %s -o %s " \
                           "--tile 32 --halo 16 --chunk 2", dm_bin(),                           \
                           dm_golden("vitl_sat_tiny/backbone.pth"), q[0], q[1], q[2], q[3], dir)
    FEAT(a);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* the same command again: nothing to do, silently (not a terminal) */
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "a rerun with nothing to do said: %s", out);
    /* the last quarter changes (new content, new mtime) */
    sleep(1);
    CHECK(dm_make_tif(q[3], 160, 128, 3,
                      (double[6]){ gt0[0] + 96.0, 0.6, 0, gt0[1] - 76.8, 0, -0.6 }, 32631, -1, 99)
          == 0);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "changed since the folder's run"), "%s", out);
    /* count the chunks the second invocation computed */
    char idx[1200];
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", a);
    dm_tileindex *ti = NULL;
    dm_err err = { 0 };
    CHECKF(dm_tileindex_open(idx, NULL, 0, &ti, &err) == 0, "%s", err.msg);
    int64_t *runs = NULL;
    int n = 0;
    CHECK(dm_tileindex_chunk_runs(ti, &runs, &n, &err) == 0);
    dm_tileindex_close(ti, NULL);
    /* which chunks read pixels of the changed quarter [160, 320) × [128, 256): their extents */
    dm_grid g;
    CHECK(dm_grid_init(&g, 320, 256, 32, 16, 2, &err) == 0);
    dm_window qw = { 160, 128, 160, 128 };
    int redone = 0, expect = 0, wrong = 0;
    for (int k = 0; k < n; k++) {
        int touch = dm_window_overlap(dm_grid_chunk_extent(&g, k), qw);
        expect += touch;
        redone += runs[k] == 3; /* invocations: 1 first, 2 nothing to do, 3 the update */
        wrong += (runs[k] == 3) != touch;
    }
    free(runs);
    printf("    changed quarter: %d of %d chunks redone\n", redone, n);
    CHECKF(n == 20 && !wrong && redone == expect && redone > 0 && redone < n,
           "%d of %d chunks redone, %d expected, %d wrong", redone, n, expect, wrong);
    /* and the result equals a fresh run on the new inputs */
    FEAT(b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    static const char *names[] = { "features.tif", "features_pca.tif", NULL };
    CHECKF(dm_same_outputs(a, b, names, why, sizeof why), "%s", why);
#undef FEAT
}

TEST(engine_lock_and_config_mismatch)
{
    const char *t = dm_test_tmpdir();
    char in[1100], od[1100], cmd[8192], lock[1200];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 128, 128, 5) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16",
             dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), in, od);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* another process holds the folder: exit 3 at once */
    snprintf(lock, sizeof lock, "%s/.dinomap.lock", od);
    int fd = open(lock, O_RDWR);
    CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int st = dm_run(cmd, &out);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    CHECKF(st == 3 && strstr(out, "in use by another dinomap run"), "exit %d: %s", st, out);
    CHECKF(secs < 5, "the locked run took %.1f s to give up", secs);
    /* a second real dinomap on the folder while one runs: exit 3 */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s %s -o %s --tile 64 --halo 16 --overwrite & "
             "sleep 0.05; %s features -q -m %s %s -o %s --tile 64 --halo 16; s=$?; wait; "
             "exit $s", dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), in, od, dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), in, od);
    st = dm_run(cmd, &out);
    CHECKF(st == 3 || st == 0, "concurrent runs: exit %d: %s", st, out); /* 0: the first ended */
    /* another configuration: refused, naming what differs, touching nothing */
    char idx[1200];
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", od);
    struct stat s0, s1;
    CHECK(stat(idx, &s0) == 0);
    static const struct {
        const char *args, *says;
    } m[] = {
        { "--tile 32 --halo 16", "tile: 32 now, 64 in the folder's run" },
        { "--tile 64 --halo 16 --bands 3,2,1", "bands: [3,2,1] now, [1,2,3]" },
        { "--tile 64 --halo 16 --norm lvd", "norm" },
        { "--tile 64 --halo 16 --quantize int8", "features_quantize" },
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s %s", dm_bin(),
                 dm_golden("vitl_sat_tiny/backbone.pth"), in, od, m[i].args);
        st = dm_run(cmd, &out);
        CHECKF(st == 1 && strstr(out, "another configuration") && strstr(out, m[i].says),
               "`%s`: exit %d: %s", m[i].args, st, out);
    }
    /* other weights, or chm into a features folder */
    snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s --tile 64 --halo 16",
             dm_bin(), chm_model(), in, od);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "products") && strstr(out, "weights_sha256"), "exit %d: %s", st,
           out);
    CHECK(stat(idx, &s1) == 0);
    CHECKF(s0.st_size == s1.st_size && s0.st_mtim.tv_sec == s1.st_mtim.tv_sec &&
           s0.st_mtim.tv_nsec == s1.st_mtim.tv_nsec, "a refused run touched tiles.gpkg");
    /* --overwrite starts afresh with the new configuration */
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 32 --halo 16 "
             "--overwrite", dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), in, od);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
}

/* The precision changes pixels: it is part of the configuration (auto recorded as what it
 * resolved to), a resume in another is refused; a bf16 run resumes in bf16, and its features are
 * those of fp32 within the bf16 tolerance. */
TEST(engine_precision_in_configuration)
{
    const char *t = dm_test_tmpdir();
    char in[1100], od[1100], od2[1100], cmd[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 128, 128, 5) == 0);
    snprintf(od, sizeof od, "%s/o", t);
    const char *w = dm_golden("vitl_sat_tiny/backbone.pth");
    char wk[1000];
    snprintf(wk, sizeof wk, "%s", w);
    /* auto on a CPU without bf16 instructions: fp32, said and recorded */
    snprintf(cmd, sizeof cmd, "DINOMAP_CPU_BF16=0 %s features --progress none -m %s %s -o %s "
             "--tile 64 --halo 16 --precision auto", dm_bin(), wk, in, od);
    int st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "--precision auto: fp32"), "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--precision fp32", dm_bin(), wk, in, od);
    CHECKF((st = dm_run(cmd, &out)) == 0, "resume in fp32: exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "DINOMAP_CPU_BF16=0 %s features --progress none -m %s %s -o %s "
             "--tile 64 --halo 16 --precision bf16", dm_bin(), wk, in, od);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "this CPU has no bf16"), "bf16 without: exit %d: %s", st, out);
    if (!dm_test_bf16("engine_precision_in_configuration"))
        return;
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--precision bf16", dm_bin(), wk, in, od);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "another configuration") &&
           strstr(out, "precision: \"bf16\" now, \"fp32\""), "exit %d: %s", st, out);
    snprintf(od2, sizeof od2, "%s/b", t);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--precision auto", dm_bin(), wk, in, od2);
    st = dm_run(cmd, &out);
    CHECKF(st == 0 && strstr(out, "--precision auto: bf16"), "exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--precision bf16", dm_bin(), wk, in, od2);
    CHECKF((st = dm_run(cmd, &out)) == 0, "resume in bf16: exit %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16",
             dm_bin(), wk, in, od2);
    st = dm_run(cmd, &out);
    CHECKF(st == 1 && strstr(out, "precision: \"fp32\" now, \"bf16\""), "exit %d: %s", st,
           out);
    char a[1200], b[1200];
    snprintf(a, sizeof a, "%s/features.tif", od);
    snprintf(b, sizeof b, "%s/features.tif", od2);
    int wa, ha, ba, wb, hb, bb;
    float *fa = dm_read_all(a, &wa, &ha, &ba), *fb = dm_read_all(b, &wb, &hb, &bb);
    int same_shape = fa && fb && wa == wb && ha == hb && ba == bb;
    double r = same_shape ? dm_rel_err(fb, fa, (int64_t)wa * ha * ba) : INFINITY;
    free(fa), free(fb);
    CHECKF(same_shape && r <= DM_GOLDEN_TOL_BF16 && r > 0, "bf16 features vs fp32: %.3g", r);
}

TEST(engine_joint_run_equals_separate_runs)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], why[600], fd[1100], cd[1100], jd[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 300, 260, 22) == 0);
    CHECK(write_joint_ini(t) == 0);
    snprintf(fd, sizeof fd, "%s/f", t);
    snprintf(cd, sizeof cd, "%s/c", t);
    snprintf(jd, sizeof jd, "%s/j", t);
    /* features with the joint run's normalization (chm's, the default when chm runs) */
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--chunk 2 --norm chm", dm_bin(), chm_model(), in, fd);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s --tile 64 --halo 16 "
             "--chunk 2", dm_bin(), chm_model(), in, cd);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(joint(t, jd, NULL, &out) == 0, "%s", out);
    static const char *fn[] = { "features.tif", "features_pca.tif", NULL }, *cn[] = { "chm.tif",
                                                                                       NULL };
    CHECKF(dm_same_outputs(fd, jd, fn, why, sizeof why), "%s", why);
    CHECKF(dm_same_outputs(cd, jd, cn, why, sizeof why), "%s", why);
    /* the embeddings of the tile index too */
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import sqlite3; "
             "q = 'SELECT tile_id, cls, mean FROM embeddings ORDER BY tile_id'; "
             "a = sqlite3.connect('%s/tiles.gpkg').execute(q).fetchall(); "
             "b = sqlite3.connect('%s/tiles.gpkg').execute(q).fetchall(); "
             "assert len(a) == 25 and a == b; print('same')\"", fd, jd);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "same"), "%s", out);
}

TEST(engine_run_configs_and_bad_configs)
{
    const char *t = dm_test_tmpdir();
    char cmd[8192], p[1200];
    const char *out;
    /* every example in configs/ runs as shipped (only the output folder moved) */
    const char *names[] = { "features-sample.ini", "chm-sample.ini", "region-cron.ini" };
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "%s run configs/%s -o %s/c%d -q", dm_bin(), names[i], t, i);
        CHECKF(dm_run(cmd, &out) == 0, "configs/%s: %s", names[i], out);
        snprintf(cmd, sizeof cmd, "ls %s/c%d/*.tif %s/c%d/tiles.gpkg", t, i, t, i);
        CHECKF(dm_run(cmd, &out) == 0, "configs/%s made no outputs: %s", names[i], out);
    }
    /* bad files name the line, the key and the problem, and write nothing */
    char in[1100];
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 64, 64, 3) == 0);
    static const struct {
        const char *body, *says;
    } bad[] = {
        { "products = features\nmodel = %s\ninput = in.tif\ntiel = 64\n",
          "bad.ini:4: unknown key 'tiel'" },
        { "products = features\nmodel = %s\ninput = in.tif\n\ntile = abc\n",
          "bad.ini:5: tile = abc: expected a positive number" },
        { "products = features\nmodel = /nonexistent/w.pth\ninput = in.tif\n#%s\n",
          "bad.ini:2: model = /nonexistent/w.pth: No such file or directory" },
        { "products = features\nmodel = %s\ninput = none_*.tif\n",
          "bad.ini:3: input = none_*.tif: matches no file" },
        { "products = trees\nmodel = %s\ninput = in.tif\n", "bad.ini:1: products = trees" },
        { "[paths]\nmodel = %s\n", "bad.ini:2: unknown section [paths]" },
        { "model = %s\ninput = in.tif\n", "no products" },
        { "products = features\nmodel = %s\ninput = in.tif\nno-pca = maybe\n",
          "bad.ini:4: no-pca = maybe: expected true or false" },
        { "products = features\nmodel = %s\nthis is not a key value line\n", "bad.ini:3:" },
    };
    snprintf(p, sizeof p, "%s/bad.ini", t);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[2048];
        snprintf(body, sizeof body, bad[i].body, dm_golden("vitl_sat_tiny/backbone.pth"));
        CHECK(write_file(p, body) == 0);
        snprintf(cmd, sizeof cmd, "%s run %s -o %s/bad", dm_bin(), p, t);
        int st = dm_run(cmd, &out);
        CHECKF(st == 2 && strstr(out, bad[i].says), "case %zu: exit %d: %s", i, st, out);
        snprintf(cmd, sizeof cmd, "test ! -e %s/bad", t);
        CHECKF(dm_run(cmd, NULL) == 0, "case %zu left %s/bad", i, t);
    }
    /* a long line is refused with its number, not cut silently */
    char longp[400];
    memset(longp, 'x', 300);
    longp[300] = '\0';
    char body[1200];
    snprintf(body, sizeof body, "products = features\ninput = %s.tif\n", longp);
    CHECK(write_file(p, body) == 0);
    snprintf(cmd, sizeof cmd, "%s run %s -o %s/bad", dm_bin(), p, t);
    CHECKF(dm_run(cmd, &out) == 2 && strstr(out, "bad.ini:2: the line is longer"), "%s", out);
    /* globs, continuation lines, relative paths and a command-line override */
    snprintf(body, sizeof body, "[run]\nproducts = features\nmodel = %s\ninput = in*.tif\n"
             "  %s\noutput = rel_out ; relative to the file\ntile = 64\nhalo = 16\n",
             dm_golden("vitl_sat_tiny/backbone.pth"), in);
    CHECK(write_file(p, body) == 0);
    snprintf(cmd, sizeof cmd, "%s run %s --tile 32 -q", dm_bin(), p);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s status --json %s/rel_out", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "\"tile\":\t32"), "%s", out);
}

TEST(engine_block_cogs_and_vrt)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], why[600], a[1100], b[1100], p[1200], q[1200];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 300, 260, 23) == 0);
    CHECK(write_joint_ini(t) == 0);
    snprintf(a, sizeof a, "%s/one", t);
    snprintf(b, sizeof b, "%s/blocks", t);
    CHECKF(joint(t, a, NULL, &out) == 0, "%s", out);
    /* 0.0001 GiB: features (19×17 px × 128 bands × 4 B) and chm (300×260 × 4 B) in blocks */
    snprintf(cmd, sizeof cmd, "cd %s && %s run joint.ini -o %s -q --max-cog-gib 0.0001", t,
             dm_bin(), b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "ls %s/features_blocks/ %s/chm_blocks/ && test ! -e %s/features.tif "
             "&& test ! -e %s/chm.tif", b, b, b, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    int nblocks = 0;
    for (const char *s = out; (s = strstr(s, ".tif")); s++)
        nblocks++;
    CHECKF(nblocks >= 4, "only %d block files: %s", nblocks, out);
    static const struct { const char *one, *vrt; } pairs[] = {
        { "features.tif", "features.vrt" }, { "features_pca.tif", "features_pca.vrt" },
        { "chm.tif", "chm.vrt" },
    };
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", a, pairs[i].one);
        snprintf(q, sizeof q, "%s/%s", b, pairs[i].vrt);
        CHECKF(dm_same_raster(p, q, why, sizeof why), "%s", why);
    }
    snprintf(cmd, sizeof cmd, "for f in %s/chm_blocks/*.tif; do /usr/bin/python3 -m osgeo_utils."
             "samples.validate_cloud_optimized_geotiff $f || exit 1; done", b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* the folder moves: the VRT's paths are relative */
    snprintf(cmd, sizeof cmd, "mv %s %s/moved && gdalinfo %s/moved/chm.vrt >/dev/null", b, t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* finalize again with a larger limit: one COG per output, the blocks gone */
    snprintf(cmd, sizeof cmd, "%s finalize %s/moved -q --max-cog-gib 16 && test -e "
             "%s/moved/chm.tif && test ! -e %s/moved/chm.vrt && test ! -e %s/moved/chm_blocks",
             dm_bin(), t, t, t, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
}

TEST(engine_status_finalize_and_log)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], k[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 300, 260, 24) == 0);
    CHECK(write_joint_ini(t) == 0);
    snprintf(k, sizeof k, "%s/k", t);
    /* killed after 2 chunks: status says what is left; finalize makes partial outputs */
    snprintf(cmd, sizeof cmd, "cd %s && DINOMAP_FAULT=tile:9 %s run joint.ini -o %s --progress "
             "none --log %s/run.jsonl", t, dm_bin(), k, t);
    CHECKF(dm_run(cmd, &out) == 137, "%s", out);
    snprintf(cmd, sizeof cmd, "%s status %s", dm_bin(), k);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "2 of 9 done") && strstr(out, "left:") &&
           strstr(out, "features, chm") && strstr(out, "no end recorded"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s finalize %s --progress none", dm_bin(), k);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "7 of 9 chunks are not done"), "%s", out);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"from osgeo import gdal; import numpy as np; "
             "a = gdal.Open('%s/chm.tif').ReadAsArray(); n = np.isnan(a).mean(); "
             "print('nan share', n); assert 0.3 < n < 0.95\"", k);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* the run goes on to the end; the log holds start, chunk, error and summary lines */
    snprintf(cmd, sizeof cmd, "cd %s && %s run joint.ini -o %s --progress none --log %s/run.jsonl",
             t, dm_bin(), k, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import json; "
             "ev = [json.loads(l) for l in open('%s/run.jsonl')]; e = [x['event'] for x in ev]; "
             "assert e.count('start') == 2 and e.count('chunk') == 9 and e[-1] == 'summary', e; "
             "assert ev[-1]['exit'] == 0 and 'chm.tif' in ev[-1]['outputs']; print('log ok')\"", t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "log ok"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s status --json %s", dm_bin(), k);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    cJSON *j = cJSON_Parse(out);
    int ok = j && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "complete")) &&
             cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "outputs_up_to_date"));
    cJSON_Delete(j);
    CHECKF(ok, "%s", out);
    /* bad uses */
    snprintf(cmd, sizeof cmd, "%s status %s/nowhere", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "not a dinomap run folder"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s finalize %s/nowhere", dm_bin(), t);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "not a dinomap run folder"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s finalize", dm_bin());
    CHECKF(dm_run(cmd, &out) == 2, "%s", out);
}

TEST(engine_failed_runs_leave_nothing_and_drop_chunks)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], aoi[1100], nd[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/in.tif", t);
    CHECK(make_input(in, 128, 128, 25) == 0);
    /* an AOI far from the mosaic: refused before anything is written */
    snprintf(aoi, sizeof aoi, "%s/far.geojson", t);
    CHECK(write_file(aoi, "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\","
                          "\"properties\":{\"name\":\"urn:ogc:def:crs:EPSG::32631\"}},"
                          "\"features\":[{\"type\":\"Feature\",\"properties\":{},\"geometry\":"
                          "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[10,0],[10,10],[0,10],"
                          "[0,0]]]}}]}") == 0);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s/o1 --aoi %s", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), in, t, aoi);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "does not touch the mosaic"), "%s", out);
    snprintf(cmd, sizeof cmd, "test ! -e %s/o1", t);
    CHECKF(dm_run(cmd, NULL) == 0, "the AOI run left %s/o1", t);
    /* an all-nodata input: runs, finds nothing, leaves nothing */
    snprintf(nd, sizeof nd, "%s/nd.tif", t);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -scale 0 255 0 0 -a_nodata 0 %s %s", in, nd);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s/o2 --tile 64", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), nd, t);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "nothing was mapped"), "%s", out);
    snprintf(cmd, sizeof cmd, "test ! -e %s/o2", t);
    CHECKF(dm_run(cmd, NULL) == 0, "the all-nodata run left %s/o2", t);
    /* --drop-chunks: no chunks/ after a complete run; a rerun has nothing to do; a changed input
     * recomputes everything (the chunks are gone) and still equals a fresh run */
    snprintf(cmd, sizeof cmd, "%s features -q -m %s %s -o %s/d --tile 64 --halo 16 --drop-chunks "
             "&& test ! -e %s/d/chunks && test -e %s/d/features.tif && %s features -m %s %s -o "
             "%s/d --tile 64 --halo 16 --drop-chunks", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), in, t, t, t, dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), in, t);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    sleep(1);
    CHECK(make_input(in, 128, 128, 26) == 0);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s/d --tile 64 --halo 16 --progress none",
             dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"), in, t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "every chunk is recomputed"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s features -q -m %s %s -o %s/f --tile 64 --halo 16", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    char why[600], a[1100], b[1100];
    snprintf(a, sizeof a, "%s/d", t);
    snprintf(b, sizeof b, "%s/f", t);
    static const char *names[] = { "features.tif", NULL };
    CHECKF(dm_same_outputs(a, b, names, why, sizeof why), "%s", why);
}

/* The window grid: cores tile the mosaic exactly; every window is S×S on the patch grid, holds
 * its core, and reaches at most a halo past the (16-px padded) mosaic wherever the mosaic is at
 * least a tile wide (no window is mostly padding); a narrower mosaic sits in the middle of its
 * window; chunk extents are the union of their windows. */
TEST(engine_grid_windows_inside_the_mosaic)
{
    static const int sz[][2] = { { 1600, 1600 }, { 1601, 999 }, { 100, 700 }, { 64, 64 },
                                 { 513, 17 }, { 5000, 640 } };
    static const int geo[][3] = { { 384, 64, 4 }, { 512, 64, 2 }, { 64, 16, 3 }, { 32, 0, 1 },
                                  { 96, 48, 2 } };
    dm_err err;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++)
        for (size_t k = 0; k < sizeof geo / sizeof geo[0]; k++) {
            dm_grid g;
            int W = sz[i][0], H = sz[i][1];
            CHECK(dm_grid_init(&g, W, H, geo[k][0], geo[k][1], geo[k][2], &err) == 0);
            int W16 = (W + 15) / 16 * 16, H16 = (H + 15) / 16 * 16;
            int64_t covered = 0;
            for (int r = 0; r < g.nrows; r++)
                for (int c = 0; c < g.ncols; c++) {
                    dm_window w = dm_grid_window(&g, r, c), cp = dm_grid_tile_patches(&g, r, c);
                    dm_window core = dm_grid_tile_core(&g, r, c);
                    covered += (int64_t)core.w * core.h;
                    CHECKF(w.w == g.S && w.h == g.S && w.x % 16 == 0 && w.y % 16 == 0,
                           "%dx%d tile %d: window %d,%d %dx%d", W, H, geo[k][0], w.x, w.y, w.w,
                           w.h);
                    CHECKF(w.x <= cp.x * 16 && w.x + w.w >= (cp.x + cp.w) * 16 &&
                           w.y <= cp.y * 16 && w.y + w.h >= (cp.y + cp.h) * 16,
                           "%dx%d: window of tile %d,%d misses its core", W, H, r, c);
                    int h0 = g.halo;
                    if (W16 >= g.tile)
                        CHECKF(w.x >= -h0 && w.x + w.w <= W16 + h0,
                               "%dx%d S %d: window x %d reaches past the halo", W, H, g.S, w.x);
                    else
                        CHECKF(w.x <= 0 && w.x + w.w >= W16 && abs(-w.x - (w.x + w.w - W16)) <= 16,
                               "%dx%d S %d: window x %d not centred", W, H, g.S, w.x);
                    if (H16 >= g.tile)
                        CHECKF(w.y >= -h0 && w.y + w.h <= H16 + h0,
                               "%dx%d: window y %d reaches past the halo", W, H, w.y);
                }
            CHECKF(covered == (int64_t)W * H, "%dx%d: cores cover %lld px", W, H,
                   (long long)covered);
            for (int ch = 0; ch < dm_grid_nchunks(&g); ch++) {
                int r0, c0, r1, c1;
                dm_window p, e = dm_grid_chunk_extent(&g, ch);
                dm_grid_chunk(&g, ch, &r0, &c0, &r1, &c1, &p);
                int x0 = W, y0 = H, x1 = 0, y1 = 0;
                for (int r = r0; r < r1; r++)
                    for (int c = c0; c < c1; c++) {
                        dm_window w = dm_grid_window(&g, r, c);
                        x0 = w.x < x0 ? w.x : x0, y0 = w.y < y0 ? w.y : y0;
                        x1 = w.x + w.w > x1 ? w.x + w.w : x1, y1 = w.y + w.h > y1 ? w.y + w.h : y1;
                    }
                x0 = x0 < 0 ? 0 : x0, y0 = y0 < 0 ? 0 : y0, x1 = x1 > W ? W : x1,
                y1 = y1 > H ? H : y1;
                CHECKF(e.x == x0 && e.y == y0 && e.w == x1 - x0 && e.h == y1 - y0,
                       "%dx%d chunk %d: extent %d,%d %dx%d", W, H, ch, e.x, e.y, e.w, e.h);
            }
        }
}

/* Inputs that change shape rather than content: a source blanked to nodata (its chunks then
 * have no file, and the old files must not come back), a VRT regenerated with the same sources
 * (nothing to redo), the inputs given in another order (it decides which is on top). Also
 * --overwrite with a bad option keeps the folder's run, and finalize refuses a chunk file the
 * index lists but that is gone. */
TEST(engine_inputs_blanked_regenerated_reordered)
{
    const char *t = dm_test_tmpdir();
    char a[1100], b[1100], vrt[1100], cmd[8192], why[600], d1[1100], d2[1100];
    const char *out;
    snprintf(a, sizeof a, "%s/a.tif", t);
    snprintf(b, sizeof b, "%s/b.tif", t);
    snprintf(vrt, sizeof vrt, "%s/m.vrt", t);
    CHECK(dm_make_tif(a, 160, 128, 3, (double[6]){ 500000, 0.6, 0, 4000000, 0, -0.6 }, 32631, -1,
                      51) == 0);
    CHECK(dm_make_tif(b, 160, 128, 3, (double[6]){ 500096, 0.6, 0, 4000000, 0, -0.6 }, 32631, -1,
                      52) == 0);
    snprintf(d1, sizeof d1, "%s/r", t);
    snprintf(d2, sizeof d2, "%s/fresh", t);
    const char *m = dm_golden("vitl_sat_tiny/backbone.pth");
    static const char *names[] = { "features.tif", "features_pca.tif", NULL };
#define RUN(dir, inputs) snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s " \
                                  "--tile 32 --halo 16 --chunk 2", dm_bin(), m, inputs, dir)
    char both[2300];
    snprintf(both, sizeof both, "%s %s", a, b);
    RUN(d1, both);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* b blanked: every pixel nodata */
    sleep(1);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -scale 0 255 0 0 -a_nodata 0 %s %s/nb.tif && "
             "mv %s/nb.tif %s", b, t, t, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(d1, both);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(d2, both);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(dm_same_outputs(d1, d2, names, why, sizeof why), "after blanking an input: %s", why);
    /* the other order: b drawn first, a on top; redone (a second rerun has nothing to do) */
    snprintf(both, sizeof both, "%s %s", b, a);
    RUN(d1, both);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "order of the inputs"), "%s", out);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "%s", out);
    /* --overwrite with a bad option: refused, the run still there */
    snprintf(cmd, sizeof cmd, "%s features --progress none -m %s %s -o %s --tile 33 --overwrite",
             dm_bin(), m, a, d1);
    CHECKF(dm_run(cmd, &out) == 1, "%s", out);
    snprintf(cmd, sizeof cmd, "test -e %s/tiles.gpkg && test -e %s/features.tif", d1, d1);
    CHECKF(dm_run(cmd, &out) == 0, "a refused --overwrite removed the run");
    /* a VRT of both, regenerated with the same sources: nothing to redo */
    char vd[1100];
    snprintf(vd, sizeof vd, "%s/v", t);
    snprintf(cmd, sizeof cmd, "gdalbuildvrt -q %s %s %s", vrt, a, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(vd, vrt);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    sleep(1);
    snprintf(cmd, sizeof cmd, "rm %s && gdalbuildvrt -q %s %s %s", vrt, vrt, a, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(vd, vrt);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "a regenerated VRT redid work: %s", out);
    /* statistics written into the VRT change no pixel; its sources in another order do */
    sleep(1);
    snprintf(cmd, sizeof cmd, "gdalinfo -stats %s >/dev/null", vrt);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(vd, vrt);
    CHECKF(dm_run(cmd, &out) == 0 && !out[0], "VRT statistics redid work: %s", out);
    snprintf(cmd, sizeof cmd, "rm -f %s %s.aux.xml && gdalbuildvrt -q %s %s %s", vrt, vrt, vrt, b,
             a);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s --tile 32 --halo 16 --chunk 2 "
             "--progress none", dm_bin(), m, vrt, vd);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "m.vrt (changed)"), "reordered VRT sources: %s",
           out);
    snprintf(cmd, sizeof cmd, "rm %s && gdalbuildvrt -q %s %s %s", vrt, vrt, a, b);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    RUN(vd, vrt);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    /* a source of it changes: only that source's chunks (not all of them) */
    sleep(1);
    CHECK(dm_make_tif(a, 160, 128, 3, (double[6]){ 500000, 0.6, 0, 4000000, 0, -0.6 }, 32631, -1,
                      53) == 0);
    snprintf(cmd, sizeof cmd, "%s features -m %s %s -o %s --tile 32 --halo 16 --chunk 2 "
             "--progress none", dm_bin(), m, vrt, vd);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "a.tif (changed)") &&
           !strstr(out, "m.vrt (changed)"), "%s", out);
    /* finalize with a chunk file the index lists but that is gone: an error, not a hole */
    snprintf(cmd, sizeof cmd, "rm %s/chunks/c000000.features.tif && %s finalize %s -q", vd,
             dm_bin(), vd);
    CHECKF(dm_run(cmd, &out) == 1 && strstr(out, "is gone"), "%s", out);
#undef RUN
}

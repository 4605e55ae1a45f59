/* tests/test_faults.c — faults a run must survive, beyond the engine's own kill tests
 * (test_engine.c): a full disk (a small tmpfs, mounted when the tests run as root) in the tile
 * phase and in finalize, then a rerun once space is freed; kill -9 and SIGTERM at random points
 * (fault injection and real signals after a random delay, from a fixed seed), also during a
 * resume; a run killed inside a transaction of its index (a hot SQLite journal); two runs started
 * at once on one folder, and finalize / merge against a running folder. After each fault the index must be consistent (SQLite's integrity check, every chunk it lists
 * done is there and holds what an uninterrupted run wrote, no temporary file left by a clean
 * failure) and the rerun's outputs identical, bit for bit, to an uninterrupted run's. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gdal.h>
#include <ogr_api.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "golden.h"
#include "test.h"

static const char *const NAMES[] = { "features.tif", "features_pca.tif", "chm.tif", NULL };

static const char *chm_model(void) { return dm_golden("chmv2_tiny_hf/model.safetensors"); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define write_file dm_write_text

/* The engine tests' joint run: features + chm of a 300×260 mosaic in 25 windows of 64 + 2·16 px,
 * 9 chunks of 2×2 tiles (t/in.tif, t/joint.ini). */
static int setup_joint(const char *t, uint32_t seed)
{
    char p[1100], ini[4096];
    snprintf(p, sizeof p, "%s/in.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    if (dm_make_tif(p, 300, 260, 3, gt, 32631, -1, seed))
        return -1;
    snprintf(p, sizeof p, "%s/joint.ini", t);
    snprintf(ini, sizeof ini, "[run]\nproducts = features, chm\nmodel = %s\ninput = in.tif\n"
             "tile = 64\nhalo = 16\nchunk = 2\n", chm_model());
    return write_file(p, ini);
}

/* `dinomap run joint.ini -o OUT ARGS` in t (env: "VAR=value " or ""). */
static int joint(const char *t, const char *env, const char *out, const char *args,
                 const char **msg)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "cd %s && %s%s run joint.ini -o %s --progress none %s", t, env,
             dm_bin(), out, args);
    return dm_run(cmd, msg);
}

/* Starts `sh -c "cd T && exec CMD"` (so the pid is the command's) with its output in LOG. */
static pid_t spawn(const char *t, const char *cmd, const char *log)
{
    char full[8192];
    snprintf(full, sizeof full, "cd %s && exec %s >%s 2>&1", t, cmd, log);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", full, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* The exit status, or 128 + the signal that ended it (137: SIGKILL, 143: SIGTERM). */
static int wait_code(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}

/* 1 when the process has ended (its exit status, as wait_code gives it, in *code), 0 while it
 * runs: a process reaped here must not be waited for again. */
static int ended(pid_t pid, int *code)
{
    int st;
    if (*code != -2)
        return 1; /* reaped before */
    if (waitpid(pid, &st, WNOHANG) != pid)
        return 0;
    *code = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    return 1;
}

/* A run in the background (spawn), started and waited for until its folder od has its index in
 * place (or it ended): what another command meets while it works. bg_finish: 1 when it was still
 * at work until then; its exit status in *st. */
typedef struct bg_run {
    pid_t pid;
    int code;
} bg_run;

static void bg_start(bg_run *b, const char *t, const char *cmd, const char *log, const char *od)
{
    char idx[1200];
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", od);
    b->pid = spawn(t, cmd, log);
    b->code = -2;
    while (access(idx, F_OK) != 0 && !ended(b->pid, &b->code))
        usleep(2000);
}

static int bg_finish(bg_run *b, int *st)
{
    int running = !ended(b->pid, &b->code);
    *st = b->code != -2 ? b->code : wait_code(b->pid);
    return running;
}

static void slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    size_t k = f ? fread(buf, 1, n - 1, f) : 0;
    buf[k] = '\0';
    if (f)
        fclose(f);
}

/* A fixed-seed generator: the same "random" points on every run of the test. */
static uint32_t next(uint32_t *s)
{
    *s = dm_hash32(*s + 0x9e3779b9u);
    return *s;
}

/* What `dinomap status --json DIR` says: chunks done and total, outputs up to date. 0 or -1. */
static int status(const char *dir, int *done, int *total, int *uptodate, char *why, size_t n)
{
    char cmd[4200];
    const char *out;
    snprintf(cmd, sizeof cmd, "%s status --json %s", dm_bin(), dir);
    int st = dm_run(cmd, &out);
    cJSON *j = st == 0 ? cJSON_Parse(out) : NULL;
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(j, "chunks");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ch, "done"),
                *tt = cJSON_GetObjectItemCaseSensitive(ch, "total");
    int ok = cJSON_IsNumber(d) && cJSON_IsNumber(tt);
    if (ok) {
        *done = d->valueint, *total = tt->valueint;
        *uptodate = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "outputs_up_to_date"));
    } else {
        snprintf(why, n, "dinomap status --json %s: exit %d: %.300s", dir, st, out);
    }
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

/* A temporary name a clean failure must not leave (a SIGKILL may; the next run reuses it). */
static int temp_name(const char *name)
{
    return strstr(name, ".part") || strstr(name, ".tmp.") || strstr(name, "-journal") ||
           strstr(name, ".tiles.new") || strstr(name, "-wal");
}

/* The first temporary file in dir and dir/chunks, into *found; 0 when none. */
static int stray_temp(const char *dir, char *found, size_t n)
{
    for (int sub = 0; sub < 2; sub++) {
        char d[1200];
        snprintf(d, sizeof d, "%s%s", dir, sub ? "/chunks" : "");
        DIR *h = opendir(d);
        if (!h)
            continue;
        struct dirent *e;
        int hit = 0;
        while (!hit && (e = readdir(h)))
            if (temp_name(e->d_name)) {
                snprintf(found, n, "%s/%s", d, e->d_name);
                hit = 1;
            }
        closedir(h);
        if (hit)
            return 1;
    }
    return 0;
}

/* The index of run folder od is consistent: dinomap status reads it; SQLite's integrity check
 * says ok; every chunk it lists as done has its files, holding what the uninterrupted run in ref
 * wrote (bit for bit); status counts the same done chunks; with clean, no temporary file is left.
 * *done: the chunks done, *uptodate: whether the outputs are said to be. 1 when consistent. */
static int consistent(const char *od, const char *ref, int clean, int *done, int *uptodate,
                      char *why, size_t n)
{
    int total = 0;
    if (status(od, done, &total, uptodate, why, n))
        return 0;
    char idx[1200], p[1300], q[1300];
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", od);
    GDALAllRegister();
    CPLPushErrorHandler(CPLQuietErrorHandler);
    GDALDatasetH ds = GDALOpenEx(idx, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL);
    CPLPopErrorHandler();
    if (!ds) {
        snprintf(why, n, "%s: cannot open", idx);
        return 0;
    }
    int ok = 1, listed = 0;
    OGRLayerH r = GDALDatasetExecuteSQL(ds, "PRAGMA integrity_check", NULL, NULL);
    OGRFeatureH f = r ? OGR_L_GetNextFeature(r) : NULL;
    const char *ic = f ? OGR_F_GetFieldAsString(f, 0) : "(no answer)";
    if (strcmp(ic, "ok")) {
        snprintf(why, n, "%s: integrity_check: %s", idx, ic);
        ok = 0;
    }
    OGR_F_Destroy(f);
    if (r)
        GDALDatasetReleaseResultSet(ds, r);
    r = ok ? GDALDatasetExecuteSQL(ds, "SELECT state, file FROM chunks WHERE state = 'done'",
                                   NULL, NULL) : NULL;
    while (ok && r && (f = OGR_L_GetNextFeature(r))) {
        listed++;
        char files[1024];
        snprintf(files, sizeof files, "%s", OGR_F_GetFieldAsString(f, 1));
        OGR_F_Destroy(f);
        char *save = NULL;
        for (char *s = strtok_r(files, " ", &save); ok && s; s = strtok_r(NULL, " ", &save)) {
            snprintf(p, sizeof p, "%s/%s", od, s);
            snprintf(q, sizeof q, "%s/%s", ref, s);
            if (access(p, F_OK)) {
                snprintf(why, n, "%s: listed done in the index, but missing", p);
                ok = 0;
            } else if (!dm_same_raster(q, p, why, n)) {
                ok = 0;
            }
        }
    }
    if (r)
        GDALDatasetReleaseResultSet(ds, r);
    GDALClose(ds);
    if (ok && listed != *done) {
        snprintf(why, n, "%s: %d chunks done in the index, status says %d", od, listed, *done);
        ok = 0;
    }
    char tmp[1300];
    if (ok && clean && stray_temp(od, tmp, sizeof tmp)) {
        snprintf(why, n, "%s: a temporary file is left", tmp);
        ok = 0;
    }
    return ok;
}

/* --- a full disk ----------------------------------------------------------------------------- */

static int mount_tmpfs(const char *dir, int kib, int remount)
{
    char o[64];
    snprintf(o, sizeof o, "size=%dk,mode=0755", kib);
    return mount("tmpfs", dir, "tmpfs", remount ? MS_REMOUNT : 0, o);
}

static void unmount(const char *dir)
{
    if (umount(dir) != 0)
        umount2(dir, MNT_DETACH);
}

/* One case: a run in OUTDIR on a tmpfs of kib KiB (or, filler > 0, a 64 MiB one holding a filler
 * file that leaves `kib` KiB free) fails cleanly, naming the file and the cause, the index
 * consistent; once the space is freed (remounted larger, or the filler deleted), the rerun
 * completes with the outputs of an uninterrupted run. *phase: 0 the run could not even start
 * its index, 1 the tile phase, 2 finalize. */
static void disk_full_case(const char *t, const char *mnt, const char *ref, int kib, int filler,
                           int may_pass, int *phase, int *passed)
{
    char od[1200], why[1000], fill[1200], lim[200];
    const char *out;
    snprintf(od, sizeof od, "%s/o", mnt);
    snprintf(fill, sizeof fill, "%s/filler", mnt);
    if (filler) { /* 64 MiB, of which all but kib KiB are taken */
        int fd = open(fill, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECKF(fd >= 0 && posix_fallocate(fd, 0, (off_t)(65536 - kib) * 1024) == 0, "filler");
        close(fd);
    }
    double t0 = now();
    int st = joint(t, "", od, "", &out);
    double secs = now() - t0;
    char said[4096];
    snprintf(said, sizeof said, "%s", out);
    out = said;
    if (st == 0 && may_pass) { /* the room was enough after all (another GDAL's sizes) */
        printf("    %d KiB: enough room: the run completed\n", kib);
        CHECKF(dm_same_outputs(ref, od, NAMES, why, sizeof why), "%d KiB: %s", kib, why);
        *phase = 3, *passed = 1;
        return;
    }
    CHECKF(st == 1, "%d KiB: exit %d (expected 1, a clean failure): %s", kib, st, out);
    /* the message names the file or folder, and the cause */
    CHECKF(strstr(out, od), "%d KiB: the message does not name %s: %s", kib, od, out);
    CHECKF(strstr(out, "No space left on device"), "%d KiB: the message does not say the disk "
           "is full: %s", kib, out);
    CHECKF(strcasestr(out, "free space") && strstr(out, "run the same command"),
           "%d KiB: the message does not say what to do: %s", kib, out);
    int done = 0, up = 0;
    char idx[1300];
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", od);
    if (access(idx, F_OK) != 0) {
        /* no index: the run made nothing and must leave nothing */
        *phase = 0;
        char tmp[1300];
        CHECKF(!stray_temp(od, tmp, sizeof tmp), "%d KiB: %s is left", kib, tmp);
        snprintf(lim, sizeof lim, "before its index was in place");
    } else {
        CHECKF(consistent(od, ref, 1, &done, &up, why, sizeof why), "%d KiB: %s", kib, why);
        CHECKF(!up, "%d KiB: the outputs are said to be up to date after a failure", kib);
        *phase = done < 9 ? 1 : 2;
        snprintf(lim, sizeof lim, "%s, %d of 9 chunks done", done < 9 ? "in the tile phase"
                 : "in finalize", done);
    }
    const char *nl = strstr(out, "No space left on device");
    const char *b = nl;
    while (b > out && b[-1] != '\n')
        b--;
    printf("    %d KiB%s: exit 1 after %.1f s, %s: %.*s\n", kib, filler ? " free (filler)" : "",
           secs, lim, (int)(strcspn(b, "\n")), b);
    /* free space and run again */
    if (filler)
        CHECKF(unlink(fill) == 0, "%s: %s", fill, strerror(errno));
    else
        CHECKF(mount_tmpfs(mnt, 65536, 1) == 0, "remount: %s", strerror(errno));
    st = joint(t, "", od, "--threads 1", &out);
    CHECKF(st == 0, "%d KiB: the rerun: exit %d: %s", kib, st, out);
    CHECKF(dm_same_outputs(ref, od, NAMES, why, sizeof why), "%d KiB: %s", kib, why);
    CHECKF(consistent(od, ref, 1, &done, &up, why, sizeof why) && done == 9 && up,
           "%d KiB after the rerun: %s (%d done, up to date %d)", kib, why, done, up);
    *passed = 1;
}

/* A full disk: the sizes, measured with this mosaic (a full run leaves ~1.9 MB; finalize needs
 * ~34 MB while it writes features.tif, whose temporary file holds one full block per band),
 * run out while the index is made, in the tile phase (in a chunk file or in the index) and in
 * finalize. As root only (a tmpfs); else skipped, saying so. */
TEST(faults_disk_full_then_rerun)
{
    if (geteuid() != 0) {
        printf("    skipped: a full disk is tested on a small tmpfs, which needs root\n");
        return;
    }
    const char *t = dm_test_tmpdir();
    char ref[1100], mnt[1100];
    const char *out;
    CHECK(setup_joint(t, 21) == 0);
    snprintf(ref, sizeof ref, "%s/ref", t);
    CHECKF(joint(t, "", ref, "", &out) == 0, "%s", out);
    snprintf(mnt, sizeof mnt, "%s/mnt", t);
    CHECK(mkdir(mnt, 0755) == 0);
    if (mount_tmpfs(mnt, 1024, 0) != 0) {
        printf("    skipped: cannot mount a tmpfs on %s: %s\n", mnt, strerror(errno));
        return;
    }
    unmount(mnt);
    /* 34250 KiB: room for finalize's temporary features.tif, not for its COG copy (a narrow
     * window: with other sizes of GDAL's files the run may complete, which is fine) */
    static const struct {
        int kib, filler, may_pass;
    } c[] = { { 200, 0, 0 },  { 600, 0, 0 },  { 800, 0, 0 },    { 1100, 0, 0 },
              { 4096, 0, 0 }, { 8192, 1, 0 }, { 34250, 0, 1 } };
    int seen[4] = { 0 };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int phase = -1, passed = 0;
        CHECKF(mount_tmpfs(mnt, c[i].filler ? 65536 : c[i].kib, 0) == 0, "mount: %s",
               strerror(errno));
        disk_full_case(t, mnt, ref, c[i].kib, c[i].filler, c[i].may_pass, &phase, &passed);
        unmount(mnt);
        if (!passed)
            return; /* said why */
        seen[phase]++;
    }
    CHECKF(seen[1] && seen[2], "the sizes did not run out in both phases (tile phase %d, "
           "finalize %d)", seen[1], seen[2]);
    printf("    out of room: %d before the index, %d in the tile phase, %d in finalize; %d "
           "completed\n", seen[0], seen[1], seen[2], seen[3]);
}

/* --- kill -9 and SIGTERM at random points -------------------------------------------------- */

/* A rerun with other threads and batch: it must finish, with the uninterrupted run's outputs. */
static int rerun_same(const char *t, const char *k, const char *ref, uint32_t *seed, char *why,
                      size_t n)
{
    char args[64];
    const char *out;
    snprintf(args, sizeof args, "--threads %u --batch %u", 1 + next(seed) % 2,
             1 + next(seed) % 3);
    int st = joint(t, "", k, args, &out);
    if (st != 0) {
        snprintf(why, n, "the rerun (%s): exit %d: %.400s", args, st, out);
        return 0;
    }
    if (!dm_same_outputs(ref, k, NAMES, why, n))
        return 0;
    int done = 0, up = 0;
    if (!consistent(k, ref, 1, &done, &up, why, n))
        return 0;
    if (done != 9 || !up) {
        snprintf(why, n, "after the rerun: %d of 9 chunks done, outputs up to date %d", done, up);
        return 0;
    }
    return 1;
}

/* Starts the joint run into k, sends sig after `delay` s (unless it ended), returns how it
 * ended: 0 (finished first), 4 (SIGTERM: stopped cleanly), 137 (SIGKILL), 143 (SIGTERM before
 * the command set its handler up: the default action). */
static int kill_after(const char *t, const char *k, double delay, int sig, const char *log)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s run joint.ini -o %s --progress none", dm_bin(), k);
    pid_t pid = spawn(t, cmd, log);
    if (pid < 0)
        return -1;
    struct timespec ts = { (time_t)delay, (long)((delay - (double)(time_t)delay) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    kill(pid, sig); /* harmless when it has ended (a zombie until waited for) */
    return wait_code(pid);
}

/* 10 runs killed at points drawn from a fixed seed, then resumed with other threads and batches:
 * five by fault injection (SIGKILL in the tile phase, between a chunk's rename and its commit,
 * during finalize; SIGTERM after a tile), three by a real SIGKILL or SIGTERM after a random
 * delay within an uninterrupted run's duration, two killed twice (the run, then its rerun)
 * before the last rerun. Wherever the kills land, the run ends by SIGKILL, stops cleanly (4) or
 * finishes (0), its index stays consistent, and the rerun gives the uninterrupted outputs. */
TEST(faults_random_kills_resume_to_identical_outputs)
{
    const char *t = dm_test_tmpdir();
    char ref[1100], k[1100], why[1000], log[1200], fault[64];
    const char *out;
    CHECK(setup_joint(t, 21) == 0);
    snprintf(ref, sizeof ref, "%s/ref", t);
    snprintf(log, sizeof log, "%s/kill.log", t);
    double t0 = now();
    CHECKF(joint(t, "", ref, "", &out) == 0, "%s", out);
    double T = now() - t0; /* an uninterrupted run, start to end */
    uint32_t seed = 20240607u;
    static const char *kinds[] = { "tile", "commit", "finalize", "sigterm" };
    static const int range[] = { 25, 9, 10, 25 }; /* tiles, chunks, finalize steps, tiles */
    int ended[4] = { 0 }; /* finished, stopped (4), SIGKILL, SIGTERM before its handler */
    for (int i = 0; i < 10; i++) {
        snprintf(k, sizeof k, "%s/k%d", t, i);
        int kills = i >= 8 ? 2 : 1, killed = 0; /* killed: a SIGKILL hit this folder */
        for (int round = 0; round < kills; round++) {
            int st, sig;
            char what[128];
            if (i < 5 && round == 0) { /* fault injection */
                int kind = i < 4 ? i : (int)(next(&seed) % 4); /* every kind at least once */
                int at = 1 + (int)(next(&seed) % range[kind]);
                snprintf(fault, sizeof fault, "DINOMAP_FAULT=%s:%d ", kinds[kind], at);
                snprintf(what, sizeof what, "%.*s", (int)strlen(fault) - 1, fault);
                st = joint(t, fault, k, "", &out);
                sig = kind == 3 ? SIGTERM : SIGKILL;
                CHECKF(st == (sig == SIGKILL ? 137 : 4), "run %d, %s: exit %d: %s", i, what, st,
                       out);
            } else { /* a real signal after a random delay */
                /* killed twice: the first kill early enough that its rerun has chunks to do */
                double lo = i < 8 ? 0 : round ? 0 : 0.2, hi = i < 8 ? 1 : round ? 0.5 : 0.5;
                double delay = T * (lo + (hi - lo) * (double)(next(&seed) % 1000) / 1000.0);
                sig = (i + round) % 2 ? SIGTERM : SIGKILL;
                snprintf(what, sizeof what, "%s after %.2f s", sig == SIGKILL ? "SIGKILL"
                         : "SIGTERM", delay);
                st = kill_after(t, k, delay, sig, log);
                char buf[4096];
                slurp(log, buf, sizeof buf);
                CHECKF(st == 0 || st == 128 + sig || (sig == SIGTERM && st == 4),
                       "run %d, %s: exit %d: %s", i, what, st, buf);
            }
            ended[st == 0 ? 0 : st == 4 ? 1 : st == 137 ? 2 : 3]++;
            char idx[1200];
            snprintf(idx, sizeof idx, "%s/tiles.gpkg", k);
            int done = -1, up = 0;
            /* the index as the kill left it; a SIGKILL may leave temporary files (the next
             * run of their chunk reuses the name), a clean stop none of its own */
            killed |= st != 0 && st != 4;
            if (access(idx, F_OK) == 0)
                CHECKF(consistent(k, ref, !killed, &done, &up, why, sizeof why),
                       "run %d, %s: %s", i, what, why);
            printf("    run %d%s: %s: %s, %d chunks done\n", i, round ? " (its rerun)" : "", what,
                   st == 0 ? "finished first" : st == 4 ? "stopped cleanly (exit 4)"
                   : st == 137 ? "killed" : "killed by SIGTERM before its handler was set",
                   done < 0 ? 0 : done);
        }
        CHECKF(rerun_same(t, k, ref, &seed, why, sizeof why), "run %d: %s", i, why);
    }
    printf("    10 runs: %d finished before the signal, %d stopped (exit 4), %d killed by "
           "SIGKILL, %d by SIGTERM before its handler; an uninterrupted run takes %.2f s\n",
           ended[0], ended[1], ended[2], ended[3], T);
}

/* --- two runs on one folder at once -------------------------------------------------------- */

/* Starts a and b at once in t; *sa, *sb their exit status, oa / ob their output. */
static void race(const char *t, const char *a, const char *b, int *sa, int *sb, char *oa,
                 char *ob, size_t n)
{
    char la[1200], lb[1200];
    snprintf(la, sizeof la, "%s/a.log", t);
    snprintf(lb, sizeof lb, "%s/b.log", t);
    pid_t pa = spawn(t, a, la), pb = spawn(t, b, lb);
    *sa = wait_code(pa);
    *sb = wait_code(pb);
    slurp(la, oa, n);
    slurp(lb, ob, n);
}

TEST(faults_two_runs_on_one_folder)
{
    const char *t = dm_test_tmpdir();
    char ref[1100], ref3[1100], od[1100], why[1000], a[4200], b[4200], oa[4096], ob[4096];
    const char *out;
    int sa, sb;
    CHECK(setup_joint(t, 21) == 0);
    snprintf(ref, sizeof ref, "%s/ref", t);
    snprintf(ref3, sizeof ref3, "%s/ref3", t);
    CHECKF(joint(t, "", ref, "", &out) == 0, "%s", out);
    CHECKF(joint(t, "", ref3, "--chunk 3", &out) == 0, "%s", out);
    /* the same run twice at once, on a fresh folder and on a killed one being resumed */
    for (int resume = 0; resume < 2; resume++) {
        snprintf(od, sizeof od, "%s/same%d", t, resume);
        if (resume)
            CHECKF(joint(t, "DINOMAP_FAULT=tile:5 ", od, "", &out) == 137, "%s", out);
        snprintf(a, sizeof a, "%s run joint.ini -o %s --progress none", dm_bin(), od);
        race(t, a, a, &sa, &sb, oa, ob, sizeof oa);
        const char *lost = sa == 3 ? oa : ob;
        CHECKF((sa == 0 && sb == 3) || (sa == 3 && sb == 0), "%s: exit %d and %d: %s / %s",
               resume ? "resuming" : "fresh", sa, sb, oa, ob);
        CHECKF(strstr(lost, od) && strstr(lost, ".dinomap.lock") && strstr(lost, "in use"),
               "the refused run says: %s", lost);
        CHECKF(dm_same_outputs(ref, od, NAMES, why, sizeof why), "%s", why);
        int done = 0, up = 0;
        CHECKF(consistent(od, ref, 1, &done, &up, why, sizeof why) && done == 9 && up, "%s", why);
    }
    /* two configurations at once on a fresh folder: one wins, the other refuses and leaves the
     * winner's run whole */
    snprintf(od, sizeof od, "%s/two", t);
    snprintf(a, sizeof a, "%s run joint.ini -o %s --progress none", dm_bin(), od);
    snprintf(b, sizeof b, "%s run joint.ini -o %s --progress none --chunk 3", dm_bin(), od);
    race(t, a, b, &sa, &sb, oa, ob, sizeof oa);
    CHECKF((sa == 0) != (sb == 0), "two configurations: exit %d and %d: %s / %s", sa, sb, oa,
           ob);
    const char *lost = sa == 0 ? ob : oa;
    int ls = sa == 0 ? sb : sa;
    CHECKF((ls == 3 && strstr(lost, ".dinomap.lock")) ||
           (ls == 1 && strstr(lost, "another configuration")), "the loser: exit %d: %s", ls,
           lost);
    CHECKF(dm_same_outputs(sa == 0 ? ref : ref3, od, NAMES, why, sizeof why), "%s", why);
    int done = 0, up = 0, total = 0;
    CHECKF(status(od, &done, &total, &up, why, sizeof why) == 0 && done == total && up &&
           total == (sa == 0 ? 9 : 4), "%s: %d of %d chunks, up to date %d", why, done, total,
           up);
    printf("    two configurations at once: the %s won, the other exited %d\n",
           sa == 0 ? "first" : "second", ls);
    /* finalize and status while a run works in the folder: finalize is refused (it would write
     * the outputs under the run), status reads the index */
    snprintf(od, sizeof od, "%s/busy", t);
    snprintf(a, sizeof a, "%s run joint.ini -o %s --progress none --threads 1", dm_bin(), od);
    int tried = 0;
    for (int attempt = 0; attempt < 3 && !tried; attempt++) {
        char la[1200], cmd[4200];
        snprintf(la, sizeof la, "%s/busy.log", t);
        bg_run bg;
        bg_start(&bg, t, a, la, od);
        snprintf(cmd, sizeof cmd, "%s finalize %s --progress none", dm_bin(), od);
        int sf = dm_run(cmd, &out);
        char fo[4096];
        snprintf(fo, sizeof fo, "%s", out);
        snprintf(cmd, sizeof cmd, "%s status %s", dm_bin(), od);
        int ss = dm_run(cmd, &out);
        int running = bg_finish(&bg, &sa); /* still at work after both */
        CHECKF(sa == 0, "the run: exit %d", sa);
        if (!running)
            continue; /* the run ended first: nothing was tested, try again */
        tried = 1;
        CHECKF(sf == 3 && strstr(fo, od) && strstr(fo, ".dinomap.lock"),
               "finalize during a run: exit %d: %s", sf, fo);
        CHECKF(ss == 0 && strstr(out, "products"), "status during a run: exit %d: %s", ss, out);
    }
    CHECKF(tried, "the run always ended before finalize was tried");
    CHECKF(dm_same_outputs(ref, od, NAMES, why, sizeof why), "%s", why);
    /* merge from a shard still running: refused (test_shard.c holds the lock with flock(1);
     * here a real run holds it) */
    char s1[1100], s2[1100], m[1100];
    snprintf(s1, sizeof s1, "%s/s1", t);
    snprintf(s2, sizeof s2, "%s/s2", t);
    snprintf(m, sizeof m, "%s/merged", t);
    CHECKF(joint(t, "", s2, "--shard 2/2", &out) == 0, "%s", out);
    snprintf(a, sizeof a, "%s run joint.ini -o %s --progress none --threads 1 --shard 1/2",
             dm_bin(), s1);
    tried = 0;
    for (int attempt = 0; attempt < 3 && !tried; attempt++) {
        char la[1200], cmd[4200];
        snprintf(la, sizeof la, "%s/s1.log", t);
        bg_run bg;
        bg_start(&bg, t, a, la, s1);
        snprintf(cmd, sizeof cmd, "%s merge %s %s %s --progress none", dm_bin(), m, s1, s2);
        int sm = dm_run(cmd, &out);
        int running = bg_finish(&bg, &sa);
        CHECKF(sa == 0, "shard 1/2: exit %d", sa);
        if (!running)
            continue;
        tried = 1;
        CHECKF(sm == 3 && strstr(out, "in use") && strstr(out, s1),
               "merge from a running shard: exit %d: %s", sm, out);
    }
    CHECKF(tried, "shard 1/2 always ended before merge was tried");
    snprintf(a, sizeof a, "%s merge %s %s %s --progress none", dm_bin(), m, s1, s2);
    CHECKF(dm_run(a, &out) == 0, "%s", out);
    CHECKF(dm_same_outputs(ref, m, NAMES, why, sizeof why), "merged: %s", why);
}

/* --- killed inside a transaction of the index ---------------------------------------------- */

/* Leaves a hot rollback journal beside od/tiles.gpkg, as a run SIGKILLed inside a chunk's
 * transaction does (a real kill lands there only by chance: the engine's transaction is short),
 * by a process that changes the index in a transaction and is then SIGKILLed. */
static int leave_hot_journal(const char *od)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import sqlite3, os, signal; "
             "c = sqlite3.connect('%s/tiles.gpkg', isolation_level=None); "
             "c.execute('PRAGMA cache_size = 1'); c.execute('BEGIN'); "
             "c.execute(\\\"UPDATE chunks SET state = 'pending', file = NULL\\\"); "
             "c.execute('DELETE FROM embeddings'); os.kill(os.getpid(), signal.SIGKILL)\"; "
             "test -s %s/tiles.gpkg-journal", od, od);
    return dm_run(cmd, NULL);
}

/* A run killed inside an index transaction leaves tiles.gpkg-journal. The readers of the index
 * (status, the rerun's first look at the folder, merge) opened it read-only, and SQLite cannot
 * roll a journal back for a read-only connection: every rerun failed ("attempt to write a
 * readonly database") until something opened the index for update. And --overwrite removed the
 * old index but not its journal, which SQLite then replayed into the new index (damaged: "chunk
 * id 4 out of range"). Now the journal is rolled back (the chunks it recorded done stay done)
 * or goes with its index. */
TEST(faults_killed_inside_an_index_transaction)
{
    const char *t = dm_test_tmpdir();
    char ref[1100], ref3[1100], od[1100], why[1000];
    const char *out;
    CHECK(setup_joint(t, 21) == 0);
    snprintf(ref, sizeof ref, "%s/ref", t);
    snprintf(ref3, sizeof ref3, "%s/ref3", t);
    snprintf(od, sizeof od, "%s/o", t);
    CHECKF(joint(t, "", ref, "", &out) == 0, "%s", out);
    CHECKF(joint(t, "", ref3, "--chunk 3", &out) == 0, "%s", out);
    /* 2 chunks done, then a transaction killed half-way */
    CHECKF(joint(t, "DINOMAP_FAULT=tile:9 ", od, "", &out) == 137, "%s", out);
    CHECKF(leave_hot_journal(od) == 0, "no journal left");
    int done = 0, up = 0;
    CHECKF(consistent(od, ref, 0, &done, &up, why, sizeof why) && done == 2 && !up,
           "status after the kill: %s (%d done)", why, done);
    int st = joint(t, "", od, "", &out);
    CHECKF(st == 0 && strstr(out, "17 of 25 tiles to run"), "the rerun: exit %d: %s", st, out);
    CHECKF(dm_same_outputs(ref, od, NAMES, why, sizeof why), "%s", why);
    CHECKF(consistent(od, ref, 1, &done, &up, why, sizeof why) && done == 9 && up, "%s", why);
    /* the same, then --overwrite with another configuration */
    CHECKF(leave_hot_journal(od) == 0, "no journal left");
    st = joint(t, "", od, "--chunk 3 --overwrite", &out);
    CHECKF(st == 0, "--overwrite: exit %d: %s", st, out);
    CHECKF(dm_same_outputs(ref3, od, NAMES, why, sizeof why), "%s", why);
    CHECKF(consistent(od, ref3, 1, &done, &up, why, sizeof why) && done == 4 && up, "%s", why);
}

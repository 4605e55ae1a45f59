/* tests/bench_search.c — `make bench` (search part): a synthetic search file of N tiles × D dims
 * (default 1,000,000 × 1024; clustered, tests/search_synth.h) written through the same writer
 * `dinomap search` builds its files with, but straight from the vectors: no SQLite index behind
 * it (an 8 GB GeoPackage would measure SQLite, not the search). Reports the build time and size,
 * one query's latency warm (median of the queries) and cold (the file's pages dropped from the
 * page cache with posix_fadvise(DONTNEED), checked with mincore, then a fresh mmap), exact and
 * default, and recall@10 of the default search against exact. Removes its files.
 *
 *   bench_search [N [D [QUERIES [DIR]]]]     DIR: where the file goes (default $TMPDIR or /tmp) */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "search_synth.h"

/* what an interrupted run leaves is removed too */
static char g_dir[4096], g_path[4200], g_tmp[4300], g_index[4200], g_ipath[4200];

static void on_signal(int sig)
{
    unlink(g_tmp), unlink(g_path), unlink(g_index), unlink(g_ipath), rmdir(g_dir);
    _exit(128 + sig);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The share of the file's pages in the page cache (mincore over a fresh mapping). */
static double resident(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return -1;
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return -1;
    long pg = sysconf(_SC_PAGESIZE);
    size_t np = ((size_t)st.st_size + (size_t)pg - 1) / (size_t)pg, in = 0;
    unsigned char *v = malloc(np);
    if (v && mincore(p, (size_t)st.st_size, v) == 0)
        for (size_t i = 0; i < np; i++)
            in += v[i] & 1;
    free(v);
    munmap(p, (size_t)st.st_size);
    return (double)in / (double)np;
}

static int drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return rc;
}

/* One query on a fresh mapping of a file whose pages were dropped: ms; *res the share of pages
 * still cached before it. */
static double cold(const char *path, const float *q, int exact, dm_pool *pool, double *res)
{
    drop_cache(path);
    *res = resident(path);
    dm_sindex *s = NULL;
    dm_err err = { 0 };
    double t0 = now();
    if (dm_sindex_open_file(path, &s, &err)) {
        fprintf(stderr, "bench_search: %s\n", err.msg);
        return -1;
    }
    dm_search_match m[10];
    int n;
    dm_search_opts o = { 10, exact, NULL, pool, 0, 0 };
    dm_sindex_search(s, q, &o, m, &n, &err);
    double t = now() - t0;
    dm_sindex_close(s);
    return t * 1e3;
}

/* A tile index of n tiles (rows of 1000) with cls and mean vectors, committed by chunks of 1024
 * tiles as a run does; then its search file built and reused. */
static int index_part(const char *dir, const dm_synth *y, int64_t n, int D)
{
    snprintf(g_index, sizeof g_index, "%s/tiles.gpkg", dir);
    dm_search_file_path(g_index, DM_EMB_MEAN, g_ipath, sizeof g_ipath);
    dm_err err = { 0 };
    dm_tileindex *ti = NULL;
    enum { CHUNK = 1024 };
    dm_tile_rec *rec = calloc(CHUNK, sizeof *rec);
    dm_tile_state *st = calloc(CHUNK, sizeof *st);
    dm_tile_result *res = calloc(CHUNK, sizeof *res);
    float *v = malloc(sizeof(float) * 2 * (size_t)D * CHUNK);
    double t0 = now();
    int rc = !rec || !st || !res || !v ? dm_err_oom(&err)
                                       : dm_tileindex_create(g_index, "", "{}", D, &ti, &err);
    if (!rc)
        rc = dm_tileindex_config_set(ti, "config", "{\"weights_sha256\":\"bench\",\"arch\":"
                                     "\"synthetic\"}", &err);
    for (int64_t c0 = 0; !rc && c0 < n; c0 += CHUNK) {
        int m = (int)(n - c0 < CHUNK ? n - c0 : CHUNK);
        for (int j = 0; j < m; j++) {
            int64_t id = c0 + j;
            rec[j] = (dm_tile_rec){ id, (int)(id / 1000), (int)(id % 1000), (int)(c0 / CHUNK),
                                    0, 0, 512, 512, (double)(id % 1000), (double)(id / 1000),
                                    (double)(id % 1000 + 1), (double)(id / 1000 + 1) };
            st[j] = DM_TILE_PENDING;
            float *cls = v + (size_t)2 * D * j, *mean = cls + D;
            dm_synth_vector(y, (uint64_t)id, mean);
            dm_synth_vector(y, (uint64_t)id + 77777777, cls);
            res[j] = (dm_tile_result){ id, DM_TILE_DONE, 1.0f, cls, mean };
        }
        rc = dm_tileindex_add_tiles(ti, rec, st, m, &err);
        if (!rc)
            rc = dm_tileindex_chunk_done(ti, (int)(c0 / CHUNK), NULL, res, m, NULL, 0, 1, &err);
    }
    int rc2 = dm_tileindex_close(ti, rc ? NULL : &err);
    rc = rc ? rc : rc2;
    double tidx = now() - t0;
    dm_sindex *s = NULL;
    double a = 0, b = 0, c = 0;
    if (!rc) {
        a = now();
        rc = dm_search_open(g_index, DM_EMB_MEAN, &s, &err);
        b = now();
    }
    int built = s ? dm_sindex_get_info(s)->built : 0;
    int64_t bytes = s ? dm_sindex_get_info(s)->bytes : 0;
    dm_sindex_close(s);
    s = NULL;
    if (!rc) {
        c = now();
        rc = dm_search_open(g_index, DM_EMB_MEAN, &s, &err);
        c = now() - c;
    }
    int reused = s && !dm_sindex_get_info(s)->built;
    dm_sindex_close(s);
    struct stat sx;
    if (rc)
        fprintf(stderr, "bench_search: %s\n", err.msg);
    else
        printf("tile index of %lld tiles × %d (written in %.1f s, %.2f GB, cls and mean): its "
               "search file built by the first search in %.1f s (%s, %.2f GB); the next search "
               "reuses it%s: %.2f ms to check and open it\n", (long long)n, D, tidx,
               stat(g_index, &sx) == 0 ? (double)sx.st_size / 1e9 : -1.0, b - a,
               built ? "from SQLite, mean only" : "NOT built", (double)bytes / 1e9,
               reused ? "" : " (NOT)", c * 1e3);
    unlink(g_index), unlink(g_ipath);
    free(rec), free(st), free(res), free(v);
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int64_t N = argc > 1 ? atoll(argv[1]) : 1000000;
    int D = argc > 2 ? atoi(argv[2]) : 1024, Q = argc > 3 ? atoi(argv[3]) : 100;
    int64_t NI = argc > 5 ? atoll(argv[5]) : 100000;
    const char *tmp = argc > 4 ? argv[4] : getenv("TMPDIR");
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/dmbench_search.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (N < 1000 || D < 8 || Q < 1 || NI < 0 || !mkdtemp(dir)) {
        fprintf(stderr, "usage: bench_search [N >= 1000 [D >= 8 [QUERIES [DIR [NI >= 0]]]]]: "
                "%s\n", strerror(errno));
        return 2;
    }
    snprintf(path, sizeof path, "%s/bench.mean.search", dir);
    snprintf(g_dir, sizeof g_dir, "%s", dir);
    snprintf(g_path, sizeof g_path, "%s", path);
    snprintf(g_tmp, sizeof g_tmp, "%s.tmp.%ld", path, (long)getpid());
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int nc = N >= 100000 ? 1000 : (int)(N / 100);
    dm_synth y;
    float *v = malloc(sizeof(float) * (size_t)D), *qs = malloc(sizeof(float) * (size_t)D * Q);
    if (!v || !qs || dm_synth_init(&y, D, nc, 42)) {
        fprintf(stderr, "bench_search: out of memory\n");
        return 1;
    }
    printf("search benchmark: %lld tiles × %d dimensions, %d clusters, %d queries, file in %s\n",
           (long long)N, D, nc, Q, dir);
    /* the build: the same writer as dinomap search's, from vectors (no SQLite) */
    dm_err err = { 0 };
    dm_sfile_meta fm = { D, DM_EMB_MEAN, N, "", "bench", "synthetic", 0, 0, 0, 0 };
    dm_sfile_writer *w = NULL;
    double t0 = now(), tgen = 0;
    int rc = dm_sfile_create(path, &fm, &w, NULL, &err);
    for (int64_t i = 0; rc == 0 && i < N; i++) {
        double g = now();
        dm_synth_vector(&y, (uint64_t)i, v);
        tgen += now() - g;
        double box[4] = { (double)(i % 1000), (double)(i / 1000), (double)(i % 1000 + 1),
                          (double)(i / 1000 + 1) };
        rc = dm_sfile_add(w, i, (int)(i / 1000), (int)(i % 1000), box, v, &err);
    }
    rc = rc ? (dm_sfile_abort(w), rc) : dm_sfile_commit(w, NULL, &err);
    double tbuild = now() - t0 - tgen;
    dm_sindex *s = NULL;
    if (rc == 0)
        rc = dm_sindex_open_file(path, &s, &err);
    if (rc) {
        fprintf(stderr, "bench_search: %s\n", err.msg);
        unlink(path), rmdir(dir);
        return 1;
    }
    printf("build: %.1f s (writer: int8 + sign bits + fsync; %.1f s more generating the "
           "vectors), file %.2f GB (%.0f bytes a tile)\n", tbuild, tgen,
           (double)dm_sindex_get_info(s)->bytes / 1e9,
           (double)dm_sindex_get_info(s)->bytes / (double)N);
    for (int q = 0; q < Q; q++)
        dm_synth_vector(&y, (uint64_t)N + 1000003 * (uint64_t)(q + 1), qs + (size_t)q * D);
    dm_pool *pool = NULL;
    dm_pool_create(2, &pool);
    /* warm: every page read once (an exact scan), then each query both ways */
    dm_search_match me[10], md[10];
    int ne, nd;
    dm_search_opts ex = { 10, 1, NULL, pool, 0, 0 }, df = { 10, 0, NULL, pool, 0, 0 };
    dm_sindex_search(s, qs, &ex, me, &ne, &err);
    dm_sindex_search(s, qs, &df, md, &nd, &err);
    double *te = malloc(sizeof(double) * Q), *td = malloc(sizeof(double) * Q), hits = 0;
    double worst = 1;
    for (int q = 0; q < Q; q++) {
        const float *qv = qs + (size_t)q * D;
        double a = now();
        dm_sindex_search(s, qv, &ex, me, &ne, &err);
        double b = now();
        dm_sindex_search(s, qv, &df, md, &nd, &err);
        double c = now();
        te[q] = (b - a) * 1e3, td[q] = (c - b) * 1e3;
        int h = 0;
        for (int i = 0; i < nd; i++)
            for (int j = 0; j < ne; j++)
                h += md[i].i == me[j].i;
        hits += h;
        worst = (double)h / ne < worst ? (double)h / ne : worst;
    }
    double te_best = te[0], td_best = td[0];
    for (int q = 1; q < Q; q++)
        te_best = te[q] < te_best ? te[q] : te_best, td_best = td[q] < td_best ? td[q] : td_best;
    printf("warm, one query (2 threads): exact %.1f ms median (best %.1f), default %.2f ms "
           "median (best %.2f)\n", median(te, Q), te_best, median(td, Q), td_best);
    printf("recall@10 of default vs exact over %d queries: %.4f (worst query %.1f)\n", Q,
           hits / (10.0 * Q), worst);
    /* what one `dinomap search` process does with the file in the page cache: map it afresh
     * (its pages are not in this process's page tables yet), check it, one query */
    double fo[5], fe[5], fd[5];
    for (int r = 0; r < 5; r++)
        for (int ex1 = 0; ex1 < 2; ex1++) {
            dm_sindex_close(s);
            s = NULL;
            t0 = now();
            dm_sindex_open_file(path, &s, &err);
            double t1 = now();
            dm_sindex_search(s, qs + (size_t)(r % Q) * D, ex1 ? &ex : &df, me, &ne, &err);
            (ex1 ? fe : fd)[r] = (now() - t0) * 1e3;
            fo[r] = (t1 - t0) * 1e3;
        }
    dm_sindex_close(s);
    printf("warm page cache, fresh mapping (one dinomap search process): open %.2f ms; open + "
           "one query: default %.1f ms, exact %.1f ms (medians of 5)\n", median(fo, 5),
           median(fd, 5), median(fe, 5));
    double r1, r2;
    double cd = cold(path, qs, 0, pool, &r1), ce = cold(path, qs, 1, pool, &r2);
    printf("cold, one query with its open (the file's pages dropped from the page cache with "
           "posix_fadvise DONTNEED: %.1f %% / %.1f %% still cached before it; a fresh mmap): "
           "default %.1f ms, exact %.1f ms\n", 100 * r1, 100 * r2, cd, ce);
    dm_pool_free(pool);
    free(te), free(td), free(v), free(qs);
    unlink(path);
    rc = NI > 0 ? index_part(dir, &y, NI, D) : 0;
    dm_synth_free(&y);
    rmdir(dir);
    return rc ? 1 : 0;
}

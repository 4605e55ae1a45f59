/* tiling/shard.c — which share of a run's chunks this process maps: `--shard I/N`, or the index
 * and count a scheduler puts in the environment (SLURM job arrays, Kubernetes Indexed Jobs, AWS
 * Batch array jobs), and the deterministic, work-balanced split of the chunks into N shares. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* A non-negative integer (the whole string), or -1. */
static long long nonneg(const char *s)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    return *end || errno || v < 0 || v > 1000000000 ? -1 : v;
}

int dm_shard_parse(const char *s, dm_shard *out, dm_err *err)
{
    memset(out, 0, sizeof *out);
    if (!strcmp(s, "none")) {
        out->off = 1;
        snprintf(out->source, sizeof out->source, "--shard none");
        return 0;
    }
    const char *slash = strchr(s, '/');
    char a[32];
    long long i = -1, n = -1;
    if (slash && slash - s < (long)sizeof a) {
        memcpy(a, s, (size_t)(slash - s));
        a[slash - s] = '\0';
        i = nonneg(a), n = nonneg(slash + 1);
    }
    if (i < 0 || n < 1)
        return dm_err_set(err, DM_EINVAL, "--shard %s: expected I/N, shard I of N (1 <= I <= N), "
                          "e.g. 2/8; or none", s);
    if (i < 1 || i > n)
        return dm_err_set(err, DM_EINVAL, "--shard %s: I is 1..%lld (shard I of N counts from "
                          "1; JOB_COMPLETION_INDEX and AWS_BATCH_JOB_ARRAY_INDEX count from 0 and "
                          "are read without --shard)", s, n);
    if (n > DM_SHARD_MAX)
        return dm_err_set(err, DM_EINVAL, "--shard %s: at most %d shards", s, DM_SHARD_MAX);
    out->index = (int)i - 1;
    out->count = (int)n;
    snprintf(out->source, sizeof out->source, "--shard %s", s);
    return 0;
}

/* The count of an index-only scheduler: --shard-count, else DINOMAP_SHARD_COUNT. */
static int count_for(const char *var, long long idx, int count_opt, dm_getenv_fn get, void *ctx,
                     dm_shard *out, dm_err *err)
{
    const char *dc = get("DINOMAP_SHARD_COUNT", ctx);
    long long n = count_opt > 0 ? count_opt : nonneg(dc);
    if (n < 1)
        return dm_err_set(err, DM_EINVAL, "%s=%lld is set but not how many shards there are: "
                          "pass --shard-count N (or set DINOMAP_SHARD_COUNT; --shard none maps "
                          "the whole run)", var, idx);
    if (idx >= n)
        return dm_err_set(err, DM_EINVAL, "%s=%lld: expected 0..%lld for %lld shards", var, idx,
                          n - 1, n);
    out->index = (int)idx;
    out->count = (int)n;
    snprintf(out->source, sizeof out->source, "%s=%lld, %s %lld", var, idx,
             count_opt > 0 ? "--shard-count" : "DINOMAP_SHARD_COUNT", n);
    return 0;
}

int dm_shard_from_env(dm_getenv_fn get, void *ctx, int count_opt, dm_shard *out, dm_err *err)
{
    memset(out, 0, sizeof *out);
    const char *sid = get("SLURM_ARRAY_TASK_ID", ctx);
    const char *kid = get("JOB_COMPLETION_INDEX", ctx);
    const char *aid = get("AWS_BATCH_JOB_ARRAY_INDEX", ctx);
    int rc = 0;
    if (sid && *sid) {
        const char *smin = get("SLURM_ARRAY_TASK_MIN", ctx),
                   *smax = get("SLURM_ARRAY_TASK_MAX", ctx),
                   *sstep = get("SLURM_ARRAY_TASK_STEP", ctx),
                   *scnt = get("SLURM_ARRAY_TASK_COUNT", ctx);
        long long id = nonneg(sid), mn = smin ? nonneg(smin) : 0, mx = smax ? nonneg(smax) : -1,
                  step = sstep ? nonneg(sstep) : -1, n = scnt ? nonneg(scnt) : -1;
        if (id < 0 || mn < 0 || mn > id || (sstep && step < 1))
            return dm_err_set(err, DM_EINVAL, "SLURM_ARRAY_TASK_ID=%s, SLURM_ARRAY_TASK_MIN=%s, "
                              "SLURM_ARRAY_TASK_STEP=%s: not a task of an array dinomap "
                              "understands; pass --shard I/N", sid, smin ? smin : "(unset)",
                              sstep ? sstep : "(unset)");
        if (n < 1)
            n = count_opt;
        if (n < 1)
            return dm_err_set(err, DM_EINVAL, "SLURM_ARRAY_TASK_ID=%s but no "
                              "SLURM_ARRAY_TASK_COUNT: pass --shard-count N or --shard I/N", sid);
        if (count_opt > 0 && count_opt != n)
            return dm_err_set(err, DM_EINVAL, "--shard-count %d, but SLURM_ARRAY_TASK_COUNT=%lld",
                              count_opt, n);
        /* --array=1-64 starts at 1, --array=0-63:4 steps: the index is the task's place in the
         * array; without SLURM_ARRAY_TASK_STEP, the step of an evenly spaced array */
        if (step < 1 && n > 1 && mx > mn && (mx - mn) % (n - 1) == 0)
            step = (mx - mn) / (n - 1);
        if (step < 1)
            step = 1;
        long long idx = (id - mn) / step;
        if ((id - mn) % step || idx >= n)
            return dm_err_set(err, DM_EINVAL, "SLURM_ARRAY_TASK_ID=%lld is not the task of an "
                              "evenly spaced array of %lld (min %lld, step %lld); for an array "
                              "given as a list, pass --shard I/N", id, n, mn, step);
        if (n > DM_SHARD_MAX)
            return dm_err_set(err, DM_EINVAL, "SLURM_ARRAY_TASK_COUNT=%lld: at most %d shards", n,
                              DM_SHARD_MAX);
        out->index = (int)idx;
        out->count = (int)n;
        snprintf(out->source, sizeof out->source, "SLURM_ARRAY_TASK_ID=%lld, "
                 "SLURM_ARRAY_TASK_MIN=%lld, step %lld, SLURM_ARRAY_TASK_COUNT=%lld", id, mn,
                 step, n);
    } else if (kid && *kid) {
        long long idx = nonneg(kid);
        if (idx < 0)
            return dm_err_set(err, DM_EINVAL, "JOB_COMPLETION_INDEX=%s: expected 0, 1, ...", kid);
        rc = count_for("JOB_COMPLETION_INDEX", idx, count_opt, get, ctx, out, err);
    } else if (aid && *aid) {
        long long idx = nonneg(aid);
        if (idx < 0)
            return dm_err_set(err, DM_EINVAL, "AWS_BATCH_JOB_ARRAY_INDEX=%s: expected 0, 1, ...",
                              aid);
        rc = count_for("AWS_BATCH_JOB_ARRAY_INDEX", idx, count_opt, get, ctx, out, err);
    } else if (count_opt > 0) {
        return dm_err_set(err, DM_EINVAL, "--shard-count %d: no shard index in the environment "
                          "(SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX); "
                          "pass --shard I/N", count_opt);
    }
    if (!rc && out->count > DM_SHARD_MAX)
        return dm_err_set(err, DM_EINVAL, "%d shards: at most %d", out->count, DM_SHARD_MAX);
    if (!rc && out->count == 1) /* an array of one: the whole run */
        out->count = 0;
    return rc;
}

/* --- the split ------------------------------------------------------------------------------- */

void dm_shard_split(const int64_t *work, int nch, int count, int *owner)
{
    int64_t total = 0, before = 0;
    for (int k = 0; k < nch; k++)
        total += work[k];
    for (int k = 0; k < nch; k++) {
        /* the chunk goes to the share its work's midpoint falls in: contiguous ranges of chunk
         * ids (bands of the region), each holding about total/count of the work */
        int s = total > 0 ? (int)(((2 * before + work[k]) * count) / (2 * total))
                          : (int)((int64_t)k * count / (nch > 0 ? nch : 1));
        owner[k] = s < count ? s : count - 1;
        before += work[k];
    }
}

char *dm_ranges_str(const uint8_t *in, int n, int *count)
{
    size_t cap = 64, o = 0;
    char *out = malloc(cap);
    int cnt = 0;
    if (!out)
        return NULL;
    out[0] = '\0';
    for (int k = 0; k < n;) {
        if (!in[k]) {
            k++;
            continue;
        }
        int a = k;
        while (k < n && in[k])
            k++;
        cnt += k - a;
        if (o + 32 > cap) {
            char *p = realloc(out, cap *= 2);
            if (!p) {
                free(out);
                return NULL;
            }
            out = p;
        }
        o += (size_t)(a == k - 1 ? snprintf(out + o, cap - o, "%s%d", o ? "," : "", a)
                                 : snprintf(out + o, cap - o, "%s%d-%d", o ? "," : "", a, k - 1));
    }
    if (count)
        *count = cnt;
    return out;
}

int dm_ranges_parse(const char *s, uint8_t *out, int n)
{
    memset(out, 0, (size_t)n);
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s || a < 0)
            return -1;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1 || b < a)
                return -1;
            s = end;
        }
        if (b >= n)
            return -1;
        for (long k = a; k <= b; k++)
            out[k] = 1;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return 0;
}

int dm_shard_work(const dm_grid *g, const dm_input_fp *fp, int nfp, const uint8_t *active,
                  int64_t *work, dm_err *err)
{
    int nt = dm_grid_ntiles(g), nch = dm_grid_nchunks(g);
    uint8_t *cov = calloc((size_t)nt, 1);
    if (!cov)
        return dm_err_oom(err);
    for (int i = 0; i < nfp; i++) {
        const dm_input_fp *f = &fp[i];
        int x0 = f->x0 > 0 ? f->x0 : 0, y0 = f->y0 > 0 ? f->y0 : 0;
        int x1 = f->x0 + f->w < g->W ? f->x0 + f->w : g->W;
        int y1 = f->y0 + f->h < g->H ? f->y0 + f->h : g->H;
        if (x1 <= x0 || y1 <= y0)
            continue;
        int c1 = (x1 - 1) / g->tile, r1 = (y1 - 1) / g->tile;
        for (int r = y0 / g->tile; r <= r1 && r < g->nrows; r++)
            for (int c = x0 / g->tile; c <= c1 && c < g->ncols; c++)
                cov[(size_t)r * g->ncols + c] = 1;
    }
    memset(work, 0, sizeof *work * (size_t)nch);
    for (int k = 0; k < nch; k++) {
        int r0, c0, r1, c1;
        dm_window p;
        dm_grid_chunk(g, k, &r0, &c0, &r1, &c1, &p);
        for (int r = r0; r < r1; r++)
            for (int c = c0; c < c1; c++) {
                size_t id = (size_t)r * g->ncols + c;
                work[k] += active[id] && cov[id];
            }
    }
    free(cov);
    return 0;
}

/* "shard 2/3" or "the whole run", for messages. */
static const char *shard_text(int index, int count, char *buf, size_t n)
{
    if (!count)
        snprintf(buf, n, "the whole run");
    else
        snprintf(buf, n, "shard %d/%d", index + 1, count);
    return buf;
}

/* A resumed folder's shard must be this invocation's: 0 or DM_EMISMATCH. */
int dm_shard_same(const char *outdir, const cJSON *old, const dm_shard *now, dm_err *err)
{
    const cJSON *oi = cJSON_GetObjectItemCaseSensitive(old, "index"),
                *on = cJSON_GetObjectItemCaseSensitive(old, "count");
    int i = cJSON_IsNumber(oi) ? oi->valueint - 1 : 0, n = cJSON_IsNumber(on) ? on->valueint : 0;
    if (i == now->index && n == now->count)
        return 0;
    char a[64], b[64];
    shard_text(i, n, a, sizeof a);
    shard_text(now->index, now->count, b, sizeof b);
    return dm_err_set(err, DM_EMISMATCH, "%s holds %s; this invocation maps %s%s%s%s. Each shard "
                      "needs its own folder%s", outdir, a, b, now->count ? " (" : "",
                      now->count ? now->source : "", now->count ? ")" : "",
                      n && !now->count ? "; build the run's outputs from its shards with dinomap "
                      "merge OUTDIR SHARD_DIR..." : "");
}

/* A shard's chunks: those the folder's first invocation recorded, or (a fresh folder) this
 * shard's share of the split by work, with its record for the index (*json). */
int dm_shard_plan(const dm_eng *e, const dm_shard *sh, const cJSON *old, const dm_input_fp *fp,
                  int nfp, const int *jr, const int *jc, const dm_tile_state *tst,
                  const int *chunk_tiles, uint8_t **own, char **json, int *nchunks,
                  int64_t *ntiles, dm_err *err)
{
    int nt = dm_grid_ntiles(&e->g), nch = dm_grid_nchunks(&e->g), rc = 0;
    uint8_t *mine = calloc((size_t)nch, 1), *active = calloc((size_t)nt, 1);
    int64_t *work = calloc((size_t)nch, sizeof *work);
    int *owner = calloc((size_t)nch, sizeof *owner);
    if (!mine || !active || !work || !owner) {
        rc = dm_err_oom(err);
        goto done;
    }
    for (int i = 0; i < nt; i++) /* tst is in processing order, by jr/jc */
        active[(size_t)jr[i] * e->g.ncols + jc[i]] = tst[i] == DM_TILE_PENDING;
    if ((rc = dm_shard_work(&e->g, fp, nfp, active, work, err)))
        goto done;
    const char *rec = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(old, "chunks"));
    if (old) {
        if (!rec || dm_ranges_parse(rec, mine, nch)) {
            rc = dm_err_set(err, DM_EFORMAT, "%s: its shard record lists no valid chunks; start "
                            "afresh with --overwrite", e->outdir);
            goto done;
        }
    } else {
        dm_shard_split(work, nch, sh->count, owner);
        for (int k = 0; k < nch; k++)
            mine[k] = owner[k] == sh->index && chunk_tiles[k] > 0;
    }
    *nchunks = 0, *ntiles = 0;
    for (int k = 0; k < nch; k++)
        if (mine[k])
            (*nchunks)++, *ntiles += chunk_tiles[k];
    if (!old) {
        char *ranges = dm_ranges_str(mine, nch, NULL);
        cJSON *j = cJSON_CreateObject();
        if (j && ranges) {
            cJSON_AddNumberToObject(j, "index", sh->index + 1);
            cJSON_AddNumberToObject(j, "count", sh->count);
            cJSON_AddStringToObject(j, "source", sh->source);
            cJSON_AddStringToObject(j, "chunks", ranges);
            cJSON_AddNumberToObject(j, "tiles", (double)*ntiles);
            *json = cJSON_PrintUnformatted(j);
        }
        if (!*json)
            rc = dm_err_oom(err);
        cJSON_Delete(j);
        free(ranges);
    }
done:
    free(active), free(work), free(owner);
    if (rc)
        free(mine);
    else
        *own = mine;
    return rc;
}

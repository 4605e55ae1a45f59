/* tests/test_shard_unit.c — which shard a scheduler's environment names (SLURM arrays starting at
 * 1 or stepping, Kubernetes Indexed Jobs, AWS Batch arrays; --shard I/N), and the split of a
 * run's chunks into shards: each chunk in one shard, contiguous ranges, balanced by work. (Apart
 * from test_shard.c: the engine's header and the tests' command runner share a name.) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../tiling/engine.h"
#include "test.h"

/* --- the environment ------------------------------------------------------------------------- */

typedef struct fake_env {
    const char *const *kv; /* NAME, VALUE, ..., NULL */
} fake_env;

static const char *fake_get(const char *name, void *ctx)
{
    const fake_env *e = ctx;
    for (int i = 0; e->kv[i]; i += 2)
        if (!strcmp(e->kv[i], name))
            return e->kv[i + 1];
    return NULL;
}

static int from_env(const char *const *kv, int count, dm_shard *s, dm_err *err)
{
    fake_env e = { kv };
    return dm_shard_from_env(fake_get, &e, count, s, err);
}

TEST(shard_index_from_each_scheduler)
{
    dm_shard s;
    dm_err err = { 0 };
    /* --array=1-64: task 1 is the first shard, task 64 the last */
    const char *a1[] = { "SLURM_ARRAY_TASK_ID", "1", "SLURM_ARRAY_TASK_MIN", "1",
                         "SLURM_ARRAY_TASK_MAX", "64", "SLURM_ARRAY_TASK_COUNT", "64", NULL };
    CHECKF(from_env(a1, 0, &s, &err) == 0 && s.index == 0 && s.count == 64, "%s", err.msg);
    CHECK(strstr(s.source, "SLURM_ARRAY_TASK_ID=1"));
    const char *a64[] = { "SLURM_ARRAY_TASK_ID", "64", "SLURM_ARRAY_TASK_MIN", "1",
                          "SLURM_ARRAY_TASK_MAX", "64", "SLURM_ARRAY_TASK_COUNT", "64", NULL };
    CHECK(from_env(a64, 0, &s, &err) == 0 && s.index == 63 && s.count == 64);
    /* --array=0-30:10 (tasks 0, 10, 20, 30), with and without SLURM_ARRAY_TASK_STEP */
    const char *st[] = { "SLURM_ARRAY_TASK_ID", "20", "SLURM_ARRAY_TASK_MIN", "0",
                         "SLURM_ARRAY_TASK_MAX", "30", "SLURM_ARRAY_TASK_STEP", "10",
                         "SLURM_ARRAY_TASK_COUNT", "4", NULL };
    CHECK(from_env(st, 0, &s, &err) == 0 && s.index == 2 && s.count == 4);
    const char *st2[] = { "SLURM_ARRAY_TASK_ID", "30", "SLURM_ARRAY_TASK_MIN", "0",
                          "SLURM_ARRAY_TASK_MAX", "30", "SLURM_ARRAY_TASK_COUNT", "4", NULL };
    CHECK(from_env(st2, 0, &s, &err) == 0 && s.index == 3 && s.count == 4);
    /* a list (--array=1,5,6): no step tells the place: refused, naming --shard */
    const char *ls[] = { "SLURM_ARRAY_TASK_ID", "5", "SLURM_ARRAY_TASK_MIN", "1",
                         "SLURM_ARRAY_TASK_MAX", "6", "SLURM_ARRAY_TASK_COUNT", "3", NULL };
    CHECK(from_env(ls, 0, &s, &err) == DM_EINVAL && strstr(err.msg, "--shard"));
    /* Kubernetes: the index from 0, the count from DINOMAP_SHARD_COUNT or --shard-count */
    const char *k[] = { "JOB_COMPLETION_INDEX", "2", "DINOMAP_SHARD_COUNT", "3", NULL };
    CHECK(from_env(k, 0, &s, &err) == 0 && s.index == 2 && s.count == 3);
    CHECK(strstr(s.source, "JOB_COMPLETION_INDEX=2"));
    const char *k0[] = { "JOB_COMPLETION_INDEX", "2", NULL };
    CHECK(from_env(k0, 0, &s, &err) == DM_EINVAL && strstr(err.msg, "--shard-count"));
    CHECK(from_env(k0, 5, &s, &err) == 0 && s.index == 2 && s.count == 5);
    CHECK(from_env(k0, 2, &s, &err) == DM_EINVAL); /* index 2 of 2 shards */
    /* AWS Batch */
    const char *aw[] = { "AWS_BATCH_JOB_ARRAY_INDEX", "0", NULL };
    CHECK(from_env(aw, 8, &s, &err) == 0 && s.index == 0 && s.count == 8);
    CHECK(strstr(s.source, "AWS_BATCH_JOB_ARRAY_INDEX=0"));
    const char *bad[] = { "AWS_BATCH_JOB_ARRAY_INDEX", "x1", NULL };
    CHECK(from_env(bad, 8, &s, &err) == DM_EINVAL);
    /* nothing set: the whole run; an array of one too; --shard-count alone is refused */
    const char *none[] = { NULL };
    CHECK(from_env(none, 0, &s, &err) == 0 && s.count == 0);
    const char *one[] = { "SLURM_ARRAY_TASK_ID", "7", "SLURM_ARRAY_TASK_MIN", "7",
                          "SLURM_ARRAY_TASK_COUNT", "1", NULL };
    CHECK(from_env(one, 0, &s, &err) == 0 && s.count == 0);
    CHECK(from_env(none, 4, &s, &err) == DM_EINVAL);
    /* --shard I/N */
    CHECK(dm_shard_parse("2/3", &s, &err) == 0 && s.index == 1 && s.count == 3);
    CHECK(dm_shard_parse("none", &s, &err) == 0 && s.off && s.count == 0);
    static const char *wrong[] = { "0/3", "4/3", "3", "a/b", "1/0", "-1/3", "2/3x", "" };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        CHECKF(dm_shard_parse(wrong[i], &s, &err) == DM_EINVAL, "--shard %s taken", wrong[i]);
}

TEST(shard_split_is_a_partition_balanced_by_work)
{
    enum { NCH = 40 };
    int64_t work[NCH];
    int owner[NCH];
    for (int k = 0; k < NCH; k++) /* empty chunks, and one region with 10 times the work */
        work[k] = k < 8 ? 0 : k < 30 ? 4 : 40;
    int64_t total = 0, maxw = 0;
    for (int k = 0; k < NCH; k++)
        total += work[k], maxw = work[k] > maxw ? work[k] : maxw;
    for (int n = 1; n <= 7; n++) {
        dm_shard_split(work, NCH, n, owner);
        int64_t share[8] = { 0 };
        for (int k = 0; k < NCH; k++) {
            CHECKF(owner[k] >= 0 && owner[k] < n, "chunk %d in shard %d of %d", k, owner[k], n);
            CHECKF(k == 0 || owner[k] >= owner[k - 1], "%d shards: not contiguous at chunk %d", n,
                   k);
            share[owner[k]] += work[k];
        }
        for (int s = 0; s < n; s++) /* each share within one chunk's work of an even share */
            CHECKF(share[s] * n >= total - n * maxw && share[s] * n <= total + n * maxw,
                   "%d shards: shard %d holds %lld of %lld", n, s, (long long)share[s],
                   (long long)total);
    }
    /* no work at all: still every chunk in one shard */
    memset(work, 0, sizeof work);
    dm_shard_split(work, NCH, 3, owner);
    for (int k = 0; k < NCH; k++)
        CHECK(owner[k] >= 0 && owner[k] < 3);
    /* chunk sets as text and back */
    uint8_t f[12] = { 1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1 }, g[12];
    int cnt = 0;
    char *t = dm_ranges_str(f, 12, &cnt);
    CHECKF(t && !strcmp(t, "0-2,4,7-8,11") && cnt == 7, "%s", t ? t : "NULL");
    CHECK(dm_ranges_parse(t, g, 12) == 0 && !memcmp(f, g, 12));
    CHECK(dm_ranges_parse(t, g, 11) == -1); /* chunk 11 of 11 */
    CHECK(dm_ranges_parse("3-1", g, 12) == -1 && dm_ranges_parse("1,x", g, 12) == -1);
    free(t);
}


/* tiling/merge.c — dm_merge (see tiling.h): a sharded run's outputs from its shards' folders.
 *   1. every shard: locked (a shard still running is refused), its index read (configuration,
 *      resolved facts, shard record, chunks, inputs), checked against the first: one
 *      configuration, the same inputs;
 *   2. the chunks: each held by one shard at most (else "overlapping"), each with tiles to run
 *      done in the shard holding it (else "missing", with the chunk ranges);
 *   3. OUTDIR (locked): a new index, copied from the first shard's and given every other
 *      shard's chunks (gis/tileindex_merge.c), built under a temporary name; the chunk files
 *      linked (or copied) into OUTDIR/chunks/; the index renamed into place;
 *   4. finalize, as for any run folder. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

typedef struct shard {
    const char *dir;
    char index[4200], real[PATH_MAX];
    dm_lock *lock;
    dm_tileindex *ti;
    cJSON *cfg, *res, *rec;      /* rec: the shard record (NULL: a whole run) */
    int index1, count;           /* 1-based; count 0: a whole run */
    uint8_t *own, *done;
    char **files;
    int nch;
    dm_input_fp *fp;
    int nfp;
    char *gen;
} shard;

static void shard_free(shard *s)
{
    dm_tileindex_close(s->ti, NULL);
    dm_unlock(s->lock);
    cJSON_Delete(s->cfg), cJSON_Delete(s->res), cJSON_Delete(s->rec);
    dm_tileindex_chunks_free(s->done, s->files, s->nch);
    dm_input_fp_free(s->fp, s->nfp);
    free(s->own), free(s->gen);
}

static const char *shard_name(const shard *s, char *buf, size_t n)
{
    if (s->count)
        snprintf(buf, n, "%s (shard %d/%d)", s->dir, s->index1, s->count);
    else
        snprintf(buf, n, "%s (a whole run)", s->dir);
    return buf;
}

/* Opens and reads one shard's folder (first..s-1: those opened before it). */
static int shard_open(shard *s, const shard *first, dm_err *err)
{
    snprintf(s->index, sizeof s->index, "%s/tiles.gpkg", s->dir);
    if (!dm_exists(s->index))
        return dm_err_set(err, DM_EINVAL, "%s: not a dinomap run folder (no tiles.gpkg)", s->dir);
    if (!realpath(s->dir, s->real))
        return dm_err_set(err, DM_EIO, "%s: %s", s->dir, strerror(errno));
    for (const shard *p = first; p < s; p++)
        if (!strcmp(p->real, s->real))
            return dm_err_set(err, DM_EINVAL, "%s is given twice", s->dir);
    int rc = dm_lock_dir(s->dir, &s->lock, err);
    if (rc == DM_ELOCKED)
        return dm_err_set(err, DM_ELOCKED, "%s is in use: a shard still running? Merge once it "
                          "has ended", s->dir);
    rc = 0; /* a read-only folder (copied from elsewhere) cannot be locked: nothing runs in it */
    char *c = NULL, *r = NULL, *sh = NULL;
    if (!rc)
        rc = dm_tileindex_open(s->index, NULL, 0, &s->ti, err);
    if (!rc)
        rc = dm_tileindex_config_get(s->ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_config_get(s->ti, "resolved", &r, err);
    if (!rc)
        rc = dm_tileindex_config_get(s->ti, "shard", &sh, err);
    if (!rc)
        rc = dm_tileindex_config_get(s->ti, "gen", &s->gen, err);
    if (!rc && (!c || !r || !(s->cfg = cJSON_Parse(c)) || !(s->res = cJSON_Parse(r))))
        rc = dm_err_set(err, DM_EFORMAT, "%s: holds no dinomap run configuration", s->index);
    if (!rc && sh && !(s->rec = cJSON_Parse(sh)))
        rc = dm_err_set(err, DM_EFORMAT, "%s: its shard record is damaged", s->index);
    free(c), free(r), free(sh);
    if (!rc)
        rc = dm_tileindex_chunks(s->ti, &s->done, &s->files, &s->nch, err);
    if (!rc)
        rc = dm_tileindex_inputs(s->ti, &s->fp, &s->nfp, err);
    if (!rc && !(s->own = calloc((size_t)(s->nch > 0 ? s->nch : 1), 1)))
        rc = dm_err_oom(err);
    if (!rc && s->rec) {
        const cJSON *i = cJSON_GetObjectItemCaseSensitive(s->rec, "index"),
                    *n = cJSON_GetObjectItemCaseSensitive(s->rec, "count");
        const char *ch = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(s->rec, "chunks"));
        s->index1 = cJSON_IsNumber(i) ? i->valueint : 0;
        s->count = cJSON_IsNumber(n) ? n->valueint : 0;
        if (s->count < 1 || s->index1 < 1 || s->index1 > s->count || !ch ||
            dm_ranges_parse(ch, s->own, s->nch))
            rc = dm_err_set(err, DM_EFORMAT, "%s: its shard record is damaged", s->index);
    }
    return rc;
}

/* The resolved facts that must agree: all but where the weights were read from, the GEMM
 * slicing (compared apart) and the output size limit (an output setting). */
static cJSON *comparable(const cJSON *res)
{
    cJSON *j = cJSON_Duplicate(res, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(j, "weights");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "gemm_parts");
    cJSON_DeleteItemFromObjectCaseSensitive(j, "max_cog_gib");
    return j;
}

static int same_inputs(const shard *a, const shard *b, char *what, size_t n)
{
    if (a->nfp != b->nfp) {
        snprintf(what, n, "%d input files, %d", a->nfp, b->nfp);
        return 0;
    }
    for (int i = 0; i < a->nfp; i++) {
        const dm_input_fp *x = &a->fp[i], *y = &b->fp[i];
        if (strcmp(x->path, y->path) || x->size != y->size || x->mtime_ns != y->mtime_ns ||
            x->x0 != y->x0 || x->y0 != y->y0 || x->w != y->w || x->h != y->h) {
            snprintf(what, n, "%s: another file (size, time or place) than %s", y->path, x->path);
            return 0;
        }
    }
    return 1;
}

/* Step 1: the shards agree. */
static int check_shards(shard *sh, int n, int *gemm_mixed, dm_err *err)
{
    char a[4400], b[4400], msg[900];
    cJSON *r0 = comparable(sh[0].res);
    int rc = 0;
    const cJSON *g0 = cJSON_GetObjectItemCaseSensitive(sh[0].res, "gemm_parts");
    for (int i = 1; !rc && i < n; i++) {
        shard_name(&sh[0], a, sizeof a);
        shard_name(&sh[i], b, sizeof b);
        char la[80], lb[80];
        snprintf(la, sizeof la, "in %s", dm_base_name(sh[0].dir));
        snprintf(lb, sizeof lb, "in %s", dm_base_name(sh[i].dir));
        cJSON *ri = comparable(sh[i].res);
        if (dm_config_diff_as(sh[0].cfg, sh[i].cfg, la, lb, msg, sizeof msg) ||
            dm_config_diff_as(r0, ri, la, lb, msg, sizeof msg))
            rc = dm_err_set(err, DM_EMISMATCH, "%s and %s are not shards of one run: another "
                            "configuration (%s)", a, b, msg);
        cJSON_Delete(ri);
        if (!rc && sh[i].nch != sh[0].nch)
            rc = dm_err_set(err, DM_EMISMATCH, "%s and %s are not shards of one run: %d and %d "
                            "chunks", a, b, sh[0].nch, sh[i].nch);
        if (!rc && !same_inputs(&sh[0], &sh[i], msg, sizeof msg))
            rc = dm_err_set(err, DM_EMISMATCH, "%s and %s read different inputs (%s): the "
                            "inputs changed while the shards ran? Rerun the shards whose inputs "
                            "are out of date", a, b, msg);
        const cJSON *gi = cJSON_GetObjectItemCaseSensitive(sh[i].res, "gemm_parts");
        if (!rc && !cJSON_Compare(g0, gi, 1))
            *gemm_mixed = 1;
    }
    cJSON_Delete(r0);
    return rc;
}

/* "2-4,9" of the chunks flagged, at most n characters ("..." when longer). */
static void ranges_text(const uint8_t *f, int nch, char *out, size_t n)
{
    char *s = dm_ranges_str(f, nch, NULL);
    snprintf(out, n, "%s", s ? s : "?");
    if (s && strlen(s) >= n && n > 4)
        memcpy(out + n - 4, "...", 4);
    free(s);
}

/* Step 2: who holds each chunk, and what is missing. owner[k]: the shard, -1 none. */
static int plan_chunks(shard *sh, int n, const int64_t *work, int *owner, dm_merge_result *res,
                       dm_err *err)
{
    int nch = sh[0].nch, rc = 0;
    uint8_t *flag = calloc((size_t)nch, 1);
    if (!flag)
        return dm_err_oom(err);
    for (int k = 0; k < nch; k++)
        owner[k] = -1;
    for (int i = 0; i < n; i++) {
        if (!sh[i].rec) /* a whole run holds every chunk with tiles to run */
            for (int k = 0; k < nch; k++)
                sh[i].own[k] = work[k] > 0;
        for (int k = 0; k < nch; k++)
            if (sh[i].own[k] && work[k] > 0) {
                if (owner[k] >= 0 && !rc) {
                    /* the chunks both hold */
                    int j = owner[k];
                    for (int q = 0; q < nch; q++)
                        flag[q] = sh[i].own[q] && sh[j].own[q] && work[q] > 0;
                    char a[4400], b[4400], r[200];
                    ranges_text(flag, nch, r, sizeof r);
                    rc = dm_err_set(err, DM_EINVAL, "%s and %s overlap: both hold chunks %s (the "
                                    "same shard twice, or shards of different counts?)",
                                    shard_name(&sh[j], a, sizeof a),
                                    shard_name(&sh[i], b, sizeof b), r);
                }
                owner[k] = i;
            }
    }
    res->chunks = res->chunks_missing = 0;
    res->missing[0] = '\0';
    size_t o = 0;
    /* chunks a given shard holds but has not done */
    for (int i = 0; !rc && i < n; i++) {
        int any = 0;
        for (int k = 0; k < nch; k++)
            any |= flag[k] = owner[k] == i && !sh[i].done[k];
        if (!any)
            continue;
        char r[300], a[4400];
        ranges_text(flag, nch, r, sizeof r);
        o += (size_t)snprintf(res->missing + o, o < sizeof res->missing ?
                              sizeof res->missing - o : 0, "%schunks %s of %s are not done yet "
                              "(run it again to finish them)", o ? "; " : "", r,
                              shard_name(&sh[i], a, sizeof a));
    }
    /* chunks no given shard holds */
    int any = 0;
    for (int k = 0; !rc && k < nch; k++)
        any |= flag[k] = work[k] > 0 && owner[k] < 0;
    if (!rc && any) {
        char r[300], shards[300] = "";
        ranges_text(flag, nch, r, sizeof r);
        int N = sh[0].count, same = N > 0;
        for (int i = 1; i < n; i++)
            same &= sh[i].count == N;
        if (same) { /* the shard numbers not given */
            size_t so = 0;
            int nmiss = 0;
            for (int q = 1; q <= N && so < sizeof shards; q++) {
                int given = 0;
                for (int i = 0; i < n; i++)
                    given |= sh[i].index1 == q;
                if (!given && nmiss++ < 20)
                    so += (size_t)snprintf(shards + so, sizeof shards - so, "%s%d/%d",
                                           so ? ", " : "", q, N);
            }
            if (nmiss > 20 && so < sizeof shards)
                snprintf(shards + so, sizeof shards - so, " and %d more", nmiss - 20);
        }
        o += (size_t)snprintf(res->missing + o, o < sizeof res->missing ?
                              sizeof res->missing - o : 0, "%schunks %s are in no shard given%s%s%s",
                              o ? "; " : "", r, shards[0] ? " (missing: shard " : "", shards,
                              shards[0] ? ")" : "");
    }
    for (int k = 0; k < nch; k++) {
        res->chunks += work[k] > 0;
        res->chunks_missing += work[k] > 0 && (owner[k] < 0 || !sh[owner[k]].done[k]);
    }
    free(flag);
    return rc;
}

/* --- chunk files ----------------------------------------------------------------------------- */

static int copy_file(const char *src, const char *dst, const struct stat *st, dm_err *err)
{
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = 0;
    if (in < 0)
        return dm_err_set(err, DM_EIO, "%s: %s", src, strerror(errno));
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot create: %s", dst, strerror(errno));
    static char buf[1 << 16];
    ssize_t r = 0;
    while (!rc && (r = read(in, buf, sizeof buf)) > 0)
        for (ssize_t w = 0; !rc && w < r;) {
            ssize_t k = write(out, buf + w, (size_t)(r - w));
            if (k < 0 && errno != EINTR)
                rc = dm_err_set(err, DM_EIO, "%s: cannot write: %s", dst, strerror(errno));
            w += k > 0 ? k : 0;
        }
    if (!rc && r < 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot read: %s", src, strerror(errno));
    if (!rc) { /* the source's time: a rerun sees the file in place */
        struct timespec t[2] = { st->st_atim, st->st_mtim };
        if (futimens(out, t) != 0 || fsync(out) != 0)
            rc = dm_err_set(err, DM_EIO, "%s: %s", dst, strerror(errno));
    }
    if (out >= 0 && close(out) != 0 && !rc)
        rc = dm_err_set(err, DM_EIO, "%s: cannot write: %s", dst, strerror(errno));
    close(in);
    return rc;
}

/* One chunk file into OUTDIR: kept when the same file (or an identical copy) is there, else a
 * hard link or a copy under a temporary name, renamed. */
static int place_file(const char *src, const char *dst, dm_merge_result *res, dm_err *err)
{
    struct stat s, d;
    if (stat(src, &s) != 0)
        return dm_err_set(err, DM_EIO, "%s: missing (the shard's index lists it; run the shard "
                          "again to redo its chunk)", src);
    if (stat(dst, &d) == 0 &&
        ((s.st_dev == d.st_dev && s.st_ino == d.st_ino) ||
         (s.st_size == d.st_size && s.st_mtim.tv_sec == d.st_mtim.tv_sec &&
          s.st_mtim.tv_nsec == d.st_mtim.tv_nsec))) {
        res->kept++;
        return 0;
    }
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.part", dst);
    unlink(tmp);
    int rc = 0;
    if (link(src, tmp) == 0) {
        res->linked++;
    } else if (!(rc = copy_file(src, tmp, &s, err))) {
        res->copied++;
    }
    if (!rc && rename(tmp, dst) != 0)
        rc = dm_err_set(err, DM_EIO, "%s: cannot put into place: %s", dst, strerror(errno));
    if (rc)
        unlink(tmp);
    return rc;
}

static int place_files(const shard *sh, int n, const int *owner, const char *outdir,
                       dm_merge_result *res, volatile sig_atomic_t *cancel, dm_err *err)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/chunks", outdir);
    if (dm_mkdir_p(dir) != 0)
        return dm_err_set(err, DM_EIO, "%s: cannot create: %s", dir, strerror(errno));
    int rc = 0;
    for (int k = 0; !rc && k < sh[0].nch; k++) {
        const shard *s = owner[k] >= 0 && owner[k] < n ? &sh[owner[k]] : NULL;
        if (!s || !s->done[k])
            continue;
        if (cancel && *cancel)
            return dm_err_set(err, DM_EINTERRUPTED, "interrupted: nothing was merged; run the "
                              "same merge again");
        for (const char *f = s->files[k]; !rc && f && *f;) {
            int len = (int)strcspn(f, " ");
            char src[8400], dst[8400];
            snprintf(src, sizeof src, "%s/%.*s", s->dir, len, f);
            snprintf(dst, sizeof dst, "%s/%.*s", outdir, len, f);
            char rel[4200];
            snprintf(rel, sizeof rel, "%.*s", len, f);
            if (len > 0 && (strncmp(rel, "chunks/", 7) || strstr(rel, "..")))
                rc = dm_err_set(err, DM_EFORMAT, "%s: lists a chunk file outside chunks/ (%.*s)",
                                s->index, len, f);
            if (!rc && len > 0)
                rc = place_file(src, dst, res, err);
            f += len;
            f += *f == ' ';
        }
    }
    return rc;
}

/* --- the merged index ------------------------------------------------------------------------ */

/* What the merge is made of (its shards, their commit counters), recorded in the index: a merge
 * of the same shards into up-to-date outputs has nothing to do. */
static char *merge_record(const shard *sh, int n, const dm_merge_result *res)
{
    cJSON *j = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(j, "shards");
    for (int i = 0; i < n; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "folder", sh[i].real);
        if (sh[i].count) {
            cJSON_AddNumberToObject(x, "index", sh[i].index1);
            cJSON_AddNumberToObject(x, "count", sh[i].count);
        }
        cJSON_AddStringToObject(x, "gen", sh[i].gen ? sh[i].gen : "0");
        cJSON_AddItemToArray(a, x);
    }
    cJSON_AddNumberToObject(j, "chunks_missing", (double)res->chunks_missing);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

/* What OUTDIR holds: 0 nothing (or a merge of this configuration: *same_record when it was made
 * of the same shards); else refused unless --overwrite. */
static int check_outdir(const char *outdir, const shard *s0, const char *record, int overwrite,
                        int *same_record, dm_err *err)
{
    char index[4200];
    snprintf(index, sizeof index, "%s/tiles.gpkg", outdir);
    *same_record = 0;
    if (!dm_exists(index))
        return 0;
    dm_tileindex *ti = NULL;
    char *c = NULL, *m = NULL;
    int rc = dm_tileindex_open(index, NULL, 0, &ti, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "config", &c, err);
    if (!rc)
        rc = dm_tileindex_config_get(ti, "merged", &m, err);
    cJSON *cfg = c ? cJSON_Parse(c) : NULL;
    char msg[900];
    if (!rc && !m && !overwrite)
        rc = dm_err_set(err, DM_EMISMATCH, "%s holds a run (not a merge of shards); choose "
                        "another OUTDIR, or --overwrite to replace it", outdir);
    else if (!rc && (!cfg || dm_config_diff_as(s0->cfg, cfg, "in the shards", "in OUTDIR", msg,
                                               sizeof msg)) && !overwrite)
        rc = dm_err_set(err, DM_EMISMATCH, "%s holds the merge of another run (%s); choose "
                        "another OUTDIR, or --overwrite to replace it", outdir,
                        cfg ? msg : "no configuration");
    else if (!rc && m && record && !strcmp(m, record))
        *same_record = dm_fin_uptodate(ti, outdir);
    cJSON_Delete(cfg);
    free(c), free(m);
    dm_tileindex_close(ti, NULL);
    return rc;
}

/* Step 3: the merged index under `tmp`. */
static int build_index(shard *sh, int n, const int *owner, const char *tmp, const char *record,
                       dm_err *err)
{
    int rc = dm_tileindex_copy(sh[0].ti, tmp, err), nch = sh[0].nch;
    dm_tileindex *ti = NULL;
    cJSON *inv = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(inv, "shards");
    cJSON_AddStringToObject(inv, "command", "merge");
    cJSON_AddStringToObject(inv, "version", DINOMAP_VERSION);
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(sh[i].real));
    char *invs = cJSON_PrintUnformatted(inv);
    cJSON_Delete(inv);
    if (!rc)
        rc = invs ? dm_tileindex_open(tmp, invs, 0, &ti, err) : dm_err_oom(err);
    free(invs);
    int *list = rc ? NULL : malloc(sizeof(int) * (size_t)(nch > 0 ? nch : 1));
    if (!rc && !list)
        rc = dm_err_oom(err);
    for (int i = 1; !rc && i < n; i++) {
        int m = 0;
        for (int k = 0; k < nch; k++)
            if (owner[k] == i && sh[i].done[k])
                list[m++] = k;
        rc = dm_tileindex_take_chunks(ti, sh[i].index, list, m, err);
    }
    free(list);
    /* the first shard's own records go; what finalize built in a shard folder is not OUTDIR's */
    static const char *const drop[] = { "shard", "outputs", "finalized_gen", "output_format",
                                        "output_settings_built", "chunks_dropped", NULL };
    for (int i = 0; !rc && drop[i]; i++)
        rc = dm_tileindex_config_delete(ti, drop[i], err);
    if (!rc)
        rc = dm_tileindex_config_set(ti, "merged", record, err);
    if (ti) {
        int rc2 = dm_tileindex_end_run(ti, rc ? "failed" : "merged", rc ? NULL : err);
        rc = rc ? rc : rc2;
        rc2 = dm_tileindex_close(ti, rc ? NULL : err);
        rc = rc ? rc : rc2;
    }
    return rc;
}

int dm_merge(const dm_merge_opts *o, dm_merge_result *res, dm_err *err)
{
    dm_merge_result dummy;
    if (!res)
        res = &dummy;
    memset(res, 0, sizeof *res);
    if (!o->outdir || !o->outdir[0])
        return dm_err_set(err, DM_EINVAL, "no output folder");
    if (o->nshards < 1)
        return dm_err_set(err, DM_EINVAL, "no shard folder to merge");
    if (o->fin.out_set && dm_out_format_check(&o->fin.out, err))
        return DM_EINVAL;
    shard *sh = calloc((size_t)o->nshards, sizeof *sh);
    if (!sh)
        return dm_err_oom(err);
    int rc = 0, n = 0, gemm_mixed = 0;
    for (; !rc && n < o->nshards; n++) {
        sh[n].dir = o->shards[n];
        rc = shard_open(&sh[n], sh, err);
    }
    char real_out[PATH_MAX];
    for (int i = 0; !rc && i < n && realpath(o->outdir, real_out); i++)
        if (!strcmp(real_out, sh[i].real))
            rc = dm_err_set(err, DM_EINVAL, "%s: the output folder is one of the shards; merge "
                            "into another folder", o->outdir);
    if (!rc)
        rc = check_shards(sh, n, &gemm_mixed, err);
    int nch = rc ? 0 : sh[0].nch;
    int64_t *work = rc ? NULL : calloc((size_t)(nch > 0 ? nch : 1), sizeof *work);
    int *owner = rc ? NULL : calloc((size_t)(nch > 0 ? nch : 1), sizeof *owner);
    if (!rc && (!work || !owner))
        rc = dm_err_oom(err);
    if (!rc)
        rc = dm_tileindex_chunk_work(sh[0].ti, nch, work, err);
    if (!rc)
        rc = plan_chunks(sh, n, work, owner, res, err);
    if (!rc && res->chunks_missing && !o->allow_missing)
        rc = dm_err_set(err, DM_EINVAL, "%lld of %lld chunks are missing: %s. Merge again once "
                        "they are done (or --allow-missing: their area is nodata)",
                        (long long)res->chunks_missing, (long long)res->chunks, res->missing);
    if (!rc && gemm_mixed)
        dm_warn("the shards cut their matrix products into different numbers of slices (other "
                "--threads or core counts): their pixels agree to float rounding, not bit for bit, "
                "with one machine's run; give every shard the same --threads for identical bits");
    if (!rc && res->chunks_missing)
        dm_warn("%lld of %lld chunks are missing (%s): their area is nodata in the outputs",
                (long long)res->chunks_missing, (long long)res->chunks, res->missing);
    char *record = rc ? NULL : merge_record(sh, n, res);
    if (!rc && !record)
        rc = dm_err_oom(err);
    /* 3. OUTDIR */
    dm_outdir claim = { 0 };
    int claimed = 0, same = 0, placed = 0;
    char tmp[4200], index[4200];
    snprintf(tmp, sizeof tmp, "%s/.tiles.merge.gpkg", o->outdir);
    snprintf(index, sizeof index, "%s/tiles.gpkg", o->outdir);
    if (!rc && !(rc = dm_outdir_claim(o->outdir, &claim, err)))
        claimed = 1;
    if (!rc)
        rc = check_outdir(o->outdir, &sh[0], record, o->overwrite, &same, err);
    if (!rc && same && !(o->fin.out_set)) {
        res->run.nothing_to_do = 1;
        res->run.chunks_total = nch;
        goto out;
    }
    if (!rc)
        rc = build_index(sh, n, owner, tmp, record, err);
    if (!rc)
        rc = place_files(sh, n, owner, o->outdir, res, o->fin.cancel, err);
    if (!rc)
        rc = dm_tileindex_place(tmp, index, err);
    placed = !rc;
    dm_tileindex_unlink(tmp);
    /* the shards' indexes are not needed any more; their locks stay until the end */
    for (int i = 0; i < n; i++)
        dm_tileindex_close(sh[i].ti, NULL), sh[i].ti = NULL;
    /* 4. the outputs */
    if (!rc)
        rc = dm_fin_folder(o->outdir, &o->fin, &res->run, err);
out:
    if (rc && rc != DM_EINTERRUPTED)
        dm_err_space_hint(err, o->outdir);
    if (claimed) {
        if (rc && !placed && claim.made) {
            char p[4200];
            snprintf(p, sizeof p, "%s/chunks", o->outdir);
            dm_remove_tree(p, NULL);
        }
        dm_outdir_release(o->outdir, &claim, rc && !placed);
    }
    free(record), free(work), free(owner);
    for (int i = 0; i < n; i++)
        shard_free(&sh[i]);
    free(sh);
    return rc;
}

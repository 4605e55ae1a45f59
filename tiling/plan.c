/* tiling/plan.c — what a resumed run must redo: the inputs that changed since the folder's run
 * (by fingerprint), their order, and the weights' identity. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Which inputs changed since the folder's run: the rectangles (mosaic px) of every file that is
 * new, gone, or of another size or modification time. */
int dm_plan_changed(const dm_input_fp *old, int nold, const dm_input_fp *cur, int ncur,
                         dm_window **rects, int *nr, int *nfiles, char *first, size_t nfirst,
                         dm_err *err)
{
    *rects = NULL;
    *nr = *nfiles = 0;
    const char *lastpath = NULL;
    first[0] = '\0';
    int cap = 0;
    const dm_input_fp *lists[2] = { old, cur };
    int counts[2] = { nold, ncur };
    for (int side = 0; side < 2; side++)
        for (int i = 0; i < counts[side]; i++) {
            const dm_input_fp *f = &lists[side][i];
            /* the same path on the other side, with the same size, time and rectangle? */
            const dm_input_fp *other = lists[1 - side];
            int same = 0, seen_path = 0;
            for (int k = 0; k < counts[1 - side] && !same; k++) {
                const dm_input_fp *g = &other[k];
                if (strcmp(g->path, f->path))
                    continue;
                seen_path = 1;
                same = g->size == f->size && g->mtime_ns == f->mtime_ns && g->x0 == f->x0 &&
                       g->y0 == f->y0 && g->w == f->w && g->h == f->h;
            }
            if (same)
                continue;
            if (!first[0])
                snprintf(first, nfirst, "%s (%s)", f->path,
                         !seen_path ? (side ? "new" : "gone") : "changed");
            if (side == 0 || !seen_path) /* a changed file counts once */
                if (!lastpath || strcmp(lastpath, f->path))
                    (*nfiles)++;
            lastpath = f->path;
            if (*nr == cap) {
                cap = cap ? 2 * cap : 16;
                dm_window *p = realloc(*rects, sizeof *p * (size_t)cap);
                if (!p)
                    return dm_err_oom(err);
                *rects = p;
            }
            (*rects)[(*nr)++] = (dm_window){ f->x0, f->y0, f->w, f->h };
        }
    return 0;
}

/* The weights' identity: the SHA-256 of the file, or of the shards' SHA-256s in order (a folder or
 * an index.json), each cached by path, size, mtime and inode. */
int dm_weights_sha(const dm_weights *w, char out[65], dm_err *err)
{
    int n = dm_weights_nfiles(w), rc = 0;
    if (n == 1)
        return dm_sha256_file_cached(dm_weights_file(w, 0), out, err);
    dm_sha256 s;
    if (dm_sha256_init(&s))
        return dm_err_oom(err);
    for (int i = 0; i < n && !rc; i++) {
        char one[65];
        if (!(rc = dm_sha256_file_cached(dm_weights_file(w, i), one, err)))
            dm_sha256_update(&s, one, 64);
    }
    dm_sha256_hex(&s, out);
    return rc;
}

/* The inputs in their order (real paths), as JSON: the order decides which is on top where
 * inputs overlap. */
char *dm_plan_input_order(const dm_run_opts *o)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < o->mosaic.n_inputs; i++) {
        char real[4096];
        const char *p = realpath(o->mosaic.inputs[i], real) ? real : o->mosaic.inputs[i];
        cJSON_AddItemToArray(a, cJSON_CreateString(p));
    }
    char *s = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_Delete(a);
    return s;
}

static int in_array(const cJSON *a, const char *s)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, a) if (cJSON_IsString(x) && !strcmp(x->valuestring, s)) return 1;
    return 0;
}

/* 1 when the inputs both lists hold come in another order (inputs added or removed alone do
 * not count: their fingerprints say where they are). */
int dm_plan_reordered(const char *old_json, const char *now_json)
{
    cJSON *a = old_json ? cJSON_Parse(old_json) : NULL;
    cJSON *b = now_json ? cJSON_Parse(now_json) : NULL;
    int diff = 0;
    const cJSON *x = a ? a->child : NULL, *y = b ? b->child : NULL;
    while (a && b && !diff) {
        while (x && !(cJSON_IsString(x) && in_array(b, x->valuestring)))
            x = x->next;
        while (y && !(cJSON_IsString(y) && in_array(a, y->valuestring)))
            y = y->next;
        if (!x || !y) {
            diff = (x != NULL) != (y != NULL);
            break;
        }
        diff = strcmp(x->valuestring, y->valuestring) != 0;
        x = x->next, y = y->next;
    }
    cJSON_Delete(a), cJSON_Delete(b);
    return diff;
}


int dm_plan_aoi_crop(dm_eng *e, const dm_run_opts *o, const cJSON *old_res, int *W, int *H,
                     dm_err *err)
{
    double env[4];
    dm_window win;
    dm_aoi_extent(e->aoi, env);
    if (!dm_grid_aoi_window(e->gt, *W, *H, env, o->tile, &win))
        return 0;
    if (old_res) { /* the folder's run was over the whole mosaic: it stays so */
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(old_res, "width");
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(old_res, "height");
        const cJSON *gt = cJSON_GetObjectItemCaseSensitive(old_res, "geotransform");
        if (cJSON_IsNumber(w) && cJSON_IsNumber(h) && w->valuedouble == *W &&
            h->valuedouble == *H && cJSON_GetArraySize(gt) == 6 &&
            cJSON_GetArrayItem(gt, 0)->valuedouble == e->gt[0] &&
            cJSON_GetArrayItem(gt, 3)->valuedouble == e->gt[3])
            return 0;
    }
    int rc = dm_mosaic_crop(e->mo, win.x, win.y, win.w, win.h, err);
    if (rc)
        return rc;
    dm_info("%s: mapping the tiles that meet the area of interest: %d×%d px of the %d×%d px "
            "mosaic", o->aoi, win.w, win.h, *W, *H);
    *W = win.w, *H = win.h;
    dm_mosaic_geotransform(e->mo, e->gt);
    return 0;
}

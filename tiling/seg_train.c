/* tiling/seg_train.c — training a segmentation head (see tiling.h): labels → one class per patch
 * (gis/labels.c), the patches' feature vectors (an existing features raster, or a features run
 * over the labels' extent into a work folder: gis/features_in.c reads it back), the softmax fit
 * (heads/seg_train.c), the held-out metrics and the .dmseg file (heads/seg.c).
 *
 * The work folder is a normal run folder of the engine (dm_run): rerunning the training resumes
 * or reuses it, whatever the training options. Its area of interest is the labels' footprint,
 * written beside the run as labels_footprint.geojson (the polygons without their attributes, or
 * a raster's outline), with whole tiles: the model sees exactly what it sees in a run of the
 * whole mosaic, so a patch's vector is the one `dinomap features` gives it. */
#include "tiling.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../heads/seg.h"
#include "../models/ops.h"

#define FOOTPRINT "labels_footprint.geojson"

void dm_seg_train_opts_init(dm_seg_train_opts *o)
{
    memset(o, 0, sizeof *o);
    dm_run_opts_init(&o->run);
    o->l2 = 1e-3;
    o->holdout = 0.2;
    o->iterations = 500;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* --- --classes FILE: id,name[,#rrggbb] per line ----------------------------------------------- */

typedef struct class_file {
    int set[DM_LABEL_IDS], has_rgb[DM_LABEL_IDS];
    char name[DM_LABEL_IDS][64];
    uint8_t rgb[DM_LABEL_IDS][3];
} class_file;

/* The next comma-separated field of *s (double quotes protect commas; "" is a quote), trimmed,
 * into out; 0 at the end of the line. */
static int csv_field(const char **s, char *out, size_t n)
{
    const char *p = *s;
    size_t k = 0;
    if (!*p)
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '"') {
        for (p++; *p && !(*p == '"' && p[1] != '"'); p++) {
            if (*p == '"')
                p++;
            if (k + 1 < n)
                out[k++] = *p;
        }
        if (*p == '"')
            p++;
        while (*p && *p != ',')
            p++;
    } else {
        for (; *p && *p != ','; p++)
            if (k + 1 < n)
                out[k++] = *p;
        while (k && (out[k - 1] == ' ' || out[k - 1] == '\t'))
            k--;
    }
    out[k] = '\0';
    *s = *p == ',' ? p + 1 : p;
    return 1;
}

static int read_classes(const char *path, class_file *cf, dm_err *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return dm_err_set(err, DM_EIO, "--classes %s: cannot open: %s", path, strerror(errno));
    char line[1024];
    int ln = 0, rc = 0, data = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        line[strcspn(line, "\r\n")] = '\0';
        const char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s || *s == '#')
            continue; /* blank lines and comments */
        char id[64], name[256], col[64] = "";
        csv_field(&s, id, sizeof id);
        int has_name = csv_field(&s, name, sizeof name), has_col = csv_field(&s, col, sizeof col);
        char *end;
        long v = strtol(id, &end, 10);
        if (end == id || *end) {
            if (!data++)
                continue; /* a header line */
            rc = dm_err_set(err, DM_EINVAL, "--classes %s:%d: '%s' is not a class id (lines are "
                            "id,name,#rrggbb)", path, ln, id);
        } else if (v < 1 || v >= DM_LABEL_IDS) {
            rc = dm_err_set(err, DM_EINVAL, "--classes %s:%d: class id %ld is outside 1..254 (0 is "
                            "unlabelled; 255 is the nodata of seg.tif)", path, ln, v);
        } else if (!has_name || !name[0]) {
            rc = dm_err_set(err, DM_EINVAL, "--classes %s:%d: class %ld has no name (lines are "
                            "id,name,#rrggbb)", path, ln, v);
        } else if (has_col && col[0] && dm_seg_parse_color(col, cf->rgb[v])) {
            rc = dm_err_set(err, DM_EINVAL, "--classes %s:%d: '%s' is not a colour #rrggbb", path,
                            ln, col);
        } else if (cf->set[v]) {
            rc = dm_err_set(err, DM_EINVAL, "--classes %s:%d: class %ld is given twice", path, ln,
                            v);
        } else {
            data++;
            cf->set[v] = 1;
            cf->has_rgb[v] = has_col && col[0];
            snprintf(cf->name[v], sizeof cf->name[v], "%s", name);
        }
    }
    fclose(f);
    return rc;
}

/* --- the features: a run into the work folder ---------------------------------------------- */

static int slurp(const char *path, char **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    struct stat st;
    char *b = fstat(fileno(f), &st) == 0 ? malloc((size_t)st.st_size + 1) : NULL;
    if (b && fread(b, 1, (size_t)st.st_size, f) == (size_t)st.st_size) {
        b[st.st_size] = '\0';
        *out = b;
    } else {
        free(b);
    }
    fclose(f);
    return *out ? 0 : -1;
}

static int run_features(const dm_seg_train_opts *o, const dm_labels *lab, dm_seg_train_result *res,
                        dm_err *err)
{
    const char *work = o->run.outdir;
    char fp[4200], idx[4200];
    snprintf(fp, sizeof fp, "%s/" FOOTPRINT, work);
    snprintf(idx, sizeof idx, "%s/tiles.gpkg", work);
    char *json = NULL, *old = NULL;
    int rc = dm_labels_footprint(lab, &json, err), made = 0, wrote = 0;
    struct stat st;
    if (!rc && stat(work, &st) != 0) {
        if (dm_mkdir_p(work) != 0)
            rc = dm_err_set(err, DM_EIO, "--work %s: cannot create the folder: %s", work,
                            strerror(errno));
        made = !rc;
    }
    int same = !rc && slurp(fp, &old) == 0 && !strcmp(old, json);
    if (!rc && !same && dm_exists(idx) && !o->run.overwrite)
        rc = dm_err_set(err, DM_EMISMATCH, "--work %s holds %s: give another --work folder, "
                        "or --overwrite to recompute this one for %s (a run's features can also "
                        "be read as they are: --features %s/features.tif)", work,
                        old ? "the features of labels with another extent (its " FOOTPRINT
                              " differs)" : "a run that is not a seg train's (no " FOOTPRINT ")",
                        o->labels, work);
    if (!rc && !same) {
        rc = dm_write_file_atomic(fp, json, strlen(json), err);
        wrote = !rc;
    }
    free(json), free(old);
    if (rc) {
        if (made)
            rmdir(work);
        return rc;
    }
    dm_run_opts ro = o->run;
    ro.products = DM_PRODUCT_FEATURES;
    ro.aoi = fp;
    ro.aoi_whole_tiles = 1;
    rc = dm_run(&ro, &res->run, err);
    res->ran = rc == 0;
    if (rc && wrote && !dm_exists(idx)) { /* the run made nothing: neither do we */
        unlink(fp);
        if (made)
            rmdir(work);
    }
    if (rc == DM_EINVAL && strstr(err->msg, "does not touch the mosaic")) {
        /* the engine names the footprint file; the user knows the labels */
        char size[64] = "";
        const char *a = strstr(err->msg, "does not touch the mosaic (");
        if (a)
            snprintf(size, sizeof size, "%.*s", (int)strcspn(a + 27, ")"), a + 27);
        dm_err_set(err, DM_EINVAL, "labels %s do not overlap the imagery (the mosaic of %s, "
                   "%s): check their CRS and extent", o->labels, ro.mosaic.n_inputs == 1 ?
                   ro.mosaic.inputs[0] : "the inputs", size);
    } else if (rc == DM_EMISMATCH) {
        dm_err_prefix(err, "--work %s", work);
    }
    if (rc)
        return rc;
    snprintf(res->features, sizeof res->features, "%s/features.tif", work);
    if (!dm_exists(res->features))
        snprintf(res->features, sizeof res->features, "%s/features.vrt", work);
    if (!dm_exists(res->features))
        return dm_err_set(err, DM_EIO, "--work %s: the features run left no features.tif or "
                          "features.vrt", work);
    return 0;
}

/* --- the fit and its metrics ----------------------------------------------------------------- */

/* A patch's fixed place in the held-out split: u in [0, 1) from its position (splitmix64). */
static double patch_u(int x, int y)
{
    uint64_t z = ((uint64_t)(uint32_t)y << 32 | (uint32_t)x) + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

typedef struct train_data {
    int n, *px, *py, *id;          /* the labelled patches, row-major */
    float *v;                      /* [n, D] */
    uint8_t *ok, *hold;
} train_data;

static void train_data_free(train_data *t)
{
    free(t->px), free(t->py), free(t->id), free(t->v), free(t->ok), free(t->hold);
}

static cJSON *info_json(const dm_seg_train_opts *o, const dm_labels *lab,
                        const dm_seg_train_result *r)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "trainer", "multinomial logistic regression (softmax), class "
                            "weights N/(C*n_k), L2 on the standardized features, L-BFGS");
    cJSON_AddNumberToObject(j, "l2", r->l2);
    cJSON_AddNumberToObject(j, "iterations", r->iterations);
    cJSON_AddBoolToObject(j, "converged", r->converged);
    cJSON_AddNumberToObject(j, "final_loss", r->loss);
    cJSON_AddStringToObject(j, "labels", base_name(o->labels));
    if (dm_labels_field(lab))
        cJSON_AddStringToObject(j, "label_field", dm_labels_field(lab));
    cJSON_AddStringToObject(j, "features", base_name(r->features));
    cJSON_AddStringToObject(j, "patch_rule", "a patch takes a class when at least 128 of its "
                            "256 pixels carry it");
    cJSON *p = cJSON_AddObjectToObject(j, "patches");
    cJSON_AddNumberToObject(p, "labelled", (double)r->labelled);
    cJSON_AddNumberToObject(p, "below_rule", (double)r->mixed);
    cJSON_AddNumberToObject(p, "without_features", (double)r->no_features);
    cJSON_AddNumberToObject(p, "train", (double)r->train);
    cJSON_AddNumberToObject(p, "holdout", (double)r->holdout);
    cJSON_AddNumberToObject(j, "train_accuracy", r->train_accuracy);
    cJSON *h = cJSON_AddObjectToObject(j, "holdout");
    cJSON_AddNumberToObject(h, "fraction", o->holdout);
    cJSON_AddNumberToObject(h, "patches", (double)r->holdout);
    if (isnan(r->accuracy)) {
        cJSON_AddNullToObject(h, "accuracy");
        cJSON_AddNullToObject(h, "miou");
    } else {
        cJSON_AddNumberToObject(h, "accuracy", r->accuracy);
        cJSON_AddNumberToObject(h, "miou", r->miou);
    }
    cJSON *a = cJSON_AddArrayToObject(j, "classes");
    for (int c = 0; c < r->nclasses; c++) {
        const dm_seg_train_class *k = &r->cls[c];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "id", k->id);
        cJSON_AddStringToObject(e, "name", k->name);
        cJSON_AddNumberToObject(e, "train", (double)k->train);
        cJSON_AddNumberToObject(e, "holdout", (double)k->holdout);
        if (isnan(k->iou))
            cJSON_AddNullToObject(e, "iou");
        else
            cJSON_AddNumberToObject(e, "iou", k->iou);
        cJSON_AddBoolToObject(e, "in_head", k->in_head);
        cJSON_AddItemToArray(a, e);
    }
    return j;
}

/* The labelled patches with features, split, the head's classes, the fit, the metrics. */
static int fit_head(const dm_seg_train_opts *o, const dm_labels *lab, const class_file *cf,
                    const dm_features_info *fi, train_data *t, dm_seg_train_result *r,
                    dm_seg_head **out, dm_err *err)
{
    int D = fi->D, rc = 0;
    int64_t ntr[DM_LABEL_IDS] = { 0 }, nho[DM_LABEL_IDS] = { 0 };
    for (int i = 0; i < t->n; i++) {
        if (!t->ok[i]) {
            r->no_features++;
            continue;
        }
        t->hold[i] = patch_u(t->px[i], t->py[i]) < o->holdout;
        if (t->hold[i])
            nho[t->id[i]]++;
        else
            ntr[t->id[i]]++;
    }
    int ids[DM_LABEL_IDS], nid = 0, C = 0, index[DM_LABEL_IDS];
    for (int k = 1; k < DM_LABEL_IDS; k++) {
        index[k] = -1;
        if (ntr[k])
            index[k] = C++; /* the head's classes: those with training patches, by id */
        if (ntr[k] || nho[k])
            ids[nid++] = k;
    }
    if (r->no_features == t->n)
        return dm_err_set(err, DM_EINVAL, "none of the %d patches that take a class has "
                          "features (all are nodata in %s)", t->n, r->features);
    if (nid < 2) {
        const dm_label_class *k = dm_labels_class(lab, ids[0]);
        return dm_err_set(err, DM_EINVAL, "labels %s: only one class (id %d%s%s) among the %lld "
                          "patches that take a class; a head needs at least two", o->labels,
                          ids[0], k->has_name ? ", " : "", k->has_name ? k->name : "",
                          (long long)(t->n - r->no_features));
    }
    if (C < 2)
        return dm_err_set(err, DM_EINVAL, "only one class keeps training patches after the "
                          "held-out split (--holdout %g): a head needs at least two; hold out "
                          "less, or label more", o->holdout);
    /* classes: the --classes file, else what the labels say, else "class N" */
    dm_seg_head *h = dm_seg_head_new(C, D);
    if (!h)
        return dm_err_oom(err);
    r->nclasses = 0;
    for (int pass = 0; pass < 2; pass++) /* the head's classes first, in its order */
        for (int q = 0; q < nid; q++) {
            int k = ids[q], c = index[k];
            if ((pass == 0) != (c >= 0))
                continue;
            const dm_label_class *lc = dm_labels_class(lab, k);
            dm_seg_train_class *rc_ = &r->cls[r->nclasses++];
            char name[64];
            uint8_t rgb[3];
            snprintf(name, sizeof name, "%s", cf->set[k] ? cf->name[k] : lc->has_name ? lc->name
                                              : "");
            if (!name[0])
                snprintf(name, sizeof name, "class %d", k);
            if (cf->has_rgb[k])
                memcpy(rgb, cf->rgb[k], 3);
            else if (lc->has_rgb)
                memcpy(rgb, lc->rgb, 3);
            else
                dm_seg_default_color(c >= 0 ? c : C + q, rgb);
            rc_->id = k;
            snprintf(rc_->name, sizeof rc_->name, "%s", name);
            rc_->train = ntr[k], rc_->holdout = nho[k], rc_->iou = NAN, rc_->in_head = c >= 0;
            if (c >= 0) {
                h->cls[c].id = k;
                snprintf(h->cls[c].name, sizeof h->cls[c].name, "%s", name);
                memcpy(h->cls[c].rgb, rgb, 3);
            } else {
                dm_warn("class %d (%s): all its %lld patches are held out, so the head does not "
                        "know it; label more of it", k, name, (long long)nho[k]);
            }
        }
    snprintf(h->kind, sizeof h->kind, "logistic");
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%s", fi->sha256);
    snprintf(h->arch, sizeof h->arch, "%s", fi->arch);
    snprintf(h->norm, sizeof h->norm, "%s", fi->norm);
    h->layer = fi->layer;
    /* the training and held-out sets, in patch order */
    for (int i = 0; i < t->n; i++)
        if (t->ok[i] && t->hold[i])
            r->holdout++;
        else if (t->ok[i])
            r->train++;
    float *Xt = malloc(sizeof *Xt * (size_t)(r->train ? r->train : 1) * D);
    float *Xh = malloc(sizeof *Xh * (size_t)(r->holdout ? r->holdout : 1) * D);
    int *yt = malloc(sizeof *yt * (size_t)(r->train ? r->train : 1));
    int *yh = malloc(sizeof *yh * (size_t)(r->holdout ? r->holdout : 1));
    int *ph = malloc(sizeof *ph * (size_t)(r->holdout ? r->holdout : 1));
    dm_ops *ws = NULL;
    if (!Xt || !Xh || !yt || !yh || !ph)
        rc = dm_err_oom(err);
    int64_t a = 0, b = 0;
    for (int i = 0; !rc && i < t->n; i++) {
        if (!t->ok[i])
            continue;
        const float *src = t->v + (size_t)i * D;
        if (t->hold[i]) {
            memcpy(Xh + (size_t)b * D, src, sizeof *Xh * (size_t)D);
            yh[b++] = index[t->id[i]];
        } else {
            memcpy(Xt + (size_t)a * D, src, sizeof *Xt * (size_t)D);
            yt[a++] = index[t->id[i]];
        }
    }
    if (!rc)
        rc = dm_ops_create(o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN),
                           &ws, err);
    dm_seg_fit_opts fo = { o->l2, o->iterations };
    dm_seg_fit_result fr;
    if (!rc)
        rc = dm_seg_fit(h, Xt, yt, (int)r->train, &fo, ws, &fr, err);
    if (!rc && r->holdout)
        rc = dm_seg_predict(h, Xh, (int)r->holdout, ph, err);
    if (!rc) {
        r->C = C, r->D = D, r->l2 = o->l2;
        r->iterations = fr.iterations, r->converged = fr.converged, r->loss = fr.loss;
        r->train_accuracy = fr.train_accuracy;
        r->accuracy = r->miou = NAN;
        if (r->holdout) {
            int64_t right = 0, tp[DM_LABEL_IDS] = { 0 }, fp[DM_LABEL_IDS] = { 0 },
                    fn[DM_LABEL_IDS] = { 0 };
            for (int64_t i = 0; i < r->holdout; i++) {
                int truth = yh[i], got = ph[i];
                right += truth == got;
                if (truth == got) {
                    tp[got]++;
                } else {
                    fp[got]++;
                    if (truth >= 0)
                        fn[truth]++;
                }
            }
            r->accuracy = (double)right / (double)r->holdout;
            double sum = 0;
            int nm = 0;
            for (int c = 0; c < C; c++) {
                int64_t d = tp[c] + fp[c] + fn[c];
                if (d) {
                    r->cls[c].iou = (double)tp[c] / (double)d;
                    sum += r->cls[c].iou;
                    nm++;
                }
            }
            for (int q = C; q < r->nclasses; q++) /* the head never says these */
                r->cls[q].iou = 0, nm++;
            r->miou = nm ? sum / nm : NAN;
        }
        cJSON *j = info_json(o, lab, r);
        h->info = j ? cJSON_PrintUnformatted(j) : NULL;
        cJSON_Delete(j);
        if (!h->info)
            rc = dm_err_oom(err);
    }
    dm_ops_free(ws);
    free(Xt), free(Xh), free(yt), free(yh), free(ph);
    if (rc) {
        dm_seg_head_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

int dm_seg_train(const dm_seg_train_opts *o, dm_seg_train_result *res, dm_err *err)
{
    memset(res, 0, sizeof *res);
    res->accuracy = res->miou = NAN;
    if (!o->labels || !o->out)
        return dm_err_set(err, DM_EINVAL, "%s", !o->labels ? "no labels (--labels)"
                                                           : "no head file to write (-o)");
    if (!(o->holdout >= 0 && o->holdout < 1))
        return dm_err_set(err, DM_EINVAL, "--holdout %g: expected a fraction 0 <= f < 1",
                          o->holdout);
    if (!(o->l2 >= 0) || o->iterations < 1)
        return dm_err_set(err, DM_EINVAL, "--l2 %g, --iterations %d: expected λ >= 0 and at "
                          "least one iteration", o->l2, o->iterations);
    if (!o->features && !o->run.outdir)
        return dm_err_set(err, DM_EINVAL, "no work folder for the features run (--work)");
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", o->out);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    struct stat st;
    if (stat(o->out, &st) == 0 && S_ISDIR(st.st_mode))
        return dm_err_set(err, DM_EINVAL, "-o %s: a folder; give the head's file name (HEAD.dmseg)",
                          o->out);
    if (access(dir, W_OK | X_OK) != 0)
        return dm_err_set(err, DM_EIO, "-o %s: cannot write in %s: %s", o->out, dir,
                          strerror(errno));
    class_file *cf = calloc(1, sizeof *cf);
    if (!cf)
        return dm_err_oom(err);
    dm_labels *lab = NULL;
    dm_features_in *fin = NULL;
    dm_seg_head *h = NULL;
    dm_label_grid g = { 0 };
    train_data t = { 0 };
    int rc = o->classes ? read_classes(o->classes, cf, err) : 0;
    if (!rc)
        rc = dm_labels_open(o->labels, o->label_field, &lab, err);
    if (!rc && o->features)
        snprintf(res->features, sizeof res->features, "%s", o->features);
    else if (!rc)
        rc = run_features(o, lab, res, err);
    if (!rc)
        rc = dm_features_in_open(res->features, &fin, err);
    const dm_features_info *fi = fin ? dm_features_in_info(fin) : NULL;
    if (!rc)
        rc = dm_labels_patches(lab, fi->gt, fi->wkt, fi->W, fi->H, &g, err);
    /* the patches that take a class, row-major */
    for (int64_t i = 0; !rc && i < (int64_t)g.w * g.h; i++)
        t.n += g.cls[i] != 0;
    res->labelled = t.n, res->mixed = g.mixed;
    if (!rc && !t.n)
        rc = dm_err_set(err, DM_EINVAL, "labels %s: no patch takes a class: of the %lld patches "
                        "with labelled pixels none has at least 128 of its 256 pixels (16 × 16 "
                        "px of the imagery) of one class; label whole areas, not thin lines or "
                        "single pixels", o->labels, (long long)g.mixed);
    if (!rc) {
        size_t n = (size_t)t.n;
        t.px = malloc(sizeof *t.px * n), t.py = malloc(sizeof *t.py * n);
        t.id = malloc(sizeof *t.id * n), t.v = malloc(sizeof *t.v * n * (size_t)fi->D);
        t.ok = malloc(n), t.hold = calloc(n, 1);
        if (!t.px || !t.py || !t.id || !t.v || !t.ok || !t.hold)
            rc = dm_err_oom(err);
    }
    for (int y = 0, k = 0; !rc && y < g.h; y++)
        for (int x = 0; x < g.w; x++)
            if (g.cls[(size_t)y * g.w + x])
                t.px[k] = g.x0 + x, t.py[k] = g.y0 + y, t.id[k++] = g.cls[(size_t)y * g.w + x];
    if (!rc)
        rc = dm_features_in_read(fin, t.px, t.py, t.n, t.v, t.ok, err);
    if (!rc)
        rc = fit_head(o, lab, cf, fi, &t, res, &h, err);
    if (!rc && res->mixed)
        dm_info("%lld patches with labelled pixels were left out: none of their classes covers "
                "half of their 256 pixels", (long long)res->mixed);
    if (!rc && res->no_features)
        dm_info("%lld labelled patches have no features (nodata in %s) and were left out",
                (long long)res->no_features, base_name(res->features));
    if (!rc)
        rc = dm_seg_head_save(h, o->out, err);
    train_data_free(&t);
    free(g.cls);
    dm_seg_head_free(h);
    dm_features_in_close(fin);
    dm_labels_free(lab);
    free(cf);
    return rc;
}

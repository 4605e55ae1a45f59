/* src/cmd_seg_train.c — `dinomap seg train`: a segmentation head (.dmseg) fitted on labelled
 * patches. Its own options (--labels, --features, --work, --l2...) and, for the features run
 * into the work folder, the vocabulary of `dinomap features` (src/options.c) but -o, which
 * names the head here, and the AOI, which the labels are. The work is tiling/seg_train.c's. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

enum { S_LABELS = 2000, S_FIELD, S_CLASSES, S_FEATURES, S_WORK, S_L2, S_HOLDOUT, S_ITER };

static const struct own {
    const char *name;
    int code;
    const char *arg, *help;
} own[] = {
    { "labels", S_LABELS, "LABELS", "the classes (required): a class raster (any GDAL raster "
      "and CRS; band 1; 0 and nodata unlabelled; names and colours from its attribute table or "
      "colour table) or polygons (GeoPackage, Shapefile, GeoJSON...; any CRS; the first layer)" },
    { "label-field", S_FIELD, "NAME", "vector labels: the field of the classes, integer (the "
      "ids) or string (names, ids 1..n in sorted order) (default: the first such field)" },
    { "classes", S_CLASSES, "FILE", "CSV lines id,name,#rrggbb naming and colouring the classes "
      "(overrides what the labels say)" },
    { "features", S_FEATURES, "FILE", "train on an existing features.tif/.vrt of dinomap "
      "features (float32 or int8) instead of running the model: no -m, no INPUT" },
    { "work", S_WORK, "DIR", "the features run's folder (default: the head's path + .features, "
      "e.g. water.dmseg.features/); a normal resumable run folder: the next training reuses "
      "it" },
    { "l2", S_L2, "LAMBDA", "L2 penalty on the weights of the standardized features "
      "(default: 0.001)" },
    { "holdout", S_HOLDOUT, "FRACTION", "share of the labelled patches held out for the "
      "metrics, chosen by a hash of their position (default: 0.2; 0: none)" },
    { "iterations", S_ITER, "N", "L-BFGS iterations at most (default: 500)" },
};
#define NOWN ((int)(sizeof own / sizeof own[0]))

/* The features vocabulary's options this command leaves out. */
static int left_out(const char *name)
{
    static const char *names[] = { "output", "model", "aoi", "aoi-whole-tiles", "shard",
                                   "shard-count", "help", NULL };
    for (int i = 0; names[i]; i++)
        if (!strcmp(name, names[i]))
            return 1;
    return 0;
}

static void help_line(FILE *f, const char *head, const char *text)
{
    int first = 1;
    while (*text) { /* wrapped at 96 columns after a 26-column head, as options.c does */
        int len = (int)strlen(text);
        if (len > 70) {
            len = 70;
            while (len > 0 && text[len] != ' ')
                len--;
            len = len ? len : 70;
        }
        fprintf(f, "  %-24s%.*s\n", first ? head : "", len, text);
        first = 0;
        text += len;
        while (*text == ' ')
            text++;
    }
}

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap seg train -m WEIGHTS --labels LABELS INPUT... -o HEAD.dmseg [options]\n"
        "       dinomap seg train --features FEATURES.tif --labels LABELS -o HEAD.dmseg\n\n"
        "Fits a segmentation head: softmax (multinomial logistic) regression from a patch's\n"
        "feature vector to its class, class-balanced, L2-regularized. The features are those of\n"
        "dinomap features: a features run of the mosaic over the labels' extent goes to the work\n"
        "folder (resumable; reused by the next training), or --features reads an existing one.\n"
        "A 16x16-px patch takes a class when at least half of its 256 pixels carry that class;\n"
        "other patches are left out. A share of the labelled patches (--holdout) is held out:\n"
        "accuracy, per-class IoU and mIoU on them are printed and kept in the head.\n\n"
        "options:\n");
    char head[64];
    help_line(f, "-m, --model WEIGHTS", "backbone weights (.pth, .safetensors...); required "
              "unless --features");
    help_line(f, "-o, --output HEAD", "the head to write (.dmseg; required)");
    for (int i = 0; i < NOWN; i++) {
        snprintf(head, sizeof head, "--%s %s", own[i].name, own[i].arg);
        help_line(f, head, own[i].help);
    }
    fprintf(f, "\nthe features run (as dinomap features; not used with --features):\n");
    /* the vocabulary's lines, without the options left out */
    char *text = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&text, &n);
    if (m) {
        dm_cli_help_options(m, DM_CMD_FEATURES);
        fclose(m);
    }
    int skip = 0;
    for (char *l = text; l && *l;) {
        char *nl = strchr(l, '\n');
        int len = nl ? (int)(nl - l) : (int)strlen(l);
        if (len > 2 && l[2] == '-') { /* an option's first line: "  -q, --quiet", "  --tile PX" */
            const char *name = strstr(l, "--");
            int k = name ? (int)strcspn(name + 2, " \n") : 0;
            char nm[64];
            snprintf(nm, sizeof nm, "%.*s", k, name ? name + 2 : "");
            skip = name && name < l + len && left_out(nm);
        }
        if (!skip)
            fprintf(f, "%.*s\n", len, l);
        l += len + (nl != NULL);
    }
    free(text);
    fprintf(f, "\nExit status: 0 done, 1 failure (no head written), 2 usage, 3 the work folder in "
               "use by another\nrun, 4 interrupted (run again to go on).\n");
}

static int parse_double(const char *s, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end == s || *end || errno || !isfinite(*v) ? -1 : 0;
}

/* Its own option `code`: 0, or the exit code of a bad value (said). */
static int set_own(dm_seg_train_opts *so, dm_cli *c, int code, const char *arg)
{
    const char *v = dm_cli_keep(c, arg);
    double d;
    int k;
    if (!v) {
        dm_say("out of memory");
        return DM_EXIT_FAIL;
    }
    switch (code) {
    case S_LABELS: so->labels = v; break;
    case S_FIELD: so->label_field = v; break;
    case S_CLASSES: so->classes = v; break;
    case S_FEATURES: so->features = v; break;
    case S_WORK: so->run.outdir = v; break;
    case S_L2:
        if (parse_double(v, &d) || d < 0) {
            dm_say("--l2 %s: expected a number >= 0 (the L2 penalty, e.g. 0.001)", v);
            return DM_EXIT_USAGE;
        }
        so->l2 = d;
        break;
    case S_HOLDOUT:
        if (parse_double(v, &d) || d < 0 || d >= 1) {
            dm_say("--holdout %s: expected a fraction 0 <= f < 1 (e.g. 0.2; 0: no held-out "
                   "patches)", v);
            return DM_EXIT_USAGE;
        }
        so->holdout = d;
        break;
    case S_ITER:
        if ((k = dm_parse_pos_int(v)) < 0) {
            dm_say("--iterations %s: expected a positive number", v);
            return DM_EXIT_USAGE;
        }
        so->iterations = k;
        break;
    }
    return 0;
}

/* The command's getopt_long table: its own options, then the features vocabulary's. */
static struct option *longopts(void)
{
    static struct option l[NOWN + 64];
    if (l[0].name)
        return l;
    int k = 0;
    for (int i = 0; i < NOWN; i++)
        l[k++] = (struct option){ own[i].name, required_argument, 0, own[i].code };
    l[k++] = (struct option){ "model", required_argument, 0, 'm' };
    l[k++] = (struct option){ "output", required_argument, 0, 'o' };
    l[k++] = (struct option){ "help", no_argument, 0, 'h' };
    const struct option *f = dm_cli_longopts(DM_CMD_FEATURES);
    for (int i = 0; f[i].name && k < NOWN + 63; i++)
        if (!left_out(f[i].name))
            l[k++] = f[i];
    l[k] = (struct option){ 0, 0, 0, 0 };
    return l;
}

static void table(const dm_seg_train_result *r, const char *head)
{
    printf("%-24s %4s %8s %9s %7s\n", "class", "id", "train", "held-out", "IoU");
    for (int i = 0; i < r->nclasses; i++) {
        const dm_seg_train_class *k = &r->cls[i];
        char iou[16];
        snprintf(iou, sizeof iou, isnan(k->iou) ? "-" : "%.3f", k->iou);
        printf("%-24.24s %4d %8lld %9lld %7s%s\n", k->name, k->id, (long long)k->train,
               (long long)k->holdout, iou, k->in_head ? "" : "  (not in the head)");
    }
    if (isnan(r->accuracy))
        printf("held-out: none (--holdout 0 or too few patches); training accuracy %.3f\n",
               r->train_accuracy);
    else
        printf("held-out: %lld patches, accuracy %.3f, mIoU %.3f (training accuracy %.3f)\n",
               (long long)r->holdout, r->accuracy, r->miou, r->train_accuracy);
    printf("head: %s (%d classes x %d dimensions; lambda %g, %d iterations%s, loss %.6g)\n",
           head, r->C, r->D, r->l2, r->iterations, r->converged ? "" : ", not converged",
           r->loss);
    fflush(stdout);
}

static int train(dm_cli *c, dm_seg_train_opts *so)
{
    dm_cli_events ev;
    int code = dm_cli_run_begin(c, &ev);
    if (code)
        return code;
    const char *work = so->run.outdir;
    so->run = c->o;
    so->run.outdir = work;
    so->threads = c->o.threads;
    static dm_seg_train_result r; /* 30 kB: not on the stack */
    dm_err err = { 0 };
    int rc = dm_seg_train(so, &r, &err);
    if (ev.p.started)
        dm_progress_end(&ev.p), ev.p.started = 0;
    if (rc) {
        dm_say("%s", err.msg);
    } else {
        if (r.ran && !r.run.nothing_to_do)
            dm_info("features: %lld tiles mapped, %lld empty in %.1f s in %s",
                    (long long)r.run.tiles_run, (long long)r.run.tiles_empty, r.run.seconds,
                    work);
        else if (r.ran)
            dm_info("features: %s is up to date; its features are reused", work);
        if (!c->quiet)
            table(&r, so->out);
    }
    if (ev.log) {
        fprintf(ev.log, "{\"event\":\"summary\",\"command\":\"seg train\",\"exit\":%d,"
                "\"classes\":%d,\"holdout_accuracy\":%.6g,\"miou\":%.6g}\n", dm_exit_code(rc),
                rc ? 0 : r.C, rc || isnan(r.accuracy) ? -1 : r.accuracy,
                rc || isnan(r.miou) ? -1 : r.miou);
    }
    dm_cli_events_close(&ev);
    return dm_exit_code(rc);
}

int cmd_seg_train(int argc, char **argv)
{
    dm_cli c;
    dm_cli_init(&c, "seg train", DM_CMD_FEATURES);
    dm_seg_train_opts so;
    dm_seg_train_opts_init(&so);
    const struct option *lo = longopts();
    int code = -1, ch;
    if (!(c.argv = dm_cli_gdal_argv(argc, argv, 1, &c.argc)))
        code = DM_EXIT_USAGE;
    optind = 1;
    opterr = 0;
    while (code < 0 && (ch = getopt_long(c.argc, c.argv, ":m:o:qh", lo, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            code = DM_EXIT_OK;
        } else if (ch == '?' || ch == ':') {
            code = dm_cli_bad_option(c.cmd, ch, c.argv[optind - 1], optopt, lo);
        } else if (ch == 'o') {
            if (!(so.out = dm_cli_keep(&c, optarg)))
                code = DM_EXIT_FAIL;
        } else if (ch >= S_LABELS) {
            int r = set_own(&so, &c, ch, optarg);
            code = r ? r : -1;
        } else if (dm_cli_getopt(&c, ch, optarg)) {
            code = DM_EXIT_USAGE;
        }
    }
    for (int i = optind; code < 0 && i < c.argc; i++)
        if (dm_cli_add_input(&c, c.argv[i]))
            code = DM_EXIT_FAIL;
    char missing[200] = "";
    if (code < 0) {
        if (!so.labels)
            strcat(missing, "--labels LABELS, ");
        if (!so.features && !c.o.weights)
            strcat(missing, "-m WEIGHTS (or --features FILE), ");
        if (!so.features && !c.ninputs)
            strcat(missing, "an INPUT, ");
        if (!so.out)
            strcat(missing, "-o HEAD.dmseg, ");
    }
    if (missing[0]) {
        missing[strlen(missing) - 2] = '\0';
        dm_say("missing %s (dinomap seg train --help)", missing);
        code = DM_EXIT_USAGE;
    } else if (code < 0 && so.features && (c.o.weights || c.ninputs)) {
        dm_say("--features %s is read instead of running the model: leave out -m and the "
               "INPUTs (or --features, to compute the features)", so.features);
        code = DM_EXIT_USAGE;
    }
    if (code < 0) {
        if (!so.run.outdir) { /* HEAD.dmseg → HEAD.dmseg.features/ */
            char w[4200];
            snprintf(w, sizeof w, "%s.features", so.out);
            so.run.outdir = dm_cli_keep(&c, w);
        }
        c.o.products = DM_PRODUCT_FEATURES;
        c.o.outdir = so.run.outdir;
        c.o.mosaic.inputs = (const char *const *)c.inputs;
        c.o.mosaic.n_inputs = c.ninputs;
        c.o.out.co = (const char *const *)c.co;
        if (c.quiet && !c.progress_set)
            c.progress = DM_PROGRESS_NONE;
        dm_err err = { 0 };
        if (dm_cli_apply_config(&c))
            code = DM_EXIT_USAGE;
        else if (!so.features && dm_run_check(&c.o, &err)) {
            dm_say("%s", err.msg);
            code = DM_EXIT_USAGE;
        }
    }
    if (code < 0)
        code = train(&c, &so);
    dm_cli_free(&c);
    return code;
}

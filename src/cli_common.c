/* src/cli_common.c — what the mapping commands (features, chm) share on the command line: the
 * mosaic options, --progress, and preparing OUTDIR. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "features_run.h"

int dm_cli_mosaic_opt(int ch, const char *arg, dm_mosaic_opts *m, const char *cmd)
{
    int list[8];
    const char *why = NULL;
    switch (ch) {
    case DM_OPT_BANDS:
        if (dm_parse_int_list(arg, list, 8) != 3 || !list[0] || !list[1] || !list[2])
            why = "expected three 1-based band numbers, e.g. 3,2,1";
        else
            memcpy(m->bands, list, sizeof m->bands);
        break;
    case DM_OPT_SCALE:
        if (dm_parse_pair(arg, &m->scale_min, &m->scale_max) || m->scale_max <= m->scale_min)
            why = "expected MIN,MAX with MIN < MAX";
        m->scale_set = 1;
        break;
    case DM_OPT_STRETCH:
        if (dm_parse_pair(arg, &m->p1, &m->p2) || m->p1 < 0 || m->p2 > 100 || m->p1 >= m->p2)
            why = "expected percentiles P1,P2 with 0 <= P1 < P2 <= 100";
        m->stretch_set = 1;
        break;
    case DM_OPT_GSD: {
        char *end;
        m->gsd = strtod(arg, &end);
        if (end == arg || *end || !(m->gsd > 0))
            why = "expected a positive pixel size";
        break;
    }
    case DM_OPT_CRS: m->crs = arg; break;
    case DM_OPT_UNGEO: m->allow_ungeoreferenced = 1; break;
    default: return 0;
    }
    if (why) {
        static const char *names[] = { "--bands", "--scale", "--stretch", "--gsd", "--crs", "" };
        fprintf(stderr, "dinomap %s: %s %s: %s\n", cmd, names[ch - DM_OPT_BANDS], arg, why);
        return -1;
    }
    return 1;
}

int dm_cli_run_opt(int ch, const char *arg, const dm_run_fields *f, const char *cmd)
{
    switch (ch) {
    case DM_OPT_THREADS:
        if ((*f->threads = dm_parse_pos_int(arg)) < 0) {
            fprintf(stderr, "dinomap %s: --threads %s: expected a positive number\n", cmd, arg);
            return -1;
        }
        return 1;
    case DM_OPT_DEVICE: *f->device = arg; return 1;
    case DM_OPT_ARCH: *f->arch = arg; return 1;
    case DM_OPT_NORM: *f->norm = arg; return 1;
    case DM_OPT_PROGRESS:
        if ((*f->progress = dm_parse_progress(arg)) < 0) {
            fprintf(stderr, "dinomap %s: --progress %s: expected auto, bar, json or none\n", cmd,
                    arg);
            return -1;
        }
        return 1;
    default: return 0;
    }
}

int dm_cli_shared_opt(int ch, const char *arg, dm_mosaic_opts *m, const dm_run_fields *rf,
                      const char *cmd)
{
    int r = dm_cli_mosaic_opt(ch, arg, m, cmd);
    return r ? r : dm_cli_run_opt(ch, arg, rf, cmd);
}

int dm_parse_progress(const char *s)
{
    static const char *names[] = { "auto", "bar", "json", "none" };
    static const int modes[] = { DM_PROGRESS_AUTO, DM_PROGRESS_BAR, DM_PROGRESS_JSON,
                                 DM_PROGRESS_NONE };
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return modes[i];
    return -1;
}

int dm_prepare_outdir(const char *dir, const char *const *products, int *made, dm_err *err)
{
    struct stat st;
    *made = 0;
    if (stat(dir, &st) != 0) {
        if (dm_mkdir_p(dir) != 0)
            return dm_err_set(err, DM_EIO, "%s: cannot create output directory: %s", dir,
                              strerror(errno));
        *made = 1;
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        return dm_err_set(err, DM_EIO, "%s: exists and is not a directory", dir);
    for (int i = 0; products && products[i]; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, products[i]);
        if (access(p, F_OK) == 0)
            return dm_err_set(err, DM_EINVAL, "%s already holds %s%s; choose another OUTDIR or "
                              "remove it", dir, products[i],
                              strstr(products[i], ".gpkg") ? " (a run)" : "");
    }
    if (access(dir, W_OK | X_OK) != 0)
        return dm_err_set(err, DM_EIO, "%s: not writable: %s", dir, strerror(errno));
    return 0;
}

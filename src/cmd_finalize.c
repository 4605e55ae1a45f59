/* src/cmd_finalize.c — `dinomap finalize OUTDIR`: the final rasters from a run's done chunks. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap finalize OUTDIR [options]\n\n"
        "Builds the run's final rasters (features.tif, features_pca.tif, chm.tif, ...) from the\n"
        "chunks its tile index marks done. A complete run does this by itself at the end; use it\n"
        "to look at a part of a long run (the chunks not done yet are nodata) or after changing\n"
        "--max-cog-gib, -of or -co. Needs no model (seg.tif: with the folder's last head or\n"
        "clusters).\n\n"
        "options:\n"
        "  --max-cog-gib GIB       outputs larger than this are block COGs + a VRT (default: the "
        "run's)\n"
        "  -of FORMAT              COG or Zarr (features.zarr too), as for dinomap features\n"
        "  -co NAME=VALUE          a creation option of the -of format's GDAL driver, repeatable\n"
        "                          (without -of and -co: those of the folder's last finalize)\n"
        "  --config KEY VALUE      a GDAL configuration option, repeatable\n"
        "  --drop-chunks           delete chunks/ afterwards (a later change recomputes all)\n"
        "  --progress MODE         auto, bar, json, none (default: auto)\n"
        "  -q, --quiet             only warnings and errors: no notices, progress or summary\n"
        "  -h, --help              this help\n\n"
        "Exit status: 0 done, 1 failure, 2 usage, 3 OUTDIR in use, 4 interrupted.\n");
}

int dm_fin_cli_parse(dm_fin_cli *f, int argc, char **argv, const char *cmd, int merge,
                     void (*help)(FILE *))
{
    enum { O_MAX = 256, O_DROP, O_PROG, O_OF, O_CO, O_CONFIG, O_ALLOW, O_OVER, O_THREADS };
    static const struct option fin_opts[] = {
        { "max-cog-gib", required_argument, 0, O_MAX }, { "drop-chunks", no_argument, 0, O_DROP },
        { "of", required_argument, 0, O_OF }, { "co", required_argument, 0, O_CO },
        { "config", required_argument, 0, O_CONFIG },
        { "progress", required_argument, 0, O_PROG }, { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    static const struct option merge_opts[] = {
        { "max-cog-gib", required_argument, 0, O_MAX }, { "drop-chunks", no_argument, 0, O_DROP },
        { "of", required_argument, 0, O_OF }, { "co", required_argument, 0, O_CO },
        { "config", required_argument, 0, O_CONFIG },
        { "progress", required_argument, 0, O_PROG }, { "quiet", no_argument, 0, 'q' },
        { "allow-missing", no_argument, 0, O_ALLOW }, { "overwrite", no_argument, 0, O_OVER },
        { "threads", required_argument, 0, O_THREADS },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const struct option *opts = merge ? merge_opts : fin_opts;
    memset(f, 0, sizeof *f);
    f->fo = (dm_finalize_opts){ .threads = (int)sysconf(_SC_NPROCESSORS_ONLN), .max_cog_gib = -1 };
    f->mode = DM_PROGRESS_AUTO;
    int mode_set = 0, ch, code = -1;
    char *end, why[700];
    /* -of, -co and --config are read by the mapping commands' parser, into c */
    dm_cli *c = &f->c;
    dm_cli_init(c, cmd, DM_CMD_FEATURES);
    if (!(c->argv = dm_cli_gdal_argv(argc, argv, 1, &c->argc)))
        code = DM_EXIT_USAGE;
    optind = 1;
    opterr = 0;
    while (code < 0 && (ch = getopt_long(c->argc, c->argv, ":qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': help(stdout); code = 0; break;
        case 'q': f->quiet = 1; break;
        case O_DROP: f->fo.drop_chunks = 1; break;
        case O_ALLOW: f->allow_missing = 1; break;
        case O_OVER: f->overwrite = 1; break;
        case O_THREADS:
            if ((f->fo.threads = dm_parse_pos_int(optarg)) < 0) {
                dm_say("--threads %s: expected a positive number", optarg);
                code = DM_EXIT_USAGE;
            }
            break;
        case O_MAX:
            f->fo.max_cog_gib = strtod(optarg, &end);
            if (end == optarg || *end || f->fo.max_cog_gib < 0) {
                dm_say("--max-cog-gib %s: expected a size in GiB", optarg);
                code = DM_EXIT_USAGE;
            }
            break;
        case O_PROG:
            mode_set = 1;
            if ((f->mode = dm_parse_progress(optarg)) < 0) {
                dm_say("--progress %s: expected auto, bar, json or none", optarg);
                code = DM_EXIT_USAGE;
            }
            break;
        case O_OF:
        case O_CO:
        case O_CONFIG:
            f->fo.out_set |= ch != O_CONFIG;
            if (dm_cli_set(c, ch == O_OF ? "of" : ch == O_CO ? "co" : "config", optarg, why,
                           sizeof why)) {
                dm_say("%s", why);
                code = DM_EXIT_USAGE;
            }
            break;
        default:
            code = dm_cli_bad_option(cmd, ch, c->argv[optind - 1], optopt, opts);
        }
    }
    dm_err err = { 0 };
    f->fo.out = c->o.out;
    f->fo.out.co = (const char *const *)c->co;
    if (code < 0 && (dm_cli_apply_config(c) || (f->fo.out_set &&
                                                 dm_out_format_check(&f->fo.out, &err)))) {
        if (err.msg[0])
            dm_say("%s", err.msg);
        code = DM_EXIT_USAGE;
    }
    if (f->quiet) { /* warnings and errors only, as the mapping commands' -q */
        dm_log_set_level(DM_LOG_WARN);
        f->mode = mode_set ? f->mode : DM_PROGRESS_NONE;
    }
    if (code < 0) {
        f->fo.cancel = dm_cli_signals();
        f->fo.ev = dm_cli_events_open(&f->ev, f->mode, NULL);
        f->fo.fault = getenv("DINOMAP_FAULT");
    }
    return code;
}

void dm_fin_cli_free(dm_fin_cli *f)
{
    dm_cli_events_close(&f->ev);
    dm_cli_free(&f->c);
}

int cmd_finalize(int argc, char **argv)
{
    dm_fin_cli f;
    int code = dm_fin_cli_parse(&f, argc, argv, "finalize", 0, help);
    if (code < 0 && optind != f.c.argc - 1) {
        dm_say("finalize: expected one OUTDIR (dinomap finalize --help)");
        code = DM_EXIT_USAGE;
    }
    if (code < 0) {
        dm_err err = { 0 };
        dm_run_result r;
        int rc = dm_run_finalize(f.c.argv[optind], &f.fo, &r, &err);
        if (f.ev.p.started)
            dm_progress_end(&f.ev.p), f.ev.p.started = 0;
        if (rc)
            dm_say("%s", err.msg);
        else
            dm_info("finalized in %.1f s: %s", r.seconds, r.outputs);
        code = dm_exit_code(rc);
    }
    dm_fin_cli_free(&f);
    return code;
}

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
        "--max-cog-gib. Needs no model.\n\n"
        "options:\n"
        "  --max-cog-gib GIB       outputs larger than this are block COGs + a VRT (default: the "
        "run's)\n"
        "  --drop-chunks           delete chunks/ afterwards (a later change recomputes all)\n"
        "  --progress MODE         auto, bar, json, none (default: auto)\n"
        "  -q, --quiet             only warnings and errors\n"
        "  -h, --help              this help\n\n"
        "Exit status: 0 done, 1 failure, 2 usage, 3 OUTDIR in use, 4 interrupted.\n");
}

int cmd_finalize(int argc, char **argv)
{
    enum { O_MAX = 256, O_DROP, O_PROG };
    static const struct option opts[] = {
        { "max-cog-gib", required_argument, 0, O_MAX }, { "drop-chunks", no_argument, 0, O_DROP },
        { "progress", required_argument, 0, O_PROG }, { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    dm_finalize_opts fo = { .threads = (int)sysconf(_SC_NPROCESSORS_ONLN), .max_cog_gib = -1 };
    int mode = DM_PROGRESS_AUTO;
    int ch;
    char *end;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': help(stdout); return 0;
        case 'q': dm_log_set_level(DM_LOG_WARN); break;
        case O_DROP: fo.drop_chunks = 1; break;
        case O_MAX:
            fo.max_cog_gib = strtod(optarg, &end);
            if (end == optarg || *end || fo.max_cog_gib < 0) {
                fprintf(stderr, "dinomap finalize: --max-cog-gib %s: expected a size in GiB\n",
                        optarg);
                return DM_EXIT_USAGE;
            }
            break;
        case O_PROG:
            if ((mode = dm_parse_progress(optarg)) < 0) {
                fprintf(stderr, "dinomap finalize: --progress %s: expected auto, bar, json or "
                                "none\n", optarg);
                return DM_EXIT_USAGE;
            }
            break;
        default:
            fprintf(stderr, "dinomap finalize: %s: unknown option (dinomap finalize --help)\n",
                    argv[optind - 1]);
            return DM_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "dinomap finalize: expected one OUTDIR (dinomap finalize --help)\n");
        return DM_EXIT_USAGE;
    }
    fo.cancel = dm_cli_signals();
    dm_cli_events ev;
    fo.ev = dm_cli_events_open(&ev, mode, NULL);
    fo.fault = getenv("DINOMAP_FAULT");
    dm_err err = { 0 };
    dm_run_result r;
    int rc = dm_run_finalize(argv[optind], &fo, &r, &err);
    dm_cli_events_close(&ev);
    if (rc)
        fprintf(stderr, "dinomap finalize: %s\n", err.msg);
    else
        dm_info("finalized in %.1f s: %s", r.seconds, r.outputs);
    return dm_exit_code(rc);
}

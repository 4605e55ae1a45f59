/* src/cmd_change.c — `dinomap change A B -o OUTDIR`: where two dates' features differ (the cosine
 * distance of their patch vectors), as a raster and as ranked tiles. No model runs. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap change A B -o OUTDIR [-q]\n\n"
        "Where two dates differ: A and B are dinomap features outputs of the same area (run\n"
        "folders, or their features.tif / features.vrt; float32 or int8) on the same grid (same\n"
        "size, geotransform and CRS) from the same model (weights, layer, normalization, bands).\n"
        "Warping B onto A's grid is not supported yet: map both dates with the same --crs, --gsd\n"
        "and extent. No model runs.\n\n"
        "Writes to OUTDIR (created if missing; each file under a temporary name, then renamed):\n"
        "  change.tif         float32 COG, one band: the cosine distance 1 - cos(a, b) of each\n"
        "                     patch's two feature vectors (0: alike .. 2: opposite), on the grid\n"
        "                     of the inputs; nodata NaN where either date is nodata\n"
        "  change.qml         QGIS style (pseudocolour ramp 0..the largest distance)\n"
        "  change_tiles.gpkg  layer `tiles`: the tiles of A's tiles.gpkg (A a run folder), else\n"
        "                     squares of 32×32 patches, with `change` (the mean distance over the\n"
        "                     tile's valid patches; NULL: none) and `rank` (1 = most changed)\n"
        "The 100 most changed tiles: ogr2ogr top.gpkg OUTDIR/change_tiles.gpkg -where "
        "\"rank <= 100\"\n(in QGIS: the layer's filter \"rank\" <= 100).\n\n"
        "options:\n"
        "  -o, --output DIR  the output folder (required)\n"
        "  -q, --quiet       only warnings and errors\n"
        "  -h, --help        this help\n\n"
        "Exit status: 0 done, 1 failure (an input missing or not dinomap features, different\n"
        "grids or models), 2 usage, 3 OUTDIR in use by another run, 4 interrupted.\n");
}

int cmd_change(int argc, char **argv)
{
    static const struct option opts[] = { { "output", required_argument, 0, 'o' },
                                          { "quiet", no_argument, 0, 'q' },
                                          { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    int ch, quiet = 0;
    const char *outdir = NULL;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":ho:q", opts, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            return DM_EXIT_OK;
        } else if (ch == 'o') {
            outdir = optarg;
        } else if (ch == 'q') {
            quiet = 1;
        } else {
            return dm_cli_bad_option("change", ch, argv[optind - 1], optopt, opts);
        }
    }
    if (argc - optind != 2) {
        dm_say("change: expected two features outputs A B, got %d (dinomap change --help)",
               argc - optind);
        return DM_EXIT_USAGE;
    }
    if (!outdir || !outdir[0]) {
        dm_say("change: missing -o OUTDIR (dinomap change --help)");
        return DM_EXIT_USAGE;
    }
    if (quiet)
        dm_log_set_level(DM_LOG_WARN);
    dm_change_opts co = { .a = argv[optind], .b = argv[optind + 1], .outdir = outdir,
                          .cancel = dm_cli_signals() };
    dm_err err = { 0 };
    dm_run_result r;
    int rc = dm_change(&co, &r, &err);
    if (rc)
        dm_say("%s", err.msg);
    else
        dm_info("%s: %s", outdir, r.outputs);
    return dm_exit_code(rc);
}

/* src/cmd_change.c — `dinomap change A B -o OUTDIR`: where two dates' features differ (the cosine
 * distance of their patch vectors), as a raster and as ranked tiles, on A's grid (B warped onto
 * it when it lies on another). No model runs. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap change A B -o OUTDIR [-r bilinear|nearest] [--max-cog-gib GIB]\n"
        "                      [-co NAME=VALUE]... [-q]\n\n"
        "Where two dates differ: A and B are dinomap features outputs of the same area (run\n"
        "folders, or their features.tif / features.vrt; float32 or int8) from the same model\n"
        "(weights, layer, normalization, bands: else refused, naming what differs). No model runs.\n"
        "The result is on A's grid. B on another grid (another CRS, patch size, origin or extent)\n"
        "is warped onto A's patch grid with GDAL's warper, by blocks and groups of bands (a notice\n"
        "says so, and from what): its feature vectors are interpolated bilinearly from the four\n"
        "nearest B patches (-r bilinear, the default: the cosine ignores the interpolated vector's\n"
        "length, so no renormalization) or taken from the nearest one (-r nearest). CRSs are\n"
        "compared as CRSs, not as text (EPSG:32631 written as WKT or as a PROJ string is one grid).\n"
        "Two dates that do not overlap, or one without a CRS on another grid, are refused.\n\n"
        "Writes to OUTDIR (created if missing; each file under a temporary name, then renamed):\n"
        "  change.tif         float32 COG, one band: the cosine distance 1 - cos(a, b) of each\n"
        "                     patch's two feature vectors (0: alike .. 2: opposite), on A's grid;\n"
        "                     nodata NaN where A is nodata or B has no valid patch in reach of\n"
        "                     the resampling (outside B, or B's nodata); larger than\n"
        "                     --max-cog-gib: change.vrt over block COGs in change_blocks/\n"
        "  change.qml         QGIS style (pseudocolour ramp 0..the largest distance)\n"
        "  change_tiles.gpkg  layer `tiles`: the tiles of A's tiles.gpkg (A a run folder), else\n"
        "                     squares of 32×32 patches, with `change` (the mean distance over the\n"
        "                     tile's valid patches; NULL: none) and `rank` (1 = most changed)\n"
        "The 100 most changed tiles: ogr2ogr top.gpkg OUTDIR/change_tiles.gpkg -where "
        "\"rank <= 100\"\n(in QGIS: the layer's filter \"rank\" <= 100).\n\n"
        "options:\n"
        "  -o, --output DIR    the output folder (required)\n"
        "  -r METHOD           B's resampling when it is warped: bilinear (default) or nearest\n"
        "                      (GDAL's near is taken too)\n"
        "  --max-cog-gib GIB   change.tif larger than this (uncompressed) is written as block\n"
        "                      COGs + change.vrt (default: 16; 0: no limit)\n"
        "  -co NAME=VALUE      a GeoTIFF creation option of change.tif, repeatable (COMPRESS,\n"
        "                      LEVEL, PREDICTOR, BLOCKSIZE, ...: as for dinomap features)\n"
        "  -q, --quiet         only warnings and errors\n"
        "  -h, --help          this help\n\n"
        "Exit status: 0 done, 1 failure (an input missing or not dinomap features, different\n"
        "models, no overlap), 2 usage, 3 OUTDIR in use by another run, 4 interrupted.\n");
}

int cmd_change(int argc, char **argv)
{
    enum { O_MAX = 256, O_CO };
    static const struct option opts[] = { { "output", required_argument, 0, 'o' },
                                          { "max-cog-gib", required_argument, 0, O_MAX },
                                          { "co", required_argument, 0, O_CO },
                                          { "quiet", no_argument, 0, 'q' },
                                          { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    int ch, quiet = 0, nearest = 0, code = -1;
    const char *outdir = NULL;
    char why[700];
    /* -co and --max-cog-gib are read by the mapping commands' parser, into c */
    dm_cli c;
    dm_cli_init(&c, "change", DM_CMD_FEATURES);
    if (!(c.argv = dm_cli_gdal_argv(argc, argv, 1, &c.argc)))
        code = DM_EXIT_USAGE;
    optind = 1;
    opterr = 0;
    while (code < 0 && (ch = getopt_long(c.argc, c.argv, ":ho:qr:", opts, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            code = DM_EXIT_OK;
        } else if (ch == 'o') {
            outdir = optarg;
        } else if (ch == 'q') {
            quiet = 1;
        } else if (ch == 'r') {
            nearest = !strcmp(optarg, "nearest") || !strcmp(optarg, "near");
            if (!nearest && strcmp(optarg, "bilinear")) {
                dm_say("change: -r %s: expected bilinear or nearest", optarg);
                code = DM_EXIT_USAGE;
            }
        } else if (ch == O_MAX || ch == O_CO) {
            if (dm_cli_set(&c, ch == O_CO ? "co" : "max-cog-gib", optarg, why, sizeof why)) {
                dm_say("%s", why);
                code = DM_EXIT_USAGE;
            }
        } else {
            code = dm_cli_bad_option("change", ch, c.argv[optind - 1], optopt, opts);
        }
    }
    if (code < 0 && c.argc - optind != 2) {
        dm_say("change: expected two features outputs A B, got %d (dinomap change --help)",
               c.argc - optind);
        code = DM_EXIT_USAGE;
    }
    if (code < 0 && (!outdir || !outdir[0])) {
        dm_say("change: missing -o OUTDIR (dinomap change --help)");
        code = DM_EXIT_USAGE;
    }
    dm_change_opts co = { .outdir = outdir, .nearest = nearest, .max_cog_gib = c.o.max_cog_gib,
                          .out = { DM_OF_COG, (const char *const *)c.co } };
    dm_err err = { 0 };
    if (code < 0 && dm_out_format_check(&co.out, &err)) {
        dm_say("%s", err.msg);
        code = DM_EXIT_USAGE;
    }
    if (code < 0) {
        if (quiet)
            dm_log_set_level(DM_LOG_WARN);
        co.a = c.argv[optind], co.b = c.argv[optind + 1];
        co.cancel = dm_cli_signals();
        dm_run_result r;
        int rc = dm_change(&co, &r, &err);
        if (rc)
            dm_say("%s", err.msg);
        else
            dm_info("%s: %s", outdir, r.outputs);
        code = dm_exit_code(rc);
    }
    dm_cli_free(&c);
    return code;
}

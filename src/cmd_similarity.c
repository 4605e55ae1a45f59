/* src/cmd_similarity.c — `dinomap similarity`: the DINOv3 paper's similarity maps, georeferenced:
 * a run of the features product plus the similarity product derived from its chunks, or, with
 * --features, a map from an existing features raster without a model. */
#include <getopt.h> /* optind */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap similarity -m WEIGHTS --at X,Y [--srs CRS] INPUT... -o OUTDIR [options]\n"
        "       dinomap similarity -m WEIGHTS --query-aoi FILE INPUT... -o OUTDIR [options]\n"
        "       dinomap similarity --features FEATURES (--at X,Y | --query-aoi FILE) -o OUTDIR\n\n"
        "How much each patch of a mosaic looks like a query: the cosine similarity of every\n"
        "patch's DINOv3 feature vector to the vector of the patch under a point (--at; in --srs,\n"
        "default the output CRS; EPSG:4326 takes longitude,latitude), or to the normalized mean\n"
        "vector of the patches whose centre lies inside polygons (--query-aoi, any OGR format and\n"
        "CRS). It runs the features product on the run engine (chunks, resume, --aoi, --tile...)\n"
        "and derives the map from its chunks; the query changes no chunk: the same command with\n"
        "another --at rebuilds only similarity.tif, no tile is recomputed.\n\n"
        "Writes to OUTDIR:\n"
        "  similarity.tif    float32 COG, one band (-1..1), one pixel per 16×16-px patch on the\n"
        "                    grid of features.tif; nodata NaN where the patch is nodata\n"
        "  similarity.qml    QGIS style (pseudocolour ramp over the values' range)\n"
        "  features.tif      the features it was computed from, features_pca.tif, tiles.gpkg,\n"
        "                    chunks/, run.json (with the query), item.json: as dinomap features\n"
        "With --features (a features.tif or .vrt of any dinomap run, float32 or int8, or its\n"
        "folder) no model runs: only similarity.tif and similarity.qml are written to OUTDIR.\n\n"
        "options:\n");
    dm_cli_help_options(f, DM_CMD_SIMILARITY);
    fprintf(f, "\nExit status: 0 done (or nothing to do), 1 failure (a point outside the mosaic "
               "or on nodata,\nno patch centre inside --query-aoi, a --features file that is "
               "not dinomap features), 2 usage\n(--at not two numbers, both or neither of --at "
               "and --query-aoi, an unknown --srs), 3 OUTDIR\nin use by another run, "
               "4 interrupted.\n");
}

/* --features: no run, no model. */
static int from_features(dm_cli *c)
{
    const char *bad = dm_cli_unused_with_features(c);
    if (c->ninputs) {
        dm_say("%s: --features maps an existing features raster: no INPUT (dinomap similarity "
               "--help)", c->inputs[0]);
        return DM_EXIT_USAGE;
    }
    if (bad) {
        dm_say("--%s: not used with --features (it maps an existing features raster, no model "
               "runs); leave it out", bad);
        return DM_EXIT_USAGE;
    }
    if (!c->o.outdir) {
        dm_say("missing -o OUTDIR (dinomap similarity --help)");
        return DM_EXIT_USAGE;
    }
    if (c->quiet && !c->progress_set)
        c->progress = DM_PROGRESS_NONE;
    dm_sim_opts so = { .features = c->features, .outdir = c->o.outdir, .query = c->o.query,
                       .max_cog_gib = c->o.max_cog_gib, .out = c->o.out };
    so.out.co = (const char *const *)c->co;
    dm_err err = { 0 };
    if (dm_cli_apply_config(c))
        return DM_EXIT_USAGE;
    if (dm_sim_query_check(&so.query, &err) || dm_out_format_check(&so.out, &err)) {
        dm_say("%s", err.msg);
        return DM_EXIT_USAGE;
    }
    if (c->quiet)
        dm_log_set_level(DM_LOG_WARN);
    dm_cli_events ev;
    so.ev = dm_cli_events_open(&ev, c->progress, NULL);
    so.cancel = dm_cli_signals();
    dm_run_result r;
    int rc = dm_similarity(&so, &r, &err);
    dm_cli_events_close(&ev);
    if (rc)
        dm_say("%s", err.msg);
    else
        dm_info("%s: %s", c->o.outdir, r.outputs);
    return dm_exit_code(rc);
}

int cmd_similarity(int argc, char **argv)
{
    dm_cli c;
    dm_cli_init(&c, "similarity", DM_CMD_SIMILARITY);
    int code = dm_cli_parse(&c, argc, argv, 1, help);
    for (int i = optind; code < 0 && i < c.argc; i++)
        if (dm_cli_add_input(&c, c.argv[i]))
            code = DM_EXIT_FAIL;
    if (code < 0 && c.features) {
        code = from_features(&c);
        dm_cli_free(&c);
        return code;
    }
    return dm_cli_conclude(&c, code);
}

/* src/cmd_features.c — `dinomap features`: a mosaic → a georeferenced embedding raster. */
#include <stdio.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap features -m WEIGHTS INPUT... -o OUTDIR [options]\n\n"
        "Maps a satellite mosaic to a georeferenced embedding raster: one pixel per 16×16-px\n"
        "patch, D bands (1024 for ViT-L). INPUT: one or more rasters GDAL opens (GeoTIFF, COG,\n"
        "VRT, JPEG2000, /vsicurl/...); several inputs form one mosaic (warped to one CRS if\n"
        "needed).\n"
        "The run is chunked and crash-safe: the same command in the same OUTDIR resumes it, and\n"
        "redoes only the chunks whose inputs changed.\n\n"
        "Writes to OUTDIR:\n"
        "  features.tif      Cloud-Optimized GeoTIFF, float32 (or 8-bit, --quantize int8), nodata\n"
        "                    NaN (0), the input grid's origin with 16× its pixel size, AVERAGE\n"
        "                    overviews (features.vrt + features_blocks/ above --max-cog-gib)\n"
        "  features_pca.tif  3-band 8-bit PCA colour preview (PCA fitted once on the whole run)\n"
        "  tiles.gpkg        tile index (GeoPackage: footprints, state, per-tile embeddings)\n"
        "  chunks/           the run's state: per-chunk results (resume, updates, finalize)\n"
        "  run.json          parameters, inputs, model, timings\n\n"
        "options:\n");
    dm_cli_help_options(f, DM_CMD_FEATURES);
    fprintf(f, "\nExit status: 0 done (or nothing to do), 1 failure, 2 usage, 3 OUTDIR in use by "
               "another run,\n4 interrupted (SIGINT/SIGTERM; run again to go on).\n");
}

int cmd_features(int argc, char **argv)
{
    return dm_cli_main(argc, argv, "features", DM_CMD_FEATURES, help);
}

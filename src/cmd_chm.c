/* src/cmd_chm.c — `dinomap chm`: canopy height in metres with Meta's CHMv2 head. */
#include <stdio.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap chm -m BACKBONE [--head HEAD] INPUT... -o OUTDIR [options]\n\n"
        "Canopy height in metres from RGB imagery with Meta's CHMv2 DPT head on the DINOv3\n"
        "ViT-L/16 SAT-493M backbone, seamless over whole mosaics: windows of tile + 2*halo px\n"
        "stepping by the tile, blended with a Hann window. INPUT: one or more rasters GDAL opens\n"
        "(one mosaic). Chunked and crash-safe: the same command in the same OUTDIR resumes.\n\n"
        "Writes to OUTDIR:\n"
        "  chm.tif     float32 metres, nodata NaN (0 m is a real height), Cloud-Optimized GeoTIFF\n"
        "              with AVERAGE overviews, the input's grid and CRS\n"
        "  chm.qml     QGIS style (green ramp 0-40 m), loaded with chm.tif\n"
        "  tiles.gpkg  tile index; chunks/ the run's state; run.json parameters, timings\n\n"
        "options:\n");
    dm_cli_help_options(f, DM_CMD_CHM);
    fprintf(f, "\nEdges: windows lie inside the mosaic where it is larger than a window; pixels "
               "outside it\n(and nodata pixels) are fed as zeros in normalized space and are "
               "nodata in chm.tif.\nExit status: 0 done (or nothing to do), 1 failure, 2 usage, "
               "3 OUTDIR in use, 4 interrupted.\n");
}

int cmd_chm(int argc, char **argv)
{
    return dm_cli_main(argc, argv, "chm", DM_CMD_CHM, help);
}

/* src/cmd_features.c — `dinomap features`: command line → dm_features_run (features_run.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "base/base.h"
#include "features_run.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap features -m WEIGHTS INPUT... -o OUTDIR [options]\n\n"
        "Maps a satellite mosaic to a georeferenced embedding raster: one pixel per 16×16-px\n"
        "patch, D bands (1024 for ViT-L). INPUT: one or more rasters GDAL opens (GeoTIFF, COG,\n"
        "VRT, JPEG2000, /vsicurl/...); several inputs form one mosaic (warped to one CRS if needed).\n\n"
        "Writes to OUTDIR:\n"
        "  features.tif      Cloud-Optimized GeoTIFF, float32 (or 8-bit, --quantize int8), nodata\n"
        "                    NaN (0), the input grid's origin with 16× its pixel size, AVERAGE overviews\n"
        "  features_pca.tif  3-band 8-bit PCA colour preview (PCA fitted once on the whole run)\n"
        "  tiles.gpkg        tile index (GeoPackage: footprints, state, per-tile embeddings)\n"
        "  run.json          parameters, inputs, model, timings\n\n"
        "options:\n"
        "  -m, --model WEIGHTS   backbone weights (.pth, .safetensors, index.json, dir) (required)\n"
        "  -o, --output OUTDIR   output directory, created if missing (required; must not hold a run)\n"
        "  --bands R,G,B         input bands fed as red, green, blue (default: 1,2,3)\n"
        "  --scale MIN,MAX       map input values MIN..MAX to 0..255 (for non-8-bit imagery)\n"
        "  --stretch P1,P2       map the P1..P2 percentiles of the whole mosaic to 0..255\n"
        "                        (default for non-8-bit input: 2,98; 8-bit input is used as is)\n"
        "  --gsd METRES          warp to this pixel size (default: native)\n"
        "  --crs CRS             output CRS, e.g. EPSG:32631 (default: the input's; a geographic\n"
        "                        CRS is warped to its UTM zone, with a notice)\n"
        "  --tile PX             tile size, multiple of 16 (default: 512)\n"
        "  --halo PX             context on each side, multiple of 16 (default: 64); only the\n"
        "                        tile's interior patches are written, so tiles join seamlessly\n"
        "  --chunk N             tiles per chunk side: the unit written and recorded at once (default: 4)\n"
        "  --batch N             tiles per forward pass (default: 1)\n"
        "  --threads N           compute threads (default: all cores)\n"
        "  --device cpu          compute device (default: cpu)\n"
        "  --layer K             0-based block whose (normed) output to map (default: the last)\n"
        "  --norm PRESET         sat (default), chm, lvd: normalization statistics\n"
        "  --arch NAME           force the architecture (default: recognised from the weights)\n"
        "  --quantize MODE       none (default: float32) or int8 (8-bit with a per-band scale and\n"
        "                        offset GDAL applies: value = (q - 128) · scale, q = 0 is nodata)\n"
        "  --no-pca              skip features_pca.tif\n"
        "  --aoi FILE            vector polygons (any OGR format): only tiles touching them run\n"
        "  --allow-ungeoreferenced  map an input without georeferencing in pixel coordinates\n"
        "                        (refused by default: the outputs could not be placed on a map)\n"
        "  --keep-chunks         keep OUTDIR/chunks/ after the final rasters are built\n"
        "  --progress MODE       auto (bar on a terminal, else a line per 10%%), bar, json\n"
        "                        (one JSON object per line on stderr), none (default: auto)\n"
        "  -q, --quiet           only warnings and errors\n"
        "  -h, --help            this help\n");
}

int cmd_features(int argc, char **argv)
{
    enum { O_TILE = 256, O_HALO, O_CHUNK, O_BATCH, O_LAYER, O_QUANT, O_NOPCA, O_AOI, O_KEEP };
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' },
        { "output", required_argument, 0, 'o' },
        { "tile", required_argument, 0, O_TILE },
        { "halo", required_argument, 0, O_HALO },
        { "chunk", required_argument, 0, O_CHUNK },
        { "batch", required_argument, 0, O_BATCH },
        { "layer", required_argument, 0, O_LAYER },
        { "quantize", required_argument, 0, O_QUANT },
        { "no-pca", no_argument, 0, O_NOPCA },
        { "aoi", required_argument, 0, O_AOI },
        { "keep-chunks", no_argument, 0, O_KEEP },
        DM_MOSAIC_LONGOPTS,
        DM_RUN_LONGOPTS,
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    dm_features_opts o;
    memset(&o, 0, sizeof o);
    o.mosaic.bands[0] = 1, o.mosaic.bands[1] = 2, o.mosaic.bands[2] = 3;
    o.tile = 512, o.halo = 64, o.batch = 1, o.chunk = 4, o.layer = -1, o.pca = 1;
    o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    o.device = "cpu";
    o.norm = "sat";
    o.progress = DM_PROGRESS_AUTO;
    int ch, v;
    int list[8];
    optind = 1;
#define BAD(...) do { fprintf(stderr, "dinomap features: " __VA_ARGS__); fputc('\n', stderr); \
                      return 2; } while (0)
    while ((ch = getopt_long(argc, argv, "m:o:qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o.weights = optarg; break;
        case 'o': o.outdir = optarg; break;
        case 'q': dm_log_set_level(DM_LOG_WARN); break;
        case 'h': help(stdout); return 0;
        case O_TILE: if ((o.tile = dm_parse_pos_int(optarg)) < 0) BAD("--tile %s: expected a positive number", optarg); break;
        case O_HALO:
            if (dm_parse_int_list(optarg, list, 1) != 1)
                BAD("--halo %s: expected a number of pixels", optarg);
            o.halo = list[0];
            break;
        case O_CHUNK: if ((o.chunk = dm_parse_pos_int(optarg)) < 0) BAD("--chunk %s: expected a positive number", optarg); break;
        case O_BATCH: if ((o.batch = dm_parse_pos_int(optarg)) < 0 || o.batch > 256) BAD("--batch %s: expected 1..256", optarg); break;
        case O_LAYER:
            if ((v = dm_parse_int_list(optarg, list, 1)) != 1)
                BAD("--layer %s: expected a 0-based block index", optarg);
            o.layer = list[0];
            break;
        case O_QUANT:
            if (!strcmp(optarg, "none")) o.quantize = 0;
            else if (!strcmp(optarg, "int8")) o.quantize = 1;
            else BAD("--quantize %s: expected none or int8", optarg);
            break;
        case O_NOPCA: o.pca = 0; break;
        case O_AOI: o.aoi = optarg; break;
        case O_KEEP: o.keep_chunks = 1; break;
        default: {
            dm_run_fields rf = { &o.threads, &o.device, &o.arch, &o.norm, &o.progress };
            int r = dm_cli_shared_opt(ch, optarg, &o.mosaic, &rf, "features");
            if (r <= 0) {
                if (r == 0)
                    help(stderr);
                return 2;
            }
        }
        }
    }
#undef BAD
    if (!o.weights || !o.outdir || optind >= argc) {
        fprintf(stderr, "dinomap features: -m WEIGHTS, -o OUTDIR and at least one INPUT are "
                        "required\n\n");
        help(stderr);
        return 2;
    }
    o.mosaic.inputs = (const char *const *)(argv + optind);
    o.mosaic.n_inputs = argc - optind;
    dm_err err = { 0 };
    if (dm_features_run(&o, &err)) {
        fprintf(stderr, "dinomap features: %s\n", err.msg);
        return 1;
    }
    return 0;
}

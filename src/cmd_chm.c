/* src/cmd_chm.c — `dinomap chm`: command line → dm_chm_map (chm_run.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chm_run.h"
#include "cli.h"
#include "base/base.h"
#include "features_run.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap chm -m BACKBONE [--head HEAD] INPUT... -o OUTDIR [options]\n\n"
        "Canopy height in metres from RGB imagery with Meta's CHMv2 DPT head on the DINOv3\n"
        "ViT-L/16 SAT-493M backbone, seamless over whole mosaics: overlapping tiles blended with a\n"
        "Hann window. INPUT: one or more rasters GDAL opens (one mosaic).\n\n"
        "Writes to OUTDIR:\n"
        "  chm.tif    float32 metres, nodata NaN (0 m is a real height), Cloud-Optimized GeoTIFF\n"
        "             with AVERAGE overviews, the input's grid and CRS\n"
        "  chm.qml    QGIS style (green ramp 0-40 m), loaded with chm.tif\n"
        "  run.json   parameters, hashes, timings\n\n"
        "options:\n"
        "  -m, --model BACKBONE  backbone weights; a Hugging Face CHMv2 model.safetensors holds the\n"
        "                        head too (required)\n"
        "  --head HEAD           Meta's head file (dinov3_vitl16_chmv2_dpt_head-*.pth)\n"
        "  -o, --output OUTDIR   output directory, created if missing (required)\n"
        "  --tile PX             tile size, multiple of 32 (default: 512)\n"
        "  --overlap PX          px shared by neighbouring tiles, multiple of 16, at most tile/2\n"
        "                        (default: 128; 0 = no blending, tiles abut and seams show)\n"
        "  --gsd METRES          warp to this pixel size (default: native, as CHMv2's authors\n"
        "                        recommend; a notice when outside 0.3-1.5 m)\n"
        "  --crs CRS             output CRS (default: the input's; geographic → UTM)\n"
        "  --bands R,G,B         input bands as red, green, blue (default: 1,2,3)\n"
        "  --scale MIN,MAX       map input values MIN..MAX to 0..255 (non-8-bit imagery)\n"
        "  --stretch P1,P2       map the mosaic's P1..P2 percentiles to 0..255 (default 2,98 for\n"
        "                        non-8-bit input)\n"
        "  --norm PRESET         chm (default: CHMv2 mean 0.420,0.411,0.296), sat, lvd\n"
        "  --taps LIST           the 4 backbone blocks the head reads (default: from the file or\n"
        "                        the quarter rule: 5,11,17,23 for ViT-L)\n"
        "  --threads N           compute threads (default: all cores)\n"
        "  --device cpu          compute device (default: cpu)\n"
        "  --arch NAME           force the backbone architecture\n"
        "  --allow-ungeoreferenced  map an input without georeferencing in pixel coordinates\n"
        "  --progress MODE       auto, bar, json, none (default: auto)\n"
        "  -q, --quiet           only warnings and errors\n"
        "  -h, --help            this help\n\n"
        "Edges: tiles reach past the mosaic; pixels outside it (and nodata pixels) are fed as zeros\n"
        "in normalized space, the value the reference pads with, and are nodata in chm.tif.\n");
}

int cmd_chm(int argc, char **argv)
{
    enum { O_HEAD = 256, O_TILE, O_OVERLAP, O_TAPS };
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' },
        { "output", required_argument, 0, 'o' },
        { "head", required_argument, 0, O_HEAD },
        { "tile", required_argument, 0, O_TILE },
        { "overlap", required_argument, 0, O_OVERLAP },
        { "taps", required_argument, 0, O_TAPS },
        DM_MOSAIC_LONGOPTS,
        DM_RUN_LONGOPTS,
        { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    dm_chm_opts o;
    memset(&o, 0, sizeof o);
    o.mosaic.bands[0] = 1, o.mosaic.bands[1] = 2, o.mosaic.bands[2] = 3;
    o.tile = 512, o.overlap = 128;
    o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    o.device = "cpu";
    o.norm = "chm";
    o.progress = DM_PROGRESS_AUTO;
    int ch, list[8];
    optind = 1;
#define BAD(...) do { fprintf(stderr, "dinomap chm: " __VA_ARGS__); fputc('\n', stderr); \
                      return 2; } while (0)
    while ((ch = getopt_long(argc, argv, "m:o:qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': o.weights = optarg; break;
        case 'o': o.outdir = optarg; break;
        case 'q': dm_log_set_level(DM_LOG_WARN); break;
        case 'h': help(stdout); return 0;
        case O_HEAD: o.head = optarg; break;
        case O_TILE: if ((o.tile = dm_parse_pos_int(optarg)) < 0) BAD("--tile %s: expected a positive number", optarg); break;
        case O_OVERLAP:
            if (dm_parse_int_list(optarg, list, 1) != 1)
                BAD("--overlap %s: expected a number of pixels", optarg);
            o.overlap = list[0];
            break;
        case O_TAPS:
            if (dm_parse_int_list(optarg, o.taps, 4) != 4)
                BAD("--taps %s: expected four block indices, e.g. 5,11,17,23", optarg);
            o.taps_set = 1;
            break;
        default: {
            dm_run_fields rf = { &o.threads, &o.device, &o.arch, &o.norm, &o.progress };
            int r = dm_cli_shared_opt(ch, optarg, &o.mosaic, &rf, "chm");
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
        fprintf(stderr, "dinomap chm: -m BACKBONE, -o OUTDIR and at least one INPUT are required\n\n");
        help(stderr);
        return 2;
    }
    o.mosaic.inputs = (const char *const *)(argv + optind);
    o.mosaic.n_inputs = argc - optind;
    dm_err err = { 0 };
    if (dm_chm_map(&o, &err)) {
        fprintf(stderr, "dinomap chm: %s\n", err.msg);
        return 1;
    }
    return 0;
}

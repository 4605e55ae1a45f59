/* src/cmd_seg.c — `dinomap seg`: segmentation rasters from the patch features. `seg apply` maps
 * a mosaic with a segmentation head, `seg cluster` with the k-means clusters of the run's own
 * features; both are runs of the engine (features + seg products), so they resume like
 * `dinomap features`. `seg train` fits a head (src/cmd_seg_train.c). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void outputs(FILE *f, int cluster)
{
    fprintf(f,
        "Writes to OUTDIR:\n"
        "  seg.tif        uint8 class ids (the head's), 255 nodata (input nodata, or no valid\n"
        "                 patch near), colour table, class names in a RAT (seg.tif.aux.xml),\n"
        "                 Cloud-Optimized GeoTIFF with MODE overviews, the input's grid\n"
        "  seg.qml        QGIS style (paletted: the classes' colours and names)\n"
        "  seg_probabilities.tif  with --probabilities: float32, a band per class (softmax)\n"
        "  features.tif   the patch features seg is made from (and features_pca.tif), as\n"
        "                 dinomap features writes them; chunks/ holds them too (the run's state)\n"
        "%s"
        "  tiles.gpkg, run.json, item.json  as for dinomap features\n\n"
        "Each 16×16-px patch's class logits are upsampled bilinearly to the pixels (patch\n"
        "centres, align_corners=False), then each pixel takes the class of the largest.\n",
        cluster ? "  cluster.dmseg  the k-means head (W_k = 2·c_k, b_k = −|c_k|², on x/|x|)\n"
                : "");
}

static void help_apply(FILE *f)
{
    fprintf(f,
        "usage: dinomap seg apply -m WEIGHTS --head HEAD.dmseg INPUT... -o OUTDIR [options]\n\n"
        "Maps a mosaic to classes with a segmentation head: a linear map of the patch features\n"
        "to class logits (a .dmseg from dinomap seg train or seg cluster, or Meta's linear\n"
        "head). The head must come from WEIGHTS' backbone (its SHA-256, when recorded, and its\n"
        "width are checked) and its layer and normalization are used for the features.\n"
        "Another head in the same OUTDIR rebuilds the outputs from the chunks: no tile is\n"
        "recomputed.\n\n");
    outputs(f, 0);
    fprintf(f, "\noptions:\n");
    dm_cli_help_options(f, DM_CMD_SEG_APPLY);
    fprintf(f, "\nExit status: 0 done (or nothing to do), 1 failure, 2 usage, 3 OUTDIR in use by "
               "another run,\n4 interrupted (SIGINT/SIGTERM; run again to go on).\n");
}

static void help_cluster(FILE *f)
{
    fprintf(f,
        "usage: dinomap seg cluster -m WEIGHTS -k K [--seed S] INPUT... -o OUTDIR [options]\n\n"
        "Maps a mosaic to K unsupervised classes: k-means (k-means++ from the seed, Lloyd\n"
        "iterations to convergence) of the unit-length patch features of the run's uniform\n"
        "sample of 4096 patches (the PCA preview's), fitted at finalize and applied like a head:\n"
        "classes 1..K, \"cluster N\". The clusters depend on the imagery, the model, K and the\n"
        "seed only (not on threads or interruptions). OUTDIR/cluster.dmseg is the head: dinomap\n"
        "seg apply --head OUTDIR/cluster.dmseg gives the same classes on other imagery.\n"
        "Another K or seed in the same OUTDIR rebuilds the outputs: no tile is recomputed.\n\n");
    outputs(f, 1);
    fprintf(f, "\noptions:\n");
    dm_cli_help_options(f, DM_CMD_SEG_CLUSTER);
    fprintf(f, "\nExit status: 0 done (or nothing to do), 1 failure, 2 usage, 3 OUTDIR in use by "
               "another run,\n4 interrupted (SIGINT/SIGTERM; run again to go on).\n");
}

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap seg COMMAND [options]    (dinomap seg COMMAND --help for its options)\n\n"
        "Segmentation rasters (seg.tif: uint8 classes, colour table, class names) from DINOv3\n"
        "patch features.\n\n"
        "commands:\n"
        "  apply      map a mosaic with a segmentation head (.dmseg, or Meta's linear head)\n"
        "  cluster    map a mosaic to K k-means clusters of its own features (+ cluster.dmseg)\n"
        "  train      fit a head on labelled rasters\n");
}

int cmd_seg(int argc, char **argv)
{
    const char *sub = argc >= 2 ? argv[1] : NULL;
    if (!sub) {
        dm_say("seg: expected apply, cluster or train (dinomap seg --help)");
        return DM_EXIT_USAGE;
    }
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        help(stdout);
        return DM_EXIT_OK;
    }
    if (!strcmp(sub, "apply"))
        return dm_cli_main(argc - 1, argv + 1, "seg apply", DM_CMD_SEG_APPLY, help_apply);
    if (!strcmp(sub, "cluster"))
        return dm_cli_main(argc - 1, argv + 1, "seg cluster", DM_CMD_SEG_CLUSTER, help_cluster);
    if (!strcmp(sub, "train"))
        return cmd_seg_train(argc - 1, argv + 1);
    static const char *const names[] = { "apply", "cluster", "train", NULL };
    const char *s = dm_cli_suggest(sub, names);
    dm_say("seg: unknown command '%s'%s%s%s (dinomap seg --help)", sub, s ? " (did you mean " : "",
           s ? s : "", s ? "?)" : "");
    return DM_EXIT_USAGE;
}

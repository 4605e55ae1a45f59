/* src/main.c — the dinomap command: dispatches to one cmd_<name>.c per subcommand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gdal.h>

#include "../gis/gis.h"
#include "../models/model.h"
#include "base/base.h"
#include "cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *what;
} cmds[] = {
    { "info", cmd_info, "describe a weights file: architecture, parameters, dtypes, tensors" },
    { "features", cmd_features, "map a mosaic to a feature raster (+ PCA preview, tile index)" },
    { "chm", cmd_chm, "canopy height map (metres) of a mosaic with Meta's CHMv2 head" },
    { "similarity", cmd_similarity, "similarity map of a mosaic to a point or polygons (cosine of "
      "features)" },
    { "change", cmd_change, "where two dates differ: cosine distance of their features, "
      "ranked tiles" },
    { "seg", cmd_seg, "segmentation: train a head on labels, apply it, or cluster (seg --help)" },
    { "run", cmd_run, "run, resume or update a mapping described by an INI file (cron)" },
    { "status", cmd_status, "what a run folder holds, how far it got and what is left" },
    { "search", cmd_search, "the tiles of runs most like a tile, a point or a vector" },
    { "finalize", cmd_finalize, "build a run's final rasters from its done chunks" },
    { "merge", cmd_merge, "build a sharded run's outputs from its shards' folders" },
    { "forward", cmd_forward, "run the backbone on one image or tensor and write .npy outputs" },
};

static void usage(FILE *f)
{
    fprintf(f, "dinomap %s — map satellite imagery with DINOv3 foundation models\n\n"
               "usage: dinomap COMMAND [options]    (dinomap COMMAND --help for its options)\n\n"
               "commands:\n", DINOMAP_VERSION);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].what);
    fprintf(f, "  %-10s %s\n", "version", "print the version");
    fprintf(f, "\nWeights are never downloaded: pass a local .pth (Meta) or .safetensors (Hugging "
               "Face) file.\n");
}

/* The command line's log sink: "dinomap: message" on stderr, every line of it. */
static void log_to_stderr(void *ctx, int level, const char *msg)
{
    (void)ctx;
    dm_say_lines(level == DM_LOG_WARN ? "warning: " : "", msg);
}

int main(int argc, char **argv)
{
    dm_blas_pick_core(argv);
    dm_memory_policy();
    dm_log_set_sink(log_to_stderr, NULL);
    dm_gis_log_messages(); /* GDAL's "ERROR 1: ..." lines become dinomap's */
    dm_gis_safe_defaults();
    /* GDAL's block cache defaults to 5% of RAM; a fixed size keeps a run's memory bounded and
     * predictable (GDAL_CACHEMAX still wins when set) */
    if (!getenv("GDAL_CACHEMAX"))
        GDALSetCacheMax64((GIntBig)256 << 20);
    if (argc < 2) {
        dm_say("usage: dinomap COMMAND [options] (dinomap --help lists the commands)");
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "-h") || !strcmp(c, "--help") || !strcmp(c, "help")) {
        if (argc > 2 && strcmp(c, "help") == 0) {
            char *sub[] = { argv[2], "--help", NULL };
            for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
                if (!strcmp(cmds[i].name, argv[2]))
                    return cmds[i].fn(2, sub);
        }
        usage(stdout);
        return 0;
    }
    if (!strcmp(c, "version") || !strcmp(c, "--version")) {
        printf("dinomap %s\n", DINOMAP_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(cmds[i].name, c))
            return cmds[i].fn(argc - 1, argv + 1);
    const char *names[sizeof cmds / sizeof cmds[0] + 2];
    size_t n = 0;
    for (; n < sizeof cmds / sizeof cmds[0]; n++)
        names[n] = cmds[n].name;
    names[n++] = "version";
    names[n] = NULL;
    const char *s = dm_cli_suggest(c, names);
    if (s)
        dm_say("unknown command '%s' (did you mean %s? dinomap --help lists the commands)", c, s);
    else
        dm_say("unknown command '%s' (dinomap --help lists the commands)", c);
    return 2;
}

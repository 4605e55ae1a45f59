/* src/cmd_merge.c — `dinomap merge OUTDIR SHARD_DIR...`: a sharded run's outputs from its
 * shards' folders (tiling/merge.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap merge OUTDIR SHARD_DIR... [options]\n\n"
        "Builds the outputs of a run mapped in shards (--shard I/N, or a SLURM, Kubernetes or\n"
        "AWS Batch array: see docs/SHARDS.md) from the shards' folders: one tile index\n"
        "(OUTDIR/tiles.gpkg, with every shard's tiles and embeddings), the shards' chunk files\n"
        "(OUTDIR/chunks/, hard links where the filesystem allows, else copies) and the final\n"
        "rasters, the same pixels as a one-machine run. No model needed.\n\n"
        "Refused, with nothing written: shards of different configurations or inputs, two\n"
        "shards holding the same chunks (the same shard twice), a shard still running, and\n"
        "missing chunks (a shard not given, or not finished: the chunk ranges are listed).\n"
        "Run it again when late shards arrive: it rebuilds OUTDIR from the shards given; with\n"
        "the same shards and up-to-date outputs it has nothing to do.\n\n"
        "options:\n"
        "  --allow-missing         build without the missing chunks (their area is nodata)\n"
        "  --overwrite             replace what OUTDIR holds (a run, or another run's merge)\n"
        "  --max-cog-gib GIB       outputs larger than this are block COGs + a VRT (default: "
        "the run's)\n"
        "  -of FORMAT              COG or Zarr (features.zarr too), as for dinomap features\n"
        "  -co NAME=VALUE          a creation option of the -of format's GDAL driver, repeatable\n"
        "  --config KEY VALUE      a GDAL configuration option, repeatable\n"
        "  --threads N             threads building the outputs (default: all cores)\n"
        "  --drop-chunks           delete OUTDIR/chunks/ afterwards (the shards keep theirs)\n"
        "  --progress MODE         auto, bar, json, none (default: auto)\n"
        "  -q, --quiet             only warnings and errors\n"
        "  -h, --help              this help\n\n"
        "Example (SLURM): sbatch --array=1-8 map.sh, then\n"
        "  sbatch --dependency=afterok:JOBID --wrap 'dinomap merge out/all out/shard-*'\n\n"
        "Exit status: 0 done (or nothing to do), 1 failure (missing or mismatched shards...),\n"
        "2 usage, 3 OUTDIR or a shard in use, 4 interrupted.\n");
}

int cmd_merge(int argc, char **argv)
{
    dm_fin_cli f;
    int code = dm_fin_cli_parse(&f, argc, argv, "merge", 1, help);
    if (code < 0 && f.c.argc - optind < 2) {
        dm_say("merge: expected OUTDIR and at least one SHARD_DIR (dinomap merge --help)");
        code = DM_EXIT_USAGE;
    }
    if (code < 0) {
        dm_merge_opts mo = { .outdir = f.c.argv[optind],
                             .shards = (const char *const *)f.c.argv + optind + 1,
                             .nshards = f.c.argc - optind - 1, .allow_missing = f.allow_missing,
                             .overwrite = f.overwrite, .fin = f.fo };
        dm_merge_result r;
        dm_err err = { 0 };
        int rc = dm_merge(&mo, &r, &err);
        if (f.ev.p.started)
            dm_progress_end(&f.ev.p), f.ev.p.started = 0;
        if (rc)
            dm_say("%s", err.msg);
        else if (r.run.nothing_to_do)
            dm_info("%s is up to date with these %d shards: nothing to do", mo.outdir,
                    mo.nshards);
        else
            dm_info("merged %d shard%s (%lld of %lld chunks; chunk files: %lld linked, %lld "
                    "copied, %lld in place) in %.1f s: %s", mo.nshards,
                    mo.nshards == 1 ? "" : "s", (long long)(r.chunks - r.chunks_missing),
                    (long long)r.chunks, (long long)r.linked, (long long)r.copied,
                    (long long)r.kept, r.run.seconds, r.run.outputs);
        code = dm_exit_code(rc);
    }
    dm_fin_cli_free(&f);
    return code;
}

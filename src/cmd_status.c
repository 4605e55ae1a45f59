/* src/cmd_status.c — `dinomap status OUTDIR`: what a run is, how far it got, what is left. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap status OUTDIR [--json]\n\n"
        "Prints a run folder's products, configuration, tile and chunk states, what is left, its\n"
        "invocations and whether the final rasters are up to date. Reads only; works while a run\n"
        "is going on.\n\n"
        "options:\n"
        "  --json      the same as one JSON object\n"
        "  -h, --help  this help\n");
}

static double numf(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b);
    return cJSON_IsNumber(x) ? x->valuedouble : 0;
}

static const char *strf(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = b ? cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, a), b)
                       : cJSON_GetObjectItemCaseSensitive(o, a);
    return cJSON_IsString(x) ? x->valuestring : "";
}

int cmd_status(int argc, char **argv)
{
    static const struct option opts[] = { { "json", no_argument, 0, 'j' },
                                          { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    int ch, json = 0;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            return 0;
        }
        if (ch == 'j') {
            json = 1;
            continue;
        }
        return dm_cli_bad_option("status", ch, argv[optind - 1], optopt, opts);
    }
    if (optind != argc - 1) {
        dm_say("status: expected one OUTDIR (dinomap status --help)");
        return DM_EXIT_USAGE;
    }
    dm_err err = { 0 };
    char *s = NULL;
    if (dm_run_status(argv[optind], &s, &err)) {
        dm_say("%s", err.msg);
        return DM_EXIT_FAIL;
    }
    if (json) {
        printf("%s\n", s);
        free(s);
        return 0;
    }
    cJSON *j = cJSON_Parse(s);
    free(s);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(j, "config");
    char prods[64] = "";
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(cfg, "products"))
    {
        if (cJSON_IsString(it))
            snprintf(prods + strlen(prods), sizeof prods - strlen(prods), "%s%s",
                     prods[0] ? ", " : "", it->valuestring);
    }
    printf("run folder:  %s\n", argv[optind]);
    printf("products:    %s\n", prods);
    printf("model:       %s, weights sha256 %.16s…\n", strf(cfg, "arch", NULL),
           strf(cfg, "weights_sha256", NULL));
    printf("grid:        %s; tile %g + halo %g px, chunks of %g×%g tiles\n",
           strf(cfg, "mosaic_grid", NULL), numf(j, "config", "tile"), numf(j, "config", "halo"),
           numf(j, "config", "chunk"), numf(j, "config", "chunk"));
    printf("tiles:       %g done, %g empty, %g outside the AOI, %g pending\n",
           numf(j, "tiles", "done"), numf(j, "tiles", "empty"), numf(j, "tiles", "outside_aoi"),
           numf(j, "tiles", "pending"));
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shard");
    if (sh) /* a shard's own chunks: the others are the other shards' */
        printf("shard:       %g/%g (%s): %g of its %g chunks left%s\n", numf(j, "shard", "index"),
               numf(j, "shard", "count"), strf(j, "shard", "source"),
               numf(j, "shard", "chunks_left"), numf(j, "shard", "chunks_total"),
               numf(j, "shard", "chunks_left") ? ": run the same command again to go on"
                                                : " (done: dinomap merge OUTDIR SHARD_DIR...)");
    double left = sh ? 0 : numf(j, "chunks", "left");
    printf("chunks:      %g of %g done%s\n", numf(j, "chunks", "done"), numf(j, "chunks", "total"),
           sh ? " (the others are the other shards')" : left ? "" : " (complete)");
    if (left)
        printf("left:        %g chunks (%g tiles): run the same command again to go on\n", left,
               numf(j, "tiles", "pending"));
    int up = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "outputs_up_to_date"));
    printf("outputs:     %s%s\n",
           strf(j, "outputs", NULL)[0] ? strf(j, "outputs", NULL) : "(none yet)",
           up                            ? " (up to date)"
           : strf(j, "outputs", NULL)[0] ? " (out of date: dinomap finalize)"
                                         : "");
    printf("invocations: %g, the last started %s%s%s\n", numf(j, "runs", "invocations"),
           strf(j, "runs", "last_started"), strf(j, "runs", "last_status")[0] ? ": " : " (no end "
           "recorded: running, or killed)", strf(j, "runs", "last_status"));
    cJSON_Delete(j);
    return 0;
}

/* src/cmd_run.c — `dinomap run CONFIG.ini [--option VALUE ...]`: a mapping run described by an INI
 * file (for cron): the keys are the long option names of the mapping commands, plus `products`
 * and `input`; options on the command line come after the file and win. */
#include <getopt.h> /* optind */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap run CONFIG.ini [--option VALUE ...]\n\n"
        "Runs (or resumes, or updates) the mapping run CONFIG.ini describes: the same run engine\n"
        "as `dinomap features` and `dinomap chm`, for cron. The file holds KEY = VALUE lines (at\n"
        "the top or under [run]; # and ; start comments); the keys are the long option names\n"
        "below. `input` may repeat (or continue on indented lines) and take globs; relative\n"
        "paths are relative to the file's folder. Options given after CONFIG override the file.\n\n"
        "  products = features,chm\n"
        "  model    = /weights/dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth\n"
        "  head     = /weights/dinov3_vitl16_chmv2_dpt_head-3703d643.pth\n"
        "  input    = /data/ortho/*.tif\n"
        "  output   = /data/maps/region\n\n"
        "A crontab line (a locked folder exits at once with 3; nothing to do exits 0 silently):\n"
        "  15 2 * * *  dinomap run /etc/dinomap/region.ini -q --log /var/log/dinomap.jsonl\n\n"
        "keys and options:\n");
    dm_cli_help_options(f, DM_CMD_RUN);
    fprintf(f, "\nExit status: 0 done or nothing to do, 1 failure, 2 usage or a bad config file, "
               "3 OUTDIR in use\nby another run, 4 interrupted.\n");
}

int cmd_run(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        help(stdout);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        dm_say("run: the first argument is the config file (dinomap run --help)");
        return DM_EXIT_USAGE;
    }
    dm_cli c;
    dm_cli_init(&c, "run", DM_CMD_RUN);
    int code = dm_cli_read_ini(&c, argv[1]) ? DM_EXIT_USAGE : -1;
    if (code < 0)
        code = dm_cli_parse(&c, argc, argv, 2, help);
    if (code < 0 && optind < c.argc) {
        dm_say("%s: inputs go in the config file (input = ...)", c.argv[optind]);
        code = DM_EXIT_USAGE;
    }
    return dm_cli_conclude(&c, code);
}

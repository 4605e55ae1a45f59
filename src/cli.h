/* src/cli.h — what the subcommands share: their entry points and small argument helpers. */
#ifndef DM_CLI_H
#define DM_CLI_H

#include "../gis/mosaic.h"
#include "base/base.h"

#define DINOMAP_VERSION "0.1.0"

/* getopt codes of the options every mapping command takes (see DM_MOSAIC_LONGOPTS) */
enum { DM_OPT_BANDS = 400, DM_OPT_SCALE, DM_OPT_STRETCH, DM_OPT_GSD, DM_OPT_CRS, DM_OPT_UNGEO };
#define DM_MOSAIC_LONGOPTS                                                                         \
    { "bands", required_argument, 0, DM_OPT_BANDS },                                               \
    { "scale", required_argument, 0, DM_OPT_SCALE },                                               \
    { "stretch", required_argument, 0, DM_OPT_STRETCH },                                           \
    { "gsd", required_argument, 0, DM_OPT_GSD }, { "crs", required_argument, 0, DM_OPT_CRS },     \
    { "allow-ungeoreferenced", no_argument, 0, DM_OPT_UNGEO }
/* getopt codes of the run options every mapping command takes (see DM_RUN_LONGOPTS) */
enum { DM_OPT_THREADS = 420, DM_OPT_DEVICE, DM_OPT_ARCH, DM_OPT_NORM, DM_OPT_PROGRESS };
#define DM_RUN_LONGOPTS                                                                            \
    { "threads", required_argument, 0, DM_OPT_THREADS },                                           \
    { "device", required_argument, 0, DM_OPT_DEVICE },                                             \
    { "arch", required_argument, 0, DM_OPT_ARCH }, { "norm", required_argument, 0, DM_OPT_NORM }, \
    { "progress", required_argument, 0, DM_OPT_PROGRESS }
/* Where the run options go (fields of the command's options struct). */
typedef struct dm_run_fields {
    int *threads;
    const char **device, **arch, **norm;
    int *progress;
} dm_run_fields;
/* Handles one run option: 1 handled, 0 not a run option, -1 bad value (message printed). */
int dm_cli_run_opt(int ch, const char *arg, const dm_run_fields *f, const char *cmd);
/* A mosaic or run option: 1 handled, 0 neither (the caller prints its help), -1 bad value
 * (message printed). */
int dm_cli_shared_opt(int ch, const char *arg, dm_mosaic_opts *m, const dm_run_fields *rf,
                      const char *cmd);
/* Handles one mosaic option: 1 handled, 0 not a mosaic option, -1 bad value (message printed). */
int dm_cli_mosaic_opt(int ch, const char *arg, dm_mosaic_opts *m, const char *cmd);
/* "auto", "bar", "json", "none" → DM_PROGRESS_*; -1 if unknown. */
int dm_parse_progress(const char *s);
/* OUTDIR for a mapping run: created if missing (*made = 1), else it must be a writable directory
 * holding none of `products` (NULL-terminated file names). */
int dm_prepare_outdir(const char *dir, const char *const *products, int *made, dm_err *err);

int cmd_info(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_features(int argc, char **argv);
int cmd_chm(int argc, char **argv);

/* Parses "0,2,5" into out (at most max values); returns the count or -1 on a bad list. */
int dm_parse_int_list(const char *s, int *out, int max);
/* Parses "A,B" into two numbers; 0 or -1. */
int dm_parse_pair(const char *s, double *a, double *b);
/* Parses a positive int option value; returns -1 if invalid. */
int dm_parse_pos_int(const char *s);

#endif

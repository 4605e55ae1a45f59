/* src/cli.h — the face: what the subcommands share. The mapping commands (features, chm, run)
 * speak one vocabulary of options (src/options.c): the same names are long options on the command
 * line and keys in a `dinomap run` INI file, parsed by the same code. */
#ifndef DM_CLI_H
#define DM_CLI_H

#include <stdio.h>

#include "../tiling/tiling.h"
#include "base/base.h"
#include "progress.h"

/* Exit codes of every command. */
enum { DM_EXIT_OK = 0, DM_EXIT_FAIL = 1, DM_EXIT_USAGE = 2, DM_EXIT_LOCKED = 3,
       DM_EXIT_INTERRUPTED = 4 };
/* The exit code for a DM_E* result. */
int dm_exit_code(int rc);

enum { DM_PROGRESS_AUTO, DM_PROGRESS_BAR, DM_PROGRESS_JSON, DM_PROGRESS_NONE };

/* Which commands take an option. */
enum { DM_CMD_FEATURES = 1, DM_CMD_CHM = 2, DM_CMD_RUN = 4, DM_CMD_FINALIZE = 8,
       DM_CMD_SIMILARITY = 16, DM_CMD_SEG_APPLY = 32, DM_CMD_SEG_CLUSTER = 64 };
#define DM_CMD_MAP                                                                                 \
    (DM_CMD_FEATURES | DM_CMD_CHM | DM_CMD_RUN | DM_CMD_SEG_APPLY | DM_CMD_SEG_CLUSTER)

/* A mapping command being parsed: the engine's options and the face's own. */
typedef struct dm_cli {
    const char *cmd;          /* "features", "chm", "similarity", "run", "seg apply", ... */
    unsigned cmdmask;         /* DM_CMD_* of this command */
    dm_run_opts o;
    int progress, progress_set, quiet;
    const char *log;
    int tile_set, halo_set, overlap, overlap_set, products_set;
    int shard_set, shard_count;  /* --shard given; --shard-count */
    uint64_t given;           /* the options set, by their bit in options.c's table */
    const char *features;     /* similarity --features PATH: no run */
    int in_file, query_in_file; /* reading an INI file; the similarity query came from one */
    char **inputs;            /* owned */
    int ninputs, capinputs;
    char **owned;             /* strings kept for o's pointers */
    int nowned, capowned;
    char **co;                /* -co NAME=VALUE, NULL-terminated (o.out.co) */
    int nco, capco;
    char **config;            /* --config KEY=VALUE, set in dm_cli_finish */
    int nconfig, capconfig;
    char **argv;              /* what getopt_long read (dm_cli_gdal_argv); operands from optind */
    int argc;
} dm_cli;

void dm_cli_init(dm_cli *c, const char *cmd, unsigned cmdmask);
void dm_cli_free(dm_cli *c);
/* Keeps a copy of s for the run's lifetime; NULL when out of memory. */
const char *dm_cli_keep(dm_cli *c, const char *s);
int dm_cli_add_input(dm_cli *c, const char *path);

/* Sets option `name` (a long option name, or an INI key) to `value` (NULL for flags given on the
 * command line). 0 done; -1 unknown option (for this command); -2 bad value; the message in why. */
int dm_cli_set(dm_cli *c, const char *name, const char *value, char *why, size_t n);
/* The getopt_long table of this command's options (static storage; codes index the table) and
 * the handling of one parsed code: 0, or -2 with the message printed. */
const void *dm_cli_longopts(unsigned cmdmask);
int dm_cli_getopt(dm_cli *c, int code, const char *arg);
/* Prints the options this command takes, one per line with its default. */
void dm_cli_help_options(FILE *f, unsigned cmdmask);
/* Parses argv[first..] with getopt_long (this command's options), GDAL's spellings first made
 * getopt_long's (dm_cli_gdal_argv, into c->argv); the operands are c->argv[optind..]. -1 to go
 * on, else the exit code (0 after --help, 2 for a bad option: said). */
int dm_cli_parse(dm_cli *c, int argc, char **argv, int first, void (*help)(FILE *));
/* `dinomap features` / `dinomap chm`: options, then INPUT...; the exit code. */
int dm_cli_main(int argc, char **argv, const char *cmd, unsigned mask, void (*help)(FILE *));
/* The end of a mapping command: with code -1 (parsed fine) finishes the options and maps; frees
 * c; the exit code. */
int dm_cli_conclude(dm_cli *c, int code);
/* Sets the --config options c holds, for the rest of the process: before anything is opened
 * (GDAL reads some once: PROJ's, the HTTP ones). 0, or -2 with the message said. */
int dm_cli_apply_config(dm_cli *c);
/* similarity --features maps no mosaic: the first option given that it does not use (--tile...),
 * or NULL. */
const char *dm_cli_unused_with_features(const dm_cli *c);
/* After parsing: product-dependent defaults, required options, --config set, then dm_run_check
 * (--crs, -of, -co...); 0 or -2 with a message printed. */
int dm_cli_finish(dm_cli *c);
/* Runs the mapping (dinomap features/chm/run after parsing): progress, --log, signals, the
 * summary; returns the exit code. */
int dm_cli_map(dm_cli *c);
/* Reads a `dinomap run` INI file into c (keys = the long option names); 0, or -2 with the file,
 * line, key and problem printed. Relative paths are taken from the file's folder. */
int dm_cli_read_ini(dm_cli *c, const char *path);

/* Installs SIGINT/SIGTERM handlers setting the flag returned (a second signal ends the process
 * at once). */
volatile sig_atomic_t *dm_cli_signals(void);
/* The --progress renderer and --log writer behind dm_run_events: dm_cli_events_open fills ev (mode
 * DM_PROGRESS_*, log file or NULL) and returns the events to hand to the engine; close ends the bar
 * and the log. */
typedef struct dm_cli_events {
    int mode;
    dm_progress p;
    FILE *log;
} dm_cli_events;
dm_run_events dm_cli_events_open(dm_cli_events *ev, int mode, FILE *log);
void dm_cli_events_close(dm_cli_events *ev);
/* What every run command does before the engine: -q, --log, progress, signals, the testing
 * fault; 0, or the exit code (an unwritable --log, said). Close ev with dm_cli_events_close. */
int dm_cli_run_begin(dm_cli *c, dm_cli_events *ev);

/* `dinomap finalize` and `dinomap merge` (merge 1: --allow-missing, --overwrite, --threads too):
 * their options parsed, -q, --config set, the progress and signals set up (in fo). -1 to go on
 * (the operands are c.argv[optind..c.argc)), else the exit code (help printed, or the problem
 * said). Free with dm_fin_cli_free in either case. */
typedef struct dm_fin_cli {
    dm_cli c;                  /* -of, -co, --config */
    dm_finalize_opts fo;
    dm_cli_events ev;
    int mode, quiet, allow_missing, overwrite;
} dm_fin_cli;
int dm_fin_cli_parse(dm_fin_cli *f, int argc, char **argv, const char *cmd, int merge,
                     void (*help)(FILE *));
void dm_fin_cli_free(dm_fin_cli *f);

/* src/say.c: stderr. Each line of msg as "dinomap: PREFIXline" (prefix "" or "warning: "). */
void dm_say_lines(const char *prefix, const char *msg);
/* A message, each of its lines prefixed "dinomap: ". */
void dm_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The name of names (NULL-terminated) nearest to word when near enough to be a typo; or NULL. */
const char *dm_cli_suggest(const char *word, const char *const *names);
/* Says what is wrong with the option getopt_long could not take (ch '?' unknown or ambiguous,
 * ':' without its value; token argv[optind - 1], opt getopt's optopt; lo the command's table)
 * in one line, with a "did you mean" hint; returns DM_EXIT_USAGE. */
struct option;
int dm_cli_bad_option(const char *cmd, int ch, const char *token, int opt,
                      const struct option *lo);
/* argv with GDAL's spellings made getopt_long's from argv[first] on (up to "--"): -co and -of
 * become --co and --of, --config KEY VALUE (two arguments) and --config KEY=VALUE become
 * --config=KEY=VALUE. One malloc'd block (free it), NULL-terminated, *nargc entries; NULL with
 * the message said when --config lacks its value. */
char **dm_cli_gdal_argv(int argc, char **argv, int first, int *nargc);

int cmd_info(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_features(int argc, char **argv);
int cmd_chm(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_similarity(int argc, char **argv);
int cmd_change(int argc, char **argv);
int cmd_finalize(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_search(int argc, char **argv);
/* `dinomap seg apply|cluster|train`; train is cmd_seg_train (src/cmd_seg_train.c, argv[0] is
 * "train"). */
int cmd_seg(int argc, char **argv);
int cmd_seg_train(int argc, char **argv);

/* Parses "0,2,5" into out (at most max values); returns the count or -1 on a bad list. */
int dm_parse_int_list(const char *s, int *out, int max);
/* Parses "A,B" into two numbers; 0 or -1. */
int dm_parse_pair(const char *s, double *a, double *b);
/* Parses a positive int option value; returns -1 if invalid. */
int dm_parse_pos_int(const char *s);
/* "auto", "bar", "json", "none" → DM_PROGRESS_*; -1 if unknown. */
int dm_parse_progress(const char *s);

#endif

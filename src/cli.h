/* src/cli.h — what the subcommands share: their entry points and small argument helpers. */
#ifndef DM_CLI_H
#define DM_CLI_H

#define DINOMAP_VERSION "0.1.0"

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
/* Creates a directory and its parents (like mkdir -p); 0 or -1 with errno. */
int dm_mkdir_p(const char *path);

#endif

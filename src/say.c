/* src/say.c — how the command line speaks on stderr: every line prefixed "dinomap: " (messages
 * that span lines too), one line for an option it does not know with a "did you mean" hint, and
 * GDAL's own spellings (-co, -of, --config KEY VALUE) turned into what getopt_long reads. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"

void dm_say_lines(const char *prefix, const char *msg)
{
    for (const char *s = msg; *s;) {
        int len = (int)strcspn(s, "\n");
        fprintf(stderr, "dinomap: %s%.*s\n", prefix, len, s);
        s += len;
        s += *s == '\n';
    }
    fflush(stderr);
}

void dm_say(const char *fmt, ...)
{
    char m[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    dm_say_lines("", m);
}

/* --- unknown options ------------------------------------------------------------------------- */

/* The optimal string alignment distance (edits, a swap of neighbours counting one), ignoring
 * case; words longer than 63 characters are far from every option. */
static int distance(const char *a, const char *b)
{
    int n = (int)strlen(a), m = (int)strlen(b), d[64][64];
    if (n > 63 || m > 63)
        return 99;
    for (int i = 0; i <= n; i++)
        d[i][0] = i;
    for (int j = 0; j <= m; j++)
        d[0][j] = j;
    for (int i = 1; i <= n; i++)
        for (int j = 1; j <= m; j++) {
            int c = strncasecmp(a + i - 1, b + j - 1, 1) != 0;
            int v = d[i - 1][j] + 1;
            v = d[i][j - 1] + 1 < v ? d[i][j - 1] + 1 : v;
            v = d[i - 1][j - 1] + c < v ? d[i - 1][j - 1] + c : v;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[n][m];
}

const char *dm_cli_suggest(const char *word, const char *const *names)
{
    int best = 99, limit = strlen(word) < 6 ? 1 : 2;
    const char *pick = NULL;
    for (int i = 0; names[i]; i++) {
        int d = distance(word, names[i]);
        if (d < best)
            best = d, pick = names[i];
    }
    return best <= limit ? pick : NULL;
}

/* How an option is written: GDAL's -co and -of take one dash, the others two. */
static const char *dashes(const char *name)
{
    return !strcmp(name, "co") || !strcmp(name, "of") ? "-" : "--";
}

int dm_cli_bad_option(const char *cmd, int ch, const char *token, int opt,
                      const struct option *lo)
{
    const char *names[128];
    int n = 0;
    for (int i = 0; lo[i].name && n < 127; i++)
        names[n++] = lo[i].name;
    names[n] = NULL;
    char what[200], hint[300] = "";
    if (opt > 0 && opt < 128 && (!token || strncmp(token, "--", 2)))
        snprintf(what, sizeof what, "-%c", opt); /* a short option, maybe inside -qx */
    else
        snprintf(what, sizeof what, "%.*s", (int)strcspn(token, "="), token);
    if (!strcmp(what, "--co") || !strcmp(what, "--of"))
        memmove(what, what + 1, strlen(what)); /* as written: -co, -of */
    const char *word = what + strspn(what, "-");
    if (ch == ':') {
        dm_say("%s: needs a value (dinomap %s --help lists the options)", what, cmd);
        return DM_EXIT_USAGE;
    }
    /* getopt_long takes unique abbreviations: a word that begins two names is ambiguous */
    int np = 0;
    size_t wl = strlen(word), o = 0;
    for (int i = 0; i < n && wl > 0 && what[1] == '-'; i++)
        if (!strncmp(names[i], word, wl) && o < sizeof hint - 40)
            o += (size_t)snprintf(hint + o, sizeof hint - o, "%s%s%s", np++ ? ", " : "",
                                  dashes(names[i]), names[i]);
    if (np > 1) {
        dm_say("%s: ambiguous (%s)", what, hint);
        return DM_EXIT_USAGE;
    }
    const char *s = dm_cli_suggest(word, names);
    if (s)
        dm_say("%s: unknown option (did you mean %s%s? dinomap %s --help lists the options)",
               what, dashes(s), s, cmd);
    else
        dm_say("%s: unknown option (dinomap %s --help lists the options)", what, cmd);
    return DM_EXIT_USAGE;
}

/* --- GDAL's spellings ------------------------------------------------------------------------ */

char **dm_cli_gdal_argv(int argc, char **argv, int first, int *nargc)
{
    /* one block: the pointers, then the joined --config=KEY=VALUE strings */
    size_t extra = 0;
    for (int i = first; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc) {
                dm_say("--config: needs KEY VALUE, e.g. --config GDAL_CACHEMAX 512");
                return NULL;
            }
            int joined = strchr(argv[i + 1], '=') != NULL; /* --config KEY=VALUE: one argument */
            if (!joined && i + 2 >= argc) {
                dm_say("--config %s: needs a value (--config KEY VALUE)", argv[i + 1]);
                return NULL;
            }
            extra += strlen(argv[i + 1]) + (joined ? 0 : strlen(argv[i + 2])) + 12;
            i += joined ? 1 : 2;
        }
    char **v = malloc(sizeof *v * (size_t)(argc + 1) + extra);
    if (!v) {
        dm_say("out of memory");
        return NULL;
    }
    char *store = (char *)(v + argc + 1);
    int k = 0, i = 0, ended = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (i < first || ended) {
            v[k++] = argv[i];
            continue;
        }
        ended = !strcmp(a, "--");
        if (!strcmp(a, "-co") || !strcmp(a, "-of")) {
            v[k++] = !strcmp(a, "-co") ? "--co" : "--of";
        } else if (!strcmp(a, "--config")) {
            int joined = strchr(argv[i + 1], '=') != NULL;
            int len = sprintf(store, "--config=%s%s%s", argv[i + 1], joined ? "" : "=",
                              joined ? "" : argv[i + 2]);
            v[k++] = store;
            store += len + 1;
            i += joined ? 1 : 2;
        } else {
            v[k++] = argv[i];
        }
    }
    v[k] = NULL;
    *nargc = k;
    return v;
}

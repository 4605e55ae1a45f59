/* src/run_cli.c — what the mapping commands do once their options are parsed: progress on
 * stderr, JSON lines to --log, SIGINT/SIGTERM, the summary, exit codes; and reading a
 * `dinomap run` INI file (inih) through the same option parser as the command line. */
#define _GNU_SOURCE /* glob's GLOB_BRACE, GLOB_TILDE */
#include <errno.h>
#include <cjson/cJSON.h>
#include <glob.h>
#include <ini.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

int dm_exit_code(int rc)
{
    switch (rc) {
    case 0: return DM_EXIT_OK;
    case DM_ELOCKED: return DM_EXIT_LOCKED;
    case DM_EINTERRUPTED: return DM_EXIT_INTERRUPTED;
    default: return DM_EXIT_FAIL;
    }
}

/* --- signals: the flag is the face's, the engine polls it ------------------------------------- */

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    if (stop_flag) { /* a second signal: stop now */
        signal(sig, SIG_DFL);
        raise(sig);
    }
    stop_flag = 1;
}

volatile sig_atomic_t *dm_cli_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return &stop_flag;
}

/* --- progress and --log ---------------------------------------------------------------------- */

static void on_progress(void *ctx, const char *stage, int64_t done, int64_t total)
{
    dm_cli_events *e = ctx;
    if (e->mode != DM_PROGRESS_NONE)
        dm_progress_update(&e->p, e->mode, stage, done, total);
}

static void on_event(void *ctx, const char *json)
{
    dm_cli_events *e = ctx;
    if (e->log) {
        fprintf(e->log, "%s\n", json);
        fflush(e->log);
    }
}

static void log_line(dm_cli_events *e, const char *type, int code, const char *msg,
                     const dm_run_result *r)
{
    if (!e->log)
        return;
    char ts[32];
    time_t t = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "time", ts);
    cJSON_AddStringToObject(j, "event", type);
    cJSON_AddNumberToObject(j, "exit", code);
    if (msg)
        cJSON_AddStringToObject(j, "message", msg);
    if (r) {
        cJSON_AddBoolToObject(j, "nothing_to_do", r->nothing_to_do);
        cJSON_AddNumberToObject(j, "tiles_run", (double)r->tiles_run);
        cJSON_AddNumberToObject(j, "chunks_run", (double)r->chunks_run);
        cJSON_AddNumberToObject(j, "chunks_left", (double)r->chunks_left);
        cJSON_AddNumberToObject(j, "seconds", r->seconds);
        cJSON_AddStringToObject(j, "outputs", r->outputs);
    }
    char *s = cJSON_PrintUnformatted(j);
    if (s)
        fprintf(e->log, "%s\n", s);
    fflush(e->log);
    free(s);
    cJSON_Delete(j);
}

dm_run_events dm_cli_events_open(dm_cli_events *ev, int mode, FILE *log)
{
    memset(ev, 0, sizeof *ev);
    ev->mode = mode;
    ev->log = log;
    return (dm_run_events){ ev, on_progress, on_event };
}

void dm_cli_events_close(dm_cli_events *ev)
{
    if (ev->p.started)
        dm_progress_end(&ev->p);
    if (ev->log)
        fclose(ev->log);
    ev->log = NULL;
}

int dm_cli_run_begin(dm_cli *c, dm_cli_events *ev)
{
    if (c->quiet)
        dm_log_set_level(DM_LOG_WARN);
    FILE *log = c->log ? fopen(c->log, "a") : NULL;
    if (c->log && !log) {
        dm_say("--log %s: cannot open: %s", c->log, strerror(errno));
        return DM_EXIT_USAGE;
    }
    c->o.ev = dm_cli_events_open(ev, c->progress, log);
    c->o.cancel = dm_cli_signals();
    c->o.fault = getenv("DINOMAP_FAULT"); /* tests: kill the run at a chosen moment */
    return 0;
}

int dm_cli_map(dm_cli *c)
{
    dm_cli_events ev;
    int code = dm_cli_run_begin(c, &ev);
    if (code)
        return code;
    dm_err err = { 0 };
    dm_run_result r;
    int rc = dm_run(&c->o, &r, &err);
    if (ev.p.started) /* the bar's last line before the messages */
        dm_progress_end(&ev.p), ev.p.started = 0;
    code = dm_exit_code(rc);
    if (rc) {
        dm_say("%s", err.msg);
    } else if (r.shard_count) {
        if (!r.nothing_to_do || isatty(2))
            dm_info("shard %d/%d: its %lld chunk%s %s done (%lld tiles mapped in %.1f s); once "
                    "every shard is done, build the outputs: dinomap merge OUTDIR SHARD_DIR...",
                    r.shard_index + 1, r.shard_count, (long long)r.shard_chunks,
                    r.shard_chunks == 1 ? "" : "s", r.shard_chunks == 1 ? "is" : "are",
                    (long long)r.tiles_run, r.seconds);
    } else if (r.nothing_to_do) {
        /* cron: silence; a person at a terminal is told */
        if (isatty(2) && !c->quiet)
            fprintf(stderr, "dinomap: %s is up to date (%lld chunks done): nothing to do\n",
                    c->o.outdir, (long long)r.chunks_total);
    } else {
        dm_info("%lld tiles mapped, %lld empty in %.1f s (model %.1f s): %s",
                (long long)r.tiles_run, (long long)r.tiles_empty, r.seconds, r.seconds_model,
                r.outputs);
    }
    log_line(&ev, "summary", code, rc ? err.msg : NULL, rc ? NULL : &r);
    dm_cli_events_close(&ev);
    return code;
}

/* --- INI files ------------------------------------------------------------------------------- */

typedef struct ini_ctx {
    dm_cli *c;
    const char *file;
    char dir[4096];
    FILE *f;
    int line, err_line;
    char err[900];
} ini_ctx;

/* Keys whose values are paths, taken relative to the config file's folder. */
static int is_path_key(const char *k)
{
    static const char *keys[] = { "model", "head", "seg-head", "output", "aoi", "input", "log",
                                  "query-aoi",
                                  NULL };
    for (int i = 0; keys[i]; i++)
        if (!strcmp(k, keys[i]))
            return 1;
    return 0;
}

static void fail(ini_ctx *x, const char *fmt, const char *a, const char *b)
{
    if (x->err_line)
        return; /* the first problem is the one reported */
    x->err_line = x->line;
    snprintf(x->err, sizeof x->err, fmt, a, b);
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx *x = user;
    if (section[0] && strcmp(section, "run")) {
        fail(x, "unknown section [%s]%s (keys go at the top or under [run])", section, "");
        return 0;
    }
    char path[8192];
    const char *v = value;
    if (is_path_key(name) && v[0] && v[0] != '/' && strncmp(v, "/vsi", 4) && v[0] != '~') {
        snprintf(path, sizeof path, "%s/%s", x->dir, v);
        v = path;
    }
    char why[700];
    if (!strcmp(name, "input")) { /* a path or a glob: each match is an input */
        int globby = strpbrk(v, "*?[{") != NULL;
        if (!globby) {
            struct stat st;
            if (strncmp(v, "/vsi", 4) && stat(v, &st) != 0) {
                fail(x, "input = %s: %s", value, strerror(errno));
                return 0;
            }
            if (dm_cli_add_input(x->c, v)) {
                fail(x, "out of memory%s%s", "", "");
                return 0;
            }
            return 1;
        }
        glob_t g;
        int r = glob(v, GLOB_BRACE | GLOB_TILDE, NULL, &g);
        if (r == GLOB_NOMATCH || (r == 0 && g.gl_pathc == 0)) {
            fail(x, "input = %s: matches no file%s", value, "");
            globfree(&g);
            return 0;
        }
        for (size_t i = 0; r == 0 && i < g.gl_pathc; i++)
            if (dm_cli_add_input(x->c, g.gl_pathv[i]))
                r = -1;
        globfree(&g);
        if (r) {
            fail(x, "input = %s: cannot expand%s", value, "");
            return 0;
        }
        return 1;
    }
    if (!strcmp(name, "model") || !strcmp(name, "head") || !strcmp(name, "seg-head") ||
        !strcmp(name, "aoi") || !strcmp(name, "query-aoi")) {
        struct stat st;
        if (strncmp(v, "/vsi", 4) && stat(v, &st) != 0) {
            char m[600];
            snprintf(m, sizeof m, "%s = %s", name, value);
            fail(x, "%s: %s", m, strerror(errno));
            return 0;
        }
    }
    int r = dm_cli_set(x->c, name, v, why, sizeof why);
    if (r == -1) {
        const char *hint = strstr(why, " (did you mean"); /* dm_cli_set's hint */
        fail(x, "unknown key '%s'%s (the keys are the long option names of dinomap features, "
                "dinomap chm and dinomap seg, e.g. tile, halo, bands)", name, hint ? hint : "");
        return 0;
    }
    if (r) {
        char m[900];
        snprintf(m, sizeof m, "%s = %s: ", name, value);
        /* "--tile abc: expected..." → "tile = abc: expected..." */
        const char *w = strstr(why, ": ");
        fail(x, "%s%s", m, w ? w + 2 : why);
        return 0;
    }
    return 1;
}

/* Lines for inih, counted here so that errors name the right line, and checked for length
 * (Debian's inih cuts lines at 200 bytes). */
static char *reader(char *str, int num, void *stream)
{
    ini_ctx *x = stream;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, x->f);
    if (n < 0) {
        free(line);
        return NULL;
    }
    x->line++;
    size_t len = (size_t)n;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    if ((int)len > num - 2) {
        char l[32];
        snprintf(l, sizeof l, "%d", num - 2);
        fail(x, "the line is longer than %s characters%s: split a list over continuation lines "
                "(indented), or use a shorter path (a symbolic link)", l, "");
        len = (size_t)num - 2;
    }
    memcpy(str, line, len);
    str[len] = '\n';
    str[len + 1] = '\0';
    free(line);
    return str;
}

int dm_cli_read_ini(dm_cli *c, const char *path)
{
    ini_ctx x;
    memset(&x, 0, sizeof x);
    x.c = c;
    x.file = path;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    snprintf(x.dir, sizeof x.dir, "%s", dirname(tmp));
    if (!(x.f = fopen(path, "r"))) {
        dm_say("%s: cannot open: %s", path, strerror(errno));
        return -2;
    }
    c->in_file = 1;
    int r = ini_parse_stream(reader, &x, handler, &x);
    c->in_file = 0;
    fclose(x.f);
    if (x.err_line) {
        dm_say("%s:%d: %s", path, x.err_line, x.err);
        return -2;
    }
    if (r) {
        dm_say("%s:%d: not a KEY = VALUE line (or [run])", path, r > 0 ? r : 0);
        return -2;
    }
    return 0;
}

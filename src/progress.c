/* src/progress.c — see progress.h. */
#include "progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <string.h>

#include "cli.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void dm_progress_start(dm_progress *p, int mode, int64_t total, const char *what)
{
    if (mode == DM_PROGRESS_AUTO)
        mode = isatty(2) ? DM_PROGRESS_BAR : DM_PROGRESS_AUTO; /* AUTO off a tty: lines */
    p->mode = mode;
    p->total = total;
    p->done = 0;
    p->t0 = p->last = now();
    p->last_decile = 0;
    snprintf(p->what, sizeof p->what, "%s", what);
    p->started = 1;
}

static void show(dm_progress *p, int final)
{
    double el = now() - p->t0, rate = el > 0 ? (double)p->done / el : 0;
    double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    int pct = p->total ? (int)(100 * p->done / p->total) : 100;
    switch (p->mode) {
    case DM_PROGRESS_BAR: {
        char bar[41];
        int k = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
            bar[i] = i < k ? '#' : '.';
        bar[40] = '\0';
        fprintf(stderr, "\rdinomap: %s [%s] %3d%% %lld/%lld  %.2f/s  ETA %.0fs ", p->what, bar, pct,
                (long long)p->done, (long long)p->total, rate, eta);
        if (final)
            fputc('\n', stderr);
        break;
    }
    case DM_PROGRESS_JSON:
        fprintf(stderr, "{\"what\":\"%s\",\"done\":%lld,\"total\":%lld,\"percent\":%d,"
                        "\"per_second\":%.3f,\"eta_s\":%.1f,\"elapsed_s\":%.1f}\n",
                p->what, (long long)p->done, (long long)p->total, pct, rate, eta, el);
        break;
    case DM_PROGRESS_AUTO:
        fprintf(stderr, "dinomap: %s %d%% (%lld/%lld, %.2f/s, ETA %.0fs)\n", p->what, pct,
                (long long)p->done, (long long)p->total, rate, eta);
        break;
    default:
        break;
    }
    fflush(stderr);
}

void dm_progress_step(dm_progress *p, int64_t n)
{
    p->done += n;
    if (p->mode == DM_PROGRESS_NONE)
        return;
    int decile = p->total ? (int)(10 * p->done / p->total) : 10;
    double t = now();
    int due = p->mode == DM_PROGRESS_AUTO ? decile > p->last_decile
                                          : (t - p->last >= 0.5 || p->done == p->total);
    if (due) {
        p->last = t;
        p->last_decile = decile;
        show(p, 0);
    }
}

void dm_progress_end(dm_progress *p)
{
    if (p->mode == DM_PROGRESS_BAR)
        show(p, 1);
}

void dm_progress_update(dm_progress *p, int mode, const char *what, int64_t done, int64_t total)
{
    if (!p->started || strcmp(p->what, what) || total != p->total) {
        if (p->started)
            dm_progress_end(p);
        dm_progress_start(p, mode, total, what);
    }
    if (done > p->done)
        dm_progress_step(p, done - p->done);
}

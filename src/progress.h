/* src/progress.h — progress of long work on stderr: a bar on a terminal, a line per 10 % in logs
 * (cron), or one JSON object per line for programs. */
#ifndef DM_PROGRESS_H
#define DM_PROGRESS_H

#include <stdint.h>

typedef struct dm_progress {
    int mode;           /* DM_PROGRESS_* of cli.h */
    int64_t total, done;
    double t0, last;
    int last_decile;
    char what[32];
    int started;
} dm_progress;

void dm_progress_start(dm_progress *p, int mode, int64_t total, const char *what);
void dm_progress_step(dm_progress *p, int64_t n);
void dm_progress_end(dm_progress *p);
/* done of total in stage `what`: a new stage ends the previous one's bar and starts its own. */
void dm_progress_update(dm_progress *p, int mode, const char *what, int64_t done, int64_t total);

#endif

/* src/base/log.c — the log: a level and a sink the program installs (see base.h). */
#include <stdarg.h>
#include <stdio.h>

#include "base.h"

static int level = DM_LOG_INFO;
static dm_log_sink sink;
static void *sink_ctx;

void dm_log_set_sink(dm_log_sink s, void *ctx)
{
    sink = s;
    sink_ctx = ctx;
}

void dm_log_set_level(int l) { level = l; }
int dm_log_get_level(void) { return level; }

void dm_log(int l, const char *fmt, ...)
{
    if (l > level || !sink)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sink(sink_ctx, l, msg);
}

/* src/dm_log.c — see dm_log.h. */
#include "dm_log.h"

#include <stdarg.h>
#include <stdio.h>

int dm_log_level = DM_LOG_INFO;

void dm_log(int level, const char *fmt, ...)
{
    if (level > dm_log_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs(level == DM_LOG_WARN ? "dinomap: warning: " : "dinomap: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

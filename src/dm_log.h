/* src/dm_log.h — messages to stderr with a verbosity level (the one piece of global state). */
#ifndef DM_LOG_H
#define DM_LOG_H

enum { DM_LOG_QUIET = 0, DM_LOG_WARN = 1, DM_LOG_INFO = 2, DM_LOG_DEBUG = 3 };
extern int dm_log_level;
void dm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define dm_warn(...) dm_log(DM_LOG_WARN, __VA_ARGS__)
#define dm_info(...) dm_log(DM_LOG_INFO, __VA_ARGS__)

#endif

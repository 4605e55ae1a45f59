/* src/base/err.c — dm_err (see base.h). */
#include "base.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int dm_err_set(dm_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int dm_err_prefix(dm_err *err, const char *fmt, ...)
{
    if (!err)
        return 0;
    char pre[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", pre, old);
    return err->code;
}

int dm_err_oom(dm_err *err)
{
    return dm_err_set(err, DM_ENOMEM, "out of memory");
}

void dm_err_clear(dm_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

/* src/dm_err.h — error reporting shared by every module.
 * Functions that can fail return 0 or a negative DM_E* code and write a human message into the
 * dm_err the caller passes (which may be NULL); the caller decides whether to print it. */
#ifndef DM_ERR_H
#define DM_ERR_H

#include <stddef.h>

enum {
    DM_OK = 0,
    DM_EIO = -1,          /* cannot open/read/write/map a file */
    DM_EFORMAT = -2,      /* the file is not what it claims to be, or is damaged */
    DM_ENOMEM = -3,
    DM_EINVAL = -4,       /* bad argument or option */
    DM_ESHAPE = -5,       /* a tensor is missing, extra or mis-shaped */
    DM_EUNSUPPORTED = -6, /* valid but not supported (e.g. a forbidden pickle global) */
};

typedef struct dm_err {
    int code;
    char msg[1024];
} dm_err;

/* Sets err (if not NULL) and returns code. printf-style message. */
int dm_err_set(dm_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to the message already in err (for adding file names up the call chain). */
int dm_err_prefix(dm_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int dm_err_oom(dm_err *err);
void dm_err_clear(dm_err *err);

#endif

/* src/base/space.c — telling a full disk from other write failures, and saying what to do about
 * it (see base.h). Libraries lose errno on the way up (libtiff reports "Write error at scanline
 * 0", SQLite "database or disk is full"), so the file system is asked too, while the failed
 * write's temporary file still takes its space. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "base.h"

#define NO_SPACE "No space left on device"

int dm_no_space(const char *path, int e, const char *msg)
{
    if (e == ENOSPC || e == EDQUOT)
        return 1;
    if (msg && (strstr(msg, NO_SPACE) || strstr(msg, "disk is full") ||
                strstr(msg, "Disk quota exceeded")))
        return 1;
    if (!path || !path[0])
        return 0;
    /* the folder: the file may be gone, or never made */
    char dir[4096];
    dm_parent_dir(path, dir, sizeof dir);
    struct statvfs v;
    if (statvfs(dir, &v) != 0 || v.f_blocks == 0)
        return 0;
    return (double)v.f_bavail * (double)v.f_frsize < 1048576.0;
}

int dm_err_space(dm_err *err, const char *path, int e)
{
    if (!err || !err->code || strstr(err->msg, NO_SPACE) || !dm_no_space(path, e, err->msg))
        return err ? err->code : 0;
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ": " NO_SPACE);
    return err->code;
}

void dm_err_space_hint(dm_err *err, const char *dir)
{
    if (!err || !err->code || !strstr(err->msg, NO_SPACE) || strstr(err->msg, "free space"))
        return;
    size_t n = strlen(err->msg);
    snprintf(err->msg + n, sizeof err->msg - n, ". Free space on the disk of %s and run the same "
             "command again: what is done is kept", dir);
}

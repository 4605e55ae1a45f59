/* tests/fuzz/fuzz.h — what the libFuzzer targets (tests/fuzz/fuzz_*.c) share: a private folder
 * for inputs the loaders want as files, a quiet library, and a walk over loaded tensors the way
 * `dinomap info` would touch them. Each target's entry is `int dm_fuzz_<name>(data, size)` (the
 * loader's result); tests/test_fuzz_regress.c includes the targets with DM_FUZZ_NO_ENTRY defined
 * and feeds the saved crashers through the same entries. */
#ifndef DM_FUZZ_H
#define DM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../models/weights.h"
#include "../../models/weights_internal.h"
#include "../../src/base/base.h"

/* One folder per process ($TMPDIR, else /dev/shm, else /tmp), removed at exit. */
static char dm_fuzz_dir_[512];

static void dm_fuzz_cleanup_(void)
{
    if (dm_fuzz_dir_[0])
        dm_remove_tree(dm_fuzz_dir_, NULL);
}

static inline const char *dm_fuzz_dir(void)
{
    if (!dm_fuzz_dir_[0]) {
        const char *t = getenv("TMPDIR");
        if (!t || !*t)
            t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dm_fuzz_dir_, sizeof dm_fuzz_dir_, "%s/dm-fuzz-XXXXXX", t);
        if (!mkdtemp(dm_fuzz_dir_)) {
            perror("dm-fuzz: mkdtemp");
            abort();
        }
        atexit(dm_fuzz_cleanup_);
    }
    return dm_fuzz_dir_;
}

/* Writes data to <dir>/<name> (name may hold one subfolder, made when missing); the path in out. */
static inline void dm_fuzz_write(const char *name, const uint8_t *data, size_t size, char *out,
                                 size_t cap)
{
    snprintf(out, cap, "%s/%s", dm_fuzz_dir(), name);
    char *slash = strrchr(out, '/');
    *slash = '\0';
    dm_mkdir_p(out);
    *slash = '/';
    FILE *f = fopen(out, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror("dm-fuzz: write");
        abort();
    }
}

static inline void dm_fuzz_quiet(void)
{
    dm_log_set_sink(NULL, NULL);
    dm_log_set_level(DM_LOG_QUIET);
}

/* What a reader of the weights does with each tensor: its size, contiguity, shape text, and its
 * first and last few values converted to fp32 (every dtype and stride path of the reader). */
static inline void dm_fuzz_touch_tensor(const dm_tensor *t)
{
    char sb[160];
    dm_shape_str(t->shape, t->ndim, sb, sizeof sb);
    (void)dm_tensor_is_contiguous(t);
    int64_t n = dm_tensor_numel(t);
    float v[8];
    dm_err err = { 0 };
    if (n > 0) {
        int64_t k = n < 8 ? n : 8;
        dm_tensor_read_f32(t, 0, k, v, &err);
        dm_tensor_read_f32(t, n - k, k, v, &err);
    }
}

/* A weights reader (dm_pth_read, dm_safetensors_read) over data in memory, every tensor it
 * returns touched; the reader's result. */
typedef int (*dm_fuzz_reader)(const unsigned char *base, size_t size, const char *path,
                              dm_tensor_list *out, dm_err *err);

static inline int dm_fuzz_read_tensors(dm_fuzz_reader read, const uint8_t *data, size_t size,
                                       const char *name)
{
    dm_tensor_list l = { 0 };
    dm_err err = { 0 };
    int rc = read(data, size, name, &l, &err);
    if (!rc)
        for (size_t i = 0; i < l.n; i++)
            dm_fuzz_touch_tensor(&l.v[i]);
    dm_tensor_list_free(&l);
    return rc;
}

#endif

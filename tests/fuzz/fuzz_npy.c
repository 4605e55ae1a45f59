/* tests/fuzz/fuzz_npy.c — libFuzzer target: a NumPy `.npy` file through dm_npy_read
 * (src/base/npy.c), which takes a path: the input is written to a file first. */
#include "fuzz.h"

int dm_fuzz_npy(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    char path[1024];
    dm_fuzz_write("in.npy", data, size, path, sizeof path);
    dm_npy a;
    dm_err err = { 0 };
    int rc = dm_npy_read(path, &a, &err);
    if (!rc && a.numel > 0) { /* the values are there: first and last */
        volatile float s = a.dtype == 'f' ? a.f[0] + a.f[a.numel - 1]
                                          : (float)(a.u8[0] + a.u8[a.numel - 1]);
        (void)s;
    }
    dm_npy_free(&a);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_npy(data, size);
    return 0;
}
#endif

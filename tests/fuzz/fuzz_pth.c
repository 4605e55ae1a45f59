/* tests/fuzz/fuzz_pth.c — libFuzzer target: a `.pth` file (torch.save zip + pickle) through the
 * reader dm_weights_open uses (models/pth.c), from memory so that AddressSanitizer sees every byte
 * past the input; each tensor read is then touched as `dinomap info` would. */
#include "fuzz.h"
#include "../../models/weights_internal.h"

int dm_fuzz_pth(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    dm_tensor_list l = { 0 };
    dm_err err = { 0 };
    int rc = dm_pth_read(data, size, "fuzz.pth", &l, &err);
    if (!rc)
        for (size_t i = 0; i < l.n; i++)
            dm_fuzz_touch_tensor(&l.v[i]);
    dm_tensor_list_free(&l);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_pth(data, size);
    return 0;
}
#endif

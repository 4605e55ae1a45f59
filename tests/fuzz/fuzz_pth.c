/* tests/fuzz/fuzz_pth.c — libFuzzer target: a `.pth` file (torch.save zip + pickle) through the
 * reader dm_weights_open uses (models/pth.c), from memory so that AddressSanitizer sees every byte
 * past the input; each tensor read is then touched as `dinomap info` would. */
#include "fuzz.h"
#include "../../models/weights_internal.h"

int dm_fuzz_pth(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    return dm_fuzz_read_tensors(dm_pth_read, data, size, "fuzz.pth");
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_pth(data, size);
    return 0;
}
#endif

/* tests/fuzz/fuzz_safetensors.c — libFuzzer target: a `.safetensors` file (u64 header length,
 * JSON header, data) through models/safetensors.c from memory; each tensor is then touched as
 * `dinomap info` would. */
#include "fuzz.h"
#include "../../models/weights_internal.h"

int dm_fuzz_safetensors(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    return dm_fuzz_read_tensors(dm_safetensors_read, data, size, "fuzz.safetensors");
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_safetensors(data, size);
    return 0;
}
#endif

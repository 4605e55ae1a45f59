/* tests/fuzz/fuzz_seghead.c — libFuzzer target: a segmentation head file (.dmseg, or Meta's
 * linear head as .safetensors or .pth) through dm_seg_head_load (heads/seg.c), as `dinomap seg
 * apply --head` reads it. */
#include "fuzz.h"
#include "../../heads/seg.h"

int dm_fuzz_seghead(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    char path[1024];
    dm_fuzz_write("head.dmseg", data, size, path, sizeof path);
    dm_seg_head *h = NULL;
    dm_err err = { 0 };
    int rc = dm_seg_head_load(path, &h, &err);
    if (!rc) {
        volatile float s = h->w[0] + h->w[(size_t)h->C * h->D - 1] + h->b[h->C - 1];
        (void)s;
    }
    dm_seg_head_free(h);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_seghead(data, size);
    return 0;
}
#endif

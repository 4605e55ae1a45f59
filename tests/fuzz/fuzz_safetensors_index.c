/* tests/fuzz/fuzz_safetensors_index.c — libFuzzer target: a model.safetensors.index.json through
 * dm_weights_open (models/weights.c), in a folder that holds the shards the seeds name (made once:
 * model-0000{1,2}-of-00002.safetensors, model.safetensors, dup.safetensors, which repeats a
 * tensor of the first shard) and a file that is no weights file. */
#include "fuzz.h"

static void idx_shard(const char *name, const char *tensors, size_t data_bytes)
{
    unsigned char buf[1024];
    size_t hl = strlen(tensors);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, tensors, hl);
    memset(buf + 8 + hl, 0x3c, data_bytes);
    char path[1024];
    dm_fuzz_write(name, buf, 8 + hl + data_bytes, path, sizeof path);
}

static void idx_setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    idx_shard("idx/model-00001-of-00002.safetensors",
              "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
              "\"a.bias\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]}}", 20);
    idx_shard("idx/model-00002-of-00002.safetensors",
              "{\"__metadata__\":{\"format\":\"pt\"},"
              "\"b.weight\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 6);
    idx_shard("idx/model.safetensors",
              "{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4);
    idx_shard("idx/dup.safetensors",
              "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    char path[1024];
    dm_fuzz_write("idx/notes.txt", (const uint8_t *)"not weights\n", 12, path, sizeof path);
}

int dm_fuzz_safetensors_index(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    idx_setup();
    char path[1024];
    dm_fuzz_write("idx/model.safetensors.index.json", data, size, path, sizeof path);
    dm_weights *w = NULL;
    dm_err err = { 0 };
    int rc = dm_weights_open(path, &w, &err);
    if (!rc) {
        for (size_t i = 0; i < dm_weights_count(w); i++)
            dm_fuzz_touch_tensor(dm_weights_at(w, i));
        (void)dm_weights_find(w, "a.weight");
        for (int i = 0; i < dm_weights_nfiles(w); i++)
            (void)dm_weights_file(w, i);
    }
    dm_weights_close(w);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_safetensors_index(data, size);
    return 0;
}
#endif

/* models/weights.h — the one way into weight files.
 * Supports Meta/PyTorch `.pth` (torch.save zip + a whitelisted pickle subset) and Hugging Face
 * `.safetensors` (single file, or sharded through `model.safetensors.index.json`). Files are
 * memory-mapped read-only; tensors point into the mapping and are never copied here. Nothing in a
 * weight file is ever executed. */
#ifndef DM_WEIGHTS_H
#define DM_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "../src/base/base.h"

typedef enum {
    DM_DT_F32, DM_DT_F16, DM_DT_BF16, DM_DT_F64,
    DM_DT_I64, DM_DT_I32, DM_DT_I16, DM_DT_I8, DM_DT_U8, DM_DT_BOOL,
} dm_dtype;

#define DM_MAX_DIMS 8

typedef struct dm_tensor {
    char *name;
    dm_dtype dtype;
    int ndim;
    int64_t shape[DM_MAX_DIMS];
    int64_t stride[DM_MAX_DIMS]; /* in elements; row-major contiguous for safetensors */
    const unsigned char *data;   /* element 0 (storage offset already applied) */
    int swap;                    /* 1 if elements are big-endian (pth byteorder "big") */
} dm_tensor;

typedef struct dm_weights dm_weights;

/* path: a .pth file, a .safetensors file, a model.safetensors.index.json, or a directory holding
 * model.safetensors(.index.json). A config.json beside the file is read when present. */
int dm_weights_open(const char *path, dm_weights **out, dm_err *err);
void dm_weights_close(dm_weights *w); /* NULL-safe */

size_t dm_weights_count(const dm_weights *w);
const dm_tensor *dm_weights_at(const dm_weights *w, size_t i);
const dm_tensor *dm_weights_find(const dm_weights *w, const char *name); /* NULL if absent */
const char *dm_weights_path(const dm_weights *w);
const char *dm_weights_format(const dm_weights *w);  /* "pth" or "safetensors" */
const char *dm_weights_config(const dm_weights *w);  /* config.json text, or NULL */
/* A safetensors file's __metadata__ object as JSON text (the first shard's), or NULL. */
const char *dm_weights_metadata(const dm_weights *w);
uint64_t dm_weights_bytes(const dm_weights *w);      /* total size of the mapped files */
/* The files mapped (one, or the shards in the index's order). */
int dm_weights_nfiles(const dm_weights *w);
const char *dm_weights_file(const dm_weights *w, int i);

size_t dm_dtype_size(dm_dtype t);
const char *dm_dtype_name(dm_dtype t);
int64_t dm_tensor_numel(const dm_tensor *t);
int dm_tensor_is_contiguous(const dm_tensor *t);
/* Shape as text, e.g. "[3072,1024]". buf >= 128 bytes recommended. */
const char *dm_shape_str(const int64_t *shape, int ndim, char *buf, size_t n);

/* Copies elements [first, first+count) in row-major logical order into dst as fp32, converting the
 * dtype and honouring strides. Integer and bool tensors are converted by value. */
int dm_tensor_read_f32(const dm_tensor *t, int64_t first, int64_t count, float *dst, dm_err *err);

/* Tells the kernel that the mapped pages wholly inside elements [first, first+count) of a
 * contiguous tensor are not needed now (e.g. once they were converted to another copy): they
 * leave the process's resident memory and are read back from the file if touched again. */
void dm_tensor_release(const dm_tensor *t, int64_t first, int64_t count);
/* The whole tensor as a malloc'd fp32 copy (caller frees), or NULL with err set. */
float *dm_tensor_to_f32(const dm_tensor *t, dm_err *err);

/* bf16/fp16 helpers (exact conversions). */
static inline float dm_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
float dm_f16_to_f32(uint16_t h);

#endif

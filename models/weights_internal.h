/* models/weights_internal.h — what the format readers (pth.c, safetensors.c) share with weights.c.
 * Not part of the public API. */
#ifndef DM_WEIGHTS_INTERNAL_H
#define DM_WEIGHTS_INTERNAL_H

#include "weights.h"

typedef struct dm_tensor_list {
    dm_tensor *v;
    size_t n, cap;
    char *metadata;           /* a safetensors header's __metadata__ object as JSON, or NULL */
} dm_tensor_list;

/* Appends t (taking ownership of t->name, which must be malloc'd). Frees t->name on failure. */
int dm_tensor_list_push(dm_tensor_list *l, dm_tensor *t, dm_err *err);
void dm_tensor_list_free(dm_tensor_list *l);

/* Checks that a tensor with this shape/stride/dtype starting at byte `offset_bytes` of a blob of
 * `blob_size` bytes stays inside the blob. Returns 0 or DM_EFORMAT with a message naming `name`. */
int dm_tensor_check_bounds(const char *name, const int64_t *shape, const int64_t *stride, int ndim,
                           dm_dtype dt, uint64_t offset_bytes, uint64_t blob_size, dm_err *err);

/* Format readers: parse the mapped bytes [base, base+size) of file `path` and append tensors that
 * point into that mapping. On failure the list may hold tensors already appended (the caller frees
 * it) and err names the file and the problem. */
int dm_pth_read(const unsigned char *base, size_t size, const char *path, dm_tensor_list *out,
                dm_err *err);
int dm_safetensors_read(const unsigned char *base, size_t size, const char *path,
                        dm_tensor_list *out, dm_err *err);

#endif

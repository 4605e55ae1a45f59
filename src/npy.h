/* src/npy.h — NumPy .npy files (version 1/2/3, C order, little-endian f32 / u8 / f64 / i64 read;
 * f32 written). Used by `dinomap forward`, the tests and the golden comparisons. */
#ifndef DM_NPY_H
#define DM_NPY_H

#include <stdint.h>

#include "dm_err.h"

typedef struct dm_npy {
    char dtype;         /* 'f' (float32), 'u' (uint8); other dtypes are converted to 'f' */
    int ndim;
    int64_t shape[8];
    int64_t numel;
    float *f;           /* set when dtype == 'f' */
    uint8_t *u8;        /* set when dtype == 'u' */
} dm_npy;

int dm_npy_read(const char *path, dm_npy *out, dm_err *err);
void dm_npy_free(dm_npy *a);
/* Writes float32 data with the given shape; to a temporary name, then renamed into place. */
int dm_npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                     dm_err *err);

#endif

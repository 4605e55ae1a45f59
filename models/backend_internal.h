/* models/backend_internal.h — the backend interface: each backend (cpu/, cuda/) provides one
 * dm_backend_ops. Callers only see dm_backend_* in model.h. */
#ifndef DM_BACKEND_INTERNAL_H
#define DM_BACKEND_INTERNAL_H

#include "model.h"

typedef struct dm_backend_ops {
    const char *name;
    int (*create)(const dm_model *m, const dm_backend_opts *o, void **state, dm_err *err);
    int (*forward)(void *state, const float *images, int B, int H, int W,
                   const dm_vit_request *req, dm_err *err);
    void (*destroy)(void *state);
} dm_backend_ops;

extern const dm_backend_ops dm_cpu_backend;

#endif

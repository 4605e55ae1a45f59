/* models/backend.c — picks a backend by device name and checks requests before they reach it. */
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"

struct dm_backend {
    const dm_backend_ops *ops;
    void *state;
    const dm_model *m;
};

int dm_backend_open(const char *device, const dm_model *m, const dm_backend_opts *o,
                    dm_backend **out, dm_err *err)
{
    *out = NULL;
    const dm_backend_ops *ops = NULL;
    if (!device || !strcmp(device, "cpu"))
        ops = &dm_cpu_backend;
    else if (!strcmp(device, "cuda"))
        return dm_err_set(err, DM_EUNSUPPORTED, "--device cuda: this build of dinomap has no CUDA "
                          "backend; use --device cpu");
    else
        return dm_err_set(err, DM_EINVAL, "--device %s: unknown device (cpu, cuda)", device);
    dm_backend *be = calloc(1, sizeof *be);
    if (!be)
        return dm_err_oom(err);
    dm_backend_opts def = { 0 };
    int rc = ops->create(m, o ? o : &def, &be->state, err);
    if (rc) {
        free(be);
        return rc;
    }
    be->ops = ops;
    be->m = m;
    *out = be;
    return 0;
}

int dm_backend_forward(dm_backend *be, const float *images, int B, int H, int W,
                       const dm_vit_request *req, dm_err *err)
{
    if (B < 1 || H < DM_PATCH || W < DM_PATCH || H % DM_PATCH || W % DM_PATCH)
        return dm_err_set(err, DM_EINVAL, "input of %d×%d px (batch %d): sides must be positive "
                          "multiples of %d", W, H, B, DM_PATCH);
    for (int i = 0; req && i < req->n_layers; i++)
        if (req->layers[i] < 0 || req->layers[i] >= be->m->cfg.depth)
            return dm_err_set(err, DM_EINVAL, "layer %d does not exist (the model has blocks "
                              "0..%d)", req->layers[i], be->m->cfg.depth - 1);
    return be->ops->forward(be->state, images, B, H, W, req, err);
}

void dm_backend_close(dm_backend *be)
{
    if (!be)
        return;
    be->ops->destroy(be->state);
    free(be);
}

const char *dm_backend_name(const dm_backend *be) { return be->ops->name; }


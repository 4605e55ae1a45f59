/* models/cuda/plugin.h — the one door into the CUDA backend. The backend is built as a shared
 * object (build/libdinomap_cuda.so, by nvcc) that models/backend.c opens with dlopen() only when a
 * CUDA device is asked for: dinomap itself links no CUDA library, runs where there is none, and
 * says why a GPU cannot be used. Included by both sides (C and CUDA C).
 *
 * The plugin exports one function, DM_CUDA_ENTRY, taking what it needs from the host (logging,
 * reading weight tensors, the RoPE tables) and returning its table. The table carries the ABI
 * number and a fingerprint of every structure the two sides exchange (dm_model, dm_vit_block,
 * dm_tensor, dm_backend_opts, dm_vit_request, dm_err, dm_dops, dm_conv_spec, these tables): a plugin built from other
 * sources is refused, not run. */
#ifndef DM_CUDA_PLUGIN_H
#define DM_CUDA_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "../backend_internal.h"
#include "../dops.h"

#define DM_CUDA_ABI 2
#define DM_CUDA_ENTRY "dm_cuda_plugin_entry"
#define DM_CUDA_LIB "libdinomap_cuda.so"

typedef struct dm_cuda_host {
    int abi;
    void (*log)(int level, const char *msg);
    int (*tensor_read_f32)(const dm_tensor *t, int64_t first, int64_t count, float *dst,
                           dm_err *err);
    void (*tensor_release)(const dm_tensor *t, int64_t first, int64_t count);
    /* vit_math.h's dm_rope_tables: the same fp32 tables on every device */
    void (*rope_tables)(const float *periods, int hd, int h, int w, float *cosv, float *sinv);
} dm_cuda_host;

typedef struct dm_cuda_plugin {
    int abi;                /* DM_CUDA_ABI */
    uint64_t layout;        /* dm_cuda_layout() as the plugin was compiled */
    const char *version;    /* DINOMAP_VERSION of the sources it was built from */
    const char *build;      /* e.g. "CUDA 13.0, sm_90a + compute_80" */
    /* GPUs visible: 0 with *n set (possibly 0); a DM_E* code with a message when the CUDA driver
     * or runtime fails (no driver, driver older than the runtime). */
    int (*device_count)(int *n, dm_err *err);
    /* "NVIDIA H200, 139.8 GiB, sm_90" */
    void (*device_name)(int dev, char *buf, size_t n);
    /* a backend on GPU gpu; forward and destroy are ops' (whose create is not used) */
    int (*create)(const dm_model *m, const dm_backend_opts *o, int gpu, void **state,
                  dm_err *err);
    const dm_backend_ops *ops;
    /* the device operators of a backend state (models/dops.h), ctx set; NULL: none */
    int (*dops)(void *state, dm_dops *out, dm_err *err);
} dm_cuda_plugin;

typedef const dm_cuda_plugin *(*dm_cuda_entry_fn)(const dm_cuda_host *host);

/* The fingerprint of the exchanged structures' layout. */
static inline uint64_t dm_cuda_layout(void)
{
    uint64_t s[] = { sizeof(dm_model), sizeof(dm_vit_block), sizeof(dm_vit_config),
                     sizeof(dm_tensor), sizeof(dm_mat), sizeof(dm_backend_opts),
                     sizeof(dm_vit_request), sizeof(dm_err), sizeof(dm_backend_ops),
                     sizeof(dm_cuda_host), sizeof(dm_cuda_plugin), sizeof(dm_dops),
                     sizeof(dm_conv_spec) };
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

#endif

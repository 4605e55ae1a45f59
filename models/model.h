/* models/model.h — DINOv3 ViT backbones: configuration, weights bound to the architecture, the
 * backend interface (CPU now, CUDA beside it later) and the forward-pass entry points. */
#ifndef DM_MODEL_H
#define DM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../src/base/base.h"
#include "weights.h"

#define DM_PATCH 16
#define DM_MAX_PERIODS 64

/* Normalization presets (mean/std of RGB in [0,1]). */
typedef struct dm_norm {
    const char *name;
    float mean[3], std[3];
    const char *what;
} dm_norm;
const dm_norm *dm_norm_get(const char *name); /* "sat", "chm", "lvd"; NULL if unknown */
const dm_norm *dm_norm_all(int *n);

typedef struct dm_vit_config {
    char arch[48];         /* preset name ("vitl16", ...) or "custom" */
    int embed_dim;         /* D */
    int depth;
    int num_heads;
    int head_dim;          /* D / num_heads */
    int ffn_hidden;
    int swiglu;            /* 0: fc1 → GELU(erf) → fc2; 1: w3(silu(w1 x) * w2 x) */
    int n_storage;         /* register tokens (4) */
    float ln_eps;          /* 1e-5 for every DINOv3 hub model */
    float rope_base;       /* 100 */
    int periods_from_file; /* 1: rope periods read from the file (Meta, bf16-rounded) */
    float periods[DM_MAX_PERIODS]; /* head_dim/4 entries */
    const char *layout;    /* "meta" or "hf" */
    const char *default_norm; /* suggested normalization preset name */
} dm_vit_config;

/* One known architecture of the DINOv3 hub. */
typedef struct dm_arch_preset {
    const char *name;
    int embed_dim, depth, num_heads, ffn_hidden, swiglu;
} dm_arch_preset;
const dm_arch_preset *dm_arch_find(const char *name);
const dm_arch_preset *dm_arch_all(int *n);

/* A [rows, cols] row-major slice of a weight tensor (e.g. the K third of a fused qkv). */
typedef struct dm_mat {
    const dm_tensor *t;
    int64_t row0, rows, cols;
} dm_mat;

typedef struct dm_vit_block {
    float *norm1_w, *norm1_b, *norm2_w, *norm2_b; /* [D] */
    float *ls1, *ls2;                             /* layer scale gammas [D] */
    dm_mat q, k, v;                               /* [D, D] each */
    dm_mat qkv;                                   /* [3D, D] when q, k, v are one tensor (Meta) */
    float *qkv_b;                                 /* [3D] effective bias = bias * bias_mask */
    dm_mat proj;                                  /* [D, D] */
    float *proj_b;
    dm_mat fc1, fc2;                              /* mlp: fc1 [F, D], fc2 [D, F] */
    dm_mat w1, w2;                                /* swiglu: w1 (gate), w2 (up) [F, D]; w3 = fc2 */
    float *fc1_b, *w2_b, *fc2_b;                  /* fc1_b doubles as w1's bias */
} dm_vit_block;

typedef struct dm_model {
    dm_vit_config cfg;
    dm_weights *w;        /* owned unless borrowed */
    int borrowed;
    char prefix[64];      /* name prefix of the backbone in the file ("" or "backbone.") */
    float *cls_token;     /* [D] */
    float *storage;       /* [R, D] */
    dm_mat patch_w;       /* [D, 3*16*16] */
    float *patch_b;       /* [D] */
    float *norm_w, *norm_b;
    dm_vit_block *blocks;
    uint64_t n_params;
    int n_ignored;        /* tensors present but unused at inference (mask_token, local_cls_norm) */
} dm_model;

typedef struct dm_model_opts {
    const char *arch; /* force an architecture preset (NULL: recognise from the tensors) */
} dm_model_opts;

/* Opens a weights file (see dm_weights_open) and binds it to a ViT. */
int dm_model_open(const char *path, const dm_model_opts *o, dm_model **out, dm_err *err);
/* Binds already-open weights (not owned, e.g. a CHMv2 file holding backbone and head). */
int dm_model_bind(dm_weights *w, const dm_model_opts *o, dm_model **out, dm_err *err);
void dm_model_free(dm_model *m);

/* Number of tokens for an H×W input: 1 + R + (H/16)(W/16). */
int dm_model_tokens(const dm_model *m, int H, int W);

/* What a forward pass should produce. Buffers are caller-owned, [B, N, D] row-major with
 * N = dm_model_tokens(); any may be NULL. layers are 0-based block indices, any order; layer_out[i]
 * receives the raw residual stream after block layers[i]. */
typedef struct dm_vit_request {
    int n_layers;
    const int *layers;
    float **layer_out;
    float *prenorm; /* after the last block, before the final norm */
    float *normed;  /* after the final norm (forward_features) */
    int on_device;  /* 1: the buffers are the backend's device memory (dm_backend_dops' alloc),
                     * batch 1, one GPU; the CPU backend refuses it */
} dm_vit_request;

/* --- backends ---------------------------------------------------------------------------- */
typedef struct dm_backend dm_backend;
typedef struct dm_backend_opts {
    int threads;    /* BLAS/compute threads; <= 0: all cores */
    int gemm_parts; /* slices each matrix product is cut into (<= 0: threads). The results depend
                     * on it, bit for bit, not on the threads: a resumed run keeps its first's */
    int precision;  /* DM_PREC_FP32 (0, exact) or DM_PREC_BF16 (resolved: never AUTO) */
} dm_backend_opts;

/* --- precision ---------------------------------------------------------------------------------
 * fp32: every product in fp32 (golden parity ~1e-6). bf16: the matrix products (linear layers,
 * attention) take bf16 inputs and accumulate in fp32, weights held in bf16; LayerNorm, softmax,
 * RoPE, residuals and everything after the backbone stay fp32. Worth it only on CPUs with bf16
 * dot-product instructions. */
enum { DM_PREC_AUTO = -1, DM_PREC_FP32 = 0, DM_PREC_BF16 = 1 };
int dm_precision_parse(const char *name, int *out, dm_err *err); /* fp32, bf16, auto */
const char *dm_precision_name(int p);
/* The CPU's bf16 dot-product instructions as the bf16 library sees them: "AMX", "AVX512_BF16",
 * or NULL. Testing knob: DINOMAP_CPU_BF16=0 in the environment plays a CPU without them. */
const char *dm_cpu_bf16(void);
/* requested (fp32, bf16 or auto) → fp32 or bf16: auto is bf16 only where dm_cpu_bf16(); bf16
 * where the CPU lacks them is refused (DM_EUNSUPPORTED). For auto, why (if not NULL) receives a
 * line saying what was picked and why; else it is set empty. */
int dm_precision_resolve(int requested, int *resolved, char *why, size_t n, dm_err *err);

/* --- devices -----------------------------------------------------------------------------------
 * "cpu"; "cuda" (= cuda:0), "cuda:N", "cuda:0,1" (one worker per GPU, a batch shared out between
 * them); "auto": cuda:0 when the CUDA backend loads and sees a GPU, else cpu. The CUDA backend is
 * a plugin (libdinomap_cuda.so beside the program, or $DINOMAP_CUDA_LIB) opened only when a GPU
 * is asked for: dinomap links no CUDA library. */
enum { DM_DEV_CPU = 0, DM_DEV_CUDA = 1 };
#define DM_MAX_GPUS 16
typedef struct dm_device {
    int kind;   /* DM_DEV_CPU or DM_DEV_CUDA */
    int is_auto;/* "auto": not yet resolved (dm_device_pick) */
    int n;      /* cuda: number of GPUs in ids */
    int ids[DM_MAX_GPUS];
} dm_device;
/* Syntax only (nothing is loaded): DM_EINVAL with the message a user sees. NULL means "cpu". */
int dm_device_parse(const char *spec, dm_device *out, dm_err *err);
/* The canonical name: "cpu", "cuda:0", "cuda:0,1", "auto". */
const char *dm_device_str(const dm_device *d, char *buf, size_t n);
/* spec → canonical device name in out, "auto" resolved (loading the plugin and counting GPUs);
 * why (if not NULL) receives the line saying what auto picked and why, else is set empty.
 * Explicit cuda devices are not checked here (dm_backend_open does). */
int dm_device_pick(const char *spec, char *out, size_t n, char *why, size_t nwhy, dm_err *err);
/* What the device means for the numbers: "cpu" or "cuda" (a run's configuration records this:
 * which GPU, or how many, does not change a window's pixels; the device kind does). */
const char *dm_device_class(const char *spec);
/* dm_precision_resolve for a device: on a GPU, auto and bf16 are bf16 (tensor cores), fp32 fp32;
 * on the CPU as dm_precision_resolve. device must not be "auto" (dm_device_pick first). */
int dm_precision_resolve_on(const char *device, int requested, int *resolved, char *why,
                            size_t n, dm_err *err);
/* The precision of the operators heads run on the CPU (models/ops.h) beside a backbone on
 * `device` in `precision`: the same, except bf16 beside a GPU where this CPU has no bf16
 * instructions: fp32 (for heads left on the CPU: a head moved to the GPU with
 * dm_chm_use_backend takes the backbone's precision). */
int dm_ops_precision_on(const char *device, int precision);
/* The plugin's state as text for `dinomap info`-like reports: "CUDA backend: path (build),
 * N GPU(s): ..." or why there is none. Never fails. */
const char *dm_cuda_describe(char *buf, size_t n);

/* device: see above. Errors: plugin not built, CUDA runtime missing, no GPU, GPU index out of
 * range, a plugin from other sources. */
int dm_backend_open(const char *device, const dm_model *m, const dm_backend_opts *o,
                    dm_backend **out, dm_err *err);
/* images: [B, 3, H, W] normalized fp32; H, W multiples of 16. */
int dm_backend_forward(dm_backend *be, const float *images, int B, int H, int W,
                       const dm_vit_request *req, dm_err *err);
void dm_backend_close(dm_backend *be);
const char *dm_backend_name(const dm_backend *be);
/* The device operators of the backend's (first) GPU (models/dops.h) for heads that run beside it;
 * DM_EUNSUPPORTED for a backend without (the CPU's). */
struct dm_dops;
int dm_backend_dops(dm_backend *be, struct dm_dops *out, dm_err *err);

/* OpenBLAS 0.3.21 (Debian 12) does not recognise some newer x86 CPUs and falls back to its
 * "Prescott" (SSE3) kernels, about 5× slower. If that happened, the CPU has AVX2+FMA, and the
 * user did not choose a core (OPENBLAS_CORETYPE), this sets OPENBLAS_CORETYPE to SkylakeX
 * (AVX-512) or Haswell (AVX2) and re-executes the program (OpenBLAS reads it only at load).
 * DINOMAP_BLAS_CORE=keep disables it. Call it first thing in main(); returns only if nothing had
 * to change. */
void dm_blas_pick_core(char **argv);

/* Applies the model's final LayerNorm to n tokens (in may equal out). */
void dm_model_norm_tokens(const dm_model *m, const float *in, float *out, int64_t n);

/* Normalizes interleaved 8-bit RGB [H, W, 3] (stride in bytes per row) into [3, H, W] fp32:
 * (u8/255 - mean)/std, as torchvision's ToDtype(scale=True) + Normalize. */
void dm_normalize_rgb8(const uint8_t *rgb, int H, int W, const dm_norm *nm, float *out);

#endif

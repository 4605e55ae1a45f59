/* heads/chmv2_internal.h — what the CHMv2 head's two files share: the head's structure, and the
 * layout of the decoder's maps (one arena, host or device). chmv2.c binds the weights and runs the
 * decoder on the CPU operators; chmv2_dev.c runs the same decoder through a device's operators
 * (models/dops.h) when the backbone is on a GPU. */
#ifndef DM_HEADS_CHMV2_INTERNAL_H
#define DM_HEADS_CHMV2_INTERNAL_H

#include <stddef.h>

#include "../models/dops.h"
#include "../models/ops.h"
#include "heads.h"

#define MAX_OWN 96     /* fp32 parameter copies (68 tensors for CHMv2) */
#define MAX_WIDTH 65536
#define MAX_THREADS 1024
#define TAIL_COLS 512 /* pixels per piece of the head's last 1×1 conv + heights */

typedef struct rcu {
    float *wa, *ba, *wb, *bb; /* conv1, conv2: [F, F, 3, 3], [F] */
} rcu;

typedef struct fusion {
    rcu r1, r2;   /* r1 absent (NULL) in block 0 */
    float *pw, *pb; /* 1×1 project [F, F], [F] */
} fusion;

struct dm_chm {
    const dm_model *m;
    int D, C[4], F, H1, H2, nbins;
    int taps[DM_CHM_TAPS];
    float *ro_w[4], *ro_b[4]; /* readout [D, 2D] (patch half, CLS half), [D] */
    float *pj_w[4], *pj_b[4]; /* 1×1 project [C_k, D], [C_k] */
    float *rs_w[4], *rs_b[4]; /* resize: 0, 1 transposed [C, C, k, k]; 2 none; 3 conv s2 */
    float *cv_w[4];           /* 3×3 [F, C_k, 3, 3], no bias */
    fusion fu[4];
    float *hd_w[3], *hd_b[3]; /* conv_depth.head.{0,2,4} */
    float *bins;              /* [nbins], max(bin, 1e-12) */
    float *own[MAX_OWN];
    size_t own_n[MAX_OWN];    /* their lengths (floats) */
    int nown;
    char desc[1024];
    dm_ops *ws;           /* the decoder's threads and their scratch */
    float *arena;             /* the decoder's maps, kept between calls (grown when needed) */
    size_t arena_n;
    float *tok, *pad;         /* dm_chm_run: the taps' tokens, the padded image (likewise) */
    size_t tok_n, pad_n;
    struct dm_chm_dev *dev;   /* the device path (chmv2_dev.c), or NULL */
};

/* The maps of one decode, carved from one arena (kept and grown between calls). */
typedef struct dm_chm_maps {
    float *G[4];
    float *P, *Rb;          /* reassembly scratch; shares its room with the fusion maps */
    float *X, *X2, *T, *S, *A;
} dm_chm_maps;

/* The side of the channel-conv output of tap k for a gh×gw patch grid: (4gh,4gw), (2gh,2gw),
 * (gh,gw), (ceil(gh/2), ceil(gw/2)) */
void dm_chm_gsize(int gh, int gw, int gsz_h[4], int gsz_w[4]);
/* Floats the maps of a gh×gw decode need, and their places in an arena of that many at base. */
size_t dm_chm_maps_size(const dm_chm *h, int gh, int gw);
void dm_chm_maps_carve(const dm_chm *h, int gh, int gw, float *base, dm_chm_maps *mp);

/* chmv2_dev.c: the device path; used by dm_chm_run/_run_taps when h->dev is set */
int dm_chm_dev_run_taps(dm_chm *h, const float *const taps[DM_CHM_TAPS], int gh, int gw,
                        int norm, float *logits, float *height, dm_err *err);
int dm_chm_dev_run(dm_chm *h, dm_backend *be, const float *x, int Hp, int Wp, float *logits,
                   float *height, dm_err *err);
int dm_chm_dev_owns(const dm_chm *h, const dm_backend *be);
void dm_chm_dev_free(dm_chm *h);
int dm_chm_dev_set_precision(dm_chm *h, int precision, dm_err *err);

#endif

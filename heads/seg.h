/* heads/seg.h — segmentation heads: a linear map from a patch's feature vector (what the features
 * product writes for the patch: the run's layer through the final norm) to class logits,
 * logits = W·x + b. Every head dinomap uses is one:
 *   - "logistic": multinomial logistic regression fitted by `dinomap seg train`;
 *   - "kmeans": `dinomap seg cluster`'s centroids c_k, as W_k = 2·c_k, b_k = −|c_k|² (the argmax of
 *     the logits is then the nearest centroid); the centroids were fitted on unit-length feature
 *     vectors, so such a head is applied to x / |x| (dm_seg_head_unit);
 *   - "linear": Meta's linear segmentation head (spec §6.1: BatchNorm2d + 1×1 conv), folded.
 * Like the other heads it knows no files' georeferencing, tiles or CRSs, and computes through the
 * backend's dense operations (models/ops.h).
 *
 * The head file (`.dmseg`) is a safetensors file: tensors "weight" F32 [C, D] and "bias" F32 [C];
 * its __metadata__ (string values, as the format requires):
 *   format "dinomap-seg", version "1", kind (above), classes (JSON: [{"id":1,"name":"water",
 *   "color":"#1f78b4"}, ...], one per row of weight, in order), embed_dim, backbone_sha256 (the
 *   weights the features came from; "" when unknown), arch, layer (-1: the last block), norm (the
 *   normalization preset), info (JSON object: how it was made — training metrics, k-means seed...;
 *   may be "{}"). */
#ifndef DM_HEADS_SEG_H
#define DM_HEADS_SEG_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "../src/base/base.h"

#define DM_SEG_MAX_CLASSES 255 /* class ids are 0..254 in an 8-bit raster; 255 is nodata */

typedef struct dm_seg_class {
    int id;                    /* the value seg.tif holds for the class, 0..254 */
    char name[64];
    uint8_t rgb[3];
} dm_seg_class;

typedef struct dm_seg_head {
    int C, D;
    float *w, *b;              /* [C, D], [C] */
    dm_seg_class *cls;         /* [C] */
    char kind[16];             /* "logistic", "kmeans", "linear" */
    char backbone_sha256[65];  /* "" when unknown */
    char arch[32];
    int layer;                 /* -1: the last block */
    char norm[16];
    char *info;                /* JSON object text (malloc'd), or NULL */
} dm_seg_head;

/* A head of C classes over D dimensions: weights and biases 0, classes id 1..C named "class N"
 * with distinct default colours, layer -1, info NULL. NULL when out of memory or C, D invalid. */
dm_seg_head *dm_seg_head_new(int C, int D);
void dm_seg_head_free(dm_seg_head *h); /* NULL-safe */

/* Reads a .dmseg file, or Meta's linear segmentation head (a .pth or .safetensors with
 * batchnorm_layer.* and conv.*, optionally prefixed; folded into W, b; classes id 1..C, kind
 * "linear", backbone unknown). Errors name the file and what is wrong (not a head, shapes,
 * classes that are not valid JSON, duplicate ids...). */
int dm_seg_head_load(const char *path, dm_seg_head **out, dm_err *err);
/* Writes h as a .dmseg file (temporary name, then renamed). */
int dm_seg_head_save(const dm_seg_head *h, const char *path, dm_err *err);
/* The SHA-256 of the head's weights, biases and classes (what a run's configuration records:
 * the same head saved again has the same hash). */
void dm_seg_head_sha256(const dm_seg_head *h, char out[65]);

/* The classes as JSON: [{"id": 1, "name": "water", "color": "#1f78b4"}, ...] (the caller's). */
cJSON *dm_seg_classes_json(const dm_seg_head *h);

/* logits[n, C] = x[n, D] · Wᵀ + b on the calling thread. */
void dm_seg_logits(const dm_seg_head *h, const float *x, int n, float *logits);

/* 1 when the head reads unit-length feature vectors (kind "kmeans"): its logits are those of
 * x / |x|. */
int dm_seg_head_unit(const dm_seg_head *h);
/* Scales each of the n rows of x [n, D] to unit length (a zero row stays zero). */
void dm_seg_unit_rows(float *x, int n, int D);

/* k-means of n vectors x [n, D] into K clusters (2 <= K <= min(n, 254)): k-means++ seeding drawn
 * from `seed`, then Lloyd iterations until no assignment changes or max_iter; a cluster left
 * empty takes the vector farthest from its centroid. Every sum runs in a fixed order on the
 * calling thread: the result depends on x, K and the seed only. *out: a "kmeans" head (classes
 * 1..K "cluster N" with the default colours; info {"k","seed","iterations","inertia"}, inertia
 * the sum of squared distances to the nearest centroid); backbone, arch, layer, norm are the
 * caller's to fill. */
int dm_seg_kmeans(const float *x, int n, int D, int K, uint64_t seed, int max_iter,
                  dm_seg_head **out, dm_err *err);

/* The default colour of class index i (a qualitative palette, then a hash for the rest). */
void dm_seg_default_color(int i, uint8_t rgb[3]);
/* "#rrggbb" → rgb; 0, or -1 when it is not such a colour. */
int dm_seg_parse_color(const char *s, uint8_t rgb[3]);

/* --- training (heads/seg_train.c) ----------------------------------------------------------
 * A "logistic" head: multinomial logistic regression on patch feature vectors, class weights
 * N / (C · n_k), an L2 penalty λ/2·|V|² on the weights of the standardized features (each
 * dimension centred and scaled to unit variance over the training patches; folded back into W
 * and b), minimised by L-BFGS from zero. The same inputs give the same head bit for bit, with
 * any number of threads. */
typedef struct dm_seg_fit_opts {
    double l2;                 /* λ >= 0 */
    int max_iter;              /* L-BFGS iterations at most */
} dm_seg_fit_opts;

typedef struct dm_seg_fit_result {
    int iterations, converged; /* converged: the gradient or the decrease became negligible */
    double loss;               /* the objective at the result */
    double grad;               /* the largest component of its gradient there */
    double train_accuracy;     /* share of the training patches the head gets right */
} dm_seg_fit_result;

struct dm_ops;
/* Fits h's weights and biases (its C classes and D dimensions) to X [N, D] (the patches' feature
 * vectors; standardized in place: X is overwritten) and y [N] (class indices 0..C-1, every class
 * present), on the threads of ws (NULL: the calling thread). */
int dm_seg_fit(dm_seg_head *h, float *X, const int *y, int N, const dm_seg_fit_opts *o,
               struct dm_ops *ws, dm_seg_fit_result *r, dm_err *err);
/* pred[n] = the class index of the largest logit of x[n] (ties: the lower index). */
int dm_seg_predict(const dm_seg_head *h, const float *X, int N, int *pred, dm_err *err);

#endif

/* heads/heads.h — what turns backbone tokens into arrays: the CHMv2 canopy-height head, the PCA
 * colour preview of feature rasters and similarity maps. Heads know no files, tiles or CRSs,
 * and compute through the backend's dense operations (models/ops.h), never through a BLAS of
 * their own. */
#ifndef DM_HEADS_H
#define DM_HEADS_H

#include <stdint.h>

#include "../models/model.h"

/* ==== CHMv2 ================================================================================== */
/* the CHMv2 canopy-height head (spec §5): the DPT decoder on four normed
 * backbone taps (reassemble with CLS readout, channel convs, fusion, UpConv head) followed by the
 * mixed linear/log bins that turn 256 logits per pixel into a height in metres.
 *
 * Weights come from Meta's separate head .pth (flat DPTHead names, optionally prefixed "head." or
 * wrapped) or from the head.* tensors of a Hugging Face CHMv2ForDepthEstimation file that also
 * holds the backbone. Every width comes from the tensor shapes; they are all checked.
 *
 * Typical use:
 *   dm_chm_open(head_or_NULL, weights, model, NULL, &h, &err);
 *   dm_chm_set_threads(h, threads, &err);        // the decoder's threads (default 1)
 *   dm_chm_out_size(H, W, &Ho, &Wo);             // allocate logits [bins, Ho, Wo], height [Ho, Wo]
 *   dm_chm_run(h, backend, img, H, W, logits, height, &err);
 *   dm_chm_resize_to_input(height, Ho, Wo, H, W, out, &err);   // the notebook's last step */
#define DM_CHM_TAPS 4

typedef struct dm_chm dm_chm;

/* 1 if the weights file holds a CHMv2 DPT head (Meta or Hugging Face names, any known prefix):
 * lets `forward -m model.safetensors` find the head inside an HF CHMv2 file. */
int dm_chm_detect(const dm_weights *w);

/* Binds a CHMv2 head to the backbone m (which must outlive the head).
 * head_path: Meta head .pth (or any weights file holding the head); NULL: the head is read from
 *   backbone_file (the Hugging Face layout: backbone.* and head.* in one file).
 * backbone_file: the open file m was bound from; needed when head_path is NULL, else may be NULL.
 * taps: NULL, or DM_CHM_TAPS distinct 0-based block indices overriding the default, which is
 *   config.json backbone_config.out_indices − 1 when the head's file has one, else the quarter
 *   rule k·depth/4 − 1 (spec §5.1). Taps are used in ascending block order, as
 *   get_intermediate_layers returns them. */
int dm_chm_open(const char *head_path, dm_weights *backbone_file, const dm_model *m,
                const int *taps, dm_chm **out, dm_err *err);
void dm_chm_free(dm_chm *h); /* NULL-safe */

/* Threads the decoder runs on, the calling thread included (n <= 0: all online cores); 1 after
 * open. Every step of dm_chm_run after the backbone and of dm_chm_decode is spread over them.
 * The head keeps its pool and its buffers between calls (for a 512×512 tile at CHMv2 widths
 * about 175 MB of maps and tokens, plus about 25 MB of scratch per thread); a head is used by
 * one caller thread at a time. The decoder's GEMMs run on these threads, so this sets OpenBLAS
 * single-threaded (process-wide), as the CPU backend does. Results do not depend on n, bit for
 * bit. Returns 0, DM_EINVAL (n above 1024) or DM_ENOMEM (threads could not start; the head keeps
 * its previous ones). */
int dm_chm_set_threads(dm_chm *h, int n, dm_err *err);
int dm_chm_threads(const dm_chm *h);
/* The precision of the decoder's convolutions (dm_ops_set_precision): DM_PREC_FP32 after open,
 * or DM_PREC_BF16 (bf16 products with fp32 accumulation; the reassembly's transposed
 * convolutions, projections, resizing and the bins stay fp32). Kept across dm_chm_set_threads. */
int dm_chm_set_precision(dm_chm *h, int precision, dm_err *err);
/* Runs the head on the device of backend be when be offers device operators (a CUDA backend,
 * models/dops.h): the head's weights are copied there once (converted to bf16 on first use in
 * bf16), and from then on every dm_chm_run_taps and dm_chm_run decodes on the device with the
 * precision set by dm_chm_set_precision (at this call or later); dm_chm_run with this be keeps the
 * taps' tokens on the device (the backbone writes them there). be must outlive the head's use.
 * Returns DM_EUNSUPPORTED, changing nothing, for a backend without device operators (the CPU's,
 * a plugin without them): the head then stays on the CPU. */
int dm_chm_use_backend(dm_chm *h, dm_backend *be, dm_err *err);
/* The same with a given operator table (tests run the device path on the host table,
 * dm_dops_host); be may be NULL (then dm_chm_run copies the taps to the "device"). */
struct dm_dops;
int dm_chm_use_dops(dm_chm *h, const struct dm_dops *d, dm_backend *be, dm_err *err);
int dm_chm_on_device(const dm_chm *h); /* 1 once dm_chm_use_* succeeded */

/* The four blocks tapped (ascending), the number of output bins/logit channels (256 for CHMv2),
 * and a one-line description (source file, layout, widths) for logs. */
const int *dm_chm_taps(const dm_chm *h);
int dm_chm_bins(const dm_chm *h);
const char *dm_chm_describe(const dm_chm *h);
/* The bin centres in metres before the ×8 rescale (spec §5.8), dm_chm_bins() values. */
const float *dm_chm_bin_values(const dm_chm *h);

/* Output size for an H×W input of any size: with h = ceil(H/16), w = ceil(W/16) patches,
 * Ho = 32·ceil(h/2), Wo = 32·ceil(w/2) (spec §5.9; equals the padded input when h, w are even). */
void dm_chm_out_size(int H, int W, int *Ho, int *Wo);
/* Padded size (multiples of 16) and the zero-filled centre padding of a [3, H, W] image
 * (spec §5.3: top/left get the smaller half; zero in normalized space). out: [3, Hp, Wp]. */
void dm_chm_pad_size(int H, int W, int *Hp, int *Wp);
void dm_chm_center_pad(const float *img, int H, int W, float *out);

/* The whole model on one normalized image [3, H, W] (any H, W >= 1): centre padding, backbone
 * with the taps, decoder, bins. logits [bins, Ho, Wo] may be NULL (then no full-size logit map
 * is made at all: each band's logits become heights while in cache); height [Ho, Wo] in metres. */
int dm_chm_run(dm_chm *h, dm_backend *be, const float *img, int H, int W, float *logits,
               float *height, dm_err *err);

/* The head on the raw outputs of its four taps for one image (as dm_backend_forward gives them
 * for the blocks dm_chm_taps() names, [N, D] each): normed in place exactly as dm_chm_run norms
 * them, then decoded. For callers that run the backbone once for several products. */
int dm_chm_run_taps(dm_chm *h, float *const taps[DM_CHM_TAPS], int gh, int gw, float *logits,
                    float *height, dm_err *err);

/* The decoder alone, for callers that ran the backbone themselves (e.g. with more layers):
 * taps[k] holds the N = 1 + R + gh·gw tokens [N, D] after block dm_chm_taps()[k], passed through
 * the final norm (dm_model_norm_tokens); gh×gw is the patch grid. logits may be NULL; height may
 * be NULL. Outputs as dm_chm_run with Ho = 32·ceil(gh/2), Wo = 32·ceil(gw/2). */
int dm_chm_decode(dm_chm *h, const float *const taps[DM_CHM_TAPS], int gh, int gw, float *logits,
                  float *height, dm_err *err);

/* Logits [bins, npix] (channel-first) → heights [npix] in metres (spec §5.8). */
void dm_chm_heights(const dm_chm *h, const float *logits, int64_t npix, float *height);

/* The notebook's post-processing (spec §5.10): bilinear resize of the Ho×Wo height map to the
 * original H×W with align_corners=False (no crop of the padding). out: [H, W]. */
int dm_chm_resize_to_input(const float *height, int Ho, int Wo, int H, int W, float *out,
                           dm_err *err);

/* ==== PCA ==================================================================================== */
/* the PCA colour preview of feature rasters: a uniform sample of patch vectors
 * from the whole run (reservoir sampling), the top three principal components fitted once on it,
 * and their 2–98 % ranges mapped to 1..255 (0 stays nodata). Also gives per-dimension ranges for
 * int8 quantisation. */
typedef struct dm_pca dm_pca;

int dm_pca_create(int dim, int capacity, uint64_t seed, dm_pca **out, dm_err *err);
void dm_pca_free(dm_pca *p);
/* Offers one vector to the reservoir (every vector of the run has the same chance to be kept). */
void dm_pca_offer(dm_pca *p, const float *v);
int64_t dm_pca_seen(const dm_pca *p);
/* Fits mean, 3 components and their display ranges on the sample. Needs >= 2 samples. */
int dm_pca_fit(dm_pca *p, dm_err *err);
/* Projects v onto the components → 3 bytes in 1..255. */
void dm_pca_rgb(const dm_pca *p, const float *v, uint8_t rgb[3]);
/* After fit: the largest |value| of dimension d in the sample (for quantisation scales). */
float dm_pca_absmax(const dm_pca *p, int d);
/* After fit: the share of variance the 3 components explain. */
double dm_pca_explained(const dm_pca *p);

/* ==== similarity ============================================================================= */
/* the DINOv3 paper's similarity maps: cosine similarity of patch vectors to a unit query vector.
 * Vectors come as band-major pieces v [nb, n] (nb of the D bands of n patches), a group of bands
 * at a time: dot and nn [n] start at 0 and accumulate Σ q[d]·v[d] and Σ v[d]² over the groups
 * (q pointing at the group's first band); NaN (nodata) in a patch's values makes its result NaN. */
void dm_sim_accumulate(const float *q, int nb, const float *v, size_t n, double *dot, double *nn);
/* out [n] = dot / sqrt(nn) (the cosine for a unit q); NaN stays NaN, a zero vector gives 0. */
void dm_sim_finish(const double *dot, const double *nn, size_t n, float *out);
/* sum [nb] += Σ over the patches with mask[i] of v[d, i] (the caller masks nodata out). */
void dm_sim_sum(const float *v, int nb, size_t n, const uint8_t *mask, double *sum);
/* q [D] = sum / |sum| (float); -1 when the sum is zero or not finite. */
int dm_sim_unit(const double *sum, int D, float *q);
/* Change maps: the sums of two band-major pieces a, b [nb, n] (a · b, |a|², |b|², in double, into
 * dot/na/nbb), then the cosine distance 1 − cos(a, b) in 0..2 (NaN where either was NaN; a zero
 * vector against another: 1, two zero vectors: 0). */
void dm_sim_pair_accumulate(const float *a, const float *b, int nb, size_t n, double *dot,
                            double *na, double *nbb);
void dm_sim_distance_finish(const double *dot, const double *na, const double *nbb, size_t n,
                            float *out);

#endif

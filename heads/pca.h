/* heads/pca.h — the PCA colour preview of feature rasters: a uniform sample of patch vectors
 * from the whole run (reservoir sampling), the top three principal components fitted once on it,
 * and their 2–98 % ranges mapped to 1..255 (0 stays nodata). Also gives per-dimension ranges for
 * int8 quantisation. */
#ifndef DM_HEAD_PCA_H
#define DM_HEAD_PCA_H

#include <stdint.h>

#include "../src/dm_err.h"

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

#endif

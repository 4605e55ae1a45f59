/* heads/similarity.c — the DINOv3 paper's similarity maps: the cosine similarity of every patch's
 * feature vector to a query vector (one patch's, or the normalized mean of several), computed
 * from band-major pieces [bands, n] a group of bands at a time, so that a caller streaming a
 * 1024-band raster never holds more than one group. Sums are in double and run over the bands in
 * order, so the result does not depend on how the bands were grouped. */
#include <math.h>

#include "heads.h"

void dm_sim_accumulate(const float *q, int nb, const float *v, size_t n, double *dot, double *nn)
{
    for (int d = 0; d < nb; d++) {
        const float *x = v + (size_t)d * n;
        double qd = q[d];
        for (size_t i = 0; i < n; i++) {
            double a = x[i]; /* NaN (nodata) makes both sums NaN */
            dot[i] += qd * a;
            nn[i] += a * a;
        }
    }
}

void dm_sim_finish(const double *dot, const double *nn, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(nn[i]))
            out[i] = NAN;
        else if (nn[i] > 0)
            out[i] = (float)(dot[i] / sqrt(nn[i]));
        else
            out[i] = 0.0f; /* a zero vector has no direction: like nothing */
    }
}

void dm_sim_sum(const float *v, int nb, size_t n, const uint8_t *mask, double *sum)
{
    for (int d = 0; d < nb; d++) {
        const float *x = v + (size_t)d * n;
        double s = 0;
        for (size_t i = 0; i < n; i++)
            if (mask[i])
                s += x[i];
        sum[d] += s;
    }
}

int dm_sim_unit(const double *sum, int D, float *q)
{
    double s = 0;
    for (int d = 0; d < D; d++)
        s += sum[d] * sum[d];
    if (!(s > 0) || !isfinite(s))
        return -1;
    double k = 1.0 / sqrt(s);
    for (int d = 0; d < D; d++)
        q[d] = (float)(sum[d] * k);
    return 0;
}

void dm_sim_pair_accumulate(const float *a, const float *b, int nb, size_t n, double *dot,
                            double *na, double *nbb)
{
    for (int d = 0; d < nb; d++) {
        const float *x = a + (size_t)d * n, *y = b + (size_t)d * n;
        for (size_t i = 0; i < n; i++) {
            double u = x[i], v = y[i]; /* NaN in either makes the sums NaN */
            dot[i] += u * v;
            na[i] += u * u;
            nbb[i] += v * v;
        }
    }
}

void dm_sim_distance_finish(const double *dot, const double *na, const double *nbb, size_t n,
                            float *out)
{
    for (size_t i = 0; i < n; i++) {
        if (isnan(dot[i]) || isnan(na[i]) || isnan(nbb[i])) {
            out[i] = NAN;
        } else if (na[i] > 0 && nbb[i] > 0) {
            double c = dot[i] / sqrt(na[i] * nbb[i]);
            c = c > 1 ? 1 : c < -1 ? -1 : c;
            out[i] = (float)(1 - c);
        } else {
            out[i] = na[i] > 0 || nbb[i] > 0 ? 1.0f : 0.0f; /* no direction: as orthogonal */
        }
    }
}

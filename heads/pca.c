/* heads/pca.c — see pca.h. The top components come from subspace iteration on the sample's
 * covariance (a few dozen sgemm-sized products), deterministic for a given seed. */
#include "heads.h"
#include "../models/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NC 3   /* components kept */
#define NS 8   /* subspace size (a few extra vectors converge the top 3 faster) */

struct dm_pca {
    int dim, cap, n;
    int64_t seen;
    uint64_t rng;
    float *sample;       /* [cap, dim] */
    float *mean;         /* [dim] */
    float *comp;         /* [NC, dim] */
    float lo[NC], hi[NC];
    float *absmax;       /* [dim] */
    double explained;
};

static uint64_t next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int dm_pca_create(int dim, int capacity, uint64_t seed, dm_pca **out, dm_err *err)
{
    dm_pca *p = calloc(1, sizeof *p);
    if (!p)
        return dm_err_oom(err);
    p->dim = dim;
    p->cap = capacity;
    p->rng = seed ? seed : 0x9e3779b97f4a7c15ull;
    p->sample = malloc(sizeof(float) * (size_t)dim * capacity);
    p->mean = calloc((size_t)dim, sizeof(float));
    p->comp = calloc((size_t)dim * NC, sizeof(float));
    p->absmax = calloc((size_t)dim, sizeof(float));
    if (!p->sample || !p->mean || !p->comp || !p->absmax) {
        dm_pca_free(p);
        return dm_err_oom(err);
    }
    *out = p;
    return 0;
}

void dm_pca_free(dm_pca *p)
{
    if (!p)
        return;
    free(p->sample), free(p->mean), free(p->comp), free(p->absmax);
    free(p);
}

int64_t dm_pca_seen(const dm_pca *p) { return p->seen; }

void dm_pca_offer(dm_pca *p, const float *v)
{
    int64_t i = p->seen++;
    int64_t slot = i < p->cap ? i : (int64_t)(next(&p->rng) % (uint64_t)(i + 1));
    if (slot < p->cap) {
        memcpy(p->sample + (size_t)slot * p->dim, v, sizeof(float) * p->dim);
        if (i < p->cap)
            p->n++;
    }
}

static void orthonormalise(float *v, int k, int dim)
{
    for (int a = 0; a < k; a++) {
        float *x = v + (size_t)a * dim;
        for (int b = 0; b < a; b++) {
            const float *y = v + (size_t)b * dim;
            double d = 0;
            for (int i = 0; i < dim; i++)
                d += (double)x[i] * y[i];
            for (int i = 0; i < dim; i++)
                x[i] -= (float)d * y[i];
        }
        double nn = 0;
        for (int i = 0; i < dim; i++)
            nn += (double)x[i] * x[i];
        float inv = nn > 0 ? (float)(1.0 / sqrt(nn)) : 0.0f;
        for (int i = 0; i < dim; i++)
            x[i] *= inv;
    }
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int dm_pca_fit(dm_pca *p, dm_err *err)
{
    int n = p->n, dim = p->dim;
    if (n < 2)
        return dm_err_set(err, DM_EINVAL, "PCA needs at least 2 valid patches, the run has %d", n);
    for (int d = 0; d < dim; d++)
        p->mean[d] = 0, p->absmax[d] = 0;
    for (int s = 0; s < n; s++)
        for (int d = 0; d < dim; d++) {
            float v = p->sample[(size_t)s * dim + d];
            p->mean[d] += v / (float)n;
            p->absmax[d] = fabsf(v) > p->absmax[d] ? fabsf(v) : p->absmax[d];
        }
    float *x = malloc(sizeof(float) * (size_t)n * dim), *cov = malloc(sizeof(float) * dim * dim);
    float *v = malloc(sizeof(float) * NS * dim), *w = malloc(sizeof(float) * NS * dim);
    float *proj = malloc(sizeof(float) * (size_t)n);
    if (!x || !cov || !v || !w || !proj) {
        free(x), free(cov), free(v), free(w), free(proj);
        return dm_err_oom(err);
    }
    for (int s = 0; s < n; s++)
        for (int d = 0; d < dim; d++)
            x[(size_t)s * dim + d] = p->sample[(size_t)s * dim + d] - p->mean[d];
    /* cov = XᵀX / (n-1) */
    dm_ops_sgemm(1, 0, dim, dim, n, 1.0f / (float)(n - 1), x,
                dim, x, dim, 0.0f, cov, dim);
    double trace = 0;
    for (int d = 0; d < dim; d++)
        trace += cov[(size_t)d * dim + d];
    uint64_t r = 12345;
    for (int i = 0; i < NS * dim; i++)
        v[i] = (float)((next(&r) >> 40) * (1.0 / 16777216.0)) - 0.5f;
    orthonormalise(v, NS, dim);
    for (int it = 0; it < 100; it++) { /* subspace iteration: V ← orth(V·C) */
        dm_ops_sgemm(0, 0, NS, dim, dim, 1.0f, v, dim, cov,
                    dim, 0.0f, w, dim);
        orthonormalise(w, NS, dim);
        float *t = v;
        v = w;
        w = t;
    }
    /* Rayleigh quotients order the vectors (subspace iteration converges to the top NS, not
     * necessarily sorted) */
    double lam[NS];
    dm_ops_sgemm(0, 0, NS, dim, dim, 1.0f, v, dim, cov, dim,
                0.0f, w, dim);
    for (int a = 0; a < NS; a++) {
        double d = 0;
        for (int i = 0; i < dim; i++)
            d += (double)v[(size_t)a * dim + i] * w[(size_t)a * dim + i];
        lam[a] = d;
    }
    p->explained = 0;
    for (int c = 0; c < NC && c < NS; c++) {
        int best = c;
        for (int a = c + 1; a < NS; a++)
            if (lam[a] > lam[best])
                best = a;
        double tl = lam[c];
        lam[c] = lam[best];
        lam[best] = tl;
        for (int i = 0; i < dim; i++) {
            float t = v[(size_t)c * dim + i];
            v[(size_t)c * dim + i] = v[(size_t)best * dim + i];
            v[(size_t)best * dim + i] = t;
        }
        /* sign: the largest |entry| positive, so reruns give the same colours */
        int im = 0;
        for (int i = 1; i < dim; i++)
            if (fabsf(v[(size_t)c * dim + i]) > fabsf(v[(size_t)c * dim + im]))
                im = i;
        float sg = v[(size_t)c * dim + im] < 0 ? -1.0f : 1.0f;
        for (int i = 0; i < dim; i++)
            p->comp[(size_t)c * dim + i] = sg * v[(size_t)c * dim + i];
        p->explained += trace > 0 ? lam[c] / trace : 0;
        /* display range: 2nd..98th percentile of the sample's projections */
        for (int s = 0; s < n; s++) {
            double d = 0;
            for (int i = 0; i < dim; i++)
                d += (double)x[(size_t)s * dim + i] * p->comp[(size_t)c * dim + i];
            proj[s] = (float)d;
        }
        qsort(proj, (size_t)n, sizeof *proj, cmp_f);
        p->lo[c] = proj[(int)(0.02 * (n - 1))];
        p->hi[c] = proj[(int)(0.98 * (n - 1))];
        if (p->hi[c] <= p->lo[c])
            p->hi[c] = p->lo[c] + 1e-6f;
    }
    free(x), free(cov), free(v), free(w), free(proj);
    return 0;
}

void dm_pca_rgb(const dm_pca *p, const float *v, uint8_t rgb[3])
{
    for (int c = 0; c < NC; c++) {
        double d = 0;
        for (int i = 0; i < p->dim; i++)
            d += (double)(v[i] - p->mean[i]) * p->comp[(size_t)c * p->dim + i];
        double t = (d - p->lo[c]) / (p->hi[c] - p->lo[c]);
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        rgb[c] = (uint8_t)(1 + floor(t * 254 + 0.5));
    }
}

float dm_pca_absmax(const dm_pca *p, int d) { return p->absmax[d]; }
double dm_pca_explained(const dm_pca *p) { return p->explained; }

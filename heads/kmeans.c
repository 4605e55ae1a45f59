/* heads/kmeans.c — k-means for `dinomap seg cluster` (see seg.h): k-means++ seeding from a seed,
 * Lloyd iterations to convergence, the centroids as a linear head. Every sum runs in a fixed
 * order on the calling thread, so the clusters depend on the vectors and the seed only, never on
 * threads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seg.h"

int dm_seg_head_unit(const dm_seg_head *h) { return !strcmp(h->kind, "kmeans"); }

void dm_seg_unit_rows(float *x, int n, int D)
{
    for (int i = 0; i < n; i++) {
        float *v = x + (size_t)i * D;
        double s = 0;
        for (int d = 0; d < D; d++)
            s += (double)v[d] * v[d];
        float k = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
        for (int d = 0; d < D; d++)
            v[d] *= k;
    }
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)(splitmix(s) >> 11) * (1.0 / 9007199254740992.0);
}

static float dist2(const float *a, const float *b, int D)
{
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int d = 0; d < D; d++) {
        float t = a[d] - b[d];
        s += t * t;
    }
    return s;
}

/* k-means++: each next centre drawn with probability ∝ the squared distance to the nearest
 * centre so far. */
static void seed_centres(const float *x, int n, int D, int K, uint64_t *rng, float *c, float *d2)
{
    int first = (int)(uniform(rng) * n);
    memcpy(c, x + (size_t)first * D, sizeof(float) * D);
    for (int i = 0; i < n; i++)
        d2[i] = dist2(x + (size_t)i * D, c, D);
    for (int k = 1; k < K; k++) {
        double total = 0;
        for (int i = 0; i < n; i++)
            total += d2[i];
        int pick = n - 1;
        if (total > 0) {
            double r = uniform(rng) * total, acc = 0;
            for (int i = 0; i < n; i++)
                if ((acc += d2[i]) > r) {
                    pick = i;
                    break;
                }
        } else { /* every vector sits on a centre: any one will do */
            pick = (int)(uniform(rng) * n);
        }
        float *ck = c + (size_t)k * D;
        memcpy(ck, x + (size_t)pick * D, sizeof(float) * D);
        for (int i = 0; i < n; i++) {
            float t = dist2(x + (size_t)i * D, ck, D);
            if (t < d2[i])
                d2[i] = t;
        }
    }
}

int dm_seg_kmeans(const float *x, int n, int D, int K, uint64_t seed, int max_iter,
                  dm_seg_head **out, dm_err *err)
{
    *out = NULL;
    if (K < 2 || K > 254 || K > n)
        return dm_err_set(err, DM_EINVAL, "k-means: %d clusters of %d vectors (2..254, and no "
                          "more clusters than vectors)", K, n);
    float *c = malloc(sizeof(float) * (size_t)K * D), *d2 = malloc(sizeof(float) * (size_t)n);
    double *sum = malloc(sizeof(double) * (size_t)K * D);
    int *as = malloc(sizeof(int) * (size_t)n), *cnt = malloc(sizeof(int) * (size_t)K);
    dm_seg_head *h = dm_seg_head_new(K, D);
    char info[256];
    if (!c || !d2 || !sum || !as || !cnt || !h) {
        free(c), free(d2), free(sum), free(as), free(cnt);
        dm_seg_head_free(h);
        return dm_err_oom(err);
    }
    uint64_t rng = seed;
    seed_centres(x, n, D, K, &rng, c, d2);
    for (int i = 0; i < n; i++)
        as[i] = -1;
    int it = 0;
    double inertia = 0;
    for (;;) {
        /* assignment: the nearest centre, ties to the lowest index */
        int changed = 0;
        inertia = 0;
        for (int i = 0; i < n; i++) {
            const float *v = x + (size_t)i * D;
            int best = 0;
            float bd = dist2(v, c, D);
            for (int k = 1; k < K; k++) {
                float t = dist2(v, c + (size_t)k * D, D);
                if (t < bd)
                    bd = t, best = k;
            }
            changed += as[i] != best;
            as[i] = best;
            d2[i] = bd;
            inertia += bd;
        }
        if (!changed || it == max_iter)
            break;
        it++;
        /* update: the means, in vector order */
        memset(sum, 0, sizeof(double) * (size_t)K * D);
        memset(cnt, 0, sizeof(int) * (size_t)K);
        for (int i = 0; i < n; i++) {
            const float *v = x + (size_t)i * D;
            double *s = sum + (size_t)as[i] * D;
            for (int d = 0; d < D; d++)
                s[d] += v[d];
            cnt[as[i]]++;
        }
        for (int k = 0; k < K; k++) {
            if (!cnt[k]) {
                /* an empty cluster takes the vector farthest from its centre (of a cluster that
                 * keeps another member) */
                int far = -1;
                for (int i = 0; i < n; i++)
                    if (cnt[as[i]] > 1 && (far < 0 || d2[i] > d2[far]))
                        far = i;
                if (far < 0)
                    continue;
                const float *v = x + (size_t)far * D;
                double *s = sum + (size_t)as[far] * D;
                for (int d = 0; d < D; d++)
                    s[d] -= v[d];
                cnt[as[far]]--;
                for (int d = 0; d < D; d++)
                    sum[(size_t)k * D + d] = v[d];
                cnt[k] = 1;
                as[far] = k;
                d2[far] = 0;
            }
        }
        for (int k = 0; k < K; k++)
            for (int d = 0; cnt[k] && d < D; d++)
                c[(size_t)k * D + d] = (float)(sum[(size_t)k * D + d] / cnt[k]);
    }
    for (int k = 0; k < K; k++) {
        double b = 0;
        for (int d = 0; d < D; d++) {
            float v = c[(size_t)k * D + d];
            h->w[(size_t)k * D + d] = 2.0f * v;
            b += (double)v * v;
        }
        h->b[k] = (float)-b;
        snprintf(h->cls[k].name, sizeof h->cls[k].name, "cluster %d", h->cls[k].id);
    }
    snprintf(h->kind, sizeof h->kind, "kmeans");
    snprintf(info, sizeof info, "{\"k\":%d,\"seed\":%llu,\"iterations\":%d,\"inertia\":%.9g}", K,
             (unsigned long long)seed, it, inertia);
    free(c), free(d2), free(sum), free(as), free(cnt);
    if (!(h->info = strdup(info))) {
        dm_seg_head_free(h);
        return dm_err_oom(err);
    }
    *out = h;
    return 0;
}

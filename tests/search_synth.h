/* tests/search_synth.h — clustered synthetic unit vectors for the search tests and the search
 * benchmark: nc random centres (Gaussian, unit length), each vector a centre plus noise of its
 * cluster's spread (0.6..1.4 of the centre's length; uniform noise, Gaussian enough in many
 * dimensions), normalized. Deterministic: vector i depends on the seed and i alone, so queries
 * (indices past the set's) are fresh points of the same clusters. */
#ifndef DM_SEARCH_SYNTH_H
#define DM_SEARCH_SYNTH_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct dm_synth {
    int dim, nc;
    uint64_t seed;
    float *centres;           /* [nc, dim] */
    float *spread;            /* [nc] */
} dm_synth;

static inline uint64_t dm_synth_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline double dm_synth_uniform(uint64_t *s) /* (0, 1) */
{
    return ((double)(dm_synth_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

static inline void dm_synth_unit(float *v, int dim)
{
    double s = 0;
    for (int j = 0; j < dim; j++)
        s += (double)v[j] * v[j];
    float k = (float)(1 / sqrt(s));
    for (int j = 0; j < dim; j++)
        v[j] *= k;
}

static inline int dm_synth_init(dm_synth *y, int dim, int nc, uint64_t seed)
{
    y->dim = dim, y->nc = nc, y->seed = seed;
    y->centres = malloc(sizeof(float) * (size_t)nc * dim);
    y->spread = malloc(sizeof(float) * (size_t)nc);
    if (!y->centres || !y->spread)
        return -1;
    uint64_t s = seed;
    for (int c = 0; c < nc; c++) {
        float *v = y->centres + (size_t)c * dim;
        for (int j = 0; j < dim; j++) /* Box-Muller */
            v[j] = (float)(sqrt(-2 * log(dm_synth_uniform(&s))) *
                           cos(6.283185307179586 * dm_synth_uniform(&s)));
        dm_synth_unit(v, dim);
        y->spread[c] = (float)(0.6 + 0.8 * dm_synth_uniform(&s));
    }
    return 0;
}

static inline void dm_synth_free(dm_synth *y)
{
    free(y->centres), free(y->spread);
}

/* Vector i into v [dim]; its cluster. */
static inline int dm_synth_vector(const dm_synth *y, uint64_t i, float *v)
{
    uint64_t s = y->seed ^ (i * 0xD1B54A32D192ED03ull);
    dm_synth_next(&s);
    int c = (int)(dm_synth_next(&s) % (uint64_t)y->nc);
    const float *m = y->centres + (size_t)c * y->dim;
    /* uniform on [-a, a] has variance a²/3: a = spread · sqrt(3 / dim) gives noise of length
     * about spread */
    float a = y->spread[c] * (float)sqrt(3.0 / y->dim);
    for (int j = 0; j < y->dim; j++)
        v[j] = m[j] + a * (float)(2 * dm_synth_uniform(&s) - 1);
    dm_synth_unit(v, y->dim);
    return c;
}

#endif

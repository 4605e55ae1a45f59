/* models/cpu/pool.h — a small persistent thread pool for the elementwise parts of the forward
 * pass (softmax, GELU, LayerNorm...). OpenBLAS parallelises the GEMMs itself; this spreads the
 * rest over the same number of cores so it does not run on one core while the others wait. */
#ifndef DM_CPU_POOL_H
#define DM_CPU_POOL_H

#include <stdint.h>

typedef struct dm_pool dm_pool;
/* fn processes items [begin, end) of a job. */
typedef void (*dm_pool_fn)(void *ctx, int64_t begin, int64_t end);

int dm_pool_create(int nthreads, dm_pool **out); /* nthreads includes the caller */
/* Splits [0, n) into contiguous chunks, one per thread (the caller runs one), and waits. */
void dm_pool_run(dm_pool *p, dm_pool_fn fn, void *ctx, int64_t n);
void dm_pool_free(dm_pool *p); /* NULL-safe */

#endif

/* src/base/pool.c — the thread pool (see base.h). Workers sleep on a condition variable between
 * jobs. */
#include "base.h"

#include <pthread.h>
#include <stdlib.h>

struct dm_pool {
    int n; /* threads including the caller */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    uint64_t gen;   /* job generation; workers run when it changes */
    int pending;    /* workers still running the current job */
    int quit;
    dm_pool_fn fn;
    void *ctx;
    int64_t items;
};

typedef struct worker_arg {
    dm_pool *p;
    int index;
} worker_arg;

static void chunk(const dm_pool *p, int i, int64_t *b, int64_t *e)
{
    *b = p->items * i / p->n;
    *e = p->items * (i + 1) / p->n;
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    dm_pool *p = wa->p;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit)
            pthread_cond_wait(&p->start, &p->mu);
        if (p->quit)
            break;
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        int64_t b, e;
        chunk(p, index, &b, &e);
        if (b < e)
            p->fn(p->ctx, b, e);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int dm_pool_create(int nthreads, dm_pool **out)
{
    dm_pool *p = calloc(1, sizeof *p);
    if (!p)
        return -1;
    p->n = nthreads < 1 ? 1 : nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    p->tid = calloc((size_t)p->n, sizeof *p->tid);
    if (!p->tid) {
        dm_pool_free(p);
        return -1;
    }
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa || pthread_create(&p->tid[i], NULL, worker, wa ? (wa->p = p, wa->index = i, wa)
                                                              : NULL) != 0) {
            free(wa);
            p->n = i; /* the threads started so far are joined by free */
            dm_pool_free(p);
            return -1;
        }
    }
    *out = p;
    return 0;
}

void dm_pool_run(dm_pool *p, dm_pool_fn fn, void *ctx, int64_t n)
{
    if (n <= 0)
        return;
    if (p->n == 1 || n == 1) {
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->items = n;
    p->pending = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    int64_t b, e;
    chunk(p, 0, &b, &e);
    if (b < e)
        fn(ctx, b, e);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void dm_pool_free(dm_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        if (p->tid && p->tid[i])
            pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    free(p->tid);
    free(p);
}

int dm_pool_threads(const dm_pool *p) { return p ? p->n : 1; }

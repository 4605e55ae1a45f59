/* tiling/pipeline.c — see pipeline.h. Three FIFO queues of job pointers: free → (reader) → ready
 * → (inference) → done → (writer) → free. The first error stops every stage. */
#include "pipeline.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct queue {
    dm_job **v;
    int cap, head, n;
    int closed;
    pthread_mutex_t *mu;
    pthread_cond_t cv;
} queue;

typedef struct run {
    const dm_pipeline_fns *f;
    int n, batch;
    pthread_mutex_t mu;
    queue free_q, ready_q, done_q;
    int failed;
    dm_err err;
} run;

static int q_init(queue *q, int cap, pthread_mutex_t *mu)
{
    q->v = calloc((size_t)cap, sizeof *q->v);
    q->cap = cap;
    q->mu = mu;
    pthread_cond_init(&q->cv, NULL);
    return q->v ? 0 : -1;
}

static void q_free(queue *q)
{
    free(q->v);
    pthread_cond_destroy(&q->cv);
}

/* called with the mutex held */
static void q_push(queue *q, dm_job *j)
{
    q->v[(q->head + q->n++) % q->cap] = j;
    pthread_cond_broadcast(&q->cv);
}

/* blocks until an item or close/failure; returns NULL then. Mutex held. */
static dm_job *q_pop(run *r, queue *q)
{
    while (q->n == 0 && !q->closed && !r->failed)
        pthread_cond_wait(&q->cv, q->mu);
    if (r->failed || q->n == 0)
        return NULL;
    dm_job *j = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->n--;
    return j;
}

static void fail(run *r, const dm_err *e)
{
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = 1;
        r->err = *e;
    }
    pthread_cond_broadcast(&r->free_q.cv);
    pthread_cond_broadcast(&r->ready_q.cv);
    pthread_cond_broadcast(&r->done_q.cv);
    pthread_mutex_unlock(&r->mu);
}

static void *reader(void *arg)
{
    run *r = arg;
    dm_err e = { 0 };
    for (int i = 0; i < r->n; i++) {
        pthread_mutex_lock(&r->mu);
        dm_job *j = q_pop(r, &r->free_q);
        pthread_mutex_unlock(&r->mu);
        if (!j)
            break;
        j->index = i;
        j->skip = 0;
        if (r->f->read(r->f->ctx, j, &e)) {
            fail(r, &e);
            break;
        }
        pthread_mutex_lock(&r->mu);
        q_push(&r->ready_q, j);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_lock(&r->mu);
    r->ready_q.closed = 1;
    pthread_cond_broadcast(&r->ready_q.cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void *writer(void *arg)
{
    run *r = arg;
    dm_err e = { 0 };
    for (;;) {
        pthread_mutex_lock(&r->mu);
        dm_job *j = q_pop(r, &r->done_q);
        pthread_mutex_unlock(&r->mu);
        if (!j)
            break;
        if (r->f->write(r->f->ctx, j, &e)) {
            fail(r, &e);
            break;
        }
        pthread_mutex_lock(&r->mu);
        q_push(&r->free_q, j);
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

int dm_pipeline_run(const dm_pipeline_fns *f, int n, int batch, int depth, dm_err *err)
{
    if (n <= 0)
        return 0;
    batch = batch < 1 ? 1 : batch;
    depth = depth < 1 ? 1 : depth;
    int slots = batch + 2 * depth; /* a batch in inference, `depth` waiting on each side */
    run r;
    memset(&r, 0, sizeof r);
    r.f = f;
    r.n = n;
    r.batch = batch;
    pthread_mutex_init(&r.mu, NULL);
    dm_job *jobs = calloc((size_t)slots, sizeof *jobs);
    dm_job **pick = calloc((size_t)batch, sizeof *pick);
    int rc = 0, made = 0;
    if (!jobs || !pick || q_init(&r.free_q, slots, &r.mu) || q_init(&r.ready_q, slots, &r.mu) ||
        q_init(&r.done_q, slots, &r.mu))
        rc = dm_err_oom(err);
    for (; !rc && made < slots; made++)
        rc = f->alloc(f->ctx, &jobs[made], err);
    for (int i = 0; !rc && i < slots; i++)
        q_push(&r.free_q, &jobs[i]);
    pthread_t tr, tw;
    int started = 0;
    if (!rc) {
        if (pthread_create(&tr, NULL, reader, &r) != 0)
            rc = dm_err_set(err, DM_ENOMEM, "cannot start the reader thread");
        else if (pthread_create(&tw, NULL, writer, &r) != 0) {
            dm_err e;
            dm_err_set(&e, DM_ENOMEM, "cannot start the writer thread");
            fail(&r, &e);
            pthread_join(tr, NULL);
            rc = e.code;
            *err = e;
        } else {
            started = 1;
        }
    }
    if (started) {
        dm_err e = { 0 };
        for (int done = 0; done < n;) {
            /* take the next batch: wait for the first job, then as many as the batch holds
             * (jobs the reader marked skip pass straight through) */
            int k = 0;
            pthread_mutex_lock(&r.mu);
            while (k < batch) {
                dm_job *j = (k == 0 || r.ready_q.n > 0 ||
                             (!r.ready_q.closed && done + k < n && k < batch))
                                ? q_pop(&r, &r.ready_q)
                                : NULL;
                if (!j)
                    break;
                pick[k++] = j;
                if (done + k >= n)
                    break;
            }
            pthread_mutex_unlock(&r.mu);
            if (k == 0)
                break;
            dm_job *run_now[k > 0 ? k : 1];
            int m = 0;
            for (int i = 0; i < k; i++)
                if (!pick[i]->skip)
                    run_now[m++] = pick[i];
            if (m && f->infer(f->ctx, run_now, m, &e)) {
                fail(&r, &e);
                break;
            }
            pthread_mutex_lock(&r.mu);
            for (int i = 0; i < k; i++)
                q_push(&r.done_q, pick[i]);
            pthread_mutex_unlock(&r.mu);
            done += k;
        }
        pthread_mutex_lock(&r.mu);
        r.done_q.closed = 1;
        pthread_cond_broadcast(&r.done_q.cv);
        pthread_mutex_unlock(&r.mu);
        pthread_join(tr, NULL);
        pthread_join(tw, NULL);
        if (r.failed) {
            *err = r.err;
            rc = r.err.code ? r.err.code : DM_EIO;
        }
    }
    for (int i = 0; i < made; i++)
        f->release(f->ctx, &jobs[i]);
    q_free(&r.free_q), q_free(&r.ready_q), q_free(&r.done_q);
    pthread_mutex_destroy(&r.mu);
    free(jobs), free(pick);
    return rc;
}

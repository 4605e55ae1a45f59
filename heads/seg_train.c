/* heads/seg_train.c — fitting a "logistic" segmentation head (see seg.h): multinomial logistic
 * regression (softmax) on patch feature vectors with class weights inversely proportional to the
 * class frequencies and an L2 penalty, minimised by L-BFGS.
 *
 * The objective, on the standardized features z = (x − μ) / σ (μ, σ per dimension over the
 * training patches), with V [C, D] and c [C] the head in that space and w_k = N / (C · n_k):
 *   L = Σ_n w_{y_n} · (log Σ_k e^{s_nk} − s_{n,y_n}) / Σ_n w_{y_n} + λ/2 · |V|²,  s_n = V·z_n + c.
 * Standardizing makes λ mean the same whatever the backbone's feature scale and conditions the
 * problem; the result is folded back into the head for raw features: W = V / σ, b = c − W·μ.
 *
 * Deterministic: the rows are cut into blocks by their count alone, each block's sums are made on
 * one thread (GEMMs through models/ops.h) and added in block order, in double, so the head is the
 * same bit for bit whatever the number of threads. */
#include "seg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../models/ops.h"

#define LBFGS_M 10         /* correction pairs kept */
#define GRAD_TOL 1e-6      /* stop when every component of the gradient is below this */
#define ARMIJO 1e-4        /* sufficient decrease of the backtracking line search */

typedef struct fit {
    const float *X;        /* [N, D], standardized */
    const int *y;
    int N, D, C, block, nblocks;
    const double *cw;      /* [C] class weights / Σ weights */
    float *Vf, *cf;        /* [C, D], [C]: the point evaluated, as floats for the GEMMs */
    float *gpart;          /* [nblocks, C, D] each block's Gᵀ·X */
    double *lpart, *cpart; /* [nblocks], [nblocks, C]: each block's loss and Σ G */
    int64_t *hits;         /* [nblocks] right answers (predict pass) */
    int predict;           /* 1: count right answers only */
} fit;

enum { SLOT_S = DM_OPS_SLOT_USER };

/* One thread's share of the blocks: scores, softmax, the block's loss and gradient parts. */
static void eval_job(void *ctx, int tid, int nthreads)
{
    fit *f = ctx;
    int64_t b0, b1;
    dm_ops_share(f->nblocks, tid, nthreads, &b0, &b1);
    float *S = NULL;
    for (int64_t k = b0; k < b1; k++) {
        int r0 = (int)k * f->block, n = f->N - r0 < f->block ? f->N - r0 : f->block;
        const float *X = f->X + (size_t)r0 * f->D;
        if (!S)
            S = malloc(sizeof *S * (size_t)f->block * f->C);
        if (!S) { /* out of memory: this block reads as infinitely bad, the search backs off */
            f->lpart[k] = INFINITY;
            continue;
        }
        for (int i = 0; i < n; i++)
            memcpy(S + (size_t)i * f->C, f->cf, sizeof *S * (size_t)f->C);
        dm_ops_sgemm(0, 1, n, f->C, f->D, 1.0f, X, f->D, f->Vf, f->D, 1.0f, S, f->C);
        double loss = 0, *cp = f->cpart + (size_t)k * f->C;
        int64_t hits = 0;
        memset(cp, 0, sizeof *cp * (size_t)f->C);
        for (int i = 0; i < n; i++) {
            float *s = S + (size_t)i * f->C;
            int yi = f->y[r0 + i], arg = 0;
            double mx = s[0], sum = 0;
            for (int c = 1; c < f->C; c++)
                if (s[c] > mx)
                    mx = s[c], arg = c;
            hits += arg == yi;
            if (f->predict)
                continue;
            for (int c = 0; c < f->C; c++)
                sum += exp((double)s[c] - mx);
            double lse = mx + log(sum), wy = f->cw[yi];
            loss += wy * (lse - s[yi]);
            for (int c = 0; c < f->C; c++) { /* G = w · (p − onehot), in place of the scores */
                double g = wy * (exp((double)s[c] - lse) - (c == yi));
                cp[c] += g;
                s[c] = (float)g;
            }
        }
        f->hits[k] = hits;
        if (f->predict)
            continue;
        f->lpart[k] = loss;
        dm_ops_sgemm(1, 0, f->C, f->D, n, 1.0f, S, f->C, X, f->D, 0.0f,
                     f->gpart + (size_t)k * f->C * f->D, f->D);
    }
    free(S);
}

static void run(dm_ops *ws, fit *f)
{
    if (ws)
        dm_ops_run(ws, eval_job, f);
    else
        eval_job(f, 0, 1);
}

/* L and its gradient g [C·D + C] at theta [C·D + C] (V then c). */
static double eval(dm_ops *ws, fit *f, const double *theta, double l2, double *g)
{
    int CD = f->C * f->D;
    for (int i = 0; i < CD; i++)
        f->Vf[i] = (float)theta[i];
    for (int c = 0; c < f->C; c++)
        f->cf[c] = (float)theta[CD + c];
    f->predict = 0;
    run(ws, f);
    double loss = 0, pen = 0;
    memset(g, 0, sizeof *g * (size_t)(CD + f->C));
    for (int k = 0; k < f->nblocks; k++) { /* in block order: the same sums on any threads */
        loss += f->lpart[k];
        const float *gp = f->gpart + (size_t)k * CD;
        for (int i = 0; i < CD; i++)
            g[i] += gp[i];
        for (int c = 0; c < f->C; c++)
            g[CD + c] += f->cpart[(size_t)k * f->C + c];
    }
    for (int i = 0; i < CD; i++) {
        pen += theta[i] * theta[i];
        g[i] += l2 * theta[i];
    }
    return loss + 0.5 * l2 * pen;
}

static double dot(const double *a, const double *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static double amax(const double *a, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* Minimises L from theta = 0 (every class equally likely); theta holds the result. */
static void lbfgs(dm_ops *ws, fit *f, double l2, int max_iter, double *theta,
                  dm_seg_fit_result *r)
{
    int n = f->C * f->D + f->C, m = 0, head = 0;
    double *g = calloc((size_t)n, sizeof *g), *d = calloc((size_t)n, sizeof *d);
    double *xt = calloc((size_t)n, sizeof *xt), *gt = calloc((size_t)n, sizeof *gt);
    double *s = calloc((size_t)n * LBFGS_M, sizeof *s), *yv = calloc((size_t)n * LBFGS_M,
                                                                       sizeof *yv);
    double rho[LBFGS_M], alpha[LBFGS_M];
    r->iterations = 0;
    r->converged = 0;
    if (!g || !d || !xt || !gt || !s || !yv) {
        r->loss = NAN;
        goto out;
    }
    double fx = eval(ws, f, theta, l2, g);
    for (int it = 0; it < max_iter; it++) {
        if (amax(g, n) < GRAD_TOL) {
            r->converged = 1;
            break;
        }
        /* the two-loop recursion: d = −H·g */
        for (int i = 0; i < n; i++)
            d[i] = -g[i];
        for (int j = 0; j < m; j++) {
            int k = (head - 1 - j + LBFGS_M) % LBFGS_M;
            alpha[k] = rho[k] * dot(s + (size_t)k * n, d, n);
            for (int i = 0; i < n; i++)
                d[i] -= alpha[k] * yv[(size_t)k * n + i];
        }
        if (m) {
            int k = (head - 1 + LBFGS_M) % LBFGS_M;
            double gamma = dot(s + (size_t)k * n, yv + (size_t)k * n, n) /
                           dot(yv + (size_t)k * n, yv + (size_t)k * n, n);
            for (int i = 0; i < n; i++)
                d[i] *= gamma;
        } else { /* the first step: at most 1 along the steepest descent */
            double gm = amax(g, n);
            for (int i = 0; i < n; i++)
                d[i] /= gm > 1 ? gm : 1;
        }
        for (int j = m - 1; j >= 0; j--) {
            int k = (head - 1 - j + LBFGS_M) % LBFGS_M;
            double beta = rho[k] * dot(yv + (size_t)k * n, d, n);
            for (int i = 0; i < n; i++)
                d[i] += (alpha[k] - beta) * s[(size_t)k * n + i];
        }
        double gd = dot(g, d, n);
        if (!(gd < 0)) { /* not a descent direction: forget the curvature and go downhill */
            m = 0;
            for (int i = 0; i < n; i++)
                d[i] = -g[i];
            gd = -dot(g, g, n);
        }
        double t = 1, ft = 0;
        int ok = 0;
        for (int ls = 0; ls < 40 && !ok; ls++, t *= 0.5) {
            for (int i = 0; i < n; i++)
                xt[i] = theta[i] + t * d[i];
            ft = eval(ws, f, xt, l2, gt);
            ok = ft <= fx + ARMIJO * t * gd;
        }
        if (!ok)
            break; /* no decrease left at float precision: as good as it gets */
        r->iterations = it + 1;
        int k = head;
        double sy = 0, yy = 0;
        for (int i = 0; i < n; i++) {
            s[(size_t)k * n + i] = xt[i] - theta[i];
            yv[(size_t)k * n + i] = gt[i] - g[i];
        }
        sy = dot(s + (size_t)k * n, yv + (size_t)k * n, n);
        yy = dot(yv + (size_t)k * n, yv + (size_t)k * n, n);
        if (sy > 1e-12 * yy && yy > 0) { /* keep only pairs with positive curvature */
            rho[k] = 1.0 / sy;
            head = (head + 1) % LBFGS_M;
            m = m < LBFGS_M ? m + 1 : LBFGS_M;
        }
        double df = fx - ft;
        memcpy(theta, xt, sizeof *theta * (size_t)n);
        memcpy(g, gt, sizeof *g * (size_t)n);
        fx = ft;
        if (df <= 1e-12 * (fabs(fx) > 1 ? fabs(fx) : 1)) {
            r->converged = 1;
            break;
        }
    }
    r->loss = fx;
    r->grad = amax(g, n);
out:
    free(g), free(d), free(xt), free(gt), free(s), free(yv);
}

int dm_seg_fit(dm_seg_head *h, float *X, const int *y, int N, const dm_seg_fit_opts *o,
               dm_ops *ws, dm_seg_fit_result *r, dm_err *err)
{
    int C = h->C, D = h->D;
    memset(r, 0, sizeof *r);
    if (N < 1 || C < 2)
        return dm_err_set(err, DM_EINVAL, "a head needs at least 2 classes and 1 patch");
    if (!(o->l2 >= 0) || o->max_iter < 1)
        return dm_err_set(err, DM_EINVAL, "L2 weight %g, %d iterations: expected λ >= 0 and at "
                          "least 1 iteration", o->l2, o->max_iter);
    int64_t *cnt = calloc((size_t)C, sizeof *cnt);
    double *mu = calloc((size_t)D, sizeof *mu), *sd = calloc((size_t)D, sizeof *sd);
    double *cw = calloc((size_t)C, sizeof *cw);
    int rc = cnt && mu && sd && cw ? 0 : dm_err_oom(err);
    for (int i = 0; !rc && i < N; i++) {
        if (y[i] < 0 || y[i] >= C)
            rc = dm_err_set(err, DM_EINVAL, "patch %d: class index %d outside 0..%d", i, y[i],
                            C - 1);
        else
            cnt[y[i]]++;
    }
    for (int c = 0; !rc && c < C; c++)
        if (!cnt[c])
            rc = dm_err_set(err, DM_EINVAL, "class %d has no training patch", h->cls[c].id);
    /* class weights N / (C · n_k), divided by their sum over the patches (= N) */
    for (int c = 0; !rc && c < C; c++)
        cw[c] = 1.0 / ((double)C * (double)cnt[c]);
    /* standardize in place: two passes in double, row order */
    for (int i = 0; !rc && i < N; i++)
        for (int j = 0; j < D; j++)
            mu[j] += X[(size_t)i * D + j];
    for (int j = 0; !rc && j < D; j++)
        mu[j] /= N;
    for (int i = 0; !rc && i < N; i++)
        for (int j = 0; j < D; j++) {
            double v = X[(size_t)i * D + j] - mu[j];
            sd[j] += v * v;
        }
    for (int j = 0; !rc && j < D; j++) {
        sd[j] = sqrt(sd[j] / N);
        if (!(sd[j] > 1e-12)) /* a constant dimension: nothing to learn from it */
            sd[j] = 1;
    }
    for (int i = 0; !rc && i < N; i++)
        for (int j = 0; j < D; j++)
            X[(size_t)i * D + j] = (float)((X[(size_t)i * D + j] - mu[j]) / sd[j]);
    fit f = { X, y, N, D, C, 1024, 0, cw, NULL, NULL, NULL, NULL, NULL, NULL, 0 };
    /* at most 256 blocks (their gradient parts are kept), cut by N alone */
    if ((N + f.block - 1) / f.block > 256)
        f.block = (N + 255) / 256;
    f.nblocks = (N + f.block - 1) / f.block;
    int n = C * D + C;
    double *theta = rc ? NULL : calloc((size_t)n, sizeof *theta);
    f.Vf = malloc(sizeof(float) * (size_t)C * D), f.cf = malloc(sizeof(float) * (size_t)C);
    f.gpart = malloc(sizeof(float) * (size_t)f.nblocks * C * D);
    f.lpart = calloc((size_t)f.nblocks, sizeof *f.lpart);
    f.cpart = calloc((size_t)f.nblocks * C, sizeof *f.cpart);
    f.hits = calloc((size_t)f.nblocks, sizeof *f.hits);
    if (!rc && (!theta || !f.Vf || !f.cf || !f.gpart || !f.lpart || !f.cpart || !f.hits))
        rc = dm_err_oom(err);
    if (!rc) {
        lbfgs(ws, &f, o->l2, o->max_iter, theta, r);
        if (!isfinite(r->loss))
            rc = dm_err_set(err, DM_ENOMEM, "the fit ran out of memory (%d patches × %d "
                            "dimensions)", N, D);
    }
    if (!rc) {
        /* the training accuracy at the result, then the head for raw features */
        for (int i = 0; i < C * D; i++)
            f.Vf[i] = (float)theta[i];
        for (int c = 0; c < C; c++)
            f.cf[c] = (float)theta[C * D + c];
        f.predict = 1;
        run(ws, &f);
        int64_t hits = 0;
        for (int k = 0; k < f.nblocks; k++)
            hits += f.hits[k];
        r->train_accuracy = (double)hits / N;
        for (int c = 0; c < C; c++) {
            double b = theta[C * D + c];
            for (int j = 0; j < D; j++) {
                double w = theta[(size_t)c * D + j] / sd[j];
                h->w[(size_t)c * D + j] = (float)w;
                b -= w * mu[j];
            }
            h->b[c] = (float)b;
        }
    }
    free(theta), free(f.Vf), free(f.cf), free(f.gpart), free(f.lpart), free(f.cpart);
    free(f.hits), free(cnt), free(mu), free(sd), free(cw);
    return rc;
}

int dm_seg_predict(const dm_seg_head *h, const float *X, int N, int *pred, dm_err *err)
{
    enum { B = 1024 };
    float *lg = malloc(sizeof *lg * (size_t)B * h->C);
    if (!lg)
        return dm_err_oom(err);
    for (int r0 = 0; r0 < N; r0 += B) {
        int n = N - r0 < B ? N - r0 : B;
        dm_seg_logits(h, X + (size_t)r0 * h->D, n, lg);
        for (int i = 0; i < n; i++) {
            const float *s = lg + (size_t)i * h->C;
            int a = 0;
            for (int c = 1; c < h->C; c++)
                a = s[c] > s[a] ? c : a;
            pred[r0 + i] = a;
        }
    }
    free(lg);
    return 0;
}

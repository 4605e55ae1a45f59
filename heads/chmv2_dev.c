/* heads/chmv2_dev.c — the CHMv2 decoder through a device's operators (models/dops.h): the same
 * steps, in the same order and on the same map layout (dm_chm_maps_carve) as dm_chm_decode in
 * chmv2.c, with the head's weights, maps and (through dm_chm_run) the backbone's tap tokens in
 * device memory. Only the heights (and the logits, when asked for) come back to the host.
 * Differences from the CPU decoder: the readout and its 1×1 projection run as whole-map products
 * instead of chunks of tokens; the head's last two steps run in bands of output rows made by the
 * device (the CPU streams them through a per-band callback); the final norm of the taps works
 * on the device's copy (the caller's tokens are not normed in place). */
#include <stdlib.h>
#include <string.h>

#include "chmv2_internal.h"

#define TAIL_CAP ((size_t)16 << 20) /* floats of one band of the head's last two steps */

typedef struct dm_chm_dev {
    dm_dops d;
    dm_backend *be;            /* whose forward writes the taps on the device, or NULL */
    int prec;
    float *pool;               /* weights: the head's tensors, the final norm, the bins */
    float *own[MAX_OWN];
    float *norm_w, *norm_b, *bins;
    float *arena, *tok, *Y, *cb, *tail, *height, *logits;
    size_t arena_n, tok_n, Y_n, cb_n, tail_n, height_n, logits_n;
} chm_dev;

static size_t r64(size_t n) { return (n + 63) & ~(size_t)63; }

/* The device copy of a host weight pointer (any address inside one of the head's tensors). */
static float *W(const dm_chm *h, const float *p)
{
    if (p == h->bins)
        return h->dev->bins;
    for (int i = 0; i < h->nown; i++)
        if (p >= h->own[i] && p < h->own[i] + h->own_n[i])
            return h->dev->own[i] + (p - h->own[i]);
    return NULL; /* not a head weight: a bug, caught by the first operator that reads it */
}

static int grow(chm_dev *v, float **p, size_t *cap, size_t n, dm_err *err)
{
    if (*cap >= n)
        return 0;
    v->d.release(v->d.ctx, *p);
    *p = NULL;
    *cap = 0;
    int rc = v->d.alloc(v->d.ctx, (n ? n : 1) * sizeof(float), (void **)p, err);
    if (!rc)
        *cap = n;
    return rc;
}

void dm_chm_dev_free(dm_chm *h)
{
    chm_dev *v = h->dev;
    if (!v)
        return;
    float *bufs[] = { v->pool, v->arena, v->tok, v->Y, v->cb, v->tail, v->height, v->logits };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        v->d.release(v->d.ctx, bufs[i]);
    free(v);
    h->dev = NULL;
}

int dm_chm_dev_owns(const dm_chm *h, const dm_backend *be)
{
    return h->dev && be && h->dev->be == be;
}

int dm_chm_on_device(const dm_chm *h) { return h->dev != NULL; }

int dm_chm_use_dops(dm_chm *h, const dm_dops *d, dm_backend *be, dm_err *err)
{
    dm_chm_dev_free(h);
    chm_dev *v = calloc(1, sizeof *v);
    if (!v)
        return dm_err_oom(err);
    v->d = *d;
    v->be = be;
    const dm_model *m = h->m;
    size_t n = 2 * r64((size_t)h->D) + r64((size_t)h->nbins);
    for (int i = 0; i < h->nown; i++)
        n += r64(h->own_n[i]);
    int rc = v->d.alloc(v->d.ctx, n * sizeof(float), (void **)&v->pool, err);
    float *p = v->pool;
    for (int i = 0; !rc && i < h->nown; i++) {
        v->own[i] = p;
        rc = v->d.put(v->d.ctx, p, h->own[i], h->own_n[i] * sizeof(float), err);
        p += r64(h->own_n[i]);
    }
    if (!rc) {
        v->norm_w = p, v->norm_b = p + r64((size_t)h->D), v->bins = p + 2 * r64((size_t)h->D);
        size_t D4 = (size_t)h->D * sizeof(float);
        if (!(rc = v->d.put(v->d.ctx, v->norm_w, m->norm_w, D4, err)) &&
            !(rc = v->d.put(v->d.ctx, v->norm_b, m->norm_b, D4, err)))
            rc = v->d.put(v->d.ctx, v->bins, h->bins, (size_t)h->nbins * sizeof(float), err);
    }
    v->prec = dm_ops_precision(h->ws);
    if (!rc)
        rc = v->d.set_precision(v->d.ctx, v->prec, err);
    if (!rc)
        rc = v->d.sync(v->d.ctx, err);
    h->dev = v;
    if (rc)
        dm_chm_dev_free(h);
    return rc;
}

int dm_chm_use_backend(dm_chm *h, dm_backend *be, dm_err *err)
{
    dm_dops d;
    dm_err e = { 0 };
    if (dm_backend_dops(be, &d, &e)) /* no device operators: the head stays on the CPU */
        return dm_err_set(err, DM_EUNSUPPORTED, "%s", e.msg);
    return dm_chm_use_dops(h, &d, be, err);
}

int dm_chm_dev_set_precision(dm_chm *h, int precision, dm_err *err)
{
    int rc = h->dev->d.set_precision(h->dev->d.ctx, precision, err);
    if (!rc)
        h->dev->prec = precision;
    return rc;
}

/* --- the decoder ---------------------------------------------------------------------------- */

static int conv(const chm_dev *v, const float *in, int cin, int H, int W_, int up2, const float *w,
                const float *bias, int cout, int k, int stride, int pad, int flags, float *out,
                dm_err *err)
{
    dm_conv_spec s = { in, cin, H, W_, up2, w, bias, cout, k, stride, pad, flags, out, NULL,
                       NULL };
    return v->d.conv(v->d.ctx, &s, 0, 0, err);
}

static int rcu_run(const dm_chm *h, const rcu *r, const float *src, float *x, float *tmp, int H,
               int W_, dm_err *err)
{
    const chm_dev *v = h->dev;
    int F = h->F;
    int rc = conv(v, src, F, H, W_, 0, W(h, r->wa), W(h, r->ba), F, 3, 1, 1, DM_CONV_RELU_IN,
                  tmp, err);
    if (!rc)
        rc = conv(v, tmp, F, H, W_, 0, W(h, r->wb), W(h, r->bb), F, 3, 1, 1,
                  DM_CONV_RELU_IN | DM_CONV_ACCUM, x, err);
    return rc;
}

/* Reassemble + channel conv of tap k (chmv2.c's reassemble) */
static int reassemble(dm_chm *h, int k, const float *tok, int gh, int gw, float *P, float *Rb,
                      float *G, dm_err *err)
{
    chm_dev *v = h->dev;
    void *c = v->d.ctx;
    int D = h->D, hw = gh * gw, C = h->C[k], rc;
    const float *cls = tok, *patch = tok + (size_t)(1 + h->m->cfg.n_storage) * D;
    const float *ro = W(h, h->ro_w[k]);
    /* cb = b + Wcls·cls; Y = GELU(patch·Wpatchᵀ + cb); P = Wp·Yᵀ + bp */
    if ((rc = v->d.copy(c, v->cb, W(h, h->ro_b[k]), (size_t)D * sizeof(float), err)) ||
        (rc = v->d.sgemm(c, 0, 1, 1, D, D, 1.0f, cls, D, ro + D, 2 * D, 1.0f, v->cb, D, err)) ||
        (rc = v->d.sgemm(c, 0, 1, hw, D, D, 1.0f, patch, D, ro, 2 * D, 0.0f, v->Y, D, err)) ||
        (rc = v->d.bias_gelu(c, v->Y, hw, D, v->cb, err)) ||
        (rc = v->d.fill_rows(c, P, C, hw, hw, W(h, h->pj_b[k]), err)) ||
        (rc = v->d.sgemm(c, 0, 1, C, hw, D, 1.0f, W(h, h->pj_w[k]), D, v->Y, D, 1.0f, P, hw,
                         err)))
        return rc;
    const float *R = P;
    int rh = gh, rw = gw;
    if (k == 0 || k == 1) {
        int f = k == 0 ? 4 : 2;
        rc = v->d.conv_t(c, P, C, gh, gw, W(h, h->rs_w[k]), W(h, h->rs_b[k]), C, f, Rb, err);
        R = Rb, rh = f * gh, rw = f * gw;
    } else if (k == 3) {
        rc = conv(v, P, C, gh, gw, 0, W(h, h->rs_w[k]), W(h, h->rs_b[k]), C, 3, 2, 1, 0, Rb, err);
        R = Rb, rh = (gh + 1) / 2, rw = (gw + 1) / 2;
    }
    if (!rc)
        rc = conv(v, R, C, rh, rw, 0, W(h, h->cv_w[k]), NULL, h->F, 3, 1, 1, 0, G, err);
    return rc;
}

/* The decoder on normed taps in device memory; heights (and logits) left on the device in
 * v->height (v->logits). */
static int decode(dm_chm *h, const float *const taps[DM_CHM_TAPS], int gh, int gw, int want_lg,
                  int want_ht, dm_err *err)
{
    chm_dev *v = h->dev;
    void *c = v->d.ctx;
    int F = h->F, a = (gh + 1) / 2, b = (gw + 1) / 2, rc;
    int gsz_h[4], gsz_w[4];
    dm_chm_gsize(gh, gw, gsz_h, gsz_w);
    int Ho = 32 * a, Wo = 32 * b;
    size_t npix = (size_t)Ho * Wo;
    /* rows of the head's last two steps per band: the 3×3 conv's output and (without logits
     * asked for) the band's logits */
    size_t per_row = (size_t)Wo * (h->H2 + (want_lg ? 0 : h->nbins));
    int nr = (int)(TAIL_CAP / per_row);
    nr = nr < 1 ? 1 : nr > Ho ? Ho : nr;
    if ((rc = grow(v, &v->arena, &v->arena_n, dm_chm_maps_size(h, gh, gw), err)) ||
        (rc = grow(v, &v->Y, &v->Y_n, (size_t)gh * gw * h->D, err)) ||
        (rc = grow(v, &v->cb, &v->cb_n, (size_t)h->D, err)) ||
        (rc = grow(v, &v->tail, &v->tail_n, per_row * nr, err)) ||
        (rc = grow(v, &v->height, &v->height_n, want_ht ? npix : 1, err)) ||
        (want_lg && (rc = grow(v, &v->logits, &v->logits_n, (size_t)h->nbins * npix, err))))
        return rc;
    dm_chm_maps mp;
    dm_chm_maps_carve(h, gh, gw, v->arena, &mp);
    for (int k = 0; k < 4; k++)
        if ((rc = reassemble(h, k, taps[k], gh, gw, mp.P, mp.Rb, mp.G[k], err)))
            return rc;
    float *cur = mp.G[3], *nxt = mp.X;
    int ch = a, cw = b;
    for (int j = 0; j < 4; j++) {
        const fusion *fu = &h->fu[j];
        if (j > 0) {
            int k = 3 - j;
            const float *s = mp.G[k];
            if (gsz_h[k] != ch || gsz_w[k] != cw) {
                if ((rc = v->d.resize(c, mp.G[k], F, gsz_h[k], gsz_w[k], mp.S, ch, cw, 0, err)))
                    return rc;
                s = mp.S;
            }
            if ((rc = v->d.add(c, cur, s, (int64_t)F * ch * cw, err)) ||
                (rc = rcu_run(h, &fu->r1, s, cur, mp.T, ch, cw, err)))
                return rc;
        }
        if ((rc = rcu_run(h, &fu->r2, cur, cur, mp.T, ch, cw, err)) ||
            (rc = conv(v, cur, F, ch, cw, 1, W(h, fu->pw), W(h, fu->pb), F, 1, 1, 0, 0, nxt,
                       err)))
            return rc;
        ch *= 2, cw *= 2;
        cur = nxt;
        nxt = nxt == mp.X ? mp.X2 : mp.X;
    }
    if ((rc = conv(v, cur, F, ch, cw, 0, W(h, h->hd_w[0]), W(h, h->hd_b[0]), h->H1, 3, 1, 1, 0,
                   mp.A, err)))
        return rc;
    /* ×2 (align_corners) → 3×3 → ReLU → 1×1 to the bins → heights, in bands of output rows */
    for (int y0 = 0; y0 < Ho; y0 += nr) {
        int n = Ho - y0 < nr ? Ho - y0 : nr;
        size_t nc = (size_t)n * Wo;
        float *T2 = v->tail, *L = want_lg ? v->logits + (size_t)y0 * Wo : T2 + (size_t)h->H2 * nc;
        int64_t ldl = want_lg ? (int64_t)npix : (int64_t)nc;
        dm_conv_spec s = { mp.A, h->H1, ch, cw, 1, W(h, h->hd_w[1]), W(h, h->hd_b[1]), h->H2, 3,
                           1, 1, DM_CONV_RELU_OUT, T2, NULL, NULL };
        if ((rc = v->d.conv(c, &s, y0, n, err)) ||
            (rc = v->d.fill_rows(c, L, h->nbins, (int64_t)nc, ldl, W(h, h->hd_b[2]), err)) ||
            (rc = v->d.sgemm(c, 0, 0, h->nbins, (int)nc, h->H2, 1.0f, W(h, h->hd_w[2]), h->H2,
                             T2, (int)nc, 1.0f, L, (int)ldl, err)) ||
            (want_ht && (rc = v->d.heights(c, L, ldl, (int64_t)nc, h->nbins, v->bins,
                                           v->height + (size_t)y0 * Wo, err))))
            return rc;
    }
    return 0;
}

/* Norms the taps in v->tok (unless already normed), decodes, and brings the outputs back. */
static int finish(dm_chm *h, int gh, int gw, int norm, float *logits, float *height, dm_err *err)
{
    chm_dev *v = h->dev;
    const dm_model *m = h->m;
    int N = dm_model_tokens(m, gh * DM_PATCH, gw * DM_PATCH), rc;
    size_t n = (size_t)N * h->D;
    const float *taps[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++) {
        taps[k] = v->tok + k * n;
        if (norm && (rc = v->d.layernorm(v->d.ctx, v->tok + k * n, N, h->D, v->norm_w, v->norm_b,
                                 m->cfg.ln_eps, err)))
            return rc;
    }
    if ((rc = decode(h, taps, gh, gw, logits != NULL, height != NULL, err)))
        return rc;
    size_t npix = (size_t)32 * ((gh + 1) / 2) * 32 * ((gw + 1) / 2);
    if (logits && (rc = v->d.get(v->d.ctx, logits, v->logits,
                                 (size_t)h->nbins * npix * sizeof(float), err)))
        return rc;
    if (height && (rc = v->d.get(v->d.ctx, height, v->height, npix * sizeof(float), err)))
        return rc;
    return v->d.sync(v->d.ctx, err);
}

int dm_chm_dev_run_taps(dm_chm *h, const float *const taps[DM_CHM_TAPS], int gh, int gw,
                        int norm, float *logits, float *height, dm_err *err)
{
    if (gh < 1 || gw < 1 || gh > 8192 || gw > 8192)
        return dm_err_set(err, DM_EINVAL, "CHMv2 head: bad patch grid %d×%d", gw, gh);
    chm_dev *v = h->dev;
    size_t n = (size_t)dm_model_tokens(h->m, gh * DM_PATCH, gw * DM_PATCH) * h->D;
    int rc = grow(v, &v->tok, &v->tok_n, DM_CHM_TAPS * n, err);
    for (int k = 0; !rc && k < DM_CHM_TAPS; k++)
        rc = v->d.put(v->d.ctx, v->tok + k * n, taps[k], n * sizeof(float), err);
    return rc ? rc : finish(h, gh, gw, norm, logits, height, err);
}

int dm_chm_dev_run(dm_chm *h, dm_backend *be, const float *x, int Hp, int Wp, float *logits,
                   float *height, dm_err *err)
{
    chm_dev *v = h->dev;
    size_t n = (size_t)dm_model_tokens(h->m, Hp, Wp) * h->D;
    int rc = grow(v, &v->tok, &v->tok_n, DM_CHM_TAPS * n, err);
    if (rc)
        return rc;
    float *outs[DM_CHM_TAPS];
    for (int k = 0; k < DM_CHM_TAPS; k++)
        outs[k] = v->tok + k * n;
    dm_vit_request req = { DM_CHM_TAPS, h->taps, outs, NULL, NULL, 1 };
    if ((rc = dm_backend_forward(be, x, 1, Hp, Wp, &req, err)))
        return rc;
    return finish(h, Hp / DM_PATCH, Wp / DM_PATCH, 1, logits, height, err);
}

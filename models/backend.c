/* models/backend.c — the device names (parsed here and nowhere else), the CUDA plugin's loading
 * and its errors, the workers of a multi-GPU device, and the checks of requests before they
 * reach a backend. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_internal.h"
#include "cuda/plugin.h"
#include "vit_math.h"

/* --- device names -------------------------------------------------------------------------- */

static int parse_index(const char *s, const char *end, int *out)
{
    if (s == end || end - s > 3)
        return -1;
    int v = 0;
    for (const char *p = s; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    *out = v;
    return 0;
}

int dm_device_parse(const char *spec, dm_device *d, dm_err *err)
{
    memset(d, 0, sizeof *d);
    if (!spec || !strcmp(spec, "cpu"))
        return 0;
    if (!strcmp(spec, "auto")) {
        d->is_auto = 1;
        return 0;
    }
    if (!strcmp(spec, "cuda")) {
        d->kind = DM_DEV_CUDA;
        d->n = 1;
        return 0;
    }
    if (strncmp(spec, "cuda:", 5))
        return dm_err_set(err, DM_EINVAL, "--device %s: unknown device (cpu, cuda, cuda:N, "
                          "cuda:0,1, auto)", spec);
    d->kind = DM_DEV_CUDA;
    for (const char *p = spec + 5;;) {
        const char *c = strchr(p, ',');
        const char *end = c ? c : p + strlen(p);
        int id;
        if (parse_index(p, end, &id))
            return dm_err_set(err, DM_EINVAL, "--device %s: expected cuda:N or a list of GPU "
                              "numbers such as cuda:0,1", spec);
        for (int i = 0; i < d->n; i++)
            if (d->ids[i] == id)
                return dm_err_set(err, DM_EINVAL, "--device %s: GPU %d is listed twice", spec,
                                  id);
        if (d->n == DM_MAX_GPUS)
            return dm_err_set(err, DM_EINVAL, "--device %s: at most %d GPUs", spec,
                              DM_MAX_GPUS);
        d->ids[d->n++] = id;
        if (!c)
            break;
        p = c + 1;
    }
    return 0;
}

const char *dm_device_str(const dm_device *d, char *buf, size_t n)
{
    if (d->is_auto)
        snprintf(buf, n, "auto");
    else if (d->kind == DM_DEV_CPU)
        snprintf(buf, n, "cpu");
    else {
        size_t k = (size_t)snprintf(buf, n, "cuda:");
        for (int i = 0; i < d->n && k < n; i++)
            k += (size_t)snprintf(buf + k, n - k, "%s%d", i ? "," : "", d->ids[i]);
    }
    return buf;
}

const char *dm_device_class(const char *spec)
{
    return spec && !strncmp(spec, "cuda", 4) ? "cuda" : "cpu";
}

/* --- the plugin ---------------------------------------------------------------------------- */

static void host_log(int level, const char *msg) { dm_log(level, "%s", msg); }

static const dm_cuda_host host = { DM_CUDA_ABI, host_log, dm_tensor_read_f32, dm_tensor_release,
                                   dm_rope_tables };

typedef struct plugin {
    void *dl;
    const dm_cuda_plugin *p;
    char path[PATH_MAX];
} plugin;

/* $DINOMAP_CUDA_LIB, else libdinomap_cuda.so beside the running program */
static void plugin_path(char *out, size_t n)
{
    const char *env = getenv("DINOMAP_CUDA_LIB");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) {
        snprintf(out, n, "%s", DM_CUDA_LIB);
        return;
    }
    exe[k] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        slash[1] = 0;
    snprintf(out, n, "%s%s", slash ? exe : "", DM_CUDA_LIB);
}

static void plugin_close(plugin *pl)
{
    if (pl && pl->dl)
        dlclose(pl->dl);
    if (pl)
        pl->dl = NULL;
}

static int plugin_open(plugin *pl, dm_err *err)
{
    memset(pl, 0, sizeof *pl);
    plugin_path(pl->path, sizeof pl->path);
    if (access(pl->path, F_OK))
        return dm_err_set(err, DM_EUNSUPPORTED, "--device cuda: this dinomap has no CUDA backend "
                          "(no %s; it is built by `make` where nvcc is installed, or name it "
                          "with DINOMAP_CUDA_LIB); use --device cpu", pl->path);
    dlerror();
    pl->dl = dlopen(pl->path, RTLD_NOW | RTLD_LOCAL);
    if (!pl->dl) {
        const char *e = dlerror();
        return dm_err_set(err, DM_EUNSUPPORTED, "--device cuda: cannot load the CUDA backend %s: "
                          "%s (the CUDA runtime libraries, e.g. libcublasLt.so.13, must be "
                          "installed and on the library path; or use --device cpu)", pl->path,
                          e ? e : "unknown error");
    }
    dm_cuda_entry_fn entry;
    void *sym = dlsym(pl->dl, DM_CUDA_ENTRY);
    memcpy(&entry, &sym, sizeof entry); /* ISO C has no object → function pointer cast */
    if (!sym) {
        plugin_close(pl);
        return dm_err_set(err, DM_EUNSUPPORTED, "--device cuda: %s is not a dinomap CUDA backend "
                          "(no symbol %s); rebuild it with make", pl->path, DM_CUDA_ENTRY);
    }
    pl->p = entry(&host);
    if (!pl->p || pl->p->abi != DM_CUDA_ABI || pl->p->layout != dm_cuda_layout() ||
        !pl->p->ops || !pl->p->create || !pl->p->device_count) {
        int abi = pl->p ? pl->p->abi : -1;
        char v[32]; /* copied: the plugin's strings go with it */
        snprintf(v, sizeof v, "%s", pl->p && pl->p->version ? pl->p->version : "?");
        plugin_close(pl);
        return dm_err_set(err, DM_EUNSUPPORTED, "--device cuda: %s was built from other "
                          "sources (plugin ABI %d, dinomap %s; this dinomap %s expects ABI %d "
                          "and its own structures); rebuild both with make", pl->path, abi, v,
                          DINOMAP_VERSION, DM_CUDA_ABI);
    }
    return 0;
}

/* The plugin, and the count of GPUs it sees. */
static int plugin_gpus(plugin *pl, int *n, dm_err *err)
{
    int rc = plugin_open(pl, err);
    if (rc)
        return rc;
    *n = 0;
    if ((rc = pl->p->device_count(n, err))) {
        dm_err_prefix(err, "--device cuda");
        plugin_close(pl);
        return rc;
    }
    return 0;
}

int dm_device_pick(const char *spec, char *out, size_t n, char *why, size_t nwhy, dm_err *err)
{
    dm_device d;
    int rc = dm_device_parse(spec, &d, err);
    if (why && nwhy)
        why[0] = 0;
    if (rc)
        return rc;
    if (d.is_auto) {
        plugin pl;
        dm_err e = { 0 };
        int gpus = 0;
        d.is_auto = 0;
        if (plugin_gpus(&pl, &gpus, &e)) {
            if (why && nwhy) /* the reason without its "--device cuda: " */
                snprintf(why, nwhy, "--device auto: cpu (%s)",
                         strncmp(e.msg, "--device cuda: ", 15) ? e.msg : e.msg + 15);
        } else if (gpus == 0) {
            if (why && nwhy)
                snprintf(why, nwhy, "--device auto: cpu (the CUDA backend sees no GPU)");
            plugin_close(&pl);
        } else {
            char name[200] = "";
            if (pl.p->device_name)
                pl.p->device_name(0, name, sizeof name);
            d.kind = DM_DEV_CUDA, d.n = 1, d.ids[0] = 0;
            if (why && nwhy)
                snprintf(why, nwhy, "--device auto: cuda:0 (%s; %d GPU%s)", name, gpus,
                         gpus > 1 ? "s: cuda:0,1,... uses more" : "");
            plugin_close(&pl);
        }
    }
    dm_device_str(&d, out, n);
    return 0;
}

int dm_precision_resolve_on(const char *device, int requested, int *resolved, char *why,
                            size_t n, dm_err *err)
{
    if (strcmp(dm_device_class(device), "cuda"))
        return dm_precision_resolve(requested, resolved, why, n, err);
    if (why && n)
        why[0] = 0;
    *resolved = requested == DM_PREC_FP32 ? DM_PREC_FP32 : DM_PREC_BF16;
    if (why && n && requested == DM_PREC_AUTO)
        snprintf(why, n, "--precision auto: bf16 (GPU tensor cores, fp32 accumulation)");
    return 0;
}

int dm_ops_precision_on(const char *device, int precision)
{
    if (precision == DM_PREC_BF16 && !strcmp(dm_device_class(device), "cuda") && !dm_cpu_bf16())
        return DM_PREC_FP32;
    return precision;
}

const char *dm_cuda_describe(char *buf, size_t n)
{
    plugin pl;
    dm_err e = { 0 };
    int gpus = 0;
    if (plugin_gpus(&pl, &gpus, &e)) {
        snprintf(buf, n, "%s", strncmp(e.msg, "--device cuda: ", 15) ? e.msg : e.msg + 15);
        return buf;
    }
    size_t k = (size_t)snprintf(buf, n, "CUDA backend %s (%s): %d GPU%s", pl.path,
                                pl.p->build ? pl.p->build : "?", gpus, gpus == 1 ? "" : "s");
    for (int i = 0; i < gpus && k < n && pl.p->device_name; i++) {
        char name[200] = "";
        pl.p->device_name(i, name, sizeof name);
        k += (size_t)snprintf(buf + k, n - k, "%scuda:%d %s", i ? "; " : ": ", i, name);
    }
    plugin_close(&pl);
    return buf;
}

/* --- backends ------------------------------------------------------------------------------ */

struct dm_backend {
    const dm_backend_ops *ops;
    int nw;                     /* workers: 1, or one per GPU of a multi-GPU device */
    void *state[DM_MAX_GPUS];
    const dm_model *m;
    plugin pl;                  /* CUDA: the plugin, closed with the backend */
    char name[80];
};

int dm_backend_open(const char *device, const dm_model *m, const dm_backend_opts *o,
                    dm_backend **out, dm_err *err)
{
    *out = NULL;
    dm_device d;
    int rc = dm_device_parse(device, &d, err);
    if (rc)
        return rc;
    if (d.is_auto) {
        char pick[80], why[400];
        if ((rc = dm_device_pick(device, pick, sizeof pick, why, sizeof why, err)) ||
            (rc = dm_device_parse(pick, &d, err)))
            return rc;
        dm_info("%s", why);
    }
    dm_backend *be = calloc(1, sizeof *be);
    if (!be)
        return dm_err_oom(err);
    be->m = m;
    dm_backend_opts opt = { 0 };
    if (o)
        opt = *o;
    if (d.kind == DM_DEV_CPU) {
        be->ops = &dm_cpu_backend;
        be->nw = 1;
        snprintf(be->name, sizeof be->name, "%s", be->ops->name);
        if ((rc = be->ops->create(m, &opt, &be->state[0], err))) {
            free(be);
            return rc;
        }
        *out = be;
        return 0;
    }
    int gpus = 0;
    if ((rc = plugin_gpus(&be->pl, &gpus, err))) {
        free(be);
        return rc;
    }
    char dn[80];
    dm_device_str(&d, dn, sizeof dn);
    if (gpus == 0)
        rc = dm_err_set(err, DM_EUNSUPPORTED, "--device %s: the CUDA backend sees no GPU (none "
                        "installed, or hidden by CUDA_VISIBLE_DEVICES); use --device cpu", dn);
    for (int i = 0; !rc && i < d.n; i++)
        if (d.ids[i] >= gpus) {
            char have[40] = "cuda:0";
            if (gpus > 1)
                snprintf(have, sizeof have, "cuda:0 to cuda:%d", gpus - 1);
            rc = dm_err_set(err, DM_EINVAL, "--device %s: there is no GPU %d (this machine has "
                            "%d: %s)", dn, d.ids[i], gpus, have);
        }
    be->ops = be->pl.p->ops;
    for (int i = 0; !rc && i < d.n; i++) {
        if ((rc = be->pl.p->create(m, &opt, d.ids[i], &be->state[i], err)))
            dm_err_prefix(err, "cuda:%d", d.ids[i]);
        else
            be->nw = i + 1;
    }
    if (rc) {
        dm_backend_close(be);
        return rc;
    }
    snprintf(be->name, sizeof be->name, "%s", dn);
    *out = be;
    return 0;
}

typedef struct worker {
    dm_backend *be;
    int w;
    const float *images;
    int B, H, W;
    dm_vit_request req;
    float *lo[64];
    dm_err err;
    int rc;
} worker;

static void *worker_run(void *arg)
{
    worker *k = arg;
    k->rc = k->be->ops->forward(k->be->state[k->w], k->images, k->B, k->H, k->W, &k->req,
                                &k->err);
    return NULL;
}

/* A batch shared out between the workers in contiguous parts (the first ones one image more),
 * each in its own thread; the first failure is reported. */
static int forward_workers(dm_backend *be, const float *images, int B, int H, int W,
                           const dm_vit_request *req, dm_err *err)
{
    int nw = be->nw < B ? be->nw : B;
    if (req && req->n_layers > 64)
        return dm_err_set(err, DM_EINVAL, "at most 64 layers per request on several GPUs");
    size_t tok = (size_t)dm_model_tokens(be->m, H, W) * be->m->cfg.embed_dim;
    size_t px = (size_t)3 * H * W;
    worker *ws = calloc((size_t)nw, sizeof *ws);
    pthread_t th[DM_MAX_GPUS];
    int started[DM_MAX_GPUS] = { 0 };
    if (!ws)
        return dm_err_oom(err);
    for (int w = 0, b0 = 0; w < nw; w++) {
        worker *k = &ws[w];
        int nb = B / nw + (w < B % nw);
        k->be = be, k->w = w, k->images = images + (size_t)b0 * px, k->B = nb, k->H = H,
        k->W = W;
        if (req) {
            size_t off = (size_t)b0 * tok;
            k->req.n_layers = req->n_layers;
            k->req.layers = req->layers;
            for (int i = 0; req->layer_out && i < req->n_layers; i++)
                k->lo[i] = req->layer_out[i] ? req->layer_out[i] + off : NULL;
            k->req.layer_out = req->layer_out ? k->lo : NULL;
            k->req.prenorm = req->prenorm ? req->prenorm + off : NULL;
            k->req.normed = req->normed ? req->normed + off : NULL;
        }
        b0 += nb;
    }
    for (int w = 1; w < nw; w++)
        started[w] = !pthread_create(&th[w], NULL, worker_run, &ws[w]);
    worker_run(&ws[0]);
    int rc = 0;
    for (int w = 0; w < nw; w++) {
        if (w && started[w])
            pthread_join(th[w], NULL);
        else if (w)
            worker_run(&ws[w]); /* no thread to spare: this one runs it */
        if (ws[w].rc && !rc) {
            rc = ws[w].rc;
            if (err)
                *err = ws[w].err;
        }
    }
    free(ws);
    return rc;
}

int dm_backend_forward(dm_backend *be, const float *images, int B, int H, int W,
                       const dm_vit_request *req, dm_err *err)
{
    if (B < 1 || H < DM_PATCH || W < DM_PATCH || H % DM_PATCH || W % DM_PATCH)
        return dm_err_set(err, DM_EINVAL, "input of %d×%d px (batch %d): sides must be positive "
                          "multiples of %d", W, H, B, DM_PATCH);
    for (int i = 0; req && i < req->n_layers; i++)
        if (req->layers[i] < 0 || req->layers[i] >= be->m->cfg.depth)
            return dm_err_set(err, DM_EINVAL, "layer %d does not exist (the model has blocks "
                              "0..%d)", req->layers[i], be->m->cfg.depth - 1);
    if (req && req->on_device && (be->ops == &dm_cpu_backend || B != 1))
        return dm_err_set(err, DM_EINVAL, "internal: outputs on the device need a GPU backend "
                          "and batch 1");
    if (be->nw > 1 && B > 1)
        return forward_workers(be, images, B, H, W, req, err);
    return be->ops->forward(be->state[0], images, B, H, W, req, err);
}

void dm_backend_close(dm_backend *be)
{
    if (!be)
        return;
    for (int i = 0; i < be->nw; i++)
        be->ops->destroy(be->state[i]);
    plugin_close(&be->pl);
    free(be);
}

const char *dm_backend_name(const dm_backend *be) { return be->name; }

int dm_backend_dops(dm_backend *be, dm_dops *out, dm_err *err)
{
    memset(out, 0, sizeof *out);
    if (be->ops == &dm_cpu_backend || !be->pl.p || !be->pl.p->dops)
        return dm_err_set(err, DM_EUNSUPPORTED, "backend %s has no device operators", be->name);
    return be->pl.p->dops(be->state[0], out, err);
}

/* src/cmd_forward.c — `dinomap forward`: one image (or a batch tensor) through the backbone,
 * outputs as .npy files named like the official forward_features / get_intermediate_layers; with
 * a CHMv2 head (--head, or inside a Hugging Face CHMv2 file) also the head's logits and heights. */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "../heads/heads.h"
#include "../models/model.h"
#include "cli.h"
#include "base/base.h"

#define MAX_LAYERS 64

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap forward -m WEIGHTS -i INPUT -o OUTDIR [options]\n\n"
        "Runs the DINOv3 backbone on one input and writes float32 .npy files to OUTDIR:\n"
        "  x_norm_clstoken.npy [D], x_storage_tokens.npy [4,D], x_norm_patchtokens.npy [h*w,D],\n"
        "  x_prenorm.npy [N,D], and for each --layers block K: layerK_patch_norm.npy,\n"
        "  layerK_cls_norm.npy, layerK_storage_norm.npy, layerK_patch_raw.npy.\n"
        "  (A batch input [B,3,H,W] adds a leading B dimension to every output.)\n"
        "With a CHMv2 canopy-height head (--head, or found inside a Hugging Face CHMv2 -m file)\n"
        "it also writes head_logits.npy [256,Ho,Wo] (the DPT decoder output) and height.npy\n"
        "[Ho,Wo] (canopy height in metres), Ho = 32*ceil(H/32) (likewise Wo): the model's own\n"
        "output grid, before any resize back to H×W.\n\n"
        "INPUT is one of:\n"
        "  .npy float32 [3,H,W] or [B,3,H,W]  already normalized, used as is\n"
        "  .npy uint8 [H,W,3]                 RGB, normalized with --norm\n"
        "  any 8-bit raster GDAL reads          first three bands as RGB, normalized with --norm\n"
        "H and W should be multiples of 16; otherwise the bottom/right remainder is dropped, as\n"
        "the reference patch embedding does (a notice says so). With a CHMv2 head the image is\n"
        "instead centre-padded to multiples of 16 with zeros (normalized), as the CHMv2 model\n"
        "does, and every output refers to the padded image.\n\n"
        "options:\n"
        "  -m, --model WEIGHTS   .pth, .safetensors, index.json or directory (required)\n"
        "  -i, --input INPUT     input (required)\n"
        "  -o, --output OUTDIR   output directory, created if missing (required)\n"
        "  --layers LIST         0-based blocks to export, e.g. 5,11,17,23 (default: none)\n"
        "  --norm PRESET         sat (default: SAT-493M mean 0.430,0.411,0.296 std 0.213,0.156,\n"
        "                        0.143), chm (CHMv2: mean 0.420,...; the default with a head),\n"
        "                        lvd (ImageNet)\n"
        "  --head HEAD           CHMv2 head checkpoint (Meta dinov3_vitl16_chmv2_dpt_head-*.pth)\n"
        "                        for the backbone given with -m; not needed for a Hugging Face\n"
        "                        CHMv2 model.safetensors, which holds its head\n"
        "  --taps LIST           the 4 backbone blocks the head reads, e.g. 5,11,17,23 (default:\n"
        "                        config.json out_indices - 1, else k*depth/4 - 1 for k = 1..4)\n"
        "  --arch NAME           force the architecture (default: recognised from the file)\n"
        "  --threads N           CPU threads for the math (default: all cores)\n"
        "  --device DEV          cpu (default), cuda, cuda:N, cuda:0,1 (one worker per GPU) or\n"
        "                        auto (a GPU when the CUDA backend loads and sees one)\n"
        "  --precision P         fp32 (default, exact), bf16 (matrix products in bf16 with fp32\n"
        "                        accumulation: faster on CPUs with AVX512_BF16 or AMX, ~1e-2\n"
        "                        relative error) or auto (bf16 where the CPU has them)\n"
        "  -q, --quiet           no progress messages\n"
        "  -h, --help            this help\n");
}

typedef struct input {
    float *img; /* [B,3,H,W] normalized */
    int B, H, W;
} input;

/* Keeps the top-left multiple-of-16 part of each [3,H,W] image. */
static int crop16(input *in, const char *path)
{
    int H2 = in->H / 16 * 16, W2 = in->W / 16 * 16;
    if (H2 == in->H && W2 == in->W)
        return 0;
    if (H2 == 0 || W2 == 0)
        return -1;
    dm_info("%s: %d×%d px is not a multiple of 16: using the top-left %d×%d px (the reference "
            "patch embedding drops the remainder)", path, in->W, in->H, W2, H2);
    for (int b = 0; b < in->B; b++)
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < H2; y++)
                memmove(in->img + (((size_t)b * 3 + c) * H2 + y) * W2,
                        in->img + (((size_t)b * 3 + c) * in->H + y) * in->W,
                        (size_t)W2 * sizeof(float));
    in->H = H2;
    in->W = W2;
    return 0;
}

/* Centre-pads each [3,H,W] image to multiples of 16, zero in normalized space (CHMv2, §5.3). */
static int pad16(input *in, const char *path)
{
    int Hp, Wp;
    dm_chm_pad_size(in->H, in->W, &Hp, &Wp);
    if (Hp == in->H && Wp == in->W)
        return 0;
    size_t px = (size_t)3 * Hp * Wp;
    float *p = malloc((size_t)in->B * px * sizeof *p);
    if (!p)
        return -1;
    dm_info("%s: %d×%d px is not a multiple of 16: centre-padded to %d×%d px with zeros "
            "(normalized), as the CHMv2 model pads", path, in->W, in->H, Wp, Hp);
    for (int b = 0; b < in->B; b++)
        dm_chm_center_pad(in->img + (size_t)b * 3 * in->H * in->W, in->H, in->W, p + b * px);
    free(in->img);
    in->img = p;
    in->H = Hp;
    in->W = Wp;
    return 0;
}

/* pad: centre-pad to multiples of 16 (CHMv2) instead of cropping (plain backbone). */
static int load_input(const char *path, const dm_norm *nm, int pad, input *in, dm_err *err)
{
    size_t n = strlen(path);
    memset(in, 0, sizeof *in);
    if (n > 4 && !strcmp(path + n - 4, ".npy")) {
        dm_npy a;
        int rc = dm_npy_read(path, &a, err);
        if (rc)
            return rc;
        char sb[128];
        if (a.dtype == 'f' && (a.ndim == 3 || a.ndim == 4) && a.shape[a.ndim - 3] == 3) {
            in->B = a.ndim == 4 ? (int)a.shape[0] : 1;
            in->H = (int)a.shape[a.ndim - 2];
            in->W = (int)a.shape[a.ndim - 1];
            in->img = a.f;
            a.f = NULL;
        } else if (a.dtype == 'u' && a.ndim == 3 && a.shape[2] == 3) {
            in->B = 1;
            in->H = (int)a.shape[0];
            in->W = (int)a.shape[1];
            in->img = malloc((size_t)in->H * in->W * 3 * sizeof(float) + 1);
            if (!in->img) {
                dm_npy_free(&a);
                return dm_err_oom(err);
            }
            dm_normalize_rgb8(a.u8, in->H, in->W, nm, in->img);
        } else {
            dm_err_set(err, DM_EFORMAT, "%s: shape %s %s: expected float32 [3,H,W] or "
                       "[B,3,H,W] (normalized), or uint8 [H,W,3] (RGB)", path,
                       dm_shape_str(a.shape, a.ndim, sb, sizeof sb),
                       a.dtype == 'u' ? "uint8" : "float32");
            dm_npy_free(&a);
            return DM_EFORMAT;
        }
        dm_npy_free(&a);
    } else {
        uint8_t *rgb;
        int rc = dm_gis_read_rgb8(path, &in->H, &in->W, &rgb, err);
        if (rc)
            return rc;
        in->B = 1;
        in->img = malloc((size_t)in->H * in->W * 3 * sizeof(float) + 1);
        if (!in->img) {
            free(rgb);
            return dm_err_oom(err);
        }
        dm_normalize_rgb8(rgb, in->H, in->W, nm, in->img);
        free(rgb);
    }
    if (in->H < 1 || in->W < 1)
        return dm_err_set(err, DM_EINVAL, "%s: the image is empty (%d×%d px)", path, in->W, in->H);
    if (pad)
        return pad16(in, path) ? dm_err_oom(err) : 0;
    if (crop16(in, path))
        return dm_err_set(err, DM_EINVAL, "%s: %d×%d px is smaller than one 16×16 patch", path,
                          in->W, in->H);
    return 0;
}

typedef struct outset {
    const char *dir;
    char written[6 + 4 * MAX_LAYERS][64];
    int nwritten;
} outset;

/* Writes tokens [t0, t0+nt) of each image; cls-like outputs (nt == 1) drop the token axis. */
static int put(outset *o, const char *name, const float *tok, int B, int N, int D, int t0, int nt,
               float *tmp, dm_err *err)
{
    for (int b = 0; b < B; b++)
        memcpy(tmp + (size_t)b * nt * D, tok + ((size_t)b * N + t0) * D,
               (size_t)nt * D * sizeof(float));
    int64_t shape[3];
    int nd = 0;
    if (B > 1)
        shape[nd++] = B;
    if (nt > 1 || strstr(name, "storage") || strstr(name, "patch"))
        shape[nd++] = nt;
    shape[nd++] = D;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", o->dir, name);
    int rc = dm_npy_write_f32(path, tmp, nd, shape, err);
    if (!rc)
        snprintf(o->written[o->nwritten++], sizeof o->written[0], "%s", name);
    return rc;
}

/* Writes a whole array (the head outputs); a batch of one drops the leading B. */
static int put_array(outset *o, const char *name, const float *data, int B, int ndim,
                     const int64_t *shape, dm_err *err)
{
    int64_t sh[8];
    int nd = 0;
    if (B > 1)
        sh[nd++] = B;
    for (int i = 0; i < ndim; i++)
        sh[nd++] = shape[i];
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", o->dir, name);
    int rc = dm_npy_write_f32(path, data, nd, sh, err);
    if (!rc)
        snprintf(o->written[o->nwritten++], sizeof o->written[0], "%s", name);
    return rc;
}

static void remove_written(outset *o)
{
    char path[4096];
    for (int i = 0; i < o->nwritten; i++) {
        snprintf(path, sizeof path, "%s/%s.npy", o->dir, o->written[i]);
        unlink(path);
    }
}

int cmd_forward(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, 0, 'm' }, { "input", required_argument, 0, 'i' },
        { "output", required_argument, 0, 'o' }, { "layers", required_argument, 0, 'L' },
        { "norm", required_argument, 0, 'n' }, { "arch", required_argument, 0, 'a' },
        { "threads", required_argument, 0, 't' }, { "device", required_argument, 0, 'd' },
        { "head", required_argument, 0, 'H' }, { "taps", required_argument, 0, 'T' },
        { "precision", required_argument, 0, 'P' }, { "quiet", no_argument, 0, 'q' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    const char *model = NULL, *inpath = NULL, *outdir = NULL, *arch = NULL, *device = "cpu";
    const char *headpath = NULL;
    const dm_norm *nm = NULL; /* NULL: chm with a head, else sat */
    /* layers[] = the --layers blocks, then the head's taps not among them */
    int layers[MAX_LAYERS + DM_CHM_TAPS], nl = 0, threads = (int)sysconf(_SC_NPROCESSORS_ONLN), ch;
    int taps[MAX_LAYERS], ntaps = 0, precision = DM_PREC_FP32;
    dm_err err = { 0 };
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":m:i:o:qh", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model = optarg; break;
        case 'i': inpath = optarg; break;
        case 'o': outdir = optarg; break;
        case 'a': arch = optarg; break;
        case 'd': device = optarg; break;
        case 'H': headpath = optarg; break;
        case 'P':
            if (dm_precision_parse(optarg, &precision, &err)) {
                dm_say("%s", err.msg);
                return 2;
            }
            break;
        case 'q': dm_log_set_level(DM_LOG_WARN); break;
        case 'T':
            if ((ntaps = dm_parse_int_list(optarg, taps, MAX_LAYERS)) != DM_CHM_TAPS) {
                dm_say("--taps %s: expected %d comma-separated block indices, e.g. 5,11,17,23",
                       optarg, DM_CHM_TAPS);
                return 2;
            }
            break;
        case 'L':
            if ((nl = dm_parse_int_list(optarg, layers, MAX_LAYERS)) < 0) {
                dm_say("--layers %s: expected a comma-separated list of block indices, e.g. "
                       "5,11,17,23", optarg);
                return 2;
            }
            break;
        case 'n':
            if (!(nm = dm_norm_get(optarg))) {
                dm_say("--norm %s: unknown preset (sat, chm, lvd)", optarg);
                return 2;
            }
            break;
        case 't':
            if ((threads = dm_parse_pos_int(optarg)) < 0) {
                dm_say("--threads %s: expected a positive number", optarg);
                return 2;
            }
            break;
        case 'h': help(stdout); return 0;
        default: return dm_cli_bad_option("forward", ch, argv[optind - 1], optopt, opts);
        }
    }
    if (!model || !inpath || !outdir || optind != argc) {
        dm_say("forward: -m WEIGHTS, -i INPUT and -o OUTDIR are required (dinomap forward --help)");
        return 2;
    }
    input in = { 0 };
    dm_weights *wf = NULL;
    dm_model *m = NULL;
    dm_chm *chm = NULL;
    dm_backend *be = NULL;
    float *normed = NULL, *prenorm = NULL, *tmp = NULL, *raw[MAX_LAYERS + DM_CHM_TAPS] = { 0 };
    float *logits = NULL, *height = NULL;
    outset o = { .dir = outdir };
    int rc, nreq = nl, tap_at[DM_CHM_TAPS];
    dm_model_opts mo = { arch };
    dm_backend_opts bo = { threads, 0, DM_PREC_FP32 };
    char why[400], dev[80];
    if ((rc = dm_device_pick(device, dev, sizeof dev, why, sizeof why, &err)))
        goto fail;
    if (why[0])
        dm_info("%s", why);
    if ((rc = dm_precision_resolve_on(dev, precision, &bo.precision, why, sizeof why, &err)))
        goto fail;
    if (why[0])
        dm_info("%s", why);
    /* the weights stay open beside the model: a Hugging Face CHMv2 file also holds the head */
    if ((rc = dm_weights_open(model, &wf, &err)) || (rc = dm_model_bind(wf, &mo, &m, &err)))
        goto fail;
    if (headpath || dm_chm_detect(wf)) {
        if ((rc = dm_chm_open(headpath, wf, m, ntaps ? taps : NULL, &chm, &err)) ||
            (rc = dm_chm_set_threads(chm, threads, &err)) ||
            (rc = dm_chm_set_precision(chm, dm_ops_precision_on(dev, bo.precision), &err)))
            goto fail;
        dm_info("%s", dm_chm_describe(chm));
        if (!nm)
            dm_info("CHMv2 head: 8-bit input is normalized with the CHMv2 preset (--norm chm: "
                    "mean 0.420,0.411,0.296); --norm overrides");
        const int *tp = dm_chm_taps(chm);
        for (int k = 0; k < DM_CHM_TAPS; k++) {
            int j = 0;
            while (j < nreq && layers[j] != tp[k])
                j++;
            if (j == nreq)
                layers[nreq++] = tp[k];
            tap_at[k] = j;
        }
    } else if (ntaps) {
        rc = dm_err_set(&err, DM_EINVAL, "--taps: %s holds no CHMv2 head; pass the head with "
                        "--head HEAD", model);
        goto fail;
    }
    if (!nm)
        nm = dm_norm_get(chm ? "chm" : "sat");
    if ((rc = load_input(inpath, nm, chm != NULL, &in, &err)) ||
        (rc = dm_backend_open(dev, m, &bo, &be, &err)))
        goto fail;
    if (chm && !strcmp(dm_device_class(dev), "cuda")) { /* the head beside the backbone */
        dm_err e2 = { 0 };
        int r2 = dm_chm_use_backend(chm, be, &e2);
        if (!r2 && (rc = dm_chm_set_precision(chm, bo.precision, &err)))
            goto fail;
        if (r2 && r2 != DM_EUNSUPPORTED) {
            rc = r2, err = e2;
            goto fail;
        }
        if (r2)
            dm_info("CHMv2 head on the CPU (%s)", e2.msg);
    }
    int D = m->cfg.embed_dim, N = dm_model_tokens(m, in.H, in.W), R = m->cfg.n_storage;
    int hw = N - 1 - R;
    size_t tok = (size_t)in.B * N * D;
    /* tmp also holds normed copies of the head's taps, one image at a time */
    size_t ntmp = chm && (size_t)DM_CHM_TAPS * N * D > tok ? (size_t)DM_CHM_TAPS * N * D : tok;
    if (!(normed = malloc(tok * sizeof(float))) || !(prenorm = malloc(tok * sizeof(float))) ||
        !(tmp = malloc(ntmp * sizeof(float)))) {
        rc = dm_err_oom(&err);
        goto fail;
    }
    for (int k = 0; k < nreq; k++)
        if (!(raw[k] = malloc(tok * sizeof(float)))) {
            rc = dm_err_oom(&err);
            goto fail;
        }
    int Ho = 0, Wo = 0, nbins = chm ? dm_chm_bins(chm) : 0;
    size_t npix = 0;
    if (chm) {
        dm_chm_out_size(in.H, in.W, &Ho, &Wo);
        npix = (size_t)Ho * Wo;
        if (!(logits = malloc((size_t)in.B * nbins * npix * sizeof(float))) ||
            !(height = malloc((size_t)in.B * npix * sizeof(float)))) {
            rc = dm_err_oom(&err);
            goto fail;
        }
    }
    dm_info("%s: %s (D=%d, %d blocks), %d×%d px × %d, %d tokens, %s, %d threads (OpenBLAS %s)",
            model, m->cfg.arch, D, m->cfg.depth, in.W, in.H, in.B, N, dm_backend_name(be), threads,
            openblas_get_corename());
    dm_vit_request req = { nreq, layers, raw, prenorm, normed, 0 };
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((rc = dm_backend_forward(be, in.img, in.B, in.H, in.W, &req, &err)))
        goto fail;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    dm_info("forward pass: %.3f s", (double)(t1.tv_sec - t0.tv_sec) +
                                        (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    if (chm) {
        /* the head reads the taps through the final norm; --layers buffers are normed in place
         * below too, so the head runs first on normed copies of those it shares */
        for (int b = 0; b < in.B; b++) {
            const float *tp[DM_CHM_TAPS];
            for (int k = 0; k < DM_CHM_TAPS; k++) {
                float *src = raw[tap_at[k]] + (size_t)b * N * D;
                if (tap_at[k] < nl) { /* keep the raw values for layerK_patch_raw */
                    memcpy(tmp + (size_t)k * N * D, src, (size_t)N * D * sizeof(float));
                    src = tmp + (size_t)k * N * D;
                }
                dm_model_norm_tokens(m, src, src, N);
                tp[k] = src;
            }
            if ((rc = dm_chm_decode(chm, tp, in.H / DM_PATCH, in.W / DM_PATCH,
                                    logits + (size_t)b * nbins * npix, height + (size_t)b * npix,
                                    &err)))
                goto fail;
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        dm_info("CHMv2 head: %.3f s, %d×%d px out", (double)(t0.tv_sec - t1.tv_sec) +
                (double)(t0.tv_nsec - t1.tv_nsec) * 1e-9, Wo, Ho);
    }
    if (dm_mkdir_p(outdir) != 0) {
        rc = dm_err_set(&err, DM_EIO, "%s: cannot create output directory: %s", outdir,
                        strerror(errno));
        goto fail;
    }
    if ((rc = put(&o, "x_norm_clstoken", normed, in.B, N, D, 0, 1, tmp, &err)) ||
        (rc = put(&o, "x_storage_tokens", normed, in.B, N, D, 1, R, tmp, &err)) ||
        (rc = put(&o, "x_norm_patchtokens", normed, in.B, N, D, 1 + R, hw, tmp, &err)) ||
        (rc = put(&o, "x_prenorm", prenorm, in.B, N, D, 0, N, tmp, &err)))
        goto fail;
    for (int k = 0; k < nl; k++) {
        char name[64];
        snprintf(name, sizeof name, "layer%d_patch_raw", layers[k]);
        if ((rc = put(&o, name, raw[k], in.B, N, D, 1 + R, hw, tmp, &err)))
            goto fail;
        dm_model_norm_tokens(m, raw[k], raw[k], (int64_t)in.B * N);
        snprintf(name, sizeof name, "layer%d_patch_norm", layers[k]);
        if ((rc = put(&o, name, raw[k], in.B, N, D, 1 + R, hw, tmp, &err)))
            goto fail;
        snprintf(name, sizeof name, "layer%d_cls_norm", layers[k]);
        if ((rc = put(&o, name, raw[k], in.B, N, D, 0, 1, tmp, &err)))
            goto fail;
        snprintf(name, sizeof name, "layer%d_storage_norm", layers[k]);
        if ((rc = put(&o, name, raw[k], in.B, N, D, 1, R, tmp, &err)))
            goto fail;
    }
    if (chm) {
        int64_t ls[3] = { nbins, Ho, Wo };
        if ((rc = put_array(&o, "head_logits", logits, in.B, 3, ls, &err)) ||
            (rc = put_array(&o, "height", height, in.B, 2, ls + 1, &err)))
            goto fail;
    }
    dm_info("wrote %d files to %s", o.nwritten, outdir);
fail:
    if (rc) {
        dm_say("%s", err.msg);
        remove_written(&o);
    }
    for (int k = 0; k < nreq; k++)
        free(raw[k]);
    free(normed), free(prenorm), free(tmp), free(in.img), free(logits), free(height);
    dm_backend_close(be);
    dm_chm_free(chm);
    dm_model_free(m);
    dm_weights_close(wf);
    return rc ? 1 : 0;
}

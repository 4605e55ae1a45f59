/* src/cmd_info.c — `dinomap info WEIGHTS`: what a weights file holds and how dinomap reads it. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "../models/model.h"
#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
            "usage: dinomap info [options] WEIGHTS\n\n"
            "Describes a DINOv3 weights file: architecture recognised from its tensors, parameter\n"
            "count, dtypes, RoPE periods, the suggested normalization preset.\n\n"
            "WEIGHTS  a Meta .pth (torch.save zip), a Hugging Face .safetensors file, a\n"
            "         model.safetensors.index.json (sharded) or a directory holding one.\n\n"
            "options:\n"
            "  --arch NAME    force an architecture (vits16, vits16plus, vitb16, vitl16,\n"
            "                 vitl16plus, vith16plus, vit7b16); default: recognised\n"
            "  --tensors      also list every tensor: name, dtype, shape\n"
            "  -h, --help     this help\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = { { "arch", required_argument, 0, 'a' },
                                           { "tensors", no_argument, 0, 't' },
                                           { "help", no_argument, 0, 'h' },
                                           { 0, 0, 0, 0 } };
    const char *arch = NULL;
    int list = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (ch) {
        case 'a': arch = optarg; break;
        case 't': list = 1; break;
        case 'h': help(stdout); return 0;
        default: return dm_cli_bad_option("info", ch, argv[optind - 1], optopt, opts);
        }
    }
    if (optind != argc - 1) {
        dm_say("info: expected one WEIGHTS file (dinomap info --help)");
        return 2;
    }
    const char *path = argv[optind];
    dm_err err = { 0 };
    dm_weights *w;
    if (dm_weights_open(path, &w, &err)) {
        dm_say("%s", err.msg);
        return 1;
    }
    dm_model_opts mo = { arch };
    dm_model *m;
    if (dm_model_bind(w, &mo, &m, &err)) {
        dm_say("%s", err.msg);
        dm_weights_close(w);
        return 1;
    }
    const dm_vit_config *c = &m->cfg;
    int counts[DM_DT_BOOL + 1] = { 0 };
    for (size_t i = 0; i < dm_weights_count(w); i++)
        counts[dm_weights_at(w, i)->dtype]++;
    printf("file:          %s\n", path);
    printf("format:        %s, %.1f MB, %zu tensors\n", dm_weights_format(w),
           (double)dm_weights_bytes(w) / 1e6, dm_weights_count(w));
    printf("architecture:  %s (D=%d, %d blocks, %d heads × %d, %s FFN %d, %d register tokens)\n",
           c->arch, c->embed_dim, c->depth, c->num_heads, c->head_dim,
           c->swiglu ? "SwiGLU" : "MLP/GELU", c->ffn_hidden, c->n_storage);
    printf("layout:        %s names%s%s%s\n", !strcmp(c->layout, "hf") ? "Hugging Face" : "Meta",
           m->prefix[0] ? " under prefix \"" : "", m->prefix, m->prefix[0] ? "\"" : "");
    printf("parameters:    %llu (%.1f M)\n", (unsigned long long)m->n_params,
           (double)m->n_params / 1e6);
    printf("dtypes:       ");
    for (int t = 0; t <= DM_DT_BOOL; t++)
        if (counts[t])
            printf(" %s×%d", dm_dtype_name((dm_dtype)t), counts[t]);
    printf("\n");
    printf("layer norm:    eps %g\n", (double)c->ln_eps);
    printf("rope periods:  %s:", c->periods_from_file ? "from the file"
                                                      : "computed from rope_theta");
    for (int i = 0; i < c->head_dim / 4; i++)
        printf(" %.9g", (double)c->periods[i]);
    printf("\n");
    int nn;
    const dm_norm *norms = dm_norm_all(&nn);
    printf("normalization: sat by default (--norm sat|chm|lvd):\n");
    for (int i = 0; i < nn; i++)
        printf("  %-4s mean %.3f,%.3f,%.3f  std %.3f,%.3f,%.3f  %s\n", norms[i].name,
               (double)norms[i].mean[0], (double)norms[i].mean[1], (double)norms[i].mean[2],
               (double)norms[i].std[0], (double)norms[i].std[1], (double)norms[i].std[2],
               norms[i].what);
    if (m->n_ignored)
        printf("ignored:       %d tensors unused at inference (mask_token, local_cls_norm.*)\n",
               m->n_ignored);
    size_t other = 0, plen = strlen(m->prefix);
    for (size_t i = 0; i < dm_weights_count(w); i++)
        other += strncmp(dm_weights_at(w, i)->name, m->prefix, plen) != 0;
    if (other)
        printf("other tensors: %zu outside the backbone (e.g. a head)\n", other);
    if (list) {
        char sb[128];
        for (size_t i = 0; i < dm_weights_count(w); i++) {
            const dm_tensor *t = dm_weights_at(w, i);
            printf("  %-60s %-5s %s\n", t->name, dm_dtype_name(t->dtype),
                   dm_shape_str(t->shape, t->ndim, sb, sizeof sb));
        }
    }
    dm_model_free(m);
    dm_weights_close(w);
    return 0;
}

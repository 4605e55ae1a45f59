/* tests/lib_alone.c — a program linked against build/libdinomap.a alone (no command-line object):
 * proves the library stands on its own. Opens a checkpoint, runs one forward pass on a constant
 * image, and prints the CLS token's first value. Usage: lib_alone WEIGHTS */
#include <stdio.h>
#include <stdlib.h>

#include "../models/model.h"

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: lib_alone WEIGHTS\n");
        return 2;
    }
    dm_err err = { 0 };
    dm_model *m = NULL;
    dm_backend *be = NULL;
    float *img = NULL, *tok = NULL;
    int rc = dm_model_open(argv[1], NULL, &m, &err);
    dm_backend_opts bo = { 1, 0, DM_PREC_FP32 };
    if (!rc)
        rc = dm_backend_open("cpu", m, &bo, &be, &err);
    if (!rc) {
        int N = dm_model_tokens(m, 32, 32);
        img = calloc(3 * 32 * 32, sizeof *img);
        tok = malloc(sizeof *tok * (size_t)N * m->cfg.embed_dim);
        dm_vit_request req = { .normed = tok };
        rc = !img || !tok ? dm_err_oom(&err) : dm_backend_forward(be, img, 1, 32, 32, &req, &err);
    }
    if (rc)
        fprintf(stderr, "lib_alone: %s\n", err.msg);
    else
        printf("lib_alone: %s D=%d cls[0]=%.6f\n", m->cfg.arch, m->cfg.embed_dim, tok[0]);
    free(img);
    free(tok);
    dm_backend_close(be);
    dm_model_free(m);
    return rc ? 1 : 0;
}

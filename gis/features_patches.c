/* gis/features_patches.c — a dinomap features raster read back by patch (see gis.h): what
 * `dinomap seg train` learns from. A thin layer over the features reader of gis/features_in.c
 * (dm_gis_feat: int8 decoded with the bands' scale and offset, nodata NaN), adding the facts a
 * head records (model, normalization, layer, weights) and reads of scattered patches. */
#include "gis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STRIP_VALUES (1 << 24) /* floats read at a time (64 MB) */

struct dm_features_in {
    char *path;
    dm_gis_feat *feat;
    dm_features_info info;
};

void dm_features_in_close(dm_features_in *f)
{
    if (!f)
        return;
    dm_gis_feat_close(f->feat);
    free(f->path);
    free(f);
}

const dm_features_info *dm_features_in_info(const dm_features_in *f) { return &f->info; }

/* The first word of a metadata value ("custom (D=128, 4 blocks)" → "custom"). */
static void first_word(const char *v, char *out, size_t n)
{
    size_t k = v ? strcspn(v, " ") : 0;
    snprintf(out, n, "%.*s", (int)k, v ? v : "");
}

int dm_features_in_open(const char *path, dm_features_in **out, dm_err *err)
{
    *out = NULL;
    dm_features_in *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return dm_err_oom(err);
    }
    int rc = dm_gis_feat_open(path, "features", &f->feat, err);
    if (rc)
        dm_err_prefix(err, "--features");
    dm_features_info *i = &f->info;
    if (!rc) {
        int block;
        dm_gis_feat_info(f->feat, &i->W, &i->H, &i->D, i->gt, &i->wkt, &block);
        i->int8 = dm_gis_feat_int8(f->feat);
        first_word(dm_gis_feat_meta(f->feat, "DINOMAP_MODEL"), i->arch, sizeof i->arch);
        first_word(dm_gis_feat_meta(f->feat, "DINOMAP_NORMALIZATION"), i->norm, sizeof i->norm);
        first_word(dm_gis_feat_meta(f->feat, "DINOMAP_WEIGHTS_SHA256"), i->sha256,
                   sizeof i->sha256);
        const char *ly = dm_gis_feat_meta(f->feat, "DINOMAP_LAYER");
        i->layer = !ly || strstr(ly, "last block") ? -1 : atoi(ly);
    }
    if (rc) {
        dm_features_in_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int dm_features_in_read(dm_features_in *f, const int *px, const int *py, int n, float *v,
                        uint8_t *ok, dm_err *err)
{
    const dm_features_info *fi = &f->info;
    int D = fi->D, rc = 0;
    int xmin = fi->W, xmax = -1;
    for (int i = 0; i < n; i++) {
        if (px[i] < 0 || px[i] >= fi->W || py[i] < 0 || py[i] >= fi->H ||
            (i && (py[i] < py[i - 1] || (py[i] == py[i - 1] && px[i] <= px[i - 1]))))
            return dm_err_set(err, DM_EINVAL, "patch (%d, %d): outside %s or out of order",
                              px[i], py[i], f->path);
        xmin = px[i] < xmin ? px[i] : xmin, xmax = px[i] > xmax ? px[i] : xmax;
    }
    if (!n)
        return 0;
    /* strips of rows, as many as STRIP_VALUES hold across the patches' columns */
    int64_t per_row = (int64_t)(xmax - xmin + 1) * D;
    int rows = (int)(STRIP_VALUES / per_row);
    rows = rows < 1 ? 1 : rows > 256 ? 256 : rows;
    float *buf = malloc(sizeof *buf * (size_t)(per_row * rows));
    if (!buf)
        return dm_err_oom(err);
    for (int i = 0; !rc && i < n;) {
        int ya = py[i], j = i, x0 = px[i], x1 = px[i];
        while (j < n && py[j] < ya + rows) {
            x0 = px[j] < x0 ? px[j] : x0, x1 = px[j] > x1 ? px[j] : x1;
            j++;
        }
        int nr = py[j - 1] - ya + 1, wx = x1 - x0 + 1;
        size_t plane = (size_t)wx * nr;
        if ((rc = dm_gis_feat_read(f->feat, 0, D, x0, ya, wx, nr, buf, err)))
            break;
        for (int k = i; k < j; k++) {
            size_t at = (size_t)(py[k] - ya) * wx + (size_t)(px[k] - x0);
            float *dst = v + (size_t)k * D;
            int good = 1;
            for (int b = 0; b < D && good; b++)
                good = !isnan(dst[b] = buf[(size_t)b * plane + at]);
            ok[k] = (uint8_t)good;
            if (!good)
                memset(dst, 0, sizeof *dst * (size_t)D);
        }
        i = j;
    }
    free(buf);
    return rc;
}

/* tests/test_seg_train.c — `dinomap seg train`: the softmax fit (deterministic, any threads), the
 * 50 % patch rule, a synthetic mosaic of three covers whose left half is labelled (a class raster
 * with an attribute table and a colour table) → a head that classifies the unlabelled right half;
 * the same polygons as GeoJSON in EPSG:4326 give the same head; --features on the work folder
 * gives the same head as the run; the held-out metrics; the work folder reused; bad inputs. */
#include <cjson/cJSON.h>
#include <cpl_conv.h>
#include <gdal.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../heads/seg.h"
#include "../models/ops.h"
#include "../gis/gis.h"
#include "golden.h"
#include "test.h"

/* The synthetic scene: 192 × 192 px of 1 m in UTM 31N, blocks of 48 px (3 patches) of three
 * covers in a diagonal pattern, so that each cover is in every row and column of blocks. */
#define SIDE 192
#define BLOCK 48
static const double scene_gt[6] = { 431000, 1, 0, 5412000, 0, -1 };
static const int cover_id[3] = { 2, 4, 7 };
static const char *const cover_name[3] = { "water", "forest", "field" };
static const uint8_t cover_rgb[3][3] = { { 31, 120, 180 }, { 51, 160, 44 }, { 240, 200, 80 } };

static int cover_at(int x, int y) { return (x / BLOCK + y / BLOCK) % 3; }

/* Water: dark blue, nearly flat; forest: green, grainy; field: bright beige with furrows. */
static int make_scene(const char *path)
{
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, SIDE, SIDE, 3, GDT_Byte, NULL);
    if (!d)
        return -1;
    GDALSetGeoTransform(d, (double *)scene_gt);
    dm_set_epsg(d, 32631);
    uint8_t *buf = malloc(SIDE * SIDE);
    int rc = buf ? 0 : -1;
    for (int b = 0; !rc && b < 3; b++) {
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++) {
                int n = (int)(dm_hash32((uint32_t)(b * 7919 + y * SIDE + x)) % 256) - 128, v;
                switch (cover_at(x, y)) {
                case 0: v = (int[]){ 20, 45, 95 }[b] + n / 32; break;
                case 1: v = (int[]){ 50, 120, 40 }[b] + n / 3; break;
                default: v = (int[]){ 205, 180, 120 }[b] + ((y / 3) % 2 ? 35 : -35) + n / 16;
                }
                buf[y * SIDE + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        if (GDALRasterIO(GDALGetRasterBand(d, b + 1), GF_Write, 0, 0, SIDE, SIDE, buf, SIDE, SIDE,
                         GDT_Byte, 0, 0) != CE_None)
            rc = -1;
    }
    free(buf);
    GDALClose(d);
    return rc;
}

/* A class raster on the scene's extent with pixels of `px` m: the cover's id where x < xmax m
 * from the west edge (and keep(x, y) when given), 0 elsewhere; type Byte (or Int16 to hold
 * `bad`, a value put in the first labelled pixel); names in an attribute table, colours in a
 * colour table when rat is set. */
static int make_labels(const char *path, double px, int xmax, int rat, int only, int bad)
{
    int n = (int)(SIDE / px);
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, n, n, 1,
                                bad ? GDT_Int16 : GDT_Byte, NULL);
    if (!d)
        return -1;
    double gt[6] = { scene_gt[0], px, 0, scene_gt[3], 0, -px };
    GDALSetGeoTransform(d, gt);
    dm_set_epsg(d, 32631);
    int16_t *buf = calloc((size_t)n * n, sizeof *buf);
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            int mx = (int)((x + 0.5) * px), my = (int)((y + 0.5) * px), c = cover_at(mx, my);
            if (mx < xmax && (only < 0 || c == only))
                buf[y * n + x] = (int16_t)cover_id[c];
        }
    if (bad)
        buf[0] = (int16_t)bad;
    GDALRasterBandH b = GDALGetRasterBand(d, 1);
    int rc = GDALRasterIO(b, GF_Write, 0, 0, n, n, buf, n, n, GDT_Int16, 0, 0) == CE_None ? 0 : -1;
    free(buf);
    if (rat) {
        GDALRasterAttributeTableH t = GDALCreateRasterAttributeTable();
        GDALRATCreateColumn(t, "Value", GFT_Integer, GFU_MinMax);
        GDALRATCreateColumn(t, "Class", GFT_String, GFU_Name);
        GDALRATSetRowCount(t, 3);
        GDALColorTableH ct = GDALCreateColorTable(GPI_RGB);
        for (int i = 0; i < 3; i++) {
            GDALRATSetValueAsInt(t, i, 0, cover_id[i]);
            GDALRATSetValueAsString(t, i, 1, cover_name[i]);
            GDALColorEntry e = { cover_rgb[i][0], cover_rgb[i][1], cover_rgb[i][2], 255 };
            GDALSetColorEntry(ct, cover_id[i], &e);
        }
        GDALSetDefaultRAT(b, t);
        GDALSetRasterColorTable(b, ct);
        GDALDestroyRasterAttributeTable(t);
        GDALDestroyColorTable(ct);
    }
    GDALClose(d);
    return rc;
}

/* The labelled blocks (x < xmax) as polygons in EPSG:4326 with fields name (string) and cls
 * (integer); dx moves them east by that many metres (labels elsewhere). */
static int make_geojson(const char *path, int xmax, double dx, int cls_override)
{
    OGRSpatialReferenceH u = OSRNewSpatialReference(NULL), g = OSRNewSpatialReference(NULL);
    OSRImportFromEPSG(u, 32631);
    OSRImportFromEPSG(g, 4326);
    OSRSetAxisMappingStrategy(g, OAMS_TRADITIONAL_GIS_ORDER);
    OGRCoordinateTransformationH ct = OCTNewCoordinateTransformation(u, g);
    FILE *f = fopen(path, "w");
    if (!f || !ct)
        return -1;
    fprintf(f, "{\"type\":\"FeatureCollection\",\"features\":[");
    int k = 0;
    for (int by = 0; by < SIDE / BLOCK; by++)
        for (int bx = 0; bx * BLOCK < xmax; bx++) {
            int c = cover_at(bx * BLOCK, by * BLOCK);
            double x[5], y[5];
            for (int i = 0; i < 5; i++) {
                int cx = (i == 1 || i == 2) ? 1 : 0, cy = (i == 2 || i == 3) ? 1 : 0;
                x[i] = scene_gt[0] + dx + (bx + cx) * BLOCK;
                y[i] = scene_gt[3] - (by + cy) * BLOCK;
            }
            OCTTransform(ct, 5, x, y, NULL);
            fprintf(f, "%s{\"type\":\"Feature\",\"properties\":{\"name\":\"%s\",\"cls\":%d},"
                    "\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[", k++ ? "," : "",
                    cover_name[c], cls_override ? cls_override : cover_id[c]);
            for (int i = 0; i < 5; i++)
                fprintf(f, "%s[%.12f,%.12f]", i ? "," : "", x[i], y[i]);
            fprintf(f, "]]}}");
        }
    fprintf(f, "]}\n");
    fclose(f);
    OCTDestroyCoordinateTransformation(ct);
    OSRDestroySpatialReference(u);
    OSRDestroySpatialReference(g);
    return 0;
}

static int train(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s seg train --progress none --threads 2 %s", dm_bin(), args);
    return dm_run(cmd, out);
}

static char *model(void)
{
    static char p[4200];
    snprintf(p, sizeof p, "%s", dm_golden("vitl_sat_tiny/backbone.pth"));
    return p;
}

static const char *info_num(const dm_seg_head *h, const char *a, const char *b, double *v)
{
    cJSON *j = h->info ? cJSON_Parse(h->info) : NULL, *x = cJSON_GetObjectItem(j, a);
    if (b)
        x = cJSON_GetObjectItem(x, b);
    *v = cJSON_IsNumber(x) ? x->valuedouble : NAN;
    cJSON_Delete(j);
    return a;
}

/* Patch accuracy of head h on the patches of features raster `path` with x >= 16·px0 (the
 * unlabelled part), against the scene's covers. */
static double accuracy_right(const dm_seg_head *h, const char *path, int px0, int *n)
{
    GDALDatasetH d = GDALOpen(path, GA_ReadOnly);
    *n = 0;
    if (!d)
        return -1;
    int W = GDALGetRasterXSize(d), H = GDALGetRasterYSize(d), D = GDALGetRasterCount(d);
    float *v = malloc(sizeof *v * (size_t)W * H * D), *x = malloc(sizeof *x * D);
    float *lg = malloc(sizeof *lg * h->C);
    CPLErr e = GDALDatasetRasterIO(d, GF_Read, 0, 0, W, H, v, W, H, GDT_Float32, D, NULL, 0, 0, 0);
    GDALClose(d);
    if (e != CE_None) {
        free(v), free(x), free(lg);
        return -1;
    }
    int right = 0;
    for (int py = 0; py < H; py++)
        for (int px = px0; px < W; px++) {
            for (int b = 0; b < D; b++)
                x[b] = v[((size_t)b * H + py) * W + px];
            if (isnan(x[0]))
                continue;
            dm_seg_logits(h, x, 1, lg);
            int a = 0;
            for (int c = 1; c < h->C; c++)
                a = lg[c] > lg[a] ? c : a;
            right += h->cls[a].id == cover_id[cover_at(16 * px + 8, 16 * py + 8)];
            (*n)++;
        }
    free(v), free(x), free(lg);
    return *n ? (double)right / *n : -1;
}

static int same_head(const dm_seg_head *a, const dm_seg_head *b, double *worst)
{
    *worst = INFINITY;
    if (a->C != b->C || a->D != b->D)
        return 0;
    for (int c = 0; c < a->C; c++)
        if (a->cls[c].id != b->cls[c].id)
            return 0;
    double m = 0, s = 0;
    for (int i = 0; i < a->C * a->D; i++) {
        m = fmax(m, fabs((double)a->w[i] - b->w[i]));
        s = fmax(s, fabs((double)a->w[i]));
    }
    for (int c = 0; c < a->C; c++)
        m = fmax(m, fabs((double)a->b[c] - b->b[c]));
    *worst = s > 0 ? m / s : m;
    return 1;
}

/* --- the fit alone --------------------------------------------------------------------------- */

TEST(seg_train_fit_separates_and_is_deterministic)
{
    enum { N = 600, D = 24, C = 3 };
    float *X = malloc(sizeof *X * N * D), *X2 = malloc(sizeof *X2 * N * D);
    float *X3 = malloc(sizeof *X3 * N * D), *raw = malloc(sizeof *raw * N * D);
    int y[N], pred[N];
    for (int i = 0; i < N; i++) { /* three blobs with an offset and a scale far from 1 */
        y[i] = i % 7 == 0 ? 2 : i % 2; /* unbalanced: class 2 is rare */
        for (int d = 0; d < D; d++) {
            float n = (float)((int)(dm_hash32((uint32_t)(i * D + d)) % 2001) - 1000) / 1000.0f;
            raw[i * D + d] = 50.0f + 8.0f * (n + (d % C == y[i] ? 1.5f : 0.0f));
        }
    }
    memcpy(X, raw, sizeof *X * N * D), memcpy(X2, raw, sizeof *X * N * D);
    memcpy(X3, raw, sizeof *X * N * D);
    dm_seg_head *a = dm_seg_head_new(C, D), *b = dm_seg_head_new(C, D), *c = dm_seg_head_new(C, D);
    dm_seg_fit_opts o = { 1e-3, 500 };
    dm_seg_fit_result ra, rb, rc;
    dm_err err = { 0 };
    dm_ops *ws = NULL;
    CHECK(dm_ops_create(2, &ws, &err) == 0);
    CHECKF(dm_seg_fit(a, X, y, N, &o, NULL, &ra, &err) == 0, "%s", err.msg);
    CHECKF(dm_seg_fit(b, X2, y, N, &o, ws, &rb, &err) == 0, "%s", err.msg);
    o.l2 = 1.0;
    CHECKF(dm_seg_fit(c, X3, y, N, &o, NULL, &rc, &err) == 0, "%s", err.msg);
    dm_ops_free(ws);
    /* the same bits on one thread and on two */
    CHECK(!memcmp(a->w, b->w, sizeof(float) * C * D) && !memcmp(a->b, b->b, sizeof(float) * C));
    CHECK(ra.iterations == rb.iterations && ra.loss == rb.loss);
    CHECK(dm_seg_predict(a, raw, N, pred, &err) == 0);
    int right = 0;
    for (int i = 0; i < N; i++)
        right += pred[i] == y[i];
    CHECKF(right >= N * 0.97, "%d of %d right on raw features", right, N);
    CHECKF(fabs(ra.train_accuracy - (double)right / N) < 1e-9, "%g vs %g", ra.train_accuracy,
           (double)right / N);
    CHECKF(ra.converged && ra.iterations > 2 && ra.iterations < 500, "%d iterations",
           ra.iterations);
    /* a stronger penalty: smaller weights, a larger loss */
    double na = 0, nc = 0;
    for (int i = 0; i < C * D; i++)
        na += (double)a->w[i] * a->w[i], nc += (double)c->w[i] * c->w[i];
    CHECKF(nc < na && rc.loss > ra.loss, "|W|² %g vs %g, loss %g vs %g", nc, na, rc.loss,
           ra.loss);
    int bad[1] = { 3 };
    CHECK(dm_seg_fit(a, X, bad, 1, &o, NULL, &ra, &err) == DM_EINVAL);
    dm_seg_head_free(a), dm_seg_head_free(b), dm_seg_head_free(c);
    free(X), free(X2), free(X3), free(raw);
}

/* --- the 50 % rule --------------------------------------------------------------------------- */

TEST(seg_train_patch_rule_half_of_the_pixels)
{
    const char *t = dm_test_tmpdir();
    char p[1200];
    snprintf(p, sizeof p, "%s/rule.tif", t);
    /* 5 patches of 16×16 px: 128 px of 3; 127 px of 3; 128 of 3 + 128 of 5; 200 of 5 + 56 of 3;
     * all 9 */
    enum { W = 80, H = 16 };
    uint8_t px[H * W] = { 0 };
    for (int y = 0; y < H; y++)
        for (int x = 0; x < 16; x++) {
            int i = y * 16 + x;
            px[y * W + x] = i < 128 ? 3 : 0;
            px[y * W + 16 + x] = i < 127 ? 3 : 0;
            px[y * W + 32 + x] = i < 128 ? 3 : 5;
            px[y * W + 48 + x] = i < 200 ? 5 : 3;
            px[y * W + 64 + x] = 9;
        }
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), p, W, H, 1, GDT_Byte, NULL);
    double gt[6] = { 431000, 0.5, 0, 5412000, 0, -0.5 };
    GDALSetGeoTransform(d, gt);
    OGRSpatialReferenceH s = OSRNewSpatialReference(NULL);
    char *wkt = NULL;
    OSRImportFromEPSG(s, 32631);
    OSRExportToWkt(s, &wkt);
    GDALSetProjection(d, wkt);
    CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Write, 0, 0, W, H, px, W, H, GDT_Byte, 0, 0) ==
          CE_None);
    GDALClose(d);
    dm_labels *l = NULL;
    dm_err err = { 0 };
    CHECKF(dm_labels_open(p, NULL, &l, &err) == 0, "%s", err.msg);
    double fgt[6] = { 431000, 8, 0, 5412000, 0, -8 }; /* features: 16× the pixel */
    dm_label_grid g;
    int rc = dm_labels_patches(l, fgt, wkt, 10, 4, &g, &err);
    CPLFree(wkt);
    OSRDestroySpatialReference(s);
    dm_labels_free(l);
    CHECKF(rc == 0, "%s", err.msg);
    CHECKF(g.x0 == 0 && g.y0 == 0 && g.w == 5 && g.h == 1, "window %d,%d %d×%d", g.x0, g.y0, g.w,
           g.h);
    CHECKF(g.cls[0] == 3 && g.cls[1] == 0 && g.cls[2] == 0 && g.cls[3] == 5 && g.cls[4] == 9,
           "%d %d %d %d %d", g.cls[0], g.cls[1], g.cls[2], g.cls[3], g.cls[4]);
    CHECK(g.mixed == 2 && g.labelled_px == 128 + 127 + 256 + 256 + 256);
    free(g.cls);
}

/* --- end to end ------------------------------------------------------------------------------ */

TEST(seg_train_raster_labels_map_the_unlabelled_half)
{
    const char *t = dm_test_tmpdir(), *out;
    char scene[1100], lab[1100], args[8192], p[1200], q[1200];
    snprintf(scene, sizeof scene, "%s/scene.tif", t);
    snprintf(lab, sizeof lab, "%s/labels.tif", t);
    CHECK(make_scene(scene) == 0);
    /* labels on a 2 m grid (nearest onto the 1 m pixels) over the left half */
    CHECK(make_labels(lab, 2, 96, 1, -1, 0) == 0);
    snprintf(args, sizeof args, "-m %s --labels %s %s -o %s/water.dmseg --tile 64 --halo 16",
             model(), lab, scene, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "held-out:") && strstr(out, "mIoU") && strstr(out, "forest"), "%s", out);
    snprintf(p, sizeof p, "%s/water.dmseg", t);
    dm_seg_head *h = NULL, *h2 = NULL;
    dm_err err = { 0 };
    CHECKF(dm_seg_head_load(p, &h, &err) == 0, "%s", err.msg);
    CHECK(h->C == 3 && h->D == 128 && !strcmp(h->kind, "logistic"));
    for (int c = 0; c < 3; c++)
        CHECKF(h->cls[c].id == cover_id[c] && !strcmp(h->cls[c].name, cover_name[c]) &&
               !memcmp(h->cls[c].rgb, cover_rgb[c], 3), "class %d: %d %s", c, h->cls[c].id,
               h->cls[c].name);
    char sha[65];
    CHECK(dm_sha256_file(model(), sha, &err) == 0);
    CHECKF(!strcmp(h->backbone_sha256, sha) && !strcmp(h->arch, "custom") && h->layer == -1 &&
           !strcmp(h->norm, "sat"), "%s %s %d %s", h->backbone_sha256, h->arch, h->layer,
           h->norm);
    /* the held-out metrics in the head */
    double acc, miou, nh, lam, it, loss, lab_n;
    info_num(h, "holdout", "accuracy", &acc);
    info_num(h, "holdout", "miou", &miou);
    info_num(h, "holdout", "patches", &nh);
    info_num(h, "patches", "labelled", &lab_n);
    info_num(h, "l2", NULL, &lam);
    info_num(h, "iterations", NULL, &it);
    info_num(h, "final_loss", NULL, &loss);
    CHECKF(lab_n == 72 && nh >= 5 && nh <= 25 && acc >= 0 && acc <= 1 && miou >= 0 &&
           lam == 1e-3 && it >= 1 && loss > 0, "labelled %g held-out %g acc %g miou %g l2 %g "
           "it %g loss %g", lab_n, nh, acc, miou, lam, it, loss);
    CHECKF(acc >= 0.9, "held-out accuracy %g", acc);
    printf("    held-out: %g patches, accuracy %.3f, mIoU %.3f; %g iterations, loss %.4g\n", nh,
           acc, miou, it, loss);
    /* the head on the unlabelled right half of the work folder's features */
    snprintf(q, sizeof q, "%s/water.dmseg.features/features.tif", t);
    int n;
    double right = accuracy_right(h, q, 6, &n);
    printf("    unlabelled half: %.3f of %d patches right\n", right, n);
    CHECKF(n == 72 && right >= 0.95, "%.3f of %d patches right", right, n);
    /* a rerun reuses the work folder; --features on it gives the same head */
    snprintf(args, sizeof args, "-m %s --labels %s %s -o %s/again.dmseg --work "
             "%s/water.dmseg.features --tile 64 --halo 16", model(), lab, scene, t, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "up to date") && !strstr(out, "tiles mapped"), "%s", out);
    snprintf(args, sizeof args, "--features %s --labels %s -o %s/f.dmseg", q, lab, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/f.dmseg", t);
    CHECKF(dm_seg_head_load(p, &h2, &err) == 0, "%s", err.msg);
    double worst;
    CHECKF(same_head(h, h2, &worst) && worst == 0 && !strcmp(h2->backbone_sha256, sha) &&
           !strcmp(h2->arch, "custom") && h2->layer == -1 && !strcmp(h2->norm, "sat"),
           "--features head differs by %g", worst);
    dm_seg_head_free(h2);
    h2 = NULL;
    /* int8 features in blocks (features.vrt): decoded within half a step of the float32 ones,
     * and a head that still maps the unlabelled half */
    snprintf(args, sizeof args, "-m %s --labels %s %s -o %s/q.dmseg --tile 64 --halo 16 "
             "--quantize int8 --max-cog-gib 0.000001", model(), lab, scene, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/q.dmseg.features/features.vrt", t);
    CHECKF(dm_exists(p), "no %s", p);
    {
        dm_features_in *fa = NULL, *fb = NULL;
        CHECKF(dm_features_in_open(q, &fa, &err) == 0, "%s", err.msg);
        CHECKF(dm_features_in_open(p, &fb, &err) == 0, "%s", err.msg);
        const dm_features_info *ia = dm_features_in_info(fa), *ib = dm_features_in_info(fb);
        enum { NP = 144 };
        int px[NP], py[NP];
        for (int i = 0; i < NP; i++)
            px[i] = i % 12, py[i] = i / 12;
        float *va = malloc(sizeof *va * NP * 128), *vb = malloc(sizeof *vb * NP * 128);
        uint8_t oka[NP], okb[NP];
        int ra = dm_features_in_read(fa, px, py, NP, va, oka, &err);
        int rb = dm_features_in_read(fb, px, py, NP, vb, okb, &err);
        double worst = 0, step = 0;
        for (int b = 0; b < 128; b++) { /* the largest step: max |v| / 127 of any band */
            double m = 0;
            for (int i = 0; i < NP; i++)
                m = fmax(m, fabs(va[i * 128 + b]));
            step = fmax(step, m / 127);
        }
        for (int i = 0; i < NP * 128; i++)
            worst = fmax(worst, fabs((double)va[i] - vb[i]));
        int all = 1;
        for (int i = 0; i < NP; i++)
            all = all && oka[i] && okb[i];
        int meta = ib->int8 && !ia->int8 && ib->D == 128 && ib->layer == -1 &&
                   !strcmp(ib->sha256, sha) && ib->W == 12 && ib->H == 12;
        free(va), free(vb);
        dm_features_in_close(fa), dm_features_in_close(fb);
        CHECKF(ra == 0 && rb == 0 && all && meta, "read %d %d, all valid %d, meta %d", ra, rb,
               all, meta);
        CHECKF(worst <= step / 2 * 1.001 && worst > 0, "int8 off by %g (step %g)", worst, step);
    }
    snprintf(p, sizeof p, "%s/q.dmseg", t);
    CHECKF(dm_seg_head_load(p, &h2, &err) == 0, "%s", err.msg);
    right = accuracy_right(h2, q, 6, &n);
    CHECKF(h2->C == 3 && right >= 0.95, "int8 head: %.3f of %d patches right", right, n);
    dm_seg_head_free(h2);
    h2 = NULL;
    /* --classes overrides the names; --holdout 0 leaves no held-out patch */
    snprintf(p, sizeof p, "%s/classes.csv", t);
    FILE *f = fopen(p, "w");
    fprintf(f, "id,name,color\n# water is open water\n2,\"open water, lakes\",#0000ff\n7,crops\n");
    fclose(f);
    snprintf(args, sizeof args, "--features %s --labels %s --classes %s --holdout 0 -o %s/c.dmseg",
             q, lab, p, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "held-out: none"), "%s", out);
    snprintf(p, sizeof p, "%s/c.dmseg", t);
    CHECKF(dm_seg_head_load(p, &h2, &err) == 0, "%s", err.msg);
    CHECKF(!strcmp(h2->cls[0].name, "open water, lakes") && h2->cls[0].rgb[2] == 255 &&
           h2->cls[0].rgb[0] == 0 && !strcmp(h2->cls[1].name, "forest") &&
           !strcmp(h2->cls[2].name, "crops") && !memcmp(h2->cls[2].rgb, cover_rgb[2], 3),
           "%s %s %s", h2->cls[0].name, h2->cls[1].name, h2->cls[2].name);
    info_num(h2, "holdout", "patches", &nh);
    info_num(h2, "patches", "train", &lab_n);
    CHECK(nh == 0 && lab_n == 72);
    dm_seg_head_free(h2);
    dm_seg_head_free(h);
    /* bad inputs, on the same features: no head written */
    struct { const char *what, *lab, *extra, *expect; } bad[] = {
        { "one class", "one.tif", "", "only one class" },
        { "no patch after the rule", "thin.tif", "", "no patch takes a class" },
        { "an id out of range", "big.tif", "", "is not a class id" },
        { "elsewhere", "far.tif", "", "do not overlap" },
        { "a field for a raster", "labels.tif", "--label-field x", "for vector labels" },
        { "not features", "labels.tif", "SCENE", "not a dinomap features raster" },
    };
    CHECK(make_labels(strcat(strcpy(p, t), "/one.tif"), 1, 96, 0, 1, 0) == 0);
    CHECK(make_labels(strcat(strcpy(p, t), "/big.tif"), 1, 96, 0, -1, 300) == 0);
    {   /* every other column of pixels: at most half of a patch, never of one class... */
        snprintf(p, sizeof p, "%s/thin.tif", t);
        CHECK(make_labels(p, 1, 96, 0, -1, 0) == 0);
        GDALDatasetH d = GDALOpen(p, GA_Update);
        uint8_t *b = malloc(SIDE * SIDE);
        CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, SIDE, SIDE, b, SIDE, SIDE,
                           GDT_Byte, 0, 0) == CE_None);
        for (int i = 0; i < SIDE * SIDE; i++) /* ...with a pixel fewer than half */
            b[i] = (i % SIDE) % 2 || (i / SIDE) % 16 == 0 ? 0 : b[i];
        CHECK(GDALRasterIO(GDALGetRasterBand(d, 1), GF_Write, 0, 0, SIDE, SIDE, b, SIDE, SIDE,
                           GDT_Byte, 0, 0) == CE_None);
        free(b);
        GDALClose(d);
        snprintf(p, sizeof p, "%s/far.tif", t);
        CHECK(make_labels(p, 1, 96, 0, -1, 0) == 0);
        d = GDALOpen(p, GA_Update);
        double gt[6] = { scene_gt[0] + 5000, 1, 0, scene_gt[3], 0, -1 };
        GDALSetGeoTransform(d, gt);
        GDALClose(d);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(p, sizeof p, "%s/bad%zu.dmseg", t, i);
        snprintf(args, sizeof args, "--features %s --labels %s/%s %s -o %s",
                 !strcmp(bad[i].extra, "SCENE") ? scene : q, t, bad[i].lab,
                 !strcmp(bad[i].extra, "SCENE") ? "" : bad[i].extra, p);
        int rc = train(args, &out);
        CHECKF(rc == 1 && strstr(out, bad[i].expect) && !strncmp(out, "dinomap: ", 9),
               "%s: exit %d: %s", bad[i].what, rc, out);
        CHECKF(!dm_exists(p), "%s: a head was written", bad[i].what);
    }
}

TEST(seg_train_vector_labels_give_the_raster_head)
{
    const char *t = dm_test_tmpdir(), *out;
    char scene[1100], lab[1100], gj[1100], args[8192], p[1200], q[1200];
    snprintf(scene, sizeof scene, "%s/scene.tif", t);
    snprintf(lab, sizeof lab, "%s/labels.tif", t);
    snprintf(gj, sizeof gj, "%s/labels.geojson", t);
    CHECK(make_scene(scene) == 0);
    CHECK(make_labels(lab, 1, 96, 0, -1, 0) == 0);
    CHECK(make_geojson(gj, 96, 0, 0) == 0);
    /* the polygons (in EPSG:4326) select the tiles of the features run */
    snprintf(args, sizeof args, "-m %s --labels %s --label-field cls %s -o %s/v.dmseg --tile 64 "
             "--halo 16", model(), gj, scene, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    snprintf(q, sizeof q, "%s/v.dmseg.features/features.tif", t);
    snprintf(args, sizeof args, "--features %s --labels %s -o %s/r.dmseg", q, lab, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    dm_seg_head *v = NULL, *r = NULL, *s = NULL;
    dm_err err = { 0 };
    snprintf(p, sizeof p, "%s/v.dmseg", t);
    CHECKF(dm_seg_head_load(p, &v, &err) == 0, "%s", err.msg);
    snprintf(p, sizeof p, "%s/r.dmseg", t);
    CHECKF(dm_seg_head_load(p, &r, &err) == 0, "%s", err.msg);
    double worst;
    CHECKF(same_head(v, r, &worst) && worst <= 1e-5, "vector and raster heads differ by %g",
           worst);
    printf("    vector vs raster labels: weights differ by %g (relative)\n", worst);
    CHECK(v->cls[0].id == 2 && v->cls[1].id == 4 && v->cls[2].id == 7);
    /* the run mapped the tiles the polygons touch (px 0..96: two tiles of 64 px), 8 patches of
     * the scene's 12 across, all of them mapped */
    GDALDatasetH d = GDALOpen(q, GA_ReadOnly);
    float a = 0;
    int qw = d ? GDALGetRasterXSize(d) : 0, qh = d ? GDALGetRasterYSize(d) : 0;
    CPLErr e1 = d ? GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 7, 0, 1, 1, &a, 1, 1,
                                 GDT_Float32, 0, 0) : CE_Failure;
    if (d)
        GDALClose(d);
    CHECKF(qw == 8 && qh == SIDE / 16 && e1 == CE_None && !isnan(a), "%d×%d patches; patch 7: %g",
           qw, qh, a);
    /* the default field is the first string one: names, ids 1..n in sorted order */
    snprintf(args, sizeof args, "--features %s --labels %s -o %s/s.dmseg", q, gj, t);
    CHECKF(train(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/s.dmseg", t);
    CHECKF(dm_seg_head_load(p, &s, &err) == 0, "%s", err.msg);
    CHECKF(s->C == 3 && s->cls[0].id == 1 && !strcmp(s->cls[0].name, "field") &&
           s->cls[1].id == 2 && !strcmp(s->cls[1].name, "forest") && s->cls[2].id == 3 &&
           !strcmp(s->cls[2].name, "water"), "%d %s, %d %s", s->cls[0].id, s->cls[0].name,
           s->cls[1].id, s->cls[1].name);
    dm_seg_head_free(v), dm_seg_head_free(r), dm_seg_head_free(s);
    /* labels that changed their extent are not silently trained on the old folder */
    snprintf(p, sizeof p, "%s/gj2.geojson", t);
    CHECK(make_geojson(p, 48, 0, 0) == 0);
    snprintf(args, sizeof args, "-m %s --labels %s --label-field cls %s -o %s/v2.dmseg --work "
             "%s/v.dmseg.features --tile 64 --halo 16", model(), p, scene, t, t);
    int rc = train(args, &out);
    CHECKF(rc == 1 && strstr(out, "another extent") && strstr(out, "--overwrite"), "exit %d: %s",
           rc, out);
    CHECKF(!dm_exists(strcat(strcpy(p, t), "/v2.dmseg")), "a head was written");
    /* --overwrite recomputes the folder for them: one tile column now */
    strcat(args, " --overwrite");
    CHECKF(train(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "3 tiles mapped"), "%s", out);
}

TEST(seg_train_bad_labels_and_usage)
{
    const char *t = dm_test_tmpdir(), *out;
    char scene[1100], gj[1100], args[8192], p[1200], w[1200];
    snprintf(scene, sizeof scene, "%s/scene.tif", t);
    snprintf(gj, sizeof gj, "%s/labels.geojson", t);
    CHECK(dm_make_tif(scene, SIDE, SIDE, 3, scene_gt, 32631, -1, 5) == 0);
    CHECK(make_geojson(gj, 96, 0, 0) == 0);
    snprintf(p, sizeof p, "%s/h.dmseg", t);
    snprintf(w, sizeof w, "%s/h.dmseg.features", t);
    /* an unknown field names the fields there are */
    snprintf(args, sizeof args, "-m %s --labels %s --label-field klass %s -o %s", model(), gj,
             scene, p);
    int rc = train(args, &out);
    CHECKF(rc == 1 && strstr(out, "klass") && strstr(out, "name (String)") &&
           strstr(out, "cls (Integer)"), "exit %d: %s", rc, out);
    /* a class id out of 0..254 */
    CHECK(make_geojson(gj, 96, 0, 300) == 0);
    snprintf(args, sizeof args, "-m %s --labels %s --label-field cls %s -o %s", model(), gj,
             scene, p);
    rc = train(args, &out);
    CHECKF(rc == 1 && strstr(out, "class id 300") && strstr(out, "1..254"), "exit %d: %s", rc,
           out);
    /* labels 5 km away: refused before the model runs; nothing left behind */
    CHECK(make_geojson(gj, 96, 5000, 0) == 0);
    snprintf(args, sizeof args, "-m %s --labels %s %s -o %s --tile 64 --halo 16", model(), gj,
             scene, p);
    rc = train(args, &out);
    CHECKF(rc == 1 && strstr(out, "do not overlap the imagery") && strstr(out, gj),
           "exit %d: %s", rc, out);
    CHECKF(!dm_exists(p) && !dm_exists(w), "a head or a work folder was left");
    /* usage */
    snprintf(args, sizeof args, "--labels %s %s -o %s", gj, scene, p);
    rc = train(args, &out);
    CHECKF(rc == 2 && strstr(out, "-m WEIGHTS"), "exit %d: %s", rc, out);
    snprintf(args, sizeof args, "--features x.tif -m %s --labels %s -o %s", model(), gj, p);
    rc = train(args, &out);
    CHECKF(rc == 2 && strstr(out, "leave out -m"), "exit %d: %s", rc, out);
    snprintf(args, sizeof args, "--features x.tif --labels %s -o %s --holdout 1", gj, p);
    rc = train(args, &out);
    CHECKF(rc == 2 && strstr(out, "--holdout 1"), "exit %d: %s", rc, out);
    snprintf(args, sizeof args, "--features x.tif --labels %s -o %s --lables x", gj, p);
    rc = train(args, &out);
    CHECKF(rc == 2 && strstr(out, "did you mean --labels"), "exit %d: %s", rc, out);
    /* its help, reached through the seg dispatcher */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s seg train --help", dm_bin());
    CHECK(dm_run(cmd, &out) == 0 && strstr(out, "--labels LABELS") && !strstr(out, "--aoi"));
}

/* tests/test_seg.c — `dinomap seg`: a synthetic mosaic of three covers, a nearest-centroid head
 * built from a features run and applied (accuracy, class ids, colour table, RAT, seg.qml, COG,
 * MODE overviews, probabilities), input nodata at pixel resolution, k-means clusters (purity,
 * determinism, cluster.dmseg applied again), a killed and resumed run, a head change that only
 * re-finalizes, INI files, and the errors. */
#include <gdal.h>
#include <math.h>
#include <ogr_srs_api.h>
#include <cpl_conv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../heads/seg.h"
#include "golden.h"
#include "test.h"

#define W 192
#define H 192

static const char *tiny(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }

/* The cover of column x: three vertical bands of 64 px. */
static int cover(int x) { return x < 64 ? 0 : x < 128 ? 1 : 2; }

/* Three covers of clearly different colour and texture (values >= 20: 0 is the nodata value),
 * on a UTM grid of 0.6 m; nd: a nodata rectangle {x, y, w, h} or NULL. */
static int make_covers(const char *path, const int *nd)
{
    GDALAllRegister();
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, W, H, 3, GDT_Byte, NULL);
    if (!d)
        return -1;
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    GDALSetGeoTransform(d, gt);
    dm_set_epsg(d, 32631);
    uint8_t *buf = malloc((size_t)W * H);
    int rc = 0;
    for (int b = 0; b < 3 && !rc; b++) {
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int n = (int)(dm_hash32((uint32_t)(y * W + x) * 3u + (uint32_t)b) % 60), v;
                if (cover(x) == 0) /* smooth dark blue */
                    v = (int[]){ 30, 60, 140 }[b];
                else if (cover(x) == 1) /* noisy green */
                    v = (int[]){ 40, 120, 40 }[b] + n / (b == 2 ? 2 : 1);
                else /* bright stripes */
                    v = (int[]){ 150, 140, 120 }[b] +
                        ((x / 4) % 2) * (b == 0 ? 80 : b == 1 ? 40 : 0);
                if (nd && x >= nd[0] && x < nd[0] + nd[2] && y >= nd[1] && y < nd[1] + nd[3])
                    v = 0;
                buf[(size_t)y * W + x] = (uint8_t)v;
            }
        GDALRasterBandH h = GDALGetRasterBand(d, b + 1);
        if (nd)
            GDALSetRasterNoDataValue(h, 0);
        rc = GDALRasterIO(h, GF_Write, 0, 0, W, H, buf, W, H, GDT_Byte, 0, 0) != CE_None;
    }
    free(buf);
    GDALClose(d);
    return rc ? -1 : 0;
}

/* Band b (1-based) of a raster as float32 (or, with u8, bytes); *w, *h its size. */
static void *read_band(const char *path, int b, int u8, int *w, int *h)
{
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d), *h = GDALGetRasterYSize(d);
    void *v = malloc((size_t)*w * *h * (u8 ? 1 : 4));
    if (GDALRasterIO(GDALGetRasterBand(d, b), GF_Read, 0, 0, *w, *h, v, *w, *h,
                     u8 ? GDT_Byte : GDT_Float32, 0, 0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

static int run_seg(const char *args, const char **out)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s seg %s --progress none --tile 64 --halo 16", dm_bin(), args);
    return dm_run(cmd, out);
}

static int same_file(const char *a, const char *b)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "cmp -s %s %s", a, b);
    return dm_run(cmd, NULL) == 0;
}

/* A nearest-centroid head from a features run of the covers: W_k = 2·μ_k, b_k = −|μ_k|², μ_k the
 * mean feature of cover k's patches away from the borders; class ids 3, 5, 9. */
static const int ids[3] = { 3, 5, 9 };
static const char *const names[3] = { "water", "forest", "urban" };

static int make_head(const char *dir, const char *in, const char *head, int D_change,
                     const char *sha_override)
{
    char cmd[8192], p[1100];
    snprintf(cmd, sizeof cmd, "%s features --progress none -q -m %s %s -o %s/f --tile 64 "
             "--halo 16", dm_bin(), tiny(), in, dir);
    if (dm_run(cmd, NULL))
        return -1;
    snprintf(p, sizeof p, "%s/f/features.tif", dir);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return -1;
    int D = GDALGetRasterCount(d), fw = GDALGetRasterXSize(d), fh = GDALGetRasterYSize(d);
    const char *sha = GDALGetMetadataItem(d, "DINOMAP_WEIGHTS_SHA256", NULL);
    dm_seg_head *h = dm_seg_head_new(3, D - D_change);
    float *v = malloc(sizeof(float) * (size_t)fw * fh);
    int rc = 0;
    for (int b = 0; b < D - D_change && !rc; b++) {
        rc = GDALRasterIO(GDALGetRasterBand(d, b + 1), GF_Read, 0, 0, fw, fh, v, fw, fh,
                          GDT_Float32, 0, 0) != CE_None;
        for (int k = 0; k < 3; k++) {
            double s = 0;
            int n = 0;
            for (int y = 0; y < fh; y++)
                for (int x = 4 * k + 1; x <= 4 * k + 2; x++)
                    s += v[y * fw + x], n++;
            h->w[k * h->D + b] = (float)(2 * s / n);
            h->b[k] -= (float)((s / n) * (s / n));
        }
    }
    free(v);
    for (int k = 0; k < 3; k++) {
        h->cls[k].id = ids[k];
        snprintf(h->cls[k].name, sizeof h->cls[k].name, "%s", names[k]);
        h->cls[k].rgb[0] = (uint8_t)(10 + k), h->cls[k].rgb[1] = (uint8_t)(100 + k);
        h->cls[k].rgb[2] = (uint8_t)(200 + k);
    }
    snprintf(h->kind, sizeof h->kind, "logistic");
    snprintf(h->backbone_sha256, sizeof h->backbone_sha256, "%s",
             sha_override ? sha_override : sha ? sha : "");
    snprintf(h->norm, sizeof h->norm, "sat");
    GDALClose(d);
    dm_err err = { 0 };
    if (!rc)
        rc = dm_seg_head_save(h, head, &err);
    dm_seg_head_free(h);
    return rc;
}

static int class_index(int id)
{
    for (int k = 0; k < 3; k++)
        if (ids[k] == id)
            return k;
    return -1;
}

TEST(seg_apply_head_classes_styles_cog)
{
    const char *t = dm_test_tmpdir();
    char in[1100], head[1100], args[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/covers.tif", t);
    snprintf(head, sizeof head, "%s/covers.dmseg", t);
    CHECK(make_covers(in, NULL) == 0);
    CHECK(make_head(t, in, head, 0, NULL) == 0);
    /* blocks of 64 px: a 192-px raster then has overviews */
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/o --probabilities "
             "-co BLOCKSIZE=64", tiny(), head, in, t);
    CHECKF(run_seg(args, &out) == 0, "%s", out);
    CHECKF(strstr(out, "seg.tif") && strstr(out, "features.tif"), "%s", out);
    /* run.json tells the head it was made with */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import json, sys; r = json.load(open('%s/o/"
             "run.json'))['seg']; sys.exit(0 if r['kind'] and len(r['head_sha256']) == 64 and "
             "len(r['classes']) == 3 else 1)\"", t);
    CHECKF(dm_run(cmd, &out) == 0, "run.json has no seg head: %s", out);
    snprintf(p, sizeof p, "%s/o/seg.tif", t);
    int w, h;
    uint8_t *c = read_band(p, 1, 1, &w, &h);
    CHECK(c && w == W && h == H);
    /* accuracy away from the borders between covers; only the head's ids */
    long ok = 0, n = 0, other = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int k = class_index(c[y * W + x]);
            other += k < 0;
            if (abs(x - 64) < 24 || abs(x - 128) < 24)
                continue;
            ok += k == cover(x), n++;
        }
    printf("    nearest-centroid head: %.2f%% of the pixels away from the borders right\n",
           100.0 * ok / n);
    CHECKF(other == 0, "%ld pixels hold no class id of the head", other);
    CHECKF(ok >= 0.95 * n, "accuracy %.3f", (double)ok / n);
    /* the file: nodata, description, colour table, RAT, metadata */
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d != NULL);
    GDALRasterBandH b = GDALGetRasterBand(d, 1);
    int has = 0;
    double nd = GDALGetRasterNoDataValue(b, &has);
    GDALColorTableH ct = GDALGetRasterColorTable(b);
    GDALRasterAttributeTableH rat = GDALGetDefaultRAT(b);
    int good = has && nd == 255 && GDALGetRasterDataType(b) == GDT_Byte &&
               !strcmp(GDALGetDescription(b), "class") && ct && rat &&
               GDALRATGetRowCount(rat) == 3 && GDALRATGetColumnCount(rat) == 5;
    for (int k = 0; good && k < 3; k++) {
        const GDALColorEntry *e = GDALGetColorEntry(ct, ids[k]);
        good = e && e->c1 == 10 + k && e->c2 == 100 + k && e->c3 == 200 + k &&
               GDALRATGetValueAsInt(rat, k, 0) == ids[k] &&
               !strcmp(GDALRATGetValueAsString(rat, k, 1), names[k]) &&
               GDALRATGetValueAsInt(rat, k, 2) == 10 + k &&
               !strcmp(GDALRATGetNameOfCol(rat, 1), "Class");
    }
    dm_seg_head *hd = NULL;
    dm_err err = { 0 };
    char hsha[65] = "";
    if (!dm_seg_head_load(head, &hd, &err))
        dm_seg_head_sha256(hd, hsha);
    dm_seg_head_free(hd);
    const char *ms = GDALGetMetadataItem(d, "DINOMAP_HEAD_SHA256", NULL);
    const char *mr = GDALGetMetadataItem(d, "DINOMAP_OVERVIEW_RESAMPLING", NULL);
    const char *mw = GDALGetMetadataItem(d, "DINOMAP_WEIGHTS_SHA256", NULL);
    const char *mc = GDALGetMetadataItem(d, "DINOMAP_CLASSES", NULL);
    good = good && ms && !strcmp(ms, hsha) && mr && !strcmp(mr, "MODE") && mw &&
           strlen(mw) == 64 && mc && strstr(mc, "\"forest\"");
    /* MODE overviews: class ids only, and the majority of each 2×2 block of the full raster
     * where three of its four pixels agree */
    int nov = GDALGetOverviewCount(b), bad_ov = 0, checked = 0;
    GDALRasterBandH ov = nov ? GDALGetOverview(b, 0) : NULL;
    int ow = ov ? GDALGetRasterBandXSize(ov) : 0, oh = ov ? GDALGetRasterBandYSize(ov) : 0;
    uint8_t *o = ov ? malloc((size_t)ow * oh) : NULL;
    if (o && GDALRasterIO(ov, GF_Read, 0, 0, ow, oh, o, ow, oh, GDT_Byte, 0, 0) == CE_None) {
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                int v = o[y * ow + x], cnt = 0, px = c[(2 * y) * W + 2 * x];
                bad_ov += class_index(v) < 0 && v != 255;
                for (int u = 0; u < 4; u++)
                    cnt += c[(2 * y + u / 2) * W + 2 * x + u % 2] == px;
                if (cnt >= 3)
                    checked++, bad_ov += v != px;
            }
    } else {
        bad_ov = -1;
    }
    free(o);
    GDALClose(d);
    CHECKF(good, "seg.tif: nodata, description, colour table, RAT or metadata wrong");
    CHECKF(ow == W / 2 && bad_ov == 0 && checked > 0, "overviews: %d (first %d px wide), %d "
           "pixels not the majority class", nov, ow, bad_ov);
    snprintf(args, sizeof args, "/usr/bin/python3 -m osgeo_utils.samples."
             "validate_cloud_optimized_geotiff %s", p);
    CHECKF(dm_run(args, &out) == 0 && strstr(out, "is a valid cloud optimized"), "%s", out);
    /* seg.qml: a paletted style with the classes' colours and names */
    snprintf(args, sizeof args, "/usr/bin/python3 -c \"import xml.etree.ElementTree as E; "
             "r = E.parse('%s/o/seg.qml').getroot().find('pipe/rasterrenderer'); "
             "assert r.get('type') == 'paletted'; "
             "print(';'.join(e.get('value') + ',' + e.get('color') + ',' + e.get('label') "
             "for e in r.find('colorPalette')))\"", t);
    CHECKF(dm_run(args, &out) == 0 && strstr(out, "3,#0a64c8,water;5,#0b65c9,forest;"
                                                  "9,#0c66ca,urban"), "%s", out);
    /* probabilities: a band per class, named, summing to 1, their argmax the class */
    snprintf(p, sizeof p, "%s/o/seg_probabilities.tif", t);
    float *pr[3];
    for (int k = 0; k < 3; k++)
        pr[k] = read_band(p, k + 1, 0, &w, &h);
    CHECK(pr[0] && pr[1] && pr[2] && w == W && h == H);
    double worst = 0;
    long disagree = 0;
    for (int i = 0; i < W * H; i++) {
        double s = (double)pr[0][i] + pr[1][i] + pr[2][i];
        worst = fmax(worst, fabs(s - 1));
        int am = pr[1][i] > pr[0][i] ? 1 : 0;
        am = pr[2][i] > pr[am][i] ? 2 : am;
        disagree += ids[am] != c[i];
    }
    for (int k = 0; k < 3; k++)
        free(pr[k]);
    free(c);
    CHECKF(worst < 1e-5 && !disagree, "probabilities sum to 1 within %g; %ld argmax differ",
           worst, disagree);
    d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d && GDALGetRasterCount(d) == 3 &&
          !strcmp(GDALGetDescription(GDALGetRasterBand(d, 2)), "forest"));
    GDALClose(d);
    /* the same probabilities from features.tif and the head file by numpy: per-patch logits,
     * bilinear upsampling as torch's interpolate (align_corners=False), softmax */
    snprintf(args, sizeof args, "/usr/bin/python3 -c \"\n"
             "import json, struct, numpy as np\nfrom osgeo import gdal\n"
             "raw = open('%s', 'rb').read(); n = struct.unpack('<Q', raw[:8])[0]\n"
             "hd = json.loads(raw[8:8 + n]); d = raw[8 + n:]\n"
             "C, D = hd['weight']['shape']\n"
             "w = np.frombuffer(d[:4 * C * D], '<f4').reshape(C, D)\n"
             "b = np.frombuffer(d[4 * C * D:4 * C * D + 4 * C], '<f4')\n"
             "f = gdal.Open('%s/o/features.tif').ReadAsArray().astype(np.float64)\n"
             "lg = np.einsum('dyx,cd->yxc', f, w) + b\n"
             "def ax(n, np_):\n"
             "    s = np.maximum((np.arange(n) + 0.5) / 16 - 0.5, 0)\n"
             "    a = np.minimum(s.astype(int), np_ - 1)\n"
             "    return a, np.minimum(a + 1, np_ - 1), s - a\n"
             "ya, yb, wy = ax(%d, lg.shape[0]); xa, xb, wx = ax(%d, lg.shape[1])\n"
             "wy = wy[:, None, None]; wx = wx[None, :, None]\n"
             "up = (1 - wy) * ((1 - wx) * lg[ya][:, xa] + wx * lg[ya][:, xb]) + "
             "wy * ((1 - wx) * lg[yb][:, xa] + wx * lg[yb][:, xb])\n"
             "e = np.exp(up - up.max(2, keepdims=True)); ref = e / e.sum(2, keepdims=True)\n"
             "ours = gdal.Open('%s/o/seg_probabilities.tif').ReadAsArray().transpose(1, 2, 0)\n"
             "print('%%.2g' %% abs(ours - ref).max()); assert abs(ours - ref).max() < 1e-4\n"
             "\"", head, t, H, W, t);
    CHECKF(dm_run(args, &out) == 0, "%s", out);
    printf("    probabilities vs a numpy reference (torch's bilinear): max diff %s", out);
    /* item.json: the seg files, valid STAC */
    char root[1100];
    snprintf(root, sizeof root, "%s", dm_golden(".."));
    snprintf(args, sizeof args, "cd %s/o && grep -q '\"seg.tif\"' item.json && grep -q "
             "'\"seg.qml\"' item.json && grep -q '\"seg_probabilities.tif\"' item.json && "
             "/usr/bin/python3 %s/../stac_validate.py %s/stac item.json", t, root, root);
    CHECKF(dm_run(args, &out) == 0, "%s", out);
}

TEST(seg_nodata_follows_the_input)
{
    const char *t = dm_test_tmpdir();
    char in[1100], args[8192], p[1100];
    const char *out;
    static const int nd[4] = { 37, 70, 61, 45 }; /* not on the patch grid */
    snprintf(in, sizeof in, "%s/covers_nd.tif", t);
    CHECK(make_covers(in, nd) == 0);
    snprintf(args, sizeof args, "cluster -m %s -k 3 %s -o %s/o --probabilities", tiny(), in, t);
    CHECKF(run_seg(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/seg.tif", t);
    int w, h;
    uint8_t *c = read_band(p, 1, 1, &w, &h);
    snprintf(p, sizeof p, "%s/o/seg_probabilities.tif", t);
    float *p1 = read_band(p, 1, 0, &w, &h);
    CHECK(c && p1);
    long in_nd = 0, bad_nd = 0, far = 0, bad_far = 0, near_255 = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int inside = x >= nd[0] && x < nd[0] + nd[2] && y >= nd[1] && y < nd[1] + nd[3];
            int dx = x < nd[0] ? nd[0] - x : x >= nd[0] + nd[2] ? x - nd[0] - nd[2] + 1 : 0;
            int dy = y < nd[1] ? nd[1] - y : y >= nd[1] + nd[3] ? y - nd[1] - nd[3] + 1 : 0;
            int v = c[y * W + x];
            if (inside) {
                in_nd++;
                bad_nd += v != 255 || !isnan(p1[y * W + x]);
            } else if (dx > 16 || dy > 16) {
                far++;
                bad_far += v == 255 || isnan(p1[y * W + x]);
            } else {
                near_255 += v == 255;
            }
        }
    free(c), free(p1);
    printf("    nodata block of %ld px: all 255; %ld valid pixels next to it without a class\n",
           in_nd, near_255);
    CHECKF(!bad_nd && !bad_far, "%ld of %ld nodata pixels with a class, %ld of %ld valid ones "
           "without", bad_nd, in_nd, bad_far, far);
}

/* purity: the share of pixels (away from the borders) whose cluster's dominant cover is theirs */
static double purity(const uint8_t *c)
{
    long m[256][3] = { { 0 } }, n = 0, s = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if (abs(x - 64) >= 24 && abs(x - 128) >= 24)
                m[c[y * W + x]][cover(x)]++, n++;
    for (int v = 0; v < 256; v++) {
        long best = 0;
        for (int k = 0; k < 3; k++)
            best = m[v][k] > best ? m[v][k] : best;
        s += v == 255 ? 0 : best;
    }
    return n ? (double)s / n : 0;
}

TEST(seg_cluster_separates_and_is_deterministic)
{
    const char *t = dm_test_tmpdir();
    char in[1100], args[8192], a[1100], b[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/covers.tif", t);
    CHECK(make_covers(in, NULL) == 0);
    /* one run, and one killed after its 4th tile and resumed on other threads (a folder keeps
     * its first invocation's GEMM slicing: the same features) */
    snprintf(args, sizeof args, "cluster -m %s -k 3 --seed 7 %s -o %s/c0 --chunk 1 --threads 1",
             tiny(), in, t);
    CHECKF(run_seg(args, &out) == 0 && strstr(out, "cluster.dmseg"), "%s", out);
    snprintf(args, sizeof args, "cd %s && DINOMAP_FAULT=tile:4 %s seg cluster -m %s -k 3 --seed 7 "
             "%s -o %s/c1 --chunk 1 --threads 1 --progress none --tile 64 --halo 16", t,
             dm_bin(), tiny(), in, t);
    CHECKF(dm_run(args, &out) != 0, "the fault did not stop the run: %s", out);
    snprintf(args, sizeof args, "cluster -m %s -k 3 --seed 7 %s -o %s/c1 --chunk 1 --threads 2",
             tiny(), in, t);
    CHECKF(run_seg(args, &out) == 0 && strstr(out, "resuming"), "%s", out);
    snprintf(a, sizeof a, "%s/c0/cluster.dmseg", t);
    snprintf(b, sizeof b, "%s/c1/cluster.dmseg", t);
    CHECKF(same_file(a, b), "the same seed, interrupted and on other threads: other clusters");
    int w, h;
    snprintf(a, sizeof a, "%s/c0/seg.tif", t);
    snprintf(b, sizeof b, "%s/c1/seg.tif", t);
    uint8_t *c0 = read_band(a, 1, 1, &w, &h), *c1 = read_band(b, 1, 1, &w, &h);
    CHECK(c0 && c1 && !memcmp(c0, c1, (size_t)W * H));
    double pu = purity(c0);
    printf("    k-means, K = 3: purity %.3f\n", pu);
    CHECKF(pu >= 0.9, "purity %.3f", pu);
    /* the head: kind kmeans, classes 1..3, the backbone's hash, k and seed in its info */
    dm_seg_head *hd = NULL;
    dm_err err = { 0 };
    snprintf(a, sizeof a, "%s/c0/cluster.dmseg", t);
    CHECKF(dm_seg_head_load(a, &hd, &err) == 0, "%s", err.msg);
    int ok = !strcmp(hd->kind, "kmeans") && hd->C == 3 && hd->cls[2].id == 3 &&
             !strcmp(hd->cls[0].name, "cluster 1") && strlen(hd->backbone_sha256) == 64 &&
             hd->info && strstr(hd->info, "\"k\":3") && strstr(hd->info, "\"seed\":7") &&
             strstr(hd->info, "\"iterations\"") && strstr(hd->info, "\"inertia\"");
    dm_seg_head_free(hd);
    CHECKF(ok, "cluster.dmseg's metadata");
    /* applied as a head, it gives the same classes */
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/a", tiny(), a, in, t);
    CHECKF(run_seg(args, &out) == 0, "%s", out);
    snprintf(b, sizeof b, "%s/a/seg.tif", t);
    uint8_t *c2 = read_band(b, 1, 1, &w, &h);
    CHECK(c2 && !memcmp(c0, c2, (size_t)W * H));
    /* another seed: the outputs are rebuilt, no tile recomputed */
    snprintf(args, sizeof args, "cluster -m %s -k 4 --seed 8 %s -o %s/c0 --chunk 1", tiny(), in,
             t);
    CHECKF(run_seg(args, &out) == 0 && strstr(out, "0 tiles mapped"), "%s", out);
    snprintf(a, sizeof a, "%s/c0/seg.tif", t);
    uint8_t *c3 = read_band(a, 1, 1, &w, &h);
    int has4 = 0;
    for (int i = 0; c3 && i < W * H; i++)
        has4 |= c3[i] == 4;
    free(c0), free(c1), free(c2), free(c3);
    CHECKF(has4, "-k 4 in the same folder: no class 4");
}

static int read_all(const char *path, uint8_t **v, float **p)
{
    char f[1100];
    int w, h;
    snprintf(f, sizeof f, "%s/seg.tif", path);
    *v = read_band(f, 1, 1, &w, &h);
    snprintf(f, sizeof f, "%s/seg_probabilities.tif", path);
    *p = read_band(f, 2, 0, &w, &h);
    return *v && *p ? 0 : -1;
}

static long mtime_ns(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : st.st_mtim.tv_sec * 1000000000L + st.st_mtim.tv_nsec;
}

TEST(seg_resume_head_change_and_ini)
{
    const char *t = dm_test_tmpdir();
    char in[1100], head[1100], head2[1100], args[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/covers.tif", t);
    snprintf(head, sizeof head, "%s/covers.dmseg", t);
    snprintf(head2, sizeof head2, "%s/other.dmseg", t);
    CHECK(make_covers(in, NULL) == 0);
    CHECK(make_head(t, in, head, 0, NULL) == 0);
    /* uninterrupted, in 9 chunks of one tile */
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/a --probabilities --chunk 1",
             tiny(), head, in, t);
    CHECKF(run_seg(args, &out) == 0, "%s", out);
    /* killed after the 5th tile, then resumed */
    snprintf(args, sizeof args, "cd %s && DINOMAP_FAULT=tile:5 %s seg apply -m %s --head %s %s "
             "-o %s/k --probabilities --chunk 1 --progress none --tile 64 --halo 16", t,
             dm_bin(), tiny(), head, in, t);
    int rc = dm_run(args, &out);
    CHECKF(rc != 0, "the fault did not stop the run: %s", out);
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/k --probabilities --chunk 1",
             tiny(), head, in, t);
    CHECKF(run_seg(args, &out) == 0 && strstr(out, "resuming"), "%s", out);
    uint8_t *va, *vk;
    float *pa, *pk;
    snprintf(p, sizeof p, "%s/a", t);
    CHECK(read_all(p, &va, &pa) == 0);
    snprintf(p, sizeof p, "%s/k", t);
    CHECK(read_all(p, &vk, &pk) == 0);
    int same = !memcmp(va, vk, (size_t)W * H) && !memcmp(pa, pk, sizeof(float) * W * H);
    free(vk), free(pk);
    CHECKF(same, "a killed and resumed run gives other outputs");
    /* one chunk instead of nine: the margins across chunk borders give the same pixels */
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/one --probabilities", tiny(),
             head, in, t);
    CHECKF(run_seg(args, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/one", t);
    CHECK(read_all(p, &vk, &pk) == 0);
    double worst = 0;
    for (int i = 0; i < W * H; i++)
        worst = fmax(worst, fabs(pa[i] - pk[i]));
    same = !memcmp(va, vk, (size_t)W * H);
    free(vk), free(pk), free(pa);
    CHECKF(same && worst < 1e-5, "9 chunks vs 1: classes %s, probabilities within %g",
           same ? "equal" : "differ", worst);
    /* another head in the same folder: the outputs only (ids 30, 50, 90) */
    dm_seg_head *h = NULL;
    dm_err err = { 0 };
    CHECK(dm_seg_head_load(head, &h, &err) == 0);
    for (int k = 0; k < 3; k++)
        h->cls[k].id = ids[k] * 10;
    CHECK(dm_seg_head_save(h, head2, &err) == 0);
    dm_seg_head_free(h);
    snprintf(p, sizeof p, "%s/a/chunks/c000000.features.tif", t);
    long m0 = mtime_ns(p);
    snprintf(args, sizeof args, "apply -m %s --head %s %s -o %s/a --probabilities --chunk 1",
             tiny(), head2, in, t);
    CHECKF(run_seg(args, &out) == 0 && strstr(out, "0 tiles mapped"), "%s", out);
    CHECK(mtime_ns(p) == m0);
    uint8_t *v2;
    float *p2;
    snprintf(p, sizeof p, "%s/a", t);
    CHECK(read_all(p, &v2, &p2) == 0);
    long bad = 0;
    for (int i = 0; i < W * H; i++)
        bad += v2[i] != va[i] * 10;
    free(v2), free(p2);
    CHECKF(bad == 0, "%ld pixels not the new head's ids", bad);
    /* the same again: nothing to do; dinomap finalize keeps the folder's head */
    snprintf(p, sizeof p, "%s/a/seg.tif", t);
    long m1 = mtime_ns(p);
    CHECKF(run_seg(args, &out) == 0 && !strstr(out, "tiles mapped"), "%s", out);
    CHECK(mtime_ns(p) == m1);
    snprintf(args, sizeof args, "%s finalize -q %s/a", dm_bin(), t);
    CHECKF(dm_run(args, &out) == 0, "%s", out);
    int w, hh;
    v2 = read_band(p, 1, 1, &w, &hh);
    CHECK(v2 && v2[0] == va[0] * 10);
    free(v2);
    /* a config file: products = seg (the features come with it), seg-head, the first head */
    snprintf(p, sizeof p, "%s/seg.ini", t);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    fprintf(f, "[run]\nproducts = seg\nmodel = %s\nseg-head = covers.dmseg\ninput = covers.tif\n"
               "output = a\ntile = 64\nhalo = 16\nchunk = 1\nprobabilities = yes\n", tiny());
    fclose(f);
    snprintf(args, sizeof args, "%s run %s --progress none", dm_bin(), p);
    CHECKF(dm_run(args, &out) == 0 && strstr(out, "0 tiles mapped"), "%s", out);
    snprintf(p, sizeof p, "%s/a/seg.tif", t);
    v2 = read_band(p, 1, 1, &w, &hh);
    CHECK(v2 && !memcmp(v2, va, (size_t)W * H));
    free(v2), free(va);
}

TEST(seg_errors)
{
    const char *t = dm_test_tmpdir();
    char in[1100], args[8192], p[1100], head[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/covers.tif", t);
    CHECK(make_covers(in, NULL) == 0);
    struct {
        const char *args, *want;
        int code;
    } usage[] = {
        { "apply -m %s %s -o %s/x", "missing --head", 2 },
        { "cluster -m %s %s -o %s/x", "missing -k K", 2 },
        { "cluster -m %s -k 1 %s -o %s/x", "-k 1: expected 2..254", 2 },
        { "cluster -m %s -k 255 %s -o %s/x", "-k 255: expected 2..254", 2 },
        { "cluster -m %s --clusters x %s -o %s/x", "-k x: expected 2..254", 2 },
        { "cluster -m %s -k 3 --seed -1 %s -o %s/x", "--seed -1", 2 },
        { "apply -m %s --head /nonexistent.dmseg %s -o %s/x", "/nonexistent.dmseg", 1 },
        { "apply -m %s --head %s -o %s/x", "missing", 2 }, /* the input taken as the head */
        { "cluster -m %s -k 3 --head h.dmseg %s -o %s/x", "unknown option", 2 },
    };
    for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++) {
        char a[4096];
        snprintf(a, sizeof a, usage[i].args, tiny(), in, t);
        int rc = run_seg(a, &out);
        CHECKF(rc == usage[i].code && strstr(out, usage[i].want) &&
               !strncmp(out, "dinomap: ", 9), "seg %s: exit %d\n%s", a, rc, out);
        snprintf(p, sizeof p, "%s/x", t);
        CHECKF(dm_dir_empty_or_missing(p), "seg %s left %s", a, p);
    }
    /* a head of another backbone, of another width, of another layer */
    static const struct {
        int dchange;
        const char *sha, *extra, *want;
    } bad[] = {
        { 0, "00000000000000000000000000000000000000000000000000000000000000aa", "",
          "head made with another backbone (sha 0000000000000000…) than backbone.pth" },
        { 64, NULL, "", "a head for 64-dimensional features, but backbone.pth gives 128" },
        { 0, NULL, "--layer 2", "--layer 2: the head covers.dmseg was fitted on the last "
          "block's features" },
        { 0, NULL, "--norm lvd", "--norm lvd: the head covers.dmseg" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(head, sizeof head, "%s/covers.dmseg", t);
        char sub[1100];
        snprintf(sub, sizeof sub, "%s/h%zu", t, i);
        mkdir(sub, 0755);
        CHECK(make_head(sub, in, head, bad[i].dchange, bad[i].sha) == 0);
        snprintf(args, sizeof args, "apply -m %s --head %s %s %s -o %s/x", tiny(), head, in,
                 bad[i].extra, t);
        int rc = run_seg(args, &out);
        CHECKF(rc == 1 && strstr(out, bad[i].want), "exit %d\n%s", rc, out);
        snprintf(p, sizeof p, "%s/x", t);
        CHECKF(dm_dir_empty_or_missing(p), "a refused head left %s", p);
    }
    /* more clusters than the run's sample holds */
    snprintf(args, sizeof args, "gdal_translate -q -srcwin 0 0 40 40 %s %s/small.tif", in, t);
    CHECK(dm_run(args, NULL) == 0);
    snprintf(args, sizeof args, "cluster -m %s -k 20 %s/small.tif -o %s/s", tiny(), t, t);
    CHECKF(run_seg(args, &out) == 1 && strstr(out, "sample holds 8 valid patches"), "%s", out);
    /* the commands' help, and train */
    static const char *const helps[][2] = { { "--help", "seg COMMAND" },
                                            { "apply --help", "--head HEAD.dmseg" },
                                            { "cluster --help", "-k, --clusters K" } };
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "%s seg %s", dm_bin(), helps[i][0]);
        CHECKF(dm_run(args, &out) == 0 && strstr(out, helps[i][1]), "%s", out);
    }
    snprintf(args, sizeof args, "%s seg train --help", dm_bin());
    CHECKF(dm_run(args, &out) == 0 && strstr(out, "--labels LABELS"), "%s", out);
    snprintf(args, sizeof args, "%s seg aply", dm_bin());
    CHECKF(dm_run(args, &out) == 2 && strstr(out, "did you mean apply"), "%s", out);
}

/* tests/test_chm.c — `dinomap chm`: one tile equals the reference pipeline, seams are detected
 * without blending and gone with it, nodata and edges, the COG and its QGIS style, bad inputs. */
#include <gdal.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../heads/heads.h"
#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

static float *read_band(const char *path, int *w, int *h)
{
    GDALAllRegister();
    GDALDatasetH d = GDALOpenEx(path, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!d)
        return NULL;
    *w = GDALGetRasterXSize(d);
    *h = GDALGetRasterYSize(d);
    float *v = malloc(sizeof(float) * (size_t)*w * *h);
    if (GDALRasterIO(GDALGetRasterBand(d, 1), GF_Read, 0, 0, *w, *h, v, *w, *h, GDT_Float32, 0,
                     0) != CE_None) {
        free(v);
        v = NULL;
    }
    GDALClose(d);
    return v;
}

/* the golden 64×64 uint8 tile as a georeferenced GeoTIFF */
static int golden_tif(const char *dir, char *out, size_t n)
{
    dm_npy a;
    if (dm_npy_read(dm_golden("chmv2_tiny/input_u8.npy"), &a, NULL))
        return -1;
    char raw[1024], vrt[1024], cmd[4096];
    snprintf(raw, sizeof raw, "%s/in.rgb", dir);
    snprintf(vrt, sizeof vrt, "%s/in.vrt", dir);
    FILE *f = fopen(raw, "wb");
    int ok = f && fwrite(a.u8, 1, (size_t)a.numel, f) == (size_t)a.numel;
    if (f)
        fclose(f);
    dm_npy_free(&a);
    f = fopen(vrt, "w");
    if (!ok || !f)
        return -1;
    fprintf(f, "<VRTDataset rasterXSize=\"64\" rasterYSize=\"64\">\n");
    for (int b = 0; b < 3; b++)
        fprintf(f, " <VRTRasterBand dataType=\"Byte\" band=\"%d\" subClass=\"VRTRawRasterBand\">"
                   "<SourceFilename relativetoVRT=\"1\">in.rgb</SourceFilename><ImageOffset>%d"
                   "</ImageOffset><PixelOffset>3</PixelOffset><LineOffset>192</LineOffset>"
                   "</VRTRasterBand>\n", b + 1, b);
    fprintf(f, "</VRTDataset>\n");
    fclose(f);
    snprintf(out, n, "%s/tile.tif", dir);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -a_srs EPSG:32631 -a_ullr 500000 4000038.4 "
             "500038.4 4000000 %s %s", vrt, out);
    return dm_run(cmd, NULL);
}

TEST(chm_one_tile_equals_reference)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], p[1100];
    const char *out;
    CHECK(golden_tif(t, in, sizeof in) == 0);
    snprintf(cmd, sizeof cmd,
             "%s chm --progress none -m %s --head %s %s -o %s/o --tile 64 "
             "--overlap 0",
             dm_bin(), dm_golden("chmv2_tiny/backbone.pth"), dm_golden("chmv2_tiny/head.pth"), in,
             t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(!strstr(out, "outside 0.3-1.5 m"), "a GSD notice at 0.6 m: %s", out);
    snprintf(p, sizeof p, "%s/o/chm.tif", t);
    int w, h;
    float *v = read_band(p, &w, &h);
    CHECK(v != NULL);
    dm_npy ref;
    CHECK(dm_npy_read(dm_golden("chmv2_tiny/height.npy"), &ref, NULL) == 0);
    double r = w == 64 && h == 64 ? dm_rel_err(v, ref.f, ref.numel) : INFINITY;
    free(v);
    dm_npy_free(&ref);
    CHECKF(r <= DM_GOLDEN_TOL, "chm.tif vs reference heights: %.3g (%d×%d)", r, w, h);
    /* the same through the Hugging Face file alone (head found inside it) */
    snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s/hf --tile 64 --overlap 32",
             dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
}

/* mean |jump| across the tile borders / mean |jump| between other neighbouring pixels */
static double seam_ratio(const float *v, int w, int h, int tile, int overlap)
{
    int s = tile - overlap, half = overlap / 2;
    char *border = calloc((size_t)(w > h ? w : h) + 1, 1);
    for (int k = 0; k * s - half < (w > h ? w : h); k++) {
        int e0 = k * s - half, e1 = e0 + tile; /* a tile's first column and one past its last */
        if (e0 > 0 && e0 < (w > h ? w : h))
            border[e0] = 1;
        if (e1 > 0 && e1 < (w > h ? w : h))
            border[e1] = 1;
    }
    double jb = 0, jo = 0;
    long nb = 0, no = 0;
    for (int y = 0; y < h; y++)
        for (int x = 1; x < w; x++) {
            double d = fabs(v[(size_t)y * w + x] - v[(size_t)y * w + x - 1]);
            if (border[x])
                jb += d, nb++;
            else
                jo += d, no++;
        }
    for (int y = 1; y < h; y++)
        for (int x = 0; x < w; x++) {
            double d = fabs(v[(size_t)y * w + x] - v[(size_t)(y - 1) * w + x]);
            if (border[y])
                jb += d, nb++;
            else
                jo += d, no++;
        }
    free(border);
    return nb && no && jo > 0 ? (jb / nb) / (jo / no) : INFINITY;
}

TEST(chm_seams_blended_away)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/m.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    CHECK(dm_make_tif(in, 224, 224, 3, gt, 32631, -1, 11) == 0);
    static const int ov[2] = { 0, 32 };
    double ratio[2];
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s/o%d --tile 64 "
                 "--overlap %d", dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"), in, t, i,
                 ov[i]);
        CHECKF(dm_run(cmd, &out) == 0, "%s", out);
        snprintf(p, sizeof p, "%s/o%d/chm.tif", t, i);
        int w, h;
        float *v = read_band(p, &w, &h);
        CHECK(v != NULL && w == 224 && h == 224);
        ratio[i] = seam_ratio(v, w, h, 64, ov[i]);
        free(v);
    }
    printf("    border jump / elsewhere: %.2f without blending, %.2f with 32 px overlap\n",
           ratio[0], ratio[1]);
    CHECKF(ratio[0] > 1.5, "the seam measure does not see seams without blending (%.2f)",
           ratio[0]);
    CHECKF(ratio[1] <= 1.5, "seams remain with blending (%.2f)", ratio[1]);
}

TEST(chm_nodata_edges_cog_and_style)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/n.tif", t);
    double gt[6] = { 500000, 2.0, 0, 4000000, 0, -2.0 };
    CHECK(dm_make_tif(in, 150, 130, 3, gt, 32631, 0, 12) == 0); /* odd size, nodata quarter */
    snprintf(cmd, sizeof cmd, "%s chm --progress none -m %s %s -o %s/o --tile 64 --halo 16",
             dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "outside 0.3-1.5 m"), "no notice for 2 m pixels: %s", out);
    snprintf(p, sizeof p, "%s/o/chm.tif", t);
    int w, h;
    float *v = read_band(p, &w, &h);
    CHECK(v != NULL);
    int bad_nd = 0, bad_val = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float z = v[(size_t)y * w + x];
            int nodata_px = y < 65 && x < 75;
            bad_nd += nodata_px && !isnan(z);
            bad_val += !nodata_px && !(z >= 0.0079f && z <= 96.01f);
        }
    free(v);
    CHECKF(w == 150 && h == 130, "%d×%d", w, h);
    CHECKF(!bad_nd && !bad_val, "%d nodata pixels with a height, %d valid pixels without one",
           bad_nd, bad_val);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -m osgeo_utils.samples."
             "validate_cloud_optimized_geotiff %s", p);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "is a valid cloud optimized"), "%s", out);
    GDALDatasetH d = GDALOpenEx(p, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    CHECK(d != NULL);
    int has = 0;
    double nd = GDALGetRasterNoDataValue(GDALGetRasterBand(d, 1), &has);
    const char *prod = GDALGetMetadataItem(d, "DINOMAP_PRODUCT", NULL);
    const char *hs = GDALGetMetadataItem(d, "DINOMAP_HEAD_SHA256", NULL);
    int ok = has && isnan(nd) && prod && !strcmp(prod, "canopy_height") && hs && strlen(hs) == 64;
    const char *desc = GDALGetDescription(GDALGetRasterBand(d, 1));
    ok = ok && desc && !strcmp(desc, "canopy_height_m");
    GDALClose(d);
    CHECK(ok);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import xml.etree.ElementTree as E; "
             "r = E.parse('%s/o/chm.qml').getroot().find('pipe/rasterrenderer'); "
             "s = r.find('rastershader/colorrampshader'); "
             "assert r.get('type') == 'singlebandpseudocolor' and s.get('minimumValue') == '0' "
             "and s.get('maximumValue') == '40' and len(s.findall('item')) >= 3; print('qml ok')\"",
             t);
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "qml ok"), "%s", out);
}

TEST(chm_bad_inputs)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192];
    const char *out;
    snprintf(in, sizeof in, "%s/b.tif", t);
    double gt[6] = { 500000, 0.5, 0, 4000000, 0, -0.5 };
    CHECK(dm_make_tif(in, 64, 64, 3, gt, 32631, -1, 13) == 0);
    struct {
        const char *args;
        int code;
        const char *msg;
    } c[] = {
        { "-m %s %s -o %s/o", 1, "no CHMv2 head" },
        { "-m %s --head %s %s -o %s/o --tile 48", 1, "multiple of 32" },
        { "-m %s --head %s %s -o %s/o --tile 64 --overlap 48", 2, "multiple of 32" },
        { "-m %s --head %s %s -o %s/o --tile 64 --overlap 64 --halo 16", 2, "disagree" },
        { "-m %s --head %s %s/none.tif -o %s/o", 1, "not a raster" },
        { "-m %s --head %s %s -o %s/o --taps 1,2", 2, "four block" },
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char a[4096];
        if (i == 0)
            snprintf(a, sizeof a, c[i].args, dm_golden("chmv2_tiny/backbone.pth"), in, t);
        else if (i == 4)
            snprintf(a, sizeof a, c[i].args, dm_golden("chmv2_tiny/backbone.pth"),
                     dm_golden("chmv2_tiny/head.pth"), t, t);
        else
            snprintf(a, sizeof a, c[i].args, dm_golden("chmv2_tiny/backbone.pth"),
                     dm_golden("chmv2_tiny/head.pth"), in, t);
        snprintf(cmd, sizeof cmd, "%s chm --progress none %s", dm_bin(), a);
        int st = dm_run(cmd, &out);
        CHECKF(st == c[i].code && strstr(out, c[i].msg), "case %zu: exit %d: %s", i, st, out);
        snprintf(cmd, sizeof cmd, "test ! -e %s/o", t);
        CHECKF(dm_run(cmd, NULL) == 0, "case %zu left %s/o behind", i, t);
    }
}

/* Edge windows: where the last column and row of windows were mostly padding, the heights along
 * the right and bottom edges were much noisier than along the left and top (mean jump between
 * neighbouring pixels in the outer 64 px, measured with the tiny model on the sample scene
 * resampled to 1600² px: right/bottom 2.07/1.95 × the interior median, left/top 0.75/1.19).
 * Every edge is now treated alike. */
TEST(chm_edges_alike)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/e.tif", t);
    snprintf(cmd, sizeof cmd, "gdal_translate -q -outsize 1600 1600 -b 3 -b 2 -b 1 -r bilinear "
             "-a_srs EPSG:32631 -a_ullr 500000 4000000 500960 3999040 samples/L7_ETMs.tif %s", in);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s chm -q -m %s %s -o %s/o --tile 384 --halo 64", dm_bin(),
             dm_golden("chmv2_tiny_hf/model.safetensors"), in, t);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/chm.tif", t);
    int w, h;
    float *v = read_band(p, &w, &h);
    CHECK(v != NULL && w == 1600 && h == 1600);
    /* mean |jump| (x and y) in the outer 64 px of each side */
    double sum[4] = { 0 };
    long n[4] = { 0 };
    for (int y = 0; y + 1 < h; y++)
        for (int x = 0; x + 1 < w; x++) {
            double j = fabs(v[(size_t)y * w + x + 1] - v[(size_t)y * w + x]) +
                       fabs(v[(size_t)(y + 1) * w + x] - v[(size_t)y * w + x]);
            int side[4] = { x < 64, y < 64, x >= w - 65, y >= h - 65 };
            for (int k = 0; k < 4; k++)
                if (side[k])
                    sum[k] += j, n[k]++;
        }
    free(v);
    double m[4];
    for (int k = 0; k < 4; k++)
        m[k] = sum[k] / n[k];
    double first = fmax(m[0], m[1]), last = fmax(m[2], m[3]);
    printf("    mean jump in the outer 64 px: left %.4f top %.4f right %.4f bottom %.4f\n", m[0],
           m[1], m[2], m[3]);
    CHECKF(last <= 1.35 * first, "right/bottom edges %.2f× as noisy as left/top", last / first);
}

/* The map is the Hann-weighted mean of the windows' own heights: each window run alone through
 * the library (dm_chm_run), blended here by hand (windows placed by the documented rule: a tile's
 * core minus the halo, at most a halo past the mosaic's end), against chm.tif. Checks the
 * engine's windows, chunked Σ files and finalize together (a blending slip at the right and
 * bottom edges went unseen before: heights off by up to 5 m there). */
TEST(chm_blend_equals_hand_computed)
{
    const char *t = dm_test_tmpdir();
    char in[1100], cmd[8192], p[1100];
    const char *out;
    snprintf(in, sizeof in, "%s/m.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    const int W = 300, H = 260, tile = 64, halo = 16, S = tile + 2 * halo;
    CHECK(dm_make_tif(in, W, H, 3, gt, 32631, -1, 41) == 0);
    snprintf(cmd, sizeof cmd, "%s chm -q -m %s %s -o %s/o --tile %d --halo %d --chunk 2", dm_bin(),
             dm_golden("chmv2_tiny_hf/model.safetensors"), in, t, tile, halo);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(p, sizeof p, "%s/o/chm.tif", t);
    int w, h;
    float *map = read_band(p, &w, &h);
    CHECK(map && w == W && h == H);
    /* the input, normalized with the CHMv2 statistics */
    GDALDatasetH d = GDALOpenEx(in, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    uint8_t *rgb = malloc((size_t)3 * W * H);
    CHECK(d && rgb && GDALDatasetRasterIO(d, GF_Read, 0, 0, W, H, rgb, W, H, GDT_Byte, 3, NULL, 0,
                                          0, 0) == CE_None);
    GDALClose(d);
    const dm_norm *nm = dm_norm_get("chm");
    dm_err err = { 0 };
    dm_model *m = NULL;
    dm_chm *head = NULL;
    dm_backend *be = NULL;
    dm_backend_opts bo = { 1, 0, DM_PREC_FP32 };
    CHECKF(dm_model_open(dm_golden("chmv2_tiny_hf/model.safetensors"), NULL, &m, &err) == 0 &&
           dm_chm_open(NULL, m->w, m, NULL, &head, &err) == 0 &&
           dm_backend_open("cpu", m, &bo, &be, &err) == 0, "%s", err.msg);
    double *num = calloc((size_t)W * H, sizeof *num), *den = calloc((size_t)W * H, sizeof *den);
    float *img = malloc(sizeof(float) * 3 * S * S), *hw = malloc(sizeof(float) * S * S);
    double wt[96];
    for (int i = 0; i < S; i++)
        wt[i] = pow(sin(M_PI * (i + 0.5) / S), 2);
    int W16 = (W + 15) / 16 * 16, H16 = (H + 15) / 16 * 16, rc = 0;
    for (int r = 0; !rc && r * tile < H; r++)
        for (int c = 0; !rc && c * tile < W; c++) {
            int x0 = c * tile - halo, y0 = r * tile - halo;
            x0 = x0 < W16 + halo - S ? x0 : W16 + halo - S;
            y0 = y0 < H16 + halo - S ? y0 : H16 + halo - S;
            for (int ch = 0; ch < 3; ch++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++) {
                        int gx = x0 + x, gy = y0 + y;
                        int in_m = gx >= 0 && gy >= 0 && gx < W && gy < H;
                        img[((size_t)ch * S + y) * S + x] =
                            in_m ? ((float)rgb[((size_t)ch * H + gy) * W + gx] / 255.0f -
                                    nm->mean[ch]) / nm->std[ch] : 0.0f;
                    }
            rc = dm_chm_run(head, be, img, S, S, NULL, hw, &err);
            for (int y = 0; !rc && y < S; y++)
                for (int x = 0; x < S; x++) {
                    int gx = x0 + x, gy = y0 + y;
                    if (gx < 0 || gy < 0 || gx >= W || gy >= H)
                        continue;
                    num[(size_t)gy * W + gx] += wt[y] * wt[x] * hw[(size_t)y * S + x];
                    den[(size_t)gy * W + gx] += wt[y] * wt[x];
                }
        }
    double md = 0, mx = 0;
    for (size_t i = 0; !rc && i < (size_t)W * H; i++) {
        double ref = num[i] / den[i], dd = fabs(map[i] - ref);
        md = dd > md || isnan(dd) ? (isnan(dd) ? INFINITY : dd) : md;
        mx = fabs(ref) > mx ? fabs(ref) : mx;
    }
    free(num), free(den), free(img), free(hw), free(rgb), free(map);
    dm_backend_close(be);
    dm_chm_free(head);
    dm_model_free(m);
    CHECKF(!rc, "%s", err.msg);
    printf(
        "    chm.tif vs the hand blend of %d windows: max |diff| %.2g m (heights up to %.1f m)\n",
        ((W + tile - 1) / tile) * ((H + tile - 1) / tile), md, mx);
    CHECKF(md <= 1e-4 * mx, "chm.tif differs from the hand blend by %.3g m", md);
}

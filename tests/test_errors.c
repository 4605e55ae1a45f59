/* tests/test_errors.c — the bad-inputs catalogue: each bad input a user can hand dinomap (broken,
 * odd or mis-georeferenced rasters, wrong or crafted weights and heads, unusable output folders,
 * bad config files), made here and run through the real command line. Each row checks the exit
 * status, that the message names the file and the problem, and what is left behind (nothing; or,
 * where the input is legitimate, a valid output; or an existing run untouched).
 *
 * The rows are the table of docs/errors.md: with DM_WRITE_ERRORS_MD=1 this test writes it,
 * otherwise it fails when the file differs from what the run printed, so the table cannot drift.
 * Commands run in the test's folder, so messages hold short relative names; the folder itself
 * and the repository's path are replaced by <tmp> and <repo>. */
#include <gdal.h>
#include <gdal_utils.h>
#include <cpl_string.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "golden.h"
#include "test.h"

enum after {
    NOTHING, /* the row's output folder is missing or empty */
    VALID,   /* exit 0 and out/features.tif holds valid values */
    SAME,    /* the row's folder (an existing run) is exactly as before */
    SHARD,   /* the huge VRT: a small peak memory, and outputs of the AOI's extent */
    PALETTE, /* VALID, and the same features as the gdal_translate -expand rgb copy */
};

typedef struct row {
    const char *what;   /* the case */
    const char *cmd;    /* after "dinomap", run in the test's folder */
    int code;           /* exit status */
    const char *needle; /* the problem, in the message line shown in the table */
    const char *file;   /* the file the same line must name */
    enum after after;
    const char *dir;    /* the folder `after` looks at (default "out") */
    int root;           /* needs root (mounts a tmpfs); skipped otherwise */
} row;

#define F "features -m vitl.pth "
#define Q " -o out --progress none"

static const row rows[] = {
    /* rasters */
    { "empty file (0 bytes)", F "empty.tif" Q, 1, "an empty file (0 bytes)", "empty.tif", NOTHING,
      0, 0 },
    { "truncated GeoTIFF (its first 2000 bytes)", F "trunc.tif" Q, 1, "truncated or damaged",
      "trunc.tif", NOTHING, 0, 0 },
    { "JPEG renamed .tif", F "jpeg.tif" Q, 1, "not a GeoTIFF despite its name", "jpeg.tif",
      NOTHING, 0, 0 },
    { "text file named .tif", F "text.tif" Q, 1, "not a raster GDAL can open", "text.tif",
      NOTHING, 0, 0 },
    { "input file missing", F "nothere.tif" Q, 1, "no such file", "nothere.tif", NOTHING, 0, 0 },
    { "a folder as input", F "adir" Q, 1, "not a raster GDAL can open", "adir", NOTHING, 0, 0 },
    { "zero-size raster (a VRT of 0 × 0 px)", F "zero.vrt" Q, 1, "not a raster GDAL can open",
      "zero.vrt", NOTHING, 0, 0 },
    { "1 × 1 px raster", F "one.tif" Q, 1, "smaller than half of one 16×16-px model patch",
      "one.tif", NOTHING, 0, 0 },
    { "8 × 16 px raster (half a patch: mapped)", F "half.tif" Q, 0, "8×16 px mosaic", "vitl.pth",
      VALID, 0, 0 },
    { "AOI outside the raster (empty intersection)", F "ok.tif --aoi far.geojson" Q, 1,
      "does not touch the mosaic", "far.geojson", NOTHING, 0, 0 },
    { "100,000 × 100,000 px VRT (one 128 px source), AOI on the source: streams, and maps the "
      "tiles the AOI meets (peak memory and output size checked)", F "huge.vrt --aoi aoi.geojson" Q, 0,
      "of the 100000×100000 px mosaic", "aoi.geojson", SHARD, 0, 0 },
    { "no CRS", F "nocrs.tif" Q, 1, "has no georeferencing (no CRS)", "nocrs.tif", NOTHING, 0,
      0 },
    { "no geotransform", F "nogt.tif" Q, 1, "has no georeferencing (no geotransform)",
      "nogt.tif", NOTHING, 0, 0 },
    { "pixel size 0 in the geotransform", F "flat.tif" Q, 1, "places no pixel on the map",
      "flat.tif", NOTHING, 0, 0 },
    { "rotated/sheared geotransform (warped north-up)", F "rot.tif" Q, 0, "not north-up",
      "rot.tif", VALID, 0, 0 },
    { "16-bit imagery without --scale (stretched)", F "u16.tif" Q, 0,
      "UInt16, not 8-bit: stretching", "input", VALID, 0, 0 },
    { "float32 imagery without --scale (stretched)", F "f32.tif" Q, 0,
      "Float32, not 8-bit: stretching", "input", VALID, 0, 0 },
    { "16-bit imagery, every pixel nodata", F "u16nd.tif" Q, 1, "no valid pixel to map",
      "u16nd.tif", NOTHING, 0, 0 },
    { "palette image (expanded to RGB)", F "pal.tif" Q, 0, "paletted image", "pal.tif", PALETTE,
      0, 0 },
    { "fewer bands than requested", F "ok.tif --bands 4,3,2" Q, 1, "asks for band 4", "ok.tif",
      NOTHING, 0, 0 },
    { "one grey band, default --bands", F "grey.tif" Q, 1, "has 1 band", "grey.tif", NOTHING, 0,
      0 },
    { "all nodata (8-bit)", F "allnd.tif" Q, 1, "nothing was mapped", "allnd.tif", NOTHING, 0,
      0 },
    { "two inputs in two CRSs (one warped)", F "ok.tif utm32.tif" Q, 0, "1 of 2 inputs warped",
      "input", VALID, 0, 0 },
    { "a georeferenced and an ungeoreferenced input",
      F "ok.tif nogt.tif --allow-ungeoreferenced" Q, 1, "cannot be placed in a mosaic",
      "nogt.tif", NOTHING, 0, 0 },
    /* weights and heads */
    { "weights file missing", "features -m nothere.pth ok.tif" Q, 1, "cannot open",
      "nothere.pth", NOTHING, 0, 0 },
    { "not a weights file (JSON)", "features -m case.json ok.tif" Q, 1, "not a weights file",
      "case.json", NOTHING, 0, 0 },
    { "truncated .pth (its first 1 MB)", "features -m cut.pth ok.tif" Q, 1, "truncated",
      "cut.pth", NOTHING, 0, 0 },
    { "a CHMv2 head given as the backbone", "features -m head.pth ok.tif" Q, 1,
      "no DINOv3 backbone", "head.pth", NOTHING, 0, 0 },
    { "weights of another model family (BERT-style safetensors)",
      "features -m bert.safetensors ok.tif" Q, 1, "no DINOv3 backbone", "bert.safetensors",
      NOTHING, 0, 0 },
    { ".pth whose pickle calls os.system", "features -m evil.pth ok.tif" Q, 1,
      "refusing global 'os system'", "evil.pth", NOTHING, 0, 0 },
    { "safetensors with overlapping tensors", "features -m overlap.safetensors ok.tif" Q, 1,
      "overlap", "overlap.safetensors", NOTHING, 0, 0 },
    { "safetensors offsets past the end of the file", "features -m past.safetensors ok.tif" Q, 1,
      "run past", "past.safetensors", NOTHING, 0, 0 },
    { "safetensors header length past the end of the file", "info long.safetensors", 1,
      "exceeds", "long.safetensors", NOTHING, 0, 0 },
    { "chm with a backbone and no head", "chm -m vitl.pth ok.tif" Q, 1, "holds no CHMv2 head",
      "vitl.pth", NOTHING, 0, 0 },
    { "chm head on a 2-block backbone", "chm -m hf/model.safetensors --head head.pth ok.tif" Q, 1,
      "pass --taps", "model.safetensors", NOTHING, 0, 0 },
    { "seg head fitted on another backbone",
      "seg apply -m other.pth --head cluster.dmseg ok.tif" Q, 1, "another backbone",
      "cluster.dmseg", NOTHING, 0, 0 },
    { "a CHMv2 head as a seg head", "seg apply -m vitl.pth --head head.pth ok.tif" Q, 1,
      "not a segmentation head", "head.pth", NOTHING, 0, 0 },
    { "forward on a 1 × 1 px image", "forward -m vitl.pth -i one.tif -o out", 1,
      "smaller than one 16×16 patch", "one.tif", NOTHING, 0, 0 },
    /* output folders */
    { "OUTDIR is a file", F "ok.tif -o afile --progress none", 1, "exists and is not a folder",
      "afile", SAME, "afile", 0 },
    { "OUTDIR under a file", F "ok.tif -o afile/out --progress none", 1, "Not a directory",
      "afile/out", NOTHING, "afile/out", 0 },
    { "OUTDIR on a read-only file system", F "ok.tif -o ro/out --progress none", 1,
      "Read-only file system", "ro/out", NOTHING, "ro/out", 1 },
    { "OUTDIR on a full disk (a 64 KiB tmpfs)", F "ok.tif -o full/out --progress none", 1,
      "No space left on device", "full/out", NOTHING, "full", 1 },
    { "OUTDIR holds another run (--tile 32, its run 64)",
      F "ok.tif -o run1 --progress none --tile 32 --halo 16", 1, "tile: 32 now, 64 in the",
      "run1", SAME, "run1", 0 },
    { "OUTDIR holds outputs but no tiles.gpkg", F "ok.tif -o fake --progress none", 1,
      "no tile index", "fake", SAME, "fake", 0 },
    { "OUTDIR's tiles.gpkg damaged", F "ok.tif -o broken --progress none", 1,
      "cannot open as a GeoPackage", "broken/tiles.gpkg", SAME, "broken", 0 },
    /* config files (dinomap run) */
    { "config: unknown key", "run unknown.ini", 2, "unknown key 'tiel'", "unknown.ini:6",
      NOTHING, 0, 0 },
    { "config: wrong type", "run type.ini", 2, "tile = abc: expected", "type.ini:6", NOTHING, 0,
      0 },
    { "config: input file missing", "run noinput.ini", 2, "No such file", "noinput.ini:4",
      NOTHING, 0, 0 },
    { "config: model file missing", "run nomodel.ini", 2, "No such file", "nomodel.ini:3",
      NOTHING, 0, 0 },
    { "config: input glob matches nothing", "run glob.ini", 2, "matches no file", "glob.ini:4",
      NOTHING, 0, 0 },
    { "config: unknown product", "run product.ini", 2, "unknown product 'cheese'",
      "product.ini:2", NOTHING, 0, 0 },
    { "config: a line that is not KEY = VALUE", "run syntax.ini", 2, "not a KEY = VALUE line",
      "syntax.ini:6", NOTHING, 0, 0 },
    { "config: unknown section", "run section.ini", 2, "unknown section [other]",
      "section.ini:8", NOTHING, 0, 0 },
    { "config file missing", "run nothere.ini", 2, "cannot open", "nothere.ini", NOTHING, 0, 0 },
    /* other commands */
    { "status of a folder that is no run", "status adir", 1, "not a dinomap run folder", "adir",
      NOTHING, 0, 0 },
    { "search in a folder without an index", "search adir --tile 1", 1, "no such file",
      "adir/tiles.gpkg", NOTHING, 0, 0 },
    { "search for a tile the run does not have", "search run1 --tile 99999", 1,
      "no done tile with that id", "run1/tiles.gpkg", NOTHING, 0, 0 },
};
#define NROWS (int)(sizeof rows / sizeof rows[0])

/* --- making the inputs ---------------------------------------------------------------------- */

static const double GT[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };

static int put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int bad = fputs(text, f) < 0;
    return fclose(f) || bad ? -1 : 0;
}

static int put_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int bad = fwrite(p, 1, n, f) != n;
    return fclose(f) || bad ? -1 : 0;
}

/* A GTiff of `bands` bands of type t: blocky values (or all `nodata` when all_nodata), an
 * optional geotransform, EPSG:32631. */
static int raster(const char *path, int w, int h, int bands, GDALDataType t, const double *gt,
                  int all_nodata, double nodata)
{
    GDALDatasetH d = GDALCreate(GDALGetDriverByName("GTiff"), path, w, h, bands, t, NULL);
    if (!d)
        return -1;
    if (gt)
        GDALSetGeoTransform(d, (double *)gt);
    dm_set_epsg(d, 32631);
    double *v = malloc(sizeof *v * (size_t)w * h);
    int rc = v ? 0 : -1;
    for (int b = 1; !rc && b <= bands; b++) {
        double top = t == GDT_Byte ? 255 : t == GDT_UInt16 ? 4000 : 0.35;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                v[(size_t)y * w + x] = all_nodata ? nodata
                    : (dm_hash32((uint32_t)((y / 8) * 977 + (x / 8) * 31 + b)) % 1000) * top / 999;
        GDALRasterBandH band = GDALGetRasterBand(d, b);
        if (all_nodata)
            GDALSetRasterNoDataValue(band, nodata);
        rc = GDALRasterIO(band, GF_Write, 0, 0, w, h, v, w, h, GDT_Float64, 0, 0) == CE_None ? 0
                                                                                          : -1;
    }
    free(v);
    GDALClose(d);
    return rc;
}

static int palette(const char *path)
{
    if (raster(path, 128, 128, 1, GDT_Byte, GT, 0, 0))
        return -1;
    GDALDatasetH d = GDALOpen(path, GA_Update);
    if (!d)
        return -1;
    GDALColorTableH ct = GDALCreateColorTable(GPI_RGB);
    for (int i = 0; i < 256; i++) {
        GDALColorEntry e = { (short)i, (short)(255 - i), (short)((i * 7) % 256), 255 };
        GDALSetColorEntry(ct, i, &e);
    }
    GDALRasterBandH b = GDALGetRasterBand(d, 1);
    int rc = GDALSetRasterColorTable(b, ct) == CE_None &&
             GDALSetRasterColorInterpretation(b, GCI_PaletteIndex) == CE_None ? 0 : -1;
    GDALDestroyColorTable(ct);
    GDALClose(d);
    return rc;
}

/* [u64 LE N][header][n zero bytes]; hdr_len overrides N when nonzero */
static int safetensors(const char *path, const char *header, size_t n, uint64_t hdr_len)
{
    size_t hl = strlen(header);
    uint64_t N = hdr_len ? hdr_len : hl;
    unsigned char *b = calloc(1, 8 + hl + n);
    if (!b)
        return -1;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(N >> (8 * i));
    memcpy(b + 8, header, hl);
    int rc = put_bytes(path, b, 8 + hl + n);
    free(b);
    return rc;
}

static int copy_head(const char *from, const char *to, size_t n)
{
    FILE *f = fopen(from, "rb");
    if (!f)
        return -1;
    char *b = malloc(n);
    size_t k = b ? fread(b, 1, n, f) : 0;
    fclose(f);
    int rc = k == n ? put_bytes(to, b, n) : -1;
    free(b);
    return rc;
}

static int ini(const char *name, const char *body)
{
    char text[1024];
    snprintf(text, sizeof text, "[run]\nproducts = features\nmodel = vitl.pth\n%s", body);
    return put_text(name, text);
}

static int sh(const char *cmd)
{
    const char *out;
    int st = dm_run(cmd, &out);
    if (st)
        printf("    setup: `%s`: exit %d: %s\n", cmd, st, out);
    return st;
}

static const char *AOI_FMT =
    "{\"type\":\"FeatureCollection\",\"crs\":{\"type\":\"name\",\"properties\":{\"name\":"
    "\"urn:ogc:def:crs:EPSG::32631\"}},\"features\":[{\"type\":\"Feature\",\"properties\":{},"
    "\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[[%d,3999923.2],[%d.8,3999923.2],"
    "[%d.8,4000000],[%d,4000000],[%d,3999923.2]]]}}]}\n";

/* Every input of the table, in the current folder (the test's). */
static int setup(int *mounted)
{
    char cmd[4096], buf[2048];
    const char *bin = dm_bin();
    GDALAllRegister();
    /* weights: links to the tiny test checkpoints, so messages hold short names */
    static const char *links[][2] = {
        { "vitl_sat_tiny/backbone.pth", "vitl.pth" },  { "chmv2_tiny/head.pth", "head.pth" },
        { "chmv2_tiny/backbone.pth", "other.pth" },    { "vitl_sat_tiny/case.json", "case.json" },
        { "vitl_sat_tiny_hf/model.safetensors", "hf/model.safetensors" },
        { "vitl_sat_tiny_hf/config.json", "hf/config.json" },
    };
    if (mkdir("hf", 0755) || mkdir("adir", 0755))
        return -1;
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(dm_golden(links[i][0]), links[i][1]))
            return -1;
    /* rasters */
    double rot[6] = { 500000, 0.6, 0.1, 4000000, 0.1, -0.6 };
    double flat[6] = { 500000, 0, 0, 4000000, 0, 0 };
    if (raster("ok.tif", 128, 128, 3, GDT_Byte, GT, 0, 0) || put_text("empty.tif", "") ||
        copy_head("ok.tif", "trunc.tif", 2000) || put_text("text.tif", "not an image\n") ||
        raster("one.tif", 1, 1, 3, GDT_Byte, GT, 0, 0) ||
        raster("half.tif", 8, 16, 3, GDT_Byte, GT, 0, 0) ||
        raster("nogt.tif", 128, 128, 3, GDT_Byte, NULL, 0, 0) ||
        raster("flat.tif", 64, 64, 3, GDT_Byte, flat, 0, 0) ||
        raster("rot.tif", 128, 128, 3, GDT_Byte, rot, 0, 0) ||
        raster("u16.tif", 128, 128, 3, GDT_UInt16, GT, 0, 0) ||
        raster("f32.tif", 128, 128, 3, GDT_Float32, GT, 0, 0) ||
        raster("u16nd.tif", 128, 128, 3, GDT_UInt16, GT, 1, 0) ||
        raster("grey.tif", 128, 128, 1, GDT_Byte, GT, 0, 0) ||
        raster("allnd.tif", 128, 128, 3, GDT_Byte, GT, 1, 0) || palette("pal.tif"))
        return -1;
    /* no CRS: the same pixels, the CRS removed */
    if (raster("nocrs.tif", 128, 128, 3, GDT_Byte, GT, 0, 0))
        return -1;
    GDALDatasetH d = GDALOpen("nocrs.tif", GA_Update);
    if (!d)
        return -1;
    GDALSetProjection(d, "");
    GDALClose(d);
    /* a JPEG renamed .tif; the second input in UTM 32 (the same place); the palette expanded */
    if (sh("gdal_translate -q -of JPEG ok.tif j.jpg && mv j.jpg jpeg.tif && rm -f j.jpg.aux.xml"
           " && gdalwarp -q -t_srs EPSG:32632 ok.tif utm32.tif"
           " && gdal_translate -q -expand rgb pal.tif palrgb.tif"))
        return -1;
    if (put_text("zero.vrt", "<VRTDataset rasterXSize=\"0\" rasterYSize=\"0\"><VRTRasterBand "
                 "dataType=\"Byte\" band=\"1\"/></VRTDataset>\n"))
        return -1;
    /* 100,000 × 100,000 px, one 128 px source at (50000, 50000), an AOI on it */
    FILE *f = fopen("huge.vrt", "w");
    if (!f)
        return -1;
    fprintf(f, "<VRTDataset rasterXSize=\"100000\" rasterYSize=\"100000\">\n<SRS>EPSG:32631</SRS>"
               "\n<GeoTransform>470000, 0.6, 0, 4030000, 0, -0.6</GeoTransform>\n");
    for (int b = 1; b <= 3; b++)
        fprintf(f, "<VRTRasterBand dataType=\"Byte\" band=\"%d\"><SimpleSource><SourceFilename "
                   "relativeToVRT=\"1\">ok.tif</SourceFilename><SourceBand>%d</SourceBand>"
                   "<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"128\" ySize=\"128\"/><DstRect "
                   "xOff=\"50000\" yOff=\"50000\" xSize=\"128\" ySize=\"128\"/></SimpleSource>"
                   "</VRTRasterBand>\n", b, b);
    fprintf(f, "</VRTDataset>\n");
    if (fclose(f))
        return -1;
    snprintf(buf, sizeof buf, AOI_FMT, 500000, 500076, 500076, 500000, 500000);
    if (put_text("aoi.geojson", buf))
        return -1;
    snprintf(buf, sizeof buf, AOI_FMT, 600000, 600076, 600076, 600000, 600000);
    if (put_text("far.geojson", buf))
        return -1;
    /* weights */
    if (copy_head("vitl.pth", "cut.pth", 1000000) ||
        safetensors("bert.safetensors", "{\"embeddings.word_embeddings.weight\":{\"dtype\":"
                    "\"F32\",\"shape\":[4,2],\"data_offsets\":[0,32]}}", 32, 0) ||
        safetensors("overlap.safetensors", "{\"cls_token\":{\"dtype\":\"F32\",\"shape\":[1,1,4],"
                    "\"data_offsets\":[0,16]},\"pos\":{\"dtype\":\"F32\",\"shape\":[4],"
                    "\"data_offsets\":[8,24]}}", 24, 0) ||
        safetensors("past.safetensors", "{\"cls_token\":{\"dtype\":\"F32\",\"shape\":[1,1,4],"
                    "\"data_offsets\":[0,16]},\"pos\":{\"dtype\":\"F32\",\"shape\":[4],"
                    "\"data_offsets\":[16,32]}}", 20, 0) ||
        safetensors("long.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                    "\"data_offsets\":[0,8]}}", 8, 1u << 20))
        return -1;
    /* a torch.save-style zip (stored entries) whose pickle calls os.system('ls') */
    if (sh("python3 -c \"import zipfile\n"
           "z = zipfile.ZipFile('evil.pth', 'w', zipfile.ZIP_STORED)\n"
           "z.writestr('archive/data.pkl', b'\\\\x80\\\\x02cos\\\\nsystem\\\\nq\\\\x00X\\\\x02"
           "\\\\x00\\\\x00\\\\x00lsq\\\\x01\\\\x85q\\\\x02Rq\\\\x03.')\n"
           "z.writestr('archive/version', b'3\\\\n')\n"
           "z.close()\""))
        return -1;
    /* output folders: a file, a run, outputs without an index, a damaged index */
    if (put_text("afile", "a file, not a folder\n"))
        return -1;
    snprintf(cmd, sizeof cmd, "%s features -q -m vitl.pth ok.tif -o run1 --progress none "
             "--tile 64 --halo 16 && %s seg cluster -q -m vitl.pth -k 3 ok.tif -o clus "
             "--progress none --tile 64 --halo 16 && cp clus/cluster.dmseg . && rm -r clus && "
             "mkdir fake broken && cp run1/features.tif fake/ && cp -r run1/. broken/ && "
             "echo damaged > broken/tiles.gpkg", bin, bin);
    if (sh(cmd))
        return -1;
    /* config files: line numbers as the table says */
    if (ini("unknown.ini", "input = ok.tif\noutput = out\ntiel = 64\n") ||
        ini("type.ini", "input = ok.tif\noutput = out\ntile = abc\n") ||
        ini("noinput.ini", "input = missing.tif\noutput = out\n") ||
        put_text("nomodel.ini", "[run]\nproducts = features\nmodel = nothere.pth\n"
                 "input = ok.tif\noutput = out\n") ||
        ini("glob.ini", "input = *.nomatch\noutput = out\n") ||
        put_text("product.ini", "[run]\nproducts = features, cheese\nmodel = vitl.pth\n"
                 "input = ok.tif\noutput = out\n") ||
        ini("syntax.ini", "input = ok.tif\noutput = out\nthis is not ini\n") ||
        ini("section.ini", "input = ok.tif\noutput = out\n\n[other]\nx = 1\n"))
        return -1;
    /* a read-only and a full file system, when root may mount them */
    mounted[0] = mounted[1] = 0;
    if (geteuid() == 0 && !mkdir("ro", 0755) && !mkdir("full", 0755)) {
        mounted[0] = mount("tmpfs", "ro", "tmpfs", MS_RDONLY, "size=1m") == 0;
        mounted[1] = mount("tmpfs", "full", "tmpfs", 0, "size=64k") == 0;
    }
    return 0;
}

/* --- checking and the table ------------------------------------------------------------------ */

/* `find DIR` with sizes and modification times, sorted: a folder's state (malloc'd); the lock
 * file is left out (each run that takes the lock writes its pid there, and one that made it
 * removes it, which touches the folder's own time) */
static char *snapshot(const char *dir)
{
    char cmd[1024];
    const char *out;
    snprintf(cmd, sizeof cmd, "find %s -mindepth 1 -printf '%%P %%s %%T@ %%m\\n' | "
             "grep -v '^.dinomap.lock ' | LC_ALL=C sort", dir);
    dm_run(cmd, &out);
    return strdup(out);
}

/* s with every `from` replaced by `to` (in place, n bytes) */
static void replace_all(char *s, size_t n, const char *from, const char *to)
{
    size_t fl = strlen(from), tl = strlen(to);
    if (!fl)
        return;
    char *p = s;
    while ((p = strstr(p, from))) {
        size_t rest = strlen(p + fl);
        if ((size_t)(p - s) + tl + rest + 1 > n)
            return;
        memmove(p + tl, p + fl, rest + 1);
        memcpy(p, to, tl);
        p += tl;
    }
}

/* The first output line holding needle, as the table shows it ("" when none). */
static void message_line(const char *out, const char *needle, const char *tmp, const char *repo,
                         char *line, size_t n)
{
    line[0] = '\0';
    const char *p = strstr(out, needle);
    if (!p)
        return;
    const char *b = p, *e = strchr(p, '\n');
    while (b > out && b[-1] != '\n')
        b--;
    size_t k = e ? (size_t)(e - b) : strlen(b);
    snprintf(line, n, "%.*s", (int)(k < n - 1 ? k : n - 1), b);
    replace_all(line, n, tmp, "<tmp>");
    replace_all(line, n, repo, "<repo>");
}

/* One table line (markdown): the command and the message as code spans. */
static void table_line(int i, const row *r, int code, const char *msg, char *out, size_t n)
{
    char m[2048];
    snprintf(m, sizeof m, "%s", msg);
    replace_all(m, sizeof m, "|", "\\|");
    int two = strchr(m, '`') != NULL; /* a code span holding a backtick: ``  ...  `` */
    snprintf(out, n, "| %d | %s | `dinomap %s` | %d | %s%s%s |\n", i + 1, r->what, r->cmd, code,
             two ? "`` " : "`", m, two ? " ``" : "`");
}

static const char *INTRO =
    "# Bad inputs: what dinomap says\n"
    "\n"
    "Every row is a bad (or odd) input a user can hand dinomap, made and run through the real\n"
    "command line by `tests/test_errors.c`: the exit status (0 done, 1 failure, 2 usage or a bad\n"
    "config file, 3 locked, 4 interrupted) and the line of its message that names the file and\n"
    "the problem. A failed run leaves nothing behind (no output folder, or an existing run\n"
    "exactly as it was); where an input is legitimate (16-bit or float imagery, a palette, a\n"
    "rotated geotransform, two CRSs) the run succeeds with a notice, and the test checks that\n"
    "the output is valid. The 100,000 × 100,000 px VRT row checks that the run streams (peak\n"
    "memory well under 1 GB where the raster is 30 GB).\n"
    "\n"
    "The inputs are made in a temporary folder (`<tmp>`); `vitl.pth`, `head.pth`, `other.pth`\n"
    "and `hf/` are the tiny test checkpoints of `tests/data/golden/`. The test fails when this\n"
    "table differs from what the commands print; after changing a message, regenerate it with\n"
    "\n"
    "```sh\n"
    "DM_WRITE_ERRORS_MD=1 DM_BIN=build/dinomap ./build/run_tests errors_catalogue\n"
    "```\n"
    "\n"
    "(from the repository root; the rows that mount a tmpfs need root and are kept as they are\n"
    "otherwise).\n"
    "\n"
    "| # | case | command | exit | message |\n"
    "|---|---|---|---|---|\n";

static void run_rows(const char *tmp, const char *repo, char *doc, size_t ndoc,
                     const char *old_doc, const int *mounted)
{
    snprintf(doc, ndoc, "%s", INTRO);
    double peak = 0;
    for (int i = 0; i < NROWS; i++) {
        const row *r = &rows[i];
        const char *dir = r->dir ? r->dir : "out";
        char line[2600], msg[2048], cmd[4096];
        int skip = r->root && !(strstr(r->cmd, "ro/") ? mounted[0] : mounted[1]);
        if (skip) { /* keep the table's row as it is */
            char key[16];
            snprintf(key, sizeof key, "\n| %d | ", i + 1);
            const char *p = old_doc ? strstr(old_doc, key) : NULL;
            const char *e = p ? strchr(p + 1, '\n') : NULL;
            printf("    row %d (%s): skipped, needs root and tmpfs mounts\n", i + 1, r->what);
            if (p && e)
                snprintf(line, sizeof line, "%.*s\n", (int)(e - p - 1), p + 1);
            else
                table_line(i, r, r->code, "(not run: needs root)", line, sizeof line);
            strncat(doc, line, ndoc - strlen(doc) - 1);
            continue;
        }
        char *before = r->after == SAME ? snapshot(dir) : NULL;
        const char *out;
        snprintf(cmd, sizeof cmd, "%s %s", dm_bin(), r->cmd);
        int st = r->after == SHARD ? dm_run_peak(cmd, &out, &peak) : dm_run(cmd, &out);
        message_line(out, r->needle, tmp, repo, msg, sizeof msg);
        table_line(i, r, st, msg[0] ? msg : "(no such line)", line, sizeof line);
        strncat(doc, line, ndoc - strlen(doc) - 1);
        CHECKF(st == r->code, "row %d (%s): exit %d, want %d: %s", i + 1, r->what, st, r->code,
               out);
        CHECKF(msg[0] && strstr(msg, r->file), "row %d (%s): no line with \"%s\" naming %s: %s",
               i + 1, r->what, r->needle, r->file, out);
        CHECKF(!strstr(out, "AddressSanitizer") && !strstr(out, "runtime error"),
               "row %d (%s): %s", i + 1, r->what, out);
        if (r->after == SAME) {
            char *now = snapshot(dir);
            int same = before && now && !strcmp(before, now);
            if (!same)
                printf("    before:\n%s    after:\n%s", before, now);
            free(before), free(now);
            CHECKF(same, "row %d (%s): %s changed", i + 1, r->what, dir);
        } else if (r->after == NOTHING) {
            CHECKF(dm_dir_empty_or_missing(dir), "row %d (%s): %s left behind", i + 1, r->what,
                   dir);
        } else if (r->after == SHARD) {
            /* a 30 GB raster in bounded memory, and outputs of the tiles the AOI meets */
            double limit = getenv("DM_SANITIZED") ? 1500 : 500;
            printf("    100,000 × 100,000 px VRT: peak %.0f MB\n", peak);
            CHECKF(peak > 0 && peak < limit, "huge VRT: peak %.0f MB (limit %.0f)", peak, limit);
            int w, h, nb;
            float *v = dm_read_all("out/features.tif", &w, &h, &nb);
            free(v);
            CHECKF(v && w <= 32 && h <= 32, "huge VRT: features.tif %d×%d px (the one 512-px "
                   "tile the AOI meets is 32 × 32 patches)", v ? w : -1, v ? h : -1);
        } else { /* VALID, PALETTE: a raster with valid values */
            int w, h, nb;
            float *v = dm_read_all("out/features.tif", &w, &h, &nb);
            size_t ok = 0;
            for (size_t k = 0; v && k < (size_t)w * h * nb; k++)
                ok += !isnan(v[k]);
            free(v);
            CHECKF(ok > 0, "row %d (%s): out/features.tif missing or all nodata", i + 1, r->what);
            if (r->after == PALETTE) {
                snprintf(cmd, sizeof cmd, "%s features -q -m vitl.pth palrgb.tif -o rgb "
                         "--progress none", dm_bin());
                CHECKF(dm_run(cmd, &out) == 0, "%s", out);
                char why[600];
                CHECKF(dm_same_raster("out/features.tif", "rgb/features.tif", why, sizeof why),
                       "palette vs gdal_translate -expand rgb: %s", why);
                dm_run("rm -rf rgb", NULL);
            }
        }
        dm_run("rm -rf out", NULL);
    }
}

static void catalogue(const char *tmp, const char *repo, char *doc, size_t ndoc,
                      const char *old_doc)
{
    int mounted[2] = { 0, 0 };
    int ok = setup(mounted) == 0;
    if (ok)
        run_rows(tmp, repo, doc, ndoc, old_doc, mounted);
    if (mounted[0])
        umount("ro");
    if (mounted[1])
        umount("full");
    CHECKF(ok, "making the inputs failed");
}

static char *slurp_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

TEST(errors_catalogue)
{
    char repo[PATH_MAX], cwd[PATH_MAX], md[PATH_MAX + 32];
    /* the repository: the current folder when it holds the tests, else above DM_BIN's folder */
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    snprintf(repo, sizeof repo, "%s", cwd);
    struct stat st;
    snprintf(md, sizeof md, "%s/tests/test_errors.c", repo);
    if (stat(md, &st) != 0) {
        snprintf(repo, sizeof repo, "%s", dm_bin());
        for (int k = 0; k < 2; k++) {
            char *s = strrchr(repo, '/');
            if (s)
                *s = '\0';
        }
    }
    snprintf(md, sizeof md, "%s/docs/errors.md", repo);
    int write = getenv("DM_WRITE_ERRORS_MD") && !strcmp(getenv("DM_WRITE_ERRORS_MD"), "1");
    char *old = slurp_text(md);
    (void)dm_golden("."); /* both resolved to absolute paths before the chdir */
    (void)dm_bin();
    const char *tmp = dm_test_tmpdir();
    size_t ndoc = 1 << 17;
    char *doc = malloc(ndoc);
    CHECK(doc != NULL);
    doc[0] = '\0';
    CHECK(chdir(tmp) == 0);
    catalogue(tmp, repo, doc, ndoc, old);
    CHECK(chdir(cwd) == 0);
    int n = 0;
    for (const char *p = doc; (p = strstr(p, "\n| ")); p++)
        n++;
    CHECKF(n - 1 == NROWS, "the table has %d rows of %d (a row failed above)", n - 1, NROWS);
    if (write) {
        FILE *f = fopen(md, "w");
        CHECKF(f && fputs(doc, f) >= 0 && !fclose(f), "cannot write %s", md);
        printf("    wrote %s (%d rows)\n", md, NROWS);
    } else {
        CHECKF(old != NULL, "%s is missing: make it with DM_WRITE_ERRORS_MD=1", md);
        if (strcmp(old, doc)) { /* the first line that differs */
            const char *a = old, *b = doc;
            while (*a && *a == *b)
                a++, b++;
            while (a > old && a[-1] != '\n')
                a--, b--;
            printf("    docs/errors.md says:\n    %.*s\n    the run printed:\n    %.*s\n",
                   (int)strcspn(a, "\n"), a, (int)strcspn(b, "\n"), b);
        }
        CHECKF(!strcmp(old, doc), "docs/errors.md differs from the run (regenerate it with "
               "DM_WRITE_ERRORS_MD=1)");
    }
    free(old);
    free(doc);
}

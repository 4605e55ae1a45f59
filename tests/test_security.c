/* tests/test_security.c — what a file from a stranger cannot make dinomap do: links planted in an
 * output folder (chunks/, the lock file, the index) are refused, never followed, and what they
 * point to is untouched; a user's OUTDIR that is itself a link still works; shard names that
 * leave the weights' folder; a config whose paths and values hold shell metacharacters runs
 * nothing; an encrypted zip entry in a .pth; a .npy header declaring terabytes or an overflowing
 * shape; shard folders whose names are SQL (bound as parameters, never spliced). */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/base/base.h"
#include "golden.h"
#include "test.h"

#define GEOM "--tile 32 --halo 16 --chunk 2 --progress none"

static const char *vit(void) { return dm_golden("vitl_sat_tiny/backbone.pth"); }

#define runf dm_runf

static int spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int bad = fwrite(p, 1, n, f) != n;
    return fclose(f) || bad ? -1 : 0;
}

/* A file outside the run that a planted link points to, and whether it is still as written. */
static const char bait[] = "not dinomap's: must stay as it is\n";

static int bait_intact(const char *path)
{
    char buf[256] = { 0 };
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return n == sizeof bait - 1 && memcmp(buf, bait, n) == 0;
}

static int make_in(const char *t)
{
    char p[1100];
    snprintf(p, sizeof p, "%s/in.tif", t);
    double gt[6] = { 500000, 0.6, 0, 4000000, 0, -0.6 };
    return dm_make_tif(p, 96, 80, 3, gt, 32631, -1, 7);
}

TEST(security_links_planted_in_the_output_folder_are_refused)
{
    const char *t = dm_test_tmpdir(), *out;
    char b[1100], o[1100], l[1200];
    CHECK(make_in(t) == 0);
    snprintf(b, sizeof b, "%s/bait.txt", t);
    CHECK(spit(b, bait, sizeof bait - 1) == 0);
    /* a run killed after its first chunk: a folder to plant links in and resume */
    snprintf(o, sizeof o, "%s/out", t);
    int st = runf(&out, "cd %s && DINOMAP_FAULT=tile:6 %s features -m %s in.tif -o out " GEOM, t,
                  dm_bin(), vit());
    CHECKF(st == 137, "exit %d: %s", st, out);
    static const char *const planted[] = {
        "chunks/c000003.features.tif",      /* a chunk file still to be written */
        "chunks/c000003.features.tif.part", /* its temporary name */
        "chunks/c000000.features.tif",      /* a done chunk's file, read by finalize */
        "features.tif",                     /* an output still to be written */
        "tiles.gpkg-journal",               /* SQLite's journal */
        ".dinomap.lock",                    /* truncated and written by the lock */
    };
    for (size_t i = 0; i < sizeof planted / sizeof planted[0]; i++) {
        snprintf(l, sizeof l, "%s/%s", o, planted[i]);
        char keep[1300];
        snprintf(keep, sizeof keep, "%s.keep", l);
        int had = rename(l, keep) == 0;
        CHECKF(symlink(b, l) == 0, "%s", l);
        st = runf(&out, "cd %s && %s features -m %s in.tif -o out " GEOM, t, dm_bin(), vit());
        CHECKF(st == 1, "%s: exit %d: %s", planted[i], st, out);
        CHECKF(strstr(out, planted[i]) && strstr(out, "symbolic link"), "%s: %s", planted[i], out);
        CHECKF(bait_intact(b), "%s: the file the link points to was changed", planted[i]);
        CHECK(unlink(l) == 0);
        CHECK(!had || rename(keep, l) == 0);
    }
    /* status and finalize refuse it too (they read the folder); the dangling kind as well */
    snprintf(l, sizeof l, "%s/chunks/planted", o);
    CHECK(symlink("/nonexistent/x", l) == 0);
    CHECKF(runf(&out, "%s finalize %s", dm_bin(), o) == 1 && strstr(out, "symbolic link"), "%s",
           out);
    CHECK(unlink(l) == 0);
    /* links gone: the run resumes and finishes */
    CHECKF(runf(&out, "cd %s && %s features -m %s in.tif -o out " GEOM, t, dm_bin(), vit()) == 0,
           "%s", out);
    CHECK(bait_intact(b));
}

TEST(security_outdir_itself_a_link_is_the_users_choice)
{
    const char *t = dm_test_tmpdir(), *out;
    char real[1100], l[1100];
    CHECK(make_in(t) == 0);
    snprintf(real, sizeof real, "%s/elsewhere", t);
    CHECK(mkdir(real, 0777) == 0);
    snprintf(l, sizeof l, "%s/out", t);
    CHECK(symlink(real, l) == 0);
    CHECKF(runf(&out, "cd %s && %s features -m %s in.tif -o out " GEOM, t, dm_bin(), vit()) == 0,
           "%s", out);
    snprintf(l, sizeof l, "%s/features.tif", real);
    CHECK(dm_exists(l));
}

TEST(security_shard_names_stay_in_the_weights_folder)
{
    const char *t = dm_test_tmpdir(), *out;
    static const char *const bad[] = { "../../x.safetensors", "/etc/passwd", "..", "a/b",
                                       "sub/../../y", "" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char d[1100], p[1200], json[600];
        snprintf(d, sizeof d, "%s/w%zu", t, i);
        CHECK(mkdir(d, 0777) == 0);
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
        snprintf(json, sizeof json, "{\"metadata\": {}, \"weight_map\": {\"embeddings.cls_token\""
                 ": \"%s\"}}", bad[i]);
        CHECK(spit(p, json, strlen(json)) == 0);
        int st = runf(&out, "%s info %s", dm_bin(), d);
        CHECKF(st == 1 && strstr(out, "shard name") && strstr(out, "model.safetensors.index.json"),
               "'%s': exit %d: %s", bad[i], st, out);
    }
}

/* Paths and values full of shell syntax are names, nothing more: no shell ever sees them. */
TEST(security_config_values_with_shell_metacharacters_run_nothing)
{
    const char *t = dm_test_tmpdir(), *out;
    char p[1100], ini[4096];
    CHECK(make_in(t) == 0);
    static const char *const evil[] = {
        "input = $(touch pwned1).tif\n",
        "input = `touch pwned2`.tif\n",
        "input = in.tif; touch pwned3\n",
        "input = in.tif\nco = COMPRESS=ZSTD; touch pwned4\n",
        "input = in.tif\nconfig = GDAL_CACHEMAX=64 | touch pwned5\n",
        "input = in.tif\naoi = x.gpkg && touch pwned6\n",
    };
    for (size_t i = 0; i < sizeof evil / sizeof evil[0]; i++) {
        snprintf(p, sizeof p, "%s/e%zu.ini", t, i);
        snprintf(ini, sizeof ini, "[run]\nproducts = features\nmodel = %s\n%soutput = o%zu\n"
                 "tile = 32\nhalo = 16\n", vit(), evil[i], i);
        CHECK(spit(p, ini, strlen(ini)) == 0);
        int st = runf(&out, "cd %s && %s run e%zu.ini --progress none", t, dm_bin(), i);
        CHECKF(st == 1 || st == 2, "case %zu: exit %d: %s", i, st, out);
        char o[1100];
        snprintf(o, sizeof o, "%s/o%zu", t, i);
        CHECKF(dm_dir_empty_or_missing(o), "case %zu: left %s", i, o);
    }
    /* the output folder named with metacharacters is just a folder of that name */
    snprintf(p, sizeof p, "%s/m.ini", t);
    snprintf(ini, sizeof ini, "[run]\nproducts = features\nmodel = %s\ninput = in.tif\n"
             "output = o; touch pwned7 $(touch pwned8)\ntile = 32\nhalo = 16\n", vit());
    CHECK(spit(p, ini, strlen(ini)) == 0);
    CHECKF(runf(&out, "cd %s && %s run m.ini --progress none", t, dm_bin()) == 0, "%s", out);
    char o[1200];
    snprintf(o, sizeof o, "%s/o; touch pwned7 $(touch pwned8)/features.tif", t);
    CHECK(dm_exists(o));
    for (int k = 1; k <= 8; k++) {
        char w[1100];
        snprintf(w, sizeof w, "%s/pwned%d", t, k);
        CHECKF(!dm_exists(w), "pwned%d was created: a value reached a shell", k);
    }
}

/* A .pth whose data.pkl entry is flagged encrypted: refused before a byte of it is read. */
TEST(security_pth_encrypted_entry)
{
    const char *t = dm_test_tmpdir(), *out;
    FILE *f = fopen(vit(), "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n);
    CHECK(b && fread(b, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    int flagged = 0;
    for (long i = 0; i + 46 < n; i++)
        if (!memcmp(b + i, "PK\x01\x02", 4)) {
            size_t nl = b[i + 28] | (size_t)b[i + 29] << 8;
            if (nl >= 8 && (size_t)(n - i - 46) >= nl && !memcmp(b + i + 46 + nl - 8, "data.pkl", 8)) {
                b[i + 8] |= 1; /* general purpose flag bit 0: encrypted */
                flagged++;
            }
        }
    char p[1100];
    snprintf(p, sizeof p, "%s/enc.pth", t);
    int ok = flagged == 1 && spit(p, b, (size_t)n) == 0;
    free(b);
    CHECK(ok);
    int st = runf(&out, "%s info %s", dm_bin(), p);
    CHECKF(st == 1 && strstr(out, "encrypted") && strstr(out, "enc.pth"), "exit %d: %s", st, out);
}

/* .npy headers that declare more than the file holds: refused from the header and the file's
 * size, before any allocation (an ASan build aborts on an allocation of terabytes). */
TEST(security_npy_header_declaring_terabytes)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECK(make_in(t) == 0);
    CHECKF(runf(&out, "cd %s && %s features -m %s in.tif -o r " GEOM, t, dm_bin(), vit()) == 0,
           "%s", out);
    static const char *const shapes[] = { "(1099511627776,)", "(1000000, 1000000)",
                                          "(1099511627776, 1099511627776)", "(128,)" };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        char hdr[128], p[1100];
        int k = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                         shapes[i]);
        int total = 10 + k + 1, pad = (64 - total % 64) % 64, hl = k + pad + 1;
        unsigned char buf[256] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)hl, 0 };
        memcpy(buf + 10, hdr, (size_t)k);
        memset(buf + 10 + k, ' ', (size_t)pad);
        buf[10 + k + pad] = '\n';
        snprintf(p, sizeof p, "%s/q%zu.npy", t, i);
        /* 64 values of data: far fewer than any shape declares */
        unsigned char data[256] = { 0 };
        FILE *f = fopen(p, "wb");
        CHECK(f);
        fwrite(buf, 1, (size_t)(10 + hl), f);
        fwrite(data, 1, sizeof data, f);
        fclose(f);
        int st = runf(&out, "%s search %s/r --vector %s", dm_bin(), t, p);
        CHECKF(st != 0 && st < 128 && strstr(out, p), "%s: exit %d: %s", shapes[i], st, out);
        CHECKF(i == 3 || strstr(out, "header"), "%s: %s", shapes[i], out);
    }
}

/* Shard folders (and the merge's output) named like SQL: merge binds paths as parameters. */
TEST(security_sql_in_folder_names_is_just_a_name)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECK(make_in(t) == 0);
    /* as the shell is given them: one in double quotes, one in single quotes */
    static const char *const names[] = { "\"a'; DROP TABLE tiles; --\"", "'b\" OR 1=1 --'" };
    for (int i = 0; i < 2; i++)
        CHECKF(runf(&out, "cd %s && %s features -m %s in.tif -o %s --shard %d/2 " GEOM, t,
                    dm_bin(), vit(), names[i], i + 1) == 0, "%s", out);
    CHECKF(runf(&out, "cd %s && %s features -m %s in.tif -o ref " GEOM, t, dm_bin(), vit()) == 0,
           "%s", out);
    CHECKF(runf(&out, "cd %s && %s merge \"m'x\" %s %s --progress none", t, dm_bin(),
                names[0], names[1]) == 0, "%s", out);
    char a[1100], b[1100], why[600];
    snprintf(a, sizeof a, "%s/ref", t);
    snprintf(b, sizeof b, "%s/m'x", t);
    static const char *const outs[] = { "features.tif", NULL };
    CHECKF(dm_same_outputs(a, b, outs, why, sizeof why), "%s", why);
    CHECKF(runf(&out, "%s status %s/\"m'x\"", dm_bin(), t) == 0, "%s", out);
}

/* A VRT whose pixel function is inline Python: GDAL would run it if allowed; dinomap keeps it
 * off (GDAL_VRT_ENABLE_PYTHON=NO unless the user sets it), so the run fails and nothing runs. */
TEST(security_vrt_inline_python_does_not_run)
{
    const char *t = dm_test_tmpdir(), *out;
    CHECK(make_in(t) == 0);
    char p[1100], vrt[4096], w[1100];
    snprintf(w, sizeof w, "%s/pwned", t);
    snprintf(vrt, sizeof vrt,
             "<VRTDataset rasterXSize=\"96\" rasterYSize=\"80\"><SRS>EPSG:32631</SRS>"
             "<GeoTransform>500000, 0.6, 0, 4000000, 0, -0.6</GeoTransform>"
             "<VRTRasterBand dataType=\"Byte\" band=\"1\" subClass=\"VRTDerivedRasterBand\">"
             "<PixelFunctionType>f</PixelFunctionType>"
             "<PixelFunctionLanguage>Python</PixelFunctionLanguage><PixelFunctionCode><![CDATA[\n"
             "def f(in_ar, out_ar, *args, **kwargs):\n    open('%s', 'w').write('x')\n"
             "    out_ar[:] = in_ar[0]\n]]></PixelFunctionCode>"
             "<SimpleSource><SourceFilename relativeToVRT=\"1\">in.tif</SourceFilename>"
             "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>\n", w);
    snprintf(p, sizeof p, "%s/py.vrt", t);
    CHECK(spit(p, vrt, strlen(vrt)) == 0);
    int st = runf(&out, "cd %s && env -u GDAL_VRT_ENABLE_PYTHON %s features -m %s py.vrt -o o "
                  "--bands 1,1,1 " GEOM, t, dm_bin(), vit());
    CHECKF(st == 1 && strstr(out, "py.vrt"), "exit %d: %s", st, out);
    CHECKF(!dm_exists(w), "the VRT's Python ran");
    snprintf(p, sizeof p, "%s/o", t);
    CHECK(dm_dir_empty_or_missing(p));
}

/* tests/test_cli.c — the command line as a user runs it: help, info, and bad inputs (a clear
 * message, a non-zero exit, nothing written). */
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "golden.h"
#include "test.h"

TEST(cli_help_everywhere)
{
    static const char *cmds[] = { "--help", "help", "info --help", "forward --help",
                                  "help forward", "features --help", "chm --help", "run --help",
                                  "status --help", "finalize --help", "search --help", "help run" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char cmd[1024];
        const char *out;
        snprintf(cmd, sizeof cmd, "%s %s", dm_bin(), cmds[i]);
        CHECKF(dm_run(cmd, &out) == 0, "%s failed", cmd);
        CHECKF(strstr(out, "usage:") != NULL, "%s: no usage text", cmd);
    }
    const char *out;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s frobnicate", dm_bin());
    CHECK(dm_run(cmd, &out) == 2 && strstr(out, "unknown command"));
    snprintf(cmd, sizeof cmd, "%s", dm_bin());
    CHECK(dm_run(cmd, &out) == 2);
    /* an unknown option: one line naming it, exit 2 (not the whole help) */
    snprintf(cmd, sizeof cmd, "%s features --tiel 5 -m x -o y z", dm_bin());
    CHECKF(dm_run(cmd, &out) == 2 && strstr(out, "--tiel: unknown option") &&
           !strstr(out, "usage:"), "%s", out);
    /* the mapping commands list their own options, with defaults */
    snprintf(cmd, sizeof cmd, "%s chm --help", dm_bin());
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "--head HEAD") && strstr(out, "--overlap") &&
           !strstr(out, "--quantize"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s features --help", dm_bin());
    CHECKF(dm_run(cmd, &out) == 0 && strstr(out, "--quantize") && !strstr(out, "--head") &&
           strstr(out, "default: 64"), "%s", out);
}

TEST(cli_info_meta_and_hf)
{
    char cmd[2048];
    const char *out;
    snprintf(cmd, sizeof cmd, "%s info %s", dm_bin(), dm_golden("vitl_sat_tiny/backbone.pth"));
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "D=128, 4 blocks, 2 heads × 64") && strstr(out, "Meta names") &&
           strstr(out, "from the file") && strstr(out, "1.3359375"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s info --tensors %s", dm_bin(),
             dm_golden("vit7b_sat_tiny_bf16/backbone.pth"));
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "SwiGLU") && strstr(out, "bf16") && strstr(out, "blocks.0.mlp.w3.weight"),
           "%s", out);
    snprintf(cmd, sizeof cmd, "%s info %s", dm_bin(),
             dm_golden("vitl_sat_tiny_hf/model.safetensors"));
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "Hugging Face names") && strstr(out, "computed from rope_theta") &&
           strstr(out, "D=128, 2 blocks"), "%s", out);
    /* a CHMv2 file: the backbone under "backbone.", the head beside it */
    snprintf(cmd, sizeof cmd, "%s info %s", dm_bin(), dm_golden("chmv2_tiny_hf/model.safetensors"));
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "prefix \"backbone.\"") && strstr(out, "outside the backbone"), "%s", out);
}

/* Each bad invocation: exit code != 0, a message naming the problem, no output files. */
static void bad(const char *args, int want_code, const char *want_msg)
{
    const char *tmp = dm_test_tmpdir();
    char cmd[4096];
    const char *out;
    snprintf(cmd, sizeof cmd, "cd %s && %s%s %s", tmp, dm_bin()[0] == '/' ? "" : "$OLDPWD/",
             dm_bin(), args);
    int st = dm_run(cmd, &out);
    char od[600];
    snprintf(od, sizeof od, "%s/out", tmp);
    CHECKF(st == want_code, "`%s`: exit %d, want %d: %s", args, st, want_code, out);
    CHECKF(strstr(out, want_msg) != NULL, "`%s`: message lacks \"%s\": %s", args, want_msg, out);
    CHECKF(dm_dir_empty_or_missing(od), "`%s`: left files in the output directory", args);
}

TEST(cli_forward_bad_inputs)
{
    char a[4096];
    char pth[PATH_MAX + 700], in[PATH_MAX + 700];
    snprintf(pth, sizeof pth, "%s", dm_golden("vitl_sat_tiny/backbone.pth"));
    snprintf(in, sizeof in, "%s", dm_golden("vitl_sat_tiny/input.npy"));
    snprintf(a, sizeof a, "forward -m nothere.pth -i %s -o out", in);
    bad(a, 1, "nothere.pth: cannot open");
    snprintf(a, sizeof a, "forward -m %s -i nothere.npy -o out", pth);
    bad(a, 1, "nothere.npy");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out", dm_golden("vitl_sat_tiny/case.json"), in);
    bad(a, 1, "not a weights file");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out", dm_golden("chmv2_tiny/head.pth"), in);
    bad(a, 1, "no DINOv3 backbone");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out", pth, dm_golden("vitl_sat_tiny/case.json"));
    bad(a, 1, "not a raster");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --layers 0,9", pth, in);
    bad(a, 1, "layer 9 does not exist");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --layers 1,x", pth, in);
    bad(a, 2, "--layers");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --norm foo", pth, in);
    bad(a, 2, "unknown preset");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --arch vitl16", pth, in);
    bad(a, 1, "--arch vitl16 expects D=1024");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --arch vit99", pth, in);
    bad(a, 1, "unknown architecture");
    snprintf(a, sizeof a, "forward -m %s -i %s -o out --device tpu", pth, in);
    bad(a, 1, "unknown device");
    snprintf(a, sizeof a, "forward -m %s -o out", pth);
    bad(a, 2, "required");
    snprintf(a, sizeof a, "forward -m %s -i %s -o /proc/forbidden/out", pth, in);
    bad(a, 1, "cannot create output directory");
    /* a float tensor of the wrong layout */
    snprintf(a, sizeof a, "forward -m %s -i %s -o out", pth,
             dm_golden("vitl_sat_tiny/x_prenorm.npy"));
    bad(a, 1, "expected float32 [3,H,W]");
}

TEST(cli_forward_crops_to_multiple_of_16)
{
    /* an 85×70 image whose top-left 80×64 px are the golden case's input: that part is used */
    const char *tmp = dm_test_tmpdir();
    char cmd[4096];
    const char *out;
    snprintf(cmd, sizeof cmd,
             "gdal_translate -q -of GTiff -srcwin 0 0 85 70 %s/in.vrt %s/big.tif", tmp, tmp);
    /* build the padded image from the golden u8 pixels with a VRT (no Python needed) */
    char vrt[700];
    snprintf(vrt, sizeof vrt, "%s/in.vrt", tmp);
    FILE *f = fopen(vrt, "w");
    CHECK(f != NULL);
    fprintf(f, "<VRTDataset rasterXSize=\"80\" rasterYSize=\"64\">\n");
    for (int b = 0; b < 3; b++)
        fprintf(f, " <VRTRasterBand dataType=\"Byte\" band=\"%d\" subClass=\"VRTRawRasterBand\">"
                   "<SourceFilename relativetoVRT=\"0\">%s</SourceFilename>"
                   "<ImageOffset>%d</ImageOffset><PixelOffset>3</PixelOffset>"
                   "<LineOffset>240</LineOffset></VRTRasterBand>\n",
                b + 1, dm_golden("vitl_sat_tiny/input_u8.npy"), 128 + b);
    fprintf(f, "</VRTDataset>\n");
    fclose(f);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "%s forward -m %s -i %s/big.tif -o %s/o", dm_bin(),
             dm_golden("vitl_sat_tiny/backbone.pth"), tmp, tmp);
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "not a multiple of 16"), "no notice: %s", out);
    char ours[700], why[600];
    snprintf(ours, sizeof ours, "%s/o/x_norm_patchtokens.npy", tmp);
    double r = dm_cmp_npy(ours, dm_golden("vitl_sat_tiny/x_norm_patchtokens.npy"), why, sizeof why);
    CHECKF(r >= 0 && r <= DM_GOLDEN_TOL, "%s %.3g", why, r);
}

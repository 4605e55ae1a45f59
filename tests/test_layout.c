/* tests/test_layout.c — the architecture holds: the library links alone (tests/lib_alone.c, built
 * against build/libdinomap.a only), and no file below the face includes a src/ header other than
 * the ground floor's src/base/base.h, and no head calls a BLAS directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden.h"
#include "test.h"

TEST(layout_library_links_alone)
{
    const char *bin = getenv("DM_LIB_ALONE");
    char cmd[4096];
    const char *out;
    snprintf(cmd, sizeof cmd, "%s %s", bin && *bin ? bin : "build/lib_alone",
             dm_golden("vitl_sat_tiny/backbone.pth"));
    CHECKF(dm_run(cmd, &out) == 0, "%s", out);
    CHECKF(strstr(out, "lib_alone: custom D=128") != NULL, "%s", out);
}

TEST(layout_floors)
{
    const char *out;
    /* any #include of a src/ header other than src/base/base.h, outside src/ (tests/fuzz/
     * excepted: fuzz_ini.c drives the command line's INI reader, as main.c would) */
    int rc = dm_run("grep -rnE --exclude-dir=fuzz '#include \"(\\.\\./)+src/' models heads "
                    "tiling gis tests | grep -v 'src/base/base.h\"'", &out);
    CHECKF(rc == 1, "files below the face include src/ headers:\n%s", out);
    /* src/base includes nothing of ours but its own header */
    rc = dm_run("grep -nE '#include \"' src/base/*.c src/base/*.h | grep -v '\"base.h\"'", &out);
    CHECKF(rc == 1, "src/base includes other dinomap headers:\n%s", out);
    /* heads compute through the backend's operations */
    rc = dm_run("grep -nE 'cblas|openblas' heads/*.c heads/*.h", &out);
    CHECKF(rc == 1, "heads/ calls a BLAS directly:\n%s", out);
}

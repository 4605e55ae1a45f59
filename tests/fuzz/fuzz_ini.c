/* tests/fuzz/fuzz_ini.c — libFuzzer target: a `dinomap run` config file through the command
 * line's INI reader (dm_cli_read_ini, src/run_cli.c: inih and the option parser of
 * src/options.c), then the checks `dinomap run` makes before mapping (dm_cli_finish). Beside the
 * file are the paths the seeds name (model.pth, in.tif, in2.tif, aoi.geojson, head.dmseg; empty:
 * nothing is opened before a run starts). Needs the command line's objects (not main.c). The
 * reader reports on stderr: `make fuzz` runs this target with -close_fd_mask=2. */
#include "fuzz.h"
#include "../../src/cli.h"

static void ini_setup(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    static const char *files[] = { "ini/model.pth", "ini/in.tif", "ini/in2.tif",
                                   "ini/aoi.geojson", "ini/head.dmseg", NULL };
    char path[1024];
    for (int i = 0; files[i]; i++)
        dm_fuzz_write(files[i], NULL, 0, path, sizeof path);
}

int dm_fuzz_ini(const uint8_t *data, size_t size)
{
    dm_fuzz_quiet();
    ini_setup();
    char path[1024];
    dm_fuzz_write("ini/run.ini", data, size, path, sizeof path);
    dm_cli c;
    dm_cli_init(&c, "run", DM_CMD_RUN);
    int rc = dm_cli_read_ini(&c, path);
    if (!rc) {
        /* `config = KEY=VALUE` would set GDAL's options for the rest of this process (and every
         * later input): checked by the reader, not applied here */
        int nconfig = c.nconfig;
        c.nconfig = 0;
        rc = dm_cli_finish(&c);
        c.nconfig = nconfig;
    }
    dm_cli_free(&c);
    return rc;
}

#ifndef DM_FUZZ_NO_ENTRY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dm_fuzz_ini(data, size);
    return 0;
}
#endif

/* tests/test_fuzz_regress.c — the inputs kept from fuzzing (tests/data/fuzz_regress/<target>/:
 * what crashed a loader before its fix, and rejected inputs the fuzzers found interesting) fed
 * through the fuzz targets' own entries (tests/fuzz/fuzz_<target>.c, included here): each must be
 * refused with an error, cleanly (`make test` runs this under AddressSanitizer + UBSan too).
 * <target>_valid/ holds valid files that once crashed a reader: they must be read cleanly.
 * The INI reader lives in the command line's objects, which run_tests does not link: those
 * inputs go through `dinomap run FILE`, which must refuse them with the usage exit code. The tile
 * index target's status part (tiling/, not linked either) is `dinomap status DIR`, which must end
 * cleanly (0 or 1); then its gis/ reads run here, and status or one of them must fail. */
#define DM_FUZZ_NO_ENTRY
#define DM_FUZZ_NO_STATUS /* run_tests cannot link tiling/finalize.c: `dinomap status` instead */
#include "fuzz/fuzz_npy.c"
#include "fuzz/fuzz_pickle.c"
#include "fuzz/fuzz_pth.c"
#include "fuzz/fuzz_safetensors.c"
#include "fuzz/fuzz_safetensors_index.c"
#include "fuzz/fuzz_seghead.c"
#include "fuzz/fuzz_tileindex.c"

#include "test.h"

#include <dirent.h>
#include <sys/wait.h>

/* tests/test_util.c (golden.h declares it too, beside a dm_run that is not tiling.h's) */
const char *dm_bin(void);

typedef int (*fuzz_entry)(const uint8_t *data, size_t size);

/* `dinomap CMD PATH` must exit with `want` (-1: 0 or 1, done or failed), and say nothing of a
 * sanitizer; its exit code, or -2 (said). */
static int cli(const char *cmd, const char *path, int want)
{
    char line[4400], out[4200], text[4096] = "";
    snprintf(out, sizeof out, "%s/cmd.out", dm_test_tmpdir());
    snprintf(line, sizeof line, "'%s' %s '%s' >'%s' 2>&1", dm_bin(), cmd, path, out);
    int st = system(line);
    int rc = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    FILE *f = fopen(out, "r");
    if (f) {
        text[fread(text, 1, sizeof text - 1, f)] = '\0';
        fclose(f);
    }
    if ((want < 0 ? rc != 0 && rc != 1 : rc != want) || strstr(text, "Sanitizer") ||
        strstr(text, "runtime error")) {
        dm_test_fail(__FILE__, __LINE__, "dinomap %s %s: exit %d (expected %d): %s", cmd, path,
                     rc, want, text);
        return -2;
    }
    return rc;
}

/* The tile index target without its status part: `dinomap status` on a folder holding the
 * input as tiles.gpkg, then the gis/ reads of the fuzz target; what they read of a damaged index
 * may be intact, but one of them must fail. */
static int tileindex(const uint8_t *data, size_t size)
{
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/run", dm_test_tmpdir());
    dm_remove_tree(dir, NULL);
    dm_mkdir_p(dir);
    snprintf(path, sizeof path, "%s/tiles.gpkg", dir);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        return 0; /* said as "accepted" */
    int st = cli("status", dir, -1);
    if (st == -2)
        return -1;
    return dm_fuzz_tileindex_reads(path) || st;
}

/* Feeds every file of fuzz_regress/<target>/ to entry (or, entry NULL, to `dinomap run`, which
 * must exit 2), which must refuse it unless may_pass (inputs that once crashed a reader but are
 * valid); the number of files, or -1 after a failed check (said). */
static int feed_as(const char *target, fuzz_entry entry, int may_pass)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fuzz_regress/%s", dm_test_data(), target);
    DIR *d = opendir(dir);
    if (!d) {
        dm_test_fail(__FILE__, __LINE__, "%s: cannot open", dir);
        return -1;
    }
    int n = 0, bad = 0;
    struct dirent *e;
    while (!bad && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int rc;
        if (entry) {
            FILE *f = fopen(path, "rb");
            unsigned char *buf = NULL;
            long len = -1;
            if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 &&
                fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1)) &&
                fread(buf, 1, (size_t)len, f) == (size_t)len) {
                rc = entry(buf, (size_t)len);
            } else {
                dm_test_fail(__FILE__, __LINE__, "%s: cannot read", path);
                rc = 0, bad = 1;
            }
            if (f)
                fclose(f);
            free(buf);
            if (!bad && rc == 0 && !may_pass) {
                dm_test_fail(__FILE__, __LINE__, "%s: accepted; expected an error", path);
                bad = 1;
            }
        } else {
            bad = cli("run", path, 2) != 2;
        }
        n++;
    }
    closedir(d);
    if (!bad && n == 0) {
        dm_test_fail(__FILE__, __LINE__, "%s holds no inputs", dir);
        bad = 1;
    }
    return bad ? -1 : n;
}

static int feed(const char *target, fuzz_entry entry) { return feed_as(target, entry, 0); }

TEST(fuzz_regress_npy) { CHECK(feed("npy", dm_fuzz_npy) > 0); }
TEST(fuzz_regress_pth) { CHECK(feed("pth", dm_fuzz_pth) > 0); }
TEST(fuzz_regress_pickle) { CHECK(feed("pickle", dm_fuzz_pickle) > 0); }
TEST(fuzz_regress_safetensors) { CHECK(feed("safetensors", dm_fuzz_safetensors) > 0); }
TEST(fuzz_regress_safetensors_index)
{
    CHECK(feed("safetensors_index", dm_fuzz_safetensors_index) > 0);
}
TEST(fuzz_regress_seghead) { CHECK(feed("seghead", dm_fuzz_seghead) > 0); }
TEST(fuzz_regress_tileindex) { CHECK(feed("tileindex", tileindex) > 0); }
TEST(fuzz_regress_ini) { CHECK(feed("ini", NULL) > 0); }
/* valid indexes that once crashed a reader (tiny embeddings: the search file's int8 scale) */
TEST(fuzz_regress_tileindex_valid) { CHECK(feed_as("tileindex_valid", tileindex, 1) > 0); }

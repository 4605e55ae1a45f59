/* tests/golden.h — helpers shared by the golden-parity tests. */
#ifndef DM_TEST_GOLDEN_H
#define DM_TEST_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

/* max |a-b| / max |b| over n values (b the reference). */
double dm_rel_err(const float *a, const float *b, int64_t n);
/* Compares file OURS with golden REF (.npy, same shape): returns the relative error, or -1 with
 * a message in why (shape mismatch, unreadable). */
double dm_cmp_npy(const char *ours, const char *ref, char *why, int nwhy);
/* Runs a shell command; returns its exit status (or -1). Output goes to dm_test_tmpdir()/out.txt
 * which *outbuf receives (static buffer). */
int dm_run(const char *cmd, const char **outbuf);
/* Writes text to path (replaced); 0 or -1. */
int dm_write_text(const char *path, const char *text);
/* dm_run of the command printf(fmt, ...) makes. */
int dm_runf(const char **outbuf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* dm_run for one command (exec'd, so the measured process is the command itself): also its peak
 * resident memory in MB. */
int dm_run_peak(const char *cmd, const char **outbuf, double *peak_mb);
/* The dinomap binary under test (DM_BIN, default ./dinomap). */
const char *dm_bin(void);

/* A GeoTIFF of w×h px, `bands` Byte bands of blocky random texture; epsg 0 = no CRS; gt NULL =
 * no geotransform; nodata >= 0 sets that nodata value and paints the top-left quarter with it. */
int dm_make_tif(const char *path, int w, int h, int bands, const double *gt, int epsg, int nodata,
                uint32_t seed);
uint32_t dm_hash32(uint32_t x);
/* Sets a GDAL dataset's CRS to EPSG:epsg (as WKT); 0 or -1. */
int dm_set_epsg(void *dataset, int epsg);
/* Absolute path of tests/data/golden/REL (some runs start in a temporary directory); the result
 * lives until 8 more calls: copy it to keep it longer. */
const char *dm_golden(const char *rel);
/* 1 if the directory does not exist or holds nothing. */
int dm_dir_empty_or_missing(const char *d);

/* Every band of a raster as float32 [bands, h, w] (malloc'd), or NULL. */
float *dm_read_all(const char *path, int *w, int *h, int *bands);
/* 1 when both rasters hold the same values (NaN equal to NaN), bit for bit; else 0 and why. */
int dm_same_raster(const char *a, const char *b, char *why, size_t n);
/* dm_same_raster for each of names (NULL-terminated) in folders d1 and d2. */
int dm_same_outputs(const char *d1, const char *d2, const char *const *names, char *why,
                    size_t n);

#define DM_GOLDEN_TOL 1e-4
/* ... and for --precision bf16 (bf16 products, fp32 accumulation) */
#define DM_GOLDEN_TOL_BF16 2e-2
/* 1 when this CPU runs bf16 (else the bf16 tests skip, saying why, and return 0) */
int dm_test_bf16(const char *test);

#endif

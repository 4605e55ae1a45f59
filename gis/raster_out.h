/* gis/raster_out.h — writing rasters: per-chunk tiled GeoTIFFs (written under a temporary name and
 * renamed into place), and the final Cloud-Optimized GeoTIFFs built from them through a VRT, with
 * overviews, nodata, band descriptions and DINOMAP_* metadata. */
#ifndef DM_GIS_RASTER_OUT_H
#define DM_GIS_RASTER_OUT_H

#include <stdint.h>

#include "../src/base/base.h"

/* Writes float32 [bands, h, w] (band-major) as a tiled GTiff with nodata NaN: `path`.part, then
 * renamed to `path`. */
int dm_gis_write_chunk_f32(const char *path, const float *data, int bands, int w, int h,
                           const double gt[6], const char *wkt, dm_err *err);

/* Per-pixel transform of pass 2: v is one pixel's [D] float vector (never NaN); fills q[D]
 * (quantised features, when quantising) and rgb[3] (PCA preview, when wanted). */
typedef void (*dm_pixel_fn)(void *ctx, const float *v, uint8_t *q, uint8_t rgb[3]);

typedef struct dm_features_final {
    const char *outdir;
    const char *const *chunks; /* chunk files */
    int nchunks;
    int D, fw, fh;             /* bands and feature grid size */
    double gt[6];              /* the feature grid's geotransform */
    const char *wkt;
    const char *const *meta;   /* "KEY=VALUE" strings for both rasters, NULL-terminated */
    int quantize;              /* features.tif as uint8 with per-band scale/offset */
    const float *qscale;       /* [D]: value = (q - 128) * qscale[b]; q = 0 is nodata */
    int pca;                   /* also write features_pca.tif */
    dm_pixel_fn pixel;
    void *pixel_ctx;
    void (*note)(const char *stage); /* told of each stage (for progress messages); may be NULL */
} dm_features_final;

/* Builds OUTDIR/features.tif (and features_pca.tif) as COGs from the chunk files; areas no chunk
 * covers are nodata. Each output appears only when complete (temporary name, then rename). */
int dm_gis_features_finalize(const dm_features_final *f, dm_err *err);

/* Runs GDAL's COG driver from src to dst (via dst.part), with the overview resampling given. */
int dm_gis_cog(void *src_dataset, const char *dst, const char *resampling, dm_err *err);

#endif

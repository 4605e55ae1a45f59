/* gis/gis.h — everything GDAL, OGR, PROJ and SQLite, and the one header of gis/: the input mosaic,
 * areas of interest, chunk files, the final rasters (COGs, or block COGs and a VRT), QGIS styles,
 * the STAC Item and the tile index. gis/ knows no model math; the run engine (tiling/) computes, gis/ reads and
 * writes. Every path may be a GDAL virtual path where GDAL allows it. */
#ifndef DM_GIS_H
#define DM_GIS_H

#include <signal.h>
#include <stdint.h>

#include "../src/base/base.h"

/* ==== the input mosaic ===========================================================================
 * One or more rasters opened through GDAL as one north-up mosaic (VRT in memory; warped when CRSs
 * differ, a GSD or CRS is asked for, or the input is geographic or rotated), three bands selected
 * and scaled to 8 bits, and windowed reads that may reach outside the raster (padded, and marked
 * invalid in the mask). */
typedef struct dm_mosaic_opts {
    const char *const *inputs;
    int n_inputs;
    int bands[3];             /* 1-based, RGB order into the model */
    double gsd;               /* output pixel size in CRS units; 0 = native */
    const char *crs;          /* output CRS (anything OSRSetFromUserInput takes); NULL = input's */
    int scale_set;            /* --scale MIN,MAX */
    double scale_min, scale_max;
    int stretch_set;          /* --stretch P1,P2 (percentiles over the whole mosaic) */
    double p1, p2;
    int allow_ungeoreferenced;
    /* a resumed run: the 8-bit scaling its first invocation chose (the percentiles of the mosaic
     * then), so that added inputs do not change the colours of what is done */
    int fixed_set;
    double fixed_lo, fixed_hi;
    const char *fixed_text;
} dm_mosaic_opts;

typedef struct dm_mosaic dm_mosaic;

int dm_mosaic_open(const dm_mosaic_opts *o, dm_mosaic **out, dm_err *err);
/* The inputs named for a message: "a.tif", "a.tif, b.tif" or "a.tif and 4 other inputs". */
void dm_mosaic_inputs_label(const dm_mosaic_opts *o, char *buf, size_t n);
void dm_mosaic_close(dm_mosaic *m); /* NULL-safe */
/* Narrows the mosaic to the window [x0, x0+w) × [y0, y0+h) of its pixels (inside it): its size,
 * geotransform and input footprints become the window's. Reads past the window's edges still
 * see the mosaic's pixels there, so a window's halo keeps its real context. Once. */
int dm_mosaic_crop(dm_mosaic *m, int x0, int y0, int w, int h, dm_err *err);

void dm_mosaic_size(const dm_mosaic *m, int *W, int *H);
void dm_mosaic_geotransform(const dm_mosaic *m, double gt[6]);
const char *dm_mosaic_wkt(const dm_mosaic *m);        /* "" when not georeferenced */
int dm_mosaic_georeferenced(const dm_mosaic *m);
/* How the pixels were brought to 8 bits, for metadata ("8-bit input used as is", ...), and the
 * range mapped to 0..255 (*scaled = 0 for 8-bit input used as is). */
const char *dm_mosaic_scaling(const dm_mosaic *m);
void dm_mosaic_scale(const dm_mosaic *m, int *scaled, double *lo, double *hi);
/* Notices worth telling the user (warp chosen, UTM zone picked...), one per line; may be "". */
const char *dm_mosaic_notes(const dm_mosaic *m);

/* One file the mosaic reads, and the part of the mosaic it feeds (px, clipped to the mosaic).
 * A rerun compares these to find what changed: path (real path where there is one), size and
 * modification time; sources of a VRT input are listed one by one with their own footprints. */
typedef struct dm_input_fp {
    char *path;
    int64_t size, mtime_ns;   /* -1 when the file cannot be stat()ed (/vsicurl/ ...) */
    int x0, y0, w, h;
} dm_input_fp;
int dm_mosaic_fingerprints(const dm_mosaic *m, dm_input_fp **fp, int *n, dm_err *err);
void dm_input_fp_free(dm_input_fp *fp, int n);

/* Reads the window [x0, x0+w) × [y0, y0+h) (may extend past the raster) as planar 8-bit RGB
 * [3, h, w] and a validity mask [h, w] (1 = valid pixel: inside the raster, not nodata, not
 * masked, alpha > 0 in every selected band). Invalid pixels are 0 in rgb. Not thread-safe: one
 * reader per mosaic. */
int dm_mosaic_read(dm_mosaic *m, int x0, int y0, int w, int h, uint8_t *rgb, uint8_t *valid,
                   dm_err *err);

/* Whole-image reads for `dinomap forward` (small inputs; the mosaic streams): the first three
 * bands of an 8-bit raster as interleaved RGB [H, W, 3] (malloc'd into *rgb); a single-band raster
 * is replicated to grey RGB. */
int dm_gis_read_rgb8(const char *path, int *H, int *W, uint8_t **rgb, dm_err *err);

/* GDAL's block cache (process-wide): finalize writes each block once and needs little of it.
 * Sets it to `bytes` (<= 0: leaves it) and returns what it was, to restore. */
int64_t dm_gis_cache_set(int64_t bytes);
/* GDAL's last error message, or "no details from GDAL" (for dinomap's own messages). */
const char *dm_gdal_msg(void);

/* ==== areas of interest ==========================================================================
 * Vector polygons (any OGR format) that select the tiles to run. */
typedef struct dm_aoi dm_aoi;
/* Reads every polygon of every layer of `path`, transformed to the CRS given as WKT (the file's
 * CRS must be known unless target_wkt is NULL/empty). Errors: unreadable file, no polygons,
 * unknown CRS. */
int dm_aoi_open(const char *path, const char *target_wkt, dm_aoi **out, dm_err *err);
/* 1 if the axis-aligned rectangle (in the target CRS) touches any polygon, else 0. */
int dm_aoi_touches(const dm_aoi *a, double minx, double miny, double maxx, double maxy);
/* Clears mask[h, w] (a window at (x0, y0) of the raster with geotransform gt, north-up) where the
 * pixel's centre lies outside every polygon, as gdalwarp -cutline does. */
int dm_aoi_mask(const dm_aoi *a, const double gt[6], int x0, int y0, int w, int h, uint8_t *mask,
                dm_err *err);
/* The AOI's envelope in its target CRS: minx, miny, maxx, maxy. */
void dm_aoi_extent(const dm_aoi *a, double env[4]);
void dm_aoi_free(dm_aoi *a); /* NULL-safe */
/* The AOI's identity: the SHA-256 of all its files (a shapefile's .prj, .dbf... too). */
int dm_aoi_sha256(const char *path, char out[65], dm_err *err);

/* ==== chunk files ================================================================================
 * A chunk's results: float32 bands [bands, h, w] (band-major) in a tiled, band-interleaved GeoTIFF
 * with nodata NaN, written to `path`.part and renamed into place (a reader never sees half a
 * chunk). Read back by windows in the file's own pixel coordinates. */
int dm_gis_chunk_write(const char *path, const float *data, int bands, int w, int h,
                       const double gt[6], const char *wkt, dm_err *err);
/* Reads [x, x+w) × [y, y+h) of every band into buf [bands, h, w]; the file must have `bands`
 * bands and hold the window. */
int dm_gis_chunk_read(const char *path, int bands, int x, int y, int w, int h, float *buf,
                      dm_err *err);
/* The same for a per-pixel mask (uint8 [h, w], one band, compressed; no nodata). */
int dm_gis_mask_write(const char *path, const uint8_t *mask, int w, int h, const double gt[6],
                      const char *wkt, dm_err *err);
int dm_gis_mask_read(const char *path, int x, int y, int w, int h, uint8_t *buf, dm_err *err);

/* ==== final rasters ==============================================================================
 * A product's output raster, written by windows, finished as one Cloud-Optimized GeoTIFF (tiled,
 * band-interleaved, DEFLATE, overviews; through a temporary GeoTIFF with GTiff's
 * COPY_SRC_OVERVIEWS, which keeps memory bounded for any number of bands) or, when larger than
 * max_bytes uncompressed, as block COGs in NAME_blocks/ plus NAME.vrt that GDAL and QGIS open as
 * one layer. Blocks are written one at a time: the writer asks for the regions, fills each. */
/* A class of a class raster: its value, name and colour. */
typedef struct dm_out_class {
    int value;                    /* 0..254 */
    const char *name;
    uint8_t rgb[3];
} dm_out_class;

typedef struct dm_out_spec {
    const char *dir, *name;       /* writes dir/name.tif, or dir/name.vrt + dir/name_blocks/ */
    int width, height, bands;
    int byte;                     /* 1: uint8 samples, 0: float32 */
    double nodata;                /* NaN for float32 */
    double gt[6];
    const char *wkt;
    const char *const *meta;      /* "KEY=VALUE", NULL-terminated (dataset metadata) */
    const char *const *band_names;/* [bands] or NULL */
    const float *scale;           /* [bands] GDAL scale (offset = -128·scale) or NULL */
    int rgb;                      /* 3 bands as red, green, blue */
    const char *unit;             /* band unit ("m") or NULL */
    const char *resampling;       /* overviews: "AVERAGE", "MODE", ... */
    double max_bytes;             /* above this, blocks; <= 0: never */
    int block_align;              /* block sides are multiples of this (px), >= 1 */
    int side;                     /* > 0: blocks of exactly this side (another output's) */
    volatile sig_atomic_t *cancel; /* set: overviews and the COG copy stop (DM_EINTERRUPTED) */
    const char *const *co;        /* the user's GeoTIFF creation options (-co, checked with
                                   * dm_out_format_check), NULL: dinomap's defaults */
    const dm_out_class *classes;  /* a 1-band uint8 class raster: an embedded colour table and
                                   * a Raster Attribute Table (Value, Class, Red, Green, Blue; in
                                   * NAME.tif.aux.xml, as GDAL keeps it), or NULL */
    int nclasses;
} dm_out_spec;

typedef struct dm_out dm_out;
typedef struct dm_region {
    int x, y, w, h;
} dm_region;

int dm_out_create(const dm_out_spec *s, dm_out **out, dm_err *err);
/* The regions, each finished before the next begins (one region when not in blocks). */
int dm_out_nregions(const dm_out *o);
int dm_out_block_side(const dm_out *o); /* 0 when one region */
dm_region dm_out_region(const dm_out *o, int i);
int dm_out_begin(dm_out *o, int region, dm_err *err);
/* Writes buf [bands, h, w] (float32 or uint8 as the spec says) at (x, y) in the whole raster's
 * pixels; the window lies inside the current region. Unwritten pixels are nodata. */
int dm_out_write(dm_out *o, int x, int y, int w, int h, const void *buf, dm_err *err);
int dm_out_end(dm_out *o, dm_err *err);         /* overviews + COG of the region */
/* After the last region: the VRT (blocks) and the final names: until here nothing replaced the
 * previous outputs (each COG appears under its name in one rename). */
int dm_out_commit(dm_out *o, dm_err *err);
void dm_out_free(dm_out *o);                   /* removes temporaries; NULL-safe */
/* The files a commit wrote, relative to dir ("chm.tif", or "chm.vrt" and the blocks' folder). */
const char *dm_out_files(const dm_out *o);
/* Removes dir/name.tif, dir/name.vrt, dir/name_blocks/ and dir/name.zarr (an output the run
 * will rebuild). */
int dm_out_remove(const char *dir, const char *name, dm_err *err);

/* ==== output formats (-of, -co) ==================================================================
 * The final rasters are Cloud-Optimized GeoTIFFs; DM_OF_ZARR also writes a Zarr copy of the
 * features (NAME.zarr: one array NAME [band, y, x] with x/y coordinates, the CRS and the
 * metadata as attributes, for xarray). Creation options belong to the format's driver, as in
 * GDAL's tools: with COG, the GeoTIFFs' (GDAL's COG names COMPRESS, LEVEL, PREDICTOR, BLOCKSIZE,
 * BIGTIFF, NUM_THREADS, MAX_Z_ERROR, or GTiff's own); with Zarr, the Zarr store's (COMPRESS,
 * BLOCKSIZE=B,Y,X, FORMAT, ...) while the COGs keep dinomap's defaults. Options that would break
 * the tiled, band-interleaved COG layout or change the samples are refused. */
enum { DM_OF_COG = 0, DM_OF_ZARR = 1 };
typedef struct dm_out_format {
    int format;                   /* DM_OF_* */
    const char *const *co;        /* NAME=VALUE, NULL-terminated, or NULL */
} dm_out_format;
/* "COG" → DM_OF_COG, "Zarr" → DM_OF_ZARR (any case); -1 for anything else. */
int dm_out_format_parse(const char *name);
const char *dm_out_format_name(int format); /* "COG", "Zarr" */
/* Checks that this GDAL can write the format and that every creation option is one its driver
 * takes with a value it accepts; DM_EINVAL naming the option ("-co TILED=NO: ..."). Opens
 * nothing. */
int dm_out_format_check(const dm_out_format *f, dm_err *err);
/* The Zarr copy of a finished raster (src: NAME.tif or NAME.vrt) at dst (NAME.zarr), with the
 * format's creation options; built under dst.part and renamed into place. int8 rasters (a GDAL
 * scale per band) are written decoded, as float32 with NaN for nodata. */
int dm_gis_write_zarr(const char *src, const char *dst, const char *const *co,
                      volatile sig_atomic_t *cancel, dm_err *err);

/* ==== GDAL's environment =========================================================================
 * For programs: GDAL's warnings and the errors not handled where they arose become dinomap log
 * warnings ("GDAL: ...", on one line; after 50, one notice and silence) instead of GDAL's own
 * "ERROR 1: ..." on stderr. CPL_DEBUG output stays GDAL's. Process-wide; call once, first. */
void dm_gis_log_messages(void);
/* For programs: GDAL options that keep a raster from a stranger to data (a VRT's inline Python
 * pixel functions off), unless the user set them (environment or --config). */
void dm_gis_safe_defaults(void);
/* A GDAL configuration option (--config KEY VALUE) for the rest of the process, before any
 * dataset is opened. GDAL_CACHEMAX takes effect at once (megabytes below 100000, else bytes, or
 * N% of the RAM, as GDAL reads it). DM_EINVAL for an unreadable GDAL_CACHEMAX. */
int dm_gis_config_set(const char *key, const char *value, dm_err *err);
/* DM_EINVAL unless GDAL/PROJ knows the CRS (anything OSRSetFromUserInput takes). */
int dm_gis_crs_check(const char *crs, dm_err *err);

/* A QGIS style file: a pseudocolour ramp on band 1, from (value, colour) stops. */
typedef struct dm_ramp_stop {
    double value;
    const char *color, *label;
} dm_ramp_stop;
int dm_gis_write_qml(const char *path, const dm_ramp_stop *stops, int n, dm_err *err);
/* A QGIS style file: a paletted renderer on band 1 with the classes' values, colours and names. */
int dm_gis_write_qml_classes(const char *path, const dm_out_class *classes, int n, dm_err *err);

/* ==== feature rasters read back ==================================================================
 * For similarity maps: a dinomap features output (features.tif, or the features.vrt of its
 * blocks; float32 with NaN nodata, or int8 with a GDAL scale and offset per band and nodata 0),
 * or a run's chunk file, read as real values by groups of bands. */
typedef struct dm_gis_feat dm_gis_feat;
/* Opens path (a folder: its features.vrt, else features.tif). product: the DINOMAP_PRODUCT its
 * metadata must name ("features"), or NULL (a chunk file). DM_EINVAL naming the file when it is
 * not one. */
int dm_gis_feat_open(const char *path, const char *product, dm_gis_feat **out, dm_err *err);
void dm_gis_feat_close(dm_gis_feat *f); /* NULL-safe */
/* Size, bands, geotransform (north-up), CRS as WKT ("" none, owned by f), the first band's block
 * width clamped to 64..1024 px (the size worth reading at once). */
void dm_gis_feat_info(const dm_gis_feat *f, int *w, int *h, int *bands, double gt[6],
                      const char **wkt, int *block);
/* Its DINOMAP_* metadata: one value (NULL when absent), or all "KEY=VALUE" (NULL-terminated or
 * NULL; owned by f). */
const char *dm_gis_feat_meta(const dm_gis_feat *f, const char *key);
/* 1 when its samples are bytes (int8 features: decoded with their scale and offset). */
int dm_gis_feat_int8(const dm_gis_feat *f);
const char *const *dm_gis_feat_meta_list(const dm_gis_feat *f);
/* Bands [b0, b0 + nb) of the window into buf [nb, h, w]: scale and offset applied, nodata NaN. */
int dm_gis_feat_read(dm_gis_feat *f, int b0, int nb, int x, int y, int w, int h, float *buf,
                     dm_err *err);
/* *f seen on another grid: replaces *f (which it then owns) by its bands warped onto the w×h
 * grid gt in the CRS wkt (GDAL's warper, every pixel centre reprojected exactly; bilinear, or
 * nearest with `nearest`; float32 values, int8's q before decoding; a target pixel is NaN where
 * no valid source pixel is in the kernel's reach: outside f or on its nodata). Reads go through
 * one warped VRT per group of `group` bands, in blocks of block × block px (a block warps all the
 * bands of its VRT at once: the group bounds memory); read by windows of those blocks and groups
 * of bands aligned on multiples of `group`, so that each is warped once. The first group is built
 * now: a CRS pair PROJ cannot join fails here (DM_EIO), *f unchanged. */
int dm_gis_feat_warp(dm_gis_feat **f, int w, int h, const double gt[6], const char *wkt,
                     int nearest, int block, int group, dm_err *err);
/* f's extent (minx, miny, maxx, maxy; edges densified) in the CRS wkt, in that CRS's traditional
 * GIS axis order; DM_EINVAL when it cannot be moved there or only one of the two has a CRS. */
int dm_gis_feat_extent_in(const dm_gis_feat *f, const char *wkt, double box[4], dm_err *err);
/* Whether two CRSs (WKT; "" none) are one for a raster, by OSRIsSameEx rather than their text:
 * both read with GDAL's traditional GIS data axis order (x easting or longitude), so the same CRS
 * written in another WKT flavour, or from a PROJ string, or a geographic CRS declared lat,lon
 * and lon,lat, is the same. 1 same (both none too), 0 not, -1 one unreadable. */
int dm_gis_crs_same(const char *wkt_a, const char *wkt_b);
/* A CRS for messages: "EPSG:3857 (WGS 84 / Pseudo-Mercator)", its name without an authority,
 * "no CRS"; *unit: " m", "°", " ft", " US ft" or "" (the pixel size's, to print after it). */
void dm_gis_crs_label(const char *wkt, char *buf, size_t n, const char **unit);
/* A change map's tiles: the mean of change_tif (1 band, NaN nodata) over each footprint of
 * tiles_gpkg's `tiles` layer (a run's index; NULL: squares of side × side pixels of the raster),
 * ranked (1 = the highest mean), into out_path: a GeoPackage layer `tiles` (tile_id, change,
 * rank, valid_patches, col0, row0, cols, rows; change and rank NULL where no patch is valid). */
int dm_gis_change_tiles(const char *change_tif, const char *tiles_gpkg, int side,
                        const char *out_path, dm_err *err);
/* DM_EINVAL unless GDAL/PROJ knows crs; the message names the option opt ("--srs"). */
int dm_gis_srs_check(const char *opt, const char *crs, dm_err *err);
/* (x, y) in srs (NULL or "": already in the target's CRS) moved into the CRS of target_wkt, with x
 * the easting or longitude whatever the CRS's official axis order (EPSG:4326 takes lon,lat). */
int dm_gis_point_to(const char *srs, const char *target_wkt, double x, double y, double *ox,
                    double *oy, dm_err *err);

/* ==== the STAC Item ==============================================================================
 * dir/item.json: a STAC 1.0.0 Item of the files a run wrote (see stac.c), written atomically. */
typedef struct dm_stac_asset {
    const char *key;          /* the asset's key ("features"); a folder's blocks: their names */
    const char *href;         /* relative to dir; ending in '/': a folder, each .tif an asset */
    const char *title;
    const char *roles;        /* space-separated: "data", "visual", "metadata", "style" */
    const char *type;         /* media type; NULL: from the name (.tif: COG, .gpkg, .json...) */
    int eo;                   /* 1: eo:bands (a colour preview: band names, the colour shown) */
} dm_stac_asset;

typedef struct dm_stac_spec {
    const char *dir, *id;
    const char *datetime;     /* RFC 3339 UTC ("2026-01-31T12:00:00Z"); NULL: now */
    const dm_stac_asset *assets;
    int nassets;
    const char *properties;   /* a JSON object: more properties ("dinomap:..."), or NULL */
} dm_stac_spec;

/* Rasters (.tif, .vrt) are opened to describe them: grid, CRS, bands as the files say. Every
 * href must exist. */
int dm_gis_write_stac(const dm_stac_spec *s, dm_err *err);

/* ==== the tile index =============================================================================
 * One SQLite file in GeoPackage form (`tiles.gpkg`): QGIS opens the `tiles` layer (tile footprints
 * with their state) directly; tables beside it hold the run's configuration, its invocations, the
 * chunks, the inputs' fingerprints, the per-tile embeddings and the PCA sample. A chunk's tiles
 * are marked done only after the chunk's files are in place, in one transaction (crash safety: a
 * rerun redoes exactly the chunks not marked done). */
typedef struct dm_tileindex dm_tileindex;

/* One tile of the grid. Footprint in the output CRS (the tile's core, without halo). */
typedef struct dm_tile_rec {
    int64_t id;            /* row * ncols + col */
    int row, col;
    int chunk;             /* chunk id */
    int px0, py0, pw, ph;  /* core window in input pixels */
    double minx, miny, maxx, maxy;
} dm_tile_rec;

typedef enum { DM_TILE_PENDING = 0, DM_TILE_DONE, DM_TILE_EMPTY, DM_TILE_OUTSIDE_AOI,
               DM_TILE_FAILED } dm_tile_state;
/* "pending", "done", "empty", "outside_aoi", "failed" */
const char *dm_tile_state_name(dm_tile_state s);

/* What a run gave for one tile. */
typedef struct dm_tile_result {
    int64_t id;
    dm_tile_state state;
    float valid_fraction;  /* share of valid input pixels in the core */
    const float *cls;      /* [dim] unit-length CLS embedding, or NULL (not run) */
    const float *mean;     /* [dim] unit-length mean of the core's patch embeddings, or NULL */
} dm_tile_result;

/* One sampled patch vector (the PCA preview's sample): patch (px, py) of the feature grid, its
 * sampling key u in [0, 1) (the sample is the smallest u), and the vector [sdim]. */
typedef struct dm_sample {
    int px, py;
    double u;
    const float *v;
} dm_sample;

/* Creates `path` (must not exist) with layer `tiles` (polygons in the CRS given as WKT; NULL or ""
 * for none) and tables `runs`, `chunks`, `embeddings`, `config`, `inputs`, `samples`. run_json:
 * this invocation's parameters (a row of `runs`). dim: embedding length. */
int dm_tileindex_create(const char *path, const char *crs_wkt, const char *run_json, int dim,
                        dm_tileindex **out, dm_err *err);
/* Reopens an existing index for update (a rerun resuming a run): checks it is a dinomap index whose
 * embeddings have length `dim` (0: whatever it holds), and records this invocation in `runs`
 * (run_json NULL: read-only use, nothing recorded). */
int dm_tileindex_open(const char *path, const char *run_json, int dim, dm_tileindex **out,
                      dm_err *err);
/* Reopens for update an index this invocation created (under a temporary name, then renamed):
 * no new row of `runs`, the last one is this invocation's. */
int dm_tileindex_reopen(const char *path, int dim, dm_tileindex **out, dm_err *err);
/* An index file made whole under the name `from` goes into place as `to`: synced, renamed, the
 * rename synced. A rollback journal left at `to` (TO-journal, by a process killed in a
 * transaction of the index that was there) goes first: SQLite would replay it into the new file. */
int dm_tileindex_place(const char *from, const char *to, dm_err *err);
/* Removes an index file and its rollback journal, if any (0, or -1 with errno). */
int dm_tileindex_unlink(const char *path);
/* Marks done (no files) every chunk none of whose tiles is to run (all outside the AOI). */
int dm_tileindex_done_empty_chunks(dm_tileindex *ti, dm_err *err);
int dm_tileindex_dim(const dm_tileindex *ti);
int64_t dm_tileindex_run_id(const dm_tileindex *ti); /* this invocation's row of `runs` (0: none) */
/* How many invocations the index recorded, and when the last began and how it ended ("" when
 * it did not record an end: still running, or killed). */
int dm_tileindex_last_run(dm_tileindex *ti, int *n, char *started, size_t ns, char *status,
                          size_t nst, dm_err *err);
/* Records how this invocation ended ("done", "interrupted", "failed: ...", "nothing to do"). */
int dm_tileindex_end_run(dm_tileindex *ti, const char *status, dm_err *err);

/* The `config` table: the run's configuration and bookkeeping, as text values by key. get sets
 * *value to a malloc'd copy, or NULL when the key is absent. */
int dm_tileindex_config_get(dm_tileindex *ti, const char *key, char **value, dm_err *err);
int dm_tileindex_config_set(dm_tileindex *ti, const char *key, const char *value, dm_err *err);

/* Adds the grid's tiles (state pending, or outside_aoi when marked so) in one transaction. */
int dm_tileindex_add_tiles(dm_tileindex *ti, const dm_tile_rec *tiles, const dm_tile_state *states,
                           int n, dm_err *err);
/* Records chunk `chunk` as done with its files (space-separated, relative to the index's folder;
 * NULL when it produced none), the results of its tiles and its PCA samples (replacing earlier
 * ones), bumps the `gen` counter of `config`, all in one transaction. */
int dm_tileindex_chunk_done(dm_tileindex *ti, int chunk, const char *files,
                            const dm_tile_result *res, int n, const dm_sample *samples,
                            int nsamples, int sdim, dm_err *err);
/* Counts tiles per state (array indexed by dm_tile_state, 5 entries). */
int dm_tileindex_counts(dm_tileindex *ti, int64_t counts[5], dm_err *err);
/* The chunks already marked done, ascending (malloc'd; the caller frees *chunks). */
int dm_tileindex_done_chunks(dm_tileindex *ti, int **chunks, int *n, dm_err *err);
/* Per chunk (ids 0..*n-1): done (1) or not (0), and its files as recorded (NULL: none); both
 * malloc'd, and each string: dm_tileindex_chunks_free. */
int dm_tileindex_chunks(dm_tileindex *ti, uint8_t **done, char ***files, int *n, dm_err *err);
void dm_tileindex_chunks_free(uint8_t *done, char **files, int n);
/* Forgets every chunk's files (after they were deleted): chunks.file becomes NULL. */
int dm_tileindex_forget_files(dm_tileindex *ti, dm_err *err);
/* Per chunk: which invocation (run_id) last computed it, 0 if none; *n chunks (malloc'd). */
int dm_tileindex_chunk_runs(dm_tileindex *ti, int64_t **run_ids, int *n, dm_err *err);
/* Marks chunks pending again (their tiles too, their PCA sample gone, the output counter bumped)
 * and replaces the stored input fingerprints and, when not NULL, the inputs' order (JSON), in one
 * transaction: what a rerun does when inputs changed. */
int dm_tileindex_reset(dm_tileindex *ti, const int *chunks, int nchunks, const dm_input_fp *fp,
                       int nfp, const char *input_order, dm_err *err);
/* The stored input fingerprints (malloc'd; dm_input_fp_free). */
int dm_tileindex_inputs(dm_tileindex *ti, dm_input_fp **fp, int *n, dm_err *err);
/* The `limit` samples with the smallest u (ties: by position), vectors into v [limit, sdim];
 * *n how many there were. */
int dm_tileindex_samples(dm_tileindex *ti, int limit, int sdim, float *v, int *n, dm_err *err);
int dm_tileindex_close(dm_tileindex *ti, dm_err *err); /* NULL-safe; commits and closes */
/* Merging shards (gis/tileindex_merge.c). copy: a consistent, compact copy of src's file at dst
 * (replaced). chunk_work: per chunk (0..nchunks-1), its tiles that are not outside the AOI.
 * take_chunks: the tiles' states, embeddings, PCA samples and chunk records of these chunks
 * copied from the index file src (of the same grid) into ti, replacing ti's, in one
 * transaction. config_delete: removes a key of `config`. */
int dm_tileindex_copy(dm_tileindex *src, const char *dst, dm_err *err);
int dm_tileindex_chunk_work(dm_tileindex *ti, int nchunks, int64_t *tiles, dm_err *err);
int dm_tileindex_take_chunks(dm_tileindex *ti, const char *src, const int *chunks, int n,
                             dm_err *err);
int dm_tileindex_config_delete(dm_tileindex *ti, const char *key, dm_err *err);


/* ==== segmentation labels (gis/labels.c) =========================================================
 * What `dinomap seg train` learns from: a class raster (band 1; any raster GDAL reads, any CRS;
 * 0 and nodata are unlabelled) or a polygon layer (the file's first layer; any OGR format and
 * CRS) whose field gives the class: an integer field's values are the class ids, a string field's
 * values are class names, numbered 1..n in sorted (byte) order; 0, NULL and "" are unlabelled.
 * Class ids are 1..254 (255 is the nodata of a class raster dinomap writes). */
#define DM_LABEL_IDS 255 /* ids 0..254 */
#define DM_LABEL_MIN_PX 128 /* of a patch's 256 pixels, for it to take a class */

typedef struct dm_label_class {
    char name[64];
    uint8_t rgb[3];
    int has_name, has_rgb;     /* what the file says of the class */
} dm_label_class;

typedef struct dm_labels dm_labels;
/* Opens the labels and reads what they say of their classes (a raster's attribute table: value,
 * name and colour columns by GDAL's field usages or by name; its colour table; a vector field's
 * values). field: the vector field; NULL: the first integer or string field. Errors name the
 * file and the problem: not readable, no CRS, an unknown field (listing the fields), a field that
 * is neither integer nor string, features that are not polygons, ids outside 1..254. */
int dm_labels_open(const char *path, const char *field, dm_labels **out, dm_err *err);
void dm_labels_free(dm_labels *l); /* NULL-safe */
int dm_labels_is_vector(const dm_labels *l);
const char *dm_labels_field(const dm_labels *l); /* the vector field read; NULL for a raster */
/* What the file says of class id (0..254). */
const dm_label_class *dm_labels_class(const dm_labels *l, int id);
/* Where the labels are, as a GeoJSON FeatureCollection in EPSG:4326 (malloc'd in *json): a
 * raster's footprint, or a layer's polygons without their attributes (editing the classes does
 * not change it). The same labels give the same text. */
int dm_labels_footprint(const dm_labels *l, char **json, dm_err *err);

/* One class per patch of a grid of 16×16-px patches (a features raster's grid: geotransform gt
 * and CRS wkt, W × H patches; its pixels are 16 × finer): the labels are warped (raster,
 * nearest neighbour) or rasterized at pixel centres (polygons) onto the pixels, and a patch takes
 * a class when at least DM_LABEL_MIN_PX of its 256 pixels carry that class (a 128/128 tie takes
 * none). Covers the window of the grid the labels' extent touches. */
typedef struct dm_label_grid {
    int x0, y0, w, h;          /* the window, in patches */
    uint8_t *cls;              /* [h, w] class id, 0: none (malloc'd; the caller frees) */
    int64_t labelled_px;       /* labelled pixels in the window */
    int64_t mixed;             /* patches with labelled pixels that took no class */
} dm_label_grid;
/* Errors: the labels do not overlap the grid, a pixel value that is not a class id. */
int dm_labels_patches(const dm_labels *l, const double gt[6], const char *wkt, int W, int H,
                      dm_label_grid *out, dm_err *err);

/* ==== a features raster read back by patch (gis/features_patches.c) ============================================
 * features.tif / features.vrt of a dinomap features run (float32 with NaN nodata, or int8 with a
 * GDAL scale and offset per band and q = 0 nodata), by patch. */
typedef struct dm_features_info {
    int W, H, D;               /* patches across, down; dimensions (bands) */
    int int8;
    double gt[6];
    const char *wkt;
    char arch[32], norm[16];   /* from DINOMAP_MODEL, DINOMAP_NORMALIZATION */
    char sha256[65];           /* DINOMAP_WEIGHTS_SHA256 */
    int layer;                 /* DINOMAP_LAYER; -1: the last block */
} dm_features_info;

typedef struct dm_features_in dm_features_in;
/* Errors name the file: not readable, not a dinomap features raster (DINOMAP_PRODUCT). */
int dm_features_in_open(const char *path, dm_features_in **out, dm_err *err);
const dm_features_info *dm_features_in_info(const dm_features_in *f);
/* The vectors of n patches (px[i], py[i]) of the grid, ordered by row then column, into v [n, D]
 * (values as stored for float32, q · scale + offset for int8); ok[i] = 0 where the patch is
 * nodata (its vector is then 0). Reads strips of rows, whole blocks' worth at a time. */
int dm_features_in_read(dm_features_in *f, const int *px, const int *py, int n, float *v,
                        uint8_t *ok, dm_err *err);
void dm_features_in_close(dm_features_in *f); /* NULL-safe */

/* ==== tile search (gis/search.c, gis/search_file.c) ==============================================
 * For `dinomap search`. A tile index's done tiles and one of their embeddings (mean or cls) are
 * copied into a search file beside the index (tiles.gpkg → tiles.mean.search, tiles.cls.search):
 * tile ids, rows, columns and footprints, the unit vectors as float32, an int8 copy (one scale per
 * vector) and a sign-bit copy, memory-mapped when searched. The index stays the truth: the file
 * records the index's size, modification time and `gen` counter, and is rebuilt (under a
 * temporary name, then renamed) when they differ, when it is missing, or when its header does
 * not check out (magic, version, dimensions, counts, section sizes against the file's length,
 * a checksum, ascending tile ids). Where it cannot be written (a read-only folder, a full disk),
 * the same copy is built in memory for this search, with a warning. */
enum { DM_EMB_MEAN = 0, DM_EMB_CLS = 1 };
const char *dm_emb_name(int emb); /* "mean", "cls" */

typedef struct dm_sindex dm_sindex;
typedef struct dm_sindex_info {
    const char *index;        /* the tiles.gpkg ("" for a file opened alone) */
    const char *file;         /* the search file ("" when built in memory) */
    const char *wkt;          /* the tiles' CRS as WKT, "" when none */
    const char *sha256, *arch;/* the run's model ("" when not recorded) */
    int dim, emb;
    int64_t n;                /* tiles, ascending tile ids */
    int64_t src_size, src_mtime_ns, src_gen; /* what it was built from */
    int64_t built_ns;         /* when (the index was read from then on; ns since 1970) */
    int built;                /* 1: (re)built by this open; why says why */
    int in_memory;
    char why[160];
    int64_t bytes;            /* the file's size */
} dm_sindex_info;

/* The search file of a tile index (opened, built or rebuilt as needed, see above) for emb.
 * Errors: not a tile index, no embeddings (no done tile), damaged blobs, out of memory. */
int dm_search_open(const char *index, int emb, dm_sindex **out, dm_err *err);
/* Where dm_search_open keeps the file for `index` and emb (into buf). */
void dm_search_file_path(const char *index, int emb, char *buf, size_t n);
/* A search file alone, validated (no index behind it: the benchmark's). */
int dm_sindex_open_file(const char *path, dm_sindex **out, dm_err *err);
void dm_sindex_close(dm_sindex *s); /* NULL-safe */
const dm_sindex_info *dm_sindex_get_info(const dm_sindex *s);
/* The position of a tile id (binary search), or -1. */
int64_t dm_sindex_find(const dm_sindex *s, int64_t tile_id);
/* Tile i (0 <= i < n): its id, row, column, footprint [minx, miny, maxx, maxy] (in the file) and
 * unit vector [dim] (in the file). */
int64_t dm_sindex_id(const dm_sindex *s, int64_t i);
void dm_sindex_rowcol(const dm_sindex *s, int64_t i, int *row, int *col);
const double *dm_sindex_box(const dm_sindex *s, int64_t i);
const float *dm_sindex_vec(const dm_sindex *s, int64_t i);

/* Writing a search file: n tiles by ascending tile id, each with its vector (stored as given:
 * the index's are unit length), then commit: the header, fsync, rename into place. path NULL:
 * in memory (commit returns it opened). dm_search_open writes through this; so does the
 * benchmark, with synthetic vectors and no index (src_* 0). */
typedef struct dm_sfile_meta {
    int dim, emb;
    int64_t n;
    const char *wkt, *sha256, *arch; /* NULL: "" */
    int64_t src_size, src_mtime_ns, src_gen, built_ns;
} dm_sfile_meta;
typedef struct dm_sfile_writer dm_sfile_writer;
/* Creates path's temporary (path.tmp.PID). Errors name the file; *os_errno (may be NULL) gets
 * errno when the file could not be created or sized (the caller may then build in memory). */
int dm_sfile_create(const char *path, const dm_sfile_meta *m, dm_sfile_writer **out,
                    int *os_errno, dm_err *err);
int dm_sfile_add(dm_sfile_writer *w, int64_t id, int row, int col, const double box[4],
                 const float *v, dm_err *err);
/* Finishes the file (every tile added, ids ascending) and frees w, whatever happens; opened
 * (may be NULL for a file) receives it opened. On failure the temporary is removed. */
int dm_sfile_commit(dm_sfile_writer *w, dm_sindex **opened, dm_err *err);
void dm_sfile_abort(dm_sfile_writer *w); /* NULL-safe; removes the temporary */

/* A search of one file: the k tiles whose vectors have the highest dot product with the unit
 * query q [dim] (the cosine), best first, ties by position. exact: every tile's float32 vector
 * is scored. Otherwise the sign bits pick `candidates` tiles by Hamming distance to q's signs,
 * the int8 copy keeps the best `rerank` of those, and their float32 vectors give the exact
 * scores and order (recall@10 against exact >= 0.99 on clustered data, tests/ and the bench). */
typedef struct dm_search_opts {
    int k;
    int exact;
    const uint8_t *allow;     /* [n]: only tiles with allow[i] != 0 (NULL: all) */
    dm_pool *pool;            /* threads for the scans (NULL: this one) */
    int64_t candidates;       /* after the sign bits (0: max(4096, n / 50)) */
    int64_t rerank;           /* after int8 (0: max(512, 32 k)) */
} dm_search_opts;
typedef struct dm_search_match {
    int64_t i;                /* the tile's position in the file */
    double score;
} dm_search_match;
/* out [k]; *n how many (fewer when fewer tiles are allowed). */
int dm_sindex_search(const dm_sindex *s, const float *q, const dm_search_opts *o,
                     dm_search_match *out, int *n, dm_err *err);

/* n points (x, y) in the CRS given as WKT moved in place to EPSG:4326 longitude, latitude. */
int dm_gis_to_lonlat(const char *wkt, int n, double *x, double *y, dm_err *err);
/* One hit of a search: its footprint box in the CRS wkt. */
typedef struct dm_search_hit {
    int rank, row, col;
    int64_t id;
    double score;
    const char *index, *wkt;
    const double *box;
} dm_search_hit;
/* The hits as polygons (rank, score, tile_id, row, col, index) in EPSG:4326 (RFC 7946), replacing
 * path. */
int dm_search_write_geojson(const char *path, const dm_search_hit *h, int n, dm_err *err);

#endif

/* src/options.c — the one vocabulary of the mapping commands: every option of `dinomap
 * features`, `dinomap chm`, `dinomap similarity` (which takes every option of features, whose
 * product it runs), `dinomap seg apply|cluster` and `dinomap run` is defined once here, with the
 * commands that take it, its help, and its parser. The command line (getopt_long) and INI files
 * (`dinomap run`, keys = the long option names) both end in dm_cli_set, so a value means the
 * same wherever it is written. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../models/model.h"
#include "cli.h"

enum {
    O_MODEL, O_OUTPUT, O_HEAD, O_SEG_HEAD_CLI, O_SEG_HEAD, O_CLUSTERS, O_SEED, O_PROBS,
    O_PRODUCTS, O_INPUT, O_AT, O_SRS, O_QAOI, O_FEATURES, O_BANDS, O_SCALE, O_STRETCH, O_GSD,
    O_CRS, O_UNGEO, O_AOI, O_AOI_TILES, O_TILE, O_HALO, O_OVERLAP, O_CHUNK, O_LAYER, O_QUANT,
    O_NOPCA, O_TAPS, O_NORM, O_ARCH, O_DEVICE, O_PRECISION, O_THREADS, O_BATCH, O_OVERWRITE, O_DROP, O_KEEP,
    O_MAXCOG, O_OF, O_CO, O_CONFIG, O_PROGRESS, O_LOG, O_QUIET, O_SHARD, O_SHARD_COUNT,
    O_COUNT
};

_Static_assert(O_COUNT <= 64, "dm_cli.given holds one bit per option");

#define F DM_CMD_FEATURES
#define C DM_CMD_CHM
#define R DM_CMD_RUN
#define SA DM_CMD_SEG_APPLY
#define SC DM_CMD_SEG_CLUSTER
#define FS (F | SA | SC) /* the features' options: seg makes the features too */
#define M DM_CMD_MAP
#define S DM_CMD_SIMILARITY
static const struct optdef {
    const char *name;
    int shortopt, has_arg;
    unsigned cmds;
    const char *arg, *help;
} defs[O_COUNT] = {
    [O_MODEL] = { "model", 'm', 1, M, "WEIGHTS", "backbone weights: .pth, .safetensors, "
                  "index.json or a folder (required); a Hugging Face CHMv2 model.safetensors holds "
                  "the head too" },
    [O_OUTPUT] = { "output", 'o', 1, M, "OUTDIR", "the run folder, created if missing "
                   "(required); the same command in the same folder resumes" },
    [O_HEAD] = { "head", 0, 1, C | R, "HEAD", "Meta's CHMv2 head (dinov3_vitl16_chmv2_dpt_"
                 "head-*.pth), for a backbone file without one" },
    [O_PRODUCTS] = { "products", 0, 1, R, "LIST", "what to make: features, chm, seg, "
                     "similarity, or several, e.g. features,chm (one backbone pass feeds them; "
                     "seg and similarity make the features too) (required)" },
    [O_INPUT] = { "input", 0, 1, R, "PATH", "an input raster or a glob (*.tif); repeat for "
                  "more (one mosaic) (required)" },
    [O_AT] = { "at", 0, 1, S | R, "X,Y", "similarity: the query is the patch under this point "
               "(in --srs; default: the output CRS)" },
    [O_SRS] = { "srs", 0, 1, S | R, "CRS", "similarity: the CRS of --at, e.g. EPSG:4326 (then "
                "X,Y = longitude,latitude)" },
    [O_QAOI] = { "query-aoi", 0, 1, S | R, "FILE", "similarity: the query is the mean vector of "
                 "the patches whose centre lies inside these polygons (any OGR format and CRS)" },
    [O_FEATURES] = { "features", 0, 1, S, "PATH", "similarity without a model: from an existing "
                     "features output (features.tif or .vrt, float32 or int8, or its folder) "
                     "into -o OUTDIR; no -m, no INPUT" },
    [O_BANDS] = { "bands", 0, 1, M, "R,G,B", "input bands fed as red, green, blue "
                  "(default: 1,2,3)" },
    [O_SCALE] = { "scale", 0, 1, M, "MIN,MAX", "map input values MIN..MAX to 0..255 "
                  "(non-8-bit imagery)" },
    [O_STRETCH] = { "stretch", 0, 1, M, "P1,P2", "map the P1..P2 percentiles of the whole "
                    "mosaic to 0..255 (default for non-8-bit input: 2,98)" },
    [O_GSD] = { "gsd", 0, 1, M, "METRES", "warp to this pixel size (default: native)" },
    [O_CRS] = { "crs", 0, 1, M, "CRS", "output CRS, e.g. EPSG:32631 (default: the input's; "
                "a geographic CRS goes to its UTM zone)" },
    [O_UNGEO] = { "allow-ungeoreferenced", 0, 0, M, NULL, "map an input without "
                  "georeferencing in pixel coordinates (refused by default)" },
    [O_AOI] = { "aoi", 0, 1, M, "FILE", "polygons (any OGR format and CRS): only tiles "
                "touching them run, and pixels outside them are nodata (as gdalwarp -cutline)" },
    [O_AOI_TILES] = { "aoi-whole-tiles", 0, 0, M, NULL, "keep the tiles touching the AOI "
                      "whole (no nodata outside the polygons)" },
    [O_TILE] = { "tile", 0, 1, M, "PX", "the core of each window, multiple of 16 (32 for chm); "
                 "windows step by it (default: 512; 384 for chm alone)" },
    [O_HALO] = { "halo", 0, 1, M, "PX", "context read on every side, multiple of 16: the "
                 "model sees tile + 2*halo px (default: 64)" },
    [O_OVERLAP] = { "overlap", 0, 1, C | R, "PX", "chm: px neighbouring windows share, "
                    "= 2*halo (blended with a Hann window; 0: no blending, seams show)" },
    [O_CHUNK] = { "chunk", 0, 1, M, "N", "tiles per chunk side: the unit written, recorded "
                  "and resumed (default: 4)" },
    [O_LAYER] = { "layer", 0, 1, FS | R, "K", "features: 0-based block whose normed output to "
                  "map (default: the last)" },
    [O_QUANT] = { "quantize", 0, 1, FS | R, "MODE", "features: none (float32, default) or int8 "
                  "(8-bit with a per-band scale: value = (q - 128) * scale, q = 0 nodata)" },
    [O_NOPCA] = { "no-pca", 0, 0, FS | R, NULL, "features: skip features_pca.tif" },
    [O_TAPS] = { "taps", 0, 1, C | R, "LIST", "chm: the 4 blocks the head reads (default: "
                 "from the file, or 5,11,17,23 for ViT-L)" },
    [O_NORM] = { "norm", 0, 1, M, "PRESET", "sat, chm or lvd normalization (default: chm "
                 "when chm is made, else sat)" },
    [O_ARCH] = { "arch", 0, 1, M, "NAME", "force the architecture (default: recognised from "
                 "the weights)" },
    [O_DEVICE] = { "device", 0, 1, M, "DEV", "compute device: cpu (default), cuda, "
                  "cuda:N, cuda:0,1 (one worker per GPU) or auto (a GPU when the CUDA backend "
                  "loads and sees one, else cpu); its kind (cpu or cuda) is part of the run's "
                  "configuration" },
    [O_PRECISION] = { "precision", 0, 1, M, "P", "fp32 (default: exact), bf16 (the matrix "
                      "products of the backbone and of the CHMv2 decoder's convolutions in bf16 "
                      "with fp32 accumulation: faster on CPUs with "
                      "AVX512_BF16 or AMX, ~1e-2 relative error; refused on others) or auto "
                      "(bf16 where the CPU has them); part of the run's configuration" },
    [O_THREADS] = { "threads", 0, 1, M, "N", "compute threads (default: all cores)" },
    [O_BATCH] = { "batch", 0, 1, M, "N", "windows per forward pass (default: 1)" },
    [O_OVERWRITE] = { "overwrite", 0, 0, M, NULL, "remove the folder's run first and start "
                      "afresh (default: resume it; another configuration is refused)" },
    [O_DROP] = { "drop-chunks", 0, 0, M, NULL, "delete chunks/ once the outputs are built "
                 "(smaller, but a later change recomputes everything)" },
    [O_KEEP] = { "keep-chunks", 0, 0, M, NULL, "keep chunks/ (the default: they are the run's "
                 "state, so changed inputs redo only their chunks)" },
    [O_MAXCOG] = { "max-cog-gib", 0, 1, M, "GIB", "outputs larger than this (uncompressed) are "
                   "written as block COGs + a VRT (default: 16; 0: no limit)" },
    [O_OF] = { "of", 0, 1, M, "FORMAT", "COG (default: Cloud-Optimized GeoTIFFs) or Zarr "
               "(features only: features.zarr beside the COGs, one [band, y, x] array for "
               "xarray)" },
    [O_CO] = { "co", 0, 1, M, "NAME=VALUE", "a creation option of the -of format's GDAL driver, "
               "repeatable; COG: COMPRESS (DEFLATE), LEVEL, PREDICTOR, BLOCKSIZE (256), BIGTIFF, "
               "MAX_Z_ERROR, NUM_THREADS; Zarr: COMPRESS (ZSTD), BLOCKSIZE=B,Y,X (32,256,256), "
               "FORMAT. Refused: what breaks the tiled band-interleaved COG (TILED=NO, "
               "INTERLEAVE=PIXEL) or changes the samples. A change rebuilds only the outputs. INI: "
               "co = A=1 B=2" },
    [O_CONFIG] = { "config", 0, 1, M, "KEY VALUE", "a GDAL configuration option, repeatable "
                   "(GDAL_CACHEMAX, GDAL_NUM_THREADS, AWS_*, GDAL_HTTP_*...), set before any "
                   "file is opened; INI: config = KEY=VALUE" },
    [O_PROGRESS] = { "progress", 0, 1, M, "MODE", "auto (a bar on a terminal, else a line per "
                     "10%), bar, json (one object per line), none (default: auto)" },
    [O_LOG] = { "log", 0, 1, M, "FILE", "append JSON lines (start, chunks, errors, summary) "
                "to FILE" },
    [O_QUIET] = { "quiet", 'q', 0, M, NULL, "only warnings and errors: no notices, progress or "
                 "summary" },
    [O_SHARD] = { "shard", 0, 1, M, "I/N", "map shard I of N only (1 <= I <= N): its own share "
                  "of the chunks, into its own -o folder; dinomap merge builds the outputs from "
                  "all N. Default: from a scheduler's environment (SLURM_ARRAY_TASK_ID, "
                  "JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX) when set; none: the whole "
                  "run, whatever the environment says" },
    [O_SHARD_COUNT] = { "shard-count", 0, 1, M, "N", "how many shards, for JOB_COMPLETION_INDEX "
                        "(Kubernetes) and AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch), which say only "
                        "the index (or set DINOMAP_SHARD_COUNT)" },
    [O_SEG_HEAD_CLI] = { "head", 0, 1, SA, "HEAD.dmseg", "the segmentation head to apply: a "
                         ".dmseg file (seg train, or seg cluster's cluster.dmseg) or Meta's "
                         "linear head; its layer and normalization are the run's (required)" },
    [O_SEG_HEAD] = { "seg-head", 0, 1, R, "HEAD.dmseg", "seg: the head to apply (as --head of "
                     "dinomap seg apply)" },
    [O_CLUSTERS] = { "clusters", 'k', 1, SC | R, "K", "seg: K k-means classes (ids 1..K, "
                     "2..254) fitted on the run's 4096-patch sample (required for seg cluster)" },
    [O_SEED] = { "seed", 0, 1, SC | R, "S", "seg: the k-means++ seed (default: 0): a seed gives "
                 "the same clusters whatever the threads or interruptions" },
    [O_PROBS] = { "probabilities", 0, 0, SA | SC | R, NULL, "seg: seg_probabilities.tif too, a "
                  "float32 band per class (the softmax of the logits)" },
};
#undef F
#undef C
#undef R
#undef SA
#undef SC
#undef FS
#undef M
#undef S

/* The commands taking an option: `similarity` runs the features product, so it takes every
 * option `features` takes. */
static unsigned takers(const struct optdef *d)
{
    return d->cmds & DM_CMD_FEATURES ? d->cmds | DM_CMD_SIMILARITY : d->cmds;
}

void dm_cli_init(dm_cli *c, const char *cmd, unsigned cmdmask)
{
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    c->cmdmask = cmdmask;
    dm_run_opts_init(&c->o);
    c->o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    c->progress = DM_PROGRESS_AUTO;
}

void dm_cli_free(dm_cli *c)
{
    for (int i = 0; i < c->ninputs; i++)
        free(c->inputs[i]);
    free(c->inputs);
    for (int i = 0; i < c->nowned; i++)
        free(c->owned[i]);
    free(c->owned);
    for (int i = 0; i < c->nco; i++)
        free(c->co[i]);
    free(c->co);
    for (int i = 0; i < c->nconfig; i++)
        free(c->config[i]);
    free(c->config);
    free(c->argv);
}

/* Appends a copy of s to a growing NULL-terminated array of strings; the copy, or NULL when out
 * of memory. */
static char *push(char ***arr, int *n, int *cap, const char *s)
{
    if (*n + 1 >= *cap) {
        int c = *cap ? 2 * *cap : 16;
        char **p = realloc(*arr, sizeof *p * (size_t)c);
        if (!p)
            return NULL;
        *arr = p;
        *cap = c;
    }
    char *d = strdup(s);
    if (d)
        (*arr)[(*n)++] = d;
    (*arr)[*n] = NULL;
    return d;
}

const char *dm_cli_keep(dm_cli *c, const char *s)
{
    return push(&c->owned, &c->nowned, &c->capowned, s);
}

int dm_cli_add_input(dm_cli *c, const char *path)
{
    return push(&c->inputs, &c->ninputs, &c->capinputs, path) ? 0 : -1;
}

int dm_parse_int_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > 100000 || n == max)
            return -1;
        out[n++] = (int)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return n;
}

int dm_parse_pair(const char *s, double *a, double *b)
{
    char *end;
    *a = strtod(s, &end);
    if (end == s || *end != ',')
        return -1;
    const char *t = end + 1;
    *b = strtod(t, &end);
    return (end == t || *end) ? -1 : 0;
}

int dm_parse_pos_int(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return (end == s || *end || errno || v <= 0 || v > 1 << 20) ? -1 : (int)v;
}

int dm_parse_progress(const char *s)
{
    static const char *names[] = { "auto", "bar", "json", "none" };
    static const int modes[] = { DM_PROGRESS_AUTO, DM_PROGRESS_BAR, DM_PROGRESS_JSON,
                                 DM_PROGRESS_NONE };
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i]))
            return modes[i];
    return -1;
}

/* A flag's value in an INI file (NULL: given on the command line, so true). */
static int flag_value(const char *v, int *out)
{
    if (!v) {
        *out = 1;
        return 0;
    }
    static const char *yes[] = { "1", "true", "yes", "on" }, *no[] = { "0", "false", "no", "off" };
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i]))
            return *out = 1, 0;
        if (!strcasecmp(v, no[i]))
            return *out = 0, 0;
    }
    return -1;
}

/* The option `name` of the commands in mask (one name may mean two: --head is the CHMv2 head
 * for chm, the segmentation head for seg apply); else the first of that name; -1 if none. */
static int find(const char *name, unsigned mask)
{
    int any = -1;
    for (int i = 0; i < O_COUNT; i++)
        if (!strcmp(defs[i].name, name)) {
            if (takers(&defs[i]) & mask)
                return i;
            any = any < 0 ? i : any;
        }
    return any;
}

#define BAD(...) (snprintf(why, n, __VA_ARGS__), -2)

static int set(dm_cli *c, int id, const char *v, char *why, size_t n)
{
    dm_run_opts *o = &c->o;
    dm_mosaic_opts *m = &o->mosaic;
    int list[8], k;
    double a, b;
    char *end;
    if (defs[id].has_arg && (!v || !*v))
        return BAD("%s%s: needs a value", id == O_CO || id == O_OF ? "-" : "--", defs[id].name);
    const char *keep = defs[id].has_arg ? dm_cli_keep(c, v) : NULL;
    if (defs[id].has_arg && !keep)
        return BAD("out of memory");
    c->given |= (uint64_t)1 << id;
    if (id == O_AT || id == O_SRS || id == O_QAOI) {
        /* a query on the command line replaces the config file's (at, srs, query-aoi) */
        if (!c->in_file && c->query_in_file)
            memset(&o->query, 0, sizeof o->query), c->query_in_file = 0;
        c->query_in_file |= c->in_file;
    }
    switch (id) {
    case O_MODEL: o->weights = keep; break;
    case O_OUTPUT: o->outdir = keep; break;
    case O_HEAD: o->head = keep; break;
    case O_SEG_HEAD_CLI:
    case O_SEG_HEAD: o->seg_head = keep; break;
    case O_AOI: o->aoi = keep; break;
    case O_CRS: m->crs = keep; break;
    case O_ARCH: o->arch = keep; break;
    case O_DEVICE: o->device = keep; break;
    case O_NORM: o->norm = keep; break;
    case O_LOG: c->log = keep; break;
    case O_SRS: o->query.srs = keep; break;
    case O_QAOI: o->query.aoi = keep; break;
    case O_FEATURES: c->features = keep; break;
    case O_AT:
        if (dm_parse_pair(v, &a, &b) || !isfinite(a) || !isfinite(b))
            return BAD("--at %s: expected two numbers X,Y (e.g. --at 500123.5,4199876 in the "
                       "output CRS, or longitude,latitude with --srs EPSG:4326)", v);
        o->query.at_set = 1, o->query.x = a, o->query.y = b;
        break;
    case O_INPUT:
        if (dm_cli_add_input(c, v))
            return BAD("out of memory");
        break;
    case O_PRODUCTS: {
        unsigned p = 0;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", v);
        char *save = NULL;
        for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
            unsigned x = dm_product_from_name(t);
            if (!x)
                return BAD("--products %s: unknown product '%s' (features, chm, seg, "
                           "similarity)", v, t);
            p |= x;
        }
        if (!p)
            return BAD("--products: empty (features, chm, seg, similarity)");
        o->products = p;
        c->products_set = 1;
        break;
    }
    case O_BANDS:
        if (dm_parse_int_list(v, list, 8) != 3 || !list[0] || !list[1] || !list[2])
            return BAD("--bands %s: expected three 1-based band numbers, e.g. 3,2,1", v);
        memcpy(m->bands, list, sizeof m->bands);
        break;
    case O_SCALE:
        if (dm_parse_pair(v, &a, &b) || b <= a)
            return BAD("--scale %s: expected MIN,MAX with MIN < MAX", v);
        m->scale_set = 1, m->scale_min = a, m->scale_max = b;
        break;
    case O_STRETCH:
        if (dm_parse_pair(v, &a, &b) || a < 0 || b > 100 || a >= b)
            return BAD("--stretch %s: expected percentiles P1,P2 with 0 <= P1 < P2 <= 100", v);
        m->stretch_set = 1, m->p1 = a, m->p2 = b;
        break;
    case O_GSD:
        m->gsd = strtod(v, &end);
        if (end == v || *end || !(m->gsd > 0))
            return BAD("--gsd %s: expected a positive pixel size", v);
        break;
    case O_MAXCOG:
        o->max_cog_gib = strtod(v, &end);
        if (end == v || *end || !(o->max_cog_gib >= 0))
            return BAD("--max-cog-gib %s: expected a size in GiB (0: no limit, always one COG)", v);
        break;
    case O_TILE:
        if ((o->tile = dm_parse_pos_int(v)) < 0)
            return BAD("--tile %s: expected a positive number of pixels", v);
        c->tile_set = 1;
        break;
    case O_HALO:
        if (dm_parse_int_list(v, list, 1) != 1)
            return BAD("--halo %s: expected a number of pixels", v);
        o->halo = list[0];
        c->halo_set = 1;
        break;
    case O_OVERLAP:
        if (dm_parse_int_list(v, list, 1) != 1 || list[0] % 32)
            return BAD("--overlap %s: expected a multiple of 32 px (= 2 × halo)", v);
        c->overlap = list[0];
        c->overlap_set = 1;
        break;
    case O_SHARD: {
        dm_err e = { 0 };
        if (dm_shard_parse(v, &o->shard, &e))
            return BAD("%s", e.msg);
        c->shard_set = 1;
        break;
    }
    case O_SHARD_COUNT:
        if ((c->shard_count = dm_parse_pos_int(v)) < 0 || c->shard_count > DM_SHARD_MAX)
            return BAD("--shard-count %s: expected 1..%d", v, DM_SHARD_MAX);
        break;
    case O_CHUNK:
        if ((o->chunk = dm_parse_pos_int(v)) < 0)
            return BAD("--chunk %s: expected a positive number of tiles", v);
        break;
    case O_BATCH:
        if ((o->batch = dm_parse_pos_int(v)) < 0 || o->batch > 256)
            return BAD("--batch %s: expected 1..256", v);
        break;
    case O_PRECISION: {
        dm_err e = { 0 };
        if (dm_precision_parse(v, &o->precision, &e))
            return BAD("%s", e.msg);
        break;
    }
    case O_THREADS:
        if ((o->threads = dm_parse_pos_int(v)) < 0)
            return BAD("--threads %s: expected a positive number", v);
        break;
    case O_LAYER:
        if (dm_parse_int_list(v, list, 1) != 1)
            return BAD("--layer %s: expected a 0-based block index", v);
        o->layer = list[0];
        break;
    case O_QUANT:
        if (!strcmp(v, "none"))
            o->quantize = 0;
        else if (!strcmp(v, "int8"))
            o->quantize = 1;
        else
            return BAD("--quantize %s: expected none or int8", v);
        break;
    case O_TAPS:
        if (dm_parse_int_list(v, o->taps, 4) != 4)
            return BAD("--taps %s: expected four block indices, e.g. 5,11,17,23", v);
        o->taps_set = 1;
        break;
    case O_CLUSTERS:
        if ((k = dm_parse_pos_int(v)) < 2 || k > 254)
            return BAD("-k %s: expected 2..254 clusters (class ids 1..K; 255 is nodata)", v);
        o->seg_k = k;
        break;
    case O_SEED: {
        unsigned long long sd = strtoull(v, &end, 10);
        if (end == v || *end || v[0] == '-' || sd > 0xffffffffULL)
            return BAD("--seed %s: expected a whole number 0..4294967295", v);
        o->seg_seed = (unsigned)sd;
        break;
    }
    case O_OF:
        if ((k = dm_out_format_parse(v)) < 0)
            return BAD("-of %s: expected COG or Zarr%s", v, strcasecmp(v, "GTiff") ? "" :
                       " (dinomap's GeoTIFFs are Cloud-Optimized: COG, the default)");
        o->out.format = k;
        break;
    case O_CO: { /* several in one value (an INI line), separated by spaces */
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", v);
        char *save = NULL;
        for (char *t = strtok_r(buf, " \t", &save); t; t = strtok_r(NULL, " \t", &save)) {
            char *eq = strchr(t, '=');
            if (!eq || eq == t || !eq[1])
                return BAD("-co %s: expected NAME=VALUE, e.g. -co COMPRESS=ZSTD", t);
            if (!push(&c->co, &c->nco, &c->capco, t))
                return BAD("out of memory");
        }
        break;
    }
    case O_CONFIG: { /* KEY=VALUE (the command line's two arguments, joined) or KEY VALUE */
        size_t kl = strcspn(v, "= \t");
        const char *val = v + kl + (v[kl] != '\0');
        if (!kl || !v[kl] || !*val)
            return BAD("--config %s: needs a value (--config KEY VALUE)", v);
        char kv[1024];
        snprintf(kv, sizeof kv, "%.*s=%s", (int)kl, v, val);
        if (!push(&c->config, &c->nconfig, &c->capconfig, kv))
            return BAD("out of memory");
        break;
    }
    case O_PROGRESS:
        if ((c->progress = dm_parse_progress(v)) < 0)
            return BAD("--progress %s: expected auto, bar, json or none", v);
        c->progress_set = 1;
        break;
    case O_UNGEO:
    case O_AOI_TILES:
    case O_NOPCA:
    case O_OVERWRITE:
    case O_DROP:
    case O_KEEP:
    case O_QUIET:
    case O_PROBS:
        if (flag_value(v, &k))
            return BAD("%s = %s: expected true or false", defs[id].name, v);
        if (id == O_UNGEO)
            m->allow_ungeoreferenced = k;
        else if (id == O_AOI_TILES)
            o->aoi_whole_tiles = k;
        else if (id == O_NOPCA)
            o->pca = !k;
        else if (id == O_OVERWRITE)
            o->overwrite = k;
        else if (id == O_DROP)
            o->drop_chunks = k;
        else if (id == O_KEEP)
            o->drop_chunks = o->drop_chunks && !k;
        else if (id == O_PROBS)
            o->seg_probabilities = k;
        else
            c->quiet = k;
        break;
    default:
        return BAD("internal: option %d", id);
    }
    return 0;
}

int dm_cli_set(dm_cli *c, const char *name, const char *value, char *why, size_t n)
{
    int id = find(name, c->cmdmask);
    if (id < 0 || !(takers(&defs[id]) & c->cmdmask)) {
        const char *names[O_COUNT + 1];
        int k = 0;
        for (int i = 0; i < O_COUNT; i++)
            if (takers(&defs[i]) & c->cmdmask)
                names[k++] = defs[i].name;
        names[k] = NULL;
        const char *s = dm_cli_suggest(name, names);
        if (s)
            snprintf(why, n, "unknown option '%s' for dinomap %s (did you mean %s?)", name,
                     c->cmd, s);
        else
            snprintf(why, n, "unknown option '%s' for dinomap %s", name, c->cmd);
        return -1;
    }
    return set(c, id, value, why, n);
}

const void *dm_cli_longopts(unsigned cmdmask)
{
    static struct option tables[6][O_COUNT + 2];
    int t = cmdmask == DM_CMD_FEATURES ? 0 : cmdmask == DM_CMD_CHM ? 1
            : cmdmask == DM_CMD_SIMILARITY ? 3 : cmdmask == DM_CMD_SEG_APPLY ? 4
            : cmdmask == DM_CMD_SEG_CLUSTER ? 5 : 2;
    struct option *l = tables[t];
    if (!l[0].name) {
        int k = 0;
        for (int i = 0; i < O_COUNT; i++)
            if (takers(&defs[i]) & cmdmask)
                l[k++] = (struct option){ defs[i].name, defs[i].has_arg ? required_argument
                                                                        : no_argument,
                                          0, 1000 + i };
        l[k++] = (struct option){ "help", no_argument, 0, 'h' };
        l[k] = (struct option){ 0, 0, 0, 0 };
    }
    return l;
}

int dm_cli_getopt(dm_cli *c, int code, const char *arg)
{
    int id = code >= 1000 ? code - 1000 : code == 'm' ? O_MODEL : code == 'o' ? O_OUTPUT
                                          : code == 'q' ? O_QUIET : code == 'k' ? O_CLUSTERS : -1;
    char why[600];
    int r = id < 0 ? (snprintf(why, sizeof why, "unknown option"), -1)
                   : set(c, id, defs[id].has_arg ? arg : NULL, why, sizeof why);
    if (r) {
        dm_say("%s (dinomap %s --help lists the options)", why, c->cmd);
        return -2;
    }
    return 0;
}

void dm_cli_help_options(FILE *f, unsigned cmdmask)
{
    for (int i = 0; i < O_COUNT; i++) {
        const struct optdef *d = &defs[i];
        if (!(takers(d) & cmdmask))
            continue;
        char head[64];
        if (i == O_CO || i == O_OF) /* GDAL's spelling */
            snprintf(head, sizeof head, "-%s %s", d->name, d->arg);
        else if (d->shortopt)
            snprintf(head, sizeof head, "-%c, --%s%s%s", d->shortopt, d->name, d->arg ? " " : "",
                     d->arg ? d->arg : "");
        else
            snprintf(head, sizeof head, "--%s%s%s", d->name, d->arg ? " " : "",
                     d->arg ? d->arg : "");
        /* the help text wrapped at 96 columns after a 26-column head */
        const char *s = d->help;
        int first = 1;
        while (*s) {
            int w = 70;
            int len = (int)strlen(s);
            if (len > w) {
                len = w;
                while (len > 0 && s[len] != ' ')
                    len--;
                if (len == 0)
                    len = w;
            }
            fprintf(f, "  %-24s%.*s\n", first ? head : "", len, s);
            first = 0;
            s += len;
            while (*s == ' ')
                s++;
        }
    }
    fprintf(f, "  %-24s%s\n", "-h, --help", "this help");
}

int dm_cli_parse(dm_cli *c, int argc, char **argv, int first, void (*help)(FILE *))
{
    const struct option *lo = dm_cli_longopts(c->cmdmask);
    int ch;
    free(c->argv);
    if (!(c->argv = dm_cli_gdal_argv(argc, argv, first, &c->argc)))
        return DM_EXIT_USAGE;
    optind = first;
    opterr = 0;
    const char *shorts = c->cmdmask & DM_CMD_SEG_CLUSTER ? ":m:o:qhk:" : ":m:o:qh";
    while ((ch = getopt_long(c->argc, c->argv, shorts, lo, NULL)) != -1) {
        if (ch == 'h') {
            help(stdout);
            return DM_EXIT_OK;
        }
        if (ch == '?' || ch == ':')
            return dm_cli_bad_option(c->cmd, ch, c->argv[optind - 1], optopt, lo);
        if (dm_cli_getopt(c, ch, optarg))
            return DM_EXIT_USAGE;
    }
    return -1;
}

int dm_cli_main(int argc, char **argv, const char *cmd, unsigned mask, void (*help)(FILE *))
{
    dm_cli c;
    dm_cli_init(&c, cmd, mask);
    int code = dm_cli_parse(&c, argc, argv, 1, help);
    for (int i = optind; code < 0 && i < c.argc; i++)
        if (dm_cli_add_input(&c, c.argv[i]))
            code = DM_EXIT_FAIL;
    return dm_cli_conclude(&c, code);
}

int dm_cli_conclude(dm_cli *c, int code)
{
    if (code < 0 && dm_cli_finish(c))
        code = DM_EXIT_USAGE;
    if (code < 0)
        code = dm_cli_map(c);
    dm_cli_free(c);
    return code;
}

int dm_cli_apply_config(dm_cli *c)
{
    dm_err err = { 0 };
    for (int i = 0; i < c->nconfig; i++) {
        char *eq = strchr(c->config[i], '=');
        *eq = '\0';
        int r = dm_gis_config_set(c->config[i], eq + 1, &err);
        *eq = '=';
        if (r) {
            dm_say("%s", err.msg);
            return -2;
        }
    }
    return 0;
}

const char *dm_cli_unused_with_features(const dm_cli *c)
{
    static const int used[] = { O_OUTPUT, O_AT, O_SRS, O_QAOI, O_FEATURES, O_MAXCOG, O_OF, O_CO,
                                O_CONFIG, O_PROGRESS, O_QUIET };
    for (int i = 0; i < O_COUNT; i++) {
        int ok = !(c->given >> i & 1);
        for (size_t k = 0; !ok && k < sizeof used / sizeof used[0]; k++)
            ok = used[k] == i;
        if (!ok)
            return defs[i].name;
    }
    return NULL;
}

static const char *env_get(const char *name, void *ctx)
{
    (void)ctx;
    return getenv(name);
}

int dm_cli_finish(dm_cli *c)
{
    dm_run_opts *o = &c->o;
    const char *cmd = c->cmd;
    if (c->cmdmask == DM_CMD_FEATURES)
        o->products = DM_PRODUCT_FEATURES;
    else if (c->cmdmask == DM_CMD_CHM)
        o->products = DM_PRODUCT_CHM;
    else if (c->cmdmask == DM_CMD_SIMILARITY)
        o->products = DM_PRODUCT_FEATURES | DM_PRODUCT_SIMILARITY;
    else if (c->cmdmask & (DM_CMD_SEG_APPLY | DM_CMD_SEG_CLUSTER))
        o->products = DM_PRODUCT_FEATURES | DM_PRODUCT_SEG;
    else if (!c->products_set) {
        dm_say("no products (products = features, chm, seg, similarity, or several: "
               "features,chm)");
        return -2;
    }
    if (o->products & DM_PRODUCT_SEG) /* derived from the features' chunks */
        o->products |= DM_PRODUCT_FEATURES;
    if (o->aoi_whole_tiles && !o->aoi) {
        dm_say("--aoi-whole-tiles needs --aoi FILE");
        return -2;
    }
    if (c->quiet && !c->progress_set)
        c->progress = DM_PROGRESS_NONE; /* -q: warnings and errors only */
    if (!(o->products & DM_PRODUCT_FEATURES) && !c->tile_set)
        o->tile = 384; /* chm alone: 512-px windows with the default halo, as CHMv2 was run */
    if (c->overlap_set) {
        if (c->halo_set && c->overlap != 2 * o->halo) {
            dm_say("--overlap %d and --halo %d disagree (overlap = 2 × halo); give one of them",
                   c->overlap, o->halo);
            return -2;
        }
        o->halo = c->overlap / 2;
    }
    int no_head = c->cmdmask == DM_CMD_SEG_APPLY && !o->seg_head;
    int no_k = c->cmdmask == DM_CMD_SEG_CLUSTER && !o->seg_k;
    if (!o->weights || !o->outdir || !c->ninputs || no_head || no_k) {
        char miss[160] = "";
        if (!o->weights)
            strcat(miss, "-m WEIGHTS, ");
        if (!o->outdir)
            strcat(miss, "-o OUTDIR, ");
        if (no_head)
            strcat(miss, "--head HEAD.dmseg, ");
        if (no_k)
            strcat(miss, "-k K, ");
        if (!c->ninputs)
            strcat(miss, c->cmdmask == DM_CMD_RUN ? "input = ..., " : "an INPUT, ");
        miss[strlen(miss) - 2] = '\0';
        if (c->cmdmask == DM_CMD_SIMILARITY && (!o->weights || !c->ninputs))
            strcat(miss, " (or --features PATH instead of -m and INPUT)");
        dm_say("missing %s (dinomap %s --help)", miss, cmd);
        return -2;
    }
    if (c->shard_set && c->shard_count) {
        dm_say("--shard-count is the count for a scheduler's index (JOB_COMPLETION_INDEX, "
               "AWS_BATCH_JOB_ARRAY_INDEX); --shard I/N gives its own");
        return -2;
    }
    if (!c->shard_set) { /* a scheduler's array task: its index and count */
        dm_err e = { 0 };
        if (dm_shard_from_env(env_get, NULL, c->shard_count, &o->shard, &e)) {
            dm_say("%s", e.msg);
            return -2;
        }
    }
    o->mosaic.inputs = (const char *const *)c->inputs;
    o->mosaic.n_inputs = c->ninputs;
    o->out.co = (const char *const *)c->co;
    dm_err err = { 0 };
    if (dm_cli_apply_config(c))
        return -2;
    if (dm_run_check(o, &err)) {
        dm_say("%s", err.msg);
        return -2;
    }
    return 0;
}

/* src/cmd_search.c — `dinomap search`: the tiles of one or several runs most like a query (a
 * tile, the tile under a point, a vector, or an image chip embedded with the run's model), by the
 * cosine of their unit embeddings. Each index is searched through its search file (gis.h:
 * built beside the index and kept up to date by gis/search.c): by default sign bits, then int8,
 * then the exact float32 scores of the best few hundred; --exact scores every tile. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../gis/gis.h"
#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap search OUTDIR|INDEX... (--tile ID | --at X,Y [--srs CRS] | --vector "
        "FILE.npy\n"
        "                      | --image CHIP -m WEIGHTS) [-k 10] [--embedding mean|cls]\n"
        "                      [--exact] [--within AOI] [--geojson OUT] [--json]\n\n"
        "The tiles most like a query, across the run folders (or their tiles.gpkg) given: the\n"
        "cosine similarity of the query to the unit embedding of every done tile (the tile\n"
        "index's embeddings table, written by the features product). The indexes must come\n"
        "from the same model (weights SHA-256, embedding length).\n\n"
        "Each index is searched through a search file beside it (tiles.mean.search or\n"
        "tiles.cls.search: the embedding as float32, int8 and sign bits, memory-mapped), built\n"
        "at the first search and again whenever the index changed or the file is damaged;\n"
        "where the folder cannot be written, an in-memory copy is used (with a warning). By\n"
        "default the sign bits pick candidates, int8 narrows them and the best few hundred\n"
        "get their exact float32 scores (recall@10 >= 0.99 against --exact on clustered data).\n\n"
        "The query (exactly one):\n"
        "  --tile ID          a tile of the first index (its tile_id: row * columns + col)\n"
        "  --at X,Y           the done tile of the first index under the point, in --srs\n"
        "  --srs CRS          the point's CRS (default the index's; EPSG:4326 takes lon,lat)\n"
        "  --vector FILE.npy  a vector of the embedding's length (float32/64; normalized here)\n"
        "  --image CHIP       an image (any raster GDAL reads) embedded as the first index's run\n"
        "                     embeds a tile: its bands, scaling, normalization and model; cut\n"
        "                     to a tile's window (tile + 2 * halo px) it gives that tile's\n"
        "                     embedding; the centre (less the halo) makes the mean\n"
        "  -m, --model WEIGHTS  with --image: the run's weights (checked by SHA-256)\n"
        "options:\n"
        "  -k N               how many tiles to list (default 10; at most 1000000)\n"
        "  --embedding E      mean (the mean of the tile's patch vectors, default) or cls\n"
        "  --exact            score every tile's float32 vector (slower; the reference)\n"
        "  --within AOI       only tiles touching the polygons of AOI (any OGR format and CRS)\n"
        "  --geojson OUT      also write the hits as polygons (rank, score, tile_id, row, col,\n"
        "                     index) in EPSG:4326 (RFC 7946 GeoJSON)\n"
        "  --json             print the hits as JSON instead of a table\n"
        "  -h, --help         this text\n\n"
        "Prints one line per hit: rank, index (with several), tile id, score, the tile's\n"
        "centre in longitude/latitude, its row and column.\n\n"
        "Exit status: 0 done, 1 failure (an unknown tile id, a point under no done tile, an\n"
        "index without embeddings, indexes of different models, a vector of another length,\n"
        "an unreadable chip, weights that are not the run's), 2 usage.\n");
}

typedef struct cand {
    int ix;         /* which index */
    int64_t k;      /* which tile of it */
    double score;
} cand;

static int by_score(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    if (x->ix != y->ix)
        return x->ix < y->ix ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

/* The index file of a run folder or of a path to it. */
static char *index_path(const char *arg)
{
    struct stat st;
    size_t n = strlen(arg) + 16;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, stat(arg, &st) == 0 && S_ISDIR(st.st_mode) ? "%s/tiles.gpkg" : "%s", arg);
    return p;
}

typedef struct args {
    const char *tile, *at, *srs, *vector, *image, *weights, *within, *geojson;
    int k, emb, json, exact;
} args;

static int from_npy(const args *a, int dim, float *q)
{
    dm_npy v;
    dm_err err = { 0 };
    if (dm_npy_read(a->vector, &v, &err)) {
        dm_say("search: --vector %s: %s", a->vector, err.msg);
        return DM_EXIT_FAIL;
    }
    int rc = 0;
    if (v.dtype != 'f') {
        dm_say("search: --vector %s: uint8 values; expected float32 or float64", a->vector);
        rc = DM_EXIT_FAIL;
    } else if (v.numel != dim) {
        dm_say("search: --vector %s: %lld values, the embeddings have %d", a->vector,
               (long long)v.numel, dim);
        rc = DM_EXIT_FAIL;
    }
    double s = 0;
    for (int i = 0; rc == 0 && i < dim; i++)
        s += (double)v.f[i] * v.f[i];
    if (rc == 0 && !(s > 0 && isfinite(s))) {
        dm_say("search: --vector %s: a zero or non-finite vector", a->vector);
        rc = DM_EXIT_FAIL;
    }
    for (int i = 0; rc == 0 && i < dim; i++)
        q[i] = (float)(v.f[i] / sqrt(s));
    dm_npy_free(&v);
    return rc;
}

/* The unit query vector q [dim] from the first index (or the model): 0, or the exit code
 * (said). */
static int query(const args *a, const dm_sindex *s, float *q)
{
    dm_err err = { 0 };
    const dm_sindex_info *in = dm_sindex_get_info(s);
    size_t D = (size_t)in->dim;
    if (a->tile) {
        char *end;
        long long id = strtoll(a->tile, &end, 10);
        int64_t k = *end || end == a->tile ? -1 : dm_sindex_find(s, id);
        if (k < 0) {
            dm_say("search: --tile %s: no done tile with that id in %s (dinomap status shows "
                   "the run; tile ids are row * columns + col)", a->tile, in->index);
            return DM_EXIT_FAIL;
        }
        memcpy(q, dm_sindex_vec(s, k), D * sizeof *q);
        return 0;
    }
    if (a->at) {
        double x, y, px, py;
        if (dm_parse_pair(a->at, &x, &y)) {
            dm_say("search: --at %s: expected X,Y (two numbers)", a->at);
            return DM_EXIT_USAGE;
        }
        if (dm_gis_point_to(a->srs, in->wkt, x, y, &px, &py, &err)) {
            dm_say("search: %s", err.msg);
            return DM_EXIT_FAIL;
        }
        for (int64_t k = 0; k < in->n; k++) {
            const double *b = dm_sindex_box(s, k);
            if (px >= b[0] && px < b[2] && py > b[1] && py <= b[3]) {
                memcpy(q, dm_sindex_vec(s, k), D * sizeof *q);
                return 0;
            }
        }
        dm_say("search: --at %s: the point is under no done tile of %s", a->at, in->index);
        return DM_EXIT_FAIL;
    }
    if (a->vector)
        return from_npy(a, in->dim, q);
    float *other = malloc(D * sizeof *other);
    if (!other) {
        dm_say("search: out of memory");
        return DM_EXIT_FAIL;
    }
    dm_chip_opts co = { in->index, a->image, a->weights, 0 };
    int rc = dm_chip_embed(&co, in->dim, a->emb == DM_EMB_CLS ? q : other,
                           a->emb == DM_EMB_CLS ? other : q, &err);
    free(other);
    if (rc)
        dm_say("search: %s", err.msg);
    return rc ? DM_EXIT_FAIL : 0;
}

/* The best k of each index (touching --within) into c; *nc how many. */
static int score(const args *a, dm_sindex **s, int nt, const float *q, dm_pool *pool, cand *c,
                 int64_t *nc)
{
    *nc = 0;
    dm_search_match *m = malloc(sizeof *m * (size_t)a->k);
    if (!m) {
        dm_say("search: out of memory");
        return DM_EXIT_FAIL;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < nt; i++) {
        const dm_sindex_info *in = dm_sindex_get_info(s[i]);
        dm_aoi *aoi = NULL;
        uint8_t *allow = NULL;
        dm_err err = { 0 };
        if (a->within && dm_aoi_open(a->within, in->wkt, &aoi, &err)) {
            dm_say("search: --within %s", err.msg);
            rc = DM_EXIT_FAIL;
            break;
        }
        if (aoi && !(allow = malloc((size_t)in->n))) {
            dm_say("search: out of memory");
            rc = DM_EXIT_FAIL;
        }
        for (int64_t k = 0; allow && k < in->n; k++) {
            const double *b = dm_sindex_box(s[i], k);
            allow[k] = (uint8_t)dm_aoi_touches(aoi, b[0], b[1], b[2], b[3]);
        }
        dm_aoi_free(aoi);
        dm_search_opts o = { a->k, a->exact, allow, pool, 0, 0 };
        int n = 0;
        if (rc == 0 && dm_sindex_search(s[i], q, &o, m, &n, &err)) {
            dm_say("search: %s: %s", in->index, err.msg);
            rc = DM_EXIT_FAIL;
        }
        for (int j = 0; rc == 0 && j < n; j++)
            c[(*nc)++] = (cand){ i, m[j].i, m[j].score };
        free(allow);
    }
    free(m);
    return rc;
}

static int report(const args *a, dm_sindex **t, int nt, const cand *c, int n)
{
    dm_search_hit *h = calloc((size_t)n + 1, sizeof *h);
    double *lon = calloc((size_t)n + 1, sizeof *lon), *lat = calloc((size_t)n + 1, sizeof *lat);
    int *ll = calloc((size_t)n + 1, sizeof *ll);
    if (!h || !lon || !lat || !ll) {
        free(h), free(lon), free(lat), free(ll);
        dm_say("search: out of memory");
        return DM_EXIT_FAIL;
    }
    for (int i = 0; i < n; i++) {
        const dm_sindex *x = t[c[i].ix];
        const dm_sindex_info *in = dm_sindex_get_info(x);
        const double *b = dm_sindex_box(x, c[i].k);
        int row, col;
        dm_sindex_rowcol(x, c[i].k, &row, &col);
        h[i] = (dm_search_hit){ i + 1, row, col, dm_sindex_id(x, c[i].k), c[i].score, in->index,
                                in->wkt, b };
        lon[i] = (b[0] + b[2]) / 2, lat[i] = (b[1] + b[3]) / 2;
        ll[i] = dm_gis_to_lonlat(in->wkt, 1, &lon[i], &lat[i], NULL) == 0;
    }
    cJSON *j = a->json ? cJSON_CreateArray() : NULL;
    if (!a->json)
        printf("%4s  %s%10s  %9s  %12s %12s  %5s %5s\n", "rank", nt > 1 ? "index  " : "",
               "tile", "score", "lon", "lat", "row", "col");
    for (int i = 0; i < n; i++) {
        if (j) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "rank", h[i].rank);
            cJSON_AddStringToObject(o, "index", h[i].index);
            cJSON_AddNumberToObject(o, "tile_id", (double)h[i].id);
            cJSON_AddNumberToObject(o, "score", h[i].score);
            if (ll[i]) {
                cJSON_AddNumberToObject(o, "lon", lon[i]);
                cJSON_AddNumberToObject(o, "lat", lat[i]);
            }
            cJSON_AddNumberToObject(o, "row", h[i].row);
            cJSON_AddNumberToObject(o, "col", h[i].col);
            cJSON_AddItemToArray(j, o);
            continue;
        }
        char ix[16] = "", lo[32] = "-", la[32] = "-";
        if (nt > 1)
            snprintf(ix, sizeof ix, "%5d  ", c[i].ix + 1);
        if (ll[i])
            snprintf(lo, sizeof lo, "%.7f", lon[i]), snprintf(la, sizeof la, "%.7f", lat[i]);
        printf("%4d  %s%10lld  %9.6f  %12s %12s  %5d %5d\n", h[i].rank, ix, (long long)h[i].id,
               h[i].score, lo, la, h[i].row, h[i].col);
    }
    if (!a->json && nt > 1)
        for (int i = 0; i < nt; i++)
            printf("index %d: %s\n", i + 1, dm_sindex_get_info(t[i])->index);
    if (j) {
        char *s = cJSON_PrintUnformatted(j);
        printf("%s\n", s ? s : "[]");
        free(s);
        cJSON_Delete(j);
    }
    int rc = 0;
    dm_err err = { 0 };
    if (a->geojson && dm_search_write_geojson(a->geojson, h, n, &err)) {
        dm_say("search: --geojson %s", err.msg);
        rc = DM_EXIT_FAIL;
    }
    free(h), free(lon), free(lat), free(ll);
    return rc;
}

static int search(const args *a, char **paths, int nt)
{
    dm_sindex **t = calloc((size_t)nt, sizeof *t);
    if (!t) {
        dm_say("search: out of memory");
        return DM_EXIT_FAIL;
    }
    int rc = 0;
    const dm_sindex_info *first = NULL;
    for (int i = 0; rc == 0 && i < nt; i++) {
        dm_err err = { 0 };
        char *p = index_path(paths[i]);
        const dm_sindex_info *in = NULL;
        if (!p || dm_search_open(p, a->emb, &t[i], &err)) {
            dm_say("search: %s", p ? err.msg : "out of memory");
            rc = DM_EXIT_FAIL;
        } else if ((in = dm_sindex_get_info(t[i])), i == 0) {
            first = in;
        } else if (in->dim != first->dim || strcmp(in->sha256, first->sha256)) {
            dm_say("search: %s and %s come from different models (weights sha256 %.16s…, %d "
                   "dimensions vs %.16s…, %d): their embeddings do not compare", first->index,
                   in->index, first->sha256, first->dim, in->sha256, in->dim);
            rc = DM_EXIT_FAIL;
        }
        free(p);
    }
    float *q = rc ? NULL : malloc((size_t)first->dim * sizeof *q);
    cand *c = rc ? NULL : malloc((size_t)nt * a->k * sizeof *c);
    dm_pool *pool = NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (rc == 0 && (!q || !c || dm_pool_create(ncpu > 1 ? (int)ncpu : 1, &pool))) {
        dm_say("search: out of memory");
        rc = DM_EXIT_FAIL;
    }
    int64_t nc = 0;
    if (rc == 0)
        rc = query(a, t[0], q);
    if (rc == 0)
        rc = score(a, t, nt, q, pool, c, &nc);
    if (rc == 0) {
        qsort(c, (size_t)nc, sizeof *c, by_score);
        rc = report(a, t, nt, c, (int)(nc < a->k ? nc : a->k));
    }
    dm_pool_free(pool);
    free(q), free(c);
    for (int i = 0; i < nt; i++)
        dm_sindex_close(t[i]);
    free(t);
    return rc;
}

int cmd_search(int argc, char **argv)
{
    static const struct option opts[] = {
        { "tile", required_argument, 0, 't' }, { "at", required_argument, 0, 'a' },
        { "srs", required_argument, 0, 's' }, { "vector", required_argument, 0, 'v' },
        { "image", required_argument, 0, 'i' }, { "model", required_argument, 0, 'm' },
        { "embedding", required_argument, 0, 'e' }, { "exact", no_argument, 0, 'x' },
        { "within", required_argument, 0, 'w' }, { "geojson", required_argument, 0, 'g' },
        { "json", no_argument, 0, 'j' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    args a = { .k = 10, .emb = DM_EMB_MEAN };
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":hk:m:", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': help(stdout); return 0;
        case 't': a.tile = optarg; break;
        case 'a': a.at = optarg; break;
        case 's': a.srs = optarg; break;
        case 'v': a.vector = optarg; break;
        case 'i': a.image = optarg; break;
        case 'm': a.weights = optarg; break;
        case 'x': a.exact = 1; break;
        case 'w': a.within = optarg; break;
        case 'g': a.geojson = optarg; break;
        case 'j': a.json = 1; break;
        case 'k':
            if ((a.k = dm_parse_pos_int(optarg)) < 1 || a.k > 1000000) {
                dm_say("search: -k %s: expected an integer from 1 to 1000000", optarg);
                return DM_EXIT_USAGE;
            }
            break;
        case 'e':
            if (strcmp(optarg, "mean") && strcmp(optarg, "cls")) {
                dm_say("search: --embedding %s: expected mean or cls", optarg);
                return DM_EXIT_USAGE;
            }
            a.emb = !strcmp(optarg, "cls") ? DM_EMB_CLS : DM_EMB_MEAN;
            break;
        default: return dm_cli_bad_option("search", ch, argv[optind - 1], optopt, opts);
        }
    }
    if (!!a.tile + !!a.at + !!a.vector + !!a.image != 1) {
        dm_say("search: give one query: --tile ID, --at X,Y, --vector FILE.npy or --image CHIP "
               "(dinomap search --help)");
        return DM_EXIT_USAGE;
    }
    if (a.srs && !a.at) {
        dm_say("search: --srs goes with --at");
        return DM_EXIT_USAGE;
    }
    if (!a.image != !a.weights) {
        dm_say(a.image ? "search: --image needs the run's weights: -m WEIGHTS"
                       : "search: -m goes with --image");
        return DM_EXIT_USAGE;
    }
    if (optind >= argc) {
        dm_say("search: expected one or more OUTDIR or tiles.gpkg (dinomap search --help)");
        return DM_EXIT_USAGE;
    }
    dm_err err = { 0 };
    if (a.srs && dm_gis_srs_check("--srs", a.srs, &err)) {
        dm_say("search: %s", err.msg);
        return DM_EXIT_USAGE;
    }
    return search(&a, argv + optind, argc - optind);
}

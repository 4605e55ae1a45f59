/* src/cmd_search.c — `dinomap search`: the tiles of one or several runs most like a query (a
 * tile, the tile under a point, or a vector), by the cosine of their unit embeddings (the tile
 * index's `embeddings` table). Exact: every done tile is scored. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../gis/gis.h"
#include "cli.h"

static void help(FILE *f)
{
    fprintf(f,
        "usage: dinomap search OUTDIR|INDEX... (--tile ID | --at X,Y [--srs CRS] | --vector "
        "FILE.npy)\n"
        "                      [-k 10] [--embedding mean|cls] [--within AOI] [--geojson OUT]"
        " [--json]\n\n"
        "The tiles most like a query, across the run folders (or their tiles.gpkg) given: the\n"
        "cosine similarity of the query to the unit embedding of every done tile (the tile\n"
        "index's embeddings table, written by the features product). Exact: every tile is\n"
        "scored. The indexes must come from the same model (weights SHA-256, embedding length).\n\n"
        "The query:\n"
        "  --tile ID          a tile of the first index (its tile_id: row * columns + col)\n"
        "  --at X,Y           the done tile of the first index under the point, in --srs\n"
        "  --srs CRS          the point's CRS (default the index's; EPSG:4326 takes lon,lat)\n"
        "  --vector FILE.npy  a vector of the embedding's length (float32/64; normalized here)\n"
        "options:\n"
        "  -k N               how many tiles to list (default 10)\n"
        "  --embedding E      mean (the mean of the tile's patch vectors, default) or cls\n"
        "  --within AOI       only tiles touching the polygons of AOI (any OGR format and CRS)\n"
        "  --geojson OUT      also write the hits as polygons (rank, score, tile_id, row, col,\n"
        "                     index) in EPSG:4326 (RFC 7946 GeoJSON)\n"
        "  --json             print the hits as JSON instead of a table\n\n"
        "Prints one line per hit: rank, index (with several), tile id, score, the tile's\n"
        "centre in longitude/latitude, its row and column.\n\n"
        "Exit status: 0 done, 1 failure (an unknown tile id, a point under no done tile, an\n"
        "index without embeddings, indexes of different models, a vector of another length),\n"
        "2 usage.\n");
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

static int find_tile(const dm_search_tiles *t, int64_t id)
{
    for (int64_t k = 0; k < t->n; k++)
        if (t->id[k] == id)
            return (int)k;
    return -1;
}

typedef struct args {
    const char *tile, *at, *srs, *vector, *within, *geojson;
    int k, cls, json;
} args;

/* The unit query vector q [dim]: 0, or the exit code (said). */
static int query(const args *a, dm_search_tiles *t, float *q)
{
    dm_err err = { 0 };
    const float *emb = a->cls ? t->cls : t->mean;
    size_t D = (size_t)t->dim;
    if (a->tile) {
        char *end;
        long long id = strtoll(a->tile, &end, 10);
        int k = *end || end == a->tile ? -1 : find_tile(t, id);
        if (k < 0) {
            dm_say("search: --tile %s: no done tile with that id in %s (dinomap status shows "
                   "the run; tile ids are row * columns + col)", a->tile, t->path);
            return DM_EXIT_FAIL;
        }
        memcpy(q, emb + (size_t)k * D, D * sizeof *q);
        return 0;
    }
    if (a->at) {
        double x, y, px, py;
        if (dm_parse_pair(a->at, &x, &y)) {
            dm_say("search: --at %s: expected X,Y (two numbers)", a->at);
            return DM_EXIT_USAGE;
        }
        if (dm_gis_point_to(a->srs, t->wkt, x, y, &px, &py, &err)) {
            dm_say("search: %s", err.msg);
            return DM_EXIT_FAIL;
        }
        for (int64_t k = 0; k < t->n; k++) {
            const double *b = t->box + 4 * k;
            if (px >= b[0] && px < b[2] && py > b[1] && py <= b[3]) {
                memcpy(q, emb + (size_t)k * D, D * sizeof *q);
                return 0;
            }
        }
        dm_say("search: --at %s: the point is under no done tile of %s", a->at, t->path);
        return DM_EXIT_FAIL;
    }
    dm_npy v;
    if (dm_npy_read(a->vector, &v, &err)) {
        dm_say("search: --vector %s: %s", a->vector, err.msg);
        return DM_EXIT_FAIL;
    }
    int rc = 0;
    if (v.dtype != 'f') {
        dm_say("search: --vector %s: uint8 values; expected float32 or float64", a->vector);
        rc = DM_EXIT_FAIL;
    } else if (v.numel != t->dim) {
        dm_say("search: --vector %s: %lld values, the embeddings have %d", a->vector,
               (long long)v.numel, t->dim);
        rc = DM_EXIT_FAIL;
    }
    double s = 0;
    for (size_t i = 0; rc == 0 && i < D; i++)
        s += (double)v.f[i] * v.f[i];
    if (rc == 0 && !(s > 0 && isfinite(s))) {
        dm_say("search: --vector %s: a zero or non-finite vector", a->vector);
        rc = DM_EXIT_FAIL;
    }
    for (size_t i = 0; rc == 0 && i < D; i++)
        q[i] = (float)(v.f[i] / sqrt(s));
    dm_npy_free(&v);
    return rc;
}

/* Scores every tile of every index (touching --within) into c; *nc how many. */
static int score(const args *a, dm_search_tiles *t, int nt, const float *q, cand *c, int64_t *nc)
{
    *nc = 0;
    size_t D = (size_t)t[0].dim;
    for (int i = 0; i < nt; i++) {
        dm_aoi *aoi = NULL;
        dm_err err = { 0 };
        if (a->within && dm_aoi_open(a->within, t[i].wkt, &aoi, &err)) {
            dm_say("search: --within %s", err.msg);
            return DM_EXIT_FAIL;
        }
        const float *emb = a->cls ? t[i].cls : t[i].mean;
        for (int64_t k = 0; k < t[i].n; k++) {
            const double *b = t[i].box + 4 * k;
            if (aoi && !dm_aoi_touches(aoi, b[0], b[1], b[2], b[3]))
                continue;
            const float *e = emb + (size_t)k * D;
            double s = 0;
            for (size_t j = 0; j < D; j++)
                s += (double)q[j] * e[j];
            c[(*nc)++] = (cand){ i, k, s };
        }
        dm_aoi_free(aoi);
    }
    return 0;
}

static int report(const args *a, dm_search_tiles *t, int nt, const cand *c, int n)
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
        const dm_search_tiles *x = &t[c[i].ix];
        const double *b = x->box + 4 * c[i].k;
        h[i] = (dm_search_hit){ i + 1, x->row[c[i].k], x->col[c[i].k], x->id[c[i].k], c[i].score,
                                x->path, x->wkt, b };
        lon[i] = (b[0] + b[2]) / 2, lat[i] = (b[1] + b[3]) / 2;
        ll[i] = dm_gis_to_lonlat(x->wkt, 1, &lon[i], &lat[i], NULL) == 0;
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
            printf("index %d: %s\n", i + 1, t[i].path);
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
    dm_search_tiles *t = calloc((size_t)nt, sizeof *t);
    if (!t) {
        dm_say("search: out of memory");
        return DM_EXIT_FAIL;
    }
    int rc = 0;
    int64_t total = 0;
    for (int i = 0; rc == 0 && i < nt; i++) {
        dm_err err = { 0 };
        char *p = index_path(paths[i]);
        if (!p || dm_search_tiles_load(p, &t[i], &err)) {
            dm_say("search: %s", p ? err.msg : "out of memory");
            rc = DM_EXIT_FAIL;
        } else if (i > 0 && (t[i].dim != t[0].dim || strcmp(t[i].sha256, t[0].sha256))) {
            dm_say("search: %s and %s come from different models (weights sha256 %.16s…, %d "
                   "dimensions vs %.16s…, %d): their embeddings do not compare", t[0].path,
                   t[i].path, t[0].sha256, t[0].dim, t[i].sha256, t[i].dim);
            rc = DM_EXIT_FAIL;
        }
        total += rc ? 0 : t[i].n;
        free(p);
    }
    float *q = rc ? NULL : malloc((size_t)t[0].dim * sizeof *q);
    cand *c = rc ? NULL : malloc((size_t)total * sizeof *c);
    if (rc == 0 && (!q || !c)) {
        dm_say("search: out of memory");
        rc = DM_EXIT_FAIL;
    }
    int64_t nc = 0;
    if (rc == 0)
        rc = query(a, &t[0], q);
    if (rc == 0)
        rc = score(a, t, nt, q, c, &nc);
    if (rc == 0) {
        qsort(c, (size_t)nc, sizeof *c, by_score);
        rc = report(a, t, nt, c, (int)(nc < a->k ? nc : a->k));
    }
    free(q), free(c);
    for (int i = 0; i < nt; i++)
        dm_search_tiles_free(&t[i]);
    free(t);
    return rc;
}

int cmd_search(int argc, char **argv)
{
    static const struct option opts[] = {
        { "tile", required_argument, 0, 't' }, { "at", required_argument, 0, 'a' },
        { "srs", required_argument, 0, 's' }, { "vector", required_argument, 0, 'v' },
        { "embedding", required_argument, 0, 'e' }, { "within", required_argument, 0, 'w' },
        { "geojson", required_argument, 0, 'g' }, { "json", no_argument, 0, 'j' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
    args a = { .k = 10 };
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":hk:", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': help(stdout); return 0;
        case 't': a.tile = optarg; break;
        case 'a': a.at = optarg; break;
        case 's': a.srs = optarg; break;
        case 'v': a.vector = optarg; break;
        case 'w': a.within = optarg; break;
        case 'g': a.geojson = optarg; break;
        case 'j': a.json = 1; break;
        case 'k':
            if ((a.k = dm_parse_pos_int(optarg)) < 1) {
                dm_say("search: -k %s: expected a positive integer", optarg);
                return DM_EXIT_USAGE;
            }
            break;
        case 'e':
            if (strcmp(optarg, "mean") && strcmp(optarg, "cls")) {
                dm_say("search: --embedding %s: expected mean or cls", optarg);
                return DM_EXIT_USAGE;
            }
            a.cls = !strcmp(optarg, "cls");
            break;
        default: return dm_cli_bad_option("search", ch, argv[optind - 1], optopt, opts);
        }
    }
    if (!!a.tile + !!a.at + !!a.vector != 1) {
        dm_say("search: give one query: --tile ID, --at X,Y or --vector FILE.npy (dinomap "
               "search --help)");
        return DM_EXIT_USAGE;
    }
    if (a.srs && !a.at) {
        dm_say("search: --srs goes with --at");
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

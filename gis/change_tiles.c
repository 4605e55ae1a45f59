/* gis/change_tiles.c — the per-tile scores of a change map: the mean of change.tif over each tile
 * footprint (the tiles of a run's tiles.gpkg, or squares of the raster's own grid), ranked, as a
 * GeoPackage layer `tiles` that QGIS filters ("rank" <= 100). One tile's window is read at a time;
 * only the scores are held. */
#include <gdal.h>
#include <math.h>
#include <ogr_api.h>
#include <ogr_srs_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gis.h"

typedef struct ctile {
    long long id;
    int x, y, w, h;   /* patches of the change raster */
    double mean;      /* NaN: no valid patch */
    int n, rank;
} ctile;

typedef struct ctiles {
    ctile *t;
    size_t n, cap;
} ctiles;

static int add(ctiles *c, long long id, int x, int y, int w, int h, dm_err *err)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 256;
        ctile *t = realloc(c->t, cap * sizeof *t);
        if (!t)
            return dm_err_oom(err);
        c->t = t, c->cap = cap;
    }
    c->t[c->n++] = (ctile){ id, x, y, w, h, NAN, 0, 0 };
    return 0;
}

/* The footprints of a run's tiles layer, as patch windows of the raster (gt). */
static int from_index(const char *path, const double gt[6], int W, int H, ctiles *c, dm_err *err)
{
    GDALDatasetH ds = GDALOpenEx(path, GDAL_OF_VECTOR | GDAL_OF_READONLY, NULL, NULL, NULL);
    OGRLayerH l = ds ? GDALDatasetGetLayerByName(ds, "tiles") : NULL;
    if (!l) {
        if (ds)
            GDALClose(ds);
        return dm_err_set(err, DM_EFORMAT, "%s: cannot read its `tiles` layer; is it a dinomap "
                          "tiles.gpkg?", path);
    }
    int rc = 0;
    OGRFeatureH f;
    OGR_L_ResetReading(l);
    while (!rc && (f = OGR_L_GetNextFeature(l))) {
        OGRGeometryH g = OGR_F_GetGeometryRef(f);
        if (g) {
            OGREnvelope e;
            OGR_G_GetEnvelope(g, &e);
            int x0 = (int)lround((e.MinX - gt[0]) / gt[1]);
            int x1 = (int)lround((e.MaxX - gt[0]) / gt[1]);
            int y0 = (int)lround((e.MaxY - gt[3]) / gt[5]);
            int y1 = (int)lround((e.MinY - gt[3]) / gt[5]);
            x0 = x0 < 0 ? 0 : x0, y0 = y0 < 0 ? 0 : y0;
            x1 = x1 > W ? W : x1, y1 = y1 > H ? H : y1;
            if (x1 > x0 && y1 > y0)
                rc = add(c, (long long)OGR_F_GetFID(f), x0, y0, x1 - x0, y1 - y0, err);
        }
        OGR_F_Destroy(f);
    }
    GDALClose(ds);
    return rc;
}

static int by_mean(const void *a, const void *b)
{
    const ctile *p = *(const ctile *const *)a, *q = *(const ctile *const *)b;
    if (p->mean != q->mean)
        return p->mean > q->mean ? -1 : 1;
    return p->id < q->id ? -1 : p->id > q->id;
}

static int write_gpkg(const char *path, const ctiles *c, const double gt[6], const char *wkt,
                      dm_err *err)
{
    GDALDriverH drv = GDALGetDriverByName("GPKG");
    GDALDatasetH ds = drv ? GDALCreate(drv, path, 0, 0, 0, GDT_Unknown, NULL) : NULL;
    if (!ds)
        return dm_err_set(err, DM_EIO, "%s: cannot create the GeoPackage", path);
    OGRSpatialReferenceH srs = NULL;
    if (wkt && wkt[0]) {
        srs = OSRNewSpatialReference(wkt);
        OSRSetAxisMappingStrategy(srs, OAMS_TRADITIONAL_GIS_ORDER);
    }
    const char *lo[] = { "FID=tile_id", "GEOMETRY_NAME=geom", "SPATIAL_INDEX=YES",
                         "DESCRIPTION=dinomap change: mean cosine distance per tile", NULL };
    OGRLayerH l = GDALDatasetCreateLayer(ds, "tiles", srs, wkbPolygon, (char **)lo);
    if (srs)
        OSRDestroySpatialReference(srs);
    int rc = l ? 0 : dm_err_set(err, DM_EIO, "%s: cannot create layer tiles", path);
    static const struct { const char *name; OGRFieldType t; } fd[] = {
        { "change", OFTReal }, { "rank", OFTInteger }, { "valid_patches", OFTInteger },
        { "col0", OFTInteger }, { "row0", OFTInteger }, { "cols", OFTInteger },
        { "rows", OFTInteger } };
    for (size_t i = 0; !rc && i < sizeof fd / sizeof fd[0]; i++) {
        OGRFieldDefnH d = OGR_Fld_Create(fd[i].name, fd[i].t);
        if (OGR_L_CreateField(l, d, 1) != OGRERR_NONE)
            rc = dm_err_set(err, DM_EIO, "%s: cannot add field %s", path, fd[i].name);
        OGR_Fld_Destroy(d);
    }
    if (!rc && OGR_L_StartTransaction(l) != OGRERR_NONE)
        rc = dm_err_set(err, DM_EIO, "%s: cannot start a transaction", path);
    for (size_t i = 0; !rc && i < c->n; i++) {
        const ctile *t = &c->t[i];
        OGRFeatureH f = OGR_F_Create(OGR_L_GetLayerDefn(l));
        OGR_F_SetFID(f, (GIntBig)t->id);
        if (t->n) {
            OGR_F_SetFieldDouble(f, 0, t->mean);
            OGR_F_SetFieldInteger(f, 1, t->rank);
        } else {
            OGR_F_SetFieldNull(f, 0);
            OGR_F_SetFieldNull(f, 1);
        }
        int v[5] = { t->n, t->x, t->y, t->w, t->h };
        for (int k = 0; k < 5; k++)
            OGR_F_SetFieldInteger(f, 2 + k, v[k]);
        double X0 = gt[0] + t->x * gt[1], X1 = gt[0] + (t->x + t->w) * gt[1];
        double Y0 = gt[3] + t->y * gt[5], Y1 = gt[3] + (t->y + t->h) * gt[5];
        OGRGeometryH ring = OGR_G_CreateGeometry(wkbLinearRing);
        OGR_G_AddPoint_2D(ring, X0, Y0), OGR_G_AddPoint_2D(ring, X1, Y0);
        OGR_G_AddPoint_2D(ring, X1, Y1), OGR_G_AddPoint_2D(ring, X0, Y1);
        OGR_G_AddPoint_2D(ring, X0, Y0);
        OGRGeometryH poly = OGR_G_CreateGeometry(wkbPolygon);
        OGR_G_AddGeometryDirectly(poly, ring);
        OGR_F_SetGeometryDirectly(f, poly);
        if (OGR_L_CreateFeature(l, f) != OGRERR_NONE)
            rc = dm_err_set(err, DM_EIO, "%s: cannot write tile %lld", path, t->id);
        OGR_F_Destroy(f);
    }
    if (!rc && OGR_L_CommitTransaction(l) != OGRERR_NONE)
        rc = dm_err_set(err, DM_EIO, "%s: cannot commit the tiles", path);
    GDALClose(ds);
    return rc;
}

int dm_gis_change_tiles(const char *change_tif, const char *tiles_gpkg, int side,
                        const char *out_path, dm_err *err)
{
    GDALDatasetH r = GDALOpenEx(change_tif, GDAL_OF_RASTER | GDAL_OF_READONLY, NULL, NULL, NULL);
    if (!r)
        return dm_err_set(err, DM_EIO, "%s: cannot open", change_tif);
    int W = GDALGetRasterXSize(r), H = GDALGetRasterYSize(r), rc = 0;
    double gt[6];
    GDALGetGeoTransform(r, gt);
    ctiles c = { 0 };
    if (tiles_gpkg) {
        rc = from_index(tiles_gpkg, gt, W, H, &c, err);
    } else {
        long long id = 1;
        for (int y = 0; !rc && y < H; y += side)
            for (int x = 0; !rc && x < W; x += side)
                rc = add(&c, id++, x, y, W - x < side ? W - x : side,
                         H - y < side ? H - y : side, err);
    }
    GDALRasterBandH b = GDALGetRasterBand(r, 1);
    float *buf = NULL;
    size_t cap = 0;
    for (size_t i = 0; !rc && i < c.n; i++) {
        ctile *t = &c.t[i];
        size_t n = (size_t)t->w * t->h;
        if (n > cap) {
            free(buf);
            cap = n;
            if (!(buf = malloc(n * sizeof *buf)))
                rc = dm_err_oom(err);
        }
        if (!rc && GDALRasterIO(b, GF_Read, t->x, t->y, t->w, t->h, buf, t->w, t->h,
                                GDT_Float32, 0, 0) != CE_None)
            rc = dm_err_set(err, DM_EIO, "%s: cannot read", change_tif);
        double s = 0;
        for (size_t k = 0; !rc && k < n; k++)
            if (!isnan(buf[k]))
                s += buf[k], t->n++;
        if (t->n)
            t->mean = s / t->n;
    }
    free(buf);
    ctile **ord = rc ? NULL : malloc((c.n ? c.n : 1) * sizeof *ord);
    if (!rc && !ord)
        rc = dm_err_oom(err);
    size_t nv = 0;
    for (size_t i = 0; !rc && i < c.n; i++)
        if (c.t[i].n)
            ord[nv++] = &c.t[i];
    if (!rc) {
        qsort(ord, nv, sizeof *ord, by_mean);
        for (size_t i = 0; i < nv; i++)
            ord[i]->rank = (int)i + 1;
    }
    free(ord);
    if (!rc) {
        unlink(out_path);
        rc = write_gpkg(out_path, &c, gt, GDALGetProjectionRef(r), err);
        if (rc)
            unlink(out_path);
    }
    GDALClose(r);
    free(c.t);
    return rc;
}

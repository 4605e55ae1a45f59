#!/bin/sh
# `make bench`, part 3: what a client pays to read a many-band output. Bands 1-3 of a
# features.tif (1024 bands for ViT-L), whole and at 1/4 size (what a zoomed-out QGIS redraw
# asks for), as dinomap writes it (band-interleaved COG) and as a pixel-interleaved copy.
set -eu
F=${1:-build/bench/features/features.tif}
[ -f "$F" ] || { echo "bench_read: no $F (run bench_features first)"; exit 1; }
P=build/bench/features_pixel.tif
gdal_translate -q -co TILED=YES -co COMPRESS=DEFLATE -co PREDICTOR=3 -co INTERLEAVE=PIXEL \
    -co COPY_SRC_OVERVIEWS=YES "$F" "$P"
/usr/bin/python3 - "$F" "$P" <<'PY'
import os, sys, time
from osgeo import gdal
gdal.UseExceptions()
gdal.SetCacheMax(64 << 20)
def timed(path, div):
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        d = gdal.Open(path)
        w, h = d.RasterXSize, d.RasterYSize
        d.ReadRaster(0, 0, w, h, max(1, w // div), max(1, h // div), band_list=[1, 2, 3])
        d = None
        best = min(best, time.perf_counter() - t)
    return best
f, p = sys.argv[1], sys.argv[2]
d = gdal.Open(f)
print("read bands 1-3 of a %d×%d px, %d-band features raster (best of 3):"
      % (d.RasterXSize, d.RasterYSize, d.RasterCount))
for name, path in (("band-interleaved (dinomap)", f), ("pixel-interleaved copy", p)):
    print("  %-27s %7.1f MB  whole %.3f s  1/4 size %.3f s"
          % (name, os.path.getsize(path) / 1e6, timed(path, 1), timed(path, 4)))
PY
rm -f "$P"

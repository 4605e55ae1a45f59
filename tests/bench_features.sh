#!/bin/sh
# `make bench`, part 2: dinomap features end to end (the run engine: chunks, index, finalize)
# vs the model alone on the same tiles.
# A 1536×1536 px mosaic (the sample scene, resampled) in 512-px tiles with the default 64-px halo
# (9 tiles), the random full-size ViT-L/16 of bench_vit. I/O overhead = 1 - model time / total.
set -eu
W=build/bench/vitl16_random.safetensors
[ -f "$W" ] || { echo "bench_features: run bench_vit first (it makes $W)"; exit 1; }
gdal_translate -q -outsize 1536 1536 -b 3 -b 2 -b 1 samples/L7_ETMs.tif build/bench/mosaic.tif
rm -rf build/bench/features
./dinomap features -q --progress none --threads "${1:-2}" -m "$W" build/bench/mosaic.tif \
    -o build/bench/features
/usr/bin/python3 - <<'PY'
import json
r = json.load(open("build/bench/features/run.json"))
t = r["timings"]; n = r["tiles"]["done"]
print("features end to end: %d tiles in %.1f s: %.3f tiles/s (%.1f km2/h at this GSD)"
      % (n, t["seconds_total"], t["tiles_per_s"], t["km2_per_h"]))
print("model only:          %.1f s: %.3f tiles/s" % (t["seconds_model"], n / t["seconds_model"]))
print("I/O and the rest:    %.1f%% of the run (target <= 10%%)"
      % (100 * (1 - t["seconds_model"] / t["seconds_total"])))
print("end to end / model:  %.3f of the model-only tiles/s (target >= 0.9)"
      % (t["tiles_per_s"] / (n / t["seconds_model"])))
PY

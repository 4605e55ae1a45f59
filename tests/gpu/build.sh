#!/usr/bin/env bash
# tests/gpu/build.sh BUILD — builds what the GPU check runs, from the repository root, on a machine
# with nvcc and a C compiler but without dinomap's other dependencies (GDAL, OpenBLAS, oneDNN,
# perhaps libcjson): BUILD/libdinomap_cuda.so through the Makefile's rule, and BUILD/gpu_check
# from models/, src/base/, the CHMv2 head and the pipeline (the CPU backend and operators left
# out: tests/gpu/ops_absent.c), with the bundled minimal cJSON
# when <cjson/cJSON.h> is not installed. MINI_CJSON=1 forces it.
set -eu
B=${1:-build-gpu}
mkdir -p "$B"
JOBS=$(nproc 2>/dev/null || echo 4)
make --no-print-directory -j"$JOBS" BUILD="$B" "$B/libdinomap_cuda.so"
CC=${CC:-cc}
SRC="models/backend.c models/model.c models/pth.c models/safetensors.c models/vit_config.c
     models/vit_math.c models/weights.c src/base/err.c src/base/log.c src/base/npy.c
     src/base/fs.c src/base/pool.c heads/chmv2.c heads/chmv2_dev.c tiling/pipeline.c
     tests/gpu/ops_absent.c tests/gpu/gpu_chm.c tests/gpu/gpu_check.c"
INC="" LIBS=""
if [ "${MINI_CJSON:-0}" != 1 ] && echo '#include <cjson/cJSON.h>' | "$CC" -E -x c - >/dev/null 2>&1 &&
   echo 'int main(void){return 0;}' | "$CC" -x c - -lcjson -o "$B/.cjson_probe" 2>/dev/null; then
    LIBS="-lcjson"
    echo "gpu_check: with the system's libcjson"
else
    INC="-Itests/gpu/cjson"
    SRC="$SRC tests/gpu/cjson/cJSON_mini.c"
    echo "gpu_check: with the bundled minimal cJSON (tests/gpu/cjson)"
fi
rm -f "$B/.cjson_probe"
# shellcheck disable=SC2086
"$CC" -std=c11 -O2 -g -fopenmp-simd -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Wall -Wextra \
    -Werror -Wno-format-truncation $INC $SRC -o "$B/gpu_check" -pthread -ldl -lm $LIBS
echo "built $B/libdinomap_cuda.so and $B/gpu_check"

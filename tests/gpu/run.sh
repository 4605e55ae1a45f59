#!/usr/bin/env bash
# tests/gpu/run.sh [OUTDIR] — the GPU check, in one go, from the repository root, on a machine with
# an NVIDIA GPU, nvcc, a C compiler and python3 with PyTorch + transformers (no package registry,
# GDAL or OpenBLAS needed). Under 8 minutes. Full logs go to OUTDIR (default $OUT, else
# ./gpu-out); a short table is printed last (also OUTDIR/summary.tsv).
#   1. builds the CUDA plugin and the driver (tests/gpu/build.sh);
#   2. parity: every golden case on the GPU, bf16 (<= 2e-2) and fp32 (<= 1e-4): the backbone
#      cases' every output (bf16 with the fused attention kernel and again with the two-product
#      reference, DINOMAP_CUDA_ATTENTION=gemm), the CHMv2 cases' logits and heights with the head
#      on the GPU; a full-size random ViT-L/16 at 512 px against PyTorch + transformers, fused
#      and two-product attention against each other; a full-size random CHMv2 against
#      transformers' CHMv2ForDepthEstimation when that transformers has it (else a TODO row);
#   3. benchmarks: dinomap ViT-L/16 at batches 1, 8, 32 against PyTorch bf16 (SDPA, compiled
#      when it builds in time), CHMv2 backbone + head tiles/s, the engine's pipeline with a
#      synthetic reader and writer against the model alone, ViT-7B/16 tiles/s and peak memory.
# SKIP_7B=1 leaves the 7B benchmark out. BUDGET=seconds (default 450) for the whole check.
set -u
cd "$(dirname "$0")/../.." || exit 2
OUTDIR=${1:-${OUT:-./gpu-out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
B=${BUILD_GPU:-build-gpu}
START=$(date +%s)
DEADLINE=$((START + ${BUDGET:-450}))
SUM=$OUTDIR/summary.tsv
: > "$SUM"
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SUM"; }

{
    echo "== $(date -u +%FT%TZ) dinomap GPU check, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi -L 2>&1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -2
    /usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -1
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1
} > "$OUTDIR/env.log" 2>&1
cat "$OUTDIR/env.log"

echo "== build"
t=$(date +%s)
if timeout 300 bash tests/gpu/build.sh "$B" > "$OUTDIR/build.log" 2>&1; then
    row "build (nvcc plugin + driver)" "$(( $(date +%s) - t )) s" "" "PASS"
else
    tail -30 "$OUTDIR/build.log"
    row "build (nvcc plugin + driver)" "failed, see build.log" "" "FAIL"
fi

if [ -x "$B/gpu_check" ] && [ -f "$B/libdinomap_cuda.so" ]; then
    export DINOMAP_CUDA_LIB=$PWD/$B/libdinomap_cuda.so
    echo "== golden cases on the GPU"
    for dir in tests/data/golden/*/; do
        case=$(basename "$dir")
        # CHMv2 cases: backbone and head on the GPU (gpu_check reads the kind from case.json)
        variants="bf16 fp32"
        grep -q '"kind": *"backbone"' "$dir/case.json" 2>/dev/null && variants="bf16 bf16-gemm fp32"
        for v in $variants; do
            prec=${v%-gemm}
            att=$([ "$v" = bf16-gemm ] && echo gemm || echo "")
            label="golden $case $prec${att:+ (two-product attention)}"
            line=$(DINOMAP_CUDA_ATTENTION=$att timeout 120 "$B/gpu_check" golden "$PWD/${dir%/}" "$prec" 2>>"$OUTDIR/golden.log" | tee -a "$OUTDIR/golden.log" | grep '^golden' | tail -1)
            [ -n "$line" ] || line="golden $case $prec worst=? (crashed or timed out) FAIL"
            echo "$line${att:+ [two-product attention]}"
            worst=$(echo "$line" | sed -n 's/.*worst=\([^ ]*\) (\([^;)]*\).*/\1 (\2)/p')
            tol=$([ "$prec" = bf16 ] && echo "<= 2e-2" || echo "<= 1e-4")
            row "$label" "${worst:-?}" "$tol" "$(echo "$line" | awk '{print $NF}')"
        done
    done
    echo "== PyTorch parity and benchmarks"
    python3 tests/gpu/torch_check.py --out "$OUTDIR" --bin "$B/gpu_check" --deadline "$DEADLINE" \
        ${SKIP_7B:+--skip-7b} 2>&1 | tee "$OUTDIR/torch_check.log" | grep -E '^(==|\$|torch |random|bench|forward)' || true
    grep -q 'ViT-L/16 512px batch' "$SUM" || row "PyTorch part" "did not finish, see torch_check.log" "" "FAIL"
    rm -rf "$OUTDIR/work"
fi

echo
echo "== summary ($(( $(date +%s) - START )) s; logs in $OUTDIR)"
awk -F'\t' '{ printf "%-46s %-8s %s  [%s]\n", $1, $4, $2, $3 }' "$SUM"
! grep -q $'\tFAIL$' "$SUM"

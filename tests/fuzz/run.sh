#!/bin/sh
# tests/fuzz/run.sh BUILD SECONDS TARGET... — runs each fuzz target in turn (one process, one job)
# for SECONDS on its corpus (BUILD/corpus/<target>, grown from tests/fuzz/seeds/<target>), then
# prints per target: executions, execs/s, coverage (libFuzzer's cov and ft), corpus size and
# whether it crashed, leaked or hung (inputs saved in BUILD/crashes/<target>/). Exit status 1 when
# any target failed. FUZZ_TIMEOUT (s per input, default 10) and FUZZ_RSS_MB (default 2048).
B=$1
S=$2
shift 2
TO=${FUZZ_TIMEOUT:-10}
RSS=${FUZZ_RSS_MB:-2048}
fail=0
table=""
for t in "$@"; do
    corpus=$B/corpus/$t
    art=$B/crashes/$t
    log=$B/fuzz_$t.log
    mkdir -p "$corpus" "$art"
    set --
    [ -f tests/fuzz/$t.dict ] && set -- "$@" -dict=tests/fuzz/$t.dict
    # the INI reader reports on stderr (src/say.c): libFuzzer keeps its own and the sanitizers'
    [ "$t" = ini ] && set -- "$@" -close_fd_mask=2
    echo "== fuzz $t: $S s (log $log)"
    before=$(ls "$art" | wc -l)
    # the target's files (tests/fuzz/fuzz.h): removed here too, as a crash skips its own cleanup
    tmp=$(mktemp -d "${TMPDIR:-$( [ -w /dev/shm ] && echo /dev/shm || echo /tmp)}/dm-fuzz-run.XXXXXX")
    TMPDIR=$tmp ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$B/fuzz_$t" -max_total_time="$S" -timeout="$TO" -rss_limit_mb="$RSS" -detect_leaks=1 \
        -print_final_stats=1 -artifact_prefix="$art/" "$@" "$corpus" "tests/fuzz/seeds/$t" \
        >"$log" 2>&1
    rc=$?
    rm -rf "$tmp"
    last=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    new=$(( $(ls "$art" | wc -l) - before ))
    if [ $rc = 0 ] && [ $new = 0 ]; then
        res="ok"
    else
        res="FAILED (rc $rc; $new new in $art)"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -3
        fail=1
    fi
    table="$table$(printf '%-18s %8s %10s %8s %6s %6s %12s  %s' "$t" "$S" "${runs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$res")
"
done
printf '%-18s %8s %10s %8s %6s %6s %12s  %s\n' target seconds execs execs/s cov ft corpus result
printf '%s' "$table"
exit $fail

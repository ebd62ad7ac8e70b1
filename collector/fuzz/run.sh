#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the other, each in a
# single libFuzzer process (no -jobs/-workers: one job, in process), and appends one line per
# target to RUNS.md. Not part of CI or tests/run.sh: fuzzing is run by hand, for a bounded time.
#
#   collector/fuzz/run.sh SECONDS [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). On a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# use the nightly-only sanitizer flags. The build goes to $CARGO_TARGET_DIR (default
# /root/.cache/meshtrace/fuzz-target). The working corpus is corpus/<target>/ (git-ignored,
# rebuilt from tests/fixtures and seeds/ by seed.sh, grown by each run); crashes are written to
# artifacts/<target>/ and reported here. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir collector/fuzz TARGET artifacts/TARGET/crash-...
# and minimize it with `cargo fuzz tmin` (same arguments).
set -uo pipefail

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift

here=$(cd "$(dirname "$0")" && pwd)
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/root/.cache/meshtrace/fuzz-target}
fuzz=(cargo fuzz)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$here")
fi

"$here/seed.sh" || exit 1
"${fuzz[@]}" build --fuzz-dir "$here" 2>&1 | tail -n 3
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "build failed" >&2
    exit 1
fi

logs=$here/target-logs
mkdir -p "$logs"
status=0
for t in "${targets[@]}"; do
    mkdir -p "$here/artifacts/$t"
    before=$(find "$here/artifacts/$t" -type f | wc -l)
    dict=()
    if [ -f "$here/dicts/$t.dict" ]; then
        dict=("-dict=$here/dicts/$t.dict")
    fi
    extra=()
    case $t in
    # The log's writer thread ends after close() returns: without this, every input looks
    # like a leak candidate and pays a full leak scan (see fuzz_targets/wal_recover.rs).
    wal_recover) extra=(-detect_leaks=0) ;;
    esac
    log=$logs/$t.log
    marker=$(mktemp)
    echo "== $t: ${seconds}s"
    "${fuzz[@]}" run --fuzz-dir "$here" "$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 \
        -print_final_stats=1 "${dict[@]}" "${extra[@]}" >"$log" 2>&1
    code=$?
    after=$(find "$here/artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    execs=${execs:-?}
    per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corpus_files=$(find "$here/corpus/$t" -type f | wc -l)
    echo "   exit $code, ${execs} execs (${per_sec:-?}/s), ${crashes} crash(es), corpus ${corpus_files} files, log $log"
    if [ "$crashes" -gt 0 ] || [ "$code" -ne 0 ]; then
        status=1
        grep -m 3 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY' "$log" | sed 's/^/   /'
        find "$here/artifacts/$t" -type f -newer "$marker" | sed 's/^/   artifact: /'
    fi
    rm -f "$marker"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$t" \
        "$seconds" "$execs" "${per_sec:-?}" "$crashes" "$corpus_files" >>"$here/RUNS.md"
done
exit $status

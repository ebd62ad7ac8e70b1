#!/usr/bin/env bash
# Builds the working corpus of every fuzz target, corpus/<target>/ (git-ignored), from
# tests/fixtures and the tracked seeds/ (hand-written edge cases and crash regressions).
# Idempotent: run.sh calls it before each run; what the fuzzer added to corpus/ is kept.
#
#   otlp_json    tests/fixtures/{otlp,istio,jaeger-storage-suite/traces}/*.json
#   zipkin       tests/fixtures/zipkin/*.json
#   jaeger_json  tests/fixtures/critical-path/*.json
#   nezha        the header and first 40 rows of tests/fixtures/nezha/*.csv
#   otlp_wire    the OTLP/JSON fixtures above encoded as protobuf (seed.py)
#   wal, wal_recover  log segments of postcard and OTLP records made from those fixtures
#                (seed.py)
#
# Fixtures over 64 KiB are left out: they slow every mutation and add no format feature the
# small ones lack.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fixtures=$(cd "$here/../../tests/fixtures" && pwd)
corpus=${CORPUS_DIR:-$here/corpus}
max_bytes=65536

copy() {
    local target=$1
    shift
    mkdir -p "$corpus/$target"
    local f
    for f in "$@"; do
        if [ "$(stat -c %s "$f")" -le "$max_bytes" ]; then
            cp "$f" "$corpus/$target/$(basename "$(dirname "$f")")-$(basename "$f")"
        fi
    done
}

copy otlp_json "$fixtures"/otlp/*.json "$fixtures"/istio/*.json \
    "$fixtures"/jaeger-storage-suite/traces/*.json
copy zipkin "$fixtures"/zipkin/*.json
copy jaeger_json "$fixtures"/critical-path/*.json

mkdir -p "$corpus/nezha"
for f in "$fixtures"/nezha/*.csv; do
    head -n 41 "$f" >"$corpus/nezha/$(basename "$f")"
done

python3 "$here/seed.py" "$fixtures" "$corpus"

for d in "$here"/seeds/*/; do
    target=$(basename "$d")
    mkdir -p "$corpus/$target"
    cp "$d"* "$corpus/$target/"
done

for d in "$corpus"/*/; do
    printf '%-12s %4d files %8d bytes\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)" \
        "$(find "$d" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
done

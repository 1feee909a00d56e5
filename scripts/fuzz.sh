#!/usr/bin/env bash
# Runs fusebox's fuzz targets with AFL++ on stable Rust (docs/ARCHITECTURE.md §12).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-afl when missing (crates.io) and builds AFL++ with it, builds the targets in
# fuzz/, then fuzzes each target for SECONDS_PER_TARGET (default 60), one after the other,
# starting from fuzz/corpus/<target>/. Findings land in target/fuzz/<target>/default/crashes;
# copy each into fuzz/corpus/<target>/ once fixed, so `cargo test` replays it for ever.
# Exits 1 when any target found a crash or a hang.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(policy request_target retry_after address response response_framing exchange)
fi

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
# Builds AFL++ once per toolchain; "already built" is not an error.
cargo afl config --build >/dev/null 2>&1 || true

cd "$root/fuzz"
cargo afl build --release --locked

# A test run, not a fuzzing farm: no CPU governor or core-dump tuning, and no CMPLOG pass
# (its second forkserver times out on the first seed in containers like this one).
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1

found=0
for target in "${targets[@]}"; do
    out="$root/target/fuzz/$target"
    mkdir -p "$out"
    # An earlier run's queue is resumed ("-i -") so that hours add up across runs.
    input="$root/fuzz/corpus/$target"
    if [ -d "$out/default/queue" ]; then
        input="-"
    fi
    echo "fuzz: $target for ${seconds}s"
    cargo afl fuzz -c - -t 10000 -i "$input" -o "$out" -V "$seconds" \
        "$root/fuzz/target/release/$target" >"$out/log" 2>&1 || {
        echo "fuzz: $target: afl-fuzz failed, see $out/log"
        tail -20 "$out/log"
        exit 2
    }
    stats="$out/default/fuzzer_stats"
    execs=$(awk -F': *' '$1 ~ /^execs_done/ {print $2}' "$stats")
    crashes=$(awk -F': *' '$1 ~ /^saved_crashes/ {print $2}' "$stats")
    hangs=$(awk -F': *' '$1 ~ /^saved_hangs/ {print $2}' "$stats")
    paths=$(awk -F': *' '$1 ~ /^corpus_count/ {print $2}' "$stats")
    echo "fuzz: $target: $execs executions, $paths queue entries, $crashes crashes, $hangs hangs"
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        found=1
        ls "$out/default/crashes" "$out/default/hangs" 2>/dev/null || true
    fi
done
exit "$found"

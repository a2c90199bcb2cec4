#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 60), one
# libFuzzer process at a time, from the committed seed corpus. New inputs go
# to a scratch corpus, so the committed seeds stay as they are. Exits non-zero
# on the first crash (the input is left in fuzz/artifacts/<target>/).
#
# Needs cargo-fuzz; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks the
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
for t in $targets; do
    cargo fuzz build "$t"
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    mkdir -p "$scratch/$t"
    echo "== $t: ${secs}s"
    log="$scratch/$t.log"
    # The vhost-user stream target keeps a daemon with live threads across
    # inputs and at exit, which LeakSanitizer reports as leaks (per input
    # and in its exit check); the target checks the daemon's fds and
    # threads itself.
    extra=()
    asan="${ASAN_OPTIONS:-}"
    if [ "$t" = vhost_user_stream ]; then
        extra=(-detect_leaks=0)
        asan="detect_leaks=0${asan:+:$asan}"
    fi
    if ! ASAN_OPTIONS="$asan" cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "$t: failed, the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|INITED' "$log" || true
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
done

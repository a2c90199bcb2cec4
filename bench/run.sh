#!/usr/bin/env bash
# The benchmark suite of BENCHMARKS.md, in one run, with its baselines
# measured in the same run; prints a markdown table (and keeps it in
# $SUITE_OUT, default /tmp/vscsi-bench-suite-DATE.md).
#
# Usage: bench/run.sh [IMAGE] [RUNS] [SECONDS]
#   IMAGE   a raw image, default a 1 GiB file of random data in /tmp, warmed
#           into the page cache (cat to /dev/null) before every run
#   RUNS    repetitions of every case (min and median), default 5; the
#           cases alternate within each repetition, so drift on a shared
#           machine spreads over all of them
#   SECONDS per run, default 4
#
# The suite (every case 4k randread through `vscsi bench`, zero-copy API):
#   modes  interrupt (no polling either side), hybrid (adaptive polling
#          both sides), fixed poll (50 us both sides), daemon poll only
#          (daemon 50 us, driver sleeps), at QD1, QD32, QD128 on 1 and 2
#          request queues. A mode this build's `vscsi bench` has no flags
#          for is reported as not measured.
#   writes 4k randwrite QD32 1 queue into the page cache in each mode,
#          against the host's own pwrite rate on the same file (fio, psync,
#          one thread: what one inline queue worker can at best do).
#   floor  the C floor model (../shared/floor/minivhost.c, or $FLOOR_SRC),
#          built with gcc into a temporary folder, in the same modes and
#          depths (one ring; daemon-poll-only has no model counterpart).
#   other  with VHOST_DEVICE_SCSI=/path/to/vhost-device-scsi: that daemon
#          against the same driver, QD32, 1 queue of 128 descriptors (its
#          limits), beside ours with the same queue, each in its best mode.
#
# Environment:
#   DAEMON_CPUS=LIST  pin the daemon's request-queue workers (--cpus)
#   BENCH_CPUS=LIST   run the bench (the driver) under taskset -c LIST
#   SUITE=0           skip the suite (for the blocks below alone)
#   COLD=1            with VHOST_DEVICE_SCSI: also a comparison with the page
#                     cache dropped before each run (root): ours cache=none
#   NBD=1             add the image served through qemu-nbd (an NBD LUN)
#                     beside it served directly; NBD_ONLY=1 runs just that
set -euo pipefail
cd "$(dirname "$0")/.."
img=${1:-/tmp/vscsi-bench-1g.img}
runs=${2:-5}
secs=${3:-4}
[ -f "$img" ] || dd if=/dev/urandom of="$img" bs=1M count=1024 status=none
cargo build --release -q -p vscsi -p vscsi-backend
B=target/release
tmp=$(mktemp -d /tmp/vscsi-suite-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

warm() { cat "$img" >/dev/null; }

bench_cmd=("$B/vscsi" bench)
[ -n "${BENCH_CPUS:-}" ] && bench_cmd=(taskset -c "$BENCH_CPUS" "${bench_cmd[@]}")
pin_args=()
[ -n "${DAEMON_CPUS:-}" ] && pin_args=(--daemon-cpus "$DAEMON_CPUS")

stats() { # reads "iops p50 mib_s" lines; prints min/median of each
    python3 -c '
import sys, statistics as s
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
iops = sorted(r[0] for r in rows); p50 = sorted(r[1] for r in rows); mb = sorted(r[2] for r in rows)
print(f"IOPS min {iops[0]:.0f} median {s.median(iops):.0f} | MiB/s min {mb[0]:.0f} median {s.median(mb):.0f} | p50 us min {p50[0]:.1f} median {s.median(p50):.1f}")'
}
one() { # bench args...; prints "iops p50 mib_s"
    # The image back in the page cache first: builds or fio elsewhere on
    # the machine evict it, and a run from the disk measures the disk.
    warm
    "${bench_cmd[@]}" --no-progress --json --runtime "$secs" "$@" 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["iops"], d["lat_us"]["p50"], d["mib_s"])'
}

# ---------------------------------------------------------------- the suite
results=$tmp/results.jsonl
: >"$results"

# Which polling flags this build has: `--poll adaptive|off` (driver) and
# `--daemon-poll adaptive|off` come with adaptive polling; before them
# polling is off unless `--poll-us` / `--daemon-poll-us` give a fixed spin.
help=$("$B/vscsi" bench --help)
adaptive=
if grep -qE -- '--poll[ =<]' <<<"$help" && grep -qE -- '--daemon-poll[ =<]' <<<"$help"; then
    adaptive=1
fi

# The one table of modes: name, then the flags of `vscsi bench` for it
# ("-" when this build cannot run it); mode_args prints them.
MODES=(interrupt hybrid poll50 dpoll)
mode_title() {
    case $1 in
        interrupt) echo "interrupt (off/off)" ;;
        hybrid) echo "hybrid (adaptive both sides)" ;;
        poll50) echo "fixed poll 50 us both sides" ;;
        dpoll) echo "daemon poll 50 us only" ;;
    esac
}
mode_args() {
    case $1 in
        interrupt) if [ -n "$adaptive" ]; then echo "--poll off --daemon-poll off"; else echo ""; fi ;;
        hybrid) if [ -n "$adaptive" ]; then echo "--poll adaptive --daemon-poll adaptive"; else echo "-"; fi ;;
        poll50) echo "--poll-us 50 --daemon-poll-us 50" ;;
        dpoll) if [ -n "$adaptive" ]; then echo "--poll off --daemon-poll-us 50"; else echo "--daemon-poll-us 50"; fi ;;
    esac
}
# The floor model's mode for ours ("-": none): minivhost's hybrid spins
# 20 us by default before it sleeps; with 50 it is a fixed 50 us poll.
model_mode() {
    case $1 in
        interrupt) echo "irq" ;;
        hybrid) echo "hybrid" ;;
        poll50) echo "hybrid 50" ;;
        dpoll) echo "-" ;;
    esac
}

record() { # group mode rep label... -- bench args...; appends one JSON line
    local group=$1 mode=$2 rep=$3; shift 3
    warm
    local out
    if out=$("${bench_cmd[@]}" --no-progress --json --runtime "$secs" "$@" 2>"$tmp/stderr"); then
        python3 -c '
import json, sys
d = json.loads(sys.argv[4]); t = d["tail"]
print(json.dumps({"group": sys.argv[1], "mode": sys.argv[2], "rep": int(sys.argv[3]),
  "rw": d["rw"], "qd": d["iodepth"], "queues": d["queues"], "iops": d["iops"],
  "p50": t["p50"], "p99": t["p99"], "p9999": t["p99.99"], "max": t["max"],
  "over": t["over_warn_latency"]}))' "$group" "$mode" "$rep" "$out" >>"$results"
    else
        echo "  $group $mode: vscsi bench failed: $(tail -3 "$tmp/stderr" | tr '\n' ' ')" >&2
    fi
}

floor_src=${FLOOR_SRC:-../shared/floor/minivhost.c}
floor=
if [ "${SUITE:-1}" != 0 ] && [ -z "${NBD_ONLY:-}" ]; then
    if [ -f "$floor_src" ] && command -v gcc >/dev/null; then
        gcc -O2 -o "$tmp/minivhost" "$floor_src" && floor=$tmp/minivhost
    else
        echo "floor model: $floor_src or gcc missing; no model figures" >&2
    fi
fi
declare -A floor_total
floor_run() { # mode qd rep; appends one JSON line
    local mode=$1 qd=$2 rep=$3 m spin
    read -r m spin <<<"$(model_mode "$mode")"
    local key="$mode/$qd"
    if [ -z "${floor_total[$key]:-}" ]; then
        # Calibrate: a short run tells how many I/Os fill $secs.
        warm
        local cal
        cal=$("$floor" "$img" "$m" "$qd" 5000 -1 -1 ${spin:+"$spin"} | sed -n 's/.*: \([0-9]*\) IOPS.*/\1/p')
        floor_total[$key]=$(( ${cal:-10000} * secs > 5000 ? ${cal:-10000} * secs : 5000 ))
    fi
    warm
    "$floor" "$img" "$m" "$qd" "${floor_total[$key]}" -1 -1 ${spin:+"$spin"} |
        sed -n 's/.*: \([0-9]*\) IOPS, \([0-9.]*\) us\/IO.*/\1 \2/p' |
        while read -r iops usio; do
            printf '{"group":"floor","mode":"%s","rep":%d,"qd":%d,"iops":%s,"us_per_io":%s}\n' \
                "$mode" "$rep" "$qd" "$iops" "$usio"
        done >>"$results"
}

host_pwrite() { # rep; the host's own 4k random pwrite rate on the image, one thread
    local rep=$1 size
    size=$(stat -c %s "$img")
    warm
    # invalidate=0: fio would otherwise drop the file's page cache first.
    fio --name=host-pwrite --filename="$img" --size="$size" --rw=randwrite --bs=4k \
        --ioengine=psync --numjobs=1 --invalidate=0 --time_based --runtime="$secs" \
        --output-format=json 2>/dev/null |
        python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]["write"]
print(json.dumps({"group": "host", "mode": "pwrite", "rep": int(sys.argv[1]), "qd": 1,
  "iops": j["iops"], "p50": j["clat_ns"]["percentile"]["50.000000"] / 1000}))' "$rep" >>"$results"
}

vds_run() { # rep mode; vhost-device-scsi on the image, driver in `mode`
    local rep=$1 mode=$2 args sock pid
    args=$(mode_args "$mode")
    [ "$args" = "-" ] && return
    # Driver-side flags only: vhost-device-scsi has no polling of its own.
    args=$(sed -E 's/--daemon-poll(-us)? [^ ]+//g' <<<"$args")
    sock=$tmp/vds.sock
    rm -f "$sock"
    "$VHOST_DEVICE_SCSI" --socket-path "$sock" "$img" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
    # shellcheck disable=SC2086
    record vds "$mode" "$rep" --socket "$sock" --daemon-pid "$pid" \
        --rw randread --bs 4k --iodepth 32 --queues 1 --queue-size 128 $args
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$sock"
}

if [ "${SUITE:-1}" != 0 ] && [ -z "${NBD_ONLY:-}" ]; then
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    started=$(date -u +%Y-%m-%dT%H:%MZ)
    for rep in $(seq "$runs"); do
        echo "repetition $rep of $runs" >&2
        for qd in 1 32 128; do
            for queues in 1 2; do
                for mode in "${MODES[@]}"; do
                    args=$(mode_args "$mode")
                    [ "$args" = "-" ] && continue
                    # shellcheck disable=SC2086
                    record randread "$mode" "$rep" --image "$img" --backend "$B/vscsi-backend" \
                        "${pin_args[@]}" --rw randread --bs 4k --iodepth "$qd" --queues "$queues" $args
                done
            done
            if [ -n "$floor" ]; then
                for mode in "${MODES[@]}"; do
                    [ "$(model_mode "$mode")" = "-" ] && continue
                    floor_run "$mode" "$qd" "$rep"
                done
            fi
        done
        for mode in "${MODES[@]}"; do
            args=$(mode_args "$mode")
            [ "$args" = "-" ] && continue
            # shellcheck disable=SC2086
            record randwrite "$mode" "$rep" --image "$img" --backend "$B/vscsi-backend" \
                "${pin_args[@]}" --rw randwrite --bs 4k --iodepth 32 --queues 1 $args
        done
        if command -v fio >/dev/null; then host_pwrite "$rep"; fi
        if [ -n "${VHOST_DEVICE_SCSI:-}" ]; then
            for mode in "${MODES[@]}"; do
                args=$(mode_args "$mode")
                [ "$args" = "-" ] && continue
                # shellcheck disable=SC2086
                record ours128 "$mode" "$rep" --image "$img" --backend "$B/vscsi-backend" \
                    "${pin_args[@]}" --rw randread --bs 4k --iodepth 32 --queues 1 --queue-size 128 $args
                case $mode in interrupt | hybrid | poll50) vds_run "$rep" "$mode" ;; esac
            done
        fi
    done
    out=${SUITE_OUT:-/tmp/vscsi-bench-suite-$(date -u +%Y%m%d-%H%M).md}
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD 2>/dev/null || commit="$commit (+ uncommitted changes)"
    python3 bench/report.py "$results" \
        --started "$started" --commit "$commit" --runs "$runs" --secs "$secs" \
        --load "$load_before / $(cut -d' ' -f1-3 /proc/loadavg)" --cpus "$(nproc)" \
        --image "$img" --adaptive "${adaptive:-0}" \
        --pinning "daemon ${DAEMON_CPUS:-unpinned}, bench ${BENCH_CPUS:-unpinned}" \
        ${VHOST_DEVICE_SCSI:+--vds "$VHOST_DEVICE_SCSI"} | tee "$out"
    cp "$results" "${out%.md}.jsonl"
    echo "(table in $out, every run in ${out%.md}.jsonl)" >&2
fi

# ------------------------------------------------- cold comparison (COLD=1)
if [ -n "${VHOST_DEVICE_SCSI:-}" ] && [ -n "${COLD:-}" ] && [ -z "${NBD_ONLY:-}" ]; then
    echo "comparison, page cache dropped before each run, queue size 128, randread 4k qd32:"
    ours=(); theirs=()
    for _ in $(seq "$runs"); do
        sock=$(mktemp -u /tmp/vscsi-XXXXXX.sock)
        "$B/vscsi-backend" --socket "$sock" --lun "0:0=$img,cache=none" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        sync; echo 3 > /proc/sys/vm/drop_caches
        ours+=("$(one --socket "$sock" --daemon-pid "$pid" --rw randread --bs 4k --iodepth 32 --queue-size 128)")
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$sock"
        sock=$(mktemp -u /tmp/vds-XXXXXX.sock)
        "$VHOST_DEVICE_SCSI" --socket-path "$sock" "$img" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        sync; echo 3 > /proc/sys/vm/drop_caches
        theirs+=("$(one --socket "$sock" --daemon-pid "$pid" --rw randread --bs 4k --iodepth 32 --queue-size 128)")
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$sock"
    done
    printf '%-44s ' "  vscsi-backend cache=none (io_uring)"; printf '%s\n' "${ours[@]}" | stats
    printf '%-44s ' "  vhost-device-scsi"; printf '%s\n' "${theirs[@]}" | stats
    paste -d' ' <(printf '%s\n' "${ours[@]}") <(printf '%s\n' "${theirs[@]}") |
        awk '{ printf "  run %d: ratio %.1fx\n", NR, $1 / $4 }'
fi

# ------------------------------------------------------ NBD (NBD=1, NBD_ONLY=1)
if [ -n "${NBD:-}${NBD_ONLY:-}" ]; then
    # The same image served directly and as an NBD export of qemu-nbd on a
    # unix socket (raw, page cache, 4 connections allowed), alternating runs.
    for spec in "randread 4k qd32:--rw randread --bs 4k --iodepth 32" \
                "randread 4k qd1:--rw randread --bs 4k --iodepth 1" \
                "randwrite 4k qd32:--rw randwrite --bs 4k --iodepth 32" \
                "read 128k qd8:--rw read --bs 128k --iodepth 8"; do
        name=${spec%%:*}; read -r -a args <<<"${spec#*:}"
        echo "NBD comparison, $name, alternating runs:"
        direct=(); nbd=()
        for _ in $(seq "$runs"); do
            direct+=("$(one --image "$img" --backend "$B/vscsi-backend" "${args[@]}")")
            nsock=$(mktemp -u /tmp/nbd-XXXXXX.sock); sock=$(mktemp -u /tmp/vscsi-XXXXXX.sock)
            qemu-nbd --format raw --cache writeback --aio threads --shared 4 --persistent \
                --socket "$nsock" "$img" &
            npid=$!
            for _ in $(seq 100); do [ -S "$nsock" ] && break; sleep 0.05; done
            "$B/vscsi-backend" --socket "$sock" --lun "0:0=nbd+unix:///?socket=$nsock" >/dev/null 2>&1 &
            pid=$!
            for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
            nbd+=("$(one --socket "$sock" --daemon-pid "$pid" "${args[@]}")")
            kill "$pid" "$npid" 2>/dev/null || true; wait "$pid" "$npid" 2>/dev/null || true
            rm -f "$sock" "$nsock"
        done
        printf '%-44s ' "  direct (file)"; printf '%s\n' "${direct[@]}" | stats
        printf '%-44s ' "  NBD (qemu-nbd, unix socket)"; printf '%s\n' "${nbd[@]}" | stats
        paste -d' ' <(printf '%s\n' "${nbd[@]}") <(printf '%s\n' "${direct[@]}") |
            awk '{ printf "  run %d: NBD/direct %.2fx\n", NR, $1 / $4 }'
    done
fi

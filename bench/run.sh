#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md: every case 5 times, min/median.
# Usage: bench/run.sh [IMAGE] [RUNS] [SECONDS]
#   IMAGE defaults to a 1 GiB file of random data in /tmp (page cache).
#   Set VHOST_DEVICE_SCSI=/path/to/vhost-device-scsi for the comparison
#   (cargo install vhost-device-scsi --root /tmp/vds; nothing of it is kept here),
#   and COLD=1 as well for a second one with the page cache dropped before
#   each run (root): ours with cache=none (O_DIRECT, io_uring), theirs buffered.
#   NBD=1 adds the same image served through qemu-nbd (an NBD LUN) beside it
#   served directly; NBD_ONLY=1 runs just that comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
img=${1:-/tmp/vscsi-bench-1g.img}
runs=${2:-5}
secs=${3:-4}
[ -f "$img" ] || dd if=/dev/urandom of="$img" bs=1M count=1024 status=none
cargo build --release -q -p vscsi -p vscsi-backend
B=target/release

stats() { # reads "iops p50" lines; prints min/median of both
    python3 -c '
import sys, statistics as s
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
iops = sorted(r[0] for r in rows); p50 = sorted(r[1] for r in rows); mb = sorted(r[2] for r in rows)
print(f"IOPS min {iops[0]:.0f} median {s.median(iops):.0f} | MiB/s min {mb[0]:.0f} median {s.median(mb):.0f} | p50 us min {p50[0]:.1f} median {s.median(p50):.1f}")'
}
one() { # bench args...; prints "iops p50 mib_s"
    # The image back in the page cache first: builds or fio elsewhere on
    # the machine evict it, and a run from the disk measures the disk.
    cat "$img" >/dev/null
    "$B/vscsi" bench --no-progress --json --runtime "$secs" "$@" 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["iops"], d["lat_us"]["p50"], d["mib_s"])'
}
case_() { # name, bench args...
    local name=$1; shift
    printf '%-44s ' "$name"
    for _ in $(seq "$runs"); do one --image "$img" --backend "$B/vscsi-backend" "$@"; done | stats
}

if [ -z "${NBD_ONLY:-}" ]; then
case_ "randread 4k qd32 1 queue"            --rw randread --bs 4k --iodepth 32 --queues 1
case_ "randread 4k qd32 1 queue, daemon poll" --rw randread --bs 4k --iodepth 32 --queues 1 --daemon-poll-us 50
case_ "randread 4k qd128 2 queues"          --rw randread --bs 4k --iodepth 128 --queues 2
case_ "randread 4k qd128 2 queues, daemon poll" --rw randread --bs 4k --iodepth 128 --queues 2 --daemon-poll-us 50
case_ "randread 4k qd1"                     --rw randread --bs 4k --iodepth 1
case_ "randread 4k qd1, poll both sides"    --rw randread --bs 4k --iodepth 1 --poll-us 50 --daemon-poll-us 50
case_ "read 128k qd8 (sequential)"          --rw read --bs 128k --iodepth 8
case_ "read 128k qd16 2 queues (sequential)" --rw read --bs 128k --iodepth 16 --queues 2
case_ "randread 4k qd1, daemon poll only"    --rw randread --bs 4k --iodepth 1 --daemon-poll-us 50
case_ "randwrite 4k qd32 1 queue"           --rw randwrite --bs 4k --iodepth 32
fi

if [ -n "${VHOST_DEVICE_SCSI:-}" ]; then
    echo "comparison, queue size 128, randread 4k qd32, alternating runs:"
    ours=(); theirs=()
    for _ in $(seq "$runs"); do
        ours+=("$(one --image "$img" --backend "$B/vscsi-backend" --rw randread --bs 4k --iodepth 32 --queue-size 128)")
        sock=$(mktemp -u /tmp/vds-XXXXXX.sock)
        "$VHOST_DEVICE_SCSI" --socket-path "$sock" "$img" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        theirs+=("$(one --socket "$sock" --daemon-pid "$pid" --rw randread --bs 4k --iodepth 32 --queue-size 128)")
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$sock"
    done
    printf '%-44s ' "  vscsi-backend"; printf '%s\n' "${ours[@]}" | stats
    printf '%-44s ' "  vhost-device-scsi 0.1.0"; printf '%s\n' "${theirs[@]}" | stats
    paste -d' ' <(printf '%s\n' "${ours[@]}") <(printf '%s\n' "${theirs[@]}") |
        awk '{ printf "  run %d: ratio %.1fx\n", NR, $1 / $4 }'
fi

if [ -n "${VHOST_DEVICE_SCSI:-}" ] && [ -n "${COLD:-}" ]; then
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
    printf '%-44s ' "  vhost-device-scsi 0.1.0"; printf '%s\n' "${theirs[@]}" | stats
    paste -d' ' <(printf '%s\n' "${ours[@]}") <(printf '%s\n' "${theirs[@]}") |
        awk '{ printf "  run %d: ratio %.1fx\n", NR, $1 / $4 }'
fi

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

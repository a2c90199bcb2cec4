# The guest side of harness/tests/qemu_reconnect.rs: runs inside the busybox
# initramfs built by images/build-guest.sh, after the host prepended:
#
#   PHASES=N            how many daemon restarts the host makes, one a phase
#   DATA_OFF=BYTES      where phase 1's fio jobs write; phase k's region is
#                       PHASE_LEN further on per phase
#   JOB_LEN=BYTES       what each of the two fio jobs writes and verifies
#   PATTERN_OFF=BYTES PATTERN_LEN=BYTES   phase k's pattern goes at
#                       PATTERN_OFF + (k - 1) * PATTERN_LEN
#
# The guest has one virtio-scsi HBA (vhost-user-scsi-pci, two request
# queues, on a chardev that reconnects). Each phase prints
# `VSCSI-RC-PHASE k`, then runs fio on two CPUs (one job pinned to each, so
# both request queues carry I/O: blk-mq maps each CPU to its own queue):
# random 4k writes, iodepth 8 per job, then fio's crc32c verify pass, with a
# pattern written by dd beside it. Meanwhile the host stops the daemon
# (SIGKILL, SIGTERM, or SIGTERM and a different build) and starts it again;
# QEMU reconnects and the I/O goes on. After the phases, the last phase's
# data is verified once more (fio --verify_only), the patterns are printed
# for the host to find in the image, and dmesg is checked.
#
# Prints `VSCSI-RESULT <name> PASS|FAIL <detail>` per check and
# `VSCSI-PATTERN <name> <offset> <length> <md5>` for the host.

result() { echo "VSCSI-RESULT $1 $2 $(echo "${3:-}" | tr '\n' ' ' | cut -c1-300)"; }
pass() { result "$1" PASS "${2:-}"; }
fail() { result "$1" FAIL "${2:-}"; }
log() { echo "VSCSI-LOG $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

log "reconnect start uptime=$(now)"

host=""
for h in /sys/class/scsi_host/host*; do
    [ "$(cat "$h/proc_name" 2>/dev/null)" = virtio_scsi ] && host="${h##*/host}" && break
done
i=0
while [ $i -lt 100 ]; do
    sd=$(ls "/sys/bus/scsi/devices/$host:0:0:0/block" 2>/dev/null | head -n 1)
    [ -n "$sd" ] && break
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$sd" ]; then
    fail disk "host$host: no disk"
    exit 1
fi
queues=$(ls -d /sys/block/"$sd"/mq/* 2>/dev/null | wc -l)
pass disk "/dev/$sd, $queues blk-mq hardware queues"

# fio over phase $1's region: two jobs, one pinned to each CPU, each writing
# JOB_LEN bytes at random then verifying them (crc32c); the rest of the
# arguments passed through. No invalidate: fio would flush the whole
# device's page cache (BLKFLSBUF).
PHASE_LEN=$((2 * JOB_LEN))
fio_phase() {
    _k=$1
    shift
    fio --name=rc --filename="/dev/$sd" --ioengine=libaio --direct=1 \
        --rw=randwrite --bs=4k --iodepth=8 --numjobs=2 --cpus_allowed=0,1 \
        --cpus_allowed_policy=split --offset=$((DATA_OFF + (_k - 1) * PHASE_LEN)) \
        --size="$JOB_LEN" --offset_increment="$JOB_LEN" --randseed="$_k" \
        --invalidate=0 --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --group_reporting "$@" 2>&1
}

# dmesg up to here (the boot's probe) is not the workload's.
dmesg_before=$(dmesg | wc -l)
fio_fail=0 pat_fail=0
k=1
while [ $k -le "$PHASES" ]; do
    dd if=/dev/urandom of=/tmp/pat.$k bs=1M count=$((PATTERN_LEN / 1048576)) 2>/dev/null
    echo "VSCSI-RC-PHASE $k uptime=$(now)"
    # The pattern beside fio: 64 KiB O_DIRECT writes, across the restart too.
    dd if=/tmp/pat.$k of="/dev/$sd" bs=64k oflag=direct conv=fsync \
        seek=$(((PATTERN_OFF + (k - 1) * PATTERN_LEN) / 65536)) 2>/tmp/dd.$k &
    ddpid=$!
    if out=$(fio_phase $k); then
        log "phase $k fio: $(echo "$out" | grep -m1 -E '^ +write:' | sed 's/^ *//')"
    else
        fio_fail=$((fio_fail + 1))
        fail "fio-phase-$k" "$(echo "$out" | grep -iE 'verify|error|bad' | head -n 5)"
    fi
    if wait $ddpid; then
        echo "VSCSI-PATTERN phase-$k $((PATTERN_OFF + (k - 1) * PATTERN_LEN)) $PATTERN_LEN $(md5sum </tmp/pat.$k | cut -d' ' -f1)"
    else
        pat_fail=$((pat_fail + 1))
        fail "pattern-phase-$k" "$(cat /tmp/dd.$k)"
    fi
    echo "VSCSI-RC-PHASE-END $k uptime=$(now)"
    k=$((k + 1))
done
if [ $fio_fail = 0 ]; then pass fio-verify "$PHASES phases of 2-job randwrite + crc32c verify"; else fail fio-verify "$fio_fail of $PHASES phases failed"; fi
if [ $pat_fail = 0 ]; then pass pattern-writes "$PHASES patterns written"; else fail pattern-writes "$pat_fail of $PHASES failed"; fi

# Every phase's data verified again, after the last restart.
vfail=0
k=1
while [ $k -le "$PHASES" ]; do
    if ! out=$(fio_phase $k --verify_only); then
        vfail=$((vfail + 1))
        log "verify-only phase $k: $(echo "$out" | grep -iE 'verify|error|bad' | head -n 5 | tr '\n' ' ')"
    fi
    k=$((k + 1))
done
if [ $vfail = 0 ]; then pass verify-only "every phase's data verified after the last restart"; else fail verify-only "$vfail of $PHASES phases differ"; fi

errs=$(dmesg | tail -n +$((dmesg_before + 1)) | grep -iE 'i/o error|abort|timed? ?out|critical|reset|fail|hung|sense' | head -n 5)
if [ -z "$errs" ]; then pass dmesg-clean; else fail dmesg-clean "$errs"; fi
dmesg | tail -n +$((dmesg_before + 1)) | tail -n 40 | sed 's/^/VSCSI-DMESG /'

log "reconnect end uptime=$(now)"

# The guest side of harness/tests/qemu_migration.rs: runs inside the busybox
# initramfs built by images/build-guest.sh, after the host prepended:
#
#   DATA_OFF=BYTES DATA_LEN=BYTES   where fio writes and verifies, each round
#   HOST_OFF=BYTES HOST_LEN=BYTES   two regions the host filled before boot,
#                    HOST_LEN each from HOST_OFF (whole MiBs)
#   READERS=N SLICE_MD5="..."   the md5 of each of the N slices of the first
#                    region, then of the second
#   DIRECT_LEN=BYTES DIRECT_MD5=HEX   its first DIRECT_LEN bytes, read with
#                    O_DIRECT each round
#   PATTERN_OFF=BYTES   where the last pattern goes, for the host to check
#   MAX_ROUNDS=N AFTER_ROUNDS=N
#
# The guest has one virtio-scsi HBA (a vhost-user-scsi-pci device). The host
# migrates the VM while this script loops; the source's device talks to
# controller A of the daemon, the destination's to controller B, both
# serving one shared logical unit. The script sees the switch in band: the
# relative target port of VPD page 83h goes from A's to B's. It runs rounds
# of fio (random writes, then a crc32c verify pass: the verify reads are
# buffers the daemon writes into guest memory) and of O_DIRECT reads of the
# host's region until AFTER_ROUNDS rounds ran after the switch, then verifies
# the last round's data once more (fio --verify_only), writes a pattern and
# reports dmesg.
#
# Meanwhile READERS background readers read the host's regions again and
# again with O_DIRECT, each through one 1 MiB dd buffer the daemon writes
# and no guest CPU does; the host starts the migration when they begin
# (VSCSI-MIG-FILL). A page the daemon wrote after QEMU had sent it, and did
# not log, reaches the destination stale: the read in flight when QEMU
# stopped the source (the daemon completes it before answering
# GET_VRING_BASE) is consumed on the destination and gets a wrong md5.
#
# Prints `VSCSI-RESULT <name> PASS|FAIL <detail>` per check and
# `VSCSI-PATTERN <name> <offset> <length> <md5>` for the host.

result() { echo "VSCSI-RESULT $1 $2 $(echo "${3:-}" | tr '\n' ' ' | cut -c1-300)"; }
pass() { result "$1" PASS "${2:-}"; }
fail() { result "$1" FAIL "${2:-}"; }
log() { echo "VSCSI-LOG $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

log "migration start uptime=$(now)"

host=""
for h in /sys/class/scsi_host/host*; do
    [ "$(cat "$h/proc_name" 2>/dev/null)" = virtio_scsi ] && host="${h##*/host}" && break
done
i=0
while [ $i -lt 100 ]; do
    sd=$(ls "/sys/bus/scsi/devices/$host:0:0:0/block" 2>/dev/null | head -n 1)
    sg=$(ls "/sys/bus/scsi/devices/$host:0:0:0/scsi_generic" 2>/dev/null | head -n 1)
    [ -n "$sd" ] && [ -n "$sg" ] && break
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$sd" ] || [ -z "$sg" ]; then
    fail disk "host$host: no disk or sg node"
    exit 1
fi
pass disk "/dev/$sd /dev/$sg"

# The relative target port the disk answers through (VPD 83h).
port() { sg_vpd -p di "/dev/$sg" 2>/dev/null | sed -n 's/.*Relative target port: *//p' | head -n 1; }
port0=$(port)
if [ -n "$port0" ]; then pass port-before "relative target port $port0"; else fail port-before "no relative target port in VPD 83h"; fi

# One fio job: random writes over the data region, then the crc32c verify
# pass; $1 = round (the random seed), the rest passed through. No
# invalidate: fio would flush the whole device's page cache (BLKFLSBUF).
fio_round() {
    _seed=$1
    shift
    fio --name=mig --filename="/dev/$sd" --ioengine=libaio --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --offset="$DATA_OFF" --size="$DATA_LEN" \
        --randseed="$_seed" --invalidate=0 --verify=crc32c --verify_fatal=1 --do_verify=1 "$@" 2>&1
}

# dmesg up to here (the boot's probe, with its power-on unit attention) is
# not the workload's.
dmesg_before=$(dmesg | wc -l)
mib=$((HOST_OFF / 1048576))
# The readers: READERS background loops, reader k reading slice k of the
# first host region, then of the second, and so on, each slice with one dd
# (bs=1M iflag=direct: one 1 MiB buffer the daemon writes again and again
# and the guest CPU only reads). Whatever the moment QEMU stops the source,
# some reader's read is in flight, its buffer last sent long before.
rm -f /tmp/stop /tmp/big.*
slice=$((HOST_LEN / READERS / 1048576))
reader() { # K
    n=0 bad=0
    while [ ! -e /tmp/stop ]; do
        r=$((n % 2))
        want=$(echo $SLICE_MD5 | cut -d' ' -f$((r * READERS + $1 + 1)))
        got=$(dd if="/dev/$sd" bs=1M skip=$(((HOST_OFF + r * HOST_LEN) / 1048576 + $1 * slice)) count=$slice iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        n=$((n + 1))
        if [ "$got" != "$want" ]; then
            bad=$((bad + 1))
            echo "VSCSI-LOG reader $1 pass $n: md5 $got want $want port=$(port) uptime=$(now)"
        fi
        echo "$n $bad" >/tmp/big.$1
    done
}
readers=""
k=0
while [ $k -lt "$READERS" ]; do
    reader $k &
    readers="$readers $!"
    k=$((k + 1))
done
echo "VSCSI-MIG-FILL uptime=$(now)"

round=0 after=0 switched="" fio_fail=0 host_fail=0
while [ $round -lt "$MAX_ROUNDS" ] && [ $after -lt "$AFTER_ROUNDS" ]; do
    round=$((round + 1))
    if ! out=$(fio_round $round); then
        fio_fail=$((fio_fail + 1))
        fail "fio-round-$round" "$(echo "$out" | grep -iE 'verify|error|bad' | head -n 5)"
    fi
    got=$(dd if="/dev/$sd" bs=1M skip=$mib count=$((DIRECT_LEN / 1048576)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    if [ "$got" != "$DIRECT_MD5" ]; then
        host_fail=$((host_fail + 1))
        fail "host-read-round-$round" "md5 $got want $DIRECT_MD5"
    fi
    p=$(port)
    if [ -n "$switched" ]; then
        after=$((after + 1))
    elif [ -n "$p" ] && [ "$p" != "$port0" ]; then
        switched=$round
        # The readers end the pass they are in, the one across the switch.
        touch /tmp/stop
        log "port $port0 -> $p before round $((round + 1)) uptime=$(now)"
    fi
    echo "VSCSI-MIG-ROUND $round port=$p uptime=$(now)"
done
last=$round

if [ -n "$switched" ]; then
    pass migrated "relative target port $port0 -> $(port) after round $switched"
else
    fail migrated "still port $(port) after $round rounds"
fi
if [ $fio_fail = 0 ]; then pass fio-verify "$round rounds of randwrite + crc32c verify"; else fail fio-verify "$fio_fail of $round rounds failed"; fi
if [ $host_fail = 0 ]; then pass host-reads "$round O_DIRECT reads of the host's $DIRECT_LEN bytes"; else fail host-reads "$host_fail of $round reads differ"; fi

# The readers' passes, those across the switch included.
touch /tmp/stop
# shellcheck disable=SC2086
wait $readers
passes=0 bad=0
for f in /tmp/big.*; do
    set -- $(cat "$f")
    passes=$((passes + $1)) bad=$((bad + $2))
done
if [ "$passes" -gt 0 ] && [ "$bad" = 0 ]; then
    pass big-reads "$passes O_DIRECT passes of $READERS readers over the host's regions, md5s right"
else
    fail big-reads "$bad of $passes passes of $READERS readers over the host's regions differ"
fi

# The last round's data verified again, in one pass on the destination.
if out=$(fio_round $last --verify_only); then
    pass verify-only "round $last data verified: $(echo "$out" | grep -m1 -E '^ +read:' | sed 's/^ *//')"
else
    fail verify-only "$(echo "$out" | grep -iE 'verify|error|bad' | head -n 5)"
fi

# A last pattern, for the host to find in the image after poweroff.
dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
want=$(md5sum </tmp/pat | cut -d' ' -f1)
if out=$(dd if=/tmp/pat of="/dev/$sd" bs=1M seek=$((PATTERN_OFF / 1048576)) count=1 oflag=direct conv=fsync 2>&1); then
    pass pattern-write "md5 $want"
    echo "VSCSI-PATTERN final $PATTERN_OFF 1048576 $want"
else
    fail pattern-write "$out"
fi

errs=$(dmesg | tail -n +$((dmesg_before + 1)) | grep -iE 'i/o error|abort|timed? ?out|critical|reset|fail|hung' | head -n 5)
if [ -z "$errs" ]; then pass dmesg-clean; else fail dmesg-clean "$errs"; fi
dmesg | tail -n +$((dmesg_before + 1)) | tail -n 40 | sed 's/^/VSCSI-DMESG /'

log "migration end uptime=$(now)"

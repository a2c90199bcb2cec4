# The guest side of harness/tests/qemu_migration.rs: runs inside the busybox
# initramfs built by images/build-guest.sh, after the host prepended:
#
#   DATA_OFF=BYTES DATA_LEN=BYTES   where fio writes and verifies, each round
#   HOST_OFF=BYTES HOST_LEN=BYTES HOST_MD5=HEX HOST2_MD5=HEX
#                    two regions the host filled before boot, HOST_LEN each
#                    from HOST_OFF (a multiple of HOST_LEN)
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
# Meanwhile a background reader reads the whole host region again and
# again, each pass one O_DIRECT read into a fresh dd buffer; the host starts
# the migration when it begins (VSCSI-MIG-FILL). The daemon writes those
# buffers and no guest CPU does after the kernel zeroed them: a page the
# daemon wrote after QEMU had sent it, and did not log, reaches the
# destination stale, and the pass across the switch gets a wrong md5.
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
# The big reader: the whole host region in one O_DIRECT read (a fresh dd, so
# a fresh buffer each pass), over and over until the rounds end.
rm -f /tmp/stop /tmp/big
(
    n=0 bad=0
    while [ ! -e /tmp/stop ]; do
        # Odd passes read the host's region, even ones the one after it, so
        # a stale page holds the other region's data (or the kernel's zeros).
        if [ $((n % 2)) = 0 ]; then at=$HOST_OFF want=$HOST_MD5; else at=$((HOST_OFF + HOST_LEN)) want=$HOST2_MD5; fi
        got=$(dd if="/dev/$sd" bs="$HOST_LEN" skip=$((at / HOST_LEN)) count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        n=$((n + 1))
        if [ "$got" != "$want" ]; then
            bad=$((bad + 1))
            echo "VSCSI-LOG big read $n: md5 $got want $want port=$(port) uptime=$(now)"
        fi
        echo "$n $bad" >/tmp/big
    done
) &
reader=$!
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

# The big reader's passes, the one across the switch included.
touch /tmp/stop
wait $reader
set -- $(cat /tmp/big 2>/dev/null)
if [ "${1:-0}" -gt 0 ] && [ "${2:-1}" = 0 ]; then
    pass big-reads "$1 O_DIRECT reads of $HOST_LEN bytes of the host's regions, md5s right"
else
    fail big-reads "${2:-?} of ${1:-0} reads of $HOST_LEN bytes of the host's regions differ"
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

# The guest side of harness/tests/qemu_guest.rs: runs inside the busybox
# initramfs built by images/build-guest.sh (given to the guest through QEMU's
# fw_cfg), after the host prepended the expectations:
#
#   LUNS="T:L:SIZE_BYTES:BLOCK_SIZE:rw|ro ..."   what the daemon serves
#   VENDOR=... PRODUCT=...                       expected INQUIRY strings
#   RO_MD5=...                                   md5 of the read-only LUN's first MiB
#   FIO_LUN=T:L FS_LUN=T:L RESET_LUN=T:L PATTERN_LUNS="T:L:OFFSET ..."
#   QUEUES=N                                     request queues (num_queues)
#   CD_LUN=T:L CD_FILE=NAME CD_MD5=...           the CD-ROM LUN and a file on its ISO
#   THIN_LUN=T:L                                 a disk on a sparse image (discard)
#   HOT_LUN=T:L HOT_SIZE=B HOT_NEW_SIZE=B        the LUN the host adds, resizes, removes
#   SLOW_LUN=T:L SLOW_MS=N                       the LUN the host sets latency=N ms on
#   NBD_LUN=T:L NBD_SIZE=B NBD_OFFSET=B          the LUN on an NBD export (empty
#                                                NBD_LUN: the host has no qemu-nbd)
#
# Host actions: the guest prints `VSCSI-WAIT <name>` and polls (with a time
# limit) for the effect; the host tails the serial log and, on each marker,
# calls the daemon's control socket (hotplug-add, hotplug-resize,
# hotplug-remove, fault-set, fault-clear).
#
# Prints one line per check on the console:
#   VSCSI-RESULT <name> PASS|FAIL|SKIP <detail>
# and, for the host to check the image files after poweroff:
#   VSCSI-PATTERN <T:L> <offset> <length> <md5>
# The host parses those lines; anything else is for people reading the log.

result() { echo "VSCSI-RESULT $1 $2 $(echo "${3:-}" | tr '\n' ' ' | cut -c1-300)"; }
pass() { result "$1" PASS "${2:-}"; }
fail() { result "$1" FAIL "${2:-}"; }
skip() { result "$1" SKIP "${2:-}"; }
# check NAME CMD...: PASS when CMD exits 0, else FAIL with its last output lines.
check() {
    _n=$1; shift
    if _o=$("$@" 2>&1); then pass "$_n"; else fail "$_n" "rc=$? $(echo "$_o" | tail -n 4)"; fi
}
log() { echo "VSCSI-LOG $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

log "battery start uptime=$(now)"

# --- find our HBA and its devices -----------------------------------------------
host=""
for h in /sys/class/scsi_host/host*; do
    [ "$(cat "$h/proc_name" 2>/dev/null)" = virtio_scsi ] && host=${h##*/host}
done
if [ -z "$host" ]; then
    fail hba "no virtio_scsi host in /sys/class/scsi_host"
    exit 1
fi
pass hba "host$host"

devdir() { echo "/sys/bus/scsi/devices/$host:0:${1%%:*}:${1##*:}"; }
blk() { ls "$(devdir "$1")/block" 2>/dev/null | head -n 1; }
sgdev() { ls "$(devdir "$1")/scsi_generic" 2>/dev/null | head -n 1; }

# Wait (scan=sync makes this immediate, but be lenient) for every LUN.
i=0
while [ $i -lt 100 ]; do
    missing=0
    for spec in $LUNS; do
        tl=${spec%:*:*:*}
        [ -n "$(blk "$tl")" ] && [ -n "$(sgdev "$tl")" ] || missing=1
    done
    [ $missing = 0 ] && break
    sleep 0.1
    i=$((i + 1))
done
log "scsi devices: $(ls /sys/bus/scsi/devices | tr '\n' ' ')"

# --- identity, capacity, basic commands, per LUN ---------------------------------
for spec in $LUNS; do
    set -- $(echo "$spec" | tr ':' ' ')
    t=$1 l=$2 size=$3 bs=$4 mode=$5
    tl=$t:$l
    sd=$(blk "$tl") sg=$(sgdev "$tl")
    if [ -z "$sd" ] || [ -z "$sg" ]; then
        fail "present-$tl" "no block/sg device at $(devdir "$tl")"
        continue
    fi
    pass "present-$tl" "/dev/$sd /dev/$sg"
    dir=$(devdir "$tl")

    # Standard INQUIRY: device type, vendor, product (sg_inq and what Linux read).
    out=$(sg_inq "/dev/$sg" 2>&1); rc=$?
    v=$(echo "$out" | sed -n 's/^ *Vendor identification: *//p' | sed 's/ *$//')
    p=$(echo "$out" | sed -n 's/^ *Product identification: *//p' | sed 's/ *$//')
    type=$(cat "$dir/type")
    if [ $rc = 0 ] && [ "$v" = "$VENDOR" ] && [ "$p" = "$PRODUCT" ] && [ "$type" = 0 ]; then
        pass "inquiry-$tl" "vendor=$v product=$p type=$type"
    else
        fail "inquiry-$tl" "rc=$rc vendor='$v' product='$p' type=$type (want $VENDOR/$PRODUCT/0)"
    fi

    # VPD pages: 00 must list 83 (and 80 when a serial is configured).
    out=$(sg_vpd -p 0 "/dev/$sg" 2>&1); rc=$?
    if [ $rc = 0 ] && echo "$out" | grep -q "Device identification"; then
        pass "vpd00-$tl" "$(echo "$out" | grep -c '\[') pages"
    else
        fail "vpd00-$tl" "rc=$rc $out"
    fi
    if echo "$out" | grep -q "Unit serial number"; then
        check "vpd80-$tl" sg_vpd -p sn "/dev/$sg"
    else
        skip "vpd80-$tl" "page 80h not offered (no serial number configured for this LUN)"
    fi
    # SBC pages: must answer when page 00 lists them (SKIP when not offered).
    for pg in bl:b0 bdc:b1 lbpv:b2; do
        abbr=${pg%:*} code=${pg#*:}
        if echo "$out" | grep -q "\[$abbr\]"; then
            check "vpd$code-$tl" sg_vpd -p "$abbr" "/dev/$sg"
        else
            skip "vpd$code-$tl" "page ${code}h not offered"
        fi
    done
    out=$(sg_vpd -p di "/dev/$sg" 2>&1); rc=$?
    if [ $rc = 0 ] && echo "$out" | grep -q "$VENDOR"; then
        pass "vpd83-$tl" "$(echo "$out" | grep -m1 -i 'vendor specific' | sed 's/^ *//')"
    else
        fail "vpd83-$tl" "rc=$rc $out"
    fi

    # Capacity and block size, as READ CAPACITY(16) answers and as the kernel sees it.
    blocks=$((size / bs))
    out=$(sg_readcap -l "/dev/$sg" 2>&1); rc=$?
    if [ $rc = 0 ] && echo "$out" | grep -qE "Number of logical blocks=$blocks([^0-9]|$)" \
        && echo "$out" | grep -q "Logical block length=$bs bytes"; then
        pass "readcap-$tl" "blocks=$blocks bs=$bs"
    else
        fail "readcap-$tl" "rc=$rc want blocks=$blocks bs=$bs: $out"
    fi
    lbs=$(cat "/sys/block/$sd/queue/logical_block_size")
    sectors=$(cat "/sys/block/$sd/size")
    if [ "$lbs" = "$bs" ] && [ $((sectors * 512)) = "$size" ]; then
        pass "sysfs-size-$tl" "logical_block_size=$lbs size=$((sectors * 512))"
    else
        fail "sysfs-size-$tl" "logical_block_size=$lbs bytes=$((sectors * 512)) want $bs/$size"
    fi

    # REPORT LUNS from each LUN: the target's LUN count.
    want=0
    for s in $LUNS; do [ "${s%%:*}" = "$t" ] && want=$((want + 1)); done
    out=$(sg_luns "/dev/$sg" 2>&1); rc=$?
    got=$(echo "$out" | grep -cE '^ +[0-9a-f]{16}')
    if [ $rc = 0 ] && [ "$got" = "$want" ]; then
        pass "luns-$tl" "$got LUNs"
    else
        fail "luns-$tl" "rc=$rc got $got LUNs want $want: $out"
    fi

    check "tur-$tl" sg_turs "/dev/$sg"
    check "modes-$tl" sg_modes "/dev/$sg"
    check "requests-$tl" sg_requests "/dev/$sg"
    check "sync-$tl" sg_sync "/dev/$sg"
    if out=$(sg_opcodes "/dev/$sg" 2>&1); then
        pass "opcodes-$tl" "$(echo "$out" | grep -c .) lines"
    else
        skip "opcodes-$tl" "known gap: REPORT SUPPORTED OPERATION CODES not implemented yet: $(echo "$out" | grep -iE 'illegal|invalid|not supported|fail' | head -n 1)"
    fi

    # Write protection as the kernel sees it.
    ro=$(cat "/sys/block/$sd/ro")
    if [ "$mode" = ro ]; then
        if [ "$ro" = 1 ]; then pass "ro-flag-$tl" "/sys/block/$sd/ro=1"; else fail "ro-flag-$tl" "/sys/block/$sd/ro=$ro"; fi
        if out=$(dd if=/dev/zero of="/dev/$sd" bs=4096 count=1 oflag=direct 2>&1); then
            fail "ro-write-refused-$tl" "dd to /dev/$sd succeeded"
        else
            pass "ro-write-refused-$tl" "$(echo "$out" | head -n 1)"
        fi
        sum=$(dd if="/dev/$sd" bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$sum" = "$RO_MD5" ]; then pass "ro-read-$tl" "md5 $sum"; else fail "ro-read-$tl" "md5 $sum want $RO_MD5"; fi
    else
        if [ "$ro" = 0 ]; then pass "rw-flag-$tl" "/sys/block/$sd/ro=0"; else fail "rw-flag-$tl" "/sys/block/$sd/ro=$ro"; fi
    fi
done

# --- multi-queue: the block layer has QUEUES hardware queues ----------------------
sd=$(blk "$FIO_LUN")
nq=$(ls -d /sys/block/$sd/mq/* 2>/dev/null | wc -l)
if [ "$nq" = "$QUEUES" ]; then pass mq-queues "/sys/block/$sd/mq: $nq"; else fail mq-queues "/sys/block/$sd/mq: $nq want $QUEUES"; fi

# --- fio verify job across both queues: one job pinned on each CPU ----------------
# Completions per request queue: each virtio-scsi request virtqueue has its own
# MSI-X vector, "virtioN-request" in /proc/interrupts (one line per queue, in
# queue order). Prints "count0 count1 ...".
queued() {
    awk '/virtio[0-9]+-request(\.[0-9]+)? *$/ {n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; printf "%d ", n}' /proc/interrupts
}
before=$(queued)
t0=$(now)
out=$(fio --name=verify --filename="/dev/$sd" --thread --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=8 --size=8M --numjobs=2 --offset_increment=8M \
    --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --cpus_allowed=0-1 --cpus_allowed_policy=split --group_reporting 2>&1)
rc=$?
t1=$(now)
took=$(echo "$t1 $t0" | awk '{printf "%.1f", $1-$2}')
if [ $rc = 0 ]; then
    pass fio-verify "2 jobs x 8M randwrite + crc32c verify in $took s: $(echo "$out" | grep -m1 -E '^ +write:' | sed 's/^ *//')"
else
    fail fio-verify "rc=$rc $(echo "$out" | grep -iE 'error|verify|bad' | head -n 5)"
    echo "$out"
fi
after=$(queued)
used=0
set -- $before
for a in $after; do
    [ "$a" -gt "${1:-0}" ] && used=$((used + 1))
    shift
done
if [ $used -ge 2 ]; then pass mq-both-used "request-queue interrupts before: $before after: $after"
else fail mq-both-used "request-queue interrupts before: $before after: $after ($(grep request /proc/interrupts | tr -s ' ' | tr '\n' '|'))"; fi

# --- ext4: mkfs, mount, write, sync, drop caches, remount, read back --------------
sd=$(blk "$FS_LUN")
mnt=/mnt/fs
mkdir -p $mnt
if out=$(mkfs.ext4 -F -q "/dev/$sd" 2>&1); then pass "fs-mkfs" "/dev/$sd"; else fail "fs-mkfs" "$out"; fi
if out=$(mount -t ext4 "/dev/$sd" $mnt 2>&1); then
    pass fs-mount "/dev/$sd"
    ok=1
    dd if=/dev/urandom of=$mnt/big bs=1M count=6 2>/dev/null || ok=0
    dd if=/dev/urandom of=$mnt/odd bs=12345 count=3 2>/dev/null || ok=0
    mkdir -p $mnt/dir
    n=0
    while [ $n -lt 50 ]; do echo "file $n $(now)" >$mnt/dir/f$n || ok=0; n=$((n + 1)); done
    (cd $mnt && find . -type f | sort | xargs md5sum) >/tmp/fs.md5
    sync
    if [ $ok = 1 ]; then pass fs-write "$(wc -l </tmp/fs.md5) files"; else fail fs-write "a write failed"; fi
    umount $mnt
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 -o ro "/dev/$sd" $mnt
    echo 3 >/proc/sys/vm/drop_caches
    if out=$(cd $mnt && md5sum -c /tmp/fs.md5 2>&1); then
        pass fs-readback "$(wc -l </tmp/fs.md5) checksums match after umount + drop_caches"
    else
        fail fs-readback "$(echo "$out" | grep -v ': OK' | head -n 5)"
    fi
    umount $mnt
    check fs-fsck e2fsck -f -n "/dev/$sd"
else
    fail fs-mount "$out"
fi

# --- SBC_EXTRA: the SBC-4 commands beyond the core set, with sg_raw ------------------
# On FIO_LUN (512-byte blocks), at 24 MiB: past fio's 16 MiB, before the pattern
# at 32 MiB. sg_raw exits 0 on GOOD / CONDITION MET, 5 on ILLEGAL REQUEST, 14 on
# MISCOMPARE (sg3_utils(8) exit status); -o writes the Data-In bytes to a file.
sg=$(sgdev "$FIO_LUN")
hexof() { hexdump -v -e '/1 "%02x "' "$1" | sed 's/ $//'; }
# fill FILE BYTES CHAR: BYTES bytes of CHAR.
fill() { dd if=/dev/zero bs="$2" count=1 2>/dev/null | tr '\000' "$3" >"$1"; }
# want NAME GOT WANT: PASS when equal.
want() { if [ "$2" = "$3" ]; then pass "$1" "$2"; else fail "$1" "got [$2] want [$3]"; fi; }
# rc_is NAME RC OUT WANT_RC
rc_is() { if [ "$2" = "$4" ]; then pass "$1" "exit $2"; else fail "$1" "exit $2 want $4: $(echo "$3" | tail -n 3)"; fi; }
sbc=/tmp/sbc
mkdir -p $sbc
fill $sbc/z1k 1024 Z
cp $sbc/z1k $sbc/z1k-bad
printf 'Y' | dd of=$sbc/z1k-bad bs=1 seek=700 conv=notrunc 2>/dev/null
# WRITE AND VERIFY(12) BYTCHK=1 of LBA C000h, 2 blocks; VERIFY(12) equal, then a
# difference at byte 700: MISCOMPARE.
out=$(sg_raw -s 1024 -i $sbc/z1k "/dev/$sg" AE 02 00 00 C0 00 00 00 00 02 00 00 2>&1); rc_is sbc-write-and-verify12 $? "$out" 0
out=$(sg_raw -s 1024 -i $sbc/z1k "/dev/$sg" AF 02 00 00 C0 00 00 00 00 02 00 00 2>&1); rc_is sbc-verify12 $? "$out" 0
out=$(sg_raw -s 1024 -i $sbc/z1k-bad "/dev/$sg" AF 02 00 00 C0 00 00 00 00 02 00 00 2>&1); rc_is sbc-verify12-miscompare $? "$out" 14
# PRE-FETCH(10) of 64 blocks and PRE-FETCH(16) IMMED: CONDITION MET (fits the cache).
out=$(sg_raw "/dev/$sg" 34 00 00 00 C0 00 00 00 40 00 2>&1)
if echo "$out" | grep -qi "condition met"; then pass sbc-prefetch10 "$(echo "$out" | grep -i status)"; else fail sbc-prefetch10 "$out"; fi
out=$(sg_raw "/dev/$sg" 90 02 00 00 00 00 00 00 C0 00 00 00 00 40 00 00 2>&1)
if echo "$out" | grep -qi "condition met"; then pass sbc-prefetch16 "$(echo "$out" | grep -i status)"; else fail sbc-prefetch16 "$out"; fi
# Block Limits VPD: MAXIMUM ATOMIC TRANSFER LENGTH (bytes 44-47) 128 blocks, the
# other atomic fields 0.
sg_raw -r 64 -o $sbc/b0 "/dev/$sg" 12 01 B0 00 40 00 >/dev/null 2>&1
want sbc-atomic-limits "$(dd if=$sbc/b0 bs=1 skip=44 count=20 2>/dev/null | hexdump -v -e '/1 "%02x "' | sed 's/ $//')" \
    "00 00 00 80 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
# WRITE ATOMIC(16) of 8 blocks at C010h, read back; a TRANSFER LENGTH of 129
# blocks: ILLEGAL REQUEST (refused from the CDB, before any data moves).
fill $sbc/a4k 4096 A
out=$(sg_raw -s 4096 -i $sbc/a4k "/dev/$sg" 9C 00 00 00 00 00 00 00 C0 10 00 00 00 08 00 00 2>&1); rc_is sbc-write-atomic $? "$out" 0
sg_raw -r 4096 -o $sbc/a4k-back "/dev/$sg" 28 00 00 00 C0 10 00 00 08 00 >/dev/null 2>&1
if cmp -s $sbc/a4k $sbc/a4k-back; then pass sbc-write-atomic-data "8 blocks read back"; else fail sbc-write-atomic-data "read back differs"; fi
fill $sbc/a512 512 A
out=$(sg_raw -s 512 -i $sbc/a512 "/dev/$sg" 9C 00 00 00 00 00 00 00 C0 10 00 00 00 81 00 00 2>&1); rc_is sbc-write-atomic-too-long $? "$out" 5
q=/sys/block/$(blk "$FIO_LUN")/queue/atomic_write_unit_max_bytes
if [ -r "$q" ]; then log "sbc: $q = $(cat "$q")"; fi
# READ DEFECT DATA(10) / (12): empty lists, the header of the format asked.
sg_raw -r 255 -o $sbc/d10 "/dev/$sg" 37 00 1B 00 00 00 00 00 FF 00 >/dev/null 2>&1
want sbc-defect10 "$(hexof $sbc/d10)" "00 1b 00 00"
sg_raw -r 255 -o $sbc/d12 "/dev/$sg" B7 0D 00 00 00 00 00 00 00 FF 00 00 >/dev/null 2>&1
want sbc-defect12 "$(hexof $sbc/d12)" "00 0d 00 00 00 00 00 00"
# LOG SENSE: supported pages; informational exceptions; SP=1 refused.
sg_raw -r 255 -o $sbc/l00 "/dev/$sg" 4D 00 40 00 00 00 00 00 FF 00 >/dev/null 2>&1
want sbc-log-pages "$(hexof $sbc/l00)" "00 00 00 02 00 2f"
sg_raw -r 255 -o $sbc/l2f "/dev/$sg" 4D 00 6F 00 00 00 00 00 FF 00 >/dev/null 2>&1
want sbc-log-ie "$(hexof $sbc/l2f)" "2f 00 00 07 00 00 03 03 00 00 ff"
out=$(sg_raw -r 255 "/dev/$sg" 4D 01 6F 00 00 00 00 00 FF 00 2>&1); rc_is sbc-log-sp $? "$out" 5
# FORMAT UNIT, FMTDATA with a short header (IMMED): GOOD, the data is unchanged;
# a defect list: ILLEGAL REQUEST.
printf '\000\002\000\000' >$sbc/fh
out=$(sg_raw -s 4 -i $sbc/fh "/dev/$sg" 04 10 00 00 00 00 2>&1); rc_is sbc-format-unit $? "$out" 0
sg_raw -r 4096 -o $sbc/a4k-after "/dev/$sg" 28 00 00 00 C0 10 00 00 08 00 >/dev/null 2>&1
if cmp -s $sbc/a4k $sbc/a4k-after; then pass sbc-format-keeps-data "8 blocks unchanged"; else fail sbc-format-keeps-data "data changed"; fi
printf '\000\000\000\010\000\000\000\000\000\000\000\000' >$sbc/fdl
out=$(sg_raw -s 12 -i $sbc/fdl "/dev/$sg" 04 10 00 00 00 00 2>&1); rc_is sbc-format-defect-list $? "$out" 5
# WRITE BUFFER then READ BUFFER(10), mode 02h (data), buffer 0, offset 0: the
# bytes come back.
sg_raw -s 1024 -i $sbc/z1k-bad "/dev/$sg" 3B 02 00 00 00 00 00 04 00 00 >/dev/null 2>&1
sg_raw -r 1024 -o $sbc/buf "/dev/$sg" 3C 02 00 00 00 00 00 04 00 00 >/dev/null 2>&1
if cmp -s $sbc/z1k-bad $sbc/buf; then pass sbc-buffer "1024 bytes read back"; else fail sbc-buffer "read back differs"; fi
# REPORT SUPPORTED OPERATION CODES: how many the disk reports.
sg_raw -r 8192 -o $sbc/rsoc "/dev/$sg" A3 0C 00 00 00 00 00 00 20 00 00 00 >/dev/null 2>&1
len=$(dd if=$sbc/rsoc bs=1 count=4 2>/dev/null | hexdump -v -e '/1 "%02x"')
n=$(( 0x$len / 8 ))
if [ "$n" -ge 44 ]; then pass sbc-opcodes-count "$n operation codes"; else fail sbc-opcodes-count "$n operation codes"; fi

# --- LOGICAL UNIT RESET (sg_reset -d) and I/O afterwards ---------------------------
sg=$(sgdev "$RESET_LUN") sd=$(blk "$RESET_LUN")
check "reset-lun-$RESET_LUN" sg_reset -d "/dev/$sg"
if out=$(dd if="/dev/$sd" of=/dev/null bs=64k count=16 iflag=direct 2>&1) && sg_turs "/dev/$sg" >/dev/null 2>&1; then
    pass "io-after-reset-$RESET_LUN" "read 1 MiB and TUR after the reset"
else
    fail "io-after-reset-$RESET_LUN" "$out"
fi

# --- known patterns the host checks in the image files after poweroff --------------
for p in $PATTERN_LUNS; do
    set -- $(echo "$p" | tr ':' ' ')
    tl=$1:$2 off=$3
    sd=$(blk "$tl")
    dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
    sum=$(md5sum /tmp/pat | cut -d' ' -f1)
    if out=$(dd if=/tmp/pat of="/dev/$sd" bs=1M seek=$((off / 1048576)) count=1 oflag=direct conv=fsync 2>&1); then
        back=$(dd if="/dev/$sd" bs=1M skip=$((off / 1048576)) count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$back" = "$sum" ]; then pass "pattern-$tl" "1 MiB at $off md5 $sum"; else fail "pattern-$tl" "read back $back wrote $sum"; fi
        echo "VSCSI-PATTERN $tl $off 1048576 $sum"
    else
        fail "pattern-$tl" "$out"
    fi
done
sync

# --- the LUN on an NBD export: its size, and a pattern through O_DIRECT -----------
# The host finds the pattern in the export's qcow2 after poweroff.
if [ -n "$NBD_LUN" ]; then
    sd=$(blk "$NBD_LUN")
    bytes=$(($(cat "/sys/block/$sd/size" 2>/dev/null || echo 0) * 512))
    if [ -n "$sd" ] && [ "$bytes" = "$NBD_SIZE" ]; then
        pass "nbd-size-$NBD_LUN" "/dev/$sd has $bytes bytes"
    else
        fail "nbd-size-$NBD_LUN" "block device '$sd' at $(devdir "$NBD_LUN") has $bytes bytes want $NBD_SIZE"
    fi
    dd if=/dev/urandom of=/tmp/nbdpat bs=1M count=1 2>/dev/null
    sum=$(md5sum /tmp/nbdpat | cut -d' ' -f1)
    mib=$((NBD_OFFSET / 1048576))
    if out=$(dd if=/tmp/nbdpat of="/dev/$sd" bs=1M seek=$mib count=1 oflag=direct 2>&1) && sync; then
        echo 3 >/proc/sys/vm/drop_caches
        back=$(dd if="/dev/$sd" bs=1M skip=$mib count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$back" = "$sum" ]; then
            pass "nbd-pattern-$NBD_LUN" "1 MiB at $NBD_OFFSET written with O_DIRECT, synced, read back: md5 $sum"
        else
            fail "nbd-pattern-$NBD_LUN" "read back $back wrote $sum"
        fi
        echo "VSCSI-PATTERN $NBD_LUN $NBD_OFFSET 1048576 $sum"
    else
        fail "nbd-pattern-$NBD_LUN" "$out"
    fi
fi

# wait_for SECONDS CMD...: run CMD every 0.1 s until it succeeds (0) or time is up (1).
wait_for() {
    _end=$(($(cut -d. -f1 /proc/uptime) + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(cut -d. -f1 /proc/uptime)" -ge $_end ] && return 1
        sleep 0.1
    done
}
since() { echo "$(now) $1" | awk '{printf "%.2f", $1-$2}'; }

# --- CD-ROM: sr device, iso9660, a file reads back, eject ----------------------------
dir=$(devdir "$CD_LUN") sr=$(blk "$CD_LUN") sg=$(sgdev "$CD_LUN")
type=$(cat "$dir/type" 2>/dev/null)
rem=$(cat "/sys/block/$sr/removable" 2>/dev/null)
lbs=$(cat "/sys/block/$sr/queue/logical_block_size" 2>/dev/null)
case $sr in sr*) isr=1 ;; *) isr=0 ;; esac
if [ "$type" = 5 ] && [ $isr = 1 ] && [ -b "/dev/$sr" ] && [ -n "$sg" ] && [ "$rem" = 1 ] && [ "$lbs" = 2048 ]; then
    pass "cd-present" "/dev/$sr /dev/$sg type=$type removable=$rem logical_block_size=$lbs"
else
    fail "cd-present" "at $dir: block='$sr' sg='$sg' type='$type' removable='$rem' lbs='$lbs' (want sr*, 5, 1, 2048)"
fi
mkdir -p /mnt/cd
if out=$(mount -t iso9660 -o ro "/dev/$sr" /mnt/cd 2>&1); then
    pass cd-mount "/dev/$sr as $(awk '$2 == "/mnt/cd" {print $3}' /proc/mounts)"
    sum=$(md5sum "/mnt/cd/$CD_FILE" 2>&1 | cut -d' ' -f1)
    if [ "$sum" = "$CD_MD5" ]; then pass cd-read "$CD_FILE md5 $sum"; else fail cd-read "$CD_FILE md5 '$sum' want $CD_MD5"; fi
    umount /mnt/cd
else
    fail cd-mount "$out"
fi
# eject(1): the CDROMEJECT ioctl, the kernel sends ALLOW MEDIUM REMOVAL and
# START STOP UNIT with LoEj; then TEST UNIT READY must say the medium is gone.
check cd-eject eject "/dev/$sr"
gone=0
for i in 1 2 3 4 5; do
    out=$(sg_turs -v "/dev/$sg" 2>&1) && { out="TUR answered GOOD"; continue; }
    if echo "$out" | grep -qi "not present"; then gone=1; break; fi
done
if [ $gone = 1 ]; then pass cd-gone "$(echo "$out" | grep -i 'not present' | head -n 1)"; else fail cd-gone "$out"; fi

# --- thin LUN: write 8 MiB, discard the first 6, the host sees ~2 MiB allocated -----
sd=$(blk "$THIN_LUN") dir=$(devdir "$THIN_LUN")
dmax=$(cat "/sys/block/$sd/queue/discard_max_bytes" 2>/dev/null)
pm=$(cat "$dir"/scsi_disk/*/provisioning_mode 2>/dev/null)
if [ "${dmax:-0}" -gt 0 ]; then
    pass thin-discard-limits "provisioning_mode=$pm discard_max_bytes=$dmax discard_granularity=$(cat "/sys/block/$sd/queue/discard_granularity")"
else
    fail thin-discard-limits "provisioning_mode=$pm discard_max_bytes=$dmax"
fi
dd if=/dev/urandom of=/tmp/thin bs=1M count=8 2>/dev/null
if out=$(dd if=/tmp/thin of="/dev/$sd" bs=1M count=8 oflag=direct conv=fsync 2>&1); then
    pass thin-write "8 MiB to /dev/$sd"
else
    fail thin-write "$out"
fi
check thin-blkdiscard blkdiscard -o 0 -l 6291456 "/dev/$sd"
want=$(dd if=/tmp/thin bs=1M skip=6 count=2 2>/dev/null | md5sum | cut -d' ' -f1)
got=$(dd if="/dev/$sd" bs=1M skip=6 count=2 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
if [ "$got" = "$want" ]; then pass thin-kept "MiB 6-8 kept: md5 $got"; else fail thin-kept "MiB 6-8 md5 $got want $want"; fi
echo "VSCSI-PATTERN $THIN_LUN 6291456 2097152 $want"
echo "VSCSI-THIN $THIN_LUN written=8388608 discarded=6291456"

# --- hot-plug: the host adds a LUN, resizes it and removes it (control socket) -------
# The hot LUN is the only one on its target: find it there by target, so a LUN
# number the kernel decoded differently is reported (hotplug-lun-number), not
# mistaken for a missing device.
hot_dir() { ls -d "/sys/bus/scsi/devices/$host:0:${HOT_LUN%%:*}:"* 2>/dev/null | head -n 1; }
hot_there() {
    hdir=$(hot_dir) && [ -n "$hdir" ] || return 1
    sd=$(ls "$hdir/block" 2>/dev/null | head -n 1) && [ -n "$sd" ] && [ -b "/dev/$sd" ]
}
t0=$(now)
echo "VSCSI-WAIT hotplug-add"
if wait_for 20 hot_there; then
    hot_there
    if [ "${hdir##*/}" = "$host:0:$HOT_LUN" ]; then
        pass hotplug-lun-number "the kernel added ${hdir##*/}"
    else
        fail hotplug-lun-number "the kernel added ${hdir##*/}, not $host:0:$HOT_LUN: the TRANSPORT_RESET event's LUN field must use the REPORT LUNS encoding (flat-space bit only for LUN >= 256), which Linux virtio_scsi takes as the LUN number"
    fi
    bytes=$(($(cat "/sys/block/$sd/size") * 512))
    if [ "$bytes" = "$HOT_SIZE" ]; then
        pass hotplug-add "/dev/$sd appeared $(since "$t0") s after the marker, no manual rescan, $bytes bytes"
    else
        fail hotplug-add "/dev/$sd has $bytes bytes want $HOT_SIZE"
    fi
    dd if=/dev/urandom of=/tmp/hot bs=1M count=1 2>/dev/null
    sum=$(md5sum /tmp/hot | cut -d' ' -f1)
    if out=$(dd if=/tmp/hot of="/dev/$sd" bs=1M count=1 oflag=direct conv=fsync 2>&1); then
        back=$(dd if="/dev/$sd" bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
        if [ "$back" = "$sum" ]; then pass hotplug-io "1 MiB written and read back: md5 $sum"; else fail hotplug-io "read back $back wrote $sum"; fi
        echo "VSCSI-PATTERN $HOT_LUN 0 1048576 $sum"
    else
        fail hotplug-io "$out"
    fi

    hot_resized() { [ "$(cat "/sys/block/$sd/size")" = $((HOT_NEW_SIZE / 512)) ]; }
    t0=$(now)
    echo "VSCSI-WAIT hotplug-resize"
    if wait_for 20 hot_resized; then
        if out=$(dd if="/dev/$sd" of=/dev/null bs=1M skip=$((HOT_NEW_SIZE / 1048576 - 1)) count=1 iflag=direct 2>&1); then
            pass hotplug-resize "/sys/block/$sd/size=$(cat "/sys/block/$sd/size") $(since "$t0") s after the marker; last MiB readable"
        else
            fail hotplug-resize "new size seen but reading the last MiB failed: $out"
        fi
    else
        fail hotplug-resize "/sys/block/$sd/size=$(cat "/sys/block/$sd/size") after 20 s, want $((HOT_NEW_SIZE / 512))"
    fi

    hot_gone() { [ ! -e "$hdir" ] && [ ! -e "/sys/block/$sd" ]; }
    t0=$(now)
    echo "VSCSI-WAIT hotplug-remove"
    if wait_for 20 hot_gone; then
        pass hotplug-remove "$hdir and /sys/block/$sd gone $(since "$t0") s after the marker"
    else
        fail hotplug-remove "$hdir still there after 20 s"
    fi
else
    fail hotplug-add "no block device on target ${HOT_LUN%%:*} 20 s after the marker ($(ls /sys/bus/scsi/devices | tr '\n' ' '))"
    echo "VSCSI-WAIT hotplug-resize"
    echo "VSCSI-WAIT hotplug-remove"
fi

# --- a slow LUN (latency fault set by the host) delays reads but never hangs ---------
sd=$(blk "$SLOW_LUN")
# timed_read COUNT: seconds that COUNT direct 64 KiB reads take (timeout 60 s).
timed_read() {
    _a=$(now)
    timeout 60 dd if="/dev/$sd" of=/dev/null bs=64k count=$1 iflag=direct >/dev/null 2>&1 || return 1
    since "$_a"
}
base=$(timed_read 4)
slow_now() { _t=$(timed_read 1) && [ "$(echo "$_t $SLOW_MS" | awk '{print ($1 * 1000 >= $2 * 0.75)}')" = 1 ]; }
fast_now() { _t=$(timed_read 1) && [ "$(echo "$_t $SLOW_MS" | awk '{print ($1 * 1000 < $2 * 0.5)}')" = 1 ]; }
echo "VSCSI-WAIT fault-set"
if wait_for 20 slow_now; then
    if took=$(timed_read 4); then
        if [ "$(echo "$took $SLOW_MS" | awk '{print ($1 * 1000 >= 4 * $2 * 0.9)}')" = 1 ]; then
            pass fault-slow "4 reads took $took s with latency=${SLOW_MS}ms (before: $base s), all completed"
        else
            fail fault-slow "4 reads took $took s with latency=${SLOW_MS}ms, want >= $((4 * SLOW_MS * 9 / 10)) ms (before: $base s)"
        fi
    else
        fail fault-slow "reads failed or did not complete in 60 s"
    fi
else
    fail fault-slow "a read never took ${SLOW_MS} ms in 20 s after the marker (before: $base s)"
fi
t0=$(now)
echo "VSCSI-WAIT fault-clear"
if wait_for 20 fast_now && took=$(timed_read 4); then
    pass fault-clear "back to normal $(since "$t0") s after the marker: 4 reads in $took s"
else
    fail fault-clear "reads still slow 20 s after the marker"
fi

# The kernel's view of our devices (the console runs with `quiet`).
dmesg | grep -iE 'scsi|sd[a-z]|sr[0-9]|virtio|ext4|isofs|i/o error|reset|blk_|discard|capacity' | tail -n 80 | sed 's/^/VSCSI-DMESG /'
log "battery end uptime=$(now)"

# The guest side of harness/tests/qemu_multipath.rs: runs inside the busybox
# initramfs built by images/build-guest.sh, after the host prepended:
#
#   SERIAL=...       the shared LUN's configured serial number
#   SIZE=BYTES       its size
#   KEY_A=HEX KEY_B=HEX   the reservation keys each path registers
#
# The guest has two virtio-scsi HBAs (two vhost-user-scsi-pci devices), one
# per controller of one daemon; both serve the same writable image at 0:0
# (shared = true). Path A is the first HBA, path B the second.
#
# Prints `VSCSI-RESULT <name> PASS|FAIL|SKIP <detail>` per check and
# `VSCSI-PATTERN <path> <offset> <length> <md5>` for the host to check the
# image after poweroff.

result() { echo "VSCSI-RESULT $1 $2 $(echo "${3:-}" | tr '\n' ' ' | cut -c1-300)"; }
pass() { result "$1" PASS "${2:-}"; }
fail() { result "$1" FAIL "${2:-}"; }
log() { echo "VSCSI-LOG $*"; }
now() { cut -d' ' -f1 /proc/uptime; }

log "multipath start uptime=$(now)"

# --- the two paths ------------------------------------------------------------------
hosts=""
for h in /sys/class/scsi_host/host*; do
    [ "$(cat "$h/proc_name" 2>/dev/null)" = virtio_scsi ] && hosts="$hosts ${h##*/host}"
done
hosts=$(echo $hosts | tr ' ' '\n' | sort -n | tr '\n' ' ')
set -- $hosts
if [ $# != 2 ]; then
    fail hbas "want 2 virtio_scsi hosts, found: $hosts"
    exit 1
fi
ha=$1 hb=$2
pass hbas "host$ha host$hb"
dev_of() { ls "/sys/bus/scsi/devices/$1:0:0:0/$2" 2>/dev/null | head -n 1; }
i=0
while [ $i -lt 100 ]; do
    sda=$(dev_of "$ha" block) sdb=$(dev_of "$hb" block)
    sga=$(dev_of "$ha" scsi_generic) sgb=$(dev_of "$hb" scsi_generic)
    [ -n "$sda" ] && [ -n "$sdb" ] && [ -n "$sga" ] && [ -n "$sgb" ] && break
    sleep 0.1
    i=$((i + 1))
done
if [ -z "$sda" ] || [ -z "$sdb" ] || [ -z "$sga" ] || [ -z "$sgb" ]; then
    fail paths "A: '$sda' '$sga', B: '$sdb' '$sgb' (want a disk and an sg node on each)"
    exit 1
fi
pass paths "A: /dev/$sda /dev/$sga, B: /dev/$sdb /dev/$sgb"

# --- one logical unit, two target ports (VPD 83h, 80h) ------------------------------
di_a=$(sg_vpd -p di "/dev/$sga" 2>&1)
di_b=$(sg_vpd -p di "/dev/$sgb" 2>&1)
log "path A VPD 83h: $di_a"
# NAA designators of the logical unit part, then of the target port part.
lu_naa() { echo "$1" | sed -n '/Addressed logical unit:/,/Target port:/p' | grep -o '0x[0-9a-f]\{16\}'; }
port_naa() { echo "$1" | sed -n '/Target port:/,$p' | grep -o '0x[0-9a-f]\{16\}'; }
relport() { echo "$1" | sed -n 's/.*Relative target port: *//p'; }
wa=$(lu_naa "$di_a") wb=$(lu_naa "$di_b")
if [ -n "$wa" ] && [ "$wa" = "$wb" ]; then
    pass mp-same-wwn "NAA $wa on both paths"
else
    fail mp-same-wwn "A '$wa' B '$wb'"
fi
# What Linux itself derived from page 83h.
ida=$(cat "/sys/class/scsi_device/$ha:0:0:0/device/wwid" 2>/dev/null)
idb=$(cat "/sys/class/scsi_device/$hb:0:0:0/device/wwid" 2>/dev/null)
if [ -n "$ida" ] && [ "$ida" = "$idb" ]; then
    pass mp-same-sysfs-wwid "$ida"
else
    fail mp-same-sysfs-wwid "A '$ida' B '$idb'"
fi
sa=$(sg_vpd -p sn "/dev/$sga" 2>&1 | sed -n 's/.*Unit serial number: *//p')
sb=$(sg_vpd -p sn "/dev/$sgb" 2>&1 | sed -n 's/.*Unit serial number: *//p')
if [ "$sa" = "$SERIAL" ] && [ "$sb" = "$SERIAL" ]; then
    pass mp-same-serial "$sa"
else
    fail mp-same-serial "A '$sa' B '$sb' want '$SERIAL'"
fi
ra=$(relport "$di_a") rb=$(relport "$di_b")
if [ -n "$ra" ] && [ -n "$rb" ] && [ "$ra" != "$rb" ]; then
    pass mp-relative-ports "A $ra B $rb"
else
    fail mp-relative-ports "A '$ra' B '$rb' (want two different relative target ports)"
fi
pa=$(port_naa "$di_a") pb=$(port_naa "$di_b")
if [ -n "$pa" ] && [ -n "$pb" ] && [ "$pa" != "$pb" ] && [ "$pa" != "$wa" ]; then
    pass mp-port-names "A $pa B $pb"
else
    fail mp-port-names "A '$pa' B '$pb' LU '$wa' (want two port names, neither the LU's)"
fi

# --- persistent reservations over both paths ---------------------------------------
# sg_persist without its INQUIRY; unit attentions (a reservation released or
# preempted by the other path) are reported once, so retry past them.
prst() {
    for _t in 1 2 3; do
        _o=$(sg_persist -n "$@" 2>&1)
        _rc=$?
        echo "$_o" | grep -qi "unit attention" || break
    done
    echo "$_o"
    return $_rc
}
# raw_io SG r|w LBA: one READ(10) / WRITE(10) of one 512-byte block with
# sg_raw, whose output says the SCSI status.
dd if=/dev/urandom of=/tmp/blk bs=512 count=1 2>/dev/null
raw_io() {
    _l=$(printf '%08x' "$3" | sed 's/../& /g')
    for _t in 1 2 3; do
        if [ "$2" = w ]; then
            # shellcheck disable=SC2086
            _o=$(sg_raw -s 512 -i /tmp/blk "/dev/$1" 2a 00 $_l 00 00 01 00 2>&1)
        else
            # shellcheck disable=SC2086
            _o=$(sg_raw -r 512 -o /dev/null "/dev/$1" 28 00 $_l 00 00 01 00 2>&1)
        fi
        _rc=$?
        echo "$_o" | grep -qi "unit attention" || break
    done
    echo "rc=$_rc $_o"
    return $_rc
}
# expect_conflict NAME SG r|w: the command must end in RESERVATION CONFLICT.
expect_conflict() {
    _o=$(raw_io "$2" "$3" 1000)
    if echo "$_o" | grep -qi "reservation conflict"; then
        pass "$1" "RESERVATION CONFLICT"
    else
        fail "$1" "$_o"
    fi
}
# expect_good NAME SG r|w: the command must succeed.
expect_good() {
    if _o=$(raw_io "$2" "$3" 1000); then pass "$1"; else fail "$1" "$_o"; fi
}
# step NAME sg_persist-args...: a PR command that must succeed.
step() {
    _n=$1
    shift
    if _o=$(prst "$@"); then pass "$_n"; else fail "$_n" "sg_persist $* -> $_o"; fi
}
has_keys() { prst --in --read-keys "/dev/$1"; }
reservation() { prst --in --read-reservation "/dev/$1"; }

out=$(has_keys "$sga")
if echo "$out" | grep -q "NO registered reservation keys"; then
    pass pr-none-at-start
else
    fail pr-none-at-start "$out"
fi
step pr-register-a --out --register --param-sark="$KEY_A" "/dev/$sga"
step pr-register-b --out --register --param-sark="$KEY_B" "/dev/$sgb"
out=$(has_keys "$sga")
if echo "$out" | grep -qi "0x$KEY_A" && echo "$out" | grep -qi "0x$KEY_B"; then
    pass pr-keys-both "$(echo "$out" | grep -c "^ *0x") keys"
else
    fail pr-keys-both "$out"
fi
out=$(prst --in --read-full-status "/dev/$sgb")
log "READ FULL STATUS: $out"
if echo "$out" | grep -qi "Relative port address: 0x1" &&
    echo "$out" | grep -qi "Relative port address: 0x2"; then
    pass pr-full-status-ports "registrations through relative ports 1 and 2"
else
    fail pr-full-status-ports "$out"
fi

# Write Exclusive (1): only the holder writes; everyone reads.
step pr-we-reserve-a --out --reserve --param-rk="$KEY_A" --prout-type=1 "/dev/$sga"
out=$(reservation "$sgb")
if echo "$out" | grep -qi "Key=0x$KEY_A" && echo "$out" | grep -qi "type: Write Exclusive *$"; then
    pass pr-we-seen-on-b
else
    fail pr-we-seen-on-b "$out"
fi
expect_conflict pr-we-write-b-registered "$sgb" w
expect_good pr-we-read-b "$sgb" r
expect_good pr-we-write-a "$sga" w
step pr-unregister-b --out --register --param-rk="$KEY_B" --param-sark=0 "/dev/$sgb"
expect_conflict pr-we-write-b-unregistered "$sgb" w
step pr-we-release-a --out --release --param-rk="$KEY_A" --prout-type=1 "/dev/$sga"
out=$(reservation "$sgb")
if echo "$out" | grep -q "NO reservation held"; then
    pass pr-we-released
else
    fail pr-we-released "$out"
fi
expect_good pr-write-b-no-reservation "$sgb" w

# Write Exclusive, registrants only (5): registrants write, others do not.
step pr-wero-reserve-a --out --reserve --param-rk="$KEY_A" --prout-type=5 "/dev/$sga"
expect_conflict pr-wero-write-b-unregistered "$sgb" w
expect_good pr-wero-read-b-unregistered "$sgb" r
step pr-wero-register-b --out --register --param-sark="$KEY_B" "/dev/$sgb"
expect_good pr-wero-write-b-registered "$sgb" w
step pr-wero-release-a --out --release --param-rk="$KEY_A" --prout-type=5 "/dev/$sga"

# Exclusive Access (3): the other path may not even read.
step pr-ea-reserve-a --out --reserve --param-rk="$KEY_A" --prout-type=3 "/dev/$sga"
expect_conflict pr-ea-read-b "$sgb" r
expect_good pr-ea-read-a "$sga" r
step pr-ea-release-a --out --release --param-rk="$KEY_A" --prout-type=3 "/dev/$sga"

# Write Exclusive, all registrants (7): every registrant holds it.
step pr-wear-reserve-a --out --reserve --param-rk="$KEY_A" --prout-type=7 "/dev/$sga"
out=$(reservation "$sgb")
if echo "$out" | grep -qi "type: Write Exclusive, all registrants"; then
    pass pr-wear-seen-on-b
else
    fail pr-wear-seen-on-b "$out"
fi
expect_good pr-wear-write-b-registered "$sgb" w
step pr-wear-unregister-b --out --register --param-rk="$KEY_B" --param-sark=0 "/dev/$sgb"
expect_conflict pr-wear-write-b-unregistered "$sgb" w
step pr-wear-register-b --out --register --param-sark="$KEY_B" "/dev/$sgb"
step pr-wear-release-a --out --release --param-rk="$KEY_A" --prout-type=7 "/dev/$sga"

# PREEMPT from B: A's registration and its Write Exclusive reservation go to
# B; A, no longer registered, is refused writes (after its unit attention).
step pr-preempt-reserve-a --out --reserve --param-rk="$KEY_A" --prout-type=1 "/dev/$sga"
step pr-preempt-b --out --preempt --param-rk="$KEY_B" --param-sark="$KEY_A" --prout-type=1 "/dev/$sgb"
out=$(reservation "$sga")
if echo "$out" | grep -qi "Key=0x$KEY_B"; then
    pass pr-preempt-holder-b
else
    fail pr-preempt-holder-b "$out"
fi
out=$(has_keys "$sga")
if echo "$out" | grep -qi "0x$KEY_B" && ! echo "$out" | grep -qi "0x$KEY_A"; then
    pass pr-preempt-a-unregistered
else
    fail pr-preempt-a-unregistered "$out"
fi
expect_conflict pr-preempt-write-a "$sga" w
expect_good pr-preempt-write-b "$sgb" w

# CLEAR from B: no keys, no reservation left.
step pr-clear --out --clear --param-rk="$KEY_B" "/dev/$sgb"
out=$(has_keys "$sga")
if echo "$out" | grep -q "NO registered reservation keys"; then
    pass pr-cleared
else
    fail pr-cleared "$out"
fi

# --- I/O through both paths -----------------------------------------------------------
# 1 MiB written through A at 4 MiB read back through B, and the other way at 6 MiB.
io_check() { # NAME FROM_SD TO_SD MIB
    dd if=/dev/urandom of=/tmp/pat bs=1M count=1 2>/dev/null
    want=$(md5sum </tmp/pat | cut -d' ' -f1)
    if ! _o=$(dd if=/tmp/pat of="/dev/$2" bs=1M seek="$4" count=1 oflag=direct conv=fsync 2>&1); then
        fail "$1" "write through /dev/$2: $_o"
        return
    fi
    got=$(dd if="/dev/$3" bs=1M skip="$4" count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    if [ "$got" = "$want" ]; then
        pass "$1" "written on /dev/$2, read on /dev/$3: md5 $got"
        echo "VSCSI-PATTERN $1 $(($4 * 1048576)) 1048576 $want"
    else
        fail "$1" "read $got through /dev/$3, wrote $want through /dev/$2"
    fi
}
io_check mp-io-a-to-b "$sda" "$sdb" 4
io_check mp-io-b-to-a "$sdb" "$sda" 6

log "multipath end uptime=$(now)"

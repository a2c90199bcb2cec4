#!/bin/sh
# /init of the vscsi test guest (built by images/build-guest.sh).
#
# Mounts the pseudo file systems, loads the modules listed in
# /etc/vscsi-modules (in dependency order), finds the test script, runs it and
# powers off. Everything goes to the serial console (console=ttyS0):
#
#   VSCSI-INIT uptime=<s> kernel=<release>    init started (boot time)
#   ...the script's own lines, by convention:
#   VSCSI-RESULT <name> PASS|FAIL|SKIP <detail>
#   VSCSI-DONE rc=<exit status of the script> uptime=<s>
#
# The test script comes, in this order of preference, from:
#   - the kernel command line: vscsi.sh=<base64 of the script> (small scripts:
#     the command line holds at most 2 KiB);
#   - the QEMU config blob: -fw_cfg name=opt/vscsi/script,file=test.sh
#     (/sys/firmware/qemu_fw_cfg/by_name/opt/vscsi/script/raw);
#   - a config disk: a virtio-blk (-drive if=virtio) or SCSI disk whose first bytes are
#     "#!/bin/sh # vscsi-config", the script itself padded with NUL bytes
#     (not used by the test; handy by hand).
# vscsi.shell=1 on the command line gives a shell on the console instead of
# powering off at the end.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/shm /dev/pts && mount -t tmpfs tmpfs /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

uptime() { cut -d' ' -f1 /proc/uptime; }
echo "VSCSI-INIT uptime=$(uptime) kernel=$(cat /etc/vscsi-kernel-version)"

cmdline=$(cat /proc/cmdline)
param() { # value of vscsi.<name>= on the kernel command line
    for w in $cmdline; do
        case $w in "vscsi.$1="*) echo "${w#vscsi.$1=}"; return 0 ;; esac
    done
    return 1
}

while read -r mod args; do
    [ -n "$mod" ] || continue
    # scsi_mod: scan synchronously, so every LUN is there when insmod returns.
    case $mod in scsi_mod.ko) args="$args scan=sync" ;; esac
    # shellcheck disable=SC2086
    insmod "/lib/modules/$mod" $args 2>/tmp/insmod.err ||
        grep -q "File exists" /tmp/insmod.err ||
        echo "VSCSI-INFO insmod $mod failed: $(cat /tmp/insmod.err)"
done </etc/vscsi-modules
echo "VSCSI-INFO modules loaded uptime=$(uptime)"

script=/tmp/vscsi-test.sh
fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/vscsi/script/raw
if b64=$(param sh); then
    echo "$b64" | base64 -d >"$script"
elif [ -r "$fwcfg" ]; then
    cat "$fwcfg" >"$script"
else
    for d in /dev/vd? /dev/sd?; do
        [ -b "$d" ] || continue
        if [ "$(head -c 24 "$d" 2>/dev/null)" = "#!/bin/sh # vscsi-config" ]; then
            head -c 1048576 "$d" | tr -d '\000' >"$script"
            break
        fi
    done
fi

rc=1
if [ -s "$script" ]; then
    chmod +x "$script"
    sh "$script"
    rc=$?
else
    echo "VSCSI-RESULT init FAIL no test script (vscsi.sh=, fw_cfg opt/vscsi/script or a config disk)"
fi
sync
echo "VSCSI-DONE rc=$rc uptime=$(uptime)"

if param shell >/dev/null; then
    setsid cttyhack sh
fi
poweroff -f

#!/usr/bin/env bash
# Builds the QEMU guest boot image for the Linux guest test (issue 7):
#
#   images/build-guest.sh [CACHE_DIR]
#
# into CACHE_DIR (default $XDG_CACHE_HOME/vscsi/guest, or ~/.cache/vscsi/guest):
#
#   vmlinuz               the Debian kernel (linux-image-amd64), copied from /boot
#   initramfs.cpio.gz     busybox (static), the SCSI / virtio / sd / sr+cdrom / ext4 / isofs modules
#                         with their modules.dep dependencies, sg3-utils, fio,
#                         mkfs.ext4 and eject with exactly the shared libraries ldd lists,
#                         and images/guest-init.sh as /init
#   kernel-version        the kernel release the modules come from
#   stamp                 hash of every input; when it matches, nothing is rebuilt
#
# Everything comes from Debian packages already installed on this machine:
#   qemu-system-x86 (to run it), linux-image-amd64, busybox-static, sg3-utils,
#   fio, e2fsprogs, cpio, eject.
# Idempotent: a second run with unchanged inputs only recomputes the stamp (well
# under a second) and prints the paths. Set VSCSI_GUEST_KERNEL=<release> to pick
# a kernel other than the newest one installed. Output goes to a fresh folder that
# is renamed into place, so an interrupted build never leaves a half image.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/vscsi/guest}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

die() { echo "build-guest: $*" >&2; exit 1; }
need_pkg() { die "$1 not found: install the Debian package(s): $2 (apt-get install $2)"; }

# --- inputs -------------------------------------------------------------------
if [ -n "${VSCSI_GUEST_KERNEL:-}" ]; then
    kver=$VSCSI_GUEST_KERNEL
else
    kver=""
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [ -f "/lib/modules/$k/modules.dep" ] && kver=$k
    done
fi
[ -n "$kver" ] || need_pkg "a kernel in /boot with its /lib/modules" linux-image-amd64
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kernel" ] || die "$kernel is not readable"
[ -f "$moddir/modules.dep" ] || die "$moddir/modules.dep missing (run depmod $kver)"

busybox=/bin/busybox
[ -x "$busybox" ] || need_pkg "$busybox" busybox-static
if ldd "$busybox" >/dev/null 2>&1 && ! ldd "$busybox" 2>&1 | grep -q "not a dynamic"; then
    die "$busybox is dynamically linked: install busybox-static (it replaces busybox)"
fi
command -v cpio >/dev/null || need_pkg cpio cpio
command -v gzip >/dev/null || need_pkg gzip gzip

# The tools the guest test script uses, beyond busybox.
sg_tools="sg_inq sg_vpd sg_readcap sg_luns sg_turs sg_modes sg_requests sg_sync sg_opcodes sg_reset sg_raw sg_map sg_write_same sg_unmap sg_get_lba_status sg_start sg_persist"
bins=()
for t in $sg_tools; do
    p=$(command -v "$t" 2>/dev/null) || need_pkg "$t" sg3-utils
    bins+=("$p")
done
p=$(command -v fio 2>/dev/null) || need_pkg fio fio
bins+=("$p")
# util-linux eject(1) (busybox-static has no eject applet): CDROMEJECT, the way
# a user ejects a CD-ROM.
p=$(command -v eject 2>/dev/null) || need_pkg eject eject
bins+=("$p")
for t in mkfs.ext4 mke2fs e2fsck; do
    p=$(PATH=$PATH:/sbin:/usr/sbin command -v "$t" 2>/dev/null) || need_pkg "$t" e2fsprogs
    bins+=("$p")
done

# Modules: what the test needs (sr_mod brings cdrom; isofs mounts the CD-ROM
# LUN), each with its dependencies from modules.dep
# (already in load order: a module's line lists what it needs, deepest last),
# plus the crypto algorithms that are soft dependencies (ext4 needs crc32c,
# sd_mod's crc-t10dif wants crct10dif).
wanted="virtio_pci virtio_scsi virtio_blk scsi_mod sd_mod sr_mod sg ext4 isofs crc32c_generic crct10dif_generic qemu_fw_cfg"
declare -A seen=()
order=()
add_module() { # $1: path relative to $moddir, with its dependencies first
    local rel=$1 dep
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    local line
    line=$(grep -m1 "^$rel:" "$moddir/modules.dep" || true)
    local deps=${line#*:}
    local rev=()
    for dep in $deps; do rev=("$dep" "${rev[@]}"); done
    for dep in "${rev[@]}"; do add_module "$dep"; done
    order+=("$rel")
}
builtin_list=$moddir/modules.builtin
for m in $wanted; do
    # module names may use - or _ interchangeably
    pat="${m//_/[-_]}"
    rel=$(grep -m1 -E "(^|/)$pat\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | cut -d: -f1 || true)
    if [ -z "$rel" ]; then
        if [ -f "$builtin_list" ] && grep -qE "(^|/)$pat\.ko$" "$builtin_list"; then
            continue # built into the kernel
        fi
        case $m in
            crc32c_generic|crct10dif_generic|qemu_fw_cfg|virtio_blk) continue ;; # optional
        esac
        die "kernel module $m is neither in $moddir/modules.dep nor built in"
    fi
    add_module "$rel"
done

libs() { # the shared libraries ldd lists for the given binaries, and the loader
    ldd "$@" 2>/dev/null | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | sort -u
}
mapfile -t libfiles < <(libs "${bins[@]}")

init=$here/guest-init.sh
[ -f "$init" ] || die "$init missing"

# --- the stamp: every input's path, size and mtime, and this script ------------
stamp_of() {
    {
        echo "kver=$kver"
        sha256sum "$0" "$init"
        for f in "$kernel" "$busybox" "${bins[@]}" "${libfiles[@]}" "$moddir/modules.dep"; do
            stat -L -c '%n %s %Y' "$f"
        done
        for m in "${order[@]}"; do stat -L -c '%n %s %Y' "$moddir/$m"; done
    } | sha256sum | cut -d' ' -f1
}
stamp=$(stamp_of)
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] \
    && [ -f "$cache/vmlinuz" ] && [ -f "$cache/initramfs.cpio.gz" ]; then
    echo "guest image up to date: $cache (kernel $kver)" >&2
    echo "$cache/vmlinuz"
    echo "$cache/initramfs.cpio.gz"
    exit 0
fi

# --- build ---------------------------------------------------------------------
exec 9>"$cache/.lock"
flock 9
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,mnt,run,root,lib/modules}

cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done

for b in "${bins[@]}"; do
    dest=$root/usr/bin/$(basename "$b")
    rm -f "$dest"
    cp -L "$b" "$dest"
done
for l in "${libfiles[@]}"; do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
done
# The loader is looked up at /lib64/ld-linux-x86-64.so.2; /lib and /usr/lib paths
# from ldd are copied as they are, so no ld.so.cache is needed beyond them.
mkdir -p "$root/etc"
{
    for l in "${libfiles[@]}"; do dirname "$l"; done | sort -u
} >"$root/etc/ld.so.conf"
if command -v ldconfig >/dev/null || [ -x /sbin/ldconfig ]; then
    PATH=$PATH:/sbin ldconfig -r "$root" 2>/dev/null || true
fi

# Modules, decompressed (busybox insmod reads plain .ko), in load order.
: >"$root/etc/vscsi-modules"
for m in "${order[@]}"; do
    name=$(basename "$m")
    case $name in
        *.ko.xz) xz -dc "$moddir/$m" >"$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$m" >"$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz) gzip -dc "$moddir/$m" >"$root/lib/modules/${name%.gz}"; name=${name%.gz} ;;
        *) cp "$moddir/$m" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >>"$root/etc/vscsi-modules"
done

cp "$init" "$root/init"
chmod 755 "$root/init"
echo "$kver" >"$root/etc/vscsi-kernel-version"

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -6 -n >"$work/initramfs.cpio.gz"
cp "$kernel" "$work/vmlinuz"
echo "$kver" >"$work/kernel-version"

mv -f "$work/vmlinuz" "$cache/vmlinuz"
mv -f "$work/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
mv -f "$work/kernel-version" "$cache/kernel-version"
echo "$stamp" >"$cache/stamp"
size=$(du -h "$cache/initramfs.cpio.gz" | cut -f1)
echo "guest image built: $cache (kernel $kver, initramfs $size, ${#order[@]} modules)" >&2
echo "$cache/vmlinuz"
echo "$cache/initramfs.cpio.gz"

#!/usr/bin/env bash
# Builds a bootable Debian 12 cloud image (qcow2) from Debian's packages only:
#   scripts/build-debian-image.sh OUT.qcow2
#
# mmdebstrap makes the root file system (linux-image-cloud-amd64, systemd, cloud-init,
# openssh-server, qemu-guest-agent, DHCP on the first NIC, iperf3 for bench/network.py,
# not started as a service); it goes onto one ext4
# partition of a 3 GiB disk with EXTLINUX (BIOS) installed, serial console on ttyS0. The
# result is cached under build/images/, keyed by this script's content: a second run
# copies the cached image. Runs as root (loop device, mount, extlinux).
set -euo pipefail

out=${1:?usage: $0 OUT.qcow2}
here=$(cd "$(dirname "$0")/.." && pwd)
cache_dir="$here/build/images"
key=$(sha256sum "$0" | cut -c1-16)
cached="$cache_dir/debian-12-$key.qcow2"
log() { echo "build-debian-image: $*" >&2; }

if [[ -f $cached ]]; then
    log "cached: $cached"
    cp --sparse=always "$cached" "$out"
    exit 0
fi
[[ $(id -u) == 0 ]] || { log "must run as root (loop device, mount)"; exit 1; }

# shellcheck source=lib/host.sh
source "$here/scripts/lib/host.sh"
HOST_LOG_TAG=build-debian-image
tools=(mmdebstrap:mmdebstrap extlinux:extlinux sfdisk:fdisk mkfs.ext4:e2fsprogs)
need=()
for tool in "${tools[@]}"; do
    have "${tool%%:*}" || need+=("${tool#*:}")
done
[[ -f /usr/lib/syslinux/mbr/mbr.bin ]] || need+=(syslinux-common)
# qemu-img only ever as part of QEMU's matching set.
if ! have qemu-img; then
    qemu_set_text=$(qemu_package_set) || exit 1
    mapfile -t -O "${#need[@]}" need < <(printf '%s' "$qemu_set_text")
fi
apt_install "${need[@]}"
for tool in "${tools[@]}" qemu-img:qemu-utils; do
    have "${tool%%:*}" || { log "missing after install: ${tool%%:*} (Debian's ${tool#*:})"; exit 1; }
done

work=$(mktemp -d /var/tmp/corral-debimg.XXXXXX)
loop=""
cleanup() {
    set +e
    mountpoint -q "$work/mnt" && umount -R "$work/mnt"
    [[ -n $loop ]] && losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT

packages=linux-image-cloud-amd64,systemd-sysv,udev,cloud-init,openssh-server
packages+=,qemu-guest-agent,ifupdown,isc-dhcp-client,netbase,sudo,ca-certificates
# dbus: without it systemd-logind does not run, and then neither the ACPI power button
# nor the guest agent's `shutdown -h +0` powers the guest off.
packages+=,dbus
# iperf3's debconf question (run it as a daemon?) defaults to no: the benchmark starts it.
packages+=,iperf3
log "root file system (mmdebstrap, bookworm)"
mmdebstrap --variant=minbase --include="$packages" \
    --customize-hook='echo debian > "$1/etc/hostname"' \
    --customize-hook='printf "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n" > "$1/etc/network/interfaces"' \
    --customize-hook='rm -f "$1/etc/ssh/ssh_host_"*' \
    --customize-hook='truncate -s 0 "$1/etc/machine-id"' \
    bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null

# cloud-init: the NoCloud seed (cidata) Corral attaches, and Debian's default user.
cat > "$work/rootfs/etc/cloud/cloud.cfg.d/90-corral.cfg" <<'EOF'
datasource_list: [ NoCloud, None ]
system_info:
  default_user:
    name: debian
    lock_passwd: true
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
EOF
# Host keys are made at first boot (cloud-init), so no two VMs share them.

log "disk: 3 GiB, one ext4 partition, EXTLINUX"
raw="$work/disk.raw"
truncate -s 3G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
loop=$(losetup -fP --show "$raw")
# Without udev the partition's device node may not appear by itself.
partx -a "$loop" 2>/dev/null || true
for _ in $(seq 50); do [[ -b ${loop}p1 ]] && break; sleep 0.1; done
mkfs.ext4 -q -L root "${loop}p1"
uuid=$(blkid -s UUID -o value "${loop}p1")
mkdir "$work/mnt"
mount "${loop}p1" "$work/mnt"
cp -a "$work/rootfs/." "$work/mnt/"
echo "UUID=$uuid / ext4 defaults,discard 0 1" > "$work/mnt/etc/fstab"
kernel=$(cd "$work/mnt/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=$(cd "$work/mnt/boot" && ls initrd.img-* | sort -V | tail -1)
mkdir -p "$work/mnt/boot/extlinux"
cat > "$work/mnt/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
DEFAULT debian
TIMEOUT 0
LABEL debian
    LINUX /boot/$kernel
    INITRD /boot/$initrd
    APPEND root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8
EOF
extlinux --install "$work/mnt/boot/extlinux" 2>/dev/null
umount "$work/mnt"
losetup -d "$loop"
loop=""
# The MBR's boot code starts the active partition's boot sector (EXTLINUX).
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

mkdir -p "$cache_dir"
qemu-img convert -q -f raw -O qcow2 "$raw" "$cached.tmp"
mv "$cached.tmp" "$cached"
cp --sparse=always "$cached" "$out"
log "done: $out ($(du -h "$cached" | cut -f1) allocated)"

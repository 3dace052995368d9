#!/usr/bin/env bash
# Build a tiny test guest (OUTDIR/vmlinuz + OUTDIR/initrd.img) for Corral's
# QEMU tests, from Debian packages only: the cloud kernel and busybox-static.
#
#   scripts/build-test-guest.sh OUTDIR
#
# The guest boots with `console=ttyS0 quiet`, loads the virtio drivers,
# brings up every NIC, lists its virtio disks, prints CORRAL-GUEST-READY on
# the serial console, powers off on the ACPI power button (QMP
# system_powerdown) and then serves a shell on the serial console. When QEMU
# offers the guest agent's channel (virtio port org.qemu.guest_agent.0) it
# runs the host's qemu-ga (Debian's qemu-guest-agent, copied in with the
# shared libraries it links) on it, in the background.
#
# Rebuilding is skipped when OUTDIR/.guest-stamp matches the hash of this
# script, the resolved package versions and the copied qemu-ga files, so
# callers may run it every time.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
# depmod/modprobe live in sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/sbin:/sbin" LC_ALL=C

# Modules the guest loads. Everything here is =m in Debian's cloud kernel
# (virtio core, virtio_pci and the device drivers, SCSI, and both pieces the
# power button needs: the ACPI `button` driver and `evdev` for acpid to read);
# its PS/2, serial console, devtmpfs and AF_PACKET are built in. pvpanic_mmio
# drives QEMU's ISA pvpanic device, so a guest panic is reported over QMP. ata_piix,
# sr_mod and isofs read CD-ROMs on the `pc` machine's IDE (a cloud-init seed, for
# one). virtio_balloon reports the guest's memory use (the metrics' balloon source).
# Dependencies (virtio_ring, net_failover, scsi_mod, libata, cdrom, ...) are
# added automatically.
MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net virtio_scsi sd_mod
    virtio_console virtio_rng virtio_balloon button evdev pvpanic_mmio ata_piix sr_mod isofs)

die() { echo "build-test-guest: $*" >&2; exit 1; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Tests may call this concurrently for the same OUTDIR; serialise them.
exec 9>"$OUT/.lock"
flock 9

# Host tools; install only what's missing (needs root, like apt-get update), through
# the one apt wrapper that refuses to remove anything (scripts/lib/host.sh).
# shellcheck source=lib/host.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/host.sh"
HOST_LOG_TAG=build-test-guest
tools=(cpio:cpio depmod:kmod modprobe:kmod gzip:gzip dpkg-deb:dpkg
    qemu-ga:qemu-guest-agent ldd:libc-bin)
missing=()
for t in "${tools[@]}"; do
    have "${t%%:*}" || missing+=("${t#*:}")
done
apt_install "${missing[@]}" || die "cannot install the missing host tools: ${missing[*]}"
for t in "${tools[@]}"; do
    have "${t%%:*}" || die "missing after install: ${t%%:*} (Debian's ${t#*:})"
done

# The metapackage pins the current ABI package exactly, e.g. "Depends:
# linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)". One apt-cache call only:
# each costs ~0.7 s when apt keeps no binary cache (Debian's docker images).
resolve() {
    kpkg='' kver='' bbver=''
    read -r kpkg kver bbver < <(apt-cache show --no-all-versions \
        linux-image-cloud-amd64 busybox-static 2>/dev/null | awk '
        /^Package:/ { p = $2 }
        p == "linux-image-cloud-amd64" && /^Depends:/ &&
            match($0, /linux-image-[0-9][^ ,]* \(= [^)]*\)/) {
            split(substr($0, RSTART, RLENGTH), a, /[ ()=]+/); kp = a[1]; kv = a[2]
        }
        p == "busybox-static" && /^Version:/ { bv = $2 }
        END { print kp, kv, bv }') || true
    [[ -n $kpkg && -n $kver && -n $bbver ]]
}
# Lists are only refreshed when they can't answer (e.g. a fresh container).
resolve || { apt-get update -qq >&2 && resolve; } ||
    die "cannot resolve linux-image-cloud-amd64 / busybox-static with apt-cache"

# The guest agent is the host's own binary (scripts/setup.sh installs Debian's
# qemu-guest-agent) with the libraries ldd resolves for it: the same Debian
# userland, so no second download and no version skew.
QGA=$(command -v qemu-ga)
mapfile -t QGA_LIBS < <(ldd "$QGA" |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
((${#QGA_LIBS[@]})) || die "ldd found no libraries for $QGA"

stamp=$( { sha256sum <"$SELF"; echo "$kpkg $kver busybox-static $bbver"
    sha256sum "$QGA" "${QGA_LIBS[@]}"; } | sha256sum | cut -d' ' -f1)
if [[ -f $OUT/vmlinuz && -f $OUT/initrd.img && -f $OUT/.guest-stamp &&
      $(cat "$OUT/.guest-stamp") == "$stamp" ]]; then
    echo "test guest up to date: $OUT/vmlinuz $OUT/initrd.img ($kpkg $kver)"
    exit 0
fi

# Build next to the outputs so the final renames stay on one filesystem.
work=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/debs"

download() {
    (cd "$work/debs" && apt-get -q -o APT::Sandbox::User=root download \
        "$kpkg=$kver" "busybox-static=$bbver" >&2)
}
if ! download; then
    # Stale lists name versions the mirror no longer has: refresh and retry.
    apt-get update -qq >&2 || die "apt-get update failed"
    { resolve && download; } || die "apt-get download failed"
fi
# The kernel package is only unpacked here, never installed on the host.
dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"

kernels=("$work"/kernel/boot/vmlinuz-*)
vmlinuz=${kernels[0]}
kabi=${vmlinuz##*/vmlinuz-}
# bookworm ships /lib/modules; newer releases moved to /usr/lib/modules.
for kbase in "$work/kernel" "$work/kernel/usr"; do
    [[ -d $kbase/lib/modules/$kabi ]] && break
done
[[ -d $kbase/lib/modules/$kabi ]] || die "no modules for $kabi in $kpkg"
depmod -b "$kbase" "$kabi"

# --- initramfs tree ---------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,var/log,etc/acpi/PWRF}
ln -s ../run "$root/var/run"
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
# The guest agent and its libraries, at the paths the dynamic loader expects.
cp -L "$QGA" "$root/usr/sbin/qemu-ga"
for lib in "${QGA_LIBS[@]}"; do
    mkdir -p "$root/$(dirname "$lib")"
    cp -L "$lib" "$root/$lib"
done
for applet in $("$root/bin/busybox" --list-full); do
    [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done

moddir="lib/modules/$kabi"
mkdir -p "$root/$moddir"
for m in "${MODULES[@]}"; do
    # Prints "insmod PATH" for the module and each dependency; "builtin X"
    # lines (already in the kernel) are skipped.
    modprobe -d "$kbase" -S "$kabi" --show-depends "$m" ||
        die "module $m not found in $kpkg"
done | awk '$1 == "insmod" { print $2 }' | sort -u | while read -r ko; do
    rel=${ko#"$kbase"/}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$ko" "$root/$rel"
done
cp "$kbase/$moddir"/modules.{order,builtin,builtin.modinfo} "$root/$moddir/" 2>/dev/null || true
depmod -b "$root" "$kabi"

# busybox acpid (no config) maps KEY_POWER from /dev/input/event* to the
# action "PWRF/00000080" and execs that path relative to its -c directory.
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "corral-guest: power button pressed, powering off" >/dev/console
sync
poweroff -f
EOF

# udhcpc only reports a lease; applying it is this script's job.
cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done ;;
esac
exit 0
EOF

# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P +0 "hypervisor initiated
# shutdown"` (-H halt, -r reboot) and waits for it; busybox has no shutdown.
cat >"$root/sbin/shutdown" <<'EOF'
#!/bin/sh
case " $(cat /proc/cmdline) " in
*" corral.noacpi "*)
    echo "corral-guest: ignoring the shutdown request ($*)" >/dev/console
    exit 0 ;;
esac
case " $* " in
*" -r "*) what=rebooting act=reboot ;;
*) what="powering off" act=poweroff ;;
esac
echo "corral-guest: shutdown requested ($*), $what" >/dev/console
sync
$act -f
EOF

# Starts qemu-ga on the agent's port when QEMU offers one. The host announces
# ports only after virtio_console has loaded, so wait a little for them, but
# only when there is a virtio-serial device at all (virtio device id 3).
cat >"$root/sbin/start-guest-agent" <<'EOF'
#!/bin/sh
grep -qx 0x0003 /sys/bus/virtio/devices/*/device 2>/dev/null || exit 0
i=0
while [ $i -lt 200 ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
        dev=/dev/${p##*/}
        # devtmpfs makes the node; without it, make it from the port's numbers.
        [ -c "$dev" ] || mknod "$dev" c $(tr : ' ' <"$p/dev")
        # -d: a daemon (pidfile, state dir and log where this guest keeps them).
        exec qemu-ga -m virtio-serial -p "$dev" -d -f /run/qemu-ga.pid -t /run \
            -l /var/log/qemu-ga.log
    done
    i=$((i + 1))
    sleep 0.05
done
echo "corral-guest: no guest agent port appeared" >/dev/console
EOF

cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/ PS1='corral-guest# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node (building it needs no root), so the
# kernel started us without stdio: attach to the console now.
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
modprobe -qa ${MODULES[*]}
# Must start after button+evdev: acpid only opens the event devices present now.
# corral.noacpi on the kernel command line makes a guest that ignores the power
# button (and the guest agent's shutdown), for testing graceful-stop timeouts.
case " \$(cat /proc/cmdline) " in
*" corral.noacpi "*) echo "corral-guest: ignoring the power button" ;;
*) acpid -c /etc/acpi -l /var/log/acpid.log ;;
esac
ip link set lo up
for n in /sys/class/net/eth*; do
    [ -e "\$n" ] || continue
    ip link set "\${n##*/}" up
    # Background: a network without DHCP must never delay the ready marker.
    udhcpc -i "\${n##*/}" -n -q -t 3 -s /etc/udhcpc.script >/dev/null 2>&1 &
    echo "corral-guest: nic \${n##*/} \$(cat "\$n/address")"
done
for d in /dev/vd*; do
    [ -b "\$d" ] && echo "corral-guest: disk \$d \$(cat /sys/class/block/\${d#/dev/}/size) sectors"
done
echo CORRAL-GUEST-READY
# The guest agent starts once the guest is ready, in the background, so that it
# costs the boot nothing. corral.noagent on the kernel command line makes a
# guest without one, for tests.
case " \$(cat /proc/cmdline) " in
*" corral.noagent "*) echo "corral-guest: not starting the guest agent" ;;
*) start-guest-agent & ;;
esac
# cttyhack gives the shell the real tty (ttyS0) so job control and ^C work;
# respawn so that 'exit' doesn't panic the kernel by killing PID 1.
while :; do setsid cttyhack sh; sleep 1; done
EOF
chmod 755 "$root/init" "$root/etc/udhcpc.script" "$root/etc/acpi/PWRF/00000080" \
    "$root/sbin/shutdown" "$root/sbin/start-guest-agent"

(cd "$root" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet) |
    gzip -9 >"$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"

# The stamp is written last: an interrupted swap leaves no valid stamp, so the
# next run rebuilds instead of trusting a mismatched pair.
rm -f "$OUT/.guest-stamp"
mv -f "$work/vmlinuz" "$OUT/vmlinuz"
mv -f "$work/initrd.img" "$OUT/initrd.img"
echo "$stamp" >"$work/stamp" && mv -f "$work/stamp" "$OUT/.guest-stamp"

echo "test guest ($kpkg $kver, busybox $bbver):"
echo "  kernel: $OUT/vmlinuz"
echo "  initrd: $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB)"

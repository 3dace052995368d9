#!/usr/bin/env bash
# Installs what Corral needs on a Debian 12 host (as root), idempotently:
# QEMU and tools from Debian's packages, the unprivileged user QEMU runs as,
# and the test guest (built from Debian packages) for tests, the demo and the
# accelerator probe. Safe to run again: it only adds what is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${CORRAL_BUILD_DIR:-$ROOT/build}
log() { echo "setup: $*" >&2; }

[[ $(id -u) == 0 ]] || { log "run as root (it installs packages and creates a user)"; exit 1; }

# Packages, by the command that proves each is there. qemu-utils is only
# installed when qemu-img is missing: a newer one (backports) is fine.
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
# qemu-utils only when missing: a newer one (backports) is fine and must not be downgraded.
{ have qemu-img && have qemu-io; } || need+=(qemu-utils)
[[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ]] || need+=(ovmf)
have cpio || need+=(cpio)
have depmod || [[ -x /usr/sbin/depmod ]] || need+=(kmod)
have dpkg-deb || need+=(dpkg)
have python3 || need+=(python3)
# The remote-API tests speak HTTPS with curl, checking the daemon's certificate.
have curl || need+=(curl ca-certificates)
have flock || need+=(util-linux)
have ps || need+=(procps)
have tar || need+=(tar)
have gzip || need+=(gzip)
# cloud-init seed CDs (genisoimage); isoinfo, from the same package, reads them in tests.
have genisoimage || need+=(genisoimage)
# Keys for the cloud-init tests.
have ssh-keygen || need+=(openssh-client)
# The guest agent's client is tested against the real qemu-ga, run on the host.
{ have qemu-ga || [[ -x /usr/sbin/qemu-ga ]]; } || need+=(qemu-guest-agent)
# Networks: user NICs (passt), NAT/isolated networks (dnsmasq, nftables, iproute2);
# the network tests ping, ssh and serve HTTP from namespaces.
have passt || need+=(passt)
{ have dnsmasq || [[ -x /usr/sbin/dnsmasq ]]; } || need+=(dnsmasq-base)
{ have nft || [[ -x /usr/sbin/nft ]]; } || need+=(nftables)
{ have ip || [[ -x /usr/sbin/ip ]]; } || need+=(iproute2)
have ping || need+=(iputils-ping)
{ have ssh && have ssh-keygen; } || need+=(openssh-client)
# corral-net's own tests: busybox's udhcpc/nc/nslookup as DHCP client, TCP peers and
# resolver in test namespaces; nsenter to run them there.
have busybox || need+=(busybox-static)
have nsenter || need+=(util-linux)
# lvm-thin pools (and their test) need the kernel's device-mapper; without it the LVM
# tools are useless (nothing can be activated) and worse than useless: libdevmapper
# leaves a dead /dev/mapper/control node behind. The kernel's misc-device list is the
# proof (opening the control node first loads dm_mod where it is a module), not the
# node, which may be such a leftover.
dm_present() {
    (exec 3<>/dev/mapper/control) 2>/dev/null || true
    grep -qw device-mapper /proc/misc 2>/dev/null
}
if dm_present; then
    { have lvm || [[ -x /usr/sbin/lvm ]]; } || need+=(lvm2 thin-provisioning-tools)
else
    log "no device-mapper in this kernel: lvm-thin pools are unavailable, lvm2 not installed"
fi
# The web console's build (scripts/build-web.sh) and its browser tests (Playwright
# driving Debian's headless chromium).
have node || need+=(nodejs)
have npm || need+=(npm)
have chromium || need+=(chromium)
# `promtool check metrics` validates the /metrics exposition in the metrics test.
have promtool || need+=(prometheus)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if ! have cargo; then
    log "Rust is missing: install a current stable toolchain (rustup) and run this again"
    exit 1
fi

# QEMU drops to this user after opening its files (see docs/ARCHITECTURE.md).
if ! getent passwd corral-qemu >/dev/null; then
    log "creating system user corral-qemu"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin corral-qemu
fi
getent group corral >/dev/null || groupadd --system corral

# The test guest: cached under the build dir, rebuilt only when its recipe changes.
bash "$ROOT/scripts/build-test-guest.sh" "$BUILD/guest" >&2
# The accelerator probe boots this kernel by default.
install -D -m 0644 "$BUILD/guest/vmlinuz" /usr/share/corral/guest/vmlinuz
install -D -m 0644 "$BUILD/guest/initrd.img" /usr/share/corral/guest/initrd.img

# The API fuzzer (crates/corral-tests/tests/api_fuzz.rs): schemathesis from PyPI, pinned,
# in a virtualenv under the build dir (never into the system's Python).
SCHEMATHESIS_VERSION=4.32.5
if ! "$BUILD/venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $BUILD/venv"
    python3 -m venv "$BUILD/venv" >&2 || {
        { apt-get install -y -qq python3-venv >&2 || { apt-get update -qq && apt-get install -y -qq python3-venv >&2; }; } &&
            python3 -m venv "$BUILD/venv" >&2
    }
    "$BUILD/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
log "ready"

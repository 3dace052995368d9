#!/usr/bin/env bash
# Installs what Corral needs on a Debian 12 host (as root), idempotently:
# QEMU and tools from Debian's packages, the unprivileged user QEMU runs as,
# and the test guest (built from Debian packages) for tests, the demo and the
# accelerator probe. Safe to run again: it only adds what is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${CORRAL_BUILD_DIR:-$ROOT/build}
log() { echo "setup: $*" >&2; }

# shellcheck source=lib/host.sh
source "$ROOT/scripts/lib/host.sh"

# `setup.sh --verify`: only the check, no installs (the test suite runs it, so a host
# that lacks a tool fails CI even where the tool was once installed by hand).
if [[ ${1:-} == --verify ]]; then
    verify_host
    exit
fi

[[ $(id -u) == 0 ]] || { log "run as root (it installs packages and creates a user)"; exit 1; }

# QEMU's packages first, as one matching set (scripts/lib/host.sh, qemu_package_set).
ensure_apt_lists qemu-system-x86
qemu_set_text=$(qemu_package_set) || exit 1
mapfile -t qemu_set < <(printf '%s' "$qemu_set_text")
apt_install "${qemu_set[@]}"
# Then the package of every other tool or file that is missing (HOST_TOOLS, HOST_FILES).
mapfile -t need < <(missing_packages)
if dm_present; then
    have lvm || need+=(lvm2 thin-provisioning-tools)
else
    log "no device-mapper in this kernel: lvm-thin pools are unavailable, lvm2 not installed"
fi
apt_install "${need[@]}"

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
        apt_install python3-venv &&
            python3 -m venv "$BUILD/venv" >&2
    }
    "$BUILD/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
# After every apt step (this script's, the test guest's and the venv's): is everything
# the project needs still there?
verify_host
log "ready"

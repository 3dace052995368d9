#!/usr/bin/env bash
# Installs what the benchmarks need on a Debian 12 host (as root), idempotently:
# libvirt (the peer Corral is measured against), its Python binding, and the
# test guest via the project's own setup. Safe to run again.
#
#   bash bench/setup.sh
#
# It does not start libvirtd: bench/run.sh does that (and stops it again if it
# started it), since this machine may have no systemd as PID 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "bench/setup: $*" >&2; }

[[ $(id -u) == 0 ]] || { log "run as root (it installs packages)"; exit 1; }

# Corral's own prerequisites: QEMU, the corral-qemu user, the test guest.
bash "$ROOT/scripts/setup.sh"

# shellcheck source=../scripts/lib/host.sh
source "$ROOT/scripts/lib/host.sh"
HOST_LOG_TAG=bench/setup
# Service start-up inside postinst fails without an init system; that is fine, run.sh
# starts the daemon itself. policy-rc.d 101 tells invoke-rc.d not to try.
apt_install_no_services() {
    local policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt_install "$@" || rc=$?
    ((made_policy)) && rm -f "$policy"
    return "$rc"
}
need=()
have virsh || need+=(libvirt-clients)
have libvirtd || [[ -x /usr/sbin/libvirtd ]] || need+=(libvirt-daemon-system)
/usr/bin/python3 -c 'import libvirt' 2>/dev/null || need+=(python3-libvirt)
apt_install_no_services "${need[@]}" || { log "could not install ${need[*]}"; exit 1; }

# Optional: hyperfine is not used by run.sh's numbers, but is handy for ad-hoc checks.
have hyperfine || apt_install hyperfine ||
    log "hyperfine not installed (optional)"

# --web: the web console section's peer and browser: cockpit-ws + cockpit-machines
# (Debian), chromium, node, and playwright-core pinned in bench/web/package.json.
if [[ ${1:-} == --web ]]; then
    webneed=()
    [[ -x /usr/lib/cockpit/cockpit-ws ]] || webneed+=(cockpit-ws cockpit-bridge cockpit-system)
    [[ -d /usr/share/cockpit/machines ]] || webneed+=(cockpit-machines)
    # Cockpit shows the system's libvirt only with administrative access, which its
    # bridge gets through sudo (the bench user is in group sudo for the run).
    have sudo || webneed+=(sudo)
    have chromium || webneed+=(chromium)
    have node || webneed+=(nodejs npm)
    apt_install_no_services "${webneed[@]}" || { log "could not install ${webneed[*]}"; exit 1; }
    (cd "$ROOT/bench/web" && npm install --no-audit --no-fund >&2)
fi

# libvirt's packages must not have taken any of Corral's tools away.
verify_host
log "ready: $(virsh --version 2>/dev/null | sed 's/^/libvirt /') $(qemu-system-x86_64 --version | head -1)"

# shellcheck shell=bash
# Shared by the scripts that install things (setup.sh, build-debian-image.sh,
# build-test-guest.sh, bench/setup.sh): one way to run apt, the matching set of QEMU's
# packages, and the check of every tool the project needs. Source it; it defines
# functions only.

host_log() { echo "${HOST_LOG_TAG:-setup}: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }

# Every command the project runs, with the Debian package that provides it. setup.sh
# installs the package of each missing one and verify_host checks all of them after
# every install, so an apt step that removes one (as qemu-system-x86 7.2 removes a
# preinstalled qemu-utils 10) fails loudly instead of passing unseen.
HOST_TOOLS=(
    qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils qemu-io:qemu-utils
    qemu-ga:qemu-guest-agent
    cpio:cpio depmod:kmod modprobe:kmod dpkg-deb:dpkg ldd:libc-bin python3:python3
    curl:curl flock:util-linux nsenter:util-linux ps:procps tar:tar gzip:gzip
    genisoimage:genisoimage isoinfo:genisoimage
    ssh:openssh-client ssh-keygen:openssh-client
    passt:passt dnsmasq:dnsmasq-base nft:nftables ip:iproute2 ping:iputils-ping
    busybox:busybox-static
    node:nodejs npm:npm chromium:chromium promtool:prometheus
    # A lifecycle test holds QEMU's exit back with strace's syscall fault injection.
    strace:strace
)
# Files by the package that provides them.
HOST_FILES=(
    /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf /usr/share/OVMF/OVMF_VARS_4M.fd:ovmf
    /etc/ssl/certs/ca-certificates.crt:ca-certificates
)

# The packages of the tools and files in the lists above that are missing.
missing_packages() {
    local entry pkgs=()
    for entry in "${HOST_TOOLS[@]}"; do
        have "${entry%%:*}" || pkgs+=("${entry#*:}")
    done
    for entry in "${HOST_FILES[@]}"; do
        [[ -e ${entry%%:*} ]] || pkgs+=("${entry#*:}")
    done
    ((${#pkgs[@]})) && printf '%s\n' "${pkgs[@]}" | sort -u
    return 0
}

# Empty when the package is not installed (dpkg-query's failure is not an error here,
# whatever errexit and pipefail say).
pkg_installed_version() {
    { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "ii" { print $2 }'
}

pkg_candidate_version() {
    { apt-cache policy "$1" 2>/dev/null || true; } | awk '/Candidate:/ { print $2 }'
}

# apt's package lists, fetched when this machine has none that know PACKAGE (a fresh
# machine may have empty lists).
ensure_apt_lists() {
    local probe=${1:-qemu-system-x86} candidate
    candidate=$(pkg_candidate_version "$probe")
    if [[ -z $candidate || $candidate == "(none)" ]]; then
        host_log "updating apt's package lists"
        apt-get update -qq >&2
    fi
}

# QEMU's packages as one set of one version: qemu-system-x86's installed version, or
# its candidate when it is not installed. qemu-utils (and qemu-block-extra when it is
# there) are pinned to that version, downgrading a newer qemu-utils that no matching
# qemu-system could use (a fresh machine ships qemu-utils 10 with no qemu-system 10 in
# its archives; installing qemu-system-x86 7.2 unpinned removes it). Prints the
# `package=version` arguments for apt, nothing when the set already matches.
qemu_package_set() {
    local version pkg
    version=$(pkg_installed_version qemu-system-x86)
    [[ -n $version ]] || version=$(pkg_candidate_version qemu-system-x86)
    if [[ -z $version || $version == "(none)" ]]; then
        host_log "apt knows no qemu-system-x86 package (check /etc/apt/sources.list)"
        return 1
    fi
    for pkg in qemu-system-x86 qemu-utils; do
        [[ $(pkg_installed_version "$pkg") == "$version" ]] || echo "$pkg=$version"
    done
    local extra
    extra=$(pkg_installed_version qemu-block-extra)
    if [[ -n $extra && $extra != "$version" ]]; then
        echo "qemu-block-extra=$version"
    fi
}

# apt-get install that never removes anything unseen: it simulates first and refuses,
# naming them, when apt would remove a package. Fetches the package lists when they
# are missing. Downgrades are allowed only for the `package=version` pins it is given.
apt_install() {
    (($#)) || return 0
    local first=${1%%=*} removals
    ensure_apt_lists "$first"
    local -a opts=(-y -qq --no-install-recommends --allow-downgrades)
    removals=$(DEBIAN_FRONTEND=noninteractive apt-get install -s "${opts[@]}" "$@" 2>&1 |
        awk '/^Remv / { print $2 }') || true
    if [[ -n $removals ]]; then
        host_log "installing $* would remove: $(echo "$removals" | tr '\n' ' ')"
        host_log "refusing: Corral needs a matching set (see scripts/lib/host.sh); remove or pin them yourself"
        return 1
    fi
    host_log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "$@" >&2
}

# The major.minor of a QEMU tool's own `--version` line.
qemu_tool_version() {
    "$1" --version 2>/dev/null | head -1 | sed -nE 's/.*version ([0-9]+\.[0-9]+).*/\1/p'
}

# Checks, after every install, that each tool and file the project needs is there and
# that qemu-img matches qemu-system. Prints every problem with the package to install
# and returns non-zero when there is one. Needs no root.
verify_host() {
    local entry problems=0
    for entry in "${HOST_TOOLS[@]}"; do
        if ! have "${entry%%:*}"; then
            host_log "MISSING: ${entry%%:*} (install Debian's ${entry#*:})"
            problems=$((problems + 1))
        fi
    done
    for entry in "${HOST_FILES[@]}"; do
        if [[ ! -e ${entry%%:*} ]]; then
            host_log "MISSING: ${entry%%:*} (install Debian's ${entry#*:})"
            problems=$((problems + 1))
        fi
    done
    if have qemu-img && have qemu-system-x86_64; then
        local img sys
        img=$(qemu_tool_version qemu-img)
        sys=$(qemu_tool_version qemu-system-x86_64)
        if [[ $img != "$sys" ]]; then
            host_log "MISMATCH: qemu-img $img and qemu-system-x86_64 $sys (install qemu-utils of qemu-system-x86's version)"
            problems=$((problems + 1))
        fi
    fi
    if dm_present && ! have lvm; then
        host_log "MISSING: lvm (install Debian's lvm2 and thin-provisioning-tools)"
        problems=$((problems + 1))
    fi
    if ! getent passwd corral-qemu >/dev/null; then
        host_log "MISSING: the corral-qemu user (run scripts/setup.sh as root)"
        problems=$((problems + 1))
    fi
    if ((problems)); then
        host_log "$problems problem(s): this host cannot run Corral's demo and tests"
        return 1
    fi
    host_log "verified: every tool, file and user Corral needs is present"
}

# lvm-thin pools (and their test) need the kernel's device-mapper; without it the LVM
# tools are useless (nothing can be activated) and worse than useless: libdevmapper
# leaves a dead /dev/mapper/control node behind. The kernel's misc-device list is the
# proof (opening the control node first loads dm_mod where it is a module), not the
# node, which may be such a leftover.
dm_present() {
    [[ -e /dev/mapper/control ]] && { (exec 3<>/dev/mapper/control) 2>/dev/null || true; }
    grep -qw device-mapper /proc/misc 2>/dev/null
}

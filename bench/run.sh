#!/usr/bin/env bash
# Corral vs raw QEMU vs libvirt, side by side, in one run (as root, ~5 minutes).
#
#   bash bench/run.sh                 # setup, build, measure, print a markdown table
#   bash bench/run.sh --no-setup      # skip bench/setup.sh (packages already there)
#   bash bench/run.sh --no-build      # use target/release/{corrald,corral} as they are
#   bash bench/run.sh --rev HEAD      # build a commit (git archive) in /var/tmp instead
#                                     # of the work tree: exact code, immune to mid-edits
#   bash bench/run.sh --wait-quiet    # first wait (up to 10 min) for load average < 0.5
#   bash bench/run.sh --quick         # 3 start rounds, 100 VMs: a smoke test of the bench
#   bash bench/run.sh --only start|many|storage|network
#                                     # storage: bench/storage.py alone (~6 minutes); a full
#                                     # run does it after the other sections
#                                     # network: bench/network.py (Debian guests booted to
#                                     # sshd, iperf3; ~15 minutes), only when asked for
#   bash bench/run.sh --only web      # web console vs Cockpit Machines (bench/web.py)
#   bash bench/run.sh --only metrics  # /metrics with 100 running (paused) VMs vs libvirt's
#                                     # domain stats vs raw QEMU (bench/metrics.py, ~5 min)
#   bash bench/run.sh --only network --skip-corral
#                                     # libvirt and raw QEMU only: no build, no corrald
#   bash bench/run.sh --only migration
#                                     # live migration between two hosts (network
#                                     # namespaces): Corral vs libvirt vs raw QEMU
#                                     # (bench/migration.py, ~15 minutes), only when asked
#
# Raw numbers go to bench/results/latest.json, the table to bench/results/latest.md
# (storage: storage.json, storage.md; network: network.json, network.md and the
# guests' serial output in network-consoles/; migration: migration.json, migration.md;
# all gitignored). Everything the run makes
# is removed again: corrald and its state dir, leftover QEMUs of this run, the libvirt
# domains and storage pools it defined, and libvirtd and virtlogd if this run started
# them; for network also the raw side's bridge, tap and dnsmasq, libvirt's default
# network if the run started (or defined) it, IPv4 forwarding as it was, and the
# firewall tables the run or libvirt made; for migration also the namespaces, the
# two corralds and the two libvirtds (and their virtlogds) of the run. See
# docs/benchmarks.md for what is timed and why.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
log() { echo "bench/run: $*" >&2; }
# shellcheck source=../scripts/lib/host.sh
source "$ROOT/scripts/lib/host.sh"
HOST_LOG_TAG=bench/run

setup=1
build=1
rev=''
wait_quiet=0
only=''
skip_corral=0
extra=()
storage_extra=()
net_extra=()
mig_extra=()
while (($#)); do
    case $1 in
        --no-setup) setup=0 ;;
        --no-build) build=0 ;;
        --quick) extra+=(--n-start 3 --n-define 100 --n-list 3)
                 storage_extra+=(--n-linked 3 --n-clone 1 --n-snap 3 --n-root 1 --n-live 1
                                --n-lclone 2)
                 net_extra+=(--n-boot 1 --n-iperf 1 --iperf-secs 3)
                 mig_extra+=(--rounds-idle 1 --rounds 1 --iperf-runs 1 --iperf-secs 2
                             --n-preflight 2) ;;
        --only) only=$2; shift ;;
        --skip-corral) skip_corral=1 ;;
        --rev) rev=$2; shift ;;
        --wait-quiet) wait_quiet=1 ;;
        -h|--help) sed -n '2,36p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) log "unknown argument: $1"; exit 2 ;;
    esac
    shift
done

[[ $(id -u) == 0 ]] || { log "run as root (libvirt's system daemon, QEMU -runas)"; exit 1; }
case $only in
    ''|start|many|storage|network|web|metrics|migration) ;;
    *) log "--only takes start, many, storage, network, web, metrics or migration, not '$only'"
       exit 2 ;;
esac
network=$([[ $only == network ]] && echo 1 || echo 0)
migration=$([[ $only == migration ]] && echo 1 || echo 0)
if ((skip_corral && !network)); then log "--skip-corral is for --only network"; exit 2; fi
((skip_corral)) && build=0
((setup)) && bash "$BENCH/setup.sh"
# The web console section (bench/web.py, ~10 minutes): Corral's web console vs Cockpit
# Machines in headless chromium, 1000 stopped VMs each side; only when asked for.
# web.py starts and stops what it needs (corrald, dbus, libvirtd, cockpit-ws).
if [[ $only == web ]]; then
    ((setup)) && bash "$BENCH/setup.sh" --web
    if ((build)); then
        bash "$ROOT/scripts/build-web.sh"
        (cd "$ROOT" && cargo build --release -p corrald >&2)
    fi
    mkdir -p "$BENCH/results"
    /usr/bin/python3 "$BENCH/web.py" --corrald "${CARGO_TARGET_DIR:-$ROOT/target}/release/corrald" \
        --out "$BENCH/results/web.json" | tee "$BENCH/results/web.md"
    exit 0
fi
storage=$([[ -z $only || $only == storage ]] && echo 1 || echo 0)
# The storage section also compares with virt-clone (Debian's virtinst).
if ((setup && storage)) && ! command -v virt-clone >/dev/null; then
    log "installing virtinst (virt-clone)"
    apt_install virtinst ||
        log "virtinst not installed: the storage table will have no virt-clone row"
fi
# The network section: virt-install, iperf3 on the host, a seed ISO maker and dnsmasq.
# The migration section measures the link between its namespaces with iperf3.
if ((setup && migration)) && ! command -v iperf3 >/dev/null; then
    log "installing iperf3"
    apt_install iperf3 || { log "could not install iperf3"; exit 1; }
fi
if ((setup && network)); then
    need=()
    for tool in virt-install:virtinst iperf3:iperf3 genisoimage:genisoimage \
                dnsmasq:dnsmasq-base; do
        command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
    done
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        apt_install "${need[@]}" || { log "could not install ${need[*]}"; exit 1; }
    fi
fi

if [[ -n $rev ]]; then
    # A pristine tree of one commit, built in its own target dir (kept for next time).
    sha=$(git -C "$ROOT" rev-parse --short "$rev^{commit}")
    src=$(mktemp -d /tmp/cb-src.XXXXXX)
    git -C "$ROOT" archive "$sha" | tar -x -C "$src"
    export CARGO_TARGET_DIR=${CORRAL_BENCH_TARGET:-/var/tmp/corral-bench-target}
    log "building $sha in $src (target $CARGO_TARGET_DIR)"
    (cd "$src" && cargo build --release --bins -q) || { rm -rf "$src"; exit 1; }
    rm -rf "$src"
    CORRAL=$CARGO_TARGET_DIR/release/corral
    CORRALD=$CARGO_TARGET_DIR/release/corrald
    extra+=(--corral-rev "$sha")
else
    # Other people may be editing the workspace: a failing build is retried a few times.
    for try in 1 2 3 4 5; do
        ((build)) || break
        if (cd "$ROOT" && cargo build --release --bins -q); then break; fi
        ((try < 5)) || { log "cargo build failed (try --rev HEAD)"; exit 1; }
        log "build failed (workspace mid-edit?); retrying in 60 s"
        sleep 60
    done
    CORRAL=${CARGO_TARGET_DIR:-$ROOT/target}/release/corral
    CORRALD=${CARGO_TARGET_DIR:-$ROOT/target}/release/corrald
fi
KERNEL=$ROOT/build/guest/vmlinuz
INITRD=$ROOT/build/guest/initrd.img
if ((!network)) && [[ ! -f $KERNEL || ! -f $INITRD ]]; then
    log "no test guest in build/guest: run scripts/setup.sh"; exit 1
fi
# libvirt's QEMU runs as libvirt-qemu and must be able to read the guest.
LV_IMAGES=/var/lib/libvirt/images/corral-bench
# A short path: the QMP/console socket paths under it must fit in sun_path.
WORK=$(mktemp -d /tmp/cb.XXXXXX)
# The migration section's network namespaces: $NS_PREFIX-sw, -h0, -h1.
NS_PREFIX=cbm$$
mkdir -p "$BENCH/results"

corrald_pid=''
started_libvirtd=''
started_virtlogd=''
# libvirt makes a "machine" cgroup in every hierarchy on the first domain start.
had_machine_cgroup=$([[ -d /sys/fs/cgroup/cpu/machine || -d /sys/fs/cgroup/machine ]] && echo 1 || true)
kvm_mode=$(stat -c '%a' /dev/kvm 2>/dev/null || true)
kvm_group=$(stat -c '%g' /dev/kvm 2>/dev/null || true)
# Starting a libvirt NAT network makes iptables(-nft) tables and turns on forwarding.
nft_tables=$(nft list tables 2>/dev/null || true)
ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)

# The iptables-nft tables libvirt made for its networks, once libvirtd is gone: dropped
# only if they were not there before this run and hold nothing but libvirt's own
# (by then empty) chains and the jumps to them.
drop_libvirt_tables() {
    local t rules
    for t in 'ip filter' 'ip nat' 'ip mangle' 'ip6 filter' 'ip6 nat' 'ip6 mangle'; do
        grep -qxF "table $t" <<<"$nft_tables" && continue
        # shellcheck disable=SC2086 # $t is "FAMILY NAME"
        rules=$(nft list table $t 2>/dev/null) || continue
        if grep -vE '^\s*(table |chain |type |\}|#|$)' <<<"$rules" |
            grep -vqE '^\s+counter packets [0-9]+ bytes [0-9]+ jump LIBVIRT_[A-Z]+$'; then
            log "leaving table $t: it holds rules other than libvirt's"
            continue
        fi
        # shellcheck disable=SC2086
        nft delete table $t
    done
}

cleanup() {
    set +e
    log "cleaning up"
    if [[ -n $corrald_pid ]]; then
        if kill -0 "$corrald_pid" 2>/dev/null; then
            kill "$corrald_pid" 2>/dev/null
            wait "$corrald_pid" 2>/dev/null
        else
            wait "$corrald_pid" 2>/dev/null
            log "corrald had already exited (status $?) before the end of the run"
        fi
        cp "$WORK/corrald.log" "$BENCH/results/corrald.log" 2>/dev/null
    fi
    # QEMUs of this run (VMs outlive corrald by design): every process whose command
    # line names this run's work dir.
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "$WORK/"; then
            kill -9 "${p#/proc/}" 2>/dev/null
        fi
    done
    if virsh -q -c qemu:///system uri >/dev/null 2>&1; then
        for d in $(virsh -q -c qemu:///system list --all --name 2>/dev/null | grep '^cb-'); do
            virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
            virsh -q -c qemu:///system undefine --snapshots-metadata "$d" >/dev/null 2>&1
        done
        # Storage pools on this run's directories (bench/storage.py makes transient
        # ones; virt-clone would define persistent ones for directories without a pool).
        for p in $(virsh -q -c qemu:///system pool-list --all --name 2>/dev/null); do
            path=$(virsh -q -c qemu:///system pool-dumpxml "$p" 2>/dev/null |
                sed -n 's:.*<path>\(.*\)</path>.*:\1:p' | head -1)
            if [[ $path == "$WORK"* || $path == "$LV_IMAGES"* ]]; then
                virsh -q -c qemu:///system pool-destroy "$p" >/dev/null 2>&1
                virsh -q -c qemu:///system pool-undefine "$p" >/dev/null 2>&1
            fi
        done
    fi
    # What bench/migration.py makes and removes itself, in case it was killed: its
    # namespaces, and with them everything that runs in them (corralds, libvirtds,
    # virtlogds, QEMUs); the mount point it made for the libvirtds' private state.
    for ns in "$NS_PREFIX-h0" "$NS_PREFIX-h1" "$NS_PREFIX-sw"; do
        ip netns list 2>/dev/null | grep -q "^$ns\b" || continue
        for _ in 1 2 3; do
            pids=$(ip netns pids "$ns" 2>/dev/null)
            [[ -z $pids ]] && break
            # shellcheck disable=SC2086
            kill -9 $pids 2>/dev/null
            sleep 0.2
        done
        ip netns del "$ns"
    done
    [[ -n ${made_run_libvirt:-} ]] && rmdir /run/libvirt 2>/dev/null
    # What bench/network.py makes and removes itself, in case it was killed.
    ip link del cbnettap0 2>/dev/null
    ip link del cbnet0 2>/dev/null
    nft delete table inet cb_netbench 2>/dev/null
    if [[ -n $started_libvirtd ]]; then
        kill "$started_libvirtd" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$started_libvirtd" 2>/dev/null || break; sleep 0.1; done
        drop_libvirt_tables
    fi
    [[ -n $started_virtlogd ]] && kill "$started_virtlogd" 2>/dev/null
    echo "$ip_forward" >/proc/sys/net/ipv4/ip_forward
    if [[ -z $had_machine_cgroup ]]; then
        # rmdir only removes empty cgroups: anything still in use stays.
        for d in /sys/fs/cgroup/*/machine /sys/fs/cgroup/machine; do
            [[ -d $d ]] && rmdir "$d" 2>/dev/null
        done
    fi
    if [[ -n $kvm_mode ]]; then
        chgrp "$kvm_group" /dev/kvm
        chmod "$kvm_mode" /dev/kvm
    fi
    rm -rf "$WORK" "$LV_IMAGES"
}
trap cleanup EXIT

# libvirt. Its QEMU capability cache is only valid while libvirt's QEMU user may open
# /dev/kvm: with Debian's udev rule that is root:kvm 0660, but this machine has no udev
# and /dev/kvm is root-only, so libvirtd would re-probe QEMU (~4 s) on *every* call.
# Give /dev/kvm its usual Debian mode for the run (restored at exit). Domains still
# use TCG (<domain type='qemu'>). Corral is unaffected: its QEMU opens /dev/kvm as root.
if [[ -e /dev/kvm ]] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi
pid_of() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null && cat "$1"; }
# The migration section runs two libvirtds of its own (bench/migration.py), not this one.
[[ -d /run/libvirt ]] || made_run_libvirt=1
if ((!migration)) && ! virsh -q -c qemu:///system uri >/dev/null 2>&1; then
    if ! pid_of /run/virtlogd.pid >/dev/null; then
        virtlogd -d
        sleep 0.2
        started_virtlogd=$(pid_of /run/virtlogd.pid)
    fi
    log "starting libvirtd"
    libvirtd -d
    for _ in $(seq 100); do
        virsh -q -c qemu:///system uri >/dev/null 2>&1 && break
        sleep 0.1
    done
    started_libvirtd=$(pid_of /run/libvirtd.pid)
fi
if ((!migration)); then
    libvirtd_pid=$(pid_of /run/libvirtd.pid) || { log "libvirtd is not running"; exit 1; }
    # First contact makes libvirtd probe QEMU's capabilities; not part of any measurement.
    virsh -q -c qemu:///system version >/dev/null
fi
install -d -m 0755 "$LV_IMAGES"
((network)) || install -m 0644 "$KERNEL" "$INITRD" "$LV_IMAGES/"
if ((network)); then
    # The Debian cloud image (cached under build/images after its first build), where
    # libvirt's QEMU and Corral's can read it.
    DEBIAN_IMAGE=$LV_IMAGES/debian-12.qcow2
    bash "$ROOT/scripts/build-debian-image.sh" "$DEBIAN_IMAGE"
    chmod 0644 "$DEBIAN_IMAGE"
fi

# corrald, on a fresh state dir (as root it also makes its `default` NAT network).
if ((!skip_corral && !migration)); then
    log "starting corrald (state in $WORK/s)"
    "$CORRALD" --state-dir "$WORK/s" --socket "$WORK/sock" --accel tcg 2>"$WORK/corrald.log" &
    corrald_pid=$!
    for _ in $(seq 200); do
        [[ -S $WORK/sock ]] && break
        kill -0 "$corrald_pid" 2>/dev/null || { cat "$WORK/corrald.log" >&2; exit 1; }
        sleep 0.05
    done
    [[ -S $WORK/sock ]] || { log "corrald did not open its socket"; exit 1; }
fi

if ((wait_quiet)); then
    for _ in $(seq 120); do
        awk '{ exit !($1 < 0.5) }' /proc/loadavg && break
        sleep 5
    done
fi
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ -n $rev ]] && storage_extra+=(--corral-rev "$sha")
if ((network)); then
    corral_args=(--corral "$CORRAL" --socket "$WORK/sock" --state-dir "$WORK/s")
    ((skip_corral)) && corral_args=(--skip-corral)
    [[ -n $rev ]] && net_extra+=(--corral-rev "$sha")
    /usr/bin/python3 "$BENCH/network.py" "${corral_args[@]}" \
        --image "$DEBIAN_IMAGE" --lv-images "$LV_IMAGES" --work "$WORK" \
        --json "$BENCH/results/network.json" --md "$BENCH/results/network.md" \
        --consoles "$BENCH/results/network-consoles" \
        "${net_extra[@]}"
    log "raw numbers: bench/results/network.json"
elif ((migration)); then
    /usr/bin/python3 "$BENCH/migration.py" ${rev:+--corral-rev "$sha"} \
        --corral "$CORRAL" --corrald "$CORRALD" --netns-prefix "$NS_PREFIX" \
        --kernel "$KERNEL" --initrd "$INITRD" --lv-images "$LV_IMAGES" --work "$WORK" \
        --json "$BENCH/results/migration.json" --md "$BENCH/results/migration.md" \
        "${mig_extra[@]}"
    log "raw numbers: bench/results/migration.json"
elif [[ $only == metrics ]]; then
    /usr/bin/python3 "$BENCH/metrics.py" ${rev:+--corral-rev "$sha"} \
        --corral "$CORRAL" --socket "$WORK/sock" --corrald-pid "$corrald_pid" \
        --kernel "$KERNEL" --initrd "$INITRD" --lv-images "$LV_IMAGES" --work "$WORK" \
        --json "$BENCH/results/metrics.json" --md "$BENCH/results/metrics.md"
    log "raw numbers: bench/results/metrics.json"
elif [[ $only != storage ]]; then
    /usr/bin/python3 "$BENCH/bench.py" \
        --corral "$CORRAL" --socket "$WORK/sock" --state-dir "$WORK/s" \
        --corrald-pid "$corrald_pid" --libvirtd-pid "$libvirtd_pid" \
        --kernel "$KERNEL" --initrd "$INITRD" --lv-images "$LV_IMAGES" --work "$WORK" \
        --json "$BENCH/results/latest.json" --md "$BENCH/results/latest.md" \
        ${only:+--only "$only"} "${extra[@]}"
    log "raw numbers: bench/results/latest.json"
fi
if ((storage)); then
    /usr/bin/python3 "$BENCH/storage.py" \
        --corral "$CORRAL" --socket "$WORK/sock" --state-dir "$WORK/s" \
        --kernel "$KERNEL" --initrd "$INITRD" --lv-images "$LV_IMAGES" --work "$WORK" \
        --json "$BENCH/results/storage.json" --md "$BENCH/results/storage.md" \
        "${storage_extra[@]}"
    log "raw numbers: bench/results/storage.json"
fi
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Quick start: installs what is missing, builds and installs Corral (scripts/install.sh),
# starts corrald and boots a small demo VM, then shows its serial console. Run as root
# on Debian 12.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE=${CORRAL_STATE_DIR:-/var/lib/corral}
export CORRAL_SOCKET=${CORRAL_SOCKET:-/run/corral/corral.sock}

# What is missing, the web console, a release build with it embedded, installed into
# /usr/local/bin (and checked to carry the console): the path users follow.
bash scripts/install.sh

if ! corral host info >/dev/null 2>&1; then
    mkdir -p /var/log/corral
    echo "demo: starting corrald (log: /var/log/corral/corrald.log)" >&2
    # The web console and remote API on loopback only; widen --listen to open it up.
    setsid corrald --state-dir "$STATE" --socket "$CORRAL_SOCKET" --listen 127.0.0.1:8443 \
        >>/var/log/corral/corrald.log 2>&1 </dev/null &
    for _ in $(seq 100); do corral host info >/dev/null 2>&1 && break; sleep 0.1; done
fi
corral host info

if corral show demo >/dev/null 2>&1; then
    corral delete demo --force
fi
corral create demo --memory 256M --vcpus 1 --disk size=1G --network user \
    --kernel /usr/share/corral/guest/vmlinuz --initrd /usr/share/corral/guest/initrd.img \
    --cmdline "console=ttyS0 quiet no_timer_check" --start
for _ in $(seq 300); do
    corral console demo --log | grep -q CORRAL-GUEST-READY && break
    sleep 0.1
done
echo "----- serial console of 'demo' -----"
corral console demo --log
echo "------------------------------------"
corral list
cat <<'MSG'

The demo VM is running. Try:
  corral console demo        # interactive serial console (detach with Ctrl-])
  corral show demo           # spec, state, disks, events
  corral stop demo           # ACPI shutdown
  corral delete demo

The web console: https://127.0.0.1:8443/ (self-signed; compare the fingerprint with
`corral host info`). Make a login first:
  corral user add admin --role admin
MSG

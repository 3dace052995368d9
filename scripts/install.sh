#!/usr/bin/env bash
# Builds Corral the way users run it and installs it (as root):
#   scripts/install.sh [--debug] [--prefix /usr/local]
# Installs what the host is missing (scripts/setup.sh), builds the web console and then
# corral and corrald with the console embedded (release profile unless --debug), copies
# both into PREFIX/bin and the systemd unit into /etc/systemd/system when systemd runs.
# It checks the installed corrald says "web console embedded", so a plain `cargo build`
# that missed web/dist can never be what gets installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { echo "install: $*" >&2; }

profile=release
prefix=/usr/local
while (($#)); do
    case $1 in
    --debug) profile=debug ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
    *) log "unknown argument '$1' (use --debug, --prefix DIR)"; exit 2 ;;
    esac
    shift
done
[[ $(id -u) == 0 ]] || { log "run as root (it installs packages and binaries)"; exit 1; }

bash scripts/setup.sh
bash scripts/build-web.sh
log "building corral and corrald ($profile)"
if [[ $profile == release ]]; then
    cargo build --quiet --release --bins
else
    cargo build --quiet --bins
fi
bin=${CARGO_TARGET_DIR:-$ROOT/target}/$profile
install -D -m 0755 "$bin/corral" "$prefix/bin/corral"
install -D -m 0755 "$bin/corrald" "$prefix/bin/corrald"
version=$("$prefix/bin/corrald" --version)
if [[ $version != *"web console embedded"* ]]; then
    log "the installed corrald has no web console ($version); web/dist did not reach the build"
    exit 1
fi
log "installed $prefix/bin/corral and $prefix/bin/corrald: $version"
if [[ -d /run/systemd/system ]]; then
    sed "s|/usr/local/bin/corrald|$prefix/bin/corrald|" contrib/corrald.service \
        >/etc/systemd/system/corrald.service
    systemctl daemon-reload
    log "systemd unit installed: systemctl enable --now corrald"
fi

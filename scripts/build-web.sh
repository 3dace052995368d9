#!/usr/bin/env bash
# Builds the web console (web/ → web/dist) that corrald embeds at compile time
# (crates/corrald/build.rs). Run before cargo builds corrald; setup.sh and test.sh do.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/web"
# npm ci only when the lock file changed since the last install.
stamp=node_modules/.corral-lock
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
    # Some npm 11 set-ups (omit-lockfile-registry-resolved) make `npm ci` reject a lock
    # file over rollup's per-platform optional packages; npm install keeps the same pins.
    npm ci --no-audit --no-fund >&2 || npm install --no-audit --no-fund >&2
    cp package-lock.json "$stamp"
fi
npm run --silent build >&2
echo "build-web: web/dist built" >&2

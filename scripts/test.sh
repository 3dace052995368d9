#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, then every test (unit, golden,
# mock-QMP, and end-to-end against real QEMU) in one build. `.ci/run` calls this.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CORRAL_TEST_GUEST=${CORRAL_TEST_GUEST:-$ROOT/build/guest}

bash scripts/setup.sh
# The real guest OS of the end-to-end journey (crates/corral-tests/tests/debian_e2e.rs):
# built from Debian's packages once, cached under build/images by its recipe.
export CORRAL_DEBIAN_IMAGE=${CORRAL_DEBIAN_IMAGE:-$ROOT/build/debian-12.qcow2}
bash scripts/build-debian-image.sh "$CORRAL_DEBIAN_IMAGE" >&2
bash scripts/build-web.sh
# Every apt step is behind us: prove this host has every tool the suite needs (a tool
# installed by hand once and removed by a later install fails here, named).
bash scripts/setup.sh --verify
echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --all-targets --quiet
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast --test-threads "${CORRAL_TEST_THREADS:-4}"
else
    cargo test --workspace --no-fail-fast -- --test-threads "${CORRAL_TEST_THREADS:-4}"
fi

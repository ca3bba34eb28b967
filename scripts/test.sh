#!/usr/bin/env bash
# Checks formatting and lints, then runs every test of the workspace, as root, after
# installing what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every test must run here: a test that cannot (not root, a tool missing) fails under CI=true.
export CI="${CI:-true}"
# A one-shot build gains nothing from incremental state, which would double the target
# directory's size (a CI run once failed for lack of disk). Developers may override it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
source scripts/deps.sh
ensure_packages
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

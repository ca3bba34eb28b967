#!/usr/bin/env bash
# The main job: a cluster of nodes and pods in network namespaces on this machine.
# Every node runs overlayd (embedded store; `--store etcd` for Debian's etcd), every pod
# is attached with the vxlan plugin through the cni-spec runtime, then every pod pings and
# sends a TCP stream to every other pod. Exits 0 only if all of them got through; leaves
# nothing behind (unless --keep).
#
#   ./scripts/demo.sh [--nodes N] [--pods N] [--store embedded|etcd] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages
cargo build -q -p overlayd -p plugins -p test-netns --bins
target="${CARGO_TARGET_DIR:-target}/debug"
exec "$target/ferrocni-demo" --bin-dir "$target" "$@"

#!/usr/bin/env bash
# The main job, as far as the project goes today: a host and pods in network namespaces,
# attached by `cnictl` (this project's CNI runtime) with a bridge + host-local network,
# then an all-pairs ping between the pods, a table of the results, and a clean teardown.
# Exits 0 only if every pod reached every other. Leaves nothing behind.
#
#   ./scripts/demo.sh [--pods N] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_packages

PODS=3
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pods) PODS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--pods N] [--keep]" >&2; exit 2 ;;
  esac
done

cargo build --release -q -p cni-spec --bin cnictl
CNICTL="$PWD/target/release/cnictl"

ID="demo$$"
WORK="$(mktemp -d /tmp/cni-demo.XXXXXX)"
HOST="${ID}-host"
NS_LIST=()

cleanup() {
  [ "$KEEP" = 1 ] && return
  for ((i = 0; i < PODS; i++)); do
    ip netns exec "$HOST" env NETCONFPATH="$WORK/net.d" CNI_PATH=/usr/lib/cni \
      CNI_CACHE_DIR="$WORK/cache" "$CNICTL" del demo "/run/netns/${ID}-pod$i" 2>/dev/null || true
  done
  for ns in "${NS_LIST[@]}" "$HOST"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/net.d"
cat > "$WORK/net.d/10-demo.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "demo",
  "plugins": [
    { "type": "bridge", "bridge": "demo0", "isGateway": true,
      "ipam": { "type": "host-local", "subnet": "10.77.0.0/24", "dataDir": "$WORK/ipam",
                "routes": [ { "dst": "0.0.0.0/0" } ] } }
  ]
}
JSON

ip netns add "$HOST"
declare -a ADDR
for ((i = 0; i < PODS; i++)); do
  ns="${ID}-pod$i"
  ip netns add "$ns"
  NS_LIST+=("$ns")
  result=$(ip netns exec "$HOST" env NETCONFPATH="$WORK/net.d" CNI_PATH=/usr/lib/cni \
    CNI_CACHE_DIR="$WORK/cache" "$CNICTL" add demo "/run/netns/$ns")
  ADDR[$i]=$(printf '%s' "$result" | sed -n 's/.*"address": "\([0-9.]*\)\/.*/\1/p' | head -1)
  echo "pod$i ($ns): ${ADDR[$i]}"
done

failures=0
printf '\n%-8s' "from\\to"
for ((j = 0; j < PODS; j++)); do printf '%-8s' "pod$j"; done
echo
for ((i = 0; i < PODS; i++)); do
  printf '%-8s' "pod$i"
  for ((j = 0; j < PODS; j++)); do
    if [ "$i" = "$j" ]; then printf '%-8s' "-"; continue; fi
    if ip netns exec "${ID}-pod$i" ping -c 1 -W 2 "${ADDR[$j]}" >/dev/null 2>&1; then
      printf '%-8s' "ok"
    else
      printf '%-8s' "FAIL"; failures=$((failures + 1))
    fi
  done
  echo
done

if [ "$KEEP" = 1 ]; then
  echo
  echo "kept: host netns $HOST, pods ${NS_LIST[*]}, configs in $WORK"
  echo "try:  ip netns exec ${ID}-pod0 ping ${ADDR[1]:-}"
fi
if [ "$failures" -gt 0 ]; then
  echo "$failures pod pairs could not reach each other" >&2
  exit 1
fi
echo "all $((PODS * (PODS - 1))) pod pairs reached each other"

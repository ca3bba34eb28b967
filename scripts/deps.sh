# Shared by the scripts: installs the Debian packages the project needs when they are missing.
# Source it, then call `ensure_packages`.

PACKAGES=(
  iproute2                    # ip, bridge: inspecting namespaces in tests
  iputils-ping                # connectivity checks
  nftables                    # nft: portmap and strict tables; the oracle of the nftables tests
  iptables                    # iptables-nft/-legacy: overlayd removes flannel's leftover chains (and its test plants them)
  strace                      # the bridge test proving ipMasq and macspoofchk start no other program
  containernetworking-plugins # the reference Go plugins, for interop tests and benchmarks
  etcd-server                 # overlayd's tests and benchmark run a real etcd
  etcd-client                 # etcdctl: docs/install.md (its test runs every command)
  build-essential             # docs/install.md's packages, so its test installs nothing
  pkg-config
  curl
  ca-certificates
  git
  protobuf-compiler           # protoc, needed to build etcd-client (overlayd)
  openssl                     # overlayd's TLS test makes its certificates
  wireguard-go                # a standard WireGuard peer: interop tests, the wireguard-go bench case
  wireguard-tools             # wg: keys and configuration of that peer
  tcpdump                     # captures proving the encrypted underlay carries no plaintext
  iperf3                      # the datapath bench (throughput)
  strongswan-charon           # IPsec mode: charon, the IKE daemon overlayd drives over VICI
  strongswan-swanctl          # the VICI plugin, and swanctl for the hand-configured interop peer
  libstrongswan-standard-plugins # openssl (AES-GCM, X25519, Ed25519) for charon
  libcharon-extra-plugins     # kernel-libipsec: ESP in charon's userspace on kernels without ESP
)
# Installed without their recommends: wireguard-tools recommends wireguard-modules, which apt
# satisfies with a whole kernel image package (useless here: the tests use wireguard-go).
NO_RECOMMENDS=(wireguard-tools)

ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # kubectl for the kube tests: Debian's kubernetes-client, unless a kubectl is there already.
  command -v kubectl >/dev/null || missing+=(kubernetes-client)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local plain=() bare=()
    for p in "${missing[@]}"; do
      if [[ " ${NO_RECOMMENDS[*]} " == *" $p "* ]]; then bare+=("$p"); else plain+=("$p"); fi
    done
    [ ${#plain[@]} -eq 0 ] || apt-get install -y -qq "${plain[@]}" >/dev/null
    [ ${#bare[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
  if [ "$(id -u)" != 0 ]; then
    echo "run as root: the tests and the demo create network namespaces" >&2
    exit 1
  fi
}

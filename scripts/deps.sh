# Shared by the scripts: installs the Debian packages the project needs when they are missing.
# Source it, then call `ensure_packages`.

PACKAGES=(
  iproute2                    # ip, bridge: inspecting namespaces in tests
  iputils-ping                # connectivity checks
  nftables                    # masquerade rules
  containernetworking-plugins # the reference Go plugins, for interop tests and benchmarks
  etcd-server                 # overlayd's tests and benchmark run a real etcd
  protobuf-compiler           # protoc, needed to build etcd-client (overlayd)
  openssl                     # overlayd's TLS test makes its certificates
)

ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
  if [ "$(id -u)" != 0 ]; then
    echo "run as root: the tests and the demo create network namespaces" >&2
    exit 1
  fi
}

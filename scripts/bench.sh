#!/usr/bin/env bash
# The whole benchmark suite in one command, and a report directory with its figures:
#
#   scripts/bench.sh [--quick] [--out DIR]
#
# --quick   every benchmark at its smallest settings (about 3 minutes of measuring on a
#           2-core machine, after the build): a sanity pass, its figures indicative only
# --out DIR the report directory (default: bench-report-<date>-<time>)
#
# Writes DIR/report.md (machine, tables, plots, the commands that ran), DIR/*.svg (the
# plots), DIR/results.jsonl (every result, one JSON object per line), DIR/logs/ (each
# benchmark's own output) and DIR/raw/ (the benchmarks' raw files). Runs as root: the
# benchmarks build clusters of network namespaces. BENCH_CARGO overrides the cargo command
# (e.g. "flock -o /tmp/cargo.lock cargo" on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-bench-report-$(date +%Y%m%d-%H%M%S)}"

# shellcheck source=deps.sh
source scripts/deps.sh
# What only the benchmarks use, on top of the project's packages.
PACKAGES+=(
  sockperf  # datapath: latency
  ethtool   # datapath: offload settings of the cases
  time      # host_local: peak RSS with /usr/bin/time
  iptables  # bridge: the reference plugin's ipMasq
)
ensure_packages

CARGO=(${BENCH_CARGO:-cargo})
mkdir -p "$OUT/logs" "$OUT/raw"
OUT="$(cd "$OUT" && pwd)"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
: >"$OUT/commands.txt"
: >"$OUT/notes.txt"
export BENCH_JSON="$RESULTS" BENCH_OUT="$OUT/raw"

note() { echo "$*" | tee -a "$OUT/notes.txt" >&2; }

# The commit is pinned for the whole run: the build scripts watch git's HEAD, so a commit (or
# git's automatic ref packing) during a long run would otherwise rebuild every crate before
# the next benchmark, and the later benchmarks would measure other binaries.
export FERROCNI_GIT_COMMIT="${FERROCNI_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}"
echo "building (release): the daemon, the plugins, the benchmarks, the report generator" >&2
"${CARGO[@]}" build --release -q -p overlayd -p plugins --bins
# One package at a time, as they run below (building them together unifies features
# differently and each run would build again).
for p in plugins test-netns overlayd; do "${CARGO[@]}" bench --no-run -q -p "$p" --benches; done
"${CARGO[@]}" build --release -q -p bench-report
# The plugins as docs/install.md recommends building them (the `plugins` profile, static
# musl): the plugin benches measure those when the target is installed.
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  "${CARGO[@]}" build -q --profile plugins --target x86_64-unknown-linux-musl -p plugins --bins
  export FERROCNI_PLUGINS_DIR="$PWD/target/x86_64-unknown-linux-musl/plugins"
  note "plugins: the plugins profile, static musl ($FERROCNI_PLUGINS_DIR)"
else
  note "plugins: the release build, glibc (rustup target add x86_64-unknown-linux-musl for the recommended build)"
fi

# run NAME [ENV=VALUE...] -- cargo bench ARGS...: runs one benchmark, records its command
# and duration; a failing benchmark is noted and the others still run.
run() {
  local name="$1"; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "${envs[*]:+${envs[*]} }cargo bench $*" >>"$OUT/commands.txt"
  echo "== $name: cargo bench $*" >&2
  local t0=$SECONDS
  if env "${envs[@]}" "${CARGO[@]}" bench -q "$@" >"$OUT/logs/$name.md" 2>"$OUT/logs/$name.log"; then
    note "$name: $((SECONDS - t0)) s"
  else
    note "$name: FAILED after $((SECONDS - t0)) s (see logs/$name.log)"
  fi
}

note "start: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); load average $(cut -d' ' -f1-3 /proc/loadavg); HEAD $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
t_all=$SECONDS
if [ "$MODE" = quick ]; then
  run host_local HOST_LOCAL_BENCH_PAIRS=30 -- -p plugins --bench host_local
  run bridge BENCH_CYCLES=6 -- -p plugins --bench bridge
  run datapath -- -p test-netns --bench datapath -- --smoke --no-build \
    --cases underlay,host-gw,overlay,wireguard-go,encrypted
  run convergence -- -p test-netns --bench convergence -- --smoke --no-build --variants embedded,etcd --leases 20
  run cold_start -- -p test-netns --bench cold_start -- --smoke --no-build
  run encryption_timeline -- -p test-netns --bench encryption_enable -- --smoke --no-build --reps 0 --timeline
  run leases -- -p overlayd --bench leases -- --nodes 50,100,200 --steady-secs 4 --renew-secs 2
  note "quick mode leaves out: kube_watch and families (run without --quick), the encryption enable time"
else
  run host_local -- -p plugins --bench host_local
  run bridge -- -p plugins --bench bridge
  run datapath -- -p test-netns --bench datapath -- --no-build
  run convergence -- -p test-netns --bench convergence -- --no-build
  run cold_start -- -p test-netns --bench cold_start -- --no-build
  run encryption_enable -- -p test-netns --bench encryption_enable -- --no-build --timeline
  run leases -- -p overlayd --bench leases -- --nodes 100,1000,5000 --shared-watch-from 5000
  run kube_watch -- -p test-netns --bench kube_watch -- --no-build
  run families -- -p test-netns --bench families -- --no-build
fi
note "end: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $((SECONDS - t_all)) s of benchmarks; load average $(cut -d' ' -f1-3 /proc/loadavg)"

target/release/bench-report --results "$RESULTS" --out "$OUT" --mode "$MODE" \
  --commands "$OUT/commands.txt" --notes "$OUT/notes.txt" >/dev/null
echo "report: $OUT/report.md" >&2

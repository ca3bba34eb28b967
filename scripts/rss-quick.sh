#!/bin/sh
# Peak RSS of plugin processes, ours against the reference, N runs each (quick, not a bench):
#   scripts/rss-quick.sh OURS_DIR [REFERENCE_DIR] [RUNS]
# host-local ADD+DEL (own data dir), bridge ADD+DEL (host-local IPAM, ipMasq) and portmap
# ADD+DEL (two port mappings), in a private node namespace with a pod namespace. Prints the median over the runs of
# each process's peak RSS (/usr/bin/time -f %M; a process's tree for the reference
# portmap, which starts iptables), in KiB. Needs root.
set -eu
OURS=$1
REF=${2:-/usr/lib/cni}
RUNS=${3:-20}
TAG=rssq$$
WORK=$(mktemp -d)
NODE=$TAG-node
POD=$TAG-pod
cleanup() {
    ip netns del "$NODE" 2>/dev/null || true
    ip netns del "$POD" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
ip netns add "$NODE"
ip netns add "$POD"
ip -n "$NODE" link add veth0 type veth peer name eth0 netns "$POD"
ip -n "$NODE" link set lo up
ip -n "$NODE" link set veth0 up
ip -n "$POD" link set eth0 up
ip -n "$NODE" addr add 10.99.0.1/24 dev veth0
ip -n "$POD" addr add 10.99.0.5/24 dev eth0

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# run DIR PLUGIN COMMAND CONFIG ID -> peak KiB
run() {
    env -i CNI_COMMAND="$3" CNI_CONTAINERID="$5" CNI_NETNS=/run/netns/$POD CNI_IFNAME="${IFNAME:-eth0}" \
        CNI_PATH="$1" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        ip netns exec "$NODE" /usr/bin/time -f %M -o "$WORK/t" "$1/$2" <"$4" >"$WORK/out" 2>"$WORK/err" || {
        echo "$2 $3 failed: $(cat "$WORK/out" "$WORK/err")" >&2
        exit 1
    }
    cat "$WORK/t"
}

hl_conf() {
    printf '{"cniVersion":"1.0.0","name":"rssq","type":"host-local","ipam":{"type":"host-local","subnet":"10.98.0.0/24","dataDir":"%s"}}' "$WORK/$1"
}
br_conf() {
    printf '{"cniVersion":"1.0.0","name":"rssq","type":"bridge","bridge":"rssq0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","subnet":"10.97.0.0/24","dataDir":"%s"}}' "$WORK/br-$1"
}
pm_conf() {
    printf '{"cniVersion":"1.0.0","name":"rssq","type":"portmap","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":8443,"containerPort":443,"protocol":"tcp"}]},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"veth0"},{"name":"eth0","sandbox":"/run/netns/%s"}],"ips":[{"address":"10.99.0.5/24","interface":1,"gateway":"10.99.0.1"}]}}' "$POD"
}

printf '| plugin | ours KiB (median of %s, ADD / DEL) | reference KiB | ratio (larger of ADD, DEL) |\n|---|---|---|---|\n' "$RUNS"
for plugin in host-local bridge portmap; do
    for side in ours ref; do
        dir=$OURS
        [ "$side" = ref ] && dir=$REF
        IFNAME=eth0
        case $plugin in
        host-local) hl_conf "$side" >"$WORK/conf" ;;
        bridge)
            br_conf "$side" >"$WORK/conf"
            IFNAME=eth1
            ;;
        *) pm_conf >"$WORK/conf" ;;
        esac
        export IFNAME
        : >"$WORK/add"
        : >"$WORK/del"
        i=0
        while [ "$i" -lt "$RUNS" ]; do
            run "$dir" "$plugin" ADD "$WORK/conf" "c$i" >>"$WORK/add"
            run "$dir" "$plugin" DEL "$WORK/conf" "c$i" >>"$WORK/del"
            i=$((i + 1))
        done
        eval "${side}_add=$(median <"$WORK/add")"
        eval "${side}_del=$(median <"$WORK/del")"
    done
    o=$ours_add
    [ "$ours_del" -gt "$o" ] && o=$ours_del
    r=$ref_add
    [ "$ref_del" -gt "$r" ] && r=$ref_del
    printf '| %s | %s / %s | %s / %s | %s |\n' "$plugin" "$ours_add" "$ours_del" "$ref_add" "$ref_del" \
        "$(awk -v o="$o" -v r="$r" 'BEGIN {printf "%.2f", o / r}')"
done

#!/usr/bin/env bash
# A three-host sgswitch lab on this machine, each host a network namespace
# (issue 14): an underlay namespace `sglab-u` with a bridge and one etcd
# member (198.18.0.200:2379), hosts `sglab-h1..3` on 198.18.0.1..3, each
# running `sgswitch up --etcd ... --host hN --underlay 198.18.0.N` with its
# socket at /run/sglab/hN.sock. Nothing is configured in the root namespace.
#
#   sudo scripts/cluster-lab.sh up [HOSTS]    # default 3 hosts
#   sudo SGSWITCH_SOCKET=/run/sglab/h2.sock sgswitch describe-instances
#   sudo scripts/cluster-lab.sh down          # stop everything, delete the namespaces
set -euo pipefail
cd "$(dirname "$0")/.."

run=/run/sglab
bin="${SGSWITCH_BIN:-target/debug/sgswitch}"
u=sglab-u

down() {
    # Instance namespaces the hosts made: each host's own ones.
    ids=""
    for sock in "$run"/h*.sock; do
        [ -S "$sock" ] || continue
        ids="$ids $("$bin" --socket "$sock" describe-instances 2>/dev/null | awk -F'\t' '$1 == "INSTANCE" {print $2}')"
    done
    for pidfile in "$run"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 1
    for ns in $(ip netns list | awk '{print $1}' | grep -E '^sglab-(h[0-9]+|u)$' || true); do
        ip netns del "$ns"
    done
    for id in $ids; do ip netns del "$id" 2>/dev/null || true; done
    rm -rf "$run"
}

up() {
    local hosts="${1:-3}"
    [ -x "$bin" ] || cargo build -q -p mgmt --bin sgswitch
    mkdir -p "$run"
    ip netns add "$u"
    ip -n "$u" link set lo up
    # A fixed MAC: a bridge otherwise takes its lowest port's, changing it as ports join.
    ip -n "$u" link add br0 address 02:00:c6:12:00:fe type bridge
    ip -n "$u" link set br0 up
    ip -n "$u" addr add 198.18.0.200/24 dev br0
    ip netns exec "$u" etcd --name e1 --data-dir "$run/etcd" \
        --listen-client-urls http://198.18.0.200:2379 --advertise-client-urls http://198.18.0.200:2379 \
        --listen-peer-urls http://198.18.0.200:2380 --max-txn-ops 1024 >"$run/etcd.log" 2>&1 &
    echo $! >"$run/etcd.pid"
    for i in $(seq 1 "$hosts"); do
        local ns="sglab-h$i"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$u" link add "uh$i" type veth peer name ul0 netns "$ns"
        ip -n "$u" link set "uh$i" master br0 up
        ip -n "$ns" addr add "198.18.0.$i/24" dev ul0
        ip -n "$ns" link set ul0 up
    done
    for i in $(seq 1 "$hosts"); do
        nsenter --net="/run/netns/sglab-h$i" -- "$bin" --socket "$run/h$i.sock" up \
            --state-dir "$run/h$i" --subnet 10.77.0.0/24 --uplink "sglab-up$i" --ec2-listen off \
            --etcd http://198.18.0.200:2379 --host "h$i" --underlay "198.18.0.$i" \
            >"$run/h$i.log" 2>&1 &
        echo $! >"$run/h$i.pid"
        for _ in $(seq 1 100); do
            grep -q "sgswitch: ready on" "$run/h$i.log" && break
            sleep 0.2
        done
        grep -q "sgswitch: ready on" "$run/h$i.log" || { cat "$run/h$i.log" >&2; exit 1; }
        echo "h$i ready: SGSWITCH_SOCKET=$run/h$i.sock"
    done
}

case "${1:-}" in
up) shift; up "$@" ;;
down) down ;;
*) echo "usage: $0 up [HOSTS] | down" >&2; exit 2 ;;
esac

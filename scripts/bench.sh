#!/usr/bin/env bash
# The end-to-end benchmark (issue 6): sgswitch side by side with the bare wire,
# a veth pair, the Linux bridge + nftables and Open vSwitch userspace, in one run.
#
#   sudo scripts/bench.sh                 # full run (~15 min), writes docs/benchmarks.md + .svg
#   sudo scripts/bench.sh --quick         # one repetition, shorter runs
#   sudo scripts/bench.sh --only sgswitch,wire --metrics tcp,flows --quick
#   sudo scripts/bench.sh --only v6 --quick   # only the IPv6 rows (wire-v6,
#                                         # sgswitch-100-v6; IPv4 rows: --only v4)
#   sudo scripts/bench.sh cluster         # cluster mode (issue 14): edit -> enforced
#                                         # on 2/10/100 hosts, a new host joining;
#                                         # writes docs/cluster-benchmarks.md
#
# As root: installs the Debian packages the harness needs (without starting the
# Open vSwitch service: the harness starts its own ovsdb-server/ovs-vswitchd
# inside a namespace), builds the release binaries, runs
# target/release/e2ebench --report docs/benchmarks.md "$@".
# Every test host is a network namespace the harness makes and deletes; nothing
# is configured in the root namespace. Run it on a quiet machine: the loads,
# the forwarders and anything else share the same CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/bench.sh: run as root (namespaces, TAPs, nftables)" >&2
    exit 1
fi

# Tools of the harness; linux-perf for profiling what it measures.
pkgs=(iperf3 nmap nftables busybox-static iproute2 procps openvswitch-switch linux-perf etcd-server etcd-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scripts/bench.sh: installing ${missing[*]}"
    # Keep package scripts from starting services (Open vSwitch would start its
    # daemons in the root namespace); only when no policy is in place already.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ "$made_policy" = 1 ] && rm -f "$policy"
    trap - EXIT
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p mgmt --bin sgswitch -p e2e --bin labhelper -p bench --bins

echo "scripts/bench.sh: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (numbers are noisy unless the machine is quiet)"
export SGSWITCH_BIN="$target/release/sgswitch"
if [ "${1:-}" = cluster ]; then
    shift
    "$target/release/clusterbench" --report docs/cluster-benchmarks.md "$@"
    # Cross-host TCP: the overlay vs the kernel's own vxlan devices between the
    # same host namespaces, in one run (switch/tests/overlay_root.rs).
    out=$(OVERLAY_BENCH_SECS="${OVERLAY_BENCH_SECS:-5}" cargo test --release -q -p switch \
        --test overlay_root bench_overlay_vs_kernel_vxlan -- --ignored --nocapture 2>&1)
    echo "$out" | grep -E '^\||overlay bench'
    {
        echo
        echo "## Cross-host TCP"
        echo
        echo "iperf3 between two instance namespaces on two hosts (host namespaces on a"
        echo "bridged underlay): through sgswitch's overlay (two switches, VXLAN-GBP, UDP"
        echo "GSO/GRO) and through the kernel's own \`vxlan\` devices on bridges between the"
        echo "same host namespaces, without filtering, and through the floor of any userspace"
        echo "VXLAN path (a pair of \`barewire --vxlan\`), in the same run"
        echo "(\`cargo test --release -p switch --test overlay_root bench_overlay_vs_kernel_vxlan -- --ignored\`)."
        echo
        echo "$out" | awk '/^\|/ { if ($0 ~ /^\| (new TCP|streams \| CPU)/) print ""; print }'
    } >>docs/cluster-benchmarks.md
    exit 0
fi
exec "$target/release/e2ebench" --invoked-as "scripts/bench.sh $*" --report docs/benchmarks.md "$@"

#!/usr/bin/env bash
# Capture a few real frames for the fuzz seed corpus (root; run by hand, the
# result lab.pcap is committed). Two throwaway network namespaces joined by a
# veth pair stand for instance A (172.31.0.2, 02:00:00:00:00:02) and an outside
# host on the uplink (172.31.255.10, 02:aa:00:00:00:01), the addresses of the
# `pipeline` fuzz lab. Traffic stays between the two namespaces: ARP, ping (also
# one fragmented), a TCP exchange, a TCP connect to a closed port (RST), and UDP
# to a closed port (ICMP port unreachable). Everything is removed on exit.
set -euo pipefail
out=${1:-$(dirname "$0")/lab.pcap}
a=sgfz-$$-a
b=sgfz-$$-b
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$a"
ip netns add "$b"
ip link add va netns "$a" type veth peer name vb netns "$b"
ip -n "$a" link set va address 02:00:00:00:00:02 up
ip -n "$b" link set vb address 02:aa:00:00:00:01 up
ip -n "$a" link set lo up
ip -n "$b" link set lo up
ip -n "$a" addr add 172.31.0.2/16 dev va
ip -n "$b" addr add 172.31.255.10/16 dev vb
# No offloads: the capture shows frames as a wire would carry them.
ip netns exec "$a" ethtool -K va tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
ip netns exec "$b" ethtool -K vb tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
ip netns exec "$a" timeout 20 tcpdump -i va -U -s 2048 -c 60 -w "$out" 2>/dev/null &
pids+=($!)
sleep 1
ip netns exec "$a" timeout 10 busybox nc -l -p 80 </dev/null >/dev/null &
pids+=($!)
sleep 0.3
ip netns exec "$b" busybox ping -c 2 -W 1 172.31.0.2 >/dev/null
ip netns exec "$b" busybox ping -c 1 -s 2000 -W 1 172.31.0.2 >/dev/null
echo "GET / HTTP/1.0" | ip netns exec "$b" timeout 3 busybox nc 172.31.0.2 80 >/dev/null || true
ip netns exec "$b" timeout 2 busybox nc 172.31.0.2 22 </dev/null >/dev/null 2>&1 || true
ip netns exec "$b" bash -c 'echo hello > /dev/udp/172.31.0.2/5000' || true
sleep 0.2
ip netns exec "$a" busybox ping -c 1 -W 1 172.31.255.10 >/dev/null
sleep 1
kill "${pids[0]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true
echo "wrote $out"

#!/usr/bin/env bash
# Proves the sgswitch guest image boots and serves under QEMU TCG on this machine,
# entirely inside a network namespace this script creates (needs root):
#
#   scripts/qemu-smoke.sh [OUTDIR]      # OUTDIR of build-guest-image.sh, default guest/build
#
# Namespace gsmoke-PID holds TAP gstPID (10.99.0.1/24) and a busybox udhcpd that leases
# 10.99.0.50 with host name "smoke-guest"; QEMU (-accel tcg) attaches to that TAP with
# virtio-net at its default offloads. Checks, all bounded in time:
#   1. the guest prints "GUEST-READY 10.99.0.50" within SG_SMOKE_TIMEOUT s (default 90);
#   2. the guest's virtio-net negotiated checksum offload (feature bit 0, CSUM);
#   3. GET http://10.99.0.50/ returns "sgswitch guest smoke-guest" (DHCP host name);
#   4. port 22 answers "SSH-2.0-sgswitch-guest" and echoes a line back;
#   5. GET /big.bin (random, made at boot) has the size and md5 the guest printed:
#      TCP payloads sent with partial checksums arrive intact;
#   6. if nmap is installed: 22 and 80 open, 23 and 443 closed (the guest sends RSTs);
#   7. `poweroff` typed on the serial console stops QEMU cleanly.
# Prints boot time (QEMU start -> GUEST-READY) and the big-file transfer rate.
# Exits 0 only when every check passed. Namespace, TAP and processes (by PID) are
# removed on every exit path. Nothing is configured in the root namespace.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-"$ROOT/guest/build"}
TIMEOUT=${SG_SMOKE_TIMEOUT:-90}
NS="gsmoke-$$"
TAP="gst$$"
HOST_IP=10.99.0.1
GUEST_IP=10.99.0.50
GUEST_NAME=smoke-guest
GUEST_MAC=52:54:00:99:00:50

die() {
    echo "qemu-smoke: FAIL: $*" >&2
    exit 1
}
log() { echo "== $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

[ "$(id -u)" = 0 ] || die "needs root (network namespace, TAP)"
if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null ||
        die "cannot install qemu-system-x86"
fi

"$ROOT/scripts/build-guest-image.sh" "$OUT"
# shellcheck source=/dev/null
. "$OUT/image.env"
BB="$SG_GUEST_BUSYBOX"
[ -x "$BB" ] || die "no busybox at $BB (rebuild the image)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gsmoke.XXXXXX")
LOG="$TMP/console.log"
QEMU_PID=""
UDHCPD_PID=""
CAT_PID=""
ok=0

stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    exec 7>&-
    stop_pid "$QEMU_PID"
    stop_pid "$UDHCPD_PID"
    stop_pid "$CAT_PID"
    ip netns del "$NS" 2>/dev/null || true
    if [ "$ok" != 1 ] && [ -s "$LOG" ]; then
        echo "---- guest console (last 40 lines) ----" >&2
        tail -n 40 "$LOG" | tr -d '\r' >&2
    fi
    [ -n "${SG_SMOKE_KEEP:-}" ] && cp "$LOG" "$SG_SMOKE_KEEP"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Background processes are started with `ip netns exec` directly (not through this
# function) so that $! is their own PID: ip netns exec execs the program.
in_ns() { ip netns exec "$NS" "$@"; }

log "namespace $NS, TAP $TAP $HOST_IP/24, udhcpd leasing $GUEST_IP"
ip netns add "$NS"
ip -n "$NS" link set lo up
in_ns ip tuntap add dev "$TAP" mode tap
ip -n "$NS" addr add "$HOST_IP/24" dev "$TAP"
ip -n "$NS" link set "$TAP" up

cat >"$TMP/udhcpd.conf" <<EOF
interface $TAP
start $GUEST_IP
end $GUEST_IP
max_leases 1
lease_file $TMP/udhcpd.leases
pidfile $TMP/udhcpd.pid
static_lease $GUEST_MAC $GUEST_IP
option subnet 255.255.255.0
option router $HOST_IP
option hostname $GUEST_NAME
option lease 600
EOF
touch "$TMP/udhcpd.leases"
ip netns exec "$NS" "$BB" udhcpd -f "$TMP/udhcpd.conf" >"$TMP/udhcpd.log" 2>&1 &
UDHCPD_PID=$!

# The serial console is a pipe chardev: QEMU reads the guest's input from
# console.in (held open read-write on fd 7 so opens never block and we can type)
# and writes its output to console.out, which a cat copies into $LOG.
mkfifo "$TMP/console.in" "$TMP/console.out"
exec 7<>"$TMP/console.in"
: >"$LOG"
cat "$TMP/console.out" >>"$LOG" &
CAT_PID=$!
t0=$(now)
ip netns exec "$NS" qemu-system-x86_64 -accel tcg -m 256 -smp 1 -nographic -no-reboot \
    -kernel "$SG_GUEST_KERNEL" -initrd "$SG_GUEST_INITRD" -append "$SG_GUEST_APPEND" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=off" \
    -device "virtio-net-pci,netdev=n0,mac=$GUEST_MAC,romfile=" \
    -chardev "pipe,id=con0,path=$TMP/console" -serial chardev:con0 \
    -display none -monitor none </dev/null >"$TMP/qemu.out" 2>&1 &
QEMU_PID=$!

log "booting (QEMU pid $QEMU_PID, timeout ${TIMEOUT}s)"
deadline=$(($(date +%s) + TIMEOUT))
ready=""
while :; do
    ready=$(tr -d '\r' <"$LOG" | grep -m1 -o -E 'GUEST-(READY|FAILED).*' || true)
    [ -z "$ready" ] || break
    kill -0 "$QEMU_PID" 2>/dev/null || die "QEMU exited before GUEST-READY: $(cat "$TMP/qemu.out")"
    [ "$(date +%s)" -lt "$deadline" ] || die "no GUEST-READY within ${TIMEOUT}s"
    sleep 0.1
done
t1=$(now)
boot_s=$(elapsed "$t0" "$t1")
uptime=$(tr -d '\r' <"$LOG" | grep -m1 -o 'GUEST-UPTIME .*' || true)
case "$ready" in
    "GUEST-READY $GUEST_IP") log "PASS boot: '$ready' after ${boot_s}s (guest uptime: ${uptime#GUEST-UPTIME })" ;;
    *) die "guest reported '$ready' (want 'GUEST-READY $GUEST_IP')" ;;
esac

# Negotiated virtio features as a bit string, bit 0 first; bit 0 = VIRTIO_NET_F_CSUM.
nic=$(tr -d '\r' <"$LOG" | grep -m1 -o 'GUEST-NIC .*' || true)
features=${nic##* }
[ "${features:0:1}" = 1 ] || die "guest virtio-net did not negotiate checksum offload: '$nic'"
log "PASS offload: guest transmits with partial checksums (CSUM=1, GUEST_CSUM=${features:1:1}, HOST_TSO4=${features:11:1})"

page=$(in_ns timeout 15 "$BB" wget -q -O - "http://$GUEST_IP/") || die "HTTP GET / failed"
[ "$page" = "sgswitch guest $GUEST_NAME" ] || die "HTTP GET / returned '$page'"
log "PASS http: '$page'"

# A bash /dev/tcp client: read the banner, send a line, read the echo.
cat >"$TMP/probe22.sh" <<'EOF'
exec 3<>"/dev/tcp/$1/22" || exit 1
IFS= read -r -t 10 banner <&3 || exit 2
echo "ping-$2" >&3
IFS= read -r -t 10 echoed <&3 || exit 3
printf '%s|%s\n' "${banner%$'\r'}" "$echoed"
EOF
banner=$(in_ns timeout 15 bash "$TMP/probe22.sh" "$GUEST_IP" "$$") || die "port 22 exchange failed (status $?)"
[ "$banner" = "SSH-2.0-sgswitch-guest|ping-$$" ] || die "port 22 answered '$banner'"
log "PASS port 22: banner 'SSH-2.0-sgswitch-guest', line echoed"

big=$(tr -d '\r' <"$LOG" | grep -m1 -o 'GUEST-BIG .*' || true)
read -r _ big_size big_md5 <<<"$big"
[ -n "${big_md5:-}" ] || die "guest printed no GUEST-BIG line"
tb0=$(now)
in_ns timeout 120 "$BB" wget -q -O "$TMP/big.bin" "http://$GUEST_IP/big.bin" || die "HTTP GET /big.bin failed"
tb1=$(now)
got_size=$(stat -c %s "$TMP/big.bin")
got_md5=$(md5sum "$TMP/big.bin" | cut -d' ' -f1)
[ "$got_size" = "$big_size" ] || die "big.bin: got $got_size bytes, guest has $big_size"
[ "$got_md5" = "$big_md5" ] || die "big.bin: md5 $got_md5, guest has $big_md5"
big_s=$(elapsed "$tb0" "$tb1")
rate=$(awk -v n="$got_size" -v s="$big_s" 'BEGIN { printf "%.1f", n / 1048576 / (s > 0 ? s : 0.001) }')
log "PASS big file: $got_size bytes, md5 $got_md5 matches, ${big_s}s (${rate} MiB/s)"

# nmap is optional here (scripts/test.sh installs it): the guest must show exactly
# its two services open and answer other ports with a RST ("closed").
if command -v nmap >/dev/null; then
    scan=$(in_ns timeout 60 nmap -n -Pn -sS -p 22,23,80,443 --max-retries 2 "$GUEST_IP") ||
        die "nmap failed: $scan"
    states=$(echo "$scan" | awk '$1 ~ /^[0-9]+\/tcp$/ { printf "%s=%s ", $1, $2 }')
    [ "$states" = "22/tcp=open 23/tcp=closed 80/tcp=open 443/tcp=closed " ] ||
        die "nmap saw '$states'"
    log "PASS nmap: $states"
else
    log "SKIP nmap: not installed"
fi

echo poweroff >&7
deadline=$(($(date +%s) + 30))
while kill -0 "$QEMU_PID" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || die "QEMU still running 30s after 'poweroff'"
    sleep 0.2
done
qemu_status=0
wait "$QEMU_PID" || qemu_status=$?
QEMU_PID=""
tr -d '\r' <"$LOG" | grep -q 'GUEST-POWEROFF' || die "guest did not run its shutdown actions"
[ "$qemu_status" = 0 ] || die "QEMU exited with status $qemu_status after poweroff"
log "PASS poweroff: QEMU exited cleanly"

ok=1
echo "qemu-smoke: OK boot=${boot_s}s big=${got_size}B/${big_s}s (${rate} MiB/s) kernel=$SG_GUEST_KVER initrd=$(stat -c %s "$SG_GUEST_INITRD")B"

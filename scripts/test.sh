#!/usr/bin/env bash
# The whole sgswitch test suite: unit, property, in-memory simulation, and the
# root-only namespace/TAP/nmap tests. Installs what the tests need first.
#
#   ./scripts/test.sh            # everything, then each fuzz target for 30 s
#   ./scripts/test.sh -p filter  # extra arguments go to `cargo test` (no fuzzing)
#
# SGSWITCH_FUZZ_SECS sets the fuzzing time per target (0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="nmap iperf3 hping3 tcpdump nftables busybox-static iproute2 procps qemu-system-x86 curl prometheus etcd-server etcd-client python3 ethtool"
if [ "$(id -u)" = 0 ]; then
    missing=""
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "== installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # The QEMU guest image of mgmt/tests/qemu_guest.rs (idempotent: 0.05 s when
    # up to date; a build downloads two Debian packages, about 15 s).
    if ! out=$(scripts/build-guest-image.sh 2>&1); then
        echo "$out" >&2
        echo "== building the QEMU guest image failed" >&2
        exit 1
    fi
    # The real AWS clients of tests/tests/ec2_api.rs (awscli v1 and v2, boto3, boto).
    scripts/install-ec2-clients.sh
else
    echo "== not root: the namespace/TAP/nmap/QEMU/EC2-client tests will skip themselves"
fi

echo "== building the sgswitch binary (the end-to-end tests run it)"
cargo build --locked -p mgmt --bin sgswitch

echo "== cargo test"
status=0
cargo test --locked --workspace --no-fail-fast "$@" || status=$?

# The fuzz crate's own tests (seeds, committed corpus, regressions): it is a
# workspace of its own, so `cargo test --workspace` does not reach it.
echo "== cargo test (fuzz crate)"
(cd fuzz && cargo test --locked -q) || status=$?

# Fuzzing (fuzz/, cargo-fuzz on stable): a bounded run of every target; longer by
# hand with `scripts/fuzz.sh SECONDS`.
fuzz_secs=${SGSWITCH_FUZZ_SECS:-30}
if [ $# -eq 0 ] && [ "$fuzz_secs" != 0 ]; then
    echo "== fuzzing, ${fuzz_secs} s per target"
    scripts/fuzz.sh "$fuzz_secs" || status=$?
fi
exit $status

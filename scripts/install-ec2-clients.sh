#!/usr/bin/env bash
# Installs the real AWS clients the EC2 Query API tests (tests/tests/ec2_api.rs)
# drive against sgswitch. Idempotent: when all is in place it only checks (a few
# seconds: it asks each client its version). Needs root.
#
#   Debian: awscli (v2, 2.9.x), python3-boto3, python3-boto (2.49), python3-venv
#   PyPI:   awscli v1 in a venv at $SGSWITCH_AWSCLI1_VENV (default
#           /opt/sgswitch-awscli1), so that `…/bin/aws` is awscli 1.x
#
# The tests find awscli v1 at /opt/sgswitch-awscli1/bin/aws (or
# $SGSWITCH_AWSCLI1), awscli v2 at /usr/bin/aws (or $SGSWITCH_AWSCLI2) and run
# boto3/boto with /usr/bin/python3 (or $SGSWITCH_EC2_PYTHON).
set -euo pipefail

VENV="${SGSWITCH_AWSCLI1_VENV:-/opt/sgswitch-awscli1}"
PKGS="awscli python3-boto3 python3-boto python3-venv python3-pip"

if [ "$(id -u)" != 0 ]; then
    echo "install-ec2-clients.sh: needs root (apt-get, $VENV)" >&2
    exit 1
fi

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

v1_ok() {
    [ -x "$VENV/bin/aws" ] && "$VENV/bin/aws" --version 2>&1 | grep -q '^aws-cli/1\.'
}
if ! v1_ok; then
    echo "== installing awscli v1 from PyPI into $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    # Proxy settings of the caller are irrelevant to PyPI access here; keep pip quiet.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'awscli>=1.29,<2'
    v1_ok || { echo "awscli v1 in $VENV does not report version 1.x" >&2; exit 1; }
fi

echo "== ec2 clients: $(/usr/bin/aws --version 2>&1 | cut -d' ' -f1) (v2), $("$VENV/bin/aws" --version 2>&1 | cut -d' ' -f1) (v1)," \
    "boto3 $(/usr/bin/python3 -c 'import boto3; print(boto3.__version__)')," \
    "boto $(/usr/bin/python3 -c 'import boto; print(boto.__version__)')"

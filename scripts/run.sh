#!/usr/bin/env bash
# Set up the Python environment (idempotent) and run dicom-node in the foreground on the shipped config.
# Usage: scripts/run.sh [daemon.py arguments...]   (default: run with etc/node.yaml, loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null; then
    echo "python3 (3.11+) is required" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        # Debian splits venv/ensurepip into python3-venv.
        rm -rf .venv
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv .venv
    fi
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python daemon.py --config "${DICOMNODE_CONFIG:-etc/node.yaml}" "$@"

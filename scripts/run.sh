#!/usr/bin/env bash
# Set up the Python environment (idempotent) and run dicom-node in the foreground on the shipped config.
# Usage: scripts/run.sh [daemon.py arguments...]   (default: run with etc/node.yaml, loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python daemon.py --config "${DICOMNODE_CONFIG:-etc/node.yaml}" "$@"

#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages + Python deps), lint, type-check, run all tests.
# Real peers are required: DCMTK, Orthanc, dcm2niix, systemd-analyze, PostgreSQL and Chromium (the browser
# tests); a missing one fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for tool in /usr/bin/storescu /usr/bin/storescp /usr/bin/echoscu /usr/bin/findscu /usr/bin/movescu \
            /usr/sbin/Orthanc /usr/bin/dcm2niix /usr/bin/systemd-analyze /usr/bin/openssl \
            /usr/bin/chromium /usr/bin/chromedriver; do
    [ -x "$tool" ] || need_apt=1
done
# PostgreSQL server binaries (the state backend's tests start their own server on a free port).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "Missing DCMTK/Orthanc/dcm2niix/systemd/openssl/PostgreSQL/Chromium: run as root or install:" \
             "apt-get install dcmtk orthanc dcm2niix systemd openssl postgresql chromium chromium-driver" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dcmtk orthanc dcm2niix systemd openssl postgresql \
        chromium chromium-driver >/dev/null
fi
# The Debian orthanc package may start its own service on 4242; tests run their own Orthanc on free ports.
. scripts/venv.sh
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Install or upgrade dicom-node as a systemd service: user, folders, code, venv, config, unit.
#
# Usage: sudo scripts/install.sh [--dry-run]
#   --dry-run   print what would be done (as shell commands) and change nothing; no root needed
#
# Safe to run again: an existing user, config and venv are kept, the code and the unit are replaced,
# and a running service is restarted on the new code. Layout (the unit file assumes it):
#   /opt/dicom-node (code + .venv), /etc/dicom-node/node.yaml, /var/lib/dicom-node/{inbox,outbox,var}.
set -euo pipefail

readonly PREFIX=/opt/dicom-node
readonly CONF_DIR=/etc/dicom-node
readonly DATA_DIR=/var/lib/dicom-node
readonly UNIT_PATH=/etc/systemd/system/dicom-node.service
readonly SERVICE=dicom-node
readonly SERVICE_USER=dicom-node
PYTHON=${PYTHON:-python3}
DRY_RUN=0

usage() {
    sed -n '2,5s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SRC

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# Every change goes through run, so --dry-run shows exactly the commands a real run would execute.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

if ((!DRY_RUN && EUID != 0)); then
    die "must run as root (or try --dry-run)"
fi
[[ -f $SRC/daemon.py && -f $SRC/requirements.txt && -f $SRC/systemd/dicom-node.service ]] \
    || die "$SRC does not look like a dicom-node source tree"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"

say "service user $SERVICE_USER"
if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    echo "    exists"
else
    run useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "dicom-node service" "$SERVICE_USER"
fi

say "folders under $DATA_DIR and $CONF_DIR"
# install -d also resets owner and mode of a folder that exists, so a re-run repairs them.
run install -d -o root -g "$SERVICE_USER" -m 0750 "$DATA_DIR" "$CONF_DIR"
# inbox: members of the group drop request files (setgid keeps the group on them).
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 2770 "$DATA_DIR/inbox"
# outbox: members of the group read the outputs; only the node writes.
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 2750 "$DATA_DIR/outbox"
# var: the store and the database; the group may read them (status tools, audits), only the node writes.
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$DATA_DIR/var"

say "code in $PREFIX"
if [[ $SRC == "$PREFIX" ]]; then
    echo "    already in place"
else
    run install -d -o root -g root -m 0755 "$PREFIX"
    # Remove the previous version (but not the venv) so deleted modules do not linger after an upgrade.
    run find "$PREFIX" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf -- {} +
    if ((DRY_RUN)); then
        printf '+ tar -C %q -c --exclude-vcs ... . | tar -C %q -x\n' "$SRC" "$PREFIX"
    else
        tar -C "$SRC" -c --exclude-vcs --exclude=./.venv --exclude=./inbox --exclude=./outbox --exclude=./var \
            --exclude=__pycache__ --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache . \
            | tar -C "$PREFIX" -x --no-same-owner
    fi
    run chown -R root:root "$PREFIX"
    run chmod -R u=rwX,go=rX "$PREFIX"
fi

say "virtualenv $PREFIX/.venv"
if [[ -x $PREFIX/.venv/bin/python ]]; then
    echo "    exists: updating its packages"
else
    run "$PYTHON" -m venv "$PREFIX/.venv"
fi
run "$PREFIX/.venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
    -r "$PREFIX/requirements.txt"
# The service runs with PYTHONDONTWRITEBYTECODE on a read-only /opt: compile once here instead.
run "$PREFIX/.venv/bin/python" -m compileall -q "$PREFIX/daemon.py" "$PREFIX/node"

say "configuration $CONF_DIR/node.yaml"
if [[ -e $CONF_DIR/node.yaml ]]; then
    echo "    exists: kept as is"
else
    [[ -f $SRC/etc/node.yaml ]] || die "$SRC/etc/node.yaml is missing"
    # Its relative paths (inbox, outbox, var) resolve against the unit's WorkingDirectory=$DATA_DIR.
    run install -o root -g "$SERVICE_USER" -m 0640 "$SRC/etc/node.yaml" "$CONF_DIR/node.yaml"
fi
# The same check the unit's ExecStartPre runs, as the same user, so a bad config stops the install here.
run env -C "$DATA_DIR" runuser -u "$SERVICE_USER" -- \
    "$PREFIX/.venv/bin/python" "$PREFIX/daemon.py" --config "$CONF_DIR/node.yaml" check-config

say "systemd unit $UNIT_PATH"
run install -o root -g root -m 0644 "$SRC/systemd/dicom-node.service" "$UNIT_PATH"

# /run/systemd/system exists exactly when systemd is the init system (what sd_booted(3) tests).
if [[ ! -d /run/systemd/system ]]; then
    say "systemd is not running as PID 1 here: the service is installed but not enabled."
    echo "    On a systemd host: systemctl daemon-reload && systemctl enable --now $SERVICE"
    exit 0
fi
run systemctl daemon-reload
if systemctl is-active --quiet "$SERVICE"; then
    run systemctl restart "$SERVICE"
else
    run systemctl enable --now "$SERVICE"
fi
say "done: systemctl status $SERVICE; journalctl -u $SERVICE -f; curl -s http://127.0.0.1:<health port>/healthz"

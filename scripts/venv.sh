# Sourced by run.sh and test.sh: make sure .venv exists (Debian splits venv/ensurepip into python3-venv).
if ! command -v python3 >/dev/null; then
    echo "python3 (3.11+) is required" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if [ "$(id -u)" = 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv .venv
    fi
fi

#!/usr/bin/env bash
# Install everything the tests need on a fresh machine and run the whole suite.
#
# - RabbitMQ: started if installed but down; installed with apt-get when
#   missing and running as root; otherwise the script stops and says how.
# - Python: a virtualenv in .venv (override with MPNN_VENV) with the project
#   and its test and data extras.
# Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
venv="${MPNN_VENV:-.venv}"
broker_host=127.0.0.1
broker_port=5672

broker_is_up() {
    (exec 3<>"/dev/tcp/${broker_host}/${broker_port}") 2>/dev/null
}

ensure_rabbitmq() {
    if broker_is_up; then
        return
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "RabbitMQ is not installed and this script cannot install it (needs root and apt-get)." >&2
            echo "Install it (Debian/Ubuntu: sudo apt-get install rabbitmq-server), start it with" >&2
            echo "'sudo rabbitmq-server -detached', and run this script again." >&2
            exit 1
        fi
        echo "installing rabbitmq-server with apt-get" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    echo "starting rabbitmq-server" >&2
    rabbitmq-server -detached || true
    for _ in $(seq 1 120); do
        if broker_is_up && rabbitmqctl -q await_startup >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not accept connections on ${broker_host}:${broker_port} within 120 s" >&2
    exit 1
}

ensure_rabbitmq

if [ ! -x "${venv}/bin/python" ]; then
    python3 -m venv "${venv}"
fi
"${venv}/bin/python" -m pip install -q --upgrade pip >/dev/null
"${venv}/bin/python" -m pip install -q -e '.[test,data]'

# pytest exits 5 when it collected no test; that must fail here, and it does
# because any non-zero status fails this script.
exec "${venv}/bin/python" -m pytest "$@"

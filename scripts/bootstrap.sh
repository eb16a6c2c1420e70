#!/usr/bin/env bash
# Idempotent dev/CI setup: server binaries for the integration tests, then .venv with the
# package installed editable with dev extras. Safe to run repeatedly; does nothing when
# everything is already in place.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
# binary -> Debian package. prometheus: the server scrapes the gateway in the deploy tests,
# promtool checks configs, rules and /metrics; systemd-analyze verifies the shipped unit;
# node runs the Node-RED flow's function nodes; chromium is the headless browser of the
# operator page test (playwright drives it by executable_path: no browser download).
# nats-server and rabbitmq-server (epmd comes with it, in erlang-base) are the other
# brokers of the cluster and compatibility tests (docs/brokers.md); the policy-rc.d below
# keeps the rabbitmq-server, epmd and nats-server services from starting on install.
BINARIES=(mosquitto victoria-metrics influxd prometheus promtool systemd-analyze node chromium
    nats-server rabbitmq-server epmd)
PACKAGES=(mosquitto victoria-metrics influxdb prometheus prometheus systemd nodejs chromium
    nats-server rabbitmq-server erlang-base)

say() { echo "bootstrap: $*"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    fi
fi

have_binary() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

APT_UPDATED=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        say "apt-get not available; install manually: $*" >&2
        exit 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    # Keep package maintainer scripts from starting services on the standard ports:
    # invoke-rc.d / deb-systemd-invoke honour policy-rc.d exit code 101 ("forbidden").
    if [ ! -e "$POLICY" ]; then
        say "installing temporary $POLICY (no service starts during install)"
        POLICY_CREATED=1
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY"
    fi
    say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@"
    remove_policy
}

POLICY=/usr/sbin/policy-rc.d
POLICY_CREATED=0
remove_policy() {
    if [ "$POLICY_CREATED" -eq 1 ]; then
        say "removing temporary $POLICY"
        "${SUDO[@]}" rm -f "$POLICY"
        POLICY_CREATED=0
    fi
}
trap remove_policy EXIT

# 1. Server binaries used by the real-server tests.
missing=()
wanted=()
for i in "${!BINARIES[@]}"; do
    if ! have_binary "${BINARIES[$i]}"; then
        missing+=("${BINARIES[$i]}")
        pkg="${PACKAGES[$i]}"
        [[ " ${wanted[*]} " == *" $pkg "* ]] || wanted+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "missing server binaries: ${missing[*]}"
    apt_install "${wanted[@]}"
else
    say "server binaries present: ${BINARIES[*]}"
fi

# 2. Python >= 3.11 with venv support.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "$PYTHON is $("$PYTHON" --version 2>&1); need Python >= 3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        say "python venv module unavailable"
        apt_install python3-venv
    fi
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
else
    say "$VENV exists"
fi

# 3. Editable install with dev extras, redone whenever pyproject.toml changes.
if [ ! -e "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    say "pip install -e '.[dev]' into $VENV"
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$VENV/.installed"
else
    say "$VENV up to date with pyproject.toml"
fi

#!/usr/bin/env bash
# Runs every test of the workspace against the real nats-server.
#
# Installs the Debian package `nats-server` first when it is missing (as root, or through sudo),
# because the NATS tests start the real binary on free loopback ports; they never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

HINT="install nats-server (Debian: apt-get install nats-server) or set NATS_SERVER_BIN"

# An explicit NATS_SERVER_BIN must be a runnable binary: never fall back, never skip.
if [ -n "${NATS_SERVER_BIN:-}" ] && [ ! -x "$NATS_SERVER_BIN" ]; then
    echo "run.sh: NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file; $HINT" >&2
    exit 1
fi

have_nats() {
    [ -n "${NATS_SERVER_BIN:-}" ] || command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]
}

if ! have_nats; then
    echo "run.sh: nats-server not found; installing the Debian package nats-server" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
    fi
    if ! have_nats; then
        echo "run.sh: nats-server is still missing; $HINT" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"
NATS_BIN="${NATS_SERVER_BIN:-$(command -v nats-server)}"
if ! version=$("$NATS_BIN" --version 2>&1); then
    echo "run.sh: $NATS_BIN does not run ($version); $HINT" >&2
    exit 1
fi
echo "run.sh: using $NATS_BIN ($version)" >&2

# Unit, integration, conformance, fault and compile-fail tests, then the doc tests (README included).
cargo test --workspace --all-targets
cargo test --workspace --doc

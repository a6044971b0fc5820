#!/usr/bin/env bash
# Runs every Tidings test. Provisions what the tests need, then runs cargo test:
#   - a throwaway PostgreSQL cluster on a free loopback port (installed with apt only
#     when no PostgreSQL binaries exist), removed on exit;
#   - paho-mqtt and openapi-spec-validator from PyPI (a third-party MQTT client and
#     OpenAPI validator the tests drive);
#   - moto's S3 server from PyPI, the object store the S3 uploads tests talk to;
#   - mosquitto-clients (apt) and MQTT.js (npm), third-party clients the MQTT tests drive;
#   - web-push-testing (npm), the independent Web Push service the push tests send to;
#   - mosquitto (apt), the peer the benchmark's smoke test measures against and the
#     external broker tests/external_broker.rs runs Tidings behind.
#   - tests/rmqtt-harness, one node of an rmqtt cluster (a crate outside the workspace,
#     Rust >= 1.94, `protoc` from apt's protobuf-compiler), for tests/multi_node_rmqtt.rs.
# The PostgreSQL tests read TIDINGS_TEST_PG_URL, the S3 ones TIDINGS_TEST_S3_ENDPOINT,
# the rmqtt test TIDINGS_RMQTT_HARNESS, and fail (never skip) without them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(mktemp -d /tmp/tidings-test.XXXXXX)
PIDS=()

log() { printf '[test.sh] %s\n' "$*" >&2; }

cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    if [ -n "${PG_BIN:-}" ] && [ -d "$WORK/pg" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

apt_install() {
    log "installing with apt: $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# initdb refuses to run as root: run the cluster as the postgres user when we are root.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$PG_BIN" ]; then
        apt_install postgresql
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    mkdir -p "$WORK/pg" "$WORK/pgsock"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$WORK/pg" "$WORK/pgsock" && chmod 755 "$WORK"
    as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    local port
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        if as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -w -t 60 -l "$WORK/pg/server.log" \
            -o "-p $port -k $WORK/pgsock -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
            start >/dev/null; then
            export TIDINGS_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
            log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
            return 0
        fi
    done
    cat "$WORK/pg/server.log" >&2
    log "could not start PostgreSQL"
    return 1
}

# Third-party Python tools the tests drive: paho-mqtt (an MQTT client we did not
# write) and openapi-spec-validator (checks the generated OpenAPI document).
ensure_paho() {
    if ! python3 -c 'import paho.mqtt.client' 2>/dev/null; then
        log "installing paho-mqtt (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
    fi
    if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
        log "installing openapi-spec-validator (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<1'
    fi
}

# The SDK binding tests (bindings/tests/sdk_{python,kotlin,swift}.rs) generate bindings
# from the library cargo builds and need python3, a C compiler, java, kotlinc (npm
# `kotlin-compiler`, which ships kotlinx-coroutines; its package only links kotlinc-js
# onto PATH, so KOTLINC points at it) and Debian's JNA. With CI=true they fail, never
# skip, when one is missing. Also builds the cdylib, generates bindings/generated/ and
# checks the SDK for the iOS and Android targets (failing when rustup cannot add one).
prepare_bindings() {
    if ! command -v kotlinc >/dev/null 2>&1; then
        local npm_kotlinc
        npm_kotlinc="$(npm root -g 2>/dev/null || true)/kotlin-compiler/bin/kotlinc"
        if [ ! -x "$npm_kotlinc" ]; then
            log "installing kotlin-compiler (npm)"
            npm install -g --silent kotlin-compiler >/dev/null
            npm_kotlinc="$(npm root -g)/kotlin-compiler/bin/kotlinc"
        fi
        export KOTLINC="$npm_kotlinc"
    fi
    if [ ! -f /usr/share/java/jna.jar ]; then
        apt_install libjna-java
    fi
    if ! command -v java >/dev/null 2>&1; then
        apt_install default-jre-headless
    fi
    log "building the SDK library and generating bindings"
    bindings/generate.sh
    log "cargo check of the SDK for iOS and Android"
    bindings/check_targets.sh
}

# Third-party MQTT clients the front-door tests drive: Debian's mosquitto_sub
# (mosquitto-clients) and MQTT.js (npm `mqtt`, installed next to the test scripts in
# tests/clients/node_modules, which git ignores).
ensure_mqtt_clients() {
    if ! command -v mosquitto_sub >/dev/null 2>&1; then
        apt_install mosquitto-clients
    fi
    # The bench smoke test (bench/tests/smoke.rs) runs Debian's Mosquitto as its peer.
    if [ ! -x /usr/sbin/mosquitto ]; then
        apt_install mosquitto
    fi
    if ! (cd tests/clients && node -e "require('mqtt')" 2>/dev/null); then
        log "installing MQTT.js (npm mqtt@5)"
        npm install --silent --no-fund --no-audit --prefix tests/clients mqtt@5 >/dev/null
    fi
}

# npm web-push-testing: an independent Web Push service (checks VAPID, decrypts
# aes128gcm) that tests/webpush.rs runs with node; installed next to MQTT.js.
ensure_webpush_testing() {
    if [ ! -f tests/clients/node_modules/web-push-testing/src/bin/server.js ]; then
        log "installing web-push-testing (npm web-push-testing@1.2.2)"
        npm install --silent --no-fund --no-audit --prefix tests/clients web-push-testing@1.2.2 >/dev/null
    fi
}

# moto's S3 server (PyPI) on a free loopback port, for the uploads tests on S3; they read
# TIDINGS_TEST_S3_ENDPOINT and fail (never skip) without it. `moto.server` is what needs
# the [server] extra (Flask), so that is the import checked.
start_s3() {
    if ! python3 -c 'import moto.server' 2>/dev/null; then
        log "installing moto[server] (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
    fi
    local port pid
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        python3 -m moto.server -H 127.0.0.1 -p "$port" >"$WORK/moto.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        for _ in $(seq 1 150); do
            if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null; then
                export TIDINGS_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
                log "moto S3 on 127.0.0.1:$port"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break # exited: port taken, or broken install
            sleep 0.2
        done
        kill "$pid" 2>/dev/null || true
    done
    cat "$WORK/moto.log" >&2
    log "could not start moto's S3 server"
    return 1
}

# One rmqtt broker node (tests/rmqtt-harness): outside the workspace because rmqtt 0.24
# needs Rust 1.94 and ~320 crates the server never uses; its own lock file pins them.
build_rmqtt_harness() {
    if ! command -v protoc >/dev/null 2>&1; then
        apt_install protobuf-compiler
    fi
    log "building the rmqtt harness (tests/rmqtt-harness)"
    (cd tests/rmqtt-harness && cargo build --locked --quiet)
    export TIDINGS_RMQTT_HARNESS="$ROOT/tests/rmqtt-harness/target/debug/tidings-rmqtt-harness"
}

start_postgres
build_rmqtt_harness
ensure_paho
ensure_mqtt_clients
ensure_webpush_testing
start_s3
prepare_bindings

log "cargo test"
cargo test --workspace --locked "$@"

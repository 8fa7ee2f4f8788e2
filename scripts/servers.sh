# Sourced by test.sh and bench.sh: install and start the servers the suite talks
# to, on loopback, in a temporary folder, and stop them on exit.
# shellcheck shell=bash

KW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN=/usr/lib/postgresql/15/bin

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

ensure_debian_packages() {
    local missing=()
    [ -x "$PG_BIN/initdb" ] || missing+=(postgresql)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v openssl >/dev/null || missing+=(openssl)
    # The audit streaming tests send to a real rsyslog over TLS (GnuTLS driver).
    [ -x /usr/sbin/rsyslogd ] || missing+=(rsyslog)
    [ -e /usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so ] || ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || missing+=(rsyslog-gnutls)
    # promtool, for the alerting rules' tests (deploy/prometheus/alerts.test.yml).
    command -v promtool >/dev/null || missing+=(prometheus)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
            || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "${missing[@]}" >/dev/null; }
    fi
}

ensure_venv() {
    make -C "$KW_ROOT" --no-print-directory install
}

free_port() {
    "$KW_ROOT/.venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# LocalStack (AWS KMS, S3 and STS) runs from a venv of its own: its pins clash with
# ours. 4.10.0 exactly: 4.11 to 4.13 break ImportKeyMaterial, 4.14 needs Python 3.12.
KW_LOCALSTACK_VERSION=4.10.0
KW_LOCALSTACK_VENV="$KW_ROOT/.venv-localstack"
KW_LOCALSTACK_PID=""

localstack_installed() {
    [ -x "$KW_LOCALSTACK_VENV/bin/python" ] && [ "$("$KW_LOCALSTACK_VENV/bin/python" -c \
        'import localstack, localstack.version as v; print(v.__version__)' 2>/dev/null)" \
        = "$KW_LOCALSTACK_VERSION" ]
}

# Create .venv-localstack and install LocalStack into it unless it is already there.
# Quiet on success; on failure, the tail of pip's output. A lock on the repository
# folder keeps two concurrent runs from installing into the same venv at once.
ensure_localstack() {
    localstack_installed && return 0
    local lock log started=$EPOCHREALTIME attempt
    exec {lock}<"$KW_ROOT"
    flock -w 900 "$lock" || { echo "LocalStack: timed out waiting for another install" >&2; return 1; }
    if ! localstack_installed; then
        log="$(mktemp /tmp/keyward-localstack-pip.XXXXXX)"
        printf 'installing LocalStack %s into .venv-localstack ... ' "$KW_LOCALSTACK_VERSION"
        for attempt in 1 2; do
            if ! "$KW_LOCALSTACK_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
                rm -rf "$KW_LOCALSTACK_VENV"
                "$KW_ROOT/.venv/bin/python" -m venv "$KW_LOCALSTACK_VENV" >>"$log" 2>&1 || continue
            fi
            "$KW_LOCALSTACK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
                "localstack-core[runtime]==$KW_LOCALSTACK_VERSION" 'cbor2<6' service_identity \
                >>"$log" 2>&1 && localstack_installed && break
            echo "(attempt $attempt failed)" >>"$log"
        done
        if ! localstack_installed; then
            echo "failed" >&2
            tail -n 40 "$log" >&2
            rm -f "$log"
            exec {lock}<&-
            return 1
        fi
        rm -f "$log"
        echo "done in $(elapsed_since "$started") s"
    fi
    exec {lock}<&-
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# Start LocalStack in the background, in a process group of its own, on a free port,
# with its home, temporary files, state and log under $KW_RUN_DIR/localstack.
start_localstack() {
    local dir="$KW_RUN_DIR/localstack"
    mkdir -p "$dir/home" "$dir/tmp" "$dir/volume"
    # It cannot make its own certificate here (no network), so give it one.
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
        -keyout "$dir/server.key" -out "$dir/server.crt" >/dev/null 2>&1
    cat "$dir/server.crt" "$dir/server.key" >"$dir/server.pem"
    KW_LOCALSTACK_PORT="$(free_port)"
    KW_LOCALSTACK_LOG="$dir/localstack.log"
    KW_LOCALSTACK_STARTED=$EPOCHREALTIME
    # setsid: its own process group, so stop_localstack can end it and its children.
    # The shell writes its pid (the group's id) before exec'ing LocalStack.
    # env -i: nothing from our environment (AWS_*, DEBUG, ...) changes its configuration.
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/pid" \
        env -i PATH="$PATH" LANG=C.UTF-8 \
        HOME="$dir/home" TMPDIR="$dir/tmp" LOCALSTACK_VOLUME_DIR="$dir/volume" \
        GATEWAY_LISTEN="127.0.0.1:$KW_LOCALSTACK_PORT" GATEWAY_SERVER=hypercorn \
        SERVICES=kms,s3,sts EAGER_SERVICE_LOADING=1 CUSTOM_SSL_CERT_PATH="$dir/server.pem" \
        DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 LOCALSTACK_TELEMETRY=0 \
        "$KW_LOCALSTACK_VENV/bin/python" -m localstack.runtime.main \
        >"$KW_LOCALSTACK_LOG" 2>&1 </dev/null &
    for _ in $(seq 100); do [ -s "$dir/pid" ] && break; sleep 0.05; done
    KW_LOCALSTACK_PID="$(cat "$dir/pid")"
}

localstack_healthy() {
    "$KW_ROOT/.venv/bin/python" - "$1" <<'PY' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        services = json.load(response)["services"]
except Exception:
    sys.exit(1)
sys.exit(any(services.get(name) not in ("available", "running") for name in ("kms", "s3", "sts")))
PY
}

# Wait (90 s at most) until its health check shows KMS, S3 and STS up; then export the
# endpoint. Its log says "Ready." even when the gateway could not bind its port (taken
# since free_port looked): when the health check still fails 5 s after "Ready.", start
# it again on another port (three attempts).
wait_localstack() {
    local deadline=$((SECONDS + 90)) attempt=1 ready_seen=""
    until localstack_healthy "http://127.0.0.1:$KW_LOCALSTACK_PORT/_localstack/health"; do
        if ! kill -0 "$KW_LOCALSTACK_PID" 2>/dev/null; then
            echo "LocalStack exited while starting; the end of its log:" >&2
            tail -n 40 "$KW_LOCALSTACK_LOG" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "LocalStack not ready after 90 s; the end of its log:" >&2
            tail -n 40 "$KW_LOCALSTACK_LOG" >&2
            return 1
        fi
        if [ -z "$ready_seen" ] && grep -q '^Ready\.' "$KW_LOCALSTACK_LOG"; then
            ready_seen=$SECONDS
        fi
        if [ -n "$ready_seen" ] && [ $((SECONDS - ready_seen)) -ge 5 ]; then
            if [ "$attempt" -ge 3 ]; then
                echo "LocalStack says Ready but does not answer on port $KW_LOCALSTACK_PORT;" \
                    "the end of its log:" >&2
                tail -n 40 "$KW_LOCALSTACK_LOG" >&2
                return 1
            fi
            echo "LocalStack does not answer on port $KW_LOCALSTACK_PORT: another port" >&2
            stop_localstack
            mv "$KW_RUN_DIR/localstack" "$KW_RUN_DIR/localstack.$attempt"
            attempt=$((attempt + 1)) ready_seen=""
            start_localstack
        fi
        sleep 0.25
    done
    export KEYWARD_TEST_AWS_ENDPOINT="http://127.0.0.1:$KW_LOCALSTACK_PORT"
}

stop_localstack() {
    local pid="$KW_LOCALSTACK_PID"
    [ -n "$pid" ] || return 0
    KW_LOCALSTACK_PID=""
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null
}

# PyKMIP's KMIP server (pykmip, installed in .venv by the dev extra), mutual TLS on
# loopback, with certificates made for this run under $KW_RUN_DIR/kmip/certs.
KW_KMIP_PID=""

# make_kmip_cert NAME SUBJECT EXTENDED-KEY-USAGE [expired]: NAME.key and NAME.crt, signed
# by ca.crt/ca.key in the current folder, valid for two days from now, or with
# "expired" for one day that ended yesterday (`openssl ca`: OpenSSL 3.0's x509 command
# cannot set the start date).
make_kmip_cert() {
    local name="$1" subject="$2" eku="$3" expired="${4:-}"
    openssl req -new -newkey rsa:2048 -nodes -subj "$subject" \
        -keyout "$name.key" -out "$name.csr" 2>/dev/null || return 1
    {
        echo 'basicConstraints=CA:FALSE'
        echo 'keyUsage=critical,digitalSignature,keyEncipherment'
        echo "extendedKeyUsage=$eku"
        [ "$name" = server ] && echo 'subjectAltName=IP:127.0.0.1,DNS:localhost'
    } >"$name.ext"
    if [ -z "$expired" ]; then
        openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile "$name.ext" -out "$name.crt" 2>/dev/null || return 1
    else
        mkdir -p ca-db && : >ca-db/index.txt && echo 01 >ca-db/serial
        printf '%s\n' '[ca]' 'default_ca=test' '[test]' 'database=ca-db/index.txt' \
            'new_certs_dir=ca-db' 'serial=ca-db/serial' 'default_md=sha256' 'policy=any' \
            '[any]' 'commonName=supplied' >ca-db/ca.cnf
        openssl ca -batch -notext -config ca-db/ca.cnf -cert ca.crt -keyfile ca.key \
            -in "$name.csr" -extfile "$name.ext" -out "$name.crt" \
            -startdate "$(date -u -d '-2 days' +%Y%m%d%H%M%SZ)" \
            -enddate "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" 2>/dev/null || return 1
        rm -rf ca-db
    fi
    rm -f "$name.csr" "$name.ext"
}

# In $1: ca (the server's CA), other-ca (unrelated), server, client (CN=keyward-test),
# other-client (CN=keyward-other), no-client-auth (serverAuth only) and expired-client
# (its one day of validity ended yesterday), each a .crt and a .key.
make_kmip_certs() (
    mkdir -p "$1" && cd "$1" || exit 1
    for ca in ca other-ca; do
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=keyward test $ca" \
            -addext 'basicConstraints=critical,CA:TRUE' \
            -addext 'keyUsage=critical,keyCertSign,cRLSign' \
            -keyout "$ca.key" -out "$ca.crt" 2>/dev/null || exit 1
    done
    make_kmip_cert server /CN=localhost serverAuth || exit 1
    make_kmip_cert client /CN=keyward-test clientAuth || exit 1
    make_kmip_cert other-client /CN=keyward-other clientAuth || exit 1
    make_kmip_cert no-client-auth /CN=keyward-test serverAuth || exit 1
    make_kmip_cert expired-client /CN=keyward-test clientAuth expired || exit 1
    rm -f ./*.srl
)

# Make the certificates and the configuration; start the server in the background, in a
# process group of its own, on a free port, with its database and logs in $KW_RUN_DIR/kmip.
start_kmip() {
    local dir="$KW_RUN_DIR/kmip"
    KW_KMIP_STARTED=$EPOCHREALTIME
    mkdir -p "$dir/policies"
    make_kmip_certs "$dir/certs" || { echo "KMIP: could not make the certificates" >&2; return 1; }
    KW_KMIP_PORT="$(free_port)"
    KW_KMIP_LOG="$dir/server.log"
    cat >"$dir/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$KW_KMIP_PORT
certificate_path=$dir/certs/server.crt
key_path=$dir/certs/server.key
ca_path=$dir/certs/ca.crt
auth_suite=TLS1.2
policy_path=$dir/policies
enable_tls_client_auth=True
logging_level=INFO
database_path=$dir/pykmip.db
EOF
    # PYTHONWARNINGS: SQLAlchemy's deprecation warnings about PyKMIP's models.
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/pid" \
        env PYTHONWARNINGS=ignore "$KW_ROOT/.venv/bin/pykmip-server" \
        -f "$dir/server.conf" -l "$KW_KMIP_LOG" >"$dir/stdout.log" 2>&1 </dev/null &
    for _ in $(seq 100); do [ -s "$dir/pid" ] && break; sleep 0.05; done
    KW_KMIP_PID="$(cat "$dir/pid")"
}

# Whether the server on port $1 completes a mutual TLS handshake with the certificates in $2.
kmip_answers() {
    "$KW_ROOT/.venv/bin/python" - "$@" <<'PY' 2>/dev/null
import socket, ssl, sys
port, certs = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=f"{certs}/ca.crt")
context.load_cert_chain(f"{certs}/client.crt", f"{certs}/client.key")
try:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1"):
            pass
except OSError:
    sys.exit(1)
PY
}

# Wait (30 s at most) until the server completes a TLS handshake; then export where it is.
wait_kmip() {
    local dir="$KW_RUN_DIR/kmip" deadline=$((SECONDS + 30))
    until kmip_answers "$KW_KMIP_PORT" "$dir/certs"; do
        if ! kill -0 "$KW_KMIP_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "the KMIP server did not start on port $KW_KMIP_PORT; the end of its logs:" >&2
            tail -n 40 "$KW_KMIP_LOG" "$dir/stdout.log" >&2
            return 1
        fi
        sleep 0.1
    done
    export KEYWARD_TEST_KMIP_HOST=127.0.0.1
    export KEYWARD_TEST_KMIP_PORT="$KW_KMIP_PORT"
    export KEYWARD_TEST_KMIP_DIR="$dir/certs"
}

# SIGINT, not SIGTERM: on SIGTERM it finishes its accept() timeout first. Its database is
# thrown away, so a KILL after 3 s costs nothing.
stop_kmip() {
    local pid="$KW_KMIP_PID"
    [ -n "$pid" ] || return 0
    KW_KMIP_PID=""
    kill -INT -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null
}

KW_RUN_DIR=""
stop_servers() {
    set +e
    stop_kmip
    stop_localstack
    if [ -n "${KW_PG_DIR:-}" ] && [ -f "$KW_PG_DIR/postmaster.pid" ]; then
        run_as_pg "$PG_BIN/pg_ctl" -D "$KW_PG_DIR" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ -n "${KW_REDIS_PORT:-}" ]; then
        redis-cli -p "$KW_REDIS_PORT" shutdown nosave >/dev/null 2>&1
    fi
    [ -n "$KW_RUN_DIR" ] && rm -rf "$KW_RUN_DIR"
}

run_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/bash -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}

start_servers() {
    ensure_localstack
    KW_RUN_DIR="$(mktemp -d /tmp/keyward-run.XXXXXX)"
    chmod 755 "$KW_RUN_DIR"
    trap stop_servers EXIT
    start_localstack  # it takes a few seconds: PostgreSQL and Redis start meanwhile
    start_kmip  # makes its certificates (about 1 s), then starts meanwhile too

    KW_PG_DIR="$KW_RUN_DIR/pg"
    mkdir -p "$KW_PG_DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$KW_PG_DIR"
    local pg_port; pg_port="$(free_port)"
    run_as_pg "$PG_BIN/initdb" -D "$KW_PG_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # Durability off (a throwaway cluster); memory as a production server would be
    # given it (README: PostgreSQL settings): with the 128 MB default, bulk work such
    # as re-encryption spends its time evicting and writing back pages.
    run_as_pg "$PG_BIN/pg_ctl" -D "$KW_PG_DIR" -l "$KW_PG_DIR/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $KW_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=1GB -c max_wal_size=4GB" start >/dev/null
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres keyward
    export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/keyward"

    KW_REDIS_PORT="$(free_port)"
    mkdir -p "$KW_RUN_DIR/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$KW_REDIS_PORT" --dir "$KW_RUN_DIR/redis" \
        --pidfile "$KW_RUN_DIR/redis/redis.pid" --save "" --appendonly no >/dev/null
    for _ in $(seq 50); do redis-cli -p "$KW_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    export REDIS_URL="redis://127.0.0.1:$KW_REDIS_PORT/0"
    export KEYWARD_DATA_DIR="$KW_RUN_DIR/data"
    export KEYWARD_MODE=embedded

    wait_kmip
    local kmip_ready; kmip_ready="$(elapsed_since "$KW_KMIP_STARTED")"
    wait_localstack
    echo "servers: PostgreSQL on $pg_port, Redis on $KW_REDIS_PORT," \
        "LocalStack on $KW_LOCALSTACK_PORT (ready in $(elapsed_since "$KW_LOCALSTACK_STARTED") s)," \
        "KMIP on $KW_KMIP_PORT (ready in $kmip_ready s)," \
        "data in $KW_RUN_DIR"
}

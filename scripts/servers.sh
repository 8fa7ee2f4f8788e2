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

KW_RUN_DIR=""
stop_servers() {
    set +e
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
    KW_RUN_DIR="$(mktemp -d /tmp/keyward-run.XXXXXX)"
    chmod 755 "$KW_RUN_DIR"
    trap stop_servers EXIT

    KW_PG_DIR="$KW_RUN_DIR/pg"
    mkdir -p "$KW_PG_DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$KW_PG_DIR"
    local pg_port; pg_port="$(free_port)"
    run_as_pg "$PG_BIN/initdb" -D "$KW_PG_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    run_as_pg "$PG_BIN/pg_ctl" -D "$KW_PG_DIR" -l "$KW_PG_DIR/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $KW_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
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
    echo "servers: PostgreSQL on $pg_port, Redis on $KW_REDIS_PORT, data in $KW_RUN_DIR"
}

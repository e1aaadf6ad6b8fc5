# Shared by the harness scripts: where the release binaries are, and the one place a
# sidecar.toml is written. Sourced by run.sh, ztmesh-client.sh and ztmesh-server.sh (the
# peers.sh candidate wrappers), conn-memory.sh, profile.sh, ab.sh and ca-rate.sh.
#
# release_dir ROOT
#   Prints the directory of the static release binaries: builds them with
#   scripts/build-release unless NO_BUILD=1, which takes the last build (musl if any).
#
# ztmesh_conf ROLE RESUME TABLES
#   Writes $ZTMESH_DIR/run/ROLE-RESUME.toml and prints its path: the identity for ROLE
#   (client or server, from pki.sh), the listener TABLES given, the event sink, and
#   `[tls] resumption` from RESUME (peers.sh's {RESUME}: 0 = full handshakes wanted,
#   1 = resumption allowed).
# harness_tmp NAME
#   Makes the work dir $W (/tmp/NAME.XXXXXX) and an EXIT trap that stops every process in
#   PIDS (the ones the script started; by PID, never by name) and removes $W.
# ports_free PORT...
#   Dies (the caller's `die`) if one of these loopback ports is taken.
# wait_port PORT PID
#   Waits up to 5 s for PORT to accept; fails at once if PID has exited.
# start_pair RESUME WORKERS SRV_PORT FORWARD_PORT CLI_PORT
#   The sidecar pair every script measures: writes both sidecar.toml files (client on
#   CLI_PORT -> mTLS -> server on SRV_PORT -> 127.0.0.1:FORWARD_PORT), starts $ZTMESH_BIN for
#   each with TOKIO_WORKER_THREADS=WORKERS, waits for both ports, and sets SRV_PID and
#   CLI_PID (added to PIDS). Stderr goes to $W/server.err and $W/client.err.
# start_backend PORT
#   nginx answering a fixed 200 "hello\n" on 127.0.0.1:PORT, as peers.sh's backend (one
#   worker, keep-alive without limit, no access log); sets BE_PID (the master, in PIDS).
# ztmesh_exec ROLE RESUME TABLES
#   The same, then execs `mesh-proxy run` in the foreground (peers.sh measures and stops the
#   process by PID).
#
# Environment (set by run.sh):
#   ZTMESH_BIN      the mesh-proxy binary
#   ZTMESH_DIR      the harness work dir: policy.toml, {client,server}/{cert,key,bundle}.pem
#   ZTMESH_PKI      mesh (certificates from mesh-ca; the default here, for conn-memory.sh and
#                   profile.sh) | peers (peers.sh's own openssl PKI from
#                   BENCH_{CLIENT,SERVER}_{CERT,KEY} and BENCH_CA, identical to the other
#                   pairs'; run.sh's default)
#   ZTMESH_EVENTS   event sink, default file:$ZTMESH_DIR/run/events-ROLE-RESUME.jsonl
#   BENCH_WORKERS   from peers.sh: worker threads (TOKIO_WORKER_THREADS), as nginx/haproxy get
release_dir() {
    local root=$1 host
    if [[ "${NO_BUILD:-0}" != 1 ]]; then
        "$root/scripts/build-release"
        return
    fi
    host=$(rustc -vV | sed -n 's/^host: //p')
    if [[ -x "$root/target/${host%%-*}-unknown-linux-musl/release/mesh-proxy" ]]; then
        echo "$root/target/${host%%-*}-unknown-linux-musl/release"
    else
        echo "$root/target/$host/release"
    fi
}

ztmesh_conf() {
    local role=$1 resume=$2 tables=$3 cert key bundle resumption=true
    : "${ZTMESH_DIR:?set by benches/harness/run.sh}"
    if [[ "${ZTMESH_PKI:-mesh}" == peers ]]; then
        local up=${role^^} c k
        c=BENCH_${up}_CERT k=BENCH_${up}_KEY
        cert=${!c} key=${!k} bundle=$BENCH_CA
    else
        cert=$ZTMESH_DIR/$role/cert.pem key=$ZTMESH_DIR/$role/key.pem bundle=$ZTMESH_DIR/$role/bundle.pem
    fi
    [[ "$resume" == 0 ]] && resumption=false
    local conf=$ZTMESH_DIR/run/$role-$resume.toml
    mkdir -p "$ZTMESH_DIR/run"
    cat >"$conf" <<TOML
policy = "$ZTMESH_DIR/policy.toml"

[identity]
cert = "$cert"
key = "$key"
bundle = "$bundle"

$tables

[tls]
resumption = $resumption

[events]
sink = "${ZTMESH_EVENTS:-file:$ZTMESH_DIR/run/events-$role-$resume.jsonl}"
TOML
    echo "$conf"
}

ztmesh_exec() {
    local conf
    : "${ZTMESH_BIN:?set by benches/harness/run.sh}"
    conf=$(ztmesh_conf "$@")
    export TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1}
    exec "$ZTMESH_BIN" run --config "$conf"
}

PIDS=()
harness_tmp() {
    W=$(mktemp -d "/tmp/$1.XXXXXX")
    trap harness_cleanup EXIT
}
harness_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}

ports_free() {
    local p
    for p in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (set BASE_PORT)"; fi
    done
}

wait_port() {
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

start_pair() {
    local resume=$1 workers=$2 srv=$3 fwd=$4 cli=$5 srv_conf cli_conf
    : "${ZTMESH_BIN:?set ZTMESH_BIN}"
    srv_conf=$(ztmesh_conf server "$resume" "[inbound]
listen = \"127.0.0.1:$srv\"
forward = \"127.0.0.1:$fwd\"")
    cli_conf=$(ztmesh_conf client "$resume" "[[outbound]]
listen = \"127.0.0.1:$cli\"
connect = \"127.0.0.1:$srv\"
server = \"spiffe://example.org/ns/b/sa/server\"")
    TOKIO_WORKER_THREADS=$workers "$ZTMESH_BIN" run --config "$srv_conf" 2>"$W/server.err" &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    wait_port "$srv" "$SRV_PID" || die "server sidecar did not start: $(cat "$W/server.err")"
    TOKIO_WORKER_THREADS=$workers "$ZTMESH_BIN" run --config "$cli_conf" 2>"$W/client.err" &
    CLI_PID=$!
    PIDS+=("$CLI_PID")
    wait_port "$cli" "$CLI_PID" || die "client sidecar did not start: $(cat "$W/client.err")"
}

start_backend() {
    local port=$1 user_line=""
    mkdir -p "$W/tmp"
    [[ $EUID == 0 ]] && user_line="user root;"
    printf '%s\n' "$user_line" \
        "worker_processes 1;" \
        "pid $W/backend.pid;" \
        "error_log $W/backend-error.log warn;" \
        "events { worker_connections 4096; }" \
        "http {" \
        "    access_log off;" \
        "    keepalive_requests 100000000;" \
        "    client_body_temp_path $W/tmp/body;" \
        "    proxy_temp_path $W/tmp/proxy;" \
        "    fastcgi_temp_path $W/tmp/fastcgi;" \
        "    uwsgi_temp_path $W/tmp/uwsgi;" \
        "    scgi_temp_path $W/tmp/scgi;" \
        "    server {" \
        "        listen 127.0.0.1:$port backlog=4096;" \
        "        location = / { default_type text/plain; return 200 \"hello\\n\"; }" \
        "    }" \
        "}" >"$W/backend.conf"
    nginx -e "$W/backend-error.log" -c "$W/backend.conf" -g 'daemon off;' &
    BE_PID=$!
    PIDS+=("$BE_PID")
    wait_port "$port" "$BE_PID" || die "backend nginx did not start: $(cat "$W/backend-error.log")"
}

#!/usr/bin/env bash
# conn-memory.sh -- idle RSS of one sidecar, and memory per idle mTLS connection.
#
#   benches/harness/conn-memory.sh               # N=5000 connections, about 1 minute
#   N=1000 WORKERS=2 benches/harness/conn-memory.sh
#
# Starts, on 127.0.0.1 only: a Python echo app, a server sidecar (inbound -> the app) and a
# client sidecar (outbound -> the server sidecar), with certificates from mesh-ca (pki.sh).
# conn_memory.py then opens N plain connections to the client sidecar -- each one an mTLS
# connection between the sidecars -- and reads VmRSS of both sidecars from /proc before,
# with the N connections open (no byte sent), after one 64-byte echo on each, and after
# closing them. Prints one JSON object; per-connection figures are (RSS - RSS after a
# 50-connection warm-up) / N, in KiB.
#
# Settings: N=5000  WORKERS=1 (TOKIO_WORKER_THREADS, as in the load harness)  BASE_PORT=19100
#   NO_BUILD=1 (use the existing static build from scripts/build-release)  ZTMESH_BIN=another mesh-proxy
# Bounded: conn_memory.py has a 240 s deadline, the whole script a 300 s timeout; it stops
# only the processes it started, by PID. Needs ~4*N+100 file descriptors (raises ulimit -n).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-5000}
WORKERS=${WORKERS:-1}
BASE_PORT=${BASE_PORT:-19100}
APP_PORT=$BASE_PORT SRV_PORT=$((BASE_PORT + 1)) CLI_PORT=$((BASE_PORT + 2))

log() { printf '[conn-memory %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 2 * N + 256)) || die "ulimit -n $(ulimit -n) is too low for N=$N"

source "$HERE/lib.sh"
REL=$(release_dir "$ROOT")
BIN=${ZTMESH_BIN:-$REL/mesh-proxy}
W=$(mktemp -d /tmp/ztmesh-mem.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

for p in $APP_PORT $SRV_PORT $CLI_PORT; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is in use (set BASE_PORT)"
done
bash "$HERE/pki.sh" "$REL/mesh-ca" "$W"

export ZTMESH_DIR=$W
SRV_CONF=$(ztmesh_conf server 1 "[inbound]
listen = \"127.0.0.1:$SRV_PORT\"
forward = \"127.0.0.1:$APP_PORT\"")
CLI_CONF=$(ztmesh_conf client 1 "[[outbound]]
listen = \"127.0.0.1:$CLI_PORT\"
connect = \"127.0.0.1:$SRV_PORT\"
server = \"spiffe://example.org/ns/b/sa/server\"")

wait_port() {
    local i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

python3 "$HERE/echo_backend.py" "$APP_PORT" &
PIDS+=($!)
wait_port "$APP_PORT" "${PIDS[-1]}" || die "echo app did not start"
TOKIO_WORKER_THREADS=$WORKERS "$BIN" run --config "$SRV_CONF" 2>"$W/server.err" &
SRV_PID=$!
PIDS+=("$SRV_PID")
wait_port "$SRV_PORT" "$SRV_PID" || die "server sidecar did not start: $(cat "$W/server.err")"
TOKIO_WORKER_THREADS=$WORKERS "$BIN" run --config "$CLI_CONF" 2>"$W/client.err" &
CLI_PID=$!
PIDS+=("$CLI_PID")
wait_port "$CLI_PORT" "$CLI_PID" || die "client sidecar did not start: $(cat "$W/client.err")"
sleep 1
log "sidecars up (client $CLI_PID, server $SRV_PID, TOKIO_WORKER_THREADS=$WORKERS); opening $N connections"
timeout 300 python3 "$HERE/conn_memory.py" "$CLI_PORT" "$CLI_PID" "$SRV_PID" "$N"
log "events: $(grep -c '"event":"connection"' "$W/run/events-server-1.jsonl" || true) connection events on the server side"

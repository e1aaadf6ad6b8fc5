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
export ZTMESH_BIN=${ZTMESH_BIN:-$REL/mesh-proxy}
harness_tmp ztmesh-mem
ports_free "$APP_PORT" "$SRV_PORT" "$CLI_PORT"
bash "$HERE/pki.sh" "$REL/mesh-ca" "$W"

export ZTMESH_DIR=$W
python3 "$HERE/echo_backend.py" "$APP_PORT" &
PIDS+=($!)
wait_port "$APP_PORT" "${PIDS[-1]}" || die "echo app did not start"
start_pair 1 "$WORKERS" "$SRV_PORT" "$APP_PORT" "$CLI_PORT"
sleep 1
log "sidecars up (client $CLI_PID, server $SRV_PID, TOKIO_WORKER_THREADS=$WORKERS); opening $N connections"
timeout 300 python3 "$HERE/conn_memory.py" "$CLI_PORT" "$CLI_PID" "$SRV_PID" "$N"
log "events: $(grep -c '"event":"connection"' "$W/run/events-server-1.jsonl" || true) connection events on the server side"

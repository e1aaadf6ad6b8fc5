#!/usr/bin/env bash
# ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]
#
# peers.sh candidate server side: writes a sidecar.toml with an inbound listener on
# SERVER_LISTEN forwarding to BACKEND (the benchmark's nginx), then execs `mesh-proxy run`
# in the foreground (peers.sh measures and stops the process by PID).
#
# Environment (set by run.sh):
#   ZTMESH_BIN      the mesh-proxy binary
#   ZTMESH_DIR      the harness work dir: policy.toml, server/{cert,key,bundle}.pem
#   ZTMESH_PKI      mesh (certificates from mesh-ca, default) | peers (peers.sh's own openssl
#                   PKI from BENCH_SERVER_CERT/KEY and BENCH_CA, identical to the other pairs')
#   ZTMESH_EVENTS   event sink, default file:$ZTMESH_DIR/events-server-RESUME.jsonl
#   BENCH_WORKERS   from peers.sh: worker threads (TOKIO_WORKER_THREADS), as nginx/haproxy get
set -euo pipefail
listen=${1:?usage: ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]}
backend=${2:?usage: ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]}
resume=${3:-${BENCH_TLS_RESUME:-1}}
: "${ZTMESH_BIN:?set by benches/harness/run.sh}" "${ZTMESH_DIR:?set by benches/harness/run.sh}"

if [[ "${ZTMESH_PKI:-mesh}" == peers ]]; then
    cert=$BENCH_SERVER_CERT key=$BENCH_SERVER_KEY bundle=$BENCH_CA
else
    cert=$ZTMESH_DIR/server/cert.pem key=$ZTMESH_DIR/server/key.pem bundle=$ZTMESH_DIR/server/bundle.pem
fi
conf=$ZTMESH_DIR/run/server-$resume.toml
mkdir -p "$ZTMESH_DIR/run"
cat >"$conf" <<TOML
policy = "$ZTMESH_DIR/policy.toml"

[identity]
cert = "$cert"
key = "$key"
bundle = "$bundle"

[inbound]
listen = "$listen"
forward = "$backend"

[events]
sink = "${ZTMESH_EVENTS:-file:$ZTMESH_DIR/run/events-server-$resume.jsonl}"
TOML
# mesh-proxy has no switch to refuse resumption: RESUME=0 still resumes (see PERFORMANCE.md).
export TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1}
exec "$ZTMESH_BIN" run --config "$conf"

#!/usr/bin/env bash
# ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]
#
# peers.sh candidate client side: writes a sidecar.toml with one [[outbound]] listening on
# CLIENT_LISTEN (where wrk connects in plaintext) that connects to the server sidecar's inbound
# at SERVER_ADDR and insists on the server's SPIFFE ID ($BENCH_SERVER_ID), then execs
# `mesh-proxy run` in the foreground. Environment: as ztmesh-server.sh.
set -euo pipefail
listen=${1:?usage: ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]}
server_addr=${2:?usage: ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]}
resume=${3:-${BENCH_TLS_RESUME:-1}}
: "${ZTMESH_BIN:?set by benches/harness/run.sh}" "${ZTMESH_DIR:?set by benches/harness/run.sh}"
server_id=${BENCH_SERVER_ID:-spiffe://example.org/ns/b/sa/server}

if [[ "${ZTMESH_PKI:-mesh}" == peers ]]; then
    cert=$BENCH_CLIENT_CERT key=$BENCH_CLIENT_KEY bundle=$BENCH_CA
else
    cert=$ZTMESH_DIR/client/cert.pem key=$ZTMESH_DIR/client/key.pem bundle=$ZTMESH_DIR/client/bundle.pem
fi
conf=$ZTMESH_DIR/run/client-$resume.toml
mkdir -p "$ZTMESH_DIR/run"
cat >"$conf" <<TOML
policy = "$ZTMESH_DIR/policy.toml"

[identity]
cert = "$cert"
key = "$key"
bundle = "$bundle"

[[outbound]]
listen = "$listen"
connect = "$server_addr"
server = "$server_id"

[events]
sink = "${ZTMESH_EVENTS:-file:$ZTMESH_DIR/run/events-client-$resume.jsonl}"
TOML
export TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1}
exec "$ZTMESH_BIN" run --config "$conf"

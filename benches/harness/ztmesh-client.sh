#!/usr/bin/env bash
# ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]
#
# peers.sh candidate client side: one [[outbound]] listening on CLIENT_LISTEN (where wrk
# connects in plaintext) that connects to the server sidecar's inbound at SERVER_ADDR and
# insists on the server's SPIFFE ID ($BENCH_SERVER_ID). Environment: see lib.sh.
set -euo pipefail
listen=${1:?usage: ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]}
server_addr=${2:?usage: ztmesh-client.sh CLIENT_LISTEN SERVER_ADDR [RESUME]}
source "$(dirname "$0")/lib.sh"
ztmesh_exec client "${3:-${BENCH_TLS_RESUME:-1}}" "[[outbound]]
listen = \"$listen\"
connect = \"$server_addr\"
server = \"${BENCH_SERVER_ID:-spiffe://example.org/ns/b/sa/server}\""

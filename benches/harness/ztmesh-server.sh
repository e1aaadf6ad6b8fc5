#!/usr/bin/env bash
# ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]
#
# peers.sh candidate server side: an [inbound] on SERVER_LISTEN forwarding to BACKEND (the
# benchmark's nginx). Environment: see lib.sh.
set -euo pipefail
listen=${1:?usage: ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]}
backend=${2:?usage: ztmesh-server.sh SERVER_LISTEN BACKEND [RESUME]}
source "$(dirname "$0")/lib.sh"
ztmesh_exec server "${3:-${BENCH_TLS_RESUME:-1}}" "[inbound]
listen = \"$listen\"
forward = \"$backend\""

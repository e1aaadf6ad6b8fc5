#!/usr/bin/env bash
# ab.sh -- what each request costs the proxies under keep-alive load, beyond req/s: for an
# nginx stream mTLS pair and for one or two mesh-proxy builds, in interleaved rounds.
#
#   benches/harness/ab.sh                              # nginx vs the current static build
#   A=/tmp/mesh-proxy.old benches/harness/ab.sh        # + an older build: an A/B of a change
#
# Per pair and round, wrk -t1 -c$CONNS keep-alive for DURATION seconds (after 2 s of warm-up),
# then per request:
#   cpu_us     CPU time (user + system, /proc/PID/stat) of the client proxy, the server proxy
#              and the backend
#   vol/invol  voluntary context switches (the process slept: nothing to do) and involuntary
#              ones (preempted) of the same processes (/proc/PID/status)
#   segs, acks TCP segments sent and pure ACKs, all loopback hops together (nstat TcpOutSegs,
#              TcpExtTCPPureAcks; system-wide, so keep the machine otherwise quiet). One
#              request and its answer over three hops is 6 segments at best.
# On 127.0.0.1 only, with one backend nginx (fixed 200, as peers.sh's). Certificates from
# mesh-ca (pki.sh); the nginx pair's server certificate adds the DNS name localhost, which
# nginx checks. One worker per proxy, as in run.sh. Pairs run one at a time; each wrk is
# bounded by -d and timeout(1); only processes started here are stopped, by PID.
#
# Settings: DURATION=8 ROUNDS=3 CONNS=32 BASE_PORT=19300 NO_BUILD=1 A=<mesh-proxy binary>
# Needs: wrk, nginx-light + libnginx-mod-stream, nstat (iproute2) -- run.sh installs the first two.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
BASE_PORT=${BASE_PORT:-19300}
BE_PORT=$BASE_PORT NSRV_PORT=$((BASE_PORT + 1)) NCLI_PORT=$((BASE_PORT + 2))
SRV_PORT=$((BASE_PORT + 3)) CLI_PORT=$((BASE_PORT + 4))
log() { printf '[ab %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
for t in wrk nginx nstat; do command -v "$t" >/dev/null || die "missing $t"; done

source "$HERE/lib.sh"
REL=$(release_dir "$ROOT")
B=$REL/mesh-proxy
harness_tmp ztmesh-ab
chmod 755 "$W"
ports_free "$BE_PORT" "$NSRV_PORT" "$NCLI_PORT" "$SRV_PORT" "$CLI_PORT"
bash "$HERE/pki.sh" "$REL/mesh-ca" "$W"
"$REL/mesh-ca" issue --dir "$W/ca" --zone b --workload server --ttl 24h --dns localhost \
    --out "$W/nginx-server" >/dev/null
export ZTMESH_DIR=$W ZTMESH_PKI=mesh ZTMESH_EVENTS=file:/dev/null
start_backend "$BE_PORT"

# The nginx pair: the stream module, as peers.sh configures it (session reuse on).
stream_conf() { # NAME SERVER-BLOCK
    local user_line=""
    [[ $EUID == 0 ]] && user_line="user root;"
    printf '%s\n' "$user_line" "load_module /usr/lib/nginx/modules/ngx_stream_module.so;" \
        "worker_processes 1;" "pid $W/$1.pid;" "error_log $W/$1-error.log warn;" \
        "events { worker_connections 10000; }" "stream { server { $2 } }" >"$W/$1.conf"
    nginx -e "$W/$1-error.log" -c "$W/$1.conf" -g 'daemon off;' &
    PIDS+=($!)
}
stream_conf nginx-server "listen 127.0.0.1:$NSRV_PORT ssl; ssl_protocols TLSv1.3;
    ssl_certificate $W/nginx-server/cert.pem; ssl_certificate_key $W/nginx-server/key.pem;
    ssl_client_certificate $W/nginx-server/bundle.pem; ssl_verify_client on; ssl_verify_depth 2;
    proxy_pass 127.0.0.1:$BE_PORT;"
wait_port "$NSRV_PORT" "${PIDS[-1]}" || die "nginx server did not start"
stream_conf nginx-client "listen 127.0.0.1:$NCLI_PORT; proxy_pass 127.0.0.1:$NSRV_PORT;
    proxy_ssl on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on;
    proxy_ssl_certificate $W/client/cert.pem; proxy_ssl_certificate_key $W/client/key.pem;
    proxy_ssl_trusted_certificate $W/client/bundle.pem; proxy_ssl_verify on;
    proxy_ssl_verify_depth 2; proxy_ssl_name localhost;"
wait_port "$NCLI_PORT" "${PIDS[-1]}" || die "nginx client did not start"
worker_of() { pgrep -P "$(cat "$W/$1.pid")" | head -n 1; }
NGINX_CLI=$(worker_of nginx-client) NGINX_SRV=$(worker_of nginx-server) BACKEND=$(worker_of backend)

# "voluntary involuntary cpu_ticks" of a process
sample() {
    awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { printf "%s %s ", v, n }' \
        "/proc/$1/status"
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# measure LABEL PORT CLIENT_PID SERVER_PID: one line of per-request figures
measure() {
    local label=$1 port=$2 cli=$3 srv=$4 before after out
    timeout 30 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
    nstat -n
    before="$(sample "$cli") $(sample "$srv") $(sample "$BACKEND")"
    out=$(timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/")
    after="$(sample "$cli") $(sample "$srv") $(sample "$BACKEND")"
    python3 - "$label" "$out" "$before" "$after" "$(nstat 2>/dev/null)" "$(getconf CLK_TCK)" <<'PY'
import re, sys
label, out, before, after, nstat, tck = sys.argv[1:7]
req = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
d = [b - a for a, b in zip(map(int, before.split()), map(int, after.split()))]
net = {k: int(v) for k, v, *_ in (l.split() for l in nstat.splitlines() if l and l[0] != "#")}
def proc(i):
    v, n, t = d[3 * i:3 * i + 3]
    return f"cpu_us {t * 1e6 / int(tck) / req:5.1f} vol {v / req:.3f} invol {n / req:.3f}"
print(f"{label:10} req/s {rps:9.0f} | client {proc(0)} | server {proc(1)} | backend {proc(2)}"
      f" | segs {net.get('TcpOutSegs', 0) / req:.3f} acks {net.get('TcpExtTCPPureAcks', 0) / req:.3f}")
PY
}

# measure_mesh LABEL BINARY: starts the pair, measures, stops it
measure_mesh() {
    ZTMESH_BIN=$2 start_pair 1 1 "$SRV_PORT" "$BE_PORT" "$CLI_PORT"
    measure "$1" "$CLI_PORT" "$CLI_PID" "$SRV_PID"
    kill -TERM "$CLI_PID" "$SRV_PID"
    wait "$CLI_PID" "$SRV_PID" 2>/dev/null || true
}

log "$ROUNDS rounds of ${DURATION}s per pair: nginx, ${A:+A=$A, }B=$B"
for round in $(seq 1 "$ROUNDS"); do
    measure nginx "$NCLI_PORT" "$NGINX_CLI" "$NGINX_SRV"
    [[ -n "${A:-}" ]] && measure_mesh ztmesh-A "$A"
    measure_mesh ztmesh-B "$B"
done

#!/usr/bin/env bash
# profile.sh -- where the mesh-proxy pair spends its CPU under load, with perf (cpu-clock
# sampling; no hardware counters needed) and a syscall count.
#
#   benches/harness/profile.sh                   # keep-alive load, then new-connection load
#   DURATION=5 benches/harness/profile.sh
#
# On 127.0.0.1 only: an nginx backend (fixed 200 "hello\n", as in peers.sh), a server
# sidecar and a client sidecar (certificates from mesh-ca via pki.sh, TOKIO_WORKER_THREADS=1),
# then for each load -- `ka` (wrk -c32 keep-alive) and `nc` (wrk -c32 'Connection: close',
# one mTLS handshake per request) -- it runs wrk for DURATION seconds while
#   perf record -F 999 -p <both sidecars>     (flat profile by symbol and by library)
# and then wrk for DURATION more seconds while
#   strace -c -f -p <client sidecar>          (syscalls per request)
# Output in target/profile/<load>-*.txt; a summary of the top symbols on stdout.
#
# Settings: DURATION=8 CONNS=32 BASE_PORT=19200 NO_BUILD=1 TOP=25 LOADS="ka nc"
#   RESUME=1 (0: [tls] resumption = false on both sidecars, so `nc` profiles full handshakes)
# Needs: perf (linux-perf), strace, wrk, nginx-light (installs them when missing).
# Bounded: every wrk has -d and timeout(1); only processes it started are stopped, by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
TOP=${TOP:-25}
RESUME=${RESUME:-1}
LOADS=${LOADS:-ka nc}
BASE_PORT=${BASE_PORT:-19200}
BE_PORT=$BASE_PORT
SRV_PORT=$((BASE_PORT + 1))
CLI_PORT=$((BASE_PORT + 2))
OUT=$ROOT/target/profile
log() { printf '[profile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for t in perf strace wrk nginx curl; do
    command -v "$t" >/dev/null && continue
    [[ $EUID == 0 ]] || die "missing $t"
    case $t in perf) pkg=linux-perf ;; nginx) pkg=nginx-light ;; *) pkg=$t ;; esac
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null || die "cannot install $pkg"
done
source "$HERE/lib.sh"
REL=$(release_dir "$ROOT")
export ZTMESH_BIN=$REL/mesh-proxy
mkdir -p "$OUT"
harness_tmp ztmesh-prof
chmod 755 "$W"
ports_free "$BE_PORT" "$SRV_PORT" "$CLI_PORT"

bash "$HERE/pki.sh" "$REL/mesh-ca" "$W"
export ZTMESH_DIR=$W
start_backend "$BE_PORT"
start_pair "$RESUME" 1 "$SRV_PORT" "$BE_PORT" "$CLI_PORT"
[[ "$(curl -s --max-time 5 "http://127.0.0.1:$CLI_PORT/")" == hello ]] || die "end-to-end check failed"
log "pair up: client $CLI_PID, server $SRV_PID"

url=http://127.0.0.1:$CLI_PORT/
for load in $LOADS; do
    hdr=()
    [[ $load == nc ]] && hdr=(-H "Connection: close")
    timeout 30 wrk -t1 -c"$CONNS" -d2s "${hdr[@]}" "$url" >/dev/null 2>&1 || true # warm-up
    log "$load: perf record for $((DURATION - 2))s of a ${DURATION}s wrk"
    timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url" \
        >"$OUT/$load-wrk-perf.txt" 2>&1 &
    wrk_pid=$!
    sleep 1
    timeout $((DURATION + 10)) perf record -q -F 999 -p "$CLI_PID,$SRV_PID" -o "$OUT/$load.perf.data" \
        -- sleep $((DURATION - 2)) 2>/dev/null || true
    wait "$wrk_pid" || true
    perf report -i "$OUT/$load.perf.data" --no-children --sort symbol --percent-limit 0.3 --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' >"$OUT/$load-symbols.txt" || true
    perf report -i "$OUT/$load.perf.data" --no-children --sort dso --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' >"$OUT/$load-dso.txt" || true
    log "$load: strace -c for $((DURATION - 2))s (client sidecar; slows it, counts only)"
    timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdr[@]}" "$url" \
        >"$OUT/$load-wrk-strace.txt" 2>&1 &
    wrk_pid=$!
    sleep 1
    timeout -s INT $((DURATION - 2)) strace -c -f -p "$CLI_PID" -o "$OUT/$load-strace-client.txt" \
        2>/dev/null || true
    wait "$wrk_pid" || true
    echo "== $load: wrk during perf"
    grep -E "Requests/sec|Latency  " "$OUT/$load-wrk-perf.txt" || true
    echo "== $load: requests in the whole strace wrk: $(awk '/requests in/ { print $1 }' "$OUT/$load-wrk-strace.txt")"
    echo "== $load: CPU by library (both sidecars)"
    head -n 12 "$OUT/$load-dso.txt"
    echo "== $load: top symbols (both sidecars)"
    head -n "$TOP" "$OUT/$load-symbols.txt"
    echo "== $load: syscalls (client sidecar)"
    head -n 16 "$OUT/$load-strace-client.txt"
done
log "full reports in $OUT"

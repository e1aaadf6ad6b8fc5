#!/usr/bin/env bash
# ca-rate.sh -- durable certificate issuances per second through the CA's HTTPS API, with
# `mesh-ca serve` pinned to one core.
#
#   benches/harness/ca-rate.sh                  # 3 runs of 10 s, 32 connections
#   DURATION=5 RUNS=1 CONNS=64 benches/harness/ca-rate.sh
#
# On 127.0.0.1 only: a fresh CA in a temp dir (no passphrase: PBKDF2 runs at start only and
# is not what this measures), one join token with enough uses for the whole run, and
# `mesh-ca serve --rate-limit 0` under `taskset -c 0`. wrk, on the other core, POSTs one
# enrollment (the same P-256 CSR each time: the CA signs a new certificate for it every
# time) on CONNS keep-alive connections. Each 200 is a certificate the store committed
# before answering (group commit: one fsync per batch). The script then counts the
# certificates in store.db (sqlite3) and checks they cover wrk's successful responses.
#
# Settings: RUNS=3 DURATION=10 CONNS=32 BASE_PORT=19300 NO_BUILD=1
# Needs: wrk, sqlite3, python3 with cryptography (installs wrk and sqlite3 when missing).
# Bounded: wrk -d plus timeout(1); only the processes it started are stopped, by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
PORT=${BASE_PORT:-19300}

log() { printf '[ca-rate %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
source "$HERE/lib.sh"
REL=$(release_dir "$ROOT")
CA=$REL/mesh-ca
[[ -x "$CA" ]] || die "no release mesh-ca (run without NO_BUILD=1)"

W=$(mktemp -d /tmp/ztmesh-ca-rate.XXXXXX)
SRV=
cleanup() {
    [[ -n "$SRV" ]] && kill -TERM "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
ports_free "$PORT"

"$CA" init --dir "$W/ca" --trust-domain example.org --insecure-no-passphrase >/dev/null
# Tokens are capped at 1,000 uses; the run needs millions, so this benchmark (and only this
# throwaway CA) raises the count in the store after creating the token.
token=$("$CA" token create --dir "$W/ca" --zone bench --workload rate --ttl 1h --uses 1000)
sqlite3 "$W/ca/store.db" "UPDATE tokens SET uses_left = 10000000"
python3 "$ROOT/tests/py/ca_client.py" csr --key-out "$W/key.pem" --csr-out "$W/csr.pem" >/dev/null
python3 - "$token" "$W/csr.pem" "$W/enroll.lua" <<'PY'
import json, sys
token, csr, out = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
body = json.dumps({"token": token, "csr": csr})
with open(out, "w") as f:
    f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
    f.write("wrk.body = %s\n" % json.dumps(body))
PY

taskset -c 0 "$CA" serve --dir "$W/ca" --listen "127.0.0.1:$PORT" --rate-limit 0 >"$W/serve.jsonl" 2>"$W/serve.err" &
SRV=$!
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$SRV" 2>/dev/null || die "mesh-ca serve did not start: $(cat "$W/serve.err")"
    sleep 0.05
done
count() { sqlite3 "$W/ca/store.db" "SELECT COUNT(*) FROM certificates"; }

rates=()
for run in $(seq 1 "$RUNS"); do
    before=$(count)
    timeout $((DURATION + 30)) taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$W/enroll.lua" \
        "https://127.0.0.1:$PORT/v1/enroll" >"$W/wrk-$run.txt" 2>&1 || true
    after=$(count)
    total=$(awk '/requests in/ { print $1 }' "$W/wrk-$run.txt")
    bad=$(awk '/Non-2xx or 3xx responses/ { print $NF }' "$W/wrk-$run.txt")
    ok=$((total - ${bad:-0}))
    stored=$((after - before))
    # wrk stops counting at its deadline; up to CONNS requests still in flight then are
    # issued (and stored) after it, and never counted as answered.
    ((stored >= ok && stored <= ok + CONNS)) ||
        die "run $run: wrk saw $ok certificates issued, the store holds $stored"
    secs=$(awk '/requests in/ { sub(/s,?$/, "", $4); print $4 }' "$W/wrk-$run.txt")
    rate=$(awk -v n="$ok" -v d="$secs" 'BEGIN { printf "%.0f", n / d }')
    rates+=("$rate")
    log "run $run: $ok durable issuances answered in ${secs}s = $rate/s (non-2xx: ${bad:-0}; stored: $stored)"
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "{\"runs\": [$(IFS=,; echo "${rates[*]}")], \"median_per_second\": $median, \"connections\": $CONNS, \"server_cores\": 1}"

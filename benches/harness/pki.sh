#!/usr/bin/env bash
# pki.sh CA_BIN DIR -- the harness's trust domain, made with the real mesh-ca:
#   DIR/ca                      `mesh-ca init --trust-domain example.org` (no passphrase: a
#                               throwaway CA in a temp dir; PBKDF2 would only slow the start)
#   DIR/client/{cert,key,bundle}.pem   spiffe://example.org/ns/a/sa/client
#   DIR/server/{cert,key,bundle}.pem   spiffe://example.org/ns/b/sa/server
#   DIR/policy.toml             zones a, b; allow a -> b
# The identities are the ones peers.sh puts in its own certificates, so ZTMESH_PKI=peers and
# =mesh run the same policy. Sourced or run; exits non-zero on any failure.
set -euo pipefail
ca_bin=${1:?usage: pki.sh CA_BIN DIR}
dir=${2:?usage: pki.sh CA_BIN DIR}
"$ca_bin" init --dir "$dir/ca" --trust-domain example.org --insecure-no-passphrase >/dev/null
"$ca_bin" issue --dir "$dir/ca" --zone a --workload client --ttl 24h --out "$dir/client" >/dev/null
"$ca_bin" issue --dir "$dir/ca" --zone b --workload server --ttl 24h --out "$dir/server" >/dev/null
cat >"$dir/policy.toml" <<'TOML'
trust_domain = "example.org"
zones = ["a", "b"]

[[allow]]
from = "a"
to = "b"
TOML

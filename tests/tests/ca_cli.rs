//! End-to-end tests of the `mesh-ca` command line, run as a real process, with every issued
//! certificate judged by validators that share no code with mesh-ca: `openssl verify`,
//! rustls-webpki path validation and `tests/py/svid_check.py` (Python `cryptography`).
//!
//! CAs whose keys are encrypted cost seconds per command in a debug build (PBKDF2), so only the
//! tests about passphrases use them; the rest use `--insecure-no-passphrase` CAs.

use std::path::{Path, PathBuf};

use mesh_tests::*;
use serde_json::Value;

#[path = "ca_cli/bundle.rs"]
mod bundle;
#[path = "ca_cli/errors.rs"]
mod errors;
#[path = "ca_cli/hardening.rs"]
mod hardening;
#[path = "ca_cli/init.rs"]
mod init;
#[path = "ca_cli/inspect.rs"]
mod inspect;
#[path = "ca_cli/issue.rs"]
mod issue;
#[path = "ca_cli/refusals.rs"]
mod refusals;
#[path = "ca_cli/revocation.rs"]
mod revocation;
#[path = "ca_cli/shell.rs"]
mod shell;
#[path = "ca_cli/store.rs"]
mod store;

const ZONE: &str = "payments";
const WORKLOAD: &str = "charge";
const LEAF_ID: &str = "spiffe://example.org/ns/payments/sa/charge";

fn json(o: &Output) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{o}"))
}

/// Splits OUTDIR/cert.pem into leaf.pem and chain-rest.pem beside it; returns their paths.
fn split_chain(out: &Path) -> (PathBuf, PathBuf) {
    let chain = read_pem_certs(&out.join("cert.pem"));
    assert_eq!(chain.len(), 2, "cert.pem must hold the leaf then the intermediate");
    let leaf = out.join("leaf.pem");
    let rest = out.join("chain-rest.pem");
    write_pem_certs(&leaf, &chain[..1]);
    write_pem_certs(&rest, &chain[1..]);
    (leaf, rest)
}

/// Runs all three validators on an issued leaf and asserts each accepts it.
fn assert_leaf_valid(ca: &TestCa, out: &Path, dns: Option<&str>) {
    let (leaf, rest) = split_chain(out);
    let bundle = out.join("bundle.pem");

    let py = svid_check("leaf", Some(&ca.trust_domain), None, &[&out.join("cert.pem")]);
    assert!(py.success(), "svid_check rejects the leaf:\n{py}");
    let py = svid_check("leaf", Some(&ca.trust_domain), Some(&ca.dir.join("intermediate.pem")), &[&leaf]);
    assert!(py.success(), "svid_check rejects the leaf against intermediate.pem:\n{py}");

    for purpose in ["sslserver", "sslclient"] {
        let o = openssl_verify(&leaf, &bundle, Some(&rest), purpose);
        assert!(
            o.success() && o.stdout.contains(": OK"),
            "openssl verify ({purpose}) rejects the leaf:\n{o}"
        );
    }

    let chain = read_pem_certs(&out.join("cert.pem"));
    let roots = read_pem_certs(&bundle);
    if let Err(e) = webpki_verify(&chain, &roots, dns) {
        panic!("rustls-webpki rejects the leaf: {e}");
    }
}

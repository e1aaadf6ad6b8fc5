//! Validators that share no code with mesh-ca: rustls-webpki path validation, the openssl
//! CLI, and the Python `cryptography` checker in `tests/py`.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::process::{py_script, Cmd, Output};

/// All certificates of a PEM file, in order.
pub fn read_pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

/// Writes certificates as PEM (for splitting a chain into separate files).
pub fn write_pem_certs(path: &Path, certs: &[CertificateDer<'_>]) {
    use base64::Engine as _;
    let mut s = String::new();
    for c in certs {
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for chunk in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
    }
    std::fs::write(path, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// rustls-webpki path validation of `chain[0]` (with `chain[1..]` as intermediates) to the
/// roots in `bundle`, now, for BOTH serverAuth and clientAuth, and for `dns` when given.
///
/// The EKU check is rustls' own (`required_if_present`): webpki applies it to every
/// certificate of the path, and CA certificates rightly carry no EKU. That the leaf itself
/// carries both EKUs is the SVID profile's business (svid_check.py checks it).
pub fn webpki_verify(
    chain: &[CertificateDer<'_>],
    bundle: &[CertificateDer<'_>],
    dns: Option<&str>,
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let anchors = bundle
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("trust anchor: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("leaf does not parse: {e}"))?;
    for (name, usage) in
        [("serverAuth", webpki::KeyUsage::server_auth()), ("clientAuth", webpki::KeyUsage::client_auth())]
    {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| format!("path validation for {name}: {e}"))?;
    }
    if let Some(dns) = dns {
        let name = ServerName::try_from(dns).map_err(|e| format!("{dns}: {e}"))?;
        ee.verify_is_valid_for_subject_name(&name).map_err(|e| format!("name {dns}: {e}"))?;
    }
    Ok(())
}

/// `openssl verify` of the first certificate in `leaf` against `bundle` with `untrusted`
/// intermediates, strict X.509 checks, for the given purpose (`sslserver`, `sslclient`).
pub fn openssl_verify(leaf: &Path, bundle: &Path, untrusted: Option<&Path>, purpose: &str) -> Output {
    let mut c =
        Cmd::new("openssl").args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"]).arg(bundle);
    if let Some(u) = untrusted {
        c = c.arg("-untrusted").arg(u);
    }
    c.arg(leaf).run()
}

/// `python3 tests/py/svid_check.py --role ROLE [--trust-domain TD] [--issuer F] FILES...`
pub fn svid_check(role: &str, td: Option<&str>, issuer: Option<&Path>, files: &[&Path]) -> Output {
    let mut c = Cmd::new("python3").arg(py_script("svid_check.py")).args(["--role", role]);
    if let Some(td) = td {
        c = c.args(["--trust-domain", td]);
    }
    if let Some(i) = issuer {
        c = c.arg("--issuer").arg(i);
    }
    c.args(files).run()
}

/// (notBefore, notAfter) of the first certificate in a PEM file, as Unix seconds, read by
/// Python's `cryptography` (not by anything in this workspace).
pub fn cert_times(path: &Path) -> (i64, i64) {
    let script = "import sys; from cryptography import x509\n\
                  c = x509.load_pem_x509_certificates(open(sys.argv[1], 'rb').read())[0]\n\
                  print(int(c.not_valid_before_utc.timestamp()), int(c.not_valid_after_utc.timestamp()))";
    let o = Cmd::new("python3").args(["-c", script]).arg(path).run();
    o.assert_ok();
    let mut it = o.stdout.split_whitespace().map(|w| w.parse::<i64>().expect("python prints integers"));
    (it.next().expect("notBefore"), it.next().expect("notAfter"))
}

/// `openssl x509 -noout -pubkey` of the first certificate in a PEM file.
pub fn openssl_cert_pubkey(cert: &Path) -> String {
    let o = Cmd::new("openssl").args(["x509", "-noout", "-pubkey", "-in"]).arg(cert).run();
    o.assert_ok();
    o.stdout
}

/// `openssl pkey -pubout` of a private key file (unencrypted, or with `pass`).
pub fn openssl_key_pubkey(key: &Path, pass: Option<&str>) -> Output {
    let mut c = Cmd::new("openssl").args(["pkey", "-pubout", "-in"]).arg(key);
    if let Some(p) = pass {
        c = c.args(["-passin", &format!("pass:{p}")]);
    }
    c.run()
}

/// Lowercase letters and digits only: how violation texts are compared with keywords.
pub fn squash(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}
